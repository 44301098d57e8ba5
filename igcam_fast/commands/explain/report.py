"""What people look at: one overlay PNG per map and the HTML pages of thumbnails (``--overlays``)."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import torch

from igcam_fast import results as rio

from .folder import is_own_page

PER_PAGE = 500
_STYLE = ("body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;width:160px;"
          "vertical-align:top;font-size:11px;word-break:break-all}img{width:160px;height:160px;"
          "image-rendering:auto}nav{margin:.5em 0}")


def write_overlay(out: Path, image_u8: torch.Tensor, m: np.ndarray, index: int, target: int, shard_size: int) -> None:
    """The overlay PNG of one map over its (3, S, S) uint8 image, written atomically."""
    from igcam_fast.images.overlay import overlay

    picture = overlay(image_u8.permute(1, 2, 0).numpy(), m)
    rio.atomic_write(out / rio.overlay_name(index, target, shard_size), lambda f: picture.save(f, format="PNG"))


def printable(text) -> str:
    """A file name as text for a page: bytes that are not UTF-8 (kept as surrogates) become U+FFFD."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _nav(p: int, pages: int) -> str:
    nav = []
    if p > 0:
        nav.append(f'<a href="{rio.html_page_name(p - 1)}">&larr; previous</a>')
    nav.append(f"page {p + 1} of {pages}")
    if p + 1 < pages:
        nav.append(f'<a href="{rio.html_page_name(p + 1)}">next &rarr;</a>')
    return " · ".join(nav)


def write_html(out: Path, manifest: dict, class_names, log, per_page: int = PER_PAGE) -> int:
    """Pages of thumbnails for the maps of ``manifest``; returns how many were written.

    A page name that exists but was not written by this command is left alone (and said so).
    """
    results = rio.Results(out, manifest)
    rows = len(results)
    pages = max(1, math.ceil(rows / per_page))
    ids, idx, tgt, pr = results.ids, results.index, results.targets, results.probs
    shard_size = manifest["settings"]["shard_size"]
    s = manifest["settings"]
    points = f"tol={s['tol']}" if s.get("tol") is not None else f"m={s['steps']}"
    head = (f"{html.escape(printable(s['model']))} · {html.escape(s['layer'])} · {s['method']} ({s['rule']}, "
            f"{points}) · {manifest['totals']['maps']} maps, {manifest['totals']['failed']} unreadable")
    written = 0
    for p in range(pages):
        path = out / rio.html_page_name(p)
        if path.exists() and not is_own_page(path):
            log(f"not writing {path}: a file of that name exists that igcam-fast explain did not write")
            continue
        tiles = []
        for r in range(p * per_page, min(rows, (p + 1) * per_page)):
            c = int(tgt[r])
            cname = class_names[c] if class_names and c < len(class_names) else str(c)
            src = rio.overlay_name(int(idx[r]), c, shard_size)
            tiles.append(f'<figure><a href="{src}"><img loading="lazy" src="{src}" alt=""></a><figcaption>'
                         f'{html.escape(printable(ids[r]))}<br>{html.escape(printable(cname))} · {float(pr[r]):.2f}'
                         "</figcaption></figure>")
        nav = _nav(p, pages)
        doc = (f"<!doctype html><meta charset='utf-8'>{rio.HTML_MARKER}<title>igcam_fast explain</title>"
               f"<style>{_STYLE}</style><h3>{head}</h3><nav>{nav}</nav>{''.join(tiles)}<nav>{nav}</nav>\n")
        rio.atomic_write_text(path, doc)
        written += 1
    return written
