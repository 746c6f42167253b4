// gemm.h: the fast paths of train_empo.c: its matmuls (a cache-blocked single-precision GEMM, and the
// same GEMM over some rows of K for training's LM head),
// attention's two matmuls 4 query rows at a time (and decoding's, the query heads of a key/value head
// together), the reductions and the AdamW update taken several chains at a time, the log-sum-exp of
// many rows, the argmax, and expf 8 at a time. train_empo.c keeps the plain
// definitions; each fast path here computes the same bits, in every build and at any thread count.
// The GEMM follows the classic Goto/BLIS recipe: cut K and N into blocks that stay in cache, copy
// ("pack") the current blocks of A and B into contiguous panels, and let a small register-blocked
// micro-kernel do rank-1 updates of a tile of C (6x16 with AVX2, 12x32 with AVX-512). Packing also
// lets one routine serve all three matmuls of training (forward, d_input, d_weight): A and B are
// read through arbitrary row/column strides, so transposes cost nothing extra.
#ifndef EMPOC_GEMM_H
#define EMPOC_GEMM_H

#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#if defined(__AVX2__) || defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// The K block is part of the definition of every result: each element of C is the sum of its K
// products taken in order, one fused multiply-add at a time from 0 within a block of GEMM_KC, and
// the blocks' partial sums added into C in order. Tile shapes, vector widths and the thread split
// change only which elements are computed together, never that order, so every build (AVX2 or
// AVX-512, 1 or 2 threads) gets the same bits. GEMM_KC must not change with the machine.
#define GEMM_KC 256   // K block: a 16-column B panel (16 KB) stays in L1
#define GEMM_NR 16    // a packed B panel is 16 columns wide on every build (pack_panels' format)
#define GEMM_NC 1024  // N block: the packed B block (1 MB) stays in L2/L3
#define GEMM_MD 48    // rows a thread takes at a time when the threads split the rows (a multiple of 6 and 12)
#ifdef __AVX512F__
// AVX-512 has 32 vector registers: a 12 x 32 tile (two B panels) is 24 accumulators, and each k
// step does 24 FMAs for 2 loads of B and 12 broadcasts of A, against 12 for 8 with the 6 x 16 tile.
#define GEMM_MR 12
#define GEMM_MC 96    // M block: the packed A block (96 KB) stays in L2
#else
#define GEMM_MR 6     // micro-tile rows: 6 x 2 vectors of 8 = 12 accumulator registers (AVX2 has 16)
#define GEMM_MC 96
#endif

typedef float gemm_v8 __attribute__((vector_size(32)));

// a * b + c with one rounding, on every lane. Written out rather than left to the compiler's
// contraction of a*b+c: GCC tuned for AMD Zen (-march=native there) keeps a lone loop-carried
// accumulator as a multiply and an add (two roundings) but fuses it when there are several,
// so the result would depend on how many accumulators a loop happens to have.
// (Macros, not functions: a function returning a vector type warns in builds without AVX.)
#ifdef __FMA__
#define gemm_fma8(a, b, c) ((gemm_v8)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#else
#define gemm_fma8(a, b, c)                                                          \
    ({                                                                              \
        gemm_v8 a_ = (a), b_ = (b), c_ = (c);                                       \
        for (int i_ = 0; i_ < 8; i_++) c_[i_] = fmaf(a_[i_], b_[i_], c_[i_]);       \
        c_;                                                                         \
    })
#endif
// x on every lane. A real broadcast (from memory it is a load, not a shuffle); `(gemm_v8){0} + x`
// made the compiler add 0 first (it may not drop that: -0 + 0 is +0), and on Intel cores the
// add and the register broadcast compete with the FMAs for their ports (a third of the GEMM).
// The results are the same: a -0 and a +0 factor differ only when the accumulator is -0, and an
// accumulator that starts at +0 never becomes -0.
#ifdef __AVX__
#define gemm_splat8(x) ((gemm_v8)_mm256_set1_ps((float)(x)))
#else
#define gemm_splat8(x) ((gemm_v8){0} + (float)(x))
#endif

// C's tile is needed only after the K loop: start fetching it now so the loads don't stall
static inline void gemm_prefetch_c(float *C, long ldc, int mr, int nr) {
    for (int i = 0; i < mr; i++) {
        __builtin_prefetch(C + (long)i * ldc, 1);
        __builtin_prefetch(C + (long)i * ldc + nr - 1, 1);
    }
}
// C[mr x nr] = (accumulate ? C : 0) + tile, row by row
static inline void gemm_store(float *C, long ldc, const float *tile, int ld_tile, int mr, int nr, int accumulate) {
    for (int i = 0; i < mr; i++) {
        float *row = C + (long)i * ldc;
        const float *t = tile + (size_t)i * ld_tile;
        if (accumulate) for (int j = 0; j < nr; j++) row[j] += t[j];
        else memcpy(row, t, (size_t)nr * sizeof(float));
    }
}

#ifdef __AVX512F__
typedef float gemm_v16 __attribute__((vector_size(64)));
static inline gemm_v16 gemm_fma16(gemm_v16 a, gemm_v16 b, gemm_v16 c) {
    return (gemm_v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
// C[12 x 16*NP] (+)= sum_k Ap[k][0..12) * (B0[k][0..16), B1[k][0..16)). Ap, B0, B1 packed panels;
// NP = 1 or 2 panels (a constant at each call site, so each is its own unrolled loop). P0, P1, if
// not NULL, are the next panels: one line (a k row) of each is prefetched per k step.
static inline __attribute__((always_inline)) void gemm_micro_np(int K, const float *Ap, const float *B0,
                                                                const float *B1, float *C, long ldc, int mr,
                                                                int nr, int accumulate, const int NP,
                                                                const float *P0, const float *P1) {
    gemm_prefetch_c(C, ldc, mr, nr);
    gemm_v16 c0[GEMM_MR], c1[GEMM_MR];
    for (int i = 0; i < GEMM_MR; i++) { c0[i] = (gemm_v16){0}; c1[i] = (gemm_v16){0}; }
    for (int k = 0; k < K; k++) {
        if (P0) { __builtin_prefetch(P0 + (size_t)k * GEMM_NR); __builtin_prefetch(P1 + (size_t)k * GEMM_NR); }
        gemm_v16 b0, b1 = {0};
        memcpy(&b0, B0 + (size_t)k * GEMM_NR, 64);
        if (NP == 2) memcpy(&b1, B1 + (size_t)k * GEMM_NR, 64);
        for (int i = 0; i < GEMM_MR; i++) {
            gemm_v16 a = (gemm_v16)_mm512_set1_ps(Ap[i]);   // see gemm_splat8
            c0[i] = gemm_fma16(a, b0, c0[i]);
            if (NP == 2) c1[i] = gemm_fma16(a, b1, c1[i]);
        }
        Ap += GEMM_MR;
    }
    if (mr == GEMM_MR && nr == 16 * NP) {   // a full tile: vector stores
        for (int i = 0; i < GEMM_MR; i++) {
            float *row = C + (long)i * ldc;
            gemm_v16 x;
            if (accumulate) { memcpy(&x, row, 64); c0[i] = x + c0[i]; }
            memcpy(row, &c0[i], 64);
            if (NP == 2) {
                if (accumulate) { memcpy(&x, row + 16, 64); c1[i] = x + c1[i]; }
                memcpy(row + 16, &c1[i], 64);
            }
        }
        return;
    }
    float tile[GEMM_MR][32];
    for (int i = 0; i < GEMM_MR; i++) { memcpy(tile[i], &c0[i], 64); memcpy(tile[i] + 16, &c1[i], 64); }
    gemm_store(C, ldc, &tile[0][0], 32, mr, nr, accumulate);
}
#else
// C[mr x 16] (+)= sum_k Ap[k][0..mr) * Bp[k][0..16). Ap is a packed 6-row panel, Bp a packed panel; C row
// stride ldc. MR = 2, 4 or 6 (a constant at each call site, mr <= MR): a short last tile (decoding's 56 rows
// are 9 x 6 + 2) computes only the rows it has. Pf, if not NULL, is the next panel: one line (a k row) of
// it is prefetched per k step, so that a panel streamed from memory is in cache when its turn comes.
static inline __attribute__((always_inline)) void gemm_micro_mr(int K, const float *Ap, const float *Bp, float *C,
                                                                long ldc, int mr, int nr, int accumulate,
                                                                const int MR, const float *Pf) {
    gemm_prefetch_c(C, ldc, mr, nr);
    gemm_v8 c[GEMM_MR][2];
    memset(c, 0, sizeof c);
    for (int k = 0; k < K; k++) {
        if (Pf) __builtin_prefetch(Pf + (size_t)k * GEMM_NR);
        gemm_v8 b0, b1;
        memcpy(&b0, Bp, 32); memcpy(&b1, Bp + 8, 32);
        for (int i = 0; i < MR; i++) {
            gemm_v8 a = gemm_splat8(Ap[i]);
            c[i][0] = gemm_fma8(a, b0, c[i][0]);
            c[i][1] = gemm_fma8(a, b1, c[i][1]);
        }
        Ap += GEMM_MR; Bp += GEMM_NR;
    }
    if (nr == GEMM_NR) {   // full-width rows: vector stores
        for (int i = 0; i < mr; i++) {
            float *row = C + (long)i * ldc;
            gemm_v8 x;
            for (int h = 0; h < 2; h++) {
                if (accumulate) { memcpy(&x, row + 8 * h, 32); c[i][h] = x + c[i][h]; }
                memcpy(row + 8 * h, &c[i][h], 32);
            }
        }
        return;
    }
    float tile[GEMM_MR][GEMM_NR];
    memcpy(tile, c, sizeof tile);
    gemm_store(C, ldc, &tile[0][0], GEMM_NR, mr, nr, accumulate);
}
#endif

// One mc x nc block of C from a packed A block and packed B panels (panel(p) gives panel p's
// first k of this K block). prefetch_b: B comes from memory (weights packed once, for decoding),
// so the first tile of each panel (with AVX-512: each pair of panels) fetches the next while it computes;
// the last one fetches pf_end (and, with AVX-512, the panel after it) if not NULL: what comes after the block.
static inline void gemm_block(int mc, int nc, int kc, const float *Ap, const float *Bp0, size_t panel_stride,
                              float *C, long ldc, int acc, int prefetch_b, const float *pf_end) {
    int np = (nc + GEMM_NR - 1) / GEMM_NR;
#ifdef __AVX512F__
    for (int p = 0; p < np; p += 2) {
        int n0 = p * GEMM_NR, nr = nc - n0 < 2 * GEMM_NR ? nc - n0 : 2 * GEMM_NR;
        const float *b0 = Bp0 + (size_t)p * panel_stride, *b1 = b0 + panel_stride;
        const float *pf = !prefetch_b ? NULL : p + 3 < np ? b0 + 2 * panel_stride   // the next full pair
                          : p + 2 >= np ? pf_end : NULL;
        for (int q = 0; q < mc; q += GEMM_MR) {
            int mr = mc - q < GEMM_MR ? mc - q : GEMM_MR;
            float *c = C + (long)q * ldc + n0;
            const float *p0 = q == 0 ? pf : NULL, *p1 = p0 ? p0 + panel_stride : NULL;
            if (p + 1 < np) gemm_micro_np(kc, Ap + (size_t)q * kc, b0, b1, c, ldc, mr, nr, acc, 2, p0, p1);
            else gemm_micro_np(kc, Ap + (size_t)q * kc, b0, NULL, c, ldc, mr, nr, acc, 1, NULL, NULL);
        }
    }
#else
    for (int p = 0; p < np; p++) {
        int n0 = p * GEMM_NR, nr = nc - n0 < GEMM_NR ? nc - n0 : GEMM_NR;
        const float *b = Bp0 + (size_t)p * panel_stride;
        const float *pf = !prefetch_b ? NULL : p + 1 < np ? b + panel_stride : pf_end;
        for (int q = 0; q < mc; q += GEMM_MR) {
            int mr = mc - q < GEMM_MR ? mc - q : GEMM_MR;
            const float *a = Ap + (size_t)q * kc, *pq = q == 0 ? pf : NULL;
            float *c = C + (long)q * ldc + n0;
            if (mr > 4) gemm_micro_mr(kc, a, b, c, ldc, mr, nr, acc, 6, pq);
            else if (mr > 2) gemm_micro_mr(kc, a, b, c, ldc, mr, nr, acc, 4, pq);
            else gemm_micro_mr(kc, a, b, c, ldc, mr, nr, acc, 2, pq);
        }
    }
#endif
}

// The packing buffers live as long as the program and only grow: allocating and freeing a 1 MB
// block on every call went through mmap/munmap, and the page faults and TLB shootdowns of that
// cost more than the packing itself (perf: ~15% of a training step).
static float *gemm_bbuf, *gemm_abuf;
static size_t gemm_bcap, gemm_acap;
static float *gemm_grow(float **buf, size_t *cap, size_t n) {
    if (n > *cap) {
        free(*buf);
        *buf = (float *)aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        *cap = *buf ? n : 0;
    }
    return *buf;
}

// Packs B[pc:pc+kc, n0:n0+16*npan) into npan panels at dst ([p][k][16], zero-padded past N).
static inline void gemm_pack_b(float *dst, int npan, int n0, int pc, int kc, int N, const float *B, long rsb,
                               long csb) {
    for (int p = 0; p < npan; p++, dst += (size_t)kc * GEMM_NR) {
        int c0 = n0 + p * GEMM_NR, nn = N - c0 < GEMM_NR ? N - c0 : GEMM_NR;
        if (rsb == 1) {   // B^T is row-major (a weight matrix): read each of its rows contiguously
            for (int j = 0; j < GEMM_NR; j++) {
                const float *src = B + pc + (long)(c0 + j) * csb;
                if (j < nn) for (int k = 0; k < kc; k++) dst[k * GEMM_NR + j] = src[k];
                else for (int k = 0; k < kc; k++) dst[k * GEMM_NR + j] = 0.0f;
            }
        } else {
            float *d = dst;
            for (int k = 0; k < kc; k++, d += GEMM_NR) {
                const float *src = B + (long)(pc + k) * rsb + (long)c0 * csb;
                int j = 0;
                if (csb == 1) for (; j < nn; j++) d[j] = src[j];
                else for (; j < nn; j++) d[j] = src[(long)j * csb];
                for (; j < GEMM_NR; j++) d[j] = 0.0f;
            }
        }
    }
}
// Packs A[ic:ic+mc, pc:pc+kc] into panels Ap[q][k][MR], zero-padded past mc.
static inline void gemm_pack_a(float *Ap, int mc, int ic, int pc, int kc, const float *A, long rsa, long csa) {
    for (int q = 0; q < mc; q += GEMM_MR) {
        float *dst = Ap + (size_t)q * kc;
        int mm = mc - q < GEMM_MR ? mc - q : GEMM_MR;
        const float *src0 = A + (long)(ic + q) * rsa + (long)pc * csa;
        if (csa == 1 && mm == GEMM_MR) {   // row-major A, a full panel
            for (int k = 0; k < kc; k++)
                for (int i = 0; i < GEMM_MR; i++) dst[k * GEMM_MR + i] = src0[(long)i * rsa + k];
            continue;
        }
        for (int k = 0; k < kc; k++, dst += GEMM_MR) {
            const float *src = src0 + (long)k * csa;
            int i = 0;
            for (; i < mm; i++) dst[i] = src[(long)i * rsa];
            for (; i < GEMM_MR; i++) dst[i] = 0.0f;
        }
    }
}

// A range of B's panels, [front, back) in chunks, as one 64-bit word: the owner takes chunks from its
// front and a thread with none left takes them from the back of the fullest range, each by a
// compare-and-swap, so a chunk goes to exactly one thread. Padded to its own cache lines.
typedef struct { unsigned long long fb; char pad[120]; } GemmRange;
static int gemm_take(GemmRange *r, int from_back) {   // a chunk index, or -1 if the range is empty
    unsigned long long old = __atomic_load_n(&r->fb, __ATOMIC_RELAXED);
    for (;;) {
        unsigned f = (unsigned)(old >> 32), b = (unsigned)old;
        if (f >= b) return -1;
        unsigned long long nw = from_back ? ((unsigned long long)f << 32) | (b - 1)
                                          : ((unsigned long long)(f + 1) << 32) | b;
        if (__atomic_compare_exchange_n(&r->fb, &old, nw, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return from_back ? (int)b - 1 : (int)f;
    }
}
// nchunk chunks split into nrg equal ranges, one a thread
static void gemm_split(GemmRange *rg, int nrg, int nchunk) {
    for (int t = 0; t < nrg; t++)
        rg[t].fb = (unsigned long long)nchunk * t / nrg << 32 | (unsigned long long)nchunk * (t + 1) / nrg;
}
// Thread th's next chunk of the nrg ranges rg: the front of its own range, else the back of the
// fullest one; -1 when every range is empty. *stolen says which it was. (Every range is looked at,
// not only those of the threads there are: a team may get fewer threads than were asked for.)
static int gemm_next_chunk(GemmRange *rg, int nrg, int th, int *stolen) {
    int ch = gemm_take(&rg[th], 0);
    *stolen = 0;
    while (ch < 0) {
        int best = -1;
        unsigned most = 0;
        for (int t = 0; t < nrg; t++) {
            unsigned long long fb = __atomic_load_n(&rg[t].fb, __ATOMIC_RELAXED);
            unsigned f = (unsigned)(fb >> 32), b = (unsigned)fb;
            if (b > f && b - f > most) { most = b - f; best = t; }
        }
        if (best < 0) return -1;
        ch = gemm_take(&rg[best], 1);   // -1 if its owner took the last one first: look again
        *stolen = 1;
    }
    return ch;
}

// sgemm with few rows (M below nthreads * GEMM_MC) and B pre-packed: decoding's matmuls, whose
// weights stream from memory at every step. A is packed once, all of K (each thread packs some of
// its K blocks). Each thread then owns an equal range of B's panels, GEMM_CHUNK at a time, and
// takes them in order (so that each panel's first tile prefetches the next); a thread done with its
// own range takes chunks from the back of the fullest one. On a shared machine one vCPU can run
// slower for a while, and with a fixed split the other waited at the end (8% of a decoding profile).
// Each panel's columns are computed by one thread, K block by K block in order: the same bits.
#define GEMM_CHUNK 4   // panels a thread takes at a time (even: AVX-512 takes them in pairs)
static void sgemm_few_rows_packed(int M, int N, int K, const float *A, long rsa, long csa, const float *Bpre,
                                  float *C, long ldc, int accumulate, int nthreads, int nested) {
    int mpad = (M + GEMM_MR - 1) / GEMM_MR * GEMM_MR, nkb = (K + GEMM_KC - 1) / GEMM_KC;
    int npan = (N + GEMM_NR - 1) / GEMM_NR, nchunk = (npan + GEMM_CHUNK - 1) / GEMM_CHUNK;
    size_t asize = (size_t)mpad * K;   // K block j's packed rows at Apk + mpad * j * GEMM_KC
    float *Apk = nested ? (float *)aligned_alloc(64, (asize * sizeof(float) + 63) / 64 * 64)
                        : gemm_grow(&gemm_abuf, &gemm_acap, asize);
    GemmRange *rg = (GemmRange *)aligned_alloc(64, (size_t)nthreads * sizeof(GemmRange));
    if (!Apk || !rg) FATAL("sgemm: out of memory for the packing buffers");
    gemm_split(rg, nthreads, nchunk);
    size_t pstride = (size_t)K * GEMM_NR;   // pack_panels' layout: [panel][k][16]
    #pragma omp parallel num_threads(nthreads) if (!nested)
    {
        int th = 0;
#ifdef _OPENMP
        if (!nested) th = omp_get_thread_num();
#endif
        #pragma omp for schedule(static)
        for (int j = 0; j < nkb; j++) {
            int pc = j * GEMM_KC, kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
            gemm_pack_a(Apk + (size_t)mpad * pc, M, 0, pc, kc, A, rsa, csa);
        }   // (the loop's barrier: all of A is packed)
        int from_back;
        for (int ch; (ch = gemm_next_chunk(rg, nthreads, th, &from_back)) >= 0;) {
            int p0 = ch * GEMM_CHUNK, p1 = p0 + GEMM_CHUNK < npan ? p0 + GEMM_CHUNK : npan;
            int n0 = p0 * GEMM_NR, ncols = (p1 * GEMM_NR < N ? p1 * GEMM_NR : N) - n0;
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
                const float *panels = Bpre + (size_t)p0 * pstride + (size_t)pc * GEMM_NR;
                // after this chunk's last panel(s): its first at the next K block, or the next chunk's first
                const float *after = pc + kc < K ? panels + (size_t)kc * GEMM_NR
                                     : !from_back && p1 < npan ? Bpre + (size_t)p1 * pstride : NULL;
                gemm_block(M, ncols, kc, Apk + (size_t)mpad * pc, panels, pstride, C + n0, ldc,
                           accumulate || pc > 0, 1, after);
            }
        }
    }
    free(rg);
    if (nested) free(Apk);
}

// C[m*ldc + n] = (accumulate ? C : 0) + sum_k A[m*rsa + k*csa] * B[k*rsb + n*csb]
// for m < M, n < N, k < K. Bpre, if not NULL, is B already packed by pack_panels (then B is not
// read): generation packs each weight once, not every step.
// Threads: with many rows (training: M = B*T), the threads share the packing of B, then take its
// rows GEMM_MD at a time, each the next block when it is free (two barriers per K block): on a
// shared machine one thread can run slower for a while, and a fixed split of the rows would leave
// the other waiting at the barrier. With few rows (decoding: M = the batch), blocks of rows would
// leave a thread idle (56 rows: 48 + 8), so each thread takes an equal range of B's panels instead,
// packs them itself and needs no barrier at all; with B pre-packed (decoding), sgemm_few_rows_packed
// lets a thread that is done take panels from the other's range.
static void sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                  float *C, long ldc, int accumulate, const float *Bpre) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) for (int m = 0; m < M; m++) memset(C + (long)m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    int nc_max = N < GEMM_NC ? N : GEMM_NC;
    int npanels = (nc_max + GEMM_NR - 1) / GEMM_NR;
    int nthreads = 1, nested = 0;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
    nested = omp_in_parallel();   // called from a parallel region: run on this thread, private buffers
    if (nested) nthreads = 1;
#endif
    int by_rows = M >= nthreads * GEMM_MC;
    if (!by_rows && Bpre) {
        sgemm_few_rows_packed(M, N, K, A, rsa, csa, Bpre, C, ldc, accumulate, nthreads, nested);
        return;
    }
    // by rows, Bp holds the whole packed B block. By panels, each thread packs into its own part of
    // Bp: the last N block splits differently, and a thread may start on it while another still
    // reads its panels of the block before.
    int own = ((npanels + 1) / 2 + nthreads - 1) / nthreads * 2;   // most panels a thread takes
    size_t bsize = (size_t)(by_rows ? npanels : own * nthreads) * GEMM_NR * kc_max;
    size_t asize = (size_t)GEMM_MC * kc_max;
    float *Bp = NULL, *Aall = NULL;
    if (!nested) {
        Bp = Bpre ? NULL : gemm_grow(&gemm_bbuf, &gemm_bcap, bsize);
        Aall = gemm_grow(&gemm_abuf, &gemm_acap, asize * nthreads);
    } else {
        Bp = Bpre ? NULL : (float *)aligned_alloc(64, (bsize * sizeof(float) + 63) / 64 * 64);
        Aall = (float *)aligned_alloc(64, (asize * sizeof(float) + 63) / 64 * 64);
    }
    if ((!Bpre && !Bp) || !Aall) FATAL("sgemm: out of memory for the packing buffers");
    #pragma omp parallel num_threads(nthreads) if (!nested)
    {
        int th = 0, nth = 1;
#ifdef _OPENMP
        if (!nested) { th = omp_get_thread_num(); nth = omp_get_num_threads(); }
#endif
        float *Ap = Aall + asize * th, *Bown = Bp ? Bp + (size_t)th * own * kc_max * GEMM_NR : NULL;
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = N - jc < GEMM_NC ? N - jc : GEMM_NC;
            int np = (nc + GEMM_NR - 1) / GEMM_NR;
            // by panels, this thread's panels [p0, p1) of the block, in pairs (AVX-512 takes two at a time)
            int pairs = (np + 1) / 2, per = (pairs + nth - 1) / nth;
            int p0 = th * per * 2 < np ? th * per * 2 : np, p1 = p0 + per * 2 < np ? p0 + per * 2 : np;
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
                int acc = accumulate || pc > 0;
                size_t pstride = Bpre ? (size_t)K * GEMM_NR : (size_t)kc * GEMM_NR;
                // packed panel p of this block: Bpre's, or Bp's when the threads share the block
                const float *Bblk = Bpre ? Bpre + ((size_t)(jc / GEMM_NR) * K + pc) * GEMM_NR : Bp;
                if (by_rows) {
                    if (!Bpre) {   // everyone packs a share of the panels, then waits for the rest
                        int share = (np + nth - 1) / nth, q0 = th * share < np ? th * share : np;
                        int q1 = q0 + share < np ? q0 + share : np;
                        if (q1 > q0) gemm_pack_b(Bp + (size_t)q0 * kc * GEMM_NR, q1 - q0, jc + q0 * GEMM_NR, pc, kc, N,
                                                 B, rsb, csb);
                        #pragma omp barrier
                    }
                    int nblk = (M + GEMM_MD - 1) / GEMM_MD;
                    #pragma omp for schedule(dynamic) nowait
                    for (int ib = 0; ib < nblk; ib++) {
                        int ic = ib * GEMM_MD, mc = M - ic < GEMM_MD ? M - ic : GEMM_MD;
                        gemm_pack_a(Ap, mc, ic, pc, kc, A, rsa, csa);
                        gemm_block(mc, nc, kc, Ap, Bblk, pstride, C + (long)ic * ldc + jc, ldc, acc, Bpre != NULL,
                                   NULL);
                    }
                } else if (p1 > p0) {   // this thread's panels [p0, p1): pack them, then all rows
                    gemm_pack_b(Bown, p1 - p0, jc + p0 * GEMM_NR, pc, kc, N, B, rsb, csb);
                    int ncols = (p1 * GEMM_NR < nc ? p1 * GEMM_NR : nc) - p0 * GEMM_NR;
                    for (int ic = 0; ic < M; ic += GEMM_MC) {
                        int mc = M - ic < GEMM_MC ? M - ic : GEMM_MC;
                        gemm_pack_a(Ap, mc, ic, pc, kc, A, rsa, csa);
                        gemm_block(mc, ncols, kc, Ap, Bown, pstride, C + (long)ic * ldc + jc + p0 * GEMM_NR, ldc, acc,
                                   0, NULL);
                    }
                }
                if (by_rows) {
                    #pragma omp barrier   // before Bp is overwritten, or C's rows taken by another thread
                }
            }
        }
    }
    if (nested) { free(Bp); free(Aall); }
}

// C (M, N) += A^T B over some rows of K only: rows[0..n) (increasing) are the kept rows of a K that
// has others, A (n, M) and B (n, ldb) hold the kept rows packed, and the rows left out are zero rows
// of A. The result is sgemm's over all of K, to the bit: sgemm sums K in blocks of GEMM_KC rows, each
// from 0, then adds the block into C, and a zero row adds nothing to a block's sum (fma(0, b, s) = s
// for finite b; s never becomes -0). So each block is one sgemm over its kept rows, in order; a
// block with none would add +0 to C, which changes nothing either. (The LM head's d_weight in
// training, where only the response rows have a gradient.)
static void sgemm_rows_k(int M, int N, const int *rows, int n, const float *A, const float *B, long ldb, float *C) {
    for (int j0 = 0; j0 < n;) {
        int blk = rows[j0] / GEMM_KC, j1 = j0;
        while (j1 < n && rows[j1] / GEMM_KC == blk) j1++;
        sgemm(M, N, j1 - j0, A + (size_t)j0 * M, 1, M, B + (size_t)j0 * ldb, ldb, 1, C, N, 1, NULL);
        j0 = j1;
    }
}

// A weight W (OC, C), used as B = W^T, packed once the way sgemm packs it: panel p holds columns
// 16p..16p+15 of B over all of K: P[p][k][j] = W[16p + j][k], zero-padded. Returns a malloc'd block.
static float *pack_panels(const float *W, int OC, int C) {
    int np = (OC + GEMM_NR - 1) / GEMM_NR;
    float *P = (float *)aligned_alloc(64, ((size_t)np * C * GEMM_NR * sizeof(float) + 63) / 64 * 64);
    if (!P) return NULL;
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < np; p++)
        for (int j = 0; j < GEMM_NR; j++) {
            int o = p * GEMM_NR + j;
            float *dst = P + (size_t)p * C * GEMM_NR + j;
            if (o < OC) for (int k = 0; k < C; k++) dst[(size_t)k * GEMM_NR] = W[(size_t)o * C + k];
            else for (int k = 0; k < C; k++) dst[(size_t)k * GEMM_NR] = 0.0f;
        }
    return P;
}

// Few rows (decoding a handful of sequences): the time is all in streaming the weights once, so
// skip GEMM's packing and take 4 weight rows at a time, each dotted with every input row while it
// sits in L1. out (M, OC) = inp (M, C) @ weight^T (OC, C). Guided: threads take shrinking chunks as they
// are free, so a vCPU that runs slower for a while does not keep the other waiting (as with a fixed
// split), and with few chunks the threads rarely meet on the counter (as with 2000 chunks of 16 rows).
static void matmul_few_rows(float *out, const float *inp, const float *weight, int M, int C, int OC) {
    #pragma omp parallel for schedule(guided)
    for (int o = 0; o < OC; o += 4) {
        int no = OC - o < 4 ? OC - o : 4;
        const float *w[4];
        for (int r = 0; r < 4; r++) w[r] = weight + (size_t)(o + (r < no ? r : 0)) * C;
        for (int m = 0; m < M; m++) {
            const float *x = inp + (size_t)m * C;
            gemm_v8 acc[4];
            memset(acc, 0, sizeof acc);
            int k = 0;
            for (; k + 8 <= C; k += 8) {
                gemm_v8 xv, wv;
                memcpy(&xv, x + k, 32);
                for (int r = 0; r < 4; r++) { memcpy(&wv, w[r] + k, 32); acc[r] += xv * wv; }
            }
            for (int r = 0; r < no; r++) {
                float s = 0.0f;
                for (int j = 0; j < 8; j++) s += acc[r][j];
                for (int kk = k; kk < C; kk++) s += x[kk] * w[r][kk];
                out[(size_t)m * OC + o + r] = s;
            }
        }
    }
}

// ---- attention's two matmuls, one query row at a time (train_empo.c's attention_forward).
// attend_one there computes a score as dot_f32(q, k_j) (8 partial sums, lane l taking d = l mod 8,
// one fma at a time from 0, then a fixed tree) and the output as out[d] = fma(p_j, v_j[d], out[d])
// in order of j. Key by key that leaves the FMA units mostly idle (each score is a chain of 8
// dependent fmas and a horizontal sum); these do the same operations on 8 keys, or 64 output
// columns, at once along the vector, so every bit is the same.

// s[j] = dot_f32(q, k_j, HD) for j < n, from the keys transposed: KT[d * ldk + j]. KT must hold
// finite values up to column n rounded up to 16 (the lanes past n are computed and dropped).
static void attn_scores(float *s, const float *q, const float *KT, long ldk, int n, int HD) {
    int HD8 = HD / 8 * 8;
    for (int j0 = 0; j0 < n; j0 += 16) {
        gemm_v8 a0[8], a1[8], kv;
        for (int l = 0; l < 8; l++) { a0[l] = (gemm_v8){0}; a1[l] = (gemm_v8){0}; }
        for (int i = 0; i < HD8; i += 8)
            for (int l = 0; l < 8; l++) {
                const float *kr = KT + (long)(i + l) * ldk + j0;
                gemm_v8 qv = gemm_splat8(q[i + l]);
                memcpy(&kv, kr, 32); a0[l] = gemm_fma8(qv, kv, a0[l]);
                memcpy(&kv, kr + 8, 32); a1[l] = gemm_fma8(qv, kv, a1[l]);
            }
        gemm_v8 r0 = ((a0[0] + a0[4]) + (a0[1] + a0[5])) + ((a0[2] + a0[6]) + (a0[3] + a0[7]));
        gemm_v8 r1 = ((a1[0] + a1[4]) + (a1[1] + a1[5])) + ((a1[2] + a1[6]) + (a1[3] + a1[7]));
        for (int i = HD8; i < HD; i++) {   // dot_f32's tail: s = fma(q, k, s)
            const float *kr = KT + (long)i * ldk + j0;
            memcpy(&kv, kr, 32); r0 = gemm_fma8(gemm_splat8(q[i]), kv, r0);
            memcpy(&kv, kr + 8, 32); r1 = gemm_fma8(gemm_splat8(q[i]), kv, r1);
        }
        float r[16];
        memcpy(r, &r0, 32); memcpy(r + 8, &r1, 32);
        int m = n - j0 < 16 ? n - j0 : 16;
        memcpy(s + j0, r, (size_t)m * sizeof(float));
    }
}

// attn_scores for nq <= 4 query rows against the same keys: s[r][j] = dot_f32(q[r], k_j, HD) for
// r < nq, j < n (KT as for attn_scores). Each 16 keys' vector is loaded once for
// the four rows. dot_f32's tree ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) is taken in its two
// halves, lanes {0, 4, 1, 5} and then {2, 6, 3, 7}, so that 4 rows x 4 lanes of accumulators fit in
// the registers; every lane is still its chain of fmas from 0 in order of d, so the bits are the same.
static void attn_scores4(float *const s[4], const float *const q[4], int nq, const float *KT, long ldk, int n,
                         int HD) {
#ifdef __AVX512F__
    if (HD % 8 == 0 && nq > 1) {
        const float *qr[4];
        for (int r = 0; r < 4; r++) qr[r] = q[r < nq ? r : 0];
        for (int j0 = 0; j0 < n; j0 += 16) {
            __m512 half[2][4];
            for (int h = 0; h < 2; h++) {
                __m512 acc[4][4];   // [u][row], u = 0..3: the lanes 2h, 2h + 4, 2h + 1, 2h + 5
                for (int u = 0; u < 4; u++)
                    for (int r = 0; r < 4; r++) acc[u][r] = _mm512_setzero_ps();
                for (int i = 0; i < HD; i += 8)
                    for (int u = 0; u < 4; u++) {
                        int l = 2 * h + (u & 1) * 4 + (u >> 1);
                        __m512 kv = _mm512_loadu_ps(KT + (long)(i + l) * ldk + j0);
                        for (int r = 0; r < 4; r++)
                            acc[u][r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][i + l]), kv, acc[u][r]);
                    }
                for (int r = 0; r < 4; r++)
                    half[h][r] = _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]),
                                               _mm512_add_ps(acc[2][r], acc[3][r]));
            }
            __mmask16 keep = n - j0 >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j0)) - 1);   // the keys < n
            for (int r = 0; r < nq; r++) _mm512_mask_storeu_ps(s[r] + j0, keep, _mm512_add_ps(half[0][r], half[1][r]));
        }
        return;
    }
#elif defined(__AVX2__) && defined(__FMA__)
    // AVX2 has 16 vector registers: 8 keys at a time, and the tree a pair of lanes (l, l + 4) at a time,
    // (pair 0 + pair 1) + (pair 2 + pair 3), so that 4 rows x 2 lanes of accumulators fit
    if (HD % 8 == 0 && nq > 1) {
        const float *qr[4];
        for (int r = 0; r < 4; r++) qr[r] = q[r < nq ? r : 0];
        for (int j0 = 0; j0 < n; j0 += 8) {
            gemm_v8 pair[4][4];   // [l][row]: the sum of lane l plus that of lane l + 4
            for (int l = 0; l < 4; l++) {
                gemm_v8 lo[4], hi[4], k0, k1;
                for (int r = 0; r < 4; r++) { lo[r] = (gemm_v8){0}; hi[r] = (gemm_v8){0}; }
                for (int i = 0; i < HD; i += 8) {
                    memcpy(&k0, KT + (long)(i + l) * ldk + j0, 32);
                    memcpy(&k1, KT + (long)(i + l + 4) * ldk + j0, 32);
                    for (int r = 0; r < 4; r++) {
                        lo[r] = gemm_fma8(gemm_splat8(qr[r][i + l]), k0, lo[r]);
                        hi[r] = gemm_fma8(gemm_splat8(qr[r][i + l + 4]), k1, hi[r]);
                    }
                }
                for (int r = 0; r < 4; r++) pair[l][r] = lo[r] + hi[r];
            }
            int m = n - j0 < 8 ? n - j0 : 8;   // the keys < n
            for (int r = 0; r < nq; r++) {
                gemm_v8 s8 = (pair[0][r] + pair[1][r]) + (pair[2][r] + pair[3][r]);
                memcpy(s[r] + j0, &s8, (size_t)m * sizeof(float));
            }
        }
        return;
    }
#endif
    for (int r = 0; r < nq; r++) attn_scores(s[r], q[r], KT, ldk, n, HD);
}

// s[j] = dot_f32(q, k + j * stride, HD) for j < n: the scores against keys stored as rows (the KV
// cache, where transposing them every step would cost what it saves). dot_f32's 8 partial sums are
// the 8 lanes of one vector, then its fixed tree and its tail; 4 keys side by side keep 4 chains
// of fmas in flight (one key alone is a chain of HD/8 dependent fmas).
static void attn_scores_rows(float *s, const float *q, const float *k, long stride, int n, int HD) {
    int HD8 = HD / 8 * 8;
    for (int j0 = 0; j0 < n; j0 += 4) {
        int nk = n - j0 < 4 ? n - j0 : 4;
        gemm_v8 acc[4], qv, kv;
        for (int u = 0; u < 4; u++) acc[u] = (gemm_v8){0};
        const float *k0 = k + (long)j0 * stride;
        if (nk == 4)
            for (int i = 0; i < HD8; i += 8) {
                memcpy(&qv, q + i, 32);
                for (int u = 0; u < 4; u++) {
                    memcpy(&kv, k0 + u * stride + i, 32);
                    acc[u] = gemm_fma8(qv, kv, acc[u]);
                }
            }
        else
            for (int u = 0; u < nk; u++)
                for (int i = 0; i < HD8; i += 8) {
                    memcpy(&qv, q + i, 32); memcpy(&kv, k0 + u * stride + i, 32);
                    acc[u] = gemm_fma8(qv, kv, acc[u]);
                }
        for (int u = 0; u < nk; u++) {
            gemm_v8 a = acc[u];
            float r = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
            for (int i = HD8; i < HD; i++) r = fmaf(q[i], k0[u * stride + i], r);
            s[j0 + u] = r;
        }
    }
}

// attn_scores_rows for nq <= 4 queries against the same keys: s[r][j] = dot_f32(q[r], k_j, HD). Each key
// row is loaded once for all the queries (the query heads that share a key/value head, in decoding).
static void attn_scores_rows4(float *const s[4], const float *const q[4], int nq, const float *k, long stride, int n,
                              int HD) {
    int j0 = 0;
#ifdef __AVX512F__   // 16 accumulators + 5 operands: more vector registers than AVX2 has
    if (nq > 1 && HD % 8 == 0) {
        const float *qr[4];
        for (int r = 0; r < 4; r++) qr[r] = q[r < nq ? r : 0];
        for (; j0 + 4 <= n; j0 += 4) {
            gemm_v8 acc[4][4], kv[4], qv;   // acc[key][query]
            for (int u = 0; u < 4; u++)
                for (int r = 0; r < 4; r++) acc[u][r] = (gemm_v8){0};
            const float *k0 = k + (long)j0 * stride;
            for (int i = 0; i < HD; i += 8) {
                for (int u = 0; u < 4; u++) memcpy(&kv[u], k0 + u * stride + i, 32);
                for (int r = 0; r < 4; r++) {
                    memcpy(&qv, qr[r] + i, 32);
                    for (int u = 0; u < 4; u++) acc[u][r] = gemm_fma8(qv, kv[u], acc[u][r]);
                }
            }
            for (int r = 0; r < nq; r++)
                for (int u = 0; u < 4; u++) {
                    gemm_v8 a = acc[u][r];
                    s[r][j0 + u] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
                }
        }
    }
#endif
    if (j0 < n)
        for (int r = 0; r < nq; r++) attn_scores_rows(s[r] + j0, q[r], k + (long)j0 * stride, stride, n - j0, HD);
}

// out[d] = sum_{j < n} p[j] * v[j * stride + d] for d < HD: from 0, one fma per j, in order of j.
static void attn_weighted_sum(float *out, const float *p, const float *v, long stride, int n, int HD) {
    int d0 = 0;
    for (; d0 + 64 <= HD; d0 += 64) {   // 8 vectors of accumulators: enough independent fmas per j
        gemm_v8 acc[8], x;
        for (int u = 0; u < 8; u++) acc[u] = (gemm_v8){0};
        for (int j = 0; j < n; j++) {
            const float *vj = v + (long)j * stride + d0;
            gemm_v8 pj = gemm_splat8(p[j]);
            for (int u = 0; u < 8; u++) { memcpy(&x, vj + 8 * u, 32); acc[u] = gemm_fma8(pj, x, acc[u]); }
        }
        memcpy(out + d0, acc, sizeof acc);
    }
    for (; d0 + 8 <= HD; d0 += 8) {
        gemm_v8 acc = {0}, x;
        for (int j = 0; j < n; j++) {
            memcpy(&x, v + (long)j * stride + d0, 32);
            acc = gemm_fma8(gemm_splat8(p[j]), x, acc);
        }
        memcpy(out + d0, &acc, 32);
    }
    for (; d0 < HD; d0++) {
        float acc = 0.0f;
        for (int j = 0; j < n; j++) acc = fmaf(p[j], v[(long)j * stride + d0], acc);
        out[d0] = acc;
    }
}

// out[d] = fma(p[n-1], v[(n-1) * stride + d], ... fma(p[0], v[d], out[d])) for d < HD: attn_weighted_sum
// accumulating onto out's own values, one fma per j in order of j (attention_backward's dq).
static void attn_weighted_acc(float *out, const float *p, const float *v, long stride, int n, int HD) {
    int d0 = 0;
    for (; d0 + 64 <= HD; d0 += 64) {
        gemm_v8 acc[8], x;
        memcpy(acc, out + d0, sizeof acc);
        for (int j = 0; j < n; j++) {
            const float *vj = v + (long)j * stride + d0;
            gemm_v8 pj = gemm_splat8(p[j]);
            for (int u = 0; u < 8; u++) { memcpy(&x, vj + 8 * u, 32); acc[u] = gemm_fma8(pj, x, acc[u]); }
        }
        memcpy(out + d0, acc, sizeof acc);
    }
    for (; d0 < HD; d0++) {
        float acc = out[d0];
        for (int j = 0; j < n; j++) acc = fmaf(p[j], v[(long)j * stride + d0], acc);
        out[d0] = acc;
    }
}

// attn_weighted_sum (acc_in 0) or attn_weighted_acc (acc_in 1) for nr <= 4 rows at once, row r over
// its first n[r] values: each value vector is loaded once for the rows that use it, then each row
// finishes its own last few alone (its fmas still in order of j: the same bits).
static void attn_weighted4(float *const out[4], const float *const p[4], const int n[4], int nr, const float *v,
                           long stride, int HD, int acc_in) {
#ifdef __AVX512F__
    if (nr > 1 && HD % 64 == 0) {
        int n0 = n[0];
        for (int r = 1; r < nr; r++) if (n[r] < n0) n0 = n[r];
        const float *pr[4];
        for (int r = 0; r < 4; r++) pr[r] = p[r < nr ? r : 0];
        for (int d0 = 0; d0 < HD; d0 += 64) {
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int u = 0; u < 4; u++)
                    acc[r][u] = acc_in && r < nr ? _mm512_loadu_ps(out[r] + d0 + 16 * u) : _mm512_setzero_ps();
            for (int j = 0; j < n0; j++) {
                const float *vj = v + (long)j * stride + d0;
                __m512 x[4];
                for (int u = 0; u < 4; u++) x[u] = _mm512_loadu_ps(vj + 16 * u);
                for (int r = 0; r < 4; r++) {
                    __m512 pj = _mm512_set1_ps(pr[r][j]);
                    for (int u = 0; u < 4; u++) acc[r][u] = _mm512_fmadd_ps(pj, x[u], acc[r][u]);
                }
            }
            for (int r = 0; r < nr; r++) {
                for (int j = n0; j < n[r]; j++) {
                    const float *vj = v + (long)j * stride + d0;
                    __m512 pj = _mm512_set1_ps(p[r][j]);
                    for (int u = 0; u < 4; u++)
                        acc[r][u] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16 * u), acc[r][u]);
                }
                for (int u = 0; u < 4; u++) _mm512_storeu_ps(out[r] + d0 + 16 * u, acc[r][u]);
            }
        }
        return;
    }
#elif defined(__AVX2__) && defined(__FMA__)
    if (nr > 1 && HD % 16 == 0) {   // 4 rows x 16 columns of accumulators (AVX2 has 16 registers)
        int n0 = n[0];
        for (int r = 1; r < nr; r++) if (n[r] < n0) n0 = n[r];
        const float *pr[4];
        for (int r = 0; r < 4; r++) pr[r] = p[r < nr ? r : 0];
        for (int d0 = 0; d0 < HD; d0 += 16) {
            gemm_v8 acc[4][2], x0, x1;
            for (int r = 0; r < 4; r++)
                for (int u = 0; u < 2; u++) {
                    acc[r][u] = (gemm_v8){0};
                    if (acc_in && r < nr) memcpy(&acc[r][u], out[r] + d0 + 8 * u, 32);
                }
            for (int j = 0; j < n0; j++) {
                const float *vj = v + (long)j * stride + d0;
                memcpy(&x0, vj, 32); memcpy(&x1, vj + 8, 32);
                for (int r = 0; r < 4; r++) {
                    gemm_v8 pj = gemm_splat8(pr[r][j]);
                    acc[r][0] = gemm_fma8(pj, x0, acc[r][0]);
                    acc[r][1] = gemm_fma8(pj, x1, acc[r][1]);
                }
            }
            for (int r = 0; r < nr; r++) {
                for (int j = n0; j < n[r]; j++) {
                    const float *vj = v + (long)j * stride + d0;
                    gemm_v8 pj = gemm_splat8(p[r][j]);
                    memcpy(&x0, vj, 32); memcpy(&x1, vj + 8, 32);
                    acc[r][0] = gemm_fma8(pj, x0, acc[r][0]);
                    acc[r][1] = gemm_fma8(pj, x1, acc[r][1]);
                }
                memcpy(out[r] + d0, acc[r], sizeof acc[r]);
            }
        }
        return;
    }
#endif
    for (int r = 0; r < nr; r++) {
        if (acc_in) attn_weighted_acc(out[r], p[r], v, stride, n[r], HD);
        else attn_weighted_sum(out[r], p[r], v, stride, n[r], HD);
    }
}

// The rank-1 updates of attention_backward for 4 consecutive query rows at once: for each key row
// j < n, D[j][d] = fma(w3[j], x3[d], fma(w2[j], x2[d], fma(w1[j], x1[d], fma(w0[j], x0[d], D[j][d]))))
// (D (n, HD) contiguous), which is the four rows' updates one after the other, loading D once.
static void attn_rank4_acc(float *D, const float *const w[4], const float *const x[4], int n, int HD) {
#ifdef __AVX512F__
    if (HD % 64 == 0) {   // the four x rows stay in registers, 64 columns at a time
        for (int d0 = 0; d0 < HD; d0 += 64) {
            __m512 xv[4][4];
            for (int r = 0; r < 4; r++)
                for (int u = 0; u < 4; u++) xv[r][u] = _mm512_loadu_ps(x[r] + d0 + 16 * u);
            for (int j = 0; j < n; j++) {
                float *dj = D + (long)j * HD + d0;
                __m512 w0 = _mm512_set1_ps(w[0][j]), w1 = _mm512_set1_ps(w[1][j]);
                __m512 w2 = _mm512_set1_ps(w[2][j]), w3 = _mm512_set1_ps(w[3][j]);
                for (int u = 0; u < 4; u++) {
                    __m512 y = _mm512_fmadd_ps(w0, xv[0][u], _mm512_loadu_ps(dj + 16 * u));
                    y = _mm512_fmadd_ps(w1, xv[1][u], y);
                    y = _mm512_fmadd_ps(w2, xv[2][u], y);
                    _mm512_storeu_ps(dj + 16 * u, _mm512_fmadd_ps(w3, xv[3][u], y));
                }
            }
        }
        return;
    }
#elif defined(__AVX2__) && defined(__FMA__)
    if (HD % 16 == 0) {   // the four x rows stay in registers, 16 columns at a time
        for (int d0 = 0; d0 < HD; d0 += 16) {
            gemm_v8 xv[4][2];
            for (int r = 0; r < 4; r++) memcpy(xv[r], x[r] + d0, sizeof xv[r]);
            for (int j = 0; j < n; j++) {
                float *dj = D + (long)j * HD + d0;
                gemm_v8 w0 = gemm_splat8(w[0][j]), w1 = gemm_splat8(w[1][j]);
                gemm_v8 w2 = gemm_splat8(w[2][j]), w3 = gemm_splat8(w[3][j]);
                for (int u = 0; u < 2; u++) {
                    gemm_v8 y;
                    memcpy(&y, dj + 8 * u, 32);
                    y = gemm_fma8(w0, xv[0][u], y);
                    y = gemm_fma8(w1, xv[1][u], y);
                    y = gemm_fma8(w2, xv[2][u], y);
                    y = gemm_fma8(w3, xv[3][u], y);
                    memcpy(dj + 8 * u, &y, 32);
                }
            }
        }
        return;
    }
#endif
    for (int j = 0; j < n; j++) {
        float *dj = D + (long)j * HD;
        float w0 = w[0][j], w1 = w[1][j], w2 = w[2][j], w3 = w[3][j];
        for (int d = 0; d < HD; d++) {
            float y = fmaf(w0, x[0][d], dj[d]);
            y = fmaf(w1, x[1][d], y);
            y = fmaf(w2, x[2][d], y);
            dj[d] = fmaf(w3, x[3][d], y);
        }
    }
}
// The same for one query row: D[j][d] = fma(w[j], x[d], D[j][d]) for j < n.
static void attn_rank1_acc(float *D, const float *w, const float *x, int n, int HD) {
    for (int j = 0; j < n; j++) {
        float *dj = D + (long)j * HD, wj = w[j];
        for (int d = 0; d < HD; d++) dj[d] = fmaf(wj, x[d], dj[d]);
    }
}

// ---- the reductions and the update, with the plain code's order of operations

// v, unchanged, but opaque to the optimizer: a product marked so is rounded before whatever
// consumes it, since the compiler can no longer fuse it into a later add (an fma). The fast paths
// below use it where the plain code's scalar loop compiles to a multiply and a separate add.
#ifdef __AVX__
#define gemm_opaque(v) __asm__("" : "+x"(v))
#else
#define gemm_opaque(v) __asm__("" : "+m"(v))
#endif

// dw[c] += sum_n (a[n*C + c] * b[n*C + c]) * r[n] for c < C: each term rounded, then added in order
// of n (rmsnorm_backward's dw). The plain loop walks a column N rows apart (one cache line per term);
// this takes 64 columns at once, row by row, which is the same arithmetic on contiguous loads.
static void colsum_prod3(float *dw, const float *a, const float *b, const float *r, int N, int C) {
    int C8 = C / 8 * 8, nblk = (C8 + 63) / 64;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * 64, nv = (C8 - c0) / 8 < 8 ? (C8 - c0) / 8 : 8;
        gemm_v8 s[8], x, y;
        for (int u = 0; u < 8; u++) s[u] = (gemm_v8){0};
        for (int n = 0; n < N; n++) {
            const float *an = a + (size_t)n * C + c0, *bn = b + (size_t)n * C + c0;
            gemm_v8 rn = gemm_splat8(r[n]);
            for (int u = 0; u < nv; u++) {
                memcpy(&x, an + 8 * u, 32); memcpy(&y, bn + 8 * u, 32);
                gemm_v8 t = x * y * rn;
                gemm_opaque(t);
                s[u] = s[u] + t;
            }
        }
        for (int u = 0; u < nv; u++)
            for (int l = 0; l < 8; l++) dw[c0 + 8 * u + l] += s[u][l];
    }
    for (int c = C8; c < C; c++) {   // the last C mod 8 columns
        float sc = 0.0f;
        for (int n = 0; n < N; n++) {
            float t = a[(size_t)n * C + c] * b[(size_t)n * C + c] * r[n];
            gemm_opaque(t);
            sc += t;
        }
        dw[c] += sc;
    }
}

// sum_i x[i]^2 in double over each of n chunks of len floats (the chunks contiguous, the last one
// last_len long): part[c] = the sum of chunk c, from 0 in order of i. One chunk's sum is a chain of
// dependent adds; taking 8 chunks side by side gives the core 8 independent chains.
// (A float times a float is exact in double, so fused or not, each step is one rounding.)
static void chunk_sumsq(double *part, const float *x, size_t nchunks, size_t len, size_t last_len) {
    size_t ngroups = (nchunks + 7) / 8;
    #pragma omp parallel for schedule(static)
    for (size_t gi = 0; gi < ngroups; gi++) {
        size_t c0 = gi * 8, nc = nchunks - c0 < 8 ? nchunks - c0 : 8;
        if (nc == 8 && (c0 + 8 < nchunks || last_len == len)) {
            double s[8] = {0};
            const float *xs = x + c0 * len;
            for (size_t i = 0; i < len; i++)
                for (int l = 0; l < 8; l++) { double v = xs[(size_t)l * len + i]; s[l] = fma(v, v, s[l]); }
            for (int l = 0; l < 8; l++) part[c0 + l] = s[l];
        } else {
            for (size_t c = c0; c < c0 + nc; c++) {
                size_t n = c + 1 == nchunks ? last_len : len;
                double sc = 0.0;
                for (size_t i = 0; i < n; i++) { double v = x[c * len + i]; sc = fma(v, v, sc); }
                part[c] = sc;
            }
        }
    }
}

// model_update's AdamW loop for i < n / 8 * 8 (the caller does the rest), 8 parameters at a time
// with the scalar loop's operations: grad = g * scale; m = fma(beta1, m, (1 - beta1) * grad);
// v = fma(beta2, v, (1 - beta2) * grad * grad); p = p * decay - (step * m) / (sqrt(v) / bc2_sqrt + eps).
// Returns n / 8 * 8. (Scalar, the loop is bound by sqrtf and two divisions per parameter.)
static size_t adamw_fast(float *p, const float *g, float *m, float *v, size_t n, float scale, float beta1,
                         float beta2, float decay, float step, float bc2_sqrt, float eps) {
#if defined(__AVX__) && defined(__FMA__)
    size_t n8 = n / 8;
    #pragma omp parallel for schedule(static)
    for (size_t k = 0; k < n8; k++) {
        size_t i = k * 8;
        __m256 grad = _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_set1_ps(scale));
        __m256 t1 = _mm256_mul_ps(_mm256_set1_ps(1.0f - beta1), grad);
        __m256 t2 = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(1.0f - beta2), grad), grad);
        __m256 mm = _mm256_fmadd_ps(_mm256_set1_ps(beta1), _mm256_loadu_ps(m + i), t1);
        __m256 vv = _mm256_fmadd_ps(_mm256_set1_ps(beta2), _mm256_loadu_ps(v + i), t2);
        _mm256_storeu_ps(m + i, mm);
        _mm256_storeu_ps(v + i, vv);
        __m256 w = _mm256_mul_ps(_mm256_loadu_ps(p + i), _mm256_set1_ps(decay));
        gemm_opaque(w);   // w - upd below: a multiply and a subtract, as in the scalar loop
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), _mm256_set1_ps(bc2_sqrt)), _mm256_set1_ps(eps));
        __m256 upd = _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(step), mm), den);
        _mm256_storeu_ps(p + i, _mm256_sub_ps(w, upd));
    }
    return n8 * 8;
#else
    (void)p; (void)g; (void)m; (void)v; (void)n; (void)scale; (void)beta1; (void)beta2; (void)decay; (void)step;
    (void)bc2_sqrt; (void)eps;
    return 0;
#endif
}

// ---- the log-sum-exp of many rows (the log-softmax over the vocabulary)

// max_v x[v] for v < V, as `if (x[v] > m) m = x[v]` from -FLT_MAX: NaNs are never taken. Lanes
// keep their own maxima (max_ps(x, m) is exactly that rule); the value is the same, and when it is
// a zero its sign does not matter to anyone who subtracts it (x - 0 and x - (-0) differ only in the
// sign of a zero, whose exp is 1 either way).
static inline float row_max(const float *x, int V) {
    int v = 0;
    float m = -FLT_MAX;
#ifdef __AVX__
    __m256 mv = _mm256_set1_ps(-FLT_MAX);
    for (; v + 8 <= V; v += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + v), mv);
    float lanes[8];
    _mm256_storeu_ps(lanes, mv);
    for (int l = 0; l < 8; l++) if (lanes[l] > m) m = lanes[l];
#endif
    for (; v < V; v++) if (x[v] > m) m = x[v];
    return m;
}

// The index that `best = 0; for v: if (x[v] > x[best]) best = v` ends with (the first maximum; NaNs
// never win, unless x[0] is one): the max in vectors (row_max), then the first element equal to it.
static inline int row_argmax(const float *x, int V) {
    if (V <= 0 || x[0] != x[0]) return 0;
    float m = row_max(x, V);
    int v = 0;
#ifdef __AVX__
    __m256 mv = _mm256_set1_ps(m);
    for (; v + 8 <= V; v += 8) {
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + v), mv, _CMP_EQ_OQ));
        if (hit) return v + __builtin_ctz((unsigned)hit);
    }
#endif
    for (; v < V; v++) if (x[v] == m) return v;
    return 0;   // every x[v] is below -FLT_MAX (-inf) or NaN: x[0] stays the best
}

// ---- expf, 8 at a time, with the same bits as the C library's scalar expf.
// The softmaxes (log-softmax over the vocabulary, attention, sampling) and SiLU spend most of
// their time in expf, one call per element. glibc (2.28 and later) computes expf(x) in double:
// x*32/ln2 = k + r, 2^(k/32) from a 32-entry table, a cubic in r, one rounding to float at the
// end; vexpf does the same operations in the same order (and with the same fused multiply-adds
// as glibc's FMA build, which x86-64 glibc selects on every CPU that has FMA) on 4 doubles per
// vector. Elements outside |x| < 88 (overflow, underflow, inf, NaN) go to the library's expf.
// Whether vexpf matches this machine's expf is checked once at startup on a spread of inputs;
// if not (another C library), every call goes to expf, so results never depend on the fast path.
#if defined(__AVX2__) && defined(__FMA__)
static const unsigned long long vexpf_tab[32] = {   // bits of 2^(i/32), less i << 47
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540};
static int vexpf_fast = 0;   // set by vexpf_check at startup

static inline __m128 vexpf4(__m128 x) {
    const __m256d inv_ln2_n = _mm256_set1_pd(0x1.71547652b82fep+5), shift = _mm256_set1_pd(0x1.8p+52);
    const __m256d c0 = _mm256_set1_pd(0x1.c6af84b912394p-20), c1 = _mm256_set1_pd(0x1.ebfce50fac4f3p-13);
    const __m256d c2 = _mm256_set1_pd(0x1.62e42ff0c52d6p-6), one = _mm256_set1_pd(1.0);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(inv_ln2_n, xd, shift);   // k + shift: k = round(x*32/ln2)
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);       // x*32/ln2 - k
    // the table by 4 scalar loads, not vpgatherqq: microcode on AMD, slowed on Intel by the Downfall
    // mitigation (on Zen 1 the loads take vexpf from 2.3 to 1.95 ns an element)
    unsigned long long k[4] __attribute__((aligned(32)));
    _mm256_store_si256((__m256i *)k, ki);
    __m256i t = _mm256_set_epi64x((long long)vexpf_tab[k[3] & 31], (long long)vexpf_tab[k[2] & 31],
                                  (long long)vexpf_tab[k[1] & 31], (long long)vexpf_tab[k[0] & 31]);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));   // 2^(k/32)
    __m256d z = _mm256_fmadd_pd(r, c0, c1), r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, c2, one);
    y = _mm256_fmadd_pd(z, r2, y);
    y = _mm256_mul_pd(y, _mm256_castsi256_pd(t));
    return _mm256_cvtpd_ps(y);
}
#endif

// out[i] = expf(x[i]) for i < n (out may be x)
static void vexpf(float *out, const float *x, int n) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if (vexpf_fast)
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            // the fast path covers |x| <= 0x1.5fffffp6 (87.99...): top 12 bits of the float <= 0x42a
            __m256i top = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(v), 20), _mm256_set1_epi32(0x7ff));
            if (!_mm256_testz_si256(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x42a)), _mm256_set1_epi32(-1))) {
                for (int j = 0; j < 8; j++) out[i + j] = expf(x[i + j]);
                continue;
            }
            __m128 lo = vexpf4(_mm256_castps256_ps128(v)), hi = vexpf4(_mm256_extractf128_ps(v, 1));
            _mm256_storeu_ps(out + i, _mm256_set_m128(hi, lo));
        }
#endif
    for (; i < n; i++) out[i] = expf(x[i]);
}

// The startup check: vexpf against expf on 2^18 inputs spread over the fast path's range and
// its edges. Runs before main (and before any thread), so vexpf_fast never changes while in use.
__attribute__((constructor)) static void vexpf_check(void) {
#if defined(__AVX2__) && defined(__FMA__)
    enum { NCHECK = 1 << 18 };
    static float x[NCHECK], y[NCHECK];
    unsigned s = 12345;
    for (int i = 0; i < NCHECK; i++) {
        s = s * 1664525u + 1013904223u;
        float v;
        if (i < 64) v = i < 32 ? -0x1.5fffffp6f + i * 1e-5f : 0x1.5fffffp6f - (i - 32) * 1e-5f;   // the edges
        else if (i & 1) { unsigned b = s >> 1; b = (b % 0x42b00000u) | ((s & 1u) << 31); memcpy(&v, &b, 4); }
        else v = ((float)(s >> 8) / 16777216.0f - 0.5f) * 176.0f;
        x[i] = v;
    }
    vexpf_fast = 1;
    vexpf(y, x, NCHECK);
    for (int i = 0; i < NCHECK; i++) {
        float e = expf(x[i]);
        if (memcmp(&e, &y[i], 4) != 0) { vexpf_fast = 0; break; }
    }
#endif
}

// For nr <= 8 rows of x (row r at x + r*ldx, V long): mx[r] = row_max(row r) and
// s[r] = sum_v expf(x[r][v] - mx[r]), in float and in order of v. The sum of one row is a chain of V
// dependent adds (an add's latency per element); the nr rows side by side are nr independent chains.
static void rows_expsum(float *mx, float *s, const float *x, size_t ldx, int nr, int V) {
    enum { CH = 512 };
    float e[8][CH];
    for (int r = 0; r < nr; r++) { mx[r] = row_max(x + r * ldx, V); s[r] = 0.0f; }
    for (int v0 = 0; v0 < V; v0 += CH) {
        int m = V - v0 < CH ? V - v0 : CH;
        for (int r = 0; r < nr; r++) {
            const float *xr = x + r * ldx + v0;
            for (int i = 0; i < m; i++) e[r][i] = xr[i] - mx[r];
            vexpf(e[r], e[r], m);
        }
        if (nr == 8)   // a constant trip count, so the 8 chains are unrolled side by side
            for (int i = 0; i < m; i++)
                for (int r = 0; r < 8; r++) s[r] += e[r][i];
        else
            for (int i = 0; i < m; i++)
                for (int r = 0; r < nr; r++) s[r] += e[r][i];
    }
}

// lse[n] = m + logf(sum_v expf(x[n*V + v] - m)) with m = row_max(row n): the log-softmax's
// normalizer, 8 rows at a time.
static void rows_logsumexp(float *lse, const float *x, int N, int V) {
    int ngroups = (N + 7) / 8;
    #pragma omp parallel for schedule(static)
    for (int gi = 0; gi < ngroups; gi++) {
        int n0 = gi * 8, nr = N - n0 < 8 ? N - n0 : 8;
        float mx[8], s[8];
        rows_expsum(mx, s, x + (size_t)n0 * V, (size_t)V, nr, V);
        for (int r = 0; r < nr; r++) lse[n0 + r] = mx[r] + logf(s[r]);
    }
}

#endif // EMPOC_GEMM_H
