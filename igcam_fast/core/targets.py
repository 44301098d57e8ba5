"""Turning what users pass as ``targets`` into class scores.

Accepted (B = number of images):
    None                        the argmax class of each image (from the real input's logits)
    int                         the same class for every image
    [c_0, ..., c_{B-1}]         one class per image (ints or 0-d tensors)
    [[c, c', ...], ...]         several classes per image, the same number T for each image:
                                all T maps share the forward passes
    tensor (B,) or (B, T)       integer class indices
    [f_0, ..., f_{B-1}]         pytorch-grad-cam targets: callables on one output row
                                (e.g. ClassifierOutputTarget(c)); nested lists for T > 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class Targets:
    """Resolved targets: either a (B, T) index tensor or a B×T grid of callables."""

    indices: torch.Tensor | None  # (B, T) int64 on the CPU
    callables: list[list[Callable]] | None
    per_image: int  # T

    def scores(self, logits: torch.Tensor, image_slice: slice, rows_per_image: int, column: int) -> torch.Tensor:
        """Sum of the target scores of a chunk's rows (one backward gives every row's gradient).

        logits: (nb·r, classes) for images image_slice, r = rows_per_image path points each.
        """
        if self.indices is not None:
            cls = self.indices[image_slice, column].to(logits.device)
            cls = cls.repeat_interleave(rows_per_image)
            return logits.gather(1, cls[:, None]).sum()
        total = 0
        images = range(image_slice.start, image_slice.stop)
        for i, b in enumerate(images):
            fn = self.callables[b][column]
            for r in range(rows_per_image):
                total = total + fn(logits[i * rows_per_image + r])
        return total

    def check_range(self, num_classes: int) -> None:
        if self.indices is None:
            return
        bad = (self.indices < 0) | (self.indices >= num_classes)
        if bad.any():
            b, t = [int(v) for v in bad.nonzero()[0]]
            raise ValueError(f"targets: class {int(self.indices[b, t])} for image {b} is out of range "
                             f"for a model with {num_classes} outputs")


def _category_of(fn) -> int | None:
    """pytorch-grad-cam's ClassifierOutputTarget carries its class: use the fast index path."""
    if type(fn).__name__ == "ClassifierOutputTarget" and isinstance(getattr(fn, "category", None), int):
        return fn.category
    return None


def resolve_targets(targets, batch: int, argmax: Callable[[], torch.Tensor] | None = None) -> Targets:
    """Normalise ``targets`` for a batch of ``batch`` images (see the module docstring).

    argmax: called (once) when targets is None; returns the (B,) predicted classes.
    """
    if targets is None:
        if argmax is None:
            raise ValueError("targets is None but no logits are available to take the argmax")
        return Targets(argmax().detach().to("cpu", torch.int64).reshape(batch, 1), None, 1)
    if isinstance(targets, bool):
        raise TypeError("targets must be an int, a sequence, a tensor or callables, not a bool")
    if isinstance(targets, (str, bytes)):
        raise TypeError(f"targets must be class indices (ints) or callables, got the string {targets!r}; map class "
                        "names to indices first (e.g. with the model's class list)")
    if isinstance(targets, int):
        return Targets(torch.full((batch, 1), targets, dtype=torch.int64), None, 1)
    if isinstance(targets, torch.Tensor):
        if targets.dtype == torch.bool:
            raise TypeError("targets tensor is boolean: give integer class indices (torch.nonzero turns a mask into them)")
        if targets.is_floating_point() or targets.is_complex():
            raise TypeError(f"targets tensor must hold integer class indices, got {targets.dtype}")
        t = targets.detach().to("cpu", torch.int64)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != batch:
            raise ValueError(f"targets tensor must have shape ({batch},) or ({batch}, T) for {batch} images, "
                             f"got {tuple(targets.shape)}")
        return Targets(t.contiguous(), None, t.shape[1])
    if not isinstance(targets, Sequence):
        if callable(targets):
            raise TypeError("targets: give one callable per image (a list), as pytorch-grad-cam does")
        raise TypeError(f"targets must be an int, a sequence, a tensor or callables, got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(f"targets has {len(targets)} entries but the batch has {batch} images; "
                         "give one target (or one list of targets) per image")
    rows = [list(t) if isinstance(t, (list, tuple)) else [t] for t in targets]
    widths = {len(r) for r in rows}
    if len(widths) != 1 or 0 in widths:
        raise ValueError("targets: every image must have the same, non-zero number of targets, "
                         f"got {[len(r) for r in rows]}")
    flat = [v for r in rows for v in r]
    as_int = []
    for v in flat:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            v = int(v)
        if isinstance(v, int) and not isinstance(v, bool):
            as_int.append(v)
        elif _category_of(v) is not None:
            as_int.append(_category_of(v))
        elif callable(v):
            break
        else:
            raise TypeError(f"targets entries must be ints or callables, got {type(v).__name__}")
    T = widths.pop()
    if len(as_int) == len(flat):
        return Targets(torch.tensor(as_int, dtype=torch.int64).reshape(batch, T), None, T)
    if not all(callable(v) for v in flat):
        raise TypeError("targets: do not mix class indices and callables")
    return Targets(None, rows, T)
