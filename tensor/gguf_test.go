package tensor

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func f32Bytes(x []float32) []byte {
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// sampleGGUF is a small file with every metadata type and three tensors.
func sampleGGUF(t testing.TB) ([]byte, []GGUFKV, []GGUFTensor) {
	r := rand.New(rand.NewPCG(1, 2))
	w := make([]float32, 64*3)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	q := make([]byte, len(w)/32*34)
	QuantizeQ8_0(q, w)
	kv := []GGUFKV{
		{"general.architecture", "qwen2"},
		{"u8", uint8(7)}, {"i8", int8(-7)}, {"u16", uint16(600)}, {"i16", int16(-600)},
		{"qwen2.block_count", uint32(3)}, {"i32", int32(-5)}, {"f32", float32(1.5)}, {"yes", true},
		{"u64", uint64(1) << 40}, {"i64", int64(-1) << 40}, {"qwen2.rope.freq_base", float64(1e6)},
		{"tokenizer.ggml.tokens", []string{"a", "b", ""}},
		{"scores", []float32{0.5, -1}}, {"types", []int32{1, 3}}, {"flags", []bool{true, false}},
		{"nested", []any{[]uint8{1, 2}, []string{"x"}}},
	}
	ts := []GGUFTensor{
		{Name: "w.f32", Type: GGMLF32, Dims: []int{64, 3}, Data: f32Bytes(w)},
		{Name: "w.q8", Type: GGMLQ8_0, Dims: []int{64, 3}, Data: q},
		{Name: "norm", Type: GGMLF32, Dims: []int{5}, Data: f32Bytes(w[:5])},
	}
	var buf bytes.Buffer
	if err := WriteGGUF(&buf, kv, ts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), kv, ts
}

func TestGGUFRoundTrip(t *testing.T) {
	data, kv, ts := sampleGGUF(t)
	g, err := ParseGGUF(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.KV, kv) {
		t.Errorf("metadata:\n got %#v\nwant %#v", g.KV, kv)
	}
	if len(g.Tensors) != len(ts) {
		t.Fatalf("%d tensors, want %d", len(g.Tensors), len(ts))
	}
	for i, want := range ts {
		got := g.Tensors[i]
		if got.Name != want.Name || got.Type != want.Type || !reflect.DeepEqual(got.Dims, want.Dims) || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("tensor %d: got %s %s %v (%d bytes), want %s %s %v", i, got.Name, got.Type, got.Dims, len(got.Data), want.Name, want.Type, want.Dims)
		}
		if got.Offset%32 != 0 {
			t.Errorf("tensor %s at unaligned offset %d", got.Name, got.Offset)
		}
	}
	if n, ok := g.Uint("qwen2.block_count"); !ok || n != 3 {
		t.Errorf("Uint(block_count) = %d, %v", n, ok)
	}
	if _, ok := g.Uint("i32"); ok {
		t.Errorf("Uint accepted a negative int32")
	}
	if f, ok := g.Float("qwen2.rope.freq_base"); !ok || f != 1e6 {
		t.Errorf("Float(freq_base) = %g, %v", f, ok)
	}
	if s, ok := g.String("general.architecture"); !ok || s != "qwen2" {
		t.Errorf("String(arch) = %q, %v", s, ok)
	}
	wt, _ := g.Tensor("w.f32")
	if !reflect.DeepEqual(wt.Shape(), []int{3, 64}) {
		t.Errorf("Shape = %v, want [3 64]", wt.Shape())
	}
	f, err := wt.Float32()
	if err != nil {
		t.Fatal(err)
	}
	qt, _ := g.Tensor("w.q8")
	fq, err := qt.Float32()
	if err != nil {
		t.Fatal(err)
	}
	for i := range f {
		if d := math.Abs(float64(f[i] - fq[i])); d > 0.03 { // |x| < 4: step ≤ 4/127
			t.Fatalf("Q8_0 element %d: %g vs f32 %g", i, fq[i], f[i])
		}
	}
}

func TestGGUFOpen(t *testing.T) {
	data, _, _ := sampleGGUF(t)
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Tensor("norm"); !ok {
		t.Error("tensor norm missing")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
}

// patch returns a copy of data with b written at off.
func patch(data []byte, off int, b ...byte) []byte {
	out := bytes.Clone(data)
	copy(out[off:], b)
	return out
}

func TestGGUFRejects(t *testing.T) {
	data, _, _ := sampleGGUF(t)
	g, _ := ParseGGUF(data)
	last := g.Tensors[2] // "norm", the last in the data section
	// Locate the tensor-info records to corrupt them.
	infoOf := func(name string) int {
		i := bytes.Index(data, append(binary.LittleEndian.AppendUint64(nil, uint64(len(name))), name...))
		if i < 0 {
			t.Fatalf("no info for %s", name)
		}
		return i + 8 + len(name)
	}
	q8 := infoOf("w.q8") // n_dims u32 | ne u64×2 | type u32 | offset u64
	dataStart := len(data) - int(last.Offset) - 32
	cases := []struct {
		name, want string
		data       []byte
	}{
		{"empty", "bad magic", nil},
		{"magic", "bad magic", patch(data, 0, 'G', 'G', 'U', 'X')},
		{"version", "version 9", patch(data, 4, 9, 0, 0, 0)},
		{"tensor count", "tensor count", patch(data, 8, 0xff, 0xff, 0xff, 0xff)},
		{"kv count", "metadata count", patch(data, 16, 0xff, 0xff, 0xff)},
		{"truncated header", "truncated", data[:dataStart-40]},
		{"truncated data", `tensor "norm"`, data[:len(data)-20]},
		{"truncated q8", `tensor "w.q8"`, data[:dataStart+int(g.Tensors[1].Offset)+10]},
		{"dims", `"w.q8"`, patch(data, q8, 7)},
		{"zero dim", `"w.q8"`, patch(data, q8+4, 0, 0)},
		{"block", "whole number of", patch(data, q8+4, 63)},
		{"type", "unknown ggml type", patch(data, q8+20, 99)},
		{"overlap", "overlaps", patch(data, q8+24, 0, 0)},
		{"misaligned", "not a multiple", patch(data, q8+24, byte(g.Tensors[1].Offset+4))},
		{"value type", "unknown metadata value type", patch(data, 24+8+len("general.architecture"), 77)},
	}
	for _, c := range cases {
		_, err := ParseGGUF(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestWriteGGUFRejects(t *testing.T) {
	bad := []GGUFTensor{{Name: "x", Type: GGMLQ8_0, Dims: []int{32}, Data: make([]byte, 33)}}
	if err := WriteGGUF(&bytes.Buffer{}, nil, bad); err == nil || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("short Q8_0 data: err = %v", err)
	}
	if err := WriteGGUF(&bytes.Buffer{}, []GGUFKV{{"k", struct{}{}}}, nil); err == nil {
		t.Error("struct metadata value accepted")
	}
}

// FuzzParseGGUF: arbitrary bytes must not panic or allocate beyond the
// caps; what parses must write back and re-parse to the same file.
func FuzzParseGGUF(f *testing.F) {
	data, _, _ := sampleGGUF(f)
	f.Add(data)
	f.Add(data[:100])
	var empty bytes.Buffer
	WriteGGUF(&empty, nil, nil)
	f.Add(empty.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGGUF(data)
		if err != nil {
			return
		}
		var buf, buf2 bytes.Buffer
		if err := WriteGGUF(&buf, g.KV, g.Tensors); err != nil {
			t.Fatalf("write back: %v", err)
		}
		g2, err := ParseGGUF(buf.Bytes())
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if err := WriteGGUF(&buf2, g2.KV, g2.Tensors); err != nil {
			t.Fatalf("write again: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), buf2.Bytes()) || len(g2.Tensors) != len(g.Tensors) {
			t.Fatalf("round trip changed the file")
		}
		for i := range g.Tensors {
			if !bytes.Equal(g.Tensors[i].Data, g2.Tensors[i].Data) {
				t.Fatalf("tensor %d data changed", i)
			}
		}
	})
}
