"""Section "accuracy": the error of each quadrature (and precision option) against the converged
map — Gauss-Legendre at accuracy_reference_steps, float32, at layer resolution — on real photos,
beside its time at batch 1.
"""

from __future__ import annotations

import torch

from igcam_fast import DEFAULT_RULE, DEFAULT_STEPS, CamEngine, ops
from igcam_fast.benchmarking.latency import close_providers, engine_call
from igcam_fast.benchmarking.timing import Provider

from ..common import Recorder, dtype_of, first_line, load, measure_safely, options_text, photo_inputs, rel_l2
from ..presets import Preset


def _method_options(rule: str, steps: int) -> dict:
    """The engine keywords of one accuracy configuration."""
    if rule == "gradcam":
        return dict(method="gradcam")
    if rule == "demo":
        return dict(preset="demo", steps=steps)
    return dict(rule=rule, steps=steps)


def run(p: Preset, device, rec: Recorder, models: dict):
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
        with CamEngine(m.model, m.layer, output_size="layer", **_method_options(rule, steps), **common,
                       **opts) as engine:
            out = engine.explain(x, targets)
        layer_maps = out.layer_maps.float()
        # The demo sums; compare shapes at the same scale.
        return (layer_maps / steps if rule == "demo" else layer_maps), (out.backend or None)

    truth, _ = maps("gausslegendre", p.accuracy_reference_steps)
    size = (x.shape[-2], x.shape[-1])
    truth_up = ops.upsample(truth, size, backend="torch")
    default_fp32, _ = maps(DEFAULT_RULE, DEFAULT_STEPS)
    configs = [(label, rule, steps, opts, "rule") for label, rule, steps, opts in p.accuracy_configs]
    configs += [(f"default (GL {DEFAULT_STEPS}) {label}", DEFAULT_RULE, DEFAULT_STEPS, opts, "precision")
                for label, opts in p.precision_configs]
    errors = {}
    for label, rule, steps, opts, kind in configs:
        try:
            got, backend = maps(rule, steps, **opts)
        except Exception as err:
            rec.skip(f"accuracy {label}", first_line(err))
            continue
        errors[label] = (got, backend, rule, steps, opts, kind)
    # Time of each configuration: one photo, batch 1, the usual output size, interleaved.
    x1, t1 = x[:1], targets[:1].tolist()
    provs = [Provider(label, engine_call(m.model, m.layer, x1, t1, **_method_options(rule, steps), **common, **opts))
             for label, (got, backend, rule, steps, opts, kind) in errors.items()]
    try:
        stats = measure_safely(rec, provs, device, p.accuracy_repeats, p.accuracy_warmup)
    finally:
        close_providers(provs)
    for label, (got, backend, rule, steps, opts, kind) in errors.items():
        err = rel_l2(got, truth)
        err_up = rel_l2(ops.upsample(got, size, backend="torch"), truth_up)
        is_default = (rule, steps, opts) == (DEFAULT_RULE, DEFAULT_STEPS, {})
        row = rec.add("accuracy", stats=stats.get(label), batch=1, model=m.case.name, layer=m.layer, provider=label,
                      role="accuracy_default" if is_default else f"accuracy_{kind}", m=steps, rule=rule,
                      backend=backend, dtype=dtype_of(opts), options=options_text({"channels_last": True, **opts}),
                      rel_l2_layer=err, rel_l2_max=max(err), rel_l2_mean=sum(err) / len(err), rel_l2_upsampled=err_up,
                      photos=photos, truth=f"GL {p.accuracy_reference_steps}, float32, layer resolution")
        if kind == "precision":
            row["rel_l2_vs_fp32_default"] = rel_l2(got, default_fp32)
    rec.checkpoint()
