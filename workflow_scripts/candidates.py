"""Rule candidates: the candidate set of every anchor for one sampler."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "candidates") as log:
    from lever_lm.sampling import (
        SamplerConfig,
        anchor_candidates,
        load_embedded_split,
        read_anchors,
        sampler_params,
        write_candidates,
    )

    inp, sampler = snakemake.input, snakemake.wildcards.sampler
    cfg = SamplerConfig.from_config(snakemake.params.candidates)
    train = load_embedded_split(
        inp.train_records,
        inp.train_image,
        inp.train_text,
        image_index_path=inp.index_image,
        text_index_path=inp.index_text,
    )
    anchors = read_anchors(inp.anchors)
    mapping = anchor_candidates(sampler, anchors.anchors, train, cfg)
    params = sampler_params(sampler, cfg, encoder_id=train.encoder_id, anchors=anchors.params)
    write_candidates(snakemake.output.candidates, mapping, params)
    log.info("%s: %d anchors x %d candidates", sampler, len(mapping), cfg.cand_num)
