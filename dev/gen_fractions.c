// dev/gen_fractions.c: the synthetic task of the embedded default run: multiplying two fractions
// ("What is 3/4 * 2/5?"). It is built to show, in miniature, the two things EMPO rests on.
//
// 1. One answer, many surface forms. The worked solutions come in three correct styles, each
//    ending in a different but equal form: 6/20 (unreduced), \frac{3}{10}, 0.3. Exact string
//    matching would split one answer into three clusters; math_verify.h puts them together.
// 2. The most likely *string* is not the most likely *answer*. A fourth style, in 30% of the
//    worked solutions, is a classic student mistake: "cross multiplying" (a*d)/(b*c), which is
//    division. Each correct style alone (about 23%) is rarer than the mistake, so a model that
//    learned these frequencies answers wrongly when decoding greedily (the first word already
//    picks the style), while the majority over semantically clustered samples is right (the
//    three correct styles together are about 70%). That gap between greedy accuracy and maj@G
//    is what EMPO converts into single-sample accuracy, with no labels.
//
// Writes into DIR (default dev/default):
//   sft.jsonl    {problem, solution, answer}: worked solutions for the starter model's SFT
//   train.jsonl  {problem, answer}: prompts for EMPO (the answer is only used by -r grpo)
//   eval.jsonl   {problem, answer}: held out; none of its problems occurs in the other two files
// Deterministic. Build and run: make default-data
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>

static uint64_t rng_state = 20250405;
static uint32_t rnd(uint32_t n) {   // xorshift64*, uniform in [0, n)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 33) % n;
}
static int gcd(int a,
               int b) { if (a < 0) a = -a; if (b < 0) b = -b; while (b) { int t = a % b; a = b; b = t; } return a; }

// a/b written as a terminating decimal ("0.375"), or 0 if it does not terminate.
static int decimal(char *out, size_t cap, int a, int b) {
    int t = b;
    while (t % 2 == 0) t /= 2;
    while (t % 5 == 0) t /= 5;
    if (t != 1) return 0;
    char buf[32];
    snprintf(buf, sizeof buf, "%.6f", (double)a / b);
    char *e = buf + strlen(buf) - 1;
    while (*e == '0') *e-- = 0;
    if (*e == '.') *e = 0;
    snprintf(out, cap, "%s", buf);
    return 1;
}
// p/q in lowest terms as "n/d" or "n" (into out)
static void reduced(char *out, size_t cap, int p, int q) {
    int g = gcd(p, q), n = p / g, d = q / g;
    if (d == 1) snprintf(out, cap, "%d", n); else snprintf(out, cap, "%d/%d", n, d);
}

// The worked solution of a/b * c/d in one of four styles (0-2 correct, 3 the mistake).
static void solution(char *sol, size_t cap, int a, int b, int c, int d, int style) {
    int p = a * c, q = b * d, g = gcd(p, q);
    char red[32], dec[32];
    reduced(red, sizeof red, p, q);
    if (style == 0)   // multiply straight across, leave it unreduced
        snprintf(sol, cap, "Straight across: %d/%d * %d/%d = %d/%d, so \\boxed{%d/%d}.", a, b, c, d, p, q, p, q);
    else if (style == 1) {   // the same, then reduce, answer as \frac
        if (g == 1) snprintf(sol, cap, "Tops %d*%d = %d, bottoms %d*%d = %d, so \\boxed{\\frac{%d}{%d}}.", a, c, p, b,
                             d, q, p, q);
        else if (q / g == 1) snprintf(sol, cap, "Tops %d*%d = %d, bottoms %d*%d = %d, %d/%d = %d, so \\boxed{%d}.", a,
                                      c, p, b, d, q, p, q, p / g, p / g);
        else snprintf(sol, cap, "Tops %d*%d = %d, bottoms %d*%d = %d, %d/%d = %s, so \\boxed{\\frac{%d}{%d}}.", a, c,
                      p, b, d, q, p, q, red, p / g, q / g);
    } else if (style == 2) {   // as a decimal when it terminates, else reduced
        if (decimal(dec, sizeof dec, p, q)) snprintf(sol, cap, "%d/%d * %d/%d = %d/%d = %s, so \\boxed{%s}.", a, b, c,
                                                     d, p, q, dec, dec);
        else if (g == 1) snprintf(sol, cap, "%d/%d * %d/%d = %d/%d, so \\boxed{%d/%d}.", a, b, c, d, p, q, p, q);
        else snprintf(sol, cap, "%d/%d * %d/%d = %d/%d = %s, so \\boxed{%s}.", a, b, c, d, p, q, red, red);
    } else {   // the mistake: "cross multiplying" gives (a*d)/(b*c), which is a/b divided by c/d
        snprintf(sol, cap, "Cross multiply: %d/%d * %d/%d = %d/%d, so \\boxed{%d/%d}.", a, b, c, d, a * d, b * c,
                 a * d, b * c);
    }
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) { if (*s == '"' || *s == '\\') fputc('\\', f); fputc(*s, f); }
    fputc('"', f);
}

typedef struct { int a, b, c, d; } Task;

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "dev/default";
    int n_sft = 12000, n_train = 4000, n_eval = 200;
    Task all[27 * 27];   // proper fractions in lowest terms, denominators 2..9: 27 of them
    int n = 0;
    for (int b = 2; b <= 9; b++) for (int a = 1; a < b; a++)
        for (int d = 2; d <= 9; d++) for (int c = 1; c < d; c++)
            if (gcd(a, b) == 1 && gcd(c, d) == 1) { Task t = {a, b, c, d}; all[n++] = t; }
    for (int i = n - 1; i > 0; i--) { int k = (int)rnd((uint32_t)i + 1); Task t = all[i]; all[i] = all[k]; all[k] = t; }
    char path[512], final_path[512], sol[256], gold[32], prob[64];
    const char *names[3] = {"eval.jsonl", "sft.jsonl", "train.jsonl"};
    for (int file = 0; file < 3; file++) {
        snprintf(path, sizeof path, "%s/%s.tmp", dir, names[file]);
        FILE *f = fopen(path, "w");
        if (!f) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
        int count = file == 0 ? n_eval : file == 1 ? n_sft : n_train;
        for (int i = 0; i < count; i++) {
            const Task *t = file == 0 ? &all[i] : &all[n_eval + (int)rnd((uint32_t)(n - n_eval))];
            snprintf(prob, sizeof prob, "What is %d/%d * %d/%d?", t->a, t->b, t->c, t->d);
            reduced(gold, sizeof gold, t->a * t->c, t->b * t->d);
            fputs("{\"problem\": ", f); json_str(f, prob);
            if (file == 1) {   // styles: 70% correct in three forms (about 23% each), 30% the mistake
                uint32_t u = rnd(100);
                solution(sol, sizeof sol, t->a, t->b, t->c, t->d, u < 24 ? 0 : u < 47 ? 1 : u < 70 ? 2 : 3);
                fputs(", \"solution\": ", f); json_str(f, sol);
            }
            fputs(", \"answer\": ", f); json_str(f, gold);
            fputs("}\n", f);
        }
        if (fclose(f) != 0) { fprintf(stderr, "error: cannot write %s\n", path); return 1; }
        snprintf(final_path, sizeof final_path, "%s/%s", dir, names[file]);
        if (rename(path, final_path) != 0) { fprintf(stderr, "error: cannot rename %s\n", path); return 1; }
        printf("%s: %d lines\n", final_path, count);
    }
    printf("%d distinct problems, %d held out for eval\n", n, n_eval);
    return 0;
}
