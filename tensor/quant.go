package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The bridge codecs (docs/method.md): how a volunteer compresses each token's
// hidden state before it crosses the wire, and how the coordinator restores
// it. A Codec names one setting; its String form ("q4", "q4g64a", "bf16")
// is what travels in protocol messages and cache keys.
//
// Quantization (Bits 1..8, k = Bits). A row (one token) of d values is cut
// into groups: Group 0 means one group per row, Group g > 0 means groups of g
// consecutive values, the last one ragged when g does not divide d (and one
// group per row when g >= d). Each group gets its own parameters:
//
//	symmetric, k >= 2:  s = max|x| / (2^(k-1) - 1)
//	                    code = round(x/s) + 2^(k-1)          (1 .. 2^k-1)
//	                    x̂ = (code - 2^(k-1)) · s
//	                    |x̂ - x| <= s/2
//	symmetric, k = 1:   a sign code: s = mean|x|, bit = sign bit of x
//	                    x̂ = +s (bit 0) or -s (bit 1)
//	                    |x̂ - x| = ||x| - s| <= max(s, max|x| - s)
//	asymmetric (any k): m = min x, s = (max x - min x) / (2^k - 1)
//	                    code = round((x - m)/s)                (0 .. 2^k-1)
//	                    x̂ = m + code · s
//	                    |x̂ - x| <= s/2
//
// round is round-half-up. A symmetric group with max|x| < CodecFlush, or an
// asymmetric group with max - min < CodecFlush, is stored with s = 0 and
// decodes to 0 (symmetric) or to m (asymmetric); its error is at most
// max|x| or max - min. Float32 arithmetic adds at most
// 2^-20·max|x of the group| + 2^-140 to each bound; ErrorBound returns the
// bound with that slack included.
//
// Bits 16 is bf16 passthrough: each value rounded to the nearest bfloat16
// (ties to even), relative error <= 2^-8.
//
// Non-finite and huge inputs: Encode has no error. Before anything else it
// replaces NaN by 0 and clamps every value to [-CodecClamp, CodecClamp]
// (±Inf become ±CodecClamp); the bounds above hold against the clamped
// values. This keeps every stored parameter finite and every decoded value
// finite, for every codec.
//
// Wire layout (all little-endian; rows = tokens, G = groups per row,
// r·G + j indexes group j of row r):
//
//	quantized:  scale [rows·G]float32          offset 0
//	            min   [rows·G]float32          offset 4·rows·G (asymmetric only)
//	            codes rows × ceil(d·k/8) bytes  offset 4·rows·G·(1 or 2)
//	bf16:       [rows·d]uint16
//
// The float32 sections start at offset 0 and the code section at a multiple
// of 4, so a 4-aligned buffer gives aligned scales and codes, with no padding
// in between. Codes are packed LSB-first and contiguous across byte
// boundaries within a row: value j of a row occupies bits j·k .. j·k+k-1 of
// the row's bit stream, bit b being bit b%8 of byte b/8. Each row starts on a
// fresh byte; the unused high bits of a row's last byte are zero (Decode
// rejects anything else, so that every payload has one encoding).
//
// At d = 896 (Qwen2.5-0.5B) a token costs 900 bytes at q8, 452 at q4, 228
// at q2, 116 at q1 and 1792 at bf16; q4g64 adds 4 bytes per 64 values
// (504), q4g64a 8 (560).

// Codec is a bridge setting. Bits 1..8 quantize; Bits 16 is bf16
// passthrough. Group 0 = one scale per row (per token); Group g > 0 = one
// scale per g consecutive values of a row, the last group of a row ragged if
// g does not divide its width. Asymmetric adds a per-group minimum (zero
// point) instead of a symmetric scale around 0.
type Codec struct {
	Bits       int
	Group      int
	Asymmetric bool
}

const (
	// CodecClamp is the largest magnitude Encode keeps; larger values and
	// ±Inf are clamped to ±CodecClamp, NaN becomes 0.
	CodecClamp = 0x1p126
	// CodecFlush: a group whose spread (max|x| symmetric, max-min
	// asymmetric) is below CodecFlush is stored with scale 0.
	CodecFlush = 0x1p-100
	// MaxCodecGroup caps Codec.Group.
	MaxCodecGroup = 1 << 20

	clampBits = 0x7e800000 // math.Float32bits(CodecClamp)
	// codecChunk values are quantized into a stack buffer, then packed;
	// a multiple of 8 so that every chunk starts on a byte.
	codecChunk = 512
)

var (
	// ErrCodec is wrapped by every Decode and ParseCodec error.
	ErrCodec = errors.New("bad bridge codec payload")
)

// Validate reports whether c is a codec this package implements.
func (c Codec) Validate() error {
	switch {
	case c.Bits == 16:
		if c.Group != 0 || c.Asymmetric {
			return fmt.Errorf("tensor.Codec: bf16 takes no group (%d) and is not asymmetric (%t)", c.Group, c.Asymmetric)
		}
	case c.Bits < 1 || c.Bits > 8:
		return fmt.Errorf("tensor.Codec: bits %d not in 1..8 or 16", c.Bits)
	case c.Group < 0 || c.Group > MaxCodecGroup:
		return fmt.Errorf("tensor.Codec: group %d not in 0..%d", c.Group, MaxCodecGroup)
	}
	return nil
}

// String returns the codec's name: "bf16", or "q" bits, then "g" group when
// grouped, then "a" when asymmetric ("q4", "q4g64", "q2a", "q3g32a").
// ParseCodec is its inverse. An invalid codec gets a name ParseCodec
// rejects.
func (c Codec) String() string {
	if c.Validate() != nil {
		return fmt.Sprintf("invalid(bits=%d,group=%d,asym=%t)", c.Bits, c.Group, c.Asymmetric)
	}
	if c.Bits == 16 {
		return "bf16"
	}
	s := "q" + strconv.Itoa(c.Bits)
	if c.Group > 0 {
		s += "g" + strconv.Itoa(c.Group)
	}
	if c.Asymmetric {
		s += "a"
	}
	return s
}

// ParseCodec parses the name String produces; nothing else is accepted
// (no leading zeros, no "g0", no case folding), so a name is canonical.
func ParseCodec(s string) (Codec, error) {
	if s == "bf16" {
		return Codec{Bits: 16}, nil
	}
	bad := func() (Codec, error) {
		return Codec{}, fmt.Errorf("tensor.ParseCodec: %q: %w", s, ErrCodec)
	}
	if len(s) < 2 || len(s) > 16 || s[0] != 'q' || s[1] < '1' || s[1] > '8' {
		return bad()
	}
	c := Codec{Bits: int(s[1] - '0')}
	rest := s[2:]
	if strings.HasSuffix(rest, "a") {
		c.Asymmetric = true
		rest = rest[:len(rest)-1]
	}
	if rest != "" {
		if rest[0] != 'g' || len(rest) < 2 || rest[1] == '0' {
			return bad()
		}
		for _, ch := range rest[1:] {
			if ch < '0' || ch > '9' {
				return bad()
			}
		}
		g, err := strconv.Atoi(rest[1:])
		if err != nil || g > MaxCodecGroup {
			return bad()
		}
		c.Group = g
	}
	if c.Validate() != nil || c.String() != s {
		return bad()
	}
	return c, nil
}

// groups returns the number of groups per row and the group length.
func (c Codec) groups(d int) (G, g int) {
	g = c.Group
	if g == 0 || g > d {
		g = d
	}
	if d == 0 {
		return 0, 0
	}
	return (d + g - 1) / g, g
}

// EncodedSize returns the exact byte size of Encode's output for a
// (rows, d) input, or -1 if c is invalid, rows or d is negative, or the
// size does not fit an int.
func (c Codec) EncodedSize(rows, d int) int {
	if c.Validate() != nil || rows < 0 || d < 0 || d > math.MaxInt/16 {
		return -1
	}
	n, ok := mulInt(rows, d)
	if !ok {
		return -1
	}
	if c.Bits == 16 {
		if n > math.MaxInt/2 {
			return -1
		}
		return 2 * n
	}
	G, _ := c.groups(d)
	params := 1
	if c.Asymmetric {
		params = 2
	}
	sc, ok := mulInt(rows, G*params) // G <= d
	if !ok || sc > math.MaxInt/4 {
		return -1
	}
	rb := (d*c.Bits + 7) / 8
	codes, ok := mulInt(rows, rb)
	if !ok || codes > math.MaxInt-4*sc {
		return -1
	}
	return 4*sc + codes
}

func mulInt(a, b int) (int, bool) {
	if a == 0 || b == 0 {
		return 0, true
	}
	if a > math.MaxInt/b {
		return 0, false
	}
	return a * b, true
}

// sanitize is what Encode does to each input first: NaN to 0, clamp to
// ±CodecClamp.
func sanitize(v float32) float32 {
	switch {
	case v != v:
		return 0
	case v > CodecClamp:
		return CodecClamp
	case v < -CodecClamp:
		return -CodecClamp
	}
	return v
}

// ErrorBound returns, for each element of x: (rows, d), the largest
// |Decode(Encode(x)) - sanitize(x)| the codec allows (see the package
// comment on codecs), computed independently of the encoder in float64.
// It allocates; it is meant for tests, fuzzers and verification thresholds.
func (c Codec) ErrorBound(x []float32, d int) []float32 {
	if err := c.Validate(); err != nil {
		panic("tensor.Codec.ErrorBound: " + err.Error())
	}
	if d <= 0 || len(x)%d != 0 {
		panic(fmt.Sprintf("tensor.Codec.ErrorBound: len(x) = %d is not a multiple of d = %d", len(x), d))
	}
	out := make([]float32, len(x))
	if c.Bits == 16 {
		for i, v := range x {
			out[i] = float32(max(math.Abs(float64(sanitize(v)))*0x1p-8, 0x1p-134))
		}
		return out
	}
	_, g := c.groups(d)
	for r := 0; r < len(x)/d; r++ {
		for a := 0; a < d; a += g {
			b := min(a+g, d)
			seg := x[r*d+a : r*d+b]
			mn, mx, amax, sum := math.Inf(1), math.Inf(-1), 0.0, 0.0
			for _, v := range seg {
				f := float64(sanitize(v))
				mn, mx = min(mn, f), max(mx, f)
				amax = max(amax, math.Abs(f))
				sum += math.Abs(f)
			}
			var bound float64
			switch {
			case c.Asymmetric && mx-mn < CodecFlush:
				bound = mx - mn
			case c.Asymmetric:
				bound = (mx - mn) / float64(int(1)<<c.Bits-1) / 2
			case c.Bits == 1:
				s := sum / float64(len(seg))
				bound = max(s, amax-s)
			case amax < CodecFlush:
				bound = amax
			default:
				bound = amax / float64(int(1)<<(c.Bits-1)-1) / 2
			}
			bound += amax*0x1p-20 + 0x1p-140
			for i := a; i < b; i++ {
				out[r*d+i] = float32(bound)
			}
		}
	}
	return out
}

// Encode appends the encoding of x: (rows, d) to dst and returns the
// extended slice; it allocates only when dst lacks capacity for
// EncodedSize(rows, d) more bytes. It panics on an invalid codec or a
// short x (programmer errors).
func (c Codec) Encode(dst []byte, x []float32, rows, d int) []byte {
	n := c.EncodedSize(rows, d)
	if n < 0 {
		panic(fmt.Sprintf("tensor.Codec.Encode: %v with shape (%d, %d)", c, rows, d))
	}
	if len(x) < rows*d {
		panic(fmt.Sprintf("tensor.Codec.Encode: len(x) = %d < %d·%d", len(x), rows, d))
	}
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	x = x[:rows*d]
	if c.Bits == 16 {
		encodeBF16(out, x)
		return dst[:len(dst)+n]
	}
	l := c.layout(out, rows, d)
	var e rowEncoder
	for r := 0; r < rows; r++ {
		scales, mins, codes := l.row(r)
		e.row(c, x[r*d:(r+1)*d], scales, mins, codes, l.g)
	}
	return dst[:len(dst)+n]
}

// codecLayout is where the parts of a (rows, d) encoding lie (Bits < 16):
// every row's G float32 scales, then, when Asymmetric, every row's G mins,
// then every row's codes packed into rb bytes.
type codecLayout struct {
	G, g, rb            int // groups per row, group length, code bytes per row
	scales, mins, codes []byte
}

// layout splits b, an encoding of (rows, d) with EncodedSize's length.
func (c Codec) layout(b []byte, rows, d int) codecLayout {
	G, g := c.groups(d)
	ns := rows * G
	l := codecLayout{G: G, g: g, rb: (d*c.Bits + 7) / 8, scales: b[:4*ns], codes: b[4*ns:]}
	if c.Asymmetric {
		l.mins, l.codes = l.codes[:4*ns], l.codes[4*ns:]
	}
	return l
}

// row returns row r's scales, mins (nil when symmetric) and codes.
func (l *codecLayout) row(r int) (scales, mins, codes []byte) {
	if l.mins != nil {
		mins = l.mins[4*r*l.G : 4*(r+1)*l.G]
	}
	return l.scales[4*r*l.G : 4*(r+1)*l.G], mins, l.codes[r*l.rb : (r+1)*l.rb]
}

// rowEncoder holds the scratch space of one Encode call (on its stack).
type rowEncoder struct {
	codes [codecChunk]uint8
	clean [codecChunk]float32 // sanitized copy of a chunk (slow path only)
}

// groupStats are the statistics of one group: min, max, sum of |x| and
// the largest |x| bit pattern (which exceeds clampBits iff a value needs
// sanitizing).
type groupStats struct {
	mn, mx float32
	sum    float64
	worst  uint32
}

func (st *groupStats) add(c Codec, seg []float32) {
	switch {
	case c.Asymmetric:
		mn, mx, w := minMaxBits(seg)
		st.mn, st.mx, st.worst = min(st.mn, mn), max(st.mx, mx), max(st.worst, w)
	case c.Bits == 1:
		s, w := sumAbsBits(seg)
		st.sum += s
		st.worst = max(st.worst, w)
	default:
		st.worst = max(st.worst, maxAbsBits(seg))
	}
}

// params turns a group's statistics into its stored scale and minimum.
func (st *groupStats) params(c Codec, n int) (s, m float32) {
	switch {
	case c.Asymmetric:
		m = st.mn
		if rng := float64(st.mx) - float64(st.mn); rng >= CodecFlush {
			s = float32(rng / float64(int(1)<<c.Bits-1))
		}
	case c.Bits == 1:
		s = float32(st.sum / float64(n))
	default:
		if amax := math.Float32frombits(st.worst); amax >= CodecFlush {
			s = amax / float32(int(1)<<(c.Bits-1)-1)
		}
	}
	return s, m
}

// row encodes one row x: (d) into its scales (and mins) and its codes.
func (e *rowEncoder) row(c Codec, x []float32, scales, mins, codes []byte, g int) {
	d := len(x)
	k := c.Bits
	worst := uint32(0)
	for a, j := 0, 0; a < d; a, j = a+g, j+1 {
		seg := x[a:min(a+g, d)]
		st := groupStats{mn: float32(math.Inf(1)), mx: float32(math.Inf(-1))}
		st.add(c, seg)
		s, m := st.params(c, len(seg))
		putF32(scales, j, s)
		if mins != nil {
			putF32(mins, j, m)
		}
		worst = max(worst, st.worst)
	}
	slow := worst > clampBits
	if slow {
		// Some value is NaN, infinite or beyond CodecClamp: redo the
		// statistics on sanitized copies, a chunk at a time.
		for a, j := 0, 0; a < d; a, j = a+g, j+1 {
			b := min(a+g, d)
			st := groupStats{mn: float32(math.Inf(1)), mx: float32(math.Inf(-1))}
			for p := a; p < b; p += codecChunk {
				q := min(p+codecChunk, b)
				st.add(c, e.sanitized(x[p:q]))
			}
			s, m := st.params(c, b-a)
			putF32(scales, j, s)
			if mins != nil {
				putF32(mins, j, m)
			}
		}
	}
	for j0 := 0; j0 < d; j0 += codecChunk {
		j1 := min(j0+codecChunk, d)
		src := x[j0:j1]
		if slow {
			src = e.sanitized(src)
		}
		out := codes[j0*k/8:]
		if k == 1 && !c.Asymmetric {
			packSigns(out, src)
			continue
		}
		cb := e.codes[:j1-j0]
		if k == 8 {
			cb = out[:j1-j0]
		}
		for a := j0; a < j1; {
			j := a / g
			b := min((j+1)*g, j1)
			seg, q := src[a-j0:b-j0], cb[a-j0:b-j0]
			s := getF32(scales, j)
			if c.Asymmetric {
				quantAsym(q, seg, s, getF32(mins, j), k)
			} else {
				quantSym(q, seg, s, k)
			}
			a = b
		}
		if k != 8 {
			pack(out, cb, k)
		}
	}
}

func (e *rowEncoder) sanitized(x []float32) []float32 {
	out := e.clean[:len(x)]
	for i, v := range x {
		out[i] = sanitize(v)
	}
	return out
}

func putF32(b []byte, i int, v float32) {
	binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
}

func getF32(b []byte, i int) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
}

// maxAbsBits returns the largest |x| as a bit pattern; NaN and Inf compare
// above every finite value.
func maxAbsBits(x []float32) uint32 {
	var m0, m1, m2, m3 uint32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		m0 = max(m0, math.Float32bits(x[i])&0x7fffffff)
		m1 = max(m1, math.Float32bits(x[i+1])&0x7fffffff)
		m2 = max(m2, math.Float32bits(x[i+2])&0x7fffffff)
		m3 = max(m3, math.Float32bits(x[i+3])&0x7fffffff)
	}
	for ; i < len(x); i++ {
		m0 = max(m0, math.Float32bits(x[i])&0x7fffffff)
	}
	return max(m0, m1, m2, m3)
}

// minMaxBits returns min x, max x and maxAbsBits(x). It compares floats as
// integers (sign-magnitude turned two's complement, which orders all
// non-NaN floats, -0 below +0), so the loop has no branches; a NaN gives a
// meaningless min or max, but then worst > clampBits and the caller redoes
// the group on sanitized values.
func minMaxBits(x []float32) (mn, mx float32, worst uint32) {
	lo, hi := int32(math.MaxInt32), int32(math.MinInt32)
	for _, v := range x {
		b := int32(math.Float32bits(v))
		key := b ^ (b >> 31 & 0x7fffffff)
		lo, hi = min(lo, key), max(hi, key)
		worst = max(worst, uint32(b)&0x7fffffff)
	}
	if len(x) == 0 {
		return float32(math.Inf(1)), float32(math.Inf(-1)), 0
	}
	lo ^= lo >> 31 & 0x7fffffff
	hi ^= hi >> 31 & 0x7fffffff
	return math.Float32frombits(uint32(lo)), math.Float32frombits(uint32(hi)), worst
}

// sumAbsBits returns the sum of |x| in float64 and maxAbsBits(x).
func sumAbsBits(x []float32) (sum float64, worst uint32) {
	var s0, s1 float64
	i := 0
	for ; i+2 <= len(x); i += 2 {
		b0 := math.Float32bits(x[i]) & 0x7fffffff
		b1 := math.Float32bits(x[i+1]) & 0x7fffffff
		s0 += float64(math.Float32frombits(b0))
		s1 += float64(math.Float32frombits(b1))
		worst = max(worst, b0, b1)
	}
	for ; i < len(x); i++ {
		b := math.Float32bits(x[i]) & 0x7fffffff
		s0 += float64(math.Float32frombits(b))
		worst = max(worst, b)
	}
	return s0 + s1, worst
}

// quantSym writes the symmetric k-bit codes (k >= 2) of x with scale s.
func quantSym(q []uint8, x []float32, s float32, k int) {
	q = q[:len(x)]
	half := int32(1) << (k - 1)
	if s == 0 {
		for i := range q {
			q[i] = uint8(half)
		}
		return
	}
	inv := 1 / s
	off := float32(half) + 0.5 // x·inv + off >= 1: truncation is floor
	// Codes land in 1 .. 2^k-1 (|x·inv| <= 2^(k-1)-1 up to rounding);
	// the unsigned min only guards the packing against the impossible.
	hi := uint32(2*half - 1)
	i := 0
	for ; i+4 <= len(x); i += 4 {
		v, c := x[i:i+4:i+4], q[i:i+4:i+4]
		c[0] = uint8(min(uint32(int32(v[0]*inv+off)), hi))
		c[1] = uint8(min(uint32(int32(v[1]*inv+off)), hi))
		c[2] = uint8(min(uint32(int32(v[2]*inv+off)), hi))
		c[3] = uint8(min(uint32(int32(v[3]*inv+off)), hi))
	}
	for ; i < len(x); i++ {
		q[i] = uint8(min(uint32(int32(x[i]*inv+off)), hi))
	}
}

// quantAsym writes the asymmetric k-bit codes of x with scale s, min m.
func quantAsym(q []uint8, x []float32, s, m float32, k int) {
	q = q[:len(x)]
	if s == 0 {
		clear(q)
		return
	}
	inv := 1 / s
	hi := uint32(1)<<k - 1
	i := 0
	for ; i+4 <= len(x); i += 4 {
		v, c := x[i:i+4:i+4], q[i:i+4:i+4]
		c[0] = uint8(min(uint32(int32((v[0]-m)*inv+0.5)), hi))
		c[1] = uint8(min(uint32(int32((v[1]-m)*inv+0.5)), hi))
		c[2] = uint8(min(uint32(int32((v[2]-m)*inv+0.5)), hi))
		c[3] = uint8(min(uint32(int32((v[3]-m)*inv+0.5)), hi))
	}
	for ; i < len(x); i++ {
		q[i] = uint8(min(uint32(int32((x[i]-m)*inv+0.5)), hi))
	}
}

// packSigns writes the sign bits of x, LSB-first, ceil(len(x)/8) bytes.
func packSigns(dst []byte, x []float32) {
	n := len(x)
	i := 0
	for ; i+8 <= n; i += 8 {
		v := x[i : i+8 : i+8]
		dst[i/8] = byte(math.Float32bits(v[0])>>31 |
			math.Float32bits(v[1])>>31<<1 |
			math.Float32bits(v[2])>>31<<2 |
			math.Float32bits(v[3])>>31<<3 |
			math.Float32bits(v[4])>>31<<4 |
			math.Float32bits(v[5])>>31<<5 |
			math.Float32bits(v[6])>>31<<6 |
			math.Float32bits(v[7])>>31<<7)
	}
	if i < n {
		var b uint32
		for j := i; j < n; j++ {
			b |= math.Float32bits(x[j]) >> 31 << (j - i)
		}
		dst[i/8] = byte(b)
	}
}

// swar holds what pack and unpack need to move eight k-bit codes between
// one byte each and 8k contiguous bits of a uint64 in three halving steps:
// m1, m2, m3 keep the low k, 2k, 4k bits of every 16-, 32-, 64-bit lane;
// s1, s2, s3 are the distances the high halves move (masked to 6 bits, so
// the compiler emits bare shifts).
type swar struct {
	m1, m2, m3 uint64
	s1, s2, s3 uint
	k          uint
}

func swarFor(k int) swar {
	u := uint(k)
	return swar{
		m1: (uint64(1)<<u - 1) * 0x0001000100010001,
		m2: (uint64(1)<<(2*u) - 1) * 0x0000000100000001,
		m3: uint64(1)<<(4*u) - 1,
		s1: (8 - u) & 63, s2: (16 - 2*u) & 63, s3: (32 - 4*u) & 63,
		k: u & 63,
	}
}

// pack writes the k-bit codes q (each < 2^k, k in 1..7) LSB-first into
// ceil(len(q)·k/8) bytes of dst, zeroing the unused high bits. Bytes of dst
// after those may be overwritten (with zeros, up to 7 of them); callers
// write in order and rewrite them next.
func pack(dst []byte, q []uint8, k int) {
	n := len(q)
	sw := swarFor(k)
	m1, m2, m3 := sw.m1, sw.m2, sw.m3
	m1k, m2k, m3k := m1<<sw.k, m2<<(2*sw.k&63), m3<<(4*sw.k&63)
	s1, s2, s3 := sw.s1, sw.s2, sw.s3
	i, o := 0, 0
	for ; i+8 <= n && o+8 <= len(dst); i, o = i+8, o+k {
		w := binary.LittleEndian.Uint64(q[i:])
		w = w&m1 | (w>>s1)&m1k
		w = w&m2 | (w>>s2)&m2k
		w = w&m3 | (w>>s3)&m3k
		binary.LittleEndian.PutUint64(dst[o:], w) // bytes k..7 are rewritten next
	}
	for ; i+8 <= n; i, o = i+8, o+k {
		w := binary.LittleEndian.Uint64(q[i:])
		w = w&m1 | (w>>s1)&m1k
		w = w&m2 | (w>>s2)&m2k
		w = w&m3 | (w>>s3)&m3k
		for b := 0; b < k; b++ {
			dst[o+b] = byte(w >> (8 * b))
		}
	}
	if i == n {
		return
	}
	// Tail: fewer than 8 codes left, starting on a byte boundary.
	var w uint64
	for j := i; j < n; j++ {
		w |= uint64(q[j]) << ((j - i) * k)
	}
	o = i * k / 8
	for b := 0; b < ((n-i)*k+7)/8; b++ {
		dst[o+b] = byte(w >> (8 * b))
	}
}

// unpack is the inverse of pack: it reads len(q) k-bit codes from src.
func unpack(q []uint8, src []byte, k int) {
	n := len(q)
	sw := swarFor(k)
	m1, m2, m3 := sw.m1, sw.m2, sw.m3
	m18, m216, m332 := m1<<8, m2<<16, m3<<32
	s1, s2, s3 := sw.s1, sw.s2, sw.s3
	i := 0
	for o := 0; i+8 <= n; i, o = i+8, o+k {
		var w uint64
		if o+8 <= len(src) {
			w = binary.LittleEndian.Uint64(src[o:])
		} else {
			for b := 0; b < k; b++ {
				w |= uint64(src[o+b]) << (8 * b)
			}
		}
		w = w&m3 | (w<<s3)&m332
		w = w&m2 | (w<<s2)&m216
		w = w&m1 | (w<<s1)&m18
		binary.LittleEndian.PutUint64(q[i:], w)
	}
	if i == n {
		return
	}
	var w uint64
	o := i * k / 8
	for b := 0; b < ((n-i)*k+7)/8; b++ {
		w |= uint64(src[o+b]) << (8 * b)
	}
	mask := uint64(1)<<k - 1
	for j := i; j < n; j++ {
		q[j] = uint8(w >> ((j - i) * k) & mask)
	}
}

func encodeBF16(out []byte, x []float32) {
	out = out[:2*len(x)]
	for i, v := range x {
		if math.Float32bits(v)&0x7fffffff > clampBits {
			v = sanitize(v)
		}
		binary.LittleEndian.PutUint16(out[2*i:], F32ToBF16(v))
	}
}

// Decode restores src, the encoding of a (rows, d) tensor, into
// dst: (rows, d). It never panics on bad input: it returns an error
// (wrapping ErrCodec) if c is invalid, the shape is negative, dst is short,
// len(src) != EncodedSize(rows, d), a scale is NaN, infinite or negative
// (sign bit set), a minimum is not finite, a group could decode to a
// non-finite value, a bf16 value is NaN or infinite, or a row's unused
// padding bits are not zero. On success every value written is finite. On
// error dst may be partly written.
func (c Codec) Decode(dst []float32, src []byte, rows, d int) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("tensor.Codec.Decode: %v: %w", err, ErrCodec)
	}
	n := c.EncodedSize(rows, d)
	switch {
	case n < 0:
		return fmt.Errorf("tensor.Codec.Decode: %v: bad shape (%d, %d): %w", c, rows, d, ErrCodec)
	case len(src) != n:
		return fmt.Errorf("tensor.Codec.Decode: %v (%d, %d): %d bytes, want %d: %w", c, rows, d, len(src), n, ErrCodec)
	case len(dst) < rows*d:
		return fmt.Errorf("tensor.Codec.Decode: len(dst) = %d < %d·%d: %w", len(dst), rows, d, ErrCodec)
	}
	dst = dst[:rows*d]
	if c.Bits == 16 {
		return decodeBF16(dst, src)
	}
	l := c.layout(src, rows, d)
	if err := c.checkParams(l.scales, l.mins); err != nil {
		return err
	}
	if pad := d * c.Bits % 8; pad != 0 {
		for r := 0; r < rows; r++ {
			if l.codes[(r+1)*l.rb-1]>>pad != 0 {
				return fmt.Errorf("tensor.Codec.Decode: %v: row %d: padding bits set: %w", c, r, ErrCodec)
			}
		}
	}
	var q [codecChunk]uint8
	for r := 0; r < rows; r++ {
		scales, mins, codes := l.row(r)
		c.decodeRow(dst[r*d:(r+1)*d], scales, mins, codes, l.g, &q)
	}
	return nil
}

// checkParams validates every scale (and min) so that all decoded values are
// finite.
func (c Codec) checkParams(scales, mins []byte) error {
	top := float32(int(1) << (c.Bits - 1)) // largest |code - 2^(k-1)|
	if c.Asymmetric {
		top = float32(int(1)<<c.Bits - 1)
	}
	for j := 0; j < len(scales)/4; j++ {
		s := getF32(scales, j)
		sb := math.Float32bits(s)
		if sb>>31 != 0 || sb&0x7f800000 == 0x7f800000 || isInf32(top*s) {
			return fmt.Errorf("tensor.Codec.Decode: %v: scale %d is %v: %w", c, j, s, ErrCodec)
		}
		if mins != nil {
			m := getF32(mins, j)
			if math.Float32bits(m)&0x7f800000 == 0x7f800000 || isInf32(m+top*s) {
				return fmt.Errorf("tensor.Codec.Decode: %v: min %d is %v (scale %v): %w", c, j, m, s, ErrCodec)
			}
		}
	}
	return nil
}

func isInf32(v float32) bool { return math.Float32bits(v)&0x7fffffff == 0x7f800000 }

// decodeRow restores one row y: (d) from its scales (mins) and codes.
func (c Codec) decodeRow(y []float32, scales, mins, codes []byte, g int, q *[codecChunk]uint8) {
	d := len(y)
	k := c.Bits
	for j0 := 0; j0 < d; j0 += codecChunk {
		j1 := min(j0+codecChunk, d)
		src := codes[j0*k/8:]
		var cb []uint8
		if k == 8 {
			cb = src[:j1-j0]
		} else {
			cb = q[:j1-j0]
			unpack(cb, src, k)
		}
		for a := j0; a < j1; {
			j := a / g
			b := min((j+1)*g, j1)
			out, qs := y[a:b], cb[a-j0:b-j0]
			s := getF32(scales, j)
			switch {
			case c.Asymmetric:
				dequantAsym(out, qs, s, getF32(mins, j))
			case k == 1:
				dequantSign(out, qs, s)
			default:
				dequantSym(out, qs, s, k)
			}
			a = b
		}
	}
}

func dequantSym(y []float32, q []uint8, s float32, k int) {
	y = y[:len(q)]
	half := int32(1) << (k - 1)
	for i, c := range q {
		y[i] = float32(int32(c)-half) * s
	}
}

func dequantAsym(y []float32, q []uint8, s, m float32) {
	y = y[:len(q)]
	for i, c := range q {
		y[i] = m + float32(c)*s
	}
}

func dequantSign(y []float32, q []uint8, s float32) {
	y = y[:len(q)]
	sb := math.Float32bits(s)
	for i, c := range q {
		y[i] = math.Float32frombits(sb | uint32(c)<<31)
	}
}

func decodeBF16(y []float32, src []byte) error {
	src = src[:2*len(y)]
	for i := range y {
		h := binary.LittleEndian.Uint16(src[2*i:])
		if h&0x7f80 == 0x7f80 {
			return fmt.Errorf("tensor.Codec.Decode: bf16: value %d is not finite (%#04x): %w", i, h, ErrCodec)
		}
		y[i] = BF16ToF32(h)
	}
	return nil
}
