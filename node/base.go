package node

import (
	"carryon/devmodel"
	"carryon/model"
	"carryon/protocol"
)

// modelBase adapts a loaded *model.Base to Base.
type modelBase struct {
	b    *model.Base
	name string
}

// Serve wraps a loaded model so a Node can serve it under name.
func Serve(b *model.Base, name string) BatchBase { return modelBase{b: b, name: name} }

func (m modelBase) Info() protocol.BaseInfo {
	c := m.b.Config
	return protocol.BaseInfo{Name: m.name, WeightsHash: m.b.WeightsHash, Arch: c.Arch,
		Dim: c.Dim, Layers: c.Layers, Vocab: c.Vocab}
}

func (m modelBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	return m.b.Forward(ids, layers)
}

func (m modelBase) ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error) {
	return m.b.ForwardBatch(seqs, layers)
}

// devBase adapts a base running on a tensor.Backend (a GPU) to Base.
type devBase struct {
	b    *devmodel.Base
	name string
}

// ServeDevice wraps a base loaded on a backend (devmodel.Load) so a Node
// can serve it under name.
func ServeDevice(b *devmodel.Base, name string) BatchBase { return devBase{b: b, name: name} }

func (m devBase) Info() protocol.BaseInfo {
	c := m.b.Config
	return protocol.BaseInfo{Name: m.name, WeightsHash: m.b.WeightsHash, Arch: c.Arch,
		Dim: c.Dim, Layers: c.Layers, Vocab: c.Vocab}
}

func (m devBase) Forward(ids []int32, layers []int) ([][]float32, error) {
	return m.b.Forward(ids, layers)
}

func (m devBase) ForwardBatch(seqs [][]int32, layers []int) ([][][]float32, error) {
	return m.b.ForwardBatch(seqs, layers)
}
