"""Sharding, resume after a crash (torn last line included), gather checks, progress lines."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lever_lm.beam_search import BeamSearchConfig
from lever_lm.beam_shards import (
    finalize_shard,
    gather_beam_shards,
    parse_scatter_item,
    partial_path,
    read_beam_shard,
    read_beams,
    run_beam_shard,
    shard_anchors,
)
from lever_lm.progress import ProgressReporter, format_duration
from tests.test_beam_search import MockAdapter, make_records

N_TRAIN = 40
ANCHORS = [3, 17, 8, 25, 30, 11, 0]
CFG = BeamSearchConfig(beam_size=3, shot_num=2, cand_num=6, sample_num=len(ANCHORS))
RUN_PARAMS = {"beam_model": "mock", "sampler": "rand_sampler", "candidates": {"seed": 0, "cand_num": 6}}


def candidate_sets(anchors=ANCHORS, cand_num=6, seed=0):
    rng = np.random.default_rng(seed)
    return {a: [int(c) for c in rng.permutation([i for i in range(N_TRAIN) if i != a])[:cand_num]] for a in anchors}


@pytest.fixture
def records():
    return make_records(N_TRAIN)


def run_all_shards(tmp_path, records, n_shards, name, adapter_factory=MockAdapter, cfg=CFG):
    finals = []
    for index in range(n_shards):
        final = tmp_path / name / f"shard{index}.jsonl"
        partial = partial_path(final)
        run_beam_shard(
            shard_anchors(ANCHORS, n_shards, index),
            candidate_sets(),
            records,
            adapter_factory(),
            cfg,
            partial,
            RUN_PARAMS,
            progress_interval_s=0,
        )
        finalize_shard(partial, final)
        finals.append(final)
    return finals


def test_scatter_items_and_strided_shards():
    assert parse_scatter_item("1-of-1") == (0, 1)
    assert parse_scatter_item("3-of-8") == (2, 8)
    for bad in ("0-of-2", "3-of-2", "3of8", "a-of-b"):
        with pytest.raises(ValueError, match="scatter item"):
            parse_scatter_item(bad)
    shards = [shard_anchors(ANCHORS, 3, i) for i in range(3)]
    assert shards == [[3, 25, 0], [17, 30], [8, 11]]
    assert sorted(sum(shards, [])) == sorted(ANCHORS)
    assert shard_anchors(ANCHORS, 1, 0) == ANCHORS
    with pytest.raises(ValueError, match="shard_index 3 out of range"):
        shard_anchors(ANCHORS, 3, 3)


def test_shard_file_layout_and_clear_cache_per_anchor(tmp_path, records):
    adapter = MockAdapter()
    out = tmp_path / "s.jsonl.partial"
    run_beam_shard(ANCHORS, candidate_sets(), records, adapter, CFG, out, RUN_PARAMS)
    params, lines = read_beam_shard(out)
    assert params["ex_name"] == "infoscore_left_beam3_shot2_cand6_sample7"
    assert params["beam_model"] == "mock" and params["candidates"] == {"seed": 0, "cand_num": 6}
    assert [r["anchor_id"] for r in lines] == ANCHORS
    assert lines[0]["question_id"] == 1003
    assert adapter.clear_calls == len(ANCHORS)
    assert adapter.score_calls == CFG.shot_num * len(ANCHORS)
    for record in lines:
        assert len(record["sequences"]) == 3 and all(len(s) == 2 for s in record["sequences"])
        assert set(sum(record["sequences"], [])) <= set(candidate_sets()[record["anchor_id"]])
        assert record["scores"] == [steps[-1] for steps in record["step_scores"]]


def test_resume_after_crash_and_torn_line_equals_uninterrupted_run(tmp_path, records, caplog):
    reference = tmp_path / "reference.json"
    gather_beam_shards(run_all_shards(tmp_path, records, 2, "uninterrupted"), ANCHORS, reference)

    crashed_at = 2  # anchors done before the crash in shard 0
    final0 = tmp_path / "resumed" / "shard0.jsonl"
    partial0 = partial_path(final0)
    shard0 = shard_anchors(ANCHORS, 2, 0)
    crashing = MockAdapter(fail_after_score_calls=crashed_at * CFG.shot_num)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_beam_shard(shard0, candidate_sets(), records, crashing, CFG, partial0, RUN_PARAMS)
    assert not final0.exists()
    complete_line = partial0.read_text().splitlines()[1]
    with open(partial0, "a") as fh:  # the killed writer left half a line behind
        fh.write(complete_line[: len(complete_line) // 2])
    assert len(read_beam_shard(partial0)[1]) == crashed_at

    resumed = MockAdapter()
    with caplog.at_level(logging.INFO, logger="lever_lm"):
        run_beam_shard(shard0, candidate_sets(), records, resumed, CFG, partial0, RUN_PARAMS, progress_interval_s=0)
    assert resumed.clear_calls == len(shard0) - crashed_at  # only the remaining anchors were searched
    assert all(json.loads(line) for line in partial0.read_text().splitlines())  # torn text is gone
    assert f"{crashed_at} done before" in caplog.text
    assert f"anchors {len(shard0)}/{len(shard0)} (100.0%)" in caplog.text
    finalize_shard(partial0, final0)

    final1 = tmp_path / "resumed" / "shard1.jsonl"
    run_beam_shard(
        shard_anchors(ANCHORS, 2, 1), candidate_sets(), records, MockAdapter(), CFG, partial_path(final1), RUN_PARAMS
    )
    finalize_shard(partial_path(final1), final1)
    merged = tmp_path / "resumed.json"
    gather_beam_shards([final1, final0], ANCHORS, merged)
    assert read_beams(merged) == read_beams(reference)
    assert [r["anchor_id"] for r in read_beams(merged)["anchors"]] == ANCHORS


def test_rerun_of_a_complete_shard_does_no_work(tmp_path, records):
    out = tmp_path / "s.jsonl.partial"
    run_beam_shard(ANCHORS, candidate_sets(), records, MockAdapter(), CFG, out, RUN_PARAMS)
    before = out.read_bytes()
    again = MockAdapter()
    run_beam_shard(ANCHORS, candidate_sets(), records, again, CFG, out, RUN_PARAMS)
    assert again.score_calls == 0 and out.read_bytes() == before


def test_resume_with_different_params_names_file_and_keys(tmp_path, records):
    out = tmp_path / "s.jsonl.partial"
    run_beam_shard(ANCHORS[:2], candidate_sets(), records, MockAdapter(), CFG, out, RUN_PARAMS)
    other = BeamSearchConfig(beam_size=2, shot_num=2, cand_num=6, sample_num=len(ANCHORS))
    with pytest.raises(
        ValueError, match=r"s\.jsonl\.partial: written with different params \(beam_size: 3 -> 2, ex_name"
    ):
        run_beam_shard(ANCHORS, candidate_sets(), records, MockAdapter(), other, out, RUN_PARAMS)
    with pytest.raises(ValueError, match=r"different params \(sampler: 'rand_sampler' -> 'mix_sampler'\)"):
        run_beam_shard(
            ANCHORS, candidate_sets(), records, MockAdapter(), CFG, out, {**RUN_PARAMS, "sampler": "mix_sampler"}
        )
    with pytest.raises(ValueError, match=r"anchors that are not in this shard: \[3\]"):
        run_beam_shard(ANCHORS[1:], candidate_sets(), records, MockAdapter(), CFG, out, RUN_PARAMS)


def test_fast_flag_does_not_change_params_and_naive_path_is_used(tmp_path, records):
    out = tmp_path / "s.jsonl.partial"
    run_beam_shard(ANCHORS[:2], candidate_sets(), records, MockAdapter(), CFG, out, RUN_PARAMS)
    naive_cfg = BeamSearchConfig(beam_size=3, shot_num=2, cand_num=6, sample_num=len(ANCHORS), use_fast_path=False)
    adapter = MockAdapter()
    run_beam_shard(ANCHORS, candidate_sets(), records, adapter, naive_cfg, out, RUN_PARAMS)
    assert adapter.score_calls == 0 and adapter.naive_calls == CFG.shot_num * (len(ANCHORS) - 2)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda c: c[3].__setitem__(0, 3),
            r"anchor 3 \(question_id 1003\): the candidate pool contains the anchor itself",
        ),
        (lambda c: c.pop(17), r"anchors without a candidate set: \[17\]"),
        (lambda c: c[8].pop(), r"cand_num=6 but anchors \[8\] have \[5\] candidates"),
        (
            lambda c: c[8].__setitem__(1, N_TRAIN + 5),
            r"anchor 8 \(question_id 1008\): candidate ids outside the train split \[45\]",
        ),
    ],
)
def test_bad_candidates_raise_before_anything_is_written(tmp_path, records, mutate, message):
    candidates = candidate_sets()
    mutate(candidates)
    out = tmp_path / "s.jsonl.partial"
    with pytest.raises(ValueError, match=message):
        run_beam_shard(ANCHORS, candidates, records, MockAdapter(), CFG, out, RUN_PARAMS)
    assert not out.exists()


def test_empty_labels_raise_naming_ids(tmp_path):
    out = tmp_path / "s.jsonl.partial"
    with pytest.raises(ValueError, match=r"anchors with an empty label answer: \['17 \(question_id 1017\)'\]"):
        run_beam_shard(ANCHORS, candidate_sets(), make_records(N_TRAIN, {17}), MockAdapter(), CFG, out, RUN_PARAMS)
    icd = candidate_sets()[3][0]
    with pytest.raises(ValueError, match=rf"candidate ICDs with an empty label answer \(train ids\): \[{icd}\]"):
        run_beam_shard([3], candidate_sets([3]), make_records(N_TRAIN, {icd}), MockAdapter(), CFG, out, RUN_PARAMS)
    assert not out.exists()


def test_gather_errors(tmp_path, records):
    shard0, shard1 = run_all_shards(tmp_path, records, 2, "ok")
    out = tmp_path / "beams.json"
    with pytest.raises(ValueError, match=r"missing anchors \[17, 25, 11\]"):
        gather_beam_shards([shard0], ANCHORS, out)
    with pytest.raises(ValueError, match=r"anchors in more than one place 3: \[.*shard0.jsonl', .*shard0.jsonl'\]"):
        gather_beam_shards([shard0, shard1, shard0], ANCHORS, out)
    with pytest.raises(ValueError, match=r"anchors not in the anchors file \[30\]"):
        gather_beam_shards([shard0, shard1], [a for a in ANCHORS if a != 30], out)
    assert not out.exists()

    other_cfg = BeamSearchConfig(beam_size=2, shot_num=2, cand_num=6, sample_num=len(ANCHORS))
    (mismatched,) = [p for p in run_all_shards(tmp_path, records, 2, "other", cfg=other_cfg)[1:]]
    with pytest.raises(
        ValueError, match=r"shard1.jsonl has params differing from .*shard0.jsonl in \['beam_size', 'ex_name'\]"
    ):
        gather_beam_shards([shard0, mismatched], ANCHORS, out)
    assert not out.exists()

    gather_beam_shards([shard1, shard0], ANCHORS, out)
    merged = read_beams(out)
    assert merged["params"]["ex_name"] == "infoscore_left_beam3_shot2_cand6_sample7"
    assert [r["anchor_id"] for r in merged["anchors"]] == ANCHORS


def test_progress_lines_are_throttled_and_final():
    now = [0.0]
    records: list[str] = []

    class ListLogger:
        def info(self, message):
            records.append(message)

    reporter = ProgressReporter(400, "anchors", interval_s=10, log=ListLogger(), already_done=30, clock=lambda: now[0])
    for _ in range(7):
        now[0] += 2.0  # 0.5 anchors/s
        reporter.advance()
    assert records == ["anchors 35/400 (8.8%) | 0.50 anchors/s | ETA 12m10s"]
    reporter.finish()
    assert records[-1] == "anchors 37/400 (9.2%) | 0.50 anchors/s | ETA 12m06s"
    assert format_duration(45) == "45s" and format_duration(3 * 3600 + 5 * 60 + 9) == "3h05m"
    assert format_duration(float("nan")) == "?"
