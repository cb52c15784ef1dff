package tensor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"carryon/internal/testenv"
)

// maxRelErr returns max|got − want| / max(max|want|, floor).
func maxRelErr(got []float32, want []float64, floor float64) float64 {
	var maxW, maxD float64
	for i, w := range want {
		maxW = max(maxW, math.Abs(w))
		d := math.Abs(float64(got[i]) - w)
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		maxD = max(maxD, d)
	}
	return maxD / max(maxW, floor)
}

// TestAttentionForwardNaive checks the fused kernel against the naive
// float64 softmax(QKᵀ)V on odd shapes, with T crossing the 64-row blocks,
// and its saved lse against the reference log-sum-exp.
func TestAttentionForwardNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, s := range []struct{ T, nHead, nKV, hd int }{
		{1, 4, 2, 8}, {63, 4, 2, 8}, {64, 2, 1, 8}, {65, 4, 2, 8}, {130, 3, 1, 5}, {300, 4, 2, 8}, {300, 2, 2, 16},
	} {
		t.Run(fmt.Sprintf("T=%d/h=%d/kv=%d/hd=%d", s.T, s.nHead, s.nKV, s.hd), func(t *testing.T) {
			q := randSlice(rng, s.T*s.nHead*s.hd, 2)
			k := randSlice(rng, s.T*s.nKV*s.hd, 2)
			v := randSlice(rng, s.T*s.nKV*s.hd, 1)
			want := refAttention(to64(q), to64(k), to64(v), s.T, s.nHead, s.nKV, s.hd)
			out := make([]float32, len(want))
			lse := make([]float32, s.nHead*s.T)
			for _, slots := range []int{1, 0} { // one worker's scratch, then full
				n := AttentionScratch(s.T, s.hd)
				if slots == 1 {
					n = attnSlot(s.T, s.hd)
				}
				AttentionForward(out, lse, q, k, v, make([]float32, n), s.T, s.nHead, s.nKV, s.hd)
				if e := maxRelErr(out, want, 1); e > 1e-5 {
					t.Errorf("scratch %d: out rel err %.3g", n, e)
				}
			}
			// lse of row (h, t) from the reference scores.
			scale := 1 / math.Sqrt(float64(s.hd))
			group := s.nHead / s.nKV
			wantLSE := make([]float64, len(lse))
			for h := 0; h < s.nHead; h++ {
				g := h / group
				for tt := 0; tt < s.T; tt++ {
					var sum float64
					mx := math.Inf(-1)
					sc := make([]float64, tt+1)
					for j := 0; j <= tt; j++ {
						for i := 0; i < s.hd; i++ {
							sc[j] += float64(q[(tt*s.nHead+h)*s.hd+i]) * float64(k[(j*s.nKV+g)*s.hd+i])
						}
						sc[j] *= scale
						mx = max(mx, sc[j])
					}
					for _, x := range sc {
						sum += math.Exp(x - mx)
					}
					wantLSE[h*s.T+tt] = mx + math.Log(sum)
				}
			}
			if e := maxRelErr(lse, wantLSE, 1); e > 1e-5 {
				t.Errorf("lse rel err %.3g", e)
			}
		})
	}
}

// TestAttentionScratchTooSmall: a scratch below one worker's share is a
// programmer error.
func TestAttentionScratchTooSmall(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic with a too-small scratch")
		}
	}()
	T, hd := 10, 8
	x := make([]float32, T*hd)
	AttentionForward(make([]float32, T*hd), nil, x, x, x, make([]float32, attnSlot(T, hd)-1), T, 1, 1, hd)
}

// TestCrossEntropyLMHeadNaive compares loss and count with the float64
// reference on shapes where chunk does not divide T, with ignored runs,
// with logits in the thousands (stability), and checks that the loss does
// not depend on the chunk size.
func TestCrossEntropyLMHeadNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, s := range []struct {
		T, D, V int
		masked  bool
	}{{37, 16, 301, true}, {40, 8, 2000, false}} { // the second spreads rows over goroutines
		T, D, V := s.T, s.D, s.V
		targets := make([]int32, T)
		for i := range targets {
			targets[i] = int32(rng.IntN(V))
			if s.masked && (i%5 == 1 || (i >= 20 && i < 26)) || !s.masked && i >= T-3 {
				targets[i] = -1
			}
		}
		w := randSlice(rng, V*D, 1)
		for _, yScale := range []float64{0.3, 1, 100} {
			y := randSlice(rng, T*D, yScale)
			wantLoss, wantN := refXent(to64(y), to64(w), targets, T, D, V)
			for _, chunk := range []int{1, 4, 7, 64} {
				scratch := make([]float32, chunk*V)
				dy := make([]float32, T*D)
				loss, n := CrossEntropyLMHead(dy, y, w, targets, T, D, V, chunk, 1, scratch)
				if n != wantN {
					t.Errorf("V %d yscale %g chunk %d: count %d, want %d", V, yScale, chunk, n, wantN)
				}
				if math.IsNaN(loss) || math.Abs(loss-wantLoss) > 1e-5*max(1, math.Abs(wantLoss)) {
					t.Errorf("V %d yscale %g chunk %d: loss %.9g, want %.9g", V, yScale, chunk, loss, wantLoss)
				}
				for i, g := range dy {
					if math.IsNaN(float64(g)) || math.IsInf(float64(g), 0) {
						t.Fatalf("V %d yscale %g chunk %d: dy[%d] = %v", V, yScale, chunk, i, g)
					}
					if targets[i/D] < 0 && g != 0 {
						t.Fatalf("V %d yscale %g chunk %d: ignored position %d got gradient %v", V, yScale, chunk, i/D, g)
					}
				}
			}
		}
		if l, n := CrossEntropyLMHead(nil, make([]float32, 2*D), w, []int32{-1, -1}, 2, D, V, 4, 1, make([]float32, 4*V)); l != 0 || n != 0 {
			t.Errorf("all ignored: loss %v count %d, want 0 0", l, n)
		}
	}
}

// TestCrossEntropyLMHeadPackedSlabs runs the packed-head cross-entropy on
// chunks large enough to be cut into slabs of rows, one per core, at 1, 2
// and 3 cores: loss and dy must be bitwise those of CrossEntropyLMHead (and
// so the same for every core count), and match a float64 reference.
func TestCrossEntropyLMHeadPackedSlabs(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	T, D, V := 70, 64, 3000
	y := randSlice(rng, T*D, 1)
	w := randSlice(rng, V*D, 0.3)
	targets := make([]int32, T)
	for i := range targets {
		targets[i] = int32(rng.IntN(V))
		if i >= 50 && i < 53 { // a masked run: chunks of 50 and 17 rows
			targets[i] = -1
		}
	}
	const gs = 0.125
	// float64 reference: loss and dy = gs·(softmax − onehot)·W
	y64, w64 := to64(y), to64(w)
	wantLoss, wantN := refXent(y64, w64, targets, T, D, V)
	wantDy := make([]float64, T*D)
	for t := range T {
		if targets[t] < 0 {
			continue
		}
		z := make([]float64, V)
		mx := math.Inf(-1)
		for v := range V {
			for d := range D {
				z[v] += y64[t*D+d] * w64[v*D+d]
			}
			mx = max(mx, z[v])
		}
		var se float64
		for v := range V {
			z[v] = math.Exp(z[v] - mx)
			se += z[v]
		}
		for v := range V {
			p := z[v] / se
			if v == int(targets[t]) {
				p--
			}
			for d := range D {
				wantDy[t*D+d] += gs * p * w64[v*D+d]
			}
		}
	}
	wt, wn := PackB(true, V, D, w, D), PackB(false, D, V, w, D)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	var first []float32
	for _, procs := range []int{1, 2, 3} {
		runtime.GOMAXPROCS(procs)
		for _, chunk := range []int{64, 33} {
			scratch := make([]float32, chunk*V)
			dyWant, dyGot := make([]float32, T*D), make([]float32, T*D)
			lw, nw := CrossEntropyLMHead(dyWant, y, w, targets, T, D, V, chunk, gs, scratch)
			lg, ng := CrossEntropyLMHeadPacked(dyGot, y, w, wt, wn, targets, T, chunk, gs, scratch)
			lo, no := CrossEntropyLMHeadPacked(nil, y, w, wt, nil, targets, T, chunk, 0, scratch)
			if nw != wantN || ng != wantN || no != wantN {
				t.Fatalf("procs %d chunk %d: counts %d %d %d, want %d", procs, chunk, nw, ng, no, wantN)
			}
			if lg != lw || lo != lw {
				t.Errorf("procs %d chunk %d: loss %v (loss only %v), unpacked %v", procs, chunk, lg, lo, lw)
			}
			if math.Abs(lg-wantLoss) > 1e-5*max(1, math.Abs(wantLoss)) {
				t.Errorf("procs %d chunk %d: loss %.9g, want %.9g", procs, chunk, lg, wantLoss)
			}
			for i := range dyWant {
				if math.Float32bits(dyWant[i]) != math.Float32bits(dyGot[i]) {
					t.Fatalf("procs %d chunk %d: dy[%d] = %v, unpacked %v", procs, chunk, i, dyGot[i], dyWant[i])
				}
			}
			if e := maxRelErr(dyGot, wantDy, 1e-6); e > 1e-4 {
				t.Errorf("procs %d chunk %d: dy max rel err %.3g", procs, chunk, e)
			}
			if first == nil {
				first = dyGot
			} else if !slices.Equal(first, dyGot) {
				t.Errorf("procs %d chunk %d: dy differs from procs 1", procs, chunk)
			}
		}
	}
}

// adamRef is PyTorch's AdamW (torch/optim/adamw.py, single-tensor path)
// written out in float64.
func adamRef(p, m, v, g []float64, step int, lr, b1, b2, eps, wd float64) {
	for i := range p {
		p[i] *= 1 - lr*wd
		m[i] = b1*m[i] + (1-b1)*g[i]
		v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
		bc1 := 1 - math.Pow(b1, float64(step))
		bc2 := 1 - math.Pow(b2, float64(step))
		denom := math.Sqrt(v[i])/math.Sqrt(bc2) + eps
		p[i] -= lr / bc1 * m[i] / denom
	}
}

func TestAdamWStepReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	n := 50
	p := randSlice(rng, n, 1)
	m, v := make([]float32, n), make([]float32, n)
	p64, m64, v64 := to64(p), make([]float64, n), make([]float64, n)
	for step := 1; step <= 5; step++ {
		g := randSlice(rng, n, 0.1)
		lr := CosineLR(step, 2, 5, 1e-2, 1e-3)
		AdamWStep(p, g, m, v, step, lr, 0.9, 0.95, 1e-8, 0.1)
		adamRef(p64, m64, v64, to64(g), step, float64(lr), 0.9, 0.95, 1e-8, 0.1)
		if e := maxRelErr(p, p64, 1); e > 1e-6 {
			t.Fatalf("step %d: params rel err %.3g", step, e)
		}
		if e := maxRelErr(m, m64, 1e-3); e > 1e-6 {
			t.Fatalf("step %d: m rel err %.3g", step, e)
		}
	}
}

func TestCosineLR(t *testing.T) {
	const maxLR, minLR = 3e-3, 3e-4
	warm, total := 10, 110
	for _, step := range []int{0, 1, 5, 9, 10, 11, 35, 60, 85, 109, 110, 500} {
		var want float64
		switch {
		case step < warm:
			want = maxLR * float64(step) / float64(warm)
		case step >= total:
			want = minLR
		default:
			ratio := float64(step-warm) / float64(total-warm)
			want = minLR + 0.5*(maxLR-minLR)*(1+math.Cos(math.Pi*ratio))
		}
		if got := CosineLR(step, warm, total, maxLR, minLR); math.Abs(float64(got)-want) > 1e-6*maxLR {
			t.Errorf("step %d: lr %.9g, want %.9g", step, got, want)
		}
	}
	if got := CosineLR(60, warm, total, maxLR, minLR); math.Abs(float64(got)-(maxLR+minLR)/2) > 1e-9 {
		t.Errorf("midpoint lr %.9g, want %.9g", got, (maxLR+minLR)/2)
	}
}

func TestClipGradNorm(t *testing.T) {
	a, b := []float32{3, 0}, []float32{0, 4}
	if n := GradNorm(a, b); n != 5 {
		t.Fatalf("GradNorm = %v, want 5", n)
	}
	if n := ClipGradNorm(10, a, b); n != 5 || a[0] != 3 || b[1] != 4 {
		t.Fatalf("clip above norm changed grads: norm %v, %v %v", n, a, b)
	}
	if n := ClipGradNorm(0, a, b); n != 5 || a[0] != 3 || b[1] != 4 {
		t.Fatalf("maxNorm 0 changed grads: norm %v, %v %v", n, a, b)
	}
	n := ClipGradNorm(1, a, b)
	if n != 5 {
		t.Fatalf("ClipGradNorm returned %v, want the pre-clip norm 5", n)
	}
	if after := GradNorm(a, b); math.Abs(after-1) > 1e-6 {
		t.Fatalf("norm after clipping %v, want 1", after)
	}
}

// torchScript runs 3 steps of torch.optim.AdamW and clip_grad_norm_ on the
// given params and grads and prints the results as JSON.
const torchScript = `
import json, sys, torch
d = json.load(sys.stdin)
p = torch.nn.Parameter(torch.tensor(d["p"], dtype=torch.float32))
opt = torch.optim.AdamW([p], lr=d["lr"], betas=(d["b1"], d["b2"]), eps=d["eps"], weight_decay=d["wd"])
for g in d["grads"]:
    opt.zero_grad()
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()
q = torch.nn.Parameter(torch.zeros(len(d["clip"])))
q.grad = torch.tensor(d["clip"], dtype=torch.float32)
norm = torch.nn.utils.clip_grad_norm_([q], d["maxnorm"])
print(json.dumps({"p": p.detach().tolist(), "norm": float(norm), "clipped": q.grad.tolist()}))
`

// TestAdamWTorch checks AdamWStep and ClipGradNorm against PyTorch itself
// (Debian's /usr/bin/python3 with torch), skipping where it is absent
// (failing when CARRYON_REQUIRE_TORCH=1).
func TestAdamWTorch(t *testing.T) {
	if testing.Short() {
		t.Skip("starts python")
	}
	rng := rand.New(rand.NewPCG(13, 14))
	n := 20
	p := randSlice(rng, n, 1)
	grads := [][]float32{randSlice(rng, n, 1), randSlice(rng, n, 0.01), randSlice(rng, n, 3)}
	clip := randSlice(rng, n, 2)
	const lr, b1, b2, eps, wd, maxNorm = 1e-2, 0.9, 0.999, 1e-8, 0.05, 1.5
	in, err := json.Marshal(map[string]any{"p": p, "grads": grads, "lr": lr, "b1": b1, "b2": b2,
		"eps": eps, "wd": wd, "clip": clip, "maxnorm": maxNorm})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", torchScript)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || strings.Contains(stderr.String(), "No module named")) {
		testenv.Missing(t, "CARRYON_REQUIRE_TORCH", "python3 with torch unavailable: %v %s", err, stderr.String())
	}
	if err != nil {
		t.Fatalf("torch script: %v\n%s", err, stderr.String())
	}
	var res struct {
		P       []float64 `json:"p"`
		Norm    float64   `json:"norm"`
		Clipped []float64 `json:"clipped"`
	}
	if err := json.Unmarshal(outb, &res); err != nil {
		t.Fatalf("torch output %q: %v", outb, err)
	}
	m, v := make([]float32, n), make([]float32, n)
	for i, g := range grads {
		AdamWStep(p, g, m, v, i+1, lr, b1, b2, eps, wd)
	}
	if e := maxRelErr(p, res.P, 1); e > 1e-6 {
		t.Errorf("AdamW vs torch after 3 steps: rel err %.3g\n got %v\nwant %v", e, p[:4], res.P[:4])
	}
	norm := ClipGradNorm(maxNorm, clip)
	if math.Abs(norm-res.Norm) > 1e-5*res.Norm {
		t.Errorf("ClipGradNorm norm %v, torch %v", norm, res.Norm)
	}
	if e := maxRelErr(clip, res.Clipped, 1e-3); e > 1e-6 {
		t.Errorf("clipped grads vs torch: rel err %.3g", e)
	}
}

func benchAttention(b *testing.B, backward bool) {
	T, nHead, nKV, hd := 512, 14, 2, 64
	rng := rand.New(rand.NewPCG(1, 1))
	q := randSlice(rng, T*nHead*hd, 1)
	k := randSlice(rng, T*nKV*hd, 1)
	v := randSlice(rng, T*nKV*hd, 1)
	out := make([]float32, T*nHead*hd)
	lse := make([]float32, nHead*T)
	scratch := make([]float32, AttentionScratch(T, hd))
	AttentionForward(out, lse, q, k, v, scratch, T, nHead, nKV, hd)
	dout := randSlice(rng, len(out), 1)
	dq, dk, dv := make([]float32, len(q)), make([]float32, len(k)), make([]float32, len(v))
	b.ResetTimer()
	for range b.N {
		if backward {
			AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse, scratch, T, nHead, nKV, hd)
		} else {
			AttentionForward(out, lse, q, k, v, scratch, T, nHead, nKV, hd)
		}
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkAttentionForward(b *testing.B)  { benchAttention(b, false) }
func BenchmarkAttentionBackward(b *testing.B) { benchAttention(b, true) }

func BenchmarkCrossEntropyLMHead(b *testing.B) {
	T, D, V, chunk := 256, 896, 32000, 64
	rng := rand.New(rand.NewPCG(2, 2))
	y := randSlice(rng, T*D, 1)
	w := randSlice(rng, V*D, 0.05)
	targets := randTargets(rng, T, V)
	dy := make([]float32, T*D)
	scratch := make([]float32, chunk*V)
	b.ResetTimer()
	for range b.N {
		CrossEntropyLMHead(dy, y, w, targets, T, D, V, chunk, 1, scratch)
	}
	b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// TestExpf32 sweeps the fast exp used by attention against math.Exp.
func TestExpf32(t *testing.T) {
	var worst float64
	for x := float32(-87); x < 88.5; x += 0.0137 {
		want := math.Exp(float64(x))
		got := float64(expf32(x))
		worst = max(worst, math.Abs(got-want)/want)
	}
	if worst > 3e-7 {
		t.Errorf("expf32 max rel err %.3g > 3e-7", worst)
	}
	if expf32(float32(math.Inf(-1))) != 0 || expf32(-200) != 0 || !math.IsInf(float64(expf32(100)), 1) ||
		expf32(0) != 1 {
		t.Errorf("expf32 edge values: %v %v %v %v", expf32(float32(math.Inf(-1))), expf32(-200), expf32(100), expf32(0))
	}
}
