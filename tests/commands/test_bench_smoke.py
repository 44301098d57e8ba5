"""The benchmark machinery on tiny models: the `igcam-fast bench` command, the repository suite's
sections, and the targets table (met / not met follow from the numbers; no timing is asserted)."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import gpu_preflight, gpu_summary
from bench.common import REQUIRED_FIELDS, rel_l2
from bench.presets import ModelCase, Preset, dry_version, preset
from bench.run import run_suite, write_results
from bench.targets import Target, evaluate_targets
from igcam_fast import DEFAULT_STEPS
from igcam_fast.commands import CommandError, cli
from igcam_fast.benchmarking.latency import ROW_FIELDS, add_ratios

# ---- the command ---------------------------------------------------------------------------------


def _bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "tiny_models:tiny_cnn", "--repeats", "2", "--warmup", "0", "--no-progress",
            "--json", str(out), *extra]
    args = cli.build_parser().parse_args(argv)
    payload = args.run(args)
    return payload, json.loads(out.read_text())


def test_command_writes_every_field_and_consistent_ratios(tmp_path, capsys):
    payload, written = _bench(tmp_path, "--batch", "2", "--preset", "accurate", "--steps", "3", "--rule", "middle")
    assert written["rows"] == json.loads(json.dumps(payload["rows"], default=str))
    env, settings, rows = written["environment"], written["settings"], written["rows"]
    for key in ("device", "device_type", "torch", "triton", "python", "threads", "git_sha", "date"):
        assert key in env
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert settings["model"] == "tiny_models:tiny_cnn" and settings["layer"] == "body.3"
    assert settings["batch"] == 2 and settings["dtype"] == "float32" and settings["input_size"] == 32
    assert settings["repeats"] == 2 and settings["presets"] == ["accurate"]
    for row in rows:
        assert set(ROW_FIELDS) <= set(row), (row, set(ROW_FIELDS) - set(row))
        assert row["median_ms"] > 0 and row["repeats"] == 2 and row["batch"] == 2
        assert row["images_per_s"] == pytest.approx(2 / (row["median_ms"] / 1e3))
    roles = {r["role"]: r for r in rows}
    assert {"gradcam", "igcam_default", "igcam_paper", "igcam_accurate", "igcam_custom",
            "floor_gradcam", "floor_default", "floor_paper", "floor_accurate", "floor_custom"} <= set(roles)
    assert (roles["igcam_default"]["m"], roles["igcam_default"]["rule"]) == (DEFAULT_STEPS, "gausslegendre")
    assert (roles["igcam_custom"]["m"], roles["igcam_custom"]["rule"]) == (3, "middle")
    by_name = {r["provider"]: r for r in rows}
    gradcam = roles["gradcam"]["median_ms"]
    for row in rows:
        assert row["x_ours_gradcam"] == pytest.approx(row["median_ms"] / gradcam)
        if row["kind"] == "method":
            floor = by_name[row["floor"]]
            assert floor["kind"] == "floor" and (floor["m"], floor["rule"]) == (row["m"], row["rule"])
            assert row["x_floor"] == pytest.approx(row["median_ms"] / floor["median_ms"])
            assert row["backend"]  # the backend the engine's result names
        else:
            assert row["x_floor"] is None and row["floor"] is None
    table = capsys.readouterr().out
    assert "× Grad-CAM" in table and "IG-CAM paper (right 50)" in table and "paper (" in table


@pytest.mark.parametrize("argv,words", [
    (["--model", "no_such_architecture"], "--model"),
    (["--model", "no_such_module_xyz:factory"], "--model"),
    (["--model", "tiny_models:tiny_cnn", "--layer", "body.99"], "--layer 'body.99'"),
    (["--model", "tiny_models:tiny_cnn", "--layer", "fc"], "--layer 'fc'"),  # not a 4-D output
    (["--model", "tiny_models:tiny_cnn", "--batch", "0"], "--batch must be at least 1"),
    (["--model", "tiny_models:tiny_cnn", "--preset", "fastest"], "--preset"),
    (["--model", "tiny_models:tiny_cnn", "--rule", "simpson"], "--rule"),
    (["--model", "tiny_models:tiny_cnn", "--tol", "2"], "--tol"),
    (["--model", "tiny_models:tiny_cnn", "--max-steps", "31"], "--max-steps"),
])
def test_command_mistakes_are_one_line_errors(argv, words, tmp_path):
    args = cli.build_parser().parse_args(["bench", *argv, "--repeats", "1", "--no-progress",
                                          "--json", str(tmp_path / "x.json")])
    with pytest.raises(CommandError) as err:
        args.run(args)
    message = str(err.value)
    assert words in message and "\n" not in message, message


def test_command_times_the_error_controlled_setting(tmp_path):
    """--tol: one more row, its m the mean path points per image, no floor (no fixed path)."""
    payload, _ = _bench(tmp_path, "--batch", "2", "--tol", "0.05", "--max-steps", "31")
    row = next(r for r in payload["rows"] if r["role"] == "igcam_tol")
    assert row["provider"] == "IG-CAM tol=0.05, ≤31" and row["rule"] == "patterson"
    assert 7 <= row["m"] <= 31 and row["floor"] is None and row["x_floor"] is None and row["median_ms"] > 0
    assert payload["settings"]["tol"] == 0.05 and payload["settings"]["max_steps"] == 31


def test_command_refuses_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as code:
        cli.main(["bench", "--model", "tiny_models:tiny_cnn", "--device", "cuda", "--json", str(tmp_path / "x.json")])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("igcam-fast bench: error: --device cuda") and "\n" not in err, err


def test_add_ratios_pairs_each_row_with_its_floor():
    rows = add_ratios([dict(provider="g", role="gradcam", median_ms=2.0, floor="f1"),
                       dict(provider="i", role="igcam_default", median_ms=6.0, floor="f10"),
                       dict(provider="f1", role="floor_gradcam", median_ms=1.0),
                       dict(provider="f10", role="floor_default", median_ms=5.0)])
    assert [r["x_ours_gradcam"] for r in rows] == [1.0, 3.0, 0.5, 2.5]
    assert rows[0]["x_floor"] == 2.0 and rows[1]["x_floor"] == 1.2 and "x_floor" not in rows[2]


# ---- the repository suite ------------------------------------------------------------------------


def _tiny_build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    return net.eval(), "3", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 32, False


def _tiny_preset():
    tiny = ModelCase("tiny", _tiny_build, "test model")
    return Preset(
        "smoke", [tiny], [1, 2], repeats=1, warmup=0, slow_repeats=1, slow_warmup=0, paper_steps=6,
        reference_steps={"tiny": 2}, options_models=["tiny"],
        options=[("channels_last off", dict(channels_last=False)), ("fp32, TF32 off", dict(tf32=False)),
                 ("CUDA graph (cuda_graph=True)", dict(cuda_graph=True))],
        options_error_steps=16,
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
    checkpoints = []
    env, rows, targets, md = run_suite(p, "cpu", log=lambda msg: None,
                                       checkpoint=lambda *a: checkpoints.append(len(a[1])))
    assert checkpoints and checkpoints == sorted(checkpoints)  # written as it goes, never shrinking
    jpath, mpath = write_results(tmp_path, env, p, rows, targets, md)
    payload = json.loads(jpath.read_text())
    assert payload["environment"]["torch"] == torch.__version__
    sections = {r["section"] for r in payload["rows"]}
    assert {"models", "options", "accuracy", "breakdown", "kernels"} <= sections, (sections, md)
    for row in payload["rows"]:
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        assert not missing, (row, missing)
        assert row["device"] and row["torch"]
    timed = [r for r in payload["rows"] if r["section"] in ("models", "options") and r.get("status") != "not available"]
    assert all(r["median_ms"] > 0 and r["images_per_s"] > 0 for r in timed)
    models = [r for r in payload["rows"] if r["section"] == "models"]
    roles = {r["role"] for r in models}
    assert {"gradcam", "igcam_default", "igcam_paper", "floor_default", "authors", "reference"} <= roles
    for batch in (1, 2):  # ratios within each interleaved group
        group = {r["role"]: r for r in models if r["batch"] == batch}
        ig, gc, floor = group["igcam_default"], group["gradcam"], group["floor_default"]
        assert ig["x_ours_gradcam"] == pytest.approx(ig["median_ms"] / gc["median_ms"])
        assert ig["x_floor"] == pytest.approx(ig["median_ms"] / floor["median_ms"])
    options = [r for r in payload["rows"] if r["section"] == "options" and r["role"] == "option"]
    measured = [r for r in options if r["status"] == "measured"]
    assert measured and all(0 <= r["rel_l2_vs_converged"] < 0.05 for r in measured)
    assert all(0 <= r["rel_l2_signed_vs_converged"] < 0.05 for r in measured)
    graph = [r for r in options if r["provider"].startswith("CUDA graph")]
    # "not available": the engine has no such option; "error": it refuses it on the CPU
    assert len(graph) == 1 and graph[0]["status"] in ("measured", "not available", "error")
    acc = [r for r in payload["rows"] if r["role"] == "accuracy_default"]
    assert len(acc) == 1 and len(acc[0]["rel_l2_layer"]) == 2
    names = {t["target"] for t in payload["targets"]}
    assert {"a", "b", "c1", "c2", "d1", "d2", "d3"} <= names
    assert mpath.read_text().startswith("# igcam_fast benchmark")
    assert "## Targets" in md and "quoted, not measured here" in md
    text = gpu_summary.summary(tmp_path)  # what gpu_check.sh writes after each part
    assert text.startswith("# Benchmark summary") and "| tiny | 1 |" in text and "| tiny | 2 |" in text
    assert "54.8 ms" in text and "| b " in text


def test_gpu_check_script_parses_and_preflight_names_what_is_missing(monkeypatch):
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "tests|bench" in usage.stderr
    assert gpu_preflight.problems(torch.device("cpu"), ["cuda-backend"]) == []  # the cpu stand-in, for --dry
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (missing,) = gpu_preflight.problems(torch.device("cuda"), ["triton", "cuda-backend"])
    assert "no CUDA device" in missing


def test_presets_are_data_and_shrink_for_a_dry_run():
    for name in ("quick", "full", "gpu"):
        p = preset(name)
        assert p.models and all(isinstance(m, ModelCase) for m in p.models)
        dry = dry_version(p)
        assert dry.name == f"{name}-dry" and dry.repeats == 1 and max(dry.batches) <= 2 and dry.input_size == 64
    gpu = preset("gpu")
    assert {m.name for m in gpu.models} >= {"resnet50", "vgg16"} and max(gpu.batches) > 1
    labels = [label for label, _ in gpu.options]
    assert any("TF32 off" in s for s in labels) and any("fp16" in s for s in labels) and any("bf16" in s for s in labels)
    assert any("cuda_graph" in str(o) for _, o in gpu.options) and any("compile" in str(o) for _, o in gpu.compile_options)
    assert all(o["autocast"] in (torch.float16, torch.bfloat16) for _, o in gpu.options if "autocast" in o)


# ---- the targets table ---------------------------------------------------------------------------


def _row(**kw):
    base = {f: None for f in REQUIRED_FIELDS}
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
    verdicts = {t["target"]: t["met"] for t in evaluate_targets(rows, "cpu")}
    assert verdicts["a"] is fast
    assert verdicts["b"] is fast
    assert verdicts["c1"] is fast  # 10x vs 2.5x against >= 8x
    assert verdicts["c2"] is fast  # 35x vs 8.75x against >= 30x
    assert verdicts["e-combine-cpu"] is fast
    assert verdicts["d1"] is None and verdicts["d3"] is None  # GPU targets, not judged on the CPU
    assert verdicts["e-path_images-cpu"] is None  # not measured


def test_gpu_verdicts_follow_the_numbers():
    rows = [
        _row(role="igcam_default", median_ms=1.8, x_ours_gradcam=1.4, x_floor=1.02),
        _row(role="igcam_default", batch=64, median_ms=300.0, x_floor=1.05),  # 95 % of floor / m
        _row(section="kernels", role="kernel", op="combine", backend="triton", shape="s", images=64, share_of_copy=0.8,
             speedup_vs_torch=4.0),
        _row(section="kernels", role="kernel", op="combine", backend="triton", shape="t", images=1, share_of_copy=0.1,
             speedup_vs_torch=1.2),
        _row(section="kernels", role="kernel", op="path_images", backend="triton", shape="s", images=64,
             share_of_copy=0.5, speedup_vs_torch=4.0),
        _row(section="kernels", role="kernel", op="path_images", backend="cuda", shape="t", images=1,
             share_of_copy=0.1, speedup_vs_torch=0.8),
    ]
    verdicts = {t["target"]: t["met"] for t in evaluate_targets(rows, "cuda")}
    assert verdicts["d1"] is True and verdicts["d2"] is True and verdicts["d3"] is True
    assert verdicts["e-combine-triton"] is True  # 80 % at B = 64; the B = 1 row is not judged on bandwidth
    assert verdicts["e-combine-b1-triton"] is True
    assert verdicts["e-path_images-triton"] is False  # 50 % of the copy bandwidth
    assert verdicts["e-path_images-b1-cuda"] is False  # slower than eager at B = 1
    assert verdicts["e-upsample"] is None  # no row
    assert verdicts["c1"] is None and verdicts["c2"] is None  # CPU targets
    slow = [dict(rows[0], median_ms=2.5, x_ours_gradcam=1.6)]
    verdicts = {t["target"]: t["met"] for t in evaluate_targets(slow, "cuda")}
    assert verdicts["d1"] is False and verdicts["d2"] is False and verdicts["d3"] is None


def test_relative_error_of_an_all_zero_truth_is_nan_not_zero():
    truth = torch.zeros(2, 3, 3)
    truth[1, 0, 0] = 2.0
    got = torch.zeros(2, 3, 3)
    got[1, 0, 0] = 1.0
    zero, half = rel_l2(got, truth)
    assert zero != zero and half == pytest.approx(0.5)


def test_one_target_judges_the_worst_row():
    rows = [_row(x=3.0, model="a"), _row(x=5.0, model="b"), _row(x=None, model="c"), _row(section="other", x=99.0)]
    at_most = Target("t", "x at most 4", dict(section="models"), "x", "<=", 4.0, "x")
    at_least = Target("u", "x at least 2", dict(section="models"), "x", ">=", 2.0, "x")
    derived = Target("v", "1/x at least 0.25", dict(section="models", x=lambda v: v is not None), "inv", ">=", 0.25,
                     "share", value=lambda r: 1 / r["x"])
    (t, u, v) = evaluate_targets(rows, "cpu", [at_most, at_least, derived])
    assert t["met"] is False and "model=b, batch=1: 5.000x" in t["measured"]  # the worst is the largest
    assert u["met"] is True  # the smallest is 3 >= 2
    assert v["met"] is False  # 1/5 = 20 % < 25 %
    assert t["threshold"] == "<= 4.000x"
