package protocol

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Roster is a closed swarm's list of members, signed by the coordinator's
// peer key and published on ControlTopic (and served on RosterProtocol to
// a member that connects). Every member's connection gater admits only the
// peers listed and the signer; a member drops its connections to a peer
// once a roster without it arrives.
type Roster struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// Seq numbers the signer's rosters, >= 1: a member keeps the roster
	// with the highest Seq it has verified and ignores lower or equal ones.
	Seq uint64 `msgpack:"seq"`
	// Members are the admitted peers' IDs in binary form (peer.ID bytes,
	// each 1..maxPeerIDBytes), strictly ascending (sorted, no duplicates),
	// at most MaxRosterMembers. The signer is admitted without being listed.
	Members [][]byte `msgpack:"members"`
	// UnixMilli is when the roster was signed, ms since the epoch, > 0.
	UnixMilli int64 `msgpack:"ms"`
	// Signer is the signer's public key, crypto.MarshalPublicKey form, at
	// most maxKeyBytes. On gossip its peer ID must be the message's author.
	Signer []byte `msgpack:"signer"`
	// Sig is Signer's signature over RosterDomain followed by the frame of
	// this message with Sig empty, at most maxSigBytes.
	Sig []byte `msgpack:"sig"`
}

// RosterDomain prefixes the bytes a Roster signature covers.
const RosterDomain = "carryon/roster/v1\n"

func (*Roster) Type() MsgType    { return TypeRoster }
func (m *Roster) version() uint8 { return m.V }

// Validate checks the fields' bounds; an empty Signer or Sig is allowed
// (a draft before Sign) and rejected by Verify.
func (m *Roster) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkRange("Seq", m.Seq, 1, 1<<62),
		checkMembers(m.Members),
		checkSigned(m.UnixMilli, m.Signer, m.Sig),
	)
}

// checkMembers checks at most MaxRosterMembers peer IDs in binary form,
// strictly ascending (sorted, no duplicates).
func checkMembers(members [][]byte) error {
	var prev []byte
	return checkList("Members", members, 0, MaxRosterMembers, func(f string, b []byte) error {
		if len(b) == 0 || len(b) > maxPeerIDBytes {
			return fmt.Errorf("%s: %d bytes, want 1..%d", f, len(b), maxPeerIDBytes)
		}
		if _, err := peer.IDFromBytes(b); err != nil {
			return fmt.Errorf("%s: not a peer ID: %w", f, err)
		}
		if prev != nil && bytes.Compare(prev, b) >= 0 {
			return fmt.Errorf("%s: not above the member before it (sorted, no duplicates)", f)
		}
		prev = b
		return nil
	})
}

// NewRoster returns an unsigned roster of members (sorted, duplicates
// dropped).
func NewRoster(seq uint64, unixMilli int64, members []peer.ID) *Roster {
	r := &Roster{V: Version, Seq: seq, UnixMilli: unixMilli}
	for _, id := range members {
		r.Members = append(r.Members, []byte(id))
	}
	slices.SortFunc(r.Members, bytes.Compare)
	r.Members = slices.CompactFunc(r.Members, bytes.Equal)
	return r
}

// IDs returns the members as peer IDs (Validate has checked each).
func (m *Roster) IDs() []peer.ID {
	out := make([]peer.ID, len(m.Members))
	for i, b := range m.Members {
		out[i] = peer.ID(b)
	}
	return out
}

// Has reports whether id is listed.
func (m *Roster) Has(id peer.ID) bool {
	_, ok := slices.BinarySearchFunc(m.Members, []byte(id), bytes.Compare)
	return ok
}

// signedBytes returns what the signature covers: RosterDomain, then the
// frame of the roster with Sig empty.
func (m *Roster) signedBytes() ([]byte, error) {
	c := *m
	c.Sig = nil
	return signedFrame(RosterDomain, &c)
}

// Sign sets Signer to k's public key and Sig to k's signature.
func (m *Roster) Sign(k crypto.PrivKey) error {
	return sign("protocol.Roster.Sign", k, &m.Signer, &m.Sig, m.signedBytes)
}

// Verify checks Sig against Signer and returns the signer's peer ID; the
// caller decides whether it trusts that signer.
func (m *Roster) Verify() (peer.ID, error) {
	return verifySigned("protocol.Roster.Verify", m.Signer, m.Sig, m.signedBytes)
}
