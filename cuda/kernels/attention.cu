// Causal grouped-query attention, FlashAttention-style: a block of query
// rows sweeps tiles of keys held in shared memory with an online softmax, so
// no T×T matrix exists (tensor/attention.go is the reference).
//
// Layout, one sequence:
//   q, out, dq: (T, nHead·hd)   k, v, dk, dv: (T, nKV·hd)   lse: (nHead, T)
// Query head h reads key/value head h / (nHead/nKV); scores are scaled by
// 1/sqrt(hd); row t attends to 0..t.
//
// Grid: (ceil(T/ATT_BQ), nHead); block: ATT_WARPS·32 threads; each warp owns
// ATT_BQ/ATT_WARPS query rows, lane l owns dimensions l, l+32, … of them.
// Dynamic shared memory: attn_fwd (ATT_BQ·hd + ATT_BK·(hd+1) + ATT_BK·hd)
// floats, hd <= 128; attn_bwd adds the dout tile and two (ATT_BK, hd+1)
// accumulators, hd <= 64. The Go side checks both bounds.
#include "common.cuh"

#define ATT_BQ 16
#define ATT_BK 32
#define ATT_WARPS 4
#define ATT_RPW (ATT_BQ / ATT_WARPS)
#define ATT_MAXE 4 // hd <= 128: dimensions per lane

extern "C" __global__ void attn_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                                    int T, int nHead, int nKV, int hd) {
    extern __shared__ float sm[];
    float *qs = sm;                       // (ATT_BQ, hd)
    float *ks = qs + ATT_BQ * hd;          // (ATT_BK, hd+1)
    float *vs = ks + ATT_BK * (hd + 1);    // (ATT_BK, hd)
    int h = blockIdx.y, kvh = h / (nHead / nKV);
    int i0 = blockIdx.x * ATT_BQ;
    int qst = nHead * hd, kst = nKV * hd;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float scale = rsqrtf((float)hd);

    for (int e = threadIdx.x; e < ATT_BQ * hd; e += blockDim.x) {
        int r = e / hd, d = e % hd, i = i0 + r;
        qs[e] = i < T ? q[(size_t)i * qst + h * hd + d] : 0.f;
    }
    float m[ATT_RPW], l[ATT_RPW], acc[ATT_RPW][ATT_MAXE];
    for (int r = 0; r < ATT_RPW; r++) {
        m[r] = -INFINITY; l[r] = 0.f;
        for (int e = 0; e < ATT_MAXE; e++) acc[r][e] = 0.f;
    }
    int last = min(T - 1, i0 + ATT_BQ - 1);
    for (int j0 = 0; j0 <= last; j0 += ATT_BK) {
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_BK * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            float kv = 0.f, vv = 0.f;
            if (j < T) { kv = k[(size_t)j * kst + kvh * hd + d]; vv = v[(size_t)j * kst + kvh * hd + d]; }
            ks[jj * (hd + 1) + d] = kv;
            vs[jj * hd + d] = vv;
        }
        __syncthreads();
        for (int r = 0; r < ATT_RPW; r++) {
            int rr = warp * ATT_RPW + r, i = i0 + rr;
            if (i >= T) break;
            int j = j0 + lane;
            float s = -INFINITY;
            if (j <= i) {
                float dot = 0.f;
                const float *qr = qs + rr * hd, *kr = ks + lane * (hd + 1);
                for (int d = 0; d < hd; d++) dot += qr[d] * kr[d];
                s = dot * scale;
            }
            float mt = warp_max(s), mn = fmaxf(m[r], mt);
            float p = s == -INFINITY ? 0.f : expf(s - mn);
            float corr = m[r] == -INFINITY ? 0.f : expf(m[r] - mn);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = mn;
            for (int e = 0; e < ATT_MAXE; e++) acc[r][e] *= corr;
            int nj = min(ATT_BK, i - j0 + 1);
            for (int jj = 0; jj < nj; jj++) {
                float pj = __shfl_sync(FULL_MASK, p, jj);
                for (int e = 0; e < ATT_MAXE; e++) {
                    int d = lane + 32 * e;
                    if (d < hd) acc[r][e] += pj * vs[jj * hd + d];
                }
            }
        }
    }
    for (int r = 0; r < ATT_RPW; r++) {
        int i = i0 + warp * ATT_RPW + r;
        if (i >= T) break;
        float inv = 1.f / l[r];
        for (int e = 0; e < ATT_MAXE; e++) {
            int d = lane + 32 * e;
            if (d < hd) out[(size_t)i * qst + h * hd + d] = acc[r][e] * inv;
        }
        if (lse != NULL && lane == 0) lse[(size_t)h * T + i] = m[r] + logf(l[r]);
    }
}

// attn_bwd accumulates dq, dk and dv (any may be NULL) from dout, using the
// saved out and lse: with p = exp(s − lse), dP = dout·vᵀ, Di = dout_i·out_i,
// dS = p(dP − Di): dq += scale·dS·k, dk += scale·dSᵀ·q, dv += pᵀ·dout. dk and
// dv are summed per block in shared memory, then added with atomics (the
// order of those additions varies from run to run: results agree with the
// CPU within rounding, not bitwise).
extern "C" __global__ void attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                    const float *v, const float *out, const float *lse, int T, int nHead, int nKV, int hd) {
    extern __shared__ float sm[];
    float *qs = sm;                       // (ATT_BQ, hd)
    float *dos = qs + ATT_BQ * hd;         // (ATT_BQ, hd)
    float *ks = dos + ATT_BQ * hd;         // (ATT_BK, hd+1)
    float *vs = ks + ATT_BK * (hd + 1);    // (ATT_BK, hd+1)
    float *dks = vs + ATT_BK * (hd + 1);   // (ATT_BK, hd+1)
    float *dvs = dks + ATT_BK * (hd + 1);  // (ATT_BK, hd+1)
    int h = blockIdx.y, kvh = h / (nHead / nKV);
    int i0 = blockIdx.x * ATT_BQ;
    int qst = nHead * hd, kst = nKV * hd, hs = hd + 1;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float scale = rsqrtf((float)hd);

    for (int e = threadIdx.x; e < ATT_BQ * hd; e += blockDim.x) {
        int r = e / hd, d = e % hd, i = i0 + r;
        bool in = i < T;
        qs[e] = in ? q[(size_t)i * qst + h * hd + d] : 0.f;
        dos[e] = in ? dout[(size_t)i * qst + h * hd + d] : 0.f;
    }
    __syncthreads();
    float Di[ATT_RPW], L[ATT_RPW], dqa[ATT_RPW][2];
    for (int r = 0; r < ATT_RPW; r++) {
        int rr = warp * ATT_RPW + r, i = i0 + rr;
        float s = 0.f;
        for (int d = lane; d < hd; d += 32) s += dos[rr * hd + d] * (i < T ? out[(size_t)i * qst + h * hd + d] : 0.f);
        Di[r] = warp_sum(s);
        L[r] = i < T ? lse[(size_t)h * T + i] : 0.f;
        dqa[r][0] = dqa[r][1] = 0.f;
    }
    int last = min(T - 1, i0 + ATT_BQ - 1);
    for (int j0 = 0; j0 <= last; j0 += ATT_BK) {
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_BK * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            float kv = 0.f, vv = 0.f;
            if (j < T) { kv = k[(size_t)j * kst + kvh * hd + d]; vv = v[(size_t)j * kst + kvh * hd + d]; }
            ks[jj * hs + d] = kv;
            vs[jj * hs + d] = vv;
            dks[jj * hs + d] = 0.f;
            dvs[jj * hs + d] = 0.f;
        }
        __syncthreads();
        for (int r = 0; r < ATT_RPW; r++) {
            int rr = warp * ATT_RPW + r, i = i0 + rr;
            if (i >= T) break;
            int j = j0 + lane;
            float p = 0.f, ds = 0.f;
            if (j <= i) {
                const float *qr = qs + rr * hd, *kr = ks + lane * hs, *vr = vs + lane * hs, *dr = dos + rr * hd;
                float dot = 0.f, dp = 0.f;
                for (int d = 0; d < hd; d++) { dot += qr[d] * kr[d]; dp += dr[d] * vr[d]; }
                p = expf(dot * scale - L[r]);
                ds = p * (dp - Di[r]);
            }
            // dq_i += scale·Σ_j ds_j k_j (lane owns dims lane, lane+32)
            int nj = min(ATT_BK, i - j0 + 1);
            for (int jj = 0; jj < nj; jj++) {
                float dsj = __shfl_sync(FULL_MASK, ds, jj);
                for (int e = 0; e < 2; e++) {
                    int d = lane + 32 * e;
                    if (d < hd) dqa[r][e] += scale * dsj * ks[jj * hs + d];
                }
            }
            // dk_j += scale·ds_j q_i, dv_j += p_j dout_i (lane owns key j)
            if (j <= i) {
                const float *qr = qs + rr * hd, *dr = dos + rr * hd;
                for (int d = 0; d < hd; d++) {
                    atomicAdd(&dks[lane * hs + d], scale * ds * qr[d]);
                    atomicAdd(&dvs[lane * hs + d], p * dr[d]);
                }
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_BK * hd; e += blockDim.x) {
            int jj = e / hd, d = e % hd, j = j0 + jj;
            if (j >= T) continue;
            if (dk != NULL) atomicAdd(&dk[(size_t)j * kst + kvh * hd + d], dks[jj * hs + d]);
            if (dv != NULL) atomicAdd(&dv[(size_t)j * kst + kvh * hd + d], dvs[jj * hs + d]);
        }
    }
    if (dq == NULL) return;
    for (int r = 0; r < ATT_RPW; r++) {
        int i = i0 + warp * ATT_RPW + r;
        if (i >= T) break;
        for (int e = 0; e < 2; e++) {
            int d = lane + 32 * e;
            if (d < hd) dq[(size_t)i * qst + h * hd + d] += dqa[r][e];
        }
    }
}
