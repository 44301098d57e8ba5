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
import platform
import shlex
import sys
from pathlib import Path

import torch

from igcam_fast.commands import CommandError, run_with_argv
from igcam_fast.evaluation.protocol import (DEFAULT_METHODS, METHOD_LABELS, PUBLISHED, ModelMismatch,
                                         build_explainer, evaluate_pairs, format_table, method_label,
                                         parse_methods)

#: The protocol's names, readable as this command's too (``evaluate.DEFAULT_METHODS`` and friends).
__all__ = ["NAME", "HELP", "add_arguments", "run", "evaluate_voc", "command_line", "main", "DEFAULT_METHODS",
           "METHOD_LABELS", "PUBLISHED", "ModelMismatch", "build_explainer", "evaluate_pairs", "format_table",
           "method_label", "parse_methods"]
from igcam_fast.commands.common import DEVICE_HELP, check_layer, default_device, load_model_or_explain, parse_device
from igcam_fast.core.quadrature import canonical_rule
from igcam_fast.evaluation.voc.dataset import VOC_CLASSES, VocError, load_voc

NAME = "evaluate"
HELP = "EBPG, Bbox, Drop%% and Increase%% of the methods on a PASCAL VOC 2007 style folder"


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
