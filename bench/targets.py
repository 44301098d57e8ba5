"""The project's targets as a table, judged from the result rows by one function.

Each :class:`Target` names the rows it compares (a filter on their fields), the field it reads,
the threshold, its unit and how it is judged (<=, <, >=, >); over several rows the worst one
decides (the largest for <= and <, the smallest for >= and >). A target meant for another
device type is "not measured" with that reason, as is a target none of whose rows was measured.
``per`` expands a target into one verdict per value of a field (a kernel target per backend).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable

from igcam_fast import DEFAULT_STEPS

_JUDGES = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_DEVICE_NAMES = {"cuda": "GPU", "cpu": "CPU"}
_UNITS = {"%": "{:.2%}", "x": "{:.3f}x", "ms": "{:.2f} ms", "share": "{:.0%}"}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    rows: dict  # field -> wanted value, or a predicate on the value
    field: str  # the field judged (after ``value``, if given)
    judge: str  # one of _JUDGES
    threshold: float
    unit: str  # one of _UNITS
    device: str | None = None  # "cpu" / "cuda": judged only on that device type
    label: tuple = ("model", "batch")  # fields naming each row in "measured"
    value: Callable[[dict], float] | None = field(default=None, compare=False)  # derived from a row
    per: str | None = None  # one verdict per distinct value of this field


def _gpu_kernel_targets():
    out = []
    for op in ("combine", "path_images", "upsample"):
        out.append(Target(f"e-{op}", f"GPU: {op} ≥ 70% of the same-size copy bandwidth at B ≥ 16",
                          dict(section="kernels", role="kernel", op=op, backend=lambda b: b != "torch",
                               images=lambda n: (n or 0) >= 16),
                          "share_of_copy", ">=", 0.70, "share", device="cuda", label=("shape",), per="backend"))
        out.append(Target(f"e-{op}-b1", f"GPU: {op} no slower than the eager torch chain at B = 1",
                          dict(section="kernels", role="kernel", op=op, backend=lambda b: b != "torch", images=1),
                          "speedup_vs_torch", ">=", 1.0, "x", device="cuda", label=("shape",), per="backend"))
    return out


TARGETS = [
    Target("a", f"default (GL {DEFAULT_STEPS}) within 1 % of the converged map (max over photos)",
           dict(section="accuracy", role="accuracy_default"), "rel_l2_max", "<=", 0.01, "%", label=("model",)),
    Target("b", "IG-CAM default within 1.03x of the forward-only floor (same config)",
           dict(section="models", role="igcam_default"), "x_floor", "<=", 1.03, "x"),
    Target("c1", "≥ 8x faster than the authors' procedure (m=50; our default vs their m=50)",
           dict(section="models", role="authors", batch=1), "speedup_of_default", ">=", 8.0, "x", device="cpu",
           label=("model",)),
    Target("c2", "≥ 30x faster than pytorch-grad-cam composed over 50 steps (our default vs their m=50)",
           dict(section="models", role="pgc_composed", batch=1), "speedup_of_default", ">=", 30.0, "x", device="cpu",
           label=("model",)),
    Target("d1", "GPU: ResNet-50 batch 1 IG-CAM default ≤ 2 ms per image (stretch 1 ms; the paper 54.8 ms on a P100)",
           dict(section="models", role="igcam_default", model="resnet50", batch=1), "median_ms", "<=", 2.0, "ms",
           device="cuda"),
    Target("d2", "GPU: ResNet-50 batch 1 IG-CAM default ≤ 1.5x our Grad-CAM in the same run (the paper: 4.85x)",
           dict(section="models", role="igcam_default", model="resnet50", batch=1), "x_ours_gradcam", "<=", 1.5, "x",
           device="cuda"),
    Target("d3", "GPU: throughput batch ≥ 90% of the forward-only floor / m",
           dict(section="models", role="igcam_default", batch=lambda b: (b or 0) > 1, x_floor=lambda v: bool(v)),
           "floor_share", ">=", 0.90, "share", device="cuda", value=lambda r: 1 / r["x_floor"]),
    *_gpu_kernel_targets(),
    *[Target(f"e-{op}-cpu", f"CPU: {op} 'cpu' backend beats 'torch'",
             dict(section="kernels", role="kernel", op=op, backend="cpu"), "speedup_vs_torch", ">", 1.0, "x",
             device="cpu", label=("shape",)) for op in ("path_images", "combine", "upsample")],
]


def _matches(row: dict, wanted: dict) -> bool:
    for key, want in wanted.items():
        have = row.get(key)
        if callable(want):
            if not want(have):
                return False
        elif have != want:
            return False
    return True


def _verdict(t: Target, name: str, rows: list[dict], note: str = "") -> dict:
    threshold = f"{t.judge} {_UNITS[t.unit].format(t.threshold)}"
    values = []
    for r in rows:
        v = t.value(r) if t.value is not None else r.get(t.field)
        if v is not None:
            values.append((", ".join(f"{k}={r.get(k)}" for k in t.label), v))
    if not values:
        return dict(target=name, description=t.description, measured=None, threshold=threshold, met=None,
                    note=note or "no row measured")
    worst = (max if t.judge in ("<=", "<") else min)(v for _, v in values)
    measured = "; ".join(f"{k}: {_UNITS[t.unit].format(v)}" for k, v in values)
    return dict(target=name, description=t.description, measured=measured, threshold=threshold,
                met=bool(_JUDGES[t.judge](worst, t.threshold)), note=note)


def evaluate_targets(rows: list[dict], device_type: str, targets=TARGETS) -> list[dict]:
    """Judge each target from the rows alone: met (True), not met (False) or not measured (None)."""
    out = []
    for t in targets:
        if t.device is not None and t.device != device_type:
            here = "a GPU" if device_type == "cuda" else f"the {device_type.upper()}"
            out.append(_verdict(t, t.name, [], f"{_DEVICE_NAMES[t.device]} target; this run is on {here}"))
            continue
        chosen = [r for r in rows if _matches(r, t.rows)]
        if t.per is None or not chosen:
            out.append(_verdict(t, t.name, chosen))
            continue
        for value in sorted({str(r.get(t.per)) for r in chosen}):
            out.append(_verdict(t, f"{t.name}-{value}", [r for r in chosen if str(r.get(t.per)) == value]))
    return out


def targets_table(targets=TARGETS) -> list[dict]:
    """The targets as plain data (for the JSON): name, field, judge, threshold, unit, device."""
    return [dict(target=t.name, description=t.description, field=t.field, judge=t.judge, threshold=t.threshold,
                 unit=t.unit, device=t.device, per=t.per) for t in targets]
