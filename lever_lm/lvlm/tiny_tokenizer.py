"""Word-level tokenizer for the tiny LVLMs, built offline in code with `tokenizers`.

Words are split on whitespace and punctuation, so "Question:red" becomes ["Question", ":", "red"]; decoding
joins tokens with single spaces. The vocabulary is the prompt-template words plus every word of the dataset's
questions and answers, so nothing in the toy data maps to the unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable

UNK_TOKEN = "<unk>"
PAD_TOKEN = "<pad>"
TEMPLATE_WORDS = ("Question", "Short", "answer", ":", "?", ".", ",")


def split_words(text: str) -> list[str]:
    """The pre-tokenisation the tokenizer applies, for collecting a vocabulary from texts."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def _pre_tokenizer():
    from tokenizers import pre_tokenizers

    # each punctuation character is its own word, so ":#" splits into ":" and "#"
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])


def collect_vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted distinct words of ``texts`` plus the prompt-template words."""
    words = set(TEMPLATE_WORDS)
    for text in texts:
        words.update(split_words(text))
    return sorted(words)


def build_word_tokenizer(words: Iterable[str], special_tokens: Iterable[str]):
    """A `tokenizers.Tokenizer`: ids 0.. are the special tokens (in the given order, then pad/unk), then words."""
    from tokenizers import Tokenizer, decoders, models

    vocab: dict[str, int] = {}
    for token in [*special_tokens, PAD_TOKEN, UNK_TOKEN, *words]:
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    specials = [t for t in vocab if t in set(special_tokens) | {PAD_TOKEN, UNK_TOKEN}]
    tokenizer.add_special_tokens(specials)
    return tokenizer
