"""A Hugging Face Hub-compatible server on 127.0.0.1, for tests: the smallest set of
endpoints that the real `huggingface_hub` client (2.4) calls to publish a model repo and
to download it again. Point the client at it with HF_ENDPOINT.

    python -m tests.local_hub --port 8900 --token hf_local   # serve until Ctrl-C
    HF_ENDPOINT=http://127.0.0.1:8900 HF_TOKEN=hf_local python scripts/push_to_hub.py ...

Endpoints (model repos only, kept in memory):

    POST /api/repos/create                             create_repo
    POST /api/validate-yaml                            README.md metadata check (ModelCard.validate, create_commit)
    POST /api/models/{repo}/preupload/{rev}            upload mode per file: always "regular"
    POST /api/models/{repo}/commit/{rev}               ndjson commit: files (base64) and deletions
    POST /api/models/{repo}/branch/{branch}            create_branch
    POST /api/models/{repo}/tag/{rev}                  create_tag
    GET  /api/models/{repo}[/revision/{rev}]           repo_info / model_info
    GET  /api/models/{repo}/tree/{rev}[/{path}]        list_repo_tree
    HEAD|GET /{repo}/resolve/{rev}/{path}              file metadata and download

The preupload answer asks for "regular" uploads, so file contents travel base64-encoded in
the commit itself: neither Git LFS nor Xet is involved, even with hf_xet installed. Writes
need the server's token; a private repo answers "not found" to anyone without it, as the
Hub does. Errors carry the Hub's X-Error-Code header, so the client raises its usual
RepositoryNotFoundError, RevisionNotFoundError or EntryNotFoundError. Requests are not
logged, so the token is never printed.
"""

import argparse
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.keras filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"


def blob_id(data):
    """Git's blob id (what the Hub reports as a file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
    files: dict  # path -> bytes
    summary: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict = field(default_factory=dict)  # name -> commit oid
    tags: dict = field(default_factory=dict)  # name -> commit oid
    commits: dict = field(default_factory=dict)  # oid -> Commit

    def commit(self, branch, files, summary):
        head = self.branches.get(branch)
        oid = hashlib.sha1(f"{head}\n{summary}\n{time.time_ns()}\n{sorted(files)}".encode()).hexdigest()
        self.commits[oid] = Commit(oid, files, summary, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
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
    """The server: `LocalHub(token).start()`, then `.url` is the HF_ENDPOINT; `.stop()`."""

    def __init__(self, token, port=0):
        self.token = token
        self.repos = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # ---- the Hub's behaviour, independent of HTTP -------------------------------------
    def repo(self, repo_id, authorized):
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(401 if repo else 404, "Repository not found", "RepoNotFound")
        return repo

    def revision(self, repo, revision):
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, body):
        if body.get("type", "model") not in (None, "model"):
            raise HubError(400, "this test server only hosts model repos")
        if not body.get("organization") or not body.get("name"):
            raise HubError(400, "repo id must be owner/name")
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self.repos[repo_id] = Repo(repo_id, private)
        repo.commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        return repo_id

    def apply_commit(self, repo, revision, lines):
        if revision not in repo.branches:
            if repo.resolve(revision) is not None:
                raise HubError(400, f"Invalid rev id: {revision} is not a branch")
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(repo.resolve(revision).files)
        summary = "update"
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary") or summary
                parent = value.get("parentCommit")
                if parent and parent != repo.branches[revision]:
                    raise HubError(412, "parentCommit is not the head of the branch")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:  # lfsFile: never asked for, since preupload says "regular"
                raise HubError(400, f"{key} operations are not supported by this test server")
        return repo.commit(revision, files, summary)


def tree_entries(files, path, recursive):
    """list_repo_tree's entries under `path` (files and the folders that hold them)."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    entries = {}
    for p, data in sorted(files.items()):
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
    if prefix and not entries:
        raise HubError(404, f"{path} does not exist", "EntryNotFound")
    return list(entries.values())


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # no request log: nothing here may print a token
        pass

    # ---- plumbing ------------------------------------------------------------------
    def _authorized(self):
        auth = self.headers.get("authorization", "")
        return auth == f"Bearer {self.hub.token}"

    def _need_token(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _body(self):
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
        try:
            with self.hub.lock:
                status, payload, headers = self._dispatch(method, parts, query)
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

    # ---- endpoints -------------------------------------------------------------------
    def _dispatch(self, method, parts, query):
        hub, auth = self.hub, self._authorized()
        if method == "POST" and parts == ["api", "repos", "create"]:
            self._need_token()
            repo_id = hub.create_repo(json.loads(self._body()))
            return 200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}
        if method == "POST" and parts == ["api", "validate-yaml"]:
            errors = card_metadata_errors(json.loads(self._body()).get("content", ""))
            return (400 if errors else 200), {"errors": [{"message": e} for e in errors], "warnings": []}, {}
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo = hub.repo(f"{parts[2]}/{parts[3]}", auth)
            action, rest = (parts[4], parts[5:]) if len(parts) > 4 else ("revision", ["main"])
            if method == "GET" and action == "revision" and len(rest) == 1:
                commit = hub.revision(repo, rest[0])
                return 200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid,
                             "private": repo.private, "gated": False, "disabled": False,
                             "lastModified": commit.date, "tags": [],
                             "siblings": [{"rfilename": p} for p in sorted(commit.files)]}, {}
            if method == "GET" and action == "tree" and rest:
                commit = hub.revision(repo, rest[0])
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return 200, tree_entries(commit.files, "/".join(rest[1:]), recursive), {}
            if method == "POST" and len(rest) == 1:
                self._need_token()
                body = self._body()
                if action == "preupload":
                    commit = hub.revision(repo, rest[0])
                    files = json.loads(body)["files"]
                    return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                            "oid": blob_id(commit.files[f["path"]]) if f["path"] in commit.files
                                            else None} for f in files]}, {}
                if action == "commit":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    oid = hub.apply_commit(repo, rest[0], lines)
                    return 200, {"success": True, "commitOid": oid, "pullRequestUrl": None,
                                 "commitUrl": f"{hub.url}/{repo.repo_id}/commit/{oid}"}, {}
                if action == "tag":
                    tag = json.loads(body)["tag"]
                    commit = hub.revision(repo, rest[0])
                    if tag in repo.tags or tag in repo.branches:
                        raise HubError(409, f"Tag {tag} already exists")
                    repo.tags[tag] = commit.oid
                    return 200, {}, {}
                if action == "branch":
                    start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                    if rest[0] in repo.branches or rest[0] in repo.tags:
                        raise HubError(409, f"Reference {rest[0]} already exists")
                    repo.branches[rest[0]] = hub.revision(repo, start).oid
                    return 200, {}, {}
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = hub.repo(f"{parts[0]}/{parts[1]}", auth)
            commit = hub.revision(repo, parts[3])
            path = "/".join(parts[4:])
            if path not in commit.files:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            data = commit.files[path]
            return 200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{blob_id(data)}"',
                               "Content-Type": "application/octet-stream"}
        raise HubError(404, f"{method} {'/'.join(parts)} is not served by this test Hub")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8900, help="port on 127.0.0.1 (default 8900)")
    p.add_argument("--token", required=True, help="the token writes and private reads must present")
    args = p.parse_args()
    hub = LocalHub(args.token, args.port).start()
    print(f"test Hub serving at {hub.url} (set HF_ENDPOINT={hub.url}); Ctrl-C stops it")
    try:
        hub.thread.join()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
