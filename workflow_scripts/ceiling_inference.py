"""Rule ceiling_inference: the LVLM answers the ceiling's val queries with their top beams' ICDs, per shot."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], snakemake.rule) as log, gpu_lease():
    from lever_lm.ceiling import IDENTITY_KEYS, run_ceiling_cell
    from lever_lm.determinism import pin

    pin(snakemake.threads)  # threads, deterministic kernels, cuBLAS workspace: before CUDA starts
    inp, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
    run_ceiling_cell(
        identity={key: getattr(wildcards, key) for key in IDENTITY_KEYS},
        beams=inp.beams,
        train_records=inp.train_records,
        val_records=inp.val_records,
        weights=list(inp.weights),
        entry=params.entry,
        inference=params.inference,
        ceiling=params.ceiling,
        task=params.task,
        metrics_path=snakemake.output.metrics,
        predictions_path=snakemake.output.predictions,
        logger=log,
        replicate=params.replicate,
    )
