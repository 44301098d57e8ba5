"""Path nodes and weights for approximating the path integral of Integrated Grad-CAM.

    L = ∫_0^1 S(α) dα  ≈  Σ_t ω_t S(α_t)

Every rule returns ``(path_nodes, step_weights)`` as float64 tensors of shape (m,), the nodes
in [0, 1] and the weights summing to 1 (so the integral of a constant is exact), except the
authors' demo preset which sums the steps instead of averaging them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

#: Rules accepted by :func:`path_nodes`. ``"right"`` is the paper's; ``"demo"`` the authors' code.
RULES = ("right", "left", "middle", "trapezoid", "gausslegendre", "demo")

_RULE_ALIASES = {
    "riemann_right": "right",
    "riemann_left": "left",
    "riemann_middle": "middle",
    "midpoint": "middle",
    "riemann_trapezoid": "trapezoid",
    "gauss_legendre": "gausslegendre",
    "gl": "gausslegendre",
}


def canonical_rule(rule: str) -> str:
    """Map a rule name (captum's spellings included) to one of :data:`RULES`."""
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a string, one of {RULES}; got {type(rule).__name__}")
    name = _RULE_ALIASES.get(rule.lower(), rule.lower())
    if name not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES} (or captum's riemann_* names)")
    return name


@lru_cache(maxsize=64)
def _nodes_and_weights(rule: str, steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    m = steps
    t = np.arange(m, dtype=np.float64)
    if rule == "right":  # the paper: α_t = t/m, t = 1..m
        nodes, weights = (t + 1) / m, np.full(m, 1.0 / m)
    elif rule == "left":
        nodes, weights = t / m, np.full(m, 1.0 / m)
    elif rule == "middle":
        nodes, weights = (t + 0.5) / m, np.full(m, 1.0 / m)
    elif rule == "trapezoid":
        if m < 2:
            raise ValueError("steps must be at least 2 for the trapezoid rule (it needs both end points)")
        nodes = t / (m - 1)
        weights = np.full(m, 1.0 / (m - 1))
        weights[0] = weights[-1] = 0.5 / (m - 1)
    elif rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(m)
        nodes, weights = (x + 1.0) / 2.0, w / 2.0
    elif rule == "demo":  # the authors' code: i/m for i = 0..m-1, summed rather than averaged
        nodes, weights = t / m, np.ones(m)
    else:  # pragma: no cover - canonical_rule already rejected it
        raise AssertionError(rule)
    return tuple(nodes.tolist()), tuple(weights.tolist())


def path_nodes(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(alphas, weights)``, each a float64 tensor of shape (steps,).

    Args:
        rule: one of :data:`RULES` (captum's ``riemann_left`` etc. are accepted too).
        steps: number of path points m, at least 1 (2 for the trapezoid rule).
    """
    rule = canonical_rule(rule)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    nodes, weights = _nodes_and_weights(rule, int(steps))
    return torch.tensor(nodes, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64)
