"""Which classes each image is explained for: ``--targets``, ``--classes`` and label files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcam_fast.evaluation.voc.dataset import VOC_CLASSES

from .discovery import DataSet, int_or_name
from .options import ExplainError
from .settings import file_hash


@dataclass
class TargetPlan:
    """kind: "top" (the k best classes), "all-present" or "file".

    labels_of: per global image index, its classes when they are known up front (ImageFolder,
    list labels, a label file); None for "top" and for VOC, whose annotations are read on the
    DataLoader workers (``voc_labels``).
    """

    kind: str
    topk: int = 1
    labels_of: list[list[int]] | None = None
    label_file_sha256: str | None = None

    @property
    def voc_labels(self) -> bool:
        return self.kind == "all-present" and self.labels_of is None

    def describe(self, spec: str) -> str:
        """The value the settings fingerprint records (a label file by its hash, not its path)."""
        return "label-file" if self.kind == "file" else spec


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


def read_class_list(classes_arg: str | None, model_names, data: DataSet) -> list[str] | None:
    """--classes voc | FILE, else the model's class names, else an ImageFolder's sub-folder names."""
    if classes_arg == "voc":
        return list(VOC_CLASSES)
    if classes_arg:
        path = Path(classes_arg)
        if not path.is_file():
            raise ExplainError(f"--classes {classes_arg}: no such file (give a file with one class name per "
                               "line, or 'voc')")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ExplainError(f"--classes {classes_arg}: the file names no classes")
        return names
    return model_names or (data.class_names if data.kind == "imagefolder" else None)


def read_label_file(path, class_index) -> dict[str, list]:
    """``id label [label ...]`` per line (labels: class indices or names) -> {id: [labels]}."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        labels = [v for p in parts[1:] for v in p.split(",") if v]
        out[parts[0]] = [class_of(v, class_index, f"{path}:{n}") for v in labels]
    return out


def class_of(v, class_index, where) -> int:
    """A label (index, or name looked up in the class list) as a class index."""
    v = int_or_name(v) if isinstance(v, str) else v
    if isinstance(v, int):
        return v
    if class_index is None:
        raise ExplainError(f"{where}: class name {v!r} needs a class list (--classes FILE, or a model with class names)")
    if v not in class_index:
        raise ExplainError(f"{where}: class {v!r} is not in the class list")
    return class_index[v]


def plan_targets(spec: str, data: DataSet, class_index: dict | None) -> TargetPlan:
    """The TargetPlan of ``--targets spec`` on this data set; ExplainError when it cannot be met."""
    kind, topk = parse_targets(spec)
    if kind == "top":
        return TargetPlan("top", topk)
    if kind == "file":
        table = read_label_file(spec, class_index)
        return TargetPlan("file", labels_of=[table.get(i, []) for i in data.ids], label_file_sha256=file_hash(spec))
    if data.kind == "voc":
        if class_index is None:
            raise ExplainError("--targets all-present on a VOC folder needs a class list: --classes voc, "
                               "--classes FILE, or a model that names its classes")
        return TargetPlan("all-present")
    if data.labels is not None:
        return TargetPlan("all-present", labels_of=[[class_of(v, class_index, f"{data.root}: {i}") for v in ls]
                                                    for i, ls in zip(data.ids, data.labels)])
    raise ExplainError(f"--targets all-present needs labels: a VOC folder, an ImageFolder tree or a list file "
                       f"with labels; {data.kind} {data.root} has none (or give a label file)")
