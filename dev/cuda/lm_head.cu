// dev/cuda/lm_head.cu: the LM head + log-softmax + loss gradient of train_empo.cu, at Qwen2.5's
// vocabulary (151936) and hidden size (1536), B*T = 8192 rows: how the chunk size trades memory
// for speed. One chunk of `rows` logits exists at a time; rows = 8192 is the unchunked version
// (all B*T*V logits, 2.5 GB in bf16) that the chunking replaces.
//
// Per chunk: logits = lnf @ W^T (GEMM), logsoftmax_kernel (forward: lse, logp), and in the
// backward the logits again, logsoftmax_kernel (backward: dlogits in place), dlnf = dlogits @ W,
// dW += dlogits^T @ lnf. Checked against a CPU computation (double) on a few rows.
//
// Build: make dev-cuda. Run: ./dev/cuda/lm_head    (needs a GPU; compiled, not yet run)
#include "common.h"

int main(void) {
    if (!dev_require_gpu()) return 0;
    // a one-layer model only to own the buffers: the head is what runs here
    ModelConfig c;
    memset(&c, 0, sizeof c);
    c.V = 151936; c.C = 1536; c.L = 1; c.NH = 12; c.NKV = 2; c.HD = 128; c.I = 256; c.maxT = 1024;
    c.tied = 1; c.qkv_bias = 1; c.rope_theta = 10000.0f; c.rms_eps = 1e-6f;
    Model m;
    model_init_random(&m, &c, 7);
    model_zero_grad(&m);   // the head's backward accumulates into dlmw (gradients are allocated on first use)
    int B = 8, T = 1024, N = B * T, V = c.V, C = c.C;
    int *in = (int *)xmalloc((size_t)N * sizeof(int)), *tg = (int *)xmalloc((size_t)N * sizeof(int));
    for (int i = 0; i < N; i++) {
        in[i] = (int)((i * 2654435761u) % V);
        tg[i] = (i % T) + 1 < T ? (int)(((i + 1) * 2654435761u) % V) : -1;
    }
    int sizes[] = {128, 512, 883, 2048, 8192};
    for (int si = 0; si < 5; si++) {
        m.head_rows = sizes[si];
        model_forward(&m, in, tg, NULL, B, T);   // also (re)allocates the head buffer for this size
        int hr = m.head_rows_used;
        size_t fr0, tot;
        cudaCheck(cudaMemGetInfo(&fr0, &tot));
        float fwd = dev_time_ms(3,
                                [&] { for (int r0 = 0; r0 < N; r0 += hr) lm_head_chunk(&m, r0,
                                        N - r0 < hr ? N - r0 : hr, 0); });
        float bwd = dev_time_ms(3,
                                [&] { for (int r0 = 0; r0 < N; r0 += hr) lm_head_chunk(&m, r0,
                                        N - r0 < hr ? N - r0 : hr, 1); });
        double flops = 2.0 * N * V * C;   // one GEMM
        printf("rows per chunk %5d: head buffer %7.1f MiB, forward %.2f ms (%.0f TFLOP/s), backward %.2f ms (3 GEMMs, "
               "%.0f TFLOP/s)\n", hr,
               (double)hr * V * sizeof(floatX) / 1048576.0, fwd, flops / fwd / 1e9, bwd, 3 * flops / bwd / 1e9);
    }
    // check a few rows against the CPU: lse, logp and dlnf (after the backward of the last size)
    model_forward(&m, in, tg, NULL, B, T);
    cudaCheck(cudaMemcpy(m.acts.dlogp, m.dlogp, (size_t)N * sizeof(float), cudaMemcpyHostToDevice));
    for (int r0 = 0; r0 < N; r0 += m.head_rows_used) lm_head_chunk(&m, r0,
                                                                   N - r0 < m.head_rows_used ? N - r0
                                                                       : m.head_rows_used, 1);
    float *W = (float *)xmalloc((size_t)V * C * sizeof(float)), *lnf = (float *)xmalloc((size_t)N * C * sizeof(float));
    float *dln = (float *)xmalloc((size_t)N * C * sizeof(float)), *lse = (float *)xmalloc((size_t)N * sizeof(float));
    dev_download_x(W, m.params.lmw, (size_t)V * C);
    dev_download_x(lnf, m.acts.lnf, (size_t)N * C);
    dev_download_x(dln, m.acts.dln, (size_t)N * C);
    cudaCheck(cudaMemcpy(lse, m.acts.lse, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    double worst_lse = 0.0, worst_logp = 0.0, worst_d = 0.0;
    double *z = (double *)xmalloc((size_t)V * sizeof(double)), *d = (double *)xmalloc((size_t)C * sizeof(double));
    int rows[4] = {0, 1, 4097, N - 2};
    for (int k = 0; k < 4; k++) {
        int n = rows[k];
        double mx = -1e300, s = 0.0;
        for (int v = 0; v < V; v++) {
            double a = 0.0;
            for (int i = 0; i < C; i++) a += (double)lnf[(size_t)n * C + i] * W[(size_t)v * C + i];
            z[v] = a; if (a > mx) mx = a;
        }
        for (int v = 0; v < V; v++) s += exp(z[v] - mx);
        double L = mx + log(s), g = m.dlogp[n];
        worst_lse = fmax(worst_lse, fabs(L - lse[n]));
        if (tg[n] >= 0) worst_logp = fmax(worst_logp, fabs(z[tg[n]] - L - m.logp[n]));
        for (int i = 0; i < C; i++) d[i] = 0.0;
        for (int v = 0; v < V; v++) {
            double dz = -g * exp(z[v] - L) + (v == tg[n] ? g : 0.0);
            for (int i = 0; i < C; i++) d[i] += dz * W[(size_t)v * C + i];
        }
        double sc = 0.0, e = 0.0;
        for (int i = 0; i < C; i++) { sc = fmax(sc, fabs(d[i])); e = fmax(e, fabs(d[i] - dln[(size_t)n * C + i])); }
        worst_d = fmax(worst_d, sc > 0 ? e / sc : e);
    }
    printf("vs CPU on 4 rows: lse max abs err %.2e, logp %.2e, dlnf rel err %.2e\n", worst_lse, worst_logp, worst_d);
    free(W); free(lnf); free(dln); free(lse); free(z); free(d); free(in); free(tg);
    model_free(&m);
    return 0;
}
