"""Training with `--processes 2` (training/distributed.py): two JAX worker processes on this
machine's CPU, coordinated by Keras 3's distribution API, each streaming its own share of the
files; the bundle they make is served by the app's own loading path on TensorFlow."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, blob_image, label_id, make_dataset
from training.distributed import check_options, weights_sha256
from training.errors import TrainingError

pytest.importorskip("jax", reason="training at scale needs requirements-scale.txt (scripts/install_dev.sh)")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    data = make_dataset(str(tmp / "data"), per_class=16)
    out = str(tmp / "bundle")
    cmd = [sys.executable, "-m", "training.train", "--data", data, "--out", out, "--processes", "2",
           "--epochs", "1", "--image-size", "32", "--width", "8", "--batch-size", "8", "--verbose", "2"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=560,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    return {"data": data, "out": out, "meta": meta, "stdout": p.stdout}


@pytest.mark.slow
def test_each_process_reads_its_own_share_of_the_training_images(two_process_run):
    job = two_process_run["meta"]["training"]["distributed"]
    assert job["processes"] == 2 and job["backend"] == "jax"
    w0, w1 = sorted(job["workers"], key=lambda w: w["process_id"])
    train_images = two_process_run["meta"]["split"]["counts"]["train"]["images"]
    for w in (w0, w1):
        assert w["distinct_images"] == w["share"] > 0  # its whole share, and nothing else
        assert w["outside_share"] == 0
    assert w0["share"] + w1["share"] == train_images
    assert abs(w0["share"] - w1["share"]) <= 1
    assert w0["paths_sha256"] != w1["paths_sha256"]


@pytest.mark.slow
def test_both_processes_end_with_the_same_weights_and_the_bundle_has_them(two_process_run):
    from lungclf.bundle import load

    w0, w1 = two_process_run["meta"]["training"]["distributed"]["workers"]
    assert w0["weights_sha256"] == w1["weights_sha256"]
    bundle = load(two_process_run["out"])  # TensorFlow backend, safe mode, sha256 checked
    assert weights_sha256(bundle.model.get_weights()) == w0["weights_sha256"]


@pytest.mark.slow
def test_the_app_serves_the_bundle_trained_on_two_processes(two_process_run, tmp_path):
    from lungclf.bundle import load
    from lungclf.inference import Classifier

    path = str(tmp_path / "red.png")
    blob_image("red", seed=99).save(path)
    answer = Classifier(load(two_process_run["out"])).classify(path)
    assert len(answer) == 3 and {label_id(k) for k in answer} == {"red", "green", "blue"}
    assert np.isclose(sum(answer.values()), 1.0)


@pytest.mark.parametrize("options, message", [
    ((2, "10.0.0.1", 0, 8), "expected HOST:PORT"),
    ((2, "10.0.0.1:29500", None, 8), "needs --process-id between 0 and 1"),
    ((2, "10.0.0.1:29500", 2, 8), "needs --process-id between 0 and 1"),
    ((2, None, 1, 8), "--process-id needs --coordinator"),
    ((3, None, None, 8), "must be a multiple of --processes 3"),
    ((0, None, None, 8), "at least 1"),
])
def test_options_that_cannot_make_a_job_are_refused_in_one_line(options, message):
    with pytest.raises(TrainingError, match=message):
        check_options(*options)


@pytest.mark.slow
def test_a_worker_that_stops_answering_is_named_and_the_job_ends(tmp_path):
    import signal
    import time

    data = make_dataset(str(tmp_path / "data"), per_class=16)
    cmd = [sys.executable, "-m", "training.train", "--data", data, "--out", str(tmp_path / "bundle"),
           "--processes", "2", "--epochs", "500", "--patience", "500", "--image-size", "32", "--width", "8",
           "--batch-size", "8", "--verbose", "0", "--worker-timeout", "600"]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in run.stdout:
        lines.append(line)
        if "job folder " in line:
            break
    job = lines[-1].rsplit("job folder ", 1)[1].strip()
    steps = os.path.join(job, "step-1")
    deadline = time.time() + 300
    while not (os.path.exists(steps) and os.path.getmtime(steps) > os.path.getctime(os.path.join(job, "job.json")) + 1):
        if run.poll() is not None or time.time() > deadline:
            run.kill()
            pytest.fail("".join(lines) + run.communicate()[0])
        time.sleep(0.5)  # worker 1 has finished training steps
    pid = int(subprocess.run(["pgrep", "-f", "--", f"--job {job} --process-id 1"], capture_output=True,
                             text=True).stdout.split()[0])
    os.kill(pid, signal.SIGSTOP)  # it stops answering, as a hung or swapped-out machine does
    out = "".join(lines) + run.communicate(timeout=300)[0]
    assert run.returncode != 0
    assert ("worker 1 stopped answering (no sign of life for 60 s, or for 10 s while another worker failed), "
            "so every worker was ended") in out
    assert subprocess.run(["pgrep", "-f", "--", f"--job {job}"], capture_output=True).returncode == 1  # none left
    assert not os.path.exists(tmp_path / "bundle")


def test_a_worker_that_failed_while_a_peer_went_quiet_names_the_quiet_one(tmp_path):
    import time

    from training.distributed import PEER_QUIET, _wait, beat

    crashed = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"])  # as JAX ends a stopped worker's peer
    quiet = subprocess.Popen(["sleep", "60"])
    beats = [(str(tmp_path / f"step-{i}"), str(tmp_path / f"alive-{i}")) for i in range(2)]
    beat(beats[0][1])
    beat(beats[1][1])
    past = time.time() - PEER_QUIET - 5
    os.utime(beats[1][1], (past, past))  # worker 1's last sign of life, PEER_QUIET + 5 s ago
    assert _wait([crashed, quiet], beats=beats) == (1, "silent")
    assert quiet.poll() is not None  # ended


def test_a_worker_that_failed_while_its_peers_answer_is_named_with_its_exit_code(tmp_path):
    from training.distributed import _wait, beat

    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    alive = subprocess.Popen(["sleep", "60"])
    beats = [(str(tmp_path / f"step-{i}"), str(tmp_path / f"alive-{i}")) for i in range(2)]
    for _, path in beats:
        beat(path)
    assert _wait([crashed, alive], beats=beats) == (0, 3)


def test_workers_alive_but_finishing_no_step_are_ended_after_the_bound(tmp_path):
    import time

    from training.distributed import _wait, beat

    workers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]  # running, never stepping
    beats = [(str(tmp_path / f"step-{i}"), str(tmp_path / f"alive-{i}")) for i in range(2)]
    for _, alive in beats:
        beat(alive)
    t0 = time.time()
    assert _wait(workers, beats=beats, silence=1.0) == (0, "stuck")
    assert time.time() - t0 < 20 and all(w.poll() is not None for w in workers)  # both ended
