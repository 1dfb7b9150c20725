"""The trade-off table: held-out macro-F1 (group k-fold, several seeds), forward time, model size.

    nice -n 10 python scripts/compare_models.py --data ../shared/data/lc25000 --preset lc25000 \\
        --config lite0@224 lite0@128 lite0@128:b11 --json lc25000.json

Each --config is a pretrained network at an input size, optionally cut after its first N
blocks (`:bN`), e.g. `lite0@160`, `lite0@128:b8`. For each, the frozen backbone's pooled
features are computed once for every image (the preset's colour handling and the
backbone's own scaling inside the model), then a linear head (logistic regression on
standardised features, balanced class weights) is fitted and scored by group k-fold:
the audit's groups (copies of a tile, neighbouring slices of a scan) never straddle a
fold, over --seeds different fold assignments. So each macro-F1 is on groups never
seen by the head, and its spread shows how much one split could mislead.

Forward time: the median of --repeats single-image forward passes of the whole network
(backbone + softmax head, traced as the app traces it) on this machine. Size: the saved
model.keras. --bundle adds a committed bundle's row (its forward time and size; its
macro-F1 from its own single held-out split, marked so).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_config(text):
    """'lite0@128:b11' -> ('lite0', 128, 11); 'lite0@224' -> ('lite0', 224, None)."""
    try:
        arch, rest = text.split("@")
        size, _, blocks = rest.partition(":b")
        return arch, int(size), int(blocks) if blocks else None
    except ValueError:
        raise SystemExit(f"--config {text!r}: expected ARCH@SIZE or ARCH@SIZE:bN, e.g. lite0@128:b11") from None


def labelled_groups(data, seed):
    """(items, labels, groups) as training sees them: the audit's groups, label conflicts left out."""
    from training import audit
    from training.data import Item, scan

    report = audit.run(data, scan(data), progress=False, seed=seed)
    conflicts = {p for g in report["cross_class_groups"] for p in g}
    rows, _ = audit.make_split(report, seed=seed)
    rows = [r for r in rows if r[0] not in conflicts]
    return [Item(r[0], r[1]) for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def forward_ms(model, repeats):
    """Median milliseconds of one single-image forward pass (traced, as lungclf.inference does)."""
    from lungclf.inference import forward_fn

    size = model.inputs[0].shape[1]
    forward = forward_fn(model)
    x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    for _ in range(5):
        forward(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        forward(x)[0].numpy()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def saved_mb(model):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.keras")
        model.save(path)
        return os.path.getsize(path) / 1e6


def linear_probe(features, labels, groups, folds, seeds):
    """Macro-F1 of a logistic regression on the features, per fold over `seeds` assignments."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.split import group_folds

    scores = []
    for seed in seeds:
        for train, test in group_folds(labels, groups, folds, seed):
            head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000,
                                                                      class_weight="balanced"))
            head.fit(features[train], labels[train])
            scores.append(f1_score(labels[test], head.predict(features[test]), average="macro"))
    return scores


def evaluate(config, root, items, labels, groups, colour_mode, args):
    import keras

    from training.data import load_images
    from training.model import build

    arch, size, blocks = parse_config(config)
    weights = "efficientnet-lite0" if arch == "lite0" else None
    model = build(arch, size, len(set(labels)), colour_mode=colour_mode, weights=weights, blocks=blocks)
    features = keras.Model(model.inputs[0], model.layers[-1].input)  # up to the softmax head
    t0 = time.time()
    x, kept, bad = load_images(root, items, size, progress=False)
    if bad:
        raise SystemExit(f"{len(bad)} unreadable images, e.g. {bad[0]}")
    f = np.asarray(features.predict(x.astype(np.float32), batch_size=32, verbose=0))
    extract = time.time() - t0
    scores = linear_probe(f, np.asarray(labels), np.asarray(groups), args.folds, range(args.seeds))
    row = {"config": config, "arch": arch, "input": size, "blocks": blocks or "all",
           "weights": weights or "random", "head": "linear (frozen features)",
           "macro_f1_mean": round(float(np.mean(scores)), 4),
           "macro_f1_std": round(float(np.std(scores, ddof=1)), 4),
           "macro_f1_min": round(float(np.min(scores)), 4), "folds": len(scores),
           "forward_ms": round(forward_ms(model, args.repeats), 2),
           "size_mb": round(saved_mb(model), 2), "parameters": int(model.count_params()),
           "feature_seconds": round(extract, 1)}
    print(f"{config:16s} macro-F1 {row['macro_f1_mean']:.4f} +- {row['macro_f1_std']:.4f} "
          f"(min {row['macro_f1_min']:.4f}, {len(scores)} folds)  forward {row['forward_ms']:.1f} ms  "
          f"{row['size_mb']:.1f} MB  (features in {extract:.0f} s)", flush=True)
    return row


def bundle_row(path, repeats):
    from lungclf.bundle import load

    b = load(path)
    m = b.meta.raw
    cv = m.get("cross_validation") or {}
    f1 = cv.get("macro_f1")
    return {"config": f"bundle {os.path.basename(os.path.normpath(path))}", "arch": m["model"]["architecture"],
            "input": b.input_size, "blocks": m["model"].get("blocks") or "-",
            "weights": m["model"].get("initial_weights", "random"),
            "head": "fine-tuned" if m["model"].get("pretrained") else "trained end to end",
            "macro_f1_mean": f1["mean"] if f1 else m["metrics"]["test"]["macro_f1"],
            "macro_f1_std": f1["std"] if f1 else None,
            "folds": cv.get("folds", 1) if f1 else "1 split",
            "forward_ms": round(forward_ms(b.model, repeats), 2),
            "size_mb": round(os.path.getsize(os.path.join(path, "model.keras")) / 1e6, 2),
            "parameters": int(b.model.count_params())}


def table(rows):
    head = "| network | input | blocks | head | macro-F1 (mean ± sd, folds) | forward ms | size MB |"
    out = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        sd = f" ± {r['macro_f1_std']:.3f}" if r.get("macro_f1_std") is not None else ""
        out.append(f"| {r['arch']} ({r['weights']}) | {r['input']} | {r['blocks']} | {r['head']} | "
                   f"{r['macro_f1_mean']:.3f}{sd} ({r['folds']}) | {r['forward_ms']:.1f} | {r['size_mb']:.1f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="image folder (as for training.train); needed with --config")
    p.add_argument("--preset", help="data-set preset (its colour handling is used)")
    p.add_argument("--config", nargs="*", default=["lite0@224", "lite0@160", "lite0@128", "lite0@128:b11"],
                   help="networks to compare: ARCH@SIZE[:bN] (default: %(default)s)")
    p.add_argument("--bundle", nargs="*", default=[], help="committed bundle folders to add as reference rows")
    p.add_argument("--folds", type=int, default=5, help="group folds (default 5)")
    p.add_argument("--seeds", type=int, default=3, help="fold assignments (default 3)")
    p.add_argument("--repeats", type=int, default=50, help="timed forward passes per network (default 50)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    for c in args.config:
        parse_config(c)
    if args.folds < 2 or args.seeds < 1:
        raise SystemExit("--folds needs K >= 2 and --seeds at least 1")

    from training import presets

    pre = presets.preset(args.preset)
    rows = [bundle_row(b, args.repeats) for b in args.bundle]
    if args.config:
        if not args.data:
            raise SystemExit("--config needs --data (the images to score the networks on)")
        items, labels, groups = labelled_groups(args.data, seed=0)
        print(f"{len(items)} images in {len(set(groups))} groups, {len(set(labels))} classes; "
              f"{args.folds}-fold by group x {args.seeds} seeds", flush=True)
        for c in args.config:
            rows.append(evaluate(c, args.data, items, labels, groups, pre["colour_mode"], args))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (forward times rise with it)")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "preset": args.preset, "images": len(items) if args.config else None,
                       "groups": len(set(groups)) if args.config else None, "folds": args.folds, "seeds": args.seeds,
                       "hardware": f"{os.cpu_count()} CPU cores",
                       "load_average": [round(v, 1) for v in os.getloadavg()], "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
