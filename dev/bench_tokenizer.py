#!/usr/bin/env python3
"""Encode throughput, tokenizer.h vs HF `tokenizers`, one thread each, same text, one run.

  make bench_tokenizer PYTHON=/opt/pyref/bin/python
  (= python dev/bench_tokenizer.py ./bench_tok [TOKENIZER_JSON] [DATA_JSONL])

Two ways to feed the text: per problem (20,000 encode calls, the way training prompts are
encoded) and joined (all problems in one newline-separated string, one call). Each side reports
the best of 3 repeats. HF runs `Tokenizer.encode` (Rust) with RAYON_NUM_THREADS=1 and
TOKENIZERS_PARALLELISM=false; its per-problem figure includes the Python call overhead of
`encode`, so the joined figure is the cleaner comparison of the two tokenizers.
"""
import json
import os
import subprocess
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    exe = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, 'bench_tok')
    tj = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, '..', 'shared', 'qwen2_tokenizer', 'tokenizer.json')
    data = sys.argv[3] if len(sys.argv) > 3 else os.path.join(ROOT, '..', 'shared', 'data', 'numina_20k.jsonl')
    out = subprocess.run([exe, tj, data, '3'], capture_output=True, text=True, check=True).stdout.split()
    ours = {"pp": float(out[3]), "joined": float(out[6]), "ids": int(out[12]), "joined_ids": int(out[14])}

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tj)
    with open(data, encoding='utf-8') as f:
        probs = [json.loads(l)["problem"] for l in f if l.strip()]
    nbytes = sum(len(p.encode('utf-8')) for p in probs)
    joined = ''.join(p + '\n' for p in probs)
    jbytes = len(joined.encode('utf-8'))
    best_pp = best_j = 1e30
    for _ in range(3):
        t0 = time.perf_counter()
        n = 0
        for p in probs:
            n += len(tok.encode(p).ids)
        t1 = time.perf_counter()
        nj = len(tok.encode(joined).ids)
        t2 = time.perf_counter()
        best_pp, best_j = min(best_pp, t1 - t0), min(best_j, t2 - t1)
    hf = {"pp": nbytes / best_pp / 1e6, "joined": jbytes / best_j / 1e6, "ids": n, "joined_ids": nj}
    same = ours["ids"] == hf["ids"] and ours["joined_ids"] == hf["joined_ids"]
    print("encode throughput on %s (%.2f MB, %d problems), one thread, best of 3" % (os.path.basename(data),
            nbytes / 1e6, len(probs)))
    print("  %-10s %14s %14s" % ("", "per problem", "joined"))
    print("  %-10s %9.2f MB/s %9.2f MB/s" % ("tokenizer.h", ours["pp"], ours["joined"]))
    print("  %-10s %9.2f MB/s %9.2f MB/s" % ("HF tokenizers", hf["pp"], hf["joined"]))
    print("  %-10s %12.2fx %12.2fx" % ("ratio", ours["pp"] / hf["pp"], ours["joined"] / hf["joined"]))
    print("  id counts %s (ours %d / %d, HF %d / %d)" % ("equal" if same else "DIFFER", ours["ids"],
                                                         ours["joined_ids"], hf["ids"], hf["joined_ids"]))
    sys.exit(0 if same else 1)


if __name__ == '__main__':
    main()
