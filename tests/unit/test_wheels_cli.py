"""The command line: one dispatch table, errors caught once, a distinct exit status per error family."""

from __future__ import annotations

import types

import pytest

from wheels import cli
from wheels.errors import ConfigError, OutOfMemoryError, PipelineError, ToolchainError


@pytest.fixture
def command(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Register a `python -m wheels try` command that raises what the test asks for."""
    module = types.ModuleType("wheels_test_commands")
    monkeypatch.setitem(__import__("sys").modules, "wheels_test_commands", module)
    monkeypatch.setitem(cli.COMMANDS, "try", "wheels_test_commands:run")

    def set_behaviour(behaviour: BaseException | int) -> None:
        def run(argv: list[str]) -> int:
            if isinstance(behaviour, BaseException):
                raise behaviour
            return behaviour

        module.run = run  # type: ignore[attr-defined]

    return set_behaviour


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (ConfigError("x"), 3),
        (ToolchainError("x"), 4),
        (OutOfMemoryError("x"), 8),
        (PipelineError("x"), 2),
        (KeyboardInterrupt(), 130),
    ],
)
def test_errors_map_to_exit_statuses(command, raised: BaseException, status: int, log_output) -> None:  # noqa: ANN001
    command(raised)
    assert cli.main(["try"]) == status
    if isinstance(raised, KeyboardInterrupt):
        assert "interrupted; build trees are kept, so a rerun resumes" in log_output.getvalue()


def test_error_message_has_what_why_and_fix(command, log_output) -> None:  # noqa: ANN001
    command(ToolchainError("No CUDA 12.1 toolkit for canary", why="nvcc is 13.0", fix="set CUDA_HOME"))
    cli.main(["try"])
    err = log_output.getvalue()
    assert "error: No CUDA 12.1 toolkit for canary.\n  Why: nvcc is 13.0.\n  Fix: set CUDA_HOME." in err
    assert "Traceback" not in err


def test_unexpected_exceptions_are_not_swallowed(command) -> None:  # noqa: ANN001
    command(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["try"])


def test_return_value_is_the_exit_status(command) -> None:  # noqa: ANN001
    command(0)
    assert cli.main(["try", "--anything"]) == 0


def test_unknown_command_and_help(capfd) -> None:  # noqa: ANN001
    assert cli.main(["biuld"]) == 2
    assert 'Unknown command "biuld" in python -m wheels. Perhaps you meant "build"?' in capfd.readouterr().err
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2
    assert "usage: python -m wheels {" in capfd.readouterr().err


def test_every_registered_command_resolves() -> None:
    import importlib

    for name, target in cli.COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
