"""Rule train_selector: train one selector version on the beams of one (beam_model, sampler); resumable."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "train_selector") as log, gpu_lease():
    from pathlib import Path

    from lever_lm.selectors import SelectorConfig, TrainIdentity, TrainPaths, train

    inp, wildcards = snakemake.input, snakemake.wildcards
    identity = TrainIdentity(
        dataset=wildcards.dataset,
        beam_model=wildcards.beam_model,
        sampler=wildcards.sampler,
        ex_name=wildcards.ex_name,  # the beams' generation params; a replicate is told apart by its path
        version=wildcards.version,
        lever_lm=wildcards.lever_lm,
    )
    paths = TrainPaths(
        beams=inp.beams,
        candidates=inp.candidates,
        train_embeddings_image=inp.train_image,
        train_embeddings_text=inp.train_text,
        train_embeddings_meta=inp.train_meta,
        out_dir=str(Path(snakemake.output.best).parent),
        init_checkpoint=inp.init_checkpoint[0] if inp.init_checkpoint else None,
    )
    metrics = train(
        SelectorConfig.from_config(snakemake.params.selector),
        identity,
        paths,
        threads=snakemake.threads,
    )
    log.info("%s: %s", identity.version, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
