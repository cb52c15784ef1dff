package protocol

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/vmihailenco/msgpack/v5"
)

// testKey is a fixed Ed25519 key (Ed25519 signatures are deterministic, so
// signed messages can be pinned byte for byte).
func testKey(t testing.TB, seed byte) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(bytes.NewReader(bytes.Repeat([]byte{seed}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

var (
	hashA = strings.Repeat("ab", 32)
	hashB = strings.Repeat("0f", 32)
	cidA  = rawCID([]byte("adaptor A")).String()
	cidB  = rawCID([]byte("adaptor B")).String()
)

// sampleMessages returns one valid message of every type.
func sampleMessages(t testing.TB) []Message {
	k, id := testKey(t, 1)
	ann := &AdaptorAnnounce{V: Version, CID: cidB, Parent: cidA, BaseHash: hashA, Step: 1200, Size: 1 << 20,
		Metrics: map[string]float64{"val_loss": 2.5, "acc": 0.75}, UnixMilli: 1700000000000}
	if err := ann.Sign(k); err != nil {
		t.Fatal(err)
	}
	_, m2 := testKey(t, 2)
	_, m3 := testKey(t, 3)
	roster := NewRoster(7, 1700000000000, []peer.ID{m3, m2, m3})
	if err := roster.Sign(k); err != nil {
		t.Fatal(err)
	}
	return []Message{
		&Advert{V: Version, Peer: id.String(), Bases: []BaseInfo{{Name: "Qwen2.5-0.5B", WeightsHash: hashA, Arch: "qwen2",
			Dim: 896, Layers: 24, Vocab: 151936}}, Codecs: []string{"q8", "q4"}, TokensPerSec: 1234.5,
			FreeSlots: 3, Device: "cpu", UnixMilli: 1700000000000},
		&EmbedRequest{V: Version, JobID: "1f", ChunkID: hashB, BaseHash: hashA, Layers: []int{-1, 0},
			Codec: "q8", Seqs: [][]int32{{1, 2, 300}, {70000}}},
		&EmbedResult{V: Version, JobID: "1f", ChunkID: hashB, Seq: 1, Layer: -1, Codec: "q8", Rows: 1, Dim: 4,
			Data: []byte{0xde, 0xad, 0xbe, 0xef}},
		&EmbedDone{V: Version, JobID: "1f", ChunkID: hashB, Results: 4, ComputeMillis: 250},
		&Ack{V: Version, JobID: "1f", ChunkID: hashB, OK: false, Reason: "mismatch"},
		Errorf(KindOverloaded, "busy: %d jobs", 7),
		ann,
		&ResultOffer{V: Version, JobID: "1f", Chunks: []string{hashA, hashB}},
		&OfferReply{V: Version, JobID: "1f", Stored: []string{hashB}},
		roster,
		&JobAnnounce{V: Version, Job: "0123456789abcdef", Base: BaseInfo{Name: "Qwen2.5-0.5B", WeightsHash: hashA, Arch: "qwen2",
			Dim: 896, Layers: 24, Vocab: 151936}, Codec: "q8", Joined: 2, MinNodes: 3, Pending: 1000, UnixMilli: 1700000000000},
		&CacheQuery{V: Version, Base: hashA, Codec: "q8", Layer: -1, Chunks: []string{hashA, hashB}},
		&CacheIndex{V: Version, CIDs: []string{cidA, ""}},
	}
}

// TestWireBytes pins the exact encoding of every message type: any change
// to the format shows up here as a one-line diff.
func TestWireBytes(t *testing.T) {
	want := map[MsgType]string{
		TypeAdvert: "0101000000fd88a17601a470656572d934313244334b6f6f574b3939566f56784e4537587a79427758457a573778684b" +
			"37477076383572394633563366794b53554b504835a562617365739186a46e616d65ac5177656e322e352d302e3542a4" +
			"68617368d940616261626162616261626162616261626162616261626162616261626162616261626162616261626162" +
			"61626162616261626162616261626162616261626162a461726368a57177656e32a364696dcd0380a66c617965727318" +
			"a5766f636162ce00025180a6636f6465637392a27138a27134a3747073cb40934a0000000000a46672656503a6646576" +
			"696365a3637075a26d73cf0000018bcfe56800",
		TypeEmbedRequest: "0201000000bf87a17601a36a6f62a23166a56368756e6bd9403066306630663066306630663066306630663066306630" +
			"6630663066306630663066306630663066306630663066306630663066306630663066306630663066a462617365d940" +
			"616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162" +
			"61626162616261626162616261626162a66c617965727392ff00a5636f646563a27138a47365717392930102cd012c91" +
			"ce00011170",
		TypeEmbedResult: "03010000007e89a17601a36a6f62a23166a56368756e6bd9403066306630663066306630663066306630663066306630" +
			"6630663066306630663066306630663066306630663066306630663066306630663066306630663066a373657101a56c" +
			"61796572ffa5636f646563a27138a4726f777301a364696d04a464617461c404deadbeef",
		TypeEmbedDone: "04010000006985a17601a36a6f62a23166a56368756e6bd9403066306630663066306630663066306630663066306630" +
			"6630663066306630663066306630663066306630663066306630663066306630663066306630663066a7726573756c74" +
			"7304aa636f6d707574655f6d73ccfa",
		TypeAck: "05010000006785a17601a36a6f62a23166a56368756e6bd9403066306630663066306630663066306630663066306630" +
			"6630663066306630663066306630663066306630663066306630663066306630663066306630663066a26f6bc2a67265" +
			"61736f6ea86d69736d61746368",
		TypeError: "06010000001b83a17601a46b696e6402a36d7367ac627573793a2037206a6f6273",
		TypeAdaptorAnnounce: "0701000001898aa17601a3636964d93b6261666b726569647435626275786473687379756a6561666979657877377479" +
			"72756734747165363573727375327778746c656c786e3479353571a6706172656e74d93b6261666b726569666b776167" +
			"6e7077326b776e667261616e647865736c746675337268367934776e79347664697a6e6d6a33346534656d6e707175a4" +
			"62617365d940616261626162616261626162616261626162616261626162616261626162616261626162616261626162" +
			"61626162616261626162616261626162616261626162a473746570cd04b0a473697a65ce00100000a76d657472696373" +
			"82a3616363cb3fe8000000000000a876616c5f6c6f7373cb4004000000000000a26d73cf0000018bcfe56800a6736967" +
			"6e6572c424080112208a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5ca3736967c44070" +
			"dd2bcb89f001f66a797d06c31b1c9c3ed31c09aa96ae81129690590810c049cf2a3f7222338b998bf4f9429915182419" +
			"b80e84de06928fd1e9e19622fa4b07",
		TypeResultOffer: "0b010000009783a17601a36a6f62a23166a66368756e6b7392d940616261626162616261626162616261626162616261" +
			"62616261626162616261626162616261626162616261626162616261626162616261626162616261626162d940306630" +
			"663066306630663066306630663066306630663066306630663066306630663066306630663066306630663066306630" +
			"66306630663066306630663066",
		TypeOfferReply: "0c010000005583a17601a36a6f62a23166a673746f72656491d940306630663066306630663066306630663066306630" +
			"66306630663066306630663066306630663066306630663066306630663066306630663066306630663066",
		TypeRoster: "0d01000000e186a17601a373657107a76d656d6265727392c4260024080112208139770ea87d175f56a35466c34c7ecc" +
			"cb8d8a91b4ee37a25df60f5b8fc9b394c426002408011220ed4928c628d1c2c6eae90338905995612959273a5c63f936" +
			"36c14614ac8737d1a26d73cf0000018bcfe56800a67369676e6572c424080112208a88e3dd7409f195fd52db2d3cba5d" +
			"72ca6709bf1d94121bf3748801b40f6f5ca3736967c440cd8749f4b8f7b3cfcad9236be8dc5920ded8af3432f69ba2bd" +
			"b7a0ccf990de090829aedfdbbccf789f232311106baed984070e7c0287e3ea6976c7d6509eed06",
		TypeJobAnnounce: "0e01000000d088a17601a36a6f62b030313233343536373839616263646566a46261736586a46e616d65ac5177656e32" +
			"2e352d302e3542a468617368d94061626162616261626162616261626162616261626162616261626162616261626162" +
			"616261626162616261626162616261626162616261626162616261626162a461726368a57177656e32a364696dcd0380" +
			"a66c617965727318a5766f636162ce00025180a5636f646563a27138a66a6f696e656402a96d696e5f6e6f64657303a7" +
			"70656e64696e67cd03e8a26d73cf0000018bcfe56800",
		TypeCacheQuery: "0f01000000e785a17601a462617365d94061626162616261626162616261626162616261626162616261626162616261" +
			"626162616261626162616261626162616261626162616261626162616261626162a5636f646563a27138a56c61796572" +
			"ffa66368756e6b7392d94061626162616261626162616261626162616261626162616261626162616261626162616261" +
			"626162616261626162616261626162616261626162616261626162d94030663066306630663066306630663066306630" +
			"663066306630663066306630663066306630663066306630663066306630663066306630663066306630663066",
		TypeCacheIndex: "10010000004882a17601a46369647392d93b6261666b726569666b7761676e7077326b776e667261616e647865736c74" +
			"6675337268367934776e79347664697a6e6d6a33346534656d6e707175a0",
	}
	for _, m := range sampleMessages(t) {
		t.Run(m.Type().String(), func(t *testing.T) {
			b, err := Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(b); got != want[m.Type()] {
				t.Errorf("bytes changed:\n got %s\nwant %s", got, want[m.Type()])
			}
		})
	}
}

// TestAckV2Bytes pins Ack v2 (Held): the new key is appended, and an Ack
// without Held encodes as v1 did apart from its version byte.
func TestAckV2Bytes(t *testing.T) {
	for _, c := range []struct {
		m    *Ack
		want string
	}{
		{&Ack{V: AckVersion, JobID: "1f", ChunkID: hashB, OK: true, Held: true},
			"05020000006586a17602a36a6f62a23166a56368756e6bd9403066306630663066306630663066306630663066306630" +
				"6630663066306630663066306630663066306630663066306630663066306630663066306630663066a26f6bc3a67265" +
				"61736f6ea0a468656c64c3"},
		{&Ack{V: AckVersion, OK: true}, "05020000001c85a17602a36a6f62a0a56368756e6ba0a26f6bc3a6726561736f6ea0"},
	} {
		b, err := Marshal(c.m)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b); got != c.want {
			t.Errorf("%+v: bytes changed:\n got %s\nwant %s", c.m, got, c.want)
		}
		m, err := Unmarshal(b)
		if err != nil || m.(*Ack).Held != c.m.Held {
			t.Errorf("%+v: round trip: %+v, %v", c.m, m, err)
		}
	}
}

// roundTrip marshals m and unmarshals its frame, and fails t unless the
// message comes back equal; it returns the frame and the parsed message.
func roundTrip(t testing.TB, m Message) ([]byte, Message) {
	t.Helper()
	b, err := Marshal(m)
	if err != nil {
		t.Fatalf("%v: Marshal: %v", m.Type(), err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatalf("%v: Unmarshal: %v", m.Type(), err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("%v: round trip\n got %#v\nwant %#v", m.Type(), got, m)
	}
	return b, got
}

func TestRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	msgs := sampleMessages(t)
	for _, m := range msgs {
		roundTrip(t, m)
		if err := WriteFrame(&stream, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		got, err := ReadFrame(&stream)
		if err != nil {
			t.Fatalf("ReadFrame %v: %v", m.Type(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("ReadFrame %v\n got %#v\nwant %#v", m.Type(), got, m)
		}
	}
	if _, err := ReadFrame(&stream); err != io.EOF {
		t.Errorf("ReadFrame at the end: %v, want io.EOF", err)
	}
}

// frame builds a raw frame around body.
func frame(t MsgType, ver uint8, body []byte) []byte {
	b := []byte{byte(t), ver, byte(len(body) >> 24), byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	return append(b, body...)
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestReadFrameSkipsUnknownTypes(t *testing.T) {
	var s bytes.Buffer
	s.Write(frame(200, 1, []byte("future message body, not even msgpack")))
	s.Write(frame(99, 3, nil))
	s.Write(frame(8, 1, []byte{0x80})) // the removed BlobRequest's type is unknown now
	if err := WriteFrame(&s, &Ack{V: Version, JobID: "1f", OK: true}); err != nil {
		t.Fatal(err)
	}
	m, err := ReadFrame(&s)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := m.(*Ack); !ok || r.JobID != "1f" || !r.OK {
		t.Fatalf("got %#v, want the Ack after the unknown frames", m)
	}
	if _, err := Unmarshal(frame(200, 1, []byte{0x80})); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Unmarshal of an unknown type: %v, want ErrUnknownType", err)
	}
}

// TestUnknownFieldsIgnored: a newer sender's extra map keys (and a higher
// version) are accepted, as the versioning rules promise.
func TestUnknownFieldsIgnored(t *testing.T) {
	// {"v": 2, "job": "1f", "future": [1, {"x": nil}]}
	body := []byte{0x83, 0xa1, 'v', 0x02, 0xa3, 'j', 'o', 'b', 0xa2, '1', 'f'}
	body = append(body, 0xa6, 'f', 'u', 't', 'u', 'r', 'e', 0x92, 0x01, 0x81, 0xa1, 'x', 0xc0)
	m, err := Unmarshal(frame(TypeAck, 2, body))
	if err != nil {
		t.Fatal(err)
	}
	if r := m.(*Ack); r.V != 2 || r.JobID != "1f" {
		t.Errorf("got %#v", r)
	}
}

func TestReadExpect(t *testing.T) {
	var s bytes.Buffer
	WriteFrame(&s, &EmbedDone{V: Version, JobID: "aa", ChunkID: hashA, Results: 1})
	WriteFrame(&s, Errorf(KindModelMismatch, "no base %s", hashB[:8]))
	WriteFrame(&s, &Ack{V: Version, OK: true})
	if d, err := ReadExpect[*EmbedDone](&s); err != nil || d.Results != 1 {
		t.Fatalf("ReadExpect[*EmbedDone] = %v, %v", d, err)
	}
	_, err := ReadExpect[*EmbedDone](&s)
	var re *Error
	if !errors.As(err, &re) || KindOf(err) != KindModelMismatch {
		t.Fatalf("remote error: got %v, want a *Error of kind model mismatch", err)
	}
	if want := "remote error (model mismatch): no base 0f0f0f0f"; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	_, err = ReadExpect[*EmbedDone](&s)
	if err == nil || !strings.Contains(err.Error(), "got Ack, want EmbedDone") {
		t.Errorf("wrong type: %v", err)
	}
}

func TestRejections(t *testing.T) {
	good := func() *EmbedRequest {
		return &EmbedRequest{V: Version, JobID: "1f", ChunkID: hashB, BaseHash: hashA, Layers: []int{-1}, Codec: "q8", Seqs: [][]int32{{1}}}
	}
	tooManySeqs := good()
	tooManySeqs.Seqs = make([][]int32, MaxSeqsPerChunk+1)
	for i := range tooManySeqs.Seqs {
		tooManySeqs.Seqs[i] = []int32{1}
	}
	tooManyTokens := good()
	tooManyTokens.Seqs = make([][]int32, MaxTokensPerChunk/MaxSeqLen+1)
	for i := range tooManyTokens.Seqs {
		tooManyTokens.Seqs[i] = make([]int32, MaxSeqLen)
	}
	mod := func(f func(r *EmbedRequest)) *EmbedRequest { r := good(); f(r); return r }
	tests := []struct {
		name string
		msg  Message
		want string // substring of the error
	}{
		{"version 0", mod(func(r *EmbedRequest) { r.V = 0 }), "V: must be >= 1"},
		{"too many seqs", tooManySeqs, "len(Seqs): 1025 out of range [1, 1024]"},
		{"too many tokens", tooManyTokens, "Seqs: 139264 tokens in all, max 131072"},
		{"empty seq", mod(func(r *EmbedRequest) { r.Seqs = [][]int32{{}} }), "len(Seqs[0]): 0"},
		{"negative token", mod(func(r *EmbedRequest) { r.Seqs = [][]int32{{5, -1}} }), "Seqs[0][1]: token -1"},
		{"bad hex", mod(func(r *EmbedRequest) { r.ChunkID = strings.ToUpper(hashB) }), "ChunkID: byte 1 ('F') is not lowercase hex"},
		{"short hash", mod(func(r *EmbedRequest) { r.BaseHash = "abcd" }), "BaseHash: 4 hex characters, want 64"},
		{"no layers", mod(func(r *EmbedRequest) { r.Layers = nil }), "len(Layers): 0"},
		{"repeated layer", mod(func(r *EmbedRequest) { r.Layers = []int{3, 3} }), "Layers[1]: 3 is repeated"},
		{"layer -2", mod(func(r *EmbedRequest) { r.Layers = []int{-2} }), "Layers[0]: -2 out of range"},
		{"codec chars", mod(func(r *EmbedRequest) { r.Codec = "q 8" }), "Codec: byte 1"},
		{"unknown kind", &Error{V: Version, Kind: 99, Msg: "x"}, "Kind: 99 is not a known kind"},
		{"kind 0", &Error{V: Version, Msg: "x"}, "Kind: 0 is not a known kind"},
		{"control char", &Error{V: Version, Kind: KindInternal, Msg: "a\nb"}, "Msg: contains control character"},
		{"cache query no chunks", &CacheQuery{V: Version, Base: hashA, Codec: "q8", Layer: -1}, "len(Chunks): 0"},
		{"cache query repeated chunk", &CacheQuery{V: Version, Base: hashA, Codec: "q8", Layer: -1, Chunks: []string{hashB, hashB}}, "Chunks[1]"},
		{"cache index bad CID", &CacheIndex{V: Version, CIDs: []string{"", "bafkrwidmo3iypfn6ajeobkutt5u3zklz7kvhcmk3mygz7vsoo3pc35gkm4"}}, "CIDs[1]"},
		{"cache index not a CID", &CacheIndex{V: Version, CIDs: []string{"hello"}}, "CIDs[0]"},
		{"advert bad peer", &Advert{V: Version, Peer: "nope", Device: "cpu", UnixMilli: 1}, "Peer: \"nope\" is not a peer ID"},
		{"result data over bound", &EmbedResult{V: Version, JobID: "1", ChunkID: hashA, Codec: "q8", Rows: 1, Dim: 1, Data: make([]byte, 69)}, "len(Data): 69 out of range [1, 68]"},
		{"cid dag-cbor", &AdaptorAnnounce{V: Version, CID: "bafyreidykglsfhoixmivffc5uwhcgshx4j465xwqntbmu43nb2dzqwfvae", BaseHash: hashA, Size: 1, UnixMilli: 1}, "codec 0x71"},
		{"adaptor too big", &AdaptorAnnounce{V: Version, CID: cidA, BaseHash: hashA, Size: MaxFileBytes + 1, UnixMilli: 1}, "Size: 2147483649 out of range"},
		{"too many metrics", &AdaptorAnnounce{V: Version, CID: cidA, BaseHash: hashA, Size: 1, UnixMilli: 1, Metrics: manyMetrics(33)}, "Metrics: 33 entries, max 32"},
		{"NaN metric", &AdaptorAnnounce{V: Version, CID: cidA, BaseHash: hashA, Size: 1, UnixMilli: 1, Metrics: map[string]float64{"l": nan()}}, "Metrics[l]: NaN is not finite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Marshal(tt.msg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Marshal: %v, want an error containing %q", err, tt.want)
			}
			if WriteFrame(io.Discard, tt.msg) == nil {
				t.Fatal("WriteFrame accepted it")
			}
		})
	}
}

func manyMetrics(n int) map[string]float64 {
	m := map[string]float64{}
	for i := range n {
		m["m"+strings.Repeat("x", i)] = 1
	}
	return m
}

func nan() float64 { var z float64; return z / z }

// TestReadRejections feeds malformed frames to ReadFrame and Unmarshal.
func TestReadRejections(t *testing.T) {
	okReq, _ := Marshal(&Ack{V: Version, JobID: "1f", OK: true})
	tests := []struct {
		name  string
		frame []byte
		want  string
	}{
		{"oversized frame", frame(TypeAck, 1, make([]byte, smallFrameCap+1)), "over cap 4096"},
		{"huge length, no body", mustHex("0301ffffffff"), "over cap"},
		{"truncated body", okReq[:len(okReq)-1], "unexpected EOF"},
		{"short header", []byte{5, 1, 0}, "short header"},
		{"version 0", frame(TypeAck, 0, okReq[HeaderLen:]), "frame version 0"},
		{"version differs", frame(TypeAck, 2, okReq[HeaderLen:]), "body version 1 differs from frame version 2"},
		{"not a map", frame(TypeAck, 1, []byte{0x91, 0x01}), "not a msgpack map"},
		{"array32 claims 4G", frame(TypeEmbedRequest, 1, mustHex("81a473657173ddffffffff")), "container of 4294967295 entries"},
		{"str32 claims 4G", frame(TypeAck, 1, mustHex("81a6726561736f6edbffffffff")), "truncated"},
		{"trailing bytes", frame(TypeAck, 1, mustHex("81a1760100")), "trailing bytes"},
		{"too deep", frame(TypeAck, 1, append(mustHex("81a178"), bytes.Repeat([]byte{0x91}, 20)...)), "nested too deep"},
		{"too many elements", frame(TypeAck, 1, append(mustHex("81a178dc0100"), make([]byte, 256)...)), "elements this message allows"},
		{"invalid field", frame(TypeAck, 1, mustHex("82a17601a26f6bc3a26a6f62a158")), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tt.frame))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ReadFrame: %v, want an error containing %q", err, tt.want)
			}
			if _, err := Unmarshal(tt.frame); err == nil {
				t.Fatalf("Unmarshal accepted it")
			}
		})
	}
}

// TestHostileLengthsDoNotAllocate proves the length checks run before any
// allocation a length prefix asks for: six- to sixteen-byte inputs claiming
// 4 GiB bodies, arrays or strings cost a few hundred bytes at most.
func TestHostileLengthsDoNotAllocate(t *testing.T) {
	tests := []struct {
		in       []byte
		maxBytes uint64 // per parse
	}{
		{mustHex("0201ffffffff"), 1 << 10},                                                 // header: 4 GiB EmbedRequest
		{mustHex("0301" + "03fffff0"), initialBody + 1<<10},                                // header: 64 MiB EmbedResult (in cap), no body
		{frame(TypeEmbedRequest, 1, mustHex("81a473657173ddffffffff")), 16 << 10},          // seqs: array32 of 4G
		{frame(TypeEmbedResult, 1, mustHex("81a464617461c6ffffffff")), 16 << 10},           // data: bin32 of 4 GiB
		{frame(TypeAdaptorAnnounce, 1, mustHex("81a76d657472696373dfffffffff")), 16 << 10}, // metrics: map32 of 4G
	}
	for i, tt := range tests {
		allocs := testing.AllocsPerRun(20, func() {
			if _, err := ReadFrame(bytes.NewReader(tt.in)); err == nil {
				t.Fatalf("input %d parsed", i)
			}
		})
		var before, after runtimeMem
		before.read()
		for range 20 {
			ReadFrame(bytes.NewReader(tt.in))
		}
		after.read()
		perRun := (after.total - before.total) / 20
		if perRun > tt.maxBytes || allocs > 50 {
			t.Errorf("input %d: %d bytes and %.0f allocations per parse, want at most %d bytes", i, perRun, allocs, tt.maxBytes)
		}
		if len(tt.in) > HeaderLen {
			if err := ValidateMsgpack(tt.in[HeaderLen:], maxDepth); err == nil {
				t.Errorf("input %d: ValidateMsgpack accepted the hostile body", i)
			}
		}
	}
}

// TestLongIDsRefusedByLength: a peer ID or CID string far over its bound is
// refused by its length, before it is decoded (base58 decoding is
// quadratic) or quoted in the error (which amplified a 60 KB advert into
// 2.7 MB of allocations).
func TestLongIDsRefusedByLength(t *testing.T) {
	tests := []struct {
		t    MsgType
		body map[string]any
		want string
	}{
		{TypeAdvert, map[string]any{"v": 1, "peer": "Qm" + strings.Repeat("\x01", 60000)}, "Peer: 60002 characters, over 128"},
		{TypeAdvert, map[string]any{"v": 1, "peer": "1" + strings.Repeat("z", 60000)}, "Peer: 60001 characters, over 128"},
		{TypeAdaptorAnnounce, map[string]any{"v": 1, "cid": "Qm" + strings.Repeat("z", 15000)}, "CID: 15002 characters, over 100"},
	}
	for _, tt := range tests {
		body, err := msgpack.Marshal(tt.body)
		if err != nil {
			t.Fatal(err)
		}
		in := frame(tt.t, 1, body)
		var before, after runtimeMem
		before.read()
		_, err = ReadFrame(bytes.NewReader(in))
		after.read()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("%v: %v, want %q", tt.t, err, tt.want)
		}
		if grew := after.total - before.total; grew > uint64(4*len(in)+64<<10) {
			t.Errorf("%v of %d bytes: parsing allocated %d", tt.t, len(in), grew)
		}
	}
}

// TestLargeFrames reads frames bigger than the initial body buffer through
// a reader that returns few bytes at a time.
func TestLargeFrames(t *testing.T) {
	for _, n := range []int{initialBody - 20, initialBody, 3*initialBody + 7, 1 << 20} {
		data := bytes.Repeat([]byte{0x5a, 0xa5, 0x01}, n/3+1)[:n]
		m := &EmbedResult{V: Version, JobID: "1f", ChunkID: hashB, Seq: 0, Layer: -1, Codec: "q8", Rows: 128, Dim: 4096, Data: data}
		b, err := Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ReadFrame(iotest.HalfReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("%d bytes: frame differs", n)
		}
	}
}
