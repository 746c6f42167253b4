// safetensors.h: reads and writes the Hugging Face safetensors format, header-only, for the
// converter. A file is: u64 little-endian header length N, N bytes of JSON
//   {"NAME": {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {...}}
// then the tensor data, offsets relative to its start. The reader checks the whole header
// (sizes, bounds, overlaps) up front and reads tensors on demand, so multi-GB shards are never
// held in memory; every error is one line naming the file and the tensor.
#ifndef SAFETENSORS_H
#define SAFETENSORS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <errno.h>
#include "json.h"
#include "checkpoint.h"

enum { ST_F32, ST_BF16, ST_F16, ST_OTHER };
#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u << 20)   // the format's own limit on the header

typedef struct {
    char *name;
    int dtype;                 // ST_*; ST_OTHER tensors can be listed but not read
    char dtype_name[16];
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;       // byte range within the data section
} StTensor;

typedef struct {
    char *path;
    FILE *f;
    uint64_t data_off, data_len;
    StTensor *t;
    int n;
} StFile;

static inline void st__err(char *err, size_t cap, const char *path, const char *name, const char *msg) {
    if (!err || !cap) return;
    if (name) snprintf(err, cap, "%s: tensor %s: %s", path, name, msg);
    else snprintf(err, cap, "%s: %s", path, msg);
}
static inline int st_dtype_size(int dt) { return dt == ST_F32 ? 4 : (dt == ST_BF16 || dt == ST_F16) ? 2 : 0; }
static inline int st__dtype(const char *s) {
    if (!strcmp(s, "F32")) return ST_F32;
    if (!strcmp(s, "BF16")) return ST_BF16;
    if (!strcmp(s, "F16")) return ST_F16;
    return ST_OTHER;
}
static inline int st__other_size(const char *s) {   // element size of the dtypes we only skip over
    static const char *const n1[] = {"BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"}, *const n2[] = {"I16", "U16"},
                             *const n4[] = {"I32", "U32"}, *const n8[] = {"I64", "U64", "F64"};
    for (int i = 0; i < 5; i++) if (!strcmp(s, n1[i])) return 1;
    for (int i = 0; i < 2; i++) if (!strcmp(s, n2[i])) return 2;
    for (int i = 0; i < 2; i++) if (!strcmp(s, n4[i])) return 4;
    for (int i = 0; i < 3; i++) if (!strcmp(s, n8[i])) return 8;
    return 0;
}
static inline float st_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF, u;
    if (e == 0) {
        if (m == 0) u = s;
        else {   // subnormal: renormalize
            e = 127 - 15 + 1;
            while (!(m & 0x400)) { m <<= 1; e--; }
            u = s | (e << 23) | ((m & 0x3FF) << 13);
        }
    } else if (e == 31) u = s | 0x7F800000u | (m << 13);
    else u = s | ((e + 127 - 15) << 23) | (m << 13);
    float f; memcpy(&f, &u, 4); return f;
}

static inline void st_close(StFile *sf) {
    if (sf->f) fclose(sf->f);
    for (int i = 0; i < sf->n; i++) free(sf->t[i].name);
    free(sf->t); free(sf->path);
    memset(sf, 0, sizeof *sf);
}

static inline int st__cmp_begin(const void *a, const void *b) {
    const StTensor *x = *(const StTensor *const *)a, *y = *(const StTensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

// Opens a safetensors file and validates its header. 0 ok; -1 with one line in err.
static inline int st_open(StFile *sf, const char *path, char *err, size_t errcap) {
    memset(sf, 0, sizeof *sf);
    FILE *f = fopen(path, "rb");
    if (!f) { st__err(err, errcap, path, NULL, strerror(errno)); return -1; }
    unsigned char lenb[8];
    if (fseeko(f, 0, SEEK_END) != 0) { fclose(f); st__err(err, errcap, path, NULL, "cannot seek"); return -1; }
    uint64_t fsize = (uint64_t)ftello(f);
    rewind(f);
    if (fsize < 8 || fread(lenb, 1, 8, f) != 8) {
        fclose(f);
        st__err(err, errcap, path, NULL, "truncated: shorter than the 8-byte header length");
        return -1;
    }
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | lenb[i];
    if (hl > ST_MAX_HEADER || hl > fsize - 8) {
        fclose(f);
        st__err(err, errcap, path, NULL, "truncated or corrupt: header length exceeds the file");
        return -1;
    }
    char *h = (char *)malloc((size_t)hl + 1);
    if (!h || fread(h, 1, (size_t)hl, f) != hl) {
        free(h);
        fclose(f);
        st__err(err, errcap, path, NULL, "cannot read the header");
        return -1;
    }
    h[hl] = 0;
    JDoc d;
    if (json_parse(&d, h, (size_t)hl)) {
        char m[320]; snprintf(m, sizeof m, "malformed header JSON: %s", d.err);
        json_free(&d); free(h); fclose(f); st__err(err, errcap, path, NULL, m); return -1;
    }
    free(h);
    sf->f = f; sf->data_off = 8 + hl; sf->data_len = fsize - 8 - hl;
    size_t pl = strlen(path);
    sf->path = (char *)malloc(pl + 1);
    if (sf->path) memcpy(sf->path, path, pl + 1);
    int rc = -1;
    StTensor **order = NULL;
    if (json_type(&d, 0) != J_OBJ) { st__err(err, errcap, path, NULL, "header is not a JSON object"); goto done; }
    sf->t = (StTensor *)calloc((size_t)json_len(&d, 0) + 1, sizeof(StTensor));
    if (!sf->t || !sf->path) { st__err(err, errcap, path, NULL, "out of memory"); goto done; }
    for (int c = json_first(&d, 0); c >= 0; c = json_next(&d, c)) {
        const char *name = json_key(&d, c);
        if (!strcmp(name, "__metadata__")) continue;
        StTensor *t = &sf->t[sf->n];
        size_t nl = strlen(name);
        t->name = (char *)malloc(nl + 1);
        if (!t->name) { st__err(err, errcap, path, NULL, "out of memory"); goto done; }
        memcpy(t->name, name, nl + 1);
        sf->n++;
        const char *dt = json_str(&d, json_get(&d, c, "dtype"));
        int shape = json_get(&d, c, "shape"), offs = json_get(&d, c, "data_offsets");
        if (json_type(&d, c) != J_OBJ || !dt || json_type(&d, shape) != J_ARR || json_type(&d,
                offs) != J_ARR || json_len(&d, offs) != 2) {
            st__err(err, errcap, path, name, "entry needs dtype, shape and data_offsets [begin, end]"); goto done;
        }
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt);
        t->dtype = st__dtype(dt);
        int es = t->dtype == ST_OTHER ? st__other_size(dt) : st_dtype_size(t->dtype);
        if (!es) { st__err(err, errcap, path, name, "unknown dtype"); goto done; }
        if (json_len(&d, shape) > ST_MAX_DIMS) { st__err(err, errcap, path, name, "too many dimensions"); goto done; }
        uint64_t count = 1;
        int overflow = 0;
        for (int s = json_first(&d, shape); s >= 0; s = json_next(&d, s)) {
            double v = json_num(&d, s, -1);
            if (!(v >= 0 && v <= 9007199254740992.0) || v != (double)(int64_t)v) {
                st__err(err, errcap, path, name, "shape entries must be non-negative integers");
                goto done;
            }
            t->shape[t->ndim++] = (int64_t)v;
            if (v > 0 && count > UINT64_MAX / (uint64_t)v) overflow = 1;
            else count *= (uint64_t)v;
        }
        double b = json_num(&d, json_at(&d, offs, 0), -1), e = json_num(&d, json_at(&d, offs, 1), -1);
        if (!(b >= 0 && e >= b && e <= 1.8e19) || b != (double)(uint64_t)b || e != (double)(uint64_t)e) {
            st__err(err, errcap, path, name, "data_offsets must be integers with 0 <= begin <= end"); goto done;
        }
        t->begin = (uint64_t)b; t->end = (uint64_t)e;
        if (overflow || count > UINT64_MAX / (uint64_t)es || count * (uint64_t)es != t->end - t->begin) {
            st__err(err, errcap, path, name, "data_offsets span does not match shape x dtype size"); goto done;
        }
        if (t->end > sf->data_len) {
            st__err(err, errcap, path, name, "data lies past the end of the file (truncated?)");
            goto done;
        }
    }
    order = (StTensor **)malloc(((size_t)sf->n + 1) * sizeof(StTensor *));
    if (!order) { st__err(err, errcap, path, NULL, "out of memory"); goto done; }
    for (int i = 0; i < sf->n; i++) order[i] = &sf->t[i];
    qsort(order, (size_t)sf->n, sizeof *order, st__cmp_begin);
    for (int i = 1; i < sf->n; i++)
        if (order[i]->begin < order[i - 1]->end) {
            st__err(err, errcap, path, order[i]->name, "data overlaps another tensor");
            goto done;
        }
    rc = 0;
done:
    free(order);
    json_free(&d);
    if (rc) st_close(sf);
    return rc;
}

static inline const StTensor *st_find(const StFile *sf, const char *name) {
    for (int i = 0; i < sf->n; i++) if (!strcmp(sf->t[i].name, name)) return &sf->t[i];
    return NULL;
}
static inline uint64_t st_numel(const StTensor *t) {
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

// Reads tensor t as fp32 into dst (st_numel(t) floats). 0 ok; -1 with one line in err.
static inline int st_read_f32(StFile *sf, const StTensor *t, float *dst, char *err, size_t errcap) {
    int es = st_dtype_size(t->dtype);
    if (!es) {
        char m[64];
        snprintf(m, sizeof m, "dtype %s is not supported (need F32, BF16 or F16)", t->dtype_name);
        st__err(err, errcap, sf->path, t->name, m);
        return -1;
    }
    uint64_t n = st_numel(t);
    if (fseeko(sf->f, (off_t)(sf->data_off + t->begin), SEEK_SET) != 0) {
        st__err(err, errcap, sf->path, t->name, "cannot seek to the data");
        return -1;
    }
    if (es == 4) {
        if (fread(dst, 4, (size_t)n, sf->f) != n) {
            st__err(err, errcap, sf->path, t->name, "short read (truncated file?)");
            return -1;
        }
        return 0;
    }
    const size_t CH = (size_t)1 << 16;
    uint16_t *buf = (uint16_t *)malloc(CH * sizeof(uint16_t));
    if (!buf) { st__err(err, errcap, sf->path, t->name, "out of memory"); return -1; }
    for (uint64_t i = 0; i < n; i += CH) {
        size_t m = (size_t)(n - i < CH ? n - i : CH);
        if (fread(buf, 2, m, sf->f) != m) {
            free(buf);
            st__err(err, errcap, sf->path, t->name, "short read (truncated file?)");
            return -1;
        }
        for (size_t j = 0; j < m; j++) dst[i + j] = t->dtype == ST_BF16 ? bf16_to_f32(buf[j]) : st_f16_to_f32(buf[j]);
    }
    free(buf);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Writing. Each tensor comes as fp32 and is stored as dtype (ST_F32 or ST_BF16). A tensor with
// data NULL is written as zeros.

typedef struct {
    const char *name;
    int dtype;
    int ndim;
    int64_t shape[2];
    const float *data;
} StOut;

typedef struct { const StOut *t; int n; const char *header; size_t hlen; } st__wctx;

static inline int st__body(FILE *f, const void *user) {
    const st__wctx *w = (const st__wctx *)user;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)((uint64_t)w->hlen >> (8 * i));
    if (fwrite(lenb, 1, 8, f) != 8 || fwrite(w->header, 1, w->hlen, f) != w->hlen) return -1;
    const size_t CH = (size_t)1 << 16;
    uint16_t *b16 = (uint16_t *)malloc(CH * sizeof(uint16_t));
    float *zero = (float *)calloc(CH, sizeof(float));
    int rc = (b16 && zero) ? 0 : -1;
    for (int k = 0; k < w->n && rc == 0; k++) {
        const StOut *t = &w->t[k];
        uint64_t n = 1;
        for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
        for (uint64_t i = 0; i < n && rc == 0; i += CH) {
            size_t m = (size_t)(n - i < CH ? n - i : CH);
            const float *src = t->data ? t->data + i : zero;
            if (t->dtype == ST_F32) rc = fwrite(src, 4, m, f) == m ? 0 : -1;
            else {
                for (size_t j = 0; j < m; j++) b16[j] = f32_to_bf16(src[j]);
                rc = fwrite(b16, 2, m, f) == m ? 0 : -1;
            }
        }
    }
    free(b16); free(zero);
    return rc;
}

// Writes the tensors to path atomically, in the given order. 0 ok; -1 with one line in err.
static inline int st_write(const char *path, const StOut *ts, int n, char *err, size_t errcap) {
    size_t cap = 256 + (size_t)n * 320, len = 0;   // names are capped at 120 bytes below
    char *h = (char *)malloc(cap);
    if (!h) { st__err(err, errcap, path, NULL, "out of memory"); return -1; }
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (int k = 0; k < n; k++) {
        const StOut *t = &ts[k];
        uint64_t numel = 1;
        for (int i = 0; i < t->ndim; i++) numel *= (uint64_t)t->shape[i];
        uint64_t nb = numel * (uint64_t)st_dtype_size(t->dtype);
        if (strlen(t->name) > 120 || strchr(t->name, '"') || strchr(t->name,
                                                                    '\\') || (t->dtype != ST_F32
                                                                              && t->dtype != ST_BF16)) {
            free(h); st__err(err, errcap, path, t->name, "cannot write this name or dtype"); return -1;
        }
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name,
                                t->dtype == ST_F32 ? "F32" : "BF16");
        for (int i = 0; i < t->ndim; i++) len += (size_t)snprintf(h + len, cap - len, i ? ",%lld" : "%lld",
                                                                  (long long)t->shape[i]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + nb));
        off += nb;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';   // pad so the data starts 8-byte aligned
    st__wctx w = {ts, n, h, len};
    int rc = write_file_atomic(path, st__body, &w, err, errcap);
    free(h);
    return rc;
}

#endif // SAFETENSORS_H
