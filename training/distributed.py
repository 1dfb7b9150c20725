"""Training on many processes or machines with Keras 3's distribution API on JAX.

    python -m training.train --data DIR --out OUT --processes 2            # 2 workers here
    python -m training.train --data DIR --out OUT --processes 2 \\
        --coordinator 10.0.0.1:29500 --process-id 0                          # on machine A
    python -m training.train --data DIR --out OUT --processes 2 \\
        --coordinator 10.0.0.1:29500 --process-id 1                          # on machine B

The engine is not home-made: each worker is a JAX process (KERAS_BACKEND=jax) that joins
the job with `keras.distribution.initialize(coordinator, processes, process_id)` (JAX's
distributed runtime; gloo collectives on CPU) and trains under
`keras.distribution.DataParallel` over every device of every process: one model replica
per device, gradients averaged by the runtime at each step, so all replicas keep the same
weights. (`tf.distribute.MultiWorkerMirroredStrategy` fails with Keras 3, keras-team/keras
issue 20585; TensorFlow's MirroredStrategy covers the devices of one process only.)

Each worker streams only its own share of the files (training/stream.py, `shard`), decoded
before any other process sees them, in batches of batch_size / processes; every worker takes
the same number of steps per epoch (its share repeated as needed), since a step is a
collective. The parent process (TensorFlow backend, as the app) does everything else:
audit and split before, then loads the weights that worker 0 saved, calibrates, evaluates
and writes the bundle, so the bundle is the same Keras 3 file the app serves.

A worker that stops answering cannot hang the job. Each worker touches alive-<i> in the job
folder every 2 s from a thread of its own, and step-<i> when it starts and after every
training step. The parent ends every worker, naming the one at fault, when a worker shows
no sign of life for 60 s (stopped, swapped out, or stuck holding Python's lock; or for 10 s
when another worker has failed meanwhile, as JAX's coordinator or a collective ends the
peers of a stopped worker), or when a
worker has finished no step for --worker-timeout seconds (default 600: a first step's
compilation on a slow CPU fits well within it) although all are alive (waiting on each
other). Across machines the parent sees only its own worker; another machine's hang shows
as its worker finishing no step, since a step is a collective.

Each worker writes worker-<i>.json into the job folder: the images it decoded (how many,
how many distinct, a hash of their paths), and a sha256 of its final weights, which must
be the same for every worker.

    python -m training.distributed --job JOB_DIR --process-id I   # one worker (started for you)
"""

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from types import SimpleNamespace

import numpy as np

from training.errors import TrainingError, WorkerError

WEIGHTS = "final_weights.npz"  # model.get_weights() in order, written by worker 0
HISTORY = "history.json"
WORKER_TIMEOUT = 600  # seconds without a finished step before the job is ended
ALIVE_EVERY, ALIVE_STALE = 2, 60  # a worker's thread beats this often; silent this long, it is not answering
PEER_QUIET = 5 * ALIVE_EVERY  # silent this long while another worker failed: it is the cause


def step_file(job, process_id):
    return os.path.join(job, f"step-{process_id}")


def alive_file(job, process_id):
    return os.path.join(job, f"alive-{process_id}")


def beat(path):
    """Mark a sign of life: the file's modification time is now."""
    with open(path, "a"):
        os.utime(path)


def keep_beating(path):
    """A daemon thread that beats `path` every ALIVE_EVERY seconds while the process runs."""
    def loop():
        while True:
            beat(path)
            time.sleep(ALIVE_EVERY)

    threading.Thread(target=loop, daemon=True, name="alive").start()


def heartbeat_callback(path):
    """A Keras callback that beats after every training step."""
    import keras

    class Heartbeat(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            beat(path)

    return Heartbeat()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_options(processes, coordinator, process_id, batch_size):
    """A one-line TrainingError for options that cannot make a job."""
    if processes < 1:
        raise TrainingError("--processes must be at least 1")
    if coordinator is None and process_id is not None:
        raise TrainingError("--process-id needs --coordinator HOST:PORT (the address of process 0)")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise TrainingError(f"--coordinator {coordinator}: expected HOST:PORT, e.g. 10.0.0.1:29500")
        if process_id is None or not 0 <= process_id < processes:
            raise TrainingError(f"--coordinator needs --process-id between 0 and {processes - 1}")
    if batch_size % processes:
        raise TrainingError(f"--batch-size {batch_size} must be a multiple of --processes {processes} "
                            "(each process takes an equal share of a batch)")


def weights_sha256(weights):
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()


def fit(prepared, config, processes, coordinator=None, process_id=None, cache=None, timeout=None,
        callbacks_wanted=False, worker_timeout=WORKER_TIMEOUT):
    """Train with `processes` JAX workers -> (model on this process's backend with the trained
    weights, history) on process 0; (None, None) on the other processes of a multi-machine job.

    Without `coordinator` all workers run here and talk over 127.0.0.1; with it, this
    machine runs worker `process_id` of a job whose process 0 listens at `coordinator`."""
    check_options(processes, coordinator, process_id, config.batch_size)
    if callbacks_wanted:
        print("note: per-epoch MLflow logging is not done with --processes; the bundle is still logged")
    job = tempfile.mkdtemp(prefix="lung-job-")
    local = coordinator is None
    coordinator = coordinator or f"127.0.0.1:{free_port()}"
    ids = range(processes) if local else [process_id]
    spec = {"data_dir": prepared.data_dir, "labels": prepared.labels, "paths": prepared.paths,
            "groups": prepared.groups, "split": prepared.split.tolist(), "y": prepared.y.tolist(),
            "config": dataclasses.asdict(config), "processes": processes, "coordinator": coordinator,
            "cache": cache}
    with open(os.path.join(job, "job.json"), "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    print(f"starting {len(ids)} of {processes} JAX worker processes (coordinator {coordinator}); job folder {job}")
    workers = [subprocess.Popen([sys.executable, "-m", "training.distributed", "--job", job,
                                 "--process-id", str(i)], env=env) for i in ids]
    failed = _wait(workers, timeout, [(step_file(job, i), alive_file(job, i)) for i in ids], worker_timeout)
    if failed and failed[1] == "silent":
        raise WorkerError(f"distributed training stopped: worker {ids[failed[0]]} stopped answering (no sign "
                          f"of life for {ALIVE_STALE} s, or for {PEER_QUIET} s while another worker failed), so "
                          f"every worker was ended (job folder {job})")
    if failed and failed[1] == "stuck":
        raise WorkerError(f"distributed training stopped: no training step finished for {worker_timeout:.0f} s "
                          f"(--worker-timeout) although every worker is running (waiting on each other, or on "
                          f"another machine's worker), so every worker was ended (job folder {job})")
    if failed:
        raise WorkerError(f"distributed training failed: worker {ids[failed[0]]} exited with code {failed[1]} "
                          f"(its log is above; job folder {job})")
    records = [json.load(open(os.path.join(job, f"worker-{i}.json"))) for i in ids]
    for r in records:
        print(f"worker {r['process_id']}: decoded {r['images_decoded']} images ({r['distinct_images']} distinct "
              f"of its share of {r['share']}), weights sha256 {r['weights_sha256'][:12]}")
    if local and len({r["weights_sha256"] for r in records}) != 1:
        raise WorkerError("distributed training failed: the workers ended with different weights")
    if 0 not in ids:
        return None, None
    from training.steps import build_model

    model = build_model(config, len(prepared.labels))
    with np.load(os.path.join(job, WEIGHTS)) as saved:
        model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
    with open(os.path.join(job, HISTORY)) as f:
        history = SimpleNamespace(history=json.load(f))
    model.job = {"processes": processes, "backend": "jax", "engine": "keras.distribution.DataParallel",
                 "coordinator": coordinator if not local else "127.0.0.1 (this machine)", "workers": records}
    shutil.rmtree(job, ignore_errors=True)
    return model, history


def _wait(workers, timeout=None, beats=None, silence=WORKER_TIMEOUT):
    """Wait for all; stop them all when one fails -> (its index, exit code), when one shows no
    sign of life for ALIVE_STALE seconds, or for PEER_QUIET while another has failed -> (its
    index, "silent"), or when one has finished no
    step for `silence` seconds -> (its index, "stuck"); `beats`: (step file, alive file) per worker."""
    t0 = time.time()

    def quiet(path):
        return time.time() - (os.path.getmtime(path) if os.path.exists(path) else t0)

    while True:
        codes = [w.poll() for w in workers]
        bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        running = [i for i, c in enumerate(codes) if c is None]
        if bad and beats:  # a worker that failed while a peer went quiet most likely died waiting on it
            bad = [(i, "silent") for i in running if quiet(beats[i][1]) > PEER_QUIET] or bad
        elif beats:
            bad = ([(i, "silent") for i in running if quiet(beats[i][1]) > ALIVE_STALE]
                   or [(i, "stuck") for i in running if quiet(beats[i][0]) > silence])
        late = timeout and time.time() - t0 > timeout
        if bad or late:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
            for w in workers:
                try:
                    w.wait(10)
                except subprocess.TimeoutExpired:
                    w.kill()
            return bad[0] if bad else (-1, "timeout")
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.2)


def worker(job, process_id):
    """One process of the job (KERAS_BACKEND=jax): join, train on its share, record."""
    with open(os.path.join(job, "job.json")) as f:
        spec = json.load(f)
    pulse = step_file(job, process_id)
    beat(pulse)
    keep_beating(alive_file(job, process_id))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    import keras

    if keras.backend.backend() != "jax":
        raise WorkerError("a distributed worker needs KERAS_BACKEND=jax")
    from training import stream
    from training.datatypes import FitConfig, Prepared
    from training.steps import fit

    n = spec["processes"]
    config = FitConfig(**spec["config"])
    keras.utils.set_random_seed(config.seed)  # the same initial weights in every process
    keras.distribution.initialize(spec["coordinator"], n, process_id)
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False))
    prepared = Prepared(data_dir=spec["data_dir"], labels=spec["labels"], paths=spec["paths"],
                        groups=spec["groups"], split=np.array(spec["split"]), x=None, y=np.array(spec["y"]),
                        report={}, split_info={}, images_found=len(spec["paths"]), unreadable=[], left_out={})
    if process_id:
        config = dataclasses.replace(config, verbose=0)  # one progress bar: process 0's
    seen = stream.Seen()
    data = stream.fit_datasets(prepared, config, shard=(n, process_id), cache=spec["cache"], seen=seen)
    model, history = fit(prepared, config, [heartbeat_callback(pulse)], data=data)
    share = stream.files(prepared, "train").shard(n, process_id).paths
    weights = [np.asarray(w) for w in model.get_weights()]
    record = {"process_id": process_id, "processes": n, "devices": [str(d) for d in jax.local_devices()],
              "share": len(share), "images_decoded": len(seen.paths), "distinct_images": len(set(seen.paths)),
              "outside_share": len(set(seen.paths) - set(share)),
              "paths_sha256": hashlib.sha256("\n".join(sorted(set(seen.paths))).encode()).hexdigest(),
              "epochs_run": len(history.history["loss"]), "weights_sha256": weights_sha256(weights)}
    if process_id == 0:  # plain arrays: Keras' own weight saving hangs in a multi-process JAX job here
        np.savez(os.path.join(job, WEIGHTS), **{f"w{i}": w for i, w in enumerate(weights)})
        with open(os.path.join(job, HISTORY), "w") as f:
            json.dump({k: [float(v) for v in vs] for k, vs in history.history.items()}, f)
    with open(os.path.join(job, f"worker-{process_id}.json"), "w") as f:
        json.dump(record, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, help="job folder written by training.train (job.json)")
    p.add_argument("--process-id", type=int, required=True, help="this worker's index, 0 .. processes-1")
    args = p.parse_args(argv)
    # Leave without Python's shutdown. At interpreter exit the garbage collector closes Keras'
    # iterator over the tf.data pipeline, and the destructor of its parallel map waits for
    # in-flight decodes (tf.numpy_function) that need the GIL it holds: a deadlock, seen once
    # in a full test run (bash .ci/run), after the worker had written its results. So: meet
    # the other workers in JAX's shutdown barrier, flush, and exit at once (with 1 after an
    # error, its traceback shown).
    code = 0
    try:
        worker(args.job, args.process_id)
        import jax

        jax.distributed.shutdown()
    except TrainingError as e:  # a message for the person who ran the job
        print(e, file=sys.stderr)
        code = 1
    except SystemExit as e:  # a message (str) or an exit status
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = 1 if isinstance(e.code, str) else (e.code or 0)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
