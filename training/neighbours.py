"""Nearest-neighbour candidates for the audit, at any size: which image pairs to check.

The audit (training/audit.py) describes each image twice, a colour histogram and a 24 px
layout thumbnail that is compared under all 8 rotations/flips, and checks each image's
CANDIDATES nearest neighbours under either with SIFT. Comparing every image with every
other is n^2: 2 s for 1,500 images, minutes for 25,000, days for a million. Here the
neighbours come from an approximate index that grows close to linearly with n:

    hnsw   (default when faiss is installed) a Hierarchical Navigable Small World graph,
           faiss.IndexHNSWFlat on inner product over the unit-length features: build and
           query are ~n log n, memory is the vectors plus 2*M links each; queried in
           batches across faiss' threads.
    exact  the same top-k by brute force in blocks of rows (numpy matmul): memory flat,
           time n^2. The reference, and what runs without faiss.

Why faiss' HNSW: faiss-cpu installs as a wheel from PyPI (19 MB, no compiler; hnswlib is
source-only there), it is exact in its distances and only approximate in which points it
visits. On the three data sets here it gives the same groups as brute force, image for
image (docs/scale.md): it finds the copies, whose similarity stands out, and misses some
of the weak layout neighbours of plain textures, which never pass the SIFT check anyway.
Random-projection LSH in
numpy would need many tables for the same recall on 4,096-dimensional histograms.

The layout is compared under 8 views: x . view(y) = view^-1(x) . y, so the index holds one
vector per image and each image asks with its 8 views, keeping its best k over them.

In flat memory: top_k builds one index per `shard` rows (SHARD = 2,048 by default), every
row asks each, BLOCK rows at a time, and keeps its best k so far; rows may come from disk
(anything with len() and slicing, e.g. training.stream.Rows). Up to one shard this is the
single index above; beyond, each shard is asked by every row, so time grows as n^2 / shard
with a small constant (the audit's colour search: 12 shards at 23,648 images).

    python -m training.neighbours DATA_DIR [--method hnsw|exact]   # candidate pairs, timing
"""

import argparse
import time

import numpy as np

M = 32  # HNSW links per node
EF_CONSTRUCTION = 80
EF_SEARCH = 64  # candidates visited per query: higher finds more of the true top k
BATCH = 4096  # query rows per call: bounds the memory of the distance tables
SHARD = 2048  # rows per index: what an index holds in memory, however many images there are
BLOCK = 2048  # query rows read (from memory or disk) at a time


def available():
    """Whether faiss (requirements-scale.txt) is installed."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def default_method():
    return "hnsw" if available() else "exact"


def _exact(base, queries, k):
    """(similarities, indices) of each query's k most similar base rows (inner product)."""
    sims_out = np.empty((len(queries), k), np.float32)
    idx_out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 512):
        sims = queries[start:start + 512] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        sims_out[start:start + 512] = np.take_along_axis(sims, top, axis=1)
        idx_out[start:start + 512] = top
    return sims_out, idx_out


class Index:
    """Inner-product top-k over the rows of `base` (float32, unit length)."""

    def __init__(self, base, method="hnsw"):
        self.base = np.ascontiguousarray(base, np.float32)
        self.method, self.n = method, len(self.base)
        if method == "hnsw":
            import faiss

            self.index = faiss.IndexHNSWFlat(self.base.shape[1], M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = EF_CONSTRUCTION
            self.index.hnsw.efSearch = EF_SEARCH
            self.index.add(self.base)
            self.base = None  # faiss holds its own copy
        elif method != "exact":
            raise ValueError(f"unknown neighbour search {method!r}; use hnsw or exact")

    def search(self, queries, k):
        """(similarities, indices), each (len(queries), k); indices -1 where fewer exist."""
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, self.n)
        if self.method == "exact":
            return _exact(self.base, queries, k)
        sims, idx = [], []
        for start in range(0, len(queries), BATCH):
            s, i = self.index.search(queries[start:start + BATCH], k)
            sims.append(s)
            idx.append(i)
        return np.concatenate(sims), np.concatenate(idx)


def _rows(source, s):
    """Rows `s` (a slice) of `source`: an array, a memmap, or anything with len() and
    slicing that gives an array (rows computed on the fly)."""
    return np.ascontiguousarray(source[s], np.float32)


def _pick(sims, idx, k):
    """Per row, the k distinct indices of highest similarity, earlier columns first among
    equals, -inf ignored -> (sims, indices), each (rows, k), padded with -inf and -1."""
    b, m = idx.shape
    order = np.argsort(-sims, axis=1, kind="stable")
    s, i = np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)
    rows, flat = np.repeat(np.arange(b), m), i.ravel()
    by = np.lexsort((np.tile(np.arange(m), b), flat, rows))  # by row, index, then rank
    first = np.ones(b * m, bool)
    first[1:] = (rows[by][1:] != rows[by][:-1]) | (flat[by][1:] != flat[by][:-1])
    keep = np.zeros(b * m, bool)
    keep[by[first]] = True  # an index's best entry in its row
    keep = keep.reshape(b, m) & (s != -np.inf)
    rank = np.cumsum(keep, axis=1) - 1
    r, c = np.nonzero(keep & (rank < k))
    out_s, out_i = np.full((b, k), -np.inf, np.float32), np.full((b, k), -1, np.int64)
    out_s[r, rank[r, c]], out_i[r, rank[r, c]] = s[r, c], i[r, c]
    return out_s, out_i


def top_k(features, k, views=(), method="hnsw", shard=SHARD):
    """For each row of `features`, its k most similar other rows (inner product), taking for
    each pair the best over the query's `views` (the same rows, transformed).

    `features` and each view: (n, d) arrays, memmaps, or objects whose slices give arrays
    (rows computed on the fly from a memmap). The index holds `shard` rows at a time: each
    shard's index answers every query, BLOCK rows at a time, and each row keeps its best k
    so far, so memory holds one shard's index and k neighbours per row, whatever n is. With
    n <= shard this is one index over every row."""
    n = len(features)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64)
    if n <= k + 1:  # a tiny set: every other image is a neighbour
        return np.array([[j for j in range(n) if j != i] for i in range(n)], np.int64)
    best_s, best_i = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    for lo in range(0, n, shard):
        index = Index(_rows(features, slice(lo, min(n, lo + shard))), method)
        for start in range(0, n, BLOCK):
            rows = slice(start, min(n, start + BLOCK))
            found_s, found_i = [best_s[rows]], [best_i[rows]]
            for q in (features, *views):
                s, i = index.search(_rows(q, rows), k + 1)  # +1: the image itself is usually its own best
                found_s.append(s)
                found_i.append(np.where(i >= 0, i + lo, -1))
            sims, idx = np.concatenate(found_s, axis=1), np.concatenate(found_i, axis=1)
            own = np.arange(rows.start, rows.stop)[:, None]
            sims = np.where((idx == own) | (idx < 0), -np.inf, sims)
            best_s[rows], best_i[rows] = _pick(sims, idx, k)
    found = (best_i >= 0).sum(axis=1)
    for r in np.flatnonzero(found < k):  # fewer than k others found: repeat the last one
        best_i[r, found[r]:] = best_i[r, found[r] - 1] if found[r] else (r + 1) % n
    return best_i


def unit_rows(a):
    a = np.asarray(a, np.float32).reshape(len(a), -1)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-9)


def candidates(colour, layout, k, method=None):
    """Candidate pairs (i < j) for the audit: each image's k nearest under the centred colour
    histogram (cosine) and under the layout thumbnail in any of its 8 rotations/flips.

    colour: (n, d) histograms; layout: (n, h, w) zero-mean unit-norm thumbnails."""
    method = method or default_method()
    colour = np.asarray(colour, np.float32)
    colour = unit_rows(colour - colour.mean(0))
    layout = np.asarray(layout, np.float32)
    turns = [np.rot90(layout, r, axes=(1, 2)) for r in range(4)]
    views = [unit_rows(t) for t in turns] + [unit_rows(t[:, :, ::-1]) for t in turns]
    pairs = set()
    for near in (top_k(colour, k, method=method), top_k(views[0], k, views[1:], method=method)):
        for i, row in enumerate(near):
            pairs.update((min(i, int(j)), max(i, int(j))) for j in row if j != i)
    return sorted(pairs)


def main(argv=None):
    from training import audit
    from training.data import scan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*")
    p.add_argument("--method", choices=("hnsw", "exact"), default=default_method())
    p.add_argument("--k", type=int, default=audit.CANDIDATES, help="neighbours per image")
    args = p.parse_args(argv)
    import os
    from concurrent.futures import ThreadPoolExecutor

    items = scan(args.data)
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        described = list(pool.map(lambda it: audit.describe(os.path.join(args.data, it.path)), items))
    t0 = time.time()
    pairs = candidates(np.stack([d.colour for d in described]), np.stack([d.layout for d in described]),
                       args.k, args.method)
    print(f"{len(pairs)} candidate pairs among {len(items)} images ({args.method}) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
