"""The Hub round trip: publish a bundle with scripts/push_to_hub.py, serve it from the Hub
with app.py, and refuse what must be refused; and the local Hub refuses what the Hub
refuses (a binary file over 1 MB or any file over 10 MiB committed in git, not LFS).

The real huggingface_hub client (in the push script, the app and `python -m
lungclf.bundle`) talks to tests/local_hub.py on 127.0.0.1 through HF_ENDPOINT, uploading
large and binary files with Git LFS (HF_HUB_DISABLE_XET=1: the local Hub speaks LFS, not
Xet); the Hugging Face cache is a temporary folder (HF_HOME, HF_HUB_CACHE). The tests of
the Hub's limits are fast; the round trips, which train a tiny bundle, are slow.
"""

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, AppServer, blob_image, free_port, label_id, run_app_until_exit
from tests.local_hub import card_metadata_errors, running

pytestmark = pytest.mark.hub

TOKEN = "hf_test" + secrets.token_hex(16)


def without_token(output):
    """`output`, once checked not to contain the token: every output of a tool is checked."""
    assert TOKEN not in output, "the Hub token appears in a tool's output"
    return output


def run(args, env, timeout=120):
    """Run a project command (push script, bundle CLI) as a user would; returns (code, output)."""
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, without_token(p.stdout + p.stderr)


def push(bundle, repo_id, *options, env):
    code, out = run(["scripts/push_to_hub.py", str(bundle), "--repo-id", repo_id, *options], env)
    assert code == 0, out
    return out


def rehash(bundle, **meta_changes):
    """Record model.keras's sha256 (and any metadata changes) in metadata.json, as training does;
    the ONNX export of the model it replaced goes (the app then serves model.keras)."""
    from lungclf.bundle import sha256, write_json

    path = os.path.join(bundle, "metadata.json")
    meta = json.load(open(path))
    meta.update(meta_changes)
    meta["model"]["sha256"] = sha256(os.path.join(bundle, "model.keras"))
    if meta.pop("onnx", None):
        if os.path.exists(os.path.join(bundle, "model.onnx")):
            os.remove(os.path.join(bundle, "model.onnx"))
    write_json(path, meta)


def copy_bundle(tiny_bundle, folder):
    shutil.copytree(tiny_bundle["out"], folder)
    return folder


def predict(url, image, model):
    from gradio_client import Client, handle_file

    return label_id(Client(url, verbose=False).predict(handle_file(image), model, api_name="/predict")[0]["label"])


@pytest.fixture(scope="module")
def hub():
    with running(TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def hub_env(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}


@pytest.fixture(scope="module")
def published(tiny_bundle, hub_env, tmp_path_factory):
    """lab/tiny@v1 (the tiny bundle), lab/tiny@v2 (the same network with the blue and red
    outputs swapped, so it calls a blue image red) and lab/tiny-private@v1."""
    import keras

    root = tmp_path_factory.mktemp("published")
    v1 = copy_bundle(tiny_bundle, root / "v1")
    out_v1 = push(v1, "lab/tiny", "--tag", "v1", env=hub_env)

    v2 = copy_bundle(tiny_bundle, root / "v2")
    model = keras.saving.load_model(str(v2 / "model.keras"), compile=False)
    labels = json.load(open(v2 / "classes.json"))["labels"]
    kernel, bias = model.layers[-1].get_weights()
    order = list(range(len(labels)))
    blue, red = labels.index("blue"), labels.index("red")
    order[blue], order[red] = red, blue
    model.layers[-1].set_weights([kernel[:, order], bias[order]])
    model.save(str(v2 / "model.keras"))
    rehash(v2, name="tiny-v2")
    push(v2, "lab/tiny", "--tag", "v2", "--commit-message", "Swap the blue and red outputs", env=hub_env)

    private = copy_bundle(tiny_bundle, root / "private")
    rehash(private, name="tiny-private")
    push(private, "lab/tiny-private", "--tag", "v1", "--private", env=hub_env)
    return {"v1_output": out_v1, "folders": [v1, v2, private]}


@pytest.fixture(scope="module")
def hub_server(published, hub_env):
    """One app serving three Hub bundles: two tags of one repo and a private repo."""
    server = AppServer({**hub_env, "MODEL_REPO": "lab/tiny@v1,lab/tiny@v2,lab/tiny-private@v1"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def blue(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("images") / "blue.png")
    blob_image("blue", 4242).save(path)
    return path


# ---- what the local Hub refuses, as the Hub does ------------------------------------------

def commit_payload(summary, files):
    """A commit as the Hub's commit endpoint reads it (ndjson): each file given as `regular`
    content, base64 in the commit itself (path -> bytes), not uploaded with LFS."""
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}}]
    lines += [{"key": "file", "value": {"path": path, "encoding": "base64",
                                        "content": base64.b64encode(data).decode()}} for path, data in files.items()]
    return "\n".join(json.dumps(line) for line in lines).encode()


def post_to_hub(hub, path, body, content_type):
    """POST straight to the Hub's API (not through HfApi), with the token; returns the response."""
    from huggingface_hub.utils import get_session

    return get_session().post(f"{hub.url}{path}", content=body, timeout=60,
                              headers={"authorization": f"Bearer {TOKEN}", "content-type": content_type})


def commit_in_git(hub, repo_id, files):
    """Commit `files` as regular files through the raw commit endpoint; raises what the
    client would raise for the Hub's answer, else returns the new commit's id."""
    from huggingface_hub.utils import hf_raise_for_status

    response = post_to_hub(hub, f"/api/models/{repo_id}/commit/main", commit_payload("raw commit", files),
                           "application/x-ndjson")
    hf_raise_for_status(response, endpoint_name="commit")
    return response.json()["commitOid"]


@pytest.fixture
def empty_repo(hub, request):
    from huggingface_hub import HfApi

    repo_id = "lab/" + request.node.name.removeprefix("test_")[:60].strip("_").replace("_", "-")
    HfApi(endpoint=hub.url, token=TOKEN).create_repo(repo_id)
    return repo_id


def test_preupload_sends_binary_and_large_files_to_lfs_and_small_text_to_git(hub, empty_repo):
    def entry(path, sample, size):
        return {"path": path, "sample": base64.b64encode(sample).decode(), "size": size}

    files = [entry("notes.txt", b"plain text\n", 11),
             entry("tiny.bin", b"\x00\x01\x02", 3),  # binary: LFS at any size
             entry("big.csv", b"a,b\n1,2\n", 11 * 1024 * 1024),  # text, but over 10 MiB
             entry("model.keras", b"looks like text", 15)]  # .gitattributes sends *.keras to LFS
    response = post_to_hub(hub, f"/api/models/{empty_repo}/preupload/main", json.dumps({"files": files}),
                           "application/json")
    modes = {f["path"]: f["uploadMode"] for f in response.json()["files"]}
    assert modes == {"notes.txt": "regular", "tiny.bin": "lfs", "big.csv": "lfs", "model.keras": "lfs"}


def test_a_binary_file_over_1_mb_committed_in_git_is_refused_as_the_hub_refuses_it(hub, empty_repo):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import BadRequestError

    weights = b"\x00" + os.urandom(1_200_000)
    with pytest.raises(BadRequestError) as refused:
        commit_in_git(hub, empty_repo, {"notes.txt": b"fine\n", "weights.bin": weights})
    message = str(refused.value)
    assert "Bad request for commit endpoint:" in message
    assert "Your push was rejected because it contains binary files" in message
    assert "- weights.bin (ref: refs/heads/main)" in message and "notes.txt" not in message
    assert "notes.txt" not in HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(empty_repo)  # nothing committed


def test_any_file_over_10_mib_committed_in_git_is_refused(hub, empty_repo):
    from huggingface_hub.errors import BadRequestError

    table = b"0123456789abcdef,\n" * (11 * 1024 * 1024 // 18)  # text, 11 MiB
    with pytest.raises(BadRequestError) as refused:
        commit_in_git(hub, empty_repo, {"table.csv": table})
    assert "contains files larger than 10 MiB" in str(refused.value)
    assert "- table.csv (ref: refs/heads/main)" in str(refused.value)


def test_small_text_and_small_binary_files_may_be_committed_in_git(hub, empty_repo):
    from huggingface_hub import HfApi

    commit_in_git(hub, empty_repo, {"notes.txt": b"fine\n", "icon.bin": b"\x00" * 1000})
    assert {"notes.txt", "icon.bin"} <= set(HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(empty_repo))


def test_the_client_uploads_a_large_binary_file_with_lfs_and_downloads_it_back(hub, empty_repo, tmp_path):
    import hashlib

    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    weights = b"\x00" + os.urandom(2_000_000)
    api.upload_file(path_or_fileobj=weights, path_in_repo="weights/w.bin", repo_id=empty_repo)
    [entry] = [e for e in api.list_repo_tree(empty_repo, recursive=True) if e.path == "weights/w.bin"]
    assert entry.lfs is not None and entry.lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert entry.size == len(weights)
    downloaded = api.hf_hub_download(empty_repo, "weights/w.bin", cache_dir=str(tmp_path))
    assert open(downloaded, "rb").read() == weights  # through the redirect to the LFS storage
    attributes = open(api.hf_hub_download(empty_repo, ".gitattributes", cache_dir=str(tmp_path))).read()
    assert "weights/w.bin filter=lfs diff=lfs merge=lfs -text" in attributes  # git checks out the file


def test_a_pointer_to_lfs_content_never_uploaded_is_refused(hub, empty_repo):
    lines = [{"key": "header", "value": {"summary": "dangling pointer"}},
             {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 10}}]
    response = post_to_hub(hub, f"/api/models/{empty_repo}/commit/main",
                           "\n".join(json.dumps(line) for line in lines), "application/x-ndjson")
    assert response.status_code == 400 and "pointed to a file that does not exist" in response.json()["error"]


def test_a_client_trying_xet_is_told_to_use_lfs(hub, empty_repo):
    from huggingface_hub.utils import get_session

    response = get_session().get(f"{hub.url}/api/models/{empty_repo}/xet-write-token/main",
                                 headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 501 and "HF_HUB_DISABLE_XET=1" in response.json()["error"]


# ---- the round trip of a model bundle -------------------------------------------------------

@pytest.mark.slow
def test_push_prints_the_url_and_the_commit_it_tagged(published, hub, hub_env):
    from huggingface_hub import HfApi

    out = published["v1_output"]
    tagged = HfApi(endpoint=hub.url, token=TOKEN).repo_info("lab/tiny", revision="v1").sha
    assert f"published: {hub.url}/lab/tiny" in out
    assert f"commit:    {tagged} on main, tagged v1" in out
    assert "serve it:  MODEL_REPO=lab/tiny@v1 python app.py" in out


@pytest.mark.slow
def test_push_uploads_only_the_bundle_files_and_a_card_naming_the_repo(published, hub):
    from huggingface_hub import HfApi, ModelCard

    api = HfApi(endpoint=hub.url, token=TOKEN)
    files = set(api.list_repo_files("lab/tiny", revision="v1"))
    assert {"model.keras", "classes.json", "metadata.json", "README.md"} <= files
    assert "wrong_input.npz" in files  # the wrong-input check travels with the model
    assert "recipe.json" in files  # and the recipe that made it
    assert "model.onnx" in files  # the export, for the app and the page
    assert {f for f in files if not f.startswith("examples/")} <= {
        ".gitattributes", "model.keras", "classes.json", "metadata.json", "README.md", "wrong_input.npz",
        "recipe.json", "model.onnx",
        "figures/confusion_matrix.png", "figures/training_curves.png", "figures/reliability.png"}
    card = ModelCard.load(api.hf_hub_download("lab/tiny", "README.md", revision="v1"))
    assert 'snapshot_download("lab/tiny", revision="v1")' in card.text


@pytest.mark.slow
def test_push_stores_the_model_and_its_wrong_input_reference_with_lfs(published, hub):
    """The Hub refuses them in git (binary, and over 1 MB for the committed models)."""
    from huggingface_hub import HfApi

    from lungclf.bundle import sha256

    tree = {e.path: e for e in HfApi(endpoint=hub.url, token=TOKEN).list_repo_tree("lab/tiny", revision="v1",
                                                                                   recursive=True)}
    v1 = published["folders"][0]
    for name in ("model.keras", "wrong_input.npz"):
        assert tree[name].lfs is not None, f"{name} was committed in git, not LFS"
        assert tree[name].lfs.sha256 == sha256(os.path.join(v1, name))
    assert tree["metadata.json"].lfs is None  # text stays in git


@pytest.mark.slow
def test_publishing_leaves_the_source_bundle_byte_identical(tiny_bundle, hub, hub_env, tmp_path):
    """The card is rendered in a staging copy: publishing never edits the bundle folder
    (for a committed bundle, models/*/README.md would otherwise change on every push)."""
    import hashlib

    from huggingface_hub import HfApi

    folder = copy_bundle(tiny_bundle, tmp_path / "source")
    os.makedirs(folder / "examples", exist_ok=True)  # training put its own there too
    blob_image("blue", 7).save(folder / "examples" / "blue.png")
    (folder / "notes.txt").write_text("not a bundle file: neither uploaded nor touched\n")

    def snapshot():
        return {os.path.relpath(os.path.join(d, f), folder): hashlib.sha256(
                    open(os.path.join(d, f), "rb").read()).hexdigest()
                for d, _, files in os.walk(folder) for f in files}

    before = snapshot()
    out = push(folder, "lab/untouched", "--tag", "v1", env=hub_env)
    assert snapshot() == before
    api = HfApi(endpoint=hub.url, token=TOKEN)
    files = set(api.list_repo_files("lab/untouched", revision="v1"))
    assert "examples/blue.png" in files and "notes.txt" not in files
    card = open(api.hf_hub_download("lab/untouched", "README.md", revision="v1"), encoding="utf-8").read()
    assert 'snapshot_download("lab/untouched", revision="v1")' in card  # the uploaded card names the repo
    assert 'snapshot_download("lab/untouched"' not in (folder / "README.md").read_text(encoding="utf-8")
    sha = api.repo_info("lab/untouched", revision="v1").sha
    assert f"pinned:    MODEL_REPO=lab/untouched@{sha} python app.py" in out


@pytest.mark.slow
def test_app_serves_the_model_pushed_under_a_tag(hub_server, blue):
    assert predict(hub_server.url, blue, "tiny") == "blue"
    assert "serving tiny from lab/tiny@v1" in hub_server.output()


@pytest.mark.slow
def test_older_tag_still_serves_the_old_model_after_a_second_push(hub_server, hub, blue):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.repo_info("lab/tiny").sha == api.repo_info("lab/tiny", revision="v2").sha  # main moved on
    assert predict(hub_server.url, blue, "tiny-v2") == "red"  # v2 swapped the outputs
    assert predict(hub_server.url, blue, "tiny") == "blue"  # v1 still the old model


@pytest.mark.slow
def test_private_repo_is_served_with_the_token(hub_server, blue):
    assert predict(hub_server.url, blue, "tiny-private") == "blue"


@pytest.mark.slow
def test_private_repo_without_a_token_is_refused_clearly(published, hub_env):
    code, out = run(["-m", "lungclf.bundle", "lab/tiny-private@v1"], {**hub_env, "HF_TOKEN": ""})
    assert code != 0
    assert "model repo lab/tiny-private not found" in out and "set HF_TOKEN" in out
    assert "Traceback" not in out


@pytest.mark.slow
@pytest.mark.parametrize("spec, message", [
    ("lab/no-such-model", "model repo lab/no-such-model not found"),
    ("lab/tiny@v9", "revision 'v9' not found in lab/tiny"),
    ("lab/no-metadata", "not a model bundle, missing metadata.json"),
])
def test_missing_repo_revision_or_file_gives_a_clear_message(published, hub, hub_env, tiny_bundle,
                                                             tmp_path, spec, message):
    if spec == "lab/no-metadata":  # published without the script, which would refuse it
        from huggingface_hub import HfApi

        folder = copy_bundle(tiny_bundle, tmp_path / "incomplete")
        os.remove(folder / "metadata.json")
        api = HfApi(endpoint=hub.url, token=TOKEN)
        api.create_repo(spec, exist_ok=True)
        api.upload_folder(repo_id=spec, folder_path=folder, commit_message="no metadata")
    code, out = run(["-m", "lungclf.bundle", spec], hub_env)
    assert code != 0
    assert message in out and "Traceback" not in out


@pytest.mark.slow
def test_tampered_model_on_the_hub_stops_start_up(tiny_bundle, hub, hub_env, tmp_path):
    from huggingface_hub import HfApi

    push(copy_bundle(tiny_bundle, tmp_path / "b"), "lab/tampered", "--tag", "v1", env=hub_env)
    model = (tmp_path / "b" / "model.keras").read_bytes()
    HfApi(endpoint=hub.url, token=TOKEN).upload_file(
        path_or_fileobj=model + b"\0", path_in_repo="model.keras", repo_id="lab/tampered",
        commit_message="Replace model.keras")
    code, out = run_app_until_exit({**hub_env, "MODEL_REPO": "lab/tampered"})
    without_token(out)
    assert code != 0
    assert "lab/tampered: sha256 of model.keras does not match metadata.json" in out


@pytest.mark.slow
def test_bundle_with_a_lambda_layer_is_refused_by_safe_mode(tiny_bundle, hub_env, tmp_path):
    """The hash matches, so only Keras safe mode can catch the Python code in the model."""
    import keras

    folder = copy_bundle(tiny_bundle, tmp_path / "lambda")
    size = json.load(open(folder / "metadata.json"))["preprocessing"]["input_size"]
    inputs = keras.Input(shape=tuple(size))
    x = keras.layers.Lambda(lambda t: t * 2.0 - 1.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(str(folder / "model.keras"))
    rehash(folder)
    push(folder, "lab/lambda", "--tag", "v1", env=hub_env)
    code, out = run_app_until_exit({**hub_env, "MODEL_REPO": "lab/lambda@v1"})
    without_token(out)
    assert code != 0
    assert "lab/lambda@v1: model.keras refused by Keras safe mode loading" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_offline_start_serves_the_cached_snapshot_of_the_same_revision(hub_server, hub_env, blue):
    # hub_server filled the cache; now the Hub is unreachable (a closed port)
    offline = {**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    server = AppServer({**offline, "MODEL_REPO": "lab/tiny@v1"})
    try:
        assert predict(server.url, blue, "tiny") == "blue"
        log = without_token(server.output())
    finally:
        server.stop()
    assert "cannot be reached" in log and "using the cached snapshot of lab/tiny@v1" in log
    code, out = run(["-m", "lungclf.bundle", "lab/tiny@v3"], offline)  # a revision never pulled
    assert code != 0 and "no cached snapshot of revision 'v3'" in out


@pytest.mark.slow
def test_offline_start_without_a_cache_fails_fast_and_clearly(hub_env, tmp_path):
    env = {**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "MODEL_REPO": "lab/tiny@v1"}
    code, out = run_app_until_exit(env, timeout=90)  # no retrying for minutes: a hang guard
    without_token(out)
    assert code != 0
    assert "lab/tiny@v1: the Hub at" in out and "cannot be reached" in out
    assert "no cached snapshot of revision 'v1'" in out and "Traceback" not in out


@pytest.mark.slow
def test_model_card_metadata_is_valid_offline(tiny_bundle):
    from huggingface_hub import ModelCard

    text = open(os.path.join(tiny_bundle["out"], "README.md"), encoding="utf-8").read()
    assert card_metadata_errors(text) == []
    meta = tiny_bundle["meta"]
    data = ModelCard(text).data
    assert data.library_name == "keras" and data.pipeline_tag == "image-classification"
    assert data.license and data.datasets and data.tags and data.metrics == ["accuracy", "f1"]
    results = {r.metric_type: r for r in data.eval_results}
    assert results["accuracy"].metric_value == pytest.approx(meta["metrics"]["test"]["accuracy"], abs=1e-4)
    assert results["f1"].metric_value == pytest.approx(meta["metrics"]["test"]["macro_f1"], abs=1e-4)
    assert {r.dataset_split for r in data.eval_results} == {meta["split"]["name"]}
    assert "not for diagnosis" in text.lower()
    broken = text.replace("  - task:\n      type: image-classification\n", "  - task: {}\n", 1)
    assert broken != text and card_metadata_errors(broken)  # the check can fail


@pytest.mark.slow
def test_push_stops_when_the_hub_refuses_the_card(tiny_bundle, hub_env, tmp_path):
    folder = copy_bundle(tiny_bundle, tmp_path / "bad-licence")
    meta = json.load(open(folder / "metadata.json"))
    meta["data"]["license"] = "Research Only!"
    rehash(folder, data=meta["data"])
    code, out = run(["scripts/push_to_hub.py", str(folder), "--repo-id", "lab/bad-card"], hub_env)
    assert code != 0
    assert "the Hub refused the model card's metadata" in out and "license" in out


@pytest.mark.slow
def test_push_without_a_token_says_how_to_log_in(tiny_bundle, hub_env):
    code, out = run(["scripts/push_to_hub.py", tiny_bundle["out"], "--repo-id", "lab/x"],
                    {**hub_env, "HF_TOKEN": ""})
    assert code != 0 and "set HF_TOKEN" in out and "hf auth login" in out


@pytest.mark.slow
def test_the_token_never_appears_in_output_or_files(published, hub_server, hub_env):
    """Every tool's output is checked as it comes (without_token); here the app's log, the
    published folders and the Hub cache."""
    assert "lab/tiny" in published["v1_output"]  # a real output, so the check below can fail
    without_token(published["v1_output"])
    without_token(hub_server.output())
    needle = TOKEN.encode()
    folders = [hub_env["HF_HOME"], *map(str, published["folders"])]
    leaked = [os.path.join(d, f) for folder in folders for d, _, files in os.walk(folder) for f in files
              if needle in open(os.path.join(d, f), "rb").read()]
    assert not leaked
