#!/usr/bin/env bash
# plan_check.sh: Qwen2.5-Math-1.5B's EMPO run at the paper's shape (G=7, 112 prompts per step,
# 512-token prompts, 2,048 new tokens) fits 24 GiB with train_empo_cu's default settings and
# 16 GiB with the leanest, by its memory plan (train_empo_cu --plan): the run's own allocation
# functions walked without a GPU, nothing allocated. Prints both tables. The caps leave 0.5 GiB of
# each card to the CUDA context, which is not an allocation (--mem-cap counts our allocations). No GPU, no nvcc: the
# emulator's bf16 build runs the real program's main (make plan-check builds it).
#   usage: dev/cuda/plan_check.sh [BINARY [ARGS...]]   (default: dev/cache/emu_cuda_bf16 --run)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -gt 0 ]; then BIN=("$@"); else BIN=(dev/cache/emu_cuda_bf16 --run); fi
PAPER=(--plan --init qwen1.5b -d dev/default/train.jsonl -G 7 -B 112 -n 2048 --plan-prompt 512)
status=0
check() {   # NAME CAP MIN_B FLAGS...: the plan must fit CAP GiB with -b at least MIN_B
    local name=$1 cap=$2 min_b=$3; shift 3
    echo "== $name: --mem-cap $cap $*"
    local out
    if ! out=$("${BIN[@]}" "${PAPER[@]}" --mem-cap "$cap" "$@" 2>&1); then
        echo "$out"; echo "FAIL $name: the plan refused --mem-cap $cap"; status=1; return
    fi
    echo "$out"
    local peak b
    peak=$(sed -n 's/^plan peak: \([0-9.]*\) GiB.*/\1/p' <<< "$out")
    b=$(sed -n 's/.* new, -b \([0-9]*\).*/\1/p' <<< "$out")
    if [ -z "$peak" ] || [ -z "$b" ]; then echo "FAIL $name: no plan peak in the output"; status=1; return; fi
    if awk -v p="$peak" -v c="$cap" -v b="$b" -v mb="$min_b" 'BEGIN {exit !(p <= c && b >= mb)}'; then
        echo "PASS $name: plan peak $peak GiB <= $cap GiB at -b $b"
    else
        echo "FAIL $name: plan peak $peak GiB (cap $cap), -b $b (at least $min_b wanted)"; status=1
    fi
}
check "default settings, a 24 GiB card" 23.5 8
check "leanest settings, a 16 GiB card" 15.5 8 --master 0 --moments 8bit --grads bf16 --recompute 3
exit $status
