"""Choose a recipe by evidence: group k-fold over candidate recipes, beside the frozen-feature baseline.

    python -m training.select recipes/candidates/chest_ct.toml --out recipes/chest_ct.toml
    python -m training.select recipes/candidates/chest_ct.toml --only frozen   # the cheap ones

A candidates file is TOML: a `[base]` table (a recipe: data, preset, groups, wrong-input
settings ...) and one `[[candidate]]` table per candidate, each a `label` and the recipe
fields it changes. The frozen-feature baseline (training.frozen.BASELINE: whole
EfficientNet-Lite0 at 224 px, identity view, logistic regression C 0.1) is always added.

Every candidate is scored on the same folds: `folds` x `fold_seeds` group k-fold (at least
5 x 2) over all images, the audit's groups never split. Per candidate it prints the mean
macro-F1 over the held-out folds with their spread, the pooled out-of-fold macro-F1 with
its 95% group-bootstrap interval, the paired difference to the baseline with its interval,
and what it cost. The winner is the best candidate (pooled out-of-fold macro-F1) among those
above the baseline by more than the 95% interval of the paired difference, or the baseline
itself when none is; it is written as a recipe file with a note saying how it was chosen,
and every candidate's fold figures go to --json.

A budget, optional, at the top of the candidates file: `max_page_mb = 20` leaves out of the
choice (but not of the table) every candidate whose page download would be larger (its
model.onnx and wrong-input reference, what the browser page of training/export.py fetches),
`max_bundle_mb = 30` every candidate whose bundle would be larger; both estimated from the
network built without weights (`sizes`). The CT models' budget: 20 MB, 30 MB.

Cost on 2 cores: a frozen candidate's features are computed once per view (cached, see
training/frozen.py), then its head fits in about a second a fold; a finetune candidate
trains a network per fold (minutes to half an hour each), so its finished folds' out-of-fold
logits are saved in --state (default: recipes/candidates/NAME.folds.json, committed, so a
later session resumes where this one stopped; a state made on other groups is not reused).
"""

import argparse
import hashlib
import json
import os
import time
import tomllib

import numpy as np

from training import frozen, steps
from training.errors import RecipeError, TrainingError, cli_errors
from training.recipe import WRONG_INPUT_FIELDS, Recipe

BASELINE_LABEL = "baseline: frozen Lite0, logistic regression"
BUDGET_KEYS = ("max_page_mb", "max_bundle_mb")


def read_candidates(path):
    """(base recipe, [(label, recipe)], budget {"max_page_mb": float, "max_bundle_mb": float}, either
    or neither) from a candidates file; the baseline first."""
    try:
        with open(path, "rb") as f:
            spec = tomllib.load(f)
    except FileNotFoundError:
        raise RecipeError(f"no such candidates file: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    base = Recipe.from_dict(spec.get("base", {}), f"{path} [base]")
    base = base.replace(folds=max(base.folds, 5), fold_seeds=max(base.fold_seeds, 2))
    b = frozen.BASELINE
    out = [(BASELINE_LABEL, base.replace(method="frozen", arch=b.arch, weights=b.weights, image_size=b.image_size,
                                         blocks=None, train_blocks=None, views=["identity"], C=frozen.BASELINE_C))]
    for i, c in enumerate(spec.get("candidate", [])):
        c = dict(c)
        label = c.pop("label", f"candidate {i + 1}")
        out.append((label, Recipe.from_dict(base.to_dict() | c, f"{path} candidate {label!r}")))
    budget = {k: spec[k] for k in BUDGET_KEYS if k in spec}
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in budget.values()):
        raise RecipeError(f"{path}: {', '.join(BUDGET_KEYS)} must be a positive number of MB, got {budget}")
    unknown = sorted(k for k, v in spec.items() if not isinstance(v, (dict, list)) and k not in BUDGET_KEYS)
    if unknown:
        raise RecipeError(f"{path}: unknown setting(s) {', '.join(unknown)}; at the top: {', '.join(BUDGET_KEYS)}")
    return base, out, budget


def sizes(recipe, n_classes):
    """(parameters, MB the browser page downloads, MB of the bundle) of the network `recipe`
    names, built without its weights. The page: model.onnx (4 bytes a parameter, 2 with
    stored_weights = "float16") and the wrong-input reference (the precision's upper triangle in
    float32, or float16 with stored_weights = "float16", which the fit keeps only where float16
    holds it, and the class means: the app's own
    wrong_input.npz, which the page reads too). The bundle: those, model.keras (as many bytes a
    parameter as model.onnx) and 1 MB for the rest."""
    _, config = steps.configure(recipe, verbose=0)
    model = steps.build_model(config, n_classes)
    params, d = int(model.count_params()), int(model.layers[-1].input.shape[-1])
    per_value = 2 if recipe.stored_weights == "float16" else 4
    onnx = per_value * params
    reference = per_value * d * (d + 1) // 2 + 8 * n_classes * d
    rest = 1_000_000  # figures, examples, card, metadata, the network's config in model.keras
    return params, round((onnx + reference) / 1e6, 1), round((2 * onnx + reference + rest) / 1e6, 1)


def within(budget, page, bundle):
    """Whether a candidate's page and bundle MB keep within the candidates file's budget."""
    return page <= budget.get("max_page_mb", float("inf")) and bundle <= budget.get("max_bundle_mb", float("inf"))


def budget_text(budget):
    """The budget in words ("the page 20 MB, the bundle 30 MB")."""
    return ", ".join(f"the {k.split('_')[1]} {v:g} MB" for k, v in budget.items())


def score(recipe, prepared, state, save, log=print):
    """{"logits": (seeds, N, K) out-of-fold, "fold_f1": [...], "folds": [...], "seconds"} of one candidate."""
    t0 = time.time()
    _, config = steps.configure(recipe, verbose=0)
    y, groups = np.asarray(prepared.y), list(prepared.groups)
    if recipe.method == "frozen":
        feats, _ = frozen.features(frozen.Spec.of(config), prepared.data_dir, prepared.paths, recipe.views,
                                   prepared.report["fingerprint"], log=log)
        cv = frozen.cross_validate(feats, y, groups, recipe.folds, recipe.fold_seeds, recipe.C, recipe.seed)
    else:
        cv = finetune_folds(recipe, config, prepared, state, save, log)
    cv["seconds"] = round(time.time() - t0, 1)
    return cv


def fold_key(recipe):
    """The recipe's fields that a finetune fold's network depends on (what its state is keyed
    on): not its name and notes, the wrong-input settings or how model.onnx is stored, so that
    changing those redoes no fold."""
    after = {"name", "notes", "stored_weights", *WRONG_INPUT_FIELDS}
    return {k: v for k, v in recipe.to_dict().items() if k not in after}


def finetune_folds(recipe, config, prepared, state, save, log):
    """Train `recipe` once per fold (val carved from the training folds for early stopping);
    finished folds are kept in `state` (a dict; `save()` after each fold) and not redone."""
    import dataclasses

    from sklearn.metrics import f1_score

    from lungclf.inference import predict_logits
    from training.data import Item, load_images
    from training.split import fingerprint, group_folds

    # The folds are the recipe's on these groups: a state from other groups (another audit, or
    # another CPU's borderline near-copy) is not resumed.
    key = hashlib.sha256(json.dumps([fold_key(recipe), fingerprint(prepared.rows())],
                                    sort_keys=True).encode()).hexdigest()[:16]
    done = state.setdefault(key, {})
    y, groups = np.asarray(prepared.y), np.asarray(prepared.groups)
    x = None
    logits = np.zeros((recipe.fold_seeds, len(y), len(prepared.labels)), np.float32)
    f1s, where = [], []
    for s in range(recipe.fold_seeds):
        for k, (train, test) in enumerate(group_folds(y, groups, recipe.folds, recipe.seed + s)):
            name = f"{s}/{k}"
            if name not in done:
                if x is None:
                    items = [Item(p, prepared.labels[c]) for p, c in zip(prepared.paths, y)]
                    x = load_images(prepared.data_dir, items, config.image_size, progress=False)[0]
                    prepared = dataclasses.replace(prepared, x=x)
                log(f"  finetune fold {name} of {recipe.fold_seeds}x{recipe.folds} ...")
                fold = steps.fold(prepared, k, recipe.folds, recipe.val_fraction, recipe.seed + s)
                model, _ = steps.fit(fold, config)
                done[name] = predict_logits(model, x[test]).tolist()
                save()
            logits[s, test] = np.asarray(done[name], np.float32)
            f1s.append(float(f1_score(y[test], logits[s, test].argmax(1), labels=np.arange(logits.shape[-1]),
                                      average="macro", zero_division=0)))
            where.append((s, k, test))
    return {"logits": logits, "fold_f1": f1s, "folds": where}


def select(path, out=None, json_path=None, state_path=None, only=None, log=print):
    """Score every candidate of the file at `path`; write the winner to `out` -> rows."""
    base, candidates, budget = read_candidates(path)
    if only:
        candidates = [c for c in candidates if c[0] == BASELINE_LABEL or c[1].method == only]
    prepared = steps.prepare_recipe(base.replace(method="frozen", weights=base.weights or "efficientnet-lite0",
                                                 examples=0), decode=False)
    state = {}
    if state_path and os.path.exists(state_path):
        with open(state_path) as f:
            state = json.load(f)

    def save():
        if state_path:
            with open(state_path, "w") as f:
                json.dump(state, f)

    y, groups = np.asarray(prepared.y), list(prepared.groups)
    log(f"{len(y)} images in {len(set(groups))} groups; {base.folds}-fold by group x {base.fold_seeds} seeds; "
        f"{len(candidates)} candidates")
    results = {}
    for label, recipe in candidates:
        log(f"--- {label}")
        results[label] = score(recipe, prepared, state, save, log)
    base_cv = results[BASELINE_LABEL]
    rows = []
    for label, recipe in candidates:
        s = frozen.summary(y, groups, results[label], base_cv)
        _, config = steps.configure(recipe, verbose=0)
        params, page, bundle = sizes(recipe, len(prepared.labels))
        rows.append({"label": label, "method": recipe.method, "recipe": recipe.to_dict(),
                     "network": frozen.Spec.of(config).text() if recipe.weights else config.arch,
                     "seconds": results[label]["seconds"], "parameters": params, "page_mb": page,
                     "bundle_mb": bundle, "within_budget": within(budget, page, bundle)} | s)
    rows.sort(key=lambda r: -r["pooled_macro_f1"])
    log("\n" + table(rows))
    winner = choose(rows)
    if out:
        write_winner(winner, rows, base, out, path, budget)
        log(f"\nwinner: {winner['label']} -> {out}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"candidates_file": path, "images": len(y), "groups": len(set(groups)),
                       "folds": base.folds, "seeds": base.fold_seeds, "budget": budget, "rows": rows}, f, indent=1)
    return rows


def choose(rows):
    """The best candidate (pooled out-of-fold macro-F1) among those above the baseline by more
    than the interval of the paired difference; the baseline itself when none is: a
    candidate that cannot show it beats the cheapest model does not earn its cost. Candidates
    over the file's budget (within_budget False) are not chosen."""
    clear = [r for r in rows if r["label"] != BASELINE_LABEL and r["minus_baseline"]["interval95"][0] > 0
             and r.get("within_budget", True)]
    return clear[0] if clear else next(r for r in rows if r["label"] == BASELINE_LABEL)


def table(rows):
    out = ["| candidate | method | macro-F1 pooled OOF (95%) | folds mean ± sd | minus baseline (95%) | page / bundle MB "
           "| cost s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lo, hi = r["interval95"]
        d = r["minus_baseline"]
        out.append(f"| {r['label']} | {r['method']} | {r['pooled_macro_f1']:.3f} ({lo:.3f}-{hi:.3f}) | "
                   f"{r['mean']:.3f} ± {r['std']:.3f} ({r['folds']}) | {d['mean']:+.3f} "
                   f"({d['interval95'][0]:+.3f} to {d['interval95'][1]:+.3f}) | {r.get('page_mb', '')} / {r.get('bundle_mb', '')}"
                   f"{'' if r.get('within_budget', True) else ' (over budget)'} | {r['seconds']:.0f} |")
    return "\n".join(out)


def write_winner(winner, rows, base, out, path, budget=None):
    lo, hi = winner["interval95"]
    within = f" and within the budget ({budget_text(budget)})" if budget else ""
    rule = (f"the best of those above the frozen-feature baseline by more than the 95% interval of "
            f"the paired difference{within}" if winner["label"] != BASELINE_LABEL else
            f"no candidate was above the frozen-feature baseline by more than the 95% interval of the "
            f"paired difference{within}, so the baseline itself")
    over = [r["label"] for r in rows if not r.get("within_budget", True) and r["minus_baseline"]["interval95"][0] > 0]
    if over:
        rule += f" (above it but over the budget: {'; '.join(over)})"
    others = [r for r in rows if r is not winner][:4]
    note = (f"Chosen by python -m training.select {path}: {len(rows)} candidates, group "
            f"{base.folds}-fold x {base.fold_seeds} seeds; {rule}. It scored pooled out-of-fold macro-F1 "
            f"{winner['pooled_macro_f1']:.3f} (95% {lo:.3f}-{hi:.3f}); others: "
            + "; ".join(f"{r['label']} {r['pooled_macro_f1']:.3f} ({r['minus_baseline']['mean']:+.3f} vs "
                        f"baseline folds)" for r in others) + ".")
    recipe = Recipe.from_dict(winner["recipe"]).replace(notes=note)
    if recipe.method == "finetune" and recipe.folds:
        recipe = recipe.replace(folds=0)  # the estimate is the selection's; the bundle trains once
    with open(out, "w") as f:
        f.write(recipe.to_toml(f"{winner['label']}\nWritten by python -m training.select {path}; edit freely."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", help="a candidates file (TOML: [base] and [[candidate]] tables)")
    p.add_argument("--out", help="write the winner here as a recipe file")
    p.add_argument("--json", help="write every candidate's fold figures here")
    p.add_argument("--state", help="keep finished finetune folds here and resume from it (default: "
                   "CANDIDATES with .folds.json for .toml, beside it: commit it, so a later session resumes)")
    p.add_argument("--only", choices=["frozen", "finetune"], help="score only candidates of this method")
    args = p.parse_args(argv)
    with cli_errors():
        state = args.state or os.path.splitext(args.candidates)[0] + ".folds.json"
        rows = select(args.candidates, args.out, args.json, state, args.only)
        if not rows:
            raise TrainingError("no candidates")
    return rows


if __name__ == "__main__":
    main()
