"""manifest.json: written once a run's shards are all on disk, from the shards themselves."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json
from .layout import FORMAT, MANIFEST, VERSION, shard_name
from .shards import load_npz, read_checksum


def write_manifest(out, header: dict, n_images: int, shard_size: int, overlays: bool) -> dict:
    """Describe the finished shards of ``out`` and write manifest.json; returns the manifest.

    header: ``fingerprint``, ``settings`` (with ``map_dtype`` and ``resolution``), ``info`` and
    ``class_names`` of the run; overlays: whether overlay PNGs were written. Only shards whose
    file carries this fingerprint and whose checksum sidecar exists are listed; ``complete``
    says whether that is all of them.
    """
    out = Path(out)
    fingerprint, settings = header["fingerprint"], header["settings"]
    n_shards = -(-n_images // shard_size)
    shards, failed = [], []
    totals = dict(images=n_images, explained=0, failed=0, no_target=0, maps=0)
    map_shape = None
    for k in range(n_shards):
        path = out / shard_name(k)
        digest = read_checksum(out, k)
        if digest is None or not path.is_file():
            continue
        with load_npz(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                continue
            images, rows = int(z["images"].shape[0]), int(z["index"].shape[0])
            f_idx, f_id, f_err = z["failed_index"].tolist(), z["failed_id"].tolist(), z["failed_error"].tolist()
            if rows and map_shape is None:
                map_shape = list(z["maps"].shape[1:])
            with_rows = int(np.unique(z["index"]).size)
        lo = k * shard_size
        shards.append(dict(file=shard_name(k), shard=k, first=lo, stop=min(n_images, lo + shard_size),
                           images=images, rows=rows, failed=len(f_idx), sha256=digest))
        failed.extend(dict(index=i, id=n, error=e) for i, n, e in zip(f_idx, f_id, f_err))
        totals["explained"] += images
        totals["failed"] += len(f_idx)
        totals["maps"] += rows
        totals["no_target"] += images - with_rows
    manifest = dict(format=FORMAT, version=VERSION, complete=len(shards) == n_shards, fingerprint=fingerprint,
                    written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    settings=settings, info=header["info"], class_names=header["class_names"],
                    overlays=bool(overlays),
                    map=dict(dtype=settings["map_dtype"], resolution=settings["resolution"], shape=map_shape),
                    totals=totals, shards=shards, failed=failed)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
