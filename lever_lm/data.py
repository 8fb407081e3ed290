"""Stage 1: read OK-VQA v1.1, VQAv2 and COCO-caption files into one records table.

Public API
- ``read_vqa_split(questions_json, annotations_json, image_dir, split, image_prefix) -> DataFrame``
  OK-VQA v1.1 and VQAv2 (same json family). Label: ``multiple_choice_answer`` where the annotation has it
  (VQAv2), else the most frequent of the 10 ``answer``s, ties broken by first occurrence (OK-VQA).
- ``read_coco_captions(captions_json, image_dir, split) -> DataFrame``: one record per image (sorted by
  image_id); question "", answers = all captions (stripped), label = first caption by annotation id, plus ``captions``.
  ``question_id`` equals ``image_id`` there (the contract needs an integer id per record).
- ``DatasetLayout`` / ``layout_paths(fmt, root, split, year=2014, files=None) -> dict``: the input paths of one
  split for ``fmt`` in ``FORMATS`` (keys ``questions`` (VQA only), ``annotations``, ``image_dir``): those given in
  ``files``, the others under ``root`` with the standard names, so the Snakemake rules can list them as inputs.
- ``build_records(fmt, root, split, year=2014, files=None) -> DataFrame``: the reader for ``fmt`` on ``layout_paths``.
- ``write_records(path, df)`` (atomic parquet) and ``load_records(path) -> DataFrame`` (answers as lists of str).

Records (one row per question, sorted by question_id; captions: by image_id): columns ``RECORD_COLUMNS``,
``idx`` = 0..n-1 is the position in the split (for train, the ICD id used everywhere downstream).
``image_path`` is ``image_dir`` joined with the file name, as given (relative stays relative).

Bad input raises ``DatasetError`` (an ``InputError``, so a job prints it as one line) naming the file and the first
few offenders with their count; readers build the table in memory only, so nothing partial is ever written.
Every image is checked when the records are built (``verify_images``, in threads: PIL's header parse and, for JPEGs,
the end-of-image marker, about 0.2 ms per COCO-sized image), so a missing, non-image or truncated file fails here,
named once with its question ids, rather than in the embeddings job. An annotation must have exactly 10 answers
(rejected otherwise, naming the question ids: the official VQA accuracy averages over the 10 leave-one-out subsets,
and OK-VQA and VQAv2 always have 10, so fewer means a damaged or foreign file).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lever_lm.errors import InputError
from lever_lm.io_utils import read_json, write_parquet

FORMATS = ("okvqa", "vqav2", "coco_caption")
RECORD_COLUMNS = ("idx", "split", "question_id", "image_id", "image_path", "question", "answers", "label")
ANSWERS_PER_QUESTION = 10
_MAX_LISTED = 5


class DatasetError(InputError):
    """Bad dataset input; the message names the file and the first offending records."""


SPLIT_FILE_KINDS = ("questions", "annotations", "image_dir")


@dataclass(frozen=True)
class DatasetLayout:
    """Where one split of a dataset lives: the standard names under ``root`` (docs/stages.md stage 1), except for the
    files given explicitly in ``files`` (kind -> path, kinds from ``SPLIT_FILE_KINDS``)."""

    fmt: str
    root: Path | None
    split: str
    year: int = 2014
    files: Mapping[str, str | os.PathLike] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise DatasetError(f"format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if not self.split or not self.split.isidentifier():
            raise DatasetError(f"split {self.split!r} must be a plain name such as 'train' or 'val'")
        if self.fmt != "coco_caption" and self.year != 2014:
            raise DatasetError(f"format {self.fmt!r} only exists for year 2014, got year {self.year}")
        unknown = sorted(set(self.files) - set(self._standard_names()))
        if unknown:
            raise DatasetError(
                f"dataset.files.{self.split}.{unknown[0]}: format {self.fmt!r} has no such file "
                f"(it reads {', '.join(self._standard_names())})"
            )
        if self.root is None:
            implicit = [kind for kind in self._standard_names() if kind not in self.files]
            if implicit:
                raise DatasetError(
                    f"dataset.files.{self.split}.{implicit[0]} is not set and there is no dataset.root to find "
                    "it under; set one of them"
                )

    def _standard_names(self) -> dict[str, str]:
        """Kind -> standard path relative to the root."""
        if self.fmt == "coco_caption":
            annotations = f"annotations/captions_{self.split}{self.year}.json"
            return {"annotations": annotations, "image_dir": f"{self.split}{self.year}"}
        prefix = "v2_" if self.fmt == "vqav2" else ""
        return {
            "questions": f"{prefix}OpenEnded_mscoco_{self.split}2014_questions.json",
            "annotations": f"{prefix}mscoco_{self.split}2014_annotations.json",
            "image_dir": f"{self.split}2014",
        }

    def _path(self, kind: str) -> Path:
        if kind in self.files:
            return Path(self.files[kind])
        return Path(self.root) / self._standard_names()[kind]

    @property
    def questions_json(self) -> Path | None:
        return self._path("questions") if self.fmt != "coco_caption" else None

    @property
    def annotations_json(self) -> Path:
        return self._path("annotations")

    @property
    def image_dir(self) -> Path:
        return self._path("image_dir")

    @property
    def image_prefix(self) -> str:
        """File name prefix before the 12-digit image id (VQA formats; captions use ``file_name``)."""
        return f"COCO_{self.split}{self.year}_"

    def paths(self) -> dict[str, Path]:
        return {kind: self._path(kind) for kind in self._standard_names()}


def _layout(fmt: str, root: str | os.PathLike | None, split: str, year: int, files: Mapping | None) -> DatasetLayout:
    return DatasetLayout(fmt, None if root is None else Path(root), split, year, dict(files or {}))


def layout_paths(
    fmt: str, root: str | os.PathLike | None, split: str, year: int = 2014, files: Mapping | None = None
) -> dict[str, Path]:
    """Input paths of one split: ``questions`` (VQA formats only), ``annotations``, ``image_dir``."""
    return _layout(fmt, root, split, year, files).paths()


def build_records(
    fmt: str, root: str | os.PathLike | None, split: str, year: int = 2014, files: Mapping | None = None
) -> pd.DataFrame:
    """Records of one split: files from ``files`` where given, else under ``root`` with the standard names."""
    layout = _layout(fmt, root, split, year, files)
    if fmt == "coco_caption":
        return read_coco_captions(layout.annotations_json, layout.image_dir, split)
    return read_vqa_split(layout.questions_json, layout.annotations_json, layout.image_dir, split, layout.image_prefix)


# ---------------------------------------------------------------------------------------------- VQA


def read_vqa_split(
    questions_json: str | os.PathLike,
    annotations_json: str | os.PathLike,
    image_dir: str | os.PathLike,
    split: str,
    image_prefix: str,
) -> pd.DataFrame:
    """Records of one OK-VQA v1.1 / VQAv2 split, sorted by question_id."""
    questions = _load_record_list(questions_json, "questions")
    annotations = _load_record_list(annotations_json, "annotations")
    _require_keys(questions_json, questions, ("question_id", "image_id", "question"), "questions")
    _require_keys(annotations_json, annotations, ("question_id", "image_id", "answers"), "annotations")
    _require_int_ids(questions_json, questions, ("question_id", "image_id"))
    _require_int_ids(annotations_json, annotations, ("question_id", "image_id"))
    question_by_id = _index_unique(questions_json, questions)
    annotation_by_id = _index_unique(annotations_json, annotations)

    _fail_if(
        annotations_json,
        sorted(set(question_by_id) - set(annotation_by_id)),
        "question(s) without annotation",
        lambda qid: f"question_id {qid}",
    )
    _fail_if(
        questions_json,
        sorted(set(annotation_by_id) - set(question_by_id)),
        "annotation(s) without question",
        lambda qid: f"question_id {qid}",
    )
    _fail_if(
        annotations_json,
        sorted(qid for qid, q in question_by_id.items() if annotation_by_id[qid]["image_id"] != q["image_id"]),
        "annotation(s) whose image_id differs from the question's",
        lambda qid: f"question_id {qid}",
    )

    _fail_if(
        annotations_json,
        sorted(qid for qid, ann in annotation_by_id.items() if _answer_count(ann) != ANSWERS_PER_QUESTION),
        f"annotation(s) without exactly {ANSWERS_PER_QUESTION} answers",
        lambda qid: f"question_id {qid} ({_answer_count(annotation_by_id[qid])})",
    )
    answers_by_id = {qid: _answers_of(annotations_json, qid, ann) for qid, ann in annotation_by_id.items()}
    _fail_if(
        questions_json,
        sorted(qid for qid, q in question_by_id.items() if not isinstance(q["question"], str)),
        "question(s) whose question is not a string",
        lambda qid: f"question_id {qid}",
    )

    image_dir = Path(image_dir)
    file_names = {qid: f"{image_prefix}{q['image_id']:012d}.jpg" for qid, q in question_by_id.items()}
    _require_images(image_dir, file_names)
    image_dir_text = str(image_dir)  # os.path.join is much cheaper than Path / for 400k records

    rows = []
    for qid in sorted(question_by_id):
        question = question_by_id[qid]
        annotation = annotation_by_id[qid]
        answers = answers_by_id[qid]
        label = annotation.get("multiple_choice_answer")
        if label is None:
            label = most_frequent_answer(answers)
        elif not isinstance(label, str):
            raise DatasetError(f"{annotations_json}: question_id {qid}: multiple_choice_answer is not a string")
        rows.append(
            {
                "question_id": qid,
                "image_id": question["image_id"],
                "image_path": os.path.join(image_dir_text, file_names[qid]),
                "question": question["question"],
                "answers": answers,
                "label": label,
            }
        )
    return _finish(rows, split)


def most_frequent_answer(answers: Iterable[str]) -> str:
    """The most frequent answer; ties go to the answer that occurs first (OK-VQA label rule)."""
    answers = list(answers)
    if not answers:
        raise DatasetError("no answers to choose a label from")
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    best = max(counts.values())
    return next(answer for answer in answers if counts[answer] == best)


def _answer_count(annotation: dict) -> int | str:
    answers = annotation["answers"]
    return len(answers) if isinstance(answers, list) else f"not a list: {type(answers).__name__}"


def _answers_of(path: Any, qid: int, annotation: dict) -> list[str]:
    answers = annotation["answers"]
    if not isinstance(answers, list) or len(answers) != ANSWERS_PER_QUESTION:
        count = len(answers) if isinstance(answers, list) else "no list of"
        raise DatasetError(f"{path}: question_id {qid} has {count} answers, expected {ANSWERS_PER_QUESTION}")
    texts = []
    for position, answer in enumerate(answers):
        if not isinstance(answer, dict) or "answer" not in answer:
            raise DatasetError(f"{path}: question_id {qid}: answers[{position}] is missing key 'answer'")
        if not isinstance(answer["answer"], str):
            raise DatasetError(f"{path}: question_id {qid}: answers[{position}]['answer'] is not a string")
        texts.append(answer["answer"])
    return texts


# ------------------------------------------------------------------------------------------ captions


def read_coco_captions(captions_json: str | os.PathLike, image_dir: str | os.PathLike, split: str) -> pd.DataFrame:
    """One record per image of a pycocotools captions file, sorted by image_id."""
    data = _load_json_object(captions_json)
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{captions_json}: missing top-level list {key!r}")
    images, annotations = data["images"], data["annotations"]
    if not images:
        raise DatasetError(f"{captions_json}: 'images' is empty (empty split)")
    _require_keys(captions_json, images, ("id", "file_name"), "images")
    _require_keys(captions_json, annotations, ("id", "image_id", "caption"), "annotations")
    _require_int_ids(captions_json, images, ("id",), id_key="id")
    _require_int_ids(captions_json, annotations, ("id", "image_id"), id_key="id")
    image_by_id = _index_unique(captions_json, images, id_key="id", what="image id")
    _index_unique(captions_json, annotations, id_key="id", what="caption annotation id")

    captions_by_image: dict[int, list[tuple[int, str]]] = {image_id: [] for image_id in image_by_id}
    unknown_images = []
    for annotation in annotations:
        if annotation["image_id"] not in captions_by_image:
            unknown_images.append(annotation["id"])
            continue
        captions_by_image[annotation["image_id"]].append((annotation["id"], annotation["caption"]))
    _fail_if(captions_json, unknown_images, "caption(s) of an image not listed in 'images'", lambda a: f"id {a}")
    _fail_if(
        captions_json,
        sorted(image_id for image_id, caps in captions_by_image.items() if not caps),
        "image(s) without captions",
        lambda image_id: f"image_id {image_id}",
    )
    _fail_if(
        captions_json,
        sorted(ann["id"] for ann in annotations if not isinstance(ann["caption"], str)),
        "caption(s) that are not strings",
        lambda a: f"id {a}",
    )

    image_dir = Path(image_dir)
    file_names = {image_id: str(image["file_name"]) for image_id, image in image_by_id.items()}
    _require_images(image_dir, file_names, what="image_id")

    rows = []
    for image_id in sorted(image_by_id):
        captions = [caption.strip() for _, caption in sorted(captions_by_image[image_id])]
        rows.append(
            {
                "question_id": image_id,
                "image_id": image_id,
                "image_path": str(image_dir / file_names[image_id]),
                "question": "",
                "answers": captions,
                "label": captions[0],
                "captions": list(captions),
            }
        )
    return _finish(rows, split)


# ------------------------------------------------------------------------------------ records files


def load_image(path: str | os.PathLike) -> Any:
    """A record's image as RGB; an unreadable file raises ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:  # FileNotFoundError and PIL's UnidentifiedImageError included
        raise DatasetError(f"cannot read image {path}: {error}") from error


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a record's image from its header, without decoding it; unreadable: as ``load_image``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def write_records(path: str | os.PathLike, records: pd.DataFrame) -> None:
    """Write a records table as parquet, atomically, after checking the contract's columns."""
    _check_record_columns(path, records)
    write_parquet(path, records)


def load_records(path: str | os.PathLike) -> pd.DataFrame:
    """Read a records parquet; ``answers`` (and ``captions``) come back as python lists of str."""
    if not Path(path).is_file():
        raise DatasetError(f"{path}: records file not found")
    try:
        records = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on a damaged file
        raise DatasetError(f"{path}: not a readable parquet file ({type(err).__name__}: {_first_line(err)})") from None
    _check_record_columns(path, records)
    for column in ("answers", "captions"):
        if column in records.columns:
            records[column] = [[str(a) for a in value] for value in records[column]]
    return records


def _check_record_columns(path: Any, records: pd.DataFrame) -> None:
    missing = [column for column in RECORD_COLUMNS if column not in records.columns]
    if missing:
        raise DatasetError(f"{path}: records lack column(s) {', '.join(missing)}")


# ---------------------------------------------------------------------------------------- helpers


def _finish(rows: list[dict], split: str) -> pd.DataFrame:
    records = pd.DataFrame(rows)
    records.insert(0, "split", split)
    records.insert(0, "idx", range(len(records)))
    for column in ("idx", "question_id", "image_id"):
        records[column] = records[column].astype("int64")
    columns = list(RECORD_COLUMNS) + [c for c in records.columns if c not in RECORD_COLUMNS]
    return records[columns]


def _load_json_object(path: Any) -> dict:
    if not Path(path).is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        data = read_json(path)
    except ValueError as err:  # read_json names the file and the position
        raise DatasetError(str(err)) from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a json object at the top level, got {type(data).__name__}")
    return data


def _load_record_list(path: Any, key: str) -> list[dict]:
    data = _load_json_object(path)
    if key not in data:
        raise DatasetError(f"{path}: missing top-level key {key!r}")
    records = data[key]
    if not isinstance(records, list):
        raise DatasetError(f"{path}: {key!r} is not a list")
    if not records:
        raise DatasetError(f"{path}: {key!r} is empty (empty split)")
    not_objects = [position for position, record in enumerate(records) if not isinstance(record, dict)]
    _fail_if(path, not_objects, f"{key} entries that are not objects", lambda p: f"{key}[{p}]")
    return records


def _describe(record: dict, position: int, id_key: str) -> str:
    if id_key in record:
        return f"{id_key} {record[id_key]}"
    return f"entry #{position}"


def _require_keys(
    path: Any, records: list[dict], keys: tuple[str, ...], list_name: str, id_key: str | None = None
) -> None:
    id_key = id_key or ("question_id" if "question_id" in keys else "id")
    for key in keys:
        offenders = [_describe(r, p, id_key) for p, r in enumerate(records) if key not in r]
        _fail_if(path, offenders, f"{list_name} entries missing required key {key!r}", str)


def _require_int_ids(path: Any, records: list[dict], keys: tuple[str, ...], id_key: str = "question_id") -> None:
    for key in keys:
        offenders = [
            _describe(r, p, id_key)
            for p, r in enumerate(records)
            if not isinstance(r[key], int) or isinstance(r[key], bool)
        ]
        _fail_if(path, offenders, f"entries whose {key!r} is not an integer", str)


def _index_unique(
    path: Any, records: list[dict], id_key: str = "question_id", what: str | None = None
) -> dict[int, dict]:
    by_id: dict[int, dict] = {}
    duplicates = []
    for record in records:
        if record[id_key] in by_id:
            duplicates.append(record[id_key])
        by_id[record[id_key]] = record
    _fail_if(path, sorted(set(duplicates)), f"duplicate {what or id_key}(s)", lambda i: f"{id_key} {i}")
    return by_id


def _require_images(image_dir: Path, file_names: dict[int, str], what: str = "question_id") -> None:
    """Every listed image exists and is a readable image file; each bad file is named once, with its ids."""
    # one listing instead of a stat per record: COCO train has 80k files
    try:
        present = set(os.listdir(image_dir))
    except FileNotFoundError:
        raise DatasetError(f"{image_dir}: image directory not found") from None
    except NotADirectoryError:
        raise DatasetError(f"{image_dir}: not a directory") from None
    ids_by_name: dict[str, list[int]] = {}
    for key, name in file_names.items():
        ids_by_name.setdefault(name, []).append(key)
    missing = sorted(name for name in ids_by_name if name not in present)
    _fail_if(image_dir, missing, "missing image file(s)", lambda name: f"{name} ({_ids(what, ids_by_name[name])})")
    problems = verify_images([os.path.join(str(image_dir), name) for name in sorted(ids_by_name)])
    _fail_if(
        image_dir,
        sorted(problems),
        "unreadable image file(s)",
        lambda path: f"{os.path.basename(path)}: {problems[path]} ({_ids(what, ids_by_name[os.path.basename(path)])})",
    )


def _ids(what: str, ids: list[int]) -> str:
    ids = sorted(ids)
    return f"{what} {ids[0]}" if len(ids) == 1 else f"{what}s {', '.join(str(i) for i in ids)}"


IMAGE_CHECK_THREADS = 8  # header checks are I/O-bound: threads overlap the reads (cold caches, network disks)
_JPEG_TAIL_BYTES = 64


def image_problem(path: str | os.PathLike) -> str | None:
    """Why an image file is unusable, or None: checked cheaply, without decoding the pixels.

    PIL parses the header (``open`` reads a JPEG's markers up to its scan data; ``verify`` checks what the format
    allows, e.g. PNG chunk CRCs). A JPEG must also end with its end-of-image marker (``FF D9``, trailing NUL
    padding allowed): a truncated download lacks it, and PIL would only notice when decoding it in the
    embeddings job. A JPEG without the marker at its end is decoded in full before it is rejected, since some
    valid files carry extra bytes after the marker.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
    except UnidentifiedImageError:
        return "not an image file"
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on damaged headers
        return f"damaged image header ({type(err).__name__}: {_first_line(err)})"
    if image_format == "JPEG" and not _ends_with_jpeg_eoi(path):
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as err:
            return f"truncated JPEG (no end-of-image marker; {_first_line(err)})"
    return None


def _ends_with_jpeg_eoi(path: str | os.PathLike) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - _JPEG_TAIL_BYTES))
        return handle.read().rstrip(b"\x00").endswith(b"\xff\xd9")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def verify_images(paths: Iterable[str], threads: int = IMAGE_CHECK_THREADS) -> dict[str, str]:
    """{path: problem} for the unusable files among ``paths`` (``image_problem``, checked in parallel threads)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        found = pool.map(image_problem, paths, chunksize=64)
        return {path: problem for path, problem in zip(paths, found) if problem is not None}


def _fail_if(path: Any, offenders: list, problem: str, describe) -> None:
    if not offenders:
        return
    listed = ", ".join(describe(o) for o in offenders[:_MAX_LISTED])
    more = f", ... ({len(offenders) - _MAX_LISTED} more)" if len(offenders) > _MAX_LISTED else ""
    raise DatasetError(f"{path}: {len(offenders)} {problem}: {listed}{more}")
