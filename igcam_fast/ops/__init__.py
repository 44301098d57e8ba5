"""The three fused ops of the Integrated Grad-CAM pipeline, dispatched to a backend.

    path_images  x (B, C, H, W), baseline (C, H, W) | (B, C, H, W), alphas (m,)
                 -> (B·m, C, H, W) path images, row b·m + t, optionally normalised
    combine      activations (B·m, K, h, w), gradients (B·m, K, h, w) | weights (B·m, K),
                 baseline features (K, h, w) | (B, K, h, w) | None, step weights (m,)
                 -> (B, h, w) map
    upsample     (B, h, w) -> (B, H, W) bilinear (align_corners=False), optionally min-max scaled

Backends: ``cuda`` and ``cpu`` (the compiled extension), ``triton`` (GPU; also runs under
TRITON_INTERPRET=1) and ``torch`` (eager PyTorch). :func:`explain_backends` tells which one runs.

Every op validates its arguments here, names the bad one, and allocates its output. With
:func:`poison_outputs` active (or IGCAM_FAST_POISON_OUTPUTS=1) outputs are filled with NaN before
the kernel runs, so an element a kernel forgets to write shows up in any comparison.
"""

from __future__ import annotations

import contextlib
import os

import torch

from .backends import (BACKEND_ENV, Backend, backend_names, choose_backend, explain_backends,
                       get_backend, minmax_scale, register_backend)

__all__ = [
    "path_images", "combine", "upsample", "poison_outputs", "choose_backend", "explain_backends",
    "get_backend", "backend_names", "register_backend", "minmax_scale", "Backend", "BACKEND_ENV", "WEIGHT_MODES",
]

#: combine's ways of turning gradients into channel weights.
WEIGHT_MODES = {"gradcam": 0, "gradcampp": 1}

_POISON_ENV = "IGCAM_FAST_POISON_OUTPUTS"
_poison_depth = 0


@contextlib.contextmanager
def poison_outputs():
    """Fill every output these ops allocate with NaN before the kernel writes it (for tests)."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1


def _allocate(shape, dtype, device, memory_format=torch.contiguous_format):
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison_depth or os.environ.get(_POISON_ENV) == "1":
        out.fill_(float("nan"))
    return out


def _check_float(name, t, dims=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dims is not None and t.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")


def _check_device(device, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Maps are accumulated and returned in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def path_images(x, baseline, alphas, mean=None, std=None, *, dtype=None, channels_last=False,
                backend=None, out=None):
    """Build the batch of path images γ(α_t) = x' + α_t (x - x') for every image and node.

    Args:
        x: (B, C, H, W) inputs.
        baseline: (C, H, W) shared or (B, C, H, W) per-image baseline x', in the space of x.
        alphas: (m,) path nodes.
        mean, std: (C,) each, or None: when given, x and baseline are pixel-space and each path
            image is normalised, (γ - mean) / std, in the same pass.
        dtype: dtype of the result (default: x's), e.g. the autocast dtype of the forward.
        channels_last: lay the result out channels_last (what a channels_last forward wants).
        backend: force a backend by name.
        out: (B·m, C, H, W) tensor to write into instead of allocating.
    Returns:
        (B·m, C, H, W) tensor, row b·m + t.
    """
    _check_float("x", x, (4,))
    _check_float("baseline", baseline, (3, 4))
    _check_float("alphas", alphas, (1,))
    B, C, H, W = x.shape
    if tuple(baseline.shape[-3:]) != (C, H, W) or (baseline.dim() == 4 and baseline.shape[0] != B):
        raise ValueError(f"baseline must have shape {(C, H, W)} or {(B, C, H, W)} to match x, "
                         f"got {tuple(baseline.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must be given together (or neither)")
    if mean is not None:
        _check_float("mean", mean, (1,))
        _check_float("std", std, (1,))
        if mean.numel() != C or std.numel() != C:
            raise ValueError(f"mean and std must have {C} elements (one per channel), "
                             f"got {mean.numel()} and {std.numel()}")
    _check_device(x.device, baseline=baseline, alphas=alphas, mean=mean, std=std)
    m = alphas.shape[0]
    dtype = dtype or x.dtype
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if out is None:
        out = _allocate((B * m, C, H, W), dtype, x.device, memory_format)
    elif tuple(out.shape) != (B * m, C, H, W):
        raise ValueError(f"out must have shape {(B * m, C, H, W)}, got {tuple(out.shape)}")
    if out.numel():
        chosen = choose_backend(x.device, {x.dtype, baseline.dtype, out.dtype}, backend)
        chosen.path_images(x, baseline, alphas, mean, std, out)
    return out


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
        (B, h, w) float32 map (float64 for float64 activations).
    """
    _check_float("activations", activations, (4,))
    if (gradients is None) == (channel_weights is None):
        raise ValueError("give exactly one of gradients and channel_weights")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode must be one of {list(WEIGHT_MODES)}, got {weight_mode!r}")
    N, K, h, w = activations.shape
    if gradients is not None:
        _check_float("gradients", gradients, (4,))
        if gradients.shape != activations.shape:
            raise ValueError(f"gradients must have the shape of activations {tuple(activations.shape)}, "
                             f"got {tuple(gradients.shape)}")
        if gradients.dtype != activations.dtype:
            raise TypeError(f"gradients must have the dtype of activations ({activations.dtype}), "
                            f"got {gradients.dtype}")
    else:
        _check_float("channel_weights", channel_weights, (2,))
        if tuple(channel_weights.shape) != (N, K):
            raise ValueError(f"channel_weights must have shape {(N, K)}, got {tuple(channel_weights.shape)}")
        if weight_mode == "gradcampp":
            raise ValueError("weight_mode='gradcampp' needs gradients, not channel_weights")
    if step_weights is None:
        raise ValueError("step_weights is required: the (m,) quadrature weights")
    _check_float("step_weights", step_weights, (1,))
    m = step_weights.shape[0]
    if m == 0 or N % m:
        raise ValueError(f"the number of rows of activations ({N}) must be a multiple of "
                         f"len(step_weights) ({m})")
    B = N // m
    if baseline_features is not None:
        _check_float("baseline_features", baseline_features, (3, 4))
        if tuple(baseline_features.shape[-3:]) != (K, h, w) or (
                baseline_features.dim() == 4 and baseline_features.shape[0] != B):
            raise ValueError(f"baseline_features must have shape {(K, h, w)} or {(B, K, h, w)}, "
                             f"got {tuple(baseline_features.shape)}")
        if baseline_features.dtype != activations.dtype:
            raise TypeError(f"baseline_features must have the dtype of activations ({activations.dtype}), "
                            f"got {baseline_features.dtype}")
    _check_device(activations.device, gradients=gradients, channel_weights=channel_weights,
                  baseline_features=baseline_features, step_weights=step_weights)
    acc = accumulation_dtype(activations.dtype)
    if out is None:
        out = _allocate((B, h, w), acc, activations.device)
    elif tuple(out.shape) != (B, h, w) or out.dtype != acc:
        raise ValueError(f"out must be a {acc} tensor of shape {(B, h, w)}, got {out.dtype} {tuple(out.shape)}")
    if out.numel():
        dtypes = {activations.dtype} | ({channel_weights.dtype} if channel_weights is not None else set())
        chosen = choose_backend(activations.device, dtypes, backend)
        chosen.combine(activations, gradients, channel_weights, baseline_features, step_weights,
                       WEIGHT_MODES[weight_mode], bool(relu), out)
    return out


def upsample(maps, size, *, normalize=False, backend=None, out=None):
    """Bilinear upsampling (align_corners=False) of (B, h, w) maps to (B, H, W).

    normalize: scale each output map to [0, 1] as pytorch-grad-cam does,
    (v - min) / (1e-7 + max - min), in the same kernel.
    Returns a float32 tensor (float64 for float64 maps).
    """
    _check_float("maps", maps, (3,))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}")
    if maps.shape[1] < 1 or maps.shape[2] < 1:
        raise ValueError(f"maps must have a non-empty spatial extent, got shape {tuple(maps.shape)}")
    acc = accumulation_dtype(maps.dtype)
    shape = (maps.shape[0], *size)
    if out is None:
        out = _allocate(shape, acc, maps.device)
    elif tuple(out.shape) != shape or out.dtype != acc:
        raise ValueError(f"out must be a {acc} tensor of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    if out.numel():
        choose_backend(maps.device, {maps.dtype}, backend).upsample(maps, bool(normalize), out)
    return out


def _register_optional_backends() -> None:
    """The compiled and Triton backends register themselves on import; each one's absence is
    reported by its backend (``explain_backends``), and one failing does not hide the other."""
    import importlib

    for module in ("extension", "triton_backend"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ImportError as err:  # pragma: no cover - both modules ship with the package
            import warnings

            warnings.warn(f"igcam_fast.ops.{module} could not be imported: {err}", RuntimeWarning)


_register_optional_backends()
