// test_seam.c: the engine seam holds. train_empo.c's host layer (sections 5-12) is compiled here
// against an engine that has nothing but what empoc/engine.h names: a Model with only the public
// fields, and the engine functions as stubs. If the host layer touched anything else of the CPU
// model (its activations, its KV cache, its gradients), this file would not compile, and
// train_empo.cu, which plugs in the same way, would not either. The run checks that the stubs
// are the only engine: the CPU engine's sections are compiled out.
#include "../../empoc/checkpoint.h"

struct Model {   // exactly the public fields of engine.h
    ModelConfig config;
    size_t num_parameters;
    unsigned char *tok;
    size_t tok_bytes;
    int n_eos, eos[CKPT_MAX_EOS];
    float mean_loss;
    float *logp, *dlogp;
    int adam_step;
    int target_rows_only;
};
#define EMPO_EXTERNAL_ENGINE
#define TESTING
#include "../../train_empo.c"
#include "test_util.h"

static int stub_calls = 0;
static int model_load(Model *m, const char *path, char *err, size_t errcap) {
    stub_calls++;
    snprintf(err, errcap, "%s: stub engine", path);
    return -1;
}
static void model_init_random(Model *m, const ModelConfig *cfg, uint64_t seed) { stub_calls++; }
static int model_save(const Model *m, const char *path, int dtype, char *err, size_t errcap) { return -1; }
static void model_reserve(Model *m, int B, int T) {}
static void model_free(Model *m) {}
static int model_save_optimizer(const Model *m, FILE *f) { return -1; }
static int model_load_optimizer(Model *m, FILE *f, char *err, size_t errcap) { return -1; }
static void model_forward(Model *m, const int *inputs, const int *targets, const float *mask, int B, int T) {}
static void model_zero_grad(Model *m) {}
static void model_backward(Model *m) {}
static float model_update(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                          float grad_clip) {
    return 0.0f;
}
static void generate(Model *m, const int *const *prompts, const int *prompt_lens, int n_prompts, int G,
                     const SamplerConfig *sc, Generation *out, int verbose) {}
static void model_next_logprobs(Model *m, const int *const *ids, const int *lens, int n, const int *cand, int n_cand,
                                int max_seqs, int max_tokens, float *out, long *n_computed, long *n_shared) {}

int main(void) {
    Model m;
    char err[128];
    memset(&m, 0, sizeof m);
    check(model_load(&m, "x.bin", err, sizeof err) != 0 && stub_calls == 1 && strstr(err, "stub engine"),
          "the host layer of train_empo.c compiles against an engine that has only engine.h's public fields");
    RunConfig rc;
    run_config_defaults(&rc, 1);
    check(rc.G == 8 && rc.tc.micro == 32 && !strcmp(rc.data_path, DEMO_DIR "/train.jsonl"),
          "the flag table's defaults reach the host layer without the CPU engine (G=%d, micro=%d)", rc.G,
          rc.tc.micro);
    return test_summary("seam");
}
