"""The closed-form head: Grad-CAM's channel weights without a head forward or backward.

Where the target layer's output A (N, K, h, w) reaches the class scores only through global
average pooling (and flatten, identity, eval-mode dropout) and one linear layer W (classes, K),
    y_c = Σ_k W_ck · mean_ij A_kij + b_c,    so    ∂y_c/∂A_kij = W_ck / (h·w)
at every pixel and every path point, and Grad-CAM's weight w_k = mean_ij ∂y_c/∂A_kij = W_ck / (h·w). The engine
then stops each forward at the layer and takes the weights from W.

Decided conservatively from the model's own graph (``torch.fx.symbolic_trace``): the layer runs
once, and every node from its output to the model's output is one of the allowed operations, in
one chain. Anything else — a ReLU6 after EfficientNet's ``_bn1``, VGG's FC-ReLU head, a skip
connection, a model fx cannot trace — keeps the autograd path, and the reason is reported.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LinearHead:
    """The linear classifier after global average pooling of the layer's output."""

    linear: nn.Linear

    def channel_weights(self, classes: torch.Tensor, spatial: int, dtype, device) -> torch.Tensor:
        """(rows, K) Grad-CAM weights W[c] / (h·w) of the classes (rows,)."""
        weight = self.linear.weight.detach()
        return (weight[classes.to(weight.device)] / spatial).to(device=device, dtype=dtype)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features


_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, torch.nn.functional.adaptive_avg_pool2d}
_FLATTEN_FUNCTIONS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape", "squeeze", "contiguous"}
_PASS_MODULES = (nn.Identity, nn.Flatten, nn.modules.dropout._DropoutNd)

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _is_global_pool(node, modules) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
        return sorted(d % 4 if isinstance(d, int) else d for d in dims) == [2, 3]
    return False


def _is_flatten(node, modules) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, _PASS_MODULES) and not (isinstance(m, nn.modules.dropout._DropoutNd) and m.training)
    if node.op == "call_function":
        return node.target in _FLATTEN_FUNCTIONS
    return node.op == "call_method" and node.target in _FLATTEN_METHODS


def find_linear_head(model: nn.Module, layer_name: str) -> tuple[LinearHead | None, str]:
    """(head, reason): the linear head after ``layer_name`` if the closed form applies, else (None, why)."""
    # Keyed by the modules themselves too: a swapped classifier or layer is analysed afresh.
    key = (layer_name, tuple(id(m) for m in model.modules()))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        if len(per_model) >= 8:
            per_model.pop(next(iter(per_model)))
        per_model[key] = _find(model, layer_name)
    return per_model[key]


def _find(model: nn.Module, layer_name: str) -> tuple[LinearHead | None, str]:
    import torch.fx

    class _LayerIsLeaf(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return qualname == layer_name or super().is_leaf_module(m, qualname)

    try:
        graph = _LayerIsLeaf().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "cannot prove it"
        return None, f"the model cannot be traced by torch.fx ({type(err).__name__}), so the head is not analysed"
    modules = dict(model.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if len(calls) != 1:
        return None, f"layer {layer_name!r} runs {len(calls)} times in the traced graph"
    node = calls[0]
    pooled = False
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, f"the layer's output is used by {len(users)} operations after {node.name!r}"
        node = users[0]
        if node.op == "output":
            return None, "the model output is reached without a linear layer"
        if not pooled and _is_global_pool(node, modules):
            pooled = True
        elif pooled and _is_flatten(node, modules):
            pass
        elif pooled and node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            linear = modules[node.target]
            after = list(node.users)
            if len(after) == 1 and after[0].op == "output" and after[0].args[0] is node:
                return LinearHead(linear), f"global average pooling and {node.target!r}: weights W_c / (h·w)"
            return None, f"something follows the linear layer {node.target!r}"
        else:
            what = node.target if node.op != "call_module" else f"{node.target} ({type(modules[node.target]).__name__})"
            return None, f"{what!s} stands between the layer and the scores"

