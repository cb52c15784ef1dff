// AdamW (tensor/adamw.go is the reference: PyTorch's semantics, float64
// arithmetic per element, float32 storage).
#include "common.cuh"

// adamw: p ← p·decay; m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
// p ← p − stepSize·m/(√v/bc2 + eps), with stepSize = lr/(1−β1ᵗ),
// bc2 = √(1−β2ᵗ), decay = 1 − lr·wd computed on the host.
//   p, g, m, v: (n)
extern "C" __global__ void adamw(float *p, const float *g, float *m, float *v, long long n, double beta1, double beta2,
                                 double stepSize, double bc2, double decay, double eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double gi = (double)g[i];
    double mi = beta1 * (double)m[i] + (1 - beta1) * gi;
    double vi = beta2 * (double)v[i] + (1 - beta2) * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    double pi = (double)p[i] * decay;
    p[i] = (float)(pi - stepSize * mi / (sqrt(vi) / bc2 + eps));
}
