package model

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"carryon/tensor"
)

// tinyTrainConfigs are the shapes the trainer is checked on: a tied qwen2
// with q/k/v biases and grouped-query attention, and an untied llama
// without biases.
func tinyTrainConfigs() []Config {
	return []Config{
		{Arch: "qwen2", Dim: 8, Layers: 2, Heads: 2, KVHeads: 1, HeadDim: 4, FFN: 12, Vocab: 11, MaxPos: 16,
			RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: -1},
		{Arch: "llama", Dim: 8, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 2, FFN: 10, Vocab: 9, MaxPos: 16,
			RopeTheta: 500, NormEps: 1e-5, TiedEmbeddings: false, BOS: -1, EOS: -1},
	}
}

// refBaseLoss is an independent float64 forward of a whole base (written
// from the HF modelling code, not from our kernels): the next-token
// cross-entropy summed over the positions of seqs. p maps HF tensor names
// to weights.
func refBaseLoss(c Config, p map[string][]float64, seqs [][]int32) float64 {
	D, hd, H, KV, F := c.Dim, c.HeadDim, c.Heads, c.KVHeads, c.FFN
	eps := float64(c.NormEps)
	rms := func(x []float64, w []float64) []float64 { return refRMSNorm(x, w, eps) }
	lin := refLinear[float64]
	rope := func(v []float64, pos int) { // one head, rotate-half
		half := hd / 2
		for i := range half {
			ang := float64(pos) * math.Pow(c.RopeTheta, -float64(2*i)/float64(hd))
			s, co := math.Sincos(ang)
			a, b := v[i], v[i+half]
			v[i], v[i+half] = a*co-b*s, a*s+b*co
		}
	}
	head := p["lm_head.weight"]
	if c.TiedEmbeddings {
		head = p["model.embed_tokens.weight"]
	}
	var total float64
	for _, s := range seqs {
		T := len(s) - 1
		x := make([][]float64, T)
		for t := range T {
			x[t] = slices.Clone(p["model.embed_tokens.weight"][int(s[t])*D : int(s[t]+1)*D])
		}
		for l := range c.Layers {
			pre := "model.layers." + strconv.Itoa(l) + "."
			q := make([][]float64, T)
			k := make([][]float64, T)
			v := make([][]float64, T)
			for t := range T {
				xn := rms(x[t], p[pre+"input_layernorm.weight"])
				q[t] = lin(xn, p[pre+"self_attn.q_proj.weight"], p[pre+"self_attn.q_proj.bias"], H*hd)
				k[t] = lin(xn, p[pre+"self_attn.k_proj.weight"], p[pre+"self_attn.k_proj.bias"], KV*hd)
				v[t] = lin(xn, p[pre+"self_attn.v_proj.weight"], p[pre+"self_attn.v_proj.bias"], KV*hd)
				for h := range H {
					rope(q[t][h*hd:(h+1)*hd], t)
				}
				for h := range KV {
					rope(k[t][h*hd:(h+1)*hd], t)
				}
			}
			for t := range T {
				att := refCausalAttention(q, k, v, t, H, KV, hd)
				o := lin(att, p[pre+"self_attn.o_proj.weight"], nil, D)
				for i := range D {
					x[t][i] += o[i]
				}
			}
			for t := range T {
				xn := rms(x[t], p[pre+"post_attention_layernorm.weight"])
				g := lin(xn, p[pre+"mlp.gate_proj.weight"], nil, F)
				u := lin(xn, p[pre+"mlp.up_proj.weight"], nil, F)
				for i := range F {
					g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
				}
				d := lin(g, p[pre+"mlp.down_proj.weight"], nil, D)
				for i := range D {
					x[t][i] += d[i]
				}
			}
		}
		for t := range T {
			xf := rms(x[t], p["model.norm.weight"])
			logits := lin(xf, head, nil, c.Vocab)
			mx := slices.Max(logits)
			var z float64
			for _, l := range logits {
				z += math.Exp(l - mx)
			}
			total += mx + math.Log(z) - logits[s[t+1]]
		}
	}
	return total
}

// trainTestSeqs returns sequences of different lengths over vocab.
func trainTestSeqs(rng *rand.Rand, vocab int, lens ...int) [][]int32 {
	out := make([][]int32, len(lens))
	for i, n := range lens {
		out[i] = make([]int32, n)
		for j := range out[i] {
			out[i][j] = int32(rng.IntN(vocab))
		}
	}
	return out
}

// TestBaseTrainerGradFD checks the trainer's loss against the float64
// reference forward, and the gradient of EVERY weight (every element of
// every tensor) against central differences of that reference in float64,
// so neither our forward nor our backward is trusted. Sequences of several
// lengths are dealt to two workers, so the cross-worker sum is covered.
// The analytic gradients are float32: the error bound is 2e-4 of the
// tensor's largest gradient (a wrong term gives O(1)); each tensor's largest
// gradient must also be large enough for that bound to mean something.
func TestBaseTrainerGradFD(t *testing.T) {
	for _, cfg := range tinyTrainConfigs() {
		t.Run(cfg.Arch, func(t *testing.T) {
			b := randomBase(t, cfg, 7)
			tr := trainerOn(t, b, 2, 8)
			seqs := trainTestSeqs(rand.New(rand.NewPCG(1, 2)), cfg.Vocab, 7, 9, 3)
			lossSum, count, err := tr.LossAndGrad(seqs)
			if err != nil {
				t.Fatal(err)
			}
			if count != 6+8+2 {
				t.Fatalf("count %d, want 16", count)
			}
			p := map[string][]float64{}
			for i, name := range tr.ParamNames() {
				w := tr.Params()[i]
				p[name] = make([]float64, len(w))
				for j, x := range w {
					p[name][j] = float64(x)
				}
			}
			ref := refBaseLoss(cfg, p, seqs)
			if math.Abs(lossSum-ref) > 1e-5*math.Abs(ref) {
				t.Errorf("loss sum %.8g, float64 reference %.8g", lossSum, ref)
			}
			const h = 1e-5
			grads := tr.Grads()
			for i, name := range tr.ParamNames() {
				if cfg.TiedEmbeddings && name == "lm_head.weight" {
					continue
				}
				w := p[name]
				var maxG, maxErr float64
				fds := make([]float64, len(w))
				for j := range w {
					w0 := w[j]
					w[j] = w0 + h
					lp := refBaseLoss(cfg, p, seqs)
					w[j] = w0 - h
					lm := refBaseLoss(cfg, p, seqs)
					w[j] = w0
					fds[j] = (lp - lm) / (2 * h) / float64(count)
					maxG = math.Max(maxG, math.Abs(fds[j]))
				}
				for j, fd := range fds {
					maxErr = math.Max(maxErr, math.Abs(float64(grads[i][j])-fd))
				}
				if maxErr > 2e-4*maxG {
					t.Errorf("%s: max |analytic − numeric| %.3g for max |grad| %.3g", name, maxErr, maxG)
				}
				if maxG < 1e-3 {
					t.Errorf("%s: largest gradient %.3g is too small for the check to mean anything", name, maxG)
				}
			}
		})
	}
}

// TestBaseTrainerMatchesForward checks that the trainer's forward (which
// saves activations) computes what model.Base.Forward computes: the final
// hidden states agree, and so does the loss from Base.Logits.
func TestBaseTrainerMatchesForward(t *testing.T) {
	cfg := Config{Arch: "qwen2", Dim: 32, Layers: 3, Heads: 4, KVHeads: 2, HeadDim: 8, FFN: 48, Vocab: 50, MaxPos: 128,
		RopeTheta: 1e4, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: -1}
	b := randomBase(t, cfg, 3)
	tr := trainerOn(t, b, 1, 100)
	seq := trainTestSeqs(rand.New(rand.NewPCG(3, 4)), cfg.Vocab, 101)[0]
	lossSum, n, err := tr.Loss([][]int32{seq})
	if err != nil {
		t.Fatal(err)
	}
	T, D := len(seq)-1, cfg.Dim
	got := tr.workers[0].xf[:T*D]
	h, err := b.Forward(seq[:T], []int{FinalLayer})
	if err != nil {
		t.Fatal(err)
	}
	var maxDiff, maxRef float64
	for i, v := range h[0] {
		maxDiff = math.Max(maxDiff, math.Abs(float64(v-got[i])))
		maxRef = math.Max(maxRef, math.Abs(float64(v)))
	}
	if maxDiff > 1e-5*maxRef {
		t.Errorf("final hidden states differ by %.3g (max |h| %.3g)", maxDiff, maxRef)
	}
	logits := b.Logits(h[0], T)
	var want float64
	for t := range T {
		row := logits[t*cfg.Vocab : (t+1)*cfg.Vocab]
		mx := slices.Max(row)
		var z float64
		for _, l := range row {
			z += math.Exp(float64(l - mx))
		}
		want += float64(mx) + math.Log(z) - float64(row[seq[t+1]])
	}
	if n != T || math.Abs(lossSum-want) > 1e-5*want {
		t.Errorf("loss %.7g over %d, from Base.Forward %.7g over %d", lossSum, n, want, T)
	}
}

// TestBaseTrainerLearnsAndIsDeterministic trains two trainers from the
// same seed: their weights must match bit for bit after every step, and a
// repeated batch must be fitted (the loss falls well below its start).
func TestBaseTrainerLearnsAndIsDeterministic(t *testing.T) {
	cfg := tinyTrainConfigs()[0]
	cfg.Dim, cfg.HeadDim, cfg.FFN, cfg.Vocab = 16, 8, 32, 17
	newTr := func() *BaseTrainer {
		b := randomBase(t, cfg, 1)
		InitTrainWeights(b, 5)
		tr := trainerOn(t, b, 2, 12)
		return tr
	}
	a, c := newTr(), newTr()
	seqs := trainTestSeqs(rand.New(rand.NewPCG(5, 6)), cfg.Vocab, 13, 13, 9, 11)
	var first, last float64
	for step := range 60 {
		la, n, err := a.LossAndGrad(seqs)
		if err != nil {
			t.Fatal(err)
		}
		lc, _, _ := c.LossAndGrad(seqs)
		if la != lc {
			t.Fatalf("step %d: losses %v and %v differ", step, la, lc)
		}
		a.Update(1e-2, 0.01, 1)
		c.Update(1e-2, 0.01, 1)
		for i, p := range a.Params() {
			if !slices.Equal(p, c.Params()[i]) {
				t.Fatalf("step %d: %s differs between identical runs", step, a.ParamNames()[i])
			}
		}
		if step == 0 {
			first = la / float64(n)
		}
		last = la / float64(n)
	}
	if math.Abs(first-math.Log(float64(cfg.Vocab))) > 0.2 {
		t.Errorf("initial loss %.3f, want about ln V = %.3f (small init)", first, math.Log(float64(cfg.Vocab)))
	}
	if last > first/2 {
		t.Errorf("loss went from %.3f to %.3f in 60 steps on one batch: not learning", first, last)
	}
}

// TestBaseTrainerCheckpoint checks that a run stopped at a checkpoint and
// resumed (weights through SaveHF/LoadBase, moments through
// SaveState/LoadState) continues exactly like an uninterrupted run, and that
// the bf16 export loads back as the rounded weights.
func TestBaseTrainerCheckpoint(t *testing.T) {
	cfg := tinyTrainConfigs()[0]
	dir := t.TempDir()
	b, _ := NewRandomBase(cfg, 2)
	InitTrainWeights(b, 9)
	full := trainerOn(t, b, 1, 8)
	seqs := trainTestSeqs(rand.New(rand.NewPCG(7, 8)), cfg.Vocab, 9, 6)
	step := func(tr *BaseTrainer) {
		if _, _, err := tr.LossAndGrad(seqs); err != nil {
			t.Fatal(err)
		}
		tr.Update(5e-3, 0.1, 1)
	}
	step(full)
	step(full)
	if err := full.SaveCheckpoint(dir); err != nil {
		t.Fatal(err)
	}
	step(full)
	lb, err := LoadBase(dir)
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := NewBaseTrainer(lb, 1, 8)
	lb.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := resumed.LoadState(filepath.Join(dir, "optim.safetensors")); err != nil {
		t.Fatal(err)
	}
	if resumed.StepCount() != 2 {
		t.Fatalf("resumed at step %d, want 2", resumed.StepCount())
	}
	step(resumed)
	for i, p := range full.Params() {
		if !slices.Equal(p, resumed.Params()[i]) {
			t.Fatalf("%s: resumed run differs from the uninterrupted one", full.ParamNames()[i])
		}
	}

	bdir := filepath.Join(dir, "bf16")
	if err := full.Base.SaveHFBF16(bdir); err != nil {
		t.Fatal(err)
	}
	js, _ := os.ReadFile(filepath.Join(bdir, "config.json"))
	if !strings.Contains(string(js), `"torch_dtype": "bfloat16"`) {
		t.Errorf("config.json does not record bfloat16:\n%s", js)
	}
	st, _ := os.Stat(filepath.Join(bdir, "model.safetensors"))
	if st.Size() > 2*cfg.NumParams()+4096 {
		t.Errorf("bf16 file is %d bytes for %d parameters", st.Size(), cfg.NumParams())
	}
	bb, err := LoadBase(bdir)
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Close()
	if bb.Config != cfg {
		t.Errorf("config %+v, want %+v", bb.Config, cfg)
	}
	src, got := full.Base.tensors(), bb.tensors()
	for i := range src {
		for j, v := range src[i].data {
			if want := tensor.BF16ToF32(tensor.F32ToBF16(v)); got[i].data[j] != want {
				t.Fatalf("%s[%d] = %v, want bf16(%v) = %v", src[i].name, j, got[i].data[j], v, want)
			}
		}
	}
}

// trainerOn is NewBaseTrainer(b, workers, maxLen); it fails t on an error.
func trainerOn(t testing.TB, b *Base, workers, maxLen int) *BaseTrainer {
	t.Helper()
	tr, err := NewBaseTrainer(b, workers, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}
