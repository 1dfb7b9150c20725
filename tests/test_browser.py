"""The page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Files reach the page the way a person's do: a drag-and-drop event sequence (dragenter,
dragover, drop) carrying a DataTransfer with the file, dispatched on the image input.
The README's screenshots are taken by tests/test_browser_explain.py (a real example, and
the warning on a wrong input).

No browser is downloaded: Playwright drives /usr/bin/chromium (scripts/install_dev.sh
installs it with apt).
"""

import functools
import http.server
import json
import os
import shutil
import threading

import pytest

from tests.helpers import (ROOT, AppServer, blob_image, drop_file, free_port, he_tile, label_id, open_app,
                           readme_block, shown_label, toast)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CDN_CLIENT = "https://cdn.jsdelivr.net/npm/@gradio/client@2.7.0/dist/index.min.js"


def test_dropped_image_gets_the_label_of_a_direct_model_call(default_server, committed_model_predict,
                                                             page, tmp_path):
    tile = tmp_path / "tile.jpeg"
    he_tile(3).save(tile, quality=90)
    drop_file(page, open_app(page, default_server.url), tile, "image/jpeg")
    probs = committed_model_predict(str(tile))
    assert label_id(shown_label(page)) == max(probs, key=probs.get)


def test_dropped_text_file_is_refused_with_a_message(default_server, page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    drop_file(page, open_app(page, default_server.url), notes, "text/plain")
    assert "Invalid file type: notes.txt" in toast(page, "notes.txt")
    assert page.get_by_test_id("label-output-value").count() == 0


def test_dropped_file_that_only_claims_to_be_an_image_gets_the_app_message(default_server, page, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_text("this is text, whatever the name says")
    drop_file(page, open_app(page, default_server.url), fake, "image/png")
    assert "This file is not an image we can read" in toast(page, "not an image")
    assert page.get_by_test_id("label-output-value").count() == 0


def test_layout_has_two_columns_on_a_laptop_and_stacks_on_a_phone(default_server, page):
    zone = open_app(page, default_server.url)
    prediction = page.get_by_test_id("label")
    image_box, label_box = zone.bounding_box(), prediction.bounding_box()
    assert label_box["x"] > image_box["x"] + image_box["width"] / 2  # side by side
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    image_box, label_box = zone.bounding_box(), prediction.bounding_box()
    assert label_box["y"] >= image_box["y"] + image_box["height"]  # stacked
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling


@pytest.fixture
def serve_folder(tmp_path):
    """`python -m http.server` for tmp_path on localhost, as the README says; yields its URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()),
        functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.mark.node  # the page loads the @gradio/client that npm installed
def test_readme_browser_snippet_classifies_a_picked_file(default_server, committed_model_predict,
                                                         page, tmp_path, serve_folder):
    html = readme_block("html", "@gradio/client")
    assert CDN_CLIENT in html and 'const APP = "http://127.0.0.1:7860/";' in html
    (tmp_path / "predict.html").write_text(html.replace("http://127.0.0.1:7860/", default_server.url))
    # No internet here: the CDN's file is answered with the same file that npm installed.
    client_js = os.path.join(ROOT, "node_modules", "@gradio", "client", "dist", "index.min.js")
    page.route(CDN_CLIENT, lambda route: route.fulfill(path=client_js, content_type="text/javascript"))
    page.goto(serve_folder + "predict.html")
    result = page.locator("#result")
    result.filter(has_text="connected").wait_for()
    tile = tmp_path / "tile.jpeg"
    he_tile(4).save(tile, quality=90)
    page.set_input_files("#image", str(tile))
    result.filter(has_text="confidences").wait_for()
    probs = committed_model_predict(str(tile))
    assert label_id(json.loads(result.inner_text())["label"]) == max(probs, key=probs.get)


def test_examples_from_the_bundle_are_shown_and_classified_on_click(tiny_bundle, page, tmp_path):
    bundle = tmp_path / "with-examples"
    shutil.copytree(tiny_bundle["out"], bundle)
    shutil.rmtree(bundle / "examples", ignore_errors=True)  # training's own picks: replaced by three known ones
    os.makedirs(bundle / "examples")
    for colour in ("blue", "green", "red"):
        blob_image(colour, 500, size=64).save(bundle / "examples" / f"{colour}.png")
    with AppServer({"MODEL_REPO": str(bundle)}) as server:
        open_app(page, server.url)
        thumbnails = page.locator(".examples .gallery-item")
        thumbnails.first.wait_for()
        assert thumbnails.count() == 3
        thumbnails.nth(0).click()  # sorted by file name: blue.png first
        assert label_id(shown_label(page)) == "blue"
