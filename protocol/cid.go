package protocol

import (
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// ErrHashMismatch is wrapped by every error about data that does not hash
// to the value that names it (a CID, a manifest's chunk hash).
var ErrHashMismatch = errors.New("hash mismatch")

// CIDOf returns the content identifier of data: CIDv1, raw codec,
// sha2-256 multihash.
func CIDOf(data []byte) cid.Cid {
	h, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		panic("protocol.CIDOf: " + err.Error()) // sha2-256 is always registered
	}
	return cid.NewCidV1(cid.Raw, h)
}

// ParseCID parses a CID string and requires the form CIDOf produces:
// version 1, raw codec, sha2-256 with a 32-byte digest.
func ParseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("protocol.ParseCID: %w", err)
	}
	if err := checkCID(c); err != nil {
		return cid.Undef, fmt.Errorf("protocol.ParseCID %s: %w", s, err)
	}
	return c, nil
}

func checkCID(c cid.Cid) error {
	if !c.Defined() {
		return errors.New("undefined CID")
	}
	p := c.Prefix()
	if p.Version != 1 || p.Codec != cid.Raw || p.MhType != mh.SHA2_256 || p.MhLength != 32 {
		return fmt.Errorf("want CIDv1 raw sha2-256, got version %d codec 0x%x hash 0x%x/%d",
			p.Version, p.Codec, p.MhType, p.MhLength)
	}
	return nil
}

// VerifyCID checks that data hashes to c; a difference wraps ErrHashMismatch.
func VerifyCID(c cid.Cid, data []byte) error {
	if err := checkCID(c); err != nil {
		return fmt.Errorf("protocol.VerifyCID: %w", err)
	}
	if got := CIDOf(data); !got.Equals(c) {
		return fmt.Errorf("protocol.VerifyCID: %d bytes hash to %s, want %s: %w", len(data), got, c, ErrHashMismatch)
	}
	return nil
}

// checkCIDField validates a CID string field.
func checkCIDField(field, s string) error {
	if _, err := ParseCID(s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}
