"""Two clean runs of the same config give byte-identical artifacts (issue 10, determinism).

The reduced toy config of ``tests.pipeline_runs`` (every stage, both tiny LVLMs, selectors v0, v3 and v4, the
random baseline, the report) runs twice in two fresh directories through `snakemake`; the final artifacts are
compared by sha256: beams.json, selector best/last checkpoints and metrics.json, every cell's and baseline's
predictions.parquet and metrics.json, and the report (tables.md, tables.html, selection_overlap.csv, plots).
Then every other file under results/ is compared too (records, embeddings, indexes, anchors, candidates, shards,
the tiny models' weights and their pretraining records): all identical.

What makes the runs identical: every random draw is seeded (anchors, samplers, pretraining, selector shuffling
per (seed, epoch), dropout reseeded per epoch, retrievers); every job pins its torch thread count (the rule's
threads); no artifact holds a timestamp or duration (selector timings go to the job log); checkpoints are
written through a file object, so torch's zip does not carry the temp file's name; json key order follows code,
not hashing. Identical bytes hold for the same thread counts and hardware: a float reduction split over another
number of threads may differ in the last bit.
"""

from __future__ import annotations

import time

import pytest

from tests.pipeline_runs import clean_run, compared_artifacts, hashes, reduced_config, report_artifacts, sha256


def _all_results(workdir):
    return {str(p.relative_to(workdir)): sha256(p) for p in sorted((workdir / "results").rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_clean_runs_give_byte_identical_artifacts(reduced_reference_run, tmp_path_factory):
    config = reduced_config()
    started = time.monotonic()
    second = clean_run(tmp_path_factory.mktemp("second_run"), config)
    print(f"second clean run: {time.monotonic() - started:.0f} s")

    names = compared_artifacts(config) + report_artifacts(config)
    first_hashes, second_hashes = hashes(reduced_reference_run, names), hashes(second, names)
    differing = [name for name in names if first_hashes[name] != second_hashes[name]]
    print(f"final artifacts compared: {len(names)}, differing: {len(differing)}")
    assert not differing

    everything_a, everything_b = _all_results(reduced_reference_run), _all_results(second)
    assert set(everything_a) == set(everything_b)
    others = [name for name in everything_a if everything_a[name] != everything_b[name]]
    print(f"all result files compared: {len(everything_a)}, differing: {others}")
    assert not others
