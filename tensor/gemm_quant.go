package tensor

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// QuantMatrix is a weight in nn.Linear layout, W: (Rows, Cols) = (out
// features n, in features k), stored row-major in a GGML block format: each
// row is Type.RowBytes(Cols) bytes of blocks along k, as a GGUF file holds
// it (Data may be a memory-mapped slice of the file; it is only read).
// Supported types: F16, BF16, Q8_0, Q4_K, Q6_K.
type QuantMatrix struct {
	Type       GGMLType
	Rows, Cols int
	Data       []byte // Rows·RowBytes(Cols) bytes
}

// NewQuantMatrix wraps data, W: (rows, cols) of type t, after checking that
// the type is supported, cols is a whole number of blocks and data holds
// exactly rows·RowBytes(cols) bytes. data is not copied.
func NewQuantMatrix(t GGMLType, rows, cols int, data []byte) (QuantMatrix, error) {
	switch t {
	case GGMLF16, GGMLBF16, GGMLQ8_0, GGMLQ4_K, GGMLQ6_K:
	default:
		return QuantMatrix{}, fmt.Errorf("tensor.NewQuantMatrix: ggml type %s is not supported (F16, BF16, Q8_0, Q4_K, Q6_K are)", t)
	}
	if rows < 0 || cols < 0 {
		return QuantMatrix{}, fmt.Errorf("tensor.NewQuantMatrix: negative shape (%d, %d)", rows, cols)
	}
	rb, err := t.RowBytes(cols)
	if err != nil {
		return QuantMatrix{}, fmt.Errorf("tensor.NewQuantMatrix: cols: %w", err)
	}
	if len(data) != rows*rb {
		return QuantMatrix{}, fmt.Errorf("tensor.NewQuantMatrix: (%d, %d) of %s takes %d bytes, got %d", rows, cols, t, rows*rb, len(data))
	}
	return QuantMatrix{Type: t, Rows: rows, Cols: cols, Data: data}, nil
}

// Bytes is the size of the stored matrix in bytes.
func (q QuantMatrix) Bytes() int { return len(q.Data) }

// rowBytes is the stored size of one row.
func (q *QuantMatrix) rowBytes() int {
	rb, _ := q.Type.RowBytes(q.Cols)
	return rb
}

// row returns the stored bytes of row j.
func (q *QuantMatrix) row(j int) []byte {
	rb := q.rowBytes()
	return q.Data[j*rb : (j+1)*rb]
}

// GemmQuant computes C = A·Wᵀ for a weight W kept in its GGML format,
// overwriting C:
//
//	A: (m, k) float32, leading dimension lda
//	W: (n, k) QuantMatrix (nn.Linear layout)
//	C: (m, n) float32, leading dimension ldc
//
// W is never expanded to a float32 copy: for m > 8 the blocked GEMM
// dequantizes each (kc, nc) block of Wᵀ straight into the micro-kernel's
// panels (once per block, reused by all rows of A), and the result is
// bitwise the one Gemm gives for A times the dequantized W (DequantizeGGML).
// For m ≤ 8 (decode) a few rows of W at a time are dequantized into an
// L1-sized scratch and dotted with every row of A; that path accumulates in
// float32 like Gemm's dot-product path (same error bound, different order).
// It panics if the shapes do not fit the slices.
func GemmQuant(m int, a []float32, lda int, w QuantMatrix, c []float32, ldc int) {
	gemmQuantWith(gemmBest, m, a, lda, &w, c, ldc)
}

func gemmQuantWith(ks *gemmKernels, m int, a []float32, lda int, w *QuantMatrix, c []float32, ldc int) {
	n, k := w.Rows, w.Cols
	rb, err := w.Type.RowBytes(k)
	if err != nil || len(w.Data) != n*rb {
		panic(fmt.Sprintf("tensor.GemmQuant: W (%d, %d) of %s does not fit %d bytes", n, k, w.Type, len(w.Data)))
	}
	checkGemm("tensor.GemmQuant", false, false, m, n, k, len(a), lda, k*n, max(1, n), len(c), ldc)
	if emptyGemm(m, n, k, 1, 0, c, ldc) {
		return
	}
	g := gemmJob{transB: true, m: m, n: n, k: k, alpha: 1, beta: 0, a: a, lda: lda, c: c, ldc: ldc, q: w, dotRowsH: ks.dotRowsH}
	threads := runtime.GOMAXPROCS(0)
	if m <= smallMMax {
		runSmallMQuant(&g, ks.dot4, ks.dot4BF16, threads)
		return
	}
	runBlocked(&g, ks.quant, threads)
}

// GemmQuantN computes C = A·W + beta·C for a weight W kept in its GGML
// format (the product with W untransposed: the input gradient of y = x·Wᵀ,
// dX = dY·W, e.g. of an LM head's logits; beta = 0 overwrites C, which is
// then not read):
//
//	A: (m, n) float32, leading dimension lda, n = W.Rows
//	W: (n, k) QuantMatrix
//	C: (m, k) float32, leading dimension ldc, k = W.Cols
//
// As in GemmQuant, W is never expanded: the blocked GEMM decodes each
// (kc rows of W) × (nc columns) block straight into its panels, and the
// result is bitwise Gemm(A, DequantizeGGML(W)).
func GemmQuantN(m int, a []float32, lda int, w QuantMatrix, beta float32, c []float32, ldc int) {
	gemmQuantNWith(gemmBest, m, a, lda, &w, beta, c, ldc)
}

func gemmQuantNWith(ks *gemmKernels, m int, a []float32, lda int, w *QuantMatrix, beta float32, c []float32, ldc int) {
	n, k := w.Rows, w.Cols // inner dimension n, output width k
	rb, err := w.Type.RowBytes(k)
	if err != nil || len(w.Data) != n*rb {
		panic(fmt.Sprintf("tensor.GemmQuantN: W (%d, %d) of %s does not fit %d bytes", n, k, w.Type, len(w.Data)))
	}
	checkGemm("tensor.GemmQuantN", false, false, m, k, n, len(a), lda, n*k, max(1, k), len(c), ldc)
	if emptyGemm(m, k, n, 1, beta, c, ldc) {
		return
	}
	g := gemmJob{m: m, n: k, k: n, alpha: 1, beta: beta, a: a, lda: lda, c: c, ldc: ldc, q: w}
	runBlocked(&g, ks.quantN, runtime.GOMAXPROCS(0))
}

// packBQuantN packs W[p0:p0+kc, j0:j0+nc] of a QuantMatrix W used as the
// (k, n) operand as (nc/nr panels, kc, nr): each row segment is decoded
// once into a scratch and its nr-wide pieces copied into the panels.
func packBQuantN(dst []float32, g *gemmJob, nr, p0, kc, j0, nc int) {
	q := g.q
	s := quantScratchPool.Get().(*quantScratch)
	defer quantScratchPool.Put(s)
	s.f = grow(s.f, nc)
	rb := q.rowBytes()
	for p := 0; p < kc; p++ {
		r := p0 + p
		dequantRowSeg(s.f[:nc], q.Data[r*rb:(r+1)*rb], q.Type, j0)
		for jr := 0; jr < nc; jr += nr {
			cols := min(nr, nc-jr)
			d := dst[jr*kc+p*nr : jr*kc+p*nr+nr]
			copy(d, s.f[jr:jr+cols])
			clear(d[cols:])
		}
	}
}

// quantScratch is a pooled float32 scratch for dequantized rows.
type quantScratch struct{ f []float32 }

var quantScratchPool = sync.Pool{New: func() any { return new(quantScratch) }}

// packBQuant packs Wᵀ[p0:p0+kc, j0:j0+nc] of a QuantMatrix W (n, k) as
// (nc/nr panels, kc, nr): the rows of each panel are dequantized over
// [p0, p0+kc) into a scratch (nr, kc) and transposed into the panel, so the
// panel holds exactly the values DequantizeGGML gives.
func packBQuant(dst []float32, g *gemmJob, nr, p0, kc, j0, nc int) {
	q := g.q
	s := quantScratchPool.Get().(*quantScratch)
	defer quantScratchPool.Put(s)
	s.f = grow(s.f, nr*kc)
	rb := q.rowBytes()
	for jr := 0; jr < nc; jr += nr {
		cols := min(nr, nc-jr)
		for r := 0; r < cols; r++ {
			j := j0 + jr + r
			dequantRowSeg(s.f[r*kc:(r+1)*kc], q.Data[j*rb:(j+1)*rb], q.Type, p0)
		}
		packStrided(dst[jr*kc:(jr+nr)*kc], s.f, 0, kc, cols, nr, kc)
	}
}

// quantSegMax is the depth of W dequantized at once by the small-m path:
// four rows of it (16 KiB) stay in L1. A multiple of every block size.
const quantSegMax = 1024

// runSmallMQuant computes C = A·Wᵀ for m ≤ smallMMax and a QuantMatrix W.
// Columns of C (rows of W) are split over threads as in runSmallM; each
// thread dequantizes four rows of W over quantSegMax columns at a time and
// runs the dot kernel of every row of A over them. A bf16 W is read in
// place by the bf16 dot kernel.
func runSmallMQuant(g *gemmJob, dot dot4Func, dotH dot4BF16Func, threads int) {
	m, n, k := g.m, g.n, g.k
	work := 2 * float64(m) * float64(n) * float64(k)
	threads = min(threads, max(1, int(work/(1<<22))), (n+3)/4)
	per := roundUp((n+threads-1)/threads, 4)
	splitCols(n, per, func(j0, j1 int) { smallMQuantCols(g, dot, dotH, j0, j1) })
}

// bf16View returns the bytes of a BF16 matrix as bit patterns, or nil when
// they are not 2-byte aligned.
func bf16View(b []byte) []uint16 {
	if len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%2 != 0 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), len(b)/2)
}

func smallMQuantCols(g *gemmJob, dot dot4Func, dotH dot4BF16Func, j0, j1 int) {
	q, k, m := g.q, g.k, g.m
	if q.Type == GGMLBF16 {
		if bh := bf16View(q.Data); bh != nil {
			sub := *g
			sub.q, sub.bh, sub.ldb = nil, bh, k
			smallMCols(&sub, g.a, g.lda, nil, dotH, j0, j1)
			return
		}
	}
	s := quantScratchPool.Get().(*quantScratch)
	defer quantScratchPool.Put(s)
	seg := min(k, quantSegMax)
	s.f = grow(s.f, 4*seg)
	rb := q.rowBytes()
	var acc [smallMMax][4]float32
	var out [4]float32
	for j := j0; j < j1; j += 4 {
		nq := min(4, j1-j)
		for p0 := 0; p0 < k; p0 += seg {
			kcur := min(seg, k-p0)
			for r := 0; r < 4; r++ {
				d := s.f[r*seg : r*seg+kcur]
				if r < nq {
					dequantRowSeg(d, q.Data[(j+r)*rb:(j+r+1)*rb], q.Type, p0)
				} else {
					clear(d)
				}
			}
			k8 := kcur &^ 7
			for i := 0; i < m; i++ {
				ar := g.a[i*g.lda+p0 : i*g.lda+p0+kcur]
				dot(k8, ar, s.f, seg, &out)
				for r := 0; r < 4; r++ {
					br := s.f[r*seg : r*seg+kcur]
					sum := out[r]
					for p := k8; p < kcur; p++ {
						sum += ar[p] * br[p]
					}
					if p0 == 0 {
						acc[i][r] = sum
					} else {
						acc[i][r] += sum
					}
				}
			}
		}
		for i := 0; i < m; i++ {
			copy(g.c[i*g.ldc+j:i*g.ldc+j+nq], acc[i][:nq])
		}
	}
}
