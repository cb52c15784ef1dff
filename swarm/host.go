package swarm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"carryon/internal/atomicfile"
	"carryon/protocol"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// HostConfig configures NewHost. The zero value is a loopback-only host in
// the public swarm with a fresh identity.
type HostConfig struct {
	// ListenAddrs are TCP multiaddrs to listen on; nil means
	// ["/ip4/127.0.0.1/tcp/0"] (loopback, any port).
	ListenAddrs []string
	// PSK is the private swarm key (protocol.ParseSwarmKey); peers without
	// the same key cannot complete a handshake. nil = the public swarm.
	PSK pnet.PSK
	// Key is the host's identity; nil means a new Ed25519 key (see
	// LoadOrCreateKey for a persistent one).
	Key crypto.PrivKey
	// QUIC adds a /udp/0/quic-v1 listener on each listen IP. libp2p's pnet
	// cannot protect QUIC, so QUIC with a PSK is a configuration error
	// rather than silently dropped.
	QUIC bool
	// DialTimeout bounds each dial, handshake included; 0 means 5s. A peer
	// with another swarm key (or none) fails the handshake at once or, as
	// the garbled bytes happen to fall, when this expires.
	DialTimeout time.Duration
	// Allow, when non-empty, admits only these peers (a connection gater
	// refuses every other peer on dial and on accept).
	Allow []peer.ID
	// Gate, when non-nil, is used instead of Allow, so members can be
	// admitted and revoked while the host runs.
	Gate *AllowList
	// Roster, when non-nil, is used instead of Gate and Allow: the signed
	// roster of a closed swarm (see RosterGate, FollowRoster).
	Roster *RosterGate
	// NAT enables NAT traversal services; nil (the loopback default)
	// enables none of them.
	NAT *NATConfig
}

// DefaultDialTimeout is HostConfig.DialTimeout's zero-value meaning.
const DefaultDialTimeout = 5 * time.Second

// ErrQUICWithPSK is returned for HostConfig{QUIC: true, PSK: ...}.
var ErrQUICWithPSK = errors.New("QUIC cannot be used with a private swarm key (pnet): use TCP")

// Validate checks the configuration without building anything.
func (c *HostConfig) Validate() error {
	if c.QUIC && len(c.PSK) > 0 {
		return fmt.Errorf("swarm.HostConfig: %w", ErrQUICWithPSK)
	}
	if c.PSK != nil && len(c.PSK) != 32 {
		return fmt.Errorf("swarm.HostConfig: PSK is %d bytes, want 32", len(c.PSK))
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("swarm.HostConfig: DialTimeout %v is negative", c.DialTimeout)
	}
	for i, s := range c.ListenAddrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("swarm.HostConfig: ListenAddrs[%d]: %w", i, err)
		}
		if _, err := a.ValueForProtocol(ma.P_TCP); err != nil {
			return fmt.Errorf("swarm.HostConfig: ListenAddrs[%d] %s: not a TCP address", i, s)
		}
	}
	if err := c.NAT.validate(); err != nil {
		return err
	}
	return nil
}

// listenAddrs returns the TCP listen addresses and, with QUIC, a QUIC one on
// each of their IPs.
func (c *HostConfig) listenAddrs() ([]string, error) {
	addrs := c.ListenAddrs
	if len(addrs) == 0 {
		addrs = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	if !c.QUIC {
		return addrs, nil
	}
	out := append([]string(nil), addrs...)
	for _, s := range addrs {
		a, _ := ma.NewMultiaddr(s)
		ip, rest := ma.SplitFirst(a)
		if ip == nil || rest == nil {
			return nil, fmt.Errorf("swarm.NewHost: cannot derive a QUIC address from %s", s)
		}
		out = append(out, ip.String()+"/udp/0/quic-v1")
	}
	return out, nil
}

// NewHost builds a libp2p host for carryon: Noise security, Yamux streams,
// TCP (and QUIC when asked), the swarm key, the allow-list gater and a
// resource manager with carryon's stream limits. It starts listening.
func NewHost(cfg HostConfig) (host.Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	key := cfg.Key
	if key == nil {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("swarm.NewHost: %w", err)
		}
		key = k
	}
	dialTimeout := cfg.DialTimeout
	if dialTimeout == 0 {
		dialTimeout = DefaultDialTimeout
	}
	addrs, err := cfg.listenAddrs()
	if err != nil {
		return nil, err
	}
	rm, err := newResourceManager()
	if err != nil {
		return nil, fmt.Errorf("swarm.NewHost: resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.ListenAddrStrings(addrs...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithConnectionTimeout(dialTimeout)),
		libp2p.ResourceManager(rm),
		libp2p.WithDialTimeout(dialTimeout),
		libp2p.DisableMetrics(),
	}
	if cfg.QUIC {
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport))
	}
	if len(cfg.PSK) > 0 {
		opts = append(opts, libp2p.PrivateNetwork(cfg.PSK))
	}
	gate := cfg.Gate
	if gate == nil && len(cfg.Allow) > 0 {
		gate = NewAllowList(cfg.Allow...)
	}
	switch {
	case cfg.Roster != nil:
		opts = append(opts, libp2p.ConnectionGater(cfg.Roster))
	case gate != nil:
		opts = append(opts, libp2p.ConnectionGater(gate))
	}
	opts = append(opts, natOptions(cfg.NAT)...)
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("swarm.NewHost: %w", err)
	}
	return h, nil
}

// Stream limits for carryon's protocols. libp2p's defaults allow about 64
// inbound streams per protocol per peer (and 256 per peer overall), sized
// for chatty DHT-style protocols. A coordinator keeps many embedding jobs in
// flight to one fast node, so the
// limits for our protocols are raised to protoPeerStreams per peer, and the
// per-peer, transient (pre-negotiation) and system stream limits are raised
// above that so they do not bind first. Memory limits stay at libp2p's
// defaults: our buffers are bounded by the protocol's frame caps.
const (
	protoPeerStreams = 1024
	protoStreams     = 8192
	peerStreams      = 4096
	transientStreams = 2048
	systemStreams    = 16384
)

func newResourceManager() (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	for _, p := range []libp2pproto.ID{protocol.EmbedProtocol} {
		limits.AddProtocolLimit(p,
			rcmgr.BaseLimit{Streams: protoStreams, StreamsInbound: protoStreams, StreamsOutbound: protoStreams, Memory: 256 << 20},
			rcmgr.BaseLimitIncrease{})
		limits.AddProtocolPeerLimit(p,
			rcmgr.BaseLimit{Streams: protoPeerStreams, StreamsInbound: protoPeerStreams, StreamsOutbound: protoPeerStreams, Memory: 64 << 20},
			rcmgr.BaseLimitIncrease{})
	}
	raise := func(b *rcmgr.BaseLimit, n int) {
		b.Streams, b.StreamsInbound, b.StreamsOutbound = max(b.Streams, n), max(b.StreamsInbound, n), max(b.StreamsOutbound, n)
	}
	raise(&limits.PeerBaseLimit, peerStreams)
	raise(&limits.TransientBaseLimit, transientStreams)
	raise(&limits.SystemBaseLimit, systemStreams)
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
}

// LoadOrCreateKey reads a libp2p private key from path, or creates a new
// Ed25519 key there (mode 0600, written atomically) if the file does not
// exist, so a node keeps its peer ID across restarts.
func LoadOrCreateKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("swarm.LoadOrCreateKey %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("swarm.LoadOrCreateKey: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("swarm.LoadOrCreateKey: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("swarm.LoadOrCreateKey: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("swarm.LoadOrCreateKey: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("swarm.LoadOrCreateKey: %w", err)
	}
	return k, nil
}

// ErrNotInSwarm is what Connect's error wraps when the security handshake
// failed, which between carryon hosts means the two do not share a swarm
// key: another key, or a key on one side only.
var ErrNotInSwarm = errors.New("the peer is not in this swarm (different or missing key)")

// Connect dials ai like h.Connect, and says so in the user's terms when the
// peer is not in h's swarm (ErrNotInSwarm) instead of the garbled-handshake
// messages libp2p reports ("incoming message was too large", "message did
// not have trailing newline", "could not read full nonce"); libp2p's error
// stays reachable through errors.Unwrap.
func Connect(ctx context.Context, h host.Host, ai peer.AddrInfo) error {
	err := h.Connect(ctx, ai)
	if err == nil {
		return nil
	}
	if notInSwarm(err) {
		return &notInSwarmError{cause: err}
	}
	return err
}

// Ask writes the request m on s and reads the reply, which must be a T (a
// remote *protocol.Error comes back as the error). On failure it resets s,
// so that the peer sees the exchange fail rather than end cleanly.
func Ask[T protocol.Message](s network.Stream, m protocol.Message) (T, error) {
	if err := protocol.WriteFrame(s, m); err != nil {
		s.Reset()
		var zero T
		return zero, err
	}
	r, err := protocol.ReadExpect[T](s)
	if err != nil {
		s.Reset()
	}
	return r, err
}

// notInSwarm: a security handshake that failed for a reason other than a
// peer ID mismatch (the peer answered, with garbage or not at all).
func notInSwarm(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "failed to negotiate security protocol") && !strings.Contains(msg, "peer id mismatch")
}

type notInSwarmError struct{ cause error }

func (e *notInSwarmError) Error() string {
	return ErrNotInSwarm.Error()
}

func (e *notInSwarmError) Is(target error) bool { return target == ErrNotInSwarm }
func (e *notInSwarmError) Unwrap() error        { return e.cause }
