"""Snakemake DAG tier: `snakemake -n` plans the full matrix, for the default and for the real OK-VQA config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from lever_lm import paths

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    command = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--cores", "2", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    assert result.returncode == 0, result.stdout + result.stderr
    table = (result.stdout + result.stderr).split("Job stats:")[1]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def write_okvqa_fixture(root: Path) -> None:
    """A few records in the real OK-VQA v1.1 layout (file names, json keys, image names)."""
    # 65 train images, one question each: the real config's cand_num 64 fits (the anchor itself is left out),
    # which the records stage checks (lever_lm.sampling.check_cand_num_fits)
    for split, image_ids in (("train", [9, 25, 30, *range(100, 162)]), ("val", [42])):
        questions, annotations = [], []
        (root / f"{split}2014").mkdir(parents=True)
        for image_id in image_ids:
            image = root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg"
            Image.new("RGB", (8, 8), (image_id % 256, 0, 0)).save(image)
            question_id = image_id * 10 + 5
            questions.append({"image_id": image_id, "question": "What is this?", "question_id": question_id})
            answers = [
                {"answer_id": k + 1, "raw_answer": "cat", "answer_confidence": "yes", "answer": "cat"}
                for k in range(10)
            ]
            annotations.append(
                {
                    "image_id": image_id,
                    "question_id": question_id,
                    "question_type": "other",
                    "answer_type": "other",
                    "confidence": 3,
                    "answers": answers,
                }
            )
        (root / f"OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))


def real_config(tmp_path: Path, with_files: bool) -> Path:
    config = yaml.safe_load((REPO / "configs" / "okvqa_local.yaml").read_text())
    data_root = tmp_path / "okvqa"
    config["dataset"]["root"] = str(data_root)
    models = tmp_path / "models"
    for encoder in config["encoders"].values():
        encoder["checkpoint"] = str(models / Path(encoder["checkpoint"]).name)
    for entry in config["beam_models"].values():
        for key in ("vision_encoder_path", "lang_encoder_path", "tokenizer_path", "checkpoint_path", "model_path"):
            if key in entry:
                entry[key] = str(models / Path(entry[key]).relative_to("models"))
    if with_files:
        write_okvqa_fixture(data_root)
        # placeholder files, so the model dirs look complete to the planning-time check (config.check_model_files)
        model_files = ("config.json", "preprocessor_config.json", "model.safetensors", "tokenizer.json")
        for encoder in config["encoders"].values():
            Path(encoder["checkpoint"]).mkdir(parents=True)
            for name in model_files:
                (Path(encoder["checkpoint"]) / name).write_text("{}")
        for entry in config["beam_models"].values():
            for key in ("lang_encoder_path", "tokenizer_path", "model_path"):
                if key in entry:
                    Path(entry[key]).mkdir(parents=True, exist_ok=True)
                    for name in model_files:
                        (Path(entry[key]) / name).write_text("{}")
            for key in ("vision_encoder_path", "checkpoint_path"):
                if key in entry:
                    Path(entry[key]).parent.mkdir(parents=True, exist_ok=True)
                    Path(entry[key]).write_bytes(b"")
    path = tmp_path / "okvqa_local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_real_okvqa_config_plans_the_full_matrix(tmp_path):
    config_path = real_config(tmp_path, with_files=True)
    config = yaml.safe_load(config_path.read_text())
    samplers, models = len(config["samplers"]), len(config["beam_models"])
    shards = config["beam_search"]["shards"]
    ceiling_shards = config["ceiling"]["shards"]
    versions = len(config["versions"])
    baselines = len(config["inference"].get("baselines", paths.BASELINES))
    jobs = planned_jobs(snakemake("-n", "--configfile", str(config_path), cwd=tmp_path))
    assert jobs == {
        "records": 2,
        "embeddings": 4,  # 2 encoders (sampler, selector) x 2 splits
        "faiss_index": 1,  # the sampler encoder's train embeddings
        "anchors": 1,
        "candidates": samplers,
        "test_pool": samplers,
        "beam_shard": models * samplers * shards,
        "beam_gather": models * samplers,
        "train_selector": versions * models * samplers,
        "icl_inference": versions * models * samplers,
        "baseline_inference": models * baselines,
        "ceiling_shard": models * samplers * ceiling_shards,
        "ceiling_gather": models * samplers,
        "ceiling_inference": models * samplers,
        "report": 1,
        "all": 1,
        "total": 2
        + 4
        + 1
        + 1
        + 2 * samplers
        + models * samplers * (shards + 1)
        + 2 * versions * models * samplers
        + models * baselines
        + models * samplers * (ceiling_shards + 2)
        + 1
        + 1,
    }
    assert (samplers, models, shards, versions, baselines, ceiling_shards) == (4, 2, 8, 5, 5, 8)


def test_real_config_with_missing_paths_names_them_without_traceback(tmp_path):
    config_path = real_config(tmp_path, with_files=False)
    result = snakemake("-n", "--configfile", str(config_path), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output and 'File "' not in output
    assert "configured input path(s) do not exist" in output
    for key in (
        "dataset.root (train questions)",
        "encoders.clip_vit_l14.checkpoint",
        "beam_models.flamingo_3B.checkpoint_path",
        "beam_models.qwen2.5_vl_3B.model_path",
    ):
        assert key in output
    assert str(tmp_path / "okvqa" / "mscoco_val2014_annotations.json") in output


def test_default_config_plans_toy_matrix(tmp_path):
    jobs = planned_jobs(snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml")))
    assert jobs["toy_dataset"] == 1
    assert jobs["tiny_lvlm"] == 2
    assert jobs["beam_shard"] == 2 * 4 * 1  # beam models x samplers x beam_search.shards
    assert jobs["beam_gather"] == 8
    assert jobs["train_selector"] == jobs["icl_inference"] == 5 * 2 * 4
    assert jobs["baseline_inference"] == 2 * 5
    assert jobs["report"] == 1


def test_imitation_ceiling_is_planned_by_default_and_not_when_disabled(tmp_path):
    args = ("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"))
    result = snakemake(*args)
    jobs = planned_jobs(result)
    assert jobs["ceiling_shard"] == 2 * 4 * 1  # beam models x samplers x ceiling.shards
    assert jobs["ceiling_gather"] == jobs["ceiling_inference"] == 2 * 4
    ceiling = "ceiling/qwen2.5_vl_tiny/mix_sampler/infoscore_left_beam5_shot2_cand64_sample64/metrics.json"
    assert ceiling in result.stdout
    disabled = planned_jobs(snakemake(*args, "--config", "ceiling={enabled: false}"))
    assert not any(rule.startswith("ceiling") for rule in disabled)
    assert disabled["total"] == jobs["total"] - (8 + 8 + 8)  # shards, gathers, inferences


def test_replicate_config_plans_a_seed_dimension(tmp_path):
    """configs/toy_replicates.yaml over the default: 3 replicates, pretraining included, of a reduced matrix."""
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        str(REPO / "configs" / "toy_reduced.yaml"),
        str(REPO / "configs" / "toy_replicates.yaml"),
    )
    jobs = planned_jobs(result)
    assert jobs["anchors"] == 3 and jobs["tiny_lvlm"] == 3 * 2
    assert jobs["beam_gather"] == 3 * 2 * 2
    assert jobs["train_selector"] == jobs["icl_inference"] == 3 * 2 * 2 * 2
    assert jobs["baseline_inference"] == 3 * 2 * 3
    assert "models/qwen2.5_vl_tiny_rep2" in result.stdout
    assert "sample64_rep1/query_img_text_icd_img_text/metrics.json" in result.stdout
    assert "report_replicates/tables.md" in result.stdout


@pytest.mark.parametrize("seed", [1, 2])
def test_dataset_seed_overlays_plan_their_own_toy(tmp_path, seed):
    """configs/toy_seed{1,2}.yaml: the reduced matrix on another draw of the toy dataset, under its own name."""
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        str(REPO / "configs" / "toy_reduced.yaml"),
        str(REPO / "configs" / f"toy_seed{seed}.yaml"),
    )
    jobs = planned_jobs(result)
    assert jobs["toy_dataset"] == 1 and jobs["tiny_lvlm"] == 2
    assert jobs["train_selector"] == jobs["icl_inference"] == 2 * 2 * 2
    assert not any(rule.startswith("ceiling") for rule in jobs)
    assert f"results/toy_okvqa_seed{seed}/report/tables.md" in result.stdout
    assert "results/toy_okvqa/" not in result.stdout


def test_v4_selector_depends_on_v3_even_when_v3_is_not_listed(tmp_path):
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        "--config",
        "versions=[v4]",
        "samplers=[rand_sampler]",
    )
    jobs = planned_jobs(result)
    assert jobs["train_selector"] == 2 * 2  # v3 and v4, for each beam model
    assert jobs["icl_inference"] == 2  # only the listed version is evaluated


def test_nested_command_line_overrides_plan_with_their_values(tmp_path):
    """Snakemake hands nested `--config` values over as strings; they are read as the schema's types."""
    result = snakemake(
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        "--config",
        "anchors={sample_num: 8, seed: 42}",
        "beam_search={beam_size: 3, shot_num: 2, shards: 2}",
    )
    jobs = planned_jobs(result)
    assert jobs["beam_shard"] == 2 * 4 * 2
    assert "/infoscore_left_beam3_shot2_cand64_sample8/" in result.stdout
    assert "sample64" not in result.stdout


def test_split_files_kept_apart_are_read_where_they_are(tmp_path):
    """COCO images in a shared folder, OK-VQA's json files elsewhere: explicit paths per split, root for the rest."""
    config_path = real_config(tmp_path, with_files=True)
    config = yaml.safe_load(config_path.read_text())
    data_root = Path(config["dataset"]["root"])
    shared_coco = tmp_path / "shared" / "coco"
    shared_coco.mkdir(parents=True)
    for split in ("train", "val"):
        (data_root / f"{split}2014").rename(shared_coco / f"{split}2014")
    elsewhere = tmp_path / "downloads" / "val_questions.json"
    elsewhere.parent.mkdir()
    (data_root / "OpenEnded_mscoco_val2014_questions.json").rename(elsewhere)
    config["dataset"]["files"] = {
        "train": {"image_dir": str(shared_coco / "train2014")},
        "val": {"image_dir": str(shared_coco / "val2014"), "questions": str(elsewhere)},
    }
    config_path.write_text(yaml.safe_dump(config))

    records = [paths.fill(paths.RECORDS, config, split=split) for split in ("train", "val")]
    result = snakemake(*records, "--configfile", str(config_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    val = pd.read_parquet(tmp_path / records[1])
    assert val["question_id"].tolist() == [425]
    assert val["image_path"].tolist() == [str(shared_coco / "val2014" / "COCO_val2014_000000000042.jpg")]
    assert len(pd.read_parquet(tmp_path / records[0])) == 65

    config["dataset"]["files"]["val"]["image_dir"] = str(tmp_path / "nowhere")
    config_path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(config_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "dataset.files.val.image_dir: " + str(tmp_path / "nowhere") in result.stdout + result.stderr


@pytest.mark.parametrize(
    "override, key",
    [
        ("beam_search={construct_order: left, beam_size: five, shot_num: 2, shards: 2}", "beam_search.beam_size"),
        ("samplers=[rand_sampler, best_sampler]", "samplers.1"),
        ("anchors={sample_num: 10, seed: 1, colour: red}", "anchors.colour"),
    ],
)
def test_bad_config_names_the_key(tmp_path, override, key):
    result = snakemake(
        "-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"), "--config", override
    )
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_is_clean():
    snakefmt = str(Path(sys.executable).parent / "snakefmt")
    result = subprocess.run(
        [snakefmt, "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
