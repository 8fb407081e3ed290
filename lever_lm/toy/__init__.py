"""The toy world of the embedded default: a small experiment where choosing demonstrations pays.

- ``lever_lm.toy.data``: the generated VQA dataset (OK-VQA v1.1 files), two answer conventions (``red`` / ``# e``)
  under the same question text, tied to a visible cue (a magenta frame) on a configured share of the images.
- ``lever_lm.toy.tokenizer``: the word-level tokenizer of the tiny LVLMs.
- ``lever_lm.toy.lvlm``: tiny Qwen2.5-VL and OpenFlamingo of the real architectures, written in the real local
  layouts (``save_pretrained`` dir; open_flamingo checkpoint layout) that the adapters' local loaders read.
- ``lever_lm.toy.pretrain``: pretraining of a tiny LVLM on the toy train split (rule ``tiny_lvlm``), so that it
  takes the answer convention from its demonstrations.
- ``lever_lm.toy.clip``: the tiny CLIP (random init; its features already separate the cue).
- ``lever_lm.toy.evaluate``: checks that demonstrations matter (accuracy by demonstration choice, InfoScore sanity,
  cue agreement of the samplers); ``benchmarks/bench_toy.py`` runs them.

Nothing here imports torch at module import time (``rules/common.smk`` imports lever_lm modules at plan time).
"""
