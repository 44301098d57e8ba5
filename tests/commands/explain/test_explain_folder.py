"""The output folder of `igcam-fast explain`: its lock, whose files it touches, what a failed start
leaves, --out inside --data, file permissions and file names that are not UTF-8."""

import json
import os
import socket
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from explain_helpers import MODEL, fails_with_one_line, small_list
from igcam_fast.commands.cli import main
from igcam_fast.commands.explain.lock import OutputLock
from igcam_fast.results import open_results


def _base(data, out, *extra):
    return ["explain", "--data", str(data), "--model", MODEL, "--out", str(out), "--workers", "0",
            "--steps", "2", "--shard-size", "8", *extra]


def test_lock_refuses_a_second_run_naming_pid_and_host(data, tmp_path, capsys):
    listing = small_list(tmp_path, data, 10)
    out = tmp_path / "o"
    out.mkdir()
    holder = OutputLock(out)
    assert holder.acquire() is None
    try:
        line = fails_with_one_line(_base(listing, out, "--overwrite"), capsys)
        assert "in use by another explain run" in line
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
        assert sorted(p.name for p in out.iterdir()) == [".igcam-explain.lock", ".igcam-explain.owner"]
    finally:
        holder.release()
    main(_base(listing, out))  # released: the run goes ahead
    assert len(open_results(out)) == 10
    assert not (out / ".igcam-explain.owner").exists()  # a clean end leaves no owner record


def test_stale_lock_of_a_killed_run_is_recognised(data, tmp_path, capsys):
    listing = small_list(tmp_path, data, 4)
    out = tmp_path / "o"
    out.mkdir()
    # what a SIGKILLed run leaves: its owner record (the kernel has dropped its flock)
    (out / ".igcam-explain.owner").write_text(json.dumps(dict(pid=999999, host="node7", started="yesterday")))
    (out / ".igcam-explain.lock").write_text("")
    capsys.readouterr()
    main(_base(listing, out))
    err = capsys.readouterr().err
    assert "pid 999999 on host node7" in err and "stale lock was taken over" in err
    assert len(open_results(out)) == 4


def test_foreign_folder_is_never_touched(data, tmp_path, capsys):
    listing = small_list(tmp_path, data, 4)
    out = tmp_path / "site"
    (out / "overlays").mkdir(parents=True)
    (out / "index.html").write_text("<h1>my page</h1>")
    (out / "overlays" / "logo.png").write_bytes(b"png")
    for extra in ((), ("--overwrite",)):
        line = fails_with_one_line(_base(listing, out, "--overlays", *extra), capsys)
        assert "not written by igcam-fast explain" in line and "index.html" in line
    assert (out / "index.html").read_text() == "<h1>my page</h1>"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["index.html", "overlays",
                                                                            "overlays/logo.png"]
    # another tool's config.json and manifest.json: refused even with --overwrite, nothing deleted
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"tool": "something else"}')
    (other / "manifest.json").write_text("{}")
    fails_with_one_line(_base(listing, other, "--overwrite"), capsys)
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "manifest.json"]


def test_overwrite_deletes_only_its_own_files(data, tmp_path, capsys):
    listing = small_list(tmp_path, data, 12)
    out = tmp_path / "o"
    main(_base(listing, out, "--overlays"))
    own_overlays = sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*.png"))
    assert len(own_overlays) == 12
    foreign = ["notes.txt", "shards/keep.npz", "overlays/000000/mine.png", "overlays/extra/a.png", "index-old.html"]
    for name in foreign:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    main(_base(listing, out)[:-4] + ["--shard-size", "8", "--steps", "3", "--overwrite"])
    assert "--overwrite: deleted" in capsys.readouterr().err
    for name in foreign:
        assert (out / name).read_text() == "mine", name
    assert not list((out / "overlays").rglob("*_c*.png"))  # its own overlays went
    assert not (out / "index.html").exists()  # its own page went (this run wrote none)
    assert open_results(out).settings["steps"] == 3


def test_a_page_it_did_not_write_is_left_alone(data, tmp_path, capsys):
    listing = small_list(tmp_path, data, 4)
    out = tmp_path / "o"
    main(_base(listing, out))
    (out / "index.html").write_text("<p>a page of mine</p>")
    main(_base(listing, out, "--overlays"))
    assert (out / "index.html").read_text() == "<p>a page of mine</p>"
    assert "did not write" in capsys.readouterr().err


def test_failed_start_does_not_block_the_corrected_command(data, tmp_path, capsys):
    from explain_helpers import CORRUPT

    listing = tmp_path / "list.txt"
    good = small_list(tmp_path, data, 5, "good.txt").read_text()
    listing.write_text(f"{data / CORRUPT[0]}\n{good}")
    out = tmp_path / "o"
    fails_with_one_line(_base(listing, out, "--strict"), capsys)  # fails after config.json was written
    assert (out / "config.json").is_file() and not list((out / "shards").glob("shard-*"))
    main(_base(listing, out)[:-4] + ["--steps", "3", "--shard-size", "8"])  # other settings, no refusal
    err = capsys.readouterr().err
    assert "replacing the config.json of an earlier start that wrote no results" in err
    results = open_results(out)
    assert results.settings["steps"] == 3 and len(results) == 5 and len(results.failed) == 1


def test_out_inside_data_with_overlays_resumes(tmp_path, capsys):
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    command = _base(data, data / "out", "--overlays")
    main(command)
    assert len(list((data / "out" / "overlays").rglob("*.png"))) == 6
    capsys.readouterr()
    main(command)  # the overlays inside --data are not taken for new images
    assert "1 finished shards skipped" in capsys.readouterr().err
    results = open_results(data / "out")
    assert len(results) == 6 and results.settings["data_count"] == 6


def test_files_get_the_umask_permissions(data, tmp_path):
    listing = small_list(tmp_path, data, 4)
    old = os.umask(0o027)
    try:
        main(_base(listing, tmp_path / "o", "--overlays"))
    finally:
        os.umask(old)
    out = tmp_path / "o"
    files = [out / "config.json", out / "manifest.json", out / "index.html", *out.glob("shards/*"),
             *out.glob("overlays/*/*.png")]
    assert len(files) == 3 + 2 + 4
    modes = {f.relative_to(out).as_posix(): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {"0o640"}, modes


def test_file_names_that_are_not_utf8(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(4)
    names = [os.fsdecode(b"caf\xe9.png"), os.fsdecode(b"\xff\xfe.png"), "plain.png"]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / n)
    out = tmp_path / "o"
    main(_base(data, out, "--overlays"))
    results = open_results(out)
    assert sorted(results.ids.tolist()) == sorted(names)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("<img") == 3 and "caf\ufffd.png" in page and "plain.png" in page
    assert len(results.find(names[1])) == 1
    assert Path(results.find(names[0])[0].overlay).is_file()
