package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	mh "github.com/multiformats/go-multihash"
)

func signedAnnounce(t *testing.T) (*AdaptorAnnounce, crypto.PrivKey) {
	k, _ := testKey(t, 7)
	a := &AdaptorAnnounce{V: Version, CID: cidA, BaseHash: hashA, Step: 3, Size: 10, UnixMilli: 5,
		Metrics: map[string]float64{"val_loss": 1.5, "ppl": 4.5, "acc": 0.5}}
	if err := a.Sign(k); err != nil {
		t.Fatal(err)
	}
	return a, k
}

func TestAnnounceSignVerify(t *testing.T) {
	a, k := signedAnnounce(t)
	id, err := a.Verify()
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := testKey(t, 7); !id.MatchesPrivateKey(want) || !id.MatchesPrivateKey(k) {
		t.Errorf("Verify returned %s, not the signer", id)
	}
	// Survives the wire (map order of Metrics must not matter).
	_, m := roundTrip(t, a)
	if id2, err := m.(*AdaptorAnnounce).Verify(); err != nil || id2 != id {
		t.Fatalf("after the wire: %v, %v", id2, err)
	}
}

// TestAnnounceEncodingDeterministic: the same announcement always encodes
// to the same bytes (map order), and the hand-written encoder covers every
// field of the struct.
func TestAnnounceEncodingDeterministic(t *testing.T) {
	a, _ := signedAnnounce(t)
	first, err := Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if b, _ := Marshal(a); !bytes.Equal(b, first) {
			t.Fatal("encoding differs between calls")
		}
	}
	if n := reflect.TypeOf(AdaptorAnnounce{}).NumField(); n != announceFields {
		t.Fatalf("AdaptorAnnounce has %d fields, EncodeMsgpack writes %d: update it", n, announceFields)
	}
}

func TestAnnounceVerifyRejects(t *testing.T) {
	other, _ := testKey(t, 9)
	otherPub, _ := crypto.MarshalPublicKey(other.GetPublic())
	tests := []struct {
		name   string
		tamper func(a *AdaptorAnnounce)
	}{
		{"step changed", func(a *AdaptorAnnounce) { a.Step++ }},
		{"metric changed", func(a *AdaptorAnnounce) { a.Metrics["val_loss"] = 0.1 }},
		{"parent added", func(a *AdaptorAnnounce) { a.Parent = cidB }},
		{"signer swapped", func(a *AdaptorAnnounce) { a.Signer = otherPub }},
		{"sig flipped", func(a *AdaptorAnnounce) { a.Sig[0] ^= 1 }},
		{"unsigned", func(a *AdaptorAnnounce) { a.Sig = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := signedAnnounce(t)
			tt.tamper(a)
			if _, err := a.Verify(); !errors.Is(err, ErrBadSignature) {
				t.Fatalf("Verify: %v, want ErrBadSignature", err)
			}
		})
	}
	a, _ := signedAnnounce(t)
	a.Signer = []byte{1, 2, 3}
	if _, err := a.Verify(); err == nil {
		t.Fatal("garbage Signer verified")
	}
}

// rawCID is the CIDv1 raw sha2-256 of data (a one-block UnixFS file).
func rawCID(data []byte) cid.Cid {
	h, _ := mh.Sum(data, mh.SHA2_256, -1)
	return cid.NewCidV1(cid.Raw, h)
}

func TestParseCID(t *testing.T) {
	sum := func(code uint64) mh.Multihash { h, _ := mh.Sum([]byte("x"), code, -1); return h }
	for _, ok := range []cid.Cid{
		rawCID([]byte("x")),                             // v1 raw: a file of at most 256 KiB
		cid.NewCidV1(cid.DagProtobuf, sum(mh.SHA2_256)), // v1 dag-pb: a larger file
		cid.NewCidV0(sum(mh.SHA2_256)),                  // v0 (dag-pb): `ipfs add` by default
	} {
		if _, err := ParseCID(ok.String()); err != nil {
			t.Errorf("ParseCID(%s): %v", ok, err)
		}
	}
	for _, tt := range []struct{ in, want string }{
		{"", "protocol.ParseCID"},
		{"bafy", "protocol.ParseCID"},
		{cid.NewCidV1(cid.DagCBOR, sum(mh.SHA2_256)).String(), "codec 0x71"},
		{cid.NewCidV1(cid.Raw, sum(mh.SHA2_512)).String(), "hash function 0x13 (sha2-512) with a 64-byte digest"},
		{cid.NewCidV1(cid.Raw, sum(mh.IDENTITY)).String(), "hash function 0x0 (identity)"},
	} {
		_, err := ParseCID(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseCID(%q): %v, want an error containing %q", tt.in, err, tt.want)
		} else if tt.in != "" && tt.in != "bafy" && !errors.Is(err, ErrUnsupportedCID) {
			t.Errorf("ParseCID(%q): %v, want ErrUnsupportedCID", tt.in, err)
		}
	}
	if h := OldRawCIDHint(rawCID([]byte("x"))); !strings.Contains(h, "carryon add") {
		t.Errorf("no hint for a raw CID: %q", h)
	}
	if h := OldRawCIDHint(cid.NewCidV0(sum(mh.SHA2_256))); h != "" {
		t.Errorf("a hint for a dag-pb CID: %q", h)
	}
}

func TestSwarmKey(t *testing.T) {
	k1, err := NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := NewSwarmKey()
	lines := strings.Split(string(k1), "\n")
	if len(lines) != 4 || lines[0] != "/key/swarm/psk/1.0.0/" || lines[1] != "/base16/" || len(lines[2]) != 64 || lines[3] != "" {
		t.Fatalf("key file %q is not the standard format", k1)
	}
	p1, err := ParseSwarmKey(bytes.NewReader(k1))
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := ParseSwarmKey(bytes.NewReader(k2))
	n1, n2 := SwarmName(p1), SwarmName(p2)
	if n1 == n2 || len(n1) != 16 || strings.Contains(string(k1), n1) {
		t.Errorf("swarm names %q, %q: want distinct 16-char names that do not reveal the key", n1, n2)
	}
	if n := SwarmName(nil); n != "public" {
		t.Errorf("SwarmName(nil) = %q", n)
	}
	if NodesTopic(n1) != "carryon/"+n1+"/nodes/1" || AdaptorsTopic("public") != "carryon/public/adaptors/1" {
		t.Errorf("topics: %q %q", NodesTopic(n1), AdaptorsTopic("public"))
	}
	for _, bad := range []string{"/key/swarm/psk/1.0.0/\n/base16/\nabcd\n", "", "garbage", "\x00\x01\x02"} {
		_, err := ParseSwarmKey(strings.NewReader(bad))
		if !errors.Is(err, ErrNotSwarmKey) || !strings.HasPrefix(err.Error(), "not a swarm key (want the output of carryon keygen)") ||
			strings.Contains(err.Error(), "ParseSwarmKey") || strings.HasSuffix(err.Error(), "EOF") {
			t.Errorf("ParseSwarmKey(%q) = %v, want a user's error wrapping ErrNotSwarmKey", bad, err)
		}
	}
}

func TestErrorf(t *testing.T) {
	e := Errorf(KindInternal, "line1\nline2 %s", strings.Repeat("é", 600))
	if err := e.Validate(); err != nil {
		t.Fatalf("Errorf built an invalid message: %v", err)
	}
	if len(e.Msg) > 1024 || strings.Contains(e.Msg, "\n") {
		t.Errorf("Msg %d bytes", len(e.Msg))
	}
}
