"""Replicate seeds: the seeds each replicate offsets, its artifact names, and the targets of a replicated matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lever_lm import paths, replicates
from lever_lm.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _config(seeds=(0,), pretrain=False) -> dict:
    return load_config(REPO / "config.yaml", {"replicates": {"seeds": list(seeds), "pretrain": pretrain}})


def test_suffix_and_seed_are_inverse():
    for seed in (0, 1, 7, 12):
        assert replicates.seed_of(replicates.suffix(seed)) == seed
    assert replicates.suffix(0) == ""
    assert replicates.suffix(3) == "_rep3"
    for bad in ("_rep0", "rep1", "_rep", "_rep1x"):
        with pytest.raises(ValueError, match="replicate wildcard"):
            replicates.seed_of(bad)


def test_replicate_zero_is_the_config_as_written():
    config = _config(seeds=(0, 1), pretrain=True)
    assert replicates.config_for(config, 0) == config


def test_replicate_offsets_exactly_the_seeds_in_its_scope():
    config = _config(seeds=(0, 2))
    rep = replicates.config_for(config, 2)
    assert rep["anchors"]["seed"] == config["anchors"]["seed"] + 2
    assert rep["selector"]["seed"] == config["selector"]["seed"] + 2
    assert rep["inference"]["retriever_seed"] == config["inference"]["retriever_seed"] + 2
    # pretraining is replicated only when asked for
    assert rep["beam_models"] == config["beam_models"]
    assert rep["candidates"] == config["candidates"] and rep["dataset"] == config["dataset"]
    assert config["anchors"]["seed"] == 42  # the original is not touched


def test_pretrain_replicates_offset_the_tiny_models_seeds():
    config = _config(seeds=(0, 1), pretrain=True)
    rep = replicates.config_for(config, 1)
    for name, entry in config["beam_models"].items():
        assert rep["beam_models"][name]["seed"] == entry["seed"] + 1
        assert rep["beam_models"][name]["pretrain"]["seed"] == entry["pretrain"]["seed"] + 1


def test_one_seed_keeps_todays_artifact_names():
    targets = paths.all_targets(_config())
    assert not any("_rep" in target for target in targets)
    assert "results/toy_okvqa/report/tables.md" in targets
    assert paths.fill(paths.ANCHORS, _config()) == "results/toy_okvqa/anchors/sample64_seed42.json"


def test_replicated_targets_add_a_seed_dimension():
    config = _config(seeds=(0, 1, 2))
    cells = paths.selector_cells(config)
    assert len(cells) == 3 * 5 * 2 * 4
    assert {cell["replicate"] for cell in cells} == {"", "_rep1", "_rep2"}
    beams = [t for t in paths.all_targets(config) if t.endswith("/beams.json")]
    assert len(beams) == 3 * 4 * 2 and sum("sample64_rep2/" in t for t in beams) == 8
    # without replicated pretraining only the random baseline depends on the replicate
    baselines = paths.baseline_cells(config)
    assert len(baselines) == 2 * 5 + 2 * 2
    assert {c["baseline"] for c in baselines if c["replicate"]} == {"RandomRetriever"}


def test_replicated_pretraining_replicates_every_baseline_and_model():
    config = _config(seeds=(0, 1), pretrain=True)
    assert len(paths.baseline_cells(config)) == 2 * 2 * 5
    assert replicates.model_suffix(config, "qwen2.5_vl_tiny", 1) == "_rep1"
    assert replicates.model_suffix(_config(seeds=(0, 1)), "qwen2.5_vl_tiny", 1) == ""


def test_report_name_keeps_reports_of_configs_sharing_a_dataset_apart():
    config = load_config(REPO / "config.yaml", {"report": {"name": "report_replicates"}})
    assert paths.fill(paths.REPORT_TABLES, config) == "results/toy_okvqa/report_replicates/tables.md"
