// dev/cuda/attention.cu: causal GQA attention, forward and backward, in the versions that led to
// train_empo.cu's kernels. Each is checked against a CPU reference (double precision) at a small
// shape, then timed at Qwen2.5-Math-1.5B's (B=8, T=1024, 12 query heads, 2 kv heads, HD=128).
//
//   v1  the obvious kernel: one thread per (b, head, query), scores recomputed from global memory
//       (two passes: max/sum, then the output). Backward: one thread per query row, dK/dV by fp32
//       atomics. Simple, no T x T buffer, but every thread streams all its keys from L2 alone.
//   v2  train_empo.cu's FMA kernels (its fallback: fp32 build, head dims other than 64 and 128,
//       launched directly here): a block of 8 warps owns 32 queries (or keys); the other side is
//       streamed through shared memory 32 rows at a time as fp32, lane j scores row j against its
//       warp's 4 rows, online softmax in fp32 registers; backward as two kernels (dQ per query
//       tile, dK/dV per key tile over all query heads of the group), no atomics.
//   v3  train_empo.cu's attention_forward / attention_backward as the model calls them: in bf16 at
//       HD 64 / 128 the tensor-core kernels (FlashAttention-2 on mma.sync m16n8k16, ldmatrix
//       operands, tiles double-buffered by cp.async; backward over key tiles x query heads, dQ by
//       fp32 atomics). In the fp32 build
//       v3 is v2 again.
// Why v3 should win (an estimate from the arithmetic; nothing here has run on a GPU): at B=8,
// T=1024, NH=12, HD=128 one layer's causal attention is 4 B NH HD T^2 / 2 = 25.8 GFLOP forward and
// 2.5 x that (64 GFLOP) backward. v2 runs them as fp32 FMAs fed from shared memory: an H100's FMA
// peak is 67 TFLOP/s, and with one shared-memory load per 4 FMAs it is bound by shared memory at
// maybe a third of that, ~1-2 ms per layer forward. v3 issues bf16 mma.sync (H100: roughly 60% of
// the 989 TFLOP/s wgmma peak is reachable with mma.sync); the exp of the softmax (MUFU, 16 per
// clock per SM: T^2/2 x NH x B exps = 50M per layer, ~20 us) and the ldmatrix traffic are far
// smaller, so the expected bound is the tensor-core issue rate: ~0.1-0.15 ms forward, ~0.3-0.4 ms
// backward per layer (FA2-class efficiency, 150-250 TFLOP/s), i.e. about 10x v2. To be measured.
//
// Build: make dev-cuda. Run: ./dev/cuda/attention [B T]    (needs a GPU; compiled, not yet run)
#include "common.h"

// ---- v1
__global__ void attention_forward_v1(floatX *out, float *lse, const floatX *qkv, int B, int T, int NH, int NKV, int HD,
                                     float scale) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;   // (b, h, t)
    if (idx >= B * NH * T) return;
    int t = idx % T, h = (idx / T) % NH, b = idx / (T * NH), hk = h / (NH / NKV), QKV = (NH + 2 * NKV) * HD;
    const floatX *q = qkv + ((size_t)b * T + t) * QKV + (size_t)h * HD;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= t; j++) {
        const floatX *k = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD;
        float s = 0.0f;
        for (int d = 0; d < HD; d++) s += tof(q[d]) * tof(k[d]);
        s *= scale;
        float mn = fmaxf(m, s);
        l = l * expf(m - mn) + expf(s - mn);
        m = mn;
    }
    float L = m + logf(l);
    floatX *o = out + ((size_t)b * T + t) * NH * HD + (size_t)h * HD;
    for (int d0 = 0; d0 < HD; d0 += 32) {   // 32 output dims at a time in registers
        float acc[32];
        for (int e = 0; e < 32; e++) acc[e] = 0.0f;
        for (int j = 0; j <= t; j++) {
            const floatX *k = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD, *v = k + (size_t)NKV * HD;
            float s = 0.0f;
            for (int d = 0; d < HD; d++) s += tof(q[d]) * tof(k[d]);
            float p = expf(s * scale - L);
            for (int e = 0; e < 32 && d0 + e < HD; e++) acc[e] += p * tof(v[d0 + e]);
        }
        for (int e = 0; e < 32 && d0 + e < HD; e++) o[d0 + e] = fx(acc[e]);
    }
    lse[((size_t)b * NH + h) * T + t] = L;
}
// dq directly; dk, dv (B, T, NKV, HD) fp32 by atomics, converted into dqkv afterwards
__global__ void attention_backward_v1(floatX *dqkv, float *dk, float *dv, const floatX *dout, const floatX *qkv,
                                      const float *lse,
                                      const float *D, int B, int T, int NH, int NKV, int HD, float scale) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * T) return;
    int t = idx % T, h = (idx / T) % NH, b = idx / (T * NH), hk = h / (NH / NKV), QKV = (NH + 2 * NKV) * HD;
    const floatX *q = qkv + ((size_t)b * T + t) * QKV + (size_t)h * HD,
    *g = dout + ((size_t)b * T + t) * NH * HD + (size_t)h * HD;
    float L = lse[((size_t)b * NH + h) * T + t], Dt = D[((size_t)b * NH + h) * T + t];
    for (int d0 = 0; d0 < HD; d0 += 32) {
        float dq[32];
        for (int e = 0; e < 32; e++) dq[e] = 0.0f;
        for (int j = 0; j <= t; j++) {
            const floatX *k = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD, *v = k + (size_t)NKV * HD;
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HD; d++) { s += tof(q[d]) * tof(k[d]); dp += tof(g[d]) * tof(v[d]); }
            float p = expf(s * scale - L), ds = p * (dp - Dt) * scale;
            float *dkj = dk + (((size_t)b * T + j) * NKV + hk) * HD, *dvj = dv + (((size_t)b * T + j) * NKV + hk) * HD;
            for (int e = 0; e < 32 && d0 + e < HD; e++) {
                dq[e] += ds * tof(k[d0 + e]);
                atomicAdd(&dkj[d0 + e], ds * tof(q[d0 + e]));
                atomicAdd(&dvj[d0 + e], p * tof(g[d0 + e]));
            }
        }
        for (int e = 0; e < 32
             && d0 + e < HD; e++) dqkv[((size_t)b * T + t) * QKV + (size_t)h * HD + d0 + e] = fx(dq[e]);
    }
}
__global__ void kv_to_dqkv(floatX *dqkv, const float *dk, const float *dv, int N, int NH, int NKV, int HD) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * NKV * HD) return;
    size_t n = idx / ((size_t)NKV * HD), r = idx % ((size_t)NKV * HD), QKV = (size_t)(NH + 2 * NKV) * HD;
    dqkv[n * QKV + (size_t)NH * HD + r] = fx(dk[idx]);
    dqkv[n * QKV + (size_t)(NH + NKV) * HD + r] = fx(dv[idx]);
}

typedef struct {
    int B, T, NH, NKV, HD;
    floatX *qkv, *dout, *out, *dqkv;
    float *lse, *D, *dk, *dv;
} Bufs;
static void run(int version, int backward, Bufs *s) {
    float scale = 1.0f / sqrtf((float)s->HD);
    int rows = s->B * s->NH * s->T;
    if (version == 1) {
        if (!backward) {
            attention_forward_v1<<<ceil_div(rows, 128), 128>>>(s->out, s->lse, s->qkv, s->B, s->T, s->NH, s->NKV,
                                                               s->HD, scale);
            LAUNCH_CHECK();
            return;
        }
        size_t nkv = (size_t)s->B * s->T * s->NKV * s->HD;
        cudaCheck(cudaMemset(s->dk, 0, nkv * sizeof(float)));
        cudaCheck(cudaMemset(s->dv, 0, nkv * sizeof(float)));
        attention_rowdot_kernel<<<ceil_div(rows, 8), 256>>>(s->D, s->dout, s->out, s->B, s->T, s->NH, s->HD);
        attention_backward_v1<<<ceil_div(rows, 128), 128>>>(s->dqkv, s->dk, s->dv, s->dout, s->qkv, s->lse, s->D, s->B,
                                                            s->T, s->NH, s->NKV, s->HD, scale);
        kv_to_dqkv<<<ceil_div((long)nkv, 256), 256>>>(s->dqkv, s->dk, s->dv, s->B * s->T, s->NH, s->NKV, s->HD);
        LAUNCH_CHECK();
        return;
    }
    if (version == 2) {   // the FMA kernels, whatever the build: HD 128 is their DPL 4 instance
        if (att_dpl(s->HD) != 4) FATAL("attention.cu: v2 is launched here for head dims 97..128 only");
        dim3 gq(ceil_div(s->T, ATT_TILE), s->NH, s->B), gk(ceil_div(s->T, ATT_TILE), s->NKV, s->B);
        if (!backward) {
            attention_forward_kernel<4><<<gq, ATT_WARPS * 32, att_smem_forward(s->HD)>>>(s->out, s->lse, s->qkv, s->T,
                                                                                        s->NH, s->NKV, s->HD, scale);
            LAUNCH_CHECK();
            return;
        }
        attention_rowdot_kernel<<<ceil_div(rows, 8), 256>>>(s->D, s->dout, s->out, s->B, s->T, s->NH, s->HD);
        attention_backward_dq_kernel<4><<<gq, ATT_WARPS * 32, att_smem_dq(s->HD)>>>(s->dqkv, s->dout, s->qkv, s->lse,
                                                                                   s->D, s->T, s->NH, s->NKV, s->HD,
                                                                                   scale);
        attention_backward_dkv_kernel<4><<<gk, ATT_WARPS * 32, att_smem_dkv(s->HD)>>>(s->dqkv, s->dout, s->qkv,
                                                                                     s->lse, s->D, s->T, s->NH,
                                                                                     s->NKV, s->HD, scale);
        LAUNCH_CHECK();
        return;
    }
    // v3: the dispatcher train_empo.cu's model uses (tensor cores in bf16 at HD 64 / 128)
    if (!backward) attention_forward(s->out, s->lse, s->qkv, s->B, s->T, s->NH, s->NKV, s->HD);
    else attention_backward(s->dqkv, s->D, s->dout, s->out, s->qkv, s->lse, s->B, s->T, s->NH, s->NKV, s->HD);
}
static void alloc_bufs(Bufs *s, float *qkv_h, float *dout_h) {
    size_t N = (size_t)s->B * s->T, QKV = (size_t)(s->NH + 2 * s->NKV) * s->HD, NHD = (size_t)s->NH * s->HD;
    s->qkv = dev_upload_x(qkv_h, N * QKV);
    s->dout = dev_upload_x(dout_h, N * NHD);
    s->out = (floatX *)device_alloc(N * NHD * sizeof(floatX), "out");
    s->dqkv = (floatX *)device_alloc(N * QKV * sizeof(floatX), "dqkv");
    s->lse = (float *)device_alloc(N * s->NH * sizeof(float), "lse");
    s->D = (float *)device_alloc(att_bwd_scratch_floats(N, s->NH, s->HD) * sizeof(float), "D");   // + v3's scratch
    s->dk = (float *)device_alloc(N * s->NKV * s->HD * sizeof(float), "dk");
    s->dv = (float *)device_alloc(N * s->NKV * s->HD * sizeof(float), "dv");
}
static void free_bufs(Bufs *s) {
    size_t N = (size_t)s->B * s->T, QKV = (size_t)(s->NH + 2 * s->NKV) * s->HD, NHD = (size_t)s->NH * s->HD;
    device_free(s->qkv, N * QKV * sizeof(floatX)); device_free(s->dout, N * NHD * sizeof(floatX));
    device_free(s->out, N * NHD * sizeof(floatX)); device_free(s->dqkv, N * QKV * sizeof(floatX));
    device_free(s->lse, N * s->NH * sizeof(float));
    device_free(s->D, att_bwd_scratch_floats(N, s->NH, s->HD) * sizeof(float));
    device_free(s->dk, N * s->NKV * s->HD * sizeof(float)); device_free(s->dv, N * s->NKV * s->HD * sizeof(float));
}

// CPU reference in double: out (B, T, NH*HD), dqkv (B, T, QKV)
static void reference(float *out, float *dqkv, const float *qkv, const float *dout, int B, int T, int NH, int NKV,
                      int HD) {
    int QKV = (NH + 2 * NKV) * HD, rep = NH / NKV;
    double scale = 1.0 / sqrt((double)HD), *p = (double *)xmalloc(T * sizeof(double)),
    *dp = (double *)xmalloc(T * sizeof(double));
    double *acc = (double *)calloc((size_t)B * T * QKV, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                int hk = h / rep;
                const float *q = qkv + ((size_t)b * T + t) * QKV + (size_t)h * HD,
                *g = dout + ((size_t)b * T + t) * NH * HD + (size_t)h * HD;
                double mx = -1e300, sum = 0.0, Dt = 0.0;
                for (int j = 0; j <= t; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD;
                    double s = 0.0;
                    for (int d = 0; d < HD; d++) s += (double)q[d] * k[d];
                    p[j] = s * scale; if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
                float *o = out + ((size_t)b * T + t) * NH * HD + (size_t)h * HD;
                for (int d = 0; d < HD; d++) {
                    double a = 0.0;
                    for (int j = 0; j <= t; j++)
                        a += p[j] / sum * qkv[((size_t)b * T + j) * QKV + (size_t)(NH + NKV + hk) * HD + d];
                    o[d] = (float)a;
                }
                for (int j = 0; j <= t; j++) {
                    p[j] /= sum;
                    const float *v = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + NKV + hk) * HD;
                    double s = 0.0;
                    for (int d = 0; d < HD; d++) s += (double)g[d] * v[d];
                    dp[j] = s; Dt += p[j] * s;
                }
                for (int j = 0; j <= t; j++) {
                    double ds = p[j] * (dp[j] - Dt) * scale;
                    const float *k = qkv + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD;
                    double *dq = acc + ((size_t)b * T + t) * QKV + (size_t)h * HD;
                    double *dk = acc + ((size_t)b * T + j) * QKV + (size_t)(NH + hk) * HD, *dv = dk + (size_t)NKV * HD;
                    for (int d = 0; d < HD; d++) { dq[d] += ds * k[d]; dk[d] += ds * q[d]; dv[d] += p[j] * g[d]; }
                }
            }
    for (size_t i = 0; i < (size_t)B * T * QKV; i++) dqkv[i] = (float)acc[i];
    free(p); free(dp); free(acc);
}

int main(int argc, char **argv) {
    if (!dev_require_gpu()) return 0;
    int NH = 12, NKV = 2, HD = 128;
    int B = argc > 2 ? atoi(argv[1]) : 8, T = argc > 2 ? atoi(argv[2]) : 1024;
    attention_setup(HD);
    // 1. correctness at a small shape (a partial last tile), every version
    {
        Bufs s;
        memset(&s, 0, sizeof s);
        s.B = 1; s.T = 200; s.NH = NH; s.NKV = NKV; s.HD = HD;
        size_t N = (size_t)s.B * s.T, QKV = (size_t)(NH + 2 * NKV) * HD, NHD = (size_t)NH * HD;
        float *qkv = dev_random(N * QKV, 2.0f, 1), *dout = dev_random(N * NHD, 1.0f, 2);
        alloc_bufs(&s, qkv, dout);
        float *ro = (float *)xmalloc(N * NHD * sizeof(float)), *rd = (float *)xmalloc(N * QKV * sizeof(float));
        float *go = (float *)xmalloc(N * NHD * sizeof(float)), *gd = (float *)xmalloc(N * QKV * sizeof(float));
        reference(ro, rd, qkv, dout, s.B, s.T, NH, NKV, HD);
        for (int v = 1; v <= 3; v++) {
            run(v, 0, &s); run(v, 1, &s);
            cudaCheck(cudaDeviceSynchronize());
            dev_download_x(go, s.out, N * NHD);
            dev_download_x(gd, s.dqkv, N * QKV);
            printf("v%d at B=%d T=%d: out rel err %.2e, dqkv rel err %.2e\n", v, s.B, s.T,
                   dev_rel_err(go, ro, N * NHD), dev_rel_err(gd, rd, N * QKV));
        }
        free_bufs(&s); free(qkv); free(dout); free(ro); free(rd); free(go); free(gd);
    }
    // 2. timing at the benchmark shape
    Bufs s;
    memset(&s, 0, sizeof s);
    s.B = B; s.T = T; s.NH = NH; s.NKV = NKV; s.HD = HD;
    size_t N = (size_t)B * T, QKV = (size_t)(NH + 2 * NKV) * HD, NHD = (size_t)NH * HD;
    float *qkv = dev_random(N * QKV, 2.0f, 3), *dout = dev_random(N * NHD, 1.0f, 4);
    alloc_bufs(&s, qkv, dout);
    // useful FLOPs, causal: forward 2 products of (T^2/2) x HD per head; backward 5 (2.5x)
    double fwd_flops = 4.0 * B * NH * HD * (double)T * T / 2;
    for (int v = 1; v <= 3; v++) {
        int reps = v == 1 ? 2 : 20;
        float f = dev_time_ms(reps, [&] { run(v, 0, &s); });
        float bw = dev_time_ms(reps, [&] { run(v, 1, &s); });
        printf("v%d B=%d T=%d NH=%d NKV=%d HD=%d: forward %.3f ms (%.1f TFLOP/s), backward %.3f ms (%.1f TFLOP/s); "
               "x%d layers = %.1f ms per step\n", v, B, T, NH,
               NKV, HD, f, fwd_flops / f / 1e9, bw, 2.5 * fwd_flops / bw / 1e9, 28, 28 * (f + bw));
    }
    free_bufs(&s); free(qkv); free(dout);
    return 0;
}
