"""Split images into train/val/test by group, stratified by class, seeded.

A group is a set of images that must stay on one side (copies of one tissue tile, slices
of one scan); `training.audit` finds them. scikit-learn's StratifiedGroupKFold does the
work: the test split is one fold of round(1 / test_fraction), the validation split one
fold of what is left, so no group is ever on two sides and each class is spread evenly.

A published split (DIR/{train,valid,test}/<class>) is kept when no group crosses it. When
one does (a copy in train and another in test), it is re-split by group, unless the user
asks to keep it (`keep_published=True`): then the leaks are counted so that the report,
the model card and metadata.json can say how many there are.

    from training.split import assign
    splits, info = assign(labels, groups, published, val_fraction=0.15, test_fraction=0.15, seed=0)
"""

import hashlib

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def _one_fold(labels, groups, fraction, seed):
    """Indices (rest, held) with about `fraction` of the groups held out."""
    n_splits = max(2, round(1 / fraction))
    n_splits = min(n_splits, len(set(groups)), max(np.unique(labels, return_counts=True)[1]))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return next(cv.split(np.zeros(len(labels)), labels, groups))


def split_by_group(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=0):
    """Return a list of 'train' / 'val' / 'test', one per image; no group in two splits."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    out = np.array(["train"] * len(labels), dtype=object)
    if test_fraction > 0:
        rest, test = _one_fold(labels, groups, test_fraction, seed)
        out[test] = "test"
    else:
        rest = np.arange(len(labels))
    if val_fraction > 0:
        _, val = _one_fold(labels[rest], groups[rest], val_fraction / (1 - test_fraction), seed + 1)
        out[rest[val]] = "val"
    return list(out)


def leaks(groups, published):
    """Groups found in more than one published split -> {"groups": n, "images": n}."""
    sides = {}
    for g, s in zip(groups, published):
        sides.setdefault(g, set()).add(s)
    leaking = {g for g, s in sides.items() if len(s) > 1}
    return {"groups": len(leaking), "images": sum(g in leaking for g in groups)}


def assign(labels, groups, published=None, val_fraction=0.15, test_fraction=0.15, seed=0,
           keep_published=False):
    """Choose the split training uses -> (list of 'train'/'val'/'test', info dict).

    `published` holds each image's published split ('train', 'val', 'test' or None).
    info: method (words for people), leaks (groups/images across the published split) and,
    when a leaking published split is kept, a warning to show loudly.
    """
    labels, groups = list(labels), list(groups)
    has_published = published is not None and all(published)
    info = {"seed": seed, "fractions": {"val": val_fraction, "test": test_fraction}}
    group_name = "group split (exact and near copies kept together), stratified by class"
    if not has_published:
        info["name"] = info["method"] = group_name
        return split_by_group(labels, groups, val_fraction, test_fraction, seed), info
    info["published_leaks"] = leak = leaks(groups, published)
    if leak["groups"] and not keep_published:
        info["name"] = group_name
        info["method"] = ("group split, stratified by class; the published split was replaced "
                          f"because {leak['groups']} groups ({leak['images']} images) crossed it")
        return split_by_group(labels, groups, val_fraction, test_fraction, seed), info
    out = list(published)
    missing = [s for s in ("val", "test") if s not in out]
    if missing:  # carve the missing side(s) out of the published train groups
        tr = [i for i, s in enumerate(out) if s == "train"]
        sub = split_by_group([labels[i] for i in tr], [groups[i] for i in tr],
                             val_fraction if "val" in missing else 0,
                             test_fraction if "test" in missing else 0, seed)
        for i, s in zip(tr, sub):
            out[i] = s
    info["method"] = "published split" + (f" (with {' and '.join(missing)} carved out of train by group)"
                                           if missing else "")
    info["name"] = "published split (no copies across it)"
    if leak["groups"]:
        info["name"] = f"published split, kept although {leak['groups']} groups of copies cross it"
        info["method"] += ", kept on request although it leaks"
        info["warning"] = (f"KEPT A LEAKING PUBLISHED SPLIT: {leak['groups']} groups of copies "
                           f"({leak['images']} images) sit on more than one side, so the held-out "
                           "figures are inflated and do not show how the model does on new tissue or scans.")
    return out, info


def group_folds(labels, groups, k, seed=0):
    """K-fold cross-validation by group: yields (train_idx, test_idx) K times."""
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    yield from cv.split(np.zeros(len(labels)), labels, groups)


def fold_split(labels, groups, k, folds, val_fraction=0.15, seed=0):
    """Fold k of `folds` by group: 'test' for that fold, 'val' carved by group from the rest."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    rest, test = list(group_folds(labels, groups, folds, seed))[k]
    out = np.array(["train"] * len(labels), dtype=object)
    out[test] = "test"
    out[rest] = split_by_group(labels[rest], groups[rest], val_fraction, 0, seed + k)
    return list(out)


def counts(labels, groups, splits):
    """{split: {"images", "groups", "per_class"}} for a report."""
    out = {}
    for s in SPLITS:
        idx = [i for i, t in enumerate(splits) if t == s]
        per = {}
        for i in idx:
            per[labels[i]] = per.get(labels[i], 0) + 1
        out[s] = {"images": len(idx), "groups": len({groups[i] for i in idx}),
                  "per_class": {lab: per.get(lab, 0) for lab in sorted(set(labels))}}
    return out


def fingerprint(rows):
    """sha256 of the sorted 'path,label,group,split' lines: names one split exactly."""
    text = "\n".join(sorted(",".join(map(str, r)) for r in rows))
    return hashlib.sha256(text.encode()).hexdigest()
