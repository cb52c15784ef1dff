package devmodel

import (
	"math"
	"testing"

	"carryon/model"
	"carryon/tensor"
)

// testConfig is a small qwen2-like shape: GQA, biases, untied head.
func testConfig(arch string) model.Config {
	return model.Config{Arch: arch, Dim: 64, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16, FFN: 96, Vocab: 300,
		MaxPos: 256, RopeTheta: 10000, NormEps: 1e-6, QKVBias: arch == "qwen2", QKNorm: arch == "qwen3", BOS: -1, EOS: -1}
}

// relL2 is ‖got − want‖ / ‖want‖.
func relL2(got, want []float32) float64 {
	var d, n float64
	for i := range want {
		e := float64(got[i]) - float64(want[i])
		d += e * e
		n += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(d / n)
}

// TestForwardMatchesModel runs the backend forward on the CPU backend and
// compares every requested layer with model.Base on the same checkpoint:
// F32 weights within float32 rounding, BF16 weights within their rounding.
func TestForwardMatchesModel(t *testing.T) {
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		t.Run(arch, func(t *testing.T) {
			cfg := testConfig(arch)
			dir := t.TempDir()
			if err := model.WriteRandomBase(dir, cfg, 7); err != nil {
				t.Fatal(err)
			}
			want, err := model.LoadBase(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			seqs := [][]int32{{1, 5, 9, 200, 3, 3, 7}, {42}, make([]int32, 70)}
			for i := range seqs[2] {
				seqs[2][i] = int32(i * 4 % cfg.Vocab)
			}
			layers := []int{0, 1, cfg.Layers, model.FinalLayer}
			wantOut, err := want.ForwardBatch(seqs, layers)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name string
				opt  Options
				tol  float64
			}{{"f32", Options{F32: true}, 1e-5}, {"bf16", Options{}, 2e-2}} {
				b, err := Load(tensor.CPU(), dir, tc.opt)
				if err != nil {
					t.Fatal(err)
				}
				if b.WeightsHash != want.WeightsHash {
					t.Errorf("WeightsHash %s, model's %s", b.WeightsHash, want.WeightsHash)
				}
				got, err := b.ForwardBatch(seqs, layers)
				if err != nil {
					t.Fatal(err)
				}
				for s := range seqs {
					for i, l := range layers {
						if e := relL2(got[s][i], wantOut[s][i]); e > tc.tol || e != e {
							t.Errorf("%s: sequence %d layer %d: relative L2 error %.3g > %g", tc.name, s, l, e, tc.tol)
						}
					}
				}
				b.Close()
				if _, err := b.Forward([]int32{1}, layers); err == nil {
					t.Errorf("Forward after Close: no error")
				}
			}
		})
	}
}

func TestForwardRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := model.WriteRandomBase(dir, testConfig("qwen2"), 1); err != nil {
		t.Fatal(err)
	}
	b, err := Load(tensor.CPU(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, c := range []struct {
		seqs   [][]int32
		layers []int
	}{{[][]int32{{}}, []int{0}}, {[][]int32{{300}}, []int{0}}, {[][]int32{{1}}, nil}, {[][]int32{{1}}, []int{3}}, {nil, []int{0}}} {
		if _, err := b.ForwardBatch(c.seqs, c.layers); err == nil {
			t.Errorf("ForwardBatch(%v, %v): no error", c.seqs, c.layers)
		}
	}
}
