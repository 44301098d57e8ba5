"""The ops, as a list a test or a benchmark can walk: per op its name, its Python entry, its
float64 reference (in igcam_fast.core.reference, plain and literal) and its test cases.

A case is an awkward shape with a set of options (per-image baseline, normalisation, output
dtype and layout, weight mode, ...); :meth:`OpSpec.cases` gives the cases of one input dtype
and one layout, and :meth:`Case.prepare` builds their inputs, deterministic from the case id.
tests/ops/test_conformance.py runs every case on every backend that declares it can take it;
an op added here (docs/adding-an-op.md) is picked up there without further edits.

The references are named, not imported: igcam_fast.core sits above the ops, so they resolve on
first use (:attr:`OpSpec.reference`), and importing the ops never imports the core.
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .combine import combine
from .common import FLOAT_DTYPES, LAYOUTS, accumulation_dtype
from .path_images import path_images
from .upsample import upsample


@dataclass(frozen=True)
class Prepared:
    """One case's inputs: ``entry(*args, **options, **op_options)`` against
    ``reference(*ref_args, **options)``. ``input_dtypes`` pick the tolerance."""

    args: tuple
    options: dict
    op_options: dict
    ref_args: tuple
    input_dtypes: frozenset
    out: Optional[torch.Tensor] = None  # a caller-provided, NaN-filled out (op_options carries it too)
    expect_dtype: Optional[torch.dtype] = None  # of the result, when the case fixes it
    expect_memory_format: Optional[torch.memory_format] = None
    #: How much the op itself magnifies an error of the computation before its last step (the
    #: min-max scaling divides by 1e-7 + max - min): the tolerance is multiplied by it.
    amplification: float = 1.0


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype
    layout: str
    variant: dict
    make: Callable = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        opts = "-".join(f"{k}={_short(v)}" for k, v in self.variant.items())
        return f"{'x'.join(map(str, self.shape))}-{_short(self.dtype)}-{self.layout}" + (f"-{opts}" if opts else "")

    def prepare(self, device) -> Prepared:
        gen = torch.Generator().manual_seed(zlib.crc32(f"{self.op}:{self.id}".encode()))
        return self.make(self, torch.device(device), gen)


@dataclass(frozen=True)
class OpSpec:
    name: str
    entry: Callable
    reference_name: str  # "module:function"
    shapes: Sequence[tuple]
    variants: Callable[[int, int], dict]  # (shape index, layout index) -> options of that case
    make: Callable
    dtypes: tuple = FLOAT_DTYPES
    layouts: tuple = LAYOUTS

    @property
    def reference(self) -> Callable:
        module, function = self.reference_name.split(":")
        return getattr(importlib.import_module(module), function)

    def cases(self, dtype: torch.dtype, layout: str) -> list[Case]:
        li = self.layouts.index(layout)
        return [Case(self.name, tuple(shape), dtype, layout, self.variants(i, li), self.make)
                for i, shape in enumerate(self.shapes)]


def _short(v) -> str:
    return str(v).replace("torch.", "").replace(" ", "")


# ---- layouts -------------------------------------------------------------------------------


def laid_out(t: Optional[torch.Tensor], layout: str) -> Optional[torch.Tensor]:
    """t with the same values in ``layout``: "contiguous", "channels_last" (4-D; others stay
    contiguous) or "strided", a view into a NaN-filled buffer whose dims cannot be flattened."""
    if t is None:
        return None
    if layout == "contiguous" or (layout == "channels_last" and t.dim() != 4):
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 4:  # K stride not 1, (h, w) not collapsible
        n, k, h, w = t.shape
        big = torch.full((n, h + 1, 2 * k, w + 1), float("nan"), dtype=t.dtype, device=t.device)
        view = big[:, :h, ::2, 1:].permute(0, 2, 1, 3)
    elif t.dim() == 3:
        a, h, w = t.shape
        big = torch.full((a, w + 1, 2 * h), float("nan"), dtype=t.dtype, device=t.device)
        view = big[:, 1:, ::2].transpose(1, 2)
    else:
        big = torch.full([2 * s for s in t.shape], float("nan"), dtype=t.dtype, device=t.device)
        view = big[tuple(slice(None, None, 2) for _ in t.shape)]
    view.copy_(t)
    return view


def _strided_out(shape, dtype, device) -> torch.Tensor:
    """A NaN-filled (N, ...) out in neither layout: its dims reversed in memory."""
    return torch.full(tuple(reversed(shape)), float("nan"), dtype=dtype, device=device).permute(
        *reversed(range(len(shape))))


# ---- path_images -----------------------------------------------------------------------------

_OUT_DTYPES = (None, torch.float32, torch.float16, None, torch.bfloat16, None)
_OUT_LAYOUTS = ("new", "channels_last", "new", "strided", "new", "channels_last")


def _path_variants(i, li):
    return {"per_image": (i + li) % 2 == 1, "normalize": (i + li) % 3 != 0,
            "out_dtype": _OUT_DTYPES[i % len(_OUT_DTYPES)], "out": _OUT_LAYOUTS[(i + li) % len(_OUT_LAYOUTS)]}


def _make_path_images(case, device, gen):
    B, C, H, W, m = case.shape
    v, dt = case.variant, case.dtype
    x = torch.rand(B, C, H, W, generator=gen).to(dt)
    baseline = torch.rand(*((B,) if v["per_image"] else ()), C, H, W, generator=gen).to(dt)
    alphas = torch.rand(m, generator=gen, dtype=torch.float64)
    mean = torch.rand(C, generator=gen) if v["normalize"] else None
    std = torch.rand(C, generator=gen) + 0.5 if v["normalize"] else None
    out_dtype = v["out_dtype"] or dt
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    args = (laid_out(dev(x), case.layout), laid_out(dev(baseline), case.layout), dev(alphas), dev(mean), dev(std))
    out, memory_format = None, None
    if v["out"] == "strided":
        out = _strided_out((B * m, C, H, W), out_dtype, device)
        op_options = {"out": out}
    else:
        op_options = {"dtype": out_dtype, "channels_last": v["out"] == "channels_last"}
        memory_format = torch.channels_last if v["out"] == "channels_last" else torch.contiguous_format
    return Prepared(args, {}, op_options, (x, baseline, alphas, mean, std), frozenset({dt, out_dtype}), out,
                    out_dtype, memory_format)


# ---- combine ---------------------------------------------------------------------------------

_WEIGHTS = ("gradcam", "gradcampp", "given")


def _combine_variants(i, li):
    return {"weights": _WEIGHTS[(i + li) % 3], "baseline": (None, 3, 4)[(i + 2 * li) % 3],
            "relu": (i + li) % 4 != 1, "grad_layout": "same" if (i + li) % 3 else "other",
            "out": "strided" if (i + li) % 4 == 2 else "new"}


def _make_combine(case, device, gen):
    B, m, K, h, w = case.shape
    v, dt = case.variant, case.dtype
    N = B * m
    # Post-ReLU activations and small gradients: Grad-CAM++'s weights are ill-conditioned on
    # Gaussian activations (its denominator crosses zero), in every precision.
    pp = v["weights"] == "gradcampp"
    A = (torch.rand(N, K, h, w, generator=gen) if pp else torch.randn(N, K, h, w, generator=gen)).to(dt)
    G = (1e-2 * torch.randn(N, K, h, w, generator=gen)).to(dt) if v["weights"] != "given" else None
    # given weights in float32 next to half activations when K is odd: mixed dtypes too
    cw_dtype = torch.float32 if dt in (torch.float16, torch.bfloat16) and K % 2 else dt
    cw = torch.randn(N, K, generator=gen).to(cw_dtype) if v["weights"] == "given" else None
    base = None
    if v["baseline"] is not None:
        base = torch.rand(*((B,) if v["baseline"] == 4 else ()), K, h, w, generator=gen)
        base = (base if pp else base - 0.5).to(dt)
    omega = torch.rand(m, generator=gen, dtype=torch.float64)
    mode = "gradcampp" if pp else "gradcam"
    grad_layout = case.layout if v["grad_layout"] == "same" else (
        "channels_last" if case.layout == "contiguous" else "contiguous")
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    args = (laid_out(dev(A), case.layout), laid_out(dev(G), grad_layout), laid_out(dev(cw), case.layout),
            laid_out(dev(base), case.layout), dev(omega))
    options = {"weight_mode": mode, "relu": v["relu"]}
    dtypes = frozenset({dt} | ({cw.dtype} if cw is not None else set()))
    acc = accumulation_dtype(dt)
    out = _strided_out((B, h, w), acc, device) if v["out"] == "strided" else None
    return Prepared(args, options, {"out": out} if out is not None else {}, (A, G, cw, base, omega), dtypes, out,
                    acc, None if out is not None else torch.contiguous_format)


# ---- upsample --------------------------------------------------------------------------------


def _upsample_variants(i, li):
    return {"normalize": (i + li) % 2 == 1, "out": "strided" if i % 4 == 3 else "new"}


def _make_upsample(case, device, gen):
    B, h, w, H, W = case.shape
    maps = torch.randn(B, h, w, generator=gen).to(case.dtype)
    args = (laid_out(maps.to(device), case.layout), (H, W))
    options = {"normalize": case.variant["normalize"]}
    amplification = 1.0
    if options["normalize"]:
        up = torch.nn.functional.interpolate(maps.double()[:, None], size=(H, W), mode="bilinear")[:, 0].flatten(1)
        span = up.amax(dim=1) - up.amin(dim=1)
        amplification = max(1.0, float((up.abs().amax(dim=1).clamp(min=1) / (1e-7 + span)).max()))
    acc = accumulation_dtype(case.dtype)
    out = _strided_out((B, H, W), acc, device) if case.variant["out"] == "strided" else None
    return Prepared(args, options, {"out": out} if out is not None else {}, (maps, (H, W)), frozenset({case.dtype}),
                    out, acc, None if out is not None else torch.contiguous_format, amplification)


# ---- the registry ----------------------------------------------------------------------------

OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    OPS[spec.name] = spec
    return spec


register_op(OpSpec(
    "path_images", path_images, "igcam_fast.core.reference:reference_path_images",
    shapes=[  # (B, C, H, W, m)
        (1, 1, 1, 1, 1), (2, 3, 5, 7, 4), (3, 4, 9, 6, 5), (1, 3, 11, 13, 2), (2, 2, 3, 17, 3), (2, 3, 17, 13, 9),
    ],
    variants=_path_variants, make=_make_path_images))

register_op(OpSpec(
    "combine", combine, "igcam_fast.core.reference:reference_combine",
    shapes=[  # (B, m, K, h, w)
        (1, 1, 1, 1, 1), (2, 3, 3, 7, 7), (3, 2, 37, 5, 9), (1, 5, 300, 7, 7),  # K split over programs
        (2, 2, 300, 1, 1), (1, 2, 37, 9, 9),  # channels_last: the plane spans several tiles
        (1, 2, 3, 33, 33),  # contiguous: likewise
        (2, 2, 0, 3, 3),  # no channels: zero maps
        (1, 3, 130, 14, 14),
    ],
    variants=_combine_variants, make=_make_combine))

register_op(OpSpec(
    "upsample", upsample, "igcam_fast.core.reference:reference_upsample",
    shapes=[  # (B, h, w, H, W), each with and without normalize
        (1, 1, 1, 5, 3), (1, 1, 1, 5, 3), (2, 7, 7, 13, 11), (2, 7, 7, 13, 11), (3, 5, 9, 31, 17),
        (3, 5, 9, 31, 17), (1, 9, 9, 4, 5), (1, 9, 9, 4, 5),  # downsampling
        (2, 6, 4, 6, 4), (2, 6, 4, 6, 4),  # same size
        (1, 7, 5, 41, 37), (1, 7, 5, 41, 37),  # several tiles per map
        (2, 7, 7, 224, 224), (2, 7, 7, 224, 224),
    ],
    variants=_upsample_variants, make=_make_upsample, layouts=("contiguous", "strided")))
