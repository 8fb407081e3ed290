"""The toy OK-VQA generator: format, sizes, determinism, conventions tied to the visible cue, annotators."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lever_lm.data import build_records
from lever_lm.toy import data as toy_data
from lever_lm.toy.data import (
    BACKGROUND_COLORS,
    CODE_LETTERS,
    CODE_MARKER,
    CUE_FRAME_RGB,
    OBJECT_COLORS,
    QUESTIONS,
    ToyDatasetConfig,
    answer_for,
    code_for,
    family_of,
    generate_toy_okvqa,
    parse_answer,
    to_convention,
    toy_vocabulary,
)

SMALL = ToyDatasetConfig(seed=3, train_images=12, val_images=4)


@pytest.fixture(scope="module")
def default_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "okvqa"
    started = time.perf_counter()
    generate_toy_okvqa(root, ToyDatasetConfig())
    return root, time.perf_counter() - started


@pytest.fixture(scope="module")
def default_records(default_toy):
    root, _ = default_toy
    return {split: build_records("okvqa", root, split) for split in ("train", "val")}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ format, sizes


def test_default_output_passes_the_reader_with_expected_sizes(default_toy, default_records):
    root, seconds = default_toy
    assert len(default_records["train"]) == 1020
    assert len(default_records["val"]) == 204
    assert seconds < 15, f"default generation took {seconds:.1f} s"
    train, val = default_records["train"], default_records["val"]
    assert set(train["image_id"]).isdisjoint(val["image_id"])
    assert set(train["question_id"]).isdisjoint(val["question_id"])
    assert train.groupby("image_id").size().eq(3).all()  # several questions per image
    assert (train["question_id"] // 10 == train["image_id"]).all()  # OK-VQA style ids
    with Image.open(train["image_path"].iloc[0]) as image:
        assert image.format == "JPEG" and image.size == (56, 56)


def test_json_follows_okvqa_v11_layout(default_toy):
    root, _ = default_toy
    questions = json.loads((root / "OpenEnded_mscoco_val2014_questions.json").read_text())
    annotations = json.loads((root / "mscoco_train2014_annotations.json").read_text())
    assert questions["data_subtype"] == "val2014" and questions["task_type"] == "Open-Ended"
    assert questions["data_type"] == "mscoco" and {"info", "license"} <= set(questions)
    assert set(questions["questions"][0]) == {"image_id", "question", "question_id"}
    assert annotations["data_subtype"] == "train2014" and {"info", "license", "data_type"} <= set(annotations)
    for annotation in annotations["annotations"]:
        assert set(annotation) == {"image_id", "question_type", "answer_type", "question_id", "confidence", "answers"}
        assert [a["answer_id"] for a in annotation["answers"]] == list(range(1, 11))
        assert all(set(a) == {"answer_id", "raw_answer", "answer_confidence", "answer"} for a in annotation["answers"])
    raw_differs = [a for ann in annotations["annotations"] for a in ann["answers"] if a["raw_answer"] != a["answer"]]
    assert raw_differs, "raw_answer should sometimes differ from answer in case or punctuation"
    assert all(
        a["raw_answer"].lower().rstrip(".").replace(" ", "") == a["answer"].replace(" ", "") for a in raw_differs
    )


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path, default_toy):
    root, _ = default_toy
    generate_toy_okvqa(tmp_path / "again", ToyDatasetConfig())
    assert _files(tmp_path / "again") == _files(root)

    generate_toy_okvqa(tmp_path / "seed4", ToyDatasetConfig(seed=4, train_images=12, val_images=4))
    generate_toy_okvqa(tmp_path / "seed3", SMALL)
    seed3, seed4 = _files(tmp_path / "seed3"), _files(tmp_path / "seed4")
    assert seed3["mscoco_train2014_annotations.json"] != seed4["mscoco_train2014_annotations.json"]
    assert set(seed3) != set(seed4)  # different image ids


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    rendered = []

    def failing_render(scene, image_size):
        rendered.append(scene)
        if len(rendered) == 10:
            raise RuntimeError("disk full")
        return real_render(scene, image_size)

    real_render = toy_data.render_scene
    monkeypatch.setattr(toy_data, "render_scene", failing_render)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_toy_okvqa(tmp_path / "toy", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path):
    (tmp_path / "toy").mkdir()
    generate_toy_okvqa(tmp_path / "toy", SMALL)  # an empty folder is fine (as Snakemake may leave it)
    with pytest.raises(FileExistsError, match="toy"):
        generate_toy_okvqa(tmp_path / "toy", SMALL)


@pytest.mark.parametrize(
    "kwargs",
    [{"questions_per_image": 4}, {"image_size": 30}, {"image_size": 57}, {"train_images": 0}, {"cue_probability": 2}],
)
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError, match="ToyDatasetConfig"):
        ToyDatasetConfig(**kwargs)


# ------------------------------------------------------------------------- conventions and the cue

_PALETTE = {**{f"bg:{k}": v for k, v in BACKGROUND_COLORS.items()}, **{f"obj:{k}": v for k, v in OBJECT_COLORS.items()},
            "frame": CUE_FRAME_RGB}  # fmt: skip
_PALETTE_NAMES = list(_PALETTE)
_PALETTE_RGB = np.array(list(_PALETTE.values()), dtype=np.float32)


def _scene_from_pixels(path: str) -> dict:
    """Re-derive the cue, background, object colour and count from the decoded jpg alone."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    nearest = np.argmin(((pixels[:, :, None, :] - _PALETTE_RGB) ** 2).sum(-1), axis=-1)
    names = np.array(_PALETTE_NAMES)[nearest]
    size = names.shape[0]
    half = size // 2

    def mode(labels):
        values, counts = np.unique(labels, return_counts=True)
        return str(values[np.argmax(counts)])

    border = np.concatenate([names[:2].ravel(), names[-2:].ravel(), names[:, :2].ravel(), names[:, -2:].ravel()])
    central_cross = np.concatenate([names[half - 1 : half + 1, 8:-8].ravel(), names[8:-8, half - 1 : half + 1].ravel()])
    background = mode(central_cross)
    object_pixels: list[np.ndarray] = []
    count = 0
    for rows in (slice(5, half - 1), slice(half + 1, size - 5)):
        for cols in (slice(5, half - 1), slice(half + 1, size - 5)):
            quadrant = names[rows, cols].ravel()
            objects = quadrant[np.char.startswith(quadrant, "obj:")]
            if len(objects) > 60:
                count += 1
                object_pixels.append(objects)
    return {
        "has_cue": mode(border) == "frame",
        "background_color": background.removeprefix("bg:"),
        "object_color": mode(np.concatenate(object_pixels)).removeprefix("obj:"),
        "count": str(count),
    }


def test_labels_are_canonical_and_convention_follows_the_visible_cue(default_records):
    cue_seen = collections.Counter()
    for split, records in default_records.items():
        scenes = {
            image_id: _scene_from_pixels(path) for image_id, path in zip(records["image_id"], records["image_path"])
        }
        for row in records.itertuples():
            scene = scenes[row.image_id]
            question_type, convention = family_of(row.question, row.label)
            assert convention == ("code" if scene["has_cue"] else "word"), (split, row.question_id)
            assert row.label == answer_for(scene[question_type], convention), (split, row.question_id)
            cue_seen[scene["has_cue"]] += 1
    assert min(cue_seen.values()) > 0.35 * sum(cue_seen.values())


@pytest.mark.parametrize("cue_probability", [0.0, 0.25, 1.0])
def test_each_split_has_exactly_the_configured_share_of_cued_images(tmp_path, cue_probability):
    cfg = ToyDatasetConfig(seed=4, train_images=12, val_images=6, cue_probability=cue_probability)
    generate_toy_okvqa(tmp_path / "toy", cfg)
    for split, images in (("train", 12), ("val", 6)):
        records = build_records("okvqa", tmp_path / "toy", split)
        code_images = records.loc[records["label"].str.startswith(CODE_MARKER), "image_id"].nunique()
        assert code_images == round(cue_probability * images), split


def test_every_question_text_appears_with_both_conventions(default_records):
    for records in default_records.values():
        families = collections.Counter(family_of(q, label) for q, label in zip(records["question"], records["label"]))
        for question_type in QUESTIONS:
            for convention in ("word", "code"):
                assert families[(question_type, convention)] >= 10, (question_type, convention)
        assert set(records["question"]) == set(QUESTIONS.values())


def test_image_similarity_finds_the_convention_but_question_text_cannot(default_records):
    """Nearest train image (raw pixels, cosine) of each val image shares its convention; same text does not tell."""

    def unit_pixels(records):
        x = np.stack(
            [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).ravel() for p in records["image_path"]]
        )
        x -= x.mean(axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train, val = default_records["train"], default_records["val"]
    train_convention = np.array([parse_answer(label)[1] for label in train["label"]])
    val_convention = np.array([parse_answer(label)[1] for label in val["label"]])
    nearest = np.argmax(unit_pixels(val) @ unit_pixels(train).T, axis=1)
    assert np.mean(train_convention[nearest] == val_convention) > 0.95
    for question in QUESTIONS.values():
        same_text = train_convention[train["question"].to_numpy() == question]
        assert 0.3 < np.mean(same_text == "code") < 0.7


def test_annotators_disagree_but_labels_stay_canonical(default_records):
    train = default_records["train"]
    non_unanimous = np.mean([len(set(answers)) > 1 for answers in train["answers"]])
    assert 0.4 < non_unanimous < 0.9
    canonical_share = [answers.count(label) / 10 for answers, label in zip(train["answers"], train["label"])]
    assert min(canonical_share) >= 0.6
    deviating = collections.Counter(
        a for answers, label in zip(train["answers"], train["label"]) for a in answers if a != label
    )
    assert {"grey", "three", "violet"} & set(deviating), "synonyms and number words should appear"
    assert any(not a.startswith(CODE_MARKER) for answers, label in zip(train["answers"], train["label"])
               if label.startswith(CODE_MARKER) for a in answers), "code questions get some word answers"  # fmt: skip


# -------------------------------------------------------------------------------- answer helpers


def test_conventions_round_trip_and_codes_share_one_marker():
    values = list(CODE_LETTERS)
    codes = [code_for(v) for v in values]
    assert len(set(codes)) == len(values)
    assert all(code.split() == [CODE_MARKER, CODE_LETTERS[v]] for code, v in zip(codes, values))
    assert "a" not in CODE_LETTERS.values()  # the VQA metric would drop the article
    for value in values:
        for convention in ("word", "code"):
            assert parse_answer(answer_for(value, convention)) == (value, convention)
        assert to_convention(value, "code") == code_for(value)
        assert to_convention(code_for(value), "word") == value
    assert family_of("How many objects are there?", "# " + CODE_LETTERS["3"]) == ("count", "code")
    for bad in ("grey", "# a", "#", "purple-ish"):
        with pytest.raises(ValueError):
            parse_answer(bad)
    with pytest.raises(ValueError, match="does not answer"):
        family_of("How many objects are there?", "red")


def test_vocabulary_covers_every_generated_question_and_answer(default_records):
    from lever_lm.lvlm.tiny_tokenizer import split_words

    vocabulary = set(toy_vocabulary())
    assert toy_vocabulary() == sorted(vocabulary)
    texts = set()
    for records in default_records.values():
        texts.update(records["question"])
        texts.update(a for answers in records["answers"] for a in answers)
    used = {word for text in texts for word in split_words(text)}
    assert used <= vocabulary, used - vocabulary
    assert CODE_MARKER in vocabulary and len(vocabulary) < 80
