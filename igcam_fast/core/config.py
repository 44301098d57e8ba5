"""The engine's options, in one documented, validated object.

``CamEngine(model, layer, **options)`` and the one-shot functions build a :class:`CamConfig` from
their keyword arguments; every option is checked here, on entry, with an error that names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

import torch

from igcam_fast.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from igcam_fast.core.quadrature import NESTED_RULES, PATTERSON_LEVELS, canonical_rule

#: The default quadrature: the fewest forward passes measured to stay within 1 % (relative L2)
#: of a 128-node Gauss-Legendre map on ten real photos (worst 0.87 %; README, "Defaults").
DEFAULT_RULE = "gausslegendre"
DEFAULT_STEPS = 10

#: Named settings of Integrated Grad-CAM. "accurate": Gauss-Legendre m = 16 (worst 0.51 % on the
#: same photos). "paper": the paper's right Riemann sum, m = 50. "demo": the authors' code
#: (α_i = i/m for i = 0..m-1, no A' subtraction, sum). "gradcam_minus_baseline": the ablation of
#: Grad-CAM with A' subtracted (m = 1 at α = 1).
PRESETS = {
    "default": dict(rule=DEFAULT_RULE, steps=DEFAULT_STEPS, subtract_baseline=True),
    "accurate": dict(rule="gausslegendre", steps=16, subtract_baseline=True),
    "paper": dict(rule="right", steps=50, subtract_baseline=True),
    "demo": dict(rule="demo", steps=50, subtract_baseline=False),
    "gradcam_minus_baseline": dict(rule="right", steps=1, subtract_baseline=True),
}

#: More path points than this is a mistake (10^6 would run for hours), not a request.
MAX_STEPS = 4096

#: Rows (path images) per forward when not given: small enough for CPU caches and GPU memory
#: at 224×224, large enough to amortise per-call overhead. CUDA halves it on out-of-memory. On the
#: CPU, 64 rows were measured 1.2–1.9× slower per image than 16 (EfficientNet-Lite0 and ResNet-50,
#: 224×224, 2 cores; the whole engine at batch 8, m = 10: 1.44× and 1.20×): activations of hundreds
#: of MB are page-faulted in afresh on every forward.
DEFAULT_BATCH_ROWS = {"cpu": 16, "cuda": 256}

AUTOCAST_DTYPES = (None, torch.float16, torch.bfloat16)


def default_batch_rows(device) -> int:
    return DEFAULT_BATCH_ROWS.get(torch.device(device).type, 64)


@dataclass
class CamConfig:
    """Every option of a :class:`~igcam_fast.core.engine.CamEngine`.

    Attributes:
        method: "igcam" (Integrated Grad-CAM), "gradcam" or "gradcampp" (see :mod:`igcam_fast.core.methods`).
        rule, steps: the quadrature of the path integral (rules of :mod:`igcam_fast.core.quadrature`);
            Grad-CAM and Grad-CAM++ are one point, α = 1.
        subtract_baseline: subtract A' = A(x') at each path point (the paper) or not (the authors' demo).
        baseline: "black" (black pixels through the normalisation), "zeros", a tensor (C, H, W) or
            (B, C, H, W) in model-input space, or a callable x -> tensor.
        mean, std: the model's input normalisation (for the "black" baseline); None: the one the
            model carries (:mod:`igcam_fast.core.preprocessing`), else ImageNet's.
        relu: ReLU at each path point (the paper) or signed maps.
        normalize: min-max scale each map to [0, 1] as pytorch-grad-cam does (at layer resolution,
            then again after upsampling when there is upsampling).
        output_size: (H, W) of the output maps; None: the input's size; "layer": no upsampling.
        batch_rows: path images per forward; None: :data:`DEFAULT_BATCH_ROWS` of the device.
        autocast: None (the input's dtype), torch.float16 or torch.bfloat16 for the forward. Rows whose
            fp16 activations or gradients overflow are redone in float32 (``CamResult.precision_fallback_rows``).
        channels_last: lay the path images out channels_last (None: where the model accepts it, which
            is decided once per input shape; the maps are identical either way).
        backend: force a backend for the fused ops (see ``igcam_fast.ops.explain_backends``).
        allow_training: explain a model whose BatchNorm/Dropout-like modules are in training mode
            anyway (the map then depends on the batch and on chance; running statistics are restored).
        reshape_transform: a function making the layer's output and gradient (N, K, h, w), e.g. for
            ViT/Swin tokens (pytorch-grad-cam's meaning; it must only rearrange elements).
        closed_form_head: take the channel weights from the linear classifier where the layer reaches
            the scores only through global average pooling and one linear layer (no head forward or
            backward); None: wherever that is detected, False: never.
        tol: integrate each image until the estimate of its layer map's relative L2 quadrature error is
            at most tol (e.g. 0.01), with the nested Gauss–Kronrod–Patterson levels 7, 15, 31, 63
            (igcam_fast.core.adaptive; rule and steps are then not used). None: the fixed rule/steps.
        max_steps: with tol, the most path points an image gets (None: 63); an image that reaches it
            stops with its estimate above tol (``CamResult.error_estimate``, ``settings["not_converged"]``).
    """

    method: str = "igcam"
    rule: str = DEFAULT_RULE
    steps: int = DEFAULT_STEPS
    subtract_baseline: bool = True
    baseline: Any = "black"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    relu: bool = True
    normalize: bool = False
    output_size: Any = None
    batch_rows: int | None = None
    autocast: torch.dtype | None = None
    channels_last: bool | None = None
    backend: str | None = None
    allow_training: bool = False
    reshape_transform: Callable | None = None
    closed_form_head: bool | None = None
    tol: float | None = None
    max_steps: int | None = None
    preset: str | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, method: str = "igcam", *, preset: str | None = None, rule: str | None = None,
                     steps: int | None = None, subtract_baseline: bool | None = None, **options) -> "CamConfig":
        """The config of ``method`` with a preset (Integrated Grad-CAM only) and explicit overrides."""
        from igcam_fast.core.methods import get_method

        walks_path = get_method(method).walks_path
        unknown = sorted(set(options) - {f.name for f in fields(cls)} - {"method", "preset"})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {unknown}: not options of the engine; the options are "
                            f"{sorted(f.name for f in fields(cls))}")
        if walks_path:
            if preset is not None and preset not in PRESETS:
                raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
            quadrature = dict(PRESETS[preset or "default"])
            for name, value in (("rule", rule), ("steps", steps), ("subtract_baseline", subtract_baseline)):
                if value is not None:
                    quadrature[name] = value
        else:  # Grad-CAM and Grad-CAM++: one point, the input itself
            if preset is not None or rule is not None or steps not in (None, 1):
                raise ValueError(f"method={method!r} takes no preset, rule or steps (it is one point, α = 1)")
            quadrature = dict(rule="right", steps=1, subtract_baseline=bool(subtract_baseline))
        config = cls(method=method, preset=preset, **quadrature, **options)
        config.validate()
        return config

    def with_options(self, **changes) -> "CamConfig":
        config = replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        self.rule = canonical_rule(self.rule)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise TypeError(f"steps must be an int, got {type(self.steps).__name__}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps must be at most {MAX_STEPS} (Gauss-Legendre with 16 is within 0.5 % of the "
                             f"converged map), got {self.steps}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, _channel_values(name, value))
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together (or neither, to use the model's own normalisation)")
        if self.mean is not None:
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean and std must have the same length, got {len(self.mean)} and {len(self.std)}")
            if any(s == 0 for s in self.std):
                raise ValueError("std must not contain zeros")
        if self.batch_rows is not None and (isinstance(self.batch_rows, bool) or not isinstance(self.batch_rows, int)
                                            or self.batch_rows < 1):
            raise ValueError(f"batch_rows must be a positive int, got {self.batch_rows!r}")
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None, torch.float16 or torch.bfloat16, got {self.autocast!r}")
        self.output_size = _output_size(self.output_size)
        if self.reshape_transform is not None and not callable(self.reshape_transform):
            raise TypeError("reshape_transform must be a callable (N, ...) -> (N, K, h, w)")
        self._validate_tolerance()
        for name in ("relu", "normalize", "subtract_baseline", "allow_training"):
            setattr(self, name, bool(getattr(self, name)))

    def _validate_tolerance(self) -> None:
        if self.rule in NESTED_RULES and self.steps not in PATTERSON_LEVELS:
            raise ValueError(f"steps must be one of {PATTERSON_LEVELS} for rule={self.rule!r} (its nested levels), "
                             f"got {self.steps}")
        if self.tol is not None:
            if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not math.isfinite(self.tol) \
                    or not 0 < self.tol < 1:
                raise ValueError(f"tol must be a relative error between 0 and 1 (e.g. 0.01), got {self.tol!r}")
            self.tol = float(self.tol)
            if self.method != "igcam":
                raise ValueError(f"tol= applies to Integrated Grad-CAM's path integral; method={self.method!r} is "
                                 "one point (drop tol)")
        if self.max_steps is not None:
            if self.tol is None:
                raise ValueError("max_steps caps the path points of tol=; give tol= too (or use steps=)")
            if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or not (
                    PATTERSON_LEVELS[2] <= self.max_steps <= MAX_STEPS):
                raise ValueError(f"max_steps must be an int from {PATTERSON_LEVELS[2]} (the first nested level) to "
                                 f"{MAX_STEPS}, got {self.max_steps!r}; the levels used are {PATTERSON_LEVELS[2:]}")

    def normalisation(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as float64 tensors: the given ones, the model's own, or ImageNet's.

        A mean/std given by hand that differs from the one the model carries is refused: the
        "black" baseline would silently be another image.
        """
        from igcam_fast.core.preprocessing import preprocessing_of

        carried = preprocessing_of(model)
        if self.mean is not None:
            if carried is not None and not (_same(carried.mean, self.mean) and _same(carried.std, self.std)):
                raise ValueError(f"mean={self.mean} / std={self.std} differ from the model's own normalisation "
                                 f"(mean={carried.mean}, std={carried.std}); drop mean= and std= to use the model's")
            mean, std = self.mean, self.std
        elif carried is not None:
            mean, std = carried.mean, carried.std
        else:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)


def _channel_values(name: str, value) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value))
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, one per channel, got {value!r}") from None
    if not values:
        raise ValueError(f"{name} must have one value per channel, got an empty sequence")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {values}")
    return values


def _output_size(value):
    if value is None or value == "layer":
        return value
    if isinstance(value, str):
        raise ValueError(f"output_size must be (H, W), None or 'layer', got {value!r}")
    try:
        size = tuple(value)
    except TypeError:
        raise TypeError(f"output_size must be (H, W), None or 'layer', got {value!r}") from None
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"output_size must be two positive ints (H, W), got {value!r}")
    return size


def _same(a, b, rel: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rel * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))
