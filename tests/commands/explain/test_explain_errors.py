"""Ordinary mistakes give one line `igcam-fast explain: error: ...` and exit status 2, never a
traceback; oversized and 16-bit images are handled by the decoding rules."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_models
from explain_helpers import MODEL, fails_with_one_line, small_list
from igcam_fast.commands.cli import main
from igcam_fast.commands.explain import load_image_uint8
from igcam_fast.results import open_results


def _base(data, out, *extra):
    return ["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--workers", "0",
            "--steps", "2", *extra]


@pytest.fixture
def listing(data, tmp_path):
    return small_list(tmp_path, data, 4)


def test_weights_of_the_wrong_shape(listing, tmp_path, capsys):
    state = tiny_models.tiny_cnn().model.state_dict()
    state["fc.weight"] = torch.zeros(7, 12)
    torch.save(state, tmp_path / "w.pt")
    line = fails_with_one_line(_base(listing, tmp_path / "o", "--weights", str(tmp_path / "w.pt")), capsys)
    assert "w.pt does not match the model" in line and "fc.weight" in line


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_and_non_state_dict_weights(listing, tmp_path, capsys):
    evil = _Evil()
    evil.target = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc.weight": evil}, f, protocol=2)
    line = fails_with_one_line(_base(listing, tmp_path / "o", "--weights", str(tmp_path / "evil.pt")), capsys)
    assert "evil.pt cannot be read as a state dict" in line and "weights_only=True" in line
    assert not (tmp_path / "pwned").exists()
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    line = fails_with_one_line(_base(listing, tmp_path / "o", "--weights", str(tmp_path / "tensor.pt")), capsys)
    assert "does not hold a state dict" in line
    (tmp_path / "text.pt").write_text("not a weights file")
    line = fails_with_one_line(_base(listing, tmp_path / "o", "--weights", str(tmp_path / "text.pt")), capsys)
    assert "text.pt cannot be read" in line


@pytest.mark.parametrize("extra, words", [
    (("--workers", "-1"), "--workers must be 0"),
    (("--classes", "no/such/classes.txt"), "--classes no/such/classes.txt: no such file"),
    (("--layer", "fc"), "--layer fc outputs (1, 6), not (N, K, h, w) feature maps; layers with 4-D outputs: "
                        "body.0, body.1, body.2, body.3, body, pool"),
    (("--layer", "nope"), "--layer nope: the model has no such module"),
    (("--device", "tpu"), "--device tpu"),
    (("--batch-size", "0"), "--batch-size must be a positive integer"),
    (("--max-pixels", "0"), "--max-pixels must be a positive integer"),
    (("--targets", "topk:x"), "topk:K needs a positive integer"),
])
def test_ordinary_mistakes_are_one_line(listing, tmp_path, capsys, extra, words):
    line = fails_with_one_line(_base(listing, tmp_path / "o", *extra), capsys)
    assert words in line
    assert not (tmp_path / "o").exists()  # refused before the output folder was touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu(listing, tmp_path, capsys):
    line = fails_with_one_line(_base(listing, tmp_path / "o", "--device", "cuda"), capsys)
    assert "no CUDA GPU is visible" in line


def test_images_over_the_pixel_cap_are_refused_as_unreadable(listing, tmp_path, capsys):
    out = tmp_path / "o"
    main(_base(listing, out, "--max-pixels", "700"))  # the images have 24x32 = 768 pixels or more
    results = open_results(out)
    assert len(results) == 0 and len(results.failed) == 4
    assert all("more than the cap of 700" in f["error"] and "--max-pixels" in f["error"] for f in results.failed)
    line = fails_with_one_line(_base(listing, tmp_path / "p", "--max-pixels", "700", "--strict"), capsys)
    assert "more than the cap of 700" in line


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG gives the map of its 8-bit scaled version (before: 89 % of pixels became 255)."""
    rng = np.random.default_rng(5)
    wide = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
    data = tmp_path / "d"
    data.mkdir()
    Image.fromarray(wide).save(data / "deep.png")
    assert Image.open(data / "deep.png").mode == "I;16"
    scaled = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    Image.fromarray(scaled).save(data / "eight.png")
    decoded = load_image_uint8(str(data / "deep.png"), 32)
    assert torch.equal(decoded, load_image_uint8(str(data / "eight.png"), 32))
    assert (decoded == 255).float().mean() < 0.02
    out = tmp_path / "o"
    main(_base(data, out))
    maps = {r.id: r.map for r in open_results(out)}
    np.testing.assert_array_equal(maps["deep.png"], maps["eight.png"])


@pytest.mark.parametrize("extra, words", [
    (["--tol", "0.01", "--method", "gradcam"], "--tol applies to Integrated Grad-CAM"),
    (["--tol", "0.01"], "drop --preset, --steps and --rule"),  # _base gives --steps
    (["--max-steps", "31"], "--max-steps caps the path points of --tol"),
    (["--tol", "1.5", "--steps", "0"], "--steps must be a positive integer"),
])
def test_tol_mistakes(listing, tmp_path, capsys, extra, words):
    line = fails_with_one_line(_base(listing, tmp_path / "o", *extra), capsys)
    assert words in line, line


def test_tol_out_of_range_is_one_line(listing, tmp_path, capsys):
    argv = [a for a in _base(listing, tmp_path / "o", "--tol", "1.5") if a not in ("--steps", "2")]
    line = fails_with_one_line(argv, capsys)
    assert "tol must be a relative error between 0 and 1" in line, line
