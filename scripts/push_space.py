"""Put this app on a Hugging Face Space (the code, the committed model bundles and the
README's Space header) through huggingface_hub's upload API, and print the Space's URL and
the commit.

    python scripts/push_space.py OWNER/NAME
    python scripts/push_space.py OWNER/NAME --private --revision dev --commit-message "New examples"

What the Space gets (space_files lists it), and nothing else: no tests, training, recipes,
docs, data or caches:

    app.py, requirements.txt, LICENSE, README.md   the app, what the Space installs, and the
                                                    YAML header that configures the Space
                                                    (sdk: gradio, sdk_version, app_file,
                                                    python_version)
    lungclf/                                        the serving package
    models/NAME/...                                 each committed bundle, only the files the
                                                    app loads (lungclf.bundle.ALLOW_PATTERNS)

The files are those git tracks (so a bundle you trained into models/ but never committed
stays here), with their content as it is on disk; uncommitted changes are named before the
upload. In order, stopping with a clear message at the first problem:
  1. lists the files and copies them into a temporary staging folder; checks the README's
     header (sdk gradio, an app_file that is uploaded) and verifies each bundle in the copy
     as the app will (files, schema, sha256 of model.keras);
  2. creates the Space (create_repo with repo_type="space", space_sdk="gradio"; --private)
     if it does not exist, and the branch given by --revision;
  3. uploads the staging folder (upload_folder), deleting from the Space every file that is
     no longer in the list, so the Space holds exactly these files.

The upload API asks the Hub which files it stores outside git (at least any binary file
over 1 MB and any file over 10 MB, which it refuses in git: here the model.keras files and
the CT models' wrong_input.npz) and sends those with Xet, or with Git LFS when hf_xet is not
installed or HF_HUB_DISABLE_XET=1. A plain `git push` of this repository to a Space is
refused, since this repository keeps its model files as ordinary git files.

Creating a Gradio Space needs a paid plan on the Hub (PRO for a personal account;
docs/publishing.md says what the Hub's docs say and when they were read); for an account
without one the Hub answers HTTP 402, and this script says so. A Space runs its main
branch: a push to another branch (--revision) is stored, not served.

The token comes from HF_TOKEN or `hf auth login` and is never printed or written.
HF_ENDPOINT selects another Hub (the tests use tests/local_hub.py).
"""

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lungclf.bundle import ALLOW_PATTERNS, BundleError, verify  # noqa: E402
from scripts.push_to_hub import HINTS, fail, hub_refusal  # noqa: E402  (one wording for the Hub's refusals)

SPACE_HINTS = HINTS | {
    402: "the Hub requires a paid plan to create a Gradio Space (PRO for a personal account, "
         "Team or Enterprise for an organization); docs/publishing.md has other ways to host the app",
    403: "the token may not write to this Space: use a token with write access"}

TOP_FILES = ("app.py", "requirements.txt", "LICENSE", "README.md")
PACKAGES = ("lungclf/",)


class SpaceError(RuntimeError):
    """What stops a push before anything is uploaded; the message says what and where."""


def git(*args, root=ROOT):
    p = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if p.returncode != 0:
        raise SpaceError(f"`git {' '.join(args)}` failed in {root}: {p.stderr.strip() or p.returncode} "
                         "(this script uploads the files git tracks: run it in a clone of the repository)")
    return p.stdout


def space_files(root=ROOT):
    """The paths (relative, with /) that make the Space: the app's files, the serving package
    and each committed bundle's files that the app loads, among the files git tracks."""
    chosen = []
    for path in git("ls-files", "-z", root=root).split("\0"):
        if path in TOP_FILES or path.startswith(PACKAGES):
            chosen.append(path)
        elif path.startswith("models/") and path.count("/") >= 2:
            rel = path.split("/", 2)[2]
            if any(fnmatch.fnmatch(rel, pattern) for pattern in ALLOW_PATTERNS):
                chosen.append(path)
    missing = [f for f in TOP_FILES if f not in chosen]
    if missing:
        raise SpaceError(f"{root}: git tracks no {', '.join(missing)}")
    return sorted(p for p in chosen if os.path.isfile(os.path.join(root, p)))


def bundles(files):
    """The bundle folders (models/NAME) among `files`."""
    return sorted(os.path.dirname(f) for f in files if f.startswith("models/") and f.count("/") == 2
                  and f.endswith("/metadata.json"))


def check_header(staging, files):
    """The README's YAML header must make a Gradio Space that runs an uploaded file."""
    from huggingface_hub import SpaceCard

    data = SpaceCard.load(os.path.join(staging, "README.md")).data
    if data.get("sdk") != "gradio":
        raise SpaceError(f"README.md's header says sdk: {data.get('sdk')!r}; this app needs sdk: gradio")
    app_file = data.get("app_file") or "app.py"
    if app_file not in files:
        raise SpaceError(f"README.md's header runs app_file {app_file!r}, which is not uploaded")
    return data


def stage(root, files, staging):
    """Copy `files` from `root` into `staging`, then check the copy: the README's header, and
    each bundle as the app will. What is uploaded is what was checked."""
    for rel in files:
        target = os.path.join(staging, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(root, *rel.split("/")), target)
    header = check_header(staging, files)
    for folder in bundles(files):
        verify(os.path.join(staging, folder), folder)  # raises BundleError, naming the bundle and the check
    return header


def publish(repo_id, private=False, revision=None, commit_message=None, root=ROOT):
    """Push the Space; returns {"url", "commit", "branch", "private", "files"}. Raises SpaceError,
    BundleError, or the client's errors (HfHubHTTPError ...)."""
    from huggingface_hub import HfApi, constants

    files = space_files(root)
    changed = [line[3:] for line in git("status", "--porcelain", "--", *files, root=root).splitlines()]
    if changed:
        print(f"note: uploading uncommitted changes, as they are on disk: {', '.join(changed)}")
    with tempfile.TemporaryDirectory(prefix="push-space-") as staging:
        header = stage(root, files, staging)
        size = sum(os.path.getsize(os.path.join(staging, f)) for f in files)
        names = [os.path.basename(b) for b in bundles(files)]
        print(f"staged {len(files)} files, {size / 1e6:.1f} MB: the app, lungclf/ and {len(names)} verified "
              f"bundles ({', '.join(names)}); Gradio {header.get('sdk_version') or '(unpinned)'}")

        api = HfApi()
        branch = revision or constants.DEFAULT_REVISION
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private or None, exist_ok=True)
        if branch != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, repo_type="space", branch=branch, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=staging, revision=branch,
                                   commit_message=commit_message or f"Upload the app and {len(names)} bundles",
                                   delete_patterns="*")
    info = api.space_info(repo_id, revision=commit.oid)
    return {"url": f"{constants.ENDPOINT}/spaces/{repo_id}", "commit": commit.oid, "branch": branch,
            "private": bool(info.private), "files": files}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the Space (created if missing)")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--revision", metavar="BRANCH", help="branch to commit to (default main, which the Space runs)")
    p.add_argument("--commit-message", help="commit message (default names the bundles)")
    args = p.parse_args(argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        p.error("the Space must look like OWNER/NAME")

    from httpx2 import TransportError
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if get_token() is None:
        fail("no Hugging Face token: set HF_TOKEN to a token with write access, or run `hf auth login`")
    try:
        result = publish(args.repo_id, args.private, args.revision, args.commit_message)
    except (SpaceError, BundleError) as e:
        fail(f"not pushing the Space: {e}")
    except HfHubHTTPError as e:
        fail(hub_refusal(e, SPACE_HINTS))
    except TransportError as e:
        fail(f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__})")
    print(f"published: {result['url']}{' (private)' if result['private'] else ''}")
    print(f"commit:    {result['commit']} on {result['branch']}")
    if result["branch"] != constants.DEFAULT_REVISION:
        print(f"note:      the Space runs main; merge {result['branch']} into main to serve this commit")
    return result


if __name__ == "__main__":
    main()
