/*
train_empo.c: EMPO (Entropy Minimized Policy Optimization, arXiv 2504.05812) for Qwen2 models, in
one readable C file: the CPU reference (fp32, OpenMP, no BLAS) and the whole program around it.

EMPO in one paragraph: for each unlabeled question, sample G responses, extract their final answers,
cluster the answers by mathematical equivalence, and reward each response with the share of its
cluster. Training then lowers the semantic entropy of the model's answers. No label is used.

The file has two layers with a written contract between them (empoc/engine.h, doc/engine.md):

  THE CPU ENGINE: the model and what it computes
    1. the Qwen2 layers, each a forward/backward pair, with shapes in the comments
    2. the model: one allocation each for params, grads, optimizer state and activations
    3. forward, loss, backward, AdamW with global-norm clipping
    4. generation: a KV cache, batched decoding, sampling with log-probs
  THE EMPO HOST LAYER: the algorithm and the run, which train_empo.cu reuses unchanged
    5. questions, prompts and answers
    6. scorers: how an answer is extracted and a group clustered (math, or free-form with a judge)
    7. rollouts and rewards: the heart of EMPO           <- start here to read EMPO itself
    8. the policy-gradient step                          <- and here
    9. evaluation: greedy pass@1, maj@G, pass@G
   10. the run: data order, checkpoints that resume exactly, the log and its plot
   11. the modes: the training loop (EMPO, GRPO, TTRL, SFT), eval, one prompt, tokenize
   12. flags (one table for parsing and -h) and main

train_empo.cu defines the engine again for the GPU, then includes this file with EMPO_EXTERNAL_ENGINE
defined, which compiles sections 1-4 out. So sections 5-12 may use only what engine.h names.

Notation: B batch, T time, C hidden, NH query heads, NKV key/value heads, HD head dim,
QKV = (NH + 2*NKV)*HD, I MLP intermediate size, V vocab, L layers, G responses per prompt.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <float.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "empoc/utils.h"        // defines: FATAL, xmalloc, now_seconds, read_whole_file, write_file_atomic, make_dir
#include "empoc/json.h"         // defines: the JSON/JSONL reader, json_write_str
#include "empoc/checkpoint.h"   // defines: ModelConfig, the self-contained .bin checkpoint
#include "empoc/model.h"        // defines: random_u32/f32/normal, rope_tables, param_offsets, model_spec_parse
#include "empoc/engine.h"       // defines: the engine contract: Model, SamplerConfig, Generation, model_*, generate
#include "empoc/gemm.h"         // defines: sgemm, pack_panels, matmul_few_rows (the fast path of the matmuls)
#include "empoc/tokenizer.h"    // defines: Tokenizer, tokenizer_encode/decode, chat templates
#include "semantic_cluster.h"   // defines: SemanticGroup, semantic_cluster, group_advantages (includes math_verify.h)
#include "empoc/freeform.h"     // defines: free-form extraction, copy guards, judge prompts, judge clustering
#include "empoc/args.h"         // defines: Flag, the flag table parser and its -h printer

#ifndef EMPO_EXTERNAL_ENGINE
// ============================================================================
// THE CPU ENGINE
// ----------------------------------------------------------------------------
// 1. the Qwen2 layers

// Reductions (dot products, sums of squares) keep 8 partial sums, lane l taking the terms i = l mod 8,
// and add them up in a fixed order; each term is added with an explicit fused multiply-add. An
// omp-simd reduction would take its lane count from the widest vector of the build machine (8 with
// AVX2, 16 with AVX-512), and left to itself the compiler fuses a*b+c in some vectorized loops but
// not in others, depending on the vector width. Either would make the same run print different
// numbers on different machines; dev/compare_isa.sh checks that it does not.
#define LANES 8
static inline float lanes_sum(const float acc[LANES]) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}
// sum_i a[i] * b[i]
static inline float dot_f32(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    float s = lanes_sum(acc);
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}
// sum_i a[i] * b[i] * c[i]
static inline float dot3_f32(const float *a, const float *b, const float *c, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] = fmaf(a[i + l] * b[i + l], c[i + l], acc[l]);
    float s = lanes_sum(acc);
    for (; i < n; i++) s = fmaf(a[i] * b[i], c[i], s);
    return s;
}

// The matmuls. Their fast path, a cache-blocked GEMM with packed panels, is in empoc/gemm.h; what
// they compute is the one-line definition in each comment.
// out (M, OC) = inp (M, C) @ weight^T (OC, C) + bias (OC)
// packed: NULL, or the weight pre-packed by pack_panels (generation), used when M >= 8.
static void matmul_forward_packed(float *out, const float *inp, const float *weight, const float *packed,
                                  const float *bias, int M, int C, int OC) {
    if (M < 8) matmul_few_rows(out, inp, weight, M, C, OC);
    else sgemm(M, OC, C, inp, C, 1, weight, 1, C, out, OC, 0, packed);
    if (bias) {
        #pragma omp parallel for
        for (int m = 0; m < M; m++)
            for (int o = 0; o < OC; o++) out[(size_t)m * OC + o] += bias[o];
    }
}
static void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int M, int C, int OC) {
    matmul_forward_packed(out, inp, weight, NULL, bias, M, C, OC);
}
// dinp (M, C) += dout (M, OC) @ weight (OC, C);  dweight (OC, C) += dout^T @ inp;  dbias += sum_m dout
static void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, int M, int C, int OC) {
    if (dinp) sgemm(M, C, OC, dout, OC, 1, weight, C, 1, dinp, C, 1, NULL);
    if (dweight) sgemm(OC, C, M, dout, 1, OC, inp, C, 1, dweight, C, 1, NULL);
    if (dbias) {
        #pragma omp parallel for
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int m = 0; m < M; m++) s += dout[(size_t)m * OC + o];
            dbias[o] += s;
        }
    }
}

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
        float ss = dot_f32(xn, xn, C);
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
        float r = rstd[n], dot = dot3_f32(w, g, xn, C) * r / C;
        float *d = dx + (size_t)n * C;
        for (int c = 0; c < C; c++) d[c] += r * (w[c] * g[c] - xn[c] * r * dot);
    }
    // dw[c] += sum_n (dout[n][c] * x[n][c]) * rstd[n], each term rounded, then added in order of n.
    // A reduction over rows: gemm.h's colsum_prod3 splits it by columns (no two threads write one
    // element) and takes 64 of them per row, so that it reads rows, not columns N rows apart.
    colsum_prod3(dw, dout, x, rstd, N, C);
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

// Softmax of p (P) in place: p = exp(p - max) / sum, the sum in order of j.
static inline void softmax_inplace(float *p, int P) {
    float maxv = row_max(p, P);   // gemm.h: the max of `if (p[j] > maxv) maxv = p[j]` from -FLT_MAX
    for (int j = 0; j < P; j++) p[j] -= maxv;
    vexpf(p, p, P);
    float sum = 0.0f;
    for (int j = 0; j < P; j++) sum += p[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < P; j++) p[j] *= inv;
}

// Each of nq <= 4 queries q[r] (HD), the query heads that share a key/value head, against the same
// P keys and values (rows `stride` floats apart): p[r] (P) gets the softmax of the scaled scores,
// out[r] (HD) the probability-weighted sum of the values:
//     p[j] = dot_f32(q, k_j) * scale;  softmax_inplace(p);  out[d] = sum_j p[j] * v_j[d] (one fma per j, in order)
// Decoding calls it (keys from the KV cache). The two sums go through gemm.h's vector kernels, the
// same bits, each key and value row loaded once for all the queries: attn_scores_rows4 and
// attn_weighted4. Training's attention_forward computes the same with the keys transposed.
static inline void attend_group(float *const out[4], float *const p[4], const float *const q[4], int nq,
                                const float *k, const float *v, long stride, int P, int HD, float scale) {
    attn_scores_rows4(p, q, nq, k, stride, P, HD);
    int n[4] = {P, P, P, P};
    for (int r = 0; r < nq; r++) {
        for (int j = 0; j < P; j++) p[r][j] *= scale;
        softmax_inplace(p[r], P);
    }
    attn_weighted4(out, (const float *const *)p, n, nq, v, stride, HD, 0);
}

// Causal grouped-query attention. qkv (B, T, QKV) with rope applied; query head hq reads key/value
// head hq / (NH/NKV). att (B, NH, T, T) keeps the softmax probabilities; out (B, T, NH*HD).
// attend_group's computation for every (b, hq, t), with the fast path: the keys of a (b, kv head) are
// transposed once so that attn_scores4 takes 16 of them per vector step, for 4 query rows at a time.
static void attention_forward(float *out, float *att, const float *qkv, int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV, Tp = (T + 15) / 16 * 16;
    float scale = 1.0f / sqrtf((float)HD);
    #pragma omp parallel
    {
        float *kt = (float *)xcalloc((size_t)HD * Tp, sizeof(float));   // (HD, Tp) keys transposed, 0-padded
        int kt_of = -1;   // which (b, kv head) kt holds
        #pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < B; b++)
            for (int hq = 0; hq < NH; hq++) {
                int hk = hq / rep;
                const float *row0 = qkv + (size_t)b * T * QKV;   // this sequence's first row
                if (kt_of != b * NKV + hk) {
                    for (int t = 0; t < T; t++)
                        for (int d = 0; d < HD; d++)
                            kt[(size_t)d * Tp + t] = row0[(size_t)t * QKV + (size_t)(NH + hk) * HD + d];
                    kt_of = b * NKV + hk;
                }
                for (int t0 = 0; t0 < T; t0 += 4) {   // 4 query rows' scores at a time (attn_scores4)
                    int nb = T - t0 < 4 ? T - t0 : 4;
                    float *a4[4];
                    const float *q4[4];
                    for (int r = 0; r < nb; r++) {
                        a4[r] = att + (((size_t)b * NH + hq) * T + t0 + r) * T;
                        q4[r] = row0 + (size_t)(t0 + r) * QKV + (size_t)hq * HD;
                    }
                    attn_scores4(a4, q4, nb, kt, Tp, t0 + nb, HD);   // row t keeps its first t + 1
                    float *o4[4];
                    int n4[4];
                    for (int r = 0; r < nb; r++) {
                        int t = t0 + r;
                        for (int j = 0; j <= t; j++) a4[r][j] *= scale;
                        o4[r] = out + ((size_t)b * T + t) * NH * HD + (size_t)hq * HD;
                        n4[r] = t + 1;
                    }
                    for (int r = 0; r < nb; r++) softmax_inplace(a4[r], n4[r]);
                    attn_weighted4(o4, (const float *const *)a4, n4, nb, row0 + (size_t)(NH + NKV + hk) * HD, QKV,
                                   HD, 0);   // attn_weighted_sum of each row
                    for (int r = 0; r < nb; r++)
                        for (int t2 = t0 + r + 1; t2 < T; t2++) a4[r][t2] = 0.0f;
                }
            }
        free(kt);
    }
}
// dqkv (B, T, QKV) += gradient of the above. Parallel over (b, kv head): the query heads of a group all
// write into the same dk, dv. What it computes, per (b, hq, t) in order of hq then t:
//     datt[t2] = dot_f32(g, v[t2]);  dot = sum_{t2 <= t} datt[t2] * a[t2] (products rounded, then added in order)
//     for t2 <= t: dv[t2] += a[t2] * g;  ds = a[t2] * (datt[t2] - dot) * scale;  dq += ds * k[t2];  dk[t2] += ds * q
// (every += one fma). The fast path, to the bit: the values are transposed once per (b, kv head) so that
// gemm.h's attn_scores4 gives 4 rows of datt at once; dk, dv accumulate in contiguous per-thread copies, 4
// query rows at a time (attn_rank4_acc: each element still takes its terms in order of t); dq via attn_weighted4.
static void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att,
                               int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV, Tp = (T + 15) / 16 * 16;
    float scale = 1.0f / sqrtf((float)HD);
    #pragma omp parallel
    {
        float *vt = (float *)xcalloc((size_t)HD * Tp, sizeof(float));   // (HD, Tp) values transposed, 0-padded
        float *dkb = (float *)xmalloc((size_t)T * HD * sizeof(float));   // (T, HD) this group's dk; dvb its dv
        float *dvb = (float *)xmalloc((size_t)T * HD * sizeof(float));
        float *datt = (float *)xmalloc((size_t)4 * Tp * sizeof(float));   // the 4 query rows' d(att)
        float *ds = (float *)xmalloc((size_t)4 * T * sizeof(float));   // the 4 query rows' d(scores)
        #pragma omp for collapse(2)
        for (int b = 0; b < B; b++)
            for (int hk = 0; hk < NKV; hk++) {
                const float *row0 = qkv + (size_t)b * T * QKV;
                float *drow0 = dqkv + (size_t)b * T * QKV;
                size_t ko = (size_t)(NH + hk) * HD, vo = (size_t)(NH + NKV + hk) * HD;
                for (int t = 0; t < T; t++) {
                    for (int d = 0; d < HD; d++) vt[(size_t)d * Tp + t] = row0[(size_t)t * QKV + vo + d];
                    memcpy(dkb + (size_t)t * HD, drow0 + (size_t)t * QKV + ko, (size_t)HD * sizeof(float));
                    memcpy(dvb + (size_t)t * HD, drow0 + (size_t)t * QKV + vo, (size_t)HD * sizeof(float));
                }
                for (int hq = hk * rep; hq < (hk + 1) * rep; hq++)
                    for (int t0 = 0; t0 < T; t0 += 4) {
                        int nb = T - t0 < 4 ? T - t0 : 4;
                        const float *a[4], *g[4], *q[4], *dsr[4];
                        float *da[4], *dq[4];
                        int nq[4];
                        for (int j = 0; j < nb; j++) {
                            g[j] = dout + ((size_t)b * T + t0 + j) * NH * HD + (size_t)hq * HD;
                            da[j] = datt + (size_t)j * Tp;
                        }
                        attn_scores4(da, g, nb, vt, Tp, t0 + nb, HD);   // through out = att @ v
                        for (int j = 0; j < nb; j++) {
                            int t = t0 + j;
                            const float *dat = da[j];
                            a[j] = att + (((size_t)b * NH + hq) * T + t) * T;
                            q[j] = row0 + (size_t)t * QKV + (size_t)hq * HD;
                            float *dsj = ds + (size_t)j * T;
                            dsr[j] = dsj;
                            float dot = 0.0f;
                            // the products first, then their sum: two loops, so that no fma fuses them
                            for (int t2 = 0; t2 <= t; t2++) dsj[t2] = dat[t2] * a[j][t2];
                            for (int t2 = 0; t2 <= t; t2++) dot += dsj[t2];
                            // through the softmax, then the scaled q.k
                            for (int t2 = 0; t2 <= t; t2++) dsj[t2] = a[j][t2] * (dat[t2] - dot) * scale;
                            dq[j] = drow0 + (size_t)t * QKV + (size_t)hq * HD;
                            nq[j] = t + 1;
                        }
                        attn_weighted4(dq, dsr, nq, nb, row0 + ko, QKV, HD, 1);   // attn_weighted_acc of each row
                        if (nb == 4) {   // rows t2 <= t0 take all four query rows' terms; the next three fewer
                            attn_rank4_acc(dvb, a, g, t0 + 1, HD);
                            attn_rank4_acc(dkb, dsr, q, t0 + 1, HD);
                            for (int j = 1; j < 4; j++) {
                                attn_rank1_acc(dvb + (size_t)(t0 + 1) * HD, a[j] + t0 + 1, g[j], j, HD);
                                attn_rank1_acc(dkb + (size_t)(t0 + 1) * HD, dsr[j] + t0 + 1, q[j], j, HD);
                            }
                        } else {
                            for (int j = 0; j < nb; j++) {
                                attn_rank1_acc(dvb, a[j], g[j], t0 + j + 1, HD);
                                attn_rank1_acc(dkb, dsr[j], q[j], t0 + j + 1, HD);
                            }
                        }
                    }
                for (int t = 0; t < T; t++) {
                    memcpy(drow0 + (size_t)t * QKV + ko, dkb + (size_t)t * HD, (size_t)HD * sizeof(float));
                    memcpy(drow0 + (size_t)t * QKV + vo, dvb + (size_t)t * HD, (size_t)HD * sizeof(float));
                }
            }
        free(vt); free(dkb); free(dvb); free(datt); free(ds);
    }
}

// SwiGLU: out (N, I) = silu(gate) * up, where fch (N, 2I) holds gate in [0, I) and up in [I, 2I).
// (expf through gemm.h's vexpf, 8 at a time with expf's own bits, in chunks of EXP_CHUNK)
#define EXP_CHUNK 512
static void swiglu_forward(float *out, const float *fch, int N, int I) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = fch + (size_t)n * 2 * I, *u = g + I;
        float *o = out + (size_t)n * I, e[EXP_CHUNK];
        for (int i0 = 0; i0 < I; i0 += EXP_CHUNK) {
            int m = I - i0 < EXP_CHUNK ? I - i0 : EXP_CHUNK;
            for (int i = 0; i < m; i++) e[i] = -g[i0 + i];
            vexpf(e, e, m);   // e = expf(-g)
            for (int i = 0; i < m; i++) o[i0 + i] = g[i0 + i] / (1.0f + e[i]) * u[i0 + i];
        }
    }
}
static void swiglu_backward(float *dfch, const float *dout, const float *fch, int N, int I) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *g = fch + (size_t)n * 2 * I, *u = g + I, *d = dout + (size_t)n * I;
        float *dg = dfch + (size_t)n * 2 * I, *du = dg + I, e[EXP_CHUNK];
        for (int i0 = 0; i0 < I; i0 += EXP_CHUNK) {
            int m = I - i0 < EXP_CHUNK ? I - i0 : EXP_CHUNK;
            for (int i = 0; i < m; i++) e[i] = -g[i0 + i];
            vexpf(e, e, m);
            for (int c = 0; c < m; c++) {
                int i = i0 + c;
                float sig = 1.0f / (1.0f + e[c]), silu = g[i] * sig;
                dg[i] = d[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
                du[i] = d[i] * silu;
            }
        }
    }
}

static void residual_forward(float *out, const float *a, const float *b, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// Log-softmax at the targets. logits (N, V); targets (N), -1 = no target. Writes logp (N) and the
// log-sum-exp lse (N), which the backward uses to rebuild the softmax without storing it.
// rows: NULL, or the batch row that each logits row is (then logp and targets are indexed by it).
static void logprob_forward(float *logp, float *lse, const float *logits, const int *targets, const int *rows, int N,
                            int V) {
    // lse[n] = maxv + logf(sum_v expf(x[v] - maxv)), maxv the row's max and the sum in order of v
    // (gemm.h's rows_logsumexp: 8 rows side by side, so that their sums' adds overlap)
    rows_logsumexp(lse, logits, N, V);
    for (int n = 0; n < N; n++) {
        int r = rows ? rows[n] : n;
        logp[r] = targets[r] >= 0 ? logits[(size_t)n * V + targets[r]] - lse[n] : 0.0f;
    }
}
// Given dlogp = dLoss/dlogp at each target, overwrites logits (N, V) with dLoss/dlogits:
// d logp / d logits = onehot(target) - softmax. rows as for logprob_forward.
static void logprob_backward(float *logits, const float *lse, const float *dlogp, const int *targets, const int *rows,
                             int N, int V) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        int n = rows ? rows[i] : i;
        float *x = logits + (size_t)i * V;
        float g = targets[n] >= 0 ? dlogp[n] : 0.0f;
        if (g == 0.0f) { memset(x, 0, (size_t)V * sizeof(float)); continue; }
        for (int v = 0; v < V; v++) x[v] -= lse[i];
        vexpf(x, x, V);
        for (int v = 0; v < V; v++) x[v] *= -g;   // -g * expf(x - lse)
        x[targets[n]] += g;
    }
}

// ----------------------------------------------------------------------------
// 2. the model

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

// The layout (the order, and a tied LM head sharing wte) is model.h's param_offsets, which the GPU
// engine uses too.
static void point_parameters(ParameterTensors *p, const size_t sizes[NUM_PARAM_TENSORS], float *mem, int tied) {
    float **ptrs[NUM_PARAM_TENSORS] = {&p->wte, &p->ln1w, &p->qkvw, &p->qkvb, &p->attprojw,
                                       &p->ln2w, &p->fcw, &p->fcprojw, &p->lnfw, &p->lmw};
    size_t off[NUM_PARAM_TENSORS];
    param_offsets(off, sizes, tied);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) *ptrs[i] = mem + off[i];
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

struct Model {
    // the public fields, which the host layer reads (engine.h)
    ModelConfig config;
    size_t num_parameters;
    unsigned char *tok;           // the tokenizer blob the checkpoint carries, so a trained model saves whole
    size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];
    float mean_loss;              // of the last forward with targets; -1 if it had none
    float *logp;                  // (B, T) log p(target) of the last forward: points into acts
    float *dlogp;                 // (B, T) dLoss/dlogp at each target: set by forward's loss, or by the caller
    int adam_step;
    int target_rows_only;         // host hint (engine.h): the LM head may skip the rows without a target
    // the CPU engine's own
    ParameterTensors params;
    size_t param_sizes[NUM_PARAM_TENSORS];
    float *params_memory;
    ParameterTensors grads;
    float *grads_memory;
    float *m_memory, *v_memory;   // AdamW moments
    ActivationTensors acts;
    float *acts_memory;
    GradScratch scratch;
    float *scratch_memory;
    int B, T;                     // the shape the activations point at now
    size_t acts_cap, scratch_cap, bt_cap;   // floats (ints) allocated: a smaller batch reuses the memory
    int *inputs, *targets, *pos;  // (B, T) copies of the last forward's inputs
    // The LM head of the last forward took the n_sel rows sel[0..n_sel) (target_rows_only), or every row
    // if n_sel is -1. The logits of the rows it left out are unset; scratch.dresidual holds the kept rows
    // of lnf for the backward.
    int n_sel, *sel;
    float *rope_cos, *rope_sin;   // (maxT, HD/2)
};

// Takes ownership of ck's buffers.
static void model_init_from_checkpoint(Model *m, Checkpoint *ck) {
    memset(m, 0, sizeof *m);
    m->config = ck->cfg;
    fill_param_sizes(m->param_sizes, &m->config);
    m->num_parameters = ck->num_params;
    m->params_memory = ck->params;
    point_parameters(&m->params, m->param_sizes, m->params_memory, m->config.tied);
    m->tok = ck->tok;
    m->tok_bytes = ck->tok_bytes;
    m->n_eos = ck->n_eos;
    memcpy(m->eos, ck->eos, sizeof m->eos);
    ck->params = NULL;
    ck->tok = NULL;
    const ModelConfig *c = &m->config;
    m->rope_cos = (float *)xmalloc((size_t)c->maxT * (c->HD / 2) * sizeof(float));
    m->rope_sin = (float *)xmalloc((size_t)c->maxT * (c->HD / 2) * sizeof(float));
    rope_tables(m->rope_cos, m->rope_sin, c->maxT, c->HD, c->rope_theta);
    m->mean_loss = -1.0f;
}

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
    ck.cfg = m->config;
    ck.dtype = dtype;
    ck.params = m->params_memory;
    ck.num_params = m->num_parameters;
    ck.tok = m->tok;
    ck.tok_bytes = m->tok_bytes;
    ck.n_eos = m->n_eos;
    memcpy(ck.eos, m->eos, sizeof ck.eos);
    return ckpt_save(path, &ck, err, errcap);
}

// The optimizer block of a run checkpoint: adam_step, then both fp32 moments, or just a 0 flag
// when the model never stepped.
static int model_save_optimizer(const Model *m, FILE *f) {
    if (optimizer_header_write(f, m->adam_step, m->m_memory != NULL) != 0) return -1;
    size_t n = m->num_parameters;
    if (m->m_memory && (fwrite(m->m_memory, 4, n, f) != n || fwrite(m->v_memory, 4, n, f) != n)) return -1;
    return 0;
}
static int model_load_optimizer(Model *m, FILE *f, char *err, size_t errcap) {
    int has_moments;
    if (optimizer_header_read(f, &m->adam_step, &has_moments, err, errcap) != 0) return -1;
    if (!has_moments) return 0;
    size_t n = m->num_parameters;
    if (!m->m_memory) {
        m->m_memory = (float *)xcalloc(n, sizeof(float));
        m->v_memory = (float *)xcalloc(n, sizeof(float));
    }
    if (fread(m->m_memory, 4, n, f) != n || fread(m->v_memory, 4, n, f) != n) {
        snprintf(err, errcap, "optimizer state: truncated");
        return -1;
    }
    return 0;
}

static void model_free(Model *m) {
    free(m->params_memory);
    free(m->grads_memory);
    free(m->m_memory);
    free(m->v_memory);
    free(m->acts_memory);
    free(m->scratch_memory);
    free(m->inputs);
    free(m->targets);
    free(m->pos);
    free(m->dlogp);
    free(m->sel);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->tok);
    memset(m, 0, sizeof *m);
}

// Points the activations and backward scratch at a B x T batch, growing the memory only when the
// batch needs more than it already has (micro-batches of a step vary in T).
static void model_resize(Model *m, int B, int T) {
    if (m->B == B && m->T == T && m->acts_memory) return;
    const ModelConfig *c = &m->config;
    size_t s[NUM_ACTIVATION_TENSORS], total = 0, BT = (size_t)B * T;
    activation_sizes(s, c, B, T);
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) total += s[i];
    if (total > m->acts_cap) {
        free(m->acts_memory);
        m->acts_memory = (float *)xmalloc(total * sizeof(float));
        m->acts_cap = total;
    }
    float **a[NUM_ACTIVATION_TENSORS] = {&m->acts.encoded, &m->acts.ln1, &m->acts.ln1_rstd, &m->acts.qkv,
        &m->acts.att, &m->acts.atty, &m->acts.resid2, &m->acts.ln2, &m->acts.ln2_rstd, &m->acts.fch,
        &m->acts.fch_swiglu, &m->acts.resid3, &m->acts.lnf, &m->acts.lnf_rstd, &m->acts.logits, &m->acts.lse,
        &m->acts.logp};
    float *p = m->acts_memory;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) {
        *a[i] = p;
        p += s[i];
    }
    m->logp = m->acts.logp;
    size_t g[NUM_GRAD_SCRATCH] = {BT * c->C, BT * c->C, BT * cfg_qkv_dim(c), BT * c->NH * c->HD, BT * 2 * c->I,
                                  BT * c->I};
    total = 0;
    for (int i = 0; i < NUM_GRAD_SCRATCH; i++) total += g[i];
    if (total > m->scratch_cap) {
        free(m->scratch_memory);
        m->scratch_memory = (float *)xmalloc(total * sizeof(float));
        m->scratch_cap = total;
    }
    float **d[NUM_GRAD_SCRATCH] = {&m->scratch.dresidual, &m->scratch.dln, &m->scratch.dqkv, &m->scratch.datty,
                                   &m->scratch.dfch, &m->scratch.dswiglu};
    p = m->scratch_memory;
    for (int i = 0; i < NUM_GRAD_SCRATCH; i++) {
        *d[i] = p;
        p += g[i];
    }
    if (BT > m->bt_cap) {
        free(m->inputs);
        free(m->targets);
        free(m->pos);
        free(m->dlogp);
        free(m->sel);
        m->sel = (int *)xmalloc(BT * sizeof(int));
        m->inputs = (int *)xmalloc(BT * sizeof(int));
        m->targets = (int *)xmalloc(BT * sizeof(int));
        m->pos = (int *)xmalloc(BT * sizeof(int));
        m->dlogp = (float *)xmalloc(BT * sizeof(float));
        m->bt_cap = BT;
    }
    m->B = B;
    m->T = T;
}
// The CPU allocates for the largest batch it has seen, so reserving is one early resize.
static void model_reserve(Model *m, int B, int T) { model_resize(m, B, T); }

// ----------------------------------------------------------------------------
// 3. forward, loss, backward, update

// Layer l's saved activations for the current batch (N = B*T rows), read by its forward and its
// backward (and by dev/bench_cpu.c's op timers): slices of the one activation block.
typedef struct {
    float *resid;      // (N, C) the layer's input: the embedding, or the previous layer's resid3
    float *ln1, *ln1_rstd, *qkv, *att, *atty;   // (N, C), (N), (N, QKV), (B, NH, T, T), (N, NH*HD)
    float *resid2, *ln2, *ln2_rstd, *fch, *fch_swiglu, *resid3;   // (N, C), (N, C), (N), (N, 2I), (N, I), (N, C)
} LayerActs;
static LayerActs layer_acts(Model *m, int l) {
    const ModelConfig *c = &m->config;
    ActivationTensors *a = &m->acts;
    size_t B = m->B, T = m->T, N = B * T, C = c->C;
    LayerActs la = {
        .resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C,
        .ln1 = a->ln1 + l * N * C, .ln1_rstd = a->ln1_rstd + l * N,
        .qkv = a->qkv + l * N * cfg_qkv_dim(c), .att = a->att + l * B * c->NH * T * T,
        .atty = a->atty + l * N * c->NH * c->HD, .resid2 = a->resid2 + l * N * C,
        .ln2 = a->ln2 + l * N * C, .ln2_rstd = a->ln2_rstd + l * N,
        .fch = a->fch + l * N * 2 * c->I, .fch_swiglu = a->fch_swiglu + l * N * c->I,
        .resid3 = a->resid3 + l * N * C,
    };
    return la;
}

// inputs, targets (B, T) token ids; targets may be NULL (then only logits), and a target of -1
// means "no target here". mask (B, T) weights each position's loss (NULL = all 1). The loss is the
// masked mean of -log p(target): sum(mask * -logp) / sum(mask). It also leaves m->dlogp set for
// model_backward; callers with another objective (EMPO) overwrite m->dlogp before the backward.
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T) {
    const ModelConfig *c = &m->config;
    if (T > c->maxT) FATAL("sequence length %d exceeds the model's max_seq_len %d", T, c->maxT);
    for (int i = 0; i < B * T; i++)
        if (inputs[i] < 0 || inputs[i] >= c->V) FATAL("input token %d at position %d is outside the vocab (%d)",
                                                      inputs[i], i, c->V);
    model_resize(m, B, T);
    int C = c->C, L = c->L, NH = c->NH, NKV = c->NKV, HD = c->HD, I = c->I, V = c->V, QKV = cfg_qkv_dim(c);
    int N = B * T;
    memcpy(m->inputs, inputs, (size_t)N * sizeof(int));
    for (int b = 0; b < B; b++) for (int t = 0; t < T; t++) m->pos[b * T + t] = t;
    ParameterTensors *p = &m->params;
    ActivationTensors *a = &m->acts;
    embedding_forward(a->encoded, inputs, p->wte, N, C);
    for (int l = 0; l < L; l++) {
        LayerActs la = layer_acts(m, l);
        float *tmp = m->scratch.dln;   // (N, C) projection outputs, before the residual add
        rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(la.qkv, la.ln1, p->qkvw + (size_t)l * QKV * C,
                       c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N, C, QKV);
        rope_apply(la.qkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, +1);
        attention_forward(la.atty, la.att, la.qkv, B, T, NH, NKV, HD);
        matmul_forward(tmp, la.atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C);
        residual_forward(la.resid2, la.resid, tmp, (size_t)N * C);
        rmsnorm_forward(la.ln2, la.ln2_rstd, la.resid2, p->ln2w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(la.fch, la.ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I);
        swiglu_forward(la.fch_swiglu, la.fch, N, I);
        matmul_forward(tmp, la.fch_swiglu, p->fcprojw + (size_t)l * C * I, NULL, N, I, C);
        residual_forward(la.resid3, la.resid2, tmp, (size_t)N * C);
    }
    rmsnorm_forward(a->lnf, a->lnf_rstd, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, N, C, c->rms_eps);
    m->mean_loss = -1.0f;
    if (targets)
        for (int i = 0; i < N; i++)
            if (targets[i] < -1 || targets[i] >= V) FATAL("target %d at position %d is outside the vocab (%d)",
                                                          targets[i], i, V);
    m->n_sel = -1;   // the LM head on every row
    if (targets && m->target_rows_only) {
        // only the rows with a target, packed in order into the first n_sel rows of logits. Each row
        // gets the same bits, since a matmul's rows are independent (and matmul_forward chooses its
        // few-rows path by N, so this takes it exactly when the full matmul would).
        m->n_sel = 0;
        for (int i = 0; i < N; i++)
            if (targets[i] >= 0) m->sel[m->n_sel++] = i;
        float *lnf_sel = m->scratch.dresidual;   // (n_sel, C): the backward's scratch, which reads it first
        for (int j = 0; j < m->n_sel; j++)
            memcpy(lnf_sel + (size_t)j * C, a->lnf + (size_t)m->sel[j] * C, (size_t)C * sizeof(float));
        if (N < 8) matmul_few_rows(a->logits, lnf_sel, p->lmw, m->n_sel, C, V);
        else sgemm(m->n_sel, V, C, lnf_sel, C, 1, p->lmw, 1, C, a->logits, V, 0, NULL);
        memset(a->logp, 0, (size_t)N * sizeof(float));   // the rows without a target
    } else {
        matmul_forward(a->logits, a->lnf, p->lmw, NULL, N, C, V);
    }
    if (!targets) return;
    memcpy(m->targets, targets, (size_t)N * sizeof(int));
    if (m->n_sel < 0) logprob_forward(a->logp, a->lse, a->logits, targets, NULL, N, V);
    else logprob_forward(a->logp, a->lse, a->logits, targets, m->sel, m->n_sel, V);
    double wsum = 0.0, lsum = 0.0;
    for (int i = 0; i < N; i++) {
        float w = targets[i] < 0 ? 0.0f : mask ? mask[i] : 1.0f;
        wsum += w;
        lsum += w * -a->logp[i];
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
    if (m->n_sel < 0) {
        logprob_backward(a->logits, a->lse, m->dlogp, m->targets, NULL, N, V);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->lmw, NULL, a->logits, a->lnf, p->lmw, N, C, V);
    } else {
        // the n_sel rows the forward kept; the others' dlogits are zero. d_input row by row, then spread
        // back over the batch (from the last row, so that no row is overwritten before it moves).
        // d_weight by gemm.h's sgemm_rows_k: the sums of the full matmul, whose skipped rows add nothing.
        int n = m->n_sel;
        logprob_backward(a->logits, a->lse, m->dlogp, m->targets, m->sel, n, V);
        const float *lnf_sel = s->dresidual;   // (n, C): the kept rows of lnf, as the forward gathered them
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, NULL, NULL, a->logits, NULL, p->lmw, n, C, V);
        sgemm_rows_k(V, C, m->sel, n, a->logits, lnf_sel, C, g->lmw);
        for (int j = n - 1; j >= 0; j--) {
            int r = m->sel[j];
            if (r == j) break;   // rows 0..j are all kept: already in place
            memcpy(s->dln + (size_t)r * C, s->dln + (size_t)j * C, (size_t)C * sizeof(float));
            memset(s->dln + (size_t)j * C, 0, (size_t)C * sizeof(float));
        }
    }
    memset(s->dresidual, 0, (size_t)N * C * sizeof(float));
    rmsnorm_backward(s->dresidual, g->lnfw, s->dln, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, a->lnf_rstd, N, C);
    for (int l = L - 1; l >= 0; l--) {
        LayerActs la = layer_acts(m, l);
        // dresidual holds dLoss/d(resid3); the residual adds pass it through unchanged
        memset(s->dswiglu, 0, (size_t)N * I * sizeof(float));
        matmul_backward(s->dswiglu, g->fcprojw + (size_t)l * C * I, NULL, s->dresidual, la.fch_swiglu,
                        p->fcprojw + (size_t)l * C * I, N, I, C);
        swiglu_backward(s->dfch, s->dswiglu, la.fch, N, I);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->fcw + (size_t)l * 2 * I * C, NULL, s->dfch, la.ln2,
                        p->fcw + (size_t)l * 2 * I * C, N, C, 2 * I);
        rmsnorm_backward(s->dresidual, g->ln2w + (size_t)l * C, s->dln, la.resid2, p->ln2w + (size_t)l * C,
                         la.ln2_rstd, N, C);
        // now dresidual = dLoss/d(resid2)
        memset(s->datty, 0, (size_t)N * NH * HD * sizeof(float));
        matmul_backward(s->datty, g->attprojw + (size_t)l * C * NH * HD, NULL, s->dresidual, la.atty,
                        p->attprojw + (size_t)l * C * NH * HD, N, NH * HD, C);
        memset(s->dqkv, 0, (size_t)N * QKV * sizeof(float));
        attention_backward(s->dqkv, s->datty, la.qkv, la.att, B, T, NH, NKV, HD);
        rope_apply(s->dqkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, -1);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->qkvw + (size_t)l * QKV * C, c->qkv_bias ? g->qkvb + (size_t)l * QKV : NULL,
                        s->dqkv, la.ln1,
                        p->qkvw + (size_t)l * QKV * C, N, C, QKV);
        rmsnorm_backward(s->dresidual, g->ln1w + (size_t)l * C, s->dln, la.resid, p->ln1w + (size_t)l * C,
                         la.ln1_rstd, N, C);
        // now dresidual = dLoss/d(layer input)
    }
    embedding_backward(g->wte, s->dresidual, m->inputs, N, C);
}

// Global L2 norm of all gradients. Summed in fixed chunks, then in order, so that the result does
// not depend on the thread count or schedule (resumed runs must repeat bit for bit).
static float model_grad_norm(const Model *m) {
    enum { CHUNK = 1 << 16 };
    size_t n = m->num_parameters, nchunks = (n + CHUNK - 1) / CHUNK;
    double *part = (double *)xcalloc(nchunks, sizeof(double));
    // part[c] = sum of g^2 over chunk c, in double, in order (gemm.h: 8 chunks side by side)
    if (nchunks > 0) chunk_sumsq(part, m->grads_memory, nchunks, CHUNK, n - (nchunks - 1) * CHUNK);
    double ss = 0.0;
    for (size_t c = 0; c < nchunks; c++) ss += part[c];
    free(part);
    return (float)sqrt(ss);
}

// Clips the global gradient norm to grad_clip (<= 0: no clipping), then one AdamW step as
// torch.optim.AdamW computes it (decoupled weight decay on every parameter, bias-corrected
// moments). Returns the gradient norm before clipping.
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                          float grad_clip) {
    if (!m->grads_memory) FATAL("model_update before any backward");
    if (!m->m_memory) {
        m->m_memory = (float *)xcalloc(m->num_parameters, sizeof(float));
        m->v_memory = (float *)xcalloc(m->num_parameters, sizeof(float));
    }
    float norm = model_grad_norm(m);
    if (!isfinite(norm)) return norm;   // the contract: a non-finite gradient changes nothing (the host skips the step)
    float scale = 1.0f;
    if (grad_clip > 0.0f && grad_clip / (norm + 1e-6f) < 1.0f) scale = grad_clip / (norm + 1e-6f);
    m->adam_step++;
    double bc1 = 1.0 - pow(beta1, m->adam_step), bc2 = 1.0 - pow(beta2, m->adam_step);   // in double, as torch does
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2), decay = fmaf(-lr, weight_decay, 1.0f);
    // gemm.h's adamw_fast does the loop below 8 parameters at a time, the same operations; the
    // loop itself does what is left (fewer than 8)
    size_t done = adamw_fast(m->params_memory, m->grads_memory, m->m_memory, m->v_memory, m->num_parameters, scale,
                             beta1, beta2, decay, step_size, bc2_sqrt, eps);
    for (size_t i = done; i < m->num_parameters; i++) {
        float grad = m->grads_memory[i] * scale;
        float mm = fmaf(beta1, m->m_memory[i], (1.0f - beta1) * grad);
        float vv = fmaf(beta2, m->v_memory[i], (1.0f - beta2) * grad * grad);
        m->m_memory[i] = mm;
        m->v_memory[i] = vv;
        float w = m->params_memory[i] * decay;
        gemm_opaque(w);   // rounded before the subtraction (not fused into it)
        m->params_memory[i] = w - step_size * mm / (sqrtf(vv) / bc2_sqrt + eps);
    }
    return norm;
}

// ----------------------------------------------------------------------------
// 4. generation: a KV cache, batched decoding, and sampling

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
    // the matmul weights packed once for the whole generation (kv_pack_weights), or NULLs: with
    // many sequences, re-packing every weight on every decode step would cost as much as the math
    float **packed;    // (L * 4 + 1): qkvw, attprojw, fcw, fcprojw of each layer, then lmw
    int n_packed;
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
// Packs the model's matmul weights for model_step (memory: one more copy of them).
static void kv_pack_weights(KVCache *kv, const Model *m) {
    const ModelConfig *c = &m->config;
    const ParameterTensors *p = &m->params;
    int L = c->L, C = c->C, I = c->I, QKV = cfg_qkv_dim(c), QD = c->NH * c->HD;
    kv->n_packed = L * 4 + 1;
    kv->packed = (float **)xcalloc((size_t)kv->n_packed, sizeof(float *));
    for (int l = 0; l < L; l++) {
        kv->packed[4 * l + 0] = pack_panels(p->qkvw + (size_t)l * QKV * C, QKV, C);
        kv->packed[4 * l + 1] = pack_panels(p->attprojw + (size_t)l * C * QD, C, QD);
        kv->packed[4 * l + 2] = pack_panels(p->fcw + (size_t)l * 2 * I * C, 2 * I, C);
        kv->packed[4 * l + 3] = pack_panels(p->fcprojw + (size_t)l * C * I, C, I);
    }
    kv->packed[4 * L] = pack_panels(p->lmw, c->V, C);
    for (int i = 0; i <= 4 * L; i++) if (!kv->packed[i]) FATAL("out of memory packing the weights for generation");
}
static const float *kv_packed(const KVCache *kv, int i) { return kv->packed ? kv->packed[i] : NULL; }

static void kv_free(KVCache *kv) {
    for (int i = 0; i < kv->n_packed; i++) free(kv->packed[i]);
    free(kv->packed);
    free(kv->cap);
    free(kv->off);
    free(kv->data);
    free(kv->x);
    free(kv->ln);
    free(kv->qkv);
    free(kv->atty);
    free(kv->tmp);
    free(kv->fch);
    free(kv->sw);
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
        memcpy(kv_at(kv, c, seq[i], l, 1, pos[i]), qkv + (size_t)i * QKV + (size_t)(NH + NKV) * HD,
               kvd * sizeof(float));
    }
    float scale = 1.0f / sqrtf((float)HD);
    int maxpos = 0;
    for (int i = 0; i < N; i++) if (pos[i] > maxpos) maxpos = pos[i];
    #pragma omp parallel
    {
        float *sc = (float *)xmalloc((size_t)4 * (maxpos + 1) * sizeof(float));
        #pragma omp for collapse(2) schedule(dynamic, 2)
        for (int i = 0; i < N; i++)
            for (int hk = 0; hk < NKV; hk++)
                for (int h0 = hk * rep; h0 < (hk + 1) * rep; h0 += 4) {   // its query heads, 4 at a time
                    int nq = (hk + 1) * rep - h0 < 4 ? (hk + 1) * rep - h0 : 4;
                    float *o4[4], *p4[4];
                    const float *q4[4];
                    for (int r = 0; r < nq; r++) {
                        o4[r] = out + (size_t)i * NH * HD + (size_t)(h0 + r) * HD;
                        p4[r] = sc + (size_t)r * (maxpos + 1);
                        q4[r] = qkv + (size_t)i * QKV + (size_t)(h0 + r) * HD;
                    }
                    attend_group(o4, p4, q4, nq, kv_at(kv, c, seq[i], l, 0, 0) + (size_t)hk * HD,
                                 kv_at(kv, c, seq[i], l, 1, 0) + (size_t)hk * HD, (long)kvd, pos[i] + 1, HD, scale);
                }
        free(sc);
    }
}

// Runs N new tokens through the model, reading and extending the KV cache: token i is tokens[i],
// of sequence seq[i], at position pos[i]. Writes logits (n_out, V) for the tokens out_rows[0..n_out)
// (only those rows pay for the LM head; none when n_out is 0, and kv->x keeps the final residual
// stream). The same layer functions as training, so the two agree.
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
        matmul_forward_packed(kv->qkv, kv->ln, p->qkvw + (size_t)l * QKV * C, kv_packed(kv, 4 * l),
                              c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL, N, C, QKV);
        rope_apply(kv->qkv, pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, +1);
        attention_cached_forward(kv->atty, kv->qkv, kv, c, l, seq, pos, N);
        matmul_forward_packed(kv->tmp, kv->atty, p->attprojw + (size_t)l * C * NH * HD, kv_packed(kv, 4 * l + 1),
                              NULL, N, NH * HD, C);
        residual_forward(kv->x, kv->x, kv->tmp, (size_t)N * C);
        rmsnorm_forward(kv->ln, kv->tmp, kv->x, p->ln2w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward_packed(kv->fch, kv->ln, p->fcw + (size_t)l * 2 * I * C, kv_packed(kv, 4 * l + 2), NULL,
                              N, C, 2 * I);
        swiglu_forward(kv->sw, kv->fch, N, I);
        matmul_forward_packed(kv->tmp, kv->sw, p->fcprojw + (size_t)l * C * I, kv_packed(kv, 4 * l + 3), NULL, N, I, C);
        residual_forward(kv->x, kv->x, kv->tmp, (size_t)N * C);
    }
    if (n_out == 0) return;
    for (int j = 0; j < n_out; j++) memcpy(kv->tmp + (size_t)j * C, kv->x + (size_t)out_rows[j] * C,
                                           (size_t)C * sizeof(float));
    rmsnorm_forward(kv->ln, kv->fch /* rstd, unused */, kv->tmp, p->lnfw, n_out, C, c->rms_eps);
    matmul_forward_packed(logits, kv->ln, p->lmw, kv_packed(kv, 4 * c->L), NULL, n_out, C, c->V);
}

// log softmax(logits)[tok] of one row: the model's own log-probability, untouched by temperature or
// truncation, which is what the policy-gradient objective differentiates. maxv and sumexp are the row's
// max and sum_v expf(logits[v] - maxv), from gemm.h's rows_expsum (several rows at a time).
static float token_logprob(const float *logits, int tok, float maxv, float sumexp) {
    return logits[tok] - maxv - logf(sumexp);
}

// The token-level statistics of one row at T = 1 (engine.h): the entropy H(p) and the self-certainty
// KL(U || p) of p = softmax(logits), in one pass after the max. With lse = logsumexp(logits):
//   H = lse - sum_v p(v) logit(v),   KL(U || p) = -log V - (1/V) sum_v log p(v) = lse - mean(logit) - log V.
// In double: sum_v p(v) logit(v) cancels against lse, and a float sum over 150k terms would lose digits.
static void row_token_stats(const float *logits, int V, double *entropy, double *certainty) {
    float maxv = row_max(logits, V);
    double s = 0.0, sx = 0.0, sl = 0.0;   // sum e^(x - max), sum e^(x - max) (x - max), sum (x - max)
    for (int v = 0; v < V; v++) {
        double x = (double)logits[v] - maxv, e = exp(x);
        s += e;
        sx += e * x;
        sl += x;
    }
    double lse = log(s);   // of the shifted logits
    *entropy = lse - sx / s;
    *certainty = lse - sl / V - log((double)V);
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
    int best = row_argmax(logits, V);   // gemm.h: best = 0; for v: if (logits[v] > logits[best]) best = v
    if (greedy) return best;
    float inv_t = 1.0f / sc->temperature, sum = 0.0f;
    float u = random_f32(rng);
    int trunc = (sc->top_k > 0 && sc->top_k < V) || sc->top_p < 1.0f;
    // scratch[v].p = expf((logits[v] - logits[best]) * inv_t), a chunk at a time, and their sum
    float e[EXP_CHUNK];
    for (int v0 = 0; v0 < V; v0 += EXP_CHUNK) {
        int m = V - v0 < EXP_CHUNK ? V - v0 : EXP_CHUNK;
        for (int i = 0; i < m; i++) e[i] = (logits[v0 + i] - logits[best]) * inv_t;
        vexpf(e, e, m);
        for (int i = 0; i < m; i++) {
            scratch[v0 + i].p = e[i];
            scratch[v0 + i].id = v0 + i;
            sum += e[i];
        }
    }
    if (!trunc) {   // plain sampling: no sort, the first token whose running sum passes u * sum
        float r = u * sum, acc = 0.0f;
        for (int v = 0; v < V; v++) { acc += scratch[v].p; if (acc > r) return v; }
        return best;   // rounding at the very end of the sum
    }
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

static int is_eos(const Model *m, int tok) {
    for (int i = 0; i < m->n_eos; i++) if (m->eos[i] == tok) return 1;
    return 0;
}

// Prefill each prompt once (many prompts in one model_step), copy its cache into its G sequences,
// then decode all unfinished sequences together, one token per step. Every response draws from its own RNG stream
// (seed, response index), so the result does not depend on the thread count or the batch.
static void generate(Model *m, const int *const *prompts, const int *prompt_lens, int n_prompts, int G,
                     const SamplerConfig *sc, Generation *out, int verbose) {
    const ModelConfig *c = &m->config;
    int n = n_prompts * G, V = c->V, maxlen = 0;
    int *cap = (int *)xcalloc((size_t)n, sizeof(int));
    for (int p = 0; p < n_prompts; p++) {
        if (prompt_lens[p] < 1) FATAL("generate: prompt %d is empty", p);
        if (prompt_lens[p] >= c->maxT) FATAL("generate: prompt %d has %d tokens, at or beyond the context (%d)", p,
                                             prompt_lens[p], c->maxT);
        int room = prompt_lens[p] + sc->max_new;
        if (room > c->maxT) room = c->maxT;
        for (int g = 0; g < G; g++) cap[p * G + g] = room;
        if (prompt_lens[p] > maxlen) maxlen = prompt_lens[p];
    }
    // Prompts are prefilled together, up to PREFILL_TOKENS tokens a model_step (a longer one alone),
    // so that the weights stream from memory once a batch rather than once a prompt.
    enum { PREFILL_TOKENS = 2048 };
    long total_len = 0;
    for (int p = 0; p < n_prompts; p++) total_len += prompt_lens[p];
    int prefill_cap = total_len < PREFILL_TOKENS ? (int)total_len : PREFILL_TOKENS;
    if (prefill_cap < maxlen) prefill_cap = maxlen;
    int scratch_rows = prefill_cap > n ? prefill_cap : n;
    KVCache kv;
    kv_init(&kv, c, cap, n, scratch_rows);
    if (n >= 8) kv_pack_weights(&kv, m);   // decode steps with >= 8 rows use GEMM
    out->n = n;
    out->mean_entropy = out->mean_certainty = NULL;
    int stats = !sc->no_token_stats;   // only -r entropy / certainty read them: a pass over each row
    out->len = (int *)xcalloc((size_t)n, sizeof(int));
    out->eos = (int *)xcalloc((size_t)n, sizeof(int));
    out->tokens = (int **)xmalloc((size_t)n * sizeof(int *));
    out->logprobs = (float **)xmalloc((size_t)n * sizeof(float *));
    for (int j = 0; j < n; j++) {
        int room = cap[j] - prompt_lens[j / G];
        out->tokens[j] = (int *)xmalloc((size_t)(room > 0 ? room : 1) * sizeof(int));
        out->logprobs[j] = (float *)xmalloc((size_t)(room > 0 ? room : 1) * sizeof(float));
    }
    // the token statistics of -r entropy / certainty: sums in double, divided by len at the end
    double *ent_sum = (double *)xcalloc((size_t)n, sizeof(double));
    double *cert_sum = (double *)xcalloc((size_t)n, sizeof(double));
    uint64_t *rng = (uint64_t *)xmalloc((size_t)n * sizeof(uint64_t));
    for (int j = 0; j < n; j++)   // stream j: from (seed, j) alone
        rng[j] = (sc->seed + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull);
    float *logits = (float *)xmalloc((size_t)n * V * sizeof(float));
    int *tok = (int *)xmalloc((size_t)scratch_rows * sizeof(int));
    int *seq = (int *)xmalloc((size_t)scratch_rows * sizeof(int));
    int *pos = (int *)xmalloc((size_t)scratch_rows * sizeof(int));
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
    float *last_x = (float *)xmalloc((size_t)n_prompts * c->C * sizeof(float));   // each prompt's last row
    for (int p0 = 0, p1; p0 < n_prompts; p0 = p1) {
        // prompts [p0, p1) in one step. One of fewer than 8 tokens goes alone: its matmuls take the
        // few-rows path (matmul_forward_packed), which a batch would not, and so would change its bits.
        int ntok = 0;
        for (p1 = p0; p1 < n_prompts; p1++) {
            int P = prompt_lens[p1];
            if (p1 > p0 && (P < 8 || prompt_lens[p0] < 8 || ntok + P > prefill_cap)) break;
            for (int t = 0; t < P; t++) { tok[ntok + t] = prompts[p1][t]; seq[ntok + t] = p1 * G; pos[ntok + t] = t; }
            ntok += P;
        }
        model_step(m, &kv, tok, seq, pos, ntok, NULL, 0, NULL);
        for (int p = p0, row = 0; p < p1; row += prompt_lens[p], p++) {
            int P = prompt_lens[p], s0 = p * G;
            memcpy(last_x + (size_t)p * c->C, kv.x + (size_t)(row + P - 1) * c->C, (size_t)c->C * sizeof(float));
            for (int g = 1; g < G; g++)   // the G responses share the prompt's keys and values
                for (int l = 0; l < c->L; l++)
                    for (int w = 0; w < 2; w++)
                        memcpy(kv_at(&kv, c, s0 + g, l, w, 0), kv_at(&kv, c, s0, l, w, 0),
                               (size_t)P * kvd * sizeof(float));
        }
    }
    // The prompts' last rows through the LM head together, each row as model_step computes a single
    // one (matmul_few_rows, the same bits): the LM head's weights stream from memory once, not once a prompt.
    rmsnorm_forward(kv.ln, kv.fch /* rstd, unused */, last_x, m->params.lnfw, n_prompts, c->C, c->rms_eps);
    matmul_few_rows(logits, kv.ln, m->params.lmw, n_prompts, c->C, V);
    free(last_x);
    for (int p = 0; p < n_prompts; p++) {
        int P = prompt_lens[p], s0 = p * G;
        const float *row = logits + (size_t)p * V;
        for (int g = 0; g < G; g++) {
            int j = s0 + g;
            if (cap[j] <= P) continue;   // no room for even one token
            active[n_active++] = j;
        }
        // sample the first token of each of the G responses from the shared logits (one log-softmax sum)
        float maxv = 0.0f, sumexp = 1.0f;
        if (n_active > 0 && active[n_active - 1] >= s0) rows_expsum(&maxv, &sumexp, row, (size_t)V, 1, V);
        for (int a = n_active - 1; a >= 0 && active[a] >= s0; a--) {
            int j = active[a];
            int t0 = sample_token(row, V, sc, &rng[j], scratch);
            out->tokens[j][0] = t0;
            out->logprobs[j][0] = token_logprob(row, t0, maxv, sumexp);
            out->len[j] = 1;
        }
        if (stats && n_active > 0 && active[n_active - 1] >= s0) {   // the G first positions share one row
            double h, k;
            row_token_stats(row, V, &h, &k);
            for (int a = n_active - 1; a >= 0 && active[a] >= s0; a--) {
                ent_sum[active[a]] = h;
                cert_sum[active[a]] = k;
            }
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
        // groups of 4 rows when each thread gets 2 groups or more: the sums of their log-probs run side
        // by side (rows_expsum: each row's sum in its own order, so the same bits as one row at a time)
        int gs = n_active >= 8 * n_threads ? 4 : 1, ngroups = (n_active + gs - 1) / gs;
        #pragma omp parallel for schedule(dynamic, 1)
        for (int gi = 0; gi < ngroups; gi++) {
            int a0 = gi * gs, nr = n_active - a0 < gs ? n_active - a0 : gs, th = 0;
#ifdef _OPENMP
            th = omp_get_thread_num();
#endif
            float mx[4], s[4];
            rows_expsum(mx, s, logits + (size_t)a0 * V, (size_t)V, nr, V);
            for (int a = a0; a < a0 + nr; a++) {
                int j = active[a];
                const float *row = logits + (size_t)a * V;
                int t = sample_token(row, V, sc, &rng[j], scratch + (size_t)th * V);
                out->tokens[j][out->len[j]] = t;
                out->logprobs[j][out->len[j]] = token_logprob(row, t, mx[a - a0], s[a - a0]);
                out->len[j]++;
                if (!stats) continue;
                double h, k;
                row_token_stats(row, V, &h, &k);
                ent_sum[j] += h;
                cert_sum[j] += k;
            }
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
            fprintf(stderr, "\r  generating: step %d, %d/%d responses still running, %.1f s", step, n_active, n,
                    now_seconds() - t_start);
            if (n_active == 0) fputc('\n', stderr);
        }
    }
    if (stats) generation_set_token_means(out, ent_sum, cert_sum);
    free(ent_sum);
    free(cert_sum);
    free(cap);
    free(rng);
    free(logits);
    free(tok);
    free(seq);
    free(pos);
    free(active);
    free(rows);
    free(scratch);
    kv_free(&kv);
}

// One model_step over the pending tokens; the rows that end a sequence give the candidates' log-probs.
static void next_logprobs_step(Model *m, KVCache *kv, const int *tok, const int *seq, const int *pos, int N,
                               const int *rows, const int *owner, int n_out, float *logits, const int *cand, int n_cand,
                               float *out) {
    int V = m->config.V;
    model_step(m, kv, tok, seq, pos, N, rows, n_out, logits);
    for (int j = 0; j < n_out; j++) {
        const float *row = logits + (size_t)j * V;
        float maxv = -FLT_MAX;
        for (int v = 0; v < V; v++) if (row[v] > maxv) maxv = row[v];
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)(row[v] - maxv));
        float lse = maxv + (float)log(sum);
        for (int k = 0; k < n_cand; k++) out[(size_t)owner[j] * n_cand + k] = row[cand[k]] - lse;
    }
}

// The next-token log-probabilities of cand[0..n_cand) after each of n token sequences, in one batched
// pass (the free-form verifier judge). Sequences that share a prefix with the first sequence of their
// run (the pairs of one question) compute it once: that sequence goes through whole, then its keys
// and values for the common prefix are copied into the others, which run only their own tokens, all
// of them together (as generate() shares a prompt among its G responses). Every lens[s] >= 1. The
// pass is cut into waves of max_seqs sequences (the KV cache) and model_step calls of max_tokens
// tokens (the scratch). out (n, n_cand).
static void model_next_logprobs(Model *m, const int *const *ids, const int *lens, int n, const int *cand, int n_cand,
                                int max_seqs, int max_tokens, float *out, long *n_computed, long *n_shared) {
    const ModelConfig *c = &m->config;
    size_t kvd = (size_t)c->NKV * c->HD;
    int rows_cap = max_seqs < max_tokens ? max_seqs : max_tokens;
    float *logits = (float *)xmalloc((size_t)rows_cap * c->V * sizeof(float));
    int *tok = (int *)xmalloc((size_t)max_tokens * sizeof(int));
    int *seq = (int *)xmalloc((size_t)max_tokens * sizeof(int));
    int *pos = (int *)xmalloc((size_t)max_tokens * sizeof(int));
    int *rows = (int *)xmalloc((size_t)max_tokens * sizeof(int));
    int *owner = (int *)xmalloc((size_t)max_tokens * sizeof(int));   // the sequence (global index) of each output row
    int *lead = (int *)xmalloc((size_t)max_seqs * sizeof(int));
    int *start = (int *)xmalloc((size_t)max_seqs * sizeof(int));
    for (int w0 = 0; w0 < n; w0 += max_seqs) {
        int nw = n - w0 < max_seqs ? n - w0 : max_seqs;
        KVCache kv;
        kv_init(&kv, c, lens + w0, nw, max_tokens);
        // runs: a sequence joins the current run when it shares at least one token with its leader
        for (int s = 0; s < nw; s++) {
            int L = s > 0 ? lead[s - 1] : -1, P = 0;
            if (L >= 0) {
                const int *x = ids[w0 + s], *y = ids[w0 + L];
                int lim = lens[w0 + s] - 1 < lens[w0 + L] ? lens[w0 + s] - 1 : lens[w0 + L];   // keep >= 1 own token
                while (P < lim && x[P] == y[P]) P++;
            }
            lead[s] = P > 0 ? L : s;
            start[s] = P;
        }
        for (int pass = 0; pass < 2; pass++) {   // 0: the leaders, whole; 1: the others, their own tokens
            int N = 0, n_out = 0;
            for (int s = 0; s < nw; s++) {
                if ((lead[s] == s) != (pass == 0)) continue;
                if (pass == 1) {
                    for (int l = 0; l < c->L; l++)
                        for (int w = 0; w < 2; w++)
                            memcpy(kv_at(&kv, c, s, l, w, 0), kv_at(&kv, c, lead[s], l, w, 0),
                                   (size_t)start[s] * kvd * sizeof(float));
                    if (n_shared) *n_shared += start[s];
                }
                for (int t = start[s]; t < lens[w0 + s]; t++) {
                    tok[N] = ids[w0 + s][t];
                    seq[N] = s;
                    pos[N] = t;
                    if (t == lens[w0 + s] - 1) {
                        rows[n_out] = N;
                        owner[n_out] = w0 + s;
                        n_out++;
                    }
                    N++;
                    if (N == max_tokens || n_out == rows_cap) {
                        next_logprobs_step(m, &kv, tok, seq, pos, N, rows, owner, n_out, logits, cand, n_cand, out);
                        if (n_computed) *n_computed += N;
                        N = 0;
                        n_out = 0;
                    }
                }
            }
            if (N > 0) {
                next_logprobs_step(m, &kv, tok, seq, pos, N, rows, owner, n_out, logits, cand, n_cand, out);
                if (n_computed) *n_computed += N;
            }
        }
        kv_free(&kv);
    }
    free(logits);
    free(tok);
    free(seq);
    free(pos);
    free(rows);
    free(owner);
    free(lead);
    free(start);
}

#endif // EMPO_EXTERNAL_ENGINE

// ============================================================================
// THE EMPO HOST LAYER
//
// From here on the file knows a model only through engine.h: it passes token ids in and reads
// log-probs, losses and generated tokens back, all in host memory. This is EMPO itself, and the
// same code drives the GPU engine of train_empo.cu.

// ----------------------------------------------------------------------------
// 5. questions, prompts and answers

typedef struct {
    char *problem, *answer, *solution;
    int line;       // in its file (1-based), for error messages
    int too_long;   // the prompt leaves no room for an answer in the model's context (problems_check_prompts)
} Problem;
typedef struct {
    Problem *items;
    int n, cap;
    const char *path;
    int n_bad, first_bad;   // lines refused while reading (and the first one's number)
    int n_too_long;         // problems marked too_long
} ProblemSet;
// A line that cannot be a problem: reported with its number and counted; problems_read decides
// whether that is an error (the default) or a skip (--skip-bad-lines).
static void problems_bad_line(ProblemSet *ps, int line, const char *why) {
    fprintf(stderr, "%s:%d: %s\n", ps->path, line, why);
    ps->n_bad++;
    if (!ps->first_bad) ps->first_bad = line;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)xmalloc(n);
    memcpy(d, s, n);
    return d;
}

// A field that should be text; numbers are accepted too (some data sets store answers as numbers).
static char *json_text_field(const JDoc *d, int root, const char *key) {
    int i = json_get(d, root, key);
    if (json_type(d, i) == J_STR) return xstrdup(json_str(d, i));
    if (json_type(d, i) == J_NUM) {
        char b[64];
        snprintf(b, sizeof b, "%.17g", json_num(d, i, 0));
        return xstrdup(b);
    }
    return NULL;
}
static Problem *problems_push(ProblemSet *ps) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? ps->cap * 2 : 256;
        ps->items = (Problem *)realloc(ps->items, (size_t)ps->cap * sizeof(Problem));
        if (!ps->items) FATAL("out of memory reading %s", ps->path);
    }
    Problem *p = &ps->items[ps->n++];
    memset(p, 0, sizeof *p);
    return p;
}
static int problems_add(const JDoc *d, int root, int line, void *user) {
    ProblemSet *ps = (ProblemSet *)user;
    char *prob = json_text_field(d, root, "problem");
    if (!prob || !prob[0]) {
        problems_bad_line(ps, line, prob ? "\"problem\" is empty" : "no \"problem\" string");
        free(prob);
        return 0;
    }
    Problem *p = problems_push(ps);
    p->line = line;
    p->problem = prob;
    p->answer = json_text_field(d, root, "answer");
    p->solution = json_text_field(d, root, "solution");
    return 0;
}
// Reads a JSONL of problems with add (problems_add or freeform_add). Every bad line (malformed
// JSON, no or an empty problem, bad choices) is reported as FILE:LINE; then, unless skip_bad, the
// load fails with their count, so that an eval's denominator never shrinks without a word. A
// UTF-8 BOM is accepted. An unreadable or non-regular file, or one with no usable line, is fatal.
static void problems_read(ProblemSet *ps, const char *path, jsonl_fn add, const char *what, int skip_bad) {
    memset(ps, 0, sizeof *ps);
    ps->path = path;
    int n_json = 0, first_json = 0;
    if (jsonl_foreach_ex(path, 0, add, ps, &n_json, &first_json) < 0) {
        char err[1200];
        util_read_error(err, sizeof err, path);
        FATAL("cannot read %s", err);
    }
    int bad = ps->n_bad + n_json;
    int first = !first_json ? ps->first_bad : !ps->first_bad ? first_json : first_json < ps->first_bad ? first_json
                                                                                                      : ps->first_bad;
    if (ps->n == 0 && bad)
        FATAL("%s: no usable {\"%s\": ...} lines (%d bad, the first is line %d)", path, what, bad, first);
    if (ps->n == 0) FATAL("%s: no usable {\"%s\": ...} lines", path, what);
    if (bad && !skip_bad)
        FATAL("%s: %d bad line%s (the first is line %d): fix %s, or pass --skip-bad-lines to skip %s", path, bad,
              bad > 1 ? "s" : "", first, bad > 1 ? "them" : "it", bad > 1 ? "them" : "it");
    ps->n_bad = bad;
    ps->first_bad = first;
    if (bad) fprintf(stderr, "%s: skipped %d bad line%s (--skip-bad-lines); %d problems read\n", path, bad,
                     bad > 1 ? "s" : "", ps->n);
}
// Reads {problem, answer?, solution?} lines (problems_read: bad lines are an error).
static void problems_load(ProblemSet *ps, const char *path) { problems_read(ps, path, problems_add, "problem", 0); }
static void problems_free(ProblemSet *ps) {
    for (int i = 0; i < ps->n; i++) {
        free(ps->items[i].problem);
        free(ps->items[i].answer);
        free(ps->items[i].solution);
    }
    free(ps->items);
    memset(ps, 0, sizeof *ps);
}

// The free-form data format (--task freeform, doc/freeform.md), one JSON object a line:
//   {"question": "...", "answer": "..."}                       free-form (answer optional: unlabeled training)
//   {"question": "...", "choices": ["...", ...], "answer": "B"} multiple choice: a letter or an option's text
// "problem" is accepted for "question", and "answer_index" (0-based) for a missing or unmatched
// "answer". A multiple-choice item becomes a Problem whose text lists the options (ff_render_mc),
// whose answer is the letter, and whose `solution` holds the options one a line: that is how
// evaluation tells the two kinds apart. Bad lines are reported with their number and skipped.
static int freeform_add(const JDoc *d, int root, int line, void *user) {
    ProblemSet *ps = (ProblemSet *)user;
    char *q = json_text_field(d, root, "question");
    if (!q) q = json_text_field(d, root, "problem");
    if (!q || !q[0]) {
        problems_bad_line(ps, line, q ? "\"question\" is empty" : "no \"question\" string");
        free(q);
        return 0;
    }
    char *answer = json_text_field(d, root, "answer"), *solution = NULL, *text = q;
    int ch = json_get(d, root, "choices");
    if (ch >= 0) {
        int nc = json_type(d, ch) == J_ARR ? json_len(d, ch) : -1;
        const char *opts[FF_MAX_CHOICES];
        int ok = nc >= 2 && nc <= FF_MAX_CHOICES;
        for (int i = 0; ok && i < nc; i++)
            ok = (opts[i] = json_str(d, json_at(d, ch, i))) != NULL && !strchr(opts[i], '\n');
        if (!ok) {
            char why[96];
            snprintf(why, sizeof why, "\"choices\" must be 2 to %d one-line strings", FF_MAX_CHOICES);
            problems_bad_line(ps, line, why);
            free(q);
            free(answer);
            return 0;
        }
        int gold = ff_gold_letter(answer, opts, nc);
        int ai = json_get(d, root, "answer_index");
        if (gold < 0 && json_type(d, ai) == J_NUM) {
            double x = json_num(d, ai, -1);
            if (x >= 0 && x < nc && x == (int)x) gold = (int)x;
        }
        free(answer);
        answer = NULL;
        if (gold < 0 && (json_get(d, root, "answer") >= 0 || ai >= 0)) {
            char why[96];
            snprintf(why, sizeof why, "\"answer\" is neither a letter A-%c nor the text of an option", 'A' + nc - 1);
            problems_bad_line(ps, line, why);
            free(q);
            return 0;
        }
        if (gold >= 0) {
            char l[2] = {(char)('A' + gold), 0};
            answer = xstrdup(l);
        }
        text = ff_render_mc(q, opts, nc);
        if (!text) FATAL("out of memory reading %s", ps->path);
        size_t len = 0;
        for (int i = 0; i < nc; i++) len += strlen(opts[i]) + 1;
        solution = (char *)xmalloc(len + 1);
        solution[0] = 0;
        for (int i = 0; i < nc; i++) {
            strcat(solution, opts[i]);
            if (i + 1 < nc) strcat(solution, "\n");
        }
        free(q);
    }
    Problem *p = problems_push(ps);
    p->line = line;
    p->problem = text;
    p->answer = answer;
    p->solution = solution;
    return 0;
}
static void freeform_problems_load(ProblemSet *ps, const char *path) {
    problems_read(ps, path, freeform_add, "question", 0);
}

// The options of a multiple-choice Problem (see freeform_add): pointers into a copy, n returned;
// 0 if it is free-form.
static int freeform_choices(const Problem *p, char **copy, const char *opts[FF_MAX_CHOICES]) {
    *copy = NULL;
    if (!p->solution) return 0;
    *copy = xstrdup(p->solution);
    int n = 0;
    for (char *s = *copy; n < FF_MAX_CHOICES;) {
        opts[n++] = s;
        char *nl = strchr(s, '\n');
        if (!nl) break;
        *nl = 0;
        s = nl + 1;
    }
    return n;
}

// The model's tokenizer, from the blob its checkpoint carries.
static void load_tokenizer(Tokenizer *tok, const Model *m, const char *model_path) {
    char err[512];
    if (!m->tok)
        FATAL("%s: this checkpoint carries no tokenizer (import it with ./convert, see doc/tokenizer.md)", model_path);
    if (tokenizer_from_blob(tok, m->tok, m->tok_bytes, err, sizeof err) != 0)
        FATAL("%s: tokenizer: %s", model_path, err);
    if (tok->n_vocab > m->config.V)
        FATAL("%s: tokenizer has %d ids but the model only %d", model_path, tok->n_vocab, m->config.V);
}

// Prompt ids for a problem, or exits: a prompt that can't leave room for an answer is an error.
static int encode_prompt(const Tokenizer *tok, int template_id, const char *problem, int maxT, int **ids) {
    int n = chat_template_encode(tok, template_id, problem, ids);
    if (n < 0) FATAL("cannot apply the chat template (does the tokenizer have <|im_start|> and <|im_end|>?)");
    if (n >= maxT) FATAL("a prompt has %d tokens, beyond the model's context of %d: \"%.60s...\"", n, maxT, problem);
    return n;
}

// Marks the problems whose prompt leaves no room for an answer in the model's context (the test of
// encode_prompt) and returns how many, so that a run finds them all before its first step rather
// than dying on one mid-run. *first: the first such problem (or NULL), *first_len its tokens.
static int problems_check_prompts(ProblemSet *ps, const Tokenizer *tok, int template_id, int maxT,
                                  const Problem **first, int *first_len) {
    ps->n_too_long = 0;
    *first = NULL;
    for (int i = 0; i < ps->n; i++) {
        int *ids, n = chat_template_encode(tok, template_id, ps->items[i].problem, &ids);
        if (n < 0) FATAL("cannot apply the chat template (does the tokenizer have <|im_start|> and <|im_end|>?)");
        free(ids);
        ps->items[i].too_long = n >= maxT;
        if (n < maxT) continue;
        if (!ps->n_too_long++) {
            *first = &ps->items[i];
            *first_len = n;
        }
    }
    return ps->n_too_long;
}
// Drops the too_long problems (training with --skip-long-prompts).
static void problems_drop_too_long(ProblemSet *ps) {
    int k = 0;
    for (int i = 0; i < ps->n; i++) {
        if (!ps->items[i].too_long) { ps->items[k++] = ps->items[i]; continue; }
        free(ps->items[i].problem);
        free(ps->items[i].answer);
        free(ps->items[i].solution);
    }
    ps->n = k;
}

// The response text (without a final EOS), malloc'd.
static char *decode_response(const Tokenizer *tok, const Generation *g, int j) {
    int n = g->len[j] - (g->eos[j] ? 1 : 0);
    size_t len;
    char *s = tokenizer_decode(tok, g->tokens[j], n, &len);
    if (!s) FATAL("out of memory decoding a response");
    return s;
}

// ----------------------------------------------------------------------------
// 6. scorers: how an answer is extracted and a group of answers clustered
//
// --task chooses one scorer for the whole run, and it is passed to everything that reads answers:
//   math      the last \boxed{} (math_verify.h), clustered by mathematical equivalence
//   freeform  a phrase or sentence (freeform.h), clustered by a judge: a verifier model (-R) asked
//             whether two answers are equivalent, or normalized-text equality without -R
// --cluster exact (math) changes only the clustering the empo/ttrl rewards and their entropy filter
// use; the logged semantic entropy and evaluation's maj@G/pass@G stay semantic, so runs compare.

// The verifier judge of --task freeform: a second checkpoint asked "is the student's answer
// equivalent to the ground truth?", its verdict read from the next-token probabilities of " Yes"
// and " No" (engine.h's model_next_logprobs, which computes a question's shared prefix once).
typedef struct {
    Model m;
    Tokenizer tok;
    int yes_id, no_id;   // first tokens of " Yes" and " No" (of "Yes" and "No" when those collide)
    char *tmpl;          // judge template with {question} {a} {b}
    int max_seqs;        // pairs per pass: the KV cache holds max_seqs x prompt length x L x 2 x NKV*HD floats
    int max_tokens;      // tokens per engine step: bounds the scratch memory
    long n_pairs, n_tokens, n_shared, n_too_long;   // judged, computed, copied from a shared prefix, too long
    double seconds;
} Verifier;

// The first token of text, or -1.
static int first_token(const Tokenizer *tok, const char *text) {
    int *ids, n = tokenizer_encode(tok, text, strlen(text), 0, &ids), id = n > 0 ? ids[0] : -1;
    free(ids);
    return id;
}

// Loads -R: the checkpoint, its tokenizer, the template (NULL: the default), the decision tokens.
static void verifier_load(Verifier *v, const char *path, const char *template_path, int max_seqs) {
    char err[512];
    memset(v, 0, sizeof *v);
    if (model_load(&v->m, path, err, sizeof err) != 0) FATAL("-R: %s", err);
    load_tokenizer(&v->tok, &v->m, path);
    if (template_path) {
        v->tmpl = read_whole_file(template_path, NULL);
        if (!v->tmpl) FATAL("--judge-template: cannot read %s", template_path);
    } else {
        v->tmpl = xstrdup(FF_DEFAULT_JUDGE_TEMPLATE);
    }
    const char *bad = ff_template_invalid(v->tmpl);
    if (bad) FATAL("--judge-template %s: %s", template_path ? template_path : "(default)", bad);
    // " Yes" / " No" are one token each in the Qwen2 vocabulary; a byte vocabulary spells both
    // with a leading space, so there the words without the space decide.
    v->yes_id = first_token(&v->tok, " Yes");
    v->no_id = first_token(&v->tok, " No");
    if (v->yes_id == v->no_id) {
        v->yes_id = first_token(&v->tok, "Yes");
        v->no_id = first_token(&v->tok, "No");
    }
    if (v->yes_id < 0 || v->no_id < 0 || v->yes_id == v->no_id)
        FATAL("-R %s: the tokenizer cannot tell \" Yes\" from \" No\" by their first token", path);
    // a context too short for the template itself would judge no pair at all: every answer would
    // then be its own cluster, silently. Refuse that up front.
    char *bare = ff_render_judge_prompt(v->tmpl, "", "", "");
    int *ids, n = bare ? tokenizer_encode(&v->tok, bare, strlen(bare), 1, &ids) : -1;
    free(bare);
    if (n >= 0) free(ids);
    if (n < 0 || n >= v->m.config.maxT)
        FATAL("-R %s: its context of %d tokens cannot hold the judge's prompt (%d tokens with empty answers); "
              "use a shorter --judge-template or a verifier with a longer context", path, v->m.config.maxT, n);
    v->max_seqs = max_seqs > 0 ? max_seqs : 256;
    v->max_tokens = 2048;
}
static void verifier_free(Verifier *v) {
    model_free(&v->m);
    tokenizer_free(&v->tok);
    free(v->tmpl);
    memset(v, 0, sizeof *v);
}

// The JudgeFn of freeform.h for a Verifier: renders each pair's prompt, tokenizes it (special
// tokens recognised, as a Hugging Face tokenizer does), and returns P(Yes) / (P(Yes) + P(No)).
// A prompt beyond the verifier's context is not judged: P(Yes) = 0, i.e. "not equivalent".
static int verifier_judge(void *ctx, const char *const *q, const char *const *a, const char *const *b, int n,
                          float *p_yes) {
    Verifier *v = (Verifier *)ctx;
    double t0 = now_seconds();
    size_t cap = (size_t)(n ? n : 1);
    int **ids = (int **)xcalloc(cap, sizeof(int *)), *lens = (int *)xcalloc(cap, sizeof(int));
    int *idx = (int *)xmalloc(cap * sizeof(int)), m = 0;
    for (int k = 0; k < n; k++) {
        p_yes[k] = 0.0f;
        char *prompt = ff_render_judge_prompt(v->tmpl, q[k], a[k], b[k]);
        if (!prompt) FATAL("out of memory rendering a judge prompt");
        lens[k] = tokenizer_encode(&v->tok, prompt, strlen(prompt), 1, &ids[k]);
        free(prompt);
        if (lens[k] < 0) FATAL("cannot tokenize a judge prompt");
        if (lens[k] >= 1 && lens[k] <= v->m.config.maxT) idx[m++] = k;
        else v->n_too_long++;
    }
    // the judged sequences, in order (pairs of one question stay next to each other)
    const int **sel = (const int **)xmalloc(cap * sizeof(int *));
    int *sel_len = (int *)xmalloc(cap * sizeof(int));
    float *lyn = (float *)xmalloc(cap * 2 * sizeof(float));
    int yn[2] = {v->yes_id, v->no_id};
    for (int j = 0; j < m; j++) {
        sel[j] = ids[idx[j]];
        sel_len[j] = lens[idx[j]];
    }
    if (m > 0) model_next_logprobs(&v->m, sel, sel_len, m, yn, 2, v->max_seqs, v->max_tokens, lyn, &v->n_tokens,
                                   &v->n_shared);
    for (int j = 0; j < m; j++) p_yes[idx[j]] = 1.0f / (1.0f + expf(lyn[2 * j + 1] - lyn[2 * j]));   // over {Yes, No}
    for (int k = 0; k < n; k++) free(ids[k]);
    free(ids);
    free(lens);
    free(idx);
    free(sel);
    free(sel_len);
    free(lyn);
    v->n_pairs += n;
    v->seconds += now_seconds() - t0;
    return 0;
}

enum { TASK_MATH, TASK_FREEFORM };
typedef struct Scorer Scorer;
struct Scorer {
    int task;   // TASK_MATH or TASK_FREEFORM
    // the final answer of a response into out (cap bytes); 0 if it has none
    int (*extract)(const Scorer *s, const char *response, char *out, size_t cap);
    // clusters n groups of G answers (answers[p*G + i], NULL = none; questions[p]) into groups[p]
    void (*cluster)(Scorer *s, char *const *answers, const char *const *questions, int n, int G, SemanticGroup *groups);
    // the clustering of the empo/ttrl rewards, if not `cluster` (--cluster exact), else NULL
    void (*reward_cluster)(Scorer *s, char *const *answers, const char *const *questions, int n, int G,
                           SemanticGroup *groups);
    // the free-form judge, its settings (guards, threshold) and its running totals
    FreeformScorer ff;
    Verifier *verifier;   // -R, or NULL: normalized-text equality
    int extract_policy;   // math: --extract (math_verify.h's MV_EXTRACT_*; 0 = Math-Verify's parse order)
};

static int math_extract(const Scorer *s, const char *response, char *out, size_t cap) {
    return math_extract_answer_policy(response, out, cap, s->extract_policy);
}
static void math_cluster(Scorer *s, char *const *answers, const char *const *questions, int n, int G,
                         SemanticGroup *groups) {
    #pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < n; p++) semantic_cluster((const char *const *)(answers + (size_t)p * G), G, &groups[p]);
}

// --cluster exact: the EMPO reference's clustering. Its trl/src/open_r1/rewards.py takes the string
// that math_verify's parse() extracted (parse(...)[-1]), applies normalize_prediction (every
// \text{X} -> X, shortest X; then \boxed{X} -> X, longest X on the line), and clusters with
// math_verify.verify on two strings, which is string equality after strip(), false when either side
// is empty. So there "1/2", "\frac{1}{2}" and "0.5" are three clusters. An answer that normalizes to
// nothing is a missing answer (a singleton of the entropy, reward 0), as '' is there.
static void exact_normalize(const char *a, char *out, size_t cap) {
    char *tmp = (char *)xmalloc(strlen(a) + 1);
    size_t n = 0;
    for (const char *p = a; *p;) {   // \text{X} -> X: X up to the first '}', no newline in it
        if (!strncmp(p, "\\text{", 6)) {
            const char *e = p + 6;
            while (*e && *e != '}' && *e != '\n') e++;
            if (*e == '}') {
                memcpy(tmp + n, p + 6, (size_t)(e - p - 6));
                n += (size_t)(e - p - 6);
                p = e + 1;
                continue;
            }
        }
        tmp[n++] = *p++;
    }
    tmp[n] = 0;
    size_t o = 0;
    for (const char *p = tmp; *p && o + 1 < cap;) {   // \boxed{X} -> X: X up to the line's last '}'
        if (!strncmp(p, "\\boxed{", 7)) {
            const char *e = p + 7, *last = NULL;
            for (; *e && *e != '\n'; e++) if (*e == '}') last = e;
            if (last) {
                for (const char *q = p + 7; q < last && o + 1 < cap; q++) out[o++] = *q;
                p = last + 1;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = 0;
    free(tmp);
    size_t b = 0;   // strip(), as verify does before comparing
    while (out[b] && strchr(" \t\n\r\f\v", out[b])) b++;
    while (o > b && strchr(" \t\n\r\f\v", out[o - 1])) o--;
    memmove(out, out + b, o - b);
    out[o - b] = 0;
}
// Clusters by string equality of exact_normalize(answer), with the table clustering of freeform.h.
#define EXACT_CAP 1024   // an extracted answer has at most ANSWER_CAP (section 7) = 1024 bytes
static void exact_cluster(Scorer *s, char *const *answers, const char *const *questions, int n, int G,
                          SemanticGroup *groups) {
    #pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < n; p++) {
        char *norm[SC_MAX_G];
        int uid[SC_MAX_G], U = 0, Gc = G < SC_MAX_G ? G : SC_MAX_G;
        for (int i = 0; i < Gc; i++) {
            const char *a = answers[(size_t)p * G + i];
            norm[i] = (char *)xmalloc(EXACT_CAP);
            exact_normalize(a ? a : "", norm[i], EXACT_CAP);
            uid[i] = -1;
            if (!norm[i][0]) continue;
            for (int k = 0; k < i && uid[i] < 0; k++)
                if (uid[k] >= 0 && !strcmp(norm[k], norm[i])) uid[i] = uid[k];
            if (uid[i] < 0) uid[i] = U++;
        }
        semantic_cluster_table(uid, Gc, NULL, U, &groups[p]);
        for (int i = 0; i < Gc; i++) free(norm[i]);
    }
}

static int freeform_extract(const Scorer *s, const char *response, char *out, size_t cap) {
    return ff_extract_answer(response, out, cap);
}
// Every group's pairs in one batched judge call, with the reference's guarded rewards (freeform.h).
static void freeform_cluster_groups(Scorer *s, char *const *answers, const char *const *questions, int n, int G,
                                    SemanticGroup *groups) {
    long n_pairs = 0;
    double t0 = now_seconds();
    if (freeform_cluster_batch((const char *const *)answers, questions, n, G, s->ff.judge, s->ff.ctx, &s->ff.cfg,
                               groups, NULL, &n_pairs) != 0)
        FATAL("the equivalence judge failed");
    s->ff.seconds += now_seconds() - t0;
    s->ff.n_pairs += n_pairs;
}

static Scorer scorer_math(void) {
    Scorer s;
    memset(&s, 0, sizeof s);
    s.task = TASK_MATH;
    s.extract = math_extract;
    s.cluster = math_cluster;
    return s;
}
// --task freeform: verifier_path (-R) may be NULL. quiet: no summary line.
static Scorer scorer_freeform(const FreeformConfig *cfg, const char *verifier_path, const char *template_path,
                              int judge_batch, int quiet) {
    Scorer s;
    memset(&s, 0, sizeof s);
    s.task = TASK_FREEFORM;
    s.extract = freeform_extract;
    s.cluster = freeform_cluster_groups;
    s.ff.cfg = *cfg;
    if (verifier_path) {
        s.verifier = (Verifier *)xcalloc(1, sizeof(Verifier));
        verifier_load(s.verifier, verifier_path, template_path, judge_batch);
        s.ff.judge = verifier_judge;
        s.ff.ctx = s.verifier;
        Verifier *v = s.verifier;
        if (!quiet)
            printf("verifier %s: %.2fM params, V=%d L=%d | %s | threshold %.2f | Yes/No token ids %d/%d\n",
                   verifier_path, v->m.num_parameters / 1e6, v->m.config.V, v->m.config.L,
                   cfg->bidirectional ? "bidirectional" : "one-way", cfg->threshold, v->yes_id, v->no_id);
    } else {
        s.ff.judge = ff_exact_judge;
        if (!quiet) printf("--task freeform without -R: answers are equal only when their normalized text is\n");
    }
    return s;
}
static void scorer_free(Scorer *s, int quiet) {
    Verifier *v = s->verifier;
    if (v) {
        if (!quiet && v->n_pairs)
            printf("verifier: %ld pairs judged in %.2f s (%.1f pairs/s), %ld tokens computed, "
                   "%ld from shared prefixes, %ld too long\n", v->n_pairs, v->seconds,
                   v->n_pairs / (v->seconds > 0 ? v->seconds : 1e-9), v->n_tokens, v->n_shared, v->n_too_long);
        verifier_free(v);
        free(v);
    }
    memset(s, 0, sizeof *s);
}

// ----------------------------------------------------------------------------
// 7. rollouts and rewards: the heart of EMPO

enum { REWARD_EMPO, REWARD_GRPO, REWARD_TTRL, REWARD_ENTROPY, REWARD_CERTAINTY };
#define REWARD_CHOICES "empo|grpo|ttrl|entropy|certainty"
static const char *const REWARD_NAMES[] = {"empo", "grpo", "ttrl", "entropy", "certainty"};
enum { CLUSTER_SEMANTIC, CLUSTER_EXACT };
#define ANSWER_CAP 1024

typedef struct {
    int n_prompts, G, n;        // n = n_prompts * G responses; response j answers prompt j / G
    int **prompt_ids, *prompt_len;
    Generation gen;
    char **answer;              // (n) extracted final answer, NULL if none
    float *reward, *adv;        // (n)
    SemanticGroup *group;       // (n_prompts) by the scorer's (semantic) clustering: logged, evaluated
    SemanticGroup *rgroup;      // (n_prompts) by its reward clustering (--cluster exact), else NULL
    int *keep;                  // (n_prompts) 1 if the group goes into the loss
} Rollouts;

static void rollouts_free(Rollouts *r) {
    for (int p = 0; p < r->n_prompts; p++) free(r->prompt_ids[p]);
    for (int j = 0; j < r->n; j++) free(r->answer[j]);
    free(r->prompt_ids);
    free(r->prompt_len);
    free(r->answer);
    free(r->reward);
    free(r->adv);
    free(r->group);
    free(r->rgroup);
    free(r->keep);
    generation_free(&r->gen);
    memset(r, 0, sizeof *r);
}

// Step 1 and 2 of EMPO: samples G responses to each problem, and extracts their final answers.
static void rollouts_sample(Rollouts *r, Model *m, const Tokenizer *tok, const Scorer *scorer, int template_id,
                            const Problem *const *probs, int n_prompts, int G, const SamplerConfig *sc, int verbose) {
    if (G > SC_MAX_G) FATAL("G = %d responses per prompt is more than %d", G, SC_MAX_G);
    memset(r, 0, sizeof *r);
    r->n_prompts = n_prompts;
    r->G = G;
    r->n = n_prompts * G;
    r->prompt_ids = (int **)xmalloc((size_t)n_prompts * sizeof(int *));
    r->prompt_len = (int *)xmalloc((size_t)n_prompts * sizeof(int));
    for (int p = 0; p < n_prompts; p++)
        r->prompt_len[p] = encode_prompt(tok, template_id, probs[p]->problem, m->config.maxT, &r->prompt_ids[p]);
    generate(m, (const int *const *)r->prompt_ids, r->prompt_len, n_prompts, G, sc, &r->gen, verbose);
    r->answer = (char **)xcalloc((size_t)r->n, sizeof(char *));
    #pragma omp parallel for schedule(dynamic, 1)
    for (int j = 0; j < r->n; j++) {
        char *text = decode_response(tok, &r->gen, j);
        char buf[ANSWER_CAP];
        if (scorer->extract(scorer, text, buf, sizeof buf)) r->answer[j] = xstrdup(buf);
        free(text);
    }
    r->reward = (float *)xcalloc((size_t)r->n, sizeof(float));
    r->adv = (float *)xcalloc((size_t)r->n, sizeof(float));
    r->group = (SemanticGroup *)xcalloc((size_t)n_prompts, sizeof(SemanticGroup));
    r->keep = (int *)xcalloc((size_t)n_prompts, sizeof(int));
}

// The reward of response i of a group g (clustered by the reward's clustering), j = its index in r.
//   empo:      r_i = p(cluster of i), the share of the G answers equal to i's (0 without an answer);
//   grpo:      r_i = 1 if i's answer equals the gold answer (the supervised baseline);
//   ttrl:      r_i = 1 if i's answer equals the group's majority answer;
//   entropy:   r_i = -(1/|y_i|) sum_t H(p_t), RENT: minus the mean token entropy of the response;
//   certainty: r_i = (1/|y_i|) sum_t KL(U || p_t), Intuitor's self-certainty.
// The token rewards are of the untempered distribution p_t at each sampled position (engine.h).
static float response_reward(const Rollouts *r, const SemanticGroup *g, const Problem *prob, int reward, int i, int j) {
    const char *a = r->answer[j];
    switch (reward) {
    case REWARD_EMPO: return g->reward[i];
    case REWARD_GRPO: return a && prob && prob->answer && math_answers_equal(a, prob->answer) ? 1.0f : 0.0f;
    case REWARD_TTRL: return a && g->majority >= 0 && g->cluster[i] == g->cluster[g->majority] ? 1.0f : 0.0f;
    case REWARD_ENTROPY: return -r->gen.mean_entropy[j];
    default: return r->gen.mean_certainty[j];
    }
}

// Steps 3 to 6 of EMPO: clusters each group's answers (by the scorer), then rewards each response
// (response_reward). Advantages are normalized within each group. Groups of the answer-agreement
// rewards (empo, ttrl) whose entropy, by the reward's own clustering, falls outside [ent_lo, ent_hi)
// are dropped: at H = log G every answer differs, so there is no consensus to learn from. grpo and the
// token rewards keep every group, as their papers do.
static void rollouts_score(Rollouts *r, Scorer *scorer, const Problem *const *probs, int reward, float ent_lo,
                           float ent_hi) {
    int G = r->G;
    if ((reward == REWARD_ENTROPY || reward == REWARD_CERTAINTY) && (!r->gen.mean_entropy || !r->gen.mean_certainty))
        FATAL("-r %s: this engine's generate() does not compute the token statistics (engine.h)", REWARD_NAMES[reward]);
    const char **qs = (const char **)xmalloc((size_t)(r->n_prompts ? r->n_prompts : 1) * sizeof(char *));
    for (int p = 0; p < r->n_prompts; p++) qs[p] = probs[p] ? probs[p]->problem : "";
    scorer->cluster(scorer, r->answer, qs, r->n_prompts, G, r->group);
    int by_answers = reward == REWARD_EMPO || reward == REWARD_TTRL;
    if (by_answers && scorer->reward_cluster) {
        r->rgroup = (SemanticGroup *)xcalloc((size_t)(r->n_prompts ? r->n_prompts : 1), sizeof(SemanticGroup));
        scorer->reward_cluster(scorer, r->answer, qs, r->n_prompts, G, r->rgroup);
    }
    free(qs);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < r->n_prompts; p++) {
        const SemanticGroup *g = r->rgroup ? &r->rgroup[p] : &r->group[p];
        float *rw = r->reward + (size_t)p * G;
        for (int i = 0; i < G; i++) rw[i] = response_reward(r, g, probs[p], reward, i, p * G + i);
        group_advantages(rw, G, r->adv + (size_t)p * G);
        r->keep[p] = by_answers ? entropy_in_band(g->entropy, ent_lo, ent_hi) : 1;
    }
}

// ----------------------------------------------------------------------------
// 8. the policy-gradient step

typedef struct {
    float lr, beta1, beta2, eps, weight_decay, grad_clip;
    float clip_eps;   // PPO clip range; 0 = off (the paper: off)
    float kl_beta;    // KL-to-reference weight (k3 estimator); 0 = off (the paper: off)
    int micro;        // responses per forward/backward (gradient accumulation over micro-batches)
} TrainConfig;

// Step 7 of EMPO, on one micro-batch, after model_forward(inputs, targets) has left the current
// log-probs in m->logp. Row b is one response with advantage adv[b]; resp_mask marks
// its response tokens (n_b of them). Per token:
//   loss_t = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A) + beta * kl_t,  ratio = exp(logp - old_logp)
//   kl_t   = exp(ref - logp) - (ref - logp) - 1            (k3: unbiased, always >= 0)
// averaged over a response's tokens, then summed with weight `scale` (1 / responses in the whole
// batch, so micro-batches add up to the mean). Sets m->dlogp; returns the loss.
static float policy_objective(Model *m, int B, int T, const float *resp_mask, const float *adv, const float *old_logp,
                              const float *ref_logp, float clip_eps, float kl_beta, float scale) {
    const float *logp = m->logp;
    double loss = 0.0;
    for (int b = 0; b < B; b++) {
        float n = 0.0f;
        for (int t = 0; t < T; t++) n += resp_mask[b * T + t];
        float w = n > 0 ? scale / n : 0.0f, A = adv[b];
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            m->dlogp[i] = 0.0f;
            if (resp_mask[i] == 0.0f) continue;
            // without clipping, ratio = exp(logp - logp.detach()): 1 in value, the gradient is A * dlogp
            float ratio = clip_eps > 0.0f && old_logp ? expf(logp[i] - old_logp[i]) : 1.0f;
            float obj = ratio * A, dobj = ratio * A;   // d obj / d logp
            if (clip_eps > 0.0f) {
                float rc = fminf(fmaxf(ratio, 1.0f - clip_eps), 1.0f + clip_eps);
                if (rc * A < obj) { obj = rc * A; dobj = 0.0f; }   // the clipped branch is flat in logp
            }
            float lt = -obj, dt = -dobj;
            if (kl_beta > 0.0f && ref_logp) {
                float dr = ref_logp[i] - logp[i];
                lt += kl_beta * (expf(dr) - dr - 1.0f);
                dt += kl_beta * (1.0f - expf(dr));
            }
            loss += (double)w * lt;
            m->dlogp[i] = w * dt;
        }
    }
    return (float)loss;
}

// Packs responses idx[0..n) of the rollouts as training rows: prompt + response, right-padded.
// inputs/targets (n, T): targets are the next response tokens, -1 on the prompt and padding; resp_mask
// marks the targets; old_logp holds their sampling-time log-probs. Returns T.
static int pack_rollouts(const Rollouts *r, const int *idx, int n, int maxT, int *inputs, int *targets,
                         float *resp_mask, float *old_logp) {
    int T = 1;
    for (int k = 0; k < n; k++) {
        int j = idx[k], L = r->prompt_len[j / r->G] + r->gen.len[j] - 1;
        if (L > T) T = L;
    }
    if (T > maxT) T = maxT;
    for (int k = 0; k < n; k++) {
        int j = idx[k], P = r->prompt_len[j / r->G], R = r->gen.len[j];
        const int *prompt = r->prompt_ids[j / r->G];
        for (int t = 0; t < T; t++) {
            int s = t < P ? prompt[t] : t - P < R ? r->gen.tokens[j][t - P] : -1;                  // token at t
            int s1 = t + 1 < P ? prompt[t + 1] : t + 1 - P < R ? r->gen.tokens[j][t + 1 - P] : -1;   // at t + 1
            inputs[k * T + t] = s >= 0 ? s : 0;
            int is_resp = t + 1 >= P && s1 >= 0;
            targets[k * T + t] = is_resp ? s1 : -1;   // only the response's tokens are trained on
            resp_mask[k * T + t] = is_resp ? 1.0f : 0.0f;
            old_logp[k * T + t] = is_resp ? r->gen.logprobs[j][t + 1 - P] : 0.0f;
        }
    }
    return T;
}

// Step 8 of EMPO: one optimizer step on the kept groups, accumulating the gradient over micro-batches.
// Responses with zero advantage (and no KL term) give no gradient, so they are skipped, but they
// still count in the mean over responses. Returns the loss; *grad_norm gets the norm before clipping.
static float train_on_rollouts(Model *m, Model *ref, const Rollouts *r, const TrainConfig *tc, float *grad_norm,
                               int *n_trained) {
    int *idx = (int *)xmalloc((size_t)r->n * sizeof(int)), n = 0, n_total = 0;
    for (int j = 0; j < r->n; j++) {
        if (!r->keep[j / r->G]) continue;
        n_total++;
        if (r->adv[j] != 0.0f || tc->kl_beta > 0.0f) idx[n++] = j;
    }
    *n_trained = n;
    *grad_norm = 0.0f;
    if (n == 0) {
        free(idx);
        return 0.0f;
    }
    int maxT = m->config.maxT, mb = tc->micro;
    size_t cells = (size_t)mb * maxT;
    int *inputs = (int *)xmalloc(cells * sizeof(int)), *targets = (int *)xmalloc(cells * sizeof(int));
    float *mask = (float *)xmalloc(cells * sizeof(float)), *old = (float *)xmalloc(cells * sizeof(float));
    float *adv = (float *)xmalloc((size_t)mb * sizeof(float)), *ref_logp = NULL;
    if (ref) ref_logp = (float *)xmalloc(cells * sizeof(float));
    model_zero_grad(m);
    float loss = 0.0f;
    // the LM head and log-softmax on the response rows only (the prompt's rows have no target): the same bits
    m->target_rows_only = 1;
    if (ref) ref->target_rows_only = 1;
    for (int k0 = 0; k0 < n; k0 += mb) {
        int B = n - k0 < mb ? n - k0 : mb;
        int T = pack_rollouts(r, idx + k0, B, maxT, inputs, targets, mask, old);
        for (int b = 0; b < B; b++) adv[b] = r->adv[idx[k0 + b]];
        if (ref) {
            model_forward(ref, inputs, targets, NULL, B, T);
            memcpy(ref_logp, ref->logp, (size_t)B * T * sizeof(float));
        }
        model_forward(m, inputs, targets, NULL, B, T);
        loss += policy_objective(m, B, T, mask, adv, old, ref_logp, tc->clip_eps, tc->kl_beta, 1.0f / n_total);
        model_backward(m);
    }
    m->target_rows_only = 0;
    if (ref) ref->target_rows_only = 0;
    // a non-finite loss skips the update (the engine itself skips one whose gradient norm is not finite)
    *grad_norm = isfinite(loss)
                     ? model_update(m, tc->lr, tc->beta1, tc->beta2, tc->eps, tc->weight_decay, tc->grad_clip)
                     : NAN;
    free(idx);
    free(inputs);
    free(targets);
    free(mask);
    free(old);
    free(adv);
    free(ref_logp);
    return loss;
}


// ----------------------------------------------------------------------------
// 9. evaluation: the paper's protocol is greedy pass@1; with G > 1 samples also maj@G and pass@G

typedef struct {
    int max_new;        // new tokens per response (--eval-n)
    int G;              // samples per problem for maj@G and pass@G; 1: greedy only
    float temperature;  // of those samples, with top_p and top_k
    float top_p;
    int top_k;
    uint64_t seed;
    int batch;          // problems generated together
} EvalConfig;
typedef struct { float greedy, maj, pass, entropy, mean_len; int n, n_long; } EvalResult;   // n_long: of the n

// The per-problem records go to OUT.tmp first (renamed over OUT by eval_result). NULL: none.
static FILE *eval_open_records(const char *out_jsonl, char *tmp_path, size_t cap) {
    if (!out_jsonl) return NULL;
    snprintf(tmp_path, cap, "%s.tmp", out_jsonl);
    FILE *f = fopen(tmp_path, "w");
    if (!f) FATAL("cannot write %s: %s", tmp_path, strerror(errno));
    return f;
}
// The problems that have a gold answer (malloc'd list); none is an error. Problems whose prompt is
// beyond the model's context (too_long) are left out here and counted as wrong by eval_result.
static const Problem **eval_problems(const ProblemSet *ps, int *n_out, const char *what) {
    const Problem **probs = (const Problem **)xmalloc((size_t)ps->n * sizeof(Problem *));
    int n = 0, n_long = 0;
    for (int i = 0; i < ps->n; i++) {
        if (ps->items[i].answer && !ps->items[i].too_long) probs[n++] = &ps->items[i];
        n_long += ps->items[i].answer && ps->items[i].too_long;
    }
    if (n == 0 && n_long) FATAL("%s: every %s is beyond the model's context", ps->path, what);
    if (n == 0) FATAL("%s: no %s has an \"answer\" to evaluate against", ps->path, what);
    *n_out = n;
    return probs;
}
// The progress line of an evaluation, rewritten in place on stderr.
static void eval_progress(int done, int n, int n_greedy, int n_maj, int n_pass, int G, double t0) {
    fprintf(stderr, "\r  eval %d/%d | greedy %.1f%%", done, n, 100.0 * n_greedy / done);
    if (G > 1) fprintf(stderr, " | maj@%d %.1f%% | pass@%d %.1f%%", G, 100.0 * n_maj / done, G, 100.0 * n_pass / done);
    fprintf(stderr, " | %.1f s   ", now_seconds() - t0);
    if (done == n) fputc('\n', stderr);
}
// Closes the per-problem records (written to tmp_path, renamed over out_jsonl) and turns the
// counts into rates. f may be NULL (no records). The problems of ps whose prompt is beyond the
// context (eval_problems left them out) get a record and count as wrong: the rates are over all.
static EvalResult eval_result(FILE *f, const char *tmp_path, const char *out_jsonl, const ProblemSet *ps, int n,
                              int n_greedy, int n_maj, int n_pass, int G, double ent_sum, double len_sum) {
    int n_long = 0;
    for (int i = 0; i < ps->n; i++) {
        const Problem *p = &ps->items[i];
        if (!p->answer || !p->too_long) continue;
        n_long++;
        if (!f) continue;
        fputs("{\"problem\": ", f);
        json_write_str(f, p->problem, strlen(p->problem));
        fputs(", \"answer\": ", f);
        json_write_str(f, p->answer, strlen(p->answer));
        fputs(", \"correct\": false, \"skipped\": \"prompt beyond the model's context\"}\n", f);
    }
    if (f) {
        int bad = ferror(f), e = errno;
        if (fclose(f) != 0 || bad || rename(tmp_path, out_jsonl) != 0) {
            remove(tmp_path);
            FATAL("cannot write %s: %s", out_jsonl, strerror(errno ? errno : e ? e : EIO));
        }
    }
    EvalResult res;
    memset(&res, 0, sizeof res);
    int all = n + n_long;
    res.n = all;
    res.n_long = n_long;
    res.greedy = (float)n_greedy / all;
    res.maj = G > 1 ? (float)n_maj / all : res.greedy;
    res.pass = G > 1 ? (float)n_pass / all : res.greedy;
    res.entropy = G > 1 ? (float)(ent_sum / n) : 0.0f;
    res.mean_len = (float)(len_sum / n);
    return res;
}
static void eval_samplers(const EvalConfig *ec, SamplerConfig *greedy, SamplerConfig *sampled) {
    SamplerConfig g = {0.0f, 1.0f, 0, ec->max_new, 0, ec->seed, 1};   // (eval reads no token statistics)
    SamplerConfig s = {ec->temperature, ec->top_p, ec->top_k, ec->max_new, 0, ec->seed, 1};
    *greedy = g;
    *sampled = s;
}
static void json_field_bool(FILE *f, const char *key, int v) { fprintf(f, ", \"%s\": %s", key, v ? "true" : "false"); }
static void json_field_str(FILE *f, const char *key, const char *v) {
    fprintf(f, ", \"%s\": ", key);
    if (v) json_write_str(f, v, strlen(v));
    else fputs("null", f);
}

static EvalResult freeform_evaluate(Model *m, const Tokenizer *tok, Scorer *scorer, int template_id,
                                    const ProblemSet *ps, const EvalConfig *ec, const char *out_jsonl, int verbose);

// Evaluates every problem with a gold answer. Writes one JSONL record per problem to out_jsonl
// (NULL: none).
static EvalResult evaluate(Model *m, const Tokenizer *tok, Scorer *scorer, int template_id, const ProblemSet *ps,
                           const EvalConfig *ec, const char *out_jsonl, int verbose) {
    if (scorer->task == TASK_FREEFORM)
        return freeform_evaluate(m, tok, scorer, template_id, ps, ec, out_jsonl, verbose);
    char tmp_path[1024];
    FILE *f = eval_open_records(out_jsonl, tmp_path, sizeof tmp_path);
    int n, G = ec->G;
    const Problem **probs = eval_problems(ps, &n, "problem");
    double t0 = now_seconds(), len_sum = 0, ent_sum = 0;
    int n_greedy = 0, n_maj = 0, n_pass = 0;
    SamplerConfig greedy, sampled;
    eval_samplers(ec, &greedy, &sampled);
    for (int i0 = 0; i0 < n; i0 += ec->batch) {
        int nb = n - i0 < ec->batch ? n - i0 : ec->batch;
        Rollouts rg, rs;
        rollouts_sample(&rg, m, tok, scorer, template_id, probs + i0, nb, 1, &greedy, 0);
        if (G > 1) {
            rollouts_sample(&rs, m, tok, scorer, template_id, probs + i0, nb, G, &sampled, 0);
            rollouts_score(&rs, scorer, probs + i0, REWARD_EMPO, 0, 1e9f);
        }
        for (int k = 0; k < nb; k++) {
            const Problem *p = probs[i0 + k];
            int ok = rg.answer[k] && math_answers_equal(rg.answer[k], p->answer);
            n_greedy += ok;
            len_sum += rg.gen.len[k];
            int maj_ok = 0, pass_ok = 0;
            if (G > 1) {
                SemanticGroup *g = &rs.group[k];
                const char *maj = g->majority >= 0 ? rs.answer[k * G + g->majority] : NULL;
                maj_ok = maj && math_answers_equal(maj, p->answer);
                for (int c = 0; c < g->n_clusters && !pass_ok; c++)
                    pass_ok = math_answers_equal(rs.answer[k * G + g->rep[c]], p->answer);
                n_maj += maj_ok;
                n_pass += pass_ok;
                ent_sum += g->entropy;
            }
            if (f) {
                char *text = decode_response(tok, &rg.gen, k);
                fputs("{\"problem\": ", f);
                json_write_str(f, p->problem, strlen(p->problem));
                json_field_str(f, "response", text);
                json_field_str(f, "extracted", rg.answer[k]);
                json_field_str(f, "gold", p->answer);
                json_field_bool(f, "correct", ok);
                if (G > 1) {
                    json_field_bool(f, "maj_correct", maj_ok);
                    json_field_bool(f, "pass_correct", pass_ok);
                    fprintf(f, ", \"entropy\": %.4f", rs.group[k].entropy);
                }
                fputs("}\n", f);
                free(text);
            }
        }
        rollouts_free(&rg);
        if (G > 1) rollouts_free(&rs);
        if (verbose) eval_progress(i0 + nb, n, n_greedy, n_maj, n_pass, G, t0);
    }
    free(probs);
    return eval_result(f, tmp_path, out_jsonl, ps, n, n_greedy, n_maj, n_pass, G, ent_sum, len_sum);
}

// Multiple choice: the letter of the greedy response, and (G > 1) maj@G, pass@G and the entropy over
// the G samples' letters (a response without a letter is a singleton, as in the semantic entropy).
static int mc_score(const Tokenizer *tok, const char *text, const Rollouts *rs, int k, int G, const char **opts,
                    int nc, int gold, int *letter, int *maj_ok, int *pass_ok, float *H) {
    *letter = ff_extract_letter(text, opts, nc);
    if (G > 1) {
        int count[FF_MAX_CHOICES] = {0}, none = 0, best = -1;
        for (int g = 0; g < G; g++) {
            char *t = decode_response(tok, &rs->gen, k * G + g);
            int l = ff_extract_letter(t, opts, nc);
            free(t);
            if (l < 0) {
                none++;
                continue;
            }
            count[l]++;
            *pass_ok |= l == gold;
        }
        for (int l = 0; l < nc; l++) {
            if (count[l] > 0 && (best < 0 || count[l] > count[best])) best = l;
            if (count[l] > 0) *H -= (float)count[l] / G * logf((float)count[l] / G);
        }
        *H += none * (1.0f / G) * logf((float)G);
        *maj_ok = best >= 0 && best == gold;
    }
    return *letter == gold;
}

// Evaluation for --task freeform. Multiple choice: the letter in the last \boxed{} against the gold
// letter (mc_score). Free-form items with an answer: the judge decides, with the gold answer as
// ground truth (one direction, as the reference's accuracy reward); maj@G takes the largest
// cluster's representative.
static EvalResult freeform_evaluate(Model *m, const Tokenizer *tok, Scorer *scorer, int template_id,
                                    const ProblemSet *ps, const EvalConfig *ec, const char *out_jsonl, int verbose) {
    FreeformScorer *fs = &scorer->ff;
    char tmp_path[1024];
    FILE *f = eval_open_records(out_jsonl, tmp_path, sizeof tmp_path);
    int n, G = ec->G;
    const Problem **probs = eval_problems(ps, &n, "question");
    double t0 = now_seconds(), len_sum = 0, ent_sum = 0;
    int n_greedy = 0, n_maj = 0, n_pass = 0;
    SamplerConfig greedy, sampled;
    eval_samplers(ec, &greedy, &sampled);
    for (int i0 = 0; i0 < n; i0 += ec->batch) {
        int nb = n - i0 < ec->batch ? n - i0 : ec->batch;
        Rollouts rg, rs;
        rollouts_sample(&rg, m, tok, scorer, template_id, probs + i0, nb, 1, &greedy, 0);
        int n_free = 0;
        for (int k = 0; k < nb; k++) n_free += probs[i0 + k]->solution == NULL;
        if (G > 1) {   // only free-form items need clusters (multiple choice counts letters)
            rollouts_sample(&rs, m, tok, scorer, template_id, probs + i0, nb, G, &sampled, 0);
            if (n_free > 0) rollouts_score(&rs, scorer, probs + i0, REWARD_EMPO, 0, 1e30f);
        }
        // free-form items: every (gold, candidate) pair of the batch in one judge call:
        // slot k*(1+G) is the greedy answer, then up to G cluster representatives
        size_t slots = (size_t)nb * (1 + G);
        const char **jq = (const char **)xcalloc(slots, sizeof(char *));
        const char **ja = (const char **)xcalloc(slots, sizeof(char *));
        const char **jb = (const char **)xcalloc(slots, sizeof(char *));
        int *slot = (int *)xmalloc(slots * sizeof(int)), nj = 0;
        float *py = (float *)xcalloc(slots, sizeof(float)), *verdict = (float *)xcalloc(slots, sizeof(float));
        for (int k = 0; k < nb; k++) {
            const Problem *p = probs[i0 + k];
            if (p->solution) continue;   // multiple choice: no judge needed
            int nc = 1 + (G > 1 ? rs.group[k].n_clusters : 0);
            for (int j = 0; j < nc; j++) {
                const char *ans = j == 0 ? rg.answer[k] : rs.answer[k * G + rs.group[k].rep[j - 1]];
                if (!ans) continue;
                jq[nj] = p->problem;
                ja[nj] = p->answer;
                jb[nj] = ans;
                slot[nj] = k * (1 + G) + j;
                nj++;
            }
        }
        if (nj > 0 && fs->judge(fs->ctx, jq, ja, jb, nj, py) != 0) FATAL("the judge failed");
        for (int j = 0; j < nj; j++) verdict[slot[j]] = py[j] > fs->cfg.threshold ? 1.0f : 0.0f;
        for (int k = 0; k < nb; k++) {
            const Problem *p = probs[i0 + k];
            char *copy;
            const char *opts[FF_MAX_CHOICES];
            int nc = freeform_choices(p, &copy, opts), gold = p->answer[0] - 'A';
            char *text = decode_response(tok, &rg.gen, k);
            int ok, maj_ok = 0, pass_ok = 0, letter = -1;
            float H = 0.0f;
            if (nc > 0) {
                ok = mc_score(tok, text, &rs, k, G, opts, nc, gold, &letter, &maj_ok, &pass_ok, &H);
            } else {
                ok = verdict[k * (1 + G)] > 0.5f;
                if (G > 1) {
                    SemanticGroup *g = &rs.group[k];
                    for (int c = 0; c < g->n_clusters; c++) {
                        int v = verdict[k * (1 + G) + 1 + c] > 0.5f;
                        pass_ok |= v;
                        if (g->majority >= 0 && g->rep[c] == g->majority) maj_ok = v;
                    }
                    H = g->entropy;
                }
            }
            n_greedy += ok;
            n_maj += maj_ok;
            n_pass += pass_ok;
            ent_sum += H;
            len_sum += rg.gen.len[k];
            if (f) {
                char l[2] = {(char)('A' + letter), 0};
                fputs("{\"question\": ", f);
                json_write_str(f, p->problem, strlen(p->problem));
                json_field_str(f, "response", text);
                json_field_str(f, "extracted", nc > 0 ? (letter >= 0 ? l : NULL) : rg.answer[k]);
                json_field_str(f, "gold", p->answer);
                fprintf(f, ", \"kind\": \"%s\"", nc > 0 ? "choice" : "free");
                json_field_bool(f, "correct", ok);
                if (G > 1) {
                    json_field_bool(f, "maj_correct", maj_ok);
                    json_field_bool(f, "pass_correct", pass_ok);
                    fprintf(f, ", \"entropy\": %.4f", H);
                }
                fputs("}\n", f);
            }
            free(text);
            free(copy);
        }
        free(jq);
        free(ja);
        free(jb);
        free(slot);
        free(py);
        free(verdict);
        rollouts_free(&rg);
        if (G > 1) rollouts_free(&rs);
        if (verbose) eval_progress(i0 + nb, n, n_greedy, n_maj, n_pass, G, t0);
    }
    free(probs);
    return eval_result(f, tmp_path, out_jsonl, ps, n, n_greedy, n_maj, n_pass, G, ent_sum, len_sum);
}

// ----------------------------------------------------------------------------
// 10. the run: data order, checkpoints that resume exactly, the log and its plot

// The data order: a fresh permutation every epoch, from (seed, epoch) alone, so a resumed run
// sees the same prompts as an uninterrupted one.
typedef struct { uint64_t seed; int n, epoch, cursor; int *perm; } DataOrder;
static void data_order_shuffle(DataOrder *d) {
    uint64_t rng = (d->seed + 1) * 0x9E3779B97F4A7C15ull + (uint64_t)d->epoch * 0xBF58476D1CE4E5B9ull + 1;
    for (int i = 0; i < d->n; i++) d->perm[i] = i;
    for (int i = d->n - 1; i > 0; i--) {   // Fisher-Yates
        int k = (int)(random_u32(&rng) % (uint32_t)(i + 1)), t = d->perm[i];
        d->perm[i] = d->perm[k];
        d->perm[k] = t;
    }
}
static void data_order_init(DataOrder *d, int n, uint64_t seed, int epoch, int cursor) {
    d->seed = seed;
    d->n = n;
    d->epoch = epoch;
    d->cursor = cursor;
    d->perm = (int *)xmalloc((size_t)n * sizeof(int));
    data_order_shuffle(d);
}
static int data_order_next(DataOrder *d) {
    if (d->cursor >= d->n) {
        d->epoch++;
        d->cursor = 0;
        data_order_shuffle(d);
    }
    return d->perm[d->cursor++];
}

// The run checkpoint: ONE file, DIR/model.bin, that commits the model, the optimizer, the run state
// and the run's configuration together (doc/formats.md, "Run state"). It is the self-contained
// model checkpoint (-m reads it as any other), followed by a run section and a trailer:
//   1. model_save writes the fp32 model to DIR/model.bin.tmp (itself atomically, via .tmp.tmp);
//   2. the run section is appended: a header (step, data position, seed, run id, the log's length,
//      the identity of the data files), the configuration as JSON, the engine's optimizer block;
//   3. the trailer records the section's length and checksum; the file is synced and renamed over
//      DIR/model.bin. That rename is the commit point: before it, DIR/model.bin is the previous
//      checkpoint, whole; after it, the new one. An interruption leaves at most *.tmp files, which
//      the next run removes.
// The model part carries its own checksum (checkpoint.h); the run section is verified on resume.
#define RUN_MAGIC 0x53504D45u   // "EMPS"
#define RUN_VERSION 3
#define RUN_HEADER_INTS 32
typedef struct {
    int step, epoch, cursor, seed, mode, demo, nonfinite;
    uint64_t run_id, log_bytes, data_size, data_hash, eval_size, eval_hash;
    char *config;           // the run's flags as a JSON object {"-G": "8", ...} (malloc'd)
    long long opt_offset;   // where the optimizer block starts in the file
} RunState;
static void put_u64(int32_t *h, uint64_t v) { h[0] = (int32_t)(uint32_t)v; h[1] = (int32_t)(uint32_t)(v >> 32); }
static uint64_t get_u64(const int32_t *h) { return (uint64_t)(uint32_t)h[0] | (uint64_t)(uint32_t)h[1] << 32; }

// The identity of a data file: its size and checksum. 0 if it cannot be read.
static int file_identity(const char *path, uint64_t *size, uint64_t *hash) {
    size_t n;
    char *buf = path ? read_whole_file(path, &n) : NULL;
    *size = *hash = 0;
    if (!buf) return -1;
    Hash64 h;
    hash64_init(&h);
    hash64_update(&h, buf, n);
    *size = n;
    *hash = hash64_final(&h);
    free(buf);
    return 0;
}

// Writes the checkpoint of a run at rs->step (see above). Exits with one line on failure, leaving
// DIR/model.bin as it was: a full disk, a non-finite weight (ckpt_save refuses it), a write error.
static void run_state_commit(const char *dir, const Model *m, const RunState *rs) {
    char path[1100], part[1100], err[1400];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    snprintf(part, sizeof part, "%s/model.bin.tmp", dir);
    if (model_save(m, part, CKPT_DTYPE_FP32, err, sizeof err) != 0)
        FATAL("%s (%s/model.bin, the previous checkpoint if any, is unchanged)", err, dir);
    FILE *f = fopen(part, "r+b");
    int e = 0;
    long long base = -1;
    if (f && fseek(f, 0, SEEK_END) == 0) base = ftell(f);
    int32_t h[RUN_HEADER_INTS];
    memset(h, 0, sizeof h);
    h[0] = (int32_t)RUN_MAGIC; h[1] = RUN_VERSION; h[2] = rs->step; h[3] = rs->epoch; h[4] = rs->cursor;
    h[5] = rs->seed; h[6] = rs->mode; h[7] = rs->demo; h[8] = rs->nonfinite;
    put_u64(&h[10], rs->run_id); put_u64(&h[12], rs->log_bytes); put_u64(&h[14], rs->data_size);
    put_u64(&h[16], rs->data_hash); put_u64(&h[18], rs->eval_size); put_u64(&h[20], rs->eval_hash);
    put_u64(&h[22], (uint64_t)m->num_parameters);
    size_t clen = strlen(rs->config);
    h[24] = (int32_t)clen;
    int ok = f && base > 0 && fwrite(h, sizeof h, 1, f) == 1 && fwrite(rs->config, 1, clen, f) == clen &&
             model_save_optimizer(m, f) == 0 && fflush(f) == 0;
    if (!ok) e = errno;
    long long end = ok ? ftell(f) : -1;
    // the checksum of the section, read back (the optimizer block is the engine's to write)
    Hash64 hs;
    hash64_init(&hs);
    if (ok && fseek(f, (long)base, SEEK_SET) == 0) {
        unsigned char buf[1 << 16];
        for (long long left = end - base; ok && left > 0;) {
            size_t k = left < (long long)sizeof buf ? (size_t)left : sizeof buf;
            ok = fread(buf, 1, k, f) == k;
            hash64_update(&hs, buf, k);
            left -= (long long)k;
        }
        if (!ok) e = errno;
    } else if (ok) ok = 0, e = errno;
    int32_t t[8] = {(int32_t)CKPT_RUN_MAGIC, CKPT_RUN_VERSION, 0, 0, 0, 0, 0, 0};
    put_u64(&t[2], (uint64_t)(end - base));
    put_u64(&t[4], hash64_final(&hs));
    if (ok) ok = fseek(f, 0, SEEK_END) == 0 && fwrite(t, sizeof t, 1, f) == 1 && fflush(f) == 0;
    if (!ok && !e) e = errno;
    if (ok && util_fault_point(f, base, end + CKPT_TRAILER_BYTES) != 0) ok = 0, e = errno;
    if (ok && fsync(fileno(f)) != 0 && errno != EINVAL) ok = 0, e = errno;
    if (f && fclose(f) != 0 && ok) ok = 0, e = errno;
    if (ok && rename(part, path) != 0) ok = 0, e = errno;
    if (!ok) {
        remove(part);
        FATAL("cannot write %s: %s (the previous checkpoint, if any, is unchanged)", path, strerror(e ? e : EIO));
    }
    util_sync_dir_of(path);
}

// Reads the run state of DIR/model.bin: the header and the configuration, after checking the
// section's checksum. The optimizer block is left for run_state_load_optimizer. -1 with one line in
// err if the file has no run state, or a damaged one.
static int run_state_read(const char *dir, RunState *rs, char *err, size_t errcap) {
    char path[1100];
    memset(rs, 0, sizeof *rs);
    snprintf(path, sizeof path, "%s/model.bin", dir);
    char why[256];
    const char *nr = util_not_regular(path, why, sizeof why);
    if (nr) { snprintf(err, errcap, "%s: %s (nothing to resume)", path, nr); return -1; }
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errcap, "%s: %s", path, strerror(errno)); return -1; }
    int32_t ch[CKPT_HEADER_INTS], t[8];
    long long fsize = -1;
    int ok = fread(ch, sizeof ch, 1, f) == 1 && fseek(f, 0, SEEK_END) == 0 && (fsize = ftell(f)) >= 0;
    if (!ok || (uint32_t)ch[0] != CKPT_MAGIC) {
        fclose(f);
        snprintf(err, errcap, "%s: not an empo.c checkpoint", path);
        return -1;
    }
    ok = fsize >= (long long)sizeof ch + CKPT_TRAILER_BYTES &&
         fseek(f, (long)(fsize - CKPT_TRAILER_BYTES), SEEK_SET) == 0 && fread(t, sizeof t, 1, f) == 1 &&
         (uint32_t)t[0] == CKPT_RUN_MAGIC;
    if (!ok) {
        fclose(f);
        if (ch[2] == CKPT_DTYPE_BF16)
            snprintf(err, errcap, "%s: saved with -S bf16, which keeps only rounded weights and no run state: "
                     "a bf16 run cannot be resumed (train with -S fp32 to be able to)", path);
        else snprintf(err, errcap, "%s: holds a model but no run state (not the checkpoint of a training run)", path);
        return -1;
    }
    long long len = (long long)get_u64(&t[2]), off = fsize - CKPT_TRAILER_BYTES - len;
    ok = t[1] == CKPT_RUN_VERSION && len >= (long long)(RUN_HEADER_INTS * 4) && off > (long long)sizeof ch &&
         fseek(f, (long)off, SEEK_SET) == 0;
    Hash64 hs;
    hash64_init(&hs);
    unsigned char buf[1 << 16];
    for (long long left = len; ok && left > 0;) {
        size_t k = left < (long long)sizeof buf ? (size_t)left : sizeof buf;
        ok = fread(buf, 1, k, f) == k;
        hash64_update(&hs, buf, k);
        left -= (long long)k;
    }
    if (!ok || hash64_final(&hs) != get_u64(&t[4])) {
        fclose(f);
        snprintf(err, errcap, "%s: the run state is damaged (checksum mismatch or truncated)", path);
        return -1;
    }
    int32_t h[RUN_HEADER_INTS];
    ok = fseek(f, (long)off, SEEK_SET) == 0 && fread(h, sizeof h, 1, f) == 1 && (uint32_t)h[0] == RUN_MAGIC;
    if (!ok || h[1] != RUN_VERSION) {
        fclose(f);
        snprintf(err, errcap, "%s: unsupported run state (version %d; this build reads %d)", path, ok ? h[1] : -1,
                 RUN_VERSION);
        return -1;
    }
    rs->step = h[2]; rs->epoch = h[3]; rs->cursor = h[4]; rs->seed = h[5]; rs->mode = h[6]; rs->demo = h[7];
    rs->nonfinite = h[8];
    rs->run_id = get_u64(&h[10]); rs->log_bytes = get_u64(&h[12]); rs->data_size = get_u64(&h[14]);
    rs->data_hash = get_u64(&h[16]); rs->eval_size = get_u64(&h[18]); rs->eval_hash = get_u64(&h[20]);
    long long clen = h[24];
    if (clen < 2 || clen > len - RUN_HEADER_INTS * 4 || rs->step < 0 || rs->epoch < 0 || rs->cursor < 0) {
        fclose(f);
        snprintf(err, errcap, "%s: the run state is inconsistent", path);
        return -1;
    }
    rs->config = (char *)xmalloc((size_t)clen + 1);
    ok = fread(rs->config, 1, (size_t)clen, f) == (size_t)clen;
    rs->config[clen] = 0;
    rs->opt_offset = off + RUN_HEADER_INTS * 4 + clen;
    fclose(f);
    if (!ok) {
        free(rs->config);
        rs->config = NULL;
        snprintf(err, errcap, "%s: the run state is truncated", path);
        return -1;
    }
    return 0;
}
// The optimizer block of DIR/model.bin into m (whose weights model_load read from the same file).
static void run_state_load_optimizer(const char *dir, const RunState *rs, Model *m) {
    char path[1100], err[512];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    FILE *f = fopen(path, "rb");
    if (!f) FATAL("%s: %s", path, strerror(errno));
    if (fseek(f, (long)rs->opt_offset, SEEK_SET) != 0) FATAL("%s: cannot seek to the optimizer state", path);
    if (model_load_optimizer(m, f, err, sizeof err) != 0) FATAL("%s: %s", path, err);
    int32_t t0;
    if (fread(&t0, 4, 1, f) != 1 || (uint32_t)t0 != CKPT_RUN_MAGIC)
        FATAL("%s: the optimizer state does not end where the run state says", path);
    fclose(f);
}

// The curves: an SVG with four panels (accuracy, reward, entropy, response length) drawn from
// the run's log.jsonl, with no dependencies.
typedef struct { const char *key, *label; } Series;
typedef struct { int n, cap; float *x, *y; } Curve;
static void curve_add(Curve *c, float x, float y) {
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->x = (float *)realloc(c->x, (size_t)c->cap * sizeof(float));
        c->y = (float *)realloc(c->y, (size_t)c->cap * sizeof(float));
        if (!c->x || !c->y) FATAL("out of memory plotting");
    }
    c->x[c->n] = x;
    c->y[c->n] = y;
    c->n++;
}
// The plot: panels of curves, each with ticks and values on both axes, light gridlines, and its legend
// to the right of the plot area, where it cannot cover a curve. The per-run curves.svg and the reward
// comparison (dev/compare_rewards.c) both draw with svg_panels.
#define PLOT_MAX_LINES 8
typedef struct { const char *label, *color; const Curve *c; } PlotLine;
typedef struct {
    const char *title, *ylabel;
    int unit_range;   // y from 0 to 1 (accuracies), whatever the data
    int n;
    PlotLine line[PLOT_MAX_LINES];
} PlotPanel;
typedef struct { const PlotPanel *panel; int n, cols; } PlotPage;
static const char *const PLOT_COLORS[PLOT_MAX_LINES] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                        "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
#define PLOT_W 360      // plot area of one panel, pixels
#define PLOT_H 220
#define PLOT_LEGEND 190 // the legend's column, right of the plot area
#define PLOT_MARGIN 64  // left of the plot area: the y tick values
// Ticks at a "nice" step (1, 2 or 5 x 10^k) giving about 5 intervals over [lo, hi]; widens [lo, hi]
// to whole steps. Returns the step.
static double nice_ticks(double *lo, double *hi) {
    double span = *hi - *lo, raw = span / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
    return step;
}
static void svg_panel(FILE *f, const PlotPanel *pp, int ox, int oy) {
    int pw = PLOT_W, ph = PLOT_H;
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (int l = 0; l < pp->n; l++)
        for (int i = 0; i < pp->line[l].c->n; i++) {
            x0 = fmin(x0, pp->line[l].c->x[i]);
            x1 = fmax(x1, pp->line[l].c->x[i]);
            y0 = fmin(y0, pp->line[l].c->y[i]);
            y1 = fmax(y1, pp->line[l].c->y[i]);
        }
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", ox, oy - 10, pp->title);
    if (x0 > x1) {   // nothing logged for this panel
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", ox, oy, pw,
                ph);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#888\">(not logged)</text>\n", ox + pw / 2,
                oy + ph / 2);
        return;
    }
    if (pp->unit_range) {
        y0 = fmin(y0, 0.0);
        y1 = fmax(y1, 1.0);
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) {
        y1 += 0.5;
        y0 -= 0.5;
    }
    double xs = nice_ticks(&x0, &x1), ys = nice_ticks(&y0, &y1);
    if (xs < 1) {   // steps are whole numbers
        xs = 1;
        x0 = floor(x0);
        x1 = ceil(x1);
    }
    // gridlines and tick values, then the frame over them, then the curves
    for (double v = x0; v <= x1 + xs * 1e-6; v += xs) {
        double px = ox + (v - x0) / (x1 - x0) * pw;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e6e6e6\"/>\n", px, oy, px, oy + ph);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#888\"/>\n", px, oy + ph, px,
                oy + ph + 4);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", px, oy + ph + 16, v);
    }
    for (double v = y0; v <= y1 + ys * 1e-6; v += ys) {
        double py = oy + ph - (v - y0) / (y1 - y0) * ph, shown = fabs(v) < ys * 1e-6 ? 0.0 : v;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e6e6e6\"/>\n", ox, py, ox + pw, py);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#888\"/>\n", ox - 4, py, ox, py);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", ox - 6, py + 4, shown);
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", ox, oy, pw, ph);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#555\">step</text>\n", ox + pw / 2, oy + ph + 32);
    if (pp->ylabel)
        fprintf(f, "<text transform=\"translate(%d,%d) rotate(-90)\" text-anchor=\"middle\" fill=\"#555\">%s</text>\n",
                ox - PLOT_MARGIN + 14, oy + ph / 2, pp->ylabel);
    int legend = 0;
    for (int l = 0; l < pp->n; l++) {
        const Curve *c = pp->line[l].c;
        if (c->n == 0) continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"", pp->line[l].color);
        for (int i = 0; i < c->n; i++)
            fprintf(f, "%.1f,%.1f ", ox + (c->x[i] - x0) / (x1 - x0) * pw, oy + ph - (c->y[i] - y0) / (y1 - y0) * ph);
        fprintf(f, "\"/>\n");
        if (c->n == 1)   // a single point draws no line: mark it
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", ox + (c->x[0] - x0) / (x1 - x0) * pw,
                    oy + ph - (c->y[0] - y0) / (y1 - y0) * ph, pp->line[l].color);
        int ly = oy + 10 + 18 * legend++;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>\n", ox + pw + 12,
                ly - 4, ox + pw + 32, ly - 4, pp->line[l].color);
        fprintf(f, "<text x=\"%d\" y=\"%d\">%s</text>\n", ox + pw + 38, ly, pp->line[l].label);
    }
}
static int svg_panels(FILE *f, const void *user) {
    const PlotPage *pg = (const PlotPage *)user;
    int cols = pg->cols < 1 ? 1 : pg->cols, rows = (pg->n + cols - 1) / cols;
    int cw = PLOT_MARGIN + PLOT_W + PLOT_LEGEND, chh = PLOT_H + 80;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n", cols * cw + 10, rows * chh + 20);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    for (int p = 0; p < pg->n; p++) svg_panel(f, &pg->panel[p], PLOT_MARGIN + (p % cols) * cw, 40 + (p / cols) * chh);
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}

// curves.svg of a run, from its log.jsonl: accuracy, reward, entropy, length; an SFT run (no reward
// logged) draws its loss instead of the reward and entropy panels.
#define PLOT_SERIES 7
static const Series PLOT[PLOT_SERIES] = {
    {"eval_greedy", "greedy pass@1"},   {"eval_maj", "maj@G"},           {"reward", "mean reward"},
    {"entropy", "semantic entropy"},    {"eval_entropy", "eval entropy"}, {"resp_len", "response length"},
    {"loss", "SFT loss"}};
static int plot_collect(const JDoc *d, int root, int line, void *user) {
    Curve *c = (Curve *)user;
    int st = json_get(d, root, "step");
    if (json_type(d, st) != J_NUM) return 0;
    for (int s = 0; s < PLOT_SERIES; s++) {
        int v = json_get(d, root, PLOT[s].key);
        if (json_type(d, v) == J_NUM) curve_add(&c[s], (float)json_num(d, st, 0), (float)json_num(d, v, 0));
    }
    return 0;
}
static void write_plot(const char *dir) {
    char log_path[1024], svg_path[1024], err[512];
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", dir);
    snprintf(svg_path, sizeof svg_path, "%s/curves.svg", dir);
    Curve c[PLOT_SERIES];
    memset(c, 0, sizeof c);
    if (jsonl_foreach(log_path, 0, plot_collect, c) < 0) return;
    PlotPanel pan[4];
    memset(pan, 0, sizeof pan);
    int np = 0, sft = c[2].n == 0 && c[6].n > 0;
#define PANEL(t, yl, unit) (pan[np].title = (t), pan[np].ylabel = (yl), pan[np].unit_range = (unit), &pan[np++])
#define LINE(P, s) ((P)->line[(P)->n].label = PLOT[s].label, (P)->line[(P)->n].color = PLOT_COLORS[s], \
                    (P)->line[(P)->n++].c = &c[s])
    PlotPanel *acc = PANEL("held-out accuracy", "accuracy", 1);
    LINE(acc, 0);
    LINE(acc, 1);
    if (sft) {
        PlotPanel *loss = PANEL("SFT loss (mean NLL of the response tokens)", "nats per token", 0);
        LINE(loss, 6);
    } else {
        PlotPanel *rw = PANEL("mean reward", "reward", 0), *ent = PANEL("semantic entropy", "nats", 0);
        LINE(rw, 2);
        LINE(ent, 3);
        LINE(ent, 4);
    }
    PlotPanel *len = PANEL("response length", "tokens", 0);
    LINE(len, 5);
#undef PANEL
#undef LINE
    (void)len;
    PlotPage page = {pan, sft ? 2 : np, 2};   // SFT logs no rollout length: two panels
    if (write_file_atomic(svg_path, svg_panels, &page, err, sizeof err) != 0) fprintf(stderr, "warning: %s\n", err);
    for (int s = 0; s < PLOT_SERIES; s++) {
        free(c[s].x);
        free(c[s].y);
    }
}

// ----------------------------------------------------------------------------
// 11. the modes: the training loop (EMPO, GRPO, TTRL, SFT), eval, one prompt, tokenize

enum { MODE_TRAIN, MODE_SFT, MODE_EVAL, MODE_PROMPT, MODE_TOKENIZE };
typedef struct {
    int mode;
    const char *model_path, *data_path, *sft_path, *eval_path, *out_dir, *resume_dir, *prompt_text, *init_spec;
    int reward, cluster, G, prompts_per_step, steps, max_new, eval_max_new, eval_every, ckpt_every, eval_G, eval_batch;
    int template_id;   // -1: chosen by the tokenizer (CoT for Qwen vocabularies, plain for small ones)
    int top_k, save_dtype, quiet, seed, help, tokenize;
    float temperature, top_p, eval_temperature, ent_lo, ent_hi;   // ent_hi < 0: log G
    TrainConfig tc;
    // --task freeform (doc/freeform.md)
    int extract_policy;                              // --extract: MV_EXTRACT_* of math_verify.h
    int task;                                        // TASK_MATH or TASK_FREEFORM
    const char *verifier_path, *judge_template_path; // -R, --judge-template (NULL: the default template)
    int judge_batch;                                 // pairs per verifier pass (KV cache memory)
    FreeformConfig ff;                               // judge direction/threshold and the reward guards
    // data checks and resume (doc/formats.md)
    int skip_bad, skip_long;   // --skip-bad-lines, --skip-long-prompts
    int override_cfg;          // --override: resume although flags or data differ from the stored run
    int demo;                  // the embedded default run's defaults were used (stored with the run)
    RunState resumed;          // with --resume: the state read from DIR/model.bin (parse_flags)
    char *overrides;           // with --override: the differences, a JSON object for the log (or NULL)
    char *owned[96];           // strings parse_flags restored from a stored run (run_config_free frees them)
    int n_owned;
} RunConfig;

// A fresh model with the byte-level tokenizer, from an --init spec (model.h): "C=128,L=4,NH=4,NKV=2,I=384,T=256".
static void model_init_spec(Model *m, const char *spec, uint64_t seed) {
    ModelConfig c;
    char err[256];
    if (model_spec_parse(spec, &c, err, sizeof err)) FATAL("--init: %s", err);
    Tokenizer tok;
    if (tokenizer_init_bytes(&tok) != 0) FATAL("out of memory");
    if (c.V == 0) c.V = tok.n_vocab;
    if (c.V < tok.n_vocab) FATAL("--init: V=%d is smaller than the byte tokenizer's %d ids", c.V, tok.n_vocab);
    const char *bad = cfg_invalid(&c);
    if (bad) FATAL("--init: %s", bad);
    model_init_random(m, &c, seed);
    m->tok = tokenizer_to_blob(&tok, &m->tok_bytes);
    m->n_eos = tokenizer_eos_ids(&tok, m->eos, CKPT_MAX_EOS);
    tokenizer_free(&tok);
}

// The model of a run (-m, --init, or --resume's) and its tokenizer.
static void load_model_and_tokenizer(Model *m, Tokenizer *tok, const RunConfig *rc) {
    char err[512], path[1100];
    if (rc->init_spec && !rc->resume_dir) {
        model_init_spec(m, rc->init_spec, (uint64_t)rc->seed);
    } else {
        if (rc->resume_dir) snprintf(path, sizeof path, "%s/model.bin", rc->resume_dir);
        else snprintf(path, sizeof path, "%s", rc->model_path);
        if (model_load(m, path, err, sizeof err) != 0) FATAL("%s", err);
    }
    load_tokenizer(tok, m, rc->model_path);
}
static int pick_template(const RunConfig *rc, const Tokenizer *tok) {
    return rc->template_id >= 0 ? rc->template_id : tok->n_vocab > 1000 ? TEMPLATE_QWEN_MATH_COT : TEMPLATE_PLAIN;
}
static Scorer scorer_for(const RunConfig *rc) {
    if (rc->task == TASK_FREEFORM && rc->cluster == CLUSTER_EXACT)
        FATAL("--cluster exact is the EMPO reference's clustering of math answers: it needs --task math");
    if (rc->task == TASK_FREEFORM)
        return scorer_freeform(&rc->ff, rc->verifier_path, rc->judge_template_path, rc->judge_batch, rc->quiet);
    Scorer s = scorer_math();
    s.extract_policy = rc->extract_policy;
    if (rc->cluster == CLUSTER_EXACT) s.reward_cluster = exact_cluster;
    return s;
}
static void load_problems(ProblemSet *ps, const RunConfig *rc, const char *path) {
    if (rc->task == TASK_FREEFORM) problems_read(ps, path, freeform_add, "question", rc->skip_bad);
    else problems_read(ps, path, problems_add, "problem", rc->skip_bad);
}
static EvalConfig eval_config(const RunConfig *rc) {
    EvalConfig ec = {rc->eval_max_new, rc->eval_G, rc->eval_temperature, rc->top_p, rc->top_k, (uint64_t)rc->seed,
                     rc->eval_batch};
    return ec;
}

// What a run holds: the model (and the frozen reference for KL), the tokenizer, the scorer, the
// data in its order, and the log.
typedef struct {
    const RunConfig *rc;
    Model m, ref;
    int use_ref, template_id, start;
    Tokenizer tok;
    Scorer scorer;
    ProblemSet data, evalset;
    DataOrder order;
    float ent_hi;
    FILE *log;
    char eval_out[1200];
    int step;                   // the step being run (the fault injection of the tests reads it)
    uint64_t run_id, data_size, data_hash, eval_size, eval_hash;
    int nonfinite;              // steps skipped for a non-finite loss or gradient norm, in all
} Run;

// Test hook (doc/formats.md, "Fault injection"): EMPO_FAULT=nan:K poisons the gradients of every
// step >= K, as a diverging run would; EMPO_FAULT=signal:K sends SIGINT to the process during step K.
static int fault_at(const char *kind, int step) {
    const char *f = getenv("EMPO_FAULT");
    size_t n = strlen(kind);
    if (!f || strncmp(f, kind, n) != 0 || f[n] != ':') return 0;
    int k = atoi(f + n + 1);
    return !strcmp(kind, "nan") ? step >= k : step == k;
}

// The numbers of one step, for the log line and the console.
typedef struct {
    float loss, norm, reward, entropy, clusters, kept, resp_len, tok_s;
    double t_gen, t_score, t_train, t_step;
} StepStats;

// One SFT step: cross-entropy on prompt + solution + <|im_end|>, masked to the response.
static StepStats sft_step(Run *run, const Problem *const *batch, int B) {
    const RunConfig *rc = run->rc;
    int maxT = run->m.config.maxT, T = 1, im_end = tokenizer_special_id(&run->tok, "<|im_end|>");
    double t0 = now_seconds();
    int **seqs = (int **)xmalloc((size_t)B * sizeof(int *));
    int *lens = (int *)xmalloc((size_t)B * sizeof(int)), *plens = (int *)xmalloc((size_t)B * sizeof(int));
    for (int b = 0; b < B; b++) {
        int *pids, *sids;
        int P = encode_prompt(&run->tok, run->template_id, batch[b]->problem, maxT, &pids);
        int S = tokenizer_encode(&run->tok, batch[b]->solution, strlen(batch[b]->solution), 0, &sids);
        if (S < 0) FATAL("cannot encode a solution");
        seqs[b] = (int *)xmalloc((size_t)(P + S + 1) * sizeof(int));
        memcpy(seqs[b], pids, (size_t)P * sizeof(int));
        memcpy(seqs[b] + P, sids, (size_t)S * sizeof(int));
        seqs[b][P + S] = im_end;
        lens[b] = P + S + 1 > maxT ? maxT : P + S + 1;
        plens[b] = P;
        if (lens[b] - 1 > T) T = lens[b] - 1;
        free(pids);
        free(sids);
    }
    int *inputs = (int *)xmalloc((size_t)B * T * sizeof(int)), *targets = (int *)xmalloc((size_t)B * T * sizeof(int));
    float *mask = (float *)xmalloc((size_t)B * T * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            inputs[b * T + t] = t < lens[b] ? seqs[b][t] : 0;
            targets[b * T + t] = t + 1 < lens[b] ? seqs[b][t + 1] : -1;
            mask[b * T + t] = t + 1 >= plens[b] && t + 1 < lens[b] ? 1.0f : 0.0f;
        }
    double t1 = now_seconds();
    model_forward(&run->m, inputs, targets, mask, B, T);
    if (fault_at("nan", run->step)) run->m.dlogp[0] = NAN;
    model_zero_grad(&run->m);
    model_backward(&run->m);
    StepStats st;
    memset(&st, 0, sizeof st);
    const TrainConfig *tc = &rc->tc;
    st.loss = run->m.mean_loss;
    // a non-finite loss skips the update (the engine itself skips one whose gradient norm is not finite)
    st.norm = isfinite(st.loss) ? model_update(&run->m, tc->lr, tc->beta1, tc->beta2, tc->eps, tc->weight_decay,
                                               tc->grad_clip) : NAN;
    st.t_train = now_seconds() - t1;
    st.t_step = now_seconds() - t0;
    for (int b = 0; b < B; b++) free(seqs[b]);
    free(seqs);
    free(lens);
    free(plens);
    free(inputs);
    free(targets);
    free(mask);
    return st;
}

// One EMPO step (or GRPO / TTRL): sample, score, train.
static StepStats empo_step(Run *run, const Problem *const *batch, int B, int step) {
    const RunConfig *rc = run->rc;
    double t0 = now_seconds();
    SamplerConfig sc = {rc->temperature, rc->top_p, rc->top_k, rc->max_new, 0,
                        (uint64_t)rc->seed * 1000003ull + (uint64_t)step,
                        rc->reward != REWARD_ENTROPY && rc->reward != REWARD_CERTAINTY};
    Rollouts r;
    int verbose = !rc->quiet && (long)B * rc->G * rc->max_new > 200000;
    rollouts_sample(&r, &run->m, &run->tok, &run->scorer, run->template_id, batch, B, rc->G, &sc, verbose);
    double t1 = now_seconds();
    rollouts_score(&r, &run->scorer, batch, rc->reward, rc->ent_lo, run->ent_hi);
    if (fault_at("nan", step))
        for (int j = 0; j < r.n; j++) r.adv[j] = NAN;
    double t2 = now_seconds();
    StepStats st;
    memset(&st, 0, sizeof st);
    int n_trained;
    st.loss = train_on_rollouts(&run->m, run->use_ref ? &run->ref : NULL, &r, &rc->tc, &st.norm, &n_trained);
    double t3 = now_seconds(), rsum = 0, esum = 0, csum = 0, lsum = 0;
    int kept = 0;
    for (int j = 0; j < r.n; j++) {
        rsum += r.reward[j];
        lsum += r.gen.len[j];
    }
    for (int p = 0; p < B; p++) {
        esum += r.group[p].entropy;
        csum += r.group[p].n_clusters;
        kept += r.keep[p];
    }
    st.reward = (float)(rsum / r.n);
    st.entropy = (float)(esum / B);
    st.clusters = (float)(csum / B);
    st.kept = (float)kept / B;
    st.resp_len = (float)(lsum / r.n);
    st.tok_s = (float)(lsum / (t1 - t0));
    st.t_gen = t1 - t0;
    st.t_score = t2 - t1;
    st.t_train = t3 - t2;
    st.t_step = t3 - t0;
    rollouts_free(&r);
    return st;
}

// One JSON number, or null when it is not finite (NaN is not JSON).
static void json_num_or_null(FILE *f, const char *key, double v, const char *fmt) {
    fprintf(f, ", \"%s\": ", key);
    if (isfinite(v)) fprintf(f, fmt, v);
    else fputs("null", f);
}

// One line in log.jsonl and one on the console per step. A step whose loss or gradient norm is not
// finite was skipped: its line says "skipped": "non-finite", with null for the non-finite values.
static void log_step(const Run *run, int step, const StepStats *st) {
    const RunConfig *rc = run->rc;
    int skipped = !isfinite(st->loss) || !isfinite(st->norm);
    if (rc->mode == MODE_SFT) {
        fprintf(run->log, "{\"step\": %d", step);
        json_num_or_null(run->log, "loss", st->loss, "%.6f");
        json_num_or_null(run->log, "grad_norm", st->norm, "%.4f");
        fprintf(run->log, ", \"time\": %.3f%s}\n", st->t_step, skipped ? ", \"skipped\": \"non-finite\"" : "");
        if (!rc->quiet)
            printf("step %5d/%d | loss %.4f | grad norm %.3f | %.0f ms%s\n", step, rc->steps, st->loss, st->norm,
                   st->t_step * 1e3, skipped ? " | SKIPPED: non-finite" : "");
    } else {
        fprintf(run->log, "{\"step\": %d, \"reward\": %.4f, \"entropy\": %.4f, \"clusters\": %.3f, \"kept\": %.3f, "
                "\"resp_len\": %.2f", step, st->reward, st->entropy, st->clusters, st->kept, st->resp_len);
        json_num_or_null(run->log, "loss", st->loss, "%.6f");
        json_num_or_null(run->log, "grad_norm", st->norm, "%.4f");
        fprintf(run->log, ", \"gen_tok_s\": %.1f, \"t_gen\": %.3f, \"t_score\": %.4f, \"t_train\": %.3f%s}\n",
                st->tok_s, st->t_gen, st->t_score, st->t_train, skipped ? ", \"skipped\": \"non-finite\"" : "");
        if (!rc->quiet)
            printf("step %5d/%d | reward %.3f | entropy %.3f | clusters %.2f | kept %3.0f%% | len %5.1f | "
                   "loss %+.4f | norm %.3f | %6.0f tok/s | gen %.2fs score %.3fs train %.2fs%s\n", step, rc->steps,
                   st->reward, st->entropy, st->clusters, 100.0 * st->kept, st->resp_len, st->loss, st->norm,
                   st->tok_s, st->t_gen, st->t_score, st->t_train, skipped ? " | SKIPPED: non-finite" : "");
    }
    fflush(run->log);
    fflush(stdout);
}

static void log_eval(FILE *logf, int step, const EvalResult *e, int G) {
    printf("eval  step %5d | greedy pass@1 %5.1f%% | maj@%d %5.1f%% | pass@%d %5.1f%% | entropy %.3f | length %.1f\n",
           step, 100 * e->greedy, G, 100 * e->maj, G, 100 * e->pass, e->entropy, e->mean_len);
    fprintf(logf, "{\"step\": %d, \"eval_greedy\": %.4f, \"eval_maj\": %.4f, \"eval_pass\": %.4f, "
            "\"eval_entropy\": %.4f, \"eval_len\": %.2f}\n", step, e->greedy, e->maj, e->pass, e->entropy, e->mean_len);
    fflush(logf);
    fflush(stdout);
}
static void run_evaluate(Run *run, int step) {
    const RunConfig *rc = run->rc;
    EvalConfig ec = eval_config(rc);
    EvalResult e = evaluate(&run->m, &run->tok, &run->scorer, run->template_id, &run->evalset, &ec, run->eval_out,
                            !rc->quiet);
    log_eval(run->log, step, &e, rc->eval_G);
    write_plot(rc->out_dir);
}
static char *config_to_json(const RunConfig *rc);   // section 12: the run's flags as a JSON object

// The checkpoint of step `step`: with -S fp32 (the default) one committed file with the model, the
// optimizer, the run state and the configuration (run_state_commit); with -S bf16 the rounded weights
// alone, which cannot be resumed (run_open says so at the start).
static void run_checkpoint(Run *run, int step) {
    const RunConfig *rc = run->rc;
    if (rc->save_dtype == CKPT_DTYPE_FP32) {
        RunState rs;
        memset(&rs, 0, sizeof rs);
        rs.step = step;
        rs.epoch = run->order.epoch;
        rs.cursor = run->order.cursor;
        rs.seed = rc->seed;
        rs.mode = rc->mode;
        rs.demo = rc->demo;
        rs.nonfinite = run->nonfinite;
        rs.run_id = run->run_id;
        fflush(run->log);
        long lb = ftell(run->log);
        rs.log_bytes = lb > 0 ? (uint64_t)lb : 0;
        rs.data_size = run->data_size; rs.data_hash = run->data_hash;
        rs.eval_size = run->eval_size; rs.eval_hash = run->eval_hash;
        rs.config = config_to_json(rc);
        run_state_commit(rc->out_dir, &run->m, &rs);
        free(rs.config);
    } else {
        char path[1100], err[1400];
        snprintf(path, sizeof path, "%s/model.bin", rc->out_dir);
        if (model_save(&run->m, path, rc->save_dtype, err, sizeof err) != 0) FATAL("%s", err);
    }
}

// The problems of a run whose prompts do not fit the model's context: in training an error naming
// the file and line (or, with --skip-long-prompts, dropped and counted); in evaluation they stay,
// marked, and count as wrong (evaluate).
static void check_prompts(ProblemSet *ps, const Tokenizer *tok, int template_id, int maxT, int training, int skip,
                          int quiet) {
    const Problem *first;
    int len = 0, n = problems_check_prompts(ps, tok, template_id, maxT, &first, &len);
    if (!n) return;
    if (training && !skip)
        FATAL("%s:%d: the prompt has %d tokens, beyond the model's context of %d (%d such line%s in all): shorten "
              "%s, or pass --skip-long-prompts", ps->path, first->line, len, maxT, n, n > 1 ? "s" : "",
              n > 1 ? "them" : "it");
    if (training) {
        problems_drop_too_long(ps);
        if (ps->n == 0) FATAL("%s: every prompt is beyond the model's context of %d", ps->path, maxT);
    }
    if (!quiet || training)
        fprintf(stderr, "%s: %d prompt%s beyond the model's context of %d (the first: line %d) %s\n", ps->path, n,
                n > 1 ? "s" : "", maxT, first->line, training ? "skipped (--skip-long-prompts)" : "count as wrong");
}

// The identity of this process's run: a new 64-bit id for each fresh run (kept across resumes).
static uint64_t new_run_id(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^
                 (uint64_t)getpid() << 32;
    x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
    return x ? x : 1;
}

// Everything a run needs before its first step: the model, the data, the scorer, the output
// directory and the log, and where a resumed run starts.
static void run_open(Run *run, const RunConfig *rc) {
    memset(run, 0, sizeof *run);
    run->rc = rc;
    int sft = rc->mode == MODE_SFT;
    RunState rs;
    memset(&rs, 0, sizeof rs);
    int own_rs = 0;
    if (rc->resume_dir) {
        char err[1400];
        if (strcmp(rc->out_dir, rc->resume_dir) != 0) FATAL("--resume %s writes to %s, not to -o %s", rc->resume_dir,
                                                            rc->resume_dir, rc->out_dir);
        if (rc->resumed.config) rs = rc->resumed;   // read by parse_flags, which owns it
        else if (run_state_read(rc->resume_dir, &rs, err, sizeof err) != 0) FATAL("%s", err);
        else own_rs = 1;
        if (rs.mode != rc->mode) FATAL("--resume %s: that run is %s, not %s", rc->resume_dir,
                                       rs.mode == MODE_SFT ? "--sft" : "training", sft ? "--sft" : "training");
        if (rs.seed != rc->seed) FATAL("--resume %s: saved with -s %d; resuming exactly needs the same seed",
                                       rc->resume_dir, rs.seed);
    }
    load_model_and_tokenizer(&run->m, &run->tok, rc);
    run->template_id = pick_template(rc, &run->tok);
    load_problems(&run->data, rc, rc->data_path);
    for (int i = 0; sft && i < run->data.n; i++)
        if (!run->data.items[i].solution)
            FATAL("%s:%d: no \"solution\" for SFT", rc->data_path, run->data.items[i].line);
    for (int i = 0; rc->reward == REWARD_GRPO && !sft && i < run->data.n; i++)
        if (!run->data.items[i].answer)
            FATAL("%s:%d: -r grpo needs an \"answer\" on every line", rc->data_path, run->data.items[i].line);
    check_prompts(&run->data, &run->tok, run->template_id, run->m.config.maxT, 1, rc->skip_long, rc->quiet);
    if (rc->eval_path) {
        load_problems(&run->evalset, rc, rc->eval_path);
        check_prompts(&run->evalset, &run->tok, run->template_id, run->m.config.maxT, 0, 0, rc->quiet);
    }
    file_identity(rc->data_path, &run->data_size, &run->data_hash);
    if (rc->eval_path) file_identity(rc->eval_path, &run->eval_size, &run->eval_hash);
    run->scorer = scorer_for(rc);
    run->use_ref = rc->tc.kl_beta > 0.0f && !sft;
    if (run->use_ref) {   // the reference policy is the starting model, frozen
        char err[1400];
        if (rc->init_spec) FATAL("--kl needs a starting model (-m), not --init");
        if (model_load(&run->ref, rc->model_path, err, sizeof err) != 0) FATAL("%s", err);
    }
    model_reserve(&run->m, sft ? rc->prompts_per_step : rc->tc.micro, run->m.config.maxT);
    if (make_dir(rc->out_dir) != 0) FATAL("cannot create output directory %s: %s", rc->out_dir, strerror(errno));
    // what an interrupted write left behind: the .tmp files of the names a run writes, and no others
    static const char *const written[] = {"model.bin", "state.bin", "curves.svg", "log.jsonl", "eval_*"};
    int removed = util_remove_tmp_files(rc->out_dir, written, (int)(sizeof written / sizeof written[0]));
    if (removed) fprintf(stderr, "%s: removed %d leftover .tmp file%s of an interrupted write\n", rc->out_dir,
                         removed, removed > 1 ? "s" : "");
    char log_path[1100];
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", rc->out_dir);
    int epoch = 0, cursor = 0;
    run->run_id = new_run_id();
    if (rc->resume_dir) {
        if (rs.data_size != run->data_size || rs.data_hash != run->data_hash || rs.eval_size != run->eval_size ||
            rs.eval_hash != run->eval_hash) {
            const char *which = rs.data_size != run->data_size || rs.data_hash != run->data_hash ? rc->data_path
                                                                                                 : rc->eval_path;
            if (!rc->override_cfg)
                FATAL("--resume %s: %s is not the file the run began with (its size or checksum differs); pass "
                      "--override to continue on it anyway", rc->resume_dir, which ? which : "(none)");
            fprintf(stderr, "override: %s differs from the file the run began with\n", which ? which : "(none)");
        }
        run->run_id = rs.run_id;
        run->start = rs.step;
        run->nonfinite = rs.nonfinite;
        epoch = rs.epoch;
        cursor = rs.cursor;
        if (cursor > run->data.n) FATAL("--resume %s: the data position %d is beyond the %d prompts of %s",
                                        rc->resume_dir, cursor, run->data.n, rc->data_path);
        run_state_load_optimizer(rc->resume_dir, &rs, &run->m);
        if (own_rs) free(rs.config);
        // the log keeps what the checkpoint saw: lines of later steps (run again now) are cut
        struct stat st;
        if (stat(log_path, &st) == 0 && (uint64_t)st.st_size > rs.log_bytes) {
            if (truncate(log_path, (off_t)rs.log_bytes) != 0)
                FATAL("cannot truncate %s: %s", log_path, strerror(errno));
            if (!rc->quiet) printf("%s: cut to the %llu bytes of step %d's checkpoint (later steps are run again)\n",
                                   log_path, (unsigned long long)rs.log_bytes, rs.step);
        } else if (stat(log_path, &st) != 0 || (uint64_t)st.st_size < rs.log_bytes) {
            fprintf(stderr, "warning: %s is shorter than at step %d's checkpoint; appending to it\n", log_path,
                    rs.step);
        }
    }
    data_order_init(&run->order, run->data.n, (uint64_t)rc->seed, epoch, cursor);
    run->log = fopen(log_path, rc->resume_dir ? "a" : "w");
    if (!run->log) FATAL("cannot write %s: %s", log_path, strerror(errno));
    if (rc->overrides) {
        fprintf(run->log, "{\"step\": %d, \"override\": %s}\n", run->start, rc->overrides);
        fflush(run->log);
    }
    snprintf(run->eval_out, sizeof run->eval_out, "%s/eval_last.jsonl", rc->out_dir);
    // free-form: no entropy filter by default, as the reference's natural-reasoning reward (its
    // low-confidence cutoff plays that part)
    run->ent_hi = rc->ent_hi >= 0 ? rc->ent_hi : rc->task == TASK_FREEFORM ? INFINITY : logf((float)rc->G);
    if (!sft && rc->ent_lo >= run->ent_hi)
        FATAL("--ent-lo %g >= --ent-hi %g: the entropy band is empty, so no group would ever be trained on",
              rc->ent_lo, run->ent_hi);
    const ModelConfig *c = &run->m.config;
    if (rc->save_dtype == CKPT_DTYPE_BF16)
        fprintf(stderr, "note: -S bf16 checkpoints keep rounded weights and no run state: this run cannot be "
                "resumed (-S fp32 can)\n");
    if (rc->quiet) return;
    printf("%s | model %s: %.2fM params, V=%d C=%d L=%d heads %d/%d | data %s (%d prompts)\n",
           sft ? "SFT" : REWARD_NAMES[rc->reward], rc->resume_dir ? rc->resume_dir : rc->init_spec ? "(new)"
           : rc->model_path, run->m.num_parameters / 1e6, c->V, c->C, c->L, c->NH, c->NKV, rc->data_path, run->data.n);
    if (!sft)
        printf("G=%d T=%.2f top_p=%.2f max_new=%d | %d prompts/step | lr %.2g | clip %.2g | ppo-clip %.2g | kl %.2g | "
               "entropy band [%.3f, %.3f)\n", rc->G, rc->temperature, rc->top_p, rc->max_new, rc->prompts_per_step,
               rc->tc.lr, rc->tc.grad_clip, rc->tc.clip_eps, rc->tc.kl_beta, rc->ent_lo, run->ent_hi);
    else printf("batch %d | lr %.2g | %d steps\n", rc->prompts_per_step, rc->tc.lr, rc->steps);
    if (rc->resume_dir) printf("resuming run %016llx from %s at step %d\n", (unsigned long long)run->run_id,
                               rc->resume_dir, run->start);
    fflush(stdout);
}
static void run_close(Run *run) {
    const RunConfig *rc = run->rc;
    if (fclose(run->log) != 0) FATAL("cannot write %s/log.jsonl: %s", rc->out_dir, strerror(errno));
    write_plot(rc->out_dir);
    if (!rc->quiet) printf("done: %s/model.bin, %s/log.jsonl, %s/curves.svg\n", rc->out_dir, rc->out_dir, rc->out_dir);
    free(run->order.perm);
    problems_free(&run->data);
    if (rc->eval_path) problems_free(&run->evalset);
    if (run->use_ref) model_free(&run->ref);
    scorer_free(&run->scorer, rc->quiet);
    tokenizer_free(&run->tok);
    model_free(&run->m);
}

// SIGINT / SIGTERM: the first one asks the loop to finish the current step, write a checkpoint and
// exit 130; a second one ends the process at once. A handler can only talk to the loop through a
// volatile sig_atomic_t, so this flag is the one mutable global of the file.
static volatile sig_atomic_t stop_signal = 0;
static void on_stop_signal(int sig) {
    if (stop_signal) {
        static const char msg[] = "\nsecond signal: stopping now, without a checkpoint\n";
        if (write(2, msg, sizeof msg - 1) < 0) {}
        _exit(130);
    }
    stop_signal = sig;
    static const char msg[] = "\nsignal: finishing the current step, then writing a checkpoint (again to abort)\n";
    if (write(2, msg, sizeof msg - 1) < 0) {}
}
static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESTART;   // reads and writes in progress go on
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    stop_signal = 0;
}

// How many steps in a row may have a non-finite loss or gradient norm before the run stops.
#define NONFINITE_STOP 3

// EMPO (or -r grpo / ttrl) training, or SFT when rc->mode == MODE_SFT, in the shape of llm.c's
// main loop. Returns the number of steps run; losses[step-1] and norms[step-1] get each step's
// loss and gradient norm when not NULL. A step whose loss or gradient norm is not finite changes
// nothing (the update is skipped), is logged as such and counted; NONFINITE_STOP of them in a row
// stop the run with exit 1, leaving the last checkpoint (of a finite model) as it was. SIGINT or
// SIGTERM: the step finishes, a checkpoint is written, exit 130.
static int run_training(const RunConfig *rc, float *losses, float *norms) {
    Run run;
    install_stop_handlers();
    run_open(&run, rc);
    if (rc->eval_path && run.start == 0 && rc->eval_every > 0) run_evaluate(&run, 0);
    int B = rc->prompts_per_step, step, in_a_row = 0;
    if (run.start >= rc->steps && rc->resume_dir && !rc->quiet)
        printf("%s is at step %d and -x is %d: nothing to train\n", rc->resume_dir, run.start, rc->steps);
    const Problem **batch = (const Problem **)xmalloc((size_t)B * sizeof(Problem *));
    for (step = run.start + 1; step <= rc->steps; step++) {
        run.step = step;
        if (fault_at("signal", step)) raise(SIGINT);
        for (int b = 0; b < B; b++) batch[b] = &run.data.items[data_order_next(&run.order)];
        StepStats st = rc->mode == MODE_SFT ? sft_step(&run, batch, B) : empo_step(&run, batch, B, step);
        int finite = isfinite(st.loss) && isfinite(st.norm);
        in_a_row = finite ? 0 : in_a_row + 1;
        run.nonfinite += !finite;
        log_step(&run, step, &st);
        if (losses) losses[step - 1] = st.loss;
        if (norms) norms[step - 1] = st.norm;
        if (in_a_row >= NONFINITE_STOP) {
            fclose(run.log);
            FATAL("steps %d-%d had a non-finite loss or gradient norm (their updates were skipped): the run "
                  "diverged; stopping. The last checkpoint, of finite weights, is %s/model.bin", step - in_a_row + 1,
                  step, rc->out_dir);
        }
        if (rc->eval_path && rc->eval_every > 0 && (step % rc->eval_every == 0 || step == rc->steps))
            run_evaluate(&run, step);
        // no checkpoint inside a run of non-finite steps: the last one stays the last good state
        int ckpt = (rc->ckpt_every > 0 && step % rc->ckpt_every == 0) || step == rc->steps;
        if ((ckpt || stop_signal) && in_a_row == 0) run_checkpoint(&run, step);
        else if (ckpt) fprintf(stderr, "warning: no checkpoint at step %d, after a non-finite step\n", step);
        if (stop_signal) {
            if (in_a_row == 0)
                printf("%s at step %d: checkpoint written to %s/model.bin; continue with --resume %s\n",
                       stop_signal == SIGTERM ? "SIGTERM" : "interrupted", step, rc->out_dir, rc->out_dir);
            else printf("%s at step %d, after a non-finite step: no new checkpoint; %s/model.bin is the last good "
                        "one\n", stop_signal == SIGTERM ? "SIGTERM" : "interrupted", step, rc->out_dir);
            fflush(stdout);
            run_close(&run);
            free(batch);
            exit(130);
        }
    }
    if (rc->steps == 0 && run.start == 0) run_checkpoint(&run, 0);   // -x 0: the initial model, resumable
    free(batch);
    run_close(&run);
    return step - 1 - run.start;
}

// Evaluation mode: the paper's protocol (greedy pass@1), optionally with G samples.
static void run_eval(const RunConfig *rc) {
    Model m;
    Tokenizer tok;
    load_model_and_tokenizer(&m, &tok, rc);
    ProblemSet ps;
    load_problems(&ps, rc, rc->eval_path);
    check_prompts(&ps, &tok, pick_template(rc, &tok), m.config.maxT, 0, 0, 1);
    Scorer scorer = scorer_for(rc);   // free-form: multiple choice by letter, free-form answers by the judge
    if (make_dir(rc->out_dir) != 0) FATAL("cannot create output directory %s: %s", rc->out_dir, strerror(errno));
    const char *base = strrchr(rc->eval_path, '/');
    base = base ? base + 1 : rc->eval_path;
    char out[1200];
    snprintf(out, sizeof out, "%s/eval_%s", rc->out_dir, base);
    if (!strstr(base, ".jsonl")) strncat(out, ".jsonl", sizeof out - strlen(out) - 1);
    double t0 = now_seconds();
    EvalConfig ec = eval_config(rc);
    EvalResult e = evaluate(&m, &tok, &scorer, pick_template(rc, &tok), &ps, &ec, out, !rc->quiet);
    printf("%s: %d problems | greedy pass@1 %.2f%%", rc->eval_path, e.n, 100 * e.greedy);
    if (rc->eval_G > 1)
        printf(" | maj@%d %.2f%% | pass@%d %.2f%% | mean semantic entropy %.3f", rc->eval_G, 100 * e.maj, rc->eval_G,
               100 * e.pass, e.entropy);
    printf(" | mean length %.1f | %.1f s\n", e.mean_len, now_seconds() - t0);
    if (e.n_long) printf("%d of the %d problems have a prompt beyond the model's context of %d: counted as wrong\n",
                         e.n_long, e.n, m.config.maxT);
    if (ps.n_bad) printf("%d bad line%s of %s skipped (--skip-bad-lines): not in the %d\n", ps.n_bad,
                         ps.n_bad > 1 ? "s" : "", rc->eval_path, e.n);
    printf("per-problem records: %s\n", out);
    scorer_free(&scorer, rc->quiet);
    problems_free(&ps);
    tokenizer_free(&tok);
    model_free(&m);
}

// One question made visible: G responses, their answers, the clusters, the entropy, the rewards.
static void run_prompt(const RunConfig *rc) {
    Model m;
    Tokenizer tok;
    load_model_and_tokenizer(&m, &tok, rc);
    Problem p = {(char *)rc->prompt_text, NULL, NULL, 0, 0};
    const Problem *pp = &p;
    SamplerConfig sc = {rc->temperature, rc->top_p, rc->top_k, rc->max_new, 0, (uint64_t)rc->seed, 0};   // all rewards
    Scorer scorer = scorer_math();
    scorer.extract_policy = rc->extract_policy;
    scorer.reward_cluster = exact_cluster;
    Rollouts r;
    rollouts_sample(&r, &m, &tok, &scorer, pick_template(rc, &tok), &pp, 1, rc->G, &sc, 1);
    rollouts_score(&r, &scorer, &pp, REWARD_EMPO, 0.0f, 1e9f);   // both clusterings: group and rgroup
    const SemanticGroup *g = &r.group[0], *gx = &r.rgroup[0], *gs[2] = {g, gx};
    // every reward of every response, side by side; grpo needs a gold answer, which --prompt has not
    enum { N_SHOWN = 6 };
    static const char *const shown[N_SHOWN] = {"empo", "empo/x", "ttrl", "ttrl/x", "entropy", "certainty"};
    static const int kind[N_SHOWN] = {REWARD_EMPO, REWARD_EMPO, REWARD_TTRL, REWARD_TTRL, REWARD_ENTROPY,
                                      REWARD_CERTAINTY};
    float rw[N_SHOWN][SC_MAX_G], adv[N_SHOWN][SC_MAX_G];
    for (int k = 0; k < N_SHOWN; k++) {
        for (int j = 0; j < r.n; j++) rw[k][j] = response_reward(&r, gs[k % 2 && k < 4], NULL, kind[k], j, j);
        group_advantages(rw[k], r.n, adv[k]);
    }
    printf("question: %s\n\n", rc->prompt_text);
    for (int j = 0; j < r.n; j++) {
        char *text = decode_response(&tok, &r.gen, j);
        size_t n = strlen(text);
        for (size_t i = 0; i < n; i++)
            if (text[i] == '\n') text[i] = ' ';
        if (n > 160) {   // the start and the end, where the answer is
            memcpy(text + 70, " ... ", 5);
            memmove(text + 75, text + n - 85, 86);
        }
        printf("[%d] %s\n    answer: %s | cluster %d semantic, %d exact | %d tokens%s\n", j, text,
               r.answer[j] ? r.answer[j] : "(none)", g->cluster[j], gx->cluster[j], r.gen.len[j],
               r.gen.eos[j] ? "" : " (cut)");
        free(text);
    }
    printf("\nrewards (advantage) of each response; /x: with --cluster exact; entropy, certainty: per token at T=1\n");
    printf("%4s", "");
    for (int k = 0; k < N_SHOWN; k++) printf(" %17s", shown[k]);
    printf("\n");
    for (int j = 0; j < r.n; j++) {
        printf("[%2d]", j);
        for (int k = 0; k < N_SHOWN; k++) printf("  %7.3f (%+6.2f)", rw[k][j], adv[k][j]);
        printf("\n");
    }
    for (int x = 0; x < 2; x++) {
        const SemanticGroup *h = gs[x];
        printf(x ? "\nclusters by --cluster exact (the EMPO reference: equal strings after stripping \\text{}, "
                   "\\boxed{}):\n" : "\nclusters by --cluster semantic (answers equal by math_answers_equal):\n");
        for (int c = 0; c < h->n_clusters; c++)
            printf("  c%d  p = %d/%d = %.3f  \"%s\"\n", c, h->size[c], h->G, h->p[c], r.answer[h->rep[c]]);
        if (h->n_missing)
            printf("  no answer: %d response(s), reward 0, each a singleton in the entropy\n", h->n_missing);
        printf("%s entropy H = %.4f (max log G = %.4f); the reference keeps the group if H < log G: %s\n",
               x ? "exact-match" : "semantic", h->entropy, logf((float)h->G),
               entropy_in_band(h->entropy, 0.0f, logf((float)h->G)) ? "kept" : "dropped");
    }
    rollouts_free(&r);
    tokenizer_free(&tok);
    model_free(&m);
}

static void run_tokenize(const RunConfig *rc) {
    Model m;
    Tokenizer tok;
    load_model_and_tokenizer(&m, &tok, rc);
    size_t cap = 1 << 16, n = 0, r;
    char *buf = (char *)xmalloc(cap);
    while ((r = fread(buf + n, 1, cap - n, stdin)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            buf = (char *)realloc(buf, cap);
            if (!buf) FATAL("out of memory reading stdin");
        }
    }
    int *ids;
    int k = tokenizer_encode(&tok, buf, n, 1, &ids);
    if (k < 0) FATAL("cannot tokenize stdin");
    for (int i = 0; i < k; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    free(buf);
    tokenizer_free(&tok);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// 12. flags (one table for parsing, the defaults and -h) and main

#define DEMO_DIR "dev/default"
static const char *const MODE_NAMES[] = {"training", "--sft", "--eval", "--prompt", "--tokenize"};
enum { MD_TR = 1 << MODE_TRAIN, MD_SF = 1 << MODE_SFT, MD_EV = 1 << MODE_EVAL, MD_PR = 1 << MODE_PROMPT,
       MD_TK = 1 << MODE_TOKENIZE };
#define RC(field) offsetof(RunConfig, field)
#define HEADING(text) {text, FLAG_HEADING, 0, 0, 0, NULL, {0, 0}, {NULL, NULL}, 0, -1, NULL, ""}
#define NUM(kind, name, field, lo, hi, real, demo, shown, modes, meta, help) \
    {name, kind, RC(field), lo, hi, NULL, {real, demo}, {shown, NULL}, modes, -1, meta, help}
#define STR(name, field, real, demo, modes, mode, meta, help) \
    {name, FLAG_STR, RC(field), 0, 0, NULL, {0, 0}, {real, demo}, modes, mode, meta, help}
#define CHOICE(name, field, choices, real, demo, shown, modes, help) \
    {name, FLAG_CHOICE, RC(field), 0, 0, choices, {real, demo}, {shown, NULL}, modes, -1, "NAME", help}
#define I_(...) NUM(FLAG_INT, __VA_ARGS__)
#define F_(...) NUM(FLAG_FLOAT, __VA_ARGS__)
#define BIG (1 << 30)

// Defaults: with -m (a real model: the paper's settings) / for the embedded default run.
static const Flag FLAGS[] = {
    HEADING("modes (default: training)"),
    STR("--eval", eval_path, NULL, NULL, MD_EV, MODE_EVAL, "FILE",
        "evaluate on {problem, answer} JSONL: greedy pass@1 (the paper's\n"
        "protocol); with -G N > 1 also maj@N / pass@N from N samples"),
    STR("--prompt", prompt_text, NULL, NULL, MD_PR, MODE_PROMPT, "TEXT",
        "sample -G responses to one question: answers, clusters, entropy, rewards"),
    STR("--sft", sft_path, NULL, NULL, MD_SF, MODE_SFT, "FILE",
        "supervised fine-tuning on {problem, solution} JSONL, loss on the response"),
    {"--tokenize", FLAG_SWITCH, RC(tokenize), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TK, MODE_TOKENIZE, NULL,
     "print the token ids of stdin (special tokens recognised), one line"},
    HEADING("model and data"),
    STR("-m", model_path, DEMO_DIR "/starter.bin", DEMO_DIR "/starter.bin", MD_TR | MD_SF | MD_EV | MD_PR | MD_TK,
        -1, "FILE",
        "checkpoint (.bin; doc/formats.md)"),
    STR("--init", init_spec, NULL, NULL, MD_TR | MD_SF, -1, "SPEC",
        "start from a new random model with the byte tokenizer, e.g.\n"
        "C=128,L=4,NH=4,NKV=2,I=384,T=256 (keys V C L NH NKV I T tied; or qwen1.5b)"),
    STR("-d", data_path, NULL, DEMO_DIR "/train.jsonl", MD_TR, -1, "FILE",
        "training prompts, JSONL {problem[, answer]}"),
    STR("-e", eval_path, NULL, DEMO_DIR "/eval.jsonl", MD_TR | MD_SF, -1, "FILE",
        "held-out set for periodic evaluation"),
    CHOICE("--template", template_id, "cot|plain", -1, -1, "cot (Qwen vocab) / plain", MD_TR | MD_SF | MD_EV | MD_PR,
           "cot: the Qwen2.5-Math CoT prompt; plain: the problem text"),
    STR("-o", out_dir, "out", "out", MD_TR | MD_SF | MD_EV, -1, "DIR",
        "output: model.bin (+ run state), log.jsonl, curves.svg, eval records"),
    STR("--resume", resume_dir, NULL, NULL, MD_TR | MD_SF, -1, "DIR",
        "continue the run in DIR (its model.bin) exactly, with its stored flags,\n"
        "writing to DIR; only -x, -E, -C, -q may change (else --override)"),
    HEADING("EMPO                                                                           with -m / default run"),
    CHOICE("-r", reward, REWARD_CHOICES, REWARD_EMPO, REWARD_EMPO, NULL, MD_TR,
           "reward: empo (cluster share, no labels), grpo (1 if equal to the gold\n"
           "answer: the supervised baseline), ttrl (1 if equal to the majority),\n"
           "entropy (RENT: minus the mean token entropy), certainty (Intuitor:\n"
           "mean KL(uniform || p_t)); token rewards use the untempered (T=1)\n"
           "distribution at each sampled position (doc/rewards.md)"),
    CHOICE("--cluster", cluster, "semantic|exact", CLUSTER_SEMANTIC, CLUSTER_SEMANTIC, NULL, MD_TR,
           "clustering of the empo/ttrl rewards: semantic (math equivalence) or\n"
           "exact (the EMPO reference: equal strings after stripping \\text{},\n"
           "\\boxed{}; empty never equal). Logs and evaluation stay semantic"),
    I_("-G", G, 1, SC_MAX_G, 7, 8, NULL, MD_TR | MD_EV | MD_PR, "INT",
       "responses per prompt (in --eval: samples per problem)"),
    I_("-B", prompts_per_step, 1, 1 << 20, 112, 16, NULL, MD_TR | MD_SF, "INT",
       "prompts per step (112 x 178 = one epoch of 20K)"),
    I_("-x", steps, 0, BIG, 178, 30, NULL, MD_TR | MD_SF, "INT", "steps"),
    F_("-T", temperature, 0, 100, 0.9, 1.0, NULL, MD_TR | MD_EV | MD_PR, "FLOAT", "sampling temperature"),
    F_("-p", top_p, 1e-6, 1, 1, 1, NULL, MD_TR | MD_EV | MD_PR, "FLOAT", "top-p (also of the samples in evaluation)"),
    I_("-k", top_k, 0, BIG, 0, 0, NULL, MD_TR | MD_EV | MD_PR, "INT",
       "top-k, 0 = off (also of the samples in evaluation)"),
    I_("-n", max_new, 1, 1 << 22, 2048, 80, NULL, MD_TR | MD_PR, "INT", "max new tokens per rollout response"),
    F_("--ent-lo", ent_lo, 0, 100, 0, 0, NULL, MD_TR, "FLOAT", "keep groups with semantic entropy >= this"),
    F_("--ent-hi", ent_hi, 0, 100, -1, -1, "log G", MD_TR, "FLOAT", "... and < this (the reference: log G)"),
    F_("--clip", tc.clip_eps, 0, 1, 0, 0, NULL, MD_TR, "FLOAT", "PPO clip range (0 = off, as the paper)"),
    F_("--kl", tc.kl_beta, 0, 100, 0, 0, NULL, MD_TR, "FLOAT", "KL-to-reference weight, k3 estimator (0 = off)"),
    HEADING("optimizer"),
    F_("-l", tc.lr, 0, 10, 1e-6, 2e-4, NULL, MD_TR | MD_SF, "FLOAT", "learning rate (constant)"),
    F_("-w", tc.weight_decay, 0, 10, 0, 0, NULL, MD_TR | MD_SF, "FLOAT", "AdamW weight decay"),
    F_("-c", tc.grad_clip, 0, 1e9, 1, 1, NULL, MD_TR | MD_SF, "FLOAT", "gradient clip (global norm; 0 = off)"),
    I_("-b", tc.micro, 1, 1 << 16, 8, 32, NULL, MD_TR, "INT", "micro-batch: responses per forward/backward"),
    HEADING("evaluation, checkpoints, misc"),
    I_("-E", eval_every, 0, BIG, 10, 5, NULL, MD_TR | MD_SF, "INT", "evaluate on -e every INT steps (0 = never)"),
    I_("--eval-G", eval_G, 1, SC_MAX_G, -1, -1, "-G (1 in --eval)", MD_TR | MD_SF | MD_EV, "INT",
       "samples per problem for maj@G in evaluation"),
    F_("--eval-temp", eval_temperature, 0, 100, -1, -1, "-T", MD_TR | MD_SF | MD_EV, "FLOAT",
       "temperature of those samples"),
    I_("--eval-n", eval_max_new, 1, 1 << 22, 3000, 80, NULL, MD_TR | MD_SF | MD_EV, "INT",
       "max new tokens per response in evaluation (-n is for rollouts)"),
    I_("--eval-batch", eval_batch, 1, 1 << 16, 16, 64, NULL, MD_TR | MD_SF | MD_EV, "INT",
       "problems generated together"),
    I_("-C", ckpt_every, 0, BIG, 10, 10, NULL, MD_TR | MD_SF, "INT",
       "checkpoint every INT steps and at the end (0: at the end only)"),
    CHOICE("-S", save_dtype, "fp32|bf16", CKPT_DTYPE_FP32, CKPT_DTYPE_FP32, NULL, MD_TR | MD_SF,
           "checkpoint dtype: fp32 (with the run state: resumes exactly)\n"
           "or bf16 (rounded weights only: cannot be resumed)"),
    I_("-s", seed, 0, BIG, 1337, 1337, NULL, MD_TR | MD_SF | MD_EV | MD_PR, "INT", "seed"),
    {"-q", FLAG_SWITCH, RC(quiet), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TR | MD_SF | MD_EV, -1, NULL,
     "quiet: no progress lines (results and errors only)"},
    {"-h", FLAG_SWITCH, RC(help), 0, 0, NULL, {0, 0}, {NULL, NULL}, 0xff, -1, NULL, "this help"},
    {"--skip-bad-lines", FLAG_SWITCH, RC(skip_bad), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TR | MD_SF | MD_EV, -1, NULL,
     "skip (and count) data lines that are not a problem; default: an error"},
    {"--skip-long-prompts", FLAG_SWITCH, RC(skip_long), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TR | MD_SF, -1, NULL,
     "training: skip prompts beyond the model's context; default: an error\n"
     "(in evaluation they always count as wrong, and the summary says how many)"},
    {"--override", FLAG_SWITCH, RC(override_cfg), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TR | MD_SF, -1, NULL,
     "with --resume: accept flags or data files that differ from the stored run\n"
     "(each difference is printed and logged); -x, -E, -C, -q need no override"},
    HEADING("free-form answers (doc/freeform.md)"),
    CHOICE("--extract", extract_policy, "parse|boxed|anchored", MV_EXTRACT_REFERENCE, MV_EXTRACT_REFERENCE, NULL,
           MD_TR | MD_EV | MD_PR,
           "math answers: parse = the last \\boxed{}, else after \"answer\", else the last LaTeX\n"
           "or number (Math-Verify's parse order); boxed = \\boxed{} only; anchored =\n"
           "the box, else LaTeX after \"answer\" (the EMPO repo's setting)"),
    CHOICE("--task", task, "math|freeform", TASK_MATH, TASK_MATH, NULL, MD_TR | MD_EV,
           "math (\\boxed{} answers, math_verify) or freeform: phrases and\n"
           "sentences, data {question, choices?, answer?}, clustered by a judge"),
    STR("-R", verifier_path, NULL, NULL, MD_TR | MD_EV, -1, "FILE",
        "verifier checkpoint that judges equivalence (e.g. general-verifier);\n"
        "without it, free-form answers are equal only as normalized text"),
    STR("--judge-template", judge_template_path, NULL, NULL, MD_TR | MD_EV, -1, "FILE",
        "the judge's prompt with {question} {a} {b} (needs -R); default:\n"
        "general-verifier's format"),
    CHOICE("--judge-mode", ff.bidirectional, "oneway|both", 1, 1, NULL, MD_TR | MD_EV,
           "both (Yes in both directions) or oneway (the EMPO reference)"),
    F_("--judge-threshold", ff.threshold, 0, 1, 0.5, 0.5, NULL, MD_TR | MD_EV, "F",
       "equivalent when P(Yes)/(P(Yes)+P(No)) > F"),
    I_("--judge-batch", judge_batch, 1, 1 << 16, 256, 256, NULL, MD_TR | MD_EV, "INT",
       "pairs per verifier pass (memory)"),
    F_("--copy-rouge", ff.copy_rouge, 0, 1, 0.8, 0.8, NULL, MD_TR | MD_EV, "F",
       "reward 0 if ROUGE-L precision vs the question > F"),
    I_("--copy-substring", ff.copy_substring, 0, 1, 1, 1, NULL, MD_TR | MD_EV, "0|1",
       "reward 0 if the answer is a substring of the question"),
    F_("--no-answer-reward", ff.no_answer_reward, -10, 10, -0.5, -0.5, NULL, MD_TR | MD_EV, "F",
       "reward of a response without an answer"),
    F_("--min-share", ff.min_share, 0, 1, 0.2, 0.2, NULL, MD_TR | MD_EV, "F",
       "all rewards 0 if the largest cluster's share < F (> 1 cluster)\n"
       "(freeform: --ent-hi defaults to no limit, as the reference)"),
};
#define N_FLAGS ((int)(sizeof FLAGS / sizeof FLAGS[0]))

// The paper's settings for real models (demo = 0); small ones for the embedded default run.
static void run_config_defaults(RunConfig *rc, int demo) {
    memset(rc, 0, sizeof *rc);
    flags_defaults(FLAGS, N_FLAGS, rc, demo);
    rc->mode = MODE_TRAIN;
    rc->tc.beta1 = 0.9f;
    rc->tc.beta2 = 0.999f;
    rc->tc.eps = 1e-8f;
}

static void usage(void) {
    printf("usage: ./train_empo [-m model.bin] [options]\n"
           "EMPO: train a model to reason better with no labels, by rewarding answers that agree.\n"
           "With no -m, runs the embedded default: EMPO on a small starter model and a synthetic\n"
           "fraction task that ship in " DEMO_DIR "/ (minutes on a laptop; see doc/reproduce.md).\n"
           "Each flag applies to the modes it makes sense in; any other use is refused.\n");
    flags_usage(stdout, FLAGS, N_FLAGS);
}

// The value of flag f in cfg as text: what a run stores (config_to_json) and a resume compares.
// NULL for an unset path.
static const char *flag_text(const Flag *f, const void *cfg, char *buf, size_t cap) {
    const char *field = (const char *)cfg + f->offset;
    if (f->kind == FLAG_STR) return *(const char *const *)field;
    if (f->kind == FLAG_FLOAT) snprintf(buf, cap, "%.9g", *(const float *)field);   // 9 digits: exact for a float
    else if (f->kind == FLAG_CHOICE && *(const int *)field < 0) snprintf(buf, cap, "%d", *(const int *)field);
    else if (f->kind == FLAG_CHOICE) {   // by name (a sentinel such as -1, "chosen later", by number)
        const char *c = f->choices;
        for (int k = 0; k < *(const int *)field && strchr(c, '|'); k++) c = strchr(c, '|') + 1;
        const char *e = strchr(c, '|');
        snprintf(buf, cap, "%.*s", (int)(e ? (size_t)(e - c) : strlen(c)), c);
    } else snprintf(buf, cap, "%d", *(const int *)field);
    return buf;
}
// The flags a run stores with its checkpoint: every one that means something in training or SFT,
// but not those that only say what to do now.
static int flag_stored(const Flag *f) {
    static const char *const transient[] = {"-h", "-q", "--resume", "--override"};
    if (f->kind == FLAG_HEADING || !(f->modes & (MD_TR | MD_SF))) return 0;
    for (size_t i = 0; i < sizeof transient / sizeof transient[0]; i++)
        if (!strcmp(f->name, transient[i])) return 0;
    return 1;
}
// The flags a resumed run may change without --override: the length of the run, its eval and
// checkpoint cadence, the console, and the output directory (which --resume sets).
static int flag_may_change(const Flag *f) {
    static const char *const free_[] = {"-x", "-E", "-C", "-q", "-o"};
    for (size_t i = 0; i < sizeof free_ / sizeof free_[0]; i++)
        if (!strcmp(f->name, free_[i])) return 1;
    return 0;
}
static char *config_to_json(const RunConfig *rc) {
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f) FATAL("out of memory");
    fprintf(f, "{\"mode\": \"%s\", \"demo\": \"%d\"", MODE_NAMES[rc->mode], rc->demo);
    for (int i = 0; i < N_FLAGS; i++) {
        if (!flag_stored(&FLAGS[i])) continue;
        char buf[64];
        const char *v = flag_text(&FLAGS[i], rc, buf, sizeof buf);
        fprintf(f, ", \"%s\": ", FLAGS[i].name);
        if (v) json_write_str(f, v, strlen(v));
        else fputs("null", f);
    }
    fputs("}", f);
    if (fclose(f) != 0) FATAL("out of memory");
    return out;
}
static void run_config_free(RunConfig *rc) {
    for (int i = 0; i < rc->n_owned; i++) free(rc->owned[i]);
    free(rc->resumed.config);
    free(rc->overrides);
    rc->n_owned = 0;
    rc->resumed.config = rc->overrides = NULL;
}
static const char *run_config_own(RunConfig *rc, const char *s) {
    if (rc->n_owned == (int)(sizeof rc->owned / sizeof rc->owned[0])) FATAL("too many stored flags");
    return rc->owned[rc->n_owned++] = xstrdup(s);
}

// --resume DIR: the stored configuration of the run in DIR becomes the defaults, and every flag on
// the command line must agree with it, but for those of flag_may_change; with --override each
// difference is printed and kept for the log. Returns the mode the stored run is in.
static int resume_config(RunConfig *rc, const char *dir, int argc, char **argv, int mode, const int *has,
                         char **before) {
    char err[1400];
    if (run_state_read(dir, &rc->resumed, err, sizeof err) != 0) FATAL("--resume: %s", err);
    JDoc d;
    if (json_parse(&d, rc->resumed.config, strlen(rc->resumed.config)) != 0 || json_type(&d, 0) != J_OBJ)
        FATAL("--resume: %s/model.bin: the stored configuration is not a JSON object", dir);
    int stored_mode = rc->resumed.mode;
    if (stored_mode != MODE_TRAIN && stored_mode != MODE_SFT) FATAL("--resume: %s/model.bin: bad stored mode", dir);
    if (mode == MODE_TRAIN && stored_mode == MODE_SFT) mode = MODE_SFT;   // an SFT run, without repeating --sft
    if (mode != stored_mode)
        FATAL("--resume %s: that run is %s, not %s", dir, MODE_NAMES[stored_mode], MODE_NAMES[mode]);
    RunState keep = rc->resumed;
    run_config_defaults(rc, rc->resumed.demo);
    rc->resumed = keep;
    rc->demo = keep.demo;
    for (int c = json_first(&d, 0); c >= 0; c = json_next(&d, c)) {
        const Flag *f = flag_find(FLAGS, N_FLAGS, json_key(&d, c));
        if (!f || !flag_stored(f) || !(f->modes >> mode & 1)) continue;
        const char *v = json_str(&d, c);
        if (f->kind == FLAG_STR) *(const char **)((char *)rc + f->offset) = v ? run_config_own(rc, v) : NULL;
        else if (!v) FATAL("--resume: %s/model.bin: stored flag %s has no value", dir, f->name);
        else if (f->kind == FLAG_SWITCH) *(int *)((char *)rc + f->offset) = atoi(v) != 0;
        else if (f->kind == FLAG_FLOAT) *(float *)((char *)rc + f->offset) = strtof(v, NULL);   // as stored, even
        else if (f->kind == FLAG_INT) *(int *)((char *)rc + f->offset) = atoi(v);             // a sentinel (-1)
        else if (f->kind == FLAG_CHOICE) {
            int k = v[0] == '-' ? atoi(v) : flag_choice(f->choices, v);
            if (k < -1) FATAL("--resume: %s/model.bin: stored %s '%s' is not one of %s", dir, f->name, v, f->choices);
            *(int *)((char *)rc + f->offset) = k;
        }
    }
    json_free(&d);
    for (int i = 0; i < N_FLAGS; i++) {
        char buf[64];
        const char *v = FLAGS[i].kind == FLAG_HEADING ? NULL : flag_text(&FLAGS[i], rc, buf, sizeof buf);
        before[i] = v ? xstrdup(v) : NULL;
    }
    (void)argc; (void)argv;
    return mode;
}
// After the command line is applied over a stored run: the flags that changed it.
static void resume_conflicts(RunConfig *rc, const char *dir, const int *has, char **before) {
    int n = 0;
    char first[600] = "", names[400] = "";
    char *js = NULL;
    size_t jn = 0;
    FILE *jf = open_memstream(&js, &jn);
    if (!jf) FATAL("out of memory");
    for (int i = 0; i < N_FLAGS; i++) {
        const Flag *f = &FLAGS[i];
        if (!has[i] || !flag_stored(f) || flag_may_change(f)) continue;
        char buf[64];
        const char *now = flag_text(f, rc, buf, sizeof buf), *was = before[i];
        if ((!now && !was) || (now && was && !strcmp(now, was))) continue;
        if (!n) snprintf(first, sizeof first, "%s %.200s differs from the run's stored %s %.200s", f->name,
                         now ? now : "(unset)", f->name, was ? was : "(unset)");
        else if (strlen(names) + strlen(f->name) + 3 < sizeof names) {
            strcat(names, n > 1 ? ", " : "");
            strcat(names, f->name);
        }
        n++;
        if (rc->override_cfg) fprintf(stderr, "override: %s: stored %s, now %s\n", f->name, was ? was : "(unset)",
                                      now ? now : "(unset)");
        // for the log line: {"-G": ["8", "4"], ...}: the stored value, then the new one (null: unset)
        fprintf(jf, "%s\"%s\": [", n > 1 ? ", " : "{", f->name);
        if (was) json_write_str(jf, was, strlen(was));
        else fputs("null", jf);
        fputs(", ", jf);
        if (now) json_write_str(jf, now, strlen(now));
        else fputs("null", jf);
        fputs("]", jf);
    }
    if (n) fputs("}", jf);
    if (fclose(jf) != 0) FATAL("out of memory");
    if (n && !rc->override_cfg) {
        char more[460] = "";
        if (n > 1) snprintf(more, sizeof more, " (and %s)", names);
        FATAL("--resume %s: %s%s; only -x, -E, -C and -q may change on a resume (pass --override to change it "
              "anyway)", dir, first, more);
    }
    if (n) rc->overrides = js;
    else free(js);
}

// Parses the command line into rc: the mode first (it decides which flags apply), then the
// defaults (the paper's with -m, --init or --resume; the embedded default run's otherwise; with
// --resume, the stored run's), then the flags, then the checks that span several flags, including
// settings that could not train anything.
static void parse_flags(RunConfig *rc, int argc, char **argv) {
    int has[N_FLAGS];
    int mode = flags_scan(FLAGS, N_FLAGS, argc, argv, MODE_TRAIN, has);
    int demo = !has[flag_find(FLAGS, N_FLAGS, "-m") - FLAGS] && !has[flag_find(FLAGS, N_FLAGS, "--init") - FLAGS] &&
               !has[flag_find(FLAGS, N_FLAGS, "--resume") - FLAGS];
    run_config_defaults(rc, demo);
    rc->demo = demo;
    if (has[flag_find(FLAGS, N_FLAGS, "-h") - FLAGS]) {
        usage();
        exit(0);
    }
    const char *resume = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--resume")) resume = argv[i + 1];
    char *before[N_FLAGS];
    memset(before, 0, sizeof before);
    if (resume) mode = resume_config(rc, resume, argc, argv, mode, has, before);
    rc->mode = mode;
    flags_apply(FLAGS, N_FLAGS, argc, argv, mode, MODE_NAMES, (int)(sizeof MODE_NAMES / sizeof *MODE_NAMES), rc);
    if (resume) {
        resume_conflicts(rc, resume, has, before);
        for (int i = 0; i < N_FLAGS; i++) free(before[i]);
        if (has[flag_find(FLAGS, N_FLAGS, "-o") - FLAGS] && strcmp(rc->out_dir, resume) != 0)
            FATAL("--resume %s writes to %s: drop -o %s (to branch a run, copy the directory first)", resume, resume,
                  rc->out_dir);
        rc->out_dir = resume;
    } else if (has[flag_find(FLAGS, N_FLAGS, "--override") - FLAGS]) {
        FATAL("--override only applies to --resume");
    }
    if (mode == MODE_SFT) rc->data_path = rc->sft_path;
    if (rc->eval_G < 0) rc->eval_G = mode == MODE_EVAL && !has[flag_find(FLAGS, N_FLAGS, "-G") - FLAGS] ? 1 : rc->G;
    if (rc->eval_temperature < 0) rc->eval_temperature = rc->temperature;
    // paths: refused when too long for the buffers that hold DIR/NAME (a silent cut would write elsewhere)
    for (int i = 0; i < N_FLAGS; i++) {
        const Flag *f = &FLAGS[i];
        const char *v = f->kind == FLAG_STR ? *(const char *const *)((const char *)rc + f->offset) : NULL;
        size_t lim = !strcmp(f->name, "-o") || !strcmp(f->name, "--resume") ? 900 : 4000;
        if (v && f->meta && (!strcmp(f->meta, "FILE") || !strcmp(f->meta, "DIR")) && strlen(v) > lim)
            FATAL("flag %s: the path is %zu characters long; at most %zu are supported", f->name, strlen(v), lim);
    }
    if (rc->task != TASK_FREEFORM && (rc->verifier_path || rc->judge_template_path))
        FATAL("-R and --judge-template need --task freeform");
    if (rc->judge_template_path && !rc->verifier_path) FATAL("--judge-template needs a verifier to prompt: give -R");
    if (rc->task == TASK_FREEFORM && rc->reward == REWARD_GRPO)
        FATAL("--task freeform: -r grpo is not supported (use empo or ttrl)");
    if ((mode == MODE_TRAIN || mode == MODE_SFT) && !rc->data_path)
        FATAL("training needs prompts: -d FILE.jsonl (see -h)");
    // settings that cannot train: refused before any work
    if (mode == MODE_TRAIN && rc->G < 2)
        FATAL("-G %d: a group of one response has an advantage of 0, so no step would train anything; use -G 2 or "
              "more", rc->G);
    if (mode == MODE_TRAIN && rc->temperature == 0.0f)
        FATAL("-T 0: greedy rollouts are %d copies of one response, so every advantage is 0 and nothing trains; use "
              "a temperature > 0", rc->G);
    if (mode == MODE_TRAIN && rc->ent_hi >= 0 && rc->ent_lo >= rc->ent_hi)
        FATAL("--ent-lo %g >= --ent-hi %g: the entropy band is empty, so no group would ever be trained on",
              rc->ent_lo, rc->ent_hi);
    if (demo && mode == MODE_TRAIN)
        printf("embedded default: EMPO on %s with %s (no labels used for training), eval on %s\n", rc->data_path,
               rc->model_path, rc->eval_path ? rc->eval_path : "(none)");
}

#ifndef TESTING
#ifndef EMPO_MAIN
#define EMPO_MAIN main   // train_empo.cu renames it, and calls it from its own main
#endif
int EMPO_MAIN(int argc, char **argv) {
    RunConfig rc;
    parse_flags(&rc, argc, argv);
    switch (rc.mode) {
    case MODE_TOKENIZE: run_tokenize(&rc); break;
    case MODE_EVAL: run_eval(&rc); break;
    case MODE_PROMPT: run_prompt(&rc); break;
    default: run_training(&rc, NULL, NULL);
    }
    run_config_free(&rc);
    return 0;
}
#endif // TESTING
