"""Command line: ``python -m wheels COMMAND [ARGS]``; the nox sessions call these. Errors are caught here, once."""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Sequence

from . import log
from .errors import PipelineError, unknown

# command -> "module:function"; each function takes argv and returns an exit status. Imported only when used.
COMMANDS: dict[str, str] = {
    "build": "wheels.build:cli",
    "bench": "wheels.bench:cli",
    "abi": "wheels.abi.cli:cli",
    "gpu-test": "wheels.gpu:main",
    "publish": "wheels.publish.cli:publish_cli",
    "index": "wheels.publish.cli:index_cli",
    "cache_key": "wheels.ci:cli",
    "builder": "wheels.builder.cli:cli",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: python -m wheels {{{','.join(COMMANDS)}}} [ARGS]", file=sys.stderr)
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(unknown("command", args[0], COMMANDS, "python -m wheels").render(), file=sys.stderr)
        return 2
    module, func = COMMANDS[args[0]].split(":")
    # A SIGTERM (CI timeout, `kill`) unwinds like Ctrl-C, so a running build stops its compiler tree and leaves
    # neither a half wheel nor a record.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(getattr(importlib.import_module(module), func)(args[1:]))
    except PipelineError as e:
        log.info("error: " + e.render())
        return e.exit_code
    except KeyboardInterrupt:
        log.info("interrupted; build trees are kept, so a rerun resumes")
        return 130


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
