"""Explain a whole data set: every image's map, on one GPU or many, resumable.

    igcam-fast explain --data PATH --model SPEC --out DIR [options]
    torchrun --nproc_per_node=N -m igcam_fast explain --data PATH --model SPEC --out DIR [options]

PATH is a folder of images (searched recursively), an ImageFolder-style tree (one sub-folder per
class), a PASCAL VOC folder (JPEGImages + ImageSets/Main/<split>.txt + Annotations) or a text
file of image paths. Images are decoded and resized on DataLoader workers while the model runs.
The maps go to DIR/shards/shard-NNNNNN.npz (numpy, float16 by default) with their image ids,
targets and scores; DIR/manifest.json describes them (see docs/explain.md, and
igcam_fast.results.open_results to read them back). A killed run restarted with the same command
skips every finished shard.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from igcam_fast import results as rio
from igcam_fast.commands import CommandError

NAME = "explain"
HELP = "explain a whole data set (resumable; torchrun for several GPUs or machines)"


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

#: PASCAL VOC's 20 classes in their usual order (for ``--classes voc``).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
MAP_DTYPES = {"float16": np.float16, "float32": np.float32}

# For tests: sleep this long after each batch, so a run can be killed half-way reliably.
_TEST_DELAY_ENV = "IGCAM_FAST_TEST_BATCH_DELAY"


class ExplainError(CommandError):
    """A problem with the user's request, reported as one clear line (exit status 2)."""


# ---- the data set ---------------------------------------------------------------------------------

@dataclass
class DataSet:
    """The images of a data set in a fixed order: a global index is a position in these lists."""

    root: str
    kind: str  # folder, imagefolder, voc, list
    ids: list[str]
    paths: list[str]
    labels: list[list] | None = None  # per image: class indices or names (imagefolder, list)
    annotations: list[str] | None = None  # per image: VOC annotation XML
    class_names: list[str] | None = None  # imagefolder: the sub-folder names
    split: str | None = None

    def __len__(self):
        return len(self.ids)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i in self.ids:
            h.update(i.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        return h.hexdigest()[:32]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: Path) -> list[str]:
    """Relative posix paths of every image under root, sorted (symlinked folders followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for f in filenames:
            if _is_image(f) and not f.startswith("."):
                found.append(f if rel == "." else f"{Path(rel).as_posix()}/{f}")
    found.sort()
    return found


def _voc_split(root: Path, split: str | None) -> tuple[str | None, list[str]]:
    main = root / "ImageSets" / "Main"
    if split is None:
        for candidate in ("test", "val", "trainval", "train"):
            if (main / f"{candidate}.txt").is_file():
                split = candidate
                break
    if split is None:
        return None, sorted(p.stem for p in (root / "JPEGImages").iterdir() if _is_image(p.name))
    path = main / f"{split}.txt"
    if not path.is_file():
        choices = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        raise ExplainError(f"VOC split file {path} not found (splits there: {choices})")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return split, ids


def discover(data, kind: str = "auto", split: str | None = None) -> DataSet:
    """List the images of ``data`` (see the module docstring for the layouts) in a fixed order."""
    root = Path(data)
    if not root.exists():
        raise ExplainError(f"--data {data}: no such file or folder")
    if kind == "auto":
        if root.is_file():
            kind = "list"
        elif (root / "JPEGImages").is_dir() and ((root / "ImageSets").is_dir() or (root / "Annotations").is_dir()):
            kind = "voc"
        else:
            entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
            subdirs = [e for e in entries if e.is_dir()]
            if subdirs and not any(e.is_file() and _is_image(e.name) for e in entries):
                kind = "imagefolder"
            else:
                kind = "folder"
    if kind == "list":
        base = root.parent
        ids, paths, labels = [], [], []
        for n, line in enumerate(root.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            p = Path(parts[0])
            ids.append(parts[0])
            paths.append(str(p if p.is_absolute() else base / p))
            labels.append([_int_or_name(v) for v in parts[1:]])
        return DataSet(str(root), "list", ids, paths, labels if any(labels) else None)
    if not root.is_dir():
        raise ExplainError(f"--data {data} is a file; --format {kind} needs a folder")
    if kind == "voc":
        split, ids = _voc_split(root, split)
        ext = {p.stem: p.name for p in (root / "JPEGImages").iterdir() if _is_image(p.name)} if ids else {}
        missing = [i for i in ids if i not in ext]
        if missing:
            raise ExplainError(f"VOC folder {root}: {len(missing)} images of the split are missing from JPEGImages "
                               f"(first: {missing[0]})")
        return DataSet(str(root), "voc", ids, [str(root / "JPEGImages" / ext[i]) for i in ids],
                       annotations=[str(root / "Annotations" / f"{i}.xml") for i in ids], split=split)
    rel = _walk_images(root)
    if kind == "imagefolder":
        classes = sorted({r.split("/")[0] for r in rel if "/" in r})
        position = {c: k for k, c in enumerate(classes)}
        rel = [r for r in rel if "/" in r]
        return DataSet(str(root), "imagefolder", rel, [str(root / r) for r in rel],
                       labels=[[position[r.split("/")[0]]] for r in rel], class_names=classes)
    if kind == "folder":
        return DataSet(str(root), "folder", rel, [str(root / r) for r in rel])
    raise ExplainError(f"unknown --format {kind!r}")


def _int_or_name(v: str):
    try:
        return int(v)
    except ValueError:
        return v


def voc_objects(xml_path: str) -> list[str]:
    """The class names of the objects of a VOC annotation file, in file order (repeats kept)."""
    tree = ET.parse(xml_path)
    return [(o.findtext("name") or "").strip() for o in tree.getroot().iter("object")]


# ---- decoding (runs on DataLoader workers) --------------------------------------------------------

def load_image_uint8(path: str, size: int, draft: bool = False) -> torch.Tensor:
    """An image file as (3, size, size) uint8 RGB (bilinear resize, no crop, as photos.to_input).

    draft: let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding (never below ``size``)
    before the resize: several times faster on large photos, slightly different pixels.
    """
    from PIL import Image

    with Image.open(path) as im:
        if draft and im.format == "JPEG":
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()


def to_model_input(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 normalised model input (same arithmetic as photos.to_input)."""
    x = images.to(torch.float32).div_(255.0)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return x.sub_(mean).div_(std)


class ImageDataset(torch.utils.data.Dataset):
    """Item i: (i, uint8 image, error message or "", labels or None). Never raises on bad files."""

    def __init__(self, paths, size: int, annotations=None, class_index=None, want_labels=False, draft=False):
        self.paths = paths
        self.draft = draft
        self.size = size
        self.annotations = annotations
        self.class_index = class_index
        self.want_labels = want_labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        labels = None
        try:
            image = load_image_uint8(self.paths[i], self.size, self.draft)
            if self.want_labels and self.annotations is not None:
                names = voc_objects(self.annotations[i])
                unknown = sorted({n for n in names if n not in self.class_index})
                if unknown:
                    raise ValueError(f"{self.annotations[i]}: classes {unknown} are not in the class list")
                labels = sorted({self.class_index[n] for n in names})
            return i, image, "", labels
        except Exception as err:  # a corrupt, truncated, missing or unsupported file
            message = f"{type(err).__name__}: {err}".replace("\n", " ")
            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), message or "error", None


def _collate(items):
    return (torch.tensor([it[0] for it in items], dtype=torch.int64), torch.stack([it[1] for it in items]),
            [it[2] for it in items], [it[3] for it in items])


# ---- distributed ---------------------------------------------------------------------------------------

@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    initialized: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def barrier(self):
        if self.initialized:
            import torch.distributed as dist

            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.initialized:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_flag(self, flag: int) -> int:
        if not self.initialized:
            return flag
        import torch.distributed as dist

        t = torch.tensor([flag], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def close(self):
        if self.initialized:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialized = False


def init_world(device_arg: str | None, timeout_hours: float) -> World:
    """From torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), or one process."""
    rank = int(os.environ.get("RANK", "0"))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = World(rank, size, local_rank, False, device)
    if size > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=size,
                                timeout=datetime.timedelta(hours=timeout_hours),
                                **({"device_id": device} if device.type == "cuda" else {}))
        world.initialized = True
    return world


# ---- settings ------------------------------------------------------------------------------------------

def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _file_hash(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def fingerprint_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _describe_differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")


# ---- targets -------------------------------------------------------------------------------------------

def parse_targets(spec: str) -> tuple[str, int]:
    """("top", k), ("all-present", 0) or ("file", 0)."""
    s = spec.strip().lower()
    if s == "top1":
        return "top", 1
    if s.startswith("topk:") or (s.startswith("top") and s[3:].isdigit()):
        k = s.split(":", 1)[1] if ":" in s else s[3:]
        if not k.isdigit() or int(k) < 1:
            raise ExplainError(f"--targets {spec}: topk:K needs a positive integer K")
        return "top", int(k)
    if s in ("all-present", "all_present", "present"):
        return "all-present", 0
    if Path(spec).is_file():
        return "file", 0
    raise ExplainError(f"--targets {spec!r}: use top1, topk:K, all-present or the path of a label file "
                       "(no such file)")


def read_label_file(path, class_index) -> dict[str, list]:
    """``id label [label ...]`` per line (labels: class indices or names) -> {id: [labels]}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        labels = [v for p in parts[1:] for v in p.split(",") if v]
        out[parts[0]] = [_class_of(v, class_index, f"{path}:{n}") for v in labels]
    return out


def _class_of(v, class_index, where) -> int:
    v = _int_or_name(v) if isinstance(v, str) else v
    if isinstance(v, int):
        return v
    if class_index is None:
        raise ExplainError(f"{where}: class name {v!r} needs a class list (--classes FILE, or a model with class names)")
    if v not in class_index:
        raise ExplainError(f"{where}: class {v!r} is not in the class list")
    return class_index[v]


# ---- the command ------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder, ImageFolder tree, VOC folder or text file of paths")
    p.add_argument("--format", default="auto", choices=["auto", "folder", "imagefolder", "voc", "list"],
                   help="layout of --data (default: detected)")
    p.add_argument("--split", help="VOC split (ImageSets/Main/<split>.txt; default: test, val, trainval or train)")
    p.add_argument("--model", required=True,
                   help="efficientnet_lite0, a torchvision architecture (resnet50, vgg16, ...) or package.module:factory")
    p.add_argument("--weights", help="state-dict file for the model (loaded with weights_only=True)")
    p.add_argument("--num-classes", type=int, help="number of outputs of a torchvision architecture")
    p.add_argument("--layer", help="target layer (default: the model's usual one)")
    p.add_argument("--input-size", type=int, help="square input size in pixels (default: the model's)")
    p.add_argument("--classes", help="class list: a file with one name per line, or 'voc' (default: the model's)")
    p.add_argument("--targets", default="top1",
                   help="top1 (default), topk:K, all-present (VOC annotations / ImageFolder / list labels) "
                        "or a label file ('id class [class ...]' per line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="igcam", choices=["igcam", "gradcam", "gradcampp"])
    p.add_argument("--preset", help="igcam preset: default, paper, demo, gradcam_minus_baseline")
    p.add_argument("--steps", type=int, help="igcam path points m (default: the library's)")
    p.add_argument("--rule", help="igcam quadrature rule (default: the library's)")
    p.add_argument("--baseline", default="black", choices=["black", "zeros"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="forward precision (autocast)")
    p.add_argument("--resolution", default="layer", choices=["layer", "input"],
                   help="store maps at the layer's resolution (default, compact) or the input's")
    p.add_argument("--map-dtype", default="float16", choices=list(MAP_DTYPES), help="stored map dtype")
    p.add_argument("--normalize", action="store_true", help="min-max scale each map to [0, 1] before storing")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--batch-rows", type=int, help="path images per forward (default: per device)")
    p.add_argument("--shard-size", type=int, default=1024,
                   help="images per shard file (default 1024); part of the output's identity")
    p.add_argument("--fast-decode", action="store_true",
                   help="JPEG draft decoding (DCT downscaling before the resize): much faster on large photos, "
                        "slightly different pixels")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: min(8, cores/ranks - 1), at least 1)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--overlays", action="store_true", help="also write a PNG overlay per map and an HTML index")
    p.add_argument("--compress", action="store_true", help="zip-compress shard files (smaller, slower)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--overwrite", action="store_true",
                   help="discard results made with different settings in --out (same settings always resume)")
    p.add_argument("--log-every", type=float, default=30.0,
                   help="seconds between progress lines when stderr is not a terminal (default 30)")
    p.add_argument("--timeout-hours", type=float, default=24.0, help="distributed barrier timeout (default 24)")


def _log(msg: str, world: World | None = None, all_ranks: bool = False) -> None:
    if world is not None and world.rank != 0 and not all_ranks:
        return
    prefix = f"[rank {world.rank}] " if world is not None and world.size > 1 else ""
    try:
        from tqdm import tqdm

        tqdm.write(f"{prefix}{msg}", file=sys.stderr)
    except Exception:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)


def run(args) -> dict:
    try:
        return _run(args)
    except ExplainError as err:
        print(f"igcam-fast explain: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _run(args) -> dict:
    from igcam_fast.core.engine import CamEngine
    from igcam_fast.models import load_model

    t_start = time.perf_counter()
    if args.batch_size < 1 or args.shard_size < 1:
        raise ExplainError("--batch-size and --shard-size must be positive")
    target_kind, topk = parse_targets(args.targets)
    world = init_world(args.device, args.timeout_hours)
    try:
        return _explain(args, world, target_kind, topk, t_start, CamEngine, load_model)
    finally:
        world.close()


def _explain(args, world: World, target_kind, topk, t_start, CamEngine, load_model) -> dict:
    out = Path(args.out)
    device = world.device
    # --- model and data set (every rank builds the same, deterministically) ---
    try:
        spec = load_model(args.model, args.weights, args.layer, num_classes=args.num_classes)
    except (ValueError, TypeError, ImportError, FileNotFoundError) as err:
        raise ExplainError(f"--model {args.model}: {err}") from None
    model = spec.model
    size = args.input_size or spec.input_size
    data = discover(args.data, args.format, args.split)
    if len(data) == 0:
        raise ExplainError(f"--data {args.data}: no images found ({data.kind} layout)")
    if args.classes == "voc":
        class_names = list(VOC_CLASSES)
    elif args.classes:
        class_names = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    else:
        class_names = spec.class_names or (data.class_names if data.kind == "imagefolder" else None)
    class_index = {n: k for k, n in enumerate(class_names)} if class_names else None
    labels_of = None  # index -> list of class indices, known up front (imagefolder, list, label file)
    label_file_hash = None
    if target_kind == "file":
        table = read_label_file(args.targets, class_index)
        labels_of = [table.get(i, []) for i in data.ids]
        label_file_hash = _file_hash(args.targets)
    elif target_kind == "all-present":
        if data.kind == "voc":
            if class_index is None:
                raise ExplainError("--targets all-present on a VOC folder needs a class list: --classes voc, "
                                   "--classes FILE, or a model that names its classes")
        elif data.labels is not None:
            labels_of = [[_class_of(v, class_index, f"{data.root}: {i}") for v in ls] for i, ls in zip(data.ids, data.labels)]
        else:
            raise ExplainError(f"--targets all-present needs labels: a VOC folder, an ImageFolder tree or a list file "
                               f"with labels; {data.kind} {data.root} has none (or give a label file)")

    with torch.no_grad():
        probe = model(torch.zeros(1, 3, size, size))
    num_classes = int(probe.shape[1])
    engine_options = dict(method=args.method, preset=args.preset, rule=args.rule, steps=args.steps,
                          baseline=args.baseline, mean=spec.mean, std=spec.std, normalize=args.normalize,
                          output_size="layer" if args.resolution == "layer" else None,
                          batch_rows=args.batch_rows, autocast=DTYPES[args.dtype])
    if args.method != "igcam":
        for k in ("preset", "rule", "steps"):
            if engine_options[k] is None:
                del engine_options[k]
    try:
        engine = CamEngine(model, spec.layer, **engine_options)
    except (ValueError, TypeError) as err:
        raise ExplainError(str(err)) from None

    settings = dict(
        model=args.model, num_classes=num_classes, state_sha256=_state_hash(model), layer=engine.layer_name,
        input_size=size, mean=list(map(float, spec.mean)), std=list(map(float, spec.std)),
        method=engine.method, rule=engine.rule, steps=engine.steps, subtract_baseline=engine.subtract_baseline,
        baseline=args.baseline, dtype=args.dtype, resolution=args.resolution, map_dtype=args.map_dtype,
        normalize=bool(args.normalize), targets=args.targets if target_kind != "file" else "label-file",
        label_file_sha256=label_file_hash, class_names_sha256=(fingerprint_of(class_names) if class_names else None),
        decode="draft" if args.fast_decode else "full", data_kind=data.kind, data_split=data.split, data_count=len(data), data_ids_sha256=data.fingerprint(),
        shard_size=args.shard_size)
    fingerprint = fingerprint_of(settings)
    info = dict(data=str(Path(args.data).resolve()), weights=args.weights, targets_arg=args.targets,
                world_size=world.size, device=str(device))
    model.to(device)

    # --- the output folder: rank 0 checks it, everyone waits ---
    refused = 0
    if world.rank == 0:
        try:
            _prepare_output(out, settings, fingerprint, info, class_names, args.overwrite)
        except ExplainError as err:
            refused = 1
            refusal = err
    refused = world.broadcast_flag(refused)
    if refused:
        if world.rank == 0:
            raise refusal
        raise SystemExit(2)

    n_shards = math.ceil(len(data) / args.shard_size)
    finished = [k for k in range(n_shards) if (out / rio.shard_name(k)).is_file()
                and rio.read_shard_fingerprint(out / rio.shard_name(k)) == fingerprint]
    world.barrier()  # everyone has seen the same finished shards before anyone writes a new one
    done = set(finished)
    pending = [k for k in range(n_shards) if k not in done]
    mine = pending[world.rank::world.size]
    batches = []
    for k in mine:
        lo, hi = k * args.shard_size, min(len(data), (k + 1) * args.shard_size)
        batches.extend(list(range(b, min(hi, b + args.batch_size))) for b in range(lo, hi, args.batch_size))
    my_images = sum(len(b) for b in batches)
    _log(f"{len(data)} images ({data.kind} {data.root}) in {n_shards} shards of {args.shard_size}; "
         f"{len(finished)} finished shards skipped; {len(pending)} to do over {world.size} rank(s)", world)
    if world.size > 1:
        _log(f"{len(mine)} shards, {my_images} images on {device}", world, all_ranks=True)

    stats = dict(explained=0, failed=0, no_target=0, maps=0)
    if batches:
        _process(args, world, data, engine, model, spec, size, batches, target_kind, topk, labels_of, class_index,
                 class_names, fingerprint, out, stats, my_images)
    engine.close()

    totals_run = world.all_sum([stats["explained"], stats["failed"], stats["no_target"], stats["maps"]])
    world.barrier()  # every shard is on disk
    summary = {}
    if world.rank == 0:
        manifest = _write_manifest(out, settings, fingerprint, info, class_names, n_shards, data, args)
        if manifest["overlays"]:
            _write_html(out, manifest, class_names)
        elapsed = time.perf_counter() - t_start
        t = manifest["totals"]
        summary = dict(run_explained=int(totals_run[0]), run_failed=int(totals_run[1]), run_maps=int(totals_run[3]),
                       skipped_shards=len(finished), seconds=elapsed, **t)
        rate = totals_run[0] / elapsed if elapsed > 0 else 0.0
        _log(f"done in {elapsed:.1f} s: this run explained {int(totals_run[0])} images ({rate:.1f} images/s overall, "
             f"{int(totals_run[1])} unreadable), skipped {len(finished)} finished shards; "
             f"{out} now holds {t['maps']} maps of {t['explained']} images, {t['failed']} unreadable, "
             f"{t['no_target']} without targets, of {t['images']} ({'complete' if manifest['complete'] else 'INCOMPLETE'})",
             world)
    world.barrier()
    return summary


def _prepare_output(out: Path, settings, fingerprint, info, class_names, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / rio.CONFIG
    has_results = any((out / rio.SHARD_DIR).glob("shard-*.npz")) if (out / rio.SHARD_DIR).is_dir() else False
    if config_path.is_file():
        try:
            old = json.loads(config_path.read_text())
        except Exception:
            old = {}
        if old.get("fingerprint") != fingerprint:
            if not overwrite:
                raise ExplainError(f"{out} holds results made with other settings ("
                                   f"{_describe_differences(old.get('settings', {}), settings)}); "
                                   "refusing to mix them. Pass --overwrite to discard them, or choose another --out")
            _clear_results(out)
    elif has_results or (out / rio.MANIFEST).is_file():
        if not overwrite:
            raise ExplainError(f"{out} holds results without a {rio.CONFIG}; pass --overwrite to discard them")
        _clear_results(out)
    rio.remove_stale_temporaries(out)
    rio.atomic_write_json(config_path, dict(format=rio.FORMAT, version=rio.VERSION, fingerprint=fingerprint,
                                            settings=settings, info=info, class_names=class_names))
    (out / rio.SHARD_DIR).mkdir(exist_ok=True)


def _clear_results(out: Path) -> None:
    """Remove only what this command writes."""
    for p in (out / rio.SHARD_DIR).glob("shard-*.npz") if (out / rio.SHARD_DIR).is_dir() else []:
        p.unlink()
    rio.remove_stale_temporaries(out)
    for name in (rio.MANIFEST, rio.CONFIG):
        (out / name).unlink(missing_ok=True)
    for p in out.glob("index*.html"):
        p.unlink()
    if (out / rio.OVERLAY_DIR).is_dir():
        shutil.rmtree(out / rio.OVERLAY_DIR)


class _Progress:
    """tqdm on a terminal; periodic plain lines in logs."""

    def __init__(self, total: int, world: World, every: float):
        self.total, self.world, self.every = total, world, every
        self.done = self.failed = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and world.rank == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", dynamic_ncols=True, smoothing=0.05, desc="explain")

    def update(self, n: int, failed: int) -> None:
        self.done += n
        self.failed += failed
        if self.bar is not None:
            self.bar.update(n)
            if failed:
                self.bar.set_postfix(unreadable=self.failed)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = str(datetime.timedelta(seconds=int(eta))) if math.isfinite(eta) else "?"
            _log(f"{self.done}/{self.total} images ({100 * self.done / max(self.total, 1):.1f} %), {rate:.1f} images/s, "
                 f"ETA {eta_s}, {self.failed} unreadable", self.world, all_ranks=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _default_workers(world: World) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size if world.size > 1 else 1))
    return max(1, min(8, cores // max(1, local) - 1))


def _process(args, world, data, engine, model, spec, size, batches, target_kind, topk, labels_of, class_index,
             class_names, fingerprint, out, stats, my_images) -> None:
    device = world.device
    want_voc_labels = target_kind == "all-present" and data.kind == "voc"
    dataset = ImageDataset(data.paths, size, data.annotations, class_index, want_labels=want_voc_labels,
                           draft=args.fast_decode)
    workers = args.workers if args.workers is not None else _default_workers(world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False)
    autocast = DTYPES[args.dtype]
    map_dtype = MAP_DTYPES[args.map_dtype]
    delay = float(os.environ.get(_TEST_DELAY_ENV, "0") or 0)
    progress = _Progress(my_images, world, args.log_every)
    current = None  # the shard being filled

    def flush(shard):
        _write_shard(out, shard, fingerprint, map_dtype, args.compress)

    try:
        for index, images, errors, labels in loader:
            k = int(index[0]) // args.shard_size
            if current is None or current["k"] != k:
                if current is not None:
                    flush(current)
                current = _new_shard(k)
            bad = [j for j, e in enumerate(errors) if e]
            for j in bad:
                i = int(index[j])
                if args.strict:
                    raise ExplainError(f"unreadable image {data.paths[i]}: {errors[j]} (--strict)")
                _log(f"skipped unreadable image {data.paths[i]}: {errors[j]}", world, all_ranks=True)
                current["failed"].append((i, data.ids[i], errors[j]))
            good = [j for j, e in enumerate(errors) if not e]
            if good:
                _explain_batch(args, engine, model, spec, device, autocast, index, images, labels, good, target_kind,
                               topk, labels_of, data, current, stats, out, class_names)
            stats["failed"] += len(bad)
            progress.update(len(errors), len(bad))
            if delay:
                time.sleep(delay)
        if current is not None:
            flush(current)
    finally:
        progress.close()


def _new_shard(k: int) -> dict:
    return dict(k=k, images=[], index=[], id=[], target=[], score=[], prob=[], maps=[], failed=[])


def _explain_batch(args, engine, model, spec, device, autocast, index, images, labels, good, target_kind, topk,
                   labels_of, data, shard, stats, out, class_names) -> None:
    map_dtype = MAP_DTYPES[args.map_dtype]
    sel = torch.tensor(good)
    idx = index[sel].tolist()
    u8 = images[sel] if len(good) != len(index) else images
    x = to_model_input(u8.to(device, non_blocking=True), spec.mean, spec.std)
    with torch.no_grad(), (torch.autocast(device.type, dtype=autocast) if autocast else _null()):
        logits = model(x)
    logits = logits.float()
    # per image: its list of classes
    if target_kind == "top":
        k = min(topk, logits.shape[1])
        per_image = logits.topk(k, dim=1).indices.cpu().tolist() if k > 1 else logits.argmax(1, keepdim=True).cpu().tolist()
    elif labels_of is not None:
        per_image = [list(dict.fromkeys(labels_of[i])) for i in idx]
    else:  # VOC annotations parsed on the workers
        per_image = [labels[j] or [] for j in good]
    for i, cls in zip(idx, per_image):
        bad = [c for c in cls if not 0 <= c < logits.shape[1]]
        if bad:
            raise ExplainError(f"image {data.ids[i]}: target class {bad[0]} is out of range for a model with "
                               f"{logits.shape[1]} outputs")
    keep = [r for r, cls in enumerate(per_image) if cls]
    stats["explained"] += len(idx)
    shard["images"].extend(idx)
    stats["no_target"] += len(idx) - len(keep)
    if not keep:
        return
    if len(keep) != len(idx):
        x, logits = x[keep], logits[keep]
        idx = [idx[r] for r in keep]
        u8 = u8[keep]
        per_image = [per_image[r] for r in keep]
    width = max(len(c) for c in per_image)
    padded = [c + [c[0]] * (width - len(c)) for c in per_image]  # the same T for every image of the call
    result = engine.explain(x, padded)
    maps = result.maps if width > 1 else result.maps[:, None]
    maps = maps.to(torch.float16 if map_dtype == np.float16 else torch.float32).cpu().numpy()
    probs = logits.softmax(dim=1).cpu().numpy()
    logits_np = logits.cpu().numpy()
    for r, (i, cls) in enumerate(zip(idx, per_image)):
        for t, c in enumerate(cls):
            shard["index"].append(i)
            shard["id"].append(data.ids[i])
            shard["target"].append(c)
            shard["score"].append(logits_np[r, c])
            shard["prob"].append(probs[r, c])
            shard["maps"].append(maps[r, t])
            if args.overlays:
                _write_overlay(out, u8[r], maps[r, t], i, c, args.shard_size)
    stats["maps"] += sum(len(c) for c in per_image)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _write_overlay(out: Path, image_u8: torch.Tensor, m: np.ndarray, index: int, target: int, shard_size: int) -> None:
    from igcam_fast.images.overlay import overlay

    path = out / rio.overlay_name(index, target, shard_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image_u8.permute(1, 2, 0).numpy(), m).save(path)


def _write_shard(out: Path, shard: dict, fingerprint: str, map_dtype, compress: bool) -> None:
    maps = np.stack(shard["maps"]).astype(map_dtype) if shard["maps"] else np.zeros((0, 0, 0), map_dtype)
    failed = shard["failed"]
    arrays = dict(
        shard=np.int64(shard["k"]), fingerprint=np.str_(fingerprint),
        index=np.asarray(shard["index"], dtype=np.int64), id=np.asarray(shard["id"], dtype=np.str_),
        target=np.asarray(shard["target"], dtype=np.int64), score=np.asarray(shard["score"], dtype=np.float32),
        prob=np.asarray(shard["prob"], dtype=np.float32), maps=maps,
        images=np.asarray(shard["images"], dtype=np.int64),
        failed_index=np.asarray([f[0] for f in failed], dtype=np.int64),
        failed_id=np.asarray([f[1] for f in failed], dtype=np.str_),
        failed_error=np.asarray([f[2] for f in failed], dtype=np.str_))
    if arrays["id"].size == 0:
        arrays["id"] = np.zeros(0, dtype="<U1")
    for name in ("failed_id", "failed_error"):
        if arrays[name].size == 0:
            arrays[name] = np.zeros(0, dtype="<U1")
    rio.atomic_write_npz(out / rio.shard_name(shard["k"]), arrays, compress=compress)


def _write_manifest(out: Path, settings, fingerprint, info, class_names, n_shards, data, args) -> dict:
    shards, failed = [], []
    totals = dict(images=len(data), explained=0, failed=0, no_target=0, maps=0)
    map_shape = None
    for k in range(n_shards):
        path = out / rio.shard_name(k)
        if not path.is_file():
            continue
        with rio.load_npz(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                continue
            images, rows = int(z["images"].shape[0]), int(z["index"].shape[0])
            f_idx, f_id, f_err = z["failed_index"].tolist(), z["failed_id"].tolist(), z["failed_error"].tolist()
            if rows and map_shape is None:
                map_shape = list(z["maps"].shape[1:])
            with_rows = int(np.unique(z["index"]).size)
        lo = k * args.shard_size
        shards.append(dict(file=rio.shard_name(k), shard=k, first=lo, stop=min(len(data), lo + args.shard_size),
                           images=images, rows=rows, failed=len(f_idx)))
        failed.extend(dict(index=i, id=n, error=e) for i, n, e in zip(f_idx, f_id, f_err))
        totals["explained"] += images
        totals["failed"] += len(f_idx)
        totals["maps"] += rows
        totals["no_target"] += images - with_rows
    complete = len(shards) == n_shards
    manifest = dict(format=rio.FORMAT, version=rio.VERSION, complete=complete, fingerprint=fingerprint,
                    written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    settings=settings, info=info, class_names=class_names,
                    overlays=bool(args.overlays) or (out / rio.OVERLAY_DIR).is_dir(),
                    map=dict(dtype=settings["map_dtype"], resolution=settings["resolution"], shape=map_shape),
                    totals=totals, shards=shards, failed=failed)
    rio.atomic_write_json(out / rio.MANIFEST, manifest)
    return manifest


def _write_html(out: Path, manifest: dict, class_names, per_page: int = 500) -> None:
    import html

    results = rio.Results(out, manifest)
    rows = len(results)
    pages = max(1, math.ceil(rows / per_page))
    ids, idx, tgt, sc, pr = results.ids, results.index, results.targets, results.scores, results.probs
    shard_size = manifest["settings"]["shard_size"]
    s = manifest["settings"]
    head = (f"{html.escape(s['model'])} · {html.escape(s['layer'])} · {s['method']} ({s['rule']}, m={s['steps']}) · "
            f"{manifest['totals']['maps']} maps, {manifest['totals']['failed']} unreadable")
    for p in range(pages):
        name = "index.html" if p == 0 else f"index-{p:05d}.html"
        nav = []
        if p > 0:
            nav.append(f'<a href="{"index.html" if p == 1 else f"index-{p - 1:05d}.html"}">&larr; previous</a>')
        nav.append(f"page {p + 1} of {pages}")
        if p + 1 < pages:
            nav.append(f'<a href="index-{p + 1:05d}.html">next &rarr;</a>')
        tiles = []
        for r in range(p * per_page, min(rows, (p + 1) * per_page)):
            c = int(tgt[r])
            cname = class_names[c] if class_names and c < len(class_names) else str(c)
            src = rio.overlay_name(int(idx[r]), c, shard_size)
            tiles.append(f'<figure><a href="{src}"><img loading="lazy" src="{src}" alt=""></a><figcaption>'
                         f'{html.escape(str(ids[r]))}<br>{html.escape(cname)} · {float(pr[r]):.2f}</figcaption></figure>')
        doc = ("<!doctype html><meta charset='utf-8'><title>igcam_fast explain</title><style>"
               "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;width:160px;"
               "vertical-align:top;font-size:11px;word-break:break-all}img{width:160px;height:160px;"
               "image-rendering:auto}nav{margin:.5em 0}</style>"
               f"<h3>{head}</h3><nav>{' · '.join(nav)}</nav>{''.join(tiles)}<nav>{' · '.join(nav)}</nav>\n")
        rio.atomic_write_text(out / name, doc)
