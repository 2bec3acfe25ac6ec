"""Sphinx configuration for the kernel-iostream documentation.

Built by ``tox -e docs``: ``sphinx-build -W -b html docs docs/_build/html``
(warnings are errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package from this checkout (src/ layout), not an installed copy.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import iostream  # noqa: E402

# -- Project -------------------------------------------------------------------

project = "kernel-iostream"
author = "kernel-iostream developers"
copyright = "kernel-iostream developers"  # noqa: A001
release = iostream.__version__
version = release

# -- General -------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False

# MyST: anchors for headings down to level 3, so pages can link to sections.
myst_heading_anchors = 3

# -- autodoc -------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# -- HTML ----------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = "kernel-iostream"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
