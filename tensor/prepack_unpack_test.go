package tensor

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestPackedBUnpack checks that Unpack gives back exactly what PackB packed,
// in both layouts, for sizes off the kernel's blocking.
func TestPackedBUnpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, name := range gemmTestNames() {
		ks := gemmKernelsNamed(name)
		if ks == nil {
			continue
		}
		for _, sz := range [][2]int{{1, 1}, {17, 3}, {33, 300}, {100, 257}, {5, 1030}} {
			n, k := sz[0], sz[1]
			for _, transB := range []bool{false, true} {
				rows, cols := k, n
				if transB {
					rows, cols = n, k
				}
				ld := cols + 3
				src := gemmRandSlice(rng, (rows-1)*ld+cols)
				pb := packBWith(ks, transB, n, k, src, ld)
				dst := make([]float32, len(src))
				pb.Unpack(transB, dst, ld)
				for r := 0; r < rows; r++ {
					if !slices.Equal(dst[r*ld:r*ld+cols], src[r*ld:r*ld+cols]) {
						t.Fatalf("%s n=%d k=%d transB=%v: row %d differs after Unpack", ks.name, n, k, transB, r)
					}
				}
			}
		}
	}
}

// TestReleasePages: pages of a mapped file can be released and read back
// unchanged; heap memory is never touched.
func TestReleasePages(t *testing.T) {
	data := make([]float32, 50000)
	for i := range data {
		data[i] = float32(i) * 0.5
	}
	path := filepath.Join(t.TempDir(), "w.safetensors")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSafetensors(f, []View{F32View("w", data, len(data))}, nil); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := OpenSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := st.Float32("w")
	if err != nil {
		t.Fatal(err)
	}
	if !ReleasePages(Float32Bytes(w[1000:40000])) {
		t.Errorf("ReleasePages of a mapped tensor released nothing")
	}
	if !slices.Equal(w, data) {
		t.Errorf("mapped data changed after ReleasePages")
	}
	heap := slices.Clone(data)
	if ReleasePages(Float32Bytes(heap)) {
		t.Errorf("ReleasePages released heap memory")
	}
	if !slices.Equal(heap, data) {
		t.Errorf("heap data changed")
	}
	st.Close()
	if ReleasePages(Float32Bytes(heap)) || ReleasePages(nil) {
		t.Errorf("ReleasePages after unmapping released something")
	}
}

// TestPackBInto: packing into caller memory (here off the Go heap) gives
// the same products as PackB, and too small a destination panics.
func TestPackBInto(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m, n, k := 13, 37, 300
	a, w := gemmRandSlice(rng, m*k), gemmRandSlice(rng, n*k)
	mem, free := AllocFloats(PackedSize(n, k) + 5)
	for _, v := range mem {
		if v != 0 {
			t.Fatal("AllocFloats memory is not zeroed")
		}
	}
	into := PackBInto(mem, true, n, k, w, k)
	want, got := make([]float32, m*n), make([]float32, m*n)
	GemmPacked(m, 1, a, k, PackB(true, n, k, w, k), 0, want, n)
	GemmPacked(m, 1, a, k, into, 0, got, n)
	if !slices.Equal(got, want) {
		t.Errorf("GemmPacked with PackBInto differs from PackB")
	}
	if err := free(); err != nil {
		t.Errorf("release: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("PackBInto into a short slice did not panic")
		}
	}()
	PackBInto(make([]float32, PackedSize(n, k)-1), true, n, k, w, k)
}
