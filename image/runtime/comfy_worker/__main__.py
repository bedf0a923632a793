"""``python -m comfy_worker [runpod args]``: start the serverless worker. With ``--test_input '{"input": ...}'`` the
runpod SDK runs that one job locally and exits (0 on success, 1 when the job returned an error)."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from . import config, log
    from .errors import WorkerError

    try:
        cfg = config.load(os.environ)
    except WorkerError as e:  # a bad setting is the operator's: fail the worker at start, not every job
        log.error(e.render())
        return e.exit_code

    import runpod

    from . import handler

    handler._worker = handler.Worker(cfg)
    log.info("comfy_worker: " + handler.describe(cfg))
    runpod.serverless.start({"handler": handler.handler})
    return 0


if __name__ == "__main__":
    sys.exit(main())
