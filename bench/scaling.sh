#!/usr/bin/env bash
# OpenMP scaling: the (4096, 4096) activation groups, the large normalisation shapes and one training epoch, timed
# for each thread count of CYNET_BENCH_THREADS (default 1,2,4,8,16) against torch and the floors of the same thread
# count. Meant for a host with more cores than the development machine.
#
#   bash bench/scaling.sh [DIR]        (default bench/results/scaling; PYTHON=python3 to choose the interpreter)
#
# One pytest run per suite and thread count, each under `timeout $SUITE_TIMEOUT` (default 300 s): a run that
# overruns loses its own JSON only. Writes DIR/SUITE-tN.json and .log, then DIR/SUITE.md, report.py's table of all
# of a suite's JSON files together.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/scaling}
mkdir -p "$out"
python=${PYTHON:-python}
IFS=, read -r -a counts <<<"${CYNET_BENCH_THREADS:-1,2,4,8,16}"
status=0

suite() {  # suite NAME PYTEST-ARGS...: one run per thread count, then the report of them all
    local name=$1 n
    shift
    for n in "${counts[@]}"; do
        echo "== $name, $n threads ($(date +%T))"
        CYNET_BENCH_THREADS=$n timeout "${SUITE_TIMEOUT:-300}" "$python" -m pytest "$@" --benchmark-only -q \
            -p no:cacheprovider --benchmark-json="$out/$name-t$n.json" >"$out/$name-t$n.log" 2>&1 || status=1
        tail -n 1 "$out/$name-t$n.log"
    done
    "$python" bench/report.py "$out/$name"-t*.json >"$out/$name.md" && cat "$out/$name.md" || status=1
}

# The multi-threaded work only: the single-threaded NumPy reference and NumPy floor add nothing to a scaling table.
suite activations bench/test_bench_activations.py --bench-time 0.15 \
    -k "4096x4096 and not interleaved and (cynet or torch or limit_torch or limit_stream)"
suite normalization bench/test_bench_normalization.py --bench-time 0.15 \
    -k "(4096x4096 or 128x64x32x32) and (cynet or torch or limit_torch or limit_stream)"
suite training bench/test_bench_training.py --bench-min-rounds 3 \
    -k "test_epoch and not interleaved and mlp- and (cynet- or torch or floor)"
exit $status
