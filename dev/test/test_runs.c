// test_runs.c: runs that cannot silently go wrong (issue 13, doc/formats.md "Run state").
//   - the one-file checkpoint: fault injection (EMPO_FAULT=kill:N / fail:N) at every kind of
//     interruption point of the commit; each leaves a directory that resumes to the uninterrupted
//     run's exact numbers, or is refused with a clear message; leftover .tmp files are removed;
//   - resume restores the stored flags; each conflicting flag is refused, --override works and is
//     logged; --resume DIR writes to DIR; a changed data file is refused; bf16 says it cannot resume;
//   - the checksums of the model and of the run state; a non-finite model is never saved;
//   - the non-finite guard: a run forced to diverge stops non-zero with valid JSON logs, and its
//     last checkpoint loads and resumes exactly;
//   - SIGINT finishes the step, checkpoints, exits 130, and the run resumes bit-exactly;
//   - data validation (bad lines, BOM, empty problem, over-long prompts) in training and eval;
//   - settings that cannot train, -x 0, messages (a directory or FIFO as -m, long paths);
//   - records are valid UTF-8, with U+FFFD for invalid sequences as transformers' decode.
// Ends with "runs: N passed, N failed". Uses tiny models (--init) and ./train_empo.
#define TESTING
#include "../../train_empo.c"
#include "test_util.h"

#define TINY "--init C=32,L=1,NH=2,NKV=1,I=64,T=256"
// an SFT run with real gradients (so the optimizer state matters), 6 steps, a checkpoint each step
#define SFT_RUN "./train_empo " TINY " --sft dev/default/sft.jsonl -B 4 -l 3e-3 -E 0 -q"
// The work directory, one per process (make test may run while another checkout's does): the shell
// commands see it as $W, the C side expands a leading "$W" with P().
#define W "$W"
static char work_dir[64];
static const char *P(const char *path) {
    static char buf[4][1024];
    static int k = 0;
    char *b = buf[k++ & 3];
    if (!strncmp(path, "$W", 2)) snprintf(b, sizeof buf[0], "%s%s", work_dir, path + 2);
    else snprintf(b, sizeof buf[0], "%s", path);
    return b;
}
static long long ckpt_span;   // fault-counter positions per checkpoint of SFT_RUN (test_fault_injection)

static char out[1 << 16];
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[2000];   // run_cmd's own buffer is 2048
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return run_cmd(cmd, out, sizeof out);
}
static int has(const char *needle) { return strstr(out, needle) != NULL; }
static const char *line_of(const char *needle) {   // the output line that holds needle, for the PASS/FAIL line
    static char l[240];
    const char *p = strstr(out, needle);
    if (!p) p = out;
    while (p > out && p[-1] != '\n') p--;
    snprintf(l, sizeof l, "%.239s", p);
    char *nl = strchr(l, '\n');
    if (nl) *nl = 0;
    return l;
}
static long long file_size(const char *path) {
    struct stat st;
    return stat(P(path), &st) == 0 ? (long long)st.st_size : -1;
}

// The parts of a run checkpoint that must be identical between two runs that did the same work:
// the model (header, weights, tokenizer) and the optimizer block. The run header differs by design
// (run id, the log's byte length, which holds timings).
typedef struct { unsigned char *bytes; long long n, model_end, opt_start; int step; } Ckpt;
static int ckpt_parts(const char *path, Ckpt *c) {
    size_t n;
    memset(c, 0, sizeof *c);
    c->bytes = (unsigned char *)read_whole_file(P(path), &n);
    if (!c->bytes || n < 1024 + 32) return -1;
    c->n = (long long)n;
    int32_t t[8], h[RUN_HEADER_INTS];
    memcpy(t, c->bytes + n - 32, 32);
    if ((uint32_t)t[0] != CKPT_RUN_MAGIC) return -1;
    long long len = (long long)get_u64(&t[2]);
    c->model_end = c->n - 32 - len;
    memcpy(h, c->bytes + c->model_end, sizeof h);
    c->opt_start = c->model_end + (long long)sizeof h + h[24];
    c->step = h[2];
    return 0;
}
// The log without its timings, one line per step or eval.
static char *log_numbers(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    char *t = read_whole_file(P(path), NULL);
    if (!t) return NULL;
    char *o = (char *)xmalloc(strlen(t) + 1), *q = o;
    for (char *l = t; *l;) {
        char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        char *a = strstr(l, ", \"time\""), *b = strstr(l, ", \"gen_tok_s\"");
        size_t keep = len;
        if (a && a < l + len) keep = (size_t)(a - l);
        if (b && b < l + len && (size_t)(b - l) < keep) keep = (size_t)(b - l);
        memcpy(q, l, keep);
        q += keep;
        *q++ = '\n';
        l = nl ? nl + 1 : l + len;
    }
    *q = 0;
    free(t);
    return o;
}
// dir's run equals the reference run's: same model, same optimizer state, same logged numbers.
static int same_as(const char *dir, const char *ref, char *why, size_t cap) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/model.bin", dir);
    snprintf(pb, sizeof pb, "%s/model.bin", ref);
    Ckpt a, b;
    int ok = ckpt_parts(pa, &a) == 0 && ckpt_parts(pb, &b) == 0;
    if (!ok) snprintf(why, cap, "no run checkpoint");
    ok = ok && a.step == b.step && a.model_end == b.model_end && !memcmp(a.bytes, b.bytes, (size_t)a.model_end);
    if (!ok && !why[0]) snprintf(why, cap, "the model differs (step %d vs %d)", a.step, b.step);
    ok = ok && a.n - a.opt_start == b.n - b.opt_start &&
         !memcmp(a.bytes + a.opt_start, b.bytes + b.opt_start, (size_t)(a.n - a.opt_start - 32));
    if (!ok && !why[0]) snprintf(why, cap, "the optimizer state differs");
    char *la = log_numbers(dir), *lb = log_numbers(ref);
    int lsame = la && lb && !strcmp(la, lb);
    if (ok && !lsame) snprintf(why, cap, "the log differs");
    free(la);
    free(lb);
    free(a.bytes);
    free(b.bytes);
    return ok && lsame;
}

// ----------------------------------------------------------------------------
// the checkpoint commit, interrupted at every kind of point

static void test_fault_injection(void) {
    sh("rm -rf " W "/ref && " SFT_RUN " -x 6 -C 1 -o " W "/ref");
    Ckpt c;
    if (ckpt_parts(W "/ref/model.bin", &c) != 0) { check(0, "the reference run wrote a run checkpoint"); return; }
    // Positions of the fault counter (utils.h): each checkpoint is the model part (model_end bytes,
    // +1 for "written, not renamed") then the appended run section (n - model_end, +1).
    long long s1 = c.model_end, s2 = c.n - c.model_end, per = s1 + s2 + 2;
    ckpt_span = per;
    free(c.bytes);
    struct { long long at; const char *what; } pts[] = {
        {0, "first checkpoint: the model part, no byte written"},
        {s1 / 2, "first checkpoint: half the model part"},
        {per + 1, "2nd checkpoint: the model part's first byte"},
        {per + 1024 + 7, "2nd checkpoint: inside the weights"},
        {per + s1, "2nd checkpoint: model part written, not renamed"},
        {per + s1 + 1, "2nd checkpoint: model part renamed, run section not begun"},
        {per + s1 + 1 + 64, "2nd checkpoint: inside the run header"},
        {per + s1 + 1 + s2 / 2, "2nd checkpoint: inside the optimizer block"},
        {per + s1 + s2 - 8, "2nd checkpoint: inside the trailer"},
        {per + s1 + 1 + s2, "2nd checkpoint: all written, before the commit rename"},
        {2 * per, "3rd checkpoint begins (the 2nd committed)"},
        {4 * per + s1 + 1 + s2 / 3, "5th checkpoint: inside the optimizer block"},
    };
    int n_pts = (int)(sizeof pts / sizeof pts[0]);
    for (int i = 0; i < n_pts; i++) {
        for (int mode = 0; mode < 2; mode++) {   // kill (as kill -9), then fail (as a full disk)
            const char *kind = mode ? "fail" : "kill";
            int st = sh("rm -rf " W "/flt && EMPO_FAULT=%s:%lld " SFT_RUN " -x 6 -C 1 -o " W "/flt", kind, pts[i].at);
            int stopped = mode ? st == 1 && has("No space left on device") && has("unchanged") : st == 137;
            if (!stopped) {
                check(0, "%s at %s: exit %d", kind, pts[i].what, st);
                printf("%s\n", out);
                continue;
            }
            int tmp_left = file_size(W "/flt/model.bin.tmp") >= 0 || file_size(W "/flt/model.bin.tmp.tmp") >= 0;
            if (file_size(W "/flt/model.bin") < 0) {   // nothing committed yet: a resume must say so
                int r = sh(SFT_RUN " --resume " W "/flt -x 6");
                check(r != 0 && has("nothing to resume"), "%s at %s (%s): nothing committed; resume refused: %s",
                      kind, pts[i].what, mode ? "no .tmp left" : "tmp left", line_of("error"));
                if (mode) check(!tmp_left, "fail at %s: the failed write removed its .tmp", pts[i].what);
                continue;
            }
            int r = sh(SFT_RUN " --resume " W "/flt -x 6");
            char why[256] = "";
            int same = r == 0 && same_as(W "/flt", W "/ref", why, sizeof why);
            int tmp_after = file_size(W "/flt/model.bin.tmp") >= 0 || file_size(W "/flt/model.bin.tmp.tmp") >= 0;
            check(same && !tmp_after && (mode == 0 || !tmp_left),
                  "%s at %s: %s.tmp left, resume exit %d, %s", kind, pts[i].what, tmp_left ? "" : "no ", r,
                  same ? "the same model, optimizer state and log as the uninterrupted run" : why);
            if (!same) printf("%s\n", out);
        }
    }
    // leftovers of an interrupted write are removed at the start
    sh("rm -rf " W "/t && mkdir -p " W "/t && echo junk > " W "/t/model.bin.tmp && echo junk > " W "/t/curves.svg.tmp"
       " && echo junk > " W "/t/model.bin.tmp.tmp && echo junk > " W "/t/eval_last.jsonl.tmp && echo mine > " W
       "/t/notes.tmp");
    int st = sh(SFT_RUN " -x 1 -o " W "/t");
    check(st == 0 && file_size(W "/t/model.bin.tmp") < 0 && file_size(W "/t/curves.svg.tmp") < 0 &&
          file_size(W "/t/model.bin.tmp.tmp") < 0 && file_size(W "/t/eval_last.jsonl.tmp") < 0 &&
          file_size(W "/t/notes.tmp") > 0 && has("removed 4 leftover .tmp files"),
          "leftover .tmp files of a run's own outputs are removed at the start (and no one else's)");
}

// ----------------------------------------------------------------------------
// resume: the stored configuration, conflicting flags, --override, the output directory, data identity

static void test_resume_config(void) {
    sh("rm -rf " W "/c && " SFT_RUN " -x 2 -C 1 -o " W "/c");
    // without repeating a single flag: the stored config is used (the same numbers as a straight run)
    sh("rm -rf " W "/c3 && " SFT_RUN " -x 3 -C 1 -o " W "/c3");
    sh("rm -rf " W "/cc && cp -r " W "/c " W "/cc");
    int st = sh("./train_empo --resume " W "/cc -x 3 -q");
    char why[256] = "";
    check(st == 0 && same_as(W "/cc", W "/c3", why, sizeof why),
          "--resume DIR alone restores the stored flags (not the paper's defaults) and continues exactly %s", why);
    struct { const char *flags; const char *name; } bad[] = {
        {"-l 1e-3", "-l"}, {"-B 3", "-B"}, {"-s 7", "-s"}, {"-w 0.1", "-w"}, {"-c 0.5", "-c"},
        {"--template plain", "--template"}, {"--sft dev/default/train.jsonl", "--sft"}, {"-S bf16", "-S"},
        {"--eval-n 40", "--eval-n"}, {"-m " W "/other.bin", "-m"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        st = sh("./train_empo --resume " W "/c -x 3 %s", bad[i].flags);
        char want[64];
        snprintf(want, sizeof want, "%s ", bad[i].name);
        check(st == 1 && has("differs from the run's stored") && has(want) && has("--override"),
              "resume with %s is refused: %s", bad[i].flags, line_of("error"));
    }
    // an EMPO run: the flags of the report (-G, -r, --task, -d, -l) and others of rollouts
    sh("rm -rf " W "/em && cp " DEMO_DIR "/train.jsonl " W "/other.jsonl && ./train_empo -m " DEMO_DIR
       "/starter.bin -d " DEMO_DIR "/train.jsonl -G 2 -B 1 -n 8 -x 1 -E 0 -q -o " W "/em");
    const char *empo_bad[] = {"-G 4", "-l 1e-3", "-r ttrl", "--task freeform", "-d " W "/other.jsonl", "-T 0.5",
                              "-n 16", "-b 4", "--kl 0.1", "--clip 0.2", "--ent-hi 0.5", "-p 0.9"};
    for (size_t i = 0; i < sizeof empo_bad / sizeof empo_bad[0]; i++) {
        st = sh("./train_empo --resume " W "/em -x 2 %s", empo_bad[i]);
        check(st == 1 && has("differs from the run's stored"), "EMPO resume with %s is refused: %s", empo_bad[i],
              line_of("error"));
    }
    // EMPO-only flags on an SFT run are refused too (they have no effect in --sft)
    st = sh("./train_empo --resume " W "/c -x 3 -G 4");
    check(st == 1 && has("-G"), "resume of an SFT run with -G: %s", line_of("error"));
    // the flags that may change: -x, -E, -C, -q
    sh("rm -rf " W "/cx && cp -r " W "/c " W "/cx");
    st = sh("./train_empo --resume " W "/cx -x 3 -E 0 -C 2 -q");
    check(st == 0, "resume may change -x, -E, -C, -q: exit %d", st);
    // --override: accepted, printed, logged
    sh("rm -rf " W "/co && cp -r " W "/c " W "/co");
    st = sh("./train_empo --resume " W "/co -x 3 -l 1e-3 --override");
    char *log = read_whole_file(P(W "/co/log.jsonl"), NULL);
    check(st == 0 && has("override: -l") && log &&
          strstr(log, "\"override\": {\"-l\": [\"0.00300000003\", \"0.00100000005\"]}"),
          "--override changes -l, says so, and logs it: %s", line_of("override"));
    free(log);
    st = sh(SFT_RUN " -x 1 -o " W "/x --override");
    check(st == 1 && has("--override only applies to --resume"), "--override without --resume: %s", line_of("error"));
    // --resume DIR writes to DIR, and refuses another -o
    sh("rm -rf " W "/cd && cp -r " W "/c " W "/cd");
    long long out_before = file_size("out/log.jsonl");
    st = sh("./train_empo --resume " W "/cd -x 3 -q");
    Ckpt k;
    int at3 = ckpt_parts(W "/cd/model.bin", &k) == 0 && k.step == 3;
    free(k.bytes);
    check(st == 0 && at3 && file_size("out/log.jsonl") == out_before, "--resume DIR writes to DIR, not out/");
    st = sh("./train_empo --resume " W "/c -x 3 -o " W "/elsewhere");
    check(st == 1 && has("writes to"), "--resume DIR -o OTHER is refused: %s", line_of("error"));
    // the data file's identity
    sh("rm -rf " W "/dd && mkdir -p " W "/dd && cp dev/default/sft.jsonl " W "/dd/data.jsonl");
    sh("./train_empo " TINY " --sft " W "/dd/data.jsonl -B 4 -E 0 -q -x 1 -C 1 -o " W "/dd/run");
    sh("head -n 50 dev/default/sft.jsonl > " W "/dd/data.jsonl");
    st = sh("./train_empo --resume " W "/dd/run -x 2");
    check(st == 1 && has("not the file the run began with"), "a changed data file is refused: %s", line_of("error"));
    st = sh("./train_empo --resume " W "/dd/run -x 2 --override");
    check(st == 0 && has("override:"), "... and accepted with --override, which says so: %s", line_of("override"));
    // a run killed after steps 5 and 6 were logged, while writing step 6's checkpoint: the resume
    // from step 4 cuts their lines, so no step is logged twice
    sh("rm -rf " W "/lg2 && " SFT_RUN " -x 6 -C 2 -o " W "/lg2");   // names of one length: the same file sizes
    sh("rm -rf " W "/lg1 && EMPO_FAULT=kill:%lld " SFT_RUN " -x 6 -C 2 -o " W "/lg1", 2 * ckpt_span + 100);
    char *l5 = log_numbers(W "/lg1");
    int had6 = l5 && strstr(l5, "\"step\": 6,") != NULL;
    free(l5);
    st = sh("./train_empo --resume " W "/lg1 -x 6");
    char *l6 = log_numbers(W "/lg1"), *ref6 = log_numbers(W "/lg2");
    check(had6 && st == 0 && l6 && ref6 && !strcmp(l6, ref6) && has("cut to"),
          "a resume cuts the log lines of the steps after its checkpoint: no step is logged twice");
    free(l6);
    free(ref6);
}

// bf16 checkpoints keep no run state: said at the start, and a resume says it cannot
static void test_bf16(void) {
    int st = sh("rm -rf " W "/b && " SFT_RUN " -x 2 -S bf16 -o " W "/b");
    check(st == 0 && has("cannot be resumed"), "-S bf16 says up front that the run cannot be resumed");
    st = sh("./train_empo --resume " W "/b -x 3");
    check(st == 1 && has("bf16") && has("cannot be resumed"), "resume of a bf16 run: %s", line_of("error"));
    st = sh("./train_empo --resume dev/default -x 3");
    check(st != 0 && has("nothing to resume"), "resume of a directory without model.bin: %s", line_of("error"));
}

// checksums and the refusal to save non-finite weights
static void test_checksums(void) {
    sh("rm -rf " W "/h && " SFT_RUN " -x 1 -C 1 -o " W "/h");
    // a flipped byte in the weights
    sh("cp " W "/h/model.bin " W "/h/w.bin && printf '\\x55' | dd of=" W "/h/w.bin bs=1 seek=2000 conv=notrunc "
       "2>/dev/null");
    Checkpoint ck;
    char err[512];
    int r = ckpt_load(P(W "/h/w.bin"), &ck, err, sizeof err);
    check(r != 0 && strstr(err, "checksum mismatch"), "a corrupted weight is caught by the checksum: %s", err);
    if (r == 0) ckpt_free(&ck);
    r = ckpt_load(P(W "/h/model.bin"), &ck, err, sizeof err);
    check(r == 0 && ck.run_bytes > 0, "a run checkpoint loads as a model (-m) too: %s", r ? err : "ok");
    if (r == 0) ckpt_free(&ck);
    r = ckpt_load(DEMO_DIR "/starter.bin", &ck, err, sizeof err);
    check(r == 0, "a checkpoint from before the checksum still loads: %s", r ? err : "ok");
    if (r == 0) ckpt_free(&ck);
    // a flipped byte in the run section (the optimizer block)
    Ckpt c;
    ckpt_parts(W "/h/model.bin", &c);
    long long at = c.opt_start + 20;
    free(c.bytes);
    sh("cp -r " W "/h " W "/h2 && printf '\\x55' | dd of=" W "/h2/model.bin bs=1 seek=%lld conv=notrunc "
       "2>/dev/null", at);
    int st = sh("./train_empo --resume " W "/h2 -x 2");
    check(st == 1 && has("damaged"), "a corrupted run state is refused: %s", line_of("error"));
    // non-finite weights are never saved over a good checkpoint
    Model m;
    model_init_random(&m, &(ModelConfig){64, 32, 1, 2, 1, 16, 64, 64, 1, 1, 10000.0f, 1e-6f}, 1);
    long long before = file_size(W "/h/model.bin");
    char *good = read_whole_file(P(W "/h/model.bin"), NULL);
    m.params_memory[5] = NAN;
    r = model_save(&m, P(W "/h/model.bin"), CKPT_DTYPE_FP32, err, sizeof err);
    char *after = read_whole_file(P(W "/h/model.bin"), NULL);
    check(r != 0 && strstr(err, "NaN or Inf") && file_size(W "/h/model.bin") == before && good && after &&
          !memcmp(good, after, (size_t)before) && file_size(W "/h/model.bin.tmp") < 0,
          "a model with a NaN weight is not saved; the good file stays: %s", err);
    free(good);
    free(after);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// the non-finite guard, SIGINT

static int log_is_json(const char *dir, int *n_skipped) {
    char path[512];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    char *t = read_whole_file(P(path), NULL);
    if (!t) return 0;
    int ok = 1;
    *n_skipped = 0;
    for (char *l = t; *l && ok;) {
        char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        JDoc d;
        ok = json_parse(&d, l, len) == 0;
        if (ok && json_get(&d, 0, "skipped") >= 0) (*n_skipped)++;
        json_free(&d);
        l = nl ? nl + 1 : l + len;
    }
    free(t);
    return ok;
}
static void test_nonfinite(void) {
    sh("rm -rf " W "/ref && " SFT_RUN " -x 6 -C 1 -o " W "/ref");
    int st = sh("rm -rf " W "/n && EMPO_FAULT=nan:3 " SFT_RUN " -x 6 -C 1 -o " W "/n");
    int skipped = 0, json = log_is_json(W "/n", &skipped);
    check(st == 1 && has("steps 3-5 had a non-finite") && json && skipped == 3,
          "a diverging SFT run stops with exit %d after 3 skipped steps; every log line is JSON (%d skipped): %s", st,
          skipped, line_of("error"));
    Checkpoint ck;
    char err[512];
    int r = ckpt_load(P(W "/n/model.bin"), &ck, err, sizeof err);
    Ckpt c;
    int step = ckpt_parts(W "/n/model.bin", &c) == 0 ? c.step : -1;
    free(c.bytes);
    check(r == 0 && step == 2, "its last checkpoint (step %d) loads: %s", step, r ? err : "finite weights");
    if (r == 0) ckpt_free(&ck);
    st = sh("./train_empo --resume " W "/n -x 6 -q");
    char why[256] = "";
    check(st == 0 && same_as(W "/n", W "/ref", why, sizeof why), "... and resumes to the run that never diverged %s",
          why);
    // EMPO: poisoned advantages give a non-finite loss; the guard stops it the same way
    st = sh("rm -rf " W "/ne && EMPO_FAULT=nan:2 OMP_NUM_THREADS=1 ./train_empo -m " DEMO_DIR "/starter.bin -d "
            DEMO_DIR "/train.jsonl -G 4 -B 2 -n 24 -x 5 -C 1 -E 0 -q -o " W "/ne");
    json = log_is_json(W "/ne", &skipped);
    check(st == 1 && has("non-finite") && json && skipped >= 1, "a diverging EMPO run stops too (exit %d, %d skipped)",
          st, skipped);
    // one bad step alone is skipped and counted, and the run goes on
    sh("rm -rf " W "/n1 && EMPO_FAULT=nan:6 " SFT_RUN " -x 6 -C 1 -o " W "/n1");
    json = log_is_json(W "/n1", &skipped);
    check(json && skipped == 1 && file_size(W "/n1/model.bin") > 0, "a single non-finite step is skipped and logged");
}

static void test_sigint(void) {
    int st = sh("rm -rf " W "/s && EMPO_FAULT=signal:3 " SFT_RUN " -x 6 -C 100 -o " W "/s");
    Ckpt c;
    int step = ckpt_parts(W "/s/model.bin", &c) == 0 ? c.step : -1;
    free(c.bytes);
    check(st == 130 && has("interrupted at step 3") && has("--resume") && step == 3,
          "SIGINT finishes step 3, checkpoints it, says so and exits %d: %s", st, line_of("interrupted"));
    st = sh("./train_empo --resume " W "/s -x 6 -C 1 -q");
    char why[256] = "";
    check(st == 0 && same_as(W "/s", W "/ref", why, sizeof why), "... and resumes bit-exactly %s", why);
    // a real SIGTERM from outside, during a longer run (whatever the step, the resume is exact)
    st = sh("rm -rf " W "/s2 && (" SFT_RUN " -x 20000 -C 100000 -o " W "/s2 & p=$!; for i in $(seq 600); do "
            "[ -s " W "/s2/log.jsonl ] && break; sleep 0.05; done; sleep 0.2; kill -TERM $p; wait $p)");
    step = ckpt_parts(W "/s2/model.bin", &c) == 0 ? c.step : -1;
    free(c.bytes);
    check(st == 130 && step > 0 && has("SIGTERM at step"), "SIGTERM from outside: exit %d, checkpoint at step %d", st,
          step);
}

// ----------------------------------------------------------------------------
// data validation, settings that cannot train, messages

static void test_data(void) {
    const char *good = "{\"problem\": \"What is 1/2 + 1/2?\", \"answer\": \"1\", \"solution\": \"\\\\boxed{1}\"}\n";
    FILE *f = fopen(P(W "/bad.jsonl"), "w");
    fprintf(f, "%s{\"problem\": oops}\n\n{\"answer\": \"3\"}\n%s", good, good);
    fclose(f);
    int st = sh("./train_empo --eval " W "/bad.jsonl -o " W "/e");
    check(st == 1 && has("bad.jsonl:2: malformed JSON") && has("bad.jsonl:4: no \"problem\"") && has("2 bad lines"),
          "eval: bad lines are each named and then an error: %s", line_of("error"));
    st = sh("./train_empo --eval " W "/bad.jsonl -o " W "/e --skip-bad-lines");
    check(st == 0 && has("skipped 2 bad lines") && has(": 2 problems") && has("2 bad lines of"),
          "eval --skip-bad-lines: skipped and counted in the summary: %s", line_of("bad lines of"));
    st = sh(SFT_RUN " -x 1 --sft " W "/bad.jsonl -o " W "/e");
    check(st == 1 && has("bad.jsonl:2") && has("--skip-bad-lines"), "training: bad lines are an error: %s",
          line_of("error"));
    f = fopen(P(W "/bom.jsonl"), "w");
    fprintf(f, "\xEF\xBB\xBF%s%s", good, good);
    fclose(f);
    st = sh("./train_empo --eval " W "/bom.jsonl -o " W "/e");
    check(st == 0 && has(": 2 problems"), "a UTF-8 BOM is accepted");
    f = fopen(P(W "/empty.jsonl"), "w");
    fprintf(f, "%s{\"problem\": \"\", \"answer\": \"1\"}\n", good);
    fclose(f);
    st = sh("./train_empo --eval " W "/empty.jsonl -o " W "/e");
    check(st == 1 && has("empty.jsonl:2: \"problem\" is empty"), "an empty problem is refused: %s", line_of("empty"));
    // over-long prompts: in training an error with file:line (or skipped with the flag); in eval wrong
    char longp[700];
    memset(longp, 'x', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    f = fopen(P(W "/long.jsonl"), "w");
    fprintf(f, "%s%s{\"problem\": \"%s\", \"answer\": \"1\", \"solution\": \"1\"}\n%s", good, good, longp, good);
    fclose(f);
    st = sh(SFT_RUN " -x 2 --sft " W "/long.jsonl -o " W "/e");
    check(st == 1 && has("long.jsonl:3: the prompt has") && has("--skip-long-prompts"),
          "training: an over-long prompt is an error naming file and line, before any step: %s", line_of("error"));
    st = sh(SFT_RUN " -x 2 --sft " W "/long.jsonl -o " W "/e --skip-long-prompts");
    check(st == 0 && has("1 prompt beyond") && has("skipped"), "... and skipped and counted with --skip-long-prompts");
    st = sh("./train_empo --eval " W "/long.jsonl -o " W "/e2");
    char *rec = read_whole_file(P(W "/e2/eval_long.jsonl"), NULL);
    int lines = 0;
    for (char *p = rec; p && *p; p++) lines += *p == '\n';
    check(st == 0 && has(": 4 problems") && has("1 of the 4 problems have a prompt beyond") && lines == 4 &&
          strstr(rec, "\"skipped\": \"prompt beyond"), "eval: an over-long problem counts as wrong, with a record and "
          "a line in the summary, and no .tmp is left: %s", line_of("beyond"));
    check(file_size(W "/e2/eval_long.jsonl.tmp") < 0, "eval leaves no .tmp");
    free(rec);
    // a periodic eval inside training sees the same rule
    st = sh(SFT_RUN " -x 1 -E 1 -e " W "/long.jsonl -o " W "/e3");
    check(st == 0, "training with an eval set that has an over-long problem runs (exit %d)", st);
}

static void test_settings_and_messages(void) {
    const char *empo = "./train_empo -m " DEMO_DIR "/starter.bin -d " DEMO_DIR "/train.jsonl -B 2 -n 8 -E 0 -q -o " W
                       "/g";
    int st = sh("%s -G 1", empo);
    check(st == 1 && has("-G 1"), "-G 1 is refused up front: %s", line_of("error"));
    st = sh("%s -T 0", empo);
    check(st == 1 && has("-T 0"), "-T 0 is refused up front: %s", line_of("error"));
    st = sh("%s --ent-lo 2 --ent-hi 1", empo);
    check(st == 1 && has("entropy band is empty"), "--ent-lo 2 --ent-hi 1 is refused: %s", line_of("error"));
    st = sh("%s -G 4 --ent-lo 2", empo);
    check(st == 1 && has("entropy band is empty"), "--ent-lo >= log G is refused: %s", line_of("error"));
    st = sh("rm -rf " W "/x0 && " SFT_RUN " -x 0 -o " W "/x0");
    Checkpoint ck;
    char err[512];
    int r = ckpt_load(P(W "/x0/model.bin"), &ck, err, sizeof err);
    check(st == 0 && r == 0, "-x 0 writes the initial model: %s", r ? err : W "/x0/model.bin loads");
    if (r == 0) ckpt_free(&ck);
    st = sh("./train_empo --resume " W "/x0 -x 1 -q");
    check(st == 0, "... which resumes (exit %d)", st);
    st = sh("./train_empo -m " DEMO_DIR " --eval " DEMO_DIR "/eval.jsonl");
    check(st == 1 && has("is a directory; a Hugging Face folder? convert it with ./convert import"),
          "-m DIR: %s", line_of("error"));
    sh("rm -f " W "/fifo && mkfifo " W "/fifo");
    st = sh("timeout 20 ./train_empo -m " W "/fifo --eval " DEMO_DIR "/eval.jsonl");
    check(st == 1 && has("not a regular file"), "-m FIFO is refused at once: %s", line_of("error"));
    st = sh("timeout 20 ./train_empo --eval " W "/fifo");
    check(st == 1 && has("not a regular file"), "--eval FIFO is refused at once: %s", line_of("error"));
    st = sh("./train_empo --eval " W "/nope.jsonl");
    const char *once = strstr(out, "nope.jsonl"), *twice = once ? strstr(once + 1, "cannot read") : NULL;
    char want[128];
    snprintf(want, sizeof want, "cannot read %s/nope.jsonl: No such file or directory", work_dir);
    check(st == 1 && has(want) && !twice, "a missing file: one line with the reason: %s", line_of("error"));
    char longdir[1100];
    memset(longdir, 'd', sizeof longdir - 1);
    longdir[sizeof longdir - 1] = 0;
    st = sh(SFT_RUN " -x 1 -o /tmp/%s", longdir);
    check(st == 1 && has("flag -o: the path is"), "a 1100-character -o is refused, not cut: %.80s", line_of("error"));
    st = sh("./train_empo -G");
    check(st == 1 && has("flag -G needs a value"), "a flag without its value: %s", line_of("error"));
    st = sh("./train_empo -q --frobnicate");
    check(st == 1 && has("unknown flag --frobnicate"), "an unknown last flag: %s", line_of("error"));
    st = sh("./train_empo stray");
    check(st == 1 && has("unexpected argument 'stray'"), "a stray argument: %s", line_of("error"));
    // a write that fails says why and leaves nothing behind
    sh("rm -rf " W "/wf");
    st = sh("EMPO_FAULT=fail:10 " SFT_RUN " -x 1 -o " W "/wf");
    check(st == 1 && has("No space left on device") && file_size(W "/wf/model.bin.tmp") < 0 &&
          file_size(W "/wf/model.bin.tmp.tmp") < 0, "a failed write: the reason, no .tmp: %s", line_of("error"));
}

// ----------------------------------------------------------------------------
// valid UTF-8 in records and logs

static void expect_json_str(const char *in, size_t n, const char *want, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    json_write_str(f, in, n);
    fclose(f);
    check(!strcmp(buf, want), "json_write_str, %s: %s", what, buf);
    free(buf);
}
static void test_utf8(void) {
    // each expectation is Python's bytes.decode("utf-8", "replace"), which transformers' decode uses
    expect_json_str("Leh\xe6\x98", 5, "\"Leh\xEF\xBF\xBD\"", "a response cut inside a character: one U+FFFD");
    expect_json_str("a\xe6\x98" "b", 4, "\"a\xEF\xBF\xBD" "b\"", "a truncated sequence before ASCII");
    expect_json_str("\xc0\xaf", 2, "\"\xEF\xBF\xBD\xEF\xBF\xBD\"", "an overlong form: two");
    expect_json_str("\xed\xa0\x80", 3, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"", "a surrogate: three");
    expect_json_str("\xf0\x9f\x98", 3, "\"\xEF\xBF\xBD\"", "a cut 4-byte sequence: one");
    expect_json_str("\xf4\x90\x80\x80", 4, "\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"", "above U+10FFFF");
    expect_json_str("\xff" "x\x80", 3, "\"\xEF\xBF\xBDx\xEF\xBF\xBD\"", "stray bytes");
    expect_json_str("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"",
                    "valid 2-, 3- and 4-byte characters pass through");
}

int main(void) {
    setenv("OMP_NUM_THREADS", "1", 1);   // tiny models: threads only cost time on a shared machine
    tmp_file(work_dir, sizeof work_dir, "runs");   // /tmp/empo.PID.runs: this process's own
    setenv("W", work_dir, 1);
    char buf[256];
    run_cmd("rm -rf " W " && mkdir -p " W, buf, sizeof buf);
    test_utf8();
    test_fault_injection();
    test_resume_config();
    test_bf16();
    test_checksums();
    test_nonfinite();
    test_sigint();
    test_data();
    test_settings_and_messages();
    run_cmd("rm -rf " W, buf, sizeof buf);
    return test_summary("runs");
}
