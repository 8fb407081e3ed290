"""Stage 5: the selectors ("Lever-LM") v0-v4, their training and their decoding API.

Importing this package is cheap (numpy only): torch, transformers and Lightning are imported when a function
that needs them is called, because rules/common.smk and the config checks import it at plan time.

Public API
- ``VERSIONS``, ``FEATURE_CHOICES`` (the 12 ``query_*_icd_*`` strings), ``FeatureTable(image, text)``.
- ``SelectorConfig.from_config(config["selector"])``, ``TrainIdentity``, ``TrainPaths``.
- ``train(cfg, identity, paths, threads=1) -> metrics``: writes best.ckpt, last.ckpt, metrics.json to
  ``paths.out_dir`` (resumable from ``out_dir/resume``).
- ``load_selector(path, train_features, expect=None) -> Selector`` (``.meta``, ``.needs_pools``).
- ``select(selector, queries, k, pools=None, batch_size=64) -> list[list[int]]``: global train ids, prompt order.
One file per version (v0.py ... v4.py), each the network, its loss and its decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lever_lm.selectors.config import MAX_K, VERSIONS, SelectorConfig, TrainIdentity, TrainPaths
from lever_lm.selectors.features import DEFAULT_FEATURE_CHOICE, FEATURE_CHOICES, FeatureTable, parse_feature_choice

if TYPE_CHECKING:
    from lever_lm.selectors.checkpoint import Selector

__all__ = [
    "VERSIONS",
    "FEATURE_CHOICES",
    "DEFAULT_FEATURE_CHOICE",
    "MAX_K",
    "FeatureTable",
    "SelectorConfig",
    "TrainIdentity",
    "TrainPaths",
    "parse_feature_choice",
    "train",
    "load_selector",
    "select",
]


def train(cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths, threads: int = 1, **kwargs: Any) -> dict:
    from lever_lm.selectors.training import train as _train

    return _train(cfg, identity, paths, threads, **kwargs)


def load_selector(
    path: Any, train_features: FeatureTable, expect: Mapping[str, str] | None = None, device: str = "cpu"
) -> Selector:
    from lever_lm.selectors.checkpoint import load_selector as _load

    return _load(path, train_features, expect, device)


def select(
    selector: Selector,
    queries: FeatureTable,
    k: int,
    pools: Sequence[Sequence[int]] | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    from lever_lm.selectors.checkpoint import select as _select

    return _select(selector, queries, k, pools, batch_size)
