// gemm.h: the fast path of train_empo.c's matmuls, a cache-blocked single-precision GEMM.
// It follows the classic Goto/BLIS recipe: cut K and N into blocks that stay in cache, copy
// ("pack") the current blocks of A and B into contiguous panels, and let a small register-blocked
// micro-kernel do rank-1 updates of a 6x16 tile of C. Packing also lets one routine serve all
// three matmuls of training (forward, d_input, d_weight): A and B are read through arbitrary
// row/column strides, so transposes cost nothing extra. The vectors are 8 floats wide on every
// machine (not the widest the CPU has), so the summation order, and every result, is the same on
// AVX2 and AVX-512 builds.
#ifndef EMPOC_GEMM_H
#define EMPOC_GEMM_H

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GEMM_MR 6     // micro-tile rows: 6 x 2 vectors of 8 = 12 accumulator registers (AVX2 has 16)
#define GEMM_NR 16    // micro-tile columns
#define GEMM_KC 256   // K block: a 16-column B panel (16 KB) stays in L1
#define GEMM_MC 96    // M block: the packed A block (96 KB) stays in L2
#define GEMM_NC 1024  // N block: the packed B block (1 MB) stays in L2/L3

typedef float gemm_v8 __attribute__((vector_size(32)));

// C[6x16] (+)= sum_k Ap[k][0..6) * Bp[k][0..16). Ap, Bp packed; C row stride ldc.
static inline void gemm_micro(int K, const float *Ap, const float *Bp, float *C, long ldc, int mr, int nr,
                              int accumulate) {
    // C's tile is needed only after the K loop: start fetching it now so the loads don't stall
    for (int i = 0; i < mr; i++) {
        __builtin_prefetch(C + (long)i * ldc, 1);
        __builtin_prefetch(C + (long)i * ldc + 15, 1);
    }
    gemm_v8 c[GEMM_MR][2];
    memset(c, 0, sizeof c);
    for (int k = 0; k < K; k++) {
        gemm_v8 b0, b1;
        memcpy(&b0, Bp, 32); memcpy(&b1, Bp + 8, 32);
        for (int i = 0; i < GEMM_MR; i++) {
            gemm_v8 a = {Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i], Ap[i]};
            c[i][0] += a * b0;
            c[i][1] += a * b1;
        }
        Ap += GEMM_MR; Bp += GEMM_NR;
    }
    float tile[GEMM_MR][GEMM_NR];
    memcpy(tile, c, sizeof tile);
    for (int i = 0; i < mr; i++) {
        float *row = C + (long)i * ldc;
        if (accumulate) for (int j = 0; j < nr; j++) row[j] += tile[i][j];
        else for (int j = 0; j < nr; j++) row[j] = tile[i][j];
    }
}

// C[m*ldc + n] = (accumulate ? C : 0) + sum_k A[m*rsa + k*csa] * B[k*rsb + n*csb]
// for m < M, n < N, k < K. Parallel over M blocks with OpenMP. Bpre, if not NULL, is B already
// packed by pack_panels (then B is not read): generation packs each weight once, not every step.
static void sgemm(int M, int N, int K, const float *A, long rsa, long csa, const float *B, long rsb, long csb,
                  float *C, long ldc, int accumulate, const float *Bpre) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) for (int m = 0; m < M; m++) memset(C + (long)m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    int nc_max = N < GEMM_NC ? N : GEMM_NC;
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    int npanels = (nc_max + GEMM_NR - 1) / GEMM_NR;
    float *Bp = (float *)aligned_alloc(64, ((size_t)npanels * GEMM_NR * kc_max * sizeof(float) + 63) / 64 * 64);
    // Split M into blocks of at most GEMM_MC rows, a multiple of the thread count of them, so
    // that no thread idles at the end of the parallel loop.
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int nblocks = (M + GEMM_MC - 1) / GEMM_MC;
    nblocks = (nblocks + nthreads - 1) / nthreads * nthreads;
    int mcb = (M + nblocks - 1) / nblocks;
    mcb = (mcb + GEMM_MR - 1) / GEMM_MR * GEMM_MR;
    #pragma omp parallel
    {
        float *Ap = (float *)aligned_alloc(64, (size_t)GEMM_MC * GEMM_KC * sizeof(float));
        for (int jc = 0; jc < N; jc += GEMM_NC) {
            int nc = N - jc < GEMM_NC ? N - jc : GEMM_NC;
            int np = (nc + GEMM_NR - 1) / GEMM_NR;
            for (int pc = 0; pc < K; pc += GEMM_KC) {
                int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
                int acc = accumulate || pc > 0;
                // pack B[pc:pc+kc, jc:jc+nc] into panels Bp[p][k][16], zero-padded at the edge
                #pragma omp for schedule(static)
                for (int p = 0; p < (Bpre ? 0 : np); p++) {
                    float *dst = Bp + (size_t)p * kc * GEMM_NR;
                    int n0 = jc + p * GEMM_NR, nn = N - n0 < GEMM_NR ? N - n0 : GEMM_NR;
                    if (rsb == 1) {   // B^T is row-major (a weight matrix): read each of its rows contiguously
                        for (int j = 0; j < GEMM_NR; j++) {
                            const float *src = B + pc + (long)(n0 + j) * csb;
                            if (j < nn) for (int k = 0; k < kc; k++) dst[k * GEMM_NR + j] = src[k];
                            else for (int k = 0; k < kc; k++) dst[k * GEMM_NR + j] = 0.0f;
                        }
                    } else {
                        for (int k = 0; k < kc; k++) {
                            const float *src = B + (long)(pc + k) * rsb + (long)n0 * csb;
                            int j = 0;
                            if (csb == 1) for (; j < nn; j++) dst[j] = src[j];
                            else for (; j < nn; j++) dst[j] = src[(long)j * csb];
                            for (; j < GEMM_NR; j++) dst[j] = 0.0f;
                            dst += GEMM_NR;
                        }
                    }
                }   // implicit barrier: Bp is ready for everyone
                #pragma omp for schedule(static, 1)
                for (int ic = 0; ic < M; ic += mcb) {
                    int mc = M - ic < mcb ? M - ic : mcb;
                    // pack A[ic:ic+mc, pc:pc+kc] into panels Ap[q][k][6]
                    for (int q = 0; q < mc; q += GEMM_MR) {
                        float *dst = Ap + (size_t)q * kc;
                        int mm = mc - q < GEMM_MR ? mc - q : GEMM_MR;
                        for (int k = 0; k < kc; k++) {
                            const float *src = A + (long)(ic + q) * rsa + (long)(pc + k) * csa;
                            int i = 0;
                            for (; i < mm; i++) dst[i] = src[(long)i * rsa];
                            for (; i < GEMM_MR; i++) dst[i] = 0.0f;
                            dst += GEMM_MR;
                        }
                    }
                    for (int p = 0; p < np; p++) {
                        int n0 = p * GEMM_NR, nr = nc - n0 < GEMM_NR ? nc - n0 : GEMM_NR;
                        for (int q = 0; q < mc; q += GEMM_MR) {
                            int mr = mc - q < GEMM_MR ? mc - q : GEMM_MR;
                            const float *panel = Bpre ? Bpre + ((size_t)(jc / GEMM_NR + p) * K + pc) * GEMM_NR
                                                      : Bp + (size_t)p * kc * GEMM_NR;
                            gemm_micro(kc, Ap + (size_t)q * kc, panel, C + (long)(ic + q) * ldc + jc + n0, ldc, mr, nr,
                                       acc);
                        }
                    }
                }   // implicit barrier before Bp is overwritten
            }
        }
        free(Ap);
    }
    free(Bp);
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
// sits in L1. out (M, OC) = inp (M, C) @ weight^T (OC, C).
static void matmul_few_rows(float *out, const float *inp, const float *weight, int M, int C, int OC) {
    #pragma omp parallel for schedule(static)
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

#endif // EMPOC_GEMM_H
