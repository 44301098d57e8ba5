"""The model-parameter randomisation check (Adebayo et al., "Sanity checks for saliency maps",
NeurIPS 2018): an explanation of the model must change when the model's weights are destroyed.

Cascading randomisation: the classifier is re-initialised first, then, cumulatively, the stages
before it, last first. After each stage the same images are explained for the same classes (the
classes the *original* model predicted) and the maps are compared with the original ones by
Spearman rank correlation. A method whose correlation stays near 1 is not explaining the model;
a map that does not depend on the model at all (a fixed random map, a centred Gaussian) stays at
exactly 1.

Everything happens on one ``copy.deepcopy`` of the model; the user's model is never modified
(the tests check that its state_dict is bit-identical afterwards).

Stages (:func:`cascade_stages`): the modules that own parameters, in the order one forward pass
calls them, grouped into blocks: a module named like ``layer4.2.conv1`` or ``net._blocks.15._bn2``
belongs to the block ``layer4.2`` / ``net._blocks.15`` (its name up to the first numeric part);
one without a numeric part belongs to its parent. Consecutive modules of one block form one
stage, and a stage never spans the target layer. The cascade runs from the last stage (the
classifier) backwards.

Spearman with ties and constant maps (:func:`spearman`): Pearson's correlation of the average
ranks (ties share the mean of their ranks, as scipy.stats.spearmanr). A constant map has no rank
order, so Pearson's formula is 0/0; defined here as: both maps constant → 1 (their rank vectors
are identical: the map did not change), exactly one constant → 0 (no shared order). Identical
rank orders give exactly 1, so a map that ignores the model reads as exactly unchanged.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["Stage", "cascade_stages", "randomise_modules", "cascading_randomisation", "average_ranks", "spearman",
           "randomisation_correlations"]


@dataclass
class Stage:
    """One step of the cascade: a name for tables and the dotted names of the modules it resets."""

    name: str
    modules: list[str]


def _block_of(name: str) -> str:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return ".".join(parts[:-1])


def _calls_in_order(model: nn.Module, layer_name: str, example: torch.Tensor) -> tuple[list[str], int]:
    """(names of the parameter-owning modules in the order of their first call, how many were
    called before the target layer returned)."""
    modules = dict(model.named_modules())
    if layer_name not in modules:
        raise ValueError(f"layer {layer_name!r} is not a module of the model")
    order, layer_done = [], []
    hooks = []

    def record(name):
        def hook(module, inputs, output):
            if name not in order:
                order.append(name)
        return hook

    def at_layer(module, inputs, output):
        if not layer_done:
            layer_done.append(len(order))

    try:
        for name, module in modules.items():
            if any(True for _ in module.parameters(recurse=False)):
                hooks.append(module.register_forward_hook(record(name)))
        hooks.append(modules[layer_name].register_forward_hook(at_layer))
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    if not layer_done:
        raise ValueError(f"layer {layer_name!r} was not called during the forward pass")
    return order, layer_done[0]


def cascade_stages(model: nn.Module, layer_name: str, example: torch.Tensor, max_stages: int | None = None) -> list[Stage]:
    """The cascade for ``model`` explained at ``layer_name``, last stage first (see the module
    docstring); at most ``max_stages`` stages. example: one input batch, e.g. (1, C, H, W)."""
    order, n_before = _calls_in_order(model, layer_name, example)
    groups: list[tuple[str, list[str], bool]] = []  # (block, modules, after the layer)
    for i, name in enumerate(order):
        block, after = _block_of(name), i >= n_before
        if groups and groups[-1][0] == block and groups[-1][2] == after:
            groups[-1][1].append(name)
        else:
            groups.append((block, [name], after))
    stages = []
    for block, names, _ in reversed(groups):
        numbered = bool(re.search(r"(^|\.)\d+$", block))
        stages.append(Stage(block if numbered else "+".join(names), list(names)))
    if not stages:
        raise ValueError("the model has no modules with parameters to randomise")
    return stages[:max_stages] if max_stages else stages


def randomise_modules(model: nn.Module, names: list[str], seed: int) -> None:
    """Re-initialise the named modules of ``model`` in place with their own ``reset_parameters``
    (PyTorch's initial distribution; BatchNorm also resets its running statistics), seeded."""
    modules = dict(model.named_modules())
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name in names:
            module = modules.get(name)
            if module is None:
                raise ValueError(f"randomisation stage: {name!r} is not a module of the model")
            reset = getattr(module, "reset_parameters", None)
            if not callable(reset):
                raise ValueError(f"randomisation stage: module {name!r} ({type(module).__name__}) has no "
                                 "reset_parameters(); give stages made of modules that have one")
            reset()


def cascading_randomisation(model: nn.Module, stages: list[Stage], seed: int = 0) -> Iterator[tuple[Stage, nn.Module]]:
    """Yield (stage, model copy with this stage and all earlier ones randomised), in cascade order.

    One deep copy serves the whole cascade (each stage adds to the previous); ``model`` itself is
    never touched. The copy is in eval mode."""
    randomised = copy.deepcopy(model).eval()
    for i, stage in enumerate(stages):
        randomise_modules(randomised, stage.modules, seed + i)
        yield stage, randomised


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(N, P) float64 ranks 1..P of each row, ties given the mean of their ranks."""
    N, P = values.shape
    sorted_values, order = values.sort(dim=1, stable=True)
    new_group = torch.ones(N, P, dtype=torch.bool, device=values.device)
    new_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = new_group.long().cumsum(dim=1) - 1 + torch.arange(N, device=values.device)[:, None] * P  # unique per row
    position = torch.arange(1, P + 1, device=values.device, dtype=torch.float64).expand(N, P).reshape(-1)
    flat_group = group.reshape(-1)
    first = torch.full((N * P,), float(P + 1), dtype=torch.float64, device=values.device)
    last = torch.zeros(N * P, dtype=torch.float64, device=values.device)
    first.scatter_reduce_(0, flat_group, position, reduce="amin")
    last.scatter_reduce_(0, flat_group, position, reduce="amax")
    mean_rank = ((first + last) / 2)[flat_group].reshape(N, P)
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: a, b (N, ...) -> (N,) float64.

    Constant maps: both constant → 1, exactly one → 0 (module docstring). Non-finite values → NaN."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be (N, ...) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    invalid = ~(torch.isfinite(fa).all(dim=1) & torch.isfinite(fb).all(dim=1))
    ra, rb = average_ranks(torch.nan_to_num(fa)), average_ranks(torch.nan_to_num(fb))
    same_order = (ra == rb).all(dim=1)  # exactly 1, not 1 - ulp: an unchanged map must read as unchanged
    ra, rb = ra - ra.mean(dim=1, keepdim=True), rb - rb.mean(dim=1, keepdim=True)
    na, nb = ra.norm(dim=1), rb.norm(dim=1)
    # ranks are multiples of 1/2: a non-constant row has norm >= 1/sqrt(2), so "== 0" is exact
    const_a, const_b = na == 0, nb == 0
    rho = (ra * rb).sum(dim=1) / torch.where(const_a | const_b, torch.ones_like(na), na * nb)
    rho = torch.where(const_a & const_b, torch.ones_like(rho), torch.where(const_a | const_b, torch.zeros_like(rho), rho))
    rho = torch.where(same_order, torch.ones_like(rho), rho)
    return torch.where(invalid, torch.full_like(rho, float("nan")), rho.clamp(-1, 1))


def randomisation_correlations(model: nn.Module, stages: list[Stage], x: torch.Tensor, targets: torch.Tensor,
                               explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                               *, seed: int = 0) -> torch.Tensor:
    """(S, B) Spearman correlations of explain(copy, x, targets) after each of S stages against
    explain(model, x, targets). explain returns maps (B, ...) for images x (B, C, H, W) and
    targets (B,); it must not keep hooks on the model it is given."""
    original = explain(model, x, targets)
    rows = [spearman(original, explain(randomised, x, targets)) for _, randomised in
            cascading_randomisation(model, stages, seed)]
    return torch.stack(rows)
