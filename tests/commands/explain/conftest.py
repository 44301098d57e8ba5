"""Fixtures of the `igcam-fast explain` tests: one data set and one uninterrupted run, shared."""

import pytest

from explain_helpers import N_IMAGES, cmd, write_corrupt, write_images
from igcam_fast.commands.cli import main


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """N_IMAGES small images of varied sizes and formats in three folders, plus three corrupt files."""
    root = tmp_path_factory.mktemp("images")
    write_images(root, N_IMAGES)
    write_corrupt(root)
    return root


@pytest.fixture(scope="session")
def reference(data, tmp_path_factory):
    """One uninterrupted in-process run (DataLoader workers on)."""
    out = tmp_path_factory.mktemp("reference")
    main(cmd(data, out, "--workers", "1", "--steps", "8"))
    return out
