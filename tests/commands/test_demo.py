"""What the demo shows a user: the models carry their preprocessing, the figures (overlay with
caption, aspect ratio kept), class names, the random-weights warning, and the saturation example."""

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from igcam_fast.commands import cli
from igcam_fast.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, attach_preprocessing, preprocessing_of
from igcam_fast.images.overlay import explanation_figure, overlay, scaled_to
from igcam_fast.images.photos import bundled_photos, model_input
from igcam_fast.images.saturation import SaturatedScorer, bright_object, saturation_example, saturation_figure
from igcam_fast.models import layers_with_4d_outputs, load_model

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
import tiny_models  # noqa: E402


# ---- preprocessing travels with the model ---------------------------------------------------------------

def test_bundled_model_carries_its_own_normalisation_and_model_input_applies_it():
    spec = load_model("efficientnet_lite0")
    pre = preprocessing_of(spec.model)
    assert pre.input_size == 224
    image = bundled_photos(["coffee"])[0].image
    x = model_input(image, spec.model)
    assert x.shape == (1, 3, 224, 224)
    # (x − 127) / 128 on 0..255 pixels of the bilinearly resized photo, independently computed
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), dtype=np.float64)
    expected = torch.from_numpy((resized - 127) / 128).permute(2, 0, 1)[None]
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    assert (pre.mean, pre.std) == (tuple(spec.mean), tuple(spec.std))


def test_torchvision_models_carry_imagenet_names_and_warn_about_random_weights(tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        spec = load_model("resnet18")
    pre = preprocessing_of(spec.model)
    assert (pre.mean, pre.std, pre.input_size) == (IMAGENET_MEAN, IMAGENET_STD, 224)
    assert len(spec.class_names) == 1000 and spec.class_names[281] == "tabby"  # torchvision's categories
    path = tmp_path / "r18.pt"  # a weights file silences the warning
    torch.save(spec.model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model("resnet18", weights=path)


def test_factory_models_carry_what_their_spec_or_module_says(monkeypatch):
    spec = load_model("tiny_models:tiny_cnn")
    pre = preprocessing_of(spec.model)
    assert (pre.mean, pre.std, pre.input_size) == (tiny_models.MEAN, tiny_models.STD, 32)
    bare = attach_preprocessing(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                                (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 48)
    module = type(sys)("bare_factory_module")
    module.build = lambda: bare
    monkeypatch.setitem(sys.modules, "bare_factory_module", module)
    spec = load_model("bare_factory_module:build", layer="0")
    assert (spec.mean, spec.std, spec.input_size) == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5), 48)
    with pytest.raises(ValueError, match="carries no preprocessing"):
        model_input(np.zeros((8, 8, 3), np.uint8), nn.Conv2d(3, 3, 1))


def test_layers_with_4d_outputs_lists_names_and_shapes_in_call_order():
    spec = tiny_models.tiny_cnn()
    shapes = layers_with_4d_outputs(spec.model, 32)
    assert list(shapes)[:4] == ["body.0", "body.1", "body.2", "body.3"]
    assert shapes["body.3"] == (1, 12, 8, 8) and "fc" not in shapes and "flat" not in shapes


# ---- figures ----------------------------------------------------------------------------------------------

def test_overlay_keeps_the_photo_size_and_its_old_signature_and_adds_a_caption():
    image = np.zeros((30, 70, 3), np.uint8)
    saliency = np.arange(12, dtype=np.float32).reshape(3, 4)
    plain = overlay(image, saliency)  # positional (image, saliency, weight) as before
    assert plain.size == (70, 30)
    captioned = overlay(image, saliency, 0.5, caption="Integrated Grad-CAM: tabby (0.91)")
    assert captioned.size[0] == 70 and captioned.size[1] > 30
    assert np.array_equal(np.asarray(captioned)[:30], np.asarray(plain))
    strip = np.asarray(captioned)[30:]
    assert (strip < 128).any() and (strip == 255).any()  # dark text on white
    # min-max scaled and upsampled to (H, W); a constant map stays empty instead of becoming noise
    s = scaled_to(saliency, 30, 70)
    assert s.shape == (30, 70) and s.min() == 0 and abs(s.max() - 1) < 1e-6
    assert not scaled_to(np.zeros((3, 4)), 30, 70).any()


def test_explanation_figure_keeps_the_aspect_ratio(tmp_path):
    wide = np.full((100, 300, 3), 128, np.uint8)
    tall = np.full((300, 100, 3), 128, np.uint8)
    sizes = []
    for name, image in (("wide", wide), ("tall", tall)):
        path = explanation_figure(image, [("map", np.random.default_rng(0).random((7, 7)))], tmp_path / f"{name}.png",
                                  title=name, boxes=[(10, 10, 50, 50)], caption="caption")
        sizes.append(Image.open(path).size)
    (ww, wh), (tw, th) = sizes
    assert ww / wh > 1.5 * (tw / th)  # not both squashed to squares


def test_demo_writes_figures_with_class_names(tmp_path):
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 60, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    from igcam_fast.commands import demo

    args = cli.build_parser().parse_args(["demo", str(image), "--model", "tiny_models:tiny_cnn", "--out", str(out),
                                          "--repeats", "1", "--no-why-figure", "--steps", "4"])
    rows = demo.run(args)
    assert rows[0]["class_name"].startswith("class")  # the model's own names
    assert np.load(out / "wide_igcam.npy").shape == (32, 32)
    assert (out / "wide.png").is_file() and not (out / demo.WHY_FIGURE).exists()


# ---- why integrate: the saturated unit -------------------------------------------------------------------

def test_saturated_unit_empties_gradcam_but_not_integrated_gradcam():
    ex = saturation_example()
    obj = bright_object()[..., 0] > 0
    assert ex["input_gradient_norm"] == 0.0  # the score does not move at the input: saturated
    assert ex["scores"][-1] == 1.0 and ex["scores"][0] == 0.0
    assert np.all(ex["gradcam"] == 0)  # Grad-CAM's map is exactly empty
    assert ex["igcam"].max() > 0  # the integrated map is not, and it is on the object
    assert np.all(ex["igcam"][~obj] == 0) and np.all(ex["igcam"][obj] > 0)


def test_saturated_unit_with_the_float64_reference():
    """The same conclusion from the reference transcriptions (igcam_fast.core.reference), and the
    engine's maps equal to them."""
    from igcam_fast.core import reference as R

    model = SaturatedScorer().double().eval()
    x = torch.from_numpy(bright_object()).permute(2, 0, 1)[None].double() / 255
    ex = saturation_example()
    gradcam = R.reference_gradcam(model, x, model.features, [0])[0]
    integrated = R.reference_integrated_gradcam(model, x, model.features, [0], steps=ex["steps"], rule=ex["rule"])[0]
    assert torch.all(gradcam == 0) and integrated.max() > 0
    torch.testing.assert_close(torch.from_numpy(ex["igcam"]), integrated, rtol=1e-9, atol=1e-12)


def test_saturation_figure_is_drawn(tmp_path):
    path = saturation_figure(tmp_path / "why.png")
    with Image.open(path) as im:
        assert im.size[0] > 2 * im.size[1] > 400


def test_demo_says_when_a_torchvision_model_has_random_weights(tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(image)
    assert cli.main(["demo", str(image), "--model", "resnet18", "--out", str(tmp_path / "out"), "--repeats", "1",
                     "--steps", "2", "--no-why-figure"]) == 0
    captured = capsys.readouterr()
    warned = [line for line in captured.err.splitlines() if "random weights" in line]
    assert len(warned) == 1 and warned[0].startswith("igcam-fast demo: warning: resnet18 has random weights")
    row = next(line for line in captured.out.splitlines() if line.startswith("| photo |"))
    assert re.search(r"\| photo \| [A-Za-z][^|(]* \(\d+\) \|", row), row  # an ImageNet class name, not a bare index
