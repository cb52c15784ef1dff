package tensor

import (
	"fmt"
	"math"
)

// CPU returns the reference backend with the fastest GEMM kernels this CPU
// has. Its ops are this package's functions; it never fails.
func CPU() Backend { return &cpuBackend{ks: gemmBest} }

// CPUBackends returns one CPU backend per GEMM kernel set this machine can
// run ("cpu-go", and "cpu-avx2", "cpu-avx512", "cpu-avx512bf16" where the
// CPU has them), so that one test suite covers every kernel path. The
// kernel set selects Gemm's micro-kernels; the other ops are shared.
func CPUBackends() []Backend {
	var bs []Backend
	for _, ks := range gemmAvailable {
		bs = append(bs, &cpuBackend{ks: ks})
	}
	return bs
}

type cpuBackend struct {
	ks    *gemmKernels
	attSc []float32
}

// cpuBuf is a CPU backend buffer: exactly one of f, h, i is set.
type cpuBuf struct {
	f []float32
	h []uint16
	i []int32
}

func (b *cpuBuf) Len() int { return max(len(b.f), len(b.h), len(b.i)) }
func (b *cpuBuf) DType() DType {
	switch {
	case b.h != nil:
		return BF16
	case b.i != nil:
		return I32
	}
	return F32
}

func (c *cpuBackend) Name() string { return "cpu-" + c.ks.name }

func (c *cpuBackend) Alloc(dt DType, n int) (Buf, error) {
	if n < 0 {
		return nil, fmt.Errorf("tensor.CPU.Alloc: %d elements", n)
	}
	switch dt {
	case F32:
		return &cpuBuf{f: make([]float32, n)}, nil
	case BF16:
		return &cpuBuf{h: make([]uint16, n)}, nil
	case I32:
		return &cpuBuf{i: make([]int32, n)}, nil
	}
	return nil, fmt.Errorf("tensor.CPU.Alloc: %v", dt)
}

func (c *cpuBackend) Free(Buf) {}

func (c *cpuBackend) View(b Buf, off, n int) Buf {
	x := b.(*cpuBuf)
	switch {
	case x.h != nil:
		return &cpuBuf{h: x.h[off : off+n : off+n]}
	case x.i != nil:
		return &cpuBuf{i: x.i[off : off+n : off+n]}
	}
	return &cpuBuf{f: x.f[off : off+n : off+n]}
}

func (c *cpuBackend) Zero(b Buf) {
	x := b.(*cpuBuf)
	clear(x.f)
	clear(x.h)
	clear(x.i)
}

func (c *cpuBackend) UploadF32(dst Buf, src []float32) { copy(f32(dst)[:len(src)], src) }
func (c *cpuBackend) UploadBF16(dst Buf, src []uint16) { copy(dst.(*cpuBuf).h[:len(src)], src) }
func (c *cpuBackend) UploadI32(dst Buf, src []int32)   { copy(dst.(*cpuBuf).i[:len(src)], src) }
func (c *cpuBackend) DownloadF32(dst []float32, src Buf) {
	copy(dst, f32(src)[:len(dst)])
}
func (c *cpuBackend) Sync() error { return nil }

// f32 returns b's float32 slice, or nil for a nil Buf.
func f32(b Buf) []float32 {
	if b == nil {
		return nil
	}
	x := b.(*cpuBuf)
	if x.f == nil && x.Len() > 0 {
		panic(fmt.Sprintf("tensor: %v buffer where f32 is needed", x.DType()))
	}
	return x.f
}

func i32(b Buf) []int32 { return b.(*cpuBuf).i }

func (c *cpuBackend) Gemm(transA, transB bool, m, n, k int, alpha float32, a Buf, lda int, b Buf, ldb int, beta float32, cc Buf, ldc int) {
	if bb := b.(*cpuBuf); bb.h != nil {
		if transA || !transB || alpha != 1 {
			panic("tensor.CPU.Gemm: a bf16 B needs transA false, transB true, alpha 1")
		}
		if beta == 0 {
			c.ks.gemmBF16(m, n, k, f32(a), lda, bb.h, ldb, f32(cc), ldc)
			return
		}
		tmp := make([]float32, m*n)
		c.ks.gemmBF16(m, n, k, f32(a), lda, bb.h, ldb, tmp, n)
		out := f32(cc)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				out[i*ldc+j] = beta*out[i*ldc+j] + tmp[i*n+j]
			}
		}
		return
	}
	c.ks.gemm(transA, transB, m, n, k, alpha, f32(a), lda, f32(b), ldb, beta, f32(cc), ldc)
}

func (c *cpuBackend) AddBias(x, bias Buf, rows, cols int) {
	xs, bs := f32(x), f32(bias)
	for i := 0; i < rows; i++ {
		AddInPlace(xs[i*cols:(i+1)*cols], bs[:cols])
	}
}

func (c *cpuBackend) AddInPlace(dst, src Buf) { AddInPlace(f32(dst), f32(src)) }
func (c *cpuBackend) Scale(x Buf, s float32)  { Scale(f32(x), s) }

func (c *cpuBackend) Embedding(out, table, ids Buf, d int) {
	t := table.(*cpuBuf)
	if t.h == nil {
		EmbeddingForward(f32(out), t.f, i32(ids), d)
		return
	}
	o := f32(out)
	for r, id := range i32(ids) {
		row := t.h[int(id)*d : int(id+1)*d]
		for j, h := range row {
			o[r*d+j] = BF16ToF32(h)
		}
	}
}

func (c *cpuBackend) RMSNormForward(out, rstd, x, w Buf, n, d int, eps float32) {
	RMSNormForward(f32(out), f32(rstd), f32(x), f32(w), n, d, eps)
}

func (c *cpuBackend) RMSNormBackward(dx, dw, dout, x, w, rstd Buf, n, d int) {
	RMSNormBackward(f32(dx), f32(dw), f32(dout), f32(x), f32(w), f32(rstd), n, d)
}

func (c *cpuBackend) RoPE(r *RoPE, x, pos Buf, n, nHeads int, inverse bool) {
	if inverse {
		r.Backward(f32(x), i32(pos), n, nHeads)
	} else {
		r.Forward(f32(x), i32(pos), n, nHeads)
	}
}

func (c *cpuBackend) scratch(T, hd int) []float32 {
	if n := AttentionScratch(T, hd); len(c.attSc) < n {
		c.attSc = make([]float32, n)
	}
	return c.attSc
}

func (c *cpuBackend) AttentionForward(out, lse, q, k, v Buf, T, nHead, nKV, hd int) {
	AttentionForward(f32(out), f32(lse), f32(q), f32(k), f32(v), c.scratch(T, hd), T, nHead, nKV, hd)
}

func (c *cpuBackend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse Buf, T, nHead, nKV, hd int) {
	AttentionBackward(f32(dq), f32(dk), f32(dv), f32(dout), f32(q), f32(k), f32(v), f32(out), f32(lse),
		c.scratch(T, hd), T, nHead, nKV, hd)
}

func (c *cpuBackend) SwiGLUForward(out, gate, up Buf) { SwiGLUForward(f32(out), f32(gate), f32(up)) }
func (c *cpuBackend) SwiGLUBackward(dgate, dup, dout, gate, up Buf) {
	SwiGLUBackward(f32(dgate), f32(dup), f32(dout), f32(gate), f32(up))
}
func (c *cpuBackend) SigmoidForward(out, x Buf) { SigmoidForward(f32(out), f32(x)) }
func (c *cpuBackend) SigmoidBackward(dx, dout, out Buf) {
	SigmoidBackward(f32(dx), f32(dout), f32(out))
}
func (c *cpuBackend) MulForward(out, a, b Buf) { MulForward(f32(out), f32(a), f32(b)) }
func (c *cpuBackend) MulBackward(da, db, dout, a, b Buf) {
	MulBackward(f32(da), f32(db), f32(dout), f32(a), f32(b))
}

func (c *cpuBackend) SoftmaxXent(logits, targets, loss Buf, rows, V int, gradScale float32) {
	SoftmaxXent(f32(logits), i32(targets), f32(loss), rows, V, gradScale)
}

func (c *cpuBackend) AdamW(p, g, m, v Buf, step int, lr, beta1, beta2, eps, wd float32) {
	AdamWStep(f32(p), f32(g), f32(m), f32(v), step, lr, beta1, beta2, eps, wd)
}

func (c *cpuBackend) SumSquares(x Buf) (float64, error) {
	var s float64
	for _, v := range f32(x) {
		s += float64(v) * float64(v)
	}
	return s, nil
}

func (c *cpuBackend) Encode(cd Codec, dst []byte, x Buf, rows, d int) ([]byte, error) {
	return cd.Encode(dst, f32(x), rows, d), nil
}

// SoftmaxXent turns logits (rows, V) in place into the gradient
// gradScale·(softmax − onehot(target)) and writes each row's loss
// (logsumexp − z_target) to loss (rows); a row with target −1 gets gradient
// 0 and loss 0. The softmax is max-subtracted and summed in float64. It is
// the reference for Backend.SoftmaxXent.
//
//	logits: (rows, V)   targets: (rows) in [0, V) or −1   loss: (rows)
func SoftmaxXent(logits []float32, targets []int32, loss []float32, rows, V int, gradScale float32) {
	for r := 0; r < rows; r++ {
		z := logits[r*V : (r+1)*V]
		t := targets[r]
		if t < 0 {
			clear(z)
			loss[r] = 0
			continue
		}
		mx := maxOf(z)
		var s float64
		for _, v := range z {
			s += float64(float32(math.Exp(float64(v - mx))))
		}
		zt := z[t]
		k := float32(float64(gradScale) / s)
		for j, v := range z {
			z[j] = float32(math.Exp(float64(v-mx))) * k
		}
		z[t] -= gradScale
		loss[r] = float32(math.Log(s) + float64(mx) - float64(zt))
	}
}
