"""The models downloader's errors: what went wrong, why, and what to do next.

This package runs inside the image, where the ``wheels`` pipeline is absent, so it keeps its own small hierarchy in
the style of ``wheels/errors.py``. Each family has its own exit status (20 and up, apart from the pipeline's 2-12), so
a start script can tell "the token is missing" from "the disk is full" without parsing text.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelsError(Exception):
    """Base of every expected failure. ``exit_code`` is distinct per family."""

    exit_code = 20

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


class ConfigError(ModelsError):
    """The manifest, an environment variable or an argument is wrong."""

    exit_code = 21


class AccessError(ModelsError):
    """The hub refused access (HTTP 401/403): a gated or private repository, or a token without rights."""

    exit_code = 22


class NotFoundError(ModelsError):
    """The hub has no such repository, revision or file (HTTP 404): the manifest entry is wrong."""

    exit_code = 23


class IntegrityError(ModelsError):
    """A downloaded file's sha256 or size does not match what it must be; the bad bytes were deleted."""

    exit_code = 24


class DiskSpaceError(ModelsError):
    """Not enough free space for the remaining bytes, or the disk filled up mid-download."""

    exit_code = 25


class NetworkError(ModelsError):
    """The hub stayed unreachable or kept failing (dropped connections, 5xx) after every retry."""

    exit_code = 26


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Perhaps you meant "x"?' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' Perhaps you meant "{close[0]}"?' if close else ""


def unknown(kind: str, word: str, choices: Iterable[str], where: str) -> ConfigError:
    """The one message for an unknown key, variant or option."""
    ordered = sorted(choices)
    return ConfigError(
        f'Unknown {kind} "{word}" in {where}.{did_you_mean(word, ordered)}',
        fix=f"use one of: {', '.join(ordered)}" if ordered else None,
    )
