// emu_test.cpp: train_empo.cu and test_empo_cu.cu, run on the CPU by a small CUDA emulator,
// in fp32 (or bf16 with -DEMU_BF16): first each kernel against plain reference code, then the whole of test_empo_cu
// (the
// PyTorch fixtures: logits, loss, every gradient, 10 AdamW steps; recomputation; attention at
// HD=128). See dev/cuda/emulate.py for how the sources get here: unchanged apart from the launch
// syntax and the GEMM, which is a plain column-major loop written from the BLAS definition.
//
// The emulator: the threads of a block are fibers (ucontext) on one OS thread; __syncthreads and
// __syncwarp are cooperative barriers, a warp shuffle is a write to a per-warp buffer between two
// barriers; blocks run one after another, so shared memory is one buffer. A kernel is first run
// thread by thread without fibers, and only if it reaches a barrier is it run again as fibers (the
// kernels here write nothing global before their first barrier, so the rerun is safe). Memory from
// cudaMalloc and dynamic shared memory start out as NaNs: a read of anything never written shows.
// The tensor-core instructions (mma.sync, ldmatrix, cp.async) replace train_empo.cu's primitives
// block: warp collectives written from the PTX ISA's fragment layouts, self-tested below.
// Ends with "empo_cu: N passed, N failed". Build and run: make emu-cuda
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <stdarg.h>
#include <time.h>
#include <ucontext.h>
#include <algorithm>
#include <functional>
#include <set>
#include <vector>
#include "../../empoc/utils.h"
#include "../../empoc/json.h"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wextra"
#include "../../empoc/checkpoint.h"
#include "../../empoc/model.h"
#include "../../empoc/engine.h"
#pragma GCC diagnostic pop

// ---- the shim: what train_empo.cu needs from CUDA, on the host
#ifndef EMU_BF16
#define ENABLE_FP32   // the default: the fp32 build. -DEMU_BF16: the bf16 build, with a software bf16
#endif
struct __nv_bfloat16 { uint16_t bits; };   // round to nearest even, as the hardware: checkpoint.h's
static inline float __bfloat162float(__nv_bfloat16 h) { return bf16_to_f32(h.bits); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return {f32_to_bf16(f)}; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return {u}; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float emu_tof(float x) { return x; }
static inline float emu_tof(__nv_bfloat16 x) { return __bfloat162float(x); }
static inline void emu_store(float *p, float v) { *p = v; }
static inline void emu_store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static   // blocks run one at a time: a static is exactly block-shared memory
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
static dim3 threadIdx, blockIdx, gridDim, blockDim;   // one OS thread: switched with the fibers
using std::max;
using std::min;

typedef int cudaError_t;
enum { cudaSuccess = 0 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
typedef int cudaDataType_t;
enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 };
typedef int cublasStatus_t;
enum { CUBLAS_STATUS_SUCCESS = 0 };
struct cudaDeviceProp { char name[256]; int multiProcessorCount; };
static const char *cudaGetErrorString(cudaError_t) { return "emulated error"; }
static cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static cudaError_t cudaGetDeviceCount(int *n) { *n = 1; return cudaSuccess; }
static cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int) {
    snprintf(p->name, sizeof p->name, "CPU emulator");
    p->multiProcessorCount = 3;
    return cudaSuccess;
}
static cudaError_t cudaMalloc(void **p, size_t n) {
    *p = malloc(n);
    if (*p) memset(*p, 0xff, n);
    return *p ? cudaSuccess : 2;
}
static cudaError_t cudaFree(void *p) { free(p); return cudaSuccess; }
static cudaError_t cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind) {
    memmove(d, s, n);
    return cudaSuccess;
}
static cudaError_t cudaMemset(void *d, int v, size_t n) { memset(d, v, n); return cudaSuccess; }
static cudaError_t cudaMemGetInfo(size_t *fr, size_t *tot) {
    *fr = (size_t)1 << 34;
    *tot = (size_t)1 << 35;
    return cudaSuccess;
}
static cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin };
static cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr,
                                          int) { *v = 227 << 10; return cudaSuccess; }   // H100's
template <typename F> static cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
static cublasStatus_t cublasCreate(int *) { return CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t cublasLtCreate(int *) { return CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t cublasSetWorkspace(int, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }

// Column-major D (m, n) = op(A) (m, k) @ op(B) (k, n) + beta * D + bias (m), from the BLAS
// definition: op(A)[i, p] = transA ? A[p + i*lda] : A[i + p*lda], likewise B. Accumulates in
// double, rounds once into D's type (fp32, or X: what cuBLAS does with an fp32 compute type).
template <typename X>
static void emu_gemm(void *Dv, cudaDataType_t d_type, int ldd, const X *A, int transA, int lda, const X *B, int transB,
                     int ldb, int m,
                     int n, int k, float beta, const X *bias) {
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++)
                s += (double)emu_tof(transA ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda]) *
                     emu_tof(transB ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb]);
            size_t at = i + (size_t)j * ldd;
            if (d_type == CUDA_R_32F) {
                float *d = (float *)Dv + at;
                *d = (float)(s + (beta != 0.0f ? beta * *d : 0.0f) + (bias ? emu_tof(bias[i]) : 0.0f));
            } else {
                X *d = (X *)Dv + at;
                emu_store(d,
                          (float)(s + (beta != 0.0f ? beta * emu_tof(*d) : 0.0f) + (bias ? emu_tof(bias[i]) : 0.0f)));
            }
        }
}

// fibers and barriers
struct EmuBar { int expected, count; unsigned gen; };
// A fiber switch saves the callee-saved registers and the stack pointer, nothing else: glibc's
// swapcontext also saves the signal mask with a system call, which made it most of the emulator's
// time. x86-64 only; elsewhere (or with -DEMU_UCONTEXT) ucontext does it.
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(".text\n.globl emu_switch\n.type emu_switch,@function\nemu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n");
struct EmuCtx { void *sp; };
#define EMU_FAST_SWITCH 1
#else
struct EmuCtx { ucontext_t uc; };
#endif
struct EmuFiber { EmuCtx ctx; int done; dim3 tid; };
static EmuBar g_bbar, g_wbar[32];
static float g_wbuf[32][32];
static EmuCtx g_sched;
static std::vector<EmuFiber> g_fib(1024);
static std::vector<char *> g_stacks(1024, nullptr);
static const size_t EMU_STACK = 256 * 1024;
static int g_cur = -1;   // the running fiber; -1: serial mode
static int t_lane, t_warp;
static std::function<void()> g_job;
struct EmuNeedsFibers {};
static void emu_to(EmuCtx *from, EmuCtx *to) {
#ifdef EMU_FAST_SWITCH
    emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}
static void emu_yield(void) { emu_to(&g_fib[g_cur].ctx, &g_sched); }
static void emu_bar_wait(EmuBar &b) {
    if (g_cur < 0) throw EmuNeedsFibers();
    unsigned gen = b.gen;
    if (++b.count >= b.expected) { b.count = 0; b.gen++; return; }
    while (b.gen == gen) emu_yield();
}
static void emu_bar_drop(EmuBar &b) {   // a finished thread no longer takes part
    b.expected--;
    if (b.count > 0 && b.count >= b.expected) { b.count = 0; b.gen++; }
}
static inline void __syncthreads() { emu_bar_wait(g_bbar); }
static inline void __syncwarp() { emu_bar_wait(g_wbar[t_warp]); }
static inline float __shfl_xor_sync(unsigned, float x, int o) {
    g_wbuf[t_warp][t_lane] = x;
    emu_bar_wait(g_wbar[t_warp]);
    float y = g_wbuf[t_warp][t_lane ^ o];
    emu_bar_wait(g_wbar[t_warp]);
    return y;
}
#define EMU_FATAL(...) do { fprintf(stderr, "error: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)
// The tensor-core instructions of train_empo.cu's primitives block, as warp collectives: each lane
// deposits its operands in a per-warp buffer, a warp barrier, each lane gathers its own results,
// a barrier (so the buffer is free again). Fragment layouts from the PTX ISA ("Warp Level Matrix
// Multiply-Accumulate Instructions"), lane l: g = l / 4 (groupID), t = l % 4 (threadID_in_group).
static uint32_t g_wfrag[32][32][6];   // [warp][lane]: a[0..3], b0, b1 of an mma; an ldmatrix row address
static const void *g_waddr[32][32];
static inline float emu_bf16_lo(uint32_t r) { return bf16_to_f32((uint16_t)(r & 0xffff)); }
static inline float emu_bf16_hi(uint32_t r) { return bf16_to_f32((uint16_t)(r >> 16)); }
// "Matrix Fragments for mma.m16n8k16 with floating point type": A (16x16, .row): a_i (i = 0..7, two
// per 32-bit register) is at row g (i < 2 or 4 <= i < 6) or g + 8, column 2t + (i & 1) (+8 for i >= 4);
// B (16x8, .col): b_i at row 2t + (i & 1) (+8 for i >= 2), column g; C/D: c_i at row g (+8 for
// i >= 2), column 2t + (i & 1). So A[row][k] is in lane (row % 8) * 4 + (k % 8) / 2, register
// (row >= 8) + 2 (k >= 8), half k % 2; B[k][n] in lane n * 4 + (k % 8) / 2, register k >= 8, half k % 2.
// The products of bf16 values are exact in double; the sum is rounded once to fp32 (the hardware's
// order and intermediate rounding are unspecified, so this is one admissible result).
static inline void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    uint32_t *f = g_wfrag[t_warp][t_lane];
    f[0] = a[0]; f[1] = a[1]; f[2] = a[2]; f[3] = a[3]; f[4] = b0; f[5] = b1;
    emu_bar_wait(g_wbar[t_warp]);
    int g = t_lane / 4, t = t_lane % 4;
    float out[4];
    for (int i = 0; i < 4; i++) {
        int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        double s = d[i];
        for (int k = 0; k < 16; k++) {
            uint32_t ra = g_wfrag[t_warp][(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)];
            uint32_t rb = g_wfrag[t_warp][col * 4 + (k % 8) / 2][4 + (k >= 8)];
            s += (double)(k % 2 ? emu_bf16_hi(ra) : emu_bf16_lo(ra)) * (k % 2 ? emu_bf16_hi(rb) : emu_bf16_lo(rb));
        }
        out[i] = (float)s;
    }
    emu_bar_wait(g_wbar[t_warp]);
    for (int i = 0; i < 4; i++) d[i] = out[i];
}
// "Warp-level matrix load instruction: ldmatrix" (.m8n8.x4.b16): lanes 8i..8i+7 give the row
// addresses of matrix i; without .trans lane l receives, for each matrix, row g's elements 2t, 2t+1;
// with .trans the matrix is transposed on the way: rows 2t and 2t+1 of column g.
static inline void emu_ldmatrix_x4(uint32_t r[4], const void *row_addr, int trans) {
    if (((uintptr_t)row_addr & 15) != 0) EMU_FATAL("emu: ldmatrix row address %p not 16-byte aligned", row_addr);
    g_waddr[t_warp][t_lane] = row_addr;
    emu_bar_wait(g_wbar[t_warp]);
    int g = t_lane / 4, t = t_lane % 4;
    uint32_t out[4];
    for (int i = 0; i < 4; i++) {
        const uint16_t *const *rows = (const uint16_t *const *)&g_waddr[t_warp][8 * i];
        uint16_t lo = trans ? rows[2 * t][g] : rows[g][2 * t], hi = trans ? rows[2 * t + 1][g] : rows[g][2 * t + 1];
        out[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    emu_bar_wait(g_wbar[t_warp]);
    for (int i = 0; i < 4; i++) r[i] = out[i];
}
// cp.async: the destination turns to NaN at once (its old contents are undefined from the issue
// on) and the copy lands at the thread's next cp.async.wait_group 0, the latest moment the PTX ISA
// allows. So a read before the wait (and a barrier) sees NaN, and so does a chunk still being
// computed on when the next one is issued into its buffer. A block that ends with copies never
// waited for is an error.
static std::vector<std::pair<void *, const void *>> g_cp_pending[1024];
static inline void cp_async16(void *smem, const void *gmem) {
    if ((((uintptr_t)smem | (uintptr_t)gmem) & 15) != 0) EMU_FATAL("emu: cp.async of 16 bytes not 16-byte aligned");
    memset(smem, 0xff, 16);
    g_cp_pending[t_warp * 32 + t_lane].push_back({smem, gmem});
}
static inline void cp_async_commit(void) {}
static inline void cp_async_wait_all(void) {
    for (auto &c : g_cp_pending[t_warp * 32 + t_lane]) memcpy(c.first, c.second, 16);
    g_cp_pending[t_warp * 32 + t_lane].clear();
}
static inline void ldmatrix_x4(uint32_t r[4], const void *row_addr) { emu_ldmatrix_x4(r, row_addr, 0); }
static inline void ldmatrix_x4_trans(uint32_t r[4], const void *row_addr) { emu_ldmatrix_x4(r, row_addr, 1); }
static inline float atomicAdd(float *p, float v) { float old = *p; *p = old + v; return old; }
static void emu_fiber_entry(void) {
    g_job();
    emu_bar_drop(g_wbar[t_warp]);
    emu_bar_drop(g_bbar);
    g_fib[g_cur].done = 1;
#ifdef EMU_FAST_SWITCH
    emu_yield();   // never resumed
    abort();
#endif
    // ucontext: returning resumes uc_link, the scheduler
}
static void emu_set_thread(dim3 t, int lin) { threadIdx = t; t_lane = lin % 32; t_warp = lin / 32; }

alignas(16) static unsigned char emu_smem_buf[256 * 1024];
static void *emu_dyn_smem = emu_smem_buf;
static std::set<const void *> g_needs_fibers;
// EMU_SHUFFLE=seed: every launch runs its blocks in a random order, to show results that depend on
// the order blocks run in (a race between blocks) where the hardware would run them concurrently.
static uint64_t g_shuffle = 0;
static uint64_t emu_shuffle_next(void) {
    g_shuffle ^= g_shuffle >> 12; g_shuffle ^= g_shuffle << 25; g_shuffle ^= g_shuffle >> 27;
    return g_shuffle * 0x2545F4914F6CDD1Dull;
}
static long g_blocks_run = 0, g_blocks_fibers = 0;
template <typename T> struct ident { typedef T type; };
template <typename... K>
static void emu_launch(void (*kernel)(K...), dim3 grid, dim3 block, size_t smem, typename ident<K>::type... args) {
    if (smem > sizeof emu_smem_buf) EMU_FATAL("emu: %zu bytes of dynamic shared memory", smem);
    int nt = (int)(block.x * block.y * block.z);
    if (nt % 32 || nt > 1024) EMU_FATAL("emu: a block of %d threads", nt);
    gridDim = grid; blockDim = block;
    g_job = [&] { kernel(args...); };
    auto tid = [&](int t) { return dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y)); };
    size_t nblocks = (size_t)grid.x * grid.y * grid.z;
    std::vector<size_t> order;
    if (g_shuffle) {   // the blocks of this launch in a random order (Fisher-Yates on the emulator's own RNG)
        order.resize(nblocks);
        for (size_t i = 0; i < nblocks; i++) order[i] = i;
        for (size_t i = nblocks; i > 1; i--) std::swap(order[i - 1], order[emu_shuffle_next() % i]);
    }
    for (size_t ib = 0; ib < nblocks; ib++) {
        size_t b = g_shuffle ? order[ib] : ib;
        unsigned bx = (unsigned)(b % grid.x), by = (unsigned)(b / grid.x % grid.y),
        bz = (unsigned)(b / ((size_t)grid.x * grid.y));
        blockIdx = dim3(bx, by, bz);
        memset(emu_smem_buf, 0xff, smem);   // NaN
        g_blocks_run++;
        if (!g_needs_fibers.count((const void *)kernel)) {
            try {
                for (int t = 0; t < nt; t++) { emu_set_thread(tid(t), t); g_job(); }
                continue;
            } catch (EmuNeedsFibers &) {
                g_needs_fibers.insert((const void *)kernel);
                memset(emu_smem_buf, 0xff, smem);
                for (int t = 0; t < nt; t++) g_cp_pending[t].clear();   // the serial attempt's, if any
            }
        }
        g_blocks_fibers++;
        g_bbar = {nt, 0, 0};
        for (int w = 0; w < nt / 32; w++) g_wbar[w] = {32, 0, 0};
        for (int t = 0; t < nt; t++) {
            if (!g_stacks[t]) g_stacks[t] = (char *)malloc(EMU_STACK);
            EmuFiber &f = g_fib[t];
#ifdef EMU_FAST_SWITCH
            // a stack that emu_switch "returns" into emu_fiber_entry from: six zeroed registers,
            // then the entry address; 16-byte aligned so that the entry sees a called frame's rsp
            uintptr_t top = ((uintptr_t)g_stacks[t] + EMU_STACK) & ~(uintptr_t)15;
            void **sp = (void **)(top - 64);
            for (int r = 0; r < 6; r++) sp[r] = 0;
            sp[6] = (void *)emu_fiber_entry;
            sp[7] = 0;
            f.ctx.sp = sp;
#else
            getcontext(&f.ctx.uc);
            f.ctx.uc.uc_stack.ss_sp = g_stacks[t];
            f.ctx.uc.uc_stack.ss_size = EMU_STACK;
            f.ctx.uc.uc_link = &g_sched.uc;
            makecontext(&f.ctx.uc, emu_fiber_entry, 0);
#endif
            f.done = 0;
            f.tid = tid(t);
        }
        for (int live = nt; live > 0;) {
            int progressed = 0;
            for (int t = 0; t < nt; t++) {
                if (g_fib[t].done) continue;
                g_cur = t;
                emu_set_thread(g_fib[t].tid, t);
                emu_to(&g_sched, &g_fib[t].ctx);
                progressed = 1;
                if (g_fib[t].done) live--;
            }
            if (!progressed) EMU_FATAL("emu: deadlock");
        }
        g_cur = -1;
        for (int t = 0; t < nt; t++)
            if (!g_cp_pending[t].empty()) EMU_FATAL("emu: a thread ended with cp.async copies it never waited for");
    }
}

#include "../cache/emu_model.inc"
#include "../cache/emu_test_cu.inc"

// ---- the shuffled-block mode (--shuffle SEED): the same computations with the blocks of every
// launch in order and in a random order must agree, bitwise wherever no atomics are involved (the
// emulated GEMM is deterministic, so any difference is a kernel whose result depends on the order
// of its blocks). The embedding and RMSNorm weight gradients add with fp32 atomics, whose order
// the shuffle changes: those only within 1e-5 of their scale. So does dQ of the tensor-core
// attention backward (bf16 build, HD 64 / 128: blocks of key tiles add into an fp32 dQ by atomics);
// its dK and dV (query heads summed in order) stay bitwise.
struct EmuSnap {
    std::vector<float> logp, grads, att_out, att_dq, att_dkv, gen_lp, judge;
    std::vector<int> gen_tok;
    size_t sizes[NUM_PARAM_TENSORS];
    double seconds;
};
static void emu_snapshot(EmuSnap &o) {
    double t0 = now_seconds();
    Model m;
    char err[512];
    if (model_load(&m, "dev/fixtures/qwen2_untied.bin", err, sizeof err) != 0) EMU_FATAL("%s", err);
    State st;
    state_load(&st, "dev/fixtures/qwen2_untied_state.bin", (size_t)m.config.V, m.num_parameters);
    model_forward(&m, st.inputs, st.targets, st.mask, st.B, st.T);
    o.logp.assign(m.logp, m.logp + (size_t)st.B * st.T);
    model_zero_grad(&m);
    model_backward(&m);
    o.grads.resize(m.num_parameters);
    cudaMemcpy(o.grads.data(), m.grads_memory, m.num_parameters * sizeof(float), cudaMemcpyDeviceToHost);
    memcpy(o.sizes, m.param_sizes, sizeof o.sizes);
    state_free(&st);
    model_free(&m);
    // attention at Qwen's head dim, forward and backward (floatX buffers)
    int B = 2, T = 230, NH = 4, NKV = 2, HD = 128, QKV = (NH + 2 * NKV) * HD;   // 4 key tiles: dQ adds 4 times
    size_t nq = (size_t)B * T * QKV, no = (size_t)B * T * NH * HD;
    std::vector<float> q(nq), g(no);
    uint64_t rng = 3;
    for (auto &x : q) x = random_f32(&rng) * 4.0f - 2.0f;
    for (auto &x : g) x = random_f32(&rng) - 0.5f;
    floatX *dq = upload_x(q.data(), nq), *dg = upload_x(g.data(), no);
    floatX *dout = (floatX *)device_alloc(no * sizeof(floatX),
                                          "emu"), *ddq = (floatX *)device_alloc(nq * sizeof(floatX), "emu");
    float *lse = (float *)device_alloc((size_t)B * NH * T * 4, "emu");
    float *D = (float *)device_alloc(att_bwd_scratch_floats((size_t)B * T, NH, HD) * 4, "emu");
    attention_forward(dout, lse, dq, B, T, NH, NKV, HD);
    attention_backward(ddq, D, dg, dout, dq, lse, B, T, NH, NKV, HD);
    std::vector<float> dqkv(nq);
    o.att_out.resize(no);
    download_x(o.att_out.data(), dout, no);
    download_x(dqkv.data(), ddq, nq);
    for (size_t n = 0; n < (size_t)B * T; n++)   // each row: the NH query heads' dQ, then dK, dV
        for (int c = 0; c < QKV; c++) (c < NH * HD ? o.att_dq : o.att_dkv).push_back(dqkv[n * QKV + c]);
    // generation (prefill, paged decode, the truncating sampler) and the judge's scoring
    if (model_load(&m, "dev/fixtures/qwen2_tied.bin", err, sizeof err) != 0) EMU_FATAL("%s", err);
    int p0[21], p1[2] = {40, 41};
    for (int t = 0; t < 21; t++) p0[t] = (t * 37 + 5) % m.config.V;
    const int *prompts[2] = {p0, p1};
    int plen[2] = {21, 2};
    SamplerConfig sc = {1.0f, 0.95f, 0, 12, 0, 7, 0};
    Generation gen;
    generate(&m, prompts, plen, 2, 5, &sc, &gen, 0);
    for (int j = 0; j < gen.n; j++) {
        o.gen_tok.push_back(gen.len[j]);
        for (int t = 0; t < gen.len[j]; t++) {
            o.gen_tok.push_back(gen.tokens[j][t]);
            o.gen_lp.push_back(gen.logprobs[j][t]);
        }
    }
    generation_free(&gen);
    int cand[2] = {3, 17};
    o.judge.resize(4);
    model_next_logprobs(&m, prompts, plen, 2, cand, 2, 1, 64, o.judge.data(), NULL, NULL);
    model_free(&m);
    o.seconds = now_seconds() - t0;
}
static int emu_same_bits(const std::vector<float> &a, const std::vector<float> &b) {
    return a.size() == b.size() && (a.empty() || !memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}
static void emu_shuffle_checks(uint64_t seed) {
    printf("-- shuffled blocks (seed %llu): in-order and shuffled runs agree\n", (unsigned long long)seed);
    EmuSnap a, b;
    g_shuffle = 0;
    emu_snapshot(a);
    g_shuffle = seed;
    emu_snapshot(b);
    size_t off[NUM_PARAM_TENSORS];
    param_offsets(off, a.sizes, 0);
    int bitwise = 1;
    float atomic_err = 0.0f;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (!a.sizes[i]) continue;
        std::vector<float> x(a.grads.begin() + off[i], a.grads.begin() + off[i] + a.sizes[i]);
        std::vector<float> y(b.grads.begin() + off[i], b.grads.begin() + off[i] + a.sizes[i]);
        if (i == P_WTE || i == P_LN1W || i == P_LN2W || i == P_LNFW) atomic_err = fmaxf(atomic_err,
                rel_err(y.data(), x.data(), x.size(), NULL));
        else bitwise &= emu_same_bits(x, y);
    }
    check(emu_same_bits(a.logp, b.logp) && bitwise && atomic_err < 1e-5f,
          "shuffled: model forward (log-probs) and backward "
          "(every gradient without atomics) bitwise; the atomics' gradients within %.1e", atomic_err);
    // dQ through fp32 atomics (tensor-core backward): the fp32 sums differ in their last bits, which
    // can move a bf16 rounding by one unit: 2^-8 of an entry, so at most 3.9e-3 of the scale; 2 units allowed.
    // The FMA kernels (fp32 build, other head dims) have no atomics: bitwise there.
    float dq_err = rel_err(b.att_dq.data(), a.att_dq.data(), a.att_dq.size(), NULL);
#ifdef ENABLE_FP32
    const float dq_tol = 0.0f;
#else
    const float dq_tol = att_use_tc(128) ? 8e-3f : 0.0f;
#endif
    check(emu_same_bits(a.att_out, b.att_out) && emu_same_bits(a.att_dkv, b.att_dkv) && dq_err <= dq_tol,
          "shuffled: flash attention forward and backward (dK, dV) bitwise, dQ within %.1e (bound %.0e)", dq_err,
          dq_tol);
    check(a.gen_tok == b.gen_tok && emu_same_bits(a.gen_lp, b.gen_lp) && emu_same_bits(a.judge, b.judge),
          "shuffled: generation "
          "(prefill, paged decode, sampler) and the judge's scores bitwise (%zu tokens)", a.gen_lp.size());
    printf("(in order %.1f s, shuffled %.1f s)\n", a.seconds, b.seconds);
}

// ---- the emulated tensor-core instructions against a plain matrix product (both builds). The
// fragments are built here from the PTX ISA's element tables ("a_i: row g for i < 2 or 4 <= i < 6,
// else g + 8; column 2t + (i & 1), +8 for i >= 4"; "b_i: row 2t + (i & 1), +8 for i >= 2; column g";
// "c_i: row g, +8 for i >= 2; column 2t + (i & 1)"), the other direction from the emulator's
// gather; ldmatrix (through train_empo.cu's frag_a_addr / frag_b_addr) must give the same registers.
static const int ST_P = 24;   // a row pitch (elements) that is not the tile width: 48 bytes, 16-byte aligned
static void emu_tc_selftest_kernel(const uint16_t *A, const uint16_t *Bkn, const uint16_t *Bnk, float *D, int *bad) {
    int l = threadIdx.x % 32, g = l / 4, t = l % 4;
    auto pk = [](uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); };
    uint32_t a[4], b[2][2];   // b[n-tile][register], n-tile 1 = columns 8..15 of B (16 x 16)
    for (int r = 0; r < 4; r++) {
        int i = 2 * r, row = g + 8 * (r % 2), col = 2 * t + 8 * (i >= 4);
        a[r] = pk(A[row * ST_P + col], A[row * ST_P + col + 1]);
    }
    for (int nt = 0; nt < 2; nt++)
        for (int r = 0; r < 2; r++) {
            int k = 2 * t + 8 * r, n = 8 * nt + g;
            b[nt][r] = pk(Bkn[k * ST_P + n], Bkn[(k + 1) * ST_P + n]);
        }
    uint32_t la[4], lb[4], lbt[4];
    ldmatrix_x4(la, frag_a_addr(A, ST_P));
    ldmatrix_x4(lb, frag_b_addr(Bnk, ST_P));          // B stored n-major (B^T row-major)
    ldmatrix_x4_trans(lbt, frag_a_addr(Bkn, ST_P));   // B stored k-major
    int ok = 1;
    for (int r = 0; r < 4; r++) ok &= la[r] == a[r] && lb[r] == b[r / 2][r % 2] && lbt[r] == b[r / 2][r % 2];
    for (int nt = 0; nt < 2; nt++) {
        float d[4];
        for (int i = 0; i < 4; i++) d[i] = 0.25f * (float)(i + 1);   // C
        mma_bf16_16816(d, a, b[nt][0], b[nt][1]);
        for (int i = 0; i < 4; i++) D[(g + 8 * (i >= 2)) * 16 + 8 * nt + 2 * t + (i & 1)] = d[i];
    }
    bad[l] = !ok;
}
static void emu_tc_selftest(void) {
    alignas(16) static uint16_t A[16 * ST_P], Bkn[16 * ST_P], Bnk[16 * ST_P];
    float D[16 * 16];
    int bad[32];
    uint64_t r = 99;
    auto rnd = [&r]() {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        return (float)(r >> 40) / 8388608.0f - 1.0f;
    };
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++) { A[i * ST_P + k] = f32_to_bf16(rnd()); Bkn[i * ST_P + k] = f32_to_bf16(rnd()); }
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 16; n++) Bnk[n * ST_P + k] = Bkn[k * ST_P + n];
    emu_launch(emu_tc_selftest_kernel, 1, 32, 0, (const uint16_t *)A, (const uint16_t *)Bkn, (const uint16_t *)Bnk, D,
               bad);
    double err = 0.0;
    int nbad = 0;
    for (int l = 0; l < 32; l++) nbad += bad[l];
    for (int i = 0; i < 16; i++)
        for (int n = 0; n < 16; n++) {
            double s = 0.25 * (1 + (n % 2) + 2 * (i % 16 >= 8));   // the C each lane started from
            for (int k = 0; k < 16; k++) s += (double)bf16_to_f32(A[i * ST_P + k]) * bf16_to_f32(Bkn[k * ST_P + n]);
            err = std::max(err, fabs(D[i * 16 + n] - s) / std::max(1.0, fabs(s)));
        }
    check(err < 1e-6 && nbad == 0, "emulated mma.m16n8k16 bf16 (C + A B, 2 n-tiles) vs a plain product: %.1e; "
          "ldmatrix x4 / x4.trans give the PTX fragments: %d lanes wrong", err, nbad);
}

#ifdef ENABLE_FP32   // the kernel-by-kernel tests use float buffers: fp32 build only
// ---- tests

static double rel_err_dd(const float *a, const double *b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= e)) e = d == d ? d : INFINITY;   // a NaN stays an infinite error
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return s > 0 ? e / s : e;
}
static uint64_t g_rng = 12345;
static float frand(void) {   // uniform [-1, 1)
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return (float)((g_rng * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f;
}
static std::vector<float> rand_vec(size_t n, float scale) {
    std::vector<float> v(n);
    for (auto &x : v) x = scale * frand();
    return v;
}

static void emu_attention(int B, int T, int NH, int NKV, int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    size_t nq = (size_t)B * T * QKV, no = (size_t)B * T * NH * HD, nl = (size_t)B * NH * T;
    std::vector<float> qkv = rand_vec(nq, 2.0f), dout = rand_vec(no, 1.0f), out(no), lse(nl), dqkv(nq, NAN);
    std::vector<float> D(att_bwd_scratch_floats((size_t)B * T, NH, HD));
    attention_setup(HD);
    attention_forward(out.data(), lse.data(), qkv.data(), B, T, NH, NKV, HD);
    attention_backward(dqkv.data(), D.data(), dout.data(), out.data(), qkv.data(), lse.data(), B, T, NH, NKV, HD);
    std::vector<double> rout(no), rlse(nl), rd(nq, 0.0), p(T), dp(T);
    double scale = 1.0 / sqrt((double)HD);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int hk = h / rep;
                const float *q = &qkv[((size_t)b * T + t) * QKV + (size_t)h * HD],
                            *g = &dout[((size_t)b * T + t) * NH * HD + (size_t)h * HD];
                double mx = -1e300, sum = 0.0, Dt = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *k = &qkv[((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD];
                    double s = 0.0;
                    for (int d = 0; d < HD; d++) s += (double)q[d] * k[d];
                    p[j] = s * scale;
                    mx = std::max(mx, p[j]);
                }
                for (int j = 0; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                rlse[((size_t)b * NH + h) * T + t] = mx + log(sum);
                double *o = &rout[((size_t)b * T + t) * NH * HD + (size_t)h * HD];
                for (int d = 0; d < HD; d++) o[d] = 0.0;
                for (int j = 0; j <= t; j++) {
                    p[j] /= sum;
                    const float *v = &qkv[((size_t)b * T + j) * QKV + (size_t)(NH + NKV + hk) * HD];
                    double s = 0.0;
                    for (int d = 0; d < HD; d++) { o[d] += p[j] * v[d]; s += (double)g[d] * v[d]; }
                    dp[j] = s;
                    Dt += p[j] * s;
                }
                for (int j = 0; j <= t; j++) {
                    double ds = p[j] * (dp[j] - Dt) * scale;
                    const float *k = &qkv[((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD];
                    double *dq = &rd[((size_t)b * T + t) * QKV + (size_t)h * HD];
                    double *dk = &rd[((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD], *dv = dk + (size_t)NKV * HD;
                    for (int d = 0; d < HD; d++) { dq[d] += ds * k[d]; dk[d] += ds * q[d]; dv[d] += p[j] * g[d]; }
                }
            }
    double eo = rel_err_dd(out.data(), rout.data(), no), el = rel_err_dd(lse.data(), rlse.data(),
                                                                         nl), eg = rel_err_dd(dqkv.data(), rd.data(),
                                                                                 nq);
    check(eo < 1e-5 && el < 1e-5 && eg < 1e-5,
          "attention B=%d T=%d NH=%d NKV=%d HD=%d (DPL %d): out %.1e, lse %.1e, dqkv %.1e", B, T, NH, NKV, HD,
          att_dpl(HD), eo, el, eg);
}

static void test_rmsnorm(int N, int C) {
    float eps = 1e-6f;
    std::vector<float> x = rand_vec((size_t)N * C, 1.0f), add = rand_vec((size_t)N * C, 1.0f), w = rand_vec(C,
            1.0f), g = rand_vec((size_t)N * C, 1.0f);
    std::vector<float> out((size_t)N * C), rsum((size_t)N * C), rstd(N), dx((size_t)N * C, 0.5f), dw(C, 0.25f);
    residual_rmsnorm_forward(rsum.data(), out.data(), rstd.data(), x.data(), add.data(), w.data(), N, C, eps);
    rmsnorm_backward(dx.data(), dw.data(), g.data(), rsum.data(), w.data(), rstd.data(), N, C);
    std::vector<double> ro((size_t)N * C), rs((size_t)N * C), rdx((size_t)N * C), rdw(C, 0.25);
    for (int n = 0; n < N; n++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) {
            rs[(size_t)n * C + c] = (double)x[(size_t)n * C + c] + add[(size_t)n * C + c];
            ss += rs[(size_t)n * C + c] * rs[(size_t)n * C + c];
        }
        double r = 1.0 / sqrt(ss / C + eps), dot = 0.0;
        for (int c = 0; c < C; c++) {
            ro[(size_t)n * C + c] = rs[(size_t)n * C + c] * r * w[c];
            dot += w[c] * g[(size_t)n * C + c] * rs[(size_t)n * C + c] * r;
        }
        dot /= C;
        for (int c = 0; c < C; c++) {
            double xh = rs[(size_t)n * C + c] * r;
            rdx[(size_t)n * C + c] = 0.5 + r * (w[c] * g[(size_t)n * C + c] - xh * dot);
            rdw[c] += g[(size_t)n * C + c] * xh;
        }
    }
    double e1 = rel_err_dd(out.data(), ro.data(), out.size()), e2 = rel_err_dd(rsum.data(), rs.data(), rs.size());
    double e3 = rel_err_dd(dx.data(), rdx.data(), dx.size()), e4 = rel_err_dd(dw.data(), rdw.data(), C);
    check(e1 < 1e-5 && e2 < 1e-6 && e3 < 1e-5 && e4 < 1e-5,
          "residual + rmsnorm N=%d C=%d: out %.1e, resid %.1e, dx %.1e, dw %.1e", N, C, e1, e2, e3, e4);
}

static void test_logsoftmax(int N, int V) {
    std::vector<float> x = rand_vec((size_t)N * V, 8.0f), lse(N), logp(N), dlogp = rand_vec(N, 1.0f);
    std::vector<int> tg(N);
    for (int n = 0; n < N; n++) tg[n] = n % 3 == 2 ? -1 : (int)((n * 7919u) % V);
    std::vector<float> x0 = x;
    emu_launch(logsoftmax_kernel, N, 512, 0, x.data(), lse.data(), logp.data(), tg.data(), dlogp.data(), V, 0);
    emu_launch(logsoftmax_kernel, N, 512, 0, x.data(), lse.data(), logp.data(), tg.data(), dlogp.data(), V, 1);
    std::vector<double> rl(N), rp(N), rg((size_t)N * V);
    for (int n = 0; n < N; n++) {
        double mx = -1e300, s = 0.0;
        for (int v = 0; v < V; v++) mx = std::max(mx, (double)x0[(size_t)n * V + v]);
        for (int v = 0; v < V; v++) s += exp(x0[(size_t)n * V + v] - mx);
        rl[n] = mx + log(s);
        rp[n] = tg[n] >= 0 ? x0[(size_t)n * V + tg[n]] - rl[n] : 0.0;
        double gg = tg[n] >= 0 ? dlogp[n] : 0.0;
        for (int v = 0; v < V; v++) rg[(size_t)n * V + v] = -gg * exp(x0[(size_t)n * V + v] - rl[n]) + (v == tg[n]
            ? gg : 0.0);
    }
    double e1 = rel_err_dd(lse.data(), rl.data(), N), e2 = rel_err_dd(logp.data(), rp.data(),
                                                                      N), e3 = rel_err_dd(x.data(), rg.data(),
                                                                              rg.size());
    check(e1 < 1e-6 && e2 < 1e-5 && e3 < 1e-5, "log-softmax N=%d V=%d: lse %.1e, logp %.1e, dlogits %.1e", N, V, e1,
          e2, e3);
}

static void test_rope_swiglu_bias(void) {
    int B = 2, T = 9, NH = 3, NKV = 1, HD = 8, N = B * T, QKV = (NH + 2 * NKV) * HD, h = HD / 2;
    std::vector<float> cs((size_t)T * h), sn((size_t)T * h);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < h; i++) {
            float a = t * powf(10000.0f, -2.0f * i / HD);
            cs[(size_t)t * h + i] = cosf(a);
            sn[(size_t)t * h + i] = sinf(a);
        }
    std::vector<float> x = rand_vec((size_t)N * QKV, 1.0f), y = x;
    rope_forward(y.data(), cs.data(), sn.data(), NULL, N, T, NH, NKV, HD);
    std::vector<double> r((size_t)N * QKV);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < QKV; j++) {
            int head = j / HD, i = j % HD, t = n % T;
            const float *v = &x[(size_t)n * QKV + (size_t)head * HD];
            double c = cs[(size_t)t * h + i % h], s = sn[(size_t)t * h + i % h];
            r[(size_t)n * QKV + j] = head >= NH + NKV ? v[i] : i < h ? v[i] * c - v[i + h] * s
                : v[i] * c + v[i - h] * s;
        }
    double e1 = rel_err_dd(y.data(), r.data(), r.size());
    rope_backward(y.data(), cs.data(), sn.data(), N, T, NH, NKV, HD);
    std::vector<double> xd(x.begin(), x.end());
    double e2 = rel_err_dd(y.data(), xd.data(), xd.size());
    check(e1 < 1e-6 && e2 < 1e-6, "rope: forward %.1e, backward undoes it %.1e (v untouched)", e1, e2);

    int I = 37;
    std::vector<float> fch = rand_vec((size_t)N * 2 * I, 3.0f), o((size_t)N * I), d = rand_vec((size_t)N * I,
            1.0f), dfch((size_t)N * 2 * I);
    swiglu_forward(o.data(), fch.data(), N, I);
    swiglu_backward(dfch.data(), d.data(), fch.data(), N, I);
    std::vector<double> ro((size_t)N * I), rd((size_t)N * 2 * I);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {   // against central differences of silu(g) * u
            double g = fch[(size_t)n * 2 * I + i], u = fch[(size_t)n * 2 * I + I + i], e = 1e-4;
            auto f = [](double gg, double uu) { return gg / (1.0 + exp(-gg)) * uu; };
            ro[(size_t)n * I + i] = f(g, u);
            rd[(size_t)n * 2 * I + i] = d[(size_t)n * I + i] * (f(g + e, u) - f(g - e, u)) / (2 * e);
            rd[(size_t)n * 2 * I + I + i] = d[(size_t)n * I + i] * (f(g, u + e) - f(g, u - e)) / (2 * e);
        }
    double e3 = rel_err_dd(o.data(), ro.data(), ro.size()), e4 = rel_err_dd(dfch.data(), rd.data(), rd.size());
    check(e3 < 1e-5 && e4 < 1e-4, "swiglu: forward %.1e, backward vs central differences %.1e", e3, e4);

    int OC = 45;
    std::vector<float> dout = rand_vec((size_t)N * OC, 1.0f), db(OC, 1.0f);
    emu_launch(bias_backward_kernel, ceil_div(OC, 32), dim3(32, 32), 0, db.data(), dout.data(), N, OC);
    std::vector<double> rb(OC, 1.0);
    for (int n = 0; n < N; n++) for (int oc = 0; oc < OC; oc++) rb[oc] += dout[(size_t)n * OC + oc];
    check(rel_err_dd(db.data(), rb.data(), OC) < 1e-6, "bias backward: column sums added into dbias (OC=%d)", OC);

    int V = 11, C = 13;
    std::vector<int> tok(N);
    for (int n = 0; n < N; n++) tok[n] = (n * 5) % V;
    std::vector<float> wte = rand_vec((size_t)V * C, 1.0f), e((size_t)N * C), de = rand_vec((size_t)N * C,
            1.0f), dwte((size_t)V * C, 0.0f);
    embedding_forward(e.data(), tok.data(), wte.data(), N, C);
    embedding_backward(dwte.data(), de.data(), tok.data(), N, C);
    std::vector<double> re((size_t)N * C), rdw((size_t)V * C, 0.0);
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) {
        re[(size_t)n * C + c] = wte[(size_t)tok[n] * C + c];
        rdw[(size_t)tok[n] * C + c] += de[(size_t)n * C + c];
    }
    check(rel_err_dd(e.data(), re.data(), re.size()) == 0 && rel_err_dd(dwte.data(), rdw.data(), rdw.size()) < 1e-6,
          "embedding forward and backward (repeated tokens)");
}

static void test_adamw(void) {
    size_t n = 5000;
    std::vector<float> p = rand_vec(n, 1.0f), g = rand_vec(n, 3.0f), m(n, 0.0f), v(n, 0.0f), part(NORM_BLOCKS + 1);
    std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
    emu_launch(sumsq_kernel, NORM_BLOCKS, 256, 0, part.data(), g.data(), n);
    emu_launch(norm_finish_kernel, 1, 1024, 0, part.data() + NORM_BLOCKS, part.data(), NORM_BLOCKS);
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    double norm = sqrt(ss);
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, clip = 1.0f;
    for (int step = 1; step <= 3; step++) {
        double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
        emu_launch(adamw_kernel, 4, 256, 0, p.data(), (float *)NULL, g.data(), m.data(), v.data(), n, lr, b1, b2, eps,
                   wd, (float)(lr / bc1),
                   (float)sqrt(bc2), part.data() + NORM_BLOCKS, clip, (uint64_t)step);
        double sc = std::min(1.0, clip / (norm + 1e-6));
        for (size_t i = 0; i < n; i++) {
            double gr = g[i] * sc;
            rm[i] = b1 * rm[i] + (1 - b1) * gr;
            rv[i] = b2 * rv[i] + (1 - b2) * gr * gr;
            rp[i] = rp[i] * (1 - lr * wd) - lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + eps);
        }
    }
    double en = fabs(part[NORM_BLOCKS] - norm) / norm, ep = rel_err_dd(p.data(), rp.data(), n);
    check(en < 1e-6 && ep < 1e-5, "grad norm %.1e and 3 clipped AdamW steps %.1e against torch's formula in double",
          en, ep);
}

#endif

int main(int argc, char **argv) {
    double t0 = now_seconds();
    if (argc > 1 && !strcmp(argv[1], "--run")) {   // --run FLAGS...: train_empo_cu's main (GPU flags, --plan)
        argv[1] = argv[0];
        return gpu_main(argc - 1, argv + 1);
    }
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--shuffle")) {   // the shuffled-block checks only
            gpu_init();
            emu_shuffle_checks(strtoull(argv[i + 1], NULL, 10));
            return test_summary("empo_cu_shuffled");
        }
    printf("-- the emulated tensor-core instructions\n");
    emu_tc_selftest();
#ifdef ENABLE_FP32
    printf("-- the kernels, one by one\n");
    emu_attention(2, 77, 4, 2, 128);   // Qwen2.5's head dim, a partial last tile
    emu_attention(1, 40, 3, 3, 10);    // the untied fixture's head dim (not a multiple of 4), no GQA
    emu_attention(1, 65, 6, 1, 64);    // DPL 2, GQA 6:1, one row in the last tile
    emu_attention(1, 33, 2, 1, 200);   // DPL 8
    emu_attention(1, 1, 2, 2, 16);     // a single position
    test_rmsnorm(19, 70);
    test_rmsnorm(3, 1536);
    test_logsoftmax(7, 1000);
    test_logsoftmax(5, 101);            // fewer columns than threads
    test_rope_swiglu_bias();
    test_adamw();
#endif
#ifdef ENABLE_FP32
    printf("-- test_empo_cu.cu, emulated (fp32 build)\n");
#else
    printf("-- test_empo_cu.cu, emulated (bf16 build, software bf16)\n");
#endif
    int rc = test_empo_cu_main(1, argv);
    printf("(%ld blocks emulated, %ld of them as fibers, %.0f s)\n", g_blocks_run, g_blocks_fibers, now_seconds() - t0);
    return rc;
}
