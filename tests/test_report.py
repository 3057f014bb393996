"""The HTML report: every section a loss fit can have, from the command line, and a render in a
real browser (headless Chromium, where installed)."""

import base64
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayescale.cli import main
from bayescale.diagnostics import SamplerWarning

ROOT = Path(__file__).resolve().parents[1]


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot", ROOT / "docs" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(small_fit, tmp_path_factory):
    """A report of the shared small fit with targets, a backtest and a design, made by the CLI."""
    folder = tmp_path_factory.mktemp("report")
    saved = small_fit.save(folder / "fit.nc")
    sizes = np.geomspace(5e7, 1e9, 4)
    pd.DataFrame({"params": np.repeat(sizes, 3), "tokens": np.repeat(sizes, 3) * np.tile([10.0, 20.0, 40.0], 4)}).to_csv(folder / "candidates.csv", index=False)
    argv = [
        "report", saved, "--out", folder / "report.html",
        "--params", 7e10, 1e12, "--tokens", 1.4e12, 2e13,
        "--backtest-cutoff", 1e20, "--num-chains", 2, "--num-warmup", 200, "--num-samples", 200,
        "--candidates", folder / "candidates.csv", "--budget-flops", 1e20,
    ]
    with warnings.catch_warnings():
        # The backtest's short refit may warn; the report must then say so (checked below).
        warnings.simplefilter("ignore", SamplerWarning)
        assert main([str(a) for a in argv]) == 0
    return folder / "report.html"


def test_report_has_every_section_with_embedded_figures(report):
    text = report.read_text(encoding="utf-8")
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings == [
        "Data and posterior", "Parameters and diagnostics", "Posterior pairs of the exponents", "Compute-optimal frontier",
        "Predictions at your targets", "Backtest: would it have been right?", "Next runs to train", "Provenance",
    ]
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 5  # data, pairs, frontier, backtest, design
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    # Self-contained: nothing is fetched when the file is opened.
    assert not re.search(r'(src|href)="(?!data:)', text)


def test_report_says_what_to_distrust_in_words(report):
    text = report.read_text(encoding="utf-8")
    # The 1e12-parameter target is ~4e4 times the largest fitted compute: flagged in the box and its row.
    box = text[text.index('class="box'):text.index("</div>")]
    assert "extrapolate more than 100x beyond the largest fitted compute" in box
    assert text.count('<tr class="flag">') >= 1
    assert "70B" in text and "1.4T" in text  # readable scales, not 7e+10
    # The short backtest refit (2 chains x 200 draws) has R-hat above 1.01 with this seed: said in words.
    assert "Backtest fit: R-hat" in box and "Try more warm-up" in box


def test_report_without_a_target_for_the_design_names_the_fix(small_fit, tmp_path, capsys):
    saved = small_fit.save(tmp_path / "fit.nc")
    pd.DataFrame({"params": [1e8], "tokens": [2e9]}).to_csv(tmp_path / "c.csv", index=False)
    assert main(["report", str(saved), "--candidates", str(tmp_path / "c.csv"), "--budget-flops", "1e20"]) == 2
    assert "--candidates needs --budget-flops and a target" in capsys.readouterr().err


@pytest.mark.skipif(_screenshot_module().chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    png = _screenshot_module().screenshot(report, tmp_path / "report.png")
    pixels = np.asarray(Image.open(png).convert("L"))
    # Five figures and eight tables laid out in a 1200 px wide window run to several thousand
    # pixels; a page that failed to render (blank, or an error page) is a few hundred.
    assert pixels.shape[1] == 1200 and pixels.shape[0] > 3000
    assert (pixels < 128).mean() > 0.01  # text and plotted ink, not an empty page
