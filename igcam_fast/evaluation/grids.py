"""The grid pointing game (GridPG; Böhle et al. 2021, Rao et al. CVPR 2022): localisation
without box annotations.

Four confidently classified images of four distinct classes are tiled into a 2×2 grid; for each
cell the grid is explained for that cell's class, and the score is the share of the map's
positive attribution that falls inside the cell:

    score(cell j) = Σ_{p ∈ cell j} max(L_j(p), 0) / Σ_p max(L_j(p), 0)        in [0, 1]

A map entirely inside its cell scores 1, a uniform map 1/4 (chance). An all-zero map expresses no
preference and is scored as a uniform map, 1/4 (the convention of :func:`metrics.ebpg`, which
computes the ratio); a map with NaN/inf scores NaN.

At input resolution the upsampled map smears attribution across the boundary; at layer
resolution (the CAM before upsampling) the boundary is exact when the layer's height and width
are even (a 448×448 grid of 224×224 cells gives 14×14 at a stride-32 layer):
:func:`cell_masks` refuses sizes where a cell boundary would fall inside a pixel.

Cell order everywhere: raster order, 0 = top-left, 1 = top-right, 2 = bottom-left,
3 = bottom-right.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from igcam_fast.evaluation.metrics import ebpg

__all__ = ["GridImages", "select_grid_images", "grid_arrangements", "make_grids", "cell_masks",
           "grid_pointing_game", "cells_in_top_k"]

CELLS = 4  # a 2×2 grid


@dataclass
class GridImages:
    """The images that may go into grids: indices into the candidate list, their classes and
    their confidences (each image's top-1 softmax probability on its own), most confident first."""

    indices: list[int]
    classes: list[int]
    confidences: list[float]
    rejected: dict[int, str]  # candidate index -> why it was left out


def select_grid_images(probabilities: torch.Tensor, *, min_confidence: float = 0.25) -> GridImages:
    """Choose grid images from the (N, classes) probabilities of N candidate images.

    The rule: an image qualifies when its top-1 probability is at least ``min_confidence``; of
    several qualifying images with the same top-1 class only the most confident is kept, so that
    every grid holds four distinct classes; ties in confidence go to the earlier image. The
    result is ordered by confidence, highest first.
    """
    if probabilities.dim() != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"probabilities must be (N, classes) with N >= 1, got {tuple(probabilities.shape)}")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    confidence, top = probabilities.double().max(dim=1)
    order = sorted(range(len(top)), key=lambda i: (-float(confidence[i]), i))
    chosen, seen, rejected = [], {}, {}
    for i in order:
        c, p = int(top[i]), float(confidence[i])
        if p < min_confidence:
            rejected[i] = f"top-1 probability {p:.3f} < {min_confidence}"
        elif c in seen:
            rejected[i] = f"class {c} already taken by candidate {seen[c]} (more confident)"
        else:
            seen[c] = i
            chosen.append(i)
    return GridImages(chosen, [int(top[i]) for i in chosen], [float(confidence[i]) for i in chosen], rejected)


def grid_arrangements(n_images: int, n_grids: int) -> torch.Tensor:
    """(G, 4) indices into n_images: which image sits in each cell of each grid.

    Grids take the 4-image combinations in lexicographic order; grid g shows its combination
    cyclically shifted by g mod 4 places, so that over every 4 grids each position is filled from
    each slot of the combination once (no image is always top-left). G = min(n_grids, C(n, 4)).
    """
    if n_images < CELLS:
        raise ValueError(f"a 2×2 grid needs at least {CELLS} images of distinct classes, got {n_images}")
    if n_grids < 1:
        raise ValueError(f"n_grids must be >= 1, got {n_grids}")
    rows = []
    for g, combo in enumerate(itertools.islice(itertools.combinations(range(n_images), CELLS), n_grids)):
        shift = g % CELLS
        rows.append(combo[shift:] + combo[:shift])
    return torch.tensor(rows, dtype=torch.long)


def make_grids(images: torch.Tensor, arrangements: torch.Tensor) -> torch.Tensor:
    """Tile images (N, C, S, S') into grids (G, C, 2S, 2S') following arrangements (G, 4)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, S, S'), got {tuple(images.shape)}")
    if arrangements.dim() != 2 or arrangements.shape[1] != CELLS:
        raise ValueError(f"arrangements must be (G, {CELLS}), got {tuple(arrangements.shape)}")
    cells = images[arrangements.to(images.device)]  # (G, 4, C, S, S')
    top = torch.cat([cells[:, 0], cells[:, 1]], dim=-1)
    bottom = torch.cat([cells[:, 2], cells[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def cell_masks(height: int, width: int, device=None) -> torch.Tensor:
    """(4, height, width) bool: the pixels of each cell. Both sizes must be even (exact cells)."""
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(f"a {height}×{width} map cannot be split into exact 2×2 cells (the boundary would fall "
                         "inside a pixel): use a grid whose size gives an even layer size (cells a multiple of the "
                         "layer's stride)")
    rows = torch.arange(height, device=device)[:, None] >= height // 2
    cols = torch.arange(width, device=device)[None, :] >= width // 2
    return torch.stack([~rows & ~cols, ~rows & cols, rows & ~cols, rows & cols])


def grid_pointing_game(maps: torch.Tensor) -> torch.Tensor:
    """Scores (G, 4) float64 of maps (G, 4, H, W): map [g, j] explains the class of cell j of grid g.

    Works at any resolution with even H and W (input maps or layer maps)."""
    if maps.dim() != 4 or maps.shape[1] != CELLS:
        raise ValueError(f"maps must be (G, {CELLS}, H, W), one map per cell, got {tuple(maps.shape)}")
    G, _, H, W = maps.shape
    masks = cell_masks(H, W, maps.device)
    flat_masks = masks[None].expand(G, -1, -1, -1).reshape(G * CELLS, H, W)
    return ebpg(maps.reshape(G * CELLS, H, W), flat_masks).reshape(G, CELLS)


def cells_in_top_k(logits: torch.Tensor, classes: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(G, 4) bool: whether the model ranks each cell's class among its top k on the grid.

    logits: (G, classes) of the grids; classes: (G, 4) the class of each cell."""
    if logits.dim() != 2 or classes.dim() != 2 or classes.shape[0] != logits.shape[0]:
        raise ValueError(f"logits must be (G, classes) and classes (G, 4), got {tuple(logits.shape)} and "
                         f"{tuple(classes.shape)}")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (G, k)
    return (top[:, None, :] == classes.to(top.device)[:, :, None]).any(dim=2)
