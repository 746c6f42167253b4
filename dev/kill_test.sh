#!/usr/bin/env bash
# dev/kill_test.sh: kill -9 a training run at random moments, many times, and check that every resume
# ends exactly where the uninterrupted run ends: the same model bytes, the same optimizer state, the
# same logged numbers (timings aside). With -C 1 most of a run's time is spent committing checkpoints
# (each is synced to disk), so many kills land inside a write; the script counts those (a .tmp left).
# A kill before the first commit leaves nothing to resume: the resume must then refuse clearly.
#
# usage: dev/kill_test.sh [KILLS (default 24)] [SEED]     (after `make train_empo`)
# Exit 0 when every trial matches; prints one line per trial and a summary.
set -u
cd "$(dirname "$0")/.."
KILLS=${1:-24}
SEED=${2:-$$}
RANDOM=$SEED
[ -x ./train_empo ] || { echo "build ./train_empo first (make train_empo)"; exit 2; }
W=$(mktemp -d /tmp/empo_kill.XXXXXX)
trap 'rm -rf "$W"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
STEPS=12
# a wide vocabulary makes each checkpoint ~50 MB (weights + both moments) against a ~0.1 s step, so
# about half of the run is spent inside checkpoint writes
RUN="./train_empo --init C=64,L=1,NH=4,NKV=2,I=128,T=256,V=65536 --sft dev/default/sft.jsonl -B 1 -l 3e-3 -E 0 -q -C 1"

# u32 at byte offset $2 of file $1 (little-endian)
u32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
# "model_end opt_start size" of a run checkpoint (doc/formats.md, "Run state")
parts() {
    local f=$1 size len end clen
    size=$(stat -c %s "$f")
    len=$(u32 "$f" $((size - 24)))
    end=$((size - 32 - len))
    clen=$(u32 "$f" $((end + 96)))
    echo "$end $((end + 128 + clen)) $size"
}
lognums() { sed -e 's/, "time".*//' -e 's/, "gen_tok_s".*//' "$1/log.jsonl"; }
same_as_ref() {   # dir
    local a b
    read -r ea oa sa < <(parts "$1/model.bin")
    read -r eb ob sb < <(parts "$W/ref/model.bin")
    [ "$ea" = "$eb" ] || { echo "model part sizes differ"; return 1; }
    cmp -s -n "$ea" "$1/model.bin" "$W/ref/model.bin" || { echo "the model differs"; return 1; }
    [ $((sa - oa)) = $((sb - ob)) ] || { echo "optimizer block sizes differ"; return 1; }
    cmp -s -i "$oa:$ob" -n $((sa - oa - 32)) "$1/model.bin" "$W/ref/model.bin" ||
      { echo "the optimizer state differs"; return 1; }
    diff -q <(lognums "$1") <(lognums "$W/ref") > /dev/null || { echo "the log differs"; return 1; }
    return 0
}

t0=$(date +%s.%N)
$RUN -x $STEPS -o "$W/ref" || { echo "the reference run failed"; exit 1; }
t1=$(date +%s.%N)
ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", (b - a) * 1000}')
echo "seed $SEED | reference run: $STEPS steps, checkpoint every step, $ms ms | $KILLS kills"

fails=0; in_write=0; refused=0
for k in $(seq 1 "$KILLS"); do
    d="$W/run"   # the same name every time: the stored config (which holds -o) has the same length
    rm -rf "$d"
    delay=$((RANDOM % (ms + 50)))
    $RUN -x $STEPS -o "$d" > /dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v x="$delay" 'BEGIN {printf "%.3f", x / 1000}')"
    kill -9 "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    st=$?
    tmp=$(ls "$d" 2> /dev/null | grep -c '\.tmp$')
    [ "$tmp" -gt 0 ] && in_write=$((in_write + 1))
    at="-"
    [ -f "$d/model.bin" ] && at=$(u32 "$d/model.bin" $(( $(parts "$d/model.bin" | cut -d' ' -f1) + 8 )) 2> /dev/null)
    if [ ! -f "$d/model.bin" ]; then
        msg=$(./train_empo --resume "$d" -x $STEPS 2>&1)
        if [ $? -ne 0 ] && echo "$msg" | grep -q "nothing to resume"; then
            refused=$((refused + 1))
            printf "kill %2d at %5d ms (exit %3d): nothing committed yet (%d .tmp); resume refused: %s\n" \
                "$k" "$delay" "$st" "$tmp" "$msg"
        else
            fails=$((fails + 1)); echo "kill $k: FAIL: no checkpoint, and the resume did not refuse: $msg"
        fi
        continue
    fi
    out=$(./train_empo --resume "$d" -x $STEPS -q 2>&1)
    rc=$?
    why=""
    if [ $rc -ne 0 ]; then why="resume exit $rc: $out"; elif ! why=$(same_as_ref "$d"); then :; else why=""; fi
    if [ -z "$why" ] && ls "$d" | grep -q '\.tmp$'; then why="a .tmp file is left after the resume"; fi
    if [ -z "$why" ]; then
        printf "kill %2d at %5d ms (exit %3d): checkpoint at step %s, %d .tmp left%s -> resumed: identical\n" \
            "$k" "$delay" "$st" "$at" "$tmp" "$([ "$tmp" -gt 0 ] && echo ' (killed inside a write)')"
    else
        fails=$((fails + 1))
        printf "kill %2d at %5d ms: FAIL: %s\n" "$k" "$delay" "$why"
    fi
done
echo "kill_test: $KILLS kills, $in_write inside a write, $refused before the first commit (refused), $fails failed"
[ $fails -eq 0 ]
