package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"carryon/protocol"
	"carryon/swarm"
)

// rosterFileName is the signed roster in a coordinator's state directory.
const rosterFileName = "roster"

func runRoster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("roster", "add PEER... | remove PEER... | ls [--cache DIR] [--identity FILE]", stderr)
	cache := fs.String("cache", defaultCoordinatorCache(), "the coordinator's state directory (its --cache): the roster and the coordinator's peer key live there")
	identity := fs.String("identity", "", "the coordinator's peer key (default identity.key in --cache)")
	if len(args) == 0 {
		fs.Usage()
		return errors.New("want add, remove or ls")
	}
	verb, rest := args[0], args[1:]
	if verb == "-h" || verb == "--help" {
		fs.Usage()
		return nil
	}
	// Flags may come before, between or after the peer IDs.
	var pos []string
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, rest = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	path := filepath.Join(*cache, rosterFileName)
	cur, err := swarm.LoadRosterFile(path)
	if err != nil {
		return err
	}
	switch verb {
	case "ls":
		if len(pos) > 0 {
			return fmt.Errorf("ls takes no arguments, got %q", pos)
		}
		if cur == nil {
			fmt.Fprintf(stdout, "no roster in %s: every holder of the swarm key is a member\n", path)
			return nil
		}
		signer, _ := cur.Verify()
		fmt.Fprintf(stdout, "roster %s: seq %d, signed by %s at %s, %d members\n", path, cur.Seq, signer,
			time.UnixMilli(cur.UnixMilli).UTC().Format(time.RFC3339), len(cur.Members))
		for _, id := range cur.IDs() {
			fmt.Fprintln(stdout, id)
		}
		return nil
	case "add", "remove":
	default:
		return fmt.Errorf("unknown roster command %q: want add, remove or ls", verb)
	}
	if len(pos) == 0 {
		return fmt.Errorf("roster %s: name at least one peer ID", verb)
	}
	var ids []peer.ID
	for _, s := range pos {
		id, err := peer.Decode(s)
		if err != nil {
			return fmt.Errorf("%q is not a peer ID: %w", s, err)
		}
		ids = append(ids, id)
	}
	key, err := swarm.ReadKey(cmp.Or(*identity, filepath.Join(*cache, swarm.IdentityFile)))
	if err != nil {
		return fmt.Errorf("%w (start the coordinator once with this --cache to make its identity, or give --identity)", err)
	}
	var members []peer.ID
	var seq uint64
	if cur != nil {
		members, seq = cur.IDs(), cur.Seq
	}
	switch verb {
	case "add":
		members = append(members, ids...)
	case "remove":
		members = slices.DeleteFunc(members, func(m peer.ID) bool { return slices.Contains(ids, m) })
	}
	r := protocol.NewRoster(seq+1, time.Now().UnixMilli(), members)
	if err := r.Sign(key); err != nil {
		return err
	}
	if err := swarm.SaveRosterFile(path, r); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "roster seq %d: %d members; a running coordinator on %s applies and gossips it within a second\n", r.Seq, len(r.Members), *cache)
	return nil
}
