package coordinator

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"carryon/node"
	"carryon/tensor"
)

// encodeRows makes a one-layer, one-sequence result of x: (rows, d).
func encodeRows(c tensor.Codec, x []float32, rows, d int) [][]Entry {
	return [][]Entry{{{Rows: rows, Dim: d, Data: c.Encode(nil, x, rows, d)}}}
}

// TestCompareRule checks the verification rule on hidden-state-like rows
// for several codecs: honest re-computations on other kernels (relative
// float noise 1e-6 .. 1e-3 before quantization, which flips quantization
// levels) agree; perturbed (5%), rescaled, garbage or locally edited
// results disagree.
func TestCompareRule(t *testing.T) {
	const rows, d = 64, 128
	kappa := 1e-3
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]int32, rows)
	for i := range ids {
		ids[i] = int32(rng.IntN(256))
	}
	x := honestHidden(ids, -1, d)
	perturb := func(f func(i int, v float32) float32) []float32 {
		y := make([]float32, len(x))
		for i, v := range x {
			y[i] = f(i, v)
		}
		return y
	}
	for _, name := range []string{"q8", "q4", "q4g64", "bf16"} {
		codec, err := tensor.ParseCodec(name)
		if err != nil {
			t.Fatal(err)
		}
		ref := encodeRows(codec, x, rows, d)
		coarse := codec.Bits <= 4 // one level is ~10% of the rms: finer edits are below resolution
		for _, tc := range []struct {
			name  string
			y     []float32
			agree bool
		}{
			{"identical", x, true},
			{"kernel 1e-6", perturb(func(_ int, v float32) float32 { return v * float32(1+1e-6*rng.NormFloat64()) }), true},
			{"kernel 1e-5", perturb(func(_ int, v float32) float32 { return v * float32(1+1e-5*rng.NormFloat64()) }), true},
			{"kernel 3e-4 abs", perturb(func(_ int, v float32) float32 { return v + float32(3e-4*rng.NormFloat64()) }), true},
			{"noise 5%", perturb(func(_ int, v float32) float32 { return v + float32(0.05*rng.NormFloat64()) }), false},
			{"scaled 1.05", perturb(func(_ int, v float32) float32 { return v * 1.05 }), coarse},
			{"scaled 1.25", perturb(func(_ int, v float32) float32 { return v * 1.25 }), false},
			{"garbage", perturb(func(_ int, v float32) float32 { return float32(rng.NormFloat64()) }), false},
			{"one value +0.5", perturb(func(i int, v float32) float32 {
				if i == 7*d+3 {
					return v + 0.5
				}
				return v
			}), coarse},
			{"one value +3", perturb(func(i int, v float32) float32 {
				if i == 9*d+50 {
					return v + 3
				}
				return v
			}), false},
		} {
			st, err := compareEntries(codec, kappa, ref, encodeRows(codec, tc.y, rows, d))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%-5s %-15s %v", name, tc.name, st)
			if st.agree() != tc.agree {
				t.Errorf("%s %s: agree = %v, want %v (%v)", name, tc.name, st.agree(), tc.agree, st)
			}
			// A dense perturbation must fail on (nearly) every row, not by luck.
			if tc.name == "noise 5%" && !coarse && st.BadRows < rows*9/10 || tc.name == "noise 5%" && st.BadRows < rows/4 {
				t.Errorf("%s %s: only %d of %d rows caught", name, tc.name, st.BadRows, rows)
			}
		}
	}
	// Mismatched shapes are an error, not a verdict.
	q8, _ := tensor.ParseCodec("q8")
	if _, err := compareEntries(q8, kappa, encodeRows(q8, x, rows, d), encodeRows(q8, x[:d], 1, d)); err == nil {
		t.Error("different row counts compared without an error")
	}
}

// TestCompareFlipRate measures how often an honest kernel difference flips
// a quantization level and checks that the rule never rejects it over
// many rows (the bound's slack is for the variance of the flip count).
func TestCompareFlipRate(t *testing.T) {
	const rows, d = 2048, 128
	rng := rand.New(rand.NewPCG(3, 4))
	ids := make([]int32, rows)
	for i := range ids {
		ids[i] = int32(rng.IntN(256))
	}
	x := honestHidden(ids, 0, d)
	for _, rel := range []float64{1e-6, 1e-5, 1e-4, 1e-3} {
		for _, name := range []string{"q8", "q4", "bf16"} {
			codec, _ := tensor.ParseCodec(name)
			y := make([]float32, len(x))
			for i, v := range x {
				y[i] = v * float32(1+rel*rng.NormFloat64())
			}
			st, err := compareEntries(codec, 1e-3, encodeRows(codec, x, rows, d), encodeRows(codec, y, rows, d))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("kernel noise %.0e %-4s: %.2e level flips per value, worst relL2/R %.3f, min cos %.7f", rel, name,
				float64(st.Flips)/float64(rows*d), st.WorstRatio, st.MinCos)
			if !st.agree() {
				t.Errorf("honest noise %.0e at %s rejected: %v", rel, name, st)
			}
		}
	}
}

func TestSamplingRate(t *testing.T) {
	f := 0.1
	if p := samplingRate(f, 0, false); p != 2*f {
		t.Errorf("new node: %v, want %v", p, 2*f)
	}
	prev := 1.0
	for clean := 0; clean < 200; clean += 10 {
		p := samplingRate(f, clean, false)
		if p > prev || p < f/4 {
			t.Errorf("clean %d: rate %v (previous %v)", clean, p, prev)
		}
		prev = p
	}
	if p := samplingRate(f, 100, true); p < 4*f {
		t.Errorf("suspect node sampled at %v, want >= %v", p, 4*f)
	}
	if samplingRate(-1, 0, true) != 0 || samplingRate(1, 0, false) != 1 {
		t.Error("rate bounds")
	}
}

// liarRun is one job on a swarm with a lying node.
type liarRun struct {
	banned, honestBanned  bool
	wrongLeft             int // chunks whose cached embeddings are wrong
	verifyCost, extraCost float64
	dropped, disagree     int
}

// runLiarJob runs one job and checks what can be checked whatever the
// sampling drew.
func runLiarJob(t *testing.T, ts *testSwarm, liar *testNode, seed uint64, vf float64, chunks int) liarRun {
	c, stores := ts.coordinator(Config{MinNodes: len(ts.nodes), VerifyFraction: vf})
	ds := swarmDataset(seed, chunks, 4, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Collect(ctx, ds, nil); err != nil {
		t.Fatalf("%v\nstatus: %+v", err, c.Status().Job)
	}
	st := c.Status()
	var r liarRun
	for _, n := range st.Nodes {
		if !n.Banned {
			continue
		}
		if n.Peer == liar.h.ID().String() {
			r.banned = true
		} else {
			r.honestBanned = true
			t.Errorf("an honest node was banned: %s", n.BanReason)
		}
	}
	for _, ch := range ds.Train {
		got := make([][]Entry, 0, 1)
		e, err := c.cache.Get(c.key(-1, ch))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
		var want []Entry
		for _, sq := range ch.Seqs {
			want = append(want, Entry{Rows: len(sq.Tokens), Dim: c.base.Config.Dim,
				Data: c.codec.Encode(nil, honestHidden(sq.Tokens, -1, c.base.Config.Dim), len(sq.Tokens), c.base.Config.Dim)})
		}
		if vs, err := compareEntries(c.codec, c.cfg.VerifyKernelRel, [][]Entry{want}, got); err != nil || !vs.agree() {
			r.wrongLeft++
		}
	}
	if r.banned && r.wrongLeft > 0 {
		t.Errorf("liar banned, yet %d wrong chunks are left in the cache", r.wrongLeft)
	}
	if stores.total() != st.Job.Total+st.Job.Verify.Dropped {
		t.Errorf("%d cache writes for %d chunks and %d dropped", stores.total(), st.Job.Total, st.Job.Verify.Dropped)
	}
	r.verifyCost, r.extraCost = st.Job.VerifyComputeFraction, st.Job.ExtraComputeFraction
	r.dropped, r.disagree = st.Job.Verify.Dropped, st.Job.Verify.Disagreements
	return r
}

// liarSwarm is 6 nodes: 4 honest, one honest on another kernel, one liar.
func liarSwarm(t *testing.T, f fault) (*testSwarm, *testNode, *testNode) {
	ts := newTestSwarm(t)
	for i := range 4 {
		ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, honest, uint64(i)), node.Config{})
	}
	k := ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, kernel, 10), node.Config{})
	liar := ts.addNode(newFakeBase(ts.base, 100*time.Microsecond, f, 11), node.Config{})
	return ts, liar, k
}

// TestLiars: a node that perturbs its embeddings by 5% noise, or returns
// garbage, is caught by the 2-of-3 vote, banned, and its chunks redone;
// an honest node on a different kernel is never banned.
func TestLiars(t *testing.T) {
	for _, f := range []fault{noisy, garbage} {
		t.Run(fmt.Sprint([]string{noisy: "noise5%", garbage: "garbage"}[f]), func(t *testing.T) {
			ts, liar, _ := liarSwarm(t, f)
			r := runLiarJob(t, ts, liar, 100+uint64(f), 0.25, 120)
			if !r.banned {
				t.Fatal("the liar was not banned")
			}
			if ts.warns.count("node banned for this job") != 1 {
				t.Errorf("ban logged %d times", ts.warns.count("node banned for this job"))
			}
			t.Logf("liar banned; %d of its chunks dropped and redone, %d disagreements, verification cost %.3f, extra compute %.3f",
				r.dropped, r.disagree, r.verifyCost, r.extraCost)
		})
	}
}

// TestLiarDetectionRate runs jobs over several seeds at the default
// VerifyFraction and reports how often the liar is caught and what the
// verification costs. Each job is a fresh ban slate (bans are per job).
func TestLiarDetectionRate(t *testing.T) {
	const seeds = 3
	for _, f := range []fault{noisy, garbage} {
		ts, liar, _ := liarSwarm(t, f)
		caught, wrong := 0, 0
		var cost, extra float64
		for s := range seeds {
			r := runLiarJob(t, ts, liar, 1000+uint64(s)*7+uint64(f), 0, 60)
			if r.banned {
				caught++
			}
			wrong += r.wrongLeft
			cost += r.verifyCost
			extra += r.extraCost
		}
		t.Logf("%s liar, VerifyFraction 0.1, 60-chunk jobs: caught in %d/%d jobs, %d wrong chunks left in caches, verification compute %.3f, extra compute %.3f (means)",
			[]string{noisy: "5%-noise", garbage: "garbage"}[f], caught, seeds, wrong, cost/seeds, extra/seeds)
		if caught == 0 {
			t.Errorf("the liar was never caught in %d jobs", seeds)
		}
	}
	_ = math.Sqrt
}
