"""Sphinx configuration: the docs are MyST Markdown; `make docs` builds them with warnings as errors."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "jupyter-tt"
author = "the jupyter-tt maintainers"
extensions = ["myst_parser", "jupyter_tt_reference"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links are checked like any other
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "jupyter-tt"
