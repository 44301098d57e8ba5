"""The ``torch`` backend: eager PyTorch, a chain of ordinary ops on any device.

This is the "eager chain" the fused kernels are measured against. It materialises the
(B·m, K, h, w) temporaries the kernels avoid, and computes in float32 (float64 for float64).
"""

from __future__ import annotations

import torch

from ..common import accumulation_dtype, minmax_scale
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    # Worst errors measured over the conformance cases (CPU): 8.2e-16 for float64, 1.0e-6 for
    # float32, float16 and bfloat16 inputs (exact in float32, computed in float32); about 3x above.
    tolerances = {torch.float64: 2e-15, torch.float32: 3e-6, torch.float16: 3e-6, torch.bfloat16: 3e-6}

    def path_images(self, x, baseline, alphas, mean, std, out):
        B, m = x.shape[0], alphas.shape[0]
        acc = accumulation_dtype(x.dtype)
        xb = x.to(acc)[:, None]
        base = baseline.to(acc)
        base = base[None, None] if base.dim() == 3 else base[:, None]
        images = base + alphas.to(acc)[None, :, None, None, None] * (xb - base)
        if mean is not None:
            images = (images - mean.to(acc)[:, None, None]) / std.to(acc)[:, None, None]
        out.copy_(images.reshape(B * m, *x.shape[1:]))

    def combine(self, activations, gradients, channel_weights, baseline_features, step_weights,
                weight_mode, relu, out):
        acc = out.dtype
        A = activations.to(acc)
        N, K, h, w = A.shape
        m = step_weights.shape[0]
        B = N // m
        if channel_weights is not None:
            weights = channel_weights.to(acc)
        elif weight_mode == 1:
            G = gradients.to(acc)
            g2 = G * G
            a = g2 / (2 * g2 + A.sum(dim=(2, 3))[:, :, None, None] * g2 * G + 1e-6)
            a = torch.where(G != 0, a, torch.zeros_like(a))
            weights = (a * G.clamp(min=0)).sum(dim=(2, 3))
        else:
            weights = gradients.to(acc).mean(dim=(2, 3))
        if baseline_features is not None:
            base = baseline_features.to(acc)
            if base.dim() == 4:  # one per image: repeat over that image's m path points
                base = base.repeat_interleave(m, dim=0)
            A = A - base
        s = torch.einsum("nk,nkhw->nhw", weights, A)
        if relu:
            s = s.clamp(min=0)
        out.copy_(torch.einsum("t,bthw->bhw", step_weights.to(acc), s.reshape(B, m, h, w)))

    def upsample(self, maps, normalize, out):
        acc = out.dtype
        up = torch.nn.functional.interpolate(maps.to(acc)[:, None], size=out.shape[1:], mode="bilinear",
                                             align_corners=False)[:, 0]
        out.copy_(minmax_scale(up) if normalize else up)
