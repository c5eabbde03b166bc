"""The docs site (docs/, `make docs`): its generated reference covers what the code registers.

The reference pages are generated at build time (docs/_ext/vitx_reference.py); these tests call
the same functions without building the site, so a method or a compat row that the reference
would not list, a method without its documentation (summary, paper), or a page that stops using
the generated text fails here, in seconds. The strict build itself (warnings are errors) is
`make docs`, which `make test` runs before the suite.
"""
import re
import sys
from pathlib import Path

import vitx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import vitx_reference  # noqa: E402


def test_methods_reference_lists_every_registered_method_and_option():
    methods = vitx.list_methods()
    text = vitx_reference.methods_rst()
    assert methods
    for name, (cls, _) in methods.items():
        assert f".. _method-{name}:" in text, f"method {name!r} is missing from the generated reference"
        for option in cls.options:
            assert vitx_reference.literal(option.name) in text, (name, option.name)
    listed = re.findall(r"^\.\. _method-(.+):$", text, re.M)
    assert listed == list(methods), "the reference lists exactly the registered methods, in name order"


def test_every_registered_method_documents_itself():
    """What the generated reference prints: a method without a summary or a paper has no docs."""
    for name, (cls, _) in vitx.list_methods().items():
        assert cls.summary.strip(), f"method {name!r} has no summary"
        assert cls.paper.strip(), f"method {name!r} names no paper"


def test_models_reference_lists_every_compat_row():
    rows = vitx_reference.compat_rows().ROWS
    text = vitx_reference.models_rst()
    for row in rows:
        assert vitx_reference.literal(row.name) in text, f"compat row {row.name!r} is missing from the reference"
        assert vitx_reference.escape(row.family) in text, row.family
    assert f"{len(rows)} configurations" in text


def test_api_reference_documents_every_export():
    text = vitx_reference.api_rst()
    for name in vitx.__all__:
        assert re.search(rf"^\.\. auto(class|function|data):: vitx\.{name}$", text, re.M), name


def test_reference_pages_use_the_generated_text_and_are_in_the_site():
    pages = {"methods": ".. vitx-methods::", "models": ".. vitx-models::", "api": ".. vitx-api::",
             "cli": ".. click:: vitx.cli.main:main"}
    index = (DOCS / "index.md").read_text()
    for page, directive in pages.items():
        assert directive in (DOCS / "reference" / f"{page}.rst").read_text(), page
        assert f"reference/{page}" in index, f"reference/{page} is not in the site's table of contents"


def test_readme_is_short_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)", readme)
    assert links, "the README links into docs/"
    for link in links:
        assert (ROOT / link).exists(), f"README links to a missing file: {link}"
