// test_tokenizer.c: tests for tokenizer.h (token-exact agreement with HF `tokenizers`, NFC,
// decode round trips, the checkpoint blob, chat templates), safetensors.h and the converter
// (dev/convert.c: HF -> .bin -> HF round trip on the tiny model fixture, with logits checked
// against transformers). Fixtures come from dev/make_tokenizer_fixtures.py and
// dev/make_hf_roundtrip.py. Tests that need ../shared print a SKIP line when it is absent.
// The last line is "tokenizer: N passed, N failed".
#define TESTING
#include "../../train_empo.c"
#include "../../empoc/tokenizer.h"
#include "../../empoc/safetensors.h"
#define CONVERT_NO_MAIN
#include "../convert.c"
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed, failed;
#define CHECK(cond, ...)                                  \
    do {                                                  \
        if (cond) {                                       \
            passed++;                                     \
        } else {                                          \
            failed++;                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);   \
            printf(__VA_ARGS__);                          \
            printf("\n");                                 \
        }                                                 \
    } while (0)

static const char *SHARED_TOK = "../shared/qwen2_tokenizer/tokenizer.json";
static const char *FIX = "dev/fixtures";

static int file_exists(const char *p) { FILE *f = fopen(p, "rb"); if (f) fclose(f); return f != NULL; }

static uint64_t fnv_bytes(const void *p, size_t n, uint64_t h) {
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ull; }
    return h;
}
static uint64_t fnv_ids(const int *ids, int n) {   // over little-endian int32, as the fixture does
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        unsigned char b[4]; tok__put32(b, (uint32_t)ids[i]);
        h = fnv_bytes(b, 4, h);
    }
    return h;
}
static int ids_equal(const int *a, int na, const JDoc *d, int arr) {
    if (json_type(d, arr) != J_ARR || json_len(d, arr) != na) return 0;
    int i = 0;
    for (int c = json_first(d, arr); c >= 0; c = json_next(d, c), i++) if ((int)json_num(d, c, -1) != a[i]) return 0;
    return 1;
}
static void print_ids(const char *what, const int *ids, int n) {
    printf("  %s:", what);
    for (int i = 0; i < n && i < 60; i++) printf(" %d", ids[i]);
    printf("\n");
}

// ---------------------------------------------------------------------------------------------
// The byte-level tokenizer (no ../shared needed)

static void test_bytes_tokenizer(void) {
    Tokenizer t;
    CHECK(tokenizer_init_bytes(&t) == 0, "init_bytes");
    unsigned seed = 7;
    int ok = 1;
    for (int it = 0; it < 200 && ok; it++) {   // decode(encode(x)) == x for any bytes (no NFC here)
        unsigned char buf[300];
        int n = it % 300;
        for (int i = 0; i < n; i++) { seed = seed * 1103515245u + 12345u; buf[i] = (unsigned char)(seed >> 16); }
        int *ids; int m = tokenizer_encode(&t, (const char *)buf, (size_t)n, 0, &ids);
        size_t dl; char *dec = tokenizer_decode(&t, ids, m, &dl);
        ok = m == n && dl == (size_t)n && memcmp(dec, buf, (size_t)n) == 0;
        for (int i = 0; ok && i < m; i++) ok = ids[i] == buf[i];
        free(ids); free(dec);
    }
    CHECK(ok, "byte tokenizer: decode(encode(random bytes)) == bytes, one id per byte");
    const char *s = "a<|im_start|>b<|im_end|><|endoftext|>";
    int *ids, n = tokenizer_encode(&t, s, strlen(s), 1, &ids);
    int want[] = {'a', 257, 'b', 258, 256};
    CHECK(n == 5 && memcmp(ids, want, sizeof want) == 0, "byte tokenizer: specials recognised");
    free(ids);
    n = tokenizer_encode(&t, s, strlen(s), 0, &ids);
    CHECK(n == (int)strlen(s), "byte tokenizer: allow_special=0 gives plain bytes (%d ids)", n);
    free(ids);
    CHECK(tokenizer_special_id(&t, "<|im_end|>") == 258 && tokenizer_special_id(&t, "<|nope|>") == -1, "special_id");
    int eos[4];
    CHECK(tokenizer_eos_ids(&t, eos, 4) == 2 && eos[0] == 258 && eos[1] == 256, "eos ids");
    n = chat_template_encode(&t, TEMPLATE_PLAIN, "2+2?", &ids);
    const char *plain = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n";
    size_t dl; char *dec = tokenizer_decode(&t, ids, n, &dl);
    CHECK(n > 0 && ids[0] == 257 && strcmp(dec, plain) == 0, "byte tokenizer: plain template");
    free(ids); free(dec);
    // blob round trip, and every truncation of the blob is rejected cleanly
    size_t bn; unsigned char *blob = tokenizer_to_blob(&t, &bn);
    Tokenizer u; char err[256];
    CHECK(blob && tokenizer_from_blob(&u, blob, bn, err, sizeof err) == 0, "byte blob loads: %s", err);
    size_t bn2; unsigned char *blob2 = tokenizer_to_blob(&u, &bn2);
    CHECK(bn == bn2 && memcmp(blob, blob2, bn) == 0, "byte blob round trip is identical");
    tokenizer_free(&u); free(blob2);
    int rejected = 0;
    for (size_t k = 0; k < bn; k++) if (tokenizer_from_blob(&u, blob, k, err,
                                                            sizeof err) != 0) rejected++; else tokenizer_free(&u);
    CHECK(rejected == (int)bn, "every truncated blob is rejected (%d of %zu)", rejected, bn);
    free(blob);
    tokenizer_free(&t);
}

// ---------------------------------------------------------------------------------------------
// The real Qwen2 tokenizer against the fixtures

typedef struct { const Tokenizer *t; int n, bad_ids, bad_nfc, bad_dec, bad_heap, bad_nospecial,
                bad_blob; const Tokenizer *tb; } AdvState;

static int adv_line(const JDoc *d, int root, int line, void *user) {
    AdvState *st = (AdvState *)user;
    const Tokenizer *t = st->t;
    int tx = json_get(d, root, "text"), nf = json_get(d, root, "nfc");
    const char *text = json_str(d, tx), *nfc = json_str(d, nf);
    size_t tl = (size_t)json_len(d, tx), nl = (size_t)json_len(d, nf);
    st->n++;
    int *ids; int n = tokenizer_encode(t, text, tl, 1, &ids);
    if (!ids_equal(ids, n, d, json_get(d, root, "ids"))) {
        if (st->bad_ids++ < 5) { printf("FAIL adversarial line %d: %s\n", line, text); print_ids("ours", ids, n); }
    }
    // NFC as HF's normalizer gives it (the fixture is normalized per stretch between added tokens,
    // which for these texts is the same as normalizing the whole)
    unsigned char *norm = NULL; size_t normn = tl;
    if (!tok__nfc_quick((const unsigned char *)text, tl)) tok__nfc((const unsigned char *)text, tl, &norm, &normn);
    const char *ours = norm ? (const char *)norm : text;
    if (normn != nl || memcmp(ours, nfc, nl) != 0) {
        if (st->bad_nfc++ < 5) printf("FAIL NFC line %d: %s\n", line, text);
    }
    size_t dl; char *dec = tokenizer_decode(t, ids, n, &dl);
    if (dl != normn || memcmp(dec, ours, dl) != 0) {
        if (st->bad_dec++ < 5) printf("FAIL decode(encode(x)) != NFC(x), line %d\n", line);
    }
    free(dec); free(norm);
    // the heap merge path gives the same ids as the scan path
    tok_scan_max = 1;
    int *ids2; int n2 = tokenizer_encode(t, text, tl, 1, &ids2);
    tok_scan_max = TOK_SCAN_MAX;
    if (n2 != n || memcmp(ids, ids2, (size_t)n * sizeof(int)) != 0) {
        if (st->bad_heap++ < 5) printf("FAIL heap path line %d\n", line);
    }
    free(ids2);
    // from the blob: the same ids
    n2 = tokenizer_encode(st->tb, text, tl, 1, &ids2);
    if (n2 != n || memcmp(ids, ids2, (size_t)n * sizeof(int)) != 0) st->bad_blob++;
    free(ids2);
    // allow_special=0: no added token comes out, and the bytes survive
    n2 = tokenizer_encode(t, text, tl, 0, &ids2);
    int any = 0;
    for (int i = 0; i < n2; i++) if (t->flags[ids2[i]] & TOK_F_ADDED) any = 1;
    dec = tokenizer_decode(t, ids2, n2, &dl);
    unsigned char *norm2 = NULL; size_t n2n = tl;
    if (!tok__nfc_quick((const unsigned char *)text, tl)) tok__nfc((const unsigned char *)text, tl, &norm2, &n2n);
    if (any || dl != n2n || memcmp(dec, norm2 ? (const char *)norm2 : text, dl) != 0) st->bad_nospecial++;
    free(dec); free(norm2); free(ids2);
    free(ids);
    return 0;
}

typedef struct { const Tokenizer *t; FILE *ref; int n, bad_count, bad_hash, bad_nfc,
                missing; size_t bytes; } CorpusState;

static int corpus_line(const JDoc *d, int root, int line, void *user) {
    CorpusState *st = (CorpusState *)user;
    int pn = json_get(d, root, "problem");
    const char *p = json_str(d, pn);
    if (!p) return 0;
    size_t pl = (size_t)json_len(d, pn);
    char src[32]; int idx, cnt; unsigned long long h, hn;
    if (fscanf(st->ref, "%31s %d %d %llx %llx", src, &idx, &cnt, &h, &hn) != 5) { st->missing++; return 1; }
    int *ids; int n = tokenizer_encode(st->t, p, pl, 1, &ids);
    st->n++; st->bytes += pl;
    if (n != cnt) { if (st->bad_count++ < 3) printf("FAIL %s %d: %d ids, HF has %d\n", src, idx, n, cnt); }
    else if (fnv_ids(ids, n) != h) { if (st->bad_hash++ < 3) printf("FAIL %s %d: ids differ from HF\n", src, idx); }
    size_t dl; char *dec = tokenizer_decode(st->t, ids, n, &dl);
    if (fnv_bytes(dec, dl, 1469598103934665603ull) != hn) {
        if (st->bad_nfc++ < 3) printf("FAIL %s %d: decode(encode(x)) != NFC(x)\n", src, idx);
    }
    free(dec); free(ids);
    (void)line;
    return 0;
}

typedef struct { int limit; CorpusState *cs; } LimitState;
static int limited(const JDoc *d, int root, int line, void *user) {
    LimitState *ls = (LimitState *)user;
    if (ls->limit-- <= 0) return 1;
    return corpus_line(d, root, line, ls->cs);
}

typedef struct { const Tokenizer *t; int n, bad; } ChatState;
static int chat_line(const JDoc *d, int root, int line, void *user) {
    ChatState *st = (ChatState *)user;
    const char *p = json_str(d, json_get(d, root, "problem"));
    int *ids, n;
    n = chat_template_encode(st->t, TEMPLATE_QWEN_MATH_COT, p, &ids);
    if (!ids_equal(ids, n, d, json_get(d, root, "cot"))) {
        st->bad++;
        printf("FAIL chat cot line %d\n", line);
        print_ids("ours", ids, n);
    }
    free(ids);
    n = chat_template_encode(st->t, TEMPLATE_PLAIN, p, &ids);
    if (!ids_equal(ids, n, d, json_get(d, root, "plain"))) { st->bad++; printf("FAIL chat plain line %d\n", line); }
    free(ids);
    st->n++;
    return 0;
}

static void test_qwen_tokenizer(void) {
    if (!file_exists(SHARED_TOK)) { printf("SKIP Qwen2 tokenizer tests: %s not found\n", SHARED_TOK); return; }
    Tokenizer t; char err[512];
    clock_t c0 = clock();
    int rc = tokenizer_load_json(&t, SHARED_TOK, err, sizeof err);
    CHECK(rc == 0, "load %s: %s", SHARED_TOK, err);
    if (rc) return;
    printf("loaded tokenizer.json in %.2fs: %d ids, %d merges, %d added tokens\n",
           (double)(clock() - c0) / CLOCKS_PER_SEC, t.n_vocab, t.n_merges, t.n_added);
    CHECK(t.n_vocab == 151669 && t.n_merges == 151387 && t.n_added == 26 && t.nfc == 1, "tokenizer.json sizes");
    CHECK(tokenizer_special_id(&t, "<|endoftext|>") == 151643 && tokenizer_special_id(&t, "<|im_start|>") == 151644 &&
          tokenizer_special_id(&t, "<|im_end|>") == 151645, "special ids");
    // blob round trip
    size_t bn; unsigned char *blob = tokenizer_to_blob(&t, &bn);
    Tokenizer tb;
    rc = blob ? tokenizer_from_blob(&tb, blob, bn, err, sizeof err) : -1;
    CHECK(rc == 0, "qwen blob loads: %s", err);
    if (rc == 0) {
        size_t bn2; unsigned char *b2 = tokenizer_to_blob(&tb, &bn2);
        CHECK(bn2 == bn && memcmp(b2, blob, bn) == 0, "qwen blob round trip identical (%zu bytes)", bn);
        free(b2);
    }
    // corrupted blobs: flipped bytes anywhere in the header/lengths/merges never crash
    {
        unsigned seed = 99; int loaded = 0;
        unsigned char *c = (unsigned char *)malloc(bn);
        for (int it = 0; it < 40; it++) {
            memcpy(c, blob, bn);
            for (int k = 0; k < 3; k++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = (it < 20) ? (seed >> 8) % 600 : (seed >> 4) % bn;
                c[at] ^= (unsigned char)(1 + (seed & 0x7f));
            }
            Tokenizer x;
            if (tokenizer_from_blob(&x, c, bn, err, sizeof err) == 0) {
                loaded++;
                int *ids;
                int n = tokenizer_encode(&x, "hello world 123", 15, 1, &ids);
                (void)n;
                free(ids);
                tokenizer_free(&x);
            }
        }
        free(c);
        CHECK(1, "corrupted blobs handled (%d of 40 still loaded)", loaded);
    }
    free(blob);
    // adversarial corpus: full ids
    char path[512];
    snprintf(path, sizeof path, "%s/tok_adversarial.jsonl", FIX);
    AdvState as; memset(&as, 0, sizeof as); as.t = &t; as.tb = &tb;
    int nl = jsonl_foreach(path, 1, adv_line, &as);
    CHECK(nl > 500, "read %s (%d lines)", path, nl);
    CHECK(as.bad_ids == 0, "adversarial: %d of %d differ from HF tokenizers", as.bad_ids, as.n);
    CHECK(as.bad_nfc == 0, "adversarial: NFC differs from HF's normalizer on %d", as.bad_nfc);
    CHECK(as.bad_dec == 0, "adversarial: decode(encode(x)) != NFC(x) on %d", as.bad_dec);
    CHECK(as.bad_heap == 0, "adversarial: heap merge path differs on %d", as.bad_heap);
    CHECK(as.bad_blob == 0, "adversarial: tokenizer from blob differs on %d", as.bad_blob);
    CHECK(as.bad_nospecial == 0, "adversarial: allow_special=0 produced an added token or lost bytes on %d",
          as.bad_nospecial);
    printf("adversarial: %d texts, %d exact\n", as.n, as.n - as.bad_ids);
    // big corpora: counts + hashes
    snprintf(path, sizeof path, "%s/tok_corpus.txt", FIX);
    FILE *ref = fopen(path, "r");
    CHECK(ref != NULL, "open %s", path);
    if (ref && file_exists("../shared/data/math500.jsonl") && file_exists("../shared/data/numina_20k.jsonl")) {
        CorpusState cs; memset(&cs, 0, sizeof cs); cs.t = &t; cs.ref = ref;
        clock_t c1 = clock();
        jsonl_foreach("../shared/data/math500.jsonl", 1, corpus_line, &cs);
        CHECK(cs.n == 500 && cs.bad_count + cs.bad_hash == 0 && !cs.missing, "math500: %d of %d problems token-exact",
              cs.n - cs.bad_count - cs.bad_hash, cs.n);
        int m500 = cs.n;
        LimitState ls = {2000, &cs};
        jsonl_foreach("../shared/data/numina_20k.jsonl", 1, limited, &ls);
        CHECK(cs.n - m500 == 2000 && cs.bad_count + cs.bad_hash == 0 && !cs.missing,
              "numina first 2000: %d of %d token-exact",
              cs.n - m500 - cs.bad_count - cs.bad_hash, cs.n - m500);
        CHECK(cs.bad_nfc == 0, "corpora: decode(encode(x)) == NFC(x) fails on %d", cs.bad_nfc);
        printf("corpora: %d problems (%.1f MB) exact: %d, decode ok: %d (%.2fs)\n", cs.n, cs.bytes / 1e6,
               cs.n - cs.bad_count - cs.bad_hash, cs.n - cs.bad_nfc, (double)(clock() - c1) / CLOCKS_PER_SEC);
    } else printf("SKIP corpus agreement: ../shared/data not found\n");
    if (ref) fclose(ref);
    // chat templates
    snprintf(path, sizeof path, "%s/tok_chat.jsonl", FIX);
    ChatState chs = {&t, 0, 0};
    jsonl_foreach(path, 1, chat_line, &chs);
    CHECK(chs.n >= 8 && chs.bad == 0, "chat templates: %d of %d prompts equal apply_chat_template",
          chs.n * 2 - chs.bad, chs.n * 2);
    // tokenizer.json written by us loads back to the same tokenizer
    const char *tmpj = "/tmp/test_tokenizer_export.json";
    FILE *f = fopen(tmpj, "wb");
    if (f) { tokenizer_write_hf_json(f, &t); fclose(f); }
    Tokenizer t2;
    rc = tokenizer_load_json(&t2, tmpj, err, sizeof err);
    CHECK(rc == 0, "exported tokenizer.json loads: %s", err);
    if (rc == 0) {
        size_t a, b; unsigned char *x = tokenizer_to_blob(&t, &a), *y = tokenizer_to_blob(&t2, &b);
        CHECK(a == b && memcmp(x, y, a) == 0, "exported tokenizer.json is the same tokenizer");
        free(x); free(y); tokenizer_free(&t2);
    }
    remove(tmpj);
    tokenizer_free(&tb);
    tokenizer_free(&t);
}

// ---------------------------------------------------------------------------------------------
// Bad tokenizer.json input gives one clear error

static void test_bad_tokenizer_json(void) {
    static const char *cases[][2] = {
        {"{", "malformed JSON"},
        {"[]", "pre_tokenizer"},
        {"{\"normalizer\": {\"type\": \"NFKC\"}}", "normalizer"},
        {"{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "pre_tokenizer"},
    };
    char err[512];
    const char *p = "/tmp/test_tokenizer_bad.json";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(p, "wb"); fputs(cases[i][0], f); fclose(f);
        Tokenizer t; err[0] = 0;
        int rc = tokenizer_load_json(&t, p, err, sizeof err);
        CHECK(rc != 0 && strstr(err, cases[i][1]) && strstr(err, p), "bad tokenizer.json %zu: error '%s'", i, err);
    }
    Tokenizer t;
    CHECK(tokenizer_load_json(&t, "/nonexistent/tokenizer.json", err, sizeof err) != 0 && strstr(err, "/nonexistent"),
          "missing file: %s", err);
    remove(p);
}


// ---------------------------------------------------------------------------------------------
// The converter on dev/fixtures/hf_tiny (made by transformers, see dev/make_hf_roundtrip.py)

static const char *TINY = "dev/fixtures/hf_tiny";

static float *read_floats(const char *path, size_t n) {
    size_t len; char *b = read_whole_file(path, &len);
    if (!b || len != n * 4) { free(b); return NULL; }
    float *f = (float *)malloc(n * sizeof(float));
    memcpy(f, b, n * 4); free(b);
    return f;
}
static int copy_file(const char *from, const char *to) {
    size_t n; char *b = read_whole_file(from, &n);
    if (!b) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(b, 1, n, f) == n;
    if (f) fclose(f);
    free(b);
    return ok ? 0 : -1;
}
static void write_text(const char *path,
                       const char *s) { FILE *f = fopen(path, "wb"); if (f) { fputs(s, f); fclose(f); } }
// A scratch HF folder: config.json and tokenizer.json copied from the fixture (or config text given).
static void scratch_dir(const char *dir, const char *config_text) {
    char a[512], b[512];
    mkdir(dir, 0755);
    snprintf(b, sizeof b, "%s/config.json", dir);
    if (config_text) write_text(b, config_text);
    else { snprintf(a, sizeof a, "%s/config.json", TINY); copy_file(a, b); }
    snprintf(a, sizeof a, "%s/tokenizer.json", TINY); snprintf(b, sizeof b, "%s/tokenizer.json", dir); copy_file(a, b);
}
static void rm_dir(const char *dir) {
    static const char *files[] = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                  "vocab.json",
                                  "merges.txt", "tokenizer_config.json", "model.safetensors.index.json",
                                  "a.safetensors", "b.safetensors"};
    char p[512];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        remove(p);
    }
    rmdir(dir);
}
// A safetensors file from a header string and n zero bytes of data.
static void write_st_raw(const char *path, const char *hdr, size_t n) {
    FILE *g = fopen(path, "wb");
    if (!g) return;
    size_t hl = strlen(hdr);
    unsigned char lb[8] = {(unsigned char)hl, (unsigned char)(hl >> 8), 0, 0, 0, 0, 0, 0};
    fwrite(lb, 1, 8, g); fwrite(hdr, 1, hl, g);
    char *zeros = (char *)calloc(n + 1, 1); fwrite(zeros, 1, n, g); free(zeros);
    fclose(g);
}
// Expects convert_import(dir) to fail with an error containing want1 and want2.
static void expect_import_error(const char *dir, const char *want1, const char *want2, const char *what) {
    char err[1024] = "";
    int rc = convert_import(dir, "/tmp/test_tokenizer_bad.bin", "fp32", 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, want1) && strstr(err, want2), "%s: want an error naming '%s' and '%s', got '%s'",
          what, want1, want2, err);
    if (rc == 0) remove("/tmp/test_tokenizer_bad.bin");
    else printf("  (%s -> %s)\n", what, err);
}

static void test_convert(void) {
    char err[1024] = "", p[512];
    const char *bin = "/tmp/test_tokenizer_tiny.bin", *bin2 = "/tmp/test_tokenizer_tiny2.bin",
    *exp = "/tmp/test_tokenizer_export";
    int rc = convert_import(TINY, bin, "fp32", 0, err, sizeof err);
    CHECK(rc == 0, "import %s: %s", TINY, err);
    if (rc) return;
    // the forward pass of the imported model against transformers' logits
    snprintf(p, sizeof p, "%s/ref.json", TINY);
    size_t len; char *txt = read_whole_file(p, &len);
    JDoc d;
    CHECK(txt && json_parse(&d, txt, len) == 0, "parse %s", p);
    int T = (int)json_num(&d, json_get(&d, 0, "T"), 0), V = (int)json_num(&d, json_get(&d, 0, "V"), 0);
    int *ids = (int *)malloc((size_t)T * sizeof(int));
    int i = 0;
    for (int c = json_first(&d, json_get(&d, 0, "ids")); c >= 0 && i < T; c = json_next(&d,
            c)) ids[i++] = (int)json_num(&d, c, 0);
    snprintf(p, sizeof p, "%s/ref_logits.bin", TINY);
    float *ref = read_floats(p, (size_t)T * V);
    CHECK(ref != NULL, "read %s", p);
    Model m;
    rc = model_load(&m, bin, err, sizeof err);
    CHECK(rc == 0, "model_load %s: %s", bin, err);
    if (rc == 0 && ref) {
        model_forward(&m, ids, NULL, NULL, 1, T);
        // fp32 both sides; the sums differ only in order (~1e-6 relative on logits of size ~4), so
        // 1e-4 absolute is loose for rounding yet far below any real mapping error (~0.1 and up)
        double maxd = 0;
        for (size_t k = 0; k < (size_t)T * V; k++) {
            double e = fabs((double)m.acts.logits[k] - ref[k]);
            if (e > maxd) maxd = e;
        }
        CHECK(maxd < 1e-4, "imported tiny model logits differ from transformers by %.3g", maxd);
        printf("hf_tiny: C forward vs transformers logits, max |diff| = %.3g over %d x %d\n", maxd, T, V);
        model_free(&m);
    }
    // the tokenizer travelled in the checkpoint: the chat template gives transformers' prompt ids
    Checkpoint ck;
    rc = ckpt_load(bin, &ck, err, sizeof err);
    CHECK(rc == 0, "ckpt_load: %s", err);
    Tokenizer tok;
    if (rc == 0 && tokenizer_from_blob(&tok, ck.tok, ck.tok_bytes, err, sizeof err) == 0) {
        int *cids, n = chat_template_encode(&tok, TEMPLATE_QWEN_MATH_COT, json_str(&d, json_get(&d, 0, "problem")),
                                            &cids);
        CHECK(n == T && memcmp(cids, ids, (size_t)T * sizeof(int)) == 0,
              "tiny tokenizer chat template ids equal apply_chat_template's");
        CHECK(ck.n_eos == 2 && ck.eos[0] == 498 && ck.eos[1] == 496, "eos ids in the checkpoint (%d: %d %d)", ck.n_eos,
              ck.eos[0], ck.eos[1]);
        free(cids); tokenizer_free(&tok);
    } else CHECK(0, "tokenizer blob in the checkpoint: %s", err);
    json_free(&d); free(txt); free(ids); free(ref);
    // export, then the exported tensors are the original tensors bit for bit, and re-import is identical
    rm_dir(exp);
    rc = convert_export(bin, exp, NULL, 0, err, sizeof err);
    CHECK(rc == 0, "export: %s", err);
    StFile a, b;
    snprintf(p, sizeof p, "%s/model.safetensors", TINY);
    char q[512]; snprintf(q, sizeof q, "%s/model.safetensors", exp);
    if (st_open(&a, p, err, sizeof err) == 0) {
        if (st_open(&b, q, err, sizeof err) == 0) {
            int same = a.n == b.n;
            for (int k = 0; same && k < a.n; k++) {
                const StTensor *tb = st_find(&b, a.t[k].name);
                same = tb && tb->dtype == ST_F32 && a.t[k].dtype == ST_F32 && st_numel(tb) == st_numel(&a.t[k]);
                if (!same) break;
                size_t n = (size_t)st_numel(tb);
                float *x = (float *)malloc(n * 4), *y = (float *)malloc(n * 4);
                same = !st_read_f32(&a, &a.t[k], x, err, sizeof err) && !st_read_f32(&b, tb, y, err,
                        sizeof err) && !memcmp(x, y, n * 4);
                free(x); free(y);
            }
            CHECK(same, "exported model.safetensors holds the original tensors bit for bit");
            st_close(&b);
        } else CHECK(0, "open exported safetensors: %s", err);
        st_close(&a);
    }
    rc = convert_import(exp, bin2, NULL, 0, err, sizeof err);
    CHECK(rc == 0, "re-import the export: %s", err);
    Checkpoint c2;
    if (rc == 0 && ckpt_load(bin2, &c2, err, sizeof err) == 0) {
        CHECK(c2.dtype == CKPT_DTYPE_FP32 && c2.num_params == ck.num_params && !memcmp(c2.params, ck.params,
                ck.num_params * 4) &&
              !memcmp(&c2.cfg, &ck.cfg, sizeof ck.cfg) && c2.tok_bytes == ck.tok_bytes && !memcmp(c2.tok, ck.tok,
                      ck.tok_bytes) &&
              c2.n_eos == ck.n_eos && !memcmp(c2.eos, ck.eos, sizeof ck.eos), "import(export(x)) == x");
        ckpt_free(&c2);
    }
    // bf16: import stores the bf16 rounding of each weight
    rc = convert_import(TINY, bin2, "bf16", 0, err, sizeof err);
    if (rc == 0 && ckpt_load(bin2, &c2, err, sizeof err) == 0) {
        int same = c2.dtype == CKPT_DTYPE_BF16 && c2.num_params == ck.num_params;
        for (size_t k = 0; same
             && k < ck.num_params; k++) same = c2.params[k] == bf16_to_f32(f32_to_bf16(ck.params[k]));
        CHECK(same, "bf16 import is the rounded fp32 import");
        ckpt_free(&c2);
    } else CHECK(0, "bf16 import: %s", err);
    // a sharded copy (two files + model.safetensors.index.json) imports to the same checkpoint
    {
        const char *sd = "/tmp/test_tokenizer_sharded";
        rm_dir(sd); scratch_dir(sd, NULL);
        StFile src;
        if (st_open(&src, p, err, sizeof err) == 0) {
            StOut *o = (StOut *)calloc((size_t)src.n, sizeof(StOut));
            float **data = (float **)calloc((size_t)src.n, sizeof(float *));
            for (int k = 0; k < src.n; k++) {
                data[k] = (float *)malloc((size_t)st_numel(&src.t[k]) * 4);
                st_read_f32(&src, &src.t[k], data[k], err, sizeof err);
                o[k].name = src.t[k].name; o[k].dtype = ST_BF16; o[k].ndim = src.t[k].ndim;
                o[k].shape[0] = src.t[k].shape[0];
                o[k].shape[1] = src.t[k].ndim > 1 ? src.t[k].shape[1] : 0;
                o[k].data = data[k];
            }
            int half = src.n / 2;
            char s1[512], s2[512], ix[512];
            snprintf(s1, sizeof s1, "%s/a.safetensors", sd); snprintf(s2, sizeof s2, "%s/b.safetensors", sd);
            snprintf(ix, sizeof ix, "%s/model.safetensors.index.json", sd);
            int ok = !st_write(s1, o, half, err, sizeof err) && !st_write(s2, o + half, src.n - half, err, sizeof err);
            FILE *f = fopen(ix, "wb");
            fprintf(f, "{\"metadata\": {}, \"weight_map\": {");
            for (int k = 0; k < src.n; k++) fprintf(f, "%s\"%s\": \"%s\"", k ? ", " : "", src.t[k].name,
                                                    k < half ? "a.safetensors" : "b.safetensors");
            fprintf(f, "}}");
            fclose(f);
            rc = ok ? convert_import(sd, bin2, NULL, 0, err, sizeof err) : -1;
            CHECK(rc == 0, "sharded import: %s", err);
            if (rc == 0 && ckpt_load(bin2, &c2, err, sizeof err) == 0) {
                int same = c2.dtype == CKPT_DTYPE_BF16;   // all shards BF16: stored as bf16 by default
                for (size_t k = 0; same
                     && k < ck.num_params; k++) same = c2.params[k] == bf16_to_f32(f32_to_bf16(ck.params[k]));
                CHECK(same, "sharded bf16 import equals the single-file import, rounded");
                ckpt_free(&c2);
            }
            // bad inputs, each one clear error naming the file and the tensor/field
            FILE *g = fopen(ix, "wb"); fputs("{\"weight_map\": {\"model.norm.weight\": \"../x\"}}", g); fclose(g);
            expect_import_error(sd, "model.safetensors.index.json", "weight_map", "index pointing outside the folder");
            g = fopen(ix, "wb"); fputs("{\"weight_map\": {\"model.norm.weight\": \"a.safetensors\"", g); fclose(g);
            expect_import_error(sd, "model.safetensors.index.json", "malformed JSON", "truncated index JSON");
            remove(ix); remove(s1); remove(s2);
            char one[512]; snprintf(one, sizeof one, "%s/model.safetensors", sd);
            st_write(one, o + 1, src.n - 1, err, sizeof err);   // the first tensor left out
            expect_import_error(sd, "model.safetensors", o[0].name, "missing tensor");
            int64_t s0 = o[3].shape[0];
            o[3].shape[0] = s0 + 1; o[3].data = NULL;
            st_write(one, o, src.n, err, sizeof err);
            expect_import_error(sd, "model.safetensors", o[3].name, "wrong shape");
            o[3].shape[0] = s0;
            st_write(one, o, src.n, err, sizeof err);
            // truncate the data
            size_t fl; char *fb = read_whole_file(one, &fl);
            g = fopen(one, "wb"); fwrite(fb, 1, fl - 10, g); fclose(g);
            expect_import_error(sd, "model.safetensors", "truncated", "truncated data");
            // a header length that runs past the end
            g = fopen(one, "wb"); fwrite("\xff\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", 1, 15, g); fclose(g);
            expect_import_error(sd, "model.safetensors", "header length", "truncated safetensors header");
            g = fopen(one, "wb"); fwrite("\x03\x00\x00", 1, 3, g); fclose(g);
            expect_import_error(sd, "model.safetensors", "truncated", "3-byte safetensors");
            // malformed header JSON
            g = fopen(one, "wb"); fwrite("\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":[1,", 1, 16, g); fclose(g);
            expect_import_error(sd, "model.safetensors", "malformed header JSON", "malformed header JSON");
            // wrong dtype: an I32 tensor where the embedding should be
            write_st_raw(one,
                         "{\"model.embed_tokens.weight\":{\"dtype\":\"I32\",\"shape\":[512,32],"
                         "\"data_offsets\":[0,65536]}}", 65536);
            expect_import_error(sd, "model.embed_tokens.weight", "I32", "wrong dtype");
            // offsets that disagree with the shape, overlapping tensors, an unknown dtype
            write_st_raw(one, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}", 16);
            expect_import_error(sd, "tensor x", "data_offsets", "offsets that disagree with the shape");
            write_st_raw(one,
                         "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                         "\"y\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24);
            expect_import_error(sd, "model.safetensors", "overlaps", "overlapping tensors");
            write_st_raw(one, "{\"x\":{\"dtype\":\"Q4\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16);
            expect_import_error(sd, "tensor x", "unknown dtype", "unknown dtype");
            free(fb);
            for (int k = 0; k < src.n; k++) free(data[k]);
            free(data); free(o);
            st_close(&src);
            // config.json problems
            snprintf(q, sizeof q, "%s/config.json", sd);
            write_text(q, "{\"model_type\": \"qwen2\", \"vocab_size\": 512");
            expect_import_error(sd, "config.json", "malformed JSON", "malformed config.json");
            write_text(q, "{\"model_type\": \"qwen2\", \"vocab_size\": 512, \"hidden_size\": 32}");
            expect_import_error(sd, "config.json", "num_hidden_layers", "config.json missing a field");
            write_text(q, "{\"model_type\": \"llama\"}");
            expect_import_error(sd, "config.json", "model_type", "config.json of another architecture");
            // a malformed tokenizer.json
            scratch_dir(sd, NULL);
            copy_file(p, one);
            snprintf(q, sizeof q, "%s/tokenizer.json", sd);
            write_text(q, "{\"model\": ");
            expect_import_error(sd, "tokenizer.json", "malformed JSON", "malformed tokenizer.json");
        } else CHECK(0, "open %s: %s", p, err);
        rm_dir(sd);
    }
    expect_import_error("/nonexistent_dir", "/nonexistent_dir", "not a directory", "missing folder");
    rc = convert_export("/nonexistent.bin", exp, NULL, 0, err, sizeof err);
    CHECK(rc != 0 && strstr(err, "/nonexistent.bin"), "export of a missing checkpoint: %s", err);
    ckpt_free(&ck);
    rm_dir(exp);
    remove(bin); remove(bin2);
}

int main(void) {
    test_bytes_tokenizer();
    test_bad_tokenizer_json();
    test_qwen_tokenizer();
    test_convert();
    printf("tokenizer: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
