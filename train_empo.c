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
// and add them up in a fixed order. An omp-simd reduction would take its lane count from the
// widest vector of the build machine (8 with AVX2, 16 with AVX-512), so the same run would print
// different numbers on different machines. Every lane count is fixed here, and in gemm.h.
#define LANES 8
static inline float lanes_sum(const float acc[LANES]) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}
// sum_i a[i] * b[i]
static inline float dot_f32(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l];
    float s = lanes_sum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
// sum_i a[i] * b[i] * c[i]
static inline float dot3_f32(const float *a, const float *b, const float *c, int n) {
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l] * c[i + l];
    float s = lanes_sum(acc);
    for (; i < n; i++) s += a[i] * b[i] * c[i];
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
    // dw reduces over rows: split by columns so threads never write the same element
    #pragma omp parallel for
    for (int c = 0; c < C; c++) {
        float s = 0.0f;
        for (int n = 0; n < N; n++) s += dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
        dw[c] += s;
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

// One query q (HD) against P keys and values whose rows are `stride` floats apart: p (P) gets
// the softmax of the scaled scores, out (HD) the probability-weighted sum of the values. Shared by
// training (keys from the batch) and decoding (keys from the KV cache), so the two agree.
static inline void attend_one(float *out, float *p, const float *q, const float *k, const float *v, long stride, int P,
                              int HD, float scale) {
    float maxv = -FLT_MAX;
    for (int j = 0; j < P; j++) {
        const float *kj = k + (size_t)j * stride;
        float s = dot_f32(q, kj, HD) * scale;
        p[j] = s;
        if (s > maxv) maxv = s;
    }
    float sum = 0.0f;
    for (int j = 0; j < P; j++) { p[j] = expf(p[j] - maxv); sum += p[j]; }
    float inv = 1.0f / sum;
    for (int j = 0; j < P; j++) p[j] *= inv;
    for (int d = 0; d < HD; d++) out[d] = 0.0f;
    for (int j = 0; j < P; j++) {
        const float *vj = v + (size_t)j * stride;
        for (int d = 0; d < HD; d++) out[d] += p[j] * vj[d];
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
                const float *row0 = qkv + (size_t)b * T * QKV;   // this sequence's first row
                float *a = att + (((size_t)b * NH + hq) * T + t) * T;
                attend_one(out + ((size_t)b * T + t) * NH * HD + (size_t)hq * HD, a,
                           row0 + (size_t)t * QKV + (size_t)hq * HD,
                           row0 + (size_t)(NH + hk) * HD, row0 + (size_t)(NH + NKV + hk) * HD, QKV, t + 1, HD, scale);
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
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
                            float s = dot_f32(g, v, HD);
                            for (int d = 0; d < HD; d++) dv[d] += a[t2] * g[d];
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
    int32_t h[3] = {m->adam_step, m->m_memory != NULL, 0};
    if (fwrite(h, sizeof h, 1, f) != 1) return -1;
    size_t n = m->num_parameters;
    if (m->m_memory && (fwrite(m->m_memory, 4, n, f) != n || fwrite(m->v_memory, 4, n, f) != n)) return -1;
    return 0;
}
static int model_load_optimizer(Model *m, FILE *f, char *err, size_t errcap) {
    int32_t h[3];
    if (fread(h, sizeof h, 1, f) != 1 || h[0] < 0 || (h[1] & ~1) || h[2] != 0) {
        snprintf(err, errcap, "optimizer state: bad header");
        return -1;
    }
    m->adam_step = h[0];
    if (!h[1]) return 0;
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
        float *resid = l == 0 ? a->encoded : a->resid3 + (size_t)(l - 1) * N * C;   // (N, C)
        float *ln1 = a->ln1 + (size_t)l * N * C, *ln1_rstd = a->ln1_rstd + (size_t)l * N;
        float *qkv = a->qkv + (size_t)l * N * QKV, *att = a->att + (size_t)l * B * NH * T * T;
        float *atty = a->atty + (size_t)l * N * NH * HD, *resid2 = a->resid2 + (size_t)l * N * C;
        float *ln2 = a->ln2 + (size_t)l * N * C, *ln2_rstd = a->ln2_rstd + (size_t)l * N;
        float *fch = a->fch + (size_t)l * N * 2 * I, *fch_swiglu = a->fch_swiglu + (size_t)l * N * I;
        float *resid3 = a->resid3 + (size_t)l * N * C;
        float *tmp = m->scratch.dln;   // (N, C) projection outputs, before the residual add
        rmsnorm_forward(ln1, ln1_rstd, resid, p->ln1w + (size_t)l * C, N, C, c->rms_eps);
        matmul_forward(qkv, ln1, p->qkvw + (size_t)l * QKV * C, c->qkv_bias ? p->qkvb + (size_t)l * QKV : NULL,
                       N, C, QKV);
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
        if (targets[i] < -1 || targets[i] >= V) FATAL("target %d at position %d is outside the vocab (%d)",
                                                      targets[i], i, V);
    memcpy(m->targets, targets, (size_t)N * sizeof(int));
    logprob_forward(a->logp, a->lse, a->logits, targets, N, V);
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
        matmul_backward(s->dswiglu, g->fcprojw + (size_t)l * C * I, NULL, s->dresidual, fch_swiglu,
                        p->fcprojw + (size_t)l * C * I, N, I, C);
        swiglu_backward(s->dfch, s->dswiglu, fch, N, I);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->fcw + (size_t)l * 2 * I * C, NULL, s->dfch, ln2, p->fcw + (size_t)l * 2 * I * C,
                        N, C, 2 * I);
        rmsnorm_backward(s->dresidual, g->ln2w + (size_t)l * C, s->dln, resid2, p->ln2w + (size_t)l * C, ln2_rstd,
                         N, C);
        // now dresidual = dLoss/d(resid2)
        memset(s->datty, 0, (size_t)N * NH * HD * sizeof(float));
        matmul_backward(s->datty, g->attprojw + (size_t)l * C * NH * HD, NULL, s->dresidual, atty,
                        p->attprojw + (size_t)l * C * NH * HD, N, NH * HD, C);
        memset(s->dqkv, 0, (size_t)N * QKV * sizeof(float));
        attention_backward(s->dqkv, s->datty, qkv, att, B, T, NH, NKV, HD);
        rope_apply(s->dqkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, -1);
        memset(s->dln, 0, (size_t)N * C * sizeof(float));
        matmul_backward(s->dln, g->qkvw + (size_t)l * QKV * C, c->qkv_bias ? g->qkvb + (size_t)l * QKV : NULL,
                        s->dqkv, ln1,
                        p->qkvw + (size_t)l * QKV * C, N, C, QKV);
        rmsnorm_backward(s->dresidual, g->ln1w + (size_t)l * C, s->dln, resid, p->ln1w + (size_t)l * C, ln1_rstd, N, C);
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
    #pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        double s = 0.0;
        size_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (size_t i = c * CHUNK; i < end; i++) s += (double)m->grads_memory[i] * m->grads_memory[i];
        part[c] = s;
    }
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
    float scale = 1.0f;
    if (grad_clip > 0.0f && grad_clip / (norm + 1e-6f) < 1.0f) scale = grad_clip / (norm + 1e-6f);
    m->adam_step++;
    double bc1 = 1.0 - pow(beta1, m->adam_step), bc2 = 1.0 - pow(beta2, m->adam_step);   // in double, as torch does
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    #pragma omp parallel for
    for (size_t i = 0; i < m->num_parameters; i++) {
        float grad = m->grads_memory[i] * scale;
        float mm = beta1 * m->m_memory[i] + (1.0f - beta1) * grad;
        float vv = beta2 * m->v_memory[i] + (1.0f - beta2) * grad * grad;
        m->m_memory[i] = mm;
        m->v_memory[i] = vv;
        float w = m->params_memory[i] * (1.0f - lr * weight_decay);
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
        float *sc = (float *)xmalloc((size_t)(maxpos + 1) * sizeof(float));
        #pragma omp for collapse(2) schedule(dynamic, 4)
        for (int i = 0; i < N; i++)
            for (int hq = 0; hq < NH; hq++) {
                int hk = hq / rep;
                attend_one(out + (size_t)i * NH * HD + (size_t)hq * HD, sc, qkv + (size_t)i * QKV + (size_t)hq * HD,
                           kv_at(kv, c, seq[i], l, 0, 0) + (size_t)hk * HD, 
                           kv_at(kv, c, seq[i], l, 1, 0) + (size_t)hk * HD,
                           (long)kvd, pos[i] + 1, HD, scale);
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
    for (int j = 0; j < n_out; j++) memcpy(kv->tmp + (size_t)j * C, kv->x + (size_t)out_rows[j] * C,
                                           (size_t)C * sizeof(float));
    rmsnorm_forward(kv->ln, kv->fch /* rstd, unused */, kv->tmp, p->lnfw, n_out, C, c->rms_eps);
    matmul_forward_packed(logits, kv->ln, p->lmw, kv_packed(kv, 4 * c->L), NULL, n_out, C, c->V);
}

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
    for (int v = 0; v < V; v++) {
        scratch[v].p = expf((logits[v] - logits[best]) * inv_t);
        scratch[v].id = v;
        sum += scratch[v].p;
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

// Prefill each prompt once, copy its cache into its G sequences, then decode all unfinished
// sequences together, one token per step. Every response draws from its own RNG stream
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
    KVCache kv;
    kv_init(&kv, c, cap, n, maxlen > n ? maxlen : n);
    if (n >= 8) kv_pack_weights(&kv, m);   // decode steps with >= 8 rows use GEMM
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
    for (int j = 0; j < n; j++)   // stream j: from (seed, j) alone
        rng[j] = (sc->seed + 1) * 0x9E3779B97F4A7C15ull ^ ((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull);
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
            fprintf(stderr, "\r  generating: step %d, %d/%d responses still running, %.1f s", step, n_active, n,
                    now_seconds() - t_start);
            if (n_active == 0) fputc('\n', stderr);
        }
    }
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

typedef struct { char *problem, *answer, *solution; } Problem;
typedef struct { Problem *items; int n, cap; const char *path; } ProblemSet;

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
    if (!prob) {
        fprintf(stderr, "%s:%d: no \"problem\" string; line skipped\n", ps->path, line);
        return 0;
    }
    Problem *p = problems_push(ps);
    p->problem = prob;
    p->answer = json_text_field(d, root, "answer");
    p->solution = json_text_field(d, root, "solution");
    return 0;
}
// Reads {problem, answer?, solution?} lines. A malformed line is reported with its line number
// and skipped; an unreadable file, or one with no usable line, is fatal.
static void problems_load(ProblemSet *ps, const char *path) {
    memset(ps, 0, sizeof *ps);
    ps->path = path;
    if (jsonl_foreach(path, 0, problems_add, ps) < 0) FATAL("cannot read %s", path);
    if (ps->n == 0) FATAL("%s: no usable {\"problem\": ...} lines", path);
}
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
    if (!q) {
        fprintf(stderr, "%s:%d: no \"question\" string; line skipped\n", ps->path, line);
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
            fprintf(stderr, "%s:%d: \"choices\" must be 2 to %d one-line strings; line skipped\n", ps->path, line,
                    FF_MAX_CHOICES);
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
            fprintf(stderr, "%s:%d: \"answer\" is neither a letter A-%c nor the text of an option; line skipped\n",
                    ps->path, line, 'A' + nc - 1);
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
    p->problem = text;
    p->answer = answer;
    p->solution = solution;
    return 0;
}
static void freeform_problems_load(ProblemSet *ps, const char *path) {
    memset(ps, 0, sizeof *ps);
    ps->path = path;
    if (jsonl_foreach(path, 0, freeform_add, ps) < 0) FATAL("cannot read %s", path);
    if (ps->n == 0) FATAL("%s: no usable {\"question\": ...} lines", path);
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
    // the free-form judge, its settings (guards, threshold) and its running totals
    FreeformScorer ff;
    Verifier *verifier;   // -R, or NULL: normalized-text equality
};

static int math_extract(const Scorer *s, const char *response, char *out, size_t cap) {
    return math_extract_answer(response, out, cap);
}
static void math_cluster(Scorer *s, char *const *answers, const char *const *questions, int n, int G,
                         SemanticGroup *groups) {
    #pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < n; p++) semantic_cluster((const char *const *)(answers + (size_t)p * G), G, &groups[p]);
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

enum { REWARD_EMPO, REWARD_GRPO, REWARD_TTRL };
#define REWARD_CHOICES "empo|grpo|ttrl"
static const char *const REWARD_NAMES[] = {"empo", "grpo", "ttrl"};
#define ANSWER_CAP 1024

typedef struct {
    int n_prompts, G, n;        // n = n_prompts * G responses; response j answers prompt j / G
    int **prompt_ids, *prompt_len;
    Generation gen;
    char **answer;              // (n) extracted final answer, NULL if none
    float *reward, *adv;        // (n)
    SemanticGroup *group;       // (n_prompts)
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

// Steps 3 to 6 of EMPO: clusters each group's answers (by the scorer), then rewards:
//   empo: r_i = p(cluster of i), the share of the G answers equal to i's (0 without an answer);
//   grpo: r_i = 1 if i's answer equals the gold answer (the supervised baseline);
//   ttrl: r_i = 1 if i's answer equals the group's majority answer.
// Advantages are normalized within each group. Unsupervised groups (empo, ttrl) whose semantic
// entropy falls outside [ent_lo, ent_hi) are dropped: at H = log G every answer differs, so there
// is no consensus to learn from.
static void rollouts_score(Rollouts *r, Scorer *scorer, const Problem *const *probs, int reward, float ent_lo,
                           float ent_hi) {
    int G = r->G;
    const char **qs = (const char **)xmalloc((size_t)(r->n_prompts ? r->n_prompts : 1) * sizeof(char *));
    for (int p = 0; p < r->n_prompts; p++) qs[p] = probs[p] ? probs[p]->problem : "";
    scorer->cluster(scorer, r->answer, qs, r->n_prompts, G, r->group);
    free(qs);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int p = 0; p < r->n_prompts; p++) {
        SemanticGroup *g = &r->group[p];
        float *rw = r->reward + (size_t)p * G;
        for (int i = 0; i < G; i++) {
            const char *a = r->answer[p * G + i];
            if (reward == REWARD_EMPO) rw[i] = g->reward[i];
            else if (reward == REWARD_GRPO)
                rw[i] = a && probs[p]->answer && math_answers_equal(a, probs[p]->answer) ? 1.0f : 0.0f;
            else rw[i] = a && g->majority >= 0 && g->cluster[i] == g->cluster[g->majority] ? 1.0f : 0.0f;
        }
        group_advantages(rw, G, r->adv + (size_t)p * G);
        r->keep[p] = reward == REWARD_GRPO ? 1 : entropy_in_band(g->entropy, ent_lo, ent_hi);
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
// inputs/targets (n, T): targets are the next tokens, -1 on padding; resp_mask marks the targets
// that are response tokens; old_logp holds their sampling-time log-probs. Returns T.
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
            targets[k * T + t] = s1;
            int is_resp = t + 1 >= P && s1 >= 0;
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
    *grad_norm = model_update(m, tc->lr, tc->beta1, tc->beta2, tc->eps, tc->weight_decay, tc->grad_clip);
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
typedef struct { float greedy, maj, pass, entropy, mean_len; int n; } EvalResult;

// The per-problem records go to OUT.tmp first (renamed over OUT by eval_result). NULL: none.
static FILE *eval_open_records(const char *out_jsonl, char *tmp_path, size_t cap) {
    if (!out_jsonl) return NULL;
    snprintf(tmp_path, cap, "%s.tmp", out_jsonl);
    FILE *f = fopen(tmp_path, "w");
    if (!f) FATAL("cannot write %s", tmp_path);
    return f;
}
// The problems that have a gold answer (malloc'd list); none is an error.
static const Problem **eval_problems(const ProblemSet *ps, int *n_out, const char *what) {
    const Problem **probs = (const Problem **)xmalloc((size_t)ps->n * sizeof(Problem *));
    int n = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->items[i].answer) probs[n++] = &ps->items[i];
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
// counts into rates. f may be NULL (no records).
static EvalResult eval_result(FILE *f, const char *tmp_path, const char *out_jsonl, int n, int n_greedy, int n_maj,
                              int n_pass, int G, double ent_sum, double len_sum) {
    if (f) {
        int bad = ferror(f);
        if (fclose(f) != 0 || bad || rename(tmp_path, out_jsonl) != 0) FATAL("cannot write %s", out_jsonl);
    }
    EvalResult res;
    memset(&res, 0, sizeof res);
    res.n = n;
    res.greedy = (float)n_greedy / n;
    res.maj = G > 1 ? (float)n_maj / n : res.greedy;
    res.pass = G > 1 ? (float)n_pass / n : res.greedy;
    res.entropy = G > 1 ? (float)(ent_sum / n) : 0.0f;
    res.mean_len = (float)(len_sum / n);
    return res;
}
static void eval_samplers(const EvalConfig *ec, SamplerConfig *greedy, SamplerConfig *sampled) {
    SamplerConfig g = {0.0f, 1.0f, 0, ec->max_new, 0, ec->seed};
    SamplerConfig s = {ec->temperature, ec->top_p, ec->top_k, ec->max_new, 0, ec->seed};
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
    return eval_result(f, tmp_path, out_jsonl, n, n_greedy, n_maj, n_pass, G, ent_sum, len_sum);
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
    return eval_result(f, tmp_path, out_jsonl, n, n_greedy, n_maj, n_pass, G, ent_sum, len_sum);
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

// Training state next to the model: out/state.bin holds the step, the data position, and the
// engine's optimizer block (AdamW moments), so that --resume continues bit-identically (the
// model itself is saved in fp32).
#define STATE_MAGIC 0x53504D45u   // "EMPS"
#define STATE_VERSION 2
typedef struct { const Model *m; int32_t h[16]; } StateWrite;
static int state_body(FILE *f, const void *user) {
    const StateWrite *s = (const StateWrite *)user;
    if (fwrite(s->h, sizeof s->h, 1, f) != 1) return -1;
    return model_save_optimizer(s->m, f);
}
static void save_run_state(const char *dir, const Model *m, int step, const DataOrder *d, uint64_t seed) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/model.bin", dir);
    if (model_save(m, path, CKPT_DTYPE_FP32, err, sizeof err) != 0) FATAL("%s", err);
    StateWrite s;
    memset(&s, 0, sizeof s);
    s.m = m;
    int32_t h[16] = {(int32_t)STATE_MAGIC, STATE_VERSION, step, d->epoch, d->cursor, 0, (int32_t)(seed & 0x7fffffff),
                     0, (int32_t)(m->num_parameters & 0x7fffffff), (int32_t)(m->num_parameters >> 31)};
    memcpy(s.h, h, sizeof h);
    snprintf(path, sizeof path, "%s/state.bin", dir);
    if (write_file_atomic(path, state_body, &s, err, sizeof err) != 0) FATAL("%s", err);
}
// Loads dir/state.bin into m (the optimizer block) and returns the step; the data position goes to
// epoch and cursor.
static int load_run_state(const char *dir, Model *m, int *epoch, int *cursor, uint64_t seed) {
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/state.bin", dir);
    FILE *f = fopen(path, "rb");
    if (!f) FATAL("cannot open %s to resume from", path);
    int32_t h[16];
    if (fread(h, sizeof h, 1, f) != 1 || (uint32_t)h[0] != STATE_MAGIC) FATAL("%s: not an empo.c training state", path);
    if (h[1] != STATE_VERSION) FATAL("%s: unsupported state version %d", path, h[1]);
    size_t n = (size_t)(uint32_t)h[8] | ((size_t)(uint32_t)h[9] << 31);
    if (n != m->num_parameters) FATAL("%s: state is for %zu parameters, the model has %zu", path, n, m->num_parameters);
    if (h[6] != (int32_t)(seed & 0x7fffffff))
        FATAL("%s: saved with seed %d; pass the same -s to resume exactly", path, h[6]);
    if (model_load_optimizer(m, f, err, sizeof err) != 0) FATAL("%s: %s", path, err);
    if (fgetc(f) != EOF) FATAL("%s: trailing data", path);
    fclose(f);
    *epoch = h[3];
    *cursor = h[4];
    return h[2];
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
#define PLOT_SERIES 6
static const Series PLOT[PLOT_SERIES] = {
    {"eval_greedy", "greedy pass@1"}, {"eval_maj", "maj@G"},          {"reward", "mean reward"},
    {"entropy", "semantic entropy"},  {"eval_entropy", "eval entropy"}, {"resp_len", "response length"}};
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
static int svg_body(FILE *f, const void *user) {
    const Curve *c = (const Curve *)user;
    static const char *colors[PLOT_SERIES] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"};
    static const int panel_of[PLOT_SERIES] = {0, 0, 1, 2, 2, 3};
    static const char *titles[4] = {"held-out accuracy", "mean reward", "semantic entropy", "response length (tokens)"};
    int W = 980, H = 640, pw = 400, ph = 250;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    for (int p = 0; p < 4; p++) {
        int ox = 60 + (p % 2) * (pw + 60), oy = 40 + (p / 2) * (ph + 60);
        float x0 = 1e30f, x1 = -1e30f, y0 = 1e30f, y1 = -1e30f;
        for (int s = 0; s < PLOT_SERIES; s++) {
            if (panel_of[s] != p) continue;
            for (int i = 0; i < c[s].n; i++) {
                x0 = fminf(x0, c[s].x[i]);
                x1 = fmaxf(x1, c[s].x[i]);
                y0 = fminf(y0, c[s].y[i]);
                y1 = fmaxf(y1, c[s].y[i]);
            }
        }
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", ox, oy - 10, titles[p]);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n",
                ox, oy, pw, ph);
        if (x0 > x1) continue;   // nothing logged for this panel
        if (p == 0) {            // accuracy: always the full range
            y0 = 0.0f;
            y1 = 1.0f;
        }
        if (x1 == x0) x1 = x0 + 1;
        if (y1 == y0) {
            y1 += 0.5f;
            y0 -= 0.5f;
        }
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", ox - 4, oy + 10, y1);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", ox - 4, oy + ph, y0);
        fprintf(f, "<text x=\"%d\" y=\"%d\">step %.0f</text>\n", ox, oy + ph + 15, x0);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">step %.0f</text>\n", ox + pw, oy + ph + 15, x1);
        int legend = 0;
        for (int s = 0; s < PLOT_SERIES; s++) {
            if (panel_of[s] != p || c[s].n == 0) continue;
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colors[s]);
            for (int i = 0; i < c[s].n; i++)
                fprintf(f, "%.1f,%.1f ", ox + (c[s].x[i] - x0) / (x1 - x0) * pw,
                        oy + ph - (c[s].y[i] - y0) / (y1 - y0) * ph);
            fprintf(f, "\"/>\n<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", ox + 8, oy + 16 + 14 * legend++,
                    colors[s], PLOT[s].label);
        }
    }
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}
static void write_plot(const char *dir) {
    char log_path[1024], svg_path[1024], err[512];
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", dir);
    snprintf(svg_path, sizeof svg_path, "%s/curves.svg", dir);
    Curve c[PLOT_SERIES];
    memset(c, 0, sizeof c);
    if (jsonl_foreach(log_path, 0, plot_collect, c) < 0) return;
    if (write_file_atomic(svg_path, svg_body, c, err, sizeof err) != 0) fprintf(stderr, "warning: %s\n", err);
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
    int reward, G, prompts_per_step, steps, max_new, eval_max_new, eval_every, ckpt_every, eval_G, eval_batch;
    int template_id;   // -1: chosen by the tokenizer (CoT for Qwen vocabularies, plain for small ones)
    int top_k, save_dtype, quiet, seed, help, tokenize;
    float temperature, top_p, eval_temperature, ent_lo, ent_hi;   // ent_hi < 0: log G
    TrainConfig tc;
    // --task freeform (doc/freeform.md)
    int task;                                        // TASK_MATH or TASK_FREEFORM
    const char *verifier_path, *judge_template_path; // -R, --judge-template (NULL: the default template)
    int judge_batch;                                 // pairs per verifier pass (KV cache memory)
    FreeformConfig ff;                               // judge direction/threshold and the reward guards
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
    if (rc->task == TASK_FREEFORM)
        return scorer_freeform(&rc->ff, rc->verifier_path, rc->judge_template_path, rc->judge_batch, rc->quiet);
    return scorer_math();
}
static void load_problems(ProblemSet *ps, const RunConfig *rc, const char *path) {
    if (rc->task == TASK_FREEFORM) freeform_problems_load(ps, path);
    else problems_load(ps, path);
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
} Run;

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
    model_zero_grad(&run->m);
    model_backward(&run->m);
    StepStats st;
    memset(&st, 0, sizeof st);
    const TrainConfig *tc = &rc->tc;
    st.norm = model_update(&run->m, tc->lr, tc->beta1, tc->beta2, tc->eps, tc->weight_decay, tc->grad_clip);
    st.loss = run->m.mean_loss;
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
                        (uint64_t)rc->seed * 1000003ull + (uint64_t)step};
    Rollouts r;
    int verbose = !rc->quiet && (long)B * rc->G * rc->max_new > 200000;
    rollouts_sample(&r, &run->m, &run->tok, &run->scorer, run->template_id, batch, B, rc->G, &sc, verbose);
    double t1 = now_seconds();
    rollouts_score(&r, &run->scorer, batch, rc->reward, rc->ent_lo, run->ent_hi);
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

// One line in log.jsonl and one on the console per step.
static void log_step(const Run *run, int step, const StepStats *st) {
    const RunConfig *rc = run->rc;
    if (rc->mode == MODE_SFT) {
        fprintf(run->log, "{\"step\": %d, \"loss\": %.6f, \"grad_norm\": %.4f, \"time\": %.3f}\n", step, st->loss,
                st->norm, st->t_step);
        if (!rc->quiet)
            printf("step %5d/%d | loss %.4f | grad norm %.3f | %.0f ms\n", step, rc->steps, st->loss, st->norm,
                   st->t_step * 1e3);
    } else {
        fprintf(run->log, "{\"step\": %d, \"reward\": %.4f, \"entropy\": %.4f, \"clusters\": %.3f, \"kept\": %.3f, "
                "\"resp_len\": %.2f, \"loss\": %.6f, \"grad_norm\": %.4f, \"gen_tok_s\": %.1f, \"t_gen\": %.3f, "
                "\"t_score\": %.4f, \"t_train\": %.3f}\n", step, st->reward, st->entropy, st->clusters, st->kept,
                st->resp_len, st->loss, st->norm, st->tok_s, st->t_gen, st->t_score, st->t_train);
        if (!rc->quiet)
            printf("step %5d/%d | reward %.3f | entropy %.3f | clusters %.2f | kept %3.0f%% | len %5.1f | "
                   "loss %+.4f | norm %.3f | %6.0f tok/s | gen %.2fs score %.3fs train %.2fs\n", step, rc->steps,
                   st->reward, st->entropy, st->clusters, 100.0 * st->kept, st->resp_len, st->loss, st->norm,
                   st->tok_s, st->t_gen, st->t_score, st->t_train);
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
static void run_checkpoint(Run *run, int step) {
    const RunConfig *rc = run->rc;
    if (rc->save_dtype == CKPT_DTYPE_FP32) {
        save_run_state(rc->out_dir, &run->m, step, &run->order, (uint64_t)rc->seed);
    } else {
        char path[1100], err[512];
        snprintf(path, sizeof path, "%s/model.bin", rc->out_dir);
        if (model_save(&run->m, path, rc->save_dtype, err, sizeof err) != 0) FATAL("%s", err);
    }
}

// Everything a run needs before its first step: the model, the data, the scorer, the output
// directory and the log, and where a resumed run starts.
static void run_open(Run *run, const RunConfig *rc) {
    memset(run, 0, sizeof *run);
    run->rc = rc;
    int sft = rc->mode == MODE_SFT;
    load_model_and_tokenizer(&run->m, &run->tok, rc);
    run->template_id = pick_template(rc, &run->tok);
    load_problems(&run->data, rc, rc->data_path);
    for (int i = 0; sft && i < run->data.n; i++)
        if (!run->data.items[i].solution) FATAL("%s: problem %d has no \"solution\" for SFT", rc->data_path, i + 1);
    for (int i = 0; rc->reward == REWARD_GRPO && !sft && i < run->data.n; i++)
        if (!run->data.items[i].answer)
            FATAL("%s: -r grpo needs an \"answer\" on every line (line-ordered problem %d has none)", rc->data_path,
                  i + 1);
    if (rc->eval_path) load_problems(&run->evalset, rc, rc->eval_path);
    run->scorer = scorer_for(rc);
    run->use_ref = rc->tc.kl_beta > 0.0f && !sft;
    if (run->use_ref) {   // the reference policy is the starting model, frozen
        char err[512];
        if (rc->init_spec) FATAL("--kl needs a starting model (-m), not --init");
        if (model_load(&run->ref, rc->model_path, err, sizeof err) != 0) FATAL("%s", err);
    }
    model_reserve(&run->m, sft ? rc->prompts_per_step : rc->tc.micro, run->m.config.maxT);
    if (make_dir(rc->out_dir) != 0) FATAL("cannot create output directory %s", rc->out_dir);
    int epoch = 0, cursor = 0;
    if (rc->resume_dir) run->start = load_run_state(rc->resume_dir, &run->m, &epoch, &cursor, (uint64_t)rc->seed);
    data_order_init(&run->order, run->data.n, (uint64_t)rc->seed, epoch, cursor);
    char log_path[1100];
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", rc->out_dir);
    run->log = fopen(log_path, rc->resume_dir ? "a" : "w");
    if (!run->log) FATAL("cannot write %s", log_path);
    snprintf(run->eval_out, sizeof run->eval_out, "%s/eval_last.jsonl", rc->out_dir);
    // free-form: no entropy filter by default, as the reference's natural-reasoning reward (its
    // low-confidence cutoff plays that part)
    run->ent_hi = rc->ent_hi >= 0 ? rc->ent_hi : rc->task == TASK_FREEFORM ? INFINITY : logf((float)rc->G);
    const ModelConfig *c = &run->m.config;
    if (rc->quiet) return;
    printf("%s | model %s: %.2fM params, V=%d C=%d L=%d heads %d/%d | data %s (%d prompts)\n",
           sft ? "SFT" : REWARD_NAMES[rc->reward], rc->resume_dir ? rc->resume_dir : rc->init_spec ? "(new)"
           : rc->model_path, run->m.num_parameters / 1e6, c->V, c->C, c->L, c->NH, c->NKV, rc->data_path, run->data.n);
    if (!sft)
        printf("G=%d T=%.2f top_p=%.2f max_new=%d | %d prompts/step | lr %.2g | clip %.2g | ppo-clip %.2g | kl %.2g | "
               "entropy band [%.3f, %.3f)\n", rc->G, rc->temperature, rc->top_p, rc->max_new, rc->prompts_per_step,
               rc->tc.lr, rc->tc.grad_clip, rc->tc.clip_eps, rc->tc.kl_beta, rc->ent_lo, run->ent_hi);
    else printf("batch %d | lr %.2g | %d steps\n", rc->prompts_per_step, rc->tc.lr, rc->steps);
    if (rc->resume_dir) printf("resuming from %s at step %d\n", rc->resume_dir, run->start);
    fflush(stdout);
}
static void run_close(Run *run) {
    const RunConfig *rc = run->rc;
    fclose(run->log);
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

// EMPO (or -r grpo / ttrl) training, or SFT when rc->mode == MODE_SFT, in the shape of llm.c's
// main loop. Returns the number of steps run; losses[step-1] and norms[step-1] get each step's
// loss and gradient norm when not NULL.
static int run_training(const RunConfig *rc, float *losses, float *norms) {
    Run run;
    run_open(&run, rc);
    if (rc->eval_path && run.start == 0 && rc->eval_every > 0) run_evaluate(&run, 0);
    int B = rc->prompts_per_step, step;
    const Problem **batch = (const Problem **)xmalloc((size_t)B * sizeof(Problem *));
    for (step = run.start + 1; step <= rc->steps; step++) {
        for (int b = 0; b < B; b++) batch[b] = &run.data.items[data_order_next(&run.order)];
        StepStats st = rc->mode == MODE_SFT ? sft_step(&run, batch, B) : empo_step(&run, batch, B, step);
        log_step(&run, step, &st);
        if (losses) losses[step - 1] = st.loss;
        if (norms) norms[step - 1] = st.norm;
        if (rc->eval_path && rc->eval_every > 0 && (step % rc->eval_every == 0 || step == rc->steps))
            run_evaluate(&run, step);
        if ((rc->ckpt_every > 0 && step % rc->ckpt_every == 0) || step == rc->steps) run_checkpoint(&run, step);
    }
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
    Scorer scorer = scorer_for(rc);   // free-form: multiple choice by letter, free-form answers by the judge
    if (make_dir(rc->out_dir) != 0) FATAL("cannot create output directory %s", rc->out_dir);
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
    printf(" | mean length %.1f | %.1f s\nper-problem records: %s\n", e.mean_len, now_seconds() - t0, out);
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
    Problem p = {(char *)rc->prompt_text, NULL, NULL};
    const Problem *pp = &p;
    SamplerConfig sc = {rc->temperature, rc->top_p, rc->top_k, rc->max_new, 0, (uint64_t)rc->seed};
    Scorer scorer = scorer_math();
    Rollouts r;
    rollouts_sample(&r, &m, &tok, &scorer, pick_template(rc, &tok), &pp, 1, rc->G, &sc, 1);
    rollouts_score(&r, &scorer, &pp, REWARD_EMPO, 0.0f, 1e9f);
    SemanticGroup *g = &r.group[0];
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
        printf("[%d] %s\n    answer: %s | cluster %d | reward %.3f | advantage %+.3f | %d tokens%s\n", j, text,
               r.answer[j] ? r.answer[j] : "(none)", g->cluster[j], r.reward[j], r.adv[j], r.gen.len[j],
               r.gen.eos[j] ? "" : " (cut)");
        free(text);
    }
    printf("\nclusters (answers equal by math_answers_equal):\n");
    for (int c = 0; c < g->n_clusters; c++)
        printf("  c%d  p = %d/%d = %.3f  \"%s\"\n", c, g->size[c], g->G, g->p[c], r.answer[g->rep[c]]);
    if (g->n_missing) printf("  no answer: %d response(s), reward 0, each a singleton in the entropy\n", g->n_missing);
    printf("semantic entropy H = %.4f (max log G = %.4f); the reference keeps the group if H < log G: %s\n",
           g->entropy, logf((float)g->G), entropy_in_band(g->entropy, 0.0f, logf((float)g->G)) ? "kept" : "dropped");
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
        "output: model.bin, state.bin, log.jsonl, curves.svg, eval records"),
    STR("--resume", resume_dir, NULL, NULL, MD_TR | MD_SF, -1, "DIR",
        "continue a run from DIR/model.bin + DIR/state.bin, exactly (same -s)"),
    HEADING("EMPO                                                                           with -m / default run"),
    CHOICE("-r", reward, REWARD_CHOICES, REWARD_EMPO, REWARD_EMPO, NULL, MD_TR,
           "reward: empo (cluster share, no labels), grpo (1 if equal to the gold\n"
           "answer: the supervised baseline), ttrl (1 if equal to the majority)"),
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
           "checkpoint dtype: fp32 (with state.bin: resumes bit-exactly)\n"
           "or bf16 (the weights only: no --resume)"),
    I_("-s", seed, 0, BIG, 1337, 1337, NULL, MD_TR | MD_SF | MD_EV | MD_PR, "INT", "seed"),
    {"-q", FLAG_SWITCH, RC(quiet), 0, 0, NULL, {0, 0}, {NULL, NULL}, MD_TR | MD_SF | MD_EV, -1, NULL,
     "quiet: no progress lines (results and errors only)"},
    {"-h", FLAG_SWITCH, RC(help), 0, 0, NULL, {0, 0}, {NULL, NULL}, 0xff, -1, NULL, "this help"},
    HEADING("free-form answers (doc/freeform.md)"),
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

// Parses the command line into rc: the mode first (it decides which flags apply), then the
// defaults (the paper's with -m, --init or --resume; the embedded default run's otherwise), then
// the flags, then the checks that span several flags.
static void parse_flags(RunConfig *rc, int argc, char **argv) {
    int has[N_FLAGS];
    int mode = flags_scan(FLAGS, N_FLAGS, argc, argv, MODE_TRAIN, has);
    int demo = !has[flag_find(FLAGS, N_FLAGS, "-m") - FLAGS] && !has[flag_find(FLAGS, N_FLAGS, "--init") - FLAGS] &&
               !has[flag_find(FLAGS, N_FLAGS, "--resume") - FLAGS];
    run_config_defaults(rc, demo);
    if (has[flag_find(FLAGS, N_FLAGS, "-h") - FLAGS]) {
        usage();
        exit(0);
    }
    rc->mode = mode;
    flags_apply(FLAGS, N_FLAGS, argc, argv, mode, MODE_NAMES, rc);
    if (mode == MODE_SFT) rc->data_path = rc->sft_path;
    if (rc->eval_G < 0) rc->eval_G = mode == MODE_EVAL && !has[flag_find(FLAGS, N_FLAGS, "-G") - FLAGS] ? 1 : rc->G;
    if (rc->eval_temperature < 0) rc->eval_temperature = rc->temperature;
    if (rc->task != TASK_FREEFORM && (rc->verifier_path || rc->judge_template_path))
        FATAL("-R and --judge-template need --task freeform");
    if (rc->judge_template_path && !rc->verifier_path) FATAL("--judge-template needs a verifier to prompt: give -R");
    if (rc->task == TASK_FREEFORM && rc->reward == REWARD_GRPO)
        FATAL("--task freeform: -r grpo is not supported (use empo or ttrl)");
    if ((mode == MODE_TRAIN || mode == MODE_SFT) && !rc->data_path)
        FATAL("training needs prompts: -d FILE.jsonl (see -h)");
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
    return 0;
}
#endif // TESTING
