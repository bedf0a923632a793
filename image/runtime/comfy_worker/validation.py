"""The job input, checked before anything talks to ComfyUI. Pure functions: no I/O.

Accepted input (``job["input"]``)::

    {
      "workflow": {...},            # required: an API-format workflow (ComfyUI's "Export (API)"), or it as a string
      "images": [                   # optional: files to put in ComfyUI's input folder before queueing
        {"name": "ref.png", "image": "<base64 or data: URI>"},
        {"name": "dance.mp4", "url": "https://..."}
      ],
      "files": [...],               # optional: the same as "images", for inputs that are not images (videos, audio)
      "timeout_s": 1800,            # optional: this job's time limit (at most WORKER_JOB_TIMEOUT_S)
      "include_temp": false         # optional: also return "temp" outputs (PreviewImage, unsaved VHS previews)
    }
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import InputError, InputTooLargeError, WorkflowError, short, unknown_key

TOP_KEYS = ("workflow", "images", "files", "timeout_s", "include_temp")
FILE_KEYS = ("name", "image", "data", "url")
# What ComfyUI's /upload/image accepts as a file name without renaming or refusing it.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+,=@-]{0,199}$")


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One file for ComfyUI's input folder: inline base64, or a URL to download."""

    name: str
    base64: str | None = None
    url: str | None = None

    @property
    def source(self) -> str:
        return "url" if self.url is not None else "base64"


@dataclasses.dataclass(frozen=True)
class Job:
    workflow: dict[str, dict[str, Any]]
    files: tuple[InputFile, ...]
    timeout_s: float
    include_temp: bool


def parse_job(raw: Any, *, max_timeout_s: float, max_input_bytes: int, max_total_input_bytes: int) -> Job:
    """Check a job's input and return it typed, or raise an :class:`InputError` that says what to change."""
    if isinstance(raw, str):
        raw = _json(raw, "the job input")
    if not isinstance(raw, Mapping):
        raise InputError(
            f"The job input must be a JSON object, not {type(raw).__name__}",
            fix='send {"input": {"workflow": {...}}}',
        )
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key("input key", str(key), TOP_KEYS, "the job input", InputError)
    if "workflow" not in raw:
        raise InputError(
            'The job input has no "workflow"',
            fix="put the API-format workflow (ComfyUI: Workflow > Export (API)) under input.workflow",
        )
    workflow = check_workflow(raw["workflow"])
    files = _files(raw, max_input_bytes, max_total_input_bytes)
    timeout_s = _timeout(raw.get("timeout_s"), max_timeout_s)
    include_temp = raw.get("include_temp", False)
    if not isinstance(include_temp, bool):
        raise InputError(f"input.include_temp must be true or false, not {short(include_temp)}")
    return Job(workflow=workflow, files=files, timeout_s=timeout_s, include_temp=include_temp)


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{what} is a string but not valid JSON: {e}", fix="send a JSON object, not a string"
        ) from None


def check_workflow(workflow: Any) -> dict[str, dict[str, Any]]:
    """An API-format workflow: {node_id: {"class_type": str, "inputs": {name: value | [node_id, slot]}}}."""
    if isinstance(workflow, str):
        workflow = _json(workflow, "input.workflow")
    if not isinstance(workflow, Mapping):
        raise WorkflowError(f"input.workflow must be a JSON object, not {type(workflow).__name__}")
    if "nodes" in workflow and "links" in workflow:
        raise WorkflowError(
            "input.workflow is in ComfyUI's UI (graph) format, which /prompt cannot run",
            fix="export it in API format: ComfyUI > Workflow > Export (API)",
        )
    if not workflow:
        raise WorkflowError("input.workflow is empty", fix="send an API-format workflow with at least one output node")
    problems: list[str] = []
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            problems.append(f"node {node_id!r} is {type(node).__name__}, not an object")
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(f'node {node_id!r} has no "class_type"')
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            problems.append(f'node {node_id!r} has "inputs" that is not an object')
            continue
        for name, value in inputs.items():
            if _is_link(value) and str(value[0]) not in workflow:
                problems.append(
                    f"node {node_id!r} input {name!r} links to node {value[0]!r}, which is not in the workflow"
                )
    if problems:
        raise WorkflowError(
            f"input.workflow is not a valid API-format workflow ({len(problems)} problem(s)): {problems[0]}",
            fix="export the workflow again with Workflow > Export (API)",
            problems=problems[:50],
        )
    return {str(k): dict(v) for k, v in workflow.items()}


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def decoded_size(b64: str) -> int:
    """Bytes a base64 string decodes to, computed without decoding it (so an oversized input costs nothing)."""
    body = b64.split(",", 1)[1] if b64.startswith("data:") and "," in b64 else b64
    length = len(body.strip())
    padding = len(body) - len(body.rstrip("="))
    return max(0, length * 3 // 4 - padding)


def _files(raw: Mapping[str, Any], max_one: int, max_total: int) -> tuple[InputFile, ...]:
    out: list[InputFile] = []
    seen: set[str] = set()
    total = 0
    for key in ("images", "files"):
        entries = raw.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise InputError(f"input.{key} must be a list of {{name, image | url}} objects")
        for i, entry in enumerate(entries):
            where = f"input.{key}[{i}]"
            if not isinstance(entry, Mapping):
                raise InputError(f"{where} must be an object with a name and an image (base64) or a url")
            for k in entry:
                if k not in FILE_KEYS:
                    raise unknown_key("key", str(k), FILE_KEYS, where, InputError)
            name = entry.get("name")
            if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
                raise InputError(
                    f"{where}.name {short(name)} is not a plain file name",
                    fix="use letters, digits, dots, dashes and underscores, no folders; the workflow's LoadImage "
                    "(or VHS_LoadVideo) must name the same file",
                )
            if name in seen:
                raise InputError(f'{where}.name "{name}" is given twice', fix="give every input file its own name")
            seen.add(name)
            data = entry.get("image", entry.get("data"))
            url = entry.get("url")
            if (data is None) == (url is None):
                raise InputError(f"{where} must have exactly one of image (base64) and url")
            if url is not None:
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    raise InputError(f"{where}.url must be an http(s) URL, not {short(url)}")
                out.append(InputFile(name=name, url=url))
                continue
            if not isinstance(data, str) or not data:
                raise InputError(f"{where}.image must be a base64 string (or a data: URI)")
            size = decoded_size(data)
            if size > max_one:
                raise InputTooLargeError(
                    f'Input file "{name}" is {size / 1e6:.1f} MB, over the {max_one / 1e6:.0f} MB limit for one file',
                    fix="send a smaller file, or raise WORKER_MAX_INPUT_MB (and ComfyUI's --max-upload-size)",
                    file=name,
                    size_bytes=size,
                    limit_bytes=max_one,
                )
            total += size
            if total > max_total:
                raise InputTooLargeError(
                    f"The job's input files add up to more than the {max_total / 1e6:.0f} MB limit",
                    fix="send fewer or smaller files, give large ones by url, or raise WORKER_MAX_TOTAL_INPUT_MB",
                    limit_bytes=max_total,
                )
            out.append(InputFile(name=name, base64=data))
    return tuple(out)


def _timeout(value: Any, cap: float) -> float:
    if value is None:
        return cap
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InputError(f"input.timeout_s must be a positive number of seconds, not {short(value)}")
    if value > cap:
        raise InputError(
            f"input.timeout_s={value} is over this worker's limit of {cap:g} s",
            fix="ask for less, or raise WORKER_JOB_TIMEOUT_S on the endpoint",
        )
    return float(value)
