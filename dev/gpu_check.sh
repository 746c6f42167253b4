#!/usr/bin/env bash
# The whole GPU verification of train_empo.cu in one go (doc/cuda.md), for a machine with an
# NVIDIA GPU, nvcc, and python3 with torch + transformers:
#   1. build and run test_empo_cu in fp32 (tight tolerances), then in bf16
#   2. benchmark ./train_empo_cu at Qwen2.5-Math-1.5B's shape, B=8 T=1024 (random init), with the
#      default settings, then with -r 2 and with bf16 weights + stochastic rounding (--master 0)
#   3. the HF transformers baseline on the same GPU, same shape (dev/bench_gpu.py)
#   4. dev/cuda/attention and dev/cuda/lm_head (kernel versions and timings), if time is left
#   5. a summary: tokens/s, MFU, memory, ratio to HF
# Everything goes to $OUT (default ./gpu_out): gpu_check.log (all output), results.jsonl (one line
# per benchmark), summary.txt. Each step has its own time limit, so one hang can't eat the budget;
# about 4-6 minutes in all on an H100, never more than DEADLINE_S (540) seconds. Usage: OUT=dir dev/gpu_check.sh   (GPU_ARCH=... to override)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; RES="$OUT/results.jsonl"; SUM="$OUT/summary.txt"
: >"$LOG"; : >"$RES"; : >"$SUM"
# the GPU at hand only: half the compile time of the default sm_80 + sm_90
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
[ -n "$cc" ] || cc=90
ARCH=${GPU_ARCH:-"-gencode arch=compute_$cc,code=sm_$cc"}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
# The whole script stays inside DEADLINE_S seconds (default 540, for a 600 s device call): each step
# gets the smaller of its own limit and what is left, minus a reserve for the summary.
DEADLINE_S=${DEADLINE_S:-540}
T_START=$(date +%s)
step() {   # step NAME LIMIT_S CMD...: runs CMD with a time limit, output to the log
  local name=$1 lim=$2; shift 2
  local left=$(( DEADLINE_S - ($(date +%s) - T_START) - 15 ))
  [ "$lim" -le "$left" ] || lim=$left
  if [ "$lim" -le 5 ]; then echo "=== $name SKIPPED (out of time)" | tee -a "$LOG"; status=1; return 1; fi
  echo "=== $name ($(date +%T), limit ${lim}s)" | tee -a "$LOG"
  timeout "$lim" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name FAILED (exit $rc)" | tee -a "$LOG"; status=1; }
  return "$rc"
}
nvidia-smi 2>&1 | head -15 | tee -a "$LOG"

# 1. fp32 first (the strict check), then bf16. Binaries that travelled with the tree, or of the
# other precision, must not count as up to date: clean before each build.
rm -f train_empo_cu test_empo_cu
step "build fp32" 200 make -j4 cuda PRECISION=FP32 GPU_ARCH="$ARCH" && \
  step "test_empo_cu fp32" 90 ./test_empo_cu
rm -f train_empo_cu test_empo_cu
step "build bf16" 200 make -j4 cuda GPU_ARCH="$ARCH" || { echo "bf16 build failed" | tee -a "$SUM"; exit 1; }
step "test_empo_cu bf16" 90 ./test_empo_cu

# 2. our benchmark: the 1.5B shape, random init, B=8 T=1024, 10 steps (2 warm-up)
BENCH="./train_empo_cu --init qwen1.5b -B 8 -T 1024 -x 10 --json $RES"
step "train_empo_cu 1.5B (fp32 master weights, no recompute)" 120 $BENCH
step "train_empo_cu 1.5B -r 2" 120 $BENCH -r 2
step "train_empo_cu 1.5B --master 0 (bf16 weights, stochastic rounding)" 120 $BENCH --master 0

# 3. the HF baseline, same GPU, same shape; B=4 if B=8 does not fit
step "HF transformers baseline B=8" 180 $PY dev/bench_gpu.py -B 8 -T 1024 -x 10 --json "$RES" || \
  step "HF transformers baseline B=4 (B=8 failed)" 150 $PY dev/bench_gpu.py -B 4 -T 1024 -x 10 --json "$RES"

# 4. the kernel development benchmarks, if there is time left (attention v1 vs v2, LM-head chunk sizes)
step "build dev/cuda" 120 make -j4 dev-cuda GPU_ARCH="$ARCH" && {
  step "dev/cuda/attention" 90 ./dev/cuda/attention
  step "dev/cuda/lm_head" 60 ./dev/cuda/lm_head
}

# 5. summary
{
  echo "test results:"; grep -E "^(empo_cu:|SKIP|FAIL|=== test)" "$LOG"
  echo; echo "benchmarks (Qwen2.5-Math-1.5B shape, T=1024):"
  $PY - "$RES" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hf = [r for r in rows if r["impl"] == "hf_transformers"]
base = hf[0]["tokens_per_s"] if hf else None
for r in rows:
    name = r["impl"] if r["impl"] != "train_empo_cu" else f"train_empo_cu master={r['master']} r={r['recompute']}"
    mem = r.get("mem_device_peak_gib", r.get("mem_allocated_gib"))
    ratio = f", {r['tokens_per_s'] / base:.2f}x HF" if base else ""
    print(f"  {name:36s} B={r['B']}: {r['tokens_per_s']:9.0f} tok/s, MFU {100 * r['mfu']:5.1f}%, "
          f"peak {mem:6.2f} GiB, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}{ratio}")
EOF
} 2>&1 | tee "$SUM"
exit $status
