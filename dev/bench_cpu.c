// dev/bench_cpu.c: forward+backward(+AdamW) tokens/s of train_empo.c on a mid-size Qwen2 config.
// Run through dev/bench_cpu.py (make bench), which times PyTorch eager on the same config too.
// usage: bench_cpu V C L NH NKV I B T iters             (training step)
//        bench_cpu gen V C L NH NKV I B P N iters        (decode: B sequences, P prompt tokens, N new)
//        bench_cpu empo V C L NH NKV I B G P N           (one EMPO step: B prompts x G responses)
//        bench_cpu roofline V C L NH NKV I B T iters     (FMA peak, memory bandwidth, sgemm at the model's shapes)
//        bench_cpu ops V C L NH NKV I B T iters          (the forward's and backward's time, op by op)
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
    SamplerConfig sc = {0.0f, 1.0f, 0, N, 0, 1, 1};   // no token statistics: HF generate has none either
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
    SamplerConfig sc = {0.9f, 1.0f, 0, N, N, 7, 1};   // as EMPO's rollouts: no token statistics
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

// The clock of the roofline and op timings: wall time, or with BENCH_CPU_TIME=1 this process's CPU
// time (for A/B comparisons on a shared machine at 1 thread, where wall time counts other jobs' turns).
static double bench_clock(void) {
    static int cpu = -1;
    if (cpu < 0) cpu = getenv("BENCH_CPU_TIME") && atoi(getenv("BENCH_CPU_TIME"));
    if (!cpu) return now_seconds();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ---- the roofline: what this machine can do at most, against which every other figure is read

// fp32 FMA peak of one thread: 12 independent accumulators in registers (more than FMA latency x
// FMA ports on current x86 cores), no loads, so the loop runs at the FMA units' throughput.
#define PEAK_LOOP(V, W)                                                                              \
    static double peak_loop_##W(long iters) {                                                        \
        V m, a, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11;                                    \
        for (int i = 0; i < W; i++) { m[i] = 0.999999f; a[i] = 1e-7f; }                              \
        x0 = a; x1 = x0 + a; x2 = x1 + a; x3 = x2 + a; x4 = x3 + a; x5 = x4 + a;                     \
        x6 = x5 + a; x7 = x6 + a; x8 = x7 + a; x9 = x8 + a; x10 = x9 + a; x11 = x10 + a;             \
        __asm__("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5));                    \
        __asm__("" : "+v"(x6), "+v"(x7), "+v"(x8), "+v"(x9), "+v"(x10), "+v"(x11));                  \
        for (long it = 0; it < iters; it++) {                                                        \
            x0 = x0 * m + a; x1 = x1 * m + a; x2 = x2 * m + a; x3 = x3 * m + a;                      \
            x4 = x4 * m + a; x5 = x5 * m + a; x6 = x6 * m + a; x7 = x7 * m + a;                      \
            x8 = x8 * m + a; x9 = x9 * m + a; x10 = x10 * m + a; x11 = x11 * m + a;                  \
        }                                                                                            \
        V s = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11;                           \
        return s[0];                                                                                 \
    }
typedef float peak_v8 __attribute__((vector_size(32)));
PEAK_LOOP(peak_v8, 8)
#ifdef __AVX512F__
typedef float peak_v16 __attribute__((vector_size(64)));
PEAK_LOOP(peak_v16, 16)
#endif

// GFLOP/s of `threads` threads each running the loop (2 flops per FMA lane), best of 5
static double peak_gflops(int width, int threads) {
    long iters = 20000000 / width;
    double best = 1e30, sink = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = bench_clock();
        #pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
#ifdef __AVX512F__
            sink += width == 16 ? peak_loop_16(iters) : peak_loop_8(iters);
#else
            sink += peak_loop_8(iters);
#endif
        }
        double dt = bench_clock() - t0;
        if (dt < best) best = dt;
    }
    if (sink == 12345.0) printf(" ");
    return 2.0 * 12 * width * (double)iters * threads / best / 1e9;
}

// memory bandwidth, GB/s, best of 5: a sum over 512 MiB (read), and a copy of 256 MiB (read + write)
static void bandwidth(int threads, double *read_gbs, double *copy_gbs) {
    size_t n = (size_t)128 << 20;
    float *x = (float *)xmalloc(n * sizeof(float)), *y = (float *)xmalloc(n / 2 * sizeof(float));
    #pragma omp parallel for num_threads(threads)
    for (size_t i = 0; i < n; i++) x[i] = (float)(i & 1023);
    #pragma omp parallel for num_threads(threads)
    for (size_t i = 0; i < n / 2; i++) y[i] = 0.0f;
    double best_r = 1e30, best_c = 1e30, sink = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = bench_clock(), s = 0.0;
        #pragma omp parallel num_threads(threads) reduction(+ : s)
        {
            float acc[16] = {0};
            #pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 16)
                for (int l = 0; l < 16; l++) acc[l] += x[i + l];
            for (int l = 0; l < 16; l++) s += acc[l];
        }
        double t1 = bench_clock();
        sink += s;
        #pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t i = 0; i < n / 2; i++) y[i] = x[i];
        double t2 = bench_clock();
        if (t1 - t0 < best_r) best_r = t1 - t0;
        if (t2 - t1 < best_c) best_c = t2 - t1;
    }
    if (sink == 12345.0) printf(" ");
    *read_gbs = n * sizeof(float) / best_r / 1e9;
    *copy_gbs = n * sizeof(float) / best_c / 1e9;   // n/2 floats read + n/2 written
    free(x); free(y);
}

// sgemm at the benchmark model's shapes: best of `iters` GFLOP/s per shape, as JSON
static int bench_roofline(int argc, char **argv) {
    if (argc != 11) FATAL("usage: bench_cpu roofline V C L NH NKV I B T iters");
    ModelConfig c = bench_config(argv + 2);
    int B = atoi(argv[8]), T = atoi(argv[9]), iters = atoi(argv[10]), nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    int N = B * T, QKV = cfg_qkv_dim(&c), QD = c.NH * c.HD;
    printf("{\"threads\": %d, \"peak8_1\": %.1f, \"peak8_all\": %.1f", nth, peak_gflops(8, 1), peak_gflops(8, nth));
#ifdef __AVX512F__
    printf(", \"peak16_1\": %.1f, \"peak16_all\": %.1f", peak_gflops(16, 1), peak_gflops(16, nth));
#endif
    double rd, cp;
    bandwidth(1, &rd, &cp);
    printf(", \"bw_read_1\": %.1f, \"bw_copy_1\": %.1f", rd, cp);
    bandwidth(nth, &rd, &cp);
    printf(", \"bw_read_all\": %.1f, \"bw_copy_all\": %.1f, \"gemm\": [", rd, cp);
    // name, M, N, K, and how A and B are read (0: forward x @ W^T, 1: d_input dy @ W, 2: d_weight dy^T @ x)
    struct { const char *name; int M, N, K, kind; } shapes[] = {
        {"qkv fwd", N, QKV, c.C, 0}, {"attn proj fwd", N, c.C, QD, 0}, {"mlp up fwd", N, 2 * c.I, c.C, 0},
        {"mlp down fwd", N, c.C, c.I, 0}, {"lm head fwd", N, c.V, c.C, 0}, {"lm head d_input", N, c.C, c.V, 1},
        {"lm head d_weight", c.V, c.C, N, 2}, {"mlp up d_weight", 2 * c.I, c.C, N, 2},
        {"decode b56 mlp up", 56, 2 * c.I, c.C, 3}, {"decode b56 lm head", 56, c.V, c.C, 3},
    };
    int ns = (int)(sizeof shapes / sizeof shapes[0]);
    for (int s = 0; s < ns; s++) {
        int M = shapes[s].M, Nn = shapes[s].N, K = shapes[s].K, kind = shapes[s].kind;
        // operands: kind 0/3: A (M, K), W (N, K); kind 1: A (M, K), W (K, N); kind 2: dy (K, M), x (K, N)
        float *A = (float *)xmalloc((size_t)M * K * sizeof(float));
        float *W = (float *)xmalloc((size_t)Nn * K * sizeof(float));
        float *Cm = (float *)xmalloc((size_t)M * Nn * sizeof(float));
        uint64_t rng = 11;
        for (size_t i = 0; i < (size_t)M * K; i++) A[i] = random_f32(&rng) - 0.5f;
        for (size_t i = 0; i < (size_t)Nn * K; i++) W[i] = random_f32(&rng) - 0.5f;
        memset(Cm, 0, (size_t)M * Nn * sizeof(float));
        float *packed = kind == 3 ? pack_panels(W, Nn, K) : NULL;
        double best = 1e30;
        for (int it = 0; it < iters + 1; it++) {
            double t0 = bench_clock();
            if (kind == 0) sgemm(M, Nn, K, A, K, 1, W, 1, K, Cm, Nn, 0, NULL);
            else if (kind == 1) sgemm(M, Nn, K, A, K, 1, W, Nn, 1, Cm, Nn, 1, NULL);
            else if (kind == 2) sgemm(M, Nn, K, A, 1, M, W, Nn, 1, Cm, Nn, 1, NULL);
            else sgemm(M, Nn, K, A, K, 1, W, 1, K, Cm, Nn, 0, packed);
            double dt = bench_clock() - t0;
            if (it > 0 && dt < best) best = dt;
        }
        printf("%s{\"name\": \"%s\", \"M\": %d, \"N\": %d, \"K\": %d, \"gflops\": %.1f}", s ? ", " : "",
               shapes[s].name, M, Nn, K, 2.0 * M * Nn * K / best / 1e9);
        free(A); free(W); free(Cm); free(packed);
    }
    printf("]}\n");
    return 0;
}

// ---- where the forward's time goes: model_forward's ops one by one (the same calls, in the same
// order, each timed; keep in step with train_empo.c's model_forward), summed over the layers, as JSON
static int bench_ops(int argc, char **argv) {
    if (argc != 11) FATAL("usage: bench_cpu ops V C L NH NKV I B T iters");
    ModelConfig c = bench_config(argv + 2);
    int B = atoi(argv[8]), T = atoi(argv[9]), iters = atoi(argv[10]);
    Model mm;
    Model *m = &mm;
    model_init_random(m, &c, 1);
    int N = B * T;
    int *in = (int *)xmalloc((size_t)N * sizeof(int)), *tg = (int *)xmalloc((size_t)N * sizeof(int));
    uint64_t rng = 7;
    for (int i = 0; i < N; i++) { in[i] = random_u32(&rng) % c.V; tg[i] = random_u32(&rng) % c.V; }
    model_forward(m, in, tg, NULL, B, T);   // warm-up: allocations
    enum { OP_EMB, OP_RMS, OP_QKV, OP_ROPE, OP_ATT, OP_PROJ, OP_RES, OP_UP, OP_SWI, OP_DOWN, OP_LM, OP_LOGP, NOPS };
    const char *names[NOPS] = {"embedding", "rmsnorm", "qkv matmul", "rope", "attention", "attn proj matmul",
                               "residual", "mlp up matmul", "swiglu", "mlp down matmul", "lm head matmul",
                               "log-softmax"};
    double best[NOPS], tot_best = 1e30;
    for (int o = 0; o < NOPS; o++) best[o] = 1e30;
    int C = c.C, L = c.L, NH = c.NH, NKV = c.NKV, HD = c.HD, I = c.I, V = c.V, QKV = cfg_qkv_dim(&c);
    ParameterTensors *p = &m->params;
    ActivationTensors *a = &m->acts;
    for (int it = 0; it < iters; it++) {
        double t[NOPS] = {0}, t0 = bench_clock(), tt = t0, t1;
#define TICK(op) (t1 = bench_clock(), t[op] += t1 - tt, tt = t1)
        embedding_forward(a->encoded, in, p->wte, N, C); TICK(OP_EMB);
        for (int l = 0; l < L; l++) {
            LayerActs la = layer_acts(m, l);
            float *tmp = m->scratch.dln;
            rmsnorm_forward(la.ln1, la.ln1_rstd, la.resid, p->ln1w + (size_t)l * C, N, C, c.rms_eps); TICK(OP_RMS);
            matmul_forward(la.qkv, la.ln1, p->qkvw + (size_t)l * QKV * C, p->qkvb + (size_t)l * QKV, N, C, QKV);
            TICK(OP_QKV);
            rope_apply(la.qkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, +1); TICK(OP_ROPE);
            attention_forward(la.atty, la.att, la.qkv, B, T, NH, NKV, HD); TICK(OP_ATT);
            matmul_forward(tmp, la.atty, p->attprojw + (size_t)l * C * NH * HD, NULL, N, NH * HD, C); TICK(OP_PROJ);
            residual_forward(la.resid2, la.resid, tmp, (size_t)N * C); TICK(OP_RES);
            rmsnorm_forward(la.ln2, la.ln2_rstd, la.resid2, p->ln2w + (size_t)l * C, N, C, c.rms_eps); TICK(OP_RMS);
            matmul_forward(la.fch, la.ln2, p->fcw + (size_t)l * 2 * I * C, NULL, N, C, 2 * I); TICK(OP_UP);
            swiglu_forward(la.fch_swiglu, la.fch, N, I); TICK(OP_SWI);
            matmul_forward(tmp, la.fch_swiglu, p->fcprojw + (size_t)l * C * I, NULL, N, I, C); TICK(OP_DOWN);
            residual_forward(la.resid3, la.resid2, tmp, (size_t)N * C); TICK(OP_RES);
        }
        rmsnorm_forward(a->lnf, a->lnf_rstd, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, N, C, c.rms_eps);
        TICK(OP_RMS);
        matmul_forward(a->logits, a->lnf, p->lmw, NULL, N, C, V); TICK(OP_LM);
        logprob_forward(a->logp, a->lse, a->logits, tg, NULL, N, V); TICK(OP_LOGP);
#undef TICK
        for (int o = 0; o < NOPS; o++) if (t[o] < best[o]) best[o] = t[o];
        if (tt - t0 < tot_best) tot_best = tt - t0;
    }
    // the backward, op by op (keep in step with model_backward); it needs the forward just before
    enum { B_LOGP, B_LM, B_RMS, B_DOWN, B_SWI, B_UP, B_PROJ, B_ATT, B_ROPE, B_QKV, B_EMB, B_ZERO, NBOPS };
    const char *bnames[NBOPS] = {"log-softmax", "lm head matmul", "rmsnorm", "mlp down matmul", "swiglu",
                                 "mlp up matmul", "attn proj matmul", "attention", "rope", "qkv matmul",
                                 "embedding", "memset"};
    double bbest[NBOPS], btot_best = 1e30;
    for (int o = 0; o < NBOPS; o++) bbest[o] = 1e30;
    model_forward(m, in, tg, NULL, B, T);
    model_zero_grad(m);
    model_backward(m);   // warm-up: the gradient buffers
    ParameterTensors *g = &m->grads;
    GradScratch *s = &m->scratch;
    for (int it = 0; it < iters; it++) {
        model_forward(m, in, tg, NULL, B, T);
        double t[NBOPS] = {0}, t0 = bench_clock(), tt = t0, t1;
#define TICK(op) (t1 = bench_clock(), t[op] += t1 - tt, tt = t1)
        logprob_backward(a->logits, a->lse, m->dlogp, m->targets, NULL, N, V); TICK(B_LOGP);
        memset(s->dln, 0, (size_t)N * C * sizeof(float)); TICK(B_ZERO);
        matmul_backward(s->dln, g->lmw, NULL, a->logits, a->lnf, p->lmw, N, C, V); TICK(B_LM);
        memset(s->dresidual, 0, (size_t)N * C * sizeof(float)); TICK(B_ZERO);
        rmsnorm_backward(s->dresidual, g->lnfw, s->dln, a->resid3 + (size_t)(L - 1) * N * C, p->lnfw, a->lnf_rstd,
                         N, C); TICK(B_RMS);
        for (int l = L - 1; l >= 0; l--) {
            LayerActs la = layer_acts(m, l);
            memset(s->dswiglu, 0, (size_t)N * I * sizeof(float)); TICK(B_ZERO);
            matmul_backward(s->dswiglu, g->fcprojw + (size_t)l * C * I, NULL, s->dresidual, la.fch_swiglu,
                            p->fcprojw + (size_t)l * C * I, N, I, C); TICK(B_DOWN);
            swiglu_backward(s->dfch, s->dswiglu, la.fch, N, I); TICK(B_SWI);
            memset(s->dln, 0, (size_t)N * C * sizeof(float)); TICK(B_ZERO);
            matmul_backward(s->dln, g->fcw + (size_t)l * 2 * I * C, NULL, s->dfch, la.ln2,
                            p->fcw + (size_t)l * 2 * I * C, N, C, 2 * I); TICK(B_UP);
            rmsnorm_backward(s->dresidual, g->ln2w + (size_t)l * C, s->dln, la.resid2, p->ln2w + (size_t)l * C,
                             la.ln2_rstd, N, C); TICK(B_RMS);
            memset(s->datty, 0, (size_t)N * NH * HD * sizeof(float)); TICK(B_ZERO);
            matmul_backward(s->datty, g->attprojw + (size_t)l * C * NH * HD, NULL, s->dresidual, la.atty,
                            p->attprojw + (size_t)l * C * NH * HD, N, NH * HD, C); TICK(B_PROJ);
            memset(s->dqkv, 0, (size_t)N * QKV * sizeof(float)); TICK(B_ZERO);
            attention_backward(s->dqkv, s->datty, la.qkv, la.att, B, T, NH, NKV, HD); TICK(B_ATT);
            rope_apply(s->dqkv, m->pos, m->rope_cos, m->rope_sin, N, NH, NKV, HD, -1); TICK(B_ROPE);
            memset(s->dln, 0, (size_t)N * C * sizeof(float)); TICK(B_ZERO);
            matmul_backward(s->dln, g->qkvw + (size_t)l * QKV * C, g->qkvb + (size_t)l * QKV, s->dqkv, la.ln1,
                            p->qkvw + (size_t)l * QKV * C, N, C, QKV); TICK(B_QKV);
            rmsnorm_backward(s->dresidual, g->ln1w + (size_t)l * C, s->dln, la.resid, p->ln1w + (size_t)l * C,
                             la.ln1_rstd, N, C); TICK(B_RMS);
        }
        embedding_backward(g->wte, s->dresidual, m->inputs, N, C); TICK(B_EMB);
#undef TICK
        for (int o = 0; o < NBOPS; o++) if (t[o] < bbest[o]) bbest[o] = t[o];
        if (tt - t0 < btot_best) btot_best = tt - t0;
    }
    printf("{\"total_s\": %.4f, \"ops\": [", tot_best);
    for (int o = 0; o < NOPS; o++) printf("%s[\"%s\", %.5f]", o ? ", " : "", names[o], best[o]);
    printf("], \"bwd_total_s\": %.4f, \"bwd_ops\": [", btot_best);
    for (int o = 0; o < NBOPS; o++) printf("%s[\"%s\", %.5f]", o ? ", " : "", bnames[o], bbest[o]);
    printf("]}\n");
    free(in); free(tg); model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "roofline")) return bench_roofline(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "ops")) return bench_ops(argc, argv);
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
        double t0 = bench_clock();
        model_forward(&m, in, tg, NULL, B, T);
        double t1 = bench_clock();
        model_zero_grad(&m);
        model_backward(&m);
        model_update(&m, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f);
        double t2 = bench_clock();
        if (it > 0) { if (t2 - t0 < best_fb) best_fb = t2 - t0; if (t1 - t0 < best_fwd) best_fwd = t1 - t0; }
    }
    printf("{\"params\": %zu, \"fwd_s\": %.4f, \"step_s\": %.4f, \"tok_s\": %.1f, \"loss\": %.4f}\n",
           m.num_parameters, best_fwd, best_fb, B * T / best_fb, m.mean_loss);
    free(in); free(tg); model_free(&m);
    return 0;
}
