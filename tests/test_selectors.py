"""Selectors v0-v4 (stage 5): learning on synthetic beams, decoding, resume, bad input, checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lever_lm.io_utils import read_json, write_json
from lever_lm.selectors import (
    FEATURE_CHOICES,
    VERSIONS,
    FeatureTable,
    SelectorConfig,
    load_selector,
    parse_feature_choice,
    select,
    train,
)
from lever_lm.selectors.data import EpochBatches, split_by_anchor, to_choice_order, to_prompt_order
from lever_lm.selectors.evaluation import beam_ranking, first_choice_rank, random_beam_ndcg
from lever_lm.selectors.synthetic import LEARNING_CONFIG, format_table, learning_table, make_task
from lever_lm.selectors.training import LRSchedule

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.json")

# tiny networks for the functional tests (the learning test uses LEARNING_CONFIG)
TINY = {
    "seed": 0,
    "epochs": 2,
    "batch_size": 16,
    "lr": 3e-3,
    "v0": {"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1},
    "pointer": {"hidden_dim": 16, "temperature": 0.1, "dropout": 0.1},
    "cross_attention": {"heads": 2},
    "ranking": {"base": "v2", "temperature": 0.01},
    "rl": {"rce_epochs": 1, "grpo_epochs": 2, "rce_lr": 1e-3, "grpo_lr": 1e-3, "rce_temperature": 0.01},
}


def tiny_cfg(**changes) -> SelectorConfig:
    return SelectorConfig.from_config({**TINY, **changes})


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    return make_task(
        tmp_path_factory.mktemp("tiny_inputs"),
        n_train=60,
        dim=8,
        n_anchors=24,
        pool_size=12,
        beam_size=3,
        shots=2,
        n_heldout=6,
        seed=1,
    )


@pytest.fixture(scope="module")
def trained(tiny_task, tmp_path_factory):
    """One tiny trained selector per version: {version: out_dir}."""
    root = tmp_path_factory.mktemp("tiny_models")
    out = {}
    for version in VERSIONS:
        init = out["v3"] / "best.ckpt" if version == "v4" else None
        out[version] = root / version
        train(tiny_cfg(), tiny_task.identity(version), tiny_task.paths(root / version, init))
    return out


def assert_no_outputs(out_dir: Path) -> None:
    assert not [name for name in OUTPUTS if (out_dir / name).exists()]


# ---------------------------------------------------------------- import, features, config


def test_import_does_not_load_torch():
    code = (
        "import sys, lever_lm.selectors as s; s.SelectorConfig.from_config({});"
        "s.parse_feature_choice(s.FEATURE_CHOICES[0]);"
        "print([m for m in ('torch', 'pytorch_lightning', 'transformers') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_feature_choices():
    assert len(FEATURE_CHOICES) == 12 and len(set(FEATURE_CHOICES)) == 12
    choice = parse_feature_choice("query_img_text_icd_idx")
    assert choice.query == ("image", "text") and choice.icd == ()
    assert parse_feature_choice("query_text_icd_img").icd == ("image",)
    with pytest.raises(ValueError, match="query_img_icd_video"):
        parse_feature_choice("query_img_icd_video")
    table = FeatureTable(np.ones((3, 2), np.float32), np.zeros((3, 4), np.float32))
    assert table.matrix(("image", "text")).shape == (3, 6) and table.matrix(()) is None


def test_config_defaults_and_errors():
    cfg = SelectorConfig.from_config({})
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.warmup_ratio) == (1e-4, 1e-3, 64, 20, 0.05)
    assert (cfg.v0.n_layer, cfg.v0.n_head, cfg.v0.n_embd) == (2, 8, 512)
    assert cfg.total_epochs("v4") == cfg.rl.rce_epochs + cfg.rl.grpo_epochs
    with pytest.raises(ValueError, match=r"^unknown config key selector\.bogus$"):
        SelectorConfig.from_config({"bogus": 1})
    with pytest.raises(ValueError, match=r"^unknown config key selector\.pointer\.width$"):
        SelectorConfig.from_config({"pointer": {"width": 3}})
    with pytest.raises(ValueError, match=r"^config key selector\.pointer\.temperature: 0 is less than or equal"):
        SelectorConfig.from_config({"pointer": {"temperature": 0}})
    with pytest.raises(ValueError, match=r"^config key selector\.ranking\.base: 'v0' is not one of"):
        SelectorConfig.from_config({"ranking": {"base": "v0"}})
    with pytest.raises(ValueError, match=r"^selector\.v0\.n_embd"):
        SelectorConfig.from_config({"v0": {"n_embd": 30, "n_head": 8}})


def test_schema_fills_the_selector_defaults():
    import yaml

    from lever_lm.config import validate_schema

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.pop("selector", None)
    validate_schema(config)  # fills the selector section with the schema's defaults
    assert SelectorConfig.from_config(config["selector"]) == SelectorConfig.from_config(None)
    with pytest.raises(ValueError, match="selector.pointer.bogus"):
        validate_schema({**config, "selector": {"pointer": {"bogus": 1}}})


def test_identity_rejects_unknown_version_and_feature_string(tiny_task):
    with pytest.raises(ValueError, match="v9"):
        tiny_task.identity("v9")
    with pytest.raises(ValueError, match="query_img_icd_nothing"):
        tiny_task.identity("v1", lever_lm="query_img_icd_nothing")


# ---------------------------------------------------------------- small pure pieces


def test_prompt_order_round_trip():
    assert to_choice_order([5, 9], "left") == [9, 5] and to_choice_order([5, 9], "right") == [5, 9]
    assert to_prompt_order(to_choice_order([1, 2, 3], "left"), "left") == [1, 2, 3]


def test_split_and_epoch_batches_are_seeded():
    train_a, val_a = split_by_anchor(50, 0.1, seed=3)
    assert len(val_a) == 5 and not set(train_a) & set(val_a) and len(train_a) + len(val_a) == 50
    assert np.array_equal(split_by_anchor(50, 0.1, seed=3)[1], val_a)
    assert len(split_by_anchor(1, 0.1, 0)[1]) == 0 and len(split_by_anchor(3, 0.1, 0)[1]) == 1
    epoch = {"n": 0}
    batches = EpochBatches(range(10), 3, seed=0, shuffle=True, epoch=lambda: epoch["n"])
    first = list(batches)
    assert list(batches) == first and sorted(sum(first, [])) == list(range(10))
    epoch["n"] = 1
    assert list(batches) != first
    assert len(batches) == 4 and [len(b) for b in first] == [3, 3, 3, 1]


def test_lr_schedule_warmup_cosine_and_v4_phases():
    schedule = LRSchedule(steps_per_epoch=10, epochs=10, warmup_ratio=0.05)  # 100 steps, 5 warm-up
    assert schedule(0) == pytest.approx(0.2) and schedule(4) == pytest.approx(1.0)
    assert schedule(5) == pytest.approx(1.0) and schedule(99) < 0.01
    v4 = LRSchedule(10, 4, 0.0, rce_epochs=2, grpo_scale=0.1)
    assert v4(0) == pytest.approx(1.0) and v4(20) == pytest.approx(0.1) and v4(39) < 0.01


def test_evaluation_metrics():
    scores = np.array([0.1, 0.5, 0.5, -np.inf])
    ids = np.array([7, 8, 9, 10])
    assert first_choice_rank(scores, ids, 8) == 1 and first_choice_rank(scores, ids, 9) == 2
    assert first_choice_rank(scores, ids, 7) == 3
    truth = np.array([0.3, 0.2, 0.1, 0.0])
    perfect = beam_ranking(np.array([4.0, 3.0, 2.0, 1.0]), truth)
    assert perfect == {"beam_top1": 1.0, "beam_mrr": 1.0, "beam_ndcg": 1.0}
    constant = beam_ranking(np.zeros(4), truth)  # ties count against the model
    assert constant["beam_top1"] == 0.0 and constant["beam_mrr"] == 0.25
    import itertools

    brute = np.mean(
        [beam_ranking(-np.argsort(p).astype(float), truth)["beam_ndcg"] for p in itertools.permutations(range(4))]
    )
    assert random_beam_ndcg(4) == pytest.approx(brute)


def test_ranking_and_grpo_losses_push_the_right_way():
    import torch

    from lever_lm.selectors import v1, v3, v4

    torch.manual_seed(0)
    model = v1.build_model({"hidden_dim": 8, "temperature": 0.5, "dropout": 0.0}, 10, 4, 4)
    model.set_icd_features(torch.randn(10, 4))
    ref = v1.build_model({"hidden_dim": 8, "temperature": 0.5, "dropout": 0.0}, 10, 4, 4)
    ref.load_state_dict(model.state_dict())
    ref.set_icd_features(model.icd_features)
    batch = {
        "query": torch.randn(1, 4),
        "pool": torch.arange(6)[None],
        "pool_mask": torch.ones(1, 6, dtype=torch.bool),
        "positions": torch.tensor([[[0, 1], [2, 3], [4, 5]]]),
        "beam_mask": torch.ones(1, 3, dtype=torch.bool),
        "scores": torch.tensor([[0.3, 0.2, -0.1]]),
    }
    batch["choices"] = batch["positions"]
    rl = SelectorConfig.from_config({"rl": {"clip_eps": 0.2, "kl_beta": 0.0}}).rl
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.sequence_logp(batch).detach()
    for _ in range(3):
        optimizer.zero_grad()
        v4.grpo_loss(model, ref, ref, batch, rl).backward()
        optimizer.step()
    after = model.sequence_logp(batch).detach()
    assert after[0, 0] - before[0, 0] > 0 > after[0, 2] - before[0, 2]  # best beam up, worst down
    aligned = v3.listwise_loss(torch.tensor([[-1.0, -2.0, -3.0]]), batch["scores"], batch["beam_mask"], 0.05)
    reversed_ = v3.listwise_loss(torch.tensor([[-3.0, -2.0, -1.0]]), batch["scores"], batch["beam_mask"], 0.05)
    assert aligned < reversed_
    assert v3.pairwise_loss(torch.tensor([[-1.0, -2.0, -3.0]]), batch["scores"], batch["beam_mask"], 0.5) == 0
    advantages = v4.group_advantages(batch["scores"], batch["beam_mask"])
    assert advantages.mean().abs() < 1e-6 and advantages[0, 0] > 0 > advantages[0, 2]


# ---------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def learning_rows(tmp_path_factory):
    rows = learning_table(tmp_path_factory.mktemp("learning"))
    print("\n" + format_table(rows))
    return {row["version"]: row for row in rows}


def test_every_version_learns_the_hidden_function(learning_rows):
    for version in VERSIONS:
        row = learning_rows[version]
        assert row["top1"] >= 5 * row["random_top1"], (version, row)


def test_ranking_versions_rank_no_worse_than_their_base(learning_rows):
    base = LEARNING_CONFIG["ranking"]["base"]
    assert learning_rows["v3"]["beam_ndcg"] >= learning_rows[base]["beam_ndcg"]
    assert learning_rows["v4"]["beam_ndcg"] >= learning_rows["v3"]["beam_ndcg"]
    assert learning_rows["v3"]["beam_ndcg"] > learning_rows["v3"]["random_beam_ndcg"]


# ---------------------------------------------------------------- outputs, checkpoints


def test_outputs_metrics_and_checkpoint_meta(trained, tiny_task):
    import torch

    for version, out_dir in trained.items():
        assert sorted(p.name for p in out_dir.iterdir()) == sorted(OUTPUTS)  # resume/ removed
        metrics = read_json(out_dir / "metrics.json")
        assert metrics["identity"]["version"] == version and metrics["beams_params"]["beam_model"] == "synthetic_lvlm"
        assert len(metrics["epochs"]) == tiny_cfg().total_epochs(version)
        first = metrics["epochs"][0]
        for key in ("train_loss", "val_loss", "val_top1", "val_topk", "val_mrr", "val_beam_ndcg"):
            assert np.isfinite(first[key]), (version, key)
        assert metrics["n_examples"]["train"] + metrics["n_examples"]["val"] == 24 * 3
        # durations go to the log and train()'s return value, never to the file (byte-identical reruns)
        assert not {"train_examples_per_s", "wall_time_s", "timing", "resumed_after_epoch"} & set(metrics)
        for name in ("best.ckpt", "last.ckpt"):
            data = torch.load(out_dir / name, weights_only=True)
            meta = data["meta"]
            assert all(isinstance(t, torch.Tensor) for t in data["state_dict"].values())
            assert (meta["version"], meta["beam_model"], meta["sampler"], meta["construct_order"]) == (
                version,
                "synthetic_lvlm",
                "rand_sampler",
                "left",
            )
            assert meta["n_train"] == 60 and meta["feature_dims"] == {"image": 8, "text": 8}
            assert meta["beams_params"]["ex_name"] == tiny_task.ex_name and meta["checkpoint"] == name[:-5]
    assert read_json(trained["v4"] / "metrics.json")["epochs"][-1]["phase"] == "grpo"


def test_load_selector_checks_expectations_and_features(trained, tiny_task):
    path = trained["v1"] / "best.ckpt"
    selector = load_selector(path, tiny_task.train_features, expect={"beam_model": "synthetic_lvlm", "version": "v1"})
    assert selector.needs_pools and selector.meta["lever_lm"] == "query_img_text_icd_img_text"
    assert not load_selector(trained["v0"] / "best.ckpt", tiny_task.train_features).needs_pools
    with pytest.raises(ValueError, match=rf"{path}.*beam_model = 'synthetic_lvlm', expected 'flamingo_3B'"):
        load_selector(path, tiny_task.train_features, expect={"beam_model": "flamingo_3B"})
    with pytest.raises(ValueError, match=rf"{path}.*version = 'v1', expected 'v2'"):
        load_selector(path, tiny_task.train_features, expect={"version": "v2"})
    small = FeatureTable(tiny_task.train_features.image[:10], tiny_task.train_features.text[:10])
    with pytest.raises(ValueError, match="n_train = 60"):
        load_selector(path, small)


def test_corrupt_and_code_carrying_checkpoints_are_refused(trained, tiny_task, tmp_path):
    import torch

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained["v1"] / "best.ckpt").read_bytes()[:500])
    with pytest.raises(ValueError, match=f"{truncated}: not a readable selector checkpoint"):
        load_selector(truncated, tiny_task.train_features)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=str(garbage)):
        load_selector(garbage, tiny_task.train_features)
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.ckpt"
    data = torch.load(trained["v1"] / "best.ckpt", weights_only=True)
    data["meta"]["payload"] = Payload()
    with open(evil, "wb") as fh:
        pickle.dump(data, fh, protocol=2)
    with pytest.raises(ValueError, match=str(evil)):
        load_selector(evil, tiny_task.train_features)
    assert not marker.exists()
    no_meta = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "meta": {"format": "something else"}}, no_meta)
    with pytest.raises(ValueError, match="not a selector checkpoint"):
        load_selector(no_meta, tiny_task.train_features)


# ---------------------------------------------------------------- decoding


def test_select_masks_per_row_and_decodes_beyond_trained_shots(trained, tiny_task):
    queries = tiny_task.heldout_features
    pools = [example.pool.tolist() for example in tiny_task.heldout]
    for version, out_dir in trained.items():
        selector = load_selector(out_dir / "best.ckpt", tiny_task.train_features)
        picks = select(selector, queries, 8, pools if selector.needs_pools else None)  # trained on 2 shots
        assert len(picks) == len(queries)
        for row, ids in enumerate(picks):
            assert len(ids) == 8 and len(set(ids)) == 8, (version, row, ids)
            assert all(0 <= i < 60 for i in ids)  # no special token
            if selector.needs_pools:
                assert set(ids) <= set(pools[row]), (version, row)
        # rows are independent of each other: batched == one at a time, and repeated queries agree
        one_by_one = select(selector, queries, 8, pools if selector.needs_pools else None, batch_size=1)
        assert one_by_one == picks
        twin = FeatureTable(np.repeat(queries.image[:1], 2, axis=0), np.repeat(queries.text[:1], 2, axis=0))
        twin_picks = select(selector, twin, 3, [pools[0]] * 2 if selector.needs_pools else None)
        assert twin_picks[0] == twin_picks[1]
        for k in (1, 3):  # greedy: a shorter selection is a prefix in choice order (the end in prompt order)
            shorter = select(selector, queries, k, pools if selector.needs_pools else None)
            assert [p[::-1] for p in shorter] == [p[::-1][:k] for p in picks]


def test_select_returns_prompt_order(trained, tiny_task):
    import torch

    selector = load_selector(trained["v2"] / "best.ckpt", tiny_task.train_features)
    pools = [example.pool.tolist() for example in tiny_task.heldout]
    query = torch.from_numpy(tiny_task.heldout_features.matrix(("image", "text")))
    pool = torch.tensor(pools)
    choice_order = selector.model.decode(query, 3, pool, pool >= 0).tolist()
    assert select(selector, tiny_task.heldout_features, 3, pools) == [row[::-1] for row in choice_order]  # "left"


def test_select_errors(trained, tiny_task):
    selector = load_selector(trained["v1"] / "best.ckpt", tiny_task.train_features)
    queries = FeatureTable(tiny_task.heldout_features.image[:2], tiny_task.heldout_features.text[:2])
    pools = [tiny_task.heldout[0].pool.tolist(), tiny_task.heldout[1].pool.tolist()[:3]]
    with pytest.raises(ValueError, match=r"pools\[1\]: pool of 3 ids is smaller than k = 4"):
        select(selector, queries, 4, pools)
    with pytest.raises(ValueError, match="pools are required"):
        select(selector, queries, 2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        select(selector, queries, 0, pools)
    with pytest.raises(ValueError, match=r"pools\[0\]: repeated ids"):
        select(selector, queries, 2, [[1, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="outside the train set"):
        select(selector, queries, 2, [[1, 2, 60], [3, 4, 5]])
    wrong_dims = FeatureTable(np.zeros((2, 4), np.float32), np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="feature dims"):
        select(selector, wrong_dims, 2, pools)
    v0 = load_selector(trained["v0"] / "best.ckpt", tiny_task.train_features)
    with pytest.raises(ValueError, match="k = 9 exceeds"):
        select(v0, queries, 9)


# ---------------------------------------------------------------- resume


def kill_at_epoch(n):
    """An ``on_epoch_start`` hook that raises when epoch ``n`` (0-based) starts: a job killed between epochs."""

    def hook(epoch):
        if epoch == n:
            raise RuntimeError("killed")

    return hook


def _comparable(metrics):
    return {key: metrics[key] for key in ("epochs", "best", "n_examples", "n_anchors")}


@pytest.mark.parametrize("version, kill_at", [("v1", 1), ("v4", 2)])  # v4: killed inside the GRPO phase
def test_killed_run_resumes_to_the_same_metrics(trained, tiny_task, tmp_path, version, kill_at):
    cfg = tiny_cfg(epochs=3)
    init = trained["v3"] / "best.ckpt" if version == "v4" else None
    full = train(cfg, tiny_task.identity(version), tiny_task.paths(tmp_path / "full", init))
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tiny_task.identity(version), tiny_task.paths(killed, init), on_epoch_start=kill_at_epoch(kill_at))
    assert_no_outputs(killed)
    assert (killed / "resume" / "state.ckpt").is_file()
    resumed = train(cfg, tiny_task.identity(version), tiny_task.paths(killed, init))
    assert resumed["resumed_after_epoch"] == kill_at
    assert _comparable(resumed) == _comparable(full)
    assert resumed["wall_time_s"] > 0 and resumed["train_examples_per_s"] > 0
    assert not (killed / "resume").exists()
    for name in ("metrics.json", "best.ckpt", "last.ckpt"):  # byte for byte
        assert (killed / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    import torch

    for name in ("best.ckpt", "last.ckpt"):
        a = torch.load(tmp_path / "full" / name, weights_only=True)["state_dict"]
        b = torch.load(killed / name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_state_from_other_inputs_is_discarded(tiny_task, tmp_path):
    cfg = tiny_cfg(epochs=2)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tiny_task.identity("v1"), tiny_task.paths(tmp_path), on_epoch_start=kill_at_epoch(1))
    metrics = train(replace(cfg, seed=1), tiny_task.identity("v1"), tiny_task.paths(tmp_path))  # config changed
    assert metrics["resumed_after_epoch"] is None


# ---------------------------------------------------------------- bad input


def _rewrite_beams(task, path: Path, change) -> Path:
    data = json.loads(task.beams.read_text())
    change(data)
    write_json(path, data)
    return path


@pytest.mark.parametrize("key", ["beam_model", "sampler", "ex_name"])
def test_beams_params_must_match_the_job(tiny_task, tmp_path, key):
    out = tmp_path / "out"
    out.mkdir()
    (out / "best.ckpt").write_text("stale")  # a failed run leaves nothing that looks complete
    identity = tiny_task.identity("v1", **{key: "something_else"})
    expected = rf"{tiny_task.beams}: params\.{key} = .* but this job is for {key} = 'something_else'"
    with pytest.raises(ValueError, match=expected):
        train(tiny_cfg(), identity, tiny_task.paths(out))
    assert_no_outputs(out)


def _outsider(task, record) -> int:
    """A train id that is not in the anchor's candidate pool."""
    pool = set(json.loads(task.candidates.read_text())["candidates"][str(record["anchor_id"])])
    return next(i for i in range(59, -1, -1) if i not in pool and i != record["anchor_id"])


def _bad_anchor_id(data, task):
    data["anchors"][0]["anchor_id"] = 999


def _no_anchors(data, task):
    data["anchors"] = []


def _beam_outside_pool(data, task):
    record = data["anchors"][0]
    record["sequences"][0][0] = _outsider(task, record)


def _all_negative(data, task):
    for record in data["anchors"]:
        record["scores"] = [-abs(s) - 0.01 for s in record["scores"]]


def _other_candidates(data, task):
    data["params"]["candidates"]["seed"] = 12345


@pytest.mark.parametrize(
    "change, message",
    [
        (_bad_anchor_id, r"anchor 999: anchor id outside the train set \(0\.\.59\)"),
        (_no_anchors, r": no anchors"),
        (_beam_outside_pool, r"anchor \d+: beam 0 has ids \[\d+\] not in the anchor's candidate pool"),
        (_all_negative, r"no beams left after dropping negative-score beams"),
        (_other_candidates, r"params\.candidates differ from the params of"),
    ],
)
def test_bad_beams_files(tiny_task, tmp_path, change, message):
    beams = _rewrite_beams(tiny_task, tmp_path / "beams.json", lambda data: change(data, tiny_task))
    cfg = tiny_cfg(drop_negative_beams=change is _all_negative)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{beams}.*{message}"):
        train(cfg, tiny_task.identity("v1"), tiny_task.paths(out, beams=str(beams)))
    assert_no_outputs(out)


def test_drop_negative_beams_counts_and_keeps_the_rest(tiny_task, tmp_path):
    def change(data):
        data["anchors"][0]["scores"][-1] = -0.5
        data["anchors"][1]["scores"] = [-0.1, -0.2, -0.3]

    beams = _rewrite_beams(tiny_task, tmp_path / "beams.json", change)
    metrics = train(
        tiny_cfg(epochs=1, drop_negative_beams=True),
        tiny_task.identity("v1"),
        tiny_task.paths(tmp_path / "out", beams=str(beams)),
    )
    assert metrics["dropped_negative_beams"] == 4
    assert metrics["n_anchors"]["train"] + metrics["n_anchors"]["val"] == 23
    kept = train(tiny_cfg(epochs=1), tiny_task.identity("v1"), tiny_task.paths(tmp_path / "out2", beams=str(beams)))
    assert kept["dropped_negative_beams"] == 0 and sum(kept["n_examples"].values()) == 72


def test_candidates_for_another_sampler(tiny_task, tmp_path):
    from lever_lm.sampling import read_candidates, write_candidates

    original = read_candidates(tiny_task.candidates)
    path = tmp_path / "cands.json"
    write_candidates(path, original.candidates, {**original.params, "sampler": "img_sim_sampler"})
    with pytest.raises(ValueError, match=rf"{path}: params\.sampler = 'img_sim_sampler'"):
        train(tiny_cfg(), tiny_task.identity("v1"), tiny_task.paths(tmp_path / "out", candidates=str(path)))


def test_v4_needs_a_matching_v3_checkpoint(trained, tiny_task, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="init_checkpoint: v4 needs the v3 best.ckpt"):
        train(tiny_cfg(), tiny_task.identity("v4"), tiny_task.paths(out))
    v2 = trained["v2"] / "best.ckpt"
    with pytest.raises(ValueError, match=rf"{v2}: checkpoint version = 'v2', expected 'v3'"):
        train(tiny_cfg(), tiny_task.identity("v4"), tiny_task.paths(out, v2))
    v3 = trained["v3"] / "best.ckpt"
    with pytest.raises(ValueError, match=rf"{v3}: checkpoint lever_lm = 'query_img_text_icd_img_text'"):
        train(tiny_cfg(), tiny_task.identity("v4", lever_lm="query_img_icd_img"), tiny_task.paths(out, v3))
    with pytest.raises(ValueError, match=rf"{v3}: model\.hidden_dim = 16 but the selector config gives 32"):
        train(tiny_cfg(pointer={"hidden_dim": 32}), tiny_task.identity("v4"), tiny_task.paths(out, v3))
    with pytest.raises(ValueError, match="only v4 starts from a checkpoint"):
        train(tiny_cfg(), tiny_task.identity("v3"), tiny_task.paths(out, v3))
    assert_no_outputs(out)


# ---------------------------------------------------------------- feature choices


@pytest.mark.parametrize("lever_lm", FEATURE_CHOICES)
def test_every_feature_choice_trains_and_selects(tiny_task, tmp_path, lever_lm):
    cfg = tiny_cfg(epochs=1)
    for version in ("v0", "v2"):
        out = tmp_path / version
        train(cfg, tiny_task.identity(version, lever_lm=lever_lm), tiny_task.paths(out))
        selector = load_selector(out / "last.ckpt", tiny_task.train_features, expect={"lever_lm": lever_lm})
        pools = [e.pool.tolist() for e in tiny_task.heldout] if selector.needs_pools else None
        picks = select(selector, tiny_task.heldout_features, 2, pools)
        assert all(len(set(p)) == 2 for p in picks)


# ----------------------------------------------------------------------------------------------------------------
# the similarity prior (selector.similarity_prior)


def _prior_model(version: str, prior: bool = True, text_weight: float = 0.0):
    import torch

    from lever_lm.selectors.checkpoint import build_model

    cfg = SelectorConfig.from_config({**TINY, "similarity_prior": {"enabled": prior, "text_weight": text_weight}})
    choice = parse_feature_choice("query_img_text_icd_img_text")
    dims = {"image": 8, "text": 8}
    torch.manual_seed(0)
    model = build_model(version, cfg.model_params(version), 50, choice, dims, max_len=4).eval()
    rng = np.random.default_rng(3)

    def unit(n):
        x = rng.normal(size=(n, 8))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = np.concatenate([unit(50), unit(50)], axis=1).astype(np.float32)
    queries = np.concatenate([unit(6), unit(6)], axis=1).astype(np.float32)
    model.set_icd_features(torch.from_numpy(train))
    return model, torch.from_numpy(train), torch.from_numpy(queries)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_untrained_pointer_selector_with_prior_ranks_its_pool_by_image_similarity(version):
    import torch

    model, train, queries = _prior_model(version)
    pool = torch.stack([torch.randperm(50, generator=torch.Generator().manual_seed(i))[:20] for i in range(6)])
    picks = model.decode(queries, 3, pool, torch.ones_like(pool, dtype=torch.bool))
    image_sim = torch.einsum("qd,qpd->qp", queries[:, :8], train[pool][..., :8])
    expected = pool.gather(1, image_sim.argsort(dim=1, descending=True)[:, :3])
    assert torch.equal(picks, expected)


def test_selector_vs_prior_benchmark_ranks_as_an_untrained_selector_decodes():
    """benchmarks/selector_vs_prior.py compares trained cells with its own re-ranking of the pools by the prior; that
    re-ranking must be what the untrained selector picks (image and text weights as in config.yaml)."""
    import importlib.util

    import torch

    from lever_lm.selectors.data import to_prompt_order

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "selector_vs_prior.py"
    spec = importlib.util.spec_from_file_location("selector_vs_prior", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)

    model, train, queries = _prior_model("v1", text_weight=10.0)
    pool = torch.stack([torch.randperm(50, generator=torch.Generator().manual_seed(i))[:20] for i in range(6)])
    picks = model.decode(queries, 3, pool, torch.ones_like(pool, dtype=torch.bool))
    # the rows are unit vectors per modality: dot products are the cosines
    scores = (10.0 * queries[:, :8] @ train[:, :8].T + 10.0 * queries[:, 8:] @ train[:, 8:].T).double().numpy()
    ranked = benchmark.prior_lists(scores, {str(q): pool[q].tolist() for q in range(6)}, [3])
    for q in range(6):
        assert list(ranked[(q, 3)]) == to_prompt_order(picks[q].tolist(), "left")


def test_untrained_v0_with_prior_picks_the_globally_most_similar_images():
    import torch

    model, train, queries = _prior_model("v0")
    picks = model.decode(queries, 3)
    expected = (queries[:, :8] @ train[:, :8].T).argsort(dim=1, descending=True)[:, :3]
    assert torch.equal(picks, expected)


def test_prior_off_keeps_the_spec_networks_and_their_params():
    for version in VERSIONS:
        assert "similarity_prior" not in tiny_cfg().model_params(version)
        model, _, _ = _prior_model(version, prior=False)
        assert model.prior is None
    assert tiny_cfg(similarity_prior={"enabled": True}).model_params("v3")["similarity_prior"]["image_weight"] == 10.0


def test_prior_needs_a_modality_on_both_sides():
    from lever_lm.selectors.similarity import SimilarityPrior

    with pytest.raises(ValueError, match="no modality in common"):
        SimilarityPrior(parse_feature_choice("query_img_icd_text"), {"image": 8, "text": 8}, 10.0, 0.0)
    with pytest.raises(ValueError, match="selector.similarity_prior.image_weight"):
        tiny_cfg(similarity_prior={"enabled": True, "image_weight": 0.0, "text_weight": 0.0})
