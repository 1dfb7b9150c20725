"""Audit a data set before training: copies, leaks, label conflicts and shortcut cues.

    python -m training.audit DATA_DIR --out OUT_DIR [--seed 0] [--keep-published-split] [--groups FILE]

DATA_DIR holds class folders (DIR/<class>/*) or a published split
(DIR/{train,valid,test}/<class>/*). OUT_DIR gets:

    audit.md     the report for people: problems first, each with its files and what to do
    audit.json   the same for machines: exact_duplicate_groups, near_duplicate_groups,
                 cross_class_groups, cross_split_groups (each a list of groups, each a list
                 of paths relative to DATA_DIR), shortcut_cues, counts, the split summary
    split.csv    path,label,group,split for every readable image: the split training uses
    figures/     thumbnails of the worst groups (derived from your images: keep them private)

How copies are found (measured on LC25000 and two CT sets; see scripts/check_tile_groups.py):

1. Exact duplicates: identical bytes (sha256).
2. Near duplicates: each image is shrunk to at most 160 px and described twice: a colour
   histogram (unchanged by rotation, flips and crops) and a 24 px layout thumbnail under all
   8 rotations/flips; and its 256 SIFT keypoints. Each image's 10 nearest neighbours under
   the histogram, under the thumbnail, and by keypoint votes (the images its keypoints, as
   is and mirrored, most often find as nearest neighbours: zoomed-in copies) are candidates
   (the first two from an HNSW index, training/neighbours.py, so this grows close to linearly).
   A candidate pair is a near copy when SIFT keypoints (also matched mirrored) agree on one
   affine map from one image onto the other with at least 12 inliers (RANSAC), AND the
   fine detail (a band-pass image) of the two agrees once aligned by that map (Pearson
   correlation >= 0.8). The first test catches rotations, flips, crops, zooms, stretches,
   re-encoding and resizing; the second stops CT slices of different patients from being
   joined through the scanner table or the field-of-view ring that they share.
   A candidate pair whose 32 x 32 grey thumbnails correlate at >= 0.97 is joined as well,
   without keypoints: near-identical neighbouring CT slices with too little texture for
   SIFT.
3. A group file (--groups FILE: a CSV `path,group`, paths relative to DATA_DIR, e.g.
   patient or scan ids) joins the images that share a group in it.
4. Groups are the connected components of all these pairs (a union: images the audit
   joins or the file joins end up in one group): copies of one tile, or neighbouring
   slices of one scan, end up together and the split keeps them on one side.
"""

import argparse
import csv
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from training import neighbours
from training import split as splitting
from training.data import scan
from training.errors import DataError, cli_errors
from training.stream import Rows
from lungclf.preprocess import ImageError, open_image, read_rgb, to_rgb

# The method's settings, chosen by measurement (scripts/check_tile_groups.py and the CT sets).
WORK_SIDE = 160  # pixels: images are shrunk to this before describing them
SIFT_FEATURES = 256  # keypoints per image (128 misses zooms of 2x and more)
CANDIDATES = 10  # nearest neighbours per image under the layout thumbnail ...
COLOUR_CANDIDATES = 10  # ... and under the colour histogram ...
VOTE_KEYPOINTS, VOTE_NEIGHBOURS = 128, 4  # ... and by keypoint votes (_vote_top_k) ...
VOTE_CANDIDATES = 10  # ... the images with the most votes
RATIO = 0.8  # Lowe's ratio test for a keypoint match
MIN_INLIERS = 12  # keypoints that one affine map must explain
MIN_DETAIL_AGREEMENT = 0.8  # correlation of aligned band-pass detail
THUMB_SIDE = 32  # pixels: the grey thumbnail compared as a whole ...
MIN_THUMB_CORRELATION = 0.97  # ... a candidate pair correlating at least this much is joined
SHORTCUT_MARGIN = 0.10  # warn when a cue alone beats chance by this much accuracy ...
GIVE_AWAY_MIN = 5  # ... or when values held by >= this many images, all of one class,
#                    cover 2% of the images (e.g. every 400x256 image is malignant)
WORST_GROUPS_SHOWN = 8  # contact sheets in figures/
# Memory: the descriptions live on disk (Store); these bound what is read at a time.
CHUNK = 256  # images described before they are appended to the store
SHARD = neighbours.SHARD  # images per nearest-neighbour index (colour, layout, keypoint votes)
QUERY_BLOCK = 512  # images whose keypoints ask the vote index at a time
VOTE_PROBES = 2  # lists each keypoint asks, when there are too many keypoints for one index
PAIR_BLOCK = 4096  # candidate pairs whose thumbnails are compared at a time

cv2.setNumThreads(1)  # threads are used across images instead


@dataclass
class Described:
    """What the audit keeps of one readable image."""

    sha256: str
    width: int
    height: int
    format: str
    mode: str
    bytes: int
    grey: np.ndarray  # uint8, longest side <= WORK_SIDE
    colour: np.ndarray  # sqrt of a 16x16x16 Lab histogram, centred later
    layout: np.ndarray  # 24x24 grey thumbnail, zero mean, unit norm
    thumb: np.ndarray  # THUMB_SIDE x THUMB_SIDE grey thumbnail, flattened, zero mean, unit norm
    points: np.ndarray  # SIFT keypoint positions (N, 2)
    descriptors: np.ndarray  # RootSIFT (N, 128)


def _shrink(rgb):
    h, w = rgb.shape[:2]
    f = WORK_SIDE / max(h, w)
    if f >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def describe(path):
    """Read one file with the project's one decoding path -> Described; raises ImageError."""
    with open(path, "rb") as f:
        data = f.read()
    im = open_image(data)
    info = dict(width=im.size[0], height=im.size[1], format=im.format or "unknown", mode=im.mode)
    small = _shrink(to_rgb(im))
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3) // 16
    hist = np.bincount((lab[:, 0].astype(np.int32) * 16 + lab[:, 1]) * 16 + lab[:, 2], minlength=4096)
    layout, thumb = (_unit(cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA))
                     for side in (24, THUMB_SIDE))
    keypoints, desc = cv2.SIFT_create(nfeatures=SIFT_FEATURES).detectAndCompute(grey, None)
    if desc is None:
        desc = np.zeros((0, 128), np.float32)
    desc = np.sqrt(desc / (desc.sum(1, keepdims=True) + 1e-7)).astype(np.float32)  # RootSIFT
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2)
    return Described(hashlib.sha256(data).hexdigest(), bytes=len(data), grey=grey,
                     colour=np.sqrt(hist / hist.sum()).astype(np.float32), layout=layout,
                     thumb=thumb.ravel(),
                     points=points, descriptors=desc, **info)


def _unit(a):
    """float32 copy with zero mean and unit norm: the dot product of two is their correlation."""
    a = a.astype(np.float32)
    a -= a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


class Store:
    """The audit's per-image descriptions on disk, in a work folder: each array of every image
    appended to one file as it is described, then read back a block or an image at a time
    (training.stream.Rows). Fixed-size rows (colour histogram, layout and grey thumbnails) are
    (n, d); the ragged ones (grey working copy, keypoints and descriptors) one long file each,
    with per-image offsets. Memory holds
    only each image's few numbers (sha256, size, format, mode, bytes) and the offsets."""

    FIXED = {"colour": 4096, "layout": 24 * 24, "thumb": THUMB_SIDE * THUMB_SIDE}
    RAGGED = {"grey": (np.uint8, ()), "points": (np.float32, (2,)), "descriptors": (np.float32, (128,))}

    def __init__(self, folder):
        self.folder, self.n = folder, 0
        self.info = {k: [] for k in ("sha256", "width", "height", "format", "mode", "bytes")}
        self._files = {k: open(self._path(k), "wb") for k in (*self.FIXED, *self.RAGGED)}
        self._sizes = {k: [0] for k in self.RAGGED}
        self._shapes = []

    def _path(self, name):
        return os.path.join(self.folder, name + ".bin")

    def add(self, d):
        """Append one Described."""
        for k in self.info:
            self.info[k].append(getattr(d, k))
        for k in self.FIXED:
            self._files[k].write(np.ascontiguousarray(getattr(d, k), np.float32).tobytes())
        for k, (dtype, tail) in self.RAGGED.items():
            a = np.ascontiguousarray(getattr(d, k), dtype).reshape(-1, *tail)  # grey: its pixels, flat
            self._files[k].write(a.tobytes())
            self._sizes[k].append(self._sizes[k][-1] + len(a))
        self._shapes.append(d.grey.shape)
        self.n += 1

    def close(self):
        """Stop appending; read back with stream.Rows (pread, so nothing read stays mapped)."""
        for f in self._files.values():
            f.close()
        for k, d in self.FIXED.items():
            setattr(self, k, Rows(self._path(k), np.float32, (self.n, d)))
        self.offsets = {k: np.asarray(v, np.int64) for k, v in self._sizes.items()}
        for k, (dtype, tail) in self.RAGGED.items():
            setattr(self, k, Rows(self._path(k), dtype, (int(self.offsets[k][-1]), *tail)))
        self.shapes = np.asarray(self._shapes, np.int32).reshape(-1, 2)
        del self._sizes, self._shapes
        return self

    def release(self):
        """Close the files (before their folder is deleted)."""
        for k in (*self.FIXED, *self.RAGGED):
            getattr(self, k).close()

    def ragged(self, name, i, limit=None):
        """Image i's rows of a ragged array (its first `limit`)."""
        o = self.offsets[name]
        return getattr(self, name).read(o[i], o[i + 1] if limit is None else min(o[i + 1], o[i] + limit))

    def described(self, i, matching=False):
        """Image i as a Described (its arrays read from disk); `matching`: only what
        near_copy reads (grey, points, descriptors), the rest None."""
        fixed = {"colour": None, "layout": None, "thumb": None} if matching else dict(
            colour=self.colour[i], layout=self.layout[i].reshape(24, 24), thumb=self.thumb[i])
        return Described(**{k: v[i] for k, v in self.info.items()}, **fixed,
                         grey=self.ragged("grey", i).reshape(self.shapes[i]),
                         points=self.ragged("points", i), descriptors=self.ragged("descriptors", i))


def _describe_all(root, items, store, workers, progress):
    """Describe items into store in order -> [(item, unreadable reason)]; CHUNK files at a time,
    so what waits in memory is one chunk's descriptions."""
    def safe(it):
        try:
            return describe(os.path.join(root, it.path))
        except (ImageError, OSError) as e:
            return str(e)

    kept, unreadable = [], []
    bar = _progress(None, len(items), "audit: reading", progress)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            for it, r in zip(chunk, pool.map(safe, chunk)):
                if isinstance(r, str):
                    unreadable.append({"path": it.path, "reason": r})
                else:
                    store.add(r)
                    kept.append(it)
            if bar:
                bar.update(len(chunk))
    if bar:
        bar.close()
    return kept, unreadable


def _thumb_edges(store, candidates):
    """The candidate pairs whose grey thumbnails correlate at >= MIN_THUMB_CORRELATION
    (read from disk PAIR_BLOCK pairs at a time)."""
    out = []
    for start in range(0, len(candidates), PAIR_BLOCK):
        i, j = candidates[start:start + PAIR_BLOCK].T
        corr = np.einsum("ij,ij->i", store.thumb[i], store.thumb[j])
        out.append(candidates[start:start + PAIR_BLOCK][corr >= MIN_THUMB_CORRELATION])
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def read_group_file(path, known):
    """A CSV `path,group` -> (groups: lists of paths found in `known`, info for the report).
    A header of `path` and one other column (e.g. `path,tile_group`) names the group by that column.

    Paths are relative to the data folder; `known` is the set of scanned paths. Rows with an
    empty group are skipped; paths not in `known` are counted and reported, not fatal.
    """
    import posixpath

    try:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--groups {path}: cannot read it ({e})") from None
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    # 'path,group', or 'path' and one other column naming the group (e.g. LC25000's path,tile_group)
    column = "group" if "group" in columns else (columns[1 - columns.index("path")]
                                                 if "path" in columns and len(columns) == 2 else None)
    if column is None or "path" not in columns:
        raise DataError(f"--groups {path}: expected a CSV with the header 'path,group', "
                        f"got {','.join(reader.fieldnames or []) or 'an empty file'!r}")
    members, unknown, rows = {}, [], 0
    for row in reader:
        row = {(k or "").strip(): v for k, v in row.items()}
        rel = posixpath.normpath((row.get("path") or "").strip().replace("\\", "/"))
        group = (row.get(column) or "").strip()
        if not group or rel == ".":
            continue
        rows += 1
        if rel in known:
            members.setdefault(group, []).append(rel)
        else:
            unknown.append(rel)
    info = {"file": os.path.basename(path), "sha256": hashlib.sha256(data).hexdigest(), "rows": rows,
            "groups": len(members), "paths_unknown": len(unknown), "unknown_examples": unknown[:5]}
    return [sorted(set(m)) for m in members.values()], info


def _mirror_descriptors(d):
    """SIFT descriptors of the mirror image: reverse the 4 rows of cells, negate angles."""
    return np.ascontiguousarray(d.reshape(-1, 4, 4, 8)[:, ::-1][..., (-np.arange(8)) % 8].reshape(-1, 128))


def _detail(grey):
    g = grey.astype(np.float32)
    return cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 4.0)


def _agreement(a, b, m):
    """Pearson correlation of a's detail and b's detail warped by m, where both exist."""
    h, w = a.shape
    warped = cv2.warpAffine(_detail(b), m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ones(b.shape, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    if mask.sum() < 400:  # less than 20 x 20 pixels in common
        return 0.0
    x, y = _detail(a)[mask], warped[mask]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-6))


def near_copy(a, b, matcher=None):
    """(inliers, detail agreement) of the best affine map from b (as is or mirrored) onto a.

    b is a near copy of a when inliers >= MIN_INLIERS and agreement >= MIN_DETAIL_AGREEMENT.
    """
    matcher = matcher or cv2.BFMatcher(cv2.NORM_L2)
    best = (0, 0.0)
    if len(a.descriptors) < MIN_INLIERS or len(b.descriptors) < MIN_INLIERS:
        return best
    for mirrored in (False, True):
        pts, desc, grey = b.points, b.descriptors, b.grey
        if mirrored:
            pts = pts.copy()
            pts[:, 0] = b.grey.shape[1] - 1 - pts[:, 0]
            desc, grey = _mirror_descriptors(desc), np.ascontiguousarray(grey[:, ::-1])
        pairs = matcher.knnMatch(a.descriptors, desc, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
        if len(good) < MIN_INLIERS:
            continue
        src = pts[[m.trainIdx for m in good]]
        dst = a.points[[m.queryIdx for m in good]]
        m, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
        if m is None or not 1 / 16 < abs(np.linalg.det(m[:, :2])) < 16:
            continue
        n = int(inliers.sum())
        if n >= MIN_INLIERS and n > best[0]:
            best = (n, _agreement(a.grey, grey, m))
            if best[1] >= MIN_DETAIL_AGREEMENT:
                break  # a near copy already; the other orientation cannot change that
    return best


def _voters(store, lo, hi):
    """(descriptors, owners): the first VOTE_KEYPOINTS RootSIFT descriptors of images lo..hi-1."""
    o = store.offsets["descriptors"]
    rows = store.descriptors.read(o[lo], o[hi])
    parts = [rows[o[i] - o[lo]:min(o[i + 1], o[i] + VOTE_KEYPOINTS) - o[lo]] for i in range(lo, hi)]
    owner = np.concatenate([np.full(len(x), i) for i, x in zip(range(lo, hi), parts)] or [np.zeros(0, int)])
    base = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
    return np.ascontiguousarray(base, np.float32), owner


def _files(paths):
    """Empty files at these paths -> the paths. Written by _append, which opens and closes a
    file for each write, so any number of them can be filled without running out of handles."""
    paths = list(paths)
    for path in paths:
        open(path, "wb").close()
    return paths


def _append(path, array):
    with open(path, "ab") as f:
        f.write(np.ascontiguousarray(array).tobytes())


def _vote_top_k(store, k, shard=SHARD, work=None):
    """For each image, the k images that its keypoints most often find as nearest neighbours
    (RootSIFT, as is and mirrored, in FLANN kd-trees; VOTE_KEYPOINTS per image, VOTE_NEIGHBOURS
    each) -> pairs (m, 2). Unlike the colour histogram and layout thumbnail, this finds
    zoomed-in copies.

    Up to `shard` images' worth of keypoints (shard x VOTE_KEYPOINTS): one index over all of
    them, asked QUERY_BLOCK images at a time. Beyond: the keypoints are split into lists of
    about half that many (_vote_lists), so memory holds one list's index whatever the size.
    The votes (pairs of images) go to files by image, counted one file at a time."""
    n, near = store.n, VOTE_NEIGHBOURS + 1
    per_image = np.minimum(np.diff(store.offsets["descriptors"]), VOTE_KEYPOINTS)
    total = int(per_image.sum())
    if total <= VOTE_NEIGHBOURS:
        return np.zeros((0, 2), np.int64)
    starts = np.concatenate([[0], np.cumsum(per_image)])  # each image's first voting keypoint
    blocks = [(lo, min(n, lo + QUERY_BLOCK)) for lo in range(0, n, QUERY_BLOCK)]
    tmp = tempfile.TemporaryDirectory(prefix="votes-", dir=work)
    folder = tmp.name
    rows_per_file = max(1, shard)
    outs = _files(os.path.join(folder, f"votes-{b}.bin") for b in range(-(-n // rows_per_file)))

    def vote(src, dst):  # every pair both ways, filed by its first image
        keep = (src != dst) & (dst >= 0)
        src, dst = src[keep], dst[keep]
        codes = np.concatenate([src * n + dst, dst * n + src])
        files = codes // n // rows_per_file
        order = np.argsort(files, kind="stable")
        codes, files = codes[order], files[order]
        names, firsts = np.unique(files, return_index=True)
        for f, part in zip(names, np.split(codes, firsts[1:])):
            _append(outs[f], part.astype(np.int64))

    if total <= shard * VOTE_KEYPOINTS:
        parts = [_voters(store, lo, hi) for lo, hi in blocks]  # a block's descriptors read at a time
        base, owner = (np.concatenate(a) for a in zip(*parts))
        del parts
        cv2.setRNGSeed(0)  # the kd-trees are randomised: the same candidates on every run
        index = cv2.flann_Index(base, dict(algorithm=1, trees=4))  # 1: randomised kd-trees
        del base  # the index keeps its own copy

        def ask(block):
            query, q_owner = _voters(store, *block)
            return [(np.repeat(q_owner, near), owner[index.knnSearch(q, near, params=dict(checks=32))[0]].ravel())
                    for q in (query, np.ascontiguousarray(_mirror_descriptors(query)))]

        with ThreadPoolExecutor(2) as pool:  # FLANN lets go of the GIL while it searches
            for found in pool.map(ask, blocks):
                for src, dst in found:
                    vote(src, dst)
        del index
    else:
        _vote_lists(store, per_image, starts, blocks, shard * VOTE_KEYPOINTS // 2, folder, vote)
    pairs_out = []
    for b in range(len(outs)):
        codes = np.fromfile(os.path.join(folder, f"votes-{b}.bin"), np.int64)
        pairs, votes = np.unique(codes, return_counts=True)
        rows, cols = pairs // n, pairs % n
        order = np.lexsort((-votes, rows))  # by image, most votes first
        rows, cols = rows[order], cols[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        pairs_out.append(np.stack([rows[rank < k], cols[rank < k]], axis=1))
    tmp.cleanup()
    return np.concatenate(pairs_out) if pairs_out else np.zeros((0, 2), np.int64)


def _vote_lists(store, per_image, starts, blocks, list_size, folder, vote):
    """The keypoint votes of a set too large for one index, in bounded memory and time that
    grows with the number of keypoints, not its square (an inverted file, as faiss' IVF):

    1. k-means (faiss, seeded) on a sample of the voting keypoints: one centroid per
       `list_size` keypoints; each keypoint is filed under its nearest centroid's list
       (on disk), and asks (as is, and mirrored) the VOTE_PROBES lists nearest to it;
    2. list by list: a kd-tree index over its keypoints (at most 2 x list_size at a time),
       asked by the keypoints that chose that list; the answers go to files by keypoint;
    3. file by file: each keypoint's VOTE_NEIGHBOURS + 1 nearest over its lists vote."""
    import faiss

    total, near = int(starts[-1]), VOTE_NEIGHBOURS + 1
    n_lists = -(-total // list_size)
    sample = np.zeros(total, bool)
    sample[np.random.default_rng(0).choice(total, min(total, max(50 * n_lists, 20_000)), replace=False)] = True
    train = np.concatenate([_voters(store, lo, hi)[0][sample[starts[lo]:starts[hi]]] for lo, hi in blocks])
    kmeans = faiss.Kmeans(128, n_lists, niter=20, seed=0)
    kmeans.train(train)
    del train, sample
    path = lambda kind, i: os.path.join(folder, f"{kind}-{i}.bin")  # noqa: E731
    files = dict(zip(((kind, i) for kind in ("base", "owner", "query", "id") for i in range(n_lists)),
                     _files(path(kind, i) for kind in ("base", "owner", "query", "id") for i in range(n_lists))))

    def file(kind, lists, rows):  # rows into the files of their lists
        order = np.argsort(lists, kind="stable")
        names, firsts = np.unique(lists[order], return_index=True)
        for i, part in zip(names, np.split(np.ascontiguousarray(rows[order]), firsts[1:])):
            _append(files[kind, int(i)], part)

    for lo, hi in blocks:
        desc, owner = _voters(store, lo, hi)
        ids = np.arange(starts[lo], starts[hi])
        mirrored = np.ascontiguousarray(_mirror_descriptors(desc))
        for m, q in enumerate((desc, mirrored)):
            lists = kmeans.index.search(q, VOTE_PROBES)[1]
            if m == 0:
                file("base", lists[:, 0], desc)
                file("owner", lists[:, 0], owner.astype(np.int64))
            for p in range(VOTE_PROBES):
                file("query", lists[:, p], q)
                file("id", lists[:, p], ids + m * total)  # which keypoint asks, and mirrored or not
    bucket = max(1, list_size)  # keypoints (as is or mirrored) per answer file
    answers = _files(os.path.join(folder, f"answers-{b}.bin") for b in range(-(-2 * total // bucket)))
    answer = np.dtype([("id", np.int64), ("dist", np.float32), ("owner", np.int64)])
    for i in range(n_lists):
        owner = np.fromfile(path("owner", i), np.int64)
        base = Rows(path("base", i), np.float32, (len(owner), 128))
        queries = Rows(path("query", i), np.float32, (os.path.getsize(path("query", i)) // 512, 128))
        ids = Rows(path("id", i), np.int64, (len(queries),))
        for c in range(0, len(base), 2 * list_size):
            chunk = base[c:c + 2 * list_size]
            cv2.setRNGSeed(0)
            index = cv2.flann_Index(chunk, dict(algorithm=1, trees=4))
            k_here = min(near, len(chunk))
            chunk = None  # the index keeps its own copy

            def ask(start):
                nearest, dist = index.knnSearch(queries[start:start + 65536], k_here, params=dict(checks=32))
                out = np.empty(nearest.size, answer)
                out["id"] = np.repeat(ids[start:start + 65536], k_here)
                out["dist"], out["owner"] = dist.ravel(), owner[c:][nearest.ravel()]
                return out

            with ThreadPoolExecutor(2) as pool:
                for out in pool.map(ask, range(0, len(queries), 65536)):
                    order = np.argsort(out["id"] // bucket, kind="stable")
                    out = out[order]
                    names, firsts = np.unique(out["id"] // bucket, return_index=True)
                    for b, part in zip(names, np.split(out, firsts[1:])):
                        _append(answers[int(b)], part)
            index = None
        for rows in (base, queries, ids):
            rows.close()
    for b in range(len(answers)):
        out = np.fromfile(os.path.join(folder, f"answers-{b}.bin"), answer)
        out = out[np.lexsort((out["dist"], out["id"]))]  # by keypoint, nearest first
        rank = np.arange(len(out)) - np.searchsorted(out["id"], out["id"])
        out = out[rank < near]
        src = np.searchsorted(starts, out["id"] % total, side="right") - 1  # the asking keypoint's image
        vote(src, out["owner"])


class _Centred:
    """Rows of the colour histograms, centred on their mean and made unit length, on the fly."""

    def __init__(self, rows, mean):
        self.rows, self.mean = rows, mean

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, s):
        c = self.rows[s] - self.mean
        c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-9
        return c


class _View:
    """Rows of the 24 px layout thumbnails turned `turns` quarter turns (then mirrored), flat."""

    def __init__(self, rows, turns, mirrored):
        self.rows, self.turns, self.mirrored = rows, turns, mirrored

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, s):
        t = np.rot90(np.asarray(self.rows[s]).reshape(-1, 24, 24), self.turns, axes=(1, 2))
        return (t[:, :, ::-1] if self.mirrored else t).reshape(len(t), -1)


def _column_mean(rows):
    """rows.mean(0) in float32, BLOCK rows at a time, summed in the same order as numpy's."""
    total = np.zeros(rows.shape[1], np.float32)
    for start in range(0, len(rows), neighbours.BLOCK):
        total = np.concatenate([total[None], rows[start:start + neighbours.BLOCK]]).sum(0)
    return total / len(rows)


def _candidates(store, shard=SHARD, work=None):
    """Candidate pairs (i < j), sorted: each image's nearest neighbours by colour, by layout
    (any of 8 views) and by keypoint votes."""
    n = store.n
    colour = _Centred(store.colour, _column_mean(store.colour))
    views = [_View(store.layout, r, m) for m in (False, True) for r in range(4)]
    method = neighbours.default_method()
    wide, narrow = Store.FIXED["colour"], Store.FIXED["layout"]  # narrow rows: more of them an index
    found = [neighbours.top_k(colour, COLOUR_CANDIDATES, method=method, shard=shard),
             neighbours.top_k(views[0], CANDIDATES, views[1:], method=method, shard=shard * wide // narrow)]
    i = np.concatenate([np.repeat(np.arange(n), f.shape[1]) for f in found])
    j = np.concatenate([f.ravel() for f in found])
    votes = _vote_top_k(store, VOTE_CANDIDATES, shard, work)
    i, j = np.concatenate([i, votes[:, 0]]), np.concatenate([j, votes[:, 1]])
    codes = np.unique(np.minimum(i, j) * n + np.maximum(i, j))  # as sorted (i, j)
    return np.stack([codes // n, codes % n], axis=1)


def _components(n, edges):
    if not edges:
        return np.arange(n)
    i, j = np.array(edges).T
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


class _Groups:
    """Union-find over image indices: which images are already known to be one group."""

    def __init__(self, n):
        self.parent = list(range(n))

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i, j):
        self.parent[self.find(i)] = self.find(j)


def _near_edges(store, candidates, exact_edges, workers, progress):
    """The candidate pairs that are near copies. A pair whose images are already joined
    through other pairs is skipped: it cannot change the groups, and checking it costs.
    Each pair's two descriptions are read from the store when it is checked."""
    groups = _Groups(store.n)
    for i, j in exact_edges:
        groups.join(i, j)

    def check(pair):
        inliers, agreement = near_copy(store.described(pair[0], True), store.described(pair[1], True))
        return inliers >= MIN_INLIERS and agreement >= MIN_DETAIL_AGREEMENT

    edges = []
    bar = _progress(None, len(candidates), "audit: matching", progress)
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(candidates), 64):
            batch = [(int(i), int(j)) for i, j in candidates[start:start + 64] if groups.find(i) != groups.find(j)]
            for pair, ok in zip(batch, pool.map(check, batch)):
                if ok:
                    edges.append(pair)
                    groups.join(*pair)
            if bar:
                bar.update(len(candidates[start:start + 64]))
    if bar:
        bar.close()
    return edges


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="image" if "read" in desc else "pair")


def _cue_table(items, info, groups, seed):
    """How well each file property alone predicts the class (group 5-fold CV) vs chance.
    `info`: Store.info (lists of width, height, format, mode and bytes per image)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    labels = np.array([it.label for it in items])
    widths, heights, formats, modes = info["width"], info["height"], info["format"], info["mode"]
    values = {
        "width": [[w] for w in widths],
        "height": [[h] for h in heights],
        "aspect": [[w / h] for w, h in zip(widths, heights)],
        "file format": [[f == x for x in sorted(set(formats))] for f in formats],
        "colour mode": [[m == x for x in sorted(set(modes))] for m in modes],
        "file size": [[np.log(b)] for b in info["bytes"]],
    }
    values["all of these"] = [sum(row, []) for row in zip(*(map(list, v) for v in values.values()))]
    chance = Counter(labels).most_common(1)[0][1] / len(labels)
    n_groups = min(len({g for g, lab in zip(groups, labels) if lab == c}) for c in set(labels))
    folds = min(5, n_groups)
    kinds = {"width": widths, "height": heights, "aspect": [round(w / h, 2) for w, h in zip(widths, heights)],
             "file format": formats, "colour mode": modes}
    cues = []
    for name, x in values.items():
        row = {"cue": name, "chance": round(chance, 4)}
        if folds < 2 or len(set(labels)) < 2:
            row["accuracy"] = None
        else:
            cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
            tree = DecisionTreeClassifier(max_depth=4, min_samples_leaf=3, random_state=seed)
            pred = cross_val_predict(tree, np.asarray(x, np.float64), labels, groups=groups, cv=cv)
            row["accuracy"] = round(float((pred == labels).mean()), 4)
        # One class (a folder of one kind, as known_wrong_data reads): nothing to give away.
        row["give_aways"] = _give_aways(kinds.get(name, []), labels) if len(set(labels)) > 1 else []
        given = sum(g["images"] for g in row["give_aways"])
        row["warning"] = bool((row["accuracy"] is not None and row["accuracy"] - chance >= SHORTCUT_MARGIN)
                              or given >= max(GIVE_AWAY_MIN, 0.02 * len(labels)))
        cues.append(row)
    return cues


def _give_aways(values, labels):
    """Values of a cue that at least GIVE_AWAY_MIN images share, all of one class."""
    if len(set(values)) < 2:
        return []
    by_value = {}
    for v, lab in zip(values, labels):
        by_value.setdefault(v, []).append(lab)
    return [{"value": v, "class": labs[0], "images": len(labs)} for v, labs in sorted(by_value.items(), key=str)
            if len(labs) >= GIVE_AWAY_MIN and len(set(labs)) == 1 and len(labs) < len(labels)]


def run(root, items=None, progress=True, seed=0, groups_file=None, work=None, shard=SHARD):
    """Audit the images under root -> dict, ready for JSON.

    `groups_file`: a CSV `path,group` whose groups are joined with the audit's (see the top).
    `work`: where the per-image descriptions go while it runs (a temporary folder in it,
    deleted at the end; default: the system's, TMPDIR), about 0.2 MB an image. `shard`:
    images per nearest-neighbour index (memory holds one; see Store and _candidates).

    Keys: images, items (path, label, published split per image, readable ones only),
    group (one id per readable item: the first path of its group), unreadable,
    exact_duplicate_groups, near_duplicate_groups, cross_class_groups, cross_split_groups,
    shortcut_cues, group_sizes, fingerprint, warnings, summary, seconds.
    """
    t0 = time.time()
    items = scan(root) if items is None else items
    scanned = {it.path for it in items}
    workers = max(1, min(4, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="audit-", dir=work) as folder:
        store = Store(folder)
        items, unreadable = _describe_all(root, items, store, workers, progress)
        store.close()
        timings = {"reading": time.time() - t0}
        n = len(items)
        if n == 0:
            raise DataError(f"No readable images in {root}.")
        sha = store.info["sha256"]
        by_sha = {}
        for i, h in enumerate(sha):
            by_sha.setdefault(h, []).append(i)
        exact = [g for g in by_sha.values() if len(g) > 1]
        edges = [(g[0], j) for g in exact for j in g[1:]]
        content = np.array([by_sha[h][0] for h in sha])  # one id per distinct file content

        candidates = _candidates(store, shard, folder)
        candidates = candidates[content[candidates[:, 0]] != content[candidates[:, 1]]]
        timings["candidates"] = time.time() - t0 - sum(timings.values())
        thumb_edges = [(int(i), int(j)) for i, j in _thumb_edges(store, candidates)]
        near_edges = thumb_edges + _near_edges(store, candidates, edges + thumb_edges, workers, progress)
        timings["matching"] = time.time() - t0 - sum(timings.values())
        info = store.info
        store.release()
    comp = _components(n, edges + near_edges)
    group_file = None
    if groups_file:
        file_groups, group_file = read_group_file(groups_file, scanned)
        index = {it.path: i for i, it in enumerate(items)}
        file_groups = [[index[p] for p in g if p in index] for g in file_groups]  # readable ones
        file_edges = [(g[0], j) for g in file_groups for j in g[1:]]
        before = len(set(comp))
        comp = _components(n, edges + near_edges + file_edges)
        group_file["groups_merged"] = before - len(set(comp))  # audit groups joined into others

    members = {}
    for i, c in enumerate(comp):
        members.setdefault(c, []).append(i)
    group_of = {c: items[m[0]].path for c, m in members.items()}  # items are sorted by path
    group = [group_of[c] for c in comp]
    multi = [m for m in members.values() if len(m) > 1]
    paths = lambda gs: [[items[i].path for i in g] for g in gs]  # noqa: E731
    near = [m for m in multi if len({sha[i] for i in m}) > 1]
    cross_class = [m for m in multi if len({items[i].label for i in m}) > 1]
    cross_split = [m for m in multi if all(items[i].published_split for i in m)
                   and len({items[i].published_split for i in m}) > 1]
    cues = _cue_table(items, info, group, seed)
    timings["shortcut cues"] = time.time() - t0 - sum(timings.values())

    fp = hashlib.sha256("\n".join(f"{it.path},{it.label},{h}" for it, h in zip(items, sha)).encode())
    sizes = Counter(len(m) for m in members.values())
    largest = max(sizes)
    warnings = []
    if cross_class:
        warnings.append(f"{len(cross_class)} groups of copies carry more than one label "
                        f"({sum(map(len, cross_class))} images): fix the labels, or drop them")
    if cross_split:
        warnings.append(f"{len(cross_split)} groups of copies sit in more than one published split "
                        f"({sum(map(len, cross_split))} images): a published split leaks")
    if exact:
        warnings.append(f"{len(exact)} groups of byte-identical files ({sum(map(len, exact)) - len(exact)} extra copies)")
    if near:
        warnings.append(f"{len(near)} groups of near copies ({sum(map(len, near))} images; largest {largest}): "
                        "rotated/flipped/cropped/re-encoded copies or neighbouring slices")
    for c in cues:
        if c["warning"] and c["cue"] != "all of these":
            given = "; ".join(f"{g['value']} -> {g['class']} ({g['images']} images)" for g in c["give_aways"][:4])
            warnings.append(f"shortcut: {c['cue']} alone predicts the class with accuracy "
                            f"{c['accuracy']:.2f} (chance {c['chance']:.2f})" + (f"; give-aways: {given}" if given else ""))
    if largest > max(50, 0.1 * n):
        warnings.append(f"the largest group holds {largest} of {n} images: check that distinct "
                        "images were not joined (see the figures)")
    if unreadable:
        warnings.append(f"{len(unreadable)} files could not be read and are left out")
    if group_file and group_file["paths_unknown"]:
        warnings.append(f"group file {group_file['file']}: {group_file['paths_unknown']} paths are not "
                        f"in {root} (e.g. {', '.join(group_file['unknown_examples'][:3])}); they are ignored")
    return {
        "data": os.path.abspath(root),
        "images": n,
        "classes": sorted({it.label for it in items}),
        "items": [{"path": it.path, "label": it.label, "published_split": it.published_split} for it in items],
        "group": group,
        "unreadable": unreadable,
        "exact_duplicate_groups": paths(exact),
        "near_duplicate_groups": paths(near),
        "cross_class_groups": paths(cross_class),
        "cross_split_groups": paths(cross_split),
        "shortcut_cues": cues,
        "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "groups": len(members),
        "candidate_pairs": len(candidates),
        "near_identical_pairs": len(thumb_edges),
        "group_file": group_file,
        "fingerprint": fp.hexdigest(),
        "warnings": warnings,
        "summary": f"{n} images in {len(set(it.label for it in items))} classes, {len(members)} groups "
                   f"after grouping exact and near copies (largest {largest})"
                   + (f" and the group file {group_file['file']} ({group_file['groups']} groups, "
                      f"{group_file['groups_merged']} audit groups merged by it)." if group_file else "."),
        "seconds": round(time.time() - t0, 1),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }


def summary(report):
    """The audit's findings in a few numbers, for metadata.json and the model card."""
    keys = ("exact_duplicate_groups", "near_duplicate_groups", "cross_class_groups", "cross_split_groups")
    return {"summary": report["summary"], "warnings": report["warnings"], "images": report["images"],
            "groups": report["groups"], "fingerprint": report["fingerprint"],
            **{k: len(report[k]) for k in keys},
            "shortcut_cues": {c["cue"]: {"accuracy": c["accuracy"], "chance": c["chance"]}
                              for c in report["shortcut_cues"]},
            "group_file": report.get("group_file"),
            "method": "sha256 + SIFT affine match (>= %d inliers) with aligned-detail check (>= %.2f) "
                      "+ %d px grey thumbnails correlating >= %.2f" % (MIN_INLIERS, MIN_DETAIL_AGREEMENT,
                                                                      THUMB_SIDE, MIN_THUMB_CORRELATION)
                      + (" + a group file" if report.get("group_file") else "")}


def make_split(report, val_fraction=0.15, test_fraction=0.15, seed=0, keep_published=False):
    """The split training uses -> (rows of path,label,group,split, info)."""
    labels = [it["label"] for it in report["items"]]
    published = [it["published_split"] for it in report["items"]]
    splits, info = splitting.assign(labels, report["group"], published, val_fraction, test_fraction,
                                    seed, keep_published)
    rows = [(it["path"], it["label"], g, s) for it, g, s in zip(report["items"], report["group"], splits)]
    info["counts"] = splitting.counts(labels, report["group"], splits)
    info["fingerprint"] = splitting.fingerprint(rows)
    return rows, info


# ---------------------------------------------------------------- the written report

def _worst(report):
    """Groups worth a look, worst first: label conflicts, leaks, then the largest."""
    seen, out = set(), []
    for key, why in (("cross_class_groups", "labels differ"), ("cross_split_groups", "crosses the published split"),
                     ("near_duplicate_groups", "near copies"), ("exact_duplicate_groups", "identical files")):
        for g in sorted(report[key], key=len, reverse=True):
            if tuple(g) not in seen:
                seen.add(tuple(g))
                out.append((why, g))
    return out[:WORST_GROUPS_SHOWN]


def _contact_sheet(report, group, path, title):
    from PIL import Image, ImageDraw

    index = {it["path"]: i for i, it in enumerate(report["items"])}
    shown = group[:12]
    cell, cols = 128, min(6, len(shown))
    rows = (len(shown) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14) + 16), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 2), title[:120], fill="black")
    for k, p in enumerate(shown):
        it = report["items"][index[p]]
        try:
            thumb = Image.fromarray(read_rgb(os.path.join(report["data"], p)))
        except ImageError:
            continue
        thumb.thumbnail((cell - 4, cell - 4))
        x, y = (k % cols) * cell, 16 + (k // cols) * (cell + 14)
        sheet.paste(thumb, (x + 2, y))
        draw.text((x + 2, y + cell - 2), f"{it['label'][:12]} {it['published_split'] or ''}".strip(), fill="black")
    sheet.save(path)


def _md_groups(groups, report, limit=10):
    label = {it["path"]: (it["label"], it["published_split"]) for it in report["items"]}
    lines = []
    for g in sorted(groups, key=len, reverse=True)[:limit]:
        files = ", ".join(f"`{p}` ({label[p][0]}{', ' + label[p][1] if label[p][1] else ''})" for p in g[:8])
        lines.append(f"- {len(g)} images: {files}" + (f", and {len(g) - 8} more" if len(g) > 8 else ""))
    if len(groups) > limit:
        lines.append(f"- ... and {len(groups) - limit} more groups (all in `audit.json`)")
    return lines


def write(report, rows, split_info, out):
    """Write audit.md, audit.json, split.csv and figures/ into out."""
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    with open(os.path.join(out, "split.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "split"])
        w.writerows(rows)
    figures = []
    for k, (why, g) in enumerate(_worst(report), 1):
        name = f"figures/group_{k:02d}.png"
        _contact_sheet(report, g, os.path.join(out, name), f"{why}: {len(g)} images")
        figures.append((why, len(g), name))
    data = {k: v for k, v in report.items() if k not in ("items", "group")}
    data["split"] = split_info
    data["figures"] = [name for _, _, name in figures]
    with open(os.path.join(out, "audit.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out, "audit.md"), "w") as f:
        f.write(_markdown(report, split_info, figures))


def _markdown(report, split_info, figures):
    r = report
    L = [f"# Data audit: `{r['data']}`", "", r["summary"] + f" Audited in {r['seconds']} s.", ""]
    gf = r.get("group_file")
    if gf:
        L += [f"Group file `{gf['file']}` (sha256 `{gf['sha256'][:16]}`): {gf['rows']} rows, {gf['groups']} groups; "
              f"it merged {gf['groups_merged']} of the audit's groups into others"
              + (f"; {gf['paths_unknown']} of its paths are not in the data folder and were ignored "
                 f"(e.g. {', '.join(f'`{p}`' for p in gf['unknown_examples'][:3])})" if gf["paths_unknown"] else "")
              + ".", ""]
    L += ["## Problems, most serious first", ""]
    problems = 0
    if r["cross_class_groups"]:
        problems += 1
        L += [f"### Label conflicts: {len(r['cross_class_groups'])} groups of copies carry more than one label", "",
              "The same image (or a near copy, or a neighbouring slice of the same scan) is filed under "
              "two classes. Training stops on these until you fix the labels or pass `--drop-conflicts`.", ""]
        L += _md_groups(r["cross_class_groups"], r) + [""]
    if r["cross_split_groups"]:
        problems += 1
        leak = split_info.get("published_leaks", {})
        L += [f"### The published split leaks: {len(r['cross_split_groups'])} groups "
              f"({leak.get('images', '?')} images) sit on more than one side", "",
              "Scores measured on this split are inflated: the model is tested on copies of what it "
              "trained on. The split below is made again by group, unless you pass "
              "`--keep-published-split` (then the leak is printed in the report and the model card).", ""]
        L += _md_groups(r["cross_split_groups"], r) + [""]
    cues = [c for c in r["shortcut_cues"] if c["warning"] and c["cue"] != "all of these"]
    if cues:
        problems += 1
        L += ["### Shortcut cues: file properties give the class away", "",
              "A model can learn these instead of the disease. Bring the classes to the same size, "
              "format and colour mode (or check the model on data where they match).", ""]
    L += ["| cue | accuracy from this alone | chance (largest class) | values that give the class away | warning |",
          "| --- | --- | --- | --- | --- |"]
    for c in r["shortcut_cues"]:
        acc = "n/a" if c["accuracy"] is None else f"{c['accuracy']:.3f}"
        given = "; ".join(f"{g['value']} -> {g['class']} ({g['images']})" for g in c["give_aways"][:4]) or "-"
        L.append(f"| {c['cue']} | {acc} | {c['chance']:.3f} | {given} | {'**yes**' if c['warning'] else 'no'} |")
    L += ["", "Accuracy: a depth-4 decision tree on the cue alone, 5-fold cross-validated by group. "
          "A warning means at least 10 points above chance, or values that only one class has covering "
          "2% of the images. File size also reflects what is in the image (a JPEG of plain tissue is "
          "smaller), so a small lift there can be content rather than a shortcut.", ""]
    if r["near_duplicate_groups"] or r["exact_duplicate_groups"]:
        problems += 1
        L += [f"### Copies: {len(r['exact_duplicate_groups'])} groups of identical files, "
              f"{len(r['near_duplicate_groups'])} groups of near copies", "",
              "Copies inflate a random split. They are kept together on one side of the split below, "
              "so no copy of a test image is trained on.", ""]
        L += ["Identical files:"] + (_md_groups(r["exact_duplicate_groups"], r, 5) or ["- none"]) + [""]
        L += ["Near copies (largest first):"] + (_md_groups(r["near_duplicate_groups"], r, 5) or ["- none"]) + [""]
    if r["unreadable"]:
        problems += 1
        L += [f"### {len(r['unreadable'])} files could not be read", ""]
        L += [f"- `{u['path']}`: {u['reason']}" for u in r["unreadable"][:20]] + [""]
    if not problems:
        L += ["None found.", ""]
    if figures:
        L += ["### The worst groups", ""] + [f"- {why}, {n} images: ![{name}]({name})" for why, n, name in figures] + [""]
    L += ["## Counts", "", "| class | " + " | ".join(_splits_present(r)) + " | all |",
          "| --- |" + " --- |" * (len(_splits_present(r)) + 1)]
    for lab in r["classes"]:
        row = [sum(1 for it in r["items"] if it["label"] == lab and (it["published_split"] or "-") == s)
               for s in _splits_present(r)]
        L.append(f"| {lab} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    L += ["", "Group sizes (size: how many groups): " + ", ".join(f"{k}: {v}" for k, v in r["group_sizes"].items()), ""]
    L += ["## The split (`split.csv`)", "", f"{split_info['method']}; seed {split_info['seed']}; "
          f"fingerprint `{split_info['fingerprint'][:16]}`.", ""]
    if split_info.get("warning"):
        L += [f"> **WARNING: {split_info['warning']}**", ""]
    L += ["| split | images | groups | per class |", "| --- | --- | --- | --- |"]
    for s, c in split_info["counts"].items():
        L.append(f"| {s} | {c['images']} | {c['groups']} | " + ", ".join(f"{k} {v}" for k, v in c["per_class"].items()) + " |")
    L += ["", "## Method", "", __doc__.split("How copies are found", 1)[1].split("\n", 1)[1].strip(), ""]
    return "\n".join(L)


def _splits_present(r):
    return [s for s in ("train", "val", "test", "-") if any((it["published_split"] or "-") == s for it in r["items"])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*")
    p.add_argument("--out", required=True, help="folder for audit.md, audit.json, split.csv, figures/")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of groups for validation (default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of groups for test (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--keep-published-split", action="store_true",
                   help="keep a published train/valid/test split even when copies cross it (warned loudly)")
    p.add_argument("--groups", metavar="FILE", help="CSV path,group (paths relative to DATA_DIR, e.g. patient "
                   "or scan ids): images sharing a group stay together, joined with what the audit finds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    with cli_errors():
        report = run(args.data, progress=not args.quiet, seed=args.seed, groups_file=args.groups)
        rows, info = make_split(report, args.val_fraction, args.test_fraction, args.seed, args.keep_published_split)
        write(report, rows, info, args.out)
    print(report["summary"], f"({report['seconds']} s)")
    for w in report["warnings"]:
        print("WARNING:", w)
    if info.get("warning"):
        print("WARNING:", info["warning"])
    print(f"split: {info['method']}")
    for s, c in info["counts"].items():
        print(f"  {s:5s} {c['images']:6d} images in {c['groups']:5d} groups")
    print(f"wrote {os.path.join(args.out, 'audit.md')}, audit.json, split.csv, figures/")
    return report


if __name__ == "__main__":
    main()
