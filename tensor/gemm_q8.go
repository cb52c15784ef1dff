package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
)

// Int8 products with Q8_0 weights (llama.cpp's approach): the activations
// are quantized per block of 32 to int8 with one float32 scale per block
// (q8Act), and each output is Σ_blocks d_a·d_w·(Σ q_a·q_w) with the inner
// sums exact in int32. The weight is read in the file's layout (34-byte
// blocks: f16 d, 32 int8 q), nothing is unpacked or decoded ahead of use,
// and each weight row is read once per tile of activation rows, so m = 1
// (decode) is a GEMV that reads every weight byte once.
//
// Kernels (chosen at run time, q8Available): AVX512_VNNI (VPDPBUSD on zmm,
// two blocks per instruction), AVX-VNNI (VEX VPDPBUSD on ymm), AVX2
// (VPMADDUBSW + VPMADDWD), and Go. All compute the same exact int32 block
// sums; they differ only in the order of the float32 additions.

// q8PairBytes is the size of one pair of 32-blocks of a quantized
// activation row: 64 int8 q, 16 float32 (each block's scale eight times,
// one per 32-bit lane of its products) and 16 int32 (−128·Σ of each four
// q, so that VPDPBUSD on weights offset to unsigned gives exact sums).
const q8PairBytes = 192

// q8Act is a matrix of activations quantized for the int8 kernels: rows of
// (nb+1)/2 pairs of q8PairBytes each.
type q8Act struct {
	m, k, nb int
	stride   int // bytes per row
	buf      []byte
}

var q8ActPool = sync.Pool{New: func() any { return new(q8Act) }}

// quantizeQ8Act quantizes A: (m, k) with leading dimension lda, k a
// multiple of 32, into dst as llama.cpp's quantize_row_q8_0 does: per
// block d = max|x|/127, q = round(x/d) (half away from zero), except that d
// is kept in float32 rather than rounded to f16.
func quantizeQ8Act(dst *q8Act, m, k int, a []float32, lda int) {
	nb := k / 32
	dst.m, dst.k, dst.nb = m, k, nb
	dst.stride = (nb + 1) / 2 * q8PairBytes
	dst.buf = grow(dst.buf, m*dst.stride)
	for i := 0; i < m; i++ {
		row := dst.buf[i*dst.stride : (i+1)*dst.stride]
		if nb%2 == 1 {
			clear(row[len(row)-q8PairBytes:])
		}
		x := a[i*lda : i*lda+k]
		for b := 0; b < nb; b++ {
			pr := row[b/2*q8PairBytes:]
			h := b % 2
			xb := x[32*b : 32*b+32]
			var amax float32
			for _, v := range xb {
				amax = max(amax, abs32(v))
			}
			d := amax / 127
			var id float32
			if d != 0 {
				id = 1 / d
			}
			q := pr[32*h : 32*h+32]
			for p, v := range xb {
				q[p] = byte(int8(math.Round(float64(v * id))))
			}
			for l := 0; l < 8; l++ {
				binary.LittleEndian.PutUint32(pr[64+32*h+4*l:], math.Float32bits(d))
				s := int32(int8(q[4*l])) + int32(int8(q[4*l+1])) + int32(int8(q[4*l+2])) + int32(int8(q[4*l+3]))
				binary.LittleEndian.PutUint32(pr[128+32*h+4*l:], uint32(-128*s))
			}
		}
	}
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

// q8TileFunc computes out[i·rn+j] = Σ_b d_a·d_w·Σ q_a·q_w for the first rm
// rows of a (in the q8Act layout, lda bytes apart) and the rn Q8_0 weight
// rows w[j] over nb blocks.
type q8TileFunc func(rm, rn, nb int, a []byte, lda int, w *[8][]byte, out []float32)

// q8Kernels is one implementation of the int8 products: rn[rm] weight rows
// per call for rm = 1..4 activation rows.
type q8Kernels struct {
	name string
	rn   [5]int
	tile q8TileFunc
}

// q8Go is the portable implementation. It models the VNNI kernels' layout:
// weights offset to unsigned (q_w XOR 0x80 = q_w+128) times signed
// activations, each 32-bit lane started from the stored −128·Σ q_a.
var q8Go = &q8Kernels{name: "go", rn: [5]int{0, 4, 4, 4, 4}, tile: q8TileGo}

func q8TileGo(rm, rn, nb int, a []byte, lda int, w *[8][]byte, out []float32) {
	for i := 0; i < rm; i++ {
		row := a[i*lda:]
		for j := 0; j < rn; j++ {
			wr := w[j]
			var lanes [8]float32
			for b := 0; b < nb; b++ {
				pr := row[b/2*q8PairBytes:]
				h := b % 2
				q := pr[32*h : 32*h+32]
				wb := wr[34*b : 34*b+34]
				dw := F16ToF32(binary.LittleEndian.Uint16(wb))
				for l := 0; l < 8; l++ {
					s := int32(binary.LittleEndian.Uint32(pr[128+32*h+4*l:]))
					for t := 4 * l; t < 4*l+4; t++ {
						s += int32(wb[2+t]^0x80) * int32(int8(q[t]))
					}
					da := math.Float32frombits(binary.LittleEndian.Uint32(pr[64+32*h+4*l:]))
					lanes[l] += float32(s) * (dw * da)
				}
			}
			var sum float32
			for _, v := range lanes {
				sum += v
			}
			out[i*rn+j] = sum
		}
	}
}

// q8Best is the fastest int8 implementation this CPU runs.
var q8Best = q8Available[len(q8Available)-1]

// Q8Path names the int8 kernel GemmQ8 uses on this CPU (for reports).
func Q8Path() string { return q8Best.name }

// GemmQ8 computes C = A·Wᵀ for a Q8_0 weight with int8 products,
// overwriting C:
//
//	A: (m, k) float32, leading dimension lda (quantized per 32-block to int8)
//	W: (n, k) QuantMatrix of type Q8_0, read in place
//	C: (m, n) float32, leading dimension ldc
//
// Unlike GemmQuant (exact products with the decoded weight), A is rounded
// to int8 per block as llama.cpp does: each output carries a relative error
// of about 2⁻⁸·Σ|a·w|/|Σ a·w| (see TestGemmQ8). It panics if W is not Q8_0
// or the shapes do not fit the slices.
func GemmQ8(m int, a []float32, lda int, w QuantMatrix, c []float32, ldc int) {
	gemmQ8With(q8Best, m, a, lda, &w, c, ldc)
}

// q8RowsPerBlock is the number of activation rows quantized and kept hot
// (in L2) while every weight row of a thread's share passes by.
const q8RowsPerBlock = 64

// q8ColsPerBlock is the number of weight rows (≈ 48·k bytes, in L2) run
// against every tile of a block of activation rows.
const q8ColsPerBlock = 48

func gemmQ8With(ks *q8Kernels, m int, a []float32, lda int, w *QuantMatrix, c []float32, ldc int) {
	n, k := w.Rows, w.Cols
	if w.Type != GGMLQ8_0 {
		panic(fmt.Sprintf("tensor.GemmQ8: W is %s, not Q8_0", w.Type))
	}
	rb := k / 32 * 34
	if k%32 != 0 || len(w.Data) != n*rb {
		panic(fmt.Sprintf("tensor.GemmQ8: W (%d, %d) of Q8_0 does not fit %d bytes", n, k, len(w.Data)))
	}
	checkGemm("tensor.GemmQ8", false, false, m, n, k, len(a), lda, k*n, max(1, n), len(c), ldc)
	if emptyGemm(m, n, k, 1, 0, c, ldc) {
		return
	}
	act := q8ActPool.Get().(*q8Act)
	defer q8ActPool.Put(act)
	threads := runtime.GOMAXPROCS(0)
	threads = min(threads, max(1, int(2*float64(m)*float64(n)*float64(k)/(1<<22))), (n+7)/8)
	per := roundUp((n+threads-1)/threads, 8)
	for i0 := 0; i0 < m; i0 += q8RowsPerBlock {
		mb := min(q8RowsPerBlock, m-i0)
		quantizeQ8Act(act, mb, k, a[i0*lda:], lda)
		splitCols(n, per, func(j0, j1 int) { q8Cols(ks, act, w, rb, c[i0*ldc:], ldc, j0, j1) })
	}
}

// q8Cols computes columns [j0, j1) of C for the quantized rows of act.
func q8Cols(ks *q8Kernels, act *q8Act, w *QuantMatrix, rb int, c []float32, ldc int, j0, j1 int) {
	var ws [8][]byte
	var out [32]float32
	for jb := j0; jb < j1; jb += q8ColsPerBlock {
		je := min(jb+q8ColsPerBlock, j1)
		for i := 0; i < act.m; i += 4 {
			rm := min(4, act.m-i)
			rn := ks.rn[rm]
			a := act.buf[i*act.stride:]
			for j := jb; j < je; j += rn {
				nj := min(rn, je-j)
				for r := 0; r < rn; r++ {
					jj := j + min(r, nj-1) // past the edge: repeat the last row
					ws[r] = w.Data[jj*rb : (jj+1)*rb]
				}
				ks.tile(rm, rn, act.nb, a, act.stride, &ws, out[:])
				for ii := 0; ii < rm; ii++ {
					copy(c[(i+ii)*ldc+j:(i+ii)*ldc+j+nj], out[ii*rn:ii*rn+nj])
				}
			}
		}
	}
}

// GemmPath names the float32 GEMM kernels this CPU runs (go, avx2, avx512
// or avx512bf16), for reports.
func GemmPath() string { return gemmBest.name }
