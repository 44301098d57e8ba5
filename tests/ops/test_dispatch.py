"""Dispatch and the backend declarations: reasons in words, no silent fallback, the record of
what ran, and tolerances that bite (a backend accumulating in half precision must fail)."""

from __future__ import annotations

import pytest
import torch

import igcam_fast.ops as ops
from igcam_fast.ops.backends import OpCall, PRIORITY, TorchBackend
from igcam_fast.ops.backends.compiled import kernel_image_reason
from igcam_fast.ops.registry import OPS

from op_checks import check_case

CPU = torch.device("cpu")


def test_public_names():
    for name in ("path_images", "combine", "upsample", "poison_outputs", "choose_backend", "explain_backends",
                 "get_backend", "backend_names", "register_backend", "minmax_scale", "accumulation_dtype",
                 "WEIGHT_MODES", "BACKEND_ENV", "recording"):
        assert hasattr(ops, name), name
    assert ops.WEIGHT_MODES == {"gradcam": 0, "gradcampp": 1}
    assert ops.accumulation_dtype(torch.float16) == torch.float32
    assert ops.accumulation_dtype(torch.float64) == torch.float64


def test_priority_names_are_registered_backends():
    registered = set(ops.backend_names())
    for names in PRIORITY.values():
        assert set(names) <= registered


def test_every_op_of_the_registry_is_implemented_by_every_backend():
    for name in ops.backend_names():
        backend = ops.get_backend(name)
        for op in OPS:
            assert op in backend.ops and callable(getattr(backend, op)), (name, op)
            assert set(backend.dtypes) <= set(backend.tolerances), name


def test_recording_names_the_backend_of_each_op():
    x = torch.rand(2, 3, 4, 5)
    A, G = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    with ops.recording() as outer:
        ops.path_images(x, x[0], torch.rand(2), backend="torch")
        with ops.recording() as inner:
            maps = ops.combine(A, G, None, None, torch.rand(2))
        ops.upsample(maps, (5, 5), backend="torch")
    chosen = ops.choose_backend(CPU, [torch.float32]).name
    assert inner == {"combine": chosen}
    assert outer == {"path_images": "torch", "combine": chosen, "upsample": "torch"}
    with ops.recording() as both:
        ops.upsample(maps, (3, 3), backend="torch")
        ops.upsample(maps, (3, 3), backend=chosen)
    assert both == {"upsample": "+".join(sorted({"torch", chosen}))}


def test_nothing_is_recorded_outside_a_block_or_for_a_failed_call():
    with ops.recording() as ran:
        with pytest.raises(ValueError, match="triton"):
            ops.upsample(torch.randn(1, 2, 2, dtype=torch.float64), (3, 3), backend="triton")
    assert ran == {}


def test_forced_backend_raises_with_its_reasons():
    with pytest.raises(ValueError, match=r"backend='triton' cannot run upsample: .*float64"):
        ops.upsample(torch.randn(1, 2, 2, dtype=torch.float64), (3, 3), backend="triton")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        ops.upsample(torch.randn(1, 2, 2), (3, 3), backend="nope")


def test_forced_by_environment(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "torch")
    with ops.recording() as ran:
        ops.upsample(torch.randn(1, 2, 2), (3, 3))
    assert ran == {"upsample": "torch"}
    monkeypatch.setenv(ops.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match=r"IGCAM_FAST_BACKEND='cuda' cannot run upsample"):
        ops.upsample(torch.randn(1, 2, 2), (3, 3))


def test_explain_backends_lists_each_op():
    text = ops.explain_backends("cpu", torch.float32)
    chosen = ops.choose_backend(CPU, [torch.float32]).name
    for op in OPS:
        assert f"  {op:12s} {chosen}" in text
    for name in ops.backend_names():
        assert f"  {name:7s} " in text
    assert "does not support dtype float64" in ops.explain_backends("cpu", torch.float64)


class _OnlyUpsample(TorchBackend):
    name = "only_upsample"
    ops = ("upsample",)


class _Tiny(TorchBackend):
    """Declares a size limit, as the Triton backend does for its 32-bit indices."""

    name = "tiny"

    def limits(self, call):
        if call.op == "upsample" and call.tensors["out"].numel() > 10:
            return [f"output of {call.tensors['out'].numel()} elements is over 10"]
        return []


def test_declared_ops_and_limits_are_reasons(temporary_backend):
    temporary_backend("only_upsample", _OnlyUpsample)
    temporary_backend("tiny", _Tiny)
    x = torch.rand(1, 1, 2, 2)
    with pytest.raises(ValueError, match="only_upsample' cannot run path_images: does not implement path_images"):
        ops.path_images(x, x[0], torch.rand(2), backend="only_upsample")
    ops.upsample(torch.randn(1, 2, 2), (3, 3), backend="only_upsample")
    ops.upsample(torch.randn(1, 2, 2), (3, 3), backend="tiny")
    with pytest.raises(ValueError, match="output of 16 elements is over 10"):
        ops.upsample(torch.randn(1, 2, 2), (4, 4), backend="tiny")


def test_triton_size_limits_are_reasons_not_crashes():
    triton = ops.get_backend("triton")
    meta = torch.device("meta")
    big_image = torch.empty(1, 3, 2**15, 2**15, device=meta)  # 3·2^30 elements per image
    call = OpCall("path_images", CPU, frozenset({torch.float32}), {"x": big_image, "out": big_image})
    assert any("2^31" in why for why in triton.limits(call))
    plane = torch.empty(2, 1, 2**16, 2**15, device=meta)
    assert any("h·w plane" in why for why in triton.limits(OpCall("combine", CPU, frozenset(), {"activations": plane})))
    out = torch.empty(1, 2**16, 2**15, device=meta)
    assert any("output map" in why for why in triton.limits(OpCall("upsample", CPU, frozenset(), {"out": out})))
    small = torch.empty(70000, 3, 4, 4, device=meta)  # many rows are fine: the kernels loop past 65535
    assert triton.limits(OpCall("path_images", CPU, frozenset(), {"x": small, "out": small})) == []


@pytest.mark.parametrize("capability,archs,runs", [
    ((9, 0), ["sm_75", "sm_80", "sm_90", "compute_90"], True),
    ((8, 6), ["sm_75", "sm_80", "sm_90", "compute_90"], True),  # sm_80 machine code runs on 8.x
    ((8, 9), ["sm_80", "sm_90"], True),
    ((7, 0), ["sm_75", "sm_80", "sm_90", "compute_90"], False),  # V100: nothing it can run
    ((7, 5), ["sm_80", "sm_90", "compute_90"], False),  # T4 without sm_75
    ((10, 0), ["sm_80", "sm_90", "compute_90"], True),  # Blackwell JIT-compiles the Hopper PTX
    ((10, 0), ["sm_80", "sm_90"], False),  # no PTX: no image
    ((12, 0), ["sm_80", "compute_80"], True),
    ((9, 0), None, True),  # nothing recorded: the probe decides
])
def test_kernel_image_reason(capability, archs, runs):
    why = kernel_image_reason(capability, archs)
    assert (why is None) == runs, why
    if not runs:
        assert f"{capability[0]}.{capability[1]}" in why and "TORCH_CUDA_ARCH_LIST" in why


def test_setup_records_the_architectures_and_defaults_to_ptx():
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "setup.py").read_text()
    tree = ast.parse(source)
    namespace = {"re": __import__("re")}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "_arch_defines":
            exec(compile(ast.Module([node], []), "setup.py", "exec"), namespace)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DEFAULT_CUDA_ARCH_LIST":
            default = ast.literal_eval(node.value)
    assert "+PTX" in default
    assert namespace["_arch_defines"]("7.5;8.0;9.0+PTX") == ["-DIGCAM_FAST_SM_ARCHS=75,80,90",
                                                            "-DIGCAM_FAST_PTX_ARCHS=90"]
    assert namespace["_arch_defines"]("8.0 9.0a") == []  # not recorded: left to the runtime probe


# ---- the tolerances bite ---------------------------------------------------------------------


class _HalfAccumulating(TorchBackend):
    """combine as the torch backend, but accumulated in the input dtype: what a kernel that
    claims float32 accumulation but keeps half precision would give."""

    name = "half_accumulating"
    tolerances = TorchBackend.tolerances

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        narrow = torch.empty(out.shape, dtype=activations.dtype, device=out.device)
        wide = out.dtype
        # every intermediate in the input dtype, then widened: the sums are half-precision sums
        cast = lambda t: None if t is None else t.to(activations.dtype)  # noqa: E731
        A, G, cw, base = (cast(t) for t in (activations, gradients, channel_weights, baseline_features))
        N, K, h, w = A.shape
        m = step_weights.shape[0]
        weights = cw if cw is not None else G.sum(dim=(2, 3), dtype=A.dtype) / (h * w)
        if base is not None:
            A = A - (base.repeat_interleave(m, dim=0) if base.dim() == 4 else base)
        s = torch.zeros(N, h, w, dtype=A.dtype)
        for k in range(K):
            s = s + weights[:, k, None, None] * A[:, k]
        if relu:
            s = s.clamp(min=0)
        narrow.zero_()
        for t in range(m):
            narrow += step_weights[t].to(A.dtype) * s[t::m]
        out.copy_(narrow.to(wide))


def _gradcam_cases(dtype):
    spec = OPS["combine"]
    return spec, [c for c in spec.cases(dtype, "contiguous")
                  if c.variant["weights"] != "gradcampp" and c.shape[2] >= 37]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_accumulation_fails_the_tolerance(temporary_backend, dtype):
    half_accumulating = temporary_backend("half_accumulating", _HalfAccumulating)
    spec, cases = _gradcam_cases(dtype)
    assert cases
    for case in cases:
        # the same check passes for the torch backend, which accumulates in float32 ...
        check_case(spec, case, ops.get_backend("torch"), CPU)
        # ... and fails for one that accumulates in the input dtype
        with pytest.raises(AssertionError, match="error .* > tolerance"):
            check_case(spec, case, half_accumulating, CPU)


def test_python_checks_name_the_argument():
    x, A = torch.rand(2, 3, 4, 4), torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="baseline"):
        ops.path_images(x, torch.rand(3, 4, 5), torch.rand(2))
    with pytest.raises(ValueError, match="mean and std"):
        ops.path_images(x, x[0], torch.rand(2), mean=torch.rand(3))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.path_images(x, x[0], torch.rand(2), out=torch.empty(3, 3, 4, 4))
    with pytest.raises(TypeError, match="gradients"):
        ops.combine(A, A.double(), None, None, torch.rand(2))
    with pytest.raises(ValueError, match="len\\(step_weights\\)"):
        ops.combine(A, A, None, None, torch.rand(3))
    with pytest.raises(ValueError, match="channel_weights"):
        ops.combine(A, None, torch.rand(4, 2), None, torch.rand(2))
    with pytest.raises(ValueError, match="out must be a torch.float32 tensor"):
        ops.combine(A, A, None, None, torch.rand(2), out=torch.empty(2, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="size"):
        ops.upsample(torch.rand(1, 2, 2), (0, 3))
    with pytest.raises(TypeError, match="maps"):
        ops.upsample(torch.ones(1, 2, 2, dtype=torch.int64), (3, 3))
