"""Backends of the three fused ops and how one is chosen.

Each backend declares what it can take and, for an input it cannot take, says why in words.
Dispatch walks a priority list per device and takes the first backend with no reasons; a
backend forced by the caller (``backend=``) or by ``IGCAM_FAST_BACKEND`` either runs or raises
with its reasons. Nothing falls back silently.

Every backend implements the ops in out= form: the caller allocates ``out`` (see
:mod:`igcam_fast.ops`), the backend must write every element of it.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Order in which backends are tried for tensors on each device type.
PRIORITY = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}

BACKEND_ENV = "IGCAM_FAST_BACKEND"


def minmax_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per map (v - min) / (1e-7 + max - min) over all but the first dimension: pytorch-grad-cam's
    scale_cam_image, and what ``upsample(normalize=True)`` computes after the interpolation."""
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    lo = flat.amin(dim=1).view(shape)
    hi = flat.amax(dim=1).view(shape)
    return (maps - lo) / (1e-7 + (hi - lo))


class Backend:
    """A set of implementations of ``path_images``, ``combine`` and ``upsample``."""

    name: str = ""
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    #: (rtol, atol) against the float64 reference, per input dtype.
    tolerances: dict[torch.dtype, tuple[float, float]] = {
        torch.float64: (1e-10, 1e-12),
        torch.float32: (2e-5, 1e-5),
        torch.float16: (1e-2, 1e-2),
        torch.bfloat16: (4e-2, 4e-2),
    }

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all here (not built, no GPU, ...), or None."""
        return None

    def reasons(self, device: torch.device, dtypes) -> list[str]:
        """Why this backend cannot take tensors of these dtypes on this device (empty: it can)."""
        why = []
        missing = self.unavailable_reason()
        if missing:
            why.append(missing)
        if device.type not in self.devices:
            why.append(f"does not run on {device.type} tensors (only {', '.join(self.devices)})")
        bad = sorted({str(d) for d in dtypes if d not in self.dtypes})
        if bad:
            why.append(f"does not support dtype {', '.join(bad)}")
        return why

    # The ops. Arguments are validated by igcam_fast.ops before they arrive here.
    def path_images(self, x, baseline, alphas, mean, std, out) -> None:
        raise NotImplementedError

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode: int, relu: bool, out) -> None:
        raise NotImplementedError

    def upsample(self, maps, normalize: bool, out) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<igcam_fast backend {self.name!r}>"


class TorchBackend(Backend):
    """Eager PyTorch: the portable fallback, a chain of ordinary ops on any device.

    This is the "eager chain" the fused kernels are measured against. It materialises the
    (B·m, K, h, w) temporaries the kernels avoid.
    """

    name = "torch"
    devices = ("cpu", "cuda")

    def path_images(self, x, baseline, alphas, mean, std, out):
        B, m = x.shape[0], alphas.shape[0]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xb = x.to(acc)[:, None]
        base = baseline.to(acc)
        base = base[None, None] if base.dim() == 3 else base[:, None]
        images = base + alphas.to(acc)[None, :, None, None, None] * (xb - base)
        if mean is not None:
            images = (images - mean.to(acc)[:, None, None]) / std.to(acc)[:, None, None]
        out.copy_(images.reshape(B * m, *x.shape[1:]))

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        acc = out.dtype
        A = activations.to(acc)
        N, K, h, w = A.shape
        m = step_weights.shape[0]
        B = N // m
        if channel_weights is not None:
            weights = channel_weights.to(acc)
        elif weight_mode == 1:
            G = gradients.to(acc)
            g2 = G * G
            a = g2 / (2 * g2 + A.sum(dim=(2, 3))[:, :, None, None] * g2 * G + 1e-6)
            a = torch.where(G != 0, a, torch.zeros_like(a))
            weights = (a * G.clamp(min=0)).sum(dim=(2, 3))
        else:
            weights = gradients.to(acc).mean(dim=(2, 3))
        if baseline_features is not None:
            base = baseline_features.to(acc)
            if base.dim() == 4:  # one per image: repeat over that image's m path points
                base = base.repeat_interleave(m, dim=0)
            A = A - base
        s = torch.einsum("nk,nkhw->nhw", weights, A)
        if relu:
            s = s.clamp(min=0)
        out.copy_(torch.einsum("t,bthw->bhw", step_weights.to(acc), s.reshape(B, m, h, w)))

    def upsample(self, maps, normalize, out):
        acc = out.dtype
        up = torch.nn.functional.interpolate(maps.to(acc)[:, None], size=out.shape[1:], mode="bilinear",
                                             align_corners=False)[:, 0]
        out.copy_(minmax_scale(up) if normalize else up)


_REGISTRY: dict[str, Backend] = {}
_LAZY: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Register a backend factory; it is built on first use (so importing stays cheap)."""
    _LAZY[name] = factory
    _REGISTRY.pop(name, None)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        if name not in _LAZY:
            raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_LAZY))}")
        _REGISTRY[name] = _LAZY[name]()
    return _REGISTRY[name]


def backend_names() -> list[str]:
    return list(_LAZY)


def choose_backend(device: torch.device, dtypes, backend: str | None = None) -> Backend:
    """The backend that runs an op on tensors of these dtypes on this device.

    ``backend`` (or the IGCAM_FAST_BACKEND environment variable when it is None) forces one;
    a forced backend that cannot take the input raises ValueError with its reasons.
    """
    forced = backend or os.environ.get(BACKEND_ENV) or None
    if forced and forced != "auto":
        chosen = get_backend(forced)
        why = chosen.reasons(device, dtypes)
        if why:
            source = "backend=" if backend else f"{BACKEND_ENV}="
            raise ValueError(f"{source}{forced!r} cannot run this op: {'; '.join(why)}")
        return chosen
    all_reasons = []
    for name in PRIORITY.get(device.type, ("torch",)):
        if name not in _LAZY:
            all_reasons.append(f"{name}: not registered")
            continue
        candidate = get_backend(name)
        why = candidate.reasons(device, dtypes)
        if not why:
            return candidate
        all_reasons.append(f"{name}: {'; '.join(why)}")
    raise ValueError(f"no backend can run this op on {device} with dtypes {list(dtypes)}: "
                     + " | ".join(all_reasons))


def explain_backends(device="cpu", dtype=torch.float32) -> str:
    """A human-readable account of which backend would run on ``device`` and why."""
    device = torch.device(device)
    lines = []
    for name in backend_names():
        why = get_backend(name).reasons(device, [dtype])
        lines.append(f"  {name:7s} {'usable' if not why else 'not usable: ' + '; '.join(why)}")
    try:
        chosen = choose_backend(device, [dtype]).name
    except ValueError as err:
        chosen = f"none ({err})"
    return f"ops on {device} {dtype}: {chosen}\n" + "\n".join(lines)


register_backend("torch", TorchBackend)
