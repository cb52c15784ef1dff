package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/big"
	"math/rand/v2"
	"runtime"
	"testing"
)

func q8pKernelsOrSkip(tb testing.TB, name string) *q8pKernels {
	return namedOrSkip(tb, "packed int8", q8pAvailable, name, func(k *q8pKernels) string { return k.name })
}

// namedOrSkip returns the implementation called name among those this CPU
// runs (avail), or skips the test.
func namedOrSkip[K any](tb testing.TB, what string, avail []*K, name string, nameOf func(*K) string) *K {
	for _, ks := range avail {
		if nameOf(ks) == name {
			return ks
		}
	}
	tb.Skipf("%s kernel %s: not available on this CPU/build", what, name)
	return nil
}

// TestQuantQ8Row checks each kernel's activation quantizer against the Go
// model bit for bit (q, d and the offset correction), in every row of
// every tile height, with all-zero blocks, exact ties (x·127/amax = n+½)
// and the extremes ±amax.
func TestQuantQ8Row(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const nb = 7
	for _, name := range allQ8Kernels {
		t.Run(name, func(t *testing.T) {
			ks := q8pKernelsOrSkip(t, name)
			for h := 1; h <= q8pTile; h++ {
				for r := 0; r < h; r++ {
					x := gemmRandSlice(rng, 32*nb)
					clear(x[32:64])           // block 1: all zero, d = 0
					x[64], x[65] = 127, 0.5   // block 2: amax 127, a tie at 0.5
					x[66], x[67] = -1.5, -127 // ties at −1.5 and −amax
					for p := 96; p < 128; p++ {
						x[p] = float32(rng.NormFloat64() * 1e-30) // tiny, not zero
					}
					want := make([]byte, nb*h*q8pActBlock)
					got := bytes.Clone(want)
					for i := range want {
						want[i], got[i] = byte(i), byte(i) // other rows' bytes stay
					}
					quantQ8RowGo(x, want, r, h)
					ks.quant(x, got, r, h)
					if !bytes.Equal(got, want) {
						t.Fatalf("h=%d r=%d: tile bytes differ from the Go model\n got %v\nwant %v", h, r, got, want)
					}
					// The model itself: q·d is within d/2 of x, corr is −128·Σq.
					for b := 0; b < nb; b++ {
						blk := want[b*h*q8pActBlock:]
						d := math.Float32frombits(binary.LittleEndian.Uint32(blk[32*h+4*r:]))
						var s int32
						for p := 0; p < 32; p++ {
							q := int8(blk[32*r+p])
							s += int32(q)
							if e := math.Abs(float64(q)*float64(d) - float64(x[32*b+p])); e > float64(d)*0.5000001 {
								t.Fatalf("block %d: q·d = %g for x = %g (d %g)", b, float64(q)*float64(d), x[32*b+p], d)
							}
						}
						if c := int32(binary.LittleEndian.Uint32(blk[36*h+4*r:])); c != -128*s {
							t.Fatalf("block %d: corr %d, want %d", b, c, -128*s)
						}
					}
					if q := int8(want[2*h*q8pActBlock+32*r+1]); q != 0 {
						t.Fatalf("0.5 with d = 1 rounds to %d, want 0 (to even)", q)
					}
					if q := int8(want[2*h*q8pActBlock+32*r+2]); q != -2 {
						t.Fatalf("−1.5 with d = 1 rounds to %d, want −2 (to even)", q)
					}
				}
			}
		})
	}
}

// TestGemmQ8Packed checks every packed int8 kernel against float64
// arithmetic on the same quantized operands (the bound of TestGemmQ8), and
// PackQ8 against the weight it packs. Shapes cover every tile height 1–6,
// partial last panels, and (at k 4096) more rows than one L2 step.
func TestGemmQ8Packed(t *testing.T) {
	rng := rand.New(rand.NewPCG(16, 9))
	type shape struct{ m, n, k int }
	shapes := []shape{{1, 1, 32}, {1, 33, 96}, {2, 7, 64}, {3, 32, 160}, {4, 17, 320}, {5, 64, 32}, {6, 50, 224}, {7, 95, 96}, {13, 33, 128}}
	if !testing.Short() {
		shapes = append(shapes, shape{200, 40, 4096}, shape{67, 101, 896})
	}
	for _, name := range allQ8Kernels {
		t.Run(name, func(t *testing.T) {
			ks := q8pKernelsOrSkip(t, name)
			worst := 0.0
			for _, s := range shapes {
				wq := randQ8Matrix(rng, s.n, s.k)
				w := PackQ8(wq)
				a, lda, c, ldc := q8Operands(rng, s.m, s.n, s.k)
				wf := DequantizeGGMLOrPanic(wq)
				nb := s.k / 32
				// The quantized activations, by the Go model.
				qa := make([]float64, s.m*s.k)
				da := make([]float64, s.m*nb)
				for i := 0; i < s.m; i++ {
					tile := make([]byte, nb*q8pActBlock)
					quantQ8RowGo(a[i*lda:i*lda+s.k], tile, 0, 1)
					for b := 0; b < nb; b++ {
						da[i*nb+b] = float64(math.Float32frombits(binary.LittleEndian.Uint32(tile[b*q8pActBlock+32:])))
						for p := 0; p < 32; p++ {
							qa[i*s.k+32*b+p] = float64(int8(tile[b*q8pActBlock+p]))
						}
					}
				}
				for _, th := range []int{1, 2} {
					old := runtime.GOMAXPROCS(th)
					gemmQ8PackedWith(ks, s.m, a, lda, w, c, ldc)
					runtime.GOMAXPROCS(old)
					for i := 0; i < s.m; i++ {
						for j := 0; j < s.n; j++ {
							var want, mag float64
							for p := 0; p < s.k; p++ {
								v := qa[i*s.k+p] * da[i*nb+p/32] * float64(wf[j*s.k+p])
								want += v
								mag += math.Abs(v)
							}
							checkQ8Sum(t, &worst, float64(c[i*ldc+j]), want, mag, nb, "%v threads=%d: C[%d,%d]", s, th, i, j)
						}
						for j := s.n; j < ldc && i < s.m-1; j++ {
							if !math.IsNaN(float64(c[i*ldc+j])) {
								t.Fatalf("%v: C[%d,%d] past n was written", s, i, j)
							}
						}
					}
				}
			}
			t.Logf("%s: largest error %.3g·2⁻²⁴·mag", name, worst)
		})
	}
}

// TestPackQ8Errors checks that a weight that is not whole Q8_0 is refused.
func TestPackQ8Errors(t *testing.T) {
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("PackQ8 of an F16 matrix did not panic")
		}
	}()
	PackQ8(QuantMatrix{Type: GGMLF16, Rows: 1, Cols: 32, Data: make([]byte, 64)})
}

// q8pTileFMA is the model of the vector packed kernels bit for bit: each
// column's exact int32 block sum, converted, times d_a, then one fused
// multiply-add with d_w into the float32 accumulator.
func q8pTileFMA(nb int, a []byte, r int, w []byte, c []float32, ldc int) {
	for i := 0; i < r; i++ {
		for j := 0; j < q8pCols; j++ {
			var acc float32
			for b := 0; b < nb; b++ {
				blk := a[b*q8pActBlock*r:]
				wb := w[b*q8pBlockBytes:]
				s := int32(binary.LittleEndian.Uint32(blk[36*r+4*i:]))
				for g := 0; g < q8pGroups; g++ {
					for t := 0; t < 4; t++ {
						s += int32(wb[q8pScaleBytes+g*q8pGroupBytes+4*j+t]) * int32(int8(blk[32*i+4*g+t]))
					}
				}
				da := math.Float32frombits(binary.LittleEndian.Uint32(blk[32*r+4*i:]))
				dw := math.Float32frombits(binary.LittleEndian.Uint32(wb[4*j:]))
				acc = fma32(float32(s)*da, dw, acc)
			}
			c[i*ldc+j] = acc
		}
	}
}

// fma32 is a·b + c rounded once to float32 (nearest, ties to even), as
// VFMADD231PS: exact in big.Float, since math.FMA's float64 result rounded
// again to float32 can differ in the last bit.
func fma32(a, b, c float32) float32 {
	x := new(big.Float).SetPrec(256).SetFloat64(float64(a))
	x.Mul(x, new(big.Float).SetFloat64(float64(b)))
	x.Add(x, new(big.Float).SetFloat64(float64(c)))
	f, _ := x.Float32()
	return f
}

// TestQ8PackedKernelModel checks every vector packed int8 kernel against
// q8pTileFMA bit for bit, on every tile height, with the extreme bytes
// that would saturate 16-bit pair sums (weights −128, ±127; activations
// ±127) as well as random ones.
func TestQ8PackedKernelModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 5))
	for _, name := range allQ8Kernels[1:] {
		t.Run(name, func(t *testing.T) {
			ks := q8pKernelsOrSkip(t, name)
			for _, extreme := range []bool{false, true} {
				for _, nb := range []int{1, 2, 7, 28} {
					k := 32 * nb
					wq := randQ8Matrix(rng, q8pCols, k)
					if extreme {
						for j := 0; j < q8pCols; j++ {
							for b := 0; b < nb; b++ {
								for p := 0; p < 32; p++ {
									wq.Data[j*34*nb+34*b+2+p] = []byte{0x80, 0x7f, 0x81}[(j+p)%3]
								}
							}
						}
					}
					w := PackQ8(wq)
					for r := 1; r <= q8pTile; r++ {
						a := make([]byte, nb*r*q8pActBlock)
						for b := 0; b < nb; b++ {
							for i := 0; i < r; i++ {
								blk := a[b*q8pActBlock*r:]
								var s int32
								for p := 0; p < 32; p++ {
									q := int8(rng.IntN(255) - 127)
									if extreme {
										q = []int8{127, -127}[(i+p/2)%2]
									}
									blk[32*i+p] = byte(q)
									s += int32(q)
								}
								binary.LittleEndian.PutUint32(blk[32*r+4*i:], math.Float32bits(rng.Float32()/100))
								binary.LittleEndian.PutUint32(blk[36*r+4*i:], uint32(-128*s))
							}
						}
						want := make([]float32, r*q8pCols)
						got := make([]float32, r*q8pCols)
						q8pTileFMA(nb, a, r, w.data, want, q8pCols)
						ks.tile(nb, a, r, w.data, got, q8pCols)
						for e := range got {
							if math.Float32bits(got[e]) != math.Float32bits(want[e]) {
								t.Fatalf("extreme=%v nb=%d rows=%d: C[%d,%d] = %g, model %g", extreme, nb, r, e/q8pCols, e%q8pCols, got[e], want[e])
							}
						}
					}
				}
			}
		})
	}
}
