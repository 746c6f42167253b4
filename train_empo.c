/*
train_empo.c: EMPO (Entropy Minimized Policy Optimization, arXiv 2504.05812) for Qwen2 models,
in one readable C file. This is the CPU reference: fp32, OpenMP, no BLAS.

Read it top to bottom:
  1. a cache-blocked matmul (the only kernel that matters for speed)
  2. the Qwen2 layers, each as a forward/backward pair, with shapes in the comments
  3. the model: one allocation each for params, grads, optimizer state and activations
  4. the loss (masked next-token log-likelihood), backward, AdamW with global-norm clipping
  5. main (a smoke run until the training loop lands)

Notation: B batch, T time, C hidden, NH query heads, NKV key/value heads, HD head dim,
QKV = (NH + 2*NKV)*HD, I MLP intermediate size, V vocab, L layers.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <float.h>
#include <stdarg.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "json.h"
#include "checkpoint.h"

// ----------------------------------------------------------------------------
// small utilities

#define FATAL(...) do { fprintf(stderr, "error: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) FATAL("out of memory allocating %zu bytes", n);
    return p;
}
static void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) FATAL("out of memory allocating %zu x %zu bytes", n, sz);
    return p;
}
static double now_seconds(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// 1. matmul: a cache-blocked single-precision GEMM.
// It follows the classic Goto/BLIS recipe: cut K and N into blocks that stay in cache, copy
// ("pack") the current blocks of A and B into contiguous panels, and let a small register-blocked
// micro-kernel do rank-1 updates of a 6x16 tile of C. Packing also lets one routine serve all
// three matmuls of training (forward, d_input, d_weight): A and B are read through arbitrary
// row/column strides, so transposes cost nothing extra.

#define GEMM_MR 6     // micro-tile rows: 6 x 2 vectors of 8 = 12 accumulator registers (AVX2 has 16)
#define GEMM_NR 16    // micro-tile columns
#define GEMM_KC 256   // K block: a 16-column B panel (16 KB) stays in L1
#define GEMM_MC 96    // M block: the packed A block (96 KB) stays in L2
#define GEMM_NC 1024  // N block: the packed B block (1 MB) stays in L2/L3

typedef float gemm_v8 __attribute__((vector_size(32)));

// C[6x16] (+)= sum_k Ap[k][0..6) * Bp[k][0..16). Ap, Bp packed; C row stride ldc.
static inline void gemm_micro(int K, const float *Ap, const float *Bp, float *C, long ldc, int mr, int nr, int accumulate) {
    gemm_v8 c[GEMM_MR][2];
    memset(c, 0, sizeof c);
    for (int k = 0; k < K; k++) {
        gemm_v8 b0, b1;
        memcpy(&b0, Bp, 32); memcpy(&b1, Bp + 8, 32);
        for (int i = 0; i < GEMM_MR; i++) {
            gemm_v8 a = {Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i]};
            c[i][0] += a * b0;
            c[i][1] += a * b1;
        }
        Ap += GEMM_MR; Bp += GEMM_NR;
    }
    float tile[GEMM_MR][GEMM_NR];
    memcpy(tile, c, sizeof tile);
    for (int i = 0; i < mr; i++) {
        float *row = C + (long)i * ldc;
        if (accumulate) for (int j = 0; j < nr; j++) row[j] += tile[i][j];
        else for (int j = 0; j < nr; j++) row[j] = tile[i][j];
    }
}

// C[m*ldc + n] = (accumulate ? C : 0) + sum_k A[m*rsa + k*csa] * B[k*rsb + n*csb]
// for m < M, n < N, k < K. Parallel over M blocks with OpenMP.
static void sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                  float *C, long ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) for (int m = 0; m < M; m++) memset(C + (long)m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    int nc_max = N < GEMM_NC ? N : GEMM_NC;
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    int npanels = (nc_max + GEMM_NR - 1) / GEMM_NR;
    float *Bp = (float *)aligned_alloc(64, ((size_t)npanels * GEMM_NR * kc_max * sizeof(float) + 63) / 64 * 64);
    // Split M into blocks of at most GEMM_MC rows, a multiple of the thread count of them, so
    // that no thread idles at the end of the parallel loop.
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int nblocks = (M + GEMM_MC - 1) / GEMM_MC;
    nblocks = (nblocks + nthreads - 1) / nthreads * nthreads;
    int mcb = (M + nblocks - 1) / nblocks;
    mcb = (mcb + GEMM_MR - 1) / GEMM_MR * GEMM_MR;
    #pragma omp parallel
    {
        float *Ap = (float *)aligned_alloc(64, (size_t)GEMM_MC * GEMM_KC * sizeof(float));
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = N - jc < GEMM_NC ? N - jc : GEMM_NC;
            int np = (nc + GEMM_NR - 1) / GEMM_NR;
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
                int acc = accumulate || pc > 0;
                // pack B[pc:pc+kc, jc:jc+nc] into panels Bp[p][k][16], zero-padded at the edge
                #pragma omp for schedule(static)
                for (int p = 0; p < np; p++) {
                    float *dst = Bp + (size_t)p * kc * GEMM_NR;
                    int n0 = jc + p * GEMM_NR, nn = N - n0 < GEMM_NR ? N - n0 : GEMM_NR;
                    for (int k = 0; k < kc; k++) {
                        const float *src = B + (long)(pc + k) * rsb + (long)n0 * csb;
                        int j = 0;
                        if (csb == 1) for (; j < nn; j++) dst[j] = src[j];
                        else for (; j < nn; j++) dst[j] = src[(long)j * csb];
                        for (; j < GEMM_NR; j++) dst[j] = 0.0f;
                        dst += GEMM_NR;
                    }
                }   // implicit barrier: Bp is ready for everyone
                #pragma omp for schedule(static, 1)
                for (int ic = 0; ic < M; ic += mcb) {
                    int mc = M - ic < mcb ? M - ic : mcb;
                    // pack A[ic:ic+mc, pc:pc+kc] into panels Ap[q][k][6]
                    for (int q = 0; q < mc; q += GEMM_MR) {
                        float *dst = Ap + (size_t)q * kc;
                        int mm = mc - q < GEMM_MR ? mc - q : GEMM_MR;
                        for (int k = 0; k < kc; k++) {
                            const float *src = A + (long)(ic + q) * rsa + (long)(pc + k) * csa;
                            int i = 0;
                            for (; i < mm; i++) dst[i] = src[(long)i * rsa];
                            for (; i < GEMM_MR; i++) dst[i] = 0.0f;
                            dst += GEMM_MR;
                        }
                    }
                    for (int p = 0; p < np; p++) {
                        int n0 = p * GEMM_NR, nr = nc - n0 < GEMM_NR ? nc - n0 : GEMM_NR;
                        for (int q = 0; q < mc; q += GEMM_MR) {
                            int mr = mc - q < GEMM_MR ? mc - q : GEMM_MR;
                            gemm_micro(kc, Ap + (size_t)q * kc, Bp + (size_t)p * kc * GEMM_NR,
                                       C + (long)(ic + q) * ldc + jc + n0, ldc, mr, nr, acc);
                        }
                    }
                }   // implicit barrier before Bp is overwritten
            }
        }
        free(Ap);
    }
    free(Bp);
}

// out (M, OC) = inp (M, C) @ weight^T (OC, C) + bias (OC)
static void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int M, int C, int OC) {
    sgemm(M, OC, C, inp, C, 1, weight, 1, C, out, OC, 0);
    if (bias) {
        #pragma omp parallel for
        for (int m = 0; m < M; m++)
            for (int o = 0; o < OC; o++) out[(size_t)m * OC + o] += bias[o];
    }
}
// dinp (M, C) += dout (M, OC) @ weight (OC, C);  dweight (OC, C) += dout^T @ inp;  dbias += sum_m dout
static void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, int M, int C, int OC) {
    if (dinp) sgemm(M, C, OC, dout, OC, 1, weight, C, 1, dinp, C, 1);
    if (dweight) sgemm(OC, C, M, dout, 1, OC, inp, C, 1, dweight, C, 1);
    if (dbias) {
        #pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int m = 0; m < M; m++) s += dout[(size_t)m * OC + o];
            dbias[o] += s;
        }
    }
}

// ----------------------------------------------------------------------------
// 2. the Qwen2 layers

// out (N, C) = wte[tokens] for N = B*T tokens
static void embedding_forward(float *out, const int *tokens, const float *wte, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
}
// dwte[tokens[n]] += dout[n]. Serial: two positions may hold the same token.
static void embedding_backward(float *dwte, const float *dout, const int *tokens, int N, int C) {
    for (int n = 0; n < N; n++) {
        float *d = dwte + (size_t)tokens[n] * C;
        const float *g = dout + (size_t)n * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

// RMSNorm as in Qwen2: out = x / sqrt(mean(x^2) + eps) * w.  x, out (N, C); rstd (N) is kept for backward.
static void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += xn[c] * xn[c];
        float r = 1.0f / sqrtf(ss / C + eps);
        rstd[n] = r;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = xn[c] * r * w[c];
    }
}
// With xhat = x*r: dx = r * (w*dout - xhat * mean(w*dout*xhat));  dw += sum_n dout*xhat.
static void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                             const float *rstd, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * C, *g = dout + (size_t)n * C;
        float r = rstd[n], dot = 0.0f;
        for (int c = 0; c < C; c++) dot += w[c] * g[c] * xn[c] * r;
        dot /= C;
        float *d = dx + (size_t)n * C;
        for (int c = 0; c < C; c++) d[c] += r * (w[c] * g[c] - xn[c] * r * dot);
    }
    // dw reduces over rows: split by columns so threads never write the same element
    #pragma omp parallel for
    for (int c = 0; c < C; c++) {
        float s = 0.0f;
        for (int n = 0; n < N; n++) s += dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
        dw[c] += s;
    }
}

// Rotary embedding tables, HF convention: for i < HD/2, freq_i = theta^(-2i/HD), and the pair
// (x[i], x[i + HD/2]) is rotated by angle pos*freq_i. Computed in fp32 as transformers does.
// cos, sin (maxT, HD/2)
static void rope_tables(float *cosb, float *sinb, int maxT, int HD, float theta) {
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
// Rotates the q and k heads of qkv (N, QKV) in place; pos (N) gives each row's position.
// dir = +1 forward; dir = -1 applies the transpose (the inverse rotation), which is the backward.
static void rope_apply(float *qkv, const int *pos, const float *cosb, const float *sinb, int N, int NH, int NKV,
                       int HD, int dir) {
    int h = HD / 2, QKV = (NH + 2 * NKV) * HD;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *cs = cosb + (size_t)pos[n] * h, *sn = sinb + (size_t)pos[n] * h;
        for (int head = 0; head < NH + NKV; head++) {   // q heads then k heads: contiguous in a row
            float *x = qkv + (size_t)n * QKV + (size_t)head * HD;
            for (int i = 0; i < h; i++) {
                float x1 = x[i], x2 = x[i + h], c = cs[i], s = dir * sn[i];
                x[i] = x1 * c - x2 * s;
                x[i + h] = x2 * c + x1 * s;
            }
        }
    }
}

// Causal grouped-query attention. qkv (B, T, QKV) with rope applied; query head hq reads key/value
// head hq / (NH/NKV). att (B, NH, T, T) keeps the softmax probabilities; out (B, T, NH*HD).
static void attention_forward(float *out, float *att, const float *qkv, int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int hq = 0; hq < NH; hq++)
            for (int t = 0; t < T; t++) {
                int hk = hq / rep;
                const float *q = qkv + ((size_t)b * T + t) * QKV + (size_t)hq * HD;
                float *a = att + (((size_t)b * NH + hq) * T + t) * T;
                float maxv = -FLT_MAX;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = qkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + hk) * HD;
                    float s = 0.0f;
                    for (int d = 0; d < HD; d++) s += q[d] * k[d];
                    s *= scale;
                    a[t2] = s;
                    if (s > maxv) maxv = s;
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) { a[t2] = expf(a[t2] - maxv); sum += a[t2]; }
                float inv = 1.0f / sum;
                for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
                float *o = out + ((size_t)b * T + t) * NH * HD + (size_t)hq * HD;
                for (int d = 0; d < HD; d++) o[d] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = qkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + NKV + hk) * HD;
                    float p = a[t2];
                    for (int d = 0; d < HD; d++) o[d] += p * v[d];
                }
            }
}
// dqkv (B, T, QKV) += gradient of the above; datt (T) per thread is scratch.
// Parallel over (b, kv head): the query heads of a group all write into the same dk, dv.
static void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                               int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    #pragma omp parallel
    {
        float *datt = (float *)xmalloc((size_t)T * sizeof(float));
        #pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int hk = 0; hk < NKV; hk++)
                for (int hq = hk * rep; hq < (hk + 1) * rep; hq++)
                    for (int t = 0; t < T; t++) {
                        const float *a = att + (((size_t)b * NH + hq) * T + t) * T;
                        const float *g = dout + ((size_t)b * T + t) * NH * HD + (size_t)hq * HD;
                        const float *q = qkv + ((size_t)b * T + t) * QKV + (size_t)hq * HD;
                        float *dq = dqkv + ((size_t)b * T + t) * QKV + (size_t)hq * HD;
                        // through out = att @ v
                        float dot = 0.0f;
                        for (int t2 = 0; t2 <= t; t2++) {
                            const float *v = qkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + NKV + hk) * HD;
                            float *dv = dqkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + NKV + hk) * HD;
                            float s = 0.0f;
                            for (int d = 0; d < HD; d++) { s += g[d] * v[d]; dv[d] += a[t2] * g[d]; }
                            datt[t2] = s;
                            dot += s * a[t2];
                        }
                        // through the softmax, then the scaled q.k
                        for (int t2 = 0; t2 <= t; t2++) {
                            float ds = a[t2] * (datt[t2] - dot) * scale;
                            const float *k = qkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + hk) * HD;
                            float *dk = dqkv + ((size_t)b * T + t2) * QKV + (size_t)(NH + hk) * HD;
                            for (int d = 0; d < HD; d++) { dq[d] += ds * k[d]; dk[d] += ds * q[d]; }
                        }
                    }
        free(datt);
    }
}

// SwiGLU: out (N, I) = silu(gate) * up, where fch (N, 2I) holds gate in [0, I) and up in [I, 2I).
static void swiglu_forward(float *out, const float *fch, int N, int I) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = fch + (size_t)n * 2 * I, *u = g + I;
        float *o = out + (size_t)n * I;
        for (int i = 0; i < I; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}
static void swiglu_backward(float *dfch, const float *dout, const float *fch, int N, int I) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = fch + (size_t)n * 2 * I, *u = g + I, *d = dout + (size_t)n * I;
        float *dg = dfch + (size_t)n * 2 * I, *du = dg + I;
        for (int i = 0; i < I; i++) {
            float sig = 1.0f / (1.0f + expf(-g[i])), silu = g[i] * sig;
            dg[i] = d[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
            du[i] = d[i] * silu;
        }
    }
}

static void residual_forward(float *out, const float *a, const float *b, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// Log-softmax at the targets. logits (N, V); targets (N), -1 = no target. Writes logp (N) and the
// log-sum-exp lse (N), which the backward uses to rebuild the softmax without storing it.
static void logprob_forward(float *logp, float *lse, const float *logits, const int *targets, int N, int V) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float maxv = -FLT_MAX;
        for (int v = 0; v < V; v++) if (x[v] > maxv) maxv = x[v];
        float s = 0.0f;
        for (int v = 0; v < V; v++) s += expf(x[v] - maxv);
        lse[n] = maxv + logf(s);
        logp[n] = targets[n] >= 0 ? x[targets[n]] - lse[n] : 0.0f;
    }
}
// Given dlogp (N) = dLoss/dlogp at each target, overwrites logits (N, V) with dLoss/dlogits:
// d logp / d logits = onehot(target) - softmax.
static void logprob_backward(float *logits, const float *lse, const float *dlogp, const int *targets, int N, int V) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *x = logits + (size_t)n * V;
        float g = targets[n] >= 0 ? dlogp[n] : 0.0f;
        if (g == 0.0f) { memset(x, 0, (size_t)V * sizeof(float)); continue; }
        for (int v = 0; v < V; v++) x[v] = -g * expf(x[v] - lse[n]);
        x[targets[n]] += g;
    }
}

// ----------------------------------------------------------------------------
// 3. the model

// A random number generator that is the same on every machine (xorshift64*), for init and
// sampling. State is one uint64 so it can be saved in a checkpoint.
static inline uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12; *state ^= *state << 25; *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}
static inline float random_f32(uint64_t *state) { return (random_u32(state) >> 8) / 16777216.0f; }  // [0, 1)
static inline float random_normal(uint64_t *state) {   // Box-Muller
    float u1 = random_f32(state), u2 = random_f32(state);
    return sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.2831853f * u2);
}

typedef struct {   // pointers into one block, in checkpoint order (see checkpoint.h)
    float *wte;      // (V, C)
    float *ln1w;     // (L, C)
    float *qkvw;     // (L, QKV, C)
    float *qkvb;     // (L, QKV), or empty
    float *attprojw; // (L, C, NH*HD)
    float *ln2w;     // (L, C)
    float *fcw;      // (L, 2I, C)
    float *fcprojw;  // (L, C, I)
    float *lnfw;     // (C)
    float *lmw;      // (V, C); points at wte when tied
} ParameterTensors;

static void point_parameters(ParameterTensors *p, const size_t sizes[NUM_PARAM_TENSORS], float *mem, int tied) {
    float **ptrs[NUM_PARAM_TENSORS] = {&p->wte, &p->ln1w, &p->qkvw, &p->qkvb, &p->attprojw,
                                       &p->ln2w, &p->fcw, &p->fcprojw, &p->lnfw, &p->lmw};
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { *ptrs[i] = mem; mem += sizes[i]; }
    if (tied) p->lmw = p->wte;
}

#define NUM_ACTIVATION_TENSORS 17
typedef struct {
    float *encoded;    // (B, T, C) the embedding output, input of layer 0
    float *ln1;        // (L, B, T, C)
    float *ln1_rstd;   // (L, B, T)
    float *qkv;        // (L, B, T, QKV) after bias and rotary embedding
    float *att;        // (L, B, NH, T, T) attention probabilities
    float *atty;       // (L, B, T, NH*HD)
    float *resid2;     // (L, B, T, C) residual stream after attention
    float *ln2;        // (L, B, T, C)
    float *ln2_rstd;   // (L, B, T)
    float *fch;        // (L, B, T, 2I) gate and up projections
    float *fch_swiglu; // (L, B, T, I)
    float *resid3;     // (L, B, T, C) residual stream after the MLP: the layer output
    float *lnf;        // (B, T, C)
    float *lnf_rstd;   // (B, T)
    float *logits;     // (B, T, V); overwritten with dlogits by the backward
    float *lse;        // (B, T) log-sum-exp of each row of logits
    float *logp;       // (B, T) log-probability of each target
} ActivationTensors;

static void activation_sizes(size_t s[NUM_ACTIVATION_TENSORS], const ModelConfig *c, int B, int T) {
    size_t L = c->L, BT = (size_t)B * T, C = c->C, QKV = cfg_qkv_dim(c), NH = c->NH, HD = c->HD, I = c->I;
    size_t v[NUM_ACTIVATION_TENSORS] = {BT * C, L * BT * C, L * BT, L * BT * QKV, L * B * NH * T * T, L * BT * NH * HD,
                                        L * BT * C, L * BT * C, L * BT, L * BT * 2 * I, L * BT * I, L * BT * C,
                                        BT * C, BT, BT * (size_t)c->V, BT, BT};
    memcpy(s, v, sizeof v);
}

#define NUM_GRAD_SCRATCH 6
typedef struct {   // backward scratch, reused layer after layer
    float *dresidual; // (B, T, C) gradient of the residual stream
    float *dln;       // (B, T, C)
    float *dqkv;      // (B, T, QKV)
    float *datty;     // (B, T, NH*HD)
    float *dfch;      // (B, T, 2I)
    float *dswiglu;   // (B, T, I)
} GradScratch;

typedef struct {
    ModelConfig config;
    ParameterTensors params;
    size_t param_sizes[NUM_PARAM_TENSORS];
    float *params_memory;
    size_t num_parameters;
    ParameterTensors grads;
    float *grads_memory;
    float *m_memory, *v_memory;   // AdamW moments
    int adam_step;
    ActivationTensors acts;
    float *acts_memory;
    GradScratch scratch;
    float *scratch_memory;
    int B, T;                     // the sizes the activations are allocated for
    int *inputs, *targets, *pos;  // (B, T) copies of the last forward's inputs
    float *dlogp;                 // (B, T) dLoss/dlogp at each target: set by forward's loss, or by the caller
    float *rope_cos, *rope_sin;   // (maxT, HD/2)
    float mean_loss;              // of the last forward with targets; -1 if it had none
    // carried through from the checkpoint so that a trained model saves as self-contained
    unsigned char *tok; size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];
} Model;

// Takes ownership of ck's buffers.
static void model_init_from_checkpoint(Model *m, Checkpoint *ck) {
    memset(m, 0, sizeof *m);
    m->config = ck->cfg;
    fill_param_sizes(m->param_sizes, &m->config);
    m->num_parameters = ck->num_params;
    m->params_memory = ck->params;
    point_parameters(&m->params, m->param_sizes, m->params_memory, m->config.tied);
    m->tok = ck->tok; m->tok_bytes = ck->tok_bytes;
    m->n_eos = ck->n_eos; memcpy(m->eos, ck->eos, sizeof m->eos);
    ck->params = NULL; ck->tok = NULL;
    const ModelConfig *c = &m->config;
    m->rope_cos = (float *)xmalloc((size_t)c->maxT * (c->HD / 2) * sizeof(float));
    m->rope_sin = (float *)xmalloc((size_t)c->maxT * (c->HD / 2) * sizeof(float));
    rope_tables(m->rope_cos, m->rope_sin, c->maxT, c->HD, c->rope_theta);
    m->mean_loss = -1.0f;
}

// 0 on success; on failure one line in err naming the file.
static int model_load(Model *m, const char *path, char *err, size_t errcap) {
    Checkpoint ck;
    if (ckpt_load(path, &ck, err, errcap) != 0) return -1;
    model_init_from_checkpoint(m, &ck);
    return 0;
}

// A fresh model: N(0, 0.02) weights as transformers initializes Qwen2, norms 1, biases 0.
static void model_init_random(Model *m, const ModelConfig *cfg, uint64_t seed) {
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = *cfg;
    ck.num_params = count_params(cfg);
    ck.params = (float *)xmalloc(ck.num_params * sizeof(float));
    model_init_from_checkpoint(m, &ck);
    uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
    ParameterTensors *p = &m->params;
    for (size_t i = 0; i < m->num_parameters; i++) m->params_memory[i] = 0.02f * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[P_LN1W]; i++) p->ln1w[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[P_LN2W]; i++) p->ln2w[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[P_LNFW]; i++) p->lnfw[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[P_QKVB]; i++) p->qkvb[i] = 0.0f;
}

static int model_save(const Model *m, const char *path, int dtype, char *err, size_t errcap) {
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = m->config; ck.dtype = dtype;
    ck.params = m->params_memory; ck.num_params = m->num_parameters;
    ck.tok = m->tok; ck.tok_bytes = m->tok_bytes;
    ck.n_eos = m->n_eos; memcpy(ck.eos, m->eos, sizeof ck.eos);
    return ckpt_save(path, &ck, err, errcap);
}

static void model_free(Model *m) {
    free(m->params_memory); free(m->grads_memory); free(m->m_memory); free(m->v_memory);
    free(m->acts_memory); free(m->scratch_memory);
    free(m->inputs); free(m->targets); free(m->pos); free(m->dlogp);
    free(m->rope_cos); free(m->rope_sin); free(m->tok);
    memset(m, 0, sizeof *m);
}

// (Re)allocates activations and backward scratch for a B x T batch.
static void model_resize(Model *m, int B, int T) {
    if (m->B == B && m->T == T && m->acts_memory) return;
    const ModelConfig *c = &m->config;
    free(m->acts_memory); free(m->scratch_memory); free(m->inputs); free(m->targets); free(m->pos); free(m->dlogp);
    size_t s[NUM_ACTIVATION_TENSORS], total = 0;
    activation_sizes(s, c, B, T);
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) total += s[i];
    m->acts_memory = (float *)xmalloc(total * sizeof(float));
    float **a[NUM_ACTIVATION_TENSORS] = {&m->acts.encoded, &m->acts.ln1, &m->acts.ln1_rstd, &m->acts.qkv, &m->acts.att,
        &m->acts.atty, &m->acts.resid2, &m->acts.ln2, &m->acts.ln2_rstd, &m->acts.fch, &m->acts.fch_swiglu,
        &m->acts.resid3, &m->acts.lnf, &m->acts.lnf_rstd, &m->acts.logits, &m->acts.lse, &m->acts.logp};
    float *p = m->acts_memory;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) { *a[i] = p; p += s[i]; }
    size_t BT = (size_t)B * T;
    size_t g[NUM_GRAD_SCRATCH] = {BT * c->C, BT * c->C, BT * cfg_qkv_dim(c), BT * c->NH * c->HD, BT * 2 * c->I, BT * c->I};
    total = 0;
    for (int i = 0; i < NUM_GRAD_SCRATCH; i++) total += g[i];
    m->scratch_memory = (float *)xmalloc(total * sizeof(float));
    float **d[NUM_GRAD_SCRATCH] = {&m->scratch.dresidual, &m->scratch.dln, &m->scratch.dqkv, &m->scratch.datty,
                                   &m->scratch.dfch, &m->scratch.dswiglu};
    p = m->scratch_memory;
    for (int i = 0; i < NUM_GRAD_SCRATCH; i++) { *d[i] = p; p += g[i]; }
    m->inputs = (int *)xmalloc(BT * sizeof(int));
    m->targets = (int *)xmalloc(BT * sizeof(int));
    m->pos = (int *)xmalloc(BT * sizeof(int));
    m->dlogp = (float *)xmalloc(BT * sizeof(float));
    m->B = B; m->T = T;
}

// ----------------------------------------------------------------------------
// 4. forward, loss, backward, update

// inputs, targets (B, T) token ids; targets may be NULL (then only logits), and a target of -1
// means "no target here". mask (B, T) weights each position's loss (NULL = all 1). The loss is the
// masked mean of -log p(target): sum(mask * -logp) / sum(mask). It also leaves m->dlogp set for
// model_backward; callers with another objective (EMPO) overwrite m->dlogp before the backward.
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T) {
    const ModelConfig *c = &m->config;
    if (T > c->maxT) FATAL("sequence length %d exceeds the model's max_seq_len %d", T, c->maxT);
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= c->V) FATAL("input token %d at position %d is outside the vocab (%d)", inputs[i], i, c->V);
    model_resize(m, B, T);
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, V = c->V, QKV = cfg_qkv_dim(c);
    int N = B * T;
    memcpy(m->inputs, inputs, (size_t)N * sizeof(int));
    for (int b = 0; b < B; b++) for (int t = 0; t < T; t++) m->pos[b * T + t] = t;
    ParameterTensors *p = &m->params;
    ActivationTensors *a = &m->acts;
    embedding_forward(a->encoded, inputs, p->wte, N, C);
    for (int l = 0; l < L; l++) {
        float *resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C;   // (N, C)
        float *ln1 = a->ln1 + (size_t)l * N * C, *ln1_rstd = a->ln1_rstd + (size_t)l * N;
        float *qkv = a->qkv + (size_t)l * N * QKV, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + (size_t)l * N * NH * HD, *resid2 = a->resid2 + (size_t)l * N * C;
        float *ln2 = a->ln2 + (size_t)l * N * C, *ln2_rstd = a->ln2_rstd + (size_t)l * N;
        float *fch = a->fch + (size_t)l * N * 2 * I, *fch_swiglu = a->fch_swiglu + (size_t)l * N * I;
        float *resid3 = a->resid3 + (size_t)l * N * C;
        float *tmp = m->scratch.dln;   // (N, C) projection outputs, before the residual add
        rmsnorm_forward(ln1, ln1_rstd, resid, p->ln1w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(qkv, ln1, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N, C, QKV);
        rope_apply(qkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, +1);
        attention_forward(atty, att, qkv, B, T, NH, NKV, HD);
        matmul_forward(tmp, atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
        residual_forward(resid2, resid, tmp, (size_t)N * C);
        rmsnorm_forward(ln2, ln2_rstd, resid2, p->ln2w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(fch, ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
        swiglu_forward(fch_swiglu, fch, N, I);
        matmul_forward(tmp, fch_swiglu, p->fcprojw + (size_t)l * C * I, NULL, N, I, C);
        residual_forward(resid3, resid2, tmp, (size_t)N * C);
    }
    rmsnorm_forward(a->lnf, a->lnf_rstd, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, N, C, c->rms_eps);
    matmul_forward(a->logits, a->lnf, p->lmw, NULL, N, C, V);
    m->mean_loss = -1.0f;
    if (!targets) return;
    for (int i = 0; i < N; i++)
        if (targets[i] < -1 || targets[i] >= V) FATAL("target %d at position %d is outside the vocab (%d)", targets[i], i, V);
    memcpy(m->targets, targets, (size_t)N * sizeof(int));
    logprob_forward(a->logp, a->lse, a->logits, targets, N, V);
    double wsum = 0.0, lsum = 0.0;
    for (int i = 0; i < N; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        wsum += w; lsum += w * -a->logp[i];
    }
    m->mean_loss = wsum > 0 ? (float)(lsum / wsum) : 0.0f;
    for (int i = 0; i < N; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        m->dlogp[i] = wsum > 0 ? (float)(-w / wsum) : 0.0f;
    }
}

static void model_zero_grad(Model *m) {
    if (m->grads_memory) memset(m->grads_memory, 0, m->num_parameters * sizeof(float));
}

// Accumulates into the parameter gradients the gradient of sum_{b,t} dlogp[b,t] * logp[b,t]
// (dlogp as left by the forward's loss, or set by the caller). Needs the forward just before.
static void model_backward(Model *m) {
    if (m->mean_loss < 0 && !m->targets) FATAL("model_backward needs a forward with targets first");
    const ModelConfig *c = &m->config;
    if (!m->grads_memory) {
        m->grads_memory = (float *)xcalloc(m->num_parameters, sizeof(float));
        point_parameters(&m->grads, m->param_sizes, m->grads_memory, c->tied);
    }
    int B = m->B, T = m->T, N = B * T;
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, V = c->V, QKV = cfg_qkv_dim(c);
    ParameterTensors *p = &m->params, *g = &m->grads;
    ActivationTensors *a = &m->acts;
    GradScratch *s = &m->scratch;
    // logits -> dlogits (in place), then the LM head and the final norm
    logprob_backward(a->logits, a->lse, m->dlogp, m->targets, N, V);
    memset(s->dln, 0, (size_t)N * C * sizeof(float));
    matmul_backward(s->dln, g->lmw, NULL, a->logits, a->lnf, p->lmw, N, C, V);
    memset(s->dresidual, 0, (size_t)N * C * sizeof(float));
    rmsnorm_backward(s->dresidual, g->lnfw, s->dln, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, a->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        float *resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C;
        float *ln1 = a->ln1 + (size_t)l * N * C, *ln1_rstd = a->ln1_rstd + (size_t)l * N;
        float *qkv = a->qkv + (size_t)l * N * QKV, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + (size_t)l * N * NH * HD, *resid2 = a->resid2 + (size_t)l * N * C;
        float *ln2 = a->ln2 + (size_t)l * N * C, *ln2_rstd = a->ln2_rstd + (size_t)l * N;
        float *fch = a->fch + (size_t)l * N * 2 * I, *fch_swiglu = a->fch_swiglu + (size_t)l * N * I;
        // dresidual holds dLoss/d(resid3); the residual adds pass it through unchanged
        memset(s->dswiglu, 0, (size_t)N * I * sizeof(float));
        matmul_backward(s->dswiglu, g->fcprojw + (size_t)l * C * I, NULL, s->dresidual, fch_swiglu, p->fcprojw + (size_t)l * C * I, N, I, C);
        swiglu_backward(s->dfch, s->dswiglu, fch, N, I);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->fcw + (size_t)l * 2 * I * C, NULL, s->dfch, ln2, p->fcw + (size_t)l * 2 * I * C, N, C, 2 * I);
        rmsnorm_backward(s->dresidual, g->ln2w + (size_t)l * C, s->dln, resid2, p->ln2w + (size_t)l * C, ln2_rstd, N, C);
        // now dresidual = dLoss/d(resid2)
        memset(s->datty, 0, (size_t)N * NH * HD * sizeof(float));
        matmul_backward(s->datty, g->attprojw + (size_t)l * C * NH * HD, NULL, s->dresidual, atty, p->attprojw + (size_t)l * C * NH * HD, N, NH * HD, C);
        memset(s->dqkv, 0, (size_t)N * QKV * sizeof(float));
        attention_backward(s->dqkv, s->datty, qkv, att, B, T, NH, NKV, HD);
        rope_apply(s->dqkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, -1);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->qkvw + (size_t)l * QKV * C, c->qkv_bias ? g->qkvb + (size_t)l * QKV : NULL, s->dqkv, ln1,
                        p->qkvw + (size_t)l * QKV * C, N, C, QKV);
        rmsnorm_backward(s->dresidual, g->ln1w + (size_t)l * C, s->dln, resid, p->ln1w + (size_t)l * C, ln1_rstd, N, C);
        // now dresidual = dLoss/d(layer input)
    }
    embedding_backward(g->wte, s->dresidual, m->inputs, N, C);
}

// Global L2 norm of all gradients.
static float model_grad_norm(const Model *m) {
    double ss = 0.0;
    #pragma omp parallel for reduction(+:ss)
    for (size_t i = 0; i < m->num_parameters; i++) ss += (double)m->grads_memory[i] * m->grads_memory[i];
    return (float)sqrt(ss);
}

// Clips the global gradient norm to grad_clip (<= 0: no clipping), then one AdamW step as
// torch.optim.AdamW computes it (decoupled weight decay on every parameter, bias-corrected
// moments). Returns the gradient norm before clipping.
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_clip) {
    if (!m->grads_memory) FATAL("model_update before any backward");
    if (!m->m_memory) {
        m->m_memory = (float *)xcalloc(m->num_parameters, sizeof(float));
        m->v_memory = (float *)xcalloc(m->num_parameters, sizeof(float));
    }
    float norm = model_grad_norm(m);
    float scale = 1.0f;
    if (grad_clip > 0.0f) { float coef = grad_clip / (norm + 1e-6f); if (coef < 1.0f) scale = coef; }
    m->adam_step++;
    double bc1 = 1.0 - pow(beta1, m->adam_step), bc2 = 1.0 - pow(beta2, m->adam_step);   // in double, as torch does
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    #pragma omp parallel for
    for (size_t i = 0; i < m->num_parameters; i++) {
        float grad = m->grads_memory[i] * scale;
        float mm = beta1 * m->m_memory[i] + (1.0f - beta1) * grad;
        float vv = beta2 * m->v_memory[i] + (1.0f - beta2) * grad * grad;
        m->m_memory[i] = mm; m->v_memory[i] = vv;
        float w = m->params_memory[i] * (1.0f - lr * weight_decay);
        m->params_memory[i] = w - step_size * mm / (sqrtf(vv) / bc2_sqrt + eps);
    }
    return norm;
}

// ----------------------------------------------------------------------------
// 5. generation: a KV cache, batched decoding, and sampling

// The KV cache holds, for every sequence, the keys and values of every layer at every position
// it has seen. Each sequence gets exactly the room it can use (prompt + max new tokens), not the
// model's max context. Sequence s's block: [L][K or V][cap[s]][NKV*HD].
typedef struct {
    int n_seq;
    int *cap;          // (n_seq) positions of room
    size_t *off;       // (n_seq) offset of each block in data
    float *data;
    // scratch for up to max_tokens tokens per model_step call
    int max_tokens;
    float *x, *ln, *qkv, *atty, *tmp, *fch, *sw;
} KVCache;

static void kv_init(KVCache *kv, const ModelConfig *c, const int *cap, int n_seq, int max_tokens) {
    memset(kv, 0, sizeof *kv);
    kv->n_seq = n_seq;
    kv->cap = (int *)xmalloc((size_t)n_seq * sizeof(int));
    kv->off = (size_t *)xmalloc((size_t)n_seq * sizeof(size_t));
    size_t kvd = (size_t)c->NKV * c->HD, total = 0;
    for (int s = 0; s < n_seq; s++) {
        kv->cap[s] = cap[s];
        kv->off[s] = total;
        total += (size_t)c->L * 2 * cap[s] * kvd;
    }
    kv->data = (float *)xmalloc(total * sizeof(float));
    size_t N = (size_t)max_tokens;
    kv->max_tokens = max_tokens;
    kv->x = (float *)xmalloc(N * c->C * sizeof(float));
    kv->ln = (float *)xmalloc(N * c->C * sizeof(float));
    kv->qkv = (float *)xmalloc(N * cfg_qkv_dim(c) * sizeof(float));
    kv->atty = (float *)xmalloc(N * c->NH * c->HD * sizeof(float));
    kv->tmp = (float *)xmalloc(N * c->C * sizeof(float));
    kv->fch = (float *)xmalloc(N * 2 * c->I * sizeof(float));
    kv->sw = (float *)xmalloc(N * c->I * sizeof(float));
}
static void kv_free(KVCache *kv) {
    free(kv->cap); free(kv->off); free(kv->data);
    free(kv->x); free(kv->ln); free(kv->qkv); free(kv->atty); free(kv->tmp); free(kv->fch); free(kv->sw);
    memset(kv, 0, sizeof *kv);
}
static inline float *kv_at(const KVCache *kv, const ModelConfig *c, int s, int l, int which, int pos) {
    size_t kvd = (size_t)c->NKV * c->HD;
    return kv->data + kv->off[s] + ((size_t)(2 * l + which) * kv->cap[s] + pos) * kvd;
}

// Attention of N new tokens over their sequences' caches. qkv (N, QKV) with rope applied; token i
// belongs to sequence seq[i] at position pos[i], and sees positions 0..pos[i]. The new keys and
// values are written into the cache first, so a prompt can go through in one call. out (N, NH*HD).
static void attention_cached_forward(float *out, const float *qkv, KVCache *kv, const ModelConfig *c, int l,
                                     const int *seq, const int *pos, int N) {
    int NH = c->NH, NKV = c->NKV, HD = c->HD, QKV = cfg_qkv_dim(c), rep = NH / NKV;
    size_t kvd = (size_t)NKV * HD;
    for (int i = 0; i < N; i++) {
        memcpy(kv_at(kv, c, seq[i], l, 0, pos[i]), qkv + (size_t)i * QKV + (size_t)NH * HD, kvd * sizeof(float));
        memcpy(kv_at(kv, c, seq[i], l, 1, pos[i]), qkv + (size_t)i * QKV + (size_t)(NH + NKV) * HD, kvd * sizeof(float));
    }
    float scale = 1.0f / sqrtf((float)HD);
    int maxpos = 0;
    for (int i = 0; i < N; i++) if (pos[i] > maxpos) maxpos = pos[i];
    #pragma omp parallel
    {
        float *sc = (float *)xmalloc((size_t)(maxpos + 1) * sizeof(float));
        #pragma omp for collapse(2) schedule(dynamic, 4)
        for (int i = 0; i < N; i++)
            for (int hq = 0; hq < NH; hq++) {
                int hk = hq / rep, P = pos[i] + 1;
                const float *q = qkv + (size_t)i * QKV + (size_t)hq * HD;
                const float *K = kv_at(kv, c, seq[i], l, 0, 0) + (size_t)hk * HD;
                const float *Vv = kv_at(kv, c, seq[i], l, 1, 0) + (size_t)hk * HD;
                float maxv = -FLT_MAX;
                for (int p = 0; p < P; p++) {
                    const float *k = K + (size_t)p * kvd;
                    float s = 0.0f;
                    for (int d = 0; d < HD; d++) s += q[d] * k[d];
                    s *= scale;
                    sc[p] = s;
                    if (s > maxv) maxv = s;
                }
                float sum = 0.0f;
                for (int p = 0; p < P; p++) { sc[p] = expf(sc[p] - maxv); sum += sc[p]; }
                float inv = 1.0f / sum;
                float *o = out + (size_t)i * NH * HD + (size_t)hq * HD;
                for (int d = 0; d < HD; d++) o[d] = 0.0f;
                for (int p = 0; p < P; p++) {
                    const float *v = Vv + (size_t)p * kvd;
                    float w = sc[p] * inv;
                    for (int d = 0; d < HD; d++) o[d] += w * v[d];
                }
            }
        free(sc);
    }
}

// Runs N new tokens through the model, reading and extending the KV cache: token i is tokens[i],
// of sequence seq[i], at position pos[i]. Writes logits (n_out, V) for the tokens out_rows[0..n_out)
// (only those rows pay for the LM head). The same layer functions as training, so the two agree.
static void model_step(Model *m, KVCache *kv, const int *tokens, const int *seq, const int *pos, int N,
                       const int *out_rows, int n_out, float *logits) {
    const ModelConfig *c = &m->config;
    if (N > kv->max_tokens) FATAL("model_step: %d tokens but scratch for %d", N, kv->max_tokens);
    int C = c->C, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, QKV = cfg_qkv_dim(c);
    ParameterTensors *p = &m->params;
    for (int i = 0; i < N; i++) {
        if (pos[i] >= kv->cap[seq[i]]) FATAL("model_step: position %d beyond the cache of sequence %d", pos[i], seq[i]);
        if (tokens[i] < 0 || tokens[i] >= c->V) FATAL("model_step: token %d outside the vocab", tokens[i]);
    }
    embedding_forward(kv->x, tokens, p->wte, N, C);
    for (int l = 0; l < c->L; l++) {
        rmsnorm_forward(kv->ln, kv->tmp /* rstd, unused */, kv->x, p->ln1w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(kv->qkv, kv->ln, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N, C, QKV);
        rope_apply(kv->qkv, pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, +1);
        attention_cached_forward(kv->atty, kv->qkv, kv, c, l, seq, pos, N);
        matmul_forward(kv->tmp, kv->atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
        residual_forward(kv->x, kv->x, kv->tmp, (size_t)N * C);
        rmsnorm_forward(kv->ln, kv->tmp, kv->x, p->ln2w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(kv->fch, kv->ln, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
        swiglu_forward(kv->sw, kv->fch, N, I);
        matmul_forward(kv->tmp, kv->sw, p->fcprojw + (size_t)l * C * I, NULL, N, I, C);
        residual_forward(kv->x, kv->x, kv->tmp, (size_t)N * C);
    }
    for (int j = 0; j < n_out; j++) memcpy(kv->tmp + (size_t)j * C, kv->x + (size_t)out_rows[j] * C, (size_t)C * sizeof(float));
    rmsnorm_forward(kv->ln, kv->fch /* rstd, unused */, kv->tmp, p->lnfw, n_out, C, c->rms_eps);
    matmul_forward(logits, kv->ln, p->lmw, NULL, n_out, C, c->V);
}

typedef struct {
    float temperature;  // 0 = greedy
    float top_p;        // 1 = off
    int top_k;          // 0 = off
    int max_new;        // max new tokens per response
    int min_new;        // EOS is ignored before this many tokens (benchmarks use it to force length)
    uint64_t seed;
} SamplerConfig;

// log softmax(logits)[tok] of one row: the model's own log-probability, untouched by temperature or
// truncation, which is what the policy-gradient objective differentiates.
static float row_logprob(const float *logits, int V, int tok) {
    float maxv = -FLT_MAX;
    for (int v = 0; v < V; v++) if (logits[v] > maxv) maxv = logits[v];
    float s = 0.0f;
    for (int v = 0; v < V; v++) s += expf(logits[v] - maxv);
    return logits[tok] - maxv - logf(s);
}

typedef struct { float p; int id; } ProbId;
static int probid_desc(const void *a, const void *b) {   // by probability, ties by lower id first
    const ProbId *x = (const ProbId *)a, *y = (const ProbId *)b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

// Draws one token from softmax(logits / T), restricted to the top_k most likely tokens and then to
// the smallest set whose probability reaches top_p (the token that crosses top_p is kept), as HF
// does. Greedy (T = 0 or top_k = 1) is the argmax, lowest id on ties. scratch holds V ProbIds.
static int sample_token(const float *logits, int V, const SamplerConfig *sc, uint64_t *rng, ProbId *scratch) {
    int greedy = sc->temperature <= 0.0f || sc->top_k == 1;
    int best = 0;
    for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    if (greedy) return best;
    float inv_t = 1.0f / sc->temperature, sum = 0.0f;
    float u = random_f32(rng);
    int trunc = (sc->top_k > 0 && sc->top_k < V) || sc->top_p < 1.0f;
    if (!trunc) {   // plain sampling: one pass, no sort
        for (int v = 0; v < V; v++) sum += expf((logits[v] - logits[best]) * inv_t);
        float r = u * sum, acc = 0.0f;
        for (int v = 0; v < V; v++) { acc += expf((logits[v] - logits[best]) * inv_t); if (acc > r) return v; }
        return best;   // rounding at the very end of the sum
    }
    for (int v = 0; v < V; v++) { scratch[v].p = expf((logits[v] - logits[best]) * inv_t); scratch[v].id = v; sum += scratch[v].p; }
    qsort(scratch, (size_t)V, sizeof(ProbId), probid_desc);
    int n = V;
    if (sc->top_k > 0 && sc->top_k < n) n = sc->top_k;
    float kept = 0.0f;
    for (int i = 0; i < n; i++) kept += scratch[i].p;
    if (sc->top_p < 1.0f) {
        float acc = 0.0f;
        for (int i = 0; i < n; i++) {
            acc += scratch[i].p;
            if (acc >= sc->top_p * kept) { n = i + 1; break; }
        }
        kept = 0.0f;
        for (int i = 0; i < n; i++) kept += scratch[i].p;
    }
    float r = u * kept, acc = 0.0f;
    for (int i = 0; i < n; i++) { acc += scratch[i].p; if (acc > r) return scratch[i].id; }
    return scratch[n - 1].id;
}

// G responses for each of n_prompts prompts. Response j = p*G + g. Tokens include the EOS that
// ended a response, if any; logprobs[j][t] is the model's log-probability of tokens[j][t].
typedef struct {
    int n;            // n_prompts * G
    int *len;         // (n) generated tokens
    int *eos;         // (n) 1 if the response ended with an EOS token
    int **tokens;     // (n) -> (len)
    float **logprobs; // (n) -> (len)
} Generation;

static void generation_free(Generation *g) {
    for (int j = 0; j < g->n; j++) { free(g->tokens[j]); free(g->logprobs[j]); }
    free(g->len); free(g->eos); free(g->tokens); free(g->logprobs);
    memset(g, 0, sizeof *g);
}
static int is_eos(const Model *m, int tok) {
    for (int i = 0; i < m->n_eos; i++) if (m->eos[i] == tok) return 1;
    return 0;
}

// Prefill each prompt once, copy its cache into its G sequences, then decode all unfinished
// sequences together, one token per step. Every response draws from its own RNG stream
// (seed, response index), so the result does not depend on the thread count or the batch.
static void generate(Model *m, const int *const *prompts, const int *prompt_lens, int n_prompts, int G,
                     const SamplerConfig *sc, Generation *out, int verbose) {
    const ModelConfig *c = &m->config;
    int n = n_prompts * G, V = c->V, maxlen = 0;
    int *cap = (int *)xmalloc((size_t)n * sizeof(int));
    for (int p = 0; p < n_prompts; p++) {
        if (prompt_lens[p] < 1) FATAL("generate: prompt %d is empty", p);
        if (prompt_lens[p] >= c->maxT) FATAL("generate: prompt %d has %d tokens, at or beyond the context (%d)", p, prompt_lens[p], c->maxT);
        int room = prompt_lens[p] + sc->max_new;
        if (room > c->maxT) room = c->maxT;
        for (int g = 0; g < G; g++) cap[p * G + g] = room;
        if (prompt_lens[p] > maxlen) maxlen = prompt_lens[p];
    }
    KVCache kv;
    kv_init(&kv, c, cap, n, maxlen > n ? maxlen : n);
    out->n = n;
    out->len = (int *)xcalloc((size_t)n, sizeof(int));
    out->eos = (int *)xcalloc((size_t)n, sizeof(int));
    out->tokens = (int **)xmalloc((size_t)n * sizeof(int *));
    out->logprobs = (float **)xmalloc((size_t)n * sizeof(float *));
    for (int j = 0; j < n; j++) {
        int room = cap[j] - prompt_lens[j / G];
        out->tokens[j] = (int *)xmalloc((size_t)(room > 0 ? room : 1) * sizeof(int));
        out->logprobs[j] = (float *)xmalloc((size_t)(room > 0 ? room : 1) * sizeof(float));
    }
    uint64_t *rng = (uint64_t *)xmalloc((size_t)n * sizeof(uint64_t));
    for (int j = 0; j < n; j++) rng[j] = (sc->seed + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull);
    float *logits = (float *)xmalloc((size_t)n * V * sizeof(float));
    int *tok = (int *)xmalloc((size_t)(maxlen > n ? maxlen : n) * sizeof(int));
    int *seq = (int *)xmalloc((size_t)(maxlen > n ? maxlen : n) * sizeof(int));
    int *pos = (int *)xmalloc((size_t)(maxlen > n ? maxlen : n) * sizeof(int));
    int *active = (int *)xmalloc((size_t)n * sizeof(int));
    int *rows = (int *)xmalloc((size_t)n * sizeof(int));
    for (int j = 0; j < n; j++) rows[j] = j;
    ProbId *scratch = NULL;
    int n_threads = 1;
#ifdef _OPENMP
    n_threads = omp_get_max_threads();
#endif
    scratch = (ProbId *)xmalloc((size_t)n_threads * V * sizeof(ProbId));
    size_t kvd = (size_t)c->NKV * c->HD;
    int n_active = 0;
    for (int p = 0; p < n_prompts; p++) {
        int P = prompt_lens[p], s0 = p * G, last = P - 1;
        for (int t = 0; t < P; t++) { tok[t] = prompts[p][t]; seq[t] = s0; pos[t] = t; }
        model_step(m, &kv, tok, seq, pos, P, &last, 1, logits);
        for (int g = 1; g < G; g++)   // the G responses share the prompt's keys and values
            for (int l = 0; l < c->L; l++)
                for (int w = 0; w < 2; w++)
                    memcpy(kv_at(&kv, c, s0 + g, l, w, 0), kv_at(&kv, c, s0, l, w, 0), (size_t)P * kvd * sizeof(float));
        for (int g = 0; g < G; g++) {
            int j = s0 + g;
            if (cap[j] <= P) continue;   // no room for even one token
            active[n_active++] = j;
        }
        // sample the first token of each of the G responses from the shared logits
        for (int a = n_active - 1; a >= 0 && active[a] >= s0; a--) {
            int j = active[a];
            int t0 = sample_token(logits, V, sc, &rng[j], scratch);
            out->tokens[j][0] = t0;
            out->logprobs[j][0] = row_logprob(logits, V, t0);
            out->len[j] = 1;
        }
    }
    // drop the responses that are already finished after one token
    int w = 0;
    for (int a = 0; a < n_active; a++) {
        int j = active[a], P = prompt_lens[j / G];
        int t0 = out->tokens[j][0];
        if (is_eos(m, t0) && out->len[j] >= sc->min_new) { out->eos[j] = 1; continue; }
        if (out->len[j] >= sc->max_new || P + out->len[j] >= cap[j]) continue;
        active[w++] = j;
    }
    n_active = w;
    int step = 0;
    double t_start = now_seconds();
    while (n_active > 0) {
        for (int a = 0; a < n_active; a++) {
            int j = active[a];
            tok[a] = out->tokens[j][out->len[j] - 1];
            seq[a] = j;
            pos[a] = prompt_lens[j / G] + out->len[j] - 1;
        }
        model_step(m, &kv, tok, seq, pos, n_active, rows, n_active, logits);
        #pragma omp parallel for schedule(dynamic, 1)
        for (int a = 0; a < n_active; a++) {
            int j = active[a], th = 0;
#ifdef _OPENMP
            th = omp_get_thread_num();
#endif
            const float *row = logits + (size_t)a * V;
            int t = sample_token(row, V, sc, &rng[j], scratch + (size_t)th * V);
            out->tokens[j][out->len[j]] = t;
            out->logprobs[j][out->len[j]] = row_logprob(row, V, t);
            out->len[j]++;
        }
        w = 0;
        for (int a = 0; a < n_active; a++) {
            int j = active[a], P = prompt_lens[j / G];
            int t = out->tokens[j][out->len[j] - 1];
            if (is_eos(m, t) && out->len[j] >= sc->min_new) { out->eos[j] = 1; continue; }
            if (out->len[j] >= sc->max_new || P + out->len[j] >= kv.cap[j]) continue;
            active[w++] = j;
        }
        n_active = w;
        step++;
        if (verbose && (step % 64 == 0 || n_active == 0)) {
            fprintf(stderr, "\r  generating: step %d, %d/%d responses still running, %.1f s", step, n_active, n, now_seconds() - t_start);
            if (n_active == 0) fputc('\n', stderr);
        }
    }
    free(cap); free(rng); free(logits); free(tok); free(seq); free(pos); free(active); free(rows); free(scratch);
    kv_free(&kv);
}

// ----------------------------------------------------------------------------
// 6. main: a smoke run. Until the EMPO loop lands, ./train_empo loads a model (by default the
// small committed one), and trains it with AdamW on a fixed random batch so the loss must fall.
#ifndef TESTING

#define DEFAULT_MODEL "dev/fixtures/qwen2_tied.bin"

static void usage(void) {
    printf("usage: ./train_empo [options]\n"
           "Smoke run (until the EMPO loop lands): load a Qwen2 checkpoint, then forward + backward +\n"
           "AdamW steps on one fixed random batch, printing the loss; it must fall.\n"
           "  -m FILE   checkpoint (.bin, see doc/formats.md)     default " DEFAULT_MODEL "\n"
           "  -b INT    batch size                                 default 4\n"
           "  -t INT    sequence length (<= the model's max)       default 64\n"
           "  -n INT    AdamW steps                                default 20\n"
           "  -l FLOAT  learning rate                              default 1e-3\n"
           "  -s INT    seed for the random batch                  default 1337\n"
           "  -h        this help\n");
}

// Parses a whole-string integer/float flag value, or exits with a message naming the flag.
static int arg_int(const char *flag, const char *v, int lo, int hi) {
    char *end; long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x < lo || x > hi) FATAL("flag %s: '%s' is not an integer in [%d, %d]", flag, v, lo, hi);
    return (int)x;
}
static float arg_float(const char *flag, const char *v, float lo, float hi) {
    char *end; float x = strtof(v, &end);
    if (*v == 0 || *end != 0 || !(x >= lo && x <= hi)) FATAL("flag %s: '%s' is not a number in [%g, %g]", flag, v, lo, hi);
    return x;
}

int main(int argc, char **argv) {
    const char *model_path = DEFAULT_MODEL;
    int B = 4, T = 64, steps = 20, seed = 1337;
    float lr = 1e-3f;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(); return 0; }
        if (i + 1 >= argc) FATAL("flag %s needs a value (see -h)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "-m")) model_path = v;
        else if (!strcmp(f, "-b")) B = arg_int(f, v, 1, 1 << 16);
        else if (!strcmp(f, "-t")) T = arg_int(f, v, 2, 1 << 20);
        else if (!strcmp(f, "-n")) steps = arg_int(f, v, 0, 1 << 30);
        else if (!strcmp(f, "-l")) lr = arg_float(f, v, 0.0f, 10.0f);
        else if (!strcmp(f, "-s")) seed = arg_int(f, v, 0, 1 << 30);
        else FATAL("unknown flag %s (see -h)", f);
    }
    Model model;
    char err[512];
    if (model_load(&model, model_path, err, sizeof err) != 0) FATAL("%s", err);
    const ModelConfig *c = &model.config;
    if (T > c->maxT) T = c->maxT;
    printf("model %s: %zu parameters, V=%d C=%d L=%d heads=%d/%d I=%d %s\n", model_path, model.num_parameters,
           c->V, c->C, c->L, c->NH, c->NKV, c->I, c->tied ? "tied" : "untied");
#ifdef _OPENMP
    printf("threads: %d\n", omp_get_max_threads());
#endif
    int *tokens = (int *)xmalloc((size_t)B * (T + 1) * sizeof(int));
    uint64_t rng = (uint64_t)seed + 1;
    for (int i = 0; i < B * (T + 1); i++) tokens[i] = (int)(random_u32(&rng) % (uint32_t)c->V);
    int *inputs = (int *)xmalloc((size_t)B * T * sizeof(int)), *targets = (int *)xmalloc((size_t)B * T * sizeof(int));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) { inputs[b * T + t] = tokens[b * (T + 1) + t]; targets[b * T + t] = tokens[b * (T + 1) + t + 1]; }
    for (int step = 0; step < steps; step++) {
        double t0 = now_seconds();
        model_forward(&model, inputs, targets, NULL, B, T);
        model_zero_grad(&model);
        model_backward(&model);
        float norm = model_update(&model, lr, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f);
        double dt = now_seconds() - t0;
        printf("step %3d | loss %.6f | grad norm %.4f | %.1f ms | %.0f tok/s\n", step + 1, model.mean_loss, norm, dt * 1e3, B * T / dt);
    }
    free(tokens); free(inputs); free(targets);
    model_free(&model);
    return 0;
}
#endif // TESTING
