"""The three annotation-free protocols run over a set of methods on one model: the grid pointing
game (:mod:`grids`), cascading parameter randomisation (:mod:`randomisation`) and deletion /
insertion (:func:`metrics.deletion_insertion`).

A method is given as an *explain function* ``explain(model, x, targets) -> (maps, layer_maps)``:
x (B, C, H, W) in model-input space, targets (B, T) class indices, maps (B, T, H, W) at input
resolution and layer_maps (B, T, h, w) before upsampling. It must build whatever it hooks on the
model it is given and remove it before returning (the randomisation passes it a model copy).

Two sanity baselines that ignore the model are provided in the same form: :func:`random_explain`
(i.i.d. uniform noise at layer resolution, the same for the same batch whatever the model) and
:func:`gaussian_explain` (a centred isotropic Gaussian, σ = a quarter of the layer's side). Both
are upsampled like the CAMs.

``limits`` caps the number of items (grids, or photos) a method sees, for methods whose cost is
K forwards per image (Score-CAM); the paired comparisons then use the items both methods have.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from igcam_fast import ops
from igcam_fast.evaluation import grids as G
from igcam_fast.evaluation import metrics as M
from igcam_fast.evaluation.randomisation import Stage, cascading_randomisation, spearman

ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[str], None]

__all__ = ["layer_size", "random_explain", "gaussian_explain", "run_grid_pointing_game", "run_randomisation",
           "run_deletion_insertion"]


def layer_size(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the layer's output for an input like x (one forward of the first image)."""
    seen = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[-2:])))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"layer {layer!r} was not called during the forward pass")
    return seen[0]


def _upsampled(layer_maps: torch.Tensor, size) -> torch.Tensor:
    B, T, h, w = layer_maps.shape
    return ops.upsample(layer_maps.reshape(B * T, h, w).contiguous(), size).reshape(B, T, *size)


def random_explain(layer: str, seed: int = 0) -> ExplainFn:
    """A map of i.i.d. U(0, 1) values at layer resolution, seeded by ``seed`` and the batch
    position only (so the same whatever model it is handed)."""
    def explain(model, x, targets):
        h, w = layer_size(model, layer, x)
        generator = torch.Generator().manual_seed(seed)
        layer_maps = torch.rand(targets.shape[0], targets.shape[1], h, w, generator=generator).to(x.device)
        return _upsampled(layer_maps, x.shape[-2:]), layer_maps
    return explain


def gaussian_explain(layer: str) -> ExplainFn:
    """A centred Gaussian exp(−r² / 2σ²), σ = side / 4, at layer resolution (model-independent)."""
    def explain(model, x, targets):
        h, w = layer_size(model, layer, x)
        ys = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) / (h / 4)
        xs = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) / (w / 4)
        bump = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / 2)
        layer_maps = bump.expand(targets.shape[0], targets.shape[1], h, w).contiguous().to(x.device)
        return _upsampled(layer_maps, x.shape[-2:]), layer_maps
    return explain


def _checked(name: str, maps: torch.Tensor) -> torch.Tensor:
    bad = M.count_invalid(maps.reshape(-1, *maps.shape[-2:]))
    if bad:
        raise FloatingPointError(f"{name} produced {bad} map(s) with NaN/inf")
    return maps


def run_grid_pointing_game(model: nn.Module, grids: torch.Tensor, cell_classes: torch.Tensor,
                           explainers: dict[str, ExplainFn], *, limits: dict[str, int] | None = None,
                           grids_per_call: int = 2, top_k: int = 5, progress: Progress | None = None) -> dict:
    """GridPG of every method on grids (G, C, 2S, 2S) whose cells hold classes (G, 4).

    Returns dict(scores={method: dict(input=(g, 4), layer=(g, 4))} float64 on the CPU, with
    g = min(G, limits[method]); in_top_k=(G, 4) bool; maps={method: (g, 4, H, W) float32}).
    """
    limits = limits or {}
    with torch.no_grad():
        in_top_k = G.cells_in_top_k(model(grids), cell_classes, top_k).cpu()
    scores, kept_maps = {}, {}
    for name, explain in explainers.items():
        n = min(grids.shape[0], limits.get(name, grids.shape[0]))
        parts_in, parts_layer, parts_maps = [], [], []
        for g0 in range(0, n, grids_per_call):
            sl = slice(g0, min(n, g0 + grids_per_call))
            maps, layer_maps = explain(model, grids[sl], cell_classes[sl])
            _checked(name, maps)
            parts_in.append(G.grid_pointing_game(maps).cpu())
            parts_layer.append(G.grid_pointing_game(layer_maps).cpu())
            parts_maps.append(maps.float().cpu())
            if progress:
                progress(f"grid pointing game: {name}")
        empty = torch.zeros(0, G.CELLS, dtype=torch.float64)
        scores[name] = dict(input=torch.cat(parts_in) if parts_in else empty,
                            layer=torch.cat(parts_layer) if parts_layer else empty)
        kept_maps[name] = torch.cat(parts_maps) if parts_maps else None
    return dict(scores=scores, in_top_k=in_top_k, maps=kept_maps)


def run_randomisation(model: nn.Module, stages: list[Stage], x: torch.Tensor, targets: torch.Tensor,
                      explainers: dict[str, ExplainFn], *, limits: dict[str, int] | None = None, seed: int = 0,
                      images_per_call: int = 4, progress: Progress | None = None) -> dict:
    """Cascading randomisation of every method on images x (N, C, H, W) for classes targets (N,).

    Returns dict(rho={method: (S, n) float64 Spearman correlations after each stage}, n =
    min(N, limits[method]); original={method: (n, H, W) maps of the unmodified model}).
    ``model`` is only read; the stages are applied to one deep copy.
    """
    limits = limits or {}
    counts = {name: min(x.shape[0], limits.get(name, x.shape[0])) for name in explainers}

    def maps_of(net, name):
        n, parts = counts[name], []
        for b0 in range(0, n, images_per_call):
            sl = slice(b0, min(n, b0 + images_per_call))
            maps, _ = explainers[name](net, x[sl], targets[sl, None])
            parts.append(_checked(name, maps)[:, 0].float().cpu())
            if progress:
                progress(f"randomisation: {name}")
        return torch.cat(parts) if parts else torch.zeros(0, *x.shape[-2:])

    original = {name: maps_of(model, name) for name in explainers}
    rho = {name: [] for name in explainers}
    for stage, randomised in cascading_randomisation(model, stages, seed):
        for name in explainers:
            maps = maps_of(randomised, name)
            rho[name].append(spearman(original[name], maps) if maps.shape[0] else torch.zeros(0, dtype=torch.float64))
    return dict(rho={name: torch.stack(r) for name, r in rho.items()}, original=original,
                stages=[s.name for s in stages])


def run_deletion_insertion(model: nn.Module, x: torch.Tensor, maps: dict[str, torch.Tensor], classes: torch.Tensor,
                           *, mean, std, steps: int = 10, substrate: str = "black", kind: str = "softmax",
                           batch_size: int = 64, progress: Progress | None = None) -> dict:
    """Deletion and insertion AUC (RISE) of each method's maps (n, H, W) on the first n images of x.

    Both in pixel space onto ``substrate`` ("black": the model's own black, (0 − mean)/std).
    Returns {method: dict(deletion=(n,), insertion=(n,), deletion_curves, insertion_curves)}, CPU float64.
    """
    out = {}
    for name, m in maps.items():
        n = m.shape[0]
        result = {}
        for mode in ("deletion", "insertion"):
            r = M.deletion_insertion(model, x[:n], m.to(x.device), classes[:n], mean=mean, std=std, mode=mode,
                                     steps=steps, substrate=substrate, kind=kind, batch_size=batch_size)
            result[mode], result[f"{mode}_curves"] = r["auc"].cpu(), r["curves"].cpu()
        out[name] = result
        if progress:
            progress(f"deletion/insertion: {name}")
    return out
