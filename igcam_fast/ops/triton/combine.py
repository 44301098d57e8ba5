"""Triton ``combine``: [weights kernel] -> partial kernel -> finish kernel.

    weights  only when one program cannot see a whole h·w plane: w[n, k] in fp32; grid
             (K blocks, row programs).
    partial  grid (pixel tiles, row programs, K splits): a (BLOCK_K, BLOCK_P) register tile
             loops over its K range; channel weights are computed in-program from the gradient
             tile when the plane fits.
    finish   grid (pixel tiles, image programs): sums the K splits, ReLU, Σ_t ω_t.

Deterministic (no atomics); the only temporaries are (B·m, K splits, h·w) partial sums and
(B·m, K) weights. Rows (and images) past the grid's row limit are covered by each program looping.
Zero channels give zero maps without a launch.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from .common import TARGET_PROGRAMS, device_guard, launcher, pixel_offsets, pow2, register, row_programs


@triton.jit
def _gradcampp_terms(G, sum_a):
    """a·max(G, 0) with a = G² / (2G² + (Σ_ij A)·G³ + 1e-6), a = 0 where G == 0 (masked G is 0)."""
    g2 = G * G
    a = g2 / (2.0 * g2 + sum_a * g2 * G + 1e-6)
    a = tl.where(G != 0.0, a, 0.0)
    return a * tl.maximum(G, 0.0)


@triton.jit
def _combine_weights_kernel(
    a_ptr, g_ptr, w_ptr, N, K, HW, W_img,
    a_sn, a_sk, a_sh, a_sw, g_sn, g_sk, g_sh, g_sw, w_sn,
    WEIGHT_MODE: tl.constexpr, HW_MERGED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """w[n, k] (fp32) for planes too large for one combine program; grid (K blocks, row programs)."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    for row in range(tl.program_id(1), N, tl.num_programs(1)):
        n = tl.cast(row, tl.int64)
        a_row = a_ptr + n * a_sn + ks.to(tl.int64)[:, None] * a_sk
        g_row = g_ptr + n * g_sn + ks.to(tl.int64)[:, None] * g_sk
        sum_a = tl.zeros([BLOCK_K], dtype=tl.float32)
        if WEIGHT_MODE == 1:  # Grad-CAM++ needs Σ_ij A before it can weigh any gradient
            for p0 in range(0, HW, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                mask = k_mask[:, None] & (ps < HW)[None, :]
                A = tl.load(a_row + pixel_offsets(ps, W_img, a_sh, a_sw, HW_MERGED)[None, :], mask=mask, other=0.0)
                sum_a += tl.sum(A.to(tl.float32), axis=1)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = k_mask[:, None] & (ps < HW)[None, :]
            G = tl.load(g_row + pixel_offsets(ps, W_img, g_sh, g_sw, HW_MERGED)[None, :], mask=mask, other=0.0)
            G = G.to(tl.float32)
            if WEIGHT_MODE == 1:
                acc += tl.sum(_gradcampp_terms(G, sum_a[:, None]), axis=1)
            else:
                acc += tl.sum(G, axis=1)
        if WEIGHT_MODE == 0:
            acc = acc / HW
        tl.store(w_ptr + n * w_sn + ks, acc, mask=k_mask)


@triton.jit
def _combine_partial_kernel(
    a_ptr, g_ptr, cw_ptr, base_ptr, part_ptr,
    N, K, HW, W_img, m, k_per,
    a_sn, a_sk, a_sh, a_sw,
    g_sn, g_sk, g_sh, g_sw,
    cw_sn, cw_sk,
    base_sb, base_sk, base_sh, base_sw,
    part_sn, part_ss,
    WEIGHT_MODE: tl.constexpr, FUSED_WEIGHTS: tl.constexpr, HAS_BASE: tl.constexpr,
    HW_MERGED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """part[n, split, p] = Σ_{k in split} w[n, k] (A[n, k, p] - A'[b, k, p]); grid (p tiles, row programs, splits).

    FUSED_WEIGHTS: the tile holds the whole h·w plane, so w[n, k] comes from the gradient tile
    (WEIGHT_MODE 0 Grad-CAM, 1 Grad-CAM++) instead of from cw (weights given or precomputed).
    """
    split = tl.program_id(2).to(tl.int64)
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = ps < HW
    a_pix = pixel_offsets(ps, W_img, a_sh, a_sw, HW_MERGED)[None, :]
    if FUSED_WEIGHTS:
        g_pix = pixel_offsets(ps, W_img, g_sh, g_sw, HW_MERGED)[None, :]
    if HAS_BASE:
        base_pix = pixel_offsets(ps, W_img, base_sh, base_sw, HW_MERGED)[None, :]
    k_start = tl.program_id(2) * k_per
    k_end = tl.minimum(k_start + k_per, K)
    for row in range(tl.program_id(1), N, tl.num_programs(1)):
        n = tl.cast(row, tl.int64)
        b = n // m
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < k_end
            ks64 = ks.to(tl.int64)
            mask = k_mask[:, None] & p_mask[None, :]
            A = tl.load(a_ptr + n * a_sn + ks64[:, None] * a_sk + a_pix, mask=mask, other=0.0).to(tl.float32)
            if FUSED_WEIGHTS:
                G = tl.load(g_ptr + n * g_sn + ks64[:, None] * g_sk + g_pix, mask=mask, other=0.0).to(tl.float32)
                if WEIGHT_MODE == 1:
                    w = tl.sum(_gradcampp_terms(G, tl.sum(A, axis=1)[:, None]), axis=1)
                else:
                    w = tl.sum(G, axis=1) / HW
            else:
                w = tl.load(cw_ptr + n * cw_sn + ks64 * cw_sk, mask=k_mask, other=0.0).to(tl.float32)
            if HAS_BASE:
                A -= tl.load(base_ptr + b * base_sb + ks64[:, None] * base_sk + base_pix, mask=mask,
                             other=0.0).to(tl.float32)
            acc += tl.sum(w[:, None] * A, axis=0)
        tl.store(part_ptr + n * part_sn + split * part_ss + ps, acc, mask=p_mask)


@triton.jit
def _combine_finish_kernel(
    part_ptr, sw_ptr, out_ptr, B, HW, W_img, m, n_splits,
    part_sn, part_ss, sw_s, out_sb, out_sh, out_sw,
    RELU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[b, p] = Σ_t ω_t ReLU(Σ_split part[b·m + t, split, p]); grid (p tiles, image programs).

    Loads (path nodes, splits, pixels) tiles at once: the data is tiny and a loop of
    dependent small loads would make this kernel latency-bound.
    """
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = ps < HW
    splits = tl.arange(0, BLOCK_S).to(tl.int64)
    s_mask = splits < n_splits
    out_off = (ps // W_img).to(tl.int64) * out_sh + (ps % W_img).to(tl.int64) * out_sw
    for image in range(tl.program_id(1), B, tl.num_programs(1)):
        b = tl.cast(image, tl.int64)
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for t0 in range(0, m, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            t_mask = ts < m
            rows = b * m + ts.to(tl.int64)
            ptrs = part_ptr + rows[:, None, None] * part_sn + splits[None, :, None] * part_ss + ps[None, None, :]
            mask = t_mask[:, None, None] & s_mask[None, :, None] & p_mask[None, None, :]
            s = tl.sum(tl.load(ptrs, mask=mask, other=0.0), axis=1)
            if RELU:
                s = tl.maximum(s, 0.0)
            omega = tl.load(sw_ptr + ts * sw_s, mask=t_mask, other=0.0).to(tl.float32)
            acc += tl.sum(omega[:, None] * s, axis=0)
        tl.store(out_ptr + b * out_sb + out_off, acc, mask=p_mask)


def _pixel_stride(t: torch.Tensor):
    """The one stride of the flat pixel index of a (..., h, w) tensor, or None if there is none."""
    h, w = t.shape[-2], t.shape[-1]
    s_h, s_w = t.stride(-2), t.stride(-1)
    if w == 1:
        return s_h
    if h == 1 or s_h == w * s_w:
        return s_w
    return None


#: Elements of a combine register tile, and the widest h·w plane one program takes whole.
_COMBINE_TILE = 4096
_COMBINE_MAX_PLANE = 1024


def _combine_tiles(K: int, HW: int, channels_inner: bool, budget: int = 0):
    """(BLOCK_K, BLOCK_P) of a register tile: long runs along whichever dim is contiguous."""
    budget = budget or _COMBINE_TILE
    if channels_inner:
        block_k = min(pow2(K), 64)
        block_p = max(1, min(pow2(HW), budget // block_k))
    else:
        block_p = min(pow2(HW), _COMBINE_MAX_PLANE)
        block_k = max(1, min(pow2(K), budget // block_p, 256))
    return block_k, block_p


def _combine(activations: torch.Tensor, gradients: Optional[torch.Tensor], channel_weights: Optional[torch.Tensor],
             baseline_features: Optional[torch.Tensor], step_weights: torch.Tensor, weight_mode: int, relu: bool,
             out: torch.Tensor) -> None:
    """(B·m, K, h, w) activations -> out (B, h, w) fp32; see igcam_fast.ops.combine."""
    A = activations
    N, K, h, w = A.shape
    m = step_weights.shape[0]
    B = N // m
    HW = h * w
    if out.numel() == 0:
        return
    if K == 0:  # no channels: every map is zero (the other backends agree)
        out.zero_()
        return
    tensors = [A] + [t for t in (gradients, baseline_features) if t is not None]
    merged = all(_pixel_stride(t) is not None for t in tensors)

    def pix(t):  # (s_h, s_w) as the kernels want them
        return (t.stride(-2), _pixel_stride(t)) if merged else (t.stride(-2), t.stride(-1))

    channels_inner = A.stride(1) == 1 and K > 1 and HW > 1
    block_k, block_p = _combine_tiles(K, HW, channels_inner)
    tiles = triton.cdiv(HW, block_p)
    with device_guard(out):
        if channel_weights is not None:
            mode, fused, cw = 2, False, channel_weights
        else:
            mode, fused = weight_mode, tiles == 1
            cw = A
            if not fused:
                cw = torch.empty((N, K), dtype=torch.float32, device=A.device)
                if channels_inner:
                    wk, wp = _combine_tiles(K, HW, True, budget=2048)
                else:  # (channels, 256-pixel runs): the plane is long, loop over it
                    wp = min(pow2(HW), 256)
                    wk = min(pow2(K), 2048 // wp)
                launcher(_combine_weights_kernel)[(triton.cdiv(K, wk), row_programs(N))](
                    A, gradients, cw, N, K, HW, w,
                    A.stride(0), A.stride(1), *pix(A),
                    gradients.stride(0), gradients.stride(1), *pix(gradients), cw.stride(0),
                    WEIGHT_MODE=mode, HW_MERGED=merged, BLOCK_K=wk, BLOCK_P=wp, num_warps=4,
                )
        G = gradients if (fused and gradients is not None) else A
        base = baseline_features if baseline_features is not None else A
        base_sb = base.stride(0) if (baseline_features is not None and base.dim() == 4) else 0
        # Split K only as far as needed to give the GPU enough programs; each split costs one
        # (B·m, h·w) fp32 partial, read back by the finish kernel.
        k_blocks = triton.cdiv(K, block_k)
        splits = min(k_blocks, max(1, triton.cdiv(TARGET_PROGRAMS, tiles * N)), 256)
        k_per = triton.cdiv(k_blocks, splits) * block_k
        splits = triton.cdiv(K, k_per)
        part = torch.empty((N, splits, HW), dtype=torch.float32, device=A.device)
        launcher(_combine_partial_kernel)[(tiles, row_programs(N), splits)](
            A, G, cw, base, part,
            N, K, HW, w, m, k_per,
            A.stride(0), A.stride(1), *pix(A),
            G.stride(0), G.stride(1), *pix(G),
            cw.stride(0), cw.stride(1),
            base_sb, base.stride(-3), *pix(base),
            part.stride(0), part.stride(1),
            WEIGHT_MODE=mode, FUSED_WEIGHTS=fused, HAS_BASE=baseline_features is not None,
            HW_MERGED=merged, BLOCK_K=block_k, BLOCK_P=block_p,
            num_warps=8 if block_k * block_p >= 4096 else 4,
        )
        block_s = pow2(splits)
        block_f = max(1, min(pow2(HW), 128, 4096 // block_s))
        block_t = max(1, min(pow2(m), 4096 // (block_s * block_f)))
        launcher(_combine_finish_kernel)[(triton.cdiv(HW, block_f), row_programs(B))](
            part, step_weights, out, B, HW, w, m, splits,
            part.stride(0), part.stride(1), step_weights.stride(0), out.stride(0), out.stride(1), out.stride(2),
            RELU=relu, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_P=block_f, num_warps=4,
        )


combine = register("combine", _combine)
