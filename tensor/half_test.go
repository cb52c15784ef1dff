package tensor

import (
	"math"
	"testing"
)

func TestHalfRoundTrip(t *testing.T) {
	// Every f16 and bf16 bit pattern widens and narrows back to itself
	// (NaNs excepted, which must stay NaN).
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			if g := F16ToF32(F32ToF16(f)); !math.IsNaN(float64(g)) {
				t.Fatalf("f16 NaN %#04x lost", h)
			}
			continue
		}
		if got := F32ToF16(f); got != uint16(h) {
			t.Fatalf("f16 %#04x -> %v -> %#04x", h, f, got)
		}
		b := BF16ToF32(uint16(h))
		if math.IsNaN(float64(b)) {
			continue
		}
		if got := F32ToBF16(b); got != uint16(h) {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, b, got)
		}
	}
}

func TestHalfRounding(t *testing.T) {
	cases := []struct {
		f    float32
		f16  uint16
		bf16 uint16
	}{
		{1, 0x3c00, 0x3f80},
		{-2, 0xc000, 0xc000},
		{65504, 0x7bff, 0x4780},            // 0x477fe000 rounds up in bf16
		{1e6, 0x7c00, 0x4974},              // f16 overflows to +Inf
		{5.960464477539063e-08, 1, 0x3380}, // smallest f16 subnormal
		{1 + 1.0/2048, 0x3c00, 0x3f80},     // tie at f16 rounds to even
		{1 + 3.0/2048, 0x3c02, 0x3f80},     // tie rounds up to even
	}
	for _, c := range cases {
		if got := F32ToF16(c.f); got != c.f16 {
			t.Errorf("F32ToF16(%v) = %#04x, want %#04x", c.f, got, c.f16)
		}
		if got := F32ToBF16(c.f); got != c.bf16 {
			t.Errorf("F32ToBF16(%v) = %#04x, want %#04x", c.f, got, c.bf16)
		}
	}
}
