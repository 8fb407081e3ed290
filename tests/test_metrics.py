"""Metric tests; expected values are derived by hand from the rules in docs/stages.md Stage 6."""

from __future__ import annotations

import math
import shutil

import pytest

from lever_lm import metrics
from lever_lm.metrics import cider, mean_score, normalize_vqa_answer, postprocess_vqa, vqa_accuracy

norm = normalize_vqa_answer


def ten(target: str, k: int, filler: tuple[str, ...] = ("zzz", "qqq")) -> list[str]:
    """k copies of target, then fillers (at least two distinct ones, so the answers are never all equal)."""
    return [target] * k + [filler[i % len(filler)] for i in range(10 - k)]


# ------------------------------------------------------------------ post-processing


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes Question: is it red?", "yes"),
        ("cat\nAnswer: dog", "cat"),
        ("blue Short answer: red", "blue"),
        ("x Short y Answer z Question w", "x"),
        ("red, blue, green", "red"),
        ("red, Question: blue", "red"),
        ("a,b", "a,b"),  # only ", " cuts
        ("  two dogs  ", "two dogs"),
        ("question answer short", "question answer short"),  # case-sensitive
        ("Answer: yes", ""),
        ("", ""),
    ],
)
def test_postprocess_vqa(raw, expected):
    assert postprocess_vqa(raw) == expected


# ------------------------------------------------------------------ normalisation rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("two", "2"),
        ("Three", "3"),
        ("none", "0"),
        ("zero", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("two dogs and one cat", "2 dogs and 1 cat"),
        ("twenty", "twenty"),
    ],
)
def test_number_words(text, expected):
    assert norm(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("the red car", "red car"), ("A dog", "dog"), ("an apple", "apple"), ("a an the", ""), ("theater", "theater")],
)
def test_articles(text, expected):
    assert norm(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("t-shirt", "t shirt"),  # inside a word: becomes a space
        ("t - shirt", "t shirt"),  # next to a space: deleted (the spaces then collapse)
        ("t-shirt - x", "tshirt x"),  # one "-" next to a space deletes every "-"
        ("yes/no", "yes no"),
        ("yes / no", "yes no"),
        ("(red)", "red"),
        ("red (dark)", "red dark"),  # " (" deletes "(", ")" has no space next to it: becomes a space
        ("what?!", "what"),
        ("x,y", "x y"),
        ("x, y", "x y"),
        ("a,b", "b"),  # "a" is then an article
        ('say "hi"', "say hi"),
        ("back\\slash", "back slash"),
        ("snake_case@home", "snake case home"),
        ("don't", "don't"),  # the apostrophe is not in the list
        ("", ""),
    ],
)
def test_punctuation(text, expected):
    assert norm(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", "1000"),
        ("1,000 t-shirts", "1000 tshirts"),  # digit-comma-digit anywhere deletes every mark
        ("a1,2b/c", "a12bc"),
        ("1, 000", "1 000"),
        ("1,x", "1 x"),
    ],
)
def test_digit_comma_digit(text, expected):
    assert norm(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2.5", "2.5"),
        ("u.s.", "us"),
        ("mr. smith", "mr smith"),
        ("5.", "5"),
        (".5", ".5"),
        ("1.a", "1a"),
        ("3.14.15", "3.14.15"),
        ("...", ""),
    ],
)
def test_periods(text, expected):
    assert norm(text) == expected


def test_period_removal_stops_after_32():
    # the official code passes re.UNICODE (== 32) as the count argument of sub()
    assert norm("yes" + "." * 32) == "yes"
    assert norm("yes" + "." * 35) == "yes..."
    assert norm("a." * 40) == "a" * 32 + "a." * 8


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dont", "don't"),
        ("cant", "can't"),
        ("Dont", "don't"),  # lowercased first
        ("whats up", "what's up"),
        ("youve", "you've"),
        ("oclock", "o'clock"),
        ("twas", "'twas"),
        ("yall", "y'all"),
        ("y'allll", "y'all'll"),
        ("shouldn'tve", "shouldn't've"),
        ("somebody'd", "somebodyd"),  # quirky key: maps the other way round
        ("Im", "im"),  # capitalised keys never match lowercased words
        ("Ive", "ive"),
        ("let's", "let's"),
        ("i cant do it", "i can't do it"),
        ("can't", "can't"),
    ],
)
def test_contractions(text, expected):
    assert norm(text) == expected


def test_contractions_map_is_the_official_data():
    table = metrics._CONTRACTIONS
    assert len(table) == 120
    assert table["couldn'tve"] == table["couldnt've"] == "couldn't've"
    assert table["yall'll"] == table["y'allll"] == "y'all'll"
    assert table["'ows'at"] == "'ow's'at"
    assert {"Id've", "I'dve", "Im", "Ive"} <= set(table)


@pytest.mark.parametrize(
    "text, expected",
    [("\tyes\n", "yes"), ("red\nblue", "red blue"), ("red\t\tblue", "red blue"), ("  big   dog  ", "big dog")],
)
def test_whitespace(text, expected):
    assert norm(text) == expected


def test_digits_are_ascii_in_official_rules_and_unicode_in_python3_variant():
    # official vqaEval.py is Python 2 without re.UNICODE: only 0-9 are digits
    assert norm("٣,٤") == "٣ ٤"
    assert norm("٣,٤", python3_digits=True) == "٣٤"
    assert norm("٣.٥") == "٣٥"
    assert norm("٣.٥", python3_digits=True) == "٣.٥"


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_annotator_splits(k, expected):
    answers = ten("cat", k) if k < 10 else ["cat"] * 9 + ["cat"]
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)
    assert vqa_accuracy("cat", answers, always_normalize=True) == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_by_position_not_by_value():
    # one annotator says "dog": it sees no other "dog", the 9 others each see one
    assert vqa_accuracy("dog", ["cat"] * 9 + ["dog"]) == pytest.approx(0.3)
    assert vqa_accuracy("dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_identical_answers_are_not_normalised():
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is cleaned either way
    assert vqa_accuracy("Yes", ["yes", " yes", "yes\n"] * 3 + ["\tyes"]) == 0.0  # identical after strip


def test_always_normalize_normalises_identical_answers():
    assert vqa_accuracy("Yes", ["yes"] * 10, always_normalize=True) == 1.0
    assert vqa_accuracy("two", ["2"] * 10, always_normalize=True) == 1.0
    assert vqa_accuracy("the U.S.", ["us"] * 10, always_normalize=True) == 1.0


def test_differing_answers_are_normalised_on_both_sides():
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("yes.", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("Two dogs", ten("2 dogs", 3)) == pytest.approx(0.9)
    assert vqa_accuracy("2 dogs", ["two dogs"] * 2 + ["The 2 Dogs"] + ["cats"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("none", ten("0", 4)) == 1.0
    assert vqa_accuracy("1000", ["1,000"] * 2 + ["many"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("t shirt", ["t-shirt"] + ["shirt"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("tshirt", ["t-shirt"] + ["shirt"] * 9) == 0.0
    assert vqa_accuracy("dont know", ["don't know"] * 4 + ["no"] * 6) == 1.0
    assert vqa_accuracy("Im", ["i'm"] * 4 + ["no"] * 6) == 0.0  # "Im" key never matches


def test_vqa_accuracy_bad_input():
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="single string"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(TypeError, match=r"answers\[2\]"):
        vqa_accuracy("yes", ["a", "b", None])
    with pytest.raises(TypeError, match="prediction"):
        vqa_accuracy(None, ["yes"] * 10)


def test_mean_score():
    assert mean_score([1.0, 0.3, 0.0]) == pytest.approx(100 * 1.3 / 3)
    with pytest.raises(ValueError):
        mean_score([])
    with pytest.raises(ValueError):
        mean_score([0.5, float("nan")])


# ------------------------------------------------------------------ CIDEr

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH (PTB tokenizer)")


def test_cider_without_java_says_so(monkeypatch):
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Java.*default-jre-headless"):
        cider({1: "a cat"}, {1: ["a cat"]})


def test_cider_id_checks():
    with pytest.raises(ValueError, match="no prediction for id 7"):
        cider({1: "a"}, {1: ["a"], 7: ["b"]})
    with pytest.raises(ValueError, match="prediction id 9 has no references"):
        cider({1: "a", 9: "b"}, {1: ["a"]})
    with pytest.raises(ValueError, match="id 1"):
        cider({1: "a"}, {1: []})


@needs_java
def test_cider_hand_computed_values():
    # Every n-gram of these captions occurs in one image's references only, so each has idf log(N)
    # and a caption identical to its single reference has cosine 1 for every n: 10 * mean(1, 1, 1, 1).
    perfect = {1: "red car parked outside", 2: "black dog runs fast", 3: "small bird sings loudly"}
    refs = {key: [caption] for key, caption in perfect.items()}
    assert cider(perfect, refs) == pytest.approx(10.0)
    # an unrelated caption shares no n-gram with its references: that image scores 0
    assert cider({**perfect, 3: "green tree"}, refs) == pytest.approx(20.0 / 3)

    # "green apple" vs "green apple tree" (N = 2, every n-gram weight log 2):
    # unigram cosine 2/sqrt(2*3), bigram cosine 1/sqrt(2), no 3/4-grams in the candidate; the length
    # penalty counts bigrams (1 vs 2): exp(-1/(2*6^2)). "Blue sky." tokenizes to "blue sky": 10 * (1+1)/4.
    got = cider({1: "green apple", 2: "Blue sky."}, {1: ["green apple tree"], 2: ["blue sky"]})
    first = 10 * math.exp(-1 / 72) * (math.sqrt(2 / 3) + 1 / math.sqrt(2)) / 4
    assert got == pytest.approx((first + 5.0) / 2)


@needs_java
def test_cider_line_breaks_do_not_shift_captions():
    refs = {1: ["red car parked outside"], 2: ["black dog runs fast"], 3: ["small bird sings"]}
    plain = {1: "red car parked outside", 2: "black dog runs fast", 3: "small bird sings"}
    broken = {1: "red car\rparked\u2028outside", 2: "black dog\x0cruns fast", 3: "small\u2029bird sings"}
    # two perfect 4-word captions (10 each) and a perfect 3-word one (no 4-grams: 10 * 3/4)
    assert cider(broken, refs) == pytest.approx(cider(plain, refs)) == pytest.approx((10 + 10 + 7.5) / 3)
