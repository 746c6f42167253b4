// dev/bench_cpu.c: forward+backward(+AdamW) tokens/s of train_empo.c on a mid-size Qwen2 config.
// Run through dev/bench_cpu.py (make bench), which times PyTorch eager on the same config too.
// usage: bench_cpu V C L NH NKV I B T iters             (training step)
//        bench_cpu gen V C L NH NKV I B P N iters        (decode: B sequences, P prompt tokens, N new)
#define TESTING
#include "../train_empo.c"

static int bench_generate(int argc, char **argv) {
    if (argc != 12) FATAL("usage: bench_cpu gen V C L NH NKV I B P N iters");
    ModelConfig c = {0};
    c.V = atoi(argv[2]); c.C = atoi(argv[3]); c.L = atoi(argv[4]); c.NH = atoi(argv[5]); c.NKV = atoi(argv[6]);
    c.I = atoi(argv[7]); c.HD = c.C / c.NH; c.maxT = 4096; c.tied = 0; c.qkv_bias = 1;
    c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    int B = atoi(argv[8]), P = atoi(argv[9]), N = atoi(argv[10]), iters = atoi(argv[11]);
    if (cfg_invalid(&c) || B <= 0 || P <= 0 || N <= 0 || iters <= 0) FATAL("bad benchmark config");
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

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "gen")) return bench_generate(argc, argv);
    if (argc != 10) FATAL("usage: bench_cpu V C L NH NKV I B T iters");
    ModelConfig c = {0};
    c.V = atoi(argv[1]); c.C = atoi(argv[2]); c.L = atoi(argv[3]); c.NH = atoi(argv[4]); c.NKV = atoi(argv[5]);
    c.I = atoi(argv[6]); c.HD = c.C / c.NH; c.maxT = 4096; c.tied = 0; c.qkv_bias = 1;
    c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    int B = atoi(argv[7]), T = atoi(argv[8]), iters = atoi(argv[9]);
    if (cfg_invalid(&c) || B <= 0 || T <= 0 || iters <= 0) FATAL("bad benchmark config");
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
