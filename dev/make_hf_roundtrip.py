#!/usr/bin/env python3
"""Makes dev/fixtures/hf_tiny (a tiny random Qwen2ForCausalLM saved by transformers) and checks the
C converter round trip on the Python side.

  /opt/pyref/bin/python dev/make_hf_roundtrip.py     (or: make fixtures_tokenizer; needs ./convert)

Why this shape: the real 151,936-row vocabulary would make even a hidden-8 model ~2.4 MB, so the
fixture uses a cut-down Qwen2 tokenizer instead: the 256 byte tokens plus the first 240 merges of
the real tokenizer.json (the same normalizer, pre-tokenizer and decoder), and <|endoftext|>,
<|im_start|>, <|im_end|> at 496..498; the model's vocab_size is 512, so rows 499..511 are unused
like Qwen2.5's padding rows. hidden 32, 2 layers, 4 query / 2 key-value heads (GQA), q/k/v biases,
untied lm_head, all weights random (also the norms and biases, so a mapping mistake shows). fp32.

Writes into dev/fixtures/hf_tiny: config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json (from save_pretrained / tokenizers), and ref.json (input ids)
+ ref_logits.bin (float32, T x vocab) from transformers' forward pass, which test_tokenizer.c
compares with the C forward after `convert import`.

Then, with ./convert: import -> export, load the exported folder with AutoModelForCausalLM and
AutoTokenizer, and check the logits and token ids equal the originals. The same is done with the
real Qwen2 tokenizer (from ../shared) on a throwaway model with the full vocabulary (not saved).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, 'dev', 'fixtures', 'hf_tiny')
TOK_DIR = os.path.join(ROOT, '..', 'shared', 'qwen2_tokenizer')
CONVERT = os.path.join(ROOT, 'convert')
N_MERGES = 240
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- "
          "endif %}")
COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
COT_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
PROBLEM = "If $x^2 + 2x = 8$ and $x > 0$, what is $x$?  Don't guess: it's 2, isn't it?"


def tiny_tokenizer_json():
    with open(os.path.join(TOK_DIR, 'tokenizer.json'), encoding='utf-8') as f:
        tj = json.load(f)
    vocab = tj['model']['vocab']
    keep = 256 + N_MERGES
    merges = tj['model']['merges'][:N_MERGES]
    small = {k: v for k, v in vocab.items() if v < keep}
    for a, b in merges:   # the first merges build only tokens below `keep` (merge r makes id 256 + r)
        assert small[a + b] < keep
    tj['model']['vocab'] = small
    tj['model']['merges'] = merges
    tj['added_tokens'] = [{"id": keep + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                           "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    return tj


def tokenizer_config(max_len):
    return {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(256 + N_MERGES + i): {"content": s, "lstrip": False, "normalized": False,
                                                            "rstrip": False, "single_word": False, "special": True}
                                 for i, s in enumerate(SPECIALS)},
        "bos_token": None, "chat_template": CHATML, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": max_len, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }


def randomize(model, torch, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('norm.weight'):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def chat_ids(tok, problem):
    r = tok.apply_chat_template([{"role": "system", "content": COT_SYSTEM},
                                 {"role": "user", "content": problem + COT_SUFFIX}],
                                add_generation_prompt=True, tokenize=True)
    if hasattr(r, 'keys'):
        r = r["input_ids"]
    return list(r)


def logits_of(model, torch, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def run(*args):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("FAILED: %s\n%s%s" % (' '.join(args), r.stdout, r.stderr))
    return r.stdout


def roundtrip(src_dir, torch, texts, ids, ref_logits, label):
    """convert import -> export; transformers loads the result; same logits, same token ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tmp = tempfile.mkdtemp()
    try:
        binp, exp = os.path.join(tmp, 'm.bin'), os.path.join(tmp, 'hf')
        run(CONVERT, 'import', src_dir, binp, 'fp32')
        run(CONVERT, 'export', binp, exp)
        m2 = AutoModelForCausalLM.from_pretrained(exp, dtype=torch.float32)
        diff = (logits_of(m2, torch, ids) - ref_logits).abs().max().item()
        t1, t2 = AutoTokenizer.from_pretrained(src_dir), AutoTokenizer.from_pretrained(exp)
        bad = sum(t1(s)["input_ids"] != t2(s)["input_ids"] for s in texts)
        same_chat = chat_ids(t1, PROBLEM) == chat_ids(t2, PROBLEM)
        print("%s: exported model logits max |diff| = %.3g; exported tokenizer differs on %d of %d texts; chat "
              "template %s"
              % (label, diff, bad, len(texts), "equal" if same_chat else "DIFFERS"))
        return diff == 0.0 and bad == 0 and same_chat
    finally:
        shutil.rmtree(tmp)


def main():
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    tj = tiny_tokenizer_json()
    Tokenizer.from_str(json.dumps(tj)).save(os.path.join(OUT, 'tokenizer.json'))
    with open(os.path.join(OUT, 'tokenizer_config.json'), 'w') as f:
        json.dump(tokenizer_config(256), f, indent=2)
    cfg = Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, bos_token_id=256 + N_MERGES, eos_token_id=256 + N_MERGES + 2)
    model = Qwen2ForCausalLM(cfg).float().eval()
    randomize(model, torch, 1)
    model.save_pretrained(OUT, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(OUT)
    ids = chat_ids(tok, PROBLEM)
    assert len(ids) <= 256, len(ids)
    logits = logits_of(model, torch, ids)
    logits.numpy().astype('<f4').tofile(os.path.join(OUT, 'ref_logits.bin'))
    with open(os.path.join(OUT, 'ref.json'), 'w') as f:
        json.dump({"problem": PROBLEM, "ids": ids, "T": len(ids), "V": cfg.vocab_size}, f)
    print("wrote %s: T=%d, logits range [%.2f, %.2f]" % (OUT, len(ids), logits.min().item(), logits.max().item()))

    if not os.path.exists(CONVERT):
        sys.exit("build ./convert (make convert) to run the round-trip checks")
    with open(os.path.join(ROOT, 'dev', 'fixtures', 'tok_adversarial.jsonl'), encoding='utf-8') as f:
        texts = [json.loads(l)["text"] for l in f]
    ok = roundtrip(OUT, torch, texts, ids, logits, "hf_tiny")

    # the real tokenizer through import/export, on a throwaway full-vocabulary model
    tmp = tempfile.mkdtemp()
    try:
        big = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                           tie_word_embeddings=True)).float().eval()
        randomize(big, torch, 2)
        big.save_pretrained(tmp, safe_serialization=True)
        for fn in ('tokenizer.json', 'tokenizer_config.json'):
            shutil.copy(os.path.join(TOK_DIR, fn), tmp)
        t = AutoTokenizer.from_pretrained(tmp)
        bids = chat_ids(t, PROBLEM)
        ok = roundtrip(tmp, torch, texts, bids, logits_of(big, torch, bids), "qwen2 tokenizer, tied, V=151936") and ok
    finally:
        shutil.rmtree(tmp)
    print("round trip OK" if ok else "round trip FAILED")
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
