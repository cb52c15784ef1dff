// AVX2+FMA exp kernels (see exp.go, exp_amd64.go). The table holds the
// constants of expf32, each repeated over 8 lanes.

//go:build amd64 && !purego

#include "textflag.h"

#define HI 0
#define LO 32
#define LOG2E 64
#define LN2HI 96
#define LN2LO 128
#define C0 160
#define C1 192
#define C2 224
#define C3 256
#define C4 288
#define C5 320
#define ONE 352
#define INF 384
#define SIGN 416
#define I127 448

DATA ·expTab+0(SB)/4, $0x42b17217
DATA ·expTab+4(SB)/4, $0x42b17217
DATA ·expTab+8(SB)/4, $0x42b17217
DATA ·expTab+12(SB)/4, $0x42b17217
DATA ·expTab+16(SB)/4, $0x42b17217
DATA ·expTab+20(SB)/4, $0x42b17217
DATA ·expTab+24(SB)/4, $0x42b17217
DATA ·expTab+28(SB)/4, $0x42b17217
DATA ·expTab+32(SB)/4, $0xc2aeac4f
DATA ·expTab+36(SB)/4, $0xc2aeac4f
DATA ·expTab+40(SB)/4, $0xc2aeac4f
DATA ·expTab+44(SB)/4, $0xc2aeac4f
DATA ·expTab+48(SB)/4, $0xc2aeac4f
DATA ·expTab+52(SB)/4, $0xc2aeac4f
DATA ·expTab+56(SB)/4, $0xc2aeac4f
DATA ·expTab+60(SB)/4, $0xc2aeac4f
DATA ·expTab+64(SB)/4, $0x3fb8aa3b
DATA ·expTab+68(SB)/4, $0x3fb8aa3b
DATA ·expTab+72(SB)/4, $0x3fb8aa3b
DATA ·expTab+76(SB)/4, $0x3fb8aa3b
DATA ·expTab+80(SB)/4, $0x3fb8aa3b
DATA ·expTab+84(SB)/4, $0x3fb8aa3b
DATA ·expTab+88(SB)/4, $0x3fb8aa3b
DATA ·expTab+92(SB)/4, $0x3fb8aa3b
DATA ·expTab+96(SB)/4, $0x3f318000
DATA ·expTab+100(SB)/4, $0x3f318000
DATA ·expTab+104(SB)/4, $0x3f318000
DATA ·expTab+108(SB)/4, $0x3f318000
DATA ·expTab+112(SB)/4, $0x3f318000
DATA ·expTab+116(SB)/4, $0x3f318000
DATA ·expTab+120(SB)/4, $0x3f318000
DATA ·expTab+124(SB)/4, $0x3f318000
DATA ·expTab+128(SB)/4, $0xb95e8083
DATA ·expTab+132(SB)/4, $0xb95e8083
DATA ·expTab+136(SB)/4, $0xb95e8083
DATA ·expTab+140(SB)/4, $0xb95e8083
DATA ·expTab+144(SB)/4, $0xb95e8083
DATA ·expTab+148(SB)/4, $0xb95e8083
DATA ·expTab+152(SB)/4, $0xb95e8083
DATA ·expTab+156(SB)/4, $0xb95e8083
DATA ·expTab+160(SB)/4, $0x39506967
DATA ·expTab+164(SB)/4, $0x39506967
DATA ·expTab+168(SB)/4, $0x39506967
DATA ·expTab+172(SB)/4, $0x39506967
DATA ·expTab+176(SB)/4, $0x39506967
DATA ·expTab+180(SB)/4, $0x39506967
DATA ·expTab+184(SB)/4, $0x39506967
DATA ·expTab+188(SB)/4, $0x39506967
DATA ·expTab+192(SB)/4, $0x3ab743ce
DATA ·expTab+196(SB)/4, $0x3ab743ce
DATA ·expTab+200(SB)/4, $0x3ab743ce
DATA ·expTab+204(SB)/4, $0x3ab743ce
DATA ·expTab+208(SB)/4, $0x3ab743ce
DATA ·expTab+212(SB)/4, $0x3ab743ce
DATA ·expTab+216(SB)/4, $0x3ab743ce
DATA ·expTab+220(SB)/4, $0x3ab743ce
DATA ·expTab+224(SB)/4, $0x3c088908
DATA ·expTab+228(SB)/4, $0x3c088908
DATA ·expTab+232(SB)/4, $0x3c088908
DATA ·expTab+236(SB)/4, $0x3c088908
DATA ·expTab+240(SB)/4, $0x3c088908
DATA ·expTab+244(SB)/4, $0x3c088908
DATA ·expTab+248(SB)/4, $0x3c088908
DATA ·expTab+252(SB)/4, $0x3c088908
DATA ·expTab+256(SB)/4, $0x3d2aa9c1
DATA ·expTab+260(SB)/4, $0x3d2aa9c1
DATA ·expTab+264(SB)/4, $0x3d2aa9c1
DATA ·expTab+268(SB)/4, $0x3d2aa9c1
DATA ·expTab+272(SB)/4, $0x3d2aa9c1
DATA ·expTab+276(SB)/4, $0x3d2aa9c1
DATA ·expTab+280(SB)/4, $0x3d2aa9c1
DATA ·expTab+284(SB)/4, $0x3d2aa9c1
DATA ·expTab+288(SB)/4, $0x3e2aaaaa
DATA ·expTab+292(SB)/4, $0x3e2aaaaa
DATA ·expTab+296(SB)/4, $0x3e2aaaaa
DATA ·expTab+300(SB)/4, $0x3e2aaaaa
DATA ·expTab+304(SB)/4, $0x3e2aaaaa
DATA ·expTab+308(SB)/4, $0x3e2aaaaa
DATA ·expTab+312(SB)/4, $0x3e2aaaaa
DATA ·expTab+316(SB)/4, $0x3e2aaaaa
DATA ·expTab+320(SB)/4, $0x3f000000
DATA ·expTab+324(SB)/4, $0x3f000000
DATA ·expTab+328(SB)/4, $0x3f000000
DATA ·expTab+332(SB)/4, $0x3f000000
DATA ·expTab+336(SB)/4, $0x3f000000
DATA ·expTab+340(SB)/4, $0x3f000000
DATA ·expTab+344(SB)/4, $0x3f000000
DATA ·expTab+348(SB)/4, $0x3f000000
DATA ·expTab+352(SB)/4, $0x3f800000
DATA ·expTab+356(SB)/4, $0x3f800000
DATA ·expTab+360(SB)/4, $0x3f800000
DATA ·expTab+364(SB)/4, $0x3f800000
DATA ·expTab+368(SB)/4, $0x3f800000
DATA ·expTab+372(SB)/4, $0x3f800000
DATA ·expTab+376(SB)/4, $0x3f800000
DATA ·expTab+380(SB)/4, $0x3f800000
DATA ·expTab+384(SB)/4, $0x7f800000
DATA ·expTab+388(SB)/4, $0x7f800000
DATA ·expTab+392(SB)/4, $0x7f800000
DATA ·expTab+396(SB)/4, $0x7f800000
DATA ·expTab+400(SB)/4, $0x7f800000
DATA ·expTab+404(SB)/4, $0x7f800000
DATA ·expTab+408(SB)/4, $0x7f800000
DATA ·expTab+412(SB)/4, $0x7f800000
DATA ·expTab+416(SB)/4, $0x80000000
DATA ·expTab+420(SB)/4, $0x80000000
DATA ·expTab+424(SB)/4, $0x80000000
DATA ·expTab+428(SB)/4, $0x80000000
DATA ·expTab+432(SB)/4, $0x80000000
DATA ·expTab+436(SB)/4, $0x80000000
DATA ·expTab+440(SB)/4, $0x80000000
DATA ·expTab+444(SB)/4, $0x80000000
DATA ·expTab+448(SB)/4, $0x0000007f
DATA ·expTab+452(SB)/4, $0x0000007f
DATA ·expTab+456(SB)/4, $0x0000007f
DATA ·expTab+460(SB)/4, $0x0000007f
DATA ·expTab+464(SB)/4, $0x0000007f
DATA ·expTab+468(SB)/4, $0x0000007f
DATA ·expTab+472(SB)/4, $0x0000007f
DATA ·expTab+476(SB)/4, $0x0000007f
GLOBL ·expTab(SB), RODATA|NOPTR, $480

// EXP8 sets Y4 = e^Y0 lane-wise by the algorithm of expf32 (Cephes expf):
// n = round(x·log2e) (to nearest even), r = x − n·ln2 in two parts, a
// degree-6 polynomial, and y·2ⁿ in two factors. x > HI gives +Inf, x < LO
// gives 0, NaN stays NaN. R11 points at expTab; clobbers Y1-Y7.
#define EXP8 \
	VMINPS HI(R11), Y0, Y1; \
	VMAXPS LO(R11), Y1, Y1; \
	VMULPS LOG2E(R11), Y1, Y2; \
	VROUNDPS $0, Y2, Y2; \
	VFNMADD231PS LN2HI(R11), Y2, Y1; \
	VFNMADD231PS LN2LO(R11), Y2, Y1; \
	VMULPS Y1, Y1, Y3; \
	VMOVUPS C0(R11), Y4; \
	VFMADD213PS C1(R11), Y1, Y4; \
	VFMADD213PS C2(R11), Y1, Y4; \
	VFMADD213PS C3(R11), Y1, Y4; \
	VFMADD213PS C4(R11), Y1, Y4; \
	VFMADD213PS C5(R11), Y1, Y4; \
	VFMADD213PS Y1, Y3, Y4; \
	VADDPS ONE(R11), Y4, Y4; \
	VCVTPS2DQ Y2, Y5; \
	VPSRAD $1, Y5, Y6; \
	VPSUBD Y6, Y5, Y5; \
	VPADDD I127(R11), Y6, Y6; \
	VPADDD I127(R11), Y5, Y5; \
	VPSLLD $23, Y6, Y6; \
	VPSLLD $23, Y5, Y5; \
	VMULPS Y6, Y4, Y4; \
	VMULPS Y5, Y4, Y4; \
	VCMPPS $14, HI(R11), Y0, Y7; \
	VBLENDVPS Y7, INF(R11), Y4, Y4; \
	VCMPPS $1, LO(R11), Y0, Y7; \
	VANDNPS Y4, Y7, Y4; \
	VCMPPS $3, Y0, Y0, Y7; \
	VBLENDVPS Y7, Y0, Y4, Y4

// func expSubSumAVX2(dst, src *float32, n int, m float32) float64
// dst[i] = e^(src[i] − m); returns Σ dst[i] added in float64. n % 8 == 0.
TEXT ·expSubSumAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	LEAQ ·expTab(SB), R11
	VBROADCASTSS m+24(FP), Y9
	VXORPD Y10, Y10, Y10
	VXORPD Y11, Y11, Y11
expsub_loop:
	TESTQ CX, CX
	JEQ expsub_done
	VMOVUPS (SI), Y0
	VSUBPS Y9, Y0, Y0
	EXP8
	VMOVUPS Y4, (DI)
	VCVTPS2PD X4, Y5
	VEXTRACTF128 $1, Y4, X6
	VCVTPS2PD X6, Y6
	VADDPD Y5, Y10, Y10
	VADDPD Y6, Y11, Y11
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP expsub_loop
expsub_done:
	VADDPD Y11, Y10, Y10
	VEXTRACTF128 $1, Y10, X11
	VADDPD X11, X10, X10
	VHADDPD X10, X10, X10
	VMOVSD X10, ret+32(FP)
	VZEROUPPER
	RET

// func swigluAVX2(out, gate, up *float32, n int)
// out[i] = g/(1 + e^−g)·up[i], g = gate[i]. n % 8 == 0.
TEXT ·swigluAVX2(SB), NOSPLIT, $0-32
	MOVQ out+0(FP), DI
	MOVQ gate+8(FP), SI
	MOVQ up+16(FP), DX
	MOVQ n+24(FP), CX
	LEAQ ·expTab(SB), R11
swiglu_loop:
	TESTQ CX, CX
	JEQ swiglu_done
	VMOVUPS (SI), Y8
	VXORPS SIGN(R11), Y8, Y0
	EXP8
	VADDPS ONE(R11), Y4, Y4
	VDIVPS Y4, Y8, Y5
	VMULPS (DX), Y5, Y5
	VMOVUPS Y5, (DI)
	ADDQ $32, SI
	ADDQ $32, DX
	ADDQ $32, DI
	SUBQ $8, CX
	JMP swiglu_loop
swiglu_done:
	VZEROUPPER
	RET

// func sigmoidAVX2(out, x *float32, n int, silu bool)
// out[i] = σ(x[i]) = 1/(1 + e^−x), or x·σ(x) when silu. n % 8 == 0.
TEXT ·sigmoidAVX2(SB), NOSPLIT, $0-25
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ n+16(FP), CX
	MOVBLZX silu+24(FP), DX
	LEAQ ·expTab(SB), R11
	VMOVUPS ONE(R11), Y12
sigmoid_loop:
	TESTQ CX, CX
	JEQ sigmoid_done
	VMOVUPS (SI), Y8
	VXORPS SIGN(R11), Y8, Y0
	EXP8
	VADDPS Y12, Y4, Y4
	VDIVPS Y4, Y12, Y5
	TESTQ DX, DX
	JEQ sigmoid_store
	VMULPS Y8, Y5, Y5
sigmoid_store:
	VMOVUPS Y5, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	SUBQ $8, CX
	JMP sigmoid_loop
sigmoid_done:
	VZEROUPPER
	RET

// func maxAVX2(x *float32, n int) float32
// The largest of x[0:n] (NaNs are not propagated). n % 8 == 0, n ≥ 8.
TEXT ·maxAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VMOVUPS (SI), Y0
	ADDQ $32, SI
	SUBQ $8, CX
max_loop:
	TESTQ CX, CX
	JEQ max_done
	VMAXPS (SI), Y0, Y0
	ADDQ $32, SI
	SUBQ $8, CX
	JMP max_loop
max_done:
	VEXTRACTF128 $1, Y0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0x4E, X0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0xB1, X0, X1
	VMAXPS X1, X0, X0
	VMOVSS X0, ret+16(FP)
	VZEROUPPER
	RET

// func scaleAVX2(x *float32, n int, s float32)
// x[i] *= s. n % 8 == 0.
TEXT ·scaleAVX2(SB), NOSPLIT, $0-20
	MOVQ x+0(FP), SI
	MOVQ n+8(FP), CX
	VBROADCASTSS s+16(FP), Y1
scale_loop:
	TESTQ CX, CX
	JEQ scale_done
	VMULPS (SI), Y1, Y0
	VMOVUPS Y0, (SI)
	ADDQ $32, SI
	SUBQ $8, CX
	JMP scale_loop
scale_done:
	VZEROUPPER
	RET
