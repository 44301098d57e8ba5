"""The output folder: whose it is, what a new run may replace, and what ``--overwrite`` deletes.

A folder is the command's own when its config.json (or manifest.json) carries the explain format
marker. The command writes only into its own folders, or into a folder that holds none of the
names it writes (it then marks it with config.json). It deletes only files of its own layout
(shards/shard-NNNNNN.npz and their .sha256, overlays/NNNNNN/NNNNNNNNN_cK.png, manifest.json,
config.json, HTML pages carrying its marker, its temporaries) and never another file.
"""

from __future__ import annotations

import json
from pathlib import Path

from igcam_fast import results as rio
from igcam_fast.results import layout

from .options import ExplainError
from .settings import describe_differences

#: The names a run writes; a folder that is not the command's own must hold none of them.
OWN_NAMES = (rio.CONFIG, rio.MANIFEST, rio.SHARD_DIR, rio.OVERLAY_DIR, "index.html")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def own_record(out: Path) -> dict | None:
    """The config.json (else manifest.json) of an explain output folder, or None if ``out`` is not one."""
    for name in (rio.CONFIG, rio.MANIFEST):
        record = _read_json(out / name)
        if record is not None and record.get("format") == rio.FORMAT:
            return record
    return None


def claim_folder(out: Path) -> None:
    """Create ``out`` or check that it is the command's own or free of its names (nothing is changed)."""
    if out.exists() and not out.is_dir():
        raise ExplainError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if own_record(out) is not None:
        return
    clashes = [n for n in OWN_NAMES if (out / n).exists()] + sorted(
        p.name for p in out.glob("index-*.html") if layout.HTML_FILE_RE.fullmatch(p.name))
    if clashes:
        raise ExplainError(f"--out {out} already holds {', '.join(clashes)} not written by igcam-fast explain "
                           f"(no {rio.CONFIG} of its own); nothing was changed: choose another --out")


def has_results(out: Path) -> bool:
    shards = out / rio.SHARD_DIR
    return (out / rio.MANIFEST).is_file() or (shards.is_dir() and any(
        layout.SHARD_FILE_RE.fullmatch(p.name) for p in shards.iterdir()))


def prepare_output(out: Path, header: dict, overwrite: bool, log) -> None:
    """Make ``out`` ready for a run of these settings (``header``: fingerprint, settings, ...).

    Same settings: resume. Other settings: refused while results of them exist, unless
    --overwrite (then only the command's own files are deleted). A config.json that no result
    was written with (a start that failed) is simply replaced.
    """
    old = own_record(out) or {}
    if old and old.get("fingerprint") != header["fingerprint"]:
        differences = describe_differences(old.get("settings", {}), header["settings"])
        if has_results(out):
            if not overwrite:
                raise ExplainError(f"{out} holds results made with other settings ({differences}); refusing to mix "
                                   "them. Pass --overwrite to discard them, or choose another --out")
            removed = clear_own_files(out, log)
            log(f"--overwrite: deleted {removed} files of the earlier run ({differences})")
        else:
            log(f"replacing the {rio.CONFIG} of an earlier start that wrote no results ({differences})")
    remove_temporaries(out)
    rio.atomic_write_json(out / rio.CONFIG, dict(format=rio.FORMAT, version=rio.VERSION, **header))
    (out / rio.SHARD_DIR).mkdir(exist_ok=True)


def _overlay_folders(out: Path) -> list[Path]:
    root = out / rio.OVERLAY_DIR
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and layout.OVERLAY_SUBDIR_RE.fullmatch(p.name)]


def has_own_overlays(out: Path) -> bool:
    """Whether ``out`` holds overlay PNGs of the command's layout (from this run or an earlier one)."""
    return any(layout.OVERLAY_FILE_RE.fullmatch(p.name) for folder in _overlay_folders(out) for p in folder.iterdir())


def remove_temporaries(out: Path) -> int:
    """The command's own temporaries left by a killed run (in DIR, shards/ and overlays/NNNNNN/)."""
    subfolders = [rio.SHARD_DIR, *(p.relative_to(out) for p in _overlay_folders(out))]
    return rio.remove_stale_temporaries(out, rio.TEMPORARY_RE, subfolders)


def is_own_page(path: Path) -> bool:
    """An HTML page this command wrote (it carries the generator marker)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return rio.HTML_MARKER in f.read(4096)
    except OSError:
        return False


def _unlink_matching(folder: Path, pattern, also=lambda p: True) -> int:
    removed = 0
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and not p.is_symlink() and pattern.fullmatch(p.name) and also(p):
                p.unlink()
                removed += 1
    return removed


def clear_own_files(out: Path, log) -> int:
    """Delete the files of the command's layout in ``out`` (see the module docstring); returns how many."""
    removed = remove_temporaries(out)
    removed += _unlink_matching(out / rio.SHARD_DIR, layout.SHARD_OR_CHECKSUM_RE)
    for folder in _overlay_folders(out):
        removed += _unlink_matching(folder, layout.OVERLAY_FILE_RE)
        if not any(folder.iterdir()):
            folder.rmdir()
    if (out / rio.OVERLAY_DIR).is_dir() and not any((out / rio.OVERLAY_DIR).iterdir()):
        (out / rio.OVERLAY_DIR).rmdir()
    removed += _unlink_matching(out, layout.HTML_FILE_RE, is_own_page)
    foreign_pages = [p.name for p in out.iterdir() if layout.HTML_FILE_RE.fullmatch(p.name)]
    if foreign_pages:
        log(f"left {', '.join(sorted(foreign_pages))} in place: not written by igcam-fast explain")
    for name in (rio.MANIFEST, rio.CONFIG):
        if (out / name).is_file():
            (out / name).unlink()
            removed += 1
    return removed
