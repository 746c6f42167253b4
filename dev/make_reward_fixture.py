"""
Reference for test_rewards.c: the token-level statistics of the label-free rewards -r entropy (RENT)
and -r certainty (Intuitor), computed by PyTorch from transformers' Qwen2ForCausalLM logits.
Loads dev/fixtures/qwen2_tied.bin (our checkpoint format, doc/formats.md) into transformers, takes
the prompts and greedy responses of dev/fixtures/qwen2_tied_greedy.json (which generate() reproduces
token for token), runs prompt + response through the model once, and writes for every response
position t the entropy H(p_t) and the self-certainty KL(U || p_t) of p_t = softmax(logits_t) at T = 1,
in float64 from the float32 logits, into dev/fixtures/reward_stats.json.
Run: dev/venv/bin/python dev/make_reward_fixture.py   (needs torch, numpy, transformers)
"""
import json
import math
import os

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")


def load_checkpoint(path):
    raw = open(path, "rb").read()
    h = np.frombuffer(raw[:1024], dtype="<i4")
    assert h[2] == 0, "fp32 checkpoint expected"
    V, C, L, NH, NKV, I, maxT, tied = (int(x) for x in h[3:11])
    theta = float(np.frombuffer(raw[48:52], dtype="<f4")[0])
    eps = float(np.frombuffer(raw[52:56], dtype="<f4")[0])
    HD = int(h[14])
    assert h[15] == 0, "a checkpoint without a tokenizer blob expected"
    p = np.frombuffer(raw[1024:], dtype="<f4")
    cfg = Qwen2Config(vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=NKV, max_position_embeddings=maxT,
                      rms_norm_eps=eps, tie_word_embeddings=bool(tied),
                      rope_parameters={"rope_type": "default", "rope_theta": theta},
                      use_cache=False, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).float().eval()
    off = [0]

    def take(*shape):
        n = int(np.prod(shape))
        t = torch.from_numpy(p[off[0]:off[0] + n].copy()).reshape(shape)
        off[0] += n
        return t

    QKV = (NH + 2 * NKV) * HD
    m = model.model
    with torch.no_grad():
        m.embed_tokens.weight.copy_(take(V, C))
        ln1, qkvw, qkvb = take(L, C), take(L, QKV, C), take(L, QKV)
        projw, ln2, fcw, fcpw = take(L, C, NH * HD), take(L, C), take(L, 2 * I, C), take(L, C, I)
        for l, layer in enumerate(m.layers):
            a = layer.self_attn
            layer.input_layernorm.weight.copy_(ln1[l])
            q, k = NH * HD, NKV * HD
            a.q_proj.weight.copy_(qkvw[l, :q]); a.k_proj.weight.copy_(qkvw[l, q:q + k])
            a.v_proj.weight.copy_(qkvw[l, q + k:])
            a.q_proj.bias.copy_(qkvb[l, :q]);
            a.k_proj.bias.copy_(qkvb[l, q:q + k]); a.v_proj.bias.copy_(qkvb[l, q + k:])
            a.o_proj.weight.copy_(projw[l])
            layer.post_attention_layernorm.weight.copy_(ln2[l])
            layer.mlp.gate_proj.weight.copy_(fcw[l, :I]); layer.mlp.up_proj.weight.copy_(fcw[l, I:])
            layer.mlp.down_proj.weight.copy_(fcpw[l])
        m.norm.weight.copy_(take(C))
        if not tied:
            model.lm_head.weight.copy_(take(V, C))
        else:
            model.lm_head.weight = m.embed_tokens.weight
    assert off[0] == len(p), "parameter count mismatch"
    return model, V


def main():
    model, V = load_checkpoint(os.path.join(FIX, "qwen2_tied.bin"))
    g = json.load(open(os.path.join(FIX, "qwen2_tied_greedy.json")))
    out = {"source": "qwen2_tied.bin + qwen2_tied_greedy.json", "V": V, "responses": []}
    with torch.no_grad():
        for prompt, resp in zip(g["prompts"], g["outputs"]):
            x = torch.tensor([prompt + resp])
            logits = model(x).logits[0].double()                  # float32 logits, then float64 math
            rows = logits[len(prompt) - 1: len(prompt) - 1 + len(resp)]   # the rows that sampled resp
            assert rows.argmax(-1).tolist() == resp, "the greedy fixture does not match this model"
            logp = torch.log_softmax(rows, dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)                  # H(p_t)
            certainty = -math.log(V) - logp.mean(-1)                # KL(U || p_t) = -log V - (1/V) sum log p_t
            out["responses"].append({"prompt": prompt, "tokens": resp, "entropy": entropy.tolist(),
                                     "certainty": certainty.tolist()})
    path = os.path.join(FIX, "reward_stats.json")
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(path + ".tmp", path)
    print("wrote", path, [len(r["tokens"]) for r in out["responses"]])


if __name__ == "__main__":
    main()
