"""faiss IndexFlatIP search equals a brute-force numpy inner-product top-k."""

from __future__ import annotations

import numpy as np
import pytest

from lever_lm.index import build_flat_ip_index, read_index, search, write_index


def _normalised(rng, n, dim):
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _brute_force(database, queries, k):
    scores = queries.astype(np.float64) @ database.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def test_search_equals_brute_force_and_survives_a_file_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    database, queries = _normalised(rng, 500, 48), _normalised(rng, 37, 48)
    index = build_flat_ip_index(database)
    scores, ids = search(index, queries, 20)
    expected_scores, expected_ids = _brute_force(database, queries, 20)
    assert ids.dtype == np.int64 and scores.shape == (37, 20)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    # Ids must match wherever the brute-force scores are not tied to float precision.
    gaps = np.abs(np.diff(expected_scores, axis=1))
    untied = np.ones_like(ids, dtype=bool)
    untied[:, :-1] &= gaps > 1e-5
    untied[:, 1:] &= gaps > 1e-5
    assert untied.mean() > 0.9
    assert np.array_equal(ids[untied], expected_ids[untied])

    path = tmp_path / "sub" / "train.image.faiss"
    write_index(path, index)
    reloaded_scores, reloaded_ids = search(read_index(path), queries, 20)
    assert np.array_equal(reloaded_ids, ids) and np.array_equal(reloaded_scores, scores)


def test_k_is_capped_and_bad_input_is_named():
    rng = np.random.default_rng(1)
    index = build_flat_ip_index(_normalised(rng, 5, 8).astype(np.float64))  # converted to float32
    scores, ids = search(index, _normalised(rng, 2, 8), 50)
    assert ids.shape == (2, 5) and sorted(ids[0].tolist()) == list(range(5))
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    with pytest.raises(ValueError, match="dim 4 != index dim 8"):
        search(index, np.zeros((1, 4), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="non-finite values in rows \\[1\\]"):
        build_flat_ip_index(np.array([[1.0, 0.0], [np.nan, 0.0]]))
    with pytest.raises(FileNotFoundError, match="missing.faiss"):
        read_index("missing.faiss")


def test_search_runs_on_the_gpu_only_when_the_faiss_gpu_build_sees_one(monkeypatch):
    from lever_lm import index as index_module

    rng = np.random.default_rng(1)
    database, queries = _normalised(rng, 50, 8), _normalised(rng, 4, 8)
    cpu_index = build_flat_ip_index(database)
    assert index_module.on_search_device(cpu_index) is cpu_index  # faiss-cpu: no GPU build

    moved = []

    class FakeGpuFaiss:
        """faiss's GPU build as the search sees it; the 'GPU' copy is the CPU index itself."""

        StandardGpuResources = object

        def __init__(self, gpus):
            self.gpus = gpus

        def get_num_gpus(self):
            return self.gpus

        def index_cpu_to_gpu(self, resources, device, index):
            moved.append((resources, device))
            return index

    monkeypatch.setattr(index_module, "_GPU_RESOURCES", [])
    monkeypatch.setattr(index_module, "_faiss", lambda: FakeGpuFaiss(0))
    assert index_module.on_search_device(cpu_index) is cpu_index and moved == []
    monkeypatch.setattr(index_module, "_faiss", lambda: FakeGpuFaiss(1))
    search(cpu_index, queries, 5)
    search(cpu_index, queries, 5)
    assert [device for _, device in moved] == [0, 0]
    assert moved[0][0] is moved[1][0]  # one resources object per process
