"""Section "breakdown": where the time of one call goes, from the engine's record_function ranges
(torch.profiler): path images, forward, head backward, combine, upsample, baseline features, and
the rest (Python and launch overhead). On a GPU the device time of the kernels in each range.
"""

from __future__ import annotations

import contextlib
import io

from igcam_fast import DEFAULT_RULE, DEFAULT_STEPS
from igcam_fast.benchmarking.latency import engine_call
from igcam_fast.benchmarking.timing import PeakMemory, time_call

from ..common import Recorder, find_case, first_line, load, options_text, timing_inputs
from ..presets import Preset

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


def run(p: Preset, device, rec: Recorder, models: dict):
    for name in p.breakdown_models:
        m = load(find_case(p, name), device, rec, models, p.input_size)
        if m is None:
            continue
        rec.log(f"[breakdown] {name}")
        x, targets = timing_inputs(m, 1, device)
        configs = [(f"default (GL {DEFAULT_STEPS})", {})]
        if p.breakdown_paper:
            configs.append((f"paper (right {p.paper_steps})", dict(preset="paper", steps=p.paper_steps)))
        for label, opts in configs:
            fn = None
            try:
                fn = engine_call(m.model, m.layer, x, targets, mean=m.mean, std=m.std, **opts)
                b = breakdown(fn, device)
                with PeakMemory(device) as pm:
                    result = fn()
            except Exception as err:
                rec.skip(f"breakdown {name} {label}", first_line(err))
                continue
            finally:
                if fn is not None:
                    fn.engine.close()
            rec.add("breakdown", batch=1, model=name, layer=m.layer, provider=label, role="breakdown",
                    m=opts.get("steps", DEFAULT_STEPS), rule="right" if opts else DEFAULT_RULE,
                    backend=getattr(result, "backend", None) or None, options=options_text(opts),
                    median_ms=b["wall_ms"], repeats=1, peak_mem_mb=pm.mb, mem_method=pm.method,
                    breakdown_ms={k.split("::")[1]: v for k, v in b["parts_ms"].items()}, rest_ms=b["rest_ms"],
                    breakdown_kind=b["kind"], note="one profiled call (profiler overhead included)")
        rec.checkpoint()
