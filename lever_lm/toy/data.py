"""A synthetic VQA dataset in the exact OK-VQA v1.1 file layout, where choosing demonstrations well pays.

Public API
- ``ToyDatasetConfig`` (frozen): seed, train_images, val_images, questions_per_image, image_size, cue_probability.
  The defaults give 1020 train and 204 val questions (3 per image).
- ``generate_toy_okvqa(out_root, cfg)``: writes, deterministically from ``cfg.seed``, under ``out_root``:
  ``OpenEnded_mscoco_{train,val}2014_questions.json``, ``mscoco_{train,val}2014_annotations.json`` (OK-VQA v1.1:
  ``raw_answer`` in each answer, a ``confidence`` field, no ``multiple_choice_answer``) and
  ``{train,val}2014/COCO_{split}2014_{image_id:012d}.jpg``. Everything is written into a temp folder that is
  renamed onto ``out_root`` at the end, so a crash leaves nothing.
- ``toy_vocabulary()``: every token the generator can put in a question or an ``answer`` field (tokens split on
  whitespace with punctuation isolated, as the tiny LVLMs' word-level tokenizer does).
- ``answer_for(value, convention)``, ``code_for(value)``, ``parse_answer(answer)``, ``to_convention(answer,
  convention)``, ``family_of(question, answer)``, ``convention_for_cue(has_cue)``: the answer conventions, for
  LVLM pretraining (which re-assigns the convention per sequence) and for analysis.
- ``Scene``, ``render_scene(scene, image_size)``: the image model.

Images (56x56 by default): a background of one of 3 colours (``BACKGROUND_COLORS``); 1-4 objects of ONE colour
out of 6 (``OBJECT_COLORS``), one per 28x28 quadrant, each a large filled square or disc (14-18 px; shape is
decoration only: tiny models did not learn shape, so it is never asked). Some images carry the CUE: a
magenta frame, 4 px wide, along the border (``CUE_FRAME_RGB``), on a share ``cue_probability`` of each split's images
(exactly, rounded; at random positions).
Objects keep clear of the frame area and of the quadrant borders, so the frame never hides an object.

Question types (``QUESTIONS``; the text is the same whatever the convention):
  background_color  "What color is the background?"  values white / black / gray
  object_color      "What color are the objects?"    values red / green / blue / yellow / orange / purple
  count             "How many objects are there?"    values 1 / 2 / 3 / 4
Conventions, two per question type, giving 6 families (question type x convention):
  word  the value itself: "red", "gray", "3"
  code  the shared marker "#" plus a letter fixed per value (``CODE_LETTERS``): "# e". The letter "a" is never
        used: VQA evaluation drops the article "a", which would reduce "# a" to "#".
The convention of every question on an image is a function of the visible cue: frame -> code, none -> word.
Image similarity can therefore find demonstrations of the query's convention; question-text similarity cannot.

Annotators: each question gets 10 answers; 0-4 annotators (at random positions) deviate from the canonical answer
with a synonym ("grey"), a number word ("three"), the other convention ("red" for "# e"), or a neighbouring
value. At least 6 of 10 give the canonical answer, so the label (most frequent answer) is always canonical.
``raw_answer`` sometimes differs from ``answer`` in case or punctuation ("Red.", "#E"), as in OK-VQA.
``question_type`` holds the family as "{question type}/{convention}"; readers ignore it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lever_lm.io_utils import atomic_dir, write_json

SPLITS = ("train", "val")
CONVENTIONS = ("word", "code")
CODE_MARKER = "#"
QUESTIONS = {
    "background_color": "What color is the background?",
    "object_color": "What color are the objects?",
    "count": "How many objects are there?",
}
BACKGROUND_COLORS = {"white": (235, 235, 235), "black": (20, 20, 20), "gray": (128, 128, 128)}
OBJECT_COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 170),
}
CUE_FRAME_RGB = (255, 0, 255)
COUNTS = ("1", "2", "3", "4")
VALUES = {"background_color": tuple(BACKGROUND_COLORS), "object_color": tuple(OBJECT_COLORS), "count": COUNTS}
_ALL_VALUES = [value for values in VALUES.values() for value in values]
# no "a" (an article the VQA metric deletes); no "i"/"l"/"o" (look like digits)
CODE_LETTERS = dict(zip(_ALL_VALUES, "bcdefghjkmnpqrstuvwxyz"))
_VALUE_OF_LETTER = {letter: value for value, letter in CODE_LETTERS.items()}

SYNONYMS = {
    "white": "cream", "black": "dark", "gray": "grey",
    "red": "maroon", "green": "lime", "blue": "navy", "yellow": "gold", "orange": "amber", "purple": "violet",
    "1": "one", "2": "two", "3": "three", "4": "four",
}  # fmt: skip
NEIGHBOURS = {
    "white": ("gray",), "black": ("gray",), "gray": ("white", "black"),
    "red": ("orange", "purple"), "orange": ("red", "yellow"), "yellow": ("orange", "green"),
    "green": ("yellow", "blue"), "blue": ("green", "purple"), "purple": ("blue", "red"),
    "1": ("2",), "2": ("1", "3"), "3": ("2", "4"), "4": ("3",),
}  # fmt: skip
_DEVIATING_ANNOTATORS_P = (0.30, 0.30, 0.20, 0.12, 0.08)  # P(0..4 of 10 annotators deviate)
ANSWERS_PER_QUESTION = 10


@dataclass(frozen=True)
class ToyDatasetConfig:
    seed: int = 0
    train_images: int = 340
    val_images: int = 68
    questions_per_image: int = 3
    image_size: int = 56
    cue_probability: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if self.train_images < 1 or self.val_images < 1:
            problems.append("train_images and val_images must be >= 1")
        if not 1 <= self.questions_per_image <= len(QUESTIONS):
            problems.append(f"questions_per_image must be in 1..{len(QUESTIONS)}, got {self.questions_per_image}")
        if self.image_size < 40 or self.image_size % 2:
            problems.append(f"image_size must be an even number >= 40, got {self.image_size}")
        if not 0.0 <= self.cue_probability <= 1.0:
            problems.append(f"cue_probability must be in [0, 1], got {self.cue_probability}")
        if self.train_images + self.val_images > 99_999:
            problems.append("train_images + val_images must stay below 100000")
        if problems:
            raise ValueError("ToyDatasetConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class Scene:
    """What one image shows. ``quadrants``: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""

    background: str
    object_color: str
    quadrants: tuple[int, ...]
    shapes: tuple[str, ...]  # "square" or "disc", one per quadrant
    offsets: tuple[tuple[float, float, float], ...]  # per object: x, y in [0, 1] of the free range, size in [0, 1]
    has_cue: bool

    def value_of(self, question_type: str) -> str:
        if question_type == "background_color":
            return self.background
        if question_type == "object_color":
            return self.object_color
        if question_type == "count":
            return str(len(self.quadrants))
        raise ValueError(f"unknown question type {question_type!r}")


# ------------------------------------------------------------------------------------- conventions


def convention_for_cue(has_cue: bool) -> str:
    return "code" if has_cue else "word"


def code_for(value: str) -> str:
    """The code answer of a value: the shared marker plus the value's letter, e.g. "# e"."""
    if value not in CODE_LETTERS:
        raise ValueError(f"unknown toy value {value!r}")
    return f"{CODE_MARKER} {CODE_LETTERS[value]}"


def answer_for(value: str, convention: str) -> str:
    """Canonical answer of ``value`` under ``convention`` ("word" or "code")."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}, expected one of {CONVENTIONS}")
    if value not in CODE_LETTERS:
        raise ValueError(f"unknown toy value {value!r}")
    return code_for(value) if convention == "code" else value


def parse_answer(answer: str) -> tuple[str, str]:
    """(value, convention) of a canonical answer; ValueError for anything else (synonyms included)."""
    text = answer.strip()
    if text.startswith(CODE_MARKER):
        letter = text[len(CODE_MARKER) :].strip()
        if letter in _VALUE_OF_LETTER:
            return _VALUE_OF_LETTER[letter], "code"
    elif text in CODE_LETTERS:
        return text, "word"
    raise ValueError(f"{answer!r} is not a canonical toy answer")


def to_convention(answer: str, convention: str) -> str:
    """The same value in the other (or same) convention: to_convention("red", "code") == code_for("red")."""
    value, _ = parse_answer(answer)
    return answer_for(value, convention)


def family_of(question: str, answer: str) -> tuple[str, str]:
    """(question type, convention) of a record, from its question text and canonical label."""
    question_type = _QUESTION_TYPE_OF_TEXT.get(question.strip())
    if question_type is None:
        raise ValueError(f"{question!r} is not a toy question")
    value, convention = parse_answer(answer)
    if value not in VALUES[question_type]:
        raise ValueError(f"answer {answer!r} does not answer {question!r}")
    return question_type, convention


_QUESTION_TYPE_OF_TEXT = {text: question_type for question_type, text in QUESTIONS.items()}


def _tokens(text: str) -> list[str]:
    # whitespace split with each punctuation character its own token (the tiny tokenizer's pre-tokenisation)
    return re.findall(r"\w+|[^\w\s]", text)


def toy_vocabulary() -> list[str]:
    """Sorted tokens of every question text and every ``answer`` the generator can write."""
    texts = list(QUESTIONS.values())
    for value in CODE_LETTERS:
        texts += [answer_for(value, c) for c in CONVENTIONS] + [SYNONYMS[value]]
        texts += [answer_for(n, c) for n in NEIGHBOURS[value] for c in CONVENTIONS]
    return sorted({token for text in texts for token in _tokens(text)})


# ----------------------------------------------------------------------------------------- images


def _geometry(image_size: int) -> dict[str, int]:
    scale = image_size / 56
    return {
        "half": image_size // 2,
        "frame": max(2, round(4 * scale)),
        "inner_margin": max(1, round(2 * scale)),
        "min_side": round(14 * scale),
        "max_side": round(18 * scale),
    }


def object_box(quadrant: int, offset: tuple[float, float, float], image_size: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), inclusive, of an object: clear of the frame area and the quadrant borders."""
    g = _geometry(image_size)
    side = g["min_side"] + round(offset[2] * (g["max_side"] - g["min_side"]))
    starts = []
    for axis, fraction in ((quadrant % 2, offset[0]), (quadrant // 2, offset[1])):
        low = g["frame"] + 1 if axis == 0 else g["half"] + g["inner_margin"]
        high = (g["half"] - g["inner_margin"] if axis == 0 else image_size - g["frame"] - 1) - side
        starts.append(low + round(fraction * (high - low)))
    return starts[0], starts[1], starts[0] + side - 1, starts[1] + side - 1


def render_scene(scene: Scene, image_size: int):
    """The scene as an RGB PIL image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size), BACKGROUND_COLORS[scene.background])
    draw = ImageDraw.Draw(image)
    if scene.has_cue:
        frame = _geometry(image_size)["frame"]
        draw.rectangle([0, 0, image_size - 1, image_size - 1], outline=CUE_FRAME_RGB, width=frame)
    color = OBJECT_COLORS[scene.object_color]
    for quadrant, shape, offset in zip(scene.quadrants, scene.shapes, scene.offsets):
        box = object_box(quadrant, offset, image_size)
        if shape == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.ellipse(box, fill=color)
    return image


def _random_scene(rng: np.random.Generator, has_cue: bool) -> Scene:
    count = int(rng.integers(1, 5))
    quadrants = tuple(sorted(int(q) for q in rng.choice(4, size=count, replace=False)))
    return Scene(
        background=str(rng.choice(VALUES["background_color"])),
        object_color=str(rng.choice(VALUES["object_color"])),
        quadrants=quadrants,
        shapes=tuple(str(s) for s in rng.choice(["square", "disc"], size=count)),
        offsets=tuple(tuple(float(v) for v in rng.random(3)) for _ in range(count)),
        has_cue=has_cue,
    )


# ---------------------------------------------------------------------------------------- answers


def _deviating_answer(rng: np.random.Generator, value: str, convention: str) -> str:
    if convention == "word":
        options = [SYNONYMS[value], *NEIGHBOURS[value]]
    else:
        options = [answer_for(value, "word"), *(code_for(n) for n in NEIGHBOURS[value])]
    return str(options[int(rng.integers(len(options)))])


def _raw_form(rng: np.random.Generator, answer: str) -> str:
    """How an annotator typed it: mostly as is, sometimes capitalised, with a full stop, or a glued code."""
    pick = rng.random()
    if pick < 0.7:
        return answer
    if answer.startswith(CODE_MARKER):
        glued = answer.replace(" ", "")
        return [glued, answer.upper(), glued.upper()][int(rng.integers(3))]
    return [answer.capitalize(), answer + ".", answer.upper()][int(rng.integers(3))]


def _annotator_answers(rng: np.random.Generator, canonical_value: str, convention: str) -> list[dict]:
    canonical = answer_for(canonical_value, convention)
    deviating = int(rng.choice(len(_DEVIATING_ANNOTATORS_P), p=_DEVIATING_ANNOTATORS_P))
    deviating_positions = set(int(p) for p in rng.choice(ANSWERS_PER_QUESTION, size=deviating, replace=False))
    answers = []
    for position in range(ANSWERS_PER_QUESTION):
        answer = _deviating_answer(rng, canonical_value, convention) if position in deviating_positions else canonical
        answers.append(
            {
                "answer_id": position + 1,
                "raw_answer": _raw_form(rng, answer),
                "answer_confidence": "yes",
                "answer": answer,
            }
        )
    return answers


# ------------------------------------------------------------------------------------- generation


def _split_files(split: str) -> dict[str, str]:
    return {
        "questions": f"OpenEnded_mscoco_{split}2014_questions.json",
        "annotations": f"mscoco_{split}2014_annotations.json",
        "image_dir": f"{split}2014",
    }


def _write_split(
    root: Path, split: str, image_ids: np.ndarray, rng: np.random.Generator, cfg: ToyDatasetConfig
) -> None:
    files = _split_files(split)
    image_dir = root / files["image_dir"]
    image_dir.mkdir()
    questions, annotations = [], []
    # exactly round(cue_probability * n) images of the split carry the cue (not a coin per image: with 68 val images
    # a coin's share of code answers strays by +-6 points), at random positions
    cued = rng.permutation(len(image_ids)) < round(cfg.cue_probability * len(image_ids))
    for image_id, has_cue in zip((int(i) for i in image_ids), cued):
        scene = _random_scene(rng, bool(has_cue))
        render_scene(scene, cfg.image_size).save(
            image_dir / f"COCO_{split}2014_{image_id:012d}.jpg", quality=95, subsampling=0
        )
        convention = convention_for_cue(scene.has_cue)
        asked = rng.choice(list(QUESTIONS), size=cfg.questions_per_image, replace=False)
        for k, question_type in enumerate(str(t) for t in asked):
            question_id = image_id * 10 + k  # OK-VQA style ids
            questions.append({"image_id": image_id, "question": QUESTIONS[question_type], "question_id": question_id})
            annotations.append(
                {
                    "image_id": image_id,
                    "question_type": f"{question_type}/{convention}",
                    "answer_type": "number" if question_type == "count" else "other",
                    "question_id": question_id,
                    "confidence": int(rng.integers(3, 6)),
                    "answers": _annotator_answers(rng, scene.value_of(question_type), convention),
                }
            )
    info = {"description": "Lever-Plus toy VQA (synthetic, OK-VQA v1.1 layout)", "version": "1.1", "year": 2014,
            "seed": cfg.seed}  # fmt: skip
    license_ = {"name": "synthetic data, no license restrictions", "url": ""}
    header = {"info": info, "license": license_, "data_subtype": f"{split}2014"}
    write_json(
        root / files["questions"],
        {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions},
        indent=None,
    )
    write_json(root / files["annotations"], {**header, "data_type": "mscoco", "annotations": annotations}, indent=None)


def generate_toy_okvqa(out_root: str | os.PathLike, cfg: ToyDatasetConfig) -> None:
    """Write the toy dataset under ``out_root`` (which must not exist, or be an empty folder)."""
    out_root = Path(out_root)
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise FileExistsError(f"{out_root}: toy dataset output exists and is not an empty folder")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(cfg.seed).spawn(1 + len(SPLITS))
    # image ids drawn jointly so train and val never share one; COCO 2014 ids go up to ~581k
    n_images = {"train": cfg.train_images, "val": cfg.val_images}
    ids = np.random.default_rng(seeds[0]).choice(np.arange(9, 581_930), size=sum(n_images.values()), replace=False)
    split_ids = {"train": ids[: cfg.train_images], "val": ids[cfg.train_images :]}

    with atomic_dir(out_root) as staging:
        for split, seed in zip(SPLITS, seeds[1:]):
            _write_split(staging, split, split_ids[split], np.random.default_rng(seed), cfg)
