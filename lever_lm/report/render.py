"""The document as Markdown (tables.md) and as a self-contained HTML page (tables.html, for snakemake --report)."""

from __future__ import annotations

import functools
import html
import re

import jinja2

from lever_lm.report.document import Cell, Document, Table

HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #1f2328;
       line-height: 1.45; max-width: 72em; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin-top: 1.2em; }
table { border-collapse: collapse; margin: .4em 0 .8em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25em .7em; }
th { background: #f6f8fa; }
td.num, th.num { text-align: right; white-space: nowrap; }
.ci { color: #59636e; font-size: .9em; }
.up { color: #1a7f37; font-weight: 600; }
.down { color: #cf222e; font-weight: 600; }
.warning { background: #fff8c5; border-left: 4px solid #d4a72c; padding: .5em .8em; margin: .6em 0; }
.note { color: #59636e; font-style: italic; }
""".strip()


def md_escape(text: str) -> str:
    return re.sub(r"([|*`<\\])", r"\\\1", text)


def _md_cell(cell: Cell) -> str:
    parts = [f"**{md_escape(cell.text)}**" if cell.bold else md_escape(cell.text)]
    if cell.detail:
        parts.append(md_escape(cell.detail))
    parts += cell.marks
    return " ".join(parts)


def _md_table(table: Table) -> str:
    header = "| " + " | ".join(md_escape(h) for h in table.header) + " |"
    align = "|" + "|".join(":---" if i < table.left_columns else "---:" for i in range(len(table.header))) + "|"
    lines = [header, align]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return "\n".join(lines)


def to_markdown(doc: Document) -> str:
    out: list[str] = []
    for block in doc.blocks:
        if block.kind in ("h1", "h2", "h3"):
            out.append("#" * int(block.kind[1]) + " " + md_escape(block.text))
        elif block.kind == "p":
            out.append(md_escape(block.text))
        elif block.kind == "note":
            out.append("_" + md_escape(block.text) + "_")
        elif block.kind == "warning":
            out.append("> **WARNING:** " + md_escape(block.text))
        elif block.kind == "table":
            out.append(_md_table(block.table))
    return "\n\n".join(out) + "\n"


@functools.cache
def _html_template() -> jinja2.Template:
    # autoescape off: the template escapes every text with html.escape itself (`esc`), which writes the bytes the
    # report has always had (markupsafe's escaping spells quotes differently)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lever_lm.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["esc"] = html.escape
    return env.get_template("tables.html.j2")


def to_html(doc: Document) -> str:
    """A self-contained page (inline CSS, no scripts, no external resources) with the same content."""
    return _html_template().render(doc=doc, style=HTML_STYLE)
