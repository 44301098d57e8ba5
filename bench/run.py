"""The benchmark suite's driver: what Integrated Grad-CAM costs over Grad-CAM, how many images per
second it explains, how accurate each quadrature is for its cost, where the time goes, and how
fast the kernels are — with the project's targets judged met / not met from the measured numbers.

    python -m bench.run --preset quick|full|gpu [--out bench/results] [--device cpu|cuda]
                        [--sections models,options,...] [--dry]

Writes <out>/<device>-<date>-<preset>[-<sections>].json (one row per measurement, each naming
device, versions, dtype, batch, m, rule, backend, options, median ms, IQR, images/s, peak memory)
and the same tables as markdown (.md) — rewritten after every measured group, so a run that is
stopped keeps what it measured — and prints the markdown at the end.

The presets are in presets.py, one module per section in sections/, the targets in targets.py,
the report in report.py; the timing primitives and the project's own providers (Grad-CAM,
Integrated Grad-CAM, the forward-only floor) are igcam_fast.benchmarking.timing and igcam_fast.benchmarking.latency, the
ones ``igcam-fast bench`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from igcam_fast.benchmarking.latency import PAPER
from igcam_fast.benchmarking.timing import device_slug, environment

from .common import Recorder
from .presets import PRESETS, Preset, dry_version, preset
from .report import markdown
from .sections import SECTIONS
from .targets import evaluate_targets, targets_table


def run_suite(p: Preset, device, *, sections=tuple(SECTIONS), log=None, checkpoint=None):
    """Run the preset's sections; returns (environment, rows, targets, markdown).

    checkpoint(env, rows, targets, md), when given, is called after every measured group.
    """
    device = torch.device(device)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    env = environment(device)
    rec = Recorder(env, log)
    t0 = time.perf_counter()

    def report():
        elapsed = time.perf_counter() - t0
        env["elapsed_s"] = elapsed
        try:
            env["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        except OSError:
            pass
        targets = evaluate_targets(rec.rows, device.type)
        return targets, markdown(env, p, rec.rows, targets, rec.skipped, elapsed)

    if checkpoint is not None:
        rec.checkpoint = lambda: checkpoint(env, rec.rows, *report())
    models: dict = {}
    for name in sections:
        ts = time.perf_counter()
        try:
            SECTIONS[name](p, device, rec, models)
        except Exception as err:  # one broken section must not lose the others' numbers
            rec.skip(f"section {name}", f"{type(err).__name__}: {err}")
            log(traceback.format_exc())
        log(f"  section {name}: {time.perf_counter() - ts:.1f} s")
    targets, md = report()
    return env, rec.rows, targets, md


def result_stem(env: dict, p: Preset, sections=tuple(SECTIONS)) -> str:
    subset = "" if tuple(sections) == tuple(SECTIONS) else "-" + "+".join(sections)
    return f"{device_slug(env)}-{env['date']}-{p.name}{subset}"


def write_results(out_dir: Path, env: dict, p: Preset, rows, targets, md, sections=tuple(SECTIONS)):
    """<stem>.json and <stem>.md in out_dir, each written whole to a temporary name and renamed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(env, p, sections)
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    payload = dict(environment=env, preset=p.name, sections=list(sections), paper=PAPER, target_table=targets_table(),
                   targets=targets, rows=rows)
    for path, text in ((jpath, json.dumps(payload, indent=1, default=str)), (mpath, md)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return jpath, mpath


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=tuple(PRESETS), default="quick")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda for the gpu preset, else cpu)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {tuple(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPUs)")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd forward floor (GPU)")
    ap.add_argument("--dry", action="store_true",
                    help="the preset shrunk to tiny inputs and one repeat: checks what it runs, on any device")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda (or --preset gpu) needs a visible NVIDIA GPU; --device cpu --dry checks the logic")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {tuple(SECTIONS)}")
    p = preset(args.preset)
    if args.dry:
        p = dry_version(p)
    p.compile = args.compile
    out = Path(args.out)
    env, rows, targets, md = run_suite(
        p, device, sections=sections,
        checkpoint=lambda env, rows, targets, md: write_results(out, env, p, rows, targets, md, sections))
    jpath, mpath = write_results(out, env, p, rows, targets, md, sections)
    print(md)
    print(f"\nwrote {jpath} and {mpath}", file=sys.stderr)


if __name__ == "__main__":
    main()
