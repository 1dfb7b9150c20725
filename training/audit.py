"""Audit a data set: find copies of the same image so a split can keep them together.

This first version finds byte-identical files (exact duplicates), the ones that carry
two labels, and the ones found in more than one published split. `run` returns a dict
that training uses (one group id per image) and records in the bundle.

    python -m training.audit DATA_DIR
"""

import argparse
import hashlib
import os
from collections import defaultdict

from training.data import scan, sha256_file


def _groups_of(keys, items):
    by_key = defaultdict(list)
    for k, it in zip(keys, items):
        by_key[k].append(it)
    return [sorted(g, key=lambda it: it.path) for g in by_key.values() if len(g) > 1]


def run(root, items):
    """Audit items under root. Returns a dict with:

    group                   one group id per item (copies share one)
    exact_duplicate_groups  lists of paths with identical bytes
    cross_class_groups      groups whose copies carry more than one label
    cross_split_groups      groups found in more than one published split
    fingerprint             sha256 over (path, label, file sha256): names the data exactly
    warnings, summary       text for people
    """
    hashes = [sha256_file(os.path.join(root, it.path)) for it in items]
    exact = _groups_of(hashes, items)
    gid = {it.path: it.path for it in items}
    for g in exact:
        for it in g:
            gid[it.path] = g[0].path
    cross_class = [g for g in exact if len({it.label for it in g}) > 1]
    cross_split = [g for g in exact if len({it.published_split for it in g}) > 1
                   and all(it.published_split for it in g)]
    fp = hashlib.sha256("\n".join(f"{it.path},{it.label},{h}" for it, h in
                                  sorted(zip(items, hashes), key=lambda t: t[0].path)).encode())
    warnings = []
    n_dup = sum(len(g) - 1 for g in exact)
    if exact:
        warnings.append(f"{len(exact)} groups of byte-identical files ({n_dup} extra copies); "
                        "copies are kept together on one side of the split")
    if cross_class:
        warnings.append(f"{len(cross_class)} identical files carry different labels")
    if cross_split:
        warnings.append(f"{len(cross_split)} identical files appear in more than one published split")
    paths = lambda gs: [[it.path for it in g] for g in gs]  # noqa: E731
    return {
        "images": len(items),
        "group": [gid[it.path] for it in items],
        "exact_duplicate_groups": paths(exact),
        "cross_class_groups": paths(cross_class),
        "cross_split_groups": paths(cross_split),
        "fingerprint": fp.hexdigest(),
        "warnings": warnings,
        "summary": f"{len(items)} images, {len(set(gid.values()))} groups after grouping copies.",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder")
    args = p.parse_args()
    result = run(args.data, scan(args.data))
    print(result["summary"])
    for w in result["warnings"]:
        print("WARNING:", w)


if __name__ == "__main__":
    main()
