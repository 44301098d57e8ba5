"""The pretrained EfficientNet-Lite0 on the bundled real photos, and the demo command."""

import numpy as np
import pytest
import torch

import igcam_fast
from igcam_fast.commands import cli
from igcam_fast.models import efficientnet_lite0
from igcam_fast.images.photos import box_mask, bundled_photos, to_input


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


def _inputs(spec, names):
    photos = bundled_photos(names)
    return photos, torch.cat([to_input(p.image, spec.input_size, spec.mean, spec.std) for p in photos])


def test_predictions_and_map_maximum_inside_the_box(lite0):
    photos, x = _inputs(lite0, ["chelsea", "coffee"])
    result = igcam_fast.integrated_gradcam(lite0.model, x, lite0.layer, mean=lite0.mean, std=lite0.std,
                                           return_result=True)
    names = [lite0.class_names[int(c)] for c in result.logits.argmax(1)]
    assert int(result.logits[0].argmax()) in range(281, 286), names  # the ImageNet cat classes
    assert names[1] == "espresso"
    for photo, saliency in zip(photos, result.maps):
        mask = box_mask(photo.boxes, photo.image.shape[:2], tuple(saliency.shape))
        peak = int(saliency.flatten().argmax())
        assert bool(mask.flatten()[peak]), f"{photo.name}: the map's maximum lies outside the box"


def test_default_quadrature_is_within_one_percent_of_the_converged_map(lite0):
    """The default (Gauss-Legendre, m = DEFAULT_STEPS) against a 128-node map, on all four photos."""
    photos, x = _inputs(lite0, None)
    with torch.no_grad():
        classes = lite0.model(x).argmax(1).tolist()
    options = dict(mean=lite0.mean, std=lite0.std, output_size="layer")
    default = igcam_fast.integrated_gradcam(lite0.model, x, lite0.layer, classes, **options)
    converged = igcam_fast.integrated_gradcam(lite0.model, x, lite0.layer, classes, steps=128,
                                              rule="gausslegendre", **options)
    for photo, ours, truth in zip(photos, default, converged):
        err = float((ours - truth).norm() / truth.norm())
        assert err < 0.01, f"{photo.name}: {err:.2%} from the converged map"


def test_demo_command_writes_overlays_maps_and_table(tmp_path, capsys):
    cli.main(["demo", "--out", str(tmp_path), "--repeats", "1", "--steps", "4"])
    printed = capsys.readouterr().out
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        for method in ("gradcam", "igcam"):
            saved = np.load(tmp_path / f"{name}_{method}.npy")
            assert saved.shape == (224, 224) and np.isfinite(saved).all() and saved.max() > 0
        assert f"| {name} |" in printed
    assert "espresso" in printed
