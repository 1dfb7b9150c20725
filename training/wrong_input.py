"""Fit a bundle's wrong-input check, measure it, and give the bundle its example images.

    python -m training.wrong_input models/lc25000
    python -m training.wrong_input models/chest_ct --ood-data ../shared/data/lc25000
    python -m training.wrong_input --help

For an existing bundle this recomputes its split from its recipe.json (the same audit and
split as training.train), checks the split's fingerprint against metadata.json and refuses
if they differ; flags override the recipe's wrong-input settings. Then:

  1. fits the reference of lungclf/wrong_input.py on the images the model was fitted on:
     class means of the penultimate features and one shared covariance with Ledoit-Wolf
     shrinkage (or wrong_input_shrinkage), accumulated in two passes over the features
     (class sums; then the centred scatter and fourth moment that Ledoit-Wolf's formula
     needs), which a streamed run keeps in a file on disk; the pixel statistics'
     mean and covariance (flagging beyond 1.25 x the largest training distance), and the
     colourfulness range of the images;
  2. sets the feature threshold so that wrong_input_quantile (default 5%) of images the
     reference has not seen is flagged by any of the checks: the VALIDATION split of a
     finetune bundle, the OUT-OF-FOLD distances (by group) of a frozen one;
  3. measures the share flagged on held-out images (false warnings), on synthetic wrong
     inputs made here (noise, flat, gradients, text) and on every ood_data folder (images
     of another kind: all files under it, up to ood_limit, seeded);
     A frozen recipe's known_wrong_data folders (images of a wrong kind, such as another
     CT data set) are learned too: each is one more class of the Gaussian model (its mean
     joins the reference; an image nearer to it than to every class mean is flagged), and
     each is measured out of fold by its groups;
  4. writes BUNDLE/wrong_input.npz, the `wrong_input` block of metadata.json, up to
     `examples` held-out images into BUNDLE/examples/ and re-renders the card.

Training calls `fit_bundle` (finetune) or `fit_bundle_out_of_fold` (frozen) after writing a bundle.
"""

import argparse
import os
import shlex
import shutil
import sys
import tempfile

import cv2
import numpy as np

from lungclf import schema
from lungclf.bundle import BundleError, verify, write_json
from lungclf.preprocess import IMAGE_EXTENSIONS, ImageError, load_image, resize
from lungclf.wrong_input import FILE, Reference, mahalanobis, pixel_stats
from training.errors import DataError, SplitMismatch, TrainingError, cli_errors
from training.recipe import repo_path

SYNTHETIC = ("noise", "flat", "gradients", "text")
WORDS = ("patient", "lung", "scan", "report", "2024", "CONFIDENTIAL", "slide 12", "hello", "logo", "A B C")
METHOD = ("colourfulness outside the training images' range; eight pixel statistics beyond the training "
          "images' largest Mahalanobis distance plus a quarter; Mahalanobis distance of the penultimate "
          "features to the nearest class mean (class-conditional Gaussians, one shared covariance with "
          "{how} shrinkage {s:.2f}, fitted on the training split) above the threshold at which {q:.0%} of the validation split is "
          "flagged by any of the three")


# ---------------------------------------------------------------- wrong inputs

def synthetic(kind, n, size, seed=0):
    """n images of a kind that is no medical image, made here, as the model's input
    (n, size, size, 3) float32 0..255: the same resize as any upload, from 256 x 256."""
    rng = np.random.default_rng(seed + SYNTHETIC.index(kind))
    side = 256
    out = []
    for i in range(n):
        grey = i % 2 == 1
        if kind == "noise":
            a = rng.uniform(0, 255, (side, side, 1 if grey else 3))
            if i % 4 >= 2:
                a = cv2.GaussianBlur(a.astype(np.float32), (0, 0), rng.uniform(1, 4)).reshape(side, side, -1)
        elif kind == "flat":
            a = np.full((side, side, 3), rng.uniform(0, 255, 1 if grey else 3))
        elif kind == "gradients":
            c0, c1 = rng.uniform(0, 255, (2, 1 if grey else 3))
            t = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[:side, :side] / side
            w = np.clip(np.cos(t) * xx + np.sin(t) * yy, 0, 1)[..., None]
            a = c0 * (1 - w) + c1 * w
        elif kind == "text":
            bg = np.full(3, 255.0) if grey else rng.uniform(0, 255, 3)
            a = np.ascontiguousarray(np.broadcast_to(bg, (side, side, 3))).astype(np.uint8)
            for line in range(rng.integers(2, 6)):
                colour = (0, 0, 0) if grey else tuple(int(v) for v in rng.uniform(0, 255, 3))
                cv2.putText(a, str(rng.choice(WORDS)), (int(rng.integers(0, 60)), 40 + 50 * line),
                            cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.8, 1.6)), colour, 2)
        else:
            raise ValueError(f"unknown synthetic kind {kind!r}; known: {SYNTHETIC}")
        a = np.clip(a, 0, 255).astype(np.uint8)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        out.append(resize(np.ascontiguousarray(a), size).astype(np.float32))
    return np.stack(out)


def folder_images(folder, size, limit=400, seed=0):
    """Up to `limit` images found anywhere under folder (seeded sample), as model input."""
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DataError(f"--ood-data {folder}: no images found under it")
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    out = []
    for p in paths:
        try:
            out.append(load_image(p, size))
        except ImageError:
            pass
    return np.stack(out)


# ---------------------------------------------------------------- fitting and measuring

def features(model, x, batch_size=64, forward=None):
    from lungclf.inference import predict_features

    return predict_features(model, np.asarray(x, np.float32), batch_size, forward)[1]


BLOCK = 2048  # feature rows read at a time: what the fit holds besides its (D, D) sums


def _blocks(n):
    return (slice(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK))


def class_moments(features, labels, n_classes):
    """First pass: (class means (C, D), counts) of `features` (N, D; an array, a memmap, or
    training.stream.Rows on disk), read BLOCK rows at a time in float64."""
    y = np.asarray(labels)
    sums = np.zeros((n_classes, features.shape[1]))
    for b in _blocks(len(y)):
        np.add.at(sums, y[b], np.asarray(features[b], np.float64))
    counts = np.bincount(y, minlength=n_classes)
    return sums / np.maximum(counts, 1)[:, None], counts


def centred_scatter(features, labels, means):
    """Second pass: (A, q, n): A = sum (x - mu_y)(x - mu_y)^T (D, D) and q = sum ||x - mu_y||^4
    over the rows, each centred on its class mean: all that Ledoit-Wolf needs."""
    y = np.asarray(labels)
    d = features.shape[1]
    scatter, quartic = np.zeros((d, d)), 0.0
    for b in _blocks(len(y)):
        x = np.asarray(features[b], np.float64) - means[y[b]]
        scatter += x.T @ x
        quartic += float(((x * x).sum(axis=1) ** 2).sum())
    return scatter, quartic, len(y)


def shrunk_covariance(scatter, quartic, n, shrinkage=None):
    """(covariance, shrinkage) from the centred scatter: scikit-learn's LedoitWolf(
    assume_centered=True) on the centred rows when `shrinkage` is None (its formula, from the
    moments instead of the rows), else ShrunkCovariance's convex combination with that
    shrinkage: (1 - s) S + s tr(S)/D I, S = A / n."""
    d = scatter.shape[0]
    emp = scatter / n
    mu = np.trace(emp) / d
    if shrinkage is None:
        if d == 1:
            shrinkage = 0.0
        else:
            delta_ = (emp ** 2).sum()  # ||A||_F^2 / n^2
            beta = (quartic / n - delta_) / (d * n)
            delta = (delta_ - 2.0 * mu * np.trace(emp) + d * mu ** 2) / d
            beta = min(beta, delta)
            shrinkage = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrinkage) * emp
    cov.flat[::d + 1] += shrinkage * mu
    return cov, float(shrinkage)


def fit(train_features, train_labels, train_stats, n_classes, modality="", shrinkage=None, others=()):
    """The reference, without its feature threshold: class means and shared shrinkage
    precision of the features (Ledoit-Wolf's own shrinkage, or `shrinkage` towards a scaled
    identity); mean, precision and threshold of the pixel statistics; colour range.
    `train_features` (N, D): an array, or rows on disk (split_features with a folder):
    read in two passes of BLOCK rows (class means, then the centred scatter and fourth
    moment), so memory holds (D, D) sums, never the rows. `train_stats`: the training images'
    pixel statistics (lungclf.wrong_input.pixel_stats), 8 numbers an image. `others`:
    [(name, features (n, D))] of known wrong kinds: each is one more class of the Gaussian
    model (its mean joins the reference as a wrong kind's, its rows the shared covariance).
    Returns (reference, the shrinkage used)."""
    from scipy.linalg import pinvh
    from sklearn.covariance import LedoitWolf

    y = np.asarray(train_labels)
    missing = [c for c in range(n_classes) if not (y == c).any()]
    if missing:
        raise DataError(f"the training split has no image of class(es) {missing}: cannot fit the check")
    rows = train_features
    if others:  # in memory (frozen recipes only): the kinds' rows are classes n_classes, n_classes + 1, ...
        rows = np.concatenate([np.asarray(train_features, np.float32)] + [np.asarray(f, np.float32) for _, f in others])
        y = np.concatenate([y] + [np.full(len(f), n_classes + k) for k, (_, f) in enumerate(others)])
    means, _ = class_moments(rows, y, n_classes + len(others))
    cov, used = shrunk_covariance(*centred_scatter(rows, y, means), shrinkage)
    stats = np.asarray(train_stats, np.float64)
    colour = stats[:, 6]
    lo, hi = np.quantile(colour, [0.001, 0.999])
    # A margin on both sides: half the lowest colourfulness seen, and 1.5 times the highest
    # plus 4 (JPEG colour noise on grey images).
    slw = LedoitWolf().fit(stats)
    ref = Reference(means[:n_classes], pinvh(cov, check_finite=False), slw.location_, slw.precision_,
                    colour_range=(float(lo / 2), float(hi * 1.5 + 4)), modality=modality,
                    others=means[n_classes:] if others else None, other_names=tuple(n for n, _ in others))
    # Pixel statistics flag only what is beyond every training image, by a quarter.
    ref.stats_threshold = float(mahalanobis(stats, ref.stats_mean, ref.stats_precision).max() * 1.25)
    return ref, used


def flags(ref, stats, feats):
    """ref.flags_of(stats, feats) BLOCK rows at a time (feats may be rows on disk)."""
    parts = [ref.flags_of(stats[b], np.asarray(feats[b])) for b in _blocks(len(stats))]
    if not parts:
        return ref.flags_of(stats, np.zeros((0, ref.feature_dim)))
    return tuple(np.concatenate(a) for a in zip(*parts))


def set_threshold(ref, val_stats, val_features, quantile=0.05, distances=None, nearer=None):
    """The feature threshold: the lowest at which at most `quantile` of the validation images
    (their pixel statistics and features) is flagged by any of the checks (colour and pixel
    flags, and nearness to a known wrong kind, count too); `distances` and `nearer` replace
    the features' distances to ref and their nearer-to-a-wrong-kind flags (out of fold: each
    from the reference of a fold that did not see it). Returns ref."""
    by_colour, by_pixels, _, dist, _ = flags(ref, val_stats, val_features)
    dist = dist if distances is None else np.asarray(distances)
    if nearer is None:
        nearer = ref.nearest(val_features)[1] >= 0 if ref.others is not None else np.zeros(len(dist), bool)
    cheap = by_colour | by_pixels | np.asarray(nearer)
    threshold = float(dist.max()) * 1.0001
    for t in np.sort(dist)[::-1]:
        if (cheap | (dist > t)).mean() > quantile:
            break
        threshold = float(t)
    ref.threshold, ref.quantile = threshold, quantile
    return ref


def rate(ref, stats, feats, distances=None, nearer=None):
    """{"images", "flagged", "by_colour", "by_pixels", "by_features"} of a set (its pixel
    statistics and features; `distances` and `nearer` as in set_threshold): shares flagged."""
    by_colour, by_pixels, by_features, _, _ = flags(ref, stats, feats)
    if distances is not None:
        by_features = (np.asarray(distances) > ref.threshold) | (False if nearer is None else np.asarray(nearer))
    return shares(by_colour, by_pixels, by_features)


def shares(by_colour, by_pixels, by_features):
    """rate()'s dict from the three flags (N,) of a set's images."""
    share = lambda m: round(float(m.mean()), 4) if len(m) else None  # noqa: E731
    return {"images": int(len(by_colour)), "flagged": share(by_colour | by_pixels | by_features),
            "by_colour": share(by_colour), "by_pixels": share(by_pixels), "by_features": share(by_features)}


def measure(ref, model, sets):
    """{name: rate} for each (name, images) in sets."""
    from lungclf.inference import forward_fn

    forward = forward_fn(model)  # traced once for every set
    return {name: rate(ref, pixel_stats(x), features(model, x, forward=forward)) for name, x in sets.items()}


def wrong_input_sets(size, ood_dirs=(), n_synthetic=40, ood_limit=400, seed=0):
    """{name: images}: the synthetic kinds and every --ood-data folder."""
    sets = {f"{k} (synthetic)": synthetic(k, n_synthetic, size, seed) for k in SYNTHETIC}
    for d in ood_dirs:
        shown = repo_path(d)  # relative to the repository when inside or beside it
        sets[f"{os.path.basename(os.path.normpath(d))} ({shown})"] = folder_images(d, size, ood_limit, seed)
    return sets



# ---------------------------------------------------------------- examples

def pick_examples(paths, labels, ok, n=6, seed=0):
    """Up to n of the test images: round-robin over classes (at least one each when n allows),
    seeded, among those with ok[i] (the check passes them)."""
    rng = np.random.default_rng(seed)
    by_class = {}
    for i in rng.permutation(len(paths)):
        if ok[i]:
            by_class.setdefault(labels[i], []).append(int(i))
    chosen, classes = [], sorted(by_class)
    while len(chosen) < n and any(by_class.values()):
        for c in classes:
            if by_class[c] and len(chosen) < n:
                chosen.append(by_class[c].pop(0))
    return chosen


def write_examples(bundle, data_root, paths, labels, ok, n=6, seed=0):
    """Copy up to n test-split images, unchanged, into BUNDLE/examples/ as <label>_<k>.<ext>;
    returns [{"file", "label", "source"}] for metadata.json."""
    folder = os.path.join(bundle, "examples")
    shutil.rmtree(folder, ignore_errors=True)
    if n <= 0:
        return []
    os.makedirs(folder)
    rows = []
    for k, i in enumerate(pick_examples(paths, labels, ok, n, seed)):
        ext = os.path.splitext(paths[i])[1].lower()
        name = f"{labels[i]}_{k + 1}{ext}"
        shutil.copyfile(os.path.join(data_root, paths[i]), os.path.join(folder, name))
        rows.append({"file": f"examples/{name}", "label": labels[i], "source": paths[i]})
    return rows


def split_features(model, data, split, batch_size=64, folder=None):
    """(features, pixel statistics, labels, readable) of one split of `data` (a
    training.datatypes.Prepared): from its decoded images (x), or, when it has none
    (--stream), read from the files batch by batch, so memory holds a batch of images and
    8 numbers per image, never the images. With `folder`, the streamed features go to
    FOLDER/<split>.f32 and come back as training.stream.Rows of it (fit and flags read it
    in blocks), so the (D numbers per image) features stay on disk too. `readable`: per file
    of the split, whether it was read (the other rows are left out of the first three)."""
    mask = np.asarray(data.split) == split
    if data.x is not None:
        x = data.x[mask]
        return features(model, x, batch_size), pixel_stats(x), np.asarray(data.y)[mask], np.ones(len(x), bool)
    from lungclf.inference import forward_fn, predict_features
    from training import stream

    files = stream.files(data, split)
    dim = model.layers[-1].input.shape[-1]
    if folder:
        path = os.path.join(folder, f"{split}.f32")
        store = stream.Rows(path, np.float32, (len(files.paths), dim), create=True)
    else:
        store = np.zeros((len(files.paths), dim), np.float32)
    forward = forward_fn(model)  # once: each batch reuses it
    n, stats, ys, oks = 0, [np.zeros((0, 8))], [], []
    for x, y, ok in stream.read_batches(files, model.inputs[0].shape[1], batch_size):
        x, y = x[ok].astype(np.float32), y[ok]
        if len(x):
            store[n:n + len(x)] = predict_features(model, x, batch_size, forward)[1]
            stats.append(pixel_stats(x))
            n += len(x)
        ys.append(y)
        oks.append(ok)
    if folder:
        store.close()
    return (stream.Rows(path, np.float32, (n, dim)) if folder else store[:n], np.concatenate(stats), np.concatenate(ys).astype(int) if ys else np.zeros(0, int),
            np.concatenate(oks) if oks else np.zeros(0, bool))


def fit_bundle(bundle, model, data, *, recipe, command=None, log=print):
    """Fit, measure and write the check (and examples) into a written bundle folder: fitted
    on the train split, threshold on val, measured on test, synthetic images and the
    recipe's ood_data. `data`: training.datatypes.Prepared, with its images (x) or streamed
    from its files (split_features)."""
    split = np.asarray(data.split)
    log(f"wrong-input check: features of {(split == 'train').sum()} training, {(split == 'val').sum()} validation, "
        f"{(split == 'test').sum()} test images" + (" (streamed)" if data.x is None else ""))
    meta = _read_meta(bundle)
    ref, shrinkage, rates, te, ok = fit_on_splits(model, data, meta["task"]["modality"], recipe.wrong_input_shrinkage,
                                                  recipe.wrong_input_quantile)
    return _write(bundle, meta, model, ref, data, recipe, rates, te, ok, shrinkage,
                  f"train split ({int((split == 'train').sum())} images)", command, log)


def fit_on_splits(model, data, modality="", shrinkage=None, quantile=0.05):
    """The reference fitted on the train split, its threshold set on val (train when there is
    no val), its rates measured on val and test -> (reference, shrinkage used, rates, test
    mask of the files read, which of those the check passes). Streamed (data.x None), the
    features go to a temporary folder on disk and are read back in blocks."""
    te = np.asarray(data.split) == "test"
    with tempfile.TemporaryDirectory(prefix="wrong-input-") as work:  # streamed features, on disk
        folder = work if data.x is None else None
        (f_tr, s_tr, y_tr, _), (f_va, s_va, _, _), (f_te, s_te, _, read_te) = (
            split_features(model, data, name, folder=folder) for name in ("train", "val", "test"))
        te[te] = read_te  # the test files that were read: the examples are chosen among them
        ref, shrinkage = fit(f_tr, y_tr, s_tr, len(data.labels), modality, shrinkage)
        set_threshold(ref, s_va, f_va, quantile) if len(f_va) else set_threshold(ref, s_tr, f_tr, quantile)
        rates = {"val": rate(ref, s_va, f_va), "test": rate(ref, s_te, f_te)}
        ok = ~np.any(flags(ref, s_te, f_te)[:3], axis=0)
        for f in (f_tr, f_va, f_te):
            getattr(f, "close", lambda: None)()  # rows on disk, before their folder goes
    return ref, shrinkage, rates, te, ok


def known_wrong(recipe, spec, log=print):
    """[(name, features (n, D), pixel statistics (n, 8), groups (n,))] of each of the recipe's
    known_wrong_data folders: every readable image anywhere under it (class folders or none),
    grouped by the audit (copies and neighbouring slices together), through the frozen
    network `spec` (training.frozen.Spec), cached."""
    from lungclf.predict import PredictError, find_images
    from training import audit, frozen
    from training.data import Item

    out = []
    for folder in recipe.known_wrong_dirs():
        name = os.path.basename(os.path.normpath(folder))
        try:  # the files `python -m lungclf.predict FOLDER` would read
            paths = [os.path.relpath(p, folder) for p in find_images(folder)]
        except PredictError as e:
            raise DataError(f"known_wrong_data: {e}") from None
        report = audit.run(folder, [Item(p, name) for p in paths], progress=False, seed=recipe.seed)
        readable = [it["path"] for it in report["items"]]
        log(f"wrong-input check: known wrong kind {name} ({repo_path(folder)}): {len(readable)} images in "
            f"{len(set(report['group']))} groups")
        feats, stats = frozen.features(spec, folder, readable, ["identity"], report["fingerprint"])
        out.append((name, np.asarray(feats[0]), np.asarray(stats), np.asarray(report["group"])))
    return out


def known_wrong_rates(ref, fit_args, known, folds, seed, shrinkage=None):
    """{name: rate} of each known wrong kind, OUT OF FOLD by group: each fold of its groups is
    measured against a reference whose mean of that kind was fitted without them (the other
    kinds whole), at ref's threshold. `fit_args`: (features, labels, stats, n_classes, modality)
    of the images the model was fitted on."""
    from training.split import group_folds

    out = {}
    for k, (name, feats, stats, groups) in enumerate(known):
        parts = []
        for train, test in group_folds(np.zeros(len(groups), int), groups, folds, seed):
            kinds = [(n, f[train] if j == k else f) for j, (n, f, _, _) in enumerate(known)]
            fold_ref, _ = fit(*fit_args, shrinkage=shrinkage, others=kinds)
            fold_ref.threshold = ref.threshold
            parts.append(np.stack(flags(fold_ref, stats[test], feats[test])[:3]))
        by = np.concatenate(parts, axis=1)  # (3, n): colour, pixels, features
        out[f"{name} (known wrong kind, out of fold by group)"] = shares(*by) | {
            "folds": folds, "groups": int(len(np.unique(groups)))}
    return out


def fit_bundle_out_of_fold(bundle, model, data, recipe, feats, stats, folds, command=None, log=print, known=()):
    """The check of a frozen bundle: the threshold from OUT-OF-FOLD distances (each image's
    distance to a reference fitted on the folds that did not hold it, for the first fold
    assignment), so that about `wrong_input_quantile` of new groups are flagged; the
    reference itself fitted on every image the shipped model was fitted on. `feats` (N, D),
    `stats` (N, 8): of every image; `folds`: frozen.cross_validate's [(seed, k, test)];
    `known`: known_wrong()'s kinds, learned by the reference and measured out of fold."""
    y, split = np.asarray(data.y), np.asarray(data.split)
    meta = _read_meta(bundle)
    modality, n = meta["task"]["modality"], len(data.labels)
    kinds = [(name, f) for name, f, _, _ in known]
    oof, nearer = np.zeros(len(y)), np.zeros(len(y), bool)
    first = [test for s, _, test in folds if s == 0]
    log(f"wrong-input check: out-of-fold distances over {len(first)} folds")
    for test in first:
        train = np.setdiff1d(np.arange(len(y)), test)
        fold_ref, _ = fit(feats[train], y[train], stats[train], n, modality, recipe.wrong_input_shrinkage, kinds)
        oof[test], other = fold_ref.nearest(feats[test])
        nearer[test] = other >= 0
    fit_rows = split == "train"
    fit_args = (feats[fit_rows], y[fit_rows], stats[fit_rows], n, modality)
    ref, shrinkage = fit(*fit_args, shrinkage=recipe.wrong_input_shrinkage, others=kinds)
    set_threshold(ref, stats, feats, recipe.wrong_input_quantile, distances=oof, nearer=nearer)
    te = split == "test"
    rates = {"out_of_fold": rate(ref, stats, feats, distances=oof, nearer=nearer),
             "examples": rate(ref, stats[te], feats[te])}
    ok = ~np.any(ref.flags_of(stats[te], feats[te])[:3], axis=0)
    known_rates = known_wrong_rates(ref, fit_args, known, len(first), recipe.seed, recipe.wrong_input_shrinkage)
    return _write(bundle, meta, model, ref, data, recipe, rates, te, ok, shrinkage,
                  f"images the model was fitted on ({int(fit_rows.sum())}); threshold from the out-of-fold "
                  f"distances of all {len(y)} images (group {len(first)}-fold)", command, log,
                  ref.precision_dtype(feats, float16=recipe.stored_weights == "float16"), known_rates)


def _read_meta(bundle):
    import json

    with open(os.path.join(bundle, "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def _write(bundle, meta, model, ref, data, recipe, rates, te, ok, shrinkage, fitted_on, command, log,
           precision_dtype="float64", known_rates=None):
    """Measure the wrong inputs, write wrong_input.npz (its precision in precision_dtype), the
    examples and the metadata block. `known_rates`: the known wrong kinds', measured out of fold."""
    sets = wrong_input_sets(ref_size(model), recipe.ood_dirs(), ood_limit=recipe.ood_limit, seed=recipe.seed)
    rates["wrong_inputs"] = measure(ref, model, sets) | (known_rates or {})
    quantile = recipe.wrong_input_quantile
    digest = ref.save(os.path.join(bundle, FILE), precision_dtype)
    meta["wrong_input"] = {
        "file": FILE, "sha256": digest, "feature_dim": int(ref.feature_dim),
        "threshold": ref.threshold, "quantile": quantile, "colour_range": list(ref.colour_range),
        "stats_threshold": ref.stats_threshold,
        "method": _method(quantile, shrinkage, recipe.wrong_input_shrinkage is None, "out_of_fold" in rates)
        + (f"; or nearer to the mean features of a known wrong kind ({', '.join(ref.other_names)}: one more "
           "class of the same Gaussian model) than to every class mean" if ref.other_names else ""),
        "fitted_on": fitted_on, "shrinkage": round(shrinkage, 4),
        "ood_data": list(recipe.ood_data), "rates": rates,
    } | ({"known_wrong": list(ref.other_names), "known_wrong_data": list(recipe.known_wrong_data)}
         if ref.other_names else {}) | ({"command": command} if command else {}) | ({"notes": recipe.wrong_input_notes}
                                                     if recipe.wrong_input_notes else {})
    if meta.get("recipe"):  # the recipe as this check was fitted (flags of the refit override fields)
        meta["recipe"] = recipe.write(bundle)
    test_paths = [p for p, m in zip(data.paths, te) if m]
    test_labels = [data.labels[c] for c in np.asarray(data.y)[te]]
    meta["examples"] = write_examples(bundle, data.data_dir, test_paths, test_labels, ok, recipe.examples, recipe.seed)
    schema.parse_metadata(meta)
    write_json(os.path.join(bundle, "metadata.json"), meta)
    from training.card import write

    write(bundle)
    first = rates.get("test") or rates.get("out_of_fold")
    log(f"wrong-input check: threshold {ref.threshold:.2f} (distance), colour range "
        f"{ref.colour_range[0]:.1f}-{ref.colour_range[1]:.1f}; flagged: "
        f"{'test' if 'test' in rates else 'out of fold'} {first['flagged']:.1%}")
    for name, r in rates["wrong_inputs"].items():
        log(f"  {name}: {r['flagged']:.1%} of {r['images']} flagged "
            f"(colour {r['by_colour']:.1%}, pixels {r['by_pixels']:.1%}, features {r['by_features']:.1%})")
    log(f"wrote {os.path.join(bundle, FILE)} and {len(meta['examples'])} examples")
    return meta


def _method(quantile, shrinkage, ledoit_wolf, out_of_fold):
    """METHOD in words, for a threshold set on the validation split or out of fold."""
    text = METHOD.format(q=quantile, s=shrinkage, how="Ledoit-Wolf" if ledoit_wolf else "chosen")
    if out_of_fold:
        text = (text.replace("fitted on the training split", "fitted on the images the model was fitted on")
                .replace("of the validation split is", "of all images, each measured against a reference "
                         "fitted without its group (out of fold), is"))
    return text


def ref_size(model):
    return model.inputs[0].shape[1]


# ---------------------------------------------------------------- an existing bundle

def recompute(bundle, data_root=None, report=None):
    """(recipe, Prepared): the bundle's data and split, recomputed from its recipe.json as
    training made them; SplitMismatch if the split's fingerprint differs from metadata.json's.
    `data_root` replaces the recipe's data folder; `report`: an audit report to reuse."""
    from training import steps
    from training.recipe import Recipe
    from training.split import fingerprint

    recipe = Recipe.from_bundle(bundle)
    if data_root:
        recipe = recipe.replace(data=os.path.abspath(data_root))
    meta = _read_meta(bundle)
    prepared = steps.prepare_recipe(recipe, report=report)
    found = fingerprint(prepared.rows())
    if found != meta["split"]["fingerprint"]:
        raise SplitMismatch(f"the split recomputed from {recipe.data_dir()} (fingerprint {found[:12]}...) is "
                            f"not the bundle's ({meta['split']['fingerprint'][:12]}...): different data or "
                            "settings; refusing to fit the check on another split")
    return recipe, prepared


def main(argv=None):
    from training import recipe as recipes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (written by training.train, with its recipe.json)")
    p.add_argument("--data", help="its data folder (default: the recipe's)")
    recipes.add_arguments(p, recipes.WRONG_INPUT_FIELDS)
    args = p.parse_args(argv)
    command = "python -m training.wrong_input " + shlex.join(sys.argv[1:] if argv is None else argv)
    with cli_errors():
        try:
            verify(args.bundle)
        except BundleError as e:
            raise TrainingError(f"refused: {e}") from None
        recipe, prepared = recompute(args.bundle, args.data)
        recipe = recipe.replace(**recipes.overrides(args, recipes.WRONG_INPUT_FIELDS))
        from lungclf.bundle import load

        model = load(args.bundle).model
        if recipe.method == "frozen":
            from training import frozen, steps

            spec = frozen.Spec.of(steps.configure(recipe)[1])
            feats, stats = frozen.features(spec, prepared.data_dir, prepared.paths, ["identity"],
                                           prepared.report["fingerprint"])
            cv = frozen.cross_validate(feats, prepared.y, prepared.groups, recipe.folds, 1, recipe.C, recipe.seed)
            return fit_bundle_out_of_fold(args.bundle, model, prepared, recipe, feats[0], stats, cv["folds"],
                                          command=command, known=known_wrong(recipe, spec))
        from training import steps

        return steps.fit_wrong_input(args.bundle, model, prepared, recipe, command=command)


if __name__ == "__main__":
    main()
