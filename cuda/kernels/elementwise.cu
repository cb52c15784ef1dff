// Elementwise ops, embeddings and conversions (tensor/elementwise.go,
// swiglu.go, sigmoid.go, embedding.go, half.go are the references). One
// thread per element; n is the element count.
#include "common.cuh"

#define IDX long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; if (i >= n) return;

// add_inplace: dst += src.   dst, src: (n)
extern "C" __global__ void add_inplace(float *dst, const float *src, long long n) { IDX dst[i] += src[i]; }

// scale: x *= s.   x: (n)
extern "C" __global__ void scale(float *x, float s, long long n) { IDX x[i] *= s; }

// add_bias: x[r, c] += bias[c].   x: (rows, cols), n = rows·cols
extern "C" __global__ void add_bias(float *x, const float *bias, int cols, long long n) { IDX x[i] += bias[i % cols]; }

// swiglu_fwd: out = silu(gate)·up.   out, gate, up: (n)
extern "C" __global__ void swiglu_fwd(float *out, const float *gate, const float *up, long long n) {
    IDX float g = gate[i];
    out[i] = g * sigmoidf(g) * up[i];
}

// swiglu_bwd: dgate += dout·up·σ(g)(1 + g(1−σ(g))), dup += dout·silu(g); either may be NULL.
extern "C" __global__ void swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up, long long n) {
    IDX float g = gate[i], s = sigmoidf(g);
    if (dgate != NULL) dgate[i] += dout[i] * up[i] * s * (1.f + g * (1.f - s));
    if (dup != NULL) dup[i] += dout[i] * g * s;
}

// sigmoid_fwd: out = σ(x) (out may alias x).
extern "C" __global__ void sigmoid_fwd(float *out, const float *x, long long n) { IDX out[i] = sigmoidf(x[i]); }

// sigmoid_bwd: dx += dout·out·(1−out).
extern "C" __global__ void sigmoid_bwd(float *dx, const float *dout, const float *out, long long n) {
    IDX float s = out[i];
    dx[i] += dout[i] * s * (1.f - s);
}

// mul_fwd: out = a⊙b.
extern "C" __global__ void mul_fwd(float *out, const float *a, const float *b, long long n) { IDX out[i] = a[i] * b[i]; }

// mul_bwd: da += dout⊙b, db += dout⊙a; either may be NULL.
extern "C" __global__ void mul_bwd(float *da, float *db, const float *dout, const float *a, const float *b, long long n) {
    IDX if (da != NULL) da[i] += dout[i] * b[i];
    if (db != NULL) db[i] += dout[i] * a[i];
}

// embed_f32 / embed_bf16: out[t, :] = table[ids[t], :].
//   out: (T, d), n = T·d   table: (V, d)   ids: (T)
extern "C" __global__ void embed_f32(float *out, const float *table, const int *ids, int d, long long n) {
    IDX out[i] = table[(size_t)ids[i / d] * d + i % d];
}
extern "C" __global__ void embed_bf16(float *out, const __nv_bfloat16 *table, const int *ids, int d, long long n) {
    IDX out[i] = __bfloat162float(table[(size_t)ids[i / d] * d + i % d]);
}

// f32_to_bf16: round to nearest, ties to even (tensor.F32ToBF16; NaN stays NaN).
extern "C" __global__ void f32_to_bf16(__nv_bfloat16 *out, const float *x, long long n) { IDX out[i] = __float2bfloat16_rn(x[i]); }

// bf16_to_f32: exact widening.
extern "C" __global__ void bf16_to_f32(float *out, const __nv_bfloat16 *x, long long n) { IDX out[i] = __bfloat162float(x[i]); }

// sumsq: *acc += Σ x² in double (one atomic per block). acc: one double.
extern "C" __global__ void sumsq(double *acc, const float *x, long long n) {
    __shared__ double sh[32];
    double s = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}
