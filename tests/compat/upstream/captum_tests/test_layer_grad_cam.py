# Re-expressed from captum 0.9.0, tests/attr/layer/test_grad_cam.py, https://github.com/pytorch/captum
# (BSD 3-Clause License, Copyright (c) 2019 PyTorch contributors; see ../README.md). The cases, inputs and
# expected values are captum's; the models and the comparison helper are captum's own, imported from the
# installed captum.testing. Each case runs against captum's LayerGradCam (the baseline) and against
# LayerIntegratedGradCam in its documented LayerGradCam setting (subtract_baseline=False, n_steps=1,
# method="riemann_right"), on the model as captum's test leaves it (training mode) and in eval mode.
"""captum's LayerGradCam tests with igcam_fast.compat.captum.LayerIntegratedGradCam swapped in."""

import unittest

import pytest
import torch

pytest.importorskip("captum")

from captum.attr import LayerGradCam  # noqa: E402
from captum.testing.helpers.basic import assertTensorTuplesAlmostEqual  # noqa: E402
from captum.testing.helpers.basic_models import BasicModel_ConvNet_One_Conv, BasicModel_MultiLayer  # noqa: E402

from igcam_fast.compat.captum import LayerIntegratedGradCam  # noqa: E402


def _conv_input():
    return torch.arange(16).view(1, 1, 4, 4).float()


def _conv_input_with_negative():
    inp = _conv_input()
    inp[0, 0, 1, 1] = -4.0
    return inp.requires_grad_()


def _relu_expected():
    exp = 0.5625 * _conv_input_with_negative().detach()
    exp[0, 0, 1, 1] = 0.0
    return exp


def _frozen_conv_net():
    net = BasicModel_ConvNet_One_Conv()
    for param in net.parameters():  # some models do this before being interpreted
        param.requires_grad = False
    return net


# name: (model, layer name, input, expected attributions, attribute() keywords)
CASES = {
    "simple_input_non_conv": (
        BasicModel_MultiLayer, "linear0", lambda: torch.tensor([[0.0, 100.0, 0.0]], requires_grad=True),
        lambda: [[400.0]], {}),
    "simple_multi_input_non_conv": (
        lambda: BasicModel_MultiLayer(multi_input_module=True), "multi_relu",
        lambda: torch.tensor([[0.0, 6.0, 0.0]], requires_grad=True), lambda: ([[21.0]], [[21.0]]), {}),
    "simple_input_conv": (
        BasicModel_ConvNet_One_Conv, "conv1", _conv_input, lambda: [[[[11.25, 13.5], [20.25, 22.5]]]], {}),
    "simple_input_conv_split_channels": (
        BasicModel_ConvNet_One_Conv, "conv1", _conv_input,
        lambda: [[[[-3.75, 3.0], [23.25, 30.0]], [[15.0, 10.5], [-3.0, -7.5]]]], {"attr_dim_summation": False}),
    "simple_input_conv_no_grad": (
        _frozen_conv_net, "conv1", _conv_input, lambda: [[[[11.25, 13.5], [20.25, 22.5]]]], {}),
    "simple_input_conv_relu": (
        BasicModel_ConvNet_One_Conv, "relu1", _conv_input, lambda: [[[[0.0, 4.0], [28.0, 32.5]]]], {}),
    "simple_input_conv_without_final_relu": (
        BasicModel_ConvNet_One_Conv, "conv1", _conv_input_with_negative,
        lambda: 0.5625 * _conv_input_with_negative().detach(), {"attribute_to_layer_input": True}),
    "simple_input_conv_fc_with_final_relu": (
        BasicModel_ConvNet_One_Conv, "conv1", _conv_input_with_negative, _relu_expected,
        {"attribute_to_layer_input": True, "relu_attributions": True}),
    "simple_multi_input_conv": (
        BasicModel_ConvNet_One_Conv, "conv1", lambda: (_conv_input(), torch.ones((1, 1, 4, 4))),
        lambda: [[[[14.5, 19.0], [32.5, 37.0]]]], {}),
}



def _attribution(implementation, net, layer):
    if implementation == "captum":
        return LayerGradCam(net, layer)
    return LayerIntegratedGradCam(net, layer, subtract_baseline=False)


def _attribute(implementation, explainer, inputs, **kwargs):
    if implementation == "captum":
        return explainer.attribute(inputs, **kwargs)
    return explainer.attribute(inputs, n_steps=1, method="riemann_right", **kwargs)


def _params():
    for implementation in ("captum", "adapter"):
        for mode in ("as_is", "eval"):
            yield pytest.param(implementation, mode, id=f"{implementation}-{mode}")


@pytest.mark.parametrize("implementation,mode", list(_params()))
@pytest.mark.parametrize("case", list(CASES))
def test_grad_cam_case(case, implementation, mode):
    build, layer_name, make_input, make_expected, kwargs = CASES[case]
    net = build()
    if mode == "eval":
        net.eval()
    explainer = _attribution(implementation, net, getattr(net, layer_name))
    assert not explainer.multiplies_by_inputs
    attributions = _attribute(implementation, explainer, make_input(), target=0, additional_forward_args=None,
                              grad_kwargs=None, **kwargs)
    assertTensorTuplesAlmostEqual(unittest.TestCase(), attributions, make_expected(), delta=0.01)


@pytest.mark.parametrize("implementation,mode", list(_params()))
def test_relu_gradcam_with_unused_layer(implementation, mode):
    net = BasicModel_MultiLayer(multi_input_module=True)
    if mode == "eval":
        net.eval()
    inp = torch.tensor([[0.0, 6.0, 0.0]], requires_grad=True)
    explainer = _attribution(implementation, net, net.relu)
    attributions = _attribute(implementation, explainer, inp, target=0, grad_kwargs={"materialize_grads": True})
    assert len(attributions) == 1
    assert list(attributions[0].shape) == [1]
    assert float(attributions[0].detach().sum()) == pytest.approx(0.0)
