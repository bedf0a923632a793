"""Everything that talks to the Hugging Face hub (or a mirror, or a plain URL), through huggingface_hub.

The downloader above this module never sees an HTTP library: it gets a ``Remote`` (where the bytes are, how big, what
hash the hub vouches for) and a ``Failure`` classification of whatever went wrong (retry or not, and the message).
huggingface_hub provides the URLs, headers (user agent, token), session, error types and the Xet client; which HTTP
library sits under it is ``hfcompat``'s business.
"""

from __future__ import annotations

import dataclasses
import errno
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlparse

from huggingface_hub import constants, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import build_hf_headers, parse_xet_file_data_from_response

from . import __version__, hfcompat, log
from .errors import AccessError, ConfigError, DiskSpaceError, ModelsError, NetworkError, NotFoundError
from .manifest import ModelFile

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
METADATA_TIMEOUT_S = 30.0
# Bytes per read and write: a connection that drops loses at most this much, and the bars move smoothly.
CHUNK_SIZE = 1 << 20
MAX_REDIRECTS = 10


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the server says about one file, from a HEAD request."""

    url: str  # where to GET the bytes (the CDN location for LFS files)
    size: int | None
    commit: str | None  # X-Repo-Commit
    etag: str | None
    headers: Mapping[str, str] = dataclasses.field(repr=False)  # for the GET; no token when off the hub
    xet: Any = None  # huggingface_hub's XetFileData, when the hub offers Xet storage
    # The hub's own headers, token included: for Xet, whose token refresh asks the hub (not the CDN) for access.
    hub_headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def lfs_sha256(self) -> str | None:
        """The hub's own sha256 of an LFS file: its (X-Linked-)ETag."""
        return self.etag if self.etag and _SHA256.fullmatch(self.etag) else None

    @property
    def git_sha1(self) -> str | None:
        """For a small file kept in git (not LFS) the ETag is its git blob sha1."""
        return self.etag if self.etag and _SHA1.fullmatch(self.etag) else None


class ShortBody(ConnectionError):
    """The server closed the connection cleanly before sending every byte it announced."""


class XetFailed(Exception):
    """hf_xet, after its own retries, could not assemble the file (its errors are RuntimeErrors with a message)."""


# A connection cut mid-body: resumed from where the file stands.
_DROPPED: tuple[type[Exception], ...] = (*hfcompat.TRANSPORT_ERRORS, ShortBody)
# What the hub's Xet token route can answer inside hf_xet's download: classified like any other request.
_HUB_ANSWERS: tuple[type[Exception], ...] = (hf_errors.HfHubHTTPError, *hfcompat.TRANSPORT_ERRORS)


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port


def _headers(token: str | None) -> dict[str, str]:
    headers = build_hf_headers(token=token or False, library_name="steadydancer-models", library_version=__version__)
    headers["Accept-Encoding"] = "identity"  # the real size in HEAD answers, and the file's own bytes to hash
    return headers


def _without_token(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _etag(value: str | None) -> str | None:
    return value.removeprefix("W/").strip('"') if value else None


def _head_on_hub(url: str, headers: dict[str, str], timeout: float) -> Any:
    """HEAD a resolve URL the way huggingface_hub does: a redirect on the hub itself (a renamed repository) is
    followed, one to another origin (the CDN serving LFS bytes) is not: its Location is where the bytes are."""
    for _ in range(MAX_REDIRECTS):
        response = hfcompat.request("HEAD", url, headers=headers, timeout=timeout, follow_redirects=False)
        location = response.headers.get("Location")
        if not (300 <= response.status_code < 400 and location and not urlparse(location).netloc):
            return response
        url = urljoin(url, location)
    raise NetworkError(f"The hub redirected {url} more than {MAX_REDIRECTS} times", fix="check HF_ENDPOINT")


def resolve(entry: ModelFile, endpoint: str, token: str | None, timeout: float = METADATA_TIMEOUT_S) -> Remote:
    """HEAD the file: its size, commit, hub hash and download location. Raises huggingface_hub/HTTP errors."""
    if entry.on_hub:
        assert entry.repo is not None and entry.path is not None
        url = hf_hub_url(entry.repo, entry.path, revision=entry.revision, endpoint=endpoint)
        headers = _headers(token)
        response = _head_on_hub(url, headers, timeout)
        hfcompat.raise_for_status(response)
        answer = response.headers
        redirected = 300 <= response.status_code < 400
        location = urljoin(str(response.url), answer["Location"]) if redirected and answer.get("Location") \
            else str(response.url)
        return Remote(
            url=location,
            # The linked (LFS) size and hash describe the file; a redirect's own Content-Length does not.
            size=_int(answer.get(constants.HUGGINGFACE_HEADER_X_LINKED_SIZE)
                      or (None if redirected else answer.get("Content-Length"))),
            commit=answer.get(constants.HUGGINGFACE_HEADER_X_REPO_COMMIT),
            etag=_etag(answer.get(constants.HUGGINGFACE_HEADER_X_LINKED_ETAG) or answer.get("ETag")),
            # A signed CDN URL: the token must not leave the hub (huggingface_hub does the same).
            headers=headers if _origin(location) == _origin(url) else _without_token(headers),
            xet=parse_xet_file_data_from_response(response, endpoint=endpoint),
            hub_headers=headers,
        )
    assert entry.url is not None
    headers = _without_token(_headers(None))
    response = hfcompat.request("HEAD", entry.url, headers=headers, timeout=timeout, follow_redirects=True)
    hfcompat.raise_for_status(response)
    return Remote(
        url=str(response.url), size=_int(response.headers.get("Content-Length")), commit=None, etag=None,
        headers=headers,
    )


def fetch(remote: Remote, out: BinaryIO, resume_size: int, name: str) -> None:
    """Stream the bytes after ``resume_size`` into ``out`` (a Range request when resuming).

    A connection that drops after delivering new bytes is resumed at once from where it stopped (the caller's
    running hash just continues), as huggingface_hub's own ``http_get`` does. One that fails before delivering
    anything raises: the caller's retries, with backoff, take over, and ``classify`` says what went wrong.
    """
    offset = resume_size
    while True:
        try:
            _get(remote, out, offset)
            return
        except _DROPPED as exc:
            if out.tell() <= offset:
                raise
            offset = out.tell()
            log.warn(f"{name}: the connection dropped at {log.fmt_bytes(offset)} ({exc}); resuming from there")


def _get(remote: Remote, out: BinaryIO, offset: int) -> None:
    headers = dict(remote.headers)
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with hfcompat.stream_get(remote.url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
        if response.status_code == 416 and offset and remote.size is None \
                and response.headers.get("Content-Range") == f"bytes */{offset}":
            return  # of unknown size, and already complete
        hfcompat.raise_for_status(response)
        if offset and response.status_code != 206:
            # The server ignored the Range and sends the whole file: start the file over (the writer re-hashes).
            out.seek(0)
            out.truncate(0)
        for chunk in hfcompat.iter_chunks(response, CHUNK_SIZE):
            out.write(chunk)
    if remote.size is not None and out.tell() < remote.size:
        raise ShortBody(f"the server closed the connection after {out.tell()} of {remote.size} bytes")


def fetch_xet(remote: Remote, incomplete: Path, name: str) -> None:
    """Download through hf_xet (chunk-deduplicated, parallel); the caller hashes the result afterwards."""
    try:
        hfcompat.xet_download(incomplete, remote.xet, dict(remote.hub_headers), remote.size, name)
    except _HUB_ANSWERS:
        raise  # 401, 503 ... from the hub's Xet token route, or no connection to it
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise XetFailed(f"{type(exc).__name__}: {exc}") from exc


def xet_available() -> bool:
    return hfcompat.xet_available()


def require_xet() -> None:
    """``--transport xet`` was asked for: fail before the first request if it cannot be honoured."""
    if not xet_available():
        why = "HF_HUB_DISABLE_XET is set" if constants.HF_HUB_DISABLE_XET else "the hf_xet package is not installed"
        raise ConfigError(
            "--transport xet (MODELS_TRANSPORT=xet) cannot be used here", why=why,
            fix="install hf-xet (constraints.txt pins the version huggingface_hub accepts) and unset "
            "HF_HUB_DISABLE_XET, or use --transport http",
        )


@dataclasses.dataclass(frozen=True)
class Failure:
    retry: bool
    error: ModelsError


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def classify(exc: BaseException, entry: ModelFile, endpoint: str) -> Failure:
    """Turn a transfer exception into a retry decision and a message that says what to do."""
    where = entry.origin
    status = _status(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failure(False, DiskSpaceError(
            f"The disk filled up while downloading {entry.name}",
            why=str(exc), fix="free space on the destination volume (or pick fewer variants), then run again",
        ))
    if isinstance(exc, XetFailed):
        return Failure(False, NetworkError(
            f"hf_xet could not download {where}", why=f"{exc} (after hf_xet's own retries)",
            fix="run again (hf_xet resumes from its chunk cache), or use --transport http: plain HTTP, streamed "
            "and resumable",
        ))
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return Failure(False, ConfigError(
            f"Cannot fetch {where}: huggingface_hub is in offline mode", why=str(exc),
            fix="unset HF_HUB_OFFLINE to download (`--list --offline` shows what is present without the network)",
        ))
    if isinstance(exc, hf_errors.GatedRepoError) or status in (401, 403):
        gated = isinstance(exc, hf_errors.GatedRepoError)
        if status == 403:
            return Failure(False, AccessError(
                f"The hub refused access to {where} (HTTP 403)",
                why="the token has no access to this " + ("gated " if gated else "") + "repository",
                fix=f"accept the model's terms at {endpoint}/{entry.repo} with the token's account, "
                "or use a token with read access",
            ))
        return Failure(False, AccessError(
            f"{where} needs authentication (HTTP 401)",
            why="the repository is gated or private" + ("" if gated else ", or it does not exist"),
            fix="set HF_TOKEN (or, at image build, pass it as a BuildKit secret mounted at /run/secrets/hf_token) "
            f"for an account that has accepted the terms at {endpoint}/{entry.repo}",
        ))
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return Failure(False, NotFoundError(
            f'Revision "{entry.revision}" of {entry.repo} does not exist (HTTP 404)',
            fix=f"the manifest entry [files.{entry.name}] is wrong: fix its revision",
        ))
    if isinstance(exc, hf_errors.RepositoryNotFoundError) and status == 404:
        return Failure(False, NotFoundError(
            f"Repository {entry.repo} does not exist on {endpoint} (HTTP 404)",
            fix=f"the manifest entry [files.{entry.name}] is wrong: fix its repo "
            "(or, for a private repo, set HF_TOKEN)",
        ))
    if isinstance(exc, hf_errors.EntryNotFoundError) or status == 404:
        return Failure(False, NotFoundError(
            f"{where} does not exist (HTTP 404)",
            why="the file is not in that repository at that revision" if entry.on_hub
            else "the server has no such file",
            fix=f"the manifest entry [files.{entry.name}] is wrong: fix its path (or url) or revision",
        ))
    if status is not None and (status >= 500 or status in (408, 429)):
        return Failure(True, NetworkError(f"The server answered HTTP {status} for {where}"))
    if isinstance(exc, (*hfcompat.TRANSPORT_ERRORS, TimeoutError, ConnectionError)):
        return Failure(True, NetworkError(f"Connection problem while fetching {where}: {exc}"))
    if status is not None:
        return Failure(False, NetworkError(f"The server answered HTTP {status} for {where}: {exc}"))
    if isinstance(exc, ModelsError):
        return Failure(False, exc)
    raise exc
