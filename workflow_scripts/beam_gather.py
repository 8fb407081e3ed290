"""Rule beam_gather: check that every anchor appears exactly once across the shards, then merge them."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "beam_gather") as log:
    from lever_lm.beam_shards import gather_beam_shards
    from lever_lm.sampling import read_anchors

    anchors = read_anchors(snakemake.input.anchors).anchors
    gather_beam_shards(snakemake.input.shards, anchors, snakemake.output.beams)
    log.info("merged %d shards, %d anchors", len(snakemake.input.shards), len(anchors))
