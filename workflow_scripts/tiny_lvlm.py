"""Rule tiny_lvlm: materialise a tiny LVLM of the real architecture (vocabulary = the dataset's words)."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "tiny_lvlm") as log:
    from lever_lm.data import load_records
    from lever_lm.lvlm.factory import build_tiny_model

    texts = []
    for path in (snakemake.input.train, snakemake.input.val):
        records = load_records(path)
        texts += records["question"].tolist() + [a for answers in records["answers"] for a in answers]
    build_tiny_model(
        snakemake.wildcards.beam_model, snakemake.params.entry, snakemake.output.model_dir, texts
    )
    log.info("tiny %s built from %d texts", snakemake.wildcards.beam_model, len(texts))
