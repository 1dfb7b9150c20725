"""Render a bundle's model card (README.md) from the top-level `model_card.md` template.

The YAML header is built by huggingface_hub's ModelCardData (library_name, pipeline_tag,
license, datasets, tags, metrics and a model-index with the held-out results), never by
hand; the body is the Jinja template filled from metadata.json.

    python -m training.card BUNDLE_DIR [--repo-id OWNER/NAME --revision v1]   # re-render README.md

The card must pass the Hub's metadata check: scripts/push_to_hub.py runs
ModelCard.validate before uploading, and tests/test_hub.py checks the YAML offline.
"""

import argparse
import json
import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_card.md")


def card_data(meta):
    test = meta["metrics"]["test"]
    data = meta["data"]
    cv = (meta.get("cross_validation") or {}).get("estimate")
    split_name = (f"group {meta['cross_validation']['folds']}-fold cross-validation, out of fold" if cv
                  else meta["split"]["name"])
    results = [
        EvalResult(task_type="image-classification", dataset_type=data["dataset_id"],
                   dataset_name=data["dataset_name"], dataset_split=split_name,
                   metric_type=metric, metric_name=name, metric_value=round(test[key], 4))
        for metric, name, key in (("accuracy", "Accuracy (held-out groups)", "accuracy"),
                                  ("f1", "Macro F1 (held-out groups)", "macro_f1"))
    ]
    return ModelCardData(
        model_name=meta["name"],
        library_name="keras",
        pipeline_tag="image-classification",
        license=data["license"],
        license_name="research-only" if data["license"] == "other" else None,
        datasets=[data["dataset_id"]],
        tags=["keras", "image-classification", "medical-imaging", "lung-cancer",
              meta["task"]["modality"].lower(), "research-only"],
        metrics=["accuracy", "f1"],
        eval_results=results,
    )


def _audit_text(meta):
    """The 'Data audit' section: what `training.audit` found and how the split was made."""
    audit, split = meta.get("audit", {}), meta["split"]
    lines = [audit.get("summary", "")]
    if "near_duplicate_groups" in audit:
        lines.append(f"Found {audit['exact_duplicate_groups']} groups of identical files, "
                     f"{audit['near_duplicate_groups']} groups of near copies (rotations, flips, crops, "
                     f"re-encodings, neighbouring slices), {audit['cross_class_groups']} groups under more "
                     f"than one label and {audit['cross_split_groups']} groups across the published split "
                     f"({audit.get('method', '')}).")
    lines += [f"- {w}" for w in audit.get("warnings", [])] or ["- No problems found."]
    if audit.get("conflicting_images_dropped"):
        lines.append(f"- {audit['conflicting_images_dropped']} images with conflicting labels were left out "
                     "(`--drop-conflicts`).")
    if split.get("method"):
        lines.append(f"\nSplit: {split['method']}.")
    if split.get("warning"):
        lines.append(f"\n> **WARNING: {split['warning']}**")
    return "\n".join(lines).strip()


def _cv_text(cv):
    """Mean and spread of K-fold cross-validation by group, if it was run."""
    if not cv:
        return ""
    rows = [f"| {m.replace('_', ' ')} | {v['mean']:.4f} | {v['std']:.4f} | {', '.join(f'{x:.3f}' for x in v['folds'])} |"
            for m, v in cv.items() if isinstance(v, dict) and isinstance(v.get("folds"), list)]
    seeds = f" x {cv['seeds']} fold assignments" if cv.get("seeds", 1) > 1 else ""
    return "\n".join([f"Cross-validation by group, {cv['folds']} folds{seeds} (seed {cv['seed']}): each fold's "
                      "groups were held out of its training.", "", "| metric | mean | std | per fold |",
                      "| --- | --- | --- | --- |"] + rows)


def _headline(meta):
    """The cross-validated estimate in one paragraph (frozen bundles), else ""."""
    e = (meta.get("cross_validation") or {}).get("estimate")
    if not e:
        return ""
    lo, hi = e["interval95"]
    text = (f"**Cross-validated macro-F1 {e['pooled_macro_f1']:.3f}** (95% interval {lo:.3f}-{hi:.3f}; "
            f"{e['interval']}); mean over {e['folds']} held-out folds {e['mean']:.3f} ± {e['std']:.3f}. "
            "The figures below pool every image's out-of-fold prediction (each answered by a model "
            "fitted without its group); the shipped model was then fitted on every group but those of "
            "its examples.")
    if e.get("is_baseline"):
        text += (" This recipe is the frozen-feature baseline itself (ImageNet EfficientNet-Lite0 at 224 px, "
                 "logistic regression): no candidate tried beat it by more than the interval.")
    elif e.get("baseline"):
        b, d = e["baseline"], e["minus_baseline"]
        text += (f" The frozen-feature baseline (ImageNet EfficientNet-Lite0 at 224 px, logistic "
                 f"regression) scores {b['pooled_macro_f1']:.3f} (95% {b['interval95'][0]:.3f}-"
                 f"{b['interval95'][1]:.3f}) on the same folds: difference {d['mean']:+.3f} "
                 f"(95% {d['interval95'][0]:+.3f} to {d['interval95'][1]:+.3f}).")
    return text


def _split_rows(meta):
    """The split table's rows; for a cross-validated bundle, what the shipped model was fitted on."""
    counts = meta["split"]["counts"]
    if not (meta.get("cross_validation") or {}).get("estimate"):
        return [{"split": s, **v} for s, v in counts.items()]
    names = {"train": "fitted on (the shipped model)", "test": "held out (its examples)"}
    return [{"split": names.get(s, s), **v} for s, v in counts.items() if v["images"]]


def _baseline_text(meta):
    """The frozen-feature baseline on the same held-out split (finetune bundles), else ""."""
    b = meta.get("baseline")
    if not b or (meta.get("cross_validation") or {}).get("estimate"):
        return ""
    sample = (f" It was fitted on a seeded sample of {b['fit_images']:,} of the {b['train_val_images']:,} "
              "training and validation images, which keeps its memory flat."
              if b.get("fit_images", 0) < b.get("train_val_images", 0) else "")
    return (f"Frozen-feature baseline on the same test split ({b['backbone']}, {b['head']}): macro-F1 "
            f"{b['macro_f1']:.4f}, accuracy {b['accuracy']:.4f}.{sample}")


def _tta_text(meta):
    """Held-out figures with test-time augmentation, when training measured them."""
    tta = meta["metrics"].get("test_tta")
    if not tta:
        return ""
    views = meta.get("tta", {}).get("views", [])
    return (f"{len(views)} views averaged ({', '.join(views)}); held-out accuracy {tta['accuracy']:.4f}, "
            f"macro F1 {tta['macro_f1']:.4f}; off by default, `TTA=1` turns it on in the app")


def _pretrained_text(model):
    """Where the starting weights came from and their licence ("" when trained from scratch)."""
    p = model.get("pretrained")
    if not p:
        return ""
    trained_on = " and ".join(t for t, key in (("ImageNet", "ImageNet"), ("chest CT", " CT ")) if key in p["origin"])
    return (f"{p['architecture']} {trained_on} weights from the pip package `{p['package']}` {p['version']} "
            f"(licence {p['license']}; {p['origin']}), converted to Keras at training time")


# The data sets' terms in words (the card's YAML carries the licence id).
LICENCES = {"other": "research use as its authors allow; cite it", "cc-by-4.0": "CC BY 4.0; cite it",
            "cc0-1.0": "CC0, as listed on public mirrors"}


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _wrong_input(meta):
    """(text, rows) of the 'Wrong-input check' section, from metadata.json's wrong_input block."""
    w = meta.get("wrong_input")
    if not w:
        return "", []
    r = w.get("rates", {})
    test, val = r.get("test", {}), r.get("val", {})
    text = (f"Method: {w.get('method', '')}. Fitted on the {w.get('fitted_on', 'train split')}; feature "
            f"distance limit {w['threshold']:.2f}, pixel-statistics limit {w['stats_threshold']:.2f}, colourfulness "
            f"range {w['colour_range'][0]:.1f}-{w['colour_range'][1]:.1f}. ")
    if "out_of_fold" in r:
        oof = r["out_of_fold"]
        text += (f"False warnings on new groups (every image against a reference fitted without its "
                 f"group, where the limit was set): **{_pct(oof.get('flagged'))}** of {oof.get('images', 0)} images.")
    else:
        text += (f"False warnings on the held-out test split: **{_pct(test.get('flagged'))}** of "
                 f"{test.get('images', 0)} images (validation, where the limit was set: {_pct(val.get('flagged'))}).")
    if w.get("ood_data"):
        text += (" Images of another kind used to measure it: " + ", ".join(f"`{d}`" for d in w["ood_data"])
                 + " (all files under each folder, up to 400, seeded sample), and synthetic images made by "
                 "`training/wrong_input.py`.")
    if w.get("known_wrong"):
        text += (" Known wrong kinds the check learned (their mean features join the reference, and an image "
                 "nearer to one of them than to every class mean is flagged): "
                 + ", ".join(f"`{d}`" for d in w.get("known_wrong_data", w["known_wrong"]))
                 + "; each is measured out of fold (every group of its images against a reference fitted "
                 "without that group), so its rate is that of new scans of the same source, not of every other "
                 "source of the kind.")
    if w.get("notes"):
        text += f"\n\n{w['notes']}"
    if w.get("command"):
        text += f"\n\nFitted for this bundle with:\n\n```bash\n{w['command']}\n```"
    rows = [{"name": name, "images": v["images"], "flagged": _pct(v["flagged"]), "colour": _pct(v.get("by_colour")),
             "pixels": _pct(v.get("by_pixels")), "features": _pct(v.get("by_features"))}
            for name, v in r.get("wrong_inputs", {}).items()]
    return text, rows


def _measured(meta):
    """A sentence or two on what the heatmap and the check cost, when they were measured."""
    m = meta.get("measured", {})
    h, s = m.get("heatmap"), m.get("serving")
    out = [_served_file(meta)] if meta.get("onnx") else []
    if h:
        ms, x = h["ms"], h["ratio"]
        out.append(f"Cost, batch of 1 on {h['cores']} CPU cores at load {h['load']} (`{h['command']}`): "
                   f"forward pass {ms['forward']:.1f} ms; with the maps {ms['explain']:.1f} ms "
                   f"({x['explain']:.2f}x); with the wrong-input check {ms['+ check']:.1f} ms ({x['+ check']:.2f}x); "
                   f"with the picture over a 224 px image {ms['+ overlay']:.1f} ms ({x['+ overlay']:.2f}x).")
    text = " ".join(out)
    if s:
        text += "\n\n" + _serving(s)
    return text


def _served_file(meta):
    """A sentence on model.onnx (training/export.py): its size, how its weights are stored and
    how far its answers are from the Keras network the figures were measured with."""
    o = meta["onnx"]
    text = f"**Served file.** The app and the page run `model.onnx` ({o['bytes'] / 1e6:.1f} MB"
    if o.get("weights") == "float16":
        m = meta["model"]
        keras = (f"; `model.keras` holds the same rounded weights, {m['bytes'] / 1e6:.1f} MB"
                 if m.get("weights") == "float16" and m.get("bytes") else "")
        # `trained`: against model.keras before the export rounded it (exports before 2026-12-04
        # left model.keras in float32, so their own difference is the one from the trained network)
        trained = o.get("trained") or (None if keras else o)
        text += f", its large weights stored as float16 and computed in float32{keras})."
        if trained:
            text += (f" The figures above were measured with the float32 network as trained; on the export's "
                     f"{o['checked_on']} check images the served probabilities differ from it by at most "
                     f"{trained['probabilities_difference']:.4f}, and every one keeps its label and wrong-input "
                     "verdict")
        else:
            text += (" The figures above were measured with the float32 network as trained, before an earlier "
                     "export rounded model.keras")
    else:
        text += (f"), within {max(o['relative_difference'].values()):.1e} of the Keras network on the "
                 f"export's {o['checked_on']} check images, relative to each output's scale")
    return text + "."


def _serving(s):
    """measured.serving (scripts/benchmark_serving.py --record): the app's speed against a floor
    app that answers one constant label, as a sentence and a table."""
    load, floor, clients = s["load"], s["floor"], s["clients"]
    engine = {"onnx": "ONNX Runtime, model.onnx", "keras": "TensorFlow, model.keras"}.get(s.get("engine", "keras"))
    sentence = (f"**Speed.** Served by the app ({engine}), {s['date']} (`{s['command']}`; medians of {s['runs']} fresh "
                f"servers, {s['cores']} CPU cores shared with other work, load average {load['start']:.1f} at the "
                f"start and up to {load['max']:.1f} while running). One client's p50 is compared with the floor "
                f"app's p50 plus this model's bare forward pass ({s['forward_ms']:.1f} ms); {clients} clients' "
                "requests/s with the floor app's.")
    header = (f"| endpoint | p50 ms, 1 client | p50 / floor | req/s, {clients} clients | req/s / floor "
              "| server CPU ms per request |")
    rows = [f"| floor (the same page answering one constant label) | {floor['p50_ms']:.0f} | 1 | "
            f"{floor['rps']:.1f} | 1 | {floor['server_cpu_ms']:.1f} |"]
    names = {"classify": "`/classify` (the page: label, check, heatmap grid)",
             "predict": "`/predict` (the API: also the heatmap picture, fetched)"}
    for key, name in names.items():
        if key in s:
            e = s[key]
            rows.append(f"| {name} | {e['p50_ms']:.0f} | {e['p50_over_floor']:.2f} | {e['rps']:.1f} | "
                        f"{e['rps_over_floor']:.2f} | {e['server_cpu_ms']:.1f} |")
    return "\n".join([sentence, "", header, "| --- | --- | --- | --- | --- | --- |", *rows])


def _series_text(meta):
    """Scan-level next to slice-level accuracy (scripts/series_accuracy.py --record), if measured."""
    s = meta.get("series")
    if not s:
        return ""
    multi = (f" On the {s['groups_with_2_or_more_slices']} groups of two or more slices: slices "
             f"{s['slice_accuracy_in_those']:.3f}, scans {s['scan_accuracy_of_those']:.3f}."
             if s.get("groups_with_2_or_more_slices") else "")
    return (f"The app's `/predict_series` answers once for the slices of one scan: the {s['rule']}. "
            f"{'Out of fold over every group' if s.get('out_of_fold') else 'On the held-out test split'}, "
            f"where {s['groups']}: slice accuracy {s['slice_accuracy']:.3f} "
            f"over {s['test_images']} slices, scan accuracy {s['scan_accuracy']:.3f} over "
            f"{s['test_groups']} groups.{multi} Measured with `{s['command']}`.")


def render(meta, classes, repo_id=None, revision=None):
    """The card as a huggingface_hub.ModelCard; `repo_id` and `revision` (set when
    publishing) fill in the loading instructions, else they show OWNER/NAME."""
    test = meta["metrics"]["test"]
    split = meta["split"]
    names = classes["names"]
    per_class = test.get("per_class", {})
    audit_text, cv_text = _audit_text(meta), _cv_text(meta.get("cross_validation"))
    wrong_input_text, wrong_input_rows = _wrong_input(meta)
    return ModelCard.from_template(
        card_data(meta),
        template_path=TEMPLATE,
        title=f"{meta['name']}: lung image classifier ({meta['task']['modality']})",
        summary=meta.get("description", ""),
        split_name=split["name"],
        seed=split["seed"],
        split_rows=_split_rows(meta),
        metric_rows=[("accuracy", f"{test['accuracy']:.4f}"), ("macro F1", f"{test['macro_f1']:.4f}"),
                     ("balanced accuracy", f"{test['balanced_accuracy']:.4f}"),
                     ("expected calibration error", f"{test.get('ece', float('nan')):.4f}")],
        class_rows=[{"label": lab, "name": names.get(lab, lab), **{k: (f"{v:.3f}" if isinstance(v, float) else v)
                     for k, v in per_class.get(lab, {}).items()}} for lab in classes["labels"]],
        audit_text=audit_text,
        split_warning=split.get("warning", ""),
        split_fingerprint=split.get("fingerprint", ""),
        cv_text=cv_text,
        headline_text=_headline(meta),
        baseline_text=_baseline_text(meta),
        metric_caption=("every image, out of fold" if (meta.get("cross_validation") or {}).get("estimate")
                        else "test split"),
        curves=bool(meta["training"].get("history")),
        calibration_method=meta.get("calibration", {}).get("method", "temperature scaling on the validation split"),
        architecture=meta["model"]["architecture"],
        parameters=f"{meta['model']['parameters']:,}",
        input_size=meta["preprocessing"]["input_size"][0],
        modality=meta["task"]["modality"],
        class_list=", ".join(f"{names.get(l, l)} (`{l}`)" for l in classes["labels"]),
        temperature=f"{meta.get('calibration', {}).get('temperature', 1.0):.3f}",
        colour=("grey (the network sees luminance only)" if meta["preprocessing"].get("colour_mode") == "grey"
                else "RGB"),
        tta_text=_tta_text(meta),
        pretrained_text=_pretrained_text(meta["model"]),
        notes=meta.get("notes", ""),
        wrong_input_text=wrong_input_text,
        series_text=_series_text(meta),
        measured_text=_measured(meta),
        wrong_input_rows=wrong_input_rows,
        examples=meta.get("examples") or [],
        license=LICENCES.get(meta["data"].get("license", "other"), meta["data"].get("license")),
        train_minutes=f"{meta['training']['seconds'] / 60:.1f}",
        hardware=meta["training"]["hardware"],
        command=(f"python -m training.train --recipe recipes/{meta['name']}.toml   # or this bundle's "
                 "recipe.json\n# as run: " + meta["training"]["command"]) if meta.get("recipe")
        else meta["training"]["command"],
        dataset_name=meta["data"]["dataset_name"],
        citation=meta["data"]["citation"] or "Cite the data set you trained on.",
        repo_id=repo_id or "OWNER/NAME",
        revision=revision,
    )


def write(bundle, repo_id=None, revision=None):
    """Re-render BUNDLE/README.md from the bundle's metadata.json and classes.json."""
    with open(os.path.join(bundle, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(bundle, "classes.json"), encoding="utf-8") as f:
        classes = json.load(f)
    path = os.path.join(bundle, "README.md")
    render(meta, classes, repo_id, revision).save(path)
    return path


def record(bundle, value, *keys):
    """Set metadata.json's entry at keys (e.g. "measured", "serving") to value, creating the
    parents, write metadata.json back and re-render the card: how measurement scripts'
    --record puts their figures into a bundle."""
    from lungclf.bundle import write_json

    path = os.path.join(bundle, "metadata.json")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    node = meta
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    write_json(path, meta)
    write(bundle)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--repo-id", help="Hub repo id the bundle is published as (fills in how to load it)")
    p.add_argument("--revision", help="tag or branch to name in the loading instructions")
    args = p.parse_args()
    print(f"wrote {write(args.bundle, args.repo_id, args.revision)}")


if __name__ == "__main__":
    main()
