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
from collections.abc import Iterator, Mapping
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


def download_argv(python: str, expected: Expected, index_url: str, dest: Path) -> list[str]:
    """The pip command, pinned to this wheel's name, version and tags. Pure, so unit tests can read it."""
    name, version, _, tags = parse_wheel_filename(expected.filename)
    tag = sorted(tags, key=str)[0]
    argv = [
        python, "-m", "pip", "download",
        "--isolated", "--no-cache-dir", "--disable-pip-version-check", "--no-input",
        "--no-deps", "--only-binary", ":all:",
        "--dest", str(dest),
        "--index-url", index_url,
    ]  # fmt: skip
    if expected.extra_index_url:
        argv += ["--extra-index-url", expected.extra_index_url]
    if tag.interpreter.startswith("cp") and tag.interpreter[2:].isdigit():
        digits = tag.interpreter[2:]
        argv += ["--python-version", f"{digits[0]}.{digits[1:]}", "--implementation", "cp"]
    if tag.abi != "none":
        argv += ["--abi", tag.abi]
    for platform in sorted({t.platform for t in tags}):
        if platform != "any":
            argv += ["--platform", platform]
    argv.append(f"{name}=={version}")
    return argv


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
    expected: Expected,
    index_url: str,
    *,
    creds: Credentials | None = None,
    python: str = sys.executable,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Download the wheel as an image build would; raise unless the very recorded file came back."""
    secrets = creds.secrets() if creds else ()
    with tempfile.TemporaryDirectory(prefix="wheels-verify-") as tmp, _netrc(index_url, creds) as extra:
        dest = Path(tmp)
        argv = download_argv(python, expected, index_url, dest)
        run_env = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("PIP_")}
        run_env.update(extra)
        result = subprocess.run(argv, env=run_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = scrub("\n".join(result.stdout.strip().splitlines()[-15:]), secrets)
            raise PublishError(
                f"pip could not resolve {expected.filename} from {mask_url(index_url)} after publishing",
                why=f"`{scrub(shlex.join(argv), secrets)}` failed:\n{tail}",
                fix="check that the index serves what it accepted (its simple page for the project), "
                "and that the extra index is reachable",
            )
        got = [p for p in dest.iterdir() if p.suffix == ".whl"]
        if [p.name for p in got] != [expected.filename]:
            raise PublishError(
                f"pip resolved {', '.join(p.name for p in got) or 'nothing'} instead of {expected.filename} "
                f"from {mask_url(index_url)}",
                why="the index (or the extra index) serves another file for this name and version",
                fix="remove the other file from the index, or publish to an index that holds only our builds",
            )
        digest = sha256_file(got[0])
        if digest != expected.sha256:
            raise PublishError(
                f"{expected.filename} resolved from {mask_url(index_url)} has sha256 {digest}, "
                f"but the wheelhouse recorded {expected.sha256}",
                why="the index serves a different file under this name",
                fix="delete the file from the index and publish again",
            )
        log.info(f"verified {expected.filename}: pip resolves it from the index with the recorded sha256")
        return got[0]
