# Lever-Plus: learn which in-context demonstrations to show a vision-language model.
# Stages live in rules/*.smk, the logic in the lever_lm package. Plan with `snakemake -n`.


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/retrieval.smk"
include: "rules/beam_search.smk"


rule all:
    input:
        all_targets(config),
    default_target: True
