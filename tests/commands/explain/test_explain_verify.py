"""Resume verifies every finished shard: damaged bytes, a damaged first shard, a shard copied over
another, a missing checksum, images replaced under the same names; and folder walks end on
symlink loops."""

import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from explain_helpers import MODEL, by_index, ids
from igcam_fast.commands.cli import main
from igcam_fast.commands.explain.discovery import discover
from igcam_fast.results import open_results, verify_shard


@pytest.fixture
def finished(data, tmp_path):
    """A finished run over 30 images in 4 shards of 8 (own copy of the images), and its maps."""
    src = tmp_path / "images"
    src.mkdir()
    for n in [x for x in ids(data) if x.startswith("a/img")][:30]:
        shutil.copy2(data / n, src / n.replace("/", "_"))
    out = tmp_path / "o"
    command = ["explain", "--data", str(src), "--model", MODEL, "--out", str(out), "--workers", "0",
               "--steps", "2", "--shard-size", "8"]
    main(command)
    return command, out, src, by_index(open_results(out))


def _resume(command, capsys):
    capsys.readouterr()
    main(command)
    return capsys.readouterr().err


def _assert_equal_to(out, want):
    results = open_results(out)
    assert results.complete and results.verify() == []
    got = by_index(results)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[2], want[2])
    np.testing.assert_array_equal(got[1], want[1])


def test_damaged_bytes_are_redone(finished, capsys):
    command, out, _, want = finished
    path = out / "shards/shard-000001.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert any("damaged" in p for p in open_results(out).verify())
    err = _resume(command, capsys)
    assert "shard 1 will be redone" in err and "damaged" in err and "3 finished shards skipped" in err
    _assert_equal_to(out, want)


def test_damaged_first_shard_is_redone(finished, capsys):
    command, out, _, want = finished
    path = out / "shards/shard-000000.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated: not even a zip any more
    err = _resume(command, capsys)
    assert "shard 0 will be redone" in err
    _assert_equal_to(out, want)


def test_shard_copied_over_another_is_redone(finished, capsys):
    command, out, _, want = finished
    for suffix in ("", ".sha256"):  # the checksum copied too, so only the contents tell
        shutil.copy(out / f"shards/shard-000002.npz{suffix}", out / f"shards/shard-000003.npz{suffix}")
    err = _resume(command, capsys)
    assert "shard 3 will be redone: it holds shard 2, not 3" in err
    _assert_equal_to(out, want)


def test_shard_without_checksum_is_redone(finished, capsys):
    command, out, _, want = finished
    (out / "shards/shard-000002.npz.sha256").unlink()
    err = _resume(command, capsys)
    assert "shard 2 will be redone: no checksum recorded" in err
    _assert_equal_to(out, want)


def test_images_replaced_under_the_same_names_are_redone(finished, capsys):
    command, out, src, want = finished
    victim = sorted(src.iterdir())[9]  # image 9: shard 1
    before = open_results(out).find(victim.name)[0].map.astype(np.float32)
    rng = np.random.default_rng(11)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(victim, format="PNG")
    t = time.time() + 5
    os.utime(victim, (t, t))
    err = _resume(command, capsys)
    assert "shard 1 will be redone: its images changed" in err and "3 finished shards skipped" in err
    after = open_results(out).find(victim.name)[0].map.astype(np.float32)
    assert not np.array_equal(before, after)
    # the same as a fresh run over the current files
    fresh = out.parent / "fresh"
    main(command[:command.index("--out") + 1] + [str(fresh)] + command[command.index("--out") + 2:])
    _assert_equal_to(out, by_index(open_results(fresh)))


def test_verify_shard_checks_ids_against_the_expected_ones(finished):
    from igcam_fast.results import ShardExpectation, ShardStamp, load_npz

    _, out, _, _ = finished
    with load_npz(out / "shards/shard-000000.npz") as z:
        stamp = ShardStamp(str(z["fingerprint"]), str(z["images_sha256"]))
        good_ids = z["id"].tolist()
    assert verify_shard(out, ShardExpectation(0, 0, good_ids, stamp)) is None
    renamed = good_ids[:3] + ["someone-else.png"] + good_ids[4:]
    assert "has id" in verify_shard(out, ShardExpectation(0, 0, renamed, stamp))
    assert "does not cover" in verify_shard(out, ShardExpectation(0, 1, good_ids, stamp))


def test_symlink_loops_end_and_each_real_folder_is_read_once(tmp_path):
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    for name in ("one.png", "sub/two.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    os.symlink("..", root / "sub" / "up")  # back to the root
    os.symlink("../..", root / "sub" / "upup")  # above it
    os.symlink(".", root / "here")
    data = discover(root, "folder")
    assert data.ids == ["one.png", "sub/two.png"]
    # a link to a folder outside is followed once
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "three.png")
    os.symlink(outside, root / "linked")
    os.symlink(outside, root / "linked_again")
    assert discover(root, "folder").ids == ["linked/three.png", "one.png", "sub/two.png"]
