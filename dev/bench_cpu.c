// dev/bench_cpu.c: forward+backward(+AdamW) tokens/s of train_empo.c on a mid-size Qwen2 config.
// Run through dev/bench_cpu.py (make bench), which times PyTorch eager on the same config too.
// usage: bench_cpu V C L NH NKV I B T iters             (training step)
//        bench_cpu gen V C L NH NKV I B P N iters        (decode: B sequences, P prompt tokens, N new)
//        bench_cpu empo V C L NH NKV I B G P N           (one EMPO step: B prompts x G responses)
#define TESTING
#include "../train_empo.c"

// The benchmark shape from argv[0..5] = V C L NH NKV I (untied, with qkv bias, like Qwen2).
static ModelConfig bench_config(char **argv) {
    ModelConfig c = {0};
    c.V = atoi(argv[0]); c.C = atoi(argv[1]); c.L = atoi(argv[2]); c.NH = atoi(argv[3]); c.NKV = atoi(argv[4]);
    c.I = atoi(argv[5]); c.HD = c.NH > 0 ? c.C / c.NH : 0; c.maxT = 4096; c.tied = 0; c.qkv_bias = 1;
    c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    if (cfg_invalid(&c)) FATAL("bad benchmark config: %s", cfg_invalid(&c));
    return c;
}

static int bench_generate(int argc, char **argv) {
    if (argc != 12) FATAL("usage: bench_cpu gen V C L NH NKV I B P N iters");
    ModelConfig c = bench_config(argv + 2);
    int B = atoi(argv[8]), P = atoi(argv[9]), N = atoi(argv[10]), iters = atoi(argv[11]);
    if (B <= 0 || P <= 0 || N <= 0 || iters <= 0) FATAL("bad benchmark config");
    Model m;
    model_init_random(&m, &c, 1);   // no EOS ids: every sequence runs to N new tokens
    int **prompts = (int **)xmalloc((size_t)B * sizeof(int *)), *plen = (int *)xmalloc((size_t)B * sizeof(int));
    uint64_t rng = 3;
    for (int b = 0; b < B; b++) {
        prompts[b] = (int *)xmalloc((size_t)P * sizeof(int)); plen[b] = P;
        for (int t = 0; t < P; t++) prompts[b][t] = random_u32(&rng) % c.V;
    }
    SamplerConfig sc = {0.0f, 1.0f, 0, N, 0, 1};
    double best = 1e30;
    for (int it = 0; it < iters; it++) {
        Generation g;
        double t0 = now_seconds();
        generate(&m, (const int *const *)prompts, plen, B, 1, &sc, &g, 0);
        double dt = now_seconds() - t0;
        if (dt < best) best = dt;
        generation_free(&g);
    }
    printf("{\"time_s\": %.4f, \"tok_s\": %.1f}\n", best, (double)B * N / best);
    for (int b = 0; b < B; b++) free(prompts[b]);
    free(prompts); free(plen); model_free(&m);
    return 0;
}

// One EMPO step at a given shape with a random model: generation forced to N tokens (min_new),
// answers extracted and clustered (a random model gives none), then the policy-gradient update
// with random advantages so that every response is trained on. Prints the time split.
static int bench_empo_step(int argc, char **argv) {
    if (argc != 12) FATAL("usage: bench_cpu empo V C L NH NKV I B G P N");
    ModelConfig c = bench_config(argv + 2);
    int B = atoi(argv[8]), G = atoi(argv[9]), P = atoi(argv[10]), N = atoi(argv[11]);
    if (B <= 0 || G <= 0 || P <= 0 || N <= 0) FATAL("bad benchmark config");
    Model m;
    model_init_random(&m, &c, 1);
    Rollouts r;
    memset(&r, 0, sizeof r);
    r.n_prompts = B; r.G = G; r.n = B * G;
    r.prompt_ids = (int **)xmalloc((size_t)B * sizeof(int *)); r.prompt_len = (int *)xmalloc((size_t)B * sizeof(int));
    uint64_t rng = 5;
    for (int b = 0; b < B; b++) {
        r.prompt_ids[b] = (int *)xmalloc((size_t)P * sizeof(int)); r.prompt_len[b] = P;
        for (int t = 0; t < P; t++) r.prompt_ids[b][t] = random_u32(&rng) % c.V;
    }
    SamplerConfig sc = {0.9f, 1.0f, 0, N, N, 7};
    double t0 = now_seconds();
    generate(&m, (const int *const *)r.prompt_ids, r.prompt_len, B, G, &sc, &r.gen, 0);
    double t1 = now_seconds();
    r.answer = (char **)xcalloc((size_t)r.n, sizeof(char *));
    r.reward = (float *)xcalloc((size_t)r.n, sizeof(float)); r.adv = (float *)xcalloc((size_t)r.n, sizeof(float));
    r.group = (SemanticGroup *)xcalloc((size_t)B, sizeof(SemanticGroup));
    r.keep = (int *)xcalloc((size_t)B, sizeof(int));
    // the scoring a real step does: decode, extract, cluster
    Tokenizer tok;
    tokenizer_init_bytes(&tok);
    #pragma omp parallel for
    for (int j = 0; j < r.n; j++) {
        for (int t = 0; t < r.gen.len[j]; t++) r.gen.tokens[j][t] %= 256;   // bytes, so the byte tokenizer decodes them
        size_t len;
        char *text = tokenizer_decode(&tok, r.gen.tokens[j], r.gen.len[j], &len);
        char buf[ANSWER_CAP];
        if (math_extract_answer(text, buf, sizeof buf)) r.answer[j] = xstrdup(buf);
        free(text);
    }
    const Problem **probs = (const Problem **)xcalloc((size_t)B, sizeof(Problem *));
    Scorer scorer = scorer_math();
    rollouts_score(&r, &scorer, probs, REWARD_EMPO, 0.0f, 1e9f);
    double t2 = now_seconds();
    for (int j = 0; j < r.n; j++) r.adv[j] = random_normal(&rng);
    for (int p = 0; p < B; p++) r.keep[p] = 1;
    TrainConfig tc = {1e-6f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, 0.0f, 0.0f, 8};
    float norm; int n_trained;
    train_on_rollouts(&m, NULL, &r, &tc, &norm, &n_trained);
    double t3 = now_seconds();
    printf("{\"gen_s\": %.3f, \"score_s\": %.4f, \"train_s\": %.3f, \"step_s\": %.3f, \"gen_tok_s\": %.1f, "
           "\"train_tok_s\": %.1f}\n",
           t1 - t0, t2 - t1, t3 - t2, t3 - t0, (double)r.n * N / (t1 - t0), (double)r.n * (P + N) / (t3 - t2));
    tokenizer_free(&tok); free(probs); rollouts_free(&r); model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "gen")) return bench_generate(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "empo")) return bench_empo_step(argc, argv);
    if (argc != 10) FATAL("usage: bench_cpu V C L NH NKV I B T iters");
    ModelConfig c = bench_config(argv + 1);
    int B = atoi(argv[7]), T = atoi(argv[8]), iters = atoi(argv[9]);
    if (B <= 0 || T <= 0 || iters <= 0) FATAL("bad benchmark config");
    Model m;
    model_init_random(&m, &c, 1);
    int *in = (int *)xmalloc((size_t)B * T * sizeof(int)), *tg = (int *)xmalloc((size_t)B * T * sizeof(int));
    uint64_t rng = 7;
    for (int i = 0; i < B * T; i++) { in[i] = random_u32(&rng) % c.V; tg[i] = random_u32(&rng) % c.V; }
    double best_fb = 1e30, best_fwd = 1e30;
    for (int it = 0; it < iters + 1; it++) {   // the first iteration warms up (allocations)
        double t0 = now_seconds();
        model_forward(&m, in, tg, NULL, B, T);
        double t1 = now_seconds();
        model_zero_grad(&m);
        model_backward(&m);
        model_update(&m, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f);
        double t2 = now_seconds();
        if (it > 0) { if (t2 - t0 < best_fb) best_fb = t2 - t0; if (t1 - t0 < best_fwd) best_fwd = t1 - t0; }
    }
    printf("{\"params\": %zu, \"fwd_s\": %.4f, \"step_s\": %.4f, \"tok_s\": %.1f, \"loss\": %.4f}\n",
           m.num_parameters, best_fwd, best_fb, B * T / best_fb, m.mean_loss);
    free(in); free(tg); model_free(&m);
    return 0;
}
