"""Turn a job's input files into bytes: decode base64, or download a URL with a size cap and a time limit."""

from __future__ import annotations

import base64
import binascii
import time

import requests

from .errors import InputError, InputFetchError, InputTooLargeError
from .validation import InputFile

_CHUNK = 1 << 20


def decode(entry: InputFile) -> bytes:
    assert entry.base64 is not None
    text = entry.base64
    if text.startswith("data:"):
        if "," not in text:
            raise InputError(f'Input file "{entry.name}" is a data: URI without a comma before its data')
        text = text.split(",", 1)[1]
    try:
        # validate=True refuses stray characters instead of silently dropping them into a corrupt file
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(
            f'Input file "{entry.name}" is not valid base64: {e}',
            fix="send the file's bytes base64-encoded (optionally as a data: URI)",
        ) from None


def download(entry: InputFile, *, limit: int, timeout_s: float, session: requests.Session | None = None) -> bytes:
    assert entry.url is not None
    http = session or requests.Session()
    too_large = InputTooLargeError(
        f'Input file "{entry.name}" at {entry.url} is over the {limit / 1e6:.0f} MB limit for one file',
        fix="send a smaller file, or raise WORKER_MAX_INPUT_MB (and ComfyUI's --max-upload-size)",
        file=entry.name,
        limit_bytes=limit,
    )
    try:
        with http.get(entry.url, stream=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise InputFetchError(
                    f'Input file "{entry.name}" could not be downloaded: {entry.url} answered '
                    f"HTTP {response.status_code}",
                    fix="check that the URL is public (or pre-signed) and not expired",
                    file=entry.name,
                    status=response.status_code,
                )
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise too_large
            chunks: list[bytes] = []
            size = 0
            deadline = time.monotonic() + timeout_s  # requests' timeout is per read; this one is for the whole file
            for chunk in response.iter_content(_CHUNK):
                if time.monotonic() > deadline:
                    raise InputFetchError(
                        f'Input file "{entry.name}" took over {timeout_s:g} s to download from {entry.url}',
                        fix="host it closer to RunPod, send it inline, or raise WORKER_URL_TIMEOUT_S",
                        file=entry.name,
                    )
                size += len(chunk)
                if size > limit:  # the header may lie or be absent: count what actually arrives
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as e:
        raise InputFetchError(
            f'Input file "{entry.name}" could not be downloaded from {entry.url}: {e}',
            fix="check the URL and that this worker can reach it",
            file=entry.name,
        ) from None
