#!/usr/bin/env bash
# The same numbers on every x86-64 machine: builds train_empo twice, once as the Makefile does
# (-march=native: AVX-512 where the CPU has it) and once with AVX-512 switched off (the AVX2 code
# path), runs the embedded default with each, and compares the two log.jsonl files line by line
# with the timing fields removed. Every reduction in train_empo.c and empoc/gemm.h has a fixed
# lane count, so the two must be identical. Exit 0 when they are.
# Usage: dev/compare_isa.sh [extra train_empo flags, e.g. -x 10]   (two default runs: ~3-10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=out/compare_isa
mkdir -p "$OUT"
grep -q avx512f /proc/cpuinfo || echo "note: this CPU has no AVX-512; both builds take the AVX2 path" >&2
# the Makefile's flags (-O3 -march=native -fopenmp), built here so that ./train_empo is left alone
CFLAGS="-O3 -std=gnu11 -march=native -fopenmp"
cc $CFLAGS train_empo.c -lm -o "$OUT/train_empo_native"
cc $CFLAGS -mno-avx512f train_empo.c -lm -o "$OUT/train_empo_avx2"
strip_times() { sed -E 's/, "(gen_tok_s|t_gen|t_score|t_train|time)": [0-9.e+-]+//g' "$1"; }
for v in native avx2; do
  echo "== $OUT/train_empo_$v $*" >&2
  "$OUT/train_empo_$v" -o "$OUT/$v" -q "$@" > "$OUT/$v.txt"
  strip_times "$OUT/$v/log.jsonl" > "$OUT/$v.log"
done
if cmp -s "$OUT/native.log" "$OUT/avx2.log"; then
  echo "identical: $(wc -l < "$OUT/native.log") log lines of the -march=native and the -mno-avx512f build"
else
  echo "DIFFERENT: first difference:"; diff "$OUT/native.log" "$OUT/avx2.log" | head -4; exit 1
fi
