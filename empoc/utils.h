// utils.h: what train_empo.c, train_empo.cu and the tools all need, once: one-line fatal errors,
// checked allocation, a monotonic clock, whole-file reads, atomic file writes, directory creation.
// C that also compiles as C++ (train_empo.cu includes it).
#ifndef EMPOC_UTILS_H
#define EMPOC_UTILS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/types.h>

// One line on stderr, "error: ...", and exit 1. Every user-facing failure ends here.
#define FATAL(...) do { fprintf(stderr, "error: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static inline void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) FATAL("out of memory allocating %zu bytes", n);
    return p;
}
static inline void *xcalloc(size_t n, size_t sz) {
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) FATAL("out of memory allocating %zu x %zu bytes", n, sz);
    return p;
}
static inline double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// "PATH: message" into err (if given).
static inline void util_err(char *err, size_t errcap, const char *path, const char *msg) {
    if (err && errcap) snprintf(err, errcap, "%s: %s", path, msg);
}

// Reads a whole file into a NUL-terminated malloc'd buffer. Returns NULL (and errno is set) on failure.
static inline char *read_whole_file(const char *path, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            size_t nc = cap ? cap * 2 : 1 << 20;
            char *nb = (char *)realloc(buf, nc + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    if (len_out) *len_out = n;
    return buf;
}

// Writes a whole file atomically: the body goes to PATH.tmp, which is flushed, closed and renamed
// over PATH. A crash before the rename leaves PATH as it was. write_fn returns 0 on success.
typedef int (*write_body_fn)(FILE *f, const void *user);
static inline int write_file_atomic(const char *path, write_body_fn fn, const void *user, char *err, size_t errcap) {
    size_t n = strlen(path) + 8;
    char *tmp = (char *)malloc(n);
    if (!tmp) {
        util_err(err, errcap, path, "out of memory");
        return -1;
    }
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        util_err(err, errcap, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int rc = fn(f, user);
    if (fflush(f) != 0) rc = -1;
    if (fclose(f) != 0) rc = -1;
    if (rc == 0 && rename(tmp, path) != 0) rc = -1;
    if (rc != 0) {
        remove(tmp);
        util_err(err, errcap, path, "write failed (disk full or no permission?)");
    }
    free(tmp);
    return rc;
}

// mkdir -p. 0 on success (or if it exists as a directory).
static inline int make_dir(const char *dir) {
    size_t n = strlen(dir);
    if (n == 0) return -1;
    char *p = (char *)malloc(n + 1);
    if (!p) return -1;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        p[i] = c;
    }
    free(p);
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

#endif // EMPOC_UTILS_H
