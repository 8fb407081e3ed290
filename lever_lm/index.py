"""Stage 2b: exact inner-product search (faiss ``IndexFlatIP``) over L2-normalised embeddings.

Public API
----------
- ``build_flat_ip_index(embeddings) -> faiss.IndexFlatIP``
- ``write_index(path, index)`` (atomic) / ``read_index(path) -> faiss.Index``
- ``search(index, queries, k) -> (scores float32 [nq, k], ids int64 [nq, k])``, best first; on the GPU when the
  faiss GPU build (the ``gpu`` extra: ``LEVER_PLUS_GPU=1 bash scripts/setup.sh``) sees one, else on the CPU.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.errors import InputError
from lever_lm.io_utils import atomic_path

_GPU_RESOURCES: list = []


def _faiss() -> Any:
    """faiss, imported with its loader's INFO lines silenced: it logs every SIMD build it tries, including a
    ``ModuleNotFoundError("No module named 'faiss.swigfaiss_avx512'")`` that users read as an error."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def as_float32_matrix(array: Any, what: str) -> np.ndarray:
    """faiss needs C-contiguous float32 [n, d]; anything else is converted or rejected with a clear error."""
    matrix = np.ascontiguousarray(np.asarray(array), dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d array [n, dim], got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        raise ValueError(f"{what}: non-finite values in rows {bad_rows[:5].tolist()}")
    return matrix


def build_flat_ip_index(embeddings: Any) -> Any:
    faiss = _faiss()

    matrix = as_float32_matrix(embeddings, "index embeddings")
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    return index


def write_index(path: str | os.PathLike, index: Any) -> None:
    faiss = _faiss()

    with atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | os.PathLike) -> Any:
    faiss = _faiss()

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: faiss index file not found")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:  # faiss's message is a multi-line C++ trace
        raise InputError(f"{path}: not a readable faiss index ({str(err).strip().splitlines()[-1][:200]})") from None


def search(index: Any, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product, best first. ``k`` is capped at the index size."""
    matrix = as_float32_matrix(queries, "search queries")
    if matrix.shape[1] != index.d:
        raise ValueError(f"search queries: dim {matrix.shape[1]} != index dim {index.d}")
    if k < 1:
        raise ValueError(f"search: k must be >= 1, got {k}")
    k = min(int(k), int(index.ntotal))
    scores, ids = on_search_device(index).search(matrix, k)
    return scores, ids.astype(np.int64, copy=False)


def on_search_device(index: Any) -> Any:
    """The index on the job's GPU when the faiss GPU build is installed (the ``gpu`` extra) and a GPU is visible,
    else the index itself. Flat inner-product search is exact on both; float rounding may reorder exact ties."""
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    if not _GPU_RESOURCES:  # one per process, kept alive: a GPU index does not own its resources
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index)
