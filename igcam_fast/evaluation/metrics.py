"""Localisation and faithfulness metrics of saliency maps, batched on the inputs' device.

Every function takes N explained (image, class) pairs at once: maps ``(N, H, W)`` (float, at input
resolution) and masks ``(N, H, W)`` (bool: the union of the class's ground-truth boxes). Nothing
loops over pixels or images in Python and nothing leaves the device; scores come back as ``(N,)``
float64 tensors on the maps' device (pass them through ``.mean()`` or :func:`summarize`).

Metrics
    ebpg              energy-based pointing game        Σ(L ⊙ M) / Σ L              (higher better)
    bbox_score        size-adaptive bounding-box metric |top-N(L) ∩ M| / N, N = Σ M (higher better)
    pointing_game     the map's maximum within ``tolerance`` pixels of M (TorchRay)  (higher better)
    drop_increase     Drop% / Increase% after keeping only the top 15 % of the map
                      ("top15", the authors' protocol) or multiplying by the min-max normalised
                      map ("soft", the older Grad-CAM++ protocol)               (Drop lower, Inc. higher)
    deletion_insertion  area under the confidence curve when pixels are removed (deletion, lower
                      better) or inserted (insertion, higher better) in the map's order (RISE)

Edge cases (the same everywhere):
    * Maps are non-negative by definition; a signed map is read as its positive part
      (negative values are clamped to 0 before scoring).
    * NaN or ±inf anywhere in a map makes that pair's score NaN (never a silent number). Callers
      that must not lose pairs should check with :func:`count_invalid` (the evaluator refuses them).
    * Empty mask (no ground-truth pixel): EBPG, Bbox and the pointing game are NaN for that pair
      (as Quantus' RelevanceMassAccuracy does for EBPG).
    * All-zero map (a method that found no positive evidence): it expresses no preference, so it
      is scored as a uniform map would be: EBPG = Bbox = Σ M / (H·W), the chance level
      (``zero_map="nan"`` gives NaN instead); the pointing game reads it as "all pixels tie".
    * Ties at the top-N threshold of Bbox: scored by the expected value under uniformly random
      tie-breaking (pixels strictly above the threshold count fully, the k still needed are taken
      from the tied ones in proportion to how many tied pixels lie in M). Deterministic, and no
      bias towards any position.
    * Ties at the maximum (pointing game): the first maximum in raster order (TorchRay's choice).
    * Ties at the 15 % threshold and in the deletion/insertion order: exactly k pixels are kept,
      ties broken in raster order (a stable sort) so the mask has exactly the stated size.
    * A pair whose confidence on the full image is 0 (float underflow) gets Drop% = NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "ebpg", "bbox_score", "pointing_game", "top_fraction_mask", "soft_mask", "blackout", "confidence",
    "drop_increase", "drop_increase_from_confidences", "deletion_insertion", "curve_auc", "count_invalid", "summarize",
]


# ---- helpers ------------------------------------------------------------------------------------

def _check_pair(maps: torch.Tensor, masks: torch.Tensor | None = None) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a (N, H, W) tensor, got {shape}")
    if not maps.is_floating_point():
        raise TypeError(f"maps must be floating point, got {maps.dtype}")
    if masks is not None:
        if not isinstance(masks, torch.Tensor) or masks.shape != maps.shape:
            shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(f"masks must have the maps' shape {tuple(maps.shape)}, got {shape}")
        if masks.device != maps.device:
            raise ValueError(f"maps are on {maps.device} but masks on {masks.device}")


def _prepare(maps: torch.Tensor):
    """(clean float64 maps clamped at 0 with non-finite set to 0, (N,) bool: the map was non-finite)."""
    flat = maps.reshape(maps.shape[0], -1)
    invalid = ~torch.isfinite(flat).all(dim=1)
    clean = torch.nan_to_num(flat.double(), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0)
    return clean, invalid


def _nan_where(score: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, torch.full_like(score, math.nan), score)


def count_invalid(maps: torch.Tensor) -> int:
    """How many of the (N, H, W) maps contain NaN or ±inf."""
    return int((~torch.isfinite(maps.reshape(maps.shape[0], -1)).all(dim=1)).sum())


def count_zero(maps: torch.Tensor) -> int:
    """How many of the (N, H, W) maps have no positive value (all-zero after the ReLU)."""
    return int((maps.reshape(maps.shape[0], -1).clamp(min=0).amax(dim=1) <= 0).sum())


# ---- localisation --------------------------------------------------------------------------------

def ebpg(maps: torch.Tensor, masks: torch.Tensor, *, zero_map: str = "uniform") -> torch.Tensor:
    """Energy-based pointing game Σ(L ⊙ M) / Σ L per pair, in [0, 1].

    Identical to Quantus' RelevanceMassAccuracy. zero_map: "uniform" (an all-zero map scores
    Σ M / (H·W), chance) or "nan".
    """
    _check_pair(maps, masks)
    if zero_map not in ("uniform", "nan"):
        raise ValueError(f"zero_map must be 'uniform' or 'nan', got {zero_map!r}")
    L, invalid = _prepare(maps)
    M = masks.reshape(masks.shape[0], -1)
    total = L.sum(dim=1)
    inside = (L * M).sum(dim=1)
    area = M.sum(dim=1)
    zero = total <= 0
    fallback = area.double() / M.shape[1] if zero_map == "uniform" else torch.full_like(total, math.nan)
    score = torch.where(zero, fallback, inside / torch.where(zero, torch.ones_like(total), total))
    return _nan_where(score, invalid | (area == 0))


def bbox_score(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Size-adaptive bounding-box metric: N = Σ M, |top-N pixels of L ∩ M| / N, in [0, 1].

    Ties at the N-th value are scored by their expected share (see the module docstring); an
    all-zero map therefore scores Σ M / (H·W), chance.
    """
    _check_pair(maps, masks)
    L, invalid = _prepare(maps)
    M = masks.reshape(masks.shape[0], -1)
    n = M.sum(dim=1)  # (N,) int64
    sorted_desc = L.sort(dim=1, descending=True).values
    idx = (n - 1).clamp(min=0)[:, None]
    threshold = sorted_desc.gather(1, idx)  # the N-th largest value
    above = L > threshold
    tied = L == threshold
    n_above = above.sum(dim=1)
    in_above = (above & M).sum(dim=1)
    n_tied = tied.sum(dim=1)
    in_tied = (tied & M).sum(dim=1)
    still = (n - n_above).double()
    expected = in_above.double() + still * in_tied.double() / n_tied.clamp(min=1).double()
    score = expected / n.clamp(min=1).double()
    return _nan_where(score, invalid | (n == 0))


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 15) -> torch.Tensor:
    """1.0 where the map's maximum lies within ``tolerance`` pixels (Euclidean) of the mask, else 0.0.

    TorchRay's protocol (tolerance 15 px at 224×224). The maximum's ties go to the first in raster
    order. NaN for an empty mask or a non-finite map.
    """
    _check_pair(maps, masks)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    L, invalid = _prepare(maps)
    N, H, W = maps.shape
    M = masks.reshape(N, -1)
    flat_index = L.argmax(dim=1)  # the first maximum
    rows, cols = flat_index // W, flat_index % W
    ys = torch.arange(H, device=maps.device, dtype=torch.float64)
    xs = torch.arange(W, device=maps.device, dtype=torch.float64)
    d2 = (ys[None, :, None] - rows[:, None, None].double()) ** 2 + (xs[None, None, :] - cols[:, None, None].double()) ** 2
    d2 = d2.reshape(N, -1).masked_fill(~M, math.inf)
    hit = (d2.amin(dim=1) <= float(tolerance) ** 2).double()
    return _nan_where(hit, invalid | (M.sum(dim=1) == 0))


# ---- masking the input ----------------------------------------------------------------------------

def top_fraction_mask(maps: torch.Tensor, fraction: float = 0.15) -> torch.Tensor:
    """(N, H, W) float mask with exactly k = max(1, round(fraction·H·W)) ones at each map's highest
    pixels (ties broken in raster order). Non-finite maps get an all-zero mask (score them NaN)."""
    _check_pair(maps)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    L, _ = _prepare(maps)
    N, HW = L.shape
    k = max(1, int(round(fraction * HW)))
    order = L.sort(dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros(N, HW, dtype=maps.dtype, device=maps.device)
    keep.scatter_(1, order, 1.0)
    return keep.reshape(maps.shape)


def soft_mask(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 1] (the Grad-CAM++ protocol); an all-equal map gives zeros."""
    _check_pair(maps)
    L, _ = _prepare(maps)
    lo, hi = L.amin(dim=1, keepdim=True), L.amax(dim=1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (L - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                         torch.zeros_like(L))
    return scaled.to(maps.dtype).reshape(maps.shape)


def blackout(x: torch.Tensor, keep: torch.Tensor, mean, std) -> torch.Tensor:
    """x ⊙ keep in *pixel* space, for x in model-input space (normalised with mean/std).

    x: (N, C, H, W); keep: (N, H, W) in [0, 1]. Pixels with keep = 0 become black pixels, i.e.
    (0 - mean) / std in model-input space; soft values blend towards black.
    """
    black = _black(x, mean, std)
    k = keep[:, None].to(x.dtype)
    return x * k + black * (1 - k)


def _black(x, mean, std):
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    if mean.numel() not in (1, x.shape[1]) or std.numel() not in (1, x.shape[1]):
        raise ValueError(f"mean/std must have 1 or {x.shape[1]} entries")
    return ((0 - mean) / std).to(x.device, x.dtype).reshape(1, -1, 1, 1)


def confidence(logits: torch.Tensor, classes: torch.Tensor, kind: str = "sigmoid") -> torch.Tensor:
    """Ψ: the class confidence of each row, float64: sigmoid (multi-label) or softmax (single-label)."""
    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"confidence must be 'sigmoid' or 'softmax', got {kind!r}")
    logits = logits.double()
    classes = torch.as_tensor(classes, device=logits.device).long()
    if kind == "sigmoid":
        return torch.sigmoid(logits.gather(1, classes[:, None])[:, 0])
    return logits.softmax(dim=1).gather(1, classes[:, None])[:, 0]


def _run_rows(model: Callable, make_rows: Callable[[slice], torch.Tensor], n: int, batch_size: int,
              classes: torch.Tensor, kind: str) -> torch.Tensor:
    """Ψ for n rows built chunk by chunk by make_rows(slice); (n,) float64."""
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            s = slice(start, min(n, start + batch_size))
            logits = model(make_rows(s))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != s.stop - s.start:
                raise ValueError("the model must return (N, classes) scores")
            out.append(confidence(logits, classes[s], kind))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def drop_increase_from_confidences(base: torch.Tensor, masked: torch.Tensor):
    """(Drop% per pair, Increase per pair as 0/1) from Ψ(x) and Ψ(x ⊙ T).

    Drop% = max(0, Ψ(x) − Ψ(x⊙T)) / Ψ(x) · 100; Increase = [Ψ(x⊙T) > Ψ(x)]. NaN where either is NaN
    or Ψ(x) = 0.
    """
    base, masked = base.double(), masked.double()
    bad = torch.isnan(base) | torch.isnan(masked) | (base <= 0)
    drop = (base - masked).clamp(min=0) / torch.where(base > 0, base, torch.ones_like(base)) * 100
    increase = (masked > base).double()
    return _nan_where(drop, bad), _nan_where(increase, bad)


def drop_increase(model: Callable, x: torch.Tensor, maps: torch.Tensor, classes, *, mean, std,
                  protocol: str = "top15", fraction: float = 0.15, kind: str = "sigmoid",
                  image_index=None, base_confidence: torch.Tensor | None = None, batch_size: int = 64) -> dict:
    """Drop% and Increase% of N pairs, running the model on the masked images.

    x: (B, C, H, W) images in model-input space; maps: (N, H, W); classes: (N,) the explained
    class of each pair; image_index: (N,) which image of x each pair explains (default: pair i is
    image i). protocol: "top15" (keep the top ``fraction`` pixels as a binary mask, black out the
    rest in pixel space: the authors' protocol) or "soft" (multiply the pixels by the min-max
    normalised map: the older Grad-CAM++ protocol). kind: "sigmoid" or "softmax" confidence.
    base_confidence: Ψ(x) of each pair when already known (else one more forward).

    Returns dict(drop=(N,) percent, increase=(N,) 0/1, base=(N,), masked=(N,)), float64.
    """
    _check_pair(maps)
    if protocol not in ("top15", "soft"):
        raise ValueError(f"protocol must be 'top15' or 'soft', got {protocol!r}")
    if x.dim() != 4 or x.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"x must be (B, C, H, W) with H, W = {tuple(maps.shape[-2:])}, got {tuple(x.shape)}")
    N = maps.shape[0]
    index = (torch.arange(N, device=x.device) if image_index is None
             else torch.as_tensor(image_index, device=x.device).long())
    classes = torch.as_tensor(classes, device=x.device).long()
    if index.shape != (N,) or classes.shape != (N,):
        raise ValueError(f"classes and image_index must have shape ({N},)")
    invalid = ~torch.isfinite(maps.reshape(N, -1)).all(dim=1)
    keep = top_fraction_mask(maps, fraction) if protocol == "top15" else soft_mask(maps)
    if base_confidence is None:
        base_confidence = _run_rows(model, lambda s: x[index[s]], N, batch_size, classes, kind)
    masked = _run_rows(model, lambda s: blackout(x[index[s]], keep[s], mean, std), N, batch_size, classes, kind)
    masked = _nan_where(masked, invalid.to(masked.device))
    drop, increase = drop_increase_from_confidences(base_confidence.to(masked.device), masked)
    return dict(drop=drop, increase=increase, base=base_confidence.double(), masked=masked)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    C = x.shape[1]
    pad = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(pad, g.reshape(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(y, g.reshape(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def deletion_insertion(model: Callable, x: torch.Tensor, maps: torch.Tensor, classes, *, mean, std,
                       mode: str = "deletion", steps: int = 16, substrate: str = "auto", blur_sigma: float = 5.0,
                       kind: str = "softmax", image_index=None, batch_size: int = 64) -> dict:
    """Deletion / insertion AUC (Petsiuk et al., RISE) of N pairs.

    Pixels are ranked by the map (highest first, ties in raster order); at step s = 0..steps the
    top round(s/steps·H·W) pixels are replaced by the substrate (deletion) or copied from x onto
    the substrate (insertion), and Ψ is measured. AUC: trapezoid rule over the removed/inserted
    fraction in [0, 1]. substrate: "black" (black pixels), "blur" (x blurred with a Gaussian of
    ``blur_sigma`` pixels), or "auto" (black for deletion, blur for insertion, as RISE).

    Returns dict(auc=(N,), curves=(N, steps + 1)), float64; NaN rows for non-finite maps.
    """
    _check_pair(maps)
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if substrate == "auto":
        substrate = "black" if mode == "deletion" else "blur"
    if substrate not in ("black", "blur"):
        raise ValueError(f"substrate must be 'black', 'blur' or 'auto', got {substrate!r}")
    N, H, W = maps.shape
    index = (torch.arange(N, device=x.device) if image_index is None
             else torch.as_tensor(image_index, device=x.device).long())
    classes = torch.as_tensor(classes, device=x.device).long()
    L, invalid = _prepare(maps)
    order = L.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H * W, device=order.device).expand(N, -1).contiguous())
    counts = torch.round(torch.arange(steps + 1, device=x.device, dtype=torch.float64) / steps * H * W).long()
    base_images = _black(x, mean, std).expand_as(x) if substrate == "black" else _gaussian_blur(x, blur_sigma)
    S = steps + 1

    def make_rows(s: slice):
        rows = torch.arange(s.start, s.stop, device=x.device)
        pair, step = rows // S, rows % S
        chosen = (rank[pair] < counts[step][:, None]).reshape(-1, 1, H, W).to(x.dtype)  # pixels switched
        img, sub = x[index[pair]], base_images[index[pair]]
        if mode == "deletion":
            return img * (1 - chosen) + sub * chosen
        return sub * (1 - chosen) + img * chosen

    scores = _run_rows(model, make_rows, N * S, batch_size, classes.repeat_interleave(S), kind).reshape(N, S)
    auc = _nan_where(curve_auc(scores), invalid.to(scores.device))
    return dict(auc=auc, curves=scores)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under (N, S) curves sampled at S equally spaced points of [0, 1] (S >= 2): the
    trapezoid rule, (Σ_s c_s − (c_0 + c_{S−1}) / 2) / (S − 1), float64 (N,). A constant curve c
    has area c; the straight line from 1 to 0 has area 1/2."""
    if curves.dim() != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be (N, S) with S >= 2 samples, got {tuple(curves.shape)}")
    c = curves.double()
    return (c.sum(dim=1) - 0.5 * (c[:, 0] + c[:, -1])) / (c.shape[1] - 1)


def summarize(values: torch.Tensor, scale: float = 1.0) -> dict:
    """mean (over finite values) × scale, the number of values and of NaNs."""
    v = values.double().flatten()
    finite = v[~torch.isnan(v)]
    return dict(mean=float(finite.mean() * scale) if finite.numel() else math.nan, n=int(v.numel()),
                nan=int(v.numel() - finite.numel()))
