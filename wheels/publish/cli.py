"""`python -m wheels publish` and `python -m wheels index` (the nox sessions `publish` and `index`)."""

from __future__ import annotations

import dataclasses
import os

from .. import log
from ..errors import PublishError
from .pipeline import publish, publish_embedded, staged_wheels
from .server import embedded_index, wait
from .settings import PublishOptions, resolve_publish, resolve_serve


def publish_cli(argv: list[str]) -> int:
    publish(resolve_publish(argv, os.environ), os.environ)
    return 0


def index_cli(argv: list[str]) -> int:
    """Serve the embedded index in the foreground (with the wheelhouse's gated wheels in it) until Ctrl-C."""
    opts = resolve_serve(argv, os.environ)
    try:
        with embedded_index(
            opts.index.data_dir, port=opts.index.port, env=os.environ, wheelhouse=opts.wheelhouse
        ) as index:
            if opts.publish:
                popts = PublishOptions(
                    wheelhouse=opts.wheelhouse,
                    matrix_path=opts.matrix_path,
                    index=dataclasses.replace(opts.index, data_dir=index.data_dir),
                    targets=(),
                    repository_url=None,
                    index_url=None,
                    static_dir=None,
                )
                try:
                    with staged_wheels(popts, os.environ) as staged:
                        publish_embedded(staged, popts, os.environ, index=index)
                except PublishError as e:
                    if "No gated wheels" not in e.what:
                        raise
                    log.warn(f"serving without adding wheels: {e.what}")
            creds = index.credentials
            log.info(f"index:      {index.simple_url}")
            log.info(f"upload:     {index.upload_url}  (user {creds.username!r}; password in {creds.source})")
            log.info(f"packages:   {index.packages_dir}")
            log.info(
                f"install:    pip install --index-url {index.simple_url} --extra-index-url https://pypi.org/simple NAME"
            )
            log.info("serving until Ctrl-C")
            wait(index)
    except KeyboardInterrupt:
        log.info("stopped the embedded index")
    return 0
