"""Cached environments: reused while nothing that goes into them changes; remade in place (same path, so compile
commands and the compiler cache keep their paths) when constraints.txt changes; a new path for another torch build."""

from __future__ import annotations

from pathlib import Path

import pytest

from wheels import envs
from wheels.options import TorchBuild

CU124 = TorchBuild(name="cu124", source="index", version="2.5.1", cuda="12.4", index_url="https://pypi.org/simple")


@pytest.fixture
def made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    created: list[Path] = []

    def create(path: Path, python: str, site_dirs=()) -> envs.PythonEnv:  # noqa: ANN001
        path.mkdir(parents=True)
        created.append(path)
        return envs.PythonEnv(path)

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.5.1\n")
    monkeypatch.setattr(envs, "CONSTRAINTS", constraints)
    monkeypatch.setattr(envs, "_create", create)
    monkeypatch.setattr(envs, "install_torch", lambda env, torch: None)
    monkeypatch.setattr(envs.PythonEnv, "install", lambda self, reqs, **kw: None)
    monkeypatch.setattr(envs.PythonEnv, "freeze", lambda self: ["torch==2.5.1"])
    return created


def _env(cache: Path, torch: TorchBuild = CU124, reqs: tuple[str, ...] = ("ninja",)) -> envs.PythonEnv:
    return envs.cached_env(cache, kind="build", python="3.11", system_python="python3", torch=torch, requirements=reqs)


def test_reused_while_unchanged(tmp_path: Path, made: list[Path]) -> None:
    first, second = _env(tmp_path / "c"), _env(tmp_path / "c")
    assert first.path == second.path and len(made) == 1


def test_a_constraints_change_remakes_it_at_the_same_path(tmp_path: Path, made: list[Path]) -> None:
    before = _env(tmp_path / "c").path
    envs.CONSTRAINTS.write_text("torch==2.5.1\npypiserver==2.4.2\n")
    after = _env(tmp_path / "c").path
    assert after == before and len(made) == 2, "the environment moved, or was not remade"


def test_other_inputs_get_their_own_environment(tmp_path: Path, made: list[Path]) -> None:
    other = TorchBuild(name="cu121", source="index", version="2.5.1", cuda="12.1", index_url="https://x")
    paths = {_env(tmp_path / "c").path, _env(tmp_path / "c", torch=other).path, _env(tmp_path / "c", reqs=("x",)).path}
    assert len(paths) == 3


def test_an_incomplete_environment_is_remade(tmp_path: Path, made: list[Path]) -> None:
    env = _env(tmp_path / "c")
    (env.path / ".complete.json").unlink()
    assert _env(tmp_path / "c").path == env.path and len(made) == 2
