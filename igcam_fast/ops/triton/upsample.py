"""Triton ``upsample``: grid (output tile chunks, map programs).

Without normalize each program writes one output tile; with normalize one program per map
makes two passes, the first for min and max, the second to write (v - min) / (1e-7 + max - min).
Maps past the grid's row limit are covered by each program looping over maps.
"""

import torch
import triton
import triton.language as tl

from .common import device_guard, launcher, pow2, register, row_programs


@triton.jit
def _bilinear(maps_ptr, b, idx, mask, h, w, W_out, scale_h, scale_w, m_sb, m_sh, m_sw):
    """Bilinear (align_corners=False) value at flat output index idx, as upsample_bilinear2d."""
    oi = idx // W_out
    oj = idx % W_out
    src_h = tl.maximum((oi.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    src_w = tl.maximum((oj.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    i0 = src_h.to(tl.int32)  # truncation is floor: src >= 0
    j0 = src_w.to(tl.int32)
    i1 = tl.minimum(i0 + 1, h - 1)
    j1 = tl.minimum(j0 + 1, w - 1)
    lh = src_h - i0.to(tl.float32)
    lw = src_w - j0.to(tl.float32)
    row0 = maps_ptr + b * m_sb + i0.to(tl.int64) * m_sh
    row1 = maps_ptr + b * m_sb + i1.to(tl.int64) * m_sh
    c0 = j0.to(tl.int64) * m_sw
    c1 = j1.to(tl.int64) * m_sw
    v00 = tl.load(row0 + c0, mask=mask, other=0.0).to(tl.float32)
    v01 = tl.load(row0 + c1, mask=mask, other=0.0).to(tl.float32)
    v10 = tl.load(row1 + c0, mask=mask, other=0.0).to(tl.float32)
    v11 = tl.load(row1 + c1, mask=mask, other=0.0).to(tl.float32)
    # Lerp form: rounds like PyTorch's weighted form to within an ulp, and is exact on flat
    # regions, where the min-max scaling would otherwise magnify rounding noise.
    top = v00 + lw * (v01 - v00)
    bottom = v10 + lw * (v11 - v10)
    return top + lh * (bottom - top)


@triton.jit
def _upsample_kernel(
    maps_ptr, out_ptr, B, h, w, H_out, W_out, scale_h, scale_w, tiles_per,
    m_sb, m_sh, m_sw, o_sb, o_sh, o_sw,
    NORMALIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[b] = bilinear(maps[b]) (then min-max scaled if NORMALIZE); grid (tile chunks, map programs)."""
    HW_out = H_out * W_out
    tile_start = tl.program_id(0) * tiles_per
    tile_end = tl.minimum(tile_start + tiles_per, tl.cdiv(HW_out, BLOCK))
    for image in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.cast(image, tl.int64)
        if NORMALIZE:  # first pass: the extremes of the upsampled map (recomputing is cheaper than a reload)
            lo = tl.full([BLOCK], float("inf"), tl.float32)
            hi = tl.full([BLOCK], float("-inf"), tl.float32)
            for tile in range(tile_start, tile_end):
                idx = tile * BLOCK + tl.arange(0, BLOCK)
                mask = idx < HW_out
                v = _bilinear(maps_ptr, b, idx, mask, h, w, W_out, scale_h, scale_w, m_sb, m_sh, m_sw)
                lo = tl.minimum(lo, tl.where(mask, v, float("inf")))
                hi = tl.maximum(hi, tl.where(mask, v, float("-inf")))
            low = tl.min(lo, axis=0)
            span = 1e-7 + (tl.max(hi, axis=0) - low)
        for tile in range(tile_start, tile_end):
            idx = tile * BLOCK + tl.arange(0, BLOCK)
            mask = idx < HW_out
            v = _bilinear(maps_ptr, b, idx, mask, h, w, W_out, scale_h, scale_w, m_sb, m_sh, m_sw)
            if NORMALIZE:
                v = (v - low) / span
            out_off = (idx // W_out).to(tl.int64) * o_sh + (idx % W_out).to(tl.int64) * o_sw
            tl.store(out_ptr + b * o_sb + out_off, v, mask=mask)


def _upsample(maps: torch.Tensor, normalize: bool, out: torch.Tensor) -> None:
    """(B, h, w) -> out (B, H, W) fp32, bilinear with align_corners=False."""
    B, h, w = maps.shape
    _, H, W = out.shape
    if out.numel() == 0:
        return
    # Normalising programs walk a whole map twice: wide tiles keep that walk short.
    BLOCK = min(4096 if normalize else 1024, pow2(H * W))
    tiles = triton.cdiv(H * W, BLOCK)
    # Normalising needs a whole map's extremes: one program per map; else one per tile.
    tiles_per = tiles if normalize else 1
    with device_guard(out):
        launcher(_upsample_kernel)[(triton.cdiv(tiles, tiles_per), row_programs(B))](
            maps, out, B, h, w, H, W, float(h) / float(H), float(w) / float(W), tiles_per,
            maps.stride(0), maps.stride(1), maps.stride(2), out.stride(0), out.stride(1), out.stride(2),
            NORMALIZE=normalize, BLOCK=BLOCK, num_warps=16 if BLOCK >= 4096 else 4,
        )


upsample = register("upsample", _upsample)
