// dev/gen_fractions.c: the synthetic task of the embedded default run. Fraction arithmetic
// ("What is 3/4 + 1/6?") whose answers come in several equivalent forms: 11/12, \frac{11}{12},
// and decimals when they terminate (3/4 = 0.75). Exact string matching would split one answer
// into three clusters; math_verify.h puts them together, which is what EMPO needs.
//
// Writes into DIR (default dev/default):
//   sft.jsonl    {problem, solution, answer}: worked solutions for the starter model's SFT
//   train.jsonl  {problem, answer}: prompts for EMPO (the answer is only used by -r grpo)
//   eval.jsonl   {problem, answer}: held out; no problem of it occurs in the other two files
// Deterministic: same seed, same files. Build and run: make default-data
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

static uint64_t rng_state = 20250405;
static uint32_t rnd(uint32_t n) {   // xorshift64*, uniform in [0, n)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 33) % n;
}
static int gcd(int a, int b) { if (a < 0) a = -a; if (b < 0) b = -b; while (b) { int t = a % b; a = b; b = t; } return a; }

// n/d in lowest terms as a/b, b > 0
static void reduce(int n, int d, int *a, int *b) { int g = gcd(n, d); if (g == 0) g = 1; *a = n / g; *b = d / g; if (*b < 0) { *a = -*a; *b = -*b; } }

// Writes the value a/b (lowest terms) in one of the equivalent forms: style 0 "a/b", 1 "\frac{a}{b}",
// 2 a decimal (only if it terminates; else style 0). Integers are written as integers.
static void format_answer(char *out, size_t cap, int a, int b, int style) {
    if (b == 1) { snprintf(out, cap, "%d", a); return; }
    if (style == 2) {
        int t = b;
        while (t % 2 == 0) t /= 2;
        while (t % 5 == 0) t /= 5;
        if (t == 1) {   // terminating: at most 3 decimals for our denominators
            char buf[32];
            snprintf(buf, sizeof buf, "%.4f", (double)a / b);
            char *e = buf + strlen(buf) - 1;
            while (*e == '0') *e-- = 0;
            snprintf(out, cap, "%s", buf);
            return;
        }
        style = 0;
    }
    if (style == 1) {
        if (a < 0) snprintf(out, cap, "-\\frac{%d}{%d}", -a, b);
        else snprintf(out, cap, "\\frac{%d}{%d}", a, b);
    } else snprintf(out, cap, "%d/%d", a, b);
}

typedef struct { int a, b, c, d, op; } Task;   // a/b op c/d, op 0 '+', 1 '-', 2 '*'
static const char OPS[3] = {'+', '-', '*'};

// The worked solution and the answer (in the canonical a/b form, for the gold field). The common
// denominator is simply b*d (no lcm to know); the result is reduced only half of the time, since an
// unreduced fraction is the same answer: 22/24, 11/12, \frac{11}{12} all land in one cluster.
static void solve(const Task *t, char *sol, size_t cap, char *gold, size_t gcap, int style, int reduce_it) {
    int num, den;
    char work[160];
    if (t->op == 2) {
        num = t->a * t->c; den = t->b * t->d;
        snprintf(work, sizeof work, "%d/%d * %d/%d = %d/%d", t->a, t->b, t->c, t->d, num, den);
    } else if (t->b == t->d) {
        num = t->op == 0 ? t->a + t->c : t->a - t->c; den = t->b;
        snprintf(work, sizeof work, "%d/%d %c %d/%d = %d/%d", t->a, t->b, OPS[t->op], t->c, t->d, num, den);
    } else {
        int x = t->a * t->d, y = t->c * t->b;
        num = t->op == 0 ? x + y : x - y; den = t->b * t->d;
        snprintf(work, sizeof work, "%d/%d %c %d/%d = %d/%d %c %d/%d = %d/%d", t->a, t->b, OPS[t->op], t->c, t->d, x, den,
                 OPS[t->op], y, den, num, den);
    }
    int a, b;
    reduce(num, den, &a, &b);
    char ans[64];
    if (reduce_it || num == 0 || den == 1) {
        if (a != num || b != den) {
            size_t n = strlen(work);
            if (b == 1) snprintf(work + n, sizeof work - n, " = %d", a);
            else snprintf(work + n, sizeof work - n, " = %d/%d", a, b);
        }
        format_answer(ans, sizeof ans, a, b, style);
    } else if (style == 1) {   // unreduced, as a \frac
        if (num < 0) snprintf(ans, sizeof ans, "-\\frac{%d}{%d}", -num, den);
        else snprintf(ans, sizeof ans, "\\frac{%d}{%d}", num, den);
    } else snprintf(ans, sizeof ans, "%d/%d", num, den);
    snprintf(sol, cap, "%s, so \\boxed{%s}.", work, ans);
    format_answer(gold, gcap, a, b, 0);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) { if (*s == '"' || *s == '\\') fputc('\\', f); fputc(*s, f); }
    fputc('"', f);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "dev/default";
    int n_sft = 12000, n_train = 4000;
    // every task: proper fractions with denominators 2..9
    Task *all = (Task *)malloc(3 * 40 * 40 * sizeof(Task));
    int n = 0;
    for (int op = 0; op < 3; op++)
        for (int b = 2; b <= 9; b++) for (int a = 1; a < b; a++)
            for (int d = 2; d <= 9; d++) for (int c = 1; c < d; c++) {
                if (gcd(a, b) != 1 || gcd(c, d) != 1) continue;   // operands in lowest terms
                Task t = {a, b, c, d, op};
                all[n++] = t;
            }
    // shuffle, then hold out 300 for evaluation
    for (int i = n - 1; i > 0; i--) { int k = (int)rnd((uint32_t)i + 1); Task t = all[i]; all[i] = all[k]; all[k] = t; }
    int n_eval = 300;
    char path[512], sol[256], gold[64], prob[96];
    const char *names[3] = {"eval.jsonl", "sft.jsonl", "train.jsonl"};
    for (int file = 0; file < 3; file++) {
        snprintf(path, sizeof path, "%s/%s.tmp", dir, names[file]);
        FILE *f = fopen(path, "w");
        if (!f) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
        int count = file == 0 ? n_eval : file == 1 ? n_sft : n_train;
        for (int i = 0; i < count; i++) {
            const Task *t = file == 0 ? &all[i] : &all[n_eval + (int)rnd((uint32_t)(n - n_eval))];
            snprintf(prob, sizeof prob, "What is %d/%d %c %d/%d?", t->a, t->b, OPS[t->op], t->c, t->d);
            solve(t, sol, sizeof sol, gold, sizeof gold, (int)rnd(3), (int)rnd(2));
            fputs("{\"problem\": ", f); json_str(f, prob);
            if (file == 1) { fputs(", \"solution\": ", f); json_str(f, sol); }
            fputs(", \"answer\": ", f); json_str(f, gold);
            fputs("}\n", f);
        }
        if (fclose(f) != 0) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
        char final[512];
        snprintf(final, sizeof final, "%s/%s", dir, names[file]);
        if (rename(path, final) != 0) { fprintf(stderr, "error: cannot rename %s\n", path); return 1; }
        printf("%s: %d lines\n", final, count);
    }
    printf("%d distinct tasks, %d held out for eval\n", n, n_eval);
    free(all);
    return 0;
}
