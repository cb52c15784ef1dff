package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

var quantTestTypes = []GGMLType{GGMLF16, GGMLBF16, GGMLQ8_0, GGMLQ4_K, GGMLQ6_K}

// randQuantMatrix returns a random W (n, k) of type t and its dequantized
// float32 values (DequantizeGGML). Block scales are kept finite and small
// so the values look like weights; all other bytes are random.
func randQuantMatrix(t testing.TB, rng *rand.Rand, typ GGMLType, n, k int) (QuantMatrix, []float32) {
	t.Helper()
	rb, err := typ.RowBytes(k)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, n*rb)
	le := binary.LittleEndian
	scale := func() uint16 { return F32ToF16(float32(0.001 + 0.02*rng.Float64())) }
	switch typ {
	case GGMLF16:
		for i := 0; i < n*k; i++ {
			le.PutUint16(data[2*i:], F32ToF16(float32(rng.NormFloat64())))
		}
	case GGMLBF16:
		for i := 0; i < n*k; i++ {
			le.PutUint16(data[2*i:], F32ToBF16(float32(rng.NormFloat64())))
		}
	case GGMLQ8_0:
		QuantizeQ8_0(data, gemmRandSlice(rng, n*k))
	case GGMLQ4_K:
		for b := 0; b < len(data); b += 144 {
			for i := 4; i < 144; i++ {
				data[b+i] = byte(rng.Uint32())
			}
			le.PutUint16(data[b:], scale())
			le.PutUint16(data[b+2:], scale())
		}
	case GGMLQ6_K:
		for b := 0; b < len(data); b += 210 {
			for i := 0; i < 208; i++ {
				data[b+i] = byte(rng.Uint32())
			}
			le.PutUint16(data[b+208:], scale())
		}
	}
	w, err := NewQuantMatrix(typ, n, k, data)
	if err != nil {
		t.Fatal(err)
	}
	deq := make([]float32, n*k)
	if err := DequantizeGGML(deq, data, typ); err != nil {
		t.Fatal(err)
	}
	return w, deq
}

// quantTestK returns depths that are whole blocks of typ and cross the kc
// blocks (128 and 256) of every kernel and the quantSegMax segments of the
// small-m path.
func quantTestK(typ GGMLType) []int {
	switch typ {
	case GGMLQ8_0:
		return []int{32, 96, 288, 544, 1056}
	case GGMLQ4_K, GGMLQ6_K:
		return []int{256, 512, 768, 1280}
	}
	return []int{1, 7, 129, 300, 1100}
}

// TestGemmQuant checks GemmQuant for every supported type, every kernel set
// this build can run (plus the emulated AVX-512 blocking) and 1 or 2
// threads. For m > smallMMax the result must be bitwise what Gemm gives on
// the dequantized W (same panels, same micro-kernel, same order); for small
// m it is compared with a float64 reference at Gemm's tolerance. Padding
// between the rows of C must survive.
func TestGemmQuant(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	kernels := gemmTestSets()
	for _, typ := range quantTestTypes {
		for _, k := range quantTestK(typ) {
			for _, s := range []struct{ m, n int }{{1, 5}, {3, 17}, {8, 33}, {9, 7}, {37, 70}, {13, 3073}} {
				if s.n > 1000 && k > 300 {
					continue // keep the test quick
				}
				w, deq := randQuantMatrix(t, rng, typ, s.n, k)
				lda, ldc := k+3, s.n+2
				a := gemmRandSlice(rng, (s.m-1)*lda+k)
				const sentinel = 12345.5
				c0 := make([]float32, (s.m-1)*ldc+s.n)   // NaN garbage: must be ignored
				zero := make([]float32, (s.m-1)*ldc+s.n) // the same as seen by the reference
				for i := range c0 {
					c0[i] = float32(math.NaN())
					if i%ldc >= s.n {
						c0[i], zero[i] = sentinel, sentinel
					}
				}
				for _, ks := range kernels {
					for _, th := range []int{1, 2} {
						name := fmt.Sprintf("%s/%s/m=%d n=%d k=%d/threads=%d", typ, ks.name, s.m, s.n, k, th)
						old := runtime.GOMAXPROCS(th)
						got := append([]float32(nil), c0...)
						gemmQuantWith(ks, s.m, a, lda, &w, got, ldc)
						runtime.GOMAXPROCS(old)
						if s.m <= smallMMax {
							checkPackedRef(t, name, s.m, s.n, k, 1, a, lda, deq, k, true, 0, zero, got, ldc)
							continue
						}
						want := append([]float32(nil), c0...)
						ks.gemm(false, true, s.m, s.n, k, 1, a, lda, deq, k, 0, want, ldc)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
								t.Fatalf("%s: c[%d] = %v, Gemm on the dequantized W gives %v", name, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
}

// TestGemmQuantN checks C = A·W (W untransposed, an LM head's input
// gradient) for every type, kernel set and 1–2 threads: bitwise Gemm on
// the dequantized W, with beta = 0 (one thread) and 0.5 (two threads).
func TestGemmQuantN(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	kernels := append(gemmAvailable[:len(gemmAvailable):len(gemmAvailable)], gemmEmulated)
	for _, typ := range quantTestTypes {
		for _, k := range quantTestK(typ) {
			for _, s := range []struct{ m, n int }{{1, 5}, {3, 300}, {9, 7}, {37, 70}} {
				w, deq := randQuantMatrix(t, rng, typ, s.n, k) // W: (n, k); C: (m, k)
				lda, ldc := s.n+3, k+2
				a := gemmRandSlice(rng, (s.m-1)*lda+s.n)
				for _, ks := range kernels {
					for _, th := range []int{1, 2} {
						name := fmt.Sprintf("%s/%s/m=%d n=%d k=%d/threads=%d", typ, ks.name, s.m, s.n, k, th)
						got := make([]float32, (s.m-1)*ldc+k)
						for i := range got {
							got[i] = float32(math.NaN())
						}
						beta := float32(0)
						if th == 2 {
							beta = 0.5 // C += …: the LM head's dy
							for i := range got {
								got[i] = float32(i%7) - 3
							}
						}
						want := append([]float32(nil), got...)
						old := runtime.GOMAXPROCS(th)
						gemmQuantNWith(ks, s.m, a, lda, &w, beta, got, ldc)
						ks.gemm(false, false, s.m, k, s.n, 1, a, lda, deq, k, beta, want, ldc)
						runtime.GOMAXPROCS(old)
						for i := range got {
							if math.Float32bits(got[i]) != math.Float32bits(want[i]) && !(i%ldc >= k) {
								t.Fatalf("%s: c[%d] = %v, Gemm on the dequantized W gives %v", name, i, got[i], want[i])
							}
						}
					}
				}
			}
		}
	}
}

// TestDequantRowSeg checks that any segment of a row decodes to the same
// values as the whole row.
func TestDequantRowSeg(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, typ := range quantTestTypes {
		k := 768
		w, deq := randQuantMatrix(t, rng, typ, 2, k)
		for r := 0; r < 200; r++ {
			p0 := rng.IntN(k)
			n := rng.IntN(k - p0 + 1)
			got := make([]float32, n)
			dequantRowSeg(got, w.row(1), typ, p0)
			for i, v := range got {
				if math.Float32bits(v) != math.Float32bits(deq[k+p0+i]) {
					t.Fatalf("%s [%d, %d): element %d = %v, want %v", typ, p0, p0+n, p0+i, v, deq[k+p0+i])
				}
			}
		}
	}
}

func TestNewQuantMatrixErrors(t *testing.T) {
	for _, tc := range []struct {
		name       string
		typ        GGMLType
		rows, cols int
		bytes      int
		want       string
	}{
		{"short data", GGMLQ8_0, 2, 64, 2*68 - 1, "takes 136 bytes, got 135"},
		{"long data", GGMLQ4_K, 1, 256, 145, "takes 144 bytes"},
		{"bad cols", GGMLQ4_K, 2, 100, 288, "not a whole number"},
		{"unsupported", GGMLQ4_0, 1, 32, 18, "not supported"},
		{"f32", GGMLF32, 1, 4, 16, "not supported"},
		{"negative", GGMLF16, -1, 4, 0, "negative"},
	} {
		_, err := NewQuantMatrix(tc.typ, tc.rows, tc.cols, make([]byte, tc.bytes))
		if err == nil || !strings.Contains(err.Error(), "tensor.NewQuantMatrix") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one naming tensor.NewQuantMatrix and %q", tc.name, err, tc.want)
		}
	}
	w, err := NewQuantMatrix(GGMLQ6_K, 3, 512, make([]byte, 3*420))
	if err != nil || w.Bytes() != 3*420 || w.Rows != 3 || w.Cols != 512 {
		t.Errorf("NewQuantMatrix(Q6_K, 3, 512) = %+v, %v", w, err)
	}
}

func TestGemmQuantPanics(t *testing.T) {
	w, err := NewQuantMatrix(GGMLQ8_0, 4, 32, make([]byte, 4*34))
	if err != nil {
		t.Fatal(err)
	}
	bad := w
	bad.Data = bad.Data[:100]
	for name, f := range map[string]func(){
		"short a":       func() { GemmQuant(2, make([]float32, 63), 32, w, make([]float32, 8), 4) },
		"short c":       func() { GemmQuant(2, make([]float32, 64), 32, w, make([]float32, 7), 4) },
		"short a, m>8":  func() { GemmQuant(9, make([]float32, 9*32-1), 32, w, make([]float32, 36), 4) },
		"small ldc":     func() { GemmQuant(2, make([]float32, 64), 32, w, make([]float32, 8), 3) },
		"bad W (short)": func() { GemmQuant(2, make([]float32, 64), 32, bad, make([]float32, 8), 4) },
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "tensor.GemmQuant") {
					t.Errorf("%s: recover() = %v, want a tensor.GemmQuant panic", name, r)
				}
			}()
			f()
		}()
	}
}

// BenchmarkMatMulQuant times GemmQuant per weight type next to GemmPacked
// (float32 weights packed once) on Qwen2.5-0.5B MLP shapes: gate/up
// (n=4864, k=896) and down (n=896, k=4864; k=896 is not a whole number of
// K-quant blocks, so Q4_K and Q6_K run only there), prefill m=512 and
// decode m=1, with 1 thread and all of them.
//
//	go test ./tensor/ -run XXX -bench MatMulQuant
func BenchmarkMatMulQuant(b *testing.B) {
	rng := rand.New(rand.NewPCG(25, 26))
	for _, s := range []struct {
		name string
		n, k int
	}{{"gateup", 4864, 896}, {"down", 896, 4864}} {
		for _, typ := range []GGMLType{GGMLF32, GGMLQ8_0, GGMLQ4_K, GGMLQ6_K, GGMLBF16} {
			if _, err := typ.RowBytes(s.k); err != nil {
				continue
			}
			var w QuantMatrix
			var pb *PackedB
			if typ == GGMLF32 {
				pb = PackB(true, s.n, s.k, gemmRandSlice(rng, s.n*s.k), s.k)
			} else {
				w, _ = randQuantMatrix(b, rng, typ, s.n, s.k)
			}
			for _, m := range []int{512, 1} {
				a := gemmRandSlice(rng, m*s.k)
				c := make([]float32, m*s.n)
				for _, th := range benchThreads() {
					label := typ.String()
					if typ == GGMLF32 {
						label = "F32-packed"
					}
					b.Run(fmt.Sprintf("%s-m=%d/%s/threads=%d", s.name, m, label, th), func(b *testing.B) {
						mul := func() { GemmQuant(m, a, s.k, w, c, s.n) }
						if pb != nil {
							mul = func() { GemmPacked(m, 1, a, s.k, pb, 0, c, s.n) }
						}
						benchGFLOPS(b, th, m, s.n, s.k, mul)
					})
				}
			}
		}
	}
}

// TestWidenHalf checks the bulk f16 and bf16 widening (assembly where the
// CPU has it) on every bit pattern against F16ToF32 and BF16ToF32: equal
// bits, except that a signalling NaN may come back quieted.
func TestWidenHalf(t *testing.T) {
	x := make([]byte, 2*65536+2)
	for h := 0; h < 65536; h++ {
		binary.LittleEndian.PutUint16(x[2+2*h:], uint16(h))
	}
	for _, bf16 := range []bool{false, true} {
		for _, off := range []int{0, 1} { // odd starts leave a tail for the Go loop
			y := make([]float32, 65536-off)
			widenHalf(y, x[2+2*off:], bf16)
			for i, v := range y {
				h := uint16(i + off)
				want := F16ToF32(h)
				if bf16 {
					want = BF16ToF32(h)
				}
				if math.Float32bits(v) != math.Float32bits(want) && !(v != v && want != want) {
					t.Fatalf("bf16=%v: widen(%#04x) = %#08x, want %#08x", bf16, h, math.Float32bits(v), math.Float32bits(want))
				}
			}
		}
	}
}

// TestCrossEntropyLMHeadQuant checks the LM-head loss and input gradient
// on a head kept in each GGML format against CrossEntropyLMHead on the
// decoded head: bitwise for chunks of more than 8 positions (the blocked
// GEMMs decode into the same panels), within float32 rounding for small
// chunks (GemmQuant's dot-product path sums in another order).
func TestCrossEntropyLMHeadQuant(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 28))
	T, D, V := 45, 256, 301
	y := gemmRandSlice(rng, T*D)
	for _, typ := range quantTestTypes {
		w, deq := randQuantMatrix(t, rng, typ, V, D)
		for _, chunk := range []int{3, 16, 64} {
			targets := make([]int32, T)
			for i := range targets {
				targets[i] = int32(rng.IntN(V))
				if chunk == 3 && i%5 == 2 {
					targets[i] = -1
				}
			}
			scratch := make([]float32, chunk*V)
			dyWant, dyGot := make([]float32, T*D), make([]float32, T*D)
			lw, nw := CrossEntropyLMHead(dyWant, y, deq, targets, T, D, V, chunk, 0.25, scratch)
			lg, ng := CrossEntropyLMHeadQuant(dyGot, y, w, targets, T, chunk, 0.25, scratch)
			if nw != ng {
				t.Fatalf("%s chunk %d: count %d, want %d", typ, chunk, ng, nw)
			}
			exact := chunk > smallMMax
			if exact && lw != lg || math.Abs(lw-lg) > 1e-5*math.Abs(lw) {
				t.Fatalf("%s chunk %d: loss %v, decoded head gives %v", typ, chunk, lg, lw)
			}
			for i := range dyWant {
				if exact && math.Float32bits(dyWant[i]) != math.Float32bits(dyGot[i]) ||
					math.Abs(float64(dyWant[i]-dyGot[i])) > 1e-4*(1+math.Abs(float64(dyWant[i]))) {
					t.Fatalf("%s chunk %d: dy[%d] = %v, decoded head gives %v", typ, chunk, i, dyGot[i], dyWant[i])
				}
			}
		}
	}
}
