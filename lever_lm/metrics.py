"""Evaluation metrics: VQA post-processing, VQA accuracy (official rules) and corpus CIDEr.

VQA post-processing (``postprocess_vqa``): cut a raw generation at the first "Question", "Answer" or
"Short", then at the first ", ", then strip.

VQA accuracy (``vqa_accuracy``) reproduces GT-Vision-Lab ``vqaEval.py`` (current version) for one question:

1. prediction and answers: newlines and tabs become spaces, then strip;
2. only if the stripped answers are not all identical, both sides are normalised (3 then 4); otherwise
   they are compared as they are (no lowercasing: "Yes" scores 0 against ten "yes");
3. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when the original text
   has it next to a space or contains digit-comma-digit anywhere, else it becomes a space; then a "."
   not followed by a digit is removed (at most 32 of them: the official code passes ``re.UNICODE``,
   which is 32, as the ``count`` argument of ``sub``). The official code is Python 2 without the
   UNICODE flag, so its digits are ASCII 0-9;
4. lowercase, split on whitespace, number words none/zero..ten become digits, drop a/an/the, apply the
   official contractions map (keys as written, so "Im"-style keys never match lowercased text), join
   with single spaces;
5. accuracy = mean over annotators i of min(1, #(other answers equal to the prediction) / 3), i.e.
   0, .3, .6, .9, 1 for 0, 1, 2, 3, >= 4 equal answers among 10.

``always_normalize=True`` is the OpenFlamingo / upstream Lever-LM variant: steps 3-4 always run on both
sides (Python 3 regexes there, so any Unicode decimal digit counts as a digit).

CIDEr (``cider``) is pycocoevalcap's CIDEr-D (n=4, sigma=6) over the whole corpus, after its PTB
tokenizer (Java). Note that with a single image every idf weight is 0, so the score is 0.
Scores here are in [0, 1] (CIDEr: unbounded, x1); reporting x100 is the caller's job (``mean_score``).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["postprocess_vqa", "vqa_accuracy", "normalize_vqa_answer", "cider", "mean_score", "JAVA_HINT"]

# ------------------------------------------------------------------------------------ post-processing

_VQA_STOP_WORDS = re.compile("Question|Answer|Short")


def postprocess_vqa(text: str) -> str:
    """Cut at the first "Question"/"Answer"/"Short", then at the first ", ", then strip."""
    if not isinstance(text, str):
        raise TypeError(f"postprocess_vqa: expected str, got {type(text).__name__}")
    head = _VQA_STOP_WORDS.split(text, maxsplit=1)[0]
    return head.split(", ", 1)[0].strip()


# ------------------------------------------------------------------------------------ VQA accuracy

_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# The official map's data (120 entries), keys exactly as written there, quirks included
# ("somebody'd" -> "somebodyd", capitalised keys that never match lowercased words, identities).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
# The official sub() gets re.UNICODE (== 32) as its count argument.
_PERIOD_LIMIT = 32


@dataclass(frozen=True)
class _DigitRules:
    comma_between_digits: re.Pattern
    period_not_before_digit: re.Pattern  # the official "(?!<=\d)" prefix is a vacuous lookahead before "."


_OFFICIAL = _DigitRules(re.compile(r"\d,\d", re.ASCII), re.compile(r"\.(?!\d)", re.ASCII))  # Python 2 semantics
_PYTHON3 = _DigitRules(re.compile(r"\d,\d"), re.compile(r"\.(?!\d)"))  # OpenFlamingo / Lever-LM copies


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str, rules: _DigitRules) -> str:
    delete_all = rules.comma_between_digits.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # the condition looks at the original text, the replacement acts on the running output
        if delete_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return rules.period_not_before_digit.sub("", out, count=_PERIOD_LIMIT)


def _process_digit_article(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(text: str, python3_digits: bool = False) -> str:
    """Steps 1, 3 and 4 (whitespace, punctuation, digits/articles/contractions) on one string."""
    rules = _PYTHON3 if python3_digits else _OFFICIAL
    return _process_digit_article(_process_punctuation(_clean_whitespace(text), rules))


def vqa_accuracy(prediction: str, answers: Sequence[str], always_normalize: bool = False) -> float:
    """Accuracy in [0, 1] of one prediction against one question's annotator answers (10 in VQA/OK-VQA)."""
    if not isinstance(prediction, str):
        raise TypeError(f"vqa_accuracy: prediction must be str, got {type(prediction).__name__}")
    if isinstance(answers, (str, bytes)):
        raise TypeError("vqa_accuracy: answers must be a list of str, got a single string")
    answers = list(answers)
    if not answers:
        raise ValueError("vqa_accuracy: answers is empty")
    for position, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise TypeError(f"vqa_accuracy: answers[{position}] must be str, got {type(answer).__name__}")

    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(answer) for answer in answers]
    if always_normalize or len(set(gts)) > 1:
        rules = _PYTHON3 if always_normalize else _OFFICIAL
        pred = _process_digit_article(_process_punctuation(pred, rules))
        gts = [_process_digit_article(_process_punctuation(answer, rules)) for answer in gts]

    matches = sum(answer == pred for answer in gts)
    total = 0.0
    for answer in gts:
        others = matches - (answer == pred)  # leave annotator i out
        total += min(1, float(others) / 3)
    return total / len(gts)


def mean_score(scores: Iterable[float]) -> float:
    """Mean of per-question scores in [0, 1], times 100 (unrounded); ValueError when empty or NaN."""
    values = [float(score) for score in scores]
    if not values:
        raise ValueError("mean_score: no scores")
    if any(math.isnan(value) for value in values):
        raise ValueError("mean_score: a score is NaN")
    return 100.0 * sum(values) / len(values)


# ------------------------------------------------------------------------------------ CIDEr

JAVA_HINT = (
    "CIDEr needs Java for pycocoevalcap's PTB tokenizer, and `java` is not on PATH; install a Java runtime "
    "(Debian/Ubuntu: `apt-get install default-jre-headless`, conda: `conda install openjdk`) and retry"
)
# Line breaks the Java tokenizer honours besides "\n" (pycocoevalcap only replaces "\n"); left in, one
# caption becomes two lines and every later caption is paired with the wrong image.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_HINT)


def cider(predictions: Mapping[int, str], references: Mapping[int, list[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap, PTB-tokenized) of one caption per id against its references (x1)."""
    if not references:
        raise ValueError("cider: no references")
    missing = [key for key in references if key not in predictions]
    if missing:
        raise ValueError(f"cider: no prediction for id {missing[0]!r} ({len(missing)} missing)")
    extra = [key for key in predictions if key not in references]
    if extra:
        raise ValueError(f"cider: prediction id {extra[0]!r} has no references ({len(extra)} such ids)")
    gts: dict = {}
    res: dict = {}
    for key, refs in references.items():
        prediction = predictions[key]
        if not isinstance(prediction, str):
            raise TypeError(f"cider: prediction for id {key!r} must be str, got {type(prediction).__name__}")
        if isinstance(refs, (str, bytes)) or len(refs) == 0:
            raise ValueError(f"cider: references for id {key!r} must be a non-empty list of str")
        if not all(isinstance(ref, str) for ref in refs):
            raise TypeError(f"cider: references for id {key!r} must all be str")
        gts[key] = [{"caption": _LINE_BREAKS.sub(" ", ref)} for ref in refs]
        res[key] = [{"caption": _LINE_BREAKS.sub(" ", prediction)}]

    _require_java()
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts_tok = tokenizer.tokenize(gts)
    res_tok = tokenizer.tokenize(res)
    for key in references:  # a failed java run yields too few lines: say so instead of a bare KeyError
        if len(gts_tok.get(key, ())) != len(gts[key]) or len(res_tok.get(key, ())) != 1:
            raise RuntimeError(f"cider: PTB tokenizer (java) returned too few lines; first short id {key!r}")
    score, _ = Cider().compute_score(gts_tok, res_tok)
    return float(score)
