"""pytest-benchmark micro-benchmarks of the three fused ops, per available backend.

    python -m pytest bench/test_ops_bench.py [--benchmark-json out.json]

Not collected by the main test run (pyproject's testpaths = tests). On a machine with a GPU the
ops run on CUDA tensors with every backend that can take them (cuda, triton, torch); without one,
on CPU tensors with the cpu and torch backends. A backend that cannot run here is skipped with
its reasons. On the GPU each timed call ends with a synchronisation, so the host clock that
pytest-benchmark reads measures the kernel, not its launch.
"""

import pytest
import torch

from bench.comparators import backend_reasons
from bench.op_cases import op_case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = ["cuda", "triton", "torch"] if DEVICE.type == "cuda" else ["cpu", "torch"]

SHAPES = {
    # path_images: (B, m, C, H, W); combine: (B·m, K, h, w) with m = 16; upsample: (B, h, w, H, W)
    "path_images": [(1, 16, 3, 224, 224)],
    "combine": [(16, 2048, 7, 7), (16, 1280, 7, 7), (16, 512, 14, 14)],
    "upsample": [(1, 7, 7, 224, 224)],
}
CASES = [(op, shape) for op, shapes in SHAPES.items() for shape in shapes]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,shape", CASES, ids=[f"{op}-{'x'.join(map(str, s))}" for op, s in CASES])
def test_op(benchmark, op, shape, backend):
    why = backend_reasons(backend, DEVICE, [torch.float32])
    if why:
        pytest.skip(f"backend {backend!r}: {'; '.join(why)}")
    call, nbytes = op_case(op, shape, DEVICE)

    if DEVICE.type == "cuda":
        def run():
            call(backend)
            torch.cuda.synchronize()
    else:
        def run():
            call(backend)

    run()  # compile / autotune outside the measurement
    benchmark.group = f"{op} {'x'.join(map(str, shape))}"
    benchmark.extra_info.update(device=str(DEVICE), backend=backend, bytes=nbytes, torch=torch.__version__)
    benchmark.pedantic(run, rounds=30 if DEVICE.type == "cpu" else 200, warmup_rounds=3, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (each case runs once, untimed)
        benchmark.extra_info["gbps_at_median"] = nbytes / benchmark.stats.stats.median / 1e9
