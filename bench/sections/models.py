"""Section "models": what Integrated Grad-CAM costs over our Grad-CAM and over the forward-only
floor, images per second, and the comparators (the authors' procedure, pytorch-grad-cam, captum,
the reference), all timed interleaved in one group per model and batch.

The project's own rows come from igcam_fast.benchmarking.latency — the same providers ``igcam-fast bench``
times — and the comparators are added to the same group.
"""

from __future__ import annotations

import torch

from igcam_fast import DEFAULT_STEPS
from igcam_fast.benchmarking.latency import (GRADCAM, add_ratios, check_providers, close_providers, comparison_providers,
                                forward_floor, preset_setting)
from igcam_fast.benchmarking.timing import Provider

from .. import comparators as C
from ..common import Recorder, load, measure_safely, options_text, timing_inputs, try_provider
from ..presets import Preset

#: The comparators' rows: how many times slower than our default each one is.
SLOWER_THAN_DEFAULT = ("authors", "pgc_composed", "captum_composed", "reference", "igcam_paper")


def _project_providers(p: Preset, m, x, targets, batch, rec: Recorder, what: str) -> list[Provider]:
    """Our Grad-CAM, default, paper setting (at batch 1, or always with throughput_paper) and their floors."""
    paper_here = batch == 1 or p.throughput_paper
    settings = [GRADCAM, preset_setting("default")] + ([preset_setting("paper", p.paper_steps)] if paper_here else [])
    floors = {"gradcam", "igcam_default"} | ({"igcam_paper"} if p.paper_floor and paper_here else set())
    try:
        providers = comparison_providers(m.model, m.layer, x, targets, settings, mean=m.mean, std=m.std,
                                         floors=floors, label_prefix="ours ")
    except Exception as err:
        rec.skip(f"{what} our engine", f"{type(err).__name__}: {err}")
        return []
    kept = []
    for prov in providers:
        try:
            check_providers([prov])
            kept.append(prov)
        except Exception as err:
            rec.skip(f"{what} {prov.name}", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            close_providers([prov])
    for prov in kept:
        prov.meta["provider_kind"] = "project" if prov.meta["kind"] == "method" else "floor"
    return kept


def _comparator_providers(p: Preset, case, m, x, targets, batch, rec: Recorder, what: str) -> list[Provider]:
    out = []
    common = dict(mean=m.mean, std=m.std)

    def add(name, role, build, meta, slow=False, check=True):
        fn = try_provider(rec, f"{what} {name}", build, check)
        if fn is not None:
            out.append(Provider(name, fn, repeats=p.slow_repeats if slow else None,
                                warmup=p.slow_warmup if slow else None, meta=dict(role=role, **meta)))

    steps = p.paper_steps
    slow_here = p.comparator_models is None or case.name in p.comparator_models
    if p.comparators and batch == 1:
        if not slow_here:
            rec.skip(f"{what} authors' procedure and pytorch-grad-cam over {steps} steps",
                     f"run on {', '.join(p.comparator_models)} only in the {p.name} preset (time)")
        else:
            add(f"authors' procedure m={steps} (demo, TorchRay-style)", "authors",
                lambda: C.authors_procedure(m.model, m.layer, x, targets, steps=steps),
                dict(m=steps, rule="demo", provider_kind="comparator"), slow=True, check=False)
        why = C.pgc_available()
        if why:
            rec.skip(f"{case.name} pytorch-grad-cam comparators", why)
        else:
            add("pytorch-grad-cam GradCAM", "pgc_gradcam", lambda: C.pgc_gradcam(m.model, m.layer, x, targets),
                dict(m=1, rule="-", provider_kind="comparator"))
            if slow_here:
                add(f"pytorch-grad-cam GradCAM over {steps} path images, averaged", "pgc_composed",
                    lambda: C.pgc_composed(m.model, m.layer, x, targets, steps=steps, **common),
                    dict(m=steps, rule="right", provider_kind="comparator"), slow=True, check=False)
            add("ours via the pytorch-grad-cam adapter (GradCAM, same call)", "pgc_adapter_gradcam",
                lambda: C.pgc_adapter_gradcam(m.model, m.layer, x, targets), dict(m=1, rule="-", provider_kind="project"))
        why = C.captum_available()
        if why:
            rec.skip(f"{case.name} captum comparator", why)
        elif slow_here:
            add(f"captum LayerGradCam over {steps} path images, summed", "captum_composed",
                lambda: C.captum_composed(m.model, m.layer, x, targets, steps=steps, **common),
                dict(m=steps, rule="right", provider_kind="comparator"), slow=True, check=False)
        ref_m = p.reference_steps.get(case.name)
        if ref_m:
            add(f"reference (reference.py, loop per step) m={ref_m}", "reference",
                lambda: C.reference(m.model, m.layer, x, targets, steps=ref_m, **common),
                dict(m=ref_m, rule="right", provider_kind="comparator"), slow=True, check=False)
        else:
            rec.skip(f"{what} reference", f"skipped for time in the {p.name} preset")
    if p.compile and x.device.type == "cuda":
        def compiled():
            return forward_floor(torch.compile(m.model), x, DEFAULT_STEPS, **common)

        add(f"floor with torch.compile m={DEFAULT_STEPS}", "floor_compiled", compiled,
            dict(m=DEFAULT_STEPS, rule="gausslegendre", provider_kind="floor"))
    return out


def run(p: Preset, device, rec: Recorder, models: dict):
    for case in p.models:
        m = load(case, device, rec, models, p.input_size)
        if m is None:
            continue
        for batch in p.batches:
            rec.log(f"[models] {case.name} batch {batch}")
            what = f"{case.name} b={batch}"
            x, targets = timing_inputs(m, batch, device)
            ours = _project_providers(p, m, x, targets, batch, rec, what)
            providers = ours + _comparator_providers(p, case, m, x, targets, batch, rec, what)
            repeats = p.repeats if batch == 1 else (p.throughput_repeats or p.repeats)
            try:
                stats = measure_safely(rec, providers, device, repeats, p.warmup)
            finally:
                close_providers(ours)
            group = []
            for prov in providers:
                if prov.name not in stats:
                    continue
                meta = {k: v for k, v in prov.meta.items() if k != "kind"}
                kind = meta["provider_kind"]
                meta["backend"] = meta.get("backend") if kind == "project" else ("-" if kind == "floor" else None)
                group.append(rec.add("models", stats=stats[prov.name], batch=batch, model=case.name, layer=m.layer,
                                     pretrained=m.pretrained, provider=prov.name,
                                     options=options_text(dict(channels_last=True)) if kind != "comparator"
                                     else "library defaults", **meta))
            add_ratios(group)
            ours_row = next((r for r in group if r["role"] == "igcam_default"), None)
            for r in group:
                if ours_row and r["role"] in SLOWER_THAN_DEFAULT:
                    r["speedup_of_default"] = r["median_ms"] / ours_row["median_ms"]
            rec.checkpoint()
