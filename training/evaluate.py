"""Evaluate a model bundle on a folder of labelled images.

    python -m training.evaluate --model models/lc25000 --data DIR [--out DIR] [--tta]

Prints scikit-learn's classification report and writes metrics.json and a
confusion-matrix figure to --out. The images go through the same preprocessing as in
training and in the app. Class folders must use the bundle's label names.

--tta adds test-time augmentation: the model's logits over the bundle's views (flips and
quarter turns for tissue, left-right mirror for CT) are averaged and calibrated with the
temperature fitted for them; the report gives the figures with and without it.
"""

import argparse
import json
import os

import numpy as np

from lungclf.inference import calibrate, predict_logits
from training.errors import ModelError, cli_errors


def fit_temperature(logits, y):
    """The temperature T > 0 that minimises the negative log-likelihood of softmax(logits / T)
    on the labels y (Guo et al. 2017), found by a bounded scalar search on log T."""
    from scipy.optimize import minimize_scalar

    logits, y = np.asarray(logits, np.float64), np.asarray(y)
    if not len(y):
        return 1.0

    def nll(log_t):
        return -np.log(calibrate(logits, np.exp(log_t))[np.arange(len(y)), y] + 1e-300).mean()

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                                        options={"xatol": 1e-5}).x))


def expected_calibration_error(probs, y, bins=10):
    """ECE: the bin-weighted gap between confidence and accuracy over `bins` equal-width bins."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(ece)


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

    with cli_errors():
        from training import plots
        from lungclf.bundle import BundleError, load
        from training.data import load_images, scan

        try:
            b = load(args.model)
        except BundleError as e:
            raise ModelError(f"refused: {e}") from None
        items = [it for it in scan(args.data)]
        unknown = sorted({it.label for it in items} - set(b.labels))
        if unknown:
            print(f"skipping classes the model does not know: {', '.join(unknown)}")
            items = [it for it in items if it.label in b.labels]
        x, kept, bad = load_images(args.data, items, b.input_size)
        for path, why in bad:
            print(f"skipped {path}: {why}")
        y = np.array([b.labels.index(it.label) for it in kept])
        probs = calibrate(predict_logits(b.model, x), b.temperature)
        print(classification_report(y, probs.argmax(1), labels=list(range(len(b.labels))),
                                    target_names=b.labels, digits=4, zero_division=0))
        m = metrics(probs, y, b.labels)
        print(f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  "
              f"on {len(y)} images")
        if args.tta:
            views, t = b.meta.tta.views, b.meta.tta.temperature or b.temperature
            tta_probs = calibrate(predict_logits(b.model, x, views=views), t)
            m["tta"] = metrics(tta_probs, y, b.labels) | {"views": views}
            print(f"with TTA ({len(views)} views): accuracy {m['tta']['accuracy']:.4f}  "
                  f"macro-F1 {m['tta']['macro_f1']:.4f}  ECE {m['tta']['ece']:.4f}")
        if args.out:  # the confusion matrix shows the plain figures, as metrics.json's top level does
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "metrics.json"), "w") as f:
                json.dump(m, f, indent=2)
            plots.confusion_matrix(y, probs.argmax(1), b.labels, os.path.join(args.out, "confusion_matrix.png"),
                                   title=f"Confusion matrix ({os.path.basename(os.path.normpath(args.data))})")
            print(f"wrote {args.out}/metrics.json and confusion_matrix.png")


if __name__ == "__main__":
    main()
