"""captum drop-in: ``LayerIntegratedGradCam``, an integrated ``LayerGradCam``.

The switch::

    # before
    from captum.attr import LayerGradCam
    attr = LayerGradCam(model, model.layer4).attribute(x, target=3)
    # after
    from igcam_fast.compat.captum import LayerIntegratedGradCam
    attr = LayerIntegratedGradCam(model, model.layer4).attribute(x, target=3, n_steps=16)
    up = LayerAttribution.interpolate(attr, x.shape[-2:], "bilinear")   # unchanged

What it computes, for each example (N, 1, h, w) at the layer's resolution, signed:

    L = Σ_t ω_t Σ_k w_k(α_t) (A_k(α_t) - A_k(x'))      w_k(α) = mean_ij ∂y/∂A_k at x' + α (x - x')

with captum's nodes and weights (``method``, ``n_steps``) and baselines x' (None = zeros). So
``n_steps=1, method="riemann_right"`` with ``subtract_baseline=False`` is captum's
``LayerGradCam`` exactly, and the integrated channel weights Σ_t ω_t w_k(α_t) are the spatial
means of captum's ``InternalInfluence`` on the same nodes.

``relu_attributions=True`` applies the ReLU to the final, integrated map (captum's LayerGradCam
applies it to its final map; the signed per-step terms are summed first). The paper's variant,
a ReLU at every path point, is ``LayerIntegratedGradCam(..., relu_per_step=True)``.

``method="riemann_trapezoid"`` uses captum's weights (1/n, halved at both ends, which sum to
1 - 1/n), not igcam_fast's trapezoid rule (which sums to 1).

Layers and inputs as captum's: a layer whose output is (N, K) (Linear) gives (N, 1) — a
1×1 map per example; (N, K, *S) gives (N, 1, *S); a layer returning several tensors gives a tuple
of attributions, one per tensor; ``attribute_to_layer_input=True`` explains the layer's input
(one per input tensor, a tuple when several); ``attr_dim_summation=False`` gives the per-channel
terms (N, K, *S) (one engine pass per channel: K times the cost). Several input tensors, and
inputs that are not (N, C, H, W) images, are packed into one (N, 1, 1, D) tensor for the engine
and unpacked for ``forward_func`` (the path is the same straight line in every input).

Targets are checked as captum checks them (``_select_targets``), with captum's messages (raised
as :class:`CaptumTargetError`, an AssertionError as captum's and a ValueError).
``grad_kwargs``: ``{"materialize_grads": True}`` (a layer the target does not depend on gets
zero attributions instead of an error); other keys raise ``NotImplementedError``.

Not supported (raise ``NotImplementedError``): tensor ``additional_forward_args`` with one row
per example when N > 1, targets with slices, input tensors of different dtypes, several layers.
The model must be in eval mode where the engine requires it (BatchNorm/Dropout would mix path
images otherwise).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import nn

from igcam_fast.compat._captum_forward import (CaptumTargetError, _as_maps, _check_tuple, _ForwardModule,
                                               _IndexTarget, _Packing, _Route)
from igcam_fast.core.engine import CamEngine
from igcam_fast.core.quadrature import canonical_rule

__all__ = ["LayerIntegratedGradCam", "CaptumTargetError"]

class LayerIntegratedGradCam(LayerAttribution):
    """Integrated Grad-CAM at ``layer`` with captum's interface (see the module docstring).

    Args:
        forward_func: the model (or a function of the inputs and additional_forward_args).
        layer: the module whose output (N, K, ...) (or input) is explained.
        device_ids: accepted for captum compatibility; unused (no DataParallel reassembly).
        subtract_baseline: subtract the baseline's layer output A(x') (default, as the paper and
            captum's layer integrated gradients) or not (then n_steps=1, riemann_right is LayerGradCam).
        relu_per_step: the paper's ReLU at every path point instead of a signed integral.
        reshape_transform: makes token-shaped layer outputs (N, K, h, w) (pytorch-grad-cam's meaning).
        **engine_options: further :class:`igcam_fast.CamEngine` options (``autocast``, ``backend``,
            ``channels_last``).
    """

    def __init__(self, forward_func: Callable, layer: nn.Module, device_ids=None, *, subtract_baseline: bool = True,
                 relu_per_step: bool = False, reshape_transform: Optional[Callable] = None, **engine_options):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__} "
                            "(several layers are not supported)")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        self.subtract_baseline = bool(subtract_baseline)
        self.relu_per_step = bool(relu_per_step)
        self.reshape_transform = reshape_transform
        self.engine_options = engine_options
        self._wrapper = _ForwardModule(forward_func, layer)
        self.last_results: list = []

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[dict] = None,
                  tol: Optional[float] = None, max_steps: Optional[int] = None):
        """(N, 1, *S) attributions at the layer's resolution (a tuple of them for several layer
        tensors), on the input's device; (N, K, *S) with attr_dim_summation=False.

        Arguments as captum's integrated layer methods: baselines None (zeros), a number, or a
        tensor of the inputs' shape or with first dimension 1 (a tuple of those for several
        inputs); target None (scalar output), int, tuple, (N,) tensor, list of ints or of tuples;
        ``internal_batch_size`` is the number of path images per forward pass.

        Beyond captum: ``tol=`` (e.g. 0.01) integrates each example until the estimate of its own
        quadrature error (relative L2 of the map) is at most tol, up to ``max_steps`` path points;
        ``n_steps`` and ``method`` are then not used. ``self.last_results`` holds the engine's
        :class:`~igcam_fast.CamResult` of each map of the last call (``error_estimate``, ``path_points``).
        """
        materialize = self._check_grad_kwargs(grad_kwargs)
        tensors = self._format_inputs(inputs)
        N = tensors[0].shape[0]
        wrapper = self._wrapper
        wrapper.reset()
        packing = _Packing(tensors) if len(tensors) > 1 or tensors[0].dim() != 4 else None
        bases = self._format_baselines(baselines, tensors)
        if packing is None:
            x, base = tensors[0], bases[0]
        else:
            x = packing.pack(tensors, N)
            base = packing.pack(bases, max(b.shape[0] for b in bases))
            base = base[0] if base.shape[0] == 1 else base
        rule = canonical_rule(method)
        adaptive = {k: v for k, v in (("tol", tol), ("max_steps", max_steps)) if v is not None}
        uses_tol = {**self.engine_options, **adaptive}.get("tol") is not None
        quadrature = {} if uses_tol else dict(rule=rule, steps=n_steps)  # tol chooses each example's points
        inner = wrapper._function()
        wrapper.training = inner.training if isinstance(inner, nn.Module) else False
        routes, engines = [], []
        try:
            wrapper.packing = packing
            wrapper.args = self._format_args(additional_forward_args, N)
            shapes = self._layer_tensor_shapes(x, attribute_to_layer_input)
            targets = self._format_target(target, N)
            wrapper.target, wrapper.examples, wrapper.target_checked = target, N, False
            wrapper.materialize = materialize
            while len(wrapper.probes) < len(shapes):
                wrapper.probes.append(nn.Identity())
            results, self.last_results = [], []
            for index, shape in enumerate(shapes):
                routes.append(_Route(wrapper, self.layer, wrapper.probes[index], index, attribute_to_layer_input))
                channels = [None] if attr_dim_summation else range(shape[1])
                maps = []
                for channel in channels:
                    engine = CamEngine(wrapper, wrapper.probes[index], method="igcam", **quadrature,
                                       baseline=base, subtract_baseline=self.subtract_baseline,
                                       relu=self.relu_per_step, normalize=False, output_size="layer",
                                       batch_rows=internal_batch_size,
                                       reshape_transform=self._reshape_for(channel),
                                       **{**self.engine_options, **adaptive})
                    engines.append(engine)
                    result = engine.explain(x, targets)
                    self.last_results.append(result)
                    maps.append(result.layer_maps.reshape(N, 1, *shape[2:]))
                    engine.close()
                results.append(torch.cat(maps, dim=1))
        finally:
            for engine in engines:
                engine.close()
            for route in routes:
                route.close()
            wrapper.reset()
        # captum's trapezoid weights are 1/n (halved at the ends), ours 1/(n - 1)
        if rule == "trapezoid" and not uses_tol:
            results = [r * ((n_steps - 1) / n_steps) for r in results]
        if relu_attributions:
            results = [r.clamp(min=0) for r in results]
        return results[0] if len(results) == 1 else tuple(results)

    def _reshape_for(self, channel: Optional[int]):
        user = self.reshape_transform
        return lambda t: _as_maps(user(t) if user is not None else t, channel)

    def _layer_tensor_shapes(self, x: torch.Tensor, to_input: bool) -> list:
        """Shapes (N, K, *S) of the layer's output tensors (or input tensors), from one example."""
        seen = []

        def record(value):
            parts = [value] if isinstance(value, torch.Tensor) else list(value)
            seen.append([tuple(p.shape) if isinstance(p, torch.Tensor) else None for p in parts])

        if to_input:
            handle = self.layer.register_forward_pre_hook(lambda m, args: record(args))
        else:
            handle = self.layer.register_forward_hook(lambda m, args, out: record(out))
        # eval mode for this one forward: a training-mode BatchNorm would update its running
        # statistics from a forward that only reads shapes
        modes = [(m, m.training) for m in self._wrapper.modules()]
        self._wrapper.eval()
        try:
            with torch.no_grad():
                self._wrapper(x[:1])
        finally:
            handle.remove()
            for module, training in modes:
                module.training = training
        if not seen:
            raise ValueError("the layer was not called during the forward pass")
        what = "input" if to_input else "output"
        if len(seen) > 1:
            raise NotImplementedError(f"the layer is called {len(seen)} times per forward; captum's layer {what} "
                                      "of a layer called more than once is not supported")
        if any(s is None for s in seen[0]):
            raise NotImplementedError(f"the layer's {what} holds non-tensor values; only tensors are supported")
        return [(x.shape[0], *s[1:]) for s in seen[0]]

    # ---- captum's argument forms -------------------------------------------------------------

    @staticmethod
    def _check_grad_kwargs(grad_kwargs) -> bool:
        """True when gradients of unused layer tensors are to be zeros (materialize_grads)."""
        if grad_kwargs is None:
            return False
        if not isinstance(grad_kwargs, dict):
            raise TypeError(f"grad_kwargs must be a dict, got {type(grad_kwargs).__name__}")
        unsupported = sorted(set(grad_kwargs) - {"materialize_grads"})
        if unsupported:
            raise NotImplementedError(f"grad_kwargs {unsupported} are not supported (only materialize_grads): the "
                                      "engine takes its own gradients, from the target scores to the layer only")
        return bool(grad_kwargs.get("materialize_grads", False))

    @staticmethod
    def _format_inputs(inputs) -> tuple:
        tensors = inputs if isinstance(inputs, tuple) else (inputs,)
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}")
        if len({t.shape[0] if t.dim() else -1 for t in tensors}) != 1 or tensors[0].dim() == 0:
            raise ValueError(f"every input tensor needs the same first (example) dimension, got "
                             f"{[tuple(t.shape) for t in tensors]}")
        if len({t.dtype for t in tensors}) != 1:
            raise NotImplementedError(f"input tensors of different dtypes are not supported, got "
                                      f"{[t.dtype for t in tensors]}")
        return tuple(t.detach() for t in tensors)

    @staticmethod
    def _format_baselines(baselines, tensors: tuple) -> tuple:
        """One baseline per input tensor, each (1, ...) or (N, ...) of the input's shape."""
        if not isinstance(baselines, tuple):
            baselines = (baselines,) * len(tensors) if baselines is None or isinstance(baselines, (int, float)) \
                else (baselines,)
        if len(baselines) != len(tensors):
            raise ValueError(f"one baseline per input tensor: got {len(baselines)} for {len(tensors)} inputs")
        out = []
        for b, x in zip(baselines, tensors):
            if b is None:
                b = 0.0
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                out.append(torch.full_like(x[:1], float(b)))
                continue
            if not isinstance(b, torch.Tensor):
                raise TypeError(f"baselines must be None, a number or a tensor, got {type(b).__name__}")
            t = b.detach().to(x.device, x.dtype)
            if t.dim() == 0:
                t = torch.full_like(x[:1], float(t))
            elif t.dim() == x.dim() - 1:
                t = t[None]
            if t.dim() != x.dim() or t.shape[0] not in (1, x.shape[0]) or t.shape[1:] != x.shape[1:]:
                raise ValueError(f"baselines must have the inputs' shape {tuple(x.shape)} or a first dimension of 1, "
                                 f"got {tuple(b.shape)}")
            out.append(t.expand(t.shape[0], *x.shape[1:]))
        return tuple(out)

    @staticmethod
    def _format_args(args, batch: int) -> tuple:
        if args is None:
            return ()
        if not isinstance(args, tuple):
            args = (args,)
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] != 1:
                raise NotImplementedError(
                    f"additional_forward_args: tensors with a first dimension of {a.shape[0]} (one row per example) "
                    "are not supported; give 0-d tensors, tensors with a first dimension of 1, or non-tensor values")
        return args

    def _format_target(self, target, batch: int):
        """The engine's targets for captum's ``target`` (captum's own check runs in the forward)."""
        wrapper = self._wrapper
        if target is None:
            return 0
        if isinstance(target, bool):
            raise TypeError("target must be an int, a tuple, a tensor or a list, not a bool")
        if isinstance(target, (int, np.integer)):
            return int(target)
        if isinstance(target, tuple):
            index = _check_tuple(target)
            return [_IndexTarget(wrapper, index) for _ in range(batch)]
        if isinstance(target, torch.Tensor):
            if target.is_floating_point():
                raise TypeError(f"target tensor must hold integer indices, got {target.dtype}")
            if target.numel() == 1:
                return int(target.reshape(()))
            if target.dim() == 1 and target.numel() == batch:
                return target.detach().to("cpu", torch.int64)
            raise CaptumTargetError("Tensor target dimension %r is not valid. %r"
                                    % (target.shape, (batch, *(wrapper.output_shape or ()))))
        if isinstance(target, list):
            if len(target) != batch:
                raise CaptumTargetError("Target list length does not match output!")
            if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target):
                return [int(t) for t in target]
            if all(isinstance(t, tuple) for t in target):
                return [_IndexTarget(wrapper, _check_tuple(t)) for t in target]
            raise TypeError("a target list must hold only ints or only tuples")
        raise TypeError(f"target must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")
