#!/usr/bin/env python3
"""Makes the agreement fixture for math_verify.h with the real Math-Verify (pip install math-verify).

Pairs (a, b) of final answers are drawn from the gold answers in ../shared/data/*.jsonl and from
systematic rewrites of them (decimal form, reordered lists and sums, \\dfrac, a/b, units, "x = ",
LaTeX noise, thousands separators) and perturbations that make them wrong (a changed digit, a
reversed tuple, a flipped bracket, a dropped factor, another problem's answer). Each pair is labelled
by math_verify.verify in both directions, with both answers wrapped as \\boxed{...} and parsed by
math_verify.parse with its default configuration.

Also writes a small clustering reference: fixed groups of answers, clustered greedily with the same
labels (first representative it equals), with p(c), entropy, EMPO rewards and advantages computed
here in plain Python as the C code must reproduce them.

Usage: python dev/make_math_fixture.py [--n-gold 1400] [--seed 1234]
Writes dev/fixtures/math_agreement.jsonl and dev/fixtures/math_agreement_cluster.jsonl.
"""
import argparse, glob, json, math, os, random, re, sys, logging

logging.disable(logging.CRITICAL)
from math_verify import parse, verify  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "dev", "fixtures")


def mv_parse(s):
    return parse("\\boxed{" + s + "}")


def mv_equal(pa, pb):
    try:
        return int(bool(verify(pa, pb)))
    except Exception:
        return 0


# ---- rewrites -----------------------------------------------------------------------------------
FRAC = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")
INT = re.compile(r"^-?\d+$")
DEC = re.compile(r"^-?\d*\.\d+$")


def split_top(s, sep):
    """Split s on sep at brace/paren depth 0."""
    out, depth, cur, i = [], 0, "", 0
    while i < len(s):
        c = s[i]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        if depth == 0 and s.startswith(sep, i):
            out.append(cur)
            cur = ""
            i += len(sep)
            continue
        cur += c
        i += 1
    out.append(cur)
    return out


def rewrites(g, rng):
    """Yields (kind, b) for gold answer g."""
    yield "same", g
    s = g.strip()
    m = FRAC.match(s)
    if m:
        sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
        if q:
            v = p / q * (-1 if sign else 1)
            yield "decimal", "%.6f" % v
            yield "decimal_short", "%.2f" % v
            yield "slash", "%s%d/%d" % (sign, p, q)
            yield "frac_short", ("%s\\frac%d%d" % (sign, p, q)) if p < 10 and q < 10 else "%s\\frac{%d}{%d}" % (sign, p, q)
    if INT.match(s):
        n = int(s)
        if abs(n) >= 1000:
            yield "thousands", "{:,}".format(n)
            yield "thousands_brace", "{:,}".format(n).replace(",", "{,}")
        yield "decimal_zero", s + ".0"
        yield "units", s + "\\text{ cm}"
        yield "dollar", "\\$" + s
        yield "wrong_digit", str(n + rng.choice([1, -1, 10]))
        yield "sci_times", "%s \\times 10^{0}" % s
    if DEC.match(s):
        yield "trailing_zero", s + "0"
        yield "wrong_decimal", s + "1"
    if "\\frac" in s:
        yield "dfrac", s.replace("\\frac", "\\dfrac")
        yield "tfrac", s.replace("\\frac", "\\tfrac")
    if "\\dfrac" in s:
        yield "frac", s.replace("\\dfrac", "\\frac")
    parts = split_top(s, ",")
    if len(parts) >= 2 and all(p.strip() for p in parts):
        yield "reordered", ",".join(reversed(parts))
    terms = split_top(s, "+")
    if len(terms) == 2 and all(t.strip() for t in terms) and "=" not in s and "," not in s and not s.startswith("-"):
        yield "sum_swapped", terms[1].strip() + "+" + terms[0].strip()
    if not any(c in s for c in "=<>,\\{[(") or re.match(r"^-?\\frac", s) or re.match(r"^-?\\sqrt", s):
        yield "assign", "x = " + s
        yield "noise", "\\left( " + s + " \\right)"
        yield "dollars", "$" + s + "$"
    if s.startswith("(") and s.endswith(")") and len(split_top(s[1:-1], ",")) >= 2:
        inner = split_top(s[1:-1], ",")
        yield "tuple_reversed", "(" + ",".join(reversed(inner)) + ")"
        yield "closed_bracket", "[" + s[1:-1] + "]"
        yield "half_open", "(" + s[1:-1] + "]"
    if s.startswith("[") and s.endswith("]"):
        yield "open_paren", "(" + s[1:-1] + ")"
    if "\\sqrt" in s:
        yield "sqrt_dropped", re.sub(r"\\sqrt\{[^{}]*\}|\\sqrt\d", "", s, count=1) or "1"
    if "\\pi" in s:
        yield "pi_dropped", s.replace("\\pi", "", 1) or "1"
    if re.search(r"\d", s):
        # change the first digit that is not part of a command
        i = re.search(r"\d", s).start()
        d = str((int(s[i]) + 1) % 10)
        yield "wrong_first_digit", s[:i] + d + s[i + 1:]
    if "x" in s and "=" not in s and "," not in s:
        yield "squared_wrong", "(" + s + ")^2"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-gold", type=int, default=1400)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    golds = []
    for f in sorted(glob.glob(os.path.join(DATA, "*.jsonl"))):
        for line in open(f, encoding="utf-8"):
            line = line.strip()
            if line:
                a = json.loads(line).get("answer")
                if isinstance(a, str) and a.strip() and len(a) <= 200:
                    golds.append(a.strip())
    if not golds:
        sys.exit("no gold answers under " + DATA)
    golds = sorted(set(golds))
    rng.shuffle(golds)
    # every dataset's small files are well represented: prefer short/typical answers too
    sample = golds[: args.n_gold]
    pairs = []
    for g in sample:
        for kind, b in rewrites(g, rng):
            pairs.append((kind, g, b))
        other = rng.choice(golds)
        if other != g:
            pairs.append(("other_gold", g, other))
    # dedupe, keep order
    seen, uniq = set(), []
    for p in pairs:
        if (p[1], p[2]) not in seen:
            seen.add((p[1], p[2]))
            uniq.append(p)
    os.makedirs(OUT, exist_ok=True)
    cache = {}

    def P(s):
        if s not in cache:
            try:
                cache[s] = mv_parse(s)
            except Exception:
                cache[s] = []
        return cache[s]

    path = os.path.join(OUT, "math_agreement.jsonl")
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for i, (kind, a, b) in enumerate(uniq):
            pa, pb = P(a), P(b)
            rec = {"kind": kind, "a": a, "b": b, "mv_ab": mv_equal(pa, pb), "mv_ba": mv_equal(pb, pa)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
            if i % 1000 == 0:
                print("labelled", i, "/", len(uniq), file=sys.stderr)
    print("wrote", path, n, "pairs", file=sys.stderr)
    write_cluster_reference(P)


def empo_stats(answers, P):
    """Greedy clustering as in semantic_cluster.h, reference numbers in plain Python."""
    G = len(answers)
    reps, ids = [], []
    for a in answers:
        if a is None or a == "":
            ids.append(-1)
            continue
        c = next((k for k, r in enumerate(reps) if mv_equal(P(r), P(a))), None)
        if c is None:
            reps.append(a)
            c = len(reps) - 1
        ids.append(c)
    sizes = [ids.count(c) for c in range(len(reps))]
    p = [s / G for s in sizes]
    missing = ids.count(-1)
    H = -sum(q * math.log(q) for q in p) + missing * (1.0 / G) * math.log(G)
    r = [p[c] if c >= 0 else 0.0 for c in ids]
    mean = sum(r) / G
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1)) if G > 1 else 0.0
    adv = [(x - mean) / (sd + 1e-4) for x in r]
    maj = -1
    for c in range(len(reps)):
        if maj < 0 or sizes[c] > sizes[ids[maj]]:
            maj = ids.index(c)
    share = p[ids[maj]] if maj >= 0 else 0.0
    return {"answers": answers, "cluster": ids, "p": p, "entropy": H, "reward": r, "advantage": adv,
            "majority": maj, "majority_share": share, "keep": int(H < math.log(G))}


def write_cluster_reference(P):
    groups = [
        ["\\frac{1}{2}", "0.5", "\\dfrac12", "1/2", "2", "\\frac{2}{4}", "3", "0.5"],
        ["5", "x=5", "5.0", "6", None, "5\\text{ cm}", "", "6"],
        ["(1,2)", "(2,1)", "(1,2)", "[1,2]", "(1, 2)", "(2,1)", "(1,2]", "(1,2)"],
        ["\\sqrt{2}", "\\frac{2}{\\sqrt2}", "1.414214", "1.41", "2^{1/2}", "\\sqrt{8}/2", "\\sqrt3", "\\sqrt{2}"],
        ["1", "2", "3", "4", "5", "6", "7", "8"],
        ["7", "7", "7", "7", "7", "7", "7", "7"],
        [None, None, None, None],
        ["x^2-1", "(x-1)(x+1)", "x^2+1", "(x+1)^2", "x^2 - 1", "-1+x^2"],
        ["\\{1,2\\}", "\\{2,1\\}", "1,2", "2,1", "(1,2)", "\\{1,3\\}", "\\{1\\}"],
        ["25\\%", "0.25", "\\frac14", "25", "0.3", None, "1/4", "25\\%"],
        ["\\text{(C)}", "C", "(C)", "D", "\\text{D}", "C", "(B)", "C"],
        ["x>3", "3<x", "x\\ge3", "x<3", "x > 3", "x>3", "3 < x", "x\\geq 3"],
    ]
    path = os.path.join(OUT, "math_agreement_cluster.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(empo_stats(g, P), ensure_ascii=False) + "\n")
    print("wrote", path, len(groups), "groups", file=sys.stderr)


if __name__ == "__main__":
    main()
