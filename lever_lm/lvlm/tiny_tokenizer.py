"""Moved to ``lever_lm.toy.tokenizer`` (the toy world's one home); this alias keeps older imports working."""

from lever_lm.toy.tokenizer import (  # noqa: F401
    PAD_TOKEN,
    TEMPLATE_WORDS,
    UNK_TOKEN,
    build_word_tokenizer,
    collect_vocabulary,
    split_words,
)
