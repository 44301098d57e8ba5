"""What each preset runs, as data: the models, batches, repeats, options, accuracy configurations
and kernel shapes of ``quick`` (a few minutes on 2 CPU cores), ``full`` (the CPU results under
bench/results) and ``gpu`` (one NVIDIA card, under five minutes; bench/gpu_check.sh).

The tables below name models, dtypes and configurations by strings; :func:`preset` turns one
into a :class:`Preset` of model cases and torch dtypes. Tests build a Preset directly with tiny
model cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class ModelCase:
    """A model to benchmark: build() -> (model, layer, mean, std, input_size, pretrained)."""

    name: str
    build: Callable[[], tuple]
    note: str = ""


def _loaded(name: str, pretrained: bool) -> Callable[[], tuple]:
    def build():
        from igcam_fast.models import load_model

        with torch.random.fork_rng():  # random weights, the same ones every run
            torch.manual_seed(0)
            spec = load_model(name)
        return spec.model, spec.layer, spec.mean, spec.std, spec.input_size, pretrained

    return build


MODELS = {
    "resnet50": ModelCase("resnet50", _loaded("resnet50", False), "torchvision architecture, random weights (timing only)"),
    "vgg16": ModelCase("vgg16", _loaded("vgg16", False), "torchvision architecture, random weights (timing only)"),
    "efficientnet_lite0": ModelCase("efficientnet_lite0", _loaded("efficientnet_lite0", True),
                                    "pretrained ImageNet weights"),
}

#: (label, rule, steps, extra engine options) of the accuracy-per-cost table.
ACCURACY_CONFIGS = [
    ("right 50 (paper)", "right", 50, {}), ("left 50", "left", 50, {}),
    ("demo 50 (authors' code: left, no A', sum/m)", "demo", 50, {}),
    ("middle 8", "middle", 8, {}), ("middle 16", "middle", 16, {}),
    *[(f"GL {m}", "gausslegendre", m, {}) for m in (4, 6, 8, 10, 12, 16, 32)],
    ("Grad-CAM (m=1, no A')", "gradcam", 1, {}),
    ("Grad-CAM - A' (m=1 at α=1)", "right", 1, {}),
]
ACCURACY_QUICK = ("right 50 (paper)", "left 50", "demo 50 (authors' code: left, no A', sum/m)", "middle 8", "GL 4",
                  "GL 8", "GL 10", "GL 16", "GL 32", "Grad-CAM - A' (m=1 at α=1)")

#: Options are engine keywords, plus ``tf32`` (the bench sets torch's TF32 switches around the
#: call); dtypes are named by strings. ``cuda_graph`` and ``compile`` are recorded as "not
#: available" where the engine does not take them.
CHANNELS_LAST_OFF = ("channels_last off", {"channels_last": False})
BF16, FP16 = ("autocast bf16", {"autocast": "bfloat16"}), ("autocast fp16", {"autocast": "float16"})
GPU_EXECUTION = [("fp32, TF32 off", {"tf32": False}), ("fp32, TF32 on", {"tf32": True}),
                 ("eager (cuda_graph=False)", {"cuda_graph": False}), ("CUDA graph (cuda_graph=True)", {"cuda_graph": True})]
COMPILE = [("torch.compile (compile=True)", {"compile": True}),
           ("torch.compile + CUDA graph", {"compile": True, "cuda_graph": True})]

#: The three fused ops at the default's shapes (B = 1, m = 16) and, on a GPU, at a throughput
#: batch, since the bandwidth targets need shapes that fill the device.
#: path_images (B, m, C, H, W); combine (B·m, K, h, w) with m = 16; upsample (B, h, w, H, W).
KERNEL_SHAPES = {
    "cpu": dict(path_images=[(1, 16, 3, 224, 224)], combine=[(16, 2048, 7, 7), (16, 1280, 7, 7), (16, 512, 14, 14)],
                upsample=[(1, 7, 7, 224, 224)]),
    "gpu": dict(path_images=[(1, 16, 3, 224, 224), (64, 16, 3, 224, 224)],
                combine=[(16, 2048, 7, 7), (16, 1280, 7, 7), (16, 512, 14, 14), (1024, 2048, 7, 7)],
                upsample=[(1, 7, 7, 224, 224), (64, 7, 7, 224, 224)]),
}

PRESETS = {
    "quick": dict(
        models=["resnet50", "efficientnet_lite0"], batches=[1], repeats=3, warmup=1, comparator_models=["resnet50"],
        paper_floor=False, reference_steps={"efficientnet_lite0": 4}, options_models=["efficientnet_lite0"],
        options=[CHANNELS_LAST_OFF, BF16], options_error_steps=32,
        accuracy_model="efficientnet_lite0", accuracy_photos=["chelsea", "coffee"], accuracy_configs=ACCURACY_QUICK,
        accuracy_repeats=1, accuracy_warmup=0, precision_configs=[BF16, CHANNELS_LAST_OFF],
        breakdown_models=["resnet50", "efficientnet_lite0"], breakdown_paper=False, kernel_shapes="cpu",
        kernel_repeats=10),
    "full": dict(
        models=["resnet50", "vgg16", "efficientnet_lite0"], batches=[1, 8], repeats=5, warmup=1, slow_repeats=3,
        slow_warmup=1, throughput_repeats=3, reference_steps={"resnet50": 8, "vgg16": 4, "efficientnet_lite0": 8},
        options_models=["resnet50", "efficientnet_lite0"], options=[CHANNELS_LAST_OFF, BF16, FP16],
        accuracy_model="efficientnet_lite0", accuracy_photos=["chelsea", "coffee", "astronaut", "rocket"],
        accuracy_configs="all", accuracy_repeats=3, precision_configs=[BF16, FP16, CHANNELS_LAST_OFF],
        breakdown_models=["resnet50", "vgg16", "efficientnet_lite0"], kernel_shapes="cpu", kernel_repeats=30),
    "gpu": dict(
        models=["resnet50", "vgg16", "efficientnet_lite0"], batches=[1, 64], repeats=10, warmup=2, slow_repeats=3,
        slow_warmup=1, throughput_repeats=5, reference_steps={"resnet50": 8, "vgg16": 8, "efficientnet_lite0": 8},
        options_models=["resnet50", "vgg16"], option_batches=[1, 64],
        options=[*GPU_EXECUTION, FP16, BF16, CHANNELS_LAST_OFF], compile_options=COMPILE, options_error_steps=128,
        accuracy_model="efficientnet_lite0", accuracy_photos=["chelsea", "coffee", "astronaut", "rocket"],
        accuracy_configs="all", accuracy_repeats=5, precision_configs=[FP16, BF16, CHANNELS_LAST_OFF],
        breakdown_models=["resnet50", "vgg16", "efficientnet_lite0"], kernel_shapes="gpu", kernel_repeats=50),
}


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
    options: list = field(default_factory=list)  # (label, options); backends are added
    compile_options: list = field(default_factory=list)  # timed as a group of their own, batch 1
    options_error_steps: int | None = None  # each option's error against GL m (fp32); None: not computed
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
    compile: bool = False  # also time a torch.compile'd forward floor (GPU)


def dtype_named(name):
    """torch.float16 for "float16" (a torch dtype passes through; None stays None)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def resolved_options(options: list) -> list[tuple[str, dict]]:
    """(label, options) with dtype names turned into torch dtypes."""
    return [(label, {k: dtype_named(v) if k == "autocast" else v for k, v in opts.items()}) for label, opts in options]


def preset(name: str) -> Preset:
    """The Preset of one row of :data:`PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: {', '.join(PRESETS)}")
    spec = dict(PRESETS[name])
    spec["models"] = [MODELS[m] for m in spec["models"]]
    spec["accuracy_model"] = MODELS[spec["accuracy_model"]] if spec.get("accuracy_model") else None
    chosen = spec.get("accuracy_configs", ())
    spec["accuracy_configs"] = (ACCURACY_CONFIGS if chosen == "all" else
                                [c for c in ACCURACY_CONFIGS if c[0] in chosen])
    for key in ("options", "compile_options", "precision_configs"):
        spec[key] = resolved_options(spec.get(key, []))
    spec["kernel_shapes"] = KERNEL_SHAPES[spec["kernel_shapes"]]
    return Preset(name, **spec)


__all__ = ["ModelCase", "MODELS", "Preset", "PRESETS", "preset", "ACCURACY_CONFIGS", "KERNEL_SHAPES",
           "dtype_named", "resolved_options"]


def dry_version(p: Preset) -> Preset:
    """The same preset shrunk to check its logic on a CPU in a few minutes (``--dry``): 64×64
    inputs, batches 1 and 2, one repeat, the paper's setting and the comparators at m = 8 (the
    slow comparators on the first model only), few accuracy configurations, small kernel shapes.
    The numbers mean nothing; what runs, and what is recorded, is the preset's."""
    import dataclasses

    small_shapes = dict(path_images=[(1, 4, 3, 16, 16), (16, 4, 3, 16, 16)], combine=[(16, 32, 3, 3), (256, 32, 3, 3)],
                        upsample=[(1, 3, 3, 16, 16), (16, 3, 3, 16, 16)])
    return dataclasses.replace(
        p, name=p.name + "-dry", batches=sorted({min(b, 2) for b in p.batches}), repeats=1, warmup=0, slow_repeats=1,
        paper_steps=8, comparator_models=[m.name for m in p.models[:1]],
        slow_warmup=0, throughput_repeats=1, reference_steps={k: 2 for k in p.reference_steps},
        option_batches=sorted({min(b, 2) for b in p.option_batches}),
        options_error_steps=8 if p.options_error_steps else None, accuracy_configs=p.accuracy_configs[:3],
        accuracy_reference_steps=16, accuracy_repeats=1, accuracy_warmup=0, breakdown_models=p.breakdown_models[:1],
        kernel_shapes=small_shapes, kernel_repeats=2, copy_peak_mib=4, input_size=64,
        compile_options=p.compile_options[:1])
