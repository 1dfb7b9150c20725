"""Split images into train/val/test by group, stratified by class, seeded.

A group is a set of images that must stay on one side (copies of one tissue tile, slices
of one scan). scikit-learn's StratifiedGroupKFold does the work: the test split is one
fold of round(1 / test_fraction), the validation split one fold of what is left.

    from training.split import split_by_group
    splits = split_by_group(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=0)
"""

import hashlib

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


def _one_fold(labels, groups, fraction, seed):
    """Indices (rest, held) with about `fraction` of the groups held out."""
    n_splits = max(2, round(1 / fraction))
    n_groups = len(set(groups))
    n_splits = min(n_splits, n_groups)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return next(cv.split(np.zeros(len(labels)), labels, groups))


def split_by_group(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=0):
    """Return a list of 'train' / 'val' / 'test', one per image; no group in two splits."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    out = np.array(["train"] * len(labels), dtype=object)
    rest, test = _one_fold(labels, groups, test_fraction, seed)
    out[test] = "test"
    if val_fraction > 0:
        tr, val = _one_fold(labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
        out[rest[val]] = "val"
    return list(out)


def group_folds(labels, groups, k, seed=0):
    """K-fold cross-validation by group: yields (train_idx, test_idx) K times."""
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    yield from cv.split(np.zeros(len(labels)), labels, groups)


def fingerprint(rows):
    """sha256 of the sorted 'path,label,group,split' lines: names one split exactly."""
    text = "\n".join(sorted(",".join(map(str, r)) for r in rows))
    return hashlib.sha256(text.encode()).hexdigest()
