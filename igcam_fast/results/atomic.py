"""Atomic file writes: a reader (or a killed writer's successor) sees a whole file or none.

Each write goes to a temporary file beside its target (``.NAME.XXXX.tmp``), is fsynced, renamed
over the target and the folder is fsynced. ``tempfile.mkstemp`` creates files 0600; the file is
given the permissions a plain ``open()`` would (0666 less the umask) before the rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

import numpy as np

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask now (Linux: read from /proc; elsewhere set and put back under a lock)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write(path, write) -> str:
    """Write through ``write(binary_file)`` atomically; return the SHA-256 (hex) of the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            digest = _sha256_of(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return digest


def _sha256_of(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    with open(path, "rb") as f:
        return _sha256_of(f)


def atomic_write_npz(path, arrays: dict, compress: bool = False) -> str:
    """Save arrays as an .npz atomically; returns its SHA-256. Object arrays (pickle) are refused."""
    for name, a in arrays.items():
        if np.asarray(a).dtype == object:
            raise TypeError(f"array {name!r} has dtype object: it would need pickle")
    save = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda f: save(f, **arrays))


def atomic_write_text(path, text: str) -> str:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path, obj) -> str:
    """JSON with non-ASCII escaped, so ids from non-UTF-8 file names (surrogates) round-trip."""
    return atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=True) + "\n")


def remove_stale_temporaries(folder, pattern, subfolders=()) -> int:
    """Delete the temporary files a killed writer left in folder (and subfolders) whose whole name
    matches ``pattern`` (a compiled regex of the writer's own temporaries; nothing else is touched)."""
    removed = 0
    folder = Path(folder)
    for sub in (folder, *(folder / s for s in subfolders)):
        if sub.is_dir():
            for p in sub.glob(".*.tmp"):
                if pattern.fullmatch(p.name):
                    try:
                        p.unlink()
                        removed += 1
                    except OSError:
                        pass
    return removed
