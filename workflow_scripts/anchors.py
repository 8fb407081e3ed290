"""Rule anchors: the seeded draw of train anchors for beam search."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "anchors") as log:
    from lever_lm.data import load_records
    from lever_lm.sampling import draw_anchors, write_anchors

    params = snakemake.params.anchors
    n_train = len(load_records(snakemake.input.records))
    anchors = draw_anchors(n_train, params["sample_num"], params["seed"])
    write_anchors(snakemake.output.anchors, anchors, {**params, "n_train": n_train})
    log.info("%d anchors out of %d train records", len(anchors), n_train)
