"""Rule report: the result tables (Markdown + HTML) with bootstrap intervals, scores.csv, comparisons.csv, plots
and the selection diagnostic."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "report") as log:
    from lever_lm.inference.config import InferenceConfig
    from lever_lm.report import build_report
    from lever_lm.stats import UncertaintyConfig

    inp, out, params = snakemake.input, snakemake.output, snakemake.params
    # what metrics.json records, the same keys (token_budget only when set)
    expected = InferenceConfig.from_config(params.inference, params.task).to_dict()
    warnings = build_report(
        inp.cell_metrics,
        inp.cell_predictions,
        inp.baseline_metrics,
        inp.baseline_predictions,
        ceiling_metrics=inp.ceiling_metrics,
        ceiling_predictions=inp.ceiling_predictions,
        expected_inference=expected,
        out_tables=out.tables,
        out_overlap=out.overlap,
        out_html=out.html,
        out_scores=out.scores,
        out_comparisons=out.comparisons,
        out_plots={(cell["beam_model"], cell["version"]): plot for cell, plot in zip(params.plot_cells, out.plots)},
        beam_models=params.beam_models,
        samplers=params.samplers,
        uncertainty=UncertaintyConfig.from_config(params.uncertainty),
    )
    for warning in warnings:
        log.warning(warning)
