"""Render an HTML report in headless Chromium and save a full-page screenshot.

Used for the demo report's picture in the docs (``docs/_static/demo-report.png``) and by
``tests/test_report.py`` to check that a report renders in a real browser::

    make demo
    python docs/screenshot.py demo-output/report.html docs/_static/demo-report.png

Needs Debian's ``chromium`` (``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

#: Browser window width in CSS pixels: the report's column is 1040 px wide plus margins.
WIDTH = 1200
#: Tall enough for any report; the blank space below the page is cropped off.
HEIGHT = 12000


def chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, *, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Render ``html`` in headless Chromium and write the page, cropped to its content, to ``png``."""
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install it (apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: containers (CI, root) have no user namespaces for the sandbox.
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                   f"--window-size={width},{height}", f"--screenshot={png.resolve()}", html.resolve().as_uri()]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(png).convert("RGB")
    pixels = np.asarray(image)
    rows = np.flatnonzero((pixels < 250).any(axis=(1, 2)))
    bottom = min(pixels.shape[0], int(rows.max()) + 40) if rows.size else pixels.shape[0]
    # 256 colours keep text and bands crisp at a third of the size of a full-colour PNG.
    page = image.crop((0, 0, pixels.shape[1], bottom))
    page.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(png, optimize=True)
    return png


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report to render")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    options = parser.parse_args(args)
    print(screenshot(options.html, options.png))


if __name__ == "__main__":
    main()
