"""Fit a bundle's wrong-input check, measure it, and give the bundle its example images.

    python -m training.wrong_input models/lc25000 --ood-data ../shared/data/chest_ct \\
        --ood-data ../shared/data/iq_othnccd
    python -m training.wrong_input --help

For an existing bundle this recomputes its split from the data and the settings of its
recorded training command (the same audit and split as training.train), checks the
split's fingerprint against metadata.json and refuses if they differ, then:

  1. runs the network on the TRAINING split and fits the reference of lungclf/wrong_input.py:
     class means of the penultimate features and one shared covariance with Ledoit-Wolf
     shrinkage (or --wrong-input-shrinkage; scikit-learn, here only), the pixel statistics'
     mean and covariance (flagging beyond 1.25 x the largest training distance), and the
     colourfulness range of the images;
  2. sets the feature threshold on the VALIDATION split so that --wrong-input-quantile of
     it (default 5%) is flagged by any of the checks;
  3. measures the share flagged on the held-out TEST split (false warnings), on synthetic
     wrong inputs made here (noise, flat, gradients, text) and on every --ood-data folder
     (images of another kind: all files under it, up to --ood-limit, seeded);
  4. writes BUNDLE/wrong_input.npz, the `wrong_input` block of metadata.json, up to
     --examples images from the test split into BUNDLE/examples/ (at least one per class,
     among those the check passes) and re-renders the card.

Training calls `fit_bundle` the same way after writing a bundle (training.train --ood-data).
"""

import argparse
import os
import shlex
import shutil
import sys

import cv2
import numpy as np

from lungclf import schema
from lungclf.bundle import BundleError, sha256, verify, write_json
from lungclf.preprocess import IMAGE_EXTENSIONS, ImageError, load_image, resize
from lungclf.wrong_input import FILE, Reference, colourfulness, pixel_stats

SYNTHETIC = ("noise", "flat", "gradients", "text")
WORDS = ("patient", "lung", "scan", "report", "2024", "CONFIDENTIAL", "slide 12", "hello", "logo", "A B C")
METHOD = ("colourfulness outside the training images' range; eight pixel statistics beyond the training "
          "images' largest Mahalanobis distance plus a quarter; Mahalanobis distance of the penultimate "
          "features to the nearest class mean (class-conditional Gaussians, one shared covariance with "
          "{how} shrinkage {s:.2f}, fitted on the training split) above the threshold at which {q:.0%} of the validation split is "
          "flagged by any of the three")


# ---------------------------------------------------------------- wrong inputs

def synthetic(kind, n, size, seed=0):
    """n images of a kind that is no medical image, made here, as the model's input
    (n, size, size, 3) float32 0..255: the same resize as any upload, from 256 x 256."""
    rng = np.random.default_rng(seed + SYNTHETIC.index(kind))
    side = 256
    out = []
    for i in range(n):
        grey = i % 2 == 1
        if kind == "noise":
            a = rng.uniform(0, 255, (side, side, 1 if grey else 3))
            if i % 4 >= 2:
                a = cv2.GaussianBlur(a.astype(np.float32), (0, 0), rng.uniform(1, 4)).reshape(side, side, -1)
        elif kind == "flat":
            a = np.full((side, side, 3), rng.uniform(0, 255, 1 if grey else 3))
        elif kind == "gradients":
            c0, c1 = rng.uniform(0, 255, (2, 1 if grey else 3))
            t = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[:side, :side] / side
            w = np.clip(np.cos(t) * xx + np.sin(t) * yy, 0, 1)[..., None]
            a = c0 * (1 - w) + c1 * w
        elif kind == "text":
            bg = np.full(3, 255.0) if grey else rng.uniform(0, 255, 3)
            a = np.ascontiguousarray(np.broadcast_to(bg, (side, side, 3))).astype(np.uint8)
            for line in range(rng.integers(2, 6)):
                colour = (0, 0, 0) if grey else tuple(int(v) for v in rng.uniform(0, 255, 3))
                cv2.putText(a, str(rng.choice(WORDS)), (int(rng.integers(0, 60)), 40 + 50 * line),
                            cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.8, 1.6)), colour, 2)
        else:
            raise ValueError(f"unknown synthetic kind {kind!r}; known: {SYNTHETIC}")
        a = np.clip(a, 0, 255).astype(np.uint8)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        out.append(resize(np.ascontiguousarray(a), size).astype(np.float32))
    return np.stack(out)


def folder_images(folder, size, limit=400, seed=0):
    """Up to `limit` images found anywhere under folder (seeded sample), as model input."""
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise SystemExit(f"--ood-data {folder}: no images found under it")
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    out = []
    for p in paths:
        try:
            out.append(load_image(p, size))
        except ImageError:
            pass
    return np.stack(out)


# ---------------------------------------------------------------- fitting and measuring

def features(model, x, batch_size=64):
    from lungclf.inference import predict_features

    return predict_features(model, np.asarray(x, np.float32), batch_size)[1]


def fit(train_features, train_labels, train_images, n_classes, modality="", shrinkage=None):
    """The reference, without its feature threshold: class means and shared shrinkage
    precision of the features (Ledoit-Wolf's own shrinkage, or `shrinkage` towards a scaled
    identity); mean, precision and threshold of the pixel statistics; colour range.
    Returns (reference, the shrinkage used)."""
    from sklearn.covariance import LedoitWolf, ShrunkCovariance

    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels)
    missing = [c for c in range(n_classes) if not (y == c).any()]
    if missing:
        raise SystemExit(f"the training split has no image of class(es) {missing}: cannot fit the check")
    means = np.stack([f[y == c].mean(axis=0) for c in range(n_classes)])
    cov = (LedoitWolf(assume_centered=True) if shrinkage is None
           else ShrunkCovariance(shrinkage=shrinkage, assume_centered=True)).fit(f - means[y])
    colour = colourfulness(train_images)
    lo, hi = np.quantile(colour, [0.001, 0.999])
    # A margin on both sides: half the lowest colourfulness seen, and 1.5 times the highest
    # plus 4 (JPEG colour noise on grey images).
    stats = pixel_stats(train_images)
    slw = LedoitWolf().fit(stats)
    ref = Reference(means, cov.precision_, slw.location_, slw.precision_,
                    colour_range=(float(lo / 2), float(hi * 1.5 + 4)), modality=modality)
    # Pixel statistics flag only what is beyond every training image, by a quarter.
    ref.stats_threshold = float(ref.stats_distances(train_images).max() * 1.25)
    return ref, float(getattr(cov, "shrinkage_", shrinkage))


def set_threshold(ref, val_images, val_features, quantile=0.05):
    """The feature threshold: the lowest at which at most `quantile` of the validation split
    is flagged by any of the checks (colour and pixel flags count too); returns ref."""
    by_colour, by_pixels, _, dist, _ = ref.flags(val_images, val_features)
    cheap = by_colour | by_pixels
    threshold = float(dist.max()) * 1.0001
    for t in np.sort(dist)[::-1]:
        if (cheap | (dist > t)).mean() > quantile:
            break
        threshold = float(t)
    ref.threshold, ref.quantile = threshold, quantile
    return ref


def rate(ref, x, feats):
    """{"images", "flagged", "by_colour", "by_pixels", "by_features"} of a set: shares flagged."""
    by_colour, by_pixels, by_features, _, _ = ref.flags(x, feats)
    share = lambda m: round(float(m.mean()), 4) if len(x) else None  # noqa: E731
    return {"images": int(len(x)), "flagged": share(by_colour | by_pixels | by_features),
            "by_colour": share(by_colour), "by_pixels": share(by_pixels), "by_features": share(by_features)}


def measure(ref, model, sets):
    """{name: rate} for each (name, images) in sets."""
    return {name: rate(ref, x, features(model, x)) for name, x in sets.items()}


def wrong_input_sets(size, ood_dirs=(), n_synthetic=40, ood_limit=400, seed=0):
    """{name: images}: the synthetic kinds and every --ood-data folder."""
    sets = {f"{k} (synthetic)": synthetic(k, n_synthetic, size, seed) for k in SYNTHETIC}
    for d in ood_dirs:
        sets[f"{os.path.basename(os.path.normpath(d))} ({d})"] = folder_images(d, size, ood_limit, seed)
    return sets


# ---------------------------------------------------------------- examples

def pick_examples(paths, labels, ok, n=6, seed=0):
    """Up to n of the test images: round-robin over classes (at least one each when n allows),
    seeded, among those with ok[i] (the check passes them)."""
    rng = np.random.default_rng(seed)
    by_class = {}
    for i in rng.permutation(len(paths)):
        if ok[i]:
            by_class.setdefault(labels[i], []).append(int(i))
    chosen, classes = [], sorted(by_class)
    while len(chosen) < n and any(by_class.values()):
        for c in classes:
            if by_class[c] and len(chosen) < n:
                chosen.append(by_class[c].pop(0))
    return chosen


def write_examples(bundle, data_root, paths, labels, ok, n=6, seed=0):
    """Copy up to n test-split images, unchanged, into BUNDLE/examples/ as <label>_<k>.<ext>;
    returns [{"file", "label", "source"}] for metadata.json."""
    folder = os.path.join(bundle, "examples")
    shutil.rmtree(folder, ignore_errors=True)
    if n <= 0:
        return []
    os.makedirs(folder)
    rows = []
    for k, i in enumerate(pick_examples(paths, labels, ok, n, seed)):
        ext = os.path.splitext(paths[i])[1].lower()
        name = f"{labels[i]}_{k + 1}{ext}"
        shutil.copyfile(os.path.join(data_root, paths[i]), os.path.join(folder, name))
        rows.append({"file": f"examples/{name}", "label": labels[i], "source": paths[i]})
    return rows


def fit_bundle(bundle, model, data, ood_dirs=(), quantile=0.05, examples=6, ood_limit=400, seed=0,
               shrinkage=None, command=None, notes="", log=print):
    """Fit, measure and write the check (and examples) into a written bundle folder.

    `data`: training.train.Prepared (x, y, split, paths relative to data_dir, labels)."""
    meta_path = os.path.join(bundle, "metadata.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = __import__("json").load(f)
    x, y, split = data.x, np.asarray(data.y), np.asarray(data.split)
    size = x.shape[1]
    tr, va, te = split == "train", split == "val", split == "test"
    log(f"wrong-input check: features of {tr.sum()} training, {va.sum()} validation, {te.sum()} test images")
    f_tr, f_va, f_te = (features(model, x[m]) for m in (tr, va, te))
    chosen = shrinkage
    ref, shrinkage = fit(f_tr, y[tr], x[tr], len(data.labels), meta["task"]["modality"], shrinkage)
    set_threshold(ref, x[va], f_va, quantile) if va.any() else set_threshold(ref, x[tr], f_tr, quantile)
    sets = wrong_input_sets(size, ood_dirs, ood_limit=ood_limit, seed=seed)
    rates = {"val": rate(ref, x[va], f_va), "test": rate(ref, x[te], f_te),
             "wrong_inputs": measure(ref, model, sets)}
    digest = ref.save(os.path.join(bundle, FILE))
    meta["wrong_input"] = {
        "file": FILE, "sha256": digest, "feature_dim": int(ref.feature_dim),
        "threshold": ref.threshold, "quantile": quantile, "colour_range": list(ref.colour_range),
        "stats_threshold": ref.stats_threshold,
        "method": METHOD.format(q=quantile, s=shrinkage, how="Ledoit-Wolf" if chosen is None else "chosen"),
        "fitted_on": f"train split ({int(tr.sum())} images)", "shrinkage": round(shrinkage, 4),
        "ood_data": list(ood_dirs), "rates": rates,
    } | ({"command": command} if command else {}) | ({"notes": notes} if notes else {})
    ok = ~np.any(ref.flags(x[te], f_te)[:3], axis=0)
    test_paths = [p for p, m in zip(data.paths, te) if m]
    test_labels = [data.labels[c] for c in y[te]]
    meta["examples"] = write_examples(bundle, data.data_dir, test_paths, test_labels, ok, examples, seed)
    schema.parse_metadata(meta)
    write_json(meta_path, meta)
    from training.card import write

    write(bundle)
    log(f"wrong-input check: threshold {ref.threshold:.2f} (distance), colour range "
        f"{ref.colour_range[0]:.1f}-{ref.colour_range[1]:.1f}; flagged: test {rates['test']['flagged']:.1%}")
    for name, r in rates["wrong_inputs"].items():
        log(f"  {name}: {r['flagged']:.1%} of {r['images']} flagged "
            f"(colour {r['by_colour']:.1%}, pixels {r['by_pixels']:.1%}, features {r['by_features']:.1%})")
    log(f"wrote {os.path.join(bundle, FILE)} and {len(meta['examples'])} examples")
    return meta


# ---------------------------------------------------------------- an existing bundle

def recompute(meta, data_root=None, report=None):
    """The bundle's data and split (training.train.Prepared), recomputed as its recorded
    training command made them; SystemExit if the split's fingerprint differs from
    metadata.json's. `report`: an audit report to reuse (training.audit.run)."""
    from training import train
    from training.split import fingerprint

    command = meta.get("training", {}).get("command", "")
    argv = shlex.split(command)[3:]  # after "python -m training.train"
    args = train.parse_args(argv)
    if data_root:
        args.data = data_root
    split = meta["split"]
    if split.get("seed", args.seed) != args.seed or split.get("fractions", {}).get("test", args.test_fraction) \
            != args.test_fraction:
        raise SystemExit("metadata.json's split seed/fractions differ from its recorded command; refusing")
    prepared = train.prepare(args.data, meta["preprocessing"]["input_size"][0], val_fraction=args.val_fraction,
                             test_fraction=args.test_fraction, seed=args.seed,
                             keep_published_split=args.keep_published_split,
                             drop_conflicts=args.drop_conflicts, report=report)
    found = fingerprint(prepared.rows())
    if found != split["fingerprint"]:
        raise SystemExit(f"the split recomputed from {args.data} (fingerprint {found[:12]}...) is not the "
                         f"bundle's ({split['fingerprint'][:12]}...): different data or settings; refusing "
                         "to fit the check on another split")
    return prepared


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (written by training.train)")
    p.add_argument("--data", help="its data folder (default: the --data of its recorded training command, "
                   "relative to the project root)")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        meta, _ = verify(args.bundle)
    except BundleError as e:
        raise SystemExit(f"refused: {e}")
    raw = meta.raw
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    os.chdir(root)  # the recorded command's paths are relative to the project root
    try:
        data_root = os.path.abspath(os.path.join(cwd, args.data)) if args.data else None
        prepared = recompute(raw, data_root)
    finally:
        os.chdir(cwd)
    from lungclf.bundle import load

    model = load(args.bundle).model
    fit_bundle(args.bundle, model, prepared, args.ood_data, args.wrong_input_quantile, args.examples,
               args.ood_limit, raw["split"].get("seed", 0), args.wrong_input_shrinkage,
               "python -m training.wrong_input " + shlex.join(sys.argv[1:] if argv is None else argv),
               args.wrong_input_notes)


def add_arguments(p):
    """The options training.train shares: --ood-data, --wrong-input-quantile, --examples, --ood-limit."""
    p.add_argument("--ood-data", action="append", default=[], metavar="DIR",
                   help="a folder of images of another kind (e.g. the other modality) to measure the "
                   "wrong-input check on; repeatable")
    p.add_argument("--wrong-input-quantile", type=float, default=0.05, metavar="Q",
                   help="share of the validation split the wrong-input check flags (default 0.05)")
    p.add_argument("--wrong-input-shrinkage", type=float, metavar="S",
                   help="shrink the features' covariance this far (0..1) towards a scaled identity "
                   "(default: Ledoit-Wolf's own estimate); more shrinkage, fewer false warnings on new "
                   "scans and fewer flags on the same modality")
    p.add_argument("--wrong-input-notes", default="", metavar="TEXT",
                   help="a sentence for the card's wrong-input section (how the settings were chosen)")
    p.add_argument("--examples", type=int, default=6, metavar="N",
                   help="test-split images copied into BUNDLE/examples/ (default 6; 0: none)")
    p.add_argument("--ood-limit", type=int, default=400, metavar="N",
                   help="most images read from each --ood-data folder (seeded sample; default 400)")


if __name__ == "__main__":
    sys.exit(main())
