"""The evaluation benchmark that runs without PASCAL VOC: one command,

    python -m igcam_fast.commands.evaluate_synthetic          (or: igcam-fast evaluate-synthetic)

1. generates the synthetic VOC-layout digits data set (igcam_fast.evaluation.voc.synthetic), cached;
2. trains the VGG-style and the ResNet-style multi-label classifiers on it (seeded, cached) and
   reports their test mAP;
3. runs the very same evaluation as ``igcam-fast evaluate`` on each (its command line is printed,
   so it can be re-run);
4. runs the real-photo sanity set: the pretrained EfficientNet-Lite0 on the bundled photos with
   their hand-measured object boxes, explaining each photo's top-1 class, per image and averaged;
and writes everything to --out (summary.md, summary.json and one folder per model).
"""

from __future__ import annotations

import argparse
import sys
import json
import math
import statistics
import time
from pathlib import Path

import torch

from igcam_fast.evaluation import metrics as Mx
from igcam_fast.core.engine import CamEngine
from igcam_fast.commands import CommandError, run_with_argv
from igcam_fast.commands.common import DEVICE_HELP, default_device, parse_device
from igcam_fast.commands.evaluate import command_line, evaluate_voc
from igcam_fast.evaluation.protocol import DEFAULT_METHODS, build_explainer, format_table, method_label, parse_methods
from igcam_fast.evaluation.voc import synthetic as S

NAME = "evaluate-synthetic"
HELP = "the evaluation benchmark on a generated VOC-layout data set and real photos"


ALL_METHODS = "gradcam,gradcampp,igcam,igcam_paper,gradcam_minus_baseline,scorecam,ablationcam"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/evaluate_synthetic", help="output folder")
    parser.add_argument("--cache", help="cache folder for the data set and weights "
                                        "(default: $IGCAM_FAST_CACHE or ~/.cache/igcam_fast, + /synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set and the training (default 0)")
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--test", type=int, default=200, help="test images (default 200)")
    parser.add_argument("--epochs", type=int, default=16, help="training epochs (default 16)")
    parser.add_argument("--methods", default=ALL_METHODS, help=f"methods (default: {ALL_METHODS})")
    parser.add_argument("--photo-methods", default=DEFAULT_METHODS,
                        help="methods for the real-photo set (default: all but igcam_paper)")
    parser.add_argument("--no-photos", action="store_true", help="skip the real-photo sanity set")
    parser.add_argument("--deletion-insertion", action="store_true", help="also deletion/insertion AUC")
    parser.add_argument("--device", default=default_device(), help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def photo_sanity(methods, device="cpu", repeats: int = 1) -> dict:
    """EfficientNet-Lite0 on the bundled photos: each photo's top-1 class, its box as the mask."""
    from igcam_fast.core.preprocessing import preprocessing_of
    from igcam_fast.images.photos import box_mask, bundled_photos, model_input
    from igcam_fast.models import load_model

    spec = load_model("efficientnet_lite0")
    device = torch.device(device)
    model = spec.model.to(device)
    pre = preprocessing_of(model)  # EfficientNet-Lite0's (x − 127)/128, also for the "black" baseline
    rows = []
    size = (spec.input_size, spec.input_size)
    tolerance = 15.0
    explainers = {m: build_explainer(m, model, spec.layer, mean=pre.mean, std=pre.std) for m in methods}
    try:
        for photo in bundled_photos():
            x = model_input(photo.image, model).to(device)
            with torch.no_grad():
                probs = model(x).softmax(dim=1)[0]
            cls = int(probs.argmax())
            mask = box_mask(photo.boxes, photo.image.shape[:2], size).to(device)[None]
            for m, explainer in explainers.items():
                if isinstance(explainer, CamEngine):  # warm-up (fills the baseline cache); the others are
                    explainer.explain(x, [cls])  # hundreds of forwards each: one call is timed as it is
                times = []
                for _ in range(repeats):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    maps = explainer.explain(x, [cls]).maps
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - t0)
                maps = maps.float()
                row = dict(image=photo.name, expected=photo.expected, class_index=cls,
                           class_name=spec.class_names[cls] if spec.class_names else str(cls),
                           confidence=float(probs[cls]), method=m, label=method_label(m, explainer),
                           ebpg=100 * Mx.ebpg(maps, mask).item(), bbox=100 * Mx.bbox_score(maps, mask).item(),
                           pointing=100 * Mx.pointing_game(maps, mask, tolerance).item(),
                           chance=100 * float(mask.double().mean()), ms=statistics.median(times) * 1e3)
                for protocol in ("top15", "soft"):
                    r = Mx.drop_increase(model, x, maps, [cls], mean=pre.mean, std=pre.std, protocol=protocol,
                                         kind="softmax")
                    row[f"drop_{protocol}"] = r["drop"].item()
                    row[f"increase_{protocol}"] = 100 * r["increase"].item()
                rows.append(row)
    finally:
        for e in explainers.values():
            e.close()
    return dict(rows=rows, methods=list(methods), model="efficientnet_lite0", layer=spec.layer,
                device=str(device), threads=torch.get_num_threads())


def format_photo_tables(result: dict) -> str:
    keys = ["ebpg", "bbox", "pointing", "drop_top15", "increase_top15", "drop_soft", "increase_soft"]
    head = "| EBPG ↑ | Bbox ↑ | PG ↑ | Drop% top15 ↓ | Inc% top15 ↑ | Drop% soft ↓ | Inc% soft ↑ | ms / image |"
    lines = ["Per image (EfficientNet-Lite0, softmax confidence, top-1 class explained; chance = box area share):",
             "", "| image | class (conf.) | chance | method " + head, "|---" * 12 + "|"]
    for r in result["rows"]:
        lines.append(f"| {r['image']} | {r['class_name']} ({r['confidence']:.2f}) | {r['chance']:.1f} | {r['label']} | "
                     + " | ".join(f"{r[k]:.1f}" for k in keys) + f" | {r['ms']:.0f} |")
    lines += ["", f"Averaged over the {len({r['image'] for r in result['rows']})} photos:", "",
              "| method " + head, "|---" * 9 + "|"]
    for m in result["methods"]:
        rs = [r for r in result["rows"] if r["method"] == m]
        lines.append(f"| {rs[0]['label']} | " + " | ".join(f"{statistics.fmean(r[k] for r in rs):.1f}" for k in keys)
                     + f" | {statistics.fmean(r['ms'] for r in rs):.0f} |")
    return "\n".join(lines)


def _methods(flag: str, text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as err:
        raise CommandError(f"{flag}: {err}") from None


def run(args) -> dict:
    methods = ",".join(_methods("--methods", args.methods))
    photo_methods = None if args.no_photos else _methods("--photo-methods", args.photo_methods)
    for flag, value in (("--train", args.train), ("--test", args.test), ("--epochs", args.epochs)):
        if value < 1:
            raise CommandError(f"{flag} must be at least 1, got {value}")
    device = parse_device(args.device)
    if args.cache and Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise CommandError(f"--cache {args.cache} is a file, not a folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    root = S.ensure_dataset(seed=args.seed, n_train=args.train, n_test=args.test, cache=args.cache)
    print(f"data set: {root}")
    summary = dict(dataset=str(root), seed=args.seed, train=args.train, test=args.test, epochs=args.epochs, models={})
    sections = []
    for arch in S.ARCHITECTURES:
        weights, info = S.ensure_trained(arch, root, epochs=args.epochs, seed=args.seed, cache=args.cache)
        options = dict(voc=str(root), split="test", model=f"igcam_fast.evaluation.voc.synthetic:{arch}",
                       weights=str(weights), methods=methods, out=str(out / arch), device=str(device),
                       title=f"{arch} (test mAP {info['test_mAP']:.3f}), synthetic digits VOC test split",
                       deletion_insertion=args.deletion_insertion, progress=not args.no_progress)
        print(f"\n$ {command_line(options)}")
        result = evaluate_voc(**options)
        result["training"] = info
        summary["models"][arch] = result
        chance = _chance(root)
        sections.append(format_table(result, f"### {arch}: test mAP {info['test_mAP']:.3f} "
                                     f"(trained {info['epochs']} epochs in {info['train_seconds']:.0f} s, "
                                     f"{info['threads']} threads)", references=False)
                        + f"\n\nChance level (a uniform map) for EBPG and Bbox on this split: {chance:.2f}.")
        summary["models"][arch]["chance_ebpg"] = chance
    if photo_methods:
        print("\nreal-photo sanity set (EfficientNet-Lite0) ...")
        photos = photo_sanity(photo_methods, device)
        summary["photos"] = photos
        sections.append("### Real photos: EfficientNet-Lite0 (hand-measured object boxes)\n\n"
                        + format_photo_tables(photos))
    summary["seconds"] = time.perf_counter() - started
    text = "\n\n".join(sections)
    from igcam_fast.evaluation.protocol import PUBLISHED

    text += ("\n\nPublished reference figures (SISE paper, AAAI 2021; PASCAL VOC 2007 test with real VGG16/ResNet-50; "
             "NOT comparable to the synthetic data set, listed for orientation):\n\n"
             "| model | method | EBPG | Bbox | Drop% | Increase% |\n|---|---|---|---|---|---|\n"
             + "\n".join(f"| {p['model']} | {p['method']} (published) | {p['ebpg']:.2f} | {p['bbox']:.2f} | "
                         f"{p['drop']:.2f} | {p['increase']:.2f} |" for p in PUBLISHED))
    text += f"\n\nWhole benchmark: {summary['seconds']:.0f} s on {device} ({torch.get_num_threads()} threads)."
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n" + text)
    print(f"\nwrote {out / 'summary.md'} and {out / 'summary.json'}")
    return summary


def _chance(root) -> float:
    """Mean share of the image covered by the explained class's (non-difficult) boxes."""
    from igcam_fast.images.photos import box_mask
    from igcam_fast.evaluation.voc.dataset import load_voc

    shares = []
    for im in load_voc(root, "test", S.DIGIT_CLASSES, check_images=False):
        for c in im.classes():
            shares.append(float(box_mask(im.boxes(c), (im.height, im.width), (S.INPUT_SIZE,) * 2).double().mean()))
    return 100 * statistics.fmean(shares) if shares else math.nan


def main(argv=None) -> dict:
    """This command with command-line arguments, in this process."""
    return run_with_argv(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
