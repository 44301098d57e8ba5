"""``upsample``: bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, H, W),
optionally min-max scaled per map in the same kernel.

Here: the argument checks, the output allocation, the fake kernel of the compiled op
``igcam_fast::upsample_out`` and the dispatch entry. Kernels: csrc/cpu/igcam_kernels.cpp,
csrc/cuda/igcam_kernels.cu, igcam_fast/ops/triton/upsample.py, backends/eager.py.
"""

from __future__ import annotations

import torch

from .backends import OpCall, dispatch
from .backends.compiled import schemas_loaded
from .common import accumulation_dtype, allocate, check_float, check_out, check_same_device

NAME = "upsample"


def upsample(maps, size, *, normalize=False, backend=None, out=None):
    """Bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, H, W).

    normalize: scale each output map to [0, 1] as pytorch-grad-cam does,
    (v - min) / (1e-7 + max - min), in the same kernel.
    Returns a float32 tensor (float64 for float64 maps).
    """
    check_float("maps", maps, (3,))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}")
    if maps.shape[1] < 1 or maps.shape[2] < 1:
        raise ValueError(f"maps must have a non-empty spatial extent, got shape {tuple(maps.shape)}")
    acc = accumulation_dtype(maps.dtype)
    shape = (maps.shape[0], *size)
    if out is None:
        out = allocate(shape, acc, maps.device)
    else:
        check_out(out, shape, acc)
        check_same_device(maps.device, out=out)
    if out.numel():
        call = OpCall(NAME, maps.device, frozenset({maps.dtype}), {"maps": maps, "out": out})
        dispatch(call, backend, maps, bool(normalize), out)
    return out


if schemas_loaded():

    @torch.library.register_fake("igcam_fast::upsample_out")
    def _upsample_out_fake(maps, normalize, out):
        torch._check(out.dim() == 3 and out.shape[0] == maps.shape[0],
                     lambda: f"out must have shape (B, H, W), got {tuple(out.shape)}")
        return None
