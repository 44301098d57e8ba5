"""The demo: Grad-CAM beside Integrated Grad-CAM on real photos with a real pretrained model.

With no arguments it explains the bundled photos (scikit-image's chelsea, coffee, astronaut,
rocket) with the pretrained EfficientNet-Lite0, and writes for each photo a PNG (the photo,
the Grad-CAM overlay, the Integrated Grad-CAM overlay) and the maps as .npy, then prints a table:
class, confidence, time per image of each method, and each map's energy inside the photo's box.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from igcam_fast import CamEngine
from igcam_fast.models import load_model
from igcam_fast.images.overlay import overlay, side_by_side
from igcam_fast.images.photos import Photo, box_mask, bundled_photos, energy_in_mask, load_image, to_input


NAME = "demo"
HELP = "explain photos with Grad-CAM and Integrated Grad-CAM side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="*", help="image files to explain (default: the bundled photos)")
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (pretrained, default), a torchvision architecture "
                             "(resnet50, vgg16, ...) or package.module:factory")
    parser.add_argument("--weights", help="state-dict file for the model (loaded with weights_only=True)")
    parser.add_argument("--layer", help="target layer (default: the model's usual one)")
    parser.add_argument("--steps", type=int, default=None, help="path points m (default: the library default)")
    parser.add_argument("--rule", default=None, help="quadrature rule (default: the library default)")
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is printed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


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


def run(args) -> list[dict]:
    device = torch.device(args.device)
    spec = load_model(args.model, args.weights, args.layer)
    model = spec.model.to(device)
    if args.images:
        photos = [Photo(Path(p).stem, load_image(p), [], "") for p in args.images]
    else:
        photos = bundled_photos()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(mean=spec.mean, std=spec.std)
    ig_options = {k: v for k, v in (("steps", args.steps), ("rule", args.rule)) if v is not None}
    rows = []
    with CamEngine(model, spec.layer, method="gradcam", **options) as grad_cam, \
            CamEngine(model, spec.layer, method="igcam", **options, **ig_options) as integrated:
        for photo in photos:
            x = to_input(photo.image, spec.input_size, spec.mean, spec.std).to(device)
            with torch.no_grad():
                probs = model(x).softmax(dim=1)[0]
            cls = int(probs.argmax())
            g_map, g_ms = _timed(lambda: grad_cam(x, [cls]), args.repeats, device)
            i_map, i_ms = _timed(lambda: integrated(x, [cls]), args.repeats, device)
            g_map, i_map = g_map[0].cpu(), i_map[0].cpu()
            np.save(out / f"{photo.name}_gradcam.npy", g_map.numpy())
            np.save(out / f"{photo.name}_igcam.npy", i_map.numpy())
            row = dict(image=photo.name, class_index=cls, confidence=float(probs[cls]),
                       class_name=spec.class_names[cls] if spec.class_names else str(cls),
                       gradcam_ms=g_ms, igcam_ms=i_ms, gradcam_in_box=float("nan"), igcam_in_box=float("nan"))
            if photo.boxes:
                mask = box_mask(photo.boxes, photo.image.shape[:2], tuple(g_map.shape))
                row["gradcam_in_box"] = energy_in_mask(g_map, mask)
                row["igcam_in_box"] = energy_in_mask(i_map, mask)
            sheet = side_by_side([
                (f"{photo.name}: {row['class_name']} ({row['confidence']:.0%})", overlay(photo.image, np.zeros((2, 2)), 0.0)),
                (f"Grad-CAM  {g_ms:.1f} ms", overlay(photo.image, g_map.numpy())),
                (f"Integrated Grad-CAM ({integrated.rule}, m={integrated.steps})  {i_ms:.1f} ms",
                 overlay(photo.image, i_map.numpy())),
            ], boxes=photo.boxes)
            sheet.save(out / f"{photo.name}.png")
            rows.append(row)
    print(format_table(rows, device, integrated, args.model))
    print(f"\nwrote {len(rows)} PNG overlays and {2 * len(rows)} .npy maps to {out}/")
    return rows


def format_table(rows, device, engine, model_name) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [f"{model_name} at {engine.layer_name!r} on {name}; Integrated Grad-CAM: {engine.rule}, m = {engine.steps}; "
             "energy in box = share of the map's energy inside the object's box (higher is better)", "",
             "| image | class | confidence | Grad-CAM ms | IG-CAM ms | ratio | Grad-CAM energy in box | IG-CAM energy in box |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['image']} | {r['class_name']} ({r['class_index']}) | {r['confidence']:.2f} | "
                     f"{r['gradcam_ms']:.1f} | {r['igcam_ms']:.1f} | {r['igcam_ms'] / r['gradcam_ms']:.1f}× | "
                     f"{r['gradcam_in_box']:.3f} | {r['igcam_in_box']:.3f} |")
    return "\n".join(lines)
