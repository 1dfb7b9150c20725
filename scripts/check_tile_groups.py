"""How well does the audit's grouping agree with LC25000's published tile clusters?

    python scripts/check_tile_groups.py [../shared/data/lc25000] [--audit OUT/audit.json]

`tile_groups.csv` (path,tile_group) lists the tile each LC25000 file was cut from
(Batchkala, Li, Rittscher, DEMI@MICCAI 2024). This script runs the audit (or reads an
audit.json that `python -m training.audit` wrote) and prints, over all pairs of images:

    precision  of the pairs the audit puts in one group, the share that the reference does too
    recall     of the pairs the reference puts in one tile, the share the audit groups too

plus both group-size distributions and the largest group (a giant merged group would
show here). Pairs the audit joins but the reference does not are listed first: some are
overlapping crops of one slide that the reference keeps apart, and worth a look.
"""

import argparse
import csv
import json
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=DEFAULT, help="the LC25000 folder with tile_groups.csv")
    p.add_argument("--audit", help="an audit.json written by `python -m training.audit` (default: run it now)")
    args = p.parse_args(argv)
    ref_path = os.path.join(args.data, "tile_groups.csv")
    if not os.path.exists(ref_path):
        raise SystemExit(f"No tile_groups.csv in {args.data}")
    with open(ref_path) as f:
        reference = {row["path"]: row["tile_group"] for row in csv.DictReader(f)}

    t0 = time.time()
    if args.audit:
        with open(args.audit) as f:
            report = json.load(f)
        group = {}
        for g in report["near_duplicate_groups"] + report["exact_duplicate_groups"]:
            for path in g:  # exact copies inside a near group keep that group's id
                group.setdefault(path, g[0])
        paths = sorted(reference)
        predicted = [group.get(path, path) for path in paths]
    else:
        from training import audit

        report = audit.run(args.data)
        group = dict(zip((it["path"] for it in report["items"]), report["group"]))
        paths = sorted(set(reference) & set(group))
        predicted = [group[path] for path in paths]
    ref = [reference[path] for path in paths]
    a = agreement(predicted, ref)
    print(f"{len(paths)} images; audit {len(set(predicted))} groups, reference {len(set(ref))} tiles "
          f"({time.time() - t0:.1f} s)")
    print(f"pairwise precision {a['precision']:.3f} ({a['pairs_both']}/{a['pairs_predicted']} pairs), "
          f"recall {a['recall']:.3f} ({a['pairs_both']}/{a['pairs_reference']} pairs)")
    print("group sizes, audit:    ", sizes(predicted))
    print("group sizes, reference:", sizes(ref))
    by_group = {}
    for path, g in zip(paths, predicted):
        by_group.setdefault(g, []).append(path)
    split_tiles = [members for members in by_group.values() if len({reference[m] for m in members}) > 1]
    print(f"{len(split_tiles)} audit groups join more than one reference tile, e.g.:")
    for members in sorted(split_tiles, key=len, reverse=True)[:5]:
        print("  ", ", ".join(f"{m} ({reference[m]})" for m in members))
    return a


if __name__ == "__main__":
    main()
