# The result report: seed-shaped tables, plots and the selection diagnostic, also in `snakemake --report`.


rule report:
    input:
        cell_metrics=[
            path(P.INFERENCE_METRICS, **cell) for cell in P.selector_cells(config)
        ],
        cell_predictions=[
            path(P.INFERENCE_PREDICTIONS, **cell) for cell in P.selector_cells(config)
        ],
        baseline_metrics=[
            path(P.BASELINE_METRICS, **cell) for cell in P.baseline_cells(config)
        ],
        baseline_predictions=[
            path(P.BASELINE_PREDICTIONS, **cell) for cell in P.baseline_cells(config)
        ],
        ceiling_metrics=[
            path(P.CEILING_METRICS, **cell) for cell in P.ceiling_cells(config)
        ],
        ceiling_predictions=[
            path(P.CEILING_PREDICTIONS, **cell) for cell in P.ceiling_cells(config)
        ],
    output:
        tables=report(
            path(P.REPORT_TABLES),
            caption="../report/tables.rst",
            category="Result tables",
        ),
        html=report(
            path(P.REPORT_TABLES_HTML),
            caption="../report/tables.rst",
            category="Result tables",
        ),
        overlap=report(
            path(P.REPORT_OVERLAP),
            caption="../report/overlap.rst",
            category="Selection diagnostic",
        ),
        scores=report(
            path(P.REPORT_SCORES),
            caption="../report/scores.rst",
            category="Result tables",
        ),
        comparisons=report(
            path(P.REPORT_COMPARISONS),
            caption="../report/comparisons.rst",
            category="Result tables",
        ),
        plots=[
            report(
                path(P.REPORT_PLOT, **cell),
                caption="../report/plot.rst",
                category="Accuracy vs shots",
                subcategory=cell["beam_model"],
                labels={"beam model": cell["beam_model"], "version": cell["version"]},
            )
            for cell in P.plot_cells(config)
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
        mem_mb=RES.mem_mb("report"),
        runtime=RES.runtime("report"),
    params:
        inference=INFERENCE_PARAMS,
        task=config["task"],
        plot_cells=P.plot_cells(config),
        beam_models=list(config["beam_models"]),
        samplers=config["samplers"],
        uncertainty={
            key: value for key, value in config["report"].items() if key != "name"
        },
    script:
        "../workflow_scripts/report.py"
