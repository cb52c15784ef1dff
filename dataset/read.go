package dataset

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// Caps on what a data file may hold, checked before anything is kept.
const (
	MaxFileBytes   = 4 << 30  // a data file
	MaxRecordBytes = 64 << 20 // one JSONL line
	sniffBytes     = 64 << 10 // read to tell JSONL, text and binary apart
	textSegment    = 64 << 10 // plain text is tokenised in pieces of about this size
)

// Report says what happened to a data file's records: nothing is dropped
// or cut without being counted here, and commands print it.
type Report struct {
	Format  string         // "jsonl" or "text", recognised by content
	Read    int            // records (JSONL lines, text paragraphs)
	Used    int            // records that gave at least one trained token
	Cut     int            // records shortened to fit SeqLen (counted also in Used)
	Dropped int            // records with nothing left to train on
	Why     map[string]int // reasons for cuts, drops and ignored fields, with counts
}

func (r *Report) note(why string) {
	if r.Why == nil {
		r.Why = map[string]int{}
	}
	r.Why[why]++
}

// String is the report in one paragraph for people.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d records read, %d used, %d cut, %d dropped", r.Format, r.Read, r.Used, r.Cut, r.Dropped)
	whys := make([]string, 0, len(r.Why))
	for w := range r.Why {
		whys = append(whys, w)
	}
	sort.Strings(whys)
	for _, w := range whys {
		fmt.Fprintf(&b, "\n  %d × %s", r.Why[w], w)
	}
	return b.String()
}

// Load reads a data file, recognising its format by content (not by its
// name): JSONL with "text", "prompt"/"completion" or "question"/"answer"
// fields (only completion/answer tokens count in the loss), or plain text
// (paragraphs separated by blank lines are examples). Binary data is
// refused. It stops when ctx ends.
func Load(ctx context.Context, path string, tok Tokenizer, cfg Config) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read data: %w", err)
	}
	defer f.Close()
	var size int64
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	ds, err := read(ctx, f, size, tok, cfg)
	if err != nil {
		return nil, fmt.Errorf("read data %s: %w", path, err)
	}
	return ds, nil
}

// Read is Load over a reader.
func Read(ctx context.Context, r io.Reader, tok Tokenizer, cfg Config) (*Set, error) {
	return read(ctx, r, 0, tok, cfg)
}

// progressStep is how many bytes of text pass between Config.Progress
// calls.
const progressStep = 1 << 20

func read(ctx context.Context, r io.Reader, size int64, tok Tokenizer, cfg Config) (*Set, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	br := bufio.NewReaderSize(io.LimitReader(r, MaxFileBytes), sniffBytes)
	head, _ := br.Peek(sniffBytes)
	if err := checkText(head); err != nil {
		return nil, err
	}
	rep := Report{Format: "text"}
	if looksJSONL(head) {
		rep.Format = "jsonl"
	}
	var train, val []Example
	var done, next int64 = 0, progressStep
	tick := func(n int) {
		if done += int64(n); cfg.Progress != nil && done >= next {
			cfg.Progress(done, size)
			next = done + progressStep
		}
	}
	add := func(rec record) error {
		rep.Read++
		exs, cut, why := tokenize(ctx, rec, tok, cfg.SeqLen, tick)
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case len(exs) == 0:
			rep.Dropped++
			rep.note(why)
			return nil
		case cut:
			rep.Cut++
			rep.note(why)
		}
		rep.Used++
		if isVal(rec, cfg.ValPercent) { // once per record: hashing is linear in the file
			val = append(val, exs...)
		} else {
			train = append(train, exs...)
		}
		return nil
	}
	var err error
	if rep.Format == "jsonl" {
		err = readJSONL(br, cfg.MaxExamples, cfg.MaxRecordBytes, &rep, add)
	} else {
		err = readText(br, cfg.MaxExamples, add)
	}
	if err != nil {
		return nil, err
	}
	if cfg.Progress != nil {
		cfg.Progress(max(size, done), max(size, done))
	}
	if rep.Used == 0 {
		return nil, fmt.Errorf("no usable examples (%s)", rep)
	}
	ds := NewSet(Chunks(train, cfg.SeqsPerChunk, false), Chunks(val, cfg.SeqsPerChunk, true))
	ds.Report = rep
	return ds, nil
}

// checkText refuses what is not text: NUL bytes or mostly invalid UTF-8
// and control characters in the first bytes of the file.
func checkText(head []byte) error {
	if len(head) == 0 {
		return errors.New("the file is empty")
	}
	if i := bytes.IndexByte(head, 0); i >= 0 {
		return fmt.Errorf("this is binary data, not text (a NUL byte at offset %d): want JSONL or plain text", i)
	}
	bad, n := 0, 0
	for i := 0; i < len(head); n++ {
		r, size := utf8.DecodeRune(head[i:])
		if r == utf8.RuneError && size == 1 && len(head)-i >= utf8.UTFMax || r < 0x20 && r != '\n' && r != '\r' && r != '\t' {
			bad++
		}
		i += size
	}
	if bad*20 > n { // over 5%
		return fmt.Errorf("this is binary data, not text (%d of the first %d characters are invalid UTF-8 or control characters): want JSONL or plain text", bad, n)
	}
	return nil
}

// looksJSONL reports whether the first non-blank line is a JSON object.
func looksJSONL(head []byte) bool {
	for len(head) > 0 {
		line := head
		if i := bytes.IndexByte(head, '\n'); i >= 0 {
			line, head = head[:i], head[i+1:]
		} else {
			head = nil
		}
		if line = bytes.TrimSpace(line); len(line) > 0 {
			return line[0] == '{' && (json.Valid(line) || head == nil)
		}
	}
	return false
}

// readJSONL calls add for each record; a line over MaxRecordBytes is an
// error that names it.
func readJSONL(br *bufio.Reader, max, limit int, rep *Report, add func(record) error) error {
	for line, n := 1, 0; ; line++ {
		b, err := readLine(br, limit)
		if errors.Is(err, errLineTooLong) {
			return fmt.Errorf("line %d is longer than %d bytes, the limit of one JSONL record", line, limit)
		}
		if err == io.EOF && len(b) == 0 {
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		if b = bytes.TrimSpace(b); len(b) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("line %d: not a JSON object: %w", line, err)
		}
		rec, ignored, err := jsonRecord(m)
		if err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		for _, k := range ignored {
			rep.note(fmt.Sprintf("field %q ignored", k))
		}
		if err := add(rec); err != nil {
			return err
		}
		if n++; max > 0 && n >= max {
			return nil
		}
	}
}

// jsonRecord turns one JSONL object into a record; fields it does not use
// are returned.
func jsonRecord(m map[string]any) (rec record, ignored []string, err error) {
	str := func(k string) (string, error) {
		v, ok := m[k]
		if !ok {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("field %q is a %T, want a string", k, v)
		}
		return s, nil
	}
	var used []string
	pick := func(keys ...string) ([]string, error) {
		out := make([]string, len(keys))
		for i, k := range keys {
			s, err := str(k)
			if err != nil {
				return nil, err
			}
			out[i] = s
		}
		used = keys
		return out, nil
	}
	has := func(k string) bool { _, ok := m[k]; return ok }
	switch {
	case has("question") || has("answer"):
		v, err := pick("question", "answer")
		if err != nil {
			return rec, nil, err
		}
		rec = record{prompt: Prompt(v[0]), answer: v[1], pair: true}
	case has("prompt") || has("completion"):
		v, err := pick("prompt", "completion")
		if err != nil {
			return rec, nil, err
		}
		rec = record{prompt: v[0], answer: v[1], pair: true}
	case has("text"):
		v, err := pick("text")
		if err != nil {
			return rec, nil, err
		}
		rec = record{text: v[0]}
	default:
		return rec, nil, errors.New("no text, prompt/completion or question/answer field")
	}
	for k := range m {
		if !slices.Contains(used, k) {
			ignored = append(ignored, k)
		}
	}
	sort.Strings(ignored)
	return rec, ignored, nil
}

var errLineTooLong = errors.New("line too long")

// readLine reads one line (without its newline) of at most limit bytes.
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > limit+1 {
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == nil {
			line = line[:len(line)-1]
		}
		return line, err
	}
}

// readText calls add for each paragraph (blank-line separated).
func readText(br *bufio.Reader, max int, add func(record) error) error {
	var para strings.Builder
	n := 0
	flush := func() error {
		p := strings.TrimSpace(para.String())
		para.Reset()
		if p == "" {
			return nil
		}
		n++
		return add(record{text: p})
	}
	for {
		line, err := br.ReadString('\n')
		if strings.TrimSpace(line) == "" && line != "" || err != nil {
			para.WriteString(line)
			if ferr := flush(); ferr != nil {
				return ferr
			}
			if err == io.EOF || max > 0 && n >= max {
				return nil
			}
			if err != nil {
				return err
			}
			continue
		}
		para.WriteString(line)
	}
}

// FitPair cuts an EncodePair example to at most seqLen tokens as training
// does, keeping what is trained on: BOS (hasBOS), the end of the prompt
// and the whole answer (and EOS); if the answer alone does not fit, its
// end is cut. why says how it was cut, "" when it fits as it is.
func FitPair(ex Example, seqLen int, hasBOS bool) (Example, string) {
	if len(ex.Tokens) <= seqLen {
		return ex, ""
	}
	p := ex.PromptLen()
	bos := 0
	if hasBOS && p > 0 {
		bos = 1
	}
	answer := len(ex.Tokens) - p
	if bos+answer <= seqLen { // drop the start of the prompt, after BOS
		keep := seqLen - bos - answer
		from := len(ex.Tokens) - answer - keep
		toks := append(append([]int32(nil), ex.Tokens[:bos]...), ex.Tokens[from:]...)
		loss := append(append([]bool(nil), ex.Loss[:bos]...), ex.Loss[from:]...)
		loss[0] = false
		return Example{Tokens: toks, Loss: loss}, fmt.Sprintf("prompt longer than --seq-len %d: its start was cut, the answer kept", seqLen)
	}
	// The answer alone is too long: keep BOS and the answer's start.
	toks := append(append([]int32(nil), ex.Tokens[:bos]...), ex.Tokens[p:p+seqLen-bos]...)
	loss := append(append([]bool(nil), ex.Loss[:bos]...), ex.Loss[p:p+seqLen-bos]...)
	loss[0] = false
	return Example{Tokens: toks, Loss: loss}, fmt.Sprintf("answer longer than --seq-len %d: the prompt and the answer's end were cut", seqLen)
}

// tokenize turns a record into sequences of at most seqLen tokens. Plain
// text is tokenised in pieces (so that a huge paragraph can be stopped and
// shows no quadratic cost) and windowed; a prompt/answer pair that is too
// long keeps BOS, the end of its prompt and its whole answer (and EOS); if
// the answer alone does not fit, its end is cut. cut says the record was
// shortened and why says how (or, with no examples, why it was dropped).
func tokenize(ctx context.Context, rec record, tok Tokenizer, seqLen int, tick func(n int)) (exs []Example, cut bool, why string) {
	if rec.pair {
		defer tick(len(rec.prompt) + len(rec.answer))
		if strings.TrimSpace(rec.answer) == "" {
			return nil, false, "a prompt or question without an answer: nothing to train on"
		}
		ex, why := FitPair(EncodePair(tok, rec.prompt, rec.answer), seqLen, tok.BOS() >= 0)
		return []Example{ex}, why != "", why
	}
	var ids []int32
	var loss []bool
	if bos := tok.BOS(); bos >= 0 {
		ids, loss = append(ids, bos), append(loss, false)
	}
	for text := rec.text; text != ""; {
		if ctx.Err() != nil {
			return nil, false, "stopped"
		}
		piece := text
		if len(piece) > textSegment {
			// Cut before a space or newline, where the pre-tokenizers cut too.
			i := strings.LastIndexAny(piece[:textSegment], " \n")
			if i <= 0 {
				i = textSegment
				for i < len(piece) && !utf8.RuneStart(piece[i]) {
					i++
				}
			}
			piece = piece[:i]
		}
		encode := tok.Encode
		if c, ok := tok.(interface{ EncodeContinuation(string) []int32 }); ok && len(text) < len(rec.text) {
			encode = c.EncodeContinuation // no SentencePiece dummy prefix inside the text
		}
		for _, id := range encode(piece) {
			ids, loss = append(ids, id), append(loss, true)
		}
		text = text[len(piece):]
		tick(len(piece))
	}
	if eos := tok.EOS(); eos >= 0 {
		ids, loss = append(ids, eos), append(loss, true)
	}
	if len(ids) < 2 {
		return nil, false, "text with no tokens"
	}
	loss[0] = false
	for start := 0; start < len(ids)-1; start += seqLen - 1 { // windows overlap by one token
		end := min(start+seqLen, len(ids))
		l := append([]bool(nil), loss[start:end]...)
		l[0] = false
		exs = append(exs, Example{Tokens: ids[start:end:end], Loss: l})
		if end == len(ids) {
			break
		}
	}
	return exs, false, ""
}
