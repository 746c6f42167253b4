// engine.h: the contract between the EMPO host layer and an engine (doc/engine.md).
//
// train_empo.c holds both layers: the CPU engine (the model, forward/backward, AdamW, generation) and
// the host layer (prompts, rollouts, rewards, the policy objective, evaluation, the run, the modes,
// flags). train_empo.cu is a second engine: it defines everything below for the GPU, then includes
// train_empo.c with EMPO_EXTERNAL_ENGINE defined, which compiles the CPU engine out and keeps the host
// layer. So the host layer exists once, and it can use only what this file names: if it touched
// anything else of the CPU model, the .cu would not compile.
//
// Everything the host passes in or gets back here is in host memory. Where an engine keeps the
// model (host RAM, GPU memory) and in what precision is its own business.
#ifndef EMPOC_ENGINE_H
#define EMPOC_ENGINE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "checkpoint.h"

// ----------------------------------------------------------------------------
// The model. Each engine defines `struct Model`; the host layer reads only these fields of it:
//   ModelConfig config;               the shape (checkpoint.h)
//   size_t num_parameters;
//   unsigned char *tok; size_t tok_bytes;   the tokenizer blob the checkpoint carries (or NULL)
//   int n_eos, eos[CKPT_MAX_EOS];     token ids that end a response
//   float mean_loss;                  of the last model_forward with targets (-1 if it had none)
//   float *logp;                      (B, T) host: log p(target) of the last model_forward (0 without target)
//   float *dlogp;                     (B, T) host: dLoss/dlogp that model_backward reads. model_forward
//                                     sets it for the masked mean NLL; the caller may overwrite it.
//   int adam_step;                    AdamW steps taken (bias correction), saved with the run state
//   int target_rows_only;             host-set hint (0 by default): the host reads nothing of the rows
//                                     without a target, so an engine may skip their LM head; logp and
//                                     the gradients must not change by it
typedef struct Model Model;

// ----------------------------------------------------------------------------
// Lifecycle. Errors: 0 on success, else -1 with one line in err naming the file.
//   model_load          a checkpoint file (any dtype) -> a model ready for forward and training
//   model_init_random   N(0, 0.02) weights as transformers initializes Qwen2 (norms 1, biases 0); no
//                       tokenizer (the caller attaches one through m->tok)
//   model_save          the weights as a self-contained checkpoint in dtype, written atomically
//   model_reserve       the largest B x T the run will pass to model_forward: an engine may allocate
//                       its activations once here (optional; forward works for any size without it)
//   model_free
// model_save_optimizer / model_load_optimizer: the AdamW moments (and adam_step) as a block of the
// run checkpoint, in a layout of the engine's own choosing that it can read back; load returns -1
// with a message in err on a mismatch. A model that never stepped writes an empty block.
static int model_load(Model *m, const char *path, char *err, size_t errcap);
static void model_init_random(Model *m, const ModelConfig *cfg, uint64_t seed);
static int model_save(const Model *m, const char *path, int dtype, char *err, size_t errcap);
static void model_reserve(Model *m, int B, int T);
static void model_free(Model *m);
static int model_save_optimizer(const Model *m, FILE *f);
static int model_load_optimizer(Model *m, FILE *f, char *err, size_t errcap);

// The optimizer block's header, the same for both engines (so a run saved by one resumes on the
// other): int32 adam_step, has_moments (0 or 1), 0. The fp32 moments m then v follow when has_moments.
static inline int optimizer_header_write(FILE *f, int adam_step, int has_moments) {
    int32_t h[3] = {adam_step, has_moments, 0};
    return fwrite(h, sizeof h, 1, f) == 1 ? 0 : -1;
}
static inline int optimizer_header_read(FILE *f, int *adam_step, int *has_moments, char *err, size_t errcap) {
    int32_t h[3];
    if (fread(h, sizeof h, 1, f) != 1 || h[0] < 0 || (h[1] & ~1) || h[2] != 0) {
        snprintf(err, errcap, "optimizer state: bad header");
        return -1;
    }
    *adam_step = h[0];
    *has_moments = h[1];
    return 0;
}

// ----------------------------------------------------------------------------
// Training.
//   model_forward   inputs, targets (B, T) token ids, targets may be NULL (no loss) and -1 means "no
//                   target here"; mask (B, T) weights each position's loss (NULL = all 1). Leaves
//                   m->logp, m->mean_loss, m->dlogp (of the masked mean NLL) in host memory.
//   model_zero_grad
//   model_backward  accumulates into the gradients d/dparams of sum_{b,t} dlogp[b,t] * logp[b,t], for
//                   the forward just before it (micro-batches accumulate between zero_grad and update)
//   model_update    clips the global gradient norm to grad_clip (<= 0: off), then one AdamW step as
//                   torch.optim.AdamW. Returns the norm before clipping. If that norm is not finite (NaN/Inf
//                   gradients), nothing is updated: weights, moments and adam_step stay as they were, so the
//                   host can skip the step and go on (or stop) from a model that is still good.
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T);
static void model_zero_grad(Model *m);
static void model_backward(Model *m);
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_clip);

// ----------------------------------------------------------------------------
// Generation.
typedef struct {
    float temperature;  // 0 = greedy
    float top_p;        // 1 = off
    int top_k;          // 0 = off
    int max_new;        // max new tokens per response
    int min_new;        // EOS is ignored before this many tokens (benchmarks use it to force length)
    uint64_t seed;
    int no_token_stats; // 1: the caller will not read mean_entropy / mean_certainty (below), so an engine
                        // may skip them and leave both NULL (a pass over every logits row saved)
} SamplerConfig;

// G responses for each of n_prompts prompts. Response j = p*G + g. Tokens include the EOS that
// ended a response, if any; logprobs[j][t] is the model's own (untempered, untruncated) log-probability
// of tokens[j][t], which the PPO ratio uses.
//
// The token-level statistics the label-free rewards -r entropy (RENT) and -r certainty (Intuitor) use
// (doc/rewards.md). Both are of the untempered distribution p_t = softmax(logits_t) (T = 1, no top-k/p)
// at every position t whose token was sampled, so the reward does not depend on the sampling settings:
//   mean_entropy[j]   = (1/len) sum_t H(p_t),     H(p) = -sum_v p(v) log p(v)
//   mean_certainty[j] = (1/len) sum_t KL(U || p_t) = (1/len) sum_t (-log V - (1/V) sum_v log p_t(v))
// An engine computes them from the logits rows it already has for sampling (no second forward, no
// stored logits): with lse = logsumexp(logits), H = lse - sum_v p(v) logit(v) and
// KL(U || p) = lse - mean_v logit(v) - log V. Accumulate in double. A response with len 0 has 0.
// Every engine must set both pointers: malloc'd (n) arrays, or NULL if it does not compute them (the
// host then refuses -r entropy/certainty with a message), as it may when sc->no_token_stats is set.
// generation_free frees them.
typedef struct {
    int n;            // n_prompts * G
    int *len;         // (n) generated tokens
    int *eos;         // (n) 1 if the response ended with an EOS token
    int **tokens;     // (n) -> (len)
    float **logprobs; // (n) -> (len)
    float *mean_entropy;    // (n) or NULL: mean token entropy at T = 1 (nats)
    float *mean_certainty;  // (n) or NULL: mean self-certainty KL(U || p_t) at T = 1 (nats)
} Generation;

// Samples with sc, stopping a response at an EOS (once min_new tokens are out), after max_new tokens,
// or at the model's context. Response j draws from its own RNG stream (sc->seed, j), so the result does
// not depend on the batch or the thread count. verbose: progress on stderr. Frees with generation_free.
static void generate(Model *m, const int *const *prompts, const int *prompt_lens, int n_prompts, int G,
                     const SamplerConfig *sc, Generation *out, int verbose);

// A Generation is host memory that the caller owns (any engine fills it with malloc'd arrays).
static inline void generation_free(Generation *g) {
    for (int j = 0; j < g->n; j++) {
        free(g->tokens[j]);
        free(g->logprobs[j]);
    }
    free(g->len);
    free(g->eos);
    free(g->tokens);
    free(g->logprobs);
    free(g->mean_entropy);
    free(g->mean_certainty);
    memset(g, 0, sizeof *g);
}

// What every engine's generate() ends with: mean_entropy and mean_certainty (above), the means over
// each response's tokens, from the per-token sums the engine kept while sampling.
static inline void generation_set_token_means(Generation *g, const double *ent_sum, const double *cert_sum) {
    int n = g->n;
    g->mean_entropy = (float *)calloc((size_t)(n ? n : 1), sizeof(float));
    g->mean_certainty = (float *)calloc((size_t)(n ? n : 1), sizeof(float));
    if (!g->mean_entropy || !g->mean_certainty) {
        fprintf(stderr, "error: out of memory for the token statistics of %d responses\n", n);
        exit(1);
    }
    for (int j = 0; j < n; j++)
        if (g->len[j] > 0) {
            g->mean_entropy[j] = (float)(ent_sum[j] / g->len[j]);
            g->mean_certainty[j] = (float)(cert_sum[j] / g->len[j]);
        }
}

// Scoring without generating (the free-form verifier judge): for each of n token sequences
// ids[s] (lens[s] >= 1 tokens), the next-token log-probabilities of the n_cand ids cand[],
// out (n, n_cand). Sequences that share a prefix with the sequence before them may compute it once.
// max_seqs and max_tokens bound the memory of one pass. n_computed / n_shared (may be NULL) count
// the tokens run through the model and those copied from a shared prefix.
static void model_next_logprobs(Model *m, const int *const *ids, const int *lens, int n, const int *cand, int n_cand,
                                int max_seqs, int max_tokens, float *out, long *n_computed, long *n_shared);

#endif // EMPOC_ENGINE_H
