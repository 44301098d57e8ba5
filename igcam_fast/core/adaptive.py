"""Error-controlled integration of the path integral: every map with its own quadrature error.

    L = ∫_0^1 S(α) dα,   S(α) = ReLU(Σ_k w_k(α) (A_k(α) − A'_k))   (h, w) per image and target

The integral is taken with the nested Gauss–Kronrod–Patterson levels 7 → 15 → 31 → 63 of
:mod:`igcam_fast.core.quadrature`. A level contains every node of the one before (and 7 contains
3 and 1), so going one level up costs only the new nodes, and the coarser levels give the error
estimate for free. With d_n = ‖Q_n − Q_coarser‖₂ / ‖Q_n‖₂ (relative L2 of the layer map):

    estimate_n = d_n · max(1, CONTRACTION · d_n / d_coarser)

d_n is the error of the *coarser* level, reported for the finer one: where the finer level resolves
S better, it over-states the error. Where S is only piecewise smooth in α (a ReLU network's S is
piecewise linear, with kinks where a pixel's sum crosses 0, and jumps where a non-linear head's
weights switch) each doubling of the points should cut the error about 4× (2× at jumps). When the
differences shrink less than that (d_n > d_coarser / 4), the levels are not yet in that regime and
the finer level may be about as wrong as the difference: the estimate is raised by the shortfall.
The measured honesty of this estimate on real photos is in docs/quadrature-error.md.

Rounds (``integrate_nested``): every image of the batch starts at the first level; after each
level the images whose estimate is at most ``tol`` for all their targets stop, the others get the
next level's new nodes, evaluated together in one call of ``node_maps`` (the engine turns that into
forwards of up to ``batch_rows`` path images). An image that reaches the cap (``max_points``) stops
there with its estimate above ``tol``; ``NestedIntegral.converged`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from igcam_fast import ops
from igcam_fast.core.baseline import Baseline
from igcam_fast.core.layer import chunk_plan
from igcam_fast.core.quadrature import PATTERSON_LEVELS, path_nodes
from igcam_fast.core.targets import Targets

#: The first level every image gets (its estimate compares it with the 3-point level).
FIRST_POINTS = 7

#: How much each doubling of the points is expected to cut the difference of two levels at least
#: (the N^-2 rate of a rule on a kinked integrand); a smaller cut raises the estimate.
CONTRACTION = 4.0

#: The most path points an image gets when ``max_steps`` is not given.
DEFAULT_MAX_POINTS = PATTERSON_LEVELS[-1]

#: node_maps(images (n,) int64 indices into the batch, alphas (r,) float64) -> (n, r, T, h, w) maps S(α).
NodeMaps = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class NestedIntegral:
    """What :func:`integrate_nested` produced for a batch of B images with T targets each.

    maps: (B, T, h, w) Σ_i ω_i S(α_i) at each image's last level, in the dtype node_maps returned.
    error_estimate: (B, T) float64 relative L2 estimate of each map's quadrature error.
    path_points: (B,) int64 path points (= forward passes) each image got.
    converged: (B,) bool, estimate <= tol for every target (all True without a tol).
    """

    maps: torch.Tensor
    error_estimate: torch.Tensor
    path_points: torch.Tensor
    converged: torch.Tensor


def levels_up_to(max_points: int, first_points: int = FIRST_POINTS) -> list[int]:
    """The Patterson levels an image can go through, from ``first_points`` to at most ``max_points``."""
    levels = [n for n in PATTERSON_LEVELS if first_points <= n <= max_points]
    if not levels:
        raise ValueError(f"max_steps must be at least {first_points} (the first nested level), got {max_points}")
    return levels


def relative_difference(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """‖fine − coarse‖ / ‖fine‖ over the last two dims, in float64; 0 where both are 0, inf where only fine is."""
    fine, coarse = fine.double(), coarse.double()
    diff = (fine - coarse).flatten(-2).norm(dim=-1)
    size = fine.flatten(-2).norm(dim=-1)
    ratio = diff / size.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(size > 0, ratio, torch.where(diff > 0, torch.full_like(diff, float("inf")), diff * 0))


def _level_sum(values: torch.Tensor, points: int) -> torch.Tensor:
    """Σ_i ω_i values[:, i] of the level with ``points`` nodes: (n, N, T, h, w) -> (n, T, h, w), float64."""
    _, weights = path_nodes("patterson", points)
    weights = weights.to(values.device)
    return torch.tensordot(values[:, :points].double(), weights, dims=([1], [0]))


def level_estimate(values: torch.Tensor, points: int) -> torch.Tensor:
    """The estimate (n, T) of the level with ``points`` nodes from the node values (n, >= points, T, h, w).

    NaN for the 1-point level (nothing below it); without a level two below (3 points) no
    contraction check (d_n alone).
    """
    below = PATTERSON_LEVELS[:PATTERSON_LEVELS.index(points) + 1]
    if len(below) < 2:
        return torch.full(values.shape[0:1] + values.shape[2:3], float("nan"), dtype=torch.float64)
    sums = [_level_sum(values, n) for n in below[-3:]]
    difference = relative_difference(sums[-1], sums[-2])
    if len(sums) < 3:
        return difference
    previous = relative_difference(sums[-2], sums[-3])
    shortfall = CONTRACTION * difference / previous.clamp(min=torch.finfo(torch.float64).tiny)
    shortfall = torch.where(previous > 0, shortfall, torch.where(difference > 0, float("inf"), 1.0))
    return difference * shortfall.clamp(min=1.0)


def integrate_nested(node_maps: NodeMaps, batch: int, *, tol: float | None, max_points: int = DEFAULT_MAX_POINTS,
                     first_points: int = FIRST_POINTS) -> NestedIntegral:
    """Integrate each of ``batch`` images until its estimate is at most ``tol`` or it has ``max_points`` points.

    tol=None: every image goes to the largest level <= max_points (a fixed nested rule that still
    reports its estimate). Images that stop drop out of later rounds; the others' new nodes are
    asked for in one ``node_maps`` call per round.
    """
    levels = levels_up_to(max_points, first_points)
    all_alphas, _ = path_nodes("patterson", levels[-1])  # introduction order: level n is the first n
    active = torch.arange(batch)
    values = maps = estimate = points = None
    done = 0  # nodes evaluated so far for the active images
    for n in levels:
        new = node_maps(active, all_alphas[done:n])  # (len(active), n - done, T, h, w)
        if values is None:
            T, h, w = new.shape[2:]
            values = new.new_zeros(batch, levels[-1], T, h, w)
            maps = new.new_zeros(batch, T, h, w)
            estimate = torch.zeros(batch, T, dtype=torch.float64)
            points = torch.zeros(batch, dtype=torch.int64)
        index = active.to(values.device)
        values[index, done:n] = new
        done = n
        current = values[index]
        fine = _level_sum(current, n)
        maps[index] = fine.to(maps.dtype)
        estimate[active] = level_estimate(current, n).cpu()
        points[active] = n
        if tol is not None:
            active = active[~(estimate[active] <= tol).all(dim=1)]
        if active.numel() == 0:
            break
    converged = (estimate <= tol).all(dim=1) if tol is not None else torch.ones(batch, dtype=torch.bool)
    return NestedIntegral(maps, estimate, points, converged)


def integrate_engine(engine, x, baseline, baseline_features, targets, rows, head):
    """The engine's nested integration: ([layer maps (B, T, h, w)], float32-redone rows, NestedIntegral).

    With ``config.tol`` the images stop at their own level; without (``rule="patterson"``) all go
    to ``config.steps`` points. One layer per engine (the engine refuses several with tol).
    """
    config = engine.config
    stats = {"fallback": 0}

    def node_maps(images, alphas):
        maps, fallback = engine_node_maps(engine, x, baseline, baseline_features, targets, head, rows, images, alphas)
        stats["fallback"] += fallback
        return maps

    if config.tol is not None:
        result = integrate_nested(node_maps, x.shape[0], tol=config.tol,
                                  max_points=config.max_steps or DEFAULT_MAX_POINTS)
    else:  # a fixed nested level in one round, its estimate against the level below
        result = integrate_nested(node_maps, x.shape[0], tol=None, max_points=config.steps,
                                  first_points=config.steps)
    return [result.maps], stats["fallback"], result


def engine_node_maps(engine, x, baseline, baseline_features, targets, head, rows, images, alphas):
    """S(α) (n, r, T, h, w) of the images ``images`` (n,) of x at the nodes ``alphas`` (r,), and the
    path images redone in float32. One step weight makes combine return one map per path image;
    a per-image x' (and A') is taken one image at a time so that each piece shares one A'."""
    if baseline_features is not None:
        (baseline_features,) = baseline_features  # [A'] of the engine's one layer
    per_image = not baseline.shared or (baseline_features is not None and baseline_features.dim() == 4)
    groups = images.split(1) if per_image else [images]
    one = torch.ones(1, dtype=ops.accumulation_dtype(x.dtype), device=x.device)
    alphas = alphas.to(x.device, one.dtype)
    out, fallback = [], 0
    for group in groups:
        pick = group.tolist()
        features = baseline_features if not per_image or baseline_features is None else baseline_features[pick[0]]
        sub = (x[group.to(x.device)], baseline if baseline.shared else Baseline(baseline.image[pick[0]], None),
               None if features is None else [features],
               Targets(None if targets.indices is None else targets.indices[group],
                       None if targets.callables is None else [targets.callables[i] for i in pick],
                       targets.per_image))
        maps = None
        for part, steps in chunk_plan(len(pick), alphas.numel(), rows):
            for autocast in engine.precisions():
                parts = engine._chunk(*sub, part, steps, alphas[steps], one, head, autocast)
                if parts is not None:
                    (parts,), _ = parts  # the one layer's maps (no embedded rule with one weight)
                    break
                fallback += (part.stop - part.start) * (steps.stop - steps.start)
            else:
                raise ValueError(f"the activations or gradients at layer {engine.layer_name!r} contain NaN or "
                                 f"infinite values for images {pick[part.start:part.stop]} (in {x.dtype})")
            if maps is None:
                maps = parts.new_empty(len(pick), alphas.numel(), *parts.shape[1:])
            maps[part, steps] = parts.reshape(part.stop - part.start, steps.stop - steps.start, *parts.shape[1:])
        out.append(maps)
    return torch.cat(out), fallback
