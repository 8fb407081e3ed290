"""Stage 6: retrievers, the inference config, the evaluation core, run_baseline / run_selector_cell end to end,
the metrics.json / predictions.parquet schema and the bad-input errors (each leaving no metrics.json)."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lever_lm.inference.config import InferenceConfig
from lever_lm.inference.generation import generate_answers
from lever_lm.inference.inputs import InferenceInputs, select_queries
from lever_lm.inference.jobs import run_baseline, run_selector_cell
from lever_lm.inference.outputs import PREDICTION_COLUMNS
from lever_lm.io_utils import file_sha256
from lever_lm.lvlm.base import Example, Prompt
from lever_lm.paths import BASELINES
from lever_lm.retrievers import RandomRetriever, SelectorRetriever, SimilarityRetriever, ZeroShotRetriever

LABELS = ["red", "blue", "two", "yes", "zebra", "street"]
QUESTIONS = ["what color is it ?", "how many are there ?", "is it raining ?", "what animal is shown ?"]
N_TRAIN, N_VAL, DIM = 60, 12, 8
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
}


# ----------------------------------------------------------------------------------------------- helpers


class FakeAdapter:
    """Answers with the label of the ICD nearest the query (then noise the post-processing must cut); records
    every batch it gets."""

    def __init__(self):
        self.batches: list[list[Prompt]] = []

    def generate(self, prompts, max_new_tokens, num_beams, batch_size=None):
        self.batches.append(list(prompts))
        return [f" {p.demos[-1].answer} Question: more" if p.demos else "nothing, really" for p in prompts]


def _unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(split, n, images, rng, qid_base):
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        answers = [label] * 7 + [LABELS[(i + 1) % len(LABELS)]] * 3
        rows.append(
            dict(
                idx=i,
                split=split,
                question_id=qid_base + i,
                image_id=i % len(images),
                image_path=images[i % len(images)],
                question=QUESTIONS[i % len(QUESTIONS)],
                answers=answers,
                label=label,
            )
        )
    return pd.DataFrame(rows)


def _save_embeddings(directory, split, image, text, encoder_id="synthetic"):
    from lever_lm.embeddings import EmbeddingResult, embedding_paths, save_embeddings

    paths = embedding_paths(directory, split)
    meta = {
        "encoder_id": encoder_id,
        "encoder_name": "synthetic_clip",
        "dim": int(image.shape[1]),
        "n": int(len(image)),
        "split": split,
        "normalized": True,
        "dtype": "float32",
    }
    save_embeddings(paths, EmbeddingResult(image, text, meta))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("inference_images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def toy(tmp_path_factory, images):
    """Synthetic selector task (train embeddings, beams, trained v0/v1 selectors) + records + val side + test pool."""
    import torch

    from lever_lm.data import write_records
    from lever_lm.sampling import write_candidates
    from lever_lm.selectors import SelectorConfig, train
    from lever_lm.selectors.synthetic import LEARNING_CONFIG, make_task

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inference_toy")
    task = make_task(root, n_train=N_TRAIN, dim=DIM, n_anchors=24, pool_size=16, n_heldout=2)
    rng = np.random.default_rng(1)
    write_records(root / "records" / "train.parquet", _records("train", N_TRAIN, images, rng, 1000))
    write_records(root / "records" / "val.parquet", _records("val", N_VAL, images, rng, 5000))
    emb_dir = Path(task.embeddings[0]).parent
    val = _save_embeddings(emb_dir, "val", _unit(rng, N_VAL), _unit(rng, N_VAL))
    pools = {i: sorted(rng.choice(N_TRAIN, 16, replace=False).tolist()) for i in range(N_VAL)}
    pool_path = root / "test_pools" / "rand_sampler" / "pool.json"
    write_candidates(pool_path, pools, {"sampler": "rand_sampler", "cand_num": 16})
    checkpoints = {}
    for version in ("v0", "v1"):
        train(
            SelectorConfig.from_config({**LEARNING_CONFIG, "epochs": 2}),
            task.identity(version),
            task.paths(root / "model_cpk" / version),
        )
        checkpoints[version] = root / "model_cpk" / version / "best.ckpt"
    image, text, meta = task.embeddings
    inputs = InferenceInputs(
        train_records=str(root / "records" / "train.parquet"),
        val_records=str(root / "records" / "val.parquet"),
        train_image=str(image),
        train_text=str(text),
        val_image=str(val.image),
        val_text=str(val.text),
        train_meta=str(meta),
        val_meta=str(val.meta),
    )
    return types.SimpleNamespace(
        root=root, task=task, inputs=inputs, pools=pools, pool_path=str(pool_path), checkpoints=checkpoints
    )


def _identity(toy, version, changes=None):
    return {**vars(toy.task.identity(version)), **(changes or {})}


def _cell(toy, tmp_path, version="v1", inference=None, identity=None, adapter=None, **kwargs):
    out = tmp_path / version
    args = dict(
        identity=identity or _identity(toy, version),
        checkpoint=str(toy.checkpoints[version]),
        test_pool=toy.pool_path,
        inputs=toy.inputs,
        weights=[],
        entry={"family": "fake"},
        inference={"shots": [1, 2]} if inference is None else inference,
        task="vqa",
        metrics_path=str(out / "metrics.json"),
        predictions_path=str(out / "predictions.parquet"),
        adapter=adapter or FakeAdapter(),
    )
    args.update(kwargs)
    return run_selector_cell(**args), out


def _baseline(toy, tmp_path, baseline, inference=None, adapter=None, inputs=None):
    out = tmp_path / baseline
    return run_baseline(
        dataset="synthetic",
        beam_model="fake_lvlm",
        baseline=baseline,
        inputs=inputs or toy.inputs,
        weights=[],
        entry={"family": "fake"},
        inference={"shots": [1, 3]} if inference is None else inference,
        task="vqa",
        metrics_path=str(out / "metrics.json"),
        predictions_path=str(out / "predictions.parquet"),
        adapter=adapter or FakeAdapter(),
    ), out


def _check_outputs(out, metrics):
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert set(on_disk) == METRIC_KEYS
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert list(predictions.columns) == list(PREDICTION_COLUMNS)
    assert str(predictions["question_id"].dtype) == "int64" and str(predictions["shot"].dtype) == "int64"
    assert str(predictions["score"].dtype) == "float64"
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(out / "predictions.parquet")
    icd_type = schema.field("icd_ids").type
    assert pa.types.is_list(icd_type) and icd_type.value_type == pa.int64()  # also when all lists are empty
    assert schema.field("raw_output").type == pa.string() and schema.field("answer").type == pa.string()
    for shot, entry in on_disk["shots"].items():
        rows = predictions[predictions["shot"] == int(shot)]
        assert entry["n"] == len(rows) == on_disk["n_queries"]
        assert math.isclose(entry["score"], 100 * rows["score"].mean(), rel_tol=1e-12)
        assert all(len(ids) == int(shot) for ids in rows["icd_ids"])
    return on_disk, predictions


# ----------------------------------------------------------------------------------------------- retrievers


def test_random_retriever_is_reproducible_distinct_and_batch_independent():
    retriever = RandomRetriever(50, seed=3)
    together = retriever.choose([0, 1, 2, 7], 4)
    one_by_one = [retriever.choose([row], 4)[0] for row in (7, 2, 1, 0)][::-1]
    assert together == one_by_one == RandomRetriever(50, seed=3).choose([0, 1, 2, 7], 4)
    assert all(len(set(ids)) == 4 and all(0 <= i < 50 for i in ids) for ids in together)
    assert together != RandomRetriever(50, seed=4).choose([0, 1, 2, 7], 4)
    assert len({tuple(ids) for ids in together}) == 4  # queries get their own draws
    with pytest.raises(ValueError, match="k = 51"):
        retriever.choose([0], 51)


def test_similarity_retriever_matches_brute_force_nearest_last():
    rng = np.random.default_rng(0)
    q_img, q_txt = rng.standard_normal((9, 5)) * 3, rng.standard_normal((9, 5))
    t_img, t_txt = rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) * 2
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for mode, (q, t) in {"i2i": (q_img, t_img), "t2t": (q_txt, t_txt), "i2t": (q_img, t_txt)}.items():
        chosen = SimilarityRetriever(mode, q_img, q_txt, t_img, t_txt).choose(range(9), 4)
        brute = np.argsort(-(unit(q) @ unit(t).T), axis=1, kind="stable")[:, :4]
        assert chosen == [row[::-1].tolist() for row in brute], mode


def test_similarity_i2t_uses_query_image_against_icd_text_and_ties_go_to_smaller_id():
    train_image = np.eye(4, dtype=np.float32)
    train_text = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    query_image, query_text = np.array([[1, 0, 0, 0]], np.float32), np.array([[0, 0, 0, 1]], np.float32)
    assert SimilarityRetriever("i2t", query_image, query_text, train_image, train_text).choose([0], 2) == [[2, 1]]
    assert SimilarityRetriever("i2i", query_image, query_text, train_image, train_text).choose([0], 1) == [[0]]
    assert SimilarityRetriever("t2t", query_image, query_text, train_image, train_text).choose([0], 1) == [[3]]
    with pytest.raises(ValueError, match="i2t.*512-d"):
        SimilarityRetriever("i2t", query_image, query_text, train_image, np.ones((4, 512), np.float32))


def test_zero_shot_takes_no_icds():
    assert ZeroShotRetriever().choose([3, 4], 0) == [[], []]
    with pytest.raises(ValueError, match="shot must be 0"):
        ZeroShotRetriever().choose([3], 1)


# ----------------------------------------------------------------------------------------------- config + core


def test_inference_config_defaults_and_errors_name_the_key():
    cfg = InferenceConfig.from_config({}, "vqa")
    assert (cfg.shots, cfg.max_queries, cfg.num_beams) == ((1, 2, 3, 4), None, 3)
    assert (cfg.max_new_tokens, cfg.batch_size, cfg.always_normalize) == (5, 16, False)
    assert InferenceConfig.from_config({"max_new_tokens": None}, "caption").max_new_tokens == 20
    assert InferenceConfig.from_config({"baselines": ["ZeroShot"], "shots": [2]}, "vqa").shots == (2,)
    for section, key in [
        ({"shots": []}, "inference.shots"),
        ({"shots": [1, 1]}, "inference.shots"),
        ({"shots": [-1]}, "inference.shots"),
        ({"shots": [0, 1]}, "inference.shots.0"),
        ({"batch_size": 0}, "inference.batch_size"),
        ({"max_queries": 0}, "inference.max_queries"),
        ({"num_beams": True}, "inference.num_beams"),
        ({"always_normalize": "yes"}, "inference.always_normalize"),
        ({"beams": 3}, "unknown config key inference.beams"),
    ]:
        with pytest.raises(ValueError, match=key):
            InferenceConfig.from_config(section, "vqa")
    with pytest.raises(ValueError, match="task"):
        InferenceConfig.from_config({}, "retrieval")


def test_select_queries_is_a_seeded_sorted_subset():
    assert select_queries(10, None, 0).tolist() == list(range(10))
    assert select_queries(10, 50, 0).tolist() == list(range(10))
    a, b, c = select_queries(100, 7, 0), select_queries(100, 7, 0), select_queries(100, 7, 1)
    assert a.tolist() == b.tolist() != c.tolist() and len(set(a.tolist())) == 7 and a.tolist() == sorted(a.tolist())


def test_generate_answers_batches_by_size_and_restores_order():
    adapter = FakeAdapter()
    prompts = [
        Prompt(tuple(Example("x.png", "q ?", f"a{i}{j}") for j in range(i % 3)), Example("y.png", f"q{i} ?"))
        for i in range(10)
    ]
    out = generate_answers(adapter, prompts, 5, 3, batch_size=4)
    assert out == FakeAdapter().generate(prompts, 5, 3)  # the order given
    assert [len(b) for b in adapter.batches] == [4, 4, 2]
    sizes = [len(p.demos) for batch in adapter.batches for p in batch]
    assert sizes == sorted(len(p.demos) for p in prompts)  # batched in order of image count: little padding
    with pytest.raises(ValueError, match="batch_size"):
        generate_answers(adapter, prompts, 5, 3, batch_size=0)


class TokenFakeAdapter(FakeAdapter):
    """A FakeAdapter that counts prompt tokens: 3 per image plus one per word (what a budget plan reads)."""

    def __init__(self):
        super().__init__()
        self.length_calls = 0

    def prompt_token_lengths(self, prompts):
        self.length_calls += 1
        return [sum(3 + len(f"{e.question} {e.answer or ''}".split()) for e in (*p.demos, p.query)) for p in prompts]


def _mixed_prompts(n=23):
    return [
        Prompt(
            tuple(Example(f"d{j}.png", "q " * (1 + (i * j) % 4), f"a{i}{j}") for j in range(i % 5)),
            Example(f"y{i}.png", "why " * (1 + (7 * i) % 6) + "?"),
        )
        for i in range(n)
    ]


def _todays_batches(prompts, batch_size):
    """The batches before token budgets existed: sorted by (image count, text length), then fixed chunks."""

    def size(i):
        examples = (*prompts[i].demos, prompts[i].query)
        return len(examples), sum(len(e.question) + len(e.answer or "") for e in examples)

    order = sorted(range(len(prompts)), key=size)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def test_null_token_budget_keeps_todays_batches_config_and_digest():
    from lever_lm.inference.generation import plan_generation_batches

    prompts = _mixed_prompts()
    for batch_size in (1, 4, 5, 40):
        adapter = TokenFakeAdapter()
        expected = _todays_batches(prompts, batch_size)
        assert plan_generation_batches(adapter, prompts, 5, 3, batch_size, None) == expected
        out = generate_answers(adapter, prompts, 5, 3, batch_size, token_budget=None)
        assert [[prompts.index(p) for p in batch] for batch in adapter.batches] == expected
        assert out == FakeAdapter().generate(prompts, 5, 3) and adapter.length_calls == 0  # no token counting
    cfg = InferenceConfig.from_config({"token_budget": None}, "vqa")
    assert cfg.token_budget is None and cfg == InferenceConfig.from_config({}, "vqa")
    assert "token_budget" not in cfg.to_dict()  # metrics.json, config digest and resume fingerprint as before
    assert InferenceConfig.from_config({"token_budget": 512}, "vqa").to_dict()["token_budget"] == 512


def test_token_budget_config_errors_name_the_key():
    assert InferenceConfig.from_config({"token_budget": 1}, "vqa").token_budget == 1
    for value in (0, -5, "512", True, 2.5):
        with pytest.raises(ValueError, match="inference.token_budget"):
            InferenceConfig.from_config({"token_budget": value}, "vqa")
    with pytest.raises(ValueError, match="inference.token_budget"):
        generate_answers(TokenFakeAdapter(), _mixed_prompts(3), 5, 3, 4, token_budget=0)


@pytest.mark.parametrize(
    "budget, batch_size, max_new, beams",
    [(200, 16, 5, 1), (300, 4, 5, 3), (90, 16, 2, 2), (10_000, 6, 5, 3), (1, 8, 5, 1)],
)
def test_token_budget_batches_stay_within_the_budget_sorted_by_length(budget, batch_size, max_new, beams):
    from lever_lm.inference.generation import plan_generation_batches

    prompts = _mixed_prompts()
    adapter = TokenFakeAdapter()
    lengths = adapter.prompt_token_lengths(prompts)
    plan = plan_generation_batches(adapter, prompts, max_new, beams, batch_size, budget)
    assert sorted(i for batch in plan for i in batch) == list(range(len(prompts)))
    flat = [lengths[i] for batch in plan for i in batch]
    assert flat == sorted(flat)  # by token length: batch-mates pad little
    for batch in plan:
        assert len(batch) <= batch_size
        cost = len(batch) * (max(lengths[i] for i in batch) + max_new) * beams
        assert cost <= budget or len(batch) == 1  # a lone prompt over the budget goes alone
    assert plan == plan_generation_batches(adapter, prompts, max_new, beams, batch_size, budget)  # deterministic
    adapter = TokenFakeAdapter()
    out = generate_answers(adapter, prompts, max_new, beams, batch_size, token_budget=budget)
    assert out == FakeAdapter().generate(prompts, max_new, beams)  # the order given
    assert [[prompts.index(p) for p in batch] for batch in adapter.batches] == plan
    if budget == 10_000:  # the budget never binds: rows fill up to batch_size
        assert [len(b) for b in plan] == [6, 6, 6, 5]
    if budget == 1:
        assert all(len(b) == 1 for b in plan)


def test_token_budget_resume_reuses_only_batches_of_the_same_plan():
    from lever_lm.inference.generation import plan_generation_batches

    prompts = _mixed_prompts()
    adapter = TokenFakeAdapter()
    plan = plan_generation_batches(adapter, prompts, 5, 1, 8, 120)
    other = plan_generation_batches(adapter, prompts, 5, 1, 8, 60)
    assert plan != other
    texts = FakeAdapter().generate(prompts, 5, 1)
    journal = {}
    generate_answers(
        adapter,
        prompts,
        5,
        1,
        8,
        token_budget=60,
        on_batch=lambda index, positions, raw: journal.__setitem__(index, (positions, raw)),
    )
    # batches of the budget-60 plan handed to a budget-120 run: only those holding the same prompts are reused
    adapter = TokenFakeAdapter()
    assert generate_answers(adapter, prompts, 5, 1, 8, done=journal, token_budget=120) == texts
    same = sum(1 for index, batch in enumerate(plan) if journal.get(index, ([],))[0] == batch)
    assert len(adapter.batches) == len(plan) - same
    assert len(adapter.batches) == 6 > same  # here no batch of the other plan is reused
    adapter = TokenFakeAdapter()
    assert generate_answers(adapter, prompts, 5, 1, 8, done=journal, token_budget=60) == texts
    assert adapter.batches == []  # the same plan: every batch reused


RESUME_BUDGET = {"shots": [1, 2], "batch_size": 5, "num_beams": 1, "token_budget": 70}


def test_killed_job_with_a_token_budget_resumes_and_another_budget_starts_over(toy, tmp_path, monkeypatch):
    """Fingerprint: a journal written under one budget is discarded under another (never mixed in)."""
    Crashing = crashing(TokenFakeAdapter)
    full_adapter = TokenFakeAdapter()
    metrics, _ = _baseline(toy, tmp_path / "full", "RandomRetriever", RESUME_BUDGET, adapter=full_adapter)
    assert metrics["inference"]["token_budget"] == 70
    n_batches = len(full_adapter.batches)
    sizes = [len(batch) for batch in full_adapter.batches]
    assert n_batches > 6 and max(sizes) > 1  # the budget binds (12 queries / 5 per batch x 2 shots: 6), not alone
    full = _bytes(tmp_path / "full" / "RandomRetriever")
    with pytest.raises(KeyboardInterrupt):
        _baseline(toy, tmp_path / "killed", "RandomRetriever", RESUME_BUDGET, adapter=Crashing(3))
    adapter = TokenFakeAdapter()
    _baseline(toy, tmp_path / "killed", "RandomRetriever", RESUME_BUDGET, adapter=adapter)
    assert len(adapter.batches) == n_batches - 3 and _bytes(tmp_path / "killed" / "RandomRetriever") == full

    with pytest.raises(KeyboardInterrupt):
        _baseline(
            toy, tmp_path / "other", "RandomRetriever", {**RESUME_BUDGET, "token_budget": 40}, adapter=Crashing(3)
        )
    adapter = TokenFakeAdapter()
    _baseline(toy, tmp_path / "other", "RandomRetriever", RESUME_BUDGET, adapter=adapter)
    assert len(adapter.batches) == n_batches and _bytes(tmp_path / "other" / "RandomRetriever") == full

    # killed after the last batch, before the outputs: the rerun takes everything from the journal, no LVLM
    from lever_lm.inference import jobs

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(jobs, "write_inference_outputs", killed)
        with pytest.raises(KeyboardInterrupt):
            _baseline(toy, tmp_path / "late", "RandomRetriever", RESUME_BUDGET, adapter=TokenFakeAdapter())

    def no_lvlm():
        raise AssertionError("the LVLM was loaded")

    _baseline(toy, tmp_path / "late", "RandomRetriever", RESUME_BUDGET, adapter=no_lvlm)
    assert _bytes(tmp_path / "late" / "RandomRetriever") == full


def test_null_token_budget_keeps_the_resume_fingerprint(toy, tmp_path):
    """A job without the key and one with ``token_budget: null`` share their journal (same fingerprint)."""
    with pytest.raises(KeyboardInterrupt):
        _baseline(toy, tmp_path, "RandomRetriever", RESUME_INFERENCE, adapter=CrashingAdapter(2))
    adapter = FakeAdapter()
    metrics, _ = _baseline(
        toy, tmp_path, "RandomRetriever", {**RESUME_INFERENCE, "token_budget": None}, adapter=adapter
    )
    assert len(adapter.batches) == 4 and "token_budget" not in metrics["inference"]


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("baseline", BASELINES)
def test_run_baseline_end_to_end(toy, tmp_path, baseline):
    metrics, out = _baseline(toy, tmp_path, baseline)
    on_disk, predictions = _check_outputs(out, metrics)
    assert (on_disk["kind"], on_disk["baseline"]) == ("baseline", baseline)
    assert on_disk["version"] is None and on_disk["sampler"] is None and on_disk["checkpoint"] is None
    assert on_disk["metric"] == "vqa_accuracy" and on_disk["n_queries"] == N_VAL
    assert list(on_disk["shots"]) == (["0"] if baseline == "ZeroShot" else ["1", "3"])
    train = pd.read_parquet(toy.inputs.train_records)
    val = pd.read_parquet(toy.inputs.val_records)
    for row in predictions.itertuples():
        ids = list(row.icd_ids)
        expected = train["label"][ids[-1]] if ids else "nothing"
        assert row.answer == expected  # post-processing cut " Question: ..." and ", really"
        answers = list(val.loc[val["question_id"] == row.question_id, "answers"].iloc[0])
        assert row.score == pytest.approx(min(1, answers.count(expected) * 0.3) if answers.count(expected) < 10 else 1)
    if baseline == "SimRetriever-i2i":
        from lever_lm.embeddings import EmbeddingPaths, load_embeddings

        q = np.load(toy.inputs.val_image)
        t = load_embeddings(
            EmbeddingPaths(Path(toy.inputs.train_image), Path(toy.inputs.train_text), Path(toy.inputs.train_meta))
        ).image
        nearest = np.argmax(q @ t.T, axis=1)
        shot1 = predictions[predictions["shot"] == 1]
        assert [ids[-1] for ids in shot1["icd_ids"]] == nearest.tolist()


def test_random_baseline_is_reproducible_and_max_queries_is_recorded(toy, tmp_path):
    inference = {"shots": [2], "max_queries": 5, "query_seed": 3}
    first, out = _baseline(toy, tmp_path / "a", "RandomRetriever", inference)
    second, out2 = _baseline(toy, tmp_path / "b", "RandomRetriever", inference)
    _, p1 = _check_outputs(out, first)
    _, p2 = _check_outputs(out2, second)
    assert first == second and p1.equals(p2)
    assert (first["n_queries"], first["max_queries"], first["query_seed"]) == (5, 5, 3)
    assert first["inference"]["max_queries"] == 5
    expected_qids = (5000 + select_queries(N_VAL, 5, 3)).tolist()
    assert p1["question_id"].tolist() == expected_qids
    other, _ = _baseline(toy, tmp_path / "c", "RandomRetriever", {**inference, "query_seed": 4})
    assert other["config_digest"] != first["config_digest"]


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_run_selector_cell_end_to_end(toy, tmp_path, version):
    adapter = FakeAdapter()
    metrics, out = _cell(toy, tmp_path, version, adapter=adapter)
    on_disk, predictions = _check_outputs(out, metrics)
    assert (on_disk["kind"], on_disk["version"], on_disk["sampler"], on_disk["baseline"]) == (
        "selector",
        version,
        "rand_sampler",
        None,
    )
    checkpoint = on_disk["checkpoint"]
    assert checkpoint["path"] == str(toy.checkpoints[version])
    assert checkpoint["sha256"] == file_sha256(toy.checkpoints[version])
    assert checkpoint["meta"]["version"] == version and checkpoint["meta"]["beam_model"] == "synthetic_lvlm"
    from lever_lm.selectors import FeatureTable, load_selector, select

    val = FeatureTable(np.load(toy.inputs.val_image), np.load(toy.inputs.val_text))
    selector = load_selector(toy.checkpoints[version], toy.task.train_features)
    pools = [toy.pools[i] for i in range(N_VAL)]
    for shot in (1, 2):
        expected = select(selector, val, shot, pools if version != "v0" else None)
        got = [list(ids) for ids in predictions.loc[predictions["shot"] == shot, "icd_ids"]]
        assert got == expected
        if version == "v1":
            assert all(set(ids) <= set(toy.pools[i]) for i, ids in enumerate(got))
    assert sum(len(b) for b in adapter.batches) == 2 * N_VAL


def test_selector_retriever_checks_shots_against_pools_before_selecting():
    from lever_lm.selectors import FeatureTable

    fake = types.SimpleNamespace(needs_pools=True, version="v1", path="fake.ckpt")
    queries = FeatureTable(np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32))
    retriever = SelectorRetriever(fake, queries, {0: [1, 2], 1: [3, 4, 5]}, pool_source="pool.json")
    with pytest.raises(ValueError, match=r"shot 3 is larger than the test pool of val query idx 0 \(2 ICDs in pool"):
        retriever.check([0, 1], 3)
    with pytest.raises(ValueError, match="no test pool for val query idx 2"):
        retriever.check([2], 1)
    with pytest.raises(ValueError, match="shot 0"):
        retriever.check([0], 0)
    with pytest.raises(ValueError, match="selects within a test pool"):
        SelectorRetriever(fake, queries, None)


# ----------------------------------------------------------------------------------------------- resume


def crashing(adapter_class):
    """``adapter_class`` that dies (like a killed job) when asked for batch number ``crash_at`` (0-based, all
    shots)."""

    class Crashing(adapter_class):
        def __init__(self, crash_at):
            super().__init__()
            self.crash_at = crash_at

        def generate(self, prompts, max_new_tokens, num_beams, batch_size=None):
            if len(self.batches) == self.crash_at:
                raise KeyboardInterrupt("killed")
            return super().generate(prompts, max_new_tokens, num_beams, batch_size)

    return Crashing


CrashingAdapter = crashing(FakeAdapter)


RESUME_INFERENCE = {"shots": [1, 2], "batch_size": 5}  # 12 queries: 3 batches per shot


def _bytes(out):
    return {name: (out / name).read_bytes() for name in ("metrics.json", "predictions.parquet")}


def _journal(out):
    return out / "predictions.parquet.partial.jsonl"


@pytest.mark.parametrize("crash_at", [1, 4])  # in shot 1, in shot 2
def test_killed_selector_cell_resumes_per_batch_to_byte_identical_outputs(toy, tmp_path, crash_at):
    _cell(toy, tmp_path / "full", inference=RESUME_INFERENCE)
    full = _bytes(tmp_path / "full" / "v1")
    assert not _journal(tmp_path / "full" / "v1").exists()  # removed on success
    with pytest.raises(KeyboardInterrupt):
        _cell(toy, tmp_path / "killed", inference=RESUME_INFERENCE, adapter=CrashingAdapter(crash_at))
    out = tmp_path / "killed" / "v1"
    assert not (out / "metrics.json").exists() and not (out / "predictions.parquet").exists()
    lines = _journal(out).read_text().splitlines()
    assert len(lines) == 1 + crash_at and "fingerprint" in json.loads(lines[0])
    with open(_journal(out), "a") as fh:  # the killed writer left half a line behind
        fh.write(lines[-1][: len(lines[-1]) // 2])
    adapter = FakeAdapter()
    _cell(toy, tmp_path / "killed", inference=RESUME_INFERENCE, adapter=adapter)
    assert len(adapter.batches) == 6 - crash_at  # only the batches not done before
    assert _bytes(out) == full
    assert not _journal(out).exists()


def test_killed_baseline_resumes_and_a_stale_journal_is_ignored(toy, tmp_path):
    _baseline(toy, tmp_path / "full", "RandomRetriever", RESUME_INFERENCE)
    full = _bytes(tmp_path / "full" / "RandomRetriever")
    with pytest.raises(KeyboardInterrupt):
        _baseline(toy, tmp_path / "killed", "RandomRetriever", RESUME_INFERENCE, adapter=CrashingAdapter(2))
    out = tmp_path / "killed" / "RandomRetriever"
    adapter = FakeAdapter()
    _baseline(toy, tmp_path / "killed", "RandomRetriever", RESUME_INFERENCE, adapter=adapter)
    assert len(adapter.batches) == 4 and _bytes(out) == full

    # a journal of another config (here: another retriever seed) is discarded, never mixed in
    other = {**RESUME_INFERENCE, "retriever_seed": 7}
    with pytest.raises(KeyboardInterrupt):
        _baseline(toy, tmp_path / "stale", "RandomRetriever", other, adapter=CrashingAdapter(3))
    adapter = FakeAdapter()
    _baseline(toy, tmp_path / "stale", "RandomRetriever", RESUME_INFERENCE, adapter=adapter)
    assert len(adapter.batches) == 6 and _bytes(tmp_path / "stale" / "RandomRetriever") == full


# ----------------------------------------------------------------------------------------------- bad input


def _stale(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text("{}")


@pytest.mark.parametrize("change", [{"beam_model": "flamingo_3B"}, {"version": "v2"}])
def test_checkpoint_of_another_beam_model_or_version_is_refused(toy, tmp_path, change):
    _stale(tmp_path / "v1")
    key, value = next(iter(change.items()))
    with pytest.raises(ValueError, match=rf"best.ckpt: checkpoint {key} = .* expected '{value}'"):
        _cell(toy, tmp_path, "v1", identity=_identity(toy, "v1", change))
    assert not (tmp_path / "v1" / "metrics.json").exists()


def test_val_question_without_answers_is_named(toy, tmp_path):
    from lever_lm.data import write_records

    val = pd.read_parquet(toy.inputs.val_records)
    for bad, message in [
        ([], "question_id 5003 has no reference answers"),
        (["red"] * 9, "question_id 5003 has 9 answers, expected 10"),
    ]:
        broken = val.copy()
        broken.at[3, "answers"] = bad
        path = tmp_path / "val.parquet"
        write_records(path, broken)
        inputs = InferenceInputs(**{**vars(toy.inputs), "val_records": str(path)})
        _stale(tmp_path / "v1")
        with pytest.raises(ValueError, match=message):
            _cell(toy, tmp_path, "v1", inputs=inputs)
        assert not (tmp_path / "v1" / "metrics.json").exists()
        _stale(tmp_path / "ZeroShot")
        with pytest.raises(ValueError, match=message):
            _baseline(toy, tmp_path, "ZeroShot", inputs=inputs)
        assert not (tmp_path / "ZeroShot" / "metrics.json").exists()


@pytest.mark.parametrize(
    "shots, message",
    [
        ([0, 1], r"config key inference\.shots\.0: 0 is less than the minimum of 1"),
        ([1, 17], r"shot 17 is larger than the test pool of val query idx 0 \(16 ICDs in .*pool.json\)"),
    ],
)
def test_bad_shot_numbers_are_refused(toy, tmp_path, shots, message):
    _stale(tmp_path / "v1")
    with pytest.raises(ValueError, match=message):
        _cell(toy, tmp_path, "v1", inference={"shots": shots})
    assert not (tmp_path / "v1" / "metrics.json").exists()


def test_shot_beyond_what_a_v0_selector_decodes_is_refused(toy, tmp_path):
    from lever_lm.selectors import MAX_K

    with pytest.raises(ValueError, match=rf"shot {MAX_K + 1} exceeds what .*v0/best.ckpt can decode \(max_k {MAX_K}"):
        _cell(toy, tmp_path, "v0", inference={"shots": [1, MAX_K + 1]})
    assert not (tmp_path / "v0" / "metrics.json").exists()


def test_zero_shot_number_for_a_retriever_baseline_is_refused(toy, tmp_path):
    with pytest.raises(ValueError, match=r"config key inference\.shots\.0: 0 is less than the minimum of 1"):
        _baseline(toy, tmp_path, "RandomRetriever", {"shots": [0]})
    assert not (tmp_path / "RandomRetriever" / "metrics.json").exists()


def test_embeddings_of_another_encoder_are_refused(toy, tmp_path):
    train_emb = np.load(toy.inputs.train_image), np.load(toy.inputs.train_text)
    val_emb = np.load(toy.inputs.val_image), np.load(toy.inputs.val_text)
    # val from another encoder than train
    other_val = _save_embeddings(tmp_path / "other", "val", *val_emb, encoder_id="clip_other")
    inputs = InferenceInputs(
        **{
            **vars(toy.inputs),
            "val_image": str(other_val.image),
            "val_text": str(other_val.text),
            "val_meta": str(other_val.meta),
        }
    )
    _stale(tmp_path / "v1")
    with pytest.raises(ValueError, match="val embeddings come from encoder 'clip_other'.*'synthetic'"):
        _cell(toy, tmp_path, "v1", inputs=inputs)
    assert not (tmp_path / "v1" / "metrics.json").exists()
    # both splits from another encoder than the selector's features
    other_train = _save_embeddings(tmp_path / "other", "train", *train_emb, encoder_id="clip_other")
    inputs = InferenceInputs(
        **{
            **vars(inputs),
            "train_image": str(other_train.image),
            "train_text": str(other_train.text),
            "train_meta": str(other_train.meta),
        }
    )
    with pytest.raises(ValueError, match="best.ckpt: selector trained on encoder 'synthetic'.*'clip_other'"):
        _cell(toy, tmp_path, "v1", inputs=inputs)
    assert not (tmp_path / "v1" / "metrics.json").exists()


def test_test_pool_of_another_sampler_is_refused(toy, tmp_path):
    from lever_lm.sampling import write_candidates

    path = tmp_path / "pool.json"
    write_candidates(path, toy.pools, {"sampler": "text_sim_sampler", "cand_num": 16})
    with pytest.raises(ValueError, match="test pool of sampler 'text_sim_sampler'"):
        _cell(toy, tmp_path, "v1", test_pool=str(path))


# ----------------------------------------------------------------------------------------------- real tiny LVLM


def _run_script(name, snakemake):
    import runpy

    script = Path(__file__).resolve().parents[1] / "workflow_scripts" / f"{name}.py"
    runpy.run_path(str(script), init_globals={"snakemake": snakemake})


def _tiny_model(tmp_path, toy, name, entry):
    from lever_lm.lvlm.factory import build_tiny_model

    records = pd.concat([pd.read_parquet(toy.inputs.train_records), pd.read_parquet(toy.inputs.val_records)])
    build_tiny_model(name, entry, str(tmp_path / "model"), records["question"].tolist() + records["label"].tolist())
    return str(tmp_path / "model")


def test_baseline_script_with_a_tiny_flamingo(toy, tmp_path):
    """The thin script through its snakemake interface, on a tiny OpenFlamingo loaded from its built dir."""
    entry = {"family": "flamingo", "variant": "tiny", "seed": 0}
    out = tmp_path / "baseline"
    snakemake = types.SimpleNamespace(
        input=types.SimpleNamespace(**vars(toy.inputs), weights=[_tiny_model(tmp_path, toy, "flamingo_tiny", entry)]),
        output=types.SimpleNamespace(metrics=str(out / "m.json"), predictions=str(out / "p.parquet")),
        params=types.SimpleNamespace(
            entry=entry, inference={"shots": [1, 2], "max_queries": 6, "batch_size": 4}, task="vqa", replicate=2
        ),
        wildcards=types.SimpleNamespace(
            dataset="synthetic", beam_model="flamingo_tiny", baseline="RandomRetriever", replicate="_rep2"
        ),
        log=[str(tmp_path / "log.txt")],
        threads=1,
        rule="baseline_inference",
    )
    _run_script("baseline_inference", snakemake)
    metrics = json.loads((out / "m.json").read_text())
    predictions = pd.read_parquet(out / "p.parquet")
    assert metrics["n_queries"] == 6 and list(metrics["shots"]) == ["1", "2"]
    assert metrics["baseline"] == "RandomRetriever" and metrics["beam_model"] == "flamingo_tiny"
    assert metrics["replicate"] == 2
    assert len(predictions) == 12 and predictions["raw_output"].map(lambda s: isinstance(s, str)).all()
    assert "shot 2: vqa_accuracy" in (tmp_path / "log.txt").read_text()


def test_icl_inference_script_with_a_tiny_qwen_and_a_v1_selector(toy, tmp_path):
    entry = {"family": "qwen2_5_vl", "variant": "tiny", "seed": 0}
    out = tmp_path / "cell"
    identity = _identity(toy, "v1")
    snakemake = types.SimpleNamespace(
        input=types.SimpleNamespace(
            **vars(toy.inputs),
            checkpoint=str(toy.checkpoints["v1"]),
            test_pool=toy.pool_path,
            weights=[_tiny_model(tmp_path, toy, identity["beam_model"], entry)],
        ),
        output=types.SimpleNamespace(metrics=str(out / "metrics.json"), predictions=str(out / "predictions.parquet")),
        params=types.SimpleNamespace(
            entry=entry, inference={"shots": [1, 3], "max_queries": 5, "num_beams": 2}, task="vqa", replicate=0
        ),
        wildcards=types.SimpleNamespace(**identity, replicate=""),
        log=[str(tmp_path / "log.txt")],
        threads=1,
        rule="icl_inference",
    )
    _run_script("icl_inference", snakemake)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "selector" and metrics["n_queries"] == 5 and list(metrics["shots"]) == ["1", "3"]
    assert metrics["checkpoint"]["sha256"] == file_sha256(toy.checkpoints["v1"])
    assert metrics["inference"]["num_beams"] == 2 and metrics["inference"]["max_new_tokens"] == 5
    assert len(pd.read_parquet(out / "predictions.parquet")) == 10
