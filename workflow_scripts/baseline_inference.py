"""Rule baseline_inference: the LVLM answers every val query with baseline ICDs (random, similar, none)."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], snakemake.rule) as log, gpu_lease():
    from lever_lm.determinism import pin
    from lever_lm.inference.inputs import InferenceInputs
    from lever_lm.inference.jobs import run_baseline

    pin(snakemake.threads)  # threads, deterministic kernels, cuBLAS workspace: before CUDA starts
    inp, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
    run_baseline(
        dataset=wildcards.dataset,
        beam_model=wildcards.beam_model,
        baseline=wildcards.baseline,
        inputs=InferenceInputs.from_named(inp),
        weights=list(inp.weights),
        entry=params.entry,
        inference=params.inference,
        task=params.task,
        metrics_path=snakemake.output.metrics,
        predictions_path=snakemake.output.predictions,
        logger=log,
        replicate=params.replicate,
    )
