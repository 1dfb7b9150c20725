"""Train a lung image classifier from a recipe and write a model bundle.

    python -m training.train --recipe recipes/lc25000.toml                 # rebuild models/lc25000
    python -m training.train --recipe recipes/chest_ct.toml --dry-run      # recipe, split, fingerprint
    python -m training.train --recipe recipes/chest_ct.toml --seed 1 --out /tmp/ct_seed1
    python -m training.train --data DIR --out OUT --preset lc25000          # no recipe: the defaults

A recipe (training/recipe.py, files under recipes/) holds every training setting; each
flag below overrides one field of it. The bundle keeps the resolved recipe as recipe.json,
so the same command rebuilds it. The steps (training/steps.py for `finetune`,
training/frozen.py for `frozen`):

    prepare       scan, audit (copies grouped, --groups merged), label conflicts, group split
    fit           finetune: Keras, augmentation, early stopping on val; frozen: pooled
                  features once, logistic regression, group k-fold for the estimate
    evaluate      calibration, held-out (or out-of-fold) metrics, the frozen-feature baseline
                  printed beside them, so you see whether fine-tuning paid
    write         model.keras, classes.json, metadata.json, recipe.json, README.md, figures/,
                  wrong_input.npz and examples/
    export        model.onnx (python -m training.export): the same network for ONNX Runtime,
                  which the app serves it with, and for the browser page; checked against Keras

Run options (not part of the recipe, they do not change the model): --out, --dry-run,
--verbose, --mlflow, --no-onnx, and --stream/--cache/--processes for data sets larger than memory
(docs/scale.md).
"""

import argparse
import json
import os
import shlex
import sys
import time

from training import recipe as recipes, tracking
from training.errors import TrainingError, cli_errors
from training.recipe import Recipe

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", metavar="FILE", help="a recipe (.toml or .json; a bundle's recipe.json too)")
    p.add_argument("--out", help="bundle folder to write (default: models/<recipe name>)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe, the split counts and its fingerprint; train nothing")
    p.add_argument("--verbose", type=int, default=1,
                   help="Keras progress: 1 bars (default), 2 a line per epoch, 0 none")
    p.add_argument("--no-onnx", action="store_true",
                   help="do not export model.onnx (the app then serves model.keras with TensorFlow)")
    p.add_argument("--mlflow", action="store_true",
                   help="log params, per-epoch metrics and the bundle to MLflow (./mlruns/ unless "
                   "MLFLOW_TRACKING_URI is set, which also turns this on)")
    recipes.add_arguments(p)
    scale = p.add_argument_group("training at scale (docs/scale.md)")
    scale.add_argument("--stream", action="store_true",
                       help="read and decode images as training asks for them (training/stream.py) instead "
                       "of decoding all into memory first: memory stays flat however many images")
    scale.add_argument("--cache", metavar="DIR", help="with streaming: keep decoded images on disk in DIR "
                       "after the first epoch (implies --stream)")
    scale.add_argument("--processes", type=int, default=1, metavar="N",
                       help="train with N JAX worker processes, Keras 3's distribution API "
                       "(training/distributed.py; needs requirements-scale.txt; implies --stream)")
    scale.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                       help="with --processes: end the job, naming the worker, when a worker finishes no "
                       "training step for this long (default 600)")
    scale.add_argument("--coordinator", metavar="HOST:PORT",
                       help="run one worker of a job across machines: process 0's address (with "
                       "--process-id and --processes)")
    scale.add_argument("--process-id", type=int, metavar="I", help="this machine's worker, 0 .. N-1 "
                       "(process 0 writes the bundle)")
    return p.parse_args(argv)


def resolve(args):
    """(recipe, output folder) from parsed options: the --recipe file (or the defaults) with
    every flag given applied on top."""
    base = Recipe.from_file(args.recipe) if args.recipe else Recipe()
    changes = recipes.overrides(args)
    groups = changes.pop("groups", None)  # a path from here; the recipe keeps it relative to the data
    recipe = base.replace(**changes)
    if not recipe.data:
        raise TrainingError("no data folder: give --data DIR or a --recipe that names one")
    if groups:
        recipe = recipes.with_groups_path(recipe, groups)
    out = args.out or (os.path.join(recipes.ROOT, "models", recipe.name) if recipe.name else None)
    if not out:
        raise TrainingError("no output folder: give --out DIR (or a recipe with a name)")
    if not recipe.name:
        recipe = recipe.replace(name=os.path.basename(os.path.normpath(out)))
    return recipe, out


def train(recipe, out, args, argv=()):
    """The whole run of `recipe` into bundle folder `out` (`args`: the run options of
    parse_args; `argv`: the command line, for the record) -> the bundle's metadata (None
    for a dry run or a worker that is not process 0)."""
    from training import steps

    t0 = time.time()
    pre, config = steps.configure(recipe, verbose=args.verbose)
    spread = args.processes > 1 or args.coordinator is not None or args.process_id is not None
    if spread:
        if recipe.method != "finetune":
            raise TrainingError("--processes trains a finetune recipe; a frozen recipe fits in seconds")
        from training import distributed

        distributed.check_options(args.processes, args.coordinator, args.process_id, config.batch_size)
    stream = bool(args.stream or args.cache or spread)
    prepared = steps.prepare_recipe(recipe, decode=not (stream or args.dry_run))
    if pre["classes"] and prepared.labels != pre["classes"]:
        print(f"note: preset {recipe.preset} expects classes {pre['classes']}, found {prepared.labels}")
    if args.dry_run:
        return dry_run(recipe, prepared)
    command = "python -m training.train " + shlex.join(argv)
    if recipe.method == "frozen":
        from training import frozen

        with steps.staged(out) as stage:
            meta = frozen.train(recipe, stage, prepared, pre, config, command=command)
        return meta if args.no_onnx else steps.export_onnx(out, meta)

    t_cv = time.time()
    cv = steps.cross_validate(prepared, config, recipe.folds, recipe.val_fraction) if recipe.folds else None
    t0 += time.time() - t_cv  # the bundle records the time of its own training
    run, callbacks = None, []
    if tracking.wanted(args.mlflow):
        counts = prepared.counts()
        run = tracking.Run(recipe.name, recipe.to_dict() | {"modality": pre["modality"]}
                           | {f"{s}_images": counts[s]["images"] for s in ("train", "val", "test")})
        callbacks.append(run.callback())
    try:  # a run that fails ends its MLflow run as FAILED, so the next one can start
        job = None
        if spread:  # N JAX workers fit; this process (TensorFlow, as the app) evaluates and writes
            from training import distributed

            model, history = distributed.fit(prepared, config, args.processes, args.coordinator, args.process_id,
                                             cache=args.cache, callbacks_wanted=bool(callbacks),
                                             worker_timeout=args.worker_timeout or distributed.WORKER_TIMEOUT)
            if model is None:
                print(f"worker {args.process_id} done; process 0 writes the bundle")
                return None
            job = model.job
        else:
            data = None
            if args.cache:
                from training import stream as streaming

                data = streaming.fit_datasets(prepared, config, cache=args.cache)
            model, history = steps.fit(prepared, config, callbacks, data=data)
        seconds = time.time() - t0
        results = steps.evaluate_and_calibrate(model, prepared, pre["tta_views"] if recipe.tta else None)
        baseline = steps.baseline_on_split(prepared, config)
        if baseline:
            steps.print_against_baseline(results.test["macro_f1"], baseline)

        with steps.staged(out) as stage:  # no bundle at `out` unless every part of it, the check included, is there
            steps.write_bundle(stage, model, prepared, results, history, config, recipe=recipe, pre=pre,
                               seconds=seconds, cross_validation=cv, distributed=job, command=command,
                               baseline=baseline)
            meta = steps.fit_wrong_input(stage, model, prepared, recipe)
    except BaseException:
        if run:
            run.finish(None, out, status="FAILED")
        raise
    if not args.no_onnx:
        meta = steps.export_onnx(out, meta)
    if run:
        run.finish(meta, out)
    print(f"wrote bundle {out} ({meta['model']['bytes'] / 1e6:.1f} MB model) in {seconds / 60:.1f} min")
    return meta


def dry_run(recipe, prepared):
    """Print the resolved recipe, the split counts and the split's fingerprint."""
    from training.split import fingerprint

    print("recipe (resolved):")
    print(json.dumps(recipe.to_dict(), indent=2))
    for s, c in prepared.counts().items():
        print(f"{s:8s} {c['images']:5d} images in {c['groups']:4d} groups {c['per_class']}")
    print(f"split fingerprint: {fingerprint(prepared.rows())}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with cli_errors():
        recipe, out = resolve(args)
        return train(recipe, out, args, argv)


if __name__ == "__main__":
    main()
