"""The app as a running server on 127.0.0.1, called through gradio_client."""

import os
import shutil

import pytest

from tests.helpers import COMMITTED_MODEL, blob_image, label_id, predict, run_app_until_exit

pytestmark = pytest.mark.slow


def test_committed_model_answers_with_a_valid_label(default_server, tmp_path):
    import json

    names = json.load(open(os.path.join(COMMITTED_MODEL, "classes.json")))["names"]
    path = str(tmp_path / "tile.png")
    blob_image("red", 1, size=128).save(path)
    result = predict(default_server.url, path)
    assert result["label"] in names.values()  # each class by its readable name, once
    assert abs(sum(c["confidence"] for c in result["confidences"]) - 1) < 1e-4


def test_model_repo_folder_is_honoured(tiny_server, tmp_path):
    path = str(tmp_path / "blue.png")
    blob_image("blue", 99).save(path)
    result = predict(tiny_server.url, path)
    assert {c["label"] for c in result["confidences"]} == {"Blue", "Green", "Red"}
    assert label_id(result["label"]) == "blue"


def test_missing_bundle_stops_start_up_with_a_clear_message(tmp_path):
    code, out = run_app_until_exit({"MODEL_REPO": str(tmp_path / "nothing-here")})
    assert code != 0
    assert "no such bundle folder" in out and "Traceback" not in out


def test_tampered_model_stops_start_up_naming_the_check(tiny_bundle, tmp_path):
    bad = tmp_path / "tampered"
    shutil.copytree(tiny_bundle["out"], bad)
    with open(bad / "model.keras", "ab") as f:
        f.write(b"x")
    code, out = run_app_until_exit({"MODEL_REPO": str(bad)})
    assert code != 0 and "sha256 of model.keras does not match" in out


def test_bundle_without_metadata_stops_start_up(tiny_bundle, tmp_path):
    bad = tmp_path / "incomplete"
    shutil.copytree(tiny_bundle["out"], bad)
    os.remove(bad / "metadata.json")
    code, out = run_app_until_exit({"MODEL_REPO": str(bad)})
    assert code != 0 and "missing metadata.json" in out


def test_non_image_upload_gets_a_message_and_the_server_keeps_serving(tiny_server, tmp_path):
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(AppError, match="not an image"):
        predict(tiny_server.url, str(text))
    good = str(tmp_path / "red.png")
    blob_image("red", 5).save(good)
    assert label_id(predict(tiny_server.url, good)["label"]) == "red"
