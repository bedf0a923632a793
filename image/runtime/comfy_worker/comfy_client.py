"""ComfyUI's HTTP API, as the handler uses it: a thin typed client over ``requests``.

Routes (ComfyUI's server.py): GET /system_stats, /object_info, /models/{folder}, /history/{id}, /queue, /view;
POST /prompt, /upload/image, /interrupt, /queue. Errors become :mod:`errors` types with a next step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from .errors import ComfyUnavailableError, OutputError, WorkerError


@dataclasses.dataclass(frozen=True)
class FileRef:
    """A file ComfyUI knows by (filename, subfolder, type): what /history reports and /view serves."""

    filename: str
    subfolder: str
    type: str


class PromptRejected(Exception):
    """/prompt answered 400: ComfyUI's own validation refused the workflow. ``body`` is its JSON answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(f"ComfyUI refused the prompt (HTTP {status})")


class ComfyClient:
    def __init__(self, base_url: str, *, timeout_s: float, pid_file: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.pid_file = pid_file
        self.http = requests.Session()

    # --- liveness -----------------------------------------------------------------------------------------------

    def ws_url(self, client_id: str) -> str:
        scheme, rest = self.base_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={client_id}"

    def is_up(self) -> bool:
        try:
            return self.http.get(f"{self.base_url}/system_stats", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def pid(self) -> int | None:
        """ComfyUI's pid from the start script's pid file; None when there is no pid file (tests, pods)."""
        if self.pid_file is None:
            return None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def process_alive(self) -> bool | None:
        pid = self.pid()
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def wait_ready(self, timeout_s: float, sleep: Callable[[float], None] = time.sleep) -> float:
        """Block until ComfyUI answers; returns the seconds waited."""
        start = time.monotonic()
        delay = 0.1
        while not self.is_up():
            waited = time.monotonic() - start
            if waited > timeout_s:
                alive = self.process_alive()
                why = {
                    True: "its process is running but has not opened its port (still importing custom nodes?)",
                    False: "its process is not running (it crashed at start; the [comfyui] log lines say why)",
                    None: "nothing answers at that address",
                }[alive]
                raise ComfyUnavailableError(
                    f"ComfyUI at {self.base_url} did not answer within {timeout_s:g} s",
                    why=why,
                    fix="read the [comfyui] lines of the worker log; raise WORKER_READY_TIMEOUT_S for slow cold starts",
                )
            sleep(delay)
            delay = min(delay * 2, 2.0)
        return time.monotonic() - start

    # --- requests -----------------------------------------------------------------------------------------------

    def _get_json(self, path: str) -> Any:
        try:
            r = self.http.get(f"{self.base_url}{path}", timeout=self.timeout_s)
        except requests.RequestException as e:
            raise ComfyUnavailableError(f"ComfyUI did not answer GET {path}: {e}") from None
        if r.status_code != 200:
            raise WorkerError(f"ComfyUI answered GET {path} with HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def object_info(self) -> dict[str, Any]:
        return self._get_json("/object_info")

    def models(self, folder: str) -> list[str] | None:
        """Files ComfyUI sees in one models folder (all its search paths), or None if it has no such folder."""
        try:
            r = self.http.get(f"{self.base_url}/models/{folder}", timeout=self.timeout_s)
        except requests.RequestException:
            return None
        return r.json() if r.status_code == 200 else None

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """This prompt's history entry, or None while it has none (queued, running, or lost in a restart)."""
        data = self._get_json(f"/history/{prompt_id}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def in_queue(self, prompt_id: str) -> bool:
        data = self._get_json("/queue")
        for key in ("queue_running", "queue_pending"):
            for item in data.get(key, []):
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    def upload(self, name: str, data: bytes) -> str:
        """Put a file in ComfyUI's input folder; returns the name the workflow must use."""
        files = {"image": (name, data, "application/octet-stream")}
        try:
            r = self.http.post(
                f"{self.base_url}/upload/image", files=files, data={"overwrite": "true"}, timeout=self.timeout_s
            )
        except requests.RequestException as e:
            raise ComfyUnavailableError(f'Uploading input file "{name}" to ComfyUI failed: {e}') from None
        if r.status_code == 413:
            raise WorkerError(
                f'ComfyUI refused input file "{name}" ({len(data) / 1e6:.1f} MB) as too large',
                fix="raise ComfyUI's --max-upload-size (COMFY_ARGS) along with WORKER_MAX_INPUT_MB",
            )
        if r.status_code != 200:
            raise WorkerError(f'ComfyUI refused input file "{name}": HTTP {r.status_code} {r.text[:300]}')
        answer = r.json()
        sub = answer.get("subfolder") or ""
        return f"{sub}/{answer['name']}" if sub else str(answer["name"])

    def queue_prompt(self, workflow: dict[str, Any], client_id: str) -> str:
        try:
            r = self.http.post(
                f"{self.base_url}/prompt", json={"prompt": workflow, "client_id": client_id}, timeout=self.timeout_s
            )
        except requests.RequestException as e:
            raise ComfyUnavailableError(f"Queueing the workflow on ComfyUI failed: {e}") from None
        if r.status_code == 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": {"message": r.text[:1000]}}
            raise PromptRejected(r.status_code, body if isinstance(body, dict) else {"error": body})
        if r.status_code != 200:
            raise WorkerError(f"ComfyUI answered POST /prompt with HTTP {r.status_code}: {r.text[:300]}")
        return str(r.json()["prompt_id"])

    def view(self, ref: FileRef) -> bytes:
        query = urlencode({"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type})
        try:
            r = self.http.get(f"{self.base_url}/view?{query}", timeout=self.timeout_s)
        except requests.RequestException as e:
            raise OutputError(f'Reading output "{ref.filename}" from ComfyUI failed: {e}') from None
        if r.status_code != 200:
            raise OutputError(
                f'ComfyUI could not serve output "{ref.filename}" (subfolder "{ref.subfolder}", type {ref.type}): '
                f"HTTP {r.status_code}"
            )
        return r.content

    def cancel(self, prompt_id: str) -> None:
        """Stop a prompt whether it runs or waits: interrupt, then drop it from the queue. Best effort."""
        for path, body in (("/interrupt", {"prompt_id": prompt_id}), ("/queue", {"delete": [prompt_id]})):
            with contextlib.suppress(requests.RequestException):
                self.http.post(f"{self.base_url}{path}", json=body, timeout=10)
