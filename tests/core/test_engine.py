"""The engine against the float64 reference, the method's defining properties, and its safety."""

import pytest
import torch
from torch import nn

import igcam_fast
from igcam_fast.core import reference as R
from igcam_fast.core.baseline import BASELINE_FEATURES
from igcam_fast.core.engine import CamEngine


def small_cnn(classes=5, pool="avg", width=6):
    """A small random CNN: conv-ReLU-conv(stride 2)-ReLU, then GAP + linear or flatten + MLP."""
    body = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True)]
    if pool == "avg":
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    else:  # a non-linear head, like VGG's
        head = [nn.AdaptiveMaxPool2d(3), nn.Flatten(), nn.Linear(width * 9, 16), nn.ReLU(inplace=True),
                nn.Linear(16, classes)]
    net = nn.Sequential(*body, *head)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-300))


CASES = [
    # (shape, pool, steps, rule, targets)
    ((1, 3, 12, 10), "avg", 1, "right", [2]),
    ((2, 3, 9, 9), "max", 5, "right", [0, 4]),
    ((3, 3, 16, 11), "avg", 7, "gausslegendre", [1, 1, 3]),
    ((2, 3, 8, 13), "max", 4, "middle", None),
    ((2, 3, 10, 10), "avg", 6, "trapezoid", [3, 0]),
    ((1, 3, 7, 7), "max", 9, "left", [4]),
]


@pytest.mark.parametrize("shape,pool,steps,rule,targets", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_engine_matches_reference(shape, pool, steps, rule, targets, dtype, tol):
    net = small_cnn(pool=pool).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    black = ((0 - torch.tensor(igcam_fast.IMAGENET_MEAN, dtype=torch.float64))
             / torch.tensor(igcam_fast.IMAGENET_STD, dtype=torch.float64)).to(dtype)
    baseline = black[:, None, None].expand(shape[1:]).contiguous()
    resolved = targets if targets is not None else net(x).argmax(1).tolist()
    ours = igcam_fast.integrated_gradcam(net, x, "3", targets, steps=steps, rule=rule, batch_rows=4)
    ref = R.reference_integrated_gradcam(net.double(), x.double(), net[3], resolved, steps=steps, rule=rule,
                                         baseline=baseline.double(), output_size=shape[-2:])
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ours.shape == (shape[0], *shape[-2:])
    assert rel_err(ours, ref) < tol


def test_layer_maps_and_result_fields():
    net = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    res = igcam_fast.integrated_gradcam(net, x, "4", return_result=True, steps=3)
    assert res.layer_maps.shape == (2, 6, 6) and res.maps.shape == (2, 12, 12)
    assert torch.equal(res.targets[:, 0], res.logits.argmax(1))
    assert res.backend in igcam_fast.ops.backend_names()
    assert (res.maps >= 0).all()


def test_several_targets_per_image_share_the_passes():
    net = small_cnn().double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    both = igcam_fast.integrated_gradcam(net, x, "3", [[0, 3], [2, 1]], steps=4)
    assert both.shape == (2, 2, 10, 10)
    for column, classes in enumerate(([0, 2], [3, 1])):
        single = igcam_fast.integrated_gradcam(net, x, "3", classes, steps=4)
        assert rel_err(both[:, column], single) < 1e-12


def test_target_forms_agree():
    net = small_cnn().double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    expected = igcam_fast.integrated_gradcam(net, x, "3", [1, 1], steps=3)
    pytorch_grad_cam_style = [lambda row: row[1], lambda row: row[1]]
    for targets in (1, torch.tensor([1, 1]), [torch.tensor(1), 1], pytorch_grad_cam_style):
        got = igcam_fast.integrated_gradcam(net, x, "3", targets, steps=3)
        assert rel_err(got, expected) < 1e-12


def test_chunking_splits_images_and_steps_without_changing_the_map():
    net = small_cnn().double()
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    whole = igcam_fast.integrated_gradcam(net, x, "3", [0, 1, 2], steps=6, batch_rows=64)
    for rows in (1, 4, 5, 7):
        assert rel_err(igcam_fast.integrated_gradcam(net, x, "3", [0, 1, 2], steps=6, batch_rows=rows), whole) < 1e-12


def test_channels_last_changes_nothing():
    net = small_cnn()
    x = torch.randn(2, 3, 12, 12)
    a = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], channels_last=True)
    b = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], channels_last=False)
    assert rel_err(a, b) < 1e-5


def test_gradcam_and_gradcampp_match_reference():
    net = small_cnn(pool="max").double()
    x = torch.randn(3, 3, 11, 9, dtype=torch.float64)
    targets = [0, 2, 4]
    assert rel_err(igcam_fast.gradcam(net, x, "4", targets), R.reference_gradcam(net, x, net[4], targets, (11, 9))) < 1e-10
    assert rel_err(igcam_fast.gradcampp(net, x, "4", targets),
                   R.reference_gradcampp(net, x, net[4], targets, (11, 9))) < 1e-10


def test_right_rule_one_step_without_baseline_is_gradcam():
    net = small_cnn(pool="max").double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    ig = igcam_fast.integrated_gradcam(net, x, "4", [1, 3], steps=1, rule="right", subtract_baseline=False)
    assert rel_err(ig, igcam_fast.gradcam(net, x, "4", [1, 3])) < 1e-12


def test_demo_preset_is_the_authors_loop():
    """A literal transcription of the authors' demo: α = i/m for i < m, no A', summed."""
    net = small_cnn(pool="max").double()
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    m, c = 50, 2
    black = (0 - torch.tensor(igcam_fast.IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(
        igcam_fast.IMAGENET_STD, dtype=torch.float64)
    x_black = black[None, :, None, None].expand_as(x)
    total = torch.zeros(5, 5, dtype=torch.float64)
    store = {}
    def keep_layer_output(module, inputs, output):
        output.retain_grad()
        store["A"] = output

    handle = net[4].register_forward_hook(keep_layer_output)
    try:
        for i in range(m):
            image = (x_black + (i / m) * (x - x_black)).requires_grad_(True)
            net(image)[0, c].backward()
            A, G = store["A"][0].detach(), store["A"].grad[0]
            total += torch.relu((G.mean(dim=(1, 2))[:, None, None] * A).sum(0))
    finally:
        handle.remove()
    ours = igcam_fast.integrated_gradcam(net, x, "4", [c], preset="demo", output_size="layer")
    assert rel_err(ours[0], total) < 1e-12


def test_sensitivity_axiom():
    """f = 1 - ReLU(1 - s) saturates for s > 1: Grad-CAM is all zero, Integrated Grad-CAM is not."""

    class Saturating(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1, bias=False)
            nn.init.constant_(self.conv.weight, 1.0)

        def forward(self, x):
            s = self.conv(x).mean(dim=(2, 3))  # (B, 1)
            return 1 - torch.relu(1 - s)

    net = Saturating().double().eval()
    x = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    assert float(net(x).detach()) == 1.0
    grad_cam = igcam_fast.gradcam(net, x, "conv", [0])
    integrated = igcam_fast.integrated_gradcam(net, x, "conv", [0], baseline="zeros", steps=16)
    assert float(grad_cam.abs().max()) == 0.0
    assert float(integrated.min()) > 0
    # Analytically: A(α) = 3α, w(α) = 1/16 while 3α < 1 and 0 after, so each pixel of the
    # integral is ∫_0^{1/3} 3α/16 dα = 1/96.
    fine = igcam_fast.integrated_gradcam(net, x, "conv", [0], baseline="zeros", steps=64, rule="gausslegendre",
                                         output_size="layer")
    assert torch.allclose(fine, torch.full_like(fine, 1 / 96), rtol=0.02)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_completeness_for_gap_linear_head(alpha):
    """GAP + linear head: Σ_ij Σ_k w_k (A_k(γ) - A'_k), before the ReLU, equals y(γ) - y(x')."""
    net = small_cnn(pool="avg").double()
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    baseline = torch.randn(3, 10, 10, dtype=torch.float64)
    point = baseline + alpha * (x - baseline)
    signed = igcam_fast.integrated_gradcam(net, point, "4", [1, 3], steps=1, rule="right", baseline=baseline,
                                           relu=False, output_size="layer")
    with torch.no_grad():
        expected = net(point)[[0, 1], [1, 3]] - net(baseline[None])[0, [1, 3]]
    assert torch.allclose(signed.sum(dim=(1, 2)), expected, rtol=1e-10, atol=1e-12)


def test_baselines():
    net = small_cnn().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    zeros = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], baseline="zeros", steps=3)
    as_tensor = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], baseline=torch.zeros(3, 8, 8), steps=3)
    as_callable = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], baseline=lambda t: torch.zeros_like(t), steps=3)
    assert rel_err(as_tensor, zeros) < 1e-12 and rel_err(as_callable, zeros) < 1e-12
    black = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], baseline="black", steps=3)
    assert rel_err(black, zeros) > 1e-3  # black pixels are not the zero tensor after normalisation
    per_image = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ours = igcam_fast.integrated_gradcam(net, x, "3", [0, 1], baseline=per_image, steps=3, rule="gausslegendre")
    ref = R.reference_integrated_gradcam(net, x, net[3], [0, 1], steps=3, rule="gausslegendre", baseline=per_image,
                                         output_size=(8, 8))
    assert rel_err(ours, ref) < 1e-10


def test_baseline_features_are_cached_and_invalidated_by_new_weights():
    net = small_cnn()
    x = torch.randn(1, 3, 8, 8)
    calls = []
    handle = net[3].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        with CamEngine(net, "3", steps=4) as engine:
            engine(x, [0])
            engine(x, [1])
            assert calls.count(1) == 1  # A' once: the other forwards carry 4 path images each
            with torch.no_grad():
                net[0].weight.mul_(1.5)  # an in-place update bumps the version: A' is recomputed
            engine(x, [1])
            assert calls.count(1) == 2
    finally:
        handle.remove()
    assert BASELINE_FEATURES.holds(net)


def _model_state(net):
    return ([p.requires_grad for p in net.parameters()], [p.grad for p in net.parameters()],
            len(net[3]._forward_hooks), torch.is_grad_enabled())


def test_leaves_no_trace_on_the_model():
    net = small_cnn()
    net[0].weight.requires_grad_(False)  # a partly frozen model
    before = _model_state(net)
    igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", steps=3)
    igcam_fast.gradcampp(net, torch.randn(2, 3, 8, 8), "3")
    assert _model_state(net) == before
    assert all(p.grad is None for p in net.parameters())


def test_works_on_a_frozen_model_and_cleans_up_after_errors():
    net = small_cnn().requires_grad_(False)
    before = _model_state(net)
    assert igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", steps=2).abs().sum() >= 0
    with pytest.raises(ValueError, match="out of range"):
        igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", [99])
    with pytest.raises(ValueError, match="4-D"):
        igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "7")  # the flatten: 2-D output
    assert _model_state(net) == before


@pytest.mark.parametrize("call,match", [
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(3, 8, 8), "3"), "B, C, H, W"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", [0]), "2 images"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "nope"), "not a module"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", steps=0), "steps must be >= 1"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", rule="simpson"), "unknown rule"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.full((1, 3, 8, 8), float("nan")), "3"), "NaN"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", baseline=torch.zeros(3, 4, 4)),
     "baseline must have shape"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", baseline="white"), "baseline must be"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", [[0, 1], [2]]), "1 images"),
    (lambda net: igcam_fast.integrated_gradcam(net, torch.randn(1, 3, 8, 8), "3", [-1]), "out of range"),
])
def test_bad_input_gets_a_clear_error(call, match):
    net = small_cnn()
    before = _model_state(net)
    with pytest.raises((ValueError, TypeError), match=match):
        call(net)
    assert _model_state(net) == before


def test_training_mode_is_refused():
    net = small_cnn().train()
    with pytest.raises(RuntimeError, match="training mode"):
        igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3")
    net.eval()
    assert igcam_fast.integrated_gradcam(net, torch.randn(2, 3, 8, 8), "3", allow_training=False).shape == (2, 8, 8)


def test_normalized_maps_are_in_unit_range():
    net = small_cnn()
    maps = igcam_fast.integrated_gradcam(net, torch.randn(3, 3, 9, 7), "3", normalize=True, output_size=(20, 15))
    assert maps.shape == (3, 20, 15)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1.0 + 1e-6
