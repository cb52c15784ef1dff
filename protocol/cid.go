package protocol

import (
	"errors"
	"fmt"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// ErrHashMismatch is wrapped by every error about data that does not hash
// to the CID that names it.
var ErrHashMismatch = errors.New("hash mismatch")

// ErrUnsupportedCID is wrapped by ParseCID and CheckCID for a CID carryon
// cannot fetch or verify.
var ErrUnsupportedCID = errors.New("unsupported CID")

// Adaptors (and every other file carryon moves) are named by the CID of
// their UnixFS layout: CIDv1, sha2-256, 256 KiB raw leaves under balanced
// dag-pb nodes; the layout `ipfs add --cid-version=1 --raw-leaves` makes
// (swarm.CIDOf computes it). A file of at most 256 KiB is one raw leaf, so
// its CID has the raw codec; larger files have a dag-pb root.
//
// Older carryon named a whole adaptor file by a raw-codec CID of its
// SHA-256. For files up to 256 KiB that is the same CID; a larger file's old
// CID names no UnixFS file, and a fetch of it finds no provider
// (OldRawCIDHint says so).

// ParseCID parses a CID string and checks it with CheckCID.
func ParseCID(s string) (cid.Cid, error) {
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("protocol.ParseCID %q: %w", s, err)
	}
	if err := CheckCID(c); err != nil {
		return cid.Undef, fmt.Errorf("protocol.ParseCID %s: %w", s, err)
	}
	return c, nil
}

// CheckCID accepts the CIDs of UnixFS files carryon can verify: version 0
// (dag-pb, what `ipfs add` gives by default) or 1, codec dag-pb or raw,
// sha2-256 with a 32-byte digest. Anything else wraps ErrUnsupportedCID.
func CheckCID(c cid.Cid) error {
	if !c.Defined() {
		return fmt.Errorf("%w: undefined CID", ErrUnsupportedCID)
	}
	p := c.Prefix()
	if p.Codec != cid.DagProtobuf && p.Codec != cid.Raw {
		return fmt.Errorf("%w: codec 0x%x: carryon reads UnixFS files, dag-pb (0x70) or raw (0x55) blocks",
			ErrUnsupportedCID, p.Codec)
	}
	if p.MhType != mh.SHA2_256 || p.MhLength != 32 {
		name := mh.Codes[p.MhType]
		if name == "" {
			name = "unknown"
		}
		return fmt.Errorf("%w: hash function 0x%x (%s) with a %d-byte digest: carryon verifies sha2-256 (32 bytes)",
			ErrUnsupportedCID, p.MhType, name, p.MhLength)
	}
	return nil
}

// OldRawCIDHint explains, for a raw-codec CID that could not be found,
// that it may be an older carryon name of a whole file.
func OldRawCIDHint(c cid.Cid) string {
	if c.Prefix().Codec != cid.Raw {
		return ""
	}
	return "if " + c.String() + " came from carryon before adaptors were UnixFS files, it names a whole file " +
		"over 256 KiB by its raw SHA-256, which no peer serves: get the file itself and run `carryon add FILE` " +
		"(or `ipfs add --cid-version=1 --raw-leaves FILE`) for its CID"
}

// checkOptCIDField is checkCIDField that also accepts "".
func checkOptCIDField(field, s string) error {
	if s == "" {
		return nil
	}
	return checkCIDField(field, s)
}

// checkCIDField validates a CID string field (its length first).
func checkCIDField(field, s string) error {
	if len(s) > maxCIDLen {
		return fmt.Errorf("%s: %d characters, over %d", field, len(s), maxCIDLen)
	}
	if _, err := ParseCID(s); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}
