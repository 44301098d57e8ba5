"""``combine``: weighting, baseline subtraction, ReLU and the sum over path points, fused.

    activations (B·m, K, h, w), gradients (B·m, K, h, w) | channel weights (B·m, K),
    baseline features (K, h, w) | (B, K, h, w) | None, step weights (m,) -> (B, h, w) map

Here: the argument checks, the output allocation, the fake kernel of the compiled op
``igcam_fast::combine_out`` and the dispatch entry. Kernels: csrc/cpu/igcam_kernels.cpp,
csrc/cuda/igcam_kernels.cu, igcam_fast/ops/triton/combine.py, backends/eager.py.
"""

from __future__ import annotations

import torch

from .backends import OpCall, dispatch
from .backends.compiled import schemas_loaded
from .common import accumulation_dtype, allocate, check_float, check_out, check_same_device

NAME = "combine"

#: combine's ways of turning gradients into channel weights.
WEIGHT_MODES = {"gradcam": 0, "gradcampp": 1}


def combine(activations, gradients=None, channel_weights=None, baseline_features=None,
            step_weights=None, *, weight_mode="gradcam", relu=True, backend=None, out=None):
    """Fuse weighting, baseline subtraction, ReLU and the sum over path points into one map.

    For row n = b·m + t of the path batch:
        w[n, k] = mean_ij gradients[n, k]       (weight_mode="gradcam"; Grad-CAM++ for "gradcampp";
                                                  or channel_weights[n, k] when given)
        s[n]    = ReLU(Σ_k w[n, k] (activations[n, k] - baseline_features[k]))
        out[b]  = Σ_t step_weights[t] s[b·m + t]

    Args:
        activations: (B·m, K, h, w) target-layer activations A(α_t), contiguous or channels_last.
        gradients: (B·m, K, h, w) ∂y/∂A, same dtype as activations; or None with channel_weights.
        channel_weights: (B·m, K) precomputed weights (GAP + linear heads need no backward).
        baseline_features: (K, h, w) A' shared by all images, (B, K, h, w) per image, or None.
        step_weights: (m,) quadrature weights ω; m must divide B·m.
        weight_mode: "gradcam" or "gradcampp" (ignored when channel_weights is given).
        relu: apply the ReLU at each path point (the paper) or keep signed maps.
    Returns:
        (B, h, w) float32 map (float64 for float64 activations); zeros when K = 0.
    """
    check_float("activations", activations, (4,))
    if (gradients is None) == (channel_weights is None):
        raise ValueError("give exactly one of gradients and channel_weights")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode must be one of {list(WEIGHT_MODES)}, got {weight_mode!r}")
    N, K, h, w = activations.shape
    if gradients is not None:
        check_float("gradients", gradients, (4,))
        if gradients.shape != activations.shape:
            raise ValueError(f"gradients must have the shape of activations {tuple(activations.shape)}, "
                             f"got {tuple(gradients.shape)}")
        if gradients.dtype != activations.dtype:
            raise TypeError(f"gradients must have the dtype of activations ({activations.dtype}), "
                            f"got {gradients.dtype}")
    else:
        check_float("channel_weights", channel_weights, (2,))
        if tuple(channel_weights.shape) != (N, K):
            raise ValueError(f"channel_weights must have shape {(N, K)}, got {tuple(channel_weights.shape)}")
        if weight_mode == "gradcampp":
            raise ValueError("weight_mode='gradcampp' needs gradients, not channel_weights")
    if step_weights is None:
        raise ValueError("step_weights is required: the (m,) quadrature weights")
    check_float("step_weights", step_weights, (1,))
    m = step_weights.shape[0]
    if m == 0 or N % m:
        raise ValueError(f"the number of rows of activations ({N}) must be a multiple of "
                         f"len(step_weights) ({m})")
    B = N // m
    if baseline_features is not None:
        check_float("baseline_features", baseline_features, (3, 4))
        if tuple(baseline_features.shape[-3:]) != (K, h, w) or (
                baseline_features.dim() == 4 and baseline_features.shape[0] != B):
            raise ValueError(f"baseline_features must have shape {(K, h, w)} or {(B, K, h, w)}, "
                             f"got {tuple(baseline_features.shape)}")
        if baseline_features.dtype != activations.dtype:
            raise TypeError(f"baseline_features must have the dtype of activations ({activations.dtype}), "
                            f"got {baseline_features.dtype}")
    check_same_device(activations.device, gradients=gradients, channel_weights=channel_weights,
                      baseline_features=baseline_features, step_weights=step_weights)
    acc = accumulation_dtype(activations.dtype)
    if out is None:
        out = allocate((B, h, w), acc, activations.device)
    else:
        check_out(out, (B, h, w), acc)
        check_same_device(activations.device, out=out)
    if out.numel():
        dtypes = {activations.dtype} | ({channel_weights.dtype} if channel_weights is not None else set())
        tensors = {"activations": activations, "gradients": gradients, "channel_weights": channel_weights,
                   "baseline_features": baseline_features, "out": out}
        call = OpCall(NAME, activations.device, frozenset(dtypes),
                      {k: t for k, t in tensors.items() if t is not None})
        dispatch(call, backend, activations, gradients, channel_weights, baseline_features, step_weights,
                 WEIGHT_MODES[weight_mode], bool(relu), out)
    return out


if schemas_loaded():

    @torch.library.register_fake("igcam_fast::combine_out")
    def _combine_out_fake(activations, gradients, channel_weights, baseline_features, step_weights,
                          weight_mode, relu, out):
        N, K, h, w = activations.shape
        m = step_weights.shape[0]
        torch._check(out.dim() == 3 and out.shape[0] * m == N and out.shape[1:] == (h, w),
                     lambda: f"out must have shape (B, h, w), got {tuple(out.shape)}")
        return None
