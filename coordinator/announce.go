package coordinator

import (
	"context"
	"strings"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"carryon/protocol"
	"carryon/swarm"
)

// JobAnnounceInterval is how often a collecting coordinator republishes
// its protocol.JobAnnounce on the control topic; it also publishes one
// (at most once a second) whenever a peer starts listening there.
const JobAnnounceInterval = 10 * time.Second

// announcer is the loop's JobAnnounce state (owned by the loop goroutine).
type announcer struct {
	last  time.Time
	due   bool          // a peer joined the control topic since the last one
	joins chan struct{} // from watchControlJoins
}

// watchControlJoins signals joins whenever a peer subscribes to the
// control topic (a node starting, or one reconnecting).
func watchControlJoins(ctx context.Context, t *pubsub.Topic, joins chan<- struct{}) {
	h, err := t.EventHandler()
	if err != nil {
		return
	}
	defer h.Cancel()
	for {
		ev, err := h.NextPeerEvent(ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin {
			select {
			case joins <- struct{}{}:
			default:
			}
		}
	}
}

// jobAnnounce describes the job now.
func (l *loop) jobAnnounce() *protocol.JobAnnounce {
	cfg := l.job.model.Config
	name := l.cfg.BaseName
	if name == "" || l.job.model != l.c.base {
		name = cfg.Arch
	}
	n := 0
	now := time.Now()
	for _, s := range l.nodes {
		if l.eligible(s, now) {
			n++
		}
	}
	return &protocol.JobAnnounce{V: protocol.Version, Job: strings.ToLower(l.job.ID),
		Base:  protocol.BaseInfo{Name: name, WeightsHash: l.job.Base, Arch: cfg.Arch, Dim: cfg.Dim, Layers: cfg.Layers, Vocab: cfg.Vocab},
		Codec: l.job.Codec.String(), Joined: n, MinNodes: l.cfg.MinNodes, Pending: l.pendingLen(), UnixMilli: now.UnixMilli()}
}

// announce publishes the job's JobAnnounce when one is due: every
// JobAnnounceInterval, or a second after the last when a peer has joined
// the control topic. Publishing runs on its own goroutine.
func (l *loop) announce(ctx context.Context) {
	if l.c.topics == nil || l.c.topics.Control == nil {
		return
	}
	since := time.Since(l.ann.last)
	if since < JobAnnounceInterval && !(l.ann.due && since >= time.Second) {
		return
	}
	l.ann.last, l.ann.due = time.Now(), false
	a := l.jobAnnounce()
	go func() {
		if err := swarm.Publish(ctx, l.c.topics.Control, a); err != nil && ctx.Err() == nil {
			l.c.log.Debug("job announcement not published", "err", err)
		}
	}()
}
