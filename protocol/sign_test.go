package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
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
	b, err := Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
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

func TestCID(t *testing.T) {
	data := []byte("hello carryon")
	c := CIDOf(data)
	// Known value: sha256("hello carryon") as CIDv1 raw, base32.
	parsed, err := ParseCID(c.String())
	if err != nil || !parsed.Equals(c) {
		t.Fatalf("ParseCID(%s) = %v, %v", c, parsed, err)
	}
	if !strings.HasPrefix(c.String(), "bafkrei") {
		t.Errorf("CID %s is not CIDv1 raw sha2-256 in base32", c)
	}
	if err := VerifyCID(c, data); err != nil {
		t.Fatal(err)
	}
	if err := VerifyCID(c, []byte("hello carryoN")); !errors.Is(err, ErrHashMismatch) {
		t.Fatalf("VerifyCID of other data: %v, want ErrHashMismatch", err)
	}
	for _, bad := range []string{"", "bafy", "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n",
		"bafyreidykglsfhoixmivffc5uwhcgshx4j465xwqntbmu43nb2dzqwfvae"} { // v0; dag-cbor codec
		if _, err := ParseCID(bad); err == nil {
			t.Errorf("ParseCID(%q) accepted", bad)
		}
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
	if _, err := ParseSwarmKey(strings.NewReader("/key/swarm/psk/1.0.0/\n/base16/\nabcd\n")); err == nil {
		t.Error("short key accepted")
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
