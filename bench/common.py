"""What every section of the suite shares: the recorder of result rows, model loading, inputs,
safe construction and timing of providers, the options' text, and the error of one map against
another.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from igcam_fast.benchmarking.latency import stats_fields
from igcam_fast.benchmarking.timing import Stats, measure

from .presets import MODELS, ModelCase, Preset

#: Every row of the JSON carries these fields (None where a field does not apply).
REQUIRED_FIELDS = ("device", "torch", "triton", "dtype", "batch", "m", "rule", "backend", "options", "median_ms",
                   "iqr_ms", "images_per_s", "peak_mem_mb")


class Recorder:
    """Collects rows (dicts) and skip notes; every row gets the environment's fields.

    ``checkpoint`` (set by the driver) is called after each measured group, so that what was
    measured is on disk even if the run is stopped later.
    """

    def __init__(self, env: dict, log=None):
        self.env = env
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.log = log or (lambda msg: None)
        self.checkpoint: Callable[[], None] = lambda: None

    def skip(self, what: str, why: str):
        self.skipped.append(f"{what}: {why}")
        self.log(f"  skipped {what}: {why}")

    def add(self, section: str, *, stats: Stats | None = None, batch=None, **fields) -> dict:
        row = dict(section=section, device=self.env["device"], device_type=self.env["device_type"],
                   torch=self.env["torch"], triton=self.env["triton"], threads=self.env["threads"],
                   git_sha=self.env["git_sha"], dtype="float32", batch=batch, m=None, rule=None, backend=None,
                   options="")
        row.update(stats_fields(stats, batch))
        row.update(fields)
        self.rows.append(row)
        return row


def options_text(opts: dict) -> str:
    parts = []
    for k, v in sorted(opts.items()):
        if isinstance(v, torch.dtype):
            v = str(v).replace("torch.", "")
        parts.append(f"{k}={v}")
    return ",".join(parts)


def dtype_of(opts: dict) -> str:
    a = opts.get("autocast")
    return f"autocast {str(a).replace('torch.', '')}" if a is not None else "float32"


def split_tf32(opts: dict) -> tuple[dict, bool | None]:
    """(engine options, the TF32 switch or None) of one option dict."""
    rest = dict(opts)
    return rest, rest.pop("tf32", None)


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """torch's TF32 switches for cuDNN convolutions and matmuls set to ``enabled`` (None: untouched)."""
    if enabled is None:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def with_tf32(fn, enabled: bool | None):
    """fn called under :func:`tf32` (fn itself when enabled is None); keeps fn's ``.engine``."""
    if enabled is None:
        return fn

    def run():
        with tf32(enabled):
            return fn()

    run.engine = getattr(fn, "engine", None)
    return run


# ---- models and inputs --------------------------------------------------------------------------


@dataclass
class Loaded:
    case: ModelCase
    model: nn.Module
    layer: str
    mean: tuple
    std: tuple
    size: int
    pretrained: bool


def find_case(p: Preset, name: str) -> ModelCase:
    """A model case by name: the preset's own first (tests bring tiny ones), then the registry."""
    for case in [*p.models, p.accuracy_model]:
        if case is not None and case.name == name:
            return case
    return MODELS[name]


def load(case: ModelCase, device: torch.device, rec: Recorder, cache: dict, input_size=None) -> Loaded | None:
    if case.name in cache:
        return cache[case.name]
    try:
        t0 = time.perf_counter()
        model, layer, mean, std, size, pretrained = case.build()
        model = model.to(device).eval()
        rec.log(f"  built {case.name} in {time.perf_counter() - t0:.1f} s")
        cache[case.name] = Loaded(case, model, layer, tuple(mean), tuple(std), input_size or size, pretrained)
    except Exception as err:  # a missing optional package must not stop the other models
        rec.skip(f"model {case.name}", f"{type(err).__name__}: {err}")
        cache[case.name] = None
    return cache[case.name]


def photo_inputs(names, size, mean, std, device, count=2, seed=0):
    """(N, 3, size, size) inputs: the bundled photos, or seeded random images where unavailable."""
    if names:
        try:
            from igcam_fast.images.photos import bundled_photos, to_input

            return torch.cat([to_input(p.image, size, mean, std) for p in bundled_photos(names)]).to(device), None
        except Exception as err:
            why = f"bundled photos unavailable ({type(err).__name__}: {err}); random images instead"
    else:
        why = None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=g).to(device), why


def timing_inputs(m: Loaded, batch: int, device):
    """A batch of real photos (repeated) where available: timing does not depend on content."""
    x, _ = photo_inputs(["chelsea", "coffee", "astronaut", "rocket"], m.size, m.mean, m.std, device)
    x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch].contiguous()
    with torch.no_grad():
        targets = m.model(x).argmax(1).tolist()
    return x, targets


# ---- providers ----------------------------------------------------------------------------------


def first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:limit]}"


def try_provider(rec: Recorder, what: str, build: Callable[[], Callable], check: bool = True):
    """Build a provider and, unless check=False, call it once; a failure is a skip with the reason."""
    try:
        fn = build()
        if check:
            fn()
        return fn
    except Exception as err:
        rec.skip(what, first_line(err))
        return None


def measure_safely(rec: Recorder, providers, device, repeats, warmup) -> dict[str, Stats]:
    """measure() one provider group; a provider that fails while timed is dropped with its reason."""
    providers = list(providers)
    while providers:
        try:
            return measure(providers, device, repeats=repeats, warmup=warmup)
        except Exception as err:
            bad = None
            for prov in providers:  # find the culprit by calling each once
                try:
                    prov.fn()
                except Exception as inner:
                    bad = (prov, inner)
                    break
            if bad is None:
                rec.skip("timing group", first_line(err))
                return {}
            rec.skip(bad[0].name, first_line(bad[1]))
            providers.remove(bad[0])
    return {}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per map ‖a − b‖ / ‖b‖ over the leading dimension, in float64; NaN where the truth b is an
    all-zero map (a relative error means nothing there, and 0/0 must not read as "exact")."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    norm = b.norm(dim=1)
    err = (a - b).norm(dim=1) / norm.clamp(min=1e-300)
    return torch.where(norm > 0, err, torch.full_like(err, float("nan"))).tolist()
