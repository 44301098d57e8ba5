"""Fault injection: a run over 122 small images (two unreadable) killed with SIGKILL at random
moments at least ten times, resumed after each kill; then exactly one map per readable image,
each equal to an uninterrupted run's. A second run started while one holds the folder is refused,
and a shard damaged afterwards is redone.

Each run is a process of its own, forked by fork_server.py (which imported torch once), so
that a dozen kills cost milliseconds of start-up each instead of seconds."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pathlib import Path

from explain_helpers import MODEL, assert_same_maps, env, fails_with_one_line, ids, write_images
from igcam_fast.commands.cli import main
from igcam_fast.results import open_results

N = 120
KILLS = 12
SEED = 20260


class ForkServer:
    """Runs of the command as child processes of fork_server.py (see its docstring)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fork_server.py"))], env=env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, line: str) -> int:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, argv, stderr_path, **environ) -> "Run":
        request = dict(argv=argv, env=environ, stderr=str(stderr_path))
        return Run(self, self._ask("run " + json.dumps(request)), stderr_path)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Run:
    def __init__(self, server, pid, stderr_path):
        self.server, self.pid, self.stderr_path = server, pid, Path(stderr_path)
        self.returncode = None

    def alive(self) -> bool:
        if self.returncode is not None:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
        except OSError:
            return False

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the run and its DataLoader workers
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self.server._ask(f"wait {self.pid}")
        return self.returncode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


@pytest.fixture(scope="module")
def server():
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to watch the forked runs")
    s = ForkServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_images")
    write_images(root, N, seed=7, size=(20, 20))
    (root / "a" / "zz_bad.png").write_bytes(b"\x89PNG broken")
    (root / "b" / "zz_empty.jpg").write_bytes(b"")
    return root


def _command(images, out, workers):
    return ["explain", "--data", str(images), "--model", MODEL, "--out", str(out), "--workers", str(workers),
            "--steps", "4", "--shard-size", "8", "--batch-size", "4"]


def _start(server, images, out, workers, delay, log_path):
    return server.start(_command(images, out, workers), log_path, IGCAM_FAST_TEST_BATCH_DELAY=str(delay),
                        OMP_NUM_THREADS="1")


def _wait_for_lock(out, proc, timeout=60):
    """Until the run holds the folder (its owner record names it), or it has ended."""
    deadline = time.time() + timeout
    owner = out / ".igcam-explain.owner"
    while time.time() < deadline and proc.alive():
        try:
            if json.loads(owner.read_text())["pid"] == proc.pid:
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    return False


def test_random_sigkills_then_resume_give_the_uninterrupted_maps(server, images, tmp_path, capsys):
    reference = tmp_path / "reference"
    main(_command(images, reference, 0))
    out = tmp_path / "faulted"
    rng = random.Random(SEED)
    history = []  # (exit code, finished shards) of every run
    # Count the kills by exit status: a run can finish in the instant before its kill lands.
    while sum(1 for code, _ in history if code == -signal.SIGKILL) < KILLS:
        run = _start(server, images, out, rng.choice((0, 1)), 0.02, tmp_path / f"run{len(history)}.log")
        try:
            if _wait_for_lock(out, run):
                time.sleep(rng.uniform(0.0, 0.9))
            if run.alive():
                run.kill()
        finally:
            run.kill()
            code = run.wait()
        done = len(list((out / "shards").glob("*.sha256"))) if (out / "shards").is_dir() else 0
        history.append((code, done))
        assert code in (0, -signal.SIGKILL), run.stderr[-2000:]
        if code == 0:  # it finished before the kill: start over, so that every kill lands in a run
            for p in (out / "shards").glob("shard-*"):
                p.unlink()
            (out / "manifest.json").unlink()
    # the last resume, uninterrupted
    main(_command(images, out, 1))
    results = open_results(out)
    assert results.complete and results.verify() == [], history
    names = ids(images)
    readable = [i for i, n in enumerate(names) if "zz_" not in n]
    assert sorted(results.index.tolist()) == readable, history  # exactly one map per readable image
    assert sorted(f["id"] for f in results.failed) == ["a/zz_bad.png", "b/zz_empty.jpg"]
    assert_same_maps(reference, out)
    leftovers = [p.name for p in out.rglob(".*") if p.name != ".igcam-explain.lock"]
    assert leftovers == [], leftovers  # no temporaries, no owner record
    assert sum(1 for code, _ in history if code == -signal.SIGKILL) >= KILLS

    # a damaged shard is redone
    shard = out / "shards/shard-000004.npz"
    raw = bytearray(shard.read_bytes())
    raw[-40] ^= 0x55
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    main(_command(images, out, 0))
    assert "shard 4 will be redone" in capsys.readouterr().err
    assert_same_maps(reference, out)


def test_a_concurrent_second_run_is_refused(server, images, tmp_path, capsys):
    out = tmp_path / "o"
    run = _start(server, images, out, 0, 0.2, tmp_path / "first.log")
    try:
        assert _wait_for_lock(out, run), run.stderr[-2000:]
        for extra in ((), ("--overwrite",)):
            line = fails_with_one_line(_command(images, out, 0) + list(extra), capsys)
            assert f"in use by another explain run (pid {run.pid} on host" in line
        assert run.alive()  # the first run goes on undisturbed
    finally:
        run.kill()
        run.wait()
    main(_command(images, out, 0))  # and once it is gone, the folder is free again
    results = open_results(out)
    assert results.complete and len(results) == N
    assert np.isfinite(results.maps().astype(np.float32)).all()
