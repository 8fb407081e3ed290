"""Rule toy_dataset: generate the deterministic synthetic OK-VQA-format dataset."""

from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "toy_dataset"):
    from lever_lm.toy.data import ToyDatasetConfig, generate_toy_okvqa

    generate_toy_okvqa(snakemake.params.root, ToyDatasetConfig(**snakemake.params.toy))
