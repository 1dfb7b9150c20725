"""Evaluate a model bundle on a folder of labelled images.

    python -m training.evaluate --model models/lc25000 --data DIR [--out DIR]

Prints scikit-learn's classification report and writes metrics.json and a
confusion-matrix figure to --out. The images go through the same preprocessing as in
training and in the app. Class folders must use the bundle's label names.
"""

import argparse
import json
import os

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                             f1_score)


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


def predict(model, x, batch_size=64):
    return np.concatenate([np.asarray(model(x[i:i + batch_size].astype(np.float32), training=False))
                           for i in range(0, len(x), batch_size)]) if len(x) else np.zeros((0, 0))


def metrics(probs, y, labels):
    """The metrics a bundle stores: scikit-learn's, plus calibration error."""
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundle folder or Hub repo id[@revision]")
    p.add_argument("--data", required=True, help="folder of labelled images (class folders)")
    p.add_argument("--out", help="write metrics.json and confusion_matrix.png here")
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
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "metrics.json"), "w") as f:
            json.dump(m, f, indent=2)
        plots.confusion_matrix(y, probs.argmax(1), b.labels, os.path.join(args.out, "confusion_matrix.png"),
                               title=f"Confusion matrix ({os.path.basename(os.path.normpath(args.data))})")
        print(f"wrote {args.out}/metrics.json and confusion_matrix.png")


if __name__ == "__main__":
    main()
