"""Scan-level accuracy next to slice-level accuracy, on a CT bundle's held-out test groups
(for a bundle of a frozen recipe: on every group, out of fold).

    python scripts/series_accuracy.py --data ../shared/data/chest_ct --model models/chest_ct
    python scripts/series_accuracy.py --data ../shared/data/iq_othnccd --model models/iq_othnccd \
        --json series_iq.json

The data sets carry no scan ids, so the audit's groups stand in for scans: training.audit
joins exact and near copies (neighbouring slices of one scan) into groups, and the split
keeps each group on one side. This script reruns the audit and the split with the bundle's
seed and fractions (checking the split's fingerprint against metadata.json, so the test
groups are the ones the model never saw), drops the files training dropped (identical
extra copies), and classifies every test image as the app does (lungclf.batch.predictor).
Each group is then answered by the app's series rule (lungclf.batch.aggregate: the mean of
the slice probabilities over slices not flagged as wrong input) and scored against the
group's label.

Printed: slice accuracy (every test image), scan accuracy (every test group), and both on
the groups of two or more slices, where the rule can differ from a single slice.
"""

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_groups(data, meta):
    """{group id: [(path, label)]} of the held-out test split, as training made it."""
    from training import audit
    from training.data import scan
    from training.split import fingerprint

    split = meta.raw["split"]
    report = audit.run(data, scan(data), progress=False, seed=split["seed"])
    keep_published = split.get("name", "").startswith("published split, kept")
    rows, _ = audit.make_split(report, split["fractions"]["val"], split["fractions"]["test"],
                            split["seed"], keep_published)
    side = {r[0]: r[3] for r in rows}
    extra = set()
    for g in report["exact_duplicate_groups"]:  # as training does: one copy per side
        seen = set()
        for p in g:
            extra.update([p] if side[p] in seen else [])
            seen.add(side[p])
    conflicts = {p for g in report["cross_class_groups"] for p in g}
    rows = [r for r in rows if r[0] not in extra and r[0] not in conflicts]
    if fingerprint(rows) != split["fingerprint"]:
        print("warning: this split's fingerprint differs from the bundle's: the data or the audit "
              "changed since training, and test groups may include training images")
    groups = defaultdict(list)
    for path, label, group, s in rows:
        if s == "test":
            groups[group].append((path, label))
    return groups


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the data folder the bundle was trained on")
    p.add_argument("--model", required=True, help="the bundle folder")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    p.add_argument("--record", action="store_true",
                   help="write the figures into the bundle's metadata.json (\"series\") and re-render "
                   "its card (the sha256 of model.keras is unchanged)")
    args = p.parse_args(argv)

    from lungclf import batch
    from lungclf.bundle import load
    from lungclf.inference import Classifier, label_text

    bundle = load(args.model)
    if (bundle.meta.recipe and bundle.meta.recipe.method == "frozen"):
        figures = out_of_fold(args.model, args.data, bundle.temperature)
        return report(figures, args, bundle.name)
    predict = batch.predictor(Classifier(bundle))
    text_of = {lab: label_text(lab, bundle.names) for lab in bundle.labels}
    groups = test_groups(args.data, bundle.meta)
    slices_right, scans, multi = [], [], []
    for members in groups.values():
        rows = [batch.classify([batch.Item(path, os.path.join(args.data, path))], predict)[0]
                for path, _ in members]
        truth = Counter(label for _, label in members).most_common(1)[0][0]
        slices_right += [r.prediction is not None and r.prediction.label == text_of[truth] for r in rows]
        answer = batch.aggregate(rows)
        right = answer.probabilities is not None and max(
            answer.probabilities, key=answer.probabilities.get) == text_of[truth]
        scans.append(right)
        if len(members) > 1:
            multi.append((right, [r.prediction is not None and r.prediction.label == text_of[truth]
                                  for r in rows]))
    figures = {
        "test_images": len(slices_right), "test_groups": len(scans),
        "slice_accuracy": round(float(np.mean(slices_right)), 3),
        "scan_accuracy": round(float(np.mean(scans)), 3),
        "groups_with_2_or_more_slices": len(multi),
        "slice_accuracy_in_those": round(float(np.mean([s for _, ss in multi for s in ss])), 3) if multi else None,
        "scan_accuracy_of_those": round(float(np.mean([r for r, _ in multi])), 3) if multi else None,
    }
    return report(figures, args, bundle.name)


def report(figures, args, name):
    """Print the figures; write them to --json and (--record) into the bundle."""
    figures = {"model": name} | figures
    for k, v in figures.items():
        print(f"{k:32s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.record:
        record(args.model, figures, f"python scripts/series_accuracy.py --data {args.data} --model {args.model}")
    return figures


def out_of_fold(folder, data, temperature):
    """Slice and scan accuracy of a frozen bundle over EVERY group, each answered out of fold
    (training.frozen: the bundle's recipe, its folds, the first fold assignment), with
    `temperature` (the bundle's); the scan answer is the mean of its slices' probabilities."""
    from lungclf.inference import calibrate
    from training import frozen, steps
    from training.recipe import Recipe

    recipe = Recipe.from_bundle(folder).replace(data=os.path.abspath(data))
    prepared = steps.prepare_recipe(recipe)
    _, config = steps.configure(recipe, verbose=0)
    feats, _ = frozen.features(frozen.Spec.of(config), prepared.data_dir, prepared.paths, recipe.views,
                               prepared.report["fingerprint"])
    cv = frozen.cross_validate(feats, prepared.y, prepared.groups, recipe.folds, 1, recipe.C, recipe.seed)
    probs, y = calibrate(cv["logits"][0], temperature), np.asarray(prepared.y)
    members = defaultdict(list)
    for i, g in enumerate(prepared.groups):
        members[g].append(i)
    scans = [int(probs[m].mean(0).argmax() == Counter(y[m].tolist()).most_common(1)[0][0]) for m in members.values()]
    multi = [m for m in members.values() if len(m) > 1]
    right = probs.argmax(1) == y
    return {"test_images": len(y), "test_groups": len(scans), "slice_accuracy": round(float(right.mean()), 3),
            "scan_accuracy": round(float(np.mean(scans)), 3), "groups_with_2_or_more_slices": len(multi),
            "slice_accuracy_in_those": round(float(np.mean([right[i] for m in multi for i in m])), 3),
            "scan_accuracy_of_those": round(float(np.mean([scans[k] for k, m in enumerate(members.values())
                                                            if len(m) > 1])), 3),
            "out_of_fold": f"every group, answered by a head fitted without it ({recipe.folds}-fold)"}


def record(folder, figures, command):
    """Put the figures into FOLDER/metadata.json and re-render the card (training.card)."""
    from training import card

    rule = ("mean of the slice probabilities (out of fold: every slice)" if "out_of_fold" in figures
            else "mean of the slice probabilities over the slices not flagged as wrong input")
    path = card.record(folder, {k: v for k, v in figures.items() if k != "model"} | {
        "rule": rule,
        "groups": "the audit's groups stand in for scans, since the data carry no scan ids",
        "command": command}, "series")
    print(f"recorded in {path} and the card")


if __name__ == "__main__":
    main()
