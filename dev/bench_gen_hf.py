"""
The rollout baseline for train_empo_cu --bench --gen: transformers' Qwen2ForCausalLM.generate() in
bf16 with sdpa attention and a dynamic KV cache, on the same work: Qwen2.5-Math-1.5B's shape (random
init), --prompts x -G sequences of --prompt-len random tokens, exactly -n new tokens each
(min_new_tokens = max_new_tokens), sampling at --temp with top-p 1 and top-k 0 (the paper's).
All sequences go in one generate() call (as ours decode them in one batch), with a warm-up call
first. Prints tokens/s and appends one JSON line to --json. dev/gpu_check.sh runs it right after
ours on the same GPU.
"""
import argparse
import json
import time

QWEN_1_5B = dict(V=151936, C=1536, L=28, NH=12, NKV=2, I=8960)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("-G", type=int, default=7)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("-n", type=int, default=512, help="new tokens per sequence (forced)")
    ap.add_argument("--temp", type=float, default=0.9)
    ap.add_argument("--batch", type=int, default=0, help="sequences per generate() call (0 = all)")
    ap.add_argument("--json", default=None, help="append the result as one JSON line")
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = QWEN_1_5B
    cfg = Qwen2Config(vocab_size=c["V"], hidden_size=c["C"], intermediate_size=c["I"], num_hidden_layers=c["L"],
                      num_attention_heads=c["NH"], num_key_value_heads=c["NKV"], max_position_embeddings=4096,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(1337)
    dev = torch.device("cuda")
    with dev:
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    n = args.prompts * args.G
    batch = args.batch or n
    prompts = torch.randint(0, c["V"], (args.prompts, args.prompt_len), device=dev)
    ids = prompts.repeat_interleave(args.G, dim=0)   # G responses of each prompt, as ours
    mask = torch.ones_like(ids)
    gen_kw = dict(do_sample=True, temperature=args.temp, top_p=1.0, top_k=0, max_new_tokens=args.n,
                  min_new_tokens=args.n, pad_token_id=0, eos_token_id=None)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, HF Qwen2ForCausalLM.generate bf16 sdpa")
    print(f"rollouts: {args.prompts} prompts x {args.G}, {args.prompt_len}-token prompts, {args.n} new tokens, "
          f"T={args.temp}, {batch} sequences per generate() call", flush=True)
    with torch.no_grad():
        model.generate(input_ids=ids[:min(batch, 8)], attention_mask=mask[:min(batch, 8)],
                       **dict(gen_kw, max_new_tokens=8, min_new_tokens=8))   # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        tokens = 0
        for b0 in range(0, n, batch):
            out = model.generate(input_ids=ids[b0:b0 + batch], attention_mask=mask[b0:b0 + batch], **gen_kw)
            tokens += (out.shape[1] - args.prompt_len) * out.shape[0]
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"---\nHF generate tokens/s: {tokens / dt:.0f} ({tokens} tokens in {dt:.2f} s), peak {peak:.2f} GiB")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"impl": "hf_generate", "device": torch.cuda.get_device_name(), "precision": "bf16",
                                "prompts": args.prompts, "G": args.G, "prompt_len": args.prompt_len,
                                "new_tokens": args.n,
                                "temperature": args.temp, "tokens": tokens, "seconds": round(dt, 3),
                                "tokens_per_s": round(tokens / dt, 1), "mem_peak_gib": round(peak, 3)}) + "\n")


if __name__ == "__main__":
    main()
