"""Rule beam_shard: InfoScore beam search over one shard of the anchors, resumable (see lever_lm.beam_shards)."""

from lever_lm.gpu_lease import gpu_lease
from lever_lm.runlog import script_logging

with script_logging(snakemake.log[0], "beam_shard") as log, gpu_lease():
    from lever_lm.beam_search import config_from_dict
    from lever_lm.beam_shards import (
        finalize_shard,
        parse_scatter_item,
        partial_path,
        run_beam_shard,
        shard_anchors,
    )
    from lever_lm.data import load_records
    from lever_lm.determinism import pin
    from lever_lm.io_utils import inputs_fingerprint
    from lever_lm.lvlm.factory import load_adapter
    from lever_lm.sampling import read_anchors, read_candidates

    pin(snakemake.threads)  # threads, deterministic kernels, cuBLAS workspace: before CUDA starts
    wildcards, params = snakemake.wildcards, snakemake.params
    cfg = config_from_dict(params.beam_search, cand_num=params.cand_num, sample_num=params.sample_num)
    shard_index, n_shards = parse_scatter_item(wildcards.scatteritem)
    anchors = shard_anchors(read_anchors(snakemake.input.anchors).anchors, n_shards, shard_index)
    candidates = read_candidates(snakemake.input.candidates)
    tiny_dir = snakemake.input.weights[0] if params.entry["variant"] == "tiny" else None
    adapter = load_adapter(wildcards.beam_model, params.entry, tiny_dir)
    partial = partial_path(snakemake.output.shard)
    run_beam_shard(
        anchors,
        candidates.candidates,
        load_records(snakemake.input.train_records),
        adapter,
        cfg,
        partial,
        run_params={
            "beam_model": wildcards.beam_model,
            "sampler": wildcards.sampler,
            "candidates": candidates.params,
        },
        log=log,
        input_fingerprint=inputs_fingerprint(dict(snakemake.input.items())),
    )
    finalize_shard(partial, snakemake.output.shard)
