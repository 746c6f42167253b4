#!/usr/bin/env bash
# make compare-rewards: the embedded default run (./train_empo, doc/reproduce.md) once per label-free
# reward, and empo with the EMPO reference's exact-string clustering, all with the same seed, steps,
# data order and evaluation; then one table and one SVG (dev/compare_rewards.c) of all of them.
#   dev/compare_rewards.sh [OUT_DIR] [extra flags for every run, e.g. -x 4 -E 2]
#   JOBS=N   runs at a time (default 1). Results do not depend on it: generation draws from one RNG
#            stream per response and every reduction has a fixed order, so a run prints the same
#            numbers at any thread count. With JOBS > 1 each run gets one thread.
# Writes OUT_DIR/NAME/ (each run's log.jsonl, curves.svg), OUT_DIR/table.md, OUT_DIR/compare_rewards.svg.
# The time column is each run's CPU time (user + sys), which a busy machine inflates less than wall time.
# Needs only bash, the C compiler and ./train_empo (no Python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/compare}
shift || true
EXTRA=("$@")
JOBS=${JOBS:-1}
TOOL=dev/cache/compare_rewards
mkdir -p "$OUT" dev/cache
# a private copy of the binary, so a rebuild during the runs cannot mix two versions into one table
make -s train_empo
BIN=dev/cache/compare_train_empo
cp ./train_empo "$BIN"
${CC:-cc} -O2 -std=gnu11 -fopenmp dev/compare_rewards.c -lm -o "$TOOL"
NAMES=(empo empo-exact ttrl grpo entropy certainty)
declare -A FLAGS=([empo]="-r empo" [empo-exact]="-r empo --cluster exact" [ttrl]="-r ttrl" [grpo]="-r grpo"
                  [entropy]="-r entropy" [certainty]="-r certainty")
one_run() {   # NAME: the run, then its CPU seconds in OUT/NAME.cpu
    local name=$1 t
    rm -rf "${OUT:?}/$name"
    TIMEFORMAT='%U %S'
    # shellcheck disable=SC2086
    { time nice "$BIN" ${FLAGS[$name]} "${EXTRA[@]}" -q -C 0 -o "$OUT/$name" > "$OUT/$name.txt" 2>&1; } \
        2> "$OUT/$name.time" ||
        { echo "$name failed:"; tail -5 "$OUT/$name.txt"; return 1; }
    t=$(tail -1 "$OUT/$name.time")
    awk -v t="$t" 'BEGIN { split(t, a, " "); printf "%.0f\n", a[1] + a[2] }' > "$OUT/$name.cpu"
    echo "== $name done ($(cat "$OUT/$name.cpu") CPU s):"
    grep '^eval' "$OUT/$name.txt" | sed -n '1p;$p'
}
[ "$JOBS" -gt 1 ] && export OMP_NUM_THREADS=1
pids=()
for name in "${NAMES[@]}"; do
    echo "== $name: $BIN ${FLAGS[$name]} ${EXTRA[*]:-} -q -C 0 -o $OUT/$name"
    one_run "$name" &
    pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || exit 1
ARGS=()
for name in "${NAMES[@]}"; do ARGS+=("$name=$OUT/$name/log.jsonl=$(cat "$OUT/$name.cpu")"); done
"$TOOL" "$OUT/table.md" "$OUT/compare_rewards.svg" "${ARGS[@]}"
cat "$OUT/table.md"
echo "wrote $OUT/table.md and $OUT/compare_rewards.svg"
echo "($(date -u '+%Y-%m-%d %H:%M UTC'), JOBS=$JOBS, $(nproc --all) cores)"
