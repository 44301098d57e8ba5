"""The README's Python blocks run as written.

Every ```python block of README.md is executed, in order, in a fresh namespace and an empty working
folder, except blocks right after an HTML comment ``<!-- not run: reason -->`` (they need a GPU, a
weights file or the user's own data). The Quick start's result is then checked: the input it built
is the model's own normalisation of the photo, and the overlay was written.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")


def python_blocks(text: str) -> list[dict]:
    """Each ```python block: its code, first line number and, when marked, why it is not run."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marked = NOT_RUN.search(before)
            blocks.append(dict(code="\n".join(lines[start:end]), line=start + 1,
                               not_run=marked.group(1) if marked else None))
            i = end
        i += 1
    return blocks


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run every block not marked; returns [(block, namespace)] of those that ran."""
    blocks = python_blocks(README.read_text())
    folder = tmp_path_factory.mktemp("readme")
    ran = []
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for block in blocks:
            if block["not_run"]:
                continue
            namespace = {"__name__": "__readme__"}
            exec(compile(block["code"], f"README.md:{block['line']}", "exec"), namespace)
            ran.append((block, namespace))
    finally:
        os.chdir(cwd)
    return dict(blocks=blocks, ran=ran, folder=folder)


def test_every_block_runs_or_says_why_not(executed):
    blocks, ran = executed["blocks"], executed["ran"]
    skipped = [b for b in blocks if b["not_run"]]
    assert len(ran) >= 1 and len(ran) + len(skipped) == len(blocks)
    print(f"README.md: ran {len(ran)} of {len(blocks)} python blocks; not run: "
          + "; ".join(f"line {b['line']} ({b['not_run']})" for b in skipped))


def test_quick_start_input_is_the_models_own_normalisation(executed):
    block, ns = executed["ran"][0]
    assert "load_model" in block["code"] and "model_input" in block["code"]
    image, x = ns["image"], ns["x"]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), dtype=np.float64)
    expected = torch.from_numpy((resized - 127) / 128).permute(2, 0, 1)[None]  # EfficientNet-Lite0's
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=0)
    assert ns["maps"].shape == (1, 224, 224) and torch.isfinite(ns["maps"]).all()
    written = executed["folder"] / "chelsea_igcam.png"
    with Image.open(written) as im:
        assert im.size[0] == image.shape[1] and im.size[1] > image.shape[0]  # photo size, plus the caption


def test_quick_start_map_uses_the_models_normalisation(executed):
    """The README passes no mean/std: its map must equal the one with the model's own given by hand."""
    import igcam_fast
    from igcam_fast.core.preprocessing import preprocessing_of

    _, ns = executed["ran"][0]
    model, x, layer = ns["model"], ns["x"], ns["spec"].layer
    pre = preprocessing_of(model)
    by_hand = igcam_fast.integrated_gradcam(model, x, layer, mean=pre.mean, std=pre.std)
    torch.testing.assert_close(ns["maps"], by_hand, rtol=1e-4, atol=1e-6)
