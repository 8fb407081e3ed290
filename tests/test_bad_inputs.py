"""Bad-input battery: `snakemake` on broken data, config, weights, checkpoints and output folders.

Every case runs the real workflow in a temporary working directory and checks what a user sees: a non-zero
exit, exactly one error line that names the culprit (a file, a question id or a config key), no Python
traceback on the terminal (it stays in the rule's log file), and no output of the failing stage left behind
(nor a half-written temp file). Planning-time cases cost about a second each; data cases run the records job;
cases that need a trained selector share one tiny run (module fixture) and break copies of it.

Decisions the cases pin down:
- an annotation with other than 10 answers is rejected, naming its question ids: the official VQA accuracy
  averages over the 10 leave-one-out subsets of 10 answers, OK-VQA and VQAv2 always have 10, so fewer means a
  damaged or foreign file, and scoring it would silently differ from the published metric;
- an unwritable output directory is made honestly, without relying on permission bits (tests run as root, who
  writes through them): a path component that is a file (``results`` is a file), and a read-only tmpfs mounted
  on ``results`` (skipped where mounting is not permitted).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lever_lm import paths

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
# the one line a failure prints: planning-time checks (rules/common.smk) or a job's InputError (lever_lm.runlog)
ERROR_LINE = re.compile(r"^(Invalid config: |Cannot write outputs: |\w+Error in [\w.-]+: )")
N_TRAIN_IMAGES, N_VAL_IMAGES, QUESTIONS_PER_IMAGE = 12, 4, 2  # 24 train questions: cand_num fits up to 22
WORDS = ("red", "blue", "cat", "two")


# ------------------------------------------------------------------------------------------------ helpers


def image_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def question_id(image_id: int, k: int) -> int:
    return image_id * 10 + k


def write_dataset(root: Path) -> Path:
    """A small dataset in the OK-VQA v1.1 layout with real (noise) JPEGs; train image ids 1.., val 1001.."""
    from PIL import Image

    for split, count, first in (("train", N_TRAIN_IMAGES, 1), ("val", N_VAL_IMAGES, 1001)):
        (root / f"{split}2014").mkdir(parents=True)
        questions, annotations = [], []
        for offset in range(count):
            image_id = first + offset
            Image.effect_noise((48, 48), 30 + offset).convert("RGB").save(
                root / f"{split}2014" / image_name(split, image_id), quality=90
            )
            for k in range(QUESTIONS_PER_IMAGE):
                word = WORDS[(offset + k) % len(WORDS)]
                questions.append(
                    {"image_id": image_id, "question": f"What is thing {k}?", "question_id": question_id(image_id, k)}
                )
                answers = [
                    {"answer_id": a + 1, "raw_answer": word, "answer_confidence": "yes", "answer": word}
                    for a in range(10)
                ]
                annotations.append(
                    {
                        "image_id": image_id,
                        "question_id": question_id(image_id, k),
                        "question_type": "other",
                        "answer_type": "other",
                        "confidence": 3,
                        "answers": answers,
                    }
                )
        (root / f"OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def base_config(data_root: Path) -> dict:
    """The default config shrunk to the smallest real matrix: 1 encoder, 1 sampler, 1 random-init tiny Flamingo,
    v1 only, 2 anchors, 1 shot at inference, no baselines."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["dataset"] = {"name": "bad", "format": "okvqa", "root": str(data_root)}
    encoder = config["encoders"]["clip_tiny_b"]
    config["encoders"] = {"clip_tiny_b": encoder}
    config["sampler_encoder"] = config["selector_encoder"] = "clip_tiny_b"
    config["anchors"] = {"sample_num": 2, "seed": 0}
    config["candidates"]["cand_num"] = 6
    config["samplers"] = ["rand_sampler"]
    flamingo = dict(config["beam_models"]["flamingo_tiny"])
    flamingo.pop("pretrain", None)  # random init: built in seconds
    config["beam_models"] = {"flamingo_tiny": flamingo}
    config["beam_search"].update(beam_size=2, shot_num=2, shards=1, threads=1)
    config["versions"] = ["v1"]
    config["selector"]["epochs"] = 1
    config["inference"] = {"shots": [1], "num_beams": 1, "batch_size": 8, "baselines": []}
    config["threads"] = {"embeddings": 1, "sampling": 1}
    return config


def run(
    workdir: Path, config: dict, *targets: str, dry_run: bool = False, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [
        SNAKEMAKE,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(config_path),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        *(["-n"] if dry_run else []),
        *targets,
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workdir)


def fill(template: str, config: dict, **wildcards: str) -> str:
    defaults = {"sampler": "rand_sampler", "beam_model": "flamingo_tiny", "version": "v1", "encoder": "clip_tiny_b"}
    return paths.fill(template, config, **{**defaults, **wildcards})


def assert_fails_in_one_line(
    result: subprocess.CompletedProcess, culprit: str, workdir: Path, absent: tuple[str, ...] = ()
) -> str:
    """Non-zero exit; exactly one error line, naming ``culprit``; no traceback; ``absent`` outputs not there."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output and 'File "' not in output, output[-5000:]
    lines = output.splitlines()
    errors = [i for i, line in enumerate(lines) if ERROR_LINE.match(line)]
    assert len(errors) == 1, output[-5000:]
    # a list of missing paths continues on indented lines (lever_lm.config.check_external_paths)
    message = [lines[errors[0]]]
    for line in lines[errors[0] + 1 :]:
        if not line.startswith("  "):
            break
        message.append(line)
    assert culprit in "\n".join(message), (culprit, message)
    for path in absent:
        target = workdir / path
        assert not target.exists(), f"{path} left behind"
        if target.parent.is_dir():  # nor a half-written temp file (lever_lm.io_utils.atomic_path)
            assert not [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    return lines[errors[0]]


@pytest.fixture
def case(tmp_path):
    """(workdir, data root, config) of a fresh workdir with its own copy of the dataset."""
    data = write_dataset(tmp_path / "data")
    workdir = tmp_path / "work"
    workdir.mkdir()
    return workdir, data, base_config(data)


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ data (records stage)


def _corrupt_json(data: Path) -> str:
    path = data / "OpenEnded_mscoco_train2014_questions.json"
    path.write_text("{'questions': [oops")
    return f"{path}: malformed json"


def _truncated_json(data: Path) -> str:
    path = data / "mscoco_train2014_annotations.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return f"{path}: malformed json"


def _missing_image(data: Path) -> str:
    (data / "train2014" / image_name("train", 3)).unlink()
    return f"1 missing image file(s): {image_name('train', 3)} (question_ids {question_id(3, 0)}, {question_id(3, 1)})"


def _non_image_jpg(data: Path) -> str:
    (data / "train2014" / image_name("train", 4)).write_text("<html>404 Not Found</html>")
    return f"{image_name('train', 4)}: not an image file (question_ids {question_id(4, 0)}, {question_id(4, 1)})"


def _truncated_jpeg(data: Path) -> str:
    path = data / "train2014" / image_name("train", 5)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 2 // 3])
    return f"{image_name('train', 5)}: truncated JPEG"


def _duplicate_question_ids(data: Path) -> str:
    edit_json(
        data / "OpenEnded_mscoco_train2014_questions.json", lambda d: d["questions"].append(dict(d["questions"][2]))
    )
    return f"duplicate question_id(s): question_id {question_id(2, 0)}"


def _question_without_annotation(data: Path) -> str:
    edit_json(data / "mscoco_train2014_annotations.json", lambda d: d["annotations"].pop(5))
    return f"question(s) without annotation: question_id {question_id(3, 1)}"


def _fewer_than_ten_answers(data: Path) -> str:
    def cut(d):
        d["annotations"][6]["answers"] = d["annotations"][6]["answers"][:7]

    edit_json(data / "mscoco_train2014_annotations.json", cut)
    return f"annotation(s) without exactly 10 answers: question_id {question_id(4, 0)} (7)"


def _non_integer_question_id(data: Path) -> str:
    edit_json(
        data / "OpenEnded_mscoco_train2014_questions.json",
        lambda d: d["questions"][1].update(question_id=str(d["questions"][1]["question_id"])),
    )
    return f"'question_id' is not an integer: question_id {question_id(1, 1)}"


DATA_CASES = {
    "corrupt_json": _corrupt_json,
    "truncated_json": _truncated_json,
    "missing_image": _missing_image,
    "non_image_jpg": _non_image_jpg,
    "truncated_jpeg": _truncated_jpeg,
    "duplicate_question_ids": _duplicate_question_ids,
    "question_without_annotation": _question_without_annotation,
    "fewer_than_10_answers": _fewer_than_ten_answers,
    "non_integer_question_id": _non_integer_question_id,
}


@pytest.mark.parametrize("name", sorted(DATA_CASES))
def test_bad_train_data_fails_in_the_records_stage(case, name):
    workdir, data, config = case
    culprit = DATA_CASES[name](data)
    records = fill(paths.RECORDS, config, split="train")
    result = run(workdir, config, records)
    line = assert_fails_in_one_line(result, culprit, workdir, absent=(records,))
    assert line.startswith("DatasetError in records: ")
    log = (workdir / "logs" / "records" / "bad_train.log").read_text()
    assert "Traceback" in log and culprit.split(": ")[-1] in log  # the full story stays in the log


def test_empty_val_split(case):
    workdir, data, config = case
    path = data / "OpenEnded_mscoco_val2014_questions.json"
    edit_json(path, lambda d: d.update(questions=[]))
    records = fill(paths.RECORDS, config, split="val")
    assert_fails_in_one_line(
        run(workdir, config, records), f"{path}: 'questions' is empty (empty split)", workdir, absent=(records,)
    )


def test_cand_num_beyond_the_train_set_fails_in_the_records_stage(case):
    workdir, _, config = case
    config["candidates"]["cand_num"] = 23  # 24 train questions, minus the anchor's image (2 questions)
    records = fill(paths.RECORDS, config, split="train")
    line = assert_fails_in_one_line(
        run(workdir, config, records), "candidates.cand_num: 23", workdir, absent=(records,)
    )
    assert f"question_id(s) {question_id(1, 0)}, {question_id(1, 1)}" in line and "at most 22 fits" in line


def test_cand_num_beyond_the_train_set_fails_at_planning_time_once_records_exist(case):
    workdir, _, config = case
    records = fill(paths.RECORDS, config, split="train")
    assert run(workdir, config, records).returncode == 0
    config["candidates"]["cand_num"] = 23
    result = run(workdir, config, dry_run=True)
    line = assert_fails_in_one_line(result, "config key candidates.cand_num: 23", workdir)
    assert records in line and f"question_id(s) {question_id(1, 0)}" in line
    config["candidates"]["cand_num"] = 22  # the largest that fits plans fine
    assert run(workdir, config, dry_run=True).returncode == 0


# ---------------------------------------------------------------------------------------- planning time


def _set(section: str, key: str, value):
    def change(config: dict) -> None:
        config[section][key] = value

    return change


def _top(key: str, value):
    def change(config: dict) -> None:
        config[key] = value

    return change


PLAN_CASES = {
    "unknown_sampler": (_top("samplers", ["knn_sampler"]), "config key samplers.0: 'knn_sampler'"),
    "unknown_beam_model_family": (
        lambda c: c["beam_models"]["flamingo_tiny"].update(family="llava"),
        "beam_models.flamingo_tiny.family",
    ),
    "unknown_version": (_top("versions", ["v9"]), "config key versions.0: 'v9'"),
    "unknown_feature_string": (_top("lever_lm", "query_img_icd_audio"), "config key lever_lm: 'query_img_icd_audio'"),
    "zero_shots_at_inference": (_set("inference", "shots", [0]), "config key inference.shots.0"),
    "negative_beam_shots": (_set("beam_search", "shot_num", -1), "config key beam_search.shot_num"),
    "beam_size_larger_than_pool": (_set("beam_search", "beam_size", 7), "config key candidates.cand_num: 6"),
    "wrong_type": (_set("anchors", "sample_num", "many"), "config key anchors.sample_num"),
    "unknown_key": (_set("selector", "epoch", 3), "selector.epoch"),
}


@pytest.mark.parametrize("name", sorted(PLAN_CASES))
def test_bad_config_fails_at_planning_time(case, name):
    workdir, _, config = case
    change, culprit = PLAN_CASES[name]
    change(config)
    result = run(workdir, config)
    assert_fails_in_one_line(result, culprit, workdir)
    assert not (workdir / "results").exists()


def _local_qwen(config: dict, model_dir: Path) -> None:
    config["beam_models"]["qwen_local"] = {
        "family": "qwen2_5_vl",
        "variant": "local",
        "model_path": str(model_dir),
        "system_prompt": None,
        "prompt_style": "single_user_message",
    }


def test_missing_model_directory(case):
    workdir, _, config = case
    _local_qwen(config, workdir / "models" / "Qwen2.5-VL-3B-Instruct")
    result = run(workdir, config, dry_run=True)
    assert_fails_in_one_line(result, "beam_models.qwen_local.model_path", workdir)
    assert str(workdir / "models" / "Qwen2.5-VL-3B-Instruct") in result.stdout + result.stderr


def test_model_directory_without_weights(case):
    workdir, _, config = case
    model_dir = workdir / "models" / "Qwen2.5-VL-3B-Instruct"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "tokenizer.json").write_text("{}")
    _local_qwen(config, model_dir)
    line = assert_fails_in_one_line(run(workdir, config, dry_run=True), "beam_models.qwen_local.model_path", workdir)
    assert "weights" in line and str(model_dir) in line


def test_output_directory_under_a_file(case):
    workdir, _, config = case
    (workdir / "results").write_text("not a folder")
    records = fill(paths.RECORDS, config, split="train")
    assert_fails_in_one_line(run(workdir, config, records), "results/bad cannot be created: results is a file", workdir)


def test_output_directory_on_a_read_only_mount(case):
    workdir, _, config = case
    mount_point = workdir / "results"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        records = fill(paths.RECORDS, config, split="train")
        assert_fails_in_one_line(
            run(workdir, config, records), f"results/bad is not writable: {mount_point}", workdir, absent=(records,)
        )
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


# ------------------------------------------------------------------------- late stages (one shared run)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run up to everything rule icl_inference reads: a v1 selector, the test pool, val embeddings."""
    workdir = tmp_path_factory.mktemp("trained") / "work"
    write_dataset(workdir / "data")
    config = base_config(Path("data"))  # relative: records hold relative image paths, so a copy has its own data
    targets = [
        fill(paths.SELECTOR_BEST, config),
        fill(paths.TEST_POOL, config),
        fill(paths.EMBEDDING_META, config, split="val"),
    ]
    result = run(workdir, config, *targets)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    output = result.stdout + result.stderr
    assert "swigfaiss" not in output  # faiss's loader lines are silenced
    return workdir, config


@pytest.fixture
def trained_copy(trained, tmp_path):
    workdir, config = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir, copy, symlinks=True)  # copy2 keeps mtimes: nothing upstream reruns
    return copy, json.loads(json.dumps(config))


def _inference_outputs(config: dict, **wildcards: str) -> tuple[str, str]:
    return fill(paths.INFERENCE_METRICS, config, **wildcards), fill(paths.INFERENCE_PREDICTIONS, config, **wildcards)


def _rerun(workdir: Path, config: dict, output: str, rule: str) -> subprocess.CompletedProcess:
    """Remove ``output`` and rebuild it with only ``rule`` allowed (its inputs are taken as they are)."""
    (workdir / output).unlink()
    return run(workdir, config, output, extra=("--allowed-rules", rule))


def test_image_gone_after_the_records_were_built(trained_copy):
    workdir, config = trained_copy
    image_dir = workdir / "data" / "train2014"
    stamp = image_dir.stat()
    (image_dir / image_name("train", 7)).unlink()
    os.utime(image_dir, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the records stay up to date
    outputs = [
        fill(template, config, split="train")
        for template in (paths.EMBEDDING_META, paths.EMBEDDING_IMAGE, paths.EMBEDDING_TEXT)
    ]
    result = _rerun(workdir, config, outputs[0], "embeddings")
    line = assert_fails_in_one_line(
        result,
        f"data/train2014/{image_name('train', 7)} (question_ids {question_id(7, 0)}, {question_id(7, 1)})",
        workdir,
        absent=tuple(outputs),
    )
    assert line.startswith("DatasetError in embeddings: records (train): 1 image file(s) missing")


def test_truncated_candidates_file(trained_copy):
    workdir, config = trained_copy
    candidates = workdir / fill(paths.CANDIDATES, config)
    text = candidates.read_text()
    candidates.write_text(text[: len(text) // 2])
    shard = fill(paths.BEAM_SHARD, config, scatteritem="1-of-1")
    result = _rerun(workdir, config, shard, "beam_shard")
    assert_fails_in_one_line(
        result, f"{candidates.relative_to(workdir)}: malformed json", workdir, absent=(shard, shard + ".partial")
    )


def test_truncated_beams_file(trained_copy):
    workdir, config = trained_copy
    beams = workdir / fill(paths.BEAMS, config)
    text = beams.read_text()
    beams.write_text(text[: len(text) // 2])
    best = fill(paths.SELECTOR_BEST, config)
    result = _rerun(workdir, config, best, "train_selector")
    assert_fails_in_one_line(
        result,
        f"{beams.relative_to(workdir)}: malformed json",
        workdir,
        absent=(best, fill(paths.SELECTOR_LAST, config), fill(paths.SELECTOR_METRICS, config)),
    )


def test_truncated_checkpoint(trained_copy):
    workdir, config = trained_copy
    checkpoint = workdir / fill(paths.SELECTOR_BEST, config)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    outputs = _inference_outputs(config)
    result = run(workdir, config, outputs[0])
    line = assert_fails_in_one_line(
        result, f"{checkpoint.relative_to(workdir)}: not a readable selector checkpoint", workdir, absent=outputs
    )
    assert line.startswith("CheckpointError in icl_inference: ")


class _RunsCode:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker file: code that runs when loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_carrying_code_is_refused(trained_copy):
    import torch

    workdir, config = trained_copy
    checkpoint = workdir / fill(paths.SELECTOR_BEST, config)
    honest = torch.load(checkpoint, weights_only=True)
    marker = workdir / "code_ran"
    torch.save({**honest, "meta": {**honest["meta"], "payload": _RunsCode(str(marker))}}, checkpoint)
    outputs = _inference_outputs(config)
    result = run(workdir, config, outputs[0])
    line = assert_fails_in_one_line(
        result, f"{checkpoint.relative_to(workdir)}: not a readable selector checkpoint", workdir, absent=outputs
    )
    assert "it holds more than plain tensors" in line and "\x1b" not in line
    assert not marker.exists()  # weights_only=True never ran the payload


def test_checkpoint_from_another_beam_model(trained_copy):
    workdir, config = trained_copy
    # a second beam model in the config; its cell gets the first model's selector (and, to load, its LVLM) copied in
    config["beam_models"]["flamingo_other"] = dict(config["beam_models"]["flamingo_tiny"])
    shutil.copytree(
        workdir / fill(paths.TINY_LVLM, config), workdir / fill(paths.TINY_LVLM, config, beam_model="flamingo_other")
    )
    selector_dir = Path(fill(paths.SELECTOR_DIR, config))
    other_dir = Path(fill(paths.SELECTOR_DIR, config, beam_model="flamingo_other"))
    shutil.copytree(workdir / selector_dir, workdir / other_dir)
    outputs = _inference_outputs(config, beam_model="flamingo_other")
    # only inference may run: the copied files stand in for the other model's beams and training
    result = run(workdir, config, outputs[0], extra=("--allowed-rules", "icl_inference"))
    assert_fails_in_one_line(
        result, "checkpoint beam_model = 'flamingo_tiny', expected 'flamingo_other'", workdir, absent=outputs
    )


def test_truncated_records_file(trained_copy):
    workdir, config = trained_copy
    records = workdir / fill(paths.RECORDS, config, split="train")
    data = records.read_bytes()
    records.write_bytes(data[: len(data) // 2])
    anchors = fill(paths.ANCHORS, config)
    result = _rerun(workdir, config, anchors, "anchors")
    assert_fails_in_one_line(
        result, f"{records.relative_to(workdir)}: not a readable parquet file", workdir, absent=(anchors,)
    )


def test_corrupt_faiss_index(trained_copy):
    workdir, config = trained_copy
    index = workdir / fill(paths.INDEX_IMAGE, config)
    index.write_bytes(b"\x00" * 64)
    pool = fill(paths.TEST_POOL, config)
    result = _rerun(workdir, config, pool, "test_pool")
    assert_fails_in_one_line(
        result, f"{index.relative_to(workdir)}: not a readable faiss index", workdir, absent=(pool,)
    )
