"""Measure how fast the app serves, next to its floor and the seed projects' anchor.

    python scripts/benchmark_serving.py                 # the full run: about 4 minutes
    python scripts/benchmark_serving.py --quick         # a smoke run: seconds, figures meaningless
    CONCURRENCY_LIMIT=1 python scripts/benchmark_serving.py --apps ours,floor
    python scripts/benchmark_serving.py --apps ours,batched   # does Gradio batching pay?
    python scripts/benchmark_serving.py --model models/chest_ct --apps ours,floor --record   # into its card

Each app is started as a user starts it (`python app.py`, a fresh process per run) and
sent a 224 x 224 JPEG (the size of LC25000 tiles):

    cold start   process start -> first prediction answered (gradio_client)
    p50 / p95    one gradio_client, requests one after another
    16 clients   throughput (requests/s) and p95 latency with 16 clients at once, through
                 Gradio's HTTP API (upload, /call/predict, event stream: the same queue),
                 whose clients cost this shared machine far less CPU than gradio_client's
    server CPU   the server's CPU time per request while serving the 16 clients
    peak memory  the server's peak resident memory (VmHWM)

The apps:

    ours     the bundle named by --model (default: the committed models/lc25000)
    batched  (only when asked for) ours with Gradio batching, --max-batch requests a call
    anchor   the seed projects' network (training.model.anchor) at 256 x 256 with random
             weights, written as a bundle in a temp folder and served by the same app.py
    floor    app.py's page with the same components, queue settings and protocol, its predict
             replaced by a no-op answering constants (a gr.Label value, a wrong-input check, a
             224 x 224 picture in the heatmap's place, as the client fetches it; --serve-floor); the
             bundle is loaded but never called, so its start-up and memory are ours

plus the bare forward pass (the compiled function app.py calls, batch of 1) of ours and the
anchor. The floor for our latency is floor p50 + our bare forward pass. Figures are
medians with min-max over --runs runs. The server settings (CONCURRENCY_LIMIT, QUEUE_SIZE
...) come from this script's environment, as for app.py. Clients and server share this
machine's cores, so note the load (printed) and compare figures from one run only.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from scripts.app_server import AppServer  # noqa: E402  (the repository root is on sys.path now)
from scripts.synthetic import tissue_jpeg, write_bundle  # noqa: E402


def serve_floor():
    """The no-op app: app.py's own page, components, queue and launch settings, with its
    predict replaced by one that returns a constant gr.Label value (no decoding, no model)."""
    import app  # builds app.demo from MODEL_REPO, as `python app.py` does

    texts = next(iter(app.BUNDLES.values())).texts
    demo = app.demo
    fn = next(f for f in demo.fns.values() if f.api_name == "predict")
    # The same five outputs as app.py's predict (docs/api.md), constant: the label, the check, a
    # heatmap-sized picture (an image output is a file the client fetches: protocol, not work),
    # the words and the grid.
    check = {"wrong_input": False, "check": "features", "score": 1.0, "threshold": 2.0, "colourfulness": 50.0,
             "message": ""}
    picture = np.full((224, 224, 3), 128, np.uint8)
    grid = np.full((8, 8), 0.5).tolist()
    fn.fn = lambda image, model=None: ({t: 1 / len(texts) for t in texts}, check, picture,
                                       "<small>Looks like the images this model was trained on.</small>", grid)
    app.keep_delete_cache_alive()
    demo.launch(max_file_size=app.MAX_FILE_SIZE, show_error=False, state_session_capacity=app.SESSIONS)


def serve_batched(max_batch):
    """app.py exactly, with its predict event switched to Gradio batching: the measurement
    behind app.py's choice not to batch (see README, Performance)."""
    import app

    demo = app.demo
    fn = next(f for f in demo.fns.values() if f.api_name == "predict")
    single = fn.fn
    fn.fn = lambda images, models: [list(out) for out in zip(*[single(im, m) for im, m in zip(images, models)])]
    fn.batch, fn.max_batch_size, fn.concurrency_limit = True, max_batch, 1
    app.keep_delete_cache_alive()
    demo.launch(max_file_size=app.MAX_FILE_SIZE, show_error=False, state_session_capacity=app.SESSIONS)


def write_anchor_bundle(folder, template, size):
    """The anchor architecture with random weights as a bundle, metadata copied from `template`
    (a real bundle) with the model, input size and metrics replaced."""
    import keras

    from training.model import anchor

    classes = json.load(open(os.path.join(template, "classes.json")))
    metrics = json.load(open(os.path.join(template, "metadata.json")))["metrics"]
    metrics["test"].update(accuracy=0.0, macro_f1=0.0)
    write_bundle(folder, anchor(size, len(classes["labels"])), template, "anchor", architecture="anchor",
                 description="anchor architecture, random weights: a speed anchor only", metrics=metrics,
                 calibration={"temperature": 1.0})
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("Speed anchor for scripts/benchmark_serving.py: random weights, no use.\n")
    keras.backend.clear_session()
    return folder


def write_tile(path):
    """A tissue-like 224 x 224 JPEG (scripts.synthetic.tissue_jpeg) written to `path`."""
    with open(path, "wb") as f:
        f.write(tissue_jpeg(0))
    return path


def latencies(url, image, n):
    """n sequential predictions from one client -> seconds each."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(handle_file(image), api_name="/predict")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        client.predict(handle_file(image), api_name="/predict")
        out.append(time.perf_counter() - t)
    return out


def http_predict(http, url, data):
    """One prediction through Gradio's HTTP API, as curl users make it: upload the file,
    call /predict, read the event stream. The same queue and route as gradio_client, at a
    fraction of its client-side CPU, so that 16 clients measure the server, not themselves."""
    path = http.post(url + "gradio_api/upload", files={"files": ("tile.jpg", data, "image/jpeg")}).json()[0]
    body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, None]}
    event = http.post(url + "gradio_api/call/predict", json=body).json()["event_id"]
    stream = http.get(url + "gradio_api/call/predict/" + event).text
    if "event: complete" not in stream:
        raise RuntimeError(stream[-300:])


def concurrent(url, image, clients, per_client):
    """`clients` threads, each its own HTTP connection, `per_client` predictions each ->
    (requests per second, latencies)."""
    import httpx

    data = open(image, "rb").read()
    https = [httpx.Client(timeout=120) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    lat, errors = [], []

    def user(http):
        barrier.wait()
        for _ in range(per_client):
            t = time.perf_counter()
            try:
                http_predict(http, url, data)
                lat.append(time.perf_counter() - t)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(h,), daemon=True) for h in https]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for h in https:
        h.close()
    if errors:
        print(f"  {len(errors)} requests failed, e.g. {errors[0]}")
    return len(lat) / wall, lat


def forward_ms(bundle_folder, n):
    """p50 of the bare compiled forward pass, batch of 1, as app.py calls it."""
    from lungclf.bundle import load
    from lungclf.inference import Classifier

    served = Classifier(load(bundle_folder))
    x = np.random.default_rng(0).uniform(0, 255, (1, served.size, served.size, 3)).astype(np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        served.forward(x)[0].numpy()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def measure(name, cmd, env, image, args):
    server = AppServer(env, cmd, wait=False)
    try:
        row = {"cold_start_s": server.first_answer(image)}
        lat = latencies(server.url, image, args.requests)
        row["p50_ms"] = 1000 * np.percentile(lat, 50)
        row["p95_ms"] = 1000 * np.percentile(lat, 95)
        cpu0 = server.cpu_seconds()
        rps, lat16 = concurrent(server.url, image, args.clients, args.per_client)
        row["server_cpu_ms"] = 1000 * (server.cpu_seconds() - cpu0) / len(lat16)
        row["rps"] = rps
        row["p95_concurrent_ms"] = 1000 * np.percentile(lat16, 95)
        row["peak_mb"] = server.memory_mb("VmHWM")
    finally:
        server.stop()
    print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    return row


def fmt(values, digits=0):
    """median (min-max) of a list of numbers."""
    med = float(np.median(values))
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "lc25000"), help="bundle folder to serve as 'ours'")
    p.add_argument("--apps", default="ours,anchor,floor", help="which apps to run (default: all three)")
    p.add_argument("--app", default="app.py", help="the app script serving ours and the anchor (default app.py)")
    p.add_argument("--runs", type=int, default=3, help="fresh server processes per app (default 3)")
    p.add_argument("--requests", type=int, default=40, help="sequential requests per run (default 40)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--per-client", type=int, default=8, help="requests per concurrent client (default 8)")
    p.add_argument("--anchor-size", type=int, default=256, help="anchor input side (default 256)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run, few requests, small anchor")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument("--record", action="store_true", help="with --apps ours,floor: write p50 against the floor "
                   "and the 16-client throughput into the --model bundle's metadata.json (measured.serving) "
                   "and re-render its card")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size of the 'batched' app (default 8)")
    p.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-batched", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_floor:
        return serve_floor()
    if args.serve_batched:
        return serve_batched(args.max_batch)
    if args.quick:
        args.runs, args.requests, args.clients, args.per_client, args.anchor_size = 1, 3, 4, 2, 64
    apps = args.apps.split(",")

    work = tempfile.mkdtemp(prefix="bench-serving-")
    try:
        image = write_tile(os.path.join(work, "tile.jpg"))
        load0 = os.getloadavg()
        print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} at start", flush=True)
        bundles = {"ours": args.model}
        if "anchor" in apps:
            bundles["anchor"] = write_anchor_bundle(os.path.join(work, "anchor"), args.model, args.anchor_size)
        cmds = {"ours": ([sys.executable, args.app], {"MODEL_REPO": bundles["ours"]}),
                "anchor": ([sys.executable, args.app], {"MODEL_REPO": bundles.get("anchor", "")}),
                "floor": ([sys.executable, os.path.abspath(__file__), "--serve-floor"], {"MODEL_REPO": bundles["ours"]}),
                "batched": ([sys.executable, os.path.abspath(__file__), "--serve-batched", "--max-batch",
                             str(args.max_batch)], {"MODEL_REPO": bundles["ours"]})}
        rows = {a: [] for a in apps}
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for a in apps:
                rows[a].append(measure(a, *cmds[a], image, args))
        forward = {a: forward_ms(bundles[a], 20 if args.quick else 200) for a in ("ours", "anchor") if a in bundles}
        sizes = {a: os.path.getsize(os.path.join(f, "model.keras")) / 1e6 for a, f in bundles.items()}
        load1 = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def col(a, key):
        return [r[key] for r in rows[a]]

    print(f"\nload average {load1[0]:.2f} at the end; medians (min-max) over {args.runs} run(s); "
          f"{args.clients} clients x {args.per_client} requests; CONCURRENCY_LIMIT="
          f"{os.environ.get('CONCURRENCY_LIMIT', 'default')}\n")
    print(f"| app | cold start s | p50 ms | p95 ms | req/s, {args.clients} clients | p95 ms, {args.clients} "
          "clients | server CPU ms/req | peak MB | model MB | forward ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for a in apps:
        print(f"| {a} | {fmt(col(a, 'cold_start_s'), 1)} | {fmt(col(a, 'p50_ms'))} | {fmt(col(a, 'p95_ms'))} | "
              f"{fmt(col(a, 'rps'), 1)} | {fmt(col(a, 'p95_concurrent_ms'))} | {fmt(col(a, 'server_cpu_ms'), 1)} | "
              f"{fmt(col(a, 'peak_mb'))} | {sizes.get(a, 0):.1f} | {forward.get(a, 0):.1f} |")
    summary = {}
    if "ours" in apps and "floor" in apps:
        floor = np.median(col("floor", "p50_ms")) + forward["ours"]
        summary["p50 / floor"] = np.median(col("ours", "p50_ms")) / floor
        print(f"\nfloor = no-op app p50 + bare forward pass = {floor:.1f} ms; "
              f"ours p50 / floor = {summary['p50 / floor']:.2f} (target <= 1.2)")
    if "ours" in apps and "anchor" in apps:
        summary["throughput / anchor"] = np.median(col("ours", "rps")) / np.median(col("anchor", "rps"))
        summary["anchor file / ours"] = sizes["anchor"] / sizes["ours"]
        print(f"throughput ours / anchor = {summary['throughput / anchor']:.2f} (target >= 3); "
              f"model file anchor / ours = {summary['anchor file / ours']:.0f} (target >= 20)")
    if "ours" in apps:
        print(f"cold start ours = {np.median(col('ours', 'cold_start_s')):.1f} s (target < 10)")
    figures = {"args": vars(args), "load": [load0, load1], "runs": rows, "forward_ms": forward,
               "model_mb": sizes, "summary": summary}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.record:
        if not {"ours", "floor"} <= set(apps):
            raise SystemExit("--record needs --apps ours,floor")
        record(args.model, figures)
    return rows


def record(folder, figures):
    """measured.serving (from this script's --json figures) into FOLDER/metadata.json; re-render the card."""
    from training import card

    runs, fwd = figures["runs"], figures["forward_ms"]["ours"]
    med = lambda app, key: float(np.median([r[key] for r in runs[app]]))  # noqa: E731
    floor = med("floor", "p50_ms") + fwd
    card.record(folder, {
        "p50_ms": round(med("ours", "p50_ms"), 1), "floor_ms": round(floor, 1),
        "p50_over_floor": round(med("ours", "p50_ms") / floor, 3),
        "rps_16_clients": round(med("ours", "rps"), 1), "floor_rps_16_clients": round(med("floor", "rps"), 1),
        "runs": len(runs["ours"]), "load": [round(v[0], 1) for v in figures["load"]],
        "command": f"python scripts/benchmark_serving.py --model {os.path.relpath(folder, ROOT)} --apps ours,floor"},
        "measured", "serving")


if __name__ == "__main__":
    main()
