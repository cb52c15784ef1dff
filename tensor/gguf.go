package tensor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
)

// GGUF format (ggml-org/ggml docs/gguf.md, version 2 and 3; all little-endian):
//
//	u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//	n_kv × (string key | u32 value type | value)
//	n_tensors × (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
//	padding to general.alignment (default 32), then the tensor data; each
//	tensor's offset is relative to the data section and a multiple of the
//	alignment.
//
// A string is u64 length + bytes; an array is u32 element type + u64 count +
// elements. ne[0] is the innermost (contiguous) dimension: a PyTorch
// (out, in) matrix is stored with ne = [in, out].

// Caps checked before anything is allocated from a GGUF header.
const (
	MaxGGUFTensors  = 1 << 16
	MaxGGUFKV       = 1 << 16
	MaxGGUFArrayLen = 1 << 24 // elements of one metadata array (vocabularies are ~2^18)
	MaxGGUFKeyLen   = 1 << 16
	MaxGGUFDims     = 4
	maxGGUFDepth    = 4 // nesting of metadata arrays
)

// GGMLType is the element type of a GGUF tensor (ggml's enum ggml_type; its
// values are part of the file format).
type GGMLType uint32

// The ggml types with a known block layout.
const (
	GGMLF32  GGMLType = 0
	GGMLF16  GGMLType = 1
	GGMLQ4_0 GGMLType = 2
	GGMLQ4_1 GGMLType = 3
	GGMLQ5_0 GGMLType = 6
	GGMLQ5_1 GGMLType = 7
	GGMLQ8_0 GGMLType = 8
	GGMLQ8_1 GGMLType = 9
	GGMLQ2_K GGMLType = 10
	GGMLQ3_K GGMLType = 11
	GGMLQ4_K GGMLType = 12
	GGMLQ5_K GGMLType = 13
	GGMLQ6_K GGMLType = 14
	GGMLQ8_K GGMLType = 15
	GGMLI8   GGMLType = 24
	GGMLI16  GGMLType = 25
	GGMLI32  GGMLType = 26
	GGMLI64  GGMLType = 27
	GGMLF64  GGMLType = 28
	GGMLBF16 GGMLType = 30
)

type ggmlTypeInfo struct {
	name         string
	elems, bytes int // a block of elems values takes bytes bytes
}

// ggmlTypes lists block sizes from ggml's type traits (gguf-py
// GGML_QUANT_SIZES); the IQ formats are left out.
var ggmlTypes = map[GGMLType]ggmlTypeInfo{
	GGMLF32: {"F32", 1, 4}, GGMLF16: {"F16", 1, 2}, GGMLBF16: {"BF16", 1, 2}, GGMLF64: {"F64", 1, 8},
	GGMLI8: {"I8", 1, 1}, GGMLI16: {"I16", 1, 2}, GGMLI32: {"I32", 1, 4}, GGMLI64: {"I64", 1, 8},
	GGMLQ4_0: {"Q4_0", 32, 18}, GGMLQ4_1: {"Q4_1", 32, 20}, GGMLQ5_0: {"Q5_0", 32, 22}, GGMLQ5_1: {"Q5_1", 32, 24},
	GGMLQ8_0: {"Q8_0", 32, 34}, GGMLQ8_1: {"Q8_1", 32, 40},
	GGMLQ2_K: {"Q2_K", 256, 84}, GGMLQ3_K: {"Q3_K", 256, 110}, GGMLQ4_K: {"Q4_K", 256, 144},
	GGMLQ5_K: {"Q5_K", 256, 176}, GGMLQ6_K: {"Q6_K", 256, 210}, GGMLQ8_K: {"Q8_K", 256, 292},
}

func (t GGMLType) String() string {
	if i, ok := ggmlTypes[t]; ok {
		return i.name
	}
	return fmt.Sprintf("ggml_type(%d)", uint32(t))
}

// BlockSize returns how many elements a block holds and how many bytes it
// takes; (0, 0) for a type whose layout is not known here.
func (t GGMLType) BlockSize() (elems, bytes int) {
	i := ggmlTypes[t]
	return i.elems, i.bytes
}

// RowBytes returns the bytes of n consecutive elements, or an error when n
// is not a whole number of blocks or the type is unknown.
func (t GGMLType) RowBytes(n int) (int, error) {
	be, bb := t.BlockSize()
	if be == 0 {
		return 0, fmt.Errorf("unknown ggml type %s", t)
	}
	if n%be != 0 {
		return 0, fmt.Errorf("%d elements of %s are not a whole number of %d-element blocks", n, t, be)
	}
	return n / be * bb, nil
}

// GGUFValueType is the type tag of a metadata value.
type GGUFValueType uint32

// Metadata value types (append-only in the format).
const (
	GGUFUint8 GGUFValueType = iota
	GGUFInt8
	GGUFUint16
	GGUFInt16
	GGUFUint32
	GGUFInt32
	GGUFFloat32
	GGUFBool
	GGUFString
	GGUFArray
	GGUFUint64
	GGUFInt64
	GGUFFloat64
)

var ggufScalarSize = [...]int{GGUFUint8: 1, GGUFInt8: 1, GGUFUint16: 2, GGUFInt16: 2, GGUFUint32: 4, GGUFInt32: 4,
	GGUFFloat32: 4, GGUFBool: 1, GGUFString: 8, GGUFArray: 12, GGUFUint64: 8, GGUFInt64: 8, GGUFFloat64: 8}

// GGUFKV is one metadata entry. Value holds the Go type of the file's type
// tag: uint8, int8, uint16, int16, uint32, int32, float32, bool, string,
// uint64, int64 or float64; an array is a slice of one of those ([]string,
// []int32, ...), and an array of arrays is []any.
type GGUFKV struct {
	Key   string
	Value any
}

// GGUFTensor is one tensor of a GGUF file. Data is a window of the file's
// (possibly memory-mapped) bytes, never copied.
type GGUFTensor struct {
	Name   string
	Type   GGMLType
	Dims   []int // ggml ne order: Dims[0] is the contiguous dimension
	Offset int64 // of Data within the data section
	Data   []byte
}

// Numel returns the number of elements.
func (t GGUFTensor) Numel() int { return Numel(t.Dims) }

// Shape returns the row-major (PyTorch) shape: Dims reversed.
func (t GGUFTensor) Shape() []int {
	s := slices.Clone(t.Dims)
	slices.Reverse(s)
	return s
}

// Float32 returns the tensor as float32 values in row-major order: a
// zero-copy view of aligned F32 data on a little-endian machine, else a
// decoded copy (F16, BF16, Q8_0, Q4_K, Q6_K).
func (t GGUFTensor) Float32() ([]float32, error) {
	n := t.Numel()
	if t.Type == GGMLF32 {
		return View{Name: t.Name, DType: F32, Shape: []int{n}, Data: t.Data}.Float32()
	}
	out := make([]float32, n)
	if err := DequantizeGGML(out, t.Data, t.Type); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return out, nil
}

// GGUF is a parsed GGUF file.
type GGUF struct {
	Version   uint32
	Alignment int
	KV        []GGUFKV     // in file order
	Tensors   []GGUFTensor // in file order
	meta      map[string]int
	byName    map[string]int
	closer    closeOnce
}

// Get returns the value of a metadata key.
func (g *GGUF) Get(key string) (any, bool) {
	i, ok := g.meta[key]
	if !ok {
		return nil, false
	}
	return g.KV[i].Value, true
}

// Uint returns an integer metadata value of any integer type that is >= 0.
func (g *GGUF) Uint(key string) (uint64, bool) {
	v, _ := g.Get(key)
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8, int16, int32, int64:
		i := signedInt(x)
		return uint64(i), i >= 0
	}
	return 0, false
}

func signedInt(v any) int64 {
	switch x := v.(type) {
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case int64:
		return x
	}
	return 0
}

// Float returns a float32 or float64 metadata value.
func (g *GGUF) Float(key string) (float64, bool) {
	v, _ := g.Get(key)
	switch x := v.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// String returns a string metadata value.
func (g *GGUF) String(key string) (string, bool) {
	v, _ := g.Get(key)
	s, ok := v.(string)
	return s, ok
}

// Tensor returns the named tensor.
func (g *GGUF) Tensor(name string) (GGUFTensor, bool) {
	i, ok := g.byName[name]
	if !ok {
		return GGUFTensor{}, false
	}
	return g.Tensors[i], true
}

// Close releases the file mapping of OpenGGUF; the tensors' Data must not
// be used afterwards.
func (g *GGUF) Close() error { return g.closer.close() }

func (g *GGUF) keep(c closeOnce) { g.closer = c }

// OpenGGUF maps path read-only and parses it.
func OpenGGUF(path string) (*GGUF, error) {
	return openMapped("GGUF", path, ParseGGUF)
}

// ggufReader decodes the header with bounds checks; the first error sticks.
type ggufReader struct {
	b   []byte
	pos int
	err error
}

func (r *ggufReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

func (r *ggufReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.pos {
		r.fail("truncated at byte %d: want %d more bytes, have %d", r.pos, n, len(r.b)-r.pos)
		return nil
	}
	p := r.b[r.pos : r.pos+n]
	r.pos += n
	return p
}

func (r *ggufReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *ggufReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (r *ggufReader) left() int { return len(r.b) - r.pos }

// count reads a u64 count of items that each take at least minSize bytes
// and checks it against the cap and the bytes left.
func (r *ggufReader) count(what string, most, minSize int) int {
	n := r.u64()
	if r.err != nil {
		return 0
	}
	if n > uint64(most) || n > uint64(r.left()/minSize) {
		r.fail("%s count %d exceeds the cap %d or the %d bytes left", what, n, most, r.left())
		return 0
	}
	return int(n)
}

func (r *ggufReader) str(most int) string {
	n := r.u64()
	if r.err == nil && n > uint64(most) {
		r.fail("string of %d bytes at byte %d exceeds %d", n, r.pos-8, most)
	}
	if r.err != nil {
		return ""
	}
	return string(r.take(int(n)))
}

func (r *ggufReader) scalar(t GGUFValueType) any {
	switch t {
	case GGUFString:
		return r.str(math.MaxInt)
	case GGUFBool:
		p := r.take(1)
		if p == nil {
			return false
		}
		if p[0] > 1 {
			r.fail("bool value %d at byte %d", p[0], r.pos-1)
		}
		return p[0] == 1
	}
	p := r.take(ggufScalarSize[t])
	if p == nil {
		return nil
	}
	switch t {
	case GGUFUint8:
		return p[0]
	case GGUFInt8:
		return int8(p[0])
	case GGUFUint16:
		return binary.LittleEndian.Uint16(p)
	case GGUFInt16:
		return int16(binary.LittleEndian.Uint16(p))
	case GGUFUint32:
		return binary.LittleEndian.Uint32(p)
	case GGUFInt32:
		return int32(binary.LittleEndian.Uint32(p))
	case GGUFFloat32:
		return math.Float32frombits(binary.LittleEndian.Uint32(p))
	case GGUFUint64:
		return binary.LittleEndian.Uint64(p)
	case GGUFInt64:
		return int64(binary.LittleEndian.Uint64(p))
	case GGUFFloat64:
		return math.Float64frombits(binary.LittleEndian.Uint64(p))
	}
	return nil
}

func (r *ggufReader) value(t GGUFValueType, depth int) any {
	if t > GGUFFloat64 {
		r.fail("unknown metadata value type %d at byte %d", t, r.pos-4)
		return nil
	}
	if t != GGUFArray {
		return r.scalar(t)
	}
	if depth >= maxGGUFDepth {
		r.fail("metadata arrays nested deeper than %d", maxGGUFDepth)
		return nil
	}
	et := GGUFValueType(r.u32())
	if r.err == nil && et > GGUFFloat64 {
		r.fail("unknown array element type %d at byte %d", et, r.pos-4)
	}
	if r.err != nil {
		return nil
	}
	n := r.count("array element", MaxGGUFArrayLen, ggufScalarSize[et])
	switch et {
	case GGUFArray:
		out := make([]any, n)
		for i := range out {
			out[i] = r.value(GGUFArray, depth+1)
		}
		return out
	case GGUFString:
		out := make([]string, n)
		for i := range out {
			out[i] = r.str(math.MaxInt)
		}
		return out
	}
	return readArray(r, et, n)
}

// readArray reads n scalars of type et into a typed slice.
func readArray(r *ggufReader, et GGUFValueType, n int) any {
	switch et {
	case GGUFUint8:
		return ggufFill[uint8](r, et, n)
	case GGUFInt8:
		return ggufFill[int8](r, et, n)
	case GGUFUint16:
		return ggufFill[uint16](r, et, n)
	case GGUFInt16:
		return ggufFill[int16](r, et, n)
	case GGUFUint32:
		return ggufFill[uint32](r, et, n)
	case GGUFInt32:
		return ggufFill[int32](r, et, n)
	case GGUFFloat32:
		return ggufFill[float32](r, et, n)
	case GGUFBool:
		return ggufFill[bool](r, et, n)
	case GGUFUint64:
		return ggufFill[uint64](r, et, n)
	case GGUFInt64:
		return ggufFill[int64](r, et, n)
	}
	return ggufFill[float64](r, et, n)
}

func ggufFill[T any](r *ggufReader, et GGUFValueType, n int) []T {
	out := make([]T, n)
	for i := range out {
		v, _ := r.scalar(et).(T)
		out[i] = v
	}
	return out
}

// ParseGGUF parses data, which must stay alive and unmodified while the
// tensors are used. Every count and size is checked before it is trusted;
// errors name the key or tensor at fault.
func ParseGGUF(data []byte) (*GGUF, error) {
	g, err := parseGGUF(data)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	return g, nil
}

func parseGGUF(data []byte) (*GGUF, error) {
	r := &ggufReader{b: data}
	if magic := r.take(4); r.err != nil || string(magic) != "GGUF" {
		return nil, errors.New("not a GGUF file (bad magic)")
	}
	g := &GGUF{Version: r.u32(), Alignment: 32, meta: map[string]int{}, byName: map[string]int{}}
	if r.err == nil && g.Version != 2 && g.Version != 3 {
		return nil, fmt.Errorf("version %d: only versions 2 and 3 are supported", g.Version)
	}
	const minKV, minTensorInfo = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8
	nt := r.u64()
	nkv := r.count("metadata", MaxGGUFKV, minKV)
	if r.err == nil && (nt > MaxGGUFTensors || nt > uint64(r.left()/minTensorInfo)) {
		return nil, fmt.Errorf("tensor count %d exceeds the cap %d or the file", nt, MaxGGUFTensors)
	}
	g.KV = make([]GGUFKV, 0, nkv)
	for i := 0; i < nkv && r.err == nil; i++ {
		key := r.str(MaxGGUFKeyLen)
		v := r.value(GGUFValueType(r.u32()), 0)
		if r.err != nil {
			return nil, fmt.Errorf("metadata %d (%q): %w", i, key, r.err)
		}
		if _, dup := g.meta[key]; dup {
			return nil, fmt.Errorf("metadata key %q appears twice", key)
		}
		g.meta[key] = len(g.KV)
		g.KV = append(g.KV, GGUFKV{key, v})
	}
	if r.err != nil {
		return nil, r.err
	}
	if err := g.readAlignment(); err != nil {
		return nil, err
	}
	g.Tensors = make([]GGUFTensor, 0, nt)
	for i := 0; i < int(nt); i++ {
		t, err := readTensorInfo(r)
		if err != nil {
			return nil, fmt.Errorf("tensor info %d (%q): %w", i, t.Name, err)
		}
		if _, dup := g.byName[t.Name]; dup {
			return nil, fmt.Errorf("tensor %q appears twice", t.Name)
		}
		g.byName[t.Name] = len(g.Tensors)
		g.Tensors = append(g.Tensors, t)
	}
	return g, g.placeData(data, r.pos)
}

func (g *GGUF) readAlignment() error {
	v, ok := g.Get("general.alignment")
	if !ok {
		return nil
	}
	a, isU32 := v.(uint32)
	if !isU32 || a == 0 || a&(a-1) != 0 || a > 1<<16 {
		return fmt.Errorf("general.alignment %v (%T): want a uint32 power of two up to 65536", v, v)
	}
	g.Alignment = int(a)
	return nil
}

func readTensorInfo(r *ggufReader) (GGUFTensor, error) {
	t := GGUFTensor{Name: r.str(MaxGGUFKeyLen)}
	nd := r.u32()
	if r.err == nil && (nd == 0 || nd > MaxGGUFDims) {
		return t, fmt.Errorf("%d dimensions: want 1..%d", nd, MaxGGUFDims)
	}
	numel := uint64(1)
	for j := 0; j < int(nd) && r.err == nil; j++ {
		d := r.u64()
		if d == 0 || d > 1<<40 || numel*d > 1<<40 {
			return t, fmt.Errorf("dimension %d = %d: want 1..2^40 elements in all", j, d)
		}
		numel *= d
		t.Dims = append(t.Dims, int(d))
	}
	t.Type = GGMLType(r.u32())
	off := r.u64()
	if r.err != nil {
		return t, r.err
	}
	if off > 1<<50 {
		return t, fmt.Errorf("offset %d is out of range", off)
	}
	t.Offset = int64(off)
	if _, err := t.Type.RowBytes(t.Dims[0]); err != nil {
		return t, err
	}
	return t, nil
}

// placeData checks each tensor's window against the data section, which
// starts at the first aligned offset after the header (hdrEnd), and
// slices it.
func (g *GGUF) placeData(data []byte, hdrEnd int) error {
	a := g.Alignment
	start := (hdrEnd + a - 1) / a * a
	var body []byte
	if start <= len(data) {
		body = data[start:]
	}
	order := make([]int, len(g.Tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool { return g.Tensors[order[i]].Offset < g.Tensors[order[j]].Offset })
	var prevEnd int64
	prev := ""
	for _, i := range order {
		t := &g.Tensors[i]
		row, _ := t.Type.RowBytes(t.Dims[0])
		size := int64(row) * int64(t.Numel()/t.Dims[0])
		if t.Offset%int64(a) != 0 {
			return fmt.Errorf("tensor %q: offset %d is not a multiple of the alignment %d", t.Name, t.Offset, a)
		}
		if t.Offset < prevEnd {
			return fmt.Errorf("tensor %q: data at offset %d overlaps tensor %q (ends at %d)", t.Name, t.Offset, prev, prevEnd)
		}
		if end := t.Offset + size; end > int64(len(body)) {
			return fmt.Errorf("tensor %q (%s %v): data [%d, %d) runs past the end of the data section (%d bytes): truncated file?",
				t.Name, t.Type, t.Dims, t.Offset, end, len(body))
		}
		t.Data = body[t.Offset : t.Offset+size : t.Offset+size]
		prevEnd, prev = t.Offset+size, t.Name
	}
	return nil
}

// WriteGGUF writes a version 3 GGUF file: the metadata in the given order,
// then the tensors, each Data holding the bytes of its Type and Dims
// (Offset is ignored and recomputed). The alignment is general.alignment
// when kv sets it (as a uint32), else 32.
func WriteGGUF(w io.Writer, kv []GGUFKV, tensors []GGUFTensor) error {
	align := 32
	var hdr bytes.Buffer
	le := binary.LittleEndian
	hdr.WriteString("GGUF")
	hdr.Write(le.AppendUint32(nil, 3))
	hdr.Write(le.AppendUint64(nil, uint64(len(tensors))))
	hdr.Write(le.AppendUint64(nil, uint64(len(kv))))
	for _, e := range kv {
		if e.Key == "general.alignment" {
			a, ok := e.Value.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("gguf: general.alignment %v: want a uint32 power of two", e.Value)
			}
			align = int(a)
		}
		writeGGUFString(&hdr, e.Key)
		if err := writeGGUFValue(&hdr, e.Value, true); err != nil {
			return fmt.Errorf("gguf: metadata %q: %w", e.Key, err)
		}
	}
	var off int64
	for _, t := range tensors {
		if len(t.Dims) == 0 || len(t.Dims) > MaxGGUFDims {
			return fmt.Errorf("gguf: tensor %q: %d dimensions", t.Name, len(t.Dims))
		}
		row, err := t.Type.RowBytes(t.Dims[0])
		if err != nil {
			return fmt.Errorf("gguf: tensor %q: %w", t.Name, err)
		}
		if want := row * (t.Numel() / t.Dims[0]); want != len(t.Data) {
			return fmt.Errorf("gguf: tensor %q: %s %v takes %d bytes, Data has %d", t.Name, t.Type, t.Dims, want, len(t.Data))
		}
		writeGGUFString(&hdr, t.Name)
		hdr.Write(le.AppendUint32(nil, uint32(len(t.Dims))))
		for _, d := range t.Dims {
			hdr.Write(le.AppendUint64(nil, uint64(d)))
		}
		hdr.Write(le.AppendUint32(nil, uint32(t.Type)))
		hdr.Write(le.AppendUint64(nil, uint64(off)))
		off += int64((len(t.Data) + align - 1) / align * align)
	}
	hdr.Write(make([]byte, (align-hdr.Len()%align)%align))
	if _, err := w.Write(hdr.Bytes()); err != nil {
		return fmt.Errorf("gguf: write: %w", err)
	}
	pad := make([]byte, align)
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return fmt.Errorf("gguf: write: %w", err)
		}
		if _, err := w.Write(pad[:(align-len(t.Data)%align)%align]); err != nil {
			return fmt.Errorf("gguf: write: %w", err)
		}
	}
	return nil
}

func writeGGUFString(b *bytes.Buffer, s string) {
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(s))))
	b.WriteString(s)
}

// writeGGUFValue writes v's type tag (when tagged) and its encoding.
func writeGGUFValue(b *bytes.Buffer, v any, tagged bool) error {
	le := binary.LittleEndian
	tag := func(t GGUFValueType) {
		if tagged {
			b.Write(le.AppendUint32(nil, uint32(t)))
		}
	}
	switch x := v.(type) {
	case uint8:
		tag(GGUFUint8)
		b.WriteByte(x)
	case int8:
		tag(GGUFInt8)
		b.WriteByte(byte(x))
	case uint16:
		tag(GGUFUint16)
		b.Write(le.AppendUint16(nil, x))
	case int16:
		tag(GGUFInt16)
		b.Write(le.AppendUint16(nil, uint16(x)))
	case uint32:
		tag(GGUFUint32)
		b.Write(le.AppendUint32(nil, x))
	case int32:
		tag(GGUFInt32)
		b.Write(le.AppendUint32(nil, uint32(x)))
	case float32:
		tag(GGUFFloat32)
		b.Write(le.AppendUint32(nil, math.Float32bits(x)))
	case bool:
		tag(GGUFBool)
		if x {
			b.WriteByte(1)
		} else {
			b.WriteByte(0)
		}
	case string:
		tag(GGUFString)
		writeGGUFString(b, x)
	case uint64:
		tag(GGUFUint64)
		b.Write(le.AppendUint64(nil, x))
	case int64:
		tag(GGUFInt64)
		b.Write(le.AppendUint64(nil, uint64(x)))
	case float64:
		tag(GGUFFloat64)
		b.Write(le.AppendUint64(nil, math.Float64bits(x)))
	default:
		return writeGGUFArray(b, v, tagged)
	}
	return nil
}

func writeGGUFArray(b *bytes.Buffer, v any, tagged bool) error {
	elems, et, ok := arrayElems(v)
	if !ok {
		return fmt.Errorf("unsupported value type %T", v)
	}
	if tagged {
		b.Write(binary.LittleEndian.AppendUint32(nil, uint32(GGUFArray)))
	}
	b.Write(binary.LittleEndian.AppendUint32(nil, uint32(et)))
	b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(elems))))
	for _, e := range elems {
		if err := writeGGUFValue(b, e, false); err != nil {
			return err
		}
	}
	return nil
}

// arrayElems spreads a supported slice into its elements and element type.
func arrayElems(v any) ([]any, GGUFValueType, bool) {
	switch x := v.(type) {
	case []uint8:
		return spread(x), GGUFUint8, true
	case []int8:
		return spread(x), GGUFInt8, true
	case []uint16:
		return spread(x), GGUFUint16, true
	case []int16:
		return spread(x), GGUFInt16, true
	case []uint32:
		return spread(x), GGUFUint32, true
	case []int32:
		return spread(x), GGUFInt32, true
	case []float32:
		return spread(x), GGUFFloat32, true
	case []bool:
		return spread(x), GGUFBool, true
	case []string:
		return spread(x), GGUFString, true
	case []uint64:
		return spread(x), GGUFUint64, true
	case []int64:
		return spread(x), GGUFInt64, true
	case []float64:
		return spread(x), GGUFFloat64, true
	case []any:
		for _, e := range x {
			if _, _, ok := arrayElems(e); !ok {
				return nil, 0, false // only arrays of arrays are written as []any
			}
		}
		return x, GGUFArray, true
	}
	return nil, 0, false
}

func spread[T any](x []T) []any {
	out := make([]any, len(x))
	for i, e := range x {
		out[i] = e
	}
	return out
}

// NewRoPEFreqFactors builds RoPE tables whose frequencies are divided by
// per-frequency factors, as llama.cpp applies a GGUF rope_freqs tensor
// (Llama 3.1-style scaling baked into divisors): angle_i(p) =
// p·theta^(−2i/headDim) / factors[i].
//
//	factors: (headDim/2)
func NewRoPEFreqFactors(headDim, maxPos int, theta float64, factors []float32, interleaved bool) *RoPE {
	half := headDim / 2
	if len(factors) != half {
		panic(fmt.Sprintf("tensor.NewRoPEFreqFactors: %d factors for head size %d", len(factors), headDim))
	}
	r := &RoPE{HeadDim: headDim, MaxPos: maxPos, Interleaved: interleaved,
		cos: make([]float32, maxPos*half), sin: make([]float32, maxPos*half)}
	for i := 0; i < half; i++ {
		f := 1 / math.Pow(theta, float64(2*i)/float64(headDim)) / float64(factors[i])
		for p := 0; p < maxPos; p++ {
			s, c := math.Sincos(float64(p) * f)
			r.cos[p*half+i] = float32(c)
			r.sin[p*half+i] = float32(s)
		}
	}
	return r
}
