// libFuzzer target for math_verify.h / semantic_cluster.h (make fuzz_math; make fuzz runs it).
// The input is split at its first NUL into two answers a and b (b empty if none). Checks, beyond
// "no crash, no sanitizer report": equality is symmetric, an answer equals itself unless it is
// empty, extraction stays inside its buffer, and clustering gives shares that sum to <= 1.
#include "../../math_verify.h"
#include "../../semantic_cluster.h"

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
    char out[64];
    int f = math_extract_answer(a, out, sizeof out);
    if (strlen(out) >= sizeof out || (!f && out[0])) abort();
    const char *answers[4] = {a, b, out, a};
    SemanticGroup g;
    semantic_cluster(answers, 4, &g);
    float s = 0;
    for (int c = 0; c < g.n_clusters; c++) s += g.p[c];
    if (s > 1.0001f || g.entropy < -1e-6f || g.entropy > logf(4.0f) + 1e-4f) abort();
    free(buf);
    return 0;
}
