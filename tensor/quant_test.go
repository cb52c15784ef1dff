package tensor

import (
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"testing"
)

// allCodecs lists the settings the tests sweep: every bit width, per row and
// in groups (including groups that do not divide d and a group wider than
// d), symmetric and asymmetric, and bf16.
func allCodecs() []Codec {
	cs := []Codec{{Bits: 16}}
	for k := 1; k <= 8; k++ {
		for _, g := range []int{0, 1, 3, 8, 32, 64, 1000} {
			cs = append(cs, Codec{Bits: k, Group: g}, Codec{Bits: k, Group: g, Asymmetric: true})
		}
	}
	return cs
}

func TestCodecStringParse(t *testing.T) {
	for _, c := range allCodecs() {
		s := c.String()
		got, err := ParseCodec(s)
		if err != nil || got != c {
			t.Errorf("ParseCodec(%q) = %+v, %v; want %+v", s, got, err, c)
		}
	}
	for s, want := range map[string]Codec{"q4": {Bits: 4}, "q4g64a": {4, 64, true}, "bf16": {Bits: 16}, "q1a": {1, 0, true}, "q3g7": {3, 7, false}} {
		if got := want.String(); got != s {
			t.Errorf("%+v.String() = %q, want %q", want, got, s)
		}
	}
	for _, s := range []string{"", "q", "q0", "q9", "q16", "Q4", "q4g", "q4g0", "q4g064", "q4g-1", "q4aa", "q4ag64", "q4g64x",
		"bf16a", "f32", "q4g99999999999999999999", "q4g1048577", " q4", "q4 "} {
		if c, err := ParseCodec(s); err == nil || !errors.Is(err, ErrCodec) {
			t.Errorf("ParseCodec(%q) = %+v, %v; want an ErrCodec", s, c, err)
		}
	}
	for _, c := range []Codec{{}, {Bits: 9}, {Bits: -1}, {Bits: 16, Group: 64}, {Bits: 16, Asymmetric: true}, {Bits: 4, Group: -1}, {Bits: 4, Group: MaxCodecGroup + 1}} {
		if c.Validate() == nil {
			t.Errorf("%+v.Validate() = nil", c)
		}
		if _, err := ParseCodec(c.String()); err == nil {
			t.Errorf("ParseCodec(%q) of invalid %+v succeeded", c.String(), c)
		}
		if n := c.EncodedSize(2, 8); n != -1 {
			t.Errorf("%+v.EncodedSize = %d, want -1", c, n)
		}
	}
}

// TestCodecLayout pins the wire format byte for byte on small inputs
// (worked out by hand from the layout comment in quant.go).
func TestCodecLayout(t *testing.T) {
	for _, tc := range []struct {
		codec   string
		rows, d int
		x       []float32
		want    string
	}{
		// s = 1/7 (0x3e124925); codes 7+8, round(-3.5)+8 = 5, round(1.75)+8 = 10;
		// the zero row has s = 0 and codes 8.
		{"q4", 2, 3, []float32{1, -0.5, 0.25, 0, 0, 0}, "2549123e" + "00000000" + "5f0a" + "8808"},
		// s = 1/127; codes -127+128 = 1, round(63.5)+128 = 192.
		{"q8", 1, 2, []float32{-1, 0.5}, "0402013c" + "01c0"},
		// groups [1 3] and [-2]: s = 2/7, m = 1; s = 0, m = -2; codes 0, 7, 0 in 9 bits.
		{"q3g2a", 1, 3, []float32{1, 3, -2}, "2549923e" + "00000000" + "0000803f" + "000000c0" + "3800"},
		// sign code: s = mean|x| = 5.5; bits 0101010101 LSB-first.
		{"q1", 1, 10, []float32{1, -2, 3, -4, 5, -6, 7, -8, 9, -10}, "0000b040" + "aa02"},
		// two 6-bit codes per row in 12 bits: s = 3/31 = 0x3dc6318c; codes 31+32 = 63, -31+32 = 1 → 0x3f | 1<<6.
		{"q6", 2, 2, []float32{3, -3, 0, 0}, "8c31c63d" + "00000000" + "7f00" + "2008"},
		{"bf16", 1, 3, []float32{1, -2.5, math.Pi}, "803f20c04940"},
	} {
		c, err := ParseCodec(tc.codec)
		if err != nil {
			t.Fatal(err)
		}
		got := c.Encode(nil, tc.x, tc.rows, tc.d)
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("%s.Encode(%v) = %x, want %s", tc.codec, tc.x, got, tc.want)
		}
		if len(got) != c.EncodedSize(tc.rows, tc.d) {
			t.Errorf("%s: EncodedSize = %d, len = %d", tc.codec, c.EncodedSize(tc.rows, tc.d), len(got))
		}
	}
}

func TestCodecEncodedSize(t *testing.T) {
	for _, tc := range []struct {
		codec   string
		rows, d int
		want    int
	}{
		{"q8", 1, 896, 900}, {"q4", 1, 896, 452}, {"q2", 1, 896, 228}, {"q1", 1, 896, 116}, {"bf16", 1, 896, 1792},
		{"q4g64", 1, 896, 448 + 14*4}, {"q4g64a", 1, 896, 448 + 14*8}, {"q3", 3, 5, 3*4 + 3*2}, {"q3g2a", 3, 5, 3*3*8 + 3*2},
		{"q4g1000", 2, 896, 2*4 + 2*448}, {"q4", 0, 896, 0}, {"q4", 7, 0, 0}, {"bf16", 0, 0, 0},
		{"q4", -1, 8, -1}, {"q4", 1, -8, -1}, {"q8", math.MaxInt / 2, 4, -1}, {"bf16", math.MaxInt / 3, 2, -1},
		{"q1", 2, math.MaxInt / 8, -1}, {"q1g1", math.MaxInt / 16, 4, -1}, {"q1g1", math.MaxInt / 20, 4, math.MaxInt / 20 * 17},
	} {
		c, _ := ParseCodec(tc.codec)
		if got := c.EncodedSize(tc.rows, tc.d); got != tc.want {
			t.Errorf("%s.EncodedSize(%d, %d) = %d, want %d", tc.codec, tc.rows, tc.d, got, tc.want)
		}
	}
}

// hiddenLike fills x: (rows, d) with Gaussian values whose per-channel
// scale varies (log-normal) and with outlier channels at 50x, as in real
// LLM hidden states.
func hiddenLike(rng *rand.Rand, x []float32, d int, outliers int) {
	chScale := make([]float64, d)
	for j := range chScale {
		chScale[j] = math.Exp(0.5 * rng.NormFloat64())
	}
	for o := 0; o < outliers && o < d; o++ {
		chScale[rng.IntN(d)] = 50
	}
	for i := range x {
		x[i] = float32(rng.NormFloat64() * chScale[i%d])
	}
}

// fill draws test data of one of several kinds.
func fill(rng *rand.Rand, x []float32, d, kind int) {
	switch kind {
	case 0:
		hiddenLike(rng, x, d, 2)
	case 1: // uniform positive, offset: asymmetric territory
		for i := range x {
			x[i] = 100 + rng.Float32()
		}
	case 2: // constant
		v := float32(rng.NormFloat64())
		for i := range x {
			x[i] = v
		}
	case 3: // zeros with a few spikes
		clear(x)
		for i := 0; i < len(x)/7; i++ {
			x[rng.IntN(len(x))] = float32(rng.NormFloat64() * 1e3)
		}
	case 4: // wild magnitudes, subnormals included
		for i := range x {
			x[i] = float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(300)-150)))
		}
	case 5: // tiny values around the flush threshold
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 0x1p-100)
		}
	default: // huge values near the clamp
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 0x1p125)
		}
	}
}

// checkRoundTrip encodes x: (rows, d), checks the size and that Encode
// appends, decodes, and checks every value against ErrorBound.
func checkRoundTrip(t *testing.T, c Codec, x []float32, rows, d int) {
	t.Helper()
	prefix := []byte{0xde, 0xad}
	enc := c.Encode(prefix, x, rows, d)
	if string(enc[:2]) != "\xde\xad" {
		t.Fatalf("%v: Encode clobbered dst's prefix", c)
	}
	enc = enc[2:]
	if len(enc) != c.EncodedSize(rows, d) {
		t.Fatalf("%v (%d, %d): encoded %d bytes, EncodedSize %d", c, rows, d, len(enc), c.EncodedSize(rows, d))
	}
	y := make([]float32, rows*d)
	if err := c.Decode(y, enc, rows, d); err != nil {
		t.Fatalf("%v (%d, %d): Decode: %v", c, rows, d, err)
	}
	if rows*d == 0 {
		return
	}
	bound := c.ErrorBound(x[:rows*d], d)
	for i, v := range y {
		want := sanitize(x[i])
		if e := math.Abs(float64(v) - float64(want)); !(e <= float64(bound[i])) {
			t.Fatalf("%v (%d, %d): element %d (row %d): x = %g, decoded %g, error %g > bound %g",
				c, rows, d, i, i/d, x[i], v, e, bound[i])
		}
	}
}

func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range allCodecs() {
		for trial := 0; trial < 14; trial++ {
			rows, d := 1+rng.IntN(4), 1+rng.IntN(300)
			if trial == 0 {
				d = 896
			}
			x := make([]float32, rows*d)
			fill(rng, x, d, trial%7)
			checkRoundTrip(t, c, x, rows, d)
		}
	}
}

// TestCodecBoundIsTight checks that ErrorBound is not vacuous: on Gaussian
// data the worst error comes close to it (within a factor of 2) for the
// uniform quantizers, so a weakened encoder would fail the round trip.
func TestCodecBoundIsTight(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const rows, d = 8, 512
	x := make([]float32, rows*d)
	hiddenLike(rng, x, d, 0)
	y := make([]float32, rows*d)
	for _, c := range []Codec{{Bits: 2}, {Bits: 4}, {Bits: 8}, {Bits: 3, Group: 32, Asymmetric: true}, {Bits: 5, Group: 64}, {Bits: 16}} {
		if err := c.Decode(y, c.Encode(nil, x, rows, d), rows, d); err != nil {
			t.Fatal(err)
		}
		bound := c.ErrorBound(x, d)
		worst := 0.0
		for i := range x {
			worst = max(worst, math.Abs(float64(y[i]-x[i]))/float64(bound[i]))
		}
		if worst < 0.5 || worst > 1 {
			t.Errorf("%v: worst error / bound = %.3f, want in [0.5, 1]", c, worst)
		}
	}
}

// TestCodecGridExact: values already on a codec's grid come back bit for
// bit.
func TestCodecGridExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, c := range allCodecs() {
		for trial := 0; trial < 4; trial++ {
			rows, d := 1+rng.IntN(3), 1+rng.IntN(200)
			x := make([]float32, rows*d)
			G, g := c.groups(d)
			for r := 0; r < rows; r++ {
				for j := 0; j < G; j++ {
					seg := x[r*d+j*g : r*d+min((j+1)*g, d)]
					s := float32(math.Ldexp(1, rng.IntN(40)-20))
					k := c.Bits
					switch {
					case k == 16:
						for i := range seg {
							seg[i] = BF16ToF32(uint16(rng.Uint32()) & 0xbfff) // finite, |x| < 2
						}
					case c.Asymmetric:
						m := float32(rng.IntN(2001)-1000) * s
						L := 1<<k - 1
						for i := range seg {
							seg[i] = m + float32(rng.IntN(L+1))*s
						}
						seg[0], seg[len(seg)-1] = m, m+float32(L)*s // pin min and max
					case k == 1:
						for i := range seg {
							seg[i] = s
							if rng.IntN(2) == 0 {
								seg[i] = -s
							}
						}
					default:
						half := 1 << (k - 1)
						for i := range seg {
							seg[i] = float32(rng.IntN(2*half-1)-(half-1)) * s
						}
						seg[rng.IntN(len(seg))] = float32(half-1) * s // pin max|x|
					}
				}
			}
			y := make([]float32, len(x))
			if err := c.Decode(y, c.Encode(nil, x, rows, d), rows, d); err != nil {
				t.Fatal(err)
			}
			for i := range x {
				if math.Float32bits(x[i]) != math.Float32bits(y[i]) {
					t.Fatalf("%v (%d, %d): element %d: %g came back as %g", c, rows, d, i, x[i], y[i])
				}
			}
		}
	}
}

// bitWriter and bitReader are the plain, bit-at-a-time reading of the
// layout comment, against which the packed fast paths are checked.
type bitWriter struct {
	buf  []byte
	nbit int
}

func (w *bitWriter) write(v uint32, k int) {
	for b := 0; b < k; b++ {
		if w.nbit%8 == 0 {
			w.buf = append(w.buf, 0)
		}
		w.buf[len(w.buf)-1] |= byte(v>>b&1) << (w.nbit % 8)
		w.nbit++
	}
}

func TestPackUnpack(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for k := 1; k <= 8; k++ {
		for n := 0; n <= 70; n++ {
			q := make([]uint8, n)
			var w bitWriter
			for i := range q {
				q[i] = uint8(rng.IntN(1 << k))
				w.write(uint32(q[i]), k)
			}
			dst := make([]byte, len(w.buf)+9)
			for i := range dst {
				dst[i] = 0xff // pack must overwrite, not OR
			}
			pack(dst[:len(w.buf)], q, k)
			if string(dst[:len(w.buf)]) != string(w.buf) {
				t.Fatalf("k=%d n=%d: pack = %x, want %x", k, n, dst[:len(w.buf)], w.buf)
			}
			if dst[len(w.buf)] != 0xff {
				t.Fatalf("k=%d n=%d: pack wrote past its bytes", k, n)
			}
			got := make([]uint8, n)
			unpack(got, w.buf, k)
			if string(got) != string(q) {
				t.Fatalf("k=%d n=%d: unpack = %v, want %v", k, n, got, q)
			}
		}
	}
}

// TestCodecMatchesReference compares Encode's bytes with a plain encoder
// written from the layout comment (same float32 rounding formulas, bit-at-a-
// time packing, per-element sanitizing) on rows longer than one chunk.
func TestCodecMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, c := range allCodecs() {
		if c.Bits == 16 {
			continue
		}
		rows, d := 2, 1+rng.IntN(1500)
		x := make([]float32, rows*d)
		fill(rng, x, d, 0)
		if rng.IntN(2) == 0 { // exercise the sanitizing path
			x[rng.IntN(len(x))] = float32(math.NaN())
			x[rng.IntN(len(x))] = float32(math.Inf(-1))
		}
		got := c.Encode(nil, x, rows, d)
		if want := referenceEncode(c, x, rows, d); string(got) != string(want) {
			t.Fatalf("%v (%d, %d): Encode differs from the reference", c, rows, d)
		}
	}
}

func referenceEncode(c Codec, x []float32, rows, d int) []byte {
	G, g := c.groups(d)
	k := c.Bits
	scales := make([]float32, rows*G)
	mins := make([]float32, rows*G)
	var codes []byte
	for r := 0; r < rows; r++ {
		var w bitWriter
		for j := 0; j < G; j++ {
			seg := make([]float32, 0, g)
			for _, v := range x[r*d+j*g : r*d+min((j+1)*g, d)] {
				seg = append(seg, sanitize(v))
			}
			mn, mx, amax, sum := seg[0], seg[0], float32(0), 0.0
			for _, v := range seg {
				mn, mx = min(mn, v), max(mx, v)
				amax = max(amax, float32(math.Abs(float64(v))))
				sum += math.Abs(float64(v))
			}
			var s float32
			switch {
			case c.Asymmetric:
				if float64(mx)-float64(mn) >= CodecFlush {
					s = float32((float64(mx) - float64(mn)) / float64(int(1)<<k-1))
				}
				mins[r*G+j] = mn
			case k == 1:
				s = float32(sum / float64(len(seg)))
			case amax >= CodecFlush:
				s = amax / float32(int(1)<<(k-1)-1)
			}
			scales[r*G+j] = s
			for _, v := range seg {
				var q int32
				switch {
				case k == 1 && !c.Asymmetric:
					q = int32(math.Float32bits(v) >> 31)
				case c.Asymmetric && s == 0:
					q = 0
				case c.Asymmetric:
					q = min(max(int32((v-mn)*(1/s)+0.5), 0), 1<<k-1)
				case s == 0:
					q = 1 << (k - 1)
				default:
					q = min(max(int32(v*(1/s)+float32(int(1)<<(k-1))+0.5), 1), 1<<k-1)
				}
				w.write(uint32(q), k)
			}
		}
		codes = append(codes, w.buf...)
	}
	var out []byte
	put := func(v float32) {
		b := math.Float32bits(v)
		out = append(out, byte(b), byte(b>>8), byte(b>>16), byte(b>>24))
	}
	for _, s := range scales {
		put(s)
	}
	if c.Asymmetric {
		for _, m := range mins {
			put(m)
		}
	}
	return append(out, codes...)
}

// TestCodecNonFinite: NaN becomes 0, ±Inf and huge values clamp to
// ±CodecClamp, the output is finite, and the other rows are untouched.
func TestCodecNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	rng := rand.New(rand.NewPCG(11, 12))
	const rows, d = 3, 40
	for _, c := range allCodecs() {
		x := make([]float32, rows*d)
		fill(rng, x, d, 0)
		clean := append([]float32(nil), x...)
		x[d+1], x[d+5], x[d+9], x[d+20], x[d+33] = nan, inf, -inf, 3e38, -1e38
		checkRoundTrip(t, c, x, rows, d)
		y := make([]float32, rows*d)
		if err := c.Decode(y, c.Encode(nil, x, rows, d), rows, d); err != nil {
			t.Fatal(err)
		}
		yc := make([]float32, rows*d)
		if err := c.Decode(yc, c.Encode(nil, clean, rows, d), rows, d); err != nil {
			t.Fatal(err)
		}
		for i, v := range y {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("%v: element %d decoded to %g", c, i, v)
			}
			if (i < d || i >= 2*d) && v != yc[i] {
				t.Fatalf("%v: a non-finite value in row 1 changed row %d", c, i/d)
			}
		}
		if c.Bits == 16 && (y[d+1] != 0 || y[d+5] != CodecClamp || y[d+9] != -CodecClamp) {
			t.Errorf("bf16: NaN, Inf, -Inf decoded to %g %g %g", y[d+1], y[d+5], y[d+9])
		}
		if c.Bits == 8 && c.Group == 1 && (y[d+1] != 0 || y[d+5] != CodecClamp || y[d+9] != -CodecClamp) {
			t.Errorf("%v: NaN, Inf, -Inf decoded to %g %g %g", c, y[d+1], y[d+5], y[d+9])
		}
	}
}

func TestCodecDecodeRejects(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	const rows, d = 2, 13
	x := make([]float32, rows*d)
	fill(rng, x, d, 0)
	y := make([]float32, rows*d)
	setF32 := func(b []byte, off int, v float32) []byte {
		b = append([]byte(nil), b...)
		putF32(b[off:], 0, v)
		return b
	}
	for _, c := range allCodecs() {
		enc := c.Encode(nil, x, rows, d)
		bad := map[string][]byte{
			"short": enc[:len(enc)-1],
			"long":  append(append([]byte(nil), enc...), 0),
			"empty": nil,
		}
		if c.Bits == 16 {
			bad["nan"] = append(append([]byte(nil), enc[:6]...), append([]byte{0xc1, 0x7f}, enc[8:]...)...)
			bad["inf"] = append(append([]byte(nil), enc[:6]...), append([]byte{0x80, 0xff}, enc[8:]...)...)
		} else {
			G, _ := c.groups(d)
			last := 4*rows*G - 4 // the last scale
			bad["nan scale"] = setF32(enc, last, float32(math.NaN()))
			bad["inf scale"] = setF32(enc, 0, float32(math.Inf(1)))
			bad["negative scale"] = setF32(enc, last, -1)
			bad["-0 scale"] = setF32(enc, 0, float32(math.Copysign(0, -1)))
			bad["scale overflows"] = setF32(enc, 0, math.MaxFloat32/float32(int(1)<<(c.Bits-1))*1.01)
			if c.Asymmetric {
				bad["nan min"] = setF32(enc, 4*rows*G, float32(math.NaN()))
				bad["-inf min"] = setF32(enc, 4*rows*G+4*G, float32(math.Inf(-1)))
				bad["min + scale overflows"] = setF32(setF32(enc, 4*rows*G, math.MaxFloat32), 0, 1e38)
			}
			if d*c.Bits%8 != 0 {
				b := append([]byte(nil), enc...)
				b[len(b)-1] |= 0x80
				bad["padding"] = b
			}
		}
		for name, src := range bad {
			if err := c.Decode(y, src, rows, d); !errors.Is(err, ErrCodec) {
				t.Errorf("%v: %s: Decode = %v, want an ErrCodec", c, name, err)
			}
		}
		if err := c.Decode(y[:len(y)-1], enc, rows, d); !errors.Is(err, ErrCodec) {
			t.Errorf("%v: short dst: Decode = %v", c, err)
		}
		for _, sh := range [][2]int{{-1, d}, {rows, -1}, {rows + 1, d}, {rows, d + 1}, {math.MaxInt, math.MaxInt}} {
			if err := c.Decode(y, enc, sh[0], sh[1]); !errors.Is(err, ErrCodec) {
				t.Errorf("%v: shape %v: Decode = %v", c, sh, err)
			}
		}
	}
	if err := (Codec{Bits: 9}).Decode(y, nil, 0, 0); !errors.Is(err, ErrCodec) {
		t.Errorf("invalid codec: Decode = %v", err)
	}
}

// fuzzCodec maps fuzzer bytes onto a valid codec.
func fuzzCodec(bits uint8, group uint16, asym bool) Codec {
	k := int(bits)%9 + 1
	if k == 9 {
		return Codec{Bits: 16}
	}
	return Codec{Bits: k, Group: int(group) % 300, Asymmetric: asym}
}

func FuzzCodecRoundTrip(f *testing.F) {
	f.Add([]byte("\x00\x00\x80\x3f\x00\x00\x00\xc0\x00\x00\xc0\x7f\x00\x00\x80\x7f"), uint8(3), uint16(0), false, uint16(3))
	f.Add(make([]byte, 64), uint8(0), uint16(5), true, uint16(7))
	f.Add([]byte("\xff\xff\x7f\x7f\x01\x00\x00\x00\xff\xff\x7f\xff\x01\x00\x00\x80"), uint8(7), uint16(2), true, uint16(2))
	f.Fuzz(func(t *testing.T, data []byte, bits uint8, group uint16, asym bool, dd uint16) {
		c := fuzzCodec(bits, group, asym)
		n := min(len(data)/4, 4096)
		if n == 0 {
			return
		}
		d := int(dd)%n + 1
		rows := n / d
		x := make([]float32, rows*d)
		for i := range x {
			x[i] = math.Float32frombits(uint32(data[4*i]) | uint32(data[4*i+1])<<8 | uint32(data[4*i+2])<<16 | uint32(data[4*i+3])<<24)
		}
		checkRoundTrip(t, c, x, rows, d)
	})
}

func FuzzCodecDecode(f *testing.F) {
	rng := rand.New(rand.NewPCG(15, 16))
	x := make([]float32, 3*10)
	fill(rng, x, 10, 0)
	for _, c := range []Codec{{Bits: 4}, {Bits: 3, Group: 4, Asymmetric: true}, {Bits: 1}, {Bits: 16}, {Bits: 8, Group: 3}} {
		f.Add(c.Encode(nil, x, 3, 10), uint8(c.Bits-1), uint16(c.Group), c.Asymmetric, uint8(3), uint16(10))
	}
	f.Fuzz(func(t *testing.T, src []byte, bits uint8, group uint16, asym bool, rows uint8, dd uint16) {
		c := fuzzCodec(bits, group, asym)
		r, d := int(rows)%65, int(dd)%1025
		y := make([]float32, r*d)
		if err := c.Decode(y, src, r, d); err != nil {
			if !errors.Is(err, ErrCodec) {
				t.Fatalf("Decode error %v does not wrap ErrCodec", err)
			}
			return
		}
		for i, v := range y {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("%v: accepted payload decodes element %d to %g", c, i, v)
			}
		}
		// A payload Decode accepts has the canonical size.
		if len(src) != c.EncodedSize(r, d) {
			t.Fatalf("%v: accepted %d bytes, EncodedSize %d", c, len(src), c.EncodedSize(r, d))
		}
	})
}
