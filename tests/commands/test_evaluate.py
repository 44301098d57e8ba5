"""Score-CAM / Ablation-CAM against pytorch-grad-cam, the VOC reader and its errors, and the
evaluate command end to end on a small synthetic VOC-layout data set with a briefly trained model."""

import json
import re
import logging

import numpy as np
import pytest
import torch
from torch import nn

from igcam_fast.commands import CommandError, cli, evaluate
from igcam_fast.evaluation.channel_cams import AblationCAM, ScoreCAM
from igcam_fast.images.photos import box_mask
from igcam_fast.evaluation.voc import VocError, load_voc
from igcam_fast.evaluation.voc import synthetic as S


def small_cnn(pool="avg"):
    torch.manual_seed(0)
    body = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()]
    head = ([nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5)] if pool == "avg" else
            [nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(108, 16), nn.ReLU(), nn.Linear(16, 5)])
    return nn.Sequential(*body, *head).eval()


# ---- Score-CAM and Ablation-CAM ------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("ours,theirs", [(ScoreCAM, "ScoreCAM"), (AblationCAM, "AblationCAM")])
def test_matches_pytorch_grad_cam(pool, ours, theirs):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = small_cnn(pool)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [0, 3, 4]
    with getattr(pgc, theirs)(net, [net[3]]) as cam:
        cam.batch_size = 7
        ref = cam(x, [ClassifierOutputTarget(c) for c in targets])
    with ours(net, "3", normalize=True, batch_rows=7) as engine:
        got = engine(x, targets).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-5)


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_several_targets_share_the_passes_and_chunking_changes_nothing(cls):
    net = small_cnn("max")
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with cls(net, "3", batch_rows=5) as a, cls(net, "3", batch_rows=100) as b:
        single = [a(x, [c] * 4) for c in (1, 2)]
        both = b(x, [[1, 2]] * 4)
    for j in range(2):
        torch.testing.assert_close(both[:, j], single[j], rtol=1e-5, atol=1e-6)


def test_ablation_head_only_equals_full_forward():
    net = small_cnn("max")
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    fast = AblationCAM(net, "3")(x, [1, 4])
    full = AblationCAM(net, "3", full_forward=True)(x, [1, 4])
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)


# ---- the VOC reader and bad input --------------------------------------------------------------------

@pytest.fixture()
def voc(tmp_path):
    return S.generate(tmp_path / "voc", seed=3, n_train=2, n_test=4)


def test_reader_boxes_difficult_and_merged_masks(voc):
    ann = voc / "Annotations" / "000002.xml"
    ann.write_text(
        "<annotation><filename>000002.jpg</filename><size><width>64</width><height>64</height><depth>3</depth></size>"
        "<object><name>one</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        "<ymax>10</ymax></bndbox></object>"
        "<object><name>one</name><difficult>0</difficult><bndbox><xmin>51</xmin><ymin>51</ymin><xmax>64</xmax>"
        "<ymax>64</ymax></bndbox></object>"
        "<object><name>two</name><difficult>1</difficult><bndbox><xmin>20</xmin><ymin>20</ymin><xmax>30</xmax>"
        "<ymax>30</ymax></bndbox></object></annotation>")
    images = load_voc(voc, "test", S.DIGIT_CLASSES)
    assert [im.image_id for im in images] == ["000002", "000003", "000004", "000005"]
    im = images[0]
    assert im.classes() == ["one"] and im.classes(keep_difficult=True) == ["one", "two"]
    assert im.boxes("one") == [(0, 0, 10, 10), (50, 50, 64, 64)]  # 1-based inclusive -> 0-based edges
    mask = box_mask(im.boxes("one"), (64, 64), (64, 64))
    assert int(mask.sum()) == 100 + 196  # both boxes of the class in one mask


@pytest.mark.parametrize("damage,match", [
    ("missing_image", "image not found: .*000003.jpg"),
    ("malformed_xml", "000003.xml: malformed XML"),
    ("unknown_class", "000003.xml: object 0 has unknown class 'zebra'"),
    ("empty_split", "split file .*test.txt is empty"),
    ("missing_annotation", "annotation not found: .*000003.xml"),
    ("bad_box", "000003.xml object 0 .*outside"),
])
def test_bad_input_is_an_error_naming_the_file(voc, damage, match, caplog):
    _damage(voc, damage)
    with pytest.raises(VocError, match=match):
        load_voc(voc, "test", S.DIGIT_CLASSES)
    if damage == "empty_split":
        with pytest.raises(VocError, match="is empty"):
            load_voc(voc, "test", S.DIGIT_CLASSES, skip_bad=True)
        return
    with caplog.at_level(logging.WARNING, logger="igcam_fast.evaluation.voc"):
        images = load_voc(voc, "test", S.DIGIT_CLASSES, skip_bad=True)
    assert [im.image_id for im in images] == ["000002", "000004", "000005"]
    assert "skipping image 000003" in caplog.text and "000003" in caplog.text


def _damage(voc, damage):
    if damage == "missing_image":
        (voc / "JPEGImages" / "000003.jpg").unlink()
    elif damage == "malformed_xml":
        (voc / "Annotations" / "000003.xml").write_text("<annotation><size><width>64</width></annotation")
    elif damage == "unknown_class":
        p = voc / "Annotations" / "000003.xml"
        text = p.read_text()
        first = text.index("<name>") + len("<name>")
        p.write_text(text[:first] + "zebra" + text[text.index("</name>", first):])
    elif damage == "empty_split":
        (voc / "ImageSets" / "Main" / "test.txt").write_text("\n")
    elif damage == "missing_annotation":
        (voc / "Annotations" / "000003.xml").unlink()
    elif damage == "bad_box":
        p = voc / "Annotations" / "000003.xml"
        text = p.read_text()
        start = text.index("<xmax>") + len("<xmax>")
        p.write_text(text[:start] + "999" + text[text.index("</xmax>", start):])


def test_the_command_reports_bad_input_and_corrupt_images(voc, tmp_path, capsys):
    args = ["evaluate", "--voc", str(voc), "--model", "igcam_fast.evaluation.voc.synthetic:resnet_style", "--methods", "gradcam",
            "--out", str(tmp_path / "out"), "--no-progress"]
    (voc / "JPEGImages" / "000004.jpg").write_bytes(b"not a jpeg")

    def one_line_error(argv, match):  # the data set's VocError, as the command's one-line error (exit 2)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("igcam-fast evaluate: error: ") and re.search(match, err), err

    one_line_error(args, "000004.jpg: not a readable image")
    _damage(voc, "unknown_class")
    one_line_error(args, "000003.xml: object 0 has unknown class 'zebra'")
    result = evaluate.main(args[1:] + ["--skip-bad"])
    assert result["images"] == 2  # 000003 and 000004 skipped, logged
    with pytest.raises(CommandError, match="split file not found"):
        evaluate.main(args[1:] + ["--split", "val"])


# ---- end to end --------------------------------------------------------------------------------------

def test_evaluate_end_to_end_on_a_trained_model(tmp_path):
    root = S.generate(tmp_path / "digits", seed=0, n_train=800, n_test=30)
    net, info = S.train("resnet_style", root, epochs=6, seed=0, batch_size=32, log=None)
    assert info["test_mAP"] > 0.3  # chance (a random ranking) is about the positive rate, ~0.2
    weights = tmp_path / "resnet_style.pt"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "out"
    result = evaluate.main(["--voc", str(root), "--model", "igcam_fast.evaluation.voc.synthetic:resnet_style",
                            "--weights", str(weights), "--methods", evaluate.DEFAULT_METHODS,
                            "--steps", "8", "--out", str(out), "--no-progress"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["pairs"] == result["pairs"] > 30 and saved["classes"] == list(S.DIGIT_CLASSES)
    table = (out / "results.md").read_text()
    assert "Score-CAM" in table and "Ablation-CAM" in table and "(published)" in table
    chance = np.mean([box_mask(im.boxes(c), (im.height, im.width), (64, 64)).float().mean().item()
                      for im in load_voc(root, "test", S.DIGIT_CLASSES) for c in im.classes()]) * 100
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(evaluate.DEFAULT_METHODS.split(","))
    for r in rows.values():
        for key in ("ebpg", "bbox", "pointing", "drop_top15", "increase_top15", "drop_soft", "increase_soft"):
            assert np.isfinite(r[key]), (r["method"], key)
        assert r["ms_per_image"] > 0
    # a trained model localises its classes clearly better than chance (no particular ranking asked)
    assert rows["gradcam"]["ebpg"] > 1.3 * chance
    assert rows["igcam"]["ebpg"] > 1.3 * chance
    assert max(r["bbox"] for r in rows.values()) > 1.3 * chance


def test_every_method_of_the_table_explains_several_classes_per_image():
    net = small_cnn("max")
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    for name in evaluate.METHOD_LABELS:
        with evaluate.build_explainer(name, net, "3", mean=(0.5,) * 3, std=(0.25,) * 3, batch_rows=16) as e:
            maps = e.explain(x, [[0, 2], [1, 1]]).maps
            assert maps.shape == (2, 2, 12, 12) and torch.isfinite(maps).all() and (maps >= 0).all(), name
            assert evaluate.method_label(name, e)
