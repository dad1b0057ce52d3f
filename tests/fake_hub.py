"""A fake Hugging Face hub on loopback: the endpoints huggingface_hub's ``model_info``,
``hf_hub_download`` and ``snapshot_download`` call, serving hub-shaped fixture repos from memory,
reached through ``HF_ENDPOINT``. Nothing of huggingface_hub is mocked: requests go over HTTP.

Served: ``GET /api/models/<repo>[/revision/<rev>]`` (sha, siblings), ``HEAD``/``GET
/<repo>/resolve/<rev>/<file>`` (X-Repo-Commit, ETag: sha256 for weights as the hub's LFS files,
git blob sha1 otherwise; byte ranges). A gated repo answers 403 with ``X-Error-Code: GatedRepo``
to a download without an accepted token, as the hub does; unknown repos, revisions and files
answer 404 with the hub's error codes.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False


class FakeHub:
    """Repos in memory; ``publish`` adds a commit and moves ``main`` to it."""

    def __init__(self, token: str = "hf_fake_accepted"):
        self.repos: dict[str, FakeRepo] = {}
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def publish(self, repo: str, files: dict[str, bytes], gated: bool = False) -> str:
        """A new commit of ``repo`` holding ``files`` (merged over the previous commit's)."""
        r = self.repos.setdefault(repo, FakeRepo())
        r.gated = r.gated or gated
        previous = r.commits.get(r.refs.get("main"), {})
        merged = {**previous, **files}
        commit = hashlib.sha1(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in
                                          sorted(merged.items())}).encode()
                              + repo.encode() + str(len(r.commits)).encode()).hexdigest()
        r.commits[commit] = merged
        r.refs["main"] = commit
        return commit

    def publish_snapshot(self, repo: str, snapshot: Path, gated: bool = False) -> str:
        """Publish the files of a fixture snapshot folder (tests/hub_fixtures.py)."""
        return self.publish(repo, {p.name: p.read_bytes() for p in Path(snapshot).iterdir()},
                            gated)

    def resolve(self, repo: str, revision: str) -> str | None:
        r = self.repos[repo]
        return r.refs.get(revision) or (revision if revision in r.commits else None)


def etag(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: tests read hub.requests instead
            pass

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _reply(self, body: bytes, headers: dict[str, str], status: int = 200) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path = unquote(self.path.split("?", 1)[0])
            hub.requests.append((self.command, path))
            api = re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path)
            if api:
                return self._info(api.group(1), api.group(2) or "main")
            resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
            if resolve:
                return self._file(*resolve.groups())
            self._error(404, "NotFound", f"no route {path}")

        def _repo(self, repo: str, revision: str):
            if repo not in hub.repos:
                self._error(404, "RepoNotFound", f"Repository {repo} not found")
                return None, None
            commit = hub.resolve(repo, revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return hub.repos[repo], commit

        def _info(self, repo: str, revision: str) -> None:
            r, commit = self._repo(repo, revision)
            if commit is None:
                return
            body = json.dumps({"id": repo, "modelId": repo, "sha": commit, "private": False,
                               "gated": "manual" if r.gated else False, "disabled": False,
                               "siblings": [{"rfilename": n} for n in sorted(r.commits[commit])],
                               "tags": [], "downloads": 0, "likes": 0}).encode()
            self._reply(body, {"Content-Type": "application/json"})

        def _file(self, repo: str, revision: str, name: str) -> None:
            r, commit = self._repo(repo, revision)
            if commit is None:
                return
            if r.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(403, "GatedRepo", f"Access to model {repo} is restricted. "
                                   "You must have access to it and be authenticated to access it.")
            files = r.commits[commit]
            if name not in files:
                return self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
            data = files[name]
            tag = etag(name, data)
            headers = {"X-Repo-Commit": commit, "ETag": f'"{tag}"',
                       "Content-Type": "application/octet-stream"}
            if name.endswith(LFS_SUFFIXES):
                headers.update({"X-Linked-Etag": f'"{tag}"', "X-Linked-Size": str(len(data))})
            start = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
            if start and self.command == "GET":
                return self._reply(data[int(start.group(1)):], headers, 206)
            self._reply(data, headers)

    return Handler


def use_fake_hub(monkeypatch, hub: FakeHub, cache: Path) -> None:
    """Online against ``hub`` (``HF_ENDPOINT``), with ``cache`` as the HF cache and no token.

    huggingface_hub copies HF_ENDPOINT into module constants at import, so those are set too."""
    import huggingface_hub.constants as constants
    import huggingface_hub.file_download as file_download
    import transformers.utils.hub as transformers_hub
    from hub_fixtures import use_hub_cache
    from huggingface_hub.utils import reset_sessions

    use_hub_cache(monkeypatch, cache)
    template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", False)
    reset_sessions()  # a session made while offline would refuse every request


def go_offline(monkeypatch) -> None:
    """What ``HF_HUB_OFFLINE=1`` does to an imported huggingface_hub and transformers."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers_hub, "_is_offline_mode", True)
    reset_sessions()
