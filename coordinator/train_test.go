package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"carryon/carryon"
	"carryon/dataset"
	"carryon/model"
	"carryon/swarm"
	"carryon/tokenizer"
)

// testBase is a tiny random qwen2 over the byte vocabulary.
func testBase(t testing.TB) *model.Base {
	t.Helper()
	cfg := model.DemoConfig()
	cfg.Dim, cfg.Layers, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.FFN, cfg.MaxPos = 32, 1, 2, 1, 16, 64, 128
	b, err := model.NewRandomBase(cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	b.WeightsHash = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"
	return b
}

// testData is question/answer JSONL of n arithmetic problems.
func testData(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		x, y := i%17, (i*7)%13
		fmt.Fprintf(&b, `{"question": "%d+%d", "answer": "%d"}`+"\n", x, y, x+y)
	}
	return b.Bytes()
}

func testDataset(t testing.TB) *dataset.Set {
	t.Helper()
	ds, err := dataset.Read(context.Background(), bytes.NewReader(testData(48)), tokenizer.ByteTokenizer{}, dataset.Config{SeqLen: 32, SeqsPerChunk: 4, ValPercent: 20})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Train) == 0 || len(ds.Val) == 0 {
		t.Fatalf("test data set has %d training and %d validation chunks", len(ds.Train), len(ds.Val))
	}
	return ds
}

// testTrainConfig is a small carry-on trained for steps steps.
func testTrainConfig(steps, every int) TrainConfig {
	co := carryon.DefaultConfig(32, tokenizer.ByteTokVocabSize)
	co.Width, co.Layers, co.Heads, co.FFN = 16, 1, 2, 32
	return TrainConfig{CarryOn: co, Steps: steps, BatchSeqs: 4, EvalEvery: 5, CheckpointEvery: every,
		Optim: carryon.OptimConfig{LR: 1e-2}}
}

// trainIn trains a carry-on on ds with a new test coordinator on dir
// (no hooks) and fails t on an error.
func trainIn(t testing.TB, ctx context.Context, dir string, base *model.Base, ds *dataset.Set, tc TrainConfig) *TrainResult {
	t.Helper()
	res, err := newTestCoordinator(t, dir, base, ds, tc).Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// newTestCoordinator opens a coordinator on dir (no swarm topics) with the
// cache filled: every chunk of ds embedded here with the base, as a node
// would.
func newTestCoordinator(t testing.TB, dir string, base *model.Base, ds *dataset.Set, tc TrainConfig) *Coordinator {
	t.Helper()
	h, err := swarm.NewHost(swarm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	c, err := New(h, nil, base, Config{CacheDir: dir, Train: tc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, ch := range ds.All() {
		if c.cached(ch) {
			continue
		}
		for _, l := range c.cfg.Layers {
			var es []Entry
			for _, sq := range ch.Seqs {
				hs, err := base.Forward(sq.Tokens, []int{l})
				if err != nil {
					t.Fatal(err)
				}
				es = append(es, Entry{Rows: len(sq.Tokens), Dim: base.Config.Dim,
					Data: c.codec.Encode(nil, hs[0], len(sq.Tokens), base.Config.Dim)})
			}
			if err := c.cache.Put(c.key(l, ch), es); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c
}

func adaptorBytes(t *testing.T, res *TrainResult) []byte {
	t.Helper()
	b, err := res.CarryOn.Marshal(res.Meta)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameBits reports the first index where a and b differ bitwise, or -1.
func sameBits(a, b []float32) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func checkpointSteps(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "checkpoints", "*", "*.ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		b := strings.TrimSuffix(filepath.Base(n), ".ckpt")
		out = append(out, b[strings.LastIndexByte(b, '-')+1:])
	}
	return out
}

// checkpointAt returns the path and bytes of dir's one checkpoint of step.
func checkpointAt(t *testing.T, dir string, step int) (string, []byte) {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "checkpoints", "*", fmt.Sprintf("*-%09d.ckpt", step)))
	if len(names) != 1 {
		t.Fatalf("checkpoints of step %d: %v, want one", step, names)
	}
	raw, err := os.ReadFile(names[0])
	if err != nil {
		t.Fatal(err)
	}
	return names[0], raw
}

// TestTrainResumeBitIdentical trains 20 steps straight, and 10 steps that
// are interrupted and then resumed in a fresh coordinator for the other 10:
// parameters, losses and the adaptor's bytes must be equal.
func TestTrainResumeBitIdentical(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(20, 5)
	ctx := context.Background()

	dirA := t.TempDir()
	straight := trainIn(t, ctx, dirA, base, ds, tc)
	if straight.Resumed != 0 || len(straight.Steps) != 20 {
		t.Fatalf("straight run: resumed %d, %d steps", straight.Resumed, len(straight.Steps))
	}
	if got := checkpointSteps(t, dirA); strings.Join(got, ",") != "000000015,000000020" {
		t.Errorf("checkpoints kept: %v, want the last two (15, 20)", got)
	}

	dirB := t.TempDir()
	cctx, cancel := context.WithCancel(ctx)
	var saved []int
	_, err := newTestCoordinator(t, dirB, base, ds, tc).Train(cctx, ds, Hooks{
		Step: func(s StepInfo) {
			if s.Step == 10 {
				cancel()
			}
		},
		Checkpoint: func(step int) { saved = append(saved, step) },
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: err %v, want context.Canceled", err)
	}
	if fmt.Sprint(saved) != "[5 10]" {
		t.Fatalf("checkpoints before the interruption: %v, want [5 10]", saved)
	}
	resumedAt := -1
	resumed, err := newTestCoordinator(t, dirB, base, ds, tc).Train(ctx, ds, Hooks{Resumed: func(s int) { resumedAt = s }})
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Resumed != 10 || resumedAt != 10 || len(resumed.Steps) != 10 || resumed.Steps[0].Step != 11 {
		t.Fatalf("resumed run: Resumed %d, hook %d, %d steps", resumed.Resumed, resumedAt, len(resumed.Steps))
	}
	if i := sameBits(straight.CarryOn.Params, resumed.CarryOn.Params); i >= 0 {
		t.Fatalf("parameter %d differs: straight %v, resumed %v", i, straight.CarryOn.Params[i], resumed.CarryOn.Params[i])
	}
	for i, s := range resumed.Steps {
		if w := straight.Steps[10+i]; s.Loss != w.Loss || s.GradNorm != w.GradNorm || s.LR != w.LR {
			t.Errorf("step %d: resumed loss %v norm %v lr %v, straight %v %v %v", s.Step, s.Loss, s.GradNorm, s.LR, w.Loss, w.GradNorm, w.LR)
		}
	}
	if fmt.Sprint(resumed.Evals) != fmt.Sprint(straight.Evals) {
		t.Errorf("evals differ:\nresumed  %v\nstraight %v", resumed.Evals, straight.Evals)
	}
	if !bytes.Equal(adaptorBytes(t, straight), adaptorBytes(t, resumed)) {
		t.Error("the resumed run's adaptor differs from the straight run's")
	}
	if straight.Steps[19].Loss >= straight.Steps[0].Loss {
		t.Errorf("training did not lower the loss: %v → %v", straight.Steps[0].Loss, straight.Steps[19].Loss)
	}

	// A finished run restarted resumes at its end: no step, the same adaptor.
	again := trainIn(t, ctx, dirA, base, ds, tc)
	if again.Resumed != 20 || len(again.Steps) != 0 || !bytes.Equal(adaptorBytes(t, again), adaptorBytes(t, straight)) {
		t.Errorf("restarted finished run: resumed %d, %d steps, same adaptor %v", again.Resumed, len(again.Steps),
			bytes.Equal(adaptorBytes(t, again), adaptorBytes(t, straight)))
	}
}

// TestTrainResumeAtEndReportsValLoss: a finished run restarted takes no
// step but still reports its validation loss: the checkpoint's passes go
// to Hooks.Eval (marked Restored), so the dashboard and `carryon status`
// show val_loss, and the adaptor's metrics keep it. A checkpoint without
// the final pass (as an older carryon wrote) gets it computed afresh,
// equal to the original.
func TestTrainResumeAtEndReportsValLoss(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(10, 5)
	ctx := context.Background()
	dir := t.TempDir()
	straight := trainIn(t, ctx, dir, base, ds, tc)
	final := straight.Evals[len(straight.Evals)-1]
	if final.Step != 10 || !(final.Loss > 0) || straight.Meta.Metrics["val_loss"] != final.Loss {
		t.Fatalf("straight run: final eval %+v, val_loss %v", final, straight.Meta.Metrics["val_loss"])
	}

	c := newTestCoordinator(t, dir, base, ds, tc)
	d, err := NewDashboard(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var got []EvalInfo
	again, err := c.Train(ctx, ds, d.Hooks(Hooks{Eval: func(e EvalInfo) { got = append(got, e) }}))
	if err != nil {
		t.Fatal(err)
	}
	d.Finish(nil)
	if again.Resumed != 10 || len(again.Steps) != 0 {
		t.Fatalf("restart: resumed %d, %d steps", again.Resumed, len(again.Steps))
	}
	if len(got) != len(straight.Evals) || !got[len(got)-1].Restored || got[len(got)-1].Loss != final.Loss {
		t.Errorf("Eval hook after the restart: %+v, want the %d passes of the checkpoint, restored", got, len(straight.Evals))
	}
	if again.Meta.Metrics["val_loss"] != final.Loss || again.Meta.Metrics["val_base_loss"] != final.BaseLoss {
		t.Errorf("restart's metrics %v, want val_loss %v", again.Meta.Metrics, final.Loss)
	}
	s := d.Snapshot()
	if s.Training.ValLoss == nil || *s.Training.ValLoss != final.Loss {
		t.Errorf("dashboard's val_loss after the restart: %v, want %v", s.Training.ValLoss, final.Loss)
	}
	var b bytes.Buffer
	WriteStatusText(&b, &s, time.Now())
	if want := fmt.Sprintf("no step left to take; validation %.4f", final.Loss); !strings.Contains(b.String(), want) {
		t.Errorf("status text lacks %q:\n%s", want, b.String())
	}

	// The final checkpoint rewritten without its validation passes.
	ckPath, raw := checkpointAt(t, dir, 10)
	co, err := carryon.New(straight.CarryOn.Config, tc.Seed)
	if err != nil {
		t.Fatal(err)
	}
	opt, err := carryon.NewOptimizer(co, c.cfg.Train.Optim)
	if err != nil {
		t.Fatal(err)
	}
	ck, err := LoadCheckpoint(raw, co, opt)
	if err != nil {
		t.Fatal(err)
	}
	ck.Evals = nil
	if raw, err = MarshalCheckpoint(ck, co, opt); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ckPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	got = nil
	old, err := newTestCoordinator(t, dir, base, ds, tc).Train(ctx, ds, Hooks{Eval: func(e EvalInfo) { got = append(got, e) }})
	if err != nil {
		t.Fatal(err)
	}
	if old.Resumed != 10 || len(got) != 1 || got[0].Restored || got[0].Step != 10 || got[0].Loss != final.Loss ||
		old.Meta.Metrics["val_loss"] != final.Loss {
		t.Errorf("resume from a checkpoint without evals: resumed %d, evals %+v, val_loss %v; want one fresh pass at step 10 of loss %v",
			old.Resumed, got, old.Meta.Metrics["val_loss"], final.Loss)
	}
}

// TestTrainResumeSkipsBadCheckpoints: an unreadable newest checkpoint falls
// back to the older one (still bit-identical in the end), and a run with
// another seed does not resume from this run's checkpoints.
func TestTrainResumeSkipsBadCheckpoints(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(12, 4)
	ctx := context.Background()
	dir := t.TempDir()
	straight := trainIn(t, ctx, dir, base, ds, tc)
	ckPath, b := checkpointAt(t, dir, 12)
	if err := os.WriteFile(ckPath, b[:len(b)/2], 0o644); err != nil { // a torn file
		t.Fatal(err)
	}
	res := trainIn(t, ctx, dir, base, ds, tc)
	if res.Resumed != 8 || len(res.Steps) != 4 {
		t.Fatalf("resumed at %d with %d steps, want 8 and 4", res.Resumed, len(res.Steps))
	}
	if i := sameBits(straight.CarryOn.Params, res.CarryOn.Params); i >= 0 {
		t.Fatalf("parameter %d differs after resuming from the older checkpoint", i)
	}

	other := tc
	other.Seed = 2
	res = trainIn(t, ctx, dir, base, ds, other)
	if res.Resumed != 0 || len(res.Steps) != 12 {
		t.Fatalf("a run with another seed resumed at %d", res.Resumed)
	}
	if sameBits(straight.CarryOn.Params, res.CarryOn.Params) < 0 {
		t.Fatal("another seed gave the same parameters")
	}
}

// TestEpochOrder checks that each epoch's order is a permutation that
// depends on the seed and the epoch, and that the order is a pure function
// of (seed, epoch, n).
func TestEpochOrder(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100} {
		p := epochOrder(3, 1, n)
		seen := make([]bool, n)
		for _, i := range p {
			if i < 0 || i >= n || seen[i] {
				t.Fatalf("n=%d: %v is not a permutation", n, p)
			}
			seen[i] = true
		}
		if fmt.Sprint(p) != fmt.Sprint(epochOrder(3, 1, n)) {
			t.Fatalf("n=%d: order is not reproducible", n)
		}
	}
	a, b, c := epochOrder(3, 1, 100), epochOrder(3, 2, 100), epochOrder(4, 1, 100)
	if fmt.Sprint(a) == fmt.Sprint(b) || fmt.Sprint(a) == fmt.Sprint(c) {
		t.Error("the order does not change with the epoch or the seed")
	}
}

// TestTrainKeepBestAndAlpha: with KeepBest the result holds the weights of
// the validation pass with the lowest loss (Evaluate on the same split
// reproduces that loss exactly), and AlphaGrid leaves the carry-on at the
// α with the lowest validation loss.
func TestTrainKeepBestAndAlpha(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(150, -1)
	tc.CarryOn.Width, tc.CarryOn.FFN = 32, 96
	tc.Optim.LR = 3e-2 // 150 steps on 38 problems: the carry-on overfits, so the best pass is not the last
	tc.KeepBest = true
	ctx := context.Background()
	c := newTestCoordinator(t, t.TempDir(), base, ds, tc)
	res, err := c.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	best := res.Evals[0]
	for _, e := range res.Evals {
		if e.Loss < best.Loss {
			best = e
		}
	}
	last := res.Evals[len(res.Evals)-1]
	if best.Step == last.Step {
		t.Fatalf("the last pass (%v) is the best of %v: the test needs a run whose loss rises again", last, res.Evals)
	}
	got, err := c.Evaluate(ds, res.CarryOn)
	if err != nil {
		t.Fatal(err)
	}
	if res.Best != best.Step || res.Meta.Step != best.Step || got.Loss != best.Loss || res.Meta.Metrics["val_loss"] != best.Loss {
		t.Fatalf("kept step %d (meta %d), evaluated loss %v, meta val_loss %v; want step %d, loss %v",
			res.Best, res.Meta.Step, got.Loss, res.Meta.Metrics["val_loss"], best.Step, best.Loss)
	}

	// α on validation: the chosen α scores the lowest of the grid.
	tc.KeepBest, tc.AlphaGrid = false, []float32{0, 0.5, 1, 1.5}
	c2 := newTestCoordinator(t, t.TempDir(), base, ds, tc)
	res2, err := c2.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Best != tc.Steps {
		t.Errorf("without KeepBest the result is step %d, want the last, %d", res2.Best, tc.Steps)
	}
	chosen := res2.CarryOn.Config.Alpha
	min := math.Inf(1)
	var argmin float32
	for _, a := range tc.AlphaGrid {
		res2.CarryOn.Config.Alpha = a
		ev, err := c2.Evaluate(ds, res2.CarryOn)
		if err != nil {
			t.Fatal(err)
		}
		if a == 0 && ev.Loss != ev.BaseLoss {
			t.Errorf("α = 0: loss %v, base loss %v: want equal", ev.Loss, ev.BaseLoss)
		}
		if ev.Loss < min {
			min, argmin = ev.Loss, a
		}
	}
	if chosen != argmin || res2.Meta.Metrics["val_loss"] != min {
		t.Errorf("chose α %v (val_loss %v), want %v (%v)", chosen, res2.Meta.Metrics["val_loss"], argmin, min)
	}
}

// TestTrainStopAndGateBias: Hooks.Stop ends training after the validation
// pass it answers true to, with the weights of that step; GateBias sets
// the gate's initial bias (and so the run key); Validate bounds it.
func TestTrainStopAndGateBias(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(30, -1)
	ctx := context.Background()
	c := newTestCoordinator(t, t.TempDir(), base, ds, tc)
	passes := 0
	res, err := c.Train(ctx, ds, Hooks{Stop: func(e EvalInfo) bool { passes++; return passes == 2 }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Stopped != 2*tc.EvalEvery || len(res.Steps) != res.Stopped || res.Meta.Step != res.Stopped || res.Best != res.Stopped {
		t.Fatalf("stopped at %d after %d steps (meta step %d, best %d); want step %d", res.Stopped, len(res.Steps), res.Meta.Step, res.Best, 2*tc.EvalEvery)
	}
	ev, err := c.Evaluate(ds, res.CarryOn)
	if err != nil {
		t.Fatal(err)
	}
	if last := res.Evals[len(res.Evals)-1]; last.Step != res.Stopped || ev.Loss != last.Loss {
		t.Fatalf("the stopped carry-on scores %v, its last pass (step %d) %v", ev.Loss, last.Step, last.Loss)
	}
	full, err := c.Train(ctx, ds, Hooks{Stop: func(EvalInfo) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	if full.Stopped != 0 || len(full.Steps) != tc.Steps {
		t.Fatalf("a Stop that never says stop ended at %d after %d steps", full.Stopped, len(full.Steps))
	}

	tc.Steps, tc.Optim.LR = 1, 1e-6
	for _, bias := range []float32{0, -3, 2} {
		tc.GateBias = bias
		c := newTestCoordinator(t, t.TempDir(), base, ds, tc)
		res, err := c.Train(ctx, ds, Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range res.CarryOn.Weights.GateBias {
			if math.Abs(float64(b-bias)) > 1e-3 {
				t.Fatalf("GateBias %v: b_g holds %v after one step at LR 1e-6", bias, b)
			}
		}
	}
	k0, err := c.runKey(ds, res.CarryOn.Config, "")
	if err != nil {
		t.Fatal(err)
	}
	c.cfg.Train.GateBias = 1
	k1, _ := c.runKey(ds, res.CarryOn.Config, "")
	if k0 == k1 {
		t.Error("the run key does not change with GateBias: a run could resume another's checkpoint")
	}
	for _, bad := range []float32{21, -21, float32(math.NaN())} {
		cfg := Config{CacheDir: t.TempDir(), Train: TrainConfig{GateBias: bad}}
		if err := cfg.Validate(); err == nil {
			t.Errorf("GateBias %v: Validate accepted it", bad)
		}
	}
}

// TestTrainPauseResumes: a run paused by Hooks.Pause (at steps 3 and 9,
// between validation passes) is checkpointed there, takes no validation
// pass or α grid, and resumed twice ends bit-identical to a straight run.
func TestTrainPauseResumes(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(12, 100) // checkpoints only at a pause and at the end
	tc.KeepBest, tc.AlphaGrid = true, []float32{0, 1, 1.5}
	ctx := context.Background()
	straight := trainIn(t, ctx, t.TempDir(), base, ds, tc)
	dir := t.TempDir()
	var res *TrainResult
	var err error
	for _, at := range []int{3, 9, 0} {
		var saved []int
		res, err = newTestCoordinator(t, dir, base, ds, tc).Train(ctx, ds, Hooks{
			Pause:      func(step int) bool { return step == at },
			Checkpoint: func(step int) { saved = append(saved, step) },
		})
		if err != nil {
			t.Fatal(err)
		}
		if at == 0 {
			break
		}
		if res.Stopped != at || res.Steps[len(res.Steps)-1].Step != at || fmt.Sprint(saved) != fmt.Sprint([]int{at}) || res.Timing.Alpha != 0 {
			t.Fatalf("paused at %d: stopped %d, last step %d, checkpoints %v, α grid %v", at, res.Stopped, res.Steps[len(res.Steps)-1].Step, saved, res.Timing.Alpha)
		}
		for _, e := range res.Evals {
			if e.Step > at || e.Step%tc.EvalEvery != 0 {
				t.Fatalf("paused at %d: a validation pass at step %d", at, e.Step)
			}
		}
	}
	if res.Resumed != 9 || res.Stopped != 0 || res.CarryOn.Config.Alpha != straight.CarryOn.Config.Alpha {
		t.Fatalf("last part: resumed at %d, stopped %d, α %v (straight %v)", res.Resumed, res.Stopped, res.CarryOn.Config.Alpha, straight.CarryOn.Config.Alpha)
	}
	if i := sameBits(straight.CarryOn.Params, res.CarryOn.Params); i >= 0 {
		t.Fatalf("parameter %d differs: straight %v, paused twice %v", i, straight.CarryOn.Params[i], res.CarryOn.Params[i])
	}
	if fmt.Sprint(res.Evals) != fmt.Sprint(straight.Evals) {
		t.Errorf("evals differ:\npaused   %v\nstraight %v", res.Evals, straight.Evals)
	}
}

// TestTrainShareReads: with Config.ShareReads, the cache items a Train
// reads stay in the memory the process's coordinators on the cache share,
// and a second coordinator's Train, served from it, equals one without.
func TestTrainShareReads(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(6, -1)
	ctx := context.Background()
	dir := t.TempDir()
	plain := trainIn(t, ctx, dir, base, ds, tc)
	a, b := newTestCoordinator(t, dir, base, ds, tc), newTestCoordinator(t, dir, base, ds, tc)
	if a.state != b.state {
		t.Fatal("two coordinators of one process on one cache do not share the state store")
	}
	count := func() (n int) {
		a.state.reads.Range(func(any, any) bool { n++; return true })
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("%d shared reads without ShareReads", n)
	}
	a.cfg.ShareReads, b.cfg.ShareReads = true, true
	if _, err := a.Train(ctx, ds, Hooks{}); err != nil {
		t.Fatal(err)
	}
	if n, want := count(), len(ds.All())*len(a.cfg.Layers); n != want {
		t.Fatalf("%d cache items shared after a Train, want %d (every chunk, every layer)", n, want)
	}
	shared, err := b.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if i := sameBits(plain.CarryOn.Params, shared.CarryOn.Params); i >= 0 {
		t.Fatalf("parameter %d differs: from the store %v, from shared memory %v", i, plain.CarryOn.Params[i], shared.CarryOn.Params[i])
	}
}

// TestTrainResumeKeepsBest: with KeepBest, a run interrupted after its
// best validation pass and resumed from a checkpoint still keeps that pass
// (the checkpoint carries its parameters, step and loss): the same step,
// loss and adaptor bytes as the uninterrupted run.
func TestTrainResumeKeepsBest(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	tc := testTrainConfig(150, 10)
	tc.CarryOn.Width, tc.CarryOn.FFN = 32, 96
	tc.Optim.LR = 3e-2 // overfits: the best pass is not the last (as in TestTrainKeepBestAndAlpha)
	tc.KeepBest = true
	ctx := context.Background()
	straight := trainIn(t, ctx, t.TempDir(), base, ds, tc)
	// Interrupt at the first checkpoint after the best pass, plus one
	// checkpoint, so that the resumed run has passes of its own.
	stop := (straight.Best/tc.CheckpointEvery + 2) * tc.CheckpointEvery
	if straight.Best == tc.Steps || stop >= tc.Steps {
		t.Fatalf("best pass at step %d of %d: the test needs one well before the end", straight.Best, tc.Steps)
	}
	dir := t.TempDir()
	cctx, cancel := context.WithCancel(ctx)
	_, err := newTestCoordinator(t, dir, base, ds, tc).Train(cctx, ds, Hooks{Checkpoint: func(step int) {
		if step == stop {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run: err %v, want context.Canceled", err)
	}
	resumed := trainIn(t, ctx, dir, base, ds, tc)
	if resumed.Resumed != stop {
		t.Fatalf("resumed at %d, want %d", resumed.Resumed, stop)
	}
	if resumed.Best != straight.Best || resumed.Meta.Metrics["val_loss"] != straight.Meta.Metrics["val_loss"] {
		t.Fatalf("resumed run kept step %d (val_loss %v), the uninterrupted run step %d (%v)",
			resumed.Best, resumed.Meta.Metrics["val_loss"], straight.Best, straight.Meta.Metrics["val_loss"])
	}
	if !bytes.Equal(adaptorBytes(t, straight), adaptorBytes(t, resumed)) {
		t.Error("the resumed run's adaptor differs from the uninterrupted run's")
	}
	// Restarted once finished: no step to take, the same kept pass.
	again := trainIn(t, ctx, dir, base, ds, tc)
	if again.Best != straight.Best || !bytes.Equal(adaptorBytes(t, straight), adaptorBytes(t, again)) {
		t.Errorf("restarted finished run kept step %d, want %d (same adaptor %v)", again.Best, straight.Best,
			bytes.Equal(adaptorBytes(t, straight), adaptorBytes(t, again)))
	}
}

// TestBaseLossShared: the base-alone loss of a split is measured once per
// cache and process: a second coordinator on the same cache, training
// another shape, reads the first one's (what a search's trials share), and
// it is the value a fresh measurement gives.
func TestBaseLossShared(t *testing.T) {
	base, ds := testBase(t), testDataset(t)
	dir := t.TempDir()
	ctx := context.Background()
	a := newTestCoordinator(t, dir, base, ds, testTrainConfig(5, -1))
	ra, err := a.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	key := a.baseLossKey(ds.Val, "")
	v, ok := a.state.baseLosses.Load(key)
	if !ok || v.(float64) != ra.Evals[0].BaseLoss {
		t.Fatalf("memo holds %v (%v), the run measured %v", v, ok, ra.Evals[0].BaseLoss)
	}
	if other := a.baseLossKey(ds.Train, ""); other == key || a.baseLossKey(ds.Val, "parent") == key {
		t.Fatal("another split or parent shares the validation split's key")
	}
	tc := testTrainConfig(5, -1)
	tc.CarryOn = tc.CarryOn.WithWidth(32)
	b := newTestCoordinator(t, dir, base, ds, tc)
	a.state.baseLosses.Store(key, 1.25) // what b reads if it shares the memo
	rb, err := b.Train(ctx, ds, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if rb.Evals[0].BaseLoss != 1.25 {
		t.Fatalf("second coordinator measured the base-alone loss again (%v)", rb.Evals[0].BaseLoss)
	}
	a.state.baseLosses.Delete(key)
	ev, err := b.Evaluate(ds, rb.CarryOn)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ev.BaseLoss-ra.Evals[0].BaseLoss) > 1e-12 {
		t.Fatalf("fresh base-alone loss %v, first run's %v", ev.BaseLoss, ra.Evals[0].BaseLoss)
	}
}
