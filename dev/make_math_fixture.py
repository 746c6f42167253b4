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

Also writes responses (no box, several boxes, anchors, decoys) labelled by math_verify.parse on the whole
response and verify against the gold answer, with parse's default configuration and with the EMPO
repository's one: the extraction fixture dev/fixtures/math_responses.jsonl.

Usage: python dev/make_math_fixture.py [--n-gold 1400] [--seed 1234] [--only all|pairs|cluster|responses]
Writes dev/fixtures/math_agreement.jsonl, dev/fixtures/math_agreement_cluster.jsonl and
dev/fixtures/math_responses.jsonl.
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
            yield "frac_short", ("%s\\frac%d%d" % (sign, p, q)) if p < 10 and q < 10 else "%s\\frac{%d}{%d}" % (sign,
                    p, q)
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
    ap.add_argument("--only", choices=["all", "pairs", "cluster", "responses"], default="all")
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
    if args.only == "responses":
        write_responses(golds, random.Random(args.seed + 1))
        return
    if args.only == "cluster":
        cache0 = {}

        def P0(s):
            if s not in cache0:
                try:
                    cache0[s] = mv_parse(s)
                except Exception:
                    cache0[s] = []
            return cache0[s]
        write_cluster_reference(P0)
        return
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
    if args.only == "all":
        write_responses(golds, random.Random(args.seed + 1))


def empo_stats(answers, P):
    """Clustering as in semantic_cluster.h (connected components of "equal", ids by first member), with
    Math-Verify's labels (an edge if verify says equal in either direction); numbers in plain Python."""
    G = len(answers)
    parent = list(range(G))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    # no answer: none, empty, or what Math-Verify cannot read as math (nothing, or only its input string
    # back, as for "\\quad") is no answer, as in semantic_cluster.h (the EMPO reference would make it a
    # singleton cluster that equals nothing)
    live = [i for i, a in enumerate(answers) if a is not None and a != "" and any(not isinstance(x, str) for x in P(a))]
    for x in live:
        for y in live:
            if x < y and find(x) != find(y) and (mv_equal(P(answers[x]), P(answers[y])) or mv_equal(P(answers[y]),
                    P(answers[x]))):
                rx, ry = find(x), find(y)
                parent[max(rx, ry)] = min(rx, ry)
    root_id, ids = {}, []
    for i in range(G):
        if i not in live:
            ids.append(-1)
            continue
        ids.append(root_id.setdefault(find(i), len(root_id)))
    reps = list(root_id)
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
        ["\\{1,2\\}", "\\{2,1\\}", "1,2", "2,1", "x=1 \\text{ or } x=2", "\\{1,3\\}", "\\{1\\}"],
        ["x>3", "(3,\\infty)", "x \\in (3, \\infty)", "x \\ge 3", "[3,\\infty)", None, "x<3", "x>3"],
        ["\\pm 5", "5,-5", "x=\\pm5", "x=5,x=-5", "-5,5", "\\{5,-5\\}", "\\quad", "$"],
        ["25\\%", "0.25", "\\frac14", "25", "0.3", None, "1/4", "25\\%"],
        ["\\text{(C)}", "C", "(C)", "D", "\\text{D}", "C", "(B)", "C"],
        ["x>3", "3<x", "x\\ge3", "x<3", "x > 3", "x>3", "3 < x", "x\\geq 3"],
    ]
    path = os.path.join(OUT, "math_agreement_cluster.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for g in groups:
            f.write(json.dumps(empo_stats(g, P), ensure_ascii=False) + "\n")
    print("wrote", path, len(groups), "groups", file=sys.stderr)


# ---- responses: extraction without a box, with several boxes ------------------------------------
# The EMPO repository's parse configuration (src/open_r1/rewards.py): LaTeX only, boxed first, no
# extraction without an "answer" anchor. MV_EXTRACT_ANCHORED follows it; MV_EXTRACT_REFERENCE follows
# parse()'s default configuration.
def empo_parse(text):
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig
    cfg = [LatexExtractionConfig(normalization_config=NormalizationConfig(nits=False, malformed_operators=False,
           basic_latex=True, equations=True, boxed="all", units=True), boxed_match_priority=0,
           try_extract_without_anchor=False)]
    return parse(text, extraction_config=cfg, extraction_mode="first_match")


def response_templates(g, other, rng):
    """Yields (kind, response) for gold answer g; other is a different gold answer (a decoy)."""
    yield "boxed", "We compute step by step.\nSo the answer is $\\boxed{%s}$." % g
    yield "double_backslash", "Thus the result is \\\\boxed{%s}." % g
    yield "decoy_then_box",
    "First I thought $\\boxed{%s}$, but that is wrong.\n\nThe answer is $\\boxed{%s}$." % (other, g)
    yield "answer_is_plain", "Adding these gives the total.\nThe answer is %s." % g
    yield "answer_is_dollar", "Adding these gives the total.\nThe answer is $%s$." % g
    yield "final_answer_colon", "Let me check: it works.\n\nFinal answer: $%s$" % g
    yield "answer_colon_plain", "Working it out, we get it.\nAnswer: %s" % g
    yield "bold_answer", "After simplifying.\n\n**Answer**: $%s$" % g
    yield "final_answer_is", "The final answer is $%s$. I hope it is correct." % g
    yield "display_last", "We find that\n\\[ %s \\]" % g
    yield "paren_last", "Hence the value is \\(%s\\)." % g
    yield "inline_last", "Computing, $x = 2$ first, and in the end we obtain $%s$." % g
    yield "plain_last", "We start with 3 apples and end with %s" % g
    yield "decoy_plain", "The first guess was %s, and after checking the answer is $%s$." % (other, g)
    yield "no_answer", "I am not sure how to solve this problem."
    yield "empty_box", "So the answer is $\\boxed{}$."
    yield "quad_box", "So the answer is $\\boxed{\\quad}$."
    yield "unclosed_box", "the answer is \\boxed{"


def multi_box_templates(rng):
    """Responses with several boxes in the final statement, and their list golds."""
    pairs = [("-2", "1"), ("3", "5"), ("\\frac{1}{2}", "2"), ("x=1", "x=-3"), ("0", "7"), ("2\\sqrt{2}", "-2\\sqrt{2}")]
    for a, b in pairs:
        gold = "%s, %s" % (a, b)
        yield "multi_and", gold, "The solutions are $\\boxed{%s} \\text{ and } \\boxed{%s}$." % (a, b)
        yield "multi_adjacent", gold, "So $\\boxed{%s}\\boxed{%s}$" % (a, b)
        yield "multi_comma", gold, "The roots are $\\boxed{%s}$, $\\boxed{%s}$." % (a, b)
        yield "multi_or", gold, "Thus $x = \\boxed{%s}$ or $x = \\boxed{%s}$." % (a, b)
        yield "multi_quad", gold, "$\\boxed{%s} \\quad \\boxed{%s}$" % (a, b)
        yield "multi_vs_one", "%s" % b, "The solutions are $\\boxed{%s} \\text{ and } \\boxed{%s}$." % (a, b)
        yield "multi_same", a, "So $\\boxed{%s}$ and $\\boxed{%s}$." % (a, a)


def write_responses(golds, rng, n_gold=150):
    """dev/fixtures/math_responses.jsonl: {kind, response, gold, mv_ref, mv_empo, found_ref, found_empo}.
    mv_ref = verify(parse(gold boxed), parse(response)) with parse's default configuration; mv_empo the
    same with the EMPO repository's configuration; found_* = parse returned something."""
    simple = [g for g in golds if len(g) <= 40 and "$" not in g and "\\boxed" not in g]
    sample = simple[:n_gold]
    recs = []
    for g in sample:
        other = rng.choice(simple)
        if other == g:
            continue
        for kind, resp in response_templates(g, other, rng):
            recs.append((kind, resp, g))
    for kind, gold, resp in multi_box_templates(rng):
        recs.append((kind, resp, gold))
    path = os.path.join(OUT, "math_responses.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i, (kind, resp, gold) in enumerate(recs):
            pg = mv_parse(gold)
            try:
                pr = parse(resp)
            except Exception:
                pr = []
            try:
                pe = empo_parse(resp)
            except Exception:
                pe = []
            rec = {"kind": kind, "response": resp, "gold": gold, "mv_ref": mv_equal(pg, pr),
                   "mv_empo": mv_equal(pg, pe),
                   "found_ref": int(len(pr) > 0), "found_empo": int(len(pe) > 0)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if i % 500 == 0:
                print("responses", i, "/", len(recs), file=sys.stderr)
    print("wrote", path, len(recs), "responses", file=sys.stderr)


if __name__ == "__main__":
    main()
