package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"carryon/internal/testenv"
	"carryon/tensor"
)

// stories260KSHA256 is the checksum given in shared/data/README.md.
const stories260KSHA256 = "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6"

func stories260K(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.Shared(t), "data", "stories260K", "stories260K.bin")
}

// greedy extends prompt by n tokens, each the argmax of our logits.
func greedy(t *testing.T, b *Base, prompt []int32, n int) []int32 {
	t.Helper()
	seq := slices.Clone(prompt)
	for range n {
		out, err := b.Forward(seq, []int{FinalLayer})
		if err != nil {
			t.Fatal(err)
		}
		T := len(seq)
		logits := b.Logits(out[0][(T-1)*b.Config.Dim:], 1)
		seq = append(seq, int32(argmax(logits)))
	}
	return seq
}

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// meanNLL is the mean next-token cross-entropy (nats) of seq under b,
// counting positions from 'from' on.
func meanNLL(t *testing.T, b *Base, seq []int32, from int) float64 {
	t.Helper()
	out, err := b.Forward(seq, []int{FinalLayer})
	if err != nil {
		t.Fatal(err)
	}
	V := b.Config.Vocab
	logits := b.Logits(out[0], len(seq))
	var sum float64
	for p := from; p < len(seq)-1; p++ {
		sum -= logSoftmax(logits[p*V : (p+1)*V])[seq[p+1]]
	}
	return sum / float64(len(seq)-1-from)
}

func TestStories260K(t *testing.T) {
	path := stories260K(t)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != stories260KSHA256 {
		t.Fatalf("%s: sha256 %x, want %s (README)", path, sum, stories260KSHA256)
	}
	b, err := LoadLlama2C(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := b.Config
	if c.Dim != 64 || c.FFN != 172 || c.Layers != 5 || c.Heads != 8 || c.KVHeads != 4 || c.Vocab != 512 ||
		c.MaxPos != 512 || !c.TiedEmbeddings || c.HeadDim != 8 {
		t.Errorf("config %+v", c)
	}
	if b.WeightsHash != stories260KSHA256 {
		t.Errorf("WeightsHash %s, want the file's sha256", b.WeightsHash)
	}
	seq := greedy(t, b, []int32{1}, 60)
	nll := meanNLL(t, b, seq, 0)
	t.Logf("greedy from BOS: %v; mean NLL %.3f nats (uniform: ln 512 = %.3f)", seq, nll, math.Log(512))
	if nll > 1.5 {
		t.Errorf("mean NLL %.3f on the model's own greedy text: want well below ln 512 = %.2f", nll, math.Log(512))
	}
	// Negative control: without the RoPE permutation (q/k rows back in
	// llama2.c's interleaved order, run with rotate-half RoPE) the same text
	// is much less likely.
	bad, _ := parseLlama2C(data)
	for i := range bad.layers {
		w := &bad.layers[i]
		w.wq = f32Matrix(halfToInterleaved(w.wq.f, c.Heads, c.HeadDim, c.Dim))
		w.wk = f32Matrix(halfToInterleaved(w.wk.f, c.KVHeads, c.HeadDim, c.Dim))
	}
	if badNLL := meanNLL(t, bad, seq, 0); badNLL < nll+0.5 {
		t.Errorf("unpermuted RoPE layout: NLL %.3f, want clearly above %.3f", badNLL, nll)
	}
}

// halfToInterleaved undoes interleavedToHalf (a copy).
func halfToInterleaved(w []float32, heads, hd, in int) []float32 {
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for i := 0; i < hd/2; i++ {
			src := w[h*hd*in:]
			dst := out[h*hd*in:]
			copy(dst[2*i*in:(2*i+1)*in], src[i*in:(i+1)*in])
			copy(dst[(2*i+1)*in:(2*i+2)*in], src[(hd/2+i)*in:(hd/2+i+1)*in])
		}
	}
	return out
}

// TestStories260KOracle exports stories260K as an HF llama checkpoint, runs
// it through llama.cpp (whose llama arch uses the interleaved layout again,
// after hf2gguf's permutation) and checks hidden states, log-probs and the
// greedy continuations.
func TestStories260KOracle(t *testing.T) {
	path := stories260K(t)
	tools := oracleTools(t)
	b, err := LoadLlama2C(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Prompt B: BOS and six tokens sampled from the model at temperature 1.
	rng := rand.New(rand.NewPCG(1, 2))
	promptB := []int32{1}
	for range 6 {
		out, _ := b.Forward(promptB, []int{FinalLayer})
		lp := logSoftmax(b.Logits(out[0][(len(promptB)-1)*b.Config.Dim:], 1))
		u, v := rng.Float64(), 0
		for ; v < len(lp)-1; v++ {
			if u -= math.Exp(lp[v]); u <= 0 {
				break
			}
		}
		promptB = append(promptB, int32(v))
	}
	prompts := [][]int32{{1}, promptB}
	var seqs [][]int32
	for _, p := range prompts {
		seqs = append(seqs, greedy(t, b, p, 40))
	}
	hf := filepath.Join(t.TempDir(), "hf")
	if err := b.SaveHF(hf); err != nil {
		t.Fatal(err)
	}
	ref := runOracle(t, tools, hf, seqs)
	checkOracle(t, "stories260K (llama2.c)", compareOracle(t, b, ref))
	for i, s := range seqs {
		for p := len(prompts[i]) - 1; p < len(s)-1; p++ {
			lp := ref[i].Logprobs[p]
			best := 0
			for v := range lp {
				if lp[v] != nil && (lp[best] == nil || *lp[v] > *lp[best]) {
					best = v
				}
			}
			if int32(best) != s[p+1] {
				t.Fatalf("prompt %d: llama.cpp's greedy token after position %d is %d, ours %d", i, p, best, s[p+1])
			}
		}
	}
	// The exported checkpoint loads back to the same model.
	back, err := LoadBase(hf)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if got, want := mustForward(t, back, seqs[1], FinalLayer), mustForward(t, b, seqs[1], FinalLayer); testenv.MaxRel(got, want) != 0 {
		t.Errorf("SaveHF/LoadBase round trip changed the forward pass")
	}
}

// TestInterleavedPermutation checks the load-time permutation on its own:
// interleaved RoPE on W·x equals rotate-half RoPE on perm(W)·x, with the
// output rows reordered the same way.
func TestInterleavedPermutation(t *testing.T) {
	const heads, hd, in, T = 3, 8, 5, 7
	rng := rand.New(rand.NewPCG(3, 4))
	w := make([]float32, heads*hd*in)
	x := make([]float32, T*in)
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	pos := []int32{0, 1, 2, 5, 9, 30, 63}
	scaling := &tensor.RoPEScaling{Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalContext: 16}
	q1 := make([]float32, T*heads*hd)
	tensor.LinearForward(q1, x, w, nil, T, in, heads*hd)
	tensor.NewRoPE(hd, 64, 1e4, scaling, true).Forward(q1, pos, T, heads)
	wp := interleavedToHalf(slices.Clone(w), heads, hd, in)
	q2 := make([]float32, T*heads*hd)
	tensor.LinearForward(q2, x, wp, nil, T, in, heads*hd)
	tensor.NewRoPE(hd, 64, 1e4, scaling, false).Forward(q2, pos, T, heads)
	for r := 0; r < T*heads; r++ {
		for i := 0; i < hd/2; i++ {
			a, b := q1[r*hd+2*i], q2[r*hd+i]
			c, d := q1[r*hd+2*i+1], q2[r*hd+hd/2+i]
			if math.Abs(float64(a-b)) > 1e-5 || math.Abs(float64(c-d)) > 1e-5 {
				t.Fatalf("row %d pair %d: interleaved (%g, %g), permuted rotate-half (%g, %g)", r, i, a, c, b, d)
			}
		}
	}
	if !slices.Equal(halfToInterleaved(wp, heads, hd, in), w) {
		t.Errorf("halfToInterleaved does not invert interleavedToHalf")
	}
}

// llama2cFile builds a random llama2.c checkpoint for cfg.
func llama2cFile(cfg Config, shared bool, seed uint64) []byte {
	vocab := int32(cfg.Vocab)
	if !shared {
		vocab = -vocab
	}
	hdr := []int32{int32(cfg.Dim), int32(cfg.FFN), int32(cfg.Layers), int32(cfg.Heads), int32(cfg.KVHeads), vocab, int32(cfg.MaxPos)}
	c := cfg
	c.TiedEmbeddings = shared
	n := llama2cFloats(c)
	out := make([]byte, 0, llama2cHeaderBytes+4*n)
	for _, h := range hdr {
		out = binary.LittleEndian.AppendUint32(out, uint32(h))
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	for range n {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(0.2*rng.NormFloat64())))
	}
	return out
}

func TestLlama2CSynthetic(t *testing.T) {
	cfg := Config{Dim: 16, FFN: 24, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 4, Vocab: 20, MaxPos: 32}
	for _, shared := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "m.bin")
		data := llama2cFile(cfg, shared, 9)
		os.WriteFile(path, data, 0o644)
		b, err := LoadLlama2C(path)
		if err != nil {
			t.Fatal(err)
		}
		if b.Config.TiedEmbeddings != shared || (&b.LMHead()[0] == &b.Embeddings()[0]) != shared {
			t.Errorf("shared %v: tied %v", shared, b.Config.TiedEmbeddings)
		}
		if !shared { // the classifier is the last (vocab, dim) block of the file
			tail := data[len(data)-4*cfg.Vocab*cfg.Dim:]
			if got := math.Float32frombits(binary.LittleEndian.Uint32(tail)); b.LMHead()[0] != got {
				t.Errorf("unshared classifier not read from the file's end")
			}
		}
		if _, err := b.Forward([]int32{1, 2, 3}, []int{FinalLayer, 0}); err != nil {
			t.Fatal(err)
		}
		// Truncated and over-long files are refused with the sizes.
		for _, bad := range [][]byte{data[:len(data)-4], append(slices.Clone(data), 0, 0, 0, 0), data[:10]} {
			if _, err := parseLlama2C(bad); err == nil || !strings.Contains(err.Error(), "bytes") {
				t.Errorf("%d-byte file: err = %v", len(bad), err)
			}
		}
	}
}

func FuzzLlama2C(f *testing.F) {
	cfg := Config{Dim: 8, FFN: 12, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 4, Vocab: 6, MaxPos: 4}
	f.Add(llama2cFile(cfg, true, 1))
	f.Add(llama2cFile(cfg, false, 2))
	f.Add([]byte{64, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseLlama2C(data)
		if err != nil {
			return
		}
		if err := b.Config.Validate(); err != nil {
			t.Fatalf("accepted an invalid header: %v", err)
		}
		if _, err := b.Forward([]int32{0}, []int{FinalLayer}); err != nil {
			t.Fatal(err)
		}
	})
}
