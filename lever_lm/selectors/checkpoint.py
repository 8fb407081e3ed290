"""Selector checkpoints (plain tensors + a metadata dict, loadable with ``torch.load(weights_only=True)``),
``load_selector`` and the batched decoding API ``select``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lever_lm.errors import InputError
from lever_lm.io_utils import atomic_path
from lever_lm.selectors.config import VERSIONS
from lever_lm.selectors.data import to_prompt_order
from lever_lm.selectors.features import FeatureChoice, FeatureTable, parse_feature_choice

FORMAT = "lever_lm.selector"
FORMAT_VERSION = 1
REQUIRED_META = (
    "format",
    "format_version",
    "dataset",
    "beam_model",
    "sampler",
    "ex_name",
    "version",
    "lever_lm",
    "construct_order",
    "n_train",
    "feature_dims",
    "model",
    "max_k",
    "beams_params",
)


class CheckpointError(InputError):
    """A selector checkpoint that is unreadable, incomplete, or made for another cell (beam model, sampler, ...)."""


def version_module(version: str) -> Any:
    if version not in VERSIONS:
        raise ValueError(f"version: unknown selector version {version!r} (known: {list(VERSIONS)})")
    return importlib.import_module(f"lever_lm.selectors.{version}")


def build_model(
    version: str, params: Mapping[str, Any], n_train: int, choice: FeatureChoice, dims: Mapping[str, int], max_len: int
) -> Any:
    """The network of ``version`` from its recorded hyper-parameters (``SelectorConfig.model_params``)."""
    from lever_lm.selectors.similarity import build_prior

    module = version_module(version)
    query_dim, icd_dim = choice.query_dim(dict(dims)), choice.icd_dim(dict(dims))
    prior = build_prior(params, choice, dims)
    if version == "v0":
        return module.build_model(dict(params), n_train, query_dim, icd_dim, max_len, prior=prior)
    return module.build_model(dict(params), n_train, query_dim, icd_dim, prior=prior)


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    import torch

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    # through a file object: torch.save(path) names the zip's inner folder after the (random) temp file name, so
    # two saves of the same weights would differ in bytes
    with atomic_path(path, suffix=".ckpt") as tmp, open(tmp, "wb") as handle:
        torch.save({"state_dict": state, "meta": dict(meta)}, handle)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict, meta); anything but a complete selector checkpoint is a ValueError naming the file."""
    import pickle

    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: selector checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, AttributeError) as err:
        from lever_lm.errors import torch_load_reason

        raise CheckpointError(f"{path}: not a readable selector checkpoint ({torch_load_reason(err)})") from None
    if not (isinstance(data, dict) and isinstance(data.get("meta"), dict) and isinstance(data.get("state_dict"), dict)):
        raise CheckpointError(f"{path}: not a selector checkpoint (expected keys 'state_dict' and 'meta')")
    meta = data["meta"]
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a selector checkpoint (meta missing {missing} or format != {FORMAT!r})")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: meta.format_version = {meta['format_version']!r}, this code reads {FORMAT_VERSION}"
        )
    return data["state_dict"], meta


def check_expected(path: str | os.PathLike, meta: Mapping[str, Any], expect: Mapping[str, Any] | None) -> None:
    for key, value in (expect or {}).items():
        if meta.get(key, "<missing>") != value:
            raise CheckpointError(f"{path}: checkpoint {key} = {meta.get(key, '<missing>')!r}, expected {value!r}")


@dataclass
class Selector:
    """A loaded selector: ``model`` (eval mode) plus its checkpoint ``meta``."""

    model: Any
    meta: dict[str, Any]
    path: str

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def needs_pools(self) -> bool:
        return self.version != "v0"

    @property
    def construct_order(self) -> str:
        return self.meta["construct_order"]

    @property
    def feature_choice(self) -> FeatureChoice:
        return parse_feature_choice(self.meta["lever_lm"])

    @property
    def n_train(self) -> int:
        return int(self.meta["n_train"])


def check_features(table: FeatureTable, meta: Mapping[str, Any], what: str, path: Any, n: int | None = None) -> None:
    if table.dims != dict(meta["feature_dims"]):
        raise CheckpointError(
            f"{path}: {what} feature dims {table.dims} differ from the checkpoint's {meta['feature_dims']}"
        )
    if n is not None and len(table) != n:
        raise CheckpointError(f"{path}: {what} has {len(table)} rows but the checkpoint was trained on n_train = {n}")


def load_selector(
    path: str | os.PathLike, train_features: FeatureTable, expect: Mapping[str, str] | None = None, device: str = "cpu"
) -> Selector:
    """Load a checkpoint for decoding. ``train_features``: the selector encoder's train embeddings (the ICDs);
    ``expect``: meta values that must match, e.g. {"beam_model": ..., "version": ...}."""
    import torch

    state, meta = read_checkpoint(path)
    check_expected(path, meta, expect)
    check_features(train_features, meta, "train_features", path, n=int(meta["n_train"]))
    choice = parse_feature_choice(meta["lever_lm"])
    model = build_model(
        meta["version"], meta["model"], int(meta["n_train"]), choice, meta["feature_dims"], int(meta["max_k"])
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit a {meta['version']} model with the recorded params "
            f"({str(err).splitlines()[0]})"
        ) from None
    icd = train_features.matrix(choice.icd)
    if icd is not None:
        model.set_icd_features(torch.from_numpy(icd))
    return Selector(model.to(device).eval(), dict(meta), str(path))


def _check_k(selector: Selector, k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if selector.version == "v0" and k > min(int(selector.meta["max_k"]), selector.n_train):
        raise ValueError(
            f"k = {k} exceeds what {selector.path} can decode "
            f"(max_k {selector.meta['max_k']}, n_train {selector.n_train})"
        )
    return int(k)


def _check_pools(selector: Selector, pools: Any, n_queries: int, k: int) -> list[np.ndarray]:
    if pools is None:
        raise ValueError(f"{selector.version} selects within a pool: pools are required (one per query)")
    if len(pools) != n_queries:
        raise ValueError(f"pools: {len(pools)} pools for {n_queries} queries")
    checked = []
    for i, pool in enumerate(pools):
        ids = np.asarray(pool)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"pools[{i}]: expected a list of train ids")
        if len(ids) < k:
            raise ValueError(f"pools[{i}]: pool of {len(ids)} ids is smaller than k = {k}")
        if ids.size and (ids.min() < 0 or ids.max() >= selector.n_train):
            raise ValueError(f"pools[{i}]: ids outside the train set (0..{selector.n_train - 1})")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"pools[{i}]: repeated ids")
        checked.append(ids.astype(np.int64))
    return checked


def select(
    selector: Selector,
    queries: FeatureTable,
    k: int,
    pools: Sequence[Sequence[int]] | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy selection of k ICDs per query: global train ids in PROMPT order (see ``construct_order``).

    ``queries``: features of the queries (e.g. the val split), same encoder as the train features. v1-v4 pick
    from ``pools[i]`` (distinct members only); v0 decodes over the whole train set and ignores ``pools``.
    """
    import torch

    k = _check_k(selector, k)
    check_features(queries, selector.meta, "queries", selector.path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(queries)
    checked = _check_pools(selector, pools, n, k) if selector.needs_pools else None
    query = queries.matrix(selector.feature_choice.query)
    device = next(selector.model.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad():
        table = selector.model.embedding_table() if checked is None else None  # v0: once, not per batch
        for start in range(0, n, batch_size):
            rows = slice(start, min(n, start + batch_size))
            q = torch.from_numpy(query[rows]).to(device)
            if checked is None:
                picks = selector.model.decode(q, k, table=table)
            else:
                part = checked[rows]
                pool = np.full((len(part), max(len(p) for p in part)), -1, dtype=np.int64)
                for r, ids in enumerate(part):
                    pool[r, : len(ids)] = ids
                pool_t = torch.from_numpy(pool).to(device)
                picks = selector.model.decode(q, k, pool_t, pool_t >= 0)
            out.extend(to_prompt_order(row, selector.construct_order) for row in picks.cpu().tolist())
    return out
