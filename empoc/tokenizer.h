// tokenizer.h: the Qwen2 byte-level BPE tokenizer and the chat templates, header-only, shared by
// train_empo.c, train_empo.cu, dev/convert.c and the tests. It reproduces what Hugging Face
// `tokenizers` does with the Qwen2 tokenizer.json, token for token:
//   1. added tokens (<|im_start|>, ...) are cut out of the text first, when the caller allows it;
//   2. each piece between them is NFC-normalized;
//   3. split by the Qwen2 pre-tokenizer regex (hand-compiled below, Unicode classes from
//      unicode_tables.h);
//   4. each split is BPE-merged by merge rank over its raw bytes (byte-level BPE: the GPT-2
//      byte<->char mapping only matters when reading/writing tokenizer.json, so the vocabulary is
//      kept as raw bytes).
// Input need not be valid UTF-8: an ill-formed byte is kept as itself (a "raw byte": class other
// for the regex, untouched by NFC), so decode(encode(x)) == NFC(x) for any bytes x.
// Format of the blob embedded in checkpoints and the chat templates: see doc/tokenizer.md.
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdarg.h>
#include <limits.h>
#include "json.h"
#include "unicode_tables.h"

enum { TOK_F_ADDED = 1, TOK_F_SPECIAL = 2 };   // per-id flags
enum { TOK_PRE_QWEN2 = 1 };                     // the only pre-tokenizer implemented
enum { TEMPLATE_QWEN_MATH_COT, TEMPLATE_PLAIN };

typedef struct { uint64_t key; int32_t rank, id; } tok__mslot;   // merge hash slot: (left,right) -> rank, result

typedef struct Tokenizer {
    int n_vocab;              // ids are 0..n_vocab-1; an id with no bytes is a hole (never produced)
    uint32_t *off;            // n_vocab+1 offsets: token id is bytes[off[id] .. off[id+1])
    unsigned char *bytes;
    unsigned char *flags;     // per id: TOK_F_ADDED / TOK_F_SPECIAL
    int byte_id[256];         // the token of each single byte
    int n_merges;
    int32_t *merges;          // per rank: left id, right id, merged id
    tok__mslot *mslots;       // open-addressing hash over (left,right)
    size_t mmask; int mshift;
    int n_added;
    int32_t *added;           // added token ids, longest content first (leftmost-longest match)
    unsigned char added_first[256];   // bytes that can start an added token
    int nfc;                  // NFC-normalize before pre-tokenizing
    int pretok;               // TOK_PRE_QWEN2
} Tokenizer;

// The Qwen2 pre-tokenizer regex as tokenizer.json spells it. Only this one is implemented.
#define TOK_QWEN2_PATTERN \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

static inline void tok__err(char *err, size_t cap, const char *fmt, ...) {
    if (!err || !cap) return;
    va_list ap; va_start(ap, fmt); vsnprintf(err, cap, fmt, ap); va_end(ap);
}

// ---------------------------------------------------------------------------------------------
// Growable arrays

typedef struct { int *v; size_t n, cap; } tok__ivec;
static inline int tok__ipush(tok__ivec *a, int x) {
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 256;
        int *nv = (int *)realloc(a->v, nc * sizeof(int));
        if (!nv) return -1;
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = x;
    return 0;
}
typedef struct { uint32_t *v; size_t n, cap; } tok__uvec;
static inline int tok__upush(tok__uvec *a, uint32_t x) {
    if (a->n == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 256;
        uint32_t *nv = (uint32_t *)realloc(a->v, nc * sizeof(uint32_t));
        if (!nv) return -1;
        a->v = nv; a->cap = nc;
    }
    a->v[a->n++] = x;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and Unicode properties

#define TOK_RAW 0x110000u   // code point stand-in for an ill-formed byte b: TOK_RAW + b

// Decodes one well-formed UTF-8 sequence at s[0..n), n >= 1 (no overlongs, no surrogates).
// Anything else is one raw byte.
static inline int tok__utf8(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n >= 2 && (s[1] & 0xC0) == 0x80) { *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu); return 2; }
    } else if (c >= 0xE0 && c <= 0xEF) {
        if (n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80) {
            uint32_t v = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
            if (v >= 0x800 && (v < 0xD800 || v > 0xDFFF)) { *cp = v; return 3; }
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        if (n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80) {
            uint32_t v = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
            if (v >= 0x10000 && v <= 0x10FFFF) { *cp = v; return 4; }
        }
    }
    *cp = TOK_RAW + c;
    return 1;
}
static inline int tok__utf8_put(unsigned char *o, uint32_t cp) {   // o has room for 4
    if (cp >= TOK_RAW) { o[0] = (unsigned char)(cp - TOK_RAW); return 1; }
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | (cp >> 6)); o[1] = (unsigned char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12)); o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18)); o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
// Class (low 3 bits) and NFC flag of a code point; raw bytes are "other" and NFC-inert.
static inline int tok__prop(uint32_t cp) {
    if (cp >= 0x110000) return TOK_CLS_OTHER;
    return tok_ublocks[(size_t)tok_uindex[cp / TOK_UBLOCK] * TOK_UBLOCK + (cp % TOK_UBLOCK)];
}
// Class of the character starting at s[p] (p < n), and its length in bytes.
static inline int tok__cls_at(const unsigned char *s, size_t n, size_t p, int *len) {
    if (s[p] < 0x80) { *len = 1; return tok_ublocks[(size_t)tok_uindex[0] * TOK_UBLOCK + s[p]] & 7; }
    uint32_t cp;
    *len = tok__utf8(s + p, n - p, &cp);
    return tok__prop(cp) & 7;
}

// ---------------------------------------------------------------------------------------------
// NFC (Unicode Standard Annex #15): full canonical decomposition, canonical ordering, then
// canonical composition. Hangul syllables are algorithmic.

enum { TOK_SBASE = 0xAC00, TOK_LBASE = 0x1100, TOK_VBASE = 0x1161, TOK_TBASE = 0x11A7,
       TOK_LCOUNT = 19, TOK_VCOUNT = 21, TOK_TCOUNT = 28, TOK_NCOUNT = 588, TOK_SCOUNT = 11172 };

static inline int tok__ccc(uint32_t cp) {
    int lo = 0, hi = TOK_N_CCC - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (tok_ccc_cp[mid] == cp) return tok_ccc_val[mid];
        if (tok_ccc_cp[mid] < cp) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}
static inline int tok__decompose(uint32_t cp, tok__uvec *out) {
    if (cp >= TOK_SBASE && cp < TOK_SBASE + TOK_SCOUNT) {
        uint32_t si = cp - TOK_SBASE;
        if (tok__upush(out, TOK_LBASE + si / TOK_NCOUNT) ||
            tok__upush(out, TOK_VBASE + (si % TOK_NCOUNT) / TOK_TCOUNT))
            return -1;
        if (si % TOK_TCOUNT) return tok__upush(out, TOK_TBASE + si % TOK_TCOUNT);
        return 0;
    }
    int lo = 0, hi = TOK_N_DECOMP - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t k = tok_decomp[3 * mid];
        if (k == cp) {   // decompositions nest at most a few levels (table data, not input)
            if (tok__decompose(tok_decomp[3 * mid + 1], out)) return -1;
            return tok_decomp[3 * mid + 2] ? tok__decompose(tok_decomp[3 * mid + 2], out) : 0;
        }
        if (k < cp) lo = mid + 1; else hi = mid - 1;
    }
    return tok__upush(out, cp);
}
static inline uint32_t tok__compose(uint32_t a, uint32_t b) {   // 0 if the pair does not compose
    if (a >= TOK_LBASE && a < TOK_LBASE + TOK_LCOUNT && b >= TOK_VBASE && b < TOK_VBASE + TOK_VCOUNT)
        return TOK_SBASE + ((a - TOK_LBASE) * TOK_VCOUNT + (b - TOK_VBASE)) * TOK_TCOUNT;
    if (a >= TOK_SBASE && a < TOK_SBASE + TOK_SCOUNT && (a - TOK_SBASE) % TOK_TCOUNT == 0 &&
        b > TOK_TBASE && b < TOK_TBASE + TOK_TCOUNT)
        return a + (b - TOK_TBASE);
    int lo = 0, hi = TOK_N_COMP - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uint32_t ka = tok_comp[3 * mid], kb = tok_comp[3 * mid + 1];
        if (ka == a && kb == b) return tok_comp[3 * mid + 2];
        if (ka < a || (ka == a && kb < b)) lo = mid + 1; else hi = mid - 1;
    }
    return 0;
}
// True when s[0..n) is certainly NFC already (no code point that NFC could touch), the common case.
static inline int tok__nfc_quick(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) { i++; continue; }
        uint32_t cp;
        i += (size_t)tok__utf8(s + i, n - i, &cp);
        if (tok__prop(cp) & TOK_NFC_FLAG) return 0;
    }
    return 1;
}
typedef struct { unsigned char *v; size_t n, cap; } tok__bvec;
static inline int tok__bput(tok__bvec *a, const unsigned char *s, size_t n) {
    if (n == 0) return 0;   // also keeps NULL + 0 (undefined behaviour) out of the memcpy below
    if (a->n + n > a->cap) {
        size_t nc = a->cap ? a->cap : 256;
        while (nc < a->n + n) nc *= 2;
        unsigned char *nv = (unsigned char *)realloc(a->v, nc);
        if (!nv) return -1;
        a->v = nv; a->cap = nc;
    }
    memcpy(a->v + a->n, s, n); a->n += n;
    return 0;
}
// Canonical ordering: each run of non-starters is stably sorted by combining class. Short runs
// by insertion; long ones (hostile text) by counting sort, so the cost stays linear.
static inline int tok__reorder(uint32_t *v, size_t n) {
    for (size_t a = 0; a < n;) {
        if (tok__ccc(v[a]) == 0) { a++; continue; }
        size_t b = a;
        while (b < n && tok__ccc(v[b]) != 0) b++;
        if (b - a < 32) {
            for (size_t i = a + 1; i < b; i++) {
                uint32_t x = v[i];
                int cc = tok__ccc(x);
                size_t j = i;
                while (j > a && tok__ccc(v[j - 1]) > cc) { v[j] = v[j - 1]; j--; }
                v[j] = x;
            }
        } else {
            size_t count[257] = {0};
            uint32_t *tmp = (uint32_t *)malloc((b - a) * sizeof(uint32_t));
            if (!tmp) return -1;
            for (size_t i = a; i < b; i++) count[tok__ccc(v[i]) + 1]++;
            for (int c = 1; c <= 256; c++) count[c] += count[c - 1];
            for (size_t i = a; i < b; i++) tmp[count[tok__ccc(v[i])]++] = v[i];
            memcpy(v + a, tmp, (b - a) * sizeof(uint32_t));
            free(tmp);
        }
        a = b;
    }
    return 0;
}
// Full NFC of a short stretch s[0..n), appended to out. 0 ok, -1 out of memory.
static inline int tok__nfc_region(const unsigned char *s, size_t n, tok__bvec *out) {
    tok__uvec b = {NULL, 0, 0};
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tok__utf8(s + i, n - i, &cp);
        if (tok__decompose(cp, &b)) { free(b.v); return -1; }
    }
    if (tok__reorder(b.v, b.n)) { free(b.v); return -1; }
    // composition: each character joins the last starter unless a character between them blocks it
    size_t w = 0, starter = (size_t)-1;
    int last_cc = -1;
    for (size_t i = 0; i < b.n; i++) {
        uint32_t c = b.v[i];
        int cc = tok__ccc(c);
        if (starter != (size_t)-1) {
            int blocked = (w - 1 > starter) && (last_cc == 0 || last_cc >= cc);
            uint32_t comp = blocked ? 0 : tok__compose(b.v[starter], c);
            if (comp) { b.v[starter] = comp; continue; }
        }
        if (cc == 0) starter = w;
        last_cc = cc;
        b.v[w++] = c;
    }
    int rc = 0;
    for (size_t i = 0; i < w && rc == 0; i++) {
        unsigned char o[4];
        rc = tok__bput(out, o, (size_t)tok__utf8_put(o, b.v[i]));
    }
    free(b.v);
    return rc;
}
// NFC of s[0..n) into a malloc'd buffer (*out, *outn). 0 ok, -1 out of memory.
// A character without the NFC flag is a starter that never combines with what precedes it, so
// the text splits before each such character into independent stretches; only stretches that
// hold a flagged character are normalized, the rest is copied.
static inline int tok__nfc(const unsigned char *s, size_t n, unsigned char **out, size_t *outn) {
    tok__bvec o = {NULL, 0, 0};
    size_t i = 0, safe = 0, copied = 0;   // safe: start of the last unflagged character
    *out = NULL; *outn = 0;
    while (i < n) {
        uint32_t cp;
        size_t l = (size_t)tok__utf8(s + i, n - i, &cp);
        if (!(tok__prop(cp) & TOK_NFC_FLAG)) { safe = i; i += l; continue; }
        size_t j = i + l;
        while (j < n) {
            size_t l2 = (size_t)tok__utf8(s + j, n - j, &cp);
            if (!(tok__prop(cp) & TOK_NFC_FLAG)) break;
            j += l2;
        }
        if (tok__bput(&o, s + copied, safe - copied) || tok__nfc_region(s + safe, j - safe, &o)) {
            free(o.v);
            return -1;
        }
        copied = safe = i = j;
    }
    if (tok__bput(&o, s + copied, n - copied) || tok__bput(&o, (const unsigned char *)"", 1)) { free(o.v); return -1; }
    *out = o.v; *outn = o.n - 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The Qwen2 pre-tokenizer. The regex
//   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N} | ?[^\s\p{L}\p{N}]+[\r\n]*
//   | \s*[\r\n]+ | \s+(?!\S) | \s+
// is applied with leftmost-first alternation, repeatedly from the end of the last match. Every
// character is a letter, number, whitespace or "other", so some alternative always matches and
// the matches tile the text. tok__split returns the end of the match starting at p.

static inline size_t tok__run(const unsigned char *s, size_t n, size_t p, int cls) {   // end of a run of cls
    int l;
    while (p < n && tok__cls_at(s, n, p, &l) == cls) p += (size_t)l;
    return p;
}
static inline size_t tok__split(const unsigned char *s, size_t n, size_t p) {
    int l0, l1 = 0;
    int c0 = tok__cls_at(s, n, p, &l0);
    size_t p1 = p + (size_t)l0;
    // 1: contractions, ASCII case-insensitive; the long s U+017F case-folds to 's' as well
    if (s[p] == '\'' && p1 < n) {
        unsigned a = s[p1] | 0x20u, b = p1 + 1 < n ? (s[p1 + 1] | 0x20u) : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return p1 + 1;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return p1 + 2;
        if (s[p1] == 0xC5 && p1 + 1 < n && s[p1 + 1] == 0xBF) return p1 + 2;
    }
    int c1 = p1 < n ? tok__cls_at(s, n, p1, &l1) : -1;
    // 2: letters, optionally led by one character that is not CR/LF, a letter or a number
    if (c0 == TOK_CLS_LETTER) return tok__run(s, n, p1, TOK_CLS_LETTER);
    if (c0 != TOK_CLS_NEWLINE && c0 != TOK_CLS_NUMBER && c1 == TOK_CLS_LETTER)
        return tok__run(s, n, p1 + (size_t)l1, TOK_CLS_LETTER);
    // 3: one number
    if (c0 == TOK_CLS_NUMBER) return p1;
    // 4: optional space, a run of "other", then any CR/LF
    size_t q = 0;
    if (c0 == TOK_CLS_OTHER) q = tok__run(s, n, p1, TOK_CLS_OTHER);
    else if (s[p] == ' ' && c1 == TOK_CLS_OTHER) q = tok__run(s, n, p1 + (size_t)l1, TOK_CLS_OTHER);
    if (q) {
        while (q < n && (s[q] == '\r' || s[q] == '\n')) q++;
        return q;
    }
    // whitespace from here on: scan the whole run, remembering its last CR/LF and last character
    size_t last_nl = (size_t)-1, last = p;
    q = p;
    for (;;) {
        int l, c = tok__cls_at(s, n, q, &l);
        if (c != TOK_CLS_SPACE && c != TOK_CLS_NEWLINE) break;
        if (c == TOK_CLS_NEWLINE) last_nl = q;
        last = q;
        q += (size_t)l;
        if (q >= n) break;
    }
    if (last_nl != (size_t)-1) return last_nl + 1;   // 5: \s*[\r\n]+ backtracks to the last CR/LF
    if (q >= n) return q;                            // 6: \s+(?!\S) at the end of the text
    if (last > p) return last;                       // 6: leave the last space for the next word
    return q;                                        // 7: \s+
}

// ---------------------------------------------------------------------------------------------
// BPE over the bytes of one split: repeatedly merge the adjacent pair with the lowest merge rank
// (leftmost on ties), as HF does. Short splits use a flat array scan; long ones a heap.

#define TOK_EMPTY_KEY UINT64_MAX
#define TOK_SCAN_MAX 64
static int tok_scan_max = TOK_SCAN_MAX;   // tests lower this to drive the heap path

static inline const tok__mslot *tok__merge(const Tokenizer *t, int a, int b) {
    if (!t->mslots) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> t->mshift);
    for (;;) {
        const tok__mslot *m = &t->mslots[h];
        if (m->key == key) return m;
        if (m->key == TOK_EMPTY_KEY) return NULL;
        h = (h + 1) & t->mmask;
    }
}

typedef struct { int32_t rank, pos; } tok__hent;
typedef struct { int *sym, *nxt, *prv; tok__hent *heap; size_t cap; } tok__scratch;

static inline int tok__hless(tok__hent a, tok__hent b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}
static inline void tok__hpush(tok__hent *h, size_t *n, tok__hent e) {
    size_t i = (*n)++;
    while (i > 0 && tok__hless(e, h[(i - 1) / 2])) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = e;
}
static inline tok__hent tok__hpop(tok__hent *h, size_t *n) {
    tok__hent top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && tok__hless(h[c + 1], h[c])) c++;
        if (!tok__hless(h[c], last)) break;
        h[i] = h[c]; i = c;
    }
    h[i] = last;
    return top;
}

static inline int tok__bpe_heap(const Tokenizer *t, const unsigned char *s, size_t n, tok__ivec *out,
                                tok__scratch *sc) {
    if (n > sc->cap) {
        size_t nc = n;
        int *a = (int *)realloc(sc->sym, nc * sizeof(int)); if (!a) return -1; sc->sym = a;
        a = (int *)realloc(sc->nxt, nc * sizeof(int)); if (!a) return -1; sc->nxt = a;
        a = (int *)realloc(sc->prv, nc * sizeof(int)); if (!a) return -1; sc->prv = a;
        tok__hent *h = (tok__hent *)realloc(sc->heap, 3 * nc * sizeof(tok__hent)); if (!h) return -1; sc->heap = h;
        sc->cap = nc;
    }
    int *sym = sc->sym, *nxt = sc->nxt, *prv = sc->prv;
    size_t hn = 0;   // each merge pushes at most 2 entries, so 3n bounds the heap
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[s[i]];
        nxt[i] = i + 1 < n ? (int)(i + 1) : -1;
        prv[i] = (int)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const tok__mslot *m = tok__merge(t, sym[i], sym[i + 1]);
        if (m) { tok__hent e = {m->rank, (int32_t)i}; tok__hpush(sc->heap, &hn, e); }
    }
    while (hn) {
        tok__hent e = tok__hpop(sc->heap, &hn);
        int i = e.pos, j;
        if (sym[i] < 0 || (j = nxt[i]) < 0) continue;
        const tok__mslot *m = tok__merge(t, sym[i], sym[j]);
        if (!m || m->rank != e.rank) continue;   // stale: a rank names exactly one pair
        sym[i] = m->id; sym[j] = -1;
        nxt[i] = nxt[j];
        if (nxt[j] >= 0) prv[nxt[j]] = i;
        if (prv[i] >= 0 && (m = tok__merge(t, sym[prv[i]], sym[i]))) {
            tok__hent f = {m->rank, prv[i]}; tok__hpush(sc->heap, &hn, f);
        }
        if (nxt[i] >= 0 && (m = tok__merge(t, sym[i], sym[nxt[i]]))) {
            tok__hent f = {m->rank, i}; tok__hpush(sc->heap, &hn, f);
        }
    }
    for (int i = 0; i >= 0; i = nxt[i])
        if (tok__ipush(out, sym[i])) return -1;
    return 0;
}

static inline int tok__bpe(const Tokenizer *t, const unsigned char *s, size_t n, tok__ivec *out, tok__scratch *sc) {
    if (n == 1) return tok__ipush(out, t->byte_id[s[0]]);
    if (n > (size_t)tok_scan_max || n > TOK_SCAN_MAX) return tok__bpe_heap(t, s, n, out, sc);
    int sym[TOK_SCAN_MAX];
    int32_t rk[TOK_SCAN_MAX], mid[TOK_SCAN_MAX];   // rank / result of the pair (sym[i], sym[i+1])
    int m = (int)n;
    for (int i = 0; i < m; i++) sym[i] = t->byte_id[s[i]];
    for (int i = 0; i + 1 < m; i++) {
        const tok__mslot *e = tok__merge(t, sym[i], sym[i + 1]);
        rk[i] = e ? e->rank : INT32_MAX; mid[i] = e ? e->id : -1;
    }
    while (m > 1) {
        int best = -1; int32_t br = INT32_MAX;
        for (int i = 0; i + 1 < m; i++) if (rk[i] < br) { br = rk[i]; best = i; }
        if (best < 0) break;
        sym[best] = mid[best];
        // drop symbol best+1 and pair best+1; pairs best-1 and best change
        memmove(&sym[best + 1], &sym[best + 2], (size_t)(m - best - 2) * sizeof(int));
        if (m - best - 3 > 0) {
            memmove(&rk[best + 1], &rk[best + 2], (size_t)(m - best - 3) * sizeof(int32_t));
            memmove(&mid[best + 1], &mid[best + 2], (size_t)(m - best - 3) * sizeof(int32_t));
        }
        m--;
        for (int i = best - 1; i <= best; i++) {
            if (i < 0 || i + 1 >= m) continue;
            const tok__mslot *e = tok__merge(t, sym[i], sym[i + 1]);
            rk[i] = e ? e->rank : INT32_MAX; mid[i] = e ? e->id : -1;
        }
    }
    for (int i = 0; i < m; i++) if (tok__ipush(out, sym[i])) return -1;
    return 0;
}

// One stretch of text without added tokens: normalize, split, merge.
static inline int tok__segment(const Tokenizer *t, const unsigned char *s, size_t n, tok__ivec *out, tok__scratch *sc) {
    if (n == 0) return 0;
    unsigned char *norm = NULL;
    if (t->nfc && !tok__nfc_quick(s, n)) {
        if (tok__nfc(s, n, &norm, &n)) return -1;
        s = norm;
    }
    int rc = 0;
    for (size_t p = 0; p < n && rc == 0;) {
        size_t e = tok__split(s, n, p);
        rc = tok__bpe(t, s + p, e - p, out, sc);
        p = e;
    }
    free(norm);
    return rc;
}

// The added token starting at s (longest match), or -1; *len gets its length.
static inline int tok__added_at(const Tokenizer *t, const unsigned char *s, size_t n, size_t *len) {
    for (int k = 0; k < t->n_added; k++) {
        int id = t->added[k];
        size_t L = t->off[id + 1] - t->off[id];
        if (L <= n && memcmp(s, t->bytes + t->off[id], L) == 0) { *len = L; return id; }
    }
    return -1;
}

// Encodes text[0..len). allow_special: cut out every added token (special or not) found in the
// text, leftmost-longest first, exactly as HF `encode` does; 0 treats the whole text as plain
// text. Returns the number of ids and sets *ids (malloc'd, never NULL on success), or -1 on
// out-of-memory / text over 2 GB / a tokenizer that was never loaded.
static inline int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, int allow_special, int **ids) {
    *ids = NULL;
    if (!t->off || len > (size_t)INT_MAX) return -1;
    const unsigned char *s = (const unsigned char *)text;
    tok__ivec out = {NULL, 0, 0};
    tok__scratch sc = {NULL, NULL, NULL, NULL, 0};
    int rc = 0;
    size_t seg = 0;
    if (allow_special && t->n_added) {
        for (size_t i = 0; i < len && rc == 0;) {
            size_t L;
            int id = t->added_first[s[i]] ? tok__added_at(t, s + i, len - i, &L) : -1;
            if (id < 0) { i++; continue; }
            rc = tok__segment(t, s + seg, i - seg, &out, &sc);
            if (rc == 0) rc = tok__ipush(&out, id);
            i += L; seg = i;
        }
    }
    if (rc == 0) rc = tok__segment(t, s + seg, len - seg, &out, &sc);
    free(sc.sym); free(sc.nxt); free(sc.prv); free(sc.heap);
    if (rc == 0 && !out.v) { out.v = (int *)malloc(sizeof(int)); if (!out.v) rc = -1; }
    if (rc) { free(out.v); return -1; }
    *ids = out.v;
    return (int)out.n;
}

// The bytes of token id (not NUL-terminated), or NULL with *len = 0 for ids it does not have.
static inline const char *tokenizer_token(const Tokenizer *t, int id, int *len) {
    if (id < 0 || id >= t->n_vocab || t->off[id + 1] == t->off[id]) { if (len) *len = 0; return NULL; }
    if (len) *len = (int)(t->off[id + 1] - t->off[id]);
    return (const char *)t->bytes + t->off[id];
}
// Concatenated bytes of ids (unknown ids contribute nothing). malloc'd, NUL-terminated.
static inline char *tokenizer_decode(const Tokenizer *t, const int *ids, int n, size_t *len_out) {
    if (len_out) *len_out = 0;
    size_t total = 0;
    for (int i = 0; i < n; i++) { int l; tokenizer_token(t, ids[i], &l); total += (size_t)l; }
    char *o = (char *)malloc(total + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        int l; const char *b = tokenizer_token(t, ids[i], &l);
        if (l) { memcpy(o + k, b, (size_t)l); k += (size_t)l; }
    }
    o[k] = 0;
    if (len_out) *len_out = k;
    return o;
}
// Id of the added token whose text is content, or -1.
static inline int tokenizer_special_id(const Tokenizer *t, const char *content) {
    size_t L = strlen(content);
    for (int k = 0; k < t->n_added; k++) {
        int id = t->added[k];
        if (t->off[id + 1] - t->off[id] == L && memcmp(t->bytes + t->off[id], content, L) == 0) return id;
    }
    return -1;
}
// The ids that end a response: <|im_end|> then <|endoftext|>, those present. Returns the count.
static inline int tokenizer_eos_ids(const Tokenizer *t, int *eos, int max) {
    const char *names[2] = {"<|im_end|>", "<|endoftext|>"};
    int n = 0;
    for (int i = 0; i < 2 && n < max; i++) { int id = tokenizer_special_id(t, names[i]); if (id >= 0) eos[n++] = id; }
    return n;
}

// ---------------------------------------------------------------------------------------------
// Building a Tokenizer (shared by the JSON and blob loaders)

static inline void tokenizer_free(Tokenizer *t) {
    free(t->off); free(t->bytes); free(t->flags); free(t->merges); free(t->mslots); free(t->added);
    memset(t, 0, sizeof *t);
}

// Given off/bytes/flags/merges (merges already checked to be concatenations), builds byte_id,
// the merge hash and the added-token list. Fails on a missing single-byte token or a repeated merge.
static inline int tok__finish(Tokenizer *t, const char *src, char *err, size_t errcap) {
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int id = 0; id < t->n_vocab; id++) {
        if (t->off[id + 1] - t->off[id] != 1 || (t->flags[id] & TOK_F_ADDED)) continue;
        unsigned char b = t->bytes[t->off[id]];
        if (t->byte_id[b] >= 0) {
            tok__err(err, errcap, "%s: byte 0x%02x has two tokens (%d and %d)", src, b, t->byte_id[b], id);
            return -1;
        }
        t->byte_id[b] = id;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0) {
            tok__err(err, errcap, "%s: no token for byte 0x%02x (not a byte-level BPE vocabulary)", src, b);
            return -1;
        }
    if (t->n_merges) {
        size_t cap = 1; int bits = 0;
        while (cap < (size_t)t->n_merges + (size_t)t->n_merges / 2 + 1) { cap *= 2; bits++; }
        t->mslots = (tok__mslot *)malloc(cap * sizeof(tok__mslot));
        if (!t->mslots) { tok__err(err, errcap, "%s: out of memory", src); return -1; }
        for (size_t i = 0; i < cap; i++) { t->mslots[i].key = TOK_EMPTY_KEY; t->mslots[i].rank = t->mslots[i].id = -1; }
        t->mmask = cap - 1; t->mshift = 64 - bits;
        if (bits == 0) t->mshift = 63;   // cap 1 cannot happen (n_merges >= 1 gives cap >= 2)
        for (int r = 0; r < t->n_merges; r++) {
            int a = t->merges[3 * r], b = t->merges[3 * r + 1];
            uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
            size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> t->mshift);
            while (t->mslots[h].key != TOK_EMPTY_KEY && t->mslots[h].key != key) h = (h + 1) & t->mmask;
            if (t->mslots[h].key == key) {
                tok__err(err, errcap, "%s: merge %d repeats the pair of merge %d", src, r, t->mslots[h].rank);
                return -1;
            }
            t->mslots[h].key = key; t->mslots[h].rank = r; t->mslots[h].id = t->merges[3 * r + 2];
        }
    }
    t->n_added = 0;
    for (int id = 0; id < t->n_vocab; id++) if (t->flags[id] & TOK_F_ADDED) t->n_added++;
    t->added = (int32_t *)malloc(((size_t)t->n_added + 1) * sizeof(int32_t));
    if (!t->added) { tok__err(err, errcap, "%s: out of memory", src); return -1; }
    int k = 0;
    memset(t->added_first, 0, sizeof t->added_first);
    for (int id = 0; id < t->n_vocab; id++) if (t->flags[id] & TOK_F_ADDED) {
        // insertion by length, longest first, so the first match is the longest
        uint32_t L = t->off[id + 1] - t->off[id];
        int j = k++;
        while (j > 0 && t->off[t->added[j - 1] + 1] - t->off[t->added[j - 1]] < L) {
            t->added[j] = t->added[j - 1];
            j--;
        }
        t->added[j] = id;
        t->added_first[t->bytes[t->off[id]]] = 1;
    }
    return 0;
}

// The GPT-2 byte <-> printable character mapping used in tokenizer.json strings: printable
// Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
static inline void tok__bytelevel(uint32_t b2u[256], int u2b[324]) {
    int n = 0;
    for (int i = 0; i < 324; i++) u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2u[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        u2b[b2u[b]] = b;
    }
}

// A byte-level vocabulary: token id b is byte b, no merges, plus <|endoftext|>, <|im_start|>,
// <|im_end|> at 256..258 (special). No NFC, so decode(encode(x)) == x for any bytes.
static inline int tokenizer_init_bytes(Tokenizer *t) {
    static const char *const sp[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    memset(t, 0, sizeof *t);
    t->n_vocab = 259; t->pretok = TOK_PRE_QWEN2; t->nfc = 0;
    size_t nb = 256;
    for (int i = 0; i < 3; i++) nb += strlen(sp[i]);
    t->off = (uint32_t *)malloc(260 * sizeof(uint32_t));
    t->bytes = (unsigned char *)malloc(nb);
    t->flags = (unsigned char *)calloc(259, 1);
    t->merges = (int32_t *)malloc(sizeof(int32_t));
    if (!t->off || !t->bytes || !t->flags || !t->merges) { tokenizer_free(t); return -1; }
    for (int b = 0; b < 256; b++) { t->off[b] = (uint32_t)b; t->bytes[b] = (unsigned char)b; }
    uint32_t k = 256;
    for (int i = 0; i < 3; i++) {
        t->off[256 + i] = k;
        memcpy(t->bytes + k, sp[i], strlen(sp[i])); k += (uint32_t)strlen(sp[i]);
        t->flags[256 + i] = TOK_F_ADDED | TOK_F_SPECIAL;
    }
    t->off[259] = k;
    if (tok__finish(t, "byte tokenizer", NULL, 0)) { tokenizer_free(t); return -1; }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

typedef struct { uint64_t *h; int *id; size_t mask; } tok__strmap;   // bytes -> id, build-time only
static inline uint64_t tok__fnv(const unsigned char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    return h;
}
static inline int tok__strmap_find(const Tokenizer *t, const tok__strmap *m, const unsigned char *s, size_t n) {
    uint64_t h = tok__fnv(s, n);
    for (size_t i = (size_t)h & m->mask;; i = (i + 1) & m->mask) {
        int id = m->id[i];
        if (id < 0) return -1;
        if (m->h[i] == h && t->off[id + 1] - t->off[id] == n && memcmp(t->bytes + t->off[id], s, n) == 0) return id;
    }
}

// Decodes a tokenizer.json byte-level string into bytes (o has room for strlen(s)); -1 if some
// character is not one of the 256 byte characters.
static inline int tok__unbytelevel(const int u2b[324], const char *s, size_t n, unsigned char *o, size_t *on) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += (size_t)tok__utf8((const unsigned char *)s + i, n - i, &cp);
        if (cp >= 324 || u2b[cp] < 0) return -1;
        o[k++] = (unsigned char)u2b[cp];
    }
    *on = k;
    return 0;
}

static inline int tok__is(const JDoc *d, int node, const char *key, const char *want) {
    const char *s = json_str(d, json_get(d, node, key));
    return s && strcmp(s, want) == 0;
}

// Checks that the tokenizer.json pipeline is the one implemented here (NFC or none, the Qwen2
// split regex + ByteLevel, BPE without dropout/unk/prefixes). Returns NULL or what is wrong.
static inline const char *tok__check_pipeline(const JDoc *d, int *nfc) {
    int root = 0;
    int norm = json_get(d, root, "normalizer");
    *nfc = 0;
    if (json_type(d, norm) == J_OBJ) {
        if (!tok__is(d, norm, "type", "NFC")) return "normalizer: only NFC (or null) is implemented";
        *nfc = 1;
    } else if (norm >= 0 && json_type(d, norm) != J_NULL) return "normalizer: not an object";
    int pre = json_get(d, root, "pre_tokenizer");
    if (!tok__is(d, pre, "type", "Sequence")) return "pre_tokenizer: expected the Qwen2 Sequence [Split, ByteLevel]";
    int seq = json_get(d, pre, "pretokenizers");
    int sp = json_at(d, seq, 0), bl = json_at(d, seq, 1);
    if (json_len(d, seq) != 2 || !tok__is(d, sp, "type", "Split") || !tok__is(d, bl, "type", "ByteLevel"))
        return "pre_tokenizer: expected the Qwen2 Sequence [Split, ByteLevel]";
    const char *rx = json_str(d, json_get(d, json_get(d, sp, "pattern"), "Regex"));
    if (!rx || strcmp(rx,
                      TOK_QWEN2_PATTERN) != 0) return "pre_tokenizer: Split pattern is not the Qwen2 regex (the only "
                                                      "one implemented)";
    if (!tok__is(d, sp, "behavior", "Isolated") || json_bool(d, json_get(d, sp, "invert"), 0))
        return "pre_tokenizer: Split must be behavior Isolated, invert false";
    if (json_bool(d, json_get(d, bl, "add_prefix_space"), 0) || json_bool(d, json_get(d, bl, "use_regex"), 1))
        return "pre_tokenizer: ByteLevel must have add_prefix_space false and use_regex false";
    int model = json_get(d, root, "model");
    if (json_type(d, model) != J_OBJ) return "model: missing";
    if (json_get(d, model, "type") >= 0 && !tok__is(d, model, "type", "BPE")) return "model: type is not BPE";
    int x = json_get(d, model, "dropout");
    if (x >= 0 && json_type(d, x) != J_NULL) return "model: BPE dropout is not supported";
    const char *s;
    if ((s = json_str(d,
                      json_get(d, model,
                               "continuing_subword_prefix")))
                                   && *s) return "model: continuing_subword_prefix is not supported";
    if ((s = json_str(d,
                      json_get(d, model,
                               "end_of_word_suffix"))) && *s) return "model: end_of_word_suffix is not supported";
    if (json_bool(d, json_get(d, model, "byte_fallback"), 0)) return "model: byte_fallback is not supported";
    if (json_bool(d, json_get(d, model, "ignore_merges"), 0)) return "model: ignore_merges is not supported";
    return NULL;
}

// Loads a Hugging Face tokenizer.json of the Qwen2 kind. 0 ok; else -1 with one line in err.
static inline int tokenizer_load_json(Tokenizer *t, const char *path, char *err, size_t errcap) {
    memset(t, 0, sizeof *t);
    size_t flen;
    char *text = read_whole_file(path, &flen);
    if (!text) { tok__err(err, errcap, "%s: cannot read file", path); return -1; }
    JDoc d;
    if (json_parse(&d, text, flen)) {
        tok__err(err, errcap, "%s: malformed JSON: %s", path, d.err);
        json_free(&d); free(text); return -1;
    }
    free(text);
    int rc = -1;
    uint32_t b2u[256]; int u2b[324];
    tok__bytelevel(b2u, u2b);
    tok__strmap sm = {NULL, NULL, 0};
    unsigned char *tmp = NULL;
    const char *bad = tok__check_pipeline(&d, &t->nfc);
    int model = json_get(&d, 0, "model"), vocab = json_get(&d, model, "vocab"), merges = json_get(&d, model, "merges");
    int added = json_get(&d, 0, "added_tokens");
    if (bad) { tok__err(err, errcap, "%s: %s", path, bad); goto done; }
    if (json_type(&d, vocab) != J_OBJ) {
        tok__err(err, errcap, "%s: model.vocab: missing or not an object", path);
        goto done;
    }
    if (json_type(&d, merges) != J_ARR) {
        tok__err(err, errcap, "%s: model.merges: missing or not an array", path);
        goto done;
    }
    if (added >= 0 && json_type(&d, added) != J_ARR) {
        tok__err(err, errcap, "%s: added_tokens: not an array", path);
        goto done;
    }
    t->pretok = TOK_PRE_QWEN2;
    {
        // pass 1: the largest id, to size the tables
        long long maxid = -1;
        size_t total = 0;
        for (int c = json_first(&d, vocab); c >= 0; c = json_next(&d, c)) {
            double v = json_num(&d, c, -1);
            if (!(v >= 0 && v < (1 << 22)) || v != (double)(long long)v) {
                tok__err(err, errcap, "%s: model.vocab[\"%s\"]: id is not an integer in [0, 4194304)", path,
                         json_key(&d, c));
                goto done;
            }
            if ((long long)v > maxid) maxid = (long long)v;
            total += (size_t)d.nodes[c].keylen;
        }
        for (int c = json_first(&d, added); c >= 0; c = json_next(&d, c)) {
            double v = json_num(&d, json_get(&d, c, "id"), -1);
            const char *content = json_str(&d, json_get(&d, c, "content"));
            if (!(v >= 0 && v < (1 << 22)) || v != (double)(long long)v || !content || !*content) {
                tok__err(err, errcap, "%s: added_tokens: an entry lacks an integer id in range or a non-empty content",
                         path);
                goto done;
            }
            if ((long long)v > maxid) maxid = (long long)v;
            total += (size_t)json_len(&d, json_get(&d, c, "content"));
        }
        if (maxid < 0) { tok__err(err, errcap, "%s: model.vocab is empty", path); goto done; }
        if (total > 0xFFFFFFF0u) { tok__err(err, errcap, "%s: vocabulary too large", path); goto done; }
        int n = (int)maxid + 1;
        t->n_vocab = n;
        uint32_t *len = (uint32_t *)calloc((size_t)n + 1, sizeof(uint32_t));
        uint32_t *at = (uint32_t *)calloc((size_t)n + 1, sizeof(uint32_t));   // where each token's bytes sit in tmp
        tmp = (unsigned char *)malloc(total + 1);
        t->flags = (unsigned char *)calloc((size_t)n, 1);
        unsigned char *has = (unsigned char *)calloc((size_t)n, 1);
        if (!len || !at || !tmp || !t->flags || !has) {
            free(len);
            free(at);
            free(has);
            tok__err(err, errcap, "%s: out of memory", path);
            goto done;
        }
        size_t used = 0;
        int ok = 1;
        for (int c = json_first(&d, vocab); ok && c >= 0; c = json_next(&d, c)) {
            int id = (int)json_num(&d, c, -1);
            size_t bl;
            if (has[id]) { tok__err(err, errcap, "%s: model.vocab: id %d appears twice", path, id); ok = 0; break; }
            if (tok__unbytelevel(u2b, json_key(&d, c), (size_t)d.nodes[c].keylen, tmp + used,
                                 &bl) || bl == 0 || bl > 65535) {
                tok__err(err, errcap, "%s: model.vocab[\"%s\"]: not a byte-level token", path, json_key(&d, c));
                ok = 0;
                break;
            }
            has[id] = 1; at[id] = (uint32_t)used; len[id] = (uint32_t)bl; used += bl;
        }
        for (int c = json_first(&d, added); ok && c >= 0; c = json_next(&d, c)) {
            int id = (int)json_num(&d, json_get(&d, c, "id"), -1);
            int cn = json_get(&d, c, "content");
            const char *content = json_str(&d, cn);
            size_t cl = (size_t)json_len(&d, cn);
            if (json_bool(&d, json_get(&d, c, "lstrip"), 0) || json_bool(&d, json_get(&d, c, "rstrip"), 0) ||
                json_bool(&d, json_get(&d, c, "single_word"), 0)) {
                tok__err(err, errcap, "%s: added token \"%s\": lstrip/rstrip/single_word are not implemented", path,
                         content);
                ok = 0;
                break;
            }
            if (cl > 65535) { tok__err(err, errcap, "%s: added token %d: content too long", path, id); ok = 0; break; }
            if (has[id]) {   // HF reuses a vocab id whose text is the same; anything else is a clash
                if (len[id] != cl || memcmp(tmp + at[id], content, cl) != 0) {
                    tok__err(err, errcap, "%s: added token \"%s\": id %d already belongs to another token", path,
                             content, id);
                    ok = 0;
                    break;
                }
            } else {
                memcpy(tmp + used, content, cl);
                has[id] = 1; at[id] = (uint32_t)used; len[id] = (uint32_t)cl; used += cl;
            }
            t->flags[id] = (unsigned char)(TOK_F_ADDED | (json_bool(&d, json_get(&d, c, "special"),
                                                                    0) ? TOK_F_SPECIAL : 0));
        }
        // lay the tokens out by id
        if (ok) {
            t->off = (uint32_t *)malloc(((size_t)n + 1) * sizeof(uint32_t));
            t->bytes = (unsigned char *)malloc(used + 1);
            if (!t->off || !t->bytes) { tok__err(err, errcap, "%s: out of memory", path); ok = 0; }
        }
        if (ok) {
            uint32_t k = 0;
            for (int id = 0; id < n; id++) {
                t->off[id] = k;
                memcpy(t->bytes + k, tmp + at[id], len[id]); k += len[id];
            }
            t->off[n] = k;
        }
        free(len); free(at); free(has);
        if (!ok) goto done;
    }
    {
        // bytes -> id over the regular vocabulary, to resolve the merges
        int n = t->n_vocab;
        size_t cap = 1;
        while (cap < 2 * (size_t)n) cap *= 2;
        sm.h = (uint64_t *)malloc(cap * sizeof(uint64_t)); sm.id = (int *)malloc(cap * sizeof(int)); sm.mask = cap - 1;
        if (!sm.h || !sm.id) { tok__err(err, errcap, "%s: out of memory", path); goto done; }
        for (size_t i = 0; i < cap; i++) sm.id[i] = -1;
        for (int id = 0; id < n; id++) {
            size_t L = t->off[id + 1] - t->off[id];
            if (!L || (t->flags[id] & TOK_F_ADDED)) continue;
            if (tok__strmap_find(t, &sm, t->bytes + t->off[id], L) >= 0) {
                tok__err(err, errcap, "%s: model.vocab: two ids (the second is %d) have the same token", path, id);
                goto done;
            }
            uint64_t h = tok__fnv(t->bytes + t->off[id], L);
            size_t i = (size_t)h & sm.mask;
            while (sm.id[i] >= 0) i = (i + 1) & sm.mask;
            sm.h[i] = h; sm.id[i] = id;
        }
        int nm = json_len(&d, merges);
        t->n_merges = nm;
        t->merges = (int32_t *)malloc(((size_t)nm * 3 + 1) * sizeof(int32_t));
        if (!t->merges) { tok__err(err, errcap, "%s: out of memory", path); goto done; }
        unsigned char *buf = NULL; size_t bufcap = 0;
        int r = 0;
        for (int c = json_first(&d, merges); c >= 0; c = json_next(&d, c), r++) {
            // a merge is ["left", "right"] or the older "left right"
            const char *a = NULL, *b = NULL; size_t al = 0, bl = 0;
            if (json_type(&d, c) == J_ARR && json_len(&d, c) == 2) {
                int x = json_at(&d, c, 0), y = json_at(&d, c, 1);
                a = json_str(&d, x); al = (size_t)json_len(&d, x); b = json_str(&d, y); bl = (size_t)json_len(&d, y);
            } else if (json_type(&d, c) == J_STR) {
                const char *s = json_str(&d, c), *sp = strchr(s, ' ');
                if (sp && sp != s && !strchr(sp + 1, ' ') && sp[1]) {
                    a = s;
                    al = (size_t)(sp - s);
                    b = sp + 1;
                    bl = strlen(b);
                }
            }
            if (!a || !b) {
                tok__err(err, errcap, "%s: model.merges[%d]: not a pair of tokens", path, r);
                free(buf);
                goto done;
            }
            if (al + bl > bufcap) {
                bufcap = 2 * (al + bl);
                unsigned char *nb = (unsigned char *)realloc(buf, bufcap);
                if (!nb) { free(buf); tok__err(err, errcap, "%s: out of memory", path); goto done; }
                buf = nb;
            }
            size_t x1, x2;
            int ia = -1, ib = -1, im = -1;
            if (!tok__unbytelevel(u2b, a, al, buf, &x1) && !tok__unbytelevel(u2b, b, bl, buf + x1, &x2)) {
                ia = tok__strmap_find(t, &sm, buf, x1);
                ib = tok__strmap_find(t, &sm, buf + x1, x2);
                im = tok__strmap_find(t, &sm, buf, x1 + x2);
            }
            if (ia < 0 || ib < 0 || im < 0) {
                tok__err(err, errcap, "%s: model.merges[%d]: \"%.*s\" + \"%.*s\" (or their merge) is not in the vocab",
                         path, r, (int)(al > 64 ? 64 : al), a, (int)(bl > 64 ? 64 : bl), b);
                free(buf); goto done;
            }
            t->merges[3 * r] = ia; t->merges[3 * r + 1] = ib; t->merges[3 * r + 2] = im;
        }
        free(buf);
    }
    if (tok__finish(t, path, err, errcap)) goto done;
    rc = 0;
done:
    free(sm.h); free(sm.id); free(tmp);
    json_free(&d);
    if (rc) tokenizer_free(t);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The blob stored in checkpoints (all integers little-endian):
//   u32 magic "TOKB", u32 version 1, u32 nfc, u32 pretok, u32 n_vocab, u32 n_merges, u32 n_bytes,
//   u16 len[n_vocab], u8 flags[n_vocab], u8 bytes[n_bytes], i32 merges[3*n_merges] (left, right, merged)

#define TOK_BLOB_MAGIC 0x424B4F54u
#define TOK_BLOB_VERSION 1

static inline void tok__put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static inline uint32_t tok__get32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline unsigned char *tokenizer_to_blob(const Tokenizer *t, size_t *n) {
    size_t nv = (size_t)t->n_vocab, nb = t->off[nv];
    size_t total = 28 + nv * 3 + nb + (size_t)t->n_merges * 12;
    unsigned char *b = (unsigned char *)malloc(total), *p = b;
    if (!b) return NULL;
    uint32_t hdr[7] = {TOK_BLOB_MAGIC, TOK_BLOB_VERSION, (uint32_t)t->nfc, (uint32_t)t->pretok, (uint32_t)nv,
                       (uint32_t)t->n_merges, (uint32_t)nb};
    for (int i = 0; i < 7; i++, p += 4) tok__put32(p, hdr[i]);
    for (size_t i = 0; i < nv; i++) {
        uint32_t L = t->off[i + 1] - t->off[i];
        *p++ = (unsigned char)L;
        *p++ = (unsigned char)(L >> 8);
    }
    memcpy(p, t->flags, nv); p += nv;
    memcpy(p, t->bytes, nb); p += nb;
    for (size_t i = 0; i < (size_t)t->n_merges * 3; i++, p += 4) tok__put32(p, (uint32_t)t->merges[i]);
    *n = total;
    return b;
}

// Loads a blob; checks everything, since the blob comes from a file.
static inline int tokenizer_from_blob(Tokenizer *t, const unsigned char *b, size_t n, char *err, size_t errcap) {
    const char *src = "tokenizer blob";
    memset(t, 0, sizeof *t);
    if (n < 28 || tok__get32(b) != TOK_BLOB_MAGIC) {
        tok__err(err, errcap, "%s: bad magic or truncated", src);
        return -1;
    }
    if (tok__get32(b + 4) != TOK_BLOB_VERSION) {
        tok__err(err, errcap, "%s: unsupported version %u", src, tok__get32(b + 4));
        return -1;
    }
    uint32_t nfc = tok__get32(b + 8), pre = tok__get32(b + 12), nv = tok__get32(b + 16), nm = tok__get32(b + 20),
    nb = tok__get32(b + 24);
    if (nfc > 1 || pre != TOK_PRE_QWEN2) {
        tok__err(err, errcap, "%s: unknown normalizer/pre-tokenizer", src);
        return -1;
    }
    if (nv == 0 || nv > (1u << 22) || nm > (1u << 22)) {
        tok__err(err, errcap, "%s: vocab or merge count out of range", src);
        return -1;
    }
    if ((uint64_t)28 + (uint64_t)nv * 3 + nb + (uint64_t)nm * 12 != n) {
        tok__err(err, errcap, "%s: sizes disagree with the blob length (truncated?)", src);
        return -1;
    }
    const unsigned char *lens = b + 28, *fl = lens + 2 * (size_t)nv, *bytes = fl + nv, *mg = bytes + nb;
    t->n_vocab = (int)nv; t->n_merges = (int)nm; t->nfc = (int)nfc; t->pretok = (int)pre;
    t->off = (uint32_t *)malloc(((size_t)nv + 1) * sizeof(uint32_t));
    t->flags = (unsigned char *)malloc(nv);
    t->bytes = (unsigned char *)malloc((size_t)nb + 1);
    t->merges = (int32_t *)malloc(((size_t)nm * 3 + 1) * sizeof(int32_t));
    if (!t->off || !t->flags || !t->bytes || !t->merges) {
        tokenizer_free(t);
        tok__err(err, errcap, "%s: out of memory", src);
        return -1;
    }
    uint64_t k = 0;
    for (uint32_t i = 0; i < nv; i++) {
        uint32_t L = (uint32_t)lens[2 * i] | ((uint32_t)lens[2 * i + 1] << 8);
        t->off[i] = (uint32_t)k; k += L;
        if (fl[i] & ~(TOK_F_ADDED | TOK_F_SPECIAL) || (fl[i] && !L) || (fl[i] == TOK_F_SPECIAL)) {
            tokenizer_free(t); tok__err(err, errcap, "%s: bad flags for token %u", src, i); return -1;
        }
    }
    if (k != nb) { tokenizer_free(t); tok__err(err, errcap, "%s: token lengths do not add up", src); return -1; }
    t->off[nv] = nb;
    memcpy(t->flags, fl, nv);
    memcpy(t->bytes, bytes, nb);
    for (uint32_t r = 0; r < nm; r++) {
        uint32_t a = tok__get32(mg + 12 * (size_t)r), c = tok__get32(mg + 12 * (size_t)r + 4),
        m = tok__get32(mg + 12 * (size_t)r + 8);
        int ok = a < nv && c < nv && m < nv && !(t->flags[a] | t->flags[c] | t->flags[m]);
        if (ok) {
            uint32_t la = t->off[a + 1] - t->off[a], lc = t->off[c + 1] - t->off[c];
            ok = la && lc && t->off[m + 1] - t->off[m] == la + lc &&
                 memcmp(t->bytes + t->off[m], t->bytes + t->off[a], la) == 0 &&
                 memcmp(t->bytes + t->off[m] + la, t->bytes + t->off[c], lc) == 0;
        }
        if (!ok) {
            tokenizer_free(t);
            tok__err(err, errcap, "%s: merge %u is not a valid concatenation of two tokens", src, r);
            return -1;
        }
        t->merges[3 * r] = (int32_t)a; t->merges[3 * r + 1] = (int32_t)c; t->merges[3 * r + 2] = (int32_t)m;
    }
    if (tok__finish(t, src, err, errcap)) { tokenizer_free(t); return -1; }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Writing the Hugging Face tokenizer files (used by `convert export`)

// Writes bytes as a JSON string in the byte-level alphabet.
static inline void tok__write_bl(FILE *f, const uint32_t b2u[256], const unsigned char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char o[4];
        uint32_t u = b2u[s[i]];
        if (u == '"' || u == '\\') { fputc('\\', f); fputc((int)u, f); continue; }
        fwrite(o, 1, (size_t)tok__utf8_put(o, u), f);
    }
    fputc('"', f);
}
static inline void tok__write_added(FILE *f, const Tokenizer *t, int id) {
    fprintf(f, "{\"id\": %d, \"content\": ", id);
    json_write_str(f, (const char *)t->bytes + t->off[id], t->off[id + 1] - t->off[id]);
    fprintf(f,
            ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": %s}",
            (t->flags[id] & TOK_F_SPECIAL) ? "true" : "false");
}
// tokenizer.json for HF `tokenizers` / transformers. Returns 0 (ferror is checked by the caller).
static inline int tokenizer_write_hf_json(FILE *f, const Tokenizer *t) {
    uint32_t b2u[256]; int u2b[324];
    tok__bytelevel(b2u, u2b);
    const char *bl = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": "
                     "false}";
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [", f);
    int first = 1;
    for (int id = 0; id < t->n_vocab; id++) if (t->flags[id] & TOK_F_ADDED) {
        fputs(first ? "\n    " : ",\n    ", f); first = 0;
        tok__write_added(f, t, id);
    }
    fprintf(f, "\n  ],\n  \"normalizer\": %s,\n", t->nfc ? "{\"type\": \"NFC\"}" : "null");
    fputs("  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
          "{\"Regex\": ", f);
    json_write_str(f, TOK_QWEN2_PATTERN, strlen(TOK_QWEN2_PATTERN));
    fprintf(f, "}, \"behavior\": \"Isolated\", \"invert\": false}, %s]},\n", bl);
    fprintf(f, "  \"post_processor\": %s,\n  \"decoder\": %s,\n", bl, bl);
    fputs("  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"continuing_subword_prefix\": "
          "\"\", "
          "\"end_of_word_suffix\": \"\", \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,\n   "
          " \"vocab\": {", f);
    first = 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if ((t->flags[id] & TOK_F_ADDED) || t->off[id + 1] == t->off[id]) continue;
        fputs(first ? "\n      " : ",\n      ", f); first = 0;
        tok__write_bl(f, b2u, t->bytes + t->off[id], t->off[id + 1] - t->off[id]);
        fprintf(f, ": %d", id);
    }
    fputs("\n    },\n    \"merges\": [", f);
    for (int r = 0; r < t->n_merges; r++) {
        int a = t->merges[3 * r], b = t->merges[3 * r + 1];
        fputs(r ? ",\n      [" : "\n      [", f);
        tok__write_bl(f, b2u, t->bytes + t->off[a], t->off[a + 1] - t->off[a]);
        fputs(", ", f);
        tok__write_bl(f, b2u, t->bytes + t->off[b], t->off[b + 1] - t->off[b]);
        fputc(']', f);
    }
    fputs("\n    ]\n  }\n}\n", f);
    return 0;
}
// vocab.json and merges.txt, the files of the "slow" Qwen2Tokenizer (regular vocabulary only).
static inline int tokenizer_write_vocab_json(FILE *f, const Tokenizer *t) {
    uint32_t b2u[256]; int u2b[324];
    tok__bytelevel(b2u, u2b);
    fputc('{', f);
    int first = 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if ((t->flags[id] & TOK_F_ADDED) || t->off[id + 1] == t->off[id]) continue;
        if (!first) fputs(", ", f);
        first = 0;
        tok__write_bl(f, b2u, t->bytes + t->off[id], t->off[id + 1] - t->off[id]);
        fprintf(f, ": %d", id);
    }
    fputs("}\n", f);
    return 0;
}
static inline int tokenizer_write_merges_txt(FILE *f, const Tokenizer *t) {
    uint32_t b2u[256]; int u2b[324];
    tok__bytelevel(b2u, u2b);
    fputs("#version: 0.2\n", f);
    for (int r = 0; r < t->n_merges; r++)
        for (int side = 0; side < 2; side++) {
            int id = t->merges[3 * r + side];
            for (uint32_t i = t->off[id]; i < t->off[id + 1]; i++) {
                unsigned char o[4];
                fwrite(o, 1, (size_t)tok__utf8_put(o, b2u[t->bytes[i]]), f);
            }
            fputc(side ? '\n' : ' ', f);
        }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Chat templates. Both are ChatML as Qwen2.5 writes it, with add_generation_prompt=True:
//   TEMPLATE_QWEN_MATH_COT: the Qwen2.5-Math CoT prompt EMPO trains and evaluates with, i.e. a
//     system message and a suffix on the problem;
//   TEMPLATE_PLAIN: one user turn, no system message.
// The text is encoded with added tokens recognised, as apply_chat_template does.

#define TOK_COT_SYSTEM "Please reason step by step, and put your final answer within \\boxed{}."
#define TOK_COT_SUFFIX " Let's think step by step and output the final answer within \\boxed{}."

// The prompt text (malloc'd, NUL-terminated), or NULL for an unknown template / no memory.
static inline char *chat_template_render(int which, const char *problem) {
    const char *pre, *suf;
    if (which == TEMPLATE_QWEN_MATH_COT) {
        pre = "<|im_start|>system\n" TOK_COT_SYSTEM "<|im_end|>\n<|im_start|>user\n";
        suf = TOK_COT_SUFFIX "<|im_end|>\n<|im_start|>assistant\n";
    } else if (which == TEMPLATE_PLAIN) {
        pre = "<|im_start|>user\n";
        suf = "<|im_end|>\n<|im_start|>assistant\n";
    } else return NULL;
    size_t a = strlen(pre), b = strlen(problem), c = strlen(suf);
    char *s = (char *)malloc(a + b + c + 1);
    if (!s) return NULL;
    memcpy(s, pre, a); memcpy(s + a, problem, b); memcpy(s + a + b, suf, c + 1);
    return s;
}
// The prompt ids for one user problem. Returns the count and sets *ids (malloc'd), or -1 (unknown
// template, a tokenizer without <|im_start|>/<|im_end|>, or no memory).
static inline int chat_template_encode(const Tokenizer *t, int which, const char *problem, int **ids) {
    *ids = NULL;
    if (tokenizer_special_id(t, "<|im_start|>") < 0 || tokenizer_special_id(t, "<|im_end|>") < 0) return -1;
    char *s = chat_template_render(which, problem);
    if (!s) return -1;
    int n = tokenizer_encode(t, s, strlen(s), 1, ids);
    free(s);
    return n;
}
// The jinja chat_template written into an exported tokenizer_config.json: ChatML, so that
// [system, user] messages give the CoT prompt and [user] alone the plain one.
#define TOK_CHATML_JINJA \
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + " \
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}" \
    "{%- endif %}"

#endif // TOKENIZER_H
