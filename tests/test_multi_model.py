"""One Space, several models: MODEL_REPO="a,b" serves both, the first is the default.

Two real bundles: the session's tiny colour model (classes blue/green/red, no preset) and
a tiny CT model trained here with --preset chest-ct (four CT classes, grey). Which model
answered is told by the classes in its answer. Checked through gradio_client and in
headless Chromium (the `page` fixture).
"""

import pytest

from tests.helpers import AppServer, blob_image, drop_file, label_id, make_preset_dataset, open_app, shown_label
from training import presets

pytestmark = pytest.mark.slow

CT_CLASSES = presets.PRESETS["chest-ct"]["classes"]


@pytest.fixture(scope="module")
def ct_bundle(tmp_path_factory):
    from training.train import main

    data = make_preset_dataset(str(tmp_path_factory.mktemp("ct-data")), "chest-ct", "split")
    out = str(tmp_path_factory.mktemp("ct") / "tiny-ct")
    main(["--data", data, "--out", out, "--preset", "chest-ct", "--image-size", "32", "--width", "8",
          "--epochs", "2", "--batch-size", "8", "--verbose", "0"])
    return out


@pytest.fixture(scope="module")
def two_model_server(tiny_bundle, ct_bundle):
    with AppServer({"MODEL_REPO": f"{tiny_bundle['out']},{ct_bundle}"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(two_model_server):
    from gradio_client import Client

    return Client(two_model_server.url, verbose=False)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "red.png"
    blob_image("red", 7, size=64).save(path)
    return str(path)


def labels_in(result):
    return {label_id(c["label"]) for c in result["confidences"]}


def test_the_api_lists_both_models_first_as_default(client):
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict"]["parameters"]
    model = next(p for p in params if p["parameter_name"] == "model")
    assert model["parameter_default"] == "tiny"
    assert model["type"]["enum"] == ["tiny", "tiny-ct"]


def test_predict_without_the_model_input_uses_the_first_model(client, image):
    from gradio_client import handle_file

    assert labels_in(client.predict(handle_file(image), api_name="/predict")[0]) == {"blue", "green", "red"}


def test_predict_with_the_model_input_uses_the_chosen_model(client, image):
    from gradio_client import handle_file

    result = client.predict(handle_file(image), "tiny-ct", api_name="/predict")[0]
    assert labels_in(result) == set(CT_CLASSES)
    assert labels_in(client.predict(handle_file(image), "tiny", api_name="/predict")[0]) == {"blue", "green", "red"}


def test_an_unknown_model_name_is_refused_with_the_choices(client, image):
    from gradio_client import handle_file

    with pytest.raises(Exception, match="tiny, tiny-ct") as e:
        client.predict(handle_file(image), "nope", api_name="/predict")
    assert "Traceback" not in str(e.value)


def test_browser_selector_shows_each_models_modality_and_switches_model(two_model_server, page, image):
    zone = open_app(page, two_model_server.url)
    assert page.get_by_text("Held-out test").first.inner_text()  # the default model's card
    page.get_by_label("Model").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    texts = [t.split("\n")[-1] for t in options.all_inner_texts()]  # the chosen one has a tick line
    assert texts == ["tiny (unspecified, 3 classes)", "tiny-ct (CT, 4 classes)"]
    options.nth(1).click()
    page.get_by_text("Chest CT-scan images (Kaggle)").first.wait_for()  # the card follows the choice
    drop_file(page, zone, image, "image/png")
    assert label_id(shown_label(page)) in CT_CLASSES
