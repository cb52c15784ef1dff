package experiments

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"carryon/dataset"
	"carryon/model"
)

// Problem is one GSM8K question/answer pair.
type Problem struct {
	Question, Answer string
	Hash             [32]byte // sha256(question "\x00" answer): orders the held-out split
	Tokens           int      // length in the coordinator's format (see seqLen)
	Final            string   // the number after "####", normalised (dataset.FinalAnswer)
}

// Split is the data every experiment draws from.
type Split struct {
	Read  int       // problems in the file (or the first MaxRecords)
	Fit   int       // problems whose whole sequence fits the base's context
	Val   []Problem // held out: the ValProblems fitting problems with the smallest Hash
	Train []Problem // the next TrainProblems fitting problems by Hash (all the others when 0)
	// Select is the validation split that chooses checkpoints and α, cut
	// by Run from the front of Train (empty from LoadSplit).
	Select []Problem
	// Wide is a second training set, disjoint from Val and Train, that
	// ignores the context limit: the next WideTrain problems by Hash of
	// any length; the coordinator cuts each to the context, so long ones
	// keep only their question and the start of their answer.
	Wide []Problem
	// Unused are the other fitting problems, by Hash: no run trains on
	// them, so the exact-match experiment may score them after Val.
	Unused []Problem
}

// readProblems reads GSM8K-style JSONL (question and answer fields), at
// most max records (0: all).
func readProblems(r io.Reader, tok dataset.Tokenizer, max int) ([]Problem, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 16<<20)
	var out []Problem
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var rec struct{ Question, Answer string }
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if rec.Question == "" || rec.Answer == "" {
			return nil, fmt.Errorf("line %d: want question and answer fields", line)
		}
		p := Problem{Question: rec.Question, Answer: rec.Answer,
			Hash:   sha256.Sum256([]byte(rec.Question + "\x00" + rec.Answer)),
			Tokens: len(dataset.EncodePair(tok, dataset.Prompt(rec.Question), rec.Answer).Tokens)}
		p.Final, _ = dataset.FinalAnswer(rec.Answer)
		out = append(out, p)
		if max > 0 && len(out) >= max {
			break
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// LoadSplit reads the data file and splits it: problems of at most
// maxTokens tokens qualify; the val qualifying problems with the smallest
// hash are held out, the next train qualifying ones (all of them when train
// is 0) are the training set; wide lists the wide problems of any length
// with the smallest hash that are neither held out nor in the training set.
func LoadSplit(path string, tok dataset.Tokenizer, maxTokens, val, train, wide, maxRecords int) (*Split, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("experiments.LoadSplit: %w", err)
	}
	defer f.Close()
	ps, err := readProblems(f, tok, maxRecords)
	if err != nil {
		return nil, fmt.Errorf("experiments.LoadSplit: %s: %w", path, err)
	}
	sort.SliceStable(ps, func(i, j int) bool { return bytes.Compare(ps[i].Hash[:], ps[j].Hash[:]) < 0 })
	s := &Split{Read: len(ps)}
	held := map[[32]byte]bool{}
	for _, p := range ps {
		if p.Tokens > maxTokens {
			continue
		}
		s.Fit++
		if len(s.Val) < val {
			s.Val = append(s.Val, p)
			held[p.Hash] = true
		} else if train == 0 || len(s.Train) < train {
			s.Train = append(s.Train, p)
			held[p.Hash] = true
		}
	}
	inWide := map[[32]byte]bool{}
	for _, p := range ps {
		if len(s.Wide) < wide && !held[p.Hash] {
			s.Wide = append(s.Wide, p)
			inWide[p.Hash] = true
		}
	}
	for _, p := range ps {
		if p.Tokens <= maxTokens && !held[p.Hash] && !inWide[p.Hash] {
			s.Unused = append(s.Unused, p)
		}
	}
	if len(s.Val) == 0 || len(s.Train) == 0 {
		return nil, fmt.Errorf("experiments.LoadSplit: %s: %d problems fit %d tokens: too few for %d held out and some to train on", path, s.Fit, maxTokens, val)
	}
	return s, nil
}

// toDataset tokenizes train and val problems with the coordinator's own
// reader (so the sequences are exactly what `carryon train` would see),
// every train problem into ds.Train and every val problem into ds.Val.
func toDataset(tok dataset.Tokenizer, seqLen int, train, val []Problem) (*dataset.Set, error) {
	read := func(ps []Problem, isVal bool) ([]*dataset.Chunk, error) {
		if len(ps) == 0 {
			return nil, nil
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		for _, p := range ps {
			if err := enc.Encode(map[string]string{"question": p.Question, "answer": p.Answer}); err != nil {
				return nil, err
			}
		}
		ds, err := dataset.Read(context.Background(), &buf, tok, dataset.Config{SeqLen: seqLen})
		if err != nil {
			return nil, err
		}
		chunks := ds.All() // the reader's own 90/10 split is undone here
		n := 0
		for _, c := range chunks {
			c.Val = isVal
			n += len(c.Seqs)
		}
		if n != len(ps) {
			return nil, fmt.Errorf("%d problems became %d sequences", len(ps), n)
		}
		return chunks, nil
	}
	tr, err := read(train, false)
	if err != nil {
		return nil, fmt.Errorf("experiments: train split: %w", err)
	}
	va, err := read(val, true)
	if err != nil {
		return nil, fmt.Errorf("experiments: val split: %w", err)
	}
	return dataset.NewSet(tr, va), nil
}

// sequences lists a split's examples in chunk order.
func sequences(chunks []*dataset.Chunk) []dataset.Example {
	var out []dataset.Example
	for _, c := range chunks {
		out = append(out, c.Seqs...)
	}
	return out
}

// trainedTokens counts the positions with a loss (answer tokens and EOS).
func trainedTokens(exs []dataset.Example) int {
	n := 0
	for _, e := range exs {
		for _, t := range e.Targets() {
			if t >= 0 {
				n++
			}
		}
	}
	return n
}

// memoForwarder runs the base once per distinct sequence and hands out the
// stored hidden states afterwards: every bridge setting and carry-on shape
// is trained from one forward pass over the data ("forward once, train
// many"). Seconds is the time spent in the base's forward.
type memoForwarder struct {
	base    *model.Base
	m       map[string]map[int][]float32 // token ids → layer → hidden states
	all     []int                        // the layers computed for every new sequence
	Seconds float64
	Seqs    int
}

func (f *memoForwarder) Forward(ids []int32, layers []int) ([][]float32, error) {
	// Every call computes the union of the layers asked for so far, so a
	// sequence runs through the base once for all the source sets of a run
	// (one forward per sequence unless a later call asks for a new layer).
	for _, l := range layers {
		if !slices.Contains(f.all, l) {
			f.all = append(f.all, l)
		}
	}
	key := fmt.Sprint(ids)
	hs, ok := f.m[key]
	if ok {
		for _, l := range layers {
			if _, ok = hs[l]; !ok {
				break
			}
		}
	}
	if !ok {
		var out [][]float32
		sec, err := timed(func() error {
			var err error
			out, err = f.base.Forward(ids, f.all)
			return err
		})
		if err != nil {
			return nil, err
		}
		f.Seconds += sec
		f.Seqs++
		hs = map[int][]float32{}
		for i, l := range f.all {
			hs[l] = out[i]
		}
		f.m[key] = hs
	}
	res := make([][]float32, len(layers))
	for i, l := range layers {
		res[i] = hs[l]
	}
	return res, nil
}
