package model

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"carryon/internal/atomicfile"
	"carryon/tensor"
	"carryon/transformer"
)

// Full pretraining of a base model (every weight trainable), llm.c style:
// the forward saves each layer's activations, the backward walks the layers
// in reverse with the tensor package's backward ops, and AdamW updates the
// weights. It exists to build the small pretrained base the demo ships.
//
// Data parallelism: a step's sequences are dealt round-robin to Workers
// goroutines, each with its own gradients, which are then summed in worker
// order. For a fixed seed, data and worker count every float operation runs
// in a fixed order, so training is bit-reproducible; a different worker
// count (or GOMAXPROCS, which Gemm and attention use to split their work by
// output blocks) sums the gradients of a step in a different order and so
// changes the last bits.

// BaseTrainer trains all the weights of a float32 base model.
type BaseTrainer struct {
	Base *Base // the weights being trained (owned by the trainer)

	params  []namedTensor // Base's weights, in tensors() order
	workers []*trainWorker
	m, v    [][]float32 // AdamW moments, per params entry
	step    int         // AdamW steps taken
}

// trainWorker holds one goroutine's gradients and activations.
type trainWorker struct {
	grad  *Base         // gradient of every weight, laid out like the model
	gts   []namedTensor // grad's tensors, aligned with params
	maxT  int
	xin   [][]float32         // per block: (T, D) its input
	acts  []*transformer.Acts // per block: what its backward needs
	back  *transformer.BackScratch
	xL    []float32 // (T, D) residual stream after the last block
	rstdF []float32 // (T)
	xf    []float32 // (T, D) final-norm output: the LM head's input
	// Backward scratch.
	dx, dxf []float32 // (T, D)
	logits  []float32 // (xentChunk, Vocab)
	pos     []int32   // (T) 0..T-1
	lossSum float64
	count   int
}

// xentChunk is how many positions the LM head's logits cover at once.
const xentChunk = 64

// NewBaseTrainer copies b's weights into memory the trainer owns (b itself
// may be memory-mapped and is not modified) and prepares workers goroutines
// for sequences of up to maxT tokens. Architectures with per-head q/k norms
// (qwen3) are not supported.
func NewBaseTrainer(b *Base, workers, maxT int) (*BaseTrainer, error) {
	c := b.Config
	if c.QKNorm {
		return nil, errors.New("model.NewBaseTrainer: qwen3 q/k norms are not supported")
	}
	if workers < 1 || maxT < 2 || maxT > c.MaxPos {
		return nil, fmt.Errorf("model.NewBaseTrainer: workers %d, maxT %d: want workers >= 1 and 2 <= maxT <= %d", workers, maxT, c.MaxPos)
	}
	own, err := b.copyAs(c)
	if err != nil {
		return nil, fmt.Errorf("model.NewBaseTrainer: %w", err)
	}
	dst := own.tensors()
	t := &BaseTrainer{Base: own, params: dst}
	for _, p := range dst {
		t.m = append(t.m, make([]float32, len(p.data)))
		t.v = append(t.v, make([]float32, len(p.data)))
	}
	for range workers {
		w, err := newTrainWorker(c, maxT)
		if err != nil {
			return nil, fmt.Errorf("model.NewBaseTrainer: %w", err)
		}
		t.workers = append(t.workers, w)
	}
	return t, nil
}

func newTrainWorker(c Config, maxT int) (*trainWorker, error) {
	g, err := NewRandomBase(c, 0)
	if err != nil {
		return nil, err
	}
	w := &trainWorker{grad: g, gts: g.tensors(), maxT: maxT}
	D := c.Dim
	f := func(n int) []float32 { return make([]float32, n) }
	w.acts = transformer.NewStackActs(c.dims(), c.Layers, maxT, maxT)
	for range c.Layers {
		w.xin = append(w.xin, f(maxT*D))
	}
	w.back = transformer.NewBackScratch(c.dims(), maxT)
	w.xL, w.rstdF, w.xf = f(maxT*D), f(maxT), f(maxT*D)
	w.dx, w.dxf = f(maxT*D), f(maxT*D)
	w.logits = f(min(xentChunk, maxT) * c.Vocab)
	w.pos = make([]int32, maxT)
	for i := range w.pos {
		w.pos[i] = int32(i)
	}
	return w, nil
}

// InitTrainWeights draws fresh weights for pretraining, GPT-2 style and
// deterministic for seed: matrices and embeddings N(0, 0.02²), the two
// residual projections (o_proj, down_proj) scaled by 1/√(2·Layers), norm
// weights 1, biases 0. b must own its weights (NewRandomBase, or a
// trainer's Base).
func InitTrainWeights(b *Base, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x70726574_7261696e)) // "pretrain"
	resid := 0.02 / math.Sqrt(2*float64(b.Config.Layers))
	for _, t := range b.tensors() {
		switch t.kind {
		case kindMatrix:
			std := 0.02
			if n := len(t.name); n >= 19 && (t.name[n-19:] == "o_proj.weight" || t.name[n-16:] == "down_proj.weight") {
				std = resid
			}
			for i := range t.data {
				t.data[i] = float32(rng.NormFloat64() * std)
			}
		case kindNorm:
			for i := range t.data {
				t.data[i] = 1
			}
		case kindBias:
			clear(t.data)
		}
	}
}

// ParamNames lists the trained tensors by HF name, in the order of Grads.
func (t *BaseTrainer) ParamNames() []string {
	out := make([]string, len(t.params))
	for i, p := range t.params {
		out[i] = p.name
	}
	return out
}

// Params returns the weight tensors being trained, aligned with ParamNames.
func (t *BaseTrainer) Params() [][]float32 {
	out := make([][]float32, len(t.params))
	for i, p := range t.params {
		out[i] = p.data
	}
	return out
}

// Grads returns the gradients of the last LossAndGrad, aligned with
// ParamNames (worker 0's buffers, which hold the sum over workers).
func (t *BaseTrainer) Grads() [][]float32 {
	out := make([][]float32, len(t.params))
	for i, g := range t.workers[0].gts {
		out[i] = g.data
	}
	return out
}

// StepCount is the number of optimizer steps taken.
func (t *BaseTrainer) StepCount() int { return t.step }

// checkSeqs validates sequences of input tokens (each needs at least two
// tokens: inputs seq[:n-1], targets seq[1:]).
func (t *BaseTrainer) checkSeqs(seqs [][]int32) (count int, err error) {
	c := t.Base.Config
	for i, s := range seqs {
		if len(s) < 2 || len(s)-1 > t.workers[0].maxT {
			return 0, fmt.Errorf("sequence %d has %d tokens: want 2..%d", i, len(s), t.workers[0].maxT+1)
		}
		for j, id := range s {
			if id < 0 || int(id) >= c.Vocab {
				return 0, fmt.Errorf("sequence %d: token %d at position %d is outside [0, %d)", i, id, j, c.Vocab)
			}
		}
		count += len(s) - 1
	}
	if count == 0 {
		return 0, errors.New("no sequences")
	}
	return count, nil
}

// LossAndGrad runs forward and backward over seqs (each predicts seq[1:]
// from seq[:len-1]) and sets Grads to the gradient of the MEAN next-token
// loss over all their positions. It returns the summed loss and the number
// of positions.
func (t *BaseTrainer) LossAndGrad(seqs [][]int32) (lossSum float64, count int, err error) {
	return t.run(seqs, true)
}

// Loss is LossAndGrad without the backward; Grads are left alone.
func (t *BaseTrainer) Loss(seqs [][]int32) (lossSum float64, count int, err error) {
	return t.run(seqs, false)
}

func (t *BaseTrainer) run(seqs [][]int32, grad bool) (float64, int, error) {
	count, err := t.checkSeqs(seqs)
	if err != nil {
		return 0, 0, fmt.Errorf("model.BaseTrainer: %w", err)
	}
	scale := float32(1 / float64(count))
	rope := t.Base.ropeFor(t.workers[0].maxT)
	var wg sync.WaitGroup
	for wi, w := range t.workers {
		w.lossSum, w.count = 0, 0
		if grad {
			for _, g := range w.gts {
				clear(g.data)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := wi; i < len(seqs); i += len(t.workers) {
				s := seqs[i]
				l, n := w.sequence(t.Base, rope, s[:len(s)-1], s[1:], grad, scale)
				w.lossSum += l
				w.count += n
			}
		}()
	}
	wg.Wait()
	var lossSum float64
	for wi, w := range t.workers {
		lossSum += w.lossSum
		if grad && wi > 0 {
			for i, g := range w.gts {
				tensor.AddInPlace(t.workers[0].gts[i].data, g.data)
			}
		}
	}
	return lossSum, count, nil
}

// Update clips the gradients to a global norm of maxNorm (if > 0) and takes
// one AdamW step (betas 0.9, 0.95, eps 1e-8) with learning rate lr and
// weight decay wd on matrices and embeddings (not on norms and biases). It
// returns the gradient norm before clipping.
func (t *BaseTrainer) Update(lr, wd float32, maxNorm float64) float64 {
	grads := t.Grads()
	norm := tensor.ClipGradNorm(maxNorm, grads...)
	t.step++
	for i, p := range t.params {
		d := wd
		if p.kind != kindMatrix {
			d = 0
		}
		tensor.AdamWStep(p.data, grads[i], t.m[i], t.v[i], t.step, lr, 0.9, 0.95, 1e-8, d)
	}
	return norm
}

// sequence runs one sequence forward (saving activations) and, with grad,
// backward, adding scale·d(loss sum)/dθ into w.grad. It returns the loss
// summed over the positions and their count.
//
//	ids, targets: (T)
func (w *trainWorker) sequence(b *Base, rope *tensor.RoPE, ids, targets []int32, grad bool, scale float32) (float64, int) {
	c := b.Config
	T, D := len(ids), c.Dim
	pass := &transformer.Pass{N: T, Pos: w.pos[:T], Seqs: []int{0, T}, Rope: rope}
	dims := c.dims()
	x := w.xL[:T*D] // running residual stream; copied into each block's input
	tensor.EmbeddingForward(x, b.embed, ids, D)
	for li := range b.layers {
		xin := w.xin[li][:T*D]
		copy(xin, x)
		blk := b.layers[li].f32Block()
		blk.Forward(dims, pass, xin, x, nil, w.acts[li])
	}
	xf := w.xf[:T*D]
	tensor.RMSNormForward(xf, w.rstdF[:T], x, b.finalNorm, T, D, c.NormEps)

	var dxf []float32
	if grad {
		dxf = w.dxf[:T*D]
		clear(dxf)
	}
	var dHead []float32
	if grad {
		dHead = w.grad.lmHead
	}
	lossSum, count := w.lmHeadLoss(dxf, dHead, xf, b.lmHead, targets, T, D, c.Vocab, scale)
	if !grad {
		return lossSum, count
	}

	// Backward.
	g := w.grad
	dx := w.dx[:T*D]
	clear(dx)
	tensor.RMSNormBackward(dx, g.finalNorm, dxf, x, b.finalNorm, w.rstdF[:T], T, D)
	for li := len(b.layers) - 1; li >= 0; li-- {
		blk, gb := b.layers[li].f32Block(), g.layers[li].f32Block()
		blk.Backward(dims, pass, &gb, w.xin[li][:T*D], w.acts[li], dx, w.back)
	}
	tensor.EmbeddingBackward(g.embed, dx, ids, D)
	return lossSum, count
}

// lmHeadLoss computes next-token cross-entropy through a TRAINABLE LM head
// in chunks of xentChunk positions and, when dy is not nil, accumulates
// scale·d(loss sum)/dy into dy and scale·d(loss sum)/dW into dw.
//
//	dy:      (T, D) += …, or nil
//	dw:      (V, D) += …, or nil
//	y:       (T, D) final-norm output
//	wHead:   (V, D)
//	targets: (T) in [0, V), or −1 for an ignored position
func (w *trainWorker) lmHeadLoss(dy, dw, y, wHead []float32, targets []int32, T, D, V int, scale float32) (float64, int) {
	var lossSum float64
	count := 0
	for t0 := 0; t0 < T; t0 += xentChunk {
		nc := min(xentChunk, T-t0)
		logits := w.logits[:nc*V]
		// logits: (nc, V) = y[t0:t0+nc]·Wᵀ
		tensor.Gemm(false, true, nc, V, D, 1, y[t0*D:], D, wHead, D, 0, logits, V)
		for r := range nc {
			row := logits[r*V : (r+1)*V]
			tgt := int(targets[t0+r])
			if tgt < 0 {
				clear(row)
				continue
			}
			lse := tensor.LogSumExp(row)
			lossSum += lse - float64(row[tgt])
			count++
			if dy != nil {
				for j, z := range row {
					row[j] = scale * float32(math.Exp(float64(z)-lse))
				}
				row[tgt] -= scale
			}
		}
		if dy != nil {
			// dy += dlogits·W;  dW += dlogitsᵀ·y
			tensor.Gemm(false, false, nc, D, V, 1, logits, V, wHead, D, 1, dy[t0*D:], D)
			tensor.Gemm(true, false, V, D, nc, 1, logits, V, y[t0*D:], D, 1, dw, D)
		}
	}
	return lossSum, count
}

// SaveState writes the optimizer state (AdamW moments and step count) to
// path as safetensors, beside a checkpoint of the weights written with
// SaveHF; LoadState restores it into a trainer built from those weights.
func (t *BaseTrainer) SaveState(path string) error {
	views := make([]tensor.View, 0, 2*len(t.params))
	for i, p := range t.params {
		views = append(views, tensor.F32View("m."+p.name, t.m[i], len(t.m[i])),
			tensor.F32View("v."+p.name, t.v[i], len(t.v[i])))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("model.SaveState: %w", err)
	}
	err := atomicfile.WriteFunc(path, 0o644, func(w io.Writer) error {
		return tensor.WriteSafetensors(w, views, map[string]string{"step": strconv.Itoa(t.step)})
	})
	if err != nil {
		return fmt.Errorf("model.SaveState: %w", err)
	}
	return nil
}

// LoadState reads what SaveState wrote.
func (t *BaseTrainer) LoadState(path string) error {
	st, err := tensor.OpenSafetensors(path)
	if err != nil {
		return fmt.Errorf("model.LoadState: %w", err)
	}
	defer st.Close()
	step, err := strconv.Atoi(st.Meta["step"])
	if err != nil || step < 0 {
		return fmt.Errorf("model.LoadState: %s: bad step %q", path, st.Meta["step"])
	}
	for i, p := range t.params {
		for _, mv := range []struct {
			pre string
			dst []float32
		}{{"m.", t.m[i]}, {"v.", t.v[i]}} {
			src, err := st.Float32(mv.pre+p.name, len(p.data))
			if err != nil {
				return fmt.Errorf("model.LoadState: %w", err)
			}
			copy(mv.dst, src)
		}
	}
	t.step = step
	return nil
}

// SaveHFBF16 writes b like SaveHF but with bfloat16 weights (round to
// nearest even), halving the file; LoadBase widens them back to float32.
func (b *Base) SaveHFBF16(dir string) error {
	if err := b.saveHF(dir, "model.SaveHFBF16", tensor.BF16View); err != nil {
		return err
	}
	// Config.JSON says float32; record the stored type.
	path := filepath.Join(dir, configFile)
	js, err := os.ReadFile(path)
	if err == nil {
		js = bytes.Replace(js, []byte(`"torch_dtype": "float32"`), []byte(`"torch_dtype": "bfloat16"`), 1)
		err = os.WriteFile(path, js, 0o644)
	}
	if err != nil {
		return fmt.Errorf("model.SaveHFBF16: %w", err)
	}
	return nil
}

// WithContext returns a float32 copy of b's weights, owned by the caller,
// under b's config with MaxPos and RopeTheta replaced by maxPos and
// ropeTheta. Bases of these families have no learnt position weights (RoPE
// is computed), so the tensors are unchanged: only the longest accepted
// sequence and the rotation frequencies differ. It is the starting point of
// context extension; positions beyond b's MaxPos are unseen by its weights
// until they are trained on.
func (b *Base) WithContext(maxPos int, ropeTheta float64) (*Base, error) {
	c := b.Config
	c.MaxPos, c.RopeTheta = maxPos, ropeTheta
	own, err := b.copyAs(c)
	if err != nil {
		return nil, fmt.Errorf("model.WithContext: %w", err)
	}
	return own, nil
}

// copyAs returns a float32 copy of b's weights, owned by the caller, under
// config c (which must give every tensor b's shape).
func (b *Base) copyAs(c Config) (*Base, error) {
	own, err := NewRandomBase(c, 0)
	if err != nil {
		return nil, err
	}
	release, err := b.use("copy")
	if err != nil {
		return nil, err
	}
	defer release()
	src, dst := b.tensors(), own.tensors()
	for i := range dst {
		copy(dst[i].data, src[i].data)
	}
	return own, nil
}

// SaveCheckpoint writes the weights (F32, SaveHF) and the optimizer state.
func (t *BaseTrainer) SaveCheckpoint(dir string) error {
	if err := t.Base.SaveHF(dir); err != nil {
		return err
	}
	return t.SaveState(filepath.Join(dir, "optim.safetensors"))
}
