"""The command line of ``igcam-fast explain`` and the checks of its values that need no files."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from igcam_fast.commands import CommandError
from igcam_fast.core.config import PRESETS
from igcam_fast.images.decode import DEFAULT_MAX_PIXELS

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAP_DTYPES = {"float16": np.float16, "float32": np.float32}


class ExplainError(CommandError):
    """A problem with the user's request, reported as one clear line (exit status 2)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder, ImageFolder tree, VOC folder or text file of paths")
    p.add_argument("--format", default="auto", choices=["auto", "folder", "imagefolder", "voc", "list"],
                   help="layout of --data (default: detected)")
    p.add_argument("--split", help="VOC split (ImageSets/Main/<split>.txt; default: test, val, trainval or train)")
    p.add_argument("--model", required=True,
                   help="efficientnet_lite0, a torchvision architecture (resnet50, vgg16, ...) or package.module:factory")
    p.add_argument("--weights", help="state-dict file for the model (loaded with weights_only=True)")
    p.add_argument("--num-classes", type=int, help="number of outputs of a torchvision architecture")
    p.add_argument("--layer", help="target layer (default: the model's usual one)")
    p.add_argument("--input-size", type=int, help="square input size in pixels (default: the model's)")
    p.add_argument("--classes", help="class list: a file with one name per line, or 'voc' (default: the model's)")
    p.add_argument("--targets", default="top1",
                   help="top1 (default), topk:K, all-present (VOC annotations / ImageFolder / list labels) "
                        "or a label file ('id class [class ...]' per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="igcam", choices=["igcam", "gradcam", "gradcampp"])
    p.add_argument("--preset", choices=list(PRESETS),
                   help=f"igcam preset: {', '.join(PRESETS)} (default: default, Gauss-Legendre m=10)")
    p.add_argument("--steps", type=int, help="igcam path points m (default: the library's)")
    p.add_argument("--rule", help="igcam quadrature rule (default: the library's)")
    p.add_argument("--tol", type=float,
                   help="igcam: integrate each image until its own estimated quadrature error (relative L2 of the "
                        "map) is at most TOL, e.g. 0.01 (nested Gauss-Kronrod-Patterson rounds; --preset, --steps "
                        "and --rule are then not used). Every stored map records its estimate and path points")
    p.add_argument("--max-steps", type=int, help="with --tol: the most path points an image gets (default 63)")
    p.add_argument("--baseline", default="black", choices=["black", "zeros"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="forward precision (autocast)")
    p.add_argument("--resolution", default="layer", choices=["layer", "input"],
                   help="store maps at the layer's resolution (default, compact) or the input's")
    p.add_argument("--map-dtype", default="float16", choices=list(MAP_DTYPES), help="stored map dtype")
    p.add_argument("--normalize", action="store_true", help="min-max scale each map to [0, 1] before storing")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--batch-rows", type=int, help="path images per forward (default: per device)")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="images per shard file (default 1024); part of the output's identity")
    p.add_argument("--fast-decode", action="store_true",
                   help="JPEG draft decoding (DCT downscaling before the resize): much faster on large photos, "
                        "slightly different pixels")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse (as unreadable) an image of more pixels than this (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: min(8, cores/ranks - 1), at least 1)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--overlays", action="store_true", help="also write a PNG overlay per map and an HTML index")
    p.add_argument("--compress", action="store_true", help="zip-compress shard files (smaller, slower)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results made with different settings in --out (same settings always resume)")
    p.add_argument("--log-every", type=float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default 30)")
    p.add_argument("--timeout-hours", type=float, default=24.0, help="distributed barrier timeout (default 24)")


def check_options(args) -> None:
    """Refuse values no run could use, before anything is loaded or written."""
    positive = dict(batch_size="--batch-size", shard_size="--shard-size", max_pixels="--max-pixels",
                    batch_rows="--batch-rows", input_size="--input-size", steps="--steps", num_classes="--num-classes",
                    max_steps="--max-steps")
    for name, flag in positive.items():
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ExplainError(f"{flag} must be a positive integer, got {value}")
    if args.workers is not None and args.workers < 0:
        raise ExplainError(f"--workers must be 0 (decode in the main process) or more, got {args.workers}")
    if args.tol is not None and args.method != "igcam":
        raise ExplainError(f"--tol applies to Integrated Grad-CAM's path integral; --method {args.method} is one point")
    if args.tol is not None and (args.preset or args.steps or args.rule):
        raise ExplainError("--tol chooses each image's path points itself: drop --preset, --steps and --rule")
    if args.max_steps is not None and args.tol is None:
        raise ExplainError("--max-steps caps the path points of --tol; give --tol too (or use --steps)")
    if not args.log_every > 0 or not args.timeout_hours > 0:
        raise ExplainError("--log-every and --timeout-hours must be positive")
