//go:build cuda

package cuda

import (
	"embed"
	"fmt"
	"math"
	"unsafe"

	"carryon/tensor"

	"gorgonia.org/cu"
)

//go:embed kernels/*.ptx
var ptxFS embed.FS

// Backend is the GPU implementation of tensor.Backend: its buffers live in
// device memory, GEMMs run in cuBLAS (float32 SGEMM without TF32; bf16
// GemmEx with float32 accumulation) and the other ops in the kernels of
// kernels/*.cu, loaded from the embedded PTX (the driver compiles it for
// the GPU at load time). Every method runs on the Device's goroutine, so a
// Backend is safe for concurrent use; kernels are queued on the default
// stream and errors are sticky until Sync (tensor.Backend's contract).
type Backend struct {
	d    *Device
	name string

	// Owned by the device goroutine:
	fns    map[string]cu.Function
	mods   []cu.Module
	blas   *cublas
	err    error
	ropes  map[*tensor.RoPE][2]cu.DevicePtr
	stage  cu.DevicePtr // bf16 copy of a Gemm's A, stageN bytes
	stageN int64
	acc    cu.DevicePtr // one float64 for SumSquares
}

// buf is a Backend buffer: n elements of dt at ptr. A view shares its
// parent's memory and is never freed itself.
type buf struct {
	ptr  cu.DevicePtr
	n    int
	dt   tensor.DType
	view bool
}

func (b *buf) Len() int            { return b.n }
func (b *buf) DType() tensor.DType { return b.dt }

// NewBackend loads the kernels and cuBLAS on d. Close releases them (not d).
func NewBackend(d *Device) (*Backend, error) {
	b := &Backend{d: d, name: "cuda:" + d.Info().Name, fns: map[string]cu.Function{}, ropes: map[*tensor.RoPE][2]cu.DevicePtr{}}
	err := d.Do(func(cu.CUContext) error {
		for mod, names := range kernelModules {
			src, err := ptxFS.ReadFile("kernels/" + mod + ".ptx")
			if err != nil {
				return err
			}
			m, err := cu.LoadData(string(src))
			if err != nil {
				return fmt.Errorf("load kernels/%s.ptx: %w", mod, err)
			}
			b.mods = append(b.mods, m)
			for _, n := range names {
				f, err := m.Function(n)
				if err != nil {
					return fmt.Errorf("kernel %s: %w", n, err)
				}
				b.fns[n] = f
			}
		}
		blas, err := newCublas()
		if err != nil {
			return err
		}
		b.blas = blas
		b.acc, err = cu.MemAlloc(8)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cuda.NewBackend: %w", err)
	}
	return b, nil
}

// Close frees the backend's own device memory, cuBLAS and the modules.
func (b *Backend) Close() error {
	return b.d.Do(func(cu.CUContext) error {
		for _, t := range b.ropes {
			cu.MemFree(t[0])
			cu.MemFree(t[1])
		}
		if b.stage != 0 {
			cu.MemFree(b.stage)
		}
		if b.acc != 0 {
			cu.MemFree(b.acc)
		}
		if b.blas != nil {
			b.blas.close()
		}
		for _, m := range b.mods {
			m.Unload()
		}
		return nil
	})
}

// Name is "cuda:" and the GPU's name.
func (b *Backend) Name() string { return b.name }

// MemInfo reports the device's free and total memory in bytes.
func (b *Backend) MemInfo() (free, total int64, err error) {
	err = b.d.Do(func(cu.CUContext) error {
		free, total, err = cu.MemInfo()
		return err
	})
	return free, total, err
}

// do runs f on the device goroutine unless an error is pending, and keeps
// f's error as the sticky error that Sync reports.
func (b *Backend) do(op string, f func() error) {
	err := b.d.Do(func(cu.CUContext) error {
		if b.err != nil {
			return nil
		}
		if err := f(); err != nil {
			b.err = fmt.Errorf("cuda.%s: %w", op, err)
		}
		return nil
	})
	if err != nil { // f panicked (Do recovered it), or the device is closed
		b.d.Do(func(cu.CUContext) error {
			if b.err == nil {
				b.err = fmt.Errorf("cuda.%s: %w", op, err)
			}
			return nil
		})
	}
}

// Sync waits for the queued work and returns and clears the first error.
func (b *Backend) Sync() error {
	var err error
	if e := b.d.Do(func(cu.CUContext) error {
		err = cu.Synchronize()
		if b.err != nil {
			err, b.err = b.err, nil
		}
		return nil
	}); e != nil {
		return fmt.Errorf("cuda.Sync: %w", e)
	}
	return err
}

func (b *Backend) Alloc(dt tensor.DType, n int) (tensor.Buf, error) {
	if n < 0 || (dt != tensor.F32 && dt != tensor.BF16 && dt != tensor.I32) {
		return nil, fmt.Errorf("cuda.Alloc: %d elements of %v", n, dt)
	}
	x := &buf{n: n, dt: dt}
	if n == 0 {
		return x, nil
	}
	bytes := int64(n) * int64(dt.Size())
	err := b.d.Do(func(cu.CUContext) error {
		p, err := cu.MemAlloc(bytes)
		if err != nil {
			return err
		}
		x.ptr = p
		return cu.MemsetD8(p, 0, bytes)
	})
	if err != nil {
		return nil, fmt.Errorf("cuda.Alloc: %d bytes: %w", bytes, err)
	}
	return x, nil
}

func (b *Backend) Free(t tensor.Buf) {
	if t == nil {
		return
	}
	x := t.(*buf)
	if x.view || x.ptr == 0 {
		return
	}
	b.d.Do(func(cu.CUContext) error { return cu.MemFree(x.ptr) })
	x.ptr = 0
}

func (b *Backend) View(t tensor.Buf, off, n int) tensor.Buf {
	x := t.(*buf)
	if off < 0 || n < 0 || off+n > x.n {
		panic(fmt.Sprintf("cuda.View: [%d, %d) of %d elements", off, off+n, x.n))
	}
	return &buf{ptr: x.ptr + cu.DevicePtr(off*x.dt.Size()), n: n, dt: x.dt, view: true}
}

func (b *Backend) Zero(t tensor.Buf) {
	x := t.(*buf)
	if x.n == 0 {
		return
	}
	b.do("Zero", func() error { return cu.MemsetD8(x.ptr, 0, int64(x.n*x.dt.Size())) })
}

func upload[T any](b *Backend, op string, t tensor.Buf, dt tensor.DType, src []T) {
	x := t.(*buf)
	if x.dt != dt || len(src) > x.n {
		panic(fmt.Sprintf("cuda.%s: %d values into %d of %v", op, len(src), x.n, x.dt))
	}
	if len(src) == 0 {
		return
	}
	b.do(op, func() error {
		return cu.MemcpyHtoD(x.ptr, unsafe.Pointer(&src[0]), int64(len(src)*dt.Size()))
	})
}

func (b *Backend) UploadF32(dst tensor.Buf, src []float32) {
	upload(b, "UploadF32", dst, tensor.F32, src)
}
func (b *Backend) UploadBF16(dst tensor.Buf, src []uint16) {
	upload(b, "UploadBF16", dst, tensor.BF16, src)
}
func (b *Backend) UploadI32(dst tensor.Buf, src []int32) {
	upload(b, "UploadI32", dst, tensor.I32, src)
}

func (b *Backend) DownloadF32(dst []float32, src tensor.Buf) {
	x := src.(*buf)
	if x.dt != tensor.F32 || len(dst) > x.n {
		panic(fmt.Sprintf("cuda.DownloadF32: %d values from %d of %v", len(dst), x.n, x.dt))
	}
	if len(dst) == 0 {
		return
	}
	b.do("DownloadF32", func() error {
		return cu.MemcpyDtoH(unsafe.Pointer(&dst[0]), x.ptr, int64(4*len(dst)))
	})
}

// Kernel arguments: each travels in an 8-byte slot (gorgonia.org/cu's
// Launch copies 8 bytes per argument); the driver reads the parameter's own
// size from the start of the slot, which on little-endian x86-64 and arm64
// holds the value's low bytes.
type arg uint64

func ptrArg(t tensor.Buf) arg {
	if t == nil {
		return 0
	}
	return arg(t.(*buf).ptr)
}
func intArg(v int) arg          { return arg(uint32(int32(v))) }
func longArg(v int) arg         { return arg(uint64(v)) }
func floatArg(v float32) arg    { return arg(math.Float32bits(v)) }
func doubleArg(v float64) arg   { return arg(math.Float64bits(v)) }
func devArg(p cu.DevicePtr) arg { return arg(p) }

// launch queues kernel name on the default stream (device goroutine only).
func (b *Backend) launch(name string, grid [3]int, block, shared int, args ...arg) error {
	f, ok := b.fns[name]
	if !ok {
		return fmt.Errorf("no kernel %s", name)
	}
	vals := make([]uint64, len(args))
	ptrs := make([]unsafe.Pointer, len(args))
	for i, a := range args {
		vals[i] = uint64(a)
		ptrs[i] = unsafe.Pointer(&vals[i])
	}
	if err := f.Launch(grid[0], max(grid[1], 1), max(grid[2], 1), block, 1, 1, shared, cu.NoStream, ptrs); err != nil {
		return fmt.Errorf("launch %s: %w", name, err)
	}
	return nil
}

// elementwise launches a one-thread-per-element kernel over n elements.
func (b *Backend) elementwise(name string, n int, args ...arg) {
	if n == 0 {
		return
	}
	b.do(name, func() error { return b.launch(name, [3]int{(n + 255) / 256}, 256, 0, append(args, longArg(n))...) })
}

func (b *Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a tensor.Buf, lda int, w tensor.Buf, ldb int, beta float32, c tensor.Buf, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	wb := w.(*buf)
	if wb.dt != tensor.BF16 {
		b.do("Gemm", func() error {
			return b.blas.sgemm(transA, transB, m, n, k, alpha, a.(*buf).ptr, lda, wb.ptr, ldb, beta, c.(*buf).ptr, ldc)
		})
		return
	}
	if transA || !transB {
		panic("cuda.Gemm: a bf16 B needs transA false, transB true")
	}
	span := (m-1)*lda + k // A's elements, strided rows included
	b.do("Gemm", func() error {
		if need := int64(2 * span); need > b.stageN {
			if b.stage != 0 {
				cu.MemFree(b.stage)
				b.stage, b.stageN = 0, 0
			}
			p, err := cu.MemAlloc(need)
			if err != nil {
				return err
			}
			b.stage, b.stageN = p, need
		}
		if err := b.launch("f32_to_bf16", [3]int{(span + 255) / 256}, 256, 0, devArg(b.stage), ptrArg(a), longArg(span)); err != nil {
			return err
		}
		return b.blas.gemmBF16(m, n, k, alpha, b.stage, lda, wb.ptr, ldb, beta, c.(*buf).ptr, ldc)
	})
}

func (b *Backend) AddBias(x, bias tensor.Buf, rows, cols int) {
	b.elementwise("add_bias", rows*cols, ptrArg(x), ptrArg(bias), intArg(cols))
}

func (b *Backend) AddInPlace(dst, src tensor.Buf) {
	b.elementwise("add_inplace", dst.Len(), ptrArg(dst), ptrArg(src))
}

func (b *Backend) Scale(x tensor.Buf, s float32) {
	b.elementwise("scale", x.Len(), ptrArg(x), floatArg(s))
}

func (b *Backend) Embedding(out, table, ids tensor.Buf, d int) {
	name := "embed_f32"
	if table.DType() == tensor.BF16 {
		name = "embed_bf16"
	}
	b.elementwise(name, ids.Len()*d, ptrArg(out), ptrArg(table), ptrArg(ids), intArg(d))
}

func (b *Backend) RMSNormForward(out, rstd, x, w tensor.Buf, n, d int, eps float32) {
	if n == 0 {
		return
	}
	b.do("RMSNormForward", func() error {
		return b.launch("rmsnorm_fwd", [3]int{n}, 256, 0, ptrArg(out), ptrArg(rstd), ptrArg(x), ptrArg(w), intArg(n), intArg(d), floatArg(eps))
	})
}

func (b *Backend) RMSNormBackward(dx, dw, dout, x, w, rstd tensor.Buf, n, d int) {
	if n == 0 {
		return
	}
	b.do("RMSNormBackward", func() error {
		if dx != nil {
			if err := b.launch("rmsnorm_bwd_dx", [3]int{n}, 256, 0, ptrArg(dx), ptrArg(dout), ptrArg(x), ptrArg(w), ptrArg(rstd), intArg(n), intArg(d)); err != nil {
				return err
			}
		}
		if dw != nil {
			return b.launch("rmsnorm_bwd_dw", [3]int{(d + 255) / 256}, 256, 0, ptrArg(dw), ptrArg(dout), ptrArg(x), ptrArg(rstd), intArg(n), intArg(d))
		}
		return nil
	})
}

func (b *Backend) RoPE(r *tensor.RoPE, x, pos tensor.Buf, n, nHeads int, inverse bool) {
	total := n * nHeads * (r.HeadDim / 2)
	if total == 0 {
		return
	}
	sign := float32(1)
	if inverse {
		sign = -1
	}
	il := 0
	if r.Interleaved {
		il = 1
	}
	b.do("RoPE", func() error {
		t, ok := b.ropes[r]
		if !ok {
			cs, sn := r.Tables()
			for i, tab := range [][]float32{cs, sn} {
				p, err := cu.MemAlloc(int64(4 * len(tab)))
				if err != nil {
					return err
				}
				t[i] = p
				if err := cu.MemcpyHtoD(p, unsafe.Pointer(&tab[0]), int64(4*len(tab))); err != nil {
					return err
				}
			}
			b.ropes[r] = t
		}
		return b.launch("rope", [3]int{(total + 255) / 256}, 256, 0, ptrArg(x), ptrArg(pos), devArg(t[0]), devArg(t[1]),
			intArg(n), intArg(nHeads), intArg(r.HeadDim), floatArg(sign), intArg(il))
	})
}

func checkAttn(op string, T, nHead, nKV, hd, maxHD int) {
	if nKV <= 0 || nHead%nKV != 0 || hd <= 0 || hd > maxHD {
		panic(fmt.Sprintf("cuda.%s: nHead %d, nKV %d, head size %d (at most %d)", op, nHead, nKV, hd, maxHD))
	}
}

func (b *Backend) AttentionForward(out, lse, q, k, v tensor.Buf, T, nHead, nKV, hd int) {
	if T == 0 {
		return
	}
	checkAttn("AttentionForward", T, nHead, nKV, hd, attMaxHD)
	b.do("AttentionForward", func() error {
		return b.launch("attn_fwd", [3]int{(T + attBQ - 1) / attBQ, nHead}, 32*attWarps, attnFwdShared(hd),
			ptrArg(out), ptrArg(lse), ptrArg(q), ptrArg(k), ptrArg(v), intArg(T), intArg(nHead), intArg(nKV), intArg(hd))
	})
}

func (b *Backend) AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse tensor.Buf, T, nHead, nKV, hd int) {
	if T == 0 || (dq == nil && dk == nil && dv == nil) {
		return
	}
	checkAttn("AttentionBackward", T, nHead, nKV, hd, attBackHD)
	b.do("AttentionBackward", func() error {
		return b.launch("attn_bwd", [3]int{(T + attBQ - 1) / attBQ, nHead}, 32*attWarps, attnBwdShared(hd),
			ptrArg(dq), ptrArg(dk), ptrArg(dv), ptrArg(dout), ptrArg(q), ptrArg(k), ptrArg(v), ptrArg(out), ptrArg(lse),
			intArg(T), intArg(nHead), intArg(nKV), intArg(hd))
	})
}

func (b *Backend) SwiGLUForward(out, gate, up tensor.Buf) {
	b.elementwise("swiglu_fwd", gate.Len(), ptrArg(out), ptrArg(gate), ptrArg(up))
}
func (b *Backend) SwiGLUBackward(dgate, dup, dout, gate, up tensor.Buf) {
	b.elementwise("swiglu_bwd", gate.Len(), ptrArg(dgate), ptrArg(dup), ptrArg(dout), ptrArg(gate), ptrArg(up))
}
func (b *Backend) SigmoidForward(out, x tensor.Buf) {
	b.elementwise("sigmoid_fwd", x.Len(), ptrArg(out), ptrArg(x))
}
func (b *Backend) SigmoidBackward(dx, dout, out tensor.Buf) {
	b.elementwise("sigmoid_bwd", dout.Len(), ptrArg(dx), ptrArg(dout), ptrArg(out))
}
func (b *Backend) MulForward(out, x, y tensor.Buf) {
	b.elementwise("mul_fwd", x.Len(), ptrArg(out), ptrArg(x), ptrArg(y))
}
func (b *Backend) MulBackward(da, db, dout, x, y tensor.Buf) {
	b.elementwise("mul_bwd", dout.Len(), ptrArg(da), ptrArg(db), ptrArg(dout), ptrArg(x), ptrArg(y))
}

func (b *Backend) SoftmaxXent(logits, targets, loss tensor.Buf, rows, V int, gradScale float32) {
	if rows == 0 {
		return
	}
	b.do("SoftmaxXent", func() error {
		return b.launch("softmax_xent", [3]int{rows}, 512, 0, ptrArg(logits), ptrArg(targets), ptrArg(loss), intArg(rows), intArg(V), floatArg(gradScale))
	})
}

// AdamW is tensor.AdamWStep: the bias corrections are computed here in
// float64 exactly as there, the update per element in float64 on the GPU.
func (b *Backend) AdamW(p, g, m, v tensor.Buf, step int, lr, beta1, beta2, eps, wd float32) {
	if step < 1 {
		panic("cuda.AdamW: step must be >= 1")
	}
	b1, b2 := float64(beta1), float64(beta2)
	bc1 := 1 - math.Pow(b1, float64(step))
	bc2 := math.Sqrt(1 - math.Pow(b2, float64(step)))
	b.elementwise("adamw", p.Len(), ptrArg(p), ptrArg(g), ptrArg(m), ptrArg(v), longArg(p.Len()), doubleArg(b1), doubleArg(b2),
		doubleArg(float64(lr)/bc1), doubleArg(bc2), doubleArg(1-float64(lr)*float64(wd)), doubleArg(float64(eps)))
}

func (b *Backend) SumSquares(x tensor.Buf) (float64, error) {
	var s float64
	n := x.Len()
	b.do("SumSquares", func() error {
		if err := cu.MemsetD8(b.acc, 0, 8); err != nil {
			return err
		}
		if n > 0 {
			if err := b.launch("sumsq", [3]int{min((n+255)/256, 1024)}, 256, 0, devArg(b.acc), ptrArg(x), longArg(n)); err != nil {
				return err
			}
		}
		return cu.MemcpyDtoH(unsafe.Pointer(&s), b.acc, 8)
	})
	return s, b.Sync()
}

// Encode runs the symmetric per-token codecs (q2..q8) and bf16 on the GPU
// and downloads only the encoded bytes; other codecs download x and encode
// on the host.
func (b *Backend) Encode(c tensor.Codec, dst []byte, x tensor.Buf, rows, d int) ([]byte, error) {
	n := c.EncodedSize(rows, d)
	if n < 0 || x.Len() < rows*d {
		return dst, fmt.Errorf("cuda.Encode: %v with shape (%d, %d) of %d values", c, rows, d, x.Len())
	}
	onGPU := c.Bits == 16 || (c.Group == 0 && !c.Asymmetric && c.Bits >= 2)
	if !onGPU || n == 0 {
		host := make([]float32, rows*d)
		b.DownloadF32(host, b.View(x, 0, rows*d))
		if err := b.Sync(); err != nil {
			return dst, err
		}
		return c.Encode(dst, host, rows, d), nil
	}
	out := make([]byte, n)
	b.do("Encode", func() error {
		tmp, err := cu.MemAlloc(int64(n))
		if err != nil {
			return err
		}
		defer cu.MemFree(tmp)
		if c.Bits == 16 {
			err = b.launch("encode_bf16", [3]int{(rows*d + 255) / 256}, 256, 0, devArg(tmp), ptrArg(x), longArg(rows*d))
		} else {
			err = b.launch("encode_sym", [3]int{rows}, 256, 0, devArg(tmp), devArg(tmp+cu.DevicePtr(4*rows)), ptrArg(x),
				intArg(rows), intArg(d), intArg(c.Bits))
		}
		if err != nil {
			return err
		}
		return cu.MemcpyDtoH(unsafe.Pointer(&out[0]), tmp, int64(n))
	})
	if err := b.Sync(); err != nil {
		return dst, err
	}
	return append(dst, out...), nil
}

var _ tensor.Backend = (*Backend)(nil)

// OpenBackend opens GPU ordinal and its Backend; closing releases both.
func OpenBackend(ordinal int) (tensor.Backend, func() error, error) {
	d, err := New(ordinal)
	if err != nil {
		return nil, nil, err
	}
	b, err := NewBackend(d)
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return b, func() error { b.Close(); return d.Close() }, nil
}
