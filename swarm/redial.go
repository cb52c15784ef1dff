package swarm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	lpswarm "github.com/libp2p/go-libp2p/p2p/net/swarm"
	ma "github.com/multiformats/go-multiaddr"
)

// RedialConfig configures KeepConnected. Zero values mean the defaults.
type RedialConfig struct {
	// Min is the wait after the first failed dial; each further failure
	// doubles it, up to Max. Default 250 ms.
	Min time.Duration
	// Max caps the wait between two dials. Default 10 s: a restarted
	// coordinator has its volunteers back within about Max of listening
	// again, while 10,000 waiting volunteers dial it at most ~1,000 times a
	// second between them (the waits are jittered, so they do not arrive
	// together).
	Max time.Duration
	// DialTimeout bounds one dial, handshake included. Default 10 s.
	DialTimeout time.Duration
	// OnEvent, when set, is told about every connection made, lost and
	// failed dial. It runs on the peer's own goroutine (calls for one peer
	// are in order; calls for different peers may be concurrent).
	OnEvent func(RedialEvent)
}

func (c RedialConfig) withDefaults() RedialConfig {
	if c.Min <= 0 {
		c.Min = 250 * time.Millisecond
	}
	if c.Max <= 0 {
		c.Max = 10 * time.Second
	}
	if c.Max < c.Min {
		c.Max = c.Min
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	return c
}

// Validate reports a negative duration.
func (c RedialConfig) Validate() error {
	if c.Min < 0 || c.Max < 0 || c.DialTimeout < 0 {
		return fmt.Errorf("swarm.RedialConfig: negative duration (Min %v, Max %v, DialTimeout %v)", c.Min, c.Max, c.DialTimeout)
	}
	return nil
}

// RedialKind says what a RedialEvent reports.
type RedialKind int

const (
	// Connected: a dial succeeded (or the peer dialled us).
	Connected RedialKind = iota
	// Lost: the last connection to the peer closed; redialling starts at once.
	Lost
	// DialFailed: a dial failed; the next one is in Wait.
	DialFailed
)

func (k RedialKind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Lost:
		return "lost"
	case DialFailed:
		return "dial failed"
	}
	return fmt.Sprintf("RedialKind(%d)", int(k))
}

// RedialEvent is one change in a kept peer's connection.
type RedialEvent struct {
	Kind RedialKind
	Peer peer.ID
	// Addr is the remote address of the new connection (Connected).
	Addr ma.Multiaddr
	// First is true for the first Connected of this peer since
	// KeepConnected started (there was no Lost before it).
	First bool
	// Down is how long the peer had been unreachable (Connected after
	// Lost; DialFailed since Lost, or since start).
	Down time.Duration
	// Attempts counts the dials since the peer was last connected (or since
	// start), this one included.
	Attempts int
	// Err is the dial's error (DialFailed).
	Err error
	// Wait is how long until the next dial (DialFailed).
	Wait time.Duration
}

// Keeper keeps a host connected to a set of peers (KeepConnected).
type Keeper struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	h      host.Host
	nb     *network.NotifyBundle
}

// KeepConnected dials each of peers now and, whenever the last connection
// to one of them closes, redials it at once and then with jittered
// exponential backoff (cfg.Min doubling to cfg.Max) until it answers, for
// as long as ctx lasts or until Close. libp2p's own dial backoff for the
// peer is cleared before each dial, so a peer that comes back is dialled at
// the next attempt rather than after libp2p's 5 s+ penalty. Addresses are
// dialled as given each time, so /dns4 and /dns6 names are resolved again
// on every attempt.
func KeepConnected(ctx context.Context, h host.Host, peers []peer.AddrInfo, cfg RedialConfig) (*Keeper, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(ctx)
	k := &Keeper{cancel: cancel, h: h}
	lost := make(map[peer.ID]chan struct{}, len(peers))
	for _, ai := range peers {
		if ai.ID == h.ID() {
			continue
		}
		if _, dup := lost[ai.ID]; !dup {
			lost[ai.ID] = make(chan struct{}, 1)
		}
	}
	k.nb = &network.NotifyBundle{DisconnectedF: func(_ network.Network, c network.Conn) {
		if ch, ok := lost[c.RemotePeer()]; ok {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}}
	h.Network().Notify(k.nb)
	for _, ai := range mergeAddrInfos(peers) {
		if ai.ID == h.ID() {
			continue
		}
		k.wg.Go(func() { k.keep(ctx, ai, lost[ai.ID], cfg) })
	}
	return k, nil
}

// Close stops redialling (connections stay open) and waits for the
// per-peer goroutines.
func (k *Keeper) Close() {
	k.cancel()
	k.h.Network().StopNotify(k.nb)
	k.wg.Wait()
}

func (k *Keeper) keep(ctx context.Context, ai peer.AddrInfo, lost <-chan struct{}, cfg RedialConfig) {
	emit := func(e RedialEvent) {
		if cfg.OnEvent != nil && ctx.Err() == nil {
			e.Peer = ai.ID
			cfg.OnEvent(e)
		}
	}
	first := true
	downSince := time.Now()
	wait, attempts := cfg.Min, 0
	for ctx.Err() == nil {
		if conns := k.h.Network().ConnsToPeer(ai.ID); len(conns) > 0 {
			if attempts > 0 || first {
				emit(RedialEvent{Kind: Connected, Addr: conns[0].RemoteMultiaddr(), First: first,
					Down: since(first, downSince), Attempts: attempts})
			}
			first, attempts, wait = false, 0, cfg.Min
			select {
			case <-ctx.Done():
				return
			case <-lost:
			}
			if k.h.Network().Connectedness(ai.ID) != network.Connected {
				downSince = time.Now()
				emit(RedialEvent{Kind: Lost})
			}
			continue
		}
		attempts++
		err := k.dial(ctx, ai, cfg.DialTimeout)
		if err == nil {
			continue // reported at the top of the loop
		}
		d := jitter(wait)
		emit(RedialEvent{Kind: DialFailed, Err: err, Attempts: attempts, Wait: d, Down: time.Since(downSince)})
		wait = min(2*wait, cfg.Max)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func since(first bool, t time.Time) time.Duration {
	if first {
		return 0
	}
	return time.Since(t)
}

func (k *Keeper) dial(ctx context.Context, ai peer.AddrInfo, timeout time.Duration) error {
	if s, ok := k.h.Network().(*lpswarm.Swarm); ok {
		s.Backoff().Clear(ai.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := Connect(ctx, k.h, ai)
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// mergeAddrInfos merges the entries for one peer (several addresses of the
// same coordinator, given as separate /p2p/ addresses) into one, keeping
// the first-seen order of peers.
func mergeAddrInfos(in []peer.AddrInfo) []peer.AddrInfo {
	var out []peer.AddrInfo
	idx := map[peer.ID]int{}
	for _, ai := range in {
		i, ok := idx[ai.ID]
		if !ok {
			idx[ai.ID] = len(out)
			out = append(out, peer.AddrInfo{ID: ai.ID})
			i = len(out) - 1
		}
		for _, a := range ai.Addrs {
			dup := false
			for _, b := range out[i].Addrs {
				dup = dup || a.Equal(b)
			}
			if !dup {
				out[i].Addrs = append(out[i].Addrs, a)
			}
		}
	}
	return out
}
