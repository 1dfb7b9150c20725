"""Measure what the heatmap and the wrong-input check cost, against the bare forward pass.

    python scripts/benchmark_heatmap.py                       # the committed bundles
    python scripts/benchmark_heatmap.py --models models/lc25000 --n 500 --json heatmap.json

For each bundle, batch of 1, the traced functions app.py calls (lungclf.inference.Classifier):

    forward    logits and features: the bare forward pass
    explain    logits, features and every class's activation map, in one traced call
    + check    explain plus the wrong-input check (numpy, the stored reference)
    + overlay  all that plus the picture the page shows: the map upsampled, coloured and
               blended over a 224 x 224 image (lungclf.heatmap.overlay)

The calls are interleaved (forward, explain, ... in turn), so a change of load on this
shared machine hits them alike. Prints medians (ms) and the ratios to the forward pass;
the target for explain is <= 1.2x.

--record writes the figures into each bundle's metadata.json (`measured.heatmap`) and
re-renders its card; with --serving-json FILE (the --json of scripts/benchmark_serving.py
run on that one bundle with --apps ours,floor) it records the serving figures too
(`measured.serving`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
COMMITTED = [os.path.join(ROOT, "models", n) for n in ("lc25000", "iq_othnccd", "chest_ct")]


def measure(folder, n):
    from lungclf.bundle import load
    from lungclf.heatmap import overlay
    from lungclf.inference import Classifier

    clf = Classifier(load(folder), threads=1)  # the engine the app serves it with
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, clf.size, clf.size, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (224, 224, 3), np.uint8)

    def forward():
        return clf.run(x, maps=False)

    def explain():
        return clf.run(x)

    def check():
        logits, feats, maps = explain()
        return clf.reference.check(x, feats) if clf.reference else None

    def full():
        logits, feats, maps = explain()
        if clf.reference:
            clf.reference.check(x, feats)
        return overlay(rgb, maps[0, :, :, int(logits.argmax())], 0.5)

    steps = {"forward": forward, "explain": explain, "+ check": check, "+ overlay": full}
    times = {k: [] for k in steps}
    for _ in range(10):  # warm-up
        for f in steps.values():
            f()
    for _ in range(n):
        for k, f in steps.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return {"bundle": os.path.relpath(folder, ROOT), "architecture": clf.bundle.meta.model.architecture,
            "input": clf.size, "ms": med, "ratio": {k: v / med["forward"] for k, v in med.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[m for m in COMMITTED if os.path.isdir(m)],
                   help="bundle folders (default: the committed ones)")
    p.add_argument("--n", type=int, default=300, help="timed calls of each kind per bundle (default 300)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--record", action="store_true", help="write the figures into each bundle's metadata.json "
                   "(measured.heatmap) and re-render its card")
    p.add_argument("--serving-json", metavar="FILE", help="with --record and one bundle: also record "
                   "scripts/benchmark_serving.py's --json output for it (measured.serving)")
    args = p.parse_args(argv)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; medians of {args.n} calls, batch of 1\n")
    print("| bundle | network | forward ms | explain ms (x) | + check ms (x) | + overlay ms (x) |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for folder in args.models:
        r = measure(folder, args.n)
        rows.append(r)
        ms, x = r["ms"], r["ratio"]
        print(f"| {r['bundle']} | {r['architecture']} {r['input']} px | {ms['forward']:.2f} | "
              f"{ms['explain']:.2f} ({x['explain']:.2f}x) | {ms['+ check']:.2f} ({x['+ check']:.2f}x) | "
              f"{ms['+ overlay']:.2f} ({x['+ overlay']:.2f}x) |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end; target: explain <= 1.2x forward")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "load": os.getloadavg(), "bundles": rows}, f, indent=2)
    if args.record:
        for folder, r in zip(args.models, rows):
            command = f"python scripts/benchmark_heatmap.py --models {os.path.relpath(folder, ROOT)} --n {args.n}"
            record(folder, r, command, args.serving_json if len(args.models) == 1 else None)
    return rows


def record(folder, row, command, serving_json=None):
    """measured.heatmap (and measured.serving) into FOLDER/metadata.json; re-render the card."""
    from scripts.benchmark_serving import record as record_serving
    from training import card

    card.record(folder, {"ms": {k: round(v, 2) for k, v in row["ms"].items()},
                         "ratio": {k: round(v, 3) for k, v in row["ratio"].items()},
                         "load": round(os.getloadavg()[0], 1), "cores": os.cpu_count(),
                         "command": command}, "measured", "heatmap")
    if serving_json:
        with open(serving_json) as f:
            record_serving(folder, json.load(f))


if __name__ == "__main__":
    main()
