// test_empo.c: checks train_empo.c against reference tensors made by PyTorch + transformers'
// Qwen2ForCausalLM (dev/make_fixtures.py): logits, loss, every parameter gradient, and 10 AdamW
// steps with clipping, for two configs; plus the checkpoint loader's rejection of bad files.
// Ends with "empo: N passed, N failed".
#define TESTING
#include "train_empo.c"
#include "dev/test/test_util.h"




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
    state_load(&s, spath, (size_t)m.config.V, m.num_parameters);
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
        if (!(r < 1e-4f || d < 1e-5f)) {
            ok = 0;
            printf("  step %d: loss %.7f vs torch %.7f\n", step, m.mean_loss, s.losses[step]);
        }
    }
    check(ok, "%s: %d AdamW steps, losses %.5f -> %.5f (torch %.5f -> %.5f), worst rel err %.2e", name, s.steps,
          s.losses[0], m.mean_loss, s.losses[0], s.losses[s.steps - 1], worst);
    state_free(&s);
    model_free(&m);
}

// The loader must reject damaged files with a message, never crash or accept garbage.
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
    int ok = model_save(&m, p32, CKPT_DTYPE_FP32, err, sizeof err) == 0 && model_save(&m, p16, CKPT_DTYPE_BF16, err,
            sizeof err) == 0;
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

// ----------------------------------------------------------------------------
// generation

// Decoding with the KV cache must give the logits of a full forward at every position: two
// sequences, the first prefilled with 5 tokens in one call, then both decoded one token per step
// in the same batch.
static void test_kv_cache(void) {
    Model m; char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_untied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    State s;
    state_load(&s, "dev/fixtures/qwen2_untied_state.bin", (size_t)m.config.V, m.num_parameters);
    int T = s.T, V = m.config.V;
    model_forward(&m, s.inputs, NULL, NULL, 2, T);   // rows 0 and 1 of the fixture's batch
    float *full = (float *)xmalloc((size_t)2 * T * V * sizeof(float));
    memcpy(full, m.acts.logits, (size_t)2 * T * V * sizeof(float));
    KVCache kv;
    int cap[2] = {T, T};
    kv_init(&kv, &m.config, cap, 2, T);
    float *logits = (float *)xmalloc((size_t)T * V * sizeof(float));
    int tok[64], seq[64], pos[64], rows[64];
    float worst = 0.0f;
    int P = 5;
    for (int t = 0; t < P; t++) { tok[t] = s.inputs[t]; seq[t] = 0; pos[t] = t; rows[t] = t; }
    model_step(&m, &kv, tok, seq, pos, P, rows, P, logits);
    for (int t = 0; t < P; t++) {
        float e = rel_err(logits + (size_t)t * V, full + (size_t)t * V, V, NULL);
        if (e > worst) worst = e;
    }
    for (int t = 0; t < T; t++) {   // sequence 1 from its first token; sequence 0 from position P
        int n = 0;
        tok[n] = s.inputs[T + t]; seq[n] = 1; pos[n] = t; rows[n] = n; n++;
        if (P + t < T) { tok[n] = s.inputs[P + t]; seq[n] = 0; pos[n] = P + t; rows[n] = n; n++; }
        model_step(&m, &kv, tok, seq, pos, n, rows, n, logits);
        float e = rel_err(logits, full + (size_t)(T + t) * V, V, NULL);
        if (e > worst) worst = e;
        if (n == 2) { e = rel_err(logits + V, full + (size_t)(P + t) * V, V, NULL); if (e > worst) worst = e; }
    }
    check(worst < 1e-5f, "KV-cache decoding equals the full forward at all %d positions of 2 sequences (rel err %.2e)",
          T, worst);
    free(full); free(logits); kv_free(&kv); state_free(&s); model_free(&m);
}

// Greedy generation of a batch of prompts of different lengths equals transformers' generate().
static void test_greedy_vs_hf(void) {
    Model m;
    GreedyFixture gf;
    if (greedy_fixture_open(&gf, &m) != 0) return;
    int n = gf.n;
    SamplerConfig sc = {0.0f, 1.0f, 0, gf.max_new, 0, 1, 0};
    Generation gen;
    generate(&m, (const int *const *)gf.prompts, gf.plen, n, 1, &sc, &gen, 0);
    int ok = 1, stopped = 0;
    for (int i = 0; i < n; i++) {
        int same = gen.len[i] == greedy_fixture_n_output(&gf, i);
        for (int t = 0; same && t < gen.len[i]; t++) same = gen.tokens[i][t] == greedy_fixture_output(&gf, i, t);
        if (!same) {
            ok = 0;
            printf("  prompt %d: %d tokens vs HF %d\n", i, gen.len[i], greedy_fixture_n_output(&gf, i));
        }
        stopped += gen.eos[i];
    }
    check(ok && stopped >= 1,
          "greedy generation of %d prompts (lengths %d..%d) equals transformers generate() token for token (%d "
          "stopped at EOS)",
          n, gf.plen[0], gf.plen[2], stopped);
    generation_free(&gen);
    greedy_fixture_close(&gf);
    model_free(&m);
}

// Sampled frequencies follow softmax(logits / T) restricted to the top-k / top-p set: a chi-square
// statistic against the expected counts (fixed seed, so deterministic), and no draw ever outside.
static void sampling_case(const char *what, const float *logits, int V, SamplerConfig sc, int draws) {
    // expected distribution, computed independently of sample_token: sort, cut, renormalize
    ProbId *e = (ProbId *)xmalloc((size_t)V * sizeof(ProbId));
    float maxv = -FLT_MAX;
    for (int v = 0; v < V; v++) if (logits[v] > maxv) maxv = logits[v];
    double z = 0.0;
    for (int v = 0; v < V; v++) { e[v].p = expf((logits[v] - maxv) / sc.temperature); e[v].id = v; z += e[v].p; }
    qsort(e, (size_t)V, sizeof(ProbId), probid_desc);
    int n = sc.top_k > 0 && sc.top_k < V ? sc.top_k : V;
    double kz = 0.0;
    for (int i = 0; i < n; i++) kz += e[i].p;
    if (sc.top_p < 1.0f) {
        double acc = 0.0;
        for (int i = 0; i < n; i++) {
            acc += e[i].p;
            if (acc >= sc.top_p * kz) {
                n = i + 1;
                break;
            }
        }
    }
    double nz = 0.0;
    for (int i = 0; i < n; i++) nz += e[i].p;
    double *expect = (double *)xcalloc((size_t)V, sizeof(double));
    for (int i = 0; i < n; i++) expect[e[i].id] = e[i].p / nz;
    int *count = (int *)xcalloc((size_t)V, sizeof(int));
    uint64_t rng = 12345;
    ProbId *scratch = (ProbId *)xmalloc((size_t)V * sizeof(ProbId));
    for (int i = 0; i < draws; i++) count[sample_token(logits, V, &sc, &rng, scratch)]++;
    double chi2 = 0.0; int outside = 0, df = -1;
    for (int v = 0; v < V; v++) {
        if (expect[v] == 0.0) { outside += count[v]; continue; }
        double ex = expect[v] * draws;
        chi2 += (count[v] - ex) * (count[v] - ex) / ex;
        df++;
    }
    // chi2 with df degrees of freedom has mean df and sd sqrt(2 df): 5 sd is a 1e-6-ish tail
    double bound = df + 5.0 * sqrt(2.0 * (df > 0 ? df : 1)) + 1.0;
    check(outside == 0 && chi2 < bound, "sampling %s: %d tokens kept, chi2 %.1f (df %d, bound %.1f), %d draws outside",
          what, n, chi2, df, bound, outside);
    free(e); free(expect); free(count); free(scratch);
}
static void test_sampling(void) {
    enum { V = 50 };
    float logits[V];
    uint64_t rng = 99;
    for (int v = 0; v < V; v++) logits[v] = 3.0f * random_normal(&rng);
    SamplerConfig sc = {1.0f, 1.0f, 0, 1, 0, 0, 0};
    sampling_case("T=1", logits, V, sc, 200000);
    sc.temperature = 0.7f; sampling_case("T=0.7", logits, V, sc, 200000);
    sc.temperature = 1.0f; sc.top_p = 0.9f; sampling_case("T=1 top_p=0.9", logits, V, sc, 200000);
    sc.top_p = 1.0f; sc.top_k = 5; sampling_case("T=1 top_k=5", logits, V, sc, 200000);
    sc.temperature = 1.3f;
    sc.top_k = 10;
    sc.top_p = 0.8f;
    sampling_case("T=1.3 top_k=10 top_p=0.8", logits, V, sc, 200000);
    // edge cases
    int best = 0;
    for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    ProbId scratch[V];
    int ok = 1;
    SamplerConfig k1 = {1.0f, 1.0f, 1, 1, 0, 0, 0}, tiny_p = {1.0f, 1e-6f, 0, 1, 0, 0, 0};
    SamplerConfig greedy = {0.0f, 1.0f, 0, 1, 0, 0, 0};
    for (int i = 0; i < 100; i++) ok &= sample_token(logits, V, &k1, &rng, scratch) == best;
    for (int i = 0; i < 100; i++) ok &= sample_token(logits, V, &tiny_p, &rng, scratch) == best;
    ok &= sample_token(logits, V, &greedy, &rng, scratch) == best;
    check(ok, "sampling: top_k=1, tiny top_p and T=0 always give the argmax");
    float tie[4] = {1.0f, 3.0f, 3.0f, 0.0f};
    SamplerConfig k2 = {1.0f, 1.0f, 2, 1, 0, 0, 0};
    int c1 = 0, c2 = 0, other = 0;
    for (int i = 0; i < 10000; i++) {
        int t = sample_token(tie, 4, &k2, &rng, scratch);
        c1 += t == 1;
        c2 += t == 2;
        other += t != 1 && t != 2;
    }
    check(sample_token(tie, 4, &greedy, &rng, scratch) == 1 && sample_token(tie, 4, &k1, &rng,
                                                                            scratch) == 1 && other == 0 &&
          abs(c1 - c2) < 400,
          "sampling ties: argmax takes the lower id; top_k=2 keeps both tied tokens (%d/%d), nothing else", c1, c2);
}

// The log-probs returned with each sampled token equal a teacher-forced forward's.
static void test_logprobs(void) {
    Model m; char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_tied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    int p0[4] = {5, 9, 17, 3}, p1[2] = {40, 41};
    const int *prompts[2] = {p0, p1};
    int plen[2] = {4, 2}, G = 5;   // 10 responses: decoding goes through the pre-packed GEMM path
    SamplerConfig sc = {1.0f, 0.95f, 0, 12, 0, 7, 0};
    Generation gen;
    generate(&m, prompts, plen, 2, G, &sc, &gen, 0);
    float worst = 0.0f;
    for (int j = 0; j < gen.n; j++) {
        int P = plen[j / G], T = P + gen.len[j];
        int *in = (int *)xmalloc((size_t)T * sizeof(int)), *tg = (int *)xmalloc((size_t)T * sizeof(int));
        for (int t = 0; t < P; t++) in[t] = prompts[j / G][t];
        for (int t = 0; t < gen.len[j]; t++) in[P + t] = gen.tokens[j][t];
        for (int t = 0; t < T; t++) tg[t] = t + 1 < T ? in[t + 1] : -1;
        model_forward(&m, in, tg, NULL, 1, T);
        for (int t = 0; t + 1 < gen.len[j]; t++) {
            float d = fabsf(m.acts.logp[P - 1 + t] - gen.logprobs[j][t]);
            if (d > worst) worst = d;
        }
        free(in); free(tg);
    }
    check(worst < 1e-4f, "sampled-token log-probs equal teacher-forced log-probs (%d responses, max abs diff %.2e)",
          gen.n, worst);
    // determinism: same seed, same tokens
    Generation again;
    generate(&m, prompts, plen, 2, G, &sc, &again, 0);
    int same = 1;
    for (int j = 0; j < gen.n; j++) {
        same &= gen.len[j] == again.len[j];
        for (int t = 0; same && t < gen.len[j]; t++) same &= gen.tokens[j][t] == again.tokens[j][t];
    }
    check(same, "sampling is deterministic for a given seed");
    generation_free(&gen); generation_free(&again); model_free(&m);
}

// ----------------------------------------------------------------------------
// the EMPO policy loss: loss and every gradient against a PyTorch implementation of the same
// objective on fixed rollouts, in the paper's default form, with PPO clip, and with KL (k3)
static void test_policy_loss(void) {
    const char *path = "dev/fixtures/qwen2_untied_policy.bin";
    Model m; char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_untied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    PolicyFixture pf;
    if (policy_fixture_open(&pf, path) != 0) {
        check(0, "cannot read %s", path);
        model_free(&m);
        return;
    }
    int B = pf.B, T = pf.T;
    const char *names[3] = {"default", "ppo-clip 0.2", "kl 0.05"};
    for (int v = 0; v < 3; v++) {
        float *hdr, *grads;
        policy_fixture_next(&pf, m.num_parameters, &hdr, &grads);
        model_forward(&m, pf.inputs, pf.targets, NULL, B, T);
        float loss = policy_objective(&m, B, T, pf.mask, pf.adv, pf.old, pf.ref, hdr[0], hdr[1], 1.0f / B);
        model_zero_grad(&m);
        model_backward(&m);
        float e = rel_err(m.grads_memory, grads, m.num_parameters, NULL);
        check(fabsf(loss - hdr[2]) < 1e-5f * fmaxf(1.0f, fabsf(hdr[2])) && e < 1e-4f,
              "EMPO policy loss (%s): loss %.6f vs torch %.6f, all gradients rel err %.2e", names[v], loss, hdr[2], e);
        free(hdr); free(grads);
    }
    policy_fixture_close(&pf);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// end to end on the starter model that ships in dev/default (byte tokenizer, plain template)

#define STARTER DEMO_DIR "/starter.bin"


// Evaluation gives the expected accuracy on a JSONL made for the test: the gold answers are the
// model's own greedy answers for half of the problems and a wrong number for the others.
static void test_eval_accuracy(void) {
    Model m; char err[512];
    if (model_load(&m, STARTER, err, sizeof err) != 0) { check(0, "%s", err); return; }
    Tokenizer tok;
    load_tokenizer(&tok, &m, STARTER);
    ProblemSet ps;
    problems_load(&ps, DEMO_DIR "/eval.jsonl");
    enum { N = 8 };
    const Problem *probs[N];
    for (int i = 0; i < N; i++) probs[i] = &ps.items[i];
    SamplerConfig greedy = {0.0f, 1.0f, 0, 48, 0, 1, 0};
    Scorer scorer = scorer_math();
    Rollouts r;
    rollouts_sample(&r, &m, &tok, &scorer, TEMPLATE_PLAIN, probs, N, 1, &greedy, 0);
    const char *path = "/tmp/empo_test_eval.jsonl";
    FILE *f = fopen(path, "w");
    int expect = 0;
    for (int i = 0; i < N; i++) {
        const char *gold = (i % 2 == 0 && r.answer[i]) ? r.answer[i] : "987654";
        expect += i % 2 == 0 && r.answer[i] != NULL;
        fputs("{\"problem\": ", f); json_write_str(f, probs[i]->problem, strlen(probs[i]->problem));
        fputs(", \"answer\": ", f); json_write_str(f, gold, strlen(gold)); fputs("}\n", f);
    }
    fclose(f);
    ProblemSet test;
    problems_load(&test, path);
    const char *records = "/tmp/empo_test_eval_records.jsonl";
    EvalConfig ec = {48, 1, 1.0f, 1.0f, 0, 1, 3};
    EvalResult e = evaluate(&m, &tok, &scorer, TEMPLATE_PLAIN, &test, &ec, records, 0);
    int lines = 0;
    char *txt = read_whole_file(records, NULL);
    for (char *c = txt; c && *c; c++) lines += *c == '\n';
    check(e.n == N && fabsf(e.greedy - (float)expect / N) < 1e-6f && lines == N && txt && strstr(txt,
            "\"correct\": true"),
          "eval on a made-up JSONL: greedy accuracy %.3f, expected %d/%d; %d records written", e.greedy, expect, N,
          lines);
    free(txt);
    rollouts_free(&r); problems_free(&ps); problems_free(&test); tokenizer_free(&tok); model_free(&m);
    remove(path); remove(records);
}

// Killing a run and resuming it from its last checkpoint repeats the uninterrupted run bit for bit
// (gradient norms of every step and the final weights), and the same seed gives the same run.
static void test_resume(void) {
    RunConfig rc;
    run_config_defaults(&rc, 1);
    rc.model_path = STARTER; rc.eval_path = NULL; rc.quiet = 1;
    rc.prompts_per_step = 4;
    rc.G = 6;
    rc.max_new = 60;
    rc.steps = 4;
    rc.ckpt_every = 2;
    rc.tc.micro = 7;
    rc.tc.lr = 1e-3f;
    float la[4], na[4], lb[4], nb[4];
    rc.out_dir = "/tmp/empo_test_run_a";
    run_training(&rc, la, na);
    rc.out_dir = "/tmp/empo_test_run_b"; rc.steps = 2;   // "killed" after step 2's checkpoint
    run_training(&rc, lb, nb);
    rc.resume_dir = "/tmp/empo_test_run_b"; rc.steps = 4;
    run_training(&rc, lb, nb);
    int same = 1;
    for (int i = 0; i < 4; i++) same &= memcmp(&na[i], &nb[i], 4) == 0 && memcmp(&la[i], &lb[i], 4) == 0;
    // so the resume carries real optimizer state
    int trained_before = na[0] > 0 || na[1] > 0, trained_after = na[2] > 0 || na[3] > 0;
    Checkpoint a, b; char err[512];
    int ok = ckpt_load("/tmp/empo_test_run_a/model.bin", &a, err,
                       sizeof err) == 0 && ckpt_load("/tmp/empo_test_run_b/model.bin", &b, err, sizeof err) == 0;
    int wsame = ok && a.num_params == b.num_params && memcmp(a.params, b.params, a.num_params * 4) == 0;
    if (ok) { ckpt_free(&a); ckpt_free(&b); }
    RunState rs;   // the one-file checkpoint (doc/formats.md): model + optimizer + run state, committed together
    int st_ok = run_state_read("/tmp/empo_test_run_b", &rs, err, sizeof err) == 0 && rs.step == 4 && rs.cursor == 16;
    if (st_ok || rs.config) free(rs.config);
    check(same && wsame && trained_before && trained_after && st_ok,
          "EMPO run resumed after step 2 repeats the straight run bit for bit: grad norms %.4f %.4f %.4f %.4f, "
          "weights %s, run state %s",
          na[0], na[1], na[2], na[3], wsame ? "identical" : "DIFFER", st_ok ? "at step 4" : err);
    char buf[4096];
    int rc1 = run_cmd("rm -rf /tmp/empo_test_run_a /tmp/empo_test_run_b", buf, sizeof buf);
    (void)rc1;
}

// SFT learns: the masked response loss falls on a tiny new model (also exercises --init).
static void test_sft(void) {
    RunConfig rc;
    run_config_defaults(&rc, 0);
    rc.mode = MODE_SFT; rc.init_spec = "C=32,L=1,NH=2,NKV=1,I=64,T=128"; rc.data_path = DEMO_DIR "/sft.jsonl";
    rc.eval_path = NULL; rc.quiet = 1; rc.prompts_per_step = 8; rc.steps = 30; rc.ckpt_every = 0; rc.tc.lr = 3e-3f;
    rc.out_dir = "/tmp/empo_test_sft";
    float loss[30];
    run_training(&rc, loss, NULL);
    check(loss[29] < 0.6f * loss[0], "SFT on a new tiny model: response loss %.3f -> %.3f in 30 steps", loss[0],
          loss[29]);
    char buf[256];
    run_cmd("rm -rf /tmp/empo_test_sft", buf, sizeof buf);
}

// The command line: bad input gives one clear error and a non-zero exit; --tokenize; --prompt.
static void test_cli(void) {
    write_text("/tmp/empo_bad.jsonl",
               "{\"problem\": \"What is 1/2 + 1/2?\", \"answer\": \"1\"}\n{\"problem\": oops}\n\n{\"answer\": "
               "\"3\"}\n{\"problem\": \"What is 1/3 * 3/4?\", \"answer\": \"1/4\"}\n");
    write_text("/tmp/empo_empty.jsonl", "");
    expect_cmd("malformed JSONL lines are reported by line number, then an error",
               "./train_empo --eval /tmp/empo_bad.jsonl -o /tmp/empo_cli", 1, "empo_bad.jsonl:2: malformed JSON");
    expect_cmd("a line without a problem is reported by line number",
               "./train_empo --eval /tmp/empo_bad.jsonl -o /tmp/empo_cli", 1, "empo_bad.jsonl:4: no \"problem\"");
    expect_cmd("... and the error counts them", "./train_empo --eval /tmp/empo_bad.jsonl -o /tmp/empo_cli", 1,
               "2 bad lines (the first is line 2)");
    expect_cmd("--skip-bad-lines skips them and says how many",
               "./train_empo --eval /tmp/empo_bad.jsonl -o /tmp/empo_cli --skip-bad-lines", 0, "skipped 2 bad lines");
    expect_cmd("an empty data file", "./train_empo --eval /tmp/empo_empty.jsonl -o /tmp/empo_cli", 1, "no usable");
    expect_cmd("a missing data file", "./train_empo -m " STARTER " -d /tmp/empo_nope.jsonl -o /tmp/empo_cli", 1,
               "cannot read /tmp/empo_nope.jsonl: No such file or directory");
    char cmd[1024], longp[400];
    memset(longp, 'x', sizeof longp - 1); longp[sizeof longp - 1] = 0;
    snprintf(cmd, sizeof cmd, "./train_empo --prompt '%s'", longp);
    expect_cmd("a prompt longer than the context", cmd, 1, "beyond the model's context");
    expect_cmd("a missing checkpoint", "./train_empo -m /tmp/empo_nope.bin --eval /tmp/empo_bad.jsonl", 1,
               "/tmp/empo_nope.bin");
    expect_cmd("an unknown flag", "./train_empo --frobnicate 3", 1, "unknown flag --frobnicate");
    expect_cmd("a bad number", "./train_empo -T hot", 1, "flag -T: 'hot'");
    expect_cmd("--tokenize (special tokens recognised)",
               "printf '<|im_start|>hi' | ./train_empo -m " STARTER " --tokenize", 0, "257 104 105\n");
    expect_cmd("--prompt shows answers, clusters, entropy and rewards",
               "./train_empo --prompt 'What is 1/2 + 1/4?' -G 6", 0, "semantic entropy H =");
    expect_cmd("-h documents the flags", "./train_empo -h", 0, "--eval FILE");
    char buf[256];
    run_cmd("rm -rf /tmp/empo_cli /tmp/empo_bad.jsonl /tmp/empo_empty.jsonl", buf, sizeof buf);
}

// The flag table: every flag parses into its field where it applies, is refused by name where it
// does not, and -h lists it. Also the rules that span flags (issue 12 item 6).
static void test_flags(void) {
    int n_set = 0, n_num = 0;
    for (int i = 0; i < N_FLAGS; i++) {
        const Flag *f = &FLAGS[i];
        if (f->kind != FLAG_INT && f->kind != FLAG_FLOAT) continue;
        n_num++;
        int mode = 0;
        while (!(f->modes >> mode & 1)) mode++;
        const char *mode_flag[] = {NULL, "--sft", "--eval", "--prompt", "--tokenize"};
        char val[32];
        snprintf(val, sizeof val, f->kind == FLAG_INT ? "%.0f" : "%g", f->hi);
        char *argv[6] = {(char *)"train_empo", (char *)"-m", (char *)"x.bin", (char *)f->name, val, NULL};
        int argc = 5;
        if (mode_flag[mode]) {
            argv[5] = (char *)mode_flag[mode];
            argc = 6;
        }
        char *argv2[8];
        memcpy(argv2, argv, sizeof argv);
        if (mode_flag[mode]) argv2[argc++] = (char *)"file";   // the mode flag's value
        RunConfig rc;
        if (mode == MODE_TRAIN) {
            argv2[argc++] = (char *)"-d";
            argv2[argc++] = (char *)"d.jsonl";
        }
        parse_flags(&rc, argc, argv2);
        const char *field = (const char *)&rc + f->offset;
        double got = f->kind == FLAG_INT ? *(const int *)field : *(const float *)field;
        n_set += rc.mode == mode && got == (f->kind == FLAG_INT ? f->hi : (double)(float)f->hi);
    }
    check(n_set == n_num, "every numeric flag of the table sets its field at its upper bound (%d of %d)", n_set, n_num);
    char out[65536];
    int listed = 0, n = 0;
    run_cmd("./train_empo -h", out, sizeof out);
    for (int i = 0; i < N_FLAGS; i++)
        if (FLAGS[i].kind != FLAG_HEADING) {
            char want[48];
            snprintf(want, sizeof want, "  %s ", FLAGS[i].name);
            n++;
            listed += strstr(out, want) != NULL;
        }
    check(listed == n, "-h lists every flag of the table (%d of %d)", listed, n);
    write_text("/tmp/empo_flags.jsonl", "{\"problem\": \"What is 1/2 + 1/2?\", \"answer\": \"1\"}\n");
    expect_cmd("a flag the mode ignores is refused, naming the mode", "./train_empo --eval /tmp/empo_flags.jsonl -n 5",
               1,
               "flag -n has no effect in --eval");
    expect_cmd("--sft takes its own file: a -d as well is refused", "./train_empo --sft /tmp/empo_flags.jsonl -d x", 1,
               "flag -d has no effect in --sft");
    expect_cmd("two modes at once", "./train_empo --eval /tmp/empo_flags.jsonl --prompt hi", 1, "one mode at a time");
    expect_cmd("--judge-template without -R", "./train_empo --task freeform --judge-template /tmp/t.txt --eval "
               "/tmp/empo_flags.jsonl", 1, "--judge-template needs a verifier");
    expect_cmd("an unknown last flag is unknown, not short of a value", "./train_empo --frobnicate", 1,
               "unknown flag --frobnicate");
    expect_cmd("a stray argument", "./train_empo stray", 1, "unexpected argument 'stray'");
    expect_cmd("a flag without its value", "./train_empo -G", 1, "flag -G needs a value");
    int st = run_cmd("./train_empo --eval /tmp/empo_flags.jsonl -q -o /tmp/empo_flags_out", out, sizeof out);
    check(st == 0 && !strstr(out, "eval 1/1") && strstr(out, "greedy pass@1"),
          "-q: an evaluation prints its result and no progress line");
    st = run_cmd("./train_empo --eval /tmp/empo_flags.jsonl -G 4 -p 0.5 -k 3 --eval-n 20 -o /tmp/empo_flags_out", out,
                 sizeof out);
    check(st == 0 && strstr(out, "maj@4"), "--eval takes -p, -k and --eval-n for its samples");
    run_cmd("rm -rf /tmp/empo_flags.jsonl /tmp/empo_flags_out", out, sizeof out);
    // --extract reaches the math scorer: a response without a box has an answer only under parse
    const char *argv[] = {"train_empo", "--extract", "boxed", "-d", "d.jsonl"};
    RunConfig rc;
    parse_flags(&rc, 5, (char **)argv);
    Scorer strict = scorer_for(&rc), loose = scorer_math();
    char a1[64] = "", a2[64] = "";
    const char *resp = "We add the two. The answer is $7$.";
    int f1 = strict.extract(&strict, resp, a1, sizeof a1), f2 = loose.extract(&loose, resp, a2, sizeof a2);
    check(rc.extract_policy == MV_EXTRACT_BOXED && !f1 && f2 && !strcmp(a2, "7"),
          "--extract boxed finds no answer without a box; the default (parse) finds \"%s\"", a2);
    expect_cmd("a bad --extract", "./train_empo --extract sideways", 1, "flag --extract: 'sideways' is not one of");
}


// The fast paths of empoc/gemm.h against the plain definitions in train_empo.c's comments, bit for
// bit: attention forward and backward (4 query rows at a time), decoding's grouped attention, and
// the argmax. Shapes cover HD 16 and 64 (vector and fallback paths), T not a multiple of 4 or 16.
static void attention_plain_forward(float *out, float *att, const float *qkv, int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
    for (int b = 0; b < B; b++)
        for (int hq = 0; hq < NH; hq++)
            for (int t = 0; t < T; t++) {
                const float *q = qkv + ((size_t)b * T + t) * QKV + (size_t)hq * HD;
                float *a = att + (((size_t)b * NH + hq) * T + t) * T;
                float *o = out + ((size_t)b * T + t) * NH * HD + (size_t)hq * HD;
                for (int j = 0; j <= t; j++)
                    a[j] = dot_f32(q, qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hq / rep) * HD, HD) * scale;
                softmax_inplace(a, t + 1);
                for (int j = t + 1; j < T; j++) a[j] = 0.0f;
                for (int d = 0; d < HD; d++) {
                    float s = 0.0f;
                    for (int j = 0; j <= t; j++)
                        s = fmaf(a[j], qkv[((size_t)b * T + j) * QKV + (size_t)(NH + NKV + hq / rep) * HD + d], s);
                    o[d] = s;
                }
            }
}
static void attention_plain_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T,
                                     int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD), *datt = (float *)xmalloc((size_t)T * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int hq = 0; hq < NH; hq++)
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t, ko = (size_t)(NH + hq / rep) * HD, vo = ko + (size_t)NKV * HD;
                const float *a = att + (((size_t)b * NH + hq) * T + t) * T, *g = dout + row * NH * HD + hq * HD;
                const float *q = qkv + row * QKV + (size_t)hq * HD;
                float dot = 0.0f;
                for (int j = 0; j <= t; j++) datt[j] = dot_f32(g, qkv + ((size_t)b * T + j) * QKV + vo, HD);
                for (int j = 0; j <= t; j++) { float p = datt[j] * a[j]; gemm_opaque(p); dot += p; }   // unfused
                for (int j = 0; j <= t; j++) {
                    float *rj = dqkv + ((size_t)b * T + j) * QKV;
                    const float *kj = qkv + ((size_t)b * T + j) * QKV + ko;
                    float ds = a[j] * (datt[j] - dot) * scale;
                    for (int d = 0; d < HD; d++) {
                        rj[vo + d] = fmaf(a[j], g[d], rj[vo + d]);
                        dqkv[row * QKV + (size_t)hq * HD + d] = fmaf(ds, kj[d], dqkv[row * QKV + (size_t)hq * HD + d]);
                        rj[ko + d] = fmaf(ds, q[d], rj[ko + d]);
                    }
                }
            }
    free(datt);
}
static int argmax_plain(const float *x, int V) {
    int best = 0;
    for (int v = 1; v < V; v++) if (x[v] > x[best]) best = v;
    return best;
}
// sgemm's definition (gemm.h), written plainly: each element the fmas of one K block from 0 in order of
// k, the blocks' sums added into C in order
static void sgemm_plain(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                        float *C, long ldc, int accumulate) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float c = accumulate ? C[(long)m * ldc + n] : 0.0f;
            for (int k0 = 0; k0 < K; k0 += GEMM_KC) {
                float part = 0.0f;
                for (int k = k0; k < K && k < k0 + GEMM_KC; k++)
                    part = fmaf(A[(long)m * rsa + (long)k * csa], B[(long)k * rsb + (long)n * csb], part);
                c = k0 == 0 && !accumulate ? part : c + part;
            }
            C[(long)m * ldc + n] = c;
        }
}
// sgemm against sgemm_plain at 1, 2 and 3 threads: the row blocks taken by whichever thread is free,
// the split by panels, short tiles, K and N past one block, the three layouts, and prepacked B
static void test_sgemm_bits(void) {
    uint64_t rng = 5;
    const int shapes[][3] = {{1, 17, 5}, {5, 33, 300}, {56, 100, 520}, {97, 40, 257}, {200, 1100, 64}, {301, 48, 600}};
    int max_threads = 1;
#ifdef _OPENMP
    max_threads = omp_get_max_threads();
#endif
    for (int si = 0; si < 6; si++) {
        int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], ok = 1;
        size_t mk = (size_t)M * K * sizeof(float), kn = (size_t)K * N * sizeof(float);
        size_t mn = (size_t)M * N * sizeof(float);
        float *A = (float *)xmalloc(mk), *B = (float *)xmalloc(kn);
        float *C1 = (float *)xmalloc(mn), *C2 = (float *)xmalloc(mn);
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = random_normal(&rng);
        for (size_t i = 0; i < (size_t)K * N; i++) B[i] = random_normal(&rng);
        float *P = pack_panels(B, N, K);   // B read as (N, K) row-major: the forward's W
        for (int th = 1; th <= 3; th++) {
#ifdef _OPENMP
            omp_set_num_threads(th);
#endif
            for (int lay = 0; lay < 4; lay++) {   // forward (W^T), d_input (row-major B), d_weight (A^T), prepacked
                long rsa = lay == 2 ? 1 : K, csa = lay == 2 ? M : 1, rsb = lay == 1 || lay == 2 ? N : 1;
                long csb = lay == 1 || lay == 2 ? 1 : K;
                int acc = lay == 1 || lay == 2;
                for (size_t i = 0; i < (size_t)M * N; i++) C1[i] = C2[i] = 0.25f * (float)(i % 7);
                sgemm(M, N, K, A, rsa, csa, B, rsb, csb, C1, N, acc, lay == 3 ? P : NULL);
                sgemm_plain(M, N, K, A, rsa, csa, B, rsb, csb, C2, N, acc);
                ok &= !memcmp(C1, C2, (size_t)M * N * sizeof(float));
            }
        }
#ifdef _OPENMP
        omp_set_num_threads(max_threads);
#endif
        check(ok, "sgemm (M %d, N %d, K %d) equals its plain definition bit for bit, 3 layouts and prepacked, "
              "1-3 threads", M, N, K);
        free(A); free(B); free(C1); free(C2); free(P);
    }
}

// The decoding GEMM's work split (gemm_next_chunk): 3 threads, one of them slowed down, take every
// chunk exactly once, and the others take some of the slow one's from the back of its range.
static void test_gemm_chunks(void) {
    enum { NCH = 60, NTH = 3 };
    GemmRange *rg = (GemmRange *)aligned_alloc(64, NTH * sizeof(GemmRange));
    int count[NCH] = {0}, stolen_from_0 = 0, nth = 1;
    gemm_split(rg, NTH, NCH);
    #pragma omp parallel num_threads(NTH)
    {
        int th = 0;
#ifdef _OPENMP
        th = omp_get_thread_num();
        #pragma omp single
        nth = omp_get_num_threads();
#endif
        int stolen;
        for (int ch; (ch = gemm_next_chunk(rg, NTH, th, &stolen)) >= 0;) {
            #pragma omp atomic
            count[ch]++;
            if (stolen && ch < NCH / NTH) {
                #pragma omp atomic
                stolen_from_0++;
            }
            if (th == 0) { struct timespec ts = {0, 5000000}; nanosleep(&ts, NULL); }   // the slow thread
        }
    }
    int once = 1;
    for (int i = 0; i < NCH; i++) once &= count[i] == 1;
    check(once, "the decoding GEMM's chunks: each of %d taken exactly once by %d threads (%d ranges)", NCH, nth, NTH);
    if (nth > 1) check(stolen_from_0 > 0, "a slowed thread's chunks are taken by the others (%d of %d)", stolen_from_0,
                       NCH / NTH);
    free(rg);
}

// Training's LM head on the rows with a target only (target_rows_only) against every row: the same
// log-probs and gradients, bit for bit, with the kept rows spread over several of the GEMM's K blocks
// and, at 6 rows, through the few-rows matmul
static void test_target_rows_only(void) {
    Model m; char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_untied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    uint64_t rng = 17;
    const int shapes[][2] = {{12, 48}, {1, 6}};   // 576 rows: 3 K blocks
    for (int si = 0; si < 2; si++) {
        int B = shapes[si][0], T = shapes[si][1], N = B * T, V = m.config.V;
        if (T > m.config.maxT) T = m.config.maxT, N = B * T;
        int *in = (int *)xmalloc((size_t)N * sizeof(int)), *tg = (int *)xmalloc((size_t)N * sizeof(int)), kept = 0;
        for (int i = 0; i < N; i++) {
            in[i] = (int)(random_u32(&rng) % (uint32_t)V);
            tg[i] = i % T < T / 3 || random_u32(&rng) % 4 == 0 ? -1 : (int)(random_u32(&rng) % (uint32_t)V);
            kept += tg[i] >= 0;
        }
        float *g[2], *lp[2];
        for (int pass = 0; pass < 2; pass++) {
            m.target_rows_only = pass;
            model_forward(&m, in, tg, NULL, B, T);
            for (int i = 0; i < N; i++) m.dlogp[i] = tg[i] >= 0 ? 0.01f * (float)(i % 7 - 3) : 0.0f;
            model_zero_grad(&m);
            model_backward(&m);
            g[pass] = (float *)xmalloc(m.num_parameters * sizeof(float));
            memcpy(g[pass], m.grads_memory, m.num_parameters * sizeof(float));
            lp[pass] = (float *)xmalloc((size_t)N * sizeof(float));
            memcpy(lp[pass], m.logp, (size_t)N * sizeof(float));
        }
        m.target_rows_only = 0;
        check(!memcmp(g[0], g[1], m.num_parameters * sizeof(float)) && !memcmp(lp[0], lp[1], (size_t)N * sizeof(float)),
              "the LM head on the target rows only (%d of %d rows) gives the full LM head's log-probs and gradients "
              "bit for bit", kept, N);
        free(in); free(tg); free(g[0]); free(g[1]); free(lp[0]); free(lp[1]);
    }
    model_free(&m);
}

// vexpf (gemm.h) has expf's bits on every input, and rows_expsum gives the log-softmax sum's plain definition
// (the max, then sum_v expf(x - max) in float and in order of v) for 1 to 8 rows side by side
static void test_exp_bits(void) {
    enum { NX = 1 << 20, V = 1003 };
    float *x = (float *)xmalloc(NX * sizeof(float)), *y = (float *)xmalloc(NX * sizeof(float));
    uint64_t rng = 5;
    for (int i = 0; i < NX; i++) {   // every exponent and sign, the fast path's edges, and inf / NaN
        uint32_t b = random_u32(&rng);
        if (i % 4 == 0) { float v = ((float)(b >> 8) / 16777216.0f - 0.5f) * 180.0f; memcpy(&b, &v, 4); }
        if (i < 4) b = i == 0 ? 0x7f800000u : i == 1 ? 0xff800000u : i == 2 ? 0x7fc00000u : 0x42b00000u;
        memcpy(&x[i], &b, 4);
    }
    vexpf(y, x, NX);
    int bad = 0;
    for (int i = 0; i < NX; i++) {
        float e = expf(x[i]);
        bad += memcmp(&e, &y[i], 4) != 0 && !(isnan(e) && isnan(y[i]));
    }
    check(bad == 0, "vexpf has expf's bits on %d inputs (%d differ; fast path %s)", NX, bad, vexpf_fast ? "on" : "off");
#if defined(__AVX2__) && defined(__FMA__) && defined(__GLIBC__)
    check(vexpf_fast, "vexpf's vector path is on with glibc and AVX2 + FMA (else every call goes to expf)");
#endif
    float *rows = (float *)xmalloc((size_t)8 * V * sizeof(float));
    for (int i = 0; i < 8 * V; i++) rows[i] = 4.0f * random_normal(&rng);
    int same = 1;
    for (int nr = 1; nr <= 8; nr++) {
        float mx[8], sum[8];
        rows_expsum(mx, sum, rows, V, nr, V);
        for (int r = 0; r < nr; r++) {
            const float *xr = rows + (size_t)r * V;
            float m = xr[0], t = 0.0f;
            for (int v = 1; v < V; v++) if (xr[v] > m) m = xr[v];
            for (int v = 0; v < V; v++) t += expf(xr[v] - m);
            same &= !memcmp(&m, &mx[r], 4) && !memcmp(&t, &sum[r], 4);
        }
    }
    check(same, "rows_expsum: each row's max and sum of expf(x - max) in order, bit for bit, 1 to 8 rows at once");
    free(x); free(y); free(rows);
}

static void test_fast_paths(void) {
    uint64_t rng = 99;
    test_sgemm_bits();
    test_gemm_chunks();
    test_exp_bits();
    test_target_rows_only();
    const int shapes[][5] = {{2, 37, 4, 2, 16}, {1, 70, 8, 2, 64}, {2, 19, 2, 2, 64}, {1, 5, 4, 1, 64},
                             {2, 23, 4, 2, 24}};
    for (int si = 0; si < 5; si++) {
        int B = shapes[si][0], T = shapes[si][1], NH = shapes[si][2], NKV = shapes[si][3], HD = shapes[si][4];
        int QKV = (NH + 2 * NKV) * HD;
        size_t nq = (size_t)B * T * QKV, no = (size_t)B * T * NH * HD, na = (size_t)B * NH * T * T;
        float *qkv = (float *)xmalloc(nq * 4), *dout = (float *)xmalloc(no * 4);
        float *o1 = (float *)xmalloc(no * 4), *o2 = (float *)xmalloc(no * 4), *a1 = (float *)xmalloc(na * 4);
        float *a2 = (float *)xmalloc(na * 4), *d1 = (float *)xmalloc(nq * 4), *d2 = (float *)xmalloc(nq * 4);
        for (size_t i = 0; i < nq; i++) { qkv[i] = random_normal(&rng); d1[i] = d2[i] = 0.25f * random_normal(&rng); }
        for (size_t i = 0; i < no; i++) dout[i] = random_normal(&rng);
        attention_forward(o1, a1, qkv, B, T, NH, NKV, HD);
        attention_plain_forward(o2, a2, qkv, B, T, NH, NKV, HD);
        attention_backward(d1, dout, qkv, a1, B, T, NH, NKV, HD);
        attention_plain_backward(d2, dout, qkv, a2, B, T, NH, NKV, HD);
        check(!memcmp(o1, o2, no * 4) && !memcmp(a1, a2, na * 4) && !memcmp(d1, d2, nq * 4),
              "attention forward and backward (B %d, T %d, %d/%d heads, HD %d) equal the plain loops bit for bit",
              B, T, NH, NKV, HD);
        // decoding: the query heads of each key/value head against the first n positions as cached rows
        int n = T - 1, kvd = NKV * HD, ok = 1;
        float *k = (float *)xmalloc((size_t)T * kvd * 4), *v = (float *)xmalloc((size_t)T * kvd * 4);
        float *p = (float *)xmalloc((size_t)4 * T * 4);
        for (int j = 0; j < T; j++)
            for (int d = 0; d < kvd; d++) { k[j * kvd + d] = qkv[(size_t)j * QKV + NH * HD + d];
                                            v[j * kvd + d] = qkv[(size_t)j * QKV + (NH + NKV) * HD + d]; }
        for (int hk = 0; hk < NKV; hk++) {
            int rep = NH / NKV, nqh = rep < 4 ? rep : 4;
            float *o4[4], *p4[4];
            const float *q4[4];
            for (int r = 0; r < nqh; r++) {
                o4[r] = o1 + (size_t)(n * NH + hk * rep + r) * HD; p4[r] = p + (size_t)r * T;
                q4[r] = qkv + (size_t)n * QKV + (size_t)(hk * rep + r) * HD;
            }
            attend_group(o4, p4, q4, nqh, k + hk * HD, v + hk * HD, kvd, n + 1, HD, 1.0f / sqrtf((float)HD));
            for (int r = 0; r < nqh; r++) ok &= !memcmp(o4[r], o2 + (size_t)(n * NH + hk * rep + r) * HD, HD * 4);
        }
        check(ok, "decoding's grouped attention (HD %d, %d positions) equals the plain loops bit for bit", HD,
              n + 1);
        free(qkv); free(dout); free(o1); free(o2); free(a1); free(a2); free(d1); free(d2); free(k); free(v); free(p);
    }
    int ok = 1;
    float x[40];
    const float special[6] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -FLT_MAX};
    for (int it = 0; it < 4000 && ok; it++) {
        int V = 1 + (int)(random_u32(&rng) % 40);
        for (int i = 0; i < V; i++) {
            uint32_t r = random_u32(&rng) % 8;
            x[i] = r < 6 && random_u32(&rng) % 3 == 0 ? special[r] : (float)(random_u32(&rng) % 5) - 2.0f;
        }
        ok = row_argmax(x, V) == argmax_plain(x, V);
    }
    check(ok, "row_argmax equals the scalar loop on 4000 rows with ties, NaN, +-inf, +-0 and -FLT_MAX");
}

int main(void) {
    test_fixture("qwen2_tied");
    test_fixture("qwen2_untied");
    test_checkpoint_errors();
    test_kv_cache();
    test_fast_paths();
    test_greedy_vs_hf();
    test_sampling();
    test_logprobs();
    test_policy_loss();
    test_eval_accuracy();
    test_resume();
    test_sft();
    test_cli();
    test_flags();
    return test_summary("empo");
}
