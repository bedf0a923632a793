"""Where output files go: inline base64 in the job answer (default), or an S3 bucket when BUCKET_* is configured.

Base64 has a budget: RunPod refuses job answers over 20 MB, so the sink counts encoded bytes and stops with a clear
error (naming the S3 settings) instead of a failed delivery. S3 goes through runpod's rp_upload (boto3), with the
right Content-Type for videos (rp_upload.upload_image would label an .mp4 "image/mp4").
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

from .config import S3Settings
from .errors import OutputTooLargeError, UploadError
from .outputs import OutputFile


class Sink(Protocol):
    def put(self, job_id: str, file: OutputFile, data: bytes) -> dict[str, Any]:
        """Store one file; returns the fields that tell the caller where it is (type + data)."""
        ...


class Base64Sink:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def put(self, job_id: str, file: OutputFile, data: bytes) -> dict[str, Any]:
        encoded = base64.b64encode(data).decode("ascii")
        self.used += len(encoded)
        if self.used > self.max_bytes:
            raise OutputTooLargeError(
                f"The outputs are over {self.max_bytes / 1e6:.0f} MB as base64 (at {file.ref.filename})",
                why="RunPod refuses job answers larger than 20 MB",
                fix="set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY on the endpoint to get "
                "URLs instead; or save fewer/smaller files (lower crf, fewer frames)",
                limit_bytes=self.max_bytes,
            )
        return {"type": "base64", "data": encoded}


UploadFn = Callable[..., str]


def _rp_upload(**kwargs: Any) -> str:
    from runpod.serverless.utils import rp_upload  # imported here: boto3 loads slowly and only S3 needs it

    return rp_upload.upload_file_to_bucket(**kwargs)


class S3Sink:
    def __init__(self, settings: S3Settings, upload_fn: UploadFn = _rp_upload) -> None:
        self.settings = settings
        self.upload_fn = upload_fn

    def put(self, job_id: str, file: OutputFile, data: bytes) -> dict[str, Any]:
        suffix = os.path.splitext(file.ref.filename)[1]
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="comfy-out-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            url = self.upload_fn(
                file_name=file.ref.filename,
                file_location=path,
                bucket_creds=self.settings.creds(),
                bucket_name=self.settings.bucket_name,
                prefix=job_id,
                extra_args={"ContentType": file.media_type},
            )
        except Exception as e:  # boto3 raises many unrelated types; all mean the same thing here
            raise UploadError(
                f'Uploading "{file.ref.filename}" to {self.settings.endpoint_url} failed: {type(e).__name__}: {e}',
                fix="check the BUCKET_* settings (endpoint, keys, bucket name) and that the bucket exists",
            ) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return {"type": "s3_url", "data": url}


def sink_for(s3: S3Settings | None, max_response_bytes: int) -> Sink:
    return S3Sink(s3) if s3 is not None else Base64Sink(max_response_bytes)
