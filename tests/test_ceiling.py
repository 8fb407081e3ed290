"""The imitation ceiling: beam search for val queries over their test pools, its top beams as ICDs per shot, the
shard -> gather -> evaluation flow on files, and bad input (each stops naming the file or record, with no output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lever_lm import paths
from lever_lm.beam_search import BeamSearchConfig, ExampleTable, beam_search_anchor, search_anchor
from lever_lm.beam_shards import partial_path, read_beam_shard, read_beams, run_beam_shard
from lever_lm.ceiling import (
    CeilingConfig,
    CeilingRetriever,
    ceiling_icds,
    ceiling_query_rows,
    ceiling_shots,
    gather_ceiling,
    run_ceiling_cell,
    run_ceiling_shard,
)
from lever_lm.errors import InputError
from lever_lm.inference.outputs import PREDICTION_COLUMNS
from tests.test_beam_search import MockAdapter, brute_force, make_records

N_TRAIN, N_VAL, CAND_NUM = 40, 12, 6
VAL_OFFSET = N_TRAIN  # val query i asks "q{40 + i}": MockAdapter's affinity table gives it a row of its own
BEAM_SEARCH = {"construct_order": "left", "beam_size": 3, "shot_num": 2}
CFG = BeamSearchConfig(**BEAM_SEARCH, cand_num=CAND_NUM, sample_num=16)
SAMPLER = "rand_sampler"
IDENTITY = {
    "dataset": "toy",
    "beam_model": "mock",
    "sampler": SAMPLER,
    "ex_name": "infoscore_left_beam3_shot2_cand6_sample16",
}
EVALUATED = {"max_queries": None, "query_seed": 0}
METRIC_KEYS = {
    "kind",
    "dataset",
    "task",
    "beam_model",
    "metric",
    "version",
    "sampler",
    "baseline",
    "replicate",
    "shots",
    "n_queries",
    "max_queries",
    "query_seed",
    "inference",
    "checkpoint",
    "config_digest",
    "beams",
    "ceiling",
}


def val_records(n: int = N_VAL, empty_label_rows=()) -> pd.DataFrame:
    records = make_records(VAL_OFFSET + n).iloc[VAL_OFFSET:].reset_index(drop=True)
    records["idx"] = np.arange(n, dtype=np.int64)
    records["split"] = "val"
    records["question_id"] = np.arange(5000, 5000 + n, dtype=np.int64)
    records["label"] = ["" if row in empty_label_rows else label for row, label in enumerate(records["label"])]
    return records


def test_pools(seed: int = 0) -> dict[int, list[int]]:
    """Each val row's pool of train ids; row r's pool holds train id r (a val id is no train id, so that is fine)."""
    rng = np.random.default_rng(seed)
    pools = {}
    for row in range(N_VAL):
        others = [int(i) for i in rng.permutation([i for i in range(N_TRAIN) if i != row])[: CAND_NUM - 1]]
        pools[row] = [row, *others]
    return pools


test_pools.__test__ = False  # a helper, not a test


def p_bar_by_hand(adapter: MockAdapter, query_id: int):
    """P̄ of MockAdapter's answer for query ``query_id`` given a sequence, from its formula (not through prompts)."""

    def p_bar(sequence):
        logit = -0.5 + sum(
            adapter.position_weight[d] * adapter.affinity[query_id, icd] for d, icd in enumerate(reversed(sequence))
        )
        return 1.0 / (1.0 + np.exp(-logit))

    return p_bar


# ----------------------------------------------------------------------------------------------- the search


@pytest.mark.parametrize("order", ["left", "right"])
def test_val_query_beams_equal_the_algorithm_run_by_hand(order):
    # beam as wide as the pool and 2 shots: the search sees every ordered pair, so it equals brute force
    train, val = make_records(N_TRAIN), ExampleTable.from_records(val_records(), name="val.parquet", split="val")
    cfg = BeamSearchConfig(construct_order=order, beam_size=CAND_NUM, shot_num=2, cand_num=CAND_NUM)
    row = 3
    pool = test_pools()[row]
    assert row in pool  # a train id that equals the val row is an ordinary candidate
    adapter = MockAdapter()
    result = search_anchor(adapter, train, row, pool, cfg, queries=val)
    expected = brute_force(pool, p_bar_by_hand(adapter, VAL_OFFSET + row), order, 2)[:CAND_NUM]
    assert list(result.sequences) == [sequence for sequence, _ in expected]
    np.testing.assert_allclose(np.array(result.step_scores), np.array([s for _, s in expected]), atol=1e-12)
    assert (result.anchor_id, result.question_id) == (row, 5000 + row)
    # the query is the val record with its gold answer (label), the ICDs are train records
    queries = {prompt.query for call in adapter.prompts_seen for prompt in call}
    assert {(q.question, q.answer) for q in queries} == {(f"q{VAL_OFFSET + row}", f"a{VAL_OFFSET + row}")}
    assert adapter.clear_calls == 1


def test_only_a_train_anchor_may_not_be_among_its_candidates():
    scorer = lambda sequences: np.full(len(sequences), 0.5)  # noqa: E731
    pool = test_pools()[3]
    with pytest.raises(ValueError, match=r"anchor 3.*contains the anchor itself"):
        beam_search_anchor(3, pool, scorer, CFG)
    result = beam_search_anchor(3, pool, scorer, CFG, question_id=5003, query_split="val")
    assert len(result.sequences) == CFG.beam_size
    with pytest.raises(ValueError, match=r"val query 3 \(question_id 5003\): duplicate candidate ids \[7\]"):
        beam_search_anchor(3, [7, 7, 1, 2, 4, 5], scorer, CFG, question_id=5003, query_split="val")


def test_anchor_shards_keep_their_header(tmp_path):
    out = tmp_path / "anchors.jsonl.partial"
    pools = {a: [c for c in range(N_TRAIN) if c != a][:CAND_NUM] for a in (1, 2)}
    run_beam_shard([1, 2], pools, make_records(N_TRAIN), MockAdapter(), CFG, out, {"beam_model": "mock"})
    params, _ = read_beam_shard(out)
    assert "query_split" not in params


# ----------------------------------------------------------------------------------------------- ICDs per shot


def test_icds_per_shot_are_prefixes_of_the_top_beam_in_prompt_order():
    # left: the beams are stored in prompt order, the first pick last (nearest the query)
    records = [{"anchor_id": 5, "sequences": [[7, 3], [3, 9]]}, {"anchor_id": 2, "sequences": [[1, 8], [8, 1]]}]
    icds = ceiling_icds(records, "left", shots=[1, 2, 4])
    assert icds == {1: {2: [8], 5: [3]}, 2: {2: [1, 8], 5: [7, 3]}}  # shot 4 > shot_num: left out
    right = [{"anchor_id": 5, "sequences": [[3, 7], [9, 3]]}]
    assert ceiling_icds(right, "right", shots=[1, 2]) == {1: {5: [3]}, 2: {5: [3, 7]}}
    assert ceiling_shots([1, 2, 3, 4], 2) == ((1, 2), (3, 4))
    chooser = CeilingRetriever({5: [3, 7]}, "left", 2, "beams.json")
    with pytest.raises(ValueError, match="shot 3 must be between 1 and beam_search.shot_num 2"):
        chooser.choose([5], 3)
    with pytest.raises(InputError, match=r"beams.json: no beams for val query idx \[6\]"):
        chooser.choose([6], 1)


def test_ceiling_queries_are_a_seeded_subset_of_the_evaluated_ones():
    from lever_lm.inference.inputs import select_queries

    everything = ceiling_query_rows(100, CeilingConfig.from_config(None), EVALUATED)
    assert everything.tolist() == list(range(100))
    evaluated = select_queries(100, 40, 3)
    subset_ceiling = CeilingConfig.from_config({"max_queries": 10, "query_seed": 1})
    subset = ceiling_query_rows(100, subset_ceiling, {"max_queries": 40, "query_seed": 3})
    assert len(subset) == 10 and set(subset) <= set(evaluated) and subset.tolist() == sorted(subset.tolist())
    again = ceiling_query_rows(100, subset_ceiling, {"max_queries": 40, "query_seed": 3})
    assert subset.tolist() == again.tolist()
    with pytest.raises(ValueError, match="ceiling.shards: 0 is less than the minimum of 1"):
        CeilingConfig.from_config({"shards": 0})
    with pytest.raises(ValueError, match="unknown config key ceiling.colour"):
        CeilingConfig.from_config({"colour": "red"})


def test_ceiling_cells_follow_the_beam_models_weights_across_replicates():
    config = {
        "beam_models": {"tiny": {"variant": "tiny"}, "real": {"variant": "local"}},
        "samplers": ["rand_sampler"],
        "replicates": {"seeds": [0, 1], "pretrain": True},
    }
    assert paths.ceiling_cells(config) == [
        {"beam_model": "tiny", "sampler": "rand_sampler", "replicate": ""},
        {"beam_model": "real", "sampler": "rand_sampler", "replicate": ""},
        {"beam_model": "tiny", "sampler": "rand_sampler", "replicate": "_rep1"},
    ]
    assert paths.ceiling_cells({**config, "ceiling": {"enabled": False}}) == []


# ----------------------------------------------------------------------------------------------- files


class AnswerNearestIcd:
    """Generates the label of the ICD nearest the query; counts the prompts it saw."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, max_new_tokens, num_beams, batch_size=None):
        self.prompts += list(prompts)
        return [p.demos[-1].answer for p in prompts]


@pytest.fixture
def files(tmp_path):
    from lever_lm.data import write_records
    from lever_lm.sampling import write_candidates

    def write(val=None, pools=None):
        root = tmp_path / "inputs"
        write_records(root / "train.parquet", make_records(N_TRAIN))
        write_records(root / "val.parquet", val_records() if val is None else val)
        write_candidates(
            root / "pool.json", test_pools() if pools is None else pools, {"sampler": SAMPLER, "cand_num": CAND_NUM}
        )
        return {
            "train_records": str(root / "train.parquet"),
            "val_records": str(root / "val.parquet"),
            "test_pool": str(root / "pool.json"),
        }

    return write


def shard_kwargs(inputs, out_path, ceiling, scatteritem="1-of-1", adapter=None):
    return dict(
        scatteritem=scatteritem,
        **inputs,
        weights=[],
        beam_model="mock",
        sampler=SAMPLER,
        entry={"variant": "mock"},
        beam_search=BEAM_SEARCH,
        cand_num=CAND_NUM,
        sample_num=16,
        ceiling=ceiling,
        inference=EVALUATED,
        out_path=str(out_path),
        adapter=adapter or MockAdapter(),
    )


def test_shards_gather_and_evaluation_on_files(tmp_path, files):
    inputs = files()
    ceiling = {"max_queries": 8, "query_seed": 0, "shards": 2}
    shards = [tmp_path / "ceiling" / "shards" / f"{i}-of-2.jsonl" for i in (1, 2)]
    for i, shard in enumerate(shards, start=1):
        run_ceiling_shard(**shard_kwargs(inputs, shard, ceiling, f"{i}-of-2"))
        assert shard.is_file() and not partial_path(shard).exists()
    beams_path = tmp_path / "ceiling" / "beams.json"
    gather_ceiling([str(s) for s in shards], inputs["val_records"], ceiling, EVALUATED, str(beams_path))

    rows = ceiling_query_rows(N_VAL, CeilingConfig.from_config(ceiling), EVALUATED).tolist()
    beams = read_beams(beams_path)
    assert beams["params"]["query_split"] == "val" and beams["params"]["sampler"] == SAMPLER
    assert [r["anchor_id"] for r in beams["anchors"]] == rows and len(rows) == 8
    val = ExampleTable.from_records(val_records(), split="val")
    for record in beams["anchors"]:  # each val query's beams are those of a search by hand
        row = record["anchor_id"]
        by_hand = search_anchor(MockAdapter(), make_records(N_TRAIN), row, test_pools()[row], CFG, queries=val)
        assert record == by_hand.to_record()

    adapter = AnswerNearestIcd()
    metrics_path, predictions_path = tmp_path / "ceiling" / "metrics.json", tmp_path / "ceiling" / "predictions.parquet"
    metrics = run_ceiling_cell(
        identity=IDENTITY,
        beams=str(beams_path),
        train_records=inputs["train_records"],
        val_records=inputs["val_records"],
        weights=[],
        entry={"variant": "mock"},
        inference={"shots": [1, 2, 3], "batch_size": 4},
        ceiling=ceiling,
        task="vqa",
        metrics_path=str(metrics_path),
        predictions_path=str(predictions_path),
        adapter=adapter,
        replicate=0,
    )
    assert json.loads(metrics_path.read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics) == METRIC_KEYS
    assert (metrics["kind"], metrics["version"], metrics["sampler"], metrics["beam_model"]) == (
        "ceiling",
        None,
        SAMPLER,
        "mock",
    )
    assert sorted(metrics["shots"]) == ["1", "2"] and metrics["n_queries"] == 8
    assert metrics["inference"]["shots"] == [1, 2, 3]  # the job's settings as configured; shot 3 is left out:
    assert metrics["ceiling"]["shots_not_evaluated"] == [3] and metrics["ceiling"]["shot_num"] == 2
    assert metrics["beams"]["params"]["query_split"] == "val"

    predictions = pd.read_parquet(predictions_path)
    assert list(predictions.columns) == list(PREDICTION_COLUMNS) and len(predictions) == 2 * 8
    top = {r["question_id"]: r["sequences"][0] for r in beams["anchors"]}  # prompt order, first pick last
    for qid, shot, icds in zip(predictions["question_id"], predictions["shot"], predictions["icd_ids"]):
        assert list(icds) == top[qid][-shot:], (qid, shot)
    assert all(p.query.answer is None for p in adapter.prompts)  # the answer to generate is not in its prompt
    assert not Path(str(predictions_path) + ".partial.jsonl").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty label", r"val\.parquet: val queries with an empty label answer: \['4 \(question_id 5004\)'\]"),
        (
            "pool id out of range",
            r"pool\.json: val query 2 \(question_id 5002\): candidate ids outside the train "
            r"split \[45\]",
        ),
        ("missing pool entry", r"pool\.json: val queries without a candidate set: \[7\]"),
        ("short pool", r"pool\.json: cand_num=6 but val queries \[0, 1, 2, 3, 4\] \(\+7 more\) have \[5, 5, 5, 5, 5\]"),
    ],
)
def test_bad_shard_input_names_the_file_and_record_and_writes_nothing(tmp_path, files, case, message):
    val, pools = val_records(), test_pools()
    if case == "empty label":
        val = val_records(empty_label_rows={4})
    elif case == "pool id out of range":
        pools[2][1] = N_TRAIN + 5
    elif case == "missing pool entry":
        del pools[7]
    inputs = files(val=val, pools=pools)
    if case == "short pool":  # the candidate writer refuses it: a file made elsewhere, without cand_num in its params
        data = json.loads(Path(inputs["test_pool"]).read_text())
        data["params"].pop("cand_num")
        data["candidates"] = {k: v[:-1] for k, v in data["candidates"].items()}
        Path(inputs["test_pool"]).write_text(json.dumps(data))
    adapter = MockAdapter()
    out = tmp_path / "ceiling" / "shards" / "1-of-1.jsonl"
    with pytest.raises(InputError, match=message):
        run_ceiling_shard(**shard_kwargs(inputs, out, {"max_queries": None, "query_seed": 0}, adapter=adapter))
    assert not out.exists() and not partial_path(out).exists()
    assert adapter.score_calls == 0  # stopped before any scoring


def test_bad_ceiling_beams_stop_before_the_lvlm_and_leave_no_metrics(tmp_path, files):
    inputs = files()
    ceiling = {"max_queries": 4, "query_seed": 0}
    shard = tmp_path / "shard.jsonl"
    run_ceiling_shard(**shard_kwargs(inputs, shard, ceiling))
    beams = tmp_path / "beams.json"
    gather_ceiling([str(shard)], inputs["val_records"], ceiling, EVALUATED, str(beams))
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text("{}")  # a stale file of an earlier run must go as well
    common = dict(
        beams=str(beams),
        train_records=inputs["train_records"],
        val_records=inputs["val_records"],
        weights=[],
        entry={"variant": "mock"},
        inference={"shots": [1, 2]},
        task="vqa",
        metrics_path=str(metrics_path),
        predictions_path=str(tmp_path / "predictions.parquet"),
        adapter=AnswerNearestIcd(),
    )
    with pytest.raises(
        InputError,
        match=rf"{beams}: made for sampler 'rand_sampler', this ceiling cell is "
        r"'img_sim_sampler'",
    ):
        run_ceiling_cell(identity={**IDENTITY, "sampler": "img_sim_sampler"}, ceiling=ceiling, **common)
    assert not metrics_path.exists()
    with pytest.raises(InputError, match=rf"{beams}: holds other val queries than the config's ceiling"):
        run_ceiling_cell(identity=IDENTITY, ceiling={"max_queries": 5, "query_seed": 0}, **common)
    assert not metrics_path.exists() and not (tmp_path / "predictions.parquet").exists()
