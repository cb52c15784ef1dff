package dataset

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
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

// TokenSeqs returns the token ids of the chunk's sequences, in order (the
// examples' own slices, not copies).
func (c *Chunk) TokenSeqs() [][]int32 {
	seqs := make([][]int32, len(c.Seqs))
	for i, s := range c.Seqs {
		seqs[i] = s.Tokens
	}
	return seqs
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
	// SeqLen caps a sequence's length in tokens: plain text is windowed to
	// it, a prompt/answer pair longer than it loses the start of its prompt
	// (the answer is kept whole when it fits). Commands default it to the
	// base's context (up to 2048); the zero Config means 128.
	SeqLen int
	// SeqsPerChunk is how many sequences a chunk holds. Default 16.
	SeqsPerChunk int
	// ValPercent of the examples (chosen by a hash of their text, so the
	// split is stable) are held out for validation. Default 10.
	ValPercent int
	// MaxExamples stops reading after this many examples (0: all).
	MaxExamples int
	// MaxRecordBytes caps one JSONL line (0: MaxRecordBytes, 64 MiB).
	MaxRecordBytes int
	// Progress, when set, is called as the records are tokenised, with
	// the bytes of text done so far and the file's size (0 when unknown,
	// as for Read): about every MiB, and once at the end with done equal
	// to the size.
	Progress func(done, total int64)
}

func (c Config) withDefaults() Config {
	c.SeqLen = cmp.Or(c.SeqLen, 128)
	c.SeqsPerChunk = cmp.Or(c.SeqsPerChunk, 16)
	c.ValPercent = cmp.Or(c.ValPercent, 10)
	c.MaxRecordBytes = cmp.Or(c.MaxRecordBytes, MaxRecordBytes)
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
	case c.MaxRecordBytes < 0 || c.MaxRecordBytes > MaxRecordBytes:
		return fmt.Errorf("Config.MaxRecordBytes: %d not in [0, %d]", c.MaxRecordBytes, MaxRecordBytes)
	case c.MaxExamples < 0:
		return fmt.Errorf("Config.MaxExamples: %d is negative", c.MaxExamples)
	}
	return nil
}

// Set is a tokenized, chunked data set.
type Set struct {
	Train, Val []*Chunk
	Hash       string // hex sha256 over every chunk ID in order
	Report     Report // what happened to the file's records
}

// record is one item of a data file before tokenization.
type record struct {
	prompt, answer string // prompt is not trained on; answer is
	pair           bool   // a prompt/answer record (else plain text)
	text           string // plain text, trained on whole
}

// NewSet returns the set of these training and validation chunks, with
// its Hash.
func NewSet(train, val []*Chunk) *Set {
	s := &Set{Train: train, Val: val}
	h := sha256.New()
	for _, c := range s.All() {
		h.Write([]byte(c.ID))
	}
	s.Hash = hex.EncodeToString(h.Sum(nil))
	return s
}

// All lists the training then the validation chunks.
func (d *Set) All() []*Chunk {
	return append(append([]*Chunk(nil), d.Train...), d.Val...)
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
