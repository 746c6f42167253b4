// fuzz_json.c: libFuzzer target for the readers of untrusted files: json.h, safetensors.h,
// tokenizer_load_json, and config.json parsing in dev/convert.c. Every input goes to all of them
// (the file readers through a scratch file). None may crash, leak or hang; errors are fine.
#include <unistd.h>
#define CONVERT_NO_MAIN
#include "../convert.c"

static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    snprintf(path, sizeof path, "/tmp/fuzz_json_%d", (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    JDoc d;
    if (json_parse(&d, (const char *)data, size) == 0) {   // walk every node through the accessors
        for (int i = 0; i < d.n_nodes; i++) {
            (void)json_get(&d, i, "type"); (void)json_at(&d, i, 1); (void)json_str(&d, i); (void)json_key(&d, i);
        }
    }
    json_free(&d);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    char err[1024];
    StFile sf;
    if (st_open(&sf, path, err, sizeof err) == 0) {
        for (int i = 0; i < sf.n; i++) {
            if (!st_dtype_size(sf.t[i].dtype)) continue;
            float *x = (float *)malloc((size_t)st_numel(&sf.t[i]) * sizeof(float) + 1);
            st_read_f32(&sf, &sf.t[i], x, err, sizeof err);
            free(x);
        }
        st_close(&sf);
    }
    Tokenizer t;
    if (tokenizer_load_json(&t, path, err, sizeof err) == 0) {
        int *ids;
        int n = tokenizer_encode(&t, (const char *)data, size, 1, &ids);
        (void)n;
        free(ids);
        tokenizer_free(&t);
    }
    ModelConfig c;
    (void)conv_read_hf_config(path, &c, err, sizeof err);
    remove(path);
    return 0;
}
