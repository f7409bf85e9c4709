#!/usr/bin/env bash
# One call for a session that has a CUDA GPU: GPU tests, then the kernel and pipeline benchmarks, results written to
# benchmarks/results/ named after the device (commit them). Usage: bash benchmarks/gpu_session.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_device.txt"
python -m pytest -q -m gpu tests/kernels 2>&1 | tail -30 | tee "$OUT/gpu_tests.txt"
python -m benchmarks.bench_attention --device cuda --repeats 10 2>&1 | tail -20
python -m benchmarks.bench_attention --device cuda --heads 40 --layouts "wan 768x1280x69" --tag h40 --repeats 5 \
    2>&1 | tail -5
python -m benchmarks.bench_fidelity --device cuda --skip-pipeline 2>&1 | tail -6
# Text in joint attention: one joint call vs the LSE-merged split, side by side (drives the split choice's CUDA numbers).
python -m benchmarks.bench_text_blocks --device cuda --out "$OUT/text_blocks_cuda.md" 2>&1 | tail -5
if [[ "${1:-}" != "--quick" ]]; then
    # Compiled (regional) vs eager accelerated tiny Wan on CUDA: the Triton custom op inside compiled graphs.
    python -m benchmarks.bench_compile --device cuda --height 480 --width 832 --frames 33 --layers 4 --heads 12 \
        --head-dim 128 2>&1 | tail -10  # writes benchmarks/results/compile_cuda.{json,md}
    python -m benchmarks.bench_pipeline --device cuda --layers 8 --heads 12 --head-dim 128 --frames 81 \
        --height 480 --width 832 --steps 10 --repeats 2 --presets radial draft rettention taylorseer radial+taylorseer 2>&1 | tail -8
fi
