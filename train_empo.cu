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
  - activation recomputation (--recompute, up to per-layer checkpointing) trades compute for memory;
    lean optimizer states (8-bit or bf16 moments, bf16 gradients, no master copy) and a memory plan
    (--plan: every allocation of a run, listed without a GPU; --mem-cap fits a run to a budget)

Read it top to bottom: 1. utilities and precision, 2. kernels, one forward/backward pair per op,
3. matmul, 4. the model (one allocation each for params, grads, optimizer state and activations),
5. forward / backward / update, 6. generation, 7. the host layer (train_empo.c), 8. the memory plan
and the GPU flags, 9. main: a benchmark (random init at any shape), or the host layer's program.
Notation as in train_empo.c: B, T, C, NH, NKV, HD, QKV = (NH + 2*NKV)*HD, I, V, L, N = B*T.

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
#include "empoc/model.h"
#include "empoc/engine.h"
#pragma GCC diagnostic pop

// ----------------------------------------------------------------------------
// 1. utilities and precision


static void cuda_check(cudaError_t e, const char *file, int line) {
    if (e != cudaSuccess) { fprintf(stderr, "error: CUDA: %s at %s:%d\n", cudaGetErrorString(e), file, line); exit(1); }
}
static void cublas_check(cublasStatus_t s, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS status %d at %s:%d\n", (int)s, file, line);
        exit(1);
    }
}
#define cudaCheck(x) cuda_check((x), __FILE__, __LINE__)
#define cublasCheck(x) cublas_check((x), __FILE__, __LINE__)
// after every kernel launch: catches bad launch configurations where they happen
#define LAUNCH_CHECK() cuda_check(cudaGetLastError(), __FILE__, __LINE__)

// Every device allocation goes through here, so that the benchmark and the run can report what we
// hold, and so that the memory plan (--plan) is the run's own: in plan mode the same code runs its
// allocation functions, and these two calls only count (name, bytes, phase; live and peak) and hand
// out distinct fake addresses that nothing ever dereferences. No CUDA call happens in plan mode:
// the functions the plan walks skip their copies and launches when g_plan is set.
static size_t g_device_bytes = 0, g_device_peak = 0;   // live bytes now, and their high-water mark
static int g_plan = 0;                                   // --plan: count, allocate nothing
static const char *g_phase = "load";                     // where the plan lists an allocation
typedef struct { const char *what, *phase; size_t bytes; uintptr_t addr; long t_alloc, t_free; } PlanEntry;
static PlanEntry *g_plan_log = NULL;
static long g_plan_n = 0, g_plan_cap = 0, g_plan_t = 0, g_plan_t_peak = 0;   // t: allocation events so far
static uintptr_t g_plan_next = (uintptr_t)1 << 40;       // fake device addresses, 256-byte aligned
static void *device_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    if (g_plan) {
        if (g_plan_n == g_plan_cap) {
            g_plan_cap = g_plan_cap ? 2 * g_plan_cap : 256;
            g_plan_log = (PlanEntry *)realloc(g_plan_log, (size_t)g_plan_cap * sizeof(PlanEntry));
            if (!g_plan_log) FATAL("out of memory");
        }
        p = (void *)g_plan_next;
        g_plan_next += ((bytes ? bytes : 16) + 255) / 256 * 256;
        g_plan_log[g_plan_n++] = {what, g_phase, bytes, (uintptr_t)p, ++g_plan_t, -1};
    } else {
        cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
        if (e != cudaSuccess) {
            size_t fr = 0, tot = 0;
            cudaMemGetInfo(&fr, &tot);
            FATAL("out of GPU memory allocating %.2f GiB for %s (%.2f GiB free of %.2f); try --mem-cap, "
                  "--recompute 3 or a smaller -b", bytes / 1073741824.0, what, fr / 1073741824.0, tot / 1073741824.0);
        }
    }
    g_device_bytes += bytes;
    if (g_device_bytes > g_device_peak) { g_device_peak = g_device_bytes; g_plan_t_peak = g_plan_t; }
    return p;
}
static void device_free(void *p, size_t bytes) {
    if (!p) return;
    if (g_plan) {
        long i = g_plan_n - 1;
        while (i >= 0 && (g_plan_log[i].addr != (uintptr_t)p || g_plan_log[i].t_free >= 0)) i--;
        if (i < 0) FATAL("plan: freeing %p, which was never allocated", p);
        g_plan_log[i].t_free = ++g_plan_t;
    } else {
        cudaCheck(cudaFree(p));
    }
    g_device_bytes -= bytes;
}

// floatX: the type of weights, activations and activation gradients. Gradients of the parameters,
// optimizer moments and master weights are always fp32.
__device__ __forceinline__ float tof(float x) { return x; }   // and, in the bf16 build, tof(floatX) below
#ifdef ENABLE_FP32
typedef float floatX;
#define CUDA_X CUDA_R_32F
#define PRECISION_NAME "fp32"
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
static void residual_rmsnorm_forward(floatX *resid_out, floatX *out, float *rstd, const floatX *resid,
                                     const floatX *add,
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
static void rmsnorm_backward(floatX *dx, float *dw, const floatX *dout, const floatX *x, const floatX *w,
                             const float *rstd,
                             int N, int C) {
    int blocks = ceil_div(N, 8);
    if (blocks > 2 * g_num_sms) blocks = 2 * g_num_sms;
    rmsnorm_backward_kernel<<<blocks, 256, (size_t)C * sizeof(float)>>>(dx, dw, dout, x, w, rstd, N, C);
    LAUNCH_CHECK();
}

// --- rotary embedding (HF convention, see train_empo.c: the pair (x[i], x[i+HD/2]) rotates by pos*freq_i)

// In place on the q and k heads of qkv (N, QKV); row n is at position pos[n], or n % T when pos is
// NULL (a (B, T) training batch). dir = +1 forward; dir = -1 rotates back, which is the backward
// (the rotation is orthogonal).
__global__ void rope_kernel(floatX *qkv, const float *cosb, const float *sinb, const int *posv, int N, int T, int NH,
                            int NKV, int HD, float dir) {
    int h = HD / 2, QKV = (NH + 2 * NKV) * HD;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * (NH + NKV) * h) return;
    int i = (int)(idx % h);
    size_t rest = idx / h;
    int head = (int)(rest % (NH + NKV)), n = (int)(rest / (NH + NKV)), pos = posv ? posv[n] : n % T;
    floatX *x = qkv + (size_t)n * QKV + (size_t)head * HD;
    float c = cosb[(size_t)pos * h + i], s = dir * sinb[(size_t)pos * h + i];
    float x1 = tof(x[i]), x2 = tof(x[i + h]);
    x[i] = fx(x1 * c - x2 * s);
    x[i + h] = fx(x2 * c + x1 * s);
}
// qkv (N, QKV); pos (N) device positions, or NULL for rows of a (B, T) batch
static void rope_forward(floatX *qkv, const float *cosb, const float *sinb, const int *pos, int N, int T, int NH,
                         int NKV, int HD) {
    rope_kernel<<<ceil_div((long)N * (NH + NKV) * (HD / 2), 256), 256>>>(qkv, cosb, sinb, pos, N, T, NH, NKV, HD, 1.0f);
    LAUNCH_CHECK();
}
static void rope_backward(floatX *dqkv, const float *cosb, const float *sinb, int N, int T, int NH, int NKV, int HD) {
    rope_kernel<<<ceil_div((long)N * (NH + NKV) * (HD / 2), 256), 256>>>(dqkv, cosb, sinb, NULL, N, T, NH, NKV, HD,
                                                                         -1.0f);
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
__device__ __forceinline__ void att_load_tile(float *dst, const floatX *src, int t0, int T, size_t rowlen, int col,
                                              int HD, int SR) {
    for (int idx = threadIdx.x; idx < ATT_TILE * SR; idx += blockDim.x) {
        int r = idx / SR, d = idx % SR, t = t0 + r;
        dst[idx] = (t < T && d < HD) ? tof(src[(size_t)t * rowlen + col + d]) : 0.0f;
    }
}

// out (B, T, NH*HD), lse (B, NH, T) fp32; qkv (B, T, QKV) with rope applied.
// grid (T/32 query tiles, NH, B); the tile with the most keys (the last) starts first.
template <int DPL>
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_forward_kernel(floatX *out, float *lse, const floatX *qkv,
                                                                           int T, int NH, int NKV, int HD,
                                                                           float scale) {
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
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_backward_dq_kernel(floatX *dqkv, const floatX *dout,
                                                                               const floatX *qkv,
                                                                               const float *lse, const float *D, int T,
                                                                               int NH,
                                                                               int NKV, int HD, float scale) {
    extern __shared__ float4 att_smem4[];
    float *smem = (float *)att_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD;
    float *sQ = smem, *sG = sQ + ATT_TILE * SR, *sK = sG + ATT_TILE * SR, *sV = sK + ATT_TILE * SR,
          *sS = sV + ATT_TILE * SR;
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
__global__ void __launch_bounds__(ATT_WARPS * 32) attention_backward_dkv_kernel(floatX *dqkv, const floatX *dout,
                                                                                const floatX *qkv,
                                                                                const float *lse, const float *D,
                                                                                int T, int NH,
                                                                                int NKV, int HD, float scale) {
    extern __shared__ float4 att_smem4[];
    float *smem = (float *)att_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float *sK = smem, *sV = sK + ATT_TILE * SR, *sQ = sV + ATT_TILE * SR, *sG = sQ + ATT_TILE * SR;
    float *sP = sG + ATT_TILE * SR, *sS = sP + ATT_WARPS * ATT_R * 32, *sL = sS + ATT_WARPS * ATT_R * 32,
          *sD = sL + ATT_TILE;
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

// --- causal GQA attention on tensor cores (bf16 build, head dims 64 and 128)
//
// FlashAttention-2's algorithm on mma.sync m16n8k16 (bf16 in, fp32 accumulation), for the two
// head dims Qwen2.5 uses; every other head dim, and the fp32 build, take the FMA kernels above.
// Forward: a block of 4 warps owns 64 query rows (16 per warp); keys and values stream through
// shared memory 64 at a time, double-buffered (cp.async loads chunk c + 1 while chunk c computes;
// the backward streams its queries the same way). Each warp keeps its Q fragments, the scores
// S = Q K^T, the online softmax statistics and the output O in registers; the probabilities P are
// rounded to bf16 and reused in place as the A operand of O += P V (no shared-memory round trip).
// Backward: a block owns 64 keys of one *query* head (so B = 1, T = 2300 gives 36 x 12 = 432
// blocks) and streams the queries i >= its first key 32 at a time: S^T = K Q^T and dP^T = V dO^T
// per warp (16 keys), dV += P^T dO and dK += dS^T Q from registers, and dS through shared memory
// for dQ += dS K, which goes to an fp32 buffer by atomicAdd (FA2's choice: dQ's last bits depend
// on the order the blocks run in). Each query head's dK, dV go to fp32 scratch, summed over the
// group in head order by a last kernel (deterministic). Operands come from shared memory by ldmatrix (.trans
// where the product needs the transposed tile: V, dO and Q in the k-major positions); rows are
// padded by 8 bf16 (16 bytes) so the 8 row addresses of an ldmatrix hit distinct banks.

// ==== begin tensor-core primitives: the only inline PTX of this file. dev/cuda/emulate.py
// replaces this block by dev/cuda/emu_test.cpp's implementations of the same instructions (warp
// collectives written from the fragment layouts of the PTX ISA, "Warp Level Matrix
// Multiply-Accumulate Instructions": "Matrix Fragments for mma.m16n8k16 with floating point type"
// and "Warp-level matrix load instruction: ldmatrix"; cp.async from "Data Movement and Conversion
// Instructions"). Lane l: groupID g = l / 4, threadID_in_group t = l % 4.

// d (16x8 fp32) += a (16x16 bf16, row-major) * b (16x8 bf16, column-major), one warp. A 32-bit
// register holds two bf16, the lower column (a) or row (b) in the low half. a[0]: (g, 2t..2t+1),
// a[1]: (g+8, 2t..), a[2]: (g, 2t+8..), a[3]: (g+8, 2t+8..); b0: (k 2t..2t+1, n g), b1: (k 2t+8.., n g);
// d[0..1]: (g, 2t..2t+1), d[2..3]: (g+8, 2t..).
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the addresses of matrix i's rows
// (16 bytes each); r[i] of lane l = matrix i's row g, columns 2t, 2t+1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *smem_row) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// The same with each matrix transposed: r[i] of lane l = matrix i's rows 2t, 2t+1 at column g.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *smem_row) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// cp.async (PTX ISA "Data Movement and Conversion Instructions: cp.async", sm_80+): a 16-byte
// global -> shared copy that runs in the background (.cg: through L2 only); commit_group closes
// this thread's copies issued so far into a group, wait_group 0 waits until all of them landed.
// Other threads see the data only after the wait and a __syncthreads.
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" : : "r"(a), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" : : : "memory"); }
__device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_group 0;\n" : : : "memory"); }
// ==== end tensor-core primitives

// Two floats as a bf16x2 register (round to nearest even), lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16);
}
// This lane's row address for ldmatrix_x4 of the 16x16 tile at s (row pitch p elements), in the
// order of an A fragment: (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15). With
// ldmatrix_x4_trans the same addresses give two B fragments of a k-major tile (rows = k): n-tile
// 0 in r[0], r[1], n-tile 1 (columns 8-15) in r[2], r[3].
template <typename X> __device__ __forceinline__ const X *frag_a_addr(const X *s, int p) {
    int l = threadIdx.x % 32;
    return s + (l & 15) * p + (l >> 4) * 8;
}
// ... in the order of two B fragments of an n-major tile (rows = n, e.g. K in S = Q K^T):
// (rows 0-7, cols 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15): n-tile 0 in r[0], r[1], n-tile 1 in r[2], r[3].
template <typename X> __device__ __forceinline__ const X *frag_b_addr(const X *s, int p) {
    int l = threadIdx.x % 32;
    return s + ((l & 7) + ((l >> 4) << 3)) * p + ((l >> 3) & 1) * 8;
}

#define ATT_TC_WARPS 4
#define ATT_TC_BR 64    // forward: query rows per block; backward: keys per block (16 per warp)
#define ATT_TC_BC 64    // forward: keys per streamed chunk
#define ATT_TC_BQ 32    // backward: queries per streamed chunk
#define ATT_TC_PS (ATT_TC_BC + 8)   // row pitch of the backward's dS tile (32, 64)

#ifndef ENABLE_FP32
// Starts copying rows [t0, t0 + rows) of one head (src points at row 0's first element of the
// head, rows rowlen elements apart) into dst (rows, HD + 8) by 16-byte cp.async, and stores zeros
// beyond T. All threads; the data is there after cp_async_wait_all() and a __syncthreads().
template <int HD>
__device__ __forceinline__ void att_tc_load(floatX *dst, const floatX *src, int t0, int rows, int T, size_t rowlen) {
    constexpr int V = HD / 8;
    for (int idx = threadIdx.x; idx < rows * V; idx += blockDim.x) {
        int r = idx / V, c = idx % V;
        floatX *d = dst + r * (HD + 8) + c * 8;
        if (t0 + r < T) {
            cp_async16(d, src + (size_t)(t0 + r) * rowlen + c * 8);
        } else {
            int4 z = {0, 0, 0, 0};
            *(int4 *)d = z;
        }
    }
    cp_async_commit();
}

// out (B, T, NH*HD), lse (B, NH, T) fp32; qkv (B, T, QKV) with rope applied; 16-byte aligned rows.
// grid (T/64 query tiles, NH, B), the tile with the most keys first; 4 warps.
template <int HD>
__global__ void __launch_bounds__(ATT_TC_WARPS * 32)
    attention_forward_tc_kernel(floatX *out, float *lse, const floatX *qkv, int T, int NH, int NKV, float scale) {
    constexpr int P = HD + 8, NT = ATT_TC_BC / 8, DT = HD / 8;
    extern __shared__ float4 att_smem4[];
    // two stages of (K, V) chunks: chunk c + 1 loads (cp.async) while chunk c computes. Q passes
    // through stage 1's K buffer into registers before chunk 1 is loaded there.
    static_assert(ATT_TC_BR == ATT_TC_BC, "Q borrows a K buffer");
    floatX *sKV = (floatX *)att_smem4, *sQ = sKV + 2 * ATT_TC_BC * P;   // sKV (2 stages, K | V, 64, P)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int q0 = (gridDim.x - 1 - blockIdx.x) * ATT_TC_BR, hq = blockIdx.y, b = blockIdx.z, hk = hq / (NH / NKV);
    const size_t QKV = (size_t)(NH + 2 * NKV) * HD;
    const floatX *base = qkv + (size_t)b * T * QKV, *kbase = base + (size_t)(NH + hk) * HD;
    const floatX *vbase = base + (size_t)(NH + NKV + hk) * HD;
    att_tc_load<HD>(sQ, base + (size_t)hq * HD, q0, ATT_TC_BR, T, QKV);
    att_tc_load<HD>(sKV, kbase, 0, ATT_TC_BC, T, QKV);                      // chunk 0 into stage 0
    att_tc_load<HD>(sKV + ATT_TC_BC * P, vbase, 0, ATT_TC_BC, T, QKV);
    cp_async_wait_all();
    __syncthreads();
    uint32_t qa[HD / 16][4];   // this warp's 16 query rows as A fragments, for the whole loop
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) ldmatrix_x4(qa[kk], frag_a_addr(sQ + warp * 16 * P + kk * 16, P));
    float o[DT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};   // rows g and g + 8 of the warp
#pragma unroll
    for (int dt = 0; dt < DT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
    int kend = min(T, q0 + ATT_TC_BR);   // causal: no key beyond the tile's last query
    for (int k0 = 0, stg = 0; k0 < kend; k0 += ATT_TC_BC, stg ^= 1) {
        cp_async_wait_all();   // this thread's copies of chunk k0 have landed
        __syncthreads();       // everyone's have, and everyone is done with chunk k0 - 64 (and Q)
        if (k0 + ATT_TC_BC < kend) {   // chunk k0 + 64 into the other stage, while this one computes
            floatX *nK = sKV + (stg ^ 1) * 2 * ATT_TC_BC * P;
            att_tc_load<HD>(nK, kbase, k0 + ATT_TC_BC, ATT_TC_BC, T, QKV);
            att_tc_load<HD>(nK + ATT_TC_BC * P, vbase, k0 + ATT_TC_BC, ATT_TC_BC, T, QKV);
        }
        const floatX *sK = sKV + stg * 2 * ATT_TC_BC * P, *sV = sK + ATT_TC_BC * P;
        float s[NT][4];   // S (16 rows, 64 keys): s[nt][e] is row row[e / 2], key k0 + 8 nt + 2t + e % 2
#pragma unroll
        for (int nt = 0; nt < NT; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++)
#pragma unroll
            for (int np = 0; np < NT / 2; np++) {
                uint32_t bk[4];
                ldmatrix_x4(bk, frag_b_addr(sK + np * 16 * P + kk * 16, P));
                mma_bf16_16816(s[2 * np], qa[kk], bk[0], bk[1]);
                mma_bf16_16816(s[2 * np + 1], qa[kk], bk[2], bk[3]);
            }
        // online softmax; a row's 64 scores are spread over the 4 lanes of its group (xor 1, 2)
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = k0 + nt * 8 + 2 * t + (e & 1);
                s[nt][e] = (j <= row[e / 2] && j < T) ? s[nt][e] * scale : -INFINITY;
                mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
            }
        float corr[2], mref[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mnew = fmaxf(m[r], mx[r]);
            mref[r] = mnew == -INFINITY ? 0.0f : mnew;   // a row with nothing valid yet stays at p = 0
            corr[r] = expf(m[r] - mref[r]);              // 0 on a row's first valid chunk
            m[r] = mnew;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[nt][e] = expf(s[nt][e] - mref[e / 2]);   // masked: exp(-inf) = 0
                l[e / 2] += s[nt][e];                      // this lane's part of the row sum
            }
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            o[dt][0] *= corr[0]; o[dt][1] *= corr[0]; o[dt][2] *= corr[1]; o[dt][3] *= corr[1];
        }
        // O += P V: the C fragments of key tiles 2kk, 2kk + 1 are the A fragment of keys 16kk..16kk+15
#pragma unroll
        for (int kk = 0; kk < NT / 2; kk++) {
            uint32_t pa[4] = {pack_bf16x2(s[2 * kk][0], s[2 * kk][1]), pack_bf16x2(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t bv[4];
                ldmatrix_x4_trans(bv, frag_a_addr(sV + kk * 16 * P + dp * 16, P));
                mma_bf16_16816(o[2 * dp], pa, bv[0], bv[1]);
                mma_bf16_16816(o[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (row[r] >= T) continue;
        float inv = 1.0f / l[r];
        floatX *y = out + ((size_t)b * T + row[r]) * NH * HD + (size_t)hq * HD + 2 * t;
#pragma unroll
        for (int dt = 0; dt < DT; dt++)
            *(uint32_t *)(y + dt * 8) = pack_bf16x2(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        if (t == 0) lse[((size_t)b * NH + hq) * T + row[r]] = m[r] + logf(l[r]);
    }
}

// dq_acc (B, T, NH, HD) fp32 += dS K (unscaled, by atomicAdd; zeroed by the caller), dkv_part
// (B, T, NH, 2, HD) fp32 = this query head's dK (scaled) and dV of every key; dout (B, T, NH*HD),
// qkv (B, T, QKV), lse and D (B, NH, T). grid (T/64 key tiles, NH, B): tile 0 has the most work.
template <int HD>
__global__ void __launch_bounds__(ATT_TC_WARPS * 32)
    attention_backward_tc_kernel(float *dq_acc, float *dkv_part, const floatX *dout, const floatX *qkv,
                                 const float *lse, const float *D, int T, int NH, int NKV, float scale) {
    constexpr int P = HD + 8, DT = HD / 8, DW = HD / ATT_TC_WARPS;   // DW: head dims of dQ per warp
    extern __shared__ float4 att_smem4[];
    // K, V of the block's keys; two stages of (Q, dO, lse, D) chunks: chunk c + 1 loads while c computes
    floatX *sK = (floatX *)att_smem4, *sV = sK + ATT_TC_BR * P, *sQG = sV + ATT_TC_BR * P;   // sQG (2, 2, 32, P)
    floatX *sS = sQG + 4 * ATT_TC_BQ * P;                             // dS (32 queries, 64 keys)
    float *sLD = (float *)(sS + ATT_TC_BQ * ATT_TC_PS);               // (2 stages, lse | D, 32)
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    int j0 = blockIdx.x * ATT_TC_BR, hq = blockIdx.y, b = blockIdx.z, hk = hq / (NH / NKV);
    const size_t QKV = (size_t)(NH + 2 * NKV) * HD, NHD = (size_t)NH * HD;
    const floatX *base = qkv + (size_t)b * T * QKV, *gbase = dout + (size_t)b * T * NHD + (size_t)hq * HD;
    const float *lrow = lse + ((size_t)b * NH + hq) * T, *drow = D + ((size_t)b * NH + hq) * T;
    // starts loading query chunk i0 into stage stg (Q and dO by cp.async, lse and D by plain stores)
    auto load_chunk = [&](int i0, int stg) {
        floatX *q = sQG + stg * 2 * ATT_TC_BQ * P;
        att_tc_load<HD>(q, base + (size_t)hq * HD, i0, ATT_TC_BQ, T, QKV);
        att_tc_load<HD>(q + ATT_TC_BQ * P, gbase, i0, ATT_TC_BQ, T, NHD);
        if (threadIdx.x < ATT_TC_BQ) {
            int i = i0 + threadIdx.x;
            sLD[stg * 2 * ATT_TC_BQ + threadIdx.x] = i < T ? lrow[i] : 0.0f;
            sLD[stg * 2 * ATT_TC_BQ + ATT_TC_BQ + threadIdx.x] = i < T ? drow[i] : 0.0f;
        }
    };
    att_tc_load<HD>(sK, base + (size_t)(NH + hk) * HD, j0, ATT_TC_BR, T, QKV);
    att_tc_load<HD>(sV, base + (size_t)(NH + NKV + hk) * HD, j0, ATT_TC_BR, T, QKV);
    load_chunk(j0, 0);
    float dk[DT][4], dv[DT][4];   // this warp's 16 keys (rows g, g + 8) x HD
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[dt][e] = dv[dt][e] = 0.0f;
    int key[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
    for (int i0 = j0, stg = 0; i0 < T; i0 += ATT_TC_BQ, stg ^= 1) {   // queries before j0 see none of these keys
        cp_async_wait_all();   // this thread's copies of chunk i0 (and of K, V) have landed
        __syncthreads();       // everyone's have, and everyone is done with chunk i0 - 32 and its dS
        if (i0 + ATT_TC_BQ < T) load_chunk(i0 + ATT_TC_BQ, stg ^ 1);
        const floatX *sQ = sQG + stg * 2 * ATT_TC_BQ * P, *sG = sQ + ATT_TC_BQ * P;
        const float *sL = sLD + stg * 2 * ATT_TC_BQ, *sD = sL + ATT_TC_BQ;
        // S^T = K Q^T and dP^T = V dO^T (16 keys, 32 queries): [nt][e] is key key[e / 2], query i0 + 8 nt + 2t + e % 2
        float st[4][4], dpt[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            uint32_t ka[4], va[4];
            ldmatrix_x4(ka, frag_a_addr(sK + warp * 16 * P + kk * 16, P));
            ldmatrix_x4(va, frag_a_addr(sV + warp * 16 * P + kk * 16, P));
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t bq[4], bg[4];
                ldmatrix_x4(bq, frag_b_addr(sQ + np * 16 * P + kk * 16, P));
                ldmatrix_x4(bg, frag_b_addr(sG + np * 16 * P + kk * 16, P));
                mma_bf16_16816(st[2 * np], ka, bq[0], bq[1]);
                mma_bf16_16816(st[2 * np + 1], ka, bq[2], bq[3]);
                mma_bf16_16816(dpt[2 * np], va, bg[0], bg[1]);
                mma_bf16_16816(dpt[2 * np + 1], va, bg[2], bg[3]);
            }
        }
        // P = exp(S scale - lse) (0 where masked), dS = P (dP - D); the scale of dS is applied at the end
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int ii = nt * 8 + 2 * t + (e & 1), i = i0 + ii, j = key[e / 2];
                float p = (j <= i && i < T) ? expf(st[nt][e] * scale - sL[ii]) : 0.0f;
                st[nt][e] = p;
                dpt[nt][e] = p * (dpt[nt][e] - sD[ii]);
                sS[ii * ATT_TC_PS + warp * 16 + g + (e / 2) * 8] = fx(dpt[nt][e]);
            }
        // dV += P^T dO, dK += dS^T Q over the 32 queries (2 k-steps; C fragments reused as A fragments)
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            uint32_t pa[4] = {pack_bf16x2(st[2 * kk][0], st[2 * kk][1]), pack_bf16x2(st[2 * kk][2], st[2 * kk][3]),
                              pack_bf16x2(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                              pack_bf16x2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
            uint32_t da[4] = {pack_bf16x2(dpt[2 * kk][0], dpt[2 * kk][1]),
                              pack_bf16x2(dpt[2 * kk][2], dpt[2 * kk][3]),
                              pack_bf16x2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                              pack_bf16x2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                uint32_t bg[4], bq[4];
                ldmatrix_x4_trans(bg, frag_a_addr(sG + kk * 16 * P + dp * 16, P));
                mma_bf16_16816(dv[2 * dp], pa, bg[0], bg[1]);
                mma_bf16_16816(dv[2 * dp + 1], pa, bg[2], bg[3]);
                ldmatrix_x4_trans(bq, frag_a_addr(sQ + kk * 16 * P + dp * 16, P));
                mma_bf16_16816(dk[2 * dp], da, bq[0], bq[1]);
                mma_bf16_16816(dk[2 * dp + 1], da, bq[2], bq[3]);
            }
        }
        __syncthreads();   // dS of all 4 warps is in shared memory
        // dQ (32, HD) += dS (32, 64) K (64, HD): warp w adds head dims [w DW, (w + 1) DW)
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            float acc[DW / 8][4];
#pragma unroll
            for (int dt = 0; dt < DW / 8; dt++) acc[dt][0] = acc[dt][1] = acc[dt][2] = acc[dt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < ATT_TC_BR / 16; kk++) {
                uint32_t sa[4];
                ldmatrix_x4(sa, frag_a_addr(sS + mt * 16 * ATT_TC_PS + kk * 16, ATT_TC_PS));
#pragma unroll
                for (int dp = 0; dp < DW / 16; dp++) {
                    uint32_t bk[4];
                    ldmatrix_x4_trans(bk, frag_a_addr(sK + kk * 16 * P + warp * DW + dp * 16, P));
                    mma_bf16_16816(acc[2 * dp], sa, bk[0], bk[1]);
                    mma_bf16_16816(acc[2 * dp + 1], sa, bk[2], bk[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int i = i0 + mt * 16 + g + 8 * r;
                if (i >= T) continue;
                float *y = dq_acc + (((size_t)b * T + i) * NH + hq) * HD + warp * DW + 2 * t;
#pragma unroll
                for (int dt = 0; dt < DW / 8; dt++) {
                    atomicAdd(y + dt * 8, acc[dt][2 * r]);
                    atomicAdd(y + dt * 8 + 1, acc[dt][2 * r + 1]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (key[r] >= T) continue;
        float *y = dkv_part + (((size_t)b * T + key[r]) * NH + hq) * 2 * HD + 2 * t;
#pragma unroll
        for (int dt = 0; dt < DT; dt++) {
            y[dt * 8] = dk[dt][2 * r] * scale; y[dt * 8 + 1] = dk[dt][2 * r + 1] * scale;
            y[HD + dt * 8] = dv[dt][2 * r]; y[HD + dt * 8 + 1] = dv[dt][2 * r + 1];
        }
    }
}
#endif

// dqkv (B, T, QKV) from the tensor-core backward's fp32 scratch: dQ = scale * dq_acc, and dK, dV
// of a kv head = the sum of its query heads' dkv_part, added in head order (the same bits every run).
__global__ void attention_backward_tc_finish_kernel(floatX *dqkv, const float *dq_acc, const float *dkv_part,
                                                    size_t n, int NH, int NKV, int HD, float scale) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    if (idx >= n * QKV) return;
    size_t row = idx / QKV;
    int head = (int)(idx % QKV) / HD, d = (int)(idx % QKV) % HD;
    float v;
    if (head < NH) {
        v = dq_acc[(row * NH + head) * HD + d] * scale;
    } else {
        int kv = head - NH, which = kv / NKV, hk = kv % NKV;   // which: 0 = dK, 1 = dV
        v = 0.0f;
        for (int hq = hk * rep; hq < (hk + 1) * rep; hq++) v += dkv_part[((row * NH + hq) * 2 + which) * HD + d];
    }
    dqkv[idx] = fx(v);
}

static size_t att_tc_smem_forward(int HD) {   // 2 stages of (K, V) chunks (Q borrows stage 1 at the start)
    return (size_t)4 * ATT_TC_BC * (HD + 8) * sizeof(floatX);
}
static size_t att_tc_smem_backward(int HD) {   // K, V; 2 stages of (Q, dO); dS; 2 stages of (lse, D)
    return (size_t)((2 * ATT_TC_BR + 4 * ATT_TC_BQ) * (HD + 8) + ATT_TC_BQ * ATT_TC_PS) * sizeof(floatX) +
           4 * ATT_TC_BQ * sizeof(float);
}
// Whether a head dim runs on the tensor-core kernels (bf16 build, HD 64 or 128). g_att_fma_only = 1
// sends every head dim to the FMA kernels (the tests compare the two paths through the whole model).
static int g_att_fma_only = 0;
static int att_use_tc(int HD) {
#ifdef ENABLE_FP32
    (void)HD;
    return 0;
#else
    return HD == 64 || HD == 128;
#endif
}
// The backward's fp32 scratch for N = B*T rows, in floats: D (B, NH, T) for every head dim; for the
// tensor-core kernels also dq_acc (N, NH, HD) and dkv_part (N, NH, 2, HD). The model's att_D has this size.
static size_t att_bwd_scratch_floats(size_t N, int NH, int HD) {
    return N * NH * (att_use_tc(HD) ? 1 + 3 * (size_t)HD : 1);
}
static int att_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

static size_t att_smem_forward(int HD) {
    return (size_t)(3 * ATT_TILE * att_stride(HD) + ATT_WARPS * ATT_R * 32) * sizeof(float);
}
static size_t att_smem_dq(int HD) {
    return (size_t)(4 * ATT_TILE * att_stride(HD) + ATT_WARPS * ATT_R * 32) * sizeof(float);
}
static size_t att_smem_dkv(int HD) {
    return (size_t)(4 * ATT_TILE * att_stride(HD) + 2 * ATT_WARPS * ATT_R * 32 + 2 * ATT_TILE) * sizeof(float);
}
static int att_dpl(int HD) { return HD <= 32 ? 1 : HD <= 64 ? 2 : HD <= 128 ? 4 : 8; }

// The dynamic shared memory the kernels of one DPL instance may use: enough for the largest head
// dim that instance serves (32 * DPL), capped at what the device allows. Set once per instance
// (att_setup_all, at startup), so that setting up a model with a smaller head dim can never lower
// the limit for a larger one; each launch checks its own need against it.
static int g_smem_optin = 0;   // the device's per-block opt-in maximum, asked once
static size_t smem_optin(void) {
    if (!g_smem_optin) cudaCheck(cudaDeviceGetAttribute(&g_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    return (size_t)g_smem_optin;
}
static size_t att_smem_limit(size_t need_at_max) { return need_at_max < smem_optin() ? need_at_max : smem_optin(); }
template <typename K> static void att_optin(K kernel, size_t need_at_max) {
    cudaCheck(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)att_smem_limit(need_at_max)));
}
template <int DPL> static void att_setup_dpl(void) {
    att_optin(attention_forward_kernel<DPL>, att_smem_forward(32 * DPL));
    att_optin(attention_backward_dq_kernel<DPL>, att_smem_dq(32 * DPL));
    att_optin(attention_backward_dkv_kernel<DPL>, att_smem_dkv(32 * DPL));
}
static void att_setup_all(void) {
    att_setup_dpl<1>(); att_setup_dpl<2>(); att_setup_dpl<4>(); att_setup_dpl<8>();
#ifndef ENABLE_FP32
    att_optin(attention_forward_tc_kernel<64>, att_tc_smem_forward(64));
    att_optin(attention_forward_tc_kernel<128>, att_tc_smem_forward(128));
    att_optin(attention_backward_tc_kernel<64>, att_tc_smem_backward(64));
    att_optin(attention_backward_tc_kernel<128>, att_tc_smem_backward(128));
#endif
}
static void att_check_smem(size_t need, int HD) {
    if (need > smem_optin())
        FATAL("head_dim %d: the attention kernels need %zu bytes of shared memory, the device allows %d", HD, need,
              g_smem_optin);
}
// A model's head dim must be one the kernels handle (called at model init).
static void attention_setup(int HD) {
    if (HD > 256 || HD % 2) FATAL("head_dim %d: the attention kernels handle even head dims up to 256", HD);
    att_check_smem(att_smem_dkv(HD), HD);
    if (att_use_tc(HD)) att_check_smem(att_tc_smem_backward(HD), HD);
}

// grid.z holds the batch; CUDA allows at most 65535, so larger batches go in slices.
#define MAX_GRID_Z 65535
// out (B, T, NH*HD); lse (B, NH, T) fp32; qkv (B, T, QKV) with rope applied
static void attention_forward(floatX *out, float *lse, const floatX *qkv, int B, int T, int NH, int NKV, int HD) {
    float scale = 1.0f / sqrtf((float)HD);
    size_t sm = att_smem_forward(HD), QKV = (size_t)(NH + 2 * NKV) * HD;
    int tc = !g_att_fma_only && att_use_tc(HD) && att_aligned16(out) && att_aligned16(qkv);   // bf16, HD 64 / 128
    if (tc) sm = att_tc_smem_forward(HD);
    att_check_smem(sm, HD);
    for (int b0 = 0; b0 < B; b0 += MAX_GRID_Z) {
        int nb = B - b0 < MAX_GRID_Z ? B - b0 : MAX_GRID_Z;
        dim3 grid(ceil_div(T, ATT_TILE), NH, nb);
        floatX *o = out + (size_t)b0 * T * NH * HD;
        float *ls = lse + (size_t)b0 * NH * T;
        const floatX *q = qkv + (size_t)b0 * T * QKV;
#ifndef ENABLE_FP32
        if (tc) {
            dim3 gt(ceil_div(T, ATT_TC_BR), NH, nb);
            if (HD == 64) attention_forward_tc_kernel<64><<<gt, ATT_TC_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, scale);
            else attention_forward_tc_kernel<128><<<gt, ATT_TC_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, scale);
            LAUNCH_CHECK();
            continue;
        }
#endif
        switch (att_dpl(HD)) {
        case 1: attention_forward_kernel<1><<<grid, ATT_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, HD, scale); break;
        case 2: attention_forward_kernel<2><<<grid, ATT_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, HD, scale); break;
        case 4: attention_forward_kernel<4><<<grid, ATT_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, HD, scale); break;
        default: attention_forward_kernel<8><<<grid, ATT_WARPS * 32, sm>>>(o, ls, q, T, NH, NKV, HD, scale); break;
        }
        LAUNCH_CHECK();
    }
}
// dqkv (B, T, QKV) = gradient of the above (overwritten, every entry); dout, out (B, T, NH*HD);
// lse from the forward; D: fp32 scratch of att_bwd_scratch_floats(B*T, NH, HD) floats, (B, NH, T) first
static void attention_backward(floatX *dqkv, float *D, const floatX *dout, const floatX *out, const floatX *qkv,
                               const float *lse,
                               int B, int T, int NH, int NKV, int HD) {
    attention_rowdot_kernel<<<ceil_div((long)B * T * NH, 8), 256>>>(D, dout, out, B, T, NH, HD);
    LAUNCH_CHECK();
    float scale = 1.0f / sqrtf((float)HD);
    size_t sq = att_smem_dq(HD), sk = att_smem_dkv(HD), QKV = (size_t)(NH + 2 * NKV) * HD, NHD = (size_t)NH * HD;
    int tc = !g_att_fma_only && att_use_tc(HD) && att_aligned16(dout) && att_aligned16(qkv);   // tensor cores
    float *dq_acc = D + (size_t)B * NH * T, *dkv_part = dq_acc + (size_t)B * T * NHD;   // the tc kernels' scratch
    if (tc) {
        sk = att_tc_smem_backward(HD);
        cudaCheck(cudaMemset(dq_acc, 0, (size_t)B * T * NHD * sizeof(float)));
    }
    att_check_smem(sk, HD);
    for (int b0 = 0; b0 < B; b0 += MAX_GRID_Z) {
        int nb = B - b0 < MAX_GRID_Z ? B - b0 : MAX_GRID_Z;
        dim3 gq(ceil_div(T, ATT_TILE), NH, nb), gk(ceil_div(T, ATT_TILE), NKV, nb);
        floatX *dq = dqkv + (size_t)b0 * T * QKV;
        const floatX *g = dout + (size_t)b0 * T * NHD, *q = qkv + (size_t)b0 * T * QKV;
        const float *ls = lse + (size_t)b0 * NH * T, *d = D + (size_t)b0 * NH * T;
#ifndef ENABLE_FP32
        if (tc) {
            dim3 gt(ceil_div(T, ATT_TC_BR), NH, nb);
            float *dqa = dq_acc + (size_t)b0 * T * NHD, *dkp = dkv_part + (size_t)b0 * T * 2 * NHD;
            if (HD == 64)
                attention_backward_tc_kernel<64><<<gt, ATT_TC_WARPS * 32, sk>>>(dqa, dkp, g, q, ls, d, T, NH, NKV,
                                                                                 scale);
            else
                attention_backward_tc_kernel<128><<<gt, ATT_TC_WARPS * 32, sk>>>(dqa, dkp, g, q, ls, d, T, NH, NKV,
                                                                                  scale);
            LAUNCH_CHECK();
            continue;
        }
#endif
        switch (att_dpl(HD)) {
#define ATT_BWD(DPL_)                                                                                                  \
    attention_backward_dq_kernel<DPL_><<<gq, ATT_WARPS * 32, sq>>>(dq, g, q, ls, d, T, NH, NKV, HD, scale);            \
    LAUNCH_CHECK();                                                                                                    \
    attention_backward_dkv_kernel<DPL_><<<gk, ATT_WARPS * 32, sk>>>(dq, g, q, ls, d, T, NH, NKV, HD, scale);           \
    break;
        case 1: ATT_BWD(1)
        case 2: ATT_BWD(2)
        case 4: ATT_BWD(4)
        default: ATT_BWD(8)
#undef ATT_BWD
        }
        LAUNCH_CHECK();
    }
    if (tc) {
        attention_backward_tc_finish_kernel<<<ceil_div((long)B * T * QKV, 256), 256>>>(dqkv, dq_acc, dkv_part,
                                                                                       (size_t)B * T, NH, NKV, HD,
                                                                                       scale);
        LAUNCH_CHECK();
    }
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

// log sum_v exp(x[v]) of one row, by the whole block: each thread keeps an online (max, sum), then
// the block combines them, the max first and then the rescaled sums. sh_m, sh: 32 floats of shared.
template <typename T>
__device__ float block_logsumexp(const T *x, int V, float *sh_m, float *sh) {
    float m = -FLT_MAX, s = 0.0f;   // -FLT_MAX, not -inf: exp(m - m') stays 0, never NaN
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        float xv = tof(x[v]);
        if (xv > m) { s *= expf(m - xv); m = xv; }
        s += expf(xv - m);
    }
    float mw = warp_max(m);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    if (lane == 0) sh_m[warp] = mw;
    __syncthreads();
    float M = lane < nw ? sh_m[lane] : -FLT_MAX;
    M = warp_max(M);
    return M + logf(block_sum(s * expf(m - M), sh));
}

// One block per row. Forward: lse (one pass, online max and sum in fp32), and logp = x[target] - lse
// (0 without a target). Backward (grad != 0): overwrites the row with dLoss/dlogits =
// g * (onehot(target) - softmax), g = dlogp, in floatX, ready for the LM head's backward matmuls.
__global__ void logsoftmax_kernel(floatX *logits, float *lse, float *logp, const int *targets, const float *dlogp,
                                  int V, int backward) {
    __shared__ float sh[32];
    __shared__ float sh_m[32];
    int n = blockIdx.x;
    floatX *x = logits + (size_t)n * V;
    int target = targets[n];
    if (!backward) {
        float l = block_logsumexp(x, V, sh_m, sh);
        if (threadIdx.x == 0) {
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
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s += g[i] * g[i];
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
// comes from the norm on the device (model_update has also copied it to the host, to skip a
// non-finite step before launching this).
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
__global__ void adamw_kernel(floatX *params, float *master, const float *grads, float *m, float *v, size_t n, float lr,
                             float beta1,
                             float beta2, float eps, float wd, float step_size, float bc2_sqrt, const float *norm,
                             float grad_clip,
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

// --- lean AdamW moments (--moments bf16 | 8bit): the same step as adamw_kernel, with m and v stored
// in 2 or 1 bytes instead of 4. The step itself uses the fp32 values of this step; only what is
// kept for the next step is rounded, and always stochastically: an EMA with beta2 = 0.999 moves v
// by 0.1% a step, below half a bf16 ulp (0.2%) and far below half an 8-bit step (4.5%), so
// round-to-nearest would freeze v; stochastic rounding keeps every stored moment unbiased.
enum { MOM_FP32 = 0, MOM_BF16 = 1, MOM_8BIT = 2 };
__device__ __forceinline__ __nv_bfloat16 sr_bf16(float w, uint32_t rnd) {   // stochastic rounding to bf16
    uint32_t u = __float_as_uint(w);
    if ((u & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(w);
    u += rnd & 0xffffu;
    return __ushort_as_bfloat16((unsigned short)(u >> 16));
}
// 8-bit block-wise (bitsandbytes' idea: a block of Q8_BLOCK values shares one fp32 absmax scale s),
// with a logarithmic code instead of bitsandbytes' dynamic tree: Q8_STEPS codes per octave, so
// every stored value has the same relative resolution (2^(1/8) = 9% between neighbours) down to
// far below the block's maximum, where a linear code would round small values to 0.
//   v >= 0: code k in 1..255 means s * 2^((k - 255) / 8), down to s * 2^-31.75 (3e-10 s: sqrt(v),
//           the step's denominator, down to 1.8e-5 of the block's largest); 0 means exactly 0.
//           A v below the smallest level is stored as the smallest level, never as 0, so that the
//           quantization can only shrink a step (update = m / (sqrt(v) + eps)), never blow it up.
//   m:      a sign bit and k in 0..127: s * 2^((k - 127) / 8), down to s * 2^-15.75 (1.8e-5 s);
//           below that, stochastically 0 or the smallest level (unbiased).
// u is the rounding's uniform in [0, 1): the code rounds up with probability (x - lo) / (hi - lo),
// so E[decode(encode(x))] = x within the range.
#define Q8_BLOCK 256
#define Q8_STEPS 8
__host__ __device__ inline float q8_level(int k, int top) { return exp2f((float)(k - top) / Q8_STEPS); }
__host__ __device__ inline float q8_decode_v(uint8_t k, float s) { return k ? s * q8_level(k, 255) : 0.0f; }
__host__ __device__ inline float q8_decode_m(uint8_t c, float s) {
    int k = c & 0x7f;
    float y = k ? s * q8_level(k, 127) : 0.0f;
    return c & 0x80 ? -y : y;
}
__host__ __device__ inline uint8_t q8_encode_v(float v, float s, float u) {
    if (!(v > 0.0f) || !(s > 0.0f)) return 0;
    float r = v / s, t = 255.0f + Q8_STEPS * log2f(r);
    if (t >= 255.0f) return 255;
    if (t < 1.0f) return 1;
    int lo = (int)floorf(t);
    float a = q8_level(lo, 255), b = q8_level(lo + 1, 255);
    return (uint8_t)(lo + (u < (r - a) / (b - a)));
}
__host__ __device__ inline uint8_t q8_encode_m(float x, float s, float u) {
    float r = fabsf(x) / s;
    if (!(r > 0.0f) || !(s > 0.0f)) return 0;
    float t = 127.0f + Q8_STEPS * log2f(r);
    int k;
    if (t >= 127.0f) k = 127;
    else if (t < 1.0f) k = u < r / q8_level(1, 127);   // 0 or the smallest level
    else {
        int lo = (int)floorf(t);
        float a = q8_level(lo, 127), b = q8_level(lo + 1, 127);
        k = lo + (u < (r - a) / (b - a));
    }
    return k ? (uint8_t)((x < 0.0f ? 0x80 : 0) | k) : 0;
}
__device__ __forceinline__ float unit_u(uint32_t h) { return (h >> 8) * (1.0f / 16777216.0f); }   // [0, 1)
__device__ float block_max(float x, float *sh) {   // like block_sum; x >= 0
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = (blockDim.x + 31) / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    x = lane < nw ? sh[lane] : 0.0f;
    return warp_max(x);
}
// Where the lean moments live in their one allocation (MOM_BF16: m, v; MOM_8BIT: m codes, v codes,
// m scales, v scales, each part 256-byte aligned). off[4] in bytes; returns the total.
static size_t moments_layout(size_t n, int mode, size_t off[4]) {
    size_t a = mode == MOM_BF16 ? (2 * n + 255) / 256 * 256 : (n + 255) / 256 * 256;
    size_t nb = (n + Q8_BLOCK - 1) / Q8_BLOCK, sb = (nb * 4 + 255) / 256 * 256;
    off[0] = 0; off[1] = a; off[2] = 2 * a; off[3] = 2 * a + (mode == MOM_8BIT ? sb : 0);
    return mode == MOM_FP32 ? 8 * n : mode == MOM_BF16 ? 2 * a : 2 * a + 2 * sb;
}
// One block of Q8_BLOCK threads per quantization block (grid-stride over blocks): a block's new
// scale is a block reduction. MODE: the moments' format; GT: the gradients' type (float, or bf16
// with --grads bf16). The weight update is adamw_kernel's; fp32 moments with fp32 gradients use
// adamw_kernel itself. mp, vp: m and v (or their codes); ms, vs: the 8-bit scales.
__device__ __forceinline__ float gval(float x) { return x; }
__device__ __forceinline__ float gval(__nv_bfloat16 x) { return __bfloat162float(x); }
template <int MODE, typename GT>
__global__ void __launch_bounds__(Q8_BLOCK) adamw_lean_kernel(floatX *params, float *master, const GT *grads,
                                                              void *mp, void *vp, float *ms, float *vs, size_t n,
                                                              float lr, float beta1, float beta2, float eps, float wd,
                                                              float step_size, float bc2_sqrt, const float *norm,
                                                              float grad_clip, uint64_t seed) {
    __shared__ float sh[32];
    float scale = 1.0f;
    if (grad_clip > 0.0f) { float coef = grad_clip / (norm[0] + 1e-6f); if (coef < 1.0f) scale = coef; }
    size_t nb = (n + Q8_BLOCK - 1) / Q8_BLOCK;
    for (size_t blk = blockIdx.x; blk < nb; blk += gridDim.x) {
        size_t i = blk * Q8_BLOCK + threadIdx.x;
        int on = i < n;
        float mo = 0.0f, vo = 0.0f;
        if (on && MODE == MOM_FP32) { mo = ((const float *)mp)[i]; vo = ((const float *)vp)[i]; }
        else if (on && MODE == MOM_BF16) {
            mo = __bfloat162float(((const __nv_bfloat16 *)mp)[i]);
            vo = __bfloat162float(((const __nv_bfloat16 *)vp)[i]);
        } else if (on) {
            mo = q8_decode_m(((const uint8_t *)mp)[i], ms[blk]);
            vo = q8_decode_v(((const uint8_t *)vp)[i], vs[blk]);
        }
        float grad = on ? gval(grads[i]) * scale : 0.0f;
        float mm = beta1 * mo + (1.0f - beta1) * grad;
        float vv = beta2 * vo + (1.0f - beta2) * grad * grad;
        uint32_t hm = hash_u32((seed ^ 0xA5A5A5A5ull) + i * 0x9E3779B97F4A7C15ull);
        uint32_t hv = hash_u32((seed ^ 0x5A5A5A5Aull) + i * 0xD1B54A32D192ED03ull);
        if (on) {
            float w = master ? master[i] : tof(params[i]);
            w = w * (1.0f - lr * wd);
            w = w - step_size * mm / (sqrtf(vv) / bc2_sqrt + eps);
            if (master) { master[i] = w; params[i] = fx(w); }
            else params[i] = round_param(w, hash_u32(seed ^ (i * 0x9E3779B97F4A7C15ull)));
        }
        if (MODE == MOM_FP32) {
            if (on) { ((float *)mp)[i] = mm; ((float *)vp)[i] = vv; }
        } else if (MODE == MOM_BF16) {
            if (on) { ((__nv_bfloat16 *)mp)[i] = sr_bf16(mm, hm); ((__nv_bfloat16 *)vp)[i] = sr_bf16(vv, hv); }
        } else {
            float sm = block_max(on ? fabsf(mm) : 0.0f, sh);
            float sv = block_max(on ? vv : 0.0f, sh);
            if (on) {
                ((uint8_t *)mp)[i] = q8_encode_m(mm, sm, unit_u(hm));
                ((uint8_t *)vp)[i] = q8_encode_v(vv, sv, unit_u(hv));
            }
            if (threadIdx.x == 0) { ms[blk] = sm; vs[blk] = sv; }
        }
    }
}
// --grads bf16: the gradient kept across micro-batches is bf16. Each backward writes its gradient
// into an fp32 scratch of one layer (flushed after the layer) and of the embedding / head, as
// before; accum_bf16_kernel then adds it into the bf16 gradient, rounding the sum stochastically
// (round-to-nearest would drop every micro-batch's contribution below half an ulp of the running
// sum), and zeroes the scratch for the next one. dst (n) bf16 += src (n) fp32; src = 0.
__global__ void accum_bf16_kernel(__nv_bfloat16 *dst, float *src, size_t n, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        dst[i] = sr_bf16(__bfloat162float(dst[i]) + src[i], hash_u32(seed + i * 0x9E3779B97F4A7C15ull));
        src[i] = 0.0f;
    }
}
// sumsq_kernel over bf16 gradients (the clipping norm of what is stored)
__global__ void sumsq_bf16_kernel(float *partial, const __nv_bfloat16 *g, size_t n) {
    __shared__ float sh[32];
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float x = __bfloat162float(g[i]);
        s += x * x;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
// The lean moments <-> fp32 (the optimizer block of a run checkpoint is fp32, train_empo.c's layout):
// dst (k) = moment w (0: m, 1: v) at [o, o + k), or back (to_f32 = 0: round to nearest, u = 0.5:
// our own saved values sit on the codes and come back exactly). o is a multiple of Q8_BLOCK.
template <int MODE>
__global__ void __launch_bounds__(Q8_BLOCK) moments_f32_kernel(float *f, char *mom, size_t mom_v, size_t mom_ms,
                                                               size_t mom_vs, size_t o, size_t k, int w, int to_f32) {
    __shared__ float sh[32];
    char *base = mom + (w ? mom_v : 0);
    float *sc = (float *)(mom + (w ? mom_vs : mom_ms));
    for (size_t blk = blockIdx.x; blk < (k + Q8_BLOCK - 1) / Q8_BLOCK; blk += gridDim.x) {
        size_t j = blk * Q8_BLOCK + threadIdx.x, i = o + j, gb = o / Q8_BLOCK + blk;
        int on = j < k;
        if (MODE == MOM_BF16) {
            if (on && to_f32) f[j] = __bfloat162float(((__nv_bfloat16 *)base)[i]);
            else if (on) ((__nv_bfloat16 *)base)[i] = __float2bfloat16(f[j]);
            continue;
        }
        if (to_f32) {
            if (on) f[j] = w ? q8_decode_v(((uint8_t *)base)[i], sc[gb]) : q8_decode_m(((uint8_t *)base)[i], sc[gb]);
            continue;
        }
        float s = block_max(on ? fabsf(f[j]) : 0.0f, sh);
        if (on) ((uint8_t *)base)[i] = w ? q8_encode_v(f[j], s, 0.5f) : q8_encode_m(f[j], s, 0.5f);
        if (threadIdx.x == 0) sc[gb] = s;
    }
}

__global__ void convert_kernel(floatX *dst, const float *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = fx(src[i]);
}
__global__ void to_float_kernel(float *dst, const floatX *src, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = tof(src[i]);
}
// N(0, std) from a hash of (seed, i): Box-Muller on two hashed uniforms.
__global__ void init_normal_kernel(float *dst, size_t n, float std, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float u1 = (hash_u32(seed + 2 * i) >> 8) / 16777216.0f, u2 = (hash_u32(seed + 2 * i + 1) >> 8) / 16777216.0f;
        dst[i] = std * sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.2831853f * u2);
    }
}
__global__ void fill_kernel(float *dst, size_t n, float value) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = value;
}
static int grid_for(size_t n) {
    size_t b = (n + 255) / 256;
    return (int)(b < (size_t)g_num_sms * 16 ? (b ? b : 1) : (size_t)g_num_sms * 16);
}

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

// --- generation: the paged KV cache, decode attention, sampling
//
// The KV cache is a pool of pages of KV_PAGE positions each; a sequence holds a table of page ids,
// so memory follows the actual lengths, and the G responses of a prompt share the pages their
// prompt fills completely. Page layout: (L, 2, NKV, KV_PAGE, HD), k then v, so that the keys of one
// layer and kv head in one page are KV_PAGE * HD contiguous values. floatX: bf16 in the bf16 build.

#define KV_PAGE 16
#define DEC_SPLIT 256      // keys per flash-decoding split: a multiple of 32 (the chunk) and of KV_PAGE
#define DEC_WARPS 4
#define DEC_MAX_REP 8      // query heads per kv head the decode kernel holds in registers (Qwen2.5-1.5B: 6)

// Element offset of (position j, layer l, k or v, kv head hk, dim 0) for the sequence whose page
// table row is `table`.
__device__ __forceinline__ size_t kv_offset(const int *table, int j, int l, int w, int hk, int L, int NKV, int HD) {
    int page = table[j / KV_PAGE];
    return (((((size_t)page * L + l) * 2 + w) * NKV + hk) * KV_PAGE + j % KV_PAGE) * HD;
}

// Writes the keys and values of N new tokens of layer l into their pages. qkv (N, QKV) after rope;
// token n belongs to the sequence of table row slot[n] (slot NULL: row n; -1: padding, skipped) at
// position pos[n]. table (rows, max_pages) page ids. One thread per element.
__global__ void kv_write_kernel(floatX *pool, const floatX *qkv, const int *slot, const int *pos, const int *table,
                                int max_pages, int N, int l, int L, int NH, int NKV, int HD) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x, per = (size_t)2 * NKV * HD;
    if (idx >= (size_t)N * per) return;
    int n = (int)(idx / per), r = (int)(idx % per), s = slot ? slot[n] : n;
    if (s < 0) return;
    int w = r / (NKV * HD), hk = (r / HD) % NKV, d = r % HD, QKV = (NH + 2 * NKV) * HD;
    pool[kv_offset(table + (size_t)s * max_pages, pos[n], l, w, hk, L, NKV, HD) + d] =
        qkv[(size_t)n * QKV + (size_t)(NH + w * NKV + hk) * HD + d];   // k heads at NH*HD, v heads after them
}
// pool (pages, L, 2, NKV, KV_PAGE, HD); qkv (N, QKV) after rope
static void kv_write(floatX *pool, const floatX *qkv, const int *slot, const int *pos, const int *table, int max_pages,
                     int N, int l, const ModelConfig *c) {
    kv_write_kernel<<<ceil_div((long)N * 2 * c->NKV * c->HD, 256), 256>>>(pool, qkv, slot, pos, table, max_pages, N, l,
                                                                          c->L, c->NH, c->NKV, c->HD);
    LAUNCH_CHECK();
}
// Page dst[i] = page src[i] (every layer), for n pairs: a response's own copy of its prompt's last,
// partly filled page. page_elems = L * 2 * NKV * KV_PAGE * HD.
__global__ void kv_copy_pages_kernel(floatX *pool, const int *src, const int *dst, int n, size_t page_elems) {
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < (size_t)n * page_elems;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t i = idx / page_elems, e = idx % page_elems;
        pool[(size_t)dst[i] * page_elems + e] = pool[(size_t)src[i] * page_elems + e];
    }
}

// One warp stages the keys (w = 0) or values (w = 1) of positions [c0, c0 + jn) of kv head hk in
// shared memory as fp32 rows dst (32, SR), zero beyond jn and HD. A position's HD values are
// contiguous in its page, so where HD is a multiple of 16 bytes' worth, lanes load 16 bytes each
// (8 bf16): a warp reads 512 contiguous bytes per instruction instead of 64 (decoding is bound by
// these reads and the weights'); other head dims go one value per lane.
__device__ __forceinline__ void dec_stage(float *dst, const floatX *pool, const int *tab, int c0, int jn, int l, int w,
                                          int hk,
                                          int L, int NKV, int HD, int SR, int lane) {
    const int VEC = 16 / (int)sizeof(floatX);
    if (HD % VEC == 0) {
        int per = HD / VEC;   // vectors per row
        for (int i = lane; i < 32 * per; i += 32) {
            int jj = i / per, d = (i % per) * VEC;
            float *o = dst + jj * SR + d;
            if (jj >= jn) { for (int e = 0; e < VEC; e++) o[e] = 0.0f; continue; }
            alignas(16) floatX v[16 / sizeof(floatX)];
            const floatX *src = pool + kv_offset(tab, c0 + jj, l, w, hk, L, NKV, HD) + d;
#ifdef __CUDA_ARCH__
            *(int4 *)v = *(const int4 *)src;   // one 128-bit load
#else
            memcpy(v, src, 16);                // (the CPU emulator: no type punning for g++)
#endif
            for (int e = 0; e < VEC; e++) o[e] = tof(v[e]);
        }
        // padding
        for (int i = lane; i < 32 * (SR - HD); i += 32) dst[(i / (SR - HD)) * SR + HD + i % (SR - HD)] = 0.0f;
        return;
    }
    for (int jj = 0; jj < 32; jj++) {   // one row per step, lanes along the head dim
        size_t at = jj < jn ? kv_offset(tab, c0 + jj, l, w, hk, L, NKV, HD) : 0;
        for (int d = lane; d < SR; d += 32) dst[jj * SR + d] = jj < jn && d < HD ? tof(pool[at + d]) : 0.0f;
    }
}

// Decode attention, flash-decoding style: one new query token per sequence against its cache.
// One block per (sequence s, kv head hk, split): the rep = NH/NKV query heads of hk (GQA: each key
// is read once for all of them) against keys [split*DEC_SPLIT, min(len, (split+1)*DEC_SPLIT)).
// The split's warps take 32-key chunks in turn. Per chunk a warp stages the keys in shared memory
// as fp32, lane j scores key j against the rep queries (dot products from shared memory, as the
// training kernel), updates an online softmax per query head, then stages the values over the keys
// and each lane accumulates head dims d = lane + 32k. The warps' partials are merged in shared
// memory, and the split writes (max, sum, unnormalized output) for decode_combine_kernel.
// Splits make the grid large enough for few long sequences; their boundaries are absolute
// positions, so a sequence's result does not depend on the batch it is decoded in.
// qkv (S, QKV) after rope; lens (S) keys per sequence, the new one included; table (S, max_pages).
// part_o (S, NH, n_split, HD), part_ml (S, NH, n_split, 2) fp32.
template <int DPL>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    decode_attention_kernel(float *part_o, float *part_ml, const floatX *qkv, const floatX *pool, const int *table,
                            const int *lens, int max_pages, int n_split, int l, int L, int NH, int NKV, int HD,
                            float scale) {
    extern __shared__ float4 dec_smem4[];
    float *smem = (float *)dec_smem4;
    const int SR = att_stride(HD), HDP = SR - 4, QKV = (NH + 2 * NKV) * HD, rep = NH / NKV, MR = DEC_MAX_REP;
    float *sQ = smem, *sKV = sQ + MR * SR, *sP = sKV + DEC_WARPS * 32 * SR;   // (MR, SR), (W, 32, SR), (W, MR, 32)
    int s = blockIdx.x, hk = blockIdx.y, split = blockIdx.z, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    int len = lens[s], k0 = split * DEC_SPLIT, k1 = min(len, k0 + DEC_SPLIT);
    if (k0 >= len) return;   // block-uniform: the combine reads only the splits a sequence has
    const int *tab = table + (size_t)s * max_pages;
    for (int i = threadIdx.x; i < MR * SR; i += blockDim.x) {
        int r = i / SR, d = i % SR;
        sQ[i] = r < rep && d < HD ? tof(qkv[(size_t)s * QKV + (size_t)(hk * rep + r) * HD + d]) : 0.0f;
    }
    __syncthreads();
    float o[DEC_MAX_REP][DPL], m[DEC_MAX_REP], lsum[DEC_MAX_REP];
#pragma unroll
    for (int r = 0; r < MR; r++) {
        m[r] = -INFINITY; lsum[r] = 0.0f;
#pragma unroll
        for (int k = 0; k < DPL; k++) o[r][k] = 0.0f;
    }
    float *myKV = sKV + warp * 32 * SR, *myP = sP + warp * MR * 32;
    for (int c0 = k0 + warp * 32; c0 < k1; c0 += DEC_WARPS * 32) {
        int jn = min(32, k1 - c0), j = c0 + lane;
        dec_stage(myKV, pool, tab, c0, jn, l, 0, hk, L, NKV, HD, SR, lane);   // the chunk's keys
        __syncwarp();
        float sc[DEC_MAX_REP];
#pragma unroll
        for (int r = 0; r < MR; r++) sc[r] = 0.0f;
        for (int d = 0; d < HDP; d += 4) {
            float4 y = *(const float4 *)(myKV + lane * SR + d);
#pragma unroll
            for (int r = 0; r < MR; r++) {
                if (r >= rep) break;
                float4 x = *(const float4 *)(sQ + r * SR + d);
                sc[r] = fmaf(x.x, y.x, fmaf(x.y, y.y, fmaf(x.z, y.z, fmaf(x.w, y.w, sc[r]))));
            }
        }
#pragma unroll
        for (int r = 0; r < MR; r++) {
            if (r >= rep) break;
            float v = j < k1 ? sc[r] * scale : -INFINITY;
            float mnew = fmaxf(m[r], warp_max(v));            // finite: key c0 < k1 is always there
            float p = j < k1 ? expf(v - mnew) : 0.0f;
            float corr = expf(m[r] - mnew);                   // 0 on the first chunk (m = -inf)
            lsum[r] = lsum[r] * corr + warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int k = 0; k < DPL; k++) o[r][k] *= corr;
            myP[r * 32 + lane] = p;
        }
        __syncwarp();   // every lane is done reading the keys
        dec_stage(myKV, pool, tab, c0, jn, l, 1, hk, L, NKV, HD, SR, lane);   // the chunk's values over them
        __syncwarp();
        for (int jj = 0; jj < jn; jj++) {
#pragma unroll
            for (int k = 0; k < DPL; k++) {
                int d = lane + 32 * k;
                float v = d < HD ? myKV[jj * SR + d] : 0.0f;
#pragma unroll
                for (int r = 0; r < MR; r++) {
                    if (r >= rep) break;
                    o[r][k] = fmaf(myP[r * 32 + jj], v, o[r][k]);
                }
            }
        }
        __syncwarp();   // before the next chunk overwrites myKV and myP
    }
    // merge the warps: each writes its (m, l, o) per query head, then threads over (head, dim) combine
    __syncthreads();
    float *sO = sKV, *sML = sP;   // (W, MR, SR), (W, MR, 2): fit in the regions they reuse
#pragma unroll
    for (int r = 0; r < MR; r++) {
        if (r >= rep) break;
#pragma unroll
        for (int k = 0; k < DPL; k++) { int d = lane + 32 * k; if (d < HD) sO[(warp * MR + r) * SR + d] = o[r][k]; }
        if (lane == 0) { sML[(warp * MR + r) * 2] = m[r]; sML[(warp * MR + r) * 2 + 1] = lsum[r]; }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rep * HD; i += blockDim.x) {
        int r = i / HD, d = i % HD;
        float M = -INFINITY, acc = 0.0f, lt = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, sML[(w * MR + r) * 2]);
        for (int w = 0; w < DEC_WARPS; w++) {
            float mw = sML[(w * MR + r) * 2];
            if (mw == -INFINITY) continue;                    // a warp that had no chunk
            float e = expf(mw - M);
            acc += e * sO[(w * MR + r) * SR + d];
            lt += e * sML[(w * MR + r) * 2 + 1];
        }
        size_t at = ((size_t)s * NH + hk * rep + r) * n_split + split;
        part_o[at * HD + d] = acc;
        if (d == 0) { part_ml[at * 2] = M; part_ml[at * 2 + 1] = lt; }
    }
}
// out (S, NH*HD) = the merge of each (sequence, head)'s splits, in split order (deterministic).
__global__ void decode_combine_kernel(floatX *out, const float *part_o, const float *part_ml, const int *lens,
                                      int n_split, int NH, int HD) {
    int s = blockIdx.x, h = blockIdx.y, ns = (lens[s] + DEC_SPLIT - 1) / DEC_SPLIT;
    size_t base = ((size_t)s * NH + h) * n_split;
    float M = -INFINITY, lt = 0.0f;
    for (int i = 0; i < ns; i++) M = fmaxf(M, part_ml[(base + i) * 2]);
    for (int i = 0; i < ns; i++) lt += expf(part_ml[(base + i) * 2] - M) * part_ml[(base + i) * 2 + 1];
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < ns; i++) acc += expf(part_ml[(base + i) * 2] - M) * part_o[(base + i) * HD + d];
        out[(size_t)s * NH * HD + (size_t)h * HD + d] = fx(acc / lt);
    }
}
static size_t dec_smem(int HD) { return (size_t)(DEC_MAX_REP * att_stride(HD) + DEC_WARPS * 32 * att_stride(HD) +
                                                 DEC_WARPS * DEC_MAX_REP * 32) * sizeof(float); }
static void dec_setup_all(void) {
    att_optin(decode_attention_kernel<1>, dec_smem(32)); att_optin(decode_attention_kernel<2>, dec_smem(64));
    att_optin(decode_attention_kernel<4>, dec_smem(128)); att_optin(decode_attention_kernel<8>, dec_smem(256));
}
// out (S, NH*HD); qkv (S, QKV) after rope, its k and v already in the pages; lens, table as above;
// part_o, part_ml scratch for n_split = ceil(max len / DEC_SPLIT) splits
static void decode_attention(floatX *out, float *part_o, float *part_ml, const floatX *qkv, const floatX *pool,
                             const int *table, const int *lens, int max_pages, int n_split, int S, int l,
                             const ModelConfig *c) {
    int NH = c->NH, NKV = c->NKV, HD = c->HD;
    if (NH / NKV > DEC_MAX_REP)
        FATAL("decode attention: %d query heads per kv head (at most %d)", NH / NKV, DEC_MAX_REP);
    float scale = 1.0f / sqrtf((float)HD);
    size_t sm = dec_smem(HD);
    att_check_smem(sm, HD);
    dim3 grid(S, NKV, n_split);   // sequences along x (up to 2^31 - 1), the few splits along z
    int ll = c->L;
    switch (att_dpl(HD)) {
#define DEC_LAUNCH(DPL_)                                                                                               \
    decode_attention_kernel<DPL_><<<grid, DEC_WARPS * 32, sm>>>(part_o, part_ml, qkv, pool, table, lens, max_pages,    \
                                                                n_split, l, ll, NH, NKV, HD, scale);
    case 1: DEC_LAUNCH(1) break;
    case 2: DEC_LAUNCH(2) break;
    case 4: DEC_LAUNCH(4) break;
    default: DEC_LAUNCH(8) break;
#undef DEC_LAUNCH
    }
    LAUNCH_CHECK();
    int nt = HD >= 256 ? 256 : (HD + 31) / 32 * 32;
    decode_combine_kernel<<<dim3(S, NH), nt>>>(out, part_o, part_ml, lens, n_split, NH, HD);
    LAUNCH_CHECK();
}

// dst (n, C) = src rows idx[0..n) (the last token of each sequence, before the LM head)
__global__ void gather_rows_kernel(floatX *dst, const floatX *src, const int *idx, int n, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * C) return;
    dst[i] = src[(size_t)idx[i / C] * C + i % C];
}

// One block per row of fp32 logits (n, V): out (n, n_cand) = log softmax(row)[cand[c]] (the judge).
__global__ void rows_logprobs_kernel(float *out, const float *logits, int V, const int *cand, int n_cand) {
    __shared__ float sh[32];
    __shared__ float sh_m[32];
    const float *x = logits + (size_t)blockIdx.x * V;
    float lse = block_logsumexp(x, V, sh_m, sh);
    for (int c = threadIdx.x; c < n_cand; c += blockDim.x) out[(size_t)blockIdx.x * n_cand + c] = x[cand[c]] - lse;
}

// Sampling, one block per output row, over fp32 logits (V), as train_empo.c's sample_token: greedy
// is the argmax (lowest id on ties); otherwise a draw from softmax(x / temperature), restricted to
// the top_k most likely tokens and then to the smallest set, by probability with ties to the lower
// id, whose mass reaches top_p (the token that crosses it is kept). u[i] is the response's uniform,
// drawn on the host from its RNG stream (model.h), so the stream is the CPU's.
// Without truncation (the paper's setting) the draw is the CPU's: the first token, in vocabulary
// order, where the running sum passes u * sum, here as per-thread chunk sums and a scan. With
// truncation the kept set is found without sorting: each token has a key (probability bits, then
// the inverted id), and bisection over the 64-bit keys finds the k-th largest (top-k) and then the
// largest key whose set still holds top_p of the mass (top-p); the draw then runs over the kept
// tokens in vocabulary order (the CPU walks them in sorted order: the same distribution, but the
// same u can pick another token).
// Writes tok[i] and logp[i] = log softmax(x)[tok] (untempered, untruncated: the PPO ratio's), and
// keep_key[i] (may be NULL) = the smallest key kept (0: all), for tests.
// rows (n) selects the logits row of each output (NULL: row i), so G draws can share one row.
#define SAMPLE_THREADS 256
__host__ __device__ __forceinline__ uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}
__host__ __device__ __forceinline__ uint64_t sample_key(float q, int v) {   // (the host side: for tests)
    return ((uint64_t)float_bits(q) << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)v);   // q >= 0: bits are ordered
}
// (count, mass) of the tokens whose key is >= K (eq: and whose probability bits are K's high word);
// q is recomputed from x. The per-thread sums are added up by thread 0 in thread order (two
// barriers, the same result every run); every thread gets both. tc, ts: nt + 1 floats of shared.
__device__ void sample_kept(float *count, float *mass, const float *x, int V, float M, float inv_t, uint64_t K, int eq,
                            float *tc, float *ts) {
    int nt = blockDim.x, tid = threadIdx.x;
    float c = 0.0f, s = 0.0f;
    for (int v = tid; v < V; v += nt) {
        float q = expf((x[v] - M) * inv_t);
        uint64_t key = sample_key(q, v);
        if (key >= K && (!eq || (key >> 32) == (K >> 32))) { c += 1.0f; s += q; }
    }
    tc[tid] = c; ts[tid] = s;
    __syncthreads();
    if (tid == 0) {
        float C = 0.0f, S = 0.0f;
        for (int t = 0; t < nt; t++) { C += tc[t]; S += ts[t]; }
        tc[nt] = C; ts[nt] = S;
    }
    __syncthreads();   // (the next call writes tc[tid] only: slot nt stays readable until its first barrier)
    *count = tc[nt]; *mass = ts[nt];
}
// The largest key K >= lo whose set {key >= K} still has need_count tokens and need_mass mass:
// bisection over the high word (the probability's bits) first, then over the low word (the
// inverted ids) only when several tokens share the threshold probability; with one or none, every
// K with that high word keeps the same set. 32 to 64 passes over the row.
__device__ uint64_t sample_bisect(const float *x, int V, float M, float inv_t, uint64_t lo, float need_count,
                                  float need_mass, float *tc, float *ts) {
    float c, ms;
    uint64_t hlo = lo >> 32, hhi = 0xFFFFFFFFull;
    while (hlo < hhi) {
        uint64_t mid = hlo + (hhi - hlo) / 2 + 1, K = mid << 32 > lo ? mid << 32 : lo;
        sample_kept(&c, &ms, x, V, M, inv_t, K, 0, tc, ts);
        if (c >= need_count && ms >= need_mass) hlo = mid; else hhi = mid - 1;
    }
    uint64_t K = hlo << 32 > lo ? hlo << 32 : lo;
    sample_kept(&c, &ms, x, V, M, inv_t, K, 1, tc, ts);
    if (c <= 1.0f) return K;
    uint64_t llo = K, lhi = (hlo << 32) | 0xFFFFFFFFull;
    while (llo < lhi) {
        uint64_t mid = llo + (lhi - llo) / 2 + 1;
        sample_kept(&c, &ms, x, V, M, inv_t, mid, 0, tc, ts);
        if (c >= need_count && ms >= need_mass) llo = mid; else lhi = mid - 1;
    }
    return llo;
}
// stats (n, 2), if not NULL: the row's token entropy H(p) and self-certainty KL(U || p) at T = 1,
// the per-token terms of -r entropy and -r certainty (engine.h), from the logits already here.
__global__ void sample_kernel(int *tok, float *logp, float *stats, uint64_t *keep_key, const float *logits,
                              const int *rows, const float *u, int V, float inv_t, int top_k, float top_p, int greedy) {
    __shared__ float t_m[SAMPLE_THREADS + 1], t_s[SAMPLE_THREADS + 1];
    __shared__ int t_best[SAMPLE_THREADS];
    __shared__ float s_M, s_lse, s_r;
    __shared__ int s_best, s_tok;
    int i = blockIdx.x, nt = blockDim.x, tid = threadIdx.x;
    const float *x = logits + (size_t)(rows ? rows[i] : i) * V;
    // max (lowest id on ties) and sum of exp(x - max), online per thread, then combined in thread order
    float m = -FLT_MAX, s = 0.0f;
    int best = V;
    for (int v = tid; v < V; v += nt) {
        float xv = x[v];
        if (xv > m) { s *= expf(m - xv); m = xv; best = v; }
        s += expf(xv - m);
    }
    t_m[tid] = m; t_s[tid] = s; t_best[tid] = best;
    __syncthreads();
    if (tid == 0) {
        float M = -FLT_MAX, S = 0.0f;
        int b = V;
        for (int t = 0; t < nt; t++) if (t_m[t] > M || (t_m[t] == M && t_best[t] < b)) { M = t_m[t]; b = t_best[t]; }
        for (int t = 0; t < nt; t++) S += t_s[t] * expf(t_m[t] - M);
        s_M = M; s_best = b; s_lse = M + logf(S);
    }
    __syncthreads();
    float M = s_M;
    if (stats) {   // with x = logit - M, Z = sum e^x: H = log Z - sum e^x x / Z; KL(U || p) = log Z - mean x - log V
        float ex = 0.0f, xs = 0.0f;
        for (int v = tid; v < V; v += nt) {
            float xv = x[v] - M;
            ex += expf(xv) * xv;
            xs += xv;
        }
        t_m[tid] = ex;
        t_s[tid] = xs;
        __syncthreads();
        if (tid == 0) {
            double E = 0.0, X = 0.0;
            for (int t = 0; t < nt; t++) {
                E += t_m[t];
                X += t_s[t];
            }
            double logZ = (double)s_lse - M, Z = exp(logZ);
            stats[2 * i] = (float)(logZ - E / Z);
            stats[2 * i + 1] = (float)(logZ - X / V - log((double)V));
        }
        __syncthreads();
    }
    uint64_t K = 0;
    if (!greedy) {
        if (top_k > 0 && top_k < V)
            K = sample_bisect(x, V, M, inv_t, 0, (float)top_k, 0.0f, t_m, t_s);   // the k-th largest key
        if (top_p < 1.0f) {   // then the smallest prefix of the kept set that holds top_p of its mass
            float c, kept;
            sample_kept(&c, &kept, x, V, M, inv_t, K, 0, t_m, t_s);
            K = sample_bisect(x, V, M, inv_t, K, 1.0f, top_p * kept, t_m, t_s);
        }
        // the draw: chunk sums of the kept mass in vocabulary order, an exclusive scan, and the
        // thread whose chunk holds u * total walks it
        int ch = (V + nt - 1) / nt, v0 = tid * ch, v1 = min(V, v0 + ch);
        float cs = 0.0f;
        for (int v = v0; v < v1; v++) { float q = expf((x[v] - M) * inv_t); if (sample_key(q, v) >= K) cs += q; }
        t_s[tid] = cs;
        __syncthreads();
        if (tid == 0) {
            float acc = 0.0f;
            for (int t = 0; t < nt; t++) { float c = t_s[t]; t_m[t] = acc; acc += c; }   // t_m: exclusive prefix
            s_r = u[i] * acc;
            s_tok = s_best;   // rounding at the very end of the sum: the argmax, as the CPU
        }
        __syncthreads();
        float r = s_r, acc = t_m[tid];
        if (acc <= r && r < acc + cs) {
            int last = -1;
            for (int v = v0; v < v1; v++) {
                float q = expf((x[v] - M) * inv_t);
                if (sample_key(q, v) < K) continue;
                last = v;
                acc += q;
                if (acc > r) break;
            }
            if (last >= 0) s_tok = last;
        }
        __syncthreads();
    }
    if (tid == 0) {
        int t = greedy ? s_best : s_tok;
        tok[i] = t;
        logp[i] = x[t] - s_lse;
        if (keep_key) keep_key[i] = K;
    }
}
// tok, logp (n) for rows of logits (.., V) fp32; u (n) uniforms (unused when greedy)
static void sample_rows(int *tok, float *logp, float *stats, uint64_t *keep_key, const float *logits, const int *rows,
                        const float *u, int n, int V, const SamplerConfig *sc) {
    int greedy = sc->temperature <= 0.0f || sc->top_k == 1;
    float inv_t = greedy ? 1.0f : 1.0f / sc->temperature;
    // few threads for a small vocabulary (tests): all the work is per token, the barriers per block
    int nt = V >= 4 * SAMPLE_THREADS ? SAMPLE_THREADS : ((V + 3) / 4 + 31) / 32 * 32;
    sample_kernel<<<n, nt>>>(tok, logp, stats, keep_key, logits, rows, u, V, inv_t, sc->top_k, sc->top_p, greedy);
    LAUNCH_CHECK();
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

// A cache of cuBLASLt's algorithm choices, keyed by everything the heuristic looks at: open
// addressing over LT_CACHE slots, looked up by a hash of the key. A training step makes a few
// hundred distinct calls (T is rounded up to a multiple of T_ALIGN, so the shapes are few); when
// the table is full, a new shape replaces the entry in its home slot, so the cache never stops
// caching (a fixed array that fills up would query the heuristic on every later call).
typedef struct { int transA, transB, m, n, k, lda, ldb, ldd, d_type, has_bias; uint32_t al_a, al_b, al_d; } LtKey;
typedef struct { LtKey key; int used, found; cublasLtMatmulAlgo_t algo; } LtAlgo;
#define LT_CACHE 4096
#define LT_PROBE 8
static LtAlgo g_lt_cache[LT_CACHE];
static uint32_t lt_hash(const LtKey *k) {   // FNV-1a over the key's bytes
    const unsigned char *b = (const unsigned char *)k;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}
static LtAlgo *lt_cache_find(const LtKey *k) {
    uint32_t h = lt_hash(k);
    for (int i = 0; i < LT_PROBE; i++) {
        LtAlgo *e = &g_lt_cache[(h + i) % LT_CACHE];
        if (!e->used) return NULL;
        if (!memcmp(&e->key, k, sizeof *k)) return e;
    }
    return NULL;
}
static LtAlgo *lt_cache_add(const LtKey *k, int found, const cublasLtMatmulAlgo_t *algo) {
    uint32_t h = lt_hash(k);
    LtAlgo *e = &g_lt_cache[h % LT_CACHE];   // full probe window: replace the home slot
    for (int i = 0; i < LT_PROBE; i++)
        if (!g_lt_cache[(h + i) % LT_CACHE].used) { e = &g_lt_cache[(h + i) % LT_CACHE]; break; }
    memset(e, 0, sizeof *e);
    e->key = *k; e->used = 1; e->found = found;
    if (found) e->algo = *algo;
    return e;
}

// Column-major D (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * D [+ bias (m) broadcast over n].
// A, B floatX; D floatX or fp32 (d_type). Row-major callers swap roles, see below.
static void gemm(void *D, cudaDataType_t d_type, int ldd, const floatX *A, int transA, int lda, const floatX *Bm,
                 int transB, int ldb,
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
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                         sizeof ws));
        // tell the heuristic how aligned the pointers really are (layer slices of odd-sized models aren't)
        uint32_t al_a = ptr_alignment(A), al_b = ptr_alignment(Bm), al_d = ptr_alignment(D);
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                         sizeof al_a));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                         sizeof al_b));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d,
                                                         sizeof al_d));
        cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d,
                                                         sizeof al_d));
        // the heuristic's choice, cached per shape (a training step makes the same few hundred calls)
        LtKey key = {transA,      transB,       m,    n,    k,   lda, ldb, ldd,
                     (int)d_type, bias != NULL, al_a, al_b, al_d};   // 13 ints: no padding
        LtAlgo *cached = lt_cache_find(&key);
        if (!cached) {
            cublasLtMatmulHeuristicResult_t heur;
            int found = 0;
            cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, op, la, lb, ld, ld, pref, 1, &heur, &found);
            cached = lt_cache_add(&key, st == CUBLAS_STATUS_SUCCESS && found > 0, &heur.algo);
        }
        lt_ok = cached->found;
        if (lt_ok)
            lt_ok = cublasLtMatmul(g_cublaslt, op, &alpha, A, la, Bm, lb, &beta, D, ld, D, ld, &cached->algo,
                                   g_lt_workspace, LT_WORKSPACE, 0) ==
                    CUBLAS_STATUS_SUCCESS;
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la); cublasLtMatrixLayoutDestroy(lb); cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
        if (lt_ok) return;
    }
    g_lt_fallbacks++;
    cublasCheck(cublasGemmEx(g_cublas, transA ? CUBLAS_OP_T : CUBLAS_OP_N, transB ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                             &alpha, A, CUDA_X,
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
static void matmul_backward(floatX *dinp, float *dw, float *dbias, const floatX *dout, const floatX *inp,
                            const floatX *w, int N, int C,
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
// Where each tensor starts is model.h's param_offsets, shared with train_empo.c.
template <typename F> static void point_tensors(Tensors<F> *p, const size_t sizes[NUM_PARAM_TENSORS], F *mem,
                                                int tied) {
    F **ptrs[NUM_PARAM_TENSORS] = {&p->wte, &p->ln1w, &p->qkvw, &p->qkvb, &p->attprojw, &p->ln2w, &p->fcw, &p->fcprojw,
                                   &p->lnfw, &p->lmw};
    size_t off[NUM_PARAM_TENSORS];
    param_offsets(off, sizes, tied);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) *ptrs[i] = mem + off[i];
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
    float *att_lse;     // (L, B, NH, T) softmax log-sum-exp per query row (N = B*T)
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
    float *att_D;       // (B, NH, T), then the attention backward's fp32 scratch (att_bwd_scratch_floats)
} Activations;
#define NUM_ACTS 28

// GPU-only settings, from flags that the host layer does not know (train_empo_cu's main takes them
// off the command line before handing the rest over). They apply to models loaded or made later.
// Defaults: the bf16 build's fit Qwen2.5-Math-1.5B's EMPO step at the paper's shape in 24 GB
// (doc/cuda.md, "Memory"); the fp32 build (the checking build) keeps the exact fp32 optimizer.
static int g_use_master = 1;     // --master: 1 fp32 master weights; 0 bf16 weights + stochastic rounding
#ifdef ENABLE_FP32
static int g_recompute = 0;      // --recompute: 0 none, 1 SwiGLU, 2 SwiGLU and RMSNorm outputs, 3 per layer
static int g_moments = MOM_FP32; // --moments: fp32, bf16 or 8bit AdamW moments
#else
static int g_recompute = 3;
static int g_moments = MOM_8BIT;
#endif
static int g_grads_bf16 = 0;     // --grads: 0 fp32 gradients, 1 bf16 (accumulated with stochastic rounding)
static double g_mem_cap = 0.0;   // --mem-cap: GiB our allocations may use (0: no cap); sizes the KV pool
static int g_reserve_T = 0;      // > 0: model_reserve holds at most this many positions per row (the plan's)
static int g_head_rows = 0;      // --head-rows: rows of logits per LM-head chunk (0 = about 256 MiB)
static double g_kv_gib = 0.0;    // --kv-gib: the KV-cache pool of generate (0 = 90% of the free memory)
static int g_gen_batch = 1024;   // --gen-batch: sequences decoded together at most

// Training rows are padded to a multiple of T_ALIGN positions (the attention tile): the activation
// layout then has few distinct shapes (and cuBLASLt few distinct problems), and padding at the
// end of a causal row changes nothing before it.
#define T_ALIGN ATT_TILE
static inline int round_up(int x, int a) { return (x + a - 1) / a * a; }

struct Model {
    // the fields the host layer reads (engine.h); logp and dlogp are host memory
    ModelConfig config;
    size_t num_parameters;
    unsigned char *tok; size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];
    float mean_loss;           // of the last forward with targets; -1 without
    float *logp, *dlogp;       // (B, T) of the last forward: log p(target), and dLoss/dlogp for the backward
    int adam_step;
    int target_rows_only;      // the host's hint that only rows with a target matter (unused here: every row)
    // the engine's own
    size_t param_sizes[NUM_PARAM_TENSORS];
    Tensors<floatX> params;
    floatX *params_memory;
    float *master_memory;      // fp32 master weights, or NULL (fp32 build, --master 0, or not yet needed)
    int use_master;            // the master copy is made at the first update if the load did not need one
    Tensors<float> grads;
    float *grads_memory;       // fp32, allocated by the first zero_grad: inference-only models have none
    float *m_memory, *v_memory;   // fp32 moments (--moments fp32)
    int moments;                  // MOM_FP32, MOM_BF16 or MOM_8BIT (the flag, when the model was made)
    char *mom_memory;             // the lean moments, one block (moments_layout), or NULL
    size_t mom_off[4], mom_bytes;
    int grads_consumed;           // model_update has used the gradients: generate may drop them
    int grads_bf16;               // --grads bf16: grads_memory is then an fp32 scratch (one layer + the head,
    size_t grads_n;               //   grads_n floats) and gradsX_memory (num_parameters) the bf16 gradient
    __nv_bfloat16 *gradsX_memory;
    long n_backward;              // backwards so far: seeds the bf16 accumulation's rounding
    float *norm_scratch;       // NORM_BLOCKS partials + the norm
    Activations acts;
    void *acts_memory;
    size_t acts_bytes, cap_N;  // cap_N: tokens the activations hold (model_reserve, or a larger forward)
    size_t reserve_N;          // model_reserve's tokens: a training forward after a rollout allocates them at once
    int B, T, Tp;              // the last forward: the caller's B and T, and T rounded up to T_ALIGN
    int recompute, head_rows;  // settings (from the flags); the activations follow them at the next forward
    int head_rows_used, head_rows_req, recompute_used;   // what the activations were carved for
    float *rope_cos, *rope_sin;   // device (round_up(maxT, T_ALIGN), HD/2)
    int *h_in, *h_tg;          // host (cap_N): the padded batch
    float *h_pad;              // host (cap_N): padded log-probs / dlogp on their way
};

// cuBLAS handles, device properties and the kernels' shared-memory limits, once per process.
static int g_gpu_init_done = 0;   // (the plan walks gpu_init once per plan)
static void gpu_init(void) {
    if (g_gpu_init_done) return;
    g_gpu_init_done = 1;
    if (g_plan) {   // the plan counts cuBLAS's workspace (ours: handed to both handles) and touches no GPU
        g_lt_workspace = device_alloc(LT_WORKSPACE, "cuBLAS workspace");
        return;
    }
    int dev = 0, ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) FATAL("no CUDA device");
    cudaCheck(cudaSetDevice(dev));
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    g_num_sms = prop.multiProcessorCount;
    att_setup_all();
    dec_setup_all();
    cublasCheck(cublasCreate(&g_cublas));
    cublasCheck(cublasLtCreate(&g_cublaslt));
    // one workspace for cuBLASLt and cuBLAS (the same stream, one call at a time): all of it is ours,
    // so the plan and the allocator's high-water mark include it
    g_lt_workspace = device_alloc(LT_WORKSPACE, "cuBLAS workspace");
    cublasCheck(cublasSetWorkspace(g_cublas, g_lt_workspace, LT_WORKSPACE));
}

// Host <-> device transfers of parameter-sized fp32 arrays go through a bounded staging buffer
// (64 MiB), never a second full copy on the device (a 1.5B model is 6 GB of fp32).
#define STAGE_FLOATS ((size_t)16 << 20)
// dst (n) floatX on the device = src (n) fp32 on the host
static void upload_params(floatX *dst, const float *src, size_t n) {
    size_t cap = n < STAGE_FLOATS ? n : STAGE_FLOATS;
    float *st = (float *)device_alloc(cap * sizeof(float), "staging");
    if (g_plan) { device_free(st, cap * sizeof(float)); return; }   // (src may be NULL then)
    for (size_t o = 0; o < n; o += cap) {
        size_t k = n - o < cap ? n - o : cap;
        cudaCheck(cudaMemcpy(st, src + o, k * sizeof(float), cudaMemcpyHostToDevice));
        convert_kernel<<<grid_for(k), 256>>>(dst + o, st, k);
        LAUNCH_CHECK();
    }
    cudaCheck(cudaDeviceSynchronize());
    device_free(st, cap * sizeof(float));
}
// dst (n) fp32 on the host = src (n) floatX on the device
static void download_params(float *dst, const floatX *src, size_t n) {
    size_t cap = n < STAGE_FLOATS ? n : STAGE_FLOATS;
    float *st = (float *)device_alloc(cap * sizeof(float), "staging");
    for (size_t o = 0; o < n; o += cap) {
        size_t k = n - o < cap ? n - o : cap;
        to_float_kernel<<<grid_for(k), 256>>>(st, src + o, k);
        LAUNCH_CHECK();
        cudaCheck(cudaMemcpy(dst + o, st, k * sizeof(float), cudaMemcpyDeviceToHost));
    }
    device_free(st, cap * sizeof(float));
}

// Allocates the floatX params and the small fixed things; gradients, master weights, moments and
// activations come when first needed.
static void model_alloc(Model *m, const ModelConfig *c) {
    gpu_init();
    memset(m, 0, sizeof *m);
    m->config = *c;
    if (c->C > 12288) FATAL("hidden size %d: the RMSNorm backward keeps C floats in shared memory (max 12288)", c->C);
    if (!g_plan) attention_setup(c->HD);
    fill_param_sizes(m->param_sizes, c);
    m->num_parameters = count_params(c);
    m->use_master = sizeof(floatX) == 2 && g_use_master;   // fp32 params need no master copy
    m->recompute = g_recompute;
    m->moments = g_moments;
    m->grads_bf16 = g_grads_bf16;
    m->head_rows = g_head_rows;
    size_t n = m->num_parameters;
    m->params_memory = (floatX *)device_alloc(n * sizeof(floatX), "parameters");
    point_tensors(&m->params, m->param_sizes, m->params_memory, c->tied);
    m->norm_scratch = (float *)device_alloc((NORM_BLOCKS + 1) * sizeof(float), "norm scratch");
    int rows = round_up(c->maxT, T_ALIGN);   // a padded row's positions go up to a multiple of T_ALIGN
    size_t h = (size_t)rows * (c->HD / 2);
    float *cs = (float *)xmalloc(h * sizeof(float)), *sn = (float *)xmalloc(h * sizeof(float));
    rope_tables(cs, sn, rows, c->HD, c->rope_theta);   // model.h: the CPU engine's tables, bit for bit
    m->rope_cos = (float *)device_alloc(h * sizeof(float), "rope table");
    m->rope_sin = (float *)device_alloc(h * sizeof(float), "rope table");
    if (!g_plan) {
        cudaCheck(cudaMemcpy(m->rope_cos, cs, h * sizeof(float), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(m->rope_sin, sn, h * sizeof(float), cudaMemcpyHostToDevice));
    }
    free(cs); free(sn);
    m->mean_loss = -1.0f;
}
static int bf16_exact(const float *w, size_t n) {
    for (size_t i = 0; i < n; i++) if (bf16_to_f32(f32_to_bf16(w[i])) != w[i]) return 0;
    return 1;
}
// The fp32 host weights w become the model's. The master copy is made now only if the weights
// hold more than bf16 does (an fp32 checkpoint of a trained model); otherwise the first update
// makes it from the bf16 weights, exactly, and a model that never trains (the KL reference, the
// judge) never has one.
static void model_set_weights(Model *m, const float *w) {
    size_t n = m->num_parameters;
    upload_params(m->params_memory, w, n);
    if (m->use_master && !bf16_exact(w, n)) {
        m->master_memory = (float *)device_alloc(n * sizeof(float), "fp32 master weights");
        cudaCheck(cudaMemcpy(m->master_memory, w, n * sizeof(float), cudaMemcpyHostToDevice));
    }
}

static int model_load(Model *m, const char *path, char *err, size_t errcap) {
    Checkpoint ck;
    if (ckpt_load(path, &ck, err, errcap) != 0) return -1;
    model_alloc(m, &ck.cfg);
    model_set_weights(m, ck.params);
    m->tok = ck.tok; m->tok_bytes = ck.tok_bytes; ck.tok = NULL;
    m->n_eos = ck.n_eos; memcpy(m->eos, ck.eos, sizeof m->eos);
    ckpt_free(&ck);
    return 0;
}

// N(0, 0.02) weights, norms 1, biases 0, as transformers initializes Qwen2. Up to 64M parameters
// they are drawn on the host exactly as train_empo.c draws them (model.h's RNG: the same numbers,
// so the two engines can be compared from --init); larger models are drawn on the device from a
// counter-based hash (the same distribution, not the same numbers: 1.5B draws on one CPU core
// would take half a minute).
static void model_init_random(Model *m, const ModelConfig *c, uint64_t seed) {
    model_alloc(m, c);
    size_t n = m->num_parameters, off[NUM_PARAM_TENSORS];
    param_offsets(off, m->param_sizes, c->tied);
    const int ones[3] = {P_LN1W, P_LN2W, P_LNFW};
    if (g_plan) {   // the allocations only: above 64M parameters the fp32 staging block, kept as the master
        if (n <= ((size_t)64 << 20)) return;
        float *st = (float *)device_alloc(n * sizeof(float), m->use_master ? "init staging = fp32 master"
                                                                            : "init staging");
        if (m->use_master) { m->master_memory = st; return; }
        device_free(st, n * sizeof(float));
        return;
    }
    if (n <= ((size_t)64 << 20)) {
        float *w = (float *)xmalloc(n * sizeof(float));
        uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
        for (size_t i = 0; i < n; i++) w[i] = 0.02f * random_normal(&rng);
        for (int t = 0; t < 3; t++) for (size_t i = 0; i < m->param_sizes[ones[t]]; i++) w[off[ones[t]] + i] = 1.0f;
        for (size_t i = 0; i < m->param_sizes[P_QKVB]; i++) w[off[P_QKVB] + i] = 0.0f;
        model_set_weights(m, w);
        free(w);
        return;
    }
    float *st = (float *)device_alloc(n * sizeof(float), m->use_master ? "init staging = fp32 master" : "init staging");
    init_normal_kernel<<<grid_for(n), 256>>>(st, n, 0.02f, seed * 0x9E3779B97F4A7C15ull + 1);
    LAUNCH_CHECK();
    for (int t = 0; t < 3; t++) {
        fill_kernel<<<grid_for(m->param_sizes[ones[t]]), 256>>>(st + off[ones[t]], m->param_sizes[ones[t]], 1.0f);
        LAUNCH_CHECK();
    }
    if (m->param_sizes[P_QKVB]) {
        fill_kernel<<<grid_for(m->param_sizes[P_QKVB]), 256>>>(st + off[P_QKVB], m->param_sizes[P_QKVB], 0.0f);
        LAUNCH_CHECK();
    }
    convert_kernel<<<grid_for(n), 256>>>(m->params_memory, st, n);
    LAUNCH_CHECK();
    cudaCheck(cudaDeviceSynchronize());
    if (m->use_master) { m->master_memory = st; return; }   // the staging block becomes the master copy
    device_free(st, n * sizeof(float));
}

// The weights as fp32 on the host (the master copy if there is one): n = num_parameters floats.
static void model_params_to_host(const Model *m, float *dst) {
    if (m->master_memory) {
        cudaCheck(cudaMemcpy(dst, m->master_memory, m->num_parameters * sizeof(float), cudaMemcpyDeviceToHost));
        return;
    }
    download_params(dst, m->params_memory, m->num_parameters);
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
    device_free(m->grads_memory, m->grads_n * sizeof(float));
    device_free(m->gradsX_memory, n * sizeof(__nv_bfloat16));
    device_free(m->master_memory, n * sizeof(float));
    device_free(m->m_memory, n * sizeof(float));
    device_free(m->v_memory, n * sizeof(float));
    device_free(m->mom_memory, m->mom_bytes);
    device_free(m->norm_scratch, (NORM_BLOCKS + 1) * sizeof(float));
    size_t h = (size_t)round_up(m->config.maxT, T_ALIGN) * (m->config.HD / 2);
    device_free(m->rope_cos, h * sizeof(float));
    device_free(m->rope_sin, h * sizeof(float));
    device_free(m->acts_memory, m->acts_bytes);
    free(m->logp); free(m->dlogp); free(m->h_in); free(m->h_tg); free(m->h_pad); free(m->tok);
    memset(m, 0, sizeof *m);
}

// The AdamW moments as a block of the run checkpoint, in train_empo.c's layout (adam_step, a flag,
// 0, then m and v in fp32), so that a state written by either engine resumes on the other.
static int model_has_moments(const Model *m) { return m->m_memory || m->mom_memory; }
// Moment w (0: m, 1: v) at [o, o + k) <-> fp32 host buf (to_host: device to host), through a
// device staging buffer for the lean moments (converted by moments_f32_kernel).
static void moments_chunk(const Model *m, float *buf, float *st, int w, size_t o, size_t k, int to_host) {
    if (m->moments == MOM_FP32) {
        float *d = (w ? m->v_memory : m->m_memory) + o;
        cudaCheck(cudaMemcpy(to_host ? buf : d, to_host ? d : buf, k * sizeof(float),
                             to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice));
        return;
    }
    if (!to_host) cudaCheck(cudaMemcpy(st, buf, k * sizeof(float), cudaMemcpyHostToDevice));
    int grid = ceil_div((long)k, Q8_BLOCK) < g_num_sms * 16 ? ceil_div((long)k, Q8_BLOCK) : g_num_sms * 16;
    if (m->moments == MOM_BF16)
        moments_f32_kernel<MOM_BF16><<<grid, Q8_BLOCK>>>(st, m->mom_memory, m->mom_off[1], m->mom_off[2],
                                                         m->mom_off[3], o, k, w, to_host);
    else
        moments_f32_kernel<MOM_8BIT><<<grid, Q8_BLOCK>>>(st, m->mom_memory, m->mom_off[1], m->mom_off[2],
                                                         m->mom_off[3], o, k, w, to_host);
    LAUNCH_CHECK();
    if (to_host) cudaCheck(cudaMemcpy(buf, st, k * sizeof(float), cudaMemcpyDeviceToHost));
    else cudaCheck(cudaDeviceSynchronize());
}
// The AdamW moments as a block of the run checkpoint, in train_empo.c's layout (adam_step, a flag,
// 0, then m and v in fp32), so that a state written by either engine resumes on the other. Lean
// moments are written as the fp32 values they stand for.
static int model_save_optimizer(const Model *m, FILE *f) {
    if (optimizer_header_write(f, m->adam_step, model_has_moments(m)) != 0) return -1;
    if (!model_has_moments(m)) return 0;
    size_t n = m->num_parameters, cap = n < STAGE_FLOATS ? n : STAGE_FLOATS;
    float *buf = (float *)xmalloc(cap * sizeof(float));
    float *st = m->moments == MOM_FP32 ? NULL : (float *)device_alloc(cap * sizeof(float), "staging");
    int rc = 0;
    for (int w = 0; w < 2 && rc == 0; w++)
        for (size_t o = 0; o < n && rc == 0; o += cap) {
            size_t k = n - o < cap ? n - o : cap;
            moments_chunk(m, buf, st, w, o, k, 1);
            if (fwrite(buf, 4, k, f) != k) rc = -1;
        }
    free(buf);
    device_free(st, cap * sizeof(float));
    return rc;
}
// The moments in the model's format (--moments), zero: allocated at the first update or load.
static void model_alloc_moments(Model *m) {
    size_t n = m->num_parameters;
    if (m->moments == MOM_FP32) {
        m->m_memory = (float *)device_alloc(n * sizeof(float), "AdamW m");
        m->v_memory = (float *)device_alloc(n * sizeof(float), "AdamW v");
        if (g_plan) return;
        cudaCheck(cudaMemset(m->m_memory, 0, n * sizeof(float)));
        cudaCheck(cudaMemset(m->v_memory, 0, n * sizeof(float)));
        return;
    }
    m->mom_bytes = moments_layout(n, m->moments, m->mom_off);
    m->mom_memory = (char *)device_alloc(m->mom_bytes, m->moments == MOM_BF16 ? "AdamW m, v (bf16)"
                                                                              : "AdamW m, v (8-bit + scales)");
    if (!g_plan) cudaCheck(cudaMemset(m->mom_memory, 0, m->mom_bytes));   // code 0, scale 0: the value 0
}
static int model_load_optimizer(Model *m, FILE *f, char *err, size_t errcap) {
    int has_moments;
    if (optimizer_header_read(f, &m->adam_step, &has_moments, err, errcap) != 0) return -1;
    if (!has_moments) return 0;
    if (!model_has_moments(m)) model_alloc_moments(m);
    size_t n = m->num_parameters, cap = n < STAGE_FLOATS ? n : STAGE_FLOATS;   // STAGE_FLOATS: a multiple of Q8_BLOCK
    float *buf = (float *)xmalloc(cap * sizeof(float));
    float *st = m->moments == MOM_FP32 ? NULL : (float *)device_alloc(cap * sizeof(float), "staging");
    int rc = 0;
    for (int w = 0; w < 2 && rc == 0; w++)
        for (size_t o = 0; o < n && rc == 0; o += cap) {
            size_t k = n - o < cap ? n - o : cap;
            if (fread(buf, 4, k, f) != k) { snprintf(err, errcap, "optimizer state: truncated"); rc = -1; break; }
            moments_chunk(m, buf, st, w, o, k, 0);
        }
    free(buf);
    device_free(st, cap * sizeof(float));
    return rc;
}

// Rows of logits per LM-head chunk: about 256 MiB of floatX by default, never more than N.
static int head_rows_for(const Model *m, size_t N) {
    size_t r = (size_t)m->head_rows;
    if (m->head_rows <= 0) {
        r = ((size_t)256 << 20) / ((size_t)m->config.V * sizeof(floatX));
        r = r < 1 ? 1 : r > (1u << 20) ? (1u << 20) : r;
    }
    return (int)(r < N ? r : N);
}

// Activations and scratch for N = B * Tp tokens. They are carved once for the capacity
// (model_reserve: the largest micro-batch of the run) and every smaller forward uses a prefix of
// each tensor; only a larger forward, or a change of the recompute or head-rows setting,
// allocates again.
static void model_ensure_acts(Model *m, size_t N) {
    if (m->acts_memory && N <= m->cap_N && m->recompute_used == m->recompute && m->head_rows_req == m->head_rows)
        return;
    if (N < m->cap_N) N = m->cap_N;
    const ModelConfig *c = &m->config;
    device_free(m->acts_memory, m->acts_bytes);
    free(m->logp); free(m->dlogp); free(m->h_in); free(m->h_tg); free(m->h_pad);
    size_t L = c->L, C = c->C, QKV = cfg_qkv_dim(c), NHD = (size_t)c->NH * c->HD, I = c->I;
    // recompute 3 keeps only each layer's input (resid3) for all layers, and one layer's worth of the rest
    size_t Lln = m->recompute >= 2 ? 1 : L, Lsw = m->recompute >= 1 ? 1 : L, L1 = m->recompute >= 3 ? 1 : L;
    int hr = head_rows_for(m, N);
    size_t X = sizeof(floatX), F = sizeof(float);
    Activations *a = &m->acts;
    void **ptrs[NUM_ACTS] = {(void **)&a->encoded, (void **)&a->ln1, (void **)&a->ln1_rstd, (void **)&a->qkv,
                             (void **)&a->atty,
                             (void **)&a->att_lse, (void **)&a->resid2, (void **)&a->ln2, (void **)&a->ln2_rstd,
                             (void **)&a->fch,
                             (void **)&a->swiglu, (void **)&a->resid3, (void **)&a->lnf, (void **)&a->lnf_rstd,
                             (void **)&a->lse,
                             (void **)&a->logp, (void **)&a->dlogp, (void **)&a->inputs, (void **)&a->targets,
                             (void **)&a->head,
                             (void **)&a->proj, (void **)&a->dresidual, (void **)&a->dln, (void **)&a->dqkv,
                             (void **)&a->datty,
                             (void **)&a->dfch, (void **)&a->dswiglu, (void **)&a->att_D};
    size_t bytes[NUM_ACTS] = {N * C * X, Lln * N * C * X, L1 * N * F, L1 * N * QKV * X, L1 * N * NHD * X,
                              L1 * N * c->NH * F, L1 * N * C * X, Lln * N * C * X, L1 * N * F, L1 * N * 2 * I * X,
                              Lsw * N * I * X, L * N * C * X, N * C * X, N * F, N * F,
                              N * F, N * F, N * sizeof(int), N * sizeof(int), (size_t)hr * c->V * X,
                              N * C * X, N * C * X, N * C * X, N * QKV * X, N * NHD * X,
                              N * 2 * I * X, N * I * X,
                              att_bwd_scratch_floats(N, c->NH, c->HD) * F};   // att_D: D + tc scratch
    size_t total = 0;
    for (int i = 0; i < NUM_ACTS; i++) total += (bytes[i] + 255) / 256 * 256;
    m->acts_memory = device_alloc(total, "activations");
    m->acts_bytes = total;
    char *p = (char *)m->acts_memory;
    for (int i = 0; i < NUM_ACTS; i++) { *ptrs[i] = p; p += (bytes[i] + 255) / 256 * 256; }
    m->logp = (float *)xcalloc(N, sizeof(float));
    m->dlogp = (float *)xcalloc(N, sizeof(float));
    m->h_in = (int *)xmalloc(N * sizeof(int));
    m->h_tg = (int *)xmalloc(N * sizeof(int));
    m->h_pad = (float *)xmalloc(N * sizeof(float));
    m->cap_N = N; m->head_rows_used = hr; m->head_rows_req = m->head_rows; m->recompute_used = m->recompute;
}
static void model_reserve(Model *m, int B, int T) {
    if (T > m->config.maxT) T = m->config.maxT;
    // the host asks for the context (train_empo.c reserves -b x maxT); the GPU main lowers that to the
    // run's longest sequence when it knows it (g_reserve_T: --plan-prompt + -n). A longer micro-batch
    // still works: its forward grows the activations.
    if (g_reserve_T > 0 && T > g_reserve_T) T = g_reserve_T;
    m->reserve_N = (size_t)B * round_up(T, T_ALIGN);
    model_ensure_acts(m, m->reserve_N);
}

// ----------------------------------------------------------------------------
// 5. forward, loss, backward, update (the same contract as train_empo.c)

// Pointers of layer l's saved activations (the shared buffer where recomputation applies), for
// the current forward's N = B * Tp tokens.
typedef struct { floatX *resid, *ln1, *qkv, *atty, *resid2, *ln2, *fch, *swiglu, *resid3; float *ln1_rstd, *ln2_rstd,
                *att_lse; } LayerActs;
static LayerActs layer_acts(const Model *m, int l) {
    const ModelConfig *c = &m->config;
    const Activations *a = &m->acts;
    size_t N = (size_t)m->B * m->Tp, C = c->C, QKV = cfg_qkv_dim(c), NHD = (size_t)c->NH * c->HD, I = c->I;
    size_t lln = m->recompute_used >= 2 ? 0 : l, lsw = m->recompute_used >= 1 ? 0 : l;
    size_t l1 = m->recompute_used >= 3 ? 0 : l;   // per-layer checkpointing: one layer's buffers
    LayerActs la;
    la.resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C;
    la.ln1 = a->ln1 + lln * N * C;
    la.ln1_rstd = a->ln1_rstd + l1 * N;
    la.qkv = a->qkv + l1 * N * QKV;
    la.atty = a->atty + l1 * N * NHD;
    la.att_lse = a->att_lse + l1 * N * c->NH;
    la.resid2 = a->resid2 + l1 * N * C;
    la.ln2 = a->ln2 + lln * N * C;
    la.ln2_rstd = a->ln2_rstd + l1 * N;
    la.fch = a->fch + l1 * N * 2 * I;
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
    if (backward) matmul_backward(a->dln + (size_t)r0 * C, m->grads.lmw, NULL, a->head, a->lnf + (size_t)r0 * C,
                                  m->params.lmw, rows, C, V);
}
// logits (n, V) fp32 = x (n, C) @ lmw^T: the LM head for sampling and judging, whose log-probs
// must not come from bf16 logits (cuBLAS accumulates in fp32 and writes fp32 here).
static void lm_head_f32(const Model *m, float *logits, const floatX *x, int n) {
    const ModelConfig *c = &m->config;
    gemm(logits, CUDA_R_32F, c->V, m->params.lmw, 1, c->C, x, 0, c->C, c->V, n, c->C, 0.0f, NULL);
}

// Where a forward also writes each layer's keys and values into the paged cache (the prefill of
// generate): row n of the batch goes to table row slot[n] (-1: padding) at position n % Tp.
typedef struct { floatX *pool; const int *slot, *pos, *table; int max_pages; } KVWrite;

// The layers and the final norm over the batch already in acts.inputs: (B, Tp) tokens.
static void forward_layers(Model *m, int B, int Tp, const KVWrite *kw) {
    const ModelConfig *c = &m->config;
    int N = B * Tp, C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Activations *a = &m->acts;
    Tensors<floatX> *p = &m->params;
    m->B = B; m->Tp = Tp;
    embedding_forward(a->encoded, a->inputs, p->wte, N, C);
    for (int l = 0; l < L; l++) {
        LayerActs la = layer_acts(m, l);
        if (l == 0) rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w, N, C, eps);   // later layers: fused below
        matmul_forward(la.qkv, la.ln1, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL,
                       N, C, QKV);
        rope_forward(la.qkv, m->rope_cos, m->rope_sin, NULL, N, Tp, NH, NKV, HD);
        if (kw) kv_write(kw->pool, la.qkv, kw->slot, kw->pos, kw->table, kw->max_pages, N, l, c);
        attention_forward(la.atty, la.att_lse, la.qkv, B, Tp, NH, NKV, HD);
        matmul_forward(a->proj, la.atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
        residual_rmsnorm_forward(la.resid2, la.ln2, la.ln2_rstd, la.resid, a->proj, p->ln2w + (size_t)l * C, N, C, eps);
        matmul_forward(la.fch, la.ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
        swiglu_forward(la.swiglu, la.fch, N, I);
        matmul_forward(a->proj, la.swiglu, p->fcprojw + (size_t)l * C * I, NULL, N, I, C);
        // the residual add, fused with the next RMSNorm: the next layer's ln1, or the final norm
        if (l + 1 < L) {
            LayerActs nx = layer_acts(m, l + 1);
            residual_rmsnorm_forward(la.resid3, nx.ln1, nx.ln1_rstd, la.resid2, a->proj, p->ln1w + (size_t)(l + 1) * C,
                                     N, C, eps);
        } else {
            residual_rmsnorm_forward(la.resid3, a->lnf, a->lnf_rstd, la.resid2, a->proj, p->lnfw, N, C, eps);
        }
    }
}

// inputs, targets (B, T) host arrays; targets may be NULL (then no loss), -1 = no target there.
// mask (B, T) weights each position's loss (NULL = all 1). Loss = sum(mask * -logp) / sum(mask),
// computed on the host from the log-probs, which it leaves in m->logp (host); it also sets m->dlogp
// for model_backward (callers with another objective overwrite m->dlogp before the backward).
// The rows run padded to Tp = T rounded up to T_ALIGN (input 0, no target): m->logp is (B, T).
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T) {
    const ModelConfig *c = &m->config;
    if (B < 1 || T < 1) FATAL("model_forward: empty batch (%d x %d)", B, T);
    if (T > c->maxT) FATAL("sequence length %d exceeds the model's max_seq_len %d", T, c->maxT);
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= c->V) FATAL("input token %d at position %d is outside the vocab (%d)",
                                                      inputs[i], i, c->V);
    if (targets)
        for (int i = 0; i < B * T; i++)
            if (targets[i] < -1 || targets[i] >= c->V) FATAL("target %d at position %d is outside the vocab (%d)",
                                                             targets[i], i, c->V);
    int Tp = round_up(T, T_ALIGN), N = B * Tp;
    // (generate returns the activations to the pool: the first forward after it takes the whole reservation)
    model_ensure_acts(m, (size_t)N > m->reserve_N ? (size_t)N : m->reserve_N);
    Activations *a = &m->acts;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Tp; t++) {
            m->h_in[b * Tp + t] = t < T ? inputs[b * T + t] : 0;
            m->h_tg[b * Tp + t] = t < T && targets ? targets[b * T + t] : -1;
        }
    cudaCheck(cudaMemcpy(a->inputs, m->h_in, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(a->targets, m->h_tg, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
    forward_layers(m, B, Tp, NULL);
    m->T = T;
    m->mean_loss = -1.0f;
    if (!targets) {
        memset(m->logp, 0, (size_t)B * T * sizeof(float));
        memset(m->dlogp, 0, (size_t)B * T * sizeof(float));
        return;
    }
    int hr = m->head_rows_used;
    for (int r0 = 0; r0 < N; r0 += hr) lm_head_chunk(m, r0, N - r0 < hr ? N - r0 : hr, 0);
    cudaCheck(cudaMemcpy(m->h_pad, a->logp, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    for (int b = 0; b < B; b++) memcpy(m->logp + (size_t)b * T, m->h_pad + (size_t)b * Tp, (size_t)T * sizeof(float));
    double wsum = 0.0, lsum = 0.0;
    for (int i = 0; i < B * T; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        wsum += w; lsum += w * -m->logp[i];
    }
    m->mean_loss = wsum > 0 ? (float)(lsum / wsum) : 0.0f;
    for (int i = 0; i < B * T; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        m->dlogp[i] = wsum > 0 ? (float)(-w / wsum) : 0.0f;
    }
}

// Logits of rows [r0, r0 + rows) of the last forward's (B, T) batch, to the host (rows, V) fp32.
// For tests and inspection: training never needs them.
static void model_logits_rows(Model *m, int r0, int rows, float *dst) {
    const ModelConfig *c = &m->config;
    int V = c->V, C = c->C;
    float *tmp = (float *)device_alloc((size_t)V * sizeof(float), "logits staging");
    for (int r = r0; r < r0 + rows; r++) {
        int b = r / m->T, t = r % m->T;
        lm_head_f32(m, tmp, m->acts.lnf + ((size_t)b * m->Tp + t) * C, 1);
        cudaCheck(cudaMemcpy(dst + (size_t)(r - r0) * V, tmp, (size_t)V * sizeof(float), cudaMemcpyDeviceToHost));
    }
    device_free(tmp, (size_t)V * sizeof(float));
}

// The gradients: allocated at the first zero_grad (inference-only models never have any), dropped
// by generate once an update has used them (model_release_for_rollout), allocated again here.
// --grads bf16: the fp32 scratch has the layout of a one-layer model of the same shape.
static void model_ensure_grads(Model *m) {
    if (m->grads_memory) return;
    if (!m->grads_bf16) {
        m->grads_n = m->num_parameters;
        m->grads_memory = (float *)device_alloc(m->grads_n * sizeof(float), "gradients (fp32)");
        point_tensors(&m->grads, m->param_sizes, m->grads_memory, m->config.tied);
        return;
    }
    ModelConfig c1 = m->config;
    c1.L = 1;
    size_t sizes1[NUM_PARAM_TENSORS];
    fill_param_sizes(sizes1, &c1);
    m->grads_n = count_params(&c1);
    m->gradsX_memory = (__nv_bfloat16 *)device_alloc(m->num_parameters * sizeof(__nv_bfloat16), "gradients (bf16)");
    m->grads_memory = (float *)device_alloc(m->grads_n * sizeof(float), "grad scratch fp32 (layer+head)");
    point_tensors(&m->grads, sizes1, m->grads_memory, m->config.tied);
}
static void model_zero_grad(Model *m) {
    model_ensure_grads(m);
    m->grads_consumed = 0;
    if (g_plan) return;
    cudaCheck(cudaMemset(m->grads_memory, 0, m->grads_n * sizeof(float)));
    if (m->gradsX_memory) cudaCheck(cudaMemset(m->gradsX_memory, 0, m->num_parameters * sizeof(__nv_bfloat16)));
}
// --grads bf16: the scratch's part for layer l (layer >= 0) or for the embedding and head (layer < 0),
// added into the bf16 gradient (accum_bf16_kernel, which zeroes the scratch).
static void grads_flush(Model *m, int layer) {
    static const int layer_t[7] = {P_LN1W, P_QKVW, P_QKVB, P_ATTPROJW, P_LN2W, P_FCW, P_FCPROJW};
    static const int head_t[3] = {P_WTE, P_LNFW, P_LMW};
    ModelConfig c1 = m->config;
    c1.L = 1;
    size_t sizes1[NUM_PARAM_TENSORS], off1[NUM_PARAM_TENSORS], off[NUM_PARAM_TENSORS];
    fill_param_sizes(sizes1, &c1);
    param_offsets(off1, sizes1, 0);
    param_offsets(off, m->param_sizes, 0);
    const int *ts = layer >= 0 ? layer_t : head_t;
    for (int k = 0; k < (layer >= 0 ? 7 : 3); k++) {
        size_t n = sizes1[ts[k]];
        if (!n) continue;
        uint64_t seed = 0xB0B5ull + ((uint64_t)m->n_backward * 64 + ts[k]) * 0x9E3779B97F4A7C15ull + (uint64_t)layer;
        accum_bf16_kernel<<<grid_for(n), 256>>>(m->gradsX_memory + off[ts[k]] + (layer >= 0 ? (size_t)layer * n : 0),
                                                m->grads_memory + off1[ts[k]], n, seed);
        LAUNCH_CHECK();
    }
}
// Per-layer checkpointing (--recompute 3): layer l's forward again from its saved input, into the
// one layer's buffers the backward then reads. The same calls as forward_layers' layer body
// (layer 0's separate RMSNorm for every layer: the fused add of layer l - 1 made the same ln1).
static void layer_recompute(Model *m, int l, int B, int T) {
    const ModelConfig *c = &m->config;
    int N = B * T, C = c->C, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Tensors<floatX> *p = &m->params;
    LayerActs la = layer_acts(m, l);
    rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w + (size_t)l * C, N, C, eps);
    matmul_forward(la.qkv, la.ln1, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N,
                   C, QKV);
    rope_forward(la.qkv, m->rope_cos, m->rope_sin, NULL, N, T, NH, NKV, HD);
    attention_forward(la.atty, la.att_lse, la.qkv, B, T, NH, NKV, HD);
    matmul_forward(m->acts.proj, la.atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
    residual_rmsnorm_forward(la.resid2, la.ln2, la.ln2_rstd, la.resid, m->acts.proj, p->ln2w + (size_t)l * C, N, C,
                             eps);
    matmul_forward(la.fch, la.ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
    swiglu_forward(la.swiglu, la.fch, N, I);
}

// Accumulates into the parameter gradients the gradient of sum_{b,t} dlogp[b,t] * logp[b,t], with
// m->dlogp (host, (B, T)) as left by the forward's loss or set by the caller. Needs the forward
// just before; the padding positions get dlogp 0, so they add nothing.
static void model_backward(Model *m) {
    if (!m->acts_memory || m->mean_loss < 0) FATAL("model_backward needs a forward with targets first");
    if (!m->grads_memory) model_zero_grad(m);
    const ModelConfig *c = &m->config;
    int B = m->B, T = m->Tp, N = B * T;
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Tensors<floatX> *p = &m->params;
    Tensors<float> *g = &m->grads;
    Activations *a = &m->acts;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) m->h_pad[b * T + t] = t < m->T ? m->dlogp[b * m->T + t] : 0.0f;
    cudaCheck(cudaMemcpy(a->dlogp, m->h_pad, (size_t)N * sizeof(float), cudaMemcpyHostToDevice));
    // the LM head, chunk by chunk (logits recomputed: only one chunk ever exists), then the final norm
    int hr = m->head_rows_used;
    for (int r0 = 0; r0 < N; r0 += hr) lm_head_chunk(m, r0, N - r0 < hr ? N - r0 : hr, 1);
    cudaCheck(cudaMemset(a->dresidual, 0, (size_t)N * C * sizeof(floatX)));
    rmsnorm_backward(a->dresidual, g->lnfw, a->dln, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, a->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        LayerActs la = layer_acts(m, l);
        size_t gl = m->grads_bf16 ? 0 : l;   // --grads bf16: this layer's gradient goes to the one-layer scratch
        // dresidual holds dLoss/d(resid3); the residual adds pass it through unchanged
        if (m->recompute_used >= 3) layer_recompute(m, l, B, T);
        if (m->recompute_used == 2) rmsnorm_forward(la.ln2, la.ln2_rstd, la.resid2, p->ln2w + (size_t)l * C, N, C, eps);
        if (m->recompute_used == 1 || m->recompute_used == 2) swiglu_forward(la.swiglu, la.fch, N, I);
        matmul_backward(a->dswiglu, g->fcprojw + gl * C * I, NULL, a->dresidual, la.swiglu,
                        p->fcprojw + (size_t)l * C * I, N, I, C);
        swiglu_backward(a->dfch, a->dswiglu, la.fch, N, I);
        matmul_backward(a->dln, g->fcw + gl * 2 * I * C, NULL, a->dfch, la.ln2, p->fcw + (size_t)l * 2 * I * C,
                        N, C, 2 * I);
        rmsnorm_backward(a->dresidual, g->ln2w + gl * C, a->dln, la.resid2, p->ln2w + (size_t)l * C,
                         la.ln2_rstd, N, C);
        // now dresidual = dLoss/d(resid2)
        matmul_backward(a->datty, g->attprojw + gl * C * NH * HD, NULL, a->dresidual, la.atty,
                        p->attprojw + (size_t)l * C * NH * HD,
                        N, NH * HD, C);
        attention_backward(a->dqkv, a->att_D, a->datty, la.atty, la.qkv, la.att_lse, B, T, NH, NKV, HD);
        rope_backward(a->dqkv, m->rope_cos, m->rope_sin, N, T, NH, NKV, HD);
        if (m->recompute_used == 2) rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w + (size_t)l * C, N, C, eps);
        matmul_backward(a->dln, g->qkvw + gl * QKV * C, c->qkv_bias ? g->qkvb + gl * QKV : NULL, a->dqkv,
                        la.ln1,
                        p->qkvw + (size_t)l * QKV * C, N, C, QKV);
        rmsnorm_backward(a->dresidual, g->ln1w + gl * C, a->dln, la.resid, p->ln1w + (size_t)l * C, la.ln1_rstd,
                         N, C);
        // now dresidual = dLoss/d(layer input)
        if (m->grads_bf16) grads_flush(m, l);
    }
    embedding_backward(g->wte, a->dresidual, a->inputs, N, C);
    if (m->grads_bf16) grads_flush(m, -1);
    m->n_backward++;
}

// A launch of adamw_lean_kernel<MODE, GT> (through a pointer: one template argument list per launch line).
template <int MODE, typename GT>
static void adamw_lean(int grid, floatX *params, float *master, const GT *grads, void *mp, void *vp, float *ms,
                       float *vs, size_t n, float lr, float beta1, float beta2, float eps, float wd, float step_size,
                       float bc2_sqrt, const float *norm, float grad_clip, uint64_t seed) {
    void (*kernel)(floatX *, float *, const GT *, void *, void *, float *, float *, size_t, float, float, float, float,
                   float, float, float, const float *, float, uint64_t) = adamw_lean_kernel<MODE, GT>;
    kernel<<<grid, Q8_BLOCK>>>(params, master, grads, mp, vp, ms, vs, n, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt,
                               norm, grad_clip, seed);
}

// The optimizer state the first update makes: the moments, and the fp32 master copy (from the
// bf16 weights, which are bf16-exact then: model_set_weights made it at load otherwise).
static void model_ensure_optimizer(Model *m) {
    size_t n = m->num_parameters;
    if (!model_has_moments(m)) model_alloc_moments(m);
    if (m->use_master && !m->master_memory) {
        m->master_memory = (float *)device_alloc(n * sizeof(float), "fp32 master weights");
        if (g_plan) return;
        to_float_kernel<<<grid_for(n), 256>>>(m->master_memory, m->params_memory, n);
        LAUNCH_CHECK();
    }
}

// Global L2 norm of all gradients (device), then clipping to grad_clip (<= 0: none) and one AdamW
// step as torch.optim.AdamW computes it. Returns the norm before clipping.
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                          float grad_clip) {
    size_t n = m->num_parameters;
    if (!m->grads_memory) model_zero_grad(m);
    model_ensure_optimizer(m);
    if (m->grads_bf16) sumsq_bf16_kernel<<<NORM_BLOCKS, 256>>>(m->norm_scratch, m->gradsX_memory, n);
    else sumsq_kernel<<<NORM_BLOCKS, 256>>>(m->norm_scratch, m->grads_memory, n);
    LAUNCH_CHECK();
    norm_finish_kernel<<<1, 1024>>>(m->norm_scratch + NORM_BLOCKS, m->norm_scratch, NORM_BLOCKS);
    LAUNCH_CHECK();
    // The contract (engine.h): a non-finite gradient changes nothing, and the host skips the step.
    // That needs the norm on the host before the update: one 4-byte copy per optimizer step.
    float norm;
    cudaCheck(cudaMemcpy(&norm, m->norm_scratch + NORM_BLOCKS, sizeof(float), cudaMemcpyDeviceToHost));
    if (!isfinite(norm)) return norm;
    m->adam_step++;
    double bc1 = 1.0 - pow(beta1, m->adam_step), bc2 = 1.0 - pow(beta2, m->adam_step);   // in double, as torch does
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    uint64_t seed = 0x5EEDull + (uint64_t)m->adam_step * 0x2545F4914F6CDD1Dull;
    int grid_q8 = ceil_div((long)n, Q8_BLOCK) < g_num_sms * 16 ? ceil_div((long)n, Q8_BLOCK) : g_num_sms * 16;
    char *mb = m->mom_memory;
    void *mp = m->moments == MOM_FP32 ? (void *)m->m_memory : mb, *vp = m->moments == MOM_FP32 ? (void *)m->v_memory
                                                                                              : mb + m->mom_off[1];
    float *ms = mb ? (float *)(mb + m->mom_off[2]) : NULL, *vs = mb ? (float *)(mb + m->mom_off[3]) : NULL;
    const float *nrm = m->norm_scratch + NORM_BLOCKS;
#define ADAMW_LEAN(MODE, GT, G)                                                                                        \
    adamw_lean<MODE, GT>(grid_q8, m->params_memory, m->master_memory, G, mp, vp, ms, vs, n, lr, beta1, beta2, eps,     \
                         weight_decay, step_size, bc2_sqrt, nrm, grad_clip, seed)
    if (!m->grads_bf16 && m->moments == MOM_FP32)   // the exact optimizer: adamw_kernel, as before
        adamw_kernel<<<grid_for(n), 256>>>(m->params_memory, m->master_memory, m->grads_memory, m->m_memory,
                                           m->v_memory, n, lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt,
                                           nrm, grad_clip, seed);
    else if (!m->grads_bf16 && m->moments == MOM_BF16) ADAMW_LEAN(MOM_BF16, float, m->grads_memory);
    else if (!m->grads_bf16) ADAMW_LEAN(MOM_8BIT, float, m->grads_memory);
    else if (m->moments == MOM_FP32) ADAMW_LEAN(MOM_FP32, __nv_bfloat16, m->gradsX_memory);
    else if (m->moments == MOM_BF16) ADAMW_LEAN(MOM_BF16, __nv_bfloat16, m->gradsX_memory);
    else ADAMW_LEAN(MOM_8BIT, __nv_bfloat16, m->gradsX_memory);
#undef ADAMW_LEAN
    LAUNCH_CHECK();
    m->grads_consumed = 1;
    return norm;
}

// ----------------------------------------------------------------------------
// 6. generation: prefill with the training kernels, a paged KV cache, batched decoding with
// continuous batching, sampling on the GPU; and next-token scoring for the judge

// The pool of KV pages. A page is held by the sequences whose tables list it (refs); the pages
// that a prompt fills completely are shared by its G responses, the partly filled last one is
// copied into each.
typedef struct {
    floatX *pool;        // (n_pages, L, 2, NKV, KV_PAGE, HD)
    size_t page_elems;
    int n_pages, max_pages;   // max_pages: pages of one sequence at the model's context
    int *refs, *free_list, n_free;
} PagedKV;
static size_t kv_page_elems(const ModelConfig *c) { return (size_t)c->L * 2 * c->NKV * KV_PAGE * c->HD; }
static void paged_init(PagedKV *kv, const ModelConfig *c, int n_pages) {
    memset(kv, 0, sizeof *kv);
    kv->page_elems = kv_page_elems(c);
    kv->n_pages = n_pages;
    kv->max_pages = ceil_div(c->maxT, KV_PAGE);
    kv->pool = (floatX *)device_alloc((size_t)n_pages * kv->page_elems * sizeof(floatX), "KV cache pages");
    kv->refs = (int *)xcalloc((size_t)n_pages, sizeof(int));
    kv->free_list = (int *)xmalloc((size_t)n_pages * sizeof(int));
    for (int i = 0; i < n_pages; i++) kv->free_list[i] = n_pages - 1 - i;   // page 0 is taken first
    kv->n_free = n_pages;
}
static int page_take(PagedKV *kv) {
    if (kv->n_free == 0) FATAL("generate: out of KV pages (the reservation should prevent this)");
    int p = kv->free_list[--kv->n_free];
    kv->refs[p] = 1;
    return p;
}
static void page_release(PagedKV *kv, int p) {
    if (--kv->refs[p] == 0) kv->free_list[kv->n_free++] = p;
}
static void paged_free(PagedKV *kv) {
    device_free(kv->pool, (size_t)kv->n_pages * kv->page_elems * sizeof(floatX));
    free(kv->refs); free(kv->free_list);
    memset(kv, 0, sizeof *kv);
}

// Device buffers of one decode step for up to S sequences (one token each).
typedef struct {
    int S, n_split, max_pages;
    floatX *x, *ln, *qkv, *atty, *proj, *fch, *sw;   // (S, C), (S, C), (S, QKV), (S, NH*HD), (S, C), (S, 2I), (S, I)
    float *rstd;                                     // (S)
    float *logits;                                   // (S, V) fp32
    float *part_o, *part_ml;                         // (S, NH, n_split, HD), (S, NH, n_split, 2)
    int *tok, *pos, *lens, *table, *rows, *out_tok;  // (S) each; table (S, max_pages)
    float *u, *out_logp;                             // (S)
    float *out_stats;                                // (S, 2) token entropy and self-certainty
    size_t bytes;
    int n_alloc; void *ptr[24]; size_t size[24];      // what dec_alloc handed out, for decode_bufs_free
} DecodeBufs;
static void *dec_alloc(DecodeBufs *d, size_t bytes, const char *what) {
    d->bytes += bytes;
    void *p = device_alloc(bytes, what);
    d->ptr[d->n_alloc] = p; d->size[d->n_alloc++] = bytes;
    return p;
}
static void decode_bufs_init(DecodeBufs *d, const ModelConfig *c, int S, int n_split, int max_pages) {
    memset(d, 0, sizeof *d);
    d->S = S; d->n_split = n_split; d->max_pages = max_pages;
    size_t X = sizeof(floatX), C = c->C, NHD = (size_t)c->NH * c->HD;
    d->x = (floatX *)dec_alloc(d, S * C * X, "decode"); d->ln = (floatX *)dec_alloc(d, S * C * X, "decode");
    d->qkv = (floatX *)dec_alloc(d, S * (size_t)cfg_qkv_dim(c) * X, "decode");
    d->atty = (floatX *)dec_alloc(d, S * NHD * X, "decode"); d->proj = (floatX *)dec_alloc(d, S * C * X, "decode");
    d->fch = (floatX *)dec_alloc(d, S * 2 * (size_t)c->I * X, "decode");
    d->sw = (floatX *)dec_alloc(d, S * (size_t)c->I * X, "decode");
    d->rstd = (float *)dec_alloc(d, S * sizeof(float), "decode");
    d->logits = (float *)dec_alloc(d, (size_t)S * c->V * sizeof(float), "decode logits");
    d->part_o = (float *)dec_alloc(d, (size_t)S * c->NH * n_split * c->HD * sizeof(float), "decode splits");
    d->part_ml = (float *)dec_alloc(d, (size_t)S * c->NH * n_split * 2 * sizeof(float), "decode splits");
    int **ints[6] = {&d->tok, &d->pos, &d->lens, &d->rows, &d->out_tok, &d->table};
    for (int i = 0; i < 6; i++)
        *ints[i] = (int *)dec_alloc(d, (size_t)S * (i == 5 ? max_pages : 1) * sizeof(int), "decode");
    d->u = (float *)dec_alloc(d, S * sizeof(float), "decode");
    d->out_logp = (float *)dec_alloc(d, S * sizeof(float), "decode");
    d->out_stats = (float *)dec_alloc(d, S * 2 * sizeof(float), "decode");
}
static void decode_bufs_free(DecodeBufs *d) {
    for (int i = 0; i < d->n_alloc; i++) device_free(d->ptr[i], d->size[i]);
    memset(d, 0, sizeof *d);
}

// One decode step: S tokens (d->tok), each of its own sequence at position d->pos, whose keys and
// values at earlier positions are in the pages of its row of d->table (lens = pos + 1). Writes
// this token's keys and values into the pages, then d->logits (S, V) fp32 of the next token; with
// n_out >= 0, only of the n_out rows listed in d->rows (d->logits (n_out, V)).
static void decode_forward(Model *m, DecodeBufs *d, PagedKV *kv, int S, int n_out = -1) {
    const ModelConfig *c = &m->config;
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    float eps = c->rms_eps;
    Tensors<floatX> *p = &m->params;
    embedding_forward(d->x, d->tok, p->wte, S, C);
    rmsnorm_forward(d->ln, d->rstd, d->x, p->ln1w, S, C, eps);
    for (int l = 0; l < L; l++) {
        matmul_forward(d->qkv, d->ln, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, S,
                       C, QKV);
        rope_forward(d->qkv, m->rope_cos, m->rope_sin, d->pos, S, 1, NH, NKV, HD);
        kv_write(kv->pool, d->qkv, NULL, d->pos, d->table, d->max_pages, S, l, c);
        decode_attention(d->atty, d->part_o, d->part_ml, d->qkv, kv->pool, d->table, d->lens, d->max_pages, d->n_split,
                         S, l, c);
        matmul_forward(d->proj, d->atty, p->attprojw + (size_t)l * C * NH * HD, NULL, S, NH * HD, C);
        // x += proj, in place (each element is read, then written, by the same thread), ln = norm(x)
        residual_rmsnorm_forward(d->x, d->ln, d->rstd, d->x, d->proj, p->ln2w + (size_t)l * C, S, C, eps);
        matmul_forward(d->fch, d->ln, p->fcw + (size_t)l * 2 * I * C, NULL, S, C, 2 * I);
        swiglu_forward(d->sw, d->fch, S, I);
        matmul_forward(d->proj, d->sw, p->fcprojw + (size_t)l * C * I, NULL, S, I, C);
        const floatX *wn =
            l + 1 < L ? p->ln1w + (size_t)(l + 1) * C : p->lnfw;   // the next layer's norm, or the final one
        residual_rmsnorm_forward(d->x, d->ln, d->rstd, d->x, d->proj, wn, S, C, eps);
    }
    if (n_out < 0) { lm_head_f32(m, d->logits, d->ln, S); return; }
    if (n_out == 0) return;
    gather_rows_kernel<<<ceil_div((long)n_out * C, 256), 256>>>(d->proj, d->ln, d->rows, n_out, C);
    LAUNCH_CHECK();
    lm_head_f32(m, d->logits, d->proj, n_out);
}

static int is_eos_token(const Model *m, int tok) {
    for (int i = 0; i < m->n_eos; i++) if (m->eos[i] == tok) return 1;
    return 0;
}

// Before a rollout: what training needs and generation does not goes back to the pool. The
// gradients once an update has used them (the host zeroes them before the next step's first
// backward; engine.h: nothing accumulates across generate), and activations larger than the
// prefill needs (the prefill overwrites them anyway, so no backward can follow a generate without
// a new forward). The next training forward and zero_grad allocate them again.
static void model_release_for_rollout(Model *m, size_t prefill_tokens) {
    if (m->grads_memory && m->grads_consumed) {
        device_free(m->grads_memory, m->grads_n * sizeof(float));
        device_free(m->gradsX_memory, m->num_parameters * sizeof(__nv_bfloat16));
        m->grads_memory = NULL; m->gradsX_memory = NULL;
        memset(&m->grads, 0, sizeof m->grads);
    }
    if (m->acts_memory && m->cap_N > prefill_tokens) {
        device_free(m->acts_memory, m->acts_bytes);
        m->acts_memory = NULL;
        m->acts_bytes = 0; m->cap_N = 0;
    }
}

// What is free for a new allocation: of --mem-cap when given, and of the device. The plan has no
// device: it takes --mem-cap, or PLAN_DEVICE_GIB.
#define PLAN_DEVICE_GIB 80.0
static double device_free_bytes(void) {
    double cap = g_mem_cap > 0 ? g_mem_cap * 1073741824.0 : -1.0, fr;
    if (g_plan) fr = (cap > 0 ? cap : PLAN_DEVICE_GIB * 1073741824.0) - (double)g_device_bytes;
    else {
        size_t f = 0, t = 0;
        cudaCheck(cudaMemGetInfo(&f, &t));
        fr = (double)f;
        if (cap > 0 && cap - (double)g_device_bytes < fr) fr = cap - (double)g_device_bytes;
    }
    return fr > 0 ? fr : 0.0;
}

// generate's device memory, made by the same function in a run and in the plan: the prefill's
// activations (at least 4096 positions, so that short prompts prefill together), the decode
// buffers for S responses (--gen-batch) and the KV page pool: what all prompts need at full length
// (need: the pages of a prompt's G responses), at most the budget, --kv-gib or 90% of what is then
// free. The prompts are admitted in waves that fit the pool (generate), so the pool only has to
// hold one prompt's responses. prompt_lens (n_prompts), cap (n_prompts * G): length + room.
typedef struct { int S, max_pages; int *need, *full; DecodeBufs d; PagedKV kv; } GenMem;
static void gen_mem_init(GenMem *g, Model *m, const int *prompt_lens, const int *cap, int n_prompts, int G,
                         int max_cap) {
    const ModelConfig *c = &m->config;
    int n = n_prompts * G, Pmax = 1;
    for (int p = 0; p < n_prompts; p++) if (prompt_lens[p] > Pmax) Pmax = prompt_lens[p];
    size_t prefill = (size_t)round_up(Pmax, T_ALIGN) > 4096 ? (size_t)round_up(Pmax, T_ALIGN) : 4096;
    model_release_for_rollout(m, prefill);
    model_ensure_acts(m, prefill);
    g->S = n < g_gen_batch ? n : g_gen_batch;
    if (g->S < G) g->S = G;
    g->max_pages = ceil_div(c->maxT, KV_PAGE);
    long total_pages = 0;
    int max_need = 0;
    g->need = (int *)xmalloc((size_t)n_prompts * sizeof(int));
    g->full = (int *)xmalloc((size_t)n_prompts * sizeof(int));
    for (int p = 0; p < n_prompts; p++) {
        int P = prompt_lens[p], c0 = cap[p * G], shared = P / KV_PAGE;
        g->full[p] = (P - 1 > c0 - 2 ? P - 1 : c0 - 2) / KV_PAGE + 1;   // pages up to the last position written
        g->need[p] = shared + G * (g->full[p] - shared);
        total_pages += g->need[p];
        if (g->need[p] > max_need) max_need = g->need[p];
    }
    decode_bufs_init(&g->d, c, g->S, ceil_div(max_cap, DEC_SPLIT), g->max_pages);
    if (g_mem_cap > 0 && (double)g_device_bytes > g_mem_cap * 1073741824.0)
        FATAL("--mem-cap %g: %.2f GiB are allocated before the KV cache (weights, optimizer state, decode buffers: "
              "--plan lists them)", g_mem_cap, g_device_bytes / 1073741824.0);
    size_t page_bytes = kv_page_elems(c) * sizeof(floatX);
    double budget = g_kv_gib > 0 ? g_kv_gib * 1073741824.0 : 0.9 * device_free_bytes();
    long budget_pages = (long)(budget / (double)page_bytes);
    int n_pages = (int)(total_pages < budget_pages ? total_pages : budget_pages);
    if (n_pages < max_need)
        FATAL("generate: the KV cache budget (%.2f GiB, %ld pages) cannot hold one prompt's %d responses (%d pages, "
              "%.2f GiB); raise --kv-gib / --mem-cap or lower -G / the response length", budget / 1073741824.0,
              budget_pages, G, max_need, max_need * (double)page_bytes / 1073741824.0);
    paged_init(&g->kv, c, n_pages);
}
static void gen_mem_free(GenMem *g) {
    paged_free(&g->kv);
    decode_bufs_free(&g->d);
    free(g->need); free(g->full);
}

// generate (engine.h). The prompts are admitted in order while the decode batch has room for their
// G responses (--gen-batch) and the page pool for their full length; each admitted group of
// prompts is prefilled together by the training forward (right-padded rows), which writes the
// keys and values into the pages of the first response of each prompt; the other G - 1 share the
// full pages and copy the last one. The first token of each response is drawn from its prompt's
// logits. Then every running response is decoded one token per step; a response that stops (EOS
// once min_new tokens are out, max_new tokens, or the context) returns its pages at once, and the
// next waiting prompt takes its place. A prompt's pages are reserved for the full length of its
// responses when it is admitted, so a running response never waits for a page.
// Sampling: each response's uniforms come from its own RNG stream (sc->seed, j) as on the CPU, so
// the result does not depend on the batch; greedy decoding gives the CPU's tokens up to the
// summation order of the logits (ties between near-equal logits aside).
static void generate(Model *m, const int *const *prompts, const int *prompt_lens, int n_prompts, int G,
                     const SamplerConfig *sc, Generation *out, int verbose) {
    const ModelConfig *c = &m->config;
    int n = n_prompts * G, V = c->V, C = c->C, greedy = sc->temperature <= 0.0f || sc->top_k == 1;
    memset(out, 0, sizeof *out);
    out->n = n;
    out->len = (int *)xcalloc((size_t)(n ? n : 1), sizeof(int));
    out->eos = (int *)xcalloc((size_t)(n ? n : 1), sizeof(int));
    out->tokens = (int **)xmalloc((size_t)(n ? n : 1) * sizeof(int *));
    out->logprobs = (float **)xmalloc((size_t)(n ? n : 1) * sizeof(float *));
    int *cap = (int *)xmalloc((size_t)(n ? n : 1) * sizeof(int)), max_cap = 1;
    for (int p = 0; p < n_prompts; p++) {
        if (prompt_lens[p] < 1) FATAL("generate: prompt %d is empty", p);
        if (prompt_lens[p] >= c->maxT)
            FATAL("generate: prompt %d has %d tokens, at or beyond the context (%d)", p, prompt_lens[p], c->maxT);
        for (int t = 0; t < prompt_lens[p]; t++)
            if (prompts[p][t] < 0 || prompts[p][t] >= V)
                FATAL("generate: prompt %d has token %d outside the vocab", p, prompts[p][t]);
        int room = prompt_lens[p] + (sc->max_new > 0 ? sc->max_new : 0);
        if (room > c->maxT) room = c->maxT;
        for (int g = 0; g < G; g++) {
            int j = p * G + g;
            cap[j] = room;
            out->tokens[j] =
                (int *)xmalloc((size_t)(room - prompt_lens[p] > 0 ? room - prompt_lens[p] : 1) * sizeof(int));
            out->logprobs[j] =
                (float *)xmalloc((size_t)(room - prompt_lens[p] > 0 ? room - prompt_lens[p] : 1) * sizeof(float));
        }
        if (room > max_cap) max_cap = room;
    }
    if (n == 0 || sc->max_new <= 0) { free(cap); return; }   // no room for a single token
    uint64_t *rng = (uint64_t *)xmalloc((size_t)n * sizeof(uint64_t));
    for (int j = 0; j < n; j++)
        rng[j] = (sc->seed + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull);
    double *ent_sum = (double *)xcalloc((size_t)n, sizeof(double)), *cert_sum = (double *)xcalloc((size_t)n,
            sizeof(double));

    GenMem gm;
    gen_mem_init(&gm, m, prompt_lens, cap, n_prompts, G, max_cap);
    int S = gm.S, max_pages = gm.max_pages, *need = gm.need, *full = gm.full;
    DecodeBufs &d = gm.d;
    PagedKV &kv = gm.kv;

    // host state: each response's pages and its remaining reservation; the running list
    int *pages = (int *)xmalloc((size_t)n * max_pages * sizeof(int)), *npages = (int *)xcalloc((size_t)n, sizeof(int));
    int *res = (int *)xcalloc((size_t)n, sizeof(int)), *active = (int *)xmalloc((size_t)S * sizeof(int));
    int *h_tok = (int *)xmalloc((size_t)S * sizeof(int)), *h_pos = (int *)xmalloc((size_t)S * sizeof(int));
    int *h_lens = (int *)xmalloc((size_t)S * sizeof(int)), *h_rows = (int *)xmalloc((size_t)S * sizeof(int));
    int *h_table = (int *)xmalloc((size_t)S * max_pages * sizeof(int));
    float *h_u = (float *)xmalloc((size_t)S * sizeof(float)), *h_lp = (float *)xmalloc((size_t)S * sizeof(float));
    float *h_st = (float *)xmalloc((size_t)S * 2 * sizeof(float));
    long reserved = 0;
    int n_active = 0, next = 0, step = 0;
    double t_start = now_seconds();
    size_t prefill_budget = m->cap_N;   // gen_mem_init has sized the activations for the prefill
    // a response is done after its latest token, or still runs (then 1)
    auto finish = [&](int j) {
        for (int i = 0; i < npages[j]; i++) page_release(&kv, pages[(size_t)j * max_pages + i]);
        npages[j] = 0;
        reserved -= res[j];
        res[j] = 0;
    };
    auto still_running = [&](int j) {
        int P = prompt_lens[j / G], t = out->tokens[j][out->len[j] - 1];
        if (is_eos_token(m, t) && out->len[j] >= sc->min_new) { out->eos[j] = 1; return 0; }
        if (out->len[j] >= sc->max_new || P + out->len[j] >= cap[j]) return 0;
        return 1;
    };
    while (next < n_prompts || n_active > 0) {
        // admit waiting prompts: as many as fit the batch, the pool and one prefill
        int p0 = next, Pmax = 0;
        while (next < n_prompts && n_active + (next - p0 + 1) * G <= S && (long)need[next] <= kv.n_free - reserved) {
            int Pm = prompt_lens[next] > Pmax ? prompt_lens[next] : Pmax, k = next - p0 + 1;
            if (k > 1 && (size_t)k * round_up(Pm, T_ALIGN) > prefill_budget) break;
            // take the pages now, so that the next prompt's check sees them gone
            int P = prompt_lens[next], s0 = next * G, shared = P / KV_PAGE, part = P % KV_PAGE != 0;
            for (int i = 0; i < shared + part; i++) pages[(size_t)s0 * max_pages + i] = page_take(&kv);
            npages[s0] = shared + part;
            for (int g = 1; g < G; g++) {
                int j = s0 + g;
                for (int i = 0; i < shared; i++) {
                    int pg = pages[(size_t)s0 * max_pages + i];
                    pages[(size_t)j * max_pages + i] = pg;
                    kv.refs[pg]++;
                }
                if (part) pages[(size_t)j * max_pages + shared] = page_take(&kv);
                npages[j] = shared + part;
            }
            for (int g = 0; g < G; g++) { res[s0 + g] = full[next] - shared - part; reserved += res[s0 + g]; }
            Pmax = Pm;
            next++;
        }
        int k = next - p0;
        if (k == 0 && n_active == 0) FATAL("generate: cannot admit prompt %d (internal error)", next);
        if (k > 0) {
            // prefill the k prompts as one right-padded batch through the training forward
            int Tp = round_up(Pmax, T_ALIGN), N = k * Tp;
            model_ensure_acts(m, (size_t)N);
            int *slot = m->h_tg, *in = m->h_in;   // host scratch of the activations (cap_N >= N)
            int *posv = (int *)xmalloc((size_t)N * sizeof(int));
            for (int b = 0; b < k; b++) {
                int p = p0 + b, P = prompt_lens[p];
                for (int t = 0; t < Tp; t++) {
                    in[b * Tp + t] = t < P ? prompts[p][t] : 0;
                    slot[b * Tp + t] = t < P ? b : -1;
                    posv[b * Tp + t] = t;
                }
                memcpy(h_table + (size_t)b * max_pages, pages + (size_t)p * G * max_pages,
                       (size_t)npages[p * G] * sizeof(int));
                h_rows[b] = b * Tp + P - 1;
            }
            Activations *a = &m->acts;
            cudaCheck(cudaMemcpy(a->inputs, in, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(a->targets, slot, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));   // as scratch
            int *d_pos = (int *)device_alloc((size_t)N * sizeof(int), "prefill positions");
            cudaCheck(cudaMemcpy(d_pos, posv, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.table, h_table, (size_t)k * max_pages * sizeof(int), cudaMemcpyHostToDevice));
            KVWrite kw = {kv.pool, a->targets, d_pos, d.table, max_pages};
            forward_layers(m, k, Tp, &kw);
            m->mean_loss = -1.0f;   // the activations now hold the prefill, not a training forward
            device_free(d_pos, (size_t)N * sizeof(int));
            free(posv);
            // the others' own copy of the last, partly filled page
            int np = 0;
            for (int b = 0; b < k; b++) {
                int p = p0 + b, P = prompt_lens[p], s0 = p * G;
                if (P % KV_PAGE == 0) continue;
                for (int g = 1; g < G; g++) {
                    h_tok[np] = pages[(size_t)s0 * max_pages + P / KV_PAGE];
                    h_pos[np] = pages[(size_t)(s0 + g) * max_pages + P / KV_PAGE];
                    np++;
                    if (np == S) {   // d.tok / d.pos as scratch for the page pairs
                        cudaCheck(cudaMemcpy(d.tok, h_tok, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
                        cudaCheck(cudaMemcpy(d.pos, h_pos, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
                        kv_copy_pages_kernel<<<grid_for((size_t)np * kv.page_elems), 256>>>(kv.pool, d.tok, d.pos, np,
                                                                                            kv.page_elems);
                        LAUNCH_CHECK();
                        np = 0;
                    }
                }
            }
            if (np > 0) {
                cudaCheck(cudaMemcpy(d.tok, h_tok, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
                cudaCheck(cudaMemcpy(d.pos, h_pos, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
                kv_copy_pages_kernel<<<grid_for((size_t)np * kv.page_elems), 256>>>(kv.pool, d.tok, d.pos, np,
                                                                                    kv.page_elems);
                LAUNCH_CHECK();
            }
            // the first token of each of the k * G responses, from its prompt's last row
            cudaCheck(cudaMemcpy(d.rows, h_rows, (size_t)k * sizeof(int), cudaMemcpyHostToDevice));
            gather_rows_kernel<<<ceil_div((long)k * C, 256), 256>>>(d.ln, a->lnf, d.rows, k, C);
            LAUNCH_CHECK();
            lm_head_f32(m, d.logits, d.ln, k);
            for (int o = 0; o < k * G; o++) {
                h_rows[o] = o / G;
                h_u[o] = greedy ? 0.0f : random_f32(&rng[p0 * G + o]);
            }
            cudaCheck(cudaMemcpy(d.rows, h_rows, (size_t)k * G * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.u, h_u, (size_t)k * G * sizeof(float), cudaMemcpyHostToDevice));
            sample_rows(d.out_tok, d.out_logp, d.out_stats, NULL, d.logits, d.rows, d.u, k * G, V, sc);
            cudaCheck(cudaMemcpy(h_tok, d.out_tok, (size_t)k * G * sizeof(int), cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemcpy(h_lp, d.out_logp, (size_t)k * G * sizeof(float), cudaMemcpyDeviceToHost));
            cudaCheck(cudaMemcpy(h_st, d.out_stats, (size_t)k * G * 2 * sizeof(float), cudaMemcpyDeviceToHost));
            for (int o = 0; o < k * G; o++) {
                int j = p0 * G + o;
                out->tokens[j][0] = h_tok[o];
                out->logprobs[j][0] = h_lp[o];
                ent_sum[j] += h_st[2 * o];
                cert_sum[j] += h_st[2 * o + 1];
                out->len[j] = 1;
                if (still_running(j)) active[n_active++] = j;
                else finish(j);
            }
            continue;   // admit more before decoding, if they fit
        }
        // one decode step of every running response
        for (int a = 0; a < n_active; a++) {
            int j = active[a], pos = prompt_lens[j / G] + out->len[j] - 1;
            if (pos / KV_PAGE >= npages[j]) {   // a new page, out of the reservation
                pages[(size_t)j * max_pages + npages[j]++] = page_take(&kv);
                res[j]--; reserved--;
            }
            h_tok[a] = out->tokens[j][out->len[j] - 1];
            h_pos[a] = pos;
            h_lens[a] = pos + 1;
            memcpy(h_table + (size_t)a * max_pages, pages + (size_t)j * max_pages, (size_t)npages[j] * sizeof(int));
            h_u[a] = greedy ? 0.0f : random_f32(&rng[j]);
        }
        cudaCheck(cudaMemcpy(d.tok, h_tok, (size_t)n_active * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d.pos, h_pos, (size_t)n_active * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d.lens, h_lens, (size_t)n_active * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d.table, h_table, (size_t)n_active * max_pages * sizeof(int), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d.u, h_u, (size_t)n_active * sizeof(float), cudaMemcpyHostToDevice));
        decode_forward(m, &d, &kv, n_active);
        sample_rows(d.out_tok, d.out_logp, d.out_stats, NULL, d.logits, NULL, d.u, n_active, V, sc);
        cudaCheck(cudaMemcpy(h_tok, d.out_tok, (size_t)n_active * sizeof(int), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(h_lp, d.out_logp, (size_t)n_active * sizeof(float), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(h_st, d.out_stats, (size_t)n_active * 2 * sizeof(float), cudaMemcpyDeviceToHost));
        int w = 0;
        for (int a = 0; a < n_active; a++) {
            int j = active[a];
            out->tokens[j][out->len[j]] = h_tok[a];
            out->logprobs[j][out->len[j]] = h_lp[a];
            ent_sum[j] += h_st[2 * a];
            cert_sum[j] += h_st[2 * a + 1];
            out->len[j]++;
            if (still_running(j)) active[w++] = j;
            else finish(j);
        }
        n_active = w;
        step++;
        if (verbose && (step % 64 == 0 || (n_active == 0 && next == n_prompts))) {
            fprintf(stderr, "\r  generating: step %d, %d/%d responses still running, %.1f s", step,
                    n_active + (n_prompts - next) * G, n, now_seconds() - t_start);
            if (n_active == 0 && next == n_prompts) fputc('\n', stderr);
        }
    }
    gen_mem_free(&gm);
    free(cap); free(rng); free(pages); free(npages); free(res); free(active);
    free(h_tok); free(h_pos); free(h_lens); free(h_rows); free(h_table); free(h_u); free(h_lp);
    free(h_st);
    generation_set_token_means(out, ent_sum, cert_sum);
    free(ent_sum);
    free(cert_sum);
}

// model_next_logprobs (engine.h), as train_empo.c computes it: sequences that share a prefix with
// the first sequence of their run (the pairs of one question) compute it once. The cut is the
// CPU's: a sequence joins the run of the one before it if it shares at least one token with that
// run's leader, and keeps at least one token of its own. Per wave of at most max_seqs sequences:
// the leaders go through the training forward whole (right-padded batches of about max_tokens
// tokens), writing their keys and values into KV pages, and their last rows give their scores;
// each other sequence takes its leader's full pages of the common prefix, a copy of the partly
// filled one, and runs only its own tokens, all the followers together, one position per decode
// step; a sequence's scores come from the step of its last token. out (n, n_cand).
static void model_next_logprobs(Model *m, const int *const *ids, const int *lens, int n, const int *cand, int n_cand,
                                int max_seqs, int max_tokens, float *out, long *n_computed, long *n_shared) {
    const ModelConfig *c = &m->config;
    int C = c->C, V = c->V;
    if (n <= 0) return;
    for (int s = 0; s < n; s++) {
        if (lens[s] < 1 || lens[s] > c->maxT) FATAL("model_next_logprobs: sequence %d has %d tokens (context %d)", s,
                                                    lens[s], c->maxT);
        for (int t = 0; t < lens[s]; t++)
            if (ids[s][t] < 0 || ids[s][t] >= V) FATAL("model_next_logprobs: token %d outside the vocab", ids[s][t]);
    }
    int W = max_seqs > 0 ? (max_seqs < n ? max_seqs : n) : 1, max_pages = ceil_div(c->maxT, KV_PAGE);
    DecodeBufs d;
    decode_bufs_init(&d, c, W, ceil_div(c->maxT, DEC_SPLIT), max_pages);
    float *d_out = (float *)device_alloc((size_t)W * n_cand * sizeof(float), "judge out");
    int *d_cand = (int *)device_alloc((size_t)n_cand * sizeof(int), "judge");
    cudaCheck(cudaMemcpy(d_cand, cand, (size_t)n_cand * sizeof(int), cudaMemcpyHostToDevice));
    int *lead = (int *)xmalloc((size_t)W * sizeof(int)), *start = (int *)xmalloc((size_t)W * sizeof(int));
    int *pages = (int *)xmalloc((size_t)W * max_pages * sizeof(int)), *owner = (int *)xmalloc((size_t)W * sizeof(int));
    int *h_tok = (int *)xmalloc((size_t)W * sizeof(int)), *h_pos = (int *)xmalloc((size_t)W * sizeof(int));
    int *h_lens = (int *)xmalloc((size_t)W * sizeof(int)), *h_rows = (int *)xmalloc((size_t)W * sizeof(int));
    int *h_table = (int *)xmalloc((size_t)W * max_pages * sizeof(int)), *foll = (int *)xmalloc((size_t)W * sizeof(int));
    float *h_out = (float *)xmalloc((size_t)W * n_cand * sizeof(float));
    for (int w0 = 0; w0 < n; w0 += W) {
        int nw = n - w0 < W ? n - w0 : W, need = 0;
        for (int s = 0; s < nw; s++) {   // the runs
            int L = s > 0 ? lead[s - 1] : -1, P = 0;
            if (L >= 0) {
                const int *x = ids[w0 + s], *y = ids[w0 + L];
                int lim = lens[w0 + s] - 1 < lens[w0 + L] ? lens[w0 + s] - 1 : lens[w0 + L];
                while (P < lim && x[P] == y[P]) P++;
            }
            lead[s] = P > 0 ? L : s;
            start[s] = P;
            need += ceil_div(lens[w0 + s], KV_PAGE) - P / KV_PAGE;
        }
        PagedKV kv;
        paged_init(&kv, c, need);
        for (int s = 0; s < nw; s++) {   // leaders: pages of their own; followers: the shared full ones, then their own
            int *pg = pages + (size_t)s * max_pages, np = ceil_div(lens[w0 + s], KV_PAGE);
            for (int i = 0; i < np; i++) {
                if (lead[s] != s && i < start[s] / KV_PAGE) {
                    pg[i] = pages[(size_t)lead[s] * max_pages + i];
                    kv.refs[pg[i]]++;
                }
                else pg[i] = page_take(&kv);
            }
        }
        // the leaders, whole, in right-padded batches through the training forward
        for (int s0 = 0; s0 < nw;) {
            int k = 0, Tmax = 0, s1 = s0;
            for (; s1 < nw && k < nw; s1++) {
                if (lead[s1] != s1) continue;
                int Tn = round_up(lens[w0 + s1] > Tmax ? lens[w0 + s1] : Tmax, T_ALIGN);
                if (k > 0 && (long)(k + 1) * Tn > max_tokens) break;
                Tmax = lens[w0 + s1] > Tmax ? lens[w0 + s1] : Tmax;
                owner[k++] = s1;
            }
            if (k == 0) break;
            int Tp = round_up(Tmax, T_ALIGN), N = k * Tp;
            model_ensure_acts(m, (size_t)N);
            int *posv = (int *)xmalloc((size_t)N * sizeof(int));
            for (int b = 0; b < k; b++) {
                int s = owner[b], L = lens[w0 + s];
                for (int t = 0; t < Tp; t++) {
                    m->h_in[b * Tp + t] = t < L ? ids[w0 + s][t] : 0;
                    m->h_tg[b * Tp + t] = t < L ? b : -1;
                    posv[b * Tp + t] = t;
                }
                memcpy(h_table + (size_t)b * max_pages, pages + (size_t)s * max_pages,
                       (size_t)ceil_div(L, KV_PAGE) * sizeof(int));
                h_rows[b] = b * Tp + L - 1;
                if (n_computed) *n_computed += L;
            }
            Activations *a = &m->acts;
            int *d_pos = (int *)device_alloc((size_t)N * sizeof(int), "judge positions");
            cudaCheck(cudaMemcpy(a->inputs, m->h_in, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(a->targets, m->h_tg, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d_pos, posv, (size_t)N * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.table, h_table, (size_t)k * max_pages * sizeof(int), cudaMemcpyHostToDevice));
            KVWrite kw = {kv.pool, a->targets, d_pos, d.table, max_pages};
            forward_layers(m, k, Tp, &kw);
            m->mean_loss = -1.0f;
            device_free(d_pos, (size_t)N * sizeof(int));
            free(posv);
            cudaCheck(cudaMemcpy(d.rows, h_rows, (size_t)k * sizeof(int), cudaMemcpyHostToDevice));
            gather_rows_kernel<<<ceil_div((long)k * C, 256), 256>>>(d.ln, a->lnf, d.rows, k, C);
            LAUNCH_CHECK();
            lm_head_f32(m, d.logits, d.ln, k);
            rows_logprobs_kernel<<<k, 256>>>(d_out, d.logits, V, d_cand, n_cand);
            LAUNCH_CHECK();
            cudaCheck(cudaMemcpy(h_out, d_out, (size_t)k * n_cand * sizeof(float), cudaMemcpyDeviceToHost));
            for (int b = 0; b < k; b++) memcpy(out + (size_t)(w0 + owner[b]) * n_cand, h_out + (size_t)b * n_cand,
                                               n_cand * sizeof(float));
            s0 = s1;
        }
        // the followers: their own copy of the leader's partly filled page, then their own tokens
        int nf = 0, np = 0;
        for (int s = 0; s < nw; s++) {
            if (lead[s] == s) continue;
            foll[nf++] = s;
            if (n_shared) *n_shared += start[s];
            if (n_computed) *n_computed += lens[w0 + s] - start[s];
            if (start[s] % KV_PAGE == 0) continue;
            h_tok[np] = pages[(size_t)lead[s] * max_pages + start[s] / KV_PAGE];
            h_pos[np] = pages[(size_t)s * max_pages + start[s] / KV_PAGE];
            np++;
        }
        if (np > 0) {   // (d.tok, d.pos as scratch for the page pairs: np <= W)
            cudaCheck(cudaMemcpy(d.tok, h_tok, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.pos, h_pos, (size_t)np * sizeof(int), cudaMemcpyHostToDevice));
            kv_copy_pages_kernel<<<grid_for((size_t)np * kv.page_elems), 256>>>(kv.pool, d.tok, d.pos, np,
                                                                                kv.page_elems);
            LAUNCH_CHECK();
        }
        for (int t = 0; nf > 0; t++) {   // step t: each follower's own token start + t, while it has one
            int S = 0, n_out = 0;
            for (int f = 0; f < nf; f++) {
                int s = foll[f], pos = start[s] + t;
                if (pos >= lens[w0 + s]) continue;
                h_tok[S] = ids[w0 + s][pos]; h_pos[S] = pos; h_lens[S] = pos + 1;
                memcpy(h_table + (size_t)S * max_pages, pages + (size_t)s * max_pages,
                       (size_t)ceil_div(pos + 1, KV_PAGE) * sizeof(int));
                if (pos == lens[w0 + s] - 1) { h_rows[n_out] = S; owner[n_out] = s; n_out++; }
                S++;
            }
            if (S == 0) break;
            cudaCheck(cudaMemcpy(d.tok, h_tok, (size_t)S * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.pos, h_pos, (size_t)S * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.lens, h_lens, (size_t)S * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.table, h_table, (size_t)S * max_pages * sizeof(int), cudaMemcpyHostToDevice));
            cudaCheck(cudaMemcpy(d.rows, h_rows, (size_t)(n_out > 0 ? n_out : 1) * sizeof(int),
                                 cudaMemcpyHostToDevice));
            decode_forward(m, &d, &kv, S, n_out);
            if (n_out == 0) continue;
            rows_logprobs_kernel<<<n_out, 256>>>(d_out, d.logits, V, d_cand, n_cand);
            LAUNCH_CHECK();
            cudaCheck(cudaMemcpy(h_out, d_out, (size_t)n_out * n_cand * sizeof(float), cudaMemcpyDeviceToHost));
            for (int o = 0; o < n_out; o++) memcpy(out + (size_t)(w0 + owner[o]) * n_cand, h_out + (size_t)o * n_cand,
                                                   n_cand * sizeof(float));
        }
        paged_free(&kv);
    }
    decode_bufs_free(&d);
    device_free(d_out, (size_t)W * n_cand * sizeof(float));
    device_free(d_cand, (size_t)n_cand * sizeof(int));
    free(lead);
    free(start);
    free(pages);
    free(owner);
    free(h_tok);
    free(h_pos);
    free(h_lens);
    free(h_rows);
    free(h_table);
    free(foll); free(h_out);
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
// 7. the EMPO host layer: train_empo.c's own, compiled here against the engine above. With
// EMPO_EXTERNAL_ENGINE it leaves out its CPU engine; everything it does with a model goes through
// empoc/engine.h, so the prompts, rollouts, rewards, objective, evaluation, run loop, checkpoints,
// log, modes and flags exist once, in train_empo.c. Its main becomes empo_main.

#define EMPO_EXTERNAL_ENGINE
#define EMPO_MAIN empo_main
#include "train_empo.c"

// ----------------------------------------------------------------------------
// 8. the memory plan (--plan, --mem-cap): a run's device allocations, listed without a GPU by
// walking the run's own allocation functions (model_alloc, model_init_random, model_reserve,
// gen_mem_init, model_zero_grad, model_ensure_acts, model_ensure_optimizer) in the run's order
// with g_plan set: device_alloc / device_free only count, and nothing touches a GPU.

static const char *const MOMENT_NAMES[] = {"fp32", "bf16", "8bit"};

// A model's shape from its checkpoint's header: the plan reads no weights.
static void plan_read_config(const char *path, ModelConfig *c) {
    int32_t h[CKPT_HEADER_INTS];
    FILE *f = fopen(path, "rb");
    if (!f) FATAL("%s: %s", path, strerror(errno));
    size_t got = fread(h, sizeof h, 1, f);
    fclose(f);
    if (got != 1 || (uint32_t)h[0] != CKPT_MAGIC) FATAL("%s: not an empo.c checkpoint", path);
    memset(c, 0, sizeof *c);
    c->V = h[3]; c->C = h[4]; c->L = h[5]; c->NH = h[6]; c->NKV = h[7]; c->I = h[8]; c->maxT = h[9];
    c->tied = h[10]; c->qkv_bias = h[11];
    memcpy(&c->rope_theta, &h[12], 4); memcpy(&c->rms_eps, &h[13], 4);
    c->HD = h[14];
    const char *bad = cfg_invalid(c);
    if (bad) FATAL("%s: %s", path, bad);
}
// The policy's shape, as load_model_and_tokenizer would make it.
static void plan_policy_config(const RunConfig *rc, ModelConfig *c) {
    char path[1100], err[256];
    if (rc->init_spec && !rc->resume_dir) {
        if (model_spec_parse(rc->init_spec, c, err, sizeof err)) FATAL("--init: %s", err);
        if (c->V == 0) {   // the byte tokenizer's vocabulary (model_init_spec)
            Tokenizer tok;
            if (tokenizer_init_bytes(&tok) != 0) FATAL("out of memory");
            c->V = tok.n_vocab;
            tokenizer_free(&tok);
        }
        const char *bad = cfg_invalid(c);
        if (bad) FATAL("--init: %s", bad);
        return;
    }
    if (rc->resume_dir) snprintf(path, sizeof path, "%s/model.bin", rc->resume_dir);
    else snprintf(path, sizeof path, "%s", rc->model_path);
    plan_read_config(path, c);
}

// One generate of n_prompts prompts of plen tokens, G responses of up to max_new tokens each.
static void plan_generate(Model *m, int n_prompts, int G, int plen, int max_new) {
    int maxT = m->config.maxT, P = plen < maxT - 1 ? plen : maxT - 1, room = P + max_new < maxT ? P + max_new : maxT;
    int *lens = (int *)xmalloc((size_t)n_prompts * sizeof(int)), *cap = (int *)xmalloc((size_t)n_prompts * G * 4);
    for (int p = 0; p < n_prompts; p++) lens[p] = P;
    for (int j = 0; j < n_prompts * G; j++) cap[j] = room;
    GenMem gm;
    gen_mem_init(&gm, m, lens, cap, n_prompts, G, room);
    void *pos = device_alloc(m->cap_N * sizeof(int), "prefill positions");   // one prefill wave's
    device_free(pos, m->cap_N * sizeof(int));
    gen_mem_free(&gm);
    free(lens); free(cap);
}
// One optimizer step on micro-batches of B rows of T positions (train_on_rollouts, run_sft_step).
static void plan_train(Model *m, Model *ref, int B, int T, const char *train, const char *update) {
    g_phase = train;
    model_zero_grad(m);
    size_t N = (size_t)B * round_up(T < m->config.maxT ? T : m->config.maxT, T_ALIGN);
    if (ref) model_ensure_acts(ref, N);
    model_ensure_acts(m, N);
    g_phase = update;
    model_ensure_optimizer(m);
    m->grads_consumed = 1;
}

typedef struct { int micro, plen, head_rows_used; } PlanShape;  // head_rows_used: set by plan_walk
// The run's allocations in its order: load, then two steps (the second rollout holds the optimizer
// state the first update made), then an evaluation. Returns the peak (bytes).
// The allocator's real state is kept aside and restored, so that a plan can be made at any time.
static size_t g_plan_peak = 0;
static size_t plan_walk(const RunConfig *rc, PlanShape *ps) {
    size_t real_bytes = g_device_bytes, real_peak = g_device_peak;
    void *real_ws = g_lt_workspace;
    int real_init = g_gpu_init_done, real_reserve = g_reserve_T;
    g_plan = 1;
    g_device_bytes = g_device_peak = 0;
    g_plan_n = g_plan_t = g_plan_t_peak = 0;
    g_gpu_init_done = 0;
    g_phase = "load";
    ModelConfig c;
    plan_policy_config(rc, &c);
    int sft = rc->mode == MODE_SFT, train = rc->mode == MODE_TRAIN;
    int train_T = ps->plen + rc->max_new < c.maxT ? ps->plen + rc->max_new : c.maxT;
    g_reserve_T = train ? train_T : 0;
    Model m, ref, ver;
    int use_ref = train && rc->tc.kl_beta > 0.0f, use_ver = rc->verifier_path && (train || rc->mode == MODE_EVAL);
    // model_load is model_alloc, then the weights through the staging buffer (model_set_weights;
    // the plan assumes a bf16-exact checkpoint, whose master copy waits for the first update)
    if (rc->init_spec && !rc->resume_dir) model_init_random(&m, &c, (uint64_t)rc->seed);
    else { model_alloc(&m, &c); upload_params(m.params_memory, NULL, m.num_parameters); }
    if (use_ref) {   // the frozen start: bf16 weights only, never a gradient
        model_alloc(&ref, &c);
        upload_params(ref.params_memory, NULL, ref.num_parameters);
    }
    if (use_ver) {
        ModelConfig vc;
        plan_read_config(rc->verifier_path, &vc);
        model_alloc(&ver, &vc);
        upload_params(ver.params_memory, NULL, ver.num_parameters);
    }
    if (rc->resume_dir && (train || sft)) model_alloc_moments(&m);   // model_load_optimizer (a state with moments)
    if (train || sft) model_reserve(&m, sft ? rc->prompts_per_step : ps->micro, c.maxT);
    if (train) {
        g_phase = "rollout 1";
        plan_generate(&m, rc->prompts_per_step, rc->G, ps->plen, rc->max_new);
        plan_train(&m, use_ref ? &ref : NULL, ps->micro, train_T, "train 1", "update 1");
        g_phase = "rollout 2+";
        plan_generate(&m, rc->prompts_per_step, rc->G, ps->plen, rc->max_new);
        plan_train(&m, use_ref ? &ref : NULL, ps->micro, train_T, "train 2+", "update 2+");
    } else if (sft) {
        plan_train(&m, NULL, rc->prompts_per_step, c.maxT, "train 1", "update 1");
        plan_train(&m, NULL, rc->prompts_per_step, c.maxT, "train 2+", "update 2+");
    } else if (rc->mode == MODE_PROMPT) {
        g_phase = "generate";
        plan_generate(&m, 1, rc->G, ps->plen, rc->max_new);
    }
    if ((train || sft) && rc->eval_path && rc->eval_every > 0) {
        g_phase = "eval";
        plan_generate(&m, rc->eval_batch, rc->eval_G, ps->plen, rc->eval_max_new);
    } else if (rc->mode == MODE_EVAL) {
        g_phase = "eval";
        plan_generate(&m, rc->eval_batch, rc->eval_G, ps->plen, rc->eval_max_new);
    }
    g_phase = "end";
    ps->head_rows_used = m.head_rows_used;
    if (use_ver) model_free(&ver);
    if (use_ref) model_free(&ref);
    model_free(&m);
    device_free(g_lt_workspace, LT_WORKSPACE);
    g_plan = 0;
    g_plan_peak = g_device_peak;
    if (g_device_bytes != 0) FATAL("plan: %zu bytes planned and never freed", g_device_bytes);
    g_device_bytes = real_bytes; g_device_peak = real_peak;
    g_lt_workspace = real_ws; g_gpu_init_done = real_init; g_reserve_T = real_reserve;
    return g_plan_peak;
}

#define GIB(x) ((double)(x) / 1073741824.0)
// The plan's table: each (phase, allocation) once, in order, with its count, its largest single
// allocation and what of it is live at the peak; then the peak.
static void plan_print(const RunConfig *rc, const PlanShape *ps) {
    char hr[64];
    snprintf(hr, sizeof hr, "%d (%s%d rows)", g_head_rows, g_head_rows ? "" : "auto: ", ps->head_rows_used);
    int sft = rc->mode == MODE_SFT;
    printf("memory plan (%s build): %s; %s\n", PRECISION_NAME, rc->init_spec && !rc->resume_dir ? rc->init_spec
           : rc->resume_dir ? rc->resume_dir : rc->model_path,
           sft ? "SFT" : rc->mode == MODE_TRAIN ? "EMPO" : "no training");
    if (rc->mode == MODE_TRAIN)
        printf("  %d prompts x %d responses per step, prompts of %d tokens (--plan-prompt) + %d new, -b %d%s\n",
               rc->prompts_per_step, rc->G, ps->plen, rc->max_new, ps->micro,
               rc->tc.kl_beta > 0 ? ", KL reference" : "");
    printf("  --master %d --moments %s --grads %s --recompute %d --head-rows %s --kv-gib %g --gen-batch %d "
           "--mem-cap %g%s\n", g_use_master, MOMENT_NAMES[g_moments], g_grads_bf16 ? "bf16" : "fp32", g_recompute,
           hr, g_kv_gib, g_gen_batch, g_mem_cap, g_mem_cap > 0 ? "" : " (no cap: KV pool sized for an 80 GiB device)");
    printf("  %-11s %-30s %5s %12s %12s\n", "phase", "allocation", "count", "largest GiB", "at peak GiB");
    char *done = (char *)xcalloc((size_t)g_plan_n + 1, 1);
    for (long i = 0; i < g_plan_n; i++) {
        if (done[i]) continue;
        const PlanEntry *e = &g_plan_log[i];
        long count = 0;
        size_t largest = 0, live = 0;
        for (long j = i; j < g_plan_n; j++) {
            const PlanEntry *f = &g_plan_log[j];
            if (done[j] || strcmp(f->phase, e->phase) || strcmp(f->what, e->what)) continue;
            done[j] = 1;
            count++;
            if (f->bytes > largest) largest = f->bytes;
            if (f->t_alloc <= g_plan_t_peak && (f->t_free < 0 || f->t_free > g_plan_t_peak)) live += f->bytes;
        }
        printf("  %-11s %-30s %5ld %12.3f %12.3f\n", e->phase, e->what, count, GIB(largest), GIB(live));
    }
    free(done);
    const char *at = "load";
    for (long i = 0; i < g_plan_n; i++) if (g_plan_log[i].t_alloc == g_plan_t_peak) at = g_plan_log[i].phase;
    // the peak of each phase: the live bytes after each allocation, replayed in order
    printf("  peak per phase (GiB):");
    for (long i = 0; i < g_plan_n; i++) {
        if (i > 0 && !strcmp(g_plan_log[i].phase, g_plan_log[i - 1].phase)) continue;
        size_t best = 0;
        for (long j = i; j < g_plan_n && !strcmp(g_plan_log[j].phase, g_plan_log[i].phase); j++) {
            size_t live = 0;
            for (long k = 0; k < g_plan_n; k++) {
                const PlanEntry *e = &g_plan_log[k];
                if (e->t_alloc <= g_plan_log[j].t_alloc && (e->t_free < 0 || e->t_free > g_plan_log[j].t_alloc))
                    live += e->bytes;
            }
            if (live > best) best = live;
        }
        printf("%s %s %.2f", i > 0 ? "," : "", g_plan_log[i].phase, GIB(best));
    }
    printf("\n");
    printf("plan peak: %.3f GiB (%.2f GB) in phase %s; the CUDA context (about 0.5 GiB) is not an allocation and "
           "not included\n", GIB(g_plan_peak), g_plan_peak / 1e9, at);
    fflush(stdout);
}

static const char GPU_FLAGS_HELP[] =
"GPU flags of train_empo_cu (the others are train_empo's, below); memory: doc/cuda.md, \"Memory\":\n"
"  --bench          the random-token training benchmark instead (--bench -h: its flags)\n"
"  --plan           print every device allocation the run would make, and the peak; no GPU needed\n"
"  --plan-prompt INT the longest prompt (tokens) the plan and the activation reservation assume  512\n"
"  --mem-cap GB     fit the run into GB GiB: the KV pool, and -b lowered until training fits       0 (off)\n"
"  --master INT     1: fp32 master weights; 0: bf16 weights, stochastic rounding                1\n"
#ifdef ENABLE_FP32
"  --moments NAME   AdamW moments: fp32, bf16 or 8bit (block-wise, stochastic rounding)        fp32\n"
"  --recompute INT  0 none, 1 SwiGLU, 2 + RMSNorm outputs, 3 per layer (only layer inputs kept)  0\n"
#else
"  --moments NAME   AdamW moments: fp32, bf16 or 8bit (block-wise, stochastic rounding)        8bit\n"
"  --recompute INT  0 none, 1 SwiGLU, 2 + RMSNorm outputs, 3 per layer (only layer inputs kept)  3\n"
#endif
"  --grads NAME     gradients kept across micro-batches: fp32, or bf16 (stochastic rounding)   fp32\n"
"  --head-rows INT  rows of logits per LM-head chunk (0 = about 256 MiB)                        0\n"
"  --kv-gib FLOAT   KV-cache pool of generation, GiB (0 = 90% of the free memory)               0\n"
"  --gen-batch INT  responses decoded together at most                                         1024\n\n";

#if !defined(TESTING)   // (test_empo_cu has no host-layer main; the emulator has, and calls gpu_main)
// The GPU program: takes the GPU flags off the command line, makes the plan (printed with --plan,
// which stops there; otherwise its peak, and with --mem-cap the micro-batch it chose), runs the
// host layer's program, and prints the allocator's measured high-water mark. The emulator's
// --run calls this too.
static int gpu_main(int argc, char **argv) {
    char **rest = (char **)xmalloc((size_t)(argc + 3) * sizeof(char *));
    int n = 0, plan = 0, help = 0, quiet = 0;
    PlanShape ps = {0, 512, 0};
    rest[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--plan")) { plan = 1; continue; }
        int gpu = !strcmp(f, "--master") || !strcmp(f, "--recompute") || !strcmp(f, "--head-rows") ||
                  !strcmp(f, "--kv-gib") || !strcmp(f, "--gen-batch") || !strcmp(f, "--moments") ||
                  !strcmp(f, "--mem-cap") || !strcmp(f, "--plan-prompt") || !strcmp(f, "--grads");
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { fputs(GPU_FLAGS_HELP, stdout); help = 1; }
        if (!strcmp(f, "-q")) quiet = 1;
        if (!gpu) { rest[n++] = argv[i]; continue; }
        if (i + 1 >= argc) FATAL("flag %s needs a value (see -h)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "--master")) g_use_master = arg_int(f, v, 0, 1);
        else if (!strcmp(f, "--recompute")) g_recompute = arg_int(f, v, 0, 3);
        else if (!strcmp(f, "--head-rows")) g_head_rows = arg_int(f, v, 0, 1 << 24);
        else if (!strcmp(f, "--kv-gib")) g_kv_gib = arg_float(f, v, 0.0f, 1e6f);
        else if (!strcmp(f, "--mem-cap")) g_mem_cap = arg_float(f, v, 0.0f, 1e6f);
        else if (!strcmp(f, "--plan-prompt")) ps.plen = arg_int(f, v, 1, 1 << 22);
        else if (!strcmp(f, "--grads")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) FATAL("--grads %s: expected fp32 or bf16", v);
            g_grads_bf16 = !strcmp(v, "bf16");
        }
        else if (!strcmp(f, "--moments")) {
            g_moments = -1;
            for (int k = 0; k < 3; k++) if (!strcmp(v, MOMENT_NAMES[k])) g_moments = k;
            if (g_moments < 0) FATAL("--moments %s: expected fp32, bf16 or 8bit", v);
        } else g_gen_batch = arg_int(f, v, 1, 1 << 20);
    }
    rest[n] = NULL;
    if (!help) {
        // the host layer's own flag parser, for the run's shape (its notes to stdout muted: the run prints them)
        RunConfig rc;
        fflush(stdout);
        int saved = dup(1), nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 1);
        parse_flags(&rc, n, rest);
        fflush(stdout);
        if (nul >= 0) { dup2(saved, 1); close(nul); }
        close(saved);
        int trains = rc.mode == MODE_TRAIN;
        ps.micro = rc.tc.micro;
        size_t peak = plan_walk(&rc, &ps);
        if (g_mem_cap > 0 && trains) {   // the largest micro-batch whose plan fits
            size_t cap = (size_t)(g_mem_cap * 1073741824.0);
            while (peak > cap && ps.micro > 1) { ps.micro--; peak = plan_walk(&rc, &ps); }   // a plan takes ~1 ms
            if (peak > cap) {
                plan_print(&rc, &ps);
                FATAL("--mem-cap %g: the run does not fit even with -b 1: its plan peaks at %.2f GiB (above); try "
                      "--master 0, --moments 8bit, --grads bf16, --recompute 3, or a higher cap", g_mem_cap, GIB(peak));
            }
        } else if (g_mem_cap > 0 && peak > (size_t)(g_mem_cap * 1073741824.0)) {
            plan_print(&rc, &ps);
            FATAL("--mem-cap %g: this run's plan peaks at %.2f GiB (above)", g_mem_cap, GIB(peak));
        }
        if (plan) {
            plan_print(&rc, &ps);
            run_config_free(&rc);
            free(rest);
            return 0;
        }
        if (trains && ps.micro != rc.tc.micro) {   // the host's -b: the last one on the command line wins
            static char b[16];
            snprintf(b, sizeof b, "%d", ps.micro);
            rest[n++] = (char *)"-b"; rest[n++] = b; rest[n] = NULL;
            printf("--mem-cap %g: -b %d (was %d) fits\n", g_mem_cap, ps.micro, rc.tc.micro);
        }
        if (trains) g_reserve_T = ps.plen + rc.max_new;
        if (!quiet) printf("memory plan: peak %.2f GiB of device allocations (train_empo_cu --plan ... lists them)\n",
                           GIB(peak));
        run_config_free(&rc);
    }
    int rc = empo_main(n, rest);
    if (!quiet && !help)
        printf("memory measured: %.2f GiB at most allocated (the allocator's high-water mark: every cudaMalloc of "
               "ours, the cuBLAS workspace included; not the CUDA context)\n", GIB(g_device_peak));
    free(rest);
    return rc;
}
#endif

// ----------------------------------------------------------------------------
// 9. main: --bench (train on random tokens, to measure speed and memory), or else every mode of
// train_empo through the host layer, with the GPU's own flags taken off the command line first

#ifndef TESTING

static void bench_usage(void) {
    printf(
"usage: ./train_empo_cu --bench (-m model.bin | --init SPEC) [options]\n"
"Forward + backward + AdamW on the GPU on random tokens: tokens/s, MFU and peak memory.\n"
"  -m FILE         checkpoint (.bin, doc/formats.md)\n"
"  --init SPEC     random model: qwen1.5b (Qwen2.5-Math-1.5B's shape), or keys V,C,L,NH,NKV,I,T,tied\n"
"                  (qwen1.5b,T=2048 starts from the 1.5B shape; model.h's model_spec_parse)\n"
"  -B INT          batch size                                  8\n"
"  -T INT          sequence length                             1024\n"
"  -x INT          steps                                       10 (the first 2 are warm-up, not timed)\n"
"  -r INT          recompute: 0 none, 1 SwiGLU, 2 + RMSNorm outputs, 3 per layer  (train_empo_cu -h)\n"
"  --moments NAME  AdamW moments: fp32, bf16, 8bit                (train_empo_cu -h)\n"
"  --grads NAME    gradients: fp32, bf16                           (train_empo_cu -h)\n"
"  --master INT    1: fp32 master weights; 0: bf16 weights, stochastic rounding  1\n"
"  --head-rows INT rows of logits per LM-head chunk (0 = about 256 MiB)        0\n"
"  -l FLOAT        learning rate                               1e-5\n"
"  -w FLOAT        weight decay                                0\n"
"  -c FLOAT        gradient clip (global norm; 0 = off)        1.0\n"
"  -o FILE         save the trained model (fp32 .bin) at the end\n"
"  --json FILE     append the results as one JSON line\n"
"  -s INT          seed                                        1337\n"
"rollouts (--gen): generate instead of training, at a fixed length\n"
"  --gen           the rollout benchmark: tokens/s and the decode bandwidth bound\n"
"  --prompts INT   random prompts                              32\n"
"  -G INT          responses per prompt                        7\n"
"  --prompt-len INT tokens per prompt                          256\n"
"  -n INT          new tokens per response (forced)            512\n"
"  --temp FLOAT    sampling temperature                        0.9\n"
"  --bw-gbs FLOAT  memory bandwidth for the bound (0: from the device)  0\n"
"  --gen-batch INT, --kv-gib FLOAT   as in EMPO mode (train_empo_cu -h)\n");
}
// The rollout benchmark (--bench --gen): n_prompts random prompts of plen tokens, G responses
// each, exactly max_new new tokens each (min_new = max_new: EOS ignored, so the work is fixed),
// sampling at temperature temp with top-p 1, top-k 0 (the paper's). Prints tokens/s and the
// memory-bandwidth bound of decoding: every decode step reads each weight once, and each running
// sequence's keys and values so far; the prefill and the sampler are not in the bound.
static void bench_gen(Model *m, int n_prompts, int G, int plen, int max_new, float temp, double bw_gbs,
                      const char *json_path, const char *device, int seed) {
    const ModelConfig *c = &m->config;
    if (plen + max_new > c->maxT) FATAL("--prompt-len + -n = %d exceeds the context %d", plen + max_new, c->maxT);
    int **prompts = (int **)xmalloc((size_t)n_prompts * sizeof(int *)),
        *lens = (int *)xmalloc((size_t)n_prompts * sizeof(int));
    uint64_t rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 3;
    for (int p = 0; p < n_prompts; p++) {
        prompts[p] = (int *)xmalloc((size_t)plen * sizeof(int));
        for (int t = 0; t < plen; t++) prompts[p][t] = (int)(random_u32(&rng) % (uint32_t)c->V);
        lens[p] = plen;
    }
    if (bw_gbs <= 0) {   // HBM: two transfers per clock over the bus
        int clock_khz = 0, bus_bits = 0;
        cudaCheck(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0));
        cudaCheck(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0));
        bw_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    }
    SamplerConfig warm = {temp, 1.0f, 0, 8, 8, (uint64_t)seed, 0};
    SamplerConfig sc = {temp, 1.0f, 0, max_new, max_new, (uint64_t)seed, 0};
    Generation g;
    generate(m, (const int *const *)prompts, lens, 1, G, &warm, &g, 0);   // warm-up: cuBLAS heuristics, first launches
    generation_free(&g);
    size_t fr0, tot;
    cudaCheck(cudaDeviceSynchronize());
    cudaCheck(cudaMemGetInfo(&fr0, &tot));
    double t0 = now_seconds();
    generate(m, (const int *const *)prompts, lens, n_prompts, G, &sc, &g, 1);
    cudaCheck(cudaDeviceSynchronize());
    double dt = now_seconds() - t0;
    long tokens = 0;
    for (int j = 0; j < g.n; j++) tokens += g.len[j];
    double n = (double)n_prompts * G, W = (double)m->num_parameters * sizeof(floatX);
    double kv_tok = (double)c->L * 2 * c->NKV * c->HD * sizeof(floatX), kv = 0.0;
    for (int s = 1; s < max_new; s++) kv += n * (plen + s) * kv_tok;   // decode step s attends to plen + s positions
    double bound_s = ((max_new - 1) * W + kv) / (bw_gbs * 1e9);
    printf("---\nrollouts: %d prompts x %d responses, %d-token prompts, %d new tokens each (forced), T=%.2f: "
           "%ld tokens in %.2f s\n", n_prompts, G, plen, max_new, temp, tokens, dt);
    printf("rollout tokens/s: %.0f; the decode bandwidth bound (%.0f GB/s: weights %.2f GB per step + the KV cache) is "
           "%.0f tokens/s: %.1f%% of it\n", tokens / dt, bw_gbs, W / 1e9, tokens / bound_s, 100.0 * bound_s / dt);
    if (json_path) {
        FILE *f = fopen(json_path, "a");
        if (!f) FATAL("cannot write %s", json_path);
        fprintf(f, "{\"impl\": \"train_empo_cu_generate\", \"device\": ");
        json_write_str(f, device, strlen(device));
        fprintf(f,
                ", \"precision\": \"%s\", \"prompts\": %d, \"G\": %d, \"prompt_len\": %d, \"new_tokens\": %d, "
                "\"temperature\": %.3f, \"tokens\": %ld, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"bw_gbs\": %.1f, "
                "\"bound_tokens_per_s\": %.1f, \"bound_share\": %.4f}\n",
                PRECISION_NAME, n_prompts, G, plen, max_new, temp, tokens, dt, tokens / dt, bw_gbs, tokens / bound_s,
                bound_s / dt);
        fclose(f);
    }
    generation_free(&g);
    for (int p = 0; p < n_prompts; p++) free(prompts[p]);
    free(prompts); free(lens);
}

static int bench_main(int argc, char **argv) {
    const char *model_path = NULL, *init_spec = NULL, *out_path = NULL, *json_path = NULL;
    int B = 8, T = 1024, steps = 10, recompute = g_recompute, use_master = 1, head_rows = 0, seed = 1337;
    float lr = 1e-5f, wd = 0.0f, clip = 1.0f;
    int gen = 0, gen_prompts = 32, gen_G = 7, gen_plen = 256, gen_new = 512;
    float gen_temp = 0.9f, bw_gbs = 0.0f;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--bench")) continue;
        if (!strcmp(f, "--gen")) { gen = 1; continue; }
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { bench_usage(); return 0; }
        if (i + 1 >= argc) FATAL("flag %s needs a value (see -h)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "-m")) model_path = v;
        else if (!strcmp(f, "--init")) init_spec = v;
        else if (!strcmp(f, "-B")) B = arg_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "-T")) T = arg_int(f, v, 1, 1 << 22);
        else if (!strcmp(f, "-x")) steps = arg_int(f, v, 1, 1 << 30);
        else if (!strcmp(f, "-r") || !strcmp(f, "--recompute")) recompute = arg_int(f, v, 0, 3);
        else if (!strcmp(f, "--moments")) {
            g_moments = -1;
            for (int k = 0; k < 3; k++) if (!strcmp(v, MOMENT_NAMES[k])) g_moments = k;
            if (g_moments < 0) FATAL("--moments %s: expected fp32, bf16 or 8bit", v);
        }
        else if (!strcmp(f, "--grads")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16")) FATAL("--grads %s: expected fp32 or bf16", v);
            g_grads_bf16 = !strcmp(v, "bf16");
        }
        else if (!strcmp(f, "--master")) use_master = arg_int(f, v, 0, 1);
        else if (!strcmp(f, "--head-rows")) head_rows = arg_int(f, v, 0, 1 << 24);
        else if (!strcmp(f, "-l")) lr = arg_float(f, v, 0.0f, 10.0f);
        else if (!strcmp(f, "-w")) wd = arg_float(f, v, 0.0f, 10.0f);
        else if (!strcmp(f, "-c")) clip = arg_float(f, v, 0.0f, 1e9f);
        else if (!strcmp(f, "-o")) out_path = v;
        else if (!strcmp(f, "--json")) json_path = v;
        else if (!strcmp(f, "-s")) seed = arg_int(f, v, 0, 1 << 30);
        else if (!strcmp(f, "--prompts")) gen_prompts = arg_int(f, v, 1, 1 << 20);
        else if (!strcmp(f, "-G")) gen_G = arg_int(f, v, 1, 1 << 10);
        else if (!strcmp(f, "--prompt-len")) gen_plen = arg_int(f, v, 1, 1 << 22);
        else if (!strcmp(f, "-n")) gen_new = arg_int(f, v, 1, 1 << 22);
        else if (!strcmp(f, "--temp")) gen_temp = arg_float(f, v, 0.0f, 100.0f);
        else if (!strcmp(f, "--bw-gbs")) bw_gbs = arg_float(f, v, 0.0f, 1e6f);
        else if (!strcmp(f, "--gen-batch")) g_gen_batch = arg_int(f, v, 1, 1 << 20);
        else if (!strcmp(f, "--kv-gib")) g_kv_gib = arg_float(f, v, 0.0f, 1e6f);
        else FATAL("unknown flag %s (see -h)", f);
    }
    if (!model_path && !init_spec) FATAL("give a model: -m model.bin or --init qwen1.5b (see -h)");
    ModelConfig init_cfg;
    char err[512];
    if (init_spec) {   // bad flags are reported before anything else
        if (model_spec_parse(init_spec, &init_cfg, err, sizeof err)) FATAL("--init: %s", err);
        if (init_cfg.V == 0) init_cfg.V = 256;   // no tokenizer here: a byte-sized vocabulary
        const char *bad = cfg_invalid(&init_cfg);
        if (bad) FATAL("--init: %s", bad);
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) FATAL("no CUDA device");
    gpu_init();
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    Model m;
    g_use_master = use_master; g_recompute = recompute; g_head_rows = head_rows;
    if (init_spec) model_init_random(&m, &init_cfg, (uint64_t)seed);
    else if (model_load(&m, model_path, err, sizeof err) != 0) FATAL("%s", err);
    const ModelConfig *c = &m.config;
    if (T > c->maxT) FATAL("-T %d exceeds the model's max_seq_len %d", T, c->maxT);
    printf("device: %s (%d SMs), precision %s, %s\n", prop.name, g_num_sms, PRECISION_NAME,
           m.use_master ? "fp32 master weights"
                        : (sizeof(floatX) == 2 ? "bf16 weights + stochastic rounding" : "fp32 weights"));
    printf("model: %.1fM params, V=%d C=%d L=%d NH=%d NKV=%d HD=%d I=%d, %s; B=%d T=%d, recompute %d\n",
           m.num_parameters / 1e6, c->V,
           c->C, c->L, c->NH, c->NKV, c->HD, c->I, c->tied ? "tied" : "untied", B, T, recompute);
    if (gen) {
        bench_gen(&m, gen_prompts, gen_G, gen_plen, gen_new, gen_temp, bw_gbs, json_path, prop.name, seed);
        model_free(&m);
        return 0;
    }
    // random tokens: targets are the next input, the last position of each row has none
    int N = B * T;
    int *inputs = (int *)xmalloc((size_t)N * sizeof(int)), *targets = (int *)xmalloc((size_t)N * sizeof(int));
    uint64_t rng = (uint64_t)seed * 0x9E3779B97F4A7C15ull + 7;
    for (int i = 0; i < N; i++) {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        inputs[i] = (int)((rng * 0x2545F4914F6CDD1Dull >> 33) % c->V);
    }
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
    printf("loss %.4f -> %.4f; %d matmul calls fell back from cuBLASLt to cublasGemmEx\n", first_loss, loss,
           g_lt_fallbacks);
    if (json_path) {
        FILE *f = fopen(json_path, "a");
        if (!f) FATAL("cannot write %s", json_path);
        fprintf(f, "{\"impl\": \"train_empo_cu\", \"device\": ");
        json_write_str(f, prop.name, strlen(prop.name));
        fprintf(f, ", \"precision\": \"%s\", \"master\": %d, \"recompute\": %d, \"B\": %d, \"T\": %d, \"params\": %zu, "
                   "\"tokens_per_s\": %.1f, \"tflops\": %.2f, \"mfu\": %.4f, \"mem_allocated_gib\": %.3f, "
                   "\"mem_device_peak_gib\": %.3f, "
                   "\"loss_first\": %.5f, \"loss_last\": %.5f}\n",
                PRECISION_NAME, m.use_master, recompute, B, T, m.num_parameters, tps, tflops, mfu,
                g_device_bytes / 1073741824.0,
                peak_used / 1073741824.0, first_loss, loss);
        fclose(f);
    }
    if (out_path && model_save(&m, out_path, CKPT_DTYPE_FP32, err, sizeof err) != 0) FATAL("%s", err);
    free(inputs); free(targets);
    model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) if (!strcmp(argv[i], "--bench")) return bench_main(argc, argv);
    return gpu_main(argc, argv);
}
#endif // TESTING
