"""The demo: Grad-CAM beside Integrated Grad-CAM on real photos with a real pretrained model.

With no arguments it explains the bundled photos (scikit-image's chelsea, coffee, astronaut,
rocket) with the pretrained EfficientNet-Lite0, and writes for each photo a PNG (the photo,
the Grad-CAM overlay, the Integrated Grad-CAM overlay, a colour bar, the object's box) and the
maps as .npy, then prints a table: class, confidence, time per image of each method, and each
map's energy inside the photo's box. It also draws why-integrated-gradcam.png: a saturated unit
where Grad-CAM's map is empty and Integrated Grad-CAM's is not.

Images given on the command line that cannot be read are skipped with a message; a path that
does not exist is an error before anything runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from igcam_fast import CamEngine
from igcam_fast.commands import CommandError
from igcam_fast.commands.common import DEVICE_HELP, check_layer, default_device, load_model_or_explain, parse_device
from igcam_fast.core.preprocessing import preprocessing_of
from igcam_fast.images.overlay import BOX_LEGEND, explanation_figure
from igcam_fast.images.photos import Photo, box_mask, bundled_photos, energy_in_mask, load_image, model_input

NAME = "demo"
HELP = "explain photos with Grad-CAM and Integrated Grad-CAM side by side"
WHY_FIGURE = "why-integrated-gradcam.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="image files to explain (default: the bundled photos)")
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (pretrained, default), a torchvision architecture "
                             "(resnet50, vgg16, ... with --weights) or package.module:factory")
    parser.add_argument("--weights", help="state-dict file for the model (loaded with weights_only=True)")
    parser.add_argument("--layer", help="target layer (default: the model's usual one)")
    parser.add_argument("--steps", type=int, default=None, help="path points m (default: the library default)")
    parser.add_argument("--rule", default=None,
                        help="quadrature rule: gausslegendre (default), right (the paper's), left, middle, trapezoid")
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is printed")
    parser.add_argument("--device", default=default_device(), help=DEVICE_HELP)
    parser.add_argument("--no-why-figure", action="store_true",
                        help=f"do not draw {WHY_FIGURE} (the saturated-unit example)")


def _timed(fn, repeats, device):
    times = []
    result = None
    for _ in range(repeats + 1):  # the first run warms up (and fills the baseline cache)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times[1:]) * 1e3


def _warn(message: str) -> None:
    print(f"igcam-fast {NAME}: {message}", file=sys.stderr, flush=True)


def read_photos(paths) -> list[Photo]:
    """The photos named on the command line (the bundled ones if none): a missing path is a
    CommandError before anything runs; an unreadable file is skipped with a message."""
    if not paths:
        return bundled_photos()
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise CommandError(f"image file(s) not found: {', '.join(map(str, missing[:5]))}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    photos = []
    for p in paths:
        try:
            photos.append(Photo(Path(p).stem, load_image(p), [], ""))
        except (OSError, ValueError) as err:
            _warn(f"skipping an image: {err}")
    if not photos:
        raise CommandError(f"none of the {len(paths)} image file(s) could be read (see the messages above)")
    return photos


def run(args) -> list[dict]:
    if args.repeats < 1:
        raise CommandError(f"--repeats must be at least 1, got {args.repeats}")
    if args.steps is not None and args.steps < 1:
        raise CommandError(f"--steps must be at least 1, got {args.steps}")
    device = parse_device(args.device)
    photos = read_photos(args.images)
    print(f"loading {args.model} ...", flush=True)
    spec = load_model_or_explain(NAME, args.model, args.weights, args.layer)
    check_layer(spec)
    model = spec.model.to(device)
    pre = preprocessing_of(model)  # the model's own normalisation, also for the "black" baseline
    options = dict(mean=pre.mean, std=pre.std)
    ig_options = {k: v for k, v in (("steps", args.steps), ("rule", args.rule)) if v is not None}
    try:
        integrated = CamEngine(model, spec.layer, method="igcam", **options, **ig_options)
    except ValueError as err:  # an unknown --rule
        raise CommandError(str(err)) from None
    print(f"explaining {len(photos)} image(s) on {device} ({args.repeats} timed runs per method) ...", flush=True)
    with integrated, CamEngine(model, spec.layer, method="gradcam", **options) as grad_cam:
        rows = _explain_photos(args, spec, photos, device, grad_cam, integrated)
    print()
    print(format_table(rows, device, integrated, args.model))
    out = Path(args.out)
    print(f"\nwrote {len(rows)} PNG figures and {2 * len(rows)} .npy maps to {out}/"
          + (f" ({BOX_LEGEND})" if any(p.boxes for p in photos) else ""))
    if not args.no_why_figure:
        from igcam_fast.images.saturation import saturation_figure

        path = saturation_figure(out / WHY_FIGURE)
        print(f"wrote {path}: a saturated unit, where Grad-CAM's map is empty and Integrated Grad-CAM's is not")
    return rows


def _explain_photos(args, spec, photos, device, grad_cam, integrated) -> list[dict]:
    """Both maps of each photo's top class, timed; one figure and two .npy files per photo."""
    model = spec.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for photo in photos:
        x = model_input(photo.image, model).to(device)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)[0]
        cls = int(probs.argmax())
        g_map, g_ms = _timed(lambda: grad_cam(x, [cls]), args.repeats, device)
        i_map, i_ms = _timed(lambda: integrated(x, [cls]), args.repeats, device)
        g_map, i_map = g_map[0].cpu(), i_map[0].cpu()
        np.save(out / f"{photo.name}_gradcam.npy", g_map.numpy())
        np.save(out / f"{photo.name}_igcam.npy", i_map.numpy())
        name = spec.class_names[cls] if spec.class_names and cls < len(spec.class_names) else f"class {cls}"
        row = dict(image=photo.name, class_index=cls, confidence=float(probs[cls]), class_name=name,
                   gradcam_ms=g_ms, igcam_ms=i_ms, gradcam_in_box=float("nan"), igcam_in_box=float("nan"))
        if photo.boxes:
            mask = box_mask(photo.boxes, photo.image.shape[:2], tuple(g_map.shape))
            row["gradcam_in_box"] = energy_in_mask(g_map, mask)
            row["igcam_in_box"] = energy_in_mask(i_map, mask)
        def in_box(key):
            return f" · {row[key]:.0%} of its energy in the box" if photo.boxes else ""

        explanation_figure(
            photo.image,
            [(f"Grad-CAM\n{g_ms:.1f} ms{in_box('gradcam_in_box')}", g_map.numpy()),
             (f"Integrated Grad-CAM ({integrated.rule}, m = {integrated.steps})\n{i_ms:.1f} ms"
              f"{in_box('igcam_in_box')}", i_map.numpy())],
            out / f"{photo.name}.png",
            title=f"{photo.name}: {name} ({row['confidence']:.0%}), explained for that class",
            boxes=photo.boxes,
            caption=f"{args.model} at {spec.layer!r} on {device.type}; maps upsampled to the photo's "
                    f"{photo.image.shape[1]}×{photo.image.shape[0]} pixels")
        rows.append(row)
        print(f"  {photo.name}: {name} ({row['confidence']:.0%}); Grad-CAM {g_ms:.1f} ms, Integrated Grad-CAM "
              f"{i_ms:.1f} ms -> {out / (photo.name + '.png')}", flush=True)
    return rows


def format_table(rows, device, engine, model_name) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{model_name} at {engine.layer_name!r} on {name}; Integrated Grad-CAM: {engine.rule}, m = {engine.steps}; "
             "energy in box = share of the map's energy inside the object's box (higher is better)", "",
             "| image | class | confidence | Grad-CAM ms | IG-CAM ms | ratio | Grad-CAM energy in box | IG-CAM energy in box |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def box(v):
            return "no box" if v != v else f"{v:.3f}"  # NaN: the image has no annotated box

        lines.append(f"| {r['image']} | {r['class_name']} ({r['class_index']}) | {r['confidence']:.2f} | "
                     f"{r['gradcam_ms']:.1f} | {r['igcam_ms']:.1f} | {r['igcam_ms'] / r['gradcam_ms']:.1f}× | "
                     f"{box(r['gradcam_in_box'])} | {box(r['igcam_in_box'])} |")
    return "\n".join(lines)
