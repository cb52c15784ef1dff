// Shared helpers of carryon's CUDA kernels. Conventions (same as tensor/):
// row-major float32 tensors, shapes in comments, backward kernels ACCUMULATE
// (+=) into gradients. Every kernel is extern "C" so that the Go side finds
// it by name in the PTX. Integer arguments are int (4 bytes); the Go
// launcher passes each argument in an 8-byte slot (gorgonia.org/cu copies
// 8 bytes per argument), which the driver reads as the parameter's own size.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// block_reduce combines v over the block (blockDim.x a multiple of 32, at
// most 1024) with warp_op, a warp reduction; every thread gets the result.
// sh: 32 elements of shared memory; id: warp_op's identity (the value of
// the slots past the block's warps).
template <typename T, T (*warp_op)(T)>
__device__ __forceinline__ T block_reduce(T v, T *sh, T id) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_op(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : id;
    return warp_op(v);
}

// block_sum_d sums v over the block in double. sh: 32 doubles.
__device__ __forceinline__ double block_sum_d(double v, double *sh) { return block_reduce<double, warp_sum_d>(v, sh, 0.0); }

// block_max is v's maximum over the block. sh: 32 floats.
__device__ __forceinline__ float block_max(float v, float *sh) { return block_reduce<float, warp_max>(v, sh, -INFINITY); }

// sigmoidf in float32 (expf is within 2 ulp, as tensor's vectorised exp).
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
