package carryon

// The carry-on network of docs/method.md.
//
// Per position t of one sequence, with sources x_i (x_0 = x̂, the bridged
// final hidden state of the base, width D):
//
//	u   = Σ_i P_i x_i + b_i                         trunk input, width h
//	r   = L causal pre-norm blocks of width h       (RMSNorm, MHA with RoPE, RMSNorm, SwiGLU)
//	h   = RMSNorm(r)
//	Δx  = W_Δ h                                     (D), W_Δ initialised to zero
//	g   = sigmoid(W_g h + b_g)                      (D)
//	y   = x̂ + α · g ⊙ Δx                           (D)
//	logits = W_pred y                               frozen LM head of the base
//
// All parameters live in one contiguous []float32 (llm.c's ParameterTensors):
// zeroing grads, the AdamW step and hashing are single loops, and the named
// fields of Weights are windows of it.

import (
	"fmt"
	"math"
	"strconv"

	"carryon/tensor"
	"carryon/transformer"
)

// Bounds checked by Config.Validate (and so by Unmarshal
// before anything is allocated).
const (
	coMaxSources   = 64
	coMaxNameLen   = 256
	coMaxDim       = 1 << 17 // widest base hidden state accepted
	coMaxWidth     = 1 << 15
	coMaxLayers    = 256
	coMaxHeads     = 1 << 10
	coMaxFFN       = 1 << 17
	coMaxVocab     = 1 << 22
	coMaxSeq       = 1 << 20
	coMaxRows      = 1 << 24 // positions of a batch workspace
	coMaxParams    = 1 << 30 // 4 GiB of float32
	coCEChunkElems = 1 << 23 // positions·vocab per LM-head chunk (32 MiB of logits)
	coCEChunkMax   = 256     // positions per LM-head chunk
	// coCEPackedElems is coCEChunkElems for a head packed in private memory
	// (tensor.CrossEntropyLMHeadPacked): each core's slab of a chunk streams
	// the whole head once for its logits and once for dy, so the rows per
	// slab bound its speed. At V = 152k, D = 896 (float32 head) on Zen 5,
	// chunks of 48, 96 and 216 positions trained at 675, 890 and 1065 tok/s
	// (AVX2: 214, 276, –; carryon bench train with this constant set to
	// each). tensor's BenchmarkCrossEntropyLMHeadPacked times the same
	// effect at V = 32000 (chunk 64 against 256). Its scratch (128 MiB at most) is small beside
	// the two packed copies of the head (8·V·D bytes in float32). A head
	// read in place from the base's file keeps the smaller chunk: there the
	// scratch is most of the private memory the head costs.
	coCEPackedElems = 1 << 25
	coMaxHeadPack   = 1 << 28 // largest Vocab·D packed into a Workspace (1 GiB per copy)
	coHeadSamples   = 64      // values of wPred compared to reuse its packing
)

// Source is one input of the carry-on: the bridged hidden states of one base
// at one layer.
type Source struct {
	Name string `json:"name"` // "final", "layer:3", "base:<hash>:final"
	Dim  int    `json:"dim"`  // hidden width of that source
}

// Config is the shape of a carry-on. Sources[0] is the primary input
// x̂, whose width D is the width of the base's LM head.
type Config struct {
	Sources   []Source `json:"sources"`
	Width     int      `json:"width"`      // h
	Layers    int      `json:"layers"`     // L
	Heads     int      `json:"heads"`      // attention heads; Width/Heads must be even
	FFN       int      `json:"ffn"`        // SwiGLU hidden width
	Vocab     int      `json:"vocab"`      // rows of the base's LM head
	MaxSeq    int      `json:"max_seq"`    // longest sequence
	RopeTheta float64  `json:"rope_theta"` // RoPE base
	NormEps   float32  `json:"norm_eps"`   // RMSNorm epsilon
	Alpha     float32  `json:"alpha"`      // default scale of the customisation
}

// DefaultConfig is the "1 MB" carry-on of docs/method.md on one source,
// the final hidden state of a base of width baseDim.
func DefaultConfig(baseDim, vocab int) Config {
	return Config{
		Sources:   []Source{{Name: "final", Dim: baseDim}},
		Layers:    2,
		Vocab:     vocab,
		MaxSeq:    4096,
		RopeTheta: 1e4,
		NormEps:   1e-6,
		Alpha:     1,
	}.WithWidth(64)
}

// WithWidth returns c at width h, with the default proportions: heads of 16
// dimensions (at least one) and a SwiGLU hidden of ≈ 8/3·h, rounded up to
// a multiple of 4.
func (c Config) WithWidth(h int) Config {
	c.Width, c.Heads, c.FFN = h, max(1, h/16), (h*8/3+3)/4*4
	return c
}

// D returns the width of the primary source (the LM head's width).
func (c Config) D() int {
	if len(c.Sources) == 0 {
		return 0
	}
	return c.Sources[0].Dim
}

// HeadDim returns Width/Heads.
func (c Config) HeadDim() int {
	if c.Heads == 0 {
		return 0
	}
	return c.Width / c.Heads
}

func coRange(field string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("model.Config: %s = %d out of range [%d, %d]", field, v, lo, hi)
	}
	return nil
}

// Validate checks every field against its bound; errors name the field.
func (c Config) Validate() error {
	if len(c.Sources) < 1 || len(c.Sources) > coMaxSources {
		return fmt.Errorf("model.Config: %d Sources, want 1..%d", len(c.Sources), coMaxSources)
	}
	seen := make(map[string]bool, len(c.Sources))
	for i, s := range c.Sources {
		if s.Name == "" || len(s.Name) > coMaxNameLen {
			return fmt.Errorf("model.Config: Sources[%d].Name has %d bytes, want 1..%d", i, len(s.Name), coMaxNameLen)
		}
		if seen[s.Name] {
			return fmt.Errorf("model.Config: Sources[%d].Name %q repeats an earlier source", i, s.Name)
		}
		seen[s.Name] = true
		if err := coRange("Sources["+strconv.Itoa(i)+"].Dim", s.Dim, 1, coMaxDim); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name      string
		v, lo, hi int
	}{
		{"Width", c.Width, 2, coMaxWidth},
		{"Layers", c.Layers, 0, coMaxLayers},
		{"Heads", c.Heads, 1, coMaxHeads},
		{"FFN", c.FFN, 1, coMaxFFN},
		{"Vocab", c.Vocab, 1, coMaxVocab},
		{"MaxSeq", c.MaxSeq, 1, coMaxSeq},
	} {
		if err := coRange(f.name, f.v, f.lo, f.hi); err != nil {
			return err
		}
	}
	if c.Width%c.Heads != 0 || (c.Width/c.Heads)%2 != 0 {
		return fmt.Errorf("model.Config: Width %d must be Heads %d times an even head size (RoPE)", c.Width, c.Heads)
	}
	if !(c.RopeTheta > 1) || math.IsInf(c.RopeTheta, 0) {
		return fmt.Errorf("model.Config: RopeTheta = %v, want a finite value > 1", c.RopeTheta)
	}
	if !(c.NormEps > 0) || c.NormEps > 1 {
		return fmt.Errorf("model.Config: NormEps = %v, want (0, 1]", c.NormEps)
	}
	if math.IsNaN(float64(c.Alpha)) || math.IsInf(float64(c.Alpha), 0) {
		return fmt.Errorf("model.Config: Alpha = %v, want a finite value", c.Alpha)
	}
	if n := c.numParams64(); n > coMaxParams {
		return fmt.Errorf("model.Config: %d parameters, over the cap of %d", n, coMaxParams)
	}
	return nil
}

// numParams64 counts parameters without overflow for fields within their
// bounds.
func (c Config) numParams64() int64 {
	var n int64
	for _, t := range c.layout() {
		n += int64(t.Numel())
	}
	return n
}

// NumParams returns the number of float32 parameters (len(Params)).
func (c Config) NumParams() int { return int(c.numParams64()) }

// Tensor names one parameter tensor: the window
// Params[Offset : Offset+Numel()] with the given row-major shape.
type Tensor struct {
	Name   string
	Shape  []int
	Offset int
	Decay  bool // weight decay applies (matrices; not norms or biases)
}

// Numel returns the number of elements.
func (t Tensor) Numel() int { return tensor.Numel(t.Shape) }

// layout lists the parameter tensors in their order within Params. Names
// are those of the adaptor file.
func (c Config) layout() []Tensor {
	var ts []Tensor
	off := 0
	add := func(name string, decay bool, shape ...int) {
		t := Tensor{Name: name, Shape: shape, Offset: off, Decay: decay}
		ts = append(ts, t)
		off += t.Numel()
	}
	W, F, D := c.Width, c.FFN, c.D()
	for i, s := range c.Sources {
		p := "src." + strconv.Itoa(i) + ".proj."
		add(p+"weight", true, W, s.Dim)
		add(p+"bias", false, W)
	}
	for l := 0; l < c.Layers; l++ {
		p := "blocks." + strconv.Itoa(l) + "."
		add(p+"attn_norm.weight", false, W)
		add(p+"attn.wq.weight", true, W, W)
		add(p+"attn.wk.weight", true, W, W)
		add(p+"attn.wv.weight", true, W, W)
		add(p+"attn.wo.weight", true, W, W)
		add(p+"mlp_norm.weight", false, W)
		add(p+"mlp.w_gate.weight", true, F, W)
		add(p+"mlp.w_up.weight", true, F, W)
		add(p+"mlp.w_down.weight", true, W, F)
	}
	add("final_norm.weight", false, W)
	add("delta.weight", true, D, W)
	add("gate.weight", true, D, W)
	add("gate.bias", false, D)
	return ts
}

// BlockOf holds the parameters of one transformer block, each as a T: a
// []float32 window (Block) or the device trainer's backend view.
type BlockOf[T any] struct {
	AttnNorm       T // (W)
	WQ, WK, WV, WO T // (W, W) each, nn.Linear layout (out, in)
	MLPNorm        T // (W)
	WGate, WUp     T // (FFN, W)
	WDown          T // (W, FFN)
}

// Block holds the parameters of one transformer block.
type Block = BlockOf[[]float32]

// WeightsOf are the named tensors of a buffer laid out like Params, each
// as a T: []float32 windows (Weights) or the device trainer's backend
// views.
type WeightsOf[T any] struct {
	Proj      []T // per source i: (W, Dim_i)
	ProjBias  []T // per source i: (W)
	Blocks    []BlockOf[T]
	FinalNorm T // (W)
	Delta     T // (D, W) W_Δ
	Gate      T // (D, W) W_g
	GateBias  T // (D) b_g
}

// Weights are named windows of a buffer laid out like Params: the
// parameters themselves, or their gradients or optimiser moments.
type Weights = WeightsOf[[]float32]

// weightsOf names the tensors of a buffer laid out like Params: cut
// returns the part of the buffer that holds t; ts are the tensors of a
// carry-on of cfg (its layout), in Params order.
func weightsOf[T any](cfg Config, ts []Tensor, cut func(t Tensor) T) WeightsOf[T] {
	k := 0
	next := func() T {
		k++
		return cut(ts[k-1])
	}
	var w WeightsOf[T]
	for range cfg.Sources {
		w.Proj = append(w.Proj, next())
		w.ProjBias = append(w.ProjBias, next())
	}
	w.Blocks = make([]BlockOf[T], cfg.Layers)
	for l := range w.Blocks {
		b := &w.Blocks[l]
		b.AttnNorm, b.WQ, b.WK, b.WV, b.WO = next(), next(), next(), next(), next()
		b.MLPNorm, b.WGate, b.WUp, b.WDown = next(), next(), next(), next()
	}
	w.FinalNorm, w.Delta, w.Gate, w.GateBias = next(), next(), next(), next()
	return w
}

// Model is a carry-on network: its config and parameters.
type Model struct {
	Config Config
	Params []float32 // all parameters, one contiguous slice
	Weights
	tensors []Tensor
}

// New makes a carry-on with deterministic initial weights drawn from
// seed:
//
//   - projections P_i ~ N(0, 1/Dim_i) (so u keeps the scale of the inputs),
//     biases 0;
//   - block matrices ~ N(0, 0.02²), with wo and w_down scaled by 1/sqrt(2L)
//     (GPT-2's residual scaling); norm weights 1;
//   - W_Δ = 0, so y = x̂ and training starts exactly at the base's loss;
//   - W_g ~ N(0, 0.02²) and b_g = 0, so the gate starts near 1/2.
//
// With W_Δ = 0 the gradient reaches only W_Δ on the first step; the rest of
// the network starts learning once W_Δ has moved.
func New(cfg Config, seed uint64) (*Model, error) {
	c, err := coAlloc(cfg)
	if err != nil {
		return nil, err
	}
	rng := coRNG{state: seed}
	normal := func(x []float32, std float64) {
		for i := range x {
			x[i] = float32(rng.normal() * std)
		}
	}
	fill := func(x []float32, v float32) {
		for i := range x {
			x[i] = v
		}
	}
	for i, s := range cfg.Sources {
		normal(c.Proj[i], 1/math.Sqrt(float64(s.Dim)))
	}
	resid := 0.02 / math.Sqrt(2*float64(max(cfg.Layers, 1)))
	for _, b := range c.Blocks {
		fill(b.AttnNorm, 1)
		normal(b.WQ, 0.02)
		normal(b.WK, 0.02)
		normal(b.WV, 0.02)
		normal(b.WO, resid)
		fill(b.MLPNorm, 1)
		normal(b.WGate, 0.02)
		normal(b.WUp, 0.02)
		normal(b.WDown, resid)
	}
	fill(c.FinalNorm, 1)
	normal(c.Gate, 0.02)
	return c, nil
}

// coAlloc validates cfg and allocates a zeroed carry-on.
func coAlloc(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("model.New: %w", err)
	}
	cfg.Sources = append([]Source(nil), cfg.Sources...)
	c := &Model{Config: cfg, tensors: cfg.layout()}
	c.Params = make([]float32, cfg.NumParams())
	c.Weights = c.Views(c.Params)
	return c, nil
}

// Tensors lists the parameter tensors in their order within Params.
func (c *Model) Tensors() []Tensor {
	out := make([]Tensor, len(c.tensors))
	copy(out, c.tensors)
	return out
}

// Views returns named windows of buf, which must have len(Params) elements
// (a gradient buffer, an optimiser moment, or Params itself).
func (c *Model) Views(buf []float32) Weights {
	if len(buf) != len(c.Params) {
		panic(fmt.Sprintf("model.Model.Views: buffer has %d elements, want %d", len(buf), len(c.Params)))
	}
	return weightsOf(c.Config, c.tensors, func(t Tensor) []float32 {
		return buf[t.Offset : t.Offset+t.Numel() : t.Offset+t.Numel()]
	})
}

// Clone returns a deep copy.
func (c *Model) Clone() *Model {
	d, err := coAlloc(c.Config)
	if err != nil {
		panic("model.Model.Clone: " + err.Error()) // c was validated when made
	}
	copy(d.Params, c.Params)
	return d
}

// coRNG is splitmix64 with Box–Muller normals: a fixed, documented stream so
// an initialisation is reproducible across Go releases.
type coRNG struct {
	state uint64
	spare float64
	has   bool
}

func (r *coRNG) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// uniform returns a value in (0, 1].
func (r *coRNG) uniform() float64 { return (float64(r.next()>>11) + 1) / (1 << 53) }

func (r *coRNG) normal() float64 {
	if r.has {
		r.has = false
		return r.spare
	}
	u1, u2 := r.uniform(), r.uniform()
	rad := math.Sqrt(-2 * math.Log(u1))
	s, c := math.Sincos(2 * math.Pi * u2)
	r.spare, r.has = rad*s, true
	return rad * c
}

// Workspace holds the activations a forward pass saves for backward and the
// scratch of backward, sized for a batch of sequences of up to T positions
// each and Rows positions in all, and reused across calls. The sequences of
// a batch run as one matrix of rows (every position-wise GEMM over all of
// them at once); only attention and RoPE see the sequence boundaries. A
// Workspace belongs to one goroutine at a time.
type Workspace struct {
	T    int // longest sequence
	Rows int // positions of all the sequences of a batch together
	// HeadBF16, set before the first call, packs a float32 LM head (the
	// wPred of Loss and LossAndGrad) in bf16 for the native bf16 GEMM
	// kernel where the CPU has one (AVX512_BF16, tensor.NativeBF16): half
	// the memory of the float32 packing and about twice the multiply rate
	// for the head products, which dominate a small carry-on's step. The
	// head, y and the softmax gradient are then rounded to bf16 in the
	// products (loss and ∂loss/∂y within the tolerance of
	// tensor.CrossEntropyLMHeadPacked's bf16 mode). Without the kernel the
	// head stays in float32 (exact). Default false: exact float32.
	HeadBF16 bool

	cfg    Config // of the carry-on it was made for
	rope   *tensor.RoPE
	pos    []int32 // (Rows) position of each row within its sequence
	tg     []int32 // (Rows) targets of the batch, concatenated
	seqs   []Seq
	one    [1]Seq              // the batch of the single-sequence entry points
	layers []*transformer.Acts // per block
	back   *transformer.BackScratch
	pass   transformer.Pass // of the current batch
	res    [][]float32      // L+1 residual streams, (Rows, W) each; res[0] = u
	resL   []float32        // = res[L]
	rstdF  []float32        // (Rows)
	h      []float32        // (Rows, W) final norm output
	delta  []float32        // (Rows, D) Δx
	gate   []float32        // (Rows, D) g
	y      []float32        // (Rows, D)

	// backward scratch (the blocks' own is in back)
	dy, dtmp, dDelta, dGate []float32 // (Rows, D)
	dres, dh                []float32 // (Rows, W)
	ceScratch               []float32
	ceChunk                 int
	head                    headPack // wPred packed for the LM-head GEMMs
	// Fused steps (LossAndStepQuant): gradient scratch, per-tensor views
	// into it, as Weights, and the tensors completed per backward stage.
	fusedBuf    []float32
	fusedViews  [][]float32
	fusedW      Weights
	fusedGroups [][]int
	grads       Weights // views of gradsOf
	gradsOf     []float32
}

// Seq is one sequence of a batch (LossAndGradBatch, ForwardBatch).
type Seq struct {
	Sources [][]float32 // per source i: (T, Dim_i)
	Targets []int32     // (T) targets[t] is the token after position t, -1 = ignore; unused by ForwardBatch
	T       int         // positions
}

// NewWorkspace allocates a workspace for one sequence of up to T positions
// at a time (T ≤ Config.MaxSeq).
func (c *Model) NewWorkspace(T int) *Workspace { return c.NewBatchWorkspace(T, T) }

// RowFloats is how many float32s a Workspace holds per position (row) of a
// batch: the saved activations and their gradients, as NewBatchWorkspace
// allocates them (the scratch of the attention and the LM head comes on top
// and does not grow with the rows).
func (c Config) RowFloats() int {
	W, F, D, H, L := c.Width, c.FFN, c.D(), c.Heads, c.Layers
	perLayer := 7*W + 2*F + H + 2 // transformer.Acts: xn1 q k v att mid xn2, gate up, lse, rstd1 rstd2
	// res (L+1), h, dres, dh and transformer.BackScratch's dn datt dq dk dv;
	// rstdF; y delta gate dy dtmp dDelta dGate; BackScratch's dh dgate dup
	// and the blocks' shared H.
	return L*perLayer + (L+9)*W + 7*D + 4*F + 1
}

// NewBatchWorkspace allocates a workspace for batches of sequences of up to
// T positions each (T ≤ Config.MaxSeq) and rows positions in all
// (rows ≥ T): rows·Config.RowFloats() floats of activations.
func (c *Model) NewBatchWorkspace(T, rows int) *Workspace {
	cfg := c.Config
	if T < 1 || T > cfg.MaxSeq {
		panic(fmt.Sprintf("model.Model.NewWorkspace: T = %d out of range [1, MaxSeq = %d]", T, cfg.MaxSeq))
	}
	if rows < T || rows > coMaxRows {
		panic(fmt.Sprintf("model.Model.NewBatchWorkspace: rows = %d out of range [T = %d, %d]", rows, T, coMaxRows))
	}
	W, D := cfg.Width, cfg.D()
	f := func(n int) []float32 { return make([]float32, n) }
	N := rows
	ws := &Workspace{T: T, Rows: N, cfg: cfg, rope: tensor.NewRoPE(cfg.HeadDim(), T, cfg.RopeTheta, nil, false)}
	ws.pos, ws.tg = make([]int32, N), make([]int32, N)
	ws.layers = transformer.NewStackActs(cfg.dims(), cfg.Layers, N, T)
	ws.back = transformer.NewBackScratch(cfg.dims(), N)
	ws.res = make([][]float32, cfg.Layers+1)
	for l := range ws.res {
		ws.res[l] = f(N * W)
	}
	ws.resL = ws.res[cfg.Layers]
	ws.rstdF, ws.h = f(N), f(N*W)
	ws.delta, ws.gate, ws.y = f(N*D), f(N*D), f(N*D)
	ws.dy, ws.dtmp, ws.dDelta, ws.dGate = f(N*D), f(N*D), f(N*D), f(N*D)
	ws.dres, ws.dh = f(N*W), f(N*W)
	ws.ceChunk = tensor.LMHeadChunk(max(1, min(N, coCEChunkElems/cfg.Vocab, coCEChunkMax)))
	ws.ceScratch = f(ws.ceChunk * cfg.Vocab)
	return ws
}

// coBatch checks the arguments of op (panicking on a programmer error),
// makes seqs the workspace's current batch, fills the rows' positions (and
// targets when targets is set) and returns the number of rows.
func (c *Model) coBatch(op string, ws *Workspace, seqs []Seq, targets bool) int {
	if ws == nil {
		panic(fmt.Sprintf("model.Model.%s: nil workspace", op))
	}
	if !coSameShape(ws.cfg, c.Config) {
		panic(fmt.Sprintf("model.Model.%s: workspace was made for a carry-on of another shape", op))
	}
	if len(seqs) == 0 {
		panic(fmt.Sprintf("model.Model.%s: empty batch", op))
	}
	V, N := c.Config.Vocab, 0
	for b, sq := range seqs {
		T := sq.T
		if T < 1 || T > ws.T || N+T > ws.Rows {
			panic(fmt.Sprintf("model.Model.%s: sequence %d: T = %d, workspace holds 1..%d per sequence and %d in all (%d used before it)", op, b, T, ws.T, ws.Rows, N))
		}
		if len(sq.Sources) != len(c.Config.Sources) {
			panic(fmt.Sprintf("model.Model.%s: %d sources, config has %d", op, len(sq.Sources), len(c.Config.Sources)))
		}
		for i, s := range c.Config.Sources {
			if len(sq.Sources[i]) < T*s.Dim {
				panic(fmt.Sprintf("model.Model.%s: source %d (%s) has %d values, want T·Dim = %d", op, i, s.Name, len(sq.Sources[i]), T*s.Dim))
			}
		}
		if targets {
			if len(sq.Targets) < T {
				panic(fmt.Sprintf("model.Model.%s: %d targets for T = %d", op, len(sq.Targets), T))
			}
			for t, v := range sq.Targets[:T] {
				if v < -1 || int(v) >= V {
					panic(fmt.Sprintf("model.Model.%s: targets[%d] = %d outside [-1, %d)", op, t, v, V))
				}
			}
			copy(ws.tg[N:N+T], sq.Targets[:T])
		}
		for t := range T {
			ws.pos[N+t] = int32(t)
		}
		N += T
	}
	ws.seqs = seqs
	return N
}

// offsets returns the row offsets of the batch's sequences
// (transformer.Pass.Seqs).
func (ws *Workspace) offsets() []int {
	off := make([]int, 1, len(ws.seqs)+1)
	for _, sq := range ws.seqs {
		off = append(off, off[len(off)-1]+sq.T)
	}
	return off
}

// trunkBlock is b as a transformer.Block.
func trunkBlock(b *Block) transformer.Block {
	return transformer.Block{AttnNorm: b.AttnNorm, MLPNorm: b.MLPNorm,
		WQ: transformer.F32(b.WQ), WK: transformer.F32(b.WK), WV: transformer.F32(b.WV), WO: transformer.F32(b.WO),
		Gate: transformer.F32(b.WGate), Up: transformer.F32(b.WUp), Down: transformer.F32(b.WDown)}
}

// dims are the sizes of the trunk's blocks: width h, Heads heads (no GQA).
func (c Config) dims() transformer.Dims {
	return transformer.Dims{Dim: c.Width, Heads: c.Heads, KVHeads: c.Heads, HeadDim: c.HeadDim(), FFN: c.FFN, NormEps: c.NormEps}
}

// coSameShape reports whether a workspace made for a fits b.
func coSameShape(a, b Config) bool {
	if a.Width != b.Width || a.Layers != b.Layers || a.Heads != b.Heads || a.FFN != b.FFN ||
		a.Vocab != b.Vocab || a.RopeTheta != b.RopeTheta || len(a.Sources) != len(b.Sources) {
		return false
	}
	for i := range a.Sources {
		if a.Sources[i].Dim != b.Sources[i].Dim {
			return false
		}
	}
	return true
}

// Forward computes y (T, D) for one sequence and saves the activations for
// backward in ws. sources[i]: (T, Dim_i). alpha overrides Config.Alpha. The
// result is a window of ws, valid until the next call with ws.
func (c *Model) Forward(ws *Workspace, sources [][]float32, T int, alpha float32) []float32 {
	ws.one[0] = Seq{Sources: sources, T: T}
	return c.ForwardBatch(ws, ws.one[:], alpha)
}

// ForwardBatch computes y for a batch of sequences, (ΣT_b, D) with the
// rows of sequence b after those of the sequences before it, and saves the
// activations for backward in ws. alpha overrides Config.Alpha. The result
// is a window of ws, valid until the next call with ws.
func (c *Model) ForwardBatch(ws *Workspace, seqs []Seq, alpha float32) []float32 {
	N := c.coBatch("Forward", ws, seqs, false)
	return c.forward(ws, N, alpha)
}

// forward runs the batch ws.seqs of N rows (positions in ws.pos).
func (c *Model) forward(ws *Workspace, N int, alpha float32) []float32 {
	cfg := c.Config
	W, D := cfg.Width, cfg.D()
	NW, ND := N*W, N*D

	off := 0
	for _, sq := range ws.seqs {
		c.project(ws.res[0][off*W:(off+sq.T)*W], sq.Sources, sq.T)
		off += sq.T
	}

	ws.pass = transformer.Pass{N: N, Pos: ws.pos, Seqs: ws.offsets(), Rope: ws.rope}
	for l := range c.Blocks {
		blk := trunkBlock(&c.Blocks[l])
		blk.Forward(cfg.dims(), &ws.pass, ws.res[l][:NW], ws.res[l+1][:NW], nil, ws.layers[l])
	}

	c.heads(ws.h[:NW], ws.delta[:ND], ws.gate[:ND], ws.resL[:NW], ws.rstdF[:N], N)
	y := ws.y[:ND]
	off = 0
	for _, sq := range ws.seqs {
		blend(y[off*D:(off+sq.T)*D], sq.Sources[0][:sq.T*D], ws.gate[off*D:(off+sq.T)*D], ws.delta[off*D:(off+sq.T)*D], alpha)
		off += sq.T
	}
	return y
}

// project computes the trunk's input for one sequence of T positions:
//
//	u = Σ_i x_i P_iᵀ + b_i      u: (T, W), sources[i]: (T, Dim_i)
func (c *Model) project(u []float32, sources [][]float32, T int) {
	W := c.Config.Width
	for i, s := range c.Config.Sources {
		beta := float32(1)
		if i == 0 {
			beta = 0
		}
		tensor.Gemm(false, true, T, W, s.Dim, 1, sources[i], s.Dim, c.Proj[i], s.Dim, beta, u, W)
	}
	for t := 0; t < T; t++ {
		row := u[t*W : (t+1)*W]
		for i := range c.Config.Sources {
			for j, b := range c.ProjBias[i] {
				row[j] += b
			}
		}
	}
}

// heads computes, from the trunk's output r (N, W), h = RMSNorm(r) (its
// rstd saved when rstd is not nil), Δx = h W_Δᵀ and g = sigmoid(h W_gᵀ +
// b_g), each (N, D).
func (c *Model) heads(h, delta, gate, r, rstd []float32, N int) {
	cfg := c.Config
	W, D := cfg.Width, cfg.D()
	tensor.RMSNormForward(h, rstd, r, c.FinalNorm, N, W, cfg.NormEps)
	tensor.LinearForward(delta, h, c.Delta, nil, N, W, D)
	tensor.LinearForward(gate, h, c.Gate, c.GateBias, N, W, D)
	tensor.SigmoidForward(gate, gate)
}

// blend is the carry-on's output y = x̂ + α · g ⊙ Δx, elementwise.
func blend(y, x, gate, delta []float32, alpha float32) {
	for i := range y {
		y[i] = x[i] + alpha*(gate[i]*delta[i])
	}
}

// Loss runs Forward and the chunked LM-head cross-entropy of y against
// targets (T; -1 = ignore). wPred: (Vocab, D), the base's frozen LM head;
// ws keeps it packed across calls (see headPack).
func (c *Model) Loss(ws *Workspace, sources [][]float32, targets []int32, T int, wPred []float32, alpha float32) (lossSum float64, count int) {
	ws.one[0] = Seq{Sources: sources, Targets: targets, T: T}
	return c.LossBatch(ws, ws.one[:], wPred, alpha)
}

// LossBatch is Loss over a batch of sequences: the loss summed over the
// counted targets of all of them, and their number.
func (c *Model) LossBatch(ws *Workspace, seqs []Seq, wPred []float32, alpha float32) (lossSum float64, count int) {
	c.coCheckHead("Loss", wPred)
	N := c.coBatch("Loss", ws, seqs, true)
	y := c.forward(ws, N, alpha)
	return c.lmHead(ws, nil, y, N, headRef{f32: wPred}, 0)
}

// LossBatchQuant is LossBatch with the LM head in its file's GGML format
// (see LossAndGradBatchQuant).
func (c *Model) LossBatchQuant(ws *Workspace, seqs []Seq, head tensor.QuantMatrix, alpha float32) (lossSum float64, count int) {
	c.coCheckQuantHead("Loss", head)
	N := c.coBatch("Loss", ws, seqs, true)
	y := c.forward(ws, N, alpha)
	return c.lmHead(ws, nil, y, N, headRef{q: &head}, 0)
}

// headRef is the frozen LM head W_pred (Vocab, D): float32 values, or q
// (in a GGML format) when set.
type headRef struct {
	f32 []float32
	q   *tensor.QuantMatrix
}

// lmHead runs the chunked LM-head cross-entropy of y (N, D) against the
// batch's targets ws.tg, adding gradScale·∂loss/∂y into dy unless dy is nil.
func (c *Model) lmHead(ws *Workspace, dy, y []float32, N int, head headRef, gradScale float32) (lossSum float64, count int) {
	D, V := c.Config.D(), c.Config.Vocab
	if head.q != nil {
		return tensor.CrossEntropyLMHeadQuant(dy, y, *head.q, ws.tg[:N], N, ws.ceChunk, gradScale, ws.ceScratch)
	}
	wPred := head.f32
	if wt, w := ws.head.get(wPred, V, D, dy != nil, ws.HeadBF16); wt != nil {
		chunk := tensor.LMHeadChunk(max(1, min(ws.Rows, coCEPackedElems/V, coCEChunkMax)))
		if len(ws.ceScratch) < chunk*V {
			ws.ceScratch = make([]float32, chunk*V)
		}
		return tensor.CrossEntropyLMHeadPacked(dy, y, wPred, wt, w, ws.tg[:N], N, chunk, gradScale, ws.ceScratch)
	}
	return tensor.CrossEntropyLMHead(dy, y, wPred, ws.tg[:N], N, D, V, ws.ceChunk, gradScale, ws.ceScratch)
}

// headPack caches the frozen LM head W_pred packed for
// tensor.CrossEntropyLMHeadPacked, so that its (Vocab, D) operand is not
// re-packed for every chunk of every step: wt = W_predᵀ for the logits and
// w = W_pred for dy (packed on the first LossAndGrad). The packing is
// reused while the same wPred comes back: the same slice (address and
// length) with the same bits at coHeadSamples evenly spaced positions (a
// check against a buffer refilled in place). Callers must therefore not
// change a wPred in place while a Workspace is used with it: the LM head is
// frozen. Heads over coMaxHeadPack values are not packed. With bf16 (and
// a CPU with the native bf16 kernel) both are packed in bf16.
type headPack struct {
	of     []float32
	sample [coHeadSamples]uint32
	bf16   bool
	wt, w  *tensor.PackedB
}

// get returns wPred's packings (w only when grad), packing as needed (in
// bf16 when bf16 and tensor.NativeBF16()), or nils when the head is too
// large to pack.
func (h *headPack) get(wPred []float32, V, D int, grad, bf16 bool) (wt, w *tensor.PackedB) {
	if V*D > coMaxHeadPack {
		return nil, nil
	}
	var sample [coHeadSamples]uint32
	for i := range sample {
		sample[i] = math.Float32bits(wPred[i*len(wPred)/coHeadSamples])
	}
	bf16 = bf16 && tensor.NativeBF16()
	if len(h.of) != len(wPred) || &h.of[0] != &wPred[0] || h.sample != sample || h.bf16 != bf16 {
		*h = headPack{of: wPred, sample: sample, bf16: bf16}
	}
	pack := tensor.PackB
	if bf16 {
		pack = tensor.PackBBF16
	}
	if h.wt == nil {
		h.wt = pack(true, V, D, wPred, D)
	}
	if grad && h.w == nil {
		h.w = pack(false, D, V, wPred, D)
	}
	return h.wt, h.w
}

func (c *Model) coCheckQuantHead(op string, head tensor.QuantMatrix) {
	if head.Rows != c.Config.Vocab || head.Cols != c.Config.D() {
		panic(fmt.Sprintf("model.Model.%s: the LM head is (%d, %d), want (Vocab, D) = (%d, %d)", op, head.Rows, head.Cols, c.Config.Vocab, c.Config.D()))
	}
}

func (c *Model) coCheckHead(op string, wPred []float32) {
	if len(wPred) != c.Config.Vocab*c.Config.D() {
		panic(fmt.Sprintf("model.Model.%s: wPred has %d values, want Vocab·D = %d·%d", op, len(wPred), c.Config.Vocab, c.Config.D()))
	}
}
