"""Time the real training command, and compare input sizes and widths: accuracy against cost.

    python scripts/benchmark_training.py                    # the default model on LC25000: ~3 min
    python scripts/benchmark_training.py --variants 128x32,128x16,96x16,64x16   # the table: ~10 min
    python scripts/benchmark_training.py --quick            # a smoke run on made-up images: seconds

Each run is `python -m training.train --data DATA --preset PRESET --out TMP --verbose 2`
(plus `--image-size S --width W` for a variant SxW), started as a user starts it. Every
line it prints is time-stamped, which gives:

    prepare     start -> first epoch (imports, scan, audit, decode, split)
    per epoch   wall time (training + validation) and training images per second
    finish      last epoch -> exit (calibrate, evaluate, figures, bundle, card)

and from the bundle it writes: held-out test accuracy and macro-F1 (group split),
parameters, model file size, and the bare forward pass (app.py's compiled function,
batch of 1). Bundles go to a temp folder and are deleted.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "lc25000")

from scripts.benchmark_serving import forward_ms  # noqa: E402  (the repository root is on sys.path now)
from scripts.synthetic import make_dataset  # noqa: E402


def train(data, out, preset, extra):
    """Run the training command; returns its time-stamped phases."""
    cmd = [sys.executable, "-m", "training.train", "--data", data, "--out", out, "--verbose", "2"]
    cmd += (["--preset", preset] if preset else []) + extra
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip()))
    if proc.wait() != 0:
        raise SystemExit("training failed:\n" + "\n".join(text for _, text in lines[-30:]))
    total = time.perf_counter() - t0
    starts = [t for t, text in lines if re.match(r"Epoch \d+/\d+$", text)]
    # verbose=2: one "steps/steps - Ns - ..." line closes each epoch
    ends = [t for t, text in lines if re.match(r"\d+/\d+ - \d+s", text)]
    train_images = next((int(m.group(1)) for _, text in lines
                         if (m := re.match(r"train\s*: (\d+) images", text))), 0)
    epochs = [e - s for s, e in zip(starts, ends)]
    return {"total_s": total, "prepare_s": starts[0] if starts else total, "epoch_s": epochs,
            "finish_s": total - ends[-1] if ends else 0.0, "train_images": train_images}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="labelled images (default ../shared/data/lc25000)")
    p.add_argument("--preset", default="lc25000", help="training preset (default lc25000; '' for none)")
    p.add_argument("--variants", default="",
                   help="comma-separated SIZExWIDTH, e.g. 128x32,96x16 (default: the preset's own model)")
    p.add_argument("--quick", action="store_true", help="smoke run: made-up images, 2 epochs, 32x8")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)

    work = tempfile.mkdtemp(prefix="bench-training-")
    try:
        data, preset, variants = args.data, args.preset, [v for v in args.variants.split(",") if v]
        common = []
        if args.quick:
            data, preset, variants = make_dataset(os.path.join(work, "data"), per_class=12), "", ["32x8"]
            common = ["--epochs", "2"]
        if not os.path.isdir(data):
            raise SystemExit(f"No data folder {data}; pass --data DIR (class folders of images)")
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
        rows = []
        for v in variants or ["default"]:
            extra = list(common)
            if v != "default":
                size, width = v.lower().split("x")
                extra += ["--image-size", size, "--width", width]
            out = os.path.join(work, v)
            row = {"variant": v, **train(data, out, preset, extra)}
            meta = json.load(open(os.path.join(out, "metadata.json")))
            test = meta["metrics"]["test"]
            ms, engine = forward_ms(out, 20 if args.quick else 200)  # as the app serves it
            row.update(input=meta["preprocessing"]["input_size"][0], arch=meta["model"]["architecture"],
                       width=meta["model"].get("width"), parameters=meta["model"]["parameters"],
                       model_mb=os.path.getsize(os.path.join(out, "model.keras")) / 1e6,
                       accuracy=test["accuracy"], macro_f1=test["macro_f1"], test_images=test["images"],
                       forward_ms=ms, engine=engine)
            rows.append(row)
            e = row["epoch_s"]
            print(f"  {v}: {len(e)} epochs, {np.median(e):.1f} s/epoch median ({min(e):.1f}-{max(e):.1f}), "
                  f"{row['train_images'] / np.median(e):.0f} training images/s; prepare {row['prepare_s']:.0f} s, "
                  f"finish {row['finish_s']:.0f} s, total {row['total_s']:.0f} s", flush=True)
        load = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nload average {load:.2f} at the end; accuracy and macro-F1 on the held-out test groups\n")
    print("| input | width | network | parameters | model MB | forward ms | test accuracy | macro-F1 | "
          "epochs | s/epoch | images/s | total s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        e = float(np.median(r["epoch_s"]))
        print(f"| {r['input']} | {r['width']} | {r['arch']} | {r['parameters']:,} | {r['model_mb']:.2f} | "
              f"{r['forward_ms']:.1f} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {len(r['epoch_s'])} | "
              f"{e:.1f} | {r['train_images'] / e:.0f} | {r['total_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
