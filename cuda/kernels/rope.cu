// Rotary position embedding (tensor/rope.go is the reference).
#include "common.cuh"

// rope: rotates x in place by sign·angle (sign −1 is the inverse and the
// backward pass). One thread per (row, head, pair).
//   x: (n, nHeads·hd)   pos: (n)   cos, sin: (maxPos, hd/2)
//   interleaved 0: pairs (i, i+hd/2) (HF rotate-half); 1: pairs (2i, 2i+1)
extern "C" __global__ void rope(float *x, const int *pos, const float *cosT, const float *sinT, int n, int nHeads, int hd, float sign, int interleaved) {
    int half = hd / 2;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)n * nHeads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    long long th = idx / half; // t·nHeads + h
    int t = (int)(th / nHeads);
    float *v = x + th * hd;
    int p = pos[t];
    float c = cosT[(size_t)p * half + i], s = sign * sinT[(size_t)p * half + i];
    int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    float x0 = v[a], x1 = v[b];
    v[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[b] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}
