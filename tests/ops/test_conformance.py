"""Every op × every backend × dtype × layout × awkward case against the float64 reference.

Generated from the declarations: the ops and their cases from igcam_fast.ops.registry, the
backends from dispatch (each with the devices, dtypes and layouts it declares), the tolerance
from the backend. Outputs are NaN-poisoned, so an element a kernel forgets to write fails.
Backends that cannot run here (no GPU, not built) are listed and skip with their reason; the
``triton`` backend runs under the interpreter without a GPU (tests/conftest.py).
"""

from __future__ import annotations

import pytest

import igcam_fast.ops as ops
from igcam_fast.ops.registry import OPS

from op_checks import backend_skip_reason, check_case, device_for


def _matrix():
    params = []
    for backend_name in ops.backend_names():
        backend = ops.get_backend(backend_name)
        for device_type in ("cpu", "cuda"):
            if device_type not in backend.devices:
                continue
            for spec in OPS.values():
                if spec.name not in backend.ops:
                    continue
                for dtype in (d for d in spec.dtypes if d in backend.dtypes):
                    for layout in (la for la in spec.layouts if la in backend.layouts):
                        for case in spec.cases(dtype, layout):
                            params.append(pytest.param(spec, case, backend_name, device_type,
                                                       id=f"{backend_name}-{device_type}-{spec.name}-{case.id}"))
    return params


MATRIX = _matrix()


@pytest.mark.parametrize("spec,case,backend_name,device_type", MATRIX)
def test_conformance(spec, case, backend_name, device_type):
    backend = ops.get_backend(backend_name)
    device = device_for(device_type)
    why = backend_skip_reason(backend, device, [case.dtype])
    if why:
        pytest.skip(why)
    check_case(spec, case, backend, device)


def test_matrix_covers_every_op_and_backend_here():
    """The generated matrix is not empty where it must not be: each op runs on torch and cpu here."""
    ran = {(p.values[2], p.values[0].name) for p in MATRIX}
    for op in OPS:
        for backend in ("torch", "cpu", "triton", "cuda"):
            assert (backend, op) in ran, f"no conformance case of {op} on {backend}"
