package carryon

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"

	"carryon/tensor"
)

func coTestMeta() Meta {
	return Meta{
		BaseHash: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Parent:   "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
		Bridge:   "4",
		DataHash: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		Step:     1200,
		Metrics:  map[string]float64{"val_loss": 1.875, "train_loss": 1.5},
	}
}

func TestAdaptorRoundTrip(t *testing.T) {
	tc := coNewTestCase(t, 6, 11, 21, 0.3)
	c := tc.c
	meta := coTestMeta()
	b, err := c.Marshal(meta)
	if err != nil {
		t.Fatal(err)
	}
	d, gotMeta, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.Config, c.Config) {
		t.Fatalf("config %+v, want %+v", d.Config, c.Config)
	}
	if !slices.Equal(d.Params, c.Params) {
		t.Fatal("parameters changed in the round trip")
	}
	if !reflect.DeepEqual(gotMeta, meta) {
		t.Fatalf("meta %+v, want %+v", gotMeta, meta)
	}
	// The decoded carry-on computes what the original does, and does not
	// alias the file.
	yc := slices.Clone(c.Forward(c.NewWorkspace(6), tc.sources, 6, 1))
	for i := range b {
		b[i] = 0
	}
	if yd := d.Forward(d.NewWorkspace(6), tc.sources, 6, 1); !slices.Equal(yc, yd) {
		t.Fatal("decoded carry-on computes a different y")
	}
	// Empty provenance round-trips too.
	b, err = c.Marshal(Meta{})
	if err != nil {
		t.Fatal(err)
	}
	if _, m, err := Unmarshal(b); err != nil || !reflect.DeepEqual(m, Meta{}) {
		t.Fatalf("empty meta: %+v, %v", m, err)
	}
}

func TestAdaptorDeterministic(t *testing.T) {
	cfg := DefaultConfig(64, 100)
	cfg.Sources = append(cfg.Sources, Source{Name: "layer:3", Dim: 48})
	a, _ := New(cfg, 9)
	b, _ := New(cfg, 9)
	meta := coTestMeta()
	ba, err := a.Marshal(meta)
	if err != nil {
		t.Fatal(err)
	}
	bb, _ := b.Marshal(coTestMeta())
	if !bytes.Equal(ba, bb) {
		t.Fatal("equal carry-ons and metadata give different bytes")
	}
	ba2, _ := a.Marshal(meta)
	if !bytes.Equal(ba, ba2) {
		t.Fatal("marshalling twice gives different bytes")
	}
	meta.Step++
	if bs, _ := a.Marshal(meta); bytes.Equal(ba, bs) {
		t.Fatal("a different step gives the same bytes")
	}
	b.Params[len(b.Params)/2] += 1e-3
	if bb, _ := b.Marshal(coTestMeta()); bytes.Equal(ba, bb) {
		t.Fatal("different weights give the same bytes")
	}
	// Decoding and re-encoding is the identity on bytes.
	d, m, err := Unmarshal(ba)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := d.Marshal(m); !bytes.Equal(again, ba) {
		t.Fatal("decode + encode changed the bytes")
	}
}

// coRawAdaptor writes an adaptor file by hand from c's tensors, after edit
// has changed the views and metadata.
func coRawAdaptor(t *testing.T, c *Model, edit func(views []tensor.View, md map[string]string) []tensor.View) []byte {
	t.Helper()
	cfg, _ := json.Marshal(c.Config)
	md := map[string]string{
		"format": AdaptorFormat, "version": AdaptorVersion, "config": string(cfg),
		"alpha": "0.75", "bits": "4", "base_hash": "h", "parent": "", "step": "3", "data_hash": "d", "metrics": "{}",
	}
	var views []tensor.View
	for _, ten := range c.Tensors() {
		views = append(views, tensor.F32View(ten.Name, c.Params[ten.Offset:ten.Offset+ten.Numel()], ten.Shape...))
	}
	data, err := tensor.MarshalSafetensors(edit(views, md), md)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestAdaptorRejects(t *testing.T) {
	tc := coNewTestCase(t, 4, 11, 22, 0.3)
	c := tc.c
	same := func(views []tensor.View, md map[string]string) []tensor.View { return views }
	if _, _, err := Unmarshal(coRawAdaptor(t, c, same)); err != nil {
		t.Fatalf("hand-written adaptor rejected: %v", err)
	}
	find := func(views []tensor.View, name string) int {
		return slices.IndexFunc(views, func(v tensor.View) bool { return v.Name == name })
	}
	for _, tt := range []struct {
		name, want string
		edit       func(views []tensor.View, md map[string]string) []tensor.View
	}{
		{"format", `format "pt"`, func(v []tensor.View, md map[string]string) []tensor.View { md["format"] = "pt"; return v }},
		{"version", `version "2"`, func(v []tensor.View, md map[string]string) []tensor.View { md["version"] = "2"; return v }},
		{"no metadata", "format", func(v []tensor.View, md map[string]string) []tensor.View { clear(md); return v }},
		{"config json", "config", func(v []tensor.View, md map[string]string) []tensor.View { md["config"] = "{"; return v }},
		{"config bound", "Width", func(v []tensor.View, md map[string]string) []tensor.View {
			md["config"] = strings.Replace(md["config"], `"width":16`, `"width":0`, 1)
			return v
		}},
		{"alpha", "alpha", func(v []tensor.View, md map[string]string) []tensor.View { md["alpha"] = "2"; return v }},
		{"step", "Step = -1", func(v []tensor.View, md map[string]string) []tensor.View { md["step"] = "-1"; return v }},
		{"metrics", "metrics", func(v []tensor.View, md map[string]string) []tensor.View { md["metrics"] = "[1]"; return v }},
		{"missing", `"gate.bias" is missing`, func(v []tensor.View, md map[string]string) []tensor.View {
			return slices.Delete(v, find(v, "gate.bias"), find(v, "gate.bias")+1)
		}},
		{"extra", `unexpected tensor "lm_head.weight"`, func(v []tensor.View, md map[string]string) []tensor.View {
			return append(v, tensor.F32View("lm_head.weight", []float32{1}, 1))
		}},
		{"shape", `"blocks.1.attn.wq.weight" is F32 [8 32]`, func(v []tensor.View, md map[string]string) []tensor.View {
			v[find(v, "blocks.1.attn.wq.weight")].Shape = []int{8, 32}
			return v
		}},
		{"dtype", `"final_norm.weight" is BF16`, func(v []tensor.View, md map[string]string) []tensor.View {
			i := find(v, "final_norm.weight")
			v[i] = tensor.View{Name: v[i].Name, DType: tensor.BF16, Shape: []int{16}, Data: make([]byte, 32)}
			return v
		}},
		{"nan", `"delta.weight"[5] = NaN`, func(v []tensor.View, md map[string]string) []tensor.View {
			d := make([]float32, len(c.Delta))
			d[5] = float32(math.NaN())
			v[find(v, "delta.weight")] = tensor.F32View("delta.weight", d, 12, 16)
			return v
		}},
	} {
		_, _, err := Unmarshal(coRawAdaptor(t, c, tt.edit))
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "model.Unmarshal: ") {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
	good, err := c.Marshal(coTestMeta())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 7, 8, 100, len(good) / 2, len(good) - 1} {
		if _, _, err := Unmarshal(good[:n]); err == nil {
			t.Errorf("truncated to %d of %d bytes: accepted", n, len(good))
		}
	}
	// Marshal refuses what Unmarshal would.
	bad := c.Clone()
	bad.Gate[3] = float32(math.Inf(1))
	if _, err := bad.Marshal(Meta{}); err == nil || !strings.Contains(err.Error(), "gate.weight") {
		t.Errorf("infinite weight: %v", err)
	}
	if _, err := c.Marshal(Meta{Metrics: map[string]float64{"x": math.NaN()}}); err == nil {
		t.Error("NaN metric accepted")
	}
}

// TestAdaptorOverlappingTensors checks that a file whose tensors of one
// shape all share the same bytes cannot make Unmarshal allocate more
// than the file holds.
func TestAdaptorOverlappingTensors(t *testing.T) {
	cfg := coTinyConfig(11)
	cfg.Layers = 256 // many same-shape tensors
	c, err := New(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	cj, _ := json.Marshal(c.Config)
	hdr := map[string]any{"__metadata__": map[string]string{
		"format": AdaptorFormat, "version": AdaptorVersion, "config": string(cj),
		"alpha": "0.75", "step": "0", "metrics": "{}",
	}}
	var body []byte
	window := map[string][2]int{} // shape → data offsets
	for _, ten := range c.Tensors() {
		key := fmt.Sprint(ten.Shape)
		w, ok := window[key]
		if !ok {
			w = [2]int{len(body), len(body) + 4*ten.Numel()}
			body = append(body, make([]byte, 4*ten.Numel())...)
			window[key] = w
		}
		hdr[ten.Name] = map[string]any{"dtype": "F32", "shape": ten.Shape, "data_offsets": w}
	}
	js, _ := json.Marshal(hdr)
	file := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	file = append(append(file, js...), body...)
	if _, err := tensor.ParseSafetensors(file); err != nil {
		t.Fatalf("the hostile file is not even valid safetensors: %v", err)
	}
	if _, _, err := Unmarshal(file); err == nil || !strings.Contains(err.Error(), "parameters, the file holds") {
		t.Fatalf("overlapping tensors: %v", err)
	}
}

// FuzzUnmarshalAdaptor: arbitrary bytes must not panic or allocate beyond
// the input's size; whatever decodes must re-encode to bytes that decode to
// the same carry-on and encode identically.
func FuzzUnmarshalAdaptor(f *testing.F) {
	// A small seed keeps the fuzzer's mutations cheap.
	cfg := Config{Sources: []Source{{Name: "final", Dim: 3}, {Name: "layer:0", Dim: 2}},
		Width: 4, Layers: 1, Heads: 2, FFN: 3, Vocab: 5, MaxSeq: 8, RopeTheta: 1e4, NormEps: 1e-6, Alpha: 1}
	c, err := New(cfg, 1)
	if err != nil {
		f.Fatal(err)
	}
	good, err := c.Marshal(coTestMeta())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte{})
	f.Add(bytes.Replace(good, []byte(`\"width\":4`), []byte(`\"width\":8`), 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, meta, err := Unmarshal(data)
		if err != nil {
			return
		}
		b1, err := d.Marshal(meta)
		if err != nil {
			t.Fatalf("decoded adaptor does not re-encode: %v", err)
		}
		d2, meta2, err := Unmarshal(b1)
		if err != nil {
			t.Fatalf("re-encoded adaptor does not decode: %v", err)
		}
		if !slices.Equal(d.Params, d2.Params) || !reflect.DeepEqual(d.Config, d2.Config) || !reflect.DeepEqual(meta, meta2) {
			t.Fatal("round trip changed the adaptor")
		}
		if b2, _ := d2.Marshal(meta2); !bytes.Equal(b1, b2) {
			t.Fatal("encoding is not canonical")
		}
	})
}
