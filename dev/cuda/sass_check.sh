#!/bin/bash
# sass_check.sh: the tensor-core attention kernels of train_empo.cu really run on tensor cores and
# keep everything in registers. One compile of train_empo.cu (bf16) into an object for every target
# in GPU_ARCH (default sm_80 + sm_90) with ptxas -v; then, per kernel and target:
#   (a) cuobjdump -sass must show HMMA instructions (mma.sync lowered to the tensor cores), and
#   (b) ptxas must report 0 bytes of spill stores and loads (a spill would put the accumulators in
#       local memory: correct, but slow, and nothing in the emulator would show it).
# Prints one line per kernel: target, kernel, registers, spill stores/loads, HMMA count.
# Needs nvcc and cuobjdump, no GPU. Usage: make sass-check (or NVCC=... GPU_ARCH=... dev/cuda/sass_check.sh);
# SASS_STRICT=1 (CI) refuses the PTX fallback below.
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-nvcc}
GPU_ARCH=${GPU_ARCH:-"-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90"}
# cuobjdump: $CUOBJDUMP, else next to nvcc, else on the PATH. Some toolkit installs lack it: then (b) and a
# weaker (a) run: the kernels' PTX must hold mma.sync (kept from the same compile), reported as "PTX mma".
CUOBJDUMP=${CUOBJDUMP:-$(dirname "$(command -v "$NVCC")")/cuobjdump}
[ -x "$CUOBJDUMP" ] || CUOBJDUMP=$(command -v cuobjdump || true)
KERNELS="attention_forward_tc_kernel attention_backward_tc_kernel"
KEEP=dev/cache/sass_check_keep
rm -rf "$KEEP" && mkdir -p "$KEEP"
OBJ=dev/cache/sass_check.o LOG=dev/cache/sass_check.ptxas SASS=dev/cache/sass_check.sass
# shellcheck disable=SC2086
"$NVCC" -c -O3 -std=c++17 -diag-suppress 177 -Xptxas -v --keep --keep-dir "$KEEP" $GPU_ARCH train_empo.cu \
    -o "$OBJ" > "$LOG" 2>&1 || { cat "$LOG"; echo "sass-check: compile failed"; exit 1; }
if [ -n "$CUOBJDUMP" ]; then
    "$CUOBJDUMP" -sass "$OBJ" > "$SASS"
    WHAT=HMMA
elif [ "${SASS_STRICT:-0}" = 1 ]; then
    echo "sass-check: no cuobjdump (SASS_STRICT=1 needs the SASS): set CUOBJDUMP=, or install NVIDIA's"
    echo "  nvidia-cuda-cuobjdump wheel from PyPI as .ci/run does"
    exit 1
else
    echo "sass-check: no cuobjdump in this toolkit: counting mma.sync in the PTX instead of HMMA in the SASS"
    # the same layout as cuobjdump's: "arch = sm_XX" per target (from the .ptx file's .target), "Function : NAME"
    for f in "$KEEP"/*.ptx; do
        awk '/^\.target/ { print "arch = " $2 } /\.entry/ { n = $0; sub(/.*\.entry[ \t]+/, "", n); sub(/\(.*/, "", n);
             print "Function : " n } /mma\.sync/ { print "HMMA" }' "$f"
    done > "$SASS"
    WHAT="PTX mma"
fi

# ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'", then "N bytes spill stores, M bytes spill
# loads" and "Used R registers". cuobjdump: "arch = sm_XX" starts a target, "Function : NAME" a kernel.
ptx=$(awk '/Compiling entry function/ { split($0, q, "'\''"); name = q[2]; arch = q[4] }
           /spill stores/ { st[arch " " name] = $5; ld[arch " " name] = $9 }
           /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") rg[arch " " name] = $(i + 1) }
           END { for (k in rg) print k, rg[k], st[k], ld[k] }' "$LOG")
hmma=$(awk '/arch = sm_/ { arch = $3 } /Function :/ { name = $3 } /HMMA/ { n[arch " " name]++ }
            END { for (k in n) print k, n[k] }' "$SASS")
fail=0 found=0
while read -r arch name regs st ld; do
    for k in $KERNELS; do
        case "$name" in *"$k"*) ;; *) continue ;; esac
        found=$((found + 1))
        hd=$(echo "$name" | sed -n 's/.*ILi\([0-9]*\)E.*/\1/p')
        h=$(echo "$hmma" | awk -v a="$arch" -v f="$name" '$1 == a && $2 == f { print $3 }')
        h=${h:-0}
        status=ok
        if [ "$h" -eq 0 ]; then status="FAIL: no $WHAT"; fail=1; fi
        if [ "$st" != 0 ] || [ "$ld" != 0 ]; then status="FAIL: spills"; fail=1; fi
        printf '%-6s %-36s %3s registers, spill stores %s B, loads %s B, %5s %s  %s\n' "$arch" "$k<$hd>" \
            "$regs" "$st" "$ld" "$h" "$WHAT" "$status"
    done
done <<< "$(echo "$ptx" | sort)"
if [ "$found" -eq 0 ]; then echo "sass-check: no tensor-core attention kernel found in $OBJ"; exit 1; fi
if [ "$fail" -ne 0 ]; then echo "sass-check: FAILED"; exit 1; fi
echo "sass-check: $found kernels, all with $WHAT, no spills"
