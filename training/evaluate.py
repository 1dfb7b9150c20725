"""Evaluate a model bundle on a folder of labelled images.

    python -m training.evaluate --model models/lc25000 --data DIR [--out DIR] [--tta]

Prints scikit-learn's classification report and writes metrics.json and a
confusion-matrix figure to --out. The images go through the same preprocessing as in
training and in the app. Class folders must use the bundle's label names.

--tta adds test-time augmentation: the model's probabilities over the bundle's views
(flips and quarter turns for tissue, left-right mirror for CT) are averaged, and the
report gives the figures with and without it.
"""

import argparse
import json
import os

import numpy as np

# scikit-learn is imported where metrics are computed, not here: app.py imports this module
# for calibrate() and should not pay for scikit-learn at start-up.


def calibrate(probs, temperature):
    """Temperature scaling applied to probabilities: softmax(log(p) / T)."""
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def fit_temperature(probs, y):
    """The temperature that minimises the negative log-likelihood on (probs, y)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 200))
    nll = [-np.log(calibrate(probs, t)[np.arange(len(y)), y] + 1e-12).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def expected_calibration_error(probs, y, bins=10):
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(ece)


# Test-time augmentation views of a batch (N, H, W, C) of square images.
VIEWS = {
    "identity": lambda a: a,
    "flip_lr": lambda a: a[:, :, ::-1],
    "flip_ud": lambda a: a[:, ::-1],
    "rot90": lambda a: np.rot90(a, 1, axes=(1, 2)),
    "rot180": lambda a: np.rot90(a, 2, axes=(1, 2)),
    "rot270": lambda a: np.rot90(a, 3, axes=(1, 2)),
    "transpose": lambda a: a.transpose(0, 2, 1, 3),
    "transverse": lambda a: np.rot90(a, 2, axes=(1, 2)).transpose(0, 2, 1, 3),
}


def tta_views(x, views):
    """The batch x under each named view, stacked view after view: (len(views) * N, ...)."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation views {unknown}; known: {list(VIEWS)}")
    return np.concatenate([np.ascontiguousarray(VIEWS[v](x)) for v in views])


def tta_mean(probs, n_views):
    """Average the probabilities of tta_views' stacked output back to one row per image."""
    return probs.reshape(n_views, -1, probs.shape[-1]).mean(axis=0)


def predict(model, x, batch_size=64, views=None):
    """Softmax outputs of model on x; with `views`, averaged over those TTA views."""
    if views:
        return np.concatenate([tta_mean(predict(model, tta_views(x[i:i + batch_size], views),
                                                batch_size * len(views)), len(views))
                               for i in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 0))
    return np.concatenate([np.asarray(model(x[i:i + batch_size].astype(np.float32), training=False))
                           for i in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 0))


def bundle_tta(metadata):
    """(views, temperature) for test-time augmentation with a bundle: its own views and the
    temperature fitted for them, else a left-right mirror and its plain temperature."""
    tta = metadata.get("tta") or {}
    plain = metadata.get("calibration", {}).get("temperature", 1.0)
    return tta.get("views") or ["identity", "flip_lr"], float(tta.get("temperature") or plain)


def metrics(probs, y, labels):
    """The metrics a bundle stores: scikit-learn's, plus calibration error."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                                 f1_score)

    pred = probs.argmax(1)
    ids = list(range(len(labels)))
    report = classification_report(y, pred, labels=ids, target_names=labels, output_dict=True,
                                   zero_division=0)
    return {
        "images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=ids, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "ece": expected_calibration_error(probs, y),
        "per_class": {lab: {"precision": report[lab]["precision"], "recall": report[lab]["recall"],
                            "f1": report[lab]["f1-score"], "support": int(report[lab]["support"])}
                      for lab in labels},
    }


def main():
    from sklearn.metrics import classification_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder or Hub repo id[@revision]")
    p.add_argument("--data", required=True, help="folder of labelled images (class folders)")
    p.add_argument("--out", help="write metrics.json and confusion_matrix.png here")
    p.add_argument("--tta", action="store_true",
                   help="also measure test-time augmentation (the bundle's views, averaged)")
    args = p.parse_args()

    from training import plots
    from training.bundle import BundleError, load
    from training.data import load_images, scan

    try:
        b = load(args.model)
    except BundleError as e:
        raise SystemExit(f"refused: {e}")
    items = [it for it in scan(args.data)]
    unknown = sorted({it.label for it in items} - set(b.labels))
    if unknown:
        print(f"skipping classes the model does not know: {', '.join(unknown)}")
        items = [it for it in items if it.label in b.labels]
    x, kept, bad = load_images(args.data, items, b.input_size)
    for path, why in bad:
        print(f"skipped {path}: {why}")
    y = np.array([b.labels.index(it.label) for it in kept])
    probs = calibrate(predict(b.model, x), b.temperature)
    print(classification_report(y, probs.argmax(1), labels=list(range(len(b.labels))),
                                target_names=b.labels, digits=4, zero_division=0))
    m = metrics(probs, y, b.labels)
    print(f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  "
          f"on {len(y)} images")
    if args.tta:
        views, t = bundle_tta(b.metadata)
        probs = calibrate(predict(b.model, x, views=views), t)
        m["tta"] = metrics(probs, y, b.labels) | {"views": views}
        print(f"with TTA ({len(views)} views): accuracy {m['tta']['accuracy']:.4f}  "
              f"macro-F1 {m['tta']['macro_f1']:.4f}  ECE {m['tta']['ece']:.4f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(m, f, indent=2)
        plots.confusion_matrix(y, probs.argmax(1), b.labels, os.path.join(args.out, "confusion_matrix.png"),
                               title=f"Confusion matrix ({os.path.basename(os.path.normpath(args.data))})")
        print(f"wrote {args.out}/metrics.json and confusion_matrix.png")


if __name__ == "__main__":
    main()
