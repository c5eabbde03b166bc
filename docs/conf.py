"""Sphinx configuration of the vitx docs (`make docs`: a strict build, warnings are errors).

Pages are Markdown (MyST); the reference is generated from the code at build time:
methods and models by docs/_ext/vitx_reference.py, the CLI by sphinx-click, the API by autodoc.
Nothing is fetched from the network: the built-in alabaster theme, no CDN, no intersphinx.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "vitx"
author = "the vitx authors"
copyright = "the vitx authors"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_click",
    "vitx_reference",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
default_role = "code"  # `name` in docstrings reads as code, as in the Markdown pages
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
html_theme = "alabaster"
html_title = "vitx"
html_theme_options = {"fixed_sidebar": True, "show_relbars": True}
html_static_path = []
