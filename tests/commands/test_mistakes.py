"""Ordinary mistakes give one line, ``igcam-fast <command>: error: ...``, exit status 2 and no
traceback, for demo, evaluate, evaluate-synthetic and backends; demo skips an unreadable image and goes on."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igcam_fast.commands import cli

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
TINY = "tiny_models:tiny_cnn"  # 32×32 input, target layer body.3, 6 classes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "good.png")
    (root / "bad.jpg").write_bytes(b"this is not an image")
    (root / "empty.png").write_bytes(b"")
    return root


def _one_line_error(capsys, command, argv, notes: int = 0):
    """Run the CLI in-process; assert exit 2 and one error line naming the command (after ``notes``
    message lines, e.g. about skipped files). Returns the error line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()][notes:]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"igcam-fast {command}: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---- demo --------------------------------------------------------------------------------------------

def test_demo_missing_image_is_an_error_before_anything_is_written(files, tmp_path, capsys):
    out = tmp_path / "out"
    line = _one_line_error(capsys, "demo", ["demo", str(files / "nope.jpg"), "--model", TINY, "--out", str(out)])
    assert "not found" in line and "nope.jpg" in line
    assert not out.exists()


def test_demo_skips_unreadable_images_and_goes_on(files, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["demo", str(files / "bad.jpg"), str(files / "good.png"), str(files / "empty.png"),
                     "--model", TINY, "--out", str(out), "--repeats", "1", "--no-why-figure"])
    assert status == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "skipping" in line]
    assert len(skipped) == 2 and "bad.jpg" in skipped[0] and "empty.png" in skipped[1], err
    assert all(line.startswith("igcam-fast demo: skipping an image: ") for line in skipped)
    assert "Traceback" not in err
    assert (out / "good.png").is_file() and (out / "good_igcam.npy").is_file()
    assert not (out / "bad.png").exists()


def test_demo_with_only_unreadable_images_is_an_error(files, tmp_path, capsys):
    line = _one_line_error(capsys, "demo", ["demo", str(files / "bad.jpg"), "--model", TINY,
                                            "--out", str(tmp_path / "o")], notes=1)  # "skipping ... bad.jpg"
    assert "none of the 1 image file(s) could be read" in line


@pytest.mark.parametrize("layer, why", [("body.9", "is not a module of the model"),
                                        ("fc", "does not output a 4-D")])
def test_demo_wrong_layer_lists_the_layers_with_4d_outputs(files, tmp_path, capsys, layer, why):
    line = _one_line_error(capsys, "demo", ["demo", str(files / "good.png"), "--model", TINY, "--layer", layer,
                                            "--out", str(tmp_path / "o")])
    assert why in line
    assert "body.3 (12, 8, 8)" in line and "body.0 (8, 16, 16)" in line  # name and (K, h, w) at 32×32
    assert "fc " not in line.split("4-D outputs", 1)[1]  # the linear layer is not offered


@pytest.mark.parametrize("model, expected", [("nosuchnet", "unknown model 'nosuchnet'"),
                                             ("nosuch_package.models:build", "cannot import 'nosuch_package'"),
                                             ("tiny_models:no_such_factory", "no callable 'no_such_factory'")])
def test_demo_unknown_model(files, tmp_path, capsys, model, expected):
    line = _one_line_error(capsys, "demo", ["demo", str(files / "good.png"), "--model", model,
                                            "--out", str(tmp_path / "o")])
    assert expected in line


def test_demo_missing_weights_file(files, tmp_path, capsys):
    line = _one_line_error(capsys, "demo", ["demo", str(files / "good.png"), "--model", TINY, "--weights",
                                            str(tmp_path / "w.pt"), "--out", str(tmp_path / "o")])
    assert "weights file not found" in line


@pytest.mark.parametrize("device, expected", [("gpu", "write cuda"), ("tpu:0", "not a device name"),
                                              ("cuda", "no CUDA GPU is visible"), ("cuda:7", "cuda")])
def test_demo_bad_device(files, tmp_path, capsys, device, expected):
    if device.startswith("cuda") and torch.cuda.is_available() and device == "cuda":
        pytest.skip("a GPU is visible: --device cuda is not a mistake here")
    line = _one_line_error(capsys, "demo", ["demo", str(files / "good.png"), "--model", TINY, "--device", device,
                                            "--out", str(tmp_path / "o")])
    assert expected in line


def test_demo_unknown_rule(files, tmp_path, capsys):
    line = _one_line_error(capsys, "demo", ["demo", str(files / "good.png"), "--model", TINY, "--rule", "simpson",
                                            "--out", str(tmp_path / "o")])
    assert "unknown rule 'simpson'" in line


# ---- evaluate, evaluate-synthetic, backends -------------------------------------------------------------

def test_evaluate_mistakes(files, tmp_path, capsys):
    base = ["evaluate", "--model", TINY, "--out", str(tmp_path / "o"), "--no-progress"]
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files), "--methods", "gradcam,bogus"])
    assert "unknown method(s) ['bogus']" in line and "igcam_paper" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(tmp_path / "no" / "VOC2007")])
    assert "no such folder" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files)])
    assert "is not a VOC folder" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files), "--device", "gpu"])
    assert "--device gpu" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files), "--protocols", "top10"])
    assert "--protocols" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files), "--rule", "simpson"])
    assert "unknown rule" in line
    line = _one_line_error(capsys, "evaluate", base + ["--voc", str(files), "--layer", "nope"])
    assert "layers with 4-D outputs" in line


def test_evaluate_synthetic_mistakes(tmp_path, capsys):
    base = ["evaluate-synthetic", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache")]
    line = _one_line_error(capsys, "evaluate-synthetic", base + ["--methods", "gradcam,bogus"])
    assert "--methods" in line and "'bogus'" in line
    line = _one_line_error(capsys, "evaluate-synthetic", base + ["--photo-methods", "nope"])
    assert "--photo-methods" in line
    line = _one_line_error(capsys, "evaluate-synthetic", base + ["--device", "gpu"])
    assert "--device gpu" in line
    line = _one_line_error(capsys, "evaluate-synthetic", base + ["--epochs", "0"])
    assert "--epochs must be at least 1" in line
    assert not (tmp_path / "cache").exists()  # refused before any data set is generated


def test_backends_bad_device(capsys):
    line = _one_line_error(capsys, "backends", ["backends", "--device", "gpu"])
    assert "write cuda" in line
    assert cli.main(["backends", "--device", "cuda"]) == 0  # asking why CUDA cannot run is no mistake
    assert "cuda" in capsys.readouterr().out


def test_a_real_process_prints_one_line_and_exits_2(files, tmp_path):
    """The same through ``python -m igcam_fast`` (what a user types), not only cli.main."""
    repo = TESTS.parent
    proc = subprocess.run([sys.executable, "-m", "igcam_fast", "demo", str(files / "nope.jpg"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"igcam-fast demo: error: image file(s) not found: {files / 'nope.jpg'}"]
