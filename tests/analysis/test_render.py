"""report.html renders in a real browser: every image loads (headless Chromium; skipped where none is installed)."""

import re
import shutil
import subprocess

import pytest

from cen.analysis.report import write_report

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")

# After the load event: how many <img> decoded to a picture, and which did not.
CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "image-check";
  out.textContent = `IMAGES ${imgs.length} BROKEN ${broken.length} [${broken.join(",")}]`;
  document.body.appendChild(out);
});
</script></body>"""


def _check(html_path, tmp_path):
    probe = html_path.with_name("render_check.html")
    probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", CHECK), encoding="utf-8")
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False).stdout
    found = re.search(r"IMAGES (\d+) BROKEN (\d+) \[([^\]]*)\]", dom)
    assert found, f"the check script did not run; DOM starts {dom[:300]!r}"
    return int(found.group(1)), int(found.group(2)), found.group(3)


def test_every_image_loads(make_run, tmp_path):
    run = make_run()
    html_path, _ = write_report(run)
    expected = len(re.findall(r"<img ", html_path.read_text()))
    total, broken, names = _check(html_path, tmp_path)
    assert (total, broken) == (expected, 0), names
    # the check can fail: a missing figure is reported as broken
    (html_path.parent / "alpha.png").unlink()
    total, broken, names = _check(html_path, tmp_path)
    assert broken == 1 and names == "alpha.png"
