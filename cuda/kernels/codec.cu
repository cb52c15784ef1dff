// Bridge encoders on the GPU: the symmetric per-token codecs q2..q8 (Group 0)
// and bf16, byte for byte what tensor.Codec.Encode writes (tensor/quant.go
// gives the format). Other codecs (groups, asymmetric, q1) are encoded on
// the host after a download.
//
// Bitwise agreement with the Go encoder: every float operation below is an
// explicitly rounded single operation (__fmul_rn, __fadd_rn, IEEE division),
// so nvcc cannot fuse them into FMAs; Go on amd64 does not fuse either.
#include "common.cuh"

#define CODEC_CLAMP 0x1p126f
#define CODEC_FLUSH 0x1p-100f

__device__ __forceinline__ float sanitize(float v) {
    if (v != v) return 0.f;
    return fminf(fmaxf(v, -CODEC_CLAMP), CODEC_CLAMP);
}

// encode_sym: one block per row (token). Writes the row's scale
// s = max|x|/(2^(k−1)−1) (0 when max|x| < CodecFlush) into scales[r] and
// its codes round(x/s)+2^(k−1), packed LSB-first, into codes[r·rb ..].
//   x: (rows, d)   scales: (rows) float32   codes: rows × rb bytes, rb = ceil(d·k/8)
extern "C" __global__ void encode_sym(unsigned char *scales, unsigned char *codes, const float *x, int rows, int d, int k) {
    __shared__ float shf[32];
    __shared__ float sS;
    int r = blockIdx.x;
    if (r >= rows) return;
    const float *xr = x + (size_t)r * d;
    float amax = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) amax = fmaxf(amax, fabsf(sanitize(xr[j])));
    amax = block_max(amax, shf);
    int half = 1 << (k - 1);
    if (threadIdx.x == 0) {
        float s = amax >= CODEC_FLUSH ? amax / (float)(half - 1) : 0.f;
        sS = s;
        ((float *)scales)[r] = s;
    }
    __syncthreads();
    float s = sS;
    float inv = s == 0.f ? 0.f : 1.f / s;
    float off = __fadd_rn((float)half, 0.5f);
    unsigned hi = (unsigned)(2 * half - 1);
    int rb = (d * k + 7) / 8;
    unsigned char *cr = codes + (size_t)r * rb;
    for (int b = threadIdx.x; b < rb; b += blockDim.x) {
        unsigned acc = 0; // bits 8b .. 8b+7 of the row's stream
        int j0 = (8 * b) / k, j1 = min(d - 1, (8 * b + 7) / k);
        for (int j = j0; j <= j1; j++) {
            unsigned c;
            if (s == 0.f) {
                c = (unsigned)half;
            } else {
                float t = __fadd_rn(__fmul_rn(sanitize(xr[j]), inv), off);
                c = min((unsigned)(int)t, hi);
            }
            int sh = j * k - 8 * b; // may be negative: code starts in the previous byte
            acc |= sh >= 0 ? (c << sh) : (c >> -sh);
        }
        cr[b] = (unsigned char)(acc & 0xff);
    }
}

// encode_bf16: out[i] = bf16(sanitize-if-needed(x[i])), ties to even.
extern "C" __global__ void encode_bf16(__nv_bfloat16 *out, const float *x, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __float2bfloat16_rn(sanitize(x[i]));
}
