"""Quantus's own keyword forms through igcam_fast.compat.quantus.explain_func, against quantus.explain.

Each form is given to both: Quantus's explain (captum's LayerGradCam path) is the reference.
"""

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

from igcam_fast.compat.quantus import KNOWN_KEYWORDS, explain_func  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)), ("relu1", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("layer4", nn.Conv2d(8, 16, 3, padding=1)), ("relu4", nn.ReLU()), ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flat", nn.Flatten()), ("fc", nn.Linear(16, 4))])).eval()


@pytest.fixture(scope="module")
def data():
    x = np.random.RandomState(0).randn(3, 3, 16, 16).astype(np.float32)
    y = np.array([0, 2, 3])
    return x, y


FORMS = {
    "gc_layer-expression": lambda net: dict(gc_layer="model.layer4"),
    "gc_layer-index": lambda net: dict(gc_layer="model[3]"),
    "gc_layer-module": lambda net: dict(gc_layer=net.layer4),
    "xai_lib_kwargs-layer": lambda net: dict(xai_lib_kwargs={"layer": net.relu4}),
    "interpolate": lambda net: dict(gc_layer="model.layer4", interpolate=(16, 16)),
    "interpolate-bilinear": lambda net: dict(gc_layer="model.relu4", interpolate=(16, 16), interpolate_mode="bilinear"),
    "reduce_axes-none": lambda net: dict(gc_layer="model.layer4", reduce_axes=()),
    "keepdims-false": lambda net: dict(gc_layer="model.layer4", keepdims=False),
    # a module: Quantus evaluates a string gc_layer on its softmax-wrapped model, which has no .layer4
    "softmax": lambda net: dict(gc_layer=net.layer4, softmax=True, interpolate=(16, 16)),
    "xai_lib-captum": lambda net: dict(gc_layer="model.layer4", xai_lib="captum"),
    "channel_first": lambda net: dict(gc_layer="model.layer4", channel_first=True),
    "device": lambda net: dict(gc_layer="model.layer4", device="cpu"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_quantus_form_equals_quantus_explain(data, form):
    x, y = data
    net = _net()
    kwargs = dict(method="LayerGradCam", **FORMS[form](net))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = quantus.explain(net, x, y, **kwargs)
        got = explain_func(model=net, inputs=x, targets=y, **kwargs)
    expected = np.asarray(expected.detach().cpu() if isinstance(expected, torch.Tensor) else expected)
    assert got.dtype == np.float32 and got.shape == expected.shape, (got.shape, expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_method_names_layer_names_and_own_keywords(data):
    x, y = data
    net = _net()
    base = explain_func(model=net, inputs=x, targets=y, layer="layer4", method="gradcam")
    assert base.shape == (3, 1, 16, 16) and base.min() >= 0
    for layer in ("model.layer4", net.layer4, "layer4"):
        np.testing.assert_array_equal(explain_func(model=net, inputs=x, targets=y, gc_layer=layer, method="gradcam"),
                                      base)
    np.testing.assert_array_equal(explain_func(model=net, inputs=x, targets=y, layer="layer4", method="gradcam",
                                               abs=True), np.abs(base))
    normalised = explain_func(model=net, inputs=x, targets=y, layer="layer4", method="gradcam", normalise=True)
    np.testing.assert_allclose(normalised, base / base.max(axis=(1, 2, 3), keepdims=True), rtol=1e-6)
    last = explain_func(model=net, inputs=np.ascontiguousarray(x.transpose(0, 2, 3, 1)), targets=y, layer="layer4",
                        method="gradcam", channel_first=False)
    np.testing.assert_allclose(last, base.transpose(0, 2, 3, 1), rtol=1e-6)
    plus = explain_func(model=net, inputs=x, targets=y, gc_layer="model.layer4", method="GradCAMPlusPlus",
                        interpolate=(16, 16))
    assert plus.shape == (3, 1, 16, 16)
    integrated = explain_func(model=net, inputs=x, targets=y, gc_layer="model.layer4", method="IntegratedGradCAM",
                              baseline="zeros", steps=4)
    assert integrated.shape == (3, 1, 8, 8) and (integrated < 0).any()  # Quantus conventions: signed, layer size


def test_refusals_name_what_to_do(data):
    x, y = data
    net = _net()
    with pytest.raises(TypeError, match="known:") as info:
        explain_func(model=net, inputs=x, targets=y, layer="layer4", interpolation=(16, 16))
    assert "interpolate" in str(info.value) and set(KNOWN_KEYWORDS) >= {"gc_layer", "softmax", "steps"}
    with pytest.raises(ValueError, match="LayerGradCam"):
        explain_func(model=net, inputs=x, targets=y, layer="layer4", method="Saliency")
    with pytest.raises(ValueError, match="xai_lib"):
        explain_func(model=net, inputs=x, targets=y, layer="layer4", xai_lib="zennit")
    with pytest.raises(AssertionError, match="batch_axis"):
        explain_func(model=net, inputs=x, targets=y, layer="layer4", reduce_axes=(0,))
    with pytest.raises(ValueError, match="gc_layer"):
        explain_func(model=net, inputs=x, targets=y, gc_layer="model.layer9")


def test_device_moves_and_evaluates_the_model_as_quantus(data):
    x, y = data
    net = _net().train()  # no BatchNorm/Dropout; Quantus's explain puts it in eval mode itself
    got = explain_func(model=net, inputs=x, targets=y, gc_layer="model.layer4", method="LayerGradCam", device="cpu")
    assert not net.training and got.shape == (3, 1, 8, 8)
