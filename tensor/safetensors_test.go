package tensor

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestSafetensorsRoundTrip(t *testing.T) {
	a := []float32{1, -2, 3.5, 4, 5, 6}
	views := []View{F32View("b.weight", a, 2, 3), F32View("a.bias", []float32{7}, 1)}
	bf := View{Name: "c", DType: BF16, Shape: []int{2}, Data: []byte{0x80, 0x3f, 0x00, 0xc0}}
	views = append(views, bf)
	var buf bytes.Buffer
	if err := WriteSafetensors(&buf, views, map[string]string{"format": "pt", "k": "v"}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := OpenSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.Float32("b.weight", 2, 3)
	if err != nil || !slices.Equal(got, a) {
		t.Fatalf("b.weight = %v, %v", got, err)
	}
	if _, err := st.Float32("b.weight", 3, 2); err == nil {
		t.Fatal("shape mismatch not reported")
	}
	c, err := st.Float32("c")
	if err != nil || !slices.Equal(c, []float32{1, -2}) {
		t.Fatalf("bf16 c = %v, %v", c, err)
	}
	if st.Meta["k"] != "v" {
		t.Fatalf("meta = %v", st.Meta)
	}
	if !slices.Equal(st.Names(), []string{"a.bias", "b.weight", "c"}) {
		t.Fatalf("names = %v", st.Names())
	}
	// Determinism: same input, same bytes.
	var buf2 bytes.Buffer
	slices.Reverse(views)
	WriteSafetensors(&buf2, views, map[string]string{"k": "v", "format": "pt"})
	if !bytes.Equal(buf.Bytes(), buf2.Bytes()) {
		t.Fatal("output depends on input order")
	}
}

func TestSafetensorsRejects(t *testing.T) {
	var good bytes.Buffer
	WriteSafetensors(&good, []View{F32View("w", []float32{1, 2, 3, 4}, 2, 2)}, nil)
	hdr := func(h string) []byte {
		b := make([]byte, 8, 8+len(h))
		binary.LittleEndian.PutUint64(b, uint64(len(h)))
		return append(b, h...)
	}
	cases := map[string][]byte{
		"short":       {1, 2, 3},
		"huge header": binary.LittleEndian.AppendUint64(nil, 1<<40),
		"truncated":   good.Bytes()[:good.Len()-1],
		"bad json":    hdr("{"),
		"bad dtype":   hdr(`{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}`),
		"size":        append(hdr(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`), 0, 0, 0, 0),
		"negative":    hdr(`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`),
		"overflow":    hdr(`{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}`),
	}
	for name, data := range cases {
		if _, err := ParseSafetensors(data); err == nil {
			t.Errorf("%s: accepted", name)
		} else if name == "truncated" && !strings.Contains(err.Error(), `"w"`) {
			t.Errorf("truncated: error %q does not name the tensor", err)
		}
	}
}

func FuzzParseSafetensors(f *testing.F) {
	var good bytes.Buffer
	WriteSafetensors(&good, []View{F32View("w", []float32{1, 2, 3, 4}, 2, 2)}, map[string]string{"a": "b"})
	f.Add(good.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseSafetensors(data)
		if err != nil {
			return
		}
		for _, n := range st.Names() {
			v, _ := st.Get(n)
			if v.Numel()*v.DType.Size() != len(v.Data) {
				t.Fatalf("view %q size mismatch", n)
			}
			v.Float32()
		}
	})
}
