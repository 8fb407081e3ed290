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
    output:
        tables=report(
            P.REPORT_TABLES, caption="../report/tables.rst", category="Result tables"
        ),
        html=report(
            P.REPORT_TABLES_HTML,
            caption="../report/tables.rst",
            category="Result tables",
        ),
        overlap=report(
            P.REPORT_OVERLAP,
            caption="../report/overlap.rst",
            category="Selection diagnostic",
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
        "logs/report/{dataset}.log",
    benchmark:
        "benchmarks/report/{dataset}.tsv"
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
    script:
        "../workflow_scripts/report.py"
