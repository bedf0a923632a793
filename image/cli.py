"""Command line: ``python -m image COMMAND [ARGS]``; the nox sessions call these. Errors are caught here, once."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from wheels import log
from wheels.errors import PipelineError, unknown

# command -> "module:function"; each function takes argv and returns an exit status. Imported only when used.
COMMANDS: dict[str, str] = {
    "build": "image.build:cli",
    "lock": "image.lock:cli",
    "dockerfile": "image.dockerfile:cli",
    "base": "image.debootstrap:cli",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: python -m image {{{','.join(COMMANDS)}}} [ARGS]", file=sys.stderr)
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(unknown("command", args[0], COMMANDS, "python -m image").render(), file=sys.stderr)
        return 2
    module, func = COMMANDS[args[0]].split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args[1:]))
    except PipelineError as e:
        log.info("error: " + e.render())
        return e.exit_code
    except KeyboardInterrupt:
        log.info("interrupted; a half-built image is never tagged")
        return 130
