// bench_verifier.c: judged pairs per second for a verifier of the TIGER-Lab/general-verifier
// shape (Qwen2.5-Math-1.5B: V=151936, C=1536, L=28, 12/2 heads, I=8960, tied), random weights,
// on the CPU, and the judge's cost per EMPO step at G=12 (the paper's natural-reasoning setting).
//
// The pairs are those one G=12 group makes: one natural_reasoning-style question, 12 short answers,
// the default judge template, tokenized with the real Qwen2 tokenizer when ../shared has it
// (byte-level token counts otherwise would overstate the cost ~4x, so then synthetic ids with
// Qwen-like lengths are used instead). All pairs of the group go through model_next_logprobs in
// one batched pass, sharing the question's prefix, exactly as training does.
//
//   make bench_verifier && OMP_NUM_THREADS=2 ./bench_verifier [n_pairs (default 12)]
//
// Needs ~6.5 GB of RAM. Reports: tokens computed, seconds, pairs/s, and projections.
#define TESTING
#include "../train_empo.c"

static const char *QUESTION =
    "A solid sphere and a hollow sphere of the same mass and radius are released from rest at the top of the same "
    "incline and roll without slipping. Which one reaches the bottom first, and why does the distribution of mass "
    "determine the answer? Explain in terms of the rotational kinetic energy each sphere must store.";
static const char *ANSWERS[12] = {
    "The solid sphere reaches the bottom first.",
    "The solid sphere, because its smaller moment of inertia leaves more energy for translation.",
    "Solid sphere",
    "The hollow sphere arrives first.",
    "Both arrive at the same time.",
    "The solid one wins since less of its kinetic energy goes into rotation.",
    "The solid sphere, as I = 2/5 m r^2 is smaller than 2/3 m r^2.",
    "The hollow sphere, because it has more rotational inertia.",
    "The solid sphere is faster down the incline.",
    "They tie because mass and radius are equal.",
    "The solid sphere gets to the bottom first.",
    "Solid sphere, due to lower moment of inertia."};

int main(int argc, char **argv) {
    int n_pairs = argc > 1 ? atoi(argv[1]) : 12;
    if (n_pairs < 1 || n_pairs > 132) { fprintf(stderr, "usage: bench_verifier [n_pairs 1..132]\n"); return 1; }
    ModelConfig c = {0};
    c.V = 151936; c.C = 1536; c.L = 28; c.NH = 12; c.NKV = 2; c.HD = 128; c.I = 8960; c.maxT = 4096;
    c.tied = 1; c.qkv_bias = 1; c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    double t0 = now_seconds();
    Checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = c;
    ck.num_params = count_params(&c);
    ck.params = (float *)xmalloc(ck.num_params * sizeof(float));
    #pragma omp parallel for schedule(static)
    // cheap uniform weights: speed does not depend on them
    for (long blk = 0; blk < (long)((ck.num_params + 65535) / 65536); blk++) {
        uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(blk + 1);
        size_t e = (size_t)(blk + 1) * 65536 < ck.num_params ? (size_t)(blk + 1) * 65536 : ck.num_params;
        for (size_t i = (size_t)blk * 65536; i < e; i++) ck.params[i] = 0.04f * (random_f32(&s) - 0.5f);
    }
    Model m;
    model_init_from_checkpoint(&m, &ck);
    double t_init = now_seconds() - t0;

    // the G=12 group's pairs: (a_i, a_j) for i < j, then the reverse direction
    Tokenizer tok;
    char err[512];
    int real_tok = tokenizer_load_json(&tok, "../shared/qwen2_tokenizer/tokenizer.json", err, sizeof err) == 0;
    int **ids = (int **)xmalloc(132 * sizeof(int *)), *lens = (int *)xmalloc(132 * sizeof(int)), n = 0;
    for (int dir = 0; dir < 2 && n < n_pairs; dir++)
        for (int i = 0; i < 12 && n < n_pairs; i++)
            for (int j = i + 1; j < 12 && n < n_pairs; j++) {
                const char *a = ANSWERS[dir ? j : i], *b = ANSWERS[dir ? i : j];
                if (real_tok) {
                    char *p = ff_render_judge_prompt(FF_DEFAULT_JUDGE_TEMPLATE, QUESTION, a, b);
                    lens[n] = tokenizer_encode(&tok, p, strlen(p), 1, &ids[n]);
                    free(p);
                } else {   // Qwen-like lengths: 85 shared tokens, then ~2 x 12 answer tokens and 75 of instructions
                    int own = 75 + 2 * (8 + (int)((i * 7 + j * 3) % 10));
                    lens[n] = 85 + own;
                    ids[n] = (int *)xmalloc(lens[n] * sizeof(int));
                    for (int t = 0; t < lens[n]; t++) ids[n][t] = t < 85 ? 1000 + t : 2000 + (n * 131 + t * 17) % 50000;
                }
                n++;
            }
    long total = 0;
    for (int k = 0; k < n; k++) total += lens[k];
    float *lyn = (float *)xmalloc(2 * n * sizeof(float));
    long computed = 0, shared = 0;
    double t1 = now_seconds();
    int yes_id = real_tok ? first_token(&tok, " Yes") : 7414, no_id = real_tok ? first_token(&tok, " No") : 2308;
    int cand[2] = {yes_id, no_id};
    model_next_logprobs(&m, (const int *const *)ids, lens, n, cand, 2, 256, 2048, lyn, &computed, &shared);
    double dt = now_seconds() - t1;
    double pps = n / dt;
    // weights x tokens + LM head rows
    double flops = 2.0 * (m.num_parameters - (size_t)c.V * c.C) * computed + 2.0 * (size_t)c.V * c.C * n;
    printf("bench_verifier: general-verifier shape (%.2fB params, fp32), %d OpenMP threads, %s token counts\n",
           m.num_parameters / 1e9,
           threads, real_tok ? "real Qwen2 tokenizer" : "synthetic (no ../shared tokenizer)");
    printf("  init %.1f s | %d pairs of one question: %ld prompt tokens, %ld computed, %ld from the shared prefix "
           "(mean prompt %.0f tokens)\n",
           t_init, n, total, computed, shared, (double)total / n);
    printf("  judged in %.2f s: %.3f pairs/s, %.0f tokens/s, ~%.1f GFLOP/s (\" Yes\"/\" No\" = ids %d/%d; log P %.3f "
           "/ %.3f)\n", dt, pps,
           computed / dt, flops / dt * 1e-9, yes_id, no_id, lyn[0], lyn[1]);
    double per_q2 = 132 / pps, per_q1 = 66 / pps;
    printf("  EMPO at G=12: at most 66 distinct pairs per question (132 judgments both ways):\n");
    printf("    per question: %.1f s bidirectional, %.1f s one-way (worst case: all 12 answers distinct)\n", per_q2,
           per_q1);
    printf("    per step of 112 questions: %.2f h bidirectional, %.2f h one-way (identical answers are free: fewer "
           "distinct answers, fewer pairs)\n",
           per_q2 * 112 / 3600, per_q1 * 112 / 3600);
    for (int k = 0; k < n; k++) free(ids[k]);
    free(ids); free(lens); free(lyn);
    if (real_tok) tokenizer_free(&tok);
    model_free(&m);
    return 0;
}
