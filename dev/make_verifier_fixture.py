"""
Reference fixture for test_freeform.c: a tiny random Qwen2 verifier and the next-token log-probs
that transformers' Qwen2ForCausalLM gives to the decision tokens after judge prompts.
Writes into dev/fixtures/:
  verifier_tiny.bin        the model in our checkpoint format (fp32, no tokenizer: the test
                           attaches the byte-level tokenizer, ids 0..255 = bytes)
  verifier_logprobs.json   for each (question, a, b): the rendered prompt and log P(Yes), log P(No)
The prompt is rendered from FF_DEFAULT_JUDGE_TEMPLATE, read out of freeform.h, so the two cannot
drift apart. With a byte vocabulary " Yes" and " No" both start with the space byte, so the
decision tokens are the first bytes of "Yes" and "No" (the rule verifier_load applies).
Run: make fixtures_freeform   (needs torch + transformers; never needed to build or test)
"""
import json
import os
import re
import sys

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import our_tensors, write_checkpoint  # noqa: E402  (the same writer as the other fixtures)

OUT = os.path.join(HERE, "fixtures")
CFG = dict(V=259, C=64, L=2, NH=4, NKV=2, I=128, maxT=1024, tied=True, theta=10000.0)


def default_template():
    """The C string literal FF_DEFAULT_JUDGE_TEMPLATE from freeform.h, unescaped."""
    src = open(os.path.join(HERE, "..", "freeform.h"), encoding="utf-8").read()
    m = re.search(r"#define FF_DEFAULT_JUDGE_TEMPLATE((?:.*\\\n)*.*\n)", src)
    lits = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    esc = {"n": "\n", '"': '"', "\\": "\\", "t": "\t"}
    return "".join(re.sub(r"\\(.)", lambda x: esc[x.group(1)], s) for s in lits)


def render(t, q, a, b):
    # one pass, left to right, as ff_render_judge_prompt (values are never re-scanned)
    return re.sub(r"\{question\}|\{a\}|\{b\}", lambda m: {"{question}": q, "{a}": a, "{b}": b}[m.group(0)], t)


PAIRS = [
    ("What color is the sky on a clear day?", "blue", "It is blue."),
    ("What color is the sky on a clear day?", "It is blue.", "blue"),
    ("What color is the sky on a clear day?", "blue", "green"),
    ("What color is the sky on a clear day?", "green", "azure \u00e9t\u00e9"),
    ("Which gas do plants absorb from the air?", "carbon dioxide", "CO2"),
    ("Which gas do plants absorb from the air?", "CO2", "oxygen"),
    ("Name the largest planet.", "Jupiter", "jupiter"),
]

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(7)
    torch.set_num_threads(1)
    c = CFG
    hf = Qwen2Config(vocab_size=c["V"], hidden_size=c["C"], intermediate_size=c["I"], num_hidden_layers=c["L"],
                     num_attention_heads=c["NH"], num_key_value_heads=c["NKV"], max_position_embeddings=c["maxT"],
                     rms_norm_eps=1e-6, tie_word_embeddings=c["tied"],
                     rope_parameters={"rope_type": "default", "rope_theta": c["theta"]},
                     initializer_range=0.2, use_cache=False, attn_implementation="eager")
    model = Qwen2ForCausalLM(hf).float().eval()
    with torch.no_grad():   # random norms and biases too, so that every parameter matters
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    write_checkpoint(os.path.join(OUT, "verifier_tiny.bin"), c, our_tensors(model, c, "data"))
    tmpl = default_template()
    yes_id, no_id = "Yes".encode()[0], "No".encode()[0]
    out = {"yes_id": yes_id, "no_id": no_id, "pairs": []}
    with torch.no_grad():
        for q, a, b in PAIRS:
            prompt = render(tmpl, q, a, b)
            ids = list(prompt.encode("utf-8"))
            assert len(ids) <= c["maxT"], len(ids)
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            out["pairs"].append(dict(question=q, a=a, b=b, prompt=prompt, n_tokens=len(ids),
                                     lp_yes=lp[yes_id].item(), lp_no=lp[no_id].item()))
    path = os.path.join(OUT, "verifier_logprobs.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    print(f"verifier fixture: {len(PAIRS)} prompts of {min(p['n_tokens'] for p in out['pairs'])}-"
          f"{max(p['n_tokens'] for p in out['pairs'])} tokens, yes/no ids {yes_id}/{no_id}")
