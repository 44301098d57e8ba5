"""Section "options": the default Integrated Grad-CAM per backend and per dtype / layout /
execution option (TF32, autocast, channels_last, CUDA graph, torch.compile), each beside the
forward-only floor of the same dtype and layout, each with its error against the converged map.

An option the engine does not take (it raises TypeError for an unknown keyword) is recorded as a
row "not available", and one that fails here (CUDA graphs on a CPU, say) as a row "error" with
its reason, rather than dropped, so the table says what this engine cannot do on this device.
"""

from __future__ import annotations

import torch

from igcam_fast import DEFAULT_RULE, DEFAULT_STEPS
from igcam_fast.benchmarking.latency import close_providers, engine_call, forward_floor
from igcam_fast.benchmarking.timing import Provider

from .. import comparators as C
from ..common import (Recorder, dtype_of, find_case, first_line, load, measure_safely, options_text, rel_l2, split_tf32,
                      tf32, timing_inputs, with_tf32)
from ..presets import Preset


def _not_available(err: Exception) -> bool:
    return isinstance(err, TypeError) and "keyword" in str(err)


def _layer_maps(m, x, targets, tf32_on=None, **options):
    """(B, h, w) float32 layer maps of one untimed call."""
    with tf32(tf32_on):
        fn = engine_call(m.model, m.layer, x, targets, mean=m.mean, std=m.std, output_size="layer", **options)
        try:
            return fn().layer_maps.float()
        finally:
            fn.engine.close()


def _converged(m, x, targets, steps: int) -> dict:
    """The truth of the errors, Gauss-Legendre m = steps, float32, TF32 off: the maps ("relu")
    and the signed maps before the ReLU ("signed"; a random-weight ResNet-50's map is often all
    zeros after the ReLU, where a relative error means nothing, while the signed map still shows
    what the precision costs)."""
    strict = False if x.device.type == "cuda" else None
    return {relu: _layer_maps(m, x, targets, strict, rule="gausslegendre", steps=steps, relu=relu == "relu")
            for relu in ("relu", "signed")}


def _worst(errors: list[float]) -> float:
    """The largest error, ignoring NaN (maps whose converged map is all zeros); NaN if all are."""
    finite = [e for e in errors if e == e]
    return max(finite) if finite else float("nan")


def _group(p: Preset, device, rec: Recorder, m, model_name, batch, configs, x, targets, truth):
    """Time one group of option configurations and their floors, interleaved; add their rows."""
    common = dict(mean=m.mean, std=m.std)
    provs, metas, floors, errors = [], {}, {}, {}
    for label, opts in configs:
        engine_opts, tf32_on = split_tf32(opts)
        ac = engine_opts.get("autocast")
        backend = engine_opts.get("backend")
        why = C.backend_reasons(backend, device, [ac or torch.float32]) if backend else []
        if why:
            rec.skip(f"{model_name} option {label}", "; ".join(why))
            continue
        try:
            fn = with_tf32(engine_call(m.model, m.layer, x, targets, **common, **engine_opts), tf32_on)
            result = fn()
        except Exception as err:  # a row all the same: the table shows what this engine cannot do here
            rec.add("options", batch=batch, model=model_name, layer=m.layer, provider=label, role="option",
                    m=DEFAULT_STEPS, rule=DEFAULT_RULE, backend="-", dtype=dtype_of(engine_opts),
                    options=options_text(opts), status="not available" if _not_available(err) else "error",
                    note=first_line(err))
            if not _not_available(err):
                rec.skip(f"{model_name} b={batch} option {label}", first_line(err))
            continue
        provs.append(Provider(label, fn))
        metas[label] = dict(opts=opts, backend=getattr(result, "backend", None) or backend)
        if truth is not None:
            try:
                # (not for compiled engines: a second engine would compile again, for no new number)
                signed = None if engine_opts.get("compile") else _layer_maps(m, x, targets, tf32_on, relu=False,
                                                                             **engine_opts)
                errors[label] = (_worst(rel_l2(result.layer_maps.float(), truth["relu"])),
                                 _worst(rel_l2(signed, truth["signed"])) if signed is not None else None)
            except Exception as err:
                rec.skip(f"{model_name} b={batch} option {label} error", first_line(err))
        key = (ac, engine_opts.get("channels_last", True), tf32_on)
        if key not in floors:
            floors[key] = f"floor m={DEFAULT_STEPS} {dtype_of(engine_opts)} channels_last={key[1]}" + (
                "" if tf32_on is None else f" tf32={tf32_on}")
            floor = forward_floor(m.model, x, DEFAULT_STEPS, rule=DEFAULT_RULE, autocast=ac, channels_last=key[1],
                                  **common)
            provs.append(Provider(floors[key], with_tf32(floor, tf32_on)))
            metas[floors[key]] = dict(opts={k: v for k, v in opts.items() if k in ("autocast", "channels_last", "tf32")},
                                      floor=True)
        metas[label]["floor_name"] = floors[key]
    repeats = p.repeats if batch == 1 else (p.throughput_repeats or p.repeats)
    try:
        stats = measure_safely(rec, provs, device, repeats, p.warmup)
    finally:
        close_providers(provs)
    for label, meta in metas.items():
        if label not in stats:
            continue
        is_floor = bool(meta.get("floor"))
        opts = meta["opts"]
        row = rec.add("options", stats=stats[label], batch=batch, model=model_name, layer=m.layer, provider=label,
                      role="option_floor" if is_floor else "option", m=DEFAULT_STEPS, rule=DEFAULT_RULE,
                      backend="-" if is_floor else meta["backend"], dtype=dtype_of(opts),
                      options=options_text({"channels_last": True, **opts}), status="measured")
        if not is_floor:
            floor = meta["floor_name"]
            if floor in stats:
                row["x_floor"] = stats[label].median_ms / stats[floor].median_ms
            if label in errors:
                row["rel_l2_vs_converged"], row["rel_l2_signed_vs_converged"] = errors[label]
                row["converged"] = f"GL {p.options_error_steps}, float32" + (", TF32 off" if device.type == "cuda" else "")
    rec.checkpoint()


def run(p: Preset, device, rec: Recorder, models: dict):
    usable, unusable = C.usable_backends(device)
    for name, why in unusable.items():
        rec.skip(f"backend {name!r}", why)
    compile_later = []
    for model_name in p.options_models:
        m = load(find_case(p, model_name), device, rec, models, p.input_size)
        if m is None:
            continue
        for batch in p.option_batches:
            rec.log(f"[options] {model_name} batch {batch}")
            x, targets = timing_inputs(m, batch, device)
            truth = None
            if p.options_error_steps:
                try:
                    truth = _converged(m, x, targets, p.options_error_steps)
                except Exception as err:
                    rec.skip(f"{model_name} b={batch} converged map", first_line(err))
            configs = [(f"backend={b}", dict(backend=b)) for b in usable] + list(p.options)
            _group(p, device, rec, m, model_name, batch, configs, x, targets, truth)
            if p.compile_options and batch == 1:
                compile_later.append((m, model_name, batch, x, targets, truth))
    # Compiling is slow: these groups come last, so that a run stopped during them keeps the rest.
    for m, model_name, batch, x, targets, truth in compile_later:
        rec.log(f"[options] {model_name} batch {batch}: compile")
        _group(p, device, rec, m, model_name, batch, list(p.compile_options), x, targets, truth)
