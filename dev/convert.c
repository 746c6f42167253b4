// convert.c: Hugging Face Qwen2 folder <-> empo.c checkpoint (.bin), in C, no Python.
//
//   ./convert import HF_DIR OUT.bin [bf16|fp32]   config.json + model.safetensors (or a sharded
//                                                 model.safetensors.index.json) + tokenizer.json
//   ./convert export IN.bin HF_DIR [bf16|fp32]    writes config.json, generation_config.json,
//                                                 model.safetensors, tokenizer.json, vocab.json,
//                                                 merges.txt, tokenizer_config.json
//
// import stores bf16 when every source tensor is BF16 (lossless) and fp32 otherwise, unless told;
// export keeps the checkpoint's dtype unless told. Every error is one line naming the file and
// the field or tensor, with a non-zero exit. See doc/tokenizer.md.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/stat.h>
#include "../empoc/json.h"
#include "../empoc/checkpoint.h"
#include "../empoc/safetensors.h"
#include "../empoc/tokenizer.h"

// ---------------------------------------------------------------------------------------------
// The HF tensor names and where each lives in our fused parameter block. Import and export walk
// the same list, so the mapping is written once.

typedef struct {
    char name[96];
    size_t offset;     // in floats, into the parameter block
    int ndim;
    int64_t shape[2];  // HF shape (rows, cols)
    int bias;          // a q/k/v bias (exported as zeros when the model has none)
} HfTensor;

// Fills out (room for 4 + 12*L entries) and returns the count. With qkv_bias 0, the bias entries
// still appear (offset unused) so that export can write the zero biases transformers expects.
static int conv_hf_tensors(const ModelConfig *c, HfTensor *out) {
    size_t sz[NUM_PARAM_TENSORS], base[NUM_PARAM_TENSORS], o = 0;
    fill_param_sizes(sz, c);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) { base[i] = o; o += sz[i]; }
    size_t C = (size_t)c->C, I = (size_t)c->I, QD = (size_t)c->NH * c->HD, KD = (size_t)c->NKV * c->HD;
    size_t QKV = (size_t)cfg_qkv_dim(c);
    int n = 0;
#define HF_ADD(NAME, OFF, R, K, B) do { HfTensor *t = &out[n++]; snprintf(t->name, sizeof t->name, "%s", NAME); \
        t->offset = (OFF); t->shape[0] = (int64_t)(R); t->shape[1] = (int64_t)(K); t->ndim = (K) ? 2 : 1; \
        t->bias = (B); } while (0)
    HF_ADD("model.embed_tokens.weight", base[P_WTE], c->V, C, 0);
    for (int l = 0; l < c->L; l++) {
        char nm[96];
        size_t L = (size_t)l;
#define LNAME(S) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, S), nm)
        HF_ADD(LNAME("input_layernorm.weight"), base[P_LN1W] + L * C, C, 0, 0);
        HF_ADD(LNAME("self_attn.q_proj.weight"), base[P_QKVW] + L * QKV * C, QD, C, 0);
        HF_ADD(LNAME("self_attn.q_proj.bias"), base[P_QKVB] + L * QKV, QD, 0, 1);
        HF_ADD(LNAME("self_attn.k_proj.weight"), base[P_QKVW] + (L * QKV + QD) * C, KD, C, 0);
        HF_ADD(LNAME("self_attn.k_proj.bias"), base[P_QKVB] + L * QKV + QD, KD, 0, 1);
        HF_ADD(LNAME("self_attn.v_proj.weight"), base[P_QKVW] + (L * QKV + QD + KD) * C, KD, C, 0);
        HF_ADD(LNAME("self_attn.v_proj.bias"), base[P_QKVB] + L * QKV + QD + KD, KD, 0, 1);
        HF_ADD(LNAME("self_attn.o_proj.weight"), base[P_ATTPROJW] + L * C * QD, C, QD, 0);
        HF_ADD(LNAME("post_attention_layernorm.weight"), base[P_LN2W] + L * C, C, 0, 0);
        HF_ADD(LNAME("mlp.gate_proj.weight"), base[P_FCW] + L * 2 * I * C, I, C, 0);
        HF_ADD(LNAME("mlp.up_proj.weight"), base[P_FCW] + (L * 2 * I + I) * C, I, C, 0);
        HF_ADD(LNAME("mlp.down_proj.weight"), base[P_FCPROJW] + L * C * I, C, I, 0);
#undef LNAME
    }
    HF_ADD("model.norm.weight", base[P_LNFW], C, 0, 0);
    if (!c->tied) HF_ADD("lm_head.weight", base[P_LMW], c->V, C, 0);
#undef HF_ADD
    return n;
}

static int conv_is_dir(const char *p) { struct stat s; return stat(p, &s) == 0 && S_ISDIR(s.st_mode); }
static int conv_is_file(const char *p) { struct stat s; return stat(p, &s) == 0 && S_ISREG(s.st_mode); }
static void conv_join(char *out, size_t cap, const char *dir, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

// ---------------------------------------------------------------------------------------------
// import

// config.json -> ModelConfig. 0 ok; -1 with err naming the file and field.
static int conv_read_hf_config(const char *path, ModelConfig *c, char *err, size_t errcap) {
    memset(c, 0, sizeof *c);
    size_t n;
    char *text = read_whole_file(path, &n);
    if (!text) { tok__err(err, errcap, "%s: cannot read (%s)", path, strerror(errno)); return -1; }
    JDoc d;
    if (json_parse(&d, text, n)) {
        tok__err(err, errcap, "%s: malformed JSON: %s", path, d.err);
        json_free(&d);
        free(text);
        return -1;
    }
    free(text);
    int rc = -1;
    const char *mt = json_str(&d, json_get(&d, 0, "model_type")), *act = json_str(&d, json_get(&d, 0, "hidden_act"));
    struct { const char *key; int *dst; int dflt; } ints[] = {
        {"vocab_size", &c->V, -1}, {"hidden_size", &c->C, -1}, {"num_hidden_layers", &c->L, -1},
        {"num_attention_heads", &c->NH, -1}, {"intermediate_size", &c->I, -1},
        {"max_position_embeddings", &c->maxT, -1}, {"num_key_value_heads", &c->NKV, 0}, {"head_dim", &c->HD, 0}};
    if (json_type(&d, 0) != J_OBJ) { tok__err(err, errcap, "%s: not a JSON object", path); goto done; }
    if (!mt || strcmp(mt, "qwen2")) {
        tok__err(err, errcap, "%s: model_type: expected \"qwen2\", got %s%s%s", path, mt ? "\"" : "",
                 mt ? mt : "nothing", mt ? "\"" : "");
        goto done;
    }
    if (act && strcmp(act, "silu")) {
        tok__err(err, errcap, "%s: hidden_act: only silu is supported, got \"%s\"", path, act);
        goto done;
    }
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int node = json_get(&d, 0, ints[i].key);
        if (node < 0 || json_type(&d, node) == J_NULL) {
            if (ints[i].dflt < 0) { tok__err(err, errcap, "%s: %s: missing", path, ints[i].key); goto done; }
            *ints[i].dst = 0;
            continue;
        }
        double v = json_num(&d, node, -1);
        if (!(v >= 1 && v <= (1 << 30)) || v != (double)(int)v) {
            tok__err(err, errcap, "%s: %s: not a positive integer", path, ints[i].key);
            goto done;
        }
        *ints[i].dst = (int)v;
    }
    if (!c->NKV) c->NKV = c->NH;
    if (!c->HD) c->HD = c->C / c->NH;
    c->tied = json_bool(&d, json_get(&d, 0, "tie_word_embeddings"), 0);   // Qwen2Config's default
    {
        // rope_theta lives at the top level, or (transformers >= 5) in rope_parameters
        int rp = json_get(&d, 0, "rope_parameters"), rs = json_get(&d, 0, "rope_scaling");
        double th = json_num(&d, json_get(&d, 0, "rope_theta"), json_num(&d, json_get(&d, rp, "rope_theta"), 10000.0));
        const char *rt = json_str(&d, json_get(&d, rp, "rope_type"));
        const char *st = json_str(&d, json_get(&d, rs, "rope_type")) ? json_str(&d,
                                                                                json_get(&d, rs,
                                                                                        "rope_type")) : json_str(&d,
                                                                                                json_get(&d, rs,
                                                                                                        "type"));
        if ((rt && strcmp(rt, "default")) || (json_type(&d, rs) == J_OBJ && (!st || strcmp(st, "default")))) {
            tok__err(err, errcap, "%s: rope_scaling: only the default rotary embedding is supported", path); goto done;
        }
        c->rope_theta = (float)th;
        c->rms_eps = (float)json_num(&d, json_get(&d, 0, "rms_norm_eps"), 1e-6);
    }
    if (json_bool(&d, json_get(&d, 0, "use_sliding_window"), 0)) {
        tok__err(err, errcap, "%s: use_sliding_window: sliding-window attention is not supported", path);
        goto done;
    }
    c->qkv_bias = 1;   // decided from the tensors by the caller
    {
        const char *bad = cfg_invalid(c);
        if (bad) { tok__err(err, errcap, "%s: %s", path, bad); goto done; }
    }
    rc = 0;
done:
    json_free(&d);
    return rc;
}

// The weights: one model.safetensors, or shards listed in model.safetensors.index.json.
typedef struct {
    StFile *files; int n_files;
    JDoc index; int has_index, weight_map;
    char index_path[1024];
} HfWeights;

static void conv_weights_close(HfWeights *w) {
    for (int i = 0; i < w->n_files; i++) st_close(&w->files[i]);
    free(w->files);
    if (w->has_index) json_free(&w->index);
    memset(w, 0, sizeof *w);
}

static int conv_weights_open(HfWeights *w, const char *dir, char *err, size_t errcap) {
    memset(w, 0, sizeof *w);
    char p[1024];
    conv_join(p, sizeof p, dir, "model.safetensors");
    if (conv_is_file(p)) {
        w->files = (StFile *)calloc(1, sizeof(StFile));
        if (!w->files) { tok__err(err, errcap, "%s: out of memory", p); return -1; }
        if (st_open(&w->files[0], p, err, errcap)) { free(w->files); w->files = NULL; return -1; }
        w->n_files = 1;
        return 0;
    }
    conv_join(w->index_path, sizeof w->index_path, dir, "model.safetensors.index.json");
    size_t n;
    char *text = read_whole_file(w->index_path, &n);
    if (!text) {
        tok__err(err, errcap, "%s: no model.safetensors and no model.safetensors.index.json", dir);
        return -1;
    }
    if (json_parse(&w->index, text, n)) {
        tok__err(err, errcap, "%s: malformed JSON: %s", w->index_path, w->index.err);
        json_free(&w->index); free(text); return -1;
    }
    free(text);
    w->has_index = 1;
    w->weight_map = json_get(&w->index, 0, "weight_map");
    if (json_type(&w->index, w->weight_map) != J_OBJ) {
        tok__err(err, errcap, "%s: weight_map: missing or not an object", w->index_path);
        conv_weights_close(w);
        return -1;
    }
    // open each distinct shard once
    w->files = (StFile *)calloc((size_t)json_len(&w->index, w->weight_map) + 1, sizeof(StFile));
    if (!w->files) { tok__err(err, errcap, "%s: out of memory", w->index_path); conv_weights_close(w); return -1; }
    for (int c = json_first(&w->index, w->weight_map); c >= 0; c = json_next(&w->index, c)) {
        const char *shard = json_str(&w->index, c);
        if (!shard || !*shard || strchr(shard, '/') || !strcmp(shard, "..")) {
            tok__err(err, errcap, "%s: weight_map[\"%s\"]: not a file name in the same folder", w->index_path,
                     json_key(&w->index, c));
            conv_weights_close(w);
            return -1;
        }
        conv_join(p, sizeof p, dir, shard);
        int seen = 0;
        for (int i = 0; i < w->n_files && !seen; i++) seen = !strcmp(w->files[i].path, p);
        if (seen) continue;
        if (st_open(&w->files[w->n_files], p, err, errcap)) { conv_weights_close(w); return -1; }
        w->n_files++;
    }
    return 0;
}

// Finds a tensor by name (in the shard the index names, or in the single file).
static const StTensor *conv_weights_find(const HfWeights *w, const char *name, StFile **file) {
    if (w->has_index) {
        const char *shard = json_str(&w->index, json_get(&w->index, w->weight_map, name));
        if (!shard) return NULL;
        for (int i = 0; i < w->n_files; i++) {
            const char *base = strrchr(w->files[i].path, '/');
            if (base && !strcmp(base + 1, shard)) { *file = &w->files[i]; return st_find(&w->files[i], name); }
        }
        return NULL;
    }
    *file = &w->files[0];
    return st_find(&w->files[0], name);
}

static const char *conv_weights_where(const HfWeights *w) { return w->has_index ? w->index_path : w->files[0].path; }

// dtype_arg: "bf16", "fp32" or NULL (bf16 when every source tensor is BF16).
static int convert_import(const char *dir, const char *out, const char *dtype_arg, int verbose, char *err,
                          size_t errcap) {
    if (!conv_is_dir(dir)) { tok__err(err, errcap, "%s: not a directory", dir); return -1; }
    char p[1024];
    ModelConfig c;
    conv_join(p, sizeof p, dir, "config.json");
    if (conv_read_hf_config(p, &c, err, errcap)) return -1;
    HfWeights w;
    if (conv_weights_open(&w, dir, err, errcap)) return -1;
    int rc = -1;
    Checkpoint ck; memset(&ck, 0, sizeof ck);
    Tokenizer tok; memset(&tok, 0, sizeof tok);
    HfTensor *map = NULL;
    int all_bf16 = 1;
    {
        char nm[96]; StFile *sf;
        snprintf(nm, sizeof nm, "model.layers.0.self_attn.q_proj.bias");
        c.qkv_bias = conv_weights_find(&w, nm, &sf) != NULL;
    }
    ck.cfg = c;
    ck.num_params = count_params(&c);
    ck.params = (float *)malloc(ck.num_params * sizeof(float));
    map = (HfTensor *)malloc((size_t)(4 + 12 * c.L) * sizeof(HfTensor));
    if (!ck.params || !map) {
        tok__err(err, errcap, "%s: out of memory for %zu parameters", out, ck.num_params);
        goto done;
    }
    {
        int nt = conv_hf_tensors(&c, map);
        for (int i = 0; i < nt; i++) {
            const HfTensor *m = &map[i];
            if (m->bias && !c.qkv_bias) continue;
            StFile *sf = NULL;
            const StTensor *t = conv_weights_find(&w, m->name, &sf);
            if (!t) { tok__err(err, errcap, "%s: missing tensor %s", conv_weights_where(&w), m->name); goto done; }
            int ok = t->ndim == m->ndim;
            for (int k = 0; ok && k < m->ndim; k++) ok = t->shape[k] == m->shape[k];
            if (!ok) {
                char got[128] = "", want[64];
                size_t g = 0;
                for (int k = 0; k < t->ndim && g < sizeof got - 24; k++) g += (size_t)snprintf(got + g, sizeof got - g,
                        k ? ", %lld" : "%lld", (long long)t->shape[k]);
                if (m->ndim == 2) snprintf(want, sizeof want, "%lld, %lld", (long long)m->shape[0],
                                           (long long)m->shape[1]);
                else snprintf(want, sizeof want, "%lld", (long long)m->shape[0]);
                tok__err(err, errcap, "%s: tensor %s: shape [%s], expected [%s] from config.json", sf->path, m->name,
                         got, want);
                goto done;
            }
            if (st_read_f32(sf, t, ck.params + m->offset, err, errcap)) goto done;
            size_t n = (size_t)st_numel(t);
            for (size_t k = 0; k < n; k++) {
                float x = ck.params[m->offset + k];
                if (x != x || x - x != 0) {
                    tok__err(err, errcap, "%s: tensor %s: element %zu is NaN or Inf", sf->path, m->name, k);
                    goto done;
                }
            }
            if (t->dtype != ST_BF16) all_bf16 = 0;
        }
    }
    if (dtype_arg && strcmp(dtype_arg, "bf16") && strcmp(dtype_arg, "fp32")) {
        tok__err(err, errcap, "dtype must be bf16 or fp32, got \"%s\"", dtype_arg);
        goto done;
    }
    int bf16 = dtype_arg ? !strcmp(dtype_arg, "bf16") : all_bf16;
    ck.dtype = bf16 ? CKPT_DTYPE_BF16 : CKPT_DTYPE_FP32;
    conv_join(p, sizeof p, dir, "tokenizer.json");
    if (tokenizer_load_json(&tok, p, err, errcap)) goto done;
    if (tok.n_vocab > c.V) {
        // ids past the embedding would index out of bounds; holes and unused rows are fine
        int hi = tok.n_vocab - 1;
        while (hi >= c.V && tok.off[hi + 1] == tok.off[hi]) hi--;
        if (hi >= c.V) {
            tok__err(err, errcap, "%s: token id %d is outside the model's vocab_size %d", p, hi, c.V);
            goto done;
        }
    }
    ck.tok = tokenizer_to_blob(&tok, &ck.tok_bytes);
    if (!ck.tok) { tok__err(err, errcap, "%s: out of memory", out); goto done; }
    ck.n_eos = tokenizer_eos_ids(&tok, ck.eos, CKPT_MAX_EOS);
    if (ckpt_save(out, &ck, err, errcap)) goto done;
    if (verbose)
        printf("imported %s -> %s: V=%d C=%d L=%d NH=%d NKV=%d HD=%d I=%d maxT=%d tied=%d qkv_bias=%d, %.1fM params "
               "(%s), tokenizer %d ids / %d merges, eos",
               dir, out, c.V, c.C, c.L, c.NH, c.NKV, c.HD, c.I, c.maxT, c.tied, c.qkv_bias, ck.num_params / 1e6,
               ck.dtype == CKPT_DTYPE_BF16 ? "bf16" : "fp32", tok.n_vocab, tok.n_merges);
    if (verbose) { for (int i = 0; i < ck.n_eos; i++) printf(" %d", ck.eos[i]); printf("\n"); }
    rc = 0;
done:
    free(map);
    tokenizer_free(&tok);
    ckpt_free(&ck);
    conv_weights_close(&w);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// export

typedef struct { const Checkpoint *ck; const Tokenizer *tok; int dtype; } ExportCtx;

static int conv_write_config_json(FILE *f, const void *user) {
    const ExportCtx *x = (const ExportCtx *)user;
    const ModelConfig *c = &x->ck->cfg;
    int eot = x->tok ? tokenizer_special_id(x->tok, "<|endoftext|>") : -1;
    fprintf(f, "{\n  \"architectures\": [\"Qwen2ForCausalLM\"],\n  \"model_type\": \"qwen2\",\n");
    fprintf(f,
            "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": "
            "%d,\n",
            c->V, c->C, c->I, c->L);
    fprintf(f, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n", c->NH, c->NKV,
            c->HD);
    fprintf(f, "  \"max_position_embeddings\": %d,\n  \"rope_theta\": %.9g,\n  \"rms_norm_eps\": %.9g,\n", c->maxT,
            c->rope_theta, c->rms_eps);
    fprintf(f, "  \"tie_word_embeddings\": %s,\n  \"hidden_act\": \"silu\",\n", c->tied ? "true" : "false");
    fprintf(f, "  \"use_sliding_window\": false,\n  \"sliding_window\": %d,\n  \"max_window_layers\": %d,\n", c->maxT,
            c->L);
    fprintf(f, "  \"attention_dropout\": 0.0,\n  \"initializer_range\": 0.02,\n  \"use_cache\": true,\n");
    if (eot >= 0) fprintf(f, "  \"bos_token_id\": %d,\n", eot);
    if (x->ck->n_eos) fprintf(f, "  \"eos_token_id\": %d,\n", x->ck->eos[0]);
    fprintf(f, "  \"torch_dtype\": \"%s\"\n}\n", x->dtype == CKPT_DTYPE_BF16 ? "bfloat16" : "float32");
    return ferror(f) ? -1 : 0;
}
static int conv_write_generation_config(FILE *f, const void *user) {
    const ExportCtx *x = (const ExportCtx *)user;
    int eot = x->tok ? tokenizer_special_id(x->tok, "<|endoftext|>") : -1;
    fprintf(f, "{\n");
    if (eot >= 0) fprintf(f, "  \"bos_token_id\": %d,\n  \"pad_token_id\": %d,\n", eot, eot);
    fprintf(f, "  \"eos_token_id\": [");
    for (int i = 0; i < x->ck->n_eos; i++) fprintf(f, i ? ", %d" : "%d", x->ck->eos[i]);
    fprintf(f, "],\n  \"do_sample\": false\n}\n");
    return ferror(f) ? -1 : 0;
}
static int conv_write_tokenizer_json(FILE *f, const void *user) {
    tokenizer_write_hf_json(f, ((const ExportCtx *)user)->tok);
    return ferror(f) ? -1 : 0;
}
static int conv_write_vocab_json(FILE *f, const void *user) {
    tokenizer_write_vocab_json(f, ((const ExportCtx *)user)->tok);
    return ferror(f) ? -1 : 0;
}
static int conv_write_merges_txt(FILE *f, const void *user) {
    tokenizer_write_merges_txt(f, ((const ExportCtx *)user)->tok);
    return ferror(f) ? -1 : 0;
}
static int conv_write_tokenizer_config(FILE *f, const void *user) {
    const ExportCtx *x = (const ExportCtx *)user;
    const Tokenizer *t = x->tok;
    int eos = x->ck->n_eos ? x->ck->eos[0] : -1, eot = tokenizer_special_id(t, "<|endoftext|>");
    fprintf(f, "{\n  \"add_bos_token\": false,\n  \"add_prefix_space\": false,\n  \"added_tokens_decoder\": {");
    int first = 1;
    for (int id = 0; id < t->n_vocab; id++) if (t->flags[id] & TOK_F_ADDED) {
        fprintf(f, "%s\n    \"%d\": {\"content\": ", first ? "" : ",", id); first = 0;
        json_write_str(f, (const char *)t->bytes + t->off[id], t->off[id + 1] - t->off[id]);
        fprintf(f,
                ", \"lstrip\": false, \"normalized\": false, \"rstrip\": false, \"single_word\": false, \"special\": "
                "%s}",
                (t->flags[id] & TOK_F_SPECIAL) ? "true" : "false");
    }
    fprintf(f, "\n  },\n  \"bos_token\": null,\n  \"chat_template\": ");
    json_write_str(f, TOK_CHATML_JINJA, strlen(TOK_CHATML_JINJA));
    fprintf(f, ",\n  \"clean_up_tokenization_spaces\": false,\n  \"eos_token\": ");
    if (eos >= 0) json_write_str(f, (const char *)t->bytes + t->off[eos],
                                 t->off[eos + 1] - t->off[eos]); else fputs("null", f);
    fprintf(f, ",\n  \"errors\": \"replace\",\n  \"model_max_length\": %d,\n  \"pad_token\": ", x->ck->cfg.maxT);
    if (eot >= 0) json_write_str(f, (const char *)t->bytes + t->off[eot],
                                 t->off[eot + 1] - t->off[eot]); else fputs("null", f);
    fprintf(f,
            ",\n  \"split_special_tokens\": false,\n  \"tokenizer_class\": \"Qwen2Tokenizer\",\n  \"unk_token\": "
            "null\n}\n");
    return ferror(f) ? -1 : 0;
}

static int convert_export(const char *in, const char *dir, const char *dtype_arg, int verbose, char *err,
                          size_t errcap) {
    Checkpoint ck;
    if (ckpt_load(in, &ck, err, errcap)) return -1;
    int rc = -1;
    Tokenizer tok; memset(&tok, 0, sizeof tok);
    int have_tok = 0;
    HfTensor *map = NULL;
    StOut *outs = NULL;
    ExportCtx x = {&ck, NULL, ck.dtype};
    char p[1024];
    if (dtype_arg) {
        if (strcmp(dtype_arg, "bf16") && strcmp(dtype_arg, "fp32")) {
            tok__err(err, errcap, "dtype must be bf16 or fp32, got \"%s\"", dtype_arg);
            goto done;
        }
        x.dtype = !strcmp(dtype_arg, "bf16") ? CKPT_DTYPE_BF16 : CKPT_DTYPE_FP32;
    }
    if (ck.tok_bytes) {
        char e2[400];
        if (tokenizer_from_blob(&tok, ck.tok, ck.tok_bytes, e2, sizeof e2)) {
            tok__err(err, errcap, "%s: %s", in, e2);
            goto done;
        }
        have_tok = 1; x.tok = &tok;
    }
    if (!conv_is_dir(dir) && mkdir(dir, 0755) != 0) {
        tok__err(err, errcap, "%s: cannot create directory (%s)", dir, strerror(errno));
        goto done;
    }
    map = (HfTensor *)malloc((size_t)(4 + 12 * ck.cfg.L) * sizeof(HfTensor));
    outs = (StOut *)malloc((size_t)(4 + 12 * ck.cfg.L) * sizeof(StOut));
    if (!map || !outs) { tok__err(err, errcap, "%s: out of memory", dir); goto done; }
    {
        int nt = conv_hf_tensors(&ck.cfg, map);
        for (int i = 0; i < nt; i++) {
            outs[i].name = map[i].name;
            outs[i].dtype = x.dtype == CKPT_DTYPE_BF16 ? ST_BF16 : ST_F32;
            outs[i].ndim = map[i].ndim;
            outs[i].shape[0] = map[i].shape[0]; outs[i].shape[1] = map[i].shape[1];
            outs[i].data = (map[i].bias && !ck.cfg.qkv_bias) ? NULL : ck.params + map[i].offset;   // NULL: zeros
        }
        conv_join(p, sizeof p, dir, "model.safetensors");
        if (st_write(p, outs, nt, err, errcap)) goto done;
    }
    conv_join(p, sizeof p, dir, "config.json");
    if (write_file_atomic(p, conv_write_config_json, &x, err, errcap)) goto done;
    conv_join(p, sizeof p, dir, "generation_config.json");
    if (write_file_atomic(p, conv_write_generation_config, &x, err, errcap)) goto done;
    if (have_tok) {
        conv_join(p, sizeof p, dir, "tokenizer.json");
        if (write_file_atomic(p, conv_write_tokenizer_json, &x, err, errcap)) goto done;
        conv_join(p, sizeof p, dir, "vocab.json");
        if (write_file_atomic(p, conv_write_vocab_json, &x, err, errcap)) goto done;
        conv_join(p, sizeof p, dir, "merges.txt");
        if (write_file_atomic(p, conv_write_merges_txt, &x, err, errcap)) goto done;
        conv_join(p, sizeof p, dir, "tokenizer_config.json");
        if (write_file_atomic(p, conv_write_tokenizer_config, &x, err, errcap)) goto done;
    } else fprintf(stderr, "warning: %s has no tokenizer; wrote no tokenizer files\n", in);
    if (verbose) printf("exported %s -> %s (%s weights%s)\n", in, dir, x.dtype == CKPT_DTYPE_BF16 ? "bf16" : "fp32",
                        have_tok ? ", tokenizer" : "");
    rc = 0;
done:
    free(map); free(outs);
    tokenizer_free(&tok);
    ckpt_free(&ck);
    return rc;
}

#ifndef CONVERT_NO_MAIN
static void conv_usage(void) {
    fprintf(stderr,
            "usage: convert import HF_DIR OUT.bin [bf16|fp32]   Hugging Face Qwen2 folder -> checkpoint\n"
            "       convert export IN.bin HF_DIR [bf16|fp32]    checkpoint -> Hugging Face folder\n"
            "import reads config.json, model.safetensors (or model.safetensors.index.json + shards) and\n"
            "tokenizer.json; it stores bf16 when every source tensor is BF16, else fp32, unless told.\n"
            "export writes config.json, generation_config.json, model.safetensors, tokenizer.json,\n"
            "vocab.json, merges.txt and tokenizer_config.json, in the checkpoint's dtype unless told.\n");
}
int main(int argc, char **argv) {
    char err[1024] = "";
    if (argc < 4 || argc > 5) { conv_usage(); return 2; }
    int rc;
    if (!strcmp(argv[1], "import")) rc = convert_import(argv[2], argv[3], argc == 5 ? argv[4] : NULL, 1, err,
                                                        sizeof err);
    else if (!strcmp(argv[1], "export")) rc = convert_export(argv[2], argv[3], argc == 5 ? argv[4] : NULL, 1, err,
                                                             sizeof err);
    else { conv_usage(); return 2; }
    if (rc) { fprintf(stderr, "convert: %s\n", err); return 1; }
    return 0;
}
#endif
