package dataset

import (
	"bytes"
	"carryon/tokenizer"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

var byteTok = tokenizer.ByteTokenizer{}

func readDS(t *testing.T, data string, jsonl bool, cfg Config) *Set {
	t.Helper()
	ds, err := Read(context.Background(), strings.NewReader(data), byteTok, cfg) // the format is recognised, jsonl documents the case
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// bytesOf is BOS + the bytes of s + EOS, as the byte tokenizer gives them.
func bytesOf(s string) []int32 {
	ids := []int32{tokenizer.ByteTokBOS}
	for i := range len(s) {
		ids = append(ids, int32(s[i]))
	}
	return append(ids, tokenizer.ByteTokEOS)
}

// onlyExample returns the single example of a one-record data set.
func onlyExample(t *testing.T, ds *Set) Example {
	t.Helper()
	all := ds.All()
	if len(all) != 1 || len(all[0].Seqs) != 1 {
		t.Fatalf("want one chunk with one sequence, got %d chunks", len(all))
	}
	return all[0].Seqs[0]
}

// trainedFrom checks that ex's tokens are want and that exactly positions
// from..end are trained.
func trainedFrom(t *testing.T, ex Example, want []int32, from int) {
	t.Helper()
	if !slices.Equal(ex.Tokens, want) {
		t.Fatalf("tokens %v, want %v", ex.Tokens, want)
	}
	for i, l := range ex.Loss {
		if l != (i >= from) {
			t.Fatalf("Loss[%d] = %v, want trained from %d on: %v", i, l, from, ex.Loss)
		}
	}
	tg := ex.Targets()
	for i := range tg {
		w := int32(-1)
		if i+1 < len(want) && i+1 >= from {
			w = want[i+1]
		}
		if tg[i] != w {
			t.Fatalf("Targets()[%d] = %d, want %d", i, tg[i], w)
		}
	}
}

func TestDatasetJSONLForms(t *testing.T) {
	cfg := Config{ValPercent: 1}
	// "text": everything after BOS is trained, EOS included.
	ex := onlyExample(t, readDS(t, `{"text": "hello"}`, true, cfg))
	trainedFrom(t, ex, bytesOf("hello"), 1)

	// prompt/completion: only the completion (and EOS) is trained.
	ex = onlyExample(t, readDS(t, `{"prompt": "2+2=", "completion": "4"}`, true, cfg))
	trainedFrom(t, ex, bytesOf("2+2=4"), 1+len("2+2="))

	// question/answer: a fixed template around the question, not trained.
	ex = onlyExample(t, readDS(t, `{"question": "2+3?", "answer": "5", "extra": 1}`+"\n\n", true, cfg))
	prompt := "Question: 2+3?\nAnswer: "
	trainedFrom(t, ex, bytesOf(prompt+"5"), 1+len(prompt))

	// A pair longer than SeqLen loses the start of its prompt, never the
	// answer: BOS, "c", "de", EOS.
	ds := readDS(t, `{"prompt": "abc", "completion": "de"}`, true, Config{SeqLen: 5, ValPercent: 1})
	ex = onlyExample(t, ds)
	trainedFrom(t, ex, append([]int32{tokenizer.ByteTokBOS}, bytesOf("cde")[1:]...), 2)
	if r := ds.Report; r.Read != 1 || r.Used != 1 || r.Cut != 1 || r.Dropped != 0 || len(r.Why) != 1 {
		t.Errorf("report %+v, want one record read, used and cut", r)
	}
	// An answer that alone does not fit keeps its start (and is reported).
	ex = onlyExample(t, readDS(t, `{"prompt": "abc", "completion": "defghij"}`, true, Config{SeqLen: 6, ValPercent: 1}))
	trainedFrom(t, ex, append([]int32{tokenizer.ByteTokBOS}, bytesOf("defgh")[1:6]...), 1)

	for _, bad := range []struct{ data, want string }{
		{`{"text": "a"}` + "\n" + `{"text": 5}`, "line 2: field \"text\" is a float64"},
		{`{"text": "a"}` + "\n" + `{"text": "b"` + "\n", "line 2"},
		{"\n\n", "no usable examples"},
	} {
		_, err := Read(context.Background(), strings.NewReader(bad.data), byteTok, cfg)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: err %v, want one containing %q", bad.data, err, bad.want)
		}
	}
	ds = readDS(t, strings.Repeat(`{"text": "x"}`+"\n", 10), true, Config{MaxExamples: 3, ValPercent: 1})
	if n := countSeqs(ds); n != 3 {
		t.Errorf("MaxExamples 3: %d sequences", n)
	}
}

func countSeqs(ds *Set) int {
	n := 0
	for _, c := range ds.All() {
		n += len(c.Seqs)
	}
	return n
}

// TestDatasetTextWindows checks plain text: paragraphs are examples, and a
// long one is cut into windows of SeqLen overlapping by one token, each
// starting untrained, that together cover the text exactly once.
func TestDatasetTextWindows(t *testing.T) {
	long := strings.Repeat("abcdefghij", 5) // 50 bytes → 52 tokens
	ds := readDS(t, "short one\r\n\r\n"+long+"\n\n\n", false, Config{SeqLen: 16, SeqsPerChunk: 100, ValPercent: 1})
	var exs []Example
	for _, c := range ds.All() {
		exs = append(exs, c.Seqs...)
	}
	var short Example
	var windows []Example
	for _, ex := range exs {
		if len(ex.Tokens) == len(bytesOf("short one")) && ex.Tokens[1] == 's' {
			short = ex
		} else {
			windows = append(windows, ex)
		}
	}
	trainedFrom(t, short, bytesOf("short one"), 1)
	want := bytesOf(long)
	var joined []int32
	for i, w := range windows {
		if len(w.Tokens) > 16 || len(w.Tokens) < 2 {
			t.Fatalf("window %d has %d tokens", i, len(w.Tokens))
		}
		if w.Loss[0] || slices.Contains(w.Loss[1:], false) {
			t.Fatalf("window %d loss mask %v", i, w.Loss)
		}
		if i == 0 {
			joined = append(joined, w.Tokens...)
		} else {
			if w.Tokens[0] != joined[len(joined)-1] {
				t.Fatalf("window %d does not overlap the previous one by one token", i)
			}
			joined = append(joined, w.Tokens[1:]...)
		}
	}
	if !slices.Equal(joined, want) {
		t.Fatalf("windows join to %v, want %v", joined, want)
	}
	if len(windows) != 4 { // 52 tokens, 15 new per window after the first 16
		t.Errorf("%d windows, want 4", len(windows))
	}
}

// TestDatasetSplitAndChunks checks the validation split (stable: a record's
// side depends only on its content) and the chunks (their size, IDs that
// are the hash of their tokens, and the data set hash).
func TestDatasetSplitAndChunks(t *testing.T) {
	var lines []string
	for i := range 1000 {
		lines = append(lines, fmt.Sprintf(`{"question": "q%d", "answer": "a%d"}`, i, i))
	}
	cfg := Config{SeqsPerChunk: 7, ValPercent: 10}
	ds := readDS(t, strings.Join(lines, "\n"), true, cfg)
	val := map[string]bool{}
	nval := 0
	for _, c := range ds.Val {
		if !c.Val {
			t.Fatal("a validation chunk is not marked Val")
		}
		for _, s := range c.Seqs {
			val[string(byteString(s.Tokens))] = true
			nval++
		}
	}
	if nval < 50 || nval > 150 {
		t.Errorf("%d of 1000 examples held out, want about 100", nval)
	}
	// Reversed order and half the records: every record stays on its side.
	var rev []string
	for i := len(lines) - 1; i >= 0; i -= 2 {
		rev = append(rev, lines[i])
	}
	ds2 := readDS(t, strings.Join(rev, "\n"), true, cfg)
	for _, c := range ds2.All() {
		for _, s := range c.Seqs {
			if c.Val != val[string(byteString(s.Tokens))] {
				t.Fatalf("%q changed sides when the file changed", byteString(s.Tokens))
			}
		}
	}

	for i, c := range ds.All() {
		if len(c.Seqs) > 7 || (len(c.Seqs) < 7 && i != len(ds.Train)-1 && i != len(ds.All())-1) {
			t.Fatalf("chunk %d has %d sequences", i, len(c.Seqs))
		}
		h := sha256.New()
		for _, s := range c.Seqs {
			binary.Write(h, binary.LittleEndian, uint32(len(s.Tokens)))
			binary.Write(h, binary.LittleEndian, s.Tokens)
		}
		if want := hex.EncodeToString(h.Sum(nil)); c.ID != want {
			t.Fatalf("chunk %d ID %s, want %s", i, c.ID, want)
		}
	}
	again := readDS(t, strings.Join(lines, "\n"), true, cfg)
	if again.Hash != ds.Hash || len(ds.Hash) != 64 {
		t.Errorf("the data set hash is not stable: %s vs %s", again.Hash, ds.Hash)
	}
	lines[3] = `{"question": "q3", "answer": "changed"}`
	if readDS(t, strings.Join(lines, "\n"), true, cfg).Hash == ds.Hash {
		t.Error("changing one answer kept the data set hash")
	}
	// The same tokens give the same chunk ID whatever the file.
	a := readDS(t, `{"text": "same"}`, true, Config{ValPercent: 1})
	b := readDS(t, "same", false, Config{ValPercent: 1})
	if a.All()[0].ID != b.All()[0].ID {
		t.Error("equal tokens gave different chunk IDs")
	}
}

func byteString(ids []int32) []byte {
	var b bytes.Buffer
	for _, id := range ids {
		if id < 256 {
			b.WriteByte(byte(id))
		}
	}
	return b.Bytes()
}

func TestDataConfigValidate(t *testing.T) {
	for _, c := range []Config{{SeqLen: 1}, {SeqLen: 9000}, {SeqsPerChunk: -1}, {SeqsPerChunk: 2000},
		{ValPercent: 91}, {ValPercent: -1}, {MaxExamples: -1}} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
		if _, err := Read(context.Background(), strings.NewReader("x"), byteTok, c); err == nil {
			t.Errorf("Read accepted %+v", c)
		}
	}
}

// TestDatasetReport checks that nothing is dropped or ignored silently and
// that the format is recognised by content: JSONL however it is named,
// binary data refused, an over-long line named.
func TestDatasetReport(t *testing.T) {
	cfg := Config{ValPercent: 1}
	data := `{"question": "2+3?", "answer": "5", "source": "x"}` + "\n" +
		`{"question": "no answer here"}` + "\n" +
		`{"question": "1+1?", "answer": "2"}` + "\n"
	ds := readDS(t, data, true, cfg)
	r := ds.Report
	if r.Format != "jsonl" || r.Read != 3 || r.Used != 2 || r.Dropped != 1 || r.Cut != 0 {
		t.Fatalf("report %+v", r)
	}
	if r.Why[`field "source" ignored`] != 1 || len(r.Why) != 2 {
		t.Errorf("reasons %v: want the ignored field and the missing answer", r.Why)
	}
	if !strings.Contains(r.String(), "without an answer") {
		t.Errorf("String() = %q", r.String())
	}
	// Plain text that happens to hold braces later is still text.
	if ds := readDS(t, "hello {not json}\n\nworld", false, cfg); ds.Report.Format != "text" || ds.Report.Read != 2 {
		t.Errorf("text report %+v", ds.Report)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	bin := make([]byte, 200<<10)
	for i := range bin {
		bin[i] = byte(rng.IntN(256))
	}
	if _, err := Read(context.Background(), bytes.NewReader(bin), byteTok, cfg); err == nil || !strings.Contains(err.Error(), "binary data") {
		t.Errorf("random bytes: err %v, want binary data refused", err)
	}
	long := `{"text": "a"}` + "\n" + `{"text": "` + strings.Repeat("x", 300<<10) + `"}` + "\n"
	if _, err := Read(context.Background(), strings.NewReader(long), byteTok, Config{MaxRecordBytes: 200 << 10}); err == nil || !strings.Contains(err.Error(), "line 2 is longer than") {
		t.Errorf("long line: err %v", err)
	}
}

// pieceTok is the byte tokenizer that records the sizes of the texts it
// is given.
type pieceTok struct {
	tokenizer.ByteTokenizer
	pieces []int
}

func (p *pieceTok) Encode(s string) []int32 {
	p.pieces = append(p.pieces, len(s))
	return p.ByteTokenizer.Encode(s)
}

// contTok is pieceTok that also has EncodeContinuation (as SentencePiece
// tokenizers do, to leave out their dummy prefix) and records which
// pieces went through it.
type contTok struct {
	pieceTok
	cont []bool
}

func (c *contTok) Encode(s string) []int32 {
	c.cont = append(c.cont, false)
	return c.pieceTok.Encode(s)
}

func (c *contTok) EncodeContinuation(s string) []int32 {
	c.cont = append(c.cont, true)
	return c.pieceTok.Encode(s)
}

// TestDatasetContinuation checks that the pieces of a long text after the
// first are encoded as continuations, and each record starts afresh.
func TestDatasetContinuation(t *testing.T) {
	long := strings.Repeat("word ", 3*textSegment/5)
	tok := &contTok{}
	if _, err := Read(context.Background(), strings.NewReader(long+"\n\nshort text\n"), tok, Config{SeqLen: 64}); err != nil {
		t.Fatal(err)
	}
	if want := []bool{false, true, true, false}; !slices.Equal(tok.cont, want) {
		t.Errorf("continuation per piece %v, want %v", tok.cont, want)
	}
}

// TestDatasetLongParagraph checks that one huge paragraph is tokenised in
// pieces of at most textSegment bytes that add up to the whole text (so
// the work is linear and can stop between pieces), with the same tokens as
// one call, and that a cancelled read stops.
func TestDatasetLongParagraph(t *testing.T) {
	para := strings.Repeat("the quick brown fox jumps over the lazy dog ", 1<<13) // 360 KB
	cfg := Config{SeqLen: 1 << 13, ValPercent: 10}
	tok := &pieceTok{}
	ds, err := Read(context.Background(), strings.NewReader(para), tok, cfg)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range tok.pieces {
		if n > textSegment {
			t.Errorf("a piece of %d bytes, over %d", n, textSegment)
		}
		total += n
	}
	trimmed := strings.TrimSpace(para)
	if total != len(trimmed) || len(tok.pieces) < len(trimmed)/textSegment {
		t.Errorf("%d pieces of %d bytes in all, want the %d bytes of the paragraph", len(tok.pieces), total, len(trimmed))
	}
	var got []int32
	for i, c := range ds.All() {
		for j, sq := range c.Seqs {
			if i+j > 0 {
				sq.Tokens = sq.Tokens[1:] // windows overlap by one token
			}
			got = append(got, sq.Tokens...)
		}
	}
	if want := bytesOf(trimmed); !slices.Equal(got, want) && len(ds.Val) == 0 {
		t.Errorf("pieces changed the tokens")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Read(ctx, strings.NewReader(para), byteTok, cfg); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: err %v", err)
	}
}

// TestDatasetProgress: Config.Progress hears how far tokenising a large
// file has come, about every MiB and rising, and ends at the file's size;
// Read, which knows no size, reports 0 for it.
func TestDatasetProgress(t *testing.T) {
	para := strings.Repeat("the quick brown fox jumps over the lazy dog ", 3<<20/44) // 3 MiB, one paragraph
	path := t.TempDir() + "/para.txt"
	if err := os.WriteFile(path, []byte(para), 0o644); err != nil {
		t.Fatal(err)
	}
	var calls [][2]int64
	cfg := Config{SeqLen: 512, Progress: func(done, total int64) { calls = append(calls, [2]int64{done, total}) }}
	if _, err := Load(context.Background(), path, byteTok, cfg); err != nil {
		t.Fatal(err)
	}
	size := int64(len(para))
	if len(calls) < 3 || calls[len(calls)-1] != [2]int64{size, size} {
		t.Fatalf("progress %v: want several calls ending at the size %d", calls, size)
	}
	for i, c := range calls {
		if c[1] != size || c[0] > size || i > 0 && c[0] <= calls[i-1][0] {
			t.Fatalf("progress %v: want rising counts of the %d bytes", calls, size)
		}
	}
	calls = nil
	if _, err := Read(context.Background(), strings.NewReader(para), byteTok, cfg); err != nil {
		t.Fatal(err)
	}
	if len(calls) < 3 || calls[0][1] != 0 {
		t.Fatalf("Read's progress %v: want total 0 (unknown)", calls[:min(3, len(calls))])
	}
}
