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

Extension points. A subclass that overrides ``get_cam_weights``, ``get_cam_image``,
``compute_cam_per_layer``, ``aggregate_multi_layers`` or ``get_target_width_height`` (upstream's
documented way to write a new CAM) gets upstream's code path, which calls them: upstream's
``BaseCAM.forward`` for ``GradCAM``/``GradCAMPlusPlus``, and for ``IntegratedGradCAM`` the same
steps at every path point (:mod:`igcam_fast.compat._upstream_path`). That path costs what
upstream costs (a whole-model backward and host copies per path point); see docs/adapters.md.

``cam.activations_and_grads`` is an upstream ``ActivationsAndGradients`` whose ``activations``
and ``gradients`` lists hold, after a call, one (N, K, h, w) tensor per target layer (after
``reshape_transform``), as upstream's do: N = B for Grad-CAM and Grad-CAM++; for Integrated
Grad-CAM the B·m path images, image-major (row b·m + t is image b at node α_t; with ``tol=``,
the rows of each round in turn). On the fast
path they stay on the input's device (upstream's are on the CPU).

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
      bilinear resize, mean, min-max); one engine explains them all from the same forward and
      backward passes (each path image runs through the model once, not once per layer).
    * ``tol=`` (``IntegratedGradCAM`` only, one target layer) integrates each image until its
      own quadrature error estimate is at most tol; ``cam.last_result`` is the engine's
      :class:`~igcam_fast.CamResult` of the last call (``error_estimate``, ``path_points``).
    * the model must return (B, classes) scores: targets on other outputs (e.g. upstream's
      ``SemanticSegmentationTarget``) are not supported. 3-D (5-D tensor) inputs run upstream's
      path for ``GradCAM``/``GradCAMPlusPlus``; ``IntegratedGradCAM`` refuses them.
    * ``eigen_smooth=True``: ``GradCAM``/``GradCAMPlusPlus`` run upstream's own code for it
      (with upstream's costs); ``IntegratedGradCAM`` projects the *integrated* weighted
      activations Σ_t ω_t w_k(α_t) (A_k(α_t) − A_k(x')) on their first principal component
      (docs/adapters.md). ``aug_smooth=True`` is upstream's test-time augmentation
      (``cam.tta_transforms``), run on the device.
    * ``IntegratedGradCAM``'s baseline when none is given: black pixels through the model's
      mean/std when they are known (``mean=``/``std=`` or carried by the model), else through
      ImageNet's for 3-channel inputs, else zeros (e.g. 1-channel models).
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

from igcam_fast import ops
from igcam_fast.compat._upstream_path import (callable_targets, integrated_upstream_forward, keep_lists_release,
                                              upstream_forward)
from igcam_fast.core.engine import CamEngine
from igcam_fast.core.preprocessing import preprocessing_of
from igcam_fast.ops import minmax_scale as _minmax

__all__ = ["IntegratedGradCAM", "GradCAM", "GradCAMPlusPlus"]

#: BaseCAM's documented extension points: a subclass overriding one of them gets upstream's path.
EXTENSION_POINTS = ("get_cam_weights", "get_cam_image", "compute_cam_per_layer", "aggregate_multi_layers",
                    "get_target_width_height")


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


class _Capture:
    """Keeps the layer's activations and gradients of every engine forward (what upstream's
    ActivationsAndGradients holds), from a forward hook registered after the engine's own.

    The engine's hook hands the rest of the model a tensor that requires grad in its gradient
    forwards only (argmax and baseline-feature forwards carry none, as upstream's hooks skip
    them too). A chunk is kept when its gradient arrives, so a forward that did not reach its
    backward (a failed trial) leaves nothing behind.
    """

    def __init__(self, layer: torch.nn.Module, reshape_transform):
        self.reshape_transform = reshape_transform
        self.chunks: list = []
        self._handle = layer.register_forward_hook(self._on_output)

    def _shaped(self, t):
        return self.reshape_transform(t) if self.reshape_transform is not None else t

    def _on_output(self, module, inputs, output):
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return None
        # a copy: an in-place op after the layer (ReLU(inplace=True)) must not change what is kept
        activation = self._shaped(output.detach()).clone()
        output.register_hook(lambda grad: self.chunks.append((activation, self._shaped(grad.detach()))))
        return None

    def take(self, rows: int):
        """(activations, gradients) of the last call, each (rows, K, h, w); empties the store."""
        chunks, self.chunks = self.chunks, []
        if sum(a.shape[0] for a, _ in chunks) != rows:
            raise RuntimeError(f"activations_and_grads: captured {sum(a.shape[0] for a, _ in chunks)} rows of layer "
                               f"activations for {rows} path images; the engine's forwards changed. Report this.")
        return torch.cat([a for a, _ in chunks]), torch.cat([g for _, g in chunks])

    def close(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.chunks = []


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
        self._engines: dict = {}  # baseline spec -> the engine of all target layers
        self.last_result = None
        self._captures: list = []
        self._closed = False
        # Upstream's constructor: model.eval(), self.device, tta_transforms, the flags its forward reads.
        BaseCAM.__init__(self, model, list(target_layers), reshape_transform, tta_transforms=tta_transforms)
        # Its hooks copy activations and gradients to the host on every forward: not on this path.
        # The object stays, without hooks, to hold the last call's activations and gradients.
        self.activations_and_grads.release()
        self.return_tensor = bool(return_tensor)
        self._engine_options = engine_options
        self._batch_size = None
        self._engine_for(None)  # validates the options now, not at the first call
        self._captures = [_Capture(layer, reshape_transform) for layer in self.target_layers]
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
        for engine in self._engines.values():
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

    # ---- engines -----------------------------------------------------------------------------

    def _baseline_spec(self, channels: Optional[int]):
        """The engine's ``baseline`` for inputs with ``channels`` channels (None: the constructor's).

        Given by the user: theirs. Else black pixels, which need the model's mean/std: given
        (``mean=``/``std=``) or carried by the model, or ImageNet's for 3 channels; with none
        known for another channel count, zeros.
        """
        options = self._engine_options
        if "baseline" in options:
            return options["baseline"]
        if channels is None or channels == 3 or "mean" in options or "std" in options:
            return "black"
        return "black" if preprocessing_of(self.model) is not None else "zeros"

    def _engine_for(self, channels: Optional[int]) -> CamEngine:
        spec = self._baseline_spec(channels)
        key = spec if isinstance(spec, str) else id(spec)
        if key not in self._engines:
            options = {**self._engine_options, "baseline": spec} if self._method == "igcam" else self._engine_options
            layers = self.target_layers[0] if len(self.target_layers) == 1 else list(self.target_layers)
            # One engine for all the target layers: they share every forward and backward.
            # closed_form_head=False: upstream's activations_and_grads holds the gradients at the
            # layer after every call, so the head backward (small) runs; its forward is captured too.
            self._engines[key] = CamEngine(self.model, layers, method=self._method,
                                           reshape_transform=self.reshape_transform, relu=True, normalize=False,
                                           output_size="layer", batch_rows=self._batch_size, closed_form_head=False,
                                           **options)
            # the capture hooks must run after every engine's hook (they read what it hands on)
            for capture in self._captures:
                capture.close()
            if self._captures:
                self._captures = [_Capture(layer, self.reshape_transform) for layer in self.target_layers]
        return self._engines[key]

    def _overridden_extension_points(self) -> list:
        """Names of EXTENSION_POINTS that type(self) overrides relative to its fast class."""
        cls = type(self)
        native = next(c for c in cls.__mro__ if c in _FAST_CLASSES)
        return [name for name in EXTENSION_POINTS if getattr(cls, name) is not getattr(native, name)]

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
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} was closed (left its `with` block); create a new one")
        if not isinstance(input_tensor, torch.Tensor):
            raise TypeError(f"input_tensor must be a torch.Tensor, got {type(input_tensor).__name__}")
        x = input_tensor.to(self.device)
        if x.dim() not in (4, 5):
            raise ValueError(f"input_tensor must be (B, C, H, W) (or (B, C, D, H, W)), got shape {tuple(x.shape)}")
        targets = _check_targets(targets, x.shape[0])
        overridden = self._overridden_extension_points()
        if overridden or eigen_smooth or x.dim() == 5:
            return self._upstream_path(x, targets, eigen_smooth, overridden)
        if targets is None:
            with torch.no_grad():
                logits = self.model(x)
            self.outputs = logits
            targets = logits.argmax(dim=-1)
        else:
            self._outputs, self._pending_input = None, x
        engine = self._engine_for(x.shape[1])
        for capture in self._captures:
            capture.chunks = []
        result = engine.explain(x, targets)
        self.last_result = result
        per_layer = list(result.layer_maps) if engine.several_layers else [result.layer_maps]
        rows = int(result.path_points.sum())  # B·m; with tol=, each image's own number of path points
        taken = [capture.take(rows) for capture in self._captures]
        self.activations_and_grads.activations = [a for a, _ in taken]
        self.activations_and_grads.gradients = [g for _, g in taken]
        size = tuple(x.shape[-2:])
        if len(per_layer) == 1:
            # upstream: min-max at layer resolution, resize, min-max again. Not one min-max after the
            # resize: the 1e-7 in the first one matters for maps of small magnitude.
            return ops.upsample(_minmax(per_layer[0]), size, normalize=True)
        scaled = torch.stack([ops.upsample(_minmax(m), size) for m in per_layer], dim=1)
        return _minmax(scaled.clamp(min=0).mean(dim=1))

    def _upstream_path(self, x, targets, eigen_smooth: bool, overridden: list) -> torch.Tensor:
        """Upstream's own forward (GradCAM, GradCAM++), honouring every extension point."""
        self.activations_and_grads = ActivationsAndGradients(self.model, self.target_layers,
                                                             self.reshape_transform, self.detach)
        try:
            cam = upstream_forward(self, x, callable_targets(targets), eigen_smooth)
        finally:
            keep_lists_release(self.activations_and_grads)
        return torch.from_numpy(np.ascontiguousarray(cam)).to(x.device)

    # ---- lifetime ----------------------------------------------------------------------------

    def release(self) -> None:
        """Remove every hook from the model (also done by ``with`` and on deletion). Idempotent."""
        self._closed = True
        for engine in getattr(self, "_engines", {}).values():
            engine.close()
        for capture in getattr(self, "_captures", []):
            capture.close()
        if getattr(self, "activations_and_grads", None) is not None:
            keep_lists_release(self.activations_and_grads)

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


class IntegratedGradCAM(_FastCAM):
    """Integrated Grad-CAM (Sattarzadeh et al. 2021) with pytorch-grad-cam's interface.

    ``IntegratedGradCAM(model, target_layers, reshape_transform=None, *, tta_transforms=None,
    return_tensor=False, batch_size=None, **options)``; options are :class:`igcam_fast.CamEngine`'s
    (``steps``, ``rule``, ``preset``, ``baseline``, ``mean``, ``std``, ``subtract_baseline``,
    ``autocast``, ...). Each map is ReLU'd per path point, summed with the quadrature weights and
    min-max scaled to [0, 1]. See the module docstring for the differences from upstream.
    """

    _method = "igcam"

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        """Grad-CAM's weights (the spatial mean of the gradient), at every path point."""
        return _UpstreamGradCAM.get_cam_weights(self, input_tensor, target_layer, targets, activations, grads)

    def _upstream_path(self, x, targets, eigen_smooth: bool, overridden: list) -> torch.Tensor:
        if "compute_cam_per_layer" in overridden:
            raise NotImplementedError(
                f"{type(self).__name__} overrides compute_cam_per_layer, which reads one forward's activations and "
                "gradients; Integrated Grad-CAM has one per path point and no single pair to give it. Override "
                "get_cam_weights or get_cam_image (called at every path point) instead.")
        if x.dim() != 4:
            raise ValueError(f"IntegratedGradCAM needs (B, C, H, W) inputs, got shape {tuple(x.shape)}")
        engine = self._engine_for(x.shape[1])
        if engine.config.tol is not None:
            raise NotImplementedError(f"{type(self).__name__}(tol=...) runs the fused engine only; an overridden "
                                      "extension point or eigen_smooth=True needs a fixed rule (steps=, rule=)")
        self.activations_and_grads = ActivationsAndGradients(self.model, self.target_layers,
                                                             self.reshape_transform, self.detach)
        try:
            cam = integrated_upstream_forward(self, engine, x, callable_targets(targets), eigen_smooth,
                                              "get_cam_image" in overridden)
        finally:
            keep_lists_release(self.activations_and_grads)
        return torch.from_numpy(np.ascontiguousarray(cam)).to(x.device)


class GradCAM(_FastCAM, _UpstreamGradCAM):
    """Grad-CAM, equal to ``pytorch_grad_cam.GradCAM`` (to float32 rounding) without its costs.

    ``GradCAM(model, target_layers, reshape_transform=None, *, tta_transforms=None,
    return_tensor=False, batch_size=None, autocast=None, ...)``. See the module docstring.
    """

    _method = "gradcam"


class GradCAMPlusPlus(_FastCAM, _UpstreamGradCAMPlusPlus):
    """Grad-CAM++, equal to ``pytorch_grad_cam.GradCAMPlusPlus`` (same closed form) without its costs.

    Same constructor and call as :class:`GradCAM`. See the module docstring.
    """

    _method = "gradcampp"


_FAST_CLASSES = (IntegratedGradCAM, GradCAM, GradCAMPlusPlus)
