"""Every programmatic way into the running app gives the model's own answer.

scripts/client.py (gradio_client), scripts/client.mjs (@gradio/client in Node) and the
README's Python snippet and curl recipe run as a user runs them, against `python app.py`
on 127.0.0.1, and must give the label and confidences that calling the committed model
directly on the same image gives (lungclf.bundle.load + lungclf.preprocess.load_image).
The README snippets are read out of README.md, so the README stays true.

    python -m pytest tests/test_clients.py -m slow
"""

import csv
import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers import ROOT, confidences, he_tile, label_id, readme_block

pytestmark = pytest.mark.slow


def set_line(script, name, value):
    """Replace the README's `NAME=...` line (it must be there) with NAME=value."""
    new, n = re.subn(rf"^{name}=.*$", f"{name}={value}", script, flags=re.M)
    assert n == 1, f"the recipe should set {name} on one line"
    return new


def run(args, cwd=ROOT, timeout=120):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def top(probs):
    return max(probs, key=probs.get)


@pytest.fixture
def tiles(tmp_path):
    """Two histology-like JPEGs the test draws."""
    paths = []
    for seed in (1, 2):
        path = tmp_path / f"tile{seed}.jpeg"
        he_tile(seed).save(path, quality=90)
        paths.append(str(path))
    return paths


def test_python_client_prints_the_label_of_a_direct_model_call(default_server, committed_model_predict,
                                                               tiles, tmp_path):
    out_csv = tmp_path / "predictions.csv"
    p = run([sys.executable, "scripts/client.py", default_server.url, *tiles, "--csv", str(out_csv)])
    assert p.returncode == 0, p.stderr
    lines = [line.split("\t") for line in p.stdout.splitlines()]
    rows = list(csv.DictReader(open(out_csv)))
    assert [line[0] for line in lines] == [r["file"] for r in rows] == ["tile1.jpeg", "tile2.jpeg"]
    for path, (_, label, confidence, _check), row in zip(tiles, lines, rows):
        expected = committed_model_predict(path)
        assert label_id(label) == label_id(row["label"]) == top(expected)
        assert float(confidence) == pytest.approx(expected[top(expected)], abs=1e-3)
        assert float(row["confidence"]) == pytest.approx(expected[top(expected)], abs=1e-5)


def test_python_client_reports_a_refused_file_and_classifies_the_rest(default_server, tiles, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    p = run([sys.executable, "scripts/client.py", default_server.url, str(notes), tiles[0]])
    assert p.returncode == 1
    assert "notes.txt: This file is not an image" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout.startswith("tile1.jpeg\t")


@pytest.mark.node
def test_js_client_prints_json_with_the_label_of_a_direct_model_call(default_server, committed_model_predict,
                                                                     tiles):
    name = committed_model_predict.bundle.name
    p = run(["node", "scripts/client.mjs", default_server.url, tiles[0], "--model", name])
    assert p.returncode == 0, p.stderr
    [result] = json.loads(p.stdout)
    expected = committed_model_predict(tiles[0])
    assert result["file"] == "tile1.jpeg" and label_id(result["label"]) == top(expected)
    assert confidences(result) == pytest.approx(expected, abs=1e-5)


@pytest.mark.node
def test_js_client_reports_an_unknown_model_by_name(default_server, tiles):
    p = run(["node", "scripts/client.mjs", default_server.url, tiles[0], "--model", "no-such-model"])
    assert p.returncode == 1
    [result] = json.loads(p.stdout)
    assert result["error"].startswith("Unknown model 'no-such-model'. Choose one of:")


def test_readme_python_snippet_prints_the_label_of_a_direct_model_call(default_server, committed_model_predict,
                                                                        tiles, tmp_path):
    snippet = readme_block("python", "gradio_client")
    assert 'Client("http://127.0.0.1:7860/")' in snippet and '"tile.jpeg"' in snippet
    os.replace(tiles[0], tmp_path / "tile.jpeg")
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace("http://127.0.0.1:7860/", default_server.url))
    p = run([sys.executable, str(script)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    label = next(line for line in p.stdout.splitlines() if " [{" in line).split(" [{")[0]  # the label line
    assert label_id(label) == top(committed_model_predict(str(tmp_path / "tile.jpeg")))


def _run_curl_recipe(url, image, cwd):
    recipe = readme_block("bash", "/gradio_api/call/predict")
    recipe = set_line(set_line(recipe, "APP", url.rstrip("/")), "IMAGE", image)
    p = run(["bash", "-c", recipe], cwd=cwd)
    assert p.returncode == 0, p.stderr
    events = dict(re.findall(r"^event: (\w+)\ndata: (.*)$", p.stdout, re.M))
    return events


def test_readme_curl_recipe_streams_the_label_of_a_direct_model_call(default_server, committed_model_predict,
                                                                      tiles, tmp_path):
    events = _run_curl_recipe(default_server.url, os.path.basename(tiles[1]), tmp_path)
    result = json.loads(events["complete"])[0]  # output 0: the gr.Label value
    expected = committed_model_predict(tiles[1])
    assert label_id(result["label"]) == top(expected)
    assert confidences(result) == pytest.approx(expected, abs=1e-5)


def test_readme_curl_recipe_streams_the_message_for_a_non_image(default_server, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    events = _run_curl_recipe(default_server.url, "notes.txt", tmp_path)
    assert "complete" not in events
    assert json.loads(events["error"])["error"].startswith("This file is not an image")


def test_api_page_names_and_describes_the_predict_parameters(default_server):
    info = json.load(urllib.request.urlopen(default_server.url + "gradio_api/info"))
    predict = info["named_endpoints"]["/predict"]
    assert [p["parameter_name"] for p in predict["parameters"]] == ["image", "model"]
    assert predict["parameters"][0]["label"].startswith("Lung image")
    assert predict["parameters"][1]["parameter_has_default"]
    assert "image: the image file" in predict["description"]
    assert "not for diagnosis" in predict["description"]
