package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
)

// The packed int8 GEMM: a Q8_0 weight repacked once (PackQ8) into panels
// of 32 output columns, so that one VPDPBUSD multiplies 4 k of one
// activation row (broadcast) with 16 columns at once and each int32 lane
// holds one column's exact block sum. Per 32-block and tile of rows that
// leaves one conversion, one scale and one FMA per 16 columns for every 8
// VPDPBUSD, where the in-place kernels (GemmQ8) spend three float
// operations per VPDPBUSD. The activations are quantized as GemmQ8 does
// them (per block of 32, d = amax/127, rounded to nearest even), once per
// call, into tiles of up to q8pTile rows.
//
// Weight panel layout, per 32-block (q8pBlockBytes): 32 float32 d_w, then
// 8 groups of 4 k, each 32 columns × 4 bytes of q_w XOR 0x80 (unsigned
// q_w+128, what VPDPBUSD's unsigned operand takes). Rows past n are zero.
//
// Activation tile layout (R rows), per block 40·R bytes: R×32 int8 q, R
// float32 d, R int32 −128·Σq (so that the lanes, started there, sum
// exactly Σ q_a·q_w).

const (
	q8pCols       = 32                              // output columns per panel
	q8pPanelMask  = q8pCols - 1                     // n rounds up to whole panels
	q8pPanelShift = 5                               // log2(q8pCols)
	q8pGroups     = 8                               // groups of 4 k per block
	q8pScaleBytes = 4 * q8pCols                     // float32 d_w per block
	q8pGroupBytes = 4 * q8pCols                     // 4 k × 32 columns
	q8pBlockBytes = q8pScaleBytes + 8*q8pGroupBytes // 1152: one block of a panel
	q8pTile       = 6                               // activation rows per micro-kernel tile
	q8pActBlock   = 40                              // bytes per row and block in a tile
	q8pTileBlock  = q8pTile * q8pActBlock           // bytes per block of a full tile
	q8pL2Bytes    = 384 << 10                       // activation bytes kept hot while the weight panels pass
	q8pMinFlops   = 1 << 22                         // fewer flops than this: one thread
)

// PackedQ8 is a Q8_0 weight (Rows, Cols) in the packed int8 layout
// (PackQ8); GemmQ8Packed multiplies by it.
type PackedQ8 struct {
	Rows, Cols int
	data       []byte
}

// PackedQ8Size is the number of bytes PackQ8Into needs for a (n, k) weight.
func PackedQ8Size(n, k int) int {
	return (n + q8pPanelMask) >> q8pPanelShift * (k / 32) * q8pBlockBytes
}

// PackQ8 repacks a Q8_0 weight into a new buffer (see PackQ8Into).
func PackQ8(w QuantMatrix) *PackedQ8 {
	return PackQ8Into(make([]byte, PackedQ8Size(w.Rows, w.Cols)), w)
}

// PackQ8Into repacks the Q8_0 weight w (n, k) into dst, which must hold
// PackedQ8Size(n, k) bytes, and returns the packed weight (aliasing dst).
// It panics if w is not Q8_0.
func PackQ8Into(dst []byte, w QuantMatrix) *PackedQ8 {
	n, k := w.Rows, w.Cols
	rb := k / 32 * 34
	if w.Type != GGMLQ8_0 || k%32 != 0 || len(w.Data) != n*rb {
		panic(fmt.Sprintf("tensor.PackQ8: W (%d, %d) of %s is not a whole Q8_0 matrix", n, k, w.Type))
	}
	nb := k / 32
	dst = dst[:PackedQ8Size(n, k)]
	for p := 0; p*q8pCols < n; p++ {
		for b := 0; b < nb; b++ {
			blk := dst[(p*nb+b)*q8pBlockBytes:][:q8pBlockBytes]
			for c := 0; c < q8pCols; c++ {
				j := p*q8pCols + c
				if j >= n {
					binary.LittleEndian.PutUint32(blk[4*c:], 0)
					for g := 0; g < q8pGroups; g++ {
						copy(blk[q8pScaleBytes+g*q8pGroupBytes+4*c:][:4], []byte{0x80, 0x80, 0x80, 0x80})
					}
					continue
				}
				src := w.Data[j*rb+34*b:][:34]
				binary.LittleEndian.PutUint32(blk[4*c:], math.Float32bits(F16ToF32(binary.LittleEndian.Uint16(src))))
				for g := 0; g < q8pGroups; g++ {
					o := blk[q8pScaleBytes+g*q8pGroupBytes+4*c:][:4]
					for t := range o {
						o[t] = src[2+4*g+t] ^ 0x80
					}
				}
			}
		}
	}
	return &PackedQ8{Rows: n, Cols: k, data: dst}
}

// q8pAct is a matrix of activations quantized into q8p tiles: tile t
// holds rows q8pTile·t.. (fewer in the last tile) at byte t·nb·q8pTileBlock.
type q8pAct struct {
	m, nb int
	buf   []byte
}

var q8pActPool = sync.Pool{New: func() any { return new(q8pAct) }}

// tile returns the bytes of tile t and its height.
func (a *q8pAct) tile(t int) ([]byte, int) {
	r := min(q8pTile, a.m-t*q8pTile)
	return a.buf[t*a.nb*q8pTileBlock:][:a.nb*r*q8pActBlock], r
}

// quantQ8RowGo quantizes row x (nb blocks) into row r of a tile of h rows
// (tile: its bytes). It is the model of quantQ8RowAVX512, bit for bit.
func quantQ8RowGo(x []float32, tile []byte, r, h int) {
	stride := q8pActBlock * h
	for b := 0; b < len(x)/32; b++ {
		blk := tile[b*stride:]
		xb := x[32*b : 32*b+32]
		var amax float32
		for _, v := range xb {
			amax = max(amax, abs32(v))
		}
		binary.LittleEndian.PutUint32(blk[32*h+4*r:], math.Float32bits(amax/127))
		q := blk[32*r : 32*r+32]
		var s int32
		if amax != 0 {
			id := 127 / amax
			for p, v := range xb {
				qv := int8(math.RoundToEven(float64(v * id)))
				q[p] = byte(qv)
				s += int32(qv)
			}
		} else {
			clear(q)
		}
		binary.LittleEndian.PutUint32(blk[36*h+4*r:], uint32(-128*s))
	}
}

// q8pTileGo is the model of the q8pZR<R> kernels: rows r of tile a against
// one panel w over nb blocks, C (r, 32) overwritten (row stride ldc).
func q8pTileGo(nb int, a []byte, r int, w []byte, c []float32, ldc int) {
	var acc [q8pTile][q8pCols]float32
	for b := 0; b < nb; b++ {
		blk := a[b*q8pActBlock*r:]
		wb := w[b*q8pBlockBytes:]
		for i := 0; i < r; i++ {
			da := math.Float32frombits(binary.LittleEndian.Uint32(blk[32*r+4*i:]))
			corr := int32(binary.LittleEndian.Uint32(blk[36*r+4*i:]))
			for j := 0; j < q8pCols; j++ {
				s := corr
				for g := 0; g < q8pGroups; g++ {
					o := wb[q8pScaleBytes+g*q8pGroupBytes+4*j:]
					for t := 0; t < 4; t++ {
						s += int32(o[t]) * int32(int8(blk[32*i+4*g+t]))
					}
				}
				dw := math.Float32frombits(binary.LittleEndian.Uint32(wb[4*j:]))
				acc[i][j] += float32(s) * da * dw
			}
		}
	}
	for i := 0; i < r; i++ {
		copy(c[i*ldc:i*ldc+q8pCols], acc[i][:])
	}
}

// q8pKernels is one implementation of the packed int8 GEMM.
type q8pKernels struct {
	name string
	// tile computes r rows (1..q8pTile) of a tile against one panel.
	tile func(nb int, a []byte, r int, w []byte, c []float32, ldc int)
	// quant quantizes one row into row r of a tile of h rows.
	quant func(x []float32, tile []byte, r, h int)
}

var q8pGo = &q8pKernels{name: "go", tile: q8pTileGo, quant: quantQ8RowGo}

// q8pBest is the fastest packed int8 implementation this CPU runs.
var q8pBest = q8pAvailable[len(q8pAvailable)-1]

// Q8PackedPath names the packed int8 kernel GemmQ8Packed uses on this CPU
// (avx512-vnni, avx-vnni, avx2-vpmaddubsw or go), for reports.
func Q8PackedPath() string { return q8pBest.name }

// Q8PackedFast reports whether GemmQ8Packed has a vector kernel on this
// CPU; where it has not, GemmQ8 (in place) is the faster int8 path.
func Q8PackedFast() bool { return q8pBest != q8pGo }

// GemmQ8Packed computes C = A·Wᵀ with int8 products, overwriting C:
//
//	A: (m, k) float32, leading dimension lda, quantized per 32-block to
//	   int8 as GemmQ8 does
//	W: (n, k), packed by PackQ8
//	C: (m, n) float32, leading dimension ldc
//
// Each weight byte is read once per block of activation rows that fits in
// L2 (all of them at m = 1: decode is a GEMV). It panics if the shapes do
// not fit the slices.
func GemmQ8Packed(m int, a []float32, lda int, w *PackedQ8, c []float32, ldc int) {
	gemmQ8PackedWith(q8pBest, m, a, lda, w, c, ldc)
}

func gemmQ8PackedWith(ks *q8pKernels, m int, a []float32, lda int, w *PackedQ8, c []float32, ldc int) {
	n, k := w.Rows, w.Cols
	if k%32 != 0 || len(w.data) != PackedQ8Size(n, k) {
		panic(fmt.Sprintf("tensor.GemmQ8Packed: W (%d, %d) does not fit %d packed bytes", n, k, len(w.data)))
	}
	checkGemm("tensor.GemmQ8Packed", false, false, m, n, k, len(a), lda, k*n, max(1, n), len(c), ldc)
	if emptyGemm(m, n, k, 1, 0, c, ldc) {
		return
	}
	act := q8pActPool.Get().(*q8pAct)
	defer q8pActPool.Put(act)
	nb := k / 32
	panels := (n + q8pPanelMask) >> q8pPanelShift
	threads := runtime.GOMAXPROCS(0)
	threads = min(threads, max(1, int(2*float64(m)*float64(n)*float64(k)/q8pMinFlops)), panels)
	// Rows quantized per step: whole tiles, as many as keep their bytes in L2.
	rowsPer := max(q8pTile, q8pL2Bytes/(nb*q8pActBlock)/q8pTile*q8pTile)
	if threads == 1 {
		rowsPer = m
	}
	for i0 := 0; i0 < m; i0 += rowsPer {
		mb := min(rowsPer, m-i0)
		quantizeQ8PPar(ks, act, mb, k, a[i0*lda:], lda, threads)
		cb := c[i0*ldc:]
		per := (panels + threads - 1) / threads
		splitCols(panels, per, func(p0, p1 int) { q8pPanels(ks, act, w, cb, ldc, p0, p1) })
	}
}

// quantizeQ8PPar is quantizeQ8P with the rows shared among threads.
func quantizeQ8PPar(ks *q8pKernels, dst *q8pAct, m, k int, a []float32, lda int, threads int) {
	nb := k / 32
	dst.m, dst.nb = m, nb
	tiles := (m + q8pTile - 1) / q8pTile
	dst.buf = grow(dst.buf, tiles*nb*q8pTileBlock)
	rows := func(t0, t1 int) {
		for t := t0; t < t1; t++ {
			tb, h := dst.tile(t)
			for r := 0; r < h; r++ {
				i := t*q8pTile + r
				ks.quant(a[i*lda:i*lda+k], tb, r, h)
			}
		}
	}
	if threads == 1 || m*k < 1<<16 {
		rows(0, tiles)
		return
	}
	half := tiles / 2
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rows(half, tiles)
	}()
	rows(0, half)
	wg.Wait()
}

// q8pPanels computes the columns of panels [p0, p1) of C for every tile of
// act.
func q8pPanels(ks *q8pKernels, act *q8pAct, w *PackedQ8, c []float32, ldc int, p0, p1 int) {
	nb := act.nb
	var edge [q8pTile * q8pCols]float32
	tiles := (act.m + q8pTile - 1) / q8pTile
	for p := p0; p < p1; p++ {
		wp := w.data[p*nb*q8pBlockBytes:][:nb*q8pBlockBytes]
		j := p * q8pCols
		nj := min(q8pCols, w.Rows-j)
		for t := 0; t < tiles; t++ {
			tb, r := act.tile(t)
			i := t * q8pTile
			if nj == q8pCols {
				ks.tile(nb, tb, r, wp, c[i*ldc+j:], ldc)
				continue
			}
			ks.tile(nb, tb, r, wp, edge[:], q8pCols)
			for ii := 0; ii < r; ii++ {
				copy(c[(i+ii)*ldc+j:(i+ii)*ldc+j+nj], edge[ii*q8pCols:ii*q8pCols+nj])
			}
		}
	}
}
