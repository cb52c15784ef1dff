package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"carryon/internal/testenv"
	"carryon/tensor"
)

// tinyConfig is a small model of each family for unit tests.
func TestParseConfigGolden(t *testing.T) {
	scaling := &tensor.RoPEScaling{Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4, OriginalContext: 8192}
	cases := map[string]Config{
		"qwen2.5-0.5b.json": {Arch: "qwen2", Dim: 896, Layers: 24, Heads: 14, KVHeads: 2, HeadDim: 64, FFN: 4864,
			Vocab: 151936, MaxPos: 32768, RopeTheta: 1e6, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true,
			BOS: 151643, EOS: 151643},
		"qwen3-0.6b.json": {Arch: "qwen3", Dim: 1024, Layers: 28, Heads: 16, KVHeads: 8, HeadDim: 128, FFN: 3072,
			Vocab: 151936, MaxPos: 40960, RopeTheta: 1e6, NormEps: 1e-6, TiedEmbeddings: true, QKNorm: true,
			BOS: 151643, EOS: 151645},
		"llama3.2-1b-instruct.json": {Arch: "llama", Dim: 2048, Layers: 16, Heads: 32, KVHeads: 8, HeadDim: 64,
			FFN: 8192, Vocab: 128256, MaxPos: 131072, RopeTheta: 5e5, RopeScaling: scaling, NormEps: 1e-5,
			TiedEmbeddings: true, BOS: 128000, EOS: 128001},
		"deepseek-r1-distill-qwen-1.5b.json": {Arch: "qwen2", Dim: 1536, Layers: 28, Heads: 12, KVHeads: 2,
			HeadDim: 128, FFN: 8960, Vocab: 151936, MaxPos: 131072, RopeTheta: 1e4, NormEps: 1e-6, QKVBias: true,
			BOS: 151646, EOS: 151643},
	}
	for file, want := range cases {
		data, err := os.ReadFile(filepath.Join("testdata", "base", file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseConfig(data)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", file, got, want)
		}
		back, err := ParseConfig(got.JSON())
		if err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("%s: JSON round trip: %v\n got %+v\nwant %+v", file, err, back, got)
		}
	}
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		c := TinyConfig(arch)
		if back, err := ParseConfig(c.JSON()); err != nil || !reflect.DeepEqual(back, c) {
			t.Errorf("%s: JSON round trip: %v\n got %+v\nwant %+v", arch, err, back, c)
		}
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	base := string(TinyConfig("llama").JSON())
	edit := func(old, new string) string { return strings.Replace(base, old, new, 1) }
	cases := []struct{ name, json, want string }{
		{"heads", edit(`"num_attention_heads": 4`, `"num_attention_heads": 3`), "num_attention_heads"},
		{"zero dim", edit(`"hidden_size": 32`, `"hidden_size": 0`), "hidden_size"},
		{"huge vocab", edit(`"vocab_size": 50`, `"vocab_size": 999999999`), "vocab_size"},
		{"odd head", edit(`"head_dim": 8`, `"head_dim": 7`), "head_dim"},
		{"eps", edit(`"rms_norm_eps": 1e-06`, `"rms_norm_eps": 0`), "rms_norm_eps"},
		{"theta", edit(`"rope_theta": 10000`, `"rope_theta": -1`), "rope_theta"},
		{"eos", edit(`"eos_token_id": 2`, `"eos_token_id": 50`), "eos_token_id"},
		{"eos list", edit(`"eos_token_id": 2`, `"eos_token_id": []`), "eos_token_id"},
		{"arch", edit(`"model_type": "llama"`, `"model_type": "gpt2"`), "model_type"},
		{"scaling", edit(`"rope_type": "llama3"`, `"rope_type": "yarn"`), "rope_scaling"},
		{"mlp bias", edit(`"mlp_bias": false`, `"mlp_bias": true`), "mlp_bias"},
		{"act", edit(`"hidden_act": "silu"`, `"hidden_act": "gelu"`), "hidden_act"},
		{"sliding", edit(`"use_sliding_window": false`, `"use_sliding_window": true`), "use_sliding_window"},
		{"not json", "{", "not valid JSON"},
	}
	for _, c := range cases {
		if c.json == base && c.name != "not json" {
			t.Fatalf("%s: edit did not apply", c.name)
		}
		_, err := ParseConfig([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to name %q", c.name, err, c.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "base", "*.json"))
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add(DemoConfig().JSON())
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("ParseConfig accepted an invalid config: %v", err)
		}
		back, err := ParseConfig(c.JSON())
		if err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, back, c)
		}
	})
}

func writeTiny(t *testing.T, arch string, seed uint64) (string, Config) {
	t.Helper()
	dir := t.TempDir()
	cfg := TinyConfig(arch)
	if err := WriteRandomBase(dir, cfg, seed); err != nil {
		t.Fatal(err)
	}
	return dir, cfg
}

func fileHash(t *testing.T, paths ...string) string {
	t.Helper()
	h := sha256.New()
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestLoadRoundTrip(t *testing.T) {
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		t.Run(arch, func(t *testing.T) {
			dir, cfg := writeTiny(t, arch, 7)
			b, err := LoadBase(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if !reflect.DeepEqual(b.Config, cfg) {
				t.Fatalf("config: got %+v want %+v", b.Config, cfg)
			}
			if want := fileHash(t, filepath.Join(dir, singleFile)); b.WeightsHash != want {
				t.Errorf("WeightsHash %s, want sha256 of the file %s", b.WeightsHash, want)
			}
			mem, _ := NewRandomBase(cfg, 7)
			got, want := b.tensors(), mem.tensors()
			if len(got) != len(want) {
				t.Fatalf("%d tensors, want %d", len(got), len(want))
			}
			for i := range got {
				if got[i].name != want[i].name || !reflect.DeepEqual(got[i].data, want[i].data) {
					t.Fatalf("tensor %s differs after the round trip", want[i].name)
				}
			}
			if cfg.TiedEmbeddings != (&b.LMHead()[0] == &b.Embeddings()[0]) {
				t.Errorf("LM head aliasing: tied %v", cfg.TiedEmbeddings)
			}
			// Initialisation statistics of make-random-hf.py.
			e := mem.embed
			if s := stddev(e); math.Abs(s-1/math.Sqrt(float64(cfg.Dim))) > 0.02 {
				t.Errorf("embedding std %.4f, want about %.4f", s, 1/math.Sqrt(float64(cfg.Dim)))
			}
			if m := mean(mem.finalNorm); math.Abs(m-1) > 0.1 {
				t.Errorf("norm weight mean %.3f, want about 1", m)
			}
		})
	}
}

func mean(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s / float64(len(x))
}

func stddev(x []float32) float64 {
	m := mean(x)
	var s float64
	for _, v := range x {
		s += (float64(v) - m) * (float64(v) - m)
	}
	return math.Sqrt(s / float64(len(x)))
}

func TestWeightsHashStable(t *testing.T) {
	a, _ := writeTiny(t, "qwen2", 1)
	b, _ := writeTiny(t, "qwen2", 1)
	c, _ := writeTiny(t, "qwen2", 2)
	ha, hb, hc := loadHash(t, a), loadHash(t, b), loadHash(t, c)
	if ha != hb {
		t.Errorf("same seed, different hashes %s %s", ha, hb)
	}
	if ha == hc {
		t.Errorf("different seeds, same hash %s", ha)
	}
	if ha != loadHash(t, a) {
		t.Errorf("reloading changed the hash")
	}
}

func loadHash(t *testing.T, dir string) string {
	t.Helper()
	b, err := LoadBase(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	return b.WeightsHash
}

// rewrite loads dir's weights, lets edit change the list of views, and
// writes them back as model.safetensors.
func rewrite(t *testing.T, dir string, edit func([]tensor.View) []tensor.View) {
	t.Helper()
	path := filepath.Join(dir, singleFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := tensor.ParseSafetensors(data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := tensor.MarshalSafetensors(edit(st.Views()), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadErrorsNameTheTensor(t *testing.T) {
	drop := func(name string) func([]tensor.View) []tensor.View {
		return func(vs []tensor.View) []tensor.View {
			var out []tensor.View
			for _, v := range vs {
				if v.Name != name {
					out = append(out, v)
				}
			}
			return out
		}
	}
	reshape := func(name string, shape ...int) func([]tensor.View) []tensor.View {
		return func(vs []tensor.View) []tensor.View {
			for i, v := range vs {
				if v.Name == name {
					vs[i].Shape = shape
				}
			}
			return vs
		}
	}
	extra := func(vs []tensor.View) []tensor.View {
		return append(vs, tensor.F32View("model.layers.0.self_attn.o_proj.bias", make([]float32, 32), 32))
	}
	cases := []struct {
		name, arch string
		edit       func([]tensor.View) []tensor.View
		want       []string
	}{
		{"missing", "qwen2", drop("model.layers.1.mlp.up_proj.weight"), []string{"model.layers.1.mlp.up_proj.weight", "missing"}},
		{"missing bias", "qwen2", drop("model.layers.0.self_attn.k_proj.bias"), []string{"model.layers.0.self_attn.k_proj.bias", "missing"}},
		{"missing q_norm", "qwen3", drop("model.layers.1.self_attn.q_norm.weight"), []string{"q_norm", "missing"}},
		{"missing head", "llama", drop("lm_head.weight"), []string{"lm_head.weight", "missing"}},
		{"wrong shape", "llama", reshape("model.layers.0.self_attn.q_proj.weight", 16, 64), []string{"model.layers.0.self_attn.q_proj.weight", "[16 64]", "want [32 32]"}},
		{"wrong shape norm", "qwen3", reshape("model.layers.1.self_attn.k_norm.weight", 4, 4), []string{"model.layers.1.self_attn.k_norm.weight", "[4 4]", "want [16]"}},
		{"unexpected", "qwen2", extra, []string{"model.layers.0.self_attn.o_proj.bias", "unexpected"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := writeTiny(t, c.arch, 3)
			rewrite(t, dir, c.edit)
			_, err := LoadBase(dir)
			if err == nil {
				t.Fatal("loaded a broken checkpoint")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), "open model ") || strings.Contains(err.Error(), "model.LoadBase") {
				t.Errorf("error %q does not name the operation in the user's words", err)
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		dir, _ := writeTiny(t, "qwen2", 3)
		path := filepath.Join(dir, singleFile)
		data, _ := os.ReadFile(path)
		if err := os.WriteFile(path, data[:len(data)-100], 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadBase(dir)
		// The last tensor in the file (names are sorted) is the one cut short.
		if err == nil || !strings.Contains(err.Error(), "model.norm.weight") || !strings.Contains(err.Error(), "truncated") {
			t.Errorf("err = %v, want it to name model.norm.weight and say truncated", err)
		}
	})
	t.Run("cut in half", func(t *testing.T) {
		// Many tensors are cut: the error names the first one in the file,
		// the same every time (the header is a JSON object: map order).
		dir, _ := writeTiny(t, "qwen2", 3)
		path := filepath.Join(dir, singleFile)
		data, _ := os.ReadFile(path)
		if err := os.WriteFile(path, data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		_, first := LoadBase(dir)
		if first == nil || !strings.HasPrefix(first.Error(), "open model "+dir+": ") || !strings.Contains(first.Error(), "is truncated") ||
			strings.Contains(first.Error(), "model.LoadBase") {
			t.Fatalf("err = %v, want open model DIR: … tensor … is truncated", first)
		}
		for range 20 {
			if _, err := LoadBase(dir); err == nil || err.Error() != first.Error() {
				t.Fatalf("errors differ between loads:\n%v\n%v", first, err)
			}
		}
	})
	t.Run("no weights", func(t *testing.T) {
		dir, _ := writeTiny(t, "qwen2", 3)
		os.Remove(filepath.Join(dir, singleFile))
		if _, err := LoadBase(dir); err == nil || !strings.Contains(err.Error(), singleFile) {
			t.Errorf("err = %v", err)
		}
	})
}

// TestShardedAndHalf loads the same weights from two shards and from BF16
// and F16 files and checks the forward pass against the single F32 file.
func TestShardedAndHalf(t *testing.T) {
	dir, cfg := writeTiny(t, "qwen3", 5)
	ref := loadForward(t, dir)
	data, _ := os.ReadFile(filepath.Join(dir, singleFile))
	st, err := tensor.ParseSafetensors(data)
	if err != nil {
		t.Fatal(err)
	}
	names := st.Names()

	sharded := t.TempDir()
	os.WriteFile(filepath.Join(sharded, configFile), cfg.JSON(), 0o644)
	index := map[string]string{}
	shards := []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
	for s, file := range shards {
		var views []tensor.View
		for i, n := range names {
			if i%2 == s {
				v, _ := st.Get(n)
				views = append(views, v)
				index[n] = file
			}
		}
		var buf bytes.Buffer
		tensor.WriteSafetensors(&buf, views, nil)
		os.WriteFile(filepath.Join(sharded, file), buf.Bytes(), 0o644)
	}
	idx, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": index})
	os.WriteFile(filepath.Join(sharded, indexFile), idx, 0o644)
	b, err := LoadBase(sharded)
	if err != nil {
		t.Fatal(err)
	}
	if want := fileHash(t, filepath.Join(sharded, shards[0]), filepath.Join(sharded, shards[1])); b.WeightsHash != want {
		t.Errorf("sharded WeightsHash %s, want %s", b.WeightsHash, want)
	}
	b.Close()
	if got := loadForward(t, sharded); testenv.MaxRel(got, ref) != 0 {
		t.Errorf("sharded forward differs: rel %g", testenv.MaxRel(got, ref))
	}

	for _, dt := range []tensor.DType{tensor.BF16, tensor.F16} {
		half := t.TempDir()
		os.WriteFile(filepath.Join(half, configFile), cfg.JSON(), 0o644)
		var views, rounded []tensor.View
		for _, n := range names {
			v, _ := st.Get(n)
			f, _ := v.Float32()
			raw := make([]byte, 2*len(f))
			back := make([]float32, len(f))
			for i, x := range f {
				var h uint16
				if dt == tensor.BF16 {
					h = tensor.F32ToBF16(x)
					back[i] = tensor.BF16ToF32(h)
				} else {
					h = tensor.F32ToF16(x)
					back[i] = tensor.F16ToF32(h)
				}
				raw[2*i], raw[2*i+1] = byte(h), byte(h>>8)
			}
			views = append(views, tensor.View{Name: n, DType: dt, Shape: v.Shape, Data: raw})
			rounded = append(rounded, tensor.F32View(n, back, v.Shape...))
		}
		var buf bytes.Buffer
		tensor.WriteSafetensors(&buf, views, nil)
		os.WriteFile(filepath.Join(half, singleFile), buf.Bytes(), 0o644)
		roundedDir := t.TempDir()
		if err := writeCheckpoint(roundedDir, cfg, rounded); err != nil {
			t.Fatal(err)
		}
		want := loadForward(t, roundedDir)
		// ExactBF16 (no effect on F16): the products are exact.
		exact := LoadOptions{ExactBF16: true}
		if got := loadForwardWith(t, half, exact); testenv.MaxRel(got, want) != 0 {
			t.Errorf("%s forward differs from F32 of the rounded weights: rel %g", dt, testenv.MaxRel(got, want))
		}
		// The weights stay in their stored format (half the memory), and a
		// short (decode-sized) forward agrees too.
		hb, err := LoadBaseWith(half, exact)
		if err != nil {
			t.Fatal(err)
		}
		if hb.layers[0].wq.q == nil || hb.layers[1].down.q == nil || hb.embedQ == nil || hb.embed != nil {
			t.Errorf("%s: the weights were widened at load", dt)
		}
		if hb.Numerics() != "" || hb.EmbedHash() != hb.WeightsHash {
			t.Errorf("%s exact: Numerics %q, EmbedHash %s, WeightsHash %s", dt, hb.Numerics(), hb.EmbedHash(), hb.WeightsHash)
		}
		rb, err := LoadBase(roundedDir)
		if err != nil {
			t.Fatal(err)
		}
		short := []int32{3, 1, 4}
		if e := testenv.MaxRel(mustForward(t, hb, short, FinalLayer), mustForward(t, rb, short, FinalLayer)); e > 1e-5 {
			t.Errorf("%s: 3-token forward differs from F32 of the rounded weights: rel %g", dt, e)
		}
		if !slices.Equal(hb.Embeddings(), rb.Embeddings()) || !slices.Equal(hb.layers[1].up.float32(), rb.layers[1].up.float32()) {
			t.Errorf("%s: widened weights differ from the rounded F32 ones", dt)
		}
		hb.Close()
		rb.Close()
		if dt != tensor.BF16 {
			continue
		}
		// By default the BF16 block matrices stay bf16 and have
		// tensor.GemmBF16's numerics (activations rounded to bf16) for
		// every row count: a prefill's first positions and a decode-sized
		// forward of the same tokens agree within float32 summation order.
		kb, err := LoadBase(half)
		if err != nil {
			t.Fatal(err)
		}
		if kb.layers[0].wq.h == nil || kb.layers[1].down.h == nil {
			t.Errorf("BF16 default: the block matrices were not kept as bf16")
		}
		if kb.Numerics() != NumericsBF16 || kb.EmbedHash() == kb.WeightsHash || kb.EmbedHash() != EmbedHashOf(kb.WeightsHash, NumericsBF16) {
			t.Errorf("BF16 default: Numerics %q, EmbedHash %s, WeightsHash %s", kb.Numerics(), kb.EmbedHash(), kb.WeightsHash)
		}
		// 20 positions: the blocked GEMM (VDPBF16PS where the CPU has it).
		ids := []int32{1, 5, 9, 33, 2, 49, 0, 17, 3, 3, 8, 12, 40, 41, 42, 7, 19, 23, 29, 31}
		got := mustForward(t, kb, ids, FinalLayer)
		if p := kb.layers[1].down.p; tensor.PacksBF16() && (p == nil || !p.BF16()) {
			t.Errorf("BF16 default on a CPU whose kernels take bf16 panels: the block matrices were not packed")
		}
		D := cfg.Dim
		dec := mustForward(t, kb, ids[:3], FinalLayer)
		ed := testenv.MaxRel(dec, got[:3*D])
		kb.Close()
		rb, err = LoadBase(roundedDir)
		if err != nil {
			t.Fatal(err)
		}
		e := testenv.MaxRel(got, mustForward(t, rb, ids, FinalLayer))
		rb.Close()
		t.Logf("BF16 default forward: vs float32 of the same weights max rel %.2e; 3-token vs 20-token forward %.2e", e, ed)
		if e > 5e-2 || e < 1e-5 {
			t.Errorf("BF16 default forward: max rel %.2e from the float32 path, want in [1e-5, 5e-2] (activations rounded)", e)
		}
		if ed > 1e-4 {
			t.Errorf("BF16 default: 3-token forward differs from the 20-token one by %.2e > 1e-4 (paths disagree)", ed)
		}
	}
}

func loadForward(t *testing.T, dir string) []float32 { return loadForwardWith(t, dir, LoadOptions{}) }

func loadForwardWith(t *testing.T, dir string, opt LoadOptions) []float32 {
	t.Helper()
	b, err := LoadBaseWith(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// 12 positions: every kind of weight (packed F32, stored F16/BF16)
	// takes the blocked GEMM, which adds in the same order for all of them.
	out, err := b.Forward([]int32{1, 5, 9, 33, 2, 49, 0, 17, 4, 4, 21, 6}, []int{FinalLayer})
	if err != nil {
		t.Fatal(err)
	}
	return out[0]
}

// maxRel is max |a-b| / max |b|.
func TestForwardMatchesReference(t *testing.T) {
	ids := []int32{1, 7, 3, 49, 22, 22, 0, 13, 40, 2, 8, 31, 30, 29, 28, 27, 11, 5, 6, 44}
	for _, arch := range []string{"qwen2", "qwen3", "llama"} {
		t.Run(arch, func(t *testing.T) {
			b := randomBase(t, TinyConfig(arch), 11)
			c := b.Config
			out, err := b.Forward(ids, []int{FinalLayer, 0, 1, c.Layers})
			if err != nil {
				t.Fatal(err)
			}
			ref := referenceForward(b, ids)
			for i, layer := range []int{c.Layers + 1, 0, 1, c.Layers} {
				if e := maxRel64(out[i], ref[layer]); e > 2e-6 {
					t.Errorf("layer index %d: max rel error %.2g vs float64 reference", i, e)
				}
			}
			logits := b.Logits(out[0], len(ids))
			wantLogits := make([]float32, len(ids)*c.Vocab)
			for t0 := range ids {
				for v := 0; v < c.Vocab; v++ {
					var s float64
					for j := 0; j < c.Dim; j++ {
						s += float64(out[0][t0*c.Dim+j]) * float64(b.LMHead()[v*c.Dim+j])
					}
					wantLogits[t0*c.Vocab+v] = float32(s)
				}
			}
			if e := testenv.MaxRel(logits, wantLogits); e > 1e-6 {
				t.Errorf("logits: max rel error %.2g", e)
			}
		})
	}
}

// referenceForward is a deliberately naive float64 transcription of the HF
// modelling code (repeat_kv, rotate_half, llama3 inv_freq), written
// separately from Base.forward. It returns the residual stream after each
// of the Layers+1 stages, then the final-normed states.
func referenceForward(b *Base, ids []int32) [][]float64 {
	c := b.Config
	T, D, hd := len(ids), c.Dim, c.HeadDim
	eps := float64(c.NormEps)
	rms := func(x []float64, w []float32) []float64 { return refRMSNorm(x, w, eps) }
	lin := refLinear[float32]
	invFreq := make([]float64, hd/2)
	for i := range invFreq {
		invFreq[i] = math.Pow(c.RopeTheta, -float64(2*i)/float64(hd))
		if s := c.RopeScaling; s != nil { // transformers' _compute_llama3_parameters
			wavelen := 2 * math.Pi / invFreq[i]
			lowWav, highWav := float64(s.OriginalContext)/s.LowFreqFactor, float64(s.OriginalContext)/s.HighFreqFactor
			scaled := invFreq[i]
			if wavelen > lowWav {
				scaled = invFreq[i] / s.Factor
			}
			smooth := (float64(s.OriginalContext)/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
			if !(wavelen < highWav) && !(wavelen > lowWav) {
				scaled = (1-smooth)*invFreq[i]/s.Factor + smooth*invFreq[i]
			}
			invFreq[i] = scaled
		}
	}
	ropeHead := func(v []float64, p int) {
		rot := make([]float64, hd)
		for i := 0; i < hd; i++ {
			if i < hd/2 {
				rot[i] = -v[i+hd/2]
			} else {
				rot[i] = v[i-hd/2]
			}
		}
		for i := 0; i < hd; i++ {
			ang := float64(p) * invFreq[i%(hd/2)]
			v[i] = v[i]*math.Cos(ang) + rot[i]*math.Sin(ang)
		}
	}
	x := make([][]float64, T)
	for t := range x {
		x[t] = make([]float64, D)
		for j := range x[t] {
			x[t][j] = float64(b.embed[int(ids[t])*D+j])
		}
	}
	snap := func() []float64 {
		var s []float64
		for _, r := range x {
			s = append(s, r...)
		}
		return s
	}
	stages := [][]float64{snap()}
	for _, w := range b.layers {
		qs, ks, vs := make([][]float64, T), make([][]float64, T), make([][]float64, T)
		for t := 0; t < T; t++ {
			h := rms(x[t], w.attnNorm)
			qs[t] = lin(h, w.wq.float32(), w.bq, c.Heads*hd)
			ks[t] = lin(h, w.wk.float32(), w.bk, c.KVHeads*hd)
			vs[t] = lin(h, w.wv.float32(), w.bv, c.KVHeads*hd)
			for hh := 0; hh < c.Heads; hh++ {
				q := qs[t][hh*hd : (hh+1)*hd]
				if w.qNorm != nil {
					copy(q, rms(q, w.qNorm))
				}
				ropeHead(q, t)
			}
			for hh := 0; hh < c.KVHeads; hh++ {
				k := ks[t][hh*hd : (hh+1)*hd]
				if w.kNorm != nil {
					copy(k, rms(k, w.kNorm))
				}
				ropeHead(k, t)
			}
		}
		for t := 0; t < T; t++ {
			att := refCausalAttention(qs, ks, vs, t, c.Heads, c.KVHeads, hd)
			o := lin(att, w.wo.float32(), nil, D)
			for j := range o {
				x[t][j] += o[j]
			}
		}
		for t := 0; t < T; t++ {
			h := rms(x[t], w.mlpNorm)
			g, u := lin(h, w.gate.float32(), nil, c.FFN), lin(h, w.up.float32(), nil, c.FFN)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := lin(g, w.down.float32(), nil, D)
			for j := range d {
				x[t][j] += d[j]
			}
		}
		stages = append(stages, snap())
	}
	var final []float64
	for t := 0; t < T; t++ {
		final = append(final, rms(x[t], b.finalNorm)...)
	}
	return append(stages, final)
}

func maxRel64(a []float32, b []float64) float64 {
	var d, m float64
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i])-b[i]))
		m = math.Max(m, math.Abs(b[i]))
	}
	return d / m
}

func TestForwardCausalAndBatch(t *testing.T) {
	b := randomBase(t, TinyConfig("qwen2"), 4)
	long := []int32{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9}
	short := long[:6]
	res, err := b.ForwardBatch([][]int32{long, short}, []int{FinalLayer, 1})
	if err != nil {
		t.Fatal(err)
	}
	D := b.Config.Dim
	for li := range 2 {
		if e := testenv.MaxRel(res[0][li][:len(short)*D], res[1][li]); e > 1e-6 {
			t.Errorf("layer entry %d: a prefix's states depend on later tokens (rel %g)", li, e)
		}
		one, _ := b.Forward(long, []int{[]int{FinalLayer, 1}[li]})
		if !reflect.DeepEqual(one[0], res[0][li]) {
			t.Errorf("ForwardBatch differs from Forward")
		}
	}
	if !reflect.DeepEqual(res[0][0], mustForward(t, b, long, FinalLayer)) {
		t.Errorf("results depend on which other layers were requested")
	}
}

// TestForwardBatchVarlen checks the variable-length batch: each sequence's
// states equal a forward of that sequence alone (bitwise where both take the
// blocked GEMM, i.e. at least packedMinRows tokens), so no token attends
// across sequences and RoPE positions restart; a batch longer than
// MaxBatchTokens is split and still gives every sequence.
func TestForwardBatchVarlen(t *testing.T) {
	b := randomBase(t, TinyConfig("qwen3"), 5)
	rng := rand.New(rand.NewPCG(7, 7))
	seq := func(n int) []int32 {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(rng.IntN(b.Config.Vocab))
		}
		return s
	}
	seqs := [][]int32{seq(12), seq(3), seq(31), seq(1), seq(9), seq(20)}
	layers := []int{FinalLayer, 0, 2}
	res, err := b.ForwardBatch(seqs, layers)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(seqs) {
		t.Fatalf("got %d results for %d sequences", len(res), len(seqs))
	}
	for s, ids := range seqs {
		one, err := b.Forward(ids, layers)
		if err != nil {
			t.Fatal(err)
		}
		for li := range layers {
			if len(res[s][li]) != len(ids)*b.Config.Dim {
				t.Fatalf("sequence %d layer %d: %d floats, want %d", s, layers[li], len(res[s][li]), len(ids)*b.Config.Dim)
			}
			e := testenv.MaxRel(one[li], res[s][li])
			if len(ids) >= packedMinRows && e != 0 {
				t.Errorf("sequence %d (%d tokens) layer %d: batched differs from alone by %.2e, want bitwise", s, len(ids), layers[li], e)
			}
			if e > 1e-5 {
				t.Errorf("sequence %d (%d tokens) layer %d: batched differs from alone by %.2e", s, len(ids), layers[li], e)
			}
		}
	}
	// Longer than one pass: split between sequences, same results.
	var big [][]int32
	for n := 0; n <= MaxBatchTokens; n += 61 {
		big = append(big, seq(1+n%b.Config.MaxPos))
	}
	got, err := b.ForwardBatch(big, []int{FinalLayer})
	if err != nil {
		t.Fatal(err)
	}
	for s, ids := range big {
		e := testenv.MaxRel(mustForward(t, b, ids, FinalLayer), got[s][0])
		if (len(ids) >= packedMinRows && e != 0) || e > 1e-5 {
			t.Errorf("split batch, sequence %d (%d tokens): differs from alone by %.2e", s, len(ids), e)
		}
	}
	if _, err := b.ForwardBatch(nil, layers); err == nil {
		t.Errorf("ForwardBatch of no sequences succeeded")
	}
}

func mustForward(t *testing.T, b *Base, ids []int32, layer int) []float32 {
	t.Helper()
	out, err := b.Forward(ids, []int{layer})
	if err != nil {
		t.Fatal(err)
	}
	return out[0]
}

func TestForwardErrors(t *testing.T) {
	b, _ := NewRandomBase(TinyConfig("llama"), 1)
	long := make([]int32, b.Config.MaxPos+1)
	cases := []struct {
		ids    []int32
		layers []int
		want   string
	}{
		{nil, []int{FinalLayer}, "empty"},
		{long, []int{FinalLayer}, "max_position_embeddings"},
		{[]int32{1, 50}, []int{FinalLayer}, "token 50 at position 1"},
		{[]int32{1, -1}, []int{FinalLayer}, "token -1"},
		{[]int32{1}, []int{3}, "layer 3"},
		{[]int32{1}, []int{-2}, "layer -2"},
		{[]int32{1}, nil, "no layers"},
	}
	for _, c := range cases {
		if _, err := b.Forward(c.ids, c.layers); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Forward(%d ids, %v): err = %v, want %q", len(c.ids), c.layers, err, c.want)
		}
	}
	if _, err := b.ForwardBatch([][]int32{{1}, {99}}, []int{0}); err == nil || !strings.Contains(err.Error(), "sequence 1") {
		t.Errorf("ForwardBatch: err = %v", err)
	}
	b.Close()
	if _, err := b.Forward([]int32{1}, []int{0}); err == nil {
		t.Errorf("Forward after Close succeeded")
	}
}

func TestDemoConfig(t *testing.T) {
	c := DemoConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Vocab != 259 || c.BOS != 256 || c.EOS != 257 || c.Arch != "qwen2" || !c.QKVBias || !c.TiedEmbeddings {
		t.Errorf("DemoConfig %+v", c)
	}
	dir := t.TempDir()
	if err := WriteRandomBase(dir, c, 1); err != nil {
		t.Fatal(err)
	}
	b, err := LoadBase(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Forward([]int32{256, 'h', 'i', 257}, []int{FinalLayer}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkForward measures prefill throughput (tokens/s) of Forward for
// FinalLayer. "qwen2.5-0.5b-4L" has Qwen2.5-0.5B's block shapes with 4 of
// its 24 layers (and a small vocabulary, which Forward does not touch):
// multiply its time per token by 6 for the full model.
func BenchmarkForward(b *testing.B) {
	q05 := Config{Arch: "qwen2", Dim: 896, Layers: 4, Heads: 14, KVHeads: 2, HeadDim: 64, FFN: 4864, Vocab: 1000,
		MaxPos: 32768, RopeTheta: 1e6, NormEps: 1e-6, TiedEmbeddings: true, QKVBias: true, BOS: -1, EOS: -1}
	for _, bc := range []struct {
		name string
		cfg  Config
		T    int
	}{{"demo/T=256", DemoConfig(), 256}, {"qwen2.5-0.5b-4L/T=128", q05, 128}, {"qwen2.5-0.5b-4L/T=512", q05, 512}} {
		b.Run(bc.name, func(b *testing.B) {
			m := randomBase(b, bc.cfg, 1)
			ids := make([]int32, bc.T)
			for i := range ids {
				ids[i] = int32(i * 31 % bc.cfg.Vocab)
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Forward(ids, []int{FinalLayer}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(bc.T*b.N)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}

// refCausalAttention is position t's attention output in float64: each of
// heads query heads (sharing kvHeads key/value heads, repeat_kv) attends
// with a softmax over positions 0..t of k and v (rows of kvHeads·hd).
func refCausalAttention(q, k, v [][]float64, t, heads, kvHeads, hd int) []float64 {
	att := make([]float64, heads*hd)
	for h := range heads {
		kh := h / (heads / kvHeads)
		sc := make([]float64, t+1)
		mx := math.Inf(-1)
		for j := 0; j <= t; j++ {
			for i := range hd {
				sc[j] += q[t][h*hd+i] * k[j][kh*hd+i]
			}
			sc[j] /= math.Sqrt(float64(hd))
			mx = math.Max(mx, sc[j])
		}
		var z float64
		for j := range sc {
			sc[j] = math.Exp(sc[j] - mx)
			z += sc[j]
		}
		for j := range sc {
			for i := range hd {
				att[h*hd+i] += sc[j] / z * v[j][kh*hd+i]
			}
		}
	}
	return att
}

// randomBase is NewRandomBase(cfg, seed); it fails t on an error.
func randomBase(t testing.TB, cfg Config, seed uint64) *Base {
	t.Helper()
	b, err := NewRandomBase(cfg, seed)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
