/*
train_empo.cu: the Qwen2 model of train_empo.c on one NVIDIA GPU: forward, backward of the masked
next-token loss (or any dLoss/dlogp the caller sets), AdamW with global-norm clipping.

Same checkpoint (checkpoint.h), same parameter layout, same function names and semantics as the CPU
reference, which stays the readable specification; this file is about doing it fast:
  - bf16 weights and activations, fp32 accumulation everywhere (PRECISION=FP32 builds it all in
    fp32 instead, for tight checks against the reference; -DENABLE_FP32)
  - matmuls on cuBLASLt (bias fused into the epilogue; weight gradients accumulated in fp32 by the
    GEMM itself through beta = 1)
  - flash-style causal GQA attention, forward and backward, that never forms the T x T matrix
  - the LM head, log-softmax and its gradient in chunks of rows: the B*T*V logits never exist
  - AdamW on fp32 master weights, or directly on the bf16 weights with stochastic rounding
  - activation recomputation (-r) trades compute for memory, as in llm.c

Read it top to bottom: 1. utilities and precision, 2. kernels, one forward/backward pair per op,
3. matmul, 4. the model (one allocation each for params, grads, optimizer state and activations),
5. forward / backward / update, 6. main: a benchmark (random init at any shape) and a training loop
on random tokens. Notation as in train_empo.c: B, T, C, NH, NKV, HD, QKV = (NH + 2*NKV)*HD, I, V,
L, N = B*T.

Status: compiled for sm_80 and sm_90; not yet run on a GPU (see doc/cuda.md).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#include <time.h>
#include <stdint.h>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include "empoc/utils.h"
#include "empoc/json.h"
// checkpoint.h is C that also compiles as C++; g++ -Wextra flags its `n < CH ? n : CH` (an enum
// constant against a size_t) in C++ only. Harmless there, so silenced for the include.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wextra"
#include "empoc/checkpoint.h"
#include "empoc/args.h"
#pragma GCC diagnostic pop

// ----------------------------------------------------------------------------
// 1. utilities and precision


static void cuda_check(cudaError_t e, const char *file, int line) {
    if (e != cudaSuccess) { fprintf(stderr, "error: CUDA: %s at %s:%d\n", cudaGetErrorString(e), file, line); exit(1); }
}
static void cublas_check(cublasStatus_t s, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "error: cuBLAS status %d at %s:%d\n", (int)s, file, line); exit(1); }
}
#define cudaCheck(x) cuda_check((x), __FILE__, __LINE__)
#define cublasCheck(x) cublas_check((x), __FILE__, __LINE__)
// after every kernel launch: catches bad launch configurations where they happen
#define LAUNCH_CHECK() cuda_check(cudaGetLastError(), __FILE__, __LINE__)

// Every device allocation goes through here, so that the benchmark can report what we hold.
static size_t g_device_bytes = 0;
static void *device_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        FATAL("out of GPU memory allocating %.2f GiB for %s (%.2f GiB free of %.2f); try -r 2 or a smaller -B",
              bytes / 1073741824.0, what, fr / 1073741824.0, tot / 1073741824.0);
    }
    g_device_bytes += bytes;
    return p;
}
static void device_free(void *p, size_t bytes) { if (p) { cudaCheck(cudaFree(p)); g_device_bytes -= bytes; } }

// floatX: the type of weights, activations and activation gradients. Gradients of the parameters,
// optimizer moments and master weights are always fp32.
#ifdef ENABLE_FP32
typedef float floatX;
#define CUDA_X CUDA_R_32F
#define PRECISION_NAME "fp32"
__device__ __forceinline__ float tof(float x) { return x; }
__device__ __forceinline__ floatX fx(float x) { return x; }
#else
typedef __nv_bfloat16 floatX;
#define CUDA_X CUDA_R_16BF
#define PRECISION_NAME "bf16"
__device__ __forceinline__ float tof(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ floatX fx(float x) { return __float2bfloat16(x); }   // round to nearest even
#endif

static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }
static int g_num_sms = 132;   // set from the device at startup

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
// Sum over a block of up to 1024 threads; every thread gets the result. sh: 32 floats of shared.
__device__ float block_sum(float x, float *sh) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
    x = warp_sum(x);
    __syncthreads();   // sh may still be read by a previous call
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    x = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(x);
}

// A counter-based hash (for random init and stochastic rounding): the same on every run and
// independent of the launch configuration.
__device__ __forceinline__ uint32_t hash_u32(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}

// ----------------------------------------------------------------------------
// 2. kernels. Each op: a kernel (or two) and a host launcher with the shapes in its comment.

// --- embedding

__global__ void embedding_forward_kernel(floatX *out, const int *tokens, const floatX *wte, int N, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * C) return;
    int n = (int)(idx / C), c = (int)(idx % C);
    out[idx] = wte[(size_t)tokens[n] * C + c];
}
// out (N, C) = wte[tokens]
static void embedding_forward(floatX *out, const int *tokens, const floatX *wte, int N, int C) {
    embedding_forward_kernel<<<ceil_div((long)N * C, 256), 256>>>(out, tokens, wte, N, C);
    LAUNCH_CHECK();
}
// fp32 atomics: two positions may hold the same token. The order of the adds varies from run to
// run, so the last bits of dwte do too (the CPU file is bit-reproducible, this one is not).
__global__ void embedding_backward_kernel(float *dwte, const floatX *dout, const int *tokens, int N, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * C) return;
    int n = (int)(idx / C), c = (int)(idx % C);
    atomicAdd(&dwte[(size_t)tokens[n] * C + c], tof(dout[idx]));
}
// dwte (V, C) += scatter of dout (N, C) by token
static void embedding_backward(float *dwte, const floatX *dout, const int *tokens, int N, int C) {
    embedding_backward_kernel<<<ceil_div((long)N * C, 256), 256>>>(dwte, dout, tokens, N, C);
    LAUNCH_CHECK();
}

// --- RMSNorm, optionally fused with the residual add that precedes it

// One warp per row. With add != NULL: resid_out = resid + add (rounded to floatX, the value the
// rest of the network sees), then out = rmsnorm(resid_out) * w. Without: out = rmsnorm(resid) * w.
__global__ void rmsnorm_forward_kernel(floatX *resid_out, floatX *out, float *rstd, const floatX *resid,
                                       const floatX *add, const floatX *w, int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const floatX *x = resid + (size_t)row * C;
    floatX *y = out + (size_t)row * C;
    float ss = 0.0f;
    if (add) {
        const floatX *a = add + (size_t)row * C;
        floatX *r = resid_out + (size_t)row * C;
        for (int c = lane; c < C; c += 32) {
            floatX s = fx(tof(x[c]) + tof(a[c]));
            r[c] = s;
            float v = tof(s);
            ss += v * v;
        }
        x = r;   // the second pass reads back what this lane wrote
    } else {
        for (int c = lane; c < C; c += 32) { float v = tof(x[c]); ss += v * v; }
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    for (int c = lane; c < C; c += 32) y[c] = fx(tof(x[c]) * r * tof(w[c]));
    if (lane == 0) rstd[row] = r;
}
// out, resid (N, C); rstd (N) is kept for the backward; w (C)
static void rmsnorm_forward(floatX *out, float *rstd, const floatX *resid, const floatX *w, int N, int C, float eps) {
    rmsnorm_forward_kernel<<<ceil_div(N, 8), 256>>>(NULL, out, rstd, resid, NULL, w, N, C, eps);
    LAUNCH_CHECK();
}
// resid_out = resid + add;  out = rmsnorm(resid_out) * w.  All (N, C).
static void residual_rmsnorm_forward(floatX *resid_out, floatX *out, float *rstd, const floatX *resid, const floatX *add,
                                     const floatX *w, int N, int C, float eps) {
    rmsnorm_forward_kernel<<<ceil_div(N, 8), 256>>>(resid_out, out, rstd, resid, add, w, N, C, eps);
    LAUNCH_CHECK();
}

// With xhat = x*r: dx += r * (w*dout - xhat * mean(w*dout*xhat));  dw += sum_n dout*xhat.
// A warp per row for dx. dw sums over rows: each block sums its rows in shared memory (C floats),
// then adds its partial into dw once, so the global atomics are C per block, not C per row.
__global__ void rmsnorm_backward_kernel(floatX *dx, float *dw, const floatX *dout, const floatX *x, const floatX *w,
                                        const float *rstd, int N, int C) {
    extern __shared__ float dw_sh[];   // (C)
    int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dw_sh[c] = 0.0f;
    __syncthreads();
    for (int row = blockIdx.x * warps + warp; row < N; row += gridDim.x * warps) {
        const floatX *g = dout + (size_t)row * C, *xr = x + (size_t)row * C;
        floatX *d = dx + (size_t)row * C;
        float r = rstd[row], dot = 0.0f;
        for (int c = lane; c < C; c += 32) dot += tof(w[c]) * tof(g[c]) * tof(xr[c]) * r;
        dot = warp_sum(dot) / C;
        for (int c = lane; c < C; c += 32) {
            float gc = tof(g[c]), xh = tof(xr[c]) * r;
            d[c] = fx(tof(d[c]) + r * (tof(w[c]) * gc - xh * dot));
            atomicAdd(&dw_sh[c], gc * xh);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(&dw[c], dw_sh[c]);
}
// dx (N, C) += ..., dw (C) += ...; dout, x (N, C); rstd (N)
static void rmsnorm_backward(floatX *dx, float *dw, const floatX *dout, const floatX *x, const floatX *w, const float *rstd,
                             int N, int C) {
    int blocks = ceil_div(N, 8);
    if (blocks > 2 * g_num_sms) blocks = 2 * g_num_sms;
    rmsnorm_backward_kernel<<<blocks, 256, (size_t)C * sizeof(float)>>>(dx, dw, dout, x, w, rstd, N, C);
    LAUNCH_CHECK();
}

// --- rotary embedding (HF convention, see train_empo.c: the pair (x[i], x[i+HD/2]) rotates by pos*freq_i)

// In place on the q and k heads of qkv (N, QKV); row n is at position n % T. dir = +1 forward;
// dir = -1 rotates back, which is the backward (the rotation is orthogonal).
__global__ void rope_kernel(floatX *qkv, const float *cosb, const float *sinb, int N, int T, int NH, int NKV, int HD, float dir) {
    int h = HD / 2, QKV = (NH + 2 * NKV) * HD;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * (NH + NKV) * h) return;
    int i = (int)(idx % h);
    size_t rest = idx / h;
    int head = (int)(rest % (NH + NKV)), n = (int)(rest / (NH + NKV)), pos = n % T;
    floatX *x = qkv + (size_t)n * QKV + (size_t)head * HD;
    float c = cosb[(size_t)pos * h + i], s = dir * sinb[(size_t)pos * h + i];
    float x1 = tof(x[i]), x2 = tof(x[i + h]);
    x[i] = fx(x1 * c - x2 * s);
    x[i + h] = fx(x2 * c + x1 * s);
}
static void rope_forward(floatX *qkv, const float *cosb, const float *sinb, int N, int T, int NH, int NKV, int HD) {
    rope_kernel<<<ceil_div((long)N * (NH + NKV) * (HD / 2), 256), 256>>>(qkv, cosb, sinb, N, T, NH, NKV, HD, 1.0f);
    LAUNCH_CHECK();
}
static void rope_backward(floatX *dqkv, const float *cosb, const float *sinb, int N, int T, int NH, int NKV, int HD) {
    rope_kernel<<<ceil_div((long)N * (NH + NKV) * (HD / 2), 256), 256>>>(dqkv, cosb, sinb, N, T, NH, NKV, HD, -1.0f);
    LAUNCH_CHECK();
}

// --- causal grouped-query attention, flash style
//
// Nothing T x T is ever stored. The forward keeps, per query row, a running max m, a running sum l
// and an unnormalized output o (online softmax, all fp32), and saves lse = m + log(l) per row; the
// backward rebuilds each probability as exp(s - lse). Dropout-free, so that is exact.
//
// Work layout (all three kernels): a block of 8 warps owns a tile of 32 rows (queries in the
// forward and the dQ kernel, keys in the dK/dV kernel); each warp owns ATT_R = 4 of those rows.
// The other side is streamed through shared memory 32 rows at a time (fp32, each row padded to a
// multiple of 4 plus 4 floats so that the float4 row reads of a warp hit distinct banks).
// Per 32-row chunk, lane j scores row j of the chunk against the warp's own rows (dot products
// read from shared memory), and then each lane accumulates the head-dim entries d = lane + 32k
// (k < DPL) of the warp's rows. DPL ("dims per lane") = ceil(HD/32) rounded up to 1, 2, 4 or 8
// keeps those accumulators in registers. Plain fp32 FMAs, no tensor cores: simple, and correct by
// construction first; dev/cuda/attention.cu has the versions and the timings.

#define ATT_WARPS 8
#define ATT_R 4
#define ATT_TILE (ATT_WARPS * ATT_R)   // 32 rows per block, also the chunk size of the streamed side

static __host__ __device__ inline int att_stride(int HD) { return ((HD + 3) & ~3) + 4; }

// s[r] = dot(a_r, b) for the warp's ATT_R broadcast rows a_r (stride SR) and this lane's row b.
__device__ __forceinline__ void att_dots(float s[ATT_R], const float *a, const float *b, int SR, int HDP) {
#pragma unroll
    for (int r = 0; r < ATT_R; r++) s[r] = 0.0f;
    for (int d = 0; d < HDP; d += 4) {
        float4 y = *(const float4 *)(b + d);
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            float4 x = *(const float4 *)(a + r * SR + d);
            s[r] = fmaf(x.x, y.x, fmaf(x.y, y.y, fmaf(x.z, y.z, fmaf(x.w, y.w, s[r]))));
        }
    }
}
// Copies rows [t0, t0 + 32) of one head (column offset col in rows of length rowlen) into
// dst (32, SR) as fp32, zero beyond T and beyond HD. All threads of the block take part.
__device__ __forceinline__ void att_load_tile(float *dst, const floatX *src, int t0, int T, size_t rowlen, int col, int HD, int SR) {
    for (int idx = threadIdx.x; idx < ATT_TILE * SR; idx += blockDim.x) {
        int r = idx / SR, d = idx % SR, t = t0 + r;
        dst[idx] = (t < T && d < HD) ? tof(src[(size_t)t * rowlen + col + d]) : 0.0f;
    }
}

// out (B, T, NH*HD), lse (B, NH, T) fp32; qkv (B, T, QKV) with rope applied.
// grid (T/32 query tiles, NH, B); the tile with the most keys (the last) starts first.
template <int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_forward_kernel(floatX *out, float *lse, const floatX *qkv,
                                                                           int T, int NH, int NKV, int HD, float scale) {
    extern __shared__ float4 att_smem4[];
    float *smem = (float *)att_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD;
    float *sQ = smem, *sK = sQ + ATT_TILE * SR, *sV = sK + ATT_TILE * SR, *sP = sV + ATT_TILE * SR;   // sP (8, R, 32)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_TILE, hq = blockIdx.y, b = blockIdx.z, hk = hq / (NH / NKV);
    const floatX *base = qkv + (size_t)b * T * QKV;
    att_load_tile(sQ, base, q0, T, QKV, hq * HD, HD, SR);
    float o[ATT_R][DPL], m[ATT_R], l[ATT_R];
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        m[r] = -INFINITY; l[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < DPL; k++) o[r][k] = 0.0f;
    }
    const float *myQ = sQ + warp * ATT_R * SR;
    float *myP = sP + warp * ATT_R * 32;
    int row0 = q0 + warp * ATT_R;                            // this warp's first query
    int kend = min(T, q0 + ATT_TILE);                        // causal: no key beyond the tile's last query
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();                                     // everyone is done with the previous chunk
        att_load_tile(sK, base, k0, T, QKV, (NH + hk) * HD, HD, SR);
        att_load_tile(sV, base, k0, T, QKV, (NH + NKV + hk) * HD, HD, SR);
        __syncthreads();
        float s[ATT_R];
        att_dots(s, myQ, sK + lane * SR, SR, HDP);
        int j = k0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            int i = row0 + r;
            if (i >= T || k0 > i) { myP[r * 32 + lane] = 0.0f; continue; }   // warp-uniform
            float sc = s[r] * scale;
            int valid = j <= i;                              // key 0 of the chunk is always valid here
            float mnew = fmaxf(m[r], warp_max(valid ? sc : -INFINITY));
            float p = valid ? expf(sc - mnew) : 0.0f;
            float corr = expf(m[r] - mnew);                  // 0 on the first chunk (m = -inf)
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int k = 0; k < DPL; k++) o[r][k] *= corr;
            myP[r * 32 + lane] = p;
        }
        __syncwarp();
        int jn = min(ATT_TILE, min(T - 1, row0 + ATT_R - 1) - k0 + 1);   // keys of this chunk any of our rows sees
        for (int jj = 0; jj < jn; jj++) {
#pragma unroll
            for (int k = 0; k < DPL; k++) {
                int d = lane + 32 * k;
                float v = d < HD ? sV[jj * SR + d] : 0.0f;
#pragma unroll
                for (int r = 0; r < ATT_R; r++) o[r][k] = fmaf(myP[r * 32 + jj], v, o[r][k]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int i = row0 + r;
        if (i >= T) continue;
        float inv = 1.0f / l[r];
        floatX *y = out + ((size_t)b * T + i) * NH * HD + (size_t)hq * HD;
#pragma unroll
        for (int k = 0; k < DPL; k++) { int d = lane + 32 * k; if (d < HD) y[d] = fx(o[r][k] * inv); }
        if (lane == 0) lse[((size_t)b * NH + hq) * T + i] = m[r] + logf(l[r]);
    }
}

// D (B, NH, T) = rowsum(dout * out): the softmax backward's correction term, once per query row.
__global__ void attention_rowdot_kernel(float *D, const floatX *dout, const floatX *out, int B, int T, int NH, int HD) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;   // row = (b*T + t)*NH + h
    if (row >= B * T * NH) return;
    const floatX *g = dout + (size_t)row * HD, *y = out + (size_t)row * HD;
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s += tof(g[d]) * tof(y[d]);
    s = warp_sum(s);
    int h = row % NH, bt = row / NH, b = bt / T, t = bt % T;
    if (lane == 0) D[((size_t)b * NH + h) * T + t] = s;
}

// dQ of one query tile: per key chunk, p = exp(s - lse), dp = dout_i . v_j, ds = p (dp - D_i),
// dq_i += scale * ds_j k_j. grid (T/32, NH, B), heaviest tile first.
template <int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_backward_dq_kernel(floatX *dqkv, const floatX *dout, const floatX *qkv,
                                                                               const float *lse, const float *D, int T, int NH,
                                                                               int NKV, int HD, float scale) {
    extern __shared__ float4 att_smem4[];
    float *smem = (float *)att_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD;
    float *sQ = smem, *sG = sQ + ATT_TILE * SR, *sK = sG + ATT_TILE * SR, *sV = sK + ATT_TILE * SR, *sS = sV + ATT_TILE * SR;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_TILE, hq = blockIdx.y, b = blockIdx.z, hk = hq / (NH / NKV);
    const floatX *base = qkv + (size_t)b * T * QKV;
    att_load_tile(sQ, base, q0, T, QKV, hq * HD, HD, SR);
    att_load_tile(sG, dout + (size_t)b * T * NH * HD, q0, T, (size_t)NH * HD, hq * HD, HD, SR);
    int row0 = q0 + warp * ATT_R;
    float lse_r[ATT_R], D_r[ATT_R], dq[ATT_R][DPL];
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int i = min(row0 + r, T - 1);
        lse_r[r] = lse[((size_t)b * NH + hq) * T + i];
        D_r[r] = D[((size_t)b * NH + hq) * T + i];
#pragma unroll
        for (int k = 0; k < DPL; k++) dq[r][k] = 0.0f;
    }
    const float *myQ = sQ + warp * ATT_R * SR, *myG = sG + warp * ATT_R * SR;
    float *myS = sS + warp * ATT_R * 32;
    int kend = min(T, q0 + ATT_TILE);
    for (int k0 = 0; k0 < kend; k0 += ATT_TILE) {
        __syncthreads();
        att_load_tile(sK, base, k0, T, QKV, (NH + hk) * HD, HD, SR);
        att_load_tile(sV, base, k0, T, QKV, (NH + NKV + hk) * HD, HD, SR);
        __syncthreads();
        float s[ATT_R], dp[ATT_R];
        att_dots(s, myQ, sK + lane * SR, SR, HDP);
        att_dots(dp, myG, sV + lane * SR, SR, HDP);
        int j = k0 + lane;
#pragma unroll
        for (int r = 0; r < ATT_R; r++) {
            int i = row0 + r;
            float p = (i < T && j <= i) ? expf(s[r] * scale - lse_r[r]) : 0.0f;
            myS[r * 32 + lane] = p * (dp[r] - D_r[r]);
        }
        __syncwarp();
        int jn = min(ATT_TILE, min(T - 1, row0 + ATT_R - 1) - k0 + 1);
        for (int jj = 0; jj < jn; jj++) {
#pragma unroll
            for (int k = 0; k < DPL; k++) {
                int d = lane + 32 * k;
                float kv = d < HD ? sK[jj * SR + d] : 0.0f;
#pragma unroll
                for (int r = 0; r < ATT_R; r++) dq[r][k] = fmaf(myS[r * 32 + jj], kv, dq[r][k]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int i = row0 + r;
        if (i >= T) continue;
        floatX *y = dqkv + ((size_t)b * T + i) * QKV + (size_t)hq * HD;
#pragma unroll
        for (int k = 0; k < DPL; k++) { int d = lane + 32 * k; if (d < HD) y[d] = fx(dq[r][k] * scale); }
    }
}

// dK and dV of one key tile of one kv head: stream the queries i >= the tile's first key, of every
// query head of the group (GQA), and accumulate dv_j += p_ij dout_i, dk_j += scale * ds_ij q_i.
// Each block owns its keys, so no atomics. grid (T/32 key tiles, NKV, B): tile 0 has the most work
// and starts first.
template <int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_backward_dkv_kernel(floatX *dqkv, const floatX *dout, const floatX *qkv,
                                                                                const float *lse, const float *D, int T, int NH,
                                                                                int NKV, int HD, float scale) {
    extern __shared__ float4 att_smem4[];
    float *smem = (float *)att_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float *sK = smem, *sV = sK + ATT_TILE * SR, *sQ = sV + ATT_TILE * SR, *sG = sQ + ATT_TILE * SR;
    float *sP = sG + ATT_TILE * SR, *sS = sP + ATT_WARPS * ATT_R * 32, *sL = sS + ATT_WARPS * ATT_R * 32, *sD = sL + ATT_TILE;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int j0 = blockIdx.x * ATT_TILE, hk = blockIdx.y, b = blockIdx.z;
    const floatX *base = qkv + (size_t)b * T * QKV, *gbase = dout + (size_t)b * T * NH * HD;
    att_load_tile(sK, base, j0, T, QKV, (NH + hk) * HD, HD, SR);
    att_load_tile(sV, base, j0, T, QKV, (NH + NKV + hk) * HD, HD, SR);
    float dk[ATT_R][DPL], dv[ATT_R][DPL];
#pragma unroll
    for (int r = 0; r < ATT_R; r++)
#pragma unroll
        for (int k = 0; k < DPL; k++) { dk[r][k] = 0.0f; dv[r][k] = 0.0f; }
    const float *myK = sK + warp * ATT_R * SR, *myV = sV + warp * ATT_R * SR;
    float *myP = sP + warp * ATT_R * 32, *myS = sS + warp * ATT_R * 32;
    int jrow0 = j0 + warp * ATT_R;                           // this warp's first key
    for (int hq = hk * rep; hq < (hk + 1) * rep; hq++) {
        for (int i0 = j0; i0 < T; i0 += ATT_TILE) {          // queries before j0 see none of these keys
            __syncthreads();
            att_load_tile(sQ, base, i0, T, QKV, hq * HD, HD, SR);
            att_load_tile(sG, gbase, i0, T, (size_t)NH * HD, hq * HD, HD, SR);
            if (threadIdx.x < ATT_TILE) {
                int i = min(i0 + (int)threadIdx.x, T - 1);
                sL[threadIdx.x] = lse[((size_t)b * NH + hq) * T + i];
                sD[threadIdx.x] = D[((size_t)b * NH + hq) * T + i];
            }
            __syncthreads();
            float s[ATT_R], dp[ATT_R];
            att_dots(s, myK, sQ + lane * SR, SR, HDP);      // lane = query i0 + lane, rows = our keys
            att_dots(dp, myV, sG + lane * SR, SR, HDP);
            int i = i0 + lane;
#pragma unroll
            for (int r = 0; r < ATT_R; r++) {
                int j = jrow0 + r;
                float p = (j < T && i < T && i >= j) ? expf(s[r] * scale - sL[lane]) : 0.0f;
                myP[r * 32 + lane] = p;
                myS[r * 32 + lane] = p * (dp[r] - sD[lane]);
            }
            __syncwarp();
            int in = min(ATT_TILE, T - i0);
            for (int ii = 0; ii < in; ii++) {
#pragma unroll
                for (int k = 0; k < DPL; k++) {
                    int d = lane + 32 * k;
                    float qd = d < HD ? sQ[ii * SR + d] : 0.0f, gd = d < HD ? sG[ii * SR + d] : 0.0f;
#pragma unroll
                    for (int r = 0; r < ATT_R; r++) {
                        dv[r][k] = fmaf(myP[r * 32 + ii], gd, dv[r][k]);
                        dk[r][k] = fmaf(myS[r * 32 + ii], qd, dk[r][k]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_R; r++) {
        int j = jrow0 + r;
        if (j >= T) continue;
        floatX *yk = dqkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD, *yv = yk + (size_t)NKV * HD;
#pragma unroll
        for (int k = 0; k < DPL; k++) {
            int d = lane + 32 * k;
            if (d < HD) { yk[d] = fx(dk[r][k] * scale); yv[d] = fx(dv[r][k]); }
        }
    }
}

static size_t att_smem_forward(int HD) { return (size_t)(3 * ATT_TILE * att_stride(HD) + ATT_WARPS * ATT_R * 32) * sizeof(float); }
static size_t att_smem_dq(int HD) { return (size_t)(4 * ATT_TILE * att_stride(HD) + ATT_WARPS * ATT_R * 32) * sizeof(float); }
static size_t att_smem_dkv(int HD) { return (size_t)(4 * ATT_TILE * att_stride(HD) + 2 * ATT_WARPS * ATT_R * 32 + 2 * ATT_TILE) * sizeof(float); }
static int att_dpl(int HD) { return HD <= 32 ? 1 : HD <= 64 ? 2 : HD <= 128 ? 4 : 8; }

// Opts the kernels for this head dim into more than 48 KiB of shared memory (once, at model init).
template <int DPL> static void att_setup_dpl(int HD) {
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)att_smem_forward(HD)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)att_smem_dq(HD)));
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkv_kernel<DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)att_smem_dkv(HD)));
}
static void attention_setup(int HD) {
    if (HD > 256) FATAL("head_dim %d: the attention kernels handle up to 256", HD);
    switch (att_dpl(HD)) {
    case 1: att_setup_dpl<1>(HD); break;
    case 2: att_setup_dpl<2>(HD); break;
    case 4: att_setup_dpl<4>(HD); break;
    default: att_setup_dpl<8>(HD); break;
    }
}

// out (B, T, NH*HD); lse (B, NH, T) fp32; qkv (B, T, QKV) with rope applied
static void attention_forward(floatX *out, float *lse, const floatX *qkv, int B, int T, int NH, int NKV, int HD) {
    dim3 grid(ceil_div(T, ATT_TILE), NH, B);
    float scale = 1.0f / sqrtf((float)HD);
    size_t sm = att_smem_forward(HD);
    switch (att_dpl(HD)) {
    case 1: attention_forward_kernel<1><<<grid, ATT_WARPS * 32, sm>>>(out, lse, qkv, T, NH, NKV, HD, scale); break;
    case 2: attention_forward_kernel<2><<<grid, ATT_WARPS * 32, sm>>>(out, lse, qkv, T, NH, NKV, HD, scale); break;
    case 4: attention_forward_kernel<4><<<grid, ATT_WARPS * 32, sm>>>(out, lse, qkv, T, NH, NKV, HD, scale); break;
    default: attention_forward_kernel<8><<<grid, ATT_WARPS * 32, sm>>>(out, lse, qkv, T, NH, NKV, HD, scale); break;
    }
    LAUNCH_CHECK();
}
// dqkv (B, T, QKV) = gradient of the above (overwritten, every entry); dout, out (B, T, NH*HD);
// lse from the forward; D (B, NH, T) fp32 scratch
static void attention_backward(floatX *dqkv, float *D, const floatX *dout, const floatX *out, const floatX *qkv, const float *lse,
                               int B, int T, int NH, int NKV, int HD) {
    attention_rowdot_kernel<<<ceil_div((long)B * T * NH, 8), 256>>>(D, dout, out, B, T, NH, HD);
    LAUNCH_CHECK();
    dim3 gq(ceil_div(T, ATT_TILE), NH, B), gk(ceil_div(T, ATT_TILE), NKV, B);
    float scale = 1.0f / sqrtf((float)HD);
    size_t sq = att_smem_dq(HD), sk = att_smem_dkv(HD);
    switch (att_dpl(HD)) {
#define ATT_BWD(DPL_)                                                                                                   \
    attention_backward_dq_kernel<DPL_><<<gq, ATT_WARPS * 32, sq>>>(dqkv, dout, qkv, lse, D, T, NH, NKV, HD, scale);     \
    LAUNCH_CHECK();                                                                                                     \
    attention_backward_dkv_kernel<DPL_><<<gk, ATT_WARPS * 32, sk>>>(dqkv, dout, qkv, lse, D, T, NH, NKV, HD, scale);    \
    break;
    case 1: ATT_BWD(1)
    case 2: ATT_BWD(2)
    case 4: ATT_BWD(4)
    default: ATT_BWD(8)
#undef ATT_BWD
    }
    LAUNCH_CHECK();
}

// --- SwiGLU: out (N, I) = silu(gate) * up; fch (N, 2I) holds gate in [0, I), up in [I, 2I)

__global__ void swiglu_forward_kernel(floatX *out, const floatX *fch, int N, int I) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * I) return;
    size_t n = idx / I, i = idx % I;
    float g = tof(fch[n * 2 * I + i]), u = tof(fch[n * 2 * I + I + i]);
    out[idx] = fx(g / (1.0f + expf(-g)) * u);
}
__global__ void swiglu_backward_kernel(floatX *dfch, const floatX *dout, const floatX *fch, int N, int I) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * I) return;
    size_t n = idx / I, i = idx % I;
    float g = tof(fch[n * 2 * I + i]), u = tof(fch[n * 2 * I + I + i]), d = tof(dout[idx]);
    float sig = 1.0f / (1.0f + expf(-g));
    dfch[n * 2 * I + i] = fx(d * u * sig * (1.0f + g * (1.0f - sig)));
    dfch[n * 2 * I + I + i] = fx(d * g * sig);
}
static void swiglu_forward(floatX *out, const floatX *fch, int N, int I) {
    swiglu_forward_kernel<<<ceil_div((long)N * I, 256), 256>>>(out, fch, N, I);
    LAUNCH_CHECK();
}
// dfch (N, 2I) = gradient (overwritten); dout (N, I)
static void swiglu_backward(floatX *dfch, const floatX *dout, const floatX *fch, int N, int I) {
    swiglu_backward_kernel<<<ceil_div((long)N * I, 256), 256>>>(dfch, dout, fch, N, I);
    LAUNCH_CHECK();
}

// --- log-softmax at the targets, on one chunk of rows of logits

// One block per row. Forward: lse (one pass, online max and sum in fp32), and logp = x[target] - lse
// (0 without a target). Backward (grad != 0): overwrites the row with dLoss/dlogits =
// g * (onehot(target) - softmax), g = dlogp, in floatX, ready for the LM head's backward matmuls.
__global__ void logsoftmax_kernel(floatX *logits, float *lse, float *logp, const int *targets, const float *dlogp, int V, int backward) {
    __shared__ float sh[32];
    __shared__ float sh_m[32];
    int n = blockIdx.x;
    floatX *x = logits + (size_t)n * V;
    int target = targets[n];
    if (!backward) {
        float m = -FLT_MAX, s = 0.0f;   // -FLT_MAX, not -inf: exp(m - m') stays 0, never NaN
        for (int v = threadIdx.x; v < V; v += blockDim.x) {
            float xv = tof(x[v]);
            if (xv > m) { s *= expf(m - xv); m = xv; }
            s += expf(xv - m);
        }
        // combine the (m, s) of all threads: first the max, then the rescaled sums
        float mw = warp_max(m);
        int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
        if (lane == 0) sh_m[warp] = mw;
        __syncthreads();
        float M = lane < nw ? sh_m[lane] : -FLT_MAX;
        M = warp_max(M);
        float S = block_sum(s * expf(m - M), sh);
        if (threadIdx.x == 0) {
            float l = M + logf(S);
            lse[n] = l;
            logp[n] = target >= 0 ? tof(x[target]) - l : 0.0f;
        }
        return;
    }
    float g = target >= 0 ? dlogp[n] : 0.0f, l = lse[n];
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float d = g == 0.0f ? 0.0f : -g * expf(tof(x[v]) - l);
        if (v == target) d += g;
        x[v] = fx(d);
    }
}

// --- AdamW, gradient norm, small helpers

// Sum of squares of grads, in a fixed grid of partial sums so that it repeats exactly.
#ifndef NORM_BLOCKS   // (the CPU emulator, dev/cuda/emu_test.cpp, sets fewer)
#define NORM_BLOCKS 1024
#endif
__global__ void sumsq_kernel(float *partial, const float *g, size_t n) {
    __shared__ float sh[32];
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) s += g[i] * g[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
__global__ void norm_finish_kernel(float *norm, const float *partial, int n) {
    __shared__ float sh[32];
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) norm[0] = sqrtf(s);
}

// One AdamW step, torch.optim.AdamW's arithmetic (see train_empo.c model_update). The clip scale
// comes from the norm on the device, so there is no host round trip between the two kernels.
// master != NULL: update the fp32 master copy and round it to the floatX params. master == NULL
// in a bf16 build: update the bf16 params directly with stochastic rounding, whose expected value is
// the exact update (round-to-nearest would drop every update smaller than half a bf16 ulp).
__device__ __forceinline__ floatX round_param(float w, uint32_t rnd) {
#ifdef ENABLE_FP32
    (void)rnd;
    return w;
#else
    uint32_t u = __float_as_uint(w);
    if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(w);   // inf / NaN: leave as is
    u += rnd & 0xffffu;                                                  // add noise below the kept bits, truncate
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
#endif
}
__global__ void adamw_kernel(floatX *params, float *master, const float *grads, float *m, float *v, size_t n, float lr, float beta1,
                             float beta2, float eps, float wd, float step_size, float bc2_sqrt, const float *norm, float grad_clip,
                             uint64_t seed) {
    float scale = 1.0f;
    if (grad_clip > 0.0f) { float coef = grad_clip / (norm[0] + 1e-6f); if (coef < 1.0f) scale = coef; }
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float grad = grads[i] * scale;
        float mm = beta1 * m[i] + (1.0f - beta1) * grad;
        float vv = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        m[i] = mm; v[i] = vv;
        float w = master ? master[i] : tof(params[i]);
        w = w * (1.0f - lr * wd);
        w = w - step_size * mm / (sqrtf(vv) / bc2_sqrt + eps);
        if (master) { master[i] = w; params[i] = fx(w); }
        else params[i] = round_param(w, hash_u32(seed ^ (i * 0x9E3779B97F4A7C15ull)));
    }
}

__global__ void convert_kernel(floatX *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = fx(src[i]);
}
__global__ void to_float_kernel(float *dst, const floatX *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = tof(src[i]);
}
// N(0, std) from a hash of (seed, i): Box-Muller on two hashed uniforms.
__global__ void init_normal_kernel(float *dst, size_t n, float std, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u1 = (hash_u32(seed + 2 * i) >> 8) / 16777216.0f, u2 = (hash_u32(seed + 2 * i + 1) >> 8) / 16777216.0f;
        dst[i] = std * sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.2831853f * u2);
    }
}
__global__ void fill_kernel(float *dst, size_t n, float value) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) dst[i] = value;
}
static int grid_for(size_t n) { size_t b = (n + 255) / 256; return (int)(b < (size_t)g_num_sms * 16 ? (b ? b : 1) : (size_t)g_num_sms * 16); }

// dbias (OC) += column sums of dout (N, OC). Block (32 columns x 32 row slices), one block owns its
// columns: no atomics, the same result every run.
__global__ void bias_backward_kernel(float *dbias, const floatX *dout, int N, int OC) {
    __shared__ float sh[32][33];
    int o = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (o < OC) for (int n = threadIdx.y; n < N; n += 32) s += tof(dout[(size_t)n * OC + o]);
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && o < OC) {
        for (int k = 1; k < 32; k++) s += sh[k][threadIdx.x];
        dbias[o] += s;
    }
}
// out (N, OC) += bias (OC): only for the matmul fallback when cuBLASLt can't fuse the bias
__global__ void add_bias_kernel(floatX *out, const floatX *bias, int N, int OC) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * OC) return;
    out[idx] = fx(tof(out[idx]) + tof(bias[idx % OC]));
}

// ----------------------------------------------------------------------------
// 3. matmul: cuBLASLt, fp32 accumulation (CUBLAS_COMPUTE_32F: also no TF32 in the fp32 build)

static cublasHandle_t g_cublas;
static cublasLtHandle_t g_cublaslt;
static void *g_lt_workspace;
static const size_t LT_WORKSPACE = 32u << 20;
static int g_lt_fallbacks = 0;   // calls cuBLASLt declined (odd shapes or alignments): done by cublasGemmEx

static uint32_t ptr_alignment(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 2 && a % al) al /= 2;
    return al;
}

// A small cache of cuBLASLt's algorithm choices, keyed by everything the heuristic looks at.
typedef struct { int transA, transB, m, n, k, lda, ldb, ldd, d_type, has_bias; uint32_t al_a, al_b, al_d; } LtKey;
typedef struct { LtKey key; int found; cublasLtMatmulAlgo_t algo; } LtAlgo;
#define LT_CACHE 256
static LtAlgo g_lt_cache[LT_CACHE];
static int g_lt_cached = 0;
static LtAlgo *lt_cache_find(const LtKey *k) {
    for (int i = 0; i < g_lt_cached; i++) if (!memcmp(&g_lt_cache[i].key, k, sizeof *k)) return &g_lt_cache[i];
    return NULL;
}
static LtAlgo *lt_cache_add(const LtKey *k, int found, const cublasLtMatmulAlgo_t *algo) {
    static LtAlgo spill;   // full: remember nothing, just use it this once
    LtAlgo *e = g_lt_cached < LT_CACHE ? &g_lt_cache[g_lt_cached++] : &spill;
    memset(e, 0, sizeof *e);
    e->key = *k; e->found = found;
    if (found) e->algo = *algo;
    return e;
}

// Column-major D (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * D [+ bias (m) broadcast over n].
// A, B floatX; D floatX or fp32 (d_type). Row-major callers swap roles, see below.
static void gemm(void *D, cudaDataType_t d_type, int ldd, const floatX *A, int transA, int lda, const floatX *Bm, int transB, int ldb,
                 int m, int n, int k, float beta, const floatX *bias) {
    float alpha = 1.0f;
    // the bias epilogue wants an aligned vector; otherwise the fallback adds it
    int lt_ok = !bias || ptr_alignment(bias) >= 16;
    if (lt_ok) {
        cublasLtMatmulDesc_t op;
        cublasLtMatrixLayout_t la, lb, ld;
        cublasOperation_t ta = transA ? CUBLAS_OP_T : CUBLAS_OP_N, tb = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasCheck(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasCheck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        cublasCheck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        if (bias) {
            cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
            cublasCheck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
            cublasCheck(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        }
        cublasCheck(cublasLtMatrixLayoutCreate(&la, CUDA_X, transA ? k : m, transA ? m : k, lda));
        cublasCheck(cublasLtMatrixLayoutCreate(&lb, CUDA_X, transB ? n : k, transB ? k : n, ldb));
        cublasCheck(cublasLtMatrixLayoutCreate(&ld, d_type, m, n, ldd));
        cublasLtMatmulPreference_t pref;
        cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
        size_t ws = LT_WORKSPACE;
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        // tell the heuristic how aligned the pointers really are (layer slices of odd-sized models aren't)
        uint32_t al_a = ptr_alignment(A), al_b = ptr_alignment(Bm), al_d = ptr_alignment(D);
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d));
        // the heuristic's choice, cached per shape (a training step makes the same few hundred calls)
        LtKey key = {transA, transB, m, n, k, lda, ldb, ldd, (int)d_type, bias != NULL, al_a, al_b, al_d};
        LtAlgo *cached = lt_cache_find(&key);
        if (!cached) {
            cublasLtMatmulHeuristicResult_t heur;
            int found = 0;
            cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, op, la, lb, ld, ld, pref, 1, &heur, &found);
            cached = lt_cache_add(&key, st == CUBLAS_STATUS_SUCCESS && found > 0, &heur.algo);
        }
        lt_ok = cached->found;
        if (lt_ok)
            lt_ok = cublasLtMatmul(g_cublaslt, op, &alpha, A, la, Bm, lb, &beta, D, ld, D, ld, &cached->algo, g_lt_workspace, LT_WORKSPACE, 0) ==
                    CUBLAS_STATUS_SUCCESS;
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
        if (lt_ok) return;
    }
    g_lt_fallbacks++;
    cublasCheck(cublasGemmEx(g_cublas, transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A, CUDA_X,
                             lda, Bm, CUDA_X, ldb, &beta, D, d_type, ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) {   // D is floatX (m, n) column-major = row-major (n rows of m): bias per column of the rows
        add_bias_kernel<<<ceil_div((long)m * n, 256), 256>>>((floatX *)D, bias, n, m);
        LAUNCH_CHECK();
    }
}

// Row-major views. cuBLAS is column-major, and a row-major (R, K) matrix is a column-major (K, R)
// one, so each call below computes the transposed product.
// out (N, OC) = inp (N, C) @ w^T (OC, C) + bias (OC)
static void matmul_forward(floatX *out, const floatX *inp, const floatX *w, const floatX *bias, int N, int C, int OC) {
    gemm(out, CUDA_X, OC, w, 1, C, inp, 0, C, OC, N, C, 0.0f, bias);
}
// dinp (N, C) = dout (N, OC) @ w (OC, C)  (overwritten);  dw (OC, C) += dout^T @ inp  (fp32);
// dbias (OC) += column sums of dout. Any of dinp, dw, dbias may be NULL.
static void matmul_backward(floatX *dinp, float *dw, float *dbias, const floatX *dout, const floatX *inp, const floatX *w, int N, int C,
                            int OC) {
    if (dinp) gemm(dinp, CUDA_X, C, w, 0, C, dout, 0, OC, C, N, OC, 0.0f, NULL);
    if (dw) gemm(dw, CUDA_R_32F, C, inp, 0, C, dout, 1, OC, C, OC, N, 1.0f, NULL);
    if (dbias) {
        bias_backward_kernel<<<ceil_div(OC, 32), dim3(32, 32)>>>(dbias, dout, N, OC);
        LAUNCH_CHECK();
    }
}

// ----------------------------------------------------------------------------
// 4. the model

template <typename F> struct Tensors {   // pointers into one block, in checkpoint order (checkpoint.h)
    F *wte;      // (V, C)
    F *ln1w;     // (L, C)
    F *qkvw;     // (L, QKV, C)
    F *qkvb;     // (L, QKV), or empty
    F *attprojw; // (L, C, NH*HD)
    F *ln2w;     // (L, C)
    F *fcw;      // (L, 2I, C)
    F *fcprojw;  // (L, C, I)
    F *lnfw;     // (C)
    F *lmw;      // (V, C); points at wte when tied
};
template <typename F> static void point_tensors(Tensors<F> *p, const size_t sizes[NUM_PARAM_TENSORS], F *mem, int tied) {
    F **ptrs[NUM_PARAM_TENSORS] = {&p->wte, &p->ln1w, &p->qkvw, &p->qkvb, &p->attprojw, &p->ln2w, &p->fcw, &p->fcprojw, &p->lnfw, &p->lmw};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { *ptrs[i] = mem; mem += sizes[i]; }
    if (tied) p->lmw = p->wte;
}

// Activations: one device block, carved into the tensors below (different element types, each
// start 256-byte aligned). With recompute >= 1 the SwiGLU output, and with >= 2 also the RMSNorm
// outputs, are one (N, .) buffer rebuilt during the backward instead of L of them.
typedef struct {
    floatX *encoded;    // (N, C) embedding output, input of layer 0
    floatX *ln1;        // (L, N, C), or (N, C) with recompute >= 2
    float *ln1_rstd;    // (L, N)
    floatX *qkv;        // (L, N, QKV) after bias and rope
    floatX *atty;       // (L, N, NH*HD)
    float *att_lse;     // (L, B, NH, T) softmax log-sum-exp per query row
    floatX *resid2;     // (L, N, C) residual stream after attention
    floatX *ln2;        // (L, N, C), or (N, C) with recompute >= 2
    float *ln2_rstd;    // (L, N)
    floatX *fch;        // (L, N, 2I) gate and up
    floatX *swiglu;     // (L, N, I), or (N, I) with recompute >= 1
    floatX *resid3;     // (L, N, C) layer outputs
    floatX *lnf;        // (N, C)
    float *lnf_rstd;    // (N)
    float *lse;         // (N) log-sum-exp of each row of logits
    float *logp;        // (N) log-probability of each target
    float *dlogp;       // (N)
    int *inputs;        // (N)
    int *targets;       // (N)
    floatX *head;       // (head_rows, V) one chunk of logits, then of dlogits
    // backward scratch, reused layer after layer (and proj by the forward)
    floatX *proj;       // (N, C) projection outputs before the residual add
    floatX *dresidual;  // (N, C)
    floatX *dln;        // (N, C)
    floatX *dqkv;       // (N, QKV)
    floatX *datty;      // (N, NH*HD)
    floatX *dfch;       // (N, 2I)
    floatX *dswiglu;    // (N, I)
    float *att_D;       // (B, NH, T)
} Activations;
#define NUM_ACTS 28

typedef struct {
    ModelConfig config;
    size_t param_sizes[NUM_PARAM_TENSORS], num_parameters;
    Tensors<floatX> params;
    floatX *params_memory;
    float *master_memory;      // fp32 master weights, or NULL (fp32 build, or bf16 with stochastic rounding)
    Tensors<float> grads;
    float *grads_memory;       // fp32, always allocated with the model
    float *m_memory, *v_memory;
    int adam_step, use_master;
    float *norm_scratch;       // NORM_BLOCKS partials + the norm
    Activations acts;
    void *acts_memory;
    size_t acts_bytes;
    int B, T, recompute, head_rows;   // head_rows: rows of logits per chunk (0 = automatic)
    int head_rows_used, recompute_used;   // what the activations were allocated for
    float *rope_cos, *rope_sin;       // device (maxT, HD/2)
    // host copies: the last forward's inputs, targets, the log-probs it produced, and dLoss/dlogp
    // for the backward (set by the forward's loss, or by the caller, as in train_empo.c)
    int *inputs, *targets;
    float *logp, *dlogp;
    float mean_loss;           // of the last forward with targets; -1 without
    unsigned char *tok; size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];
} Model;

// cuBLAS handles and device properties, once per process.
static void gpu_init(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    int dev = 0;
    cudaCheck(cudaSetDevice(dev));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    g_num_sms = prop.multiProcessorCount;
    cublasCheck(cublasCreate(&g_cublas));
    cublasCheck(cublasLtCreate(&g_cublaslt));
    cudaCheck(cudaMalloc(&g_lt_workspace, LT_WORKSPACE));
    g_device_bytes += LT_WORKSPACE;
}

// Rotary tables, computed in fp32 on the host as train_empo.c does: cos, sin (maxT, HD/2)
static void rope_tables_host(float *cosb, float *sinb, int maxT, int HD, float theta) {
    int h = HD / 2;
    for (int i = 0; i < h; i++) {
        float inv = 1.0f / powf(theta, (float)(2 * i) / (float)HD);
        for (int t = 0; t < maxT; t++) {
            float a = (float)t * inv;
            cosb[(size_t)t * h + i] = cosf(a);
            sinb[(size_t)t * h + i] = sinf(a);
        }
    }
}

// Allocates params, grads, optimizer state (not activations: model_resize does those). The fp32
// weights go first into the grads block (a staging area; zeroed afterwards), then to the master
// copy and/or the floatX params.
static void model_alloc(Model *m, const ModelConfig *c, int use_master) {
    gpu_init();
    memset(m, 0, sizeof *m);
    m->config = *c;
    if (c->C > 12288) FATAL("hidden size %d: the RMSNorm backward keeps C floats in shared memory (max 12288)", c->C);
    attention_setup(c->HD);
    fill_param_sizes(m->param_sizes, c);
    m->num_parameters = count_params(c);
#ifdef ENABLE_FP32
    use_master = 0;   // the params are fp32 already
#endif
    m->use_master = use_master;
    size_t n = m->num_parameters;
    m->params_memory = (floatX *)device_alloc(n * sizeof(floatX), "parameters");
    m->grads_memory = (float *)device_alloc(n * sizeof(float), "gradients");
    if (use_master) m->master_memory = (float *)device_alloc(n * sizeof(float), "fp32 master weights");
    point_tensors(&m->params, m->param_sizes, m->params_memory, c->tied);
    point_tensors(&m->grads, m->param_sizes, m->grads_memory, c->tied);
    m->norm_scratch = (float *)device_alloc((NORM_BLOCKS + 1) * sizeof(float), "norm scratch");
    size_t h = (size_t)c->maxT * (c->HD / 2);
    float *cs = (float *)xmalloc(h * sizeof(float)), *sn = (float *)xmalloc(h * sizeof(float));
    rope_tables_host(cs, sn, c->maxT, c->HD, c->rope_theta);
    m->rope_cos = (float *)device_alloc(h * sizeof(float), "rope table");
    m->rope_sin = (float *)device_alloc(h * sizeof(float), "rope table");
    cudaCheck(cudaMemcpy(m->rope_cos, cs, h * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(m->rope_sin, sn, h * sizeof(float), cudaMemcpyHostToDevice));
    free(cs); free(sn);
    m->mean_loss = -1.0f;
}
// The staged fp32 weights (in grads_memory) become the model's weights.
static void model_commit_staged(Model *m) {
    size_t n = m->num_parameters;
    if (m->master_memory) cudaCheck(cudaMemcpy(m->master_memory, m->grads_memory, n * sizeof(float), cudaMemcpyDeviceToDevice));
    convert_kernel<<<grid_for(n), 256>>>(m->params_memory, m->grads_memory, n);
    LAUNCH_CHECK();
    cudaCheck(cudaMemset(m->grads_memory, 0, n * sizeof(float)));
    cudaCheck(cudaDeviceSynchronize());
}

// 0 on success; on failure one line in err naming the file (checkpoint.h's loader).
static int model_load(Model *m, const char *path, int use_master, char *err, size_t errcap) {
    Checkpoint ck;
    if (ckpt_load(path, &ck, err, errcap) != 0) return -1;
    model_alloc(m, &ck.cfg, use_master);
    cudaCheck(cudaMemcpy(m->grads_memory, ck.params, m->num_parameters * sizeof(float), cudaMemcpyHostToDevice));
    model_commit_staged(m);
    m->tok = ck.tok; m->tok_bytes = ck.tok_bytes; ck.tok = NULL;
    m->n_eos = ck.n_eos; memcpy(m->eos, ck.eos, sizeof m->eos);
    ckpt_free(&ck);
    return 0;
}

// A fresh model, drawn on the device (a 1.5B model is 6 GB of fp32: no host round trip):
// N(0, 0.02) weights, norms 1, biases 0, as transformers initializes Qwen2. Not the same numbers
// as train_empo.c's model_init_random (that one draws on the host), same distribution.
static void model_init_random(Model *m, const ModelConfig *c, int use_master, uint64_t seed) {
    model_alloc(m, c, use_master);
    Tensors<float> st = m->grads;   // the staging area
    size_t n = m->num_parameters;
    init_normal_kernel<<<grid_for(n), 256>>>(m->grads_memory, n, 0.02f, seed * 0x9E3779B97F4A7C15ull + 1);
    LAUNCH_CHECK();
    struct { float *p; size_t n; float v; } fills[4] = {{st.ln1w, m->param_sizes[P_LN1W], 1.0f}, {st.ln2w, m->param_sizes[P_LN2W], 1.0f},
                                                        {st.lnfw, m->param_sizes[P_LNFW], 1.0f}, {st.qkvb, m->param_sizes[P_QKVB], 0.0f}};
    for (int i = 0; i < 4; i++)
        if (fills[i].n) { fill_kernel<<<grid_for(fills[i].n), 256>>>(fills[i].p, fills[i].n, fills[i].v); LAUNCH_CHECK(); }
    model_commit_staged(m);
}

// The weights as fp32 on the host (the master copy if there is one): n = num_parameters floats.
static void model_params_to_host(const Model *m, float *dst) {
    size_t n = m->num_parameters;
    if (m->master_memory) { cudaCheck(cudaMemcpy(dst, m->master_memory, n * sizeof(float), cudaMemcpyDeviceToHost)); return; }
    float *tmp = (float *)device_alloc(n * sizeof(float), "checkpoint staging");
    to_float_kernel<<<grid_for(n), 256>>>(tmp, m->params_memory, n);
    LAUNCH_CHECK();
    cudaCheck(cudaMemcpy(dst, tmp, n * sizeof(float), cudaMemcpyDeviceToHost));
    device_free(tmp, n * sizeof(float));
}
static int model_save(const Model *m, const char *path, int dtype, char *err, size_t errcap) {
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = m->config; ck.dtype = dtype; ck.num_params = m->num_parameters;
    ck.params = (float *)xmalloc(m->num_parameters * sizeof(float));
    model_params_to_host(m, ck.params);
    ck.tok = m->tok; ck.tok_bytes = m->tok_bytes;
    ck.n_eos = m->n_eos; memcpy(ck.eos, m->eos, sizeof ck.eos);
    int rc = ckpt_save(path, &ck, err, errcap);
    free(ck.params);
    return rc;
}

static void model_free(Model *m) {
    size_t n = m->num_parameters;
    device_free(m->params_memory, n * sizeof(floatX));
    device_free(m->grads_memory, n * sizeof(float));
    device_free(m->master_memory, n * sizeof(float));
    device_free(m->m_memory, n * sizeof(float));
    device_free(m->v_memory, n * sizeof(float));
    device_free(m->norm_scratch, (NORM_BLOCKS + 1) * sizeof(float));
    size_t h = (size_t)m->config.maxT * (m->config.HD / 2);
    device_free(m->rope_cos, h * sizeof(float));
    device_free(m->rope_sin, h * sizeof(float));
    device_free(m->acts_memory, m->acts_bytes);
    free(m->inputs); free(m->targets); free(m->logp); free(m->dlogp); free(m->tok);
    memset(m, 0, sizeof *m);
}

// Rows of logits per LM-head chunk: about 256 MiB of floatX by default, never more than N.
static int head_rows_for(const Model *m, int N) {
    int r = m->head_rows;
    if (r <= 0) {
        size_t rows = ((size_t)256 << 20) / ((size_t)m->config.V * sizeof(floatX));
        r = rows < 1 ? 1 : rows > (1u << 20) ? (1 << 20) : (int)rows;
    }
    return r < N ? r : N;
}

// (Re)allocates activations and scratch for a B x T batch (and the current recompute setting).
static void model_resize(Model *m, int B, int T) {
    if (m->B == B && m->T == T && m->acts_memory && m->head_rows_used == head_rows_for(m, B * T) && m->recompute_used == m->recompute) return;
    const ModelConfig *c = &m->config;
    device_free(m->acts_memory, m->acts_bytes);
    free(m->inputs); free(m->targets); free(m->logp); free(m->dlogp);
    size_t L = c->L, N = (size_t)B * T, C = c->C, QKV = cfg_qkv_dim(c), NHD = (size_t)c->NH * c->HD, I = c->I;
    size_t Lln = m->recompute >= 2 ? 1 : L, Lsw = m->recompute >= 1 ? 1 : L;
    int hr = head_rows_for(m, (int)N);
    size_t X = sizeof(floatX), F = sizeof(float);
    Activations *a = &m->acts;
    void **ptrs[NUM_ACTS] = {(void **)&a->encoded, (void **)&a->ln1, (void **)&a->ln1_rstd, (void **)&a->qkv, (void **)&a->atty,
                             (void **)&a->att_lse, (void **)&a->resid2, (void **)&a->ln2, (void **)&a->ln2_rstd, (void **)&a->fch,
                             (void **)&a->swiglu, (void **)&a->resid3, (void **)&a->lnf, (void **)&a->lnf_rstd, (void **)&a->lse,
                             (void **)&a->logp, (void **)&a->dlogp, (void **)&a->inputs, (void **)&a->targets, (void **)&a->head,
                             (void **)&a->proj, (void **)&a->dresidual, (void **)&a->dln, (void **)&a->dqkv, (void **)&a->datty,
                             (void **)&a->dfch, (void **)&a->dswiglu, (void **)&a->att_D};
    size_t bytes[NUM_ACTS] = {N * C * X, Lln * N * C * X, L * N * F, L * N * QKV * X, L * N * NHD * X,
                              L * N * c->NH * F, L * N * C * X, Lln * N * C * X, L * N * F, L * N * 2 * I * X,
                              Lsw * N * I * X, L * N * C * X, N * C * X, N * F, N * F,
                              N * F, N * F, N * sizeof(int), N * sizeof(int), (size_t)hr * c->V * X,
                              N * C * X, N * C * X, N * C * X, N * QKV * X, N * NHD * X,
                              N * 2 * I * X, N * I * X, N * c->NH * F};
    size_t total = 0;
    for (int i = 0; i < NUM_ACTS; i++) total += (bytes[i] + 255) / 256 * 256;
    m->acts_memory = device_alloc(total, "activations");
    m->acts_bytes = total;
    char *p = (char *)m->acts_memory;
    for (int i = 0; i < NUM_ACTS; i++) { *ptrs[i] = p; p += (bytes[i] + 255) / 256 * 256; }
    m->inputs = (int *)xmalloc(N * sizeof(int));
    m->targets = (int *)xmalloc(N * sizeof(int));
    m->logp = (float *)xmalloc(N * sizeof(float));
    m->dlogp = (float *)xmalloc(N * sizeof(float));
    m->B = B; m->T = T; m->head_rows_used = hr; m->recompute_used = m->recompute;
}

// ----------------------------------------------------------------------------
// 5. forward, loss, backward, update (the same contract as train_empo.c)

// Pointers of layer l's saved activations (the shared buffer where recomputation applies).
typedef struct { floatX *resid, *ln1, *qkv, *atty, *resid2, *ln2, *fch, *swiglu, *resid3; float *ln1_rstd, *ln2_rstd, *att_lse; } LayerActs;
static LayerActs layer_acts(const Model *m, int l) {
    const ModelConfig *c = &m->config;
    const Activations *a = &m->acts;
    size_t N = (size_t)m->B * m->T, C = c->C, QKV = cfg_qkv_dim(c), NHD = (size_t)c->NH * c->HD, I = c->I;
    size_t lln = m->recompute_used >= 2 ? 0 : l, lsw = m->recompute_used >= 1 ? 0 : l;
    LayerActs la;
    la.resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C;
    la.ln1 = a->ln1 + lln * N * C;
    la.ln1_rstd = a->ln1_rstd + (size_t)l * N;
    la.qkv = a->qkv + (size_t)l * N * QKV;
    la.atty = a->atty + (size_t)l * N * NHD;
    la.att_lse = a->att_lse + (size_t)l * N * c->NH;
    la.resid2 = a->resid2 + (size_t)l * N * C;
    la.ln2 = a->ln2 + lln * N * C;
    la.ln2_rstd = a->ln2_rstd + (size_t)l * N;
    la.fch = a->fch + (size_t)l * N * 2 * I;
    la.swiglu = a->swiglu + lsw * N * I;
    la.resid3 = a->resid3 + (size_t)l * N * C;
    return la;
}

// The LM head over rows [r0, r0 + rows): logits chunk = lnf @ lmw^T, then log-softmax at the targets.
// backward = 1: the chunk's dlogits, then dlnf rows = dlogits @ lmw and dlmw += dlogits^T @ lnf.
static void lm_head_chunk(Model *m, int r0, int rows, int backward) {
    const ModelConfig *c = &m->config;
    Activations *a = &m->acts;
    int C = c->C, V = c->V;
    matmul_forward(a->head, a->lnf + (size_t)r0 * C, m->params.lmw, NULL, rows, C, V);
    logsoftmax_kernel<<<rows, 512>>>(a->head, a->lse + r0, a->logp + r0, a->targets + r0, a->dlogp + r0, V, backward);
    LAUNCH_CHECK();
    if (backward) matmul_backward(a->dln + (size_t)r0 * C, m->grads.lmw, NULL, a->head, a->lnf + (size_t)r0 * C, m->params.lmw, rows, C, V);
}

// inputs, targets (B, T) host arrays; targets may be NULL (then no loss), -1 = no target there.
// mask (B, T) weights each position's loss (NULL = all 1). Loss = sum(mask * -logp) / sum(mask),
// computed on the host from the log-probs, which it leaves in m->logp; it also sets m->dlogp for
// model_backward (callers with another objective overwrite m->dlogp before the backward).
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T) {
    const ModelConfig *c = &m->config;
    if (T > c->maxT) FATAL("sequence length %d exceeds the model's max_seq_len %d", T, c->maxT);
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= c->V) FATAL("input token %d at position %d is outside the vocab (%d)", inputs[i], i, c->V);
    if (targets)
        for (int i = 0; i < B * T; i++)
            if (targets[i] < -1 || targets[i] >= c->V) FATAL("target %d at position %d is outside the vocab (%d)", targets[i], i, c->V);
    model_resize(m, B, T);
    int N = B * T, C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Activations *a = &m->acts;
    Tensors<floatX> *p = &m->params;
    memcpy(m->inputs, inputs, (size_t)N * sizeof(int));
    for (int i = 0; i < N; i++) m->targets[i] = targets ? targets[i] : -1;
    cudaCheck(cudaMemcpy(a->inputs, m->inputs, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(a->targets, m->targets, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    embedding_forward(a->encoded, a->inputs, p->wte, N, C);
    for (int l = 0; l < L; l++) {
        LayerActs la = layer_acts(m, l);
        if (l == 0) rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w, N, C, eps);   // later layers: fused below
        matmul_forward(la.qkv, la.ln1, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N, C, QKV);
        rope_forward(la.qkv, m->rope_cos, m->rope_sin, N, T, NH, NKV, HD);
        attention_forward(la.atty, la.att_lse, la.qkv, B, T, NH, NKV, HD);
        matmul_forward(a->proj, la.atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
        residual_rmsnorm_forward(la.resid2, la.ln2, la.ln2_rstd, la.resid, a->proj, p->ln2w + (size_t)l * C, N, C, eps);
        matmul_forward(la.fch, la.ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
        swiglu_forward(la.swiglu, la.fch, N, I);
        matmul_forward(a->proj, la.swiglu, p->fcprojw + (size_t)l * C * I, NULL, N, I, C);
        // the residual add, fused with the next RMSNorm: the next layer's ln1, or the final norm
        if (l + 1 < L) {
            LayerActs nx = layer_acts(m, l + 1);
            residual_rmsnorm_forward(la.resid3, nx.ln1, nx.ln1_rstd, la.resid2, a->proj, p->ln1w + (size_t)(l + 1) * C, N, C, eps);
        } else {
            residual_rmsnorm_forward(la.resid3, a->lnf, a->lnf_rstd, la.resid2, a->proj, p->lnfw, N, C, eps);
        }
    }
    m->mean_loss = -1.0f;
    if (!targets) return;
    for (int r0 = 0; r0 < N; r0 += m->head_rows_used) lm_head_chunk(m, r0, N - r0 < m->head_rows_used ? N - r0 : m->head_rows_used, 0);
    cudaCheck(cudaMemcpy(m->logp, a->logp, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    double wsum = 0.0, lsum = 0.0;
    for (int i = 0; i < N; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        wsum += w; lsum += w * -m->logp[i];
    }
    m->mean_loss = wsum > 0 ? (float)(lsum / wsum) : 0.0f;
    for (int i = 0; i < N; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        m->dlogp[i] = wsum > 0 ? (float)(-w / wsum) : 0.0f;
    }
}

// Logits of rows [r0, r0 + rows) of the last forward, to the host (rows, V) fp32. For tests and
// inspection: training never needs them.
static void model_logits_rows(Model *m, int r0, int rows, float *dst) {
    const ModelConfig *c = &m->config;
    int hr = m->head_rows_used, V = c->V;
    float *tmp = (float *)device_alloc((size_t)hr * V * sizeof(float), "logits staging");
    for (int s = 0; s < rows; s += hr) {
        int n = rows - s < hr ? rows - s : hr;
        matmul_forward(m->acts.head, m->acts.lnf + (size_t)(r0 + s) * c->C, m->params.lmw, NULL, n, c->C, V);
        to_float_kernel<<<grid_for((size_t)n * V), 256>>>(tmp, m->acts.head, (size_t)n * V);
        LAUNCH_CHECK();
        cudaCheck(cudaMemcpy(dst + (size_t)s * V, tmp, (size_t)n * V * sizeof(float), cudaMemcpyDeviceToHost));
    }
    device_free(tmp, (size_t)hr * V * sizeof(float));
}

static void model_zero_grad(Model *m) { cudaCheck(cudaMemset(m->grads_memory, 0, m->num_parameters * sizeof(float))); }

// Accumulates into the parameter gradients the gradient of sum_{b,t} dlogp[b,t] * logp[b,t], with
// m->dlogp (host) as left by the forward's loss or set by the caller. Needs the forward just before.
static void model_backward(Model *m) {
    if (!m->acts_memory || m->mean_loss < 0) FATAL("model_backward needs a forward with targets first");
    const ModelConfig *c = &m->config;
    int B = m->B, T = m->T, N = B * T;
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Tensors<floatX> *p = &m->params;
    Tensors<float> *g = &m->grads;
    Activations *a = &m->acts;
    cudaCheck(cudaMemcpy(a->dlogp, m->dlogp, (size_t)N * sizeof(float), cudaMemcpyHostToDevice));
    // the LM head, chunk by chunk (logits recomputed: only one chunk ever exists), then the final norm
    for (int r0 = 0; r0 < N; r0 += m->head_rows_used) lm_head_chunk(m, r0, N - r0 < m->head_rows_used ? N - r0 : m->head_rows_used, 1);
    cudaCheck(cudaMemset(a->dresidual, 0, (size_t)N * C * sizeof(floatX)));
    rmsnorm_backward(a->dresidual, g->lnfw, a->dln, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, a->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        LayerActs la = layer_acts(m, l);
        // dresidual holds dLoss/d(resid3); the residual adds pass it through unchanged
        if (m->recompute_used >= 2) rmsnorm_forward(la.ln2, la.ln2_rstd, la.resid2, p->ln2w + (size_t)l * C, N, C, eps);
        if (m->recompute_used >= 1) swiglu_forward(la.swiglu, la.fch, N, I);
        matmul_backward(a->dswiglu, g->fcprojw + (size_t)l * C * I, NULL, a->dresidual, la.swiglu, p->fcprojw + (size_t)l * C * I, N, I, C);
        swiglu_backward(a->dfch, a->dswiglu, la.fch, N, I);
        matmul_backward(a->dln, g->fcw + (size_t)l * 2 * I * C, NULL, a->dfch, la.ln2, p->fcw + (size_t)l * 2 * I * C, N, C, 2 * I);
        rmsnorm_backward(a->dresidual, g->ln2w + (size_t)l * C, a->dln, la.resid2, p->ln2w + (size_t)l * C, la.ln2_rstd, N, C);
        // now dresidual = dLoss/d(resid2)
        matmul_backward(a->datty, g->attprojw + (size_t)l * C * NH * HD, NULL, a->dresidual, la.atty, p->attprojw + (size_t)l * C * NH * HD,
                        N, NH * HD, C);
        attention_backward(a->dqkv, a->att_D, a->datty, la.atty, la.qkv, la.att_lse, B, T, NH, NKV, HD);
        rope_backward(a->dqkv, m->rope_cos, m->rope_sin, N, T, NH, NKV, HD);
        if (m->recompute_used >= 2) rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w + (size_t)l * C, N, C, eps);
        matmul_backward(a->dln, g->qkvw + (size_t)l * QKV * C, c->qkv_bias ? g->qkvb + (size_t)l * QKV : NULL, a->dqkv, la.ln1,
                        p->qkvw + (size_t)l * QKV * C, N, C, QKV);
        rmsnorm_backward(a->dresidual, g->ln1w + (size_t)l * C, a->dln, la.resid, p->ln1w + (size_t)l * C, la.ln1_rstd, N, C);
        // now dresidual = dLoss/d(layer input)
    }
    embedding_backward(g->wte, a->dresidual, a->inputs, N, C);
}

// Global L2 norm of all gradients (device), then clipping to grad_clip (<= 0: none) and one AdamW
// step as torch.optim.AdamW computes it. Returns the norm before clipping.
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_clip) {
    size_t n = m->num_parameters;
    if (!m->m_memory) {
        m->m_memory = (float *)device_alloc(n * sizeof(float), "AdamW m");
        m->v_memory = (float *)device_alloc(n * sizeof(float), "AdamW v");
        cudaCheck(cudaMemset(m->m_memory, 0, n * sizeof(float)));
        cudaCheck(cudaMemset(m->v_memory, 0, n * sizeof(float)));
    }
    sumsq_kernel<<<NORM_BLOCKS, 256>>>(m->norm_scratch, m->grads_memory, n);
    LAUNCH_CHECK();
    norm_finish_kernel<<<1, 1024>>>(m->norm_scratch + NORM_BLOCKS, m->norm_scratch, NORM_BLOCKS);
    LAUNCH_CHECK();
    m->adam_step++;
    double bc1 = 1.0 - pow(beta1, m->adam_step), bc2 = 1.0 - pow(beta2, m->adam_step);   // in double, as torch does
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    uint64_t seed = 0x5EEDull + (uint64_t)m->adam_step * 0x2545F4914F6CDD1Dull;
    adamw_kernel<<<grid_for(n), 256>>>(m->params_memory, m->master_memory, m->grads_memory, m->m_memory, m->v_memory, n, lr, beta1, beta2,
                                       eps, weight_decay, step_size, bc2_sqrt, m->norm_scratch + NORM_BLOCKS, grad_clip, seed);
    LAUNCH_CHECK();
    float norm;
    cudaCheck(cudaMemcpy(&norm, m->norm_scratch + NORM_BLOCKS, sizeof(float), cudaMemcpyDeviceToHost));
    return norm;
}

// Model FLOPs per token of one training step (forward + backward = 3x forward), the usual way:
// 6 per matmul weight (the LM head counted even when tied) plus causal attention's two T x T
// products, 6 * NH * HD * T per layer on average over positions (half of the full square).
// Recomputation is not counted: MFU measures useful work.
static double flops_per_token(const ModelConfig *c, int T) {
    double C = c->C, QKV = cfg_qkv_dim(c), NHD = (double)c->NH * c->HD, I = c->I, V = c->V;
    double matmul_params = c->L * (QKV * C + C * NHD + 2 * I * C + C * I) + V * C;
    return 6.0 * matmul_params + 6.0 * c->L * NHD * T;
}

// ----------------------------------------------------------------------------
// 6. main: train on random tokens, to measure speed and memory (the EMPO loop comes in part 2)

#ifndef TESTING

static void usage(void) {
    printf(
"usage: ./train_empo_cu (-m model.bin | --init SPEC) [options]\n"
"Forward + backward + AdamW on the GPU on random tokens: tokens/s, MFU and peak memory.\n"
"  -m FILE         checkpoint (.bin, doc/formats.md)\n"
"  --init SPEC     random model: qwen1.5b (Qwen2.5-Math-1.5B's shape), or keys V,C,L,NH,NKV,I,T,tied\n"
"                  over the qwen1.5b defaults, e.g. V=151936,C=1536,L=28,NH=12,NKV=2,I=8960,T=4096,tied=1\n"
"  -B INT          batch size                                  8\n"
"  -T INT          sequence length                             1024\n"
"  -x INT          steps                                       10 (the first 2 are warm-up, not timed)\n"
"  -r INT          recompute: 0 none, 1 SwiGLU, 2 SwiGLU and RMSNorm outputs   0\n"
"  --master INT    1: fp32 master weights; 0: bf16 weights, stochastic rounding  1\n"
"  --head-rows INT rows of logits per LM-head chunk (0 = about 256 MiB)        0\n"
"  -l FLOAT        learning rate                               1e-5\n"
"  -w FLOAT        weight decay                                0\n"
"  -c FLOAT        gradient clip (global norm; 0 = off)        1.0\n"
"  -o FILE         save the trained model (fp32 .bin) at the end\n"
"  --json FILE     append the results as one JSON line\n"
"  -s INT          seed                                        1337\n");
}
static ModelConfig parse_init_spec(const char *spec) {
    ModelConfig c;   // Qwen2.5-Math-1.5B
    memset(&c, 0, sizeof c);
    c.V = 151936; c.C = 1536; c.L = 28; c.NH = 12; c.NKV = 2; c.I = 8960; c.maxT = 4096; c.tied = 1; c.qkv_bias = 1;
    c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    const char *s = strcmp(spec, "qwen1.5b") ? spec : "";
    while (*s) {
        char key[8]; int val, used;
        if (sscanf(s, "%7[A-Za-z]=%d%n", key, &val, &used) != 2) FATAL("--init: cannot read '%s' (expected e.g. C=1536,L=28 or qwen1.5b)", s);
        if (!strcmp(key, "V")) c.V = val; else if (!strcmp(key, "C")) c.C = val; else if (!strcmp(key, "L")) c.L = val;
        else if (!strcmp(key, "NH")) c.NH = val; else if (!strcmp(key, "NKV")) c.NKV = val; else if (!strcmp(key, "I")) c.I = val;
        else if (!strcmp(key, "T")) c.maxT = val; else if (!strcmp(key, "tied")) c.tied = val;
        else FATAL("--init: unknown key '%s' (V, C, L, NH, NKV, I, T, tied)", key);
        s += used;
        if (*s == ',') s++;
    }
    if (c.NH <= 0 || c.C % c.NH) FATAL("--init: C must be a multiple of NH");
    c.HD = c.C / c.NH;
    const char *bad = cfg_invalid(&c);
    if (bad) FATAL("--init: %s", bad);
    return c;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *init_spec = NULL, *out_path = NULL, *json_path = NULL;
    int B = 8, T = 1024, steps = 10, recompute = 0, use_master = 1, head_rows = 0, seed = 1337;
    float lr = 1e-5f, wd = 0.0f, clip = 1.0f;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(); return 0; }
        if (i + 1 >= argc) FATAL("flag %s needs a value (see -h)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "-m")) model_path = v;
        else if (!strcmp(f, "--init")) init_spec = v;
        else if (!strcmp(f, "-B")) B = arg_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "-T")) T = arg_int(f, v, 1, 1 << 22);
        else if (!strcmp(f, "-x")) steps = arg_int(f, v, 1, 1 << 30);
        else if (!strcmp(f, "-r")) recompute = arg_int(f, v, 0, 2);
        else if (!strcmp(f, "--master")) use_master = arg_int(f, v, 0, 1);
        else if (!strcmp(f, "--head-rows")) head_rows = arg_int(f, v, 0, 1 << 24);
        else if (!strcmp(f, "-l")) lr = arg_float(f, v, 0.0f, 10.0f);
        else if (!strcmp(f, "-w")) wd = arg_float(f, v, 0.0f, 10.0f);
        else if (!strcmp(f, "-c")) clip = arg_float(f, v, 0.0f, 1e9f);
        else if (!strcmp(f, "-o")) out_path = v;
        else if (!strcmp(f, "--json")) json_path = v;
        else if (!strcmp(f, "-s")) seed = arg_int(f, v, 0, 1 << 30);
        else FATAL("unknown flag %s (see -h)", f);
    }
    if (!model_path && !init_spec) FATAL("give a model: -m model.bin or --init qwen1.5b (see -h)");
    ModelConfig init_cfg;
    if (init_spec) init_cfg = parse_init_spec(init_spec);   // bad flags are reported before anything else
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) FATAL("no CUDA device");
    gpu_init();
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    Model m;
    char err[512];
    if (init_spec) model_init_random(&m, &init_cfg, use_master, (uint64_t)seed);
    else if (model_load(&m, model_path, use_master, err, sizeof err) != 0) FATAL("%s", err);
    m.recompute = recompute; m.head_rows = head_rows;
    const ModelConfig *c = &m.config;
    if (T > c->maxT) FATAL("-T %d exceeds the model's max_seq_len %d", T, c->maxT);
    printf("device: %s (%d SMs), precision %s, %s\n", prop.name, g_num_sms, PRECISION_NAME,
           m.master_memory ? "fp32 master weights" : (sizeof(floatX) == 2 ? "bf16 weights + stochastic rounding" : "fp32 weights"));
    printf("model: %.1fM params, V=%d C=%d L=%d NH=%d NKV=%d HD=%d I=%d, %s; B=%d T=%d, recompute %d\n", m.num_parameters / 1e6, c->V,
           c->C, c->L, c->NH, c->NKV, c->HD, c->I, c->tied ? "tied" : "untied", B, T, recompute);
    // random tokens: targets are the next input, the last position of each row has none
    int N = B * T;
    int *inputs = (int *)xmalloc((size_t)N * sizeof(int)), *targets = (int *)xmalloc((size_t)N * sizeof(int));
    uint64_t rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 7;
    for (int i = 0; i < N; i++) { rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27; inputs[i] = (int)((rng * 0x2545F4914F6CDD1Dull >> 33) % c->V); }
    for (int i = 0; i < N; i++) targets[i] = (i % T) + 1 < T ? inputs[i + 1] : -1;
    size_t free0, total;
    cudaCheck(cudaMemGetInfo(&free0, &total));
    size_t peak_used = 0;
    double timed = 0.0;
    int warmup = steps > 2 ? 2 : 0;
    float first_loss = 0.0f, loss = 0.0f;
    for (int s = 0; s < steps; s++) {
        cudaCheck(cudaDeviceSynchronize());
        double t0 = now_seconds();
        model_forward(&m, inputs, targets, NULL, B, T);
        model_zero_grad(&m);
        model_backward(&m);
        float norm = model_update(&m, lr, 0.9f, 0.95f, 1e-8f, wd, clip);
        cudaCheck(cudaDeviceSynchronize());
        double dt = now_seconds() - t0;
        if (s >= warmup) timed += dt;
        size_t fr;
        cudaCheck(cudaMemGetInfo(&fr, &total));
        if (total - fr > peak_used) peak_used = total - fr;
        loss = m.mean_loss;
        if (s == 0) first_loss = loss;
        printf("step %3d: loss %.4f, grad norm %.3f, %.1f ms, %.0f tok/s\n", s, loss, norm, dt * 1e3, N / dt);
    }
    int nt = steps - warmup;
    double tps = nt > 0 ? (double)N * nt / timed : 0.0;
    double tflops = tps * flops_per_token(c, T) / 1e12;
    // H100/H200 SXM dense bf16: 989 TFLOP/s (the fp32 build is measured against the same figure)
    double mfu = tflops / 989.0;
    printf("---\ntokens/s: %.0f (mean of %d steps after %d warm-up)\n", tps, nt, warmup);
    printf("model TFLOP/s: %.1f, MFU %.1f%% of 989 TFLOP/s\n", tflops, 100 * mfu);
    printf("GPU memory: %.2f GiB allocated by us, %.2f GiB in use on the device at peak (incl. the CUDA context)\n",
           g_device_bytes / 1073741824.0, peak_used / 1073741824.0);
    printf("loss %.4f -> %.4f; %d matmul calls fell back from cuBLASLt to cublasGemmEx\n", first_loss, loss, g_lt_fallbacks);
    if (json_path) {
        FILE *f = fopen(json_path, "a");
        if (!f) FATAL("cannot write %s", json_path);
        fprintf(f, "{\"impl\": \"train_empo_cu\", \"device\": ");
        json_write_str(f, prop.name, strlen(prop.name));
        fprintf(f, ", \"precision\": \"%s\", \"master\": %d, \"recompute\": %d, \"B\": %d, \"T\": %d, \"params\": %zu, "
                   "\"tokens_per_s\": %.1f, \"tflops\": %.2f, \"mfu\": %.4f, \"mem_allocated_gib\": %.3f, \"mem_device_peak_gib\": %.3f, "
                   "\"loss_first\": %.5f, \"loss_last\": %.5f}\n",
                PRECISION_NAME, m.use_master, recompute, B, T, m.num_parameters, tps, tflops, mfu, g_device_bytes / 1073741824.0,
                peak_used / 1073741824.0, first_loss, loss);
        fclose(f);
    }
    if (out_path && model_save(&m, out_path, CKPT_DTYPE_FP32, err, sizeof err) != 0) FATAL("%s", err);
    free(inputs); free(targets);
    model_free(&m);
    return 0;
}
#endif // TESTING
