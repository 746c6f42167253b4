// test_util.h: the few helpers every test program shares: PASS/FAIL counting, a scale-relative
// tensor error, and running the command-line program to check its output and exit status.
// Each test ends with "NAME: N passed, N failed" (test_summary), which `make test` adds up.
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

static int n_pass = 0, n_fail = 0;
static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) n_pass++; else n_fail++;
}
// Prints the closing line and returns the exit status.
static int test_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, n_pass, n_fail);
    return n_fail ? 1 : 0;
}

// A scratch file's path of this process's own, /tmp/empo.PID.NAME in buf: two test programs that run at
// once (make -j, the emulator's fp32 and bf16 builds) must not write each other's files.
static const char *tmp_file(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "/tmp/empo.%d.%s", (int)getpid(), name);
    return buf;
}

// Max abs error relative to the reference tensor's scale: max|a-b| / max|b|. Scale-relative,
// because gradients hold many entries near zero whose elementwise relative error means nothing.
static float rel_err(const float *a, const float *b, size_t n, float *max_abs) {
    float e = 0.0f, s = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= e)) e = d == d ? d : INFINITY;   // NaN counts as an infinite error, and stays one
        if (fabsf(b[i]) > s) s = fabsf(b[i]);
    }
    if (max_abs) *max_abs = e;
    return s > 0 ? e / s : e;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "error: cannot write %s\n", path); exit(1); }
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}
static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

// Runs a shell command; returns its exit status and (up to cap bytes of) its stdout + stderr.
static int run_cmd(const char *cmd, char *out, size_t cap) {
    char full[2048];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
// The command must succeed (or fail, with want_fail) and print needle. Shows the line it found.
static void expect_cmd(const char *what, const char *cmd, int want_fail, const char *needle) {
    static char out[65536];
    int st = run_cmd(cmd, out, sizeof out);
    int ok = (want_fail ? st != 0 : st == 0) && strstr(out, needle) != NULL;
    const char *line = strstr(out, needle);
    if (want_fail && line) { while (line > out && line[-1] != '\n') line--; }
    char shown[200];
    snprintf(shown, sizeof shown, "%.199s", want_fail && line ? line : needle);
    char *nl = strchr(shown, '\n');
    if (nl) *nl = 0;
    check(ok, "%s: exit %d, %s", what, st, shown);
    if (!ok) printf("%s\n", out);
}

// The reference state fixtures of dev/make_fixtures.py (format: doc/formats.md), shared by the CPU
// and CUDA tests. Needs the including file's xmalloc and FATAL (train_empo.c / train_empo.cu).
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
// The state fixture's format: doc/formats.md ("Test fixtures").
static void state_load(State *s, const char *path, size_t V, size_t num_params) {
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
    s->logits = (float *)read_exact(f, BT * V * 4, path);
    float *loss = (float *)read_exact(f, 4, path); s->loss = *loss; free(loss);
    s->grads = (float *)read_exact(f, num_params * 4, path);
    s->losses = (float *)read_exact(f, (size_t)s->steps * 4, path);
    fclose(f);
}
static void state_free(State *s) {
    free(s->inputs);
    free(s->targets);
    free(s->mask);
    free(s->logits);
    free(s->grads);
    free(s->losses);
}


// The policy-loss fixture (dev/make_fixtures.py, format: doc/formats.md): fixed rollouts of the
// untied model and, per variant (default, PPO clip, KL), its (clip, kl, loss) and every gradient.
// Shared by the CPU and CUDA tests, which run the same host-layer objective on their engines.
typedef struct {
    FILE *f;
    const char *path;
    int B, T;
    int *inputs, *targets;
    float *mask, *adv, *old, *ref;
} PolicyFixture;
static int policy_fixture_open(PolicyFixture *pf, const char *path) {
    memset(pf, 0, sizeof *pf);
    pf->path = path;
    pf->f = fopen(path, "rb");
    int32_t h[16];
    if (!pf->f || fread(h, sizeof h, 1, pf->f) != 1 || h[0] != 0x4C4F504D) {
        if (pf->f) fclose(pf->f);
        pf->f = NULL;
        return -1;
    }
    pf->B = h[2];
    pf->T = h[3];
    size_t BT = (size_t)pf->B * pf->T;
    pf->inputs = (int *)read_exact(pf->f, BT * 4, path);
    pf->targets = (int *)read_exact(pf->f, BT * 4, path);
    pf->mask = (float *)read_exact(pf->f, BT * 4, path);
    pf->adv = (float *)read_exact(pf->f, (size_t)pf->B * 4, path);
    pf->old = (float *)read_exact(pf->f, BT * 4, path);
    pf->ref = (float *)read_exact(pf->f, BT * 4, path);
    return 0;
}
// The next variant: hdr (3) = clip, kl, torch's loss; grads (num_params). Both malloc'd.
static void policy_fixture_next(PolicyFixture *pf, size_t num_params, float **hdr, float **grads) {
    *hdr = (float *)read_exact(pf->f, 12, pf->path);
    *grads = (float *)read_exact(pf->f, num_params * 4, pf->path);
}
static void policy_fixture_close(PolicyFixture *pf) {
    if (pf->f) fclose(pf->f);
    free(pf->inputs);
    free(pf->targets);
    free(pf->mask);
    free(pf->adv);
    free(pf->old);
    free(pf->ref);
    memset(pf, 0, sizeof *pf);
}


// The greedy-generation fixture (dev/make_fixtures.py): the tied model with the fixture's EOS, the
// prompts, max_new, and transformers' outputs (output(gf, i, t), n_output(gf, i)). 0, or -1 after a
// failed check. Shared by the CPU and CUDA tests.
typedef struct {
    char *text;
    JDoc d;
    int n, max_new, outputs;
    int *plen, **prompts;
} GreedyFixture;
static int greedy_fixture_open(GreedyFixture *gf, Model *m) {
    char err[512];
    memset(gf, 0, sizeof *gf);
    if (model_load(m, "dev/fixtures/qwen2_tied.bin", err, sizeof err) != 0) {
        check(0, "%s", err);
        return -1;
    }
    size_t len;
    gf->text = read_whole_file("dev/fixtures/qwen2_tied_greedy.json", &len);
    if (!gf->text || json_parse(&gf->d, gf->text, len) != 0) {
        check(0, "greedy fixture: cannot read/parse");
        free(gf->text);
        model_free(m);
        return -1;
    }
    JDoc *d = &gf->d;
    m->n_eos = 1;
    m->eos[0] = (int)json_num(d, json_get(d, 0, "eos"), -1);
    int ps = json_get(d, 0, "prompts");
    gf->n = json_len(d, ps);
    gf->max_new = (int)json_num(d, json_get(d, 0, "max_new"), 0);
    gf->outputs = json_get(d, 0, "outputs");
    gf->plen = (int *)xmalloc((size_t)gf->n * sizeof(int));
    gf->prompts = (int **)xmalloc((size_t)gf->n * sizeof(int *));
    for (int i = 0; i < gf->n; i++) {
        int arr = json_at(d, ps, i);
        gf->plen[i] = json_len(d, arr);
        gf->prompts[i] = (int *)xmalloc((size_t)gf->plen[i] * sizeof(int));
        for (int t = 0; t < gf->plen[i]; t++) gf->prompts[i][t] = (int)json_num(d, json_at(d, arr, t), -1);
    }
    return 0;
}
static int greedy_fixture_n_output(const GreedyFixture *gf, int i) {
    return json_len(&gf->d, json_at(&gf->d, gf->outputs, i));
}
static int greedy_fixture_output(const GreedyFixture *gf, int i, int t) {
    return (int)json_num(&gf->d, json_at(&gf->d, json_at(&gf->d, gf->outputs, i), t), -1);
}
static void greedy_fixture_close(GreedyFixture *gf) {
    for (int i = 0; i < gf->n; i++) free(gf->prompts[i]);
    free(gf->prompts);
    free(gf->plen);
    json_free(&gf->d);
    free(gf->text);
    memset(gf, 0, sizeof *gf);
}

#endif // TEST_UTIL_H
