"""The wrong-input warning and the heatmap in a real browser (headless Chromium, Playwright).

The page as a visitor sees it, with the committed models: a wrong input shows the warning
in words beside the label and the heatmap; a click on one of the committed examples (real
held-out tiles) shows a label, the heatmap and no warning; the opacity slider re-blends.
The README's screenshots are taken here; to rewrite docs/screenshot.png (an example) and
docs/screenshot-warning.png (a wrong input):

    UPDATE_DOCS=1 python -m pytest tests/test_browser_explain.py -m slow
"""

import os
import shutil

import pytest
from PIL import Image, ImageDraw

from tests.helpers import ROOT, drop_file, open_app, shown_label

pytestmark = pytest.mark.slow
WARNING = "This does not look like the histopathology tiles this model was trained on; its answer is not reliable."


def notice(page):
    return page.locator("#wrong-input-notice")


def heatmap_src(page):
    img = page.locator("#heatmap img")
    img.wait_for()
    return img.get_attribute("src")


def save_doc(page, tmp_path, name):
    page.evaluate("window.scrollTo(0, 0)")  # the top of the page: input, warning, label, heatmap
    page.wait_for_timeout(600)  # let the confidence bars finish animating
    shot = tmp_path / name
    page.screenshot(path=shot)
    if os.environ.get("UPDATE_DOCS"):
        shutil.copy(shot, os.path.join(ROOT, "docs", name))


def poster(path):
    """A wrong input made here: a coloured poster with words, nothing like a tissue tile."""
    im = Image.new("RGB", (320, 240), (250, 210, 60))
    d = ImageDraw.Draw(im)
    d.ellipse((20, 30, 140, 150), fill=(30, 90, 200))
    d.rectangle((170, 40, 300, 200), fill=(240, 240, 240))
    for i, word in enumerate(("LUNG", "SCAN", "2024")):
        d.text((190, 60 + 40 * i), word, fill=(0, 0, 0))
    im.save(path, quality=92)


def test_wrong_input_shows_the_warning_beside_the_label_and_a_heatmap(default_server, page, tmp_path):
    path = tmp_path / "poster.jpeg"
    poster(path)
    drop_file(page, open_app(page, default_server.url), path, "image/jpeg")
    shown_label(page)
    notice(page).filter(has_text=WARNING).wait_for()
    assert "limit" in notice(page).inner_text()  # score and threshold for those who want them
    assert heatmap_src(page)
    label_box = page.get_by_test_id("label").bounding_box()
    notice_box = notice(page).bounding_box()
    assert abs(notice_box["x"] - label_box["x"]) < 40  # in the label's column, just above it
    save_doc(page, tmp_path, "screenshot-warning.png")


def test_clicking_an_example_shows_a_label_a_heatmap_and_no_warning(default_server, page, tmp_path):
    open_app(page, default_server.url)
    first_example = page.locator("#examples img").first  # an lc25000 test-split tile
    first_example.wait_for()
    first_example.click()
    assert shown_label(page)
    first = heatmap_src(page)
    notice(page).filter(has_text="Looks like the histopathology tiles").wait_for()
    assert "not reliable" not in notice(page).inner_text()
    save_doc(page, tmp_path, "screenshot.png")
    # The opacity slider re-blends the same map over the image: a new picture, same label.
    slider = page.locator("input[type=range]").first
    slider.fill("1")
    slider.dispatch_event("change")
    page.wait_for_function(f"() => document.querySelector('#heatmap img')?.src !== {first!r}")
