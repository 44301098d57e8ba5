"""The methods the engine runs: what differs between them is where on the path they look and how
gradients become channel weights; everything else (forward passes, the head, combine, upsample)
is the engine's.

    Integrated Grad-CAM   walks the path γ(α) = x' + α (x − x') at the quadrature's nodes;
                          w_k(α) = mean_ij ∂y/∂A_kij(α)
    Grad-CAM              one point, α = 1 (the input itself); the same weights
    Grad-CAM++            one point, α = 1; pytorch-grad-cam's closed-form weights

A new method is a subclass with its ``name``, ``walks_path`` and ``weight_mode`` (a weight mode of
:func:`igcam_fast.ops.combine`), added to :data:`METHODS`.
"""

from __future__ import annotations

import torch

from igcam_fast.core.quadrature import path_nodes


class Method:
    """One explanation method over the engine's pipeline."""

    name: str = ""
    #: True: the path from the baseline is walked; False: one point, the input itself (α = 1).
    walks_path: bool = False
    #: How the gradients at the layer become channel weights (a weight mode of ops.combine).
    weight_mode: str = "gradcam"

    def path(self, rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, ω_t), float64 tensors of shape (m,): the path points and their weights."""
        if not self.walks_path:
            return torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        return path_nodes(rule, steps)

    @property
    def gradients_are_linear_in_head_weights(self) -> bool:
        """Whether the channel weights are the spatial mean of the gradient: then, for a GAP +
        linear head, they are W_c / (h·w) and need no backward (see igcam_fast.core.head)."""
        return self.weight_mode == "gradcam"

    def __repr__(self) -> str:
        return f"<method {self.name}>"


class IntegratedGradCAM(Method):
    name = "igcam"
    walks_path = True


class GradCAM(Method):
    name = "gradcam"


class GradCAMPlusPlus(Method):
    name = "gradcampp"
    weight_mode = "gradcampp"


METHODS: dict[str, Method] = {m.name: m for m in (IntegratedGradCAM(), GradCAM(), GradCAMPlusPlus())}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]
