"""igcam_fast.compat.captum.LayerIntegratedGradCam against captum itself."""

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")
torchvision = pytest.importorskip("torchvision")

from captum.attr import InternalInfluence, LayerActivation, LayerAttribution, LayerGradCam  # noqa: E402
from captum.attr._utils.approximation_methods import approximation_parameters  # noqa: E402

from igcam_fast.compat.captum import CaptumTargetError, LayerIntegratedGradCam  # noqa: E402


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def close(a, b, tol=1e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = b.abs().max().clamp(min=1e-12)
    assert float((a - b).abs().max() / scale) < tol, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("relu", [False, True])
def test_one_step_at_the_input_is_layer_gradcam(net, x, relu):
    ours = LayerIntegratedGradCam(net, net.layer4, subtract_baseline=False)
    got = ours.attribute(x, target=[1, 5, 7], n_steps=1, method="riemann_right", relu_attributions=relu)
    expected = LayerGradCam(net, net.layer4).attribute(x, target=[1, 5, 7], relu_attributions=relu)
    assert got.device == x.device and got.shape == (3, 1, 2, 2)
    close(got, expected.detach())
    if not relu:
        assert (got < 0).any()  # signed, as captum


# riemann_right at n_steps=1 is the LayerGradCam test above; middle/right differ from left only in the nodes.
METHODS = [("gausslegendre", 5), ("riemann_trapezoid", 4), ("riemann_left", 3)]


@pytest.mark.parametrize("method,n_steps", METHODS)
def test_integrated_channel_weights_are_internal_influence(net, x, method, n_steps):
    """Exact on the same nodes: the map is linear in the per-node terms, so

        ours(no A' subtraction) - ours(A' subtracted) = Σ_k W_k A'_k,   W_k = Σ_t ω_t mean_ij ∂y/∂A_k(α_t),

    and captum's InternalInfluence is Σ_t ω_t ∂y/∂A(α_t) on captum's nodes and step sizes.
    The A'-free part is checked node by node against captum's LayerGradCam.
    """
    baselines = 0.3 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    target = [2, 0, 9]
    kwargs = dict(baselines=baselines, target=target, n_steps=n_steps, method=method, internal_batch_size=4)
    plain = LayerIntegratedGradCam(net, net.layer4, subtract_baseline=False).attribute(x, **kwargs)
    subtracted = LayerIntegratedGradCam(net, net.layer4).attribute(x, **kwargs)

    influence = InternalInfluence(net, net.layer4).attribute(x, **kwargs)  # (N, K, h, w)
    weights = influence.mean(dim=(2, 3))  # the integrated channel weights W, (N, K)
    base_features = LayerActivation(net, net.layer4).attribute(baselines)  # (1, K, h, w)
    close(plain - subtracted, (weights[:, :, None, None] * base_features).sum(dim=1, keepdim=True), 1e-4)

    step_sizes, alphas = (f(n_steps) for f in approximation_parameters(method))
    gradcam = LayerGradCam(net, net.layer4)
    per_node = sum(s * gradcam.attribute(baselines + a * (x - baselines), target=target).detach()
                   for s, a in zip(step_sizes, alphas))
    close(plain, per_node)


def test_defaults_targets_and_interpolate(net, x):
    lig = LayerIntegratedGradCam(net, net.layer4)
    a = lig.attribute(x, target=3, n_steps=4)  # baselines None = zeros, gausslegendre
    zeros = lig.attribute(x, baselines=torch.zeros_like(x), target=3, n_steps=4)
    assert a.shape == (3, 1, 2, 2) and a.dtype == torch.float32
    close(a, zeros, 1e-6)
    close(lig.attribute(x, baselines=0.0, target=3, n_steps=4), a, 1e-6)
    for target in ([3, 3, 3], torch.tensor([3, 3, 3]), torch.tensor(3)):
        close(lig.attribute(x, target=target, n_steps=4), a, 1e-6)
    per_row = lig.attribute(x, target=torch.tensor([1, 2, 3]), n_steps=4, internal_batch_size=3)
    close(per_row[2:], a[2:], 1e-5)
    assert LayerAttribution.interpolate(a, (64, 64), "bilinear").shape == (3, 1, 64, 64)
    close(lig.attribute(x, target=3, n_steps=4, relu_attributions=True), a.clamp(min=0), 1e-6)


def test_functions_tuple_targets_scalar_outputs_and_args(net, x):
    lig_net = LayerIntegratedGradCam(net, net.layer4)
    expected = lig_net.attribute(x, target=[7, 8, 1], n_steps=3)
    # a plain function whose output is (N, 2, 5): captum's tuple targets index it
    grid = LayerIntegratedGradCam(lambda inp: net(inp).reshape(-1, 2, 5), net.layer4)
    close(grid.attribute(x, target=[(1, 2), (1, 3), (0, 1)], n_steps=3), expected, 1e-6)
    close(grid.attribute(x[:1], target=(1, 2), n_steps=3), expected[:1], 1e-6)
    # one scalar per example: target=None
    scalar = LayerIntegratedGradCam(lambda inp: net(inp)[:, 7], net.layer4)
    close(scalar.attribute(x[:1], n_steps=3), expected[:1], 1e-6)
    with pytest.raises(ValueError, match="one scalar per example"):
        lig_net.attribute(x, n_steps=3)
    # additional_forward_args: non-tensors and broadcast tensors
    scaled = LayerIntegratedGradCam(lambda inp, s, t: net(inp) * s * t, net.layer4)
    got = scaled.attribute(x, target=[7, 8, 1], n_steps=3, additional_forward_args=(2.0, torch.ones(1, 10)))
    close(got, 2.0 * expected, 1e-5)


def test_unsupported_arguments_raise(net, x):
    lig = LayerIntegratedGradCam(net, net.layer4)
    with pytest.raises(NotImplementedError, match="additional_forward_args"):
        lig.attribute(x, target=1, additional_forward_args=(torch.ones(3, 10),))
    with pytest.raises(NotImplementedError, match="grad_kwargs"):
        lig.attribute(x, target=1, grad_kwargs={"create_graph": True})
    with pytest.raises(NotImplementedError, match="dtypes"):
        lig.attribute((x, x.double()), target=1)
    with pytest.raises(ValueError):
        lig.attribute(x, target=[1, 2])


def test_captum_target_checks_with_captum_words(net, x):
    """require_2d and friends: the cases captum refuses, refused with captum's messages."""
    grid = LayerIntegratedGradCam(lambda inp: net(inp).reshape(-1, 2, 5), net.layer4)
    for target, words in ((1, "Target not provided when necessary"),  # an int on a (N, 2, 5) output
                          ([1, 2, 3], "Output must be 2D to select tensor of targets."),
                          (torch.tensor([1, 2, 3]), "Output must be 2D to select tensor of targets."),
                          ((1, 2, 3), "Cannot choose target column with output shape"),
                          ([1, 2], "Target list length does not match output!")):
        with pytest.raises(CaptumTargetError, match=words):
            grid.attribute(x, target=target, n_steps=2)
        with pytest.raises(AssertionError):  # what captum raises for each of them
            LayerGradCam(lambda inp: net(inp).reshape(-1, 2, 5), net.layer4).attribute(x, target=target)


def test_captum_layer_and_input_forms_equal_captum(net, x):
    """Linear layers, layer inputs, several inputs, per-channel maps: n_steps=1 at the input is LayerGradCam."""
    def gradcam_setting(forward, layer, inputs, **kwargs):
        ours = LayerIntegratedGradCam(forward, layer, subtract_baseline=False)
        return ours.attribute(inputs, n_steps=1, method="riemann_right", **kwargs)

    target = [1, 5, 7]
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    for model, layer, kwargs in ((net, net.fc, {}), (net, net.layer4, dict(attribute_to_layer_input=True)),
                                 (net, net.avgpool, {}),
                                 (small, small[2], dict(attr_dim_summation=False)),  # one pass per channel
                                 (small, small[2], dict(attr_dim_summation=False, attribute_to_layer_input=True))):
        expected = LayerGradCam(model, layer).attribute(x, target=target, **kwargs)
        got = gradcam_setting(model, layer, x, target=target, **kwargs)
        assert got.shape == expected.shape, (layer, kwargs)
        close(got, expected.detach(), 1e-5)
    two = lambda a, b: net(a + b)  # noqa: E731
    half = x / 2
    expected = LayerGradCam(two, net.layer4).attribute((half, half), target=target)
    close(gradcam_setting(two, net.layer4, (half, half), target=target), expected.detach(), 1e-5)
    # integrated, several inputs: the straight path in both inputs is the path of their sum
    both = LayerIntegratedGradCam(two, net.layer4).attribute((half, half), target=target, n_steps=3)
    close(both, LayerIntegratedGradCam(net, net.layer4).attribute(x, target=target, n_steps=3), 1e-5)


def test_tol_gives_each_example_its_own_path_points(net, x):
    """attribute(tol=): the engine's error-controlled integral, with the estimate of every map kept."""
    import igcam_fast

    lig = LayerIntegratedGradCam(net, net.layer4, relu_per_step=True)
    baselines = torch.zeros_like(x)
    a = lig.attribute(x, baselines=baselines, target=3, tol=0.02, max_steps=31)
    (result,) = lig.last_results
    direct = igcam_fast.integrated_gradcam(net, x, "layer4", 3, baseline="zeros", tol=0.02, max_steps=31,
                                           output_size="layer", return_result=True)
    close(a[:, 0], direct.layer_maps, 1e-6)
    assert torch.equal(result.path_points, direct.path_points)
    assert result.error_estimate.shape == (3, 1)
    assert ((result.error_estimate[:, 0] <= 0.02) | (result.path_points == 31)).all()
    # the trapezoid spelling is not rescaled when tol replaces the rule
    close(lig.attribute(x, baselines=baselines, target=3, tol=0.02, max_steps=31, method="riemann_trapezoid"), a, 1e-6)


def test_tol_ignores_n_steps_and_method(net, x):
    """With tol= the rule and n_steps are not used, so one the fixed rule would refuse is no error."""
    lig = LayerIntegratedGradCam(net, net.layer4, relu_per_step=True)
    a = lig.attribute(x, target=3, tol=0.02, max_steps=15)
    close(lig.attribute(x, target=3, tol=0.02, max_steps=15, method="riemann_trapezoid", n_steps=1), a, 1e-6)
