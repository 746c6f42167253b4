"""
Compares two runs' log.jsonl line by line: the CPU engine's (./train_empo) and the GPU engine's
(train_empo_cu's host layer on the emulated GPU engine, dev/cache/emu_cuda --run), same flags and
seed. Python standard library only (make emu-cuda runs it).

The two engines sample from the same RNG streams, so in fp32 they draw the same tokens unless two
candidates' cumulative probabilities straddle a uniform within the summation-order difference of
the logits (~1e-6): the quantities that follow from the tokens (reward, entropy, clusters, kept,
response length, eval accuracies) must be equal up to the printed digits; the loss and gradient
norm come from differently ordered fp32 sums: relative 1e-3 on the printed 4 digits of grad_norm,
absolute 1e-5 on the loss. Timings (t_*, time, gen_tok_s) are not compared.

Usage: python3 dev/cuda/compare_runs.py CPU_LOG GPU_LOG
"""
import json
import sys

LOOSE = {"loss": (1e-5, 0.0), "grad_norm": (1e-4, 1e-3)}   # (abs, rel)


def timing(k):
    return k.startswith("t_") or k in ("time", "gen_tok_s")


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def main():
    a, b = lines(sys.argv[1]), lines(sys.argv[2])
    bad = []
    if len(a) != len(b):
        bad.append(f"{len(a)} lines vs {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        keys = [k for k in x if not timing(k)]
        if set(keys) != set(k for k in y if not timing(k)):
            bad.append(f"line {i + 1}: keys differ: {sorted(x)} vs {sorted(y)}")
            continue
        for k in keys:
            u, v = x[k], y[k]
            if isinstance(u, (int, float)) and isinstance(v, (int, float)):
                ab, rel = LOOSE.get(k, (1e-9, 0.0))
                if abs(u - v) > ab + rel * abs(u):
                    bad.append(f"line {i + 1} (step {x.get('step')}): {k} {u} vs {v}")
            elif u != v:
                bad.append(f"line {i + 1}: {k} {u!r} vs {v!r}")
    for m in bad:
        print("  " + m)
    n = sum(len(x) for x in a)
    print(f"{'PASS' if not bad else 'FAIL'} the GPU engine's run (emulated) logs the CPU engine's lines: "
          f"{len(a)} lines, {n} values, {len(bad)} differences")
    print(f"compare_runs: {0 if bad else 1} passed, {1 if bad else 0} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
