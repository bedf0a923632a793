"""One error hierarchy for the runtime, in the style of ``wheels/errors.py`` (the image has no ``wheels`` package).

Every failure a job or an operator can meet is a :class:`WorkerError` with three parts: what went wrong, why (when
known) and what to do next. The handler turns it into the job's ``{"error": ..., "details": {...}}`` answer; the
command-line tools (preflight, model paths) print it and exit with the family's status.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


class WorkerError(Exception):
    """Base of every expected failure. ``code`` names the family in job answers; ``exit_code`` is for the CLIs."""

    code = "internal_error"
    exit_code = 2

    def __init__(self, what: str, *, why: str | None = None, fix: str | None = None, **details: Any) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        self.details: dict[str, Any] = details
        super().__init__(self.render())

    def render(self) -> str:
        what = self.what if self.what.endswith(("?", "!", ".")) else self.what + "."
        parts = [what]
        if self.why:
            parts.append(f"  Why: {self.why.rstrip('.')}.")
        if self.fix:
            parts.append(f"  Fix: {self.fix.rstrip('.')}.")
        return "\n".join(parts)

    def response(self) -> dict[str, Any]:
        """The job answer. RunPod marks the job FAILED and always shows ``error``, which therefore carries what, why
        and fix in one string (runpod's local API drops the rest); ``details`` repeats them as fields, with the
        error ``code`` and what is specific to the failure, for programs."""
        details: dict[str, Any] = {"code": self.code}
        if self.why:
            details["why"] = self.why
        if self.fix:
            details["fix"] = self.fix
        details.update(self.details)
        return {"error": self.render(), "details": details}


class ConfigError(WorkerError):
    """An environment variable or argument of the runtime is wrong (an operator's mistake, caught at start)."""

    code = "config_error"
    exit_code = 3


class InputError(WorkerError):
    """The job input is malformed: not an object, unknown keys, bad file entries."""

    code = "invalid_input"


class WorkflowError(InputError):
    """The workflow is not an API-format graph ComfyUI can read."""

    code = "invalid_workflow"


class InputTooLargeError(InputError):
    """An input file (or all of them together) is over the worker's limit."""

    code = "input_too_large"


class InputFetchError(InputError):
    """An input file given by URL could not be downloaded."""

    code = "input_fetch_failed"


class UnknownNodeError(WorkflowError):
    """The workflow uses node classes this ComfyUI does not have."""

    code = "unknown_node_class"


class MissingModelError(WorkflowError):
    """A loader node names a model file that is not in its models folder."""

    code = "missing_model"


class PromptValidationError(WorkflowError):
    """ComfyUI rejected the workflow for another reason (bad value, bad link, missing input)."""

    code = "workflow_validation_failed"


class ComfyUnavailableError(WorkerError):
    """ComfyUI did not answer (not started yet, or not starting)."""

    code = "comfy_unavailable"


class ComfyCrashedError(WorkerError):
    """ComfyUI stopped (crashed, was killed for memory, or restarted) while the job ran."""

    code = "comfy_crashed"


class ExecutionError(WorkerError):
    """A node raised while the workflow ran."""

    code = "execution_error"


class InterruptedError_(WorkerError):  # noqa: N801 - the builtin InterruptedError is an OSError
    """The prompt was interrupted (by someone pressing Cancel, or by the worker on timeout)."""

    code = "interrupted"


class JobTimeoutError(WorkerError):
    """The job ran past its time limit; the worker interrupted it."""

    code = "timeout"


class OutputError(WorkerError):
    """An output file could not be read back from ComfyUI."""

    code = "output_fetch_failed"


class OutputTooLargeError(WorkerError):
    """The outputs do not fit in a job answer as base64."""

    code = "output_too_large"


class UploadError(WorkerError):
    """An output file could not be uploaded to the S3 bucket."""

    code = "upload_failed"


class PreflightError(WorkerError):
    """The GPU preflight failed: CUDA, flash-attn or mmcv is not usable on this machine."""

    code = "preflight_failed"
    exit_code = 12


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Perhaps you meant "x"?' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' Perhaps you meant "{close[0]}"?' if close else ""


def unknown_key(kind: str, word: str, choices: Iterable[str], where: str, cls: type[WorkerError]) -> WorkerError:
    """The one message for an unknown key or setting."""
    ordered = sorted(choices)
    return cls(
        f'Unknown {kind} "{word}" in {where}.{did_you_mean(word, ordered)}',
        fix=f"use one of: {', '.join(ordered)}" if ordered else None,
    )


def short(value: Any, limit: int = 300) -> str:
    """A value for a message, cut so one bad input cannot flood a log line or a job answer."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def merge_details(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    out.update(extra)
    return out
