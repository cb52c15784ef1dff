package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"carryon/protocol"
	"carryon/swarm"
)

// swarmFlags are the flags every networked command shares.
type swarmFlags struct {
	key       *string
	listen    *string
	identity  *string
	bootstrap *string
	quic      *bool
	dht       *string
	mdns      *bool
	nat       *bool
	upnp      *bool
	relay     *bool
	public    *bool
	rosterBy  *string

	// defaultIdentity is the key file used when --identity is empty (a
	// node's or coordinator's state directory); "" means a new peer ID
	// each run (pull, serve).
	defaultIdentity string
	// keepBootstrap hands the bootstrap peers to a redialler (the node's)
	// instead of requiring them at start.
	keepBootstrap bool
	// rosterFile, when set (the coordinator), is the roster this host
	// signs with `carryon roster` and serves; it trusts only itself.
	rosterFile string
}

func addSwarmFlags(fs *flag.FlagSet, defaultListen string) *swarmFlags {
	return &swarmFlags{
		key:       fs.String("key", "", "private swarm key file from 'carryon keygen' (empty: public swarm)"),
		listen:    fs.String("listen", defaultListen, "comma-separated multiaddrs to listen on"),
		identity:  fs.String("identity", "", "peer key file, created if missing, for a stable peer ID (node and coordinator: default identity.key in their state directory; \"new\": a new ID each run)"),
		bootstrap: fs.String("bootstrap", "", "comma-separated multiaddrs (with /p2p/ID; /dns4/NAME and /dns6/NAME too) of peers to join through"),
		quic:      fs.Bool("quic", false, "also listen on QUIC (public swarms only: pre-shared keys need TCP)"),
		dht:       fs.String("dht", "auto", "Kademlia DHT: off, auto (answer queries unless AutoNAT finds this host unreachable), server or client"),
		mdns:      fs.Bool("mdns", false, "find peers of the swarm on the local network by multicast DNS"),
		nat:       fs.Bool("nat", false, "NAT traversal: AutoNAT v2, relayed addresses through the bootstrap peers, hole punching"),
		upnp:      fs.Bool("upnp", false, "ask the router for a port mapping (UPnP / NAT-PMP)"),
		relay:     fs.Bool("relay-service", false, "relay signalling for peers behind NATs and answer their AutoNAT checks (a publicly reachable coordinator)"),
		public:    fs.Bool("public", false, "this host is publicly reachable: skip waiting for AutoNAT's verdict (with --relay-service, the relay starts at once)"),
		rosterBy:  fs.String("roster-signer", "bootstrap", "peers whose signed roster (carryon roster) this host enforces: comma-separated peer IDs, \"bootstrap\" for the --bootstrap peers, or \"none\"; a coordinator enforces its own"),
	}
}

// joined is a started host in a swarm.
type joined struct {
	h      host.Host
	topics *swarm.Topics
	roster *swarm.RosterGate // nil: no roster enforced
	psk    pnet.PSK
	name   string
	disc   *swarm.Discovery
	boot   []peer.AddrInfo
	id     *swarm.Identity // nil: a new peer ID this run

	provMu    sync.Mutex
	provided  map[string]bool // CIDs provideInBackground has announced (or is announcing)
	noDHTNote sync.Once       // "no DHT peers" is said once per process
}

// join builds the host, connects to the bootstrap peers and joins the
// swarm's topics; trusted lists the peers whose adaptor announcements count
// (empty: any signed announcement).
func (f *swarmFlags) join(ctx context.Context, trusted []peer.ID) (*joined, error) {
	var psk pnet.PSK
	if *f.key != "" {
		kf, err := os.Open(*f.key)
		if err != nil {
			return nil, err
		}
		psk, err = protocol.ParseSwarmKey(kf)
		kf.Close()
		if err != nil {
			return nil, fmt.Errorf("swarm key file %s: %w", *f.key, err)
		}
	}
	boot, err := parsePeers(*f.bootstrap)
	if err != nil {
		return nil, err
	}
	dhtMode, err := swarm.ParseDHTMode(*f.dht)
	if err != nil {
		return nil, err
	}
	cfg := swarm.HostConfig{PSK: psk, QUIC: *f.quic, ListenAddrs: splitList(*f.listen)}
	if *f.nat || *f.upnp || *f.relay || *f.public {
		cfg.NAT = &swarm.NATConfig{PortMap: *f.upnp, RelayService: *f.relay, AutoNATv2: *f.nat,
			RelayClient: *f.nat, HolePunching: *f.nat}
		if *f.nat {
			cfg.NAT.Relays = boot
		}
		if *f.public {
			cfg.NAT.Reachability = network.ReachabilityPublic
		}
	}
	var id *swarm.Identity
	if path := cmp.Or(*f.identity, f.defaultIdentity); path != "" && path != "new" {
		if id, err = swarm.OpenIdentity(path); err != nil {
			return nil, err
		}
		cfg.Key = id.Key
	}
	signers, err := f.rosterSigners(boot, cfg.Key)
	if err != nil {
		id.Close()
		return nil, err
	}
	var gate *swarm.RosterGate
	if len(signers) > 0 {
		gate = swarm.NewRosterGate(signers...)
		cfg.Roster = gate
	}
	h, err := swarm.NewHost(cfg)
	if err != nil {
		id.Close()
		return nil, err
	}
	j := &joined{h: h, psk: psk, name: protocol.SwarmName(psk), boot: boot, id: id, roster: gate}
	if !f.keepBootstrap {
		if err := connectAny(ctx, h, boot); err != nil {
			j.close()
			return nil, err
		}
	}
	if dhtMode != swarm.DHTOff || *f.mdns {
		j.disc, err = swarm.NewDiscovery(ctx, h, swarm.DiscoveryConfig{Swarm: j.name, Private: len(psk) > 0,
			DHT: dhtMode, Bootstrap: boot, MDNS: *f.mdns})
		if err != nil {
			h.Close()
			return nil, err
		}
	}
	ps, err := swarm.NewPubSub(ctx, h)
	if err != nil {
		j.close()
		return nil, err
	}
	if j.topics, err = swarm.JoinTopics(ps, j.name, trusted); err != nil {
		j.close()
		return nil, err
	}
	return j, nil
}

// rosterSigners is who this host takes a roster from: itself when it
// signs one (the coordinator), else --roster-signer.
func (f *swarmFlags) rosterSigners(boot []peer.AddrInfo, key crypto.PrivKey) ([]peer.ID, error) {
	if f.rosterFile != "" {
		if key == nil {
			return nil, nil // a new identity each run signs no roster
		}
		self, err := peer.IDFromPrivateKey(key)
		return []peer.ID{self}, err
	}
	switch *f.rosterBy {
	case "none", "":
		return nil, nil
	case "bootstrap":
		var ids []peer.ID
		for _, ai := range boot {
			ids = append(ids, ai.ID)
		}
		return ids, nil
	}
	var ids []peer.ID
	for _, s := range splitList(*f.rosterBy) {
		id, err := peer.Decode(s)
		if err != nil {
			return nil, fmt.Errorf("--roster-signer %q: %w", s, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// followRoster enforces the roster: the coordinator serves and publishes
// the one in its state directory, every other host applies those of its
// roster signers. Each roster put in force is printed.
func (j *joined) followRoster(ctx context.Context, w io.Writer, rosterFile string, log *slog.Logger) error {
	if j.roster == nil {
		return nil
	}
	say := func(c swarm.RosterChange) {
		fmt.Fprintf(w, "roster: seq %d, %d members, signed by %s; %d peers cut\n", c.Roster.Seq, len(c.Roster.Members), c.From, len(c.Cut))
	}
	if rosterFile != "" {
		swarm.ServeRosterFile(ctx, j.h, j.topics, j.roster, rosterFile, time.Second, say,
			func(err error) { log.Warn("roster not applied", "err", err) })
		return nil
	}
	return swarm.FollowRoster(ctx, j.h, j.topics, j.roster, say)
}

// connectAll connects to every named peer in turn (10 s each); the error
// names the first that does not answer.
func connectAll(ctx context.Context, h host.Host, peers []peer.AddrInfo) error {
	for _, ai := range peers {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := swarm.Connect(cctx, h, ai)
		cancel()
		if err != nil {
			return fmt.Errorf("connect to %s: %w", ai.ID, err)
		}
	}
	return nil
}

// connectAny connects to the bootstrap peers at once (10 s each, in
// parallel) and fails only if none answers.
func connectAny(ctx context.Context, h host.Host, boot []peer.AddrInfo) error {
	if len(boot) == 0 {
		return nil
	}
	errs := make([]error, len(boot))
	var wg sync.WaitGroup
	for i, ai := range boot {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := swarm.Connect(cctx, h, ai); err != nil {
				errs[i] = fmt.Errorf("bootstrap peer %s: %w", ai.ID, err)
			}
		})
	}
	wg.Wait()
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) == len(boot) {
		return fmt.Errorf("no bootstrap peer reachable: %w", errors.Join(failed...))
	}
	return nil
}

// close stops discovery, then the host, then releases the identity.
func (j *joined) close() error {
	if j.disc != nil {
		j.disc.Close()
	}
	err := j.h.Close()
	j.id.Close()
	return err
}

// provide announces in the DHT that this host serves c (no-op without a
// DHT); it waits at most 30 s for the DHT to have peers.
func (j *joined) provide(ctx context.Context, c cid.Cid) error {
	if j.disc == nil || j.disc.DHT() == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return j.disc.Provide(ctx, c)
}

// exchange starts bitswap on the host over blocks, finding providers
// through the DHT when there is one.
func (j *joined) exchange(blocks *swarm.Blocks) (*swarm.Exchange, error) {
	cfg := swarm.ExchangeConfig{}
	if j.disc != nil && j.disc.DHT() != nil {
		cfg.Routing = j.disc.DHT()
	}
	return swarm.NewExchange(j.h, blocks, cfg)
}

// reach prints how the host can be reached now and whenever that changes,
// and, per peer, the NAT traversal paths (`reachable: relayed|hole-punched|
// direct PEER`): a connection through a relay, one that DCUtR punched, and
// a direct one that replaced a relayed one. Plain direct connections and
// disconnections are not printed (a coordinator has thousands). Until ctx
// ends.
func (j *joined) reach(ctx context.Context, w io.Writer, describe func(swarm.Reach) string) {
	swarm.WatchReach(ctx, j.h, func(r swarm.Reach) { fmt.Fprintf(w, "reachability: %s\n", describe(r)) })
	relayed := map[peer.ID]bool{}
	swarm.WatchPaths(ctx, j.h, func(p peer.ID, path swarm.Path) {
		was := relayed[p]
		delete(relayed, p)
		switch {
		case path == swarm.PathRelayed:
			relayed[p] = true
		case path == swarm.PathHolePunched, path == swarm.PathDirect && was:
		default:
			return
		}
		fmt.Fprintf(w, "reachable: %s %s\n", path, p)
	})
}

// printPeer says where the peer key is kept (or that the peer ID is new
// each run), then "listening on ADDR" for each of the host's full
// addresses, the lines scripts and peers' --bootstrap read.
func (j *joined) printPeer(w io.Writer) {
	switch {
	case j.id == nil:
		fmt.Fprintf(w, "identity: a new peer ID for this run only\n")
	case j.id.Created:
		fmt.Fprintf(w, "identity: new peer key %s (kept: the peer ID stays across restarts)\n", j.id.Path)
	default:
		fmt.Fprintf(w, "identity: peer key %s\n", j.id.Path)
	}
	for _, a := range j.addrs() {
		fmt.Fprintf(w, "listening on %s\n", a)
	}
}

// addrs lists the host's full multiaddrs (with /p2p/ID).
func (j *joined) addrs() []string {
	var out []string
	for _, a := range j.h.Addrs() {
		out = append(out, a.String()+"/p2p/"+j.h.ID().String())
	}
	return out
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parsePeers parses comma-separated multiaddrs that end in /p2p/ID
// (/dns4/NAME/tcp/PORT/p2p/ID included: names are resolved at each dial);
// several addresses of one peer become one entry.
func parsePeers(s string) ([]peer.AddrInfo, error) {
	var addrs []ma.Multiaddr
	for _, a := range splitList(s) {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("peer address %q: %w", a, err)
		}
		if _, err := peer.AddrInfoFromP2pAddr(m); err != nil {
			return nil, fmt.Errorf("peer address %q needs a /p2p/ID suffix: %w", a, err)
		}
		addrs = append(addrs, m)
	}
	if len(addrs) == 0 {
		return nil, nil
	}
	return peer.AddrInfosFromP2pAddrs(addrs...)
}
