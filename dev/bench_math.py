#!/usr/bin/env python3
"""Benchmark: math_answers_equal (C) vs math_verify.verify (Python) on the same answer pairs.

Usage: python dev/bench_math.py ./dev/cache/bench_math [--pairs 1000] [--c-before OLD_BENCH_BINARY]
Two sets of pairs: the first pairs of the agreement fixture, and dev/fixtures/math_bench_pairs.jsonl
(real-looking pairs: gold answers against a model's forms of them and against other answers, as
clustering compares them). The C figure is parse-both-strings-and-compare per call
(math_answers_equal); the Python figure is verify(parse(a), parse(b)) per call, the same work. Verify
on pre-parsed answers is shown too. --c-before runs a second C binary (an older build) on the same
pairs in the same run. Everything runs on one thread of this machine.
"""
import argparse, json, logging, os, subprocess, sys, time

logging.disable(logging.CRITICAL)
from math_verify import parse, verify  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def c_rates(binary, fixture, n):
    out = subprocess.run([binary, fixture, str(n)], capture_output=True, text=True, check=True).stdout
    vals = dict(l.split()[0:2] for l in out.splitlines() if l.strip())
    return float(vals["c_calls_per_s"]), float(vals["c_parsed_calls_per_s"])


def bench(fixture, args):
    pairs = []
    with open(fixture, encoding="utf-8") as f:
        for line in f:
            if len(pairs) >= args.pairs:
                break
            r = json.loads(line)
            pairs.append((r["a"], r["b"]))
    c_rate, c_parsed = c_rates(args.c_bench, fixture, len(pairs))
    before = c_rates(args.c_before, fixture, len(pairs)) if args.c_before else None
    t0 = time.perf_counter()
    for a, b in pairs:
        verify(parse("\\boxed{" + a + "}"), parse("\\boxed{" + b + "}"))
    py_rate = len(pairs) / (time.perf_counter() - t0)
    parsed = [(parse("\\boxed{" + a + "}"), parse("\\boxed{" + b + "}")) for a, b in pairs]
    t0 = time.perf_counter()
    for pa, pb in parsed:
        verify(pa, pb)
    py_verify = len(pairs) / (time.perf_counter() - t0)
    print("pairs: %d (first of %s)" % (len(pairs), os.path.relpath(fixture, ROOT)))
    if before:
        print("C      math_answers_equal, before (parse + compare): %12.0f calls/s" % before[0])
    print("C      math_answers_equal (parse + compare):       %12.0f calls/s" % c_rate)
    print("Python verify(parse(a), parse(b)):                 %12.1f calls/s" % py_rate)
    print("ratio (same work):                                 %12.0fx" % (c_rate / py_rate))
    if before:
        print("C      math_parsed_equal, before (pre-parsed):     %12.0f calls/s" % before[1])
    print("C      math_parsed_equal (pre-parsed):             %12.0f calls/s" % c_parsed)
    print("Python verify only (pre-parsed):                   %12.1f calls/s" % py_verify)
    print("ratio (pre-parsed):                                %12.0fx" % (c_parsed / py_verify))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("c_bench")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--c-before", default=None)
    ap.add_argument("--fixture", action="append", default=None)
    args = ap.parse_args()
    fixtures = args.fixture or [os.path.join(ROOT, "dev", "fixtures", "math_agreement.jsonl"),
                                os.path.join(ROOT, "dev", "fixtures", "math_bench_pairs.jsonl")]
    for i, fx in enumerate(fixtures):
        if i:
            print()
        bench(fx, args)


if __name__ == "__main__":
    main()
