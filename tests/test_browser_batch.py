"""The 'Many images' and 'CT series' tabs in a real browser (headless Chromium,
Playwright), with the committed models: files picked in the page, a .zip among them,
become one row each, a file that is not an image gets its message in its row, and the
table is offered as CSV; the DICOM slices of a scan are shown in scan order with one
answer for the scan, the same as the API's.
"""

import csv
import io
import zipfile

import pytest

from lungclf.batch import COLUMNS
from tests.helpers import ct_examples, he_tile, label_id, open_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def table_rows(page, n, table="#batch-table"):
    """A results table's body rows (lists of cell texts), once it shows `n` of them."""
    rows = page.locator(f"{table} [role=row]").filter(has=page.locator("[role=gridcell]"))
    page.wait_for_function("([t, cells]) => document.querySelectorAll(t + ' [role=gridcell]').length >= cells",
                           arg=[table, n * len(COLUMNS)])
    return [[c.strip() for c in row.locator("[role=gridcell]").all_inner_texts()] for row in rows.all()]


def test_many_images_tab_gives_a_row_per_file_and_the_csv(default_server, committed_model_predict, page,
                                                          tmp_path):
    tiles = []
    for seed in (4, 5):
        he_tile(seed).save(tmp_path / f"tile{seed}.jpeg", quality=90)
        tiles.append(tmp_path / f"tile{seed}.jpeg")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tiles[1], "b.jpeg")

    open_app(page, default_server.url)
    page.get_by_role("tab", name="Many images").click()
    page.locator("#batch-files input[type=file]").set_input_files([tiles[0], notes, archive])
    page.locator('#batch-files td[aria-label="more.zip"]').wait_for()  # the three are uploaded
    page.get_by_role("button", name="Classify all").click()

    rows = table_rows(page, 3)
    assert [r[0] for r in rows] == ["tile4.jpeg", "notes.txt", "more.zip/b.jpeg"]
    assert rows[1][1] == "" and rows[1][-1].startswith("This file is not an image we can read")
    for row, tile in ((rows[0], tiles[0]), (rows[2], tiles[1])):
        expected = committed_model_predict(str(tile))
        assert label_id(row[1]) == max(expected, key=expected.get) and row[-1] == ""

    link = page.locator("#batch-csv a[href]").first
    link.wait_for()
    body = page.request.get(link.get_attribute("href")).text()
    back = list(csv.reader(io.StringIO(body)))
    assert back[0][0] == "file" and [r[0] for r in back[1:]] == [r[0] for r in rows]


def test_ct_series_tab_orders_dicom_slices_and_answers_for_the_scan_as_the_api_does(default_server, page,
                                                                                    tmp_path):
    from gradio_client import Client, handle_file

    from tests.make_dicom import ct_slice

    paths = [str(ct_slice(tmp_path / name, grey, intercept=0, window=(128, 256), position=z))
             for (name, z), grey in zip((("a.dcm", 20.0), ("b.dcm", -20.0), ("c.dcm", 0.0)), ct_examples(3))]
    scan, _, table, _ = Client(default_server.url, verbose=False).predict(
        [handle_file(p) for p in paths], "chest_ct", api_name="/predict_series")

    open_app(page, default_server.url)
    page.get_by_role("tab", name="CT series (one scan)").click()
    page.locator("#series-files input[type=file]").set_input_files(paths)
    page.locator('#series-files td[aria-label="c.dcm"]').wait_for()
    page.locator("#series-model input").click()  # the model, as a person picks it
    page.get_by_role("option", name="chest_ct").click()
    page.get_by_role("button", name="Classify the scan").click()

    rows = table_rows(page, 3, "#series-table")
    assert [r[0] for r in rows] == ["b.dcm", "c.dcm", "a.dcm"] == [r[0] for r in table["data"]]  # by position
    shown = page.locator("#series-answer [data-testid=label-output-value]")
    shown.wait_for()
    assert shown.inner_text() == scan["label"]


def test_switching_the_model_clears_the_many_images_table(default_server, page, tmp_path):
    he_tile(6).save(tmp_path / "tile6.jpeg", quality=90)
    open_app(page, default_server.url)
    page.get_by_role("tab", name="Many images").click()
    page.locator("#batch-files input[type=file]").set_input_files([tmp_path / "tile6.jpeg"])
    page.locator('#batch-files td[aria-label="tile6.jpeg"]').wait_for()
    page.get_by_role("button", name="Classify all").click()
    assert table_rows(page, 1)[0][2].endswith("%")  # the confidence as the one-image page shows it
    page.locator("#batch-model input").click()
    page.get_by_role("option", name="chest_ct").click()
    page.wait_for_function("document.querySelectorAll('#batch-table [role=gridcell]').length === 0")
    assert page.locator("#batch-csv a[href]").count() == 0


def test_series_tab_starts_on_the_best_ct_model_and_follows_a_ct_model_chosen_first(default_server, page):
    def series_model():
        return page.locator("#series-model input").input_value()

    open_app(page, default_server.url)
    page.get_by_role("tab", name="CT series (one scan)").click()
    assert series_model().startswith("chest_ct")  # cross-validated macro-F1 0.81 against 0.68
    page.get_by_role("tab", name="One image").click()
    page.locator("#one-image-model input").click()
    page.get_by_role("option", name="iq_othnccd").click()
    page.get_by_role("tab", name="CT series (one scan)").click()
    page.wait_for_function("document.querySelector('#series-model input').value.startsWith('iq_othnccd')")
