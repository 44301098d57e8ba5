"""The compiled backends: ``cpu`` (igcam_fast._C) and ``cuda`` (igcam_fast._C_cuda).

``igcam_fast._C`` defines the op schemas (csrc/igcam_ops.cpp) and the CPU kernels
(csrc/cpu/); ``igcam_fast._C_cuda`` adds the CUDA kernels (csrc/cuda/). Both are optional:
the package imports without them, and each backend says in words why it cannot run.

Build: ``pip install --no-build-isolation -e .`` (see setup.py).
"""

from __future__ import annotations

import importlib

import torch

from .backends import Backend, register_backend

__all__ = ["CppBackend", "CudaBackend", "extension_status"]

_BUILD_HINT = "run pip install --no-build-isolation -e . in the igcam_fast checkout"
_OPS = ("path_images_out", "combine_out", "upsample_out")


def _load(name: str):
    try:
        return importlib.import_module(name), None
    except ImportError as err:  # also OSError-derived loader failures surface as ImportError
        return None, f"{type(err).__name__}: {err}"


_C, _C_ERROR = _load("igcam_fast._C")
if _C is not None:
    _C_CUDA, _C_CUDA_ERROR = _load("igcam_fast._C_cuda")
else:  # the CUDA kernels need the schemas _C defines
    _C_CUDA, _C_CUDA_ERROR = None, "igcam_fast._C (the op schemas) is not built"


def _has_kernel(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"igcam_fast::{op}", key))
    except RuntimeError:  # op not defined
        return False


def extension_status() -> dict:
    """What was built and what the dispatcher sees, for bug reports and tests."""
    return {
        "built": _C is not None,
        "error": _C_ERROR,
        "cuda_built": _C_CUDA is not None,
        "cuda_error": _C_CUDA_ERROR,
        "cpu_kernels": [op for op in _OPS if _has_kernel(op, "CPU")],
        "cuda_kernels": [op for op in _OPS if _has_kernel(op, "CUDA")],
        "cuda_device_visible": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


# ---- fake kernels: shapes only, so torch.compile / FakeTensor can trace the ops ----------------

if _C is not None:

    @torch.library.register_fake("igcam_fast::path_images_out")
    def _path_images_out_fake(x, baseline, alphas, mean, std, out):
        B, C, H, W = x.shape
        torch._check(out.shape == (B * alphas.shape[0], C, H, W),
                     lambda: f"out must have shape (B·m, C, H, W), got {tuple(out.shape)}")
        return None

    @torch.library.register_fake("igcam_fast::combine_out")
    def _combine_out_fake(activations, gradients, channel_weights, baseline_features, step_weights,
                          weight_mode, relu, out):
        N, K, h, w = activations.shape
        m = step_weights.shape[0]
        torch._check(out.dim() == 3 and out.shape[0] * m == N and out.shape[1:] == (h, w),
                     lambda: f"out must have shape (B, h, w), got {tuple(out.shape)}")
        return None

    @torch.library.register_fake("igcam_fast::upsample_out")
    def _upsample_out_fake(maps, normalize, out):
        torch._check(out.dim() == 3 and out.shape[0] == maps.shape[0],
                     lambda: f"out must have shape (B, H, W), got {tuple(out.shape)}")
        return None


# ---- backends --------------------------------------------------------------------------------


class _ExtensionBackend(Backend):
    """The ops through torch.ops.igcam_fast.*, dispatched by device to the compiled kernels."""

    def path_images(self, x, baseline, alphas, mean, std, out):
        torch.ops.igcam_fast.path_images_out(x, baseline, alphas, mean, std, out)

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        torch.ops.igcam_fast.combine_out(activations, gradients, channel_weights, baseline_features,
                                         step_weights, int(weight_mode), bool(relu), out)

    def upsample(self, maps, normalize, out):
        torch.ops.igcam_fast.upsample_out(maps, bool(normalize), out)


class CppBackend(_ExtensionBackend):
    """C++ kernels on CPU tensors (at::parallel_for, vectorised inner loops)."""

    name = "cpu"
    devices = ("cpu",)

    def unavailable_reason(self):
        if _C is None:
            return f"the compiled extension igcam_fast._C is not built ({_C_ERROR}); {_BUILD_HINT}"
        return None


class CudaBackend(_ExtensionBackend):
    """CUDA kernels on CUDA tensors."""

    name = "cuda"
    devices = ("cuda",)

    def unavailable_reason(self):
        if _C is None:
            return f"the compiled extension igcam_fast._C is not built ({_C_ERROR}); {_BUILD_HINT}"
        if _C_CUDA is None:
            return (f"igcam_fast._C_cuda was not built (no CUDA toolkit at build time, or "
                    f"IGCAM_FAST_BUILD_CUDA=0) or does not load ({_C_CUDA_ERROR}); {_BUILD_HINT} "
                    f"with nvcc on PATH or CUDA_HOME set")
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None


register_backend("cpu", CppBackend)
register_backend("cuda", CudaBackend)
