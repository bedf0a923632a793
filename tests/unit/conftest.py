"""Fixtures for the unit tier (fast, no network, no torch, never os.environ)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from spine_fakes import MATRIX, write_program


@pytest.fixture
def matrix(tmp_path: Path) -> Callable[..., Path]:
    """matrix(extra="", replace={old: new}) -> path of a matrix file: spine_fakes.MATRIX, edited."""

    def make(extra: str = "", replace: dict[str, str] | None = None, name: str = "matrix.toml") -> Path:
        text = MATRIX
        for old, new in (replace or {}).items():
            assert old in text, f"fixture edit does not apply: {old!r}"
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text + textwrap.dedent(extra))
        return path

    return make


@pytest.fixture
def fake_cxx(tmp_path: Path) -> Path:
    return write_program(tmp_path / "fake-bin" / "c++", 'echo "c++ (Fake 1.0) 12.2.0"\n')


@pytest.fixture
def log_output(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What wheels.log writes (it binds its stream at import, so pytest's capture fixtures may not see it)."""
    from wheels import log

    out = io.StringIO()
    monkeypatch.setattr(log, "_stream", out)
    return out
