"""Settings, resolved once: manifest < environment < command line, into a frozen dataclass.

As in ``wheels/options.py``, the environment comes in as a ``Mapping`` so tests never touch ``os.environ``, and a
misspelt option or MODELS_* variable fails with "Perhaps you meant ...".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from . import manifest as manifest_mod
from .errors import ConfigError, unknown
from .manifest import Manifest

DEFAULT_ENDPOINT = "https://huggingface.co"
# Where `RUN --mount=type=secret,id=hf_token` puts the token during `docker build`: never an ARG or ENV.
DEFAULT_TOKEN_FILE = Path("/run/secrets/hf_token")

Transport = Literal["http", "xet"]
TRANSPORTS: tuple[str, ...] = ("http", "xet")

ENV_VARS = {
    "MODELS_MANIFEST": "manifest file (default: models/manifest.toml)",
    "MODELS_DEST": "destination folder (ComfyUI's models folder)",
    "MODELS_VARIANTS": "comma-separated variants (default: the manifest's default ones)",
    "MODELS_JOBS": "parallel downloads (default 4)",
    "MODELS_RETRIES": "attempts per file on dropped connections and 5xx (default 5)",
    "MODELS_TRANSPORT": "http (default: streamed sha256, Range resume) or xet (hf_xet, then a hashing pass)",
    "MODELS_TOKEN_FILE": "file holding the Hugging Face token (default /run/secrets/hf_token when present)",
    "MODELS_PROGRESS": "progress bars: 1/0 (default: only on a terminal)",
    "HF_TOKEN": "Hugging Face token for gated or private repositories",
    "HF_ENDPOINT": "Hugging Face endpoint or mirror (default https://huggingface.co)",
}


@dataclasses.dataclass(frozen=True)
class Options:
    manifest: Manifest
    variants: tuple[str, ...]  # as asked (expanded with includes when files are selected)
    dest: Path | None
    endpoint: str
    token: str | None = dataclasses.field(repr=False)  # never printed
    token_source: str | None
    jobs: int = 4
    retries: int = 5
    retry_base_s: float = 1.0
    retry_max_s: float = 30.0
    transport: Transport = "http"
    progress: bool | None = None  # None: bars only on a terminal
    list_only: bool = False
    as_json: bool = False
    offline: bool = False


def check_env(env: Mapping[str, str]) -> None:
    ours = [k for k in ENV_VARS if k.startswith("MODELS_")]
    for key in env:
        if key.startswith("MODELS_") and key not in ENV_VARS:
            raise unknown("environment variable", key, ours, "the environment")


def build_parser(prog: str = "python -m models") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Download the models a SteadyDancer variant needs into ComfyUI's models folder, verified.",
    )
    parser.add_argument("--variant", action="append", default=[], help="variant to fetch; repeat or comma-separate")
    parser.add_argument("--dest", type=Path, help="ComfyUI models folder, e.g. /workspace/models (MODELS_DEST)")
    parser.add_argument("--manifest", type=Path, help="manifest file in the same format (MODELS_MANIFEST)")
    parser.add_argument("--list", action="store_true", help="show variants, files, sizes and what --dest holds")
    parser.add_argument("--json", action="store_true", help="with --list: print JSON on stdout")
    parser.add_argument("--offline", action="store_true", help="with --list: do not ask the hub for sizes")
    parser.add_argument("--jobs", help="parallel downloads (MODELS_JOBS, default 4)")
    parser.add_argument("--retries", help="attempts per file on dropped connections and 5xx (MODELS_RETRIES)")
    parser.add_argument("--endpoint", help="hub endpoint or mirror (HF_ENDPOINT)")
    parser.add_argument("--transport", choices=TRANSPORTS, help="http (default) or xet (MODELS_TRANSPORT)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="force bars")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="log lines only")
    return parser


class _ArgumentParserError(Exception):
    pass


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()

    def error(message: str) -> None:  # argparse would print and exit(2); we want one error path
        raise _ArgumentParserError(message)

    parser.error = error  # type: ignore[method-assign]
    try:
        return parser.parse_args(list(argv))
    except _ArgumentParserError as e:
        option = re.search(r"unrecognized arguments: (\S+)", str(e))
        if option:
            flags = [a for action in parser._actions for a in action.option_strings]
            raise unknown("option", option.group(1), flags, "the command line") from None
        raise ConfigError(f"Bad arguments: {e}", fix="see `python -m models --help`") from None


def _int_setting(value: str | None, name: str, default: int, minimum: int = 1) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def _bool_setting(value: str | None) -> bool | None:
    if value in (None, ""):
        return None
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _split(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(v for value in values for v in re.split(r"[,\s]+", value.strip()) if v)


def resolve_token(
    env: Mapping[str, str], stored_token: Callable[[], str | None], default_file: Path = DEFAULT_TOKEN_FILE
) -> tuple[str | None, str | None]:
    """The token and where it came from: HF_TOKEN, then a secret file, then the user's stored login."""
    if env.get("HF_TOKEN", "").strip():
        return env["HF_TOKEN"].strip(), "HF_TOKEN"
    token_file = Path(env["MODELS_TOKEN_FILE"]) if env.get("MODELS_TOKEN_FILE") else default_file
    if env.get("MODELS_TOKEN_FILE") and not token_file.is_file():
        raise ConfigError(f"MODELS_TOKEN_FILE points at {token_file}, which is not a file")
    if token_file.is_file():
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"Cannot read the token file {token_file}: {e}") from None
        if token:
            return token, str(token_file)
    token = stored_token()
    return (token, "stored login (hf auth login)") if token else (None, None)


def _stored_token() -> str | None:
    try:
        from huggingface_hub import get_token
    except ImportError:  # pragma: no cover - the hub library is a requirement of the downloader
        return None
    return get_token()


def resolve(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    stored_token: Callable[[], str | None] = _stored_token,
    default_token_file: Path = DEFAULT_TOKEN_FILE,
) -> Options:
    """The one place where manifest, environment and arguments meet."""
    check_env(env)
    args = parse_args(argv)
    cwd = cwd or Path.cwd()

    def path(value: Path | str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else cwd / p

    manifest_path = path(args.manifest or env.get("MODELS_MANIFEST") or manifest_mod.DEFAULT_MANIFEST)
    manifest = manifest_mod.load(manifest_path)

    variants = _split(args.variant) or _split([env.get("MODELS_VARIANTS", "")]) or manifest.default_variants
    where = "--variant" if args.variant else ("MODELS_VARIANTS" if env.get("MODELS_VARIANTS") else str(manifest.path))
    manifest.expand(variants, where)  # fail now on an unknown variant, with "Perhaps you meant"

    dest_value = args.dest or env.get("MODELS_DEST")
    dest = path(dest_value) if dest_value else None
    if dest is None and not args.list:
        raise ConfigError(
            "No destination folder", fix="pass --dest /workspace/models (or set MODELS_DEST); --list works without"
        )
    if (args.json or args.offline) and not args.list:
        raise ConfigError("--json and --offline only apply to --list")

    transport = args.transport or env.get("MODELS_TRANSPORT") or "http"
    if transport not in TRANSPORTS:
        raise unknown("transport", transport, TRANSPORTS, "MODELS_TRANSPORT")
    endpoint = (args.endpoint or env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("https://", "http://")):
        raise ConfigError(f'Endpoint "{endpoint}" must be an http(s) URL', fix="set HF_ENDPOINT=https://host")
    token, token_source = resolve_token(env, stored_token, default_token_file)

    return Options(
        manifest=manifest,
        variants=variants,
        dest=dest,
        endpoint=endpoint,
        token=token,
        token_source=token_source,
        jobs=_int_setting(args.jobs or env.get("MODELS_JOBS"), "--jobs / MODELS_JOBS", 4),
        retries=_int_setting(args.retries or env.get("MODELS_RETRIES"), "--retries / MODELS_RETRIES", 5),
        transport=transport,  # type: ignore[arg-type]
        progress=args.progress if args.progress is not None else _bool_setting(env.get("MODELS_PROGRESS")),
        list_only=bool(args.list),
        as_json=bool(args.json),
        offline=bool(args.offline),
    )


def from_environ(argv: Sequence[str]) -> Options:
    return resolve(argv, os.environ)
