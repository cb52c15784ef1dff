package swarm

import (
	"context"
	"fmt"
	"sync"

	"carryon/protocol"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// GossipRPCBytes is the pubsub RPC size limit set on every carryon
// PubSub: room for a few protocol.MaxGossipBytes messages per RPC with
// their envelopes. An RPC over the limit is dropped without an error, which
// is why Publish checks each message against MaxGossipBytes first.
const GossipRPCBytes = 4 * protocol.MaxGossipBytes

// NewPubSub starts gossipsub on h for carryon: flood publishing on (a
// message published right after joining otherwise reaches only mesh peers,
// which a fresh peer has none of yet), every message signed by its author
// and signatures verified strictly, and the RPC size limit set explicitly.
func NewPubSub(ctx context.Context, h host.Host) (*pubsub.PubSub, error) {
	return newPubSub(ctx, h)
}

// newPubSub is NewPubSub with extra options (tests add a tracer).
func newPubSub(ctx context.Context, h host.Host, extra ...pubsub.Option) (*pubsub.PubSub, error) {
	opts := append([]pubsub.Option{
		pubsub.WithFloodPublish(true),
		pubsub.WithMessageSigning(true),
		pubsub.WithStrictSignatureVerification(true),
		pubsub.WithMaxMessageSize(GossipRPCBytes),
	}, extra...)
	ps, err := pubsub.NewGossipSub(ctx, h, opts...)
	if err != nil {
		return nil, fmt.Errorf("swarm.NewPubSub: %w", err)
	}
	return ps, nil
}

// Topics are a swarm's gossip topics, joined with their validators.
type Topics struct {
	Nodes    *pubsub.Topic // protocol.Advert from nodes
	Adaptors *pubsub.Topic // signed protocol.AdaptorAnnounce from the coordinator
	Control  *pubsub.Topic // signed protocol.Roster and protocol.JobAnnounce from the coordinator

	ps *pubsub.PubSub
}

// JoinTopics joins swarm's topics (protocol.NodesTopic/AdaptorsTopic) and
// registers their validators, which run on received and locally published
// messages alike:
//
//   - Nodes: the payload must be a valid *protocol.Advert whose Peer is the
//     message's author, else Reject. An advert no newer (UnixMilli) than the
//     last accepted one from that peer is Ignored.
//   - Adaptors: the payload must be a valid *protocol.AdaptorAnnounce whose
//     signature verifies, whose signer is the message's author and, when
//     trustedSigners is non-empty, one of them; else Reject. An announcement
//     whose Step is not above the last accepted Step from that signer for
//     that BaseHash, or whose CID was already accepted, is Ignored.
//   - Control: the payload must be a valid *protocol.Roster whose signature
//     verifies and whose signer is the message's author, or a valid
//     *protocol.JobAnnounce; else Reject. A roster whose Seq is not above
//     the last accepted one from that signer, or a job announcement no
//     newer than the last from its author, is Ignored. Whether a roster's
//     signer is trusted is for its receiver (RosterGate) to decide.
func JoinTopics(ps *pubsub.PubSub, swarm string, trustedSigners []peer.ID) (*Topics, error) {
	t := &Topics{ps: ps}
	nodes, adaptors, control := protocol.NodesTopic(swarm), protocol.AdaptorsTopic(swarm), protocol.ControlTopic(swarm)
	if err := ps.RegisterTopicValidator(nodes, newAdvertValidator().validate); err != nil {
		return nil, fmt.Errorf("swarm.JoinTopics: %w", err)
	}
	if err := ps.RegisterTopicValidator(adaptors, newAnnounceValidator(trustedSigners).validate); err != nil {
		ps.UnregisterTopicValidator(nodes)
		return nil, fmt.Errorf("swarm.JoinTopics: %w", err)
	}
	if err := ps.RegisterTopicValidator(control, newControlValidator().validate); err != nil {
		ps.UnregisterTopicValidator(nodes)
		ps.UnregisterTopicValidator(adaptors)
		return nil, fmt.Errorf("swarm.JoinTopics: %w", err)
	}
	var err error
	if t.Nodes, err = ps.Join(nodes); err == nil {
		if t.Adaptors, err = ps.Join(adaptors); err == nil {
			t.Control, err = ps.Join(control)
		}
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("swarm.JoinTopics: %w", err)
	}
	return t, nil
}

// Close leaves both topics and removes their validators. Subscriptions must
// be cancelled first (pubsub refuses to close a topic that has them).
func (t *Topics) Close() error {
	var first error
	for _, tp := range []*pubsub.Topic{t.Nodes, t.Adaptors, t.Control} {
		if tp == nil {
			continue
		}
		name := tp.String()
		if err := tp.Close(); err != nil && first == nil {
			first = fmt.Errorf("swarm.Topics.Close %s: %w", name, err)
		}
	}
	if t.Nodes != nil {
		t.ps.UnregisterTopicValidator(t.Nodes.String())
	}
	if t.Adaptors != nil {
		t.ps.UnregisterTopicValidator(t.Adaptors.String())
	}
	if t.Control != nil {
		t.ps.UnregisterTopicValidator(t.Control.String())
	}
	return first
}

// Publish checks m (valid, and its frame at most protocol.MaxGossipBytes)
// and only then publishes it on t.
func Publish(ctx context.Context, t *pubsub.Topic, m protocol.Message) error {
	b, err := protocol.Marshal(m)
	if err != nil {
		return fmt.Errorf("swarm.Publish: %w", err)
	}
	if len(b) > protocol.MaxGossipBytes {
		return fmt.Errorf("swarm.Publish %v on %s: %d bytes, over the %d-byte gossip limit", m.Type(), t, len(b), protocol.MaxGossipBytes)
	}
	if err := t.Publish(ctx, b); err != nil {
		return fmt.Errorf("swarm.Publish %v on %s: %w", m.Type(), t, err)
	}
	return nil
}

// NextGossip returns the next message on sub that decodes as a T, with the
// peer that published it, skipping any other (what reaches a subscription
// has passed the topic's validator); its error is sub.Next's (ctx done,
// subscription cancelled).
func NextGossip[T protocol.Message](ctx context.Context, sub *pubsub.Subscription) (T, peer.ID, error) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			var zero T
			return zero, "", err
		}
		if v, ok := parseGossip[T](msg); ok {
			return v, msg.GetFrom(), nil
		}
	}
}

// parseGossip decodes a gossip payload as a T.
func parseGossip[T protocol.Message](msg *pubsub.Message) (T, bool) {
	var zero T
	if len(msg.Data) > protocol.MaxGossipBytes {
		return zero, false
	}
	m, err := protocol.Unmarshal(msg.Data)
	if err != nil {
		return zero, false
	}
	v, ok := m.(T)
	return v, ok
}

// maxTracked bounds the validators' memory of peers and CIDs; when a map
// fills up it is cleared (forgetting only lets a stale message through once
// more, which the receivers' own checks absorb).
const maxTracked = 4096

type advertValidator struct {
	mu   sync.Mutex
	last map[peer.ID]int64 // UnixMilli of the last accepted advert
}

func newAdvertValidator() *advertValidator {
	return &advertValidator{last: make(map[peer.ID]int64)}
}

func (v *advertValidator) validate(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	a, ok := parseGossip[*protocol.Advert](msg)
	if !ok || a.Peer != msg.GetFrom().String() {
		return pubsub.ValidationReject
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	from := msg.GetFrom()
	if last, seen := v.last[from]; seen && a.UnixMilli <= last {
		return pubsub.ValidationIgnore
	}
	if len(v.last) >= maxTracked {
		clear(v.last)
	}
	v.last[from] = a.UnixMilli
	return pubsub.ValidationAccept
}

type stepKey struct {
	signer peer.ID
	base   string
}

type announceValidator struct {
	trusted map[peer.ID]bool // empty: any signer

	mu   sync.Mutex
	step map[stepKey]int // last accepted Step per (signer, BaseHash)
	cids map[string]bool // CIDs accepted
}

func newAnnounceValidator(trusted []peer.ID) *announceValidator {
	v := &announceValidator{trusted: make(map[peer.ID]bool), step: make(map[stepKey]int), cids: make(map[string]bool)}
	for _, p := range trusted {
		v.trusted[p] = true
	}
	return v
}

func (v *announceValidator) validate(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	a, ok := parseGossip[*protocol.AdaptorAnnounce](msg)
	if !ok {
		return pubsub.ValidationReject
	}
	signer, err := a.Verify()
	if err != nil || signer != msg.GetFrom() || (len(v.trusted) > 0 && !v.trusted[signer]) {
		return pubsub.ValidationReject
	}
	k := stepKey{signer, a.BaseHash}
	v.mu.Lock()
	defer v.mu.Unlock()
	if last, seen := v.step[k]; (seen && a.Step <= last) || v.cids[a.CID] {
		return pubsub.ValidationIgnore
	}
	if len(v.step) >= maxTracked {
		clear(v.step)
	}
	if len(v.cids) >= maxTracked {
		clear(v.cids)
	}
	v.step[k] = a.Step
	v.cids[a.CID] = true
	return pubsub.ValidationAccept
}

type controlValidator struct {
	mu     sync.Mutex
	roster map[peer.ID]uint64 // last accepted Roster.Seq per signer
	jobs   map[peer.ID]int64  // last accepted JobAnnounce.UnixMilli per author
}

func newControlValidator() *controlValidator {
	return &controlValidator{roster: make(map[peer.ID]uint64), jobs: make(map[peer.ID]int64)}
}

func (v *controlValidator) validate(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	if len(msg.Data) > protocol.MaxGossipBytes {
		return pubsub.ValidationReject
	}
	m, err := protocol.Unmarshal(msg.Data)
	if err != nil {
		return pubsub.ValidationReject
	}
	from := msg.GetFrom()
	v.mu.Lock()
	defer v.mu.Unlock()
	switch m := m.(type) {
	case *protocol.Roster:
		signer, err := m.Verify()
		if err != nil || signer != from {
			return pubsub.ValidationReject
		}
		if last, seen := v.roster[from]; seen && m.Seq <= last {
			return pubsub.ValidationIgnore
		}
		if len(v.roster) >= maxTracked {
			clear(v.roster)
		}
		v.roster[from] = m.Seq
	case *protocol.JobAnnounce:
		if last, seen := v.jobs[from]; seen && m.UnixMilli <= last {
			return pubsub.ValidationIgnore
		}
		if len(v.jobs) >= maxTracked {
			clear(v.jobs)
		}
		v.jobs[from] = m.UnixMilli
	default:
		return pubsub.ValidationReject
	}
	return pubsub.ValidationAccept
}
