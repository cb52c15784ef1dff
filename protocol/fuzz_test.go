package protocol

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// seedFrames adds every sample message, and a few hostile frames, to f.
func seedFrames(f *testing.F) {
	for _, m := range sampleMessages(f) {
		b, err := Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(mustHex("0201ffffffff"))
	f.Add(frame(TypeEmbedRequest, 1, mustHex("81a473657173ddffffffff")))
	f.Add(frame(200, 1, []byte{1, 2, 3}))
}

// FuzzReadFrame: arbitrary bytes never panic, never allocate beyond the
// caps, and whatever parses re-encodes to an equal message.
func FuzzReadFrame(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var before, after runtimeMem
		before.read()
		m, err := ReadFrame(bytes.NewReader(b))
		after.read()
		// The body buffer starts at initialBody and then grows only as far
		// as len(b) (doubling); decoding amplifies the body by at most ~48x
		// (slice headers, map entries) within the element cap.
		if grew := after.total - before.total; grew > uint64(64*len(b)+2*initialBody) {
			t.Fatalf("parsing %d bytes allocated %d", len(b), grew)
		}
		if err != nil {
			return
		}
		roundTrip(t, m) // what parses re-marshals to the same message
	})
}

// FuzzValidateMsgpack: never panics, and a body it accepts fits its length
// claims (re-walking the same bytes twice gives the same answer).
func FuzzValidateMsgpack(f *testing.F) {
	for _, m := range sampleMessages(f) {
		b, _ := Marshal(m)
		f.Add(b[HeaderLen:])
	}
	f.Add(mustHex("ddffffffff"))
	f.Add(mustHex("c7ff01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		allocs := testing.AllocsPerRun(1, func() { ValidateMsgpack(b, 16) })
		if allocs > 32 { // an error value (more under -race), nothing proportional to b
			t.Fatalf("ValidateMsgpack allocated %v times", allocs)
		}
		if err := ValidateMsgpack(b, 16); err == nil && len(b) == 0 {
			t.Fatal("empty input accepted")
		}
	})
}

// FuzzVerifyAnnounce: announcements parsed from arbitrary bytes never panic
// Verify, and a tampered signed one never verifies.
func FuzzVerifyAnnounce(f *testing.F) {
	k, id := testKey(f, 3)
	a := &AdaptorAnnounce{V: Version, CID: cidA, BaseHash: hashA, Step: 1, Size: 1, UnixMilli: 1, Metrics: map[string]float64{"a": 1}}
	if err := a.Sign(k); err != nil {
		f.Fatal(err)
	}
	fuzzVerify(f, a, id)
}

// fuzzVerify fuzzes a signed message type: frames parsed from arbitrary
// bytes never panic Verify, and the frame of want (signed by id) with one
// byte flipped never verifies as id's with other content.
func fuzzVerify[T interface {
	Message
	Verify() (peer.ID, error)
}](f *testing.F, want T, id peer.ID) {
	good, err := Marshal(want)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, 0, byte(0))
	f.Add(good, len(good)/2, byte(1))
	f.Fuzz(func(t *testing.T, b []byte, pos int, flip byte) {
		if m, err := Unmarshal(b); err == nil {
			if v, ok := m.(T); ok {
				v.Verify()
			}
		}
		// Tamper with the known-good frame at one byte.
		if pos < 0 || flip == 0 {
			return
		}
		c := bytes.Clone(good)
		c[pos%len(c)] ^= flip
		m, err := Unmarshal(c)
		if err != nil {
			return
		}
		v, ok := m.(T)
		if !ok {
			return
		}
		if got, err := v.Verify(); err == nil && (got != id || !reflect.DeepEqual(v, want)) {
			t.Fatalf("tampered %T verified as %s: %#v", v, got, v)
		}
	})
}
