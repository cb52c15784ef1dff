package carryon

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"carryon/tensor"
)

// coTinyConfig is the test carry-on: two sources of different widths, two
// layers of two heads.
func coTinyConfig(vocab int) Config {
	return Config{
		Sources:   []Source{{Name: "final", Dim: 12}, {Name: "layer:1", Dim: 7}},
		Width:     16,
		Layers:    2,
		Heads:     2,
		FFN:       24,
		Vocab:     vocab,
		MaxSeq:    32,
		RopeTheta: 1e4,
		NormEps:   1e-6,
		Alpha:     0.75,
	}
}

// coTestCase is a carry-on with every parameter moved off its
// initialisation (W_Δ ≠ 0, norms ≠ 1, biases ≠ 0) so that gradients reach
// every tensor, plus one sequence of inputs.
type coTestCase struct {
	c       *Model
	sources [][]float32
	targets []int32
	wPred   []float32
	T       int
}

// lossAndGrad is LossAndGrad of the case's model on its sequence.
func (tc coTestCase) lossAndGrad(ws *Workspace, gradScale float32, grads []float32) (float64, int) {
	return tc.c.LossAndGrad(ws, tc.sources, tc.targets, tc.T, tc.wPred, gradScale, grads)
}

// loss is Loss of the case's model on its sequence, at the model's Alpha.
func (tc coTestCase) loss(ws *Workspace) (float64, int) {
	return tc.c.Loss(ws, tc.sources, tc.targets, tc.T, tc.wPred, tc.c.Config.Alpha)
}

func coNewTestCase(t testing.TB, T, V int, seed uint64, std float64) coTestCase {
	t.Helper()
	cfg := coTinyConfig(V)
	c, err := New(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	randomizeParams(c, rng, std)
	tc := coTestCase{c: c, T: T, wPred: make([]float32, V*cfg.D()), targets: make([]int32, T)}
	for _, s := range cfg.Sources {
		x := make([]float32, T*s.Dim)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		tc.sources = append(tc.sources, x)
	}
	for i := range tc.wPred {
		tc.wPred[i] = float32(0.5 * rng.NormFloat64())
	}
	for i := range tc.targets {
		tc.targets[i] = int32(rng.IntN(V))
	}
	tc.targets[1] = -1 // a masked position (e.g. a prompt token)
	return tc
}

// TestCarryOnGradFD checks the gradient of every single parameter of a
// whole LossAndGrad against central finite differences of Loss.
//
// The forward runs in float32, so the differences are noisy: the loss sum
// (about 4 tokens · ln 11) carries a rounding error δ of a few 1e-6, which
// becomes δ/(2ε) ≈ 2e-3 in a difference with ε = 1e-3; the truncation error
// (ε²/6 times a third derivative) is far below that. Hence an absolute
// tolerance of 4e-3 plus 2% of the gradient (measured: max error 2.3e-3).
// Parameters are drawn with std 0.5 so that the largest gradient of every
// tensor is at least 10× the absolute tolerance, which the test also
// asserts, so that a wrong backward cannot hide under it. The PyTorch
// reference (TestCarryOnReference) checks the same gradients to 1e-5.
func TestCarryOnGradFD(t *testing.T) {
	const T, V = 5, 11
	tc := coNewTestCase(t, T, V, 1, 0.5)
	c := tc.c
	ws := c.NewWorkspace(T)
	grads := make([]float32, len(c.Params))
	_, count := tc.lossAndGrad(ws, 1, grads)
	if count != T-1 {
		t.Fatalf("count = %d, want %d (one masked target)", count, T-1)
	}
	loss := func() float64 {
		l, _ := tc.loss(ws)
		return l
	}
	const eps, atol, rtol = 1e-3, 4e-3, 2e-2
	for _, ten := range c.Tensors() {
		var maxAbs, maxErr float64
		bad := 0
		for i := ten.Offset; i < ten.Offset+ten.Numel(); i++ {
			p0 := c.Params[i]
			hi, lo := float32(float64(p0)+eps), float32(float64(p0)-eps)
			c.Params[i] = hi
			lp := loss()
			c.Params[i] = lo
			lm := loss()
			c.Params[i] = p0
			fd := (lp - lm) / (float64(hi) - float64(lo))
			an := float64(grads[i])
			maxAbs = max(maxAbs, math.Abs(an))
			err := math.Abs(an - fd)
			maxErr = max(maxErr, err)
			if err > atol+rtol*math.Max(math.Abs(an), math.Abs(fd)) {
				if bad < 3 {
					t.Errorf("%s[%d]: analytic %.6g, finite difference %.6g", ten.Name, i-ten.Offset, an, fd)
				}
				bad++
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d gradients disagree (max error %.3g)", ten.Name, bad, ten.Numel(), maxErr)
		}
		if maxAbs < 10*atol {
			t.Errorf("%s: largest gradient %.3g is too small for the check to mean anything", ten.Name, maxAbs)
		}
		t.Logf("%-28s max|grad| %.3g  max|err| %.3g", ten.Name, maxAbs, maxErr)
	}
}

// TestCarryOnStartsAtBase checks docs/method.md's promise: with W_Δ = 0 at
// initialisation, y = x̂ bit for bit, the loss is the base's loss, and the
// first gradient reaches W_Δ only.
func TestCarryOnStartsAtBase(t *testing.T) {
	const T, V = 6, 13
	tc := coNewTestCase(t, T, V, 2, 0.3)
	c, err := New(tc.c.Config, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range c.Delta {
		if v != 0 {
			t.Fatal("W_Δ is not zero at initialisation")
		}
	}
	ws := c.NewWorkspace(T)
	x := tc.sources[0]
	y := c.Forward(ws, tc.sources, T, c.Config.Alpha)
	for i := range x {
		if math.Float32bits(y[i]) != math.Float32bits(x[i]) {
			t.Fatalf("y[%d] = %v, want x̂ = %v exactly", i, y[i], x[i])
		}
	}
	got, count := c.Loss(ws, tc.sources, tc.targets, T, tc.wPred, c.Config.Alpha)
	D := c.Config.D()
	base, baseCount := tensor.CrossEntropyLMHead(nil, x, tc.wPred, tc.targets, T, D, V, 4, 0, make([]float32, 4*V))
	if got != base || count != baseCount {
		t.Fatalf("loss %v over %d, base loss %v over %d", got, count, base, baseCount)
	}
	// The same base loss, computed naively in float64.
	var naive float64
	for ti, tg := range tc.targets {
		if tg < 0 {
			continue
		}
		logits := make([]float64, V)
		for v := range logits {
			for d := 0; d < D; d++ {
				logits[v] += float64(tc.wPred[v*D+d]) * float64(x[ti*D+d])
			}
		}
		mx := slices.Max(logits)
		var se float64
		for _, z := range logits {
			se += math.Exp(z - mx)
		}
		naive += mx + math.Log(se) - logits[tg]
	}
	if math.Abs(got-naive) > 1e-5*math.Abs(naive) {
		t.Fatalf("loss %v, naive float64 base loss %v", got, naive)
	}
	grads := make([]float32, len(c.Params))
	c.LossAndGrad(ws, tc.sources, tc.targets, T, tc.wPred, 1, grads)
	for _, ten := range c.Tensors() {
		g := grads[ten.Offset : ten.Offset+ten.Numel()]
		nz := slices.ContainsFunc(g, func(v float32) bool { return v != 0 })
		if nz != (ten.Name == "delta.weight") {
			t.Errorf("%s: non-zero gradient = %v at initialisation, want %v", ten.Name, nz, !nz)
		}
	}
}

// TestCarryOnAlphaAndCausal checks that α scales the customisation
// linearly and that position t never sees a later position.
func TestCarryOnAlphaAndCausal(t *testing.T) {
	const T, V = 7, 11
	tc := coNewTestCase(t, T, V, 4, 0.3)
	c := tc.c
	ws := c.NewWorkspace(T)
	y1 := slices.Clone(c.Forward(ws, tc.sources, T, 1))
	y0 := c.Forward(ws, tc.sources, T, 0)
	if !slices.Equal(y0, tc.sources[0][:len(y0)]) {
		t.Fatal("alpha = 0 does not return x̂")
	}
	y2 := c.Forward(ws, tc.sources, T, 2.5)
	for i := range y2 {
		x := tc.sources[0][i]
		want := x + 2.5*(y1[i]-x)
		if math.Abs(float64(y2[i]-want)) > 1e-5*(1+math.Abs(float64(want))) {
			t.Fatalf("y(2.5)[%d] = %v, want x̂ + 2.5·(y(1) − x̂) = %v", i, y2[i], want)
		}
	}
	// Perturb position 4 of both sources: rows 0..3 of y must not move.
	const cut = 4
	D := c.Config.D()
	for i, s := range c.Config.Sources {
		for j := cut * s.Dim; j < (cut+1)*s.Dim; j++ {
			tc.sources[i][j] += 1
		}
	}
	y3 := c.Forward(ws, tc.sources, T, 1)
	if !slices.Equal(y3[:cut*D], y1[:cut*D]) {
		t.Fatal("a later position changed an earlier output (attention is not causal)")
	}
	if slices.Equal(y3[cut*D:(cut+1)*D], y1[cut*D:(cut+1)*D]) {
		t.Fatal("perturbing position 4 did not change its output")
	}
}

// TestCarryOnAccumulates checks that LossAndGrad adds gradScale·∇ into
// grads, and that a workspace reused for a shorter sequence gives the
// result of a fresh one.
func TestCarryOnAccumulates(t *testing.T) {
	const T, V = 8, 11
	tc := coNewTestCase(t, T, V, 5, 0.3)
	c := tc.c
	ws := c.NewWorkspace(T)
	once := make([]float32, len(c.Params))
	l1, n1 := tc.lossAndGrad(ws, 1, once)
	acc := make([]float32, len(c.Params))
	tc.lossAndGrad(ws, 0.5, acc)
	l2, n2 := tc.lossAndGrad(ws, 1.5, acc)
	if l1 != l2 || n1 != n2 {
		t.Fatalf("loss changed between calls: %v/%d then %v/%d", l1, n1, l2, n2)
	}
	for i := range once {
		if math.Abs(float64(acc[i]-2*once[i])) > 1e-5*(1+math.Abs(float64(once[i]))) {
			t.Fatalf("grads[%d] = %v after 0.5+1.5, want 2·%v", i, acc[i], once[i])
		}
	}
	// T-3 positions on the big workspace vs a fresh small one.
	const short = T - 3
	srcShort := make([][]float32, len(tc.sources))
	for i, s := range c.Config.Sources {
		srcShort[i] = tc.sources[i][:short*s.Dim]
	}
	gBig := make([]float32, len(c.Params))
	lb, _ := c.LossAndGrad(ws, srcShort, tc.targets, short, tc.wPred, 1, gBig)
	gSmall := make([]float32, len(c.Params))
	ls, _ := c.LossAndGrad(c.NewWorkspace(short), srcShort, tc.targets, short, tc.wPred, 1, gSmall)
	if lb != ls || !slices.Equal(gBig, gSmall) {
		t.Fatalf("reused workspace: loss %v vs fresh %v (grads equal: %v)", lb, ls, slices.Equal(gBig, gSmall))
	}
}

// TestCarryOnBatch checks that one LossAndGradBatch over sequences of
// different lengths (with masked targets) gives the loss, count and
// gradient of LossAndGrad on each sequence in turn, that ForwardBatch gives
// each sequence's Forward rows, and that LossBatch matches Loss.
func TestCarryOnBatch(t *testing.T) {
	const V = 13
	lens := []int{9, 3, 17, 2}
	base := coNewTestCase(t, 32, V, 21, 0.3)
	c := base.c
	var seqs []Seq
	rows := 0
	for b, T := range lens {
		tc := coNewTestCase(t, T, V, uint64(30+b), 0.3)
		if b == 2 {
			tc.targets[5], tc.targets[6] = -1, -1
		}
		seqs = append(seqs, Seq{Sources: tc.sources, Targets: tc.targets, T: T})
		rows += T
	}
	wPred := base.wPred
	want := make([]float32, len(c.Params))
	var wantLoss float64
	var wantN int
	var wantY []float32
	for _, sq := range seqs {
		ws := c.NewWorkspace(sq.T)
		wantY = append(wantY, c.Forward(ws, sq.Sources, sq.T, c.Config.Alpha)...)
		l, n := c.LossAndGrad(ws, sq.Sources, sq.Targets, sq.T, wPred, 0.5, want)
		wantLoss += l
		wantN += n
	}
	ws := c.NewBatchWorkspace(20, rows+5)
	for rep := range 2 { // the second call reuses the workspace (and its packed head)
		got := make([]float32, len(c.Params))
		l, n := c.LossAndGradBatch(ws, seqs, wPred, 0.5, got)
		if n != wantN || math.Abs(l-wantLoss) > 1e-5*math.Abs(wantLoss) {
			t.Fatalf("rep %d: batch loss %v count %d, per sequence %v %d", rep, l, n, wantLoss, wantN)
		}
		var maxG float64
		for _, g := range want {
			maxG = max(maxG, math.Abs(float64(g)))
		}
		for i := range got {
			if math.Abs(float64(got[i]-want[i])) > 1e-5*maxG {
				t.Fatalf("rep %d: grads[%d] = %v, per sequence %v (max |g| %v)", rep, i, got[i], want[i], maxG)
			}
		}
	}
	y := c.ForwardBatch(ws, seqs, c.Config.Alpha)
	if len(y) != len(wantY) {
		t.Fatalf("ForwardBatch gave %d values, want %d", len(y), len(wantY))
	}
	for i := range y {
		if math.Abs(float64(y[i]-wantY[i])) > 1e-5*(1+math.Abs(float64(wantY[i]))) {
			t.Fatalf("ForwardBatch y[%d] = %v, per sequence %v", i, y[i], wantY[i])
		}
	}
	lb, nb := c.LossBatch(ws, seqs, wPred, c.Config.Alpha)
	if nb != wantN || math.Abs(lb-wantLoss) > 1e-5*math.Abs(wantLoss) {
		t.Fatalf("LossBatch %v %d, per sequence %v %d", lb, nb, wantLoss, wantN)
	}
}

// TestOptimizerParallel checks that the AdamW step, split over cores for
// a carry-on this large, is bitwise the per-tensor tensor.AdamWStep.
func TestOptimizerParallel(t *testing.T) {
	cfg := DefaultConfig(512, 50)
	c, err := New(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Params) < 3*optimMinPerCore {
		t.Fatalf("%d parameters: too few to split", len(c.Params))
	}
	rng := rand.New(rand.NewPCG(4, 5))
	grads := make([]float32, len(c.Params))
	for i := range grads {
		grads[i] = float32(0.01 * rng.NormFloat64())
	}
	ocfg := DefaultOptimConfig(10)
	ocfg.ClipNorm = 0
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, procs := range []int{2, 3} {
		runtime.GOMAXPROCS(procs)
		d := c.Clone()
		o, err := NewOptimizer(d, ocfg)
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Clone(c.Params)
		m, v := make([]float32, len(want)), make([]float32, len(want))
		for step := 1; step <= 2; step++ {
			lr := o.LR()
			o.Step(grads)
			for _, ten := range c.Tensors() {
				a, b := ten.Offset, ten.Offset+ten.Numel()
				wd := float32(0)
				if ten.Decay {
					wd = ocfg.WeightDecay
				}
				tensor.AdamWStep(want[a:b], grads[a:b], m[a:b], v[a:b], step, lr, ocfg.Beta1, ocfg.Beta2, ocfg.Eps, wd)
			}
		}
		if !slices.Equal(d.Params, want) || !slices.Equal(o.M, m) || !slices.Equal(o.V, v) {
			t.Fatalf("procs %d: parallel AdamW differs from the per-tensor step", procs)
		}
	}
}

func TestCarryOnInit(t *testing.T) {
	cfg := DefaultConfig(896, 4096)
	a, err := New(cfg, 42)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New(cfg, 42)
	d, _ := New(cfg, 43)
	if !slices.Equal(a.Params, b.Params) {
		t.Fatal("equal seeds give different weights")
	}
	if slices.Equal(a.Params, d.Params) {
		t.Fatal("different seeds give equal weights")
	}
	if len(a.Params) != cfg.NumParams() {
		t.Fatalf("len(Params) = %d, NumParams = %d", len(a.Params), cfg.NumParams())
	}
	// "1 MB": 64·896+64 + 2·(4·64² + 64·2 + 3·172·64) + 64 + 2·896·64 + 896 floats.
	if want := 64*896 + 64 + 2*(4*64*64+2*64+3*172*64) + 64 + 2*896*64 + 896; len(a.Params) != want {
		t.Fatalf("%d parameters, want %d", len(a.Params), want)
	}
	t.Logf("default carry-on on D = 896: %d parameters (%.2f MB as float32)", len(a.Params), float64(4*len(a.Params))/1e6)
	// Views of Params are the named fields, in layout order, covering all of it.
	end := 0
	for _, ten := range a.Tensors() {
		if ten.Offset != end {
			t.Fatalf("%s starts at %d, previous tensor ended at %d", ten.Name, ten.Offset, end)
		}
		end += ten.Numel()
	}
	if end != len(a.Params) || &a.GateBias[len(a.GateBias)-1] != &a.Params[len(a.Params)-1] {
		t.Fatal("tensors do not tile Params")
	}
	var std float64
	for _, v := range a.Blocks[0].WQ {
		std += float64(v) * float64(v)
	}
	if std = math.Sqrt(std / float64(len(a.Blocks[0].WQ))); math.Abs(std-0.02) > 0.002 {
		t.Fatalf("wq std %v, want 0.02", std)
	}
}

func TestCarryOnConfigValidate(t *testing.T) {
	ok := coTinyConfig(11)
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		field  string
		mutate func(*Config)
	}{
		{"Sources", func(c *Config) { c.Sources = nil }},
		{"Sources[1].Dim", func(c *Config) { c.Sources[1].Dim = 0 }},
		{"Sources[0].Name", func(c *Config) { c.Sources[0].Name = "" }},
		{"Sources[1].Name", func(c *Config) { c.Sources[1].Name = "final" }},
		{"Width", func(c *Config) { c.Width = 1 << 20 }},
		{"Heads", func(c *Config) { c.Heads = 0 }},
		{"Width 16 must be Heads 3", func(c *Config) { c.Heads = 3 }},
		{"Width 16 must be Heads 16", func(c *Config) { c.Heads = 16 }}, // head size 1: odd
		{"Layers", func(c *Config) { c.Layers = -1 }},
		{"FFN", func(c *Config) { c.FFN = 0 }},
		{"Vocab", func(c *Config) { c.Vocab = 0 }},
		{"MaxSeq", func(c *Config) { c.MaxSeq = 0 }},
		{"RopeTheta", func(c *Config) { c.RopeTheta = math.NaN() }},
		{"NormEps", func(c *Config) { c.NormEps = 0 }},
		{"Alpha", func(c *Config) { c.Alpha = float32(math.Inf(1)) }},
		{"parameters", func(c *Config) { c.Width, c.FFN, c.Layers = 1<<15, 1<<17, 256 }},
	} {
		cfg := ok
		cfg.Sources = slices.Clone(ok.Sources)
		tt.mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("mutating %s: error %v does not name it", tt.field, err)
		}
	}
}

func TestOptimizer(t *testing.T) {
	tc := coNewTestCase(t, 4, 11, 6, 0.3)
	c := tc.c
	if _, err := NewOptimizer(c, OptimConfig{}); err == nil || !strings.Contains(err.Error(), "LR") {
		t.Fatalf("zero OptimConfig: %v", err)
	}
	cfg := DefaultOptimConfig(100)
	cfg.WeightDecay = 0.5
	o, err := NewOptimizer(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := slices.Clone(c.Params)
	lr := o.LR()
	if want := tensor.CosineLR(1, cfg.Warmup, cfg.Total, cfg.LR, cfg.MinLR); lr != want || lr == 0 {
		t.Fatalf("first LR %v, want %v (non-zero)", lr, want)
	}
	// Zero gradients: only decoupled weight decay moves the parameters,
	// and only the matrices.
	checkDecayOnly(t, c, o, before, lr, 0.5, 1e-7)
	// Clipping: the returned norm is the norm before clipping.
	g := make([]float32, len(c.Params))
	for i := range g {
		g[i] = 1
	}
	if n := o.Step(g); math.Abs(n-math.Sqrt(float64(len(g)))) > 1e-6*n {
		t.Fatalf("grad norm %v, want %v", n, math.Sqrt(float64(len(g))))
	}
	if n := tensor.GradNorm(g); math.Abs(n-cfg.ClipNorm) > 1e-4 {
		t.Fatalf("clipped norm %v, want %v", n, cfg.ClipNorm)
	}
	if o.Steps != 2 {
		t.Fatalf("Steps = %d", o.Steps)
	}
}

// Reference files, shared with gen_reference.py: u32 magic, u32 version,
// u32 n, n bytes of JSON header, then float32 tensors in header order.
const (
	coRefMagic   = 0x43524546
	coRefVersion = 1
	coRefPath    = "testdata/carryon/reference.bin"
	coRefScript  = "testdata/carryon/gen_reference.py"
)

type coRefTensor struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

type coRefHeader struct {
	Kind      string        `json:"kind"`
	Config    Config        `json:"config"`
	Optim     OptimConfig   `json:"optim"`
	T         int           `json:"T"`
	Alpha     float32       `json:"alpha"`
	Steps     int           `json:"steps"`
	Targets   []int32       `json:"targets"`
	Params    []string      `json:"params"`
	Decay     []string      `json:"decay"`
	Tensors   []coRefTensor `json:"tensors"`
	Loss0     float64       `json:"loss0"`
	Losses    []float64     `json:"losses"`
	GradNorms []float64     `json:"grad_norms"`
	Generator string        `json:"generator"`
}

func coWriteRef(path string, h coRefHeader, data map[string][]float32) error {
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, v := range []uint32{coRefMagic, coRefVersion, uint32(len(js))} {
		binary.Write(&b, binary.LittleEndian, v)
	}
	b.Write(js)
	for _, ten := range h.Tensors {
		binary.Write(&b, binary.LittleEndian, data[ten.Name])
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

func coReadRef(t *testing.T, path string) (coRefHeader, map[string][]float32) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (regenerate with CARRYON_UPDATE_REFERENCE=1 go test ./model/ -run TestCarryOnReference, which runs %s)", err, coRefScript)
	}
	h, data, err := coParseRef(raw)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return h, data
}

func coParseRef(raw []byte) (coRefHeader, map[string][]float32, error) {
	var h coRefHeader
	if len(raw) < 12 {
		return h, nil, fmt.Errorf("%d bytes, too short for a header", len(raw))
	}
	magic, version, n := binary.LittleEndian.Uint32(raw), binary.LittleEndian.Uint32(raw[4:]), binary.LittleEndian.Uint32(raw[8:])
	if magic != coRefMagic || version != coRefVersion {
		return h, nil, fmt.Errorf("magic %#x version %d, want %#x version %d: regenerate it with %s (CARRYON_UPDATE_REFERENCE=1)", magic, version, coRefMagic, coRefVersion, coRefScript)
	}
	if uint64(n) > uint64(len(raw)-12) {
		return h, nil, fmt.Errorf("header of %d bytes exceeds the file", n)
	}
	if err := json.Unmarshal(raw[12:12+n], &h); err != nil {
		return h, nil, fmt.Errorf("header: %v", err)
	}
	body := raw[12+n:]
	data := make(map[string][]float32)
	for _, ten := range h.Tensors {
		k := 1
		for _, s := range ten.Shape {
			k *= s
		}
		if k < 0 || k > len(body)/4 {
			return h, nil, fmt.Errorf("tensor %s truncated", ten.Name)
		}
		v := make([]float32, k)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
		}
		data[ten.Name] = v
		body = body[4*k:]
	}
	if len(body) != 0 {
		return h, nil, fmt.Errorf("%d trailing bytes", len(body))
	}
	return h, data, nil
}

// TestCarryOnReferenceFormat checks that a reference of another format
// version is refused with a hint naming the generator.
func TestCarryOnReferenceFormat(t *testing.T) {
	raw, err := os.ReadFile(coRefPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 4} {
		bad := slices.Clone(raw)
		bad[off]++
		if _, _, err := coParseRef(bad); err == nil || !strings.Contains(err.Error(), "gen_reference.py") {
			t.Errorf("byte %d changed: error %v does not name the script", off, err)
		}
	}
	if _, _, err := coParseRef(raw[:len(raw)-4]); err == nil {
		t.Error("truncated reference accepted")
	}
}

// checkTensor compares got with want elementwise: |got − want| ≤
// tol·max(1, max|want|), reporting the max difference and the first
// mismatches.
func checkTensor(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", name, len(got), len(want))
		return
	}
	var scale, maxDiff float64
	for _, w := range want {
		scale = max(scale, math.Abs(float64(w)))
	}
	lim := tol * max(scale, 1e-3)
	bad := 0
	for i := range got {
		d := math.Abs(float64(got[i]) - float64(want[i]))
		maxDiff = max(maxDiff, d)
		if !(d <= lim) {
			if bad < 4 {
				t.Errorf("%s[%d]: got %.8g, want %.8g", name, i, got[i], want[i])
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d differ by more than %.3g (max diff %.3g, max |want| %.3g)", name, bad, len(got), lim, maxDiff, scale)
	}
}

// coRefCase is the reference problem: the test carry-on with T = 9 over a
// vocabulary of 29, two masked targets.
func coRefCase(t *testing.T) (coTestCase, OptimConfig) {
	tc := coNewTestCase(t, 9, 29, 11, 0.3)
	tc.targets[5] = -1
	oc := OptimConfig{LR: 1e-2, MinLR: 1e-3, Warmup: 2, Total: 10, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1, ClipNorm: 0.5}
	return tc, oc
}

// coUpdateReference writes the inputs and runs gen_reference.py.
func coUpdateReference(t *testing.T) {
	tc, oc := coRefCase(t)
	c := tc.c
	h := coRefHeader{Kind: "input", Config: c.Config, Optim: oc, T: tc.T, Alpha: c.Config.Alpha, Steps: 10, Targets: tc.targets}
	data := map[string][]float32{}
	for _, ten := range c.Tensors() {
		h.Params = append(h.Params, ten.Name)
		if ten.Decay {
			h.Decay = append(h.Decay, ten.Name)
		}
		h.Tensors = append(h.Tensors, coRefTensor{"param:" + ten.Name, ten.Shape})
		data["param:"+ten.Name] = c.Params[ten.Offset : ten.Offset+ten.Numel()]
	}
	for i, s := range c.Config.Sources {
		name := fmt.Sprintf("source.%d", i)
		h.Tensors = append(h.Tensors, coRefTensor{name, []int{tc.T, s.Dim}})
		data[name] = tc.sources[i]
	}
	h.Tensors = append(h.Tensors, coRefTensor{"w_pred", []int{c.Config.Vocab, c.Config.D()}})
	data["w_pred"] = tc.wPred
	in := filepath.Join(t.TempDir(), "input.bin")
	if err := coWriteRef(in, h, data); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/usr/bin/python3", coRefScript, in, coRefPath).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", coRefScript, err, out)
	}
}

// TestCarryOnReference compares the loss, every parameter gradient and a
// 10-step AdamW loss trajectory with PyTorch (float64), as llm.c's
// test_gpt2.c does.
//
// Tolerances: the Go pass runs in float32 (unit roundoff 6e-8) through
// about 20 dependent ops with sums of up to 29 terms; measured, every
// gradient agrees with PyTorch's float64 to 1.5e-6 of its tensor's largest
// entry (the file itself rounds to float32), so 1e-5 leaves a 6× margin.
// The losses agree to 1.5e-7 relative over all 10 steps (Adam's division
// by √v can amplify float32 noise in tiny gradients); 2e-6 leaves margin.
func TestCarryOnReference(t *testing.T) {
	if os.Getenv("CARRYON_UPDATE_REFERENCE") == "1" {
		coUpdateReference(t)
	}
	h, data := coReadRef(t, coRefPath)
	if h.Kind != "reference" {
		t.Fatalf("%s: kind %q, want reference (regenerate with %s)", coRefPath, h.Kind, coRefScript)
	}
	c, err := coAlloc(h.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, ten := range c.Tensors() {
		p, ok := data["param:"+ten.Name]
		if !ok || len(p) != ten.Numel() {
			t.Fatalf("reference lacks param:%s of %d values", ten.Name, ten.Numel())
		}
		copy(c.Params[ten.Offset:], p)
	}
	var sources [][]float32
	for i := range h.Config.Sources {
		sources = append(sources, data[fmt.Sprintf("source.%d", i)])
	}
	T := h.T
	ws := c.NewWorkspace(T)
	count := 0
	for _, v := range h.Targets {
		if v >= 0 {
			count++
		}
	}
	grads := make([]float32, len(c.Params))
	sum, n := c.LossAndGrad(ws, sources, h.Targets, T, data["w_pred"], 1/float32(count), grads)
	if n != count {
		t.Fatalf("count %d, want %d", n, count)
	}
	if loss := sum / float64(n); math.Abs(loss-h.Loss0) > 1e-6*h.Loss0 {
		t.Errorf("loss %.8f, PyTorch %.8f", loss, h.Loss0)
	} else {
		t.Logf("loss %.8f, PyTorch %.8f", loss, h.Loss0)
	}
	for _, ten := range c.Tensors() {
		checkTensor(t, "grad:"+ten.Name, grads[ten.Offset:ten.Offset+ten.Numel()], data["grad:"+ten.Name], 1e-5)
	}

	o, err := NewOptimizer(c, h.Optim)
	if err != nil {
		t.Fatal(err)
	}
	clipped := 0
	for step, want := range h.Losses {
		clear(grads)
		sum, n := c.LossAndGrad(ws, sources, h.Targets, T, data["w_pred"], 1/float32(count), grads)
		loss := sum / float64(n)
		norm := o.Step(grads)
		if norm > h.Optim.ClipNorm {
			clipped++
		}
		if math.Abs(loss-want) > 2e-6*want {
			t.Errorf("step %d: loss %.8f, PyTorch %.8f", step+1, loss, want)
		}
		t.Logf("step %2d: loss %.8f (PyTorch %.8f), grad norm %.5f (PyTorch %.5f)", step+1, loss, want, norm, h.GradNorms[step])
	}
	if clipped == 0 {
		t.Error("no step was clipped: the reference does not exercise clipping")
	}
	if len(h.Losses) != 10 || h.Losses[9] >= h.Losses[0] {
		t.Errorf("reference trajectory %v: want 10 decreasing losses", h.Losses)
	}
}

// BenchmarkCarryOnStep measures one LossAndGrad of the "1 MB" carry-on on a
// Qwen2.5-0.5B-sized base (D = 896) with a 4096-token vocabulary, T = 256.
func BenchmarkCarryOnStep(b *testing.B) {
	const T, D, V = 256, 896, 4096
	cfg := DefaultConfig(D, V)
	c, err := New(cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range c.Delta {
		c.Delta[i] = float32(0.02 * rng.NormFloat64())
	}
	x := make([]float32, T*D)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	wPred := make([]float32, V*D)
	for i := range wPred {
		wPred[i] = float32(0.05 * rng.NormFloat64())
	}
	targets := make([]int32, T)
	for i := range targets {
		targets[i] = int32(rng.IntN(V))
	}
	ws := c.NewWorkspace(T)
	grads := make([]float32, len(c.Params))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		c.LossAndGrad(ws, [][]float32{x}, targets, T, wPred, 1.0/T, grads)
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// TestRowFloats: Config.RowFloats is exactly what a batch workspace grows
// by per row: every float32 slice in it, found by reflection (a slice that
// several fields share counted once), apart from the fixed-size LM-head
// scratch and an alias.
func TestRowFloats(t *testing.T) {
	cfg := DefaultConfig(48, 97)
	co, err := New(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uintptr]bool{} // a slice shared by several fields counts once
	var walk func(v reflect.Value) int
	walk = func(v reflect.Value) int {
		n := 0
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				n += walk(v.Elem())
			}
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				// resL aliases res[L].
				if name := v.Type().Field(i).Name; name != "ceScratch" && name != "resL" {
					n += walk(v.Field(i))
				}
			}
		case reflect.Slice:
			if v.Type().Elem().Kind() == reflect.Float32 {
				if v.Len() == 0 || seen[v.Pointer()] {
					return 0
				}
				seen[v.Pointer()] = true
				return v.Len()
			}
			for i := 0; i < v.Len(); i++ {
				n += walk(v.Index(i))
			}
		}
		return n
	}
	a := walk(reflect.ValueOf(co.NewBatchWorkspace(8, 8)))
	b := walk(reflect.ValueOf(co.NewBatchWorkspace(8, 40)))
	if (b-a)%32 != 0 || (b-a)/32 != cfg.RowFloats() {
		t.Errorf("a workspace grows by %d floats over 32 rows, RowFloats says %d per row", b-a, cfg.RowFloats())
	}
}

// TestCarryOnQuantHead checks LossAndGradBatchQuant and LossBatchQuant, the
// LM head kept as bf16 bytes (as memory-mapped from a base file), against
// the float32 entry points on the decoded head: the same loss and
// gradients (bitwise where the head's chunks run more than 8 positions,
// within float32 rounding otherwise).
func TestCarryOnQuantHead(t *testing.T) {
	const V = 37
	tc := coNewTestCase(t, 20, V, 41, 0.3)
	c := tc.c
	D := c.Config.D()
	raw := make([]byte, 2*V*D)
	deq := make([]float32, V*D)
	for i, v := range tc.wPred {
		h := tensor.F32ToBF16(v)
		raw[2*i], raw[2*i+1] = byte(h), byte(h>>8)
		deq[i] = tensor.BF16ToF32(h)
	}
	head, err := tensor.NewQuantMatrix(tensor.GGMLBF16, V, D, raw)
	if err != nil {
		t.Fatal(err)
	}
	seqs := []Seq{{Sources: tc.sources, Targets: tc.targets, T: tc.T}}
	ws := c.NewBatchWorkspace(tc.T, tc.T)
	want := make([]float32, len(c.Params))
	lw, nw := c.LossAndGradBatch(ws, seqs, deq, 0.5, want)
	got := make([]float32, len(c.Params))
	lg, ng := c.LossAndGradBatchQuant(ws, seqs, head, 0.5, got)
	if ng != nw || math.Abs(lg-lw) > 1e-6*math.Abs(lw) {
		t.Fatalf("loss %v count %d, float32 head %v %d", lg, ng, lw, nw)
	}
	var maxG float64
	for _, g := range want {
		maxG = max(maxG, math.Abs(float64(g)))
	}
	for i := range got {
		if math.Abs(float64(got[i]-want[i])) > 1e-5*maxG {
			t.Fatalf("grads[%d] = %v, float32 head %v", i, got[i], want[i])
		}
	}
	if lb, nb := c.LossBatchQuant(ws, seqs, head, c.Config.Alpha); nb != nw || math.Abs(lb-lw) > 1e-6*math.Abs(lw) {
		t.Fatalf("LossBatchQuant %v %d, want %v %d", lb, nb, lw, nw)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a head of the wrong shape: no panic")
		}
	}()
	bad, _ := tensor.NewQuantMatrix(tensor.GGMLBF16, V-1, D, raw[:2*(V-1)*D])
	c.LossAndGradBatchQuant(ws, seqs, bad, 0.5, got)
}

// TestOptimizer8bit trains the same tiny carry-on on the same batch for
// 200 steps with float32 and with 8-bit AdamW moments (Moments8bit) and
// checks that the losses agree at every step within 0.03 nats (measured
// 0.012 at the end, where the float32 run is at 0.16 nats from 4.86:
// 7% of a memorised batch's small loss) while the loss falls; and that weight decay alone moves the
// matrices as in the float32 optimiser.
func TestOptimizer8bit(t *testing.T) {
	const V, T, steps = 37, 24, 200
	tcs := []coTestCase{coNewTestCase(t, T, V, 51, 0.3), coNewTestCase(t, T, V, 52, 0.3)}
	seqs := []Seq{{Sources: tcs[0].sources, Targets: tcs[0].targets, T: T}, {Sources: tcs[1].sources, Targets: tcs[1].targets, T: T}}
	wPred := tcs[0].wPred
	run := func(eight bool) []float64 {
		c := coNewTestCase(t, T, V, 51, 0.3).c
		cfg := DefaultOptimConfig(steps)
		cfg.LR, cfg.MinLR = 3e-3, 3e-4
		cfg.Moments8bit = eight
		o, err := NewOptimizer(c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if eight != (o.M == nil && o.M8 != nil) {
			t.Fatalf("Moments8bit=%v: M %d values, M8 %v", eight, len(o.M), o.M8 != nil)
		}
		ws := c.NewBatchWorkspace(T, 2*T)
		g := make([]float32, len(c.Params))
		var losses []float64
		for range steps {
			clear(g)
			l, n := c.LossAndGradBatch(ws, seqs, wPred, 1/float32(2*T), g)
			losses = append(losses, l/float64(n))
			o.Step(g)
		}
		return losses
	}
	l32, l8 := run(false), run(true)
	worst, worstRel := 0.0, 0.0
	for i := range l32 {
		worst = max(worst, math.Abs(l8[i]-l32[i]))
		worstRel = max(worstRel, math.Abs(l8[i]-l32[i])/l32[i])
	}
	t.Logf("loss %.4f → float32 %.4f, 8-bit %.4f; largest gap over %d steps %.3g nats (%.2g relative)", l32[0], l32[steps-1], l8[steps-1], steps, worst, worstRel)
	if !(l32[steps-1] < 0.2*l32[0]) {
		t.Fatalf("did not train: %v → %v", l32[0], l32[steps-1])
	}
	if worst > 0.03 {
		t.Fatalf("8-bit moments: loss differs from float32's by up to %.3g nats (want ≤ 0.03)", worst)
	}
	// Weight decay alone (zero gradients).
	c := coNewTestCase(t, 4, V, 6, 0.3).c
	cfg := DefaultOptimConfig(100)
	cfg.WeightDecay, cfg.Moments8bit = 0.5, true
	o, err := NewOptimizer(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := slices.Clone(c.Params)
	lr := o.LR()
	checkDecayOnly(t, c, o, before, lr, 0.5, 1e-6)
}

// TestLossAndStepQuant checks the fused step (each tensor updated as soon
// as its gradient is complete, no whole-model gradient buffer): with
// float32 moments the parameters after 3 steps equal those of
// LossAndGradBatchQuant + Optimizer.Step bitwise; with 8-bit moments 200
// steps keep the loss within 0.03 nats of that float32 path; and a
// clipping optimiser is refused.
func TestLossAndStepQuant(t *testing.T) {
	const V, T = 37, 24
	tc := coNewTestCase(t, T, V, 61, 0.3)
	tc2 := coNewTestCase(t, T, V, 62, 0.3)
	D := tc.c.Config.D()
	raw := make([]byte, 2*V*D)
	for i, v := range tc.wPred {
		h := tensor.F32ToBF16(v)
		raw[2*i], raw[2*i+1] = byte(h), byte(h>>8)
	}
	head, err := tensor.NewQuantMatrix(tensor.GGMLBF16, V, D, raw)
	if err != nil {
		t.Fatal(err)
	}
	seqs := []Seq{{Sources: tc.sources, Targets: tc.targets, T: T}, {Sources: tc2.sources, Targets: tc2.targets, T: T}}
	run := func(fused, eight bool, steps int) (*Model, []float64) {
		c := coNewTestCase(t, T, V, 61, 0.3).c
		cfg := DefaultOptimConfig(steps)
		cfg.LR, cfg.MinLR, cfg.ClipNorm, cfg.Moments8bit = 3e-3, 3e-4, 0, eight
		o, err := NewOptimizer(c, cfg)
		if err != nil {
			t.Fatal(err)
		}
		ws := c.NewBatchWorkspace(T, 2*T)
		g := make([]float32, len(c.Params))
		var losses []float64
		for range steps {
			var l float64
			var n int
			if fused {
				l, n, _ = c.LossAndStepQuant(ws, seqs, head, 1/float32(2*T), o)
			} else {
				clear(g)
				l, n = c.LossAndGradBatchQuant(ws, seqs, head, 1/float32(2*T), g)
				o.Step(g)
			}
			losses = append(losses, l/float64(n))
		}
		return c, losses
	}
	a, la := run(false, false, 3)
	b, lb := run(true, false, 3)
	for i := range a.Params {
		if math.Float32bits(a.Params[i]) != math.Float32bits(b.Params[i]) {
			t.Fatalf("fused step: Params[%d] = %v, unfused %v", i, b.Params[i], a.Params[i])
		}
	}
	for i := range la {
		if la[i] != lb[i] {
			t.Fatalf("fused step %d: loss %v, unfused %v", i, lb[i], la[i])
		}
	}
	if !testing.Short() {
		_, l32 := run(false, false, 200)
		_, l8 := run(true, true, 200)
		worst := 0.0
		for i := range l32 {
			worst = max(worst, math.Abs(l8[i]-l32[i]))
		}
		t.Logf("200 steps: float32 unfused %.4f → %.4f, fused 8-bit %.4f; largest gap %.3g nats", l32[0], l32[199], l8[199], worst)
		if worst > 0.03 || !(l32[199] < 0.2*l32[0]) {
			t.Fatalf("fused 8-bit step: loss gap %.3g nats (want ≤ 0.03), float32 %v → %v", worst, l32[0], l32[199])
		}
	}
	c := tc.c
	o, _ := NewOptimizer(c, DefaultOptimConfig(10))
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "ClipNorm") {
			t.Fatalf("clipping optimiser: recover() = %v", r)
		}
	}()
	c.LossAndStepQuant(c.NewBatchWorkspace(T, 2*T), seqs, head, 1, o)
}

// TestCarryOnHeadBF16 checks Workspace.HeadBF16: where the CPU has the
// native bf16 kernel the loss and gradients of a batch stay within the
// bf16 head's tolerance of the exact float32 head (loss 1e-3 relative,
// gradient 2e-2 relative L2) and the head is packed in bf16; elsewhere they
// are bitwise the exact ones.
func TestCarryOnHeadBF16(t *testing.T) {
	const V = 300
	base := coNewTestCase(t, 30, V, 41, 0.3)
	c := base.c
	var seqs []Seq
	for b, T := range []int{30, 19} {
		tc := coNewTestCase(t, T, V, uint64(50+b), 0.3)
		seqs = append(seqs, Seq{Sources: tc.sources, Targets: tc.targets, T: T})
	}
	run := func(bf16 bool) (float64, []float32, *Workspace) {
		ws := c.NewBatchWorkspace(30, 49)
		ws.HeadBF16 = bf16
		g := make([]float32, len(c.Params))
		l, _ := c.LossAndGradBatch(ws, seqs, base.wPred, 0.5, g)
		return l, g, ws
	}
	lw, gw, _ := run(false)
	lg, gg, ws := run(true)
	var num, den float64
	for i := range gw {
		d := float64(gg[i]) - float64(gw[i])
		num, den = num+d*d, den+float64(gw[i])*float64(gw[i])
	}
	rel := math.Sqrt(num / den)
	t.Logf("native bf16 %v: loss %.6f vs exact %.6f, gradient rel L2 %.2g", tensor.NativeBF16(), lg, lw, rel)
	if !tensor.NativeBF16() {
		if lg != lw || rel != 0 {
			t.Fatalf("no native bf16 kernel, yet HeadBF16 changed the result: loss %v vs %v, gradient rel L2 %v", lg, lw, rel)
		}
		return
	}
	if !ws.head.wt.BF16() || !ws.head.w.BF16() {
		t.Fatal("HeadBF16 with a native bf16 kernel: the head is not packed in bf16")
	}
	if math.Abs(lg-lw) > 1e-3*math.Abs(lw) || !(rel <= 2e-2) {
		t.Fatalf("bf16 head: loss %v vs exact %v, gradient rel L2 %.3g (bound 2e-2)", lg, lw, rel)
	}
}

// checkDecayOnly steps o with zero gradients: only decoupled weight decay
// (wd) may move c's parameters from before, and only the decayed tensors
// (within rel relative error).
func checkDecayOnly(t *testing.T, c *Model, o *Optimizer, before []float32, lr float32, wd, rel float64) {
	t.Helper()
	o.Step(make([]float32, len(c.Params)))
	for _, ten := range c.Tensors() {
		for i := ten.Offset; i < ten.Offset+ten.Numel(); i++ {
			want := before[i]
			if ten.Decay {
				want = float32(float64(before[i]) * (1 - float64(lr)*wd))
			}
			if math.Abs(float64(c.Params[i]-want)) > rel*(1+math.Abs(float64(want))) {
				t.Fatalf("%s: %v → %v, want %v (decay %v)", ten.Name, before[i], c.Params[i], want, ten.Decay)
			}
		}
	}
}
