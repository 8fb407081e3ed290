"""Rule ceiling_shard: beam search for one shard of the ceiling's val queries, resumable (lever_lm.ceiling)."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], snakemake.rule) as log, gpu_lease():
    from lever_lm.ceiling import run_ceiling_shard
    from lever_lm.determinism import pin
    from lever_lm.io_utils import inputs_fingerprint

    pin(snakemake.threads)  # threads, deterministic kernels, cuBLAS workspace: before CUDA starts
    inp, params, wildcards = snakemake.input, snakemake.params, snakemake.wildcards
    run_ceiling_shard(
        scatteritem=wildcards.scatteritem,
        val_records=inp.val_records,
        train_records=inp.train_records,
        test_pool=inp.test_pool,
        weights=list(inp.weights),
        beam_model=wildcards.beam_model,
        sampler=wildcards.sampler,
        entry=params.entry,
        beam_search=params.beam_search,
        cand_num=params.cand_num,
        sample_num=params.sample_num,
        ceiling=params.ceiling,
        inference=params.evaluated_queries,
        out_path=snakemake.output.shard,
        input_fingerprint=inputs_fingerprint(dict(inp.items())),
        logger=log,
    )
