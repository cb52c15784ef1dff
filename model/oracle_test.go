package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"carryon/internal/testenv"
)

// The llama.cpp oracle (shared/tools/llamacpp, see its README): an
// independent forward pass of the same HF checkpoints. Tests skip when it is
// not installed, and fail when CARRYON_REQUIRE_ORACLE=1.

// oracleTools returns the tools folder after checking that node, the
// oracle's cache (setup.sh) and numpy are there.
func oracleTools(t *testing.T) string {
	t.Helper()
	tools := filepath.Join(testenv.Shared(t), "tools", "llamacpp")
	if _, err := os.Stat(filepath.Join(tools, "hidden.mjs")); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "llama.cpp oracle tools missing: %v", err)
	}
	if _, err := exec.LookPath("node"); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "node is not installed (the llama.cpp oracle needs it)")
	}
	cache := os.Getenv("CARRYON_ORACLE_DIR")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "carryon-oracle")
	}
	for _, p := range []string{"node/node_modules/node-llama-cpp/package.json", "gguf-py"} {
		if _, err := os.Stat(filepath.Join(cache, p)); err != nil {
			testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "llama.cpp oracle not set up in %s (run %s/setup.sh): %v", cache, tools, err)
		}
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import numpy").Run(); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "/usr/bin/python3 with numpy is missing (setup.sh installs it): %v", err)
	}
	return tools
}

func runTool(t *testing.T, tools, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(tools, name), args...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	t.Logf("%s: %.1f s", name, time.Since(start).Seconds())
}

type oracleSeq struct {
	Tokens   []int32      `json:"tokens"`
	Hidden   [][]float64  `json:"hidden"`   // (T, n_embd)
	Logprobs [][]*float64 `json:"logprobs"` // (T, n_vocab); null where p underflowed
}

// runOracle converts the HF checkpoint in hfDir to GGUF and runs llama.cpp
// over seqs (ggufOracle).
func runOracle(t *testing.T, tools, hfDir string, seqs [][]int32) []oracleSeq {
	t.Helper()
	gguf := filepath.Join(t.TempDir(), "m.gguf")
	runTool(t, tools, "hf2gguf.py", hfDir, gguf)
	return ggufOracle(t, tools, gguf, seqs)
}

// ggufOracle runs llama.cpp's hidden.mjs on a GGUF file over seqs, one
// token per decode, returning hidden states and logprobs.
func ggufOracle(t *testing.T, tools, gguf string, seqs [][]int32) []oracleSeq {
	t.Helper()
	w := t.TempDir()
	toks, out := filepath.Join(w, "tok.json"), filepath.Join(w, "out.json")
	data, _ := json.Marshal(seqs)
	if err := os.WriteFile(toks, data, 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, tools, "hidden.mjs", gguf, toks, out, "--threads", "1")
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Sequences []oracleSeq `json:"sequences"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("oracle output: %v", err)
	}
	if len(res.Sequences) != len(seqs) {
		t.Fatalf("oracle returned %d sequences, want %d", len(res.Sequences), len(seqs))
	}
	return res.Sequences
}

// oracleErr summarises our outputs against llama.cpp's over all positions.
type oracleErr struct {
	positions, argmaxAgree, nulls int
	hiddenMaxAbs, hiddenRelL2     float64 // max over positions of ‖Δ‖/‖ref‖
	logpMaxAbs                    float64
}

func (e oracleErr) String() string {
	return fmt.Sprintf("hidden max|Δ| %.2e, hidden rel L2 %.2e, logprobs max|Δ| %.2e, argmax %d/%d",
		e.hiddenMaxAbs, e.hiddenRelL2, e.logpMaxAbs, e.argmaxAgree, e.positions)
}

// compareOracle runs our forward on each sequence and measures the errors.
func compareOracle(t *testing.T, b *Base, ref []oracleSeq) oracleErr {
	t.Helper()
	c := b.Config
	var e oracleErr
	for _, s := range ref {
		T := len(s.Tokens)
		if len(s.Hidden) != T || len(s.Logprobs) != T {
			t.Fatalf("oracle: %d hidden rows and %d logprob rows for %d tokens", len(s.Hidden), len(s.Logprobs), T)
		}
		out, err := b.Forward(s.Tokens, []int{FinalLayer})
		if err != nil {
			t.Fatal(err)
		}
		hidden := out[0]
		logits := b.Logits(hidden, T)
		for p := 0; p < T; p++ {
			if len(s.Hidden[p]) != c.Dim || len(s.Logprobs[p]) != c.Vocab {
				t.Fatalf("oracle: row widths %d/%d, want %d/%d", len(s.Hidden[p]), len(s.Logprobs[p]), c.Dim, c.Vocab)
			}
			var d2, r2 float64
			for j, want := range s.Hidden[p] {
				d := float64(hidden[p*c.Dim+j]) - want
				e.hiddenMaxAbs = math.Max(e.hiddenMaxAbs, math.Abs(d))
				d2 += d * d
				r2 += want * want
			}
			e.hiddenRelL2 = math.Max(e.hiddenRelL2, math.Sqrt(d2/r2))
			lp := logSoftmax(logits[p*c.Vocab : (p+1)*c.Vocab])
			best, bestRef := 0, -1
			for v, want := range s.Logprobs[p] {
				if lp[v] > lp[best] {
					best = v
				}
				if want == nil {
					e.nulls++
					continue
				}
				if bestRef < 0 || *want > *s.Logprobs[p][bestRef] {
					bestRef = v
				}
				e.logpMaxAbs = math.Max(e.logpMaxAbs, math.Abs(lp[v]-*want))
			}
			if best == bestRef {
				e.argmaxAgree++
			}
			e.positions++
		}
	}
	return e
}

func logSoftmax(logits []float32) []float64 {
	mx := math.Inf(-1)
	for _, l := range logits {
		mx = math.Max(mx, float64(l))
	}
	var z float64
	for _, l := range logits {
		z += math.Exp(float64(l) - mx)
	}
	lse := mx + math.Log(z)
	out := make([]float64, len(logits))
	for i, l := range logits {
		out[i] = float64(l) - lse
	}
	return out
}

// Tolerances against llama.cpp (its README measures llama.cpp itself at
// about 1e-6 relative from a float64 reference on these models).
const (
	oracleHiddenRelL2 = 1e-5
	oracleHiddenAbs   = 1e-4
	oracleLogpAbs     = 1e-4
)

func checkOracle(t *testing.T, name string, e oracleErr) {
	t.Helper()
	t.Logf("%-28s %v", name, e)
	if e.hiddenRelL2 > oracleHiddenRelL2 || e.hiddenMaxAbs > oracleHiddenAbs || e.logpMaxAbs > oracleLogpAbs ||
		e.argmaxAgree != e.positions || e.nulls > 0 || e.positions == 0 {
		t.Errorf("%s: %v (%d null logprobs); want hidden rel L2 <= %g, max|Δ| <= %g, logprobs max|Δ| <= %g, all argmax equal",
			name, e, e.nulls, oracleHiddenRelL2, oracleHiddenAbs, oracleLogpAbs)
	}
}

// TestOracleTiny checks the forward pass of the qwen2, qwen3 and llama tiny
// presets of make-random-hf.py against llama.cpp. qwen3 is stored as BF16
// (the widening path), llama has an untied head and llama3 RoPE scaling
// whose bands all act within these lengths.
func TestOracleTiny(t *testing.T) {
	tools := oracleTools(t)
	seqs := [][]int32{
		{1, 17, 300, 2, 999, 42, 5, 5, 5, 123, 456, 789, 0, 998, 64, 65, 66, 67, 68, 69, 70, 500, 501, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 700, 1},
		{7, 8},
		nil,
	}
	for i := 0; i < 40; i++ { // a longer pseudo-random sequence
		seqs[2] = append(seqs[2], int32((i*7919+13)%1000))
	}
	for _, tc := range []struct{ arch, dtype string }{{"qwen2", "f32"}, {"qwen3", "bf16"}, {"llama", "f32"}} {
		name := tc.arch + " tiny " + tc.dtype
		t.Run(tc.arch, func(t *testing.T) {
			t.Parallel() // each llama.cpp run is mostly start-up and per-token overhead
			dir := filepath.Join(t.TempDir(), "hf")
			runTool(t, tools, "make-random-hf.py", dir, "--arch", tc.arch, "--preset", "tiny", "--seed", "3", "--dtype", tc.dtype)
			// ExactBF16: llama.cpp runs the F32 GGUF of the bf16 weights, so
			// its products are exact (TestOracleGGUF checks BF16 GGUFs).
			b, err := LoadBaseWith(dir, LoadOptions{ExactBF16: true})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ref := runOracle(t, tools, dir, seqs)
			checkOracle(t, name, compareOracle(t, b, ref))
			if b.Config.RopeScaling == nil {
				return
			}
			// Negative control: the same weights without the llama3 RoPE
			// scaling must be caught by the comparison.
			cfg := b.Config
			cfg.RopeScaling = nil
			bad := &Base{Config: cfg, embed: b.embed, lmHead: b.lmHead, finalNorm: b.finalNorm, layers: b.layers}
			if e := compareOracle(t, bad, ref); e.hiddenRelL2 < 100*oracleHiddenRelL2 {
				t.Errorf("without rope_scaling the error is only %v: the comparison does not discriminate", e)
			} else {
				t.Logf("%-28s %v", "negative control (no scaling)", e)
			}
		})
	}
}
