// fuzz_tokenizer.c: libFuzzer target for tokenizer.h (build and run: make fuzz_tokenizer / make fuzz).
// The first input byte picks what to do with the rest:
//   0, 1: encode with the Qwen2 tokenizer (allow_special = bit 0) and check the invariants:
//         every id is a real token, decode(encode(x)) == NFC(x) with added tokens kept verbatim,
//         the heap merge path gives the scan path's ids, allow_special=0 yields no added token;
//   2:    the same with the byte-level tokenizer (no NFC: decode(encode(x)) == x);
//   3:    patch a valid blob with (offset, byte) pairs from the input, load it, and encode.
// The Qwen2 tokenizer comes from ../shared when present, else the hf_tiny fixture's.
#include "../../empoc/tokenizer.h"

static Tokenizer qwen, bytes_tok;
static unsigned char *blob;
static size_t blob_n;

static void die(const char *m) { fprintf(stderr, "fuzz_tokenizer: %s\n", m); abort(); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    char err[512];
    (void)argc; (void)argv;
    if (tokenizer_load_json(&qwen, "../shared/qwen2_tokenizer/tokenizer.json", err, sizeof err) &&
        tokenizer_load_json(&qwen, "dev/fixtures/hf_tiny/tokenizer.json", err, sizeof err)) die(err);
    if (tokenizer_init_bytes(&bytes_tok)) die("init_bytes");
    Tokenizer tiny;
    if (tokenizer_load_json(&tiny, "dev/fixtures/hf_tiny/tokenizer.json", err, sizeof err)) die(err);
    blob = tokenizer_to_blob(&tiny, &blob_n);
    tokenizer_free(&tiny);
    return 0;
}

static void check_roundtrip(const Tokenizer *t, const unsigned char *s, size_t n, int allow) {
    int *ids;
    int m = tokenizer_encode(t, (const char *)s, n, allow, &ids);
    if (m < 0) die("encode failed");
    for (int i = 0; i < m; i++) {
        int l;
        if (!tokenizer_token(t, ids[i], &l) || l <= 0) die("id without bytes");
        if (!allow && (t->flags[ids[i]] & TOK_F_ADDED)) die("added token with allow_special=0");
    }
    // expected: NFC of each stretch between added tokens, the added tokens verbatim
    tok__bvec want = {NULL, 0, 0};
    size_t seg = 0, i = 0;
    while (i <= n) {
        size_t L = 0;
        int id = -1;
        if (i < n && allow && t->n_added && t->added_first[s[i]]) id = tok__added_at(t, s + i, n - i, &L);
        if (id < 0 && i < n) { i++; continue; }
        if (t->nfc && !tok__nfc_quick(s + seg, i - seg)) {
            unsigned char *o; size_t on;
            if (tok__nfc(s + seg, i - seg, &o, &on)) die("nfc failed");
            tok__bput(&want, o, on); free(o);
        } else tok__bput(&want, s + seg, i - seg);
        if (id < 0) break;
        tok__bput(&want, s + i, L);
        i += L; seg = i;
    }
    size_t dl;
    char *dec = tokenizer_decode(t, ids, m, &dl);
    if (dl != want.n || (dl && memcmp(dec, want.v, dl))) die("decode(encode(x)) != NFC(x)");
    free(dec); free(want.v);
    tok_scan_max = 1;
    int *ids2, m2 = tokenizer_encode(t, (const char *)s, n, allow, &ids2);
    tok_scan_max = TOK_SCAN_MAX;
    if (m2 != m || memcmp(ids, ids2, (size_t)m * sizeof(int))) die("heap path differs from scan path");
    free(ids2); free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] & 3;
    const unsigned char *s = data + 1;
    size_t n = size - 1;
    if (mode <= 1) check_roundtrip(&qwen, s, n, mode);
    else if (mode == 2) {
        check_roundtrip(&bytes_tok, s, n, 1);
        int *ids; size_t dl;
        int m = tokenizer_encode(&bytes_tok, (const char *)s, n, 0, &ids);
        char *dec = tokenizer_decode(&bytes_tok, ids, m, &dl);
        if (dl != n || (n && memcmp(dec, s, n))) die("byte tokenizer round trip");
        free(dec); free(ids);
    } else {
        unsigned char *b = (unsigned char *)malloc(blob_n);
        memcpy(b, blob, blob_n);
        size_t bn = blob_n;
        for (size_t i = 0; i + 3 <= n; i += 3) {
            size_t at = ((size_t)s[i] | ((size_t)s[i + 1] << 8)) % (blob_n + 1);
            if (at == blob_n) { bn = s[i + 2] % (blob_n + 1); continue; }   // truncate instead
            b[at] = s[i + 2];
        }
        Tokenizer t; char err[256];
        if (tokenizer_from_blob(&t, b, bn, err, sizeof err) == 0) {
            check_roundtrip(&t, s, n, 1);
            tokenizer_free(&t);
        }
        free(b);
    }
    return 0;
}
