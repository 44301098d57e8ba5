"""The layout of an ``igcam-fast explain`` output folder: file names and format constants.

    DIR/config.json                       settings of the run (written first; marks DIR as the command's own)
    DIR/shards/shard-NNNNNN.npz           the maps of images k·shard_size … (k+1)·shard_size − 1
    DIR/shards/shard-NNNNNN.npz.sha256    its SHA-256, written after it (``sha256sum -c`` reads it)
    DIR/manifest.json                     written at the end of a run
    DIR/overlays/NNNNNN/NNNNNNNNN_cK.png  with --overlays: one PNG per map
    DIR/index.html, index-NNNNN.html      with --overlays: thumbnail pages
    DIR/.igcam-explain.lock               the run's exclusive lock (flock)
    DIR/.igcam-explain.owner              pid, host and start time of the run holding the lock
"""

from __future__ import annotations

import re

import numpy as np

FORMAT = "igcam_fast.explain"
#: 2: shards carry a SHA-256 sidecar and the hash of their images' names, sizes and mtimes.
VERSION = 2
MANIFEST = "manifest.json"
CONFIG = "config.json"
SHARD_DIR = "shards"
OVERLAY_DIR = "overlays"
LOCK_FILE = ".igcam-explain.lock"
OWNER_FILE = ".igcam-explain.owner"
CHECKSUM_SUFFIX = ".sha256"
#: Written into every HTML page this command makes; a page without it is never overwritten.
HTML_MARKER = '<meta name="generator" content="igcam_fast explain">'

#: The per-image arrays of a shard (n = images of the shard) and the per-row ones (R = maps).
SHARD_IMAGE_FIELDS = ("images", "failed_index", "failed_id", "failed_error")
SHARD_ROW_FIELDS = ("index", "id", "target", "score", "prob", "error_estimate", "path_points", "maps")
#: Row arrays that shards written before them lack, and what the reader gives in their place.
SHARD_LATER_ROW_FIELDS = {"error_estimate": np.float32("nan"), "path_points": np.int32(-1)}

SHARD_FILE_RE = re.compile(r"shard-\d{6}\.npz")
SHARD_OR_CHECKSUM_RE = re.compile(r"shard-\d{6}\.npz(\.sha256)?")
OVERLAY_SUBDIR_RE = re.compile(r"\d{6}")
OVERLAY_FILE_RE = re.compile(r"\d{9}_c\d+\.png")
HTML_FILE_RE = re.compile(r"index(-\d{5})?\.html")
#: A temporary file of an atomic write of one of the files above (``.NAME.XXXXXXXX.tmp``, mkstemp's 8 characters).
TEMPORARY_RE = re.compile(r"\.(config\.json|manifest\.json|index(-\d{5})?\.html|shard-\d{6}\.npz(\.sha256)?"
                          r"|\d{9}_c\d+\.png|\.igcam-explain\.owner)\.[A-Za-z0-9_]{8}\.tmp")


def shard_name(k: int) -> str:
    """Relative path of shard k."""
    return f"{SHARD_DIR}/shard-{k:06d}.npz"


def checksum_name(k: int) -> str:
    """Relative path of shard k's SHA-256 sidecar."""
    return shard_name(k) + CHECKSUM_SUFFIX


def overlay_name(index: int, target: int, shard_size: int) -> str:
    """Relative path of the overlay PNG of one (image, target) row."""
    return f"{OVERLAY_DIR}/{index // shard_size:06d}/{index:09d}_c{target}.png"


def html_page_name(page: int) -> str:
    return "index.html" if page == 0 else f"index-{page:05d}.html"
