// Softmax cross-entropy over rows of logits (the per-chunk core of
// tensor.CrossEntropyLMHead; the logit and gradient GEMMs run in cuBLAS).
#include "common.cuh"

// softmax_xent: one block per row. Overwrites logits with the gradient
// gradScale·(softmax − onehot) and writes the row's loss (logsumexp − z_target)
// to loss; a row with target −1 gets gradient 0 and loss 0. The softmax is
// max-subtracted and summed in double.
//   logits: (rows, V)   targets: (rows)   loss: (rows)
extern "C" __global__ void softmax_xent(float *logits, const int *targets, float *loss, int rows, int V, float gradScale) {
    __shared__ double shd[32];
    __shared__ float shf[32];
    int r = blockIdx.x;
    if (r >= rows) return;
    float *z = logits + (size_t)r * V;
    int tgt = targets[r];
    if (tgt < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) z[j] = 0.f;
        if (threadIdx.x == 0) loss[r] = 0.f;
        return;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = block_max(mx, shf);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float e = expf(z[j] - mx);
        s += (double)e;
    }
    s = block_sum_d(s, shd);
    float zt = z[tgt];
    __syncthreads();
    float k = (float)(gradScale / s);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float e = expf(z[j] - mx) * k;
        z[j] = j == tgt ? e - gradScale : e;
    }
    if (threadIdx.x == 0) loss[r] = (float)(log(s) + (double)mx - (double)zt);
}
