"""The closed-form head: where the layer reaches the scores through GAP + one linear layer, the
weights come from the linear layer (no head forward, no backward) and equal the autograd path."""

import pytest
import torch
import torchvision
from torch import nn

import igcam_fast
from igcam_fast.core.head import find_linear_head
from test_engine import rel_err, small_cnn


def _both(net, x, layer, targets, **options):
    fast = igcam_fast.integrated_gradcam(net, x, layer, targets, return_result=True, **options)
    slow = igcam_fast.integrated_gradcam(net, x, layer, targets, return_result=True, closed_form_head=False, **options)
    return fast, slow


@pytest.mark.parametrize("method", ["igcam", "gradcam"])
def test_equals_the_autograd_path_on_a_gap_linear_head(method):
    torch.manual_seed(0)
    net = small_cnn().double()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    run = igcam_fast.integrated_gradcam if method == "igcam" else igcam_fast.gradcam
    fast = run(net, x, "4", [[0, 3], [1, 1], [4, 2]], return_result=True)
    slow = run(net, x, "4", [[0, 3], [1, 1], [4, 2]], return_result=True, closed_form_head=False)
    assert fast.closed_form_head and not slow.closed_form_head
    assert rel_err(fast.maps, slow.maps) < 1e-10


def test_equals_the_autograd_path_on_resnet18_layer4():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    fast, slow = _both(net, x, "layer4", [3, 5], steps=4)
    assert fast.closed_form_head, fast.head
    assert rel_err(fast.maps, slow.maps) < 1e-6
    assert rel_err(fast.layer_maps, slow.layer_maps) < 1e-6


def test_the_head_forward_is_skipped():
    net = small_cnn()
    calls = []
    handle = net[7].register_forward_hook(lambda *a: calls.append(1))  # the linear layer
    try:
        result = igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "4", [2], steps=5, return_result=True)
    finally:
        handle.remove()
    assert result.closed_form_head and calls == []


@pytest.mark.parametrize("build,layer,why", [
    (lambda: small_cnn(), "3", "ReLU"),  # a ReLU stands between the layer and the pooling
    (lambda: small_cnn(pool="max"), "4", "AdaptiveMaxPool2d"),  # a max pool and an MLP head, like VGG's
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 3)).eval(), "1", "ReLU6"),  # EfficientNet's _bn1 followed by ReLU6
])
def test_not_applied_where_anything_non_linear_stands_between(build, layer, why):
    net = build()
    head, reason = find_linear_head(net, layer)
    assert head is None and why in reason
    fast, slow = _both(net, torch.randn(2, 3, 9, 9), layer, [0, 1], steps=3)
    assert not fast.closed_form_head and why in fast.head
    assert torch.equal(fast.maps, slow.maps)


def test_not_applied_to_gradcampp_or_callable_targets():
    net = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    assert not igcam_fast.gradcampp(net, x, "4", [0], return_result=True).closed_form_head
    assert not igcam_fast.integrated_gradcam(net, x, "4", [lambda row: row[0]], return_result=True).closed_form_head


def test_a_swapped_classifier_is_seen():
    torch.manual_seed(0)
    net = small_cnn().double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    igcam_fast.integrated_gradcam(net, x, "4", [1], steps=2)
    net[7] = nn.Linear(6, 5).double()
    fast, slow = _both(net, x, "4", [1], steps=2)
    assert fast.closed_form_head and rel_err(fast.maps, slow.maps) < 1e-10
