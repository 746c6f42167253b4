// semantic_cluster.h: EMPO's rewards from a group of G answers to one prompt.
// Answers are clustered by mathematical equivalence (math_verify.h); the cluster shares p(c) give
// the semantic entropy H = -sum p log p, each response's EMPO reward r_i = p(cluster of i), and
// the group-normalized advantages. Also the majority answer and its share (TTRL, maj@k).
//
// Responses without an answer: reward 0 and cluster id -1. In the entropy each one counts as its
// own singleton (p = 1/G), as the EMPO reference does (it labels them "no answer {index}", which
// equal nothing). So a group where nobody answers has the maximal entropy log G and is dropped by
// the reference's filter H < log G. All p divide by G, answered or not.
//
// Header-only; compiles as C11 and as C++.
#ifndef SEMANTIC_CLUSTER_H
#define SEMANTIC_CLUSTER_H

#include "math_verify.h"

#define SC_MAX_G 256

typedef struct {
    int G;                     // responses in the group
    int has_answer[SC_MAX_G];  // 1 if response i has an answer
    int cluster[SC_MAX_G];     // cluster id of each response (0..n_clusters-1), -1 if no answer
    int n_clusters;            // clusters of answered responses
    int n_missing;             // responses without an answer
    int size[SC_MAX_G];        // |c| for each cluster
    int rep[SC_MAX_G];         // representative (first member) of each cluster
    float p[SC_MAX_G];         // p(c) = |c| / G for each cluster
    float entropy;             // semantic entropy, natural log; missing answers count as singletons
    float reward[SC_MAX_G];    // EMPO: r_i = p(cluster of i), 0 if no answer
    float advantage[SC_MAX_G]; // (r - mean) / (std_unbiased + 1e-4)
    int majority;              // a representative response of the largest cluster (-1 if none)
    float majority_share;      // its p (ties: see semantic_cluster_parsed)
} SemanticGroup;

// Group-normalized advantages: (r - mean) / (std + 1e-4), std with the unbiased (G-1) estimator
// as torch.std in the GRPO/EMPO reference. Shared by the other rewards (grpo, ttrl). G = 1 gives 0.
static inline void group_advantages(const float *r, int G, float *adv) {
    if (G <= 0) return;
    double mean = 0, var = 0;
    for (int i = 0; i < G; i++) mean += r[i];
    mean /= G;
    for (int i = 0; i < G; i++) var += (r[i] - mean) * (r[i] - mean);
    double sd = G > 1 ? sqrt(var / (G - 1)) : 0.0;
    for (int i = 0; i < G; i++) adv[i] = (float)((r[i] - mean) / (sd + 1e-4));
}

// Keep the group for training? The reference keeps H < log G (hi = log G, exclusive); lo allows
// also dropping groups that are already certain. Keeps lo <= H < hi.
static inline int entropy_in_band(float H, float lo, float hi) { return H >= lo && H < hi; }

// From cluster assignments (G, cluster[], has_answer[], n_clusters, size[], rep[], n_missing set),
// the rest of the group: p(c) = |c| / G, the semantic entropy with each missing answer a
// singleton, the majority, and the plain EMPO rewards and advantages. Shared by the math
// clustering below and the judge-table clustering of freeform.h, so both agree on all of it.
static inline void semantic_group_finish(SemanticGroup *out) {
    int G = out->G;
    double H = 0;
    out->majority = -1;
    for (int c = 0; c < out->n_clusters; c++) {
        out->p[c] = (float)out->size[c] / (float)G;
        double p = (double)out->size[c] / G;
        H -= p * log(p);
        if (out->majority < 0 || out->size[c] > out->size[out->cluster[out->majority]]) out->majority = out->rep[c];
    }
    if (out->n_missing > 0) H += out->n_missing * (1.0 / G) * log((double)G);
    out->entropy = (float)H;
    out->majority_share = out->majority >= 0 ? out->p[out->cluster[out->majority]] : 0.0f;
    for (int i = 0; i < G; i++) out->reward[i] = out->cluster[i] >= 0 ? out->p[out->cluster[i]] : 0.0f;
    group_advantages(out->reward, G, out->advantage);
}

// Does a parsed answer say nothing? Text that normalizes to nothing ("\\quad", "$", ".") equals no
// answer, not even itself, so it is counted as missing instead of as a singleton cluster.
static inline int sc_answer_empty(const MathAnswer *A) { return !A || (!A->raw && A->canon_len == 0); }
// The key that orders answers canonically: the normalized text (raw text for over-long answers).
static inline int sc_key_cmp(const MathAnswer *A, const MathAnswer *B) {
    const char *a = A->raw ? A->raw : A->canon, *b = B->raw ? B->raw : B->canon;
    size_t la = A->raw ? A->raw_len : (size_t)A->canon_len, lb = B->raw ? B->raw_len : (size_t)B->canon_len;
    int d = memcmp(a, b, la < lb ? la : lb);
    return d ? d : (la < lb ? -1 : la > lb);
}
static inline int sc__find(int *parent, int i) {
    while (parent[i] != i) { parent[i] = parent[parent[i]]; i = parent[i]; }
    return i;
}
// Clusters already-parsed answers (NULL entry = no answer). The clusters are the connected components
// of "equal" (every pair compared, then the transitive closure): an equivalence relation whose
// partition does not depend on the order of the G answers, even where equality itself is not
// transitive (x=5 = 5 = y=5; doc/math_verify.md). Cluster ids and representatives follow the first
// member. The majority is the largest cluster, ties broken by the smallest normalized text among
// each cluster's members, so the majority cluster is the same whatever the order.
static inline void semantic_cluster_parsed(const MathAnswer *const *ans, int G, SemanticGroup *out) {
    if (G > SC_MAX_G) G = SC_MAX_G;
    if (G < 0) G = 0;
    memset(out, 0, sizeof *out);
    out->G = G;
    out->majority = -1;
    int parent[SC_MAX_G];
    for (int i = 0; i < G; i++) {
        out->cluster[i] = -1;
        parent[i] = i;
        if (sc_answer_empty(ans[i])) { out->n_missing++; continue; }
        out->has_answer[i] = 1;
    }
    for (int i = 0; i < G; i++) {
        if (!out->has_answer[i]) continue;
        for (int j = i + 1; j < G; j++) {
            if (!out->has_answer[j]) continue;
            int ri = sc__find(parent, i), rj = sc__find(parent, j);
            if (ri != rj && math_parsed_equal(ans[i], ans[j])) parent[rj < ri ? ri : rj] = rj < ri ? rj : ri;
        }
    }
    int id_of_root[SC_MAX_G], key[SC_MAX_G];   // key[c]: the member of c with the smallest normalized text
    for (int i = 0; i < G; i++) id_of_root[i] = -1;
    for (int i = 0; i < G; i++) {
        if (!out->has_answer[i]) continue;
        int r = sc__find(parent, i);
        if (id_of_root[r] < 0) {
            id_of_root[r] = out->n_clusters;
            out->rep[out->n_clusters] = key[out->n_clusters] = i;
            out->n_clusters++;
        }
        int c = id_of_root[r];
        out->cluster[i] = c;
        out->size[c]++;
        if (sc_key_cmp(ans[i], ans[key[c]]) < 0) key[c] = i;
    }
    semantic_group_finish(out);
    // the majority: largest cluster, ties broken by text (not by the order); named by its representative
    int best = -1;
    for (int c = 0; c < out->n_clusters; c++)
        if (best < 0 || out->size[c] > out->size[best] ||
            (out->size[c] == out->size[best] && sc_key_cmp(ans[key[c]], ans[key[best]]) < 0)) best = c;
    out->majority = best >= 0 ? out->rep[best] : -1;
    out->majority_share = best >= 0 ? out->p[best] : 0.0f;
}

// Same from extracted answer strings: NULL or "" means no answer.
static inline void semantic_cluster(const char *const *answers, int G, SemanticGroup *out) {
    if (G > SC_MAX_G) G = SC_MAX_G;
    if (G < 0) G = 0;
    MathAnswer *parsed = G > 0 ? (MathAnswer *)malloc((size_t)G * sizeof(MathAnswer)) : NULL;
    const MathAnswer *ptr[SC_MAX_G];
    for (int i = 0; i < G; i++) {
        ptr[i] = NULL;
        if (!answers[i] || !answers[i][0] || !parsed) continue;
        math_parse(answers[i], &parsed[i]);
        if (!sc_answer_empty(&parsed[i])) ptr[i] = &parsed[i];
    }
    if (!parsed) {      // out of memory: every answer becomes its own cluster only if identical strings
        memset(out, 0, sizeof *out);
        out->G = G; out->majority = -1;
        for (int i = 0; i < G; i++) out->cluster[i] = -1;
        out->n_missing = G;
        out->entropy = G > 0 ? (float)log((double)G) : 0.0f;
        return;
    }
    semantic_cluster_parsed(ptr, G, out);
    free(parsed);
}

#endif // SEMANTIC_CLUSTER_H
