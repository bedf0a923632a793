"""Publishing against a real pypiserver on loopback with upload authentication, and to a static index.

Small real wheels (tests/publishing.py) keep these fast; the last test takes the real canary wheel from the
wheelhouse through `python -m wheels publish` and `pip install` into a fresh environment.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from publishing import add_to_wheelhouse, empty_simple_index, make_wheel, make_wheelhouse

from wheels import log
from wheels.envs import fresh_env, install_torch
from wheels.errors import PublishError
from wheels.manifest import Wheelhouse
from wheels.options import REPO_ROOT, TorchBuild
from wheels.publish import embedded_index
from wheels.publish.pipeline import publish
from wheels.publish.server import free_port
from wheels.publish.settings import resolve_publish
from wheels.publish.upload import upload_one

pytestmark = pytest.mark.integration

pytest.importorskip("pypiserver", reason="publishing needs pypiserver (nox -s tests installs it)")
pytest.importorskip("twine", reason="publishing needs twine (nox -s tests installs it)")
pytest.importorskip("passlib", reason="the embedded index needs passlib (nox -s tests installs it)")

PASSWORD = "integration-secret-pw-7f3a"
WRONG = "wrong-secret-pw-91c2"
DEMO = ("demo", "1.0+cu124torch2.5")
OTHER = ("other-pkg", "2.0+cu124torch2.5")


@pytest.fixture(autouse=True)
def logs() -> Iterator[io.StringIO]:
    """Capture the pipeline's log, and check afterwards that no password ever reached it."""
    stream = io.StringIO()
    log.set_stream(stream)
    try:
        yield stream
    finally:
        log.set_stream(None)
    text = stream.getvalue()
    assert PASSWORD not in text and WRONG not in text, "a password reached the log"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        # The torch builds' index, passed to pip as --extra-index-url by the proof: local, so these tests stay offline.
        "TORCH_INDEX_URL": empty_simple_index(tmp_path / "torch-index"),
        "WHEELS_INDEX_USERNAME": "ci-user",
        "WHEELS_INDEX_PASSWORD": PASSWORD,
    }


@pytest.fixture
def house(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    make_wheelhouse(house, tmp_path / "scratch", {"demo-cu124": DEMO, "other-cu124": OTHER})
    return house


@pytest.fixture
def index(tmp_path: Path, env: dict[str, str]) -> Iterator:  # noqa: ANN001
    with embedded_index(tmp_path / "index", env=env) as idx:
        yield idx


def held(index_dir: Path) -> list[str]:
    return sorted(p.name for p in (index_dir / "packages").glob("*.whl"))


def opts_for(tmp_path: Path, house: Path, env: dict[str, str], *argv: str):  # noqa: ANN201
    return resolve_publish(["--wheelhouse", str(house), "--index-dir", str(tmp_path / "index"), *argv], env, tmp_path)


def check_no_secrets(house: Path, *texts: str) -> None:
    published = (house / "published.json").read_text() if (house / "published.json").exists() else ""
    for text in (published, *texts):
        assert PASSWORD not in text and WRONG not in text


# ---------------------------------------------------------------------------------------------------------------------


def test_good_credentials_publish_and_resolve(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    outcome = publish(opts_for(tmp_path, house, env), env)  # the embedded index, started for the run
    names = sorted(r.filename for r in Wheelhouse(house).records().values())
    assert sorted(outcome.uploaded) == names and outcome.present == []
    assert sorted(outcome.verified) == names
    assert held(tmp_path / "index") == names
    record = json.loads((house / "published.json").read_text())
    (dest,) = record["destinations"].values()
    assert dest["kind"] == "embedded"
    for name in names:
        entry = dest["wheels"][name]
        assert entry["action"] == "uploaded" and entry["published_at"] and entry["verified_at"]
    check_no_secrets(house)


def test_second_publish_is_a_no_op(tmp_path: Path, house: Path, env: dict[str, str], index) -> None:  # noqa: ANN001
    argv = ("--repository-url", index.upload_url)
    upload_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": PASSWORD}
    first = publish(opts_for(tmp_path, house, upload_env, *argv), upload_env)
    assert len(first.uploaded) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (index.packages_dir).glob("*.whl")}
    second = publish(opts_for(tmp_path, house, upload_env, *argv), upload_env)
    assert second.uploaded == [] and sorted(second.present) == sorted(first.uploaded)
    assert sorted(second.verified) == sorted(first.uploaded)
    assert {p.name: p.stat().st_mtime_ns for p in index.packages_dir.glob("*.whl")} == stamps
    check_no_secrets(house)


def test_credentials_in_the_url_are_used_and_never_shown(
    tmp_path: Path, house: Path, env: dict[str, str], index, logs: io.StringIO  # noqa: ANN001
) -> None:
    url = index.upload_url.replace("http://", f"http://ci-user:{PASSWORD}@")
    outcome = publish(opts_for(tmp_path, house, env, "--repository-url", url), env)
    assert len(outcome.uploaded) == 2 and len(outcome.verified) == 2
    assert "ci-user" not in (house / "published.json").read_text()  # recorded as the bare URL
    check_no_secrets(house, logs.getvalue())


def test_wrong_credentials_fail_clearly_and_upload_nothing(
    tmp_path: Path,
    house: Path,
    env: dict[str, str],
    index,  # noqa: ANN001
) -> None:
    bad_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": WRONG}
    with pytest.raises(PublishError) as info:
        publish(opts_for(tmp_path, house, bad_env, "--repository-url", index.upload_url), bad_env)
    text = info.value.render()
    assert "HTTP 403" in text and "credentials" in text and "TWINE_PASSWORD" in text
    assert held(tmp_path / "index") == []
    check_no_secrets(house, text)


def test_tampered_wheel_is_refused_before_any_upload(
    tmp_path: Path,
    house: Path,
    env: dict[str, str],
    index,  # noqa: ANN001
) -> None:
    records = Wheelhouse(house).records()
    victim = house / records["other-cu124"].filename
    os.replace(make_wheel(tmp_path / "evil", *OTHER, payload="tampered"), victim)  # same name, other bytes
    upload_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": PASSWORD}
    with pytest.raises(PublishError, match=r"1 wheel\(s\) differ from their records.*nothing was published"):
        publish(opts_for(tmp_path, house, upload_env, "--repository-url", index.upload_url), upload_env)
    assert held(tmp_path / "index") == []  # not even the intact wheel went up


def test_a_different_file_under_an_existing_name_is_refused(
    tmp_path: Path,
    house: Path,
    env: dict[str, str],
    index,  # noqa: ANN001
) -> None:
    records = Wheelhouse(house).records()
    impostor = make_wheel(tmp_path / "impostor", *DEMO, payload="someone else's build")
    assert impostor.name == records["demo-cu124"].filename
    upload_one(index.upload_url, impostor, index.credentials)
    upload_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": PASSWORD}
    with pytest.raises(PublishError) as info:
        publish(opts_for(tmp_path, house, upload_env, "--repository-url", index.upload_url), upload_env)
    text = info.value.render()
    assert "already holds a different file under 1 of our names; nothing was uploaded" in text
    assert impostor.name in text
    assert held(tmp_path / "index") == [impostor.name]  # the other wheel was not uploaded either


def test_an_interrupted_publish_is_finished_by_a_rerun(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    records = Wheelhouse(house).records()
    packages = tmp_path / "index" / "packages"
    packages.mkdir(parents=True)
    # As a run killed part-way leaves it: the first wheel complete, the second cut off mid-write by the server.
    (packages / records["demo-cu124"].filename).write_bytes((house / records["demo-cu124"].filename).read_bytes())
    (packages / records["other-cu124"].filename).write_bytes(
        (house / records["other-cu124"].filename).read_bytes()[:200]
    )
    outcome = publish(opts_for(tmp_path, house, env), env)
    assert outcome.present == [records["demo-cu124"].filename]
    assert outcome.uploaded == [records["other-cu124"].filename]
    assert len(outcome.verified) == 2
    assert list((tmp_path / "index" / "quarantine").iterdir())  # the truncated file was moved aside, not served


def test_unreachable_index(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    upload_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": PASSWORD}
    with pytest.raises(PublishError, match="Cannot reach the index at http://127.0.0.1"):
        publish(opts_for(tmp_path, house, upload_env, "--repository-url", url), upload_env)


class _PyPILike(http.server.BaseHTTPRequestHandler):
    """Answers uploads the way PyPI does when a version has a local label; knows no projects."""

    uploads = 0

    def do_GET(self) -> None:  # noqa: N802
        self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).uploads += 1
        self.send_response(
            400,
            "The use of local versions in <Version('1.0+cu124torch2.5')> is not allowed. "
            "See https://packaging.python.org/specifications/core-metadata for more information.",
        )
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_index_that_rejects_local_versions(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PyPILike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/legacy/"
        upload_env = {**env, "TWINE_USERNAME": "ci-user", "TWINE_PASSWORD": PASSWORD}
        with pytest.raises(PublishError) as info:
            publish(opts_for(tmp_path, house, upload_env, "--repository-url", url), upload_env)
    finally:
        server.shutdown()
        server.server_close()
    text = info.value.render()
    assert "does not accept local versions" in text and "private index" in text
    assert _PyPILike.uploads == 1  # stopped at the first refusal
    # PyPI itself is known: refused before any network traffic, so nothing at all is half-published there.
    with pytest.raises(PublishError, match="does not accept local versions"):
        publish(
            opts_for(tmp_path, house, upload_env, "--repository-url", "https://upload.pypi.org/legacy/"), upload_env
        )


def test_static_index_serves_pip_with_hashes_checked(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    site = tmp_path / "site"
    first = publish(opts_for(tmp_path, house, env, "--static", str(site)), env)
    assert len(first.uploaded) == 2 and len(first.verified) == 2
    assert publish(opts_for(tmp_path, house, env, "--static", str(site)), env).uploaded == []  # a no-op rerun

    def pip_install(target: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--disable-pip-version-check",
             "--no-deps", "--target", str(target), "--index-url", (site / "simple").as_uri() + "/",
             f"{DEMO[0]}=={DEMO[1]}"],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    ok = pip_install(tmp_path / "t1")
    assert ok.returncode == 0, ok.stdout
    assert (tmp_path / "t1" / "demo" / "__init__.py").exists()

    # Swap the served file for another valid wheel of the same name: pip must refuse it on the page's sha256.
    records = Wheelhouse(house).records()
    served = site / "packages" / records["demo-cu124"].filename
    served.unlink()  # hard-linked from the staging copy: replace, never write through
    os.replace(make_wheel(tmp_path / "swap", *DEMO, payload="swapped"), served)
    bad = pip_install(tmp_path / "t2")
    assert bad.returncode != 0
    assert "HASHES" in bad.stdout.upper() or "hash" in bad.stdout
    # and the next publish notices the damage instead of writing on top of it
    with pytest.raises(PublishError, match="damaged"):
        publish(opts_for(tmp_path, house, env, "--static", str(site)), env)


def test_static_index_refuses_a_different_file_under_an_existing_name(
    tmp_path: Path, house: Path, env: dict[str, str]
) -> None:
    site = tmp_path / "site"
    publish(opts_for(tmp_path, house, env, "--static", str(site)), env)
    other_house = tmp_path / "wheelhouse2"
    add_to_wheelhouse(other_house, "demo-cu124", make_wheel(tmp_path / "rebuild", *DEMO, payload="a rebuild"))
    before = (site / ".static-index.json").read_text()
    with pytest.raises(PublishError, match="different file under 1 of our names; nothing was written"):
        publish(opts_for(tmp_path, other_house, env, "--static", str(site)), env)
    assert (site / ".static-index.json").read_text() == before


def test_index_command_serves_until_ctrl_c(tmp_path: Path, house: Path, env: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wheels", "index", "--wheelhouse", str(house), "--index-dir", str(tmp_path / "index"),
         "--port", str(port)],
        cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "serving until Ctrl-C" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # the wheelhouse is published into the index (and proven) before it is announced as served
        assert serving.wait(120), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/simple/other-pkg/", timeout=10) as r:
            assert "other_pkg-2.0+cu124torch2.5-py3-none-any.whl" in r.read().decode()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server_log = tmp_path / "index" / "server.log"
            tail = server_log.read_text(errors="replace")[-3000:] if server_log.exists() else "(no server log)"
            pytest.fail(f"still running 60 s after Ctrl-C; its output:\n{''.join(lines)}\nserver log:\n{tail}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert f"index:      http://127.0.0.1:{port}/simple/" in err and "stopped the embedded index" in err
    assert PASSWORD not in err
    with pytest.raises(OSError):  # the server went with it
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_canary_wheelhouse_to_index_to_pip_install(tmp_path: Path, canary_wheelhouse: Path) -> None:
    """The canary: `python -m wheels publish` (the nox session's command) -> pip install in a fresh env -> import."""
    (record,) = Wheelhouse(canary_wheelhouse).records().values()
    index_dir = tmp_path / "index"
    run_env = {**os.environ, "WHEELS_INDEX_USERNAME": "ci-user", "WHEELS_INDEX_PASSWORD": PASSWORD}
    cmd = [
        sys.executable,
        "-m",
        "wheels",
        "publish",
        "--wheelhouse",
        str(canary_wheelhouse),
        "--index-dir",
        str(index_dir),
    ]
    first = subprocess.run(cmd, cwd=REPO_ROOT, env=run_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert first.returncode == 0, first.stdout
    assert "published 1 new, 0 already there, 1 verified with pip" in first.stdout
    second = subprocess.run(
        cmd, cwd=REPO_ROOT, env=run_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert second.returncode == 0 and "published 0 new, 1 already there, 1 verified with pip" in second.stdout
    check_no_secrets(canary_wheelhouse, first.stdout, second.stdout)
    assert held(index_dir) == [record.filename]

    torch = TorchBuild(name="cu124", source="index", version="2.5.1", cuda="12.4", index_url="https://pypi.org/simple")
    with embedded_index(index_dir, env=run_env) as idx, fresh_env("3.11", "python3", prefix="canary-install-") as venv:
        install_torch(venv, torch)  # torch from PyPI (uv's cache makes this quick)
        report = tmp_path / "pip-report.json"
        install = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--isolated", "--no-cache-dir",
             "--disable-pip-version-check", "--report", str(report), "--index-url", idx.simple_url,
             "--extra-index-url", torch.index_url, f"{record.package}=={record.version}"],
            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout
        (item,) = json.loads(report.read_text())["install"]  # torch was already there: only the canary is new
        assert item["download_info"]["url"].startswith(idx.url)  # from our index ...
        assert urllib.parse.unquote(item["download_info"]["url"]).endswith("/" + record.filename)
        assert item["download_info"]["archive_info"]["hashes"]["sha256"] == record.sha256  # ... the very file we built
        probe = subprocess.run(
            [str(venv.python), "-c",
             "import importlib.metadata as m, torch, canary, canary._C; print(m.version('canary'), torch.__version__)"],
            text=True, capture_output=True,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split() == [record.version, "2.5.1+cu124"]


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """Redirects a project page to another host name (localhost) on the same port, noting who sent credentials."""

    seen: list[tuple[str, str, bool]] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append((self.headers.get("Host", ""), self.path, "Authorization" in self.headers))
        if self.path == "/simple/demo/":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/moved/demo/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'<a href="/p/demo-1.0-py3-none-any.whl#sha256=' + b"a" * 64 + b'">demo-1.0-py3-none-any.whl</a>'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_credentials_are_not_sent_to_another_host_on_redirect() -> None:
    from wheels.publish.credentials import Credentials
    from wheels.publish.remote import IndexReader

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reader = IndexReader(f"http://127.0.0.1:{server.server_address[1]}/simple/", Credentials("u", PASSWORD))
        (link,) = reader.links("demo")
    finally:
        server.shutdown()
        server.server_close()
    assert link.filename == "demo-1.0-py3-none-any.whl"
    auth = {(host.split(":")[0], path): sent for host, path, sent in _Redirecting.seen}
    assert auth[("127.0.0.1", "/simple/demo/")] is True  # the index's own host gets them
    assert auth[("localhost", "/moved/demo/")] is False  # the redirect target does not
