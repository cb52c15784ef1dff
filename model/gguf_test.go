package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"carryon/internal/testenv"
	"carryon/tensor"
	"carryon/tokenizer"
)

// hfToGGUF is the inverse of ggufToHF.
func hfToGGUF(t *testing.T, name string) string {
	for g, h := range ggufGlobal {
		if h == name {
			return g
		}
	}
	rest, ok := strings.CutPrefix(name, "model.layers.")
	n, suffix, _ := strings.Cut(rest, ".")
	for g, h := range ggufLayer {
		if ok && h == suffix {
			return "blk." + n + "." + g
		}
	}
	t.Fatalf("no GGUF name for %s", name)
	return ""
}

// permuteRoPE is llama.cpp's LlamaModel.permute, written from its numpy
// form: w.reshape(heads, 2, hd/2, ...).swapaxes(1, 2).
func permuteRoPE(w []float32, rows, heads int) []float32 {
	cols, hd := len(w)/rows, rows/heads
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for j := 0; j < hd/2; j++ {
			for s := 0; s < 2; s++ { // out row h, j, s = in row h, s, j
				src := (h*hd + s*hd/2 + j) * cols
				dst := (h*hd + 2*j + s) * cols
				copy(out[dst:dst+cols], w[src:src+cols])
			}
		}
	}
	return out
}

// llama3Divisors is hf2gguf.py's llama3_rope_factors.
func llama3Divisors(c Config) []float32 {
	s := c.RopeScaling
	var out []float32
	for i := 0; i < c.HeadDim; i += 2 {
		wave := 2 * math.Pi * math.Pow(c.RopeTheta, float64(i)/float64(c.HeadDim))
		switch {
		case wave < float64(s.OriginalContext)/s.HighFreqFactor:
			out = append(out, 1)
		case wave > float64(s.OriginalContext)/s.LowFreqFactor:
			out = append(out, float32(s.Factor))
		default:
			smooth := (float64(s.OriginalContext)/wave - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
			out = append(out, float32(1/((1-smooth)/s.Factor+smooth)))
		}
	}
	return out
}

// writeGGUFBase writes b as a llama.cpp-style GGUF: matrices as qt, 1-D
// tensors as F32, llama q/k permuted (unless noPermute), llama3 scaling as
// rope_freqs; extra metadata (a tokenizer) is appended.
func writeGGUFBase(t *testing.T, b *Base, path string, qt tensor.GGMLType, noPermute bool, extra ...tensor.GGUFKV) {
	t.Helper()
	c := b.Config
	a := c.Arch + "."
	kv := []tensor.GGUFKV{
		{Key: "general.architecture", Value: c.Arch},
		{Key: a + "block_count", Value: uint32(c.Layers)},
		{Key: a + "context_length", Value: uint32(c.MaxPos)},
		{Key: a + "embedding_length", Value: uint32(c.Dim)},
		{Key: a + "feed_forward_length", Value: uint32(c.FFN)},
		{Key: a + "attention.head_count", Value: uint32(c.Heads)},
		{Key: a + "attention.head_count_kv", Value: uint32(c.KVHeads)},
		{Key: a + "attention.key_length", Value: uint32(c.HeadDim)},
		{Key: a + "attention.value_length", Value: uint32(c.HeadDim)},
		{Key: a + "rope.freq_base", Value: float32(c.RopeTheta)},
		{Key: a + "attention.layer_norm_rms_epsilon", Value: c.NormEps},
		{Key: "tokenizer.ggml.bos_token_id", Value: uint32(c.BOS)},
		{Key: "tokenizer.ggml.eos_token_id", Value: uint32(c.EOS)},
	}
	kv = append(kv, extra...)
	var ts []tensor.GGUFTensor
	for _, nt := range b.tensors() {
		data, rows := nt.data, nt.shape[0]
		if c.Arch == "llama" && !noPermute && (strings.Contains(nt.name, "q_proj") || strings.Contains(nt.name, "k_proj")) {
			heads := c.Heads
			if strings.Contains(nt.name, "k_proj") {
				heads = c.KVHeads
			}
			data = permuteRoPE(data, rows, heads)
		}
		dims := slices.Clone(nt.shape)
		slices.Reverse(dims)
		ts = append(ts, encodeGGUF(t, hfToGGUF(t, nt.name), data, dims, qt))
	}
	if c.RopeScaling != nil {
		d := llama3Divisors(c)
		ts = append(ts, encodeGGUF(t, "rope_freqs.weight", d, []int{len(d)}, tensor.GGMLF32))
	}
	var buf bytes.Buffer
	if err := tensor.WriteGGUF(&buf, kv, ts); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func encodeGGUF(t *testing.T, name string, x []float32, dims []int, qt tensor.GGMLType) tensor.GGUFTensor {
	if len(dims) == 1 {
		qt = tensor.GGMLF32
	}
	var data []byte
	switch qt {
	case tensor.GGMLF32:
		for _, v := range x {
			data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
		}
	case tensor.GGMLBF16, tensor.GGMLF16:
		conv := tensor.F32ToBF16
		if qt == tensor.GGMLF16 {
			conv = tensor.F32ToF16
		}
		for _, v := range x {
			data = binary.LittleEndian.AppendUint16(data, conv(v))
		}
	case tensor.GGMLQ8_0:
		data = make([]byte, len(x)/32*34)
		tensor.QuantizeQ8_0(data, x)
	default:
		t.Fatalf("encodeGGUF: %s", qt)
	}
	return tensor.GGUFTensor{Name: name, Type: qt, Dims: dims, Data: data}
}

func ggufTestConfig(arch string) Config {
	c := TinyConfig(arch)
	c.FFN = 64 // Q8_0 rows need multiples of 32
	return c
}

// relL2 returns max over rows of ‖a−b‖/‖b‖ for (rows, d) arrays.
func relL2(a, b []float32, d int) float64 {
	var worst float64
	for r := 0; r < len(a)/d; r++ {
		var num, den float64
		for j := r * d; j < (r+1)*d; j++ {
			x := float64(a[j]) - float64(b[j])
			num += x * x
			den += float64(b[j]) * float64(b[j])
		}
		worst = max(worst, math.Sqrt(num/den))
	}
	return worst
}

// roundTo rounds every matrix of b in place through the storage format qt
// (what a GGUF of that type holds), so that b computes exactly what a
// loader of such a file should.
func roundTo(t *testing.T, b *Base, qt tensor.GGMLType) {
	for _, nt := range b.tensors() {
		if nt.kind != kindMatrix || qt == tensor.GGMLF32 {
			continue
		}
		enc := encodeGGUF(t, nt.name, nt.data, []int{nt.shape[1], nt.shape[0]}, qt)
		if err := tensor.DequantizeGGML(nt.data, enc.Data, qt); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLoadGGUFSynthetic writes random bases of each family as GGUF (F32,
// BF16, F16, Q8_0 matrices) and checks that LoadGGUF computes the same
// hidden states as the in-memory model with its matrices rounded through
// that format. For llama the q/k permutation is applied on write; a file
// written without it must fail the check (the loader really undoes it).
func TestLoadGGUFSynthetic(t *testing.T) {
	ids := []int32{1, 5, 9, 33, 2, 49, 0, 7, 7, 12, 40, 3}
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		for _, tc := range []struct {
			qt        tensor.GGMLType
			noPermute bool
		}{{tensor.GGMLF32, false}, {tensor.GGMLBF16, false}, {tensor.GGMLF16, false}, {tensor.GGMLQ8_0, false}, {tensor.GGMLF32, true}} {
			if tc.noPermute && arch != "llama" {
				continue
			}
			orig := randomBase(t, ggufTestConfig(arch), 11)
			path := filepath.Join(t.TempDir(), "m.gguf")
			writeGGUFBase(t, orig, path, tc.qt, tc.noPermute)
			roundTo(t, orig, tc.qt)
			want, err := orig.Forward(ids, []int{FinalLayer, 1})
			if err != nil {
				t.Fatal(err)
			}
			// ExactBF16: the reference multiplies the rounded weights
			// exactly (TestShardedAndHalf checks the default BF16 numerics).
			b, err := LoadGGUFWith(path, LoadOptions{ExactBF16: true})
			if err != nil {
				t.Fatalf("%s %s: %v", arch, tc.qt, err)
			}
			got, err := b.Forward(ids, []int{FinalLayer, 1})
			if err != nil {
				t.Fatal(err)
			}
			cfg := b.Config
			cfg.RopeScaling = orig.Config.RopeScaling // carried by rope_freqs instead
			if cfg != orig.Config {
				t.Errorf("%s: config\n got %+v\nwant %+v", arch, cfg, orig.Config)
			}
			for i := range want {
				e := relL2(got[i], want[i], orig.Config.Dim)
				switch {
				case tc.noPermute && e < 0.1:
					t.Errorf("%s without the q/k permutation: rel L2 %.2e, want a large error", arch, e)
				case !tc.noPermute && e > 1e-6: // llama: rope_freqs divisors in f32
					t.Errorf("%s %s output %d: rel L2 %.2e, want <= 1e-6", arch, tc.qt, i, e)
				}
				t.Logf("%s %s (no permute %v) output %d: rel L2 %.2e", arch, tc.qt, tc.noPermute, i, e)
			}
			b.Close()
		}
	}
}

// TestOpenGGUFSentencePiece opens a llama GGUF whose tokenizer is
// SentencePiece (tokenizer.ggml.model = "llama", as Llama 2, TinyLlama and
// Mistral files are), stored without the .gguf extension as ollama stores
// its blobs: Open must recognise it and bring that tokenizer.
func TestOpenGGUFSentencePiece(t *testing.T) {
	base := randomBase(t, ggufTestConfig("llama"), 5)
	v := base.Config.Vocab
	toks := []string{"<unk>", "<s>", "</s>", "▁", "▁a", "a", "b"}
	types := []int32{tokenizer.SPMTypeUnknown, tokenizer.SPMTypeControl, tokenizer.SPMTypeControl, 1, 1, 1, 1}
	for i := len(toks); i < v; i++ {
		toks, types = append(toks, fmt.Sprintf("<extra_%d>", i)), append(types, tokenizer.SPMTypeUnused)
	}
	path := filepath.Join(t.TempDir(), "sha256-0123abcd")
	writeGGUFBase(t, base, path, tensor.GGMLF32, false,
		tensor.GGUFKV{Key: "tokenizer.ggml.model", Value: "llama"},
		tensor.GGUFKV{Key: "tokenizer.ggml.tokens", Value: toks},
		tensor.GGUFKV{Key: "tokenizer.ggml.token_type", Value: types})
	tk := openSPM(t, path)
	if got := tk.Encode("ab a"); !slices.Equal(got, []int32{4, 6, 4}) || tk.Decode(got) != "ab a" || tk.BOS() != int32(base.Config.BOS) {
		t.Errorf("Encode(ab a) = %v (%q), BOS %d", got, tk.Decode(got), tk.BOS())
	}
}

func TestLoadGGUFRejects(t *testing.T) {
	ref := randomBase(t, ggufTestConfig("qwen2"), 3)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.gguf")
	writeGGUFBase(t, ref, good, tensor.GGMLF32, false)
	data, _ := os.ReadFile(good)
	g, err := tensor.ParseGGUF(data)
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite the file with one change to its tensors or metadata.
	variant := func(name string, edit func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor)) string {
		kv, ts := edit(slices.Clone(g.KV), slices.Clone(g.Tensors))
		var buf bytes.Buffer
		if err := tensor.WriteGGUF(&buf, kv, ts); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".gguf")
		os.WriteFile(p, buf.Bytes(), 0o644)
		return p
	}
	drop := func(name string) func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
		return func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
			return kv, slices.DeleteFunc(ts, func(x tensor.GGUFTensor) bool { return x.Name == name })
		}
	}
	truncated := filepath.Join(dir, "trunc.gguf")
	os.WriteFile(truncated, data[:len(data)-100], 0o644)
	cases := []struct{ path, want string }{
		{truncated, `tensor "output_norm.weight"`},
		{variant("missing", drop("blk.1.ffn_up.weight")), `"model.layers.1.mlp.up_proj.weight" is missing`},
		{variant("shape", func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
			for i := range ts {
				if ts[i].Name == "blk.0.attn_k.weight" {
					ts[i].Dims = []int{ts[i].Dims[1], ts[i].Dims[0]}
				}
			}
			return kv, ts
		}), "blk.0.attn_k.weight"},
		{variant("extra", func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
			return kv, append(ts, tensor.GGUFTensor{Name: "blk.0.ffn_gate_exps.weight", Type: tensor.GGMLF32, Dims: []int{1}, Data: make([]byte, 4)})
		}), `unexpected tensor "blk.0.ffn_gate_exps.weight"`},
		{variant("arch", func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
			kv[0].Value = "gemma"
			return kv, ts
		}), `general.architecture "gemma"`},
		{variant("heads", func(kv []tensor.GGUFKV, ts []tensor.GGUFTensor) ([]tensor.GGUFKV, []tensor.GGUFTensor) {
			return slices.DeleteFunc(kv, func(e tensor.GGUFKV) bool { return e.Key == "qwen2.attention.head_count" }), ts
		}), "qwen2.attention.head_count is missing"},
	}
	for _, c := range cases {
		b, err := LoadGGUF(c.path)
		if err == nil {
			b.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "open model ") {
			t.Errorf("%s: err = %v, want one containing %q", filepath.Base(c.path), err, c.want)
		}
	}
}

// Q8_0 tolerance against llama.cpp: its CPU kernels also quantize the
// activations to Q8_0 before each product, which we do not (we multiply
// the dequantized weights in float32), so the two differ by that rounding.
const oracleQ8RelL2 = 4e-2

// BF16 tolerances against llama.cpp, which rounds the activations to bf16
// before each product with bf16 weights, as our default does (what is left
// is summation order and the float32 parts: measured 3.4e-5–1.8e-3 on the
// tiny presets); ExactBF16 multiplies the unrounded activations (relative
// error 2⁻⁹ per value against llama.cpp's; measured 6.9e-3–7.3e-3).
const (
	oracleBF16RelL2      = 5e-3
	oracleBF16ExactRelL2 = 1.5e-2
)

// TestOracleGGUF converts the tiny presets of make-random-hf.py with
// hf2gguf.py and checks that LoadGGUF of the F32 file gives LoadBase's
// hidden states on the HF directory (≈1e-6) and llama.cpp's on the same
// file; then the same with the file's matrices quantized to Q8_0 and
// rounded to BF16 by scripts/gguf_quantize.py.
func TestOracleGGUF(t *testing.T) {
	tools := oracleTools(t)
	seqs := [][]int32{{1, 17, 300, 2, 999, 42, 5, 5, 5, 123, 456, 789, 0, 998, 64, 65, 66, 67, 68, 69, 70, 500, 7, 8}, {7, 8}}
	for _, tc := range []struct{ arch, dtype string }{{"qwen2", "f32"}, {"qwen3", "bf16"}, {"llama", "f32"}} {
		t.Run(tc.arch, func(t *testing.T) {
			t.Parallel()
			w := t.TempDir()
			dir, f32, q8 := filepath.Join(w, "hf"), filepath.Join(w, "m.gguf"), filepath.Join(w, "q8.gguf")
			runTool(t, tools, "make-random-hf.py", dir, "--arch", tc.arch, "--preset", "tiny", "--seed", "5", "--dtype", tc.dtype)
			runTool(t, tools, "hf2gguf.py", dir, f32)
			// ExactBF16: the F32 file's products are exact, so the bf16
			// HF directory's must be too.
			hf, err := LoadBaseWith(dir, LoadOptions{ExactBF16: true})
			if err != nil {
				t.Fatal(err)
			}
			defer hf.Close()
			b, err := LoadGGUF(f32)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for _, s := range seqs {
				want, _ := hf.Forward(s, []int{FinalLayer, 2})
				got, err := b.Forward(s, []int{FinalLayer, 2})
				if err != nil {
					t.Fatal(err)
				}
				for i := range want {
					if e := relL2(got[i], want[i], b.Config.Dim); e > 1e-6 {
						t.Errorf("GGUF vs HF output %d: rel L2 %.2e, want <= 1e-6", i, e)
					}
				}
			}
			checkOracle(t, tc.arch+" GGUF F32", compareOracle(t, b, ggufOracle(t, tools, f32, seqs)))

			// Quantized by gguf-py (llama.cpp's Python library), not by us.
			// BF16 (gguf-py's rounding): llama.cpp rounds the activations to
			// bf16 as well (ggml's vec_dot_bf16), as our default does;
			// ExactBF16 widens the weights exactly.
			scripts := filepath.Join(testenv.RepoRoot(t), "scripts")
			bf := filepath.Join(w, "bf16.gguf")
			runTool(t, scripts, "gguf_quantize.py", f32, q8)
			runTool(t, scripts, "gguf_quantize.py", f32, bf, "bf16")
			ref, refB := ggufOracle(t, tools, q8, seqs), ggufOracle(t, tools, bf, seqs)
			var e oracleErr // Q8_0's, for the negative control
			for _, v := range []struct {
				name, file string
				opt        LoadOptions
				ref        []oracleSeq
				tol        float64
				note       string
			}{
				{"Q8_0", q8, LoadOptions{}, ref, oracleQ8RelL2, ""},
				// Int8 products: the activations rounded to int8 per block
				// as llama.cpp rounds them.
				{"Q8_0 with int8 products", q8, LoadOptions{Int8: true}, ref, oracleQ8RelL2,
					fmt.Sprintf(" (int8 kernel %s, packed %s)", tensor.Q8Path(), tensor.Q8PackedPath())},
				// The default: the activations rounded to bf16 inside the
				// products (the native kernel where the CPU has
				// AVX512_BF16), as llama.cpp.
				{"BF16", bf, LoadOptions{}, refB, oracleBF16RelL2,
					fmt.Sprintf(" (native bf16 kernel: %v)", tensor.NativeBF16())},
				{"BF16 with ExactBF16", bf, LoadOptions{ExactBF16: true}, refB, oracleBF16ExactRelL2, ""},
			} {
				bv, err := LoadGGUFWith(v.file, v.opt)
				if err != nil {
					t.Fatal(err)
				}
				ev := compareOracle(t, bv, v.ref)
				bv.Close()
				t.Logf("%-28s %v%s", tc.arch+" GGUF "+v.name, ev, v.note)
				if ev.hiddenRelL2 > v.tol || ev.positions == 0 {
					t.Errorf("%s: hidden rel L2 %.2e, want <= %g", v.name, ev.hiddenRelL2, v.tol)
				}
				if v.name == "Q8_0" {
					e = ev
				}
			}
			// Negative control: the F32 weights against llama.cpp's Q8_0 run
			// add our missing weight rounding to its activation rounding
			// (independent, so about √2 times the error).
			if ef := compareOracle(t, b, ref); ef.hiddenRelL2 < 1.25*e.hiddenRelL2 {
				t.Errorf("F32 weights vs llama.cpp's Q8_0 run: rel L2 %.2e is not clearly above Q8_0's %.2e", ef.hiddenRelL2, e.hiddenRelL2)
			} else {
				t.Logf("%-28s %v", "F32 model vs Q8_0 oracle", ef)
			}
		})
	}
}

// TestOpenHFSentencePiece opens a Hugging Face directory whose
// tokenizer.json is in SentencePiece form (a BPE model with byte_fallback
// and the Prepend/Replace ▁ normalizer, as Llama 2's and TinyLlama's
// are): Open must bring a SentencePiece tokenizer with BOS from
// tokenizer_config.json.
func TestOpenHFSentencePiece(t *testing.T) {
	dir := t.TempDir()
	cfg := ggufTestConfig("llama")
	cfg.Vocab = 7 + 256
	if err := WriteRandomBase(dir, cfg, 5); err != nil {
		t.Fatal(err)
	}
	vocab := map[string]int{"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "▁a": 4, "a": 5, "b": 6}
	for b := range 256 {
		vocab[fmt.Sprintf("<0x%02X>", b)] = 7 + b
	}
	tj := map[string]any{
		"added_tokens": []any{
			map[string]any{"id": 0, "content": "<unk>", "special": true},
			map[string]any{"id": 1, "content": "<s>", "special": true},
			map[string]any{"id": 2, "content": "</s>", "special": true},
		},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{map[string]any{"type": "ByteFallback"}}},
		"model": map[string]any{"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
			"vocab": vocab, "merges": []string{"▁ a"}},
	}
	data, _ := json.Marshal(tj)
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"bos_token": "<s>", "eos_token": "</s>"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tk := openSPM(t, dir)
	// "ab aé": ▁a b ▁a, then é (no token) as its two bytes.
	want := []int32{4, 6, 4, 7 + 0xC3, 7 + 0xA9}
	if got := tk.Encode("ab aé"); !slices.Equal(got, want) || tk.Decode(got) != "ab aé" || tk.BOS() != 1 || tk.EOS() != 2 {
		t.Errorf("Encode(ab aé) = %v (%q), want %v; BOS %d EOS %d", got, tk.Decode(got), want, tk.BOS(), tk.EOS())
	}
}

// openSPM opens the model at path (closed when t ends) and returns its
// tokenizer, which must be SentencePiece.
func openSPM(t *testing.T, path string) *tokenizer.SPMTokenizer {
	t.Helper()
	m, err := Open(path, OpenOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Base.Close() })
	tk, ok := m.Tokenizer.(*tokenizer.SPMTokenizer)
	if !ok {
		t.Fatalf("Open gave a %T tokenizer, want SentencePiece", m.Tokenizer)
	}
	return tk
}
