"""The bundle contract (lungclf/schema.py): what the app refuses, and how it says so.

Each broken bundle is a copy of the committed LC25000 bundle with one thing changed; the
refusal is one line naming the field or check, before anything is served.
"""

import json
import os
import shutil

import pytest

from lungclf.bundle import BundleError, load, sha256, upgrade, verify, write_json
from tests.helpers import COMMITTED_MODEL, ROOT, run_app_until_exit

COMMITTED = [os.path.join(ROOT, "models", n) for n in ("lc25000", "iq_othnccd", "chest_ct")]


@pytest.fixture
def bundle(tmp_path):
    """A writable copy of the committed default bundle."""
    folder = tmp_path / "bundle"
    shutil.copytree(COMMITTED_MODEL, folder)
    return folder


def edit(folder, name, change):
    path = os.path.join(folder, name)
    data = json.load(open(path, encoding="utf-8"))
    change(data)
    write_json(path, data)


def refusal(fn, *args):
    with pytest.raises(BundleError) as e:
        fn(*args)
    message = str(e.value)
    assert "\n" not in message  # one line
    return message


@pytest.mark.parametrize("folder", COMMITTED, ids=os.path.basename)
def test_committed_bundles_keep_the_contract(folder):
    meta, classes = verify(folder)
    assert meta.preprocessing.input_size[2] == 3 and classes.labels == meta.classes
    assert 0 < meta.calibration.temperature and meta.metrics.test.images > 0


def test_a_missing_field_is_named(bundle):
    edit(bundle, "metadata.json", lambda m: m.pop("task"))
    assert "metadata.json: task: missing" in refusal(verify, str(bundle))


def test_a_field_of_the_wrong_kind_is_named_with_what_was_expected(bundle):
    edit(bundle, "metadata.json", lambda m: m["preprocessing"].update(input_size=[128, 128]))
    message = refusal(verify, str(bundle))
    assert "preprocessing.input_size" in message and "[128, 128]" in message


def test_an_unknown_resize_method_is_refused(bundle):
    upgrade(str(bundle))
    edit(bundle, "metadata.json", lambda m: m["preprocessing"].update(resize="bicubic"))
    assert "preprocessing.resize: expected 'squash-area-down-linear-up'" in refusal(verify, str(bundle))


def test_a_temperature_that_is_not_positive_is_refused(bundle):
    edit(bundle, "metadata.json", lambda m: m["calibration"].update(temperature=0))
    assert "calibration.temperature: expected a number > 0" in refusal(verify, str(bundle))


def test_classes_json_must_list_the_metadata_labels(bundle):
    edit(bundle, "classes.json", lambda c: c["labels"].reverse())
    assert "classes.json: labels: expected the labels of metadata.json" in refusal(verify, str(bundle))


def test_a_changed_model_file_fails_the_sha256(bundle):
    with open(bundle / "model.keras", "ab") as f:
        f.write(b"\0")
    assert "sha256 of model.keras does not match" in refusal(verify, str(bundle))


def test_a_changed_onnx_model_fails_its_sha256(bundle):
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert "sha256 of model.onnx does not match" in refusal(verify, str(bundle))


def test_an_onnx_model_exported_from_another_model_keras_is_refused(bundle):
    edit(bundle, "metadata.json", lambda m: m["onnx"].update(source_sha256="0" * 64))
    assert "onnx.source_sha256: expected model.sha256" in refusal(verify, str(bundle))


def test_an_onnx_export_outside_its_tolerance_is_refused(bundle):
    edit(bundle, "metadata.json", lambda m: m["onnx"]["relative_difference"].update(logits=0.5))
    assert "onnx.relative_difference: expected differences within onnx.tolerance" in refusal(verify, str(bundle))


def test_float16_weights_are_held_to_their_probabilities_not_their_logits(bundle):
    """An export that stores its weights as float16 (training/export.py) bounds the calibrated
    probabilities, the features and the maps, not the logits (large on made-up images): the
    contract accepts such an export within its tolerance and refuses one beyond it."""
    def float16(probabilities):
        def change(m):
            m["onnx"].update(weights="float16", probabilities_difference=probabilities,
                             tolerance={"probabilities": 0.02, "features": 0.02, "maps": 0.02})
            m["onnx"]["relative_difference"].update(logits=0.12)
        return change

    edit(bundle, "metadata.json", float16(0.005))
    verify(str(bundle))
    edit(bundle, "metadata.json", float16(0.05))
    assert "onnx.relative_difference: expected differences within onnx.tolerance" in refusal(verify, str(bundle))


def test_an_input_size_the_model_does_not_have_is_refused_at_load(bundle):
    edit(bundle, "metadata.json", lambda m: m["preprocessing"].update(input_size=[96, 96, 3]))
    message = refusal(load, str(bundle))
    assert "input shape [128, 128, 3] does not match metadata.json preprocessing.input_size [96, 96, 3]" in message


def test_a_class_the_model_has_no_output_for_is_refused_at_load(bundle):
    edit(bundle, "metadata.json", lambda m: m["classes"].append("lung_extra"))
    edit(bundle, "classes.json", lambda c: c["labels"].append("lung_extra"))
    assert "output shape [3] does not match the 4 classes" in refusal(load, str(bundle))


def test_schema_1_is_read_through_the_migration_and_upgrade_rewrites_it(bundle):
    def as_version_1(m):
        m["schema"] = "lung-classifier-bundle/1"
        m["preprocessing"] = {"input_size": [128, 128, 3], "colour_mode": "rgb",
                              "resize": "squash to input_size, cv2.INTER_AREA down / cv2.INTER_LINEAR up",
                              "scaling": "inside the model: Rescaling(1/255)"}

    edit(bundle, "metadata.json", as_version_1)
    meta, _ = verify(str(bundle))
    assert meta.schema == "lung-classifier-bundle/2" and meta.preprocessing.resize == "squash-area-down-linear-up"
    assert upgrade(str(bundle)) == ("lung-classifier-bundle/1", "lung-classifier-bundle/2")
    on_disk = json.load(open(bundle / "metadata.json"))
    assert on_disk["schema"] == "lung-classifier-bundle/2" and on_disk["preprocessing"]["scaling"] == "in-model"
    assert on_disk["model"]["sha256"] == sha256(bundle / "model.keras")


def test_an_unknown_schema_version_is_refused_saying_which_are_known(bundle):
    edit(bundle, "metadata.json", lambda m: m.update(schema="lung-classifier-bundle/9"))
    message = refusal(verify, str(bundle))
    assert "schema: expected 'lung-classifier-bundle/2'" in message and "lung-classifier-bundle/9" in message


def test_a_mistyped_folder_says_where_it_looked_on_disk_and_on_the_hub(monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set the variable and the value it
    # was read into, both restored after this test (later tests in this process talk to a Hub).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message = refusal(load, "models/lc2500")
    assert "models/lc2500" in message and "no folder" in message and "on disk" in message


@pytest.mark.slow
def test_the_app_refuses_a_broken_bundle_in_one_line_with_exit_status_2(bundle):
    edit(bundle, "metadata.json", lambda m: m.pop("task"))
    code, output = run_app_until_exit({"MODEL_REPO": str(bundle)})
    assert code == 2
    assert f"error: cannot start: {bundle}: metadata.json: task: missing" in output
    assert "Traceback" not in output
