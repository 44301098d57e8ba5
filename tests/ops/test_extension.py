"""The compiled backends (igcam_fast._C on CPU, igcam_fast._C_cuda on CUDA): what the
conformance test (test_conformance.py) does not cover — the build and its registration, the C++
argument checks, opcheck, torch.compile fullgraph, and the GPU-only checks (realistic and large
shapes, determinism, streams and devices, 64-bit indexing), which skip where no GPU is visible.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import igcam_fast.ops as ops
from igcam_fast.core.reference import reference_path_images, reference_upsample
from igcam_fast.ops.backends.compiled import built_architectures, extension_status
from igcam_fast.ops.registry import OPS, Case

from op_checks import check_case

STATUS = extension_status()
SCHEMAS = ("path_images_out", "combine_out", "upsample_out")
needs_ext = pytest.mark.skipif(not STATUS["built"], reason=f"igcam_fast._C is not built: {STATUS['error']}")


def _generator():
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator().manual_seed(seed), seed


def test_extension_is_built():
    assert STATUS["built"], f"igcam_fast._C is not built: {STATUS['error']}; run pip install --no-build-isolation -e ."
    assert STATUS["cpu_kernels"] == list(SCHEMAS)
    assert ops.get_backend("cpu").unavailable_reason() is None
    assert ops.choose_backend(torch.device("cpu"), [torch.float32]).name == "cpu"


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
        if os.environ.get("IGCAM_FAST_BUILD_CUDA") != "1" and not torch.cuda.is_available():
            pytest.skip("no GPU and IGCAM_FAST_BUILD_CUDA is not 1: the default build leaves out the CUDA module "
                        "(make test builds it)")
        pytest.fail(f"a CUDA toolkit is here but igcam_fast._C_cuda is missing: {STATUS['cuda_error']}")
    assert STATUS["cuda_kernels"] == list(SCHEMAS)
    for op in SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"igcam_fast::{op}", "CUDA")
    # the architectures it was built for are recorded, PTX among them so newer cards JIT
    archs = built_architectures()
    assert archs and any(a.startswith("compute_") for a in archs), archs
    reason = ops.get_backend("cuda").unavailable_reason()
    assert reason is None if torch.cuda.is_available() else reason == "no CUDA device is visible"


# ---------------------------------------------------------------------------------------------
# (e) CUDA numerics (GPU verification)
# ---------------------------------------------------------------------------------------------

def _case(op, shape, dtype, layout, **variant):
    spec = OPS[op]
    return spec, Case(op, shape, dtype, layout, variant, spec.make)


_COMBINE = dict(relu=True, grad_layout="same", out="new")
CUDA_EXTRA = [  # realistic and large shapes, beyond the conformance cases
    _case("combine", (16, 1, 1280, 7, 7), torch.float32, "contiguous", weights="gradcam", baseline=None, **_COMBINE),
    _case("combine", (1, 16, 2048, 7, 7), torch.float16, "channels_last", weights="gradcam", baseline=3, **_COMBINE),
    _case("combine", (1, 16, 2048, 7, 7), torch.bfloat16, "contiguous", weights="gradcampp", baseline=4, **_COMBINE),
    _case("combine", (2, 32, 64, 28, 28), torch.float32, "channels_last", weights="gradcampp", baseline=4,
          relu=False, grad_layout="same", out="new"),
    _case("combine", (4, 8, 2048, 1, 1), torch.float32, "contiguous", weights="given", baseline=3, **_COMBINE),
    _case("combine", (1, 8, 3000, 7, 7), torch.float64, "strided", weights="gradcam", baseline=3,
          **_COMBINE),  # K > one block's chunk
    _case("combine", (2, 4, 96, 40, 40), torch.float32, "contiguous", weights="gradcam", baseline=3,
          relu=True, grad_layout="other", out="new"),  # h·w > 1024
    _case("path_images", (4, 3, 224, 224, 16), torch.float32, "contiguous", per_image=False, normalize=True,
          out_dtype=torch.float16, out="channels_last"),
]


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("spec,case", CUDA_EXTRA, ids=lambda v: getattr(v, "id", None))
def test_gpu_sized_cases(spec, case, backend):
    be = ops.get_backend(backend)
    if case.dtype not in be.dtypes:
        pytest.skip(f"{backend} does not take {case.dtype}")
    check_case(spec, case, be, torch.device("cuda"))


@pytest.mark.needs_cuda
def test_cuda_kernels_have_an_image_for_this_card():
    """The recorded architectures and the driver's probe agree that the kernels run here."""
    from igcam_fast.ops.backends.compiled import _probe_reason, kernel_image_reason

    index = torch.cuda.current_device()
    assert kernel_image_reason(torch.cuda.get_device_capability(index), built_architectures()) is None
    assert _probe_reason(index) is None
    assert ops.get_backend("cuda").reasons(torch.device("cuda"), [torch.float32]) == []


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
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_side_stream_and_second_device_guard(backend):
    """Launches go to the current stream and to the tensors' device (cuda:1 while cuda:0 is current)."""
    stream = torch.cuda.Stream()
    x, base, alphas = torch.rand(2, 3, 9, 7, device="cuda"), torch.rand(3, 9, 7, device="cuda"), torch.rand(5, device="cuda")
    expected = reference_path_images(x.cpu(), base.cpu(), alphas.cpu())
    with torch.cuda.stream(stream):
        out = ops.path_images(x, base, alphas, backend=backend)
        maps = ops.upsample(out[:, 0], (11, 13), normalize=True, backend=backend)
    stream.synchronize()
    torch.testing.assert_close(out.double().cpu(), expected, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(maps.double().cpu(), reference_upsample(expected[:, 0], (11, 13), True),
                               rtol=2e-5, atol=1e-5)
    if torch.cuda.device_count() > 1:
        assert torch.cuda.current_device() == 0
        x1 = x.to("cuda:1")
        out1 = ops.path_images(x1, base.to("cuda:1"), alphas.to("cuda:1"), backend=backend)
        torch.testing.assert_close(out1.double().cpu(), expected, rtol=2e-5, atol=1e-5)
        A1, omega1 = torch.rand(4, 5, 3, 3, device="cuda:1"), torch.rand(2, device="cuda:1")
        maps1 = ops.combine(A1, A1, None, None, omega1, backend=backend)
        assert maps1.device == A1.device
        want = ops.combine(A1.cpu(), A1.cpu(), None, None, omega1.cpu(), backend="torch")
        torch.testing.assert_close(maps1.cpu(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_path_images_past_int32_indexing(backend):
    """An fp16 output with more than 2^31 elements: rows past the 32-bit range are written right."""
    free, _ = torch.cuda.mem_get_info()
    m = 2**31 // (3 * 224 * 224) + 8
    if free < m * 3 * 224 * 224 * 2 * 1.2:
        pytest.skip("not enough free GPU memory for a 2^31-element output")
    x, base = torch.rand(1, 3, 224, 224, device="cuda"), torch.rand(3, 224, 224, device="cuda")
    alphas = torch.linspace(0, 1, m, device="cuda", dtype=torch.float64)
    out = torch.empty(m, 3, 224, 224, device="cuda", dtype=torch.float16)
    ops.path_images(x, base, alphas, backend=backend, out=out)
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
