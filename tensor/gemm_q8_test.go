package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// allQ8Kernels names every int8 implementation, plain (q8Kernels) and
// packed (q8pKernels): the two come in the same instruction sets, chosen
// by the same CPU features. The ones this CPU lacks skip.
var allQ8Kernels = []string{"go", "avx2-vpmaddubsw", "avx-vnni", "avx512-vnni"}

// TestQ8KernelNames checks that allQ8Kernels names every int8 kernel this
// build runs, plain and packed, so that none goes untested by a skip.
func TestQ8KernelNames(t *testing.T) {
	var names []string
	for _, k := range q8Available {
		names = append(names, k.name)
	}
	for _, k := range q8pAvailable {
		names = append(names, "packed "+k.name)
	}
	for _, n := range names {
		if !slices.Contains(allQ8Kernels, strings.TrimPrefix(n, "packed ")) {
			t.Errorf("int8 kernel %s is not in allQ8Kernels %v", n, allQ8Kernels)
		}
	}
}

func q8KernelsOrSkip(tb testing.TB, name string) *q8Kernels {
	return namedOrSkip(tb, "int8", q8Available, name, func(k *q8Kernels) string { return k.name })
}

// randQ8Matrix returns a Q8_0 matrix (n, k) with random scales and quants
// over the whole int8 range (−128 included, which the file format allows).
func randQ8Matrix(rng *rand.Rand, n, k int) QuantMatrix {
	data := make([]byte, n*k/32*34)
	for b := 0; b < len(data); b += 34 {
		d := float32(rng.ExpFloat64()*0.01) * float32(1-2*rng.IntN(2))
		binary.LittleEndian.PutUint16(data[b:], F32ToF16(d))
		for t := 0; t < 32; t++ {
			data[b+2+t] = byte(rng.IntN(256))
		}
	}
	w, err := NewQuantMatrix(GGMLQ8_0, n, k, data)
	if err != nil {
		panic(err)
	}
	return w
}

// TestGemmQ8 checks every int8 kernel against float64 arithmetic on the
// same quantized operands, and the activation quantization against the
// float32 A:
//
//	|got − Σ qa·da·qw·dw| ≤ (nb+12)·2⁻²⁴·Σ|qa·da·qw·dw|   (float32 sums of exact block sums)
//	|got − Σ a·qw·dw|     ≤ Σ_b (d_a,b/2)·Σ|qw·dw| + the above (rounding a to the nearest step)
//
// Shapes cover every tile height 1–4, weight-row counts off the tile
// width, odd block counts (the kernels' single-block tail) and several
// activation blocks.
func TestGemmQ8(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 8))
	type shape struct{ m, n, k int }
	shapes := []shape{{1, 1, 32}, {1, 13, 96}, {2, 7, 64}, {3, 9, 160}, {4, 17, 320}, {5, 8, 32}, {7, 50, 224}, {9, 33, 96}, {66, 57, 128}, {130, 20, 64}}
	if !testing.Short() {
		shapes = append(shapes, shape{67, 101, 896})
	}
	for _, name := range allQ8Kernels {
		t.Run(name, func(t *testing.T) {
			ks := q8KernelsOrSkip(t, name)
			worst := 0.0
			for _, s := range shapes {
				w := randQ8Matrix(rng, s.n, s.k)
				a, lda, c, ldc := q8Operands(rng, s.m, s.n, s.k)
				for _, th := range []int{1, 2} {
					old := runtime.GOMAXPROCS(th)
					gemmQ8With(ks, s.m, a, lda, &w, c, ldc)
					runtime.GOMAXPROCS(old)
					var act q8Act
					quantizeQ8Act(&act, s.m, s.k, a, lda)
					wf := DequantizeGGMLOrPanic(w)
					nb := s.k / 32
					for i := 0; i < s.m; i++ {
						row := act.buf[i*act.stride:]
						for j := 0; j < s.n; j++ {
							var want, mag, wantA, qbound float64
							for p := 0; p < s.k; p++ {
								b := p / 32
								pr := row[b/2*q8PairBytes:]
								qa := float64(int8(pr[32*(b%2)+p%32]))
								da := float64(math.Float32frombits(binary.LittleEndian.Uint32(pr[64+32*(b%2):])))
								wv := float64(wf[j*s.k+p])
								want += qa * da * wv
								mag += math.Abs(qa * da * wv)
								wantA += float64(a[i*lda+p]) * wv
								qbound += da / 2 * math.Abs(wv)
							}
							got := float64(c[i*ldc+j])
							bound := checkQ8Sum(t, &worst, got, want, mag, nb, "%v threads=%d: C[%d,%d]", s, th, i, j)
							if e := math.Abs(got - wantA); !(e <= qbound*(1+1e-6)+bound) {
								t.Fatalf("%v: C[%d,%d] = %g, unquantized A gives %g (|err| %.3g > %.3g)", s, i, j, got, wantA, e, qbound+bound)
							}
						}
					}
				}
			}
			t.Logf("%s: largest error %.3g·2⁻²⁴·mag", name, worst)
		})
	}
}

// checkQ8Sum fails t unless got, an int8 product, is within the bound of
// TestGemmQ8 of want, the float64 sum of its nb blocks' terms on the same
// quantized operands: |got − want| ≤ (nb+12)·2⁻²⁴·mag, mag the sum of the
// terms' magnitudes. It returns the bound and raises *worst to the error in
// units of 2⁻²⁴·mag; format and args name the element in the message.
func checkQ8Sum(t *testing.T, worst *float64, got, want, mag float64, nb int, format string, args ...any) (bound float64) {
	t.Helper()
	bound = float64(nb+12) * gemmEps * mag
	if e := math.Abs(got - want); !(e <= bound) {
		t.Fatalf("%s = %g, want %g (|err| %.3g > %.3g)", fmt.Sprintf(format, args...), got, want, e, bound)
	} else if mag > 0 {
		*worst = max(*worst, e/(gemmEps*mag))
	}
	return bound
}

// q8Operands returns a random A (m, k) for the int8 products (lda k+3,
// some zeros, an all-zero first block: d = 0) and a C (m, n) (ldc n+2)
// filled with NaN, which the products overwrite and never read.
func q8Operands(rng *rand.Rand, m, n, k int) (a []float32, lda int, c []float32, ldc int) {
	lda, ldc = k+3, n+2
	a = gemmRandSlice(rng, m*lda)
	for i := range a {
		if rng.IntN(50) == 0 {
			a[i] = 0
		}
	}
	copy(a[:32], make([]float32, 32))
	c = make([]float32, (m-1)*ldc+n)
	for i := range c {
		c[i] = float32(math.NaN())
	}
	return a, lda, c, ldc
}

// DequantizeGGMLOrPanic decodes a whole QuantMatrix to float32 (tests only).
func DequantizeGGMLOrPanic(w QuantMatrix) []float32 {
	out := make([]float32, w.Rows*w.Cols)
	rb := w.rowBytes()
	for j := 0; j < w.Rows; j++ {
		dequantRowSeg(out[j*w.Cols:(j+1)*w.Cols], w.Data[j*rb:(j+1)*rb], w.Type, 0)
	}
	return out
}

// TestGemmQ8Panics checks that a non-Q8_0 weight is refused.
func TestGemmQ8Panics(t *testing.T) {
	w := QuantMatrix{Type: GGMLF16, Rows: 1, Cols: 32, Data: make([]byte, 64)}
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "not Q8_0") {
			t.Fatalf("panic = %v, want a Q8_0 complaint", r)
		}
	}()
	GemmQ8(1, make([]float32, 32), 32, w, make([]float32, 1), 1)
}

// TestQ8VEXEncoding checks the hand-encoded AVX-VNNI VPDPBUSD bytes (the Go
// assembler knows only the EVEX form) against GNU as, whether or not this
// CPU runs them.
func TestQ8VEXEncoding(t *testing.T) {
	src, err := os.ReadFile("gemm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`BYTE (.*) // VPDPBUSD \(VEX\) Y(\d+), Y(\d+), Y(\d+)`)
	seen := map[string]bool{}
	var gas strings.Builder
	var wantBytes []string
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		if seen[m[0]] {
			continue
		}
		seen[m[0]] = true
		fmt.Fprintf(&gas, "{vex} vpdpbusd %%ymm%s, %%ymm%s, %%ymm%s\n", m[4], m[3], m[2])
		wantBytes = append(wantBytes, byteDirective(t, m[1])...)
	}
	if len(wantBytes) == 0 {
		t.Fatal("no VEX VPDPBUSD found in gemm_amd64.s")
	}
	checkX86Encodings(t, "AVX-VNNI (VEX VPDPBUSD)", gas.String(), wantBytes)
	t.Logf("%d distinct VEX VPDPBUSD encodings match GNU as", len(seen))
}
