"""One short markdown summary of the suite's result files in a folder (the parts of a run split
across calls, as bench/gpu_check.sh makes them): the headline latencies beside the paper's
figures, the options with their errors, the kernels against copy bandwidth, and every target.

    python -m bench.gpu_summary FOLDER [--out FOLDER/bench-summary.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from igcam_fast.benchmarking.latency import PAPER

from .report import find_rows
from .targets import evaluate_targets


def _f(v, fmt="{:.2f}"):
    return "-" if v is None or v != v else fmt.format(v)  # v != v: NaN


def load_rows(folder: Path) -> tuple[list[dict], list[dict], str]:
    """(rows, environments, device type) of every suite result JSON in folder."""
    rows, envs = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(payload, dict) or "rows" not in payload or "environment" not in payload:
            continue  # not a suite result (the pytest-benchmark file, say)
        envs.append(dict(payload["environment"], file=path.name))
        rows += payload["rows"]
    device_type = envs[0]["device_type"] if envs else "cpu"
    return rows, envs, device_type


def summary(folder: Path) -> str:
    rows, envs, device_type = load_rows(folder)
    if not envs:
        return f"# Benchmark summary\n\nNo suite results in {folder} yet.\n"
    env = envs[0]
    md = [f"# Benchmark summary — {env['device']} — {env['date']}", "",
          f"torch {env['torch']}, triton {env.get('triton')}, CUDA {env.get('cuda')}, git {env.get('git_sha')}; "
          f"from {', '.join(e['file'] for e in envs)}.", ""]
    groups = sorted({(r["model"], r["batch"]) for r in find_rows(rows, section="models")}, key=str)
    if groups:
        md += ["| model | B | Grad-CAM ms | IG-CAM default ms | × Grad-CAM | floor ms (m) | × floor | paper setting ms | "
               "× Grad-CAM |", "|---|---|---|---|---|---|---|---|---|"]
    for model, batch in groups:
        by_role = {r["role"]: r for r in find_rows(rows, section="models", model=model, batch=batch)}
        gc, ig, fl, pp = (by_role.get(k, {}) for k in ("gradcam", "igcam_default", "floor_default", "igcam_paper"))
        md.append(f"| {model} | {batch} | {_f(gc.get('median_ms'))} | {_f(ig.get('median_ms'))} | "
                  f"{_f(ig.get('x_ours_gradcam'))} | {_f(fl.get('median_ms'))} ({fl.get('m', '-')}) | "
                  f"{_f(ig.get('x_floor'), '{:.3f}')} | {_f(pp.get('median_ms'))} | {_f(pp.get('x_ours_gradcam'))} |")
    md += ["", f"The paper ({PAPER['device']}, ResNet-50, m={PAPER['steps']}): Grad-CAM {PAPER['gradcam_ms']} ms, "
               f"Integrated Grad-CAM {PAPER['igcam_ms']} ms, {PAPER['ratio']}×. Quoted, not measured here.", ""]
    options = find_rows(rows, section="options", role="option")
    if options:
        md += ["| model | B | option | status | ms | × floor | rel. L2 vs converged | signed maps |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['batch']} | {r['provider']} | {r.get('status') or 'measured'} | "
               f"{_f(r.get('median_ms'))} | {_f(r.get('x_floor'), '{:.3f}')} | {_f(r.get('rel_l2_vs_converged'), '{:.2%}')} | "
               f"{_f(r.get('rel_l2_signed_vs_converged'), '{:.2%}')} |"
               for r in options]
        md.append("")
    kernels = find_rows(rows, section="kernels", role="kernel")
    if kernels:
        md += ["| op | shape | backend | ms | GB/s | copy GB/s | % of copy | × torch |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['op']} | {r['shape']} | {r['backend']} | {_f(r['median_ms'], '{:.4f}')} | {_f(r['gbps'], '{:.1f}')} | "
               f"{_f(r.get('copy_gbps_same_bytes'), '{:.1f}')} | {_f(r.get('share_of_copy'), '{:.0%}')} | "
               f"{_f(r.get('speedup_vs_torch'))} |" for r in kernels]
        md.append("")
    verdict = {True: "met", False: "NOT MET", None: "not measured"}
    md += ["| target | measured | threshold | result |", "|---|---|---|---|"]
    md += [f"| {t['target']} {t['description']} | {t['measured'] or '-'} | {t['threshold']} | {verdict[t['met']]}"
           f"{' (' + t['note'] + ')' if t['note'] else ''} |" for t in evaluate_targets(rows, device_type)]
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    folder = Path(args.folder)
    text = summary(folder)
    out = Path(args.out) if args.out else folder / "bench-summary.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
