"""Shared pieces of the `igcam-fast explain` tests: the tiny model, command lines, subprocesses,
and comparisons of output folders."""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from igcam_fast.commands.cli import main
from igcam_fast.results import open_results

TESTS = Path(__file__).resolve().parents[2]
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

MODEL = "tiny_models:tiny_cnn"
N_IMAGES = 240
SHARD = 40
CORRUPT = ("a/zz_garbage.jpg", "b/zz_empty.png", "c/zz_truncated.jpg")
ERROR_PREFIX = "igcam-fast explain: error: "


def env(**extra):
    """The environment of a subprocess run: this tree and tests/ importable, one thread."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), e.get("PYTHONPATH", "")])
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra)
    return e


def ids(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def cmd(data, out, *extra):
    return ["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--shard-size", str(SHARD),
            "--batch-size", "8", *extra]


def fails_with_one_line(argv, capsys) -> str:
    """Run the command in-process; assert exit status 2 and one error line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def by_index(results):
    order = np.argsort(results.index, kind="stable")
    return results.index[order], results.maps()[order].astype(np.float32), results.targets[order]


def assert_same_maps(a, b):
    ia, ma, ta = by_index(open_results(a))
    ib, mb, tb = by_index(open_results(b))
    assert np.array_equal(ia, ib), "different sets of images"
    assert np.array_equal(ta, tb)
    np.testing.assert_allclose(mb, ma, rtol=2e-3, atol=2e-3 * float(np.abs(ma).max()))


def wait_for_shards(out, n, proc, timeout=60):
    """Until n shards are finished (a shard is finished once its checksum sidecar is written)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list((out / "shards").glob("shard-*.npz.sha256"))) >= n if (out / "shards").is_dir() else False:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be killed: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("no shard appeared in time")


def shard_stamps(out):
    """Modification times of the finished shards (those with a checksum sidecar)."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.npz")
            if p.with_name(p.name + ".sha256").is_file()}


def torchrun(n):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={n}",
            "-m", "igcam_fast"]


def write_images(root, n, seed=0, size=(24, 32)):
    """n small PNG/JPEG/BMP images with a bright blob each (some greyscale) in three sub-folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / "abc"[i % 3]
        sub.mkdir(parents=True, exist_ok=True)
        h, w = size[0] + i % 17, size[1] + i % 11
        yy, xx = np.mgrid[:h, :w]
        a = (rng.integers(0, 80, (h, w, 3)) + 160 * ((yy - (i % h)) ** 2 + (xx - (i * 7 % w)) ** 2 < 40)[..., None])
        a = a.clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a if i % 7 else a[..., 0])
        img.save(sub / f"img{i:04d}.{('png', 'jpg', 'bmp')[i % 3]}")


def write_corrupt(root):
    (root / CORRUPT[0]).write_bytes(b"this is not an image at all")
    (root / CORRUPT[1]).write_bytes(b"")
    whole = next(root.glob("*/*.jpg"))
    (root / CORRUPT[2]).write_bytes(whole.read_bytes()[:200])


def small_list(tmp_path, data, n, name="list.txt"):
    """A list file of the first n readable images of the data fixture."""
    listing = tmp_path / name
    names = [x for x in ids(data) if x not in CORRUPT][:n]
    listing.write_text("".join(f"{data / x}\n" for x in names))
    return listing
