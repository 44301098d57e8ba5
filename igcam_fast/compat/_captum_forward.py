"""The pieces of :mod:`igcam_fast.compat.captum` between captum's arguments and the engine.

``_ForwardModule`` turns captum's ``forward_func`` (packed inputs, additional arguments, any
output rank) into the (rows, P) scores the engine explains; ``_Route`` passes a layer tensor
(an output or an input of the layer) through an identity probe the engine hooks;
``check_target`` is captum's own target check with captum's messages.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from captum._utils.common import _select_targets
from torch import nn

_MULTIPLE_OUTPUTS = ("Target not provided when necessary, cannot take gradient with respect to multiple "
                     "outputs.")


class CaptumTargetError(AssertionError, ValueError):
    """captum's target errors: an AssertionError with captum's message, as captum raises it."""


class _ZeroAnchor(torch.autograd.Function):
    """0 forward, zero gradient backward: ties a tensor the output does not use into the graph,
    so that its gradient is zeros (torch.autograd.grad's ``materialize_grads``) instead of an error."""

    @staticmethod
    def forward(ctx, t):
        ctx.meta = (t.shape, t.dtype, t.device)
        return t.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, device = ctx.meta
        return torch.zeros(shape, dtype=dtype, device=device)


def check_target(output: torch.Tensor, target, examples: int) -> None:
    """captum's target check for an output with ``output.shape[1:]`` per example (N = examples)."""
    probe = torch.zeros((examples, *output.shape[1:]))
    if isinstance(target, torch.Tensor):
        target = target.cpu()
    try:
        selected = _select_targets(probe, target)
    except AssertionError as error:
        raise CaptumTargetError(str(error)) from None
    if selected[0].numel() != 1:
        raise CaptumTargetError(f"{_MULTIPLE_OUTPUTS} (forward_func returns shape {tuple(output.shape[1:])} per "
                                f"example and target={target!r} selects {selected[0].numel()} values; target=None "
                                "needs one scalar per example)")


class _Packing:
    """Several inputs (or a non-image one) as one (N, 1, 1, D) tensor, and back."""

    def __init__(self, inputs: tuple):
        self.shapes = [tuple(t.shape[1:]) for t in inputs]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    def pack(self, tensors, rows: int) -> torch.Tensor:
        flat = [t.expand(rows, *s).reshape(rows, -1) for t, s in zip(tensors, self.shapes)]
        return torch.cat(flat, dim=1)[:, None, None, :]

    def unpack(self, x: torch.Tensor) -> tuple:
        parts = torch.split(x.reshape(x.shape[0], -1), self.sizes, dim=1)
        return tuple(p.reshape(x.shape[0], *s) for p, s in zip(parts, self.shapes))


class _ForwardModule(nn.Module):
    """forward_func as an nn.Module returning (rows, P) scores for the engine.

    Holds the layer (so that the engine finds it even when forward_func is a plain function) and
    the probes (identity modules the engine explains when the tensor is not the layer's one
    output); unpacks packed inputs, expands additional forward arguments to the rows of each
    forward, checks the target once per call as captum does, and flattens outputs with more than
    one dimension per example (tuple targets index into them).
    """

    def __init__(self, forward_func: Callable, layer: nn.Module):
        super().__init__()
        if isinstance(forward_func, nn.Module):
            self.net = forward_func
        else:
            self._func = forward_func
            self.layer = layer
        self.probes = nn.ModuleList()
        self.reset()

    def reset(self):
        self.args: tuple = ()
        self.packing: Optional[_Packing] = None
        self.output_shape: Optional[tuple] = None
        self.target, self.examples, self.target_checked = None, 0, True
        self.anchored: list = []  # layer tensors tied into the output (materialize_grads)
        self.materialize = False

    def _function(self):
        return self.net if "net" in self._modules else self._func

    def forward(self, x):
        rows = x.shape[0]
        inputs = self.packing.unpack(x) if self.packing is not None else (x,)
        args = tuple(a.expand(rows, *a.shape[1:]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a
                     for a in self.args)
        self.anchored = []
        out = self._function()(*inputs, *args)
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != rows:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"forward_func must return a tensor with one row per example ({rows}), got {shape}")
        if not self.target_checked:
            check_target(out, self.target, self.examples)
            self.target_checked = True
        self.output_shape = tuple(out.shape[1:])
        out = out.reshape(rows, -1)
        if self.materialize:
            for t in self.anchored:
                if t.requires_grad:
                    out = out + _ZeroAnchor.apply(t)
        return out


class _IndexTarget:
    """Per-row callable for captum's tuple targets: the element ``index`` of the unflattened row."""

    def __init__(self, wrapper: _ForwardModule, index: tuple):
        self.wrapper, self.index = wrapper, index

    def __call__(self, row):
        out = row.reshape(self.wrapper.output_shape)[self.index]
        if out.numel() != 1:
            raise CaptumTargetError(f"target {self.index} selects {out.numel()} values of an output of shape "
                                    f"{self.wrapper.output_shape} per example; it must select one")
        return out.reshape(())


def _check_tuple(t):
    if any(isinstance(i, slice) for i in t):
        raise NotImplementedError("targets with slices are not supported; select one output per example")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in t):
        raise TypeError(f"tuple targets must hold ints, got {t!r}")
    return tuple(int(i) for i in t)


def _as_maps(t: torch.Tensor, channel: Optional[int]) -> torch.Tensor:
    """A layer tensor (N, K, *S) as the engine's (N, K', h, w): (N, K) -> (N, K, 1, 1), (N, K, L) ->
    (N, K, L, 1), more dims flattened into the last; ``channel`` keeps that channel only (K' = 1)."""
    if t.dim() < 2:
        raise ValueError(f"the layer tensor must have a channel dimension (N, K, ...), got shape {tuple(t.shape)}")
    if channel is not None:
        t = t[:, channel:channel + 1]
    if t.dim() == 2:
        return t[:, :, None, None]
    if t.dim() == 3:
        return t[..., None]
    return t.flatten(3)


class _Route:
    """Hooks on the real layer that pass its tensor ``index`` (of its outputs, or of its inputs
    with ``to_input``) through ``probe``, the module the engine explains. Removed by close()."""

    def __init__(self, wrapper: _ForwardModule, layer: nn.Module, probe: nn.Module, index: int, to_input: bool):
        self.wrapper, self.probe, self.index = wrapper, probe, index
        if to_input:
            self.handle = layer.register_forward_pre_hook(lambda m, args: self._route(args, True))
        else:
            self.handle = layer.register_forward_hook(lambda m, args, out: self._route(out, False))

    def _route(self, value, is_args: bool):
        single = isinstance(value, torch.Tensor)
        parts = [value] if single else list(value)
        parts[self.index] = self.probe(parts[self.index])
        self.wrapper.anchored.append(parts[self.index])
        return parts[0] if single and not is_args else tuple(parts)

    def close(self):
        self.handle.remove()
