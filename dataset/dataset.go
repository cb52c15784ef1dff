package dataset

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Example is one training sequence: its tokens and which of them count in
// the loss. Loss[t] says whether predicting Tokens[t] (from the prefix
// before it) is trained; Loss[0] is always false.
type Example struct {
	Tokens []int32
	Loss   []bool
}

// Chunk is the unit of work leased to a volunteer: a few sequences, named
// by the hash of their tokens.
type Chunk struct {
	ID   string // hex sha256 of the chunk's tokens (see chunkID)
	Seqs []Example
	Val  bool // held out for validation
}

// Tokens counts the chunk's tokens.
func (c *Chunk) Tokens() int {
	n := 0
	for _, s := range c.Seqs {
		n += len(s.Tokens)
	}
	return n
}

// Tokenizer is what the dataset needs of a tokenizer (tokenizer.Tokenizer
// satisfies it).
type Tokenizer interface {
	Encode(text string) []int32
	BOS() int32
	EOS() int32
}

// Config says how text becomes chunks.
type Config struct {
	// SeqLen caps a sequence's length in tokens (longer examples are cut;
	// plain text is windowed to it). Default 128.
	SeqLen int
	// SeqsPerChunk is how many sequences a chunk holds. Default 16.
	SeqsPerChunk int
	// ValPercent of the examples (chosen by a hash of their text, so the
	// split is stable) are held out for validation. Default 10.
	ValPercent int
	// MaxExamples stops reading after this many examples (0: all).
	MaxExamples int
}

func (c Config) withDefaults() Config {
	if c.SeqLen == 0 {
		c.SeqLen = 128
	}
	if c.SeqsPerChunk == 0 {
		c.SeqsPerChunk = 16
	}
	if c.ValPercent == 0 {
		c.ValPercent = 10
	}
	return c
}

// Validate reports the first field out of bounds.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.SeqLen < 2 || c.SeqLen > 8192:
		return fmt.Errorf("Config.SeqLen: %d not in [2, 8192]", c.SeqLen)
	case c.SeqsPerChunk < 1 || c.SeqsPerChunk > 1024:
		return fmt.Errorf("Config.SeqsPerChunk: %d not in [1, 1024]", c.SeqsPerChunk)
	case c.ValPercent < 0 || c.ValPercent > 90:
		return fmt.Errorf("Config.ValPercent: %d not in [0, 90]", c.ValPercent)
	case c.MaxExamples < 0:
		return fmt.Errorf("Config.MaxExamples: %d is negative", c.MaxExamples)
	}
	return nil
}

// Set is a tokenized, chunked data set.
type Set struct {
	Train, Val []*Chunk
	Hash       string // hex sha256 over every chunk ID in order
}

// record is one item of a data file before tokenization.
type record struct {
	prompt, answer string // prompt is not trained on; answer is
	text           string // plain text, trained on whole
}

// Load reads a data file: JSONL with "text", "prompt"/"completion" or
// "question"/"answer" fields (only the completion/answer tokens count in
// the loss), or plain text (any other file; paragraphs separated by blank
// lines are examples).
func Load(path string, tok Tokenizer, cfg Config) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset.Load: %w", err)
	}
	defer f.Close()
	ds, err := Read(f, strings.HasSuffix(path, ".jsonl") || strings.HasSuffix(path, ".json"), tok, cfg)
	if err != nil {
		return nil, fmt.Errorf("dataset.Load: %s: %w", path, err)
	}
	return ds, nil
}

// Read is Load over a reader; jsonl selects the JSONL parser.
func Read(r io.Reader, jsonl bool, tok Tokenizer, cfg Config) (*Set, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	var recs []record
	var err error
	if jsonl {
		recs, err = readJSONL(r, cfg.MaxExamples)
	} else {
		recs, err = readText(r, cfg.MaxExamples)
	}
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, errors.New("no examples")
	}
	var train, val []Example
	for _, rec := range recs {
		for _, ex := range tokenize(rec, tok, cfg.SeqLen) {
			if isVal(rec, cfg.ValPercent) {
				val = append(val, ex)
			} else {
				train = append(train, ex)
			}
		}
	}
	ds := &Set{Train: Chunks(train, cfg.SeqsPerChunk, false), Val: Chunks(val, cfg.SeqsPerChunk, true)}
	h := sha256.New()
	for _, c := range ds.All() {
		h.Write([]byte(c.ID))
	}
	ds.Hash = hex.EncodeToString(h.Sum(nil))
	return ds, nil
}

// All lists the training then the validation chunks.
func (d *Set) All() []*Chunk {
	return append(append([]*Chunk(nil), d.Train...), d.Val...)
}

func readJSONL(r io.Reader, max int) ([]record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 16<<20)
	var recs []record
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		str := func(k string) string { s, _ := m[k].(string); return s }
		var rec record
		switch {
		case str("question") != "" || str("answer") != "":
			rec = record{prompt: Prompt(str("question")), answer: str("answer")}
		case str("prompt") != "" || str("completion") != "":
			rec = record{prompt: str("prompt"), answer: str("completion")}
		case str("text") != "":
			rec = record{text: str("text")}
		default:
			return nil, fmt.Errorf("line %d: no text, prompt/completion or question/answer field", line)
		}
		recs = append(recs, rec)
		if max > 0 && len(recs) >= max {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return recs, nil
}

func readText(r io.Reader, max int) ([]record, error) {
	b, err := io.ReadAll(io.LimitReader(r, 1<<30))
	if err != nil {
		return nil, err
	}
	var recs []record
	for _, p := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n\n") {
		if p = strings.TrimSpace(p); p != "" {
			recs = append(recs, record{text: p})
			if max > 0 && len(recs) >= max {
				break
			}
		}
	}
	return recs, nil
}

// tokenize turns a record into sequences of at most seqLen tokens: BOS,
// then the prompt (not trained) and answer (trained) or the text
// (trained), then EOS (trained). Plain text longer than seqLen is windowed;
// a prompt/answer pair is cut at seqLen.
func tokenize(rec record, tok Tokenizer, seqLen int) []Example {
	if rec.text == "" {
		ex := EncodePair(tok, rec.prompt, rec.answer)
		n := min(len(ex.Tokens), seqLen)
		return []Example{{Tokens: ex.Tokens[:n:n], Loss: ex.Loss[:n:n]}}
	}
	ex := EncodePair(tok, "", rec.text)
	ids, loss := ex.Tokens, ex.Loss
	var out []Example
	for start := 0; start < len(ids)-1; start += seqLen - 1 { // windows overlap by one token
		end := min(start+seqLen, len(ids))
		l := append([]bool(nil), loss[start:end]...)
		l[0] = false
		out = append(out, Example{Tokens: ids[start:end:end], Loss: l})
		if end == len(ids) {
			break
		}
	}
	return out
}

// isVal picks the validation split by a hash of the record.
func isVal(rec record, percent int) bool {
	h := sha256.Sum256([]byte(rec.prompt + "\x00" + rec.answer + "\x00" + rec.text))
	return int(binary.BigEndian.Uint32(h[:4])%100) < percent
}

// Chunks groups examples into chunks of per sequences, each named by its
// tokens (chunkID).
func Chunks(exs []Example, per int, val bool) []*Chunk {
	var out []*Chunk
	for i := 0; i < len(exs); i += per {
		c := &Chunk{Seqs: exs[i:min(i+per, len(exs))], Val: val}
		c.ID = chunkID(c.Seqs)
		out = append(out, c)
	}
	return out
}

// chunkID hashes the sequences' lengths and tokens (little-endian int32).
func chunkID(seqs []Example) string {
	h := sha256.New()
	var b [4]byte
	for _, s := range seqs {
		binary.LittleEndian.PutUint32(b[:], uint32(len(s.Tokens)))
		h.Write(b[:])
		for _, id := range s.Tokens {
			binary.LittleEndian.PutUint32(b[:], uint32(id))
			h.Write(b[:])
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Targets returns the next-token targets of an example for training: at
// position t the target is Tokens[t+1] when Loss[t+1], else -1.
func (e Example) Targets() []int32 {
	t := make([]int32, len(e.Tokens))
	for i := range t {
		t[i] = -1
		if i+1 < len(e.Tokens) && e.Loss[i+1] {
			t[i] = e.Tokens[i+1]
		}
	}
	return t
}
