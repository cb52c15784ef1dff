package coordinator

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ipfs/go-cid"

	"carryon/carryon"
	"carryon/model"
	"carryon/tensor"
)

// Config configures a Coordinator. Zero values mean the documented default.
type Config struct {
	// JobID names this job on the wire: lowercase hex, at most 64
	// characters. Default: 16 hex digits of a hash of the base, the data
	// set, the codec and the layers.
	JobID string
	// Layers are the base layers each node returns: Layers[0] is the
	// primary source (model.FinalLayer, the LM head's input); further
	// entries are shortcut sources (0 = token embeddings). Default
	// [model.FinalLayer].
	Layers []int
	// Codec is the bridge setting nodes compress with (tensor.ParseCodec).
	// Default "q8".
	Codec string
	// Mix are further bases whose hidden states are sources of the
	// carry-on too (a mixture of bases, DESIGN.md §2). Each is its own job
	// on the swarm: nodes serving that base compute its layers, with its
	// own bridge codec, into the same cache. The bases must share the
	// primary base's tokenizer (the data set's token ids are fed to every
	// base): the caller checks that (tokenizer.Same); New checks the
	// vocabulary sizes and the context. At most 4.
	Mix []MixBase
	// CacheDir holds the embedding cache and the adaptor store. Required.
	CacheDir string
	// ShareReads keeps the cached embeddings that Train and Evaluate read
	// in memory, shared by every coordinator of this process on CacheDir
	// while one of them is open, instead of reading (and re-hashing) them
	// from the block store for each call: a search's trials read the same
	// splits many times. The memory is the splits' cached bytes.
	ShareReads bool
	// MinNodes is how many eligible nodes must be seen before leasing
	// starts. Default 1.
	MinNodes int
	// LeasesPerNode caps the chunks in flight to one node. Default 2, so
	// that the next chunk is on the wire while one computes.
	LeasesPerNode int
	// LeaseTimeout caps the deadline of one chunk on one node. Default 2 min.
	// The deadline itself is sized from the node's measured throughput (see
	// leaseDeadline) and clamped to [MinLeaseTimeout, LeaseTimeout].
	LeaseTimeout time.Duration
	// MinLeaseTimeout is the shortest lease deadline. Default 10 s.
	MinLeaseTimeout time.Duration
	// VerifyFraction is the base rate at which a finished chunk is computed
	// again by a second node and the two results compared (docs/method.md, Verification);
	// the rate adapts per node (see samplingRate). Default 0.1; negative
	// means never (a plain 0 takes the default).
	VerifyFraction float64
	// VerifyKernelRel is the relative difference two honest nodes' hidden
	// states may show before quantization (different kernels, CPU vs GPU);
	// the verification thresholds are derived from it and the codec's
	// error bound (see compareEntries). Default 1e-3.
	VerifyKernelRel float64
	// SelfVerify makes the coordinator, which holds the base, compute the
	// second opinion itself instead of leasing it to another node.
	SelfVerify bool
	// MaxAttempts is how often a chunk may fail before the job fails.
	// Default 8.
	MaxAttempts int
	// NodeTTL is how long an advert keeps a connected node eligible.
	// Default 1 min (three of a node's default advert intervals); a
	// disconnect makes a node ineligible at once.
	NodeTTL time.Duration
	// CommitBatch is the most finished chunks made durable in one group
	// commit of the state store (store.go). Default 256.
	CommitBatch int
	// CommitDelay is the longest a finished chunk waits for its group
	// commit (and the node for its acknowledgement). Default 5 ms; a
	// commit costs one syncfs and one bbolt transaction, so a busy
	// coordinator fills groups before the delay runs out.
	CommitDelay time.Duration
	// Train configures the carry-on and its training.
	Train TrainConfig
	// BaseName names the base in the job's announcements to nodes
	// (protocol.JobAnnounce); empty means its architecture.
	BaseName string
	// Logger receives lifecycle logs. Nil means slog.Default().
	Logger *slog.Logger
	// OnCached, when set, is called with the CID of every cache frame
	// the coordinator indexes (one per chunk and layer), computed or
	// fetched (FetchCached), from the goroutine that stored it: the
	// command announces them in the DHT so that peers and Kubo find this
	// host as their provider (HeldFrames names those held at start). It
	// must not block.
	OnCached func(cid.Cid)
}

// MixBase is one further base of a mixture (Config.Mix).
type MixBase struct {
	// Base is the mixed base: its weights hash, shape and context name the
	// job, and CollectLocal and self-verification run it. Required.
	Base *model.Base `json:"-"`
	// Layers are its layers read as sources, as in Config.Layers (the
	// first must be model.FinalLayer). Default [model.FinalLayer].
	Layers []int
	// Codec is its bridge setting. Default: Config.Codec.
	Codec string
}

// mixSourceName names a mixed base's layer as a carry-on source:
// "base:<first 16 hex digits of its weights hash>:final" or ":layer:k"
// (carryon.MixSourceName, the names inference resolves).
func mixSourceName(hash string, layer int) string { return carryon.MixSourceName(hash, layer) }

// TrainConfig is every training knob, on one screen.
type TrainConfig struct {
	// CarryOn is the network's shape; zero Width means
	// carryon.DefaultConfig for the base (Sources, Vocab and MaxSeq
	// are always filled in from the base and Layers).
	CarryOn carryon.Config
	// Optim is the optimiser and schedule; zero fields take
	// carryon.DefaultOptimConfig(Steps)'s values.
	Optim carryon.OptimConfig
	// Steps is the number of optimiser steps. Default 200.
	Steps int
	// BatchSeqs is how many sequences each step averages over (gradient
	// accumulation over sequences). Default 8.
	BatchSeqs int
	// EvalEvery runs validation every so many steps (and at the end).
	// Default Steps/4.
	EvalEvery int
	// Seed makes initialisation and batch order reproducible. Default 1.
	Seed uint64
	// CheckpointEvery saves the training state every so many steps (and
	// at the end), and a matching run resumes from it. Default 50;
	// negative disables checkpoints (and resuming).
	CheckpointEvery int
	// KeepBest makes the result the carry-on of the validation pass with
	// the lowest loss instead of the last step's (best-by-validation: a
	// cheap carry-on can exhaust a small task and overfit). Only passes
	// made by this call count: a resumed run does not have the weights of
	// passes before its checkpoint. Needs a validation split.
	KeepBest bool
	// AlphaGrid, when not empty, picks α after training (and after
	// KeepBest): the validation loss is measured at each value and the
	// carry-on keeps the lowest (its Config.Alpha, and so the adaptor's).
	// A blend can be worse than either side alone; include the training α
	// to allow "no change". Needs a validation split. Not applied to a run
	// that Hooks.Stop ended.
	AlphaGrid []float32
	// Device, when set, runs the training steps on that backend (a GPU:
	// cuda.OpenBackend) through carryon.DeviceTrainer: parameters,
	// gradients, AdamW's moments and the frozen LM head live there, and
	// the parameters and moments are downloaded after every step for
	// validation, checkpoints and the result (which stay on the CPU). The
	// optimiser must keep float32 moments. nil: the CPU. The caller owns
	// (and closes) the backend.
	Device tensor.Backend `json:"-"`
	// GateBias is the initial value of every element of the gate's bias
	// b_g: the gate starts at g = sigmoid(GateBias) (0: one half; −2:
	// 0.12, the carry-on starts timid; 2: 0.88). W_Δ starts at zero, so
	// the initial output is the base's whatever the value; it sets how
	// fast Δx reaches the output early on. A search hyper-parameter.
	GateBias float32
	// HeadBF16 multiplies the frozen LM head in bf16 on the CPU
	// (carryon.Workspace.HeadBF16) where it has AVX512_BF16
	// (tensor.NativeBF16): the head packed in half the memory and its
	// products, which dominate a small carry-on's step, about 1.6 times
	// as fast; the loss moves by ≤ 1e-3 relative and ∂loss/∂y by ≤ 1e-2
	// (measured 1.2e-5 and 1.7e-3, docs/performance.md). Elsewhere, and
	// with Device, the head stays float32. Default false: exact float32.
	HeadBF16 bool
}

func (c Config) withDefaults() Config {
	if len(c.Layers) == 0 {
		c.Layers = []int{model.FinalLayer}
	}
	c.Codec = cmp.Or(c.Codec, "q8")
	c.Mix = append([]MixBase(nil), c.Mix...)
	for i := range c.Mix {
		if len(c.Mix[i].Layers) == 0 {
			c.Mix[i].Layers = []int{model.FinalLayer}
		}
		c.Mix[i].Codec = cmp.Or(c.Mix[i].Codec, c.Codec)
	}
	c.MinNodes = cmp.Or(c.MinNodes, 1)
	c.LeasesPerNode = cmp.Or(c.LeasesPerNode, 2)
	c.LeaseTimeout = cmp.Or(c.LeaseTimeout, 2*time.Minute)
	c.MinLeaseTimeout = cmp.Or(c.MinLeaseTimeout, min(10*time.Second, c.LeaseTimeout))
	c.VerifyFraction = cmp.Or(c.VerifyFraction, 0.1)
	c.VerifyKernelRel = cmp.Or(c.VerifyKernelRel, 1e-3)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, 8)
	c.NodeTTL = cmp.Or(c.NodeTTL, time.Minute)
	c.CommitBatch = cmp.Or(c.CommitBatch, 256)
	c.CommitDelay = cmp.Or(c.CommitDelay, 5*time.Millisecond)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	c.Train = c.Train.withDefaults()
	return c
}

// headBF16 reports whether the CPU trainer multiplies the head in bf16:
// HeadBF16 asked for it, the CPU has the kernel, and no Device trains.
func (t TrainConfig) headBF16() bool { return t.HeadBF16 && t.Device == nil && tensor.NativeBF16() }

func (t TrainConfig) withDefaults() TrainConfig {
	t.Steps = cmp.Or(t.Steps, 200)
	t.BatchSeqs = cmp.Or(t.BatchSeqs, 8)
	if t.EvalEvery == 0 {
		t.EvalEvery = max(1, t.Steps/4)
	}
	t.Seed = cmp.Or(t.Seed, 1)
	t.CheckpointEvery = cmp.Or(t.CheckpointEvery, 50)
	t.Optim = t.optim()
	return t
}

// optim fills the zero fields of Optim from carryon.DefaultOptimConfig(Steps);
// a peak LR given without a final one decays to a tenth of it.
func (t TrainConfig) optim() carryon.OptimConfig {
	d, o := carryon.DefaultOptimConfig(t.Steps), t.Optim
	if o.LR != 0 {
		d.LR, d.MinLR = o.LR, o.LR/10
	}
	d.MinLR = cmp.Or(o.MinLR, d.MinLR)
	d.Warmup = cmp.Or(o.Warmup, d.Warmup)
	d.Total = cmp.Or(o.Total, d.Total)
	d.Beta1 = cmp.Or(o.Beta1, d.Beta1)
	d.Beta2 = cmp.Or(o.Beta2, d.Beta2)
	d.Eps = cmp.Or(o.Eps, d.Eps)
	d.WeightDecay = cmp.Or(o.WeightDecay, d.WeightDecay)
	d.ClipNorm = cmp.Or(o.ClipNorm, d.ClipNorm)
	return d
}

// Validate reports the first field out of bounds (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	if _, err := tensor.ParseCodec(c.Codec); err != nil {
		return fmt.Errorf("coordinator.Config.Codec: %w", err)
	}
	if c.JobID != "" && !isHex(c.JobID) {
		return fmt.Errorf("coordinator.Config.JobID: %q is not 1..64 lowercase hex digits", c.JobID)
	}
	switch {
	case c.CacheDir == "":
		return fmt.Errorf("coordinator.Config.CacheDir: required")
	case c.MinNodes < 1:
		return fmt.Errorf("coordinator.Config.MinNodes: %d is below 1", c.MinNodes)
	case c.LeasesPerNode < 1 || c.LeasesPerNode > 64:
		return fmt.Errorf("coordinator.Config.LeasesPerNode: %d not in [1, 64]", c.LeasesPerNode)
	case c.LeaseTimeout < time.Second:
		return fmt.Errorf("coordinator.Config.LeaseTimeout: %v is below 1s", c.LeaseTimeout)
	case c.MinLeaseTimeout < 10*time.Millisecond || c.MinLeaseTimeout > c.LeaseTimeout:
		return fmt.Errorf("coordinator.Config.MinLeaseTimeout: %v not in [10ms, LeaseTimeout %v]", c.MinLeaseTimeout, c.LeaseTimeout)
	case c.VerifyFraction > 1 || c.VerifyFraction != c.VerifyFraction:
		return fmt.Errorf("coordinator.Config.VerifyFraction: %v is above 1", c.VerifyFraction)
	case !(c.VerifyKernelRel > 0 && c.VerifyKernelRel < 0.1):
		return fmt.Errorf("coordinator.Config.VerifyKernelRel: %v not in (0, 0.1)", c.VerifyKernelRel)
	case c.MaxAttempts < 1:
		return fmt.Errorf("coordinator.Config.MaxAttempts: %d is below 1", c.MaxAttempts)
	case c.CommitBatch < 1 || c.CommitBatch > 1<<16:
		return fmt.Errorf("coordinator.Config.CommitBatch: %d not in [1, 65536]", c.CommitBatch)
	case c.CommitDelay < 0 || c.CommitDelay > time.Second:
		return fmt.Errorf("coordinator.Config.CommitDelay: %v not in [0, 1s]", c.CommitDelay)
	case c.Train.Steps < 1:
		return fmt.Errorf("coordinator.Config.Train.Steps: %d is below 1", c.Train.Steps)
	case c.Train.BatchSeqs < 1:
		return fmt.Errorf("coordinator.Config.Train.BatchSeqs: %d is below 1", c.Train.BatchSeqs)
	case !(c.Train.GateBias >= -20 && c.Train.GateBias <= 20):
		return fmt.Errorf("coordinator.Config.Train.GateBias: %v not in [-20, 20]", c.Train.GateBias)
	}
	if err := c.Train.Optim.Validate(); err != nil {
		return fmt.Errorf("coordinator.Config.Train.Optim: %w", err)
	}
	if err := checkLayers("Layers", c.Layers); err != nil {
		return err
	}
	if len(c.Mix) > 4 {
		return fmt.Errorf("coordinator.Config.Mix: %d bases, at most 4", len(c.Mix))
	}
	for i, m := range c.Mix {
		field := fmt.Sprintf("Mix[%d]", i)
		if m.Base == nil {
			return fmt.Errorf("coordinator.Config.%s.Base: required", field)
		}
		if _, err := tensor.ParseCodec(m.Codec); err != nil {
			return fmt.Errorf("coordinator.Config.%s.Codec: %w", field, err)
		}
		if err := checkLayers(field+".Layers", m.Layers); err != nil {
			return err
		}
		for j := range i {
			if c.Mix[j].Base != nil && c.Mix[j].Base.WeightsHash == m.Base.WeightsHash {
				return fmt.Errorf("coordinator.Config.%s: base %s is Mix[%d] already (list its layers once)", field, short(m.Base.WeightsHash), j)
			}
		}
	}
	return nil
}

// checkLayers checks a list of base layers: the final one first, at most
// 8, shortcuts non-negative and not repeated.
func checkLayers(field string, layers []int) error {
	switch {
	case len(layers) > 8:
		return fmt.Errorf("coordinator.Config.%s: %d layers, at most 8", field, len(layers))
	case layers[0] != model.FinalLayer:
		return fmt.Errorf("coordinator.Config.%s: the first layer must be the final one (%d), got %d", field, model.FinalLayer, layers[0])
	}
	for i, l := range layers[1:] {
		if l < 0 {
			return fmt.Errorf("coordinator.Config.%s: shortcut layer %d is negative", field, l)
		}
		if slices.Contains(layers[:i+1], l) {
			return fmt.Errorf("coordinator.Config.%s: layer %d is listed twice", field, l)
		}
	}
	return nil
}

func isHex(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
