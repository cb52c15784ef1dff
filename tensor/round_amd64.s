// AVX2 rounding of float32 to bf16, widened back to float32 (see
// roundBF16F32Row in gemm_bf16.go, whose Go loop is the reference).

//go:build amd64 && !purego

#include "textflag.h"

DATA roundbf16<>+0x00(SB)/4, $0x00007fff // the rounding bias below the tie
DATA roundbf16<>+0x04(SB)/4, $0x00000001 // the lowest kept bit (ties to even)
DATA roundbf16<>+0x08(SB)/4, $0xffff0000 // the bits bf16 keeps
DATA roundbf16<>+0x0c(SB)/4, $0x7f800000 // the exponent (= +Inf's bits)
DATA roundbf16<>+0x10(SB)/4, $0x80000000 // the sign
DATA roundbf16<>+0x14(SB)/4, $0x7fffffff // all but the sign
DATA roundbf16<>+0x18(SB)/4, $0x00400000 // a NaN's quiet bit
GLOBL roundbf16<>(SB), RODATA|NOPTR, $28

// func roundBF16F32AVX2(n int, dst, src *float32)
// n is a multiple of 8. Per lane, for the bits b of src[i]:
//   r = (b + 0x7fff + (b>>16)&1) &^ 0xffff      nearest even
//   r = b & sign          where b's exponent is 0 (zero, denormal)
//   r = (b | quiet) &^ 0xffff   where b is a NaN
TEXT ·roundBF16F32AVX2(SB), NOSPLIT, $0-24
	MOVQ n+0(FP), CX
	MOVQ dst+8(FP), DI
	MOVQ src+16(FP), SI
	VPBROADCASTD roundbf16<>+0x00(SB), Y8
	VPBROADCASTD roundbf16<>+0x04(SB), Y9
	VPBROADCASTD roundbf16<>+0x08(SB), Y10
	VPBROADCASTD roundbf16<>+0x0c(SB), Y11
	VPBROADCASTD roundbf16<>+0x10(SB), Y12
	VPBROADCASTD roundbf16<>+0x14(SB), Y13
	VPBROADCASTD roundbf16<>+0x18(SB), Y14
	VPXOR        Y15, Y15, Y15
	SHRQ         $3, CX
	JZ           done

loop:
	VMOVDQU   (SI), Y0
	VPSRLD    $16, Y0, Y1
	VPAND     Y9, Y1, Y1
	VPADDD    Y8, Y0, Y2
	VPADDD    Y1, Y2, Y2
	VPAND     Y10, Y2, Y2       // r: nearest even
	VPAND     Y11, Y0, Y3
	VPCMPEQD  Y15, Y3, Y3       // exponent 0
	VPAND     Y12, Y0, Y4
	VPBLENDVB Y3, Y4, Y2, Y2    // r = sign there
	VPAND     Y13, Y0, Y5
	VPCMPGTD  Y11, Y5, Y5       // |b| above +Inf: NaN
	VPOR      Y14, Y0, Y6
	VPAND     Y10, Y6, Y6
	VPBLENDVB Y5, Y6, Y2, Y2    // r = quiet NaN there
	VMOVDQU   Y2, (DI)
	ADDQ      $32, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       loop

done:
	VZEROUPPER
	RET
