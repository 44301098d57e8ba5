"""The ``triton`` backend: what the conformance test (test_conformance.py) does not cover.

Without a GPU the kernels run under Triton's interpreter on CPU tensors, in this process
(tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported). Here: the declaration,
the registration as torch.ops.igcam_fast_triton.*, the grid past 65535 rows, determinism, and
the GPU-only checks (opcheck, torch.compile fullgraph, a ResNet-50-sized layer).
"""

import pytest
import torch

import igcam_fast.ops as ops
from igcam_fast.core.reference import reference_combine, reference_path_images, reference_upsample
from igcam_fast.ops.backends.triton import interpreting, kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def backend():
    be = ops.get_backend("triton")
    why = be.reasons(DEVICE, DTYPES)
    if why:
        pytest.skip(f"triton backend cannot run on {DEVICE} in this process: {'; '.join(why)}")
    return be


def _close(actual, expected, rtol, atol):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def _combine_inputs(B, m, K, h, w, dtype=torch.float32, channels_last=False):
    N = B * m
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    A = torch.rand(N, K, h, w, device=DEVICE).to(dtype).contiguous(memory_format=fmt)
    G = (1e-2 * torch.randn(N, K, h, w, device=DEVICE)).to(dtype).contiguous(memory_format=fmt)
    base = torch.rand(B, K, h, w, device=DEVICE).to(dtype)
    return A, G, base, torch.rand(m, device=DEVICE)


def test_backend_declaration():
    be = ops.get_backend("triton")
    assert be.name == "triton"
    assert torch.float64 not in be.dtypes
    assert "cuda" in be.devices
    assert ("cpu" in be.devices) == interpreting()
    if not torch.cuda.is_available():
        # tests/conftest.py set TRITON_INTERPRET=1 in time: the backend runs here, in-process
        assert interpreting() and be.reasons(DEVICE, [torch.float32]) == []
    assert be.reasons(DEVICE, [torch.float64])


def test_ops_registered(backend):
    assert kernels().INTERPRETED == (DEVICE.type == "cpu")
    for name in ("path_images", "combine", "upsample"):
        assert hasattr(torch.ops.igcam_fast_triton, name)


def test_registered_ops_match_eager(backend):
    """torch.ops.igcam_fast_triton.* (the path torch.compile and modes take) gives the eager result."""
    A, G, base, sw = _combine_inputs(2, 3, 37, 5, 9, channels_last=True)
    eager = ops.combine(A, G, None, base, sw, weight_mode="gradcampp", backend="triton")
    out = torch.full_like(eager, float("nan"))
    torch.ops.igcam_fast_triton.combine(A, G, None, base, sw, 1, True, out)
    assert torch.equal(out, eager)
    maps = _rand(2, 5, 9)
    up = torch.full((2, 11, 13), float("nan"), device=DEVICE)
    torch.ops.igcam_fast_triton.upsample(maps, True, up)
    assert torch.equal(up, ops.upsample(maps, (11, 13), normalize=True, backend="triton"))
    x, baseline, alphas = _rand(2, 3, 4, 5), _rand(3, 4, 5), torch.rand(3, device=DEVICE)
    images = torch.full((6, 3, 4, 5), float("nan"), device=DEVICE)
    torch.ops.igcam_fast_triton.path_images(x, baseline, alphas, None, None, images)
    assert torch.equal(images, ops.path_images(x, baseline, alphas, backend="triton"))


def test_combine_deterministic(backend):
    A, G, base, sw = _combine_inputs(2, 3, 300, 5, 9)
    first = ops.combine(A, G, None, base, sw, backend="triton")
    out = torch.full((2, 9, 5), float("nan"), device=DEVICE).transpose(1, 2)
    ops.combine(A, G, None, base, sw, backend="triton", out=out)
    assert torch.equal(first, out)


def test_row_programs_stay_within_the_grid_limit():
    common = kernels().common
    assert common.row_programs(1) == 1
    assert common.row_programs(65535) == 65535
    assert common.row_programs(70000) == 65535  # the kernels loop over the rest
    assert common.row_programs(0) == 1


@pytest.mark.parametrize("gradients", [True, False])
def test_rows_past_the_grid_limit_are_looped_over(backend, monkeypatch, gradients):
    """With the row limit lowered to 2, every kernel must loop to cover 7 rows / images / maps:
    the loop that takes a real GPU past 65535 rows, run where the interpreter can afford it."""
    monkeypatch.setattr(kernels().common, "MAX_GRID_ROWS", 2)
    x, baseline, alphas = _rand(7, 2, 3, 5), _rand(7, 2, 3, 5), torch.rand(3, device=DEVICE)
    mean, std = _rand(2), torch.rand(2, device=DEVICE) + 0.5
    with ops.poison_outputs():
        images = ops.path_images(x, baseline, alphas, mean, std, backend="triton")
    _close(images, reference_path_images(x.cpu(), baseline.cpu(), alphas.cpu(), mean.cpu(), std.cpu()), 1e-6, 1e-6)
    A, G, base, sw = _combine_inputs(7, 1, 5, 33, 33)  # 33x33 plane: the separate weights kernel too
    weights = None if gradients else _rand(7, 5)
    with ops.poison_outputs():
        maps = ops.combine(A, G if gradients else None, weights, base, sw, weight_mode="gradcam", backend="triton")
    ref = reference_combine(A.cpu(), G.cpu() if gradients else None, None if weights is None else weights.cpu(),
                            base.cpu(), sw.cpu())
    _close(maps, ref, 1e-5, 1e-5)
    with ops.poison_outputs():
        up = ops.upsample(maps[:, :5, :7], (9, 4), normalize=gradients, backend="triton")
    _close(up, reference_upsample(maps[:, :5, :7].cpu(), (9, 4), gradients), 1e-5, 1e-5)


def test_zero_channels_give_zero_maps(backend):
    A = torch.randn(4, 0, 3, 3, device=DEVICE)
    out = ops.combine(A, A, None, None, torch.rand(2, device=DEVICE), backend="triton")
    assert out.shape == (2, 3, 3) and bool((out == 0).all())


@pytest.mark.needs_cuda
def test_opcheck(backend):
    x, base, alphas = _rand(2, 3, 8, 8), _rand(3, 8, 8), torch.rand(4, device=DEVICE)
    A, G, Ab, sw = _combine_inputs(2, 4, 64, 7, 7)
    maps = _rand(2, 7, 7)
    samples = [
        (torch.ops.igcam_fast_triton.path_images, (x, base, alphas, None, None, torch.empty(8, 3, 8, 8, device=DEVICE))),
        (torch.ops.igcam_fast_triton.combine, (A, G, None, Ab, sw, 1, True, torch.empty(2, 7, 7, device=DEVICE))),
        (torch.ops.igcam_fast_triton.upsample, (maps, True, torch.empty(2, 30, 30, device=DEVICE))),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.needs_cuda
def test_compile(backend):
    k = kernels()
    x, base, alphas = _rand(2, 3, 8, 8), _rand(3, 8, 8), torch.rand(4, device=DEVICE)
    A, G, Ab, sw = _combine_inputs(2, 4, 64, 7, 7)

    @torch.compile(fullgraph=True)
    def pipeline(x, A, G, Ab, sw):
        images = torch.empty(8, 3, 8, 8, device=x.device)
        k.path_images.path_images(x, base, alphas, None, None, images)
        maps = torch.empty(2, 7, 7, device=x.device)
        k.combine.combine(A, G, None, Ab, sw, 0, True, maps)
        up = torch.empty(2, 30, 30, device=x.device)
        k.upsample.upsample(maps, True, up)
        return images, up

    images, up = pipeline(x, A, G, Ab, sw)
    _close(images, reference_path_images(x.cpu(), base.cpu(), alphas.cpu()), 2e-5, 1e-5)
    ref = reference_upsample(reference_combine(A.cpu(), G.cpu(), None, Ab.cpu(), sw.cpu()), (30, 30), True)
    _close(up, ref, 1e-4, 1e-4)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["gradcam", "gradcampp"])
def test_gpu_sized(backend, channels_last, mode):
    """ResNet-50-sized layer, 32 path points: against the eager torch backend in fp32."""
    A, G, base, sw = _combine_inputs(2, 32, 2048, 7, 7, channels_last=channels_last)
    got = ops.combine(A, G, None, base[0], sw, weight_mode=mode, backend="triton")
    want = ops.combine(A, G, None, base[0], sw, weight_mode=mode, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    A, G, base, sw = _combine_inputs(1, 16, 512, 28, 28, torch.bfloat16, channels_last=channels_last)
    got = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="triton")
    want = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = _rand(4, 3, 224, 224, dtype=torch.bfloat16).contiguous(memory_format=fmt)
    alphas, mean, std = torch.rand(32, device=DEVICE), _rand(3), torch.rand(3, device=DEVICE) + 0.5
    got = ops.path_images(x, torch.zeros_like(x[0]), alphas, mean, std, backend="triton")
    want = ops.path_images(x, torch.zeros_like(x[0]), alphas, mean, std, backend="torch")
    torch.testing.assert_close(got, want)
    maps = _rand(8, 7, 7)
    got = ops.upsample(maps, (224, 224), normalize=True, backend="triton")
    want = ops.upsample(maps, (224, 224), normalize=True, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kernels_compile_for_a_gpu():
    """Triton's real compiler (not the interpreter) takes every kernel, to PTX and cubin for
    sm_90, in a fresh process without TRITON_INTERPRET (tests/ops/triton_aot.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, str(root / "tests" / "ops" / "triton_aot.py"), "90"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert "compiled 11 kernel variants for sm_90" in run.stdout
