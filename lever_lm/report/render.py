"""The document as Markdown (tables.md) and as a self-contained HTML page (tables.html, for snakemake --report)."""

from __future__ import annotations

import html
import re

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


def _html_cell(cell: Cell) -> str:
    esc = html.escape
    parts = [f"<strong>{esc(cell.text)}</strong>" if cell.bold else esc(cell.text)]
    if cell.detail:
        parts.append(f'<span class="ci">{esc(cell.detail)}</span>')
    for mark in cell.marks:
        parts.append(f'<span class="{"up" if mark.startswith("▲") else "down"}">{esc(mark)}</span>')
    return " ".join(parts)


def _html_table(table: Table) -> str:
    num = ' class="num"'
    head = "".join(
        f"<th{'' if i < table.left_columns else num}>{html.escape(h)}</th>" for i, h in enumerate(table.header)
    )
    rows = []
    for row in table.rows:
        cells = [f"<td{'' if i < table.left_columns else num}>{_html_cell(cell)}</td>" for i, cell in enumerate(row)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def to_html(doc: Document) -> str:
    """A self-contained page (inline CSS, no scripts, no external resources) with the same content."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(doc.title)}</title>",
        f"<style>\n{HTML_STYLE}\n</style>",
        "</head>",
        "<body>",
    ]
    for block in doc.blocks:
        if block.kind in ("h1", "h2", "h3"):
            parts.append(f"<{block.kind}>{esc(block.text)}</{block.kind}>")
        elif block.kind == "p":
            parts.append(f"<p>{esc(block.text)}</p>")
        elif block.kind == "note":
            parts.append(f'<p class="note">{esc(block.text)}</p>')
        elif block.kind == "warning":
            parts.append(f'<p class="warning"><strong>WARNING:</strong> {esc(block.text)}</p>')
        elif block.kind == "table":
            parts.append(_html_table(block.table))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
