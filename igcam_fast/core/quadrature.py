"""Path nodes and weights for approximating the path integral of Integrated Grad-CAM.

    L = ∫_0^1 S(α) dα  ≈  Σ_t ω_t S(α_t)

Every rule returns ``(path_nodes, step_weights)`` as float64 tensors of shape (m,), the nodes
in [0, 1] and the weights summing to 1 (so the integral of a constant is exact), except the
authors' demo preset which sums the steps instead of averaging them.

Nested rules (:data:`NESTED_RULES`) come as a family of levels whose node sets contain each
other, so a finer level reuses every path point of the coarser ones and the difference of two
levels is an error estimate that costs no extra forward pass (igcam_fast.core.adaptive).
``"patterson"`` is the Gauss–Kronrod–Patterson sequence 1, 3, 7, 15, 31, 63 (Gauss 1 → Gauss 3 →
Kronrod 7 → Patterson 15 → 31 → 63 points, exact for polynomials of degree 1, 5, 11, 23, 47, 95).
Its nodes are listed in the order they are introduced: the first n of a level are the nodes of the
level with n points.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

#: Rules accepted by :func:`path_nodes`. ``"right"`` is the paper's; ``"demo"`` the authors' code.
RULES = ("right", "left", "middle", "trapezoid", "gausslegendre", "demo", "patterson")

#: Rules whose levels are nested; their valid step counts are :data:`PATTERSON_LEVELS`.
NESTED_RULES = ("patterson",)

#: Point counts of the Gauss–Kronrod–Patterson levels. 127 is not offered: its nodes are not
#: resolved in float64 by the construction below (and 63 points are already exact to degree 95).
PATTERSON_LEVELS = (1, 3, 7, 15, 31, 63)

_RULE_ALIASES = {
    "riemann_right": "right",
    "riemann_left": "left",
    "riemann_middle": "middle",
    "midpoint": "middle",
    "riemann_trapezoid": "trapezoid",
    "gauss_legendre": "gausslegendre",
    "gl": "gausslegendre",
    "gauss_patterson": "patterson",
    "gausspatterson": "patterson",
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
    elif rule == "patterson":
        if m not in PATTERSON_LEVELS:
            raise ValueError(f"steps must be one of {PATTERSON_LEVELS} for the patterson rule (its nested levels), "
                             f"got {m}")
        nodes, weights = patterson_level(m)
        return nodes, weights
    elif rule == "demo":  # the authors' code: i/m for i = 0..m-1, summed rather than averaged
        nodes, weights = t / m, np.ones(m)
    else:  # pragma: no cover - canonical_rule already rejected it
        raise AssertionError(rule)
    return tuple(nodes.tolist()), tuple(weights.tolist())


@lru_cache(maxsize=1)
def _patterson_nodes() -> np.ndarray:
    """All 63 Patterson nodes on [-1, 1] in the order of introduction (level by level, ascending within).

    Each level adds N + 1 nodes to the N it has: the zeros of the polynomial q of degree N + 1 that is
    orthogonal to every polynomial of lower degree under the weight π(x) = Π (x − x_i) of the existing
    nodes (Patterson 1968). That makes the interpolatory rule on the union exact to degree 3N + 2.
    """
    nodes = np.zeros(0)
    while nodes.size < PATTERSON_LEVELS[-1]:
        n, p = nodes.size, nodes.size + 1
        xq, wq = np.polynomial.legendre.leggauss(2 * n + 8)  # exact for the degree-(n + 2p) products below
        weight = wq * np.prod(xq[:, None] - nodes[None, :], axis=1)
        basis = np.polynomial.legendre.legvander(xq, p)  # (quadrature points, p + 1) Legendre values
        gram = (basis[:, :p] * weight[:, None]).T @ basis[:, :p]
        rhs = -(basis[:, :p] * weight[:, None]).T @ basis[:, p]
        coef = np.append(np.linalg.solve(gram, rhs), 1.0)  # q = P_p + Σ_{j<p} c_j P_j
        roots = np.sort(np.polynomial.legendre.legroots(coef).real)
        slope = np.polynomial.legendre.legder(coef)
        for _ in range(3):  # Newton polish of the companion-matrix roots
            roots = roots - np.polynomial.legendre.legval(roots, coef) / np.polynomial.legendre.legval(roots, slope)
        roots = (roots - roots[::-1]) / 2.0  # the rule is symmetric: exact mirror images, 0 exactly
        nodes = np.concatenate([nodes, roots])
    return nodes


@lru_cache(maxsize=16)
def patterson_level(points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(nodes, weights) on [0, 1] of the Patterson level with ``points`` nodes, in introduction order."""
    if points not in PATTERSON_LEVELS:
        raise ValueError(f"the patterson levels have {PATTERSON_LEVELS} points, got {points}")
    x = _patterson_nodes()[:points]
    # Interpolatory weights: Σ_i w_i P_k(x_i) = ∫_{-1}^{1} P_k, k < points.
    moments = np.zeros(points)
    moments[0] = 2.0
    w = np.linalg.solve(np.polynomial.legendre.legvander(x, points - 1).T, moments)
    return tuple(((x + 1.0) / 2.0).tolist()), tuple((w / 2.0).tolist())


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


#: Richardson's safety factor on the embedded-rule estimate below: the estimate is this many times the
#: error the asymptotic rate predicts, so that it stays above the truth before that rate is reached.
#: 2 was measured too small for the right Riemann sum at m = 16 on the real photos (the estimate under
#: the true error for 5 and 7 of 12 maps: the two sums are not yet in the first-order regime, where
#: doubling m halves the error); 4 covers every map measured (docs/quadrature-error.md).
EMBEDDED_SAFETY = 4.0

#: Every r-th node of these rules is a coarser rule of the same kind.
_EMBEDDED = {"right": 2, "left": 2, "demo": 2, "trapezoid": 2, "middle": 3}


def embedded_rule(rule: str, steps: int) -> tuple[torch.Tensor | None, float, str]:
    """(coarse weights (m,), factor, why): the weights of the coarser rule whose nodes are a subset of
    this rule's (zero on the other nodes), and the factor that turns the relative difference d of the
    two sums into an error estimate of the finer one, ``factor · d``; or (None, 0, why not).

    Richardson: with an error ≈ C·m^-p, the finer sum's error is d / (r^p − 1) for r times fewer
    points in the coarse rule; the factor is that times :data:`EMBEDDED_SAFETY`, with p = 1 for every
    rule: the first-order end-point term of the Riemann sums, and for the trapezoid and midpoint rules
    the kinks and jumps of S (a ReLU network's S is piecewise smooth in α) that keep them from their
    smooth-integrand order at the m a user runs. Right/left Riemann sums (and the demo's) with an even
    m and the trapezoid rule with an odd m keep every other node; the midpoint rule with m divisible
    by 3 every third node. Gauss–Legendre nodes are not nested.
    """
    rule = canonical_rule(rule)
    if rule not in _EMBEDDED:
        return None, 0.0, f"none: the {rule} rule's nodes contain no coarser rule (use tol= or rule='patterson')"
    r = _EMBEDDED[rule]
    fits = steps % 2 == 1 and steps >= 3 if rule == "trapezoid" else steps % r == 0 and steps >= r
    if not fits:
        need = "an odd m of at least 3" if rule == "trapezoid" else f"m divisible by {r}"
        return None, 0.0, f"none: the {rule} rule with m = {steps} has no embedded coarser rule (it needs {need})"
    coarse_steps = (steps + 1) // 2 if rule == "trapezoid" else steps // r
    _, fine = path_nodes(rule, steps)
    _, coarse = path_nodes(rule, coarse_steps)
    # the first kept node: right sums end at 1 (t = r-1, 2r-1, ...), midpoints sit mid-cell
    first = {"right": r - 1, "middle": (r - 1) // 2}.get(rule, 0)
    weights = torch.zeros(steps, dtype=torch.float64)
    weights[torch.arange(first, steps, r)] = coarse * (fine.sum() / coarse.sum())  # the demo sums: same total
    return weights, EMBEDDED_SAFETY / (r - 1), f"embedded {rule} rule of {coarse_steps} points (Richardson, p = 1)"
