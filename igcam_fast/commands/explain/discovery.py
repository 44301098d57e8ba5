"""Finding the images of ``--data`` in a fixed order: a folder, an ImageFolder tree, VOC, a list file.

The order defines each image's global index (its position in ``DataSet.ids``). Folder walks
follow symlinked folders but enter each real folder once (a link back to a parent is not a
loop), skip hidden entries and skip the run's own output folder (``--out`` inside ``--data``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from igcam_fast.evaluation.voc.dataset import VocError, read_split

from .options import ExplainError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
VOC_DEFAULT_SPLITS = ("test", "val", "trainval", "train")


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
        """Hash of the ids (names) in order: what decides which image is in which shard."""
        h = hashlib.sha256()
        for i in self.ids:
            h.update(i.encode("utf-8", "surrogateescape"))
            h.update(b"\0")
        return h.hexdigest()[:32]

    def contents_hash(self, first: int, stop: int) -> str:
        """Hash of the name, size and modification time of images first … stop − 1 (and their VOC
        annotations): a shard whose images were replaced under the same names is redone."""
        h = hashlib.sha256()
        for i in range(first, stop):
            files = [self.paths[i]] + ([self.annotations[i]] if self.annotations is not None else [])
            h.update(self.ids[i].encode("utf-8", "surrogateescape"))
            for path in files:
                try:
                    st = os.stat(path)
                    h.update(f"\0{st.st_size}\0{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(b"\0missing")
            h.update(b"\n")
        return h.hexdigest()[:32]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _dir_key(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_images(root: Path, exclude=()) -> list[str]:
    """Relative posix paths of every image under root, sorted.

    Symlinked folders are followed, but each real folder (device, inode) is entered once, so
    links back to a parent end instead of looping. Folders in ``exclude`` are skipped.
    """
    skip = {key for key in map(_dir_key, exclude) if key is not None}
    seen: set[tuple[int, int]] = set()
    found = []
    stack = [(str(root), "")]
    while stack:
        folder, rel = stack.pop()
        key = _dir_key(folder)
        if key is None or key in seen or key in skip:
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for e in entries:
            if e.name.startswith("."):
                continue
            name = f"{rel}{e.name}"
            try:
                if e.is_dir(follow_symlinks=True):
                    subfolders.append((e.path, f"{name}/"))
                elif is_image(e.name) and e.is_file(follow_symlinks=True):
                    found.append(name)
            except OSError:  # a dangling link or a vanished entry
                continue
        stack.extend(reversed(subfolders))  # depth first, in name order: the first path to a folder wins
    found.sort()
    return found


def _voc_split(root: Path, split: str | None) -> tuple[str | None, list[str]]:
    main = root / "ImageSets" / "Main"
    if split is None:
        split = next((s for s in VOC_DEFAULT_SPLITS if (main / f"{s}.txt").is_file()), None)
    if split is None:
        return None, sorted(p.stem for p in (root / "JPEGImages").iterdir() if is_image(p.name))
    if not main.is_dir():
        raise ExplainError(f"VOC split {split!r} asked for, but {main} does not exist")
    try:
        return split, read_split(root, split)
    except VocError as err:
        raise ExplainError(f"VOC folder {root}: {err}") from None


def _detect(root: Path) -> str:
    if root.is_file():
        return "list"
    if (root / "JPEGImages").is_dir() and ((root / "ImageSets").is_dir() or (root / "Annotations").is_dir()):
        return "voc"
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    subdirs = [e for e in entries if e.is_dir()]
    if subdirs and not any(e.is_file() and is_image(e.name) for e in entries):
        return "imagefolder"
    return "folder"


def int_or_name(v: str):
    try:
        return int(v)
    except ValueError:
        return v


def _read_list(root: Path) -> DataSet:
    base = root.parent
    ids, paths, labels = [], [], []
    for line in root.read_text(errors="surrogateescape").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        p = Path(parts[0])
        ids.append(parts[0])
        paths.append(str(p if p.is_absolute() else base / p))
        labels.append([int_or_name(v) for v in parts[1:]])
    return DataSet(str(root), "list", ids, paths, labels if any(labels) else None)


def _read_voc(root: Path, split: str | None) -> DataSet:
    split, ids = _voc_split(root, split)
    ext = {p.stem: p.name for p in (root / "JPEGImages").iterdir() if is_image(p.name)} if ids else {}
    missing = [i for i in ids if i not in ext]
    if missing:
        raise ExplainError(f"VOC folder {root}: {len(missing)} images of the split are missing from JPEGImages "
                           f"(first: {missing[0]})")
    return DataSet(str(root), "voc", ids, [str(root / "JPEGImages" / ext[i]) for i in ids],
                   annotations=[str(root / "Annotations" / f"{i}.xml") for i in ids], split=split)


def discover(data, kind: str = "auto", split: str | None = None, exclude=()) -> DataSet:
    """List the images of ``data`` (see the module docstring) in a fixed order; ``exclude``: folders to skip."""
    root = Path(data)
    if not root.exists():
        raise ExplainError(f"--data {data}: no such file or folder")
    if kind == "auto":
        kind = _detect(root)
    if kind == "list":
        if not root.is_file():
            raise ExplainError(f"--data {data} is a folder; --format list needs a text file of image paths")
        return _read_list(root)
    if not root.is_dir():
        raise ExplainError(f"--data {data} is a file; --format {kind} needs a folder")
    if kind == "voc":
        return _read_voc(root, split)
    rel = walk_images(root, exclude)
    if kind == "imagefolder":
        rel = [r for r in rel if "/" in r]
        classes = sorted({r.split("/")[0] for r in rel})
        position = {c: k for k, c in enumerate(classes)}
        return DataSet(str(root), "imagefolder", rel, [str(root / r) for r in rel],
                       labels=[[position[r.split("/")[0]]] for r in rel], class_names=classes)
    if kind == "folder":
        return DataSet(str(root), "folder", rel, [str(root / r) for r in rel])
    raise ExplainError(f"unknown --format {kind!r}")
