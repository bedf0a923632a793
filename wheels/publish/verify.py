"""Proof of publication: resolve each wheel from the index exactly as an image build will, and compare hashes.

``pip download --no-deps --only-binary :all: --index-url INDEX --extra-index-url TORCH_INDEX NAME==VERSION``, for the
wheel's own Python and platform tags, into an empty folder, with no pip configuration, no cache and no environment
variables of the user's (``--isolated``): what comes back must be the very file the wheelhouse recorded.
Credentials, when the index needs them for reading, reach pip through a private netrc file, never its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from packaging.utils import parse_wheel_filename

from .. import log
from ..errors import PublishError
from ..util import sha256_file
from .credentials import Credentials, mask_url, scrub


@dataclasses.dataclass(frozen=True)
class Expected:
    filename: str
    sha256: str
    extra_index_url: str | None  # the pinned torch's index, as the image build passes it


def _tag_options(filename: str) -> list[str]:
    """pip's target options for a wheel's own tags: it is resolved as for the interpreter it was built for."""
    _, _, _, tags = parse_wheel_filename(filename)
    tag = sorted(tags, key=str)[0]
    options: list[str] = []
    if tag.interpreter.startswith("cp") and tag.interpreter[2:].isdigit():
        digits = tag.interpreter[2:]
        options += ["--python-version", f"{digits[0]}.{digits[1:]}", "--implementation", "cp"]
    if tag.abi != "none":
        options += ["--abi", tag.abi]
    for platform in sorted({t.platform for t in tags}):
        if platform != "any":
            options += ["--platform", platform]
    return options


def _requirement(filename: str) -> str:
    name, version, _, _ = parse_wheel_filename(filename)
    return f"{name}=={version}"


def download_argv(python: str, group: Sequence[Expected], index_url: str, dest: Path) -> list[str]:
    """One pip command for wheels that share tags and extra index. Pure, so unit tests can read it."""
    first = group[0]
    argv = [
        python, "-m", "pip", "download",
        "--isolated", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
        "--no-deps", "--only-binary", ":all:",
        "--dest", str(dest),
        "--index-url", index_url,
    ]  # fmt: skip
    if first.extra_index_url:
        argv += ["--extra-index-url", first.extra_index_url]
    argv += _tag_options(first.filename)
    argv += [_requirement(e.filename) for e in group]
    return argv


def groups(expected: Sequence[Expected]) -> list[list[Expected]]:
    """Wheels that one pip run can resolve together (same tags, same extra index): one pip start-up per group."""
    by_key: dict[tuple[str | None, tuple[str, ...]], list[Expected]] = {}
    for e in expected:
        by_key.setdefault((e.extra_index_url, tuple(_tag_options(e.filename))), []).append(e)
    return list(by_key.values())


@contextlib.contextmanager
def _netrc(index_url: str, creds: Credentials | None) -> Iterator[dict[str, str]]:
    """Environment entries that give pip the index's credentials through a 0600 netrc file, removed afterwards."""
    host = urllib.parse.urlsplit(index_url).hostname
    if creds is None or host is None or index_url.startswith("file:"):
        yield {}
        return
    fd, path = tempfile.mkstemp(prefix="wheels-netrc-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"machine {host}\nlogin {creds.username}\npassword {creds.password}\n")
        os.chmod(path, 0o600)
        yield {"NETRC": path}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def resolve_from_index(
    expected: Sequence[Expected],
    index_url: str,
    *,
    creds: Credentials | None = None,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> None:
    """Download the wheels as an image build would; raise unless the very recorded files came back."""
    secrets = creds.secrets() if creds else ()
    base_env = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("PIP_")}
    for group in groups(expected):
        with tempfile.TemporaryDirectory(prefix="wheels-verify-") as tmp, _netrc(index_url, creds) as extra:
            dest = Path(tmp)
            argv = download_argv(python, group, index_url, dest)
            result = subprocess.run(
                argv, env={**base_env, **extra}, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            if result.returncode != 0:
                tail = scrub("\n".join(result.stdout.strip().splitlines()[-15:]), secrets)
                raise PublishError(
                    f"pip could not resolve {', '.join(e.filename for e in group)} from {mask_url(index_url)} "
                    "after publishing",
                    why=f"`{scrub(shlex.join(argv), secrets)}` failed:\n{tail}",
                    fix="check that the index serves what it accepted (its simple page for the project), "
                    "and that the extra index is reachable",
                )
            got = {p.name: p for p in dest.iterdir() if p.suffix == ".whl"}
            for e in group:
                _compare(e, got, index_url)


def _compare(e: Expected, got: Mapping[str, Path], index_url: str) -> None:
    if e.filename not in got:
        name = str(parse_wheel_filename(e.filename)[0])
        others = sorted(n for n in got if str(parse_wheel_filename(n)[0]) == name)
        raise PublishError(
            f"pip resolved {', '.join(others) or 'nothing'} instead of {e.filename} from {mask_url(index_url)}",
            why="the index (or the extra index) serves another file for this name and version",
            fix="remove the other file from the index, or publish to an index that holds only our builds",
        )
    digest = sha256_file(got[e.filename])
    if digest != e.sha256:
        raise PublishError(
            f"{e.filename} resolved from {mask_url(index_url)} has sha256 {digest}, "
            f"but the wheelhouse recorded {e.sha256}",
            why="the index serves a different file under this name",
            fix="delete the file from the index and publish again",
        )
    log.info(f"verified {e.filename}: pip resolves it from the index with the recorded sha256")
