"""`igcam-fast explain`: a data set end to end, resume after kill -9, two ranks under torchrun,
corrupt files, refused setting changes, the VOC / ImageFolder / list layouts and the reader."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from igcam_fast import CamEngine
from igcam_fast.commands.cli import main
from igcam_fast.commands.explain import load_image_uint8, to_model_input
from igcam_fast.results import open_results

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
import tiny_models  # noqa: E402

MODEL = "tiny_models:tiny_cnn"
N_IMAGES = 240
SHARD = 40
CORRUPT = ("a/zz_garbage.jpg", "b/zz_empty.png", "c/zz_truncated.jpg")


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """N_IMAGES small images of varied sizes and formats in three folders, plus three corrupt files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        sub = root / "abc"[i % 3]
        sub.mkdir(exist_ok=True)
        h, w = 24 + i % 17, 32 + i % 11
        yy, xx = np.mgrid[:h, :w]
        a = (rng.integers(0, 80, (h, w, 3)) + 160 * ((yy - (i % h)) ** 2 + (xx - (i * 7 % w)) ** 2 < 40)[..., None])
        a = a.clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a if i % 7 else a[..., 0])  # some greyscale
        img.save(sub / f"img{i:04d}.{('png', 'jpg', 'bmp')[i % 3]}")
    (root / CORRUPT[0]).write_bytes(b"this is not an image at all")
    (root / CORRUPT[1]).write_bytes(b"")
    whole = (root / "a" / "img0001.jpg") if (root / "a" / "img0001.jpg").exists() else next(root.glob("*/*.jpg"))
    (root / CORRUPT[2]).write_bytes(whole.read_bytes()[:200])
    return root


def _ids(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _cmd(data, out, *extra):
    return ["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--shard-size", str(SHARD),
            "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted in-process run (DataLoader workers on)."""
    out = tmp_path_factory.mktemp("reference")
    main(_cmd(data, out, "--workers", "1", "--steps", "8"))
    return out


def _by_index(results):
    order = np.argsort(results.index, kind="stable")
    return results.index[order], results.maps()[order].astype(np.float32), results.targets[order]


def _assert_same_maps(a, b):
    ia, ma, ta = _by_index(open_results(a))
    ib, mb, tb = _by_index(open_results(b))
    assert np.array_equal(ia, ib), "different sets of images"
    assert np.array_equal(ta, tb)
    np.testing.assert_allclose(mb, ma, rtol=2e-3, atol=2e-3 * float(np.abs(ma).max()))


def test_every_image_one_map_equal_to_the_api(data, reference):
    results = open_results(reference)
    ids = _ids(data)
    good = [i for i, n in enumerate(ids) if n not in CORRUPT]
    assert results.complete and len(results) == N_IMAGES
    assert sorted(results.index.tolist()) == good  # exactly one map per readable image
    assert [ids[i] for i in results.index] == results.ids.tolist()
    failed = results.failed
    assert sorted(f["id"] for f in failed) == sorted(CORRUPT) and all(f["error"] for f in failed)
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["totals"] == dict(images=N_IMAGES + 3, explained=N_IMAGES, failed=3, no_target=0, maps=N_IMAGES)
    assert manifest["map"] == dict(dtype="float16", resolution="layer", shape=[8, 8])
    assert results.shards[0].maps.dtype == np.float16

    # the in-process API on the same images
    spec = tiny_models.tiny_cnn()
    images = torch.stack([load_image_uint8(str(data / ids[i]), 32) for i in results.index])
    x = to_model_input(images, spec.mean, spec.std)
    with CamEngine(spec.model, spec.layer, steps=8, mean=spec.mean, std=spec.std, output_size="layer") as engine:
        expected = engine.explain(x)
    assert np.array_equal(results.targets, expected.targets[:, 0].numpy())
    np.testing.assert_allclose(results.scores, expected.logits.gather(1, expected.targets).squeeze(1).numpy(),
                               rtol=1e-4, atol=1e-4)
    got = results.maps().astype(np.float32)
    want = expected.layer_maps.numpy()
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3 * float(want.max()))
    rec = results.find(ids[good[5]])
    assert len(rec) == 1 and rec[0].index == good[5] and rec[0].map.shape == (8, 8)


def test_corrupt_files_strict_fails_fast(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(_cmd(data, tmp_path / "o", "--workers", "0", "--strict"))
    assert err.value.code == 2
    assert "zz_garbage.jpg" in capsys.readouterr().err


def test_changed_settings_refused_unless_overwrite(data, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{data / n}\n" for n in _ids(data)[:30]))
    out = tmp_path / "o"
    base = ["explain", "--data", str(listing), "--model", MODEL, "--out", str(out), "--workers", "0",
            "--steps", "4", "--shard-size", "16"]
    main(base)
    before = open_results(out).maps().copy()
    with pytest.raises(SystemExit) as err:
        main(base[:-4] + ["--steps", "6", "--shard-size", "16"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "other settings" in message and "steps: 4 -> 6" in message and "--overwrite" in message
    assert np.array_equal(open_results(out).maps(), before)  # untouched
    main(base + ["--overwrite"])  # same settings: --overwrite resumes, nothing is discarded
    assert "2 finished shards skipped" in capsys.readouterr().err
    main(base[:-4] + ["--steps", "6", "--shard-size", "16", "--overwrite"])
    results = open_results(out)
    assert results.settings["steps"] == 6 and len(results) == 30
    assert not np.array_equal(results.maps(), before)


def test_overlays_html_topk_input_resolution(data, tmp_path):
    listing = tmp_path / "list.txt"
    names = [n for n in _ids(data) if n not in CORRUPT][:12]
    listing.write_text("".join(f"{data / n}\n" for n in names))
    out = tmp_path / "o"
    main(["explain", "--data", str(listing), "--model", MODEL, "--out", str(out), "--workers", "0",
          "--targets", "topk:2", "--resolution", "input", "--method", "gradcam", "--overlays"])
    results = open_results(out)
    assert len(results) == 24 and results.maps().shape == (24, 32, 32)
    assert sorted(results.index.tolist()) == sorted(list(range(12)) * 2)
    for rec in results:
        assert Path(rec.overlay).is_file()
    html = (out / "index.html").read_text()
    assert html.count("<img") == 24 and "class" in html


def test_voc_all_present_and_imagefolder(tmp_path):
    voc = tmp_path / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"class{k}" for k in range(6)]
    present = {}
    for i in range(10):
        stem = f"{i:06d}"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        objs = [names[(i + j * 2) % 6] for j in range(1 + i % 3)] + ([names[i % 6]] if i % 2 else [])
        present[stem] = sorted({names.index(o) for o in objs})
        xml = "".join(f"<object><name>{o}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
                      "</bndbox></object>" for o in objs)
        (voc / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{xml}</annotation>")
    (voc / "ImageSets/Main/test.txt").write_text("".join(f"{i:06d}\n" for i in range(0, 10, 2)))
    (voc / "ImageSets/Main/trainval.txt").write_text("".join(f"{i:06d}\n" for i in range(1, 10, 2)))
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names))
    out = tmp_path / "voc_out"
    main(["explain", "--data", str(voc), "--model", MODEL, "--out", str(out), "--workers", "1",
          "--targets", "all-present", "--classes", str(classes), "--steps", "4"])
    results = open_results(out)
    assert results.settings["data_kind"] == "voc" and results.settings["data_split"] == "test"
    want = [(f"{i:06d}", c) for i in range(0, 10, 2) for c in present[f"{i:06d}"]]
    assert sorted(zip(results.ids.tolist(), results.targets.tolist())) == sorted(want)
    # several targets of one image share its forward passes and equal the API's maps
    spec = tiny_models.tiny_cnn()
    stem = "000004"
    x = to_model_input(load_image_uint8(str(voc / "JPEGImages" / f"{stem}.jpg"), 32)[None], spec.mean, spec.std)
    with CamEngine(spec.model, spec.layer, steps=4, mean=spec.mean, std=spec.std, output_size="layer") as engine:
        expected = engine.explain(x, [present[stem]]).layer_maps[0]
    recs = results.find(stem)
    got = np.stack([r.map for r in recs]).astype(np.float32)
    np.testing.assert_allclose(got, expected.numpy(), rtol=2e-3, atol=1e-3 * float(expected.max()))

    # ImageFolder: all-present is the folder's class
    tree = tmp_path / "tree"
    for k in range(3):
        (tree / f"class{k}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tree / f"class{k}" / f"{j}.png")
    main(["explain", "--data", str(tree), "--model", MODEL, "--out", str(tmp_path / "tree_out"), "--workers", "0",
          "--targets", "all-present", "--steps", "2"])
    results = open_results(tmp_path / "tree_out")
    assert results.settings["data_kind"] == "imagefolder"
    assert [(i, t) for i, t in zip(results.ids.tolist(), results.targets.tolist())] == \
        [(f"class{k}/{j}.png", k) for k in range(3) for j in range(3)]


def _wait_for_shards(out, n, proc, timeout=60):
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


def _shard_stamps(out):
    """Modification times of the finished shards (those with a checksum sidecar)."""
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.npz")
            if p.with_name(p.name + ".sha256").is_file()}


def _torchrun(n):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={n}",
            "-m", "igcam_fast"]


def test_kill9_then_resume_on_two_ranks(data, reference, tmp_path):
    """A single process killed with SIGKILL mid-run, resumed by two torchrun ranks (another world size)."""
    out = tmp_path / "o"
    args = _cmd(data, out, "--workers", "1", "--steps", "8")
    proc = subprocess.Popen([sys.executable, "-m", "igcam_fast", *args], env=_env(IGCAM_FAST_TEST_BATCH_DELAY="0.05"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_shards(out, 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stamps = _shard_stamps(out)
    assert 2 <= len(stamps) < 7 and not (out / "manifest.json").exists()
    done = subprocess.run(_torchrun(2) + args, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(stamps)} finished shards skipped" in done.stderr
    after = _shard_stamps(out)
    assert all(after[name] == t for name, t in stamps.items())  # finished shards were not redone
    assert len(after) == 7
    _assert_same_maps(reference, out)


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _rank_of(pid):
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the rank's process")
def test_two_ranks_kill_one_rank_and_resume_same_command(data, reference, tmp_path):
    out = tmp_path / "o"
    cmd = _torchrun(2) + _cmd(data, out, "--workers", "1", "--steps", "8")
    proc = subprocess.Popen(cmd, env=_env(IGCAM_FAST_TEST_BATCH_DELAY="0.1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_shards(out, 2, proc)
        ranks = {_rank_of(c): c for c in _children(proc.pid)}
        assert 1 in ranks, ranks
        os.kill(ranks[1], signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode != 0
    stamps = _shard_stamps(out)
    assert len(stamps) < 7 and not (out / "manifest.json").exists()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(stamps)} finished shards skipped" in done.stderr
    assert all(_shard_stamps(out)[n] == t for n, t in stamps.items())
    _assert_same_maps(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["failed"] == 3 and manifest["totals"]["maps"] == N_IMAGES


def test_label_file_targets_and_images_without_targets(data, tmp_path, capsys):
    names = [n for n in _ids(data) if n not in CORRUPT][:8]
    labels = tmp_path / "labels.txt"
    labels.write_text("# id classes\n" + "".join(f"{n} class{k % 6},{(k + 2) % 6}\n" for k, n in enumerate(names[:6])))
    out = tmp_path / "o"
    main(["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--workers", "0", "--steps", "2",
          "--targets", str(labels)])
    results = open_results(out)
    assert sorted(zip(results.ids.tolist(), results.targets.tolist())) == \
        sorted((n, c) for k, n in enumerate(names[:6]) for c in (k % 6, (k + 2) % 6))
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["no_target"] == N_IMAGES - 6 and totals["maps"] == 12 and totals["failed"] == 3
    with pytest.raises(SystemExit):
        main(["explain", "--data", str(data), "--model", MODEL, "--out", str(tmp_path / "p"),
              "--targets", "all-present", "--format", "folder"])
    assert "needs labels" in capsys.readouterr().err
