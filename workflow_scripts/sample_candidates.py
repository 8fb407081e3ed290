"""Rules candidates and test_pool: one sampler's candidate set per train anchor, or pool per val query."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], snakemake.rule) as log:
    from lever_lm.sampling import (
        SamplerConfig,
        anchor_candidates,
        load_embedded_split,
        read_anchors,
        sampler_params,
        test_pool_candidates,
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
    if "anchors" in inp.keys():
        anchors = read_anchors(inp.anchors)
        mapping = anchor_candidates(sampler, anchors.anchors, train, cfg)
        queries = {"anchors": anchors.params}
    else:
        val = load_embedded_split(inp.query_records, inp.query_image, inp.query_text)
        mapping = test_pool_candidates(sampler, val, train, cfg)
        queries = {"queries": "val"}
    params = sampler_params(sampler, cfg, encoder_id=train.encoder_id, **queries)
    write_candidates(snakemake.output[0], mapping, params)
    log.info("%s: %d queries x %d candidates", sampler, len(mapping), cfg.cand_num)
