package tensor

import (
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestParseCPUCap: a value lowers the level, never raises it; an unknown
// or too high value leaves the CPU's level and names it.
func TestParseCPUCap(t *testing.T) {
	levels := []string{"generic", "avx2", "avx512"}
	for _, tc := range []struct {
		env, active, warn string
		have              int
	}{
		{"", "avx512", "", 2},
		{"avx2", "avx2", "", 2},
		{" AVX2 ", "avx2", "", 2},
		{"go", "generic", "", 2},
		{"generic", "generic", "", 0},
		{"avx512", "avx2", "asks for more than this CPU has (avx2)", 1},
		{"pentium", "avx2", "not one of generic, avx2, avx512; using this CPU's avx2", 1},
	} {
		c := parseCPUCap(tc.env, levels, tc.have)
		if c.Active != tc.active || c.CPU != levels[tc.have] || c.Env != tc.env || !strings.Contains(c.Warning, tc.warn) || (tc.warn == "") != (c.Warning == "") {
			t.Errorf("parseCPUCap(%q, have %d) = %+v, want active %s, warning %q", tc.env, tc.have, c, tc.active, tc.warn)
		}
	}
}

// kernelLevel is the lowest level whose kernels include the named one.
var kernelLevel = map[string]string{
	"go": "generic", "avx2": "avx2", "avx2-vpmaddubsw": "avx2", "avx-vnni": "avxvnni", "avx512": "avx512",
	"avx512-vnni": "avx512", "avx512bf16": "avx512bf16", "neon": "neon",
}

// TestCPUCap runs this test binary with CARRYON_CPU set to every level the
// CPU has (and to one above it, and to a wrong name), and checks in the
// child (TestCPUCapChild) the kernels chosen and their results.
func TestCPUCap(t *testing.T) {
	if os.Getenv("CARRYON_CPU_TEST_WANT") != "" {
		t.Skip("in the child")
	}
	c := KernelCap()
	if c.Env == "" && c.Active != c.CPU {
		t.Fatalf("KernelCap() = %+v: no %s yet not the CPU's level", c, CPUEnv)
	}
	have := slices.Index(c.Levels, c.CPU)
	type run struct{ env, want, warn string }
	var runs []run
	for _, l := range c.Levels[:have+1] {
		runs = append(runs, run{l, l, ""})
	}
	if have+1 < len(c.Levels) {
		runs = append(runs, run{c.Levels[have+1], c.CPU, "asks for more than this CPU has (" + c.CPU + ")"})
	}
	runs = append(runs, run{"pentium4", c.CPU, "is not one of"})
	for _, r := range runs {
		t.Run(r.env, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestCPUCapChild$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), CPUEnv+"="+r.env, "CARRYON_CPU_TEST_WANT="+r.want, "CARRYON_CPU_TEST_WARN="+r.warn)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "--- PASS: TestCPUCapChild") {
				t.Fatalf("child with %s=%s: %v\n%s", CPUEnv, r.env, err, out)
			}
			if r.warn != "" && !strings.Contains(string(out), "carryon: tensor: "+CPUEnv+"="+r.env) {
				t.Errorf("child with %s=%s printed no warning:\n%s", CPUEnv, r.env, out)
			}
			t.Logf("%s", lastLine(string(out), "kernels:"))
		})
	}
}

func lastLine(s, prefix string) string {
	for _, l := range slices.Backward(strings.Split(s, "\n")) {
		if i := strings.Index(l, prefix); i >= 0 {
			return l[i:]
		}
	}
	return ""
}

// TestCPUCapChild runs in TestCPUCap's child process: every kernel choice
// is at or below the level asked for, the lowest two levels pick exactly
// their kernels, and the public products agree with the portable ones.
func TestCPUCapChild(t *testing.T) {
	want := os.Getenv("CARRYON_CPU_TEST_WANT")
	if want == "" {
		t.Skip("run by TestCPUCap")
	}
	c := KernelCap()
	if c.Active != want || !strings.Contains(c.Warning, os.Getenv("CARRYON_CPU_TEST_WARN")) {
		t.Fatalf("KernelCap() = %+v, want active %s, warning %q", c, want, os.Getenv("CARRYON_CPU_TEST_WARN"))
	}
	lv := func(name string) int {
		l, ok := kernelLevel[name]
		if !ok {
			t.Fatalf("kernel %q has no level in kernelLevel", name)
		}
		return slices.Index(c.Levels, l)
	}
	active := slices.Index(c.Levels, c.Active)
	paths := map[string]string{"gemm": GemmKernel(), "int8": Q8Path(), "int8 packed": Q8PackedPath()}
	for what, name := range paths {
		if lv(name) > active {
			t.Errorf("%s kernel %s is above the cap %s", what, name, c.Active)
		}
	}
	for _, ks := range gemmAvailable {
		if lv(ks.name) > active {
			t.Errorf("gemm set %s is available above the cap %s", ks.name, c.Active)
		}
	}
	if NativeBF16() && active < slices.Index(c.Levels, "avx512bf16") {
		t.Errorf("NativeBF16() under the cap %s", c.Active)
	}
	if expVector != (active >= slices.Index(c.Levels, "avx2") && slices.Contains(c.Levels, "avx2")) {
		t.Errorf("expVector = %v under the cap %s", expVector, c.Active)
	}
	switch c.Active {
	case "generic":
		if paths["gemm"] != "go" || paths["int8"] != "go" || paths["int8 packed"] != "go" {
			t.Errorf("generic: kernels %v, want go", paths)
		}
	case "avx2":
		if paths["gemm"] != "avx2" || paths["int8"] != "avx2-vpmaddubsw" {
			t.Errorf("avx2: kernels %v", paths)
		}
	}
	t.Logf("kernels: %s; gemm %s, int8 %s, packed %s", c.Active, paths["gemm"], paths["int8"], paths["int8 packed"])

	rng := rand.New(rand.NewPCG(7, 15))
	// float32 GEMM against float64.
	m, n, k := 37, 45, 300
	a, b := gemmRandSlice(rng, m*k), gemmRandSlice(rng, n*k)
	got := make([]float32, m*n)
	Gemm(false, true, m, n, k, 1, a, k, b, k, 0, got, n)
	ref, mag := gemmRef(false, true, m, n, k, 1, a, k, b, k, 0, got, n)
	for i := range got {
		if e := math.Abs(float64(got[i]) - ref[i]); !(e <= float64(k)*gemmEps*mag[i]) {
			t.Fatalf("Gemm: C[%d] = %g, want %g", i, got[i], ref[i])
		}
	}
	// int8 products against the portable kernels (the same quantized
	// activations; only the order of float32 sums differs).
	k = 256
	w := randQ8Matrix(rng, n, k)
	a = gemmRandSlice(rng, m*k)
	ref32 := make([]float32, m*n)
	gemmQ8With(q8Go, m, a, k, &w, ref32, n)
	GemmQ8(m, a, k, w, got, n)
	closeTo(t, "GemmQ8", got, ref32, 1e-4)
	pw := PackQ8(w)
	gemmQ8PackedWith(q8pGo, m, a, k, pw, ref32, n)
	GemmQ8Packed(m, a, k, pw, got, n)
	closeTo(t, "GemmQ8Packed", got, ref32, 1e-4)
	// softmax (the vector exp) against math.Exp.
	x := gemmRandSlice(rng, 3*40)
	sm := make([]float32, len(x))
	SoftmaxForward(sm, x, 3, 40)
	for r := 0; r < 3; r++ {
		var s float64
		for _, v := range x[40*r : 40*r+40] {
			s += math.Exp(float64(v))
		}
		for j, v := range x[40*r : 40*r+40] {
			if e := math.Abs(float64(sm[40*r+j]) - math.Exp(float64(v))/s); e > 1e-6 {
				t.Fatalf("SoftmaxForward[%d,%d]: error %g", r, j, e)
			}
		}
	}
}

// closeTo fails t unless |got-want| ≤ tol·(max |want| + 1) elementwise.
func closeTo(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	var scale float64
	for _, v := range want {
		scale = max(scale, math.Abs(float64(v)))
	}
	for i := range got {
		if e := math.Abs(float64(got[i] - want[i])); !(e <= tol*(scale+1)) {
			t.Fatalf("%s: [%d] = %g, want %g", what, i, got[i], want[i])
		}
	}
}
