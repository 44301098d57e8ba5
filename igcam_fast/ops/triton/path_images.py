"""Triton ``path_images``: grid (pixel tiles of one image, image programs, path-node chunks).

Each program loads its x and baseline tile once and writes it for each of its path nodes; tiles
follow out's memory order so stores (and loads, when x has the same layout) are contiguous and
vectorised. Images past the grid's row limit are covered by each program looping over images.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import TARGET_PROGRAMS, device_guard, launcher, pow2, register, row_programs


@triton.jit
def _path_images_kernel(
    x_ptr, base_ptr, alphas_ptr, mean_ptr, std_ptr, out_ptr,
    S, S1, S2, B, m, t_per,
    x_sb, x_s0, x_s1, x_s2,
    base_sb, base_s0, base_s1, base_s2,
    out_sn, out_s0, out_s1, out_s2,
    c_s0, c_s1, c_s2, mean_s, std_s, alpha_s,
    NORMALIZE: tl.constexpr, X_FLAT: tl.constexpr, BASE_FLAT: tl.constexpr,
    OUT_FLAT: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[b·m + t, c, i, j] = (base + α_t (x - base) - mean_c) / std_c, in fp32.

    The three per-image dims (d0, d1, d2) are (C, H, W) permuted into out's memory order; a
    tensor flagged *_FLAT is dense in that order and is addressed by the flat index itself.
    """
    tile = tl.program_id(0)
    t_start = tl.program_id(2) * t_per
    t_end = tl.minimum(t_start + t_per, m)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    if not (X_FLAT and BASE_FLAT and OUT_FLAT) or NORMALIZE:
        d2 = offs % S2
        rest = offs // S2
        d1 = rest % S1
        d0 = rest // S1
    if X_FLAT:
        x_off = offs
    else:
        x_off = d0.to(tl.int64) * x_s0 + d1.to(tl.int64) * x_s1 + d2.to(tl.int64) * x_s2
    if BASE_FLAT:
        base_off = offs
    else:
        base_off = d0.to(tl.int64) * base_s0 + d1.to(tl.int64) * base_s1 + d2.to(tl.int64) * base_s2
    if OUT_FLAT:
        out_off = offs
    else:
        out_off = d0.to(tl.int64) * out_s0 + d1.to(tl.int64) * out_s1 + d2.to(tl.int64) * out_s2
    if NORMALIZE:
        c = d0 * c_s0 + d1 * c_s1 + d2 * c_s2  # the channel: exactly one of c_s* is 1
        mean = tl.load(mean_ptr + c * mean_s, mask=mask, other=0.0).to(tl.float32)
        std = tl.load(std_ptr + c * std_s, mask=mask, other=1.0).to(tl.float32)
    for image in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.cast(image, tl.int64)
        x = tl.load(x_ptr + b * x_sb + x_off, mask=mask, other=0.0).to(tl.float32)
        base = tl.load(base_ptr + b * base_sb + base_off, mask=mask, other=0.0).to(tl.float32)
        diff = x - base
        for t in range(t_start, t_end):
            alpha = tl.load(alphas_ptr + t * alpha_s).to(tl.float32)
            v = base + alpha * diff
            if NORMALIZE:
                v = (v - mean) / std
            n = b * m + t
            tl.store(out_ptr + n * out_sn + out_off, v.to(out_ptr.dtype.element_ty), mask=mask)


def _is_flat(sizes, strides) -> bool:
    expected = 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _path_images(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, mean: Optional[torch.Tensor],
                 std: Optional[torch.Tensor], out: torch.Tensor) -> None:
    """x (B, C, H, W), baseline (C, H, W) | (B, C, H, W), alphas (m,) -> out (B·m, C, H, W).

    One image must have fewer than 2^31 elements (the backend declares it; checked again here).
    """
    B, C, H, W = x.shape
    m = alphas.shape[0]
    if out.numel() == 0:
        return
    # Walk (C, H, W) in out's memory order (innermost last) so that stores are contiguous.
    order = sorted((1, 2, 3), key=lambda d: (-out.stride(d), -d))
    sizes = [out.shape[d] for d in order]
    S = C * H * W
    if S >= 2**31:
        raise ValueError("path_images: one image must have fewer than 2^31 elements for the triton backend")
    base_sb = baseline.stride(0) if baseline.dim() == 4 else 0
    base_strides = baseline.stride()[-3:]
    x_s = [x.stride(d) for d in order]
    base_s = [base_strides[d - 1] for d in order]
    out_s = [out.stride(d) for d in order]
    c_s = [1 if d == 1 else 0 for d in order]
    normalize = mean is not None
    BLOCK = min(2048, pow2(S))
    tiles = triton.cdiv(S, BLOCK)
    # Split the path nodes over programs only when images alone do not fill the GPU.
    chunks = min(m, max(1, triton.cdiv(TARGET_PROGRAMS, tiles * B)))
    t_per = triton.cdiv(m, chunks)
    chunks = triton.cdiv(m, t_per)
    with device_guard(out):
        launcher(_path_images_kernel)[(tiles, row_programs(B), chunks)](
            x, baseline, alphas, mean if normalize else alphas, std if normalize else alphas, out,
            S, sizes[1], sizes[2], B, m, t_per,
            x.stride(0), *x_s,
            base_sb, *base_s,
            out.stride(0), *out_s,
            *c_s, mean.stride(0) if normalize else 0, std.stride(0) if normalize else 0, alphas.stride(0),
            NORMALIZE=normalize, X_FLAT=_is_flat(sizes, x_s), BASE_FLAT=_is_flat(sizes, base_s),
            OUT_FLAT=_is_flat(sizes, out_s), BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4,
        )


path_images = register("path_images", _path_images)
