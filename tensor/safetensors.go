package tensor

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"unsafe"
)

// Safetensors format (huggingface/safetensors): u64 little-endian header
// length N, N bytes of JSON header, then the tensor data. The header maps
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (relative to the data section) and may hold "__metadata__": {str: str}.

// MaxSafetensorsHeader caps the JSON header before it is read (the
// reference implementation uses 100 MB).
const MaxSafetensorsHeader = 100 << 20

// DType is an element type of a stored tensor.
type DType string

// Supported element types.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I32  DType = "I32"
	U8   DType = "U8"
)

// Size returns the width of one element in bytes, or 0 for an unknown type.
func (d DType) Size() int {
	switch d {
	case F32, I32:
		return 4
	case F16, BF16:
		return 2
	case U8:
		return 1
	}
	return 0
}

// View is one tensor of a safetensors file: its bytes are a window of the
// file's (possibly memory-mapped) data, never copied.
type View struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Numel returns the number of elements.
func (v View) Numel() int { return Numel(v.Shape) }

// Numel returns the number of elements of a tensor of the given shape (in
// any order of dimensions): their product, 1 for a scalar.
func Numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// Float32 returns the tensor as float32s: a zero-copy view for aligned F32
// data on a little-endian machine, a widened copy for F16 and BF16.
func (v View) Float32() ([]float32, error) {
	n := v.Numel()
	switch v.DType {
	case F32:
		if n > 0 && uintptr(unsafe.Pointer(&v.Data[0]))%4 == 0 && nativeLittleEndian {
			return unsafe.Slice((*float32)(unsafe.Pointer(&v.Data[0])), n), nil
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(v.Data[4*i:]))
		}
		return out, nil
	case F16, BF16:
		conv := BF16ToF32
		if v.DType == F16 {
			conv = F16ToF32
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = conv(binary.LittleEndian.Uint16(v.Data[2*i:]))
		}
		return out, nil
	}
	return nil, fmt.Errorf("tensor %q: dtype %s is not a float type", v.Name, v.DType)
}

var nativeLittleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// Safetensors is a parsed file.
type Safetensors struct {
	Meta    map[string]string
	tensors map[string]View
	names   []string // in file order of offsets
	closer  closeOnce
}

type stHeaderEntry struct {
	DType       DType    `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// ParseSafetensors parses data, which must stay alive and unmodified while
// the views are used. Every size is checked before it is trusted.
func ParseSafetensors(data []byte) (*Safetensors, error) {
	if len(data) < 8 {
		return nil, errors.New("safetensors: file shorter than its 8-byte header length")
	}
	hlen := binary.LittleEndian.Uint64(data)
	if hlen > MaxSafetensorsHeader || hlen > uint64(len(data)-8) {
		return nil, fmt.Errorf("safetensors: header length %d exceeds the file (%d bytes) or the %d-byte cap", hlen, len(data), MaxSafetensorsHeader)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data[8:8+hlen], &raw); err != nil {
		return nil, fmt.Errorf("safetensors: header: %w", err)
	}
	body := data[8+hlen:]
	st := &Safetensors{tensors: make(map[string]View, len(raw))}
	// Entries are checked in file order (by data offset, then name), so
	// that a file cut short names its first cut tensor, the same one every
	// time, not whichever one the map happens to yield first.
	type entry struct {
		name string
		e    stHeaderEntry
	}
	entries := make([]entry, 0, len(raw))
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &st.Meta); err != nil {
				return nil, fmt.Errorf("safetensors: __metadata__: %w", err)
			}
			continue
		}
		var e stHeaderEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		entries = append(entries, entry{name, e})
	}
	slices.SortFunc(entries, func(a, b entry) int {
		if c := cmp.Compare(int(a.e.DataOffsets[0]), int(b.e.DataOffsets[0])); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	for _, en := range entries {
		v, err := en.e.view(en.name, body)
		if err != nil {
			return nil, err
		}
		st.tensors[en.name] = v
		st.names = append(st.names, en.name)
	}
	slices.SortFunc(st.names, func(a, b string) int {
		return cmp.Compare(offsetOf(st.tensors[a].Data, body), offsetOf(st.tensors[b].Data, body))
	})
	return st, nil
}

func (e stHeaderEntry) view(name string, body []byte) (View, error) {
	size := int64(e.DType.Size())
	if size == 0 {
		return View{}, fmt.Errorf("safetensors: tensor %q: unsupported dtype %q", name, e.DType)
	}
	n := int64(1)
	for _, s := range e.Shape {
		if s < 0 || (s > 0 && n > math.MaxInt64/int64(s)/size) {
			return View{}, fmt.Errorf("safetensors: tensor %q: bad shape %v", name, e.Shape)
		}
		n *= int64(s)
	}
	b, end := e.DataOffsets[0], e.DataOffsets[1]
	if b < 0 || end < b || end > int64(len(body)) {
		if b >= 0 && end >= b && end > int64(len(body)) {
			return View{}, fmt.Errorf("safetensors: tensor %q is truncated: its data [%d, %d) runs past the end of the %d-byte data section", name, b, end, len(body))
		}
		return View{}, fmt.Errorf("safetensors: tensor %q: offsets [%d, %d) outside the %d-byte data section", name, b, end, len(body))
	}
	if end-b != n*size {
		return View{}, fmt.Errorf("safetensors: tensor %q: shape %v of %s needs %d bytes, offsets give %d", name, e.Shape, e.DType, n*size, end-b)
	}
	return View{Name: name, DType: e.DType, Shape: e.Shape, Data: body[b:end:end]}, nil
}

func offsetOf(sub, body []byte) int {
	if len(sub) == 0 || len(body) == 0 {
		return 0
	}
	return int(uintptr(unsafe.Pointer(&sub[0])) - uintptr(unsafe.Pointer(&body[0])))
}

// ParseSafetensorsOf is ParseSafetensors for this project's own file kinds
// (adaptors, checkpoints), which name their kind in the "format" and
// "version" metadata: it also checks those, and the error says what the
// file holds and what this build reads.
func ParseSafetensorsOf(data []byte, format, version string) (*Safetensors, error) {
	st, err := ParseSafetensors(data)
	if err != nil {
		return nil, err
	}
	if st.Meta["format"] != format {
		return nil, fmt.Errorf("format %q, want %q", st.Meta["format"], format)
	}
	if st.Meta["version"] != version {
		return nil, fmt.Errorf("version %q, this build reads version %s", st.Meta["version"], version)
	}
	return st, nil
}

// OpenSafetensors memory-maps path (read-only) and parses it. Close unmaps.
func OpenSafetensors(path string) (*Safetensors, error) {
	return openMapped("safetensors", path, ParseSafetensors)
}

// Close releases the mapping; views must not be used afterwards.
func (s *Safetensors) Close() error { return s.closer.close() }

func (s *Safetensors) keep(c closeOnce) { s.closer = c }

// Names lists the tensors in the order of their data.
func (s *Safetensors) Names() []string { return slices.Clone(s.names) }

// Views returns every tensor in the order of their data.
func (s *Safetensors) Views() []View {
	views := make([]View, len(s.names))
	for i, n := range s.names {
		views[i] = s.tensors[n]
	}
	return views
}

// Get returns the named tensor.
func (s *Safetensors) Get(name string) (View, bool) {
	v, ok := s.tensors[name]
	return v, ok
}

// Float32 returns the named tensor as float32, checking its shape.
// A nil shape accepts any.
func (s *Safetensors) Float32(name string, shape ...int) ([]float32, error) {
	v, ok := s.tensors[name]
	if !ok {
		return nil, fmt.Errorf("safetensors: tensor %q is missing", name)
	}
	if shape != nil && !slices.Equal(v.Shape, shape) {
		return nil, fmt.Errorf("safetensors: tensor %q has shape %v, want %v", name, v.Shape, shape)
	}
	return v.Float32()
}

// F32View makes a View of float32 data for writing.
func F32View(name string, data []float32, shape ...int) View {
	b := make([]byte, 4*len(data))
	for i, f := range data {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return View{Name: name, DType: F32, Shape: shape, Data: b}
}

// BF16View makes a View of float32 data rounded to bfloat16 (nearest even)
// for writing: half the bytes of F32View.
func BF16View(name string, data []float32, shape ...int) View {
	b := make([]byte, 2*len(data))
	for i, f := range data {
		binary.LittleEndian.PutUint16(b[2*i:], F32ToBF16(f))
	}
	return View{Name: name, DType: BF16, Shape: shape, Data: b}
}

// MarshalSafetensors returns what WriteSafetensors writes.
func MarshalSafetensors(views []View, meta map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, views, meta); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteSafetensors writes tensors (sorted by name, so equal inputs give
// equal bytes) and metadata. The header is space-padded to 8-byte alignment.
func WriteSafetensors(w io.Writer, views []View, meta map[string]string) error {
	views = slices.Clone(views)
	slices.SortFunc(views, func(a, b View) int { return cmp.Compare(a.Name, b.Name) })
	var hdr bytes.Buffer
	hdr.WriteByte('{')
	if len(meta) > 0 {
		m, err := json.Marshal(meta) // encoding/json sorts map keys
		if err != nil {
			return fmt.Errorf("safetensors: metadata: %w", err)
		}
		hdr.WriteString(`"__metadata__":`)
		hdr.Write(m)
	}
	var off int64
	for i, v := range views {
		if v.Numel()*v.DType.Size() != len(v.Data) {
			return fmt.Errorf("safetensors: tensor %q: shape %v of %s does not match %d bytes", v.Name, v.Shape, v.DType, len(v.Data))
		}
		if i > 0 || len(meta) > 0 {
			hdr.WriteByte(',')
		}
		name, _ := json.Marshal(v.Name)
		shape := v.Shape
		if shape == nil {
			shape = []int{}
		}
		e, _ := json.Marshal(stHeaderEntry{DType: v.DType, Shape: shape, DataOffsets: [2]int64{off, off + int64(len(v.Data))}})
		hdr.Write(name)
		hdr.WriteByte(':')
		hdr.Write(e)
		off += int64(len(v.Data))
	}
	hdr.WriteByte('}')
	for (8+hdr.Len())%8 != 0 {
		hdr.WriteByte(' ')
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(hdr.Len()))
	if _, err := w.Write(n[:]); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	if _, err := w.Write(hdr.Bytes()); err != nil {
		return fmt.Errorf("safetensors: write: %w", err)
	}
	for _, v := range views {
		if _, err := w.Write(v.Data); err != nil {
			return fmt.Errorf("safetensors: write: %w", err)
		}
	}
	return nil
}

// readAll is used by mapFile fallbacks.
func readAll(path string) ([]byte, func() error, error) {
	b, err := os.ReadFile(path)
	return b, func() error { return nil }, err
}
