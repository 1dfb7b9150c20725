"""The browser page's speed (web/, docs/web.md): time to ready and time per answer in headless
Chromium, with the bundle served from 127.0.0.1, and what the visitor's browser downloads.

    python scripts/benchmark_web.py                       # lc25000, 5 loads, 5 rounds of its examples
    python scripts/benchmark_web.py --models lc25000 chest_ct iq_othnccd --loads 5 --rounds 5

For each model: `--loads` fresh browser contexts (empty cache) open web/?model=../models/NAME/;
"ready" is the time from the page's request to the model being ready to answer (its files
fetched and checked by sha256, the ONNX Runtime session made, the examples in memory), read
from the page (performance.now() at ready); then each example is answered `--rounds` times
in the last page: "answer" is decoding to probabilities, check and grid, "with heatmap" adds
drawing the map over the image (lungclf/overlay.js). Medians are printed, with the bytes the
page downloaded (Resource Timing). The issue's targets: ready <= 3 s (the default model),
an answer <= 150 ms with the check and the map.

The page is served from a temporary folder laid out as the repository (web/, lungclf/,
node_modules/onnxruntime-web, models/NAME); a committed bundle without model.onnx (python -m
training.export) is exported into it first.
Needs Playwright and /usr/bin/chromium (scripts/install_dev.sh).

    python scripts/benchmark_web.py --models lc25000 chest_ct iq_othnccd --agree 300

--agree N also answers N real images of each model's data set (../shared/data/NAME, spread
evenly over its sorted file list) in the page and with the app's Classifier.analyse, and
prints the share with the same label and the same wrong-input verdict, and the largest
difference of a probability (the issue's targets: the same label on >= 99%, within 1e-3).
"""

import argparse
import base64
import functools
import http.server
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def site(folder, models):
    """Lay out `folder` as the repository for the page: links to web/, lungclf/, node_modules/,
    and each model's bundle (exported into the folder when it lacks model.onnx)."""
    for name in ("web", "lungclf", "node_modules"):
        os.symlink(os.path.join(ROOT, name), os.path.join(folder, name))
    os.makedirs(os.path.join(folder, "models"))
    for name in models:
        source = os.path.join(ROOT, "models", name)
        with open(os.path.join(source, "metadata.json"), encoding="utf-8") as f:
            ready = bool(json.load(f).get("onnx"))
        if ready:
            os.symlink(source, os.path.join(folder, "models", name))
        else:
            from training.export import export, record

            copy = os.path.join(folder, "models", name)
            shutil.copytree(source, copy)
            print(f"{name}: no model.onnx committed; exporting a copy (python -m training.export)")
            record(copy, export(copy))


def measure(browser, url, name, loads, rounds):
    readies, sizes = [], []
    for i in range(loads):
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{url}/web/?model=../models/{name}/")
        page.wait_for_function("document.body.dataset.state !== 'loading'", timeout=120_000)
        if page.evaluate("document.body.dataset.state") != "ready":
            raise SystemExit(f"{name}: {page.inner_text('#status')}")
        readies.append(page.evaluate("window.lungPage.readyAt"))
        sizes.append(page.evaluate("performance.getEntriesByType('resource').reduce((s, e) => s + e.encodedBodySize, 0)"
                                   " + performance.getEntriesByType('navigation')[0].encodedBodySize"))
        if i < loads - 1:
            context.close()
    examples = os.path.join(ROOT, "models", name, "examples")
    answers, drawn = [], []
    for _ in range(rounds):
        for f in sorted(os.listdir(examples)):
            with open(os.path.join(examples, f), "rb") as fh:
                b64 = base64.b64encode(fh.read()).decode()
            a = page.evaluate("""async (b64) => {
                const blob = new Blob([Uint8Array.from(atob(b64), c => c.charCodeAt(0))]);
                const a = await window.lungPage.analyse(blob); return [a.ms, a.totalMs]; }""", b64)
            answers.append(a[0])
            drawn.append(a[1])
    context.close()
    return {"model": name, "ready_ms": statistics.median(readies), "ready_ms_all": readies,
            "answer_ms": statistics.median(answers), "with_heatmap_ms": statistics.median(drawn),
            "answers": len(answers), "downloaded_bytes": statistics.median(sizes)}


def agreement(browser, url, name, n):
    """The page against the app on n real images of the model's data set."""
    from lungclf.bundle import load
    from lungclf.inference import Classifier
    from lungclf.preprocess import IMAGE_EXTENSIONS

    data = os.path.join(ROOT, "..", "shared", "data", name)
    if not os.path.isdir(data):
        print(f"{name}: no {data}; skipping --agree")
        return None
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(data) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    files = files[:: max(1, len(files) // n)][:n]
    app = Classifier(load(os.path.join(ROOT, "models", name)))
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{url}/web/?model=../models/{name}/")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=120_000)
    same_label = same_verdict = refused = 0
    largest = 0.0
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        got = page.evaluate("""async (b64) => {
            const blob = new Blob([Uint8Array.from(atob(b64), c => c.charCodeAt(0))]);
            const a = await window.lungPage.analyse(blob);
            return a.error ? a : {probabilities: a.probabilities, wrong: a.verdict.wrong_input}; }""",
                            base64.b64encode(raw).decode())
        if "error" in got:
            refused += 1
            continue
        answer = app.analyse(raw)
        p, q = list(got["probabilities"].values()), list(answer.probabilities.values())
        same_label += p.index(max(p)) == q.index(max(q))
        same_verdict += got["wrong"] == answer.verdict.wrong_input
        largest = max(largest, max(abs(a - b) for a, b in zip(p, q)))
    context.close()
    answered = len(files) - refused
    return {"model": name, "images": len(files), "refused_by_page": refused, "same_label": same_label,
            "same_verdict": same_verdict, "answered": answered, "largest_probability_difference": largest}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lc25000"], help="committed bundles (default lc25000)")
    p.add_argument("--loads", type=int, default=5, help="fresh page loads per model (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the examples (default 5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--agree", type=int, default=0, metavar="N",
                   help="also compare the page with the app on N real images per model (../shared/data)")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="benchmark-web-") as folder:
        site(folder, args.models)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            results = [measure(browser, url, name, args.loads, args.rounds) for name in args.models]
            agree = [a for a in (agreement(browser, url, name, args.agree) for name in args.models) if a] \
                if args.agree else []
            version = browser.version
            browser.close()
        server.shutdown()
    if args.json:
        print(json.dumps({"chromium": version, "load_average": os.getloadavg(), "results": results,
                          "agreement": agree}, indent=1))
        return results
    print(f"headless Chromium {version}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; medians")
    print(f"{'model':12} {'ready (s)':>10} {'answer (ms)':>12} {'+ heatmap (ms)':>15} {'downloaded (MB)':>16}")
    for r in results:
        print(f"{r['model']:12} {r['ready_ms'] / 1000:10.2f} {r['answer_ms']:12.0f} {r['with_heatmap_ms']:15.0f} "
              f"{r['downloaded_bytes'] / 1e6:16.1f}")
    for a in agree:
        print(f"{a['model']}: {a['images']} real images, the page refused {a['refused_by_page']}; of "
              f"{a['answered']} answered, the same label {a['same_label']} ({a['same_label'] / max(1, a['answered']):.1%}), "
              f"the same verdict {a['same_verdict']}; largest probability difference "
              f"{a['largest_probability_difference']:.1e}")
    return results


if __name__ == "__main__":
    main()
