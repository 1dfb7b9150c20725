"""The Gradio app: classify lung images with the model bundle(s) named by MODEL_REPO.

    python app.py                                  # the bundles committed under models/
    MODEL_REPO=owner/name@v1 python app.py         # a Hub model repo at a revision
    MODEL_REPO=models/lc25000,/path/to/other python app.py   # several, first is default

Settings (environment variables, all optional):
    MODEL_REPO          comma-separated bundle folders or Hub repo ids[@revision]
    GRADIO_SERVER_NAME  address to bind (Gradio's own; default 127.0.0.1)
    GRADIO_SERVER_PORT  port (Gradio's own; default 7860)
    CONCURRENCY_LIMIT   predictions run at once (default 2, one per free-Space core)
    QUEUE_SIZE          requests waiting before new ones are told the Space is busy (default 32)
    MAX_FILE_SIZE       largest upload accepted, refused before decoding (default 10mb)
    UPLOAD_TTL          seconds an uploaded file is kept before it is deleted (default 600)
    TTA                 1: test-time augmentation, the probabilities averaged over each
                        bundle's views (flips/turns for tissue, mirror for CT); slower (default 0)
    BATCH_MAX_FILES, BATCH_MAX_MB, BATCH_MAX_PIXELS, ZIP_MAX_RATIO
                        limits of one /predict_batch or /predict_series request (lungclf.batch)
    BATCH_CONCURRENCY_LIMIT  batches run at once, beside the single images (default 1)
    ENGINE              auto: ONNX Runtime for a bundle with a checked model.onnx, else
                        TensorFlow (default); keras: TensorFlow always; onnx: refuse a bundle
                        without model.onnx (lungclf.inference)
    OPENBLAS_NUM_THREADS  NumPy's BLAS threads (default 1 here: requests run side by side in
                        Gradio's threads, and BLAS threads spinning beside them cost more CPU
                        than they save; docs/performance.md)
    GRADIO_MCP_SERVER   True: also serve /predict and /predict_batch as MCP tools for AI
                        assistants at /gradio_api/mcp/ (Gradio's own setting; default off)

Every bundle is verified (every metadata field the app reads, sha256, Keras safe mode, the
model's input and output shapes) and warmed up at start-up; a bundle that fails stops
start-up with one line saying which check failed, and exit status 2. The page and the
API (/predict: an image, and optionally the model name; a gr.Label value back) are built
when this module is imported, as Gradio's reload mode (`gradio app.py`) and Spaces expect.
/predict answers with five outputs, the gr.Label value first (docs/api.md documents each):
the label, the wrong-input check (JSON), the heatmap over the image, the check in words
(Markdown) and the heatmap's raw grid (JSON). The page calls /classify, the same answer
without the picture: the browser draws the map over the image from the grid
(lungclf/overlay.js), so no picture is made, encoded, stored or fetched for a visitor.
The serving code lives in lungclf/; this file holds the UI. For research and education
only, not for diagnosis.
"""

import logging
import os
import sys
import tempfile
import time

# Before NumPy is first imported, or it starts one spinning BLAS thread per core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2
import gradio as gr
import numpy as np

from lungclf import batch
from lungclf.bundle import BundleError, load
from lungclf.heatmap import normalise, overlay
from lungclf.inference import Classifier, EngineError, label_text
from lungclf.preprocess import IMAGE_EXTENSIONS, ImageError
from lungclf.wrong_input import kind_of

HERE = os.path.dirname(os.path.abspath(__file__))
# Without MODEL_REPO: the committed bundles, LC25000 first (the default model).
COMMITTED = [os.path.join(HERE, "models", n) for n in ("lc25000", "iq_othnccd", "chest_ct")]
DEFAULT_MODELS = ",".join(p for p in COMMITTED if os.path.isfile(os.path.join(p, "metadata.json")))
CONCURRENCY_LIMIT = int(os.environ.get("CONCURRENCY_LIMIT", "2"))
QUEUE_SIZE = int(os.environ.get("QUEUE_SIZE", "32"))
MAX_FILE_SIZE = os.environ.get("MAX_FILE_SIZE", "10mb")
UPLOAD_TTL = int(os.environ.get("UPLOAD_TTL", "600"))
SESSIONS = 200  # per-session state Gradio keeps (it keeps 10,000 by default; this app needs none)
# After every request Gradio rebuilds a pandas summary of its last 10,000 events for its
# monitoring page (off here): CPU per request that grows with traffic. Keep 100, never rebuild.
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**12))
LIMITS = batch.Limits.from_env()
BATCH_CONCURRENCY_LIMIT = int(os.environ.get("BATCH_CONCURRENCY_LIMIT", "1"))
TTA = os.environ.get("TTA", "0").strip().lower() in ("1", "true", "yes", "on")
ENGINE = os.environ.get("ENGINE", "auto").strip().lower()
NOTICE = ("**For research and education only. Not for diagnosis.** This model has not been "
          "validated for clinical use; never use its output to make decisions about a patient.")

log = logging.getLogger("app")


def load_bundles(model_repo, tta=TTA, engine=ENGINE):
    """Load, verify and warm up every bundle in a comma-separated MODEL_REPO value, keyed by name.
    Each request runs its network on one thread: CONCURRENCY_LIMIT requests run side by side."""
    bundles = {}
    for spec in [s for s in model_repo.split(",") if s.strip()]:
        b = load(spec)
        try:
            bundles[b.name] = Classifier(b, tta, engine, threads=1)
        except (EngineError, ValueError) as e:
            raise BundleError(f"{spec.strip()}: ENGINE={engine}: {e}") from None
        log.warning("serving %s from %s (%s)", b.name, spec.strip(), bundles[b.name].engine)
    if not bundles:
        raise BundleError("MODEL_REPO names no bundle")
    return bundles


def tta_text(meta):
    """A line on test-time augmentation when TTA is on, with its held-out figure if measured."""
    if not TTA:
        return ""
    measured = meta.metrics.test_tta
    figure = f"; held-out macro-F1 with it **{measured.macro_f1:.3f}**" if measured else ""
    return f"Test-time augmentation is on ({len(meta.tta.views)} views averaged){figure}.\n\n"


def held_out_text(m, split_text):
    """The model's figure on groups it never saw: cross-validated (frozen recipes) or one test split."""
    test = m.metrics.test
    e = (m.raw.get("cross_validation") or {}).get("estimate")
    if e:
        lo, hi = e["interval95"]
        return (f"Cross-validated by group ({e['folds']} held-out folds, every image answered by a model "
                f"that never saw its scan or tile): macro-F1 **{test.macro_f1:.3f}** (95% {lo:.3f}-{hi:.3f}), "
                f"accuracy **{test.accuracy:.3f}** on {test.images} images.")
    return (f"Held-out test (groups never seen in training): accuracy **{test.accuracy:.3f}**, "
            f"macro-F1 **{test.macro_f1:.3f}** on {test.images} images. Split ({m.split.name}): {split_text}.")


def audit_text(audit):
    """The data audit in words for someone deciding whether to trust the held-out figure."""
    a = audit or {}
    if not a.get("images"):
        return ""
    lines = [f"{a['images']:,} images, checked for copies before splitting: they form {a['groups']:,} groups "
             "(a group is an image with its exact and near copies, or the tiles or slices of one "
             "source), and each group sits on one side of every split, so copies cannot inflate "
             "the figure above."]
    if a.get("conflicting_images_dropped"):
        lines.append(f"{a['conflicting_images_dropped']} images were left out because their copies "
                     "carried different labels in the data set.")
    if a.get("cross_split_groups"):
        lines.append(f"The data set's own published split puts copies of {a['cross_split_groups']} "
                     "groups on both sides; figures computed on it would be too high. This model's "
                     "split does not.")
    cues = {k: v for k, v in (a.get("shortcut_cues") or {}).items() if k != "all of these"}
    if cues:
        name, cue = max(cues.items(), key=lambda kv: kv[1]["accuracy"] - kv[1]["chance"])
        if cue["accuracy"] - cue["chance"] >= 0.05:
            lines.append(f"A cue that should not matter, the **{name}**, guesses the class "
                         f"{cue['accuracy']:.0%} of the time (chance {cue['chance']:.0%}): the model "
                         "could have learned it too, so an image that differs in it may fare worse.")
    return "**How the data was checked.** " + " ".join(lines)


def summary(bundle):
    """Markdown with what the user should know about a model: data, classes, held-out figures."""
    m = bundle.meta
    split_text = ", ".join(f"{s} {c.images} images / {c.groups} groups" for s, c in m.split.counts.items())
    classes = ", ".join(label_text(lab, bundle.names) for lab in bundle.labels)
    audit = audit_text(m.raw.get("audit") or {})
    return (f"### {bundle.name}\n"
            f"**{m.task.modality}** images, trained on {m.data.dataset_name}. "
            f"Classes: {classes}.\n\n"
            f"{held_out_text(m, split_text)}\n\n"
            f"{tta_text(m)}"
            f"Input {bundle.input_size}x{bundle.input_size}, {m.model.architecture} network, "
            f"{m.model.parameters:,} parameters." + (f"\n\n{audit}" if audit else ""))


def examples_of(served):
    """[[image path], ...] and {file name: true class} of a bundle's examples/ folder: up to
    6 images from groups its model never saw, listed with their labels in metadata.json;
    they travel with the bundle to a Hub model repo."""
    folder = os.path.join(served.bundle.folder, "examples")
    if not os.path.isdir(folder):
        return [], {}
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    truth = {os.path.basename(e["file"]): e["label"] for e in served.bundle.meta.raw.get("examples") or []
             if isinstance(e, dict) and "file" in e and "label" in e}
    return [[os.path.join(folder, f)] for f in files], truth


API_DESCRIPTION = ("Classify one lung image. image: the image file (JPEG, PNG, BMP, WebP, TIFF or "
                   f"GIF; up to {MAX_FILE_SIZE}). model: the name of a served model; omit it for "
                   "the default. Returns, in order: the top class and the calibrated confidence of "
                   "every class (a gr.Label value); the wrong-input check (wrong_input true means the "
                   "image does not look like the model's training images and the label is not "
                   "reliable; message, score, threshold); the heatmap of what the model looked at, "
                   "over the image; the check in words; the heatmap's raw grid. See docs/api.md. "
                   "For research and education only, not for diagnosis.")
CLASSIFY_DESCRIPTION = ("The same answer as /predict without the heatmap picture (cheaper): the "
                        "label, the wrong-input check, the check in words and the heatmap's raw "
                        "grid (draw it over the image yourself, as the page does). See docs/api.md. "
                        "For research and education only, not for diagnosis.")
OPACITY = 0.5  # the heatmap's default opacity over the image
# The page's heatmap, drawn in the browser from the grid (lungclf/overlay.js), with OpenCV's
# JET colours filled in so the browser's picture is Python's (tests/test_browser_explain.py).
JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1]
with open(os.path.join(HERE, "lungclf", "overlay.js"), encoding="utf-8") as f:
    DRAW_JS = f.read().replace("__JET__", str(JET.tolist()))
KEY_STOPS = ", ".join(f"rgb{tuple(int(c) for c in JET[i])} {i / 2.55:.0f}%" for i in range(0, 256, 32))
HEATMAP_HTML = (
    '<div id="heatmap"><canvas id="heatmap-canvas" data-state="empty" '
    'style="width:100%;max-width:448px;height:auto"></canvas>'
    f'<div id="heatmap-key" style="height:12px;border-radius:3px;background:linear-gradient(to right, {KEY_STOPS}, rgb{tuple(int(c) for c in JET[255])} 100%)"></div>'
    '<div style="display:flex;justify-content:space-between;font-size:0.85em">'
    '<span>blue: no evidence</span><span>red: strongest evidence for the top class</span></div></div>')


def notice(verdict, modality):
    """The wrong-input check in words a visitor understands, shown beside the label."""
    if verdict.check == "none":
        return f"<small>{verdict.message}</small>"
    kind = kind_of(modality)
    numbers = (f"How far what the network sees in this image is from its training images: "
               f"**{verdict.score:.1f}**; images farther than {verdict.threshold:.1f} are flagged, a limit "
               f"that about 1 in 20 real {kind} cross (a false warning).")
    if verdict.wrong_input and verdict.check == "features" and verdict.score <= verdict.threshold:
        numbers += " This image is within that limit: it was flagged for the reason above."
    if verdict.wrong_input:
        return (f"### ⚠ Not reliable\n**{verdict.message}**\n\n"
                f"<small>Check that failed: {verdict.check}. {numbers} "
                "The label below is what the model would say, shown only for teaching.</small>")
    return f"<small>✓ Looks like the {kind} this model was trained on. {numbers}</small>"


def truth_text(truth, names, probabilities):
    """For an example: its true class beside the model's answer."""
    name = label_text(truth, names)
    right = max(probabilities, key=probabilities.get) == name
    return (f"**This example's true class: {name}.** The model's answer is "
            f"{'right' if right else '**wrong**'}. (Examples come from scans or tiles this model never saw.)\n\n")


def grid(cam):
    """The raw map as a list of rows, 0..1 (JSON for the API and the opacity slider)."""
    return None if cam is None else np.round(normalise(cam), 4).tolist()


def model_choices(bundles):
    """A model selector's choices: each model's modality and classes shown; its value (and
    the API's) is the name."""
    return [(f"{n} ({s.bundle.meta.task.modality}, {len(s.bundle.labels)} classes)", n)
            for n, s in bundles.items()]


def served_model(bundles, model):
    """The Classifier named `model` (the first, default one when empty); a gr.Error naming
    the served models otherwise."""
    names = list(bundles)
    served = bundles.get(str(model or names[0]))
    if served is None:
        raise gr.Error(f"Unknown model {model!r}. Choose one of: {', '.join(names)}.", print_exception=False)
    return served


def build_demo(bundles):
    """The whole app: the notice, then the single-image page (other pages add tabs here)."""
    # delete_cache: every UPLOAD_TTL seconds, uploads older than UPLOAD_TTL are deleted.
    with gr.Blocks(title="Lung image classifier (research only)",
                   delete_cache=(UPLOAD_TTL, UPLOAD_TTL)) as demo:
        gr.Markdown("# Lung image classifier\n" + NOTICE)
        with gr.Tab("One image"):
            model = single_image_page(bundles)
        build_batch_tabs(bundles, model)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    return demo


def single_image_page(bundles):
    """One image in; the label, the wrong-input check beside it and the heatmap out. The page
    calls /classify and draws the map in the browser; /predict, for API clients, also returns
    the picture. Returns the model selector (the other tabs follow it)."""
    names = list(bundles)
    choices = model_choices(bundles)

    def analyse(image, model):
        """(Classifier, Answer) of one image; gr.Error with a message for a bad one."""
        if image is None:
            raise gr.Error("Upload an image first.", print_exception=False)
        served = served_model(bundles, model)
        path = image.get("path") if isinstance(image, dict) else image
        try:
            return served, served.analyse(path)
        except ImageError as e:
            raise gr.Error(str(e), print_exception=False) from None  # the user's file: no traceback
        except Exception:
            log.exception("prediction failed")
            raise gr.Error("The image could not be classified. Try another file.",
                           print_exception=False) from None  # logged just above

    def answer_values(served, answer):
        """/classify's answer: label, check, the check in words, the heatmap's grid."""
        return (answer.probabilities, answer.verdict.as_dict(),
                notice(answer.verdict, served.bundle.meta.task.modality), grid(answer.cam))

    def classify(image, model=None):
        """Classify one lung image and check that it looks like the model's training images;
        the heatmap comes as its grid (the page draws it over the image).

        Args:
            image: the image file (JPEG, PNG, BMP, WebP, TIFF or GIF) to classify.
            model: which model to use, by name; leave empty for the first (default) model.
        Returns:
            The classes with their calibrated confidences; the wrong-input check; the check
            in words; the heatmap's raw grid.
        """
        return answer_values(*analyse(image, model))

    def predict(image, model=None):
        """Classify one lung image, check that it looks like the model's training images, and
        show what the model looked at.

        Args:
            image: the image file (JPEG, PNG, BMP, WebP, TIFF or GIF) to classify.
            model: which model to use, by name; leave empty for the first (default) model.
        Returns:
            The classes with their calibrated confidences; the wrong-input check; the heatmap
            over the image; the check in words; the heatmap's raw grid.
        """
        served, answer = analyse(image, model)
        label, check, words, cam_grid = answer_values(served, answer)
        picture = None if answer.cam is None else overlay(answer.rgb, answer.cam, OPACITY)
        return label, check, picture, words, cam_grid

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            image = gr.Image(type="filepath", label="Lung image (histopathology tile or CT slice)",
                             sources=["upload", "clipboard"], height=320)
            model = gr.Dropdown(choices, value=names[0], label="Model", visible=len(names) > 1,
                                elem_id="one-image-model")
            button = gr.Button("Classify", variant="primary")
            example_sets = page_examples(bundles, image)
        with gr.Column(scale=1, min_width=300):
            check_text = gr.Markdown(elem_id="wrong-input-notice")
            label = gr.Label(num_top_classes=5, label="Prediction")
            check = gr.JSON(label="Wrong-input check", visible="hidden")
            gr.Markdown("**What the model looked at** (class activation map of the top class)")
            gr.HTML(HEATMAP_HTML)
            opacity = gr.Slider(0, 1, value=OPACITY, step=0.05, label="Heatmap opacity")
            cam = gr.JSON(visible="hidden", elem_id="heatmap-grid")
            card = gr.Markdown(summary(bundles[names[0]].bundle))
            picture = gr.Image(type="numpy", format="jpeg", visible=False)  # /predict's only
    outputs = [label, check, check_text, cam]
    gr.on([image.upload, button.click], classify, inputs=[image, model], outputs=outputs,
          api_name="classify", api_description=CLASSIFY_DESCRIPTION, preprocess=False)
    # /predict: the documented API with the picture, on a trigger the page never fires.
    gr.Button(visible=False).click(predict, [image, model], [label, check, picture, check_text, cam],
                                   api_name="predict", api_description=API_DESCRIPTION, preprocess=False)
    # Drawn in the browser: a new grid, a new opacity, or the image cleared.
    for trigger in (cam.change, opacity.change, image.clear):
        trigger(None, [cam, image, opacity], None, js=DRAW_JS, queue=False)

    # An example: classified by its own model as soon as it is loaded, its true class beside
    # the answer (each bundle's metadata.json lists its examples' labels).
    for name, (_, examples, truth) in example_sets.items():
        def run(path, name=name, truth=truth):
            probabilities, verdict, words, cam_grid = classify(path, name)
            known = truth.get(os.path.basename(path.get("path") if isinstance(path, dict) else path))
            if known:
                words = truth_text(known, bundles[name].bundle.names, probabilities) + words
            return probabilities, verdict, words, cam_grid

        examples.load_input_event.then(run, image, outputs, api_name=False, preprocess=False)

    def switch(name):
        """A new model: its card and examples, and no answer left from the old one."""
        return [summary(bundles[name].bundle), None, None, "", None] + \
            [gr.update(visible=n == name) for n in example_sets]

    columns = [column for column, _, _ in example_sets.values()]
    model.change(switch, model, [card, label, check, check_text, cam, *columns], api_name=False, queue=False)
    return model


def page_examples(bundles, image):
    """Each model's examples (all of them: no paging), shown only while that model is
    selected. Returns {model name: (its column, its gr.Examples, {file name: true class})}."""
    sets = {}
    for i, (name, served) in enumerate(bundles.items()):
        rows, truth = examples_of(served)
        if rows:
            with gr.Column(visible=i == 0, elem_id=f"examples-{name}", elem_classes="examples") as column:
                examples = gr.Examples(rows, inputs=[image], label=f"Examples ({name}; the true class "
                                       "shows once classified)", examples_per_page=len(rows))
            sets[name] = (column, examples, truth)
    return sets


CSV_DIR = tempfile.mkdtemp(prefix="lungclf-csv-")  # our CSVs; Gradio serves copies from its cache


def csv_file(rows, stem):
    """Write the rows as CSV for download; CSVs older than UPLOAD_TTL are deleted first."""
    now = time.time()
    for old in os.listdir(CSV_DIR):
        full = os.path.join(CSV_DIR, old)
        if now - os.path.getmtime(full) > UPLOAD_TTL:
            os.remove(full)
    folder = tempfile.mkdtemp(dir=CSV_DIR)
    return batch.write_csv(rows, os.path.join(folder, f"{stem}.csv"))


BATCH_TEXT = (f"Drop many images, DICOM slices (.dcm) or a .zip of them: one row per file. "
              f"Limits: {LIMITS.describe()}.")
SERIES_TEXT = ("Drop the slices of **one** CT scan (image files, DICOM slices or a .zip): one "
               f"answer per slice and one for the scan. {batch.SERIES_RULE} Slices are ordered "
               "by their DICOM position, else by file name.")


def is_ct(served):
    return served.bundle.meta.task.modality.upper() == "CT"


def shown_table(rows):
    """The rows for the page's table: the values clients read (docs/batch.md), shown with
    the confidence as a percentage (as the one-image page shows it) and "ok" where the
    wrong-input check passed."""
    import pandas as pd

    frame = pd.DataFrame([r.values() for r in rows], columns=batch.COLUMNS, dtype=object)  # None stays None
    passed = frame["error"].eq("") & frame["wrong_input"].eq("")
    return frame.style.format({"confidence": lambda v: "" if pd.isna(v) else f"{v:.1%}",
                               "wrong_input_score": lambda v: "" if pd.isna(v) else f"{v:.1f}"}) \
        .format(lambda v: "ok", subset=(passed[passed].index, ["wrong_input"]))


def build_batch_tabs(bundles, first_model):
    """The 'Many images' and 'CT series' tabs, with /predict_batch and /predict_series.
    Batches run in their own queue slot (BATCH_CONCURRENCY_LIMIT), so single images do not
    wait behind them. Each tab has its own model selector, which follows the first tab's
    (the series tab only to a CT model); the series tab starts on the CT model with the best
    held-out macro-F1. A switch clears the tab's results."""
    names = list(bundles)
    choices = model_choices(bundles)
    cts = [n for n, s in bundles.items() if is_ct(s)]
    ct = max(cts, key=lambda n: bundles[n].bundle.meta.metrics.test.macro_f1) if cts else names[0]

    def classify_files(files, model_name, progress, series=False):
        """Uploaded files -> lungclf.batch Rows; every upload and extracted file is read in a
        temporary folder that is deleted before this returns."""
        if not files:
            raise gr.Error("Upload files first.", print_exception=False)
        served = served_model(bundles, model_name)
        paths = [f.get("path") if isinstance(f, dict) else str(f) for f in files]

        def before_each(n, total):
            progress((n, total), desc="classifying")

        try:
            with batch.Workspace() as ws:
                items = batch.expand(paths, ws, LIMITS)
                if series:
                    items = batch.order_slices(items)
                return batch.classify(items, batch.predictor(served), before_each)
        except batch.BatchError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception:
            log.exception("batch failed")
            raise gr.Error("The files could not be classified. Try again with fewer files.",
                           print_exception=False) from None

    def predict_batch(files, model=None, progress=gr.Progress()):
        """Classify many lung images at once.

        Args:
            files: image files (JPEG, PNG, BMP, WebP, TIFF, GIF, DICOM .dcm) or .zip files of them.
            model: which model to use, by name; leave empty for the first (default) model.
        Returns:
            A table with one row per file (file, label, confidence, wrong-input warning and
            score, or the message that refused it) and the same table as a CSV file.
        """
        rows = classify_files(files, model, progress)
        return shown_table(rows), csv_file(rows, "predictions")

    def predict_series(files, model=None, progress=gr.Progress()):
        """Classify the slices of one CT scan, and the scan as a whole.

        Args:
            files: the slices (image files or DICOM .dcm), or a .zip of them, all of one scan.
            model: which model to use, by name; leave empty for the first (default) model.
        Returns:
            The scan's answer (mean slice probabilities over slices not flagged as wrong input),
            a text saying how many slices it used, the per-slice table and its CSV.
        """
        rows = classify_files(files, model, progress, series=True)
        answer = batch.aggregate(rows)
        return answer.probabilities, answer.text(), shown_table(rows), csv_file(rows, "slices")

    common = dict(concurrency_limit=BATCH_CONCURRENCY_LIMIT, concurrency_id="batch")
    with gr.Tab("Many images"):
        gr.Markdown(BATCH_TEXT)
        files = gr.File(file_count="multiple", label="Images, DICOM slices or .zip files",
                        elem_id="batch-files")
        model = gr.Dropdown(choices, value=names[0], label="Model", visible=len(names) > 1,
                            elem_id="batch-model")
        go = gr.Button("Classify all", variant="primary")
        table = gr.Dataframe(headers=batch.COLUMNS, label="Results", interactive=False, wrap=True,
                             elem_id="batch-table")
        csv_out = gr.File(label="Results as CSV", elem_id="batch-csv")
    go.click(predict_batch, [files, model], [table, csv_out], api_name="predict_batch", **common)
    with gr.Tab("CT series (one scan)"):
        gr.Markdown(SERIES_TEXT)
        slices = gr.File(file_count="multiple", label="The slices of one scan (or a .zip)",
                         elem_id="series-files")
        series_model = gr.Dropdown(choices, value=ct, label="Model", visible=len(names) > 1,
                                   elem_id="series-model")
        go_series = gr.Button("Classify the scan", variant="primary")
        scan = gr.Label(num_top_classes=5, label="Scan answer", elem_id="series-answer")
        scan_text = gr.Markdown(label="Scan summary")
        slice_table = gr.Dataframe(headers=batch.COLUMNS, label="Slices, in scan order",
                                   interactive=False, wrap=True, elem_id="series-table")
        slice_csv = gr.File(label="Slices as CSV")
    go_series.click(predict_series, [slices, series_model], [scan, scan_text, slice_table, slice_csv],
                    api_name="predict_series", **common)
    # A model switch leaves no answer of the old model on screen.
    model.change(lambda: (None, None), None, [table, csv_out], api_name=False, queue=False)
    series_model.change(lambda: (None, "", None, None), None, [scan, scan_text, slice_table, slice_csv],
                        api_name=False, queue=False)
    first_model.change(lambda n: (n, n if is_ct(bundles[n]) else gr.update()), first_model,
                       [model, series_model], api_name=False, queue=False)


def keep_delete_cache_alive():
    """Work around Gradio 6.31.0: delete_cache's clean-up pass walks the set of uploads in a
    worker thread while new uploads are added to it, and the first "RuntimeError: Set changed
    size during iteration" ends the clean-up for good, so uploads pile up on disk under steady
    traffic (scripts/soak.py shows it). Retry the pass instead. Applied to 6.31.0 only: any
    other version runs as it is (check scripts/soak.py's upload count before pinning it)."""
    from gradio import route_utils

    if gr.__version__ != "6.31.0" or getattr(route_utils.delete_files_created_by_app, "retrying", False):
        return
    delete = route_utils.delete_files_created_by_app

    def delete_retrying(blocks, age):
        for _ in range(10):
            try:
                return delete(blocks, age)
            except RuntimeError:  # an upload arrived during the pass
                continue

    delete_retrying.retrying = True
    route_utils.delete_files_created_by_app = delete_retrying
    log.info("gradio %s: delete_cache clean-up patched to retry (see keep_delete_cache_alive)",
             gr.__version__)


def fix_mcp_files():
    """Work around two gaps in Gradio 6.31.0's MCP server (tests/test_mcp.py shows both):

    - inputs that are lists of files (gr.File with file_count="multiple": /predict_batch and
      /predict_series) get a "$ref" to a definition that is not there in the tool's input
      schema, so every call fails validation ("PointerToNowhere"), and the list's items
      (URLs or base64 data) would not be turned into files: drop the reference, convert
      each item;
    - a file sent as base64 is written to Gradio's cache and never deleted (the copy it
      uploads is): register it with the uploads, so delete_cache removes it after UPLOAD_TTL.

    Applied to 6.31.0 only, and only when the MCP server is on."""
    from gradio import mcp

    server = mcp.GradioMCPServer
    if gr.__version__ != "6.31.0" or getattr(server.simplify_filedata_schema, "fixed", False):
        return
    simplify, convert = server.simplify_filedata_schema, server.convert_strings_to_filedata

    def simplify_fixed(self, schema):
        simplified, positions = simplify(self, schema)

        def drop_refs(node):
            if isinstance(node, dict):
                if node.get("type") == "string" and "format" in node:
                    node.pop("$ref", None)
                for value in node.values():
                    drop_refs(value)
            elif isinstance(node, list):
                for value in node:
                    drop_refs(value)

        drop_refs(simplified)
        return simplified, positions

    def convert_fixed(self, value, positions):
        expanded = []
        for pos in positions:
            if pos and pos[-1] == "items" and isinstance(value, dict):
                items = value.get(pos[0]) if len(pos) == 2 else None
                expanded += [[pos[0], i] for i in range(len(items))] if isinstance(items, list) else []
            else:
                expanded.append(pos)
        converted = convert(self, value, expanded)
        uploads = self.blocks.upload_file_set

        def register(node):
            if isinstance(node, dict):
                if isinstance(node.get("path"), str) and os.path.isfile(node["path"]):
                    uploads.add(os.path.abspath(node["path"]))
                for v in node.values():
                    register(v)
            elif isinstance(node, list):
                for v in node:
                    register(v)

        register(converted)
        return converted

    simplify_fixed.fixed = True
    server.simplify_filedata_schema, server.convert_strings_to_filedata = simplify_fixed, convert_fixed


def load_or_exit(model_repo):
    """load_bundles, or one line on stderr naming the failed check and exit status 2."""
    try:
        return load_bundles(model_repo)
    except BundleError as e:
        print(f"error: cannot start: {e}", file=sys.stderr)
        sys.exit(2)


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
BUNDLES = load_or_exit(os.environ.get("MODEL_REPO") or DEFAULT_MODELS)
demo = build_demo(BUNDLES)
keep_delete_cache_alive()
if os.environ.get("GRADIO_MCP_SERVER", "").strip().lower() == "true":
    fix_mcp_files()


def main():
    # show_error=False: clients see gr.Error messages (ours, all written for users), never
    # the text of an unexpected exception, which could name server paths.
    demo.launch(max_file_size=MAX_FILE_SIZE, show_error=False, state_session_capacity=SESSIONS)


if __name__ == "__main__":
    main()
