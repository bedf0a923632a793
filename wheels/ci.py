"""`python -m wheels cache_key [TARGET ...] [--json]`: the keys CI keys its caches on.

Each target's key is the pipeline's own content-addressed cache key (what ``manifest.json`` records for a built
wheel), so a cache saved under it holds exactly what a build with these inputs produces. The combined key covers
every selected target and the backend. Nothing is downloaded or built: the keys are known before any cache exists.

    canary-cu124   7ef19fa1...
    combined       3b0c2d9e...

Typical use (.github/workflows/wheels.yml): the wheelhouse is restored under the combined key (falling back to
the newest older one, whose still-current wheels the pipeline keeps as they are), the compiler cache likewise
(objects of an older build are mostly still valid), and both are saved under the combined key after the build.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .build import Pipeline
from .errors import ConfigError
from .options import BACKENDS, resolve
from .util import canonical_json, sha256_text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nox -s cache_key --", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="target names or globs (default: the matrix's default targets)")
    parser.add_argument("--json", action="store_true", help="print JSON: {backend, targets: {name: key}, combined}")
    parser.add_argument("--backend", choices=BACKENDS, help="the backend the build will use (it is part of each key)")
    parser.add_argument("--matrix", help="matrix file (WHEELS_MATRIX)")
    parser.add_argument("--builder-image", help="builder image tag (container backend)")
    parser.add_argument("--builder-base", help="builder base image (container backend)")
    parser.add_argument("--cuda-archs", help="arch override, as given to `nox -s wheels`")
    try:
        return parser.parse_args(list(argv))
    except SystemExit as e:
        if e.code == 0:
            raise
        raise ConfigError("Bad arguments to cache_key", fix="see `nox -s cache_key -- --help`") from None


def combined_key(backend: str, keys: Mapping[str, str]) -> str:
    return sha256_text(canonical_json({"backend": backend, "targets": dict(keys)}))


def cache_keys(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    args = parse_args(argv)
    forwarded: list[str] = list(args.targets)
    for flag in ("backend", "matrix", "builder_image", "builder_base", "cuda_archs"):
        value = getattr(args, flag)
        if value:
            forwarded += [f"--{flag.replace('_', '-')}", value]
    opts = resolve(forwarded, env)
    pipeline = Pipeline(opts, env)
    pipeline.check_backend(opts.selected_targets())
    contexts = [pipeline.resolve(t) for t in opts.selected_targets()]
    pipeline.preflight(contexts)  # a target without a toolchain has no key: the same error `nox -s wheels` gives
    keys = {c.target.name: c.key for c in contexts if c.key}
    return {"backend": opts.backend, "targets": keys, "combined": combined_key(opts.backend, keys)}


def cli(argv: list[str]) -> int:
    result = cache_keys(argv, os.environ)
    if parse_args(argv).json:
        print(json.dumps(result, indent=2))
        return 0
    width = max([len(n) for n in result["targets"]] + [len("combined")])
    for name, key in result["targets"].items():
        print(f"{name:<{width}}  {key}")
    print(f"{'combined':<{width}}  {result['combined']}")
    return 0
