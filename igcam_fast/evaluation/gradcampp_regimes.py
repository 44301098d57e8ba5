"""Where Grad-CAM++'s closed form lands on a global-average-pooling + linear head.

With y_c = Σ_k W_ck · mean(A_k) + b, every pixel of channel k has the gradient g_k = W_ck / (h·w),
and pytorch-grad-cam's weights (kept exactly by this library: the adapters depend on it) are

    w_k = Σ_ij relu(g_k) · g_k² / (2 g_k² + S_k g_k³ + ε) = h·w · relu(g_k) · g_k² / (2 g_k² + S_k g_k³ + ε),

S_k = Σ_ij A_k, ε = 1e-6. Three regimes, by the largest term of the denominator:
    "eps"    ε largest:       w_k ≈ h·w · relu(g_k)³ / ε — cubic in the weight, crushed towards 0
    "square" 2 g_k² largest:  w_k ≈ h·w · relu(g_k) / 2 = relu(W_ck) / 2 — Grad-CAM's weight, halved
    "cube"   S_k g_k³ largest: w_k ≈ h·w / S_k — independent of the class and of the weight's size
:func:`regimes` counts the channels with g_k > 0 in each and the share of the map's mass
Σ_k w_k S_k each carries.
"""

from __future__ import annotations

import torch

from igcam_fast.core.reference import GRADCAMPP_EPS

__all__ = ["regimes"]


def regimes(activations: torch.Tensor, class_weights: torch.Tensor, eps: float = GRADCAMPP_EPS) -> dict:
    """activations (K, h, w) of one image at the layer before GAP; class_weights (K,) the row W_c.

    Returns dict(channels={regime: count}, mass={regime: share of Σ_k w_k S_k}, weights=(K,) w_k),
    over the channels with a positive weight (the others get w_k = 0)."""
    if activations.dim() != 3 or class_weights.shape != activations.shape[:1]:
        raise ValueError(f"activations must be (K, h, w) and class_weights (K,), got {tuple(activations.shape)} "
                         f"and {tuple(class_weights.shape)}")
    A = activations.double()
    K, h, w = A.shape
    g = class_weights.double() / (h * w)
    S = A.sum(dim=(1, 2))
    terms = torch.stack([torch.full_like(g, eps), 2 * g ** 2, S * g ** 3])  # (3, K)
    largest = terms.argmax(dim=0)
    weights = h * w * g.clamp(min=0) * g ** 2 / terms.sum(dim=0)
    mass = weights * S
    total = mass.sum()
    positive = g > 0
    names = ("eps", "square", "cube")
    return dict(channels={n: int((positive & (largest == i)).sum()) for i, n in enumerate(names)},
                mass={n: float(mass[positive & (largest == i)].sum() / total) if total > 0 else float("nan")
                      for i, n in enumerate(names)},
                weights=weights)
