"""The one place that knows which HTTP library huggingface_hub speaks: ``requests`` in 0.x, ``httpx`` in 1.x and
``httpx2`` in 2.x. constraints.txt pins 0.36.0 (transformers 4.57, which ComfyUI needs on torch 2.5.1, requires
huggingface_hub<1.0); the rest of models/ is written against the names here and runs on either.

Requests go out on huggingface_hub's own session (its proxy settings, offline mode and request ids) exactly once.
huggingface_hub's ``get_hf_file_metadata`` and ``http_get`` are not used: in 0.x they retry 5xx and dropped connections
by themselves (up to five times, with real sleeps, and nothing turns it off), which would hide failures from this
package's own retries and backoff and multiply its attempts; and 0.x's ``http_get`` appends a full body after the
partial file when a server ignores ``Range``.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants
from huggingface_hub.utils import get_session, hf_raise_for_status
from tqdm import tqdm

MAJOR = int(huggingface_hub.__version__.split(".", 1)[0])

if MAJOR == 0:
    import requests

    # ChunkedEncodingError is what a body cut short becomes (urllib3's IncompleteRead), chunked or not.
    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    )
    _REDIRECTS = "allow_redirects"
else:  # pragma: no cover - not the pinned version; checked by hand against 2.4.0
    if MAJOR == 1:
        import httpx
    else:
        import httpx2 as httpx  # type: ignore[no-redef]

    TRANSPORT_ERRORS = (httpx.TransportError,)
    _REDIRECTS = "follow_redirects"

Response = Any  # requests.Response or httpx(2).Response: both have status_code, headers, url, links


def request(method: str, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool) -> Response:
    """One request, no retries; the body (if any) is read."""
    session: Any = get_session()  # requests.Session or httpx(2).Client
    return session.request(method, url, headers=headers, timeout=timeout, **{_REDIRECTS: follow_redirects})


@contextlib.contextmanager
def stream_get(url: str, *, headers: dict[str, str], timeout: float) -> Iterator[Response]:
    """One GET, following redirects, its body not read yet (``iter_chunks``); closed on exit."""
    session: Any = get_session()
    if MAJOR == 0:
        response = session.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True)
        try:
            yield response
        finally:
            response.close()
    else:  # pragma: no cover
        with session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
            yield response


def iter_chunks(response: Response, size: int) -> Iterator[bytes]:
    return response.iter_content(size) if MAJOR == 0 else response.iter_bytes(size)


def raise_for_status(response: Response) -> None:
    """huggingface_hub's error for an HTTP error answer (GatedRepoError, EntryNotFoundError ...); 3xx passes."""
    if MAJOR > 0 and response.status_code >= 400:  # pragma: no cover
        response.read()  # an httpx stream must read the body before huggingface_hub parses the error out of it
    hf_raise_for_status(response)


def xet_available() -> bool:
    """What huggingface_hub's (private) ``is_xet_available`` says: hf_xet installed, and not HF_HUB_DISABLE_XET."""
    return not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None


class _QuietBar(tqdm):  # type: ignore[type-arg]
    """huggingface_hub draws its own bar per transfer; ours (per file and total) replace it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def xet_download(
    incomplete: Path, xet_file_data: Any, headers: dict[str, str], expected_size: int | None, name: str
) -> None:
    """Download through hf_xet (chunk-deduplicated, parallel) into ``incomplete``, without huggingface_hub's bar.

    ``headers`` go to the hub's Xet token-refresh route: they carry the token (hf_xet gets its own for the storage).
    """
    from huggingface_hub.file_download import xet_get

    quiet: dict[str, Any] = {"_tqdm_bar": _QuietBar()} if MAJOR == 0 else {"tqdm_class": _QuietBar}
    xet_get(
        incomplete_path=incomplete, xet_file_data=xet_file_data, headers=headers, expected_size=expected_size,
        displayed_filename=name, **quiet,
    )
