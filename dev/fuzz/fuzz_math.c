// libFuzzer target for math_verify.h / semantic_cluster.h (make fuzz_math; make fuzz runs it).
// The input is split at its first NUL into two answers a and b (b empty if none). Checks, beyond
// "no crash, no sanitizer report": equality is symmetric, an answer equals itself unless it is
// empty, extraction stays inside its buffer under every policy and reports "found" exactly when it
// wrote something, and clustering gives shares that sum to <= 1 and the same partition in reverse order.
#include "../../math_verify.h"
#include "../../semantic_cluster.h"

static int same_partition(const SemanticGroup *g, const SemanticGroup *h, int G) {
    // h clustered the answers in reverse order: response i of g is response G-1-i of h
    if (g->n_clusters != h->n_clusters || g->n_missing != h->n_missing) return 0;
    for (int i = 0; i < G; i++) for (int j = 0; j < G; j++) {
        int a = g->cluster[i] >= 0 && g->cluster[i] == g->cluster[j];
        int b = h->cluster[G - 1 - i] >= 0 && h->cluster[G - 1 - i] == h->cluster[G - 1 - j];
        if (a != b) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = (char *)malloc(size + 2);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0; buf[size + 1] = 0;
    const char *a = buf;
    size_t la = strlen(a);
    const char *b = la < size ? buf + la + 1 : buf + size + 1;
    int ab = math_answers_equal(a, b), ba = math_answers_equal(b, a);
    if (ab != ba) { fprintf(stderr, "asymmetric: [%s] [%s] %d %d\n", a, b, ab, ba); abort(); }
    MathAnswer *A = (MathAnswer *)malloc(sizeof(MathAnswer));
    math_parse(a, A);
    if (A->canon_len > 0 && !math_parsed_equal(A, A)) { fprintf(stderr, "not reflexive: [%s]\n", a); abort(); }
    free(A);
    char out[3][64];
    for (int p = 0; p < 3; p++) {
        memset(out[p], 'Z', sizeof out[p]);
        int f = math_extract_answer_policy(a, out[p], sizeof out[p], p);
        if (memchr(out[p], 0, sizeof out[p]) == NULL || (!f && out[p][0]) || (f && !out[p][0])) abort();
    }
    char one[1];
    if (math_extract_answer(a, one, 1) || one[0]) abort();
    const char *answers[6] = {a, b, out[0], a, out[1], out[2]}, *rev[6];
    for (int i = 0; i < 6; i++) rev[i] = answers[5 - i];
    SemanticGroup g, h;
    semantic_cluster(answers, 6, &g);
    semantic_cluster(rev, 6, &h);
    float s = 0;
    for (int c = 0; c < g.n_clusters; c++) s += g.p[c];
    if (s > 1.0001f || g.entropy < -1e-6f || g.entropy > logf(6.0f) + 1e-4f) abort();
    if (!same_partition(&g, &h, 6) || fabsf(g.entropy - h.entropy) > 1e-5f) { fprintf(stderr,
        "order-dependent clusters\n"); abort(); }
    free(buf);
    return 0;
}
