"""The report document: sections of paragraphs, tables and figures, as HTML and Markdown.

The HTML page is self-contained (figures embedded as base64 PNG, so it can be e-mailed or
archived as one file); every string is written as text, never as markup. Tables scroll
inside their own box, so the page itself never overflows its width.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
    "color:#222;line-height:1.45}"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}"
    ".tbl{max-width:100%;overflow-x:auto;margin:1em 0}"
    "table{border-collapse:collapse;font-size:.88em}"
    "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top;"
    "max-width:28em;overflow-wrap:break-word}"
    "th{background:#f4f4f4}"
    "p{overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto;margin:1em 0;display:block}"
    ".PASS{background:#dff0d8}.REVIEW{background:#fcf8e3}.FAIL{background:#f2dede}"
)


@dataclass
class Report:
    """Sections of the report, written as Markdown and HTML at the end."""

    title: str
    sections: list[tuple[str, list]] = field(default_factory=list)

    def section(self, heading: str) -> list:
        """Start a section; append str (paragraphs), DataFrames (tables) or Paths (figures)."""
        items: list = []
        self.sections.append((heading, items))
        return items

    def markdown(self, root: Path) -> str:
        """The report as Markdown, figures linked relative to ``root``.

        Every string is written as text, never as markup: no raw HTML (``<tag``, entities)
        survives, table cells cannot break their row, image links cannot leave their
        brackets (see :func:`_md_text`).
        """
        lines = [f"# {_md_line(self.title)}", ""]
        for heading, items in self.sections:
            lines += [f"## {_md_line(heading)}", ""]
            for item in items:
                if isinstance(item, pd.DataFrame):
                    lines += [_markdown_table(item), ""]
                elif isinstance(item, Path):
                    alt = re.sub(r"([\\\[\]])", r"\\\1", _md_line(item.stem))
                    lines += [f"![{alt}]({_url(item, root)})", ""]
                else:
                    lines += [_md_text(item), ""]
        return "\n".join(lines)

    def html(self, root: Path, *, embed: bool = True) -> str:
        """The report as a standalone HTML page; every string is escaped as text.

        ``embed``: figures as base64 ``data:`` URIs (one self-contained file); else linked
        relative to ``root``. Either way a figure outside ``root`` is an error.
        """
        body = [f"<h1>{_html_text(self.title)}</h1>"]
        for heading, items in self.sections:
            body.append(f"<h2>{_html_text(heading)}</h2>")
            body.extend(_html_item(item, root, embed) for item in items)
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_html_text(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
        )


def _html_item(item: object, root: Path, embed: bool) -> str:
    if isinstance(item, pd.DataFrame):
        table = item.to_html(float_format=_format_float, border=0, escape=True)
        if "verdict" in item.columns:  # colour each verdict cell (class names are fixed words)
            table = re.sub(r"<td>(PASS|REVIEW|FAIL)</td>", r'<td class="\1">\1</td>', table)
        return f'<div class="tbl">{table}</div>'
    if isinstance(item, Path):
        link = _url(item, root)
        src = (
            "data:image/png;base64," + base64.b64encode(item.read_bytes()).decode()
            if embed
            else link
        )
        return f'<img src="{_html_text(src)}" alt="{_html_text(item.stem)}">'
    return f"<p>{_html_text(item)}</p>"


def _html_text(value: object) -> str:
    """``value`` as HTML text, safe in element content and in quoted attribute values."""
    return html.escape(str(value), quote=True)


def _md_text(value: object) -> str:
    """``value`` as Markdown text that renders as itself, never as HTML.

    Markdown passes raw HTML through, so a ``<`` that could open a tag, a comment or an
    autolink (``<script``, ``</``, ``<!``, ``<?``) and an ``&`` that could start an entity
    are written as entities, and ``](`` cannot make a link; a plain ``p < 0.05`` stays as
    it is.
    """
    text = re.sub(r"&(?=[#A-Za-z])", "&amp;", str(value))
    text = text.replace("](", "]\\(")  # nor a link: [text](url)
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _md_line(value: object) -> str:
    """:func:`_md_text` on one line (headings, table cells, image text)."""
    return " ".join(_md_text(value).split())


def _md_cell(value: object) -> str:
    """A Markdown table cell: one line, ``|`` escaped so that it cannot end the cell."""
    return _md_line(value).replace("|", "\\|")


def _url(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a percent-encoded URL path (quotes, spaces, ``<``).

    A figure outside the report's folder (``..`` in a name) is an error, not a link.
    """
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError as error:
        msg = f"figure {str(path)!r} lies outside the report folder {str(root)!r}"
        raise ValueError(msg) from error
    return quote(relative.as_posix(), safe="/")


def _format_float(value: float) -> str:
    if not np.isfinite(value):
        return ""
    return f"{value:.3g}"


def _markdown_table(frame: pd.DataFrame) -> str:
    frame = frame.reset_index()
    header = "| " + " | ".join(map(_md_cell, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = [_format_float(v) if isinstance(v, (float, np.floating)) else v for v in row]
        rows.append("| " + " | ".join(map(_md_cell, cells)) + " |")
    return "\n".join([header, rule, *rows])
