"""The main loop: batches of one rank's shards through the model and the engine, shard by shard."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from igcam_fast import results as rio

from .context import RunContext
from .loading import make_loader, to_model_input
from .options import DTYPES, MAP_DTYPES, ExplainError
from .progress import Progress, log
from .report import write_overlay

# For tests: sleep this long after each batch, so a run can be killed half-way reliably.
TEST_DELAY_ENV = "IGCAM_FAST_TEST_BATCH_DELAY"


@dataclass
class RunStats:
    """What this rank did in this run."""

    explained: int = 0
    failed: int = 0
    no_target: int = 0
    maps: int = 0

    def as_list(self) -> list[float]:
        return [self.explained, self.failed, self.no_target, self.maps]


@dataclass
class Batch:
    """One loader batch: global indices (B,), uint8 images (B, 3, S, S), per-image errors and VOC labels."""

    index: torch.Tensor
    images: torch.Tensor
    errors: list[str]
    labels: list
    good: list[int] = field(init=False)

    def __post_init__(self):
        self.good = [j for j, e in enumerate(self.errors) if not e]


def plan_batches(ctx: RunContext, shards: list[int]) -> list[list[int]]:
    """Batches of at most --batch-size global indices, each within one shard, shards in order."""
    batches = []
    for k in shards:
        lo, hi = ctx.shard_range(k)
        batches.extend(list(range(b, min(hi, b + ctx.args.batch_size))) for b in range(lo, hi, ctx.args.batch_size))
    return batches


def explain_shards(ctx: RunContext, shards: list[int]) -> RunStats:
    """Explain and write ``shards`` (this rank's share); returns what was done."""
    batches = plan_batches(ctx, shards)
    stats = RunStats()
    if not batches:
        return stats
    map_dtype = MAP_DTYPES[ctx.args.map_dtype]
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    progress = Progress(sum(len(b) for b in batches), ctx.world, ctx.args.log_every)
    current, stamp = None, None  # the shard being filled, and its inputs' stamp taken when it was started
    try:
        for index, images, errors, labels in make_loader(ctx, batches):
            batch = Batch(index, images, errors, labels)
            k = int(index[0]) // ctx.shard_size
            if current is None or current.k != k:
                if current is not None:
                    rio.write_shard(ctx.out, current, stamp, map_dtype, ctx.args.compress)
                current, stamp = rio.ShardBuffer(k), ctx.stamp(k)
            _record_failures(ctx, batch, current)
            if batch.good:
                _explain_batch(ctx, batch, current, stats)
            stats.failed += len(errors) - len(batch.good)
            progress.update(len(errors), len(errors) - len(batch.good))
            if delay:
                time.sleep(delay)
        if current is not None:
            rio.write_shard(ctx.out, current, stamp, map_dtype, ctx.args.compress)
    finally:
        progress.close()
    return stats


def _record_failures(ctx: RunContext, batch: Batch, shard: rio.ShardBuffer) -> None:
    for j, error in enumerate(batch.errors):
        if not error:
            continue
        i = int(batch.index[j])
        if ctx.args.strict:
            raise ExplainError(f"unreadable image {ctx.data.paths[i]}: {error} (--strict)")
        log(f"skipped unreadable image {ctx.data.paths[i]}: {error}", ctx.world, all_ranks=True)
        shard.failed.append((i, ctx.data.ids[i], error))


def _targets_of(ctx: RunContext, logits: torch.Tensor, idx: list[int], voc_labels: list) -> list[list[int]]:
    """Per image of the batch: its classes to explain (may be empty)."""
    plan = ctx.targets
    if plan.kind == "top":
        k = min(plan.topk, logits.shape[1])
        return logits.topk(k, dim=1).indices.cpu().tolist() if k > 1 else logits.argmax(1, keepdim=True).cpu().tolist()
    if plan.labels_of is not None:
        return [list(dict.fromkeys(plan.labels_of[i])) for i in idx]
    return [labels or [] for labels in voc_labels]  # VOC annotations read on the workers


def _explain_batch(ctx: RunContext, batch: Batch, shard: rio.ShardBuffer, stats: RunStats) -> None:
    device, model, data = ctx.world.device, ctx.spec.model, ctx.data
    sel = torch.tensor(batch.good)
    idx = batch.index[sel].tolist()
    u8 = batch.images[sel] if len(batch.good) != len(batch.index) else batch.images
    x = to_model_input(u8.to(device, non_blocking=True), ctx.spec.mean, ctx.spec.std)
    autocast = DTYPES[ctx.args.dtype]
    with torch.no_grad(), (torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()):
        logits = model(x).float()
    per_image = _targets_of(ctx, logits, idx, [batch.labels[j] for j in batch.good])
    for i, cls in zip(idx, per_image):
        bad = [c for c in cls if not 0 <= c < logits.shape[1]]
        if bad:
            raise ExplainError(f"image {data.ids[i]}: target class {bad[0]} is out of range for a model with "
                               f"{logits.shape[1]} outputs")
    keep = [r for r, cls in enumerate(per_image) if cls]
    stats.explained += len(idx)
    shard.images.extend(idx)
    stats.no_target += len(idx) - len(keep)
    if not keep:
        return
    if len(keep) != len(idx):
        x, logits, u8 = x[keep], logits[keep], u8[keep]
        idx = [idx[r] for r in keep]
        per_image = [per_image[r] for r in keep]
    width = max(len(c) for c in per_image)
    padded = [c + [c[0]] * (width - len(c)) for c in per_image]  # the same T for every image of the call
    result = ctx.engine.explain(x, padded)
    maps = result.maps if width > 1 else result.maps[:, None]
    maps = maps.to(torch.float16 if ctx.args.map_dtype == "float16" else torch.float32).cpu().numpy()
    estimates = (result.error_estimate.cpu().numpy() if result.error_estimate is not None
                 else np.full((len(idx), width), np.nan))
    points = result.path_points.cpu().numpy()
    probs = logits.softmax(dim=1).cpu().numpy()
    logits_np = logits.cpu().numpy()
    for r, (i, cls) in enumerate(zip(idx, per_image)):
        for t, c in enumerate(cls):
            shard.add_row(i, data.ids[i], c, logits_np[r, c], probs[r, c], maps[r, t], float(estimates[r, t]),
                          int(points[r]))
            if ctx.args.overlays:
                write_overlay(ctx.out, u8[r], maps[r, t], i, c, ctx.shard_size)
    stats.maps += sum(len(c) for c in per_image)
