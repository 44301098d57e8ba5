"""evaluate-synthetic calls the evaluation as a function, and the command line it prints re-runs it."""

import json
import shlex

from igcam_fast.commands import cli, evaluate_synthetic


def test_printed_command_reruns_the_same_evaluation(tmp_path, capsys, monkeypatch):
    calls = []
    real = evaluate_synthetic.evaluate_voc
    monkeypatch.setattr(evaluate_synthetic, "evaluate_voc", lambda **options: calls.append(options) or real(**options))
    out = tmp_path / "out"
    cli.main(["evaluate-synthetic", "--train", "40", "--test", "6", "--epochs", "1", "--no-photos",
              "--methods", "gradcam,igcam", "--cache", str(tmp_path / "cache"), "--out", str(out),
              "--no-progress", "--device", "cpu"])
    printed = [line[2:] for line in capsys.readouterr().out.splitlines() if line.startswith("$ igcam-fast evaluate ")]
    assert len(calls) == len(printed) == 2  # one function call (no argv strings) per architecture
    assert all(isinstance(c["voc"], str) and c["methods"] == "gradcam,igcam" for c in calls)
    # the printed line, run as a command, gives the same scores
    words = shlex.split(printed[1])
    assert words[:2] == ["igcam-fast", "evaluate"]
    rerun = tmp_path / "rerun"
    words[words.index("--out") + 1] = str(rerun)
    cli.main(words[1:])
    first = json.loads((out / "resnet_style" / "results.json").read_text())
    again = json.loads((rerun / "results.json").read_text())
    assert [r["method"] for r in first["rows"]] == ["gradcam", "igcam"]
    for a, b in zip(first["rows"], again["rows"]):
        for key in ("ebpg", "bbox", "pointing", "drop_top15", "increase_top15"):
            assert a[key] == b[key], key
    assert first["pairs"] == again["pairs"] > 0
