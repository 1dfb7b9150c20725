"""Measure how fast the app serves, against a floor app that answers one label and nothing else.

    python scripts/benchmark_serving.py                  # lc25000: classify, predict, floor; ~5 minutes
    python scripts/benchmark_serving.py --model models/chest_ct --record   # into that bundle's card
    python scripts/benchmark_serving.py --quick          # a smoke run: seconds, figures meaningless
    python scripts/benchmark_serving.py --apps classify,anchor,floor       # the seed projects' anchor
    python scripts/benchmark_serving.py --apps classify,batched            # does Gradio batching pay?
    CONCURRENCY_LIMIT=1 python scripts/benchmark_serving.py

Each app is started as a user starts it (`python app.py`), a fresh process for each of
--runs runs (default 3), and sent a 224 x 224 JPEG (the size of LC25000 tiles). The apps:

    classify  app.py serving the bundle --model, called through /classify: what the page
              calls (label, wrong-input check, the check in words, the heatmap's grid,
              which the browser draws over the image)
    predict   the same app through /predict: the documented API, five outputs with the
              heatmap picture, a JPEG the client fetches after each answer
    floor     app.py's page, queue and launch settings, its /classify event cut down to ONE
              output, a gr.Label, answered with a constant (no decoding, no model, no check,
              no map; --serve-floor). The bundle is loaded but never called, so its start-up
              and memory are ours. Gradio's own cost per request is the limit here.
    anchor    (when asked) the seed projects' network (training.model.anchor) at 256 x 256
              with random weights, written as a bundle and served by app.py, via /classify
    batched   (when asked) app.py with Gradio batching on /classify (--max-batch a call)

For each, what is measured:

    cold start   process start -> first answer (gradio_client)
    p50 / p95    one gradio_client, requests one after another
    16 clients   requests/s and p95 latency with 16 clients at once through Gradio's HTTP
                 API (upload, /call/<endpoint>, event stream: the same queue as
                 gradio_client, at a fraction of its CPU on this shared machine)
    server CPU   the server's CPU time per request while serving the 16 clients
    peak memory  the server's peak resident memory (VmHWM)

plus the bare forward pass of the bundle (the traced function, batch of 1, in this process).
Against the floor: one client's p50 / (floor app p50 + bare forward pass), and 16 clients'
requests/s / the floor app's. Figures are medians (min-max) over the runs. The server
settings (CONCURRENCY_LIMIT, QUEUE_SIZE ...) come from this script's environment, as for
app.py. Clients and servers share this machine's cores, so the load average (sampled while
it runs) is printed and recorded: compare figures from one run only.

--record (needs classify and floor; predict too when measured) writes the figures into
the bundle's metadata.json (`measured.serving`, with the date, command and load) and
re-renders its card (training.card).
"""

import argparse
import datetime
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

APPS = ("classify", "predict", "floor", "anchor", "batched")
ENDPOINT = {"classify": "classify", "predict": "predict", "floor": "classify", "anchor": "classify",
            "batched": "classify"}  # the endpoint each app is called through
OURS = ("classify", "predict")  # the rows compared with the floor


def event(demo, api_name):
    """The BlockFunction (event) of `demo` with this api_name."""
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def serve_floor():
    """The floor: app.py's page, queue and launch settings, whose /classify event has ONE
    output, the page's gr.Label, answered with a constant: Gradio's own cost per request."""
    import gradio as gr

    import app  # builds app.demo from MODEL_REPO, as `python app.py` does

    texts = next(iter(app.BUNDLES.values())).texts
    label_value = {t: 1 / len(texts) for t in texts}
    fn = event(app.demo, "classify")
    label = fn.outputs[0]
    assert isinstance(label, gr.Label), f"app.py's /classify no longer answers a gr.Label first: {label}"
    fn.outputs = [label]
    fn.fn = lambda image, model=None: label_value
    app.keep_delete_cache_alive()
    app.demo.launch(max_file_size=app.MAX_FILE_SIZE, show_error=False, state_session_capacity=app.SESSIONS)


def serve_batched(max_batch):
    """app.py exactly, with its /classify event switched to Gradio batching: the measurement
    behind app.py's choice not to batch (docs/performance.md, Batching is off)."""
    import app

    fn = event(app.demo, "classify")
    single = fn.fn
    fn.fn = lambda images, models: [list(out) for out in zip(*[single(im, m) for im, m in zip(images, models)])]
    fn.batch, fn.max_batch_size, fn.concurrency_limit = True, max_batch, 1
    app.keep_delete_cache_alive()
    app.demo.launch(max_file_size=app.MAX_FILE_SIZE, show_error=False, state_session_capacity=app.SESSIONS)


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


def latencies(url, image, n, endpoint="predict"):
    """n sequential calls of /endpoint from one gradio_client -> seconds each. The client
    fetches any file in the answer (the /predict picture) before returning, as users' do."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(handle_file(image), api_name="/" + endpoint)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        client.predict(handle_file(image), api_name="/" + endpoint)
        out.append(time.perf_counter() - t)
    return out


def http_predict(http, url, data, endpoint="predict"):
    """One call through Gradio's HTTP API, as curl users make it: upload the file, call
    /endpoint, read the event stream (the answer's picture, if any, is not fetched). The
    same queue and route as gradio_client, at a fraction of its client-side CPU, so that
    16 clients measure the server, not themselves."""
    path = http.post(url + "gradio_api/upload", files={"files": ("tile.jpg", data, "image/jpeg")}).json()[0]
    body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, None]}
    event_id = http.post(url + f"gradio_api/call/{endpoint}", json=body).json()["event_id"]
    stream = http.get(url + f"gradio_api/call/{endpoint}/{event_id}").text
    if "event: complete" not in stream:
        raise RuntimeError(stream[-300:])


def concurrent(url, image, clients, per_client, endpoint="predict"):
    """`clients` threads, each its own HTTP connection, `per_client` calls each ->
    (requests per second, latencies)."""
    import httpx

    with open(image, "rb") as f:
        data = f.read()
    https = [httpx.Client(timeout=120) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    lat, errors = [], []

    def user(http):
        barrier.wait()
        for _ in range(per_client):
            t = time.perf_counter()
            try:
                http_predict(http, url, data, endpoint)
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
    """p50 of the bare forward pass (logits and features), batch of 1, on the engine the app
    serves the bundle with (ONNX Runtime on one thread for a bundle with model.onnx)."""
    from lungclf.bundle import load
    from lungclf.inference import Classifier

    served = Classifier(load(bundle_folder), engine=os.environ.get("ENGINE", "auto"), threads=1)
    x = np.random.default_rng(0).uniform(0, 255, (1, served.size, served.size, 3)).astype(np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        served.run(x, maps=False)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), served.engine


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs (our own servers
    and clients add about 2 to it while they work; the value at the start is everyone else's)."""

    def __init__(self, every=5.0):
        self.values, self.every = [os.getloadavg()[0]], every
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while not self.done.wait(self.every):
            self.values.append(os.getloadavg()[0])

    def stop(self):
        self.done.set()
        self.values.append(os.getloadavg()[0])
        v = self.values
        return {"start": round(v[0], 2), "end": round(v[-1], 2), "min": round(min(v), 2), "max": round(max(v), 2)}


class Killed(RuntimeError):
    """The server process died from a signal while it was being measured."""


def measure(name, cmd, env, image, args, tries=3):
    """One fresh server of app `name`: its row of figures. A server killed from outside (by a
    signal, as other work on a shared machine may do) is started again, up to `tries` times."""
    for _ in range(tries - 1):
        try:
            return measure_once(name, cmd, env, image, args)
        except Killed as e:
            print(f"  {name}: {e}; starting another", flush=True)
    return measure_once(name, cmd, env, image, args)


def measure_once(name, cmd, env, image, args):
    endpoint = ENDPOINT[name]
    server = AppServer(env, cmd, wait=False)

    def check_alive():
        if server.proc.poll() is not None and server.proc.returncode < 0:
            raise Killed(f"the server was killed by signal {-server.proc.returncode}")

    try:
        row = {"cold_start_s": server.first_answer(image, api_name="/" + endpoint)}
        lat = latencies(server.url, image, args.requests, endpoint)
        row["p50_ms"] = 1000 * np.percentile(lat, 50)
        row["p95_ms"] = 1000 * np.percentile(lat, 95)
        cpu0 = server.cpu_seconds()
        rps, lat16 = concurrent(server.url, image, args.clients, args.per_client, endpoint)
        row["server_cpu_ms"] = 1000 * (server.cpu_seconds() - cpu0) / max(len(lat16), 1)
        row["rps"] = rps
        row["p95_concurrent_ms"] = 1000 * np.percentile(lat16, 95)
        row["peak_mb"] = server.memory_mb("VmHWM")
        check_alive()
    except Exception:
        check_alive()
        raise
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


def median(figures, app, key):
    return float(np.median([r[key] for r in figures["runs"][app]]))


def against_floor(figures):
    """{app: p50, requests/s and server CPU with their ratios to the floor} for classify and
    predict, plus the floor itself: the figures --record writes and the summary prints."""
    fwd = figures["forward_ms"]["ours"]
    floor_p50 = median(figures, "floor", "p50_ms") + fwd
    floor_rps = median(figures, "floor", "rps")
    out = {"forward_ms": round(fwd, 1),
           "floor": {"p50_ms": round(floor_p50, 1), "app_p50_ms": round(median(figures, "floor", "p50_ms"), 1),
                     "rps": round(floor_rps, 1), "server_cpu_ms": round(median(figures, "floor", "server_cpu_ms"), 1)}}
    for app in OURS:
        if app in figures["runs"]:
            p50, rps = median(figures, app, "p50_ms"), median(figures, app, "rps")
            out[app] = {"p50_ms": round(p50, 1), "p50_over_floor": round(p50 / floor_p50, 3),
                        "rps": round(rps, 1), "rps_over_floor": round(rps / floor_rps, 3),
                        "server_cpu_ms": round(median(figures, app, "server_cpu_ms"), 1)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "models", "lc25000"), help="bundle folder to serve")
    p.add_argument("--apps", default="classify,predict,floor",
                   help=f"which apps, comma-separated, of {', '.join(APPS)} (default classify,predict,floor)")
    p.add_argument("--app", default="app.py", help="the app script serving the bundle (default app.py)")
    p.add_argument("--runs", type=int, default=3, help="fresh server processes per app (default 3)")
    p.add_argument("--requests", type=int, default=40, help="sequential requests per run (default 40)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--per-client", type=int, default=8, help="requests per concurrent client (default 8)")
    p.add_argument("--anchor-size", type=int, default=256, help="anchor input side (default 256)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 run, few requests, small anchor")
    p.add_argument("--json", help="also write the raw figures to this file")
    p.add_argument("--record", action="store_true", help="write the figures against the floor into the --model "
                   "bundle's metadata.json (measured.serving) and re-render its card")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size of the 'batched' app (default 8)")
    p.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-batched", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_floor:
        return serve_floor()
    if args.serve_batched:
        return serve_batched(args.max_batch)
    apps = args.apps.split(",")
    unknown = [a for a in apps if a not in APPS]
    if unknown:
        p.error(f"unknown apps {unknown}; choose from {', '.join(APPS)}")
    if args.record and not ("classify" in apps and "floor" in apps):
        p.error("--record needs --apps with classify and floor (and predict, to record it too)")
    command = " ".join(["python scripts/benchmark_serving.py", "--model", os.path.relpath(args.model, ROOT),
                        "--apps", args.apps, "--runs", str(args.runs)] + ["--record"] * args.record)
    if args.quick:
        args.runs, args.requests, args.clients, args.per_client, args.anchor_size = 1, 3, 4, 2, 64

    work = tempfile.mkdtemp(prefix="bench-serving-")
    load = LoadSampler()
    try:
        image = write_tile(os.path.join(work, "tile.jpg"))
        print(f"{os.cpu_count()} cores, load average {load.values[0]:.2f} at start", flush=True)
        bundles = {"ours": args.model}
        if "anchor" in apps:
            bundles["anchor"] = write_anchor_bundle(os.path.join(work, "anchor"), args.model, args.anchor_size)
        here = os.path.abspath(__file__)
        ours = ([sys.executable, args.app], {"MODEL_REPO": args.model})
        cmds = {"classify": ours, "predict": ours,
                "anchor": ([sys.executable, args.app], {"MODEL_REPO": bundles.get("anchor", "")}),
                "floor": ([sys.executable, here, "--serve-floor"], {"MODEL_REPO": args.model}),
                "batched": ([sys.executable, here, "--serve-batched", "--max-batch", str(args.max_batch)],
                            {"MODEL_REPO": args.model})}
        rows = {a: [] for a in apps}
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            for a in apps:
                rows[a].append(measure(a, *cmds[a], image, args))
        forward = {b: forward_ms(folder, 20 if args.quick else 200) for b, folder in bundles.items()}
        engines = {b: e for b, (_, e) in forward.items()}
        forward = {b: ms for b, (ms, _) in forward.items()}
        sizes = {b: os.path.getsize(os.path.join(folder, "model.keras")) / 1e6 for b, folder in bundles.items()}
    finally:
        loads = load.stop()
        shutil.rmtree(work, ignore_errors=True)

    def col(a, key):
        return [r[key] for r in rows[a]]

    print(f"\nload average {loads['start']:.2f} at the start, {loads['min']:.2f}-{loads['max']:.2f} while running; "
          f"medians (min-max) over {args.runs} run(s); {args.clients} clients x {args.per_client} requests; "
          f"CONCURRENCY_LIMIT={os.environ.get('CONCURRENCY_LIMIT', 'default')}\n")
    print(f"| app | endpoint | cold start s | p50 ms | p95 ms | req/s, {args.clients} clients | p95 ms, "
          f"{args.clients} clients | server CPU ms/req | peak MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for a in apps:
        print(f"| {a} | /{ENDPOINT[a]} | {fmt(col(a, 'cold_start_s'), 1)} | {fmt(col(a, 'p50_ms'))} | "
              f"{fmt(col(a, 'p95_ms'))} | {fmt(col(a, 'rps'), 1)} | {fmt(col(a, 'p95_concurrent_ms'))} | "
              f"{fmt(col(a, 'server_cpu_ms'), 1)} | {fmt(col(a, 'peak_mb'))} |")
    print("\nbare forward pass, batch of 1: " + ", ".join(f"{b} {ms:.1f} ms ({engines[b]}, {sizes[b]:.1f} MB "
                                                          f"model.keras)" for b, ms in forward.items()))
    figures = {"args": vars(args), "command": command, "date": datetime.date.today().isoformat(),
               "cores": os.cpu_count(), "load": loads, "runs": rows, "forward_ms": forward, "engine": engines,
               "model_mb": sizes, "summary": {}}
    if "floor" in apps and any(a in apps for a in OURS):
        vs = against_floor(figures)
        figures["summary"] = {"against_floor": vs}
        print(f"\nfloor: floor app p50 {vs['floor']['app_p50_ms']:.0f} ms + bare forward pass "
              f"{vs['forward_ms']:.1f} ms = {vs['floor']['p50_ms']:.0f} ms; floor app {vs['floor']['rps']:.1f} req/s")
        for a in OURS:
            if a in vs:
                print(f"{a}: p50 / floor = {vs[a]['p50_over_floor']:.2f} (target <= 1.2); req/s / floor = "
                      f"{vs[a]['rps_over_floor']:.2f} (target >= 0.8 for lc25000, >= 0.5 for a CT model)")
    if "classify" in apps and "anchor" in apps:
        figures["summary"]["throughput / anchor"] = np.median(col("classify", "rps")) / np.median(col("anchor", "rps"))
        figures["summary"]["anchor file / ours"] = sizes["anchor"] / sizes["ours"]
        print(f"throughput classify / anchor = {figures['summary']['throughput / anchor']:.2f}; "
              f"model file anchor / ours = {figures['summary']['anchor file / ours']:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.record:
        print(f"recorded in {record(args.model, figures)}")
    return rows


def record(folder, figures):
    """measured.serving (from this script's --json figures) into FOLDER/metadata.json; re-render the card."""
    from training import card

    vs = against_floor(figures)
    first = next(iter(figures["runs"].values()))
    return card.record(folder, {
        **vs, "engine": figures.get("engine", {}).get("ours", "keras"), "runs": len(first), "clients": figures["args"]["clients"], "cores": figures.get("cores"),
        "load": figures["load"], "date": figures.get("date"),
        "command": figures.get("command") or f"python scripts/benchmark_serving.py --model "
                                             f"{os.path.relpath(folder, ROOT)}"}, "measured", "serving")


if __name__ == "__main__":
    main()
