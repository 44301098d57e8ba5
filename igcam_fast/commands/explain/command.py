"""One run of ``explain``, start to end: lock, context, output folder, verified resume, loop, manifest."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from igcam_fast import results as rio

from .context import RunContext, build_context
from .folder import claim_folder, has_own_overlays, prepare_output
from .lock import OutputLock
from .loop import RunStats, explain_shards
from .options import ExplainError, check_options
from .progress import log
from .report import write_html
from .targets import parse_targets
from .world import World, init_world


def run(args) -> dict:
    """The command's entry point: a summary dict, or one error line and exit status 2."""
    try:
        return _run(args)
    except ExplainError as err:
        print(f"igcam-fast explain: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _run(args) -> dict:
    t_start = time.perf_counter()
    check_options(args)
    parse_targets(args.targets)  # a malformed --targets is refused before anything starts
    world = init_world(args.device, args.timeout_hours)
    lock = OutputLock(Path(args.out)) if world.rank == 0 else None
    try:
        return _explain(args, world, lock, t_start)
    finally:
        if lock is not None:
            lock.release()
        world.close()


def _on_rank0_then_agree(world: World, step) -> None:
    """Run ``step()`` on rank 0; every rank then stops (exit 2) if it refused, or goes on."""
    refusal = None
    if world.rank == 0:
        try:
            step()
        except ExplainError as err:
            refusal = err
    if world.broadcast_flag(int(refusal is not None)):
        if refusal is not None:
            raise refusal
        raise SystemExit(2)


def _claim(args, lock: OutputLock, world: World) -> None:
    claim_folder(Path(args.out))
    note = lock.acquire()
    if note:
        log(note, world)


def _explain(args, world: World, lock: OutputLock | None, t_start: float) -> dict:
    # everything that can be checked is checked before DIR is touched; then rank 0 takes the folder
    # and its lock, and the others wait on the broadcast
    ctx = build_context(args, world)
    try:
        _on_rank0_then_agree(world, lambda: _claim(args, lock, world))
        _on_rank0_then_agree(world, lambda: prepare_output(ctx.out, ctx.header(), args.overwrite,
                                                           lambda m: log(m, world)))
        finished = verify_finished(ctx)
        done = set(finished)
        pending = [k for k in range(ctx.n_shards) if k not in done]
        mine = pending[world.rank::world.size]
        log(f"{len(ctx.data)} images ({ctx.data.kind} {ctx.data.root}) in {ctx.n_shards} shards of "
            f"{ctx.shard_size}; {len(finished)} finished shards skipped; {len(pending)} to do over "
            f"{world.size} rank(s)", world)
        if world.size > 1:
            images = sum(min(len(ctx.data), (k + 1) * ctx.shard_size) - k * ctx.shard_size for k in mine)
            log(f"{len(mine)} shards, {images} images on {world.device}", world, all_ranks=True)
        stats = explain_shards(ctx, mine)
    finally:
        ctx.engine.close()
    return _finish(ctx, stats, len(finished), t_start)


def verify_finished(ctx: RunContext) -> list[int]:
    """The shards already finished and sound (every rank checks a share; all ranks get the same list).

    A shard is finished when its checksum sidecar matches its bytes and it holds exactly the
    expected images (index and ids) made with these settings from unchanged files; any other
    shard is redone (and said so when a file was there).
    """
    world = ctx.world
    flags = [0.0] * ctx.n_shards
    for k in range(world.rank, ctx.n_shards, world.size):
        if not (ctx.out / rio.shard_name(k)).is_file():
            continue  # never written: nothing to check (and no need to look at its images)
        reason = rio.verify_shard(ctx.out, ctx.expectation(k))
        if reason is None:
            flags[k] = 1.0
        else:
            log(f"shard {k} will be redone: {reason}", world, all_ranks=True)
    flags = world.all_sum(flags)  # also a barrier: nobody writes before everyone has looked
    return [k for k, flag in enumerate(flags) if flag > 0.5]


def _finish(ctx: RunContext, stats: RunStats, skipped: int, t_start: float) -> dict:
    world = ctx.world
    run_explained, run_failed, _, run_maps = world.all_sum(stats.as_list())
    world.barrier()  # every shard is on disk
    summary = {}
    if world.rank == 0:
        overlays = ctx.args.overlays or has_own_overlays(ctx.out)
        manifest = rio.write_manifest(ctx.out, ctx.header(), len(ctx.data), ctx.shard_size, overlays)
        if manifest["overlays"]:
            write_html(ctx.out, manifest, ctx.class_names, lambda m: log(m, world))
        elapsed = time.perf_counter() - t_start
        t = manifest["totals"]
        summary = dict(run_explained=int(run_explained), run_failed=int(run_failed), run_maps=int(run_maps),
                       skipped_shards=skipped, seconds=elapsed, **t)
        rate = run_explained / elapsed if elapsed > 0 else 0.0
        log(f"done in {elapsed:.1f} s: this run explained {int(run_explained)} images ({rate:.1f} images/s overall, "
            f"{int(run_failed)} unreadable), skipped {skipped} finished shards; "
            f"{ctx.out} now holds {t['maps']} maps of {t['explained']} images, {t['failed']} unreadable, "
            f"{t['no_target']} without targets, of {t['images']} ({'complete' if manifest['complete'] else 'INCOMPLETE'})",
            world)
    world.barrier()
    return summary
