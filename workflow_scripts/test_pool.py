"""Rule test_pool: the test-time candidate pool of every val query for one sampler."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "test_pool") as log:
    from lever_lm.sampling import (
        SamplerConfig,
        load_embedded_split,
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
    queries = load_embedded_split(inp.query_records, inp.query_image, inp.query_text)
    mapping = test_pool_candidates(sampler, queries, train, cfg)
    params = sampler_params(sampler, cfg, encoder_id=train.encoder_id, queries="val")
    write_candidates(snakemake.output.pool, mapping, params)
    log.info("%s: %d val queries x %d candidates", sampler, len(mapping), cfg.cand_num)
