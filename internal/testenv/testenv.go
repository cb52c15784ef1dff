// Package testenv finds the read-only ../shared folder that sits beside the
// repository for developers and CI, and skips tests cleanly where it is
// absent (a user's fresh clone). CI sets CARRYON_REQUIRE_SHARED=1, which
// turns such a skip into a failure.
package testenv

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// RepoRoot returns the directory holding go.mod, walking up from the
// current directory (a package directory under go test).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("testenv: getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Shared returns the path of ../shared beside the repository, or skips the
// test (fails it when CARRYON_REQUIRE_SHARED=1) when it is missing.
// Tests must only read it.
func Shared(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("CARRYON_SHARED")
	if dir == "" {
		dir = filepath.Join(filepath.Dir(RepoRoot(t)), "shared")
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
		Missing(t, "CARRYON_REQUIRE_SHARED", "shared data folder %s is missing (set CARRYON_SHARED to its path)", dir)
	}
	return dir
}

// Missing skips the test with the message, or fails it when the
// environment variable env is "1" (CI's way of saying the prerequisite must
// be there).
func Missing(t testing.TB, env, format string, args ...any) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf("required by %s=1: "+format, append([]any{env}, args...)...)
	}
	t.Skipf("skipping: "+format, args...)
}

// MaxRel is the largest absolute difference of a and b relative to the
// largest magnitude in b: max|a-b| / max|b|.
func MaxRel(a, b []float32) float64 {
	var d, m float64
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i])-float64(b[i])))
		m = math.Max(m, math.Abs(float64(b[i])))
	}
	return d / m
}

// DecodeTol bounds the per-position relative difference between
// incremental (KV-cached) and full forwards: both run in float32 and differ
// only in the order of the attention sums (measured: a few 1e-7).
const DecodeTol = 1e-5

// RowRel is MaxRel of row t of two (T, d) matrices.
func RowRel(a, b []float32, t, d int) float64 {
	return MaxRel(a[t*d:(t+1)*d], b[t*d:(t+1)*d])
}

// DecodeSplits feeds a sequence of n tokens to a KV-cached session as: a
// prefill from 0, a prefill of more than rows rows on top of it (rows: the
// cached attention's block, tensor.CachedAttentionRows), then single steps.
func DecodeSplits(rows, n int) [][2]int {
	out := [][2]int{{0, 5}, {5, 5 + rows + 6}}
	for i := out[1][1]; i < n; i++ {
		out = append(out, [2]int{i, i + 1})
	}
	return out
}
