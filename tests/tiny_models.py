"""Tiny models for the data-set command's tests, importable by subprocesses as ``tiny_models:tiny_cnn``."""

import torch
from torch import nn

from igcam_fast.models import ModelSpec

MEAN = (0.5, 0.45, 0.4)
STD = (0.25, 0.25, 0.25)


def tiny_cnn() -> ModelSpec:
    """A fixed-seed random CNN for 32×32 inputs: target layer ``body.3`` (8×8), GAP + linear head, 6 classes."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential()
    net.add_module("body", nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                         nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(12, 6))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return ModelSpec(net.eval(), "body.3", MEAN, STD, 32, [f"class{k}" for k in range(6)])
