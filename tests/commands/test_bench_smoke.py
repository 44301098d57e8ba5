"""The benchmark machinery on a tiny model: every section runs, rows carry the required fields,
and the met / not-met verdicts follow from the numbers (no timing is asserted)."""

import json

import pytest
import torch
from torch import nn

from bench import run as R
from igcam_fast.core.engine import DEFAULT_STEPS


def _tiny_build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    return net.eval(), "3", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, False


def _tiny_preset():
    tiny = R.ModelCase("tiny", _tiny_build, "test model")
    return R.Preset(
        "smoke", [tiny], [1, 2], repeats=1, warmup=0, slow_repeats=1, slow_warmup=0, paper_steps=6,
        reference_steps={"tiny": 2}, options_models=["tiny"],
        options=[("channels_last off", dict(channels_last=False))],
        accuracy_model=tiny, accuracy_photos=None, accuracy_images=2,
        accuracy_configs=[("GL 4", "gausslegendre", 4, {}),
                          (f"GL {DEFAULT_STEPS}", "gausslegendre", DEFAULT_STEPS, {}),
                          ("demo 6", "demo", 6, {}), ("Grad-CAM", "gradcam", 1, {})],
        accuracy_reference_steps=24, accuracy_repeats=1, precision_configs=[("channels_last off",
                                                                             dict(channels_last=False))],
        breakdown_models=["tiny"], kernel_shapes=dict(path_images=[(1, 2, 3, 8, 8)], combine=[(4, 8, 3, 3)],
                                                      upsample=[(1, 3, 3, 8, 8)]),
        kernel_repeats=2, copy_peak_mib=4)


def test_suite_runs_and_rows_have_required_fields(tmp_path):
    p = _tiny_preset()
    env, rows, targets, md = R.run_suite(p, "cpu", log=lambda msg: None)
    jpath, mpath = R.write_results(tmp_path, env, p, rows, targets, md)
    payload = json.loads(jpath.read_text())
    assert payload["environment"]["torch"] == torch.__version__
    sections = {r["section"] for r in payload["rows"]}
    assert {"models", "options", "accuracy", "breakdown", "kernels"} <= sections, (sections, md)
    for row in payload["rows"]:
        missing = [f for f in R.REQUIRED_FIELDS if f not in row]
        assert not missing, (row, missing)
        assert row["device"] and row["torch"]
    timed = [r for r in payload["rows"] if r["section"] in ("models", "options")]
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 for r in timed)
    roles = {r["role"] for r in payload["rows"] if r["section"] == "models"}
    assert {"gradcam", "igcam_default", "igcam_paper", "floor_default", "authors", "reference"} <= roles
    acc = [r for r in payload["rows"] if r["role"] == "accuracy_default"]
    assert len(acc) == 1 and len(acc[0]["rel_l2_layer"]) == 2
    names = {t["target"] for t in payload["targets"]}
    assert {"a", "b", "c1", "c2", "d"} <= names
    assert mpath.read_text().startswith("# igcam_fast benchmark")
    assert "## Targets" in md and "quoted, not measured here" in md


def _row(**kw):
    base = {f: None for f in R.REQUIRED_FIELDS}
    base.update(section="models", batch=1, model="resnet50")
    base.update(kw)
    return base


@pytest.mark.parametrize("fast", [True, False])
def test_cpu_verdicts_follow_the_numbers(fast):
    ours = 100.0 if fast else 400.0
    rows = [
        _row(role="igcam_default", median_ms=ours, x_floor=1.01 if fast else 1.2),
        _row(role="authors", median_ms=1000.0, speedup_of_default=1000.0 / ours),
        _row(role="pgc_composed", median_ms=3500.0, speedup_of_default=3500.0 / ours),
        _row(section="accuracy", role="accuracy_default", rel_l2_max=0.004 if fast else 0.02),
        _row(section="kernels", role="kernel", op="combine", backend="cpu", shape="s", speedup_vs_torch=2.0 if fast
             else 0.9),
    ]
    verdicts = {t["target"]: t["met"] for t in R.evaluate_targets(rows, "cpu")}
    assert verdicts["a"] is fast
    assert verdicts["b"] is fast
    assert verdicts["c1"] is fast  # 10x vs 2.5x against >= 8x
    assert verdicts["c2"] is fast  # 35x vs 8.75x against >= 30x
    assert verdicts["e-combine"] is fast
    assert verdicts["d"] is None  # a GPU target, not judged on the CPU
    assert verdicts["e-path_images"] is None  # not measured


def test_gpu_verdicts_follow_the_numbers():
    rows = [
        _row(role="igcam_default", median_ms=4.0, x_ours_gradcam=1.5, x_floor=1.02),
        _row(role="igcam_default", batch=64, median_ms=300.0, x_floor=1.05),  # 95 % of floor / m
        _row(section="kernels", role="kernel", op="combine", backend="triton", shape="s", share_of_copy=0.8,
             speedup_vs_torch=4.0),
        _row(section="kernels", role="kernel", op="path_images", backend="triton", shape="s", share_of_copy=0.5,
             speedup_vs_torch=4.0),
    ]
    verdicts = {t["target"]: t["met"] for t in R.evaluate_targets(rows, "cuda")}
    assert verdicts["d1"] is True and verdicts["d2"] is True and verdicts["d3"] is True
    assert verdicts["e-combine-triton"] is True
    assert verdicts["e-path_images-triton"] is False  # 50 % of the copy bandwidth
    assert verdicts["c1"] is None and verdicts["c2"] is None
    slow = [dict(rows[0], median_ms=6.0, x_ours_gradcam=2.5)]
    verdicts = {t["target"]: t["met"] for t in R.evaluate_targets(slow, "cuda")}
    assert verdicts["d1"] is False and verdicts["d2"] is False
