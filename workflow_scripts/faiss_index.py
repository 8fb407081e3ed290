"""Rule faiss_index: exact inner-product indexes over the train image and text embeddings."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "faiss_index") as log:
    from lever_lm.embeddings import EmbeddingPaths, load_embeddings
    from lever_lm.index import build_flat_ip_index, write_index

    inp = snakemake.input
    train = load_embeddings(EmbeddingPaths(inp.image, inp.text, inp.meta))
    write_index(snakemake.output.image, build_flat_ip_index(train.image))
    write_index(snakemake.output.text, build_flat_ip_index(train.text))
    log.info("indexed %d train records (dim %d)", train.meta["n"], train.meta["dim"])
