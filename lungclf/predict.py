"""Predict over an archive: classify any number of images offline, the way the app does, into
one table (Parquet or CSV) that survives an interruption, on one machine or a Dask cluster.

    python -m lungclf.predict models/lc25000 /data/tiles --out predictions.parquet
    python -m lungclf.predict models/lc25000 paths.txt --out predictions.csv --heatmaps heatmaps/
    python -m lungclf.predict owner/name@COMMIT /data/tiles --out p.parquet --workers 4
    python -m lungclf.predict models/lc25000 /shared/tiles --out p.parquet --scheduler tcp://HOST:8786

In: a folder, searched recursively for the files the app reads (IMAGE_EXTENSIONS; hidden
files and folders skipped), in sorted order; or a text file of paths, one a line (blank
lines and lines starting with # skipped; a relative path is relative to the list's folder);
or one image. Paths are recorded absolute.

The answer is the app's: the bundle verified and loaded by lungclf.bundle.load, then
lungclf.inference.Classifier (the same decoding and resize, calibration, optional --tta as
the app's TTA=1, wrong-input check) through `Classifier.analyse_many`; with --heatmaps DIR,
the heatmap picture the app's /predict returns (lungclf.heatmap.overlay at the app's
opacity), as DIR/<path below the common folder>.png.

Out: one row per file (`columns`): path, label (the class's readable name, as the app shows
it), label_id, confidence (the label's probability), p_<label id> for every class,
wrong_input, check, score, threshold, message (the wrong-input check's), error (why the
file could not be classified; then the answer's columns are empty) and heatmap (the
picture's path). A bad file gets a row with its message, never a crash. The record of the
run (the bundle's name, spec, model sha256 and Hub commit; options; software versions of
the processes that classified; counts) is the Parquet schema metadata under the key
"lungclf.predict", or OUT.json beside a CSV. `read_output(OUT)` gives both back.

Resuming: rows are written every --chunk images to OUT.parts/part-*.json (each written
under a temporary name, then renamed, so a part is whole or absent; a run interrupted in
one process writes the rows it finished too). Run the same command again after an
interruption: the paths already in a part are skipped, and only the rest is
classified. At the end the parts are merged into OUT in input order and removed.
OUT.parts/run.json holds the bundle's sha256 and the options: a rerun with another bundle
or options is refused rather than mixed.

Cores: in one process, --threads threads decode (default one per two cores) two batches
ahead of the traced forward pass, which runs in batches of --batch-size (32) on every core
(ONNX Runtime's or TensorFlow's own threads) while the batch before is calibrated and
checked, with NumPy's BLAS on one thread (OPENBLAS_NUM_THREADS, set to 1 unless given,
when this module loads; a program that imported NumPy before it keeps its BLAS threads).

Beyond one machine: Dask (dask.distributed), an optional dependency
(requirements-scale.txt). --workers N starts a local cluster of N worker processes;
--scheduler ADDRESS uses a running one (`dask scheduler` on one machine, `dask worker
ADDRESS` on each of the others; or dask-jobqueue on Slurm/PBS, dask-kubernetes). Each
worker process loads the bundle once and classifies chunks of --chunk paths; this process
writes the parts, so resuming works the same. The workers need `lungclf` importable and
the images at the same paths (a shared file system), and the bundle folder too unless it
is a Hub repo id (each worker pulls the commit this process resolved). Why Dask and not
Ray Data or Spark: the job is a list of paths mapped through a Python function that holds
a loaded model, which Dask's futures do without more; Dask is pure-Python wheels that
install in seconds next to TensorFlow, starts a local cluster inside the process (so CI
tests two workers), and connects to the cluster schedulers people already run. Ray brings
its own object store and daemons in a much larger wheel; Spark a JVM.
"""

import argparse
import contextlib
import csv
import glob
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time

# NumPy's BLAS threads (the check's whitened distance) default to one, as in app.py, before
# NumPy loads: the forward pass keeps every core busy, and BLAS threads spinning beside it
# take its time (IQ-OTH/NCCD here: 0.70 of the forward pass alone with two, 0.84 with one).
# Dask's worker processes inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from lungclf.preprocess import IMAGE_EXTENSIONS, ImageError  # noqa: E402

RECORD_KEY = "lungclf.predict"
OPACITY = 0.5  # the app's default heatmap opacity (app.py OPACITY)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PredictError(ValueError):
    """A run that cannot start or go on; the message says why, in one line."""


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- what to classify

def find_images(source):
    """A folder, a text file of paths or one image -> absolute paths, each once."""
    if os.path.isdir(source):
        found = []
        for folder, dirs, files in os.walk(source):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(folder, f) for f in files
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise PredictError(f"{source}: no image files in this folder "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        return sorted(os.path.abspath(p) for p in found)
    if not os.path.isfile(source):
        raise PredictError(f"{source}: no such folder or file")
    if source.lower().endswith(IMAGE_EXTENSIONS):
        return [os.path.abspath(source)]
    try:
        with open(source, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise PredictError(f"{source}: not a readable list of paths ({type(e).__name__})") from None
    here = os.path.dirname(os.path.abspath(source))
    paths = [os.path.abspath(os.path.join(here, line)) for line in lines if line and not line.startswith("#")]
    if not paths:
        raise PredictError(f"{source}: the list names no files")
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------- one row per file

def columns(labels):
    """[(column, type)] of the table for a bundle's class ids; type is str, float or bool."""
    return ([("path", str), ("label", str), ("label_id", str), ("confidence", float)]
            + [(f"p_{lab}", float) for lab in labels]
            + [("wrong_input", bool), ("check", str), ("score", float), ("threshold", float),
               ("message", str), ("error", str), ("heatmap", str)])


def error_text(path, e):
    """The message of a file that could not be classified."""
    if not os.path.isfile(path):
        return "No such file."
    if isinstance(e, ImageError):
        return str(e)
    return f"The image could not be classified ({type(e).__name__}: {str(e)[:200]})."


def heatmap_path(path, heatmaps, root):
    return os.path.join(heatmaps, os.path.relpath(path, root) + ".png")


def row_of(path, answer, labels, heatmaps=None, root=None):
    """One row from an Answer of lungclf.inference (or the exception that file raised); with
    `heatmaps`, the heatmap picture is written there first."""
    row = dict.fromkeys(name for name, _ in columns(labels))
    row["path"] = path
    if isinstance(answer, Exception):
        row["error"] = error_text(path, answer)
        return row
    texts = list(answer.probabilities)
    probs = list(answer.probabilities.values())
    top = max(range(len(probs)), key=probs.__getitem__)
    row.update(label=texts[top], label_id=labels[top], confidence=probs[top])
    row.update({f"p_{lab}": p for lab, p in zip(labels, probs)})
    v = answer.verdict
    row.update(wrong_input=v.wrong_input, check=v.check, score=v.score, threshold=v.threshold,
               message=v.message or None)
    if heatmaps and answer.cam is not None:
        from PIL import Image

        from lungclf.heatmap import overlay

        row["heatmap"] = heatmap_path(path, heatmaps, root)
        os.makedirs(os.path.dirname(row["heatmap"]), exist_ok=True)
        Image.fromarray(overlay(answer.rgb, answer.cam, OPACITY)).save(row["heatmap"])
    return row


def classify(classifier, paths, heatmaps=None, root=None, batch_size=32, threads=None):
    """Rows of `paths`, in order, as they are classified (a generator)."""
    labels = classifier.bundle.labels
    answers = classifier.analyse_many(paths, batch_size, threads, heatmaps=bool(heatmaps))
    for path, answer in zip(paths, answers):
        yield row_of(path, answer, labels, heatmaps, root)


def software_versions():
    """The versions of what computes an answer, in this process (TensorFlow already loaded)."""
    import cv2
    import keras
    import numpy
    import PIL
    import tensorflow

    try:
        code = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], check=False,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        code = None
    return {"lungclf": code, "python": platform.python_version(), "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "opencv": cv2.__version__}


# ---------------------------------------------------------------- parts: resuming

class Parts:
    """OUT.parts/: the rows written so far, a part file per chunk, and run.json."""

    def __init__(self, out):
        self.folder = out + ".parts"

    def start(self, run):
        """Create the folder, or check that its parts were made by the same bundle and options."""
        path = os.path.join(self.folder, "run.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                before = json.load(f)
            if before != run:
                raise PredictError(f"{self.folder} holds the rows of another run ({before}, not {run}); "
                                   "remove it or choose another --out")
            return
        os.makedirs(self.folder, exist_ok=True)
        self._write(path, run)

    def done(self):
        """{path: row} of every part written, and the versions each part records."""
        rows, versions = {}, []
        for name in sorted(glob.glob(os.path.join(self.folder, "part-*.json"))):
            with open(name, encoding="utf-8") as f:
                part = json.load(f)
            rows.update((r["path"], r) for r in part["rows"])
            if part["versions"] not in versions:
                versions.append(part["versions"])
        return rows, versions

    def write(self, rows, versions):
        """One part: a file named after its paths, written whole or not at all."""
        digest = hashlib.sha1("\n".join(r["path"] for r in rows).encode()).hexdigest()[:16]
        self._write(os.path.join(self.folder, f"part-{digest}.json"), {"versions": versions, "rows": rows})

    @staticmethod
    def _write(path, obj):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj))  # the C encoder: json.dump streams through the Python one
        os.replace(tmp, path)

    def remove(self):
        for name in os.listdir(self.folder):
            os.remove(os.path.join(self.folder, name))
        os.rmdir(self.folder)


# ---------------------------------------------------------------- the table and its record

def check_out(out):
    """The output's format from its extension; refuses Parquet without pyarrow."""
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".parquet", ".csv"):
        raise PredictError(f"{out}: the output must end in .parquet or .csv")
    if ext == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise PredictError("writing .parquet needs pyarrow (pip install -r requirements-scale.txt); "
                               "or write a .csv") from None
    return ext[1:]


def write_output(rows, out, labels, record):
    """The table at `out` (.parquet with the record in its schema metadata, or .csv with
    OUT.json beside it), each written under a temporary name, then renamed."""
    cols = columns(labels)
    tmp = out + ".tmp"
    if check_out(out) == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {str: pa.string(), float: pa.float64(), bool: pa.bool_()}
        schema = pa.schema([(name, types[t]) for name, t in cols])
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table.replace_schema_metadata({RECORD_KEY: json.dumps(record)}), tmp)
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([name for name, _ in cols])
            writer.writerows([("" if r[name] is None else r[name]) for name, _ in cols] for r in rows)
        Parts._write(out + ".json", record)
    os.replace(tmp, out)


def read_output(out):
    """(rows as dicts, record) of a table written by this module, Parquet or CSV."""
    if check_out(out) == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        return table.to_pylist(), json.loads(table.schema.metadata[RECORD_KEY.encode()])
    with open(out + ".json", encoding="utf-8") as f:
        record = json.load(f)
    with open(out, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        labels = [c[2:] for c in reader.fieldnames if c.startswith("p_")]
        types = dict(columns(labels))
        parse = {str: str, float: float, bool: lambda s: s == "True"}
        rows = [{k: (parse[types[k]](v) if v != "" else None) for k, v in r.items()} for r in reader]
    return rows, record


def bundle_record(spec, folder, meta):
    """What identifies the bundle: its name, spec, model sha256 and, from the Hub, the commit."""
    revision = None if os.path.isdir(spec) else os.path.basename(os.path.normpath(folder))
    return {"name": meta.name, "spec": spec, "model_sha256": meta.model.sha256, "revision": revision}


def worker_spec(spec, record):
    """The bundle as the workers load it: the folder's absolute path, or repo@commit."""
    if record["revision"] is None:
        return os.path.abspath(spec)
    return f"{spec.partition('@')[0]}@{record['revision']}"


# ---------------------------------------------------------------- on Dask workers

_LOADED = {}  # (spec, tta) -> Classifier, once per worker process
_LOCK = threading.Lock()


def worker_classifier(spec, tta, sha256):
    """The worker process's Classifier for a bundle, loaded on its first chunk only."""
    with _LOCK:
        if (spec, tta) not in _LOADED:
            from lungclf.bundle import load
            from lungclf.inference import Classifier

            clf = Classifier(load(spec), tta)
            if clf.bundle.meta.model.sha256 != sha256:
                raise PredictError(f"{spec}: this worker's model.keras is not the one the run started "
                                   f"with (sha256 {clf.bundle.meta.model.sha256[:12]}..., not {sha256[:12]}...)")
            _LOADED[spec, tta] = clf
            _LOADED["versions"] = software_versions()
        return _LOADED[spec, tta]


def classify_chunk(paths, spec, tta, sha256, heatmaps=None, root=None, batch_size=32):
    """A Dask task: the rows of a chunk of paths, with the worker's versions and process id."""
    clf = worker_classifier(spec, tta, sha256)
    rows = list(classify(clf, paths, heatmaps, root, batch_size))
    return {"rows": rows, "versions": _LOADED["versions"], "process": f"{platform.node()}:{os.getpid()}",
            "loads": sum(1 for k in _LOADED if k != "versions")}


# ---------------------------------------------------------------- the run

def chunks_of(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_local(clf, todo, parts, chunk, heatmaps, root, batch_size, threads, bar):
    """Classify `todo` in this process, writing a part every `chunk` rows (and the rows
    already made when interrupted)."""
    versions, rows = software_versions(), []
    try:
        for row in classify(clf, todo, heatmaps, root, batch_size, threads):
            rows.append(row)
            bar.update(1)
            if len(rows) == chunk:
                parts.write(rows, versions)
                rows = []
    finally:
        if rows:
            parts.write(rows, versions)


def run_dask(client, todo, parts, chunk, spec, tta, sha256, heatmaps, root, batch_size, bar):
    """Classify `todo` on the cluster's workers, a task per chunk; parts written here as
    tasks finish. Returns {worker process: how many times it loaded the bundle}."""
    from dask.distributed import as_completed

    futures = [client.submit(classify_chunk, c, spec, tta, sha256, heatmaps, root, batch_size, pure=False)
               for c in chunks_of(todo, chunk)]
    loads = {}
    for future in as_completed(futures):
        result = future.result()
        parts.write(result["rows"], result["versions"])
        loads[result["process"]] = result["loads"]
        bar.update(len(result["rows"]))
    return loads


@contextlib.contextmanager
def dask_client(workers=None, scheduler=None):
    """A dask.distributed Client: of a running cluster, or of a local one of `workers`
    processes (closed on leaving)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise PredictError("--workers and --scheduler need Dask (pip install -r requirements-scale.txt)") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise PredictError(f"cannot reach the Dask scheduler at {scheduler} ({e})") from None
        with client:
            yield client
        return
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        # A worker holding TensorFlow takes more than the nanny's 4 s to stop, and the nanny
        # then ends it with a warning that alarms and means nothing here.
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        cluster.close()


def predict(spec, source, out, chunk=256, batch_size=32, threads=None, heatmaps=None, tta=False,
            workers=None, scheduler=None, progress=True, classifier=None):
    """Classify every image of `source` with the bundle `spec` into the table `out`,
    resuming from OUT.parts (see the module's docstring). `classifier`: a
    lungclf.inference.Classifier of that bundle already loaded in this process, used instead
    of loading it again. Returns a summary: images, done before this run, classified now,
    errors, flagged as wrong input, seconds, and (on Dask) how many times each worker
    process loaded the bundle."""
    from tqdm import tqdm

    from lungclf.bundle import resolve, verify

    check_out(out)
    paths = find_images(source)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    heatmaps = os.path.abspath(heatmaps) if heatmaps else None
    folder = resolve(spec)
    meta, classes = verify(folder, spec)
    bundle = bundle_record(spec, folder, meta)
    parts = Parts(out)
    parts.start({"model_sha256": meta.model.sha256, "tta": tta, "heatmaps": heatmaps})
    done, _ = parts.done()
    todo = [p for p in paths if p not in done]
    if classifier is not None and (classifier.bundle.meta.model.sha256 != meta.model.sha256
                                   or classifier.views != (meta.tta.views if tta else ["identity"])):
        raise PredictError(f"the classifier given is not the bundle {spec} with tta={tta}")
    local = todo and not (workers or scheduler)
    if local:
        from lungclf.bundle import load
        from lungclf.inference import Classifier

        # loaded before the clock starts: the figures are the run's speed, not TensorFlow's start
        clf = classifier or Classifier(load(folder), tta)
    start, loads = time.time(), None
    with tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", file=sys.stderr,
              disable=not progress, desc="classifying") as bar:
        if local:
            run_local(clf, todo, parts, chunk, heatmaps, root, batch_size, threads, bar)
        elif todo:
            with dask_client(workers, scheduler) as client:
                loads = run_dask(client, todo, parts, chunk, worker_spec(spec, bundle), tta, meta.model.sha256,
                                 heatmaps, root, batch_size, bar)
    seconds = time.time() - start
    done, versions = parts.done()
    rows = [done[p] for p in paths]
    summary = {"images": len(rows), "done_before": len(paths) - len(todo), "classified": len(todo),
               "errors": sum(r["error"] is not None for r in rows),
               "wrong_input": sum(bool(r["wrong_input"]) for r in rows), "seconds": round(seconds, 1)}
    record = {"bundle": bundle, "input": os.path.abspath(source), "options": {"tta": tta, "heatmaps": heatmaps},
              "versions": versions[0] if len(versions) == 1 else versions,
              "engine": engine(workers, scheduler, loads),
              "summary": summary, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_output(rows, out, classes.labels, record)
    parts.remove()
    return {**summary, "loads": loads}


def engine(workers, scheduler, loads):
    """Where this run's answers were computed, for the record."""
    if not (workers or scheduler):
        return {"name": "one process", "cores": cores()}
    from importlib.metadata import version

    return {"name": "dask.distributed", "version": version("distributed"), "workers": workers,
            "scheduler": scheduler, "processes": loads}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lungclf.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder or Hub repo id[@revision]")
    p.add_argument("source", help="folder (searched recursively), text file of paths, or one image")
    p.add_argument("--out", required=True, help="the table: .parquet or .csv")
    p.add_argument("--heatmaps", metavar="DIR", help="write each image's heatmap picture (PNG) under DIR")
    p.add_argument("--tta", action="store_true", help="test-time augmentation, as the app's TTA=1")
    p.add_argument("--chunk", type=int, default=256, help="images per part file and per Dask task (256)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (32)")
    p.add_argument("--threads", type=int, help="decoding threads (default: one per two cores)")
    engines = p.add_mutually_exclusive_group()
    engines.add_argument("--workers", type=int, metavar="N", help="a local Dask cluster of N worker processes")
    engines.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask cluster, e.g. tcp://HOST:8786")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if min(args.chunk, args.batch_size, args.threads or 1, args.workers or 1) < 1:
        p.error("--chunk, --batch-size, --threads and --workers must be at least 1")

    from lungclf.bundle import BundleError

    try:
        s = predict(args.bundle, args.source, args.out, args.chunk, args.batch_size, args.threads,
                    args.heatmaps, args.tta, args.workers, args.scheduler, progress=not args.quiet)
    except (PredictError, BundleError) as e:
        raise SystemExit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"interrupted: the rows made so far are in {args.out}.parts; run the same command "
              "again to classify the rest", file=sys.stderr)
        raise SystemExit(130) from None
    rate = s["classified"] / s["seconds"] if s["seconds"] else 0
    print(f"{args.out}: {s['images']:,} images ({s['done_before']:,} done before, {s['classified']:,} now "
          f"in {s['seconds']:.0f} s, {rate:.1f} images/s); {s['errors']:,} could not be read, "
          f"{s['wrong_input']:,} flagged as wrong input", file=sys.stderr)


if __name__ == "__main__":
    # Run as the module lungclf.predict, not as __main__: Dask then sends its tasks to the workers
    # by name (they import this module and keep one loaded bundle), not as copies of __main__.
    from lungclf.predict import main as module_main

    module_main()
