"""The report's entry points: read and check every input, then write the tables, CSV files and plots."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lever_lm.io_utils import atomic_path
from lever_lm.report.diagnostic import IDENTICAL_WARN, overlap_warnings, selection_overlap
from lever_lm.report.exports import write_comparisons_csv, write_overlap_csv, write_scores_csv
from lever_lm.report.inputs import ReportInputError, check_common, collect_runs, expected_shots, raise_first
from lever_lm.report.plots import plot_version
from lever_lm.report.predictions import check_predictions, check_same_queries, read_selections
from lever_lm.report.render import to_html, to_markdown
from lever_lm.report.results import ReportData, ordered, paired_comparisons, pool_results, result_order, version_key
from lever_lm.report.sections import build_document
from lever_lm.stats import UncertaintyConfig

PathLike = str | os.PathLike


def _uncertainty(value: UncertaintyConfig | Mapping[str, Any] | None) -> UncertaintyConfig:
    return value if isinstance(value, UncertaintyConfig) else UncertaintyConfig.from_config(value)


def load_report_data(
    cell_metrics: Sequence[PathLike],
    cell_predictions: Sequence[PathLike],
    baseline_metrics: Sequence[PathLike],
    baseline_predictions: Sequence[PathLike],
    expected_inference: Mapping[str, Any],
    beam_models: Sequence[str] | None = None,
    samplers: Sequence[str] | None = None,
    identical_warn: float = IDENTICAL_WARN,
    ceiling_metrics: Sequence[PathLike] = (),
    ceiling_predictions: Sequence[PathLike] = (),
    uncertainty: UncertaintyConfig | Mapping[str, Any] | None = None,
) -> ReportData:
    """Read and check every input (metrics first, so a stale config stops before any parquet is read), pool the
    replicates and compute the intervals and paired comparisons."""
    uncertainty = _uncertainty(uncertainty)
    cells, cell_problems = collect_runs(cell_metrics, cell_predictions, "selector", expected_inference)
    baselines, baseline_problems = collect_runs(baseline_metrics, baseline_predictions, "baseline", expected_inference)
    ceilings, ceiling_problems = collect_runs(ceiling_metrics, ceiling_predictions, "ceiling", expected_inference)
    raise_first([*cell_problems, *baseline_problems, *ceiling_problems])  # before any parquet is read
    runs = [*cells, *baselines, *ceilings]
    if not runs:
        raise ReportInputError("the report has no inputs: no selector cell, baseline or ceiling metrics")
    dataset, task, metric = check_common(runs)
    frames = {}
    for run in runs:
        frame = read_selections(run.predictions_path)
        check_predictions(run, frame)
        frames[run.predictions_path] = frame
    check_same_queries(runs, frames)
    overlap = selection_overlap(cells, frames)
    shots = expected_shots(expected_inference)
    if shots is None:
        shots = sorted({s for run in runs for s in run.scores if s > 0})
    beam_models = ordered((r.beam_model for r in runs), beam_models)
    versions = sorted({r.version for r in cells}, key=version_key)
    samplers = ordered((r.sampler for r in [*cells, *ceilings]), samplers)
    results = result_order(pool_results(runs, frames, uncertainty), beam_models, versions, samplers)
    data = ReportData(
        dataset=dataset,
        task=task,
        metric=metric,
        shots=sorted(shots),
        beam_models=beam_models,
        versions=versions,
        samplers=samplers,
        results=results,
        overlap=overlap,
        warnings=overlap_warnings(overlap, identical_warn),
        settings=dict(expected_inference),
        uncertainty=uncertainty,
        identical_warn=identical_warn,
    )
    data.comparisons = paired_comparisons(data)
    return data


def _plot_targets(
    data: ReportData, out_plots: Mapping[tuple[str, str], PathLike] | PathLike
) -> dict[tuple[str, str], Path]:
    if isinstance(out_plots, Mapping):
        targets = {(str(m), str(v)): Path(p) for (m, v), p in out_plots.items()}
        for model, version in targets:
            if not any(r.beam_model == model and r.version == version for r in data.cells):
                raise ReportInputError(f"plot {targets[(model, version)]}: no selector cell of {version} · {model}")
        return targets
    folder = Path(out_plots)
    pairs = dict.fromkeys((r.beam_model, r.version) for r in data.cells)
    return {(m, v): folder / f"{m}_{v}.png" for m, v in pairs}


def build_report(
    cell_metrics: Sequence[PathLike],
    cell_predictions: Sequence[PathLike],
    baseline_metrics: Sequence[PathLike],
    baseline_predictions: Sequence[PathLike],
    expected_inference: Mapping[str, Any],
    out_tables: PathLike,
    out_overlap: PathLike,
    out_plots: Mapping[tuple[str, str], PathLike] | PathLike,
    out_html: PathLike | None = None,
    beam_models: Sequence[str] | None = None,
    samplers: Sequence[str] | None = None,
    identical_warn: float = IDENTICAL_WARN,
    out_scores: PathLike | None = None,
    out_comparisons: PathLike | None = None,
    ceiling_metrics: Sequence[PathLike] = (),
    ceiling_predictions: Sequence[PathLike] = (),
    uncertainty: UncertaintyConfig | Mapping[str, Any] | None = None,
) -> list[str]:
    """Write tables.md (+ tables.html), selection_overlap.csv, scores.csv, comparisons.csv and the plots; return
    the diagnostic warnings.

    ``cell_metrics``/``cell_predictions`` (selector cells), ``baseline_metrics``/``baseline_predictions`` and the
    optional ``ceiling_metrics``/``ceiling_predictions`` (imitation-ceiling runs) are parallel lists, paired by
    position; a cell may appear once per replicate. ``expected_inference`` is the current config's InferenceConfig
    as a dict (``dataclasses.asdict``); a metrics file recording other settings stops the report (replicate r must
    record retriever_seed + r). ``uncertainty``: the config's ``report`` section (UncertaintyConfig or its dict;
    None: the defaults). ``out_plots`` maps (beam_model, version) to a PNG path, or is a folder that receives
    ``{beam_model}_{version}.png``. ``out_html`` defaults to ``out_tables`` with the suffix ``.html``;
    ``out_scores``/``out_comparisons`` to scores.csv/comparisons.csv next to ``out_tables``.
    ``beam_models``/``samplers`` give the column order (config order); names not listed follow in order of
    appearance. Every input is checked before the first file is written; each output is written atomically.
    """
    data = load_report_data(
        cell_metrics,
        cell_predictions,
        baseline_metrics,
        baseline_predictions,
        expected_inference,
        beam_models=beam_models,
        samplers=samplers,
        identical_warn=identical_warn,
        ceiling_metrics=ceiling_metrics,
        ceiling_predictions=ceiling_predictions,
        uncertainty=uncertainty,
    )
    targets = _plot_targets(data, out_plots)
    doc = build_document(data)
    markdown, page = to_markdown(doc), to_html(doc)
    folder = Path(out_tables).parent
    out_html = Path(out_tables).with_suffix(".html") if out_html is None else Path(out_html)
    write_overlap_csv(out_overlap, data.overlap)
    write_scores_csv(folder / "scores.csv" if out_scores is None else out_scores, data.results)
    write_comparisons_csv(folder / "comparisons.csv" if out_comparisons is None else out_comparisons, data.comparisons)
    for (model, version), path in targets.items():
        plot_version(data, model, version, path)
    with atomic_path(out_html, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(out_tables, suffix=".md") as tmp:
        tmp.write_text(markdown, encoding="utf-8")
    return data.warnings
