"""igcam_fast.compat.pytorch_grad_cam against the installed pytorch-grad-cam (PyPI grad-cam)."""

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")
torchvision = pytest.importorskip("torchvision")

import pytorch_grad_cam as upstream  # noqa: E402
from pytorch_grad_cam.base_cam import BaseCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, ClassifierOutputSoftmaxTarget  # noqa: E402

import igcam_fast  # noqa: E402
from igcam_fast.compat import pytorch_grad_cam as fast  # noqa: E402

ARCHS = {
    "resnet18": (torchvision.models.resnet18, lambda m: [m.layer4[-1]]),
    "resnet50": (torchvision.models.resnet50, lambda m: [m.layer4[-1]]),
    "vgg11": (torchvision.models.vgg11, lambda m: [m.features[-1]]),
}
_MODELS = {}


def model(name):
    """Random-weight torchvision model in eval mode, built once per session."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = ARCHS[name][0](weights=None).eval()
    return _MODELS[name]


def small():
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def images(batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g)


# Each method on every architecture and both sizes, without the full product (the time budget).
EQUALITY_CASES = [
    ("GradCAM", "resnet18", (224, 224)), ("GradCAMPlusPlus", "resnet18", (128, 176)),
    ("GradCAMPlusPlus", "resnet50", (224, 224)), ("GradCAM", "resnet50", (128, 176)),
    ("GradCAM", "vgg11", (224, 224)), ("GradCAMPlusPlus", "vgg11", (128, 176)),
]


@pytest.mark.parametrize("method,arch,size", EQUALITY_CASES, ids=["-".join(map(str, c[:2])) + f"-{c[2][0]}x{c[2][1]}"
                                                                 for c in EQUALITY_CASES])
def test_equals_upstream(method, arch, size):
    # Upstream once on 4 images (its maps are per image in eval mode); ours on 1, 2 and 4 of them,
    # with the argmax (targets=None) and with ClassifierOutputTarget lists.
    net = model(arch)
    x = images(4, size)
    with getattr(upstream, method)(net, ARCHS[arch][1](net)) as cam:
        expected = cam(x, None)
        classes = cam.outputs.argmax(dim=1).tolist()
    with getattr(fast, method)(net, ARCHS[arch][1](net)) as cam:
        for batch, targets in [(1, None), (2, [ClassifierOutputTarget(c) for c in classes[:2]]),
                               (4, [ClassifierOutputTarget(c) for c in classes])]:
            got = cam(x[:batch], targets)
            assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (batch, *size)
            assert 0.0 <= got.min() and got.max() <= 1.0
            np.testing.assert_allclose(got, expected[:batch], atol=1e-4, rtol=0)


def test_interface_and_subclassing():
    net = small()
    layer = net.layer4[-1]
    cam = fast.GradCAM(net, [layer], None)  # the first three positional, as RefineCAM builds them
    assert isinstance(cam, BaseCAM) and isinstance(cam, upstream.GradCAM)
    assert isinstance(fast.GradCAMPlusPlus(net, [layer]), upstream.GradCAMPlusPlus)
    assert isinstance(fast.IntegratedGradCAM(net, [layer]), BaseCAM)
    x = images(3, (64, 64))
    with cam:
        out = cam(x, targets=None)
        assert torch.equal(cam.outputs, net(x).detach())  # argmax targets: the logits of the input
        out2 = cam(input_tensor=x, targets=[ClassifierOutputSoftmaxTarget(c) for c in (0, 1, 2)],
                   aug_smooth=False, eigen_smooth=False)
        assert torch.allclose(cam.outputs, net(x), atol=1e-6)  # computed on read
    assert out.shape == out2.shape == (3, 64, 64)
    assert not layer._forward_hooks  # the with block removed every hook
    with pytest.raises(RuntimeError, match="closed"):
        cam(x)


def test_one_target_for_a_batch_raises():
    net = small()
    x = images(3, (64, 64))
    with fast.GradCAM(net, [net.layer4[-1]]) as cam:
        with pytest.raises(ValueError, match="silently explain only the first 1"):
            cam(x, [ClassifierOutputTarget(3)])
        with pytest.raises(TypeError, match="one target per image"):
            cam(x, ClassifierOutputTarget(3))


def test_return_tensor_and_class_indices():
    net = small()
    x = images(2, (64, 64))
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], return_tensor=True, steps=4) as cam:
        t = cam(x, [ClassifierOutputTarget(3), ClassifierOutputTarget(5)])
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.device == x.device
        assert torch.equal(t, cam(x, [3, 5]))
        cam.return_tensor = False
        np.testing.assert_array_equal(cam(x, torch.tensor([3, 5])), t.numpy())


def test_frozen_model_and_no_parameter_gradients():
    net = small()
    x = images(2, (64, 64))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    with upstream.GradCAM(net, [net.layer4[-1]]) as cam:
        expected = cam(x, targets)
    net.zero_grad(set_to_none=True)
    with fast.GradCAM(net, [net.layer4[-1]]) as cam:
        np.testing.assert_allclose(cam(x, targets), expected, atol=1e-4)
    assert all(p.grad is None for p in net.parameters())  # no whole-model backward
    for p in net.parameters():
        p.requires_grad_(False)
    with fast.GradCAM(net, [net.layer4[-1]]) as cam:
        np.testing.assert_allclose(cam(x, targets), expected, atol=1e-4)


def test_batch_size_is_rows_per_forward():
    net = small()
    rows = []
    handle = net.conv1.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    try:
        with fast.IntegratedGradCAM(net, [net.layer4[-1]], steps=6) as cam:
            cam.batch_size = 4
            a = cam(images(2, (64, 64)), [1, 2])
            assert rows and max(rows) <= 4 and sum(r for r in rows if r > 1) >= 12  # 2 images x 6 points
            cam.batch_size = None
            np.testing.assert_allclose(cam(images(2, (64, 64)), [1, 2]), a, atol=1e-5)
    finally:
        handle.remove()
    with pytest.raises(ValueError):
        fast.GradCAM(net, [net.layer4[-1]]).batch_size = 0


def test_several_target_layers_averaged_as_upstream():
    net = model("resnet18")
    layers = [net.layer3[-1], net.layer4[-1]]
    x = images(2, (96, 128))
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(9)]
    with upstream.GradCAMPlusPlus(net, layers) as cam:
        expected = cam(x, targets)
    with fast.GradCAMPlusPlus(net, layers) as cam:
        np.testing.assert_allclose(cam(x, targets), expected, atol=1e-4)


def test_reshape_transform_vit():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                               mlp_dim=32, num_classes=10).eval()

    def reshape_transform(t, h=4, w=4):  # drop the class token, tokens -> (N, K, h, w)
        return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)

    layers = [vit.encoder.layers[-1].ln_1]
    x = images(2, (32, 32))
    for method in ("GradCAM", "GradCAMPlusPlus"):
        with getattr(upstream, method)(vit, layers, reshape_transform=reshape_transform) as cam:
            expected = cam(x, None)
        with getattr(fast, method)(vit, layers, reshape_transform=reshape_transform) as cam:
            np.testing.assert_allclose(cam(x, None), expected, atol=1e-4)


def test_aug_smooth_and_eigen_smooth():
    import ttach as tta

    net = small()
    x = images(2, (64, 64))
    targets = [ClassifierOutputTarget(4), ClassifierOutputTarget(6)]
    transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1.1])])  # fewer than the default 6
    for smooth, batch in ((dict(aug_smooth=True), 1), (dict(eigen_smooth=True), 2)):
        with upstream.GradCAM(net, [net.layer4[-1]]) as cam:
            cam.tta_transforms = transforms
            expected = cam(x[:batch], targets[:batch], **smooth)
        with fast.GradCAM(net, [net.layer4[-1]], tta_transforms=transforms) as cam:
            np.testing.assert_allclose(cam(x[:batch], targets[:batch], **smooth), expected, atol=1e-4)
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], steps=2, tta_transforms=transforms) as cam:
        assert cam(x, targets, aug_smooth=True).shape == (2, 64, 64)
        eigen = cam(x, targets, eigen_smooth=True)  # the integrated weighted activations' first component
        assert eigen.shape == (2, 64, 64) and eigen.dtype == np.float32 and 0 <= eigen.min() and eigen.max() <= 1


def test_integrated_gradcam_is_the_engine_with_upstream_post_processing():
    from pytorch_grad_cam.utils.image import scale_cam_image

    net = small()
    x = images(2, (64, 80))
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], steps=8, rule="right") as cam:
        got = cam(x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    layer_maps = igcam_fast.integrated_gradcam(net, x, "layer4.1", [1, 2], steps=8, rule="right", output_size="layer")
    # upstream's BaseCAM: ReLU (already per path point), scale + resize per layer, mean, scale
    expected = scale_cam_image(scale_cam_image(layer_maps.numpy(), (80, 64)))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_integrated_gradcam_in_upstream_tools():
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
    from pytorch_grad_cam.utils.image import show_cam_on_image

    net = small()
    x = images(2, (64, 64))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], steps=4) as cam:
        grayscale = cam(x, targets)
    rgb = np.float32(np.random.RandomState(0).rand(64, 64, 3))
    overlay = show_cam_on_image(rgb, grayscale[0], use_rgb=True)
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8
    change = CamMultImageConfidenceChange()(x, grayscale, targets, net)
    road = ROADMostRelevantFirst(percentile=75)(x, grayscale, targets, net)
    assert change.shape == road.shape == (2,) and np.isfinite(change).all() and np.isfinite(road).all()

    refine = getattr(upstream, "RefineCAM", None)
    if refine is None:
        pytest.skip("this pytorch-grad-cam has no RefineCAM")
    layers = [net.layer3[-1], net.layer4[-1]]
    refined = refine(net, layers, base_method=fast.IntegratedGradCAM, steps=4)(x, targets)
    assert refined.shape == (2, 64, 64) and refined.dtype == np.float32
    with fast.IntegratedGradCAM(net, [layers[0]], steps=4) as a, fast.IntegratedGradCAM(net, [layers[1]], steps=4) as b:
        product = a(x, targets) * b(x, targets)
    lo = product.min(axis=(1, 2), keepdims=True)
    expected = (product - lo) / (1e-7 + (product - lo).max(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(refined, expected, atol=1e-5)


def _rows_through(net):
    """A counter of the rows (images) that enter the model's first convolution."""
    seen = {"rows": 0}
    handle = net.conv1.register_forward_pre_hook(lambda m, args: seen.__setitem__("rows", seen["rows"] + args[0].shape[0]))
    return seen, handle


@pytest.mark.parametrize("cls", ["GradCAM", "IntegratedGradCAM"])
def test_several_target_layers_share_every_forward(cls):
    """Two target layers: the maps of two one-layer CAMs averaged as upstream, from one set of forwards."""
    net = small()
    x = images(2, (64, 64))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    layers = [net.layer3[-1], net.layer4[-1]]
    options = dict(steps=5) if cls == "IntegratedGradCAM" else {}
    seen, handle = _rows_through(net)
    try:
        with getattr(fast, cls)(net, layers, **options) as cam:
            together = cam(x, targets)
            grads = [g.shape for g in cam.activations_and_grads.gradients]
        shared_rows = seen["rows"]
        seen["rows"] = 0
        for layer in layers:
            with getattr(fast, cls)(net, [layer], **options) as cam:
                cam(x, targets)
        separate_rows = seen["rows"]
    finally:
        handle.remove()
    path_rows = 2 * 5 + 1 if cls == "IntegratedGradCAM" else 2  # path images (+ the baseline's one row)
    assert shared_rows == path_rows
    assert separate_rows == 2 * path_rows
    rows = 2 * 5 if cls == "IntegratedGradCAM" else 2
    assert grads == [(rows, 256, 4, 4), (rows, 512, 2, 2)]
    # upstream's aggregation (per-layer min-max at layer resolution, resize, mean, min-max) of the
    # maps of one-layer engines
    function = igcam_fast.integrated_gradcam if cls == "IntegratedGradCAM" else igcam_fast.gradcam
    per_layer = [function(net, x, name, [1, 4], output_size="layer", closed_form_head=False, **options)
                 for name in ("layer3.1", "layer4.1")]
    scaled = torch.stack([igcam_fast.ops.upsample(igcam_fast.ops.minmax_scale(m), (64, 64)) for m in per_layer], 1)
    expected = igcam_fast.ops.minmax_scale(scaled.clamp(min=0).mean(dim=1))
    np.testing.assert_allclose(together, expected.numpy(), atol=1e-5)


def test_integrated_gradcam_with_tol_reports_each_images_error():
    net = small()
    x = images(3, (64, 64))
    targets = [ClassifierOutputTarget(c) for c in (1, 2, 3)]
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], tol=0.02, return_tensor=True) as cam:
        got = cam(x, targets)
        result = cam.last_result
        activations = cam.activations_and_grads.activations[0]
    direct = igcam_fast.integrated_gradcam(net, x, "layer4.1", [1, 2, 3], tol=0.02, output_size="layer",
                                           return_result=True)
    assert torch.equal(result.path_points, direct.path_points)
    torch.testing.assert_close(result.error_estimate, direct.error_estimate)
    assert activations.shape[0] == int(result.path_points.sum())
    from pytorch_grad_cam.utils.image import scale_cam_image
    expected = scale_cam_image(scale_cam_image(direct.layer_maps.numpy(), (64, 64)))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="one layer per engine"):
        fast.IntegratedGradCAM(net, [net.layer3[-1], net.layer4[-1]], tol=0.02)


def test_integrated_gradcam_with_tol_refuses_upstreams_path():
    """eigen_smooth and overridden extension points run upstream's per-point path, which has no tol."""
    net = small()
    x = images(1, (64, 64))
    with fast.IntegratedGradCAM(net, [net.layer4[-1]], tol=0.02) as cam:
        with pytest.raises(NotImplementedError, match="fixed rule"):
            cam(x, [ClassifierOutputTarget(1)], eigen_smooth=True)
