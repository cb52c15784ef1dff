package node

import (
	"carryon/devmodel"
	"carryon/model"
	"carryon/protocol"
)

// forwarder is a loaded base's forward pass: *model.Base on the CPU, or
// *devmodel.Base on a tensor.Backend (a GPU).
type forwarder interface {
	Forward(ids []int32, layers []int) ([][]float32, error)
	ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error)
}

// served adapts a loaded base to BatchBase under a name.
type served struct {
	forwarder
	info protocol.BaseInfo
	cfg  model.Config // sizes for the memory limit (limits.go)
}

func (s served) Info() protocol.BaseInfo { return s.info }

func serve(f forwarder, name, weightsHash string, c model.Config) BatchBase {
	return served{forwarder: f, info: protocol.BaseInfo{Name: name, WeightsHash: weightsHash, Arch: c.Arch,
		Dim: c.Dim, Layers: c.Layers, Vocab: c.Vocab}, cfg: c}
}

// Serve wraps a loaded model so a Node can serve it under name. It is
// advertised by its EmbedHash (its weights and numerics), so that it only
// gets jobs whose base computes what it computes.
func Serve(b *model.Base, name string) BatchBase { return serve(b, name, b.EmbedHash(), b.Config) }

// ServeDevice wraps a base loaded on a backend (devmodel.Load) so a Node
// can serve it under name, advertised by its EmbedHash as Serve does.
func ServeDevice(b *devmodel.Base, name string) BatchBase {
	return serve(b, name, b.EmbedHash(), b.Config)
}
