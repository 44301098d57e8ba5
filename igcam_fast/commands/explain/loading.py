"""Decoding on DataLoader workers: uint8 images of the model's input size, never an exception.

Only (3, S, S) uint8 tensors cross process boundaries; normalisation happens on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from igcam_fast.evaluation.voc.dataset import object_names
from igcam_fast.images.decode import DEFAULT_MAX_PIXELS, decode_rgb8

from .discovery import DataSet


def load_image_uint8(path: str, size: int, draft: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """An image file as (3, size, size) uint8 RGB (bilinear resize, no crop, as photos.to_input);
    modes are converted by igcam_fast.images.decode's rules."""
    a = decode_rgb8(path, size, max_pixels=max_pixels, draft=draft)
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # a writable copy


def to_model_input(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised model input (same arithmetic as photos.to_input)."""
    x = images.to(torch.float32).div_(255.0)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return x.sub_(mean).div_(std)


@dataclass(frozen=True)
class DecodeOptions:
    size: int
    draft: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


class ImageDataset(torch.utils.data.Dataset):
    """Item i: (i, (3, S, S) uint8 image, error message or "", VOC labels or None). Never raises.

    voc_class_index: when given, the classes of image i's VOC annotation are read too (as indices).
    """

    def __init__(self, data: DataSet, options: DecodeOptions, voc_class_index: dict | None = None):
        self.paths = data.paths
        self.annotations = data.annotations
        self.options = options
        self.voc_class_index = voc_class_index

    def __len__(self):
        return len(self.paths)

    def _voc_labels(self, i: int) -> list[int]:
        names = object_names(self.annotations[i])
        unknown = sorted({n for n in names if n not in self.voc_class_index})
        if unknown:
            raise ValueError(f"{self.annotations[i]}: classes {unknown} are not in the class list")
        return sorted({self.voc_class_index[n] for n in names})

    def __getitem__(self, i):
        o = self.options
        try:
            image = load_image_uint8(self.paths[i], o.size, o.draft, o.max_pixels)
            labels = self._voc_labels(i) if self.voc_class_index is not None else None
            return i, image, "", labels
        except Exception as err:  # a corrupt, truncated, missing, oversized or unsupported file
            message = f"{type(err).__name__}: {err}".replace("\n", " ")
            return i, torch.zeros(3, o.size, o.size, dtype=torch.uint8), message or "error", None


def _collate(items):
    return (torch.tensor([it[0] for it in items], dtype=torch.int64), torch.stack([it[1] for it in items]),
            [it[2] for it in items], [it[3] for it in items])


def default_workers(world_size: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size if world_size > 1 else 1))
    return max(1, min(8, cores // max(1, local) - 1))


def make_loader(ctx, batches: list[list[int]]) -> torch.utils.data.DataLoader:
    """The DataLoader of a run over ``batches`` (lists of global indices, each within one shard)."""
    args = ctx.args
    class_index = {n: k for k, n in enumerate(ctx.class_names)} if ctx.targets.voc_labels else None
    dataset = ImageDataset(ctx.data, DecodeOptions(ctx.size, args.fast_decode, args.max_pixels), class_index)
    workers = args.workers if args.workers is not None else default_workers(ctx.world.size)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=ctx.world.device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False)
