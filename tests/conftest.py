"""Test configuration: `needs_cuda` tests skip where no NVIDIA GPU is visible."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none is visible on this machine")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)
