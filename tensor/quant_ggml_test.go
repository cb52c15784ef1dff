package tensor

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"carryon/internal/testenv"
)

// ggufPy returns the gguf-py folder of the llama.cpp oracle's cache
// (shared/tools/llamacpp/setup.sh), or skips.
func ggufPy(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("CARRYON_ORACLE_DIR")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "carryon-oracle")
	}
	dir := filepath.Join(cache, "gguf-py")
	if _, err := os.Stat(filepath.Join(dir, "gguf", "quants.py")); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "gguf-py of the llama.cpp oracle is missing (run shared/tools/llamacpp/setup.sh): %v", err)
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import numpy").Run(); err != nil {
		testenv.Missing(t, "CARRYON_REQUIRE_ORACLE", "/usr/bin/python3 with numpy is missing: %v", err)
	}
	return dir
}

// pyQuants runs gguf-py's quants.dequantize (op "dequant") or quantize
// ("quant") on the bytes in, for ggml type qt, and returns its output bytes.
const pyQuants = `
import sys, types
sys.modules.setdefault("yaml", types.ModuleType("yaml"))
sys.path.insert(0, sys.argv[1])
import numpy as np
from gguf import quants, GGMLQuantizationType as Q
op, qt, src, dst = sys.argv[2], Q[sys.argv[3]], sys.argv[4], sys.argv[5]
raw = np.fromfile(src, dtype=np.uint8)
if op == "dequant":
    if qt == Q.BF16:
        out = quants.BF16.dequantize(raw.view(np.uint16).view(np.uint8).reshape(-1, 2)).reshape(-1)
    else:
        out = quants.dequantize(raw if qt != Q.F16 else raw.view(np.float16), qt)
    np.asarray(out, dtype="<f4").tofile(dst)
else:
    quants.quantize(raw.view("<f4").reshape(-1, 32 * 8), qt).tofile(dst)
`

func runPyQuants(t *testing.T, op, qt string, in []byte) []byte {
	t.Helper()
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(src, in, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", pyQuants, ggufPy(t), op, qt, src, dst)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gguf-py %s %s: %v\n%s", op, qt, err, out)
	}
	out, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// randomBlocks fills n blocks of type qt with random bytes, with the f16
// scales set to finite values of a realistic size (random bytes would
// often be NaN or Inf there).
func randomBlocks(r *rand.Rand, qt GGMLType, n int) []byte {
	_, bb := qt.BlockSize()
	b := make([]byte, n*bb)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	scale := func(off int) {
		binary.LittleEndian.PutUint16(b[off:], F32ToF16(float32(r.NormFloat64()*0.01)))
	}
	for k := 0; k < n; k++ {
		switch qt {
		case GGMLQ8_0:
			scale(k * bb)
		case GGMLQ4_K:
			scale(k * bb)
			scale(k*bb + 2)
		case GGMLQ6_K:
			scale(k*bb + 208)
		}
	}
	return b
}

// TestDequantizeGGMLMatchesGGUFPy checks our decoders bit for bit against
// gguf-py's numpy implementation (llama.cpp's reference in Python) on
// random blocks.
func TestDequantizeGGMLMatchesGGUFPy(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, qt := range []GGMLType{GGMLQ8_0, GGMLQ4_K, GGMLQ6_K, GGMLF16, GGMLBF16, GGMLF32} {
		be, _ := qt.BlockSize()
		n := 64 * 256 // values: 64 K-blocks
		var src []byte
		if qt == GGMLF32 {
			x := make([]float32, n)
			for i := range x {
				x[i] = float32(r.NormFloat64())
			}
			src = f32Bytes(x)
		} else {
			src = randomBlocks(r, qt, n/be)
		}
		if qt == GGMLF16 { // avoid NaN patterns, whose payloads numpy may not keep
			for i := 0; i < len(src); i += 2 {
				src[i+1] &= 0x7b
			}
		}
		got := make([]float32, n)
		if err := DequantizeGGML(got, src, qt); err != nil {
			t.Fatalf("%s: %v", qt, err)
		}
		want := runPyQuants(t, "dequant", qt.String(), src)
		if len(want) != 4*len(got) {
			t.Fatalf("%s: gguf-py gave %d bytes, want %d", qt, len(want), 4*len(got))
		}
		bad := 0
		for i, g := range got {
			w := binary.LittleEndian.Uint32(want[4*i:])
			if math.Float32bits(g) != w && !(g == 0 && math.Float32frombits(w) == 0) {
				if bad++; bad <= 3 {
					t.Errorf("%s element %d: got %g, gguf-py %g", qt, i, g, math.Float32frombits(w))
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d values differ from gguf-py", qt, bad, len(got))
		}
	}
}

// TestQuantizeQ8_0MatchesGGUFPy checks our Q8_0 encoder byte for byte
// against gguf-py's (which is bit-exact with ggml's reference).
func TestQuantizeQ8_0MatchesGGUFPy(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	x := make([]float32, 256*40)
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Exp(r.NormFloat64()))
	}
	copy(x[:32], make([]float32, 32)) // an all-zero block
	got := make([]byte, len(x)/32*34)
	QuantizeQ8_0(got, x)
	want := runPyQuants(t, "quant", "Q8_0", f32Bytes(x))
	if string(got) != string(want) {
		n := 0
		for i := range got {
			if i < len(want) && got[i] != want[i] {
				n++
			}
		}
		t.Errorf("Q8_0 bytes differ from gguf-py in %d of %d places (lengths %d, %d)", n, len(got), len(got), len(want))
	}
}

func TestDequantizeGGMLRejects(t *testing.T) {
	for _, c := range []struct {
		qt   GGMLType
		n    int
		src  int
		want string
	}{
		{GGMLQ8_0, 31, 34, "whole number"},
		{GGMLQ8_0, 32, 33, "take 34 bytes"},
		{GGMLQ4_0, 32, 18, "not supported"},
		{GGMLType(99), 1, 1, "unknown"},
	} {
		err := DequantizeGGML(make([]float32, c.n), make([]byte, c.src), c.qt)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s n=%d src=%d: err = %v, want %q", c.qt, c.n, c.src, err, c.want)
		}
	}
}

// TestQ4KLayout pins the Q4_K scale packing on a hand-made block: sub-block
// j has scale j+1 and min 2j (the 6-bit values of sub-blocks 4..7 split
// across bytes), d = 1, dmin = 0.5, and every nibble is 3.
func TestQ4KLayout(t *testing.T) {
	b := make([]byte, 144)
	binary.LittleEndian.PutUint16(b, F32ToF16(1))
	binary.LittleEndian.PutUint16(b[2:], F32ToF16(0.5))
	sc := b[4:16]
	for j := 0; j < 8; j++ {
		s, m := uint8(j+1)+48, uint8(2*j)+32 // set the high bits to exercise the split
		if j < 4 {
			sc[j], sc[j+4] = s, m
		} else {
			sc[j+4] = s&0xF | (m&0xF)<<4
			sc[j-4] |= (s >> 4) << 6
			sc[j] |= (m >> 4) << 6
		}
	}
	for i := 16; i < 144; i++ {
		b[i] = 0x33
	}
	y := make([]float32, 256)
	if err := DequantizeGGML(y, b, GGMLQ4_K); err != nil {
		t.Fatal(err)
	}
	for j := 0; j < 8; j++ {
		want := float32(j+1+48)*3 - 0.5*float32(2*j+32)
		if y[32*j] != want || y[32*j+31] != want {
			t.Errorf("sub-block %d: got %g, want %g", j, y[32*j], want)
		}
	}
}

// TestDecodeKBlocks checks the bulk Q4_K and Q6_K decoders (assembly where
// the CPU has it) bit for bit against the per-block reference decoders, on
// random blocks with realistic scales and with every kind of f16 scale
// (random bits: subnormal, huge, Inf, NaN), over block counts that cross
// the chunking of the bulk decoder.
func TestDecodeKBlocks(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	for _, qt := range []GGMLType{GGMLQ4_K, GGMLQ6_K} {
		_, bb := qt.BlockSize()
		for _, extreme := range []bool{false, true} {
			for _, nb := range []int{1, 3, 16, 17, 40} {
				src := randomBlocks(r, qt, nb)
				if extreme {
					for i := range src {
						src[i] = byte(r.Uint32())
					}
					for b := 0; b < nb; b++ { // a few fixed extremes, then random bits
						d := []uint16{0x7bff, 0x0001, 0x7c00, 0xfc00, 0x7e01, 0x8000, 0x7c01, 0x03ff}[b%8]
						switch qt {
						case GGMLQ4_K:
							binary.LittleEndian.PutUint16(src[b*bb+2*(b%2):], d)
						case GGMLQ6_K:
							if b%2 == 0 {
								binary.LittleEndian.PutUint16(src[b*bb+208:], d)
							}
						}
					}
				}
				got := make([]float32, 256*nb)
				want := make([]float32, 256*nb)
				for b := 0; b < nb; b++ {
					if qt == GGMLQ4_K {
						dequantQ4K(want[256*b:256*b+256], src[bb*b:bb*b+bb])
					} else {
						dequantQ6K(want[256*b:256*b+256], src[bb*b:bb*b+bb])
					}
				}
				if qt == GGMLQ4_K {
					decodeQ4KBlocks(got, src)
				} else {
					decodeQ6KBlocks(got, src)
				}
				for i := range got {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s extreme=%v nb=%d: y[%d] = %#08x, reference %#08x", qt, extreme, nb, i,
							math.Float32bits(got[i]), math.Float32bits(want[i]))
					}
				}
			}
		}
	}
}
