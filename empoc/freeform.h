// freeform.h: EMPO on free-form answers (natural_reasoning, MMLU-Pro style questions), where an
// answer is a phrase or a sentence, not a number. Everything here is text and bookkeeping; the
// equivalence judge (a verifier language model, or anything else) comes in as a function pointer,
// so this file has no model code. doc/freeform.md explains the setting, the flags and their cost.
//
//   1. extract the answer: the last \boxed{...} (with \text{...} unwrapped), else the last sentence;
//   2. the guards of the EMPO reference: no answer -> -0.5; an answer that copies the question
//      (ROUGE-L precision against the question > 0.8, or a substring of it) -> 0; a group with no
//      confident cluster (largest share < 0.2 and more than one cluster) -> 0 for everyone;
//   3. cluster: identical answers (after normalization) are equal without asking; every other
//      pair of distinct answers that greedy clustering may compare is judged in ONE batched call
//      (both directions when bidirectional), then the greedy first-representative clustering of
//      semantic_cluster.h runs on the resulting table;
//   4. the judge prompt: a template with {question}, {a} (ground truth) and {b} (student);
//   5. multiple choice: the prompt with lettered options, and the letter from \boxed{}.
//
// Header-only, static inline; compiles as C11 and as C++.
#ifndef FREEFORM_H
#define FREEFORM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "../semantic_cluster.h"

#define FF_ANSWER_CAP 1024    // bytes of an extracted answer
#define FF_SENTENCE_CAP 400   // a last sentence longer than this keeps its last 400 bytes
#define FF_ROUGE_MAX_TOK 512  // words of each side ROUGE-L looks at (bounds the O(n m) table)
#define FF_MAX_CHOICES 26     // A..Z

// The flags of the free-form reward, with the EMPO reference's values as defaults.
typedef struct {
    // 1: a ~ b when the judge says Yes both ways (semantic-entropy rule); 0: earlier answer as ground truth only (EMPO
    // reference)
    int bidirectional;
    // Yes when P(Yes) / (P(Yes) + P(No)) > threshold; 0.5 = "P(Yes) > P(No)", the reference's rule
    float threshold;
    float copy_rouge;        // reward 0 when ROUGE-L precision against the question > this (0.8); >= 1 disables
    int copy_substring;      // reward 0 when the answer is a substring of the question (1 = on)
    float no_answer_reward;  // reward of a response with no answer (-0.5)
    // low-confidence cutoff: largest cluster share < this with > 1 cluster -> all 0 (0.2); 0 disables
    float min_share;
} FreeformConfig;

static inline void freeform_config_default(FreeformConfig *c) {
    c->bidirectional = 1; c->threshold = 0.5f; c->copy_rouge = 0.8f; c->copy_substring = 1;
    c->no_answer_reward = -0.5f; c->min_share = 0.2f;
}

// The judge. For each pair k: is student answer b[k] equivalent to ground-truth answer a[k], for
// question q[k]? Writes P(Yes) normalized over {Yes, No} into p_yes[k]. Returns 0, or -1 on failure.
// Pairs of one question come together, so an implementation can share the question's prefix.
typedef int (*JudgeFn)(void *ctx, const char *const *q, const char *const *a, const char *const *b, int n,
                       float *p_yes);

// A judge with its settings, as the training loop holds it.
typedef struct {
    FreeformConfig cfg;
    JudgeFn judge;
    void *ctx;
    long n_pairs;     // judgments asked so far
    double seconds;   // spent in the judge (filled by the caller that times it; optional)
} FreeformScorer;

// Why a response got its reward.
enum { FF_OK, FF_NO_ANSWER, FF_COPY, FF_LOW_CONF };
static const char *const FF_WHY[4] = {"ok", "no answer", "copies the question", "low confidence"};

// ---------------------------------------------------------------------------------------------
// Text helpers (ASCII case folding only: no locale, same result everywhere)

static inline int ff__lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static inline int ff__space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static inline int ff__word(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

// Copies s[b..e) into out (cap bytes with the NUL), trimmed. Returns the length.
static inline size_t ff__emit(const char *s, size_t b, size_t e, char *out, size_t cap) {
    while (b < e && ff__space((unsigned char)s[b])) b++;
    while (e > b && ff__space((unsigned char)s[e - 1])) e--;
    size_t n = e - b;
    if (n > cap - 1) n = cap - 1;
    memcpy(out, s + b, n);
    out[n] = 0;
    return n;
}

// Unwraps \text{...} (and \textbf, \mathrm) in place: "\text{Paris}" -> "Paris", as the reference's
// normalize_prediction does to boxed answers.
static inline void ff__unwrap_text(char *s) {
    static const char *const cmds[3] = {"\\text{", "\\textbf{", "\\mathrm{"};
    for (int k = 0; k < 3; k++) {
        size_t L = strlen(cmds[k]);
        char *p;
        while ((p = strstr(s, cmds[k])) != NULL) {
            char *q = p + L;
            int depth = 1;
            char *e = q;
            while (*e && depth > 0) { if (*e == '{') depth++; else if (*e == '}') depth--; if (depth > 0) e++; }
            if (!*e) break;                                   // unbalanced: leave it
            size_t inner = (size_t)(e - q);
            memmove(p, q, inner);                             // the content moves left over the command
            memmove(p + inner, e + 1, strlen(e + 1) + 1);     // and the rest follows it
        }
    }
}

// The final answer of a free-form response: the last balanced \boxed{...} / \fbox{...} with
// \text{} unwrapped (a response with a box but an empty one has no answer); else the last sentence (split at . ! ?
// followed by a space, and at line ends;
// its final punctuation dropped). Returns 1 and writes out, or 0 when there is no answer (empty
// response, an empty box, only punctuation). Sentence splitting knows no abbreviations: "e.g. x"
// ends a sentence at "e.g.". The reference has no sentence fallback at all (no box: no answer).
static inline int ff_extract_answer(const char *response, char *out, size_t cap) {
    if (cap) out[0] = 0;
    if (!response || cap < 2) return 0;
    if (strstr(response, "\\boxed") || strstr(response, "\\fbox")) {
        // a response with a box answers in the box: an empty one is no answer, not a cue to look elsewhere
        char *buf = (char *)malloc(cap);
        size_t n = 0;
        if (buf && math_extract_answer(response, buf, cap)) {
            ff__unwrap_text(buf);
            n = ff__emit(buf, 0, strlen(buf), out, cap);
        }
        free(buf);
        return n > 0;
    }
    size_t n = strlen(response), e = n;
    // drop trailing space and closing punctuation, then find where the last sentence starts
    while (e > 0
           && (ff__space((unsigned char)response[e - 1]) || response[e - 1] == '.' || response[e - 1] == '!'
               || response[e - 1] == '?')) e--;
    size_t b = e;
    while (b > 0) {
        char c = response[b - 1];
        if (c == '\n') break;
        if ((c == '.' || c == '!' || c == '?') && b < e && ff__space((unsigned char)response[b])) break;
        b--;
    }
    if (e - b > FF_SENTENCE_CAP) {   // keep the end, starting on a UTF-8 character boundary
        b = e - FF_SENTENCE_CAP;
        while (b < e && ((unsigned char)response[b] & 0xC0) == 0x80) b++;
    }
    size_t k = ff__emit(response, b, e, out, cap);
    int has_word = 0;
    for (size_t i = 0; i < k; i++) has_word |= ff__word((unsigned char)out[i]);
    if (!has_word) { out[0] = 0; return 0; }
    return 1;
}

// The form under which two answers are "the same string": ASCII lower case, runs of space as one
// space, trimmed, without a final period. Identical forms are equal without asking the judge.
static inline void ff_normalize(const char *s, char *out, size_t cap) {
    size_t n = 0;
    int pending_space = 0;
    for (; *s && n + 2 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (ff__space(c)) { pending_space = n > 0; continue; }
        if (pending_space) { out[n++] = ' '; pending_space = 0; }
        out[n++] = (char)ff__lower(c);
    }
    while (n > 0 && (out[n - 1] == '.' || out[n - 1] == ' ')) n--;
    out[n] = 0;
}

// Words for ROUGE-L: runs of letters, digits and non-ASCII bytes, lower-cased; everything else
// separates. Returns the number of words (at most max), each as [start, len) of s.
static inline int ff__words(const char *s, int *start, int *len, int max) {
    int n = 0;
    for (int i = 0; s[i] && n < max;) {
        if (!ff__word((unsigned char)s[i])) { i++; continue; }
        int j = i;
        while (s[j] && ff__word((unsigned char)s[j])) j++;
        start[n] = i; len[n] = j - i; n++;
        i = j;
    }
    return n;
}
static inline int ff__word_eq(const char *x, int xs, int xl, const char *y, int ys, int yl) {
    if (xl != yl) return 0;
    for (int k = 0; k < xl; k++)
        if (ff__lower((unsigned char)x[xs + k]) != ff__lower((unsigned char)y[ys + k])) return 0;
    return 1;
}

// ROUGE-L precision of the answer against the question: LCS(answer words, question words) /
// |answer words|, case-insensitive. How much of the answer is the question's own words in order.
// An answer without any word gives 1 (the reference's scorer fails on it and it counts as 1).
static inline float ff_rouge_l_precision(const char *answer, const char *question) {
    int as[FF_ROUGE_MAX_TOK], al[FF_ROUGE_MAX_TOK], qs[FF_ROUGE_MAX_TOK], ql[FF_ROUGE_MAX_TOK];
    int na = ff__words(answer, as, al, FF_ROUGE_MAX_TOK), nq = ff__words(question, qs, ql, FF_ROUGE_MAX_TOK);
    if (na == 0) return 1.0f;
    if (nq == 0) return 0.0f;
    int prev[FF_ROUGE_MAX_TOK + 1], cur[FF_ROUGE_MAX_TOK + 1];   // one row of the LCS table at a time
    memset(prev, 0, sizeof(int) * (size_t)(nq + 1));
    for (int i = 1; i <= na; i++) {
        cur[0] = 0;
        for (int j = 1; j <= nq; j++) {
            if (ff__word_eq(answer, as[i - 1], al[i - 1], question, qs[j - 1], ql[j - 1])) cur[j] = prev[j - 1] + 1;
            else cur[j] = prev[j] > cur[j - 1] ? prev[j] : cur[j - 1];
        }
        memcpy(prev, cur, sizeof(int) * (size_t)(nq + 1));
    }
    return (float)prev[nq] / (float)na;
}

// Case-insensitive (ASCII) substring test: is needle inside hay?
static inline int ff__ci_contains(const char *hay, const char *needle) {
    size_t n = strlen(needle), h = strlen(hay);
    if (n == 0) return 1;
    for (size_t i = 0; i + n <= h; i++) {
        size_t k = 0;
        while (k < n && ff__lower((unsigned char)hay[i + k]) == ff__lower((unsigned char)needle[k])) k++;
        if (k == n) return 1;
    }
    return 0;
}

// The copy guard: does the answer largely repeat the question?
static inline int ff_copies_question(const char *answer, const char *question, const FreeformConfig *cfg) {
    if (!question) return 0;
    if (cfg->copy_substring && ff__ci_contains(question, answer)) return 1;
    return cfg->copy_rouge < 1.0f && ff_rouge_l_precision(answer, question) > cfg->copy_rouge;
}

// ---------------------------------------------------------------------------------------------
// The judge's prompt

// The default: the format TIGER-Lab/general-verifier was trained on ("User: ### Question: ...
// ### Ground Truth Answer: ... ### Student Answer: ... Assistant:"), with "Final Decision:"
// already written, so that the next token is the decision, " Yes" or " No".
#define FF_DEFAULT_JUDGE_TEMPLATE \
    "User: ### Question: {question}\n\n### Ground Truth Answer: {a}\n\n### Student Answer: {b}\n\n" \
    "For the above question, please verify if the student's answer is equivalent to the ground truth answer.\n" \
    "Do not solve the question by yourself; just check if the student's answer is equivalent to the ground truth " \
    "answer.\n" \
    "If the student's answer is correct, output \"Final Decision: Yes\". If the student's answer is incorrect, " \
    "output \"Final Decision: No\". Assistant: Final Decision:"

// NULL if the template is usable, else what is wrong with it: {a} and {b} are required.
static inline const char *ff_template_invalid(const char *tmpl) {
    if (!tmpl) return "no template";
    if (!strstr(tmpl, "{a}")) return "the judge template has no {a} placeholder (the ground-truth answer)";
    if (!strstr(tmpl, "{b}")) return "the judge template has no {b} placeholder (the student answer)";
    return NULL;
}

// The template with {question}, {a}, {b} filled in (every occurrence), malloc'd; NULL if out of memory.
static inline char *ff_render_judge_prompt(const char *tmpl, const char *q, const char *a, const char *b) {
    const char *keys[3] = {"{question}", "{a}", "{b}"}, *vals[3] = {q ? q : "", a ? a : "", b ? b : ""};
    size_t cap = strlen(tmpl) + 1;
    for (const char *p = tmpl; *p; p++)
        for (int k = 0; k < 3; k++) if (strncmp(p, keys[k], strlen(keys[k])) == 0) cap += strlen(vals[k]);
    char *out = (char *)malloc(cap), *o = out;
    if (!out) return NULL;
    for (const char *p = tmpl; *p;) {
        int hit = -1;
        for (int k = 0; k < 3 && hit < 0; k++) if (strncmp(p, keys[k], strlen(keys[k])) == 0) hit = k;
        if (hit < 0) { *o++ = *p++; continue; }
        size_t n = strlen(vals[hit]);
        memcpy(o, vals[hit], n); o += n;
        p += strlen(keys[hit]);
    }
    *o = 0;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Clustering on an equality table

// Greedy first-representative clustering (as semantic_cluster_parsed) when equality is a table:
// answer i is one of U distinct answers, uid[i] (-1: no answer), and distinct answers u, v are
// equal when eq[u * U + v] (the caller makes it symmetric). An answer joins the first cluster
// whose representative equals it, else starts a new one.
static inline void semantic_cluster_table(const int *uid, int G, const unsigned char *eq, int U, SemanticGroup *out) {
    if (G > SC_MAX_G) G = SC_MAX_G;
    if (G < 0) G = 0;
    memset(out, 0, sizeof *out);
    out->G = G;
    for (int i = 0; i < G; i++) {
        out->cluster[i] = -1;
        int u = uid[i];
        if (u < 0 || u >= U) { out->n_missing++; continue; }
        out->has_answer[i] = 1;
        int c = 0;
        for (; c < out->n_clusters; c++) {
            int r = uid[out->rep[c]];
            if (r == u || (eq && eq[(size_t)r * U + u])) break;   // eq NULL: only identical answers
        }
        if (c == out->n_clusters) { out->rep[c] = i; out->n_clusters++; }
        out->cluster[i] = c;
        out->size[c]++;
    }
    if (G > 0) semantic_group_finish(out);
}

// ---------------------------------------------------------------------------------------------
// One group: which pairs to judge, then clusters, entropy and guarded rewards

typedef struct {
    int G, U;                 // responses; distinct (normalized) answers
    int uid[SC_MAX_G];        // distinct-answer index of each response, -1: no answer
    int first[SC_MAX_G];      // a response holding each distinct answer (its first)
    int n_pairs;              // judgments to ask: (ground truth pa[k], student pb[k]) as distinct-answer indices
    int *pa, *pb;
} FreeformPlan;

static inline void freeform_plan_free(FreeformPlan *pl) {
    free(pl->pa);
    free(pl->pb);
    pl->pa = pl->pb = NULL;
    pl->n_pairs = 0;
}

// Dedupes the answers (NULL or "" = no answer) and lists every pair of distinct answers the greedy
// clustering may compare, the earlier answer as ground truth (and the reverse too when
// bidirectional): U(U-1)/2 pairs, or U(U-1). Returns 0, or -1 if out of memory.
static inline int freeform_plan(FreeformPlan *pl, const char *const *answers, int G, const FreeformConfig *cfg) {
    memset(pl, 0, sizeof *pl);
    if (G > SC_MAX_G) G = SC_MAX_G;
    if (G < 0) G = 0;
    pl->G = G;
    char (*norm)[FF_ANSWER_CAP] = G ? (char (*)[FF_ANSWER_CAP])malloc((size_t)G * FF_ANSWER_CAP) : NULL;
    if (G && !norm) return -1;
    for (int i = 0; i < G; i++) {
        pl->uid[i] = -1;
        if (!answers[i] || !answers[i][0]) continue;
        ff_normalize(answers[i], norm[i], FF_ANSWER_CAP);
        int u = 0;
        for (; u < pl->U; u++) if (strcmp(norm[pl->first[u]], norm[i]) == 0) break;
        if (u == pl->U) pl->first[pl->U++] = i;
        pl->uid[i] = u;
    }
    free(norm);
    int U = pl->U, per = cfg->bidirectional ? 2 : 1;
    size_t np = (size_t)U * (U > 0 ? U - 1 : 0) / 2 * per;
    pl->pa = (int *)malloc((np ? np : 1) * sizeof(int));
    pl->pb = (int *)malloc((np ? np : 1) * sizeof(int));
    if (!pl->pa || !pl->pb) { freeform_plan_free(pl); return -1; }
    for (int u = 0; u < U; u++)
        for (int v = u + 1; v < U; v++) {
            pl->pa[pl->n_pairs] = u; pl->pb[pl->n_pairs] = v; pl->n_pairs++;
            if (per == 2) { pl->pa[pl->n_pairs] = v; pl->pb[pl->n_pairs] = u; pl->n_pairs++; }
        }
    return 0;
}

// Per-response details of a scored group.
typedef struct {
    unsigned char why[SC_MAX_G];   // FF_OK / FF_NO_ANSWER / FF_COPY / FF_LOW_CONF
    int n_pairs, n_unique;         // judgments used, distinct answers
    float max_share;               // largest cluster share (missing answers are singletons)
} FreeformStats;

// Clusters with the judge's verdicts p_yes[k] for the plan's pairs, then the guarded rewards:
//   no answer                                      -> cfg->no_answer_reward (-0.5)
//   copies the question (ROUGE-L p > 0.8 or substring) -> 0
//   largest share < min_share with > 1 cluster        -> 0
//   otherwise                                       -> p(cluster of i)
// in that order, as the reference. Guarded answers still count in the clusters and the entropy.
// out->reward holds the guarded rewards and out->advantage their group normalization.
static inline void freeform_finish(const FreeformPlan *pl, const char *const *answers, const char *question,
                                   const float *p_yes,
                                   const FreeformConfig *cfg, SemanticGroup *out, FreeformStats *st) {
    int U = pl->U, G = pl->G;
    unsigned char *eq = (unsigned char *)calloc((size_t)(U > 0 ? U * U : 1), 1);
    unsigned char *yes = (unsigned char *)calloc((size_t)(U > 0 ? U * U : 1), 1);   // yes[a*U+b]: the judge's verdict
    if (!eq || !yes) {   // out of memory: every distinct answer alone
        free(eq); free(yes);
        semantic_cluster_table(pl->uid, G, NULL, U, out);
    } else {
        for (int k = 0; k < pl->n_pairs; k++) yes[(size_t)pl->pa[k] * U + pl->pb[k]] = p_yes
            && p_yes[k] > cfg->threshold;
        for (int u = 0; u < U; u++)
            for (int v = u + 1; v < U; v++) {
                int e = cfg->bidirectional ? yes[(size_t)u * U + v] && yes[(size_t)v * U + u] : yes[(size_t)u * U + v];
                eq[(size_t)u * U + v] = eq[(size_t)v * U + u] = (unsigned char)e;
            }
        semantic_cluster_table(pl->uid, G, eq, U, out);
        free(eq); free(yes);
    }
    int total = out->n_clusters + out->n_missing;
    float max_share = out->n_missing > 0 && G > 0 ? 1.0f / G : 0.0f;
    for (int c = 0; c < out->n_clusters; c++) if (out->p[c] > max_share) max_share = out->p[c];
    int low_conf = cfg->min_share > 0.0f && total > 1 && max_share < cfg->min_share;
    FreeformStats local;
    if (!st) st = &local;
    memset(st, 0, sizeof *st);
    st->n_pairs = pl->n_pairs; st->n_unique = U; st->max_share = max_share;
    for (int i = 0; i < G; i++) {
        const char *a = answers[i];
        if (!a || !a[0] || pl->uid[i] < 0) { out->reward[i] = cfg->no_answer_reward; st->why[i] = FF_NO_ANSWER; }
        else if (ff_copies_question(a, question, cfg)) { out->reward[i] = 0.0f; st->why[i] = FF_COPY; }
        else if (low_conf) { out->reward[i] = 0.0f; st->why[i] = FF_LOW_CONF; }
        else { st->why[i] = FF_OK; }   // out->reward[i] is already p(cluster of i)
    }
    group_advantages(out->reward, G, out->advantage);
}

// One group end to end: plan, one batched judge call, clusters and rewards. Returns 0, or -1 if
// the judge failed or memory ran out (then every answer is its own cluster, rewards still guarded).
static inline int freeform_cluster(const char *const *answers, int G, const char *question, JudgeFn judge, void *ctx,
                                   const FreeformConfig *cfg, SemanticGroup *out, FreeformStats *st) {
    FreeformPlan pl;
    if (freeform_plan(&pl, answers, G, cfg) != 0) return -1;
    int n = pl.n_pairs, rc = 0;
    float *p = (float *)calloc((size_t)(n ? n : 1), sizeof(float));
    const char **qa = (const char **)malloc((size_t)(n ? n : 1) * 3 * sizeof(char *));
    if (!p || !qa) rc = -1;
    else if (n > 0) {
        for (int k = 0; k < n; k++) {
            qa[k] = question;
            qa[n + k] = answers[pl.first[pl.pa[k]]];
            qa[2 * n + k] = answers[pl.first[pl.pb[k]]];
        }
        if (judge(ctx, qa, qa + n, qa + 2 * n, n, p) != 0) { rc = -1; memset(p, 0, (size_t)n * sizeof(float)); }
    }
    freeform_finish(&pl, answers, question, p, cfg, out, st);
    free(p); free(qa);
    freeform_plan_free(&pl);
    return rc;
}

// Many groups (n_groups x G answers, question k for group k) with ONE judge call for all their
// pairs, so a batched judge sees every pair of a training step at once. Returns 0 or -1 as above;
// *n_pairs_out (may be NULL) gets the number of judgments.
static inline int freeform_cluster_batch(const char *const *answers, const char *const *questions, int n_groups, int G,
                                         JudgeFn judge, void *ctx, const FreeformConfig *cfg, SemanticGroup *out,
                                         FreeformStats *st, long *n_pairs_out) {
    FreeformPlan *pl = (FreeformPlan *)calloc((size_t)(n_groups > 0 ? n_groups : 1), sizeof(FreeformPlan));
    if (!pl) return -1;
    int rc = 0;
    size_t total = 0;
    for (int g = 0; g < n_groups; g++) {
        if (freeform_plan(&pl[g], answers + (size_t)g * G, G, cfg) != 0) rc = -1;
        total += (size_t)pl[g].n_pairs;
    }
    float *p = (float *)calloc(total ? total : 1, sizeof(float));
    const char **qa = (const char **)malloc((total ? total : 1) * 3 * sizeof(char *));
    if (!p || !qa) rc = -1;
    if (rc == 0 && total > 0) {
        size_t k = 0;
        for (int g = 0; g < n_groups; g++) {
            const char *const *ans = answers + (size_t)g * G;
            for (int j = 0; j < pl[g].n_pairs; j++, k++) {
                qa[k] = questions[g];
                qa[total + k] = ans[pl[g].first[pl[g].pa[j]]];
                qa[2 * total + k] = ans[pl[g].first[pl[g].pb[j]]];
            }
        }
        if (judge(ctx, qa, qa + total, qa + 2 * total, (int)total, p) != 0) {
            rc = -1;
            memset(p, 0, total * sizeof(float));
        }
    }
    size_t k = 0;
    for (int g = 0; g < n_groups; g++) {
        freeform_finish(&pl[g], answers + (size_t)g * G, questions[g], p ? p + k : NULL, cfg, &out[g],
                        st ? &st[g] : NULL);
        k += (size_t)pl[g].n_pairs;
        freeform_plan_free(&pl[g]);
    }
    if (n_pairs_out) *n_pairs_out = (long)total;
    free(p); free(qa); free(pl);
    return rc;
}

// The judge to use without a verifier model: normalized strings equal (ff_normalize). Cheap, and
// deterministic for tests; it knows nothing about paraphrases.
static inline int ff_exact_judge(void *ctx, const char *const *q, const char *const *a, const char *const *b, int n,
                                 float *p_yes) {
    (void)ctx; (void)q;
    char x[FF_ANSWER_CAP], y[FF_ANSWER_CAP];
    for (int k = 0; k < n; k++) {
        ff_normalize(a[k], x, sizeof x); ff_normalize(b[k], y, sizeof y);
        p_yes[k] = strcmp(x, y) == 0 ? 1.0f : 0.0f;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Multiple choice (MMLU-Pro: up to 10 options, GPQA: 4)

// "question\n\nA. first\nB. second\n...\n\nAnswer with the letter of the correct option in \boxed{}."
// malloc'd; NULL if out of memory or more than FF_MAX_CHOICES choices.
static inline char *ff_render_mc(const char *question, const char *const *choices, int n) {
    static const char *tail = "\n\nAnswer with the letter of the correct option in \\boxed{}.";
    if (n < 1 || n > FF_MAX_CHOICES) return NULL;
    size_t cap = strlen(question) + strlen(tail) + 3;
    for (int i = 0; i < n; i++) cap += strlen(choices[i]) + 5;
    char *s = (char *)malloc(cap);
    if (!s) return NULL;
    size_t k = (size_t)snprintf(s, cap, "%s\n", question);
    for (int i = 0; i < n; i++) k += (size_t)snprintf(s + k, cap - k, "\n%c. %s", 'A' + i, choices[i]);
    snprintf(s + k, cap - k, "%s", tail);
    return s;
}

// The letter (0 = A) of a multiple-choice response with n options, taken from the last \boxed{}:
// "B", "(B)", "B.", "B) text", "\text{B}", or the text of an option itself. -1 if there is no box or
// it names no option.
static inline int ff_extract_letter(const char *response, const char *const *choices, int n) {
    char buf[FF_ANSWER_CAP];
    if (!response || (!strstr(response, "\\boxed") && !strstr(response, "\\fbox"))) return -1;
    if (!math_extract_answer(response, buf, sizeof buf)) return -1;
    ff__unwrap_text(buf);
    if (choices) {   // the option's text instead of its letter (checked first: "A cat" may be an option)
        char x[FF_ANSWER_CAP], y[FF_ANSWER_CAP];
        ff_normalize(buf, x, sizeof x);
        for (int i = 0; i < n; i++) {
            ff_normalize(choices[i], y, sizeof y);
            if (y[0] && strcmp(x, y) == 0) return i;
        }
    }
    const char *s = buf;
    while (ff__space((unsigned char)*s) || *s == '(' || *s == '[') s++;
    int c = (unsigned char)*s;
    if (c >= 'a' && c <= 'z') c -= 32;
    if (c < 'A' || c >= 'A' + n) return -1;
    // the letter alone, or followed by ) ] . : , and then anything ("B) Paris"); "A cat" is not a letter
    int next = (unsigned char)s[1];
    if (next == 0 || next == ')' || next == ']' || next == '.' || next == ':' || next == ',') return c - 'A';
    const char *t = s + 1;
    while (ff__space((unsigned char)*t)) t++;
    return *t == 0 ? c - 'A' : -1;
}

// A gold answer given as a letter ("C", "(C)") or as the text of one of the options -> its index; -1 if neither.
static inline int ff_gold_letter(const char *answer, const char *const *choices, int n) {
    if (!answer) return -1;
    const char *s = answer;
    while (ff__space((unsigned char)*s) || *s == '(') s++;
    int c = (unsigned char)*s;
    if (c >= 'a' && c <= 'z') c -= 32;
    if (c >= 'A' && c < 'A' + n && !ff__word((unsigned char)s[1])) {
        const char *t = s + 1;
        while (*t == ')' || *t == '.' || ff__space((unsigned char)*t)) t++;
        if (!*t) return c - 'A';
    }
    char x[FF_ANSWER_CAP], y[FF_ANSWER_CAP];
    ff_normalize(answer, x, sizeof x);
    for (int i = 0; i < n; i++) {
        ff_normalize(choices[i], y, sizeof y);
        if (y[0] && strcmp(x, y) == 0) return i;
    }
    return -1;
}

#endif // FREEFORM_H
