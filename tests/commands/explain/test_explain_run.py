"""`igcam-fast explain` end to end: every image one map equal to the API's, corrupt files, refused
setting changes, overlays and HTML, the VOC / ImageFolder / list layouts, label files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from explain_helpers import CORRUPT, MODEL, N_IMAGES, cmd, ids
from igcam_fast import CamEngine
from igcam_fast.commands.cli import main
from igcam_fast.commands.explain import load_image_uint8, to_model_input
from igcam_fast.results import open_results


def test_every_image_one_map_equal_to_the_api(data, reference):
    results = open_results(reference)
    names = ids(data)
    good = [i for i, n in enumerate(names) if n not in CORRUPT]
    assert results.complete and len(results) == N_IMAGES
    assert sorted(results.index.tolist()) == good  # exactly one map per readable image
    assert [names[i] for i in results.index] == results.ids.tolist()
    failed = results.failed
    assert sorted(f["id"] for f in failed) == sorted(CORRUPT) and all(f["error"] for f in failed)
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["totals"] == dict(images=N_IMAGES + 3, explained=N_IMAGES, failed=3, no_target=0, maps=N_IMAGES)
    assert manifest["map"] == dict(dtype="float16", resolution="layer", shape=[8, 8])
    assert results.shards[0].maps.dtype == np.float16

    # the in-process API on the same images
    spec = tiny_models.tiny_cnn()
    images = torch.stack([load_image_uint8(str(data / names[i]), 32) for i in results.index])
    x = to_model_input(images, spec.mean, spec.std)
    with CamEngine(spec.model, spec.layer, steps=8, mean=spec.mean, std=spec.std, output_size="layer") as engine:
        expected = engine.explain(x)
    assert np.array_equal(results.targets, expected.targets[:, 0].numpy())
    np.testing.assert_allclose(results.scores, expected.logits.gather(1, expected.targets).squeeze(1).numpy(),
                               rtol=1e-4, atol=1e-4)
    got = results.maps().astype(np.float32)
    want = expected.layer_maps.numpy()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3 * float(want.max()))
    rec = results.find(names[good[5]])
    assert len(rec) == 1 and rec[0].index == good[5] and rec[0].map.shape == (8, 8)


def test_corrupt_files_strict_fails_fast(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(cmd(data, tmp_path / "o", "--workers", "0", "--strict"))
    assert err.value.code == 2
    assert "zz_garbage.jpg" in capsys.readouterr().err


def test_changed_settings_refused_unless_overwrite(data, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{data / n}\n" for n in ids(data)[:30]))
    out = tmp_path / "o"
    base = ["explain", "--data", str(listing), "--model", MODEL, "--out", str(out), "--workers", "0",
            "--steps", "4", "--shard-size", "16"]
    main(base)
    before = open_results(out).maps().copy()
    with pytest.raises(SystemExit) as err:
        main(base[:-4] + ["--steps", "6", "--shard-size", "16"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "other settings" in message and "steps: 4 -> 6" in message and "--overwrite" in message
    assert np.array_equal(open_results(out).maps(), before)  # untouched
    main(base + ["--overwrite"])  # same settings: --overwrite resumes, nothing is discarded
    assert "2 finished shards skipped" in capsys.readouterr().err
    main(base[:-4] + ["--steps", "6", "--shard-size", "16", "--overwrite"])
    results = open_results(out)
    assert results.settings["steps"] == 6 and len(results) == 30
    assert not np.array_equal(results.maps(), before)


def test_overlays_html_topk_input_resolution(data, tmp_path):
    listing = tmp_path / "list.txt"
    names = [n for n in ids(data) if n not in CORRUPT][:12]
    listing.write_text("".join(f"{data / n}\n" for n in names))
    out = tmp_path / "o"
    main(["explain", "--data", str(listing), "--model", MODEL, "--out", str(out), "--workers", "0",
          "--targets", "topk:2", "--resolution", "input", "--method", "gradcam", "--overlays"])
    results = open_results(out)
    assert len(results) == 24 and results.maps().shape == (24, 32, 32)
    assert sorted(results.index.tolist()) == sorted(list(range(12)) * 2)
    for rec in results:
        assert Path(rec.overlay).is_file()
    html = (out / "index.html").read_text()
    assert html.count("<img") == 24 and "class" in html


def test_voc_all_present_and_imagefolder(tmp_path):
    voc = tmp_path / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"class{k}" for k in range(6)]
    present = {}
    for i in range(10):
        stem = f"{i:06d}"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        objs = [names[(i + j * 2) % 6] for j in range(1 + i % 3)] + ([names[i % 6]] if i % 2 else [])
        present[stem] = sorted({names.index(o) for o in objs})
        xml = "".join(f"<object><name>{o}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
                      "</bndbox></object>" for o in objs)
        (voc / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{xml}</annotation>")
    (voc / "ImageSets/Main/test.txt").write_text("".join(f"{i:06d}\n" for i in range(0, 10, 2)))
    (voc / "ImageSets/Main/trainval.txt").write_text("".join(f"{i:06d}\n" for i in range(1, 10, 2)))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names))
    out = tmp_path / "voc_out"
    main(["explain", "--data", str(voc), "--model", MODEL, "--out", str(out), "--workers", "1",
          "--targets", "all-present", "--classes", str(classes), "--steps", "4"])
    results = open_results(out)
    assert results.settings["data_kind"] == "voc" and results.settings["data_split"] == "test"
    want = [(f"{i:06d}", c) for i in range(0, 10, 2) for c in present[f"{i:06d}"]]
    assert sorted(zip(results.ids.tolist(), results.targets.tolist())) == sorted(want)
    # several targets of one image share its forward passes and equal the API's maps
    spec = tiny_models.tiny_cnn()
    stem = "000004"
    x = to_model_input(load_image_uint8(str(voc / "JPEGImages" / f"{stem}.jpg"), 32)[None], spec.mean, spec.std)
    with CamEngine(spec.model, spec.layer, steps=4, mean=spec.mean, std=spec.std, output_size="layer") as engine:
        expected = engine.explain(x, [present[stem]]).layer_maps[0]
    recs = results.find(stem)
    got = np.stack([r.map for r in recs]).astype(np.float32)
    np.testing.assert_allclose(got, expected.numpy(), rtol=2e-3, atol=1e-3 * float(expected.max()))

    # ImageFolder: all-present is the folder's class
    tree = tmp_path / "tree"
    for k in range(3):
        (tree / f"class{k}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tree / f"class{k}" / f"{j}.png")
    main(["explain", "--data", str(tree), "--model", MODEL, "--out", str(tmp_path / "tree_out"), "--workers", "0",
          "--targets", "all-present", "--steps", "2"])
    results = open_results(tmp_path / "tree_out")
    assert results.settings["data_kind"] == "imagefolder"
    assert [(i, t) for i, t in zip(results.ids.tolist(), results.targets.tolist())] == \
        [(f"class{k}/{j}.png", k) for k in range(3) for j in range(3)]


def test_label_file_targets_and_images_without_targets(data, tmp_path, capsys):
    names = [n for n in ids(data) if n not in CORRUPT][:8]
    labels = tmp_path / "labels.txt"
    labels.write_text("# id classes\n" + "".join(f"{n} class{k % 6},{(k + 2) % 6}\n" for k, n in enumerate(names[:6])))
    out = tmp_path / "o"
    main(["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--workers", "0", "--steps", "2",
          "--targets", str(labels)])
    results = open_results(out)
    assert sorted(zip(results.ids.tolist(), results.targets.tolist())) == \
        sorted((n, c) for k, n in enumerate(names[:6]) for c in (k % 6, (k + 2) % 6))
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["no_target"] == N_IMAGES - 6 and totals["maps"] == 12 and totals["failed"] == 3
    with pytest.raises(SystemExit):
        main(["explain", "--data", str(data), "--model", MODEL, "--out", str(tmp_path / "p"),
              "--targets", "all-present", "--format", "folder"])
    assert "needs labels" in capsys.readouterr().err


def test_every_map_records_its_error_estimate_and_path_points(data, reference, tmp_path):
    """A fixed rule stores NaN estimates and its m; --tol stores each map's own estimate and points,
    equal to the engine's with the same tol."""
    fixed = open_results(reference)
    assert np.isnan(fixed.error_estimates).all() and (fixed.path_points == 8).all()
    assert np.isnan(fixed[0].error_estimate) and fixed[0].path_points == 8

    out = tmp_path / "tol"
    main(cmd(data, out, "--tol", "0.02", "--max-steps", "31", "--resolution", "layer", "--map-dtype", "float32"))
    results = open_results(out)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["tol"] == 0.02 and settings["max_steps"] == 31 and settings["rule"] == "patterson"
    names = ids(data)
    spec = tiny_models.tiny_cnn()
    images = torch.stack([load_image_uint8(str(data / names[i]), 32) for i in results.index])
    x = to_model_input(images, spec.mean, spec.std)
    with CamEngine(spec.model, spec.layer, tol=0.02, max_steps=31, mean=spec.mean, std=spec.std,
                   output_size="layer") as engine:
        expected = engine.explain(x)
    assert (results.path_points >= 7).all() and (results.path_points <= 31).all()
    # the data set is explained in batches, so compare per image (each image's rounds are its own)
    np.testing.assert_array_equal(results.path_points, expected.path_points.numpy())
    np.testing.assert_allclose(results.error_estimates, expected.error_estimate[:, 0].numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(results.maps(), expected.layer_maps.numpy(), rtol=1e-4,
                               atol=1e-5 * float(expected.layer_maps.abs().max()))
