// test_empo.c: checks train_empo.c against reference tensors made by PyTorch + transformers'
// Qwen2ForCausalLM (dev/make_fixtures.py): logits, loss, every parameter gradient, and 10 AdamW
// steps with clipping, for two configs; plus the checkpoint loader's rejection of bad files.
// Ends with "empo: N passed, N failed".
#define TESTING
#include "train_empo.c"

static int n_pass = 0, n_fail = 0;
static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++; else n_fail++;
}

// Max abs error relative to the reference tensor's scale: max|a-b| / max|b|. Scale-relative,
// because gradients hold many entries near zero whose elementwise relative error means nothing.
static float rel_err(const float *a, const float *b, size_t n, float *max_abs) {
    float e = 0.0f, s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= e)) e = d;   // NaN counts as an infinite error
        if (fabsf(b[i]) > s) s = fabsf(b[i]);
    }
    if (max_abs) *max_abs = e;
    return s > 0 ? e / s : e;
}

typedef struct {
    int B, T, steps;
    float lr, beta1, beta2, eps, wd, clip;
    int *inputs, *targets;
    float *mask, *logits, loss, *grads, *losses;
} State;

static void *read_exact(FILE *f, size_t n, const char *path) {
    void *p = xmalloc(n);
    if (fread(p, 1, n, f) != n) FATAL("%s: truncated fixture", path);
    return p;
}
static void state_load(State *s, const char *path, const Model *m) {
    FILE *f = fopen(path, "rb");
    if (!f) FATAL("cannot open fixture %s (run make fixtures)", path);
    int32_t h[256];
    if (fread(h, sizeof h, 1, f) != 1 || h[0] != 0x54534D45 || h[1] != 1) FATAL("%s: not a state fixture", path);
    s->B = h[2]; s->T = h[3]; s->steps = h[4];
    memcpy(&s->lr, &h[5], 4); memcpy(&s->beta1, &h[6], 4); memcpy(&s->beta2, &h[7], 4);
    memcpy(&s->eps, &h[8], 4); memcpy(&s->wd, &h[9], 4); memcpy(&s->clip, &h[10], 4);
    size_t BT = (size_t)s->B * s->T;
    s->inputs = (int *)read_exact(f, BT * 4, path);
    s->targets = (int *)read_exact(f, BT * 4, path);
    s->mask = (float *)read_exact(f, BT * 4, path);
    s->logits = (float *)read_exact(f, BT * m->config.V * 4, path);
    float *loss = (float *)read_exact(f, 4, path); s->loss = *loss; free(loss);
    s->grads = (float *)read_exact(f, m->num_parameters * 4, path);
    s->losses = (float *)read_exact(f, (size_t)s->steps * 4, path);
    fclose(f);
}
static void state_free(State *s) { free(s->inputs); free(s->targets); free(s->mask); free(s->logits); free(s->grads); free(s->losses); }

// Tolerances. fp32 everywhere, same math as torch but different summation order:
//  - logits/loss: 1e-5 of the tensor's scale.
//  - gradients: 1e-4 of each tensor's scale. A gradient entry is a sum over all B*T positions of
//    products that went through the whole network twice (forward and backward), so fp32
//    reordering errors add up over more terms than in the logits.
//  - step losses: 1e-4 relative per step (1e-5 absolute floor for near-zero losses). Adam divides
//    by sqrt(v), which turns tiny gradient differences on near-zero entries into full-size steps,
//    so the trajectories drift apart slowly; 10 steps stay well within this.
static void test_fixture(const char *name) {
    char mpath[256], spath[256], err[512];
    snprintf(mpath, sizeof mpath, "dev/fixtures/%s.bin", name);
    snprintf(spath, sizeof spath, "dev/fixtures/%s_state.bin", name);
    Model m;
    if (model_load(&m, mpath, err, sizeof err) != 0) { check(0, "%s: load: %s", name, err); return; }
    State s;
    state_load(&s, spath, &m);
    int B = s.B, T = s.T, V = m.config.V;
    model_forward(&m, s.inputs, s.targets, s.mask, B, T);
    float abs_err, e = rel_err(m.acts.logits, s.logits, (size_t)B * T * V, &abs_err);
    check(e < 1e-5f, "%s: logits (%d,%d,%d) rel err %.2e (max abs %.2e)", name, B, T, V, e, abs_err);
    float le = fabsf(m.mean_loss - s.loss) / fabsf(s.loss);
    check(le < 1e-5f, "%s: loss %.7f vs torch %.7f (rel err %.2e)", name, m.mean_loss, s.loss, le);
    model_zero_grad(&m);
    model_backward(&m);
    float *ref = s.grads, *ours = m.grads_memory;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        size_t n = m.param_sizes[i];
        if (n == 0) continue;
        e = rel_err(ours, ref, n, &abs_err);
        check(e < 1e-4f, "%s: grad %-8s (%7zu) rel err %.2e (max abs %.2e)", name, PARAM_NAMES[i], n, e, abs_err);
        ours += n; ref += n;
    }
    // 10 AdamW steps from the same start, as the fixture did
    float worst = 0.0f;
    int ok = 1;
    for (int step = 0; step < s.steps; step++) {
        model_forward(&m, s.inputs, s.targets, s.mask, B, T);
        model_zero_grad(&m);
        model_backward(&m);
        model_update(&m, s.lr, s.beta1, s.beta2, s.eps, s.wd, s.clip);
        float d = fabsf(m.mean_loss - s.losses[step]), r = d / fmaxf(fabsf(s.losses[step]), 0.1f);
        if (r > worst) worst = r;
        if (!(r < 1e-4f || d < 1e-5f)) { ok = 0; printf("  step %d: loss %.7f vs torch %.7f\n", step, m.mean_loss, s.losses[step]); }
    }
    check(ok, "%s: %d AdamW steps, losses %.5f -> %.5f (torch %.5f -> %.5f), worst rel err %.2e", name, s.steps,
          s.losses[0], m.mean_loss, s.losses[0], s.losses[s.steps - 1], worst);
    state_free(&s);
    model_free(&m);
}

// The loader must reject damaged files with a message, never crash or accept garbage.
static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) FATAL("cannot write %s", path);
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}
static void expect_reject(const char *what, const void *bytes, size_t n, const char *needle) {
    const char *path = "/tmp/empo_test_bad.bin";
    write_bytes(path, bytes, n);
    Checkpoint ck;
    char err[512] = "";
    int rc = ckpt_load(path, &ck, err, sizeof err);
    if (rc == 0) ckpt_free(&ck);
    check(rc != 0 && strstr(err, needle) != NULL, "checkpoint rejects %s: \"%s\"", what, err);
    remove(path);
}
static void test_checkpoint_errors(void) {
    size_t n;
    char *good = read_whole_file("dev/fixtures/qwen2_tied.bin", &n);
    if (!good) { check(0, "read dev/fixtures/qwen2_tied.bin"); return; }
    char *bad = (char *)xmalloc(n + 16);
    expect_reject("an empty file", good, 0, "too short");
    expect_reject("a truncated header", good, 100, "too short");
    expect_reject("truncated weights", good, n - 4, "truncated");
    memcpy(bad, good, n); memset(bad + n, 0, 16);
    expect_reject("trailing bytes", bad, n + 16, "trailing");
    memcpy(bad, good, n); bad[0] ^= 1;
    expect_reject("a wrong magic", bad, n, "magic");
    memcpy(bad, good, n); ((int32_t *)bad)[1] = 99;
    expect_reject("a wrong version", bad, n, "version");
    memcpy(bad, good, n); ((int32_t *)bad)[4] = 65;   // C: sizes disagree with the file length
    expect_reject("sizes that disagree", bad, n, "header implies");
    memcpy(bad, good, n); ((int32_t *)bad)[7] = 3;    // NKV does not divide NH
    expect_reject("inconsistent heads", bad, n, "multiple");
    memcpy(bad, good, n); ((int32_t *)bad)[3] = -5;
    expect_reject("a negative vocab", bad, n, "negative");
    memcpy(bad, good, n); ((float *)(bad + 1024))[7] = NAN;
    expect_reject("a NaN weight", bad, n, "NaN");
    expect_reject("a foreign file", "hello world, this is not a checkpoint at all", 44, "too short");
    free(bad); free(good);
    // round trip: save as bf16 and fp32, load back
    Model m; char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_untied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    const char *p32 = "/tmp/empo_test_rt32.bin", *p16 = "/tmp/empo_test_rt16.bin";
    int ok = model_save(&m, p32, CKPT_DTYPE_FP32, err, sizeof err) == 0 && model_save(&m, p16, CKPT_DTYPE_BF16, err, sizeof err) == 0;
    Checkpoint a, b;
    ok = ok && ckpt_load(p32, &a, err, sizeof err) == 0;
    ok = ok && ckpt_load(p16, &b, err, sizeof err) == 0;
    if (ok) {
        float e32 = rel_err(a.params, m.params_memory, m.num_parameters, NULL);
        float e16 = 0.0f;   // bf16 keeps 8 bits of mantissa: each value within 2^-8 relative
        for (size_t i = 0; i < m.num_parameters; i++) {
            float r = fabsf(b.params[i] - m.params_memory[i]) / fmaxf(fabsf(m.params_memory[i]), 1e-30f);
            if (r > e16) e16 = r;
        }
        check(e32 == 0.0f && e16 <= 1.0f / 256 && b.dtype == CKPT_DTYPE_BF16,
              "checkpoint round trip: fp32 exact (%.1e), bf16 within 2^-8 (%.2e)", e32, e16);
        ckpt_free(&a); ckpt_free(&b);
    } else check(0, "checkpoint round trip: %s", err);
    remove(p32); remove(p16);
    model_free(&m);
}

int main(void) {
    test_fixture("qwen2_tied");
    test_fixture("qwen2_untied");
    test_checkpoint_errors();
    printf("empo: %d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
