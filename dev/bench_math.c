// bench_math.c: math_answers_equal calls per second on the first N pairs of the agreement
// fixture (make bench_math runs it next to Python's math_verify via dev/bench_math.py).
//   usage: bench_math FIXTURE N  -> prints "c_calls_per_s X" and "c_parsed_calls_per_s Y"
#include <time.h>
#include "../empoc/json.h"
#include "../math_verify.h"

typedef struct { char **a, **b; int n, cap; } Pairs;
static int cb(const JDoc *d, int root, int line, void *user) {
    (void)line;
    Pairs *p = (Pairs *)user;
    if (p->n >= p->cap) return 1;
    const char *a = json_str(d, json_get(d, root, "a")), *b = json_str(d, json_get(d, root, "b"));
    if (!a || !b) return 0;
    p->a[p->n] = strdup(a); p->b[p->n] = strdup(b); p->n++;
    return 0;
}
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s FIXTURE N\n", argv[0]); return 1; }
    Pairs p; p.cap = atoi(argv[2]); p.n = 0;
    p.a = (char **)calloc((size_t)p.cap, sizeof(char *)); p.b = (char **)calloc((size_t)p.cap, sizeof(char *));
    if (jsonl_foreach(argv[1], 1, cb, &p) < 0 || p.n == 0) { fprintf(stderr, "cannot read %s\n", argv[1]); return 1; }
    // from strings (parse both + compare), as math_answers_equal is called
    long calls = 0, eq = 0;
    double t0 = now_s(), t;
    do {
        for (int i = 0; i < p.n; i++) eq += math_answers_equal(p.a[i], p.b[i]);
        calls += p.n;
        t = now_s() - t0;
    } while (t < 1.0);
    printf("pairs %d equal %ld\n", p.n, eq / (calls / p.n));
    printf("c_calls_per_s %.1f\n", calls / t);
    // pre-parsed (what clustering does: parse each answer once, compare many times)
    MathAnswer *A = (MathAnswer *)malloc(2 * (size_t)p.n * sizeof(MathAnswer));
    for (int i = 0; i < p.n; i++) { math_parse(p.a[i], &A[2 * i]); math_parse(p.b[i], &A[2 * i + 1]); }
    calls = 0; t0 = now_s();
    do {
        for (int i = 0; i < p.n; i++) eq += math_parsed_equal(&A[2 * i], &A[2 * i + 1]);
        calls += p.n;
        t = now_s() - t0;
    } while (t < 1.0);
    printf("c_parsed_calls_per_s %.1f\n", calls / t);
    return 0;
}
