"""Publish and index settings, resolved once: matrix file < environment < command line (as wheels/options.py).

Where wheels go, in order: ``--static DIR``; else ``--repository-url`` / ``TWINE_REPOSITORY_URL`` (any index that
speaks the upload API); else the embedded index, started for the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import DEFAULT_MATRIX, _load_toml, check_env, parse_args
from .credentials import mask_url, strip_userinfo


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """The embedded index: where its data lives and which port it takes (0: a free one)."""

    data_dir: Path
    port: int


@dataclasses.dataclass(frozen=True)
class PublishOptions:
    wheelhouse: Path
    matrix_path: Path
    index: IndexSettings
    targets: tuple[str, ...]  # names or globs; empty: every gated wheel
    repository_url: str | None  # an upload API; None: the embedded index (or --static)
    index_url: str | None  # the simple index to verify against; None: derived
    static_dir: Path | None


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    wheelhouse: Path
    matrix_path: Path
    index: IndexSettings
    publish: bool  # publish the wheelhouse's gated wheels into the index before serving


def simple_url_for(upload_url: str) -> str:
    """The simple (PEP 503) index that goes with an upload URL, by the common conventions.

    pypiserver, Nexus, Artifactory, CodeArtifact and Gitea serve ``<upload URL>/simple/``; PyPI's upload host is not
    its index host. devpi's is ``/USER/INDEX/+simple/``: give it with --index-url.
    """
    clean = strip_userinfo(upload_url)[0]
    parts = urllib.parse.urlsplit(clean)
    host = (parts.hostname or "").lower()
    if host == "upload.pypi.org":
        return "https://pypi.org/simple/"
    if host == "test.pypi.org":
        return "https://test.pypi.org/simple/"
    path = parts.path.rstrip("/")
    if path.endswith("/legacy"):
        path = path[: -len("/legacy")]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + "/simple/", "", ""))


def _port(value: Any, where: str) -> int:
    if value in (None, ""):
        return 0
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where} must be between 0 and 65535 (0: a free port), got {port}")
    return port


def _url(value: str, where: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.scheme == "file"):
        raise ConfigError(f"{where} is not an http(s) URL: {mask_url(value)!r}", fix="write it as https://host/path/")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wheelhouse", type=Path, help="the wheelhouse (WHEELHOUSE)")
    parser.add_argument("--matrix", type=Path, help="matrix file (WHEELS_MATRIX)")
    parser.add_argument("--index-dir", type=Path, help="embedded index data folder (WHEELS_INDEX_DIR)")
    parser.add_argument("--port", help="embedded index port on 127.0.0.1; 0: a free one (WHEELS_INDEX_PORT)")


def publish_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nox -s publish --", description="Upload every gated wheel of the wheelhouse to an index, then prove it."
    )
    parser.add_argument("targets", nargs="*", help="target names or globs (default: every gated wheel)")
    _common(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--repository-url", help="an upload-API index (TWINE_REPOSITORY_URL); default: embedded")
    where.add_argument("--static", type=Path, metavar="DIR", help="write a static PEP 503 index into DIR instead")
    parser.add_argument(
        "--index-url",
        help="simple index to verify from (WHEELS_PUBLISH_INDEX_URL; default: derived from the upload URL)",
    )
    return parser


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nox -s index --", description="Serve the embedded index on 127.0.0.1 until Ctrl-C."
    )
    _common(parser)
    parser.add_argument(
        "--no-publish", action="store_true", help="serve what the index holds; do not add the wheelhouse's wheels"
    )
    return parser


def index_settings(
    env: Mapping[str, str],
    cwd: Path,
    *,
    index_dir: Path | None = None,
    port: str | int | None = None,
    matrix_settings: Mapping[str, Any] | None = None,
) -> IndexSettings:
    """The embedded index's settings, for any session that starts it (publish, index, image): CLI > env > matrix."""
    if matrix_settings is None:
        matrix_settings = _load_toml(Path(env.get("WHEELS_MATRIX") or DEFAULT_MATRIX)).get("settings", {})
    value = (
        index_dir
        if index_dir not in (None, "")
        else env.get("WHEELS_INDEX_DIR") or matrix_settings.get("index-dir", ".cache/index")
    )
    data_dir = Path(value).expanduser()
    data_dir = data_dir if data_dir.is_absolute() else cwd / data_dir
    chosen = port if port not in (None, "") else env.get("WHEELS_INDEX_PORT")
    return IndexSettings(data_dir=data_dir, port=_port(chosen, "WHEELS_INDEX_PORT / --port"))


def _paths(args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> tuple[Path, Path, IndexSettings]:
    check_env(env)
    matrix_path = Path(args.matrix or env.get("WHEELS_MATRIX") or DEFAULT_MATRIX)
    settings = dict(_load_toml(matrix_path).get("settings", {}))
    value = args.wheelhouse or env.get("WHEELHOUSE") or settings.get("wheelhouse", "wheelhouse")
    wheelhouse = Path(value).expanduser()
    wheelhouse = wheelhouse if wheelhouse.is_absolute() else cwd / wheelhouse
    index = index_settings(env, cwd, index_dir=args.index_dir, port=args.port, matrix_settings=settings)
    return wheelhouse, matrix_path, index


def resolve_publish(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> PublishOptions:
    args = parse_args(argv, publish_parser())
    wheelhouse, matrix_path, index = _paths(args, env, cwd or Path.cwd())
    repository_url = args.repository_url or None
    if repository_url is None and args.static is None:
        repository_url = env.get("TWINE_REPOSITORY_URL") or None
    if repository_url:
        repository_url = _url(repository_url, "--repository-url / TWINE_REPOSITORY_URL")
    index_url = args.index_url or env.get("WHEELS_PUBLISH_INDEX_URL") or None
    if index_url:
        index_url = _url(index_url, "--index-url / WHEELS_PUBLISH_INDEX_URL")
    static_dir = None
    if args.static is not None:
        static_dir = args.static.expanduser()
        static_dir = static_dir if static_dir.is_absolute() else (cwd or Path.cwd()) / static_dir
    return PublishOptions(
        wheelhouse=wheelhouse,
        matrix_path=matrix_path,
        index=index,
        targets=tuple(args.targets),
        repository_url=repository_url,
        index_url=index_url,
        static_dir=static_dir,
    )


def resolve_serve(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> ServeOptions:
    args = parse_args(argv, serve_parser())
    wheelhouse, matrix_path, index = _paths(args, env, cwd or Path.cwd())
    return ServeOptions(wheelhouse=wheelhouse, matrix_path=matrix_path, index=index, publish=not args.no_publish)
