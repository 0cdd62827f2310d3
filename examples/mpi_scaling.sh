#!/usr/bin/env bash
# The MPI scaling table: for 1, 2 and 4 ranks and each gradient method, time per step,
# bytes rank 0 put on the wire per step next to a dense f32 allreduce, and the final
# test accuracy — on the digits run and on a larger synthetic model.
#
#   cargo build --release --features mpi
#   examples/mpi_scaling.sh [target/release/regimen]
#
# Each run is `mpirun -np N regimen run SCRIPT --dist mpi`; the numbers come from the
# run's summary.json. On a machine with fewer cores than ranks, `--oversubscribe`
# makes the ranks share cores, so time per step there shows contention, not scaling.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/regimen}
EPOCHS=${EPOCHS:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# The digits script with each compression rule (biases stay dense).
for method in none "topk(ratio: 0.05) with error_feedback" \
    "powersgd(rank: 2, warm_start: true) with error_feedback" "onebit with error_feedback"; do
    name=${method%%(*}; name=${name%% *}
    { grep -v '^group\|^compress' examples/digits.regimen
      echo 'group "*.bias" { weight_decay = 0; compress none }'
      echo "compress $method"; } > "$work/$name.regimen"
done

field() { sed -n "s/^  \"$2\": \(.*\),\?$/\1/p" "$1/summary.json" | tr -d ','; }

printf '%-40s %5s %-9s %12s %14s %14s %9s\n' workload ranks method "ms/step" "wire B/step" "dense B/step" accuracy
run() { # workload ranks method extra-args…
    local workload=$1 ranks=$2 method=$3; shift 3
    local out="$work/out-$workload-$ranks-$method"
    mpirun --oversubscribe -np "$ranks" "$BIN" run "$work/$method.regimen" --dist mpi \
        --quiet --epochs "$EPOCHS" --out "$out" "$@" > /dev/null
    local steps seconds wire dense acc
    steps=$(field "$out" steps_done); seconds=$(field "$out" seconds)
    wire=$(field "$out" wire_bytes_sent); dense=$(field "$out" wire_bytes_dense)
    acc=$(field "$out" final_test_accuracy)
    awk -v w="$workload" -v r="$ranks" -v m="$method" -v n="$steps" -v s="$seconds" \
        -v b="$wire" -v d="$dense" -v a="$acc" 'BEGIN {
        printf "%-40s %5d %-9s %12.2f %14.0f %14.0f %8.2f%%\n", w, r, m, 1000*s/n, b/n, d/n, 100*a }'
}
for ranks in 1 2 4; do
    for method in none topk powersgd onebit; do
        run "digits mlp:64,128,10 b32" "$ranks" "$method"
    done
done
for ranks in 1 2 4; do
    for method in none topk powersgd onebit; do
        run "teacher:8192,256,10 mlp:256,512,512,10" "$ranks" "$method" \
            --data teacher:8192,256,10 --model mlp:256,512,512,10 --batch-size 256
    done
done
