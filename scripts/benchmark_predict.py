"""Measure archive prediction (python -m lungclf.predict) against the model's forward pass alone.

    nice -n 19 python scripts/benchmark_predict.py                       # LC25000 copies, ~2 min
    nice -n 19 python scripts/benchmark_predict.py --copies 2 --workers 2 --json predict.json
    python scripts/benchmark_predict.py --quick                          # made-up tiles, seconds

The images are copies of ../shared/data/lc25000 (--copies times each file) in a temporary
folder that is deleted afterwards: never commit them. Measured, --repeats times, alternating
so that other work on a shared machine weighs on both alike (the median is reported):

    forward   the bundle's network on the engine predict serves it with (Classifier.run:
              ONNX Runtime for a bundle with a checked model.onnx, else the traced Keras
              pass) over the images already decoded into memory, in batches of 32: what the
              model alone allows on these cores
    predict   lungclf.predict.predict over the folder, in this process (the bundle loaded
              once beforehand, as the command loads it before its clock starts): decoding,
              the forward pass, calibration, the wrong-input check and the parts on disk
    dask      with --workers N: the same on a local Dask cluster of N processes, counting
              the cluster's start and each worker's bundle load (measured once)

Printed: images per second of each, and predict / forward (the target is >= 0.8) for each
pair of runs and their median: on a machine shared with other work both speeds swing from
run to run, and a pair measured back to back shares the same load. Also the cores, the load
average before and after, and the CPU time per image of each (all threads together): the
work that decoding, calibration and the wrong-input check add to the network's. --json
writes the same.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as python -m lungclf.predict sets it, before NumPy loads
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "lc25000")


def made_up_images(dst, n=96):
    """--quick: n JPEG tiles of LC25000's size made from a seed (scripts/synthetic.py)."""
    from scripts.synthetic import tissue_jpeg

    os.makedirs(dst)
    for i in range(n):
        with open(os.path.join(dst, f"tile{i:03d}.jpg"), "wb") as f:
            f.write(tissue_jpeg(i))
    return n


def copy_images(src, dst, copies):
    """Copy every image of src (class folders) `copies` times into dst; returns how many."""
    n = 0
    for path in sorted(glob.glob(os.path.join(src, "*", "*.jp*g"))):
        cls, name = path.split(os.sep)[-2:]
        for k in range(copies):
            os.makedirs(os.path.join(dst, f"{cls}_{k}"), exist_ok=True)
            shutil.copy(path, os.path.join(dst, f"{cls}_{k}", name))
            n += 1
    return n


def cpu_seconds():
    """CPU time this process has used, all its threads together."""
    return sum(os.times()[:2])


def forward_rate(clf, x, batch_size=32):
    """(images per second, CPU ms per image) of the network alone over x (N, S, S, 3)
    float32, on the engine predict uses (Classifier.run: ONNX Runtime for a bundle with a
    checked model.onnx, else the traced Keras pass)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    for i in range(0, len(x), batch_size):
        clf.run(x[i:i + batch_size], maps=False)
    return len(x) / (time.perf_counter() - start), 1000 * (cpu_seconds() - cpu) / len(x)


def predict_rate(spec, folder, out, **kw):
    """(images per second, CPU ms per image of this process) of lungclf.predict over folder."""
    from lungclf.predict import predict

    cpu = cpu_seconds()
    s = predict(spec, folder, out, progress=False, **kw)
    os.remove(out)
    return s["images"] / s["seconds"], 1000 * (cpu_seconds() - cpu) / s["images"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=os.path.join(ROOT, "models", "lc25000"))
    p.add_argument("--data", default=DEFAULT_DATA, help="class folders of JPEG images (LC25000)")
    p.add_argument("--copies", type=int, default=1, help="copies of each image (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, help="also measure a local Dask cluster of N workers")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--engine", default="auto", choices=["auto", "onnx", "keras"],
                   help="the Classifier's engine for both (default auto: ONNX Runtime when the bundle has model.onnx)")
    p.add_argument("--quick", action="store_true", help="96 made-up tiles, one run: a smoke test")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    elif not os.path.isdir(args.data):
        raise SystemExit(f"error: {args.data}: no such folder (the LC25000 images of ../shared/data)")

    from lungclf.bundle import load
    from lungclf.inference import Classifier
    from lungclf.predict import cores, find_images

    load_before = os.getloadavg()
    clf = Classifier(load(args.bundle), engine=args.engine)
    with tempfile.TemporaryDirectory(prefix="benchmark-predict-") as tmp:
        folder = os.path.join(tmp, "images")
        n = made_up_images(folder) if args.quick else copy_images(args.data, folder, args.copies)
        decoded = [clf._decode(path) for path in find_images(folder)]
        import numpy as np

        x = np.stack([xi for _, xi in decoded]).astype(np.float32)
        del decoded
        forward_rate(clf, x[:64])  # warm up
        out = os.path.join(tmp, "predictions.parquet")
        forward, local, forward_cpu, local_cpu = [], [], [], []
        for _ in range(args.repeats):
            rate, cpu = forward_rate(clf, x)
            forward.append(rate)
            forward_cpu.append(cpu)
            rate, cpu = predict_rate(args.bundle, folder, out, classifier=clf)
            local.append(rate)
            local_cpu.append(cpu)
        dask = predict_rate(args.bundle, folder, out, workers=args.workers)[0] if args.workers else None
    load_after = os.getloadavg()
    ratios = [b / a for a, b in zip(forward, local)]
    result = {"images": n, "cores": cores(), "repeats": args.repeats, "engine": clf.engine,
              "forward_images_per_s": round(statistics.median(forward), 1),
              "predict_images_per_s": round(statistics.median(local), 1),
              "predict_over_forward": round(statistics.median(ratios), 3),
              "ratio_runs": [round(v, 3) for v in ratios],
              "forward_runs": [round(v, 1) for v in forward], "predict_runs": [round(v, 1) for v in local],
              "forward_cpu_ms_per_image": round(statistics.median(forward_cpu), 2),
              "predict_cpu_ms_per_image": round(statistics.median(local_cpu), 2),
              "dask_workers": args.workers, "dask_images_per_s": round(dask, 1) if dask else None,
              "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python"] + sys.argv)}
    print(f"{n:,} images, engine {clf.engine}, {result['cores']} cores, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min)")
    print(f"forward pass alone   {result['forward_images_per_s']:8.1f} images/s  {result['forward_runs']}")
    print(f"lungclf.predict      {result['predict_images_per_s']:8.1f} images/s  {result['predict_runs']}")
    print(f"predict / forward    {result['predict_over_forward']:8.2f} (median of the pairs {result['ratio_runs']})")
    print(f"CPU per image        forward {result['forward_cpu_ms_per_image']:.2f} ms, predict "
          f"{result['predict_cpu_ms_per_image']:.2f} ms")
    if dask:
        print(f"Dask, {args.workers} workers      {dask:8.1f} images/s  (cluster start and bundle loads included)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
