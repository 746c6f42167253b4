"""
CPU benchmarks, side by side in one run: train_empo.c vs PyTorch eager (transformers' Qwen2ForCausalLM)
on the same mid-size config and thread count, fp32.
  train: one training step = forward + backward + AdamW (B=4, T=256)
  decode: greedy generation with a KV cache, 32-token prompts, 64 new tokens, at batch 1 and 56
          (8 prompts x G=7), against transformers' generate()
  empo:   one EMPO step (8 prompts x G=7, 64-token prompts, 64 new tokens forced, random model):
          the generate / score / train split (empo.c only)
Reports the best of N iterations for each and the ratios. Run: make bench
"""
import json
import os
import subprocess
import sys
import time

CFG = dict(V=32000, C=512, L=8, NH=8, NKV=2, I=1408, B=4, T=256)
ITERS = int(os.environ.get("ITERS", "5"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_ours(threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = [os.path.join(ROOT, "bench_cpu")] + [str(CFG[k]) for k in "V C L NH NKV I B T".split()] + [str(ITERS)]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


GEN = dict(P=32, N=64)


def bench_ours_gen(threads, batch):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = [os.path.join(ROOT, "bench_cpu"), "gen"] + [str(CFG[k]) for k in "V C L NH NKV I".split()]
    args += [str(batch), str(GEN["P"]), str(GEN["N"]), "2"]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def torch_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=CFG["V"], hidden_size=CFG["C"], intermediate_size=CFG["I"], num_hidden_layers=CFG["L"],
                      num_attention_heads=CFG["NH"], num_key_value_heads=CFG["NKV"], max_position_embeddings=4096,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).float()


def bench_torch_gen(threads, batch):
    import torch
    torch.set_num_threads(threads)
    model = torch_model().eval()
    x = torch.randint(0, CFG["V"], (batch, GEN["P"]))
    best = 1e30
    with torch.no_grad():
        for _ in range(2):
            t0 = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=GEN["N"],
                           min_new_tokens=GEN["N"], pad_token_id=0, eos_token_id=None)
            best = min(best, time.perf_counter() - t0)
    return dict(time_s=best, tok_s=batch * GEN["N"] / best)


def bench_torch(threads):
    import torch
    torch.set_num_threads(threads)
    model = torch_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.randint(0, CFG["V"], (CFG["B"], CFG["T"]))
    y = torch.randint(0, CFG["V"], (CFG["B"], CFG["T"]))
    best_step, best_fwd = 1e30, 1e30
    for it in range(ITERS + 1):
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, CFG["V"]), y.view(-1))
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t2 = time.perf_counter()
        if it > 0:
            best_step, best_fwd = min(best_step, t2 - t0), min(best_fwd, t1 - t0)
    n = sum(p.numel() for p in model.parameters())
    return dict(params=n, fwd_s=best_fwd, step_s=best_step, tok_s=CFG["B"] * CFG["T"] / best_step,
                torch=torch.__version__)


if __name__ == "__main__":
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    print(f"config {CFG}, {threads} threads, best of {ITERS} iterations")
    ours = bench_ours(threads)
    print(f"empo.c : {ours['params']} params | fwd {ours['fwd_s']*1e3:8.1f} ms | fwd+bwd+adamw "
          f"{ours['step_s']*1e3:8.1f} ms | {ours['tok_s']:8.1f} tok/s")
    try:
        ref = bench_torch(threads)
    except ImportError as e:
        print(f"PyTorch reference skipped: {e}")
        sys.exit(0)
    print(f"PyTorch: {ref['params']} params | fwd {ref['fwd_s']*1e3:8.1f} ms | fwd+bwd+adamw {ref['step_s']*1e3:8.1f} "
          f"ms | {ref['tok_s']:8.1f} tok/s (torch {ref['torch']}, eager, sdpa)")
    print(f"ratio empo.c / PyTorch: training step {ref['step_s']/ours['step_s']:.2f}x, forward "
          f"{ref['fwd_s']/ours['fwd_s']:.2f}x")
    args = [os.path.join(ROOT, "bench_cpu"), "empo"] + [str(CFG[k]) for k in "V C L NH NKV I".split()]
    args += ["8", "7", "64", "64"]
    e = json.loads(subprocess.run(args, env=dict(os.environ, OMP_NUM_THREADS=str(threads)), check=True,
                                  capture_output=True, text=True).stdout)
    print(f"EMPO step (8 prompts x 7, 64+64 tokens): {e['step_s']:.2f} s = generate {e['gen_s']:.2f} s + score "
          f"{e['score_s']*1e3:.1f} ms"
          f" + train {e['train_s']:.2f} s ({1/e['step_s']:.3f} steps/s)")
    print(f"decode: {GEN['P']}-token prompts, {GEN['N']} new tokens, greedy, KV cache")
    for batch in (1, 56):
        o = bench_ours_gen(threads, batch)
        r = bench_torch_gen(threads, batch)
        print(f"  batch {batch:3d}: empo.c {o['tok_s']:8.1f} tok/s | HF generate {r['tok_s']:8.1f} tok/s | ratio "
              f"{r['time_s']/o['time_s']:.2f}x")
