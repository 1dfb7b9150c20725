"""How well does the audit's grouping agree with LC25000's published tile clusters?

    python scripts/check_tile_groups.py [../shared/data/lc25000] [--audit OUT/audit.json] [--groups FILE]

`tile_groups.csv` (path,tile_group) lists the tile each LC25000 file was cut from
(Batchkala, Li, Rittscher, DEMI@MICCAI 2024). This script runs the audit (or reads an
audit.json that `python -m training.audit` wrote) and prints, over all pairs of images:

    precision  of the pairs the audit puts in one group, the share that the reference does too
    recall     of the pairs the reference puts in one tile, the share the audit groups too

plus both group-size distributions and the largest group (a giant merged group would
show here), and the leaks: reference tiles whose images the audit's split (split.csv,
next to audit.json) puts on more than one side. Audit groups that join several reference
tiles are listed: some are overlapping crops of one slide that the reference keeps apart.

    python scripts/check_tile_groups.py DATA --audit OUT/audit.json --thumbnails

--thumbnails works on any data set (no tile_groups.csv needed): it compares every pair of
images by their 32 x 32 grey thumbnails, independently of the audit, joins those that
correlate at >= 0.97 (near-identical, e.g. neighbouring CT slices) and counts the groups
of them that the split puts on more than one side.
"""

import argparse
import csv
import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "lc25000")


def same_pairs(groups):
    """Number of unordered pairs that share a group, for a list of group ids."""
    return sum(n * (n - 1) // 2 for n in Counter(groups).values())


def agreement(predicted, reference):
    """Pairwise precision and recall of `predicted` group ids against `reference` ids."""
    both = same_pairs(list(zip(predicted, reference)))
    p, r = same_pairs(predicted), same_pairs(reference)
    return {"precision": both / p if p else 1.0, "recall": both / r if r else 1.0,
            "pairs_predicted": p, "pairs_reference": r, "pairs_both": both}


def sizes(groups):
    return dict(sorted(Counter(Counter(groups).values()).items()))


def leaks(reference, side):
    """Reference groups (path -> id) whose images lie on more than one side (path -> split)."""
    sides = {}
    for path, g in reference.items():
        if path in side:
            sides.setdefault(g, set()).add(side[path])
    return sorted(g for g, s in sides.items() if len(s) > 1)


def thumbnail_groups(root, paths, threshold=0.97):
    """path -> group id: components of the pairs whose 32 x 32 grey thumbnails correlate at
    >= threshold, over all pairs (not only the audit's candidates)."""
    import cv2
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from lungclf.preprocess import read_rgb

    thumbs = []
    for path in paths:
        grey = cv2.cvtColor(read_rgb(os.path.join(root, path)), cv2.COLOR_RGB2GRAY)
        t = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        t -= t.mean()
        thumbs.append(t / (np.linalg.norm(t) + 1e-6))
    t = np.stack(thumbs)
    i, j = np.nonzero(np.triu(t @ t.T >= threshold, 1))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(len(paths), len(paths)))
    return dict(zip(paths, map(str, connected_components(graph, directed=False)[1])))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=DEFAULT, help="the LC25000 folder with tile_groups.csv")
    p.add_argument("--audit", help="an audit.json written by `python -m training.audit` (default: run it now)")
    p.add_argument("--groups", help="when running the audit now: its --groups FILE")
    p.add_argument("--thumbnails", action="store_true",
                   help="also count groups of near-identical images (thumbnails) split across sides")
    args = p.parse_args(argv)
    from training import audit

    t0 = time.time()
    if args.audit:
        split_csv = os.path.join(os.path.dirname(args.audit), "split.csv")
        if not os.path.exists(split_csv):
            raise SystemExit(f"No split.csv next to {args.audit}: give the folder `python -m training.audit` wrote")
        with open(split_csv) as f:
            rows = list(csv.DictReader(f))
        group = {r["path"]: r["group"] for r in rows}
        side = {r["path"]: r["split"] for r in rows}
    else:
        report = audit.run(args.data, groups_file=args.groups)
        rows, _ = audit.make_split(report)
        group = {r[0]: r[2] for r in rows}
        side = {r[0]: r[3] for r in rows}
    print(f"{len(group)} images, {len(set(group.values()))} audit groups, largest "
          f"{max(Counter(group.values()).values())} ({time.time() - t0:.1f} s)")
    a = None
    ref_path = os.path.join(args.data, "tile_groups.csv")
    if os.path.exists(ref_path):
        with open(ref_path) as f:
            reference = {row["path"]: row["tile_group"] for row in csv.DictReader(f)}
        paths = sorted(set(reference) & set(group))
        predicted, ref = [group[path] for path in paths], [reference[path] for path in paths]
        a = agreement(predicted, ref)
        print(f"{len(paths)} images; audit {len(set(predicted))} groups, reference {len(set(ref))} tiles")
        print(f"pairwise precision {a['precision']:.4f} ({a['pairs_both']}/{a['pairs_predicted']} pairs), "
              f"recall {a['recall']:.4f} ({a['pairs_both']}/{a['pairs_reference']} pairs)")
        print("group sizes, audit:    ", sizes(predicted))
        print("group sizes, reference:", sizes(ref))
        leaking = leaks(reference, side)
        a["leaks"] = len(leaking)
        print(f"leaks: {len(leaking)} reference tiles on more than one side of the split"
              + (f": {', '.join(leaking[:10])}" if leaking else ""))
        by_group = {}
        for path, g in zip(paths, predicted):
            by_group.setdefault(g, []).append(path)
        split_tiles = [members for members in by_group.values() if len({reference[m] for m in members}) > 1]
        print(f"{len(split_tiles)} audit groups join more than one reference tile, e.g.:")
        for members in sorted(split_tiles, key=len, reverse=True)[:5]:
            print("  ", ", ".join(f"{m} ({reference[m]})" for m in members))
    elif not args.thumbnails:
        raise SystemExit(f"No tile_groups.csv in {args.data}; pass --thumbnails to check near-identical images")
    if args.thumbnails:
        near = thumbnail_groups(args.data, sorted(group))
        leaking = leaks(near, side)
        sizes_near = Counter(Counter(near.values()).values())
        print(f"near-identical (32 px grey thumbnails, correlation >= 0.97): "
              f"{sum(n for k, n in sizes_near.items() if k > 1)} groups of 2 or more; {len(leaking)} on more "
              "than one side of the split")
        for g in leaking[:10]:
            print("  ", ", ".join(f"{path} ({side[path]})" for path in sorted(near) if near[path] == g))
        a = (a or {}) | {"thumbnail_leaks": len(leaking)}
    return a


if __name__ == "__main__":
    main()
