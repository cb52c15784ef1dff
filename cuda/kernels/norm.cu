// RMSNorm forward and backward (tensor/rmsnorm.go is the reference).
#include "common.cuh"

// rmsnorm_fwd: one block per row; sum of squares in double, as the CPU.
//   out: (n, d)   rstd: (n) or NULL   x: (n, d)   w: (d)
extern "C" __global__ void rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int n, int d, float eps) {
    __shared__ double sh[32];
    int i = blockIdx.x;
    if (i >= n) return;
    const float *xr = x + (size_t)i * d;
    double ss = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += (double)xr[j] * (double)xr[j];
    ss = block_sum_d(ss, sh);
    float r = (float)(1.0 / sqrt(ss / d + (double)eps));
    if (rstd != NULL && threadIdx.x == 0) rstd[i] = r;
    float *orow = out + (size_t)i * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) orow[j] = __fmul_rn(__fmul_rn(xr[j], r), w[j]);
}

// rmsnorm_bwd_dx: one block per row; dx += r·g⊙w − r³/d·x·Σ(g⊙w⊙x).
//   dx: (n, d)   dout, x: (n, d)   w: (d)   rstd: (n)
extern "C" __global__ void rmsnorm_bwd_dx(float *dx, const float *dout, const float *x, const float *w, const float *rstd, int n, int d) {
    __shared__ double sh[32];
    int i = blockIdx.x;
    if (i >= n) return;
    const float *xr = x + (size_t)i * d, *gr = dout + (size_t)i * d;
    float r = rstd[i];
    double dot = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dot += (double)(gr[j] * w[j] * xr[j]);
    dot = block_sum_d(dot, sh);
    float c = (float)dot * r * r * r / (float)d;
    float *dxr = dx + (size_t)i * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) dxr[j] += r * gr[j] * w[j] - c * xr[j];
}

// rmsnorm_bwd_dw: one thread per column; dw[j] += Σ_i dout[i,j]·x[i,j]·rstd[i]
// (a fixed order, so the result does not depend on scheduling).
extern "C" __global__ void rmsnorm_bwd_dw(float *dw, const float *dout, const float *x, const float *rstd, int n, int d) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float acc = 0;
    for (int i = 0; i < n; i++) acc += dout[(size_t)i * d + j] * x[(size_t)i * d + j] * rstd[i];
    dw[j] += acc;
}
