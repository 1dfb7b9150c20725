"""Plain helpers the test modules share (fixtures live in tests/conftest.py).

Reference answers worked out here never call the code under test: `temperature_scaled`
rescales softmax outputs by hand, `label_id` reads a label text. The server launcher is
scripts/app_server.py and the synthetic images are scripts/synthetic.py, shared with the
benchmark scripts; they are re-exported here so a test imports from one place:

    from tests.helpers import AppServer, blob_image, label_id
"""

import base64
import os
import re

import numpy as np

from scripts.app_server import ROOT, AppServer, free_port, run_app_until_exit
from scripts.synthetic import (COLOURS, PALETTE, blob_image, grey_picture, halves, he_tile, make_dataset,
                               make_preset_dataset, picture, preset_image, tissue, write_bundle)

__all__ = ["ROOT", "AppServer", "free_port", "run_app_until_exit",  # scripts/app_server.py
           "COLOURS", "PALETTE", "blob_image", "grey_picture", "halves", "he_tile", "make_dataset",
           "make_preset_dataset", "picture", "preset_image", "tissue", "write_bundle",  # scripts/synthetic.py
           "SHARED_DATA", "COMMITTED_MODEL", "temperature_scaled", "label_id", "confidences", "predict",
           "ct_examples", "readme_block", "open_app", "drop_file", "shown_label", "toast"]

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
COMMITTED_MODEL = os.path.join(ROOT, "models", "lc25000")

# Headless Chromium: Debian's package, driven by Playwright (scripts/install_dev.sh installs it).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DROP_ZONE = "Drop an image file here to upload"  # the aria-label of gr.Image's upload area

# What a browser does when a file is dragged from the desktop and let go over an element.
DROP = """([target, name, mime, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type: mime}));
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
  }
}"""


def temperature_scaled(probs, temperature):
    """Softmax outputs rescaled by a temperature, worked out independently of lungclf:
    softmax(z / T) is proportional to softmax(z) ** (1 / T)."""
    p = np.asarray(probs, np.float64) ** (1.0 / temperature)
    return p / p.sum(axis=-1, keepdims=True)


def label_id(text):
    """The class id of a label text (a class's readable name, as the app shows it): from
    training's names ("Adenocarcinoma (lung)" -> "lung_aca"), else the name made back into
    a folder name ("Blue" -> "blue")."""
    from training.presets import CLASS_NAMES

    ids = {name: label for label, name in CLASS_NAMES.items()}
    return ids.get(text, text.lower().replace(" ", "_"))


def confidences(result):
    """{class id: confidence} of a gr.Label value as a client receives it."""
    return {label_id(c["label"]): c["confidence"] for c in result["confidences"]}


def predict(url, path, *args):
    """One /predict call through gradio_client: the image at `path`, then any other inputs;
    returns output 0, the gr.Label value (docs/api.md lists the others)."""
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(path), *args, api_name="/predict")[0]


def ct_examples(n):
    """Grey arrays of the committed chest CT bundle's first n held-out examples: as DICOM with
    window center 128 and width 256, HU 0..255 map onto grey 0..255 one to one, so the model
    sees the example itself."""
    from PIL import Image

    folder = os.path.join(ROOT, "models", "chest_ct", "examples")
    names = sorted(os.listdir(folder))[:n]
    return [np.asarray(Image.open(os.path.join(folder, f)).convert("L"), np.float64) for f in names]


def readme_block(lang, containing):
    """The one ```lang fenced block of README.md that contains `containing`."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.M | re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"README.md should have one ```{lang} block with {containing!r}"
    return found[0]


# --- the page in Chromium (the `page` fixture is in conftest.py) ---------------------------

def open_app(page, url):
    """Load the app's page; returns the image input's drop zone once it is there."""
    page.goto(url)
    zone = page.get_by_label(DROP_ZONE)
    zone.wait_for()
    return zone


def drop_file(page, zone, path, mime):
    """Drag the file at `path` onto `zone` and let it go, as a person does."""
    data = base64.b64encode(open(path, "rb").read()).decode()
    page.evaluate(DROP, [zone.element_handle(), os.path.basename(path), mime, data])


def shown_label(page):
    """The top class the page shows, once it shows one."""
    top = page.get_by_test_id("label-output-value")
    top.wait_for()
    return top.inner_text()


def toast(page, text):
    """The error toast that contains `text` (Gradio shows errors as toasts)."""
    message = page.locator(".toast-body").filter(has_text=text)
    message.wait_for()
    return message.inner_text()
