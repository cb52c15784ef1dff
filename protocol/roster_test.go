package protocol

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestRosterSignVerify(t *testing.T) {
	k, id := testKey(t, 1)
	_, a := testKey(t, 2)
	_, b := testKey(t, 3)
	r := NewRoster(1, 1, []peer.ID{b, a, b})
	if len(r.Members) != 2 || !r.Has(a) || !r.Has(b) || r.Has(id) {
		t.Fatalf("roster of %v: %d members", []peer.ID{a, b}, len(r.Members))
	}
	if _, err := r.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("unsigned roster: %v", err)
	}
	if err := r.Sign(k); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Verify(); err != nil || got != id {
		t.Fatalf("Verify = %s, %v; want %s", got, err, id)
	}
	// Any change after signing breaks the signature.
	for name, change := range map[string]func(*Roster){
		"seq":     func(r *Roster) { r.Seq++ },
		"member":  func(r *Roster) { r.Members = r.Members[:1] },
		"time":    func(r *Roster) { r.UnixMilli++ },
		"signer":  func(r *Roster) { r.Signer = bytes.Clone(r.Signer); r.Signer[len(r.Signer)-1] ^= 1 },
		"sig bit": func(r *Roster) { r.Sig = bytes.Clone(r.Sig); r.Sig[0] ^= 1 },
	} {
		c := *r
		c.Members = append([][]byte(nil), r.Members...)
		change(&c)
		if _, err := c.Verify(); err == nil {
			t.Errorf("%s changed: still verifies", name)
		}
	}
}

func TestRosterValidate(t *testing.T) {
	_, a := testKey(t, 2)
	_, b := testKey(t, 3)
	sorted := NewRoster(1, 1, []peer.ID{a, b}).Members
	for name, c := range map[string]struct {
		r    Roster
		want string
	}{
		"seq 0":     {Roster{V: Version, Seq: 0, UnixMilli: 1}, "Seq"},
		"unsorted":  {Roster{V: Version, Seq: 1, UnixMilli: 1, Members: [][]byte{sorted[1], sorted[0]}}, "sorted"},
		"duplicate": {Roster{V: Version, Seq: 1, UnixMilli: 1, Members: [][]byte{sorted[0], sorted[0]}}, "sorted"},
		"not an ID": {Roster{V: Version, Seq: 1, UnixMilli: 1, Members: [][]byte{{1, 2, 3}}}, "not a peer ID"},
		"empty ID":  {Roster{V: Version, Seq: 1, UnixMilli: 1, Members: [][]byte{{}}}, "bytes"},
		"too many":  {Roster{V: Version, Seq: 1, UnixMilli: 1, Members: make([][]byte, MaxRosterMembers+1)}, "len(Members)"},
	} {
		if err := c.r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", name, err, c.want)
		}
	}
}

// TestRosterFitsGossip: a full roster of the longest peer IDs this build
// accepts is one frame within MaxGossipBytes.
func TestRosterFitsGossip(t *testing.T) {
	k, _ := testKey(t, 1)
	r := &Roster{V: Version, Seq: 1 << 62, UnixMilli: 1 << 62}
	for i := range MaxRosterMembers {
		// An identity multihash (code 0, length 46) of distinct bytes: a
		// valid peer ID of maxPeerIDBytes.
		id := make([]byte, maxPeerIDBytes)
		id[0], id[1] = 0, maxPeerIDBytes-2
		id[2], id[3] = byte(i>>8), byte(i)
		r.Members = append(r.Members, id)
	}
	if err := r.Sign(k); err != nil {
		t.Fatal(err)
	}
	b, _ := roundTrip(t, r)
	if len(b) > MaxGossipBytes {
		t.Fatalf("a full roster is %d bytes, over MaxGossipBytes %d", len(b), MaxGossipBytes)
	}
	t.Logf("a full roster of %d %d-byte IDs is %d bytes", MaxRosterMembers, maxPeerIDBytes, len(b))
}

// FuzzVerifyRoster: rosters parsed from arbitrary bytes never panic Verify,
// and a signed roster with one byte flipped never verifies as the signer's
// with different content.
func FuzzVerifyRoster(f *testing.F) {
	k, id := testKey(f, 4)
	_, a := testKey(f, 5)
	r := NewRoster(3, 1, []peer.ID{a})
	if err := r.Sign(k); err != nil {
		f.Fatal(err)
	}
	fuzzVerify(f, r, id)
}
