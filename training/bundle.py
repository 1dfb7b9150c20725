"""The model bundle: the folder that training writes and the app serves.

    model.keras     Keras 3 native format, loadable with safe_mode=True
    classes.json    {"labels": [...], "names": {label: readable name}}
    metadata.json   schema, preprocessing spec, data and split summary, metrics,
                    calibration temperature, library versions, sha256 of model.keras
    README.md       the model card (training.card)
    figures/        confusion matrix, training curves, reliability diagram

`resolve` turns a MODEL_REPO entry (a folder, or a Hub repo id with optional @revision)
into a local folder, pulling only the bundle's files of that revision from the Hub (or,
when the Hub cannot be reached, from the cache, saying so); `verify` checks a folder
before anything is loaded from it; `load` does both and returns a ready Bundle. Every
refusal is a BundleError whose message says which check failed.

    python -m training.bundle FOLDER_OR_REPO[@REVISION]   # verify and print a summary
"""

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass

SCHEMA = "lung-classifier-bundle/1"
FILES = ("model.keras", "classes.json", "metadata.json", "README.md")
ALLOW_PATTERNS = ["model.keras", "classes.json", "metadata.json", "README.md", "figures/*",
                  "examples/*"]

log = logging.getLogger("bundle")


class BundleError(RuntimeError):
    """A bundle that cannot be served; the message names the bundle and the failed check."""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(spec):
    """A MODEL_REPO entry -> local folder. Folders are used as they are; anything else is
    a Hub repo id, `owner/name` or `owner/name@revision`, pulled with `pull`."""
    spec = spec.strip()
    if os.path.isdir(spec):
        return spec
    if spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", "", 1):
        raise BundleError(f"{spec}: no such bundle folder")
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise BundleError(f"{spec}: not a folder, and not a Hub repo id like owner/name[@revision]")
    return pull(repo_id, revision or None, spec)


def pull(repo_id, revision=None, spec=None):
    """Download only the bundle's files of one revision of a Hub model repo; returns the
    snapshot folder in the Hugging Face cache (HF_HUB_CACHE).

    The Hub (HF_ENDPOINT) is asked once, with a timeout (HF_HUB_ETAG_TIMEOUT, 10 s), which
    commit the revision is. When it cannot be reached, the cached snapshot of that same
    revision is used and the log says so; without one this fails at once, no retries.
    Private repos need HF_TOKEN (or `hf auth login`)."""
    from httpx2 import TransportError
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    spec = spec or (f"{repo_id}@{revision}" if revision else repo_id)
    rev = revision or constants.DEFAULT_REVISION
    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError:
        raise BundleError(f"{spec}: gated model repo on {constants.ENDPOINT}; set HF_TOKEN to a token "
                          "with access") from None
    except RepositoryNotFoundError:
        raise BundleError(f"{spec}: model repo {repo_id} not found on {constants.ENDPOINT} (if it is "
                          "private, set HF_TOKEN to a token that can read it)") from None
    except RevisionNotFoundError:
        raise BundleError(f"{spec}: revision {rev!r} not found in {repo_id} (a branch, tag or "
                          "commit id)") from None
    except RemoteEntryNotFoundError:
        raise BundleError(f"{spec}: a file of the bundle listed in {repo_id}@{rev} cannot be "
                          "downloaded") from None
    except (TransportError, OfflineModeIsEnabled, HfHubHTTPError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HfHubHTTPError) and status is not None and status < 500:
            raise BundleError(f"{spec}: the Hub at {constants.ENDPOINT} refused the request "
                              f"(HTTP {status}); check HF_TOKEN") from None
        reason = "HF_HUB_OFFLINE is set" if isinstance(e, OfflineModeIsEnabled) else (
            f"HTTP {status}" if status else type(e).__name__)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                   local_files_only=True)
    except IncompleteSnapshotError as e:  # e.g. figures missing: verify() names what matters
        folder = e.snapshot_path
    except LocalEntryNotFoundError:
        raise BundleError(f"{spec}: the Hub at {constants.ENDPOINT} cannot be reached ({reason}) and "
                          f"no cached snapshot of revision {rev!r} is in HF_HUB_CACHE") from None
    log.warning("%s: the Hub at %s cannot be reached (%s); using the cached snapshot of %s@%s "
                "(commit %s)", spec, constants.ENDPOINT, reason, repo_id, rev, os.path.basename(folder))
    return folder


@dataclass
class Bundle:
    name: str
    folder: str
    model: object
    labels: list
    names: dict
    metadata: dict

    @property
    def input_size(self):
        return int(self.metadata["preprocessing"]["input_size"][0])

    @property
    def temperature(self):
        return float(self.metadata.get("calibration", {}).get("temperature", 1.0))


def _read_json(folder, name, spec):
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BundleError(f"{spec}: {name} is unreadable ({type(e).__name__})") from None


def verify(folder, spec=None):
    """Check a bundle folder without loading the model: files, schema, sha256.
    Returns (metadata, classes)."""
    spec = spec or folder
    missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise BundleError(f"{spec}: not a model bundle, missing {', '.join(missing)}")
    meta = _read_json(folder, "metadata.json", spec)
    classes = _read_json(folder, "classes.json", spec)
    if meta.get("schema") != SCHEMA:
        raise BundleError(f"{spec}: metadata schema is {meta.get('schema')!r}, expected {SCHEMA!r}")
    try:
        size = meta["preprocessing"]["input_size"]
        labels = classes["labels"]
        expected = meta["model"]["sha256"]
        assert isinstance(labels, list) and labels and len(size) == 3
    except (KeyError, TypeError, AssertionError):
        raise BundleError(f"{spec}: metadata.json or classes.json lacks required fields") from None
    actual = sha256(os.path.join(folder, "model.keras"))
    if actual != expected:
        raise BundleError(
            f"{spec}: sha256 of model.keras does not match metadata.json "
            f"(expected {expected[:12]}..., got {actual[:12]}...); refusing to load it"
        )
    return meta, classes


def load(spec):
    """Resolve, verify and load one bundle; the model loads with safe_mode=True."""
    folder = resolve(spec)
    meta, classes = verify(folder, spec)
    import keras

    try:
        model = keras.saving.load_model(os.path.join(folder, "model.keras"), safe_mode=True,
                                        compile=False)
    except Exception as e:  # Lambda layers, unknown classes, a damaged zip ...
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise BundleError(f"{spec}: model.keras refused by Keras safe mode loading: {reason}") from None
    labels = classes["labels"]
    n_out = model.outputs[0].shape[-1]
    if n_out != len(labels):
        raise BundleError(f"{spec}: model has {n_out} outputs but classes.json has {len(labels)} labels")
    name = meta.get("name") or os.path.basename(os.path.normpath(spec))
    return Bundle(name, folder, model, labels, classes.get("names", {}), meta)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="bundle folder or Hub repo id[@revision]")
    args = p.parse_args()
    try:
        b = load(args.spec)
    except BundleError as e:
        raise SystemExit(f"refused: {e}")
    m = b.metadata.get("metrics", {}).get("test", {})
    print(f"{b.name}: {len(b.labels)} classes {b.labels}, input {b.input_size}px, "
          f"held-out accuracy {m.get('accuracy')}, macro-F1 {m.get('macro_f1')}")


if __name__ == "__main__":
    main()
