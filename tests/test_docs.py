"""The documentation: `make docs` builds (offline, warnings as errors, every public function
with a numpydoc docstring and its parameters documented), and the API reference lists every
public name."""

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bayescale as bs

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Modules whose public functions are part of the API besides ``bayescale`` itself.
PUBLIC_MODULES = ("bayescale.plots", "bayescale.report", "bayescale.datasets")


def _public_names() -> set[str]:
    names = {f"bayescale.{n}" for n in bs.__all__ if n not in ("__version__", "datasets")}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module_name:
                names.add(f"{module_name}.{name}")
    return names


def _documented_names() -> set[str]:
    """Names the API page documents: auto* directives (under the current module), and the
    ``:members:`` lists of its automodule blocks (which may continue over several lines)."""
    text = (DOCS / "api.rst").read_text()
    names, module = set(), "bayescale"
    for line in text.splitlines():
        if match := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = match.group(1)
        elif match := re.match(r"\.\. auto(?:function|class|exception):: (\S+)", line):
            target = match.group(1)
            names.add(target if target.startswith("bayescale.") else f"{module}.{target}")
    for module_name, members in re.findall(r"automodule:: (\S+)\n   :members: ([^\n]+(?:\n {13}[^\n]+)*)", text):
        names.update(f"{module_name}.{n.strip()}" for n in members.replace("\n", ",").split(",") if n.strip())
    return names


def test_every_public_name_is_in_the_api_reference():
    missing = sorted(_public_names() - _documented_names())
    assert not missing, f"add to docs/api.rst: {missing}"


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None, reason="needs the docs extra (pip install -e '.[docs]')")
def test_docs_build_offline_with_warnings_as_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "html" / "api.html").read_text().count('class="sig-name descname"') >= len(_public_names())
