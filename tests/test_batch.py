"""Many images at once (lungclf.batch and app.py's /predict_batch and /predict_series):
limits, hostile .zip files, the table and CSV, the scan-level answer of a series.

    python -m pytest tests/test_batch.py -q                     # the fast ones
    python -m pytest tests/test_batch.py -m "slow or not slow" -q   # with the running app
"""

import csv
import io
import json
import os
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from lungclf.batch import (ArchiveError, BatchError, Item, Limits, Prediction, Row, Workspace,
                           aggregate, expand, extract_member, order_slices, write_csv)
from tests.helpers import ct_examples
from tests.make_dicom import bands, ct_slice


def png_bytes(seed, size=40):
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def write(path, data):
    path.write_bytes(data)
    return str(path)


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """members: {name: bytes}; returns the path as a string."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


@pytest.fixture
def ws():
    with Workspace() as w:
        yield w


def refused_zip_message(tmp_path, ws, members, limits=Limits(), **kw):
    """Expand one hostile .zip beside a good image: the .zip is one refused row, the image
    goes on, nothing of the .zip is left in the workspace."""
    good = write(tmp_path / "good.png", png_bytes(0))
    bad = make_zip(tmp_path / "bad.zip", members, **kw)
    items = expand([good, bad], ws, limits)
    assert [(it.name, it.path is not None) for it in items] == [("good.png", True), ("bad.zip", False)]
    assert os.listdir(ws.path) == [] or all(os.path.getsize(os.path.join(ws.path, f)) <= 2 ** 20
                                            for f in os.listdir(ws.path))
    return items[1].error


def test_zip_members_become_rows_named_after_the_archive(tmp_path, ws):
    z = make_zip(tmp_path / "tiles.zip", {"a/one.png": png_bytes(1), "two.png": png_bytes(2),
                                          "__MACOSX/._two.png": b"x", "a/.DS_Store": b"x",
                                          "DICOMDIR": b"x"})
    items = expand([z], ws, Limits())
    assert [it.name for it in items] == ["tiles.zip/a/one.png", "tiles.zip/two.png"]
    assert all(os.path.dirname(it.path) == ws.path for it in items)
    with open(items[0].path, "rb") as f:
        assert f.read() == png_bytes(1)


def test_workspace_is_deleted_afterwards(tmp_path):
    z = make_zip(tmp_path / "tiles.zip", {"one.png": png_bytes(1)})
    with Workspace() as w:
        expand([z], w, Limits())
        assert os.listdir(w.path)
    assert not os.path.exists(w.path)


def test_zip_bomb_by_ratio_is_refused_from_the_header(tmp_path, ws):
    message = refused_zip_message(tmp_path, ws, {"zeros.png": bytes(5 * 2 ** 20)})
    assert "expands" in message and "ZIP_MAX_RATIO" in message


def test_zip_bigger_than_the_request_allows_is_refused_whole(tmp_path, ws):
    data = np.random.default_rng(0).bytes(2 ** 20)  # incompressible: the ratio is fine
    z = make_zip(tmp_path / "big.zip", {f"{i}.png": data for i in range(3)})
    with pytest.raises(BatchError, match=r"big.zip expands to 3.0 MB.*BATCH_MAX_MB"):
        expand([z], ws, Limits(max_bytes=2 * 2 ** 20))


def lie_about_size(path, declared):
    """Rewrite the uncompressed size of a one-member zip in both of its headers."""
    data = bytearray(open(path, "rb").read())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    open(path, "wb").write(bytes(data))


def test_zip_bomb_whose_headers_lie_is_refused_while_extracting(tmp_path, ws):
    good = write(tmp_path / "good.png", png_bytes(0))
    bad = make_zip(tmp_path / "liar.zip", {"zeros.png": bytes(3 * 2 ** 20)})
    lie_about_size(bad, 100)
    with zipfile.ZipFile(bad) as zf:  # the headers now pass the ratio check
        info = zf.infolist()[0]
        assert info.file_size / info.compress_size < Limits().zip_max_ratio
    items = expand([good, bad], ws, Limits())
    assert items[1].path is None and "damaged" in items[1].error
    assert sum(os.path.getsize(os.path.join(ws.path, f)) for f in os.listdir(ws.path)) <= 100


def test_extraction_stops_at_the_byte_budget_whatever_the_header_says(tmp_path, ws):
    z = make_zip(tmp_path / "a.zip", {"noise.png": np.random.default_rng(0).bytes(300_000)})
    with zipfile.ZipFile(z) as zf:
        with pytest.raises(ArchiveError, match="zip bomb"):
            extract_member(zf, zf.infolist()[0], os.path.join(ws.path, "x"), Limits(), 100_000)
    assert os.path.getsize(os.path.join(ws.path, "x")) <= 100_000


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/evil.png",
                                  "C:/evil.png", "a\\..\\..\\evil.png"])
def test_member_name_that_climbs_out_is_refused(tmp_path, ws, name):
    message = refused_zip_message(tmp_path, ws, {"ok.png": png_bytes(1), name: png_bytes(2)})
    assert "points outside the archive" in message
    assert not os.path.exists(os.path.join(os.path.dirname(ws.path), "evil.png"))


@pytest.mark.parametrize("inner", ["inner.zip", "slices.tar.gz", "x.7z"])
def test_archive_inside_the_archive_is_refused(tmp_path, ws, inner):
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("one.png", png_bytes(1))
    message = refused_zip_message(tmp_path, ws, {"ok.png": png_bytes(1), inner: nested.getvalue()})
    assert "archive inside the archive" in message


def test_link_in_the_archive_is_refused(tmp_path, ws):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("passwd.png")
        info.external_attr = (0o120777 << 16)  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    items = expand([write(tmp_path / "good.png", png_bytes(0)), str(path)], ws, Limits())
    assert "a link" in items[1].error


def test_damaged_zip_is_one_refused_row(tmp_path, ws):
    bad = write(tmp_path / "broken.zip", b"PK\x03\x04" + bytes(200))
    items = expand([write(tmp_path / "good.png", png_bytes(0)), bad], ws, Limits())
    assert items[1].error == "This .zip file is damaged and cannot be opened."


def test_too_many_files_are_refused_naming_the_setting(tmp_path, ws):
    paths = [write(tmp_path / f"{i}.png", png_bytes(i)) for i in range(4)]
    with pytest.raises(BatchError, match=r"^4 files in one request; at most 3 \(BATCH_MAX_FILES\)"):
        expand(paths, ws, Limits(max_files=3))
    z = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes(i) for i in range(3)})
    with pytest.raises(BatchError, match="4 files"):
        expand([paths[0], z], ws, Limits(max_files=3))


def test_total_size_past_the_limit_is_refused(tmp_path, ws):
    paths = [write(tmp_path / f"{i}.png", png_bytes(i, size=200)) for i in range(3)]
    total = sum(os.path.getsize(p) for p in paths)
    with pytest.raises(BatchError, match=r"BATCH_MAX_MB"):
        expand(paths, ws, Limits(max_bytes=total - 1))
    assert len(expand(paths, ws, Limits(max_bytes=total))) == 3


def test_total_pixels_past_the_limit_are_refused_from_the_headers(tmp_path, ws):
    png = write(tmp_path / "a.png", png_bytes(0, size=40))  # 1,600 pixels
    dcm = str(ct_slice(tmp_path / "b.dcm", bands([0, 0, 0], size=30)))  # 900 pixels
    with pytest.raises(BatchError, match=r"2,500 pixels in all; at most 2,499 .*BATCH_MAX_PIXELS"):
        expand([png, dcm], ws, Limits(max_pixels=2499))
    assert len(expand([png, dcm], ws, Limits(max_pixels=2500))) == 2


def test_limits_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATCH_MAX_FILES", "7")
    monkeypatch.setenv("BATCH_MAX_MB", "1.5")
    monkeypatch.setenv("BATCH_MAX_PIXELS", "1_000")
    monkeypatch.setenv("ZIP_MAX_RATIO", "20")
    assert Limits.from_env() == Limits(7, 1_572_864, 1000, 20.0)
    monkeypatch.setenv("BATCH_MAX_FILES", "many")
    with pytest.raises(SystemExit, match="BATCH_MAX_FILES='many' is not a number"):
        Limits.from_env()


def test_csv_holds_the_table_and_defuses_formula_file_names(tmp_path):
    rows = [Row("=HYPERLINK(x).png", Prediction({"a": 0.25, "b": 0.75}, "Looks unlike", 12.5)),
            Row("ok.png", Prediction({"a": 0.9, "b": 0.1})),
            Row("bad.txt", error="This file is not an image we can read.")]
    rows[0].file = __import__("lungclf.batch").batch.display_name(rows[0].file)
    path = write_csv(rows, tmp_path / "out.csv")
    with open(path, newline="") as f:
        back = list(csv.reader(f))
    assert back == [["file", "label", "confidence", "wrong_input", "wrong_input_score", "error"],
                    ["'=HYPERLINK(x).png", "b", "0.75", "Looks unlike", "12.5", ""],
                    ["ok.png", "a", "0.9", "", "", ""],
                    ["bad.txt", "", "", "", "", "This file is not an image we can read."]]


def test_scan_answer_is_the_mean_over_slices_not_flagged():
    rows = [Row("1", Prediction({"a": 0.8, "b": 0.2})),
            Row("2", Prediction({"a": 0.4, "b": 0.6})),
            Row("3", Prediction({"a": 0.0, "b": 1.0}, warning="wrong input", score=99.0)),
            Row("4", error="damaged")]
    answer = aggregate(rows)
    assert answer.probabilities == pytest.approx({"a": 0.6, "b": 0.4})
    assert (answer.used, answer.flagged, answer.unreadable) == (2, 1, 1)
    assert "from 2 of 4 slices" in answer.text()


def test_scan_with_every_slice_flagged_gets_no_answer():
    answer = aggregate([Row("1", Prediction({"a": 1.0}, warning="wrong input", score=50.0))])
    assert answer.probabilities is None and answer.text().startswith("**No scan answer**")


def test_slices_are_ordered_by_dicom_position_else_by_name_with_numbers(tmp_path):
    paths = {z: str(ct_slice(tmp_path / f"s{i}.dcm", bands([0, 0, 0]), position=z))
             for i, z in enumerate([30.0, -10.0, 10.0])}
    items = [Item(os.path.basename(p), p) for p in paths.values()]
    assert [it.path for it in order_slices(items)] == [paths[-10.0], paths[10.0], paths[30.0]]
    named = [Item(n, write(tmp_path / n, png_bytes(0))) for n in ["slice10.png", "slice2.png",
                                                                 "slice1.png"]]
    assert [it.name for it in order_slices(named)] == ["slice1.png", "slice2.png", "slice10.png"]


# ---------------------------------------------------------------- against the running app

@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    """`python app.py` with the committed models, small limits and its own TMPDIR."""
    from tests.helpers import AppServer

    tmp = tmp_path_factory.mktemp("server-tmp")
    server = AppServer({"MODEL_REPO": "", "BATCH_MAX_FILES": "8", "BATCH_MAX_MB": "2",
                        "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio")})
    server.tmp = tmp
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(batch_server):
    from gradio_client import Client

    return Client(batch_server.url, verbose=False)


@pytest.fixture(scope="module")
def direct():
    """The committed bundles called directly (not through app.py or lungclf.inference):
    name -> (path -> {label id: calibrated probability})."""
    from lungclf.bundle import load
    from lungclf.preprocess import load_image
    from tests.helpers import ROOT, temperature_scaled

    out = {}
    for name in ("lc25000", "chest_ct"):
        b = load(os.path.join(ROOT, "models", name))

        def predict(path, b=b):
            x = load_image(path, b.input_size)[None]
            probs = temperature_scaled(b.model(x, training=False), b.temperature)[0]
            return dict(zip(b.labels, probs.tolist()))

        out[name] = predict
    return out


def upload(paths):
    from gradio_client import handle_file

    return [handle_file(str(p)) for p in paths]


def app_error(client, **kwargs):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(**kwargs)
    return str(e.value)


@pytest.mark.slow
def test_batch_gives_a_row_per_file_with_the_models_answer_and_a_csv(client, direct, tmp_path):
    from tests.helpers import he_tile, label_id

    tiles = []
    for seed in (1, 2, 3):
        he_tile(seed).save(tmp_path / f"tile{seed}.jpeg", quality=90)
        tiles.append(tmp_path / f"tile{seed}.jpeg")
    notes = write(tmp_path / "notes.txt", b"not an image")
    z = tmp_path / "more.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(tiles[1], "in/b.jpeg")
        zf.write(tiles[2], "c.jpeg")
    table, csv_path = client.predict(upload([tiles[0], notes, z]), api_name="/predict_batch")
    assert table["headers"] == ["file", "label", "confidence", "wrong_input", "wrong_input_score",
                                "error"]
    rows = table["data"]
    assert [r[0] for r in rows] == ["tile1.jpeg", "notes.txt", "more.zip/in/b.jpeg", "more.zip/c.jpeg"]
    assert rows[1][1] == "" and rows[1][5].startswith("This file is not an image we can read.")
    for row, tile in zip([rows[0], rows[2], rows[3]], tiles):
        expected = direct["lc25000"](str(tile))
        top = max(expected, key=expected.get)
        assert label_id(row[1]) == top and row[5] == ""
        assert row[2] == pytest.approx(expected[top], abs=1e-3)
    with open(csv_path, newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == table["headers"] and [r[0] for r in back[1:]] == [r[0] for r in rows]
    assert [r[5] for r in back[1:]] == [r[5] for r in rows]


@pytest.mark.slow
def test_batch_past_the_file_limit_gets_the_message_naming_the_setting(client, tmp_path):
    paths = [write(tmp_path / f"{i}.png", png_bytes(i)) for i in range(9)]
    message = app_error(client, files=upload(paths), api_name="/predict_batch")
    assert message.startswith("9 files in one request; at most 8 (BATCH_MAX_FILES)")


@pytest.mark.slow
def test_hostile_zips_are_refused_and_the_other_files_classified(client, batch_server, tmp_path):
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("a.png", png_bytes(1))
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros.png": bytes(20 * 2 ** 20)})
    climb = make_zip(tmp_path / "climb.zip", {"../../evil.png": png_bytes(2)})
    inner = make_zip(tmp_path / "nested.zip", {"inner.zip": nested.getvalue()})
    good = write(tmp_path / "good.png", png_bytes(3))
    table, _ = client.predict(upload([bomb, climb, inner, good]), api_name="/predict_batch")
    errors = {r[0]: r[5] for r in table["data"]}
    assert "zip bomb" in errors["bomb.zip"]
    assert "points outside the archive" in errors["climb.zip"]
    assert "archive inside the archive" in errors["nested.zip"]
    assert errors["good.png"] == ""
    left = [p for p in os.listdir(batch_server.tmp) if p.startswith("lungclf-batch-")]
    assert left == []  # every request's temporary folder is gone
    assert not any(n == "evil.png" for _, _, files in os.walk(batch_server.tmp) for n in files)


@pytest.mark.slow
def test_dicom_series_gives_slices_in_scan_order_and_their_mean(client, direct, batch_server, tmp_path):
    from lungclf.schema import parse_metadata
    from tests.helpers import ROOT, label_id
    from tests.make_dicom import SECRET

    examples = ct_examples(3)
    paths = {}
    for (name, z), grey in zip((("a.dcm", 20.0), ("b.dcm", -20.0), ("c.dcm", 0.0)), examples):
        paths[z] = str(ct_slice(tmp_path / name, grey, intercept=0, window=(128, 256), position=z))
    scan, text, table, csv_path = client.predict(upload(paths.values()), model="chest_ct",
                                                 api_name="/predict_series")
    assert [r[0] for r in table["data"]] == ["b.dcm", "c.dcm", "a.dcm"]  # by position
    slices = [direct["chest_ct"](paths[z]) for z in (-20.0, 0.0, 20.0)]
    flagged = [bool(r[3]) for r in table["data"]]
    kept = [s for s, f in zip(slices, flagged) if not f]
    assert kept, "held-out examples should not all be flagged as wrong input"
    mean = {k: float(np.mean([s[k] for s in kept])) for k in kept[0]}
    got = {label_id(c["label"]): c["confidence"] for c in scan["confidences"]}
    # the app serves model.onnx: float32 within 1e-4 of Keras; chest CT's float16 weights within
    # the bound its export held them to (training/export.py)
    with open(os.path.join(ROOT, "models", "chest_ct", "metadata.json"), encoding="utf-8") as f:
        onnx = parse_metadata(json.load(f)).onnx
    assert got == pytest.approx(mean, abs=1e-4 if onnx.weights == "float32" else onnx.tolerance["probabilities"])
    assert f"from {len(kept)} of 3 slices" in text
    everything = json_text(scan, text, table) + open(csv_path).read() + batch_server.output()
    assert SECRET not in everything


def json_text(*values):
    import json

    return json.dumps(values)


@pytest.mark.slow
def test_dicom_slice_through_predict_gives_the_models_answer(client, direct, tmp_path):
    from gradio_client import handle_file

    from tests.helpers import label_id

    path = str(ct_slice(tmp_path / "one.dcm", np.random.default_rng(6).normal(-500, 400, (80, 80))))
    result = client.predict(image=handle_file(path), model="chest_ct", api_name="/predict")
    result = result[0] if isinstance(result, (list, tuple)) else result
    got = {label_id(c["label"]): c["confidence"] for c in result["confidences"]}
    assert got == pytest.approx(direct["chest_ct"](path), abs=1e-4)


@pytest.mark.slow
def test_damaged_and_huge_dicom_rows_carry_messages(client, batch_server, tmp_path):
    from tests.make_dicom import SECRET

    huge = ct_slice(tmp_path / "huge.dcm", bands([0, 0, 0]), rows=60000, cols=60000)
    junk = write(tmp_path / "junk.dcm", bytes(128) + b"DICM" + bytes(100))
    ok = ct_slice(tmp_path / "ok.dcm", bands([-600, -600, -600]))
    table, _ = client.predict(upload([huge, junk, ok]), model="chest_ct", api_name="/predict_batch")
    errors = [r[5] for r in table["data"]]
    assert errors[0].startswith("The DICOM image is too large (60,000 x 60,000 pixels")
    assert errors[1].startswith("This DICOM file")
    assert errors[2] == ""
    assert SECRET not in batch_server.output() and "Traceback" not in batch_server.output()


def run_client(args, timeout=180):
    import subprocess
    import sys

    from tests.helpers import ROOT

    cmd = ([sys.executable, "scripts/client.py"] if args[0] == "py" else ["node", "scripts/client.mjs"])
    return subprocess.run(cmd + args[1:], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tile_folder(tmp_path):
    from tests.helpers import he_tile

    folder = tmp_path / "tiles"
    folder.mkdir()
    for seed in (1, 2):
        he_tile(seed).save(folder / f"tile{seed}.jpeg", quality=90)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_python_client_sends_a_folder_as_one_batch(batch_server, direct, tile_folder):
    from tests.helpers import label_id

    p = run_client(["py", batch_server.url, str(tile_folder)])
    assert p.returncode == 1  # one file refused
    lines = [line.split("\t") for line in p.stdout.splitlines()]
    assert [line[0] for line in lines] == ["tile1.jpeg", "tile2.jpeg"]
    for line in lines:
        expected = direct["lc25000"](str(tile_folder / line[0]))
        assert label_id(line[1]) == max(expected, key=expected.get)
    assert "notes.txt: This file is not an image we can read." in p.stderr


@pytest.mark.slow
def test_python_client_series_prints_the_scan_answer_last(batch_server, tmp_path):
    for i, (z, grey) in enumerate(zip((10.0, 0.0), ct_examples(2))):
        ct_slice(tmp_path / f"s{i}.dcm", grey, intercept=0, window=(128, 256), position=z)
    p = run_client(["py", batch_server.url, str(tmp_path), "--series", "--model", "chest_ct"])
    names = [line.split("\t")[0] for line in p.stdout.splitlines()]
    assert p.returncode == 0, p.stderr
    assert names == ["s1.dcm", "s0.dcm", "SCAN"]


@pytest.mark.slow
@pytest.mark.node
def test_js_client_sends_a_folder_as_one_batch(batch_server, direct, tile_folder):
    import json

    from tests.helpers import label_id

    p = run_client(["js", batch_server.url, str(tile_folder)])
    assert p.returncode == 1, p.stderr
    results = json.loads(p.stdout)
    assert [r["file"] for r in results] == ["notes.txt", "tile1.jpeg", "tile2.jpeg"]
    assert results[0]["error"].startswith("This file is not an image we can read.")
    for r in results[1:]:
        expected = direct["lc25000"](str(tile_folder / r["file"]))
        assert label_id(r["label"]) == max(expected, key=expected.get)


def doc_block(lang, containing):
    """The one ```lang block of docs/batch.md that contains `containing`."""
    import re

    from tests.helpers import ROOT

    with open(os.path.join(ROOT, "docs", "batch.md"), encoding="utf-8") as f:
        blocks = re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.M | re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"docs/batch.md should have one ```{lang} block with {containing!r}"
    return found[0]


def run_doc(lang, containing, server, tmp_path):
    """Run a docs/batch.md block against `server`, its /tmp/ files under tmp_path."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = doc_block(lang, containing).replace("/tmp/", f"{tmp_path}/")
    code = code.replace("http://127.0.0.1:7860/", server.url)
    code = "\n".join(line for line in code.splitlines() if not line.startswith("python app.py"))
    cmd = ["bash", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_docs_batch_and_series_snippets_run_as_pasted(batch_server, tmp_path):
    p = run_doc("bash", "mkdir -p /tmp/tiles", batch_server, tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(list((tmp_path / "scan").glob("*.dcm"))) == 5
    p = run_doc("python", "/predict_batch", batch_server, tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("tiles.zip/lung_") == 6 and "CSV:" in p.stdout
    p = run_doc("python", "/predict_series", batch_server, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Scan answer from" in p.stdout and "of 5 slices" in p.stdout


def run_script(args, json_path, timeout=600):
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT

    p = subprocess.run([sys.executable, *args, "--json", str(json_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(json_path) as f:
        return json.load(f), p.stdout


@pytest.mark.slow
def test_batch_benchmark_measures_single_images_alone_and_during_a_batch(tmp_path):
    figures, _ = run_script(["scripts/benchmark_batch.py", "--quick"], tmp_path / "b.json")
    assert figures["batch_images"] == 10
    assert figures["single_p50_ms_alone"] > 0 and figures["single_requests"]["during"] >= 1


@pytest.mark.slow
def test_series_accuracy_scores_the_test_groups_of_the_bundles_own_split(tiny_bundle, tmp_path):
    figures, out = run_script(["scripts/series_accuracy.py", "--data", tiny_bundle["data"],
                               "--model", tiny_bundle["out"]], tmp_path / "s.json")
    assert "fingerprint differs" not in out  # the same split as training made
    test = tiny_bundle["meta"]["split"]["counts"]["test"]
    assert (figures["test_images"], figures["test_groups"]) == (test["images"], test["groups"])
    assert figures["slice_accuracy"] == pytest.approx(tiny_bundle["meta"]["metrics"]["test"]["accuracy"],
                                                      abs=1e-3)
