"""The ``triton`` backend against the float64 reference.

Without a GPU the kernels run under Triton's interpreter on CPU tensors. ``@triton.jit`` reads
TRITON_INTERPRET when it decorates, so the variable must be set before triton itself is imported
(its library, tl.zeros, tl.sum, ..., is made of jit functions). This module sets it at collection;
when an earlier test module has already imported triton, the in-process tests skip with that
reason and `test_interpreter_in_subprocess` runs this file again in a fresh process instead.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import igcam_fast.ops as ops  # noqa: E402
import igcam_fast.ops.triton_backend as triton_backend  # noqa: E402  (registers "triton")
from igcam_fast.core.reference import reference_combine, reference_path_images, reference_upsample  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


_SUBPROCESS_ENV = "IGCAM_FAST_TRITON_TEST_SUBPROCESS"


@pytest.fixture(scope="module")
def backend():
    be = ops.get_backend("triton")
    why = be.reasons(DEVICE, DTYPES)
    if why:
        pytest.skip(f"triton backend cannot run on {DEVICE} in this process: {'; '.join(why)}")
    return be


def test_interpreter_in_subprocess():
    """Runs this file in a fresh process when this one cannot interpret (triton imported too early)."""
    be = ops.get_backend("triton")
    if DEVICE.type == "cuda" or not be.reasons(DEVICE, DTYPES) or os.environ.get(_SUBPROCESS_ENV):
        pytest.skip("not needed: the tests run in this process")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", **{_SUBPROCESS_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::DeprecationWarning"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout.strip().splitlines()[-1], run.stdout[-3000:]


def _tol(be, *dtypes):
    rtol, atol = zip(*(be.tolerances[d] for d in dtypes))
    return max(rtol), max(atol)


def _close(actual, expected, rtol, atol):
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol)


def _layout(t, layout):
    """The same values as t in another memory layout."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every dim strided: a view into a larger buffer
        big = torch.empty([2 * s for s in t.shape], dtype=t.dtype, device=t.device).normal_()
        view = big[tuple(slice(None, None, 2) for _ in t.shape)]
        view.copy_(t)
        return view
    return t.contiguous()


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


# --------------------------------------------------------------------------------------------
# path_images
# --------------------------------------------------------------------------------------------

PATH_CASES = [  # B, C, H, W, m, per-image baseline, normalise, channels_last out, out dtype
    (1, 1, 1, 1, 1, False, False, False, None),
    (2, 3, 5, 7, 4, False, True, False, None),
    (3, 4, 9, 6, 5, True, True, True, None),
    (1, 3, 11, 13, 2, True, False, True, torch.float32),
    (2, 2, 3, 17, 3, False, True, False, torch.bfloat16),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_path_images(backend, case, layout, dtype):
    B, C, H, W, m, per_image, normalise, channels_last, out_dtype = case
    x = _layout(_rand(B, C, H, W, dtype=dtype), layout)
    baseline = _layout(_rand(*((B,) if per_image else ()), C, H, W, dtype=dtype), layout)
    alphas = torch.rand(m, device=DEVICE)
    mean = _rand(C) if normalise else None
    std = torch.rand(C, device=DEVICE) + 0.5 if normalise else None
    with ops.poison_outputs():
        out = ops.path_images(x, baseline, alphas, mean, std, dtype=out_dtype, channels_last=channels_last,
                              backend="triton")
    assert out.dtype == (out_dtype or dtype)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _close(out, reference_path_images(x.cpu(), baseline.cpu(), alphas.cpu(), None if mean is None else mean.cpu(),
                                      None if std is None else std.cpu()),
           *_tol(backend, dtype, out.dtype))


def test_path_images_strided_out(backend):
    x, baseline, alphas = _rand(2, 3, 4, 5), _rand(3, 4, 5), torch.rand(3, device=DEVICE)
    out = torch.full((6, 5, 4, 3), float("nan"), device=DEVICE).permute(0, 3, 2, 1)  # (6, 3, 4, 5), odd strides
    ops.path_images(x, baseline, alphas, backend="triton", out=out)
    _close(out, reference_path_images(x.cpu(), baseline.cpu(), alphas.cpu()), *_tol(backend, torch.float32))


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------

COMBINE_CASES = [  # B, m, K, h, w
    (1, 1, 1, 1, 1),
    (2, 3, 3, 7, 7),
    (3, 2, 37, 5, 9),
    (1, 5, 300, 7, 7),  # K split over programs
    (2, 2, 300, 1, 1),
    (1, 2, 37, 9, 9),  # channels_last: the plane spans several tiles (separate weights kernel)
    (1, 2, 3, 33, 33),  # contiguous: likewise
]


def _combine_inputs(B, m, K, h, w, dtype, layout, baseline):
    N = B * m
    # Post-ReLU activations and small gradients: Grad-CAM++'s weights are ill-conditioned on
    # Gaussian activations (its denominator crosses zero), in every precision.
    A = _layout(torch.rand(N, K, h, w, device=DEVICE).to(dtype), layout)
    G = _layout((1e-2 * torch.randn(N, K, h, w, device=DEVICE)).to(dtype), layout)
    base = None
    if baseline == "shared":
        base = _layout(torch.rand(K, h, w, device=DEVICE).to(dtype), layout)
    elif baseline == "per_image":
        base = _layout(torch.rand(B, K, h, w, device=DEVICE).to(dtype), layout)
    step_weights = torch.rand(m, device=DEVICE)
    return A, G, base, step_weights


def _combine_case_id(c):
    return "B{}m{}K{}_{}x{}".format(*c)


@pytest.mark.parametrize("case", COMBINE_CASES, ids=_combine_case_id)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_gradcam(backend, case, layout, dtype):
    baseline = ["shared", "per_image", None][sum(case) % 3]
    A, G, base, sw = _combine_inputs(*case, dtype, layout, baseline)
    with ops.poison_outputs():
        out = ops.combine(A, G, None, base, sw, weight_mode="gradcam", backend="triton")
    ref = reference_combine(A.cpu(), G.cpu(), None, None if base is None else base.cpu(), sw.cpu())
    _close(out, ref, *_tol(backend, dtype))


@pytest.mark.parametrize("case", COMBINE_CASES, ids=_combine_case_id)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_gradcampp(backend, case, layout, dtype):
    A, G, base, sw = _combine_inputs(*case, dtype, layout, "per_image" if case[2] % 2 else "shared")
    with ops.poison_outputs():
        out = ops.combine(A, G, None, base, sw, weight_mode="gradcampp", relu=False, backend="triton")
    ref = reference_combine(A.cpu(), G.cpu(), None, base.cpu(), sw.cpu(), weight_mode="gradcampp", relu=False)
    _close(out, ref, *_tol(backend, dtype))


@pytest.mark.parametrize("case", COMBINE_CASES[:5], ids=_combine_case_id)
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_channel_weights(backend, case, relu, dtype):
    B, m, K, h, w = case
    A, _, base, sw = _combine_inputs(*case, dtype, "strided", "shared")
    A = A - 0.5  # signed maps, so that the ReLU matters
    weights = _layout(_rand(B * m, K), "strided")
    with ops.poison_outputs():
        out = ops.combine(A, None, weights, base, sw, relu=relu, backend="triton")
    ref = reference_combine(A.cpu(), None, weights.cpu(), base.cpu(), sw.cpu(), relu=relu)
    _close(out, ref, *_tol(backend, dtype))


def test_combine_deterministic_and_strided_out(backend):
    A, G, base, sw = _combine_inputs(2, 3, 300, 5, 9, torch.float32, "contiguous", "shared")
    first = ops.combine(A, G, None, base, sw, backend="triton")
    out = torch.full((2, 9, 5), float("nan"), device=DEVICE).transpose(1, 2)
    ops.combine(A, G, None, base, sw, backend="triton", out=out)
    assert torch.equal(first, out)


# --------------------------------------------------------------------------------------------
# upsample
# --------------------------------------------------------------------------------------------

UPSAMPLE_CASES = [  # B, h, w, H, W
    (1, 1, 1, 5, 3),
    (2, 7, 7, 13, 11),
    (3, 5, 9, 31, 17),
    (1, 9, 9, 4, 5),  # downsampling
    (2, 6, 4, 6, 4),  # same size
    (1, 7, 5, 41, 37),  # several tiles per map
]


@pytest.mark.parametrize("case", UPSAMPLE_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_upsample(backend, case, normalize, dtype):
    B, h, w, H, W = case
    maps = _rand(B, h, w, dtype=dtype)
    if case[0] == 2:
        maps = _layout(maps, "strided")
    with ops.poison_outputs():
        out = ops.upsample(maps, (H, W), normalize=normalize, backend="triton")
    assert out.dtype == torch.float32
    rtol, atol = _tol(backend, dtype, torch.float32)
    if normalize:  # a 1-pixel map normalises to 0 / 1e-7: compare the unscaled difference
        atol = max(atol, 1e-5)
    _close(out, reference_upsample(maps.cpu(), (H, W), normalize), rtol, atol)


# --------------------------------------------------------------------------------------------
# the backend and its ops
# --------------------------------------------------------------------------------------------


def test_backend_declaration():
    be = ops.get_backend("triton")
    assert be.name == "triton"
    assert torch.float64 not in be.dtypes
    assert "cuda" in be.devices
    assert ("cpu" in be.devices) == triton_backend.interpreting()
    if be.unavailable_reason() is None:
        assert not be.reasons(DEVICE, [torch.float32]) or DEVICE.type not in be.devices
    assert be.reasons(DEVICE, [torch.float64])


def test_ops_registered(backend):
    from igcam_fast.ops import triton_kernels

    assert triton_kernels.INTERPRETED == (DEVICE.type == "cpu")
    for name in ("path_images", "combine", "upsample"):
        assert hasattr(torch.ops.igcam_fast_triton, name)


def test_registered_ops_match_eager(backend):
    """torch.ops.igcam_fast_triton.* (the path torch.compile and modes take) gives the eager result."""
    A, G, base, sw = _combine_inputs(2, 3, 37, 5, 9, torch.float32, "channels_last", "per_image")
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


@pytest.mark.needs_cuda
def test_opcheck(backend):
    x, base, alphas = _rand(2, 3, 8, 8), _rand(3, 8, 8), torch.rand(4, device=DEVICE)
    A, G, Ab, sw = _combine_inputs(2, 4, 64, 7, 7, torch.float32, "contiguous", "shared")
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
    from igcam_fast.ops import triton_kernels as k

    x, base, alphas = _rand(2, 3, 8, 8), _rand(3, 8, 8), torch.rand(4, device=DEVICE)
    A, G, Ab, sw = _combine_inputs(2, 4, 64, 7, 7, torch.float32, "contiguous", "shared")

    @torch.compile(fullgraph=True)
    def pipeline(x, A, G, Ab, sw):
        images = torch.empty(8, 3, 8, 8, device=x.device)
        k.path_images(x, base, alphas, None, None, images)
        maps = torch.empty(2, 7, 7, device=x.device)
        k.combine(A, G, None, Ab, sw, 0, True, maps)
        up = torch.empty(2, 30, 30, device=x.device)
        k.upsample(maps, True, up)
        return images, up

    images, up = pipeline(x, A, G, Ab, sw)
    _close(images, reference_path_images(x.cpu(), base.cpu(), alphas.cpu()), 2e-5, 1e-5)
    ref = reference_upsample(reference_combine(A.cpu(), G.cpu(), None, Ab.cpu(), sw.cpu()), (30, 30), True)
    _close(up, ref, 1e-4, 1e-4)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("mode", ["gradcam", "gradcampp"])
def test_gpu_sized(backend, layout, mode):
    """ResNet-50-sized layer, 32 path points: against the eager torch backend in fp32."""
    A, G, base, sw = _combine_inputs(2, 32, 2048, 7, 7, torch.float32, layout, "shared")
    got = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="triton")
    want = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    A, G, base, sw = _combine_inputs(1, 16, 512, 28, 28, torch.bfloat16, layout, "per_image")
    got = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="triton")
    want = ops.combine(A, G, None, base, sw, weight_mode=mode, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    x = _layout(_rand(4, 3, 224, 224, dtype=torch.bfloat16), layout)
    alphas, mean, std = torch.rand(32, device=DEVICE), _rand(3), torch.rand(3, device=DEVICE) + 0.5
    got = ops.path_images(x, torch.zeros_like(x[0]), alphas, mean, std, backend="triton")
    want = ops.path_images(x, torch.zeros_like(x[0]), alphas, mean, std, backend="torch")
    torch.testing.assert_close(got, want)
    maps = _rand(8, 7, 7)
    got = ops.upsample(maps, (224, 224), normalize=True, backend="triton")
    want = ops.upsample(maps, (224, 224), normalize=True, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
