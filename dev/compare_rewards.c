// compare_rewards.c: the table and the SVG of make compare-rewards (dev/compare_rewards.sh), from
// each run's log.jsonl. Uses train_empo.c's own JSONL reader and plot writer (svg_panels), so the
// comparison looks like every run's curves.svg.
//   compare_rewards TABLE.md PLOT.svg NAME=LOG.jsonl=SECONDS ...
#define TESTING
#include "../train_empo.c"

typedef struct {
    Curve greedy, maj, pass, ent, len, resp_len;
} RunLog;
static int collect(const JDoc *d, int root, int line, void *user) {
    RunLog *r = (RunLog *)user;
    int st = json_get(d, root, "step");
    if (json_type(d, st) != J_NUM) return 0;
    float x = (float)json_num(d, st, 0);
    struct { const char *key; Curve *c; } k[6] = {{"eval_greedy", &r->greedy}, {"eval_maj", &r->maj},
                                                   {"eval_pass", &r->pass},     {"eval_entropy", &r->ent},
                                                   {"eval_len", &r->len},       {"resp_len", &r->resp_len}};
    for (int i = 0; i < 6; i++) {
        int v = json_get(d, root, k[i].key);
        if (json_type(d, v) == J_NUM) curve_add(k[i].c, x, (float)json_num(d, v, 0));
    }
    return 0;
}
static float first(const Curve *c) { return c->n ? c->y[0] : NAN; }
static float last(const Curve *c) { return c->n ? c->y[c->n - 1] : NAN; }
static double mean(const Curve *c) {
    double s = 0;
    for (int i = 0; i < c->n; i++) s += c->y[i];
    return c->n ? s / c->n : NAN;
}

int main(int argc, char **argv) {
    if (argc < 4) FATAL("usage: compare_rewards TABLE.md PLOT.svg NAME=LOG.jsonl=SECONDS ...");
    int n = argc - 3;
    if (n > PLOT_MAX_LINES) FATAL("at most %d runs", PLOT_MAX_LINES);
    RunLog *runs = (RunLog *)xcalloc((size_t)n, sizeof(RunLog));
    char *names[PLOT_MAX_LINES];
    double secs[PLOT_MAX_LINES];
    for (int i = 0; i < n; i++) {
        names[i] = xstrdup(argv[3 + i]);
        char *a = strchr(names[i], '='), *b = a ? strchr(a + 1, '=') : NULL;
        if (!a || !b) FATAL("expected NAME=LOG.jsonl=SECONDS, got %s", argv[3 + i]);
        *a = *b = 0;
        secs[i] = atof(b + 1);
        if (jsonl_foreach(a + 1, 0, collect, &runs[i]) < 0) FATAL("cannot read %s", a + 1);
        if (runs[i].greedy.n == 0) FATAL("%s has no evaluation", a + 1);
    }
    char label[PLOT_MAX_LINES][256];   // each run's flags: NAME-exact is -r NAME --cluster exact
    for (int i = 0; i < n; i++) {
        size_t L = strlen(names[i]);
        if (L > 6 && !strcmp(names[i] + L - 6, "-exact"))
            snprintf(label[i], sizeof label[i], "-r %.*s --cluster exact", (int)(L - 6), names[i]);
        else snprintf(label[i], sizeof label[i], "-r %s", names[i]);
    }
    FILE *t = fopen(argv[1], "w");
    if (!t) FATAL("cannot write %s", argv[1]);
    int s0 = (int)runs[0].greedy.x[0], s1 = (int)runs[0].greedy.x[runs[0].greedy.n - 1];
    fprintf(t, "| run | greedy pass@1 (step %d -> %d) | maj@8 | pass@8 | final semantic entropy | "
               "mean response length (rollouts; final eval) | CPU time |\n", s0, s1);
    fprintf(t, "|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < n; i++) {
        const RunLog *r = &runs[i];
        const char *flags = label[i];
        fprintf(t, "| `%s` | %.1f%% -> **%.1f%%** | %.1f%% -> %.1f%% | %.1f%% -> %.1f%% | %.3f | %.1f; %.1f "
                "| %.0f s |\n", flags, 100 * first(&r->greedy), 100 * last(&r->greedy), 100 * first(&r->maj),
                100 * last(&r->maj), 100 * first(&r->pass), 100 * last(&r->pass), last(&r->ent), mean(&r->resp_len),
                last(&r->len), secs[i]);
    }
    fclose(t);
    PlotPanel pan[2];
    memset(pan, 0, sizeof pan);
    pan[0].title = "held-out greedy pass@1, every reward";
    pan[0].ylabel = "accuracy";
    pan[0].unit_range = 1;
    pan[1].title = "held-out semantic entropy (8 samples)";
    pan[1].ylabel = "nats";
    for (int i = 0; i < n; i++) {
        PlotLine l = {label[i], PLOT_COLORS[i], &runs[i].greedy};
        pan[0].line[pan[0].n++] = l;
        l.c = &runs[i].ent;
        pan[1].line[pan[1].n++] = l;
    }
    PlotPage page = {pan, 2, 2};
    char err[512];
    if (write_file_atomic(argv[2], svg_panels, &page, err, sizeof err) != 0) FATAL("%s", err);
    return 0;
}
