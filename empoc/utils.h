// utils.h: what train_empo.c, train_empo.cu and the tools all need, once: one-line fatal errors,
// checked allocation, a monotonic clock, whole-file reads (regular files only), atomic file writes
// (with the OS reason on failure, and fault injection for the tests), directory creation, a checksum.
// C that also compiles as C++ (train_empo.cu includes it).
#ifndef EMPOC_UTILS_H
#define EMPOC_UTILS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <fcntl.h>
#include <dirent.h>

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

// Why path cannot be read as a data file, or NULL if it can: it must exist and be a regular file
// (a directory or a FIFO would make fopen/fread fail late or block forever). buf holds the text.
static inline const char *util_not_regular(const char *path, char *buf, size_t cap) {
    struct stat st;
    if (stat(path, &st) != 0) { snprintf(buf, cap, "%s", strerror(errno)); return buf; }
    if (S_ISDIR(st.st_mode)) return "is a directory";
    if (!S_ISREG(st.st_mode)) return "is not a regular file (a FIFO, socket or device?)";
    return NULL;
}

// Reads a whole regular file into a NUL-terminated malloc'd buffer. Returns NULL on failure, with
// errno set (EISDIR for a directory, EINVAL for another non-regular file).
static inline char *read_whole_file(const char *path, size_t *len_out) {
    struct stat st;
    if (stat(path, &st) != 0) return NULL;
    if (!S_ISREG(st.st_mode)) { errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL; return NULL; }
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
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
            cap = nc;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f), e = errno;
    fclose(f);
    if (bad) {
        free(buf);
        errno = e ? e : EIO;
        return NULL;
    }
    buf[n] = 0;
    if (len_out) *len_out = n;
    return buf;
}
// "PATH: reason" for a failed read_whole_file (call right after it, while errno holds).
static inline void util_read_error(char *err, size_t errcap, const char *path) {
    char why[256];
    const char *w = errno == EISDIR ? "is a directory" : errno == EINVAL ? util_not_regular(path, why, sizeof why)
                                                                         : strerror(errno);
    util_err(err, errcap, path, w ? w : "cannot read");
}

// Fault injection, for the tests of interrupted writes (dev/test/test_runs.c, doc/formats.md).
// EMPO_FAULT=kill:N or fail:N. Every file written through write_file_atomic or util_append_commit
// takes size+1 positions of one counter that runs over the whole process: its bytes, then "written
// but not yet renamed". When the counter reaches N inside a file, that file is cut to the bytes
// before N, and then `kill` ends the process at once (as kill -9 would: no cleanup), and `fail`
// makes the write fail with ENOSPC (as a full disk would). Unset: no effect, and no cost.
// The counter is the one piece of mutable static state here: it exists only for this purpose.
static inline long long *util__fault_counter(void) { static long long pos = 0; return &pos; }
// Called once a file has `size` bytes, of which the first `base` were there before this write
// (an append). Returns 0, or -1 with errno = ENOSPC for an injected failure.
static inline int util_fault_point(FILE *f, long long base, long long size) {
    const char *spec = getenv("EMPO_FAULT");
    if (!spec || !*spec) return 0;
    int kill = !strncmp(spec, "kill:", 5), fail = !strncmp(spec, "fail:", 5);
    if (!kill && !fail) return 0;
    long long n = atoll(spec + 5), *pos = util__fault_counter(), len = size - base;
    long long at = *pos;
    *pos += len + 1;
    if (n < at || n > at + len) return 0;
    if (n < at + len) {
        fflush(f);
        if (ftruncate(fileno(f), (off_t)(base + (n - at))) != 0) return 0;
    }
    if (kill) _exit(137);
    errno = ENOSPC;
    return -1;
}

// fsync a file's directory, so that a rename in it survives a power cut (best effort).
static inline void util_sync_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path + (slash == path)), path);
    else return;
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}

// Writes a whole file atomically: the body goes to PATH.tmp, which is flushed, synced to disk,
// closed and renamed over PATH. A crash or kill before the rename leaves PATH as it was (and at
// most a PATH.tmp behind, which util_remove_tmp_files clears); a failure removes PATH.tmp and
// says why in err. write_fn returns 0 on success (errno set otherwise).
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
        char m[300];
        snprintf(m, sizeof m, "cannot write: %s", strerror(errno));
        util_err(err, errcap, tmp, m);
        free(tmp);
        return -1;
    }
    errno = 0;
    int rc = fn(f, user), e = 0;
    if (rc != 0) e = errno ? errno : EIO;
    if (rc == 0 && fflush(f) != 0) rc = -1, e = errno;
    if (rc == 0 && util_fault_point(f, 0, (long long)ftell(f)) != 0) rc = -1, e = errno;
    if (rc == 0 && fsync(fileno(f)) != 0 && errno != EINVAL) rc = -1, e = errno;
    if (fclose(f) != 0 && rc == 0) rc = -1, e = errno;
    if (rc == 0 && rename(tmp, path) != 0) rc = -1, e = errno;
    if (rc != 0) {
        remove(tmp);
        char m[300];
        snprintf(m, sizeof m, "cannot write: %s", strerror(e ? e : EIO));
        util_err(err, errcap, path, m);
    } else {
        util_sync_dir_of(path);
    }
    free(tmp);
    return rc;
}

// Removes the NAME.tmp (and NAME.tmp.tmp) files that an interrupted write_file_atomic may have left in
// dir, for the NAMEs a program writes there: names[i] is a file name, or a prefix when it ends in
// '*' ("eval_*"). Only those: an output directory may hold other people's .tmp files. Returns how
// many it removed.
static inline int util_remove_tmp_files(const char *dir, const char *const *names, int n_names) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".tmp") != 0) continue;
        size_t stem = len - 4;
        if (stem >= 4 && !strncmp(e->d_name + stem - 4, ".tmp", 4)) stem -= 4;
        int ours = 0;
        for (int i = 0; i < n_names && !ours; i++) {
            size_t k = strlen(names[i]);
            if (k && names[i][k - 1] == '*') ours = stem >= k - 1 && !strncmp(e->d_name, names[i], k - 1);
            else ours = stem == k && !strncmp(e->d_name, names[i], k);
        }
        if (!ours) continue;
        size_t pl = strlen(dir) + len + 2;
        char *p = (char *)malloc(pl);
        if (!p) break;
        snprintf(p, pl, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && remove(p) == 0) n++;
        free(p);
    }
    closedir(d);
    return n;
}

// A 64-bit checksum of a byte stream (the xxHash64 construction: four lanes of multiply-rotate
// over 8-byte words, then an avalanche), so that a checkpoint's tensor data can be verified on load
// at memory speed. Fed in pieces of any size; the result depends only on the bytes.
typedef struct { uint64_t acc[4]; uint64_t total; unsigned char buf[32]; size_t nbuf; } Hash64;
#define HASH64_P1 0x9E3779B185EBCA87ull
#define HASH64_P2 0xC2B2AE3D27D4EB4Full
#define HASH64_P3 0x165667B19E3779F9ull
#define HASH64_P4 0x85EBCA77C2B2AE63ull
#define HASH64_P5 0x27D4EB2F165667C5ull
static inline uint64_t hash64__rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t hash64__round(uint64_t acc, uint64_t w) {
    return hash64__rotl(acc + w * HASH64_P2, 31) * HASH64_P1;
}
static inline void hash64_init(Hash64 *h) {
    memset(h, 0, sizeof *h);
    h->acc[0] = HASH64_P1 + HASH64_P2;
    h->acc[1] = HASH64_P2;
    h->acc[2] = 0;
    h->acc[3] = 0 - HASH64_P1;
}
static inline void hash64__block(Hash64 *h, const unsigned char *p) {
    for (int l = 0; l < 4; l++) {
        uint64_t w;
        memcpy(&w, p + 8 * l, 8);
        h->acc[l] = hash64__round(h->acc[l], w);
    }
}
static inline void hash64_update(Hash64 *h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    h->total += n;
    if (h->nbuf) {
        size_t k = 32 - h->nbuf < n ? 32 - h->nbuf : n;
        memcpy(h->buf + h->nbuf, p, k);
        h->nbuf += k; p += k; n -= k;
        if (h->nbuf < 32) return;
        hash64__block(h, h->buf);
        h->nbuf = 0;
    }
    for (; n >= 32; p += 32, n -= 32) hash64__block(h, p);
    memcpy(h->buf, p, n);
    h->nbuf = n;
}
static inline uint64_t hash64_final(const Hash64 *h) {
    uint64_t x = hash64__rotl(h->acc[0], 1) + hash64__rotl(h->acc[1], 7) + hash64__rotl(h->acc[2], 12) +
                 hash64__rotl(h->acc[3], 18);
    x += h->total;
    for (size_t i = 0; i < h->nbuf; i++) x = hash64__rotl(x ^ (h->buf[i] * HASH64_P5), 11) * HASH64_P1;
    x ^= x >> 33; x *= HASH64_P2; x ^= x >> 29; x *= HASH64_P3; x ^= x >> 32;
    return x;
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
