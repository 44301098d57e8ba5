"""The compiled backends (igcam_fast._C on CPU, igcam_fast._C_cuda on CUDA) against igcam_fast.core.reference.

Shapes are swept over awkward sizes (K not a multiple of any block, h·w = 1, odd H and W), dtypes
with the backend's per-dtype tolerances, contiguous / channels_last / strided views, and outputs
pre-filled with NaN so an element a kernel forgets to write fails the comparison. Inputs are
fresh random numbers each run; a failing case prints its seed. The ``needs_cuda`` tests are the
GPU verification and skip where no GPU is visible.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
import torch

import igcam_fast.ops as ops
from igcam_fast.ops.backends import get_backend
from igcam_fast.ops.extension import extension_status
from igcam_fast.core.reference import reference_combine, reference_path_images, reference_upsample

STATUS = extension_status()
OPS = ("path_images_out", "combine_out", "upsample_out")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
needs_ext = pytest.mark.skipif(not STATUS["built"], reason=f"igcam_fast._C is not built: {STATUS['error']}")

# The case lists are sampled from the full products with a fixed local RNG (no global seed), so
# the sweep is the same every run while the tensor values are fresh.
_pick = random.Random(20240611)


def _sample(cases, n):
    cases = list(cases)
    return cases if len(cases) <= n else _pick.sample(cases, n)


def _generator():
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator().manual_seed(seed), seed


def _tolerance(*dtypes, backend="cpu"):
    tols = get_backend(backend).tolerances
    return max(tols[d][0] for d in dtypes), max(tols[d][1] for d in dtypes)


def _laid_out(t, layout):
    """t (4-D) as contiguous, channels_last or a strided view (neither)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, k, h, w = t.shape  # a view whose spatial dims cannot be flattened and K stride is not 1
    big = torch.full((n, h + 1, 2 * k, w + 1), float("nan"), dtype=t.dtype, device=t.device)
    view = big[:, :h, ::2, 1:].permute(0, 2, 1, 3)
    view.copy_(t)
    return view


def _assert_close(actual, expected, rtol, atol, seed, what):
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what} (seed {seed}): {m}")


# ---------------------------------------------------------------------------------------------
# case lists (shared by the CPU and the CUDA sweeps)
# ---------------------------------------------------------------------------------------------

PATH_SHAPES = [  # (B, C, H, W, m)
    (1, 3, 1, 1, 1), (2, 3, 5, 9, 4), (3, 1, 7, 7, 16), (1, 3, 33, 31, 5), (8, 4, 3, 5, 3), (2, 3, 17, 13, 64),
]
PATH_CASES = _sample(
    [(s, xd, od, xl, ol, b4, norm)
     for s in PATH_SHAPES for xd in DTYPES for od in DTYPES
     for xl in ("contiguous", "channels_last", "strided") for ol in ("contiguous", "channels_last", "strided")
     for b4 in (False, True) for norm in (False, True)], 48)

HW = [(1, 1), (7, 7), (14, 14), (28, 28), (5, 9)]
COMBINE_SHAPES = [  # (B, m, K, h, w)
    (1, 1, 1, 7, 7), (2, 3, 3, 5, 9), (1, 16, 37, 7, 7), (8, 2, 130, 1, 1), (2, 5, 130, 14, 14),
    (3, 4, 37, 28, 28), (1, 64, 3, 5, 9), (4, 1, 130, 7, 7), (1, 2, 37, 1, 1), (5, 3, 1, 14, 14),
]
WEIGHTS = ("gradcam", "gradcampp", "given")
COMBINE_CASES = _sample(
    [(s, dt, la, lg, base, wt, relu)
     for s in COMBINE_SHAPES for dt in DTYPES
     for la in ("contiguous", "channels_last", "strided") for lg in ("same", "contiguous", "channels_last")
     for base in (None, 3, 4) for wt in WEIGHTS for relu in (True, False)], 72)

UPSAMPLE_SHAPES = [  # (B, h, w, H, W)
    (1, 1, 1, 5, 7), (2, 5, 9, 13, 17), (4, 14, 14, 11, 9), (3, 7, 7, 224, 224), (1, 28, 28, 97, 31), (8, 3, 2, 3, 2),
]
UPSAMPLE_CASES = [(s, dt, norm, lay) for s in UPSAMPLE_SHAPES for dt in DTYPES for norm in (False, True)
                  for lay in ("contiguous", "transposed")]
UPSAMPLE_CASES = _sample(UPSAMPLE_CASES, 40)


def _case_id(case):
    return "-".join(str(c).replace("torch.", "").replace(" ", "") for c in case)


# ---------------------------------------------------------------------------------------------
# runners: one case of one op on one device against the float64 reference
# ---------------------------------------------------------------------------------------------


def run_path_images(case, device, backend):
    (B, C, H, W, m), xd, od, xl, ol, base4, norm = case
    gen, seed = _generator()
    x = torch.rand(B, C, H, W, generator=gen).to(xd)
    baseline = torch.rand(*((B,) if base4 else ()), C, H, W, generator=gen).to(xd)
    alphas = torch.rand(m, generator=gen, dtype=torch.float64)
    mean = torch.rand(C, generator=gen) if norm else None
    std = torch.rand(C, generator=gen) + 0.5 if norm else None
    expected = reference_path_images(x, baseline, alphas, mean, std)
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    x_d = _laid_out(x.to(device), xl)
    base_d = _laid_out(baseline.to(device), xl) if base4 else baseline.to(device)
    if ol == "strided":  # a caller-provided out in neither layout
        out = torch.full((C, H, W, B * m), float("nan"), dtype=od, device=device).permute(3, 0, 1, 2)
        ops.path_images(x_d, base_d, dev(alphas), dev(mean), dev(std), backend=backend, out=out)
    else:
        with ops.poison_outputs():
            out = ops.path_images(x_d, base_d, dev(alphas), dev(mean), dev(std), dtype=od,
                                  channels_last=ol == "channels_last", backend=backend)
        assert out.is_contiguous(memory_format=torch.channels_last if ol == "channels_last" else torch.contiguous_format)
    assert out.dtype == od and out.device.type == torch.device(device).type
    rtol, atol = _tolerance(xd, od, backend=backend)
    _assert_close(out, expected, rtol, atol, seed, f"path_images {_case_id(case)}")


def run_combine(case, device, backend):
    (B, m, K, h, w), dt, la, lg, base, wt, relu = case
    N = B * m
    gen, seed = _generator()
    mode = "gradcampp" if wt == "gradcampp" else "gradcam"
    # Grad-CAM++ sees post-ReLU activations (its weights are ill-conditioned otherwise).
    A = torch.randn(N, K, h, w, generator=gen)
    if wt == "gradcampp":
        A = A.abs()
    A = A.to(dt)
    G = (torch.randn(N, K, h, w, generator=gen) * 0.5).to(dt) if wt != "given" else None
    cw_dtype = torch.float32 if dt in (torch.float16, torch.bfloat16) and K % 2 else dt  # mixed dtypes too
    cw = torch.randn(N, K, generator=gen).to(cw_dtype) if wt == "given" else None
    Ab = None
    if base is not None:
        Ab = torch.randn(*((B,) if base == 4 else ()), K, h, w, generator=gen)
        Ab = (Ab.abs() if wt == "gradcampp" else Ab).to(dt)
    omega = torch.rand(m, generator=gen, dtype=torch.float64)
    expected = reference_combine(A, G, cw, Ab, omega, mode, relu)
    A_d = _laid_out(A.to(device), la)
    G_d = None if G is None else _laid_out(G.to(device), la if lg == "same" else lg)
    Ab_d = None if Ab is None else (_laid_out(Ab.to(device), la) if Ab.dim() == 4 else Ab.to(device))
    cw_d = None if cw is None else cw.to(device)
    with ops.poison_outputs():
        out = ops.combine(A_d, G_d, cw_d, Ab_d, omega.to(device), weight_mode=mode, relu=relu, backend=backend)
    assert out.dtype == (torch.float64 if dt == torch.float64 else torch.float32)
    rtol, atol = _tolerance(dt, *(() if cw is None else (cw.dtype,)), backend=backend)
    _assert_close(out, expected, rtol, atol, seed, f"combine {_case_id(case)}")
    # a caller-provided, transposed out
    out2 = torch.full((B, w, h), float("nan"), dtype=out.dtype, device=device).transpose(1, 2)
    ops.combine(A_d, G_d, cw_d, Ab_d, omega.to(device), weight_mode=mode, relu=relu, backend=backend, out=out2)
    _assert_close(out2, expected, rtol, atol, seed, f"combine out= {_case_id(case)}")


def run_upsample(case, device, backend):
    (B, h, w, H, W), dt, norm, lay = case
    gen, seed = _generator()
    maps = torch.randn(B, h, w, generator=gen).to(dt)
    expected = reference_upsample(maps, (H, W), norm)
    maps_d = maps.to(device)
    if lay == "transposed":
        maps_d = maps_d.transpose(1, 2).contiguous().transpose(1, 2)
    with ops.poison_outputs():
        out = ops.upsample(maps_d, (H, W), normalize=norm, backend=backend)
    rtol, atol = _tolerance(dt, backend=backend)
    _assert_close(out, expected, rtol, atol, seed, f"upsample {_case_id(case)}")
    if dt == torch.float32 and not norm:
        # The scale as torch computes it: agrees with F.interpolate to ~1e-6. (Not after the
        # min-max scaling: that magnifies float32 rounding of near-constant maps by up to 1e7.)
        torch_out = ops.upsample(maps_d, (H, W), backend="torch")
        torch.testing.assert_close(out, torch_out, rtol=1e-6, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# (a) CPU sweeps
# ---------------------------------------------------------------------------------------------


def test_extension_is_built():
    assert STATUS["built"], f"igcam_fast._C is not built: {STATUS['error']}; run pip install --no-build-isolation -e ."
    assert STATUS["cpu_kernels"] == list(OPS)
    assert get_backend("cpu").unavailable_reason() is None
    assert ops.choose_backend(torch.device("cpu"), [torch.float32]).name == "cpu"


@needs_ext
@pytest.mark.parametrize("case", PATH_CASES, ids=_case_id)
def test_path_images_cpu(case):
    run_path_images(case, "cpu", "cpu")


@needs_ext
@pytest.mark.parametrize("case", COMBINE_CASES, ids=_case_id)
def test_combine_cpu(case):
    run_combine(case, "cpu", "cpu")


@needs_ext
@pytest.mark.parametrize("case", UPSAMPLE_CASES, ids=_case_id)
def test_upsample_cpu(case):
    run_upsample(case, "cpu", "cpu")


@needs_ext
def test_cpu_matches_torch_backend_float32():
    """The eager chain and the C++ kernels agree closely on one realistic shape."""
    gen, seed = _generator()
    A = torch.randn(16, 64, 7, 7, generator=gen).relu()
    G = torch.randn(16, 64, 7, 7, generator=gen) * 1e-2
    omega = torch.rand(8, generator=gen)
    for mode in ("gradcam", "gradcampp"):
        got = ops.combine(A, G, None, A[:2], omega, weight_mode=mode, backend="cpu")
        want = ops.combine(A, G, None, A[:2], omega, weight_mode=mode, backend="torch")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{mode} seed {seed}: {m}")


@needs_ext
def test_bad_arguments_name_the_argument():
    A = torch.randn(4, 3, 5, 5)
    out = torch.empty(2, 5, 5)
    with pytest.raises(RuntimeError, match="gradients"):
        torch.ops.igcam_fast.combine_out(A, torch.randn(4, 3, 5, 4), None, None, torch.ones(2), 0, True, out)
    with pytest.raises(RuntimeError, match="step_weights"):
        torch.ops.igcam_fast.combine_out(A, A, None, None, torch.ones(3), 0, True, out)
    with pytest.raises(RuntimeError, match="out"):
        torch.ops.igcam_fast.combine_out(A, A, None, None, torch.ones(2), 0, True, torch.empty(2, 5, 5).double())
    with pytest.raises(RuntimeError, match="baseline"):
        torch.ops.igcam_fast.path_images_out(torch.randn(1, 3, 4, 4), torch.randn(3, 4, 5), torch.ones(2), None,
                                             None, torch.empty(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="maps"):
        torch.ops.igcam_fast.upsample_out(torch.randn(2, 0, 3), False, torch.empty(2, 4, 4))


@needs_ext
def test_empty_inputs():
    out = torch.empty(0, 3, 4, 4)
    torch.ops.igcam_fast.path_images_out(torch.randn(0, 3, 4, 4), torch.randn(3, 4, 4), torch.ones(2), None, None, out)
    out = torch.full((2, 3, 3), float("nan"))
    torch.ops.igcam_fast.combine_out(torch.randn(4, 0, 3, 3), torch.randn(4, 0, 3, 3), None, None, torch.ones(2), 0,
                                     True, out)
    assert (out == 0).all()  # no channels: every map is zero, as the eager chain gives


# ---------------------------------------------------------------------------------------------
# (b) opcheck, (c) torch.compile
# ---------------------------------------------------------------------------------------------


def _op_samples(device):
    A = torch.randn(6, 5, 3, 4, device=device)
    G = torch.randn(6, 5, 3, 4, device=device)
    cl = A.contiguous(memory_format=torch.channels_last)
    return [
        (torch.ops.igcam_fast.path_images_out.default,
         (torch.rand(2, 3, 5, 4, device=device), torch.rand(3, 5, 4, device=device), torch.rand(3, device=device),
          torch.rand(3, device=device), torch.rand(3, device=device) + 0.5, torch.empty(6, 3, 5, 4, device=device))),
        (torch.ops.igcam_fast.path_images_out.default,
         (torch.rand(1, 2, 3, 3, device=device, dtype=torch.float16), torch.rand(1, 2, 3, 3, device=device),
          torch.rand(4, device=device), None, None,
          torch.empty(4, 2, 3, 3, device=device).contiguous(memory_format=torch.channels_last))),
        (torch.ops.igcam_fast.combine_out.default,
         (A, G, None, A[0], torch.rand(3, device=device), 0, True, torch.empty(2, 3, 4, device=device))),
        (torch.ops.igcam_fast.combine_out.default,
         (cl.abs(), G.contiguous(memory_format=torch.channels_last), None, None, torch.rand(2, device=device), 1,
          False, torch.empty(3, 3, 4, device=device))),
        (torch.ops.igcam_fast.combine_out.default,
         (A.double(), None, torch.randn(6, 5, device=device), A[:3].double(), torch.rand(2, device=device), 0, True,
          torch.empty(3, 3, 4, device=device, dtype=torch.float64))),
        (torch.ops.igcam_fast.upsample_out.default,
         (torch.randn(2, 3, 4, device=device), True, torch.empty(2, 7, 9, device=device))),
        (torch.ops.igcam_fast.upsample_out.default,
         (torch.randn(2, 3, 4, device=device, dtype=torch.bfloat16), False, torch.empty(2, 5, 5, device=device))),
    ]


@needs_ext
@pytest.mark.parametrize("index", range(7))
def test_opcheck_cpu(index):
    op, args = _op_samples("cpu")[index]
    torch.library.opcheck(op, args)


def _compiled_pipeline():
    def pipeline(A, G, omega):
        maps = torch.empty(A.shape[0] // omega.shape[0], A.shape[2], A.shape[3], dtype=torch.float32, device=A.device)
        torch.ops.igcam_fast.combine_out(A, G, None, None, omega, 0, True, maps)
        big = torch.empty(maps.shape[0], 2 * A.shape[2] + 1, 2 * A.shape[3] + 1, device=A.device)
        torch.ops.igcam_fast.upsample_out(maps * 2, True, big)
        return big + 1

    return pipeline


@needs_ext
def test_torch_compile_fullgraph_cpu():
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler on PATH: inductor cannot build CPU code here")
    torch._dynamo.reset()
    A, G, omega = torch.randn(6, 5, 3, 4), torch.randn(6, 5, 3, 4), torch.rand(3)
    pipeline = _compiled_pipeline()
    compiled = torch.compile(pipeline, fullgraph=True)
    torch.testing.assert_close(compiled(A, G, omega), pipeline(A, G, omega))


# ---------------------------------------------------------------------------------------------
# (d) the CUDA extension compiled, linked and registered (runs without a GPU)
# ---------------------------------------------------------------------------------------------


def _toolkit_here():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.path.isfile(os.path.join(os.environ[var], "bin", "nvcc"))
    return bool(shutil.which("nvcc")) or os.path.isfile("/usr/local/cuda/bin/nvcc")


def test_cuda_extension_built_and_registered():
    if not STATUS["built"]:
        pytest.skip(f"igcam_fast._C is not built: {STATUS['error']}")
    if not STATUS["cuda_built"]:
        if os.environ.get("IGCAM_FAST_BUILD_CUDA") == "0":
            pytest.skip("IGCAM_FAST_BUILD_CUDA=0: the CUDA module was not asked for")
        if not torch.version.cuda or not _toolkit_here():
            pytest.skip(f"no CUDA toolkit here (torch.version.cuda={torch.version.cuda}): _C_cuda is not built")
        pytest.fail(f"a CUDA toolkit is here but igcam_fast._C_cuda is missing: {STATUS['cuda_error']}")
    assert STATUS["cuda_kernels"] == list(OPS)
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"igcam_fast::{op}", "CUDA")
    reason = get_backend("cuda").unavailable_reason()
    assert reason is None if torch.cuda.is_available() else reason == "no CUDA device is visible"


# ---------------------------------------------------------------------------------------------
# (e) CUDA numerics (GPU verification)
# ---------------------------------------------------------------------------------------------

CUDA_EXTRA_COMBINE = [  # realistic and large shapes
    ((16, 1, 1280, 7, 7), torch.float32, "contiguous", "same", None, "gradcam", True),
    ((1, 16, 2048, 7, 7), torch.float16, "channels_last", "same", 3, "gradcam", True),
    ((1, 16, 2048, 7, 7), torch.bfloat16, "contiguous", "same", 4, "gradcampp", True),
    ((2, 32, 64, 28, 28), torch.float32, "channels_last", "same", 4, "gradcampp", False),
    ((4, 8, 2048, 1, 1), torch.float32, "contiguous", "same", 3, "given", True),
    ((1, 8, 3000, 7, 7), torch.float64, "strided", "same", 3, "gradcam", True),  # K > one block's chunk
    ((2, 4, 96, 40, 40), torch.float32, "contiguous", "channels_last", 3, "gradcam", True),  # h·w > 1024
]


@pytest.mark.needs_cuda
@pytest.mark.parametrize("case", PATH_CASES + [((4, 3, 224, 224, 16), torch.float32, torch.float16, "contiguous",
                                                  "channels_last", False, True)], ids=_case_id)
def test_path_images_cuda(case):
    run_path_images(case, "cuda", "cuda")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("case", COMBINE_CASES + CUDA_EXTRA_COMBINE, ids=_case_id)
def test_combine_cuda(case):
    run_combine(case, "cuda", "cuda")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("case", UPSAMPLE_CASES, ids=_case_id)
def test_upsample_cuda(case):
    run_upsample(case, "cuda", "cuda")


@pytest.mark.needs_cuda
@pytest.mark.parametrize("index", range(7))
def test_opcheck_cuda(index):
    op, args = _op_samples("cuda")[index]
    torch.library.opcheck(op, args)


@pytest.mark.needs_cuda
def test_combine_cuda_is_deterministic_and_matches_cpu():
    gen, seed = _generator()
    A = torch.randn(32, 2048, 7, 7, generator=gen).relu().cuda()
    G = (torch.randn(32, 2048, 7, 7, generator=gen) * 1e-2).cuda()
    omega = torch.rand(16, generator=gen).cuda()
    for mode in ("gradcam", "gradcampp"):
        first = ops.combine(A, G, None, A[:2], omega, weight_mode=mode, backend="cuda")
        for _ in range(3):
            assert torch.equal(first, ops.combine(A, G, None, A[:2], omega, weight_mode=mode, backend="cuda"))
        cpu = ops.combine(A.cpu(), G.cpu(), None, A[:2].cpu(), omega.cpu(), weight_mode=mode, backend="cpu")
        torch.testing.assert_close(first.cpu(), cpu, rtol=1e-4, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.needs_cuda
def test_cuda_side_stream_and_second_device_guard():
    stream = torch.cuda.Stream()
    x, base, alphas = torch.rand(2, 3, 9, 7, device="cuda"), torch.rand(3, 9, 7, device="cuda"), torch.rand(5, device="cuda")
    expected = reference_path_images(x.cpu(), base.cpu(), alphas.cpu())
    with torch.cuda.stream(stream):
        out = ops.path_images(x, base, alphas, backend="cuda")
        maps = ops.upsample(out[:, 0], (11, 13), normalize=True, backend="cuda")
    stream.synchronize()
    torch.testing.assert_close(out.double().cpu(), expected, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(maps.double().cpu(), reference_upsample(expected[:, 0], (11, 13), True),
                               rtol=2e-5, atol=1e-5)
    if torch.cuda.device_count() > 1:
        x1 = x.to("cuda:1")
        out1 = ops.path_images(x1, base.to("cuda:1"), alphas.to("cuda:1"), backend="cuda")
        torch.testing.assert_close(out1.double().cpu(), expected, rtol=2e-5, atol=1e-5)


@pytest.mark.needs_cuda
def test_path_images_cuda_past_int32_indexing():
    """An fp16 output with more than 2^31 elements: rows past the 32-bit range are written right."""
    free, _ = torch.cuda.mem_get_info()
    m = 2**31 // (3 * 224 * 224) + 8
    if free < m * 3 * 224 * 224 * 2 * 1.2:
        pytest.skip("not enough free GPU memory for a 2^31-element output")
    x, base = torch.rand(1, 3, 224, 224, device="cuda"), torch.rand(3, 224, 224, device="cuda")
    alphas = torch.linspace(0, 1, m, device="cuda", dtype=torch.float64)
    out = torch.empty(m, 3, 224, 224, device="cuda", dtype=torch.float16)
    ops.path_images(x, base, alphas, backend="cuda", out=out)
    for t in (0, m // 2, m - 3, m - 1):  # the last rows start past element 2^31
        want = base + alphas[t].float() * (x[0] - base)
        torch.testing.assert_close(out[t].float(), want, rtol=1e-3, atol=1e-3, msg=lambda msg: f"row {t}: {msg}")
    del out
    torch.cuda.empty_cache()


@pytest.mark.needs_cuda
def test_torch_compile_fullgraph_cuda():
    torch._dynamo.reset()
    A, G, omega = torch.randn(6, 5, 3, 4, device="cuda"), torch.randn(6, 5, 3, 4, device="cuda"), torch.rand(3, device="cuda")
    pipeline = _compiled_pipeline()
    torch.testing.assert_close(torch.compile(pipeline, fullgraph=True)(A, G, omega), pipeline(A, G, omega))
