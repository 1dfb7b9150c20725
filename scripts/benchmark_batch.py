"""Does a large batch starve single-image users? And what does the MCP server cost?

    python scripts/benchmark_batch.py                    # single-image p50 alone and while a
                                                         # 200-image /predict_batch runs
    python scripts/benchmark_batch.py --mcp              # single-image p50 with Gradio's MCP
                                                         # server off and on
    python scripts/benchmark_batch.py --quick --json out.json

The app is started as a user starts it (`python app.py`, the committed models, settings
such as BATCH_CONCURRENCY_LIMIT and CONCURRENCY_LIMIT from this script's environment).
One gradio_client sends the same 224 x 224 JPEG to /predict, one request after another:

    alone        --n requests with nothing else running
    with batch   requests sent while another client's /predict_batch of --batch images
                 (distinct JPEGs of the same size) runs; the batch's own time is printed too

--runs rounds of both, alternating, so that load from elsewhere on the machine falls on
both alike.
With --mcp, two servers run at once, GRADIO_MCP_SERVER=False and True, and one client
alternates between them in rounds of 5 requests (--runs x --n requests each), so that the
machine's other load falls on both alike. Figures are medians (min-max over runs). The
client and the server share this machine's cores: note the load, and compare figures from
one run only.
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
from scripts.app_server import AppServer  # noqa: E402
from scripts.benchmark_serving import latencies, write_tile  # noqa: E402
from scripts.synthetic import tissue_jpeg  # noqa: E402


def tiles(folder, n):
    """n distinct tissue-like 224 x 224 JPEGs (scripts.synthetic.tissue_jpeg)."""
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"tile{i:04d}.jpeg")
        with open(path, "wb") as f:
            f.write(tissue_jpeg(i + 1))
        paths.append(path)
    return paths


def p50_ms(seconds):
    return round(float(np.median(seconds)) * 1000, 1)


def during_batch(url, image, batch_paths, max_n):
    """Single-image latencies measured while one /predict_batch of batch_paths runs;
    returns (latencies, batch seconds, rows the batch returned)."""
    from gradio_client import Client, handle_file

    done, result = threading.Event(), {}

    def run_batch():
        client = Client(url, verbose=False)
        t = time.perf_counter()
        table, _ = client.predict([handle_file(p) for p in batch_paths], api_name="/predict_batch")
        result["seconds"], result["rows"] = time.perf_counter() - t, len(table["data"])
        done.set()

    single = Client(url, verbose=False)
    single.predict(handle_file(image), api_name="/predict")
    thread = threading.Thread(target=run_batch)
    thread.start()
    time.sleep(0.5)  # let the upload begin
    out = []
    while (not done.is_set() or not out) and len(out) < max_n:  # at least one (--quick)
        t = time.perf_counter()
        single.predict(handle_file(image), api_name="/predict")
        out.append(time.perf_counter() - t)
    thread.join()
    return out, result["seconds"], result["rows"]


def starvation(args, image, folder):
    """--runs rounds, each: --n single requests alone, then single requests while one
    --batch-image /predict_batch runs; alone and during alternate, so drifting load from
    elsewhere falls on both."""
    paths = tiles(folder, args.batch)
    server = AppServer({"MODEL_REPO": ""}, wait=False)
    alone, during, batch_s = [], [], []
    try:
        server.first_answer(image)
        for _ in range(args.runs):
            alone += latencies(server.url, image, args.n)
            lat, seconds, rows = during_batch(server.url, image, paths, args.n * 10)
            during += lat
            batch_s.append(seconds)
    finally:
        server.stop()
    return {"single_p50_ms_alone": p50_ms(alone), "single_p50_ms_during_batch": p50_ms(during),
            "during_over_alone": round(p50_ms(during) / p50_ms(alone), 2),
            "single_requests": {"alone": len(alone), "during": len(during)}, "batch_images": rows,
            "batch_seconds_with_single_requests": [round(b, 1) for b in batch_s],
            "batch_concurrency_limit": os.environ.get("BATCH_CONCURRENCY_LIMIT", "1"),
            "concurrency_limit": os.environ.get("CONCURRENCY_LIMIT", "2")}


def mcp_cost(args, image):
    """Both servers up at once, requests alternating between them in rounds of 5, so the
    machine's other load falls on both alike."""
    from gradio_client import Client, handle_file

    servers = {mode: AppServer({"MODEL_REPO": "", "GRADIO_MCP_SERVER": flag}, wait=False)
               for mode, flag in (("off", "False"), ("on", "True"))}
    seconds = {"off": [], "on": []}
    try:
        clients = {}
        for mode, server in servers.items():
            server.first_answer(image)
            clients[mode] = Client(server.url, verbose=False)
            clients[mode].predict(handle_file(image), api_name="/predict")
        for _ in range(args.runs * args.n // 5):
            for mode, client in clients.items():
                for _ in range(5):
                    t = time.perf_counter()
                    client.predict(handle_file(image), api_name="/predict")
                    seconds[mode].append(time.perf_counter() - t)
    finally:
        for server in servers.values():
            server.stop()
    off, on = p50_ms(seconds["off"]), p50_ms(seconds["on"])
    return {"single_p50_ms_mcp_off": off, "single_p50_ms_mcp_on": on,
            "mcp_cost_percent": round((on - off) / off * 100, 1),
            "requests_each": len(seconds["off"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=200, help="images in the batch (default 200)")
    p.add_argument("--n", type=int, default=20, help="single-image requests alone per round")
    p.add_argument("--runs", type=int, default=3,
                   help="rounds of alone/during (with --mcp: requests per server are runs x n)")
    p.add_argument("--mcp", action="store_true", help="measure the MCP server's cost instead")
    p.add_argument("--quick", action="store_true", help="smoke run: a few requests, meaningless")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.n, args.runs = 10, 5, 1
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as folder:
        image = write_tile(os.path.join(folder, "single.jpeg"))
        figures = mcp_cost(args, image) if args.mcp else starvation(args, image, folder)
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    for k, v in figures.items():
        print(f"{k:40s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
