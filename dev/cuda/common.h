// dev/cuda/common.h: what the kernel development files share. Each file includes train_empo.cu
// (as TESTING, so without its main), puts the kernel versions it compares next to the one
// train_empo.cu uses, checks every version against a CPU reference, then times them.
#ifndef DEV_CUDA_COMMON_H
#define DEV_CUDA_COMMON_H
#define TESTING
#include "../../train_empo.cu"

// Device buffer of n floatX with the values of h (rounded to floatX first, in place, so that a
// CPU reference computed from h sees exactly what the GPU sees).
static floatX *dev_upload_x(float *h, size_t n) {
    float *tmp = (float *)device_alloc(n * sizeof(float), "dev");
    floatX *d = (floatX *)device_alloc(n * sizeof(floatX), "dev");
    cudaCheck(cudaMemcpy(tmp, h, n * sizeof(float), cudaMemcpyHostToDevice));
    convert_kernel<<<grid_for(n), 256>>>(d, tmp, n);
    LAUNCH_CHECK();
    to_float_kernel<<<grid_for(n), 256>>>(tmp, d, n);
    LAUNCH_CHECK();
    cudaCheck(cudaMemcpy(h, tmp, n * sizeof(float), cudaMemcpyDeviceToHost));
    device_free(tmp, n * sizeof(float));
    return d;
}
static void dev_download_x(float *h, const floatX *d, size_t n) {
    float *tmp = (float *)device_alloc(n * sizeof(float), "dev");
    to_float_kernel<<<grid_for(n), 256>>>(tmp, d, n);
    LAUNCH_CHECK();
    cudaCheck(cudaMemcpy(h, tmp, n * sizeof(float), cudaMemcpyDeviceToHost));
    device_free(tmp, n * sizeof(float));
}
static float *dev_random(size_t n, float scale, uint64_t seed) {   // host, uniform [-scale, scale)
    float *h = (float *)xmalloc(n * sizeof(float));
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
        h[i] = scale * ((float)((s * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f);
    }
    return h;
}
// max|a - b| / max|b|
static double dev_rel_err(const float *a, const float *b, size_t n) {
    double e = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= e)) e = d;
        if (fabs((double)b[i]) > s) s = fabs((double)b[i]);
    }
    return s > 0 ? e / s : e;
}
// Mean milliseconds of fn() over `repeats` runs after one warm-up, timed with CUDA events.
template <typename F> static float dev_time_ms(int repeats, F fn) {
    fn();
    cudaCheck(cudaDeviceSynchronize());
    cudaEvent_t a, b;
    cudaCheck(cudaEventCreate(&a)); cudaCheck(cudaEventCreate(&b));
    cudaCheck(cudaEventRecord(a));
    for (int i = 0; i < repeats; i++) fn();
    cudaCheck(cudaEventRecord(b));
    cudaCheck(cudaEventSynchronize(b));
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, a, b));
    cudaCheck(cudaEventDestroy(a)); cudaCheck(cudaEventDestroy(b));
    return ms / repeats;
}
static int dev_require_gpu(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) { printf("SKIP: no CUDA device\n"); return 0; }
    gpu_init();
    return 1;
}
#endif
