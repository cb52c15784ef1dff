package coordinator

import (
	"carryon/dataset"
	"context"
	"fmt"
)

// Forwarder runs a base model's forward pass: for each requested layer, the
// hidden states (T, Dim) of one sequence, numbered as in model.Base.Forward.
// *model.Base satisfies it.
type Forwarder interface {
	Forward(ids []int32, layers []int) ([][]float32, error)
}

// BatchForwarder is a Forwarder that also runs several sequences in one
// pass (model.Base.ForwardBatch); CollectLocal then runs a chunk at a time.
type BatchForwarder interface {
	Forwarder
	ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error)
}

// LocalProgress reports CollectLocal's progress.
type LocalProgress struct {
	Done, Computed, Total int // chunks in the cache, computed by this call, in the data set
	Tokens                int64
}

// CollectLocal fills the embedding cache for ds by running base in this
// process instead of leasing chunks to nodes: training without a swarm.
// Each sequence goes through the same path a node takes (forward, then the
// job's bridge codec Encode), and the cache Decodes it as it would a node's
// result, so the trainer sees identical inputs either way. Chunks already
// cached are skipped: a second call on the same data runs no forward.
// base must compute the coordinator's base (the cache is keyed by its
// weights hash); nil means the coordinator's own. Mixed bases
// (Config.Mix) run their own forward pass. progress may be nil.
func (c *Coordinator) CollectLocal(ctx context.Context, ds *dataset.Set, base Forwarder, progress func(LocalProgress)) error {
	if err := c.checkFits(ds); err != nil {
		return fmt.Errorf("coordinator.CollectLocal: %w", err)
	}
	seen := map[string]bool{}
	var p LocalProgress
	for _, ch := range ds.All() {
		if !seen[ch.ID] {
			seen[ch.ID] = true
			p.Total++
		}
	}
	done := map[string]bool{}
	for _, ch := range ds.All() {
		if done[ch.ID] {
			continue
		}
		done[ch.ID] = true
		computed := false
		for _, job := range c.allJobs() {
			if c.state.hasChunks(c.cacheKeys(job, ch)) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("coordinator.CollectLocal: %w", err)
			}
			fw := Forwarder(job.model)
			if job.model == c.base && base != nil {
				fw = base
			}
			entries, tokens, err := computeChunk(job, fw, ch)
			if err != nil {
				return fmt.Errorf("coordinator.CollectLocal: %w", err)
			}
			p.Tokens += tokens
			if err := c.put(job, ch, entries, "", true); err != nil {
				return fmt.Errorf("coordinator.CollectLocal: %w", err)
			}
			computed = true
		}
		p.Done++
		if !computed {
			continue
		}
		p.Computed++
		if progress != nil {
			progress(p)
		}
	}
	c.log.Info("embeddings computed locally", "chunks", p.Total, "computed", p.Computed, "tokens", p.Tokens,
		"codec", c.codec.String())
	return nil
}

// computeChunk runs base (job's base) over ch's sequences and encodes
// every layer of the job with its codec, as a node does: entries are
// indexed [layer][seq].
func computeChunk(job embedJob, base Forwarder, ch *dataset.Chunk) (entries [][]Entry, tokens int64, err error) {
	dim := job.Dim
	var buf []byte
	entries = make([][]Entry, len(job.Layers))
	var batch [][][]float32
	if bf, ok := base.(BatchForwarder); ok && len(ch.Seqs) > 1 {
		seqs := ch.TokenSeqs()
		var err error
		if batch, err = bf.ForwardBatch(seqs, job.Layers); err != nil {
			return nil, 0, fmt.Errorf("chunk %s: %w", short(ch.ID), err)
		}
		if len(batch) != len(seqs) {
			return nil, 0, fmt.Errorf("chunk %s: %d results for %d sequences", short(ch.ID), len(batch), len(seqs))
		}
	}
	for j, ex := range ch.Seqs {
		var hs [][]float32
		if batch != nil {
			hs = batch[j]
		} else if h, err := base.Forward(ex.Tokens, job.Layers); err != nil {
			return nil, 0, fmt.Errorf("chunk %s sequence %d: %w", short(ch.ID), j, err)
		} else {
			hs = h
		}
		if len(hs) != len(job.Layers) {
			return nil, 0, fmt.Errorf("chunk %s sequence %d: %d layers back, asked for %d", short(ch.ID), j, len(hs), len(job.Layers))
		}
		rows := len(ex.Tokens)
		for i, h := range hs {
			if len(h) != rows*dim {
				return nil, 0, fmt.Errorf("chunk %s sequence %d layer %d: %d values, want %d×%d", short(ch.ID), j, job.Layers[i], len(h), rows, dim)
			}
			buf = job.Codec.Encode(buf[:0], h, rows, dim)
			entries[i] = append(entries[i], Entry{Rows: rows, Dim: dim, Data: append([]byte(nil), buf...)})
		}
		tokens += int64(rows)
	}
	return entries, tokens, nil
}
