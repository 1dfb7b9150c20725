"""A Hugging Face Hub-compatible server on 127.0.0.1, for tests: the endpoints that the real
`huggingface_hub` client (2.4) calls to publish a model repo or a Space and to download it
again, refusing what the Hub refuses. Point the client at it with HF_ENDPOINT, and with
HF_HUB_DISABLE_XET=1 (see "Xet" below).

    python -m tests.local_hub --port 8900 --token hf_local   # serve until Ctrl-C
    HF_ENDPOINT=http://127.0.0.1:8900 HF_TOKEN=hf_local HF_HUB_DISABLE_XET=1 \\
        python scripts/push_to_hub.py models/lc25000 --repo-id lab/lung --tag v1

In a test, `with running(token) as hub:` starts one on a free port, and sets this process's
huggingface_hub to use LFS instead of Xet while it runs.

Endpoints (model repos and Spaces, kept in memory; {type} is models or spaces, {prefix}
is "" for a model and "spaces/" for a Space):

    POST /api/repos/create                           create_repo (a Space needs an sdk)
    POST /api/validate-yaml                          README.md metadata check (ModelCard.validate)
    POST /api/{type}/{repo}/preupload/{rev}          upload mode per file: "lfs" or "regular"
    POST /{prefix}{repo}.git/info/lfs/objects/batch  Git LFS batch API: where to upload each object
    PUT  STORAGE/upload/...                          an LFS object's content (a signed URL)
    POST /api/{type}/{repo}/commit/{rev}             ndjson commit: regular files (base64), LFS
                                                     pointers (lfsFile) and deletions
    POST /api/{type}/{repo}/branch/{branch}          create_branch
    POST /api/{type}/{repo}/tag/{rev}                create_tag
    GET  /api/{type}/{repo}[/revision/{rev}]         repo_info / model_info / space_info
    GET  /api/{type}/{repo}/tree/{rev}[/{path}]      list_repo_tree (an LFS file has its `lfs` info)
    HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}    file metadata and download; an LFS file is
                                                     redirected to STORAGE/objects/... (signed URL)

What it refuses, as the Hub does (huggingface_hub PR #657, issues #91 and #2666): a commit
that carries, as a regular file (base64 in the commit itself, not LFS), a binary file over
1 MB or any file over 10 MiB. The answer is HTTP 400 with the Hub's words ("Your push was
rejected because it contains binary files ... Offending files: - PATH (ref: refs/heads/main)"),
which the client raises as BadRequestError "Bad request for commit endpoint: ...". The Hub's
own preupload logic is not public; this one answers "lfs" for what the Hub stores with
LFS or Xet: a path that the repo's .gitattributes sends to LFS, any file over 10 MiB, and
any binary file (a NUL byte in the 512-byte sample the client sends), at any size; and
"regular" for the rest. A commit that adds an LFS file that .gitattributes does not name
also adds it there, as the Hub does, so a git clone of the repo gets the file, not its pointer.

Git LFS: the client asks the batch API where to upload each object, PUTs the content to a
signed URL on STORAGE (a second port standing in for the Hub's storage host, so the client
sends it no token, as to the Hub's), then commits an lfsFile pointer; a commit naming an
object that was never uploaded is refused. Downloads of LFS files are redirected to STORAGE
with the sha256 and size in X-Linked-Etag and X-Linked-Size, as the Hub does.

Xet: not spoken here. huggingface_hub 2.4 uploads every "lfs" file through Xet whenever
hf_xet is installed (a dependency of it), with no fallback that a server can trigger; so
the client must be run with HF_HUB_DISABLE_XET=1, and then uses plain Git LFS as above. A
client that tries Xet anyway asks for a Xet token, which this server refuses with a message
naming that variable. Downloads never try Xet here, since no answer carries Xet headers.

Writes need the server's token; a private repo answers "not found" to anyone without it, as
the Hub does. Creating a Gradio or Docker Space in a namespace listed in `free_accounts` is
refused with HTTP 402, as huggingface_hub expects of the Hub for a free account (its
create_repo: "402 -> if payment required (e.g. if Gradio/Docker Space and free user)").
Errors carry the Hub's X-Error-Code header, so the client raises its usual
RepositoryNotFoundError, RevisionNotFoundError or EntryNotFoundError. Requests are not
logged, so the token is never printed.
"""

import argparse
import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# A new repo's .gitattributes: a stand-in for the Hub's default, which names many binary extensions
# (35 lines from *.7z to *tfevents*, *.onnx among them: Hub model repos' .gitattributes show it,
# with .onnx files of 0.2 to 1 MB stored as LFS by it). model.onnx needs it here: a float16
# model.onnx is under 10 MiB, and its first 512 bytes (the graph's text: names of nodes and
# constants) hold no NUL byte, so by size and sample alone it would go as a regular file.
GITATTRIBUTES = (b"*.keras filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
                 b"*.onnx filter=lfs diff=lfs merge=lfs -text\n")
MAX_REGULAR_BINARY = 1_000_000  # "binary files over 1MB" (PR #657): bytes, the stricter reading of MB
MAX_REGULAR = 10 * 1024 * 1024  # "files larger than 10 MiB" (issue #2666)
BINARY_REFUSED = ("Your push was rejected because it contains binary files. Please use "
                  "https://huggingface.co/docs/hub/xet to store binary files. Offending files: {files}")
LARGE_REFUSED = ("Your push was rejected because it contains files larger than 10 MiB. Please use "
                 "https://git-lfs.github.com/ to store large files. See also: "
                 "https://hf.co/docs/hub/repositories-getting-started#terminal Offending files: {files}")
XET_REFUSED = ("this test Hub stores large and binary files with Git LFS, not Xet: run the client "
               "with HF_HUB_DISABLE_XET=1")
API_TYPES = {"models": "model", "spaces": "space"}  # /api/{plural}/... -> repo type
URL_PREFIX = {"model": "", "space": "spaces/"}  # /{prefix}{repo}/resolve/..., /{prefix}{repo}.git/...
SPACE_SDKS = ("gradio", "docker", "static")


def blob_id(data):
    """Git's blob id (what the Hub reports as a file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256, size):
    """The Git LFS pointer file that git stores in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def is_binary(data):
    """Git's test: a NUL byte in the first 8,000 bytes."""
    return b"\0" in data[:8000]


def lfs_tracked(gitattributes, path):
    """Whether a .gitattributes (bytes) sends `path` to LFS (a `filter=lfs` line whose pattern
    matches the path, or its file name for a pattern without a slash)."""
    for line in gitattributes.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and "filter=lfs" in fields[1:]:
            pattern = fields[0].replace("[[:space:]]", " ")
            target = path if "/" in pattern else path.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(target, pattern.lstrip("/")):
                return True
    return False


def upload_mode(gitattributes, path, size, sample):
    """The preupload answer for one file: "lfs" for what the Hub stores with LFS, else "regular"."""
    large = size > MAX_REGULAR
    return "lfs" if lfs_tracked(gitattributes, path) or large or is_binary(sample) else "regular"


def refusal(regular, ref):
    """Why the Hub would refuse a commit whose regular (non-LFS) files are `regular` (path ->
    bytes), in the Hub's words; None when it would accept them."""
    def listed(paths):
        return " ".join(f"- {p} (ref: {ref})" for p in paths)

    large = [p for p, data in regular.items() if len(data) > MAX_REGULAR]
    if large:
        return LARGE_REFUSED.format(files=listed(large))
    binary = [p for p, data in regular.items() if len(data) > MAX_REGULAR_BINARY and is_binary(data)]
    return BINARY_REFUSED.format(files=listed(binary)) if binary else None


def card_metadata_errors(content):
    """What is wrong with a README.md's YAML metadata, by the rules the Hub's model card spec
    documents (hub-docs modelcard.md): a mapping; license an id, with license_name when it
    is "other"; datasets, tags and metrics lists of strings; every model-index result with
    task.type, dataset.type, dataset.name and metrics of type and value. [] when valid."""
    m = re.match(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", content, re.S)
    if not m:
        return ["README.md has no YAML metadata block at the top"]
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return [f"the metadata is not valid YAML: {str(e).splitlines()[0]}"]
    if not isinstance(meta, dict):
        return ["the metadata must be a YAML mapping"]
    errors = []
    licence = meta.get("license")
    if licence is not None and not (isinstance(licence, str) and re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", licence)):
        errors.append(f'"license" must be a license id like "mit" or "other", got {licence!r}')
    if licence == "other" and not meta.get("license_name"):
        errors.append('"license_name" is required when "license" is "other"')
    for key in ("library_name", "pipeline_tag", "license_name", "license_link"):
        if key in meta and not isinstance(meta[key], str):
            errors.append(f'"{key}" must be a string')
    for key in ("datasets", "tags", "metrics"):
        if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
            errors.append(f'"{key}" must be a list of strings')
    index = meta.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            return errors + ['"model-index" must be a list']
        for i, entry in enumerate(index):
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("results"), list)):
                errors.append(f"model-index[{i}] needs a name and a list of results")
                continue
            for j, r in enumerate(entry["results"]):
                where = f"model-index[{i}].results[{j}]"
                task, data, metrics = (r.get(k) if isinstance(r, dict) else None
                                       for k in ("task", "dataset", "metrics"))
                if not (isinstance(task, dict) and task.get("type")):
                    errors.append(f"{where}.task.type is required")
                if not (isinstance(data, dict) and data.get("type") and data.get("name")):
                    errors.append(f"{where}.dataset needs type and name")
                if not (isinstance(metrics, list) and metrics and all(
                        isinstance(mt, dict) and mt.get("type") and "value" in mt for mt in metrics)):
                    errors.append(f"{where}.metrics must be a non-empty list of {{type, value}}")
    return errors



@dataclass
class Commit:
    oid: str
    files: dict  # path -> bytes: every file's content, wherever it is stored
    lfs: dict  # path -> sha256, for the files stored with LFS (the commit holds their pointers)
    summary: str
    date: str


@dataclass
class Repo:
    repo_type: str  # "model" or "space"
    repo_id: str
    private: bool
    sdk: str = None  # a Space's sdk
    branches: dict = field(default_factory=dict)  # name -> commit oid
    tags: dict = field(default_factory=dict)  # name -> commit oid
    commits: dict = field(default_factory=dict)  # oid -> Commit
    lfs_objects: dict = field(default_factory=dict)  # sha256 -> bytes uploaded through the LFS batch API

    def commit(self, branch, files, lfs, summary):
        head = self.branches.get(branch)
        oid = hashlib.sha1(f"{head}\n{summary}\n{time.time_ns()}\n{sorted(files)}".encode()).hexdigest()
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.commits[oid] = Commit(oid, files, lfs, summary, date)
        self.branches[branch] = oid
        return oid

    def resolve(self, revision):
        """A branch, tag or full commit id -> Commit, or None."""
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)


class HubError(Exception):
    def __init__(self, status, message, code=None, headers=None, body=None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


class LocalHub:
    """The server: `LocalHub(token).start()`, then `.url` is the HF_ENDPOINT; `.stop()`.

    free_accounts: namespaces on the Hub's free plan, where creating a Gradio or Docker Space
    is refused (HTTP 402)."""

    def __init__(self, token, port=0, free_accounts=()):
        self.token = token
        self.free_accounts = set(free_accounts)
        self.repos = {}  # (repo type, repo id) -> Repo
        self.lock = threading.Lock()
        self.secret = secrets.token_bytes(32)  # signs the STORAGE URLs
        hub = self

        class Handler(_HubHandler):
            pass

        class Storage(_StorageHandler):
            pass

        Handler.hub = Storage.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), Storage)
        for server in (self.server, self.storage):
            server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self.storage.server_address[1]}"
        self.thread = None

    def start(self):
        threading.Thread(target=self.storage.serve_forever, daemon=True).start()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        for server in (self.server, self.storage):
            server.shutdown()
            server.server_close()

    # ---- the Hub's behaviour, independent of HTTP -------------------------------------
    def repo(self, repo_type, repo_id, authorized):
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(401 if repo else 404, "Repository not found", "RepoNotFound")
        return repo

    def revision(self, repo, revision):
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, body):
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"this test Hub hosts model repos and Spaces, not {repo_type} repos")
        if not body.get("organization") or not body.get("name"):
            raise HubError(400, "repo id must be owner/name")
        repo_id = f"{body['organization']}/{body['name']}"
        sdk = body.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, f"a Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo",
                           body={"url": f"{self.url}/{URL_PREFIX[repo_type]}{repo_id}"})
        if repo_type == "space" and sdk in ("gradio", "docker") and body["organization"] in self.free_accounts:
            raise HubError(402, "Payment Required")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, sdk)
        repo.commit("main", {".gitattributes": GITATTRIBUTES}, {}, "initial commit")
        return repo

    def preupload(self, repo, revision, files):
        commit = self.revision(repo, revision)
        attributes = commit.files.get(".gitattributes", b"")
        answers = []
        for f in files:
            path, sample = f["path"], base64.b64decode(f.get("sample", ""))
            remote = commit.lfs.get(path) or (blob_id(commit.files[path]) if path in commit.files else None)
            answers.append({"path": path, "uploadMode": upload_mode(attributes, path, int(f["size"]), sample),
                            "shouldIgnore": False, "oid": remote})
        return {"files": answers}

    def signed(self, action, repo, oid):
        """A STORAGE URL for one object of one repo, signed so that no token is needed."""
        key = f"{repo.repo_type}/{repo.repo_id}/{oid}"
        signature = hmac.new(self.secret, f"{action}:{key}".encode(), hashlib.sha256).hexdigest()
        return f"{self.storage_url}/{action}/{quote(key)}?signature={signature}"

    def check_signature(self, action, key, signature):
        expected = hmac.new(self.secret, f"{action}:{key}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise HubError(403, "Request signature does not match")
        repo_type, owner, name, oid = key.split("/")
        return self.repos[(repo_type, f"{owner}/{name}")], oid

    def lfs_batch(self, repo, body):
        """The Git LFS batch API, for uploads: an upload action for each object not stored yet."""
        if body.get("operation") != "upload":
            raise HubError(400, "this test Hub answers LFS batch uploads only (downloads go through /resolve)")
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": int(obj["size"]), "authenticated": True}
            if obj["oid"] not in repo.lfs_objects:
                entry["actions"] = {"upload": {"href": self.signed("upload", repo, obj["oid"]), "expires_in": 3600}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def store_lfs_object(self, repo, oid, data):
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "the uploaded content does not match its sha256")
        repo.lfs_objects[oid] = data

    def apply_commit(self, repo, revision, lines):
        if revision not in repo.branches:
            if repo.resolve(revision) is not None:
                raise HubError(400, f"Invalid rev id: {revision} is not a branch")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.resolve(revision)
        files, lfs, regular = dict(head.files), dict(head.lfs), {}
        summary = "update"
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary") or summary
                parent = value.get("parentCommit")
                if parent and parent != repo.branches[revision]:
                    raise HubError(412, "parentCommit is not the head of the branch")
            elif key == "file":
                path = value["path"]
                files[path] = regular[path] = base64.b64decode(value["content"])
                lfs.pop(path, None)
            elif key == "lfsFile":
                path, oid = value["path"], value["oid"]
                if value.get("algo", "sha256") != "sha256" or oid not in repo.lfs_objects:
                    raise HubError(400, f"LFS pointer pointed to a file that does not exist: {path}")
                files[path], lfs[path] = repo.lfs_objects[oid], oid
                regular.pop(path, None)
            elif key == "deletedFile":
                lfs.pop(value["path"], None)
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                lfs = {p: oid for p, oid in lfs.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"{key} operations are not supported by this test server")
        why = refusal(regular, f"refs/heads/{revision}")
        if why:
            raise HubError(400, why)
        attributes = files.get(".gitattributes", b"")
        untracked = [p for p in sorted(lfs) if not lfs_tracked(attributes, p)]
        if untracked:  # as the Hub does, so that git checks out the file and not its pointer
            if attributes and not attributes.endswith(b"\n"):
                attributes += b"\n"
            files[".gitattributes"] = attributes + "".join(
                f"{p.replace(' ', '[[:space:]]')} filter=lfs diff=lfs merge=lfs -text\n" for p in untracked).encode()
        return repo.commit(revision, files, lfs, summary)


def tree_entries(commit, path, recursive):
    """list_repo_tree's entries under `path` (files and the folders that hold them)."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    entries = {}
    for p, data in sorted(commit.files.items()):
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries[folder] = {"type": "directory", "path": folder, "size": 0,
                                   "oid": hashlib.sha1(folder.encode()).hexdigest()}
        if recursive or len(parts) == 1:
            entries[p] = {"type": "file", "path": p, "size": len(data), "oid": blob_id(data)}
            if p in commit.lfs:
                pointer = lfs_pointer(commit.lfs[p], len(data))
                entries[p].update(oid=blob_id(pointer), lfs={"oid": commit.lfs[p], "size": len(data),
                                                             "pointerSize": len(pointer)})
    if prefix and not entries:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    return list(entries.values())


class _Handler(BaseHTTPRequestHandler):
    """What both servers share: reading requests, sending answers, turning HubError into the
    Hub's error answer. Subclasses define _dispatch(method, parts, query, body)."""
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # no request log: nothing here may print a token
        pass

    def _authorized(self):
        return self.headers.get("authorization", "") == f"Bearer {self.hub.token}"

    def _need_token(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":  # a streamed LFS upload
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, payload=b"", headers=None, head=False):
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _route(self, method):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            with self.hub.lock:
                status, payload, headers = self._dispatch(method, parts, query, body)
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            status, payload = e.status, e.body
        except (ValueError, KeyError, TypeError) as e:
            status, payload, headers = 400, {"error": f"bad request: {type(e).__name__}"}, {}
        self._send(status, payload, headers, head=method == "HEAD")

    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")


class _HubHandler(_Handler):
    """The Hub itself: its API, the LFS batch API and file downloads."""

    def _dispatch(self, method, parts, query, body):
        hub = self.hub
        if method == "POST" and parts == ["api", "repos", "create"]:
            self._need_token()
            repo = hub.create_repo(json.loads(body))
            url = f"{hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"
            return 200, {"url": url, "name": repo.repo_id, "id": repo.repo_id}, {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            errors = card_metadata_errors(json.loads(body).get("content", ""))
            return (400 if errors else 200), {"errors": [{"message": e} for e in errors], "warnings": []}, {}
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in API_TYPES:
            repo = hub.repo(API_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", self._authorized())
            return self._api(method, repo, parts[4:], query, body)
        repo_type, rest = ("space", parts[1:]) if parts[:1] == ["spaces"] else ("model", parts)
        if method == "POST" and len(rest) == 6 and rest[1].endswith(".git") and \
                rest[2:] == ["info", "lfs", "objects", "batch"]:
            self._need_token()
            repo = hub.repo(repo_type, f"{rest[0]}/{rest[1][:-len('.git')]}", True)
            return 200, hub.lfs_batch(repo, json.loads(body)), {"Content-Type": "application/vnd.git-lfs+json"}
        if method in ("GET", "HEAD") and len(rest) >= 5 and rest[2] == "resolve":
            repo = hub.repo(repo_type, f"{rest[0]}/{rest[1]}", self._authorized())
            return self._resolve(repo, rest[3], "/".join(rest[4:]))
        raise HubError(404, f"{method} {'/'.join(parts)} is not served by this test Hub")

    def _api(self, method, repo, rest, query, body):
        """/api/{type}/{repo}/{action}/..."""
        hub = self.hub
        action, args = (rest[0], rest[1:]) if rest else ("revision", ["main"])
        if action in ("xet-write-token", "xet-read-token"):
            raise HubError(501, XET_REFUSED)
        if method == "GET" and action == "revision" and len(args) == 1:
            commit = hub.revision(repo, args[0])
            info = {"id": repo.repo_id, "sha": commit.oid, "private": repo.private, "gated": False,
                    "disabled": False, "lastModified": commit.date, "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(commit.files)]}
            if repo.repo_type == "model":
                info["modelId"] = repo.repo_id
            else:
                info["sdk"] = repo.sdk
            return 200, info, {}
        if method == "GET" and action == "tree" and args:
            commit = hub.revision(repo, args[0])
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return 200, tree_entries(commit, "/".join(args[1:]), recursive), {}
        if method == "POST" and len(args) == 1:
            self._need_token()
            if action == "preupload":
                return 200, hub.preupload(repo, args[0], json.loads(body)["files"]), {}
            if action == "commit":
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                oid = hub.apply_commit(repo, args[0], lines)
                url = f"{hub.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{oid}"
                return 200, {"success": True, "commitOid": oid, "pullRequestUrl": None, "commitUrl": url}, {}
            if action == "tag":
                tag = json.loads(body)["tag"]
                commit = hub.revision(repo, args[0])
                if tag in repo.tags or tag in repo.branches:
                    raise HubError(409, f"Tag {tag} already exists")
                repo.tags[tag] = commit.oid
                return 200, {}, {}
            if action == "branch":
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                if args[0] in repo.branches or args[0] in repo.tags:
                    raise HubError(409, f"Reference {args[0]} already exists")
                repo.branches[args[0]] = hub.revision(repo, start).oid
                return 200, {}, {}
        raise HubError(404, f"{method} {action} is not served by this test Hub")

    def _resolve(self, repo, revision, path):
        """A file of one revision: its content, or for an LFS file a redirect to STORAGE."""
        commit = self.hub.revision(repo, revision)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        if path in commit.lfs:
            sha256 = commit.lfs[path]
            return 302, b"", {"Location": self.hub.signed("objects", repo, sha256), "X-Repo-Commit": commit.oid,
                              "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)),
                              "ETag": f'"{blob_id(lfs_pointer(sha256, len(data)))}"'}
        return 200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{blob_id(data)}"',
                           "Content-Type": "application/octet-stream"}


class _StorageHandler(_Handler):
    """STORAGE: LFS objects, through URLs the Hub signed (no token, as on the Hub's storage host)."""

    def _dispatch(self, method, parts, query, body):
        if len(parts) == 5 and parts[0] in ("upload", "objects"):
            repo, oid = self.hub.check_signature(parts[0], "/".join(parts[1:]), query.get("signature", [""])[0])
            if method == "PUT" and parts[0] == "upload":
                self.hub.store_lfs_object(repo, oid, body)
                return 200, b"", {}
            if method in ("GET", "HEAD") and parts[0] == "objects" and oid in repo.lfs_objects:
                return 200, repo.lfs_objects[oid], {"Content-Type": "application/octet-stream",
                                                    "ETag": f'"{oid}"'}
        raise HubError(404, "no such object")


@contextlib.contextmanager
def running(token, **options):
    """A started LocalHub for a test (options as LocalHub's). While it runs, this process's
    huggingface_hub uploads with Git LFS instead of Xet (HF_HUB_DISABLE_XET, read at each
    upload); commands the test starts need HF_HUB_DISABLE_XET=1 in their environment."""
    from huggingface_hub import constants

    hub = LocalHub(token, **options).start()
    disabled, constants.HF_HUB_DISABLE_XET = constants.HF_HUB_DISABLE_XET, True
    try:
        yield hub
    finally:
        constants.HF_HUB_DISABLE_XET = disabled
        hub.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8900, help="port on 127.0.0.1 (default 8900)")
    p.add_argument("--token", required=True, help="the token writes and private reads must present")
    args = p.parse_args()
    hub = LocalHub(args.token, args.port).start()
    print(f"test Hub serving at {hub.url} (set HF_ENDPOINT={hub.url} and HF_HUB_DISABLE_XET=1); Ctrl-C stops it")
    try:
        hub.thread.join()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
