"""What the three ops share: argument checks, output allocation (NaN poisoning), the
accumulation dtype, layouts and the min-max scaling.

With :func:`poison_outputs` active (or IGCAM_FAST_POISON_OUTPUTS=1) every output an op allocates
is filled with NaN before the kernel runs, so an element a kernel forgets to write shows up in
any comparison.
"""

from __future__ import annotations

import contextlib
import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Memory layouts a backend can declare: dense NCHW, dense NHWC, anything else (a strided view).
LAYOUTS = ("contiguous", "channels_last", "strided")

POISON_ENV = "IGCAM_FAST_POISON_OUTPUTS"
_poison_depth = 0


@contextlib.contextmanager
def poison_outputs():
    """Fill every output these ops allocate with NaN before the kernel writes it (for tests)."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1


def allocate(shape, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """An op's output, NaN-filled while :func:`poison_outputs` is active."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison_depth or os.environ.get(POISON_ENV) == "1":
        out.fill_(float("nan"))
    return out


def check_float(name: str, t, dims=None) -> None:
    """Raise naming ``name`` unless t is a floating-point tensor with one of ``dims`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")


def check_same_device(device: torch.device, **tensors) -> None:
    """Raise naming the first tensor (None skipped) that is not on ``device``."""
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def check_out(out: torch.Tensor, shape, dtype=None) -> None:
    """Raise unless a caller-provided ``out`` has this shape (and dtype, when given)."""
    if dtype is None and tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if dtype is not None and (tuple(out.shape) != tuple(shape) or out.dtype != dtype):
        raise ValueError(f"out must be a {dtype} tensor of shape {tuple(shape)}, got {out.dtype} {tuple(out.shape)}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are accumulated and returned in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def layout_of(t: torch.Tensor) -> str:
    """One of :data:`LAYOUTS` for a tensor."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


def minmax_scale(maps: torch.Tensor) -> torch.Tensor:
    """Per map (v - min) / (1e-7 + max - min) over all but the first dimension: pytorch-grad-cam's
    scale_cam_image, and what ``upsample(normalize=True)`` computes after the interpolation."""
    flat = maps.flatten(1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    lo = flat.amin(dim=1).view(shape)
    hi = flat.amax(dim=1).view(shape)
    return (maps - lo) / (1e-7 + (hi - lo))
