"""ICD choosers for ICL inference (docs/stages.md stage 6): the baselines and the trained selectors behind one
interface.

Every chooser has ``choose(query_rows, k) -> list[list[int]]``: for each query (a row of the val split, i.e. its
record ``idx``) ``k`` distinct train ICD ids in PROMPT order, left to right; the most relevant ICD is the last one,
next to the query.

- ``RandomRetriever(n_train, seed)``: uniform random ICDs from the whole train set; reproducible per
  (seed, query row, k), whatever the batching or order of the calls.
- ``SimilarityRetriever(mode, query_image, query_text, train_image, train_text)``: RICES-style, the top-k train
  records by inner product of L2-normalised embeddings (``i2i``: query image vs ICD image, ``t2t``: question text vs
  ICD question text, ``i2t``: query image vs ICD text); exact search, ties broken by the smaller train id.
- ``SelectorRetriever(selector, queries, pools)``: a trained Lever-LM selector (``lever_lm.selectors.select``),
  v1-v4 within each query's test pool.
- ``ZeroShotRetriever()``: no ICDs; ``k`` must be 0.

``make_baseline_retriever(name, ...)`` builds the chooser of a baseline name of ``lever_lm.inference.BASELINES``.
Pure numpy; a selector brings torch along only when it is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from lever_lm.selectors import FeatureTable

SIMILARITY_MODES = ("i2i", "t2t", "i2t")
_SEARCH_BLOCK = 1024  # query rows per similarity block (keeps the score matrix small)


class Retriever(Protocol):
    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        """``k`` distinct train ids per query row, in prompt order (most relevant last)."""


def _check_k(k: Any, low: int = 1, high: int | None = None, what: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {k!r}")
    if k < low or (high is not None and k > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} = {k} must be {bound}")
    return int(k)


def _rows(query_rows: Sequence[int], n_queries: int | None) -> np.ndarray:
    rows = np.asarray(query_rows, dtype=np.int64).reshape(-1)
    bad = rows[(rows < 0) | (rows >= n_queries)] if n_queries is not None else rows[rows < 0]
    if bad.size:
        raise ValueError(f"query row {int(bad[0])} is outside the val queries (0..{(n_queries or 0) - 1})")
    return rows


def _normalised(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{name}: row {int(zero[0])} is all zeros (cannot normalise)")
    return np.ascontiguousarray(array / norms)


class RandomRetriever:
    """Random distinct ICDs from the whole train set (upstream RandomRetriever), with a fixed seed."""

    def __init__(self, n_train: int, seed: int = 0):
        self.n_train = _check_k(n_train, 1, what="n_train")
        self.seed = _check_k(seed, 0, what="seed")

    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        k = _check_k(k, 1, self.n_train)
        # one generator per (seed, query, k): the same ICDs whatever the batching or call order
        return [
            np.random.default_rng([self.seed, int(row), k]).choice(self.n_train, k, replace=False).tolist()
            for row in _rows(query_rows, None)
        ]


class SimilarityRetriever:
    """RICES-style retrieval over the selector encoder's embeddings; the most similar ICD is nearest the query."""

    def __init__(
        self,
        mode: str,
        query_image: np.ndarray,
        query_text: np.ndarray,
        train_image: np.ndarray,
        train_text: np.ndarray,
    ):
        if mode not in SIMILARITY_MODES:
            raise ValueError(f"similarity mode {mode!r} is not one of {list(SIMILARITY_MODES)}")
        self.mode = mode
        query, keys = {
            "i2i": ((query_image, "query image"), (train_image, "train image")),
            "t2t": ((query_text, "query text"), (train_text, "train text")),
            "i2t": ((query_image, "query image"), (train_text, "train text")),
        }[mode]
        self.queries = _normalised(*query)
        self.keys = _normalised(*keys)
        if self.queries.shape[1] != self.keys.shape[1]:
            raise ValueError(
                f"SimRetriever-{mode}: {query[1]} embeddings are {self.queries.shape[1]}-d but "
                f"{keys[1]} embeddings are {self.keys.shape[1]}-d (one encoder's shared space needed)"
            )

    def ranked(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        """Top-k train ids per query, most similar FIRST (ties: smaller id first)."""
        k = _check_k(k, 1, len(self.keys))
        rows = _rows(query_rows, len(self.queries))
        out: list[list[int]] = []
        for start in range(0, len(rows), _SEARCH_BLOCK):
            scores = self.queries[rows[start : start + _SEARCH_BLOCK]] @ self.keys.T  # (b, n_train)
            if k < scores.shape[1]:
                # every id scoring at least the k-th best score, so ties at the boundary resolve by id below
                kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
            else:
                kth = np.full((len(scores), 1), -np.inf, dtype=scores.dtype)
            for row_scores, bound in zip(scores, kth):
                candidates = np.flatnonzero(row_scores >= bound[0])
                order = np.lexsort((candidates, -row_scores[candidates]))  # score desc, then id asc
                out.append(candidates[order[:k]].tolist())
        return out

    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        return [ids[::-1] for ids in self.ranked(query_rows, k)]  # prompt order: most similar last


class SelectorRetriever:
    """A trained selector: ``select(selector, queries[rows], k, pools[rows])`` (prompt order from the selector)."""

    def __init__(
        self,
        selector: Any,
        queries: FeatureTable,
        pools: Mapping[int, Sequence[int]] | None = None,
        pool_source: str = "test pool",
        batch_size: int = 64,
    ):
        self.selector = selector
        self.queries = queries
        self.pools = pools
        self.pool_source = pool_source
        self.batch_size = batch_size
        if getattr(selector, "needs_pools", True) and pools is None:
            raise ValueError(
                f"selector {getattr(selector, 'path', selector)}: "
                f"{getattr(selector, 'version', '?')} selects within a test pool, none given"
            )

    def check(self, query_rows: Sequence[int], k: int) -> None:
        """Shot ``k`` is decodable for every query: k >= 1 and, with pools, no larger than each query's pool."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"inference.shots: shot {k!r} is not valid for a selector cell (shots must be >= 1)")
        if not getattr(self.selector, "needs_pools", True):  # v0 decodes over the train set, up to its max_k
            meta = getattr(self.selector, "meta", {})
            limit = min(int(meta.get("max_k", k)), int(meta.get("n_train", k)))
            if k > limit:
                where = getattr(self.selector, "path", "the selector")
                raise ValueError(
                    f"inference.shots: shot {k} exceeds what {where} can decode "
                    f"(max_k {meta.get('max_k')}, n_train {meta.get('n_train')})"
                )
            return
        for row in _rows(query_rows, len(self.queries)):
            pool = self.pools.get(int(row))
            if pool is None:
                raise ValueError(f"{self.pool_source}: no test pool for val query idx {int(row)}")
            if k > len(pool):
                raise ValueError(
                    f"inference.shots: shot {k} is larger than the test pool of val query idx {int(row)} "
                    f"({len(pool)} ICDs in {self.pool_source})"
                )

    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        from lever_lm.selectors import FeatureTable, select

        self.check(query_rows, k)
        rows = _rows(query_rows, len(self.queries))
        table = FeatureTable(self.queries.image[rows], self.queries.text[rows])
        pools = [list(self.pools[int(r)]) for r in rows] if getattr(self.selector, "needs_pools", True) else None
        return [[int(i) for i in ids] for ids in select(self.selector, table, k, pools, batch_size=self.batch_size)]


class ZeroShotRetriever:
    """No demonstrations: the query alone."""

    def choose(self, query_rows: Sequence[int], k: int) -> list[list[int]]:
        if k != 0:
            raise ValueError(f"ZeroShot takes no ICDs: shot must be 0, got {k!r}")
        return [[] for _ in _rows(query_rows, None)]


def make_baseline_retriever(
    name: str, n_train: int, seed: int = 0, queries: FeatureTable | None = None, train: FeatureTable | None = None
) -> Retriever:
    """The chooser of baseline ``name`` (``RandomRetriever``, ``ZeroShot``, ``SimRetriever-{i2i,t2t,i2t}``)."""
    if name == "RandomRetriever":
        return RandomRetriever(n_train, seed)
    if name == "ZeroShot":
        return ZeroShotRetriever()
    if name.startswith("SimRetriever-"):
        mode = name.removeprefix("SimRetriever-")
        if queries is None or train is None:
            raise ValueError(f"{name}: needs the query and train embeddings")
        return SimilarityRetriever(mode, queries.image, queries.text, train.image, train.text)
    raise ValueError(f"unknown baseline {name!r}")
