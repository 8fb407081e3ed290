"""The sections about paired comparisons: how many selector cells beat the baselines, and the imitation ceiling."""

from __future__ import annotations

from collections.abc import Sequence

from lever_lm.report.document import Cell, Document, Table, fmt_difference, fmt_score, sampler_grid, shots_word
from lever_lm.report.inputs import IMAGE_SIMILARITY, RANDOM
from lever_lm.report.results import Comparison, ReportData, Result

CEILING_TITLE = "imitation ceiling (oracle InfoScore beams for the val queries themselves; a diagnostic, not a method)"


def counts_section(doc: Document, data: ReportData) -> None:
    doc.add("h2", "6. Paired comparisons: how many selector cells beat the baselines")
    doc.add(
        "p",
        "Per beam model and version: of the selector cells (sampler × shot) compared with random ICDs, how many are "
        "significantly above (▲r) and below (▼r) them, and likewise against the best similarity baseline at the "
        "same shot number (▲s, ▼s); shown as count / cells compared.",
    )
    header = ["Version", "▲r above random", "▼r below random", "▲s above best similarity", "▼s below best similarity"]
    any_table = False
    for model in data.beam_models:
        groups = [
            (
                v,
                [
                    c
                    for c in data.comparisons
                    if c.subject.kind == "selector" and c.subject.beam_model == model and c.subject.version == v
                ],
            )
            for v in data.versions
        ]
        groups = [(v, items) for v, items in groups if items]
        if not groups:
            continue
        if len(groups) > 1:
            groups.append(("all versions", [c for _, items in groups for c in items]))
        rows = [
            [Cell(version), *(Cell(_count(items, role, sign)) for role in ("random", "similarity") for sign in (1, -1))]
            for version, items in groups
        ]
        doc.add("h3", model)
        doc.add("table", table=Table(header, rows))
        any_table = True
    if not any_table:
        doc.add("note", "No selector cell could be compared with a baseline in this run.")


def _count(comparisons: Sequence[Comparison], role: str, sign: int) -> str:
    compared = [c for c in comparisons if c.role == role and c.difference.defined]
    if not compared:
        return "–"
    return f"{sum(c.significant == sign for c in compared)} / {len(compared)}"


def ceiling_section(doc: Document, data: ReportData) -> None:
    doc.add("h2", "7. Imitation ceiling")
    doc.add(
        "p",
        f"The {CEILING_TITLE}: the stage-4 beam search run for each val query itself, with its gold answer, over the "
        "sampler's test pool, and the top beam's ICDs evaluated like a selector cell. It bounds what a selector "
        "imitating the beams can reach. Marks: ▲r / ▼r against random ICDs, ▲i / ▼i against SimRetriever-i2i at "
        "the same shot number, paired over the questions the ceiling answered (it may run on a subset of them, "
        "and only at the shot numbers a beam can fill).",
    )
    for model in data.beam_models:
        samplers = [s for s in data.samplers if data.ceiling(model, s)]
        if not samplers:
            continue
        runs = [data.ceiling(model, s) for s in samplers]
        doc.add("h3", f"imitation ceiling · {model}")
        sampler_grid(doc, data, runs, samplers)
        doc.add("p", _bottleneck_line(data, model, runs))


def _bottleneck_line(data: ReportData, model: str, runs: Sequence[Result]) -> str:
    """Whether the best ceiling cell is significantly below random ICDs or image similarity at its shot number."""
    best = max(((r, s) for r in runs for s in r.shots), key=lambda rs: rs[0].score(rs[1]))
    result, shot = best
    where = f"{fmt_score(result.score(shot))} ({result.sampler}, {shots_word(shot)})"
    compared = [c for role in ("random", "similarity") if (c := data.comparison(result, shot, role))]
    if not compared:
        return f"{model}: no {RANDOM} or {IMAGE_SIMILARITY} result to compare the ceiling with."
    below = [c for c in compared if c.significant < 0]
    if below:
        named = " and ".join(f"{c.reference.baseline} ({fmt_difference(c.difference)})" for c in below)
        return (
            f"{model}: the best ceiling cell, {where}, is significantly below {named}: InfoScore is the "
            "bottleneck on this data."
        )
    named = " or ".join(str(c.reference.baseline) for c in compared)
    return f"{model}: the best ceiling cell, {where}, is not significantly below {named}."
