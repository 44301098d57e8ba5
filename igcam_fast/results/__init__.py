"""The output folders of ``igcam-fast explain``: their format, the shard writer and the reader.

    from igcam_fast.results import open_results
    results = open_results("out/")            # reads manifest.json only
    len(results)                              # number of maps (one per image and target)
    rec = results[0]                          # Record(index, id, target, score, prob, map)
    results.find("cats/001.jpg")              # every record of one image
    for shard in results.shards:              # shard by shard; each .npz is read on access
        shard.maps                            # (rows, h, w) float16 numpy array
    results.verify()                          # [] when every shard matches its recorded SHA-256

The format is described in docs/explain.md. Everything is plain numpy ``.npz`` (read with
``allow_pickle=False``) and JSON; nothing is ever unpickled.

    layout.py    file names and constants          atomic.py    atomic writes (umask permissions)
    shards.py    shard writer, checksum, verify    manifest.py  manifest.json from the shards
    reader.py    open_results, Results, Shard, Record
"""

from .atomic import (atomic_write, atomic_write_json, atomic_write_npz, atomic_write_text, current_umask,
                     remove_stale_temporaries, sha256_file)
from .layout import (CHECKSUM_SUFFIX, CONFIG, FORMAT, HTML_MARKER, LOCK_FILE, MANIFEST, OVERLAY_DIR, OWNER_FILE,
                     SHARD_DIR, SHARD_IMAGE_FIELDS, SHARD_ROW_FIELDS, TEMPORARY_RE, VERSION, checksum_name, html_page_name,
                     overlay_name, shard_name)
from .manifest import write_manifest
from .reader import Record, Results, Shard, open_results, scan_shards
from .shards import (ShardBuffer, ShardExpectation, ShardStamp, load_npz, read_checksum, verify_shard,
                     write_shard)

__all__ = [
    "open_results", "Results", "Shard", "Record", "scan_shards",
    "write_shard", "verify_shard", "write_manifest", "ShardBuffer", "ShardExpectation", "ShardStamp",
    "load_npz", "read_checksum", "sha256_file",
    "atomic_write", "atomic_write_json", "atomic_write_npz", "atomic_write_text", "remove_stale_temporaries",
    "current_umask",
    "FORMAT", "VERSION", "CONFIG", "MANIFEST", "SHARD_DIR", "OVERLAY_DIR", "LOCK_FILE", "OWNER_FILE",
    "CHECKSUM_SUFFIX", "HTML_MARKER", "SHARD_IMAGE_FIELDS", "SHARD_ROW_FIELDS", "TEMPORARY_RE",
    "shard_name", "checksum_name", "overlay_name", "html_page_name",
]
