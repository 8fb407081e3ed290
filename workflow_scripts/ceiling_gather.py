"""Rule ceiling_gather: check that every ceiling val query appears exactly once across the shards, then merge them."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], snakemake.rule) as log:
    from lever_lm.ceiling import gather_ceiling

    gather_ceiling(
        snakemake.input.shards,
        snakemake.input.val_records,
        snakemake.params.ceiling,
        snakemake.params.evaluated_queries,
        snakemake.output.beams,
        logger=log,
    )
