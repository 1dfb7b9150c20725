"""The app on a Space: scripts/push_space.py puts it on the Hub, and what comes back is this
repository's app, byte for byte, with its model files stored as the Hub requires, and it runs.

The real huggingface_hub client (in the push script and here) talks to tests/local_hub.py
on 127.0.0.1 through HF_ENDPOINT, with Git LFS for large and binary files
(HF_HUB_DISABLE_XET=1); the local Hub refuses a binary file over 1 MB or any file over
10 MiB committed in git, as the Hub does (tests/test_hub.py). The Space is downloaded back
with snapshot_download(repo_type="space") into a temporary folder, and `python app.py`
runs there as the Space would run it.
"""

import hashlib
import os
import secrets
import subprocess
import sys

import pytest

from scripts.push_space import space_files
from tests.helpers import ROOT, AppServer, predict
from tests.local_hub import running

pytestmark = pytest.mark.hub

TOKEN = "hf_test" + secrets.token_hex(16)
SPACE = "lab/lung-app"


def push(repo_id, env, *options):
    """Run the push command as a user would; returns (exit status, output), checked not to show the token."""
    p = subprocess.run([sys.executable, "scripts/push_space.py", repo_id, *options], cwd=ROOT,
                       env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    output = p.stdout + p.stderr
    assert TOKEN not in output, "the Hub token appears in the push command's output"
    return p.returncode, output


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def hub():
    with running(TOKEN, free_accounts={"free-user"}) as server:
        yield server


@pytest.fixture(scope="module")
def hub_env(hub, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_XET": "1"}


@pytest.fixture(scope="module")
def pushed(hub, hub_env):
    """The Space pushed once, after a stray file was put there by hand: its push output."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(SPACE, repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"not part of the app\n", path_in_repo="notes/stray.txt", repo_id=SPACE,
                    repo_type="space")
    code, out = push(SPACE, hub_env)
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def space(pushed, hub, tmp_path_factory):
    """The Space downloaded back into a folder of its own: {"folder", "files" (what came down)}."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(SPACE, repo_type="space", local_dir=str(tmp_path_factory.mktemp("space")),
                               endpoint=hub.url, token=TOKEN)
    files = {os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
             for d, _, names in os.walk(folder) for f in names}
    return {"folder": folder, "files": {f for f in files if not f.startswith(".cache/")}}  # .cache: the client's


def test_this_repository_keeps_its_model_files_in_git_not_lfs():
    """No LFS filter here: a clone holds the actual model files, whatever the Hub requires."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    assert not [p for p in tracked if os.path.basename(p) == ".gitattributes"
                and "filter=lfs" in open(os.path.join(ROOT, p)).read()]
    for model in [p for p in tracked if p.startswith("models/") and p.endswith("/model.keras")]:
        size = subprocess.run(["git", "cat-file", "-s", f"HEAD:{model}"], cwd=ROOT, capture_output=True, text=True)
        assert int(size.stdout) > 200, f"{model} in git is a pointer, not the model"  # a pointer is ~130 bytes


@pytest.mark.slow
def test_push_prints_the_space_url_and_the_commit(pushed, hub):
    from huggingface_hub import HfApi

    head = HfApi(endpoint=hub.url, token=TOKEN).space_info(SPACE).sha
    assert f"published: {hub.url}/spaces/{SPACE}" in pushed
    assert f"commit:    {head} on main" in pushed
    assert "3 verified bundles (chest_ct, iq_othnccd, lc25000)" in pushed


@pytest.mark.slow
def test_the_space_holds_the_app_its_package_and_the_committed_bundles_and_nothing_else(space):
    held = space["files"] - {".gitattributes"}  # the Hub's, naming the LFS files
    assert held == set(space_files())
    assert {"app.py", "requirements.txt", "README.md", "LICENSE", "lungclf/inference.py",
            "models/lc25000/model.keras", "models/chest_ct/wrong_input.npz"} <= held
    assert not [p for p in held if p.split("/")[0] in ("tests", "training", "recipes", "scripts", "docs", "notes")]


@pytest.mark.slow
def test_every_file_of_the_space_matches_the_repository_byte_for_byte(space):
    different = [p for p in space["files"] - {".gitattributes"}
                 if digest(os.path.join(space["folder"], p)) != digest(os.path.join(ROOT, p))]
    assert not different


@pytest.mark.slow
def test_the_model_files_went_to_the_space_through_lfs(pushed, hub):
    from huggingface_hub import HfApi

    tree = {e.path: e for e in HfApi(endpoint=hub.url, token=TOKEN).list_repo_tree(
        SPACE, repo_type="space", recursive=True) if e.path in space_files()}
    big = [p for p in tree if p.endswith(("/model.keras", "/wrong_input.npz"))]
    assert len(big) == 6
    for path in big:
        assert tree[path].lfs is not None, f"{path} was committed in git"
        assert tree[path].lfs.sha256 == digest(os.path.join(ROOT, path))
    assert tree["app.py"].lfs is None and tree["README.md"].lfs is None  # text stays in git


@pytest.mark.slow
def test_the_downloaded_space_serves_predict(space):
    """`python app.py` in the downloaded folder: the Space's own files, nothing from this checkout."""
    folder = space["folder"]
    example = os.path.join(folder, "models", "lc25000", "examples", "lung_aca_1.jpeg")
    command = ["sh", "-c", 'cd "$0" && exec "$1" app.py', folder, sys.executable]
    with AppServer({"MODEL_REPO": ""}, cmd=command, timeout=240) as server:
        result = predict(server.url, example)
        log = server.output()
    confidences = {c["label"]: c["confidence"] for c in result["confidences"]}
    assert len(confidences) == 3 and abs(sum(confidences.values()) - 1) < 1e-4
    assert result["label"] == max(confidences, key=confidences.get)
    assert os.path.join(folder, "models", "lc25000") in log  # served from the downloaded bundle


@pytest.mark.slow
def test_a_file_that_is_not_part_of_the_app_is_removed_from_the_space(pushed, hub):
    from huggingface_hub import HfApi

    assert "notes/stray.txt" not in HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(SPACE, repo_type="space")


@pytest.mark.slow
def test_creating_a_gradio_space_without_a_paid_plan_says_so(hub_env):
    code, out = push("free-user/lung-app", hub_env)
    assert code == 1
    assert "HTTP 402" in out and "paid plan" in out and "PRO" in out
    assert "Traceback" not in out


def test_push_without_a_token_says_how_to_log_in(hub_env):
    code, out = push(SPACE, {**hub_env, "HF_TOKEN": ""})
    assert code == 1 and "set HF_TOKEN" in out and "hf auth login" in out
