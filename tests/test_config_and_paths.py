import os
import re
from pathlib import Path

import pytest

from lever_lm import paths
from lever_lm.config import ConfigError, external_paths, load_config, split_layout

REPO = Path(__file__).resolve().parents[1]


def test_default_and_real_configs_validate():
    default = load_config(REPO / "config.yaml")
    real = load_config(REPO / "configs" / "okvqa_local.yaml")
    assert default["beam_search"]["scorer"] == "infoscore"  # filled default
    assert real["anchors"]["sample_num"] == 800 and real["candidates"]["cand_num"] == 64
    assert paths.ex_name(real) == "infoscore_left_beam5_shot2_cand64_sample800"


def test_nested_command_line_values_are_read_as_the_schema_types():
    """`--config 'anchors={sample_num: 8, seed: 42}'` hands Snakemake's config nested strings."""
    config = load_config(
        REPO / "config.yaml",
        {
            "anchors": {"sample_num": "8", "seed": "42"},
            "inference": {"shots": ["1", "2"], "max_queries": "null", "always_normalize": "true"},
            "selector": {"lr": "3e-4", "v0": {"n_layer": "1"}},
        },
    )
    assert config["anchors"] == {"sample_num": 8, "seed": 42}
    assert config["inference"]["shots"] == [1, 2] and config["inference"]["max_queries"] is None
    assert config["inference"]["always_normalize"] is True
    assert config["selector"]["lr"] == 3e-4 and config["selector"]["v0"]["n_layer"] == 1
    assert (
        load_config(REPO / "config.yaml", {"dataset": {**config["dataset"], "name": "123"}})["dataset"]["name"] == "123"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"colour": "red"}, "unknown config key colour"),
        ({"samplers": ["rand_sampler", "best_sampler"]}, "config key samplers.1"),
        ({"sampler_encoder": "nope"}, "config key sampler_encoder"),
        ({"anchors": {"sample_num": "many", "seed": 0}}, "config key anchors.sample_num"),
        (
            {"candidates": {"cand_num": 64, "mix_ratios": {"random": 0.5, "text": 0.5, "image": 0.5}}},
            "candidates.mix_ratios",
        ),
        ({"candidates": {"cand_num": 3}}, "config key candidates.cand_num"),
        (
            {"beam_models": {"q": {"family": "qwen2_5_vl", "variant": "tiny", "prompt_style": "chatty"}}},
            "beam_models.q.prompt_style",
        ),
        (
            {"beam_models": {"f": {"family": "flamingo", "variant": "tiny", "colour": "red"}}},
            "unknown config key beam_models.f.colour",
        ),
        (
            {
                "encoders": {"e": {"kind": "tiny", "tiny": {"depth": 3}}},
                "sampler_encoder": "e",
                "selector_encoder": "e",
            },
            "unknown config key encoders.e.tiny.depth",
        ),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(REPO / "config.yaml", overrides)


def test_external_paths_cover_data_and_weights():
    keys = dict(external_paths(load_config(REPO / "configs" / "okvqa_local.yaml")))
    assert "dataset.root (val annotations)" in keys
    assert keys["beam_models.qwen2.5_vl_3B.model_path"] == "models/Qwen2.5-VL-3B-Instruct"
    assert external_paths(load_config(REPO / "config.yaml")) == []  # toy data and tiny models are built


def test_dataset_files_override_standard_names_per_split():
    files = {"train": {"image_dir": "/shared/coco/train2014"}, "val": {"questions": "/dl/q.json"}}
    dataset = {"name": "okvqa", "format": "okvqa", "root": "/data/okvqa", "files": files}
    assert split_layout(dataset, "train") == {
        "questions": Path("/data/okvqa/OpenEnded_mscoco_train2014_questions.json"),
        "annotations": Path("/data/okvqa/mscoco_train2014_annotations.json"),
        "image_dir": Path("/shared/coco/train2014"),
    }
    assert split_layout(dataset, "val")["questions"] == Path("/dl/q.json")
    assert split_layout(dataset, "val")["image_dir"] == Path("/data/okvqa/val2014")
    config = load_config(REPO / "configs" / "okvqa_local.yaml", {"dataset": dataset})
    keys = dict(external_paths(config))
    assert keys["dataset.files.train.image_dir"] == "/shared/coco/train2014"
    assert keys["dataset.root (train annotations)"] == "/data/okvqa/mscoco_train2014_annotations.json"


@pytest.mark.parametrize(
    "dataset, message",
    [
        (
            {"files": {"train": {"image_dir": "/i"}}},
            "dataset.files.train.questions is not set and there is no dataset.root",
        ),
        ({"root": "/d", "files": {"test": {"image_dir": "/i"}}}, "unknown config key dataset.files.test"),
        (
            {"root": "/d", "format": "coco_caption", "files": {"val": {"questions": "/q.json"}}},
            "dataset.files.val.questions: format 'coco_caption' has no such file",
        ),
        ({"root": "/d", "files": {"val": {"images": "/i"}}}, "unknown config key dataset.files.val.images"),
    ],
)
def test_bad_dataset_files_name_the_key(dataset, message):
    dataset = {"name": "okvqa", "format": "okvqa", **dataset}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO / "configs" / "okvqa_local.yaml", {"dataset": dataset})


def test_toy_dataset_is_generated_under_root_only():
    toy = {"name": "toy", "format": "okvqa", "root": "data/toy", "toy": {}, "files": {"val": {"image_dir": "/i"}}}
    with pytest.raises(ConfigError, match="dataset.toy: .*leave out dataset.files"):
        load_config(REPO / "config.yaml", {"dataset": toy})


def test_targets_cover_the_matrix():
    config = load_config(REPO / "config.yaml")
    beams = [t for t in paths.all_targets(config) if t.endswith("beams.json")]
    assert len(beams) == len(config["samplers"]) * len(config["beam_models"])
    assert all("/infoscore_left_beam5_shot2_cand64_sample64/" in t for t in beams)


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    from lever_lm.io_utils import _current_umask, write_json

    old = os.umask(0o022)
    _current_umask.cache_clear()  # the writer reads the umask once per process
    try:
        write_json(tmp_path / "out.json", {"a": 1})
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
        _current_umask.cache_clear()
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_atomic_dir_publishes_whole_folders_only_and_clears_a_killed_writers_staging(tmp_path):
    from lever_lm.io_utils import atomic_dir

    target = tmp_path / "model"
    killed_writer = tmp_path / ".model.k1ll3d_x.tmp"  # mkdtemp's name pattern for this target
    (killed_writer / "sub").mkdir(parents=True)
    unrelated = tmp_path / ".other.abcdefgh.tmp"
    unrelated.mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abcdefgh.tmp"]  # the leftover is gone too

    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    with atomic_dir(target) as staging:
        (staging / "weights.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.abcdefgh.tmp", "model"]


def test_schema_lists_each_adapter_configs_fields():
    """The schema's key set of each beam_models family is its adapter config's fields (plus tiny/pretrain)."""
    import dataclasses

    from lever_lm.config import _load_schema
    from lever_lm.lvlm.flamingo import FlamingoConfig
    from lever_lm.lvlm.qwen import QwenVLConfig

    entry = _load_schema()["properties"]["beam_models"]["additionalProperties"]
    branches = {branch["if"]["properties"]["family"]["const"]: branch["then"] for branch in entry["allOf"]}
    for family, cls, extra in (("qwen2_5_vl", QwenVLConfig, set()), ("flamingo", FlamingoConfig, {"name"})):
        keys = set(branches[family]["properties"])
        assert set(entry["properties"]) <= keys
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        assert keys - {"family", "tiny", "pretrain"} - extra == fields
