"""Accuracy vs shots, one PNG per (beam model, version), every line with its bootstrap interval as error bars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lever_lm.io_utils import atomic_path
from lever_lm.report.inputs import IMAGE_SIMILARITY, RANDOM, ZERO_SHOT
from lever_lm.report.results import ReportData, Result

PathLike = str | os.PathLike
JITTER = 0.05  # x offset between neighbouring lines, so their error bars do not hide each other


def best_ceiling(data: ReportData, beam_model: str) -> Result | None:
    """The beam model's ceiling run with the highest mean score over the configured shots (ties: first sampler)."""
    best, best_mean = None, None
    for sampler in data.samplers:
        run = data.ceiling(beam_model, sampler)
        values = [run.score(s) for s in data.shots if run and s in run.shots]
        if values and (best_mean is None or sum(values) / len(values) > best_mean):
            best, best_mean = run, sum(values) / len(values)
    return best


def _series(data: ReportData, beam_model: str, version: str) -> list[tuple[Result, str, dict[str, Any]]]:
    """(result, legend label, line style) of every line of one plot, selector samplers first."""
    lines = [
        (run, sampler, {"marker": "o"})
        for sampler in data.samplers
        if (run := data.cell(beam_model, version, sampler)) is not None
    ]
    if (random := data.baseline(beam_model, RANDOM)) is not None:
        lines.append((random, "random ICDs", {"linestyle": "--", "color": "black", "marker": "x"}))
    if (image := data.baseline(beam_model, IMAGE_SIMILARITY)) is not None:
        lines.append((image, IMAGE_SIMILARITY, {"linestyle": "-.", "color": "dimgray", "marker": "s", "markersize": 4}))
    if (ceiling := best_ceiling(data, beam_model)) is not None:
        lines.append(
            (
                ceiling,
                f"imitation ceiling ({ceiling.sampler})",
                {"linestyle": (0, (1, 1)), "color": "purple", "marker": "^"},
            )
        )
    return lines


def _error_bars(result: Result, shots: Sequence[int]) -> list[list[float]]:
    """Distances from each score down and up to its interval's ends (0 where no interval exists)."""
    below, above = [], []
    for shot in shots:
        entry = result.shots[shot]
        defined = entry.interval.defined
        below.append(max(0.0, entry.score - entry.interval.low) if defined else 0.0)
        above.append(max(0.0, entry.interval.high - entry.score) if defined else 0.0)
    return [below, above]


def plot_version(data: ReportData, beam_model: str, version: str, path: PathLike) -> None:
    """One line per sampler, random ICDs dashed, SimRetriever-i2i dash-dotted, the best imitation ceiling dotted,
    zero-shot as a horizontal line with its interval as a band; error bars are the bootstrap intervals."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(rc=matplotlib.rcParamsDefault):
        fig = Figure(figsize=(8.4, 4.8), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        lines = _series(data, beam_model, version)
        for index, (result, label, style) in enumerate(lines):
            shots = [s for s in data.shots if s in result.shots]
            offset = (index - (len(lines) - 1) / 2) * JITTER
            ax.errorbar(
                [s + offset for s in shots],
                [result.score(s) for s in shots],
                yerr=_error_bars(result, shots),
                capsize=3,
                elinewidth=1,
                label=label,
                **style,
            )
        zero = data.baseline(beam_model, ZERO_SHOT)
        if zero is not None and zero.shots:
            entry = zero.shots[0] if 0 in zero.shots else next(iter(zero.shots.values()))
            ax.axhline(entry.score, linestyle=":", color="gray", label="zero-shot")
            if entry.interval.defined:
                ax.axhspan(entry.interval.low, entry.interval.high, color="gray", alpha=0.12, linewidth=0)
        shown = [result for result, _, _ in lines] + ([zero] if zero else [])
        ns = sorted({entry.n for result in shown for entry in result.shots.values()})
        n_text = f"n = {ns[0]}" if len(ns) == 1 else (f"n = {ns[0]}–{ns[-1]}" if ns else "")
        confidence = f"{data.uncertainty.confidence * 100:g}%"
        ax.set_title(
            f"{version} · {beam_model} ({data.dataset}, {n_text}; bars: {confidence} bootstrap CI)", fontsize="medium"
        )
        ax.set_xlabel("shots (ICDs in the prompt)")
        ax.set_ylabel(f"{data.metric_label} ×100")
        ax.set_xticks(data.shots)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
