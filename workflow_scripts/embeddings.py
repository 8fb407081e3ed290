"""Rule embeddings: CLIP image and text embeddings of every record of one split, computed once."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "embeddings") as log, gpu_lease():
    from lever_lm.data import load_records
    from lever_lm.embeddings import (
        ClipEncoderConfig,
        EmbeddingPaths,
        compute_record_embeddings,
        save_embeddings,
    )

    entry = {"device": "auto", **snakemake.params.encoder}
    encoder_cfg = ClipEncoderConfig.from_config(snakemake.wildcards.encoder, entry)
    result = compute_record_embeddings(
        load_records(snakemake.input.records), encoder_cfg, num_threads=snakemake.threads
    )
    out = snakemake.output
    save_embeddings(EmbeddingPaths(out.image, out.text, out.meta), result)
    log.info("embedded %d records with %s", result.meta["n"], result.meta["encoder_id"])
