"""Stage 6 report: seed-shaped result tables with bootstrap intervals, accuracy-vs-shots plots, paired comparisons
with the baselines and the selection diagnostic.

Everything here reads the inference outputs (``metrics.json`` + ``predictions.parquet`` of every selector cell,
baseline and, optionally, imitation-ceiling run, possibly several replicates of each) and writes ``tables.md``
(+ ``tables.html``, the same tables as a self-contained page that ``snakemake --report`` shows inline),
``selection_overlap.csv``, ``scores.csv``, ``comparisons.csv`` and one PNG per (beam model, version).
All inputs are checked before anything is written: a metrics file from an older config, or a predictions file that
disagrees with its metrics, stops the report with one message naming the file, and no output is left behind.

Modules: ``inputs`` (reading and checking the metrics), ``predictions`` (the predictions files), ``results``
(replicates pooled, intervals, paired comparisons; the bootstrap itself is ``lever_lm.stats``), ``diagnostic``
(selection overlap), ``document`` and ``sections`` (the tables), ``render`` (Markdown; HTML through the Jinja2
template ``templates/tables.html.j2``), ``plots``, ``exports`` (CSV files), ``build`` (the entry points).
"""

from lever_lm.paths import BASELINES
from lever_lm.report.build import build_report, load_report_data
from lever_lm.report.diagnostic import IDENTICAL_WARN, OVERLAP_COLUMNS, overlap_warnings, selection_overlap
from lever_lm.report.document import Cell, Document, Entry, Table, best_line, contest, score_grid
from lever_lm.report.exports import COMPARISON_COLUMNS, SCORE_COLUMNS
from lever_lm.report.inputs import (
    BASELINE_ORDER,
    IMAGE_SIMILARITY,
    RANDOM,
    SIMILARITY,
    ZERO_SHOT,
    ReportInputError,
    Run,
    check_inference_settings,
    load_runs,
)
from lever_lm.report.plots import plot_version
from lever_lm.report.predictions import check_predictions, read_selections
from lever_lm.report.render import to_html, to_markdown
from lever_lm.report.results import Comparison, ReportData, Result, ShotResult
from lever_lm.report.sections import build_document
from lever_lm.stats import UncertaintyConfig

__all__ = [
    "BASELINES",
    "BASELINE_ORDER",
    "COMPARISON_COLUMNS",
    "IDENTICAL_WARN",
    "IMAGE_SIMILARITY",
    "OVERLAP_COLUMNS",
    "RANDOM",
    "SCORE_COLUMNS",
    "SIMILARITY",
    "ZERO_SHOT",
    "Cell",
    "Comparison",
    "Document",
    "Entry",
    "ReportData",
    "ReportInputError",
    "Result",
    "Run",
    "ShotResult",
    "Table",
    "UncertaintyConfig",
    "best_line",
    "build_document",
    "build_report",
    "check_inference_settings",
    "check_predictions",
    "contest",
    "load_report_data",
    "load_runs",
    "overlap_warnings",
    "plot_version",
    "read_selections",
    "score_grid",
    "selection_overlap",
    "to_html",
    "to_markdown",
]
