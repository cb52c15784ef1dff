package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Block formats of ggml (ggml-common.h), as stored in GGUF files. Each
// block covers a run of consecutive elements of a row:
//
//	Q8_0 (32 values, 34 bytes):  f16 d | i8 qs[32]                    x = d·q
//	Q4_K (256 values, 144 bytes): f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
//	     8 sub-blocks of 32 with 6-bit scale sc and min m:             x = d·sc·q − dmin·m, q in 0..15
//	Q6_K (256 values, 210 bytes): u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
//	     16 sub-blocks of 16 with an 8-bit signed scale:               x = d·sc·(q − 32), q in 0..63
//
// The decoders follow ggml's dequantize_row_* reference code operation by
// operation, so results are bit-identical to it; the bulk decoders
// (decodeQ8_0Blocks, decodeQ4KBlocks, decodeQ6KBlocks: AVX2 where the CPU
// has it) are bitwise equal to the per-block ones here.

// DequantizeGGML decodes len(dst) values of type t from src, which must
// hold exactly that many (a whole number of blocks). Supported: F32, F16,
// BF16, Q8_0, Q4_K and Q6_K.
func DequantizeGGML(dst []float32, src []byte, t GGMLType) error {
	need, err := t.RowBytes(len(dst))
	if err != nil {
		return fmt.Errorf("dequantize: %w", err)
	}
	if len(src) != need {
		return fmt.Errorf("dequantize: %d values of %s take %d bytes, got %d", len(dst), t, need, len(src))
	}
	le := binary.LittleEndian
	switch t {
	case GGMLF32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case GGMLF16:
		for i := range dst {
			dst[i] = F16ToF32(le.Uint16(src[2*i:]))
		}
	case GGMLBF16:
		for i := range dst {
			dst[i] = BF16ToF32(le.Uint16(src[2*i:]))
		}
	case GGMLQ8_0:
		decodeQ8_0Blocks(dst, src)
	case GGMLQ4_K:
		decodeQ4KBlocks(dst, src)
	case GGMLQ6_K:
		decodeQ6KBlocks(dst, src)
	default:
		return fmt.Errorf("dequantize: ggml type %s is not supported (F32, F16, BF16, Q8_0, Q4_K, Q6_K are)", t)
	}
	return nil
}

// dequantQ8_0 decodes one block. y: (32); x: (34)
func dequantQ8_0(y []float32, x []byte) {
	d := F16ToF32(binary.LittleEndian.Uint16(x))
	for i, q := range x[2:34] {
		y[i] = float32(int8(q)) * d
	}
}

// scaleMinK4 unpacks the j-th 6-bit scale and min of a Q4_K/Q5_K block
// (ggml's get_scale_min_k4).
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xF | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// q4KScales computes the sub-block factors of one Q4_K block x (144
// bytes) as ggml's dequantize_row_q4_K does: s[j] = d·sc_j and
// s[8+j] = dmin·m_j for the eight sub-blocks j. s: (16)
func q4KScales(s []float32, x []byte) {
	d := F16ToF32(binary.LittleEndian.Uint16(x))
	dmin := F16ToF32(binary.LittleEndian.Uint16(x[2:]))
	s = s[:16]
	for j := 0; j < 8; j++ {
		sc, m := scaleMinK4(j, x[4:16])
		s[j], s[8+j] = d*float32(sc), dmin*float32(m)
	}
}

// dequantQ4K decodes one block. y: (256); x: (144)
func dequantQ4K(y []float32, x []byte) {
	var s [16]float32
	q4KScales(s[:], x)
	qs := x[16:144]
	for j := 0; j < 4; j++ { // 64 values per step: two sub-blocks
		d1, mm1, d2, mm2 := s[2*j], s[8+2*j], s[2*j+1], s[8+2*j+1]
		q := qs[32*j : 32*j+32]
		out := y[64*j : 64*j+64]
		for l := 0; l < 32; l++ {
			// float32() rounds the product: never fused into an FMA.
			out[l] = float32(d1*float32(q[l]&0xF)) - mm1
			out[32+l] = float32(d2*float32(q[l]>>4)) - mm2
		}
	}
}

// q6KScales computes the sub-block factors of one Q6_K block x (210
// bytes) as ggml's dequantize_row_q6_K does: s[i] = d·sc_i for the sixteen
// sub-blocks i. s: (16)
func q6KScales(s []float32, x []byte) {
	d := F16ToF32(binary.LittleEndian.Uint16(x[208:]))
	s = s[:16]
	for i, sc := range x[192:208] {
		s[i] = d * float32(int8(sc))
	}
}

// dequantQ6K decodes one block. y: (256); x: (210)
func dequantQ6K(y []float32, x []byte) {
	var s [16]float32
	q6KScales(s[:], x)
	for n := 0; n < 2; n++ { // 128 values per half
		ql, qh, sc := x[64*n:64*n+64], x[128+32*n:128+32*n+32], s[8*n:8*n+8]
		out := y[128*n : 128*n+128]
		for l := 0; l < 32; l++ {
			is := l / 16
			q1 := int8(ql[l]&0xF|(qh[l]>>0&3)<<4) - 32
			q2 := int8(ql[l+32]&0xF|(qh[l]>>2&3)<<4) - 32
			q3 := int8(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int8(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			out[l] = sc[is] * float32(q1)
			out[l+32] = sc[is+2] * float32(q2)
			out[l+64] = sc[is+4] * float32(q3)
			out[l+96] = sc[is+6] * float32(q4)
		}
	}
}

// QuantizeQ8_0 encodes src (a multiple of 32 values) as Q8_0 blocks into
// dst (len(src)/32·34 bytes), as ggml's quantize_row_q8_0_ref does:
// d = max|x|/127 stored as f16, q = round(x/d) with halves away from zero.
func QuantizeQ8_0(dst []byte, src []float32) {
	if len(src)%32 != 0 || len(dst) != len(src)/32*34 {
		panic(fmt.Sprintf("tensor.QuantizeQ8_0: %d values into %d bytes: want a multiple of 32 values and 34 bytes per 32", len(src), len(dst)))
	}
	for b := 0; b < len(src)/32; b++ {
		x, y := src[32*b:32*b+32], dst[34*b:34*b+34]
		var amax float32
		for _, v := range x {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		binary.LittleEndian.PutUint16(y, F32ToF16(d))
		for i, v := range x {
			y[2+i] = byte(int8(math.Round(float64(v * id))))
		}
	}
}

// dequantRowSeg decodes elements [p0, p0+len(dst)) of one stored row of
// type t (F16, BF16, Q8_0, Q4_K or Q6_K) into dst. Each value is computed
// exactly as DequantizeGGML computes it; blocks that the segment covers only
// in part are decoded into a scratch and the needed part copied.
func dequantRowSeg(dst []float32, row []byte, t GGMLType, p0 int) {
	switch t {
	case GGMLF16, GGMLBF16:
		widenHalf(dst, row[2*p0:2*(p0+len(dst))], t == GGMLBF16)
		return
	}
	be, bb := t.BlockSize()
	var tmp [256]float32
	for len(dst) > 0 {
		b := p0 / be
		off := p0 - b*be
		nb := min(be-off, len(dst))
		if off == 0 && len(dst) >= be { // whole blocks in bulk
			nb = len(dst) / be * be
			x := row[b*bb : (b+nb/be)*bb]
			switch t {
			case GGMLQ8_0:
				decodeQ8_0Blocks(dst[:nb], x)
			case GGMLQ4_K:
				decodeQ4KBlocks(dst[:nb], x)
			case GGMLQ6_K:
				decodeQ6KBlocks(dst[:nb], x)
			default:
				panic(fmt.Sprintf("tensor: dequantRowSeg: ggml type %s is not supported", t))
			}
			dst = dst[nb:]
			p0 += nb
			continue
		}
		x := row[b*bb : b*bb+bb]
		y := dst[:nb]
		if nb != be {
			y = tmp[:be]
		}
		switch t {
		case GGMLQ8_0:
			dequantQ8_0(y, x)
		case GGMLQ4_K:
			dequantQ4K(y, x)
		case GGMLQ6_K:
			dequantQ6K(y, x)
		default:
			panic(fmt.Sprintf("tensor: dequantRowSeg: ggml type %s is not supported", t))
		}
		if nb != be {
			copy(dst[:nb], tmp[off:off+nb])
		}
		dst = dst[nb:]
		p0 += nb
	}
}

// decodeQ8_0BlocksGo decodes len(y)/32 whole Q8_0 blocks of x into y.
func decodeQ8_0BlocksGo(y []float32, x []byte) {
	for b := 0; b < len(y)/32; b++ {
		dequantQ8_0(y[32*b:32*b+32], x[34*b:34*b+34])
	}
}

// decodeQ4KBlocksGo decodes len(y)/256 whole Q4_K blocks of x into y.
func decodeQ4KBlocksGo(y []float32, x []byte) {
	for b := 0; b < len(y)/256; b++ {
		dequantQ4K(y[256*b:256*b+256], x[144*b:144*b+144])
	}
}

// decodeQ6KBlocksGo decodes len(y)/256 whole Q6_K blocks of x into y.
func decodeQ6KBlocksGo(y []float32, x []byte) {
	for b := 0; b < len(y)/256; b++ {
		dequantQ6K(y[256*b:256*b+256], x[210*b:210*b+210])
	}
}

// widenHalfGo widens len(y) 16-bit floats (bf16, or IEEE f16) of x into y.
func widenHalfGo(y []float32, x []byte, bf16 bool) {
	x = x[:2*len(y)]
	for i := range y {
		h := binary.LittleEndian.Uint16(x[2*i:])
		if bf16 {
			y[i] = BF16ToF32(h)
		} else {
			y[i] = F16ToF32(h)
		}
	}
}
