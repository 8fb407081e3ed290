"""The toy world of the embedded default: a small experiment where choosing demonstrations pays.

- ``lever_lm.toy.data``: the generated VQA dataset (OK-VQA v1.1 files), two answer conventions (``red`` / ``# e``)
  under the same question text, tied to a visible cue (a magenta frame) on a configured share of the images.
- ``lever_lm.toy.pretrain``: pretraining of a tiny LVLM on the toy train split (rule ``tiny_lvlm``), so that it
  takes the answer convention from its demonstrations.
- ``lever_lm.toy.evaluate``: checks that demonstrations matter (accuracy by demonstration choice, InfoScore sanity,
  cue agreement of the samplers); ``benchmarks/bench_toy.py`` runs them.

The toy is a leaf: it imports the library, the library never imports it (``tests/test_import_direction.py``). The
tiny models it trains and evaluates are the library's: ``lever_lm.lvlm.tiny`` (tiny Qwen2.5-VL and OpenFlamingo of
the real architectures, written in the real local layouts that the adapters' local loaders read; their sizes and
``PretrainConfig``), ``lever_lm.lvlm.tiny_tokenizer`` (their word-level tokenizer) and ``lever_lm.tiny_clip`` (the
tiny CLIP; random init, its features already separate the cue).

Nothing here imports torch at module import time (``rules/common.smk`` imports lever_lm modules at plan time).
"""
