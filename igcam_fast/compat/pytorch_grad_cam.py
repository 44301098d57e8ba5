"""pytorch-grad-cam (PyPI ``grad-cam``) drop-ins: ``IntegratedGradCAM``, ``GradCAM``, ``GradCAMPlusPlus``.

The switch is one import line; the rest of the code stays as it is::

    # before
    from pytorch_grad_cam import GradCAM
    # after
    from igcam_fast.compat.pytorch_grad_cam import GradCAM

    with GradCAM(model, target_layers=[model.layer4[-1]]) as cam:
        cam.batch_size = 64                                   # rows per forward
        grayscale = cam(input_tensor, targets=[ClassifierOutputTarget(281)] * len(input_tensor))
        # np.float32 (B, H, W) in [0, 1], as upstream; show_cam_on_image(rgb, grayscale[0]) etc.

and ``IntegratedGradCAM`` (same constructor and call) gives Integrated Grad-CAM in the same form.

Each class is a subclass of ``pytorch_grad_cam.base_cam.BaseCAM`` (``GradCAM`` and
``GradCAMPlusPlus`` also of upstream's classes of the same name), built as
``(model, target_layers, reshape_transform=None, *, ...)`` so that upstream's meta-methods
(``RefineCAM(..., base_method=IntegratedGradCAM)``), metrics and ``show_cam_on_image`` take them.
Maps are computed by :class:`igcam_fast.CamEngine`: no host copies inside the loop, no
parameter gradients (the backward runs from the class scores to the layer only, so frozen
models with ``requires_grad=False`` parameters work), post-processing on the input's device.

Differences from upstream (on purpose):
    * ``return_tensor=True`` (constructor keyword or attribute) returns the float32 device tensor
      instead of a numpy array.
    * targets: one per image. Upstream zips targets with the batch, so one target for a batch of
      several images silently explains only the first image (the others come back as zero maps);
      here any length other than the batch size raises ``ValueError``. Class indices (ints, an
      int tensor) are accepted as well as callables.
    * ``cam.outputs`` (the logits of the input) is computed without a graph, and only when read
      if explicit targets were given (no extra forward otherwise).
    * ``cam.batch_size`` is the number of *path images* per forward (Integrated Grad-CAM runs m
      of them per image); None picks a per-device default.
    * several target layers are averaged as upstream does (per-layer min-max at layer resolution,
      bilinear resize, mean, min-max), but each layer costs its own forward pass.
    * the model must return (B, classes) scores: targets on other outputs (e.g. upstream's
      ``SemanticSegmentationTarget``) and 3-D (5-D tensor) layers are not supported.
    * ``eigen_smooth=True``: ``GradCAM``/``GradCAMPlusPlus`` run upstream's own code for it
      (with upstream's costs: host copies, whole-model backward); ``IntegratedGradCAM`` raises
      ``NotImplementedError``. ``aug_smooth=True`` is upstream's test-time augmentation
      (``cam.tta_transforms``), run on the device.
    * ``__exit__`` does not swallow ``IndexError`` as upstream's does.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM as _UpstreamGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as _UpstreamGradCAMPlusPlus
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from igcam_fast import ops
from igcam_fast.core.engine import CamEngine
from igcam_fast.ops import minmax_scale as _minmax

__all__ = ["IntegratedGradCAM", "GradCAM", "GradCAMPlusPlus"]


def _check_targets(targets, batch: int):
    """One target per image (callables, ints or an int tensor), or None for the argmax."""
    if targets is None:
        return None
    if isinstance(targets, torch.Tensor):
        if targets.dim() > 1 or (targets.dim() == 1 and targets.shape[0] != batch):
            raise ValueError(f"targets tensor must have shape ({batch},) for {batch} images, got "
                             f"{tuple(targets.shape)}")
        return targets
    if not isinstance(targets, (list, tuple)):
        kind = "a single callable" if callable(targets) else type(targets).__name__
        raise TypeError(f"targets must be a list with one target per image (e.g. [ClassifierOutputTarget(c)] * "
                        f"{batch}), got {kind}")
    if len(targets) != batch:
        raise ValueError(
            f"got {len(targets)} target(s) for a batch of {batch} images. pytorch-grad-cam zips targets with the "
            f"batch and would silently explain only the first {min(len(targets), batch)} image(s); give one target "
            f"per image, e.g. [ClassifierOutputTarget(c)] * {batch}")
    for t in targets:
        if isinstance(t, (list, tuple)):
            raise TypeError("targets: one target per image (nested lists of several targets are not supported here; "
                            "use igcam_fast.CamEngine for several targets per image)")
    return list(targets)


class _FastCAM(BaseCAM):
    """The common body of the fast classes (not for direct use)."""

    _method = "igcam"

    def __init__(self, model: torch.nn.Module, target_layers: Sequence[torch.nn.Module],
                 reshape_transform: Optional[Callable] = None, *, tta_transforms=None, return_tensor: bool = False,
                 batch_size: Optional[int] = None, **engine_options):
        if not isinstance(target_layers, (list, tuple)) or len(target_layers) == 0:
            raise TypeError("target_layers must be a non-empty list of modules, e.g. [model.layer4[-1]]")
        for key in ("relu", "normalize", "output_size", "reshape_transform", "method", "batch_rows"):
            if key in engine_options:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {key!r} "
                                "(fixed by pytorch-grad-cam's output contract)")
        self._outputs = None
        self._pending_input = None
        self._engines = []
        # Upstream's constructor: model.eval(), self.device, tta_transforms, the flags its forward reads.
        BaseCAM.__init__(self, model, list(target_layers), reshape_transform, tta_transforms=tta_transforms)
        # Its hooks copy activations and gradients to the host on every forward: not on this path.
        self.activations_and_grads.release()
        self.return_tensor = bool(return_tensor)
        self._engines = [
            CamEngine(model, layer, method=self._method, reshape_transform=reshape_transform, relu=True,
                      normalize=False, output_size="layer", **engine_options)
            for layer in self.target_layers
        ]
        self.batch_size = batch_size

    # ---- attributes of upstream's interface ---------------------------------------------------

    @property
    def batch_size(self) -> Optional[int]:
        """Rows (path images) per forward pass; None: the engine's per-device default."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: Optional[int]) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {value!r}")
        self._batch_size = None if value is None else int(value)
        for engine in self._engines:
            engine.batch_rows = self._batch_size

    @property
    def outputs(self):
        """The logits of the last input (computed on first read when explicit targets were given)."""
        if self._outputs is None and self._pending_input is not None:
            with torch.no_grad():
                self._outputs = self.model(self._pending_input)
            self._pending_input = None
        return self._outputs

    @outputs.setter
    def outputs(self, value) -> None:
        self._outputs, self._pending_input = value, None

    # ---- the call ----------------------------------------------------------------------------

    def __call__(self, input_tensor: torch.Tensor, targets=None, aug_smooth: bool = False,
                 eigen_smooth: bool = False):
        if aug_smooth is True:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        return self.forward(input_tensor, targets, eigen_smooth)

    def forward(self, input_tensor: torch.Tensor, targets=None, eigen_smooth: bool = False):
        """Maps of input_tensor (B, C, H, W): np.float32 (B, H, W) in [0, 1] (a tensor with return_tensor)."""
        return self._finish(self._maps(input_tensor, targets, eigen_smooth))

    def forward_augmentation_smoothing(self, input_tensor: torch.Tensor, targets=None, eigen_smooth: bool = False):
        """Upstream's test-time augmentation (self.tta_transforms), on the device."""
        cams = []
        for transform in self.tta_transforms:
            augmented = transform.augment_image(input_tensor)
            cam = self._maps(augmented, targets, eigen_smooth)
            cams.append(transform.deaugment_mask(cam[:, None])[:, 0])
        return self._finish(torch.stack(cams).mean(dim=0))

    def _finish(self, maps: torch.Tensor):
        maps = maps.to(torch.float32)
        return maps if self.return_tensor else maps.cpu().numpy()

    def _maps(self, input_tensor: torch.Tensor, targets, eigen_smooth: bool) -> torch.Tensor:
        if not self._engines or any(e._hook is None for e in self._engines):
            raise RuntimeError(f"this {type(self).__name__} was closed (left its `with` block); create a new one")
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
        x = input_tensor.to(self.device)
        if x.dim() != 4:
            raise ValueError(f"input_tensor must be (B, C, H, W), got shape {tuple(x.shape)} "
                             "(3-D volumes are not supported by the fast path)")
        targets = _check_targets(targets, x.shape[0])
        if eigen_smooth:
            return self._eigen_smooth(x, targets)
        if targets is None:
            with torch.no_grad():
                logits = self.model(x)
            self.outputs = logits
            targets = logits.argmax(dim=-1)
        else:
            self._outputs, self._pending_input = None, x
        per_layer = [engine.explain(x, targets).layer_maps for engine in self._engines]
        size = tuple(x.shape[-2:])
        if len(per_layer) == 1:
            # upstream: min-max at layer resolution, resize, min-max again. Not one min-max after the
            # resize: the 1e-7 in the first one matters for maps of small magnitude.
            return ops.upsample(_minmax(per_layer[0]), size, normalize=True)
        scaled = torch.stack([ops.upsample(_minmax(m), size) for m in per_layer], dim=1)
        return _minmax(scaled.clamp(min=0).mean(dim=1))

    def _eigen_smooth(self, x, targets) -> torch.Tensor:
        raise NotImplementedError(
            f"eigen_smooth=True is not supported by {type(self).__name__}: the principal-component projection needs "
            "the per-channel weighted activations of every path point, which the fused engine never materialises. "
            "Use eigen_smooth=False (or upstream's EigenGradCAM for the eigen variant).")

    # ---- lifetime ----------------------------------------------------------------------------

    def release(self) -> None:
        """Remove every hook from the model (also done by ``with`` and on deletion). Idempotent."""
        for engine in self._engines:
            engine.close()
        if getattr(self, "activations_and_grads", None) is not None:
            self.activations_and_grads.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.release()
        return False  # unlike upstream, do not swallow IndexError

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class _UpstreamEigenSmooth:
    """eigen_smooth through upstream's own forward (its weights, projection and post-processing)."""

    def _eigen_smooth(self, x, targets) -> torch.Tensor:
        if isinstance(targets, torch.Tensor):
            targets = targets.tolist()
        if targets is not None:
            targets = [ClassifierOutputTarget(int(t)) if isinstance(t, (int, np.integer)) else t for t in targets]
        self.activations_and_grads = ActivationsAndGradients(self.model, self.target_layers,
                                                             self.reshape_transform, self.detach)
        try:
            cam = BaseCAM.forward(self, x, targets, eigen_smooth=True)
        finally:
            self.activations_and_grads.release()
        return torch.from_numpy(np.ascontiguousarray(cam)).to(x.device)


class IntegratedGradCAM(_FastCAM):
    """Integrated Grad-CAM (Sattarzadeh et al. 2021) with pytorch-grad-cam's interface.

    ``IntegratedGradCAM(model, target_layers, reshape_transform=None, *, tta_transforms=None,
    return_tensor=False, batch_size=None, **options)``; options are :class:`igcam_fast.CamEngine`'s
    (``steps``, ``rule``, ``preset``, ``baseline``, ``mean``, ``std``, ``subtract_baseline``,
    ``autocast``, ...). Each map is ReLU'd per path point, summed with the quadrature weights and
    min-max scaled to [0, 1]. See the module docstring for the differences from upstream.
    """

    _method = "igcam"


class GradCAM(_UpstreamEigenSmooth, _FastCAM, _UpstreamGradCAM):
    """Grad-CAM, equal to ``pytorch_grad_cam.GradCAM`` (to float32 rounding) without its costs.

    ``GradCAM(model, target_layers, reshape_transform=None, *, tta_transforms=None,
    return_tensor=False, batch_size=None, autocast=None, ...)``. See the module docstring.
    """

    _method = "gradcam"


class GradCAMPlusPlus(_UpstreamEigenSmooth, _FastCAM, _UpstreamGradCAMPlusPlus):
    """Grad-CAM++, equal to ``pytorch_grad_cam.GradCAMPlusPlus`` (same closed form) without its costs.

    Same constructor and call as :class:`GradCAM`. See the module docstring.
    """

    _method = "gradcampp"
