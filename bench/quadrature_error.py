"""Is the quadrature error estimate honest, and is tol= cheaper than the fixed default?

    python -m bench.quadrature_error [--models lite0,resnet50] [--photos chelsea,coffee] [--classes 3]
                                     [--size 224] [--out bench/results]

For each model and layer, on the bundled real photos with the top ``--classes`` classes of each
(all classes of an image share the forwards):
  * the truth: a 128-node Gauss–Legendre layer map, forwards in float32 (``--truth-dtype float64``
    for float64 forwards; on a shared 2-core CPU one float64 forward of EfficientNet-Lite0 takes ~8 s)
  * the nested rule at each level (rule="patterson", steps 7, 15, 31; and d_n alone, without the
    contraction check) and tol=0.01: the engine's
    estimate against the true relative L2 error of every map
  * the fixed rules with embedded nodes (right Riemann m = 50, the paper's, and 16, trapezoid 17,
    midpoint 12): their Richardson estimate against the true error (``--embedded-only``: just these)
  * side by side in one run, warm (A' cached): tol=0.01 and the fixed default (Gauss–Legendre m=10),
    plus fixed Gauss–Legendre m to find the fewest points that reach tol=0.01's worst true error:
    forward passes per image (counted by a hook on the model) and seconds per image.
Writes <out>/quadrature-error-<date>.md (tables) and .json (one row per map).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

import igcam_fast
from igcam_fast.core.engine import DEFAULT_RULE, DEFAULT_STEPS, CamEngine
from igcam_fast.images.photos import bundled_photos, to_input
from igcam_fast.models import load_model

TOL = 0.01
NESTED_LEVELS = (7, 15, 31)
FIXED_SCAN = (12, 16, 24)  # Gauss–Legendre m besides the default, for the "same worst error" row
#: Fixed rules whose nodes contain a coarser rule's: they report Richardson's estimate (the paper's first).
EMBEDDED_RUNS = (("right 50 (paper)", dict(rule="right", steps=50)), ("right 16", dict(rule="right", steps=16)),
                 ("trapezoid 17", dict(rule="trapezoid", steps=17)), ("middle 12", dict(rule="middle", steps=12)))


def models(names, size):
    """(label, model, layer, mean, std) for each requested model."""
    for name in names:
        if name == "lite0":
            spec = load_model("efficientnet_lite0")
            yield "EfficientNet-Lite0 (pretrained) features", spec.model, spec.layer, spec.mean, spec.std
        elif name == "lite0_bn1":
            spec = load_model("efficientnet_lite0")
            yield "EfficientNet-Lite0 (pretrained) net._bn1", spec.model, "net._bn1", spec.mean, spec.std
        else:  # a torchvision architecture with random (seeded) weights, at the paper's layer
            torch.manual_seed(0)
            spec = load_model(name)
            yield f"{name} (random weights) {spec.layer}", spec.model, spec.layer, spec.mean, spec.std


class ForwardCounter:
    """Counts the rows (images) that go through the model's forward."""

    def __init__(self, model):
        self.rows = 0
        self._handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, inputs):
        self.rows += int(inputs[0].shape[0])

    def close(self):
        self._handle.remove()


def rel_errors(maps, truth):
    """(B, T, h, w) vs (B, T, h, w) -> (B, T) relative L2 errors in float64."""
    diff = (maps.double() - truth.double()).flatten(2).norm(dim=2)
    return diff / truth.double().flatten(2).norm(dim=2).clamp(min=1e-300)


def timed(model, layer, x, targets, counter, options):
    """(CamResult, wall seconds, process CPU seconds, forwards, each per image) of one call (A' cached)."""
    with CamEngine(model, layer, output_size="layer", **options) as engine:
        counter.rows = 0
        start, start_cpu = time.perf_counter(), time.process_time()
        result = engine.explain(x, targets)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    B = x.shape[0]
    return result, seconds / B, cpu / B, counter.rows / B


def study(label, model, layer, mean, std, photos, classes, size, truth_dtype, fixed_only=None, scan=FIXED_SCAN,
          embedded_only=False):
    x = torch.cat([to_input(p.image, size, mean, std) for p in photos])
    with torch.no_grad():
        targets = model(x).topk(classes, dim=1).indices
    common = dict(mean=mean, std=std)
    truth_model = model.to(truth_dtype)
    truth = igcam_fast.integrated_gradcam(truth_model, x.to(truth_dtype), layer, targets, rule="gausslegendre",
                                          steps=128, output_size="layer", **common).double()
    model.float()
    if truth.dim() == 3:
        truth = truth[:, None]
    igcam_fast.integrated_gradcam(model, x[:1], layer, targets[:1], steps=1, **common)  # A' into the cache
    counter = ForwardCounter(model)
    rows, cost, nested_maps = [], [], {}
    try:
        runs = [(f"patterson {n}", dict(rule="patterson", steps=n)) for n in NESTED_LEVELS]
        runs += [(f"tol={TOL}", dict(tol=TOL))]
        runs += [(f"gausslegendre {m}" + (" (default)" if m == DEFAULT_STEPS else ""),
                  dict(rule="gausslegendre", steps=m)) for m in sorted({DEFAULT_STEPS, *scan})]
        runs += list(EMBEDDED_RUNS)
        if fixed_only:  # a supplement: only these Gauss-Legendre m
            runs = [(f"gausslegendre {m}", dict(rule="gausslegendre", steps=m)) for m in fixed_only]
        if embedded_only:  # a supplement: only the fixed rules with an embedded estimate
            runs = list(EMBEDDED_RUNS)
        for name, options in runs:
            result, seconds, cpu, passes = timed(model, layer, x, targets, counter, dict(common, **options))
            maps = result.layer_maps if result.layer_maps.dim() == 4 else result.layer_maps[:, None]
            true = rel_errors(maps, truth)
            if options.get("rule") == "patterson":
                nested_maps[options["steps"]] = maps
            estimate = result.error_estimate
            for b, photo in enumerate(photos):
                for t in range(classes):
                    rows.append(dict(model=label, run=name, photo=photo.name, t=t, target=int(targets[b, t]),
                                     true_error=float(true[b, t]), points=int(result.path_points[b]),
                                     estimate=None if estimate is None else float(estimate[b, t])))
            cost.append(dict(model=label, run=name, passes_per_image=passes, seconds_per_image=seconds,
                             cpu_seconds_per_image=cpu, worst_true_error=float(true.max()),
                             mean_true_error=float(true.mean())))
            print(f"{label} | {name} | {passes:.1f} passes/img | {seconds:.2f} s/img | worst {float(true.max()):.3%}",
                  flush=True)
    finally:
        counter.close()
    return rows + plain_differences(rows, nested_maps, photos, classes), cost


def plain_differences(rows, nested_maps, photos, classes):
    """Rows for d_n alone (the difference to the level below, without the contraction check), from the
    fixed nested runs' maps: what the check adds is seen against these."""
    derived = []
    for n, coarser in zip(NESTED_LEVELS[1:], NESTED_LEVELS):
        if n not in nested_maps or coarser not in nested_maps:  # a supplement without the nested runs
            continue
        d = rel_errors(nested_maps[coarser], nested_maps[n])  # ‖Q_c − Q_n‖ / ‖Q_n‖
        for r in rows:
            if r["run"] == f"patterson {n}":
                b, t = [p.name for p in photos].index(r["photo"]), r["t"]
                derived.append(dict(r, run=f"patterson {n}, d_n alone", estimate=float(d[b, t])))
    return derived


def honesty_table(rows):
    lines = ["| model | rule | maps | est >= true | est <= tol and true > tol | ratio est/true (min–median–max) "
             "| true error (max) | points (mean) |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["run"]) for r in rows if r["estimate"] is not None})
    for model, run in keys:
        # A map that is 0 everywhere (the ReLU removes all of it, seen with random weights) is exact at
        # every level (estimate 0, error 0): counted apart, not as a success of the estimate.
        every = [r for r in rows if r["model"] == model and r["run"] == run]
        sel = [r for r in every if not r["true_error"] == r["estimate"] == 0]
        if not sel:
            continue
        ratios = sorted(r["estimate"] / r["true_error"] for r in sel if r["true_error"] > 0)
        covered = sum(r["estimate"] >= r["true_error"] for r in sel)
        broken = sum(r["estimate"] <= TOL < r["true_error"] for r in sel)
        zeros = f" (+{len(every) - len(sel)} zero maps)" if len(every) > len(sel) else ""
        lines.append(f"| {model} | {run} | {len(sel)}{zeros} | {covered}/{len(sel)} ({covered / len(sel):.0%}) | {broken} | "
                     f"{ratios[0]:.2f}–{ratios[len(ratios) // 2]:.2f}–{ratios[-1]:.2f} | "
                     f"{max(r['true_error'] for r in sel):.3%} | {sum(r['points'] for r in sel) / len(sel):.1f} |")
    return lines


def replayed(rows, tolerances=(0.02, 0.05)):
    """The stopping rule replayed on the fixed nested runs' estimates for other tolerances (not timed):
    an image stops at the first level where every target's estimate is <= tol (the engine's rule)."""
    lines = ["| model | tol | passes / image (mean) | worst true error | maps with est <= tol and true > tol "
             f"| images above tol at {NESTED_LEVELS[-1]} points (shown there; the engine goes on to 63) |",
             "|---|---|---|---|---|---|"]
    for model in sorted({r["model"] for r in rows}):
        nested = {}
        for r in rows:
            if r["model"] == model and r["run"] in {f"patterson {n}" for n in NESTED_LEVELS}:
                nested.setdefault(r["photo"], {}).setdefault(int(r["run"].split()[1]), []).append(r)
        if not nested:  # a supplement without the nested runs
            continue
        for tol in (TOL, *tolerances):
            passes, chosen, open_ = [], [], 0
            for photo, levels in nested.items():
                n = next((n for n in NESTED_LEVELS if all(r["estimate"] <= tol for r in levels[n])), None)
                open_ += n is None
                n = n or NESTED_LEVELS[-1]
                passes.append(n)
                chosen += levels[n]
            broken = sum(r["estimate"] <= tol < r["true_error"] for r in chosen)
            lines.append(f"| {model} | {tol} | {sum(passes) / len(passes):.1f} | "
                         f"{max(r['true_error'] for r in chosen):.3%} | {broken} | {open_} |")
    return lines


def write_tables(stem, rows, cost, header):
    text = header + honesty_table(rows) + ["", "## Cost, side by side (warm, A' cached)", ""]
    text += cost_table(cost) + ["", f"## The stopping rule replayed on the nested runs (levels {NESTED_LEVELS}, "
                                    "not timed)", ""] + replayed(rows)
    stem.with_suffix(".md").write_text("\n".join(text) + "\n")
    return text


def cost_table(cost):
    lines = ["| model | run | forward passes / image | wall s / image | CPU s / image | worst true error "
             "| mean true error |", "|---|---|---|---|---|---|---|"]
    for c in cost:
        lines.append(f"| {c['model']} | {c['run']} | {c['passes_per_image']:.1f} | {c['seconds_per_image']:.2f} | "
                     f"{c['cpu_seconds_per_image']:.2f} | {c['worst_true_error']:.3%} | {c['mean_true_error']:.3%} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lite0,resnet50")
    parser.add_argument("--photos", default=None, help="comma-separated bundled photos (default: all four)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--truth-dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--tag", default="cpu", help="goes into the file name")
    parser.add_argument("--fixed-only", default=None, help="comma-separated Gauss-Legendre m: run only these")
    parser.add_argument("--embedded-only", action="store_true",
                        help="run only the fixed rules with an embedded estimate (right 50 and 16, trapezoid 17, "
                             "midpoint 12)")
    parser.add_argument("--scan", default=None, help=f"comma-separated Gauss-Legendre m beside the default "
                                                      f"(default {','.join(map(str, FIXED_SCAN))})")
    parser.add_argument("--tables-from", nargs="+", default=None, metavar="JSON",
                        help="write one table from earlier runs' JSON files (no computation) to --out/--tag")
    args = parser.parse_args(argv)
    if args.tables_from:
        runs = [json.loads(Path(f).read_text()) for f in args.tables_from]
        header = [f"# Quadrature error estimate vs truth, and the cost of tol={TOL}", "",
                  "Merged from " + ", ".join(Path(f).name for f in args.tables_from) + " (see each for its photos, "
                  "classes and truth).", "", "## Estimate vs true error (relative L2 of the layer map)", ""]
        stem = Path(args.out) / f"quadrature-error-{args.tag}"
        print("\n".join(write_tables(stem, [r for run in runs for r in run["maps"]],
                                      [c for run in runs for c in run["cost"]], header)))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    photos = bundled_photos(args.photos.split(",") if args.photos else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"quadrature-error-{args.tag}-{datetime.date.today().isoformat()}"
    all_rows, all_cost = [], []
    for label, model, layer, mean, std in models(args.models.split(","), args.size):
        rows, cost = study(label, model, layer, mean, std, photos, args.classes, args.size,
                           getattr(torch, args.truth_dtype),
                           [int(m) for m in args.fixed_only.split(",")] if args.fixed_only else None,
                           tuple(int(m) for m in args.scan.split(",")) if args.scan else FIXED_SCAN,
                           embedded_only=args.embedded_only)
        all_rows += rows
        all_cost += cost
        header = [f"# Quadrature error estimate vs truth, and the cost of tol={TOL}", "",
                  f"Photos: {', '.join(p.name for p in photos)} at {args.size}x{args.size}, top {args.classes} "
                  f"classes each; truth: Gauss–Legendre 128 nodes, forwards in {args.truth_dtype}; threads "
                  f"{torch.get_num_threads()}; default {DEFAULT_RULE} m={DEFAULT_STEPS}.", "",
                  "## Estimate vs true error (relative L2 of the layer map)", ""]
        text = write_tables(stem, all_rows, all_cost, header)  # after every model: partial results survive
        stem.with_suffix(".json").write_text(json.dumps(dict(maps=all_rows, cost=all_cost), indent=1))
    print("\n".join(text))


if __name__ == "__main__":
    main()
