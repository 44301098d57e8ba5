"""`igcam-fast evaluate-photos` end to end on a tiny model and a folder of generated photos."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igcam_fast.commands import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/tiny_models.py as tiny_models:tiny_cnn


@pytest.fixture
def photo_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(24):  # striped colour fields: tiny_cnn gives them 4 distinct top-1 classes
        colour, stripe = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        image = np.zeros((40, 48, 3), np.uint8) + colour.astype(np.uint8)
        image[::rng.integers(2, 12)] = stripe
        Image.fromarray(image).save(folder / f"p{i:02d}.png")
    return folder


def run(args, capsys):
    assert cli.main(["evaluate-photos", *args]) == 0
    return capsys.readouterr()


def test_end_to_end_tables_files_and_untouched_model(photo_folder, tmp_path, capsys, monkeypatch):
    import tiny_models

    from igcam_fast.commands import evaluate_photos

    spec = tiny_models.tiny_cnn()
    before = {k: v.clone() for k, v in spec.model.state_dict().items()}
    monkeypatch.setattr(evaluate_photos, "load_model", lambda *args, **kw: spec)  # the run uses this very model
    out = tmp_path / "out"
    printed = run(["--model", "tiny_models:tiny_cnn", "--images", str(photo_folder), "--min-confidence", "0",
                   "--methods", evaluate_photos.ALL_METHODS, "--grids", "3", "--stages", "2", "--steps", "4", "--scorecam-limit", "1", "--no-progress",
                   "--out", str(out), "--figure-grids", "1"], capsys).out
    result = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().strip() == printed.split("\nwrote ")[0].strip()
    assert (out / "grids.png").stat().st_size > 1000
    assert "### Grid pointing game" in printed and "### Randomisation" in printed and "### Deletion" in printed
    tables = result["tables"]
    assert set(tables["grid_pointing_game"]) == set(result["methods"]) and "random" in result["methods"]
    grid = tables["grid_pointing_game"]
    assert len(result["grid_images"]) == 4 and len(result["grid_arrangements"]) == 1  # C(4, 4) = 1 grid
    assert grid["gradcam"]["input"]["n"] == 4 and grid["gradcam"]["layer"]["n"] == 4
    assert grid["gaussian"]["layer"]["mean"] == pytest.approx(25.0)  # a centred map scores chance exactly
    assert grid["gradcam"]["input"]["vs_gradcam"]["mean_diff"] == 0
    rand = tables["randomisation"]
    assert rand["random"]["stage2"]["mean"] == pytest.approx(1.0) and rand["gaussian"]["stage1"]["mean"] == pytest.approx(1.0)
    assert rand["gradcam"]["stage1"]["n"] == 24 and rand["scorecam"]["stage1"]["n"] == 1
    di = tables["deletion_insertion"]
    assert 0 <= di["gradcam"]["deletion"]["mean"] <= 100 and di["ablationcam"]["insertion"]["n"] == 24
    assert result["stages"] == ["fc", "body.2"]
    # the randomisation worked on a copy: the user's model is bit-identical and has no hooks left
    after = spec.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks for m in spec.model.modules())


@pytest.mark.parametrize("args, match", [
    (["--methods", "gradcam,nope"], "unknown"),
    (["--methods", "igcam"], "must include gradcam"),
    (["--grids", "0"], "--grids must be positive"),
    (["--min-confidence", "0.99"], "qualify for the grids"),
    (["--images", "/nonexistent/folder"], "not a folder"),
])
def test_user_mistakes_are_one_line_errors(photo_folder, tmp_path, capsys, args, match):
    base = ["--model", "tiny_models:tiny_cnn", "--images", str(photo_folder), "--no-progress", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate-photos", *base, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("igcam-fast evaluate-photos: error:")
