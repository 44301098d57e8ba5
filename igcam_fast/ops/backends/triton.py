"""The ``triton`` backend: the three ops as Triton kernels (:mod:`igcam_fast.ops.triton`).

Runs on CUDA tensors; under TRITON_INTERPRET=1 it also takes CPU tensors (slowly), which is how
it is tested without a GPU. Importing this module does not import triton: the kernels are
imported, and registered as ``torch.ops.igcam_fast_triton.*``, on the first op.

Size limits it declares (reasons, not crashes): the kernels index within one image, one h·w
plane and one output map with 32-bit integers, so each must have fewer than 2^31 elements.
Rows past the grid's 65535 limit are looped over, so the batch is not limited.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

import torch

from .base import Backend, OpCall

_KERNELS_MODULE = __name__.rsplit(".", 2)[0] + ".triton"
_INDEX_LIMIT = 2**31  # elements: see the module doc


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def interpreting() -> bool:
    """Whether the kernels run (or, not yet imported, will run) under Triton's interpreter.

    Fixed once the kernels are imported: ``@triton.jit`` reads TRITON_INTERPRET when it decorates.
    """
    kernels = sys.modules.get(_KERNELS_MODULE + ".common")
    if kernels is not None and hasattr(kernels, "INTERPRETED"):
        return kernels.INTERPRETED
    return _interpret_requested()


def _interpreter_problem() -> Optional[str]:
    """Why the interpreter cannot run in this process, or None (call only when interpreting)."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    # triton decides at its own import whether its library (tl.zeros, tl.sum, ...) is
    # interpretable; imported before TRITON_INTERPRET=1 was set, interpreted kernels fail.
    if isinstance(tl.zeros, JITFunction):
        return ("TRITON_INTERPRET=1 was set after triton was imported, so triton's own library "
                "cannot run under the interpreter in this process; set it before anything imports triton")
    return None


def kernels():
    """The kernel package (imports triton on first use)."""
    return importlib.import_module(_KERNELS_MODULE)


def _elements(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class TritonBackend(Backend):
    """Triton kernels, registered as ``torch.library.triton_op``s so torch.compile sees them."""

    name = "triton"
    dtypes = (torch.float16, torch.bfloat16, torch.float32)
    # Worst errors measured over the conformance cases under the interpreter (which computes in
    # the kernels' float32): 1.05e-6 for float32, float16 and bfloat16 inputs; about 3x above.
    # Not yet measured on a GPU.
    tolerances = {torch.float32: 3e-6, torch.float16: 3e-6, torch.bfloat16: 3e-6}

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if interpreting() else ("cuda",)

    def unavailable_reason(self) -> Optional[str]:
        try:
            import triton  # noqa: F401
        except ImportError as err:
            return f"triton is not installed: {err}"
        if not interpreting():
            if not torch.cuda.is_available():
                return "no CUDA device is visible (and TRITON_INTERPRET=1 is not set)"
            return None
        return _interpreter_problem()

    def limits(self, call: OpCall) -> list[str]:
        t = call.tensors
        if call.op == "path_images" and "x" in t:
            per_image = _elements(t["x"].shape[1:])
            if per_image >= _INDEX_LIMIT:
                return [f"one image of x has {per_image} elements; the triton kernel indexes an image "
                        f"with 32 bits (< 2^31)"]
        if call.op == "combine" and "activations" in t:
            plane = _elements(t["activations"].shape[2:])
            if plane >= _INDEX_LIMIT:
                return [f"the h·w plane of activations has {plane} elements; the triton kernel "
                        f"indexes a plane with 32 bits (< 2^31)"]
        if call.op == "upsample" and "out" in t:
            per_map = _elements(t["out"].shape[1:])
            if per_map >= _INDEX_LIMIT:
                return [f"one output map has {per_map} elements; the triton kernel indexes a map "
                        f"with 32 bits (< 2^31)"]
        return []

    def path_images(self, x, baseline, alphas, mean, std, out):
        kernels().run("path_images", x, baseline, alphas, mean, std, out)

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        kernels().run("combine", activations, gradients, channel_weights, baseline_features, step_weights,
                      int(weight_mode), bool(relu), out)

    def upsample(self, maps, normalize, out):
        kernels().run("upsample", maps, bool(normalize), out)
