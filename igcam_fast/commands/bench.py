"""Time Integrated Grad-CAM against Grad-CAM and the forward-only floor on your model and device.

    igcam-fast bench                                   # bundled EfficientNet-Lite0, CPU, batch 1
    igcam-fast bench --model resnet50 --device cuda --dtype bfloat16 --batch 16
    igcam-fast bench --model mypkg.nets:build --weights net.pt --layer body.7 --preset accurate

Grad-CAM, Integrated Grad-CAM (the default, the paper's setting, and each --preset or
--steps/--rule asked for) and the inference forward of the same path images (the floor: what
the network alone costs) are timed interleaved in one run — round-robin, so that drift of the
machine spreads over all of them — and printed side by side with their ratios. A JSON file
records the device, the versions, the git commit (in a checkout) and every setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from igcam_fast.commands import CommandError
from igcam_fast.commands.common import parse_device

NAME = "bench"
HELP = "time Integrated Grad-CAM against Grad-CAM and the forward-only floor"

DTYPES = ("float32", "float16", "bfloat16")
BUNDLED = ("efficientnet_lite0", "efficientnet-lite0")  # pretrained; other names are random torchvision weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (bundled, pretrained), a torchvision architecture (resnet50, vgg16, "
                             "...) or package.module:factory (default efficientnet_lite0)")
    parser.add_argument("--weights", default=None, help="a state-dict file for the model (loaded weights_only)")
    parser.add_argument("--layer", default=None, help="the target layer (default: the model's usual one)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="float32, or float16/bfloat16 autocast of the forward (default float32)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--input-size", type=int, default=None, help="square input size (default: the model's)")
    parser.add_argument("--preset", action="append", default=[], metavar="NAME",
                        help="also time this Integrated Grad-CAM preset (repeatable): default, accurate, paper, demo, "
                             "gradcam_minus_baseline; the default and paper settings are always timed")
    parser.add_argument("--steps", type=int, default=None, help="also time Integrated Grad-CAM with this many steps")
    parser.add_argument("--rule", default=None, help="the quadrature rule of --steps (default gausslegendre)")
    parser.add_argument("--tol", type=float, default=None,
                        help="also time Integrated Grad-CAM with each image integrated until its own estimated "
                             "quadrature error is at most TOL (e.g. 0.01); its m is the mean path points per image")
    parser.add_argument("--max-steps", type=int, default=None, help="with --tol: the most path points an image gets")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model body (the engine's compile=True), where the engine offers it")
    parser.add_argument("--cuda-graph", choices=("on", "off"), default=None,
                        help="replay each call as a CUDA graph, or not (the engine's cuda_graph=True/False; "
                             "default: the engine's choice), where the engine offers it")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each setting (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each setting first (default 1)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="where to write the results (default igcam-bench-<device>-<model>.json here)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_numbers(args) -> None:
    for name, value, least in (("--batch", args.batch, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
                               ("--input-size", args.input_size, 1), ("--steps", args.steps, 1)):
        if value is not None and value < least:
            raise CommandError(f"{name} must be at least {least}, got {value}")
    if args.max_steps is not None and args.tol is None:
        raise CommandError("--max-steps caps the path points of --tol; give --tol too")


def _settings(args):
    from igcam_fast.benchmarking.latency import comparison_settings

    try:
        return comparison_settings(args.preset, steps=args.steps, rule=args.rule, tol=args.tol,
                                   max_steps=args.max_steps)
    except (ValueError, TypeError) as err:
        text = str(err)
        what = ("--preset" if "preset" in text else "--rule" if "rule" in text else "--max-steps"
                if "max_steps" in text else "--tol" if "tol" in text else "--steps")
        raise CommandError(f"{what}: {err}") from None


def _load(args, device):
    from igcam_fast.models import load_model

    try:
        spec = load_model(args.model, weights=args.weights, layer=args.layer)
    except (ValueError, TypeError, ImportError, FileNotFoundError, AttributeError) as err:
        what = "--weights" if isinstance(err, FileNotFoundError) or "weights" in str(err) else "--model"
        raise CommandError(f"{what}: {err}") from None
    return spec, spec.model.to(device).eval()


def _inputs(spec, batch, size, device):
    """(batch, 3, size, size) seeded random pixels in model-input space; timing does not depend on content."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(batch, len(spec.mean), size, size, generator=g)
    mean, std = torch.tensor(spec.mean)[:, None, None], torch.tensor(spec.std)[:, None, None]
    return ((pixels - mean) / std).to(device)


def _engine_options(args) -> dict:
    options = {}
    if args.compile:
        options["compile"] = True
    if args.cuda_graph is not None:
        options["cuda_graph"] = args.cuda_graph == "on"
    return options


def _build(args, spec, model, x, settings, autocast):
    """The providers, each called once: a wrong layer or an unsupported dtype is a one-line error here."""
    from igcam_fast.benchmarking.latency import check_providers, close_providers, comparison_providers

    with torch.no_grad(), torch.autocast(device_type=x.device.type, dtype=autocast, enabled=autocast is not None):
        try:
            targets = model(x).argmax(1).tolist()
        except RuntimeError as err:
            raise CommandError(f"--input-size {x.shape[-1]}: the model cannot run on {tuple(x.shape)} inputs "
                               f"with --dtype {args.dtype}: {str(err).splitlines()[0]}") from None
    try:
        providers = comparison_providers(model, spec.layer, x, targets, settings, mean=spec.mean, std=spec.std,
                                         autocast=autocast, engine_options=_engine_options(args))
    except TypeError as err:
        if "keyword" in str(err) and _engine_options(args):
            flags = " ".join(f"--{k.replace('_', '-')}" for k in _engine_options(args))
            raise CommandError(f"{flags}: this version of the engine does not offer it ({err})") from None
        raise CommandError(f"--layer {spec.layer!r}: {err}") from None
    except ValueError as err:
        raise CommandError(f"--layer {spec.layer!r}: {err}") from None
    try:
        check_providers(providers)
    except (ValueError, TypeError, RuntimeError) as err:
        close_providers(providers)
        first = str(err).splitlines()[0]
        what = f"--layer {spec.layer!r}" if "layer" in first else f"--dtype {args.dtype} on {x.device}"
        raise CommandError(f"{what}: {first}") from None
    return providers


def _table(rows) -> str:
    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    head = ["setting", "m", "rule", "backend", "median ms", "IQR ms", "images/s", "× Grad-CAM", "× floor", "peak MiB"]
    lines = [[r["provider"], r["m"], r["rule"], r["backend"] or "-", f(r["median_ms"], "{:.2f}"), f(r["iqr_ms"], "{:.2f}"),
              f(r["images_per_s"], "{:.1f}"), f(r.get("x_ours_gradcam"), "{:.2f}"), f(r.get("x_floor"), "{:.3f}"),
              f(r["peak_mem_mb"], "{:.0f}")] for r in rows]
    cells = [head] + [[str(c) for c in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def run(args) -> dict:
    """Time, print the table, write the JSON; returns the JSON's content."""
    from tqdm import tqdm

    from igcam_fast.benchmarking.latency import AUTOCAST_DTYPES, PAPER, close_providers, comparison_rows
    from igcam_fast.benchmarking.timing import count_calls, environment, measure

    _check_numbers(args)
    device = parse_device(args.device)
    settings = _settings(args)
    spec, model = _load(args, device)
    size = args.input_size or spec.input_size
    autocast = AUTOCAST_DTYPES[args.dtype]
    x = _inputs(spec, args.batch, size, device)
    providers = _build(args, spec, model, x, settings, autocast)
    try:
        total = count_calls(providers, repeats=args.repeats, warmup=args.warmup)
        with tqdm(total=total, desc="igcam-fast bench", unit="call", file=sys.stderr, disable=args.no_progress,
                  leave=False) as bar:
            stats = measure(providers, device, repeats=args.repeats, warmup=args.warmup,
                            progress=lambda name: bar.update(1))
    finally:
        close_providers(providers)
    rows = comparison_rows(providers, stats, batch=args.batch)
    env = environment(device)
    settings_used = dict(model=args.model, weights=args.weights, layer=spec.layer, device=str(device), dtype=args.dtype,
                         batch=args.batch, input_size=size, presets=args.preset, steps=args.steps, rule=args.rule,
                         tol=args.tol, max_steps=args.max_steps,
                         repeats=args.repeats, warmup=args.warmup, mean=list(spec.mean), std=list(spec.std),
                         engine_options=_engine_options(args),
                         channels_last=True, interleaved=True,
                         timer="CUDA events" if device.type == "cuda" else "time.perf_counter")
    payload = dict(environment=env, settings=settings_used, paper=PAPER, rows=rows)
    path = Path(args.json or f"igcam-bench-{'cpu' if device.type == 'cpu' else 'cuda'}-{_slug(args.model)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    random_weights = args.weights is None and ":" not in args.model and args.model not in BUNDLED
    print(f"{args.model} at layer {spec.layer}{' (random weights: right for timing only)' if random_weights else ''} "
          f"on {env['device']} ({device}), {args.dtype}, batch {args.batch}, {size}×{size}; "
          f"median of {args.repeats} interleaved calls each (torch {env['torch']})")
    print(_table(rows))
    gc = next((r for r in rows if r["role"] == "gradcam"), None)
    paper = next((r for r in rows if r["role"] == "igcam_paper"), None)
    if gc and paper and gc.get("median_ms"):
        print(f"paper ({PAPER['device']}, ResNet-50, m={PAPER['steps']}): Grad-CAM {PAPER['gradcam_ms']} ms, "
              f"IG-CAM {PAPER['igcam_ms']} ms ({PAPER['ratio']}×); here the paper's setting is "
              f"{paper['x_ours_gradcam']:.2f}× Grad-CAM")
    print(f"wrote {path}", file=sys.stderr)
    return payload


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.split(":")[-1]).strip("-") or "model"
