"""Everything that talks to the Hugging Face hub (or a mirror, or a plain URL), through huggingface_hub.

The downloader above this module never sees an HTTP library: it gets a ``Remote`` (where the bytes are, how big, what
hash the hub vouches for) and a ``Failure`` classification of whatever went wrong (retry or not, and the message).
"""

from __future__ import annotations

import dataclasses
import errno
import re
from collections.abc import Mapping
from typing import Any, BinaryIO
from urllib.parse import urlparse

try:  # huggingface_hub 2.x speaks httpx2; 1.x used httpx (constraints.txt pins 2.4.0)
    import httpx2
except ImportError:  # pragma: no cover - only with an older huggingface_hub than the pinned one
    import httpx as httpx2  # type: ignore[no-redef]
from huggingface_hub import errors as hf_errors
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff
from tqdm import tqdm

from . import __version__
from .errors import AccessError, DiskSpaceError, ModelsError, NetworkError, NotFoundError
from .manifest import ModelFile

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
METADATA_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the server says about one file, from a HEAD request."""

    url: str  # where to GET the bytes (the CDN location for LFS files)
    size: int | None
    commit: str | None  # X-Repo-Commit
    etag: str | None
    headers: Mapping[str, str] = dataclasses.field(repr=False)  # for the GET; no token when off the hub
    xet: Any = None  # huggingface_hub's XetFileData, when the hub offers Xet storage

    @property
    def lfs_sha256(self) -> str | None:
        """The hub's own sha256 of an LFS file: its (X-Linked-)ETag."""
        return self.etag if self.etag and _SHA256.fullmatch(self.etag) else None

    @property
    def git_sha1(self) -> str | None:
        """For a small file kept in git (not LFS) the ETag is its git blob sha1."""
        return self.etag if self.etag and _SHA1.fullmatch(self.etag) else None


class _QuietBar(tqdm):  # type: ignore[type-arg]
    """huggingface_hub draws its own bar per request; ours (per file and total) replace it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port


def _headers(token: str | None) -> dict[str, str]:
    return build_hf_headers(token=token or False, library_name="steadydancer-models", library_version=__version__)


def resolve(entry: ModelFile, endpoint: str, token: str | None, timeout: float = METADATA_TIMEOUT_S) -> Remote:
    """HEAD the file: its size, commit, hub hash and download location. Raises huggingface_hub/httpx2 errors."""
    if entry.on_hub:
        assert entry.repo is not None and entry.path is not None
        url = hf_hub_url(entry.repo, entry.path, revision=entry.revision, endpoint=endpoint)
        meta = get_hf_file_metadata(
            url, token=token or False, endpoint=endpoint, timeout=timeout, retry_on_errors=False,
            library_name="steadydancer-models", library_version=__version__,
        )
        headers = _headers(token)
        if _origin(meta.location) != _origin(url):
            # A signed CDN URL: the token must not leave the hub (huggingface_hub does the same).
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return Remote(
            url=meta.location, size=meta.size, commit=meta.commit_hash, etag=meta.etag, headers=headers,
            xet=meta.xet_file_data,
        )
    assert entry.url is not None
    headers = {k: v for k, v in _headers(None).items() if k.lower() != "authorization"}
    headers["Accept-Encoding"] = "identity"
    response = http_backoff(
        "HEAD", entry.url, headers=headers, follow_redirects=True, timeout=timeout,
        retry_on_exceptions=(), retry_on_status_codes=(),
    )
    hf_raise_for_status(response)
    length = response.headers.get("Content-Length")
    return Remote(
        url=str(response.url), size=int(length) if length and length.isdigit() else None, commit=None,
        etag=None, headers=headers,
    )


def fetch(remote: Remote, out: BinaryIO, resume_size: int, name: str) -> None:
    """Stream the bytes after ``resume_size`` into ``out`` (a Range request when resuming).

    huggingface_hub's ``http_get`` itself resumes a few times when a connection drops mid-body; what it gives up on
    surfaces here and is classified by ``classify``.
    """
    http_get(
        remote.url, out, resume_size=resume_size, headers=dict(remote.headers), expected_size=remote.size,
        displayed_filename=name, tqdm_class=_QuietBar,
    )


def fetch_xet(remote: Remote, incomplete: Any, name: str) -> None:
    """Download through hf_xet (chunk-deduplicated, parallel); the caller hashes the result afterwards."""
    from huggingface_hub.file_download import xet_get

    xet_get(
        incomplete_path=incomplete, xet_file_data=remote.xet, headers=dict(remote.headers),
        expected_size=remote.size, displayed_filename=name, tqdm_class=_QuietBar,
    )


def xet_available() -> bool:
    try:
        from huggingface_hub.utils import is_xet_available
    except ImportError:  # pragma: no cover
        return False
    return bool(is_xet_available())


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
    if isinstance(exc, hf_errors.RemoteEntryNotFoundError) or status == 404:
        return Failure(False, NotFoundError(
            f"{where} does not exist (HTTP 404)",
            why="the file is not in that repository at that revision" if entry.on_hub
            else "the server has no such file",
            fix=f"the manifest entry [files.{entry.name}] is wrong: fix its path (or url) or revision",
        ))
    if status is not None and (status >= 500 or status in (408, 429)):
        return Failure(True, NetworkError(f"The server answered HTTP {status} for {where}"))
    if isinstance(exc, (httpx2.TransportError, TimeoutError, ConnectionError)):
        return Failure(True, NetworkError(f"Connection problem while fetching {where}: {exc}"))
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return Failure(True, NetworkError(f"The transfer of {where} ended early: {exc}"))
    if status is not None:
        return Failure(False, NetworkError(f"The server answered HTTP {status} for {where}: {exc}"))
    if isinstance(exc, ModelsError):
        return Failure(False, exc)
    raise exc
