"""Publish a model bundle to a Hugging Face Hub model repo, and print its URL and commit.

    python scripts/push_to_hub.py models/lc25000 --repo-id OWNER/NAME --tag v1
    python scripts/push_to_hub.py BUNDLE_DIR --repo-id OWNER/NAME --private --revision dev \\
        --commit-message "Retrained on more tiles"

What it does, in order, stopping with a clear message at the first problem:
  1. copies the bundle's files (model.keras, classes.json, metadata.json, README.md,
     figures/, examples/) into a temporary staging folder and verifies that copy as the
     app will (files, schema version, sha256 of model.keras);
  2. renders the model card there (STAGING/README.md, from metadata.json) so its "How to
     use" names this repo and tag, and has the Hub validate the card's YAML metadata
     (ModelCard.validate);
  3. creates the repo (and the branch given by --revision) if needed;
  4. uploads the staging folder with HfApi.upload_folder (bundle files that are no longer
     in the bundle, e.g. an old figure, are deleted from the repo; other files are kept);
  5. tags that commit (--tag). The script refuses an existing tag rather than move it, but
     anyone with write access can move a tag on the Hub; a commit sha cannot be moved, so
     pin `MODEL_REPO=OWNER/NAME@<commit sha>` (printed at the end) for anything that matters.

BUNDLE_DIR itself is only read: publishing leaves every file in it byte-identical, so a
committed bundle (models/*/) is not changed by publishing it.

upload_folder asks the Hub which files it stores outside git (at least any binary file over
1 MB and any file over 10 MB, which it refuses in git) and sends those with Xet, or with
Git LFS when hf_xet is not installed or HF_HUB_DISABLE_XET=1.

The token comes from HF_TOKEN or `hf auth login` and is never printed or written.
HF_ENDPOINT selects another Hub (the tests use tests/local_hub.py, which speaks Git LFS
only: HF_HUB_DISABLE_XET=1). Then serve it with `MODEL_REPO=OWNER/NAME@TAG python app.py`.
To put the whole app, with the committed bundles, on a Space: scripts/push_space.py.

The browser page (web/, docs/web.md) on a static Space, free to host, nothing uploaded:

    python scripts/push_to_hub.py models/lc25000 --repo-id OWNER/NAME --tag v1 --web-space OWNER/NAME-web
    python scripts/push_to_hub.py --web-space OWNER/SPACE --model OWNER/NAME@v1   # a published bundle

--web-space creates (space_sdk="static") or updates that Space with the page (web/index.html,
web/app.js, web/jet.json, lungclf/overlay.js, onnxruntime-web's WebAssembly build from
node_modules at the same paths, as in this repository) and web/config.json naming the
bundle's files at one commit, https://huggingface.co/OWNER/NAME/resolve/COMMIT/: a tag or
branch given to --model is resolved to its commit first, so the page's model cannot change
under it. The bundle must hold what the page reads (model.onnx, recorded in metadata.json by
`python -m training.export BUNDLE`, and the app's own wrong_input.npz); the bundle upload above
includes those files.
"""

import argparse
import fnmatch
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lungclf.bundle import ALLOW_PATTERNS, BundleError, verify  # noqa: E402
from lungclf.wrong_input import FILE as REFERENCE  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What earlier exports wrote for the page (a copy of wrong_input.npz), removed from the repo on push.
STALE = ["wrong_input.json", "wrong_input.bin"]
# The static Space: the page and what it loads, at their paths in this repository.
WEB_FILES = ["web/index.html", "web/app.js", "web/jet.json", "lungclf/overlay.js",
             "node_modules/onnxruntime-web/package.json",  # its version and licence (MIT)
             "node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs",
             "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",  # imported by the above
             "node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm"]
NEEDED_BY_PAGE = ["metadata.json", "classes.json", "model.onnx"]  # and the reference, where there is one


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


HINTS = {401: "the token was refused: check HF_TOKEN or run `hf auth login`",
         403: "the token may not write to this repo: use a token with write access"}


def hub_refusal(e, hints=HINTS):
    """One line for an HfHubHTTPError: the Hub's status, the first line of its message and
    what to do about that status (`hints`: {status: what to do})."""
    from huggingface_hub import constants

    status = getattr(e.response, "status_code", None)
    server = (e.server_message or "").strip().splitlines()
    return (f"the Hub at {constants.ENDPOINT} answered HTTP {status}{': ' + server[0] if server else ''}"
            f"{'; ' + hints[status] if status in hints else ''}")


def stage(bundle, staging):
    """Copy the bundle's files (those ALLOW_PATTERNS names) from `bundle` into `staging`,
    keeping their relative paths; the source folder is only read."""
    for folder, dirs, files in os.walk(bundle):
        dirs.sort()
        for name in sorted(files):
            source = os.path.join(folder, name)
            rel = os.path.relpath(source, bundle).replace(os.sep, "/")
            if os.path.islink(source) or not any(fnmatch.fnmatch(rel, p) for p in ALLOW_PATTERNS):
                continue
            target = os.path.join(staging, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)


def publish(args):
    with tempfile.TemporaryDirectory(prefix="push-to-hub-") as staging:
        return _publish(args, staging)


def _publish(args, staging):
    from huggingface_hub import HfApi, ModelCard, constants, get_token
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from training import card

    endpoint = constants.ENDPOINT
    if get_token() is None:
        fail("no Hugging Face token: set HF_TOKEN to a token with write access, or run "
             "`hf auth login`")
    try:
        stage(args.bundle, staging)
        meta, classes = verify(staging, args.bundle)  # what is uploaded is what was checked
    except BundleError as e:
        fail(f"not publishing an invalid bundle: {e}")
    print(f"verified {args.bundle}: {meta.name}, {len(classes.labels)} classes, "
          f"model.keras sha256 {meta.model.sha256[:12]}...")

    api = HfApi()
    branch = args.revision or constants.DEFAULT_REVISION
    pinned = args.tag or (None if branch == constants.DEFAULT_REVISION else branch)
    if args.tag:
        try:
            api.repo_info(args.repo_id, revision=args.tag)
            fail(f"tag {args.tag!r} already exists in {args.repo_id}; this script never moves a "
                 "tag (whatever serves it would change model): choose a new tag")
        except (RepositoryNotFoundError, RevisionNotFoundError):
            pass
    readme = card.write(staging, args.repo_id, pinned)  # the staged copy, never BUNDLE/README.md
    ModelCard.load(readme).validate()
    print(f"model card names {args.repo_id}{'@' + pinned if pinned else ''}; its metadata "
          f"passed the Hub's check")

    api.create_repo(args.repo_id, private=args.private or None, exist_ok=True)
    if branch != constants.DEFAULT_REVISION:
        api.create_branch(args.repo_id, branch=branch, exist_ok=True)
    message = args.commit_message or (f"Upload bundle {meta.name} (model.keras sha256 "
                                      f"{meta.model.sha256[:12]})")
    commit = api.upload_folder(repo_id=args.repo_id, folder_path=staging, revision=branch,
                               commit_message=message, allow_patterns=ALLOW_PATTERNS,
                               delete_patterns=ALLOW_PATTERNS + STALE)
    if args.tag:
        api.create_tag(args.repo_id, tag=args.tag, revision=commit.oid,
                       tag_message=f"bundle {meta.name}")
    spec = f"{args.repo_id}@{pinned or commit.oid}"
    private = api.repo_info(args.repo_id, revision=commit.oid).private
    print(f"published: {endpoint}/{args.repo_id}{' (private)' if private else ''}")
    print(f"commit:    {commit.oid} on {branch}{f', tagged {args.tag}' if args.tag else ''}")
    print(f"serve it:  MODEL_REPO={spec} python app.py")
    if spec != f"{args.repo_id}@{commit.oid}":
        print(f"pinned:    MODEL_REPO={args.repo_id}@{commit.oid} python app.py"
              f"   (a commit cannot be moved; a tag or branch can)")
    return {"commit": commit.oid, "spec": spec}


def space_readme(space_id, model_repo, commit, meta):
    """The static Space's README.md: the header that makes it a static Space serving the page."""
    return (f"---\ntitle: {meta.get('name', model_repo.split('/')[1])} in your browser\nemoji: 🫁\n"
            "colorFrom: blue\ncolorTo: gray\nsdk: static\napp_file: web/index.html\nlicense: mit\n"
            f"models:\n- {model_repo}\npinned: false\n---\n\n"
            f"The model bundle [{model_repo}]({constants_endpoint()}/{model_repo}/tree/{commit}) (commit "
            f"`{commit[:12]}`) running in the visitor's browser with ONNX Runtime Web: the image never leaves "
            "the visitor's computer.\n\n**For research and education only. Not a medical device and not for "
            "diagnosis.**\n")


def constants_endpoint():
    from huggingface_hub import constants

    return constants.ENDPOINT


def web_space(space_id, model_spec, private=False, commit_message=None):
    """Create or update the static Space `space_id` serving web/ for the bundle `model_spec`
    (OWNER/NAME@REVISION; the revision is pinned to its commit). Returns {"url", "commit",
    "model", "files"}."""
    from huggingface_hub import HfApi, hf_hub_download

    repo, _, revision = model_spec.partition("@")
    api = HfApi()
    commit = api.repo_info(repo, revision=revision or None).sha  # a tag or branch -> its commit
    held = set(api.list_repo_files(repo, revision=commit))
    with open(hf_hub_download(repo, "metadata.json", revision=commit), encoding="utf-8") as f:
        meta = json.load(f)
    needed = NEEDED_BY_PAGE + ([meta["wrong_input"].get("file", REFERENCE)] if meta.get("wrong_input") else [])
    missing = [f for f in needed if f not in held]
    if missing or not meta.get("onnx"):
        fail(f"{repo}@{commit[:12]} lacks what the page reads ({', '.join(missing) or 'onnx in metadata.json'}): "
             "export the bundle (python -m training.export BUNDLE) and publish it again")
    absent = [f for f in WEB_FILES if not os.path.isfile(os.path.join(ROOT, f))]
    if absent:
        fail(f"missing {', '.join(absent)} (run `npm ci` for onnxruntime-web)")
    base = f"{constants_endpoint()}/{repo}/resolve/{commit}/"
    with tempfile.TemporaryDirectory(prefix="web-space-") as staging:
        for rel in WEB_FILES:
            os.makedirs(os.path.join(staging, os.path.dirname(rel)), exist_ok=True)
            shutil.copyfile(os.path.join(ROOT, rel), os.path.join(staging, rel))
        with open(os.path.join(staging, "web", "config.json"), "w", encoding="utf-8") as f:
            json.dump({"model": base}, f, indent=1)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(space_readme(space_id, repo, commit, meta))
        files = sorted(WEB_FILES + ["web/config.json", "README.md"])
        size = sum(os.path.getsize(os.path.join(staging, f)) for f in files)
        print(f"staged the page ({len(files)} files, {size / 1e6:.1f} MB) for {repo}@{commit}")
        api.create_repo(space_id, repo_type="space", space_sdk="static", private=private or None, exist_ok=True)
        done = api.upload_folder(repo_id=space_id, repo_type="space", folder_path=staging, delete_patterns="*",
                                 commit_message=commit_message or f"The page for {repo}@{commit[:12]}")
    url = f"{constants_endpoint()}/spaces/{space_id}"
    print(f"web space: {url}")
    print(f"commit:    {done.oid}; the page loads {base}")
    return {"url": url, "commit": done.oid, "model": base, "files": files}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle folder written by `python -m training.train --out`")
    p.add_argument("--repo-id", help="Hub model repo, OWNER/NAME (created if missing)")
    p.add_argument("--tag", help="tag the new commit, e.g. v1; serve it with MODEL_REPO=OWNER/NAME@v1")
    p.add_argument("--private", action="store_true", help="create the repo private (the app then needs HF_TOKEN)")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (default main; created if missing)")
    p.add_argument("--commit-message", help="commit message (default names the bundle and its sha256)")
    p.add_argument("--web-space", metavar="OWNER/SPACE",
                   help="also create or update this static Space serving the browser page (web/) for the bundle")
    p.add_argument("--model", metavar="OWNER/NAME@REVISION",
                   help="with --web-space and no BUNDLE: the published bundle the page loads")
    args = p.parse_args(argv)
    ids = [("--repo-id", args.repo_id), ("--web-space", args.web_space), ("--model", (args.model or "").split("@")[0] or None)]
    for flag, value in ids:
        if value is not None and (value.count("/") != 1 or not all(value.split("/"))):
            p.error(f"{flag} must look like OWNER/NAME")
    if args.bundle and not args.repo_id:
        p.error("a BUNDLE needs --repo-id")
    if not args.bundle and not (args.web_space and args.model):
        p.error("give a BUNDLE with --repo-id, or --web-space with --model OWNER/NAME@REVISION")

    from httpx2 import TransportError
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        result = publish(args) if args.bundle else {}
        if args.web_space:
            from huggingface_hub import get_token

            if get_token() is None:
                fail("no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login`")
            model = f"{args.repo_id}@{result['commit']}" if args.bundle else args.model
            result["web_space"] = web_space(args.web_space, model, args.private,
                                            None if args.bundle else args.commit_message)
        return result
    except HfHubHTTPError as e:
        fail(hub_refusal(e))
    except ValueError as e:  # ModelCard.validate: the Hub's answer lists the problems
        try:
            problems = "; ".join(err["message"] for err in json.loads(str(e))["errors"])
        except (ValueError, KeyError, TypeError):
            problems = str(e).strip()[:500]
        fail(f"the Hub refused the model card's metadata: {problems}")
    except TransportError as e:
        fail(f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__})")


if __name__ == "__main__":
    main()
