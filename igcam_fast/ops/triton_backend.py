"""The ``triton`` backend: the three ops as Triton kernels (see :mod:`igcam_fast.ops.triton_kernels`).

Runs on CUDA tensors; under TRITON_INTERPRET=1 it also takes CPU tensors (slowly), which is how
it is tested without a GPU. Importing this module does not import triton: the kernels are
imported, and registered as ``torch.ops.igcam_fast_triton.*``, on the first op.
"""

from __future__ import annotations

import os
import sys

import torch

from .backends import Backend, register_backend

_KERNELS_MODULE = __name__.rsplit(".", 1)[0] + ".triton_kernels"


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def interpreting() -> bool:
    """Whether the kernels run (or, not yet imported, will run) under Triton's interpreter.

    Fixed once the kernels are imported: ``@triton.jit`` reads TRITON_INTERPRET when it decorates.
    """
    kernels = sys.modules.get(_KERNELS_MODULE)
    if kernels is not None and hasattr(kernels, "INTERPRETED"):
        return kernels.INTERPRETED
    return _interpret_requested()


def _interpreter_problem() -> str | None:
    """Why the interpreter cannot run in this process, or None (call only when interpreting)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    # triton decides at its own import whether its library (tl.zeros, tl.sum, ...) is
    # interpretable; imported before TRITON_INTERPRET=1 was set, interpreted kernels fail.
    if isinstance(tl.zeros, JITFunction):
        return ("TRITON_INTERPRET=1 was set after triton was imported, so triton's own library "
                "cannot run under the interpreter in this process; set it before anything imports triton")
    return None


def _kernels():
    from . import triton_kernels

    return triton_kernels


class TritonBackend(Backend):
    """Triton kernels, registered as ``torch.library.triton_op``s so torch.compile sees them."""

    name = "triton"
    dtypes = (torch.float16, torch.bfloat16, torch.float32)

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if interpreting() else ("cuda",)

    def unavailable_reason(self) -> str | None:
        try:
            import triton  # noqa: F401
        except ImportError as err:
            return f"triton is not installed: {err}"
        if not interpreting():
            if not torch.cuda.is_available():
                return "no CUDA device is visible (and TRITON_INTERPRET=1 is not set)"
            return None
        return _interpreter_problem()

    def path_images(self, x, baseline, alphas, mean, std, out):
        _kernels().run("path_images", x, baseline, alphas, mean, std, out)

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        _kernels().run("combine", activations, gradients, channel_weights, baseline_features, step_weights,
                       int(weight_mode), bool(relu), out)

    def upsample(self, maps, normalize, out):
        _kernels().run("upsample", maps, bool(normalize), out)


register_backend("triton", TritonBackend)
