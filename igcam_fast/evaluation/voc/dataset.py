"""Reading a PASCAL VOC layout: ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg.

Everything that would make a score silently wrong is an error naming the file (VocError): a
missing split file, an empty split, a missing annotation or image, malformed XML, an object of an
unknown class, a box outside the image or with xmax < xmin, an image whose size differs from
the one its annotation states. With ``skip_bad=True`` an image with such a problem is skipped and
logged instead (an empty or missing split is always an error: there would be nothing to score).

Boxes: VOC's xmin..xmax are 1-based inclusive pixel indices; they are stored here as 0-based
pixel edges (x1, y1, x2, y2) = (xmin − 1, ymin − 1, xmax, ymax), the convention of
igcam_fast.images.photos.box_mask.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("igcam_fast.evaluation.voc")

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


class VocError(ValueError):
    """A problem with a VOC folder; the message names the file."""


@dataclass
class VocObject:
    name: str
    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) 0-based pixel edges
    difficult: bool = False


@dataclass
class VocImage:
    image_id: str
    path: Path
    annotation: Path
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)

    def classes(self, keep_difficult: bool = False) -> list[str]:
        """The classes present (in order of first appearance), without difficult-only ones by default."""
        seen = []
        for o in self.objects:
            if (keep_difficult or not o.difficult) and o.name not in seen:
                seen.append(o.name)
        return seen

    def boxes(self, name: str, keep_difficult: bool = False) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects if o.name == name and (keep_difficult or not o.difficult)]


def find_root(path: str | Path) -> Path:
    """The folder holding Annotations/, JPEGImages/ and ImageSets/ (accepts VOCdevkit/ or its parent)."""
    path = Path(path)
    for candidate in (path, path / "VOC2007", path / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    if not path.exists():
        raise VocError(f"VOC folder not found: {path}")
    raise VocError(f"{path} is not a VOC folder: expected Annotations/, JPEGImages/ and ImageSets/Main/ in it "
                   "(or in VOC2007/ or VOCdevkit/VOC2007/ below it)")


def read_split(root: Path, split: str) -> list[str]:
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise VocError(f"split file not found: {split_file} (splits there: {available})")
    ids = []
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        ids.append(parts[0])
    if not ids:
        raise VocError(f"split file {split_file} is empty: no image ids to evaluate")
    if len(set(ids)) != len(ids):
        raise VocError(f"split file {split_file} lists some image ids more than once")
    return ids


def _parse(path: Path) -> ET.ElementTree:
    try:
        return ET.parse(path)
    except ET.ParseError as err:
        raise VocError(f"{path}: malformed XML ({err})") from None
    except OSError as err:
        raise VocError(f"{path}: cannot read ({err})") from None


def object_names(path: Path) -> list[str]:
    """The class names of an annotation's objects in file order (repeats and difficult ones kept).

    Reads only the names (no size or box checks): what a data-set command needs to choose targets.
    VocError naming the file when it cannot be read or parsed.
    """
    return [(o.findtext("name") or "").strip() for o in _parse(path).getroot().iter("object")]


def _int(node, tag, where):
    text = node.findtext(tag)
    if text is None:
        raise VocError(f"{where}: missing <{tag}>")
    try:
        return int(round(float(text)))
    except ValueError:
        raise VocError(f"{where}: <{tag}> is not a number: {text!r}") from None


def parse_annotation(path: Path, classes) -> tuple[int, int, list[VocObject], str | None]:
    """(width, height, objects, filename) of one annotation file; VocError naming it on any problem."""
    root = _parse(path).getroot()
    size = root.find("size")
    if size is None:
        raise VocError(f"{path}: no <size> element")
    width, height = _int(size, "width", f"{path} <size>"), _int(size, "height", f"{path} <size>")
    if width <= 0 or height <= 0:
        raise VocError(f"{path}: image size {width}x{height} is not positive")
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise VocError(f"{path}: object {i} has unknown class {name!r} (known: {', '.join(classes)})")
        bb = obj.find("bndbox")
        if bb is None:
            raise VocError(f"{path}: object {i} ({name}) has no <bndbox>")
        where = f"{path} object {i} ({name})"
        xmin, ymin, xmax, ymax = (_int(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if not (1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height):
            raise VocError(f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) is empty or outside the "
                           f"{width}x{height} image")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(VocObject(name, (xmin - 1, ymin - 1, xmax, ymax), difficult))
    return width, height, objects, root.findtext("filename")


def load_voc(path: str | Path, split: str = "test", classes=VOC_CLASSES, *, skip_bad: bool = False,
             check_images: bool = True) -> list[VocImage]:
    """The images of a split with their objects.

    check_images: verify every image file exists (cheap) and, when PIL can read its header,
    that its size matches the annotation.
    """
    root = find_root(path)
    classes = tuple(classes)
    images = []
    for image_id in read_split(root, split):
        annotation = root / "Annotations" / f"{image_id}.xml"
        try:
            if not annotation.is_file():
                raise VocError(f"annotation not found: {annotation} (listed in {split}.txt)")
            width, height, objects, filename = parse_annotation(annotation, classes)
            image_path = root / "JPEGImages" / f"{image_id}.jpg"
            if not image_path.is_file() and filename:
                image_path = root / "JPEGImages" / filename
            if check_images:
                _check_image(image_path, width, height, annotation)
            images.append(VocImage(image_id, image_path, annotation, width, height, objects))
        except VocError as err:
            if not skip_bad:
                raise
            log.warning("skipping image %s: %s", image_id, err)
    return images


def _check_image(image_path: Path, width: int, height: int, annotation: Path) -> None:
    if not image_path.is_file():
        raise VocError(f"image not found: {image_path} (annotated in {annotation})")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            size = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise VocError(f"{image_path}: not a readable image ({err})") from None
    if size != (width, height):
        raise VocError(f"{image_path} is {size[0]}x{size[1]} but {annotation} says {width}x{height}")
