"""The QA report page as a person sees it: rendered by headless Chromium (Debian's `chromium`,
installed by .ci/run), with every resource it references loaded and a screenshot that is not blank.
Marked `browser`; run by name (`pytest -m browser`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import LPS_AFFINE, synthetic_image, write_case

from brats_cli.report import write_report

pytestmark = pytest.mark.browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH: install Debian's chromium package (.ci/run does)")


class _References(HTMLParser):
    """Every URL the page would load or link to (img src, a href, link href, script src)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append(value)


def _chromium_run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; a local page needs none.
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={home}", "--enable-logging=stderr", "--v=0", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={"HOME": str(home)})


_PROBE = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src"));
  document.body.setAttribute("data-images", document.images.length);
  document.body.setAttribute("data-broken", broken.join(" "));
  const rows = () => [...document.querySelectorAll("table.sortable tbody tr")].map(r => r.cells[1].dataset.v);
  document.body.setAttribute("data-order", rows().join(" "));
  [...document.querySelectorAll("table.sortable th")].find(th => th.textContent === "WT ml").click();
  document.body.setAttribute("data-sorted", rows().join(" "));
});
</script>"""


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory) -> Path:
    """A report over label maps of two synthetic cases with their images, and one corrupt map."""
    root = tmp_path_factory.mktemp("browser")
    inp, out = root / "in", root / "out"
    out.mkdir()
    for index, case_id in enumerate(("BraTS2021_00001", "BraTS2021_00002")):
        centre, radius = (120, 110 + 10 * index, 80), (18 + 6 * index, 14, 12)
        write_case(inp, case_id, synthetic_image(seed=index, tumour_centre=centre, tumour_radius=radius))
        grid = np.indices((240, 240, 155))
        distance = sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip(centre, radius, strict=True)))
        labels = np.where(distance <= 1, 2, 0) + np.where(distance <= 0.4, 2, 0)  # ED shell, ET core
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), LPS_AFFINE), out / f"{case_id}.nii.gz")
    (out / "BraTS2021_00003.nii.gz").write_bytes(b"not a NIfTI file")
    return write_report(out, inp).folder


def test_the_page_renders_with_every_resource_loaded_and_is_not_blank(report_folder, tmp_path):
    index = report_folder / "index.html"
    html = index.read_text()
    parser = _References()
    parser.feed(html)
    assert parser.urls, "the page references its pictures"
    for url in parser.urls:
        assert not re.match(r"^[a-z]+:|^//", url), f"{url}: the page must load nothing from elsewhere"
        assert (report_folder / url).is_file(), f"{url}: referenced but not in the report folder"

    # The browser's own word on what loaded: a copy of the page (beside it, so the same relative
    # links) with a probe that records, once everything loaded, every image that did not decode.
    probe = report_folder / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE + "</body>"))
    try:
        dom = _chromium_run("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), home=tmp_path / "dom")
    finally:
        probe.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(
        r'data-images="(\d+)" data-broken="([^"]*)" data-order="([^"]*)" data-sorted="([^"]*)"', dom.stdout
    )
    assert loaded is not None, "the probe did not run: the page's load event never came"
    assert int(loaded[1]) == 2 and loaded[2] == "", f"images that did not load: {loaded[2]}"
    # Flagged first (the corrupt map); a click on "WT ml" sorts by volume, the blank one last.
    assert loaded[3].split() == ["BraTS2021_00003", "BraTS2021_00001", "BraTS2021_00002"]
    assert loaded[4].split() == ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"]
    # The DOM after scripts ran: the table holds a row per case, the failed one with its reason.
    assert dom.stdout.count("<tr class=") == 3
    assert "BraTS2021_00003" in dom.stdout and "not a readable NIfTI file" in dom.stdout

    screenshot = tmp_path / "page.png"
    shot = _chromium_run(f"--screenshot={screenshot}", "--window-size=1280,900", index.as_uri(), home=tmp_path / "s")
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    # Not blank: a white page varies by nothing; text, tables and brain pictures vary a lot, and the
    # thumbnails put dark pixels and the label colours on it.
    assert pixels.std() > 0.1
    assert (pixels.mean(axis=-1) < 0.2).mean() > 0.01  # dark: the thumbnails' background and text
    green = (pixels[..., 1] > 0.5) & (pixels[..., 0] < 0.4) & (pixels[..., 2] < 0.4)
    assert green.sum() > 50  # ED in the thumbnails
