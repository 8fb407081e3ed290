"""InfoScore beam search against mock scorers whose optimum is known (or brute-forced)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from lever_lm.beam_search import (
    BeamSearchConfig,
    ExampleTable,
    beam_search_anchor,
    config_from_dict,
    ex_name,
    make_sequence_scorer,
    search_anchor,
)
from lever_lm.lvlm.base import LVLMAdapter


class TableScorer:
    """P̄(sequence) from a deterministic function; records every call's requested sequences."""

    def __init__(self, function):
        self.function = function
        self.calls: list[list[tuple[int, ...]]] = []

    def __call__(self, sequences):
        self.calls.append(list(sequences))
        return np.array([self.function(tuple(s)) for s in sequences])


def random_interaction_function(n_ids: int, seed: int):
    """A position-aware P̄ with pairwise interactions, so order and content both matter."""
    rng = np.random.default_rng(seed)
    unary = rng.normal(0, 0.1, size=(4, n_ids))  # weight of an id by its distance from the query
    pair = rng.normal(0, 0.05, size=(n_ids, n_ids))

    def p_bar(seq):
        value = 0.4
        for distance, icd in enumerate(reversed(seq)):
            value += unary[distance, icd]
        for a, b in zip(seq, seq[1:]):
            value += pair[a, b]
        return value

    return p_bar


def brute_force(candidates, p_bar, order, shot_num):
    """All ordered sequences of length shot_num with their per-step InfoScores (last step ranks them)."""
    results = []
    for picks in itertools.permutations(candidates, shot_num):  # picks in the order they are added
        sequence, steps = (), []
        for c in picks:
            extended = (c, *sequence) if order == "left" else (*sequence, c)
            steps.append(p_bar(extended) - p_bar(sequence))
            sequence = extended
        results.append((sequence, tuple(steps)))
    results.sort(key=lambda item: -item[1][-1])
    return results


@pytest.mark.parametrize("order", ["left", "right"])
@pytest.mark.parametrize("seed,candidates", [(0, [7, 3, 9, 1, 4, 8]), (1, [2, 5, 9, 6, 11, 10, 3])])
def test_beam_search_equals_brute_force_when_beam_covers_everything(order, seed, candidates):
    # with K=2 and B >= the pool size, step 2 sees every ordered pair, so beam search is exact
    shot_num, beam_size = 2, len(candidates)
    p_bar = random_interaction_function(12, seed=seed)
    cfg = BeamSearchConfig(construct_order=order, beam_size=beam_size, shot_num=shot_num, cand_num=len(candidates))
    result = beam_search_anchor(0, candidates, TableScorer(p_bar), cfg)
    expected = brute_force(candidates, p_bar, order, shot_num)[:beam_size]
    assert list(result.sequences) == [seq for seq, _ in expected]
    np.testing.assert_allclose(np.array(result.step_scores), np.array([s for _, s in expected]), atol=1e-12)
    assert result.scores == tuple(s[-1] for s in result.step_scores)


@pytest.mark.parametrize(
    "order,expected_sequences,expected_steps",
    [
        ("left", [(0, 4), (4, 0)], [(-0.02, -0.01), (-0.01, -0.02)]),
        ("right", [(4, 0), (0, 4)], [(-0.02, -0.01), (-0.01, -0.02)]),
    ],
)
def test_negative_scores_rank_largest_first_and_sequences_are_in_prompt_order(
    order, expected_sequences, expected_steps
):
    # additive model: adding ICD i changes P̄ by gains[i]; all gains negative, the least negative are best
    gains = {0: -0.01, 1: -0.2, 2: -0.05, 3: -0.3, 4: -0.02, 5: -0.15}
    scorer = TableScorer(lambda seq: 0.5 + sum(gains[i] for i in seq))
    cfg = BeamSearchConfig(construct_order=order, beam_size=2, shot_num=2, cand_num=6)
    result = beam_search_anchor(11, list(gains), scorer, cfg, question_id=123)
    assert list(result.sequences) == expected_sequences
    np.testing.assert_allclose(np.array(result.step_scores), np.array(expected_steps), atol=1e-12)
    assert all(s < 0 for s in result.scores)
    record = result.to_record()
    assert record["anchor_id"] == 11 and record["question_id"] == 123
    assert record["sequences"] == [list(s) for s in expected_sequences]


@pytest.mark.parametrize("order", ["left", "right"])
def test_one_scoring_call_per_step_with_baselines_and_prompt_order(order):
    candidates = list(range(1, 9))
    scorer = TableScorer(random_interaction_function(12, seed=5))
    cfg = BeamSearchConfig(construct_order=order, beam_size=3, shot_num=3, cand_num=8)
    result = beam_search_anchor(0, candidates, scorer, cfg)

    assert len(scorer.calls) == cfg.shot_num
    assert scorer.calls[0] == [(), *[(c,) for c in candidates]]  # bare query baseline, then every candidate
    for step, call in enumerate(scorer.calls[1:], start=2):
        # later baselines (the beams) were scored in the previous call: only extensions are requested
        baselines = set(scorer.calls[step - 2])
        assert all(len(seq) == step for seq in call) and len(set(call)) == len(call)
        assert len(call) == cfg.beam_size * (len(candidates) - (step - 1))
        beams_used = set()
        for seq in call:
            previous = seq[1:] if order == "left" else seq[:-1]
            assert previous in baselines  # the new ICD went to the far left (or right) of an existing beam
            beams_used.add(previous)
        assert len(beams_used) == cfg.beam_size
    assert len(result.sequences) == cfg.beam_size
    for seq, steps in zip(result.sequences, result.step_scores):
        assert len(seq) == cfg.shot_num == len(set(seq)) == len(steps)
        assert set(seq) <= set(candidates)
    assert list(result.scores) == sorted(result.scores, reverse=True)


def test_ties_go_to_the_earlier_beam_then_the_earlier_candidate():
    scorer = TableScorer(lambda seq: 0.5)  # every InfoScore is 0
    cfg = BeamSearchConfig(construct_order="left", beam_size=3, shot_num=2, cand_num=5)
    result = beam_search_anchor(0, [10, 11, 12, 13, 14], scorer, cfg)
    # step 1 keeps 10, 11, 12; step 2's pool starts with beam (10,)'s first extensions
    assert list(result.sequences) == [(11, 10), (12, 10), (13, 10)]


def test_beam_search_is_deterministic():
    p_bar = random_interaction_function(20, seed=9)
    cfg = BeamSearchConfig(beam_size=5, shot_num=2, cand_num=12)
    first = beam_search_anchor(0, list(range(1, 13)), TableScorer(p_bar), cfg)
    second = beam_search_anchor(0, list(range(1, 13)), TableScorer(p_bar), cfg)
    assert first == second


def test_bad_pools_raise_naming_the_anchor():
    cfg = BeamSearchConfig(beam_size=5, shot_num=2, cand_num=4)
    scorer = TableScorer(lambda seq: 0.5)
    with pytest.raises(ValueError, match=r"anchor 7 \(question_id 70\).*4 candidates, need at least 5"):
        beam_search_anchor(7, [1, 2, 3, 4], scorer, cfg, question_id=70)
    with pytest.raises(ValueError, match=r"anchor 7.*need at least 3.*shot_num=3"):
        beam_search_anchor(7, [1, 2], scorer, BeamSearchConfig(beam_size=1, shot_num=3, cand_num=2))
    with pytest.raises(ValueError, match=r"anchor 7.*contains the anchor itself"):
        beam_search_anchor(7, [1, 2, 3, 7, 5, 6], scorer, cfg)
    with pytest.raises(ValueError, match=r"anchor 7.*duplicate candidate ids \[2\]"):
        beam_search_anchor(7, [1, 2, 2, 4, 5, 6], scorer, cfg)
    assert scorer.calls == []


def test_non_finite_scores_are_rejected():
    cfg = BeamSearchConfig(beam_size=2, shot_num=2, cand_num=3)
    with pytest.raises(ValueError, match="anchor 0, step 1: non-finite"):
        beam_search_anchor(0, [1, 2, 3], TableScorer(lambda seq: float("nan") if seq == (2,) else 0.5), cfg)


def test_config_and_ex_name():
    assert ex_name(BeamSearchConfig()) == "infoscore_left_beam5_shot2_cand64_sample800"
    cfg = config_from_dict({"construct_order": "right", "beam_size": 3, "shot_num": 1, "cand_num": 6, "sample_num": 10})
    assert ex_name(cfg) == "infoscore_right_beam3_shot1_cand6_sample10"
    with pytest.raises(ValueError, match="beam_search.beam_width"):
        config_from_dict({"beam_width": 3})
    from_yaml = config_from_dict(
        {"scorer": "infoscore", "beam_size": 4, "shards": 2, "threads": 1},
        ignore=("shards", "threads"),
        cand_num=32,
        sample_num=100,
    )
    assert ex_name(from_yaml) == "infoscore_left_beam4_shot2_cand32_sample100"
    with pytest.raises(ValueError, match="beam_search: beam search config: shot_num=-1"):
        config_from_dict({"shot_num": -1})
    with pytest.raises(ValueError, match="scorer='topk'.*not supported"):
        BeamSearchConfig(scorer="topk")
    with pytest.raises(ValueError, match="construct_order='middle'"):
        BeamSearchConfig(construct_order="middle")
    with pytest.raises(ValueError, match="beam_size=0"):
        BeamSearchConfig(beam_size=0)


# ---- with an adapter: prompts built from records ---------------------------------------------------------


def make_records(n: int = 12, empty_label_ids=()) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "idx": np.arange(n, dtype=np.int64),
            "split": "train",
            "question_id": np.arange(1000, 1000 + n, dtype=np.int64),
            "image_id": np.arange(n, dtype=np.int64) % 4,
            "image_path": [f"/images/{i % 4}.jpg" for i in range(n)],
            "question": [f"q{i}" for i in range(n)],
            "answers": [[f"a{i}"] * 10 for i in range(n)],
            "label": ["" if i in empty_label_ids else f"a{i}" for i in range(n)],
        }
    )


class MockAdapter(LVLMAdapter):
    """Answers-span log-probs from a fixed random table over (query, demos); counts calls."""

    def __init__(self, n_ids: int = 64, seed: int = 0, fail_after_score_calls: int | None = None):
        rng = np.random.default_rng(seed)
        self.affinity = rng.uniform(-1.0, 1.0, size=(n_ids, n_ids))
        self.position_weight = np.array([1.0, 0.6, 0.3, 0.15])
        self.fail_after_score_calls = fail_after_score_calls
        self.score_calls = 0
        self.naive_calls = 0
        self.clear_calls = 0
        self.prompts_seen = []

    @staticmethod
    def _id(example) -> int:
        return int(example.question[1:])

    def _logprobs(self, prompt):
        query = self._id(prompt.query)
        assert prompt.query.answer == f"a{query}"
        logit = -0.5
        for distance, demo in enumerate(reversed(prompt.demos)):
            assert demo.answer == f"a{self._id(demo)}"
            logit += self.position_weight[distance] * self.affinity[query, self._id(demo)]
        log_p = -np.log1p(np.exp(-logit))
        return np.array([log_p, log_p, log_p])  # answer tokens + end-of-chunk: mean = log_p

    def score(self, prompts):
        if self.fail_after_score_calls is not None and self.score_calls >= self.fail_after_score_calls:
            raise RuntimeError("simulated crash")
        self.score_calls += 1
        self.prompts_seen.append(list(prompts))
        return [self._logprobs(p) for p in prompts]

    def score_naive(self, prompts, batch_size: int = 32):
        self.naive_calls += 1
        return [self._logprobs(p) for p in prompts]

    def generate(self, prompts, max_new_tokens, num_beams):
        return ["" for _ in prompts]

    def clear_cache(self, vision=True):
        self.clear_calls += 1


def test_sequence_scorer_builds_prompts_from_records():
    records = make_records()
    adapter = MockAdapter()
    anchor = records.iloc[5].to_dict()
    scorer = make_sequence_scorer(adapter, records, anchor, fast=True)
    values = scorer([(), (3,), (2, 3)])
    prompts = adapter.prompts_seen[0]
    assert [tuple(adapter._id(d) for d in p.demos) for p in prompts] == [(), (3,), (2, 3)]
    assert prompts[2].demos[0].image_path == "/images/2.jpg" and prompts[2].demos[1].answer == "a3"
    assert prompts[0].query.image_path == "/images/1.jpg" and prompts[0].query.answer == "a5"
    expected = [
        1 / (1 + np.exp(-logit))
        for logit in (-0.5, -0.5 + adapter.affinity[5, 3], -0.5 + adapter.affinity[5, 3] + 0.6 * adapter.affinity[5, 2])
    ]
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    naive = make_sequence_scorer(adapter, records, anchor, fast=False)([(2, 3)])
    assert adapter.naive_calls == 1 and naive[0] == pytest.approx(expected[2], rel=1e-12)


def test_empty_anchor_label_raises_naming_anchor_and_question_id():
    records = make_records(empty_label_ids={4})
    with pytest.raises(ValueError, match=r"anchor 4 \(question_id 1004\): empty label"):
        make_sequence_scorer(MockAdapter(), records, records.iloc[4].to_dict())


def test_records_with_wrong_idx_are_rejected():
    records = make_records().iloc[::-1].reset_index(drop=True)
    with pytest.raises(ValueError, match="idx must be 0..n-1"):
        ExampleTable.from_records(records)


@pytest.mark.parametrize("fast", [True, False])
def test_search_anchor_makes_k_scoring_calls_then_clears_the_cache(fast):
    records = make_records()
    adapter = MockAdapter()
    cfg = BeamSearchConfig(beam_size=3, shot_num=2, cand_num=8, use_fast_path=fast)
    result = search_anchor(adapter, records, 0, list(range(1, 9)), cfg)
    assert (adapter.score_calls, adapter.naive_calls) == ((2, 0) if fast else (0, 2))
    assert adapter.clear_calls == 1
    assert result.question_id == 1000 and len(result.sequences) == 3


# ---- with the real adapters (tiny, random init): fast path == naive path -----------------------------------


def write_color_images(directory, count, size=56, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = np.empty((size, size, 3), dtype=np.uint8)
        pixels[:] = rng.integers(0, 256, size=3)
        pixels[size // 4 : size // 2, size // 4 : 3 * size // 4] = rng.integers(0, 256, size=3)
        path = directory / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def tiny_adapter_records(tmp_path, n=9):
    questions = [
        "what colour is the ball ?",
        "how many dogs are there",
        "what is the man holding",
        "is it raining",
        "what sport is this",
        "where is the cat",
        "what colour is the sky",
        "what is on the table",
        "who is driving the bus",
    ]
    answers = ["red", "two", "an umbrella", "no", "tennis", "on the sofa", "blue", "a plate", "the driver"]
    paths = write_color_images(tmp_path, 6)  # some records share an image, as in VQA
    records = make_records(n)
    records["image_path"] = [paths[i % len(paths)] for i in range(n)]
    records["question"] = questions[:n]
    records["label"] = answers[:n]
    return records


def tiny_adapter_case(tmp_path, family: str):
    """(records, a random-init tiny adapter of ``family`` on them, anchor, candidates, distinct images of both)."""
    import torch

    from lever_lm.lvlm.tiny import make_tiny_adapter

    torch.set_num_threads(1)
    records = tiny_adapter_records(tmp_path)
    words = list(records["question"]) + list(records["label"])
    adapter = make_tiny_adapter("flamingo" if family == "flamingo" else "qwen2_5_vl", words, seed=0, precision="fp32")
    anchor, candidates = 0, [3, 1, 7, 4, 8, 2]
    distinct_images = len({records["image_path"][i] for i in [anchor, *candidates]})
    return records, adapter, anchor, candidates, distinct_images


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flamingo", "qwen"])
def test_fast_path_beams_equal_naive_path_beams_on_tiny_models(tmp_path, family):
    records, adapter, anchor, candidates, distinct_images = tiny_adapter_case(tmp_path, family)
    for order in ("left", "right"):
        base = dict(construct_order=order, beam_size=3, shot_num=2, cand_num=len(candidates))
        adapter.clear_cache(vision=True)  # features kept from the previous order's search would be reused
        adapter.vision_encoder_calls = 0
        fast = search_anchor(adapter, records, anchor, candidates, BeamSearchConfig(**base, use_fast_path=True))
        assert adapter.vision_encoder_calls == distinct_images
        naive = search_anchor(adapter, records, anchor, candidates, BeamSearchConfig(**base, use_fast_path=False))
        assert fast.sequences == naive.sequences, order
        np.testing.assert_allclose(np.array(fast.step_scores), np.array(naive.step_scores), atol=1e-4, rtol=0)
        assert np.ptp(np.array(fast.step_scores)) > 1e-4  # scores differ visibly: the comparison means something


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flamingo", "qwen"])
def test_adapter_work_counters_per_anchor(tmp_path, family):
    """``adapter.counters`` counts LM/vision forwards, tokens and host syncs at the call sites, readable as deltas."""
    from lever_lm.lvlm.base import WorkCounters

    records, adapter, anchor, candidates, distinct_images = tiny_adapter_case(tmp_path, family)
    base = dict(construct_order="left", beam_size=3, shot_num=2, cand_num=len(candidates))
    assert isinstance(adapter.counters, WorkCounters) and set(adapter.counters) == set(WorkCounters.KEYS)
    per_path = {}
    for fast in (True, False):
        before = adapter.counters.snapshot()
        search_anchor(adapter, records, anchor, candidates, BeamSearchConfig(**base, use_fast_path=fast))
        per_path[fast] = adapter.counters.since(before)
    fast, naive = per_path[True], per_path[False]
    assert fast["vision_images"] == distinct_images and fast["vision_forward_calls"] >= 1
    assert naive["vision_images"] > fast["vision_images"]
    for counts in (fast, naive):
        assert counts["lm_forward_calls"] >= base["shot_num"]  # at least one batch per step
        assert 0 < counts["lm_tokens"] <= counts["lm_padded_tokens"]
        assert counts["host_syncs"] >= base["shot_num"] and counts["h2d_copies"] > 0
        assert counts["vision_tokens"] > 0
    assert fast["lm_tokens"] < naive["lm_tokens"]  # prefix reuse skips cached blocks
    adapter.counters.reset()
    assert all(value == 0 for value in adapter.counters.values())
