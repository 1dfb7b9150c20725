"""Classify images with the running app through gradio_client: a local URL or a Space id.

    python scripts/client.py http://127.0.0.1:7860/ tile1.jpeg tile2.png
    python scripts/client.py owner/space-name scans/*.png --csv predictions.csv
    python scripts/client.py http://127.0.0.1:7860/ tile.jpeg --model lc25000
    python scripts/client.py http://127.0.0.1:7860/ tiles/          # a folder: one /predict_batch
    python scripts/client.py http://127.0.0.1:7860/ scan/ --series --model chest_ct

A folder (its images, DICOM slices and .zip files) goes to /predict_batch as one request.
With --series, everything given goes to /predict_series as the slices of one scan, and a
last line `SCAN<TAB>label<TAB>confidence` gives the scan's answer.

Prints one tab-separated line per image: file name, label, confidence of that label, and
"ok" or "NOT RELIABLE: <why>" from the app's wrong-input check (the image does not look
like the model's training images, so its label means nothing). --heatmaps DIR saves each
image's heatmap there. An image the app refuses (not an image, too large) prints its
message on stderr, the other images go on, and the exit code is 1. Set HF_TOKEN to call a
private Space. /predict's outputs are documented in docs/api.md.

For research and education only, not for diagnosis.
"""

import argparse
import csv
import os
import shutil
import sys

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError


def top(result):
    """A gr.Label value -> (label, its confidence)."""
    label = result["label"]
    confidence = next(c["confidence"] for c in result["confidences"] if c["label"] == label)
    return label, confidence


def classify(client, paths, model=None, heatmaps=None):
    """Yield (file name, label, confidence, check, error) for each image: check is the
    wrong-input check's answer (a dict, see docs/api.md); error is None on success."""
    extra = {"model": model} if model else {}
    for path in paths:
        name = os.path.basename(path)
        if not os.path.isfile(path):
            yield name, None, None, None, f"no such file: {path}"
            continue
        try:
            label, check, heatmap, *_ = client.predict(image=handle_file(path), api_name="/predict", **extra)
        except AppError as e:  # a gr.Error raised by the app: its message is for the user
            yield name, None, None, None, str(e)
            continue
        if heatmaps and heatmap:
            os.makedirs(heatmaps, exist_ok=True)
            shutil.copyfile(heatmap, os.path.join(heatmaps, os.path.splitext(name)[0] + "_heatmap.jpeg"))
        yield (name, *top(label), check, None)


def reliability(check):
    """'ok', or 'NOT RELIABLE: <why>' when the wrong-input check flagged the image."""
    return f"NOT RELIABLE: {check['message']}" if check and check.get("wrong_input") else "ok"


def folder_files(folder):
    """The files of a folder (not its subfolders; hidden ones skipped), sorted."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def table_rows(table):
    """A /predict_batch or /predict_series table -> (file, label, confidence, check, error)
    rows, check shaped like /predict's wrong-input answer (wrong_input, message, score)."""
    for file, label, confidence, warning, score, error in table["data"]:
        check = None if error else {"wrong_input": bool(warning), "message": warning or "",
                                    "score": score}
        yield file, label or None, confidence, check, error or None


def classify_many(client, paths, model=None, series=False):
    """Send files as one /predict_batch (or /predict_series) request. Yields the rows; for a
    series, a last ("SCAN", label, confidence, None, error) row with the scan's answer."""
    extra = {"model": model} if model else {}
    try:
        result = client.predict(files=[handle_file(p) for p in paths],
                                api_name="/predict_series" if series else "/predict_batch", **extra)
    except AppError as e:  # a limit passed: the whole request refused
        yield "(request)", None, None, None, str(e)
        return
    if not series:
        yield from table_rows(result[0])
        return
    scan, text, table, _ = result
    yield from table_rows(table)
    yield ("SCAN", *top(scan), None, None) if scan and scan.get("label") else (
        "SCAN", None, None, None, text)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Classify lung images with the app (local URL or Hugging Face Space id) "
                    "through gradio_client. Research and education only, not for diagnosis.")
    parser.add_argument("src", metavar="URL_OR_SPACE_ID",
                        help="the app, e.g. http://127.0.0.1:7860/ or owner/space-name")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files to classify, or folders (one batch request each)")
    parser.add_argument("--series", action="store_true",
                        help="send everything as the slices of one CT scan (/predict_series)")
    parser.add_argument("--csv", metavar="FILE",
                        help="also write file,label,confidence,wrong_input,message,error rows here")
    parser.add_argument("--heatmaps", metavar="DIR", help="save each image's heatmap (JPEG) in this folder")
    parser.add_argument("--model", metavar="NAME",
                        help="which served model to use (default: the app's first model)")
    args = parser.parse_args(argv)

    try:
        client = Client(args.src, token=os.environ.get("HF_TOKEN"), verbose=False,
                        analytics_enabled=False)
    except Exception as e:  # unreachable URL, unknown or private Space, not a Gradio app
        print(f"error: cannot connect to {args.src}: {e}", file=sys.stderr)
        return 2
    if args.series:
        answers = classify_many(client, [p for a in args.images for p in (
            folder_files(a) if os.path.isdir(a) else [a])], args.model, series=True)
    else:
        answers = (row for a in args.images for row in (
            classify_many(client, folder_files(a), args.model) if os.path.isdir(a)
            else classify(client, [a], args.model, args.heatmaps)))
    rows = []
    for name, label, confidence, check, error in answers:
        flagged = bool(check and check.get("wrong_input"))
        rows.append((name, label, confidence, flagged if check else None,
                     check.get("message", "") if check else None, error))
        if error:
            print(f"{name}: {error}", file=sys.stderr)
        else:
            print(f"{name}\t{label}\t{confidence:.4f}\t{reliability(check)}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "confidence", "wrong_input", "message", "error"])
            writer.writerows(("" if v is None else v for v in row) for row in rows)
    return 1 if any(row[5] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
