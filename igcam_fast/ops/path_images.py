"""``path_images``: the batch of path images γ(α_t) = x' + α_t (x - x') for every image and node.

    x (B, C, H, W), baseline (C, H, W) | (B, C, H, W), alphas (m,) -> (B·m, C, H, W), row b·m + t

Here: the argument checks, the output allocation, the fake kernel of the compiled op
``igcam_fast::path_images_out`` and the dispatch entry. Kernels: csrc/cpu/igcam_kernels.cpp,
csrc/cuda/igcam_kernels.cu, igcam_fast/ops/triton/path_images.py, backends/eager.py.
"""

from __future__ import annotations

import torch

from .backends import OpCall, dispatch
from .backends.compiled import schemas_loaded
from .common import allocate, check_float, check_out, check_same_device

NAME = "path_images"


def path_images(x, baseline, alphas, mean=None, std=None, *, dtype=None, channels_last=False,
                backend=None, out=None):
    """Build the batch of path images γ(α_t) = x' + α_t (x - x') for every image and node.

    Args:
        x: (B, C, H, W) inputs.
        baseline: (C, H, W) shared or (B, C, H, W) per-image baseline x', in the space of x.
        alphas: (m,) path nodes.
        mean, std: (C,) each, or None: when given, x and baseline are pixel-space and each path
            image is normalised, (γ - mean) / std, in the same pass.
        dtype: dtype of the result (default: x's), e.g. the autocast dtype of the forward.
        channels_last: lay the result out channels_last (what a channels_last forward wants).
        backend: force a backend by name.
        out: (B·m, C, H, W) tensor to write into instead of allocating.
    Returns:
        (B·m, C, H, W) tensor, row b·m + t.
    """
    check_float("x", x, (4,))
    check_float("baseline", baseline, (3, 4))
    check_float("alphas", alphas, (1,))
    B, C, H, W = x.shape
    if tuple(baseline.shape[-3:]) != (C, H, W) or (baseline.dim() == 4 and baseline.shape[0] != B):
        raise ValueError(f"baseline must have shape {(C, H, W)} or {(B, C, H, W)} to match x, "
                         f"got {tuple(baseline.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is not None:
        check_float("mean", mean, (1,))
        check_float("std", std, (1,))
        if mean.numel() != C or std.numel() != C:
            raise ValueError(f"mean and std must have {C} elements (one per channel), "
                             f"got {mean.numel()} and {std.numel()}")
    check_same_device(x.device, baseline=baseline, alphas=alphas, mean=mean, std=std)
    m = alphas.shape[0]
    shape = (B * m, C, H, W)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        out = allocate(shape, dtype or x.dtype, x.device, memory_format)
    else:
        check_out(out, shape)
        check_same_device(x.device, out=out)
    if out.numel():
        call = OpCall(NAME, x.device, frozenset({x.dtype, baseline.dtype, out.dtype}),
                      {"x": x, "baseline": baseline, "out": out})
        dispatch(call, backend, x, baseline, alphas, mean, std, out)
    return out


if schemas_loaded():

    @torch.library.register_fake("igcam_fast::path_images_out")
    def _path_images_out_fake(x, baseline, alphas, mean, std, out):
        B, C, H, W = x.shape
        torch._check(out.shape == (B * alphas.shape[0], C, H, W),
                     lambda: f"out must have shape (B·m, C, H, W), got {tuple(out.shape)}")
        return None
