"""Measure what one image costs before and after the network: decoding, resizing, the check's
pixel statistics, each against what it replaced.

    python scripts/benchmark_decode.py                                   # LC25000 at 128 px, ~30 s
    python scripts/benchmark_decode.py --data ../shared/data/iq_othnccd --size 224
    python scripts/benchmark_decode.py --quick                           # made-up tiles, seconds

Measured over the same files (--limit of the folder's JPEGs, sorted), each step --repeats
times, alternating, one thread; printed: the median milliseconds an image of each and the
ratios:

    pillow     Pillow's decode as read_rgb did it before (lungclf.preprocess.to_rgb: the
               header checks, draft scaling, load, the copy into NumPy)
    read_rgb   read_rgb as it is: OpenCV's decoder for a whole, unturned RGB or grey JPEG
               (the same pixels; the files where they would differ are counted)
    resize     the area resize to --size (lungclf.preprocess.resize)
    stats f32  the wrong-input check's pixel statistics on the float32 input, batches of 32
    stats u8   the same on the uint8 input (what inference passes now; the same figures)
"""

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "lc25000")


def per_image_ms(fn, items, images):
    start = time.perf_counter()
    for item in items:
        fn(item)
    return 1000 * (time.perf_counter() - start) / images


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="a folder of JPEG images (searched recursively)")
    p.add_argument("--size", type=int, default=128, help="the model's input side (default 128, LC25000's)")
    p.add_argument("--limit", type=int, default=500, help="at most this many files (default 500)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="48 made-up tiles, 2 repeats: a smoke run")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()

    import cv2

    from lungclf.preprocess import open_image, read_rgb, resize, to_rgb
    from lungclf.wrong_input import pixel_stats

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from scripts.synthetic import tissue_jpeg

            args.data, args.repeats, args.limit = tmp, 2, 48
            for i in range(args.limit):
                with open(os.path.join(tmp, f"tile{i:02d}.jpg"), "wb") as f:
                    f.write(tissue_jpeg(i))
        paths = sorted(glob.glob(os.path.join(args.data, "**", "*.jp*g"), recursive=True))[:args.limit]
        if not paths:
            raise SystemExit(f"error: no JPEG files under {args.data}")

        def pillow(path):
            im = open_image(path)
            try:
                return to_rgb(im, args.size)
            finally:
                im.close()

        differ = sum(not np.array_equal(pillow(q), read_rgb(q, args.size)) for q in paths)
        rgbs = [read_rgb(q, args.size) for q in paths]
        small = [resize(r, args.size) for r in rgbs]
        u8 = np.stack(small)
        f32 = u8.astype(np.float32)
        steps = {"pillow": (pillow, paths), "read_rgb": (lambda q: read_rgb(q, args.size), paths),
                 "resize": (lambda r: resize(r, args.size), rgbs),
                 "stats f32": (lambda i: pixel_stats(f32[i:i + 32]), range(0, len(paths), 32)),
                 "stats u8": (lambda i: pixel_stats(u8[i:i + 32]), range(0, len(paths), 32))}
        times = {k: [] for k in steps}
        for _ in range(args.repeats):
            for k, (fn, items) in steps.items():
                times[k].append(per_image_ms(fn, items, len(paths)))
    med = {k: statistics.median(v) for k, v in times.items()}
    side = f"{rgbs[0].shape[1]} x {rgbs[0].shape[0]}"
    print(f"{len(paths)} JPEG files of {args.data} (decoded to {side} for {args.size} px), {args.repeats} "
          f"repeats, one thread, load average {os.getloadavg()[0]:.2f}")
    for k, v in med.items():
        print(f"{k:10s} {v:7.3f} ms an image  {[round(t, 3) for t in times[k]]}")
    print(f"read_rgb / pillow  {med['read_rgb'] / med['pillow']:.2f}  (files whose pixels differ: {differ})")
    print(f"stats u8 / f32     {med['stats u8'] / med['stats f32']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"files": len(paths), "size": args.size, "decoded": side, "repeats": args.repeats,
                       "ms_per_image": {k: round(v, 4) for k, v in med.items()}, "runs": times,
                       "pixels_differ": differ, "load": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d"),
                       "command": " ".join(["python"] + sys.argv)}, f, indent=2)


if __name__ == "__main__":
    main()
