"""igcam_fast.compat.quantus.explain_func run through Quantus metrics."""

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

import igcam_fast  # noqa: E402
from igcam_fast.compat.quantus import explain_func, make_explain_func  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = np.random.RandomState(0).randn(4, 3, 32, 32).astype(np.float32)
    y = net(torch.from_numpy(x)).argmax(1).numpy()
    s = np.zeros((4, 1, 32, 32), np.float32)
    s[:, :, 8:24, 4:20] = 1
    return net, x, y, s


def test_signature_and_output(setup):
    net, x, y, _ = setup
    a = explain_func(model=net, inputs=x, targets=y, layer="4", steps=8)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (4, 1, 32, 32)
    expected = igcam_fast.integrated_gradcam(net, torch.from_numpy(x), "4", torch.from_numpy(y), steps=8)
    np.testing.assert_allclose(a[:, 0], expected.numpy(), rtol=1e-6, atol=1e-9)
    g = explain_func(model=net, inputs=x, targets=y, layer=net[4], method="gradcam", normalize=True, device="cpu")
    assert g.shape == (4, 1, 32, 32) and 0 <= g.min() and g.max() <= 1
    with pytest.raises(ValueError, match="layer"):
        explain_func(model=net, inputs=x, targets=y)


def test_relevance_mass_accuracy(setup):
    net, x, y, s = setup
    metric = quantus.RelevanceMassAccuracy(disable_warnings=True, display_progressbar=False)
    scores = metric(model=net, x_batch=x, y_batch=y, s_batch=s, explain_func=explain_func,
                    explain_func_kwargs={"layer": "4", "steps": 8}, device="cpu")
    a = explain_func(model=net, inputs=x, targets=y, layer="4", steps=8)[:, 0]
    expected = (a * s[:, 0]).sum(axis=(1, 2)) / a.sum(axis=(1, 2))  # mass inside the mask (scale-free)
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float64), expected, rtol=1e-4)
    whole = metric(model=net, x_batch=x, y_batch=y, s_batch=np.ones_like(s), explain_func=explain_func,
                   explain_func_kwargs={"layer": "4", "steps": 8}, device="cpu")
    np.testing.assert_allclose(np.asarray(whole, dtype=np.float64), 1.0, rtol=1e-5)


def test_faithfulness_metrics(setup):
    net, x, y, _ = setup
    bound = make_explain_func("4", steps=8)
    flipping = quantus.PixelFlipping(features_in_step=64, perturb_baseline="black", disable_warnings=True,
                                     display_progressbar=False)
    curves = np.asarray(flipping(model=net, x_batch=x, y_batch=y, explain_func=bound, device="cpu"))
    assert curves.shape[0] == 4 and np.isfinite(curves).all()
    correlation = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=32, perturb_baseline="black",
                                                  disable_warnings=True, display_progressbar=False)
    scores = correlation(model=net, x_batch=x, y_batch=y, explain_func=bound, device="cpu")
    assert np.isfinite(np.asarray(scores, dtype=np.float64)).all()


def test_tol_reaches_the_engine(setup):
    net, x, y, _ = setup
    a = explain_func(model=net, inputs=x, targets=y, layer="4", tol=0.01)
    expected = igcam_fast.integrated_gradcam(net, torch.from_numpy(x), "4", torch.from_numpy(y), tol=0.01)
    np.testing.assert_allclose(a[:, 0], expected.numpy(), rtol=1e-5, atol=1e-7)
