// checkpoint.h: the model config, the parameter layout, and the versioned .bin checkpoint
// (header + weights + embedded tokenizer) shared by train_empo.c, train_empo.cu and dev/convert.c.
// The format is documented in doc/formats.md. Every file is written atomically (temp + rename).
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <errno.h>
#include "utils.h"

#define CKPT_MAGIC 0x4F504D45u   // the bytes "EMPO" when read little-endian
#define CKPT_VERSION 1
#define CKPT_HEADER_INTS 256     // the header is 256 int32 = 1024 bytes
#define CKPT_DTYPE_FP32 0
#define CKPT_DTYPE_BF16 1
#define CKPT_MAX_EOS 4

typedef struct {
    int V;          // vocab size (rows of the embedding)
    int C;          // hidden size
    int L;          // number of layers
    int NH;         // query heads
    int NKV;        // key/value heads (GQA: NH % NKV == 0)
    int HD;         // head dim (C / NH for Qwen2)
    int I;          // MLP intermediate size
    int maxT;       // max sequence length
    int tied;       // LM head shares the embedding
    int qkv_bias;   // q, k, v projections have a bias
    float rope_theta;
    float rms_eps;
} ModelConfig;

// The parameter tensors, in file order. Each is stacked over layers where it has an L in front.
// q, k and v are fused into one matrix (rows: NH*HD q, then NKV*HD k, then NKV*HD v) and gate/up
// into one (rows: I gate, then I up), so each is one matmul. Biases are empty without qkv_bias,
// and lmw is empty when tied.
#define NUM_PARAM_TENSORS 10
enum { P_WTE, P_LN1W, P_QKVW, P_QKVB, P_ATTPROJW, P_LN2W, P_FCW, P_FCPROJW, P_LNFW, P_LMW };
static const char *const PARAM_NAMES[NUM_PARAM_TENSORS] = {
    "wte", "ln1w", "qkvw", "qkvb", "attprojw", "ln2w", "fcw", "fcprojw", "lnfw", "lmw"};

static inline int cfg_qkv_dim(const ModelConfig *c) { return (c->NH + 2 * c->NKV) * c->HD; }

static inline void fill_param_sizes(size_t sizes[NUM_PARAM_TENSORS], const ModelConfig *c) {
    size_t V = (size_t)c->V, C = (size_t)c->C, L = (size_t)c->L, I = (size_t)c->I;
    size_t QKV = (size_t)cfg_qkv_dim(c), QD = (size_t)c->NH * c->HD;
    sizes[P_WTE] = V * C;                 // (V, C)
    sizes[P_LN1W] = L * C;                // (L, C)
    sizes[P_QKVW] = L * QKV * C;          // (L, QKV, C)
    sizes[P_QKVB] = c->qkv_bias ? L * QKV : 0;  // (L, QKV)
    sizes[P_ATTPROJW] = L * C * QD;       // (L, C, NH*HD)
    sizes[P_LN2W] = L * C;                // (L, C)
    sizes[P_FCW] = L * 2 * I * C;         // (L, 2I, C)  gate rows then up rows
    sizes[P_FCPROJW] = L * C * I;         // (L, C, I)
    sizes[P_LNFW] = C;                    // (C)
    sizes[P_LMW] = c->tied ? 0 : V * C;   // (V, C)
}
static inline size_t count_params(const ModelConfig *c) {
    size_t s[NUM_PARAM_TENSORS], n = 0;
    fill_param_sizes(s, c);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += s[i];
    return n;
}

// Rejects configs that would make the shapes meaningless or overflow (also guards hostile files).
static inline const char *cfg_invalid(const ModelConfig *c) {
    if (c->V <= 0 || c->C <= 0 || c->L <= 0 || c->NH <= 0 || c->NKV <= 0 || c->HD <= 0 || c->I <= 0 || c->maxT <= 0)
        return "a size is zero or negative";
    if (c->V > (1 << 22) || c->C > (1 << 16) || c->L > 1024 || c->NH > 1024 || c->HD > 1024 || c->I > (1 << 18)
        || c->maxT > (1 << 22))
        return "a size is implausibly large";
    if (c->NH % c->NKV != 0) return "n_heads is not a multiple of n_kv_heads";
    if (c->HD % 2 != 0) return "head_dim must be even (rotary embedding)";
    if ((c->tied | c->qkv_bias) & ~1) return "flags must be 0 or 1";
    if (!(c->rope_theta > 0) || !(c->rms_eps > 0) || c->rms_eps > 1) return "rope_theta / rms_eps out of range";
    return NULL;
}

// bf16 <-> fp32. Round to nearest even; NaN stays NaN.
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}

// Everything a .bin holds. params is one fp32 block in file order (count_params floats).
typedef struct {
    ModelConfig cfg;
    int dtype;                  // how the weights were stored
    float *params;
    size_t num_params;
    unsigned char *tok;         // tokenizer blob (format owned by tokenizer.h), NULL if none
    size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];   // token ids that end a response
    // A training run's checkpoint carries its run state after the model (doc/formats.md, "Run
    // state"): run_offset is where that section starts, run_bytes its length (0: none), run_hash its
    // checksum as the trailer records it. ckpt_load checks the trailer's shape; the run layer
    // (train_empo.c) verifies and reads the section.
    long long run_offset, run_bytes;
    uint64_t run_hash;
} Checkpoint;

// The trailer that ends a file with a run state: 8 int32 = magic, version, the section's length
// (2 int32, low then high), its checksum (2 int32), 0, 0.
#define CKPT_RUN_MAGIC 0x52504D45u   // "EMPR"
#define CKPT_RUN_VERSION 1
#define CKPT_TRAILER_BYTES 32
// Header slots 21..23: 1 if a checksum is present, then the 64-bit hash64 (utils.h) of every byte
// after the header up to the end of the tokenizer blob (the weights as stored, then the blob).
// Files from before the checksum have 0 in slot 21 and are read without it.
#define CKPT_SLOT_HASHED 21

static inline void ckpt_free(Checkpoint *ck) { free(ck->params); free(ck->tok); ck->params = NULL; ck->tok = NULL; }


// Header <-> config. Floats are stored as their bit patterns.
static inline void ckpt_fill_header(int32_t h[CKPT_HEADER_INTS], const Checkpoint *ck) {
    memset(h, 0, CKPT_HEADER_INTS * sizeof(int32_t));
    const ModelConfig *c = &ck->cfg;
    h[0] = (int32_t)CKPT_MAGIC; h[1] = CKPT_VERSION; h[2] = ck->dtype;
    h[3] = c->V; h[4] = c->C; h[5] = c->L; h[6] = c->NH; h[7] = c->NKV; h[8] = c->I; h[9] = c->maxT;
    h[10] = c->tied; h[11] = c->qkv_bias;
    memcpy(&h[12], &c->rope_theta, 4); memcpy(&h[13], &c->rms_eps, 4);
    h[14] = c->HD;
    h[15] = (int32_t)ck->tok_bytes;
    h[16] = ck->n_eos;
    for (int i = 0; i < CKPT_MAX_EOS; i++) h[17 + i] = i < ck->n_eos ? ck->eos[i] : -1;
}

// The checksum that slots 21..23 hold: over the weights in ck->dtype, then the tokenizer blob.
static inline uint64_t ckpt_data_hash(const Checkpoint *ck) {
    Hash64 hs;
    hash64_init(&hs);
    if (ck->dtype == CKPT_DTYPE_FP32) {
        hash64_update(&hs, ck->params, ck->num_params * 4);
    } else {
        uint16_t buf[4096];
        for (size_t i = 0; i < ck->num_params; i += 4096) {
            size_t m = ck->num_params - i < 4096 ? ck->num_params - i : 4096;
            for (size_t j = 0; j < m; j++) buf[j] = f32_to_bf16(ck->params[i + j]);
            hash64_update(&hs, buf, m * 2);
        }
    }
    if (ck->tok_bytes) hash64_update(&hs, ck->tok, ck->tok_bytes);
    return hash64_final(&hs);
}

// Loads a checkpoint, converting bf16 weights to fp32. On failure returns -1 and writes one line
// into err naming the file and the problem; nothing is left allocated.
static inline int ckpt_load(const char *path, Checkpoint *ck, char *err, size_t errcap) {
    memset(ck, 0, sizeof *ck);
    char why[256];
    const char *nr = util_not_regular(path, why, sizeof why);
    if (nr && !strcmp(nr, "is a directory")) {
        util_err(err, errcap, path,
                 "is a directory; a Hugging Face folder? convert it with ./convert import DIR OUT.bin");
        return -1;
    }
    if (nr) { util_err(err, errcap, path, nr); return -1; }
    FILE *f = fopen(path, "rb");
    if (!f) { util_err(err, errcap, path, strerror(errno)); return -1; }
    int32_t h[CKPT_HEADER_INTS];
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); util_err(err, errcap, path, "cannot seek"); return -1; }
    long long fsize = ftell(f);
    rewind(f);
    if (fsize < (long long)sizeof h || fread(h, sizeof h, 1, f) != 1) {
        fclose(f);
        util_err(err, errcap, path, "too short for a checkpoint header (truncated or not a checkpoint)");
        return -1;
    }
    if ((uint32_t)h[0] != CKPT_MAGIC) {
        fclose(f);
        util_err(err, errcap, path, "bad magic: not an empo.c checkpoint");
        return -1;
    }
    if (h[1] != CKPT_VERSION) {
        char m[96];
        snprintf(m, sizeof m, "unsupported checkpoint version %d (this build reads %d)", h[1], CKPT_VERSION);
        fclose(f); util_err(err, errcap, path, m); return -1;
    }
    if (h[2] != CKPT_DTYPE_FP32 && h[2] != CKPT_DTYPE_BF16) {
        fclose(f);
        util_err(err, errcap, path, "unknown weight dtype");
        return -1;
    }
    ModelConfig *c = &ck->cfg;
    c->V = h[3]; c->C = h[4]; c->L = h[5]; c->NH = h[6]; c->NKV = h[7]; c->I = h[8]; c->maxT = h[9];
    c->tied = h[10]; c->qkv_bias = h[11];
    memcpy(&c->rope_theta, &h[12], 4); memcpy(&c->rms_eps, &h[13], 4);
    c->HD = h[14];
    const char *bad = cfg_invalid(c);
    if (bad) {
        fclose(f);
        char m[128];
        snprintf(m, sizeof m, "bad config in header: %s", bad);
        util_err(err, errcap, path, m);
        return -1;
    }
    ck->dtype = h[2];
    ck->tok_bytes = (size_t)(uint32_t)h[15];
    ck->n_eos = h[16];
    if (ck->n_eos < 0 || ck->n_eos > CKPT_MAX_EOS) {
        fclose(f);
        util_err(err, errcap, path, "bad EOS count in header");
        return -1;
    }
    for (int i = 0; i < ck->n_eos; i++) {
        ck->eos[i] = h[17 + i];
        if (ck->eos[i] < 0 || ck->eos[i] >= c->V) {
            fclose(f);
            util_err(err, errcap, path, "EOS id out of vocab range");
            return -1;
        }
    }
    ck->num_params = count_params(c);
    size_t el = ck->dtype == CKPT_DTYPE_BF16 ? 2 : 4;
    long long expect = (long long)sizeof h + (long long)(ck->num_params * el) + (long long)ck->tok_bytes;
    if (fsize >= expect + CKPT_TRAILER_BYTES) {   // a run state after the model?
        int32_t t[8];
        if (fseek(f, (long)(fsize - CKPT_TRAILER_BYTES), SEEK_SET) == 0 && fread(t, sizeof t, 1, f) == 1 &&
            (uint32_t)t[0] == CKPT_RUN_MAGIC) {
            long long len = (long long)((uint64_t)(uint32_t)t[2] | (uint64_t)(uint32_t)t[3] << 32);
            if (t[1] != CKPT_RUN_VERSION || len != fsize - CKPT_TRAILER_BYTES - expect) {
                fclose(f);
                util_err(err, errcap, path, "the run state after the model is damaged (bad trailer)");
                return -1;
            }
            ck->run_offset = expect;
            ck->run_bytes = len;
            ck->run_hash = (uint64_t)(uint32_t)t[4] | (uint64_t)(uint32_t)t[5] << 32;
            fsize = expect;
        }
        if (fseek(f, (long)sizeof h, SEEK_SET) != 0) {
            fclose(f); util_err(err, errcap, path, "cannot seek"); return -1;
        }
    }
    if (fsize != expect) {
        char m[160];
        snprintf(m, sizeof m, "file is %lld bytes but the header implies %lld (%s)", fsize, expect,
                 fsize < expect ? "truncated" : "trailing data or sizes that disagree");
        fclose(f); util_err(err, errcap, path, m); return -1;
    }
    ck->params = (float *)malloc(ck->num_params * sizeof(float));
    if (!ck->params) { fclose(f); util_err(err, errcap, path, "out of memory for the weights"); return -1; }
    int ok = 1;
    Hash64 hs;
    hash64_init(&hs);
    if (el == 4) {
        ok = fread(ck->params, 4, ck->num_params, f) == ck->num_params;
        if (ok) hash64_update(&hs, ck->params, ck->num_params * 4);
    } else {   // convert in chunks to keep the extra memory small
        const size_t CH = (size_t)1 << 16;
        uint16_t *buf = (uint16_t *)malloc(CH * sizeof(uint16_t));
        ok = buf != NULL;
        for (size_t i = 0; ok && i < ck->num_params; i += CH) {
            size_t n = ck->num_params - i < CH ? ck->num_params - i : CH;
            ok = fread(buf, 2, n, f) == n;
            if (ok) hash64_update(&hs, buf, n * 2);
            for (size_t j = 0; ok && j < n; j++) ck->params[i + j] = bf16_to_f32(buf[j]);
        }
        free(buf);
    }
    if (ok && ck->tok_bytes) {
        ck->tok = (unsigned char *)malloc(ck->tok_bytes);
        ok = ck->tok && fread(ck->tok, 1, ck->tok_bytes, f) == ck->tok_bytes;
        if (ok) hash64_update(&hs, ck->tok, ck->tok_bytes);
    }
    int e = ferror(f) ? errno : 0;
    fclose(f);
    if (!ok) {
        char m[300]; snprintf(m, sizeof m, "read failed: %s", e ? strerror(e) : "unexpected end of file");
        ckpt_free(ck); util_err(err, errcap, path, m); return -1;
    }
    if (h[CKPT_SLOT_HASHED] == 1) {
        uint64_t want = (uint64_t)(uint32_t)h[22] | (uint64_t)(uint32_t)h[23] << 32;
        if (hash64_final(&hs) != want) {
            ckpt_free(ck);
            util_err(err, errcap, path, "checksum mismatch: the weights or tokenizer are corrupted");
            return -1;
        }
    } else if (h[CKPT_SLOT_HASHED] != 0) {
        ckpt_free(ck); util_err(err, errcap, path, "bad checksum flag in header"); return -1;
    }
    for (size_t i = 0; i < ck->num_params; i++)
        if (ck->params[i] != ck->params[i] || ck->params[i] - ck->params[i] != 0) {
            char m[96]; snprintf(m, sizeof m, "weight %zu is NaN or Inf", i);
            ckpt_free(ck); util_err(err, errcap, path, m); return -1;
        }
    return 0;
}

static inline int ckpt__body(FILE *f, const void *user) {
    const Checkpoint *ck = (const Checkpoint *)user;
    int32_t h[CKPT_HEADER_INTS];
    ckpt_fill_header(h, ck);
    uint64_t hash = ckpt_data_hash(ck);
    h[CKPT_SLOT_HASHED] = 1;
    h[22] = (int32_t)(uint32_t)hash;
    h[23] = (int32_t)(uint32_t)(hash >> 32);
    if (fwrite(h, sizeof h, 1, f) != 1) return -1;
    if (ck->dtype == CKPT_DTYPE_FP32) {
        if (fwrite(ck->params, 4, ck->num_params, f) != ck->num_params) return -1;
    } else {
        const size_t CH = (size_t)1 << 16;
        uint16_t *buf = (uint16_t *)malloc(CH * sizeof(uint16_t));
        if (!buf) return -1;
        for (size_t i = 0; i < ck->num_params; i += CH) {
            size_t m = ck->num_params - i < CH ? ck->num_params - i : CH;
            for (size_t j = 0; j < m; j++) buf[j] = f32_to_bf16(ck->params[i + j]);
            if (fwrite(buf, 2, m, f) != m) { free(buf); return -1; }
        }
        free(buf);
    }
    if (ck->tok_bytes && fwrite(ck->tok, 1, ck->tok_bytes, f) != ck->tok_bytes) return -1;
    return 0;
}
// Saves ck (ck->params has ck->num_params fp32 values) in ck->dtype. 0 on success. Weights that
// are NaN or Inf are refused before anything is written, so a diverged model never replaces a good
// checkpoint (the loader would refuse the file anyway).
static inline int ckpt_save(const char *path, const Checkpoint *ck, char *err, size_t errcap) {
    if (cfg_invalid(&ck->cfg) || ck->num_params != count_params(&ck->cfg) || ck->tok_bytes > 0x7fffffffu) {
        util_err(err, errcap, path, "refusing to save an inconsistent checkpoint"); return -1;
    }
    for (size_t i = 0; i < ck->num_params; i++)
        if (ck->params[i] != ck->params[i] || ck->params[i] - ck->params[i] != 0) {
            char m[128];
            snprintf(m, sizeof m, "refusing to save: weight %zu is NaN or Inf (the file on disk is left as it was)", i);
            util_err(err, errcap, path, m); return -1;
        }
    return write_file_atomic(path, ckpt__body, ck, err, errcap);
}

#endif // CHECKPOINT_H
