"""`igcam-fast explain` killed with SIGKILL and resumed: one process resumed by two torchrun ranks,
one rank of two killed and the same command run again; finished shards are never redone."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from explain_helpers import N_IMAGES, assert_same_maps, cmd, env, shard_stamps, torchrun, wait_for_shards


def test_kill9_then_resume_on_two_ranks(data, reference, tmp_path):
    """A single process killed with SIGKILL mid-run, resumed by two torchrun ranks (another world size)."""
    out = tmp_path / "o"
    args = cmd(data, out, "--workers", "1", "--steps", "8")
    proc = subprocess.Popen([sys.executable, "-m", "igcam_fast", *args], env=env(IGCAM_FAST_TEST_BATCH_DELAY="0.05"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_shards(out, 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stamps = shard_stamps(out)
    assert 2 <= len(stamps) < 7 and not (out / "manifest.json").exists()
    done = subprocess.run(torchrun(2) + args, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(stamps)} finished shards skipped" in done.stderr
    assert "stale lock was taken over" in done.stderr and f"pid {proc.pid} " in done.stderr
    after = shard_stamps(out)
    assert all(after[name] == t for name, t in stamps.items())  # finished shards were not redone
    assert len(after) == 7
    assert_same_maps(reference, out)


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _rank_of(pid):
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the rank's process")
def test_two_ranks_kill_one_rank_and_resume_same_command(data, reference, tmp_path):
    out = tmp_path / "o"
    command = torchrun(2) + cmd(data, out, "--workers", "1", "--steps", "8")
    proc = subprocess.Popen(command, env=env(IGCAM_FAST_TEST_BATCH_DELAY="0.1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_shards(out, 2, proc)
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
    stamps = shard_stamps(out)
    assert len(stamps) < 7 and not (out / "manifest.json").exists()
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(stamps)} finished shards skipped" in done.stderr
    assert all(shard_stamps(out)[n] == t for n, t in stamps.items())
    assert_same_maps(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["failed"] == 3 and manifest["totals"]["maps"] == N_IMAGES
