"""The generated part of the docs: methods, models and the API, read from the code at build time.

Three directives, used by the pages under docs/reference/:

- ``.. vitx-methods::`` every explainer the registry holds (built-ins and installed plugins):
  its summary, paper, plugin, what the core records for it (`Explainer.requirements()`), every
  `Option` (type, default, choices, older spellings, help) and its module's docstring;
- ``.. vitx-models::`` the compatibility matrix of tests/compat_rows.py, the rows that
  tests/test_compat.py checks: the per-family table and one line per checked configuration;
- ``.. vitx-api::`` an autodoc entry for every name in `vitx.__all__`.

The text is made by plain functions (`methods_rst`, `models_rst`, `api_rst`) so that
tests/test_docs.py can check it without building the site. Metadata strings are escaped, so a
summary cannot break the page (the build runs with warnings as errors).
"""
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def escape(text) -> str:
    """Plain text as reStructuredText that renders as itself."""
    text = str(text)
    for char in "\\*`_|[]":
        text = text.replace(char, "\\" + char)
    inner = " ".join(text.split())
    return (" " if text[:1].isspace() else "") + inner + (" " if text[-1:].isspace() and inner else "")


def literal(text) -> str:
    """An inline literal (``text``) that survives backquotes in the value."""
    text = " ".join(str(text).split())
    return f":code:`{text.replace(chr(96), chr(39))}`" if text else "(empty)"


def heading(text: str, char: str) -> list:
    return [text, char * len(text), ""]


def _type_name(kind) -> str:
    return getattr(kind, "__name__", None) or str(kind)


def _option_rows(options) -> list:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 18 10 12 20 40", "",
             "   * - option (library / CLI flag)", "     - type", "     - default", "     - choices or range",
             "     - meaning"]
    for o in options:
        flag = "--" + o.name.replace("_", "-")
        limits = ", ".join(map(str, o.choices)) if o.choices else ""
        if o.minimum is not None or o.maximum is not None:
            limits = f"{'' if o.minimum is None else o.minimum} .. {'' if o.maximum is None else o.maximum}"
        also = f" (also {', '.join(o.aliases)})" if o.aliases else ""
        default = o.default if isinstance(o.default, (str, int, float, bool, type(None))) else _type_name(o.default)
        lines += [f"   * - {literal(o.name)} / {literal(flag)}{escape(also)}", f"     - {escape(_type_name(o.type))}",
                  f"     - {literal(default)}", f"     - {escape(limits) or '-'}", f"     - {escape(o.help)}"]
    return lines + [""]


def methods_rst(methods=None) -> str:
    """One section per registered explainer, in name order (`vitx.list_methods()`)."""
    if methods is None:
        import vitx

        methods = vitx.list_methods()
    lines = [f"{len(methods)} methods are registered in this build.", ""]
    for name, (cls, plugin) in methods.items():
        lines += [f".. _method-{name}:", ""] + heading(name, "-")
        lines += [escape(cls.summary) or "(no summary)", ""]
        facts = [("plugin", escape(plugin)), ("paper", escape(cls.paper) or "-"),
                 ("class", literal(f"{cls.__module__}.{cls.__qualname__}")),
                 ("records", ", ".join(literal(r) for r in sorted(cls.requirements()))),
                 ("uses recorded gradients", "yes" if cls.uses_gradients() else "no"),
                 ("explains hierarchical stage layers", "yes" if getattr(cls, "windows", False) else "no")]
        lines += [f":{key}: {value}" for key, value in facts] + [""]
        if cls.options:
            lines += _option_rows(cls.options)
        else:
            lines += ["No options.", ""]
        doc = inspect.getdoc(sys.modules.get(cls.__module__))
        if doc:
            lines += [f"From {literal(cls.__module__)}:", "", ".. code-block:: text", ""]
            lines += ["   " + line if line else "" for line in doc.splitlines()] + [""]
    return "\n".join(lines)


def compat_rows():
    """The rows of tests/compat_rows.py (it imports its helpers from tests/)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import compat_rows

    return compat_rows


def models_rst(module=None) -> str:
    """The compatibility matrix: the table by family, then every checked configuration."""
    module = module or compat_rows()
    rows = module.ROWS
    refused = "refused (use gradcam, integrated_gradients, occlusion, rise)"
    lines = ["By family", "---------", "", ".. list-table::", "   :header-rows: 1", "   :widths: 12 22 26 22 30", "",
             "   * - Framework", "     - Family", "     - Attention methods", "     - How loaded", "     - Notes"]
    seen = {}
    for row in rows:
        if row.readme:
            seen.setdefault((row.framework, row.family), row)
    for (framework, family), row in seen.items():
        methods = ", ".join(row.methods) if row.methods else refused
        lines += [f"   * - {escape(framework)}", f"     - {escape(family)}", f"     - {escape(methods)}",
                  f"     - {_loaded(row.loaded)}", f"     - {escape(row.notes) or '-'}"]
    lines += ["", "Every checked configuration", "---------------------------", "",
              f"{len(rows)} configurations, each a test of tests/test_compat.py (the test id is the first column).", "",
              ".. list-table::", "   :header-rows: 1", "   :widths: 26 12 20 10 12 20", "",
              "   * - configuration", "     - framework", "     - family", "     - input", "     - prefix tokens",
              "     - attention methods"]
    for row in rows:
        methods = ", ".join(row.methods) if row.methods else "refused"
        lines += [f"   * - {literal(row.name)}", f"     - {escape(row.framework)}", f"     - {escape(row.family)}",
                  f"     - {row.size[0]} x {row.size[1]}", f"     - {escape(', '.join(row.prefix)) or '-'}",
                  f"     - {escape(methods)}"]
    return "\n".join(lines + [""])


def _loaded(text: str) -> str:
    """'any timm name, e.g. `--model x`': the backquoted parts as literals, the rest escaped."""
    parts = text.split("`")
    return "".join(literal(p) if i % 2 else escape(p) for i, p in enumerate(parts) if p)


def api_names() -> list:
    import vitx

    return sorted(vitx.__all__, key=str.lower)


def api_rst() -> str:
    import vitx

    lines = []
    for name in api_names():
        obj = getattr(vitx, name)
        if inspect.isclass(obj):
            lines += [f".. autoclass:: vitx.{name}", "   :members:", ""]
        elif callable(obj):
            lines += [f".. autofunction:: vitx.{name}", ""]
        else:
            lines += [f".. autodata:: vitx.{name}", ""]
    return "\n".join(lines)


def setup(app):
    from docutils.parsers.rst import Directive
    from docutils.statemachine import StringList
    from docutils import nodes

    def directive(make):
        class Generated(Directive):
            has_content = False

            def run(self):
                container = nodes.container()
                source = self.state_machine.input_lines.source(self.lineno - self.state_machine.input_offset - 1)
                self.state.nested_parse(StringList(make().splitlines(), source=source), self.content_offset,
                                        container, match_titles=True)
                return container.children

        return Generated

    app.add_directive("vitx-methods", directive(methods_rst))
    app.add_directive("vitx-models", directive(models_rst))
    app.add_directive("vitx-api", directive(api_rst))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
