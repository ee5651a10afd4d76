"""Sphinx configuration: a Markdown (MyST) user guide and an API reference generated from the packages' docstrings.

Build: ``nox -s docs`` (``sphinx-build -W --keep-going -b html docs docs/_build``; warnings are errors), which then
runs ``python docs/check_pages.py`` to open every page in headless Chromium and fail on cut-off code or tables.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "fabric"
author = "the fabric authors"
copyright = "the fabric authors"
release = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "package_api",  # docs/_ext/package_api.py: one API page per package from its __all__
    "sphinx_click",  # cli.md: the reference of the `fabric` command, read from its click definitions
    "click_plain_text",  # docs/_ext/click_plain_text.py: the commands' help texts shown as the plain text they are
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_static"]

# MyST: ```{note} fences, :::-fences, and headings as link targets (#launching) up to level 3
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# autodoc: what the public names document themselves
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # an override without its own docstring is documented on its base class
autodoc_class_signature = "mixed"
# Fabric's signature names the types of `accelerator` and `strategy` instead of spelling out every
# built-in strategy name in one 15-line signature (the guide's strategy and precision tables list them)
autodoc_type_aliases = {name: name for name in ("AcceleratorFlag", "StrategyFlag")}

# napoleon: the packages write Google-style docstrings ("Args:")
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# furo: a maintained theme with a light and a dark mode, a search box and a layout that works on phones
html_theme = "furo"
html_title = "fabric"
html_static_path = ["_static"]
# code blocks wrap their long lines and tables scroll inside the page: nothing is cut off at any width
# (docs/check_pages.py checks the built pages in a headless browser)
html_css_files = ["fabric.css"]
pygments_style = "friendly"
pygments_dark_style = "monokai"
