"""The document model (headings, paragraphs, tables) and the pieces of the score tables.

A score cell reads ``51.27 [44.10, 58.33]``: the score x100 and its bootstrap interval, then ``(±2.10 sd, 3 reps)``
when the cell pools several replicates, then the marks of significant paired differences. A table's best cell is
bold only when it is significantly above the runner-up (paired over questions); otherwise a line names the tied
top cells with their paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lever_lm.report.results import ReportData, Result, ShotResult
from lever_lm.stats import Interval

# marks of a significant paired difference, by reference role and sign; a ceiling's similarity reference is i2i
MARKS = {
    ("random", 1): "▲r",
    ("random", -1): "▼r",
    ("similarity", 1): "▲s",
    ("similarity", -1): "▼s",
    ("image", 1): "▲i",
    ("image", -1): "▼i",
}


@dataclass
class Cell:
    text: str
    bold: bool = False
    detail: str = ""  # interval and replicate spread, shown after the (possibly bold) text
    marks: tuple[str, ...] = ()


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    left_columns: int = 1  # the leading label columns, left-aligned; the rest are numbers, right-aligned


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "warning" | "note"
    text: str = ""
    table: Table | None = None


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, text: str = "", table: Table | None = None) -> None:
        self.blocks.append(Block(kind, text, table))


def fmt_score(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def fmt_interval(interval: Interval) -> str:
    return f"[{interval.low:.2f}, {interval.high:.2f}]" if interval.defined else "[–]"


def fmt_difference(difference: Interval) -> str:
    """``+1.17 [-2.30, 4.50]``: a paired difference with its interval."""
    return f"{difference.estimate:+.2f} {fmt_interval(difference)}"


def fmt_spread(entry: ShotResult) -> str:
    """``(±2.10 sd, 3 reps)`` across replicates; empty for one replicate."""
    sd = entry.replicate_sd
    return "" if sd is None else f"(±{sd:.2f} sd, {len(entry.replicate_scores)} reps)"


def shots_word(shot: int) -> str:
    return "zero-shot" if shot == 0 else f"{shot} shot" + ("" if shot == 1 else "s")


def shot_header(shot: int) -> str:
    return "0 (zero-shot)" if shot == 0 else str(shot)


def marks_of(data: ReportData, result: Result, shot: int) -> tuple[str, ...]:
    """The marks of ``result``'s significant paired differences at ``shot`` (random first)."""
    marks = []
    for role in ("random", "similarity"):
        comparison = data.comparison(result, shot, role)
        if comparison is not None and comparison.significant:
            shown = "image" if role == "similarity" and result.kind == "ceiling" else role
            marks.append(MARKS[(shown, comparison.significant)])
    return tuple(marks)


def score_cell(data: ReportData, result: Result | None, shot: int, bold: bool = False, marked: bool = False) -> Cell:
    """One table cell: score, interval, replicate spread, and (``marked``) the marks; a dash where there is none."""
    entry = None if result is None else result.shots.get(shot)
    if entry is None:
        return Cell("–")
    detail = " ".join(part for part in (fmt_interval(entry.interval), fmt_spread(entry)) if part)
    return Cell(fmt_score(entry.score), bold, detail, marks_of(data, result, shot) if marked else ())


@dataclass(frozen=True)
class Entry:
    """A score a table shows: a result at a shot number, and how a tie line names it."""

    result: Result
    shot: int
    name: str

    @property
    def score(self) -> float:
        return self.result.shots[self.shot].score


def contest(data: ReportData, entries: Sequence[Entry | None]) -> tuple[Entry | None, str]:
    """(the entry to bold, "") when the top entry is significantly above the runner-up (paired over questions);
    else (None, the line naming the tied top entries). Fewer than two entries: (None, "")."""
    present = sorted((e for e in entries if e is not None), key=lambda e: -e.score)
    if len(present) < 2:
        return None, ""
    top, runner_up = present[0], present[1]
    difference = data.compare(top.result, top.shot, runner_up.result, runner_up.shot)
    if difference.significant > 0:
        return top, ""
    pair = f"{fmt_score(top.score)} ({top.name}) vs {fmt_score(runner_up.score)} ({runner_up.name})"
    if not difference.defined:
        return None, f"{pair}, not compared (no per-question scores)"
    return None, f"{pair}, paired difference {fmt_difference(difference)}"


def score_grid(
    data: ReportData,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    entries: Sequence[Sequence[Entry | None]],
    corner: str,
    bold_by: str,
    marked: bool = False,
    column_names: Sequence[str] | None = None,
) -> tuple[Table, str]:
    """A table of scores and the tie line ("" when none). ``bold_by`` "all": one contest over the whole table;
    "column": one per column, and the tie line names each tied column by ``column_names`` (e.g. "at 1 shot";
    default: its label). ``marked``: cells carry the marks of their significant paired differences."""
    bold = [[False] * len(column_labels) for _ in row_labels]
    ties = []
    groups = (
        [[(i, j) for i in range(len(row_labels)) for j in range(len(column_labels))]]
        if bold_by == "all"
        else [[(i, j) for i in range(len(row_labels))] for j in range(len(column_labels))]
    )
    for positions in groups:
        winner, tie = contest(data, [entries[i][j] for i, j in positions])
        for i, j in positions:
            bold[i][j] = winner is not None and entries[i][j] is winner
        if tie:
            ties.append(tie if bold_by == "all" else f"{(column_names or column_labels)[positions[0][1]]}: {tie}")
    rows = []
    for i, label in enumerate(row_labels):
        row = [Cell(label)]
        for j in range(len(column_labels)):
            entry = entries[i][j]
            row.append(score_cell(data, entry and entry.result, entry.shot if entry else 0, bold[i][j], marked))
        rows.append(row)
    if not ties:
        return Table([corner, *column_labels], rows), ""
    tie_line = "top cells tied" + (": " if bold_by == "all" else " ") + "; ".join(ties)
    return Table([corner, *column_labels], rows), tie_line


def best_line(entries: Sequence[Entry | None]) -> str:
    """``best: 25.28 (rand_sampler, 4 shots)`` over a shots x sampler grid; ties at display precision are all
    named."""
    present = [e for e in entries if e is not None]
    if not present:
        return "best: – (no results)"
    top = max(round(e.score, 2) for e in present)
    winners = [e for e in present if round(e.score, 2) == top]
    by_shot: dict[int, list[str]] = {}
    for entry in winners:
        by_shot.setdefault(entry.shot, []).append(str(entry.result.sampler))
    named = "; ".join(f"{'/'.join(names)}, {shots_word(shot)}" for shot, names in by_shot.items())
    return f"best: {fmt_score(max(e.score for e in winners))} ({named})"


def n_line(results: Iterable[Result | None]) -> str:
    """``n = 204 val questions per cell.`` (a range where cells differ)"""
    ns = sorted({entry.n for r in results if r for entry in r.shots.values()})
    if not ns:
        return ""
    if len(ns) == 1:
        return f"n = {ns[0]} val questions per cell."
    return f"n = {ns[0]}–{ns[-1]} val questions per cell (differs between cells)."


def entry_at(result: Result | None, shot: int, name: str) -> Entry | None:
    """The entry of ``result`` at ``shot``; None where the table shows a dash."""
    return Entry(result, shot, name) if result is not None and shot in result.shots else None


def add_score_table(doc: Document, table_and_tie: tuple[Table, str]) -> None:
    """A score table, then its tie line if any."""
    table, tie = table_and_tie
    doc.add("table", table=table)
    if tie:
        doc.add("p", tie)


def sampler_grid(doc: Document, data: ReportData, results: Sequence[Result | None], samplers: Sequence[str]) -> None:
    """A shots x sampler table with marks, the best line and the tie line."""
    doc.add("p", n_line(results))
    entries = [
        [entry_at(r, s, f"{sampler}, {shots_word(s)}") for r, sampler in zip(results, samplers)] for s in data.shots
    ]
    table, tie = score_grid(data, [str(s) for s in data.shots], samplers, entries, "Shots", "all", marked=True)
    doc.add("table", table=table)
    doc.add("p", best_line([e for row in entries for e in row]))
    if tie:
        doc.add("p", tie)
