"""Sources pinned by sha256: a download whose bytes differ from the pin is refused and leaves nothing behind; a
corrupted cache entry is fetched again; transient server errors are retried, client errors are not."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wheels import sources, util
from wheels.errors import SourceError
from wheels.options import Source, Target, TorchBuild

GOOD = b"the real sdist bytes\n" * 100


class _Handler(http.server.BaseHTTPRequestHandler):
    body = GOOD
    failures_before_success = 0
    status = 200
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        cls.calls += 1
        if cls.failures_before_success > 0:
            cls.failures_before_success -= 1
            self.send_error(503)
            return
        if cls.status != 200:
            self.send_error(cls.status)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    handler = type("Handler", (_Handler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}/pkg-1.0.tar.gz"  # type: ignore[attr-defined]
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _target(url: str, sha: str) -> Target:
    return Target(
        name="pkg", package="pkg", version="1.0", recipe="canary", source=Source("sdist", url, sha),
        torch=TorchBuild(name="cu124", source="index", version="2.5.1", cuda="12.4", index_url="x"),
        python="3.11", cuda_archs=("9.0",),
    )


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util.time, "sleep", lambda s: None)


def test_pinned_sdist_is_downloaded_and_cached(server: type[_Handler], tmp_path: Path) -> None:
    target = _target(server.url, hashlib.sha256(GOOD).hexdigest())  # type: ignore[attr-defined]
    path = sources.fetch(target, tmp_path)
    assert path.read_bytes() == GOOD
    assert sources.fetch(target, tmp_path) == path and server.calls == 1  # the second fetch is the cache


def test_a_download_that_does_not_match_its_pin_is_refused_and_deleted(server: type[_Handler], tmp_path: Path) -> None:
    server.body = b"tampered or truncated"
    target = _target(server.url, hashlib.sha256(GOOD).hexdigest())  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="sha256 .* but its pin is") as err:
        sources.fetch(target, tmp_path)
    assert "bad file was deleted" in err.value.render()
    leftovers = [p for p in (tmp_path / "sources").rglob("*") if p.is_file()]
    assert leftovers == [], f"a half or wrong file was left: {leftovers}"


def test_a_corrupted_cache_entry_is_fetched_again(server: type[_Handler], tmp_path: Path) -> None:
    target = _target(server.url, hashlib.sha256(GOOD).hexdigest())  # type: ignore[attr-defined]
    path = sources.fetch(target, tmp_path)
    path.write_bytes(b"bit rot")
    assert sources.fetch(target, tmp_path).read_bytes() == GOOD
    assert server.calls == 2


def test_server_errors_are_retried_client_errors_are_not(server: type[_Handler], tmp_path: Path) -> None:
    server.failures_before_success = 2
    target = _target(server.url, hashlib.sha256(GOOD).hexdigest())  # type: ignore[attr-defined]
    assert sources.fetch(target, tmp_path).read_bytes() == GOOD
    assert server.calls == 3
    server.status, server.calls = 404, 0
    other = dataclasses.replace(target, source=Source("sdist", server.url + "x", "ab" * 32))  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="HTTP 404"):
        sources.fetch(other, tmp_path)
    assert server.calls == 1
