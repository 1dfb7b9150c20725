"""Soak the app: thousands of requests, the server's memory and upload folder before and after.

    python scripts/soak.py                               # 3,000 requests: a few minutes
    python scripts/soak.py --requests 60 --warmup 10     # the short version the tests run
    python scripts/soak.py --json soak.json              # also write the figures to a file

Starts `python app.py` (MODEL_REPO=--model) with its own upload folder (GRADIO_TEMP_DIR)
and a short UPLOAD_TTL, warms it up, reads the server's resident memory, then sends
--requests predictions from --clients clients through Gradio's HTTP API: every image a
different one, and one request in ten a file that is not an image (which must be refused
with its message). It prints the speed, the server's CPU time per request and its memory
as it goes (flat is good), then waits for the upload clean-up and counts the files left
in the upload folder.

Exits with 1 if a good image failed, a bad file was not refused, memory grew by more than
--max-growth-mb after the warm-up, or uploads were not cleaned up.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scripts.app_server import AppServer  # noqa: E402  (the repository root is on sys.path now)
from scripts.benchmark_serving import http_predict, write_tile  # noqa: E402
from scripts.synthetic import tissue_jpeg  # noqa: E402

NOT_AN_IMAGE = b"these are notes, not an image\n" * 10


def files_in(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


def send(url, n, clients, offset=0):
    """n requests over `clients` threads -> counts of answers, refusals and failures."""
    import httpx

    counts = {"answered": 0, "refused_bad_file": 0, "failed": 0}
    lock, todo = threading.Lock(), iter(range(offset, offset + n))
    examples = []

    def user():
        with httpx.Client(timeout=120) as http:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                bad = i % 10 == 9
                try:
                    http_predict(http, url, NOT_AN_IMAGE if bad else tissue_jpeg(i))
                    kind = "failed" if bad else "answered"
                except Exception as e:
                    kind = "refused_bad_file" if bad and "not an image" in str(e) else "failed"
                    if kind == "failed":
                        examples.append(str(e)[-200:])
                with lock:
                    counts[kind] += 1

    threads = [threading.Thread(target=user, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if examples:
        print(f"  e.g. failure: {examples[0]}")
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "lc25000"), help="bundle to serve")
    p.add_argument("--requests", type=int, default=3000, help="requests after the warm-up (default 3000)")
    p.add_argument("--warmup", type=int, default=200, help="requests before the first reading (default 200)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--chunks", type=int, default=6, help="report speed and memory this many times (default 6)")
    p.add_argument("--upload-ttl", type=int, default=5, help="the server's UPLOAD_TTL in seconds (default 5)")
    p.add_argument("--max-growth-mb", type=float, default=50, help="fail above this growth (default 50)")
    p.add_argument("--json", help="also write the figures and the verdict to this file")
    args = p.parse_args(argv)

    uploads = tempfile.mkdtemp(prefix="soak-uploads-")
    server = AppServer({"MODEL_REPO": args.model, "GRADIO_TEMP_DIR": uploads,
                        "UPLOAD_TTL": str(args.upload_ttl)}, wait=False)
    chunks = []
    try:
        server.first_answer(write_tile(os.path.join(uploads, "first.jpg")))
        warm = send(server.url, args.warmup, args.clients, offset=10**6)
        before = server.memory_mb()
        print(f"{'requests':>9} {'req/s':>6} {'server CPU ms/req':>18} {'RSS MB':>7}")
        counts, seconds, done = {}, 0.0, 0
        for chunk in np.array_split(np.arange(args.requests), args.chunks):
            t0, cpu0 = time.perf_counter(), server.cpu_seconds()
            for k, v in send(server.url, len(chunk), args.clients, offset=done).items():
                counts[k] = counts.get(k, 0) + v
            dt = time.perf_counter() - t0
            seconds, done = seconds + dt, done + len(chunk)
            chunks.append({"requests": done, "rps": len(chunk) / dt, "rss_mb": server.memory_mb(),
                           "server_cpu_ms": 1000 * (server.cpu_seconds() - cpu0) / len(chunk)})
            print(f"{done:9d} {chunks[-1]['rps']:6.1f} {chunks[-1]['server_cpu_ms']:18.1f} "
                  f"{chunks[-1]['rss_mb']:7.0f}", flush=True)
        after = server.memory_mb()
        time.sleep(2 * args.upload_ttl + 1)  # one clean-up pass after the last upload ages out
        # first.jpg is this script's own; the bundle's examples/ images are copied into the
        # folder at start-up for the page's examples and stay there, as they should.
        examples = os.path.join(args.model, "examples")
        left = files_in(uploads) - 1 - (files_in(examples) if os.path.isdir(examples) else 0)
        peak = server.memory_mb("VmHWM")
    finally:
        server.stop()
    growth = after - before
    print(f"warm-up: {warm}")
    print(f"{args.requests} requests in {seconds:.0f} s ({args.requests / seconds:.1f}/s), "
          f"{args.clients} clients: {counts}")
    print(f"server memory (RSS): {before:.0f} MB after warm-up, {after:.0f} MB after the soak, "
          f"growth {growth:+.1f} MB ({1000 * growth / args.requests:+.2f} MB per 1,000 requests); peak {peak:.0f} MB")
    print(f"uploaded files left on disk after clean-up: {left} "
          f"(of {args.warmup + args.requests + 1} uploaded)")
    problems = []
    if counts["failed"] or warm["failed"]:
        problems.append(f"{counts['failed'] + warm['failed']} requests failed")
    if growth > args.max_growth_mb:
        problems.append(f"memory grew by {growth:.0f} MB > {args.max_growth_mb:.0f} MB")
    if left > args.clients * 2:
        problems.append(f"{left} uploads were not cleaned up")
    for problem in problems:
        print("FAIL:", problem)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "warmup": warm, "counts": counts, "seconds": seconds,
                       "chunks": chunks, "rss_mb": {"after_warmup": before, "after_soak": after, "peak": peak},
                       "growth_mb": growth, "uploads_left": left, "uploaded": args.warmup + args.requests + 1,
                       "problems": problems}, f, indent=2)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
