// json.h: a small, strict JSON reader (RFC 8259) and JSONL helpers, shared by train_empo.c,
// train_empo.cu, the tokenizer and the converter. Parses into a flat array of nodes (a DOM
// without pointers, so it can grow by realloc). Never crashes on bad input: every failure
// leaves a message with the byte offset in doc->err and returns -1. Nesting depth is capped,
// so hostile input cannot blow the stack.
#ifndef JSON_H
#define JSON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "utils.h"

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };
#define JSON_MAX_DEPTH 512

typedef struct {
    int type;
    int n;          // number of children (array/object), or string length in bytes
    int first;      // index of the first child, -1 if none
    int next;       // index of the next sibling, -1 if last
    int key;        // object members: offset of the key in strbuf (key length in keylen), else -1
    int keylen;
    size_t str;     // J_STR: offset of the decoded, NUL-terminated string in strbuf
    double num;     // J_NUM
} JNode;

typedef struct {
    JNode *nodes; int n_nodes, cap_nodes;
    char *strbuf; size_t n_str, cap_str;
    char err[256];
    // parser state
    const char *p, *beg, *end;
} JDoc;

static inline int json__fail(JDoc *d, const char *msg) {
    if (!d->err[0]) snprintf(d->err, sizeof d->err, "%s at byte %ld", msg, (long)(d->p - d->beg));
    return -1;
}
static inline int json__node(JDoc *d, int type) {
    if (d->n_nodes == d->cap_nodes) {
        if (d->cap_nodes > (1 << 28)) return json__fail(d, "too many JSON values");
        int nc = d->cap_nodes ? d->cap_nodes * 2 : 256;
        JNode *nn = (JNode *)realloc(d->nodes, (size_t)nc * sizeof(JNode));
        if (!nn) return json__fail(d, "out of memory");
        d->nodes = nn; d->cap_nodes = nc;
    }
    JNode *x = &d->nodes[d->n_nodes];
    memset(x, 0, sizeof *x);
    x->type = type; x->first = x->next = x->key = -1;
    return d->n_nodes++;
}
static inline int json__putc(JDoc *d, char c) {
    if (d->n_str == d->cap_str) {
        size_t nc = d->cap_str ? d->cap_str * 2 : 4096;
        char *nb = (char *)realloc(d->strbuf, nc);
        if (!nb) return json__fail(d, "out of memory");
        d->strbuf = nb; d->cap_str = nc;
    }
    d->strbuf[d->n_str++] = c;
    return 0;
}
static inline void json__ws(JDoc *d) {
    while (d->p < d->end && (*d->p == ' ' || *d->p == '\t' || *d->p == '\n' || *d->p == '\r')) d->p++;
}
static inline int json__hex4(JDoc *d, unsigned *out) {
    if (d->end - d->p < 4) return json__fail(d, "truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = d->p[i]; v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return json__fail(d, "bad \\u escape");
    }
    d->p += 4; *out = v;
    return 0;
}
static inline int json__utf8(JDoc *d, unsigned cp) {
    if (cp < 0x80) return json__putc(d, (char)cp);
    if (cp < 0x800) { if (json__putc(d, (char)(0xC0 | (cp >> 6)))) return -1; }
    else if (cp < 0x10000) {
        if (json__putc(d, (char)(0xE0 | (cp >> 12)))) return -1;
        if (json__putc(d, (char)(0x80 | ((cp >> 6) & 0x3F)))) return -1;
    } else {
        if (json__putc(d, (char)(0xF0 | (cp >> 18)))) return -1;
        if (json__putc(d, (char)(0x80 | ((cp >> 12) & 0x3F)))) return -1;
        if (json__putc(d, (char)(0x80 | ((cp >> 6) & 0x3F)))) return -1;
    }
    return json__putc(d, (char)(0x80 | (cp & 0x3F)));
}
// Reads a string literal at d->p (which points at the opening quote); decoded bytes go to strbuf.
static inline int json__string(JDoc *d, size_t *off, int *len) {
    d->p++;
    *off = d->n_str;
    for (;;) {
        if (d->p >= d->end) return json__fail(d, "unterminated string");
        unsigned char c = (unsigned char)*d->p++;
        if (c == '"') break;
        if (c < 0x20) return json__fail(d, "control character in string");
        if (c != '\\') { if (json__putc(d, (char)c)) return -1; continue; }
        if (d->p >= d->end) return json__fail(d, "unterminated string");
        char e = *d->p++;
        switch (e) {
        case '"': case '\\': case '/': if (json__putc(d, e)) return -1; break;
        case 'b': if (json__putc(d, '\b')) return -1; break;
        case 'f': if (json__putc(d, '\f')) return -1; break;
        case 'n': if (json__putc(d, '\n')) return -1; break;
        case 'r': if (json__putc(d, '\r')) return -1; break;
        case 't': if (json__putc(d, '\t')) return -1; break;
        case 'u': {
            unsigned cp;
            if (json__hex4(d, &cp)) return -1;
            if (cp >= 0xD800 && cp < 0xDC00) {   // high surrogate: needs a low one
                unsigned lo;
                if (d->end - d->p >= 6 && d->p[0] == '\\' && d->p[1] == 'u') {
                    d->p += 2;
                    if (json__hex4(d, &lo)) return -1;
                    if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    else { if (json__utf8(d, 0xFFFD)) return -1; cp = lo; }
                } else cp = 0xFFFD;
            } else if (cp >= 0xDC00 && cp < 0xE000) cp = 0xFFFD;   // lone low surrogate
            if (json__utf8(d, cp)) return -1;
            break;
        }
        default: return json__fail(d, "bad escape in string");
        }
    }
    size_t n = d->n_str - *off;
    if (n > 0x7fffffff) return json__fail(d, "string too long");
    *len = (int)n;
    return json__putc(d, 0);
}
static inline int json__value(JDoc *d, int depth);
static inline int json__container(JDoc *d, int depth, int is_obj) {
    int self = json__node(d, is_obj ? J_OBJ : J_ARR);
    if (self < 0) return -1;
    d->p++;
    json__ws(d);
    char close = is_obj ? '}' : ']';
    if (d->p < d->end && *d->p == close) { d->p++; return self; }
    int prev = -1;
    for (;;) {
        size_t koff = 0; int klen = 0;
        if (is_obj) {
            json__ws(d);
            if (d->p >= d->end || *d->p != '"') return json__fail(d, "expected object key");
            if (json__string(d, &koff, &klen)) return -1;
            json__ws(d);
            if (d->p >= d->end || *d->p != ':') return json__fail(d, "expected ':'");
            d->p++;
        }
        int child = json__value(d, depth + 1);
        if (child < 0) return -1;
        if (is_obj) { d->nodes[child].key = (int)koff; d->nodes[child].keylen = klen; }
        if (prev < 0) d->nodes[self].first = child; else d->nodes[prev].next = child;
        prev = child;
        d->nodes[self].n++;
        json__ws(d);
        if (d->p >= d->end) return json__fail(d, "unterminated container");
        if (*d->p == ',') { d->p++; continue; }
        if (*d->p == close) { d->p++; return self; }
        return json__fail(d, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}
static inline int json__value(JDoc *d, int depth) {
    if (depth > JSON_MAX_DEPTH) return json__fail(d, "nesting too deep");
    json__ws(d);
    if (d->p >= d->end) return json__fail(d, "unexpected end of input");
    char c = *d->p;
    if (c == '{' || c == '[') return json__container(d, depth, c == '{');
    if (c == '"') {
        size_t off; int len;
        int self = json__node(d, J_STR);
        if (self < 0 || json__string(d, &off, &len)) return -1;
        d->nodes[self].str = off; d->nodes[self].n = len;
        return self;
    }
    static const char *lits[3] = {"null", "false", "true"};
    for (int i = 0; i < 3; i++) {
        size_t L = strlen(lits[i]);
        if ((size_t)(d->end - d->p) >= L && memcmp(d->p, lits[i], L) == 0) {
            d->p += L;
            return json__node(d, J_NULL + i);
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) {   // validate the JSON number grammar, then strtod
        const char *s = d->p, *q = s;
        if (*q == '-') q++;
        if (q >= d->end || !(*q >= '0' && *q <= '9')) return json__fail(d, "bad number");
        if (*q == '0') q++; else while (q < d->end && *q >= '0' && *q <= '9') q++;
        if (q < d->end && *q == '.') {
            q++;
            if (q >= d->end || !(*q >= '0' && *q <= '9')) return json__fail(d, "bad number");
            while (q < d->end && *q >= '0' && *q <= '9') q++;
        }
        if (q < d->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < d->end && (*q == '+' || *q == '-')) q++;
            if (q >= d->end || !(*q >= '0' && *q <= '9')) return json__fail(d, "bad number");
            while (q < d->end && *q >= '0' && *q <= '9') q++;
        }
        char tmp[64];
        size_t L = (size_t)(q - s);
        int self = json__node(d, J_NUM);
        if (self < 0) return -1;
        if (L < sizeof tmp) { memcpy(tmp, s, L); tmp[L] = 0; d->nodes[self].num = strtod(tmp, NULL); }
        else d->nodes[self].num = (s[0] == '-') ? -1e308 : 1e308;   // absurdly long: saturate
        d->p = q;
        return self;
    }
    return json__fail(d, "unexpected character");
}

// Parses text[0..len). Returns 0 on success (root is node 0), -1 with d->err set.
static inline int json_parse(JDoc *d, const char *text, size_t len) {
    memset(d, 0, sizeof *d);
    d->p = d->beg = text; d->end = text + len;
    if (json__value(d, 0) < 0) return -1;
    json__ws(d);
    if (d->p != d->end) return json__fail(d, "trailing characters after JSON value");
    return 0;
}
static inline void json_free(JDoc *d) { free(d->nodes); free(d->strbuf); memset(d, 0, sizeof *d); }

// Navigation. Indices are node numbers; -1 means "absent" and is accepted everywhere.
static inline int json_type(const JDoc *d, int i) { return i < 0 ? -1 : d->nodes[i].type; }
static inline int json_first(const JDoc *d, int i) { return i < 0 ? -1 : d->nodes[i].first; }
static inline int json_next(const JDoc *d, int i) { return i < 0 ? -1 : d->nodes[i].next; }
static inline int json_len(const JDoc *d, int i) { return i < 0 ? 0 : d->nodes[i].n; }
static inline const char *json_key(const JDoc *d, int i) {
    return (i < 0 || d->nodes[i].key < 0) ? "" : d->strbuf + d->nodes[i].key;
}
// String value (NUL-terminated; may hold NULs, see json_len) or NULL if i is not a string.
static inline const char *json_str(const JDoc *d, int i) {
    return json_type(d, i) == J_STR ? d->strbuf + d->nodes[i].str : NULL;
}
static inline double json_num(const JDoc *d, int i, double dflt) {
    return json_type(d, i) == J_NUM ? d->nodes[i].num : dflt;
}
static inline int json_bool(const JDoc *d, int i, int dflt) {
    int t = json_type(d, i); return t == J_TRUE ? 1 : t == J_FALSE ? 0 : dflt;
}
// Member of an object by key (linear scan; objects we look up in are small), or -1.
static inline int json_get(const JDoc *d, int obj, const char *key) {
    if (json_type(d, obj) != J_OBJ) return -1;
    size_t kl = strlen(key);
    for (int c = d->nodes[obj].first; c >= 0; c = d->nodes[c].next)
        if ((size_t)d->nodes[c].keylen == kl && memcmp(d->strbuf + d->nodes[c].key, key, kl) == 0) return c;
    return -1;
}
// i-th element of an array (linear), or -1.
static inline int json_at(const JDoc *d, int arr, int idx) {
    if (json_type(d, arr) != J_ARR) return -1;
    int c = d->nodes[arr].first;
    while (c >= 0 && idx-- > 0) c = d->nodes[c].next;
    return c;
}

// JSONL: one JSON value per line. Calls fn(doc, root, line_number, user) for each non-blank line
// that parses; a line that does not parse is reported on stderr as "FILE:LINE: message" and
// skipped (and counted in *n_bad, its number in *first_bad, when those are given), unless strict
// is set, in which case it stops there. A UTF-8 byte order mark at the start of the file is
// skipped. Returns the number of records handed to fn, -1 if the file can't be read (nothing is
// printed then: errno holds the reason, see util_read_error), or -2 on a strict failure.
typedef int (*jsonl_fn)(const JDoc *d, int root, int line, void *user);   // non-zero return stops
static inline int jsonl_foreach_ex(const char *path, int strict, jsonl_fn fn, void *user, int *n_bad, int *first_bad) {
    size_t len;
    char *buf = read_whole_file(path, &len);
    if (n_bad) *n_bad = 0;
    if (first_bad) *first_bad = 0;
    if (!buf) return -1;
    int count = 0, line = 0;
    char *p = buf, *end = buf + len;
    if (len >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB && (unsigned char)p[2] == 0xBF) p += 3;
    while (p < end) {
        char *nl = (char *)memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        char *s = p;
        while (s < le && (*s == ' ' || *s == '\t' || *s == '\r')) s++;
        if (s < le) {
            JDoc d;
            size_t L = (size_t)(le - p);
            if (L && p[L - 1] == '\r') L--;
            if (json_parse(&d, p, L) != 0) {
                fprintf(stderr, "%s:%d: malformed JSON: %s\n", path, line, d.err);
                json_free(&d);
                if (n_bad) (*n_bad)++;
                if (first_bad && !*first_bad) *first_bad = line;
                if (strict) { free(buf); return -2; }
            } else {
                int stop = fn(&d, 0, line, user);
                json_free(&d);
                count++;
                if (stop) break;
            }
        }
        p = nl ? nl + 1 : end;
    }
    free(buf);
    return count;
}
static inline int jsonl_foreach(const char *path, int strict, jsonl_fn fn, void *user) {
    return jsonl_foreach_ex(path, strict, fn, user, NULL, NULL);
}

// The length of the well-formed UTF-8 sequence at s[0..n), or 0 if s[0] does not start one. The
// rules are Unicode's (Table 3-7): no overlong forms, no surrogates, nothing above U+10FFFF.
// Otherwise *bad gets the length of the maximal ill-formed subpart (>= 1): the bytes that one
// U+FFFD replaces, exactly as Python's bytes.decode("utf-8", "replace") and so transformers do.
static inline int utf8_valid_len(const unsigned char *s, size_t n, int *bad) {
    unsigned c = s[0];
    int k = c < 0x80 ? 0 : (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2
          : (c >= 0xF0 && c <= 0xF4) ? 3 : -1;   // continuation bytes to come; -1: cannot start a sequence
    *bad = 1;
    if (k == 0) return 1;
    if (k < 0) return 0;
    for (int j = 1; j <= k; j++) {
        if ((size_t)j >= n) { *bad = j; return 0; }
        unsigned b = s[j], lo = 0x80, hi = 0xBF;
        if (j == 1) {   // the second byte's range depends on the first (Table 3-7)
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
            else if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        }
        if (b < lo || b > hi) { *bad = j; return 0; }
    }
    return k + 1;
}

// Writes a JSON string literal (with quotes and escapes) for s[0..n) to f. The output is always
// valid JSON and valid UTF-8: each ill-formed UTF-8 sequence (a response cut inside a multi-byte
// character, stray bytes) becomes one U+FFFD, as transformers' decode shows it.
static inline void json_write_str(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { fputc('\\', f); fputc(c, f); }
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else if (c < 0x80) fputc(c, f);
        else {   // copy a whole well-formed sequence, else one U+FFFD for the maximal bad subpart
            int bad, k = utf8_valid_len((const unsigned char *)s + i, n - i, &bad);
            if (k) { fwrite(s + i, 1, (size_t)k, f); i += (size_t)k - 1; }
            else { fputs("\xEF\xBF\xBD", f); i += (size_t)bad - 1; }
        }
    }
    fputc('"', f);
}

#endif // JSON_H
