"""`python -m wheels builder [TARGET ...] [--standin]`: make the builder image(s) the container backend would use.

`nox -s wheels -- --backend container` makes them by itself when absent; this command does only that step (to
prepare a machine, or to push the image to a registry afterwards). ``--standin`` first imports the Debian stand-in
base (see standin.py) and builds on it instead of the manylinux base: for machines that cannot reach a registry.
Prints each image's tag and id on stdout.
"""

from __future__ import annotations

import dataclasses
import os

from .. import log
from ..build import Pipeline
from ..options import resolve
from .image import builder_spec, ensure_image
from .standin import DEFAULT_TAG, ensure_standin_base


def cli(argv: list[str]) -> int:
    standin = "--standin" in argv
    opts = resolve([a for a in argv if a != "--standin"], os.environ)
    if standin:
        base = opts.builder_base if "--builder-base" in argv or os.environ.get("WHEELS_BUILDER_BASE") else DEFAULT_TAG
        ensure_standin_base(opts.cache_dir, os.environ, base)
        opts = dataclasses.replace(opts, builder_base=base)
    opts = dataclasses.replace(opts, backend="container")
    pipeline = Pipeline(opts, os.environ)
    pipeline.check_backend(opts.selected_targets())
    contexts = [pipeline.resolve(t) for t in opts.selected_targets()]
    pipeline.preflight(contexts)
    done: dict[str, str] = {}
    for ctx in contexts:
        spec = builder_spec(opts.builder_image, opts.builder_base, ctx.toolchain_plan)
        if spec.tag in done:
            continue
        log.info(f"[{ctx.target.name}] builder image {spec.tag} (CUDA {spec.cuda}, recipe {spec.recipe[:12]})")
        done[spec.tag] = ensure_image(spec, pipeline.toolchains.get(ctx.cuda), opts.cache_dir, os.environ)
    for tag, image_id in done.items():
        print(f"{tag}  {image_id}")
    return 0
