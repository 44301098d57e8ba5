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

Not supported (raise ``NotImplementedError``): ``attribute_to_layer_input=True``,
``attr_dim_summation=False`` (per-channel maps), several input tensors, tensor
``additional_forward_args`` with one row per example when N > 1, and targets with slices.
The model must be in eval mode (BatchNorm/Dropout would mix path images otherwise).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import nn

from igcam_fast.core.engine import CamEngine
from igcam_fast.core.quadrature import canonical_rule

__all__ = ["LayerIntegratedGradCam"]


class _ForwardModule(nn.Module):
    """forward_func as an nn.Module returning (rows, P) scores for the engine.

    Holds the layer (so that the engine finds it even when forward_func is a plain function),
    expands additional forward arguments to the rows of each forward, and flattens outputs with
    more than one dimension per example (targets of captum's tuple form index into them).
    """

    def __init__(self, forward_func: Callable, layer: nn.Module):
        super().__init__()
        if isinstance(forward_func, nn.Module):
            self.net = forward_func
        else:
            self._func = forward_func
            self.layer = layer
        self.args: tuple = ()
        self.output_shape: Optional[tuple] = None
        self.require_scalar = False  # target=None: one output per example
        self.require_2d = False  # int-like targets index the second dimension of a 2-D output

    def _function(self):
        return self.net if "net" in self._modules else self._func

    def forward(self, x):
        rows = x.shape[0]
        args = tuple(a.expand(rows, *a.shape[1:]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a
                     for a in self.args)
        out = self._function()(x, *args)
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != rows:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"forward_func must return a tensor with one row per example ({rows}), got {shape}")
        self.output_shape = tuple(out.shape[1:])
        out = out.reshape(rows, -1)
        if self.require_scalar and out.shape[1] != 1:
            raise ValueError(f"target=None needs forward_func to return one scalar per example, got output shape "
                             f"{(rows, *self.output_shape)}; give target= (as captum requires)")
        return out


class _IndexTarget:
    """Per-row callable for captum's tuple targets: the element ``index`` of the unflattened row."""

    def __init__(self, wrapper: _ForwardModule, index: tuple):
        self.wrapper, self.index = wrapper, index

    def __call__(self, row):
        out = row.reshape(self.wrapper.output_shape)[self.index]
        if out.numel() != 1:
            raise ValueError(f"target {self.index} selects {out.numel()} values of an output of shape "
                             f"{self.wrapper.output_shape} per example; it must select one")
        return out.reshape(())


def _check_tuple(t):
    if any(isinstance(i, slice) for i in t):
        raise NotImplementedError("targets with slices are not supported; select one output per example")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in t):
        raise TypeError(f"tuple targets must hold ints, got {t!r}")
    return tuple(int(i) for i in t)


class LayerIntegratedGradCam(LayerAttribution):
    """Integrated Grad-CAM at ``layer`` with captum's interface (see the module docstring).

    Args:
        forward_func: the model (or a function of the inputs and additional_forward_args).
        layer: the module whose output (N, K, h, w) is explained.
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

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True) -> torch.Tensor:
        """(N, 1, h, w) attributions at the layer's resolution, on the input's device.

        Arguments as captum's integrated layer methods: baselines None (zeros), a number, or a
        tensor of the inputs' shape or with first dimension 1; target None (scalar output), int,
        tuple, (N,) tensor, list of ints or of tuples; ``internal_batch_size`` is the number of
        path images per forward pass.
        """
        if attribute_to_layer_input:
            raise NotImplementedError("attribute_to_layer_input=True is not supported: the engine explains the "
                                      "layer's output (pass the preceding module as layer instead)")
        if not attr_dim_summation:
            raise NotImplementedError("attr_dim_summation=False (per-channel maps) is not supported: the engine "
                                      "sums the channels inside its fused kernel")
        x = self._format_inputs(inputs)
        base = self._format_baselines(baselines, x)
        wrapper = self._wrapper
        wrapper.args = self._format_args(additional_forward_args, x.shape[0])
        targets = self._format_target(target, x.shape[0])
        rule = canonical_rule(method)
        inner = wrapper._function()
        wrapper.training = inner.training if isinstance(inner, nn.Module) else False
        engine = CamEngine(wrapper, self.layer, method="igcam", rule=rule, steps=n_steps, baseline=base,
                           subtract_baseline=self.subtract_baseline, relu=self.relu_per_step, normalize=False,
                           output_size="layer", batch_rows=internal_batch_size,
                           reshape_transform=self.reshape_transform, **self.engine_options)
        try:
            maps = engine.explain(x, targets).layer_maps
        finally:
            engine.close()
            wrapper.args, wrapper.require_scalar, wrapper.require_2d = (), False, False
        if rule == "trapezoid":  # captum's trapezoid weights are 1/n (halved at the ends), ours 1/(n - 1)
            maps = maps * ((n_steps - 1) / n_steps)
        maps = maps[:, None]
        return maps.clamp(min=0) if relu_attributions else maps

    # ---- captum's argument forms -------------------------------------------------------------

    @staticmethod
    def _format_inputs(inputs) -> torch.Tensor:
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise NotImplementedError(f"several input tensors are not supported (got {len(inputs)}); "
                                          "pass one (N, C, H, W) tensor")
            inputs = inputs[0]
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
        return inputs.detach()

    @staticmethod
    def _format_baselines(baselines, x) -> torch.Tensor:
        if isinstance(baselines, tuple):
            if len(baselines) != 1:
                raise ValueError(f"one baseline per input tensor: got {len(baselines)} for 1 input")
            baselines = baselines[0]
        if baselines is None:
            return torch.zeros_like(x[0])
        if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
            return torch.full_like(x[0], float(baselines))
        if not isinstance(baselines, torch.Tensor):
            raise TypeError(f"baselines must be None, a number or a tensor, got {type(baselines).__name__}")
        b = baselines.detach().to(x.device, x.dtype)
        if b.dim() == 0:
            return torch.full_like(x[0], float(b))
        if b.dim() == x.dim() and b.shape[0] == 1:
            b = b[0]
        if b.dim() == x.dim() - 1:
            return b.expand_as(x[0]).contiguous()
        if tuple(b.shape) != tuple(x.shape):
            raise ValueError(f"baselines must have the inputs' shape {tuple(x.shape)} or a first dimension of 1, "
                             f"got {tuple(baselines.shape)}")
        return b

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
        wrapper = self._wrapper
        wrapper.require_scalar = target is None
        wrapper.require_2d = not (target is None or isinstance(target, tuple)
                                  or (isinstance(target, list) and target and isinstance(target[0], tuple)))
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
            raise ValueError(f"target tensor must have one element or shape ({batch},), got {tuple(target.shape)}")
        if isinstance(target, list):
            if len(target) != batch:
                raise ValueError(f"target list has {len(target)} entries for {batch} examples")
            if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in target):
                return [int(t) for t in target]
            if all(isinstance(t, tuple) for t in target):
                return [_IndexTarget(wrapper, _check_tuple(t)) for t in target]
            raise TypeError("a target list must hold only ints or only tuples")
        raise TypeError(f"target must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")
