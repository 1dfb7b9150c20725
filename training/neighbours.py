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

    python -m training.neighbours DATA_DIR [--method hnsw|exact]   # candidate pairs, timing
"""

import argparse
import time

import numpy as np

M = 32  # HNSW links per node
EF_CONSTRUCTION = 80
EF_SEARCH = 64  # candidates visited per query: higher finds more of the true top k
BATCH = 4096  # query rows per call: bounds the memory of the distance tables


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
        self.method = method
        if method == "hnsw":
            import faiss

            self.index = faiss.IndexHNSWFlat(self.base.shape[1], M, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = EF_CONSTRUCTION
            self.index.hnsw.efSearch = EF_SEARCH
            self.index.add(self.base)
        elif method != "exact":
            raise ValueError(f"unknown neighbour search {method!r}; use hnsw or exact")

    def search(self, queries, k):
        """(similarities, indices), each (len(queries), k); indices -1 where fewer exist."""
        queries = np.ascontiguousarray(queries, np.float32)
        k = min(k, len(self.base))
        if self.method == "exact":
            return _exact(self.base, queries, k)
        sims, idx = [], []
        for start in range(0, len(queries), BATCH):
            s, i = self.index.search(queries[start:start + BATCH], k)
            sims.append(s)
            idx.append(i)
        return np.concatenate(sims), np.concatenate(idx)


def top_k(features, k, views=(), method="hnsw"):
    """For each row of `features`, its k most similar other rows (inner product), taking for
    each pair the best over the query's `views` (extra arrays of the same rows, transformed)."""
    n = len(features)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), np.int64)
    if n <= k + 1:  # a tiny set: every other image is a neighbour
        return np.array([[j for j in range(n) if j != i] for i in range(n)], np.int64)
    index = Index(features, method)
    found_s, found_i = [], []
    for q in (features, *views):
        s, i = index.search(q, k + 1)  # +1: the image itself is usually its own best match
        found_s.append(s)
        found_i.append(i)
    sims, idx = np.concatenate(found_s, axis=1), np.concatenate(found_i, axis=1)
    rows = np.arange(n)[:, None]
    sims = np.where((idx == rows) | (idx < 0), -np.inf, sims)
    out = np.empty((n, k), np.int64)
    for r in range(n):  # best similarity per other image over the views, then its top k
        order = np.argsort(-sims[r], kind="stable")
        picked, seen = [], set()
        for j in order:
            c = int(idx[r, j])
            if sims[r, j] == -np.inf or c in seen:
                continue
            seen.add(c)
            picked.append(c)
            if len(picked) == k:
                break
        out[r, :len(picked)] = picked
        out[r, len(picked):] = picked[-1] if picked else (r + 1) % n
    return out


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
