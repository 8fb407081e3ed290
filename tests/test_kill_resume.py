"""SIGKILL mid-way, then rerun: a beam shard, a selector training and an inference job each resume, and the outputs
equal those of an uninterrupted run byte for byte (issue 10).

The slow test drives the real `snakemake` on the reduced toy config of ``tests.pipeline_runs`` (Flamingo-tiny only)
in one working directory, in its own process group, and kills the whole group (Snakemake and its jobs, nobody gets
to clean up) three times:
1. once a beam shard's ``.jsonl.partial`` holds 3 or more but not all of its 8 anchors;
2. once a selector's job has logged 3 or more of its 12 epochs (each saved in ``resume/state.ckpt``) and its
   metrics.json does not exist;
3. once a selector cell's inference job (rule icl_inference) has 4 or more of its 18 generated batches in its
   ``predictions.parquet.partial.jsonl``.
After each kill it runs ``snakemake --unlock`` (a SIGKILLed Snakemake leaves its lock behind) and reruns with
``--rerun-incomplete`` (as profiles/local does: a job whose outputs were all written, atomically, just before the
kill, but not yet recorded, is rerun rather than trusted). The job logs must show that each killed job resumed
(anchors done before, epochs, batches taken from the journal), and every final artifact must have the sha256 of the
same artifact in the clean reference run (the session fixture ``reduced_reference_run``), with no partial, resume
or fingerprint file left behind.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from tests.pipeline_runs import (
    compared_artifacts,
    complete_lines,
    hashes,
    kill_when,
    reduced_config,
    run_snakemake,
    write_config,
)

BEAM_MODEL = "flamingo_tiny"


# ---------------------------------------------------------------------------------------------- beam shard stamp


def test_partial_shard_from_other_inputs_is_discarded_not_resumed(tmp_path, caplog):
    from lever_lm.beam_shards import finalize_shard, fingerprint_path, read_beam_shard, run_beam_shard
    from tests.test_beam_shards import ANCHORS, CFG, N_TRAIN, RUN_PARAMS, MockAdapter, candidate_sets, make_records

    records = make_records(N_TRAIN)
    partial = tmp_path / "s.jsonl.partial"
    run_beam_shard(
        ANCHORS,
        candidate_sets(),
        records,
        MockAdapter(),
        CFG,
        partial,
        RUN_PARAMS,
        input_fingerprint={"weights": "old model"},
    )
    assert fingerprint_path(partial).is_file()
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:2]) + "\n")  # as if killed after the first anchor
    caplog.set_level(logging.INFO, logger="lever_lm.beam_shards")
    run_beam_shard(
        ANCHORS,
        candidate_sets(),
        records,
        MockAdapter(),
        CFG,
        partial,
        RUN_PARAMS,
        input_fingerprint={"weights": "old model"},
    )  # same inputs: resumed
    assert f"1 done before, {len(ANCHORS) - 1} to go" in caplog.text
    partial.write_text("\n".join(lines[:2]) + "\n")
    caplog.clear()
    run_beam_shard(
        ANCHORS,
        candidate_sets(),
        records,
        MockAdapter(),
        CFG,
        partial,
        RUN_PARAMS,
        input_fingerprint={"weights": "rebuilt model"},
    )
    assert "made from other inputs or config: starting over" in caplog.text
    assert f"0 done before, {len(ANCHORS)} to go" in caplog.text
    assert len(read_beam_shard(partial)[1]) == len(ANCHORS)  # all anchors searched again, none kept
    final = tmp_path / "s.jsonl"
    finalize_shard(partial, final)
    assert final.is_file() and not fingerprint_path(partial).exists()


# ---------------------------------------------------------------------------------------------- real SIGKILLs


def _first(paths, condition):
    for path in sorted(paths):
        seen = condition(path)
        if seen:
            return seen
    return None


@pytest.mark.slow
def test_sigkill_mid_shard_training_and_inference_resumes_to_identical_outputs(reduced_reference_run, tmp_path_factory):
    config = reduced_config(beam_models=(BEAM_MODEL,))
    work = tmp_path_factory.mktemp("killed_run")
    write_config(work, config)
    results = work / "results" / config["dataset"]["name"]
    anchors_per_shard = config["anchors"]["sample_num"] // config["beam_search"]["shards"]
    started = time.monotonic()
    timeline = []

    def shard_in_progress(path: Path):
        anchors = complete_lines(path) - 1  # the header line
        return (path, anchors) if 3 <= anchors < anchors_per_shard else None

    shard, anchors_done = kill_when(
        work, lambda: _first(results.glob("beam/*/*/*/shards/*.jsonl.partial"), shard_in_progress)
    )
    assert not shard.with_name(shard.name.removesuffix(".partial")).exists()
    timeline.append(f"beam shard {shard.name}: killed after {anchors_done}/{anchors_per_shard} anchors")

    def training_in_progress(log: Path):
        epochs = len(re.findall(r"\bepoch \d+/\d+ ", log.read_text()))  # logged just before its state is saved
        version = re.search(r"_(v\d)_", log.name).group(1)
        out_dir = next(results.glob(f"model_cpk/{version}/*/*/*/*"), None)
        if epochs < 3 or out_dir is None or (out_dir / "metrics.json").exists():
            return None
        return (out_dir, epochs) if (out_dir / "resume" / "state.ckpt").exists() else None

    run_snakemake(work, "--unlock")
    selector_dir, epochs_logged = kill_when(
        work,
        lambda: _first((work / "logs" / "train_selector").glob("*.log"), training_in_progress),
        "--rerun-incomplete",
    )
    assert not (selector_dir / "best.ckpt").exists()
    total_epochs = config["selector"]["epochs"]
    timeline.append(
        f"selector {selector_dir.relative_to(results / 'model_cpk').parts[0]}: killed with "
        f"{epochs_logged} of {total_epochs} epochs logged"
    )

    def inference_in_progress(path: Path):
        batches = complete_lines(path) - 1
        return (path, batches) if batches >= 4 and not (path.parent / "metrics.json").exists() else None

    run_snakemake(work, "--unlock")  # a selector cell (rule icl_inference), not a baseline
    cells = "icl_inference/v*/*/*/*/*/predictions.parquet.partial.jsonl"
    journal, batches_done = kill_when(
        work, lambda: _first(results.glob(cells), inference_in_progress), "--rerun-incomplete"
    )
    toy = config["dataset"]["toy"]
    n_val = toy["val_images"] * toy["questions_per_image"]  # max_queries is null: the full val split
    total_batches = len(config["inference"]["shots"]) * -(-n_val // config["inference"]["batch_size"])
    assert batches_done < total_batches
    timeline.append(
        f"inference {journal.relative_to(results / 'icl_inference')}: killed after "
        f"{batches_done}/{total_batches} batches"
    )

    run_snakemake(work, "--unlock")
    run_snakemake(work, "--rerun-incomplete")
    elapsed = time.monotonic() - started

    logs = {path: path.read_text() for path in (work / "logs").rglob("*.log")}
    shard_log = _one(logs, f"{shard.name.removesuffix('.jsonl.partial')}.log", "beam_shard")
    assert re.search(rf"{anchors_done} done before, {anchors_per_shard - anchors_done} to go", shard_log)
    training_log = _one(logs, None, "train_selector", contains="resuming from")
    resumed_after = int(re.search(r"resumed after epoch (\d+)", training_log).group(1))
    assert epochs_logged - 1 <= resumed_after < total_epochs
    inference_log = _one(logs, None, "icl_inference", contains=f"{batches_done} batch(es) done")
    assert "resuming from" in inference_log
    timeline.append(
        f"reruns resumed: shard at anchor {anchors_done}, selector after epoch {resumed_after}, "
        f"inference with {batches_done} batch(es) from its journal"
    )

    names = compared_artifacts(config)
    ours, reference = hashes(work, names), hashes(reduced_reference_run, names)
    differing = [name for name in names if ours[name] != reference[name]]
    print(
        "\n".join(timeline) + f"\n{len(names)} artifacts compared with the clean run, {len(differing)} differ; "
        f"killed run took {elapsed:.0f} s"
    )
    assert not differing
    leftovers = [
        str(p)
        for p in results.rglob("*")
        if p.name.endswith((".partial", ".partial.jsonl", ".fingerprint")) or p.name == "resume" or ".tmp" in p.name
    ]
    assert not leftovers, leftovers


def _one(logs: dict, name_suffix: str | None, rule: str | None, contains: str | None = None) -> str:
    found = [
        text
        for path, text in logs.items()
        if (name_suffix is None or path.name.endswith(name_suffix))
        and (rule is None or path.parent.name == rule)
        and (contains is None or contains in text)
    ]
    assert len(found) >= 1, (name_suffix, rule, contains)
    return found[0]
