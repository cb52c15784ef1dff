package node

import (
	"fmt"

	"golang.org/x/sync/semaphore"

	"carryon/protocol"
)

// Memory limit (Config.MaxMemory). The node estimates what it needs from
// each base's shape; the estimate is deliberately coarse and errs high:
//
//	weights  4·NumParams bytes (float32 packed weights; stored-format
//	         weights that stay mapped need less)
//	one job  4·tokens·(8·Dim + 3·FFN + layers·Dim) bytes: the activations
//	         of the batched forward pass and the requested hidden states
//
// New refuses a base whose weights alone do not fit; jobs then share what
// is left (a weighted semaphore), so a burst of queued chunks waits instead
// of allocating, and a chunk that could never fit is handed back.

// SizedBase is a Base that can say how much memory it needs. Bases that
// are not SizedBase count as needing nothing.
type SizedBase interface {
	Base
	// WeightBytes is the memory the loaded weights take.
	WeightBytes() int64
	// TokenBytes is the working memory per token of a forward pass that
	// returns the given number of layers.
	TokenBytes(layers int) int64
}

// jobBytes estimates one request's working memory.
func jobBytes(b Base, req *protocol.EmbedRequest) int64 {
	sb, ok := b.(SizedBase)
	if !ok {
		return 0
	}
	return int64(req.Tokens()) * sb.TokenBytes(len(req.Layers))
}

// initMemory sets up the memory budget, or fails when a base does not fit.
func (n *Node) initMemory(bases []Base) error {
	if n.cfg.MaxMemory == 0 {
		return nil
	}
	var weights int64
	for _, b := range bases {
		if sb, ok := b.(SizedBase); ok {
			weights += sb.WeightBytes()
		}
	}
	if weights >= n.cfg.MaxMemory {
		return fmt.Errorf("node.New: the base needs about %d MiB for its weights, more than the memory limit of %d MiB",
			weights>>20, n.cfg.MaxMemory>>20)
	}
	n.ctl.memBudget = n.cfg.MaxMemory - weights
	n.ctl.mem = semaphore.NewWeighted(n.ctl.memBudget)
	return nil
}

func (s served) WeightBytes() int64 { return 4 * s.cfg.NumParams() }

func (s served) TokenBytes(layers int) int64 {
	c := s.cfg
	return 4 * int64(8*c.Dim+3*c.FFN+layers*c.Dim)
}
