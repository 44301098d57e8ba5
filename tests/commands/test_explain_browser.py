"""The HTML index of ``explain --overlays`` in a real browser: headless Chromium opens it, every
<img> loads (decoded, non-zero size), and a screenshot of the page is not blank.

Needs the ``chromium`` binary (Debian: ``apt-get install --no-install-recommends chromium``;
.ci/run installs it); skipped with that reason where it is absent.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcam_fast.commands.cli import main

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

# Appended to a copy of index.html in the same folder (so its relative <img src> resolve the same):
# waits until every image has finished (or 8 s of the page's time), then writes what each did into the DOM.
CHECK_SCRIPT = """<script>
function report() {
  const imgs = [...document.images];
  const done = imgs.every(i => i.complete);
  if (!done && performance.now() < 8000) { setTimeout(report, 50); return; }
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify(imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                  width: i.naturalWidth, height: i.naturalHeight})));
  document.body.appendChild(out);
}
window.addEventListener('load', report);
</script>"""


def chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    """explain --overlays on eight tiny images of different sizes with the tiny CNN."""
    root = tmp_path_factory.mktemp("browser")
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        h, w = 24 + 3 * i, 40 - 2 * i
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    out = root / "out"
    main(["explain", "--data", str(data), "--model", "tiny_models:tiny_cnn", "--out", str(out), "--workers", "0",
          "--steps", "4", "--overlays"])
    return out


def test_every_image_of_the_index_loads_in_chromium(explained, tmp_path):
    index = explained / "index.html"
    html = index.read_text()
    expected = len(re.findall(r"<img\b", html))
    assert expected == 8
    check = explained / "index-browser-check.html"
    check.write_text(html + CHECK_SCRIPT)
    proc = chromium("--window-size=1400,2400", "--virtual-time-budget=15000", "--allow-file-access-from-files",
                    "--dump-dom", check.as_uri(), profile=tmp_path / "profile")
    found = re.search(r'<pre id="img-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium did not run the check (exit {proc.returncode}): {proc.stderr[-2000:]}"
    images = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == expected
    broken = [im for im in images if not (im["complete"] and im["width"] > 0 and im["height"] > 0)]
    assert not broken, broken
    for im in images:  # the files the page points at are the overlays the command wrote
        assert (explained / im["src"]).is_file()


def test_a_screenshot_of_the_index_is_not_blank(explained, tmp_path):
    shot = tmp_path / "index.png"
    proc = chromium("--window-size=900,600", "--virtual-time-budget=10000", f"--screenshot={shot}",
                    (explained / "index.html").as_uri(), profile=tmp_path / "profile")
    assert shot.is_file(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (600, 900)
    coloured = (pixels.max(axis=2).astype(int) - pixels.min(axis=2)) > 60  # the jet overlays, not text or white
    assert coloured.mean() > 0.02, "the overlays did not render"

