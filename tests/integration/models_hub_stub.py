"""A stand-in for the Hugging Face hub on loopback, for the models downloader's tests.

It speaks what huggingface_hub's real client expects from ``/{repo}/resolve/{revision}/{path}``:
- LFS files: ``302`` to a "CDN" on another origin (a second server), with ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size``, ``X-Repo-Commit`` and an ``ETag``; the CDN serves the bytes with ``Range`` support;
- small git files: ``200`` with the git blob sha1 as ``ETag``, ``Content-Length`` and ``Range`` support;
- a renamed repository: a relative ``307`` to the new name (followed by the client on the hub's own origin);
- files on Xet storage: ``X-Xet-Hash`` and a ``Link`` to the Xet token route, which answers with a CAS endpoint and
  token (no CAS server: a test replaces hf_xet's transfer);
- errors as the hub sends them: ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo.
Faults are injected per file: an HTTP status a number of times, a connection dropped after N bytes, a corrupted
body, an ignored Range header, a slow body. Every request is recorded for assertions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

CHUNK = 64 * 1024


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclasses.dataclass
class StubFile:
    repo: str
    path: str
    content: bytes
    lfs: bool = True
    xet: bool = False

    @property
    def xet_hash(self) -> str:
        return hashlib.sha256(b"xet" + self.content).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclasses.dataclass
class Fault:
    """Applies to requests on ``server`` ("hub" or "cdn") for ``key`` (a blob sha256 or "repo:path")."""

    server: str
    key: str
    kind: str  # "status", "drop", "corrupt", "ignore-range", "slow"
    times: int = 1  # how many requests it affects; -1 = all
    status: int = 503
    after: int = 0  # for "drop": bytes sent before the connection is cut; for "slow": bytes sent at full speed first
    delay: float = 0.0  # for "slow": seconds per chunk
    methods: tuple[str, ...] = ("GET", "HEAD")


@dataclasses.dataclass
class Request:
    server: str
    method: str
    path: str
    range: str | None
    authorization: str | None


class HubStub:
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], StubFile] = {}
        self.gated: dict[str, str] = {}  # repo -> the one token allowed
        self.renamed: dict[str, str] = {}  # old repo -> new repo
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.served_bytes: dict[str, int] = {}  # blob sha256 -> body bytes sent by the CDN
        self._lock = threading.Lock()
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self.hub_url = self._start("hub")
        self.cdn_url = self._start("cdn")

    # --- setup ------------------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.hub_url

    XET_TOKEN = "xet-access-token"

    def add(self, repo: str, path: str, content: bytes, *, lfs: bool = True, xet: bool = False) -> StubFile:
        f = StubFile(repo, path, content, lfs, xet)
        self.files[(repo, path)] = f
        return f

    def gate(self, repo: str, token: str) -> None:
        self.gated[repo] = token

    def rename(self, old: str, new: str) -> None:
        self.renamed[old] = new

    def fault(self, server: str, key: str, kind: str, **kwargs: Any) -> Fault:
        f = Fault(server, key, kind, **kwargs)
        with self._lock:
            self.faults.append(f)
        return f

    def url_for(self, f: StubFile) -> str:
        """A plain (non-hub) URL for the same bytes, as an OpenMMLab-style download server would serve them."""
        return f"{self.cdn_url}/blobs/{f.sha256}"

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- queries for assertions -------------------------------------------------------------------------------------

    def gets(self, server: str | None = None, contains: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and (server is None or r.server == server)
                and contains in r.path]

    def heads(self, contains: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == "HEAD" and contains in r.path]

    # --- serving ----------------------------------------------------------------------------------------------------

    def _take_fault(self, server: str, key: str, kind: str, method: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.server == server and f.key == key and f.kind == kind and method in f.methods and f.times != 0:
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def _start(self, name: str) -> str:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a cut connection affects one transfer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                self._handle("HEAD")

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def _handle(self, method: str) -> None:
                with stub._lock:
                    stub.requests.append(Request(name, method, self.path, self.headers.get("Range"),
                                                 self.headers.get("Authorization")))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    (stub._hub if name == "hub" else stub._cdn)(self, method)

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"hubstub-{name}", daemon=True
        ).start()
        self._servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    @staticmethod
    def _error(h: http.server.BaseHTTPRequestHandler, status: int, code: str | None, message: str,
               extra: dict[str, str] | None = None) -> None:
        body = message.encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _hub(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        parts = parsed.path.split("/")
        # /api/models/{org}/{name}/xet-read-token/{revision}
        if len(parts) == 7 and parts[1:3] == ["api", "models"] and parts[5] == "xet-read-token":
            return self._xet_token(h, f"{parts[3]}/{parts[4]}")
        # /{org}/{name}/resolve/{revision}/{path...}
        if len(parts) < 6 or parts[3] != "resolve":
            return self._error(h, 404, None, "not a resolve URL")
        repo = f"{parts[1]}/{parts[2]}"
        revision = urllib.parse.unquote(parts[4])
        path = urllib.parse.unquote("/".join(parts[5:]))
        if repo in self.renamed:
            new = self.renamed[repo]
            h.send_response(307)
            h.send_header("Location", "/" + "/".join([*new.split("/"), *parts[3:]]))
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        fault = self._take_fault("hub", f"{repo}:{path}", "status", method)
        if fault is not None:
            return self._error(h, fault.status, None, f"injected {fault.status}")
        if not any(r == repo for r, _ in self.files):
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if not self._allowed(h, repo):
            return None
        if revision not in ("main", self.COMMIT):
            return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
        f = self.files.get((repo, path))
        if f is None:
            return self._error(h, 404, "EntryNotFound", f"{path} does not exist",
                               {"X-Repo-Commit": self.COMMIT})
        if f.lfs:
            h.send_response(302)
            h.send_header("Location", f"{self.cdn_url}/blobs/{f.sha256}?signature=stub")
            h.send_header("X-Repo-Commit", self.COMMIT)
            h.send_header("X-Linked-Etag", f'"{f.sha256}"')
            h.send_header("X-Linked-Size", str(len(f.content)))
            h.send_header("ETag", f'"{git_blob_sha1(f.sha256.encode())}"')  # the pointer's oid, as on the hub
            if f.xet:  # the real hub names its own origin here; clients rewrite it to their endpoint
                h.send_header("X-Xet-Hash", f.xet_hash)
                h.send_header("Link", f'<https://huggingface.co/api/models/{repo}/xet-read-token/{self.COMMIT}>; '
                              'rel="xet-auth"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        self._body(h, method, f.content, f"{repo}:{path}", "hub",
                   {"ETag": f'"{git_blob_sha1(f.content)}"', "X-Repo-Commit": self.COMMIT})
        return None

    def _allowed(self, h: http.server.BaseHTTPRequestHandler, repo: str) -> bool:
        if repo not in self.gated:
            return True
        auth = h.headers.get("Authorization")
        if auth is None:
            self._error(h, 401, "GatedRepo", f"Access to model {repo} is restricted. You must be authenticated to "
                        "access it.")
            return False
        if auth != f"Bearer {self.gated[repo]}":
            self._error(h, 403, "GatedRepo", f"Access to model {repo} is restricted and you are not in the "
                        "authorized list.")
            return False
        return True

    def _xet_token(self, h: http.server.BaseHTTPRequestHandler, repo: str) -> None:
        if not self._allowed(h, repo):
            return
        body = b"{}"
        h.send_response(200)
        h.send_header("X-Xet-Cas-Url", f"{self.cdn_url}/cas")
        h.send_header("X-Xet-Access-Token", self.XET_TOKEN)
        h.send_header("X-Xet-Token-Expiration", str(int(time.time()) + 3600))
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _cdn(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        sha = parsed.path.rsplit("/", 1)[-1]
        f = next((f for f in self.files.values() if f.sha256 == sha), None)
        if f is None:
            return self._error(h, 404, None, "no such blob")
        fault = self._take_fault("cdn", sha, "status", method)
        if fault is not None:
            return self._error(h, fault.status, None, f"injected {fault.status}")
        self._body(h, method, f.content, sha, "cdn", {"ETag": f'"{sha}"'})
        return None

    def _body(self, h: http.server.BaseHTTPRequestHandler, method: str, content: bytes, key: str, server: str,
              headers: dict[str, str]) -> None:
        if method == "GET" and self._take_fault(server, key, "corrupt", method):
            content = bytes(b ^ 0xFF for b in content[:16]) + content[16:]
        size = len(content)
        start = 0
        rng = h.headers.get("Range")
        ignore_range = method == "GET" and rng and self._take_fault(server, key, "ignore-range", method)
        if rng and not ignore_range:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            start = int(first)
            end = int(last) if last else size - 1
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            body = content[start:end + 1]
        else:
            h.send_response(200)
            body = content
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method == "HEAD":
            return
        drop = self._take_fault(server, key, "drop", method)
        slow = self._take_fault(server, key, "slow", method)
        sent = 0
        for chunk in _chunks(body):
            if drop is not None and sent + len(chunk) > drop.after:
                chunk = chunk[: max(0, drop.after - sent)]
                h.wfile.write(chunk)
                sent += len(chunk)
                h.wfile.flush()
                with self._lock:
                    self.served_bytes[key] = self.served_bytes.get(key, 0) + sent
                h.close_connection = True
                h.connection.shutdown(2)  # cut mid-body: the client sees fewer bytes than Content-Length
                return
            h.wfile.write(chunk)
            sent += len(chunk)
            if slow is not None and sent >= slow.after:
                time.sleep(slow.delay)
        with self._lock:
            self.served_bytes[key] = self.served_bytes.get(key, 0) + sent


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]
