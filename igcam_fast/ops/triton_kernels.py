"""Triton kernels of the three ops, their host wrappers and their ``torch.library`` registration.

Imported lazily by :mod:`igcam_fast.ops.triton_backend` on first use, because importing triton
is slow. Whether the kernels run compiled or under Triton's interpreter is fixed here, at import
(``@triton.jit`` reads TRITON_INTERPRET when it decorates): see :data:`INTERPRETED`.

Each host op is a ``torch.library.triton_op`` (``igcam_fast_triton::<op>``, mutating ``out``)
whose launches go through ``wrap_triton``, so ``torch.compile`` traces into the kernels. The host
code reads only shapes and strides (no ``.data_ptr()``, no ``.item()``) and is its own fake kernel.
:func:`run` (what the backend calls) skips the op dispatcher in plain eager mode only.

Layout of the work (what makes each kernel fast on a GPU):
    path_images  grid (pixel tiles of one image, B, path-node chunks): each program loads its
                 x and baseline tile once and writes it for each of its path nodes; tiles follow
                 out's memory order so stores (and loads, when x has the same layout) are
                 contiguous and vectorised.
    combine      [weights kernel, only when one program cannot see a whole h·w plane] ->
                 partial kernel, grid (pixel tiles, B·m rows, K splits): a (BLOCK_K, BLOCK_P)
                 register tile loops over its K range, channel weights are computed in-program
                 from the gradient tile when the plane fits -> finish kernel, grid (B, pixel
                 tiles): sums the K splits, ReLU, Σ_t ω_t. Deterministic (no atomics); the only
                 temporaries are (B·m, K splits, h·w) partial sums and (B·m, K) weights.
    upsample     grid (B, output tiles), or (B,) with normalize: one program per map makes two
                 passes, the first for min and max, the second to write (v - min) / (1e-7 + max - min).
"""

import contextvars
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

#: Programs to aim for: a few waves on a 132-SM H100, so small problems still fill the GPU.
_TARGET_PROGRAMS = 4 * 132


# Set while an eager call runs the host code directly (see `run`): launches then skip the
# wrap_triton machinery, which only tracing needs.
_DIRECT = contextvars.ContextVar("igcam_fast_triton_direct", default=False)


def _launcher(kernel):
    if _DIRECT.get():
        return kernel
    try:
        return wrap_triton(kernel)
    except RuntimeError:  # an interpreted kernel on a torch that does not know them
        return kernel


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# --------------------------------------------------------------------------------------------
# path_images
# --------------------------------------------------------------------------------------------


@triton.jit
def _path_images_kernel(
    x_ptr, base_ptr, alphas_ptr, mean_ptr, std_ptr, out_ptr,
    S, S1, S2, m, t_per,
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
    b = tl.program_id(1).to(tl.int64)
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
    x = tl.load(x_ptr + b * x_sb + x_off, mask=mask, other=0.0).to(tl.float32)
    base = tl.load(base_ptr + b * base_sb + base_off, mask=mask, other=0.0).to(tl.float32)
    diff = x - base
    if NORMALIZE:
        c = d0 * c_s0 + d1 * c_s1 + d2 * c_s2  # the channel: exactly one of c_s* is 1
        mean = tl.load(mean_ptr + c * mean_s, mask=mask, other=0.0).to(tl.float32)
        std = tl.load(std_ptr + c * std_s, mask=mask, other=1.0).to(tl.float32)
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
    """x (B, C, H, W), baseline (C, H, W) | (B, C, H, W), alphas (m,) -> out (B·m, C, H, W)."""
    B, C, H, W = x.shape
    m = alphas.shape[0]
    if out.numel() == 0:
        return
    # Walk (C, H, W) in out's memory order (innermost last) so that stores are contiguous.
    order = sorted((1, 2, 3), key=lambda d: (-out.stride(d), -d))
    sizes = [out.shape[d] for d in order]
    S = C * H * W
    if S >= 2**31:
        raise ValueError("path_images: one image must have fewer than 2^31 elements")
    base_sb = baseline.stride(0) if baseline.dim() == 4 else 0
    base_strides = baseline.stride()[-3:]
    x_s = [x.stride(d) for d in order]
    base_s = [base_strides[d - 1] for d in order]
    out_s = [out.stride(d) for d in order]
    c_s = [1 if d == 1 else 0 for d in order]
    normalize = mean is not None
    BLOCK = min(2048, _pow2(S))
    tiles = triton.cdiv(S, BLOCK)
    # Split the path nodes over programs only when images alone do not fill the GPU.
    chunks = min(m, max(1, triton.cdiv(_TARGET_PROGRAMS, tiles * B)))
    t_per = triton.cdiv(m, chunks)
    chunks = triton.cdiv(m, t_per)
    _launcher(_path_images_kernel)[(tiles, B, chunks)](
        x, baseline, alphas, mean if normalize else alphas, std if normalize else alphas, out,
        S, sizes[1], sizes[2], m, t_per,
        x.stride(0), *x_s,
        base_sb, *base_s,
        out.stride(0), *out_s,
        *c_s, mean.stride(0) if normalize else 0, std.stride(0) if normalize else 0, alphas.stride(0),
        NORMALIZE=normalize, X_FLAT=_is_flat(sizes, x_s), BASE_FLAT=_is_flat(sizes, base_s),
        OUT_FLAT=_is_flat(sizes, out_s), BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4,
    )


# --------------------------------------------------------------------------------------------
# combine
# --------------------------------------------------------------------------------------------


@triton.jit
def _pixel_offsets(p, W_img, s_h, s_w, HW_MERGED: tl.constexpr):
    """Offset of flat pixel p = i·w + j; one multiply when (h, w) collapse to one stride."""
    if HW_MERGED:
        return p.to(tl.int64) * s_w
    else:
        return (p // W_img).to(tl.int64) * s_h + (p % W_img).to(tl.int64) * s_w


@triton.jit
def _gradcampp_terms(G, sum_a):
    """a·max(G, 0) with a = G² / (2G² + (Σ_ij A)·G³ + 1e-6), a = 0 where G == 0 (masked G is 0)."""
    g2 = G * G
    a = g2 / (2.0 * g2 + sum_a * g2 * G + 1e-6)
    a = tl.where(G != 0.0, a, 0.0)
    return a * tl.maximum(G, 0.0)


@triton.jit
def _combine_weights_kernel(
    a_ptr, g_ptr, w_ptr, K, HW, W_img,
    a_sn, a_sk, a_sh, a_sw, g_sn, g_sk, g_sh, g_sw, w_sn,
    WEIGHT_MODE: tl.constexpr, HW_MERGED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """w[n, k] (fp32) for planes too large for one combine program; grid (B·m, K blocks)."""
    n = tl.program_id(0).to(tl.int64)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    a_row = a_ptr + n * a_sn + ks.to(tl.int64)[:, None] * a_sk
    g_row = g_ptr + n * g_sn + ks.to(tl.int64)[:, None] * g_sk
    if WEIGHT_MODE == 1:  # Grad-CAM++ needs Σ_ij A before it can weigh any gradient
        sum_a = tl.zeros([BLOCK_K], dtype=tl.float32)
        for p0 in range(0, HW, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            mask = k_mask[:, None] & (ps < HW)[None, :]
            A = tl.load(a_row + _pixel_offsets(ps, W_img, a_sh, a_sw, HW_MERGED)[None, :], mask=mask, other=0.0)
            sum_a += tl.sum(A.to(tl.float32), axis=1)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        mask = k_mask[:, None] & (ps < HW)[None, :]
        G = tl.load(g_row + _pixel_offsets(ps, W_img, g_sh, g_sw, HW_MERGED)[None, :], mask=mask, other=0.0)
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
    K, HW, W_img, m, k_per,
    a_sn, a_sk, a_sh, a_sw,
    g_sn, g_sk, g_sh, g_sw,
    cw_sn, cw_sk,
    base_sb, base_sk, base_sh, base_sw,
    part_sn, part_ss,
    WEIGHT_MODE: tl.constexpr, FUSED_WEIGHTS: tl.constexpr, HAS_BASE: tl.constexpr,
    HW_MERGED: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """part[n, split, p] = Σ_{k in split} w[n, k] (A[n, k, p] - A'[b, k, p]); grid (p tiles, B·m, splits).

    FUSED_WEIGHTS: the tile holds the whole h·w plane, so w[n, k] comes from the gradient tile
    (WEIGHT_MODE 0 Grad-CAM, 1 Grad-CAM++) instead of from cw (weights given or precomputed).
    """
    n = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b = n // m
    ps = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = ps < HW
    a_pix = _pixel_offsets(ps, W_img, a_sh, a_sw, HW_MERGED)[None, :]
    if FUSED_WEIGHTS:
        g_pix = _pixel_offsets(ps, W_img, g_sh, g_sw, HW_MERGED)[None, :]
    if HAS_BASE:
        base_pix = _pixel_offsets(ps, W_img, base_sh, base_sw, HW_MERGED)[None, :]
    k_start = split * k_per
    k_end = tl.minimum(k_start + k_per, K)
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
    part_ptr, sw_ptr, out_ptr, HW, W_img, m, n_splits,
    part_sn, part_ss, sw_s, out_sb, out_sh, out_sw,
    RELU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[b, p] = Σ_t ω_t ReLU(Σ_split part[b·m + t, split, p]); grid (B, p tiles).

    Loads (path nodes, splits, pixels) tiles at once: the data is tiny and a loop of
    dependent small loads would make this kernel latency-bound.
    """
    b = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = ps < HW
    splits = tl.arange(0, BLOCK_S)
    s_mask = splits < n_splits
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
    out_off = (ps // W_img).to(tl.int64) * out_sh + (ps % W_img).to(tl.int64) * out_sw
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
        block_k = min(_pow2(K), 64)
        block_p = max(1, min(_pow2(HW), budget // block_k))
    else:
        block_p = min(_pow2(HW), _COMBINE_MAX_PLANE)
        block_k = max(1, min(_pow2(K), budget // block_p, 256))
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
    tensors = [A] + [t for t in (gradients, baseline_features) if t is not None]
    merged = all(_pixel_stride(t) is not None for t in tensors)

    def pix(t):  # (s_h, s_w) as the kernels want them
        return (t.stride(-2), _pixel_stride(t)) if merged else (t.stride(-2), t.stride(-1))

    channels_inner = A.stride(1) == 1 and K > 1 and HW > 1
    block_k, block_p = _combine_tiles(K, HW, channels_inner)
    tiles = triton.cdiv(HW, block_p)
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
                wp = min(_pow2(HW), 256)
                wk = min(_pow2(K), 2048 // wp)
            _launcher(_combine_weights_kernel)[(N, triton.cdiv(K, wk))](
                A, gradients, cw, K, HW, w,
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
    splits = min(k_blocks, max(1, triton.cdiv(_TARGET_PROGRAMS, tiles * N)), 256)
    k_per = triton.cdiv(k_blocks, splits) * block_k
    splits = triton.cdiv(K, k_per)
    part = torch.empty((N, splits, HW), dtype=torch.float32, device=A.device)
    _launcher(_combine_partial_kernel)[(tiles, N, splits)](
        A, G, cw, base, part,
        K, HW, w, m, k_per,
        A.stride(0), A.stride(1), *pix(A),
        G.stride(0), G.stride(1), *pix(G),
        cw.stride(0), cw.stride(1),
        base_sb, base.stride(-3), *pix(base),
        part.stride(0), part.stride(1),
        WEIGHT_MODE=mode, FUSED_WEIGHTS=fused, HAS_BASE=baseline_features is not None,
        HW_MERGED=merged, BLOCK_K=block_k, BLOCK_P=block_p,
        num_warps=8 if block_k * block_p >= 4096 else 4,
    )
    block_s = _pow2(splits)
    block_f = max(1, min(_pow2(HW), 128, 4096 // block_s))
    block_t = max(1, min(_pow2(m), 4096 // (block_s * block_f)))
    _launcher(_combine_finish_kernel)[(B, triton.cdiv(HW, block_f))](
        part, step_weights, out, HW, w, m, splits,
        part.stride(0), part.stride(1), step_weights.stride(0), out.stride(0), out.stride(1), out.stride(2),
        RELU=relu, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_P=block_f, num_warps=4,
    )


# --------------------------------------------------------------------------------------------
# upsample
# --------------------------------------------------------------------------------------------


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
    maps_ptr, out_ptr, h, w, H_out, W_out, scale_h, scale_w, tiles_per,
    m_sb, m_sh, m_sw, o_sb, o_sh, o_sw,
    NORMALIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[b] = bilinear(maps[b]) (then min-max scaled if NORMALIZE); grid (B, tile chunks)."""
    b = tl.program_id(0).to(tl.int64)
    HW_out = H_out * W_out
    tile_start = tl.program_id(1) * tiles_per
    tile_end = tl.minimum(tile_start + tiles_per, tl.cdiv(HW_out, BLOCK))
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
    BLOCK = min(4096 if normalize else 1024, _pow2(H * W))
    tiles = triton.cdiv(H * W, BLOCK)
    # Normalising needs a whole map's extremes: one program per map; else one per tile.
    tiles_per = tiles if normalize else 1
    _launcher(_upsample_kernel)[(B, triton.cdiv(tiles, tiles_per))](
        maps, out, h, w, H, W, float(h) / float(H), float(w) / float(W), tiles_per,
        maps.stride(0), maps.stride(1), maps.stride(2), out.stride(0), out.stride(1), out.stride(2),
        NORMALIZE=normalize, BLOCK=BLOCK, num_warps=16 if BLOCK >= 4096 else 4,
    )


#: True when these kernels were built under TRITON_INTERPRET=1 (they then take CPU tensors).
INTERPRETED = not isinstance(_path_images_kernel, triton.runtime.jit.JITFunction)


# --------------------------------------------------------------------------------------------
# registration and eager entry point
# --------------------------------------------------------------------------------------------

path_images = triton_op("igcam_fast_triton::path_images", mutates_args={"out"})(_path_images)
combine = triton_op("igcam_fast_triton::combine", mutates_args={"out"})(_combine)
upsample = triton_op("igcam_fast_triton::upsample", mutates_args={"out"})(_upsample)

_HOST = {"path_images": _path_images, "combine": _combine, "upsample": _upsample}
_OPS = {"path_images": path_images, "combine": combine, "upsample": upsample}


def _plain_eager(args) -> bool:
    """No tracing, no modes, plain tensors: nothing would see the op, so skip the dispatcher."""
    return (not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor)))


def run(name: str, *args) -> None:
    """Run op ``name`` (out= form): straight to the host code in plain eager mode (the custom-op
    dispatcher costs tens of microseconds a call, as much as a small kernel), else through
    ``torch.ops.igcam_fast_triton.<name>`` so that torch.compile, export and modes see it."""
    if _plain_eager(args):
        token = _DIRECT.set(True)
        try:
            _HOST[name](*args)
        finally:
            _DIRECT.reset(token)
    else:
        _OPS[name](*args)
