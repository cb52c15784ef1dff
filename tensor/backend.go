package tensor

// Backend runs the ops of a base model's forward pass and of the carry-on's
// training step on one device, over buffers that live on that device. The
// CPU backend (CPU, CPUBackends) is the reference: every op below is the
// function of this package with the same name, and tensortest.RunBackend
// checks any other backend (cuda/, behind its build tag) against it with
// stated tolerances.
//
// Conventions are the package's (doc.go): row-major, shapes in comments,
// backward ops accumulate into gradients; a nil Buf is an absent optional
// argument. Ops are queued in order and may run asynchronously: a device
// error is sticky and reported by the next Sync, which also waits for the
// queued work. Methods that return host values (SumSquares, Encode,
// Download*) wait for the work before them. Shape mistakes are programmer
// errors and panic, as in the rest of the package.
//
// A Backend is not safe for concurrent use unless its documentation says so
// (the CUDA one is: it serialises on its device goroutine).
type Backend interface {
	// Name identifies the backend and kernel set ("cpu-avx512", "cuda:NVIDIA H200").
	Name() string

	// Alloc returns n zeroed elements of type dt.
	Alloc(dt DType, n int) (Buf, error)
	// Free releases a buffer from Alloc (not a View); nil is ignored.
	Free(b Buf)
	// View is elements [off, off+n) of b, sharing its memory.
	View(b Buf, off, n int) Buf
	// Zero sets every element of b to zero.
	Zero(b Buf)
	UploadF32(dst Buf, src []float32) // dst: F32, len(src) elements
	UploadBF16(dst Buf, src []uint16) // dst: BF16 bit patterns
	UploadI32(dst Buf, src []int32)   // dst: I32
	DownloadF32(dst []float32, src Buf)
	// Sync waits for the queued work and returns (and clears) the first
	// error since the last Sync.
	Sync() error

	// Gemm is Gemm (C = alpha·op(A)·op(B) + beta·C) on F32 A and C. B is
	// F32, or BF16 with transA false and transB true (an nn.Linear weight
	// (n, k)); a BF16 B has GemmBF16's numerics: A rounded to bf16
	// (nearest even), exact products, float32 accumulation, for every m.
	Gemm(transA, transB bool, m, n, k int, alpha float32, a Buf, lda int, b Buf, ldb int, beta float32, c Buf, ldc int)
	// AddBias adds bias (cols) to every row of x (rows, cols).
	AddBias(x, bias Buf, rows, cols int)
	AddInPlace(dst, src Buf) // dst += src, same length
	Scale(x Buf, s float32)  // x *= s
	// Embedding gathers rows: out (n, d) = table[ids] for an F32 or BF16
	// table (vocab, d) and I32 ids (n).
	Embedding(out, table, ids Buf, d int)
	RMSNormForward(out, rstd, x, w Buf, n, d int, eps float32)
	RMSNormBackward(dx, dw, dout, x, w, rstd Buf, n, d int)
	// RoPE rotates x (n, nHeads·r.HeadDim) in place at positions pos (I32,
	// n): r.Forward, or r.Backward when inverse.
	RoPE(r *RoPE, x, pos Buf, n, nHeads int, inverse bool)
	// AttentionForward and AttentionBackward are the causal grouped-query
	// attention of one sequence (attention.go); no T×T matrix is formed.
	AttentionForward(out, lse, q, k, v Buf, T, nHead, nKV, hd int)
	AttentionBackward(dq, dk, dv, dout, q, k, v, out, lse Buf, T, nHead, nKV, hd int)
	SwiGLUForward(out, gate, up Buf)
	SwiGLUBackward(dgate, dup, dout, gate, up Buf)
	SigmoidForward(out, x Buf)
	SigmoidBackward(dx, dout, out Buf)
	MulForward(out, a, b Buf)
	MulBackward(da, db, dout, a, b Buf)
	// SoftmaxXent turns logits (rows, V) in place into the gradient
	// gradScale·(softmax − onehot(target)) and writes each row's loss
	// (logsumexp − logit of the target) to loss (rows); a row whose target
	// (I32, rows) is −1 gets gradient 0 and loss 0. It is the per-chunk core
	// of CrossEntropyLMHead.
	SoftmaxXent(logits, targets, loss Buf, rows, V int, gradScale float32)
	// AdamW is AdamWStep.
	AdamW(p, g, m, v Buf, step int, lr, beta1, beta2, eps, wd float32)
	// SumSquares returns Σx² in float64 (GradNorm's building block).
	SumSquares(x Buf) (float64, error)
	// Encode appends the bridge encoding of x (rows, d) to dst, byte for
	// byte what c.Encode writes.
	Encode(c Codec, dst []byte, x Buf, rows, d int) ([]byte, error)
}

// Buf is a buffer of one Backend; only that backend can read it. Its
// element type is F32, BF16 or I32 (the safetensors DType names).
type Buf interface {
	Len() int
	DType() DType
}

// Tables returns the rotation tables, cos and sin, each (MaxPos, HeadDim/2),
// for backends that keep a copy on their device. Callers must not modify them.
func (r *RoPE) Tables() (cos, sin []float32) { return r.cos, r.sin }
