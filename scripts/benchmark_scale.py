"""Measure training and the audit at 1x, 4x and 16x a data set: memory, images per second.

    nice -n 10 python scripts/benchmark_scale.py --sizes 1 4 16 --json scale.json   # ~1 h on 2 cores
    python scripts/benchmark_scale.py --quick                                        # seconds, made-up images

The bigger sets are built for the benchmark only, in a temporary folder that is deleted
afterwards (never commit them): copy k of each image is turned k quarter turns, mirrored
for k >= 4 and colour-shifted for k >= 8, saved as JPEG. Each measurement runs in a fresh
process, so its peak resident memory (ru_maxrss) is its own:

    input      the streaming training input alone (training/stream.py: decode through
               lungclf.preprocess, augment, batch) over every image once
    fit        one epoch of `training.steps.fit` on the streamed train split (90% of the
               images), with 1 process (TensorFlow) or N JAX processes (training/distributed.py);
               a small network (compact, width 16, 64 px) so that the input is what scales
    check      the wrong-input fit after training (training.wrong_input.fit_on_splits, as
               fit_bundle runs it on a --stream run): features and pixel statistics of every
               split streamed from the files into a folder on disk, class means and the
               Ledoit-Wolf covariance from their moments, threshold on val, rates on test;
               a network of the committed models' feature width (--check-arch, default
               lite0: 1280 features) at --image-size, untrained (memory does not depend on
               the weights); split 80/10/10
    train      the whole `python -m training.train --stream` command in one process, scan to
               written bundle: audit, split, one epoch of the small network below, evaluation,
               calibration, the wrong-input fit (--check-arch's features are not used here:
               the small network's own), examples, card, figures and the ONNX export, and
               the frozen-feature baseline printed beside the result, its features computed
               afresh (an empty feature cache, as on a first run)
    audit      training.audit.run: describe every image into a work folder on disk, candidate
               pairs from one nearest-neighbour index per 2,048 images (training/neighbours.py),
               SIFT checks, groups

Printed: a table per measurement with images, seconds, images per second and peak memory
(for N processes, the largest worker's); --json writes the same rows.
"""

import argparse
import json
import os
import resource
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


def expand(src, dst, factor):
    """dst gets `factor` versions of every image of src (class folders): the original
    (linked) and factor - 1 turned/mirrored/colour-shifted JPEG copies."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from training.data import scan

    items = scan(src)

    def write(it):
        base, _ = os.path.splitext(it.path)
        os.makedirs(os.path.join(dst, os.path.dirname(it.path)), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(src, it.path)), os.path.join(dst, it.path))
        if factor == 1:
            return
        rgb = np.asarray(Image.open(os.path.join(src, it.path)).convert("RGB"))
        for k in range(1, factor):
            a = np.rot90(rgb, k % 4)
            a = a[:, ::-1] if (k // 4) % 2 else a
            if k >= 8:
                a = np.clip(a.astype(np.int16) + np.array([(k - 8) * 3, -(k - 8) * 2, k - 8]), 0, 255)
            Image.fromarray(np.ascontiguousarray(a).astype(np.uint8)).save(
                os.path.join(dst, f"{base}_x{k}.jpg"), quality=92)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(write, items))
    return len(items) * factor


def made_up_data(folder, per_class=24, side=48):
    """Three classes of coloured noise, for --quick."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in {"red": (200, 60, 60), "green": (60, 180, 80), "blue": (60, 80, 200)}.items():
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(per_class):
            a = np.clip(np.array(colour) + rng.normal(0, 25, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(os.path.join(folder, name, f"{i}.png"))
    return folder


def peak_mb(who=resource.RUSAGE_SELF):
    return resource.getrusage(who).ru_maxrss / 1024


# ---------------------------------------------------------------- one measurement per process

def _prepared(data, size, width, arch="compact"):
    """The data as training.datatypes.Prepared without decoding (streamed), split by file: every
    10th image to validation; and the FitConfig of a small network for one epoch."""
    from training import steps
    from training.data import scan
    from training.datatypes import Prepared
    from training.recipe import Recipe

    items = scan(data)
    labels = sorted({it.label for it in items})
    split = np.array(["val" if i % 10 == 0 else "train" for i in range(len(items))])
    prepared = Prepared(data_dir=data, labels=labels, paths=[it.path for it in items],
                              groups=[it.path for it in items], split=split, x=None,
                              y=np.array([labels.index(it.label) for it in items]), report={}, split_info={},
                              images_found=len(items), unreadable=[], left_out={})
    recipe = Recipe(data=data, preset="lc25000", arch=arch, width=width, image_size=size, epochs=1,
                    batch_size=32)
    return prepared, steps.configure(recipe, verbose=0)[1]


def child(kind, data, processes, size, width, arch="lite0"):
    """Run one measurement here and print its row as JSON."""
    t0 = time.time()
    row = {"kind": kind, "processes": processes}
    if kind == "input":
        from training import stream

        prepared, config = _prepared(data, size, width)
        files = stream.files(prepared, "train")
        from training import presets

        ds = stream.training_dataset(files, size, 32, augment=presets.augmenter(config.augmentation))
        t0 = time.time()
        n = sum(len(x) for x, _ in ds)
        row |= {"images": n, "seconds": time.time() - t0}
    elif kind == "fit":
        from training import distributed, steps, stream

        prepared, config = _prepared(data, size, width)
        n = int((prepared.split == "train").sum())
        t0 = time.time()
        if processes > 1:
            distributed.fit(prepared, config, processes)
        else:
            steps.fit(prepared, config, data=stream.fit_datasets(prepared, config))
        row |= {"images": n, "seconds": time.time() - t0}
    elif kind == "check":
        from training import steps, wrong_input

        prepared, config = _prepared(data, size, width, arch)
        prepared.split[np.arange(len(prepared.split)) % 10 == 5] = "test"
        model = steps.build_model(config, len(prepared.labels))
        t0 = time.time()
        ref, shrinkage, rates, _, _ = wrong_input.fit_on_splits(model, prepared)
        row |= {"images": len(prepared.paths), "seconds": time.time() - t0, "arch": config.arch,
                "feature_dim": int(ref.feature_dim), "shrinkage": round(shrinkage, 4),
                "test_flagged": rates["test"]["flagged"]}
    elif kind == "train":
        from training import train

        out = tempfile.mkdtemp(prefix="lung-scale-bundle-")
        cache = os.environ["LUNGCLF_CACHE"] = tempfile.mkdtemp(prefix="lung-scale-features-")  # a first run's
        try:
            train.main(["--data", data, "--out", out, "--preset", "lc25000", "--arch", "compact",
                        "--width", str(width), "--image-size", str(size), "--epochs", "1", "--stream",
                        "--examples", "2", "--verbose", "0"])
            with open(os.path.join(out, "metadata.json")) as f:
                meta = json.load(f)
        finally:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
        row |= {"images": meta["data"]["images_used"], "seconds": time.time() - t0,
                "wrong_input": meta.get("wrong_input") is not None, "onnx": meta.get("onnx") is not None,
                "baseline_fit_images": (meta.get("baseline") or {}).get("fit_images")}
    elif kind == "audit":
        from training import audit

        report = audit.run(data, progress=False)
        row |= {"images": report["images"], "seconds": time.time() - t0, "groups": report["groups"],
                "candidate_pairs": report["candidate_pairs"], "timings": report["timings"]}
    row["images_per_s"] = row["images"] / row["seconds"]
    row["peak_mb"] = max(peak_mb(), peak_mb(resource.RUSAGE_CHILDREN))
    print("ROW " + json.dumps(row), flush=True)


def measure(kind, data, processes, size, width, timeout, arch="lite0"):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--data", data,
           "--processes", str(processes), "--image-size", str(size), "--width", str(width), "--check-arch", arch]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")]
    if p.returncode or not rows:
        raise SystemExit(f"{kind} on {data} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return rows[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="class-folder data set (default: LC25000 in shared/)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="multiples of the set (default 1 4 16)")
    p.add_argument("--what", nargs="+", default=["input", "fit", "check", "audit"],
                   choices=["input", "fit", "check", "audit", "train"],
                   help="what to measure (default: input fit check audit; train, the whole --stream "
                        "command, is slow: ~40 min at 16x here)")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                   help="process counts for 'fit' (default 1 2)")
    p.add_argument("--image-size", type=int, default=64, help="network input side (default 64)")
    p.add_argument("--width", type=int, default=16, help="compact network width (default 16)")
    p.add_argument("--check-arch", default="lite0", choices=["compact", "resnet", "mobilenet", "lite0", "lite2"],
                   help="network of the 'check' measurement (default lite0: 1280 features, as the committed models)")
    p.add_argument("--work", help="folder for the expanded sets (default: a temporary one, deleted)")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per measurement (default 7200)")
    p.add_argument("--quick", action="store_true", help="made-up images, sizes 1 and 2: a smoke run")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.data, args.processes[0], args.image_size, args.width, args.check_arch)

    work = args.work or tempfile.mkdtemp(prefix="lung-scale-")
    if args.quick:
        args.data, args.sizes = made_up_data(os.path.join(work, "made_up")), [1, 2]
    rows = []
    try:
        for factor in args.sizes:
            data = os.path.join(work, f"x{factor}")
            if not os.path.isdir(data):
                t0 = time.time()
                n = expand(args.data, data, factor)
                print(f"built {data}: {n} images in {time.time() - t0:.0f} s", flush=True)
            for kind in args.what:
                for procs in (args.processes if kind == "fit" else [1]):
                    row = measure(kind, data, procs, args.image_size, args.width, args.timeout, args.check_arch)
                    row["factor"] = factor
                    rows.append(row)
                    print(f"{kind:5s} {factor:3d}x  {procs} process{'es' if procs > 1 else '  '} "
                          f"{row['images']:7d} images {row['seconds']:8.1f} s {row['images_per_s']:7.1f} images/s "
                          f"peak {row['peak_mb']:6.0f} MB" + (f"  {row['groups']} groups" if "groups" in row else ""),
                          flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| measurement | size | processes | images | seconds | images/s | peak memory (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['factor']}x | {r['processes']} | {r['images']} | {r['seconds']:.1f} | "
              f"{r['images_per_s']:.1f} | {r['peak_mb']:.0f} |")
    print("\n| measurement | processes | peak memory at each size (MB) | largest size / smallest: peak memory, "
          "seconds per image |")
    print("| --- | --- | --- | --- |")
    for kind, procs in dict.fromkeys((r["kind"], r["processes"]) for r in rows):
        same = sorted((r for r in rows if (r["kind"], r["processes"]) == (kind, procs)), key=lambda r: r["factor"])
        first, last = same[0], same[-1]
        print(f"| {kind} | {procs} | " + ", ".join(f"{r['factor']}x {r['peak_mb']:.0f}" for r in same)
              + f" | {last['peak_mb'] / first['peak_mb']:.2f}x, "
              f"{(last['seconds'] / last['images']) / (first['seconds'] / first['images']):.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": os.path.abspath(args.data), "image_size": args.image_size, "width": args.width,
                       "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
