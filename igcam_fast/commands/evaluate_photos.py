"""Evidence on real photos, without box annotations: the grid pointing game, the cascading
parameter-randomisation check and deletion/insertion, for every method on one model.

    igcam-fast evaluate-photos                                   # bundled EfficientNet-Lite0, offline photos
    igcam-fast evaluate-photos --model resnet50 --weights my.pt --images my_photos/ --out outputs/mine

1. Grid pointing game (Böhle et al. 2021; Rao et al. 2022): images whose top-1 probability is at
   least --min-confidence, one per class (the most confident), are tiled 2×2 (each cell at the
   model's input size); each cell's class is explained on the grid and scored by the share of
   positive attribution inside the cell (1 = all inside, 0.25 = chance), at input and at layer
   resolution. Also: the share of cells whose class the model still ranks in its top 5 on the grid.
2. Randomisation (Adebayo et al. 2018): the classifier, then the stages before it, re-initialised
   cumulatively on a copy of the model; Spearman ρ between the original and the randomised maps
   of each photo's top-1 class (lower = more sensitive to the model; the baselines stay at 1).
3. Deletion / insertion (Petsiuk et al. 2018): pixels removed from the photo (deletion) or added to
   a black image (insertion) in the map's order, in pixel space with the model's own black; area
   under the softmax probability curve in --steps equal steps.

Every table gives mean ± std, n, and the paired difference against Grad-CAM with a two-sided
Wilcoxon signed-rank p-value. Writes results.json, results.md and grids.png to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from igcam_fast.commands import CommandError
from igcam_fast.core.config import default_batch_rows
from igcam_fast.evaluation.protocol import METHOD_LABELS, build_explainer
from igcam_fast.evaluation import evidence, grids as G
from igcam_fast.evaluation.randomisation import cascade_stages
from igcam_fast.evaluation.statistics import describe, paired_difference
from igcam_fast.images.photos import bundled_photos, load_image, to_input
from igcam_fast.models import load_model

NAME = "evaluate-photos"
HELP = "grid pointing game, randomisation check and deletion/insertion on real photos, no boxes needed"

LABELS = dict(METHOD_LABELS, igcam="Integrated Grad-CAM (default: Gauss-Legendre, m=10)",
              random="random map (baseline)", gaussian="centred Gaussian (baseline)")
ALL_METHODS = "gradcam,gradcampp,igcam,igcam_paper,gradcam_minus_baseline,scorecam,ablationcam,random,gaussian"
#: Every method. Score-CAM (one forward per channel and image: 1280 for EfficientNet-Lite0, ×4 per
#: grid) runs on the first --scorecam-limit grids and photos only, so that the default run stays
#: within minutes on a 2-core CPU; its n says how many.
DEFAULT_METHODS = ALL_METHODS
#: K forwards of the whole network per image (K = 1280 channels for EfficientNet-Lite0).
SLOW_METHODS = ("scorecam",)
ABLATION_ROWS = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def offline_photos() -> dict[str, np.ndarray]:
    """The real photos that ship with installed packages: scikit-image's four, two of
    scikit-learn's and matplotlib's grace_hopper, each (H, W, 3) uint8; those that fail to load
    are left out (a warning names them)."""
    photos = {p.name: p.image for p in bundled_photos()}
    loaders = {"china": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("china.jpg"),
               "flower": lambda: __import__("sklearn.datasets", fromlist=["x"]).load_sample_image("flower.jpg"),
               "grace_hopper": _grace_hopper}
    for name, load in loaders.items():
        try:
            photos[name] = np.ascontiguousarray(np.asarray(load())[..., :3], dtype=np.uint8)
        except Exception as err:  # a missing optional package or data file: use the others
            print(f"warning: photo {name} not available offline ({type(err).__name__}: {err})", file=sys.stderr)
    return photos


def _grace_hopper():
    import matplotlib.cbook
    import matplotlib.image

    return matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))


def folder_photos(folder: str) -> dict[str, np.ndarray]:
    path = Path(folder)
    if not path.is_dir():
        raise CommandError(f"--images {folder}: not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CommandError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    photos = {}
    for f in files:
        try:
            photos[f.stem] = load_image(f)
        except (OSError, ValueError) as err:
            raise CommandError(f"{f}: cannot read the image ({err})") from None
    return photos


def make_explainer(name: str, spec, batch_rows, seed: int):
    """explain(model, x, targets (B, T)) -> (maps, layer_maps), building the method on the model given."""
    if name == "random":
        return evidence.random_explain(spec.layer, seed)
    if name == "gaussian":
        return evidence.gaussian_explain(spec.layer)

    if name == "ablationcam" and batch_rows is None:
        # The body before the layer runs once per chunk of ablated copies: 256 copies per chunk
        # instead of the CPU default 64 measured 3.7x faster on EfficientNet-Lite0 (256·K·h·w floats).
        batch_rows = ABLATION_ROWS

    def explain(model, x, targets):
        explainer = build_explainer(name, model, spec.layer, mean=spec.mean, std=spec.std, batch_rows=batch_rows)
        try:
            result = explainer.explain(x, targets)
        finally:
            explainer.close()
        maps, layer_maps = result.maps, result.layer_maps
        if maps.dim() == 3:  # one target per image
            maps, layer_maps = maps[:, None], layer_maps[:, None]
        return maps, layer_maps
    return explain


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="efficientnet_lite0 (default, pretrained), a torchvision architecture with --weights, or "
                             "package.module:factory")
    parser.add_argument("--weights", help="state-dict file (loaded with weights_only=True)")
    parser.add_argument("--layer", help="target layer (default: the model's usual one)")
    parser.add_argument("--num-classes", type=int, help="outputs of a torchvision model's head (default 1000)")
    parser.add_argument("--images", help="folder of photos (default: the photos installed packages ship, offline)")
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated, from {ALL_METHODS} (default: all; scorecam costs one forward per "
                             "channel and image, see --scorecam-limit)")
    parser.add_argument("--min-confidence", type=float, default=0.25,
                        help="top-1 probability a photo needs to enter the grids (default 0.25)")
    parser.add_argument("--grids", type=int, default=4, help="at most this many 2×2 grids (default 4)")
    parser.add_argument("--cell-size", type=int, help="pixels per grid cell (default: the model's input size)")
    parser.add_argument("--stages", type=int, default=3, help="randomisation stages, classifier first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion steps (default 10)")
    parser.add_argument("--insertion-substrate", choices=("black", "blur"), default="black",
                        help="what insertion starts from (default black; RISE used a blurred copy)")
    parser.add_argument("--scorecam-limit", type=int, default=1,
                        help="Score-CAM costs one forward per channel and image: run it on the first N grids and "
                             "photos only (default 1; 0 = all)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 grid, 3 photos, 1 stage, 4 steps, Score-CAM and the paper preset left out")
    parser.add_argument("--figure-grids", type=int, default=2, help="grids drawn in grids.png (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-rows", type=int, help="rows per forward inside the methods (default per device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="outputs/evaluate_photos", help="folder for results.json, results.md, grids.png")
    parser.add_argument("--no-progress", action="store_true")


def _parse_methods(text: str) -> list[str]:
    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in names if m not in LABELS]
    if bad or not names:
        raise CommandError(f"--methods: unknown {bad or text!r}; choose from {', '.join(LABELS)}")
    if "gradcam" not in names:
        raise CommandError("--methods must include gradcam: every table compares against it")
    return names


def run(args) -> dict:
    start = time.perf_counter()
    methods = _parse_methods(args.methods)
    if args.quick:
        methods = [m for m in methods if m not in ("scorecam", "igcam_paper")]
    for flag in ("grids", "stages", "steps", "figure_grids"):
        if getattr(args, flag) < (0 if flag == "figure_grids" else 1):
            raise CommandError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    try:
        spec = load_model(args.model, args.weights, args.layer, num_classes=args.num_classes)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        raise CommandError(str(err)) from None
    device = torch.device(args.device)
    model = spec.model.to(device).eval()
    photos = folder_photos(args.images) if args.images else offline_photos()
    names = list(photos)
    cell = args.cell_size or spec.input_size
    limit = {m: args.scorecam_limit for m in SLOW_METHODS if args.scorecam_limit > 0 and m in methods}
    explainers = {m: make_explainer(m, spec, args.batch_rows, args.seed) for m in methods}

    # ---- which photos: classify each one alone at the cell size (grids) and the input size
    cells = torch.cat([to_input(photos[n], cell, spec.mean, spec.std) for n in names]).to(device)
    x = torch.cat([to_input(photos[n], spec.input_size, spec.mean, spec.std) for n in names]).to(device)
    with torch.no_grad():
        cell_probs = model(cells).softmax(dim=1)
        probs = model(x).softmax(dim=1)
    chosen = G.select_grid_images(cell_probs, min_confidence=args.min_confidence)
    if len(chosen.indices) < G.CELLS:
        raise CommandError(f"only {len(chosen.indices)} photo(s) qualify for the grids (top-1 probability >= "
                           f"{args.min_confidence}, one per class; need 4): lower --min-confidence or add photos. "
                           + "; ".join(f"{names[i]}: {why}" for i, why in chosen.rejected.items()))
    arrangements = G.grid_arrangements(len(chosen.indices), 1 if args.quick else args.grids)
    pool = torch.tensor(chosen.indices)
    grids = G.make_grids(cells[pool.to(device)], arrangements)
    cell_classes = torch.tensor(chosen.classes)[arrangements].to(device)  # (G, 4)
    photo_rows = list(range(min(3, len(names)) if args.quick else len(names)))
    x = x[photo_rows]
    top1 = probs[photo_rows].argmax(dim=1)
    stages = cascade_stages(model, spec.layer, x[:1], 1 if args.quick else args.stages)
    steps = 4 if args.quick else args.steps

    n_grid = {m: min(len(grids), limit.get(m, len(grids))) for m in methods}
    n_photo = {m: min(len(x), limit.get(m, len(x))) for m in methods}
    total = sum(math.ceil(n_grid[m] / 2) for m in methods) + \
        (len(stages) + 1) * sum(math.ceil(n_photo[m] / 4) for m in methods) + len(methods)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)

    def progress(what):
        bar.set_description(what, refresh=False)
        bar.update(1)

    try:
        grid_result = evidence.run_grid_pointing_game(model, grids, cell_classes, explainers, limits=limit,
                                                      progress=progress)
        rand = evidence.run_randomisation(model, stages, x, top1, explainers, limits=limit, seed=args.seed,
                                          progress=progress)
        delins = evidence.run_deletion_insertion(model, x, rand["original"], top1, mean=spec.mean, std=spec.std,
                                                 steps=steps, substrate=args.insertion_substrate,
                                                 batch_size=args.batch_rows or default_batch_rows(device),
                                                 progress=progress)
    finally:
        bar.close()
    seconds = time.perf_counter() - start

    class_name = (lambda c: spec.class_names[c]) if spec.class_names else str
    result = dict(
        model=args.model, layer=spec.layer, weights=args.weights, mean=list(spec.mean), std=list(spec.std),
        device=torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"CPU ({platform.machine()}), {torch.get_num_threads()} threads", torch=torch.__version__,
        seconds=seconds, quick=args.quick, methods={m: LABELS[m] for m in methods},
        limits=limit, photos=names,
        grid_images=[dict(photo=names[i], cls=class_name(c), confidence=p)
                     for i, c, p in zip(chosen.indices, chosen.classes, chosen.confidences)],
        grid_rejected={names[i]: why for i, why in chosen.rejected.items()},
        grid_size=list(grids.shape[-2:]), cell_size=cell,
        grid_arrangements=[[names[chosen.indices[j]] for j in row] for row in arrangements.tolist()],
        top5_share=float(grid_result["in_top_k"].double().mean()),
        stages=rand["stages"], randomisation_photos=[names[i] for i in photo_rows],
        top1=[dict(photo=names[i], cls=class_name(int(c)), p=float(probs[i, c])) for i, c in zip(photo_rows, top1)],
        deletion_insertion=dict(steps=steps, deletion_substrate="black", insertion_substrate=args.insertion_substrate),
        tables=_tables(methods, grid_result["scores"], rand["rho"], delins),
    )
    text = format_tables(result)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(text + "\n")
    if args.figure_grids:
        draw_grids(out / "grids.png", grids, grid_result, cell_classes, class_name, spec, args.figure_grids)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'grids.png'}" if args.figure_grids
                                                                       else "") + f" ({seconds:.0f} s)")
    return result


def _row(values: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], scale: float) -> dict:
    """values/reference: column -> per-item tensor; the reference is cut to the items values has."""
    row = {}
    for column, v in values.items():
        ref = reference[column].flatten()[: v.numel()]
        row[column] = dict(describe(v, scale), vs_gradcam=paired_difference(v, ref, scale))
    return row


def _tables(methods, grid_scores, rho, delins) -> dict:
    grid = {m: _row(dict(input=grid_scores[m]["input"], layer=grid_scores[m]["layer"]),
                    dict(input=grid_scores["gradcam"]["input"], layer=grid_scores["gradcam"]["layer"]), 100)
            for m in methods}
    randomisation = {m: _row({f"stage{s + 1}": rho[m][s] for s in range(rho[m].shape[0])},
                             {f"stage{s + 1}": rho["gradcam"][s] for s in range(rho["gradcam"].shape[0])}, 1)
                     for m in methods}
    di = {m: _row(dict(deletion=delins[m]["deletion"], insertion=delins[m]["insertion"]),
                  dict(deletion=delins["gradcam"]["deletion"], insertion=delins["gradcam"]["insertion"]), 100)
          for m in methods}
    return dict(grid_pointing_game=grid, randomisation=randomisation, deletion_insertion=di)


def _cell(stat, digits=1) -> str:
    if stat["n"] == 0:
        return "—"
    std = "" if math.isnan(stat["std"]) else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


def _diff(stat, digits=1) -> str:
    d = stat["vs_gradcam"]
    if d["n"] == 0 or math.isnan(d["mean_diff"]):
        return "—"
    p = "" if math.isnan(d["p"]) else f" (p={d['p']:.2g})"
    return f"{d['mean_diff']:+.{digits}f}{p}"


def _table(result, key, columns, digits) -> list[str]:
    header = [h for _, h in columns]
    lines = ["| method | " + " | ".join(header) + " | n | " +
             " | ".join(f"Δ {h.split(' ')[0]} vs Grad-CAM (p)" for c, h in columns if c != "_") + " |",
             "|---" * (2 * len(columns) + 2) + "|"]
    for m, row in result["tables"][key].items():
        first = row[columns[0][0]]
        lines.append(f"| {result['methods'][m]} | " + " | ".join(_cell(row[c], digits) for c, _ in columns)
                     + f" | {first['n']} | " + " | ".join(_diff(row[c], digits) for c, _ in columns) + " |")
    return lines


def format_tables(result: dict) -> str:
    size = "×".join(map(str, result["grid_size"]))
    grid_photos = ", ".join(f"{g['photo']} ({g['cls']}, {g['confidence']:.2f})" for g in result["grid_images"])
    n_grids = len(result["grid_arrangements"])
    lines = [f"Model {result['model']} at {result['layer']}, {result['device']}, {result['seconds']:.0f} s"
             + (" (quick)" if result["quick"] else ""), "",
             f"### Grid pointing game ↑ (% of positive attribution in the cell; chance 25): {n_grids} grid(s) of "
             f"{size} px, {result['cell_size']} px cells", "",
             *_table(result, "grid_pointing_game", [("input", "input res."), ("layer", "layer res.")], 1), "",
             f"n = cells (4 per grid). Grid photos (top-1 class, probability alone): {grid_photos}. "
             f"The model ranks the cell's class in its top 5 on the grid for "
             f"{100 * result['top5_share']:.0f} % of the cells.", "",
             f"### Randomisation ↓ (Spearman ρ, original vs randomised map; 1 = the map ignores the weights)", "",
             *_table(result, "randomisation", [(f"stage{i + 1}", f"+{s}") for i, s in enumerate(result["stages"])], 2),
             "", f"Cascading, cumulative: each column adds one re-initialised stage to the previous. "
             f"n = photos ({', '.join(result['randomisation_photos'])}), each explained for its top-1 class.", "",
             f"### Deletion ↓ / insertion ↑ (AUC of the softmax probability, %, {result['deletion_insertion']['steps']} "
             f"steps, pixel space, deletion to black, insertion from {result['deletion_insertion']['insertion_substrate']})",
             "", *_table(result, "deletion_insertion", [("deletion", "deletion"), ("insertion", "insertion")], 1), "",
             "Δ: mean paired difference (method − Grad-CAM) on the items both have; p: two-sided Wilcoxon "
             "signed-rank test."]
    if result["limits"]:
        lines.append("Limited: " + ", ".join(f"{result['methods'][m]} on the first {n} grid(s) and photo(s)"
                                             for m, n in result["limits"].items()) + " (--scorecam-limit).")
    return "\n".join(lines)


def draw_grids(path, grids, grid_result, cell_classes, class_name, spec, count):
    """A figure: per drawn grid, the grid and each method's map for cell 0's class (top-left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = {m: v for m, v in grid_result["maps"].items() if v is not None}
    count = min(count, len(grids))
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    fig, axes = plt.subplots(count, len(maps) + 1, figsize=(2.2 * (len(maps) + 1), 2.4 * count), squeeze=False)
    for g in range(count):
        pixels = (grids[g].float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[g, 0].imshow(pixels)
        axes[g, 0].set_title(f"cell 0: {class_name(int(cell_classes[g, 0]))[:18]}", fontsize=7)
        for j, (m, v) in enumerate(maps.items(), start=1):
            ax = axes[g, j]
            ax.imshow(pixels)
            if g < v.shape[0]:
                ax.imshow(v[g, 0].numpy(), cmap="jet", alpha=0.5)
                score = float(grid_result["scores"][m]["input"][g, 0]) * 100
                ax.set_title(f"{m}: {score:.0f}%", fontsize=7)
            else:
                ax.set_title(f"{m}: not run", fontsize=7)
        for ax in axes[g]:
            h, w = pixels.shape[:2]
            ax.axhline(h / 2, color="w", lw=0.8)
            ax.axvline(w / 2, color="w", lw=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
