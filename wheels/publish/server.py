"""The embedded index: a real pypiserver on loopback, upload-protected, with its data outside the wheelhouse.

    with embedded_index(data_dir) as index:
        index.url            # http://127.0.0.1:PORT/          (pip: index.simple_url)
        index.upload_url     # where twine uploads
        index.credentials    # for uploaders; never logged

Layout of the data directory (default ``.cache/index``, setting ``WHEELS_INDEX_DIR`` / ``--index-dir``)::

    packages/           the files the index serves (uploads land here)
    credentials.json    0600: the upload user and password, generated once (unless WHEELS_INDEX_USERNAME/PASSWORD)
    htpasswd            0600: written from the credentials at every start
    server.log          the server's own log
    quarantine/         files found unreadable at start (a server killed mid-write), moved aside, never served

Downloads and listings are open (pip and image builds need no secret); uploads need the password. The server is
started in its own session with a parent-death signal, waited for on its health endpoint, and stopped with SIGTERM
(then SIGKILL) when the context ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .. import log
from ..errors import ConfigError, PublishError
from ..util import atomic_write_text
from .credentials import Credentials

HOST = "127.0.0.1"
DEFAULT_USER = "wheels"
HEALTH = "/health"


@dataclasses.dataclass(frozen=True)
class EmbeddedIndex:
    url: str  # the server's root, with a trailing slash
    data_dir: Path
    credentials: Credentials
    pid: int
    _proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def simple_url(self) -> str:
        return self.url + "simple/"

    @property
    def upload_url(self) -> str:
        return self.url

    @property
    def packages_dir(self) -> Path:
        return self.data_dir / "packages"

    def uploader_env(self) -> dict[str, str]:
        """What twine (or any uploader following its conventions) needs, for a subprocess's environment only."""
        return {
            "TWINE_REPOSITORY_URL": self.upload_url,
            "TWINE_USERNAME": self.credentials.username,
            "TWINE_PASSWORD": self.credentials.password,
        }


def _write_private(path: Path, text: str) -> None:
    atomic_write_text(path, text)
    path.chmod(0o600)


def load_credentials(data_dir: Path, env: Mapping[str, str]) -> Credentials:
    """WHEELS_INDEX_USERNAME + WHEELS_INDEX_PASSWORD, else credentials.json, else new ones kept there (0600)."""
    user, password = env.get("WHEELS_INDEX_USERNAME"), env.get("WHEELS_INDEX_PASSWORD")
    if bool(user) != bool(password):
        raise ConfigError(
            "Only one of WHEELS_INDEX_USERNAME and WHEELS_INDEX_PASSWORD is set",
            fix="set both, or neither (then credentials are generated once and kept in the index's data folder)",
        )
    if user and password:
        return Credentials(user, password, source="WHEELS_INDEX_USERNAME/WHEELS_INDEX_PASSWORD")
    path = data_dir / "credentials.json"
    if path.exists():
        try:
            data = json.loads(path.read_text())
            creds = Credentials(str(data["username"]), str(data["password"]), source=str(path))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                f"{path} is damaged", fix="delete it: new credentials are generated at the next start"
            ) from None
        if path.stat().st_mode & 0o077:
            log.warn(f"{path} was readable by others; made it 0600")
            path.chmod(0o600)
        return creds
    creds = Credentials(DEFAULT_USER, secrets.token_urlsafe(24), source=str(path))
    _write_private(path, json.dumps({"username": creds.username, "password": creds.password}) + "\n")
    log.info(f"generated upload credentials for the embedded index (user {creds.username!r}) in {path}")
    return creds


def write_htpasswd(path: Path, creds: Credentials) -> None:
    """An Apache htpasswd file (passlib), sha256-crypt with modest rounds: verified on every upload request."""
    import warnings

    with warnings.catch_warnings():
        # passlib 1.7.4 imports the stdlib `crypt` (deprecated in 3.11, gone in 3.13, where passlib hashes in Python).
        warnings.simplefilter("ignore", DeprecationWarning)
        from passlib.apache import HtpasswdFile
        from passlib.hash import sha256_crypt

        digest = sha256_crypt.using(rounds=20_000).hash(creds.password)
    ht = HtpasswdFile(new=True)
    ht.set_hash(creds.username, digest)
    _write_private(path, ht.to_string().decode())


def quarantine_unreadable(packages: Path, quarantine: Path) -> list[Path]:
    """Move aside files that are not readable archives (a server killed mid-write leaves a truncated one)."""
    moved: list[Path] = []
    for path in sorted(packages.glob("*.whl")):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            quarantine.mkdir(parents=True, exist_ok=True)
            dest = quarantine / f"{path.name}.{int(time.time())}"
            os.replace(path, dest)
            log.warn(
                f"{path.name} in the embedded index is not a readable wheel (an interrupted upload?); moved to {dest}"
            )
            moved.append(dest)
    return moved


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the process that started it dies, even by SIGKILL: no orphans."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The server needs no secret of ours: drop upload credentials from its environment."""
    drop = {"TWINE_PASSWORD", "TWINE_USERNAME", "WHEELS_INDEX_PASSWORD"}
    return {k: v for k, v in env.items() if k not in drop}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + HEALTH, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _startup_fix(tail: str, port: int) -> str:
    if "Address already in use" in tail:
        return f"port {port} is taken: choose another with WHEELS_INDEX_PORT / --port"
    if "cannot be longer than 72 bytes" in tail:
        return "passlib 1.7.4 cannot load bcrypt 5: install the bcrypt pinned in constraints.txt (4.0.1)"
    return "install the publish dependencies with the pins (`nox -s index` does) and see the server log"


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warn(f"the embedded index (pid {proc.pid}) did not stop within {timeout:.0f}s of SIGTERM; killing it")
        proc.kill()
        proc.wait()


def check_outside(data_dir: Path, wheelhouse: Path | None) -> None:
    """The index's data must live apart from the wheelhouse: an upload must never write into build outputs."""
    if wheelhouse is None:
        return
    d, w = data_dir.resolve(), wheelhouse.resolve()
    if d == w or d.is_relative_to(w) or w.is_relative_to(d):
        raise ConfigError(
            f"The index data folder {d} overlaps the wheelhouse {w}",
            why="the index's uploads would land among, or replace, the wheelhouse's records",
            fix="set WHEELS_INDEX_DIR / --index-dir to a folder outside the wheelhouse (default: .cache/index)",
        )


@contextlib.contextmanager
def embedded_index(
    data_dir: Path,
    *,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    extra_roots: Sequence[Path] = (),
    wheelhouse: Path | None = None,
    python: str = sys.executable,
    startup_timeout: float = 30.0,
) -> Iterator[EmbeddedIndex]:
    """Start pypiserver on 127.0.0.1 (``port`` 0: a free one), wait until it answers, stop it afterwards.

    ``extra_roots``: more folders to serve read-only (uploads always go to ``data_dir/packages``).
    """
    env = os.environ if env is None else env
    data_dir = data_dir.resolve()
    check_outside(data_dir, wheelhouse)
    packages = data_dir / "packages"
    packages.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # holds the credentials; what it serves goes out over HTTP, not the filesystem
    creds = load_credentials(data_dir, env)
    htpasswd = data_dir / "htpasswd"
    write_htpasswd(htpasswd, creds)
    quarantine_unreadable(packages, data_dir / "quarantine")
    for root in extra_roots:
        if not Path(root).is_dir():
            raise ConfigError(f"Extra folder to serve {root} does not exist")

    server_log = data_dir / "server.log"
    attempts = 1 if port else 3  # a free port can be taken between our probe and the server's bind: try another
    for attempt in range(1, attempts + 1):
        chosen = port or free_port()
        url = f"http://{HOST}:{chosen}/"
        cmd = [
            python, "-m", "pypiserver", "run",
            "--host", HOST, "--port", str(chosen),
            "--authenticate", "update", "--passwords", str(htpasswd),
            "--disable-fallback",  # serve only what is here: never redirect a missing name to PyPI
            "--hash-algo", "sha256",
            "--health-endpoint", HEALTH,
            str(packages), *(str(Path(r).resolve()) for r in extra_roots),
        ]  # fmt: skip
        with server_log.open("ab") as out:
            out.write(f"\n--- {datetime.datetime.now().isoformat(timespec='seconds')} starting on {url}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_child_env(env),
                start_new_session=True,  # Ctrl-C reaches us, and we stop the server cleanly
                preexec_fn=_die_with_parent,
            )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _healthy(url):
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise PublishError(
                        f"The embedded index did not answer on {url} within {startup_timeout:.0f}s",
                        why=f"last lines of {server_log}:\n{_log_tail(server_log)}",
                        fix="see the server log",
                    )
                time.sleep(0.1)
            if proc.poll() is not None:
                tail = _log_tail(server_log)
                if "Address already in use" in tail and attempt < attempts:
                    continue
                raise PublishError(
                    f"The embedded index (pypiserver) exited at start with status {proc.returncode}",
                    why=f"last lines of {server_log}:\n{tail}",
                    fix=_startup_fix(tail, chosen),
                )
            log.info(f"embedded index (pypiserver, pid {proc.pid}) serving {packages} on {url}")
            yield EmbeddedIndex(url=url, data_dir=data_dir, credentials=creds, pid=proc.pid, _proc=proc)
            return
        finally:
            _stop(proc)
    raise AssertionError("unreachable")


def wait(index: EmbeddedIndex) -> None:
    """Block until the server exits (it should not) or the user presses Ctrl-C."""
    assert index._proc is not None, "wait() needs an index started by embedded_index()"
    while index._proc.poll() is None:
        time.sleep(1)
    raise PublishError(
        f"The embedded index (pid {index.pid}) stopped by itself with status {index._proc.returncode}",
        fix=f"see {index.data_dir / 'server.log'}",
    )
