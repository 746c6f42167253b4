// model.h: what both engines (train_empo.c on the CPU, train_empo.cu on the GPU) must compute bit
// for bit the same, kept once: the random number generator, the rotary-embedding tables, where each
// parameter tensor starts in the one parameter block, and the --init spec of a fresh model.
// C that also compiles as C++.
#ifndef EMPOC_MODEL_H
#define EMPOC_MODEL_H

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "checkpoint.h"

// A random number generator that is the same on every machine (xorshift64*), for init, sampling and
// the data order. Its state is one uint64, so it can be saved in a checkpoint.
static inline uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}
static inline float random_f32(uint64_t *state) { return (random_u32(state) >> 8) / 16777216.0f; }  // [0, 1)
static inline float random_normal(uint64_t *state) {   // Box-Muller
    float u1 = random_f32(state), u2 = random_f32(state);
    return sqrtf(-2.0f * logf(1.0f - u1)) * cosf(6.2831853f * u2);
}

// Rotary embedding tables, HF convention: for i < HD/2, freq_i = theta^(-2i/HD), and the pair
// (x[i], x[i + HD/2]) is rotated by angle pos*freq_i. Computed in fp32 as transformers does.
// cos, sin (maxT, HD/2)
static inline void rope_tables(float *cosb, float *sinb, int maxT, int HD, float theta) {
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

// Where each parameter tensor starts, in elements from the start of the one parameter block, in
// checkpoint order (checkpoint.h's P_* and fill_param_sizes). A tied LM head starts where wte does.
static inline void param_offsets(size_t off[NUM_PARAM_TENSORS], const size_t sizes[NUM_PARAM_TENSORS], int tied) {
    size_t o = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        off[i] = o;
        o += sizes[i];
    }
    if (tied) off[P_LMW] = off[P_WTE];
}

// The shape of a fresh model from an --init spec: "qwen1.5b" (Qwen2.5-Math-1.5B), or comma-separated
// keys over the small defaults C=128,L=4,NH=4,NKV=2,I=384,T=256 (tied, qkv bias): V, C, L, NH, NKV,
// I, T, tied; "qwen1.5b,T=2048" starts from the 1.5B shape. V = 0 (the default) leaves the vocabulary
// to the caller (the byte tokenizer's). Returns NULL, or what is wrong (in err).
static inline const char *model_spec_parse(const char *spec, ModelConfig *c, char *err, size_t errcap) {
    memset(c, 0, sizeof *c);
    c->C = 128; c->L = 4; c->NH = 4; c->NKV = 2; c->I = 384; c->maxT = 256; c->tied = 1; c->qkv_bias = 1;
    c->rope_theta = 10000.0f; c->rms_eps = 1e-6f;
    const char *s = spec;
    if (!strncmp(s, "qwen1.5b", 8) && (s[8] == 0 || s[8] == ',')) {
        c->V = 151936; c->C = 1536; c->L = 28; c->NH = 12; c->NKV = 2; c->I = 8960; c->maxT = 4096;
        s += s[8] ? 9 : 8;
    }
    while (*s) {
        char key[8];
        int val, used;
        if (sscanf(s, "%7[A-Za-z]=%d%n", key, &val, &used) != 2) {
            snprintf(err, errcap, "cannot read '%s' (expected e.g. C=128,L=4,NH=4,NKV=2,I=384,T=256 or qwen1.5b)", s);
            return err;
        }
        int *field = !strcmp(key, "V") ? &c->V : !strcmp(key, "C") ? &c->C : !strcmp(key, "L") ? &c->L
                   : !strcmp(key, "NH") ? &c->NH : !strcmp(key, "NKV") ? &c->NKV : !strcmp(key, "I") ? &c->I
                   : !strcmp(key, "T") ? &c->maxT : !strcmp(key, "tied") ? &c->tied : NULL;
        if (!field) {
            snprintf(err, errcap, "unknown key '%s' (V, C, L, NH, NKV, I, T, tied)", key);
            return err;
        }
        *field = val;
        s += used;
        if (*s == ',') s++;
    }
    if (c->NH <= 0 || c->C % c->NH) {
        snprintf(err, errcap, "C must be a multiple of NH");
        return err;
    }
    c->HD = c->C / c->NH;
    return NULL;
}

#endif // EMPOC_MODEL_H
