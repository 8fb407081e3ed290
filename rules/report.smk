# The result report: seed-shaped tables, plots and the selection diagnostic, also in `snakemake --report`.


rule report:
    input:
        cell_metrics=[
            path(paths.INFERENCE_METRICS, **cell)
            for cell in paths.selector_cells(config)
        ],
        cell_predictions=[
            path(paths.INFERENCE_PREDICTIONS, **cell)
            for cell in paths.selector_cells(config)
        ],
        baseline_metrics=[
            path(paths.BASELINE_METRICS, **cell)
            for cell in paths.baseline_cells(config)
        ],
        baseline_predictions=[
            path(paths.BASELINE_PREDICTIONS, **cell)
            for cell in paths.baseline_cells(config)
        ],
        ceiling_metrics=[
            path(paths.CEILING_METRICS, **cell) for cell in paths.ceiling_cells(config)
        ],
        ceiling_predictions=[
            path(paths.CEILING_PREDICTIONS, **cell)
            for cell in paths.ceiling_cells(config)
        ],
    output:
        tables=report(
            path(paths.REPORT_TABLES),
            caption="../report/tables.rst",
            category="Result tables",
        ),
        html=report(
            path(paths.REPORT_TABLES_HTML),
            caption="../report/tables.rst",
            category="Result tables",
        ),
        overlap=report(
            path(paths.REPORT_OVERLAP),
            caption="../report/overlap.rst",
            category="Selection diagnostic",
        ),
        scores=report(
            path(paths.REPORT_SCORES),
            caption="../report/scores.rst",
            category="Result tables",
        ),
        comparisons=report(
            path(paths.REPORT_COMPARISONS),
            caption="../report/comparisons.rst",
            category="Result tables",
        ),
        plots=[
            report(
                path(paths.REPORT_PLOT, **cell),
                caption="../report/plot.rst",
                category="Accuracy vs shots",
                subcategory=cell["beam_model"],
                labels={"beam model": cell["beam_model"], "version": cell["version"]},
            )
            for cell in paths.plot_cells(config)
        ],
    log:
        path("logs/report/{dataset}_{report_name}.log"),
    benchmark:
        path("benchmarks/report/{dataset}_{report_name}.tsv")
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=RULE_RESOURCES.mem_mb("report"),
        runtime=RULE_RESOURCES.runtime("report"),
    params:
        inference=INFERENCE_PARAMS,
        task=config["task"],
        plot_cells=paths.plot_cells(config),
        beam_models=list(config["beam_models"]),
        samplers=config["samplers"],
        uncertainty={
            key: value for key, value in config["report"].items() if key != "name"
        },
    script:
        "../workflow_scripts/report.py"
