"""The compiled backends: ``cpu`` (igcam_fast._C) and ``cuda`` (igcam_fast._C_cuda).

``igcam_fast._C`` defines the op schemas (csrc/igcam_ops.cpp) and the CPU kernels
(csrc/cpu/); ``igcam_fast._C_cuda`` adds the CUDA kernels (csrc/cuda/). Both are optional:
the package imports without them, and each backend says in words why it cannot run.

The CUDA module records the architectures it was compiled for (setup.py); before the kernels
are chosen for a device, :func:`kernel_image_reason` compares them with the device's compute
capability, and the module's probe asks the driver, so that a card without a kernel image is a
dispatch reason rather than a failed launch.

Build: ``pip install --no-build-isolation -e .`` (see setup.py).
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import Optional, Sequence

import torch

from .base import Backend

__all__ = ["CppBackend", "CudaBackend", "extension_status", "schemas_loaded", "kernel_image_reason"]

_BUILD_HINT = "run pip install --no-build-isolation -e . in the igcam_fast checkout"
_SCHEMAS = ("path_images_out", "combine_out", "upsample_out")


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


def schemas_loaded() -> bool:
    """Whether torch.ops.igcam_fast.* exist (their fake kernels can then be registered)."""
    return _C is not None


def _has_kernel(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"igcam_fast::{op}", key))
    except RuntimeError:  # op not defined
        return False


def built_architectures() -> Optional[list[str]]:
    """["sm_75", ..., "compute_90"] as the CUDA module was built, or None (not built, or built
    from an arch list the record could not parse)."""
    if _C_CUDA is None or not hasattr(_C_CUDA, "built_architectures"):
        return None
    return list(_C_CUDA.built_architectures()) or None


def extension_status() -> dict:
    """What was built and what the dispatcher sees, for bug reports and tests."""
    return {
        "built": _C is not None,
        "error": _C_ERROR,
        "cuda_built": _C_CUDA is not None,
        "cuda_error": _C_CUDA_ERROR,
        "cuda_architectures": built_architectures(),
        "cpu_kernels": [op for op in _SCHEMAS if _has_kernel(op, "CPU")],
        "cuda_kernels": [op for op in _SCHEMAS if _has_kernel(op, "CUDA")],
        "cuda_device_visible": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def kernel_image_reason(capability: tuple[int, int], architectures: Optional[Sequence[str]]) -> Optional[str]:
    """Why kernels built for ``architectures`` cannot run on a device of this compute
    capability, or None when they can.

    Machine code sm_XY runs on capability X.Z for Z >= Y (same major); PTX compute_XY is
    compiled by the driver for any capability >= X.Y. Architecture-specific targets (sm_90a)
    run only on their own capability.
    """
    if not architectures:
        return None  # nothing recorded: the runtime probe decides
    major, minor = capability
    device = major * 10 + minor
    for arch in architectures:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
        if match is None:
            continue
        kind, arch_major, arch_minor, specific = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
        number = arch_major * 10 + arch_minor
        if specific:
            if number == device:
                return None
        elif kind == "sm" and arch_major == major and arch_minor <= minor:
            return None
        elif kind == "compute" and number <= device:
            return None
    return (f"igcam_fast._C_cuda has no kernel image for compute capability {major}.{minor} "
            f"(built for {', '.join(architectures)}); rebuild with TORCH_CUDA_ARCH_LIST="
            f"\"{major}.{minor}\" (or add \"+PTX\" to an older entry)")


def _probe_reason(device_index: int) -> Optional[str]:
    """The driver's answer for one device."""
    if not hasattr(_C_CUDA, "probe_kernel_image"):
        return None
    code, message = _C_CUDA.probe_kernel_image(device_index)
    if code == 0:
        return None
    return f"igcam_fast._C_cuda cannot run on cuda:{device_index}: {message} (CUDA error {code})"


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

    def unavailable_reason(self):
        if _C is None:  # the op schemas: both backends need them
            return f"the compiled extension igcam_fast._C is not built ({_C_ERROR}); {_BUILD_HINT}"
        return None


#: Worst errors measured over the conformance cases on the C++ kernels: 8.9e-16 for float64, 1.05e-6
#: for float32, float16 and bfloat16 inputs (widened to float32, accumulated in float32); about 3x above.
_COMPILED_TOLERANCES = {torch.float64: 2e-15, torch.float32: 3e-6, torch.float16: 3e-6, torch.bfloat16: 3e-6}


class CppBackend(_ExtensionBackend):
    """C++ kernels on CPU tensors (at::parallel_for, vectorised inner loops)."""

    name = "cpu"
    devices = ("cpu",)
    tolerances = _COMPILED_TOLERANCES


class CudaBackend(_ExtensionBackend):
    """CUDA kernels on CUDA tensors."""

    name = "cuda"
    devices = ("cuda",)
    # Not measured here (no GPU): the kernels accumulate in float32 like the C++ ones, whose
    # figures these are; the GPU run of the conformance test checks them.
    tolerances = _COMPILED_TOLERANCES

    def unavailable_reason(self):
        missing = super().unavailable_reason()
        if missing:
            return missing
        if _C_CUDA is None:
            return (f"igcam_fast._C_cuda was not built (no CUDA toolkit at build time, or "
                    f"IGCAM_FAST_BUILD_CUDA=0) or does not load ({_C_CUDA_ERROR}); {_BUILD_HINT} "
                    f"with nvcc on PATH or CUDA_HOME set")
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None

    def device_reason(self, device):
        return _device_reason(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _device_reason(index: int) -> Optional[str]:
    """Why the CUDA kernels cannot run on cuda:index (cached: fixed within a process)."""
    why = kernel_image_reason(torch.cuda.get_device_capability(index), built_architectures())
    return why or _probe_reason(index)
