"""The report as a document: sections of paragraphs, tables, figures and interactive pages, built
once and written twice, as one self-contained HTML file (every image and page embedded, no
request leaves the file) and as Markdown beside it (figures linked).

A study too large to embed (``embed=False``) gets the same HTML with its figures and pages
linked by relative paths instead, so the report folder travels with the results folder.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cell:
    """A table cell: its text, a mark (``best``, ``below``: significantly below the best,
    ``missing``: no result, ``null``: a null baseline), and the reason behind a missing one."""

    text: str
    mark: str = ""
    reason: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list]  # of Cell or str
    caption: str = ""
    groups: dict[int, str] = field(default_factory=dict)  # row index -> a heading row before it


@dataclass
class Figure:
    path: Path  # a PNG
    caption: str


@dataclass
class Page:
    """A self-contained interactive HTML page (a UMAP map), shown in a frame."""

    path: Path
    caption: str


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "note" | "warn"


@dataclass
class Code:
    text: str
    caption: str = ""


@dataclass
class Details:
    """Blocks shown on demand (a collapsed ``<details>`` in HTML)."""

    summary: str
    blocks: list


@dataclass
class Section:
    id: str
    title: str
    blocks: list
    level: int = 2


@dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def assets(self) -> list[Path]:
        """Every file the document shows (figures and pages)."""
        out = []

        def walk(blocks):
            for b in blocks:
                if isinstance(b, (Figure, Page)):
                    out.append(Path(b.path))
                elif isinstance(b, (Details, Section)):
                    walk(b.blocks)
        walk(self.sections)
        return out


def _cell(c) -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 60px;
color:#222}
h1{margin:24px 0 4px}h2{border-bottom:2px solid #ccc;padding-bottom:3px;margin-top:40px}
.subtitle{color:#555;margin:0 0 12px}
nav{background:#f6f6f6;padding:8px 12px;border-radius:4px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0 4px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0}tr.group td{background:#fafafa;font-weight:600;font-style:italic}
td.best{font-weight:700;background:#e6f4e6}td.below{color:#8a4b00}
td.missing{color:#999;font-style:italic}td.null{color:#555}
.caption{color:#555;font-size:12.5px;max-width:1100px}
.note{color:#555}.warn{background:#fff4e0;border-left:4px solid #e0a030;padding:4px 8px}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:12.5px}
iframe{width:100%;height:560px;border:1px solid #ccc}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}
details{margin:8px 0}summary{cursor:pointer;color:#245}
"""


class _Html:
    def __init__(self, folder: Path, embed: bool):
        self.folder, self.embed = folder, embed

    def link(self, path: Path) -> str:
        return html.escape(Path(os.path.relpath(path, self.folder)).as_posix(), quote=True)

    def block(self, b) -> str:
        if isinstance(b, Para):
            return f'<p class="{b.kind}">{html.escape(b.text)}</p>'
        if isinstance(b, Code):
            cap = f'<p class="caption">{html.escape(b.caption)}</p>' if b.caption else ""
            return f"{cap}<pre>{html.escape(b.text)}</pre>"
        if isinstance(b, Table):
            return self.table(b)
        if isinstance(b, Figure):
            src = ("data:image/png;base64," + base64.b64encode(Path(b.path).read_bytes())
                   .decode("ascii")) if self.embed else self.link(b.path)
            return (f'<figure><img src="{src}" alt="{html.escape(b.caption, quote=True)}">'
                    f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        if isinstance(b, Page):
            if self.embed:  # the page itself inside the frame: no request for it
                doc = html.escape(Path(b.path).read_text(encoding="utf-8"), quote=True)
                frame = f'<iframe srcdoc="{doc}" title="{html.escape(b.caption, quote=True)}">'
                return (f"<figure>{frame}</iframe><figcaption>{html.escape(b.caption)}"
                        "</figcaption></figure>")
            return (f'<p><a href="{self.link(b.path)}">{html.escape(b.caption)}</a> '
                    "(interactive map, beside this report)</p>")
        if isinstance(b, Details):
            inner = "".join(self.block(x) for x in b.blocks)
            return f"<details><summary>{html.escape(b.summary)}</summary>{inner}</details>"
        if isinstance(b, Section):
            return self.section(b)
        raise TypeError(f"not a report block: {b!r}")

    def section(self, s: Section) -> str:
        tag = f"h{s.level}"
        return (f'<section id="{s.id}"><{tag}>{html.escape(s.title)}</{tag}>'
                + "".join(self.block(b) for b in s.blocks) + "</section>")

    def table(self, t: Table) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
        body = []
        for i, row in enumerate(t.rows):
            if i in t.groups:
                body.append(f'<tr class="group"><td colspan="{len(t.header)}">'
                            f"{html.escape(t.groups[i])}</td></tr>")
            cells = []
            for c in map(_cell, row):
                title = f' title="{html.escape(c.reason, quote=True)}"' if c.reason else ""
                cls = f' class="{c.mark}"' if c.mark else ""
                cells.append(f"<td{cls}{title}>{html.escape(c.text)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f'<p class="caption">{html.escape(t.caption)}</p>' if t.caption else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{cap}"


def to_html(doc: Document, folder: Path, embed: bool) -> str:
    """The whole report as one HTML page; ``folder``: where it is written (for relative links
    when not embedding)."""
    r = _Html(folder, embed)
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in doc.sections
                  if s.level == 2)
    parts = [r.section(s) for s in doc.sections]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(doc.title)}</h1><p class=\"subtitle\">{html.escape(doc.subtitle)}"
            f"</p><nav>{nav}</nav>{''.join(parts)}</body></html>\n")


# -- Markdown -----------------------------------------------------------------------------------
def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_cell(c: Cell) -> str:
    text = _md_text(c.text)
    if c.mark == "best":
        return f"**{text}**"
    if c.mark == "missing":
        return f"*{text}*"
    return text


def _md_block(b, folder: Path) -> list[str]:
    if isinstance(b, Para):
        return [("> " if b.kind == "warn" else "") + b.text, ""]
    if isinstance(b, Code):
        return ([b.caption, ""] if b.caption else []) + ["```", b.text.rstrip("\n"), "```", ""]
    if isinstance(b, Table):
        lines = ["| " + " | ".join(_md_text(h) for h in b.header) + " |",
                 "|" + "---|" * len(b.header)]
        for i, row in enumerate(b.rows):
            if i in b.groups:
                lines.append(f"| *{_md_text(b.groups[i])}* |" + " |" * (len(b.header) - 1))
            lines.append("| " + " | ".join(_md_cell(_cell(c)) for c in row) + " |")
        return lines + ([""] + [b.caption] if b.caption else []) + [""]
    rel = Path(os.path.relpath(getattr(b, "path", folder), folder)).as_posix()
    if isinstance(b, Figure):
        return [f"![{_md_text(b.caption)}]({rel})", "", f"*{b.caption}*", ""]
    if isinstance(b, Page):
        return [f"- interactive map: [{b.caption}]({rel})", ""]
    if isinstance(b, Details):
        return [f"**{b.summary}**", ""] + [x for inner in b.blocks
                                          for x in _md_block(inner, folder)]
    if isinstance(b, Section):
        return _md_section(b, folder)
    raise TypeError(f"not a report block: {b!r}")


def _md_section(s: Section, folder: Path) -> list[str]:
    return ["#" * s.level + f" {s.title}", ""] + [x for b in s.blocks for x in _md_block(b, folder)]


def to_markdown(doc: Document, folder: Path) -> str:
    """The report as Markdown, figures and pages linked relative to ``folder``."""
    lines = [f"# {doc.title}", "", doc.subtitle, ""]
    for s in doc.sections:
        lines += _md_section(s, folder)
    return "\n".join(lines).rstrip("\n") + "\n"
