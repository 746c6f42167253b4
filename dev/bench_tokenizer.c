// bench_tokenizer.c: encode throughput of tokenizer.h on the `problem` texts of a JSONL file, one
// thread. Run by dev/bench_tokenizer.py, which times HF `tokenizers` on the same text.
//   ./bench_tok TOKENIZER_JSON DATA_JSONL [REPEATS]
// Prints: "ours: per_problem MB/s %.2f joined MB/s %.2f bytes %zu problems %d ids %ld"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../empoc/json.h"
#include "../empoc/tokenizer.h"

typedef struct { char **s; size_t *len; int n, cap; size_t bytes; } Texts;

static int collect(const JDoc *d, int root, int line, void *user) {
    Texts *t = (Texts *)user;
    int node = json_get(d, root, "problem");
    const char *p = json_str(d, node);
    (void)line;
    if (!p) return 0;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 1024;
        t->s = (char **)realloc(t->s, (size_t)t->cap * sizeof(char *));
        t->len = (size_t *)realloc(t->len, (size_t)t->cap * sizeof(size_t));
    }
    size_t n = (size_t)json_len(d, node);
    t->s[t->n] = (char *)malloc(n + 1);
    memcpy(t->s[t->n], p, n + 1);
    t->len[t->n++] = n;
    t->bytes += n;
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s TOKENIZER_JSON DATA_JSONL [REPEATS]\n", argv[0]); return 2; }
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1) reps = 1;
    Tokenizer tok; char err[512];
    if (tokenizer_load_json(&tok, argv[1], err, sizeof err)) { fprintf(stderr, "%s\n", err); return 1; }
    Texts t; memset(&t, 0, sizeof t);
    if (jsonl_foreach(argv[2], 0, collect, &t) < 0 || t.n == 0) {
        fprintf(stderr, "no problems in %s\n", argv[2]);
        return 1;
    }
    // joined: the problems separated by newlines, as one text
    char *all = (char *)malloc(t.bytes + (size_t)t.n + 1);
    size_t k = 0;
    for (int i = 0; i < t.n; i++) { memcpy(all + k, t.s[i], t.len[i]); k += t.len[i]; all[k++] = '\n'; }
    long ids_pp = 0, ids_joined = 0;
    double best_pp = 1e30, best_j = 1e30;
    for (int r = 0; r < reps; r++) {   // best of reps, as timeit does
        double t0 = now();
        long n = 0;
        for (int i = 0; i < t.n; i++) {
            int *ids; int m = tokenizer_encode(&tok, t.s[i], t.len[i], 1, &ids);
            n += m; free(ids);
        }
        double t1 = now();
        int *ids; int m = tokenizer_encode(&tok, all, k, 1, &ids);
        free(ids);
        double t2 = now();
        ids_pp = n; ids_joined = m;
        if (t1 - t0 < best_pp) best_pp = t1 - t0;
        if (t2 - t1 < best_j) best_j = t2 - t1;
    }
    printf("ours: per_problem MB/s %.2f joined MB/s %.2f bytes %zu problems %d ids %ld joined_ids %ld\n",
           t.bytes / best_pp / 1e6, k / best_j / 1e6, t.bytes, t.n, ids_pp, ids_joined);
    for (int i = 0; i < t.n; i++) free(t.s[i]);
    free(t.s); free(t.len); free(all);
    tokenizer_free(&tok);
    return 0;
}
