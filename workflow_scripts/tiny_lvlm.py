"""Rule tiny_lvlm: a tiny LVLM of the real architecture, pretrained on the toy train split when the entry has a
``pretrain`` section (lever_lm.toy.pretrain), else randomly initialised (vocabulary = the dataset's words)."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "tiny_lvlm") as log:
    from lever_lm.data import load_records
    from lever_lm.lvlm.factory import build_tiny_model, is_pretrained, tiny_spec

    name, entry = snakemake.wildcards.beam_model, snakemake.params.entry
    if is_pretrained(entry):
        from lever_lm.toy.pretrain import pretrain_tiny_lvlm

        family, dims, pretrain, seed = tiny_spec(name, entry)
        summary = pretrain_tiny_lvlm(
            family,
            dims,
            pretrain,
            load_records(snakemake.input.train),
            snakemake.output.model_dir,
            seed,
            threads=snakemake.threads,
            log=log,
        )
        log.info(
            "tiny %s pretrained: %d steps, final loss %.4f, %.0f s",
            name,
            pretrain.steps,
            summary["final_loss"],
            summary["train_seconds"],
        )
    else:
        texts = []
        for path in (snakemake.input.train, snakemake.input.val):
            records = load_records(path)
            texts += records["question"].tolist() + [a for answers in records["answers"] for a in answers]
        build_tiny_model(name, entry, snakemake.output.model_dir, texts)
        log.info("tiny %s built (random init) from %d texts", name, len(texts))
