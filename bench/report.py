"""The markdown report of one suite run: the environment, the paper's figures beside ours, one
table per section, the targets with their verdicts, and what was skipped and why."""

from __future__ import annotations

import math

from igcam_fast import DEFAULT_STEPS
from igcam_fast.benchmarking.latency import PAPER

from .presets import Preset
from .sections.breakdown import RANGES


def find_rows(rows, **kv):
    return [r for r in rows if all(r.get(k) == v for k, v in kv.items())]


def _f(v, fmt="{:.1f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _table(headers, lines):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _one(rows, role, model="resnet50", batch=1):
    r = find_rows(rows, section="models", role=role, model=model, batch=batch)
    return r[0]["median_ms"] if r else None


def _safe_div(a, b):
    return a / b if a is not None and b else None


def _header(env: dict, p: Preset, elapsed: float) -> list[str]:
    md = [f"# igcam_fast benchmark — {env['device']} — {env['date']} — preset {p.name}", ""]
    md.append(f"Device: **{env['device']}** ({env['device_type']}), torch {env['torch']}, triton {env['triton']}, "
              f"Python {env['python']}, {env['threads']} threads of {env['cpus']} CPUs, git {env['git_sha']}. "
              f"dtype float32 unless a row says otherwise; images at the model's input size (224×224 for the real "
              f"models). Medians of interleaved repeats "
              f"({'CUDA events' if env['device_type'] == 'cuda' else 'perf_counter'}); IQR = q3 − q1. "
              f"Suite ran {elapsed:.0f} s; load average (1, 5, 15 min) {env.get('loadavg_at_start')} at the start, "
              f"{env.get('loadavg_at_end')} at the end — a load above the thread count means other processes "
              f"shared the CPUs and the CPU timings are inflated and noisy.")
    if env["device_type"] == "cuda":
        md.append(f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, compute capability {env.get('capability')}, "
                  f"TF32 conv {env.get('tf32_conv')}, TF32 matmul {env.get('tf32_matmul')}.")
    md.append("ResNet-50 and VGG16 have **random weights** (torchvision architectures; right for timing, not for "
              "localisation); EfficientNet-Lite0 is pretrained.")
    return md


def _paper(env, rows) -> list[str]:
    return ["", "## The paper's figures (quoted, not measured here)", "",
            _table(["source", "device", "model", "Grad-CAM ms", "IG-CAM ms (m=50)", "ratio"],
                   [["paper", PAPER["device"], "ResNet-50", PAPER["gradcam_ms"], PAPER["igcam_ms"], PAPER["ratio"]],
                    ["this run", env["device"], "ResNet-50 (b=1)", _f(_one(rows, "gradcam"), "{:.1f}"),
                     _f(_one(rows, "igcam_paper"), "{:.1f}"),
                     _f(_safe_div(_one(rows, "igcam_paper"), _one(rows, "gradcam")), "{:.2f}")]]),
            "", f"({PAPER['note']}.) Our default (GL {DEFAULT_STEPS}) on ResNet-50 b=1: "
            f"{_f(_one(rows, 'igcam_default'))} ms, "
            f"{_f(_safe_div(_one(rows, 'igcam_default'), _one(rows, 'gradcam')), '{:.2f}')}× our Grad-CAM.", ""]


def _models(env, rows) -> list[str]:
    mrows = find_rows(rows, section="models")
    if not mrows:
        return []
    lines = [[r["model"], r["batch"], r["provider"], r["m"], r["rule"], r["backend"] or "-", _f(r["median_ms"]),
              _f(r["iqr_ms"]), r["repeats"], _f(r["images_per_s"], "{:.2f}"), _f(r.get("x_ours_gradcam"), "{:.2f}"),
              _f(r.get("x_floor"), "{:.3f}"), _f(r.get("speedup_of_default"), "{:.1f}"), _f(r["peak_mem_mb"], "{:.0f}")]
             for r in mrows]
    memory = ("torch.cuda.max_memory_allocated above the start." if env["device_type"] == "cuda" else
              "process peak-RSS growth during the first timed call, after malloc_trim (approximate).")
    return ["## Cost over Grad-CAM, throughput and comparators", "",
            _table(["model", "B", "provider", "m", "rule", "backend", "median ms", "IQR ms", "n", "images/s",
                    "× our Grad-CAM", "× floor", "× our default", "peak MiB"], lines), "",
            "× floor: over the inference forward of the same path images (same dtype, layout, chunks). "
            "× our default: how many times slower than our default IG-CAM. Comparators run their libraries' "
            "defaults (contiguous float32, the authors' zero baseline). Peak MiB: " + memory, ""]


def _options(rows) -> list[str]:
    orows = find_rows(rows, section="options")
    if not orows:
        return []
    lines = [[r["model"], r["batch"], r["provider"], r["backend"], r["dtype"], r["options"],
              r.get("status") or "measured", _f(r["median_ms"]), _f(r["iqr_ms"]), _f(r["images_per_s"], "{:.2f}"),
              _f(r.get("x_floor"), "{:.3f}"), _f(r.get("rel_l2_vs_converged"), "{:.2%}"),
              _f(r.get("rel_l2_signed_vs_converged"), "{:.2%}"), _f(r["peak_mem_mb"], "{:.0f}")]
             for r in orows]
    truth = next((r["converged"] for r in orows if r.get("converged")), None)
    return [f"## Backends and dtype/layout/execution options (default GL {DEFAULT_STEPS})", "",
            _table(["model", "B", "option", "backend", "dtype", "options", "status", "median ms", "IQR ms", "images/s",
                    "× floor", "rel. L2 vs converged", "signed maps: rel. L2", "peak MiB"], lines), "",
            "× floor: over the eager forward of the same path images in the same dtype and layout. "
            + (f"Converged map: {truth}, layer resolution, max over the images; '-' where it is all zeros "
               "(random weights often give that after the ReLU); 'signed maps': the same before the ReLU. "
               if truth else "")
            + "'not available': the engine does not take that option in this version; 'error': it failed here "
            "(the reason is under Skipped).", ""]


def _accuracy(rows) -> list[str]:
    arows = find_rows(rows, section="accuracy")
    if not arows:
        return []
    lines = [[r["provider"], r["m"], r["dtype"], " / ".join(f"{e:.2%}" for e in r["rel_l2_layer"]),
              f"{r['rel_l2_max']:.2%}", f"{max(r['rel_l2_upsampled']):.2%}",
              (f"{max(r['rel_l2_vs_fp32_default']):.2%}" if r.get("rel_l2_vs_fp32_default") else "-"),
              _f(r["median_ms"]), _f(r["iqr_ms"])] for r in arows]
    return [f"## Accuracy per cost ({arows[0]['model']}, photos {', '.join(arows[0]['photos'])}; "
            f"truth: {arows[0]['truth']})", "",
            _table(["configuration", "m", "dtype", "rel. L2 per photo (layer)", "max", "at 224×224 (max)",
                    "vs fp32 default", "ms (b=1)", "IQR ms"], lines), "",
            "The demo row is divided by m (it sums) and does not subtract A' — a different map, not a "
            "quadrature error.", ""]


def _breakdown(rows) -> list[str]:
    brows = find_rows(rows, section="breakdown")
    if not brows:
        return []
    names = [k.split("::")[1] for k in RANGES]
    lines = [[r["model"], r["provider"], _f(r["median_ms"]), *[_f(r["breakdown_ms"][n], "{:.2f}") for n in names],
              _f(r["rest_ms"], "{:.2f}"), r["breakdown_kind"], _f(r["peak_mem_mb"], "{:.0f}")] for r in brows]
    return ["## Where the time of one call goes (torch.profiler, record_function ranges)", "",
            _table(["model", "config", "wall ms", *[f"{n} ms" for n in names], "rest (Python/launch) ms", "timed",
                    "peak MiB"], lines),
            "", "One profiled call each (profiler overhead included). 'forward' is the body up to and through "
            "the layer and the head with a graph; baseline_features is a cache hit after the first call.", ""]


def _kernels(rows) -> list[str]:
    krows = find_rows(rows, section="kernels")
    if not krows:
        return []
    lines = [[r["op"], r["shape"], r["backend"], _f(r["median_ms"], "{:.4f}"), _f(r["iqr_ms"], "{:.4f}"),
              _f(r["gbps"], "{:.1f}"), _f(r.get("copy_gbps_same_bytes"), "{:.1f}"),
              _f(100 * r["share_of_copy"] if r.get("share_of_copy") else None, "{:.0f}"),
              _f(r.get("speedup_vs_torch"), "{:.2f}")] for r in krows]
    return ["## Kernels (the three fused ops per backend)", "",
            _table(["op", "shape", "backend", "median ms", "IQR ms", "GB/s", "copy GB/s (same bytes)", "% of copy",
                    "× torch"], lines), ""]


def _targets(targets) -> list[str]:
    verdict = {True: "**met**", False: "**not met**", None: "not measured"}
    lines = [[t["target"], t["description"], t["measured"] or "-", t["threshold"],
              verdict[t["met"]] + (f" ({t['note']})" if t["note"] else "")] for t in targets]
    return ["## Targets", "", _table(["target", "what", "measured", "threshold", "result"], lines), ""]


def markdown(env: dict, p: Preset, rows: list[dict], targets: list[dict], skipped: list[str], elapsed: float) -> str:
    md = _header(env, p, elapsed) + _paper(env, rows)
    for part in (_models(env, rows), _options(rows), _accuracy(rows), _breakdown(rows), _kernels(rows),
                 _targets(targets)):
        md += part
    if skipped:
        md += ["## Skipped", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(md)
