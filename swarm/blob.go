package swarm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"carryon/protocol"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// DefaultIdleTimeout bounds each read or write of a blob transfer (not the
// whole transfer) when no shorter deadline applies.
const DefaultIdleTimeout = 30 * time.Second

// fetchIdleTimeout is FetchBlob's per-operation bound; tests shorten it.
var fetchIdleTimeout = DefaultIdleTimeout

// BlobServer serves a Store's blobs over protocol.BlobProtocol:
//
//	read BlobRequest → BlobManifest | Error{KindNotFound}
//	→ BlobChunk × n → read the fetcher's Ack → close.
//
// A transfer is done only when the fetcher's Ack{OK: true} has been read.
type BlobServer struct {
	// Store holds the blobs served; required.
	Store Store
	// ChunkSize is the chunk length; 0 means protocol.MaxBlobChunk. It is
	// raised for blobs that would otherwise need over MaxBlobChunks chunks.
	ChunkSize int
	// IdleTimeout bounds each read and write; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// OnDone, when set, is called after every request with the peer, the
	// CID asked for and nil for an acknowledged transfer, or the error.
	OnDone func(p peer.ID, c cid.Cid, err error)

	mu        sync.Mutex
	manifests map[cid.Cid]*protocol.BlobManifest // cache: hashing is per blob, not per request
}

// ServeBlobs serves s on h's BlobProtocol with default settings. stop
// removes the handler, aborts transfers in flight and waits for them.
func ServeBlobs(h host.Host, s Store) (stop func()) {
	return (&BlobServer{Store: s}).Serve(h)
}

// Serve registers the handler on h; see ServeBlobs for stop.
func (b *BlobServer) Serve(h host.Host) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu      sync.Mutex
		stopped bool
		wg      sync.WaitGroup
	)
	h.SetStreamHandler(protocol.BlobProtocol, func(s network.Stream) {
		mu.Lock()
		if stopped {
			mu.Unlock()
			s.Reset()
			return
		}
		wg.Add(1)
		mu.Unlock()
		defer wg.Done()
		defer context.AfterFunc(ctx, func() { s.Reset() })()
		c, err := b.serve(s)
		var told *toldPeer
		if err != nil && !errors.As(err, &told) {
			s.Reset()
		} else {
			s.Close() // flushes what we wrote, the Error frame included
		}
		if b.OnDone != nil {
			b.OnDone(s.Conn().RemotePeer(), c, err)
		}
	})
	return func() {
		h.RemoveStreamHandler(protocol.BlobProtocol)
		mu.Lock()
		stopped = true
		mu.Unlock()
		cancel()
		wg.Wait()
	}
}

func (b *BlobServer) idle() time.Duration {
	if b.IdleTimeout > 0 {
		return b.IdleTimeout
	}
	return DefaultIdleTimeout
}

// serve runs one transfer; it returns the CID asked for (cid.Undef if the
// request was unreadable) and nil only once the fetcher acknowledged.
func (b *BlobServer) serve(s network.Stream) (cid.Cid, error) {
	s.SetDeadline(time.Now().Add(b.idle()))
	req, err := protocol.ReadExpect[*protocol.BlobRequest](s)
	if err != nil {
		return cid.Undef, tell(s, protocol.Errorf(protocol.KindInvalid, "expected a BlobRequest: %v", err),
			fmt.Errorf("swarm.BlobServer: request: %w", err))
	}
	c, _ := protocol.ParseCID(req.CID) // Validate parsed it already
	data, err := b.Store.Get(c)
	if err != nil {
		kind := protocol.KindInternal
		if errors.Is(err, ErrNotFound) {
			kind = protocol.KindNotFound
		}
		return c, tell(s, protocol.Errorf(kind, "blob %s: %v", c, err), fmt.Errorf("swarm.BlobServer: %w", err))
	}
	m := b.manifest(c, data)
	if err := protocol.WriteFrame(s, m); err != nil {
		return c, fmt.Errorf("swarm.BlobServer: %w", err)
	}
	// The fetcher may reject the transfer early (Ack{OK: false} after a bad
	// chunk), so its Ack is read while the chunks are written.
	s.SetReadDeadline(time.Time{})
	var (
		mu    sync.Mutex
		early bool // an answer came before the last chunk went out
	)
	acks := make(chan ackResult, 1)
	go func() {
		a, err := protocol.ReadExpect[*protocol.Ack](s)
		mu.Lock()
		early = true
		s.SetWriteDeadline(time.Now()) // unblock a write the fetcher no longer reads
		mu.Unlock()
		acks <- ackResult{a, err}
	}()
	for i := range m.Chunks {
		mu.Lock()
		if !early {
			s.SetWriteDeadline(time.Now().Add(b.idle()))
		}
		stop := early
		mu.Unlock()
		if stop {
			return c, fmt.Errorf("swarm.BlobServer: %s: answer before chunk %d: %w", c, i, (<-acks).early())
		}
		off := i * m.ChunkSize
		chunk := &protocol.BlobChunk{V: protocol.Version, Index: i, Data: data[off : off+m.ChunkLen(i)]}
		if err := protocol.WriteFrame(s, chunk); err != nil {
			mu.Lock()
			stop := early
			mu.Unlock()
			if stop { // the fetcher rejected the transfer while we wrote
				return c, fmt.Errorf("swarm.BlobServer: %s: answer during chunk %d: %w", c, i, (<-acks).early())
			}
			return c, fmt.Errorf("swarm.BlobServer: chunk %d: %w", i, err)
		}
	}
	s.SetReadDeadline(time.Now().Add(b.idle()))
	if err := (<-acks).verdict(); err != nil {
		return c, fmt.Errorf("swarm.BlobServer: %s: %w", c, err)
	}
	return c, nil
}

type ackResult struct {
	ack *protocol.Ack
	err error
}

// early is the verdict of an answer that came before the last chunk: an
// acknowledgement then is a protocol error.
func (r ackResult) early() error {
	if err := r.verdict(); err != nil {
		return err
	}
	return errors.New("acknowledged before the last chunk")
}

// verdict is nil only for a readable Ack{OK: true}.
func (r ackResult) verdict() error {
	switch {
	case r.err != nil:
		return fmt.Errorf("waiting for the ack: %w", r.err)
	case !r.ack.OK:
		return &toldPeer{fmt.Errorf("fetcher rejected the transfer: %s", r.ack.Reason)}
	}
	return nil
}

// toldPeer marks an error the peer was told about in an Error frame: the
// stream is closed, not reset, so that frame arrives.
type toldPeer struct{ err error }

func (t *toldPeer) Error() string { return t.err.Error() }
func (t *toldPeer) Unwrap() error { return t.err }

// tell writes e to s and returns err marked as told (or the write error).
func tell(s network.Stream, e *protocol.Error, err error) error {
	if werr := protocol.WriteFrame(s, e); werr != nil {
		return errors.Join(err, werr)
	}
	return &toldPeer{err}
}

// manifest returns the (cached) manifest of data.
func (b *BlobServer) manifest(c cid.Cid, data []byte) *protocol.BlobManifest {
	b.mu.Lock()
	m, ok := b.manifests[c]
	b.mu.Unlock()
	if ok {
		return m
	}
	m = makeManifest(c, data, b.ChunkSize)
	b.mu.Lock()
	if b.manifests == nil || len(b.manifests) >= 256 {
		b.manifests = make(map[cid.Cid]*protocol.BlobManifest)
	}
	b.manifests[c] = m
	b.mu.Unlock()
	return m
}

func makeManifest(c cid.Cid, data []byte, chunkSize int) *protocol.BlobManifest {
	if chunkSize <= 0 || chunkSize > protocol.MaxBlobChunk {
		chunkSize = protocol.MaxBlobChunk
	}
	chunkSize = max(chunkSize, (len(data)+protocol.MaxBlobChunks-1)/protocol.MaxBlobChunks)
	m := &protocol.BlobManifest{V: protocol.Version, CID: c.String(), Size: int64(len(data)), ChunkSize: chunkSize}
	for off := 0; off < len(data); off += chunkSize {
		sum := sha256.Sum256(data[off:min(off+chunkSize, len(data))])
		m.Chunks = append(m.Chunks, sum[:])
	}
	return m
}

// FetchBlob fetches the blob c from peer p over BlobProtocol. It checks the
// manifest (size at most maxSize, which <= 0 means protocol.MaxBlobBytes)
// before allocating, re-hashes every chunk on arrival against the manifest
// and the whole blob against c, and acknowledges: Ack{OK: true} on success,
// Ack{OK: false} with the reason otherwise. Data that does not match its
// hash gives an error wrapping ErrHashMismatch; a peer without the blob, one
// wrapping ErrNotFound. Cancelling ctx resets the stream.
func FetchBlob(ctx context.Context, h host.Host, p peer.ID, c cid.Cid, maxSize int64) ([]byte, error) {
	if maxSize <= 0 || maxSize > protocol.MaxBlobBytes {
		maxSize = protocol.MaxBlobBytes
	}
	s, err := h.NewStream(ctx, p, protocol.BlobProtocol)
	if err != nil {
		return nil, fmt.Errorf("swarm.FetchBlob %s from %s: %w", c, p, err)
	}
	defer context.AfterFunc(ctx, func() { s.Reset() })()
	data, err := fetch(ctx, s, c, maxSize)
	var rej *rejection
	switch {
	case errors.As(err, &rej):
		// Tell the provider why (it stops sending), then close gracefully
		// so that the Ack arrives before the end of the stream.
		setDeadline(ctx, s.SetWriteDeadline)
		protocol.WriteFrame(s, &protocol.Ack{V: protocol.Version, Reason: truncate(rej.Error(), 1000)})
		s.Close()
	case err != nil:
		s.Reset()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("swarm.FetchBlob %s from %s: %w", c, p, err)
	}
	setDeadline(ctx, s.SetWriteDeadline)
	if err := protocol.WriteFrame(s, &protocol.Ack{V: protocol.Version, OK: true}); err != nil {
		s.Reset()
		return nil, fmt.Errorf("swarm.FetchBlob %s from %s: ack: %w", c, p, err)
	}
	if err := s.Close(); err != nil {
		return nil, fmt.Errorf("swarm.FetchBlob %s from %s: close: %w", c, p, err)
	}
	return data, nil
}

// rejection is a fetch failure caused by what the provider sent (as opposed
// to I/O); the provider is told with Ack{OK: false}.
type rejection struct{ err error }

func (r *rejection) Error() string { return r.err.Error() }
func (r *rejection) Unwrap() error { return r.err }

func reject(format string, args ...any) error { return &rejection{fmt.Errorf(format, args...)} }

// fetch reads a manifest and its chunks and verifies them.
func fetch(ctx context.Context, s network.Stream, c cid.Cid, maxSize int64) ([]byte, error) {
	setDeadline(ctx, s.SetDeadline)
	if err := protocol.WriteFrame(s, &protocol.BlobRequest{V: protocol.Version, CID: c.String()}); err != nil {
		return nil, err
	}
	setDeadline(ctx, s.SetReadDeadline)
	m, err := protocol.ReadExpect[*protocol.BlobManifest](s)
	if err != nil {
		if protocol.KindOf(err) == protocol.KindNotFound {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if m.CID != c.String() {
		return nil, reject("manifest is for %s", m.CID)
	}
	if m.Size > maxSize {
		return nil, reject("blob is %d bytes, over the %d-byte limit", m.Size, maxSize)
	}
	data := make([]byte, 0, m.Size) // Validate bounded Size by MaxBlobBytes
	for i := range m.Chunks {
		setDeadline(ctx, s.SetReadDeadline)
		ch, err := protocol.ReadExpect[*protocol.BlobChunk](s)
		if err != nil {
			return nil, fmt.Errorf("chunk %d: %w", i, err)
		}
		if ch.Index != i || len(ch.Data) != m.ChunkLen(i) {
			return nil, reject("got chunk %d of %d bytes, want chunk %d of %d", ch.Index, len(ch.Data), i, m.ChunkLen(i))
		}
		if sum := sha256.Sum256(ch.Data); !bytes.Equal(sum[:], m.Chunks[i]) {
			return nil, reject("chunk %d: sha256 %x, manifest says %x: %w", i, sum, m.Chunks[i], ErrHashMismatch)
		}
		data = append(data, ch.Data...)
	}
	if err := protocol.VerifyCID(c, data); err != nil {
		return nil, &rejection{err}
	}
	return data, nil
}

// setDeadline sets an I/O deadline of fetchIdleTimeout from now, or ctx's
// deadline if that is sooner.
func setDeadline(ctx context.Context, set func(time.Time) error) {
	d := time.Now().Add(fetchIdleTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	set(d)
}

// truncate cuts s to at most n bytes of valid UTF-8.
func truncate(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.ToValidUTF8(s, "")
}

// FetchFromAny tries providers in turn and returns the blob from the first
// that serves it correctly, with that provider's ID. Providers that fail,
// time out or serve data that does not match c are skipped; the error lists
// every provider's failure.
func FetchFromAny(ctx context.Context, h host.Host, providers []peer.ID, c cid.Cid, maxSize int64) ([]byte, peer.ID, error) {
	var errs []error
	tried := make(map[peer.ID]bool)
	for _, p := range providers {
		if tried[p] || p == h.ID() {
			continue
		}
		tried[p] = true
		data, err := FetchBlob(ctx, h, p, c, maxSize)
		if err == nil {
			return data, p, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, "", fmt.Errorf("swarm.FetchFromAny %s: no providers", c)
	}
	return nil, "", fmt.Errorf("swarm.FetchFromAny %s: all %d providers failed: %w", c, len(errs), errors.Join(errs...))
}
