"""What Integrated Grad-CAM costs on a model: Grad-CAM, Integrated Grad-CAM settings and the
forward-only floor of the same path images, built as zero-argument callables on fixed inputs and
timed interleaved (:mod:`igcam_fast.benchmarking.timing`), with their ratios.

    settings = comparison_settings(["accurate"])              # Grad-CAM, default, paper, accurate
    providers = comparison_providers(model, "layer4", x, targets, settings, mean=..., std=...)
    stats = timing.measure(providers, x.device, repeats=10)
    rows = comparison_rows(providers, stats, batch=x.shape[0])  # medians, IQR, × Grad-CAM, × floor

The floor is the inference forward of exactly the B·m path images the engine builds (same rule,
m, dtype, layout, chunks); the path images exist before the clock starts, so the floor is the cost
of the network alone, and ``× floor`` is what the method adds to it. ``igcam-fast bench`` and the
repository's suite (bench/) both time through these functions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from igcam_fast import ops
from igcam_fast.core.engine import DEFAULT_RULE, DEFAULT_STEPS, PRESETS, CamEngine
from igcam_fast.core.engine import chunk_plan, default_batch_rows  # the floor runs the engine's chunks
from igcam_fast.core.quadrature import canonical_rule, path_nodes
from igcam_fast.benchmarking.timing import Provider, Stats

#: The paper's figures (Sattarzadeh et al., ICASSP 2021): quoted beside our numbers, never measured here.
PAPER = dict(device="NVIDIA P100 16 GB (paper)", model="resnet50", gradcam_ms=11.3, igcam_ms=54.8, ratio=4.85,
             steps=50, note="100 random PASCAL VOC 2007 test images; the authors' demo prints 230-255 ms for one "
                            "image at m=50 on an unnamed cloud GPU")

#: The names ``--dtype`` accepts and the autocast dtype each means (None: the model's float32).
AUTOCAST_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Setting:
    """One method configuration to time.

    role: "gradcam", "igcam_<preset>" (igcam_default, igcam_paper, ...), "igcam_custom" or "igcam_tol".
    options: the CamEngine keywords that select it (method, preset, rule, steps, tol).
    rule, steps: the path it walks, hence the path images its forward-only floor runs. An
        error-controlled setting (tol) has no fixed path: steps is 0, it gets no floor, and its
        mean path points per image are recorded when it is first called.
    """

    role: str
    label: str
    options: dict = field(hash=False)
    rule: str
    steps: int


GRADCAM = Setting("gradcam", "Grad-CAM", dict(method="gradcam"), "right", 1)


def preset_setting(name: str, steps: int | None = None) -> Setting:
    """The Integrated Grad-CAM setting of one of the engine's PRESETS (at ``steps`` path points
    instead of the preset's, when given)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    spec = PRESETS[name]
    rule, m = canonical_rule(spec["rule"]), int(spec["steps"] if steps is None else steps)
    options = dict(preset=name) if steps is None else dict(preset=name, steps=m)
    short = "GL" if rule == "gausslegendre" else rule
    return Setting(f"igcam_{name}", f"IG-CAM {name} ({short} {m})", options, rule, m)


def custom_setting(steps: int | None = None, rule: str | None = None) -> Setting:
    """Integrated Grad-CAM at a given m and/or rule (the default's for what is not given)."""
    rule = canonical_rule(rule or DEFAULT_RULE)
    steps = DEFAULT_STEPS if steps is None else steps
    path_nodes(rule, steps)  # validates steps for the rule, with the engine's message
    short = "GL" if rule == "gausslegendre" else rule
    return Setting("igcam_custom", f"IG-CAM {short} {steps}", dict(rule=rule, steps=steps), rule, steps)


def tol_setting(tol: float, max_steps: int | None = None) -> Setting:
    """Integrated Grad-CAM with each image integrated until its own error estimate is at most tol."""
    from igcam_fast.core.config import CamConfig

    CamConfig.from_options(tol=tol, max_steps=max_steps)  # validates, with the engine's message
    options = dict(tol=tol) if max_steps is None else dict(tol=tol, max_steps=max_steps)
    cap = "" if max_steps is None else f", ≤{max_steps}"
    return Setting("igcam_tol", f"IG-CAM tol={tol:g}{cap}", options, "patterson", 0)


def comparison_settings(presets=(), *, steps: int | None = None, rule: str | None = None, tol: float | None = None,
                        max_steps: int | None = None, paper: bool = True) -> list[Setting]:
    """Grad-CAM, the default Integrated Grad-CAM, the paper's setting (unless paper=False), each
    preset named in ``presets``, when steps or rule is given that custom setting, and when tol is
    given the error-controlled one; no duplicates."""
    settings = [GRADCAM, preset_setting("default")]
    if paper:
        settings.append(preset_setting("paper"))
    for name in presets:
        s = preset_setting(name)
        if s.role not in {t.role for t in settings}:
            settings.append(s)
    if steps is not None or rule is not None:
        settings.append(custom_setting(steps, rule))
    if tol is not None:
        settings.append(tol_setting(tol, max_steps))
    return settings


# ---- the callables ------------------------------------------------------------------------------


def black_image(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(C, H, W) black pixels in model-input space, the engine's default baseline."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    std = torch.as_tensor(std, dtype=torch.float64)
    return ((0 - mean) / std).to(x.device, x.dtype)[:, None, None].expand(x.shape[1:]).contiguous()


def autocast_context(device: torch.device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def forward_floor(model: nn.Module, x: torch.Tensor, m: int, *, rule=DEFAULT_RULE, mean, std, autocast=None,
                  channels_last=True, batch_rows=None):
    """A callable running the inference forward of the (B·m, C, H, W) path images the engine
    would build, in the engine's chunks. Same dtype (autocast), same layout, same chunking; the
    path images exist before the clock starts, so this is the cost of the network alone."""
    device = x.device
    alphas, _ = path_nodes(rule, m)
    base = black_image(x, mean, std)
    path = ops.path_images(x, base, alphas.to(device, torch.float32), dtype=autocast or x.dtype,
                           channels_last=channels_last, backend="torch")
    rows = batch_rows or default_batch_rows(device)
    # Row b·m + t of the path batch; the engine's pieces are (images, steps) blocks of it.
    pieces = [path.view(x.shape[0], m, *path.shape[1:])[images, steps].flatten(0, 1)
              for images, steps in chunk_plan(x.shape[0], m, rows)]

    def run():
        with torch.inference_mode(), autocast_context(device, autocast):
            for piece in pieces:
                model(piece)

    return run


def engine_call(model: nn.Module, layer, x: torch.Tensor, targets, *, mean, std, **options):
    """A callable running CamEngine(model, layer, mean=..., std=..., **options).explain(x, targets).

    The engine (its hook, its cached baseline features) is built here, outside the timed region,
    and kept as ``.engine`` on the callable; the caller closes it when done.
    """
    engine = CamEngine(model, layer, mean=mean, std=std, **options)
    targets = torch.as_tensor(targets, dtype=torch.int64)

    def run():
        return engine.explain(x, targets)

    run.engine = engine
    return run


def comparison_providers(model: nn.Module, layer, x: torch.Tensor, targets, settings: list[Setting], *, mean, std,
                         autocast=None, channels_last=True, batch_rows=None, engine_options=None,
                         floors=True, label_prefix: str = "") -> list[Provider]:
    """One provider per setting and one forward-only floor per distinct path (rule, m) among
    them (floors=False: none; a set of roles: only for those settings). Each provider's ``meta``
    says what it is: role, kind ("method" or "floor"), m, rule and, for a method with a floor,
    the name of its floor provider (``floor``). Method labels start with ``label_prefix``."""
    engine_options = dict(engine_options or {})
    common = dict(mean=mean, std=std, autocast=autocast, channels_last=channels_last, batch_rows=batch_rows)
    providers, floor_names = [], {}
    try:
        for s in settings:
            fn = engine_call(model, layer, x, targets, **s.options, **common, **engine_options)
            providers.append(Provider(label_prefix + s.label, fn, meta=dict(role=s.role, kind="method", m=s.steps,
                                                                            rule=s.rule)))
    except Exception:
        close_providers(providers)  # the hooks of the engines built before the one that failed
        raise
    if floors:
        for s, method in zip(settings, list(providers)):
            if (floors is not True and s.role not in floors) or s.steps == 0:  # tol: no fixed path to floor
                continue
            key = (s.rule, s.steps)
            if key not in floor_names:
                floor_names[key] = f"floor: forward of {s.steps} path image{'s' if s.steps > 1 else ''} ({s.rule})"
                role = "floor_gradcam" if s.role == "gradcam" else "floor_" + s.role.removeprefix("igcam_")
                providers.append(Provider(floor_names[key], forward_floor(model, x, s.steps, rule=s.rule, **common),
                                          meta=dict(role=role, kind="floor", m=s.steps, rule=s.rule)))
            method.meta["floor"] = floor_names[key]
    return providers


def check_providers(providers: list[Provider]) -> None:
    """Call each provider once (a first call compiles, allocates and fills caches; an error shows
    here, before any timing) and record in a method's meta the ``backend`` its CamResult names."""
    for p in providers:
        out = p.fn()
        if p.meta.get("kind") == "method":
            p.meta["backend"] = getattr(out, "backend", None) or None
            if p.meta.get("m") == 0:  # tol: the path points the images got (the same on every call)
                p.meta["m"] = round(float(out.path_points.double().mean()), 1)
        else:
            p.meta.setdefault("backend", None)


def close_providers(providers) -> None:
    """Remove the hooks of every engine the providers hold."""
    for p in providers:
        engine = getattr(p.fn, "engine", None)
        if engine is not None:
            engine.close()


# ---- the figures ---------------------------------------------------------------------------------


def stats_fields(stats: Stats | None, batch: int | None) -> dict:
    """The timing fields of one result row: median, quartiles, IQR, repeats, images/s, peak memory."""
    if stats is None:
        return dict(median_ms=None, q1_ms=None, q3_ms=None, iqr_ms=None, repeats=None, images_per_s=None,
                    peak_mem_mb=None, mem_method=None)
    per_s = batch / (stats.median_ms / 1e3) if batch and stats.median_ms > 0 else None
    return dict(median_ms=stats.median_ms, q1_ms=stats.q1_ms, q3_ms=stats.q3_ms, iqr_ms=stats.iqr_ms,
                repeats=len(stats.samples_ms), images_per_s=per_s, peak_mem_mb=stats.peak_mem_mb,
                mem_method=stats.mem_method)


def add_ratios(rows: list[dict]) -> list[dict]:
    """Set on each row of one interleaved group ``x_ours_gradcam`` (its median over the Grad-CAM
    row's, role "gradcam") and, where the row names a floor provider (``floor``), ``x_floor`` (its
    median over that floor's). Rows are dicts with ``provider``, ``role`` and ``median_ms``."""
    by_name = {r["provider"]: r for r in rows}
    gradcam = next((r for r in rows if r.get("role") == "gradcam" and r.get("median_ms")), None)
    for r in rows:
        if not r.get("median_ms"):
            continue
        if gradcam is not None:
            r["x_ours_gradcam"] = r["median_ms"] / gradcam["median_ms"]
        floor = by_name.get(r.get("floor"))
        if floor is not None and floor.get("median_ms"):
            r["x_floor"] = r["median_ms"] / floor["median_ms"]
    return rows


#: The fields of every row :func:`comparison_rows` returns (None where one does not apply).
ROW_FIELDS = ("provider", "role", "kind", "m", "rule", "backend", "floor", "batch", "median_ms", "q1_ms", "q3_ms",
              "iqr_ms", "repeats", "images_per_s", "peak_mem_mb", "mem_method", "x_ours_gradcam", "x_floor")


def comparison_rows(providers: list[Provider], stats: dict[str, Stats], *, batch: int) -> list[dict]:
    """One row per provider that was timed (fields :data:`ROW_FIELDS`): its meta, its timing
    fields and the ratios."""
    rows = []
    for p in providers:
        if p.name in stats:
            row = dict.fromkeys(ROW_FIELDS)
            row.update(provider=p.name, batch=batch, **p.meta, **stats_fields(stats[p.name], batch))
            rows.append(row)
    return add_ratios(rows)
