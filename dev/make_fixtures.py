"""
Reference fixtures for test_empo.c, made with PyTorch and transformers' own Qwen2ForCausalLM.
For each config it writes into dev/fixtures/:
  NAME.bin        the model in our checkpoint format (fp32, see doc/formats.md)
  NAME_state.bin  inputs, targets, mask, logits, loss, every parameter gradient (in our fused
                  layout), and the losses of 10 torch.optim.AdamW steps with grad-norm clipping.
Run: make fixtures   (needs torch + transformers; never needed to build or test)
"""
import json
import os
import struct
import sys

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")

CKPT_MAGIC = 0x4F504D45
CKPT_VERSION = 1
STATE_MAGIC = 0x54534D45  # "EMST"
STATE_VERSION = 1

# the two configs of the issue: tied + GQA + bias, and untied + nh == nkv + odd sizes
CONFIGS = {
    "qwen2_tied": dict(V=128, C=64, L=2, NH=4, NKV=2, I=96, maxT=64, tied=True, theta=10000.0, B=2, T=16),
    "qwen2_untied": dict(V=101, C=30, L=2, NH=3, NKV=3, I=50, maxT=48, tied=False, theta=1000000.0, B=3, T=37),
}
OPT = dict(lr=2e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0, steps=10)


def i32(x):
    return struct.pack("<i", x)


def f32bits(x):
    return struct.unpack("<i", struct.pack("<f", x))[0]


def our_tensors(model, cfg, attr):
    """The model's parameters (attr="data") or gradients (attr="grad") in checkpoint order, flat float32."""
    def f(t):
        return getattr(t, attr).detach().float().cpu().numpy()

    m = model.model
    layers = m.layers
    out = [f(m.embed_tokens.weight)]
    out.append(np.stack([f(l.input_layernorm.weight) for l in layers]))
    out.append(np.stack([np.concatenate([f(l.self_attn.q_proj.weight), f(l.self_attn.k_proj.weight),
                                         f(l.self_attn.v_proj.weight)]) for l in layers]))
    out.append(np.stack([np.concatenate([f(l.self_attn.q_proj.bias), f(l.self_attn.k_proj.bias),
                                         f(l.self_attn.v_proj.bias)]) for l in layers]))
    out.append(np.stack([f(l.self_attn.o_proj.weight) for l in layers]))
    out.append(np.stack([f(l.post_attention_layernorm.weight) for l in layers]))
    out.append(np.stack([np.concatenate([f(l.mlp.gate_proj.weight), f(l.mlp.up_proj.weight)]) for l in layers]))
    out.append(np.stack([f(l.mlp.down_proj.weight) for l in layers]))
    out.append(f(m.norm.weight))
    if not cfg["tied"]:
        out.append(f(model.lm_head.weight))
    return np.concatenate([x.reshape(-1) for x in out]).astype(np.float32)


def write_checkpoint(path, cfg, params):
    hd = cfg["C"] // cfg["NH"]
    h = [0] * 256
    h[0] = CKPT_MAGIC - (1 << 32) if CKPT_MAGIC >= (1 << 31) else CKPT_MAGIC
    h[1] = CKPT_VERSION
    h[2] = 0  # fp32
    h[3:12] = [cfg["V"], cfg["C"], cfg["L"], cfg["NH"], cfg["NKV"], cfg["I"], cfg["maxT"], int(cfg["tied"]), 1]
    h[12] = f32bits(cfg["theta"])
    h[13] = f32bits(1e-6)
    h[14] = hd
    h[15] = 0  # no tokenizer
    h[16] = 0  # no EOS ids
    for i in range(17, 21):
        h[i] = -1
    with open(path + ".tmp", "wb") as f:
        f.write(b"".join(i32(x) for x in h))
        f.write(params.astype("<f4").tobytes())
    os.replace(path + ".tmp", path)


def masked_nll(logits, targets, mask):
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    w = mask * (targets >= 0).float()
    return -(w * logp).sum() / w.sum()


def greedy_fixture(model, path, V, seed):
    """transformers' greedy generate() on prompts of different lengths, one prompt at a time (so
    no padding conventions get involved). The EOS id is picked from a first run so that one
    response really stops early and the others run to max_new."""
    g = torch.Generator().manual_seed(seed + 7)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (3, 7, 12, 1)]
    max_new = 20

    def run(eos):
        outs = []
        for p in prompts:
            x = torch.tensor([p])
            y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                               eos_token_id=eos, pad_token_id=eos if eos is not None else 0, use_cache=True)
            outs.append(y[0, len(p):].tolist())
        return outs

    with torch.no_grad():
        first = run(None)
        eos = first[1][9]  # prompt 1 stops at (or before) its 10th token
        outs = run(eos)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"eos": eos, "max_new": max_new, "prompts": prompts, "outputs": outs}, f)
    os.replace(tmp, path)


def policy_fixture(model, cfg, path, seed):
    """The EMPO policy loss on fixed rollouts, and every parameter gradient, in three variants:
    the paper's default, with PPO clipping, and with a k3 KL penalty to a reference policy."""
    g = torch.Generator().manual_seed(seed + 11)
    B, T, V = 4, 20, cfg["V"]
    inputs = torch.randint(0, V, (B, T), generator=g)
    targets = torch.cat([inputs[:, 1:], torch.randint(0, V, (B, 1), generator=g)], dim=1)
    prompt_len = [3, 6, 2, 9]
    resp_len = [12, 9, 17, 6]
    mask = torch.zeros(B, T)
    for b in range(B):
        mask[b, prompt_len[b] - 1:prompt_len[b] - 1 + resp_len[b]] = 1.0
        targets[b, prompt_len[b] - 1 + resp_len[b]:] = -1
    adv = torch.tensor([1.3, -0.4, 0.0, -0.9])
    with torch.no_grad():
        lp0 = torch.log_softmax(model(input_ids=inputs).logits.float(), -1).gather(-1,
                targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    old_logp = lp0 + 0.3 * torch.randn(B, T, generator=g)   # so that ratios leave the clip range
    ref_logp = lp0 + 0.5 * torch.randn(B, T, generator=g)
    variants = [("default", 0.0, 0.0), ("clip", 0.2, 0.0), ("kl", 0.0, 0.05)]
    out = []
    for _, eps, beta in variants:
        model.zero_grad(set_to_none=True)
        logp = torch.log_softmax(model(input_ids=inputs).logits.float(), -1).gather(-1,
                targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        A = adv[:, None]
        if eps > 0:
            ratio = torch.exp(logp - old_logp)
            obj = torch.min(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
        else:
            obj = torch.exp(logp - logp.detach()) * A
        per_tok = -obj
        if beta > 0:
            d = ref_logp - logp
            per_tok = per_tok + beta * (torch.exp(d) - d - 1)
        loss = ((per_tok * mask).sum(1) / mask.sum(1)).mean()
        loss.backward()
        out.append((loss.item(), our_tensors(model, cfg, "grad")))
    model.zero_grad(set_to_none=True)
    h = [0] * 16
    h[0] = 0x4C4F504D  # "MPOL"
    h[1], h[2], h[3] = 1, B, T
    with open(path + ".tmp", "wb") as f:
        f.write(b"".join(i32(x) for x in h))
        f.write(inputs.numpy().astype("<i4").tobytes())
        f.write(targets.numpy().astype("<i4").tobytes())
        f.write(mask.numpy().astype("<f4").tobytes())
        f.write(adv.numpy().astype("<f4").tobytes())
        f.write(old_logp.numpy().astype("<f4").tobytes())
        f.write(ref_logp.numpy().astype("<f4").tobytes())
        for (name, eps, beta), (loss, grads) in zip(variants, out):
            f.write(np.array([eps, beta, loss], dtype="<f4").tobytes())
            f.write(grads.astype("<f4").tobytes())
    os.replace(path + ".tmp", path)
    print("policy fixture:", ", ".join(f"{v[0]} loss {o[0]:.6f}" for v, o in zip(variants, out)))


def make(name, cfg, seed):
    torch.manual_seed(seed)
    hf = Qwen2Config(vocab_size=cfg["V"], hidden_size=cfg["C"], intermediate_size=cfg["I"],
                     num_hidden_layers=cfg["L"], num_attention_heads=cfg["NH"], num_key_value_heads=cfg["NKV"],
                     max_position_embeddings=cfg["maxT"], rms_norm_eps=1e-6, tie_word_embeddings=cfg["tied"],
                     rope_parameters={"rope_type": "default", "rope_theta": cfg["theta"]},
                     initializer_range=0.2, use_cache=False, attn_implementation="eager")
    model = Qwen2ForCausalLM(hf).float()
    # Random norms and biases too (they init to 1 and 0), so every parameter is exercised.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    params = our_tensors(model, cfg, "data")
    write_checkpoint(os.path.join(OUT, name + ".bin"), cfg, params)

    if name == "qwen2_tied":
        greedy_fixture(model, os.path.join(OUT, name + "_greedy.json"), cfg["V"], seed)
    else:
        policy_fixture(model, cfg, os.path.join(OUT, name + "_policy.bin"), seed)

    B, T, V = cfg["B"], cfg["T"], cfg["V"]
    g = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = -1  # some positions without a target
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[1, 5] = 0.5  # a fractional weight

    model.train()  # no dropout in Qwen2; train() only for clarity
    logits = model(input_ids=inputs).logits
    loss = masked_nll(logits, targets, mask)
    loss.backward()
    grads = our_tensors(model, cfg, "grad")
    logits_np = logits.detach().float().numpy().astype(np.float32)

    # 10 AdamW steps with clipping, from the same start; record the loss before each step
    opt = torch.optim.AdamW(model.parameters(), lr=OPT["lr"], betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"], foreach=False)
    losses = []
    for _ in range(OPT["steps"]):
        opt.zero_grad(set_to_none=True)
        l = masked_nll(model(input_ids=inputs).logits, targets, mask)
        l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["clip"])
        opt.step()
        losses.append(l.item())

    h = [0] * 256
    h[0] = STATE_MAGIC; h[1] = STATE_VERSION; h[2] = B; h[3] = T; h[4] = OPT["steps"]
    h[5] = f32bits(OPT["lr"]); h[6] = f32bits(OPT["beta1"]); h[7] = f32bits(OPT["beta2"])
    h[8] = f32bits(OPT["eps"]); h[9] = f32bits(OPT["weight_decay"]); h[10] = f32bits(OPT["clip"])
    path = os.path.join(OUT, name + "_state.bin")
    with open(path + ".tmp", "wb") as f:
        f.write(b"".join(i32(x) for x in h))
        f.write(inputs.numpy().astype("<i4").tobytes())
        f.write(targets.numpy().astype("<i4").tobytes())
        f.write(mask.numpy().astype("<f4").tobytes())
        f.write(logits_np.astype("<f4").tobytes())
        f.write(np.array([loss.item()], dtype="<f4").tobytes())
        f.write(grads.astype("<f4").tobytes())
        f.write(np.array(losses, dtype="<f4").tobytes())
    os.replace(path + ".tmp", path)
    print(f"{name}: {params.size} params, loss {loss.item():.6f}, step losses {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        make(name, cfg, seed=42 + i)
    sys.exit(0)
