"""The benchmark suite: what Integrated Grad-CAM costs over Grad-CAM, how many images per second
it explains, how accurate each quadrature is for its cost, where the time goes, and how fast the
kernels are — with the targets of the project judged met / not met from the measured numbers.

    python -m bench.run --preset quick|full|gpu [--out bench/results] [--device cpu|cuda]

Writes <out>/<device>-<date>-<preset>.json (one row per measurement, each naming device,
versions, dtype, batch, m, rule, backend, options, median ms, IQR, images/s, peak memory) and the
same tables as markdown (.md), and prints the markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from igcam_fast import ops
from igcam_fast.core.engine import DEFAULT_RULE, DEFAULT_STEPS, CamEngine

from . import comparators as C
from .timing import PeakMemory, Provider, Stats, device_slug, do_bench_ms, environment, measure, time_call

#: The paper's figures (Sattarzadeh et al., ICASSP 2021): quoted, never measured here.
PAPER = dict(device="NVIDIA P100 16 GB (paper)", model="resnet50", gradcam_ms=11.3, igcam_ms=54.8, ratio=4.85,
             steps=50, note="100 random PASCAL VOC 2007 test images; the authors' demo prints 230-255 ms for one "
                            "image at m=50 on an unnamed cloud GPU")

#: Every row of the JSON carries these fields (None where a field does not apply).
REQUIRED_FIELDS = ("device", "torch", "triton", "dtype", "batch", "m", "rule", "backend", "options", "median_ms",
                   "iqr_ms", "images_per_s", "peak_mem_mb")

THRESHOLDS = dict(accuracy=0.01, floor_ratio=1.03, authors_speedup=8.0, pgc_speedup=30.0, gpu_latency_ms=5.0,
                  gpu_gradcam_ratio=2.0, gpu_floor_share=0.90, kernel_copy_share=0.70, kernel_torch_speedup=3.0)


# ---- configuration -----------------------------------------------------------------------------------


@dataclass
class ModelCase:
    """A model to benchmark: build() -> (model, layer, mean, std, input_size, pretrained)."""

    name: str
    build: Callable[[], tuple]
    note: str = ""


def _torchvision(name):
    def build():
        from igcam_fast.models import load_model

        with torch.random.fork_rng():
            torch.manual_seed(0)
            spec = load_model(name)
        return spec.model, spec.layer, spec.mean, spec.std, spec.input_size, False

    return ModelCase(name, build, "torchvision architecture, random weights (timing only)")


def _efficientnet():
    def build():
        from igcam_fast.models import efficientnet_lite0

        spec = efficientnet_lite0()
        return spec.model, spec.layer, spec.mean, spec.std, spec.input_size, True

    return ModelCase("efficientnet_lite0", build, "pretrained ImageNet weights")


MODELS = {"resnet50": _torchvision("resnet50"), "vgg16": _torchvision("vgg16"),
          "efficientnet_lite0": _efficientnet()}

#: (label, rule, steps, extra engine options) of the accuracy-per-cost table.
ACCURACY_ALL = [("right 50 (paper)", "right", 50, {}), ("left 50", "left", 50, {}),
                ("demo 50 (authors' code: left, no A', sum/m)", "demo", 50, {}),
                ("middle 8", "middle", 8, {}), ("middle 16", "middle", 16, {}),
                *[(f"GL {m}", "gausslegendre", m, {}) for m in (4, 6, 8, 10, 12, 16, 32)],
                ("Grad-CAM (m=1, no A')", "gradcam", 1, {}),
                ("Grad-CAM - A' (m=1 at α=1)", "right", 1, {})]
ACCURACY_QUICK = [a for a in ACCURACY_ALL if a[0] in ("right 50 (paper)", "left 50",
                                                      "demo 50 (authors' code: left, no A', sum/m)", "middle 8",
                                                      "GL 4", "GL 8", "GL 10", "GL 16", "GL 32",
                                                      "Grad-CAM - A' (m=1 at α=1)")]

PRECISION_CPU = [("bf16 autocast", dict(autocast=torch.bfloat16)), ("channels_last off", dict(channels_last=False))]
PRECISION_ALL = [("bf16 autocast", dict(autocast=torch.bfloat16)), ("fp16 autocast", dict(autocast=torch.float16)),
                 ("channels_last off", dict(channels_last=False))]


@dataclass
class Preset:
    name: str
    models: list[ModelCase]
    batches: list[int]
    repeats: int = 3
    warmup: int = 1
    slow_repeats: int = 1  # the authors' procedure, pytorch-grad-cam over 50 steps, the reference
    slow_warmup: int = 0
    comparators: bool = True
    comparator_models: list[str] | None = None  # the slow m=50 comparators; None: every model
    paper_floor: bool = True  # also time the forward floor at the paper's m
    throughput_paper: bool = False  # the paper's m=50 also at the throughput batch (slow)
    throughput_repeats: int | None = None  # None: repeats
    paper_steps: int = 50
    reference_steps: dict = field(default_factory=dict)  # model name -> m; missing: skipped for time
    options_models: list[str] = field(default_factory=list)
    option_batches: list[int] = field(default_factory=lambda: [1])
    options: list = field(default_factory=list)  # (label, engine kwargs); backends are added
    accuracy_model: ModelCase | None = None
    accuracy_photos: list[str] | None = None  # None: accuracy_images random images
    accuracy_images: int = 2
    accuracy_configs: list = field(default_factory=list)
    accuracy_reference_steps: int = 128
    accuracy_repeats: int = 2
    accuracy_warmup: int = 1  # 0: the error computation just ran each configuration
    precision_configs: list = field(default_factory=list)
    breakdown_models: list[str] = field(default_factory=list)
    breakdown_paper: bool = True
    kernel_shapes: dict = field(default_factory=dict)
    kernel_repeats: int = 10
    copy_peak_mib: int = 256  # size of the large device copy that gives the peak copy bandwidth
    input_size: int | None = None  # None: the model's
    compile: bool = False


def _kernel_shapes(gpu: bool) -> dict:
    shapes = dict(path_images=[(1, 16, 3, 224, 224)],
                  combine=[(16, 2048, 7, 7), (16, 1280, 7, 7), (16, 512, 14, 14)],
                  upsample=[(1, 7, 7, 224, 224)])
    if gpu:  # the throughput batch too: the bandwidth targets need shapes that fill the device
        shapes["path_images"].append((64, 16, 3, 224, 224))
        shapes["combine"].append((1024, 2048, 7, 7))
        shapes["upsample"].append((64, 7, 7, 224, 224))
    return shapes


def preset(name: str) -> Preset:
    if name == "quick":
        return Preset("quick", [MODELS["resnet50"], MODELS["efficientnet_lite0"]], [1], repeats=3, warmup=1,
                      comparator_models=["resnet50"], paper_floor=False,
                      reference_steps={"efficientnet_lite0": 4}, options_models=["efficientnet_lite0"],
                      options=[("channels_last off", dict(channels_last=False)),
                               ("autocast bf16", dict(autocast=torch.bfloat16))],
                      accuracy_model=MODELS["efficientnet_lite0"], accuracy_photos=["chelsea", "coffee"],
                      accuracy_configs=ACCURACY_QUICK, accuracy_repeats=1, accuracy_warmup=0,
                      precision_configs=PRECISION_CPU,
                      breakdown_models=["resnet50", "efficientnet_lite0"], breakdown_paper=False,
                      kernel_shapes=_kernel_shapes(False),
                      kernel_repeats=10)
    if name == "full":
        return Preset("full", [MODELS["resnet50"], MODELS["vgg16"], MODELS["efficientnet_lite0"]], [1, 8],
                      repeats=5, warmup=1, slow_repeats=3, slow_warmup=1, throughput_repeats=3,
                      reference_steps={"resnet50": 8, "vgg16": 4, "efficientnet_lite0": 8},
                      options_models=["resnet50", "efficientnet_lite0"],
                      options=[("channels_last off", dict(channels_last=False)),
                               ("autocast bf16", dict(autocast=torch.bfloat16)),
                               ("autocast fp16", dict(autocast=torch.float16))],
                      accuracy_model=MODELS["efficientnet_lite0"],
                      accuracy_photos=["chelsea", "coffee", "astronaut", "rocket"], accuracy_configs=ACCURACY_ALL,
                      accuracy_repeats=3, precision_configs=PRECISION_ALL,
                      breakdown_models=["resnet50", "vgg16", "efficientnet_lite0"],
                      kernel_shapes=_kernel_shapes(False), kernel_repeats=30)
    if name == "gpu":
        return Preset("gpu", [MODELS["resnet50"], MODELS["vgg16"], MODELS["efficientnet_lite0"]], [1, 64],
                      repeats=10, warmup=2, slow_repeats=3, slow_warmup=1, throughput_repeats=5,
                      reference_steps={"resnet50": 8, "vgg16": 8, "efficientnet_lite0": 8},
                      options_models=["resnet50"], option_batches=[1, 64],
                      options=[("channels_last off", dict(channels_last=False)),
                               ("autocast fp16", dict(autocast=torch.float16)),
                               ("autocast bf16", dict(autocast=torch.bfloat16))],
                      accuracy_model=MODELS["efficientnet_lite0"],
                      accuracy_photos=["chelsea", "coffee", "astronaut", "rocket"], accuracy_configs=ACCURACY_ALL,
                      accuracy_repeats=5, precision_configs=PRECISION_ALL,
                      breakdown_models=["resnet50", "efficientnet_lite0"], kernel_shapes=_kernel_shapes(True),
                      kernel_repeats=50)
    raise ValueError(f"unknown preset {name!r}: quick, full or gpu")


# ---- rows --------------------------------------------------------------------------------------------


class Recorder:
    """Collects rows (dicts) and skip notes; every row gets the environment's fields."""

    def __init__(self, env: dict, log=None):
        self.env = env
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        self.log = log or (lambda msg: None)

    def skip(self, what: str, why: str):
        self.skipped.append(f"{what}: {why}")
        self.log(f"  skipped {what}: {why}")

    def add(self, section: str, *, stats: Stats | None = None, batch=None, **fields) -> dict:
        row = dict(section=section, device=self.env["device"], device_type=self.env["device_type"],
                   torch=self.env["torch"], triton=self.env["triton"], threads=self.env["threads"],
                   git_sha=self.env["git_sha"], dtype="float32", batch=batch, m=None, rule=None, backend=None,
                   options="", median_ms=None, q1_ms=None, q3_ms=None, iqr_ms=None, repeats=None,
                   images_per_s=None, peak_mem_mb=None, mem_method=None)
        if stats is not None:
            row.update(median_ms=stats.median_ms, q1_ms=stats.q1_ms, q3_ms=stats.q3_ms, iqr_ms=stats.iqr_ms,
                       repeats=len(stats.samples_ms), peak_mem_mb=stats.peak_mem_mb, mem_method=stats.mem_method)
            if batch and stats.median_ms > 0:
                row["images_per_s"] = batch / (stats.median_ms / 1e3)
        row.update(fields)
        self.rows.append(row)
        return row


def _options_text(opts: dict) -> str:
    parts = []
    for k, v in sorted(opts.items()):
        if isinstance(v, torch.dtype):
            v = str(v).replace("torch.", "")
        parts.append(f"{k}={v}")
    return ",".join(parts)


def _dtype_of(opts: dict) -> str:
    a = opts.get("autocast")
    return f"autocast {str(a).replace('torch.', '')}" if a is not None else "float32"


# ---- set-up -------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    case: ModelCase
    model: nn.Module
    layer: str
    mean: tuple
    std: tuple
    size: int
    pretrained: bool


def _case(p: Preset, name: str) -> ModelCase:
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


def _try_provider(rec: Recorder, what: str, build: Callable[[], Callable], check: bool = True):
    """Build a provider and, unless check=False, call it once; a failure is a skip with the reason."""
    try:
        fn = build()
        if check:
            fn()
        return fn
    except Exception as err:
        rec.skip(what, f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        return None


# ---- section 1: cost over Grad-CAM, throughput, comparators ----------------------------------------------


def section_models(p: Preset, device, rec: Recorder, models: dict):
    for case in p.models:
        m = load(case, device, rec, models, p.input_size)
        if m is None:
            continue
        for batch in p.batches:
            rec.log(f"[models] {case.name} batch {batch}")
            x, targets = timing_inputs(m, batch, device)
            common = dict(mean=m.mean, std=m.std)
            provs: list[tuple[Provider, dict]] = []

            def add(name, role, build, meta, slow=False, check=True):
                fn = _try_provider(rec, f"{case.name} b={batch} {name}", build, check)
                if fn is not None:
                    prov = Provider(name, fn, repeats=p.slow_repeats if slow else None,
                                    warmup=p.slow_warmup if slow else None)
                    provs.append((prov, dict(role=role, **meta)))

            add("ours Grad-CAM", "gradcam", lambda: C.project(m.model, m.layer, x, targets, method="gradcam",
                                                               **common),
                dict(m=1, rule="-", provider_kind="project"))
            add(f"ours IG-CAM default (GL {DEFAULT_STEPS})", "igcam_default",
                lambda: C.project(m.model, m.layer, x, targets, **common),
                dict(m=DEFAULT_STEPS, rule=DEFAULT_RULE, provider_kind="project"))
            paper_here = batch == 1 or p.throughput_paper
            if paper_here:
                add(f"ours IG-CAM paper (right {p.paper_steps})", "igcam_paper",
                    lambda: C.project(m.model, m.layer, x, targets, preset="paper", steps=p.paper_steps, **common),
                    dict(m=p.paper_steps, rule="right", provider_kind="project"))
            add("floor: inference forward m=1", "floor_gradcam",
                lambda: C.forward_floor(m.model, x, 1, rule="right", **common), dict(m=1, rule="right",
                                                                                      provider_kind="floor"))
            add(f"floor: inference forward m={DEFAULT_STEPS}", "floor_default",
                lambda: C.forward_floor(m.model, x, DEFAULT_STEPS, rule=DEFAULT_RULE, **common),
                dict(m=DEFAULT_STEPS, rule=DEFAULT_RULE, provider_kind="floor"))
            if p.paper_floor and paper_here:
                add(f"floor: inference forward m={p.paper_steps}", "floor_paper",
                    lambda: C.forward_floor(m.model, x, p.paper_steps, rule="right", **common),
                    dict(m=p.paper_steps, rule="right", provider_kind="floor"))
            slow_here = p.comparator_models is None or case.name in p.comparator_models
            if p.comparators and batch == 1 and not slow_here:
                rec.skip(f"{case.name} b={batch} authors' procedure and pytorch-grad-cam over {p.paper_steps} steps",
                         f"run on {', '.join(p.comparator_models)} only in the {p.name} preset (time)")
            if p.comparators and batch == 1:
                if slow_here:
                    add(f"authors' procedure m={p.paper_steps} (demo, TorchRay-style)", "authors",
                        lambda: C.authors_procedure(m.model, m.layer, x, targets, steps=p.paper_steps),
                        dict(m=p.paper_steps, rule="demo", provider_kind="comparator"), slow=True, check=False)
                why = C.pgc_available()
                if why:
                    rec.skip(f"{case.name} pytorch-grad-cam comparators", why)
                else:
                    add("pytorch-grad-cam GradCAM", "pgc_gradcam",
                        lambda: C.pgc_gradcam(m.model, m.layer, x, targets), dict(m=1, rule="-",
                                                                                  provider_kind="comparator"))
                    if slow_here:
                        add(f"pytorch-grad-cam GradCAM over {p.paper_steps} path images, averaged",
                            "pgc_composed",
                            lambda: C.pgc_composed(m.model, m.layer, x, targets, steps=p.paper_steps, **common),
                            dict(m=p.paper_steps, rule="right", provider_kind="comparator"), slow=True, check=False)
                    add("ours via the pytorch-grad-cam adapter (GradCAM, same call)", "pgc_adapter_gradcam",
                        lambda: C.pgc_adapter_gradcam(m.model, m.layer, x, targets),
                        dict(m=1, rule="-", provider_kind="project"))
                why = C.captum_available()
                if why:
                    rec.skip(f"{case.name} captum comparator", why)
                elif slow_here:
                    add(f"captum LayerGradCam over {p.paper_steps} path images, summed", "captum_composed",
                        lambda: C.captum_composed(m.model, m.layer, x, targets, steps=p.paper_steps, **common),
                        dict(m=p.paper_steps, rule="right", provider_kind="comparator"), slow=True, check=False)
                ref_m = p.reference_steps.get(case.name)
                if ref_m:
                    add(f"reference (reference.py, loop per step) m={ref_m}", "reference",
                        lambda: C.reference(m.model, m.layer, x, targets, steps=ref_m, **common),
                        dict(m=ref_m, rule="right", provider_kind="comparator"), slow=True, check=False)
                else:
                    rec.skip(f"{case.name} b={batch} reference", f"skipped for time in the {p.name} preset")
            if p.compile and device.type == "cuda":
                def compiled():
                    net = torch.compile(m.model)
                    return C.forward_floor(net, x, DEFAULT_STEPS, rule=DEFAULT_RULE, **common)
                add(f"floor with torch.compile m={DEFAULT_STEPS}", "floor_compiled", compiled,
                    dict(m=DEFAULT_STEPS, rule=DEFAULT_RULE, provider_kind="floor"))
            repeats = p.repeats if batch == 1 else (p.throughput_repeats or p.repeats)
            stats = _measure_safely(rec, [pv for pv, _ in provs], device, repeats, p.warmup)
            by_role = {}
            for prov, meta in provs:
                if prov.name not in stats:
                    continue
                backend = None
                if meta["provider_kind"] == "project":
                    backend = ops.choose_backend(device, [torch.float32]).name
                elif meta["provider_kind"] == "floor":
                    backend = "-"
                row = rec.add("models", stats=stats[prov.name], batch=batch, model=case.name, layer=m.layer,
                              pretrained=m.pretrained, provider=prov.name, backend=backend,
                              options=_options_text(dict(channels_last=True)) if meta["provider_kind"] != "comparator"
                              else "library defaults", **meta)
                by_role[meta["role"]] = row
            _add_ratios(by_role)


def _measure_safely(rec, providers, device, repeats, warmup) -> dict[str, Stats]:
    """measure() one provider group; a provider that fails while timed is dropped with its reason."""
    providers = list(providers)
    while providers:
        try:
            return measure(providers, device, repeats=repeats, warmup=warmup, log=None)
        except Exception as err:
            # find the culprit by calling each once
            bad = None
            for prov in providers:
                try:
                    prov.fn()
                except Exception as inner:
                    bad = (prov, inner)
                    break
            if bad is None:
                rec.skip("timing group", f"{type(err).__name__}: {err}")
                return {}
            rec.skip(bad[0].name, f"{type(bad[1]).__name__}: {str(bad[1]).splitlines()[0][:300]}")
            providers.remove(bad[0])
    return {}


def _add_ratios(by_role: dict):
    gc = by_role.get("gradcam")
    for role, row in by_role.items():
        if gc and row.get("median_ms") and gc.get("median_ms"):
            row["x_ours_gradcam"] = row["median_ms"] / gc["median_ms"]
        floor = by_role.get({"igcam_default": "floor_default", "igcam_paper": "floor_paper",
                             "gradcam": "floor_gradcam"}.get(role, ""))
        if floor and row.get("median_ms"):
            row["x_floor"] = row["median_ms"] / floor["median_ms"]
    ours = by_role.get("igcam_default")
    if ours:
        for role in ("authors", "pgc_composed", "captum_composed", "reference", "igcam_paper"):
            if role in by_role:
                by_role[role]["speedup_of_default"] = by_role[role]["median_ms"] / ours["median_ms"]


# ---- section 2: backends and dtype/layout options ---------------------------------------------------------


def section_options(p: Preset, device, rec: Recorder, models: dict):
    usable, unusable = C.usable_backends(device)
    for name, why in unusable.items():
        rec.skip(f"backend {name!r}", why)
    for model_name in p.options_models:
        m = load(_case(p, model_name), device, rec, models, p.input_size)
        if m is None:
            continue
        for batch in p.option_batches:
            rec.log(f"[options] {model_name} batch {batch}")
            x, targets = timing_inputs(m, batch, device)
            common = dict(mean=m.mean, std=m.std)
            configs = [(f"backend={b}", dict(backend=b)) for b in usable]
            configs += [(label, dict(opts)) for label, opts in p.options]
            provs, metas = [], {}
            floors = {}
            for label, opts in configs:
                ac = opts.get("autocast")
                why = C.backend_reasons(opts.get("backend") or ops.choose_backend(device, [torch.float32]).name,
                                        device, [ac or torch.float32])
                if why:
                    rec.skip(f"{model_name} option {label}", "; ".join(why))
                    continue
                fn = _try_provider(rec, f"{model_name} b={batch} option {label}",
                                   lambda: C.project(m.model, m.layer, x, targets, **common, **opts))
                if fn is None:
                    continue
                provs.append(Provider(label, fn))
                metas[label] = opts
                key = (ac, opts.get("channels_last", True))
                if key not in floors:
                    floors[key] = f"floor m={DEFAULT_STEPS} {_dtype_of(opts)} channels_last={key[1]}"
                    ffn = C.forward_floor(m.model, x, DEFAULT_STEPS, rule=DEFAULT_RULE, autocast=ac,
                                          channels_last=key[1], **common)
                    provs.append(Provider(floors[key], ffn))
                    metas[floors[key]] = dict(autocast=ac, channels_last=key[1], _floor=True)
            repeats = p.repeats if batch == 1 else (p.throughput_repeats or p.repeats)
            stats = _measure_safely(rec, provs, device, repeats, p.warmup)
            floor_ms = {}
            for label, opts in metas.items():
                if opts.get("_floor") and label in stats:
                    floor_ms[(opts["autocast"], opts["channels_last"])] = stats[label].median_ms
            for label, opts in metas.items():
                if label not in stats:
                    continue
                is_floor = bool(opts.get("_floor"))
                clean = {k: v for k, v in opts.items() if k != "_floor"}
                backend = "-" if is_floor else (opts.get("backend") or ops.choose_backend(
                    device, [opts.get("autocast") or torch.float32]).name)
                row = rec.add("options", stats=stats[label], batch=batch, model=model_name, layer=m.layer,
                              provider=label, role="option_floor" if is_floor else "option", m=DEFAULT_STEPS,
                              rule=DEFAULT_RULE, backend=backend, dtype=_dtype_of(clean),
                              options=_options_text({"channels_last": True, **clean}))
                if not is_floor:
                    fkey = (opts.get("autocast"), opts.get("channels_last", True))
                    if fkey in floor_ms:
                        row["x_floor"] = stats[label].median_ms / floor_ms[fkey]


# ---- section 3: accuracy per cost -----------------------------------------------------------------------


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a - b).norm(dim=1) / b.norm(dim=1).clamp(min=1e-300)).tolist()


def section_accuracy(p: Preset, device, rec: Recorder, models: dict):
    if p.accuracy_model is None:
        return
    m = load(p.accuracy_model, device, rec, models, p.input_size)
    if m is None:
        rec.skip("accuracy table", "its model could not be built")
        return
    rec.log(f"[accuracy] {m.case.name}")
    x, why = photo_inputs(p.accuracy_photos, m.size, m.mean, m.std, device, count=p.accuracy_images)
    if why:
        rec.skip("accuracy on real photos", why)
    photos = list(p.accuracy_photos) if p.accuracy_photos and not why else [f"random{i}" for i in range(x.shape[0])]
    with torch.no_grad():
        targets = m.model(x).argmax(1)
    common = dict(mean=m.mean, std=m.std)

    def maps(rule, steps, **opts):
        if rule == "gradcam":
            engine = CamEngine(m.model, m.layer, method="gradcam", output_size="layer", **common, **opts)
        elif rule == "demo":
            engine = CamEngine(m.model, m.layer, preset="demo", steps=steps, output_size="layer", **common, **opts)
        else:
            engine = CamEngine(m.model, m.layer, rule=rule, steps=steps, output_size="layer", **common, **opts)
        with engine:
            out = engine.explain(x, targets).layer_maps.float()
        return out / steps if rule == "demo" else out  # the demo sums; compare shapes at the same scale

    truth = maps("gausslegendre", p.accuracy_reference_steps)
    size = (x.shape[-2], x.shape[-1])
    truth_up = ops.upsample(truth, size, backend="torch")
    default_fp32 = maps(DEFAULT_RULE, DEFAULT_STEPS)
    configs = [(label, rule, steps, opts, "rule") for label, rule, steps, opts in p.accuracy_configs]
    configs += [(f"default (GL {DEFAULT_STEPS}) {label}", DEFAULT_RULE, DEFAULT_STEPS, opts, "precision")
                for label, opts in p.precision_configs]
    errors = {}
    for label, rule, steps, opts, kind in configs:
        why = C.backend_reasons(ops.choose_backend(device, [torch.float32]).name, device,
                                [opts.get("autocast") or torch.float32])
        try:
            got = maps(rule, steps, **opts)
        except Exception as err:
            rec.skip(f"accuracy {label}", f"{type(err).__name__}: {err}" + (f" ({'; '.join(why)})" if why else ""))
            continue
        errors[label] = (got, rule, steps, opts, kind)
    # Time of each configuration: one photo, batch 1, the usual output size, interleaved.
    x1, t1 = x[:1], targets[:1].tolist()
    provs = []
    for label, (got, rule, steps, opts, kind) in errors.items():
        if rule == "gradcam":
            fn = C.project(m.model, m.layer, x1, t1, method="gradcam", **common)
        elif rule == "demo":
            fn = C.project(m.model, m.layer, x1, t1, preset="demo", steps=steps, **common, **opts)
        else:
            fn = C.project(m.model, m.layer, x1, t1, rule=rule, steps=steps, **common, **opts)
        provs.append(Provider(label, fn))
    stats = _measure_safely(rec, provs, device, p.accuracy_repeats, p.accuracy_warmup)
    for label, (got, rule, steps, opts, kind) in errors.items():
        err = _rel_l2(got, truth)
        err_up = _rel_l2(ops.upsample(got, size, backend="torch"), truth_up)
        row = rec.add("accuracy", stats=stats.get(label), batch=1, model=m.case.name, layer=m.layer,
                      provider=label, role="accuracy_default" if (rule, steps, opts) == (DEFAULT_RULE, DEFAULT_STEPS, {})
                      else f"accuracy_{kind}", m=steps, rule=rule, backend=ops.choose_backend(device, [torch.float32]).name,
                      dtype=_dtype_of(opts), options=_options_text({"channels_last": True, **opts}),
                      rel_l2_layer=err, rel_l2_max=max(err), rel_l2_mean=sum(err) / len(err), rel_l2_upsampled=err_up,
                      photos=photos, truth=f"GL {p.accuracy_reference_steps}, float32, layer resolution")
        if kind == "precision":
            row["rel_l2_vs_fp32_default"] = _rel_l2(got, default_fp32)


# ---- section 4: where the time goes ---------------------------------------------------------------------

RANGES = ("igcam::path", "igcam::forward", "igcam::head_backward", "igcam::combine", "igcam::upsample",
          "igcam::baseline_features")


def breakdown(fn, device) -> dict:
    """One profiled call: time inside each igcam:: range and the rest (Python overhead).

    CPU: host time of each range. GPU: device time of the kernels inside each range; the rest of
    the wall time is the device waiting for the host.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with contextlib.redirect_stderr(io.StringIO()), profile(activities=activities) as prof:
        wall = time_call(fn, device)
    host = {k: 0.0 for k in RANGES}
    dev = {k: 0.0 for k in RANGES}
    # Host-side range events only (the profiler also emits device-side copies of user ranges);
    # the device time of a host range counts the kernels launched inside it.
    for evt in prof.events():
        if evt.name in RANGES and str(getattr(evt, "device_type", "")).endswith("CPU"):
            host[evt.name] += evt.cpu_time_total / 1e3
            if device.type == "cuda":
                with contextlib.suppress(Exception):
                    dev[evt.name] += (getattr(evt, "device_time_total", None) or evt.cuda_time_total) / 1e3
    if device.type == "cuda" and sum(dev.values()) > 0:
        parts, kind = dev, "device"
    else:
        parts, kind = host, "host"
    rest = wall - sum(parts.values())
    return dict(wall_ms=wall, parts_ms=parts, rest_ms=rest, kind=kind)


def section_breakdown(p: Preset, device, rec: Recorder, models: dict):
    for name in p.breakdown_models:
        m = load(_case(p, name), device, rec, models, p.input_size)
        if m is None:
            continue
        rec.log(f"[breakdown] {name}")
        x, targets = timing_inputs(m, 1, device)
        configs = [(f"default (GL {DEFAULT_STEPS})", {})]
        if p.breakdown_paper:
            configs.append((f"paper (right {p.paper_steps})", dict(preset="paper", steps=p.paper_steps)))
        for label, opts in configs:
            try:
                fn = C.project(m.model, m.layer, x, targets, mean=m.mean, std=m.std, **opts)
                b = breakdown(fn, device)
                with PeakMemory(device) as pm:
                    fn()
            except Exception as err:
                rec.skip(f"breakdown {name} {label}", f"{type(err).__name__}: {err}")
                continue
            rec.add("breakdown", batch=1, model=name, layer=m.layer, provider=label, role="breakdown",
                    m=opts.get("steps", DEFAULT_STEPS), rule="right" if opts else DEFAULT_RULE,
                    backend=ops.choose_backend(device, [torch.float32]).name, options=_options_text(opts),
                    median_ms=b["wall_ms"], repeats=1, peak_mem_mb=pm.mb, mem_method=pm.method,
                    breakdown_ms={k.split("::")[1]: v for k, v in b["parts_ms"].items()}, rest_ms=b["rest_ms"],
                    breakdown_kind=b["kind"], note="one profiled call (profiler overhead included)")


# ---- section 5: kernels ----------------------------------------------------------------------------------


def _op_case(op: str, shape, device, dtype=torch.float32):
    """(callable(backend) -> None, bytes moved) for one op at one shape."""
    g = torch.Generator(device="cpu").manual_seed(0)
    esize = torch.tensor([], dtype=dtype).element_size()
    if op == "path_images":
        B, m, Cc, H, W = shape
        x = torch.randn(B, Cc, H, W, generator=g).to(device, dtype)
        base = torch.randn(Cc, H, W, generator=g).to(device, dtype)
        alphas = torch.linspace(0.05, 1, m).to(device)
        out = torch.empty(B * m, Cc, H, W, device=device, dtype=dtype)
        nbytes = (x.numel() + base.numel() + out.numel()) * esize
        return (lambda be: ops.path_images(x, base, alphas, backend=be, out=out)), nbytes
    if op == "combine":
        N, K, h, w = shape
        m = 16 if N % 16 == 0 else N  # 16 path points per image, as the default
        A = torch.randn(N, K, h, w, generator=g).to(device, dtype)
        G = torch.randn(N, K, h, w, generator=g).to(device, dtype)
        Ab = torch.randn(K, h, w, generator=g).to(device, dtype)
        sw = torch.full((m,), 1 / m, device=device)
        out = torch.empty(N // m, h, w, device=device, dtype=torch.float32)
        nbytes = (A.numel() + G.numel() + Ab.numel()) * esize + out.numel() * 4
        return (lambda be: ops.combine(A, G, None, Ab, sw, backend=be, out=out)), nbytes
    if op == "upsample":
        B, h, w, H, W = shape
        maps = torch.rand(B, h, w, generator=g).to(device, dtype)
        out = torch.empty(B, H, W, device=device, dtype=torch.float32)
        nbytes = maps.numel() * esize + out.numel() * 4
        return (lambda be: ops.upsample(maps, (H, W), backend=be, out=out)), nbytes
    raise ValueError(op)


def _copy_bench(nbytes: int, device, repeats):
    """A device-to-device copy moving ``nbytes`` in total (half read, half written)."""
    n = max(1, nbytes // 8)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return do_bench_ms(lambda: dst.copy_(src), device, repeats=repeats)


def section_kernels(p: Preset, device, rec: Recorder):
    usable, unusable = C.usable_backends(device)
    rec.log(f"[kernels] backends {usable}")
    nbytes = 2 * p.copy_peak_mib * 2**20  # read + written
    big = _copy_bench(nbytes, device, p.kernel_repeats)
    peak_gbps = nbytes / (big.median_ms / 1e3) / 1e9
    rec.add("kernels", stats=big, op="copy", shape=f"{p.copy_peak_mib} MiB -> {p.copy_peak_mib} MiB",
            backend="torch copy_", role="copy_peak",
            provider="device copy", gbps=peak_gbps)
    for op, shapes in p.kernel_shapes.items():
        for shape in shapes:
            call, nbytes = _op_case(op, shape, device)
            copy = _copy_bench(nbytes, device, p.kernel_repeats)
            copy_gbps = nbytes / (copy.median_ms / 1e3) / 1e9
            results = {}
            for be in usable:
                try:
                    call(be)
                    results[be] = do_bench_ms(lambda: call(be), device, repeats=p.kernel_repeats)
                except Exception as err:
                    rec.skip(f"kernel {op} {shape} backend {be}", f"{type(err).__name__}: {str(err)[:300]}")
            torch_ms = results["torch"].median_ms if "torch" in results else None
            for be, st in results.items():
                gbps = nbytes / (st.median_ms / 1e3) / 1e9
                rec.add("kernels", stats=st, op=op, shape="x".join(map(str, shape)), backend=be, role="kernel",
                        provider=f"{op} [{be}]", bytes=nbytes, gbps=gbps, copy_gbps_same_bytes=copy_gbps,
                        copy_gbps_peak=peak_gbps, share_of_copy=gbps / copy_gbps,
                        speedup_vs_torch=(torch_ms / st.median_ms) if torch_ms else None)


# ---- targets -------------------------------------------------------------------------------------------


def _find(rows, **kv):
    return [r for r in rows if all(r.get(k) == v for k, v in kv.items())]


def _target(name, text, measured, threshold, met, note=""):
    return dict(target=name, description=text, measured=measured, threshold=threshold, met=met, note=note)


def evaluate_targets(rows: list[dict], device_type: str) -> list[dict]:
    """Judge each target from the rows alone: met (True), not met (False) or not measured (None)."""
    out = []
    T = THRESHOLDS
    # (a) default within 1 % of the converged map
    acc = _find(rows, section="accuracy", role="accuracy_default")
    if acc:
        worst = max(r["rel_l2_max"] for r in acc)
        out.append(_target("a", f"default (GL {DEFAULT_STEPS}) within 1 % of the converged map", f"{worst:.2%} (max over photos)",
                           f"≤ {T['accuracy']:.0%}", worst <= T["accuracy"]))
    else:
        out.append(_target("a", "default within 1 % of the converged map", None, f"≤ {T['accuracy']:.0%}", None,
                           "accuracy table not run"))
    # (b) end-to-end within 1.03x of the forward floor
    parts = []
    for r in _find(rows, section="models", role="igcam_default"):
        if r.get("x_floor") is not None:
            parts.append((f"{r['model']} b={r['batch']}", r["x_floor"]))
    if parts:
        worst = max(v for _, v in parts)
        out.append(_target("b", "IG-CAM default within 1.03x of the forward-only floor (same config)",
                           ", ".join(f"{k}: {v:.3f}x" for k, v in parts), f"≤ {T['floor_ratio']}x",
                           worst <= T["floor_ratio"]))
    else:
        out.append(_target("b", "within 1.03x of the forward floor", None, f"≤ {T['floor_ratio']}x", None, "not measured"))
    # (c) CPU speed-ups over the authors' procedure and pytorch-grad-cam
    for key, role, thr, text in (("c1", "authors", T["authors_speedup"], "≥ 8x faster than the authors' procedure (m=50)"),
                                 ("c2", "pgc_composed", T["pgc_speedup"],
                                  "≥ 30x faster than pytorch-grad-cam composed over 50 steps")):
        if device_type != "cpu":
            out.append(_target(key, text + " [CPU target]", None, f"≥ {thr}x", None, "CPU target; this run is on a GPU"))
            continue
        vals = [(f"{r['model']}", r["speedup_of_default"]) for r in _find(rows, section="models", role=role, batch=1)
                if r.get("speedup_of_default") is not None]
        if vals:
            out.append(_target(key, text + " (our default vs their m=50)", ", ".join(f"{k}: {v:.1f}x" for k, v in vals),
                               f"≥ {thr}x", min(v for _, v in vals) >= thr))
        else:
            out.append(_target(key, text, None, f"≥ {thr}x", None, "comparator not measured"))
    # (d) GPU latency and throughput
    if device_type != "cuda":
        out.append(_target("d", "GPU: ResNet-50 b=1 < 5 ms and < 2x Grad-CAM; throughput ≥ 90% of floor/m", None,
                           "", None, "GPU target; this run is on the CPU"))
    else:
        ig = _find(rows, section="models", role="igcam_default", model="resnet50", batch=1)
        if ig:
            r = ig[0]
            ratio = r.get("x_ours_gradcam")
            out.append(_target("d1", "GPU: ResNet-50 batch 1 IG-CAM < 5 ms", f"{r['median_ms']:.2f} ms",
                               f"< {T['gpu_latency_ms']} ms", r["median_ms"] < T["gpu_latency_ms"]))
            out.append(_target("d2", "GPU: ResNet-50 batch 1 IG-CAM < 2x our Grad-CAM",
                               f"{ratio:.2f}x" if ratio else None, f"< {T['gpu_gradcam_ratio']}x",
                               (ratio < T["gpu_gradcam_ratio"]) if ratio else None))
        thr_rows = [r for r in _find(rows, section="models", role="igcam_default") if (r["batch"] or 0) > 1
                    and r.get("x_floor")]
        if thr_rows:
            shares = [(f"{r['model']} b={r['batch']}", 1 / r["x_floor"]) for r in thr_rows]
            out.append(_target("d3", "GPU: throughput batch ≥ 90% of forward floor / m",
                               ", ".join(f"{k}: {v:.0%}" for k, v in shares), f"≥ {T['gpu_floor_share']:.0%}",
                               min(v for _, v in shares) >= T["gpu_floor_share"]))
    # (e) kernels
    kern = _find(rows, section="kernels", role="kernel")
    if device_type == "cuda":
        for op in ("combine", "path_images"):
            cand = [r for r in kern if r["op"] == op and r["backend"] != "torch"]
            if not cand:
                out.append(_target(f"e-{op}", f"{op}: ≥ 70% of copy bandwidth and ≥ 3x the torch chain", None, "",
                                   None, "no fused GPU backend measured"))
                continue
            for be in sorted({r["backend"] for r in cand}):
                rs = [r for r in cand if r["backend"] == be]
                share = min(r["share_of_copy"] for r in rs)
                speed = min((r["speedup_vs_torch"] or 0) for r in rs)
                out.append(_target(f"e-{op}-{be}", f"{op} [{be}]: ≥ 70% of same-size copy bandwidth and ≥ 3x torch",
                                   f"worst shape: {share:.0%} of copy, {speed:.1f}x torch",
                                   "≥ 70%, ≥ 3x", share >= T["kernel_copy_share"] and speed >= T["kernel_torch_speedup"]))
    else:
        for op in ("path_images", "combine", "upsample"):
            rs = [r for r in kern if r["op"] == op and r["backend"] == "cpu"]
            if not rs or any(r.get("speedup_vs_torch") is None for r in rs):
                out.append(_target(f"e-{op}", f"CPU: {op} 'cpu' backend beats 'torch'", None, "> 1x", None,
                                   "cpu or torch backend not measured"))
                continue
            speed = min(r["speedup_vs_torch"] for r in rs)
            out.append(_target(f"e-{op}", f"CPU: {op} 'cpu' backend beats 'torch'",
                               ", ".join(f"{r['shape']}: {r['speedup_vs_torch']:.2f}x" for r in rs), "> 1x", speed > 1))
    return out


# ---- markdown ------------------------------------------------------------------------------------------


def _f(v, fmt="{:.1f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _table(headers, lines):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def markdown(env: dict, p: Preset, rows: list[dict], targets: list[dict], skipped: list[str], elapsed: float) -> str:
    md = [f"# igcam_fast benchmark — {env['device']} — {env['date']} — preset {p.name}", ""]
    md.append(f"Device: **{env['device']}** ({env['device_type']}), torch {env['torch']}, triton {env['triton']}, "
              f"Python {env['python']}, {env['threads']} threads of {env['cpus']} CPUs, git {env['git_sha']}. "
              f"dtype float32 unless a row says otherwise; images at the model's input size (224×224 for the real models). Medians of interleaved repeats "
              f"({'CUDA events' if env['device_type'] == 'cuda' else 'perf_counter'}); IQR = q3 − q1. "
              f"Suite ran {elapsed:.0f} s; load average (1, 5, 15 min) {env.get('loadavg_at_start')} at the start, "
              f"{env.get('loadavg_at_end')} at the end — a load above the thread count means other processes "
              f"shared the CPUs and the CPU timings are inflated and noisy.")
    if env["device_type"] == "cuda":
        md.append(f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, TF32 conv {env.get('tf32_conv')}, "
                  f"TF32 matmul {env.get('tf32_matmul')}.")
    md.append("ResNet-50 and VGG16 have **random weights** (torchvision architectures; right for timing, not for "
              "localisation); EfficientNet-Lite0 is pretrained.")
    md += ["", "## The paper's figures (quoted, not measured here)", "",
           _table(["source", "device", "model", "Grad-CAM ms", "IG-CAM ms (m=50)", "ratio"],
                  [["paper", PAPER["device"], "ResNet-50", PAPER["gradcam_ms"], PAPER["igcam_ms"], PAPER["ratio"]]]
                  + [["this run", env["device"], "ResNet-50 (b=1)",
                      _f(_one(rows, "gradcam"), "{:.1f}"), _f(_one(rows, "igcam_paper"), "{:.1f}"),
                      _f(_safe_div(_one(rows, "igcam_paper"), _one(rows, "gradcam")), "{:.2f}")]]),
           "", f"({PAPER['note']}.) Our default (GL {DEFAULT_STEPS}) on ResNet-50 b=1: "
           f"{_f(_one(rows, 'igcam_default'))} ms, {_f(_safe_div(_one(rows, 'igcam_default'), _one(rows, 'gradcam')), '{:.2f}')}× our Grad-CAM.", ""]
    mrows = _find(rows, section="models")
    if mrows:
        md += ["## Cost over Grad-CAM, throughput and comparators", ""]
        lines = [[r["model"], r["batch"], r["provider"], r["m"], r["rule"], r["backend"] or "-", _f(r["median_ms"]),
                  _f(r["iqr_ms"]), r["repeats"], _f(r["images_per_s"], "{:.2f}"), _f(r.get("x_ours_gradcam"), "{:.2f}"),
                  _f(r.get("x_floor"), "{:.3f}"), _f(r.get("speedup_of_default"), "{:.1f}"), _f(r["peak_mem_mb"], "{:.0f}")]
                 for r in mrows]
        md += [_table(["model", "B", "provider", "m", "rule", "backend", "median ms", "IQR ms", "n", "images/s",
                       "× our Grad-CAM", "× floor", "× our default", "peak MiB"], lines), "",
               "× floor: over the inference forward of the same path images (same dtype, layout, chunks). "
               "× our default: how many times slower than our default IG-CAM. Comparators run their libraries' "
               "defaults (contiguous float32, the authors' zero baseline). Peak MiB: "
               + ("torch.cuda.max_memory_allocated above the start." if env["device_type"] == "cuda" else
                  "process peak-RSS growth during the first timed call, after malloc_trim (approximate)."),
               ""]
    orows = _find(rows, section="options")
    if orows:
        md += [f"## Backends and dtype/layout options (default GL {DEFAULT_STEPS})", ""]
        md += [_table(["model", "B", "option", "backend", "dtype", "options", "median ms", "IQR ms", "images/s",
                       "× floor", "peak MiB"],
                      [[r["model"], r["batch"], r["provider"], r["backend"], r["dtype"], r["options"], _f(r["median_ms"]),
                        _f(r["iqr_ms"]), _f(r["images_per_s"], "{:.2f}"), _f(r.get("x_floor"), "{:.3f}"),
                        _f(r["peak_mem_mb"], "{:.0f}")] for r in orows]), ""]
    arows = _find(rows, section="accuracy")
    if arows:
        truth = arows[0]["truth"]
        md += [f"## Accuracy per cost ({arows[0]['model']}, photos {', '.join(arows[0]['photos'])}; "
               f"truth: {truth})", ""]
        md += [_table(["configuration", "m", "dtype", "rel. L2 per photo (layer)", "max", "at 224×224 (max)",
                       "vs fp32 default", "ms (b=1)", "IQR ms"],
                      [[r["provider"], r["m"], r["dtype"], " / ".join(f"{e:.2%}" for e in r["rel_l2_layer"]),
                        f"{r['rel_l2_max']:.2%}", f"{max(r['rel_l2_upsampled']):.2%}",
                        (f"{max(r['rel_l2_vs_fp32_default']):.2%}" if r.get("rel_l2_vs_fp32_default") else "-"),
                        _f(r["median_ms"]), _f(r["iqr_ms"])] for r in arows]), "",
               "The demo row is divided by m (it sums) and does not subtract A' — a different map, not a "
               "quadrature error.", ""]
    brows = _find(rows, section="breakdown")
    if brows:
        names = [k.split("::")[1] for k in RANGES]
        md += ["## Where the time of one call goes (torch.profiler, record_function ranges)", ""]
        md += [_table(["model", "config", "wall ms", *[f"{n} ms" for n in names], "rest (Python/launch) ms",
                       "timed", "peak MiB"],
                      [[r["model"], r["provider"], _f(r["median_ms"]), *[_f(r["breakdown_ms"][n], "{:.2f}") for n in names],
                        _f(r["rest_ms"], "{:.2f}"), r["breakdown_kind"], _f(r["peak_mem_mb"], "{:.0f}")] for r in brows]),
               "", "One profiled call each (profiler overhead included). 'forward' is the body up to and through "
               "the layer and the head with a graph; baseline_features is a cache hit after the first call.", ""]
    krows = _find(rows, section="kernels")
    if krows:
        md += ["## Kernels (the three fused ops per backend)", ""]
        md += [_table(["op", "shape", "backend", "median ms", "IQR ms", "GB/s", "copy GB/s (same bytes)",
                       "% of copy", "× torch"],
                      [[r["op"], r["shape"], r["backend"], _f(r["median_ms"], "{:.4f}"), _f(r["iqr_ms"], "{:.4f}"),
                        _f(r["gbps"], "{:.1f}"), _f(r.get("copy_gbps_same_bytes"), "{:.1f}"),
                        _f(100 * r["share_of_copy"] if r.get("share_of_copy") else None, "{:.0f}"),
                        _f(r.get("speedup_vs_torch"), "{:.2f}")] for r in krows]), ""]
    md += ["## Targets", ""]
    md += [_table(["target", "what", "measured", "threshold", "result"],
                  [[t["target"], t["description"], t["measured"] or "-", t["threshold"],
                    {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
                    + (f" ({t['note']})" if t["note"] else "")] for t in targets]), ""]
    if skipped:
        md += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(md)


def _one(rows, role, model="resnet50", batch=1):
    r = _find(rows, section="models", role=role, model=model, batch=batch)
    return r[0]["median_ms"] if r else None


def _safe_div(a, b):
    return a / b if a is not None and b else None


# ---- driver ---------------------------------------------------------------------------------------------


SECTIONS = ("models", "options", "accuracy", "breakdown", "kernels")


def run_suite(p: Preset, device, *, sections=SECTIONS, log=None) -> tuple[dict, list[dict], list[dict], str]:
    """Run the preset; returns (environment, rows, targets, markdown)."""
    device = torch.device(device)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    env = environment(device)
    rec = Recorder(env, log)
    models: dict = {}
    t0 = time.perf_counter()
    for name in sections:
        ts = time.perf_counter()
        try:
            if name == "models":
                section_models(p, device, rec, models)
            elif name == "options":
                section_options(p, device, rec, models)
            elif name == "accuracy":
                section_accuracy(p, device, rec, models)
            elif name == "breakdown":
                section_breakdown(p, device, rec, models)
            elif name == "kernels":
                section_kernels(p, device, rec)
        except Exception as err:  # one broken section must not lose the others' numbers
            rec.skip(f"section {name}", f"{type(err).__name__}: {err}")
            log(traceback.format_exc())
        log(f"  section {name}: {time.perf_counter() - ts:.1f} s")
    elapsed = time.perf_counter() - t0
    env["elapsed_s"] = elapsed
    with contextlib.suppress(OSError):
        env["loadavg_at_end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    targets = evaluate_targets(rec.rows, device.type)
    md = markdown(env, p, rec.rows, targets, rec.skipped, elapsed)
    return env, rec.rows, targets, md


def write_results(out_dir: Path, env: dict, p: Preset, rows, targets, md) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{device_slug(env)}-{env['date']}-{p.name}"
    jpath, mpath = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    payload = dict(environment=env, preset=p.name, paper=PAPER, thresholds=THRESHOLDS, targets=targets, rows=rows)
    jpath.write_text(json.dumps(payload, indent=1, default=str))
    mpath.write_text(md)
    return jpath, mpath


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("quick", "full", "gpu"), default="quick")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda for the gpu preset, else cpu)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all CPUs)")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd forward floor (GPU)")
    args = ap.parse_args(argv)
    import os

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = torch.device(args.device or ("cuda" if args.preset == "gpu" else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda (or --preset gpu) needs a visible NVIDIA GPU")
    p = preset(args.preset)
    p.compile = args.compile
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    env, rows, targets, md = run_suite(p, device, sections=sections)
    jpath, mpath = write_results(Path(args.out), env, p, rows, targets, md)
    print(md)
    print(f"\nwrote {jpath} and {mpath}", file=sys.stderr)


if __name__ == "__main__":
    main()
