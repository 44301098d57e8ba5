"""The three fused ops of the Integrated Grad-CAM pipeline, dispatched to a backend.

    path_images  x (B, C, H, W), baseline (C, H, W) | (B, C, H, W), alphas (m,)
                 -> (B·m, C, H, W) path images, row b·m + t, optionally normalised
    combine      activations (B·m, K, h, w), gradients (B·m, K, h, w) | weights (B·m, K),
                 baseline features (K, h, w) | (B, K, h, w) | None, step weights (m,)
                 -> (B, h, w) map
    upsample     (B, h, w) -> (B, H, W) bilinear (align_corners=False), optionally min-max scaled

One module per op (its checks, allocation, fake kernel and dispatch entry); the backends
(``torch``, ``cpu``, ``cuda``, ``triton``) in :mod:`.backends`, the Triton kernels in
:mod:`.triton`, the list of ops with their references and test cases in :mod:`.registry`.
:func:`explain_backends` tells which backend runs each op; :func:`recording` records which ran.
docs/adding-an-op.md lists the places a new op touches.
"""

from __future__ import annotations

from .backends import (BACKEND_ENV, Backend, OpCall, backend_names, choose_backend, explain_backends,
                       get_backend, recording, register_backend, unregister_backend)
from .combine import WEIGHT_MODES, combine
from .common import accumulation_dtype, minmax_scale, poison_outputs
from .path_images import path_images
from .upsample import upsample

__all__ = [
    "path_images", "combine", "upsample", "poison_outputs", "choose_backend", "explain_backends",
    "get_backend", "backend_names", "register_backend", "unregister_backend", "recording", "minmax_scale",
    "accumulation_dtype", "Backend", "OpCall", "BACKEND_ENV", "WEIGHT_MODES",
]
