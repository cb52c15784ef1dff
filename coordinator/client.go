package coordinator

import (
	"context"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/dataset"
	"carryon/model"
	"carryon/protocol"
	"carryon/tensor"
)

// embedJob describes what the coordinator asks of nodes.
type embedJob struct {
	ID     string
	Base   string // the base's EmbedHash (weights and numerics)
	Dim    int
	Layers []int
	Codec  tensor.Codec
	// model is the base itself (the coordinator's own, or a mixed one of
	// Config.Mix): its config for announcements, and its forward pass for
	// CollectLocal and self-verification.
	model *model.Base
}

// errBadResult marks a result that breaks the protocol or the request
// (wrong job, wrong shape, undecodable): the node is at fault, not the
// network.
var errBadResult = errors.New("bad result")

// embedChunk asks peer p for the bridged embeddings of chunk ch. The
// results are checked against the request, handed to accept (which makes
// them durable, or holds them in memory and reports held), and only then
// acknowledged: a node forgets a result only on an Ack without Held. The
// returned entries are indexed [layer][seq].
func embedChunk(ctx context.Context, h host.Host, p peer.ID, job embedJob, ch *dataset.Chunk,
	accept func([][]Entry) (held bool, err error)) (entries [][]Entry, computeMillis int64, err error) {
	s, err := h.NewStream(ctx, p, protocol.EmbedProtocol)
	if err != nil {
		return nil, 0, fmt.Errorf("open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	refused := false
	defer func() {
		if err != nil && !refused {
			s.Reset()
		} else {
			s.Close() // a reset would discard the frames still in flight
		}
	}()
	req := &protocol.EmbedRequest{V: protocol.Version, JobID: job.ID, ChunkID: ch.ID, BaseHash: job.Base,
		Layers: job.Layers, Codec: job.Codec.String(), Seqs: ch.TokenSeqs()}
	if err := protocol.WriteFrame(s, req); err != nil {
		return nil, 0, fmt.Errorf("send request: %w", err)
	}
	entries, err = readResults(s, job, ch)
	if err != nil {
		return nil, 0, err
	}
	done, err := protocol.ReadExpect[*protocol.EmbedDone](s)
	if err != nil {
		return nil, 0, fmt.Errorf("read done: %w", err)
	}
	if done.JobID != job.ID || done.ChunkID != ch.ID || done.Results != len(ch.Seqs)*len(job.Layers) {
		return nil, 0, fmt.Errorf("%w: done message for job %q chunk %s with %d results does not match", errBadResult, done.JobID, short(done.ChunkID), done.Results)
	}
	held, err := accept(entries)
	if errors.Is(err, errNotTaken) {
		return nil, 0, err // reset, no Ack: the node keeps the result
	}
	if err != nil {
		refused = true
		_ = protocol.WriteFrame(s, &protocol.Ack{V: protocol.AckVersion, JobID: job.ID, ChunkID: ch.ID, OK: false, Reason: protocol.Errorf(protocol.KindInternal, "%v", err).Msg})
		return nil, 0, err
	}
	if err := protocol.WriteFrame(s, &protocol.Ack{V: protocol.AckVersion, JobID: job.ID, ChunkID: ch.ID, OK: true, Held: held}); err != nil {
		return nil, 0, fmt.Errorf("send ack: %w", err)
	}
	return entries, done.ComputeMillis, nil
}

// readResults reads one EmbedResult per (sequence, layer), in any order,
// checking each against the request before keeping it.
func readResults(s interface {
	Read([]byte) (int, error)
}, job embedJob, ch *dataset.Chunk) ([][]Entry, error) {
	entries := make([][]Entry, len(job.Layers))
	for i := range entries {
		entries[i] = make([]Entry, len(ch.Seqs))
	}
	layerIdx := map[int]int{}
	for i, l := range job.Layers {
		layerIdx[l] = i
	}
	scratch := []float32{}
	for range len(ch.Seqs) * len(job.Layers) {
		res, err := protocol.ReadExpect[*protocol.EmbedResult](s)
		if err != nil {
			return nil, fmt.Errorf("read result: %w", err)
		}
		li, ok := layerIdx[res.Layer]
		switch {
		case res.JobID != job.ID || res.ChunkID != ch.ID:
			return nil, fmt.Errorf("%w: result for job %q chunk %s, want job %q chunk %s", errBadResult, res.JobID, short(res.ChunkID), job.ID, short(ch.ID))
		case !ok || res.Seq < 0 || res.Seq >= len(ch.Seqs):
			return nil, fmt.Errorf("%w: result for layer %d sequence %d was not requested", errBadResult, res.Layer, res.Seq)
		case entries[li][res.Seq].Data != nil:
			return nil, fmt.Errorf("%w: duplicate result for layer %d sequence %d", errBadResult, res.Layer, res.Seq)
		case res.Codec != job.Codec.String() || res.Rows != len(ch.Seqs[res.Seq].Tokens) || res.Dim != job.Dim:
			return nil, fmt.Errorf("%w: sequence %d: got %s %d×%d, want %s %d×%d", errBadResult, res.Seq, res.Codec, res.Rows, res.Dim, job.Codec, len(ch.Seqs[res.Seq].Tokens), job.Dim)
		case len(res.Data) != job.Codec.EncodedSize(res.Rows, res.Dim):
			return nil, fmt.Errorf("%w: sequence %d: %d payload bytes, want %d", errBadResult, res.Seq, len(res.Data), job.Codec.EncodedSize(res.Rows, res.Dim))
		}
		if n := res.Rows * res.Dim; cap(scratch) < n {
			scratch = make([]float32, n)
		}
		if err := job.Codec.Decode(scratch[:res.Rows*res.Dim], res.Data, res.Rows, res.Dim); err != nil {
			return nil, fmt.Errorf("%w: sequence %d: %v", errBadResult, res.Seq, err)
		}
		entries[li][res.Seq] = Entry{Rows: res.Rows, Dim: res.Dim, Data: res.Data}
	}
	return entries, nil
}
