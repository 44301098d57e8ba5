"""The settings fingerprint: everything that changes a map, hashed, so a resume never mixes runs."""

from __future__ import annotations

import hashlib
import json

import torch

from igcam_fast.results import sha256_file


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 (32 hex digits) of a model's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def file_hash(path) -> str:
    """SHA-256 (32 hex digits) of a file's bytes (a label file: part of the settings)."""
    return sha256_file(path)[:32]


def fingerprint_of(settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def describe_differences(old: dict, new: dict) -> str:
    """'key: old -> new; ...' for the (first eight) settings that differ."""
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
