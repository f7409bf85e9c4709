#!/usr/bin/env bash
# One call for a session that has a CUDA GPU (about 8-10 minutes of device time): in order, each step bounded by a
# timeout and failing soft (a failed step is reported and the next one runs):
#   1. the device line ($OUT/gpu_device.txt) and the GPU tests ($OUT/gpu_tests.txt);
#   2. the kernel table: benchmarks/bench_attention.py with the triton, flex and sdpa backends;
#   3. the measured efficiency table: diffusion-fast efficiency (--json $OUT/efficiency_<device>.json);
#   4. the Wan denoising-step table: benchmarks/bench_wan_step.py (dense against every preset, random weights);
#   5. the tables again, the list of result files and the steps that failed (exit status 1 if any did).
# Result files are written to benchmarks/results/ (named after the device; commit them) and copied to $OUT/results/
# when $OUT is another folder (a device machine's output folder); full logs go to $OUT/logs/.
#
#   bash benchmarks/gpu_session.sh            # on the GPU machine
#   bash benchmarks/gpu_session.sh --dry-run  # the whole script on the CPU at tiny sizes, outputs in a temporary $OUT
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash benchmarks/gpu_session.sh [--dry-run]" >&2; exit 2 ;;
esac
if (( DRY )); then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_session_dry_run.XXXXXX")"  # a dry run never writes benchmarks/results
    DEVICE=cpu
else
    OUT="${OUT:-benchmarks/results}"
    DEVICE=cuda
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd -P)"
RESULTS_DIR="$(cd benchmarks/results && pwd -P)"
if [[ "$OUT" == "$RESULTS_DIR" ]]; then LOGS="$(mktemp -d)"; else LOGS="$OUT/logs"; fi  # no logs among the results
mkdir -p "$LOGS"
STARTED="$(mktemp)"  # result files newer than this one are this session's
trap 'rm -f "$STARTED"' EXIT
TAG="$(python -c "from benchmarks.common import device_tag; print(device_tag('$DEVICE'))" 2>/dev/null)" || TAG=$DEVICE
FAILED=()

# The limits add up to 570 s (under a device call's 600 s); a typical run takes 6-7 minutes.
# step NAME SECONDS CMD...: run CMD with a time limit, its output in $LOGS/NAME.log, the last lines shown.
step() {
    local name=$1 limit=$2 log="$LOGS/$1.log" t0=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    tail -n 6 "$log" | sed 's/^/   /'
    if (( rc == 124 || rc == 137 )); then
        FAILED+=("$name: timed out after ${limit} s")
    elif (( rc != 0 )); then
        FAILED+=("$name: exit status $rc (see $log)")
    fi
    echo "== $name: exit status $rc, $((SECONDS - t0)) s"
}

# 1. Device and GPU tests
if (( DRY )); then
    echo "== device: dry run on the CPU (nvidia-smi and the GPU tests skipped)"
    echo "dry run: $(python -c 'from benchmarks.common import device_name; print(device_name("cpu"))')" \
        >"$OUT/gpu_device.txt"
else
    step device 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    cp "$LOGS/device.log" "$OUT/gpu_device.txt"
    step gpu_tests 80 python -m pytest -q -m gpu tests/kernels
    tail -n 30 "$LOGS/gpu_tests.log" >"$OUT/gpu_tests.txt"
fi

# 2. Kernel table (writes benchmarks/results/attention_<device>.{json,md}; its layouts are all full size, so a dry
# run, which must not overwrite committed results, skips it)
if (( DRY )); then
    echo "== kernel_table: skipped in a dry run (bench_attention has no small layouts)"
else
    step kernel_table 100 python -m benchmarks.bench_attention --device cuda --backends triton flex sdpa --repeats 5
fi

# 3. Measured efficiency table (stdout kept as $OUT/efficiency_<device>.txt)
if (( DRY )); then
    step efficiency 60 diffusion-fast efficiency --device cpu --dtype float32 --head-dim 64 \
        --json "$OUT/efficiency_$TAG.json"
else
    # every backend measured (first use stops at 3 s; the Triton and flex compiles alone take longer)
    step efficiency 60 diffusion-fast efficiency --device cuda --dtype bfloat16 --head-dim 128 --remeasure \
        --budget 45 --json "$OUT/efficiency_$TAG.json"
fi
cp "$LOGS/efficiency.log" "$OUT/efficiency_$TAG.txt"

# 4. Wan denoising step (its own budget leaves room for the configuration running when it is spent)
if (( DRY )); then
    step wan_step 120 python -m benchmarks.bench_wan_step --dry-run --out "$OUT"
else
    step wan_step 300 python -m benchmarks.bench_wan_step --device cuda --budget-s 220
fi

# 5. Tables and result files
RESULTS=$(find "$RESULTS_DIR" -maxdepth 1 -type f -newer "$STARTED" | sort)
if [[ -n "$RESULTS" && "$OUT" != "$RESULTS_DIR" ]]; then
    mkdir -p "$OUT/results"
    while read -r f; do cp "$f" "$OUT/results/"; done <<<"$RESULTS"
fi
OUTPUTS=$(find "$OUT" -type f -newer "$STARTED" -not -path "$LOGS/*" | sort)
show() {  # show TITLE FILE...: the first non-empty file, else a note
    local title=$1 f
    shift
    echo
    echo "######## $title"
    for f in "$@"; do
        if [[ -s "$f" ]]; then cat "$f"; return; fi
    done
    echo "(none produced)"
}
show "Wan denoising step" $(grep -E '/wan_step_[^/]*\.md$' <<<"$OUTPUTS"$'\n'"$RESULTS")
show "Kernel table" $(grep -E '/attention_[^/]*\.md$' <<<"$RESULTS")
show "Efficiency table" "$OUT/efficiency_$TAG.txt"
echo
echo "######## Result files written under benchmarks/results (this session)"
echo "${RESULTS:-(none)}"
echo "######## Files in $OUT (logs: $LOGS)"
echo "${OUTPUTS:-(none)}"
echo
if (( ${#FAILED[@]} )); then
    echo "######## Failed steps"
    printf '%s\n' "${FAILED[@]}"
else
    echo "######## Every step succeeded"
fi
echo "outputs: $OUT"
exit $(( ${#FAILED[@]} > 0 ))
