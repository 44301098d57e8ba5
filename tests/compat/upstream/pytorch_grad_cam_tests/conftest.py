"""Runs pytorch-grad-cam 1.5.7's own tests (vendored unchanged beside this file) with the adapters:

    peer_impl=fast         GradCAM, GradCAMPlusPlus -> igcam_fast.compat.pytorch_grad_cam's
    peer_impl=integrated   GradCAM, GradCAMPlusPlus -> igcam_fast.compat.pytorch_grad_cam.IntegratedGradCAM
    peer_impl=upstream     the installed pytorch_grad_cam classes: the baseline, run only with
                           IGCAM_FAST_PEER_BASELINE=1 in the environment (it tests upstream, not
                           this project, and costs as much as the two runs above)

The swap happens per test, in the test's own arguments (``cam_method``, ``base_method``,
``cam_cls``): the test body is upstream's, so a regression shows as upstream's test failing.
Only cases of the classes the adapters replace are collected; the other CAM methods of upstream's
parametrisations (ScoreCAM, EigenCAM, ...) are deselected.

Offline: upstream's tests read ``examples/both.png`` and download ImageNet weights. Here the image
is a bundled photo (a 224×224 BGR uint8 array, as cv2.imread gives for theirs) and the torchvision builders
return random weights (seed 0) whatever ``weights=``/``pretrained=`` they are given. The models
of the parametrised ``cnn_model`` are built once per session (VGG-11 takes seconds to build) and
checked, after every test, to carry no hook left behind.
"""

import gc
import os

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

from igcam_fast.compat import pytorch_grad_cam as fast

IMPLEMENTATIONS = {
    "upstream": {GradCAM: GradCAM, GradCAMPlusPlus: GradCAMPlusPlus},
    "fast": {GradCAM: fast.GradCAM, GradCAMPlusPlus: fast.GradCAMPlusPlus},
    "integrated": {GradCAM: fast.IntegratedGradCAM, GradCAMPlusPlus: fast.IntegratedGradCAM},
}
CLASS_ARGUMENTS = ("cam_method", "base_method", "cam_cls")
BUILDERS = ("resnet18", "vgg11")

#: Cases an adapter refuses on purpose, with the reason (expected to fail, strictly).
UNSUPPORTED = {
    ("integrated", "test_gradient_cam_methods_support_3d_conv_layers"):
        "IntegratedGradCAM explains (B, C, H, W) images only; 3-D inputs raise ValueError",
}

_ORIGINAL_BUILDERS = {name: getattr(torchvision.models, name) for name in BUILDERS}
_SHARED_MODELS = {}


def _offline(name, shared):
    def build(*args, weights=None, pretrained=None, **kwargs):
        if shared and not args and not kwargs:
            if name not in _SHARED_MODELS:
                torch.manual_seed(0)
                _SHARED_MODELS[name] = _ORIGINAL_BUILDERS[name](weights=None)
            return _SHARED_MODELS[name]
        torch.manual_seed(0)
        return _ORIGINAL_BUILDERS[name](*args, weights=None, **kwargs)

    return build


def _photo_bgr():
    """A bundled photo as cv2.imread gives examples/both.png: BGR uint8, 224×224 as that image."""
    import cv2

    from igcam_fast.images.photos import bundled_photos

    rgb = bundled_photos(["chelsea"])[0].image
    return np.ascontiguousarray(cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)[..., ::-1])


def pytest_generate_tests(metafunc):
    if any(name in metafunc.fixturenames for name in CLASS_ARGUMENTS):
        metafunc.fixturenames.append("peer_impl")
        chosen = [i for i in IMPLEMENTATIONS if i != "upstream" or os.environ.get("IGCAM_FAST_PEER_BASELINE") == "1"]
        metafunc.parametrize("peer_impl", chosen)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        if params and "peer_impl" in params:
            classes = [params[n] for n in CLASS_ARGUMENTS if n in params]
            if not all(c in IMPLEMENTATIONS["upstream"] for c in classes):
                drop.append(item)
                continue
            reason = UNSUPPORTED.get((params["peer_impl"], item.originalname))
            if reason:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    args = pyfuncitem.funcargs
    callspec = getattr(pyfuncitem, "callspec", None)
    impl = callspec.params.get("peer_impl") if callspec is not None else None
    if impl is not None:
        for name in CLASS_ARGUMENTS:
            if name in args:
                args[name] = IMPLEMENTATIONS[impl][args[name]]
    if "numpy_image" in args:
        args["numpy_image"] = _photo_bgr()
    if "cnn_model" in args:
        args["cnn_model"] = _offline(args["cnn_model"].__name__, shared=True)
    with pytest.MonkeyPatch.context() as patch:
        for name in BUILDERS:  # direct calls in the test bodies build fresh models
            patch.setattr(torchvision.models, name, _offline(name, shared=False))
        outcome = yield
    gc.collect()
    for name, model in _SHARED_MODELS.items():
        left = [n for n, m in model.named_modules() if m._forward_hooks or m._backward_hooks]
        for module in model.modules():  # the next test starts clean either way
            module._forward_hooks.clear()
            module._backward_hooks.clear()
        if left and outcome.excinfo is None:
            pytest.fail(f"hooks left on the shared {name} after the test: {left}")
