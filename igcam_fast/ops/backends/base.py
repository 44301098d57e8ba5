"""The backend interface: what a backend declares, and the per-op functions it implements.

A backend declares the devices, dtypes and layouts it takes, which ops it implements, its size
limits and whether it is built; for a call it cannot take it says why in words
(:meth:`Backend.reasons`), and dispatch (:mod:`.dispatch`) moves on or, for a forced
backend, raises with those words.

The per-op interface: a backend implements an op by a method named after it, in out= form
(the op's module has checked the arguments and allocated ``out``; the method must write every
element of it):

    path_images(x, baseline, alphas, mean, std, out)
        x (B, C, H, W); baseline (C, H, W) | (B, C, H, W); alphas (m,); mean, std (C,) or None;
        out (B·m, C, H, W) in any dtype and layout.
    combine(activations, gradients, channel_weights, baseline_features, step_weights, weight_mode, relu, out)
        activations (B·m, K, h, w); gradients like it or None; channel_weights (B·m, K) or None;
        baseline_features (K, h, w) | (B, K, h, w) | None; step_weights (m,); weight_mode 0 Grad-CAM,
        1 Grad-CAM++ (2 is never passed: given weights arrive as channel_weights); out (B, h, w).
    upsample(maps, normalize, out)
        maps (B, h, w); out (B, H, W).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Optional

import torch

from ..common import FLOAT_DTYPES, LAYOUTS, layout_of

#: The ops every backend is asked about, in pipeline order (igcam_fast.ops.registry describes each).
OP_NAMES = ("path_images", "combine", "upsample")

#: Unit roundoff of each dtype: what storing an exact result in it may cost (relative).
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


_NO_TENSORS: Mapping[str, torch.Tensor] = {}


class OpCall(NamedTuple):
    """What dispatch knows of one call: the op, the device, the dtypes and the named tensors
    (``out`` included, absent optional arguments left out). A tuple: it is built on every call."""

    op: str
    device: torch.device
    dtypes: frozenset
    tensors: Mapping[str, torch.Tensor] = _NO_TENSORS

    def layouts(self) -> dict[str, str]:
        """{argument: layout} of the tensors with more than one dimension."""
        return {name: layout_of(t) for name, t in self.tensors.items() if t.dim() > 1}


class Backend:
    """Implementations of some of the ops, with what they can take declared.

    tolerances: {input dtype: largest error allowed against the float64 reference}, the error
    being max|result − reference| / max(1, max|reference|). It bounds what computing on inputs
    of that dtype costs (in this backend's accumulation precision); rounding the result to the
    output dtype is added on top (:meth:`tolerance`). Set near the measured error, so that a
    kernel accumulating in a narrower type than it claims fails the conformance test.
    """

    name: str = ""
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    layouts: tuple[str, ...] = LAYOUTS
    ops: tuple[str, ...] = OP_NAMES
    tolerances: dict[torch.dtype, float] = {}

    # ---- declarations ---------------------------------------------------------------------

    def unavailable_reason(self) -> Optional[str]:
        """Why this backend cannot run at all here (not built, no GPU, ...), or None."""
        return None

    def device_reason(self, device: torch.device) -> Optional[str]:
        """Why it cannot run on this particular device (no kernel image for it, ...), or None."""
        return None

    def limits(self, call: OpCall) -> list[str]:
        """Why this call's sizes are beyond this backend (index width, grid size), if they are."""
        return []

    def reasons(self, device: torch.device, dtypes, call: Optional[OpCall] = None) -> list[str]:
        """Why this backend cannot take tensors of these dtypes on this device (empty: it can);
        with ``call``, also why it cannot take that call (op, layouts, sizes)."""
        if not isinstance(device, torch.device):
            device = torch.device(device)
        why = self.static_reasons(device, dtypes, call.op if call is not None else None)
        return why + self.call_reasons(call) if call is not None else why

    def static_reasons(self, device: torch.device, dtypes, op: Optional[str] = None) -> list[str]:
        """The reasons that depend only on the device, the dtypes and the op, not on the
        tensors' sizes or layouts: fixed within a process, so dispatch caches them."""
        why = []
        missing = self.unavailable_reason()
        if missing:
            why.append(missing)
        if device.type not in self.devices:
            why.append(f"does not run on {device.type} tensors (only {', '.join(self.devices)})")
        elif not missing:
            on_device = self.device_reason(device)
            if on_device:
                why.append(on_device)
        bad = [d for d in dtypes if d not in self.dtypes]
        if bad:
            names = sorted({str(d).replace("torch.", "") for d in bad})
            why.append(f"does not support dtype {', '.join(names)}")
        if op is not None and (op not in self.ops or not callable(getattr(self, op, None))):
            why.append(f"does not implement {op}")
        return why

    def call_reasons(self, call: OpCall) -> list[str]:
        """The reasons that depend on this call's tensors: layouts and size limits."""
        why = []
        if not set(LAYOUTS) <= set(self.layouts):  # (a backend taking any strides skips the look)
            why = [f"does not take {name} in {layout} layout (only {', '.join(self.layouts)})"
                   for name, layout in call.layouts().items() if layout not in self.layouts]
        return why + self.limits(call)

    def tolerance(self, input_dtypes, output_dtype: torch.dtype) -> float:
        """The error (see the class doc) a correct result of this backend may have: the compute
        error of its widest-tolerance input dtype plus one unit in the last place of the output
        dtype (2u: rounding to nearest costs u, but Triton's interpreter truncates to bfloat16)."""
        compute = max(self.tolerances[d] for d in input_dtypes)
        return compute + 2 * UNIT_ROUNDOFF[output_dtype]

    def __repr__(self) -> str:
        return f"<igcam_fast backend {self.name!r}>"
