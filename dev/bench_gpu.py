"""
The GPU baseline for train_empo_cu: transformers' Qwen2ForCausalLM in bf16 with sdpa attention and
torch.optim.AdamW(fused=True), one training step = forward + backward + AdamW on random tokens,
at the shape of Qwen2.5-Math-1.5B (random init). Prints tokens/s, MFU and peak memory, and appends
one JSON line to --json. dev/gpu_check.sh runs it right after ./train_empo_cu on the same GPU.

MFU uses the same FLOP count as train_empo.cu's flops_per_token: 6 per matmul weight (LM head
included even when tied) plus 6 * NH * HD * T per layer for causal attention, against 989 TFLOP/s
(H100/H200 SXM dense bf16).
"""
import argparse
import json
import sys
import time

QWEN_1_5B = dict(V=151936, C=1536, L=28, NH=12, NKV=2, I=8960)


def flops_per_token(c, T):
    HD = c["C"] // c["NH"]
    qkv = (c["NH"] + 2 * c["NKV"]) * HD
    nhd = c["NH"] * HD
    matmul = c["L"] * (qkv * c["C"] + c["C"] * nhd + 3 * c["I"] * c["C"]) + c["V"] * c["C"]
    return 6.0 * matmul + 6.0 * c["L"] * nhd * T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-B", type=int, default=8)
    ap.add_argument("-T", type=int, default=1024)
    ap.add_argument("-x", "--steps", type=int, default=10, help="steps; the first 2 are warm-up")
    ap.add_argument("--json", default=None, help="append the result as one JSON line")
    ap.add_argument("--compile", action="store_true",
                    help="also torch.compile the model (off by default: HF eager is the baseline)")
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = QWEN_1_5B
    # rope theta 10000 and rms eps 1e-6 are Qwen2Config's defaults (and Qwen2.5-Math-1.5B's)
    cfg = Qwen2Config(vocab_size=c["V"], hidden_size=c["C"], intermediate_size=c["I"], num_hidden_layers=c["L"],
                      num_attention_heads=c["NH"], num_key_value_heads=c["NKV"], max_position_embeddings=4096,
                      tie_word_embeddings=True, use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(1337)
    dev = torch.device("cuda")
    with dev:   # initialize on the GPU: a 1.5B model on the CPU takes a while
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    print(f"attention implementation: {model.config._attn_implementation}")
    model.train()
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)
    nparams = sum(p.numel() for p in model.parameters())
    B, T = args.B, args.T
    x = torch.randint(0, c["V"], (B, T), device=dev)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, HF Qwen2ForCausalLM bf16 sdpa, fused "
          f"AdamW")
    print(f"model: {nparams / 1e6:.1f}M params; B={B} T={T}")
    torch.cuda.reset_peak_memory_stats()
    warmup = 2 if args.steps > 2 else 0
    timed = 0.0
    first = last = None
    for s in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(input_ids=x, labels=x)   # HF shifts the labels: T-1 targets per row, as ours
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        loss = out.loss.item()
        first = loss if first is None else first
        last = loss
        if s >= warmup:
            timed += dt
        print(f"step {s:3d}: loss {loss:.4f}, {dt * 1e3:.1f} ms, {B * T / dt:.0f} tok/s", flush=True)
    n = args.steps - warmup
    tps = B * T * n / timed
    tflops = tps * flops_per_token(c, T) / 1e12
    peak = torch.cuda.max_memory_allocated() / 2**30
    print("---")
    print(f"tokens/s: {tps:.0f} (mean of {n} steps after {warmup} warm-up)")
    print(f"model TFLOP/s: {tflops:.1f}, MFU {100 * tflops / 989:.1f}% of 989 TFLOP/s")
    print(f"GPU memory: torch.cuda.max_memory_allocated {peak:.2f} GiB")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(dict(impl="hf_transformers", device=torch.cuda.get_device_name(), precision="bf16",
                                    B=B, T=T, params=nparams, tokens_per_s=round(tps, 1), tflops=round(tflops, 2),
                                    mfu=round(tflops / 989, 4), mem_allocated_gib=round(peak, 3),
                                    loss_first=first, loss_last=last, compiled=args.compile)) + "\n")


if __name__ == "__main__":
    sys.exit(main())
