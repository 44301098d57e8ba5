"""Shard files: the writer (with its SHA-256 sidecar) and the check a resumed run makes of each.

A shard holds the maps of the images k·shard_size … (k+1)·shard_size − 1 (their global indices).
Its arrays, with R = maps (one per image and target) and n = readable images:

    maps (R, h, w) float16|float32, index/id/target/score/prob (R,), error_estimate (R,) float32 (the
    map's estimated relative quadrature error, NaN where its rule gives none), path_points (R,) int32
    (the forward passes its image got), images (n,),
    failed_index/failed_id/failed_error (unreadable images), shard (), fingerprint () and
    images_sha256 () — the hash of the names, sizes and modification times of the shard's images.

The shard is written atomically, then ``shard-NNNNNN.npz.sha256`` (same format as ``sha256sum``)
records the hash of its bytes. A shard counts as finished only when its sidecar exists and matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_npz, atomic_write_text, sha256_file
from .layout import SHARD_IMAGE_FIELDS, SHARD_ROW_FIELDS, checksum_name, shard_name


def load_npz(path) -> "np.lib.npyio.NpzFile":
    """An .npz opened lazily (each array is read when it is accessed), never unpickling."""
    return np.load(path, allow_pickle=False)


@dataclass
class ShardBuffer:
    """The rows of one shard while it is being filled (lists, stacked when it is written)."""

    k: int
    images: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    prob: list[float] = field(default_factory=list)
    error_estimate: list[float] = field(default_factory=list)
    path_points: list[int] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)

    def add_row(self, index: int, image_id: str, target: int, score: float, prob: float, m: np.ndarray,
                error_estimate: float = float("nan"), path_points: int = -1) -> None:
        self.index.append(index)
        self.error_estimate.append(error_estimate)
        self.path_points.append(path_points)
        self.id.append(image_id)
        self.target.append(target)
        self.score.append(score)
        self.prob.append(prob)
        self.maps.append(m)


@dataclass(frozen=True)
class ShardStamp:
    """What identifies the inputs of a shard: the settings' fingerprint and its images' stat hash."""

    fingerprint: str
    images_sha256: str


def _strings(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.str_)
    return a if a.size else np.zeros(0, dtype="<U1")


def write_shard(out, shard: ShardBuffer, stamp: ShardStamp, map_dtype, compress: bool = False) -> str:
    """Write shard ``shard.k`` into output folder ``out`` and then its sidecar; returns the SHA-256."""
    out = Path(out)
    maps = np.stack(shard.maps).astype(map_dtype) if shard.maps else np.zeros((0, 0, 0), map_dtype)
    arrays = dict(
        shard=np.int64(shard.k), fingerprint=np.str_(stamp.fingerprint), images_sha256=np.str_(stamp.images_sha256),
        index=np.asarray(shard.index, dtype=np.int64), id=_strings(shard.id),
        target=np.asarray(shard.target, dtype=np.int64), score=np.asarray(shard.score, dtype=np.float32),
        prob=np.asarray(shard.prob, dtype=np.float32), maps=maps,
        error_estimate=np.asarray(shard.error_estimate, dtype=np.float32),
        path_points=np.asarray(shard.path_points, dtype=np.int32),
        images=np.asarray(shard.images, dtype=np.int64),
        failed_index=np.asarray([f[0] for f in shard.failed], dtype=np.int64),
        failed_id=_strings([f[1] for f in shard.failed]), failed_error=_strings([f[2] for f in shard.failed]))
    digest = atomic_write_npz(out / shard_name(shard.k), arrays, compress=compress)
    atomic_write_text(out / checksum_name(shard.k), f"{digest}  {Path(shard_name(shard.k)).name}\n")
    return digest


def read_checksum(out, k: int) -> str | None:
    """The SHA-256 recorded for shard k, or None when there is no readable sidecar."""
    try:
        text = (Path(out) / checksum_name(k)).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0] if text and len(text[0]) == 64 else None


@dataclass(frozen=True)
class ShardExpectation:
    """What shard k must hold: images first … stop − 1 with these ids, made with this stamp."""

    k: int
    first: int
    ids: list[str]
    stamp: ShardStamp

    @property
    def stop(self) -> int:
        return self.first + len(self.ids)


def verify_shard(out, expected: ShardExpectation) -> str | None:
    """None when shard ``expected.k`` is finished and sound, else why it must be redone (one phrase)."""
    path = Path(out) / shard_name(expected.k)
    if not path.is_file():
        return "not written"
    recorded = read_checksum(out, expected.k)
    if recorded is None:
        return "no checksum recorded (the writer stopped before it finished)"
    if sha256_file(path) != recorded:
        return "its bytes do not match the checksum recorded when it was written (damaged)"
    try:
        with load_npz(path) as z:
            return _check_contents(z, expected)
    except Exception as err:  # a damaged zip, a missing or mistyped array: redo it
        return f"unreadable ({type(err).__name__}: {err})"


def _check_contents(z, expected: ShardExpectation) -> str | None:
    missing = [n for n in ("shard", "fingerprint", "images_sha256", *SHARD_ROW_FIELDS, *SHARD_IMAGE_FIELDS)
               if n not in z.files]
    if missing:
        return f"arrays {missing} are missing (an older format or another file)"
    if int(z["shard"]) != expected.k:
        return f"it holds shard {int(z['shard'])}, not {expected.k} (a copied file)"
    if str(z["fingerprint"]) != expected.stamp.fingerprint:
        return "it was made with other settings"
    if str(z["images_sha256"]) != expected.stamp.images_sha256:
        return "its images changed (name, size or modification time) since it was written"
    images, failed = z["images"].tolist(), z["failed_index"].tolist()
    if sorted(images + failed) != list(range(expected.first, expected.stop)):
        return f"it does not cover exactly images {expected.first} … {expected.stop - 1}"
    for index_name, id_name in (("index", "id"), ("failed_index", "failed_id")):
        for i, image_id in zip(z[index_name].tolist(), z[id_name].tolist()):
            if not expected.first <= i < expected.stop or expected.ids[i - expected.first] != image_id:
                return f"image {i} has id {image_id!r}, expected another"
    rows = z["index"].shape[0]
    if any(z[n].shape[0] != rows for n in SHARD_ROW_FIELDS) or not set(z["index"].tolist()) <= set(images):
        return "its arrays disagree in length or rows name images it does not hold"
    return None
