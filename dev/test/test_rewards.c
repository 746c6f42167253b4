// test_rewards.c: every label-free reward (doc/rewards.md).
//   - the token statistics generate() computes for -r entropy (RENT) and -r certainty (Intuitor)
//     against PyTorch (dev/make_reward_fixture.py, from transformers' logits of the fixture model),
//     within 1e-5 relative, for responses of several lengths, greedy and with a tempered sampler (the
//     statistics are of the untempered distribution, so they must not move);
//   - --cluster exact (the EMPO reference: string equality after stripping \text{}, \boxed{}) against
//     --cluster semantic on a table of answer groups where they differ (and where they agree);
//   - the rewards as rollouts_score computes them, from the same rollouts;
//   - one training step end to end for each new reward (and empo with --cluster exact);
//   - the plot: ticks on both axes, gridlines, the legend outside the plot area, the SFT loss panel.
// Ends with "rewards: N passed, N failed".
#define TESTING
#include "../../train_empo.c"
#include "test_util.h"

static int rel_ok(double got, double want, double tol) { return fabs(got - want) <= tol * fmax(fabs(want), 1e-12); }

// ----------------------------------------------------------------------------
// token entropy and self-certainty vs PyTorch

static void test_token_stats(void) {
    Model m;
    char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_tied.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    size_t len, glen;
    char *text = read_whole_file("dev/fixtures/reward_stats.json", &len);
    char *gtext = read_whole_file("dev/fixtures/qwen2_tied_greedy.json", &glen);
    JDoc d, gd;
    if (!text || !gtext || json_parse(&d, text, len) != 0 || json_parse(&gd, gtext, glen) != 0) {
        check(0, "reward fixture: cannot read/parse dev/fixtures/reward_stats.json");
        free(text); free(gtext); model_free(&m);
        return;
    }
    m.n_eos = 1;
    m.eos[0] = (int)json_num(&gd, json_get(&gd, 0, "eos"), -1);
    int resp = json_get(&d, 0, "responses"), n = json_len(&d, resp);
    int *plen = (int *)xmalloc((size_t)n * sizeof(int)), **prompts = (int **)xmalloc((size_t)n * sizeof(int *));
    for (int i = 0; i < n; i++) {
        int arr = json_get(&d, json_at(&d, resp, i), "prompt");
        plen[i] = json_len(&d, arr);
        prompts[i] = (int *)xmalloc((size_t)plen[i] * sizeof(int));
        for (int t = 0; t < plen[i]; t++) prompts[i][t] = (int)json_num(&d, json_at(&d, arr, t), -1);
    }
    // max_new cuts the responses at several lengths; G = 2 also runs the shared first-token row
    static const int max_news[] = {1, 4, 13, 20};
    // greedy; then T = 0.7 with top-k 1 (the same tokens, through a tempered sampler)
    static const float temps[] = {0.0f, 0.7f};
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 4; k++) {
            SamplerConfig sc = {temps[s], 1.0f, s ? 1 : 0, max_news[k], 0, 7, 0};
            Generation gen;
            memset(&gen, 0, sizeof gen);
            int G = 2;
            generate(&m, (const int *const *)prompts, plen, n, G, &sc, &gen, 0);
            double worst = 0;
            int ok = gen.mean_entropy && gen.mean_certainty, lens[8] = {0};
            for (int j = 0; ok && j < gen.n; j++) {
                int r = json_at(&d, resp, j / G), toks = json_get(&d, r, "tokens");
                int L = gen.len[j];
                lens[(j / G) % 8] = L;
                ok &= L >= 1 && L <= json_len(&d, toks);
                for (int t = 0; ok && t < L; t++) ok &= gen.tokens[j][t] == (int)json_num(&d, json_at(&d, toks, t), -1);
                double he = 0, hc = 0;
                for (int t = 0; ok && t < L; t++) {
                    he += json_num(&d, json_at(&d, json_get(&d, r, "entropy"), t), 0);
                    hc += json_num(&d, json_at(&d, json_get(&d, r, "certainty"), t), 0);
                }
                he /= L;
                hc /= L;
                ok &= rel_ok(gen.mean_entropy[j], he, 1e-5) && rel_ok(gen.mean_certainty[j], hc, 1e-5);
                worst = fmax(worst, fmax(fabs(gen.mean_entropy[j] - he) / he, fabs(gen.mean_certainty[j] - hc) / hc));
            }
            check(ok, "token entropy and self-certainty (T=1) vs PyTorch, %s, max_new %2d: %d responses of lengths "
                  "%d %d %d %d, max relative error %.1e", s ? "sampler at T=0.7, top-k 1" : "greedy", max_news[k],
                  gen.n, lens[0], lens[1], lens[2], lens[3], worst);
            generation_free(&gen);
        }
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts); free(plen); json_free(&d); json_free(&gd); free(text); free(gtext); model_free(&m);
}

// ----------------------------------------------------------------------------
// --cluster exact vs --cluster semantic

static void expect_norm(const char *in, const char *want) {
    char out[EXACT_CAP];
    exact_normalize(in, out, sizeof out);
    check(!strcmp(out, want), "exact normalization %-26s -> \"%s\"", in, out);
}

typedef struct {
    const char *why;
    const char *answers[6];   // NULL-terminated; "" = an empty answer
    int sem_clusters, exact_clusters, missing;
} ClusterCase;

static void test_exact_cluster(void) {
    expect_norm("\\text{5}", "5");
    expect_norm("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}");
    expect_norm("  7 ", "7");
    expect_norm("\\text{cm}^2 and \\text{m}", "cm^2 and m");
    expect_norm("\\boxed{a}+\\boxed{b}", "a}+\\boxed{b");   // the reference's greedy (.*): line's last }
    expect_norm("\\text{", "\\text{");                        // no closing brace: left alone
    static const ClusterCase cases[] = {
        {"a fraction and its decimal", {"\\frac{1}{2}", "0.5", NULL}, 1, 2, 0},
        {"three surface forms of 3/10", {"6/20", "\\frac{3}{10}", "0.3", "3/10", NULL}, 1, 4, 0},
        {"\\text{} is stripped in both", {"\\text{5}", "5", NULL}, 1, 1, 0},
        {"\\text{} stripped, then strings", {"\\text{5 apples}", "5", NULL}, 2, 2, 0},
        {"spacing inside differs", {"x + 1", "x+1", NULL}, 1, 2, 0},
        {"empty answers never equal", {"", "", "3", NULL}, 1, 1, 2},
        {"identical strings", {"15/8", "15/8", "\\frac{15}{8}", NULL}, 1, 2, 0},
    };
    Scorer sem = scorer_math();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const ClusterCase *k = &cases[c];
        char *ans[6];
        int G = 0;
        for (; k->answers[G]; G++) ans[G] = k->answers[G][0] ? xstrdup(k->answers[G]) : NULL;
        SemanticGroup gs, gx;
        const char *q = "";
        math_cluster(&sem, ans, &q, 1, G, &gs);
        exact_cluster(&sem, ans, &q, 1, G, &gx);
        double H = 0;   // the exact clustering's entropy, by hand: missing answers are singletons
        for (int i = 0; i < gx.n_clusters; i++) H -= (double)gx.size[i] / G * log((double)gx.size[i] / G);
        H += gx.n_missing * log((double)G) / G;
        int ok = gs.n_clusters == k->sem_clusters && gx.n_clusters == k->exact_clusters &&
                 gs.n_missing == k->missing && gx.n_missing == k->missing && fabs(gx.entropy - H) < 1e-5;
        for (int i = 0; i < G; i++)
            ok &= ans[i] ? gx.reward[i] == (float)gx.size[gx.cluster[i]] / G : gx.reward[i] == 0;
        check(ok, "cluster %-32s semantic %d (want %d), exact %d (want %d), missing %d/%d, exact H %.3f",
              k->why, gs.n_clusters, k->sem_clusters, gx.n_clusters, k->exact_clusters, gs.n_missing, gx.n_missing,
              gx.entropy);
        for (int i = 0; i < G; i++) free(ans[i]);
    }
}

// ----------------------------------------------------------------------------
// rollouts_score: every reward from one set of rollouts

static void test_rollout_rewards(void) {
    Model m;
    Tokenizer tok;
    char err[512];
    if (model_load(&m, DEMO_DIR "/starter.bin", err, sizeof err) != 0) { check(0, "%s", err); return; }
    load_tokenizer(&tok, &m, DEMO_DIR "/starter.bin");
    Problem p1, p2;
    memset(&p1, 0, sizeof p1);
    memset(&p2, 0, sizeof p2);
    p1.problem = (char *)"What is 3/4 * 2/5?";
    p1.answer = (char *)"3/10";
    p2.problem = (char *)"What is 1/2 * 2/3?";
    p2.answer = (char *)"1/3";
    const Problem *probs[2] = {&p1, &p2};
    SamplerConfig sc = {1.0f, 1.0f, 0, 60, 0, 3, 0};
    Scorer exact = scorer_math();
    exact.reward_cluster = exact_cluster;
    static const int rewards[] = {REWARD_EMPO, REWARD_TTRL, REWARD_ENTROPY, REWARD_CERTAINTY};
    for (int x = 0; x < 2; x++)
        for (int k = 0; k < 4; k++) {
            Scorer sem = scorer_math(), *sco = x ? &exact : &sem;
            int rw = rewards[k];
            if (x && rw >= REWARD_ENTROPY) continue;
            Rollouts r;
            rollouts_sample(&r, &m, &tok, sco, TEMPLATE_PLAIN, probs, 2, 8, &sc, 0);
            rollouts_score(&r, sco, probs, rw, 0.0f, 1e9f);
            int ok = (r.rgroup != NULL) == (x == 1), answered = 0;
            for (int j = 0; j < r.n; j++) {
                const SemanticGroup *g = x ? &r.rgroup[j / 8] : &r.group[j / 8];
                int i = j % 8;
                float want = rw == REWARD_EMPO ? g->reward[i]
                           : rw == REWARD_TTRL ? (float)(r.answer[j] && g->cluster[i] == g->cluster[g->majority])
                           : rw == REWARD_ENTROPY ? -r.gen.mean_entropy[j] : r.gen.mean_certainty[j];
                ok &= r.reward[j] == want;
                answered += r.answer[j] != NULL;
                if (rw >= REWARD_ENTROPY) ok &= r.keep[j / 8] == 1 && (rw == REWARD_ENTROPY ? want < 0 : want > 0);
            }
            for (int p = 0; p < 2; p++) {   // the advantages are normalized within each group
                double s = 0;
                for (int i = 0; i < 8; i++) s += r.adv[p * 8 + i];
                ok &= fabs(s) < 1e-3;
            }
            check(ok, "rollouts_score -r %-9s %s: rewards as defined for %d responses (%d answered), group-normalized",
                  REWARD_NAMES[rw], x ? "--cluster exact   " : "--cluster semantic", r.n, answered);
            rollouts_free(&r);
        }
    tokenizer_free(&tok);
    model_free(&m);
}

// ----------------------------------------------------------------------------
// one training step of each new reward, end to end

static int count_lines(const char *path, const char *needle) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static void test_train_step(void) {
    static const struct { int reward, cluster; const char *name; } runs[] = {
        {REWARD_ENTROPY, CLUSTER_SEMANTIC, "-r entropy"},
        {REWARD_CERTAINTY, CLUSTER_SEMANTIC, "-r certainty"},
        {REWARD_EMPO, CLUSTER_EXACT, "-r empo --cluster exact"},
        {REWARD_TTRL, CLUSTER_EXACT, "-r ttrl --cluster exact"},
    };
    for (int k = 0; k < 4; k++) {
        RunConfig rc;
        run_config_defaults(&rc, 1);
        rc.reward = runs[k].reward;
        rc.cluster = runs[k].cluster;
        rc.out_dir = "/tmp/empo_test_rewards";
        rc.eval_path = NULL;
        rc.quiet = 1; rc.prompts_per_step = 2; rc.G = 4; rc.max_new = 24; rc.steps = 1; rc.eval_every = 0;
        rc.ckpt_every = 0;
        rc.eval_G = 1;
        rc.eval_temperature = 1.0f;
        char buf[256];
        run_cmd("rm -rf /tmp/empo_test_rewards", buf, sizeof buf);
        float loss[1] = {NAN}, norm[1] = {NAN};
        int steps = run_training(&rc, loss, norm);
        int logged = count_lines("/tmp/empo_test_rewards/log.jsonl", "\"reward\"");
        int svg = count_lines("/tmp/empo_test_rewards/curves.svg", "<svg");
        check(steps == 1 && isfinite(loss[0]) && isfinite(norm[0]) && logged == 1 && svg == 1,
              "one training step %-24s loss %+.4f, grad norm %.4f, logged %d, plotted %d", runs[k].name, loss[0],
              norm[0], logged, svg);
    }
    char buf[256];
    run_cmd("rm -rf /tmp/empo_test_rewards", buf, sizeof buf);
}

// ----------------------------------------------------------------------------
// the plot

static void test_plot(void) {
    char buf[256];
    run_cmd("rm -rf /tmp/empo_test_plot && mkdir -p /tmp/empo_test_plot/sft", buf, sizeof buf);
    FILE *f = fopen("/tmp/empo_test_plot/log.jsonl", "w");
    for (int s = 0; s <= 30; s += 5)
        fprintf(f, "{\"step\": %d, \"eval_greedy\": %.3f, \"eval_maj\": %.3f, \"eval_entropy\": 1.2}\n", s,
                0.1 + s * 0.01, 0.5 + s * 0.005);
    for (int s = 1; s <= 30; s++)
        fprintf(f, "{\"step\": %d, \"reward\": %.3f, \"entropy\": 1.1, \"resp_len\": 40, \"loss\": 0.1}\n", s,
                0.3 + s * 0.01);
    fclose(f);
    f = fopen("/tmp/empo_test_plot/sft/log.jsonl", "w");
    for (int s = 1; s <= 20; s++)
        fprintf(f, "{\"step\": %d, \"loss\": %.3f, \"grad_norm\": 1, \"time\": 0.1}\n", s, 3.0 / s);
    fclose(f);
    write_plot("/tmp/empo_test_plot");
    write_plot("/tmp/empo_test_plot/sft");
    const char *p = "/tmp/empo_test_plot/curves.svg", *q = "/tmp/empo_test_plot/sft/curves.svg";
    int grid = count_lines(p, "stroke=\"#e6e6e6\""), ticks = count_lines(p, "text-anchor=\"middle\">"),
        yvals = count_lines(p, "text-anchor=\"end\">");
    // every legend entry lies right of its panel's plot area (x >= the area's right edge)
    FILE *g = fopen(p, "r");
    int legend_ok = g != NULL, entries = 0;
    char line[4096];
    while (g && fgets(line, sizeof line, g)) {
        int x1, y1, x2, y2;
        if (sscanf(line, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#", &x1, &y1, &x2, &y2) == 4 &&
            strstr(line, "stroke-width=\"3\"")) {
            entries++;
            int col = PLOT_MARGIN + PLOT_W + PLOT_LEGEND;
            int right = x1 >= PLOT_MARGIN + PLOT_W && (x1 - PLOT_MARGIN) % col >= PLOT_W;
            legend_ok &= right;
        }
    }
    if (g) fclose(g);
    check(grid >= 20 && ticks >= 20 && yvals >= 16 && legend_ok && entries == 6 && count_lines(p, "(not logged)") == 0,
          "curves.svg: %d gridlines, %d x tick values, %d y tick values, %d legend entries all outside the plot area",
          grid, ticks, yvals, entries);
    check(count_lines(q, "SFT loss") >= 1 && count_lines(q, "mean reward") == 0 && count_lines(q, "<polyline") == 1,
          "an SFT run's curves.svg draws its loss panel (and no empty reward/entropy panels)");
    run_cmd("rm -rf /tmp/empo_test_plot", buf, sizeof buf);
}

int main(void) {
    test_token_stats();
    test_exact_cluster();
    test_rollout_rewards();
    test_train_step();
    test_plot();
    return test_summary("rewards");
}
