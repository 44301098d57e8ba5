"""Reading an ``igcam-fast explain`` output folder back, lazily, shard by shard."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import sha256_file
from .layout import (CHECKSUM_SUFFIX, CONFIG, FORMAT, MANIFEST, SHARD_DIR, SHARD_IMAGE_FIELDS, SHARD_LATER_ROW_FIELDS,
                     SHARD_ROW_FIELDS, VERSION, overlay_name)
from .shards import load_npz, read_checksum

@dataclass
class Record:
    """One map: the image (global index in the data set, id), the explained class and its scores."""

    index: int
    id: str
    target: int
    score: float  # the class's logit on the image
    prob: float  # its softmax probability
    map: np.ndarray  # (h, w), the stored dtype
    overlay: str | None = None  # path of the overlay PNG, when one was written
    error_estimate: float = float("nan")  # estimated relative L2 quadrature error (NaN: its rule gives none)
    path_points: int = -1  # forward passes its image got (-1: not recorded)


class Shard:
    """One shard file; its arrays are read on first access and cached (small ones) or not (maps)."""

    def __init__(self, root: Path, entry: dict, shard_size: int, overlays: bool):
        self.root = root
        self.entry = entry
        self.path = root / entry["file"]
        self.rows = int(entry["rows"])
        self._shard_size = shard_size
        self._overlays = overlays
        self._small: dict[str, np.ndarray] = {}

    def _get(self, name: str) -> np.ndarray:
        if name not in self._small:
            with load_npz(self.path) as z:
                if name not in z.files and name in SHARD_LATER_ROW_FIELDS:  # a shard written before the field
                    self._small[name] = np.full(self.rows, SHARD_LATER_ROW_FIELDS[name])
                else:
                    self._small[name] = z[name]
        return self._small[name]

    @property
    def maps(self) -> np.ndarray:
        """(rows, h, w) maps; read from disk on every access (not cached)."""
        with load_npz(self.path) as z:
            return z["maps"]

    def __getattr__(self, name):
        if name in SHARD_ROW_FIELDS[:-1] or name in SHARD_IMAGE_FIELDS:
            return self._get(name)
        raise AttributeError(name)

    def records(self):
        maps = self.maps
        idx, ids, tgt, sc, pr = self.index, self.id, self.target, self.score, self.prob
        for r in range(self.rows):
            yield self._record(r, idx, ids, tgt, sc, pr, maps[r])

    def record(self, r: int) -> Record:
        with load_npz(self.path) as z:
            m = z["maps"][r]
        return self._record(r, self.index, self.id, self.target, self.score, self.prob, m)

    def _record(self, r, idx, ids, tgt, sc, pr, m):
        i, t = int(idx[r]), int(tgt[r])
        ov = str(self.root / overlay_name(i, t, self._shard_size)) if self._overlays else None
        return Record(i, str(ids[r]), t, float(sc[r]), float(pr[r]), m, ov, float(self.error_estimate[r]),
                      int(self.path_points[r]))


class Results:
    """The maps of an output folder, read lazily shard by shard (see the module docstring)."""

    def __init__(self, root, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.settings: dict = manifest.get("settings", {})
        self.class_names = manifest.get("class_names")
        self.complete: bool = bool(manifest.get("complete"))
        shard_size = int(self.settings.get("shard_size", 1))
        overlays = bool(manifest.get("overlays"))
        self.shards = [Shard(self.root, e, shard_size, overlays) for e in manifest.get("shards", [])]
        self._starts = np.cumsum([0] + [s.rows for s in self.shards]).tolist()
        self._cache: dict[str, np.ndarray] = {}
        self._by_id: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return (f"Results({str(self.root)!r}: {len(self)} maps of {self.manifest.get('totals', {}).get('explained', '?')} "
                f"images in {len(self.shards)} shards, {state})")

    def _concat(self, name: str) -> np.ndarray:
        if name not in self._cache:
            parts = [getattr(s, name) for s in self.shards]
            self._cache[name] = np.concatenate(parts) if parts else np.zeros(0)
        return self._cache[name]

    @property
    def index(self) -> np.ndarray:
        """(rows,) global image index (position in the data set's sorted listing) of every map."""
        return self._concat("index")

    @property
    def ids(self) -> np.ndarray:
        return self._concat("id")

    @property
    def targets(self) -> np.ndarray:
        return self._concat("target")

    @property
    def scores(self) -> np.ndarray:
        return self._concat("score")

    @property
    def probs(self) -> np.ndarray:
        return self._concat("prob")

    @property
    def error_estimates(self) -> np.ndarray:
        """(rows,) float32 estimated relative L2 quadrature error of every map (NaN: its rule gives none)."""
        return self._concat("error_estimate")

    @property
    def path_points(self) -> np.ndarray:
        """(rows,) int32 path points (forward passes) each map's image got (-1: not recorded)."""
        return self._concat("path_points")

    @property
    def failed(self) -> list[dict]:
        """The unreadable images: [{index, id, error}, ...]."""
        out = []
        for s in self.shards:
            for i, n, e in zip(s.failed_index.tolist(), s.failed_id.tolist(), s.failed_error.tolist()):
                out.append(dict(index=i, id=n, error=e))
        return out

    def __getitem__(self, i: int) -> Record:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range for {len(self)} maps")
        k = bisect.bisect_right(self._starts, i) - 1
        return self.shards[k].record(i - self._starts[k])

    def __iter__(self):
        for s in self.shards:
            yield from s.records()

    def find(self, image_id: str) -> list[Record]:
        """Every record (one per target) of the image with this id."""
        if self._by_id is None:
            self._by_id = {}
            for row, n in enumerate(self.ids.tolist()):
                self._by_id.setdefault(n, []).append(row)
        return [self[r] for r in self._by_id.get(image_id, [])]

    def maps(self, rows=None) -> np.ndarray:
        """All maps (or those of ``rows``) as one array — mind the memory on large data sets."""
        if rows is None:
            parts = [s.maps for s in self.shards if s.rows]
            return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float16)
        return np.stack([self[int(r)].map for r in rows])

    def verify(self) -> list[str]:
        """Check every shard's bytes against the SHA-256 recorded when it was written.

        Returns one line per problem (empty: every shard is intact). Reads every shard file.
        """
        problems = []
        for s in self.shards:
            # the sidecar is rewritten with its shard; the manifest's copy is as of the last finished run
            recorded = read_checksum(self.root, int(s.entry["shard"])) or s.entry.get("sha256")
            if recorded is None:
                problems.append(f"{s.path}: no checksum recorded")
            elif not s.path.is_file():
                problems.append(f"{s.path}: missing")
            elif sha256_file(s.path) != recorded:
                problems.append(f"{s.path}: bytes do not match the recorded SHA-256 (damaged)")
        return problems


def scan_shards(root, fingerprint: str | None = None) -> list[dict]:
    """Shard entries found on disk (for a folder whose run has not finished: no manifest yet).

    Only shards with a checksum sidecar count (the sidecar is written after the shard).
    """
    root = Path(root)
    entries = []
    for p in sorted((root / SHARD_DIR).glob("shard-*.npz")):
        if not Path(f"{p}{CHECKSUM_SUFFIX}").is_file():
            continue
        try:
            with load_npz(p) as z:
                if fingerprint is not None and str(z["fingerprint"]) != fingerprint:
                    continue
                entries.append(dict(file=f"{SHARD_DIR}/{p.name}", shard=int(z["shard"]), rows=int(z["index"].shape[0]),
                                    images=int(z["images"].shape[0]), failed=int(z["failed_index"].shape[0])))
        except Exception:
            continue
    return entries


def open_results(root) -> Results:
    """Open the output folder of ``igcam-fast explain`` for lazy reading.

    Reads manifest.json; for a run that has not finished yet (no manifest), the finished shards
    found on disk are read instead (``results.complete`` is then False).
    """
    root = Path(root)
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path} is not an igcam_fast explain manifest")
        if int(manifest.get("version", 0)) > VERSION:
            raise ValueError(f"{manifest_path} has format version {manifest['version']}, newer than this "
                             f"igcam_fast reads ({VERSION})")
        return Results(root, manifest)
    config_path = root / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{root} holds no explain results (no {MANIFEST} nor {CONFIG})")
    config = json.loads(config_path.read_text())
    manifest = dict(format=FORMAT, version=VERSION, complete=False, settings=config.get("settings", {}),
                    class_names=config.get("class_names"), overlays=False, shards=scan_shards(root, config.get("fingerprint")))
    return Results(root, manifest)
