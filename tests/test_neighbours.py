"""The audit's candidate search (training/neighbours.py): the HNSW index finds the pairs
that brute force finds, and a turned or mirrored copy is found through the layout views."""

import numpy as np
import pytest

from training.neighbours import candidates, top_k


def _clustered(n_clusters=60, per=8, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    x = np.repeat(centres, per, axis=0) + 0.05 * rng.normal(size=(n_clusters * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x, k):
    """Each row's k most similar other rows, by a plain sort of the full similarity matrix."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in sims]


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_top_k_finds_the_brute_force_neighbours(method):
    pytest.importorskip("faiss") if method == "hnsw" else None
    x = _clustered()
    found = top_k(x, 7, method=method)
    expected = _brute_force(x, 7)
    recall = np.mean([len(set(row.tolist()) & e) / 7 for row, e in zip(found, expected)])
    assert recall >= 0.99


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_turned_and_mirrored_copies_are_candidates(method):
    pytest.importorskip("faiss") if method == "hnsw" else None
    rng = np.random.default_rng(1)
    n = 300
    layout = rng.normal(size=(n, 24, 24)).astype(np.float32)
    colour = rng.random((n, 64)).astype(np.float32)
    # image n-1 is image 0 turned a quarter and mirrored, with another colour cast
    layout[n - 1] = np.rot90(layout[0], 1)[:, ::-1]
    colour[n - 1] = rng.random(64)
    pairs = candidates(colour, layout, k=5, method=method)
    assert (0, n - 1) in pairs
    assert all(i < j for i, j in pairs)


def test_tiny_sets_pair_everyone():
    x = _clustered(n_clusters=2, per=2)
    assert [sorted(r) for r in top_k(x, 10, method="exact").tolist()] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_shards_find_the_neighbours_of_one_index(method):
    """Indexes of a few rows each, every one asked by every row, keep each row's best k:
    the exact search gives one index's answer, row for row; HNSW at least its recall."""
    pytest.importorskip("faiss") if method == "hnsw" else None
    x = _clustered(n_clusters=40, per=10)
    views = [np.ascontiguousarray(x[:, ::-1])]
    whole, sharded = top_k(x, 7, views, method=method, shard=len(x)), top_k(x, 7, views, method=method, shard=96)
    if method == "exact":
        np.testing.assert_array_equal(np.sort(sharded, axis=1), np.sort(whole, axis=1))
    expected = _brute_force(x, 7)
    assert np.mean([len(set(r.tolist()) & e) / 7 for r, e in zip(sharded, expected)]) >= 0.99


def test_memory_of_the_search_does_not_grow_with_the_rows_read_from_disk(tmp_path):
    """Rows read from disk a block at a time, one shard's index at a time: 4x the rows, about
    the same peak of allocations (numpy's, traced); only k neighbours a row are kept."""
    import tracemalloc

    from training.stream import Rows

    peaks = []
    for n in (1500, 6000):
        np.save(tmp_path / f"{n}.npy", _clustered(n_clusters=n // 10, per=10, dim=256))
        rows = Rows.npy(str(tmp_path / f"{n}.npy"))
        tracemalloc.start()
        top_k(rows, 10, method="exact", shard=1000)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.3 * peaks[0], f"peak {peaks[0] / 1e6:.1f} MB for 1,500 rows, {peaks[1] / 1e6:.1f} MB for 6,000"
