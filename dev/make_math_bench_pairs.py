#!/usr/bin/env python3
"""Makes dev/fixtures/math_bench_pairs.jsonl: real-looking answer pairs for `make bench_math`.

The pairs are what clustering compares: the MATH500 gold answers against the forms a model writes for
the same answer (\\dfrac, spaces, "x = ", \\left( \\right), $..$, a decimal) and against other
problems' answers (most pairs in a group differ). No labels: the benchmark measures speed only.

Usage: python dev/make_math_bench_pairs.py   (needs ../shared/data/math500.jsonl; standard library only)
"""
import json, os, random, re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_forms(g, rng):
    yield g
    yield g.replace("\\frac", "\\dfrac")
    yield re.sub(r"\s+", "", g)
    yield "x = " + g
    yield "\\left( " + g + " \\right)" if not g.startswith("(") else g.replace("(", "\\left(", 1)
    yield "$" + g + "$"
    m = re.match(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$", g)
    if m and int(m.group(3)):
        yield "%.6f" % (int(m.group(2)) / int(m.group(3)) * (-1 if m.group(1) else 1))


def main():
    rng = random.Random(16)
    golds = []
    with open(os.path.join(ROOT, "..", "shared", "data", "math500.jsonl"), encoding="utf-8") as f:
        for line in f:
            a = json.loads(line).get("answer")
            if isinstance(a, str) and a.strip():
                golds.append(a.strip())
    pairs = []
    for g in golds:
        forms = list(dict.fromkeys(model_forms(g, rng)))
        pairs.append((g, rng.choice(forms)))
        pairs.append((rng.choice(forms), rng.choice(golds)))
    rng.shuffle(pairs)
    out = os.path.join(ROOT, "dev", "fixtures", "math_bench_pairs.jsonl")
    with open(out, "w", encoding="utf-8") as f:
        for a, b in pairs[:1000]:
            f.write(json.dumps({"a": a, "b": b}, ensure_ascii=False) + "\n")
    print("wrote", out, min(len(pairs), 1000), "pairs")


if __name__ == "__main__":
    main()
