// test_freeform.c: the free-form setting (freeform.h and section 11b of train_empo.c).
//   - answer extraction, normalization, ROUGE-L precision and the copy guard;
//   - clustering with a stub judge (a deterministic table): clusters, entropy, guarded rewards,
//     advantages, one- and two-directional equivalence, the low-confidence cutoff, and one judge
//     call per batch; the table clustering agrees with semantic_cluster on math answers;
//   - the batched verifier against transformers (dev/make_verifier_fixture.py): the same
//     next-token log P(Yes), log P(No) for the same prompts, with and without waves and chunks;
//   - multiple choice: prompt, letter extraction, the JSONL format and its errors;
//   - --task freeform end to end on the tiny task in dev/freeform (training, then evaluation).
// Ends with "freeform: N passed, N failed".
#define TESTING
#include "../../train_empo.c"
#include "test_util.h"

static int feq(float a, float b, float tol) { return fabsf(a - b) <= tol; }

// ----------------------------------------------------------------------------
// text

static void expect_extract(const char *resp, const char *want) {
    char buf[FF_ANSWER_CAP];
    int got = ff_extract_answer(resp, buf, sizeof buf);
    int ok = want ? got && strcmp(buf, want) == 0 : !got;
    check(ok, "extract %-46.46s -> %s%s%s", resp, got ? "\"" : "", got ? buf : "(none)", got ? "\"" : "");
}
static void test_text(void) {
    expect_extract("The sky looks blue. So the answer is \\boxed{blue}.", "blue");
    expect_extract("First \\boxed{red}, then corrected: \\boxed{\\text{deep blue}}", "deep blue");
    expect_extract("I think about it.\nIt is blue.", "It is blue");
    expect_extract("Water boils at 100 C. Ice melts at 0 C!  ", "Ice melts at 0 C");
    expect_extract("The value of e.g. pi is 3.14",
                   "pi is 3.14");   // a sentence ends at ". " (abbreviations are not special)
    expect_extract("", NULL);
    expect_extract("  ... !!", NULL);
    expect_extract("answer: \\boxed{}", NULL);
    char longs[1200], got[FF_ANSWER_CAP];
    // "é" x 599, no sentence end
    for (int i = 0; i < 1198; i += 2) { longs[i] = (char)0xC3; longs[i + 1] = (char)0xA9; }
    longs[1198] = 0;
    int lg = ff_extract_answer(longs, got, sizeof got);
    check(lg && strlen(got) <= FF_SENTENCE_CAP && ((unsigned char)got[0] & 0xC0) != 0x80 && !strcmp(got,
            longs + 1198 - strlen(got)),
          "a long last sentence keeps its last %zu bytes, starting on a character boundary", strlen(got));
    char n[64];
    ff_normalize("  It   IS Blue. ", n, sizeof n);
    check(strcmp(n, "it is blue") == 0, "normalize \"  It   IS Blue. \" -> \"%s\"", n);
    const char *q = "What color is the sky on a clear day?";
    float r1 = ff_rouge_l_precision("the color of the sky", q), r2 = ff_rouge_l_precision("what color is sky", q);
    float r3 = ff_rouge_l_precision("blue", q), r4 = ff_rouge_l_precision("?!", q);
    check(feq(r1, 3.0f / 5, 1e-6f) && feq(r2, 1.0f, 1e-6f) && r3 == 0.0f && r4 == 1.0f,
          "ROUGE-L precision: 3/5 = %.3f, 4/4 = %.3f, 0 = %.3f, no words = %.3f", r1, r2, r3, r4);
    FreeformConfig cfg;
    freeform_config_default(&cfg);
    int c1 = ff_copies_question("the color of the sky", q, &cfg), c2 = ff_copies_question("what color is sky", q, &cfg);
    int c3 = ff_copies_question("Clear Day", q, &cfg), c4 = ff_copies_question("blue", q, &cfg);
    cfg.copy_substring = 0; cfg.copy_rouge = 1.0f;
    int c5 = ff_copies_question("Clear Day", q, &cfg);
    check(!c1 && c2 && c3 && !c4 && !c5,
          "copy guard: rouge 0.6 no, rouge 1.0 yes, substring yes, unrelated no, both off no");
    char *p = ff_render_judge_prompt("Q={question} A={a} B={b} again {a}", "why?", "x {b}", "y");
    check(p && strcmp(p, "Q=why? A=x {b} B=y again x {b}") == 0,
          "judge template fills every placeholder, values not re-scanned: %s", p);
    free(p);
    check(ff_template_invalid(FF_DEFAULT_JUDGE_TEMPLATE) == NULL && ff_template_invalid("{question} {a}") != NULL,
          "template check: the default is valid, one without {b} is not (%s)", ff_template_invalid("{question} {a}"));
}

// ----------------------------------------------------------------------------
// clustering with a stub judge

// The stub: each answer has a meaning (by normalized text); Yes when the meanings match, plus one
// one-directional entailment ("blue" as ground truth accepts "azure", not the other way).
static int stub_calls = 0, stub_pairs = 0;
static int stub_meaning(const char *s) {
    char n[FF_ANSWER_CAP];
    ff_normalize(s, n, sizeof n);
    static const char *const table[][2] = {{"blue", "B"}, {"it is blue", "B"}, {"green", "G"}, {"the sky", "S"},
                                           {"azure", "Z"},
                                           {"1/2", "H"}, {"one half", "H"}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) if (!strcmp(n, table[i][0])) return table[i][1][0];
    return (int)(n[0] ? 1000 + n[0] : 0);   // anything else: its own meaning by first letter
}
static int stub_judge(void *ctx, const char *const *q, const char *const *a, const char *const *b, int n,
                      float *p_yes) {
    stub_calls++; stub_pairs += n;
    for (int k = 0; k < n; k++) {
        int x = stub_meaning(a[k]), y = stub_meaning(b[k]);
        p_yes[k] = x == y ? 0.9f : (x == 'B' && y == 'Z') ? 0.7f : 0.1f;
    }
    return 0;
}

static void test_cluster_stub(void) {
    const char *q = "What color is the sky?";
    const char *ans[8] = {"blue", "It is blue.", "Blue", NULL, "green", "the sky", "azure", "blue."};
    FreeformConfig cfg;
    freeform_config_default(&cfg);
    SemanticGroup g;
    FreeformStats st;
    stub_calls = stub_pairs = 0;
    freeform_cluster(ans, 8, q, stub_judge, NULL, &cfg, &g, &st);
    int want_c[8] = {0, 0, 0, -1, 1, 2, 3, 0};
    int ok = g.n_clusters == 4 && g.n_missing == 1 && memcmp(g.cluster, want_c, sizeof want_c) == 0;
    check(ok,
          "bidirectional: clusters {blue, It is blue., Blue, blue.} {green} {the sky} {azure} + 1 missing "
          "(%d clusters)", g.n_clusters);
    check(stub_calls == 1 && stub_pairs == 20 && st.n_unique == 5,
          "one judge call for the group: %d call(s), %d directed pairs of %d distinct answers (5*4)",
          stub_calls, stub_pairs, st.n_unique);
    check(feq(g.entropy, logf(4.0f), 1e-5f), "entropy %.5f = -(1/2 ln 1/2 + 3 * 1/8 ln 1/8) + 1/8 ln 8 = ln 4 = %.5f",
          g.entropy, logf(4.0f));
    float want_r[8] = {0.5f, 0.5f, 0.5f, -0.5f, 0.125f, 0.0f, 0.125f, 0.5f};
    ok = 1;
    for (int i = 0; i < 8; i++) ok &= feq(g.reward[i], want_r[i], 1e-6f);
    check(ok && st.why[3] == FF_NO_ANSWER && st.why[5] == FF_COPY && st.why[0] == FF_OK,
          "guarded rewards %.3f %.3f %.3f %.3f %.3f %.3f %.3f %.3f "
          "(no answer -0.5, \"the sky\" copies the question: 0)",
          g.reward[0], g.reward[1], g.reward[2], g.reward[3], g.reward[4], g.reward[5], g.reward[6], g.reward[7]);
    float adv[8];
    group_advantages(want_r, 8, adv);
    ok = 1;
    for (int i = 0; i < 8; i++) ok &= feq(g.advantage[i], adv[i], 1e-5f);
    check(ok, "advantages are the group normalization of the guarded rewards (A[3] = %.4f)", g.advantage[3]);

    cfg.bidirectional = 0;
    stub_calls = stub_pairs = 0;
    freeform_cluster(ans, 8, q, stub_judge, NULL, &cfg, &g, &st);
    check(g.n_clusters == 3 && g.cluster[6] == 0 && feq(g.reward[0], 0.625f, 1e-6f) && stub_pairs == 10,
          "one-way (reference): \"azure\" joins \"blue\" (blue accepts azure), 3 clusters, reward %.3f, %d pairs",
          g.reward[0], stub_pairs);

    // low confidence: six different answers -> the largest share 1/6 < 0.2 -> everyone 0
    const char *spread[6] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot"};
    freeform_config_default(&cfg);
    freeform_cluster(spread, 6, q, stub_judge, NULL, &cfg, &g, &st);
    ok = g.n_clusters == 6 && st.max_share < 0.2f;
    for (int i = 0; i < 6; i++) ok &= g.reward[i] == 0.0f && st.why[i] == FF_LOW_CONF;
    cfg.min_share = 0.0f;
    freeform_cluster(spread, 6, q, stub_judge, NULL, &cfg, &g, &st);
    check(ok && feq(g.reward[0], 1.0f / 6, 1e-6f),
          "low-confidence cutoff: 6 singletons give 0 (cutoff 0.2), 1/6 with --min-share 0");
    // one cluster is never low-confidence, and a lone answer among missing ones is not either way
    const char *lone[6] = {"alpha", NULL, NULL, NULL, NULL, NULL};
    freeform_config_default(&cfg);
    freeform_cluster(lone, 6, q, stub_judge, NULL, &cfg, &g, &st);
    check(g.n_clusters == 1 && g.reward[0] == 0.0f && st.why[0] == FF_LOW_CONF && g.reward[1] == -0.5f,
          "1 answer + 5 missing: 6 singletons in all, share 1/6 < 0.2 -> 0; missing -0.5");
    const char *same[4] = {"Blue", "blue", "blue.", " BLUE "};
    stub_calls = 0;
    freeform_cluster(same, 4, q, stub_judge, NULL, &cfg, &g, &st);
    check(g.n_clusters == 1 && g.reward[0] == 1.0f && stub_calls == 0 && g.entropy == 0.0f,
          "identical answers: one cluster, reward 1, entropy 0, judge not called");

    // a batch of groups: one judge call for all of them, same result as group by group
    const char *batch[16] = {"blue", "It is blue.", "Blue", NULL, "green", "the sky", "azure", "blue.",
                             "1/2", "one half", "0.5", "1/2", NULL, "three", "1/2", "x"};
    const char *qs[2] = {q, "What is half of one?"};
    SemanticGroup gb[2], g1;
    FreeformStats sb[2], s1;
    long np = 0;
    stub_calls = 0;
    freeform_cluster_batch(batch, qs, 2, 8, stub_judge, NULL, &cfg, gb, sb, &np);
    int calls = stub_calls;
    ok = 1;
    for (int k = 0; k < 2; k++) {
        freeform_cluster(batch + 8 * k, 8, qs[k], stub_judge, NULL, &cfg, &g1, &s1);
        ok &= memcmp(g1.cluster, gb[k].cluster, sizeof g1.cluster) == 0 && memcmp(g1.reward, gb[k].reward,
                sizeof g1.reward) == 0 &&
              g1.entropy == gb[k].entropy;
    }
    check(ok && calls == 1 && np == 20 + 20,
          "a batch of 2 groups: one judge call of %ld pairs, the same clusters and rewards as one group at a time", np);

    // the table clustering is semantic_cluster's: same result on math answers with math_answers_equal as the judge
    const char *math[7] = {"1/2", "0.5", "\\frac{1}{2}", "3", NULL, "3.0", "x^2"};
    SemanticGroup ref;
    semantic_cluster(math, 7, &ref);
    FreeformPlan pl;
    freeform_plan(&pl, math, 7, &cfg);
    float py[64];
    for (int k = 0; k < pl.n_pairs; k++) py[k] = math_answers_equal(math[pl.first[pl.pa[k]]],
                                                                    math[pl.first[pl.pb[k]]]) ? 1.0f : 0.0f;
    cfg.min_share = 0.0f; cfg.copy_substring = 0; cfg.copy_rouge = 1.0f; cfg.no_answer_reward = 0.0f;
    freeform_finish(&pl, math, NULL, py, &cfg, &g, NULL);
    freeform_plan_free(&pl);
    ok = g.n_clusters == ref.n_clusters && memcmp(g.cluster, ref.cluster,
                                                  sizeof g.cluster) == 0 && g.entropy == ref.entropy &&
         memcmp(g.reward, ref.reward, sizeof g.reward) == 0 && g.majority == ref.majority;
    check(ok, "table clustering = semantic_cluster on math answers (%d clusters, H = %.4f vs %.4f)", g.n_clusters,
          g.entropy, ref.entropy);
}

// ----------------------------------------------------------------------------
// the verifier against transformers

#define VFIX "dev/fixtures/verifier_tiny.bin"
#define VTMP "/tmp/empo_test_verifier.bin"

// The fixture's model with the byte tokenizer attached, saved where -R can read it.
static int make_verifier_with_tokenizer(void) {
    Model m; char err[512];
    if (model_load(&m, VFIX, err, sizeof err) != 0) { check(0, "%s (run make fixtures_freeform)", err); return -1; }
    Tokenizer t;
    if (tokenizer_init_bytes(&t) != 0) FATAL("out of memory");
    m.tok = tokenizer_to_blob(&t, &m.tok_bytes);
    m.n_eos = tokenizer_eos_ids(&t, m.eos, CKPT_MAX_EOS);
    tokenizer_free(&t);
    int rc = model_save(&m, VTMP, CKPT_DTYPE_FP32, err, sizeof err);
    if (rc != 0) check(0, "%s", err);
    model_free(&m);
    return rc;
}

// Tolerance 1e-4 absolute on log-probs: fp32 throughout, summed in another order than torch
// (blocked GEMM, our attention loop); a 2-layer model over ~500 positions stays near 1e-6, and
// the log-softmax over 259 entries adds one rounding. 1e-4 still catches any wrong position,
// mask, rope or prefix-copy error, which moves these values by 1e-2 or more.
static void test_verifier_vs_hf(void) {
    size_t len;
    char *text = read_whole_file("dev/fixtures/verifier_logprobs.json", &len);
    JDoc d;
    if (!text || json_parse(&d, text, len) != 0) {
        check(0, "verifier fixture: cannot read/parse (run make fixtures_freeform)");
        free(text);
        return;
    }
    if (make_verifier_with_tokenizer() != 0) { json_free(&d); free(text); return; }
    Verifier v;
    verifier_load(&v, VTMP, NULL, 256);
    int root = 0, pairs = json_get(&d, root, "pairs"), n = json_len(&d, pairs);
    check(v.yes_id == (int)json_num(&d, json_get(&d, root, "yes_id"), -1) && v.no_id == (int)json_num(&d,
            json_get(&d, root, "no_id"), -1),
          "decision tokens: \" Yes\"/\" No\" collide in a byte vocabulary, so \"Yes\"/\"No\": ids %d/%d", v.yes_id,
          v.no_id);
    const char **q = (const char **)xmalloc(n * sizeof(char *)), **a = (const char **)xmalloc(n * sizeof(char *)),
    **b = (const char **)xmalloc(n * sizeof(char *));
    float *ref_y = (float *)xmalloc(n * sizeof(float)), *ref_n = (float *)xmalloc(n * sizeof(float)),
    *py = (float *)xmalloc(n * sizeof(float));
    int **ids = (int **)xmalloc(n * sizeof(int *)), *lens = (int *)xmalloc(n * sizeof(int));
    int render_ok = 1;
    for (int k = 0; k < n; k++) {
        int e = json_at(&d, pairs, k);
        q[k] = json_str(&d, json_get(&d, e, "question"));
        a[k] = json_str(&d, json_get(&d, e, "a"));
        b[k] = json_str(&d, json_get(&d, e, "b"));
        ref_y[k] = (float)json_num(&d, json_get(&d, e, "lp_yes"), 0);
        ref_n[k] = (float)json_num(&d, json_get(&d, e, "lp_no"), 0);
        const char *prompt = json_str(&d, json_get(&d, e, "prompt"));
        char *mine = ff_render_judge_prompt(FF_DEFAULT_JUDGE_TEMPLATE, q[k], a[k], b[k]);
        render_ok &= prompt && strcmp(mine, prompt) == 0;
        free(mine);
        lens[k] = tokenizer_encode(&v.tok, prompt, strlen(prompt), 1, &ids[k]);
    }
    check(render_ok, "the %d judge prompts rendered in C are the fixture's, byte for byte", n);
    // all prompts in one batched pass; then again cut into waves of 3 and steps of 100 tokens
    float *yn1 = (float *)xmalloc(2 * n * sizeof(float)), *yn2 = (float *)xmalloc(2 * n * sizeof(float));
    float *ly = (float *)xmalloc(n * sizeof(float)), *ln = (float *)xmalloc(n * sizeof(float));
    float *ly2 = (float *)xmalloc(n * sizeof(float)), *ln2 = (float *)xmalloc(n * sizeof(float));
    long computed = 0, shared = 0, computed2 = 0, shared2 = 0;
    int cand[2] = {v.yes_id, v.no_id};
    model_next_logprobs(&v.m, (const int *const *)ids, lens, n, cand, 2, 256, 2048, yn1, &computed, &shared);
    model_next_logprobs(&v.m, (const int *const *)ids, lens, n, cand, 2, 3, 100, yn2, &computed2, &shared2);
    for (int k = 0; k < n; k++) {
        ly[k] = yn1[2 * k];
        ln[k] = yn1[2 * k + 1];
        ly2[k] = yn2[2 * k];
        ln2[k] = yn2[2 * k + 1];
    }
    free(yn1);
    free(yn2);
    float worst = 0.0f, worst2 = 0.0f;
    long total = 0;
    for (int k = 0; k < n; k++) {
        worst = fmaxf(worst, fmaxf(fabsf(ly[k] - ref_y[k]), fabsf(ln[k] - ref_n[k])));
        worst2 = fmaxf(worst2, fmaxf(fabsf(ly2[k] - ly[k]), fabsf(ln2[k] - ln[k])));
        total += lens[k];
    }
    check(worst < 1e-4f,
          "batched judge log P(Yes), log P(No) vs transformers on %d prompts: max abs err %.2e (e.g. %.5f vs %.5f)", n,
          worst, ly[0], ref_y[0]);
    check(shared > 0 && computed + shared == total,
          "shared prefixes: %ld of %ld prompt tokens computed once and copied", shared, total);
    check(worst2 < 1e-5f && computed2 + shared2 == total,
          "waves of 3 sequences and steps of 100 tokens give the same values (max diff %.2e)", worst2);
    verifier_judge(&v, q, a, b, n, py);
    float wp = 0.0f;
    for (int k = 0; k < n; k++) wp = fmaxf(wp, fabsf(py[k] - 1.0f / (1.0f + expf(ref_n[k] - ref_y[k]))));
    check(wp < 1e-4f, "verifier_judge (text in, P(Yes) over {Yes, No} out) matches transformers: max abs err %.2e", wp);
    for (int k = 0; k < n; k++) free(ids[k]);
    free(ids);
    free(lens);
    free(q);
    free(a);
    free(b);
    free(ref_y);
    free(ref_n);
    free(py);
    free(ly);
    free(ln);
    free(ly2);
    free(ln2);
    verifier_free(&v);
    json_free(&d); free(text);
}

// ----------------------------------------------------------------------------
// multiple choice and the data format

static void test_mc(void) {
    const char *opts[4] = {"a horse", "a sheep", "a dog", "a cat"};
    char *p = ff_render_mc("Which animal says woof?", opts, 4);
    check(p && strstr(p, "\nA. a horse\nB. a sheep\nC. a dog\nD. a cat\n") && strstr(p, "\\boxed{}"),
          "MC prompt lists lettered options and asks for \\boxed{}");
    free(p);
    struct { const char *resp; int want; } cases[] = {
        {"The dog barks. \\boxed{C}", 2}, {"\\boxed{(b)}", 1}, {"\\boxed{D. a cat}", 3}, {"\\boxed{\\text{A}}", 0},
        {"\\boxed{a dog}", 2}, {"\\boxed{E}", -1}, {"C", -1}, {"\\boxed{A cow}", -1}, {"\\boxed{B} no wait \\boxed{C}",
                2}};
    int ok = 1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = ff_extract_letter(cases[i].resp, opts, 4);
        if (got != cases[i].want) { ok = 0; printf("  %s -> %d, want %d\n", cases[i].resp, got, cases[i].want); }
    }
    check(ok, "letters from \\boxed{}: C, (b), D. a cat, \\text{A}, an option's text; none for E, no box, \"A cow\"");
    check(ff_gold_letter("C", opts, 4) == 2 && ff_gold_letter("(d)", opts, 4) == 3 && ff_gold_letter("a sheep", opts,
            4) == 1 && ff_gold_letter("Z", opts, 4) == -1,
          "gold answers: a letter or an option's text");
    ProblemSet ps;
    freeform_problems_load(&ps, "dev/freeform/eval_mc.jsonl");
    char *copy; const char *o[FF_MAX_CHOICES];
    int nc = freeform_choices(&ps.items[0], &copy, o);
    check(ps.n == 12 && nc == 4 && ps.items[0].answer && strlen(ps.items[0].answer) == 1 && strstr(ps.items[0].problem,
            "\nA. "),
          "dev/freeform/eval_mc.jsonl: %d questions, %d options each, gold letter %s", ps.n, nc, ps.items[0].answer);
    free(copy);
    problems_free(&ps);
}

// ----------------------------------------------------------------------------
// end to end: --task freeform on the tiny task

static int count_lines(const char *path, const char *needle) {
    char *t = read_whole_file(path, NULL);
    int n = 0;
    for (char *s = t; s && (s = strstr(s, needle)); s++) n++;
    free(t);
    return n;
}

static void test_end_to_end(void) {
    if (make_verifier_with_tokenizer() != 0) return;
    // a short judge template keeps the test fast (the default's instructions are ~400 bytes per pair)
    FILE *f = fopen("/tmp/empo_ff_short.txt", "w");
    fputs("Q: {question}\nTrue: {a}\nGiven: {b}\nSame? Final Decision:", f);
    fclose(f);
    RunConfig rc;
    run_config_defaults(&rc, 0);
    rc.task = TASK_FREEFORM;
    rc.verifier_path = VTMP;
    rc.judge_template_path = "/tmp/empo_ff_short.txt";
    rc.init_spec = "C=32,L=1,NH=2,NKV=1,I=64,T=320";
    rc.template_id = TEMPLATE_PLAIN;
    rc.data_path = "dev/freeform/train.jsonl";
    rc.eval_path = "dev/freeform/eval_mc.jsonl";
    rc.out_dir = "/tmp/empo_test_ff";
    rc.quiet = 1; rc.prompts_per_step = 2; rc.G = 4; rc.max_new = 24; rc.steps = 3; rc.eval_every = 3; rc.eval_G = 2;
    rc.eval_max_new = 16;
    rc.eval_batch = 12;
    rc.eval_temperature = 1.0f;
    rc.temperature = 1.0f;
    rc.ckpt_every = 0;
    rc.tc.lr = 1e-3f;
    rc.tc.micro = 8;
    float loss[3] = {NAN, NAN, NAN}, norm[3] = {NAN, NAN, NAN};
    double t0 = now_seconds();
    int steps = run_training(&rc, loss, norm);
    int ok = steps == 3;
    for (int i = 0; i < 3; i++) ok &= isfinite(loss[i]) && isfinite(norm[i]);
    int logged = count_lines("/tmp/empo_test_ff/log.jsonl",
                             "\"reward\""), evals = count_lines("/tmp/empo_test_ff/log.jsonl", "\"eval_greedy\"");
    int records = count_lines("/tmp/empo_test_ff/eval_last.jsonl", "\"kind\": \"choice\"");
    check(ok && logged == 3 && evals == 2 && records == 12,
          "--task freeform trains 3 steps with the tiny verifier (%d step lines, %d evals, %d MC records; %.1f s)",
          logged, evals, records, now_seconds() - t0);
    // the trained policy, evaluated from the command line on both kinds of question
    expect_cmd("--eval multiple choice",
               "./train_empo --task freeform -m /tmp/empo_test_ff/model.bin --eval dev/freeform/eval_mc.jsonl "
               "-R " VTMP " -G 3 --eval-n 16 -o /tmp/empo_test_ff", 0, "eval_mc.jsonl: 12 problems | greedy pass@1");
    expect_cmd("--eval free-form answers, judged by the verifier",
               "./train_empo --task freeform -m /tmp/empo_test_ff/model.bin --eval dev/freeform/eval_free.jsonl "
               "-R " VTMP " --judge-template /tmp/empo_ff_short.txt -G 3 --eval-n 16 -o /tmp/empo_test_ff", 0,
               "pairs judged");
    expect_cmd("training from the command line, no verifier (normalized text judge)",
               "./train_empo --task freeform --init C=32,L=1,NH=2,NKV=1,I=64,T=320 "
               "--template plain -d dev/freeform/train.jsonl -B 2 -G 3 -n 12 -x 1 -E 0 -o /tmp/empo_test_ff", 0,
               "step     1/1");
    // bad input: one clear line and a non-zero exit
    f = fopen("/tmp/empo_ff_bad.jsonl", "w");
    fputs("{\"question\": \"Q1?\", \"choices\": [\"x\", \"y\"], \"answer\": \"C\"}\n{\"question\": \"Q2?\", "
          "\"choices\": \"xy\"}\n{\"prompt\": 3}\n", f);
    fclose(f);
    f = fopen("/tmp/empo_ff_tmpl.txt", "w");
    fputs("Is {a} the same as the answer?", f);
    fclose(f);
    expect_cmd("an MC answer that names no option",
               "./train_empo --task freeform --eval /tmp/empo_ff_bad.jsonl -m /tmp/empo_test_ff/model.bin -o "
               "/tmp/empo_test_ff",
               1, "empo_ff_bad.jsonl:1: \"answer\" is neither a letter A-B");
    expect_cmd("choices that are not a list",
               "./train_empo --task freeform --eval /tmp/empo_ff_bad.jsonl -m /tmp/empo_test_ff/model.bin -o "
               "/tmp/empo_test_ff",
               1, "empo_ff_bad.jsonl:2: \"choices\" must be");
    expect_cmd("a file with no usable line",
               "./train_empo --task freeform --eval /tmp/empo_ff_bad.jsonl -m /tmp/empo_test_ff/model.bin -o "
               "/tmp/empo_test_ff",
               1, "no usable {\"question\"");
    expect_cmd("a judge template without {b}",
               "./train_empo --task freeform --eval dev/freeform/eval_free.jsonl -m /tmp/empo_test_ff/model.bin "
               "-R " VTMP
               " --judge-template /tmp/empo_ff_tmpl.txt", 1, "no {b} placeholder");
    {   // a template longer than the verifier's context: no pair could ever be judged
        FILE *t = fopen("/tmp/empo_ff_long.txt", "w");
        fputs("Q: {question} A: {a} B: {b} ", t);
        for (int i = 0; i < 5000; i++) fputc('x', t);
        fclose(t);
    }
    expect_cmd("a judge template too long for the verifier's context",
               "./train_empo --task freeform --eval dev/freeform/eval_free.jsonl -m /tmp/empo_test_ff/model.bin "
               "-R " VTMP
               " --judge-template /tmp/empo_ff_long.txt", 1, "cannot hold the judge's prompt");
    remove("/tmp/empo_ff_long.txt");
    expect_cmd("-R without --task freeform", "./train_empo -R " VTMP " --eval dev/freeform/eval_free.jsonl", 1,
               "need --task freeform");
    expect_cmd("a missing verifier",
               "./train_empo --task freeform -R /tmp/empo_nope.bin --eval dev/freeform/eval_free.jsonl -m "
               "/tmp/empo_test_ff/model.bin", 1,
               "/tmp/empo_nope.bin");
    expect_cmd("a verifier without a tokenizer",
               "./train_empo --task freeform -R " VFIX " --eval dev/freeform/eval_free.jsonl -m "
                                                       "/tmp/empo_test_ff/model.bin", 1,
               "carries no tokenizer");
    expect_cmd("a bad --judge-mode", "./train_empo --task freeform --judge-mode sideways", 1,
               "flag --judge-mode: 'sideways'");
    expect_cmd("-h documents the free-form flags", "./train_empo -h", 0, "--judge-template FILE");
    char buf[256];
    run_cmd("rm -rf /tmp/empo_test_ff /tmp/empo_ff_bad.jsonl /tmp/empo_ff_tmpl.txt /tmp/empo_ff_short.txt " VTMP, buf,
            sizeof buf);
}

int main(void) {
    test_text();
    test_cluster_stub();
    test_verifier_vs_hf();
    test_mc();
    test_end_to_end();
    return test_summary("freeform");
}
