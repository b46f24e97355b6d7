#!/usr/bin/env bash
# Random-weight OPT-1.3B and OPT-6.7B on one CUDA GPU, fp16, offline; < 8 min (docs/benchmarks.md).
#   benchmarks/gpu_opt.sh [extra `skipdecode bench gpu` flags]     # JSON in $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-bench-results/gpu-opt-$(date +%Y%m%d-%H%M%S).json}"
exec "$PY" -m skipdecode.cli bench gpu --model-preset 1.3b,6.7b --batch-size 1,8,16,32,64 \
    --speedups 1,2,3,4,5 --input-len 128 --output-len 128 --dtype float16 --device cuda \
    --time-budget 420 --output-json "$OUT" "$@"
