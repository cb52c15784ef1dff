package lora

import (
	"math"
	"math/rand/v2"
	"testing"

	"carryon/model"
)

func testTrainer(t *testing.T) *model.BaseTrainer {
	t.Helper()
	cfg := model.DemoConfig()
	cfg.Dim, cfg.Layers, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.FFN, cfg.MaxPos = 32, 2, 2, 1, 16, 48, 32
	b, err := model.NewRandomBase(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	model.InitTrainWeights(b, 3)
	tr, err := model.NewBaseTrainer(b, 1, 16)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func testSeqs(vocab int) [][]int32 {
	rng := rand.New(rand.NewPCG(5, 5))
	var seqs [][]int32
	for _, n := range []int{9, 13} {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(vocab))
		}
		seqs = append(seqs, s)
	}
	return seqs
}

// TestGradFD checks dL/dA and dL/dB of every adapted projection against
// central finite differences of the mean loss (B made non-zero first, so
// that A receives a gradient).
func TestGradFD(t *testing.T) {
	tr := testTrainer(t)
	ad, err := New(tr, Config{Rank: 2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * 7; len(ad.mats) != want {
		t.Fatalf("%d adapted weights, want %d (7 projections × 2 layers)", len(ad.mats), want)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	for _, m := range ad.mats {
		for j := range m.b {
			m.b[j] = float32(rng.NormFloat64() * 0.05)
		}
	}
	seqs := testSeqs(tr.Base.Config.Vocab)
	loss := func() float64 {
		l, n, err := ad.Loss(seqs)
		if err != nil {
			t.Fatal(err)
		}
		return l / float64(n)
	}
	if _, _, err := ad.LossAndGrad(seqs); err != nil {
		t.Fatal(err)
	}
	const eps = 1e-2
	checked := 0
	for _, m := range ad.mats {
		for _, p := range []struct {
			name string
			w, g []float32
		}{{"A", m.a, m.ga}, {"B", m.b, m.gb}} {
			g := append([]float32(nil), p.g...)
			for _, j := range []int{0, len(p.w) / 2, len(p.w) - 1} {
				old := p.w[j]
				p.w[j] = old + eps
				lp := loss()
				p.w[j] = old - eps
				lm := loss()
				p.w[j] = old
				fd := (lp - lm) / (2 * eps)
				if d := math.Abs(fd - float64(g[j])); d > 2e-3+0.05*math.Abs(fd) {
					t.Errorf("%s %s[%d]: analytic %.6g, finite difference %.6g", m.name, p.name, j, g[j], fd)
				}
				checked++
			}
		}
	}
	t.Logf("%d gradient entries checked", checked)
}

// TestStartsAtBaseAndLearns: with B = 0 the merged model is the base
// exactly, and a few steps lower the loss while W0 stays put.
func TestStartsAtBaseAndLearns(t *testing.T) {
	tr := testTrainer(t)
	seqs := testSeqs(tr.Base.Config.Vocab)
	l0, n, err := tr.Loss(seqs)
	if err != nil {
		t.Fatal(err)
	}
	ad, err := New(tr, Config{Rank: 4, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	l1, _, err := ad.Loss(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if l0 != l1 {
		t.Fatalf("merged model with B = 0: loss %v, base %v", l1, l0)
	}
	w0 := append([]float32(nil), ad.mats[0].w0...)
	var last float64
	for range 20 {
		l, _, err := ad.LossAndGrad(seqs)
		if err != nil {
			t.Fatal(err)
		}
		ad.Update(1e-2, 0, 1)
		last = l
	}
	if !(last/float64(n) < l0/float64(n)-0.1) {
		t.Errorf("20 steps: loss %.4f, base %.4f: want it lower by 0.1", last/float64(n), l0/float64(n))
	}
	for i, v := range ad.mats[0].w0 {
		if v != w0[i] {
			t.Fatal("W0 changed")
		}
	}
	if ad.NumParams() == 0 {
		t.Error("no trained parameters")
	}
}
