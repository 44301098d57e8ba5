"""The truth: plain, loop-per-step, float64-capable transcriptions of the formulas.

Nothing here is optimised. The engine, every backend of every op and the benchmarks are checked
against these functions; keep them short and literal so that a reader can compare them with
the paper line by line (notation of the paper, see README "The method").

Methods:
    reference_integrated_gradcam   L^c = Σ_t ω_t ReLU(Σ_k w_k(α_t) (A_k(α_t) - A'_k))
    reference_gradcam              ReLU(Σ_k mean_ij(G_k) A_k)
    reference_gradcampp            Grad-CAM++ with the exponential-score closed form
Ops (what the fused kernels compute):
    reference_path_images, reference_combine, reference_upsample
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from igcam_fast.core.quadrature import path_nodes

GRADCAMPP_EPS = 1e-6  # as pytorch-grad-cam's GradCAMPlusPlus


# --------------------------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------------------------


def reference_path_images(x, baseline, alphas, mean=None, std=None):
    """(B, C, H, W), (C, H, W) | (B, C, H, W), (m,) -> (B·m, C, H, W) in float64.

    Row b·m + t is baseline + alphas[t] · (x[b] - baseline), then (· - mean) / std per channel
    when mean and std are given (pixel-space input normalised on the fly).
    """
    x = x.double()
    baseline = baseline.double()
    rows = []
    for b in range(x.shape[0]):
        base = baseline if baseline.dim() == 3 else baseline[b]
        for a in alphas.double().tolist():
            image = base + a * (x[b] - base)
            if mean is not None:
                image = (image - mean.double()[:, None, None]) / std.double()[:, None, None]
            rows.append(image)
    return torch.stack(rows)


def gradcampp_channel_weights(activations, gradients):
    """Grad-CAM++ weights (K,) of one row: (K, h, w), (K, h, w) -> (K,)."""
    g2 = gradients**2
    g3 = g2 * gradients
    sum_a = activations.sum(dim=(1, 2))
    a = g2 / (2 * g2 + sum_a[:, None, None] * g3 + GRADCAMPP_EPS)
    a = torch.where(gradients != 0, a, torch.zeros_like(a))
    return (a * gradients.clamp(min=0)).sum(dim=(1, 2))


def reference_combine(
    activations,
    gradients=None,
    channel_weights=None,
    baseline_features=None,
    step_weights=None,
    weight_mode: str = "gradcam",
    relu: bool = True,
):
    """(B·m, K, h, w) activations and gradients (or (B·m, K) weights) -> (B, h, w) in float64.

    For row n = b·m + t:  w = mean_ij G[n] (or Grad-CAM++ weights, or the given weights),
    s = Σ_k w_k (A[n,k] - A'[k]), ReLU if asked, and out[b] = Σ_t ω_t s.
    """
    A = activations.double()
    m = step_weights.numel()
    B = A.shape[0] // m
    out = torch.zeros(B, A.shape[2], A.shape[3], dtype=torch.float64)
    for b in range(B):
        for t in range(m):
            n = b * m + t
            if channel_weights is not None:
                w = channel_weights[n].double()
            elif weight_mode == "gradcampp":
                w = gradcampp_channel_weights(A[n], gradients[n].double())
            else:
                w = gradients[n].double().mean(dim=(1, 2))
            D = A[n]
            if baseline_features is not None:
                base = baseline_features if baseline_features.dim() == 3 else baseline_features[b]
                D = D - base.double()
            s = (w[:, None, None] * D).sum(dim=0)
            if relu:
                s = s.clamp(min=0)
            out[b] += float(step_weights[t]) * s
    return out


def reference_upsample(maps, size, normalize: bool = False):
    """(B, h, w) -> (B, H, W) bilinear, align_corners=False, in float64.

    normalize: per map (v - min) / (1e-7 + max - min), pytorch-grad-cam's scaling.
    """
    out = F.interpolate(maps.double()[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    if normalize:
        flat = out.flatten(1)
        lo = flat.min(dim=1).values[:, None, None]
        hi = flat.max(dim=1).values[:, None, None]
        out = (out - lo) / (1e-7 + (hi - lo))
    return out


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def _layer_and_gradient(model, layer, image, target: int):
    """One forward and backward of one image (C, H, W): the layer's output and its gradient."""
    captured = {}

    def hook(module, inputs, output):
        output.retain_grad()
        captured["A"] = output
        return output.clone()  # an in-place op after the layer must not change A

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            image = image[None].clone().requires_grad_(True)
            logits = model(image)
            logits[0, target].backward()
    finally:
        handle.remove()
    A = captured["A"]
    return A[0].detach(), A.grad[0].detach()


def _layer_output(model, layer, image):
    captured = {}

    def hook(module, inputs, output):
        captured["A"] = output.detach().clone()  # an in-place op after the layer must not change A

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        handle.remove()
    return captured["A"][0]


def _at_size(maps, output_size):
    """(B, h, w) maps bilinearly resized to output_size (align_corners=False), or as they are if None."""
    if output_size is None:
        return maps
    return F.interpolate(maps[:, None], size=tuple(output_size), mode="bilinear", align_corners=False)[:, 0]


def reference_integrated_gradcam(
    model,
    x,
    layer,
    targets: Sequence[int],
    *,
    steps: int = 50,
    rule: str = "right",
    baseline=None,
    subtract_baseline: bool = True,
    output_size=None,
):
    """Integrated Grad-CAM by the book, one image and one path point at a time.

    Args:
        model: the network, already in the dtype of x (use ``.double()`` for the truth).
        x: (B, C, H, W) input in model space.
        layer: the target module inside model.
        targets: one class index per image.
        steps, rule: the quadrature (see :mod:`igcam_fast.core.quadrature`).
        baseline: (C, H, W) or (B, C, H, W) image x'; None means zeros.
        subtract_baseline: subtract A' = A(x') (the paper) or not (the authors' demo).
        output_size: (H, W) to upsample to, or None for layer resolution.
    Returns:
        (B, h, w) or (B, H, W) maps.
    """
    alphas, weights = path_nodes(rule, steps)
    if baseline is None:
        baseline = torch.zeros_like(x[0])
    maps = []
    for b in range(x.shape[0]):
        base = baseline if baseline.dim() == 3 else baseline[b]
        A_base = _layer_output(model, layer, base) if subtract_baseline else None
        total = 0
        for alpha, omega in zip(alphas.tolist(), weights.tolist()):
            A, G = _layer_and_gradient(model, layer, base + alpha * (x[b] - base), targets[b])
            w = G.mean(dim=(1, 2))
            D = A - A_base if A_base is not None else A
            total = total + omega * (w[:, None, None] * D).sum(dim=0).clamp(min=0)
        maps.append(total)
    return _at_size(torch.stack(maps), output_size)


def reference_gradcam(model, x, layer, targets: Sequence[int], output_size=None):
    """Grad-CAM: ReLU(Σ_k mean_ij(∂y^c/∂A_k) A_k), one image at a time."""
    maps = []
    for b in range(x.shape[0]):
        A, G = _layer_and_gradient(model, layer, x[b], targets[b])
        maps.append((G.mean(dim=(1, 2))[:, None, None] * A).sum(dim=0).clamp(min=0))
    return _at_size(torch.stack(maps), output_size)


def reference_gradcampp(model, x, layer, targets: Sequence[int], output_size=None):
    """Grad-CAM++ (closed form of pytorch-grad-cam), one image at a time."""
    maps = []
    for b in range(x.shape[0]):
        A, G = _layer_and_gradient(model, layer, x[b], targets[b])
        w = gradcampp_channel_weights(A, G)
        maps.append((w[:, None, None] * A).sum(dim=0).clamp(min=0))
    return _at_size(torch.stack(maps), output_size)
