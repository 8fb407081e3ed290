# Lever-Plus: learn which in-context demonstrations to show a vision-language model.
# Stages live in rules/*.smk, the logic in the lever_lm package. Plan with `snakemake -n`.


# The embedded default, unless --configfile names another config (Snakemake would deep-merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/toy.smk"
include: "rules/data.smk"
include: "rules/retrieval.smk"
include: "rules/beam_search.smk"
include: "rules/ceiling.smk"
include: "rules/selectors.smk"
include: "rules/inference.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(config),
