// math_verify.h: final-answer extraction and mathematical equivalence of answers, in plain C.
// EMPO's reward is the share of a group's responses whose final answers are "the same", so this
// check decides what the model learns. The reference stack calls HF Math-Verify (sympy) per pair;
// we do it in microseconds with bounded work and no hangs. See doc/math_verify.md for the rules.
//
// How it works, in four steps:
//   1. normalize: drop LaTeX noise ($, \left, \, ...), unify spellings (\dfrac -> \frac, \leq -> \le),
//      unwrap \boxed / \text{5}, drop degree signs and dollar signs.
//   2. parse: recursive descent into a small tree: numbers, symbols, + - * / ^, functions, and the
//      structures around them (lists, sets, tuples, intervals, unions, relations, matrices, text).
//   3. evaluate: every expression node gets an exact rational value when it has one (overflow-checked
//      64-bit, via __int128 intermediates) and a double value at MV_NPTS fixed pseudo-random points
//      (symbols take values derived from a hash of their name, so both answers agree on them).
//   4. compare: structures element by element, expressions by exact rationals, else by the numbers.
// Anything we cannot parse falls back to comparing the normalized strings.
//
// Header-only; compiles as C11 and as C++ (train_empo.cu includes it through nvcc).
#ifndef MATH_VERIFY_H
#define MATH_VERIFY_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <math.h>

// ---------------------------------------------------------------------------------------------
// Limits. They bound the work of one call whatever the input is.
#define MV_MAX_LEN   4096   // bytes of an answer we parse; longer answers compare as plain strings
#define MV_MAX_NODES 512    // tree nodes per answer; more and the answer compares as a string
#define MV_MAX_DEPTH 64     // parser recursion depth
#define MV_MAX_WORK  20000  // node comparisons per equality call
#define MV_NPTS      6      // evaluation points for expressions with variables
#define MV_FALLBACK_WINDOW 32768  // bytes at the end of a response that the no-box fallbacks read
#define MV_POOL      (2 * MV_MAX_LEN + 64)

// Per-thread storage for math_answers_equal's two parse buffers (no mutable globals shared between threads).
#ifdef __cplusplus
#define MV_THREAD_LOCAL thread_local
#else
#define MV_THREAD_LOCAL _Thread_local
#endif

// Node types. Expression nodes carry values; the others are structures around expressions.
enum {
    MV_NUM, MV_SYM, MV_CONST, MV_ADD, MV_SUB, MV_MUL, MV_DIV, MV_POW, MV_NEG, MV_FUNC, MV_PCT, MV_PM,
    MV_EXPR_END,                               // types below this are expressions
    MV_LIST = MV_EXPR_END, MV_SET, MV_TUPLE, MV_INTERVAL, MV_UNION, MV_REL, MV_MATRIX, MV_TEXT
};
enum { MV_C_PI, MV_C_E, MV_C_INF };            // MV_CONST ops
enum {                                          // MV_FUNC ops
    MV_F_SIN, MV_F_COS, MV_F_TAN, MV_F_COT, MV_F_SEC, MV_F_CSC, MV_F_ASIN, MV_F_ACOS, MV_F_ATAN,
    MV_F_ACOT, MV_F_SINH, MV_F_COSH, MV_F_TANH, MV_F_LN, MV_F_LOG10, MV_F_LOGB, MV_F_EXP, MV_F_SQRT,
    MV_F_ROOT, MV_F_ABS, MV_F_FLOOR, MV_F_CEIL, MV_F_FACT, MV_F_BINOM, MV_F_LOG2
};
enum { MV_R_EQ, MV_R_LT, MV_R_LE, MV_R_GT, MV_R_GE, MV_R_NE, MV_R_IN, MV_R_APPROX };  // relations

typedef struct { long long n, d; } MvQ;        // exact rational, d > 0, lowest terms

typedef struct {
    unsigned char type, op;
    unsigned char exact;      // q holds the exact value
    unsigned char is_float;   // an atomic decimal literal (Math-Verify's Float): 6-decimal rule
    unsigned char has_var, has_pm, has_inf, bigint, relop;  // relop: relation before this term in a chain
    unsigned char lopen, ropen;                     // intervals
    unsigned char semi;       // list item after ';' (1: p=5,q=2;p=7,q=2 groups) or after "or"/"and" (2)
    int a, b;                 // expression children (-1 if none); a = first child of structures
    int next;                 // next sibling in a structure's child list
    int n, rows, cols;        // child count; matrix shape
    int str, slen;            // symbol name / text / bigint digits in the pool
    int s0, s1;               // source span in the normalized text (string fallback)
    uint64_t hash;            // symbol name hash
    MvQ q;
    double v[2][MV_NPTS];     // values at the points; [1] takes the other sign of every \pm
} MvNode;

// A parsed answer. ok=0 means it compares by its canonical string only.
typedef struct {
    int ok, root, n_nodes, len, canon_len, pool_n;
    char buf[MV_MAX_LEN + 1];     // normalized text
    char canon[MV_MAX_LEN + 1];   // normalized text without spaces
    char pool[MV_POOL];
    MvNode nodes[MV_MAX_NODES];
    const char *raw;              // answers longer than MV_MAX_LEN: compared as raw strings
    size_t raw_len;
} MathAnswer;

// ---------------------------------------------------------------------------------------------
// Small helpers
static inline int mv__isdigit(int c) { return c >= '0' && c <= '9'; }
static inline int mv__isalpha(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static inline int mv__isspace(int c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static inline int mv__lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

static inline uint64_t mv__hash(const char *s, int n) {          // FNV-1a
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 1099511628211ull; }
    return h;
}
static inline uint64_t mv__mix(uint64_t x) {                     // splitmix64 finalizer
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
// Value of a symbol at point k: magnitude in [0.35, 2.05) (point 3: [2.5, 9.5)), negative at the last two points so
// that sqrt(x^2) != x and |x| != x are caught. Fixed, so results are deterministic.
static inline double mv__sym_value(uint64_t h, int k) {
    uint64_t x = mv__mix(h ^ (0x632BE59BD9B4E019ull * (uint64_t)(k + 1)));
    double u = (double)(x >> 11) * (1.0 / 9007199254740992.0);
    double v = k == 3 ? 2.5 + 7.0 * u : 0.35 + 1.7 * u;   // one larger point: floor(n/2) vs floor(n/3)
    return k >= MV_NPTS - 2 ? -v : v;
}

// ---------------------------------------------------------------------------------------------
// Exact rationals. Every operation goes through __int128 and fails (returns 0) instead of
// overflowing; the caller then uses the double values.
typedef __int128 mv_i128;
static inline mv_i128 mv__gcd(mv_i128 a, mv_i128 b) {
    if (a < 0) a = -a;
    if (b < 0) b = -b;
    while (b) { mv_i128 t = a % b; a = b; b = t; }
    return a;
}
static inline int mv__q_make(mv_i128 n, mv_i128 d, MvQ *out) {
    const mv_i128 LIM = (mv_i128)9000000000000000000ll;
    if (d == 0) return 0;
    if (d < 0) { n = -n; d = -d; }
    mv_i128 g = mv__gcd(n, d);
    if (g > 1) { n /= g; d /= g; }
    if (n > LIM || n < -LIM || d > LIM) return 0;
    out->n = (long long)n; out->d = (long long)d;
    return 1;
}
static inline int mv__q_add(MvQ a, MvQ b, MvQ *o) {
    return mv__q_make((mv_i128)a.n * b.d + (mv_i128)b.n * a.d, (mv_i128)a.d * b.d, o);
}
static inline int mv__q_sub(MvQ a, MvQ b, MvQ *o) {
    return mv__q_make((mv_i128)a.n * b.d - (mv_i128)b.n * a.d, (mv_i128)a.d * b.d, o);
}
static inline int mv__q_mul(MvQ a, MvQ b, MvQ *o) { return mv__q_make((mv_i128)a.n * b.n, (mv_i128)a.d * b.d, o); }
static inline int mv__q_div(MvQ a, MvQ b, MvQ *o) {
    return b.n != 0 && mv__q_make((mv_i128)a.n * b.d, (mv_i128)a.d * b.n, o);
}
static inline int mv__q_powi(MvQ a, long long e, MvQ *o) {
    if (e < -62 || e > 62) return 0;                 // cap the work and the size
    if (e < 0) { if (a.n == 0) return 0; MvQ t; t.n = a.d; t.d = a.n; if (!mv__q_make(t.n, t.d, &a)) return 0; e = -e; }
    MvQ r; r.n = 1; r.d = 1;
    for (long long i = 0; i < e; i++) if (!mv__q_mul(r, a, &r)) return 0;
    *o = r;
    return 1;
}
// Exact k-th root of a non-negative integer, if there is one.
static inline int mv__iroot(long long x, int k, long long *r) {
    if (x < 0) return 0;
    if (x < 2) { *r = x; return 1; }
    long long c = (long long)llround(pow((double)x, 1.0 / k));
    for (long long t = c - 1 > 0 ? c - 1 : 0; t <= c + 1; t++) {
        mv_i128 p = 1;
        int over = 0;
        for (int i = 0; i < k && !over; i++) { p *= t; if (p > (mv_i128)x) over = 1; }
        if (!over && p == (mv_i128)x) { *r = t; return 1; }
    }
    return 0;
}
static inline double mv__q_val(MvQ q) { return (double)q.n / (double)q.d; }

// ---------------------------------------------------------------------------------------------
// Step 1: normalization. Writes the cleaned text of in[0..n) to out (cap bytes incl. NUL).
// Returns the length, or -1 if it does not fit or nests too deep.

typedef struct { char *out; int n, cap, depth; } MvOut;
static inline void mv__put(MvOut *o, char c) {
    if (o->n < 0) return;
    if (c == ' ' && (o->n == 0 || o->out[o->n - 1] == ' ')) return;    // collapse spaces
    if (o->n + 1 >= o->cap) { o->n = -1; return; }
    o->out[o->n++] = c;
}
static inline void mv__puts(MvOut *o, const char *s) { while (*s) mv__put(o, *s++); }
static inline int mv__prev(const MvOut *o) { return o->n > 0 ? (unsigned char)o->out[o->n - 1] : 0; }

static inline int mv__cmd_is(const char *name, int len, const char *const *list) {
    if (len <= 0) return 0;
    for (int i = 0; list[i]; i++) {
        const char *w = list[i];
        if (w[0] != name[0]) continue;          // cheap test first: this runs for every command
        int k = 1;
        while (k < len && w[k] == name[k]) k++;
        if (k == len && w[len] == 0) return 1;
    }
    return 0;
}
// End (exclusive) of the balanced {...} group starting at s[i] == '{', or -1 if unbalanced.
static inline int mv__group_end(const char *s, int n, int i) {
    int depth = 0;
    for (; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) { i++; continue; }   // \{ \} do not count
        if (s[i] == '{') depth++;
        else if (s[i] == '}' && --depth == 0) return i + 1;
    }
    return -1;
}
static inline int mv__normalize_rec(MvOut *o, const char *s, int n);

// A \text-like group: unwrap it when its content looks like math (no word of 2+ letters),
// else keep it as \text{word} for the parser (a unit after a number, or a text answer).
static inline void mv__text_group(MvOut *o, const char *s, int n, int always_unwrap, int is_opname) {
    int letters = 0, word = 0, lead = 0;
    while (lead < n && (s[lead] == ' ' || s[lead] == '~')) lead++;
    for (int i = lead; i < n && lead > 0; i++) if (mv__isalpha((unsigned char)s[i])) word = 1;   // \mathrm{~m}: a unit
    for (int i = 0; i < n && !word; i++) {
        if (s[i] == '\\') { word = 1; break; }  // commands inside: unwrap and let the parser see them
        if (mv__isalpha((unsigned char)s[i])) { if (++letters >= 2) word = 1; }
        else letters = 0;
    }
    if (is_opname) {       // \operatorname{arcsin} -> \arcsin; other names are words
        static const char *const fns[] = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
            "sinh", "cosh", "tanh", "ln", "log", "exp", "lg", "tg", "ctg", "arccot", "arctg", "lcm", "gcd", 0};
        int b = 0, e = n;
        while (b < e && mv__isspace((unsigned char)s[b])) b++;
        while (e > b && mv__isspace((unsigned char)s[e - 1])) e--;
        if (mv__cmd_is(s + b, e - b, fns)) {
            mv__put(o, '\\');
            for (int i = b; i < e; i++) mv__put(o, s[i]);
            mv__put(o, ' ');
            return;
        }
    }
    if (always_unwrap || !word) {
        mv__put(o, '{');
        mv__normalize_rec(o, s, n);
        mv__put(o, '}');
        return;
    }
    mv__puts(o, "\\text{");
    for (int i = 0; i < n; i++) {
        char c = s[i];
        if (c == '{' || c == '}' || c == '\\' || c == '$') c = ' ';
        if (c == '~') c = ' ';
        mv__put(o, c);
    }
    mv__put(o, '}');
}

static inline int mv__normalize_rec(MvOut *o, const char *s, int n) {
    static const char *const drop[] = {"left", "right", "bigl", "bigr", "Bigl", "Bigr", "big", "Big", "bigg",
        "Bigg", "biggl", "biggr", "Biggl", "Biggr", "middle", "displaystyle", "textstyle", "scriptstyle",
        "limits", "nolimits", "quad", "qquad", "hfill", "medspace", "thinspace", "thickspace", "enspace",
        "negthinspace", "space", "hspace", "textdollar", "dollar", "degree", "circ", "textdegree", "mathdollar",
        "displaylimits", "smallskip", "noindent", "nonumber", "notag", 0};
    static const char *const textlike[] = {"text", "textbf", "textit", "textrm", "textsf", "texttt", "textnormal",
        "mathrm", "mathit", "mathsf", "mathtt", "mbox", "emph", "textup", "mathnormal", 0};
    static const char *const unwrap[] = {"boxed", "fbox", "bm", "boldsymbol", "mathbf", "pmb", "underline",
        "displaystyle", "mathring", 0};
    if (++o->depth > MV_MAX_DEPTH) { o->n = -1; return -1; }
    for (int i = 0; i < n && o->n >= 0; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '$') continue;
        if (c == '~' || mv__isspace(c)) { mv__put(o, ' '); continue; }
        // UTF-8 symbols models like to emit
        if (c >= 0x80) {
            const char *rep = NULL; int k = 0;
            if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] == 0xB0) { rep = ""; k = 2; }            // °
            else if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] == 0xB7) { rep = "\\cdot "; k = 2; } // ·
            else if (c == 0xC3 && i + 1 < n && (unsigned char)s[i + 1] == 0x97) { rep = "\\times "; k = 2; }// ×
            else if (c == 0xCF && i + 1 < n && (unsigned char)s[i + 1] == 0x80) { rep = "\\pi "; k = 2; }   // π
            else if (c == 0xE2 && i + 2 < n) {
                unsigned char c1 = (unsigned char)s[i + 1], c2 = (unsigned char)s[i + 2];
                if (c1 == 0x88 && c2 == 0x92) rep = "-";            // −
                else if (c1 == 0x89 && c2 == 0xA4) rep = "\\le ";   // ≤
                else if (c1 == 0x89 && c2 == 0xA5) rep = "\\ge ";   // ≥
                else if (c1 == 0x89 && c2 == 0xA0) rep = "\\ne ";   // ≠
                else if (c1 == 0x88 && c2 == 0x9E) rep = "\\infty ";// ∞
                else if (c1 == 0x88 && c2 == 0x9A) rep = "\\sqrt "; // √
                else if (c1 == 0x88 && c2 == 0xAA) rep = "\\cup ";  // ∪
                if (rep) k = 3;
            }
            if (rep) { mv__puts(o, rep); i += k - 1; continue; }
            mv__put(o, (char)c);
            continue;
        }
        if (c == '{' && i + 2 < n && s[i + 1] == ',' && s[i + 2] == '}') {   // 1{,}000
            if (!(mv__isdigit(mv__prev(o)) && i + 3 < n && mv__isdigit((unsigned char)s[i + 3]))) mv__put(o, ',');
            i += 2;
            continue;
        }
        if (c == '^') {   // degree signs: ^\circ, ^{\circ}, ^{ \circ }
            int j = i + 1;
            while (j < n && s[j] == ' ') j++;
            int brace = j < n && s[j] == '{';
            if (brace) { j++; while (j < n && s[j] == ' ') j++; }
            if (j + 5 <= n && (memcmp(s + j, "\\circ", 5) == 0 || (j + 7 <= n && memcmp(s + j, "\\degree", 7) == 0))) {
                j += s[j + 1] == 'c' ? 5 : 7;
                while (j < n && s[j] == ' ') j++;
                if (brace) { if (j < n && s[j] == '}') j++; else { mv__put(o, '^'); continue; } }
                i = j - 1;
                continue;
            }
            mv__put(o, '^');
            continue;
        }
        if (c == '!' && i + 1 < n && s[i + 1] == '=') { mv__puts(o, "\\ne "); i++; continue; }   // x != 1
        if (mv__isalpha(c) && (i == 0 || !mv__isalpha((unsigned char)s[i - 1]))) {
            // "28 percent", "28 pct" are 28\%
            int j = i;
            while (j < n && mv__isalpha((unsigned char)s[j])) j++;
            static const char *const pct[] = {"percent", "percentage", "pct", "Percent", "percents", 0};
            int q = o->n;
            while (q > 0 && o->out[q - 1] == ' ') q--;
            if (mv__cmd_is(s + i, j - i, pct) && q > 0 && mv__isdigit((unsigned char)o->out[q - 1])) {
                o->n = q;
                mv__put(o, '%');
                i = j - 1;
                continue;
            }
        }
        if (c != '\\') { mv__put(o, (char)c); continue; }
        // a command
        if (i + 1 >= n) break;
        unsigned char d = (unsigned char)s[i + 1];
        if (!mv__isalpha(d)) {
            i++;
            if (d == '!') {                                          // negative thin space
                if (mv__prev(o) == ',') while (i + 1 < n && s[i + 1] == ' ') i++;   // 11,\! 111: a separator
            }
            else if (d == ',' || d == ';' || d == ':' || d == '>') {
                // thin spaces: vanish between digits (1\,000), else a space
                if (!(mv__isdigit(mv__prev(o)) && i + 1 < n && mv__isdigit((unsigned char)s[i + 1]))) mv__put(o, ' ');
            }
            else if (d == ' ' || d == '(' || d == ')' || d == '[' || d == ']' || d == '\n') mv__put(o, ' ');
            else if (d == '%') mv__put(o, '%');
            else if (d == '$') { }
            else if (d == '_') mv__put(o, '_');
            else if (d == '|') mv__put(o, '|');
            else { mv__put(o, '\\'); mv__put(o, (char)d); }          // \{ \} \\ \& ...
            continue;
        }
        int j = i + 1;
        while (j < n && mv__isalpha((unsigned char)s[j])) j++;
        const char *name = s + i + 1;
        int len = j - i - 1;
        i = j - 1;
        if (mv__cmd_is(name, len, drop)) {
            if ((len == 4 && memcmp(name, "left", 4) == 0) || (len == 5 && memcmp(name, "right", 5) == 0)) {
                if (j < n && s[j] == '.') i = j;                    // \left. and \right.
            }
            if ((len == 6 && memcmp(name, "hspace", 6) == 0) && j < n && s[j] == '{') {
                int e = mv__group_end(s, n, j); if (e > 0) i = e - 1;
            }
            mv__put(o, ' ');
            continue;
        }
        int textl = mv__cmd_is(name, len, textlike), unw = mv__cmd_is(name, len, unwrap);
        int opname = len == 12 && memcmp(name, "operatorname", 12) == 0;
        if (textl || unw || opname) {
            int k = j;
            while (k < n && s[k] == ' ') k++;
            if (k < n && s[k] == '*') k++;                          // \operatorname*
            if (k < n && s[k] == '{') {
                int e = mv__group_end(s, n, k);
                if (e < 0) { o->n = -1; break; }
                mv__text_group(o, s + k + 1, e - k - 2, unw, opname);
                i = e - 1;
            }
            continue;     // \textbf without a group: drop the command
        }
        static const char *const le[] = {"le", "leq", "leqslant", "leqq", 0}, *const ge[] = {"ge", "geq", "geqslant",
                "geqq", 0};
        static const char *const ne[] = {"ne", "neq", 0}, *const bar[] = {"vert", "lvert", "rvert", "mid", 0};
        static const char *const frac[] = {"dfrac", "tfrac", "cfrac", 0}, *const binom[] = {"dbinom", "tbinom", 0};
        if (mv__cmd_is(name, len, le)) { mv__puts(o, "\\le "); continue; }
        if (mv__cmd_is(name, len, ge)) { mv__puts(o, "\\ge "); continue; }
        if (mv__cmd_is(name, len, ne)) { mv__puts(o, "\\ne "); continue; }
        if (mv__cmd_is(name, len, bar)) { mv__put(o, '|'); continue; }
        if (mv__cmd_is(name, len, frac)) { mv__puts(o, "\\frac"); continue; }
        if (mv__cmd_is(name, len, binom)) { mv__puts(o, "\\binom"); continue; }
        if (len == 2 && memcmp(name, "lt", 2) == 0) { mv__put(o, '<'); continue; }
        if (len == 2 && memcmp(name, "gt", 2) == 0) { mv__put(o, '>'); continue; }
        if (len == 6 && memcmp(name, "lbrace", 6) == 0) { mv__puts(o, "\\{"); continue; }
        if (len == 6 && memcmp(name, "rbrace", 6) == 0) { mv__puts(o, "\\}"); continue; }
        if (len == 5 && memcmp(name, "prime", 5) == 0) { mv__put(o, '\''); continue; }
        if (len == 6 && memcmp(name, "lbrack", 6) == 0) { mv__put(o, '['); continue; }
        if (len == 6 && memcmp(name, "rbrack", 6) == 0) { mv__put(o, ']'); continue; }
        if (len == 5 && memcmp(name, "colon", 5) == 0) { mv__put(o, ':'); continue; }
        mv__put(o, '\\');
        for (int k = 0; k < len; k++) mv__put(o, name[k]);
        if (j < n && mv__isalpha((unsigned char)s[j])) mv__put(o, ' ');   // keep \pi r apart
    }
    o->depth--;
    return o->n;
}

static inline int mv_normalize(const char *in, size_t n, char *out, int cap) {
    if (n > (size_t)MV_MAX_LEN) return -1;
    MvOut o; o.out = out; o.n = 0; o.cap = cap; o.depth = 0;
    mv__normalize_rec(&o, in, (int)n);
    if (o.n < 0) return -1;
    while (o.n > 0 && o.out[o.n - 1] == ' ') o.n--;
    out[o.n] = 0;
    // trailing sentence punctuation: "5." -> "5" (but keep "...")
    while (o.n > 0 && out[o.n - 1] == '.' && !(o.n >= 2 && out[o.n - 2] == '.')) out[--o.n] = 0;
    while (o.n > 0 && out[o.n - 1] == ' ') out[--o.n] = 0;
    int b = 0;
    while (out[b] == ' ') b++;
    if (b) { memmove(out, out + b, (size_t)(o.n - b + 1)); o.n -= b; }
    // a multiple-choice prefix "B) 5", "**B)** 5" -> "5" (as Math-Verify reads it)
    for (int i = 0; i + 3 < o.n; i++) {
        if (out[i] < 'A' || out[i] > 'E' || out[i + 1] != ')') continue;
        if (i > 0 && out[i - 1] != ' ' && out[i - 1] != '*') continue;
        int e = i + 2;
        while (e < o.n && out[e] == '*') e++;
        if (e >= o.n || out[e] != ' ') continue;
        int b = i;
        while (b > 0 && out[b - 1] == '*') b--;
        memmove(out + b, out + e + 1, (size_t)(o.n - e));
        o.n -= e + 1 - b;
        break;
    }
    // a multiple-choice letter written "C)" -> "C"
    if (o.n == 2 && mv__isalpha((unsigned char)out[0]) && out[1] == ')') { out[1] = 0; o.n = 1; }
    return o.n;
}

// ---------------------------------------------------------------------------------------------
// Step 2 + 3: parser building evaluated nodes.

typedef struct {
    MathAnswer *A;
    const char *s;
    int pos, len, depth, err, abs_depth, bracket_depth;
    int thousands;   // the answer is one number written with thousands separators
} MvParser;

static inline void mv__ws(MvParser *P) { while (P->pos < P->len && P->s[P->pos] == ' ') P->pos++; }
static inline int mv__peek(MvParser *P) { mv__ws(P); return P->pos < P->len ? (unsigned char)P->s[P->pos] : 0; }
// Is the next token the command \name (and not a longer one)?
static inline int mv__at_cmd(MvParser *P, const char *name) {
    mv__ws(P);
    int l = (int)strlen(name);
    if (P->pos + 1 + l > P->len || P->s[P->pos] != '\\' || memcmp(P->s + P->pos + 1, name, (size_t)l) != 0) return 0;
    if (mv__isalpha((unsigned char)name[0]) && P->pos + 1 + l < P->len
        && mv__isalpha((unsigned char)P->s[P->pos + 1 + l])) return 0;
    return 1;
}
static inline int mv__eat_cmd(MvParser *P, const char *name) {
    if (!mv__at_cmd(P, name)) return 0;
    P->pos += 1 + (int)strlen(name);
    return 1;
}
static inline int mv__eat(MvParser *P, int c) {
    if (mv__peek(P) != c) return 0;
    P->pos++;
    return 1;
}
// Name of the command at the cursor (without consuming), into buf.
static inline int mv__cmd_name(MvParser *P, char *buf, int cap) {
    mv__ws(P);
    if (P->pos >= P->len || P->s[P->pos] != '\\') return 0;
    int j = P->pos + 1, l = 0;
    while (j < P->len && mv__isalpha((unsigned char)P->s[j]) && l < cap - 1) buf[l++] = P->s[j++];
    if (l == 0 && j < P->len && l < cap - 1) buf[l++] = P->s[j];
    buf[l] = 0;
    return l;
}

static inline int mv__fail(MvParser *P) { P->err = 1; return -1; }

static inline int mv__pool_add(MathAnswer *A, const char *s, int n) {
    if (A->pool_n + n + 1 > MV_POOL) return -1;
    memcpy(A->pool + A->pool_n, s, (size_t)n);
    A->pool[A->pool_n + n] = 0;
    int off = A->pool_n;
    A->pool_n += n + 1;
    return off;
}

static inline int mv__new(MvParser *P, int type, int op, int a, int b) {
    MathAnswer *A = P->A;
    if (P->err) return -1;
    if (A->n_nodes >= MV_MAX_NODES) return mv__fail(P);
    int id = A->n_nodes++;
    MvNode *x = &A->nodes[id];
    memset(x, 0, sizeof *x);
    x->type = (unsigned char)type; x->op = (unsigned char)op;
    x->a = a; x->b = b; x->next = -1;
    x->s0 = x->s1 = P->pos;
    return id;
}
static inline int mv__is_expr(const MathAnswer *A, int i) { return i >= 0 && A->nodes[i].type < MV_EXPR_END; }

// Fills the values of an expression node from its (already evaluated) children.
static inline void mv__eval(MathAnswer *A, int id) {
    MvNode *x = &A->nodes[id];
    const MvNode *a = x->a >= 0 ? &A->nodes[x->a] : NULL, *b = x->b >= 0 ? &A->nodes[x->b] : NULL;
    x->has_var = (unsigned char)((a && a->has_var) || (b && b->has_var) || x->type == MV_SYM);
    x->has_pm = (unsigned char)((a && a->has_pm) || (b && b->has_pm) || x->type == MV_PM);
    x->has_inf = (unsigned char)((a && a->has_inf) || (b && b->has_inf) || (x->type == MV_CONST && x->op == MV_C_INF));
    // exact part
    MvQ q; q.n = 0; q.d = 1;
    int ex = 0;
    int ea = a && a->exact, eb = b && b->exact;
    switch (x->type) {
    case MV_NUM: ex = x->exact; q = x->q; break;
    case MV_ADD: ex = ea && eb && mv__q_add(a->q, b->q, &q); break;
    case MV_SUB: ex = ea && eb && mv__q_sub(a->q, b->q, &q); break;
    case MV_MUL: ex = ea && eb && mv__q_mul(a->q, b->q, &q); break;
    case MV_DIV: ex = ea && eb && mv__q_div(a->q, b->q, &q); break;
    case MV_NEG: ex = ea; if (ex) { q.n = -a->q.n; q.d = a->q.d; } break;
    case MV_PCT: { MvQ h; h.n = 100; h.d = 1; ex = ea && mv__q_div(a->q, h, &q); } break;
    case MV_POW:
        if (ea && eb) {
            if (b->q.d == 1) ex = mv__q_powi(a->q, b->q.n, &q);
            else if (b->q.d <= 6 && a->q.n >= 0 && b->q.n > -62 && b->q.n < 62) {   // 8^{1/3} = 2
                long long rn, rd;
                MvQ r;
                if (mv__iroot(a->q.n, (int)b->q.d, &rn) && mv__iroot(a->q.d, (int)b->q.d, &rd) && mv__q_make(rn, rd,
                        &r))
                    ex = mv__q_powi(r, b->q.n, &q);
            }
        }
        break;
    case MV_FUNC:
        switch (x->op) {
        case MV_F_SQRT: case MV_F_ROOT: {
            const MvNode *arg = x->op == MV_F_SQRT ? a : b;
            long long k = 2;
            if (x->op == MV_F_ROOT) { if (!(ea && a->q.d == 1 && a->q.n >= 2 && a->q.n <= 12)) break; k = a->q.n; }
            long long rn, rd;
            if (arg && arg->exact && mv__iroot(arg->q.n, (int)k, &rn) && mv__iroot(arg->q.d, (int)k,
                    &rd)) ex = mv__q_make(rn, rd, &q);
            break; }
        case MV_F_ABS: ex = ea; if (ex) { q.n = a->q.n < 0 ? -a->q.n : a->q.n; q.d = a->q.d; } break;
        case MV_F_FLOOR: case MV_F_CEIL: ex = ea; if (ex) {
            long long f = a->q.n / a->q.d;
            if (a->q.n % a->q.d != 0) {
                if (a->q.n < 0 && x->op == MV_F_FLOOR) f--;
                if (a->q.n > 0 && x->op == MV_F_CEIL) f++;
            }
            q.n = f; q.d = 1; } break;
        case MV_F_FACT: if (ea && a->q.d == 1 && a->q.n >= 0 && a->q.n <= 20) {
            long long f = 1; for (long long i = 2; i <= a->q.n; i++) f *= i;
            q.n = f; q.d = 1; ex = 1; } break;
        case MV_F_BINOM: if (ea && eb && a->q.d == 1 && b->q.d == 1 && a->q.n >= 0 && a->q.n <= 66) {
            long long nn = a->q.n, kk = b->q.n;
            if (kk < 0 || kk > nn) { q.n = 0; q.d = 1; ex = 1; break; }
            if (kk > nn - kk) kk = nn - kk;
            mv_i128 r = 1;
            for (long long i = 1; i <= kk; i++) r = r * (nn - kk + i) / i;
            ex = mv__q_make(r, 1, &q); } break;
        case MV_F_LOGB: case MV_F_LOG10: case MV_F_LOG2:  // log_b(b^k) = k for integers
            if (((x->op == MV_F_LOGB && ea && a->q.d == 1 && a->q.n >= 2) || x->op != MV_F_LOGB)) {
                long long base = x->op == MV_F_LOG10 ? 10 : x->op == MV_F_LOG2 ? 2 : a->q.n;
                const MvNode *arg = x->op == MV_F_LOGB ? b : a;
                if (!(arg && arg->exact && arg->q.n > 0)) break;
                long long num = arg->q.n, den = arg->q.d, k = 0;
                int inv = 0;
                if (num == 1 && den > 1) { num = den; den = 1; inv = 1; }
                if (den != 1) break;
                while (num > 1 && num % base == 0 && k < 64) { num /= base; k++; }
                if (num == 1) { q.n = inv ? -k : k; q.d = 1; ex = 1; }
            }
            break;
        }
        break;
    default: break;
    }
    x->exact = (unsigned char)ex;
    x->q = q;
    // numeric part, at every point and both signs of \pm
    for (int s = 0; s < 2; s++) for (int k = 0; k < MV_NPTS; k++) {
        double va = a ? a->v[s][k] : 0, vb = b ? b->v[s][k] : 0, r = NAN;
        switch (x->type) {
        case MV_NUM: r = x->exact ? mv__q_val(x->q) : x->v[0][0]; break;
        case MV_SYM: r = mv__sym_value(x->hash, k); break;
        case MV_CONST: r = x->op == MV_C_PI ? 3.14159265358979323846 : x->op == MV_C_E ? 2.71828182845904523536
            : INFINITY; break;
        case MV_ADD: r = va + vb; break;
        case MV_SUB: r = va - vb; break;
        case MV_MUL: r = (va == 0 || vb == 0) && (isinf(va) || isinf(vb)) ? NAN : va * vb; break;
        case MV_DIV: r = vb == 0 ? NAN : va / vb; break;
        case MV_NEG: r = -va; break;
        case MV_PCT: r = va / 100.0; break;
        case MV_PM: r = (a ? va : 0) + ((s == 0) == (x->op == 0) ? vb : -vb); break;
        case MV_POW: r = pow(va, vb); break;
        case MV_FUNC:
            switch (x->op) {
            case MV_F_SIN: r = sin(va); break;
            case MV_F_COS: r = cos(va); break;
            case MV_F_TAN: r = tan(va); break;
            case MV_F_COT: r = 1.0 / tan(va); break;
            case MV_F_SEC: r = 1.0 / cos(va); break;
            case MV_F_CSC: r = 1.0 / sin(va); break;
            case MV_F_ASIN: r = asin(va); break;
            case MV_F_ACOS: r = acos(va); break;
            case MV_F_ATAN: r = atan(va); break;
            case MV_F_ACOT: r = atan(1.0 / va); break;
            case MV_F_SINH: r = sinh(va); break;
            case MV_F_COSH: r = cosh(va); break;
            case MV_F_TANH: r = tanh(va); break;
            case MV_F_LN: r = va > 0 ? log(va) : NAN; break;
            case MV_F_LOG10: r = va > 0 ? log10(va) : NAN; break;
            case MV_F_LOG2: r = va > 0 ? log2(va) : NAN; break;
            case MV_F_LOGB: r = (va > 0 && vb > 0 && va != 1) ? log(vb) / log(va) : NAN; break;
            case MV_F_EXP: r = exp(va); break;
            case MV_F_SQRT: r = va >= 0 ? sqrt(va) : NAN; break;
            case MV_F_ROOT: r = vb >= 0 ? pow(vb, 1.0 / va) : NAN; break;
            case MV_F_ABS: r = fabs(va); break;
            case MV_F_FLOOR: r = floor(va); break;
            case MV_F_CEIL: r = ceil(va); break;
            case MV_F_FACT: r = (va >= 0 && va < 171) ? tgamma(va + 1) : NAN; break;
            case MV_F_BINOM: r = (va >= 0 && vb >= 0 && va - vb >= 0 && va < 171)
                ? floor(tgamma(va + 1) / (tgamma(vb + 1) * tgamma(va - vb + 1)) + 0.5) : NAN; break;
            }
            break;
        }
        x->v[s][k] = r;
    }
}
static inline int mv__expr(MvParser *P, int type, int op, int a, int b) {
    if (a < -1 || b < -1 || P->err) return mv__fail(P);
    if ((a >= 0 && !mv__is_expr(P->A, a)) || (b >= 0 && !mv__is_expr(P->A, b))) return mv__fail(P);  // no 2*(1,2)
    int id = mv__new(P, type, op, a, b);
    if (id < 0) return -1;
    if (a >= 0) P->A->nodes[id].s0 = P->A->nodes[a].s0;
    mv__eval(P->A, id);
    return id;
}

static inline int mv__parse_list(MvParser *P, int top);
static inline int mv__parse_additive(MvParser *P);
static inline int mv__parse_term(MvParser *P, int fn_arg);
static inline int mv__parse_postfix(MvParser *P);

// Bare words that are units: "10 cm" == 10. Inside \text{} any word after a number is dropped.
static inline int mv__is_unit_word(const char *w, int n) {
    static const char *const units[] = {"cm", "mm", "km", "m", "kg", "mg", "g", "s", "sec", "seconds", "second",
        "min", "mins", "minute", "minutes", "h", "hr", "hrs", "hour", "hours", "day", "days", "week", "weeks", "month",
        "months", "year", "years", "meter", "meters", "metre", "metres", "inch", "inches", "foot", "feet", "ft", "yard",
        "yards", "mile", "miles", "mph", "degree", "degrees", "deg", "unit", "units", "dollar", "dollars", "cent",
        "cents", "yuan", "liter", "liters", "litre", "litres", "ml", "cc", "lb", "lbs", "pound", "pounds", "oz",
        "ounces",
        "gallon", "gallons", "sq", "square", "cubic", "km/h", "kmh", "kph", "people", "persons", "students", "ways",
        "times", "points", "point", "marbles", "balls", "coins", "items", "pages", "boxes", "books", "apples",
        "rad", "radians", "radian", "N", "J", "W", "kW", "Pa", "kPa", "atm", "K", "mol", "Hz", "eV", "V", "A", "C",
        0};
    return mv__cmd_is(w, n, units);
}
// After a complete factor: skip \text{words} and bare unit words (with a ^2 after them).
static inline void mv__skip_units(MvParser *P) {
    for (int guard = 0; guard < 16; guard++) {
        mv__ws(P);
        int p = P->pos;
        if (mv__at_cmd(P, "text")) {
            int k = P->pos + 5;
            if (k >= P->len || P->s[k] != '{') return;
            int e = mv__group_end(P->s, P->len, k);
            if (e < 0) return;
            // "and" / "or" are list separators, not units
            int b = k + 1, t = e - 1;
            while (b < t && P->s[b] == ' ') b++;
            while (t > b && P->s[t - 1] == ' ') t--;
            if ((t - b == 3 && memcmp(P->s + b, "and", 3) == 0) || (t - b == 2 && memcmp(P->s + b, "or",
                    2) == 0)) return;
            P->pos = e;
        } else if (p < P->len && mv__isalpha((unsigned char)P->s[p])) {
            int e = p;
            while (e < P->len
                   && (mv__isalpha((unsigned char)P->s[e])
                       || (P->s[e] == '/' && e + 1 < P->len && mv__isalpha((unsigned char)P->s[e + 1])))) e++;
            if (e - p < 2 || !mv__is_unit_word(P->s + p, e - p)) return;
            if (e < P->len && (mv__isdigit((unsigned char)P->s[e]) || P->s[e] == '(' || P->s[e] == '_')) return;
            P->pos = e;
        } else return;
        // a unit power: cm^2, \text{m}^{3}
        mv__ws(P);
        if (P->pos < P->len && P->s[P->pos] == '^') {
            int k = P->pos + 1;
            while (k < P->len && P->s[k] == ' ') k++;
            if (k < P->len && mv__isdigit((unsigned char)P->s[k])) P->pos = k + 1;
            else if (k < P->len && P->s[k] == '{') { int e = mv__group_end(P->s, P->len, k); if (e > 0) P->pos = e; }
        }
    }
}

// A number literal: 12, 1,000 (outside brackets), 3.25, .5, 1.5e-3.
static inline int mv__parse_number(MvParser *P) {
    const char *s = P->s;
    int p = P->pos, start = p;
    char digits[MV_MAX_LEN + 8]; int nd = 0, frac = 0, seen_dot = 0, total = 0;   // every digit: exact big literals
    int lead = 0;
    (void)seen_dot;
    while (p < P->len && mv__isdigit((unsigned char)s[p])) { lead++; p++; }
    // thousands separators 1,234,567: only at the top level ([1,100] is an interval), and only
    // when the first group has 1-3 digits and every later group exactly 3
    int groups_end = -1;
    if (P->thousands && P->bracket_depth == 0 && lead <= 3) {
        int q = p, g = 0;
        while (q + 3 < P->len && s[q] == ',' && mv__isdigit((unsigned char)s[q + 1])
               && mv__isdigit((unsigned char)s[q + 2]) &&
               mv__isdigit((unsigned char)s[q + 3])
                   && !(q + 4 < P->len && mv__isdigit((unsigned char)s[q + 4]))) { q += 4; g++; }
        if (g > 0) groups_end = q;
    }
    p = start;
    int stop = groups_end > 0 ? groups_end : start + lead;
    for (; p < stop; p++) {
        if (s[p] == ',') continue;
        if (nd < MV_MAX_LEN && (nd > 0 || s[p] != '0')) digits[nd++] = s[p];
        total++;
    }
    if (p < P->len && s[p] == '.' && p + 1 < P->len && mv__isdigit((unsigned char)s[p + 1])) {
        seen_dot = 1;
        p++;
        while (p < P->len && mv__isdigit((unsigned char)s[p])) {
            if (nd < MV_MAX_LEN) { digits[nd++] = s[p]; frac++; }
            total++; p++;
        }
    }
    if (total == 0) return mv__fail(P);
    // scientific notation 1.5e-3 (not 2e, which is 2 times Euler's e)
    long long e10 = 0; int sci = 0;
    if (p < P->len && (s[p] == 'e' || s[p] == 'E')) {
        int q = p + 1, sign = 1;
        if (q < P->len && (s[q] == '-' || s[q] == '+')) { sign = s[q] == '-' ? -1 : 1; q++; }
        if (q < P->len && mv__isdigit((unsigned char)s[q])) {
            int r = q; long long v = 0;
            while (r < P->len && mv__isdigit((unsigned char)s[r])) { if (v < 100000) v = v * 10 + (s[r] - '0'); r++; }
            if (r >= P->len || !mv__isalpha((unsigned char)s[r])) {
                sci = 1; e10 = sign * v;
                p = r;
            }
        }
    }
    // a base subscript 2516_8 is dropped, as Math-Verify does
    if (p < P->len && s[p] == '_') {
        int q = p + 1;
        if (q < P->len && s[q] == '{') { int e = mv__group_end(s, P->len, q); if (e > 0) p = e; }
        else if (q < P->len && (mv__isdigit((unsigned char)s[q]) || mv__isalpha((unsigned char)s[q]))) {
            while (q < P->len && mv__isdigit((unsigned char)s[q])) q++;
            p = q > p + 1 ? q : q + 1;
        }
    }
    P->pos = p;
    int id = mv__new(P, MV_NUM, 0, -1, -1);
    if (id < 0) return -1;
    MvNode *x = &P->A->nodes[id];
    x->s0 = start; x->s1 = p;
    x->is_float = (unsigned char)(seen_dot || sci);
    // exact value when the digits fit
    if (total <= 18 && frac <= 18) {
        long long m = 0;
        for (int i = 0; i < nd; i++) m = m * 10 + (digits[i] - '0');
        long long den = 1;
        for (int i = 0; i < frac; i++) den *= 10;
        MvQ q;
        int ok = mv__q_make(m, den, &q);
        if (ok && sci) {
            MvQ t; t.n = 10; t.d = 1;
            MvQ pw;
            ok = mv__q_powi(t, e10, &pw) && mv__q_mul(q, pw, &q);
        }
        if (ok) { x->exact = 1; x->q = q; }
    }
    if (!x->exact) {
        // A big literal (over 18 digits, or a power of ten that overflows): value = D * 10^E with D its
        // significant digits. The canonical "D e E" is compared exactly; the double is only for
        // comparisons with expressions, and is inf when the literal overflows (then it equals no
        // expression: 1e400 != \infty).
        int b = 0, e = nd;
        while (b < e && digits[b] == '0') b++;
        long long E = e10 - frac;
        while (e > b && digits[e - 1] == '0') { e--; E++; }
        if (b == e) E = 0;
        char canon[MV_MAX_LEN + 32];
        int cl = 0;
        for (int i = b; i < e; i++) canon[cl++] = digits[i];
        if (cl == 0) canon[cl++] = '0';
        cl += snprintf(canon + cl, 24, "e%lld", E);
        char dbl[48];
        int k = e - b < 17 ? e - b : 17;
        memcpy(dbl, digits + b, (size_t)k);
        snprintf(dbl + k, 24, "e%lld", E + (e - b - k));
        x->v[0][0] = b == e ? 0.0 : strtod(dbl, NULL);
        x->bigint = 1;
        int off = mv__pool_add(P->A, canon, cl);
        if (off < 0) return mv__fail(P);
        x->str = off; x->slen = cl;
    }
    mv__eval(P->A, id);
    return id;
}

// A symbol: letter with optional subscript and primes, or a Greek letter command.
static inline int mv__make_symbol(MvParser *P, const char *name, int n) {
    char buf[128];
    int l = 0;
    for (int i = 0; i < n && l < 100; i++) buf[l++] = name[i];
    // subscript: x_1, a_{n+1}
    mv__ws(P);
    if (P->pos < P->len && P->s[P->pos] == '_') {
        int k = P->pos + 1;
        while (k < P->len && P->s[k] == ' ') k++;
        int b = k, e = k + 1;
        if (k < P->len && P->s[k] == '{') {
            e = mv__group_end(P->s, P->len, k);
            if (e < 0) return mv__fail(P);
            b = k + 1;
            e -= 1;
        }
        else if (k < P->len && P->s[k] == '\\') {
            e = k + 1;
            while (e < P->len && mv__isalpha((unsigned char)P->s[e])) e++;
        }
        else if (k >= P->len) return mv__fail(P);
        if (l < 120) buf[l++] = '_';
        for (int i = b; i < e && l < 126; i++) if (P->s[i] != ' ') buf[l++] = P->s[i];
        P->pos = (P->s[k] == '{') ? e + 1 : e;
    }
    while (P->pos < P->len && P->s[P->pos] == '\'' && l < 126) { buf[l++] = '\''; P->pos++; }
    int id = mv__new(P, MV_SYM, 0, -1, -1);
    if (id < 0) return -1;
    MvNode *x = &P->A->nodes[id];
    int off = mv__pool_add(P->A, buf, l);
    if (off < 0) return mv__fail(P);
    x->str = off; x->slen = l;
    x->hash = mv__hash(buf, l);
    mv__eval(P->A, id);
    return id;
}

// A LaTeX macro argument: {group} or a single token (\frac12, \sqrt2, \frac ab, \sqrt\pi).
static inline int mv__parse_arg(MvParser *P) {
    int c = mv__peek(P);
    if (c == '{') {
        P->pos++;
        int r = mv__parse_additive(P);
        if (!mv__eat(P, '}')) return mv__fail(P);
        return r;
    }
    if (mv__isdigit(c)) {     // one digit only
        int id = mv__new(P, MV_NUM, 0, -1, -1);
        if (id < 0) return -1;
        MvNode *x = &P->A->nodes[id];
        x->exact = 1; x->q.n = c - '0'; x->q.d = 1;
        x->s0 = P->pos; x->s1 = P->pos + 1;
        P->pos++;
        mv__eval(P->A, id);
        return id;
    }
    if (mv__isalpha(c)) {
        P->pos++;
        if (c == 'e') { int id = mv__new(P, MV_CONST, MV_C_E, -1, -1); if (id >= 0) mv__eval(P->A, id); return id; }
        char ch = (char)c;
        return mv__make_symbol(P, &ch, 1);
    }
    if (c == '\\') return mv__parse_postfix(P);
    return mv__fail(P);
}

// Function name -> op, or -1.
static inline int mv__func_op(const char *name) {
    static const char *const names[] = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan",
        "arccot", "sinh", "cosh", "tanh", "ln", "lg", "log", "exp", "tg", "ctg", "arctg", "cosec", 0};
    static const int ops[] = {MV_F_SIN, MV_F_COS, MV_F_TAN, MV_F_COT, MV_F_SEC, MV_F_CSC, MV_F_ASIN, MV_F_ACOS,
                              MV_F_ATAN,
        MV_F_ACOT, MV_F_SINH, MV_F_COSH, MV_F_TANH, MV_F_LN, MV_F_LOG10, MV_F_LOG10, MV_F_EXP, MV_F_TAN, MV_F_COT,
        MV_F_ATAN, MV_F_CSC};
    for (int i = 0; names[i]; i++) if (names[i][0] == name[0] && strcmp(names[i], name) == 0) return ops[i];
    return -1;
}
static inline int mv__is_greek(const char *name) {
    static const char *const g[] = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
        "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "rho", "varrho", "sigma", "varsigma", "tau",
        "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma",
        "Upsilon", "Phi", "Psi", "Omega", "ell", "hbar", "imath", "jmath", "aleph", "angle", "triangle", 0};
    return mv__cmd_is(name, (int)strlen(name), g);
}

// Function call: \sin x, \sin(x), \sin^2 x, \log_2 8, \sin^{-1} x.
static inline int mv__parse_function(MvParser *P, int op) {
    int base = -1, power = -1;
    for (int round = 0; round < 2; round++) {
        mv__ws(P);
        if (P->pos < P->len && P->s[P->pos] == '_' && (op == MV_F_LOG10) && base < 0) {
            P->pos++;
            base = mv__parse_arg(P);
            if (base < 0) return -1;
        } else if (P->pos < P->len && P->s[P->pos] == '^' && power < 0) {
            P->pos++;
            power = mv__parse_arg(P);
            if (power < 0) return -1;
        }
    }
    // sin^{-1} is arcsin
    if (power >= 0 && P->A->nodes[power].exact && P->A->nodes[power].q.n == -1 && P->A->nodes[power].q.d == 1
        && op <= MV_F_CSC) {
        static const int inv[] = {MV_F_ASIN, MV_F_ACOS, MV_F_ATAN, MV_F_ACOT, -1, -1};
        if (inv[op] >= 0) { op = inv[op]; power = -1; }
    }
    int arg;
    int c = mv__peek(P);
    if (c == '(') {
        P->pos++;
        P->bracket_depth++;
        arg = mv__parse_additive(P);
        P->bracket_depth--;
        if (!mv__eat(P, ')')) return mv__fail(P);
    } else if (c == '{') {
        P->pos++;
        arg = mv__parse_additive(P);
        if (!mv__eat(P, '}')) return mv__fail(P);
    } else {
        arg = mv__parse_term(P, 1);
    }
    if (arg < 0) return -1;
    int r;
    if (base >= 0) r = mv__expr(P, MV_FUNC, MV_F_LOGB, base, arg);
    else r = mv__expr(P, MV_FUNC, op, arg, -1);
    if (power >= 0) r = mv__expr(P, MV_POW, 0, r, power);
    return r;
}

// Matrix environments: \begin{pmatrix} a & b \\ c & d \end{pmatrix}
static inline int mv__parse_matrix(MvParser *P) {
    int k = P->pos;
    if (k >= P->len || P->s[k] != '{') return mv__fail(P);
    int e = mv__group_end(P->s, P->len, k);
    if (e < 0) return mv__fail(P);
    char env[32]; int el = 0;
    for (int i = k + 1; i < e - 1 && el < 31; i++) env[el++] = P->s[i];
    env[el] = 0;
    static const char *const mats[] = {"pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "matrix", "smallmatrix",
                                       "array", 0};
    if (!mv__cmd_is(env, el, mats)) return mv__fail(P);
    P->pos = e;
    if (strcmp(env, "array") == 0 && mv__peek(P) == '{') {           // column spec
        int e2 = mv__group_end(P->s, P->len, P->pos);
        if (e2 < 0) return mv__fail(P);
        P->pos = e2;
    }
    int id = mv__new(P, MV_MATRIX, 0, -1, -1);
    if (id < 0) return -1;
    int last = -1, rows = 0, cols = -1, cur = 0;
    for (;;) {
        mv__ws(P);
        if (mv__at_cmd(P, "end")) break;
        int cell = mv__parse_additive(P);
        if (cell < 0) return -1;
        if (last < 0) P->A->nodes[id].a = cell; else P->A->nodes[last].next = cell;
        last = cell;
        P->A->nodes[id].n++;
        cur++;
        if (mv__eat(P, '&')) continue;
        mv__ws(P);
        int endrow = 0;
        if (P->pos + 1 < P->len && P->s[P->pos] == '\\' && P->s[P->pos + 1] == '\\') { P->pos += 2; endrow = 1; }
        else if (!mv__at_cmd(P, "end")) return mv__fail(P);
        if (cols < 0) cols = cur; else if (cols != cur) return mv__fail(P);
        rows++; cur = 0;
        if (!endrow) break;
        mv__ws(P);
        if (mv__at_cmd(P, "end")) break;     // trailing \\ before \end
    }
    if (!mv__eat_cmd(P, "end")) return mv__fail(P);
    mv__ws(P);
    if (P->pos < P->len && P->s[P->pos] == '{') {
        int e3 = mv__group_end(P->s, P->len, P->pos);
        if (e3 < 0) return mv__fail(P);
        P->pos = e3;
    }
    if (rows == 0 || cols <= 0) return mv__fail(P);
    P->A->nodes[id].rows = rows; P->A->nodes[id].cols = cols;
    return id;
}

// Text answer \text{Yes}: lower-case letters and digits only.
static inline int mv__make_text(MvParser *P, const char *s, int n) {
    char buf[MV_MAX_LEN];
    int l = 0;
    for (int i = 0; i < n && l < MV_MAX_LEN - 1; i++) {
        unsigned char c = (unsigned char)s[i];
        if (mv__isalpha(c) || mv__isdigit(c) || c >= 0x80) buf[l++] = (char)mv__lower(c);
    }
    int id = mv__new(P, MV_TEXT, 0, -1, -1);
    if (id < 0) return -1;
    int off = mv__pool_add(P->A, buf, l);
    if (off < 0) return mv__fail(P);
    P->A->nodes[id].str = off; P->A->nodes[id].slen = l;
    return id;
}

// Parenthesized things: (x) grouping, (a,b) open interval / pair, [a,b) intervals, (a,b,c) tuples.
static inline int mv__parse_bracketed(MvParser *P, int open) {
    P->bracket_depth++;
    int inner = mv__parse_list(P, 0);
    P->bracket_depth--;
    if (inner < 0) return -1;
    int close = mv__peek(P);
    if (close != ')' && close != ']') {
        if (open == 1 && mv__at_cmd(P, "rangle")) { P->pos += 7; close = '>'; }
        else return mv__fail(P);
    } else P->pos++;
    MvNode *x = &P->A->nodes[inner];
    // (2 or 0): words make it a grouped list, not a tuple
    if (x->type == MV_LIST && ((open == '(' && close == ')') || (open == '[' && close == ']'))) {
        for (int c = x->a; c >= 0; c = P->A->nodes[c].next) if (P->A->nodes[c].semi == 2) return inner;
    }
    if (x->type != MV_LIST) {
        if ((open == '(' && close == ')') || (open == '[' && close == ']')) return inner;   // grouping
        return mv__fail(P);
    }
    if (open == 1 || close == '>') {                     // \langle a, b \rangle
        if (!(open == 1 && close == '>')) return mv__fail(P);
        x->type = MV_TUPLE;
        return inner;
    }
    if (x->n == 2) {
        x->type = MV_INTERVAL;
        x->lopen = (unsigned char)(open == '(');
        x->ropen = (unsigned char)(close == ')');
        return inner;
    }
    if ((open == '(') != (close == ')')) return mv__fail(P);
    x->type = MV_TUPLE;
    return inner;
}

// Primary plus postfix operators (^, !, %, ').
static inline int mv__parse_primary(MvParser *P) {
    if (++P->depth > MV_MAX_DEPTH) return mv__fail(P);
    int r = -1;
    int c = mv__peek(P);
    int start = P->pos;
    if (mv__isdigit(c) || (c == '.' && P->pos + 1 < P->len && mv__isdigit((unsigned char)P->s[P->pos + 1]))) {
        r = mv__parse_number(P);
    } else if (mv__isalpha(c)) {
        P->pos++;
        if (c == 'e' && !(P->pos < P->len && P->s[P->pos] == '_')) {
            r = mv__new(P, MV_CONST, MV_C_E, -1, -1);
            if (r >= 0) mv__eval(P->A, r);
        } else {
            char ch = (char)c;
            r = mv__make_symbol(P, &ch, 1);
        }
    } else if (c == '(' || c == '[') {
        P->pos++;
        r = mv__parse_bracketed(P, c);
    } else if (c == '{') {
        P->pos++;
        r = mv__parse_list(P, 0);
        if (r >= 0 && !mv__eat(P, '}')) r = mv__fail(P);
    } else if (c == '|' && P->abs_depth < 8) {
        P->pos++;
        P->abs_depth++;
        int in = mv__parse_additive(P);
        P->abs_depth--;
        if (in >= 0 && !mv__eat(P, '|')) in = mv__fail(P);
        r = in < 0 ? -1 : mv__expr(P, MV_FUNC, MV_F_ABS, in, -1);
    } else if (c == '\\') {
        char name[32];
        mv__cmd_name(P, name, sizeof name);
        int nl = (int)strlen(name);
        if (strcmp(name, "{") == 0) {                      // \{ a, b \}
            P->pos += 2;
            mv__ws(P);
            if (P->pos + 1 < P->len && P->s[P->pos] == '\\' && P->s[P->pos + 1] == '}') {
                P->pos += 2;
                r = mv__new(P, MV_SET, 0, -1, -1);          // empty set
            } else {
                P->bracket_depth++;
                int in = mv__parse_list(P, 0);
                P->bracket_depth--;
                mv__ws(P);
                if (in < 0 || !(P->pos + 1 < P->len && P->s[P->pos] == '\\'
                                && P->s[P->pos + 1] == '}')) r = mv__fail(P);
                else {
                    P->pos += 2;
                    if (P->A->nodes[in].type == MV_LIST) { P->A->nodes[in].type = MV_SET; r = in; }
                    else {
                        r = mv__new(P, MV_SET, 0, -1, -1);
                        if (r >= 0) { P->A->nodes[r].a = in; P->A->nodes[r].n = 1; }
                    }
                }
            }
        } else {
            P->pos += 1 + nl;
            int fop = mv__func_op(name);
            if (fop >= 0) r = mv__parse_function(P, fop);
            else if (strcmp(name, "frac") == 0) {
                int num = mv__parse_arg(P), den = num < 0 ? -1 : mv__parse_arg(P);
                r = mv__expr(P, MV_DIV, 0, num, den);
            } else if (strcmp(name, "binom") == 0) {
                int n1 = mv__parse_arg(P), k1 = n1 < 0 ? -1 : mv__parse_arg(P);
                r = mv__expr(P, MV_FUNC, MV_F_BINOM, n1, k1);
            } else if (strcmp(name, "sqrt") == 0) {
                int idx = -1;
                if (mv__peek(P) == '[') {
                    P->pos++;
                    idx = mv__parse_additive(P);
                    if (idx >= 0 && !mv__eat(P, ']')) idx = mv__fail(P);
                    if (idx < 0) { P->depth--; return -1; }
                }
                int arg = mv__parse_arg(P);
                r = idx >= 0 ? mv__expr(P, MV_FUNC, MV_F_ROOT, idx, arg) : mv__expr(P, MV_FUNC, MV_F_SQRT, arg, -1);
            } else if (strcmp(name, "pi") == 0) {
                r = mv__new(P, MV_CONST, MV_C_PI, -1, -1); if (r >= 0) mv__eval(P->A, r);
            } else if (strcmp(name, "infty") == 0 || strcmp(name, "infin") == 0) {
                r = mv__new(P, MV_CONST, MV_C_INF, -1, -1); if (r >= 0) mv__eval(P->A, r);
            } else if (strcmp(name, "emptyset") == 0 || strcmp(name, "varnothing") == 0 || strcmp(name, "O") == 0) {
                r = mv__new(P, MV_SET, 0, -1, -1);
            } else if (mv__is_greek(name)) {
                r = mv__make_symbol(P, name, nl);
            } else if (strcmp(name, "mathbb") == 0 || strcmp(name, "mathcal") == 0 || strcmp(name, "mathfrak") == 0 ||
                       strcmp(name, "hat") == 0 || strcmp(name, "bar") == 0 || strcmp(name, "overline") == 0 ||
                       strcmp(name, "vec") == 0 || strcmp(name, "tilde") == 0 || strcmp(name, "widehat") == 0 ||
                       strcmp(name, "widetilde") == 0 || strcmp(name, "dot") == 0 || strcmp(name, "ddot") == 0 ||
                       strcmp(name, "overrightarrow") == 0 || strcmp(name, "overleftrightarrow") == 0) {
                // decorated symbols: \hat{a}, \overline{AB}, \mathbb{R} -> one symbol named by the source
                mv__ws(P);
                int b = P->pos, e = b + 1;
                if (b < P->len && P->s[b] == '{') {
                    e = mv__group_end(P->s, P->len, b);
                    if (e < 0) {
                        P->depth--;
                        return mv__fail(P);
                    }
                } else if (b >= P->len) {
                    P->depth--;
                    return mv__fail(P);
                }
                char buf[100]; int l = snprintf(buf, sizeof buf, "%s:", name);
                for (int i = b; i < e && l < 98; i++) if (P->s[i] != ' ' && P->s[i] != '{'
                                                          && P->s[i] != '}') buf[l++] = P->s[i];
                P->pos = e;
                r = mv__make_symbol(P, buf, l);
            } else if (strcmp(name, "text") == 0) {
                mv__ws(P);
                int e = P->pos < P->len && P->s[P->pos] == '{' ? mv__group_end(P->s, P->len, P->pos) : -1;
                if (e < 0) r = mv__fail(P);
                else { r = mv__make_text(P, P->s + P->pos + 1, e - P->pos - 2); P->pos = e; }
            } else if (strcmp(name, "begin") == 0) {
                r = mv__parse_matrix(P);
            } else if (strcmp(name, "lfloor") == 0 || strcmp(name, "lceil") == 0) {
                int floor_ = name[1] == 'f';
                int in = mv__parse_additive(P);
                if (in >= 0 && !mv__eat_cmd(P, floor_ ? "rfloor" : "rceil")) in = mv__fail(P);
                r = in < 0 ? -1 : mv__expr(P, MV_FUNC, floor_ ? MV_F_FLOOR : MV_F_CEIL, in, -1);
            } else if (strcmp(name, "langle") == 0) {
                r = mv__parse_bracketed(P, 1);
            } else r = mv__fail(P);                     // \sum, \int, \lim, unknown: string fallback
        }
    } else r = mv__fail(P);
    P->depth--;
    if (r >= 0 && P->A->nodes[r].s0 > start) P->A->nodes[r].s0 = start;
    return r;
}

static inline int mv__parse_postfix(MvParser *P) {
    int start = P->pos;
    int r = mv__parse_primary(P);
    for (int guard = 0; r >= 0 && guard < 64; guard++) {
        mv__ws(P);
        int c = P->pos < P->len ? (unsigned char)P->s[P->pos] : 0;
        if (c == '^') {
            P->pos++;
            if (++P->depth > MV_MAX_DEPTH) return mv__fail(P);
            int ex;
            if (mv__peek(P) == '-' || mv__peek(P) == '+') {        // x^-1
                int neg = P->s[P->pos] == '-';
                P->pos++;
                ex = mv__parse_arg(P);
                if (neg) ex = mv__expr(P, MV_NEG, 0, ex, -1);
            } else ex = mv__parse_arg(P);
            P->depth--;
            r = mv__expr(P, MV_POW, 0, r, ex);
        } else if (c == '!') {
            P->pos++;
            r = mv__expr(P, MV_FUNC, MV_F_FACT, r, -1);
        } else if (c == '%') {
            P->pos++;
            r = mv__expr(P, MV_PCT, 0, r, -1);
            if (r >= 0) P->A->nodes[r].is_float = P->A->nodes[P->A->nodes[r].a].is_float;
        } else break;
    }
    if (r >= 0) { P->A->nodes[r].s0 = start; P->A->nodes[r].s1 = P->pos; }
    return r;
}

// Is the next token the bare word w (letters not followed by more letters)?
static inline int mv__at_word(MvParser *P, const char *w) {
    mv__ws(P);
    int l = (int)strlen(w);
    if (P->pos + l > P->len || memcmp(P->s + P->pos, w, (size_t)l) != 0) return 0;
    if (P->pos > 0 && mv__isalpha((unsigned char)P->s[P->pos - 1])) return 0;
    return !(P->pos + l < P->len && (mv__isalpha((unsigned char)P->s[P->pos + l]) || P->s[P->pos + l] == '_'));
}
// Does the next token start a factor (for implicit multiplication)?
static inline int mv__starts_factor(MvParser *P, int fn_arg) {
    int c = mv__peek(P);
    if (mv__at_word(P, "or") || mv__at_word(P, "and")) return 0;   // "2 or 3" is a list
    if (mv__isdigit(c) || mv__isalpha(c) || c == '(' || c == '{') return 1;
    if (c == '.' && P->pos + 1 < P->len && mv__isdigit((unsigned char)P->s[P->pos + 1])) return 1;
    if (c == '|') return P->abs_depth == 0;
    if (c == '[') return 0;
    if (c != '\\') return 0;
    char name[32];
    mv__cmd_name(P, name, sizeof name);
    if (mv__func_op(name) >= 0) return !fn_arg;          // \sin x \cos x: the argument stops here
    static const char *const prim[] = {"frac", "binom", "sqrt", "pi", "infty", "mathbb", "mathcal", "hat", "bar",
        "overline", "vec", "tilde", "widehat", "widetilde", "dot", "ddot", "overrightarrow", "begin", "lfloor", "lceil",
        "langle", "{", "emptyset", "varnothing", 0};
    if (mv__cmd_is(name, (int)strlen(name), prim)) return 1;
    return mv__is_greek(name);
}

// Products: explicit (\cdot, \times, *, /, \div) and implicit (2x, 2\sqrt3, (x+1)(x-1)).
static inline int mv__parse_term(MvParser *P, int fn_arg) {
    if (++P->depth > MV_MAX_DEPTH) return mv__fail(P);
    int neg = 0, start = (mv__ws(P), P->pos);
    while (mv__peek(P) == '-' || mv__peek(P) == '+') { if (P->s[P->pos] == '-') neg ^= 1; P->pos++; }
    int r = mv__parse_postfix(P);
    if (!fn_arg) mv__skip_units(P);
    for (int guard = 0; r >= 0 && guard < 4096; guard++) {
        int c = mv__peek(P), op = -1;
        if (!fn_arg) {
            if (c == '*') { P->pos++; op = MV_MUL; }
            else if (c == '/') { P->pos++; op = MV_DIV; }
            // ratio 7:8
            else if (c == ':' && !(P->pos + 1 < P->len && P->s[P->pos + 1] == '=')) { P->pos++; op = MV_DIV; }
            else if (mv__eat_cmd(P, "cdot") || mv__eat_cmd(P, "times") || mv__eat_cmd(P, "ast")) op = MV_MUL;
            else if (mv__eat_cmd(P, "div")) op = MV_DIV;
        }
        if (op < 0) {
            if (!mv__starts_factor(P, fn_arg)) break;
            // mixed number: 1\frac12 = 1 + 1/2 (an integer literal, then a fraction of integer literals)
            const MvNode *x = &P->A->nodes[r];
            if (x->type == MV_NUM && x->exact && x->q.d == 1 && !x->is_float && mv__at_cmd(P, "frac")) {
                int f = mv__parse_postfix(P);
                if (f < 0) break;
                const MvNode *fx = &P->A->nodes[f];
                int mixed = 0;
                if (fx->type == MV_DIV) {
                    const MvNode *fa = &P->A->nodes[fx->a], *fb = &P->A->nodes[fx->b];
                    mixed = fa->type == MV_NUM && fb->type == MV_NUM && fa->exact && fb->exact && fa->q.d == 1 &&
                            fb->q.d == 1 && !fa->is_float && !fb->is_float;
                }
                // the sign in front applies to the whole mixed number: -1\frac12 = -(1 + 1/2)
                r = mv__expr(P, mixed ? MV_ADD : MV_MUL, 0, r, f);
                continue;
            }
            op = MV_MUL;
        }
        int f;
        if (op != MV_MUL || mv__peek(P) != '-') f = mv__parse_postfix(P);
        else { P->pos++; f = mv__parse_postfix(P); f = mv__expr(P, MV_NEG, 0, f, -1); }   // 2 \cdot -3
        if (!fn_arg) mv__skip_units(P);
        r = mv__expr(P, op, 0, r, f);
    }
    if (neg && r >= 0) {
        r = mv__expr(P, MV_NEG, 0, r, -1);
        if (r >= 0) P->A->nodes[r].s0 = start;     // the sign is part of the text: -2^{2009} != 2^{2009}
        if (r >= 0) P->A->nodes[r].is_float = P->A->nodes[P->A->nodes[r].a].is_float
            && P->A->nodes[P->A->nodes[r].a].type == MV_NUM;
    }
    P->depth--;
    return r;
}

// A + B and A - B of two matrices of the same shape: a new matrix of cell sums.
static inline int mv__matrix_add(MvParser *P, int ma, int mb, int type) {
    const MvNode *x = &P->A->nodes[ma], *y = &P->A->nodes[mb];
    if (y->type != MV_MATRIX || x->rows != y->rows || x->cols != y->cols) return mv__fail(P);
    int m = mv__new(P, MV_MATRIX, 0, -1, -1);
    if (m < 0) return -1;
    int last = -1;
    for (int i = P->A->nodes[ma].a, j = P->A->nodes[mb].a; i >= 0 && j >= 0;
         i = P->A->nodes[i].next, j = P->A->nodes[j].next) {
        int c = mv__expr(P, type, 0, i, j);
        if (c < 0) return -1;
        if (last < 0) P->A->nodes[m].a = c; else P->A->nodes[last].next = c;
        last = c;
        P->A->nodes[m].n++;
    }
    P->A->nodes[m].rows = P->A->nodes[ma].rows; P->A->nodes[m].cols = P->A->nodes[ma].cols;
    P->A->nodes[m].s0 = P->A->nodes[ma].s0;
    return m;
}

// Sums with \pm.
static inline int mv__parse_additive(MvParser *P) {
    if (++P->depth > MV_MAX_DEPTH) return mv__fail(P);
    int r, start = (mv__ws(P), P->pos);
    if (mv__eat_cmd(P, "pm")) { int t = mv__parse_term(P, 0); r = mv__expr(P, MV_PM, 0, -1, t); }
    else if (mv__eat_cmd(P, "mp")) { int t = mv__parse_term(P, 0); r = mv__expr(P, MV_PM, 1, -1, t); }
    else r = mv__parse_term(P, 0);
    // \pm\infty != \pm 3
    if (r >= 0 && P->A->nodes[r].type == MV_PM && P->A->nodes[r].a < 0) P->A->nodes[r].s0 = start;
    for (int guard = 0; r >= 0 && guard < 4096; guard++) {
        int c = mv__peek(P), type, op = 0;
        if (c == '+') { P->pos++; type = MV_ADD; }
        else if (c == '-') { P->pos++; type = MV_SUB; }
        else if (mv__eat_cmd(P, "pm")) type = MV_PM;
        else if (mv__eat_cmd(P, "mp")) { type = MV_PM; op = 1; }
        else break;
        int t = mv__parse_term(P, 0);
        if (t >= 0 && P->A->nodes[r].type == MV_MATRIX && (type == MV_ADD || type == MV_SUB)) r = mv__matrix_add(P, r,
            t, type);
        else r = mv__expr(P, type, op, r, t);
    }
    P->depth--;
    return r;
}

// Relation operator at the cursor (consumed), or -1.
static inline int mv__relop(MvParser *P) {
    int c = mv__peek(P);
    if (c == '=') { P->pos++; return MV_R_EQ; }
    if (c == '<') { P->pos++; if (P->pos < P->len
                                  && P->s[P->pos] == '=') { P->pos++; return MV_R_LE; } return MV_R_LT; }
    if (c == '>') { P->pos++; if (P->pos < P->len
                                  && P->s[P->pos] == '=') { P->pos++; return MV_R_GE; } return MV_R_GT; }
    if (c == ':' && P->pos + 1 < P->len && P->s[P->pos + 1] == '=') { P->pos += 2; return MV_R_EQ; }
    if (mv__eat_cmd(P, "le")) return MV_R_LE;
    if (mv__eat_cmd(P, "ge")) return MV_R_GE;
    if (mv__eat_cmd(P, "ne")) return MV_R_NE;
    if (mv__eat_cmd(P, "in")) return MV_R_IN;
    if (mv__eat_cmd(P, "approx")) return MV_R_APPROX;
    return -1;
}

// item := union of relations; relation chains a < x < b.
static inline int mv__parse_rel(MvParser *P) {
    int first = mv__parse_additive(P);
    if (first < 0) return -1;
    // unions of intervals and sets
    while (mv__at_cmd(P, "cup")) {
        P->pos += 4;
        int nx = mv__parse_additive(P);
        if (nx < 0) return -1;
        int u;
        if (P->A->nodes[first].type == MV_UNION) u = first;
        else {
            u = mv__new(P, MV_UNION, 0, -1, -1);
            if (u < 0) return -1;
            P->A->nodes[u].a = first; P->A->nodes[u].n = 1;
        }
        int last = P->A->nodes[u].a;
        while (P->A->nodes[last].next >= 0) last = P->A->nodes[last].next;
        P->A->nodes[last].next = nx;
        P->A->nodes[u].n++;
        first = u;
    }
    int save = P->pos;
    int op = mv__relop(P);
    if (op < 0) { P->pos = save; return first; }
    int rel = mv__new(P, MV_REL, 0, -1, -1);
    if (rel < 0) return -1;
    P->A->nodes[rel].a = first; P->A->nodes[rel].n = 1;
    int last = first;
    for (int guard = 0; op >= 0 && guard < 64; guard++) {
        if (op == MV_R_APPROX) op = MV_R_EQ;
        int t = mv__parse_additive(P);
        if (t < 0) return -1;
        // x \in (a,b) \cup (c,d)
        while (mv__at_cmd(P, "cup")) {
            P->pos += 4;
            int nx = mv__parse_additive(P);
            if (nx < 0) return -1;
            int u = P->A->nodes[t].type == MV_UNION ? t : mv__new(P, MV_UNION, 0, -1, -1);
            if (u < 0) return -1;
            if (u != t) { P->A->nodes[u].a = t; P->A->nodes[u].n = 1; }
            int l2 = P->A->nodes[u].a;
            while (P->A->nodes[l2].next >= 0) l2 = P->A->nodes[l2].next;
            P->A->nodes[l2].next = nx; P->A->nodes[u].n++;
            t = u;
        }
        P->A->nodes[t].relop = (unsigned char)op;
        P->A->nodes[last].next = t;
        last = t;
        P->A->nodes[rel].n++;
        save = P->pos;
        op = mv__relop(P);
        if (op < 0) P->pos = save;
    }
    return rel;
}

// Is the next token a list separator: , ; \text{and} \text{or}?
static inline int mv__eat_sep(MvParser *P) {
    int c = mv__peek(P);
    if (c == ',') { P->pos++; return 1; }
    if (c == ';') { P->pos++; return 2; }
    if (mv__at_cmd(P, "text")) {
        int k = P->pos + 5;
        if (k < P->len && P->s[k] == '{') {
            int e = mv__group_end(P->s, P->len, k);
            if (e > 0) {
                int b = k + 1, t = e - 1;
                while (b < t && P->s[b] == ' ') b++;
                while (t > b && (P->s[t - 1] == ' ' || P->s[t - 1] == ',')) t--;
                if ((t - b == 3 && memcmp(P->s + b, "and", 3) == 0) || (t - b == 2 && memcmp(P->s + b, "or", 2) == 0)) {
                    P->pos = e; return 3;
                }
            }
        }
    }
    if (mv__at_word(P, "or")) { P->pos += 2; return 3; }
    if (mv__at_word(P, "and")) { P->pos += 3; return 3; }
    if (mv__eat_cmd(P, "land") || mv__eat_cmd(P, "lor") || mv__eat_cmd(P, "wedge") || mv__eat_cmd(P, "vee")) return 1;
    return 0;
}

// Is node i an equation lhs = rhs whose left side is a single symbol?
static inline int mv__labelled_eq(const MathAnswer *A, int i) {
    const MvNode *x = &A->nodes[i];
    return x->type == MV_REL && x->n == 2 && A->nodes[x->a].type == MV_SYM
        && A->nodes[A->nodes[x->a].next].relop == MV_R_EQ;
}
// "p=5,q=2;p=7,q=2" is two labelled points, not four equations: when every ';'-group of a top-level list
// is one equation or several labelled ones, the groups become sub-lists (each compares as a point).
static inline void mv__group_labelled(MathAnswer *A, int list) {
    for (int c = A->nodes[list].a; c >= 0; c = A->nodes[c].next) if (!mv__labelled_eq(A, c)) return;
    int head = -1, tail = -1, groups = 0;
    for (int c = A->nodes[list].a; c >= 0 && A->n_nodes < MV_MAX_NODES;) {
        int g0 = c, g1 = c, cnt = 1;
        while (A->nodes[g1].next >= 0 && A->nodes[A->nodes[g1].next].semi != 1) { g1 = A->nodes[g1].next; cnt++; }
        int nextc = A->nodes[g1].next, g = g0;
        if (cnt > 1) {
            g = A->n_nodes++;
            MvNode *x = &A->nodes[g];
            memset(x, 0, sizeof *x);
            x->type = MV_LIST; x->a = g0; x->b = -1; x->n = cnt; x->next = -1;
            x->s0 = A->nodes[g0].s0; x->s1 = A->nodes[g1].s1;
            A->nodes[g1].next = -1;
        }
        A->nodes[g].next = -1;
        if (tail < 0) head = g; else A->nodes[tail].next = g;
        tail = g; groups++;
        c = nextc;
        if (c >= 0 && A->n_nodes >= MV_MAX_NODES) {     // out of nodes: the rest stay ungrouped
            A->nodes[tail].next = c;
            while (c >= 0) { groups++; c = A->nodes[c].next; }
        }
    }
    A->nodes[list].a = head; A->nodes[list].n = groups;
}

// list := item (sep item)*; a single item is returned as is.
static inline int mv__parse_list(MvParser *P, int top) {
    if (++P->depth > MV_MAX_DEPTH) return mv__fail(P);
    int first = mv__parse_rel(P);
    if (first < 0) return -1;
    int list = -1, last = first, semis = 0, commas = 0;
    for (int guard = 0; guard < MV_MAX_NODES; guard++) {
        int sep = mv__eat_sep(P);
        if (!sep) break;
        if (top) { int c = mv__peek(P); if (c == 0) break; }      // trailing comma
        int it = mv__parse_rel(P);
        if (it < 0) return -1;
        if (sep == 2) { P->A->nodes[it].semi = 1; semis++; } else commas++;
        if (sep == 3) P->A->nodes[it].semi = 2;
        if (list < 0) {
            list = mv__new(P, MV_LIST, 0, -1, -1);
            if (list < 0) return -1;
            P->A->nodes[list].a = first; P->A->nodes[list].n = 1;
        }
        P->A->nodes[last].next = it;
        last = it;
        P->A->nodes[list].n++;
    }
    P->depth--;
    if (list >= 0 && top && semis && commas) mv__group_labelled(P->A, list);
    return list >= 0 ? list : first;
}

// Parses an answer string into A (which may be reused). Always succeeds: if the text does not
// parse, A->ok = 0 and it compares by its canonical string.
static inline void math_parse(const char *s, MathAnswer *A) {
    A->ok = 0; A->root = -1; A->n_nodes = 0; A->pool_n = 0; A->raw = NULL; A->raw_len = 0;
    A->len = 0; A->canon_len = 0; A->buf[0] = A->canon[0] = 0;
    if (!s) s = "";
    size_t n = strnlen(s, (size_t)MV_MAX_LEN + 1);
    if (n > (size_t)MV_MAX_LEN) { A->raw = s; A->raw_len = strlen(s); return; }
    int len = mv_normalize(s, n, A->buf, MV_MAX_LEN + 1);
    if (len < 0) { A->raw = s; A->raw_len = n; return; }
    A->len = len;
    for (int i = 0; i < len; i++) if (A->buf[i] != ' ') A->canon[A->canon_len++] = A->buf[i];
    A->canon[A->canon_len] = 0;
    if (len == 0) return;
    MvParser P;
    memset(&P, 0, sizeof P);
    P.A = A; P.s = A->buf; P.len = len;
    // Commas are thousands separators only if every comma in the answer sits between a digit and
    // exactly three digits (Math-Verify: "200,130" is 200130 but "1,000, 2" is a list).
    P.thousands = 1;
    int commas = 0;
    for (int i = 0; i < len && P.thousands; i++) {
        if (A->buf[i] != ',') continue;
        commas++;
        const char *t = A->buf;
        P.thousands = i > 0 && i + 3 < len && mv__isdigit((unsigned char)t[i - 1])
            && mv__isdigit((unsigned char)t[i + 1]) &&
                      mv__isdigit((unsigned char)t[i + 2]) && mv__isdigit((unsigned char)t[i + 3]) &&
                      !(i + 4 < len && mv__isdigit((unsigned char)t[i + 4]));
    }
    if (commas == 0) P.thousands = 0;
    int r = mv__parse_list(&P, 1);
    mv__ws(&P);
    if (r >= 0 && !P.err && P.pos == P.len) { A->ok = 1; A->root = r; }
}

// ---------------------------------------------------------------------------------------------
// Step 4: comparison.

typedef struct { int work, depth; const char *why; } MvCtx;

// Numbers equal up to the double rounding of evaluation.
static inline int mv__close(double a, double b) {
    if (isinf(a) || isinf(b)) return a == b;
    double m = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    return fabs(a - b) <= 1e-9 * m + 1e-12;
}
// Math-Verify's Float rule: both rounded to 6 decimals.
static inline int mv__round6_eq(double a, double b) {
    if (isinf(a) || isinf(b) || isnan(a) || isnan(b)) return a == b;
    // non-zero values that both round to 0 (4.6e-24 vs 5.6e-24) compare to 6 significant digits instead
    if (fabs(a) < 5e-7 && fabs(b) < 5e-7 && a != 0 && b != 0) return fabs(a - b) <= 5e-6 * (fabs(a) > fabs(b)
        ? fabs(a) : fabs(b));
    if (fabs(a) < 1e9 && fabs(b) < 1e9) return llround(a * 1e6) == llround(b * 1e6);
    return fabs(a - b) <= 1e-14 * (fabs(a) > fabs(b) ? fabs(a) : fabs(b));
}
// Compare source spans without spaces (last resort for expressions we cannot evaluate).
static inline int mv__span_eq(const MathAnswer *A, const MvNode *x, const MathAnswer *B, const MvNode *y) {
    int i = x->s0, j = y->s0;
    for (;;) {
        while (i < x->s1 && A->buf[i] == ' ') i++;
        while (j < y->s1 && B->buf[j] == ' ') j++;
        if (i >= x->s1 || j >= y->s1) return i >= x->s1 && j >= y->s1;
        if (A->buf[i] != B->buf[j]) return 0;
        i++; j++;
    }
}
// The big literal node at i (a NUM, or the negation of one), with its sign; NULL if none.
static inline const MvNode *mv__big(const MathAnswer *A, int i, int *neg) {
    const MvNode *x = &A->nodes[i];
    *neg = 0;
    if (x->type == MV_NEG && x->a >= 0) { x = &A->nodes[x->a]; *neg = 1; }
    return x->type == MV_NUM && x->bigint ? x : NULL;
}
// Two expressions, with sign choices sa/sb for their \pm.
static inline int mv__expr_eq(MvCtx *C, const MathAnswer *A, int ia, int sa, const MathAnswer *B, int ib, int sb) {
    const MvNode *x = &A->nodes[ia], *y = &B->nodes[ib];
    // a percentage equals its number or its fraction: 25\% == 25 == 0.25 (as Math-Verify). One level
    // only: unwrapping 5%%%%... on both sides branched 2^depth ways (a fuzzer timeout, 4.5 s per call).
    if (x->type == MV_PCT && !x->has_var && A->nodes[x->a].type != MV_PCT && mv__expr_eq(C, A, x->a, sa, B, ib,
        sb)) return 1;
    if (y->type == MV_PCT && !y->has_var && B->nodes[y->a].type != MV_PCT && mv__expr_eq(C, A, ia, sa, B, y->a,
        sb)) return 1;
    if (x->type == MV_SYM && y->type == MV_SYM) {
        C->why = "same symbol";
        return x->slen == y->slen && memcmp(A->pool + x->str, B->pool + y->str, (size_t)x->slen) == 0;
    }
    {   // big literals (over 18 digits, or overflowing): exact digits, never doubles
        int nx = 0, ny = 0;
        const MvNode *bx = mv__big(A, ia, &nx), *by = mv__big(B, ib, &ny);
        if (bx && by) {
            double va = x->v[sa][0], vb = y->v[sb][0];
            if ((bx->is_float || by->is_float) && fabs(va) < 1e9 && fabs(vb) < 1e9) {
                C->why = "decimal: both rounded to 6 places";
                return mv__round6_eq(va, vb);
            }
            C->why = "big literals compared digit by digit";
            return nx == ny && bx->slen == by->slen && memcmp(A->pool + bx->str, B->pool + by->str,
                (size_t)bx->slen) == 0;
        }
        if ((bx && isinf(bx->v[0][0])) || (by
            && isinf(by->v[0][0]))) { C->why = "a literal too large for a double"; return 0; }
    }
    if (!x->has_var && !y->has_var) {
        double va = x->v[sa][0], vb = y->v[sb][0];
        if ((x->is_float || y->is_float) && !isnan(va) && !isnan(vb)) {
            C->why = "decimal: both rounded to 6 places";
            return mv__round6_eq(va, vb);
        }
        if (x->exact && y->exact && !x->has_pm && !y->has_pm) {
            C->why = "exact rationals";
            return x->q.n == y->q.n && x->q.d == y->q.d;
        }
        if (isnan(va) || isnan(vb)) {
            C->why = "not evaluable: compared as text";
            return isnan(va) && isnan(vb) && mv__span_eq(A, x, B, y);
        }
        if ((isinf(va) || isinf(vb)) && !(x->has_inf && y->has_inf)) {   // 2^{2009}: overflow, not infinity
            C->why = "too large to evaluate: compared as text";
            return mv__span_eq(A, x, B, y);
        }
        C->why = "numeric value";
        return mv__close(va, vb);
    }
    // with variables: compare at the points where both are defined
    int valid = 0;
    for (int k = 0; k < MV_NPTS; k++) {
        double va = x->v[sa][k], vb = y->v[sb][k];
        if (isnan(va) || isnan(vb) || ((isinf(va) || isinf(vb)) && !(x->has_inf && y->has_inf))) continue;
        valid++;
        if (!mv__close(va, vb)) { C->why = "differ at a sample point"; return 0; }
    }
    if (valid == 0) { C->why = "no sample point in the domain: compared as text"; return mv__span_eq(A, x, B, y); }
    C->why = "equal at every sample point";
    return 1;
}

static inline int mv__eq(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b);

static inline int mv__is_equation(const MathAnswer *A, int i) {
    const MvNode *x = &A->nodes[i];
    if (x->type != MV_REL) return 0;
    for (int c = A->nodes[x->a].next; c >= 0; c = A->nodes[c].next) if (A->nodes[c].relop != MV_R_EQ) return 0;
    return 1;
}
static inline int mv__last_child(const MathAnswer *A, int i) {
    int c = A->nodes[i].a;
    while (c >= 0 && A->nodes[c].next >= 0) c = A->nodes[c].next;
    return c;
}
// An equation lhs = rhs whose right side has a \pm (and the left side none): x = \pm 5 is x = 5, x = -5.
static inline int mv__pm_equation(const MathAnswer *A, int i) {
    if (!mv__is_equation(A, i) || A->nodes[i].n != 2) return 0;
    int l = A->nodes[i].a, r = A->nodes[l].next;
    return mv__is_expr(A, r) && A->nodes[r].has_pm && !(mv__is_expr(A, l) && A->nodes[l].has_pm);
}

// Elements of a collection: a LIST/SET's children, or the thing itself; an expression with \pm
// counts as its two values. Writes (node, sign) pairs, returns the count.
static inline int mv__elems(const MathAnswer *A, int i, int *node, int *sign, int cap) {
    const MvNode *x = &A->nodes[i];
    int n = 0;
    int single = !(x->type == MV_LIST || x->type == MV_SET || x->type == MV_UNION);
    int c = single ? i : x->a;
    for (; c >= 0 && n < cap; c = single ? -1 : A->nodes[c].next) {
        const MvNode *e = &A->nodes[c];
        node[n] = c; sign[n] = 0; n++;
        if (((e->type < MV_EXPR_END && e->has_pm) || mv__pm_equation(A, c))
            && n < cap) { node[n] = c; sign[n] = 1; n++; }
    }
    return n;
}
static inline int mv__eq_signed(MvCtx *C, const MathAnswer *A, int a, int sa, const MathAnswer *B, int b, int sb) {
    if (mv__is_expr(A, a) && mv__is_expr(B, b)) return mv__expr_eq(C, A, a, sa, B, b, sb);
    // x = \pm 5 as two elements: the sign choice applies to its right-hand side
    int ea = mv__is_equation(A, a) && A->nodes[a].n == 2, eb = mv__is_equation(B, b) && B->nodes[b].n == 2;
    int ra = ea ? mv__last_child(A, a) : a, rb = eb ? mv__last_child(B, b) : b;
    if (ea && eb && (mv__pm_equation(A, a) || mv__pm_equation(B, b)))
        return mv__eq(C, A, A->nodes[a].a, B, B->nodes[b].a) && mv__eq_signed(C, A, ra, sa, B, rb, sb);
    if (ea != eb && mv__is_expr(A, ra) && mv__is_expr(B, rb)) return mv__expr_eq(C, A, ra, sa, B, rb, sb);
    return mv__eq(C, A, a, B, b);
}
// Unordered comparison: every element of each side equals some element of the other.
static inline int mv__set_eq(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b) {
    enum { CAP = 128 };
    int na_[CAP], sa_[CAP], nb_[CAP], sb_[CAP];
    int na = mv__elems(A, a, na_, sa_, CAP), nb = mv__elems(B, b, nb_, sb_, CAP);
    if (na == 0 || nb == 0) { C->why = "empty sets"; return na == nb; }
    for (int pass = 0; pass < 2; pass++) {
        int n1 = pass ? nb : na, n2 = pass ? na : nb;
        for (int i = 0; i < n1; i++) {
            int found = 0;
            for (int j = 0; j < n2 && !found; j++) {
                if (C->work > MV_MAX_WORK) return 0;
                found = pass ? mv__eq_signed(C, A, na_[j], sa_[j], B, nb_[i], sb_[i])
                             : mv__eq_signed(C, A, na_[i], sa_[i], B, nb_[j], sb_[j]);
            }
            if (!found) { C->why = "an element has no equal on the other side"; return 0; }
        }
    }
    C->why = "same elements (any order)";
    return 1;
}
// Ordered comparison of children lists.
static inline int mv__seq_eq(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b) {
    if (A->nodes[a].n != B->nodes[b].n) { C->why = "different lengths"; return 0; }
    int i = A->nodes[a].a, j = B->nodes[b].a;
    for (; i >= 0 && j >= 0; i = A->nodes[i].next, j = B->nodes[j].next)
        if (!mv__eq(C, A, i, B, j)) return 0;
    C->why = "same elements in order";
    return i < 0 && j < 0;
}

// lhs - rhs of relation i at point k, sign s.
static inline double mv__rel_diff(const MathAnswer *A, int l, int r, int s, int k) {
    return A->nodes[l].v[s][k] - A->nodes[r].v[s][k];
}
// Are (l1 - r1) and (l2 - r2) proportional with a constant ratio (positive if need_pos)?
static inline int mv__proportional(const MathAnswer *A, int l1, int r1, const MathAnswer *B, int l2, int r2,
                                   int need_pos) {
    if (!mv__is_expr(A, l1) || !mv__is_expr(A, r1) || !mv__is_expr(B, l2) || !mv__is_expr(B, r2)) return 0;
    // a \pm stands for two values, and the test below sees one: x = 2 \pm 1 is not x = 3
    if (A->nodes[l1].has_pm || A->nodes[r1].has_pm || B->nodes[l2].has_pm || B->nodes[r2].has_pm) return 0;
    // without variables every "ratio" is constant: 1 + \sqrt{97} \approx 1.36 would equal 2 + ...
    if (!(A->nodes[l1].has_var || A->nodes[r1].has_var) || !(B->nodes[l2].has_var || B->nodes[r2].has_var)) return 0;
    double ratio = NAN;
    int valid = 0;
    for (int k = 0; k < MV_NPTS; k++) {
        double d1 = mv__rel_diff(A, l1, r1, 0, k), d2 = mv__rel_diff(B, l2, r2, 0, k);
        if (isnan(d1) || isnan(d2) || isinf(d1) || isinf(d2)) continue;
        if (fabs(d2) < 1e-12 || fabs(d1) < 1e-12) { if (!(fabs(d1) < 1e-12 && fabs(d2) < 1e-12)) return 0; continue; }
        double rr = d1 / d2;
        // relative tolerance only: an absolute slack would make every tiny ratio "constant"
        if (valid && !(fabs(rr - ratio) <= 1e-9 * (fabs(rr) > fabs(ratio) ? fabs(rr) : fabs(ratio)))) return 0;
        ratio = rr; valid++;
    }
    if (!valid) return 0;
    return !need_pos || ratio > 0;
}
static inline int mv__flip(int op) {
    return op == MV_R_LT ? MV_R_GT : op == MV_R_GT ? MV_R_LT : op == MV_R_LE ? MV_R_GE : op == MV_R_GE ? MV_R_LE : op;
}
// Relation vs relation: equations by sides or proportional differences; inequalities with
// flipping (x > 3 == 3 < x) and chains term by term.
static inline int mv__rel_eq(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b) {
    int ta[16], tb[16], oa[16], ob[16], na = 0, nb = 0;
    for (int c = A->nodes[a].a; c >= 0 && na < 16; c = A->nodes[c].next) {
        ta[na] = c;
        oa[na] = A->nodes[c].relop;
        na++;
    }
    for (int c = B->nodes[b].a; c >= 0 && nb < 16; c = B->nodes[c].next) {
        tb[nb] = c;
        ob[nb] = B->nodes[c].relop;
        nb++;
    }
    int eqa = mv__is_equation(A, a), eqb = mv__is_equation(B, b);
    if (eqa != eqb) { C->why = "equation vs inequality"; return 0; }
    if (eqa) {   // first lhs vs last rhs, like Math-Verify's assignment chains
        int l1 = ta[0], r1 = ta[na - 1], l2 = tb[0], r2 = tb[nb - 1];
        if (mv__eq(C, A, l1, B, l2) && mv__eq(C, A, r1, B, r2)) { C->why = "same sides"; return 1; }
        if (mv__eq(C, A, l1, B, r2) && mv__eq(C, A, r1, B, l2)) { C->why = "same sides, swapped"; return 1; }
        if (mv__proportional(A, l1, r1, B, l2, r2, 0)) { C->why = "lhs - rhs proportional"; return 1; }
        C->why = "different equations";
        return 0;
    }
    // inequalities: write both in the direction of < / <=
    int dirA = (oa[1] == MV_R_GT || oa[1] == MV_R_GE), dirB = (ob[1] == MV_R_GT || ob[1] == MV_R_GE);
    if (na != nb) { C->why = "different chain lengths"; return 0; }
    int xa[16], xb[16], pa[16], pb[16];
    for (int i = 0; i < na; i++) {
        xa[i] = dirA ? ta[na - 1 - i] : ta[i];
        pa[i] = i == 0 ? -1 : dirA ? mv__flip(oa[na - i]) : oa[i];
        xb[i] = dirB ? tb[nb - 1 - i] : tb[i];
        pb[i] = i == 0 ? -1 : dirB ? mv__flip(ob[nb - i]) : ob[i];
    }
    for (int i = 1; i < na; i++) if (pa[i] != pb[i]) { C->why = "different relations"; return 0; }
    if (na == 2) {
        if (mv__eq(C, A, xa[0], B, xb[0]) && mv__eq(C, A, xa[1], B, xb[1])) { C->why = "same relation"; return 1; }
        int ne = pa[1] == MV_R_NE;
        if (ne && mv__eq(C, A, xa[0], B, xb[1]) && mv__eq(C, A, xa[1], B, xb[0])) {
            C->why = "same relation";
            return 1;
        }
        if (pa[1] != MV_R_IN && mv__proportional(A, xa[0], xa[1], B, xb[0], xb[1], !ne)) {
            C->why = "lhs - rhs proportional";
            return 1;
        }
        C->why = "different relations";
        return 0;
    }
    for (int i = 0; i < na; i++) if (!mv__eq(C, A, xa[i], B, xb[i])) { C->why = "different chains"; return 0; }
    C->why = "same chain";
    return 1;
}

// A relation in one variable as an interval: x > 3 -> (3, oo); 1 <= x < 2 -> [1, 2).
// lo/hi are node indices, or -1 for an infinite end.
static inline int mv__rel_interval(const MathAnswer *A, int r, int *lo, int *hi, int *lopen, int *ropen) {
    int t[3], o[3], n = 0;
    for (int c = A->nodes[r].a; c >= 0; c = A->nodes[c].next) {
        if (n == 3) return 0;
        t[n] = c;
        o[n] = A->nodes[c].relop;
        n++;
    }
    if (n < 2) return 0;
    int dir = (o[1] == MV_R_GT || o[1] == MV_R_GE);
    int x[3], p[3];
    for (int i = 0; i < n; i++) {
        x[i] = dir ? t[n - 1 - i] : t[i];
        p[i] = i == 0 ? -1 : dir ? mv__flip(o[n - i]) : o[i];
    }
    for (int i = 1; i < n; i++) if (p[i] != MV_R_LT && p[i] != MV_R_LE) return 0;
    int var = -1;
    for (int i = 0; i < n; i++) if (A->nodes[x[i]].type == MV_SYM) { if (var >= 0) return 0; var = i; }
    if (var < 0) return 0;
    for (int i = 0; i < n; i++) if (i != var && (!mv__is_expr(A, x[i]) || A->nodes[x[i]].has_var)) return 0;
    *lo = -1; *hi = -1; *lopen = 1; *ropen = 1;
    if (var > 0) { *lo = x[var - 1]; *lopen = p[var] == MV_R_LT; }
    if (var < n - 1) { *hi = x[var + 1]; *ropen = p[var + 1] == MV_R_LT; }
    return 1;
}
static inline int mv__is_inf(const MathAnswer *A, int i, int sign) {
    if (!mv__is_expr(A, i)) return 0;
    double v = A->nodes[i].v[0][0];
    return isinf(v) && (sign > 0 ? v > 0 : v < 0);
}
// A bracketed pair of numbers whose first exceeds the second: a point, not an interval.
static inline int mv__is_point(const MathAnswer *A, int i) {
    int l = A->nodes[i].a, r = l >= 0 ? A->nodes[l].next : -1;
    if (!mv__is_expr(A, l) || !mv__is_expr(A, r) || A->nodes[l].has_var || A->nodes[r].has_var) return 0;
    return A->nodes[l].v[0][0] > A->nodes[r].v[0][0];
}
static inline int mv__rel_vs_set(MvCtx *C, const MathAnswer *A, int r, const MathAnswer *B, int s) {
    int lo, hi, lopen, ropen;
    if (B->nodes[s].type != MV_INTERVAL || !mv__rel_interval(A, r, &lo, &hi, &lopen, &ropen)) return 0;
    const MvNode *y = &B->nodes[s];
    int blo = y->a, bhi = B->nodes[y->a].next;
    int ok = (lo < 0 ? mv__is_inf(B, blo, -1) : (lopen == y->lopen && mv__eq(C, A, lo, B, blo))) &&
             (hi < 0 ? mv__is_inf(B, bhi, +1) : (ropen == y->ropen && mv__eq(C, A, hi, B, bhi)));
    C->why = ok ? "inequality equals the interval" : "inequality differs from the interval";
    return ok;
}

// A labelled point: a list of equations x = 2, y = 1 with distinct single-symbol left sides. Writes its
// right-hand sides ordered by label name (so y = 1, x = 2 is the same point); returns the count, else 0.
static inline int mv__labelled(const MathAnswer *A, int i, int *vals, int cap) {
    const MvNode *x = &A->nodes[i];
    if (x->type != MV_LIST || x->n < 2 || x->n > cap) return 0;
    int lab[16], n = 0;
    for (int c = x->a; c >= 0; c = A->nodes[c].next) {
        if (n >= cap || n >= 16 || !mv__labelled_eq(A, c)) return 0;
        int l = A->nodes[c].a;
        const MvNode *sl = &A->nodes[l];
        int k = n++;
        for (; k > 0; k--) {     // insertion sort by name
            const MvNode *o = &A->nodes[lab[k - 1]];
            int m = sl->slen < o->slen ? sl->slen : o->slen, d = memcmp(A->pool + sl->str, A->pool + o->str, (size_t)m);
            if (d == 0 && sl->slen == o->slen) return 0;          // x = 1, x = 2: solutions, not a point
            if (d > 0 || (d == 0 && sl->slen > o->slen)) break;
            lab[k] = lab[k - 1]; vals[k] = vals[k - 1];
        }
        lab[k] = l; vals[k] = A->nodes[l].next;
    }
    return n;
}

// An answer read as a set of reals in one variable: an interval, x \in [a,b], a <= x < b, or a linear
// inequality 2x > 6 solved for x. Comparing these views keeps -2 <= x <= 7, [-2,7] and x \in [-2,7] one
// class. lo/hi: the node of a finite end, -1 for an infinite one, -2 for a solved value in lov/hiv.
typedef struct { int lo, hi, lopen, ropen, var; double lov, hiv; } MvIv;

// Does subtree i have at most one distinct symbol? Sets *sym to it (a node index).
static inline int mv__one_var(const MathAnswer *A, int i, int *sym, int depth) {
    if (i < 0) return 1;
    const MvNode *x = &A->nodes[i];
    if (x->type >= MV_EXPR_END || depth > MV_MAX_DEPTH * 8) return 0;
    if (x->type == MV_SYM) {
        if (*sym >= 0 && A->nodes[*sym].hash != x->hash) return 0;
        *sym = i;
        return 1;
    }
    if (!x->has_var) return 1;
    return mv__one_var(A, x->a, sym, depth + 1) && mv__one_var(A, x->b, sym, depth + 1);
}
// lhs op rhs with lhs - rhs linear in its one variable: the half-line it describes.
static inline int mv__solve_linear(const MathAnswer *A, int l, int r, int op, MvIv *v) {
    int sym = -1;
    if (!mv__is_expr(A, l) || !mv__is_expr(A, r) || A->nodes[l].has_pm || A->nodes[r].has_pm) return 0;
    if (A->nodes[l].has_inf || A->nodes[r].has_inf) return 0;
    if (!mv__one_var(A, l, &sym, 0) || !mv__one_var(A, r, &sym, 0) || sym < 0) return 0;
    double t[MV_NPTS], f[MV_NPTS];
    for (int k = 0; k < MV_NPTS; k++) {
        t[k] = mv__sym_value(A->nodes[sym].hash, k);
        f[k] = A->nodes[l].v[0][k] - A->nodes[r].v[0][k];
        if (!isfinite(f[k])) return 0;
    }
    double m = (f[1] - f[0]) / (t[1] - t[0]);
    if (!isfinite(m) || fabs(m) < 1e-9) return 0;
    for (int k = 2; k < MV_NPTS; k++) {
        double pred = f[0] + m * (t[k] - t[0]);
        if (fabs(f[k] - pred) > 1e-9 * (fabs(f[k]) + fabs(pred) + fabs(m * t[k])) + 1e-12) return 0;
    }
    double root = t[0] - f[0] / m;
    int strict = op == MV_R_LT || op == MV_R_GT, below = (op == MV_R_LT || op == MV_R_LE) == (m > 0);
    v->var = sym;
    if (below) { v->lo = -1; v->lopen = 1; v->hi = -2; v->hiv = root; v->ropen = strict; }
    else { v->lo = -2; v->lov = root; v->lopen = strict; v->hi = -1; v->ropen = 1; }
    return 1;
}
static inline int mv__interval_view(const MathAnswer *A, int i, MvIv *v, int depth) {
    const MvNode *x = &A->nodes[i];
    v->var = -1; v->lov = v->hiv = 0;
    if (x->type == MV_INTERVAL) {
        int l = x->a, r = l >= 0 ? A->nodes[l].next : -1;
        if (!mv__is_expr(A, l) || !mv__is_expr(A, r) || mv__is_point(A, i)) return 0;
        v->lo = mv__is_inf(A, l, -1) ? -1 : l;
        v->hi = mv__is_inf(A, r, +1) ? -1 : r;
        v->lopen = x->lopen || v->lo < 0;
        v->ropen = x->ropen || v->hi < 0;
        return 1;
    }
    if (x->type != MV_REL || depth > 0) return 0;
    int l = x->a, r = A->nodes[l].next;
    if (x->n == 2 && A->nodes[r].relop == MV_R_IN) {
        if (A->nodes[l].type != MV_SYM || !mv__interval_view(A, r, v, depth + 1)) return 0;
        v->var = l;
        return 1;
    }
    int lo, hi, lopen, ropen;
    if (mv__rel_interval(A, i, &lo, &hi, &lopen, &ropen)) {
        for (int c = x->a; c >= 0; c = A->nodes[c].next) if (A->nodes[c].type == MV_SYM) v->var = c;
        v->lo = lo >= 0 && mv__is_inf(A, lo, -1) ? -1 : lo;
        v->hi = hi >= 0 && mv__is_inf(A, hi, +1) ? -1 : hi;
        v->lopen = lopen || v->lo < 0;
        v->ropen = ropen || v->hi < 0;
        return 1;
    }
    if (x->n == 2) {
        int op = A->nodes[r].relop;
        if (op == MV_R_LT || op == MV_R_LE || op == MV_R_GT || op == MV_R_GE) return mv__solve_linear(A, l, r, op, v);
    }
    return 0;
}
static inline int mv__iv_end_eq(MvCtx *C, const MathAnswer *A, int ea, double va, const MathAnswer *B, int eb,
    double vb) {
    if ((ea == -1) != (eb == -1)) return 0;
    if (ea == -1) return 1;
    if (ea >= 0 && eb >= 0) return mv__eq(C, A, ea, B, eb);
    double x = ea >= 0 ? A->nodes[ea].v[0][0] : va, y = eb >= 0 ? B->nodes[eb].v[0][0] : vb;
    return !isnan(x) && !isnan(y) && mv__close(x, y);
}
static inline int mv__iv_eq(MvCtx *C, const MathAnswer *A, const MvIv *u, const MathAnswer *B, const MvIv *w) {
    if (u->var >= 0 && w->var >= 0) {
        const MvNode *p = &A->nodes[u->var], *q = &B->nodes[w->var];
        if (p->slen != q->slen || memcmp(A->pool + p->str, B->pool + q->str, (size_t)p->slen) != 0) {
            C->why = "inequalities in different variables";
            return 0;
        }
    }
    int ok = u->lopen == w->lopen && u->ropen == w->ropen && mv__iv_end_eq(C, A, u->lo, u->lov, B, w->lo, w->lov) &&
             mv__iv_end_eq(C, A, u->hi, u->hiv, B, w->hi, w->hiv);
    C->why = ok ? "the same set of reals" : "different sets of reals";
    return ok;
}

// The core: are node a of A and node b of B the same answer?
static inline int mv__eq_core(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b);
static inline int mv__eq(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b) {
    if (++C->work > MV_MAX_WORK) { C->why = "work limit"; return 0; }
    if (C->depth >= MV_MAX_DEPTH) { C->why = "depth limit"; return 0; }
    C->depth++;
    int r = mv__eq_core(C, A, a, B, b);
    C->depth--;
    return r;
}
static inline int mv__eq_core(MvCtx *C, const MathAnswer *A, int a, const MathAnswer *B, int b) {
    const MvNode *x = &A->nodes[a], *y = &B->nodes[b];
    int tx = x->type, ty = y->type;
    // x = 5 vs 5, x \in [1,2] vs [1,2]: compare the right-hand side
    if (tx == MV_REL || ty == MV_REL) {                 // inequalities, x \in I and intervals: as sets of reals
        MvIv u, w;
        if (mv__interval_view(A, a, &u, 0) && mv__interval_view(B, b, &w, 0)) return mv__iv_eq(C, A, &u, B, &w);
    }
    if ((mv__pm_equation(A, a) && (ty == MV_LIST || ty == MV_SET)) || (mv__pm_equation(B, b) && (tx == MV_LIST
        || tx == MV_SET)))
        return mv__set_eq(C, A, a, B, b);              // x = \pm 5 vs x = 5, x = -5
    if (tx == MV_REL && ty != MV_REL) {
        int last = mv__last_child(A, a);
        if (mv__is_equation(A, a) || (x->n == 2 && A->nodes[last].relop == MV_R_IN)) return mv__eq(C, A, last, B, b);
        return mv__rel_vs_set(C, A, a, B, b);
    }
    if (ty == MV_REL && tx != MV_REL) {
        int last = mv__last_child(B, b);
        if (mv__is_equation(B, b) || (y->n == 2 && B->nodes[last].relop == MV_R_IN)) return mv__eq(C, A, a, B, last);
        return mv__rel_vs_set(C, B, b, A, a);
    }
    if (tx == MV_REL) return mv__rel_eq(C, A, a, B, b);
    if (tx < MV_EXPR_END && ty < MV_EXPR_END) {
        if (x->has_pm || y->has_pm) return mv__set_eq(C, A, a, B, b);
        return mv__expr_eq(C, A, a, 0, B, b, 0);
    }
    if (tx == MV_TEXT || ty == MV_TEXT) {
        // \text{yes} == yes: compare letters of the other side's source, lower-cased
        const MathAnswer *T = tx == MV_TEXT ? A : B, *O = tx == MV_TEXT ? B : A;
        const MvNode *t = tx == MV_TEXT ? x : y, *o = tx == MV_TEXT ? y : x;
        C->why = "text";
        if (o->type == MV_TEXT) return t->slen == o->slen && memcmp(T->pool + t->str, O->pool + o->str,
                                                                    (size_t)t->slen) == 0;
        int k = 0;
        for (int i = o->s0; i < o->s1; i++) {
            unsigned char c = (unsigned char)O->buf[i];
            if (c == ' ') continue;
            if (!(mv__isalpha(c) || mv__isdigit(c))) return 0;
            if (k >= t->slen || T->pool[t->str + k] != mv__lower(c)) return 0;
            k++;
        }
        return k == t->slen && k > 0;
    }
    if (tx == MV_LIST || tx == MV_SET || ty == MV_LIST || ty == MV_SET) {
        // collections of solutions: any order. A labelled point (x = 2, y = 1) is a tuple, not a list.
        int colx = tx == MV_LIST || tx == MV_SET, coly = ty == MV_LIST || ty == MV_SET;
        if (colx && coly) {
            int tmp[16];
            if (!mv__labelled(A, a, tmp, 16) != !mv__labelled(B, b, tmp,
                16)) { C->why = "labelled point vs list"; return 0; }
            return mv__set_eq(C, A, a, B, b);
        }
        int other = colx ? ty : tx;
        const MathAnswer *L0 = A;
        const MvNode *o = colx ? y : x;
        // a labelled point x = 2, y = 1 is the tuple of its values ordered by label: (2, 1)
        int vals[16];
        int nl = colx ? mv__labelled(L0, a, vals, 16) : mv__labelled(B, b, vals, 16);
        if (nl && (other == MV_TUPLE || (other == MV_INTERVAL && o->lopen && o->ropen))) {
            const MathAnswer *L = colx ? A : B, *T = colx ? B : A;
            if (o->n != nl) { C->why = "different lengths"; return 0; }
            int k = 0;
            for (int c = o->a; c >= 0 && k < nl; c = T->nodes[c].next, k++)
                if (!(colx ? mv__eq(C, L, vals[k], T, c) : mv__eq(C, T, c, L,
                    vals[k]))) { C->why = "a coordinate differs"; return 0; }
            C->why = "labelled point vs tuple";
            return 1;
        }
        // a tuple is ordered and a list or set is not: never equal, so that (1,2) = 1,2 = 2,1 = (2,1) cannot chain
        if (other == MV_TUPLE || other == MV_INTERVAL) { C->why = "tuple vs list or set"; return 0; }
        if (other >= MV_EXPR_END && other != MV_REL && other != MV_TEXT) { C->why = "different structures"; return 0; }
        return mv__set_eq(C, A, a, B, b);        // 5 vs \{5\}
    }
    if (tx != ty) {
        if ((tx == MV_UNION && x->n == 1) || (ty == MV_UNION && y->n == 1))
            return mv__eq(C, A, tx == MV_UNION ? x->a : a, B, ty == MV_UNION ? y->a : b);
        C->why = "different structures";
        return 0;
    }
    switch (tx) {
    case MV_TUPLE: return mv__seq_eq(C, A, a, B, b);
    case MV_INTERVAL: {
        // (2,0) is a point, not an interval: its brackets do not matter. An infinite end is open
        // however it is written: [-\infty, 1) == (-\infty, 1).
        int point = (mv__is_point(A, a) || mv__is_point(B, b)) && x->lopen == x->ropen && y->lopen == y->ropen;
        int xl = x->lopen || mv__is_inf(A, x->a, -1), xr = x->ropen || mv__is_inf(A, A->nodes[x->a].next, +1);
        int yl = y->lopen || mv__is_inf(B, y->a, -1), yr = y->ropen || mv__is_inf(B, B->nodes[y->a].next, +1);
        if (!point && (xl != yl || xr != yr)) { C->why = "different interval ends"; return 0; }
        return mv__seq_eq(C, A, a, B, b); }
    case MV_UNION: return mv__set_eq(C, A, a, B, b) || 0;
    case MV_MATRIX:
        if (x->rows != y->rows || x->cols != y->cols) { C->why = "different matrix shapes"; return 0; }
        return mv__seq_eq(C, A, a, B, b);
    }
    return 0;
}

// Parsed-form equality: use this to compare many answers without re-parsing.
static inline int math_parsed_equal_why(const MathAnswer *A, const MathAnswer *B, const char **why) {
    MvCtx C; C.work = 0; C.depth = 0; C.why = "";
    int r;
    if (A->raw || B->raw) {       // over-long answers: byte equality
        const char *sa = A->raw ? A->raw : A->canon, *sb = B->raw ? B->raw : B->canon;
        size_t la = A->raw ? A->raw_len : (size_t)A->canon_len, lb = B->raw ? B->raw_len : (size_t)B->canon_len;
        r = la == lb && la > 0 && memcmp(sa, sb, la) == 0;
        C.why = "too long to parse: compared as raw text";
    } else if (A->canon_len > 0 && A->canon_len == B->canon_len && memcmp(A->canon, B->canon,
                                                                          (size_t)A->canon_len) == 0) {
        r = 1; C.why = "same normalized text";
    } else if (A->ok && B->ok) {
        r = mv__eq(&C, A, A->root, B, B->root);
    } else {
        r = 0; C.why = A->canon_len == 0 || B->canon_len == 0 ? "empty answer" : "not parsed, and the text differs";
    }
    if (why) *why = C.why;
    return r;
}
static inline int math_parsed_equal(const MathAnswer *A, const MathAnswer *B) {
    return math_parsed_equal_why(A, B, NULL);
}

// 1 if the two extracted answers are mathematically equivalent, else 0. Symmetric.
// why (optional) receives a short static string explaining the decision.
// The two parse buffers are per thread and reused, so a call costs the parsing, not malloc/free (which
// shrank the heap with a brk syscall on every call). Thread-safe: callers run under OpenMP.
static inline int math_answers_equal_why(const char *a, const char *b, const char **why) {
    static MV_THREAD_LOCAL MathAnswer tls_pair[2];
    MathAnswer *A = &tls_pair[0], *B = &tls_pair[1];
    math_parse(a, A);
    math_parse(b, B);
    int r = math_parsed_equal_why(A, B, why);
    A->raw = B->raw = NULL;       // do not keep pointers to the caller's strings
    return r;
}
static inline int math_answers_equal(const char *a, const char *b) { return math_answers_equal_why(a, b, NULL); }

// ---------------------------------------------------------------------------------------------
// Extraction

// Case-insensitive comparison of n bytes with a lower-case needle.
// Extraction policies. No state: the caller passes the policy with every call.
//   MV_EXTRACT_REFERENCE  the order of Math-Verify's parse() on a whole response (the default): the
//                         boxed answer, else LaTeX or a number after an "answer" anchor, else the
//                         last LaTeX expression or plain number/expression of the response.
//   MV_EXTRACT_BOXED      only \boxed{} / \fbox{} (strict).
//   MV_EXTRACT_ANCHORED   the EMPO repository's configuration (try_extract_without_anchor=False,
//                         LaTeX only): the boxed answer, else LaTeX after an "answer" anchor.
typedef enum { MV_EXTRACT_REFERENCE = 0, MV_EXTRACT_BOXED = 1, MV_EXTRACT_ANCHORED = 2 } MvExtractPolicy;

// Case-insensitive comparison of n bytes with a lower-case needle.
static inline int mv__ci_eq(const char *s, const char *needle, size_t n) {
    for (size_t k = 0; k < n; k++) if (mv__lower((unsigned char)s[k]) != needle[k]) return 0;
    return 1;
}
// Does s[b..e) normalize to something? "\quad", "$", "." and "^\circ" are no answer.
static inline int mv__has_content(const char *s, size_t b, size_t e) {
    if (e - b > (size_t)MV_MAX_LEN) return 1;
    char tmp[MV_MAX_LEN + 1];
    int l = mv_normalize(s + b, e - b, tmp, (int)sizeof tmp);
    return l != 0;   // -1 (too deep to normalize) still counts: it compares as raw text
}
// Output buffer: appends pieces, always NUL-terminated, truncating at cap.
typedef struct { char *out; size_t cap, n; } MvEmit;
static inline void mv__emit_add(MvEmit *E, const char *s, size_t b, size_t e) {
    while (b < e && mv__isspace((unsigned char)s[b])) b++;
    while (e > b && mv__isspace((unsigned char)s[e - 1])) e--;
    for (size_t i = b; i < e && E->n + 1 < E->cap; i++) E->out[E->n++] = s[i];
    if (E->cap) E->out[E->n < E->cap ? E->n : E->cap - 1] = 0;
}

// ---- boxes
typedef struct { size_t cmd, b, e; } MvBox;    // "\boxed" at cmd, content s[b..e)
enum { MV_NBOX = 16 };
// Is s[b..e) only separators between boxes of one final statement: spaces, , ; and or, \text{ and },
// \quad, $, \( \) \[ \], "x ="? Then "\boxed{-2} \text{ and } \boxed{1}" is one answer, the list -2, 1.
static inline int mv__box_sep(const char *s, size_t b, size_t e) {
    if (e - b > 64) return 0;
    for (size_t i = b; i < e;) {
        unsigned char c = (unsigned char)s[i];
        if (mv__isspace(c) || c == ',' || c == ';' || c == '$' || c == '~' || c == '&' || c == '{'
            || c == '}') { i++; continue; }
        if (e - i >= 3 && mv__ci_eq(s + i, "and", 3)) { i += 3; continue; }
        if (mv__isalpha(c) && (i + 1 == e || !mv__isalpha((unsigned char)s[i + 1]))) {    // "x = \boxed{2}"
            size_t j = i + 1;
            while (j < e && mv__isspace((unsigned char)s[j])) j++;
            if (j < e && s[j] == '=') { i = j + 1; continue; }
        }
        if (c == '=') { i++; continue; }
        if (e - i >= 2 && mv__ci_eq(s + i, "or", 2)) { i += 2; continue; }
        if (c == '\\') {
            size_t j = i + 1;
            while (j < e && mv__isalpha((unsigned char)s[j])) j++;
            size_t l = j - i - 1;
            if (l == 0 && j < e && strchr("()[],;!\\ ", s[j])) { i = j + 1; continue; }
            if ((l == 4 && (memcmp(s + i + 1, "quad", 4) == 0 || memcmp(s + i + 1, "text", 4) == 0)) ||
                (l == 5 && memcmp(s + i + 1, "qquad", 5) == 0) || (l == 6 && memcmp(s + i + 1, "mathrm",
                    6) == 0)) { i = j; continue; }
            return 0;
        }
        return 0;
    }
    return 1;
}
// The final boxed answer: the last complete box, with the boxes just before it that only separators
// divide from it (identical neighbours once, as Math-Verify). 1 if found.
static inline int mv__extract_boxes(const char *s, size_t n, MvEmit *E) {
    enum { STACK = 64 };
    size_t open_at[STACK], open_cmd[STACK];
    long open_depth[STACK];
    int top = 0, nb = 0;
    long depth = 0;
    MvBox box[MV_NBOX];                  // ring of the last outermost complete boxes, by closing order
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\') {
            size_t at = i;
            if (i + 1 < n && s[i + 1] == '\\') at = i + 1;             // \\boxed{..}: a doubled backslash
            size_t l = (at + 6 <= n && memcmp(s + at, "\\boxed", 6) == 0) ? 6 : (at + 5 <= n && memcmp(s + at,
                "\\fbox", 5) == 0) ? 5 : 0;
            if (l && !(at + l < n && mv__isalpha((unsigned char)s[at + l]))) {
                size_t k = at + l;
                while (k < n && s[k] == ' ') k++;
                if (k < n && s[k] == '{') {
                    if (top < STACK) { open_at[top] = k + 1; open_cmd[top] = at; open_depth[top] = depth; top++; }
                    depth++;
                    i = k;
                    continue;
                }
                if (k > at + l && k < n && top == 0) {        // "\boxed 5": up to the next space or $
                    size_t e = k;
                    while (e < n && !mv__isspace((unsigned char)s[e]) && s[e] != '$') e++;
                    MvBox bx = {at, k, e};
                    box[nb++ % MV_NBOX] = bx;
                    i = e - 1;
                    continue;
                }
                i = at + l - 1;
                continue;
            }
            i++;                                     // skip the escaped character: \{ \} do not count
            continue;
        }
        if (c == '{') depth++;
        else if (c == '}') {
            depth--;
            while (top > 0 && open_depth[top - 1] > depth) top--;     // stray braces closed it earlier
            if (top > 0 && open_depth[top - 1] == depth) {
                top--;
                if (top == 0) { MvBox bx = {open_cmd[top], open_at[top], i}; box[nb++ % MV_NBOX] = bx; }
            }
        }
    }
    // walk back from the last box while separators join them
    int have = nb < MV_NBOX ? nb : MV_NBOX, first = nb, used = 0;
    while (first > nb - have) {
        const MvBox *cur = &box[(first - 1) % MV_NBOX];
        if (first < nb) {
            const MvBox *nx = &box[first % MV_NBOX];
            size_t gap_b = cur->e < n && s[cur->e] == '}' ? cur->e + 1 : cur->e;
            if (!mv__box_sep(s, gap_b, nx->cmd)) break;
        }
        first--;
    }
    // skip empty boxes; the answer is the list of the rest (an empty last box: no answer)
    const MvBox *prev = NULL;
    for (int k = first; k < nb; k++) {
        const MvBox *bx = &box[k % MV_NBOX];
        if (!mv__has_content(s, bx->b, bx->e)) continue;
        if (prev && prev->e - prev->b == bx->e - bx->b && memcmp(s + prev->b, s + bx->b, bx->e - bx->b) == 0) continue;
        if (used) mv__emit_add(E, ";", 0, 1);     // ";" not ",": \boxed{1}\boxed{234} is not 1,234
        mv__emit_add(E, s, bx->b, bx->e);
        prev = bx;
        used++;
    }
    if (nb > 0 && !used) return -1;                 // boxes, all empty
    return used > 0;
}

// ---- LaTeX environments and plain numbers (the fallbacks)
// Where the closing delimiters are: the next $$, $ (or line end), \] and \) (or line end) after a
// position, cached as an interval [from, pos] with no closer before pos, so that a response full of
// unclosed openers costs one pass, not one pass per opener.
typedef struct { const char *s; size_t n, from[4], pos[4]; } MvScan;
static inline void mv__scan_init(MvScan *S, const char *s, size_t n) {
    S->s = s; S->n = n;
    for (int t = 0; t < 4; t++) { S->from[t] = n; S->pos[t] = n; }
}
static inline int mv__closer_is(const char *s, size_t n, size_t j, int t) {
    int esc = j > 0 && s[j - 1] == '\\';
    switch (t) {
    case 0: return j + 1 < n && s[j] == '$' && s[j + 1] == '$' && !esc;
    case 1: return s[j] == '\n' || (s[j] == '$' && !esc);
    case 2: return j + 1 < n && s[j] == '\\' && s[j + 1] == ']' && !esc;
    default: return s[j] == '\n' || (j + 1 < n && s[j] == '\\' && s[j + 1] == ')' && !esc);
    }
}
static inline size_t mv__next_closer(MvScan *S, int t, size_t f) {
    if (f >= S->n) return S->n;
    if (S->from[t] <= f && f <= S->pos[t]) return S->pos[t];
    size_t stop = f < S->from[t] ? S->from[t] : S->n, j = f;
    while (j < stop && !mv__closer_is(S->s, S->n, j, t)) j++;
    if (j == stop && f < S->from[t]) j = S->pos[t];
    S->from[t] = f; S->pos[t] = j;
    return j;
}
// A LaTeX environment starting at s[i]: $$..$$, \[..\], $..$ (one line), \(..\), or \frac{n}{m}. Sets
// the content [*b, *e) and returns the end of the match, or 0.
static inline size_t mv__env_at(MvScan *S, size_t i, size_t *b, size_t *e) {
    const char *s = S->s;
    size_t n = S->n;
    int esc = i > 0 && s[i - 1] == '\\';
    if (i + 1 < n && s[i] == '$' && s[i + 1] == '$') {
        if (esc) return 0;
        size_t j = mv__next_closer(S, 0, i + 2);
        if (j >= n || j == i + 2) return 0;
        *b = i + 2; *e = j; return j + 2;
    }
    if (s[i] == '$') {
        if (esc || (i > 0 && mv__isdigit((unsigned char)s[i - 1]))) return 0;
        size_t j = mv__next_closer(S, 1, i + 1);
        if (j >= n || s[j] == '\n' || j == i + 1) return 0;
        *b = i + 1; *e = j; return j + 1;
    }
    if (s[i] == '\\' && i + 1 < n && (s[i + 1] == '[' || s[i + 1] == '(')) {
        if (esc) return 0;
        size_t j = mv__next_closer(S, s[i + 1] == '[' ? 2 : 3, i + 2);
        if (j >= n || s[j] == '\n' || j == i + 2) return 0;
        *b = i + 2; *e = j; return j + 2;
    }
    if (s[i] == '\\' && i + 6 <= n && memcmp(s + i, "\\frac{", 6) == 0) {     // \frac{3}{4} without $..$
        size_t j = i + 6, k;
        for (int g = 0; g < 2; g++) {
            k = j;
            if (k < n && s[k] == '-') k++;
            size_t d = k;
            while (k < n && k - d < 64 && (mv__isdigit((unsigned char)s[k]) || ((s[k] == '.' || s[k] == ',')
                && k > d))) k++;
            if (k == d || k >= n || s[k] != '}') return 0;
            j = k + 1;
            if (g == 0) { if (j >= n || s[j] != '{') return 0; j++; }
        }
        *b = i; *e = j; return j;
    }
    return 0;
}
// A percent suffix after position j: \%, %, percent, pct. Returns its end, or j.
static inline size_t mv__pct_at(const char *s, size_t n, size_t j) {
    size_t k = j;
    while (k < n && (s[k] == ' ' || s[k] == '\t')) k++;
    if (k < n && s[k] == '%') return k + 1;
    if (k + 1 < n && s[k] == '\\' && s[k + 1] == '%') return k + 2;
    if (k + 7 <= n && mv__ci_eq(s + k, "percent", 7)) return k + 7 + (k + 10 <= n && mv__ci_eq(s + k + 7, "age", 3)
        ? 3 : 0);
    if (k + 3 <= n && mv__ci_eq(s + k, "pct", 3)) return k + 3;
    return j;
}
// A plain number or arithmetic expression at s[i] (after a space, '=', "**" or the start): 12, -3.5,
// 1,234, 3/4, 2^10. Sets [*b, *e) and returns the end of the match, or 0.
static inline size_t mv__num_at(const char *s, size_t n, size_t i, size_t *b, size_t *e) {
    if (i > 0) {
        char p = s[i - 1];
        if (!(mv__isspace((unsigned char)p) || p == '=' || (p == '*' && i >= 2 && s[i - 2] == '*')
            || p == '$')) return 0;
        if (p == '$' && !(i >= 2 && (mv__isspace((unsigned char)s[i - 2]) || s[i - 2] == '='))) return 0;
    }
    size_t k = i;
    if (k < n && s[k] == '-') k++;
    if (k < n && s[k] == '(') k++;
    if (k < n && s[k] == '-') k++;
    if (k >= n || !(mv__isdigit((unsigned char)s[k]) || (s[k] == '.' && k + 1 < n
        && mv__isdigit((unsigned char)s[k + 1])))) return 0;
    int ops = 0;
    size_t last_digit = k, cap = i + 128;     // a bounded scan: no quadratic cost on long digit runs
    while (k < n && k < cap) {
        unsigned char c = (unsigned char)s[k];
        if (mv__isdigit(c)) { last_digit = k; k++; continue; }
        if (c == '.' && k + 1 < n && mv__isdigit((unsigned char)s[k + 1])) { k++; continue; }
        if (c == ',' && k + 3 < n && mv__isdigit((unsigned char)s[k + 1]) && mv__isdigit((unsigned char)s[k + 2]) &&
            mv__isdigit((unsigned char)s[k + 3]) && !(k + 4 < n
                && mv__isdigit((unsigned char)s[k + 4]))) { k++; continue; }
        if (c == '+' || c == '-' || c == '*' || c == '/' || c == '^' || c == '(' || c == ')') { ops++; k++; continue; }
        if (c == ' ' && k + 1 < n && strchr("+-*/^", s[k + 1])) { k++; continue; }
        if (c == ' ' && k > 0 && strchr("+-*/^", s[k - 1])) { k++; continue; }
        break;
    }
    size_t end = last_digit + 1;
    while (end < k && s[end] == ')') end++;          // (3+4)
    // an opening parenthesis needs its closing one
    int bal = 0;
    for (size_t j = i; j < end; j++) bal += s[j] == '(' ? 1 : s[j] == ')' ? -1 : 0;
    size_t st = i;
    if (bal > 0 && s[st] == '(') { st++; bal--; }
    if (bal > 0 && st + 1 < end && s[st] == '-' && s[st + 1] == '(') return 0;
    while (bal < 0 && end > st && s[end - 1] == ')') { end--; bal++; }
    if (bal != 0) return 0;
    (void)ops;
    *b = st; *e = end;
    return end;
}
// One candidate answer: content pieces [b, e) of up to 6 environments joined by "and" / "or" / ",".
typedef struct { size_t end, start; int n; size_t b[6], e[6]; unsigned char pct[6]; } MvCand;
// Environments (or, if nums, numbers) starting exactly at i, joined: fills c, returns its end or 0.
static inline size_t mv__cand_at(MvScan *S, size_t i, int nums, MvCand *c) {
    const char *s = S->s;
    size_t n = S->n;
    size_t b, e, end = mv__env_at(S, i, &b, &e);
    if (!end && nums) end = mv__num_at(s, n, i, &b, &e);
    if (!end) return 0;
    c->n = 0; c->start = i;
    for (;;) {
        size_t pe = mv__pct_at(s, n, end);
        c->b[c->n] = b; c->e[c->n] = e; c->pct[c->n] = pe != end; c->n++;
        end = pe;
        if (c->n == 6 || nums) break;                  // Math-Verify joins LaTeX environments only
        size_t k = end;
        while (k < n && mv__isspace((unsigned char)s[k])) k++;
        if (k < n && s[k] == ',') k++;
        size_t k0 = k;
        while (k < n && mv__isspace((unsigned char)s[k])) k++;
        if (k + 3 <= n && mv__ci_eq(s + k, "and", 3)) k += 3;
        else if (k + 2 <= n && mv__ci_eq(s + k, "or", 2)) k += 2;
        else if (k0 == k && !(k0 > end && s[k0 - 1] == ',')) break;
        while (k < n && mv__isspace((unsigned char)s[k])) k++;
        size_t b2, e2, end2 = k < n ? mv__env_at(S, k, &b2, &e2) : 0;
        if (!end2) break;
        b = b2; e = e2; end = end2;
    }
    c->end = end;
    return end;
}
static inline int mv__cand_content(const char *s, const MvCand *c) {
    for (int k = 0; k < c->n; k++) if (mv__has_content(s, c->b[k], c->e[k])) return 1;
    return 0;
}
static inline void mv__cand_emit(const char *s, const MvCand *c, MvEmit *E) {
    int used = 0;
    for (int k = 0; k < c->n; k++) {
        if (!mv__has_content(s, c->b[k], c->e[k])) continue;
        if (used++) mv__emit_add(E, ";", 0, 1);
        mv__emit_add(E, s, c->b[k], c->e[k]);
        if (c->pct[k]) mv__emit_add(E, "\\%", 0, 2);
    }
}
// The first candidate starting in s[i..lim] (LaTeX first tried at each position; numbers if nums).
static inline int mv__first_cand(MvScan *S, size_t i, size_t lim, int nums, MvCand *c) {
    const char *s = S->s;
    for (size_t j = i; j <= lim && j < S->n; j++) {
        if (s[j] == '\n') nums = 0;                               // the number patterns do not cross lines
        if ((s[j] == '$' || s[j] == '\\') && mv__cand_at(S, j, 0, c) && mv__cand_content(s, c)) return 1;
        if (nums && (mv__isdigit((unsigned char)s[j]) || s[j] == '-' || s[j] == '(' || s[j] == '.') &&
            mv__cand_at(S, j, 1, c) && mv__cand_content(s, c)) return 1;
    }
    return 0;
}
// Anchored answers, Math-Verify's priorities: "final answer ... is" X, then "answer:" X, then "answer" X
// (X within 50 characters). Among the matches of the best priority, the one that ends last wins.
static inline int mv__extract_anchored(const char *s, size_t n, int nums, MvEmit *E) {
    MvCand best, c;
    MvScan S;
    mv__scan_init(&S, s, n);
    int best_pri = 1 << 30;
    best.end = 0;
    for (size_t i = 0; i + 6 <= n; i++) {
        if ((s[i] | 32) != 'a' || !mv__ci_eq(s + i, "answer", 6)) continue;
        size_t q = i + 6;
        int found = 0, pri = 0;
        if (i >= 6 && mv__ci_eq(s + i - 6, "final ", 6)) {       // final answer .{0,100} is :? X
            for (size_t j = q; j + 3 <= n && j <= q + 100 && !found; j++) {
                if (!(mv__isspace((unsigned char)s[j]) && mv__ci_eq(s + j + 1, "is", 2))) continue;
                size_t k = j + 3;
                if (k < n && s[k] == ':') k++;
                while (k < n && mv__isspace((unsigned char)s[k])) k++;
                if (mv__cand_at(&S, k, 0, &c) || (nums && mv__cand_at(&S, k, 1, &c))) { found = mv__cand_content(s,
                    &c); pri = 50; }
            }
        }
        if (!found && q < n && s[q] == ':' && mv__first_cand(&S, q + 1, q + 51, nums, &c)) { found = 1; pri = 100; }
        if (!found && mv__first_cand(&S, q, q + 50, nums, &c)) { found = 1; pri = 200; }
        if (!found) continue;
        if (pri < best_pri || (pri == best_pri && c.end >= best.end)) { best = c; best_pri = pri; }
        if (c.end > i) i = c.end - 1;                   // matches do not overlap
    }
    if (best_pri == 1 << 30) return 0;
    mv__cand_emit(s, &best, E);
    return 1;
}
// No anchor: the LaTeX environment or plain number/expression that ends last.
static inline int mv__extract_last(const char *s, size_t n, MvEmit *E) {
    MvCand best, c;
    MvScan S;
    mv__scan_init(&S, s, n);
    int have = 0;
    for (size_t i = 0; i < n; i++) {
        int ok = ((s[i] == '$' || s[i] == '\\') && mv__cand_at(&S, i, 0, &c)) ||
                 ((mv__isdigit((unsigned char)s[i]) || s[i] == '-' || s[i] == '(' || s[i] == '.') && mv__cand_at(&S,
                     i, 1, &c));
        if (!ok) continue;
        if (mv__cand_content(s, &c) && (!have || c.end >= best.end)) { best = c; have = 1; }
        i = c.end - 1;
    }
    if (!have) return 0;
    mv__cand_emit(s, &best, E);
    return 1;
}

// Final answer of a model response under a policy (MvExtractPolicy). Writes a NUL-terminated string of
// at most cap bytes into out (truncated if longer). Returns 1 if an answer was found, 0 if not (also
// when cap < 2: no room for an answer). An answer that normalizes to nothing ("\quad", "$") is none.
static inline int math_extract_answer_policy(const char *response, char *out, size_t cap, int policy) {
    if (cap) out[0] = 0;
    if (!response || cap < 2) return 0;
    size_t n = strlen(response);
    MvEmit E = {out, cap, 0};
    int r = mv__extract_boxes(response, n, &E);
    if (r > 0) return E.n > 0;
    if (policy == MV_EXTRACT_BOXED || r < 0) { out[0] = 0; return 0; }    // boxed but empty: no answer
    // the fallbacks read the end of a long response only: the final answer is there, and the work stays
    // bounded on hostile megabytes
    size_t off = n > MV_FALLBACK_WINDOW ? n - MV_FALLBACK_WINDOW : 0;
    E.n = 0; out[0] = 0;
    if (mv__extract_anchored(response + off, n - off, policy == MV_EXTRACT_REFERENCE, &E)) return E.n > 0;
    if (policy != MV_EXTRACT_REFERENCE) return 0;
    E.n = 0; out[0] = 0;
    return mv__extract_last(response + off, n - off, &E) && E.n > 0;
}
// The default policy, the reference's (MV_EXTRACT_REFERENCE).
static inline int math_extract_answer(const char *response, char *out, size_t cap) {
    return math_extract_answer_policy(response, out, cap, MV_EXTRACT_REFERENCE);
}

#endif // MATH_VERIFY_H
