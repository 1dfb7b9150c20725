"""Fixtures the test modules share, and the markers that say what a test needs.

Fixtures: a tiny bundle trained by the real training command (`tiny_bundle`), `python
app.py` running on 127.0.0.1 with it (`tiny_server`) or with the committed models
(`default_server`), the committed model called directly (`committed_model_predict`), and
headless Chromium (`browser`, `page`). Plain helpers are in tests/helpers.py.

Markers: `slow` (pytest.ini; deselected by default, `-m "slow or not slow"` runs
everything), and one per prerequisite (PREREQUISITES below; `pytest --markers` lists
them), which skips the test with the reason when that prerequisite is missing:

    browser   /usr/bin/chromium and Playwright     (any test using the `page` fixture)
    node      node and node_modules/@gradio/client
    hub       huggingface_hub and PyYAML (the local Hub server)
    train     the training extras (matplotlib, scikit-learn, scipy)   (any test using `tiny_bundle`)
    mlflow    mlflow (training --mlflow)

pytest's header says which are missing. Choose with -m, e.g. `-m "slow and not browser"`.
With CI set (as .ci/run sets it), a skipped test FAILS: CI must run everything.
"""

import functools
import importlib.util
import os
import shutil

import pytest

from tests.helpers import CHROMIUM, CHROMIUM_FLAGS, COMMITTED_MODEL, ROOT, AppServer, make_dataset, temperature_scaled

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _modules(*names):
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    return f"Python package(s) {', '.join(missing)} not installed (pip install -r requirements-dev.txt)" \
        if missing else None


# marker -> (what it needs, why that is missing here or None). Registered as markers below.
PREREQUISITES = {
    "browser": ("headless Chromium (/usr/bin/chromium) and Playwright", lambda: (
        f"{CHROMIUM} is missing (scripts/install_dev.sh installs Debian's chromium)"
        if not os.path.exists(CHROMIUM) else _modules("playwright"))),
    "node": ("node and node_modules/@gradio/client", lambda: (
        "node is not on PATH (install Node.js 18 or later)" if not shutil.which("node") else
        "node_modules/@gradio/client is missing (run `npm ci`; scripts/install_dev.sh does)"
        if not os.path.isdir(os.path.join(ROOT, "node_modules", "@gradio", "client")) else None)),
    "hub": ("huggingface_hub and PyYAML (the local Hub server)", lambda: _modules("huggingface_hub", "yaml")),
    "train": ("the training extras (matplotlib, scikit-learn, scipy)",
              lambda: _modules("matplotlib", "sklearn", "scipy")),
    "mlflow": ("mlflow (training --mlflow)", lambda: _modules("mlflow")),
}
# Fixtures that bring a prerequisite with them: a test using one gets its marker.
FIXTURE_MARKERS = {"page": "browser", "browser": "browser", "tiny_bundle": "train"}


@functools.cache
def missing(prerequisite):
    """Why `prerequisite` cannot be met on this machine, or None when it can."""
    return PREREQUISITES[prerequisite][1]()


def pytest_configure(config):
    for name, (needs, _) in PREREQUISITES.items():
        config.addinivalue_line("markers", f"{name}: needs {needs}; skips, saying why, without it")


def pytest_report_header(config):
    states = [f"{name} ({missing(name)})" for name in PREREQUISITES if missing(name)]
    return ["prerequisites missing, their tests skip: " + "; ".join(states) if states
            else "prerequisites: all present (" + ", ".join(PREREQUISITES) + ")"]


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so that the markers added here count
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
        for name in PREREQUISITES:
            if item.get_closest_marker(name) and missing(name):
                item.add_marker(pytest.mark.skip(reason=f"needs {name}: {missing(name)}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every selected test must run: a skip is reported as a failure, with its reason."""
    report = (yield).get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and CI (CI={os.environ['CI']}) runs every test: {reason}"


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
    """`python app.py` serving the tiny bundle (MODEL_REPO=its folder)."""
    with AppServer({"MODEL_REPO": tiny_bundle["out"]}) as server:
        yield server


@pytest.fixture(scope="session")
def default_server():
    """The app as a newcomer starts it: no MODEL_REPO, the committed models."""
    with AppServer({"MODEL_REPO": ""}) as server:
        yield server


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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright; no browser download."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh laptop-sized page (1280 x 800) in its own browser context."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
