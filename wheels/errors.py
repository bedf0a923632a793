"""One error hierarchy for the whole pipeline.

Every failure a user can cause or meet is a :class:`PipelineError` carrying three parts: what went wrong, why
(when known), and what to do next. They are caught once, in :func:`wheels.cli.main`, printed without a traceback
and mapped to a distinct exit status, in the manner of cibuildwheel's ``errors.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PipelineError(Exception):
    """Base of every expected failure. ``exit_code`` is distinct per family."""

    exit_code = 2

    def __init__(self, what: str, *, why: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        what = self.what if self.what.endswith(("?", "!", ".")) else self.what + "."
        parts = [what]
        if self.why:
            parts.append(f"  Why: {self.why.rstrip('.')}.")
        if self.fix:
            parts.append(f"  Fix: {self.fix.rstrip('.')}.")
        return "\n".join(parts)


class ConfigError(PipelineError):
    """The matrix file, an environment variable or an argument is wrong."""

    exit_code = 3


class ToolchainError(PipelineError):
    """No usable compiler toolchain (CUDA toolkit, host compiler) for a target."""

    exit_code = 4


class SourceError(PipelineError):
    """A source could not be fetched, or its hash does not match its pin."""

    exit_code = 5


class EnvError(PipelineError):
    """An isolated environment could not be created or holds the wrong torch."""

    exit_code = 6


class BuildError(PipelineError):
    """The compiler or the build frontend failed."""

    exit_code = 7


class OutOfMemoryError(BuildError):
    """The build was killed for memory, even with the fewest jobs."""

    exit_code = 8


class GateError(PipelineError):
    """A wheel failed the ABI gate."""

    exit_code = 9


class PublishError(PipelineError):
    """A wheel could not be published, or the index does not serve what was uploaded."""

    exit_code = 10


class ImageError(PipelineError):
    """The container image could not be built or failed its smoke test."""

    exit_code = 11


class GpuError(PipelineError):
    """No GPU where one is required, or a GPU check failed."""

    exit_code = 12


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Perhaps you meant "x"?' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' Perhaps you meant "{close[0]}"?' if close else ""


def unknown(kind: str, word: str, choices: Iterable[str], where: str) -> ConfigError:
    """The one message for an unknown key, target, torch build or option."""
    choices = sorted(choices)
    return ConfigError(
        f'Unknown {kind} "{word}" in {where}.{did_you_mean(word, choices)}',
        fix=f"use one of: {', '.join(choices)}" if choices else None,
    )
