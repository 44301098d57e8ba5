"""What the adapters need from the engine's memory-format and training-mode decisions.

Models that call ``.view()`` on conv features (PyTorch's CIFAR tutorial net) must run through
every adapter entry with maps identical to a contiguous run; models in training mode without
modules whose forward depends on it must run as captum runs them, and one with such a module
must be refused with the module named.
"""

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")
pytest.importorskip("quantus")

from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from igcam_fast.compat import pytorch_grad_cam as fast  # noqa: E402
from igcam_fast.compat.captum import LayerIntegratedGradCam  # noqa: E402
from igcam_fast.compat.quantus import explain_func  # noqa: E402



class TutorialNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial network: ``.view()`` on the conv features."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2 = nn.Linear(16 * 5 * 5, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def tutorial():
    torch.manual_seed(0)
    return TutorialNet().eval(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


ENTRIES = {
    "GradCAM": lambda net, x, **o: fast.GradCAM(net, [net.conv2], **o)(x, [ClassifierOutputTarget(1)] * 2),
    "IntegratedGradCAM": lambda net, x, **o: fast.IntegratedGradCAM(net, [net.conv2], steps=3, **o)(x, [1, 2]),
    "LayerIntegratedGradCam": lambda net, x, **o: LayerIntegratedGradCam(net, net.conv2, **o).attribute(
        x, target=[1, 2], n_steps=3).numpy(),
    "explain_func": lambda net, x, **o: explain_func(model=net, inputs=x.numpy(), targets=np.array([1, 2]),
                                                     layer="conv2", steps=3, **o),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_view_model_through_every_entry(tutorial, entry):
    net, x = tutorial
    got = ENTRIES[entry](net, x)
    np.testing.assert_array_equal(got, ENTRIES[entry](net, x, channels_last=False))


def test_training_mode_with_batchnorm_is_refused_by_name():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).train()
    with pytest.raises(RuntimeError, match="BatchNorm2d") as info:
        LayerIntegratedGradCam(net, net[0]).attribute(torch.randn(2, 3, 8, 8), target=1, n_steps=2)
    assert "'1'" in str(info.value) or "1" in str(info.value)


def test_training_mode_without_such_modules_runs_as_captum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(2, 3, 8, 8)
    got = LayerIntegratedGradCam(net.train(), net[0]).attribute(x, target=1, n_steps=2)
    expected = LayerIntegratedGradCam(net.eval(), net[0]).attribute(x, target=1, n_steps=2)
    torch.testing.assert_close(got, expected)
