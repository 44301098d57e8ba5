"""pytorch-grad-cam's extension points, activations_and_grads, channel counts and eigen_smooth
through igcam_fast.compat.pytorch_grad_cam (small models, small inputs)."""

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")

import pytorch_grad_cam as upstream  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import igcam_fast  # noqa: E402
from igcam_fast.compat import pytorch_grad_cam as fast  # noqa: E402


def net(channels=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def images(batch=2, channels=3, size=(12, 16), seed=0):
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


TARGETS = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]


def upstream_cam_image(self, *args):
    """An override that computes what BaseCAM's does (a different function object: detected)."""
    self.image_calls = getattr(self, "image_calls", 0) + 1
    return upstream.base_cam.BaseCAM.get_cam_image(self, *args)


def max_weights(self, input_tensor, target_layer, targets, activations, grads):
    """A new CAM, written as pytorch-grad-cam documents: the largest gradient of each channel."""
    self.calls = getattr(self, "calls", 0) + 1
    return np.max(grads, axis=(2, 3))


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_overridden_get_cam_weights_is_honoured(method):
    model = net()
    upstream_cls = type("Up", (getattr(upstream, method),), {"get_cam_weights": max_weights})
    fast_cls = type("Fast", (getattr(fast, method),), {"get_cam_weights": max_weights})
    x = images()
    with upstream_cls(model, [model[4]]) as cam:
        expected = cam(x, TARGETS)
    with fast_cls(model, [model[4]]) as cam:
        got = cam(x, TARGETS)
        assert cam.calls == 1
    with getattr(fast, method)(model, [model[4]]) as cam:
        plain = cam(x, TARGETS)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-2  # the override changed the map


def test_overridden_aggregate_multi_layers_is_honoured():
    def aggregate_max(self, cam_per_target_layer):
        return np.max(np.concatenate(cam_per_target_layer, axis=1), axis=1)

    model = net()
    layers = [model[1], model[4]]
    x = images()
    with type("Up", (upstream.GradCAM,), {"aggregate_multi_layers": aggregate_max})(model, layers) as cam:
        expected = cam(x, TARGETS)
    with type("Fast", (fast.GradCAM,), {"aggregate_multi_layers": aggregate_max})(model, layers) as cam:
        np.testing.assert_allclose(cam(x, TARGETS), expected, atol=1e-5)


def test_integrated_gradcam_extension_points_run_at_every_path_point():
    model = net()
    x = images()
    options = dict(steps=4, rule="gausslegendre", baseline="zeros")
    with fast.IntegratedGradCAM(model, [model[4]], **options) as cam:
        native = cam(x, TARGETS)

    def gradcam_weights(self, input_tensor, target_layer, targets, activations, grads):  # the same weights
        self.calls = getattr(self, "calls", 0) + 1
        return grads.mean(axis=(2, 3))

    with type("Same", (fast.IntegratedGradCAM,), {"get_cam_weights": gradcam_weights})(model, [model[4]],
                                                                                     **options) as cam:
        np.testing.assert_allclose(cam(x, TARGETS), native, atol=1e-4)  # upstream's path, the same integral
        assert cam.calls == 4
    with type("Max", (fast.IntegratedGradCAM,), {"get_cam_weights": max_weights})(model, [model[4]], **options) as cam:
        assert np.abs(cam(x, TARGETS) - native).max() > 1e-2

    def per_layer(self, input_tensor, targets, eigen_smooth):
        raise AssertionError("not reached")

    with type("PerLayer", (fast.IntegratedGradCAM,), {"compute_cam_per_layer": per_layer})(model, [model[4]]) as cam:
        with pytest.raises(NotImplementedError, match="get_cam_weights or get_cam_image"):
            cam(x, TARGETS)


def test_activations_and_grads_hold_what_upstream_holds():
    model = net()
    layers = [model[1], model[4]]
    x = images()
    with upstream.GradCAM(model, layers) as cam:
        cam(x, TARGETS)
        # copies: upstream's __exit__ empties its lists in place
        expected = (list(cam.activations_and_grads.activations), list(cam.activations_and_grads.gradients))
    with fast.GradCAM(model, layers) as cam:
        cam(x, TARGETS)
        got = (cam.activations_and_grads.activations, cam.activations_and_grads.gradients)
    for got_list, expected_list in zip(got, expected):
        assert len(got_list) == len(expected_list) == 2
        for g, e in zip(got_list, expected_list):
            assert g.shape == e.shape and not g.requires_grad
            torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    # Integrated: the B·m path images, image-major; the same on the fused and on upstream's path
    options = dict(steps=3, rule="right", baseline="zeros")
    with fast.IntegratedGradCAM(model, [model[4]], **options) as cam:
        cam(x, TARGETS)
        fused = (cam.activations_and_grads.activations[0], cam.activations_and_grads.gradients[0])
    same = type("Same", (fast.IntegratedGradCAM,), {"get_cam_image": upstream_cam_image})
    with same(model, [model[4]], **options) as cam:
        cam(x, TARGETS)
        assert cam.image_calls == 3  # upstream's path: once per path point
        slow = (cam.activations_and_grads.activations[0], cam.activations_and_grads.gradients[0])
    assert fused[0].shape == (2 * 3, 8, 6, 8)
    for f, s in zip(fused, slow):
        torch.testing.assert_close(f, s, atol=1e-6, rtol=1e-5)
    # row b·m + t is image b at α_t = (t + 1) / 3: the last row of each image is the image itself
    with upstream.GradCAM(model, [model[4]]) as cam:
        cam(x, TARGETS)
        torch.testing.assert_close(fused[0][2::3], cam.activations_and_grads.activations[0], atol=1e-6, rtol=1e-5)


def test_integrated_gradcam_any_channel_count():
    for channels in (1, 4):
        model = net(channels)
        x = images(channels=channels)
        with fast.IntegratedGradCAM(model, [model[4]], steps=3) as cam:
            got = cam(x, TARGETS)
        # no per-channel mean/std known for this channel count: the zeros baseline
        expected = igcam_fast.integrated_gradcam(model, x, "4", [1, 3], steps=3, baseline="zeros",
                                                 output_size="layer")
        with fast.IntegratedGradCAM(model, [model[4]], steps=3, baseline="zeros") as cam:
            np.testing.assert_array_equal(cam(x, TARGETS), got)
        assert got.shape == (2, 12, 16) and expected.shape == (2, 6, 8)
        with fast.IntegratedGradCAM(model, [model[4]], steps=3, mean=(0.5,) * channels, std=(0.25,) * channels) as cam:
            black = cam(x, TARGETS)  # the given mean/std: black pixels, not zeros
        assert np.abs(black - got).max() > 1e-3


def test_integrated_eigen_smooth_definition():
    model = net()
    x = images()
    # one node at the input, no baseline subtraction: the integrated weighted activations are
    # Grad-CAM's, so the projection is upstream's EigenSmooth Grad-CAM
    with upstream.GradCAM(model, [model[4]]) as cam:
        expected = cam(x, TARGETS, eigen_smooth=True)
    with fast.IntegratedGradCAM(model, [model[4]], steps=1, rule="right", subtract_baseline=False) as cam:
        np.testing.assert_allclose(cam(x, TARGETS, eigen_smooth=True), expected, atol=1e-5)
    with fast.IntegratedGradCAM(model, [model[4]], steps=4) as cam:
        smooth = cam(x, TARGETS, eigen_smooth=True)
        assert smooth.shape == (2, 12, 16) and 0 <= smooth.min() and smooth.max() <= 1
    image_cls = type("Image", (fast.IntegratedGradCAM,), {"get_cam_image": upstream_cam_image})
    with image_cls(model, [model[4]], steps=2) as cam:
        with pytest.raises(NotImplementedError, match="get_cam_image"):
            cam(x, TARGETS, eigen_smooth=True)


def test_hooks_are_removed_on_every_path():
    model = net()
    x = images()
    cls = type("Fast", (fast.GradCAM,), {"get_cam_weights": max_weights})
    for cam_cls, kwargs in ((fast.GradCAM, {}), (cls, {}), (fast.IntegratedGradCAM, dict(steps=2))):
        with cam_cls(model, [model[4]], **kwargs) as cam:
            cam(x, TARGETS)
            cam(x, TARGETS, eigen_smooth=True)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
