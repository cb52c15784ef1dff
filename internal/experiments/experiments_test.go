package experiments

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"carryon/dataset"
	"carryon/internal/testenv"
	"carryon/model"
	"carryon/tensor"
	"carryon/tokenizer"
)

// TestLoadSplit checks the split on synthetic problems with the byte
// tokenizer: the length count agrees with the coordinator's reader, only
// problems that fit qualify, the held-out ones are the fitting problems with
// the smallest hashes, and nothing held out is trained on.
func TestLoadSplit(t *testing.T) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range 40 {
		q := fmt.Sprintf("Problem %d: how much is %d plus %d?", i, i, 2*i)
		a := fmt.Sprintf("%d+%d=<<%d+%d=%d>>%d%s\n#### %d", i, 2*i, i, 2*i, 3*i, 3*i, strings.Repeat(" so", i%7*5), 3*i)
		if err := enc.Encode(map[string]string{"question": q, "answer": a}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "p.jsonl")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	tok := tokenizer.ByteTokenizer{}
	const maxTok = 100
	s, err := LoadSplit(path, tok, maxTok, 5, 0, 12, 0)
	if err != nil {
		t.Fatal(err)
	}
	all, err := readProblems(bytes.NewReader(buf.Bytes()), tok, 0)
	if err != nil {
		t.Fatal(err)
	}
	fit := 0
	var minHash [][32]byte
	for _, p := range all {
		// The coordinator's own tokenization of the record, uncut.
		ds, err := dataset.Read(context.Background(), strings.NewReader(fmt.Sprintf("{\"question\":%q,\"answer\":%q}\n", p.Question, p.Answer)), tok, dataset.Config{SeqLen: 8192})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(ds.All()[0].Seqs[0].Tokens); n != p.Tokens {
			t.Fatalf("seqLen says %d tokens, the coordinator makes %d", p.Tokens, n)
		}
		if p.Tokens <= maxTok {
			fit++
			minHash = append(minHash, p.Hash)
		}
	}
	if s.Read != 40 || s.Fit != fit || fit == 40 || fit < 10 {
		t.Fatalf("read %d fit %d, want 40 and %d (a mix of lengths)", s.Read, s.Fit, fit)
	}
	if len(s.Val) != 5 || len(s.Train) != fit-5 || len(s.Wide) != 12 {
		t.Fatalf("%d val, %d train, %d wide; want 5, %d, 12", len(s.Val), len(s.Train), len(s.Wide), fit-5)
	}
	held := map[[32]byte]bool{}
	for _, p := range s.Val {
		held[p.Hash] = true
		if p.Tokens > maxTok {
			t.Errorf("held-out problem of %d tokens", p.Tokens)
		}
	}
	for _, h := range minHash {
		// A fitting problem whose hash is below the largest held-out hash
		// must be held out.
		if !held[h] && bytes.Compare(h[:], s.Val[len(s.Val)-1].Hash[:]) < 0 {
			t.Errorf("problem %x not held out though its hash is among the smallest", h[:4])
		}
	}
	for _, p := range append(append([]Problem(nil), s.Train...), s.Wide...) {
		if held[p.Hash] {
			t.Errorf("held-out problem %x is also trained on", p.Hash[:4])
		}
	}
	longWide := 0
	for _, p := range s.Wide {
		if p.Tokens > maxTok {
			longWide++
		}
	}
	if longWide == 0 {
		t.Errorf("the wide set holds no long problem")
	}
	ds, err := toDataset(tok, maxTok, s.Wide, s.Val)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range sequences(ds.Train) {
		if len(e.Tokens) > maxTok {
			t.Errorf("a wide sequence of %d tokens was not cut to %d", len(e.Tokens), maxTok)
		}
	}
	if n := len(sequences(ds.Val)); n != 5 {
		t.Errorf("%d validation sequences, want 5", n)
	}
	if _, err := LoadSplit(path, tok, 10, 5, 0, 12, 0); err == nil {
		t.Errorf("no problem fits 10 tokens, and LoadSplit did not fail")
	}
	// A cap on the training set: the next fitting problems by hash, and a
	// wide set disjoint from it.
	capped, err := LoadSplit(path, tok, maxTok, 5, 4, 12, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(capped.Train) != 4 || !slices.EqualFunc(capped.Train, s.Train[:4], func(a, b Problem) bool { return a.Hash == b.Hash }) {
		t.Errorf("capped training set %d problems, want the first 4 of the uncapped one", len(capped.Train))
	}
	inTrain := map[[32]byte]bool{}
	for _, p := range capped.Train {
		inTrain[p.Hash] = true
	}
	for _, p := range capped.Wide {
		if inTrain[p.Hash] || held[p.Hash] {
			t.Errorf("wide problem %x is also held out or in the training set", p.Hash[:4])
		}
	}
	if len(capped.Wide) != 12 {
		t.Errorf("capped split: %d wide problems, want 12", len(capped.Wide))
	}
	// Unused: every other fitting problem, in none of the sets.
	inWide := map[[32]byte]bool{}
	for _, p := range capped.Wide {
		inWide[p.Hash] = true
	}
	fitWide := 0
	for _, p := range capped.Wide {
		if p.Tokens <= maxTok {
			fitWide++
		}
	}
	if len(capped.Unused) != fit-5-4-fitWide {
		t.Errorf("capped split: %d unused problems, want %d", len(capped.Unused), fit-5-4-fitWide)
	}
	for _, p := range capped.Unused {
		if inTrain[p.Hash] || held[p.Hash] || inWide[p.Hash] || p.Tokens > maxTok {
			t.Errorf("unused problem %x is in a set or does not fit", p.Hash[:4])
		}
	}
	if len(s.Unused) != 0 {
		t.Errorf("uncapped split: %d unused problems, want none (all fitting ones are trained on)", len(s.Unused))
	}
}

func TestNiceTicks(t *testing.T) {
	for _, c := range []struct{ lo, hi float64 }{{0, 1}, {3.2, 8.17}, {0.001, 0.0047}, {-5, 120}, {7, 7}} {
		ticks, tlo, thi := niceTicks(c.lo, c.hi, 6)
		if len(ticks) < 2 || len(ticks) > 13 {
			t.Errorf("%v: %d ticks", c, len(ticks))
		}
		if tlo > c.lo || thi < c.hi || ticks[0] != tlo || math.Abs(ticks[len(ticks)-1]-thi) > 1e-9*math.Max(1, math.Abs(thi)) {
			t.Errorf("%v: ticks %v span [%v, %v], not covering", c, ticks, tlo, thi)
		}
		for i := 1; i < len(ticks); i++ {
			if d := ticks[i] - ticks[i-1]; math.Abs(d-(ticks[1]-ticks[0])) > 1e-9*math.Abs(d) {
				t.Errorf("%v: uneven ticks %v", c, ticks)
			}
		}
	}
}

// svgDoc is the part of an SVG document the tests read.
type svgDoc struct {
	XMLName   xml.Name `xml:"svg"`
	Polylines []struct {
		Points string `xml:"points,attr"`
	} `xml:"polyline"`
	Circles []struct {
		CX float64 `xml:"cx,attr"`
		CY float64 `xml:"cy,attr"`
	} `xml:"circle"`
	Texts []string `xml:"text"`
}

func parseSVG(t *testing.T, data []byte) svgDoc {
	t.Helper()
	var d svgDoc
	if err := xml.Unmarshal(data, &d); err != nil {
		t.Fatalf("SVG does not parse: %v\n%s", err, data)
	}
	return d
}

// points parses a polyline's points.
func points(t *testing.T, s string) [][2]float64 {
	t.Helper()
	var out [][2]float64
	for _, f := range strings.Fields(s) {
		xy := strings.Split(f, ",")
		if len(xy) != 2 {
			t.Fatalf("bad point %q", f)
		}
		x, err1 := strconv.ParseFloat(xy[0], 64)
		y, err2 := strconv.ParseFloat(xy[1], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad point %q", f)
		}
		out = append(out, [2]float64{x, y})
	}
	return out
}

func TestChartSVG(t *testing.T) {
	ch := Chart{Title: "a <title> & more", XLabel: "x", YLabel: "y",
		Series: []Series{
			{Name: "up", X: []float64{0, 1, 2, 3}, Y: []float64{0, 10, 20, 30}, Markers: true, Labels: []string{"a", "b", "", "d"}},
			{Name: "flat", X: []float64{0, 3}, Y: []float64{15, math.NaN()}, Dashed: true},
		},
		HLines: []HLine{{Y: 5, Name: "ref"}}}
	d := parseSVG(t, ch.SVG())
	if len(d.Polylines) != 2 {
		t.Fatalf("%d polylines, want 2", len(d.Polylines))
	}
	up := points(t, d.Polylines[0].Points)
	if len(up) != 4 || len(points(t, d.Polylines[1].Points)) != 1 {
		t.Fatalf("points %v / %q: want 4 and 1 (NaN skipped)", up, d.Polylines[1].Points)
	}
	// The axes span [0, 3] and [0, 30]: the first point is the plot's
	// bottom-left corner, the last its top-right, and y grows upwards.
	want := [][2]float64{{padL, padT + plotH}, {padL + plotW, padT}}
	for i, p := range [][2]float64{up[0], up[3]} {
		if math.Abs(p[0]-want[i][0]) > 0.1 || math.Abs(p[1]-want[i][1]) > 0.1 {
			t.Errorf("point %v, want %v", p, want[i])
		}
	}
	for i := 1; i < len(up); i++ {
		if !(up[i][0] > up[i-1][0] && up[i][1] < up[i-1][1]) {
			t.Errorf("points %v do not rise left to right", up)
		}
	}
	if len(d.Circles) != 4 {
		t.Errorf("%d markers, want 4", len(d.Circles))
	}
	text := strings.Join(d.Texts, "|")
	for _, s := range []string{"a <title> & more", "up", "flat", "ref", "|b|", "|d|"} {
		if !strings.Contains("|"+text+"|", s) {
			t.Errorf("text %q missing from %q", s, text)
		}
	}
}

// TestQuickRun runs every experiment at QuickSizes on GSM8K and the
// embedded base, then --only one of them into the same directory, and
// checks the results, the tables and the plots.
func TestQuickRun(t *testing.T) {
	data := filepath.Join(testenv.Shared(t), "data", "gsm8k", "train.jsonl")
	if _, err := os.Stat(data); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_SHARED", "%s is missing", data)
	}
	m, err := model.Open("tiny", model.OpenOptions{CacheDir: t.TempDir()}) // the small base keeps the test fast
	if err != nil {
		t.Fatal(err)
	}
	base, tok, name := m.Base, m.Tokenizer, m.Name
	defer base.Close()
	mix, err := model.Open("default", model.OpenOptions{CacheDir: t.TempDir()}) // the mixture's second base
	if err != nil {
		t.Fatal(err)
	}
	defer mix.Base.Close()
	out := t.TempDir()
	var log []string
	opt := Options{Data: data, Out: out, Quick: true, BaseName: name, Mix: mix.Base, MixName: mix.Name, Progress: func(s string) { log = append(log, s) }}
	res, err := Run(context.Background(), base, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	sz, s := QuickSizes(), res.Setup
	if s.Read != sz.MaxRecords || s.Val != sz.ValProblems || s.Select != sz.SelectProblems || s.Train != sz.TrainProblems || s.Train+s.Val+s.Select > s.Fit || s.Wide != sz.WideTrain || s.Context != base.Config.MaxPos {
		t.Fatalf("setup %+v does not match the sizes %+v", s, sz)
	}
	ok := func(what string, v float64) {
		t.Helper()
		if !(v > 0) || math.IsInf(v, 0) {
			t.Errorf("%s = %v, want a finite positive loss", what, v)
		}
	}
	ok("base loss", s.BaseLoss)
	// The base's next-token loss on GSM8K answers is near uniform for the
	// Brown-corpus base (ln 4096 = 8.32), but below it.
	if s.BaseLoss > math.Log(float64(s.Vocab)) {
		t.Errorf("base loss %v above uniform", s.BaseLoss)
	}
	checkRun := func(r CarryOnRun) {
		t.Helper()
		ok("val loss", r.ValLoss)
		ok("train loss", r.TrainLoss)
		c := r.Curve
		if len(c.Step) < 2 || c.Step[0] != 0 || c.Step[len(c.Step)-1] != r.Steps {
			t.Errorf("curve %+v: want to run from step 0 to step %d", c, r.Steps)
		}
		// Best-by-validation with α chosen on the validation split (α = 0,
		// the base, is in the grid): nothing on the curve beats the kept one.
		if r.SelectLoss > minOf(c.Loss) || r.BestLoss != minOf(c.Loss[1:]) {
			t.Errorf("run %+v: kept validation loss %v, best seen %v; curve minimum %v", r, r.SelectLoss, r.BestLoss, minOf(c.Loss))
		}
		found := false
		for i, st := range c.Step {
			found = found || st == r.BestStep && c.Loss[i] == r.BestLoss
		}
		if !found && r.BestStep != r.Steps {
			t.Errorf("kept step %d is not the curve's best pass: %+v", r.BestStep, c)
		}
		extra := 0 // the projection and bias of each source after the first
		if len(r.Sources) > 1 {
			extra = (len(r.Sources) - 1) * (s.Dim + 1) * r.Width
		}
		if r.Mix != "" { // the second base's final hidden states
			extra += (mix.Base.Config.Dim + 1) * r.Width
		}
		if r.Params != carryOnShape(s.Dim, s.Vocab, r.Width, r.Layers).NumParams()+extra || r.AdaptorBytes < 4*r.Params {
			t.Errorf("run %+v: params or adaptor size wrong", r)
		}
	}
	if res.Loss == nil || len(res.Loss.Runs) != 3 || res.Loss.BaseLoss != s.BaseLoss {
		t.Fatalf("loss experiment: %+v", res.Loss)
	}
	for _, r := range res.Loss.Runs {
		checkRun(r)
		// q8 barely moves the base's loss.
		if math.Abs(r.BaseLoss-s.BaseLoss) > 0.05 {
			t.Errorf("base through q8 %v, exact %v", r.BaseLoss, s.BaseLoss)
		}
	}
	if c := res.Clock; c == nil || len(c.Methods) != len(ClockKeys) {
		t.Fatalf("clock experiment: %+v", c)
	} else {
		for i, m := range c.Methods {
			ok(m.Name+" loss", m.Loss)
			if m.Key != ClockKeys[i] || m.Budget != sz.ClockSeconds || m.Seed != 1 || m.Steps < 1 || len(m.Curve.Step) < 2 || m.Curve.Seconds[0] != 0 {
				t.Errorf("%s: %+v", m.Name, m)
			}
		}
		cold, cached := c.Methods[0], c.Methods[1]
		// The cold carry-on's clock starts with the embedding, the cached
		// one's with the reads only; both train the reference shape.
		if cold.EmbedSeconds <= 0 || cold.Curve.Seconds[1] < cold.EmbedSeconds+cold.ReadSeconds-1e-9 || cached.EmbedSeconds != 0 ||
			cached.ReadSeconds <= 0 || cached.Curve.Seconds[1] < cached.ReadSeconds-1e-9 || cold.Params != cached.Params {
			t.Errorf("clock: carry-ons' clocks: cold %+v, cached %+v", cold, cached)
		}
		if c.Methods[3].Params != int(base.Config.NumParams()) {
			t.Errorf("clock: the fine-tune trains %d weights, want all %d", c.Methods[3].Params, base.Config.NumParams())
		}
		// LoRA: rank r on 7 projections per block, r·(in+out) each.
		bc := base.Config
		qd, kvd := bc.Heads*bc.HeadDim, bc.KVHeads*bc.HeadDim
		perBlock := sz.LoRARank * ((bc.Dim + qd) + 2*(bc.Dim+kvd) + (qd + bc.Dim) + 2*(bc.Dim+bc.FFN) + (bc.FFN + bc.Dim))
		if c.Methods[2].Params != bc.Layers*perBlock {
			t.Errorf("LoRA trains %d parameters, want %d", c.Methods[2].Params, bc.Layers*perBlock)
		}
	}
	if b := res.Bridge; b == nil || len(b.Rows) != 5 {
		t.Fatalf("bridge experiment: %+v", b)
	} else {
		rel := map[string]float64{}
		for _, r := range b.Rows {
			ok(r.Codec, r.ValLoss)
			codec, err := tensor.ParseCodec(r.Codec)
			if err != nil || r.BytesPerToken != codec.EncodedSize(1, s.Dim) {
				t.Errorf("%s: %d bytes per token", r.Codec, r.BytesPerToken)
			}
			rel[r.Codec] = r.RelError
		}
		if !(rel["bf16"] < 0.01 && rel["bf16"] < rel["q8"] && rel["q8"] < rel["q4"] && rel["q4g64"] < rel["q4"] && rel["q4"] < rel["q2"]) {
			t.Errorf("bridge errors not ordered by bits: %v", rel)
		}
	}
	if sh := res.Shape; sh == nil || len(sh.Runs) != 6 {
		t.Fatalf("shape experiment: %+v", sh)
	} else {
		for i, r := range sh.Runs {
			checkRun(r)
			if i%3 > 0 && r.Params <= sh.Runs[i-1].Params || i >= 3 && r.Params <= sh.Runs[i-3].Params {
				t.Errorf("params do not grow with L and h: %+v", sh.Runs)
			}
		}
	}
	if se := res.Search; se == nil || len(se.Trials) != len(SearchGrid()) || len(SearchGrid()) < 24 || se.EmbedSeconds <= 0 || se.ThreeTrains <= 0 {
		t.Fatalf("search: %+v", se)
	} else {
		pareto, stopped, rungs := 0, 0, rungSteps(sz.SearchSteps)
		for _, tr := range se.Trials {
			if tr.Scored != (tr.Run.Stopped == 0) {
				t.Errorf("search trial scored %v, stopped at %d", tr.Scored, tr.Run.Stopped)
			}
			if tr.Scored {
				ok("search trial", tr.Run.ValLoss)
			}
			if len(tr.Rungs) == 0 || len(tr.Rungs) > len(rungs)-1 {
				t.Fatalf("search trial with %d rung scores, want 1 to %d: %+v", len(tr.Rungs), len(rungs)-1, tr)
			}
			for i, r := range tr.Rungs {
				ok("rung", r.Loss)
				if r.Step != rungs[i] {
					t.Errorf("rung %d at step %d, want %d", i, r.Step, rungs[i])
				}
			}
			if tr.Run.Stopped > 0 {
				stopped++
				if tr.Run.Stopped != tr.Rungs[len(tr.Rungs)-1].Step {
					t.Errorf("search trial stopped at %d, rungs %v", tr.Run.Stopped, tr.Rungs)
				}
			} else if len(tr.Rungs) != len(rungs)-1 {
				t.Errorf("search trial reached the end past %d rungs of %d: %v", len(tr.Rungs), len(rungs)-1, tr.Rungs)
			}
			extra := 0 // a second source's projection and bias
			if len(tr.Sources) > 1 {
				extra = (len(tr.Sources) - 1) * (s.Dim + 1) * tr.Width
			}
			if tr.Run.Steps != sz.SearchSteps || tr.Run.Params != carryOnShape(s.Dim, s.Vocab, tr.Width, tr.Layers).NumParams()+extra {
				t.Errorf("search trial %+v", tr)
			}
			if tr.Pareto {
				pareto++
			}
		}
		if pareto == 0 {
			t.Error("no trial on the Pareto front")
		}
		// 36 trials, η = 3: 12 pass the first rung, 4 the second.
		if want := len(SearchGrid()) - (len(SearchGrid())+8)/9; stopped != want {
			t.Errorf("search: %d trials stopped, want %d", stopped, want)
		}
		if stopped != se.Stopped || !se.EarlyStop || len(se.TrainSeconds) != 3 || se.TrainSteps != sz.Steps {
			t.Errorf("search: %d trials stopped, result says %d (early stop %v); separate trains %v of %d steps", stopped, se.Stopped, se.EarlyStop, se.TrainSeconds, se.TrainSteps)
		}
	}
	// four source sets of the base, the second base, and both seeds of
	// the single source and the mixture of bases.
	if mx := res.Mix; mx == nil || len(mx.Runs) != 7 || mx.Mix != mix.Name {
		t.Fatalf("mix: %+v", mx)
	} else {
		for i, r := range mx.Runs {
			checkRun(r)
			if two := i == 4 || i == 6; two != (r.Mix == mix.Name) {
				t.Errorf("mix run %d: second base %q", i, r.Mix)
			}
		}
		if mx.Runs[4].Seed != 1 || mx.Runs[6].Seed != 2 {
			t.Errorf("mixture of bases: seeds %d and %d, want 1 and 2", mx.Runs[4].Seed, mx.Runs[6].Seed)
		}
		// At inference (both bases run, not the cache) the held-out loss
		// is the cache's, and every problem gets a greedy answer.
		if len(mx.Inference) != 2 || mx.ExactProblems != sz.ExactProblems {
			t.Fatalf("mix at inference: %+v, want the final-only and the two-base carry-on on %d problems", mx.Inference, sz.ExactProblems)
		}
		for i, in := range mx.Inference {
			run := mx.Runs[4*i]
			if in.Sources != mixNames(run.Sources, run.Mix) || in.CachedLoss != run.ValLoss {
				t.Errorf("mix at inference %d: %q with cached loss %v, want run %d's %q, %v", i, in.Sources, in.CachedLoss, 4*i, mixNames(run.Sources, run.Mix), run.ValLoss)
			}
			if math.Abs(in.Loss-in.CachedLoss) > 1e-4*in.CachedLoss {
				t.Errorf("%s: held-out loss %.6f at inference, %.6f on the cache", in.Sources, in.Loss, in.CachedLoss)
			}
			if in.Exact.Correct > in.Exact.Formatted || in.Exact.MeanTokens <= 0 || in.Exact.MeanTokens > float64(sz.ExactMaxTokens) {
				t.Errorf("%s: exact match %+v", in.Sources, in.Exact)
			}
		}
	}
	// base alone, three carry-ons (h=64 on two training sets, h=256), and
	// the clock's LoRA and full fine-tune.
	// (and the h=256 carry-on trained ExactSteps steps), on the test split
	// and then problems no run trains on; the one-step diagnostic.
	if e := res.Exact; e == nil || len(e.Rows) != 7 || e.Problems != sz.ExactProblems || e.FromTest != sz.ValProblems || sz.ExactProblems <= sz.ValProblems ||
		e.OneStep == nil || e.OneStepProblems != oneStepProblems {
		t.Fatalf("exact experiment: %+v", e)
	} else {
		for _, r := range append(e.Rows, *e.OneStep) {
			n := e.Problems
			if r.System == e.OneStep.System {
				n = e.OneStepProblems
			}
			if r.Correct > r.Formatted || r.Formatted > n || r.MeanTokens > float64(sz.ExactMaxTokens)+1e-9 || r.Stopped+r.LineEnded > n || r.CalcsRight > r.Calcs {
				t.Errorf("exact: %+v", r)
			}
		}
		if !strings.Contains(e.Rows[4].System, fmt.Sprintf("problems, %d steps", sz.ExactSteps)) || e.Long == nil || e.Long.Steps != sz.ExactSteps || e.Long.Width != 256 {
			t.Errorf("exact: row 4 is %q, want the h=256 carry-on of %d steps: %+v", e.Rows[4].System, sz.ExactSteps, e.Long)
		} else {
			checkRun(*e.Long)
		}
	}

	// What was written is what was returned.
	js, err := os.ReadFile(filepath.Join(out, "experiments.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, res) {
		t.Errorf("experiments.json does not round-trip the results")
	}
	md, err := os.ReadFile(filepath.Join(out, "experiments-results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, ch := range Charts(res) {
		if !bytes.Contains(md, []byte("![](img/"+name+")")) {
			t.Errorf("the tables do not show %s", name)
		}
		svg, err := os.ReadFile(filepath.Join(out, "img", name))
		if err != nil {
			t.Fatal(err)
		}
		d := parseSVG(t, svg)
		var lines []Series
		for _, sr := range ch.Series {
			if !sr.NoLine {
				lines = append(lines, sr)
			}
		}
		if len(d.Polylines) != len(lines) {
			t.Errorf("%s: %d polylines for %d line series", name, len(d.Polylines), len(lines))
		}
		for i, pl := range d.Polylines {
			pts := points(t, pl.Points)
			if len(pts) != len(lines[i].X) {
				t.Errorf("%s: series %q has %d points, the plot %d", name, lines[i].Name, len(lines[i].X), len(pts))
			}
			for _, p := range pts {
				// A chart with a cropped y axis (YMin/YMax) clips its lines
				// to the plot: only x must stay inside then.
				cropped := ch.YMax > ch.YMin
				if p[0] < 0 || p[0] > svgW || !cropped && (p[1] < 0 || p[1] > svgH) {
					t.Errorf("%s: point %v outside the picture", name, p)
				}
			}
		}
	}
	if len(log) == 0 {
		t.Errorf("no progress reported")
	}

	// Every section records the sizes it ran with.
	for _, n := range Names {
		if rec, ok := res.Sections[n]; !ok || !reflect.DeepEqual(rec.Sizes, sz) || rec.Seconds <= 0 || rec.Date == "" {
			t.Errorf("section %s: record %+v, want the run's sizes", n, rec)
		}
	}

	// --only exact keeps the other experiments' results and records, and
	// records its own sizes.
	opt.Only = "exact"
	sz2 := sz
	sz2.ExactProblems++
	opt.Sizes = &sz2
	res2, err := Run(context.Background(), base, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(res2.Loss, res.Loss) || !reflect.DeepEqual(res2.Shape, res.Shape) || res2.Exact == nil || res2.Exact.Problems != sz2.ExactProblems {
		t.Errorf("--only exact lost the other sections")
	}
	for _, n := range Names {
		want := res.Sections[n]
		if n == "exact" {
			want.Sizes = sz2
		}
		if got := res2.Sections[n]; !reflect.DeepEqual(got.Sizes, want.Sizes) || n != "exact" && !reflect.DeepEqual(got, want) {
			t.Errorf("after --only exact, section %s records %+v, want %+v", n, got, want)
		}
	}

	// --only clock with some methods and another seed adds their entries
	// and keeps the rest; the same run again replaces its own.
	opt.Only = "clock"
	sz3 := sz
	sz3.ClockSeed, sz3.ClockMethods = 2, []string{"cached", "scratch"}
	opt.Sizes = &sz3
	for range 2 {
		res3, err := Run(context.Background(), base, tok, opt)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, m := range res3.Clock.Methods {
			keys = append(keys, fmt.Sprintf("%s/%d", m.Key, m.Seed))
		}
		if want := []string{"cold/1", "cached/1", "cached/2", "lora/1", "finetune/1", "scratch/1", "scratch/2"}; !reflect.DeepEqual(keys, want) {
			t.Errorf("clock methods after --only clock with seed 2: %v, want %v", keys, want)
		}
		if !reflect.DeepEqual(res3.Clock.Methods[0], res.Clock.Methods[0]) || !reflect.DeepEqual(res3.Exact, res2.Exact) {
			t.Errorf("--only clock changed another method's entry or another section")
		}
	}
	sz3.ClockMethods = []string{"nonsense"}
	if _, err := Run(context.Background(), base, tok, opt); err == nil {
		t.Errorf("an unknown clock method was accepted")
	}
	opt.Sizes = nil
	opt.Only = "nonsense"
	if _, err := Run(context.Background(), base, tok, opt); err == nil {
		t.Errorf("an unknown experiment name was accepted")
	}
}

// TestHalving: the rungs of successive halving are at steps/9, steps/3
// and steps (rounded up, distinct), and a rung promotes the ⌈n/3⌉ lowest
// losses, lowest first.
func TestHalving(t *testing.T) {
	for steps, want := range map[int]string{40: "[5 14 40]", 100: "[12 34 100]", 4: "[1 2 4]", 2: "[1 2]", 1: "[1]"} {
		if got := fmt.Sprint(rungSteps(steps)); got != want {
			t.Errorf("rungSteps(%d) = %s, want %s", steps, got, want)
		}
	}
	for _, c := range []struct {
		losses []float64
		want   string
	}{{[]float64{5, 1, 4, 2, 3, 0.5}, "[5 1]"}, {[]float64{3, 2, 1, 2}, "[2 1]"}, {[]float64{7}, "[0]"}, {[]float64{2, 2, 2}, "[0]"}} {
		if got := fmt.Sprint(promote(c.losses)); got != c.want {
			t.Errorf("promote(%v) = %s, want %s", c.losses, got, c.want)
		}
	}
}

func TestAnswerLineEnded(t *testing.T) {
	for text, want := range map[string]bool{
		"3+4 = <<3+4=7>>7":             false,
		"3+4 = <<3+4=7>>7\n#### 7":     false, // the number may go on
		"3+4 = <<3+4=7>>7\n#### 7\n":   true,
		"#### 12\n\nQuestion: Tom has": true,
		"a\nb\n":                       false,
	} {
		if got := answerLineEnded(text); got != want {
			t.Errorf("answerLineEnded(%q) = %v, want %v", text, got, want)
		}
	}
}

func TestCalcsRight(t *testing.T) {
	for text, want := range map[string][2]int{
		"She has 7+1 = <<7+1=8>>8 cookies.\nEach has 8/2 = <<8/2=4>>4.\n#### 4": {2, 2},
		"13*3 = <<12*3=20>>20 pages, <<22-1=21>>21, <<7/2=3>>3":                 {3, 1},
		"<<1*1=1=1>>10 and <<1*= <120*1=12>>10 and no calculation":              {0, 0},
		"<<5/0=0>> <<30-45=15>>": {2, 0},
	} {
		n, right := calcsRight(text)
		if n != want[0] || right != want[1] {
			t.Errorf("calcsRight(%q) = %d, %d; want %d, %d", text, n, right, want[0], want[1])
		}
	}
}
