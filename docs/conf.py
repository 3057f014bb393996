"""Sphinx configuration: `make docs` builds docs/_build/html offline, warnings as errors."""

import bayescale

project = "bayescale"
author = "the bayescale developers"
copyright = "2026, the bayescale developers"
release = version = bayescale.__version__

extensions = [
    "myst_parser",  # the narrative pages are Markdown
    "numpydoc",  # docstrings are numpydoc
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3  # links to a page's sections, e.g. concepts.md#backtests

# Offline: no intersphinx inventories, no remote images; the theme's external links are plain hrefs.
html_theme = "pydata_sphinx_theme"
html_title = f"bayescale {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_last_updated_fmt = None

autosummary_generate = False
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types in words
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # members are listed by autodoc's :members: once, not twice
numpydoc_class_members_toctree = False
# Fail the build on a public object without a docstring (GL08) or with an undocumented
# parameter (PR01): every public function appears in the API reference with its parameters.
numpydoc_validation_checks = {"GL08", "PR01"}
# Result objects (built by fit, backtest, suggest_runs, ...; not by users) document their
# fields as Attributes, which PR01 would ask for again as constructor parameters.
numpydoc_validation_exclude = {r"^bayescale\.(Fit|DownstreamFit|Diagnostics|Backtest|Design|ModelSpec)$"}
