#!/usr/bin/env python3
"""Makes the tokenizer fixtures test_tokenizer.c checks against, with the real HF packages.

  /opt/pyref/bin/python dev/make_tokenizer_fixtures.py      (or: make fixtures_tokenizer)

Reads ../shared/qwen2_tokenizer and ../shared/data (relative to the project root). Writes:
  dev/fixtures/tok_adversarial.jsonl  {"text", "nfc", "ids"} per case: hand-written hard cases
                                      plus seeded random mixes; full ids from `tokenizers`.
  dev/fixtures/tok_corpus.txt         "SOURCE INDEX N_IDS FNV_IDS FNV_NFC" per problem of math500
                                      and the first 2000 of numina_20k: FNV-1a 64 over the ids as
                                      little-endian int32, and over the NFC text's UTF-8 bytes.
  dev/fixtures/tok_chat.jsonl         {"problem", "cot", "plain"}: apply_chat_template ids.
  dev/fixtures/tok_fuzz_seeds/        starting inputs for the fuzzers (dev/fuzz/): a few texts with
                                      the mode byte in front, a small safetensors file.
"""
import json
import os
import random
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared')
OUT = os.path.join(ROOT, 'dev', 'fixtures')
TOK_DIR = os.path.join(SHARED, 'qwen2_tokenizer')

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
COT_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
# The ChatML template tokenizer.h documents (also written by `convert export`): [system, user]
# gives the CoT prompt, [user] alone the plain one.
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- "
          "endif %}")


def fnv64(data):
    h = 1469598103934665603
    for b in data:
        h ^= b
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def fnv_ids(ids):
    return fnv64(struct.pack('<%di' % len(ids), *ids))


ADVERSARIAL = [
    "", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", " \n", "\n ", " \n ", "a\r\n\r\nb", "x \r\n  y",
    "Hello world", "Hello  world", "Hello   world   ", "   leading", "trailing   ", "\t\ttabs\tand  spaces \t",
    "line1\nline2\n\nline4\n", "a \n\n b", "word\n\n\n\n\nword", "  \n  \n  x", "\u00a0nbsp\u00a0word\u3000ideo",
    "x\u2028y\u2029z\u0085w", "\u000b\u000cvt ff", "\u001c\u001d\u001e\u001fseps", "x \u200by", "a\u2003b\u202fc",
    "I'm you're he's she'd we'll they've don't can't", "I'M YOU'RE HE'S SHE'D WE'LL THEY'VE DON'T",
    "It'S wE'Ll tHey'Ve I'd'm'x", "'s 'S 'tis 're 'll 'd'", "x'ſa K'Kelvin", "rock 'n' roll", "''''",
    "0123456789", "3.14159 2,718 1e-10 -42 +7", "１２３ full-width ４５６", "٣٤٥ Arabic-Indic", "Ⅻ roman ½ ¾ ²³",
    "x^2 + y^2 = z^2", "$\\frac{1}{2}$", "\\[\\sum_{k=1}^{\\infty} \\frac{1}{k^2} = \\frac{\\pi^2}{6}\\]",
    "\\begin{align*}\n  a &= b \\\\\n  c &= d\n\\end{align*}", "$$\\boxed{42}$$", "f(x)=\\ln x-\\tfrac12 a(x-1)",
    "!!!???...,,,;;;::", "...\n", "(a)(b)[c]{d}", "--->  <---", "a-b_c.d/e\\f", "\"quoted\" 'single'",
    "中文测试：数学问题。", "日本語のテキスト、ひらがなとカタカナ。", "한국어 텍스트 테스트", "混合English和中文123",
    "emoji 😀😃😄 👍🏽", "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 🧑🏿‍💻", "flags 🇺🇸🇯🇵", "keycap 1️⃣ #️⃣",
    "cafe\u0301 nai\u0308ve re\u0301sume\u0301", "A\u030a \u212b \u00c5", "e\u0323\u0302 \u1ec7", "q\u0307\u0323",
    "\u1100\u1161\u11a8 \uac00\u11a8", "\u0958 \u0915\u093c", "\u2126 ohm \u00b4 acute", "\u0344\u0340\u0341",
    "ﬁ ligature ﬀ ﬃ", "Ǆ ǅ ǆ", "ÀÉÎÕÜ àéîõü", "Ελληνικά κείμενα", "Кириллица текст", "עברית טקסט", "العربية نص",
    "हिन्दी पाठ", "ไทย ข้อความ", "ᚠᛇᚻ runes", "𝔸𝕓𝕔 math alnum 𝟙𝟚", "𐍈 gothic", "\U0001F600\U0001F3FB",
    "control\x01\x02\x07\x1b[0m chars\x7f", "\x00nul", "tab\there", "bell\x07", "\ufeffBOM", "\ufffd replacement",
    "<|im_start|>system\nhi<|im_end|>\n<|im_start|>user\nq<|im_end|>", "<|endoftext|><|endoftext|>", "a<|im_end|>b",
    "<|im_start", "<|im_end|", "< |im_end|>", "<|fim_prefix|>x<|fim_suffix|>y<|fim_middle|>", "<think>\nhm\n</think>",
    "<tool_call>{}</tool_call>", "<|<|im_end|>|>", "a" * 93,
    " " * 100, "\n" * 70, "=" * 80, "-" * 150, "ab" * 60, "9" * 40, "\u00e9" * 50, "e\u0301" * 30, "😀" * 30,
    "Let's think step by step and output the final answer within \\boxed{}.",
    "Supercalifragilisticexpialidocious" * 4, "http://example.com/path?q=1&r=2#frag", "user@example.org",
]

PALETTE = (list("abcXYZ019 '\t\n\r.,;!?$\\{}^_-+=()") + [" ", "  ", "\n\n", "\r\n", "'s", "'LL", "'ve"] +
           ["\u00a0", "\u3000", "\u2028", "\u0085", "\u200b", "é", "e\u0301", "\u0301", "\u0323", "A\u030a", "\u212b",
            "中", "文", "ひ", "한", "\u1100", "\u1161", "\u11a8", "Ж", "λ", "ß", "ſ", "½", "²", "٣", "१", "Ⅻ",
            "😀", "👍", "\U0001F3FD", "\u200d", "\ufe0f", "🇺", "\x01", "\x7f", "\u0300", "\u05d0", "\u0627",
            "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "\\frac", "\\boxed{", "1/2", "   ", "\t\t"])


def write_fuzz_seeds():
    d = os.path.join(OUT, 'tok_fuzz_seeds')
    os.makedirs(d, exist_ok=True)
    texts = ["Hello world, it's 3.14!\n", "cafe\u0301 \u1100\u1161\u11a8 \U0001F468\u200d\U0001F469",
             "<|im_start|>user\nx<|im_end|>\n", "\\frac{1}{2}  \t\r\n\n  x", "'S 'll 'Ve \u017f"]
    for i, t in enumerate(texts):
        with open(os.path.join(d, 'text%d' % i), 'wb') as f:
            f.write(bytes([i % 3]) + t.encode('utf-8'))
    with open(os.path.join(d, 'blob_patch'), 'wb') as f:
        f.write(bytes([3, 20, 0, 7, 40, 0, 1]) + b'abc def')
    hdr = json.dumps({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                      "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
                      "c": {"dtype": "F16", "shape": [1], "data_offsets": [22, 24]}}, separators=(',', ':')).encode()
    hdr += b' ' * (-len(hdr) % 8)
    with open(os.path.join(d, 'small.safetensors'), 'wb') as f:
        f.write(struct.pack('<Q', len(hdr)) + hdr + struct.pack('<4f', 1, -2, 3.5, 0) + bytes(range(8)))


def main():
    write_fuzz_seeds()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(TOK_DIR, 'tokenizer.json'))
    norm = tok.normalizer
    os.makedirs(OUT, exist_ok=True)

    rng = random.Random(1234)
    cases = list(ADVERSARIAL)
    for _ in range(400):
        cases.append(''.join(rng.choice(PALETTE) for _ in range(rng.randint(1, 30))))
    with open(os.path.join(OUT, 'tok_adversarial.jsonl'), 'w', encoding='utf-8') as f:
        for s in cases:
            ids = tok.encode(s).ids
            # NFC as the tokenizer applies it: per stretch between added tokens
            f.write(json.dumps({"text": s, "nfc": norm.normalize_str(s), "ids": ids}, ensure_ascii=False) + '\n')

    lines = []
    for src, path, limit in (("math500", "math500.jsonl", None), ("numina", "numina_20k.jsonl", 2000)):
        with open(os.path.join(SHARED, 'data', path), encoding='utf-8') as f:
            probs = [json.loads(l)["problem"] for l in f if l.strip()]
        if limit:
            probs = probs[:limit]
        encs = tok.encode_batch(probs)
        for i, (p, e) in enumerate(zip(probs, encs)):
            lines.append("%s %d %d %016x %016x" % (src, i, len(e.ids), fnv_ids(e.ids),
                                                   fnv64(norm.normalize_str(p).encode('utf-8'))))
    with open(os.path.join(OUT, 'tok_corpus.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')

    from transformers import AutoTokenizer
    at = AutoTokenizer.from_pretrained(TOK_DIR)
    with open(os.path.join(SHARED, 'data', 'math500.jsonl'), encoding='utf-8') as f:
        probs = [json.loads(l)["problem"] for l in f if l.strip()][:6]
    probs.append("Compute $\\sqrt{2}$ to 3 digits.\n\nAnswer:  ")
    probs.append("中文问题：求 $x^2=4$ 的解。 😀")

    def ids_of(msgs, template=None):
        r = at.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, chat_template=template)
        if isinstance(r, dict) or hasattr(r, 'keys'):
            r = r["input_ids"]
        return list(r)

    with open(os.path.join(OUT, 'tok_chat.jsonl'), 'w', encoding='utf-8') as f:
        for p in probs:
            cot = ids_of([{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": p + COT_SUFFIX}])
            cot2 = ids_of([{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": p + COT_SUFFIX}],
                          CHATML)
            assert cot == cot2, "the shipped chat template and our ChatML template disagree"
            plain = ids_of([{"role": "user", "content": p}], CHATML)
            f.write(json.dumps({"problem": p, "cot": cot, "plain": plain}, ensure_ascii=False) + '\n')
    print("wrote %d adversarial cases, %d corpus lines, %d chat prompts" % (len(cases), len(lines), len(probs)),
          file=sys.stderr)


if __name__ == '__main__':
    main()
