"""The one conformance check of the op tests, and which backends run where.

``check_case`` is what tests/ops/test_conformance.py runs for every op × backend × dtype ×
layout × case, what the GPU-sized cases run, and what the test of a deliberately wrong
backend expects to fail. (Fixtures are in conftest.py.)
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

import igcam_fast.ops as ops
from igcam_fast.ops.registry import Case, OpSpec

NO_GPU = "needs an NVIDIA GPU; none is visible on this machine"

#: (backend, input dtypes, op) -> worst error seen, printed with IGCAM_FAST_REPORT_ERRORS=1.
WORST_ERRORS: dict = defaultdict(float)


def device_for(device_type: str) -> torch.device:
    return torch.device("cuda" if device_type == "cuda" else "cpu")


#: Backends that must run (comma-separated names): on a GPU machine, IGCAM_FAST_REQUIRE_BACKENDS=cuda,triton
#: turns "triton is not installed" from a skip into a failure.
REQUIRE_ENV = "IGCAM_FAST_REQUIRE_BACKENDS"


def backend_skip_reason(backend: ops.Backend, device: torch.device, dtypes) -> str | None:
    """Why a backend's cases cannot run here (None: they run); fails instead of skipping for a
    backend named in IGCAM_FAST_REQUIRE_BACKENDS."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return NO_GPU
    why = backend.reasons(device, dtypes)
    if not why:
        return None
    reason = f"backend {backend.name} cannot run on {device.type} here: {'; '.join(why)}"
    if backend.name in os.environ.get(REQUIRE_ENV, "").split(","):
        pytest.fail(f"{reason} ({REQUIRE_ENV} requires it)")
    return reason


def scaled_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual − expected| / max(1, max|expected|): the error the tolerances bound."""
    if expected.numel() == 0:
        return 0.0
    scale = max(1.0, float(expected.abs().max()))
    return float((actual.double().cpu() - expected).abs().max()) / scale


def check_case(spec: OpSpec, case: Case, backend: ops.Backend, device: torch.device) -> float:
    """Run one case on ``backend`` (forced) with NaN-poisoned outputs against the float64
    reference; assert the backend ran, every element was written and the error is within the
    backend's tolerance. Returns the error."""
    prep = case.prepare(device)
    with ops.poison_outputs(), ops.recording() as ran:
        out = spec.entry(*prep.args, **prep.options, **prep.op_options, backend=backend.name)
    expected = spec.reference(*prep.ref_args, **prep.options)
    what = f"{spec.name} {case.id} on {backend.name}"
    if prep.out is not None:
        assert out is prep.out, f"{what}: did not return the given out"
    if prep.expect_dtype is not None:
        assert out.dtype == prep.expect_dtype, f"{what}: dtype {out.dtype}, want {prep.expect_dtype}"
    if prep.expect_memory_format is not None:
        assert out.is_contiguous(memory_format=prep.expect_memory_format), f"{what}: wrong layout {out.stride()}"
    assert out.device.type == device.type
    if out.numel():
        assert ran == {spec.name: backend.name}, f"{what}: dispatch recorded {ran}"
    actual = out.detach().double().cpu()
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: {int(torch.isnan(actual).sum())} elements unwritten (NaN)"
    error = scaled_error(actual, expected)
    tolerance = backend.tolerance(prep.input_dtypes, out.dtype) * prep.amplification
    key = (backend.name, tuple(sorted(str(d).replace("torch.", "") for d in prep.input_dtypes)), spec.name)
    WORST_ERRORS[key] = max(WORST_ERRORS[key], error / prep.amplification)
    assert error <= tolerance, (f"{what}: error {error:.3g} > tolerance {tolerance:.3g} "
                                f"(input dtypes {sorted(map(str, prep.input_dtypes))}, out {out.dtype})")
    return error
