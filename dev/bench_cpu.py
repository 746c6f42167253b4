"""
CPU benchmarks, side by side in one run: train_empo.c vs PyTorch eager (transformers' Qwen2ForCausalLM)
on the same mid-size config and thread count, fp32.
  train: one training step = forward + backward + AdamW (B=4, T=256)
  decode: greedy generation with a KV cache, 32-token prompts, 64 new tokens, at batch 1 and 56
          (8 prompts x G=7), against transformers' generate()
  empo:   one EMPO step (8 prompts x G=7, 64-token prompts, 64 new tokens forced, random model):
          the generate / score / train split (empo.c only)
First the roofline: this machine's fp32 FMA peak (a register-only FMA loop, 1 thread and all
threads) and memory bandwidth, then sgemm's GFLOP/s at the model's GEMM shapes as a share of that
peak, and the forward's time op by op. Each timed figure is the median of RUNS (5) rounds, each round
one measurement of ours and then one of the reference, in the same invocation of this script: on a
shared host whose speed drifts, both sides meet the same conditions round by round. A ratio is given
as the ratio of the two medians and as the median (and range) of the rounds' own ratios. Run: make bench
"""
import json
import os
import statistics
import subprocess
import sys
import time

CFG = dict(V=32000, C=512, L=8, NH=8, NKV=2, I=1408, B=4, T=256)
RUNS = int(os.environ.get("RUNS", "5"))   # every figure is the median of RUNS measurements
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([os.path.join(ROOT, "bench_cpu")] + [str(a) for a in args], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def summary(rs, keys):
    """The median and the min-max range of each key over the runs rs."""
    out = dict(rs[0])
    for k in keys:
        out[k] = statistics.median(r[k] for r in rs)
        out[k + "_range"] = (min(r[k] for r in rs), max(r[k] for r in rs))
    return out


def rounds(ours_once, ref_once, keys):
    """RUNS rounds, each one measurement of ours then one of the reference, so that on a machine whose
    speed drifts (a shared host) both sides run under the same conditions round by round. Returns
    the two sides' summaries and, per key, the median and range of the rounds' ratios ref / ours."""
    ours, ref = [], []
    for _ in range(RUNS):
        ours.append(ours_once())
        if ref_once:
            ref.append(ref_once())
    if not ref_once:
        return summary(ours, keys), None, None
    ratios = {k: sorted(b[k] / a[k] for a, b in zip(ours, ref)) for k in keys}
    ratio = {k: (statistics.median(v), v[0], v[-1]) for k, v in ratios.items()}
    return summary(ours, keys), summary(ref, keys), ratio


MODEL = "V C L NH NKV I".split()


def ours_train_once(threads):
    # one timed iteration per process, after its warm-up
    r = run_json([CFG[k] for k in MODEL + ["B", "T"]] + [1], threads)
    r["tok_s"] = CFG["B"] * CFG["T"] / r["step_s"]
    return r


def roofline(threads):
    return run_json(["roofline"] + [CFG[k] for k in MODEL + ["B", "T"]] + [RUNS], threads)


def ops(threads):
    return run_json(["ops"] + [CFG[k] for k in MODEL + ["B", "T"]] + [RUNS], threads)


GEN = dict(P=32, N=64)


# ---- the floor: the least time this machine's measured peak allows for each benchmark
# FLOPs of the matmuls and of attention, counted from the config (a multiply-add is 2 FLOPs):
#   per token through the layers, 2 * L * C * (QKV + NH*HD + 3*I) (qkv, attention projection, MLP up, MLP down);
#   the LM head, 2 * C * V per row it runs on; causal attention, 4 * HD * (keys seen) per query and head.
# A backward pass is 2x its forward (d_input and d_weight), AdamW reads and writes 7 floats per parameter.
def layer_flops_per_token():
    c = CFG
    hd = c["C"] // c["NH"]
    qkv = (c["NH"] + 2 * c["NKV"]) * hd
    return 2.0 * c["L"] * c["C"] * (qkv + c["NH"] * hd + 3 * c["I"])


def attention_flops(n_queries_keys):
    """n_queries_keys: the sum over query rows of the keys each one sees."""
    c = CFG
    return 4.0 * (c["C"] // c["NH"]) * c["NH"] * c["L"] * n_queries_keys


def floor_seconds(params, peak, bw_copy, bw_read):
    """The least seconds of the forward, the training step and each decode batch at this machine's FMA peak
    (GFLOP/s) and memory bandwidth (GB/s): the larger of the FLOP time and the time to stream the bytes
    that must be read, added over the parts."""
    c = CFG
    B, T, P, N = c["B"], c["T"], GEN["P"], GEN["N"]
    fwd_flops = B * T * (layer_flops_per_token() + 2.0 * c["C"] * c["V"]) + attention_flops(B * T * (T + 1) / 2)
    fwd = fwd_flops / (peak * 1e9)
    adamw = 7 * 4 * params / (bw_copy * 1e9)
    out = {"fwd_s": fwd, "step_s": 3 * fwd + adamw}
    wbytes = 4 * (params - c["V"] * c["C"])   # one decode step streams every weight but the embedding table
    for batch in (1, 56):
        prefill = batch * P * layer_flops_per_token() + attention_flops(batch * P * (P + 1) / 2)
        prefill += batch * 2.0 * c["C"] * c["V"]   # the LM head on each prompt's last row
        step_flops = batch * (layer_flops_per_token() + 2.0 * c["C"] * c["V"])
        stream = wbytes / (bw_read * 1e9)   # each step reads the weights at least once
        out[batch] = max(prefill / (peak * 1e9), stream) + sum(
            max((step_flops + attention_flops(batch * (P + t + 1))) / (peak * 1e9), stream) for t in range(N - 1))
    return out


def print_floor(label, ours_s, ref_s, floor_s, target):
    best = ref_s / floor_s
    print(f"  {label:16s} floor {floor_s * 1e3:8.1f} ms | empo.c at {100 * floor_s / ours_s:5.1f}% of it | the "
          f"best ratio possible against this reference {best:.2f}x; the target {target:.1f}x is "
          f"{100 * target / best:.0f}% of that")


def ours_gen_once(threads, batch):
    return run_json(["gen"] + [CFG[k] for k in MODEL] + [batch, GEN["P"], GEN["N"], 1], threads)


def torch_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=CFG["V"], hidden_size=CFG["C"], intermediate_size=CFG["I"], num_hidden_layers=CFG["L"],
                      num_attention_heads=CFG["NH"], num_key_value_heads=CFG["NKV"], max_position_embeddings=4096,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).float()


def torch_gen_runner(threads, batch):
    """A function that times one HF generate() call (after one warm-up call)."""
    import torch
    torch.set_num_threads(threads)
    model = torch_model().eval()
    x = torch.randint(0, CFG["V"], (batch, GEN["P"]))

    def once():
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=GEN["N"],
                           min_new_tokens=GEN["N"], pad_token_id=0, eos_token_id=None)
            t = time.perf_counter() - t0
        return dict(time_s=t, tok_s=batch * GEN["N"] / t)
    once()
    return once


def torch_train_runner(threads):
    """A function that times one PyTorch training step (after one warm-up step), and the model's size."""
    import torch
    torch.set_num_threads(threads)
    model = torch_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.randint(0, CFG["V"], (CFG["B"], CFG["T"]))
    y = torch.randint(0, CFG["V"], (CFG["B"], CFG["T"]))

    def once():
        t0 = time.perf_counter()
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, CFG["V"]), y.view(-1))
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t2 = time.perf_counter()
        return dict(fwd_s=t1 - t0, step_s=t2 - t0, tok_s=CFG["B"] * CFG["T"] / (t2 - t0))
    once()
    return once, sum(p.numel() for p in model.parameters()), torch.__version__


def ms_range(r):
    return f"{r[0] * 1e3:.1f}-{r[1] * 1e3:.1f}"


def print_roofline(threads):
    r = roofline(threads)
    peak1 = max(r["peak8_1"], r.get("peak16_1", 0))
    peak = max(r["peak8_all"], r.get("peak16_all", 0))
    print(f"roofline: fp32 FMA peak {peak1:.1f} GFLOP/s on 1 thread, {peak:.1f} on {threads} (8-wide "
          f"{r['peak8_all']:.1f}" + (f", 16-wide {r['peak16_all']:.1f}" if "peak16_all" in r else "") + "); memory "
          f"{r['bw_read_1']:.1f} GB/s read on 1 thread, {r['bw_read_all']:.1f} read / {r['bw_copy_all']:.1f} copy on "
          f"{threads}")
    print(f"  sgemm at the model's shapes, {threads} threads (best of {RUNS}):")
    for g in r["gemm"]:
        print(f"    {g['name']:20s} M={g['M']:6d} N={g['N']:6d} K={g['K']:6d} {g['gflops']:7.1f} GFLOP/s "
              f"{100 * g['gflops'] / peak:5.1f}% of peak")
    return r


def print_ops(threads):
    o = ops(threads)
    print(f"  forward op by op, {threads} threads (best of {RUNS}, summed over layers): "
          f"total {o['total_s']*1e3:.1f} ms")
    for name, t in o["ops"]:
        print(f"    {name:18s} {t*1e3:8.1f} ms {100 * t / o['total_s']:5.1f}%")
    print(f"  backward op by op (model_backward, without the update): total {o['bwd_total_s']*1e3:.1f} ms")
    for name, t in o["bwd_ops"]:
        print(f"    {name:18s} {t*1e3:8.1f} ms {100 * t / o['bwd_total_s']:5.1f}%")


if __name__ == "__main__":
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count()))
    print(f"config {CFG}, {threads} threads, median of {RUNS} rounds (each: ours once, then the reference once)")
    roof = print_roofline(threads)
    print_ops(threads)
    try:
        ref_train, ref_params, torch_version = torch_train_runner(threads)
    except ImportError as e:
        print(f"PyTorch reference skipped: {e}")
        ref_train = None
    ours, ref, ratio = rounds(lambda: ours_train_once(threads), ref_train, ["fwd_s", "step_s"])
    print(f"empo.c : {ours['params']} params | fwd {ours['fwd_s']*1e3:8.1f} ms | fwd+bwd+adamw "
          f"{ours['step_s']*1e3:8.1f} ms | {CFG['B'] * CFG['T'] / ours['step_s']:8.1f} tok/s")
    if ref:
        print(f"PyTorch: {ref_params} params | fwd {ref['fwd_s']*1e3:8.1f} ms | fwd+bwd+adamw "
              f"{ref['step_s']*1e3:8.1f} ms | {CFG['B'] * CFG['T'] / ref['step_s']:8.1f} tok/s "
              f"(torch {torch_version}, eager, sdpa)")
        print(f"ratio empo.c / PyTorch: training step {ref['step_s'] / ours['step_s']:.2f}x, forward "
              f"{ref['fwd_s'] / ours['fwd_s']:.2f}x (of the medians); the rounds' own ratios: step "
              f"{ratio['step_s'][0]:.2f}x ({ratio['step_s'][1]:.2f}-{ratio['step_s'][2]:.2f}), forward "
              f"{ratio['fwd_s'][0]:.2f}x ({ratio['fwd_s'][1]:.2f}-{ratio['fwd_s'][2]:.2f})")
        print("  ranges (min-max of the runs, ms): empo.c fwd " + ms_range(ours["fwd_s_range"]) + ", step "
              + ms_range(ours["step_s_range"]) + " | PyTorch fwd " + ms_range(ref["fwd_s_range"]) + ", step "
              + ms_range(ref["step_s_range"]))
        ref_train = None   # frees the reference's model and optimizer before the next benchmarks
        floors = [("forward", ours["fwd_s"], ref["fwd_s"], "fwd_s", 1.3),
                  ("fwd+bwd+AdamW", ours["step_s"], ref["step_s"], "step_s", 1.5)]
    e = run_json(["empo"] + [CFG[k] for k in MODEL] + [8, 7, 64, 64], threads)
    print(f"EMPO step (8 prompts x 7, 64+64 tokens): {e['step_s']:.2f} s = generate {e['gen_s']:.2f} s + score "
          f"{e['score_s']*1e3:.1f} ms"
          f" + train {e['train_s']:.2f} s ({1/e['step_s']:.3f} steps/s)")
    print(f"decode: {GEN['P']}-token prompts, {GEN['N']} new tokens, greedy, KV cache")
    for batch in (1, 56):
        ref_gen = torch_gen_runner(threads, batch) if ref else None
        o, r, ratio = rounds(lambda: ours_gen_once(threads, batch), ref_gen, ["time_s", "tok_s"])
        # at batch 1 a step reads every fp32 weight once but only one row of the embedding table (V x C):
        # memory bandwidth / those bytes bounds tokens/s
        wbytes = 4 * (ours["params"] - CFG["V"] * CFG["C"])
        bound = f" | bound {roof['bw_read_all'] * 1e9 / wbytes:6.1f} tok/s ({wbytes / 1e6:.0f} MB/token)" \
            if batch == 1 else ""
        if not r:
            print(f"  batch {batch:3d}: empo.c {o['tok_s']:8.1f} tok/s{bound}")
            continue
        print(f"  batch {batch:3d}: empo.c {o['tok_s']:8.1f} tok/s | HF generate {r['tok_s']:8.1f} tok/s | ratio "
              f"{r['time_s'] / o['time_s']:.2f}x; the rounds' {ratio['time_s'][0]:.2f}x ({ratio['time_s'][1]:.2f}-"
              f"{ratio['time_s'][2]:.2f}){bound}")
        print(f"    ranges (ms per generate call): empo.c {ms_range(o['time_s_range'])} | "
              f"HF {ms_range(r['time_s_range'])}")
        floors.append((f"decode, batch {batch}", o["time_s"], r["time_s"], batch, 3.0 if batch == 1 else 2.0))
    if ref:
        peak = max(roof["peak8_all"], roof.get("peak16_all", 0))
        fl = floor_seconds(ours["params"], peak, roof["bw_copy_all"], roof["bw_read_all"])
        print(f"floor: the least time at this run's FMA peak ({peak:.1f} GFLOP/s) and memory bandwidth "
              f"({roof['bw_read_all']:.1f} GB/s read), from the FLOPs and bytes of each benchmark (medians)")
        for label, o_s, r_s, key, target in floors:
            print_floor(label, o_s, r_s, fl[key], target)
