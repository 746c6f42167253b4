#!/usr/bin/env bash
# The whole GPU verification of train_empo.cu in one call of at most 8 minutes (doc/cuda.md), for a
# machine with an NVIDIA GPU, nvcc, compute-sanitizer, and python3 with torch + transformers:
#   1. build train_empo_cu + test_empo_cu in bf16 for the GPU at hand, and test_empo_cu in fp32
#      (the fp32 build of train_empo_cu is not needed: only its tests are)
#   2. test_empo_cu in fp32 (tight tolerances), then in bf16
#   3. compute-sanitizer memcheck and racecheck on test_empo_cu --tiny (a training step, decode
#      attention, generation with continuous batching), bf16
#   4. the rollout benchmark: 32 prompts x 7 responses, 256-token prompts, 512 new tokens forced,
#      T = 0.9, at Qwen2.5-Math-1.5B's shape (random init): ours, then HF generate (dev/bench_gen_hf.py)
#   5. the training benchmark at the 1.5B shape, B=8 T=1024: ours, then HF (dev/bench_gpu.py)
#   6. the attention lab (dev/cuda/attention 8 1024): v1 / v2 (FMA) / v3 (tensor cores) forward and
#      backward at the 1.5B's heads, TFLOP/s and the share of the dense bf16 peak (PEAK_TFLOPS, 989)
#   7. one EMPO step at the paper's shape (112 prompts x 7, up to 2048 new tokens, random init: the
#      responses run to the length, there being almost no EOS) through train_empo_cu's host layer
#      under --mem-cap 23.5 (a 24 GiB card) with the default lean settings, with its split into
#      generate / score / train and its memory plan's peak next to the measured one, if time is left
#   8. a summary
# Everything goes to $OUT (default ./gpu_out): gpu_check.log (all output), results.jsonl (one line
# per benchmark), summary.txt. Each step has its own time limit and the whole stays inside
# DEADLINE_S (default 470) seconds. Usage: OUT=dir dev/gpu_check.sh   (GPU_ARCH=... to override)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; RES="$OUT/results.jsonl"; SUM="$OUT/summary.txt"
: >"$LOG"; : >"$RES"; : >"$SUM"
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
[ -n "$cc" ] || cc=90
ARCH=${GPU_ARCH:-"-gencode arch=compute_$cc,code=sm_$cc"}
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || NVCC=/usr/local/cuda/bin/nvcc
SAN=${SANITIZER:-compute-sanitizer}
command -v "$SAN" >/dev/null || SAN=/usr/local/cuda/bin/compute-sanitizer
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
DEADLINE_S=${DEADLINE_S:-470}
T_START=$(date +%s)
step() {   # step NAME LIMIT_S CMD...: runs CMD with a time limit (the smaller of LIMIT_S and what is left)
  local name=$1 lim=$2; shift 2
  local left=$(( DEADLINE_S - ($(date +%s) - T_START) - 10 ))
  [ "$lim" -le "$left" ] || lim=$left
  if [ "$lim" -le 5 ]; then echo "=== $name SKIPPED (out of time)" | tee -a "$LOG"; status=1; return 1; fi
  echo "=== $name ($(date +%T), limit ${lim}s)" | tee -a "$LOG"
  timeout "$lim" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name FAILED (exit $rc)" | tee -a "$LOG"; status=1; }
  return "$rc"
}
nvidia-smi 2>&1 | head -15 | tee -a "$LOG"

# 1. builds: bf16 through make (binaries that travelled with the tree must not count as up to date),
# the fp32 test binary at the same time, by nvcc directly under another name
rm -f train_empo_cu test_empo_cu dev/cache/test_empo_cu_fp32
FLAGS="-O3 -std=c++17 -diag-suppress 177"
FLAGS="$FLAGS -Xcompiler -Wall,-Wextra,-Wno-unused-function,-Wno-unused-parameter,-Wno-unknown-pragmas"
mkdir -p dev/cache
( timeout 240 "$NVCC" $FLAGS -DENABLE_FP32 $ARCH dev/test/test_empo_cu.cu -lcublas -lcublasLt \
    -o dev/cache/test_empo_cu_fp32 \
    >"$OUT/build_fp32.log" 2>&1 &&
  timeout 200 "$NVCC" $FLAGS $ARCH dev/cuda/attention.cu -lcublas -lcublasLt -o dev/cuda/attention \
    >>"$OUT/build_fp32.log" 2>&1 ) &
FP32_PID=$!
step "build bf16 (train_empo_cu, test_empo_cu)" 240 make -j2 cuda NVCC="$NVCC" GPU_ARCH="$ARCH" || \
  { echo "bf16 build failed" | tee -a "$SUM"; }
wait "$FP32_PID"; fp32_rc=$?
cat "$OUT/build_fp32.log" >>"$LOG"
[ "$fp32_rc" -eq 0 ] || { echo "=== build fp32 FAILED (exit $fp32_rc)" | tee -a "$LOG"; status=1; }

# 2. the tests: fp32 first (the strict check), then bf16
[ -x dev/cache/test_empo_cu_fp32 ] && step "test_empo_cu fp32" 90 ./dev/cache/test_empo_cu_fp32
[ -x test_empo_cu ] && step "test_empo_cu bf16" 90 ./test_empo_cu

# 3. sanitizers on the tiny subset
if [ -x test_empo_cu ]; then
  step "compute-sanitizer memcheck (test_empo_cu --tiny)" 60 "$SAN" --tool memcheck --error-exitcode 3 \
    ./test_empo_cu --tiny
  step "compute-sanitizer racecheck (test_empo_cu --tiny)" 75 "$SAN" --tool racecheck --racecheck-report all \
    --error-exitcode 3 ./test_empo_cu --tiny
fi

if [ -x train_empo_cu ]; then
  # 4. rollouts, ours then HF's, same work
  GEN="--prompts 32 -G 7 --prompt-len 256 -n 512 --temp 0.9"
  step "rollouts: train_empo_cu --bench --gen (1.5B shape)" 60 ./train_empo_cu --bench --gen --init qwen1.5b $GEN \
    --json "$RES"
  step "rollouts: HF generate (dev/bench_gen_hf.py)" 100 $PY dev/bench_gen_hf.py $GEN --json "$RES"
  # 5. training, ours then HF's; B=4 for HF if B=8 does not fit
  step "train: train_empo_cu --bench 1.5B B=8 T=1024" 60 ./train_empo_cu --bench --init qwen1.5b -B 8 -T 1024 -x 8 \
    --json "$RES"
  step "train: HF transformers B=8" 90 $PY dev/bench_gpu.py -B 8 -T 1024 -x 8 --json "$RES" || \
    step "train: HF transformers B=4 (B=8 failed)" 60 $PY dev/bench_gpu.py -B 4 -T 1024 -x 8 --json "$RES"
  # 6. the attention kernels alone
  [ -x dev/cuda/attention ] && step "attention lab (dev/cuda/attention 8 1024)" 60 ./dev/cuda/attention 8 1024
  # 7. one EMPO step at the paper's shape, with what is left, inside 24 GiB (--mem-cap 23.5: the
  # plan sizes the KV pool and -b; the defaults are the lean ones). A random model writes no
  # \boxed{} answer, so the EMPO reward would be 0 everywhere and no response would train: the
  # token-entropy reward (-r entropy) gives every response an advantage, so the train phase does the
  # work of a real step (784 responses); generate and score are the same machinery.
  # (the run directory is outside $OUT: the run ends by saving the 6 GB model, which must not travel back)
  STEP_DIR=${TMPDIR:-/tmp}/empo_step
  rm -rf "$STEP_DIR"
  step "one EMPO step, paper shape (112 x 7, 2048 new tokens, 1.5B random init)" 300 \
    ./train_empo_cu --init qwen1.5b,T=2560 -d dev/default/train.jsonl -r entropy -x 1 -B 112 -G 7 -n 2048 -b 4 \
    -E 0 -C 0 -S bf16 --mem-cap 23.5 -o "$STEP_DIR"
  [ -f "$STEP_DIR/log.jsonl" ] && cp "$STEP_DIR/log.jsonl" "$OUT/empo_step_log.jsonl" && \
    $PY - "$STEP_DIR/log.jsonl" "$RES" <<'EOF2'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and '"reward"' in l]
with open(sys.argv[2], "a") as f:
    for r in rows:
        f.write(json.dumps(dict(impl="train_empo_cu_empo_step", **r)) + "\n")
EOF2
fi

# 8. summary
{
  echo "test results:"
  grep -E "^(empo_cu[a-z_]*:|SKIP|FAIL|=== .*(FAILED|SKIPPED))" "$LOG"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOG"   # compute-sanitizer's totals
  echo; echo "benchmarks (Qwen2.5-Math-1.5B shape):"
  $PY - "$RES" <<'EOF2'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def first(impl):
    return next((r for r in rows if r["impl"] == impl), None)
hf_gen, hf_train = first("hf_generate"), first("hf_transformers")
for r in rows:
    if r["impl"] in ("train_empo_cu_generate", "hf_generate"):
        ratio = f", {r['tokens_per_s'] / hf_gen['tokens_per_s']:.2f}x HF" if hf_gen and r is not hf_gen else ""
        bound = f", {100 * r['bound_share']:.1f}% of the decode bandwidth bound" if "bound_share" in r else ""
        print(f"  rollouts {r['impl']:24s} {r['prompts']}x{r['G']}, {r['prompt_len']}+{r['new_tokens']} tokens: "
              f"{r['tokens_per_s']:9.0f} tok/s{bound}{ratio}")
    elif r["impl"] in ("train_empo_cu", "hf_transformers"):
        name = r["impl"] if r["impl"] != "train_empo_cu" else f"train_empo_cu master={r['master']} r={r['recompute']}"
        mem = r.get("mem_device_peak_gib", r.get("mem_allocated_gib"))
        ratio = f", {r['tokens_per_s'] / hf_train['tokens_per_s']:.2f}x HF" if hf_train and r is not hf_train else ""
        print(f"  train {name:36s} B={r['B']}: {r['tokens_per_s']:9.0f} tok/s, MFU {100 * r['mfu']:5.1f}%, "
              f"peak {mem:6.2f} GiB{ratio}")
    elif r["impl"] == "train_empo_cu_empo_step":
        t = r["t_gen"] + r["t_score"] + r["t_train"]
        print(f"  EMPO step (112 x 7, up to 2048 new tokens): {t:.1f} s = generate {r['t_gen']:.1f} + score "
              f"{r['t_score']:.2f} + train {r['t_train']:.1f}; {r['gen_tok_s']:.0f} rollout tok/s, "
              f"mean length {r['resp_len']:.0f}")
EOF2
  # the attention lab's lines: "vN B=.. T=.. ...: forward X ms (Y TFLOP/s), backward X ms (Y TFLOP/s)"
  grep -E "^v[0-9] B=" "$LOG" | while read -r line; do
    fwd=$(sed -n 's/.*forward \([0-9.]*\) ms.*/\1/p' <<<"$line")
    bwd=$(sed -n 's/.*backward \([0-9.]*\) ms.*/\1/p' <<<"$line")
    awk -v l="$line" -v f="$fwd" -v b="$bwd" -v pk="${PEAK_TFLOPS:-989}" 'BEGIN {
      fl = 8 * 1024 * 1024 * 12 * 128 * 4 / 2 * 3.5   # causal: forward 4 B T^2 NH HD / 2, backward 2.5x that
      printf "  attention %s\n    fwd+bwd %.3f ms: %.1f TFLOP/s, %.1f%% of the %d TFLOP/s dense bf16 peak\n", l, f + b,
             fl / ((f + b) * 1e-3) / 1e12, 100 * fl / ((f + b) * 1e-3) / 1e12 / pk, pk }'
  done
  # the memory plan's peak against the allocator's high-water mark of the same run (step 7)
  plan=$(sed -n 's/^memory plan: peak \([0-9.]*\) GiB.*/\1/p' "$LOG" | tail -1)
  meas=$(sed -n 's/^memory measured: \([0-9.]*\) GiB.*/\1/p' "$LOG" | tail -1)
  [ -n "$plan" ] && [ -n "$meas" ] && awk -v p="$plan" -v m="$meas" 'BEGIN {
    printf "  memory, EMPO step under --mem-cap 23.5: plan %.2f GiB, measured %.2f GiB (%+.1f%%)\n", p, m,
           100 * (m - p) / p }'
} 2>&1 | tee "$SUM"
exit $status
