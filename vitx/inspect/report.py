"""A self-contained HTML report: sections of text, tables and images.

Images are written as PNG files beside the page *and* embedded as data URIs, so the one
HTML file opens offline in any browser, can be mailed around alone, and the PNGs stay
usable in papers. Plain HTML and CSS; JavaScript only when a section brings its own
(the interactive explorer, `vitx inspect --interactive`), inline, never from a network.
"""
import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from ..errors import printable
from ..imaging import png_bytes, save_png

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #446; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; } figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; max-width: 60em; } img { image-rendering: pixelated; }
table { border-collapse: collapse; margin: 0.5em 0 1em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #eef; } p.note { color: #555; }
.vx-row { display: flex; flex-wrap: wrap; gap: 1.5em; } .vx-panel { display: inline-block; }
.vx-canvas { display: block; cursor: crosshair; width: 224px; image-rendering: pixelated; border: 1px solid #ccc; }
.vx-title { font-weight: 600; margin-bottom: 0.3em; } .vx-controls { margin-top: 0.3em; font-size: 0.85em; max-width: 26em; }
.vx-control { margin-right: 0.6em; display: inline-block; } .vx-caption { font-size: 0.85em; color: #555; max-width: 26em; }
"""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "item"


@dataclass
class Section:
    title: str
    parts: List[str] = field(default_factory=list)
    images: List[tuple] = field(default_factory=list)
    used: set = field(default_factory=set)  # file names taken in the whole report

    def text(self, text: str, css_class: str = "") -> "Section":
        attr = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")
        return self

    def raw(self, markup: str) -> "Section":
        """Trusted HTML (and inline script) written by vitx itself, e.g. the explorer."""
        self.parts.append(markup)
        return self

    def heading(self, text: str) -> "Section":
        self.parts.append(f"<h3>{html.escape(text)}</h3>")
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence]) -> "Section":
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def image(self, rgb: np.ndarray, caption: str, name: str) -> "Section":
        """An (H, W, 3) uint8 RGB image, saved as `name`.png and embedded."""
        data = base64.b64encode(png_bytes(rgb, f"image {name!r}")).decode("ascii")
        stem, number = slug(name), 1
        while (f"{stem}-{number}" if number > 1 else stem) in self.used:
            number += 1
        filename = (f"{stem}-{number}" if number > 1 else stem) + ".png"
        self.used.add(filename[:-4])
        self.images.append((filename, rgb))
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{data}" width="{rgb.shape[1]}" height="{rgb.shape[0]}" '
            f'alt="{html.escape(caption)}" data-file="{filename}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
        return self


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The same table for a results.md file (the CLI's evaluate and study write one)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ReportPath(type(Path())):
    """The path of a written report (a `pathlib.Path` in every way) that Jupyter shows
    inline: `_repr_html_` embeds the page in a sandboxed iframe (scripts allowed, so the
    explorer works; the page cannot reach the notebook)."""

    height = 720

    def _repr_html_(self) -> str:
        page = self.read_text(encoding="utf-8")
        return (f'<div><a href="{html.escape(self.as_uri())}">{html.escape(str(self))}</a></div>'
                f'<iframe sandbox="allow-scripts" style="width:100%;height:{self.height}px;border:1px solid #ccc" '
                f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


class Report:
    """Collect sections, then `write(folder)` -> folder/report.html + the PNGs."""

    def __init__(self, title: str, intro: str = ""):
        self.title = title
        self.intro = intro
        self.sections: List[Section] = []
        self._used: set = set()

    def section(self, title: str) -> Section:
        section = Section(title, used=self._used)
        self.sections.append(section)
        return section

    def html(self) -> str:
        nav = " ".join(f'<a href="#{slug(s.title)}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(
            f'<section id="{slug(s.title)}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
            for s in self.sections
        )
        intro = f"<p>{html.escape(self.intro)}</p>" if self.intro else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
                f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(self.title)}</h1>{intro}<nav>{nav}</nav>\n"
                f"{body}\n</body></html>\n")

    def write(self, folder: Union[str, Path], name: str = "report.html") -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for section in self.sections:
            for filename, rgb in section.images:
                save_png(folder / filename, rgb)
        path = ReportPath(folder / name)
        path.write_text(printable(self.html()), encoding="utf-8")  # a non-UTF-8 file name: escaped
        return path
