"""Readers of OK-VQA v1.1, VQAv2 and COCO captions on hand-made fixtures (tests/fixtures), and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from lever_lm.data import (
    RECORD_COLUMNS,
    DatasetError,
    build_records,
    layout_paths,
    load_records,
    most_frequent_answer,
    read_vqa_split,
    write_records,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _tiny_jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, quality=80)


def _dataset(tmp_path: Path, fmt: str, split: str, year: int = 2014) -> Path:
    """Copy a fixture's json under tmp_path/fmt and create a tiny jpg for every image it references."""
    source = {"okvqa": "okvqa", "vqav2": "vqav2", "coco_caption": "coco"}[fmt]
    root = tmp_path / fmt
    shutil.copytree(FIXTURES / source, root)
    paths = layout_paths(fmt, root, split, year)
    if fmt == "coco_caption":
        names = [image["file_name"] for image in json.loads(paths["annotations"].read_text())["images"]]
    else:
        image_ids = {q["image_id"] for q in json.loads(paths["questions"].read_text())["questions"]}
        names = [f"COCO_{split}2014_{i:012d}.jpg" for i in image_ids]
    for name in names:
        _tiny_jpg(paths["image_dir"] / name)
    return root


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------ good input


def test_okvqa_records_labels_and_order(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    records = build_records("okvqa", root, "train")

    assert list(records.columns) == list(RECORD_COLUMNS)
    assert records["question_id"].tolist() == [95, 2621610, 2621615, 3932255]  # sorted, not file order
    assert records["idx"].tolist() == [0, 1, 2, 3]
    assert records["image_id"].tolist() == [9, 262161, 262161, 393225]
    assert (records["split"] == "train").all()
    for column in ("idx", "question_id", "image_id"):
        assert records[column].dtype == "int64"
    assert records["image_path"].iloc[0] == str(root / "train2014" / "COCO_train2014_000000000009.jpg")
    assert records["question"].iloc[0] == "What kind of food is on the plate?"
    # the `answer` field (lowercased, no full stop), not raw_answer, all ten in annotator order
    assert records["answers"].iloc[0] == ["pasta", "pasta", "pasta", "noodles", "pasta", "pasta", "spaghetti",
                                          "pasta", "pasta", "pasta"]  # fmt: skip
    assert records["label"].tolist() == [
        "pasta",
        "india",  # 3 india vs 3 australia: india occurs first
        "race",  # 4 race vs 4 racing: race occurs first
        "50",
    ]


def test_most_frequent_answer_breaks_ties_by_first_occurrence():
    assert most_frequent_answer(["b", "a", "a", "b", "c"]) == "b"
    assert most_frequent_answer(["c", "a", "a", "b", "b"]) == "a"
    assert most_frequent_answer(["x", "y", "y"]) == "y"


def test_vqav2_uses_multiple_choice_answer(tmp_path):
    root = _dataset(tmp_path, "vqav2", "val")
    records = build_records("vqav2", root, "val")

    assert records["question_id"].tolist() == [42000, 42002, 73000]
    by_qid = records.set_index("question_id")
    # raw answers: 6 x "two", 3 x "2"; the file's multiple_choice_answer is "2"
    assert most_frequent_answer(by_qid.loc[42000, "answers"]) == "two"
    assert by_qid.loc[42000, "label"] == "2"
    assert by_qid.loc[42002, "label"] == "skiing"
    assert by_qid.loc[73000, "answers"] == ["no"] * 9 + ["yes"]
    assert by_qid.loc[73000, "image_path"].endswith("val2014/COCO_val2014_000000000073.jpg")


def test_coco_captions_one_record_per_image(tmp_path):
    root = _dataset(tmp_path, "coco_caption", "val", 2017)
    records = build_records("coco_caption", root, "val", 2017)

    assert records["image_id"].tolist() == [139, 285]
    assert records["question_id"].tolist() == [139, 285]
    assert records["idx"].tolist() == [0, 1]
    assert (records["question"] == "").all()
    bear = records.iloc[1]
    assert bear["captions"] == [  # annotation id order: 1002, 1201, 1500
        "A large bear sitting on top of a grass covered field.",
        "The brown bear sits watching another animal.",
        "A big brown bear sitting in the grass.",
    ]
    assert bear["answers"] == bear["captions"]
    assert bear["label"] == "A large bear sitting on top of a grass covered field."
    assert records.iloc[0]["label"] == "A woman stands in the dining area at the table."  # stripped
    assert bear["image_path"] == str(root / "val2017" / "000000000285.jpg")


def test_layout_paths_use_standard_names(tmp_path):
    okvqa = layout_paths("okvqa", tmp_path, "val")
    assert okvqa == {
        "questions": tmp_path / "OpenEnded_mscoco_val2014_questions.json",
        "annotations": tmp_path / "mscoco_val2014_annotations.json",
        "image_dir": tmp_path / "val2014",
    }
    vqav2 = layout_paths("vqav2", tmp_path, "train")
    assert vqav2["questions"].name == "v2_OpenEnded_mscoco_train2014_questions.json"
    assert vqav2["annotations"].name == "v2_mscoco_train2014_annotations.json"
    coco = layout_paths("coco_caption", tmp_path, "train", 2017)
    assert coco == {
        "annotations": tmp_path / "annotations" / "captions_train2017.json",
        "image_dir": tmp_path / "train2017",
    }
    with pytest.raises(DatasetError, match="format 'gqa'"):
        layout_paths("gqa", tmp_path, "train")
    with pytest.raises(DatasetError, match="year 2017"):
        layout_paths("okvqa", tmp_path, "train", 2017)


def test_records_round_trip_through_parquet(tmp_path):
    records = build_records("okvqa", _dataset(tmp_path, "okvqa", "train"), "train")
    out = tmp_path / "results" / "records" / "train.parquet"
    write_records(out, records)
    loaded = load_records(out)

    assert list(loaded.columns) == list(RECORD_COLUMNS)
    assert all(type(answers) is list and all(type(a) is str for a in answers) for answers in loaded["answers"])
    pd.testing.assert_frame_equal(loaded, records)
    assert [p.name for p in out.parent.iterdir()] == ["train.parquet"]  # no temp file left behind

    captions = build_records("coco_caption", _dataset(tmp_path, "coco_caption", "val", 2017), "val", 2017)
    write_records(tmp_path / "captions.parquet", captions)
    assert type(load_records(tmp_path / "captions.parquet")["captions"].iloc[0]) is list


def test_write_records_rejects_missing_columns_and_writes_nothing(tmp_path):
    out = tmp_path / "records.parquet"
    with pytest.raises(DatasetError, match="label"):
        write_records(out, pd.DataFrame({"idx": [0], "question_id": [1]}))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- bad input


def _expect_error(tmp_path, fmt, split, year, *fragments):
    """The reader raises DatasetError whose message holds every fragment, and no records file appears."""
    out = tmp_path / "out" / "records.parquet"
    with pytest.raises(DatasetError) as caught:
        write_records(out, build_records(fmt, tmp_path / fmt, split, year))
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"
    assert not (tmp_path / "out").exists()
    return str(caught.value)


def test_missing_image_file(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    (root / "train2014" / "COCO_train2014_000000262161.jpg").unlink()
    message = _expect_error(tmp_path, "okvqa", "train", 2014, "train2014", "COCO_train2014_000000262161.jpg",
                            "(question_ids 2621610, 2621615)", "1 missing image")  # fmt: skip
    assert message.count("COCO_train2014_000000262161.jpg") == 1  # listed once, with both of its questions
    assert "000000000009" not in message


def test_missing_image_dir(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    shutil.rmtree(root / "train2014")
    _expect_error(tmp_path, "okvqa", "train", 2014, "train2014", "image directory not found")


def test_question_without_annotation(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "mscoco_train2014_annotations.json",
               lambda d: d["annotations"].pop(1))  # fmt: skip
    _expect_error(tmp_path, "okvqa", "train", 2014, "mscoco_train2014_annotations.json", "without annotation",
                  "question_id 2621615")  # fmt: skip


def test_duplicate_question_ids(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "OpenEnded_mscoco_train2014_questions.json",
               lambda d: d["questions"].append(dict(d["questions"][1])))  # fmt: skip
    _expect_error(tmp_path, "okvqa", "train", 2014, "OpenEnded_mscoco_train2014_questions.json", "duplicate",
                  "question_id 95")  # fmt: skip


def test_malformed_json(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    path = root / "mscoco_train2014_annotations.json"
    path.write_text(path.read_text()[:-20])
    _expect_error(tmp_path, "okvqa", "train", 2014, "mscoco_train2014_annotations.json", "malformed json")


@pytest.mark.parametrize(
    ("file_name", "list_name", "key", "offender"),
    [
        ("OpenEnded_mscoco_train2014_questions.json", "questions", "question", "question_id 3932255"),
        ("OpenEnded_mscoco_train2014_questions.json", "questions", "image_id", "question_id 3932255"),
        ("mscoco_train2014_annotations.json", "annotations", "answers", "question_id 3932255"),
        ("OpenEnded_mscoco_train2014_questions.json", "questions", "question_id", "entry #3"),
    ],
)
def test_missing_required_key(tmp_path, file_name, list_name, key, offender):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / file_name, lambda d: d[list_name][3].pop(key))
    _expect_error(tmp_path, "okvqa", "train", 2014, file_name, f"missing required key '{key}'", offender)


def test_missing_top_level_list(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "mscoco_train2014_annotations.json", lambda d: d.pop("annotations"))
    _expect_error(tmp_path, "okvqa", "train", 2014, "mscoco_train2014_annotations.json", "'annotations'")


def test_missing_answer_text(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "mscoco_train2014_annotations.json", lambda d: d["annotations"][0]["answers"][4].pop("answer"))
    _expect_error(tmp_path, "okvqa", "train", 2014, "question_id 95", "answers[4]", "'answer'")


def test_empty_split(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "OpenEnded_mscoco_train2014_questions.json", lambda d: d.update(questions=[]))
    _expect_error(tmp_path, "okvqa", "train", 2014, "OpenEnded_mscoco_train2014_questions.json", "empty split")


@pytest.mark.parametrize("n_answers", [9, 11])
def test_wrong_number_of_answers(tmp_path, n_answers):
    root = _dataset(tmp_path, "okvqa", "train")

    def resize(data):
        answers = data["annotations"][2]["answers"]
        data["annotations"][2]["answers"] = (answers * 2)[:n_answers]

    _edit_json(root / "mscoco_train2014_annotations.json", resize)
    _expect_error(tmp_path, "okvqa", "train", 2014, "mscoco_train2014_annotations.json",
                  "1 annotation(s) without exactly 10 answers", f"question_id 2621610 ({n_answers})")  # fmt: skip


def test_image_id_mismatch_between_files(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "mscoco_train2014_annotations.json", lambda d: d["annotations"][3].update(image_id=9))
    _expect_error(tmp_path, "okvqa", "train", 2014, "image_id differs", "question_id 3932255")


def test_non_integer_question_id(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    _edit_json(root / "OpenEnded_mscoco_train2014_questions.json",
               lambda d: d["questions"][0].update(question_id="2621615"))  # fmt: skip
    _expect_error(tmp_path, "okvqa", "train", 2014, "'question_id' is not an integer", "question_id 2621615")


def test_offender_list_is_capped_and_counted(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    questions = [{"image_id": i, "question": "q?", "question_id": i * 10} for i in range(1, 9)]
    answers = [{"answer": "x", "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
    annotations = [{"image_id": i, "question_id": i * 10, "answers": answers} for i in range(1, 9)]
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    _tiny_jpg(image_dir / "img_000000000003.jpg")

    with pytest.raises(DatasetError) as caught:
        read_vqa_split(tmp_path / "q.json", tmp_path / "a.json", image_dir, "train", "img_")
    message = str(caught.value)
    assert "7 missing image file(s)" in message
    assert "question_id 10)" in message and "question_id 60)" in message
    assert "question_id 70)" not in message and "(2 more)" in message


def test_coco_caption_errors(tmp_path):
    root = _dataset(tmp_path, "coco_caption", "val", 2017)
    captions = root / "annotations" / "captions_val2017.json"
    original = captions.read_text()

    _edit_json(captions, lambda d: d["annotations"].append({"image_id": 999, "id": 5, "caption": "x"}))
    _expect_error(tmp_path, "coco_caption", "val", 2017, "captions_val2017.json", "not listed in 'images'", "id 5")

    captions.write_text(original)
    _edit_json(captions, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 139]))
    _expect_error(tmp_path, "coco_caption", "val", 2017, "without captions", "image_id 139")

    captions.write_text(original)
    (root / "val2017" / "000000000139.jpg").unlink()
    _expect_error(tmp_path, "coco_caption", "val", 2017, "val2017", "000000000139.jpg (image_id 139)")

    _edit_json(captions, lambda d: d.update(images=[]))
    _expect_error(tmp_path, "coco_caption", "val", 2017, "captions_val2017.json", "empty split")


# ------------------------------------------------------------------------------- image verification


def test_bad_image_files_are_named_once_with_their_question_ids(tmp_path):
    root = _dataset(tmp_path, "okvqa", "train")
    images = root / "train2014"
    (images / "COCO_train2014_000000262161.jpg").write_text("<html>not found</html>")
    Image.effect_noise((96, 64), 40).convert("RGB").save(images / "COCO_train2014_000000000009.jpg", quality=90)
    whole = (images / "COCO_train2014_000000000009.jpg").read_bytes()
    (images / "COCO_train2014_000000000009.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # cut in the scan data
    message = _expect_error(tmp_path, "okvqa", "train", 2014, "train2014", "2 unreadable image file(s)",
                            "COCO_train2014_000000262161.jpg: not an image file (question_ids 2621610, 2621615)",
                            "COCO_train2014_000000000009.jpg: truncated JPEG")  # fmt: skip
    assert message.count("COCO_train2014_000000262161.jpg") == 1
    assert "\n" not in message


def test_image_checks_accept_valid_files_with_extra_bytes_or_another_format(tmp_path):
    from lever_lm.data import image_problem, verify_images

    good = tmp_path / "good.jpg"
    Image.effect_noise((96, 64), 40).convert("RGB").save(good, quality=90)
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\x00" * 16)
    trailing = tmp_path / "trailing.jpg"  # bytes after the end marker: decoded in full, then accepted
    trailing.write_bytes(good.read_bytes() + b"camera trailer")
    png = tmp_path / "png_named.jpg"
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert verify_images([str(p) for p in (good, padded, trailing, png)]) == {}
    half = tmp_path / "half.jpg"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated JPEG" in image_problem(half)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert image_problem(empty) == "not an image file"
