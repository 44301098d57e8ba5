"""Quantus: an ``explain_func`` computing Integrated Grad-CAM (or Grad-CAM, Grad-CAM++) maps.

The switch::

    from igcam_fast.compat.quantus import explain_func
    metric = quantus.RelevanceMassAccuracy()
    scores = metric(model=model, x_batch=x, y_batch=y, s_batch=masks,
                    explain_func=explain_func, explain_func_kwargs={"layer": "layer4"})

or ``explain_func=make_explain_func("layer4", steps=32)`` with no kwargs. Quantus calls it as
``explain_func(model=..., inputs=np.ndarray (N, C, H, W), targets=np.ndarray (N,), **kwargs)`` and
gets ``np.float32 (N, 1, H, W)`` maps at the input's resolution, non-negative (ReLU'd per
path point) and unscaled unless ``normalize=True`` (Quantus normalises itself by default).
The engine's defaults apply: the "black" baseline assumes ImageNet mean/std normalised inputs;
pass ``baseline="zeros"`` (or ``mean=``/``std=``) in the kwargs for other models.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from igcam_fast.core.engine import CamEngine

__all__ = ["explain_func", "make_explain_func"]


def explain_func(model: nn.Module, inputs, targets, *, layer=None, method: str = "igcam", device=None,
                 normalize: bool = False, batch_rows=None, **options) -> np.ndarray:
    """Quantus-style explanation function; returns ``np.float32 (N, 1, H, W)``.

    Args:
        model: the torch model (Quantus passes the raw module), in eval mode.
        inputs: (N, C, H, W) array (or tensor) in the model's input space.
        targets: (N,) class indices (an int applies to every example; None: the argmax).
        layer: the target layer, a dotted name ("layer4") or a module; required.
        method: "igcam", "gradcam" or "gradcampp".
        device: where to compute (Quantus passes its ``device``); default: the model's device.
        normalize: min-max scale each map to [0, 1].
        batch_rows: path images per forward pass.
        **options: further :class:`igcam_fast.CamEngine` options (steps, rule, baseline, ...).
            Quantus' own keys in explain_func_kwargs that are not engine options are not accepted.
    """
    if layer is None:
        raise ValueError("explain_func needs the target layer: explain_func_kwargs={'layer': 'layer4'} "
                         "(a dotted module name or the module itself), or use make_explain_func(layer)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    if isinstance(inputs, torch.Tensor):
        x = inputs.detach().to(device)
    else:
        x = torch.as_tensor(np.asarray(inputs), device=device)
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype == torch.float64:
        param = next(model.parameters(), None)
        x = x.to(param.dtype if param is not None else torch.float32)
    if x.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W) images (channel first), got shape {tuple(x.shape)}")
    if targets is not None and not isinstance(targets, (int, np.integer)):
        targets = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
        targets = targets.reshape(-1).to(torch.int64)
    elif targets is not None:
        targets = int(targets)
    with CamEngine(model, layer, method=method, normalize=normalize, batch_rows=batch_rows, **options) as engine:
        maps = engine(x, targets)
    return maps[:, None].to(torch.float32).cpu().numpy()


def make_explain_func(layer, **options):
    """An explain_func bound to ``layer`` and engine options (for metrics without kwargs)."""

    def bound(model, inputs, targets, **kwargs):
        return explain_func(model, inputs, targets, **{"layer": layer, **options, **kwargs})

    bound.__name__ = "igcam_fast_explain_func"
    return bound
