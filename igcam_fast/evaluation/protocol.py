"""The paper's evaluation protocol on (image, class, boxes) pairs: EBPG, Bbox, Drop%/Increase% (both
protocols) and optionally deletion/insertion, for every method of :data:`METHOD_LABELS`, batched
on the device. ``igcam-fast evaluate`` (VOC folders) and ``evaluate-synthetic`` run it."""

from __future__ import annotations

import logging
import math
import sys
import time

import torch

from igcam_fast.core.engine import CamEngine
from igcam_fast.core.preprocessing import preprocessing_of
from igcam_fast.evaluation import metrics as Mx
from igcam_fast.evaluation.channel_cams import EXTRA_METHODS, make_extra
from igcam_fast.evaluation.voc.dataset import VocError
from igcam_fast.images.photos import box_mask, load_image, model_input


log = logging.getLogger("igcam_fast.evaluation.protocol")

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
