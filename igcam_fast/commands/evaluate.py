"""Evaluate saliency methods on a PASCAL VOC 2007 style data set, as the paper does.

    igcam-fast evaluate --voc PATH/VOCdevkit/VOC2007 --split test --model resnet50 --weights voc_resnet50.pt \
        --methods gradcam,gradcampp,igcam,gradcam_minus_baseline,scorecam,ablationcam --out outputs/voc

Every (image, present class) pair is explained (several classes of one image share one set of
forward passes); the boxes of one class are merged into one mask (``difficult`` objects are left
out unless --keep-difficult). Per method it reports EBPG, Bbox, the pointing game, Drop% and
Increase% with the authors' top-15 % binary mask ("top15") and the older soft-mask protocol
("soft"), optionally deletion/insertion AUC, and the explanation time per image; it prints a
markdown table and writes results.json and results.md to --out. The published Grad-CAM and
Grad-CAM++ figures on the real VOC 2007 models are printed beside it as references.

Models: a torchvision architecture with the user's weights file (a 20-way head is built), the
bundled EfficientNet-Lite0, or ``package.module:factory``. Confidence Ψ: sigmoid for multi-label
models (default), softmax for single-label ones (--confidence softmax).

(About 430 lines: the pair loop, its table and the command's checks of its options belong together;
evaluate_voc is the function other commands call, evaluate_pairs the loop the tests call.)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from igcam_fast.commands import CommandError, run_with_argv
from igcam_fast.commands.common import DEVICE_HELP, check_layer, default_device, load_model_or_explain, parse_device
from igcam_fast.evaluation import metrics as Mx
from igcam_fast.evaluation.channel_cams import EXTRA_METHODS, make_extra
from igcam_fast.core.engine import CamEngine
from igcam_fast.core.quadrature import canonical_rule
from igcam_fast.core.preprocessing import preprocessing_of
from igcam_fast.images.photos import box_mask, load_image, model_input
from igcam_fast.evaluation.voc.dataset import VOC_CLASSES, VocError, load_voc

NAME = "evaluate"
HELP = "EBPG, Bbox, Drop%% and Increase%% of the methods on a PASCAL VOC 2007 style folder"


log = logging.getLogger("igcam_fast.commands.evaluate")

#: method name -> (label, how to build it)
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "igcam": "Integrated Grad-CAM",
    "igcam_paper": "Integrated Grad-CAM (paper: right Riemann, m=50)",
    "gradcam_minus_baseline": "Grad-CAM with A' subtracted (ablation)",
    "scorecam": "Score-CAM",
    "ablationcam": "Ablation-CAM",
}
DEFAULT_METHODS = "gradcam,gradcampp,igcam,gradcam_minus_baseline,scorecam,ablationcam"

#: The SISE paper's figures (AAAI 2021) on PASCAL VOC 2007 test with the real models.
PUBLISHED = [
    dict(model="VGG16", method="Grad-CAM", ebpg=55.44, bbox=51.70, drop=49.47, increase=31.08),
    dict(model="VGG16", method="Grad-CAM++", ebpg=46.29, bbox=55.59, drop=60.63, increase=23.89),
    dict(model="ResNet-50", method="Grad-CAM", ebpg=60.08, bbox=60.25, drop=35.80, increase=36.58),
    dict(model="ResNet-50", method="Grad-CAM++", ebpg=47.78, bbox=58.66, drop=41.77, increase=32.15),
]


class ModelMismatch(ValueError):
    """The model's outputs do not fit the data set's classes."""


def build_explainer(name: str, model, layer, *, mean, std, steps=None, rule=None, batch_rows=None):
    """An object with .explain(x, targets) -> CamResult for one of METHOD_LABELS."""
    common = dict(batch_rows=batch_rows)
    if name in ("gradcam", "gradcampp"):
        return CamEngine(model, layer, method=name, mean=mean, std=std, **common)
    if name == "igcam":
        extra = {k: v for k, v in (("steps", steps), ("rule", rule)) if v is not None}
        return CamEngine(model, layer, method="igcam", mean=mean, std=std, **extra, **common)
    if name == "igcam_paper":
        return CamEngine(model, layer, method="igcam", preset="paper", mean=mean, std=std, **common)
    if name == "gradcam_minus_baseline":
        return CamEngine(model, layer, method="igcam", preset="gradcam_minus_baseline", mean=mean, std=std, **common)
    if name in EXTRA_METHODS:
        return make_extra(name, model, layer, **common)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_LABELS)}")


def method_label(name: str, explainer) -> str:
    if name == "igcam":
        return f"Integrated Grad-CAM ({explainer.rule}, m={explainer.steps})"
    return METHOD_LABELS[name]


def parse_methods(text) -> list[str]:
    """Comma-separated method names (or a list of them), checked, duplicates dropped."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in names if m not in METHOD_LABELS]
    if bad or not names:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHOD_LABELS)}")
    return list(dict.fromkeys(names))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Scores:
    """Per-pair scores of one method, kept on the device until the end."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.seconds = 0.0
        self.zero_maps = 0

    def add(self, name, values):
        self.parts.setdefault(name, []).append(values.detach())

    def cat(self, name):
        return torch.cat(self.parts[name]) if name in self.parts else torch.zeros(0, dtype=torch.float64)


def evaluate_pairs(spec, images, classes, methods, *, device="cpu", batch_images=8, confidence="sigmoid",
                   keep_difficult=False, protocols=("top15", "soft"), deletion_insertion=False, del_ins_steps=16,
                   steps=None, rule=None, batch_rows=None, skip_bad=False, progress=True, tolerance=None) -> dict:
    """Run every method on every (image, present class) pair of ``images`` (VocImage list)."""
    device = torch.device(device)
    model = spec.model.to(device).eval()
    pre = preprocessing_of(model)  # the model's own normalisation (ModelSpec records it on the model)
    size = (spec.input_size, spec.input_size)
    tolerance = 15 * spec.input_size / 224 if tolerance is None else tolerance
    explainers = {m: build_explainer(m, model, spec.layer, mean=pre.mean, std=pre.std, steps=steps, rule=rule,
                                     batch_rows=batch_rows) for m in methods}
    labels = {m: method_label(m, e) for m, e in explainers.items()}
    scores = {m: _Scores() for m in methods}
    todo = [im for im in images if im.classes(keep_difficult)]
    no_object = len(images) - len(todo)
    n_images = n_pairs = skipped = 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    start = time.perf_counter()
    try:
        for b0 in range(0, len(todo), batch_images):
            xs, masks, pair_image, pair_class, targets = [], [], [], [], []
            for im in todo[b0:b0 + batch_images]:
                try:
                    pixels = load_image(im.path)
                except (OSError, ValueError) as err:  # FileNotFoundError, PIL errors
                    error = VocError(f"{im.path}: cannot load image ({err})")
                    if not skip_bad:
                        raise error from None
                    log.warning("skipping image %s: %s", im.image_id, error)
                    skipped += 1
                    continue
                if pixels.shape[:2] != (im.height, im.width):
                    error = VocError(f"{im.path} is {pixels.shape[1]}x{pixels.shape[0]} but {im.annotation} says "
                                     f"{im.width}x{im.height}")
                    if not skip_bad:
                        raise error
                    log.warning("skipping image %s: %s", im.image_id, error)
                    skipped += 1
                    continue
                present = im.classes(keep_difficult)
                i = len(xs)
                xs.append(model_input(pixels, model))
                cls = [classes.index(c) for c in present]
                for c_name, c in zip(present, cls):
                    masks.append(box_mask(im.boxes(c_name, keep_difficult), (im.height, im.width), size))
                    pair_image.append(i)
                    pair_class.append(c)
                targets.append(cls)
            if not xs:
                bar.update(len(todo[b0:b0 + batch_images]))
                continue
            x = torch.cat(xs).to(device)
            mask = torch.stack(masks).to(device)
            img_idx = torch.tensor(pair_image, device=device)
            cls_idx = torch.tensor(pair_class, device=device)
            # several classes of one image share the passes: pad every image's list to the same length
            T = max(len(t) for t in targets)
            padded = [t + [t[0]] * (T - len(t)) for t in targets]
            col_idx = torch.tensor([j for t in targets for j in range(len(t))], device=device)
            with torch.no_grad():
                logits = model(x)
            if logits.shape[1] != len(classes):
                raise ModelMismatch(f"the model has {logits.shape[1]} outputs but there are {len(classes)} classes "
                                 f"({', '.join(classes[:5])}, ...); give --classes or --num-classes")
            base = Mx.confidence(logits[img_idx], cls_idx, confidence)
            for m, explainer in explainers.items():
                _sync(device)
                t0 = time.perf_counter()
                maps = explainer.explain(x, padded).maps
                _sync(device)
                scores[m].seconds += time.perf_counter() - t0
                if maps.dim() == 3:
                    maps = maps[:, None]
                pair_maps = maps[img_idx, col_idx].float()
                bad = Mx.count_invalid(pair_maps)
                if bad:
                    raise FloatingPointError(f"{labels[m]} produced {bad} map(s) with NaN/inf for images "
                                             f"{[im.image_id for im in todo[b0:b0 + batch_images]]}")
                s = scores[m]
                s.zero_maps += Mx.count_zero(pair_maps)
                s.add("ebpg", Mx.ebpg(pair_maps, mask))
                s.add("bbox", Mx.bbox_score(pair_maps, mask))
                s.add("pointing", Mx.pointing_game(pair_maps, mask, tolerance))
                for protocol in protocols:
                    r = Mx.drop_increase(model, x, pair_maps, cls_idx, mean=pre.mean, std=pre.std, protocol=protocol,
                                         kind=confidence, image_index=img_idx, base_confidence=base)
                    s.add(f"drop_{protocol}", r["drop"])
                    s.add(f"increase_{protocol}", r["increase"])
                if deletion_insertion:
                    for mode in ("deletion", "insertion"):
                        r = Mx.deletion_insertion(model, x, pair_maps, cls_idx, mean=pre.mean, std=pre.std,
                                                  mode=mode, steps=del_ins_steps, kind=confidence, image_index=img_idx)
                        s.add(mode, r["auc"])
            n_images += len(xs)
            n_pairs += len(pair_class)
            bar.update(len(todo[b0:b0 + batch_images]))
            bar.set_postfix(pairs=n_pairs, refresh=False)
    finally:
        bar.close()
        for e in explainers.values():
            e.close()
    wall = time.perf_counter() - start
    if n_pairs == 0:
        raise VocError("no (image, class) pairs to evaluate: every image was skipped or has no "
                       "(non-difficult) object")
    rows = []
    for m in methods:
        s = scores[m]
        row = dict(method=m, label=labels[m], pairs=n_pairs, ms_per_image=s.seconds / n_images * 1e3,
                   zero_maps=s.zero_maps)
        for name, scale in [("ebpg", 100), ("bbox", 100), ("pointing", 100)] + \
                [(f"drop_{p}", 1) for p in protocols] + [(f"increase_{p}", 100) for p in protocols] + \
                ([("deletion", 100), ("insertion", 100)] if deletion_insertion else []):
            summary = Mx.summarize(s.cat(name), scale)
            row[name] = summary["mean"]
            if summary["nan"]:
                row[f"{name}_nan"] = summary["nan"]
        rows.append(row)
    return dict(rows=rows, images=n_images, pairs=n_pairs, skipped_images=skipped, images_without_objects=no_object,
                seconds=wall, images_per_second=n_images / wall if wall > 0 else math.nan, protocols=list(protocols),
                confidence=confidence, tolerance_px=tolerance, keep_difficult=keep_difficult,
                deletion_insertion=deletion_insertion)


# ---- output -----------------------------------------------------------------------------------------

def format_table(result: dict, title: str = "", references: bool = True) -> str:
    protocols = result["protocols"]
    cols = ["EBPG ↑", "Bbox ↑", "PG ↑"]
    for p in protocols:
        cols += [f"Drop% ({p}) ↓", f"Increase% ({p}) ↑"]
    if result.get("deletion_insertion"):
        cols += ["Deletion AUC ↓", "Insertion AUC ↑"]
    cols += ["ms / image", "all-zero maps"]
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in result["rows"]:
        vals = [r["ebpg"], r["bbox"], r["pointing"]]
        for p in protocols:
            vals += [r[f"drop_{p}"], r[f"increase_{p}"]]
        if result.get("deletion_insertion"):
            vals += [r["deletion"], r["insertion"]]
        cells = [f"{v:.2f}" for v in vals] + [f"{r['ms_per_image']:.1f}", str(r["zero_maps"])]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines += ["", f"{result['pairs']} (image, class) pairs from {result['images']} images; "
              f"confidence Ψ = {result['confidence']}; Drop%/Increase% protocols: "
              + ", ".join({"top15": "top15 = keep the top 15 % pixels, black out the rest (the authors')",
                           "soft": "soft = image × min-max normalised map (Grad-CAM++'s)"}[p] for p in protocols)
              + f"; pointing game tolerance {result['tolerance_px']:.1f} px; "
              f"{result['images_per_second']:.2f} images/s for the whole evaluation."]
    if result["skipped_images"]:
        lines.append(f"{result['skipped_images']} image(s) skipped (see the log).")
    if references:
        lines += ["", "Published reference figures (SISE paper, AAAI 2021; PASCAL VOC 2007 test, real multi-label "
                  "VGG16/ResNet-50; NOT this run):", "",
                  "| model | method | EBPG | Bbox | Drop% | Increase% |", "|---|---|---|---|---|---|"]
        for p in PUBLISHED:
            lines.append(f"| {p['model']} | {p['method']} (published) | {p['ebpg']:.2f} | {p['bbox']:.2f} | "
                         f"{p['drop']:.2f} | {p['increase']:.2f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc", required=True, help="VOC folder (VOC2007/, or VOCdevkit/ or its parent)")
    parser.add_argument("--split", default="test", help="ImageSets/Main/<split>.txt (default: test)")
    parser.add_argument("--model", required=True,
                        help="torchvision architecture (resnet50, vgg16, ... with --weights), efficientnet_lite0, "
                             "or package.module:factory")
    parser.add_argument("--weights", help="state-dict file of the model (loaded with weights_only=True)")
    parser.add_argument("--layer", help="target layer (default: the model's usual one: layer4, features.29, ...)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, from {', '.join(METHOD_LABELS)} (default: {DEFAULT_METHODS})")
    parser.add_argument("--classes", help="comma-separated class names in the model's output order, or a file with "
                                          "one per line (default: the model's own names, else the 20 VOC classes)")
    parser.add_argument("--confidence", choices=("sigmoid", "softmax"), default="sigmoid",
                        help="Ψ: sigmoid for multi-label models (default), softmax for single-label ones")
    parser.add_argument("--protocols", default="top15,soft",
                        help="Drop%%/Increase%% protocols: top15 (the authors'), soft (Grad-CAM++'s); default both")
    parser.add_argument("--deletion-insertion", action="store_true", help="also deletion/insertion AUC (RISE)")
    parser.add_argument("--keep-difficult", action="store_true", help="keep objects marked difficult")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip (and log) images with a missing file, malformed XML or unknown class instead of "
                             "stopping with an error")
    parser.add_argument("--limit", type=int, help="only the first N images of the split")
    parser.add_argument("--steps", type=int, help="Integrated Grad-CAM path points (default: the library's)")
    parser.add_argument("--rule", help="Integrated Grad-CAM quadrature rule (default: the library's)")
    parser.add_argument("--batch-images", type=int, default=8, help="images per explain call (default 8)")
    parser.add_argument("--batch-rows", type=int, help="rows per forward inside the methods (default per device)")
    parser.add_argument("--device", default=default_device(), help=DEVICE_HELP)
    parser.add_argument("--out", default="outputs/evaluate", help="folder for results.json and results.md")
    parser.add_argument("--title", help="a title for the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _classes(text):
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ValueError(f"--classes {text!r} names no class")
    return names


def run(args) -> dict:
    options = {k: v for k, v in vars(args).items() if k in EVALUATE_OPTIONS}
    options["progress"] = not args.no_progress
    return evaluate_voc(**options)


#: The keyword arguments of :func:`evaluate_voc` that the command line sets one to one.
EVALUATE_OPTIONS = ("voc", "split", "model", "weights", "layer", "methods", "classes", "confidence", "protocols",
                    "deletion_insertion", "keep_difficult", "skip_bad", "limit", "steps", "rule", "batch_images",
                    "batch_rows", "device", "out", "title")


def evaluate_voc(*, voc, model, split="test", weights=None, layer=None, methods=DEFAULT_METHODS, classes=None,
                 confidence="sigmoid", protocols="top15,soft", deletion_insertion=False, keep_difficult=False,
                 skip_bad=False, limit=None, steps=None, rule=None, batch_images=8, batch_rows=None,
                 device=None, out="outputs/evaluate", title=None, progress=True) -> dict:
    """``igcam-fast evaluate`` as a function: the same options (``methods``, ``protocols`` and
    ``classes`` as comma-separated text), the same table printed, results.json and results.md
    written to ``out``; returns the result dict. A user's mistake raises CommandError."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        methods = parse_methods(methods)
    except ValueError as err:
        raise CommandError(f"--methods: {err}") from None
    protocols = [p.strip() for p in (protocols.split(",") if isinstance(protocols, str) else protocols) if p.strip()]
    if not protocols or any(p not in ("top15", "soft") for p in protocols):
        raise CommandError(f"--protocols must list top15 and/or soft, got {','.join(protocols)!r}")
    for flag, value in (("--batch-images", batch_images), ("--batch-rows", batch_rows), ("--limit", limit),
                        ("--steps", steps)):
        if value is not None and value < 1:
            raise CommandError(f"{flag} must be at least 1, got {value}")
    if rule is not None:
        try:
            canonical_rule(rule)
        except ValueError as err:
            raise CommandError(f"--rule: {err}") from None
    device = parse_device(device or default_device())
    if not Path(voc).exists():
        raise CommandError(f"--voc {voc}: no such folder (give VOC2007/, VOCdevkit/ or its parent)")
    try:
        classes = _classes(classes)
    except ValueError as err:
        raise CommandError(str(err)) from None
    spec = load_model_or_explain(NAME, model, weights, layer, num_classes=len(classes or VOC_CLASSES))
    check_layer(spec)
    if classes is None:
        classes = list(spec.class_names) if spec.class_names else list(VOC_CLASSES)
    try:
        images = load_voc(voc, split, classes, skip_bad=skip_bad)
        if limit:
            images = images[:limit]
        if not images:
            raise VocError(f"no image of split {split!r} in {voc} is left to evaluate")
        result = evaluate_pairs(spec, images, classes, methods, device=device, batch_images=batch_images,
                                confidence=confidence, keep_difficult=keep_difficult, protocols=protocols,
                                deletion_insertion=deletion_insertion, steps=steps, rule=rule,
                                batch_rows=batch_rows, skip_bad=skip_bad, progress=progress)
    except VocError as err:  # a missing or malformed file of the data set, named in the message
        raise CommandError(str(err)) from None
    except ModelMismatch as err:
        raise CommandError(str(err)) from None
    result.update(model=model, weights=str(weights) if weights else None, layer=spec.layer,
                  voc=str(voc), split=split, classes=classes, methods=methods,
                  device=torch.cuda.get_device_name(device) if device.type == "cuda"
                  else f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads",
                  torch=torch.__version__, published_references=PUBLISHED)
    title = title or f"{model} at {spec.layer}, {voc} split {split}, on {result['device']}"
    table = format_table(result, title)
    print(table)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    return result


def command_line(options: dict) -> str:
    """The ``igcam-fast evaluate`` command line that :func:`evaluate_voc` (``options``) runs, to re-run it."""
    words = ["igcam-fast", "evaluate"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "progress":
            words += [] if value else ["--no-progress"]
        elif value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def main(argv=None) -> dict:
    """This command with command-line arguments, in this process."""
    return run_with_argv(sys.modules[__name__], argv)


if __name__ == "__main__":
    main()
