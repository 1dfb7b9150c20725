"""Shared test helpers: images the tests make, a tiny trained bundle, a running app server.

Nothing here imitates the product: `app_server` runs `python app.py` as a user would, on
127.0.0.1, and tests talk to it with real clients.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
COMMITTED_MODEL = os.path.join(ROOT, "models", "lc25000")
COLOURS = {"red": (200, 60, 60), "green": (60, 180, 80), "blue": (60, 80, 200)}

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def blob_image(colour, seed, size=48):
    """A learnable test image: noisy texture around a class colour."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], np.float32)
    a = base + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def he_tile(seed, size=256):
    """A histology-like test image drawn from scratch (pink stroma, purple nuclei): what the
    browser test drops on the page and the README screenshot shows. No real slide in it."""
    rng = np.random.default_rng(seed)
    a = np.empty((size, size, 3), np.float32)
    a[:] = (232, 170, 200)
    a += rng.normal(0, 12, a.shape)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(size // 4):
        (cy, cx), r = rng.uniform(0, size, 2), rng.uniform(3, 9)
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        a[nucleus] = np.array((95, 55, 140)) + rng.normal(0, 10, (nucleus.sum(), 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_dataset(root, per_class=16, layout="folders", duplicates=0):
    """Write a small data set: class folders, or train/valid/test/<class> when layout="split".
    `duplicates` byte-identical copies are added to each class."""
    for ci, colour in enumerate(COLOURS):
        for i in range(per_class):
            split = ("train", "valid", "test")[i % 3] if layout == "split" else ""
            folder = os.path.join(root, split, colour)
            os.makedirs(folder, exist_ok=True)
            blob_image(colour, seed=ci * 1000 + i).save(os.path.join(folder, f"{colour}_{i}.png"))
        sub = "train" if layout == "split" else ""  # image 0 of each class is in train
        for d in range(duplicates):
            shutil.copy(os.path.join(root, sub, colour, f"{colour}_0.png"),
                        os.path.join(root, sub, colour, f"{colour}_copy{d}.png"))
    return root


def temperature_scaled(probs, temperature):
    """Softmax outputs rescaled by a temperature, worked out independently of lungclf:
    softmax(z / T) is proportional to softmax(z) ** (1 / T)."""
    p = np.asarray(probs, np.float64) ** (1.0 / temperature)
    return p / p.sum(axis=-1, keepdims=True)


def label_id(text):
    """The class id in a label text like "Adenocarcinoma (lung) (lung_aca)"."""
    return text.rsplit("(", 1)[1].rstrip(")") if text.endswith(")") else text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`python app.py` in a subprocess on 127.0.0.1 with the given environment."""

    def __init__(self, env=None, timeout=120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full_env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1",
                    "GRADIO_SERVER_PORT": str(self.port), "GRADIO_ANALYTICS_ENABLED": "False",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = os.path.join(ROOT, ".pytest_cache", f"app-{self.port}.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full_env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(self.url + "gradio_api/info", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app did not start in {timeout}s:\n{self.output()}")

    def output(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def run_app_until_exit(env, timeout=120):
    """Start app.py expecting it to refuse to start; returns (exit code, output)."""
    full_env = {**os.environ, "GRADIO_SERVER_PORT": str(free_port()), "PYTHONUNBUFFERED": "1", **env}
    p = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=full_env, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A small bundle trained by the real training command on images the test made."""
    from training.train import main

    data = make_dataset(str(tmp_path_factory.mktemp("data")), per_class=20, duplicates=2)
    out = str(tmp_path_factory.mktemp("bundle") / "tiny")
    meta = main(["--data", data, "--out", out, "--image-size", "32", "--width", "8",
                 "--epochs", "20", "--patience", "20", "--lr", "0.01", "--batch-size", "8", "--verbose", "0"])
    return {"data": data, "out": out, "meta": meta}


@pytest.fixture(scope="session")
def tiny_server(tiny_bundle):
    server = AppServer({"MODEL_REPO": tiny_bundle["out"]})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_server():
    """The app as a newcomer starts it: no MODEL_REPO, the committed model."""
    server = AppServer({"MODEL_REPO": ""})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def committed_model_predict():
    """The committed model called directly, as the app should: image path -> {label id:
    calibrated probability}. Clients of the running app must give the same answer."""
    from lungclf.bundle import load
    from lungclf.preprocess import load_image

    bundle = load(COMMITTED_MODEL)

    def predict(path):
        x = load_image(path, bundle.input_size)[None]
        probs = temperature_scaled(bundle.model(x, training=False), bundle.temperature)[0]
        return dict(zip(bundle.labels, probs.tolist()))

    predict.bundle = bundle
    return predict
