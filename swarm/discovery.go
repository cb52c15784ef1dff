package swarm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pproto "github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
)

// DHTMode selects whether and how a host takes part in the swarm's
// Kademlia DHT.
type DHTMode int

const (
	// DHTOff runs no DHT.
	DHTOff DHTMode = iota
	// DHTAuto answers queries (server mode) unless AutoNAT finds the host
	// unreachable, then only asks (client mode).
	DHTAuto
	// DHTServer always answers queries. Loopback and namespace tests need
	// it: with AutoNAT silent every auto-mode host stays a client and the
	// routing tables stay empty.
	DHTServer
	// DHTClient only asks (short-lived processes such as `carryon pull`).
	DHTClient
)

// ParseDHTMode parses "off", "auto", "server" or "client".
func ParseDHTMode(s string) (DHTMode, error) {
	for m, name := range dhtModeNames {
		if s == name {
			return DHTMode(m), nil
		}
	}
	return DHTOff, fmt.Errorf("swarm.ParseDHTMode: %q: want off, auto, server or client", s)
}

var dhtModeNames = [...]string{"off", "auto", "server", "client"}

func (m DHTMode) String() string {
	if m < 0 || int(m) >= len(dhtModeNames) {
		return fmt.Sprintf("DHTMode(%d)", int(m))
	}
	return dhtModeNames[m]
}

// DiscoveryConfig configures NewDiscovery.
type DiscoveryConfig struct {
	// Swarm is the swarm's name (protocol.SwarmName). It names the mDNS
	// service ("carryon-<swarm>") and, in a private swarm, the DHT's
	// protocol prefix.
	Swarm string
	// Private marks a swarm with a key: its DHT speaks
	// /carryon/<swarm>/kad/1.0.0, so it never mixes with the public IPFS
	// DHT (which a public swarm's DHT is, /ipfs/kad/1.0.0).
	Private bool
	// DHT is the host's DHT mode; DHTOff runs none.
	DHT DHTMode
	// Bootstrap are DHT peers to start from besides the peers h is already
	// connected to.
	Bootstrap []peer.AddrInfo
	// MDNS finds and connects to peers of the same swarm on the local
	// network by multicast DNS.
	MDNS bool
	// OnPeerFound, when set, is called after each peer mDNS finds, with the
	// result of connecting to it. It may be called concurrently.
	OnPeerFound func(peer.AddrInfo, error)
	// ReprovideInterval is how often provided CIDs are announced again; 0
	// means 12h (provider records live 48h).
	ReprovideInterval time.Duration
}

// MDNSServiceName is the mDNS service a swarm's peers announce.
func MDNSServiceName(swarm string) string { return "carryon-" + swarm }

// DHTPrefix is the DHT protocol prefix for a swarm.
func DHTPrefix(swarm string, private bool) libp2pproto.ID {
	if !private {
		return dht.DefaultPrefix
	}
	return libp2pproto.ID("/carryon/" + swarm)
}

// Discovery finds peers and content for a host: the DHT (peer routing and
// provider records) and mDNS.
type Discovery struct {
	h      host.Host
	dht    *dht.IpfsDHT
	mdns   mdns.Service
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	provided map[cid.Cid]bool
}

// ErrNoDHT is returned by Provide and FindProviders without a DHT.
var ErrNoDHT = errors.New("no DHT (discovery started with DHTOff)")

// NewDiscovery starts the discovery services cfg asks for on h. Close stops
// them (before h is closed).
func NewDiscovery(ctx context.Context, h host.Host, cfg DiscoveryConfig) (*Discovery, error) {
	if cfg.Swarm == "" {
		return nil, errors.New("swarm.NewDiscovery: no swarm name")
	}
	if cfg.ReprovideInterval <= 0 {
		cfg.ReprovideInterval = 12 * time.Hour
	}
	ctx, cancel := context.WithCancel(ctx)
	d := &Discovery{h: h, cancel: cancel, provided: make(map[cid.Cid]bool)}
	if cfg.DHT != DHTOff {
		mode := map[DHTMode]dht.ModeOpt{DHTAuto: dht.ModeAutoServer, DHTServer: dht.ModeServer, DHTClient: dht.ModeClient}[cfg.DHT]
		opts := []dht.Option{dht.Mode(mode), dht.ProtocolPrefix(DHTPrefix(cfg.Swarm, cfg.Private))}
		if len(cfg.Bootstrap) > 0 {
			opts = append(opts, dht.BootstrapPeers(cfg.Bootstrap...))
		}
		if cfg.Private {
			// Our own DHT stores only provider records: no IPNS or
			// public-key values to validate.
			opts = append(opts, dht.DisableValues())
		}
		kad, err := dht.New(h, opts...)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("swarm.NewDiscovery: DHT: %w", err)
		}
		d.dht = kad
		if err := kad.Bootstrap(ctx); err != nil {
			d.Close()
			return nil, fmt.Errorf("swarm.NewDiscovery: DHT bootstrap: %w", err)
		}
		d.wg.Go(func() { every(ctx, cfg.ReprovideInterval, func() { d.reprovide(ctx) }) })
	}
	if cfg.MDNS {
		d.mdns = mdns.NewMdnsService(h, MDNSServiceName(cfg.Swarm), &mdnsNotifee{ctx: ctx, h: h, found: cfg.OnPeerFound})
		if err := d.mdns.Start(); err != nil {
			d.mdns = nil
			d.Close()
			return nil, fmt.Errorf("swarm.NewDiscovery: mDNS: %w", err)
		}
	}
	return d, nil
}

type mdnsNotifee struct {
	ctx   context.Context
	h     host.Host
	found func(peer.AddrInfo, error)
}

func (n *mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	err := Connect(ctx, n.h, ai)
	cancel()
	if n.found != nil {
		n.found(ai, err)
	}
}

// DHT returns the DHT, nil with DHTOff.
func (d *Discovery) DHT() *dht.IpfsDHT { return d.dht }

// waitRouting waits until the routing table has a peer: the DHT adds
// connected peers only once identify shows they speak its protocol.
func (d *Discovery) waitRouting(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for d.dht.RoutingTable().Size() == 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoDHTPeers, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// ErrNoDHTPeers is what Provide's error wraps when the DHT had no peer to
// announce to before ctx ended: a swarm of hosts that do not run the DHT
// in server mode (a small private LAN swarm) has none, by design.
var ErrNoDHTPeers = errors.New("no DHT peers")

// Provide announces in the DHT that this host serves c, and again every
// ReprovideInterval until Close. It waits (within ctx) for the routing
// table to have a peer.
func (d *Discovery) Provide(ctx context.Context, c cid.Cid) error {
	if d.dht == nil {
		return fmt.Errorf("swarm.Discovery.Provide %s: %w", c, ErrNoDHT)
	}
	d.mu.Lock()
	d.provided[c] = true
	d.mu.Unlock()
	if err := d.waitRouting(ctx); err != nil {
		return fmt.Errorf("swarm.Discovery.Provide %s: %w", c, err)
	}
	if err := d.dht.Provide(ctx, c, true); err != nil {
		return fmt.Errorf("swarm.Discovery.Provide %s: %w", c, err)
	}
	return nil
}

// reprovide announces every CID this host provides again.
func (d *Discovery) reprovide(ctx context.Context) {
	d.mu.Lock()
	cids := make([]cid.Cid, 0, len(d.provided))
	for c := range d.provided {
		cids = append(cids, c)
	}
	d.mu.Unlock()
	for _, c := range cids {
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		d.dht.Provide(pctx, c, true) // best effort: the next round retries
		cancel()
	}
}

// every calls f each period until ctx ends (first after one period).
func every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// FindProviders streams up to max (<= 0: 20) providers of c other than
// this host, as the DHT finds them; the channel closes when the search
// ends or ctx does. Their addresses are added to the peerstore.
func (d *Discovery) FindProviders(ctx context.Context, c cid.Cid, max int) (<-chan peer.AddrInfo, error) {
	if d.dht == nil {
		return nil, fmt.Errorf("swarm.Discovery.FindProviders %s: %w", c, ErrNoDHT)
	}
	if max <= 0 {
		max = 20
	}
	if err := d.waitRouting(ctx); err != nil {
		return nil, fmt.Errorf("swarm.Discovery.FindProviders %s: %w", c, err)
	}
	in := d.dht.FindProvidersAsync(ctx, c, max+1) // +1: this host may be one
	out := make(chan peer.AddrInfo)
	go func() {
		defer close(out)
		for ai := range in {
			if ai.ID == d.h.ID() {
				continue
			}
			if len(ai.Addrs) > 0 {
				d.h.Peerstore().AddAddrs(ai.ID, ai.Addrs, 10*time.Minute)
			}
			select {
			case out <- ai:
			case <-ctx.Done():
				for range in { // let the search goroutine finish
				}
				return
			}
		}
	}()
	return out, nil
}

// Close stops mDNS, the DHT and reproviding.
func (d *Discovery) Close() error {
	d.cancel()
	var errs []error
	if d.mdns != nil {
		errs = append(errs, d.mdns.Close())
	}
	if d.dht != nil {
		errs = append(errs, d.dht.Close())
	}
	d.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("swarm.Discovery.Close: %w", err)
	}
	return nil
}
