"""Quantus: an ``explain_func`` computing Integrated Grad-CAM (or Grad-CAM, Grad-CAM++) maps.

The switch::

    from igcam_fast.compat.quantus import explain_func
    metric = quantus.RelevanceMassAccuracy()
    scores = metric(model=model, x_batch=x, y_batch=y, s_batch=masks,
                    explain_func=explain_func, explain_func_kwargs={"layer": "layer4"})

or ``explain_func=make_explain_func("layer4", steps=32)`` with no kwargs. Quantus calls it as
``explain_func(model=..., inputs=np.ndarray (N, C, H, W), targets=np.ndarray (N,), **kwargs)``.

Two sets of conventions, chosen by ``method``:

* igcam_fast's names (``"igcam"`` — the default —, ``"gradcam"``, ``"gradcampp"``): maps
  ``np.float32 (N, 1, H, W)`` at the input's resolution (bilinear, as pytorch-grad-cam),
  non-negative (ReLU'd per path point) and unscaled unless ``normalize=True``.
* Quantus's names (``"LayerGradCam"``, ``"GradCAM"``, ``"GradCam"``: Grad-CAM;
  ``"GradCAMPlusPlus"``, ``"GradCAM++"``; ``"LayerIntegratedGradCam"``, ``"IntegratedGradCAM"``):
  what ``quantus.explain`` returns for them — captum's signed ``LayerGradCam`` at the layer's
  resolution, resized only with ``interpolate=(H, W)`` by captum's ``LayerAttribution.interpolate``
  (``interpolate_mode``, default "nearest"), then summed over ``reduce_axes`` (default (1,)).

Quantus's keywords, with Quantus's meanings, in both: ``gc_layer`` (a module, a dotted name
``"layer4.1"`` or Quantus's expression form ``"model.layer4[-1]"``; also ``xai_lib_kwargs={"layer":
...}``), ``interpolate``, ``interpolate_mode``, ``softmax`` (Quantus's softmax wrapper of the
model), ``reduce_axes`` and ``keepdims``, ``xai_lib`` (only "captum", whose path this replaces),
``channel_first`` (False: inputs (N, H, W, C), maps returned channel-last), ``abs``, ``normalise``
(Quantus's ``normalise_by_max``), ``device`` (the model and the inputs are moved there, as
Quantus's own explain does). As Quantus's explain, it puts the model in eval mode. Unknown keywords raise ``TypeError``
with the list of known ones.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch
from torch import nn

from igcam_fast.core.config import CamConfig
from igcam_fast.core.engine import CamEngine
from igcam_fast.core.engine import resolve_layer as engine_resolve_layer

__all__ = ["explain_func", "make_explain_func", "QUANTUS_METHODS"]

#: Quantus's method names -> the engine's method, with Quantus's conventions.
QUANTUS_METHODS = {
    "LayerGradCam": "gradcam", "GradCAM": "gradcam", "GradCam": "gradcam",
    "GradCAMPlusPlus": "gradcampp", "GradCAM++": "gradcampp",
    "LayerIntegratedGradCam": "igcam", "IntegratedGradCAM": "igcam", "IntegratedGradCam": "igcam",
}
_OWN_METHODS = ("igcam", "gradcam", "gradcampp")

#: Quantus's explain keywords handled here (besides model/inputs/targets).
_QUANTUS_KEYWORDS = ("gc_layer", "xai_lib_kwargs", "interpolate", "interpolate_mode", "softmax", "reduce_axes",
                     "keepdims", "xai_lib", "channel_first", "abs", "normalise", "device")
_OWN_KEYWORDS = ("layer", "method", "normalize", "batch_rows")
_ENGINE_KEYWORDS = tuple(f.name for f in dataclasses.fields(CamConfig)
                         if f.name not in ("method", "normalize", "batch_rows", "output_size"))
KNOWN_KEYWORDS = tuple(sorted(set(_QUANTUS_KEYWORDS + _OWN_KEYWORDS + _ENGINE_KEYWORDS)))

_EXPRESSION_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(-?\d+)\]")


def resolve_layer(model: nn.Module, layer):
    """A module, a dotted module name ("layer4.1") or Quantus's expression form ("model.layer4[-1]")."""
    if not isinstance(layer, str) or not (layer.startswith("model.") or layer.startswith("model[") or "[" in layer):
        return layer
    text = layer if layer.startswith("model") else "model." + layer
    module, pos = model, len("model")
    for step in _EXPRESSION_STEP.finditer(text, pos):
        if step.start() != pos:
            break
        name, index = step.groups()
        try:
            module = getattr(module, name) if name is not None else module[int(index)]
        except (AttributeError, IndexError, TypeError) as error:
            raise ValueError(f"gc_layer {layer!r}: {error}") from None
        pos = step.end()
    if pos != len(text):
        raise ValueError(f"gc_layer {layer!r}: only attribute and integer-index steps are understood "
                         "(e.g. 'model.layer4[-1]'), or give the module itself")
    return module


def explain_func(model: nn.Module, inputs, targets, *, layer=None, method: str = "igcam", normalize: bool = False,
                 batch_rows=None, **kwargs) -> np.ndarray:
    """Quantus-style explanation function (see the module docstring for the keywords).

    Returns ``np.float32 (N, 1, H, W)`` (igcam_fast's methods), or what ``quantus.explain``
    returns for Quantus's method names.
    """
    unknown = sorted(set(kwargs) - set(KNOWN_KEYWORDS))
    if unknown:
        raise TypeError(f"explain_func got unknown keyword(s) {unknown}; known: {list(KNOWN_KEYWORDS)}")
    quantus = {k: kwargs.pop(k) for k in _QUANTUS_KEYWORDS if k in kwargs}
    options = kwargs  # the engine's
    if method in QUANTUS_METHODS:
        engine_method, quantus_conventions = QUANTUS_METHODS[method], True
    elif method in _OWN_METHODS:
        engine_method, quantus_conventions = method, False
    else:
        raise ValueError(f"method must be one of {list(_OWN_METHODS)} or Quantus's {list(QUANTUS_METHODS)}, "
                         f"got {method!r}")
    if quantus.get("xai_lib", "captum") != "captum":
        raise ValueError(f"xai_lib={quantus['xai_lib']!r}: this explain_func replaces Quantus's captum path "
                         "(xai_lib='captum'); zennit and tf-explain explanations are not computed here")
    lib_kwargs = dict(quantus.get("xai_lib_kwargs") or {})
    unknown_lib = sorted(set(lib_kwargs) - {"layer"})
    if unknown_lib:
        raise TypeError(f"xai_lib_kwargs: unknown key(s) {unknown_lib}; known: ['layer']")
    layer = quantus.get("gc_layer", lib_kwargs.get("layer", layer))
    if layer is None:
        raise ValueError("explain_func needs the target layer: explain_func_kwargs={'layer': 'layer4'} "
                         "(or Quantus's 'gc_layer': a dotted module name, 'model.layer4[-1]' or the module "
                         "itself), or use make_explain_func(layer)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    layer = resolve_layer(model, layer)
    reduce_axes = tuple(quantus.get("reduce_axes", (1,)))
    if 0 in reduce_axes:  # Quantus's own check and words
        raise AssertionError("Reduction over batch_axis is not available, please do not include axis 0 in "
                             "'reduce_axes' kwargs.")

    device = quantus.get("device")
    model.eval()  # as Quantus's explain does, whatever the device
    if device is not None:  # and as it does, the model goes to the device
        model.to(device)
    else:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    x = inputs.detach() if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    x = x.to(device)
    channel_first = quantus.get("channel_first", True)
    if channel_first is False:
        x = x.movedim(-1, 1)
    if not x.is_floating_point() or x.dtype == torch.float64:
        param = next(model.parameters(), None)
        x = x.to(param.dtype if param is not None and param.is_floating_point() else torch.float32)
    if x.dim() != 4:
        raise ValueError(f"inputs must be (N, C, H, W) images (channel first), got shape {tuple(x.shape)}")
    if targets is not None and not isinstance(targets, (int, np.integer)):
        targets = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
        targets = targets.reshape(-1).to(torch.int64)
    elif targets is not None:
        targets = int(targets)

    explained = model
    if quantus.get("softmax") is not None:
        from quantus.helpers.utils import get_wrapped_model

        layer = engine_resolve_layer(model, layer)[1]  # a module: the wrapped model names it differently
        explained = get_wrapped_model(model, softmax=quantus["softmax"], channel_first=True).get_softmax_arg_model()
        explained.eval()  # a new Sequential when a Softmax was added; Quantus evaluates it too

    interpolate = quantus.get("interpolate")
    interpolate = tuple(interpolate) if isinstance(interpolate, (tuple, list)) else None
    # Quantus's conventions (and interpolate_mode anywhere): captum's resize of the layer's maps
    captum_resize = quantus_conventions or "interpolate_mode" in quantus
    if quantus_conventions:
        options.setdefault("relu", False)  # captum's LayerGradCam is signed
    output_size = "layer" if captum_resize else interpolate
    with CamEngine(explained, layer, method=engine_method, normalize=normalize, batch_rows=batch_rows,
                   output_size=output_size, **options) as engine:
        maps = engine(x, targets)[:, None]
    if captum_resize and interpolate is not None:
        from captum.attr import LayerAttribution

        maps = LayerAttribution.interpolate(maps, interpolate, quantus.get("interpolate_mode", "nearest"))
    a = maps.to(torch.float32).cpu().numpy()
    if reduce_axes:
        a = a.sum(axis=reduce_axes, keepdims=quantus.get("keepdims", True))
    if quantus.get("abs", False):
        a = np.abs(a)
    if quantus.get("normalise", False):
        from quantus.functions.normalise_func import normalise_by_max

        a = np.stack([normalise_by_max(e) for e in a])
    if channel_first is False and a.ndim == 4:
        a = np.moveaxis(a, 1, -1)
    return np.ascontiguousarray(a, dtype=np.float32)


def make_explain_func(layer, **options):
    """An explain_func bound to ``layer`` and engine options (for metrics without kwargs)."""

    def bound(model, inputs, targets, **kwargs):
        return explain_func(model, inputs, targets, **{"layer": layer, **options, **kwargs})

    bound.__name__ = "igcam_fast_explain_func"
    return bound
