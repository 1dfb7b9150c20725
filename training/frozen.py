"""Frozen features: a pretrained backbone's pooled features, computed once, and a logistic
regression on them, scored by group k-fold. Both training (recipes with method = "frozen")
and the selection (training/select.py) use it, and every training prints its baseline.

    feats, stats = features(spec, data_dir, paths, views)   # cached on disk, streamed in batches
    files, _ = feature_files(spec, data_dir, paths, views)  # the same, left on disk (read_rows, row_blocks)
    scores = cross_validate(feats, y, groups, folds=5, seeds=2, C=0.1)
    W, b = fit_head(feats, y, rows, C)                        # folded into the Keras Dense layer

Features: the network's input is what the app feeds (lungclf.preprocess.load_image, the one
preprocessing path), up to its global average pool; each `view` (lungclf.inference.VIEWS,
e.g. flip_lr) is the same image mirrored or turned. They are cached under
$LUNGCLF_CACHE (default ~/.cache/lungclf/features), keyed by the image files' paths and
the data fingerprint, the network and the view, so a second run or candidate reuses them.
Images are decoded batch by batch and each batch's features appended to their file, so
computing them holds one batch; `features` then loads them whole (the selection and frozen
recipes fit on every view), while the baseline beside a training run reads only the rows it
needs (read_rows), so its memory does not grow with the data set.

Interval: the 95% interval of macro-F1 is a percentile bootstrap over GROUPS of the pooled
out-of-fold predictions (1000 resamples), so a scan's slices or a tile's copies are drawn
together; the difference to the baseline uses the same resamples (paired).
"""

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP = 1000


@dataclass(frozen=True)
class Spec:
    """The frozen network a feature set comes from."""

    arch: str  # "lite0", "lite2"
    weights: str  # "efficientnet-lite0", "efficientnet-lite2"
    image_size: int
    colour_mode: str  # "rgb" or "grey"
    blocks: int | None = None

    @classmethod
    def of(cls, config):
        return cls(config.arch, config.weights, config.image_size, config.colour_mode, config.blocks)

    def text(self):
        cut = f" cut after block {self.blocks}" if self.blocks else ""
        return f"{self.weights}{cut} at {self.image_size} px {self.colour_mode}"


# The frozen-feature baseline: whole ImageNet EfficientNet-Lite0 at its native 224 px, pooled
# features of the image as it is, a logistic regression with C 0.1.
BASELINE = Spec("lite0", "efficientnet-lite0", 224, "rgb")
BASELINE_C = 0.1


def baseline_spec(colour_mode):
    """The baseline's network for a data set of this colour mode."""
    return Spec(BASELINE.arch, BASELINE.weights, BASELINE.image_size, colour_mode)


# ---------------------------------------------------------------- features

def cache_dir():
    return os.environ.get("LUNGCLF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lungclf", "features")


def _key(spec, data_key, paths, view):
    text = json.dumps({"spec": asdict(spec), "data": data_key, "paths": list(paths), "view": view, "v": 1})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def feature_model(spec, n_classes=2):
    """The backbone up to its pooled features (a Keras model) and the whole classifier."""
    import keras

    from training.model import build

    model = build(spec.arch, spec.image_size, n_classes, colour_mode=spec.colour_mode, weights=spec.weights,
                  blocks=spec.blocks)
    return keras.Model(model.inputs[0], model.layers[-1].input), model


def feature_files(spec, data_dir, paths, views=("identity",), data_key="", batch_size=32, log=print):
    """({view: path of its cached (N, D) float32 .npy}, path of the pixel statistics (N, 8))
    of the images data_dir/paths, computing what the cache lacks. Each batch's features are
    appended to their file as they come, so memory holds one batch, never the whole array.
    Unreadable files raise DataError."""
    from lungclf.inference import VIEWS
    from lungclf.preprocess import ImageError, load_image
    from lungclf.wrong_input import pixel_stats
    from training.errors import DataError

    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    files = {v: os.path.join(folder, _key(spec, data_key, paths, v) + ".npy") for v in views}
    stats_file = os.path.join(folder, _key(spec, data_key, paths, "pixel-stats") + ".npy")
    todo = [v for v in views if not os.path.exists(files[v])]
    if todo or not os.path.exists(stats_file):
        net, _ = feature_model(spec)
        forward = _traced(net, spec.image_size)
        out = {v: open(files[v] + ".part", "wb") for v in todo}
        stats = []
        t0 = time.time()
        try:  # each view's file is written as .part and renamed once whole
            for i in range(0, len(paths), batch_size):
                batch = []
                for p in paths[i:i + batch_size]:
                    try:
                        batch.append(load_image(os.path.join(data_dir, p), spec.image_size))
                    except ImageError as e:
                        raise DataError(f"{p}: {e}") from None
                x = np.stack(batch).astype(np.float32)
                stats.append(pixel_stats(x))
                for v in todo:
                    f = np.asarray(forward(np.ascontiguousarray(VIEWS[v](x))), "<f4")
                    if i == 0:  # the .npy header, once the width is known
                        np.lib.format.write_array_header_1_0(out[v], {
                            "descr": "<f4", "fortran_order": False, "shape": (len(paths), f.shape[1])})
                    out[v].write(f.tobytes())
                done = min(i + batch_size, len(paths))
                if log and (done == len(paths) or (i // batch_size) % 10 == 9):
                    log(f"  features {spec.text()}, views {','.join(todo) or '-'}: {done}/{len(paths)} images "
                        f"({time.time() - t0:.0f} s)")
        except BaseException:
            for v in todo:
                out[v].close()
                os.remove(files[v] + ".part")
            raise
        for f in out.values():
            f.close()
        for v in todo:
            os.replace(files[v] + ".part", files[v])
        np.save(stats_file, np.concatenate(stats))
    return files, stats_file


def features(spec, data_dir, paths, views=("identity",), data_key="", batch_size=32, log=print):
    """(features (V, N, D) float32 for each view, pixel statistics (N, 8)) of the images
    data_dir/paths, in memory, from the cache where present (feature_files)."""
    files, stats_file = feature_files(spec, data_dir, paths, views, data_key, batch_size, log)
    return np.stack([np.load(files[v]) for v in views]), np.load(stats_file)


def row_blocks(path, rows, chunk=4096):
    """The rows `rows` (sorted indices) of a cached (N, D) .npy, read from the file `chunk`
    rows at a time, in order: yields (start, end, array) with array = the rows rows[start:end].
    One pass over the file, blocks without a row skipped; memory for one block (a memory map
    would keep every page it touched resident, and ru_maxrss counts them)."""
    rows = np.asarray(rows)
    with open(path, "rb") as f:
        shape, dtype = _npy_header(f)
        start, width = f.tell(), shape[1] * dtype.itemsize
        for lo in range(0, shape[0], chunk):
            a, b = np.searchsorted(rows, [lo, lo + chunk])
            if a == b:
                continue
            f.seek(start + lo * width)
            block = np.fromfile(f, dtype, min(chunk, shape[0] - lo) * shape[1]).reshape(-1, shape[1])
            yield int(a), int(b), block[rows[a:b] - lo]


def read_rows(path, rows, chunk=4096):
    """The rows `rows` (sorted indices) of a cached (N, D) .npy as one array (row_blocks):
    memory for the rows asked for and one block, not the whole file."""
    out = None
    for a, b, block in row_blocks(path, rows, chunk):
        if out is None:
            out = np.empty((len(rows), block.shape[1]), block.dtype)
        out[a:b] = block
    if out is None:  # no rows asked for: the file's width, from its header
        with open(path, "rb") as f:
            shape, dtype = _npy_header(f)
        out = np.empty((0, shape[1]), dtype)
    return out


def _npy_header(f):
    """(shape, dtype) of the .npy file f, left at the start of its data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


def _traced(net, size):
    import tensorflow as tf

    return tf.function(lambda x: net(x, training=False),
                       input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])


# ---------------------------------------------------------------- the head and its folds

def fit_head(feats, y, rows, C, seed=0):
    """A logistic regression (standardised features, balanced class weights) on `rows` of
    every view in feats (V, N, D) -> (W (D, K), b (K,)) in the raw features' units, so that
    logits = features @ W + b: the Keras Dense layer's kernel and bias."""
    from sklearn.linear_model import LogisticRegression

    rows = np.asarray(rows)
    n = len(rows)
    f = np.empty((feats.shape[0] * n, feats.shape[-1]))  # float64, filled view by view: one copy
    for v in range(feats.shape[0]):
        f[v * n:(v + 1) * n] = feats[v, rows]
    t = np.tile(np.asarray(y)[rows], feats.shape[0])
    mu, sd = f.mean(axis=0), f.std(axis=0) + 1e-6
    f -= mu  # standardised in place (the same arithmetic as (f - mu) / sd, without two more copies)
    f /= sd
    lr = LogisticRegression(C=C, max_iter=3000, class_weight="balanced", random_state=seed)
    lr.fit(f, t)
    coef, intercept = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row; make it a softmax pair
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    W = (coef / sd).T
    b = intercept - (mu / sd) @ coef.T
    return W.astype(np.float32), b.astype(np.float32)


def cross_validate(feats, y, groups, folds=5, seeds=2, C=0.1, seed=0):
    """Group k-fold over `seeds` fold assignments -> {"logits": (seeds, N, K) out-of-fold
    logits of the identity view, "fold_f1": [macro-F1 of each held-out fold], "folds":
    [(seed, k, test indices)]}."""
    from sklearn.metrics import f1_score

    from training.split import group_folds

    y, groups = np.asarray(y), np.asarray(groups)
    n_classes = int(y.max()) + 1
    logits = np.zeros((seeds, len(y), n_classes), np.float32)
    f1s, where = [], []
    for s in range(seeds):
        for k, (train, test) in enumerate(group_folds(y, groups, folds, seed + s)):
            W, b = fit_head(feats, y, train, C, seed)
            logits[s, test] = feats[0, test] @ W + b
            f1s.append(float(f1_score(y[test], logits[s, test].argmax(1), labels=np.arange(n_classes),
                                      average="macro", zero_division=0)))
            where.append((s, k, test))
    return {"logits": logits, "fold_f1": f1s, "folds": where}


def bootstrap_f1(y, preds, groups, reps=BOOTSTRAP, seed=0):
    """Macro-F1 of each prediction set in `preds` (list of (N,) arrays) over `reps` resamples
    of the groups (with replacement) -> array (reps, len(preds)), the same resamples for all."""
    from sklearn.metrics import f1_score

    y, groups = np.asarray(y), np.asarray(groups)
    ids, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(ids))]
    rng = np.random.default_rng(seed)
    labels = np.unique(y)
    out = np.zeros((reps, len(preds)))
    for r in range(reps):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(ids), len(ids))])
        for j, p in enumerate(preds):
            out[r, j] = f1_score(y[rows], p[rows], labels=labels, average="macro", zero_division=0)
    return out


def summary(y, groups, cv, baseline_cv=None):
    """The estimate a card and the selection print: mean and spread over folds, pooled
    out-of-fold macro-F1 with its 95% group-bootstrap interval, and (with baseline_cv) the
    paired difference to the baseline with its interval."""
    from sklearn.metrics import f1_score

    y = np.asarray(y)
    pred = cv["logits"][0].argmax(1)
    pooled = float(f1_score(y, pred, average="macro", zero_division=0))
    preds = [pred] + ([baseline_cv["logits"][0].argmax(1)] if baseline_cv else [])
    boot = bootstrap_f1(y, preds, groups)
    f1 = np.asarray(cv["fold_f1"])
    out = {"folds": len(f1), "fold_macro_f1": [round(v, 4) for v in f1],
           "mean": round(float(f1.mean()), 4), "std": round(float(f1.std(ddof=1)), 4),
           "pooled_macro_f1": round(pooled, 4),
           "interval95": [round(float(v), 4) for v in np.percentile(boot[:, 0], [2.5, 97.5])],
           "interval": "95% percentile bootstrap over groups of the pooled out-of-fold predictions"}
    if baseline_cv:
        diff = boot[:, 0] - boot[:, 1]
        base = np.asarray(baseline_cv["fold_f1"])
        out["baseline"] = {"mean": round(float(base.mean()), 4), "std": round(float(base.std(ddof=1)), 4),
                           "pooled_macro_f1": round(float(f1_score(y, preds[1], average="macro",
                                                                   zero_division=0)), 4),
                           "interval95": [round(float(v), 4) for v in np.percentile(boot[:, 1], [2.5, 97.5])]}
        out["minus_baseline"] = {"mean": round(float(f1.mean() - base.mean()), 4),
                                 "interval95": [round(float(v), 4) for v in np.percentile(diff, [2.5, 97.5])]}
    return out


def describe(s):
    """One line: 'macro-F1 0.912 (folds 0.905 +- 0.031; 95% 0.88-0.94)'."""
    lo, hi = s["interval95"]
    return (f"macro-F1 {s['pooled_macro_f1']:.3f} pooled out-of-fold (95% {lo:.3f}-{hi:.3f}); "
            f"folds {s['mean']:.3f} +- {s['std']:.3f} over {s['folds']}")


# ---------------------------------------------------------------- a frozen recipe, trained

def hold_out_examples(prepared, n, seed=0):
    """`prepared` with the groups of up to n example images (round-robin over classes,
    seeded, from the smallest groups, so that few images leave the fit) marked "test" and
    every other image "train": the shipped model is fitted on all but these, so the
    examples in the bundle are images it never saw."""
    import collections
    import dataclasses

    rng = np.random.default_rng(seed)
    y, groups = np.asarray(prepared.y), np.asarray(prepared.groups)
    size = collections.Counter(groups.tolist())
    by_class = {c: sorted((int(i) for i in rng.permutation(np.flatnonzero(y == c))), key=lambda i: size[groups[i]])
                for c in np.unique(y)}
    held, picked = set(), 0
    while picked < n and any(by_class.values()):
        for c in sorted(by_class):
            while by_class[c] and picked < n:
                i = by_class[c].pop(0)
                if groups[i] not in held:
                    held.add(groups[i])
                    picked += 1
                    break
    split = np.where(np.isin(groups, list(held)), "test", "train")
    return dataclasses.replace(prepared, split=split)


def train(recipe, out, prepared, pre, config, command=""):
    """Features once; group k-fold estimate beside the baseline's; temperature and the
    wrong-input threshold from out-of-fold logits and distances; the head refitted on every
    group but the examples'; the bundle written -> its metadata."""
    import dataclasses as dc

    from lungclf.inference import calibrate
    from training import steps, wrong_input
    from training.datatypes import Results
    from training.evaluate import fit_temperature, metrics

    t0 = time.time()
    spec = Spec.of(config)
    y, groups = np.asarray(prepared.y), list(prepared.groups)
    data_key = prepared.report["fingerprint"]
    print(f"frozen features: {spec.text()}, views {', '.join(recipe.views)}")
    feats, stats = features(spec, prepared.data_dir, prepared.paths, recipe.views, data_key)
    cv = cross_validate(feats, y, groups, recipe.folds, recipe.fold_seeds, recipe.C, recipe.seed)
    base_spec = baseline_spec(config.colour_mode)
    if base_spec == spec and recipe.views == ["identity"] and recipe.C == BASELINE_C:
        base_cv = cv
    else:
        base_feats, _ = features(base_spec, prepared.data_dir, prepared.paths, ["identity"], data_key)
        base_cv = cross_validate(base_feats, y, groups, recipe.folds, recipe.fold_seeds, BASELINE_C, recipe.seed)
    estimate = summary(y, groups, cv, base_cv) | ({"is_baseline": True} if base_cv is cv else {})
    steps.print_against_baseline(estimate, None)

    oof = cv["logits"][0]
    temperature = fit_temperature(oof, y)
    probs = calibrate(oof, temperature)
    scores = metrics(probs, y, prepared.labels)
    fit_rows = np.flatnonzero(prepared.split == "train")
    W, b = fit_head(feats, y, fit_rows, recipe.C, recipe.seed)
    _, model = feature_model(spec, len(prepared.labels))
    model.layers[-1].set_weights([W, b])
    seconds = time.time() - t0
    results = Results(temperature=temperature, test=scores, val=None, test_probs=probs)
    all_data = dc.replace(prepared, split=np.full(len(y), "test"))  # the figures: every image, out of fold
    cross_validation = {
        "folds": recipe.folds, "seeds": recipe.fold_seeds, "seed": recipe.seed,
        "by": "group (copies and neighbouring slices stay in one fold)",
        "macro_f1": {"mean": estimate["mean"], "std": estimate["std"], "folds": estimate["fold_macro_f1"]},
        "estimate": estimate, "headline": "pooled out-of-fold predictions of the first fold assignment",
    }
    meta = steps.write_bundle(out, model, all_data, results, None, config, recipe=recipe, pre=pre,
                              seconds=seconds, cross_validation=cross_validation, command=command,
                              baseline=estimate.get("baseline"), split_prepared=prepared,
                              calibration="temperature scaling on the out-of-fold logits (group k-fold)")
    meta = wrong_input.fit_bundle_out_of_fold(out, model, prepared, recipe, feats[0], stats, cv["folds"],
                                              command=command, known=wrong_input.known_wrong(recipe, spec))
    print(f"wrote bundle {out} ({meta['model']['bytes'] / 1e6:.1f} MB model) in {seconds:.0f} s")
    return meta
