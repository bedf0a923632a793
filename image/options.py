"""Settings of `nox -s image` and `nox -s lock`, resolved once: image.toml < environment < command line.

As in wheels/options.py: the environment comes in as a ``Mapping`` (unit tests never touch ``os.environ``), and an
unknown option, variable, profile or torch build fails with "Perhaps you meant ...".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from wheels.errors import ConfigError, unknown
from wheels.options import DEFAULT_MATRIX, TorchBuild, load_matrix, parse_args

from .config import DEFAULT_NODES, DEFAULT_SETTINGS, IMAGE_DIR, REPO_ROOT, Nodes, SdistFix, load_nodes, load_settings
from .config import normalize as normalize_name

Profile = Literal["core", "full"]
PROFILES: tuple[str, ...] = ("core", "full")
WheelSource = Literal["index", "wheelhouse"]
WHEEL_SOURCES: tuple[str, ...] = ("index", "wheelhouse")

# Environment variables read here. Any other IMAGE_* variable is a typo and fails loudly.
ENV_VARS = {
    "IMAGE_SETTINGS": "path of the image settings file (default image/image.toml)",
    "IMAGE_NODES": "path of the node pin file (default image/nodes.toml)",
    "IMAGE_PROFILE": "full | core",
    "IMAGE_TORCH": "torch build of wheels/matrix.toml (cu121, cu124)",
    "IMAGE_BASE_IMAGE": "base image of the build",
    "IMAGE_REPOSITORY": "image name (the tag defaults to <repository>:<profile>-<torch>)",
    "IMAGE_TAG": "the full tag to build",
    "IMAGE_WHEEL_SOURCE": "index | wheelhouse",
    "IMAGE_INDEX_URL": "a simple index holding every locked wheel (default: the embedded index)",
    "IMAGE_INDEX_USERNAME": "user for IMAGE_INDEX_URL (passed to the build as a BuildKit secret only)",
    "IMAGE_INDEX_PASSWORD": "password for IMAGE_INDEX_URL (a BuildKit secret only; never an ARG or ENV)",
    "IMAGE_PYPI_URL": "index of third-party wheels (default https://pypi.org/simple)",
    "IMAGE_CACHE_DIR": "sources, third-party wheels, wheels built from sdists, logs (default .cache/image)",
    "IMAGE_SOURCES_DIR": "a folder holding one local folder per source, named as in nodes.toml",
    "IMAGE_LOCK": "the lock file to build from (default by profile and torch build)",
    "IMAGE_PUSH": "push the tag after a successful build (1/0)",
    "IMAGE_SMOKE_SKIP": "smoke checks to skip, comma-separated (reported as skipped, never as passed)",
    "IMAGE_BAKE_MODELS": "model variants to bake into the full image (python -m models; HF_TOKEN as a secret)",
}
# Read but not ours: HF_TOKEN (a BuildKit secret for baking models), DOCKER (the docker client), WHEELHOUSE.
SOURCE_PREFIX = "IMAGE_SOURCE_"


@dataclasses.dataclass(frozen=True)
class Common:
    """What the lock and the build share."""

    settings_path: Path
    nodes: Nodes
    sdists: Mapping[str, SdistFix]
    matrix_path: Path
    profile: Profile
    torch: TorchBuild
    python: str
    platform: str
    wheelhouse: Path
    cache_dir: Path
    index_url: str | None  # our wheels' index; None: the embedded index (build) or the wheelhouse (lock)
    pypi_url: str
    source_dirs: Mapping[str, Path]  # source name -> local folder replacing the fetch
    ours: frozenset[str]  # normalised names of the packages our pipeline builds (wheels/matrix.toml)
    lock_path: Path

    @property
    def mirror(self) -> Path:
        """Third-party wheels downloaded for the embedded index and wheelhouse builds."""
        return self.cache_dir / "wheels"

    @property
    def built(self) -> Path:
        """Wheels built from pure-Python sdists (a subfolder of the mirror, so whatever serves one serves both)."""
        return self.mirror / "built"


@dataclasses.dataclass(frozen=True)
class LockOptions:
    common: Common
    output: Path
    without: tuple[str, ...]  # packages left out of the inputs, recorded in the header
    with_: tuple[str, ...]  # extra packages for the inputs (e.g. one of our wheels for the core profile)
    check: bool  # verify the lock is up to date; write nothing
    upgrade: bool  # resolve afresh instead of preferring the versions already locked


@dataclasses.dataclass(frozen=True)
class IndexCredentials:
    username: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    common: Common
    base_image: str
    tag: str
    wheel_source: WheelSource
    credentials: IndexCredentials | None
    hf_token: str | None = dataclasses.field(repr=False)
    push: bool
    smoke_skip: tuple[str, ...]
    bake_models: str
    docker: str
    index_dir: Path  # the embedded index's data folder (wheels.publish)
    index_port: int
    skip_preflight: bool
    record_path: Path
    bench_path: Path | None
    publish: bool  # put the wheelhouse's gated wheels into the embedded index first


def lock_path_for(profile: str, torch: str) -> Path:
    """image/requirements.lock is production (full, cu121); every other pair gets its own file."""
    if (profile, torch) == ("full", "cu121"):
        return IMAGE_DIR / "requirements.lock"
    return IMAGE_DIR / f"requirements-{profile}-{torch}.lock"


def check_env(env: Mapping[str, str], nodes: Nodes | None = None) -> None:
    sources = {n.env_var for n in nodes.all} if nodes else set()
    for key in env:
        if not key.startswith("IMAGE_"):
            continue
        if key.startswith(SOURCE_PREFIX) and nodes is not None:
            if key not in sources:
                raise unknown("source variable", key, sources, "the environment")
            continue
        if key not in ENV_VARS and not key.startswith(SOURCE_PREFIX):
            raise unknown("environment variable", key, ENV_VARS, "the environment")


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _url(value: str, where: str) -> str:
    if not re.match(r"^(https?|file)://", value):
        raise ConfigError(f"{where} is not a URL: {value!r}", fix="write it as http(s)://host/simple/")
    return value if value.endswith("/") else value + "/"


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="full (ComfyUI and node packs) or core (Python, torch, our wheels)")
    parser.add_argument("--torch", help="torch build of wheels/matrix.toml: cu121 (production) or cu124 (PyPI)")
    parser.add_argument("--index-url", help="simple index holding our wheels (and, for builds, every locked one)")
    parser.add_argument("--pypi-url", help="index of third-party wheels (default https://pypi.org/simple)")
    parser.add_argument("--wheelhouse", type=Path, help="our gated wheels (WHEELHOUSE)")
    parser.add_argument("--cache-dir", type=Path, help="IMAGE_CACHE_DIR")
    parser.add_argument("--source", action="append", default=[], metavar="NAME=DIR", help="a local folder for a source")
    parser.add_argument("--sources-dir", type=Path, help="a folder holding one folder per source (IMAGE_SOURCES_DIR)")
    parser.add_argument("--lock", type=Path, help="the lock file (default: by profile and torch build)")
    parser.add_argument("--settings", type=Path, help="image settings file (IMAGE_SETTINGS)")
    parser.add_argument("--nodes", type=Path, help="node pin file (IMAGE_NODES)")
    parser.add_argument("--matrix", type=Path, help="wheels matrix file (WHEELS_MATRIX)")


def lock_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nox -s lock --", description="Resolve the image's one Python environment into a lock with hashes."
    )
    _common_args(parser)
    parser.add_argument("--output", "-o", type=Path, help="where to write the lock (default: --lock's path)")
    parser.add_argument("--without", action="append", default=[], metavar="PKG", help="leave a package out")
    parser.add_argument("--with", dest="with_", action="append", default=[], metavar="PKG", help="add a package")
    parser.add_argument("--check", action="store_true", help="fail if the lock is not up to date; write nothing")
    parser.add_argument("--upgrade", action="store_true", help="resolve afresh, not preferring locked versions")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nox -s image --", description="Build the image from prebuilt wheels, smoke-test it and record it."
    )
    _common_args(parser)
    parser.add_argument("--base-image", help="base image (IMAGE_BASE_IMAGE; default ubuntu:22.04)")
    parser.add_argument("--tag", help="image tag (IMAGE_TAG; default <repository>:<profile>-<torch>)")
    parser.add_argument("--wheel-source", help="index (default) or wheelhouse (bind-mounted into the build)")
    parser.add_argument("--push", action="store_true", help="push the tag after a successful build (IMAGE_PUSH)")
    parser.add_argument("--smoke-skip", help="smoke checks to skip, comma-separated (IMAGE_SMOKE_SKIP)")
    parser.add_argument("--bake-models", help="model variants to bake in (IMAGE_BAKE_MODELS; full profile)")
    parser.add_argument("--hf-token-file", type=Path, help="file holding the Hugging Face token (else HF_TOKEN)")
    parser.add_argument("--index-dir", type=Path, help="embedded index data folder (WHEELS_INDEX_DIR)")
    parser.add_argument("--port", help="embedded index port (WHEELS_INDEX_PORT; 0: a free one)")
    parser.add_argument("--no-publish", action="store_true", help="do not publish the wheelhouse into the index")
    parser.add_argument("--record", type=Path, help="where to write the build record (JSON)")
    parser.add_argument("--bench", type=Path, help="markdown file whose image section is updated (bench/results.md)")
    parser.add_argument("--no-bench", action="store_true", help="do not update bench/results.md")
    parser.add_argument(
        "--skip-preflight",
        action="store_true",
        help="do not check the index before building: the installer inside the build is then the only check",
    )
    return parser


def _path(value: Any, cwd: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else cwd / path


def source_dirs(nodes: Nodes, args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> dict[str, Path]:
    """Local folders replacing fetches.

    Precedence: nodes.toml ``path`` < IMAGE_SOURCES_DIR < IMAGE_SOURCE_<NAME> < --sources-dir < --source NAME=DIR.
    """
    by_name = nodes.by_name()
    dirs: dict[str, Path] = {s.name: s.path for s in nodes.all if s.path is not None}

    def from_dir(folder: Path, where: str) -> None:
        if not folder.is_dir():
            raise ConfigError(f"The sources folder {folder} ({where}) does not exist")
        for name in by_name:
            if (folder / name).is_dir():
                dirs[name] = folder / name

    if env.get("IMAGE_SOURCES_DIR"):
        from_dir(_path(env["IMAGE_SOURCES_DIR"], cwd), "IMAGE_SOURCES_DIR")
    for source in nodes.all:
        if env.get(source.env_var):
            dirs[source.name] = _path(env[source.env_var], cwd)
    if args.sources_dir:
        from_dir(_path(args.sources_dir, cwd), "--sources-dir")
    for item in args.source:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"--source {item!r} is not NAME=DIR", fix="write e.g. --source ComfyUI=/src/ComfyUI")
        if name not in by_name:
            raise unknown("source", name, by_name, "--source")
        dirs[name] = _path(value, cwd)
    for name, folder in dirs.items():
        if not folder.is_dir():
            raise ConfigError(f"The local folder for {name}, {folder}, does not exist or is not a folder")
    return dirs


def _common(args: argparse.Namespace, env: Mapping[str, str], cwd: Path) -> Common:
    settings_path = _path(args.settings or env.get("IMAGE_SETTINGS") or DEFAULT_SETTINGS, cwd)
    nodes_path = _path(args.nodes or env.get("IMAGE_NODES") or DEFAULT_NODES, cwd)
    file = load_settings(settings_path)
    nodes = load_nodes(nodes_path)
    check_env(env, nodes)
    s = file.settings

    def setting(arg: Any, env_key: str | None, key: str, default: Any) -> Any:
        if arg not in (None, ""):
            return arg
        if env_key and env.get(env_key):
            return env[env_key]
        return s.get(key, default)

    profile = setting(args.profile, "IMAGE_PROFILE", "profile", "full")
    if profile not in PROFILES:
        raise unknown("profile", profile, PROFILES, "--profile / IMAGE_PROFILE / image.toml")

    matrix_path = _path(args.matrix or env.get("WHEELS_MATRIX") or DEFAULT_MATRIX, cwd)
    _, targets = load_matrix(matrix_path, env)
    builds = {t.torch.name: t.torch for t in targets.values() if t.torch.source == "index"}
    torch_name = setting(args.torch, "IMAGE_TORCH", "torch", "cu121")
    if torch_name not in builds:
        raise unknown("torch build", torch_name, builds, "--torch / IMAGE_TORCH / image.toml")

    index_url = setting(args.index_url, "IMAGE_INDEX_URL", "index-url", "") or None
    lock = args.lock or env.get("IMAGE_LOCK")
    return Common(
        settings_path=settings_path,
        nodes=nodes,
        sdists=file.sdists,
        matrix_path=matrix_path,
        profile=profile,
        torch=builds[torch_name],
        python=str(s.get("python", "3.11")),
        platform=str(s.get("platform", "x86_64-manylinux_2_35")),
        wheelhouse=_path(setting(args.wheelhouse, "WHEELHOUSE", "wheelhouse", "wheelhouse"), cwd),
        cache_dir=_path(setting(args.cache_dir, "IMAGE_CACHE_DIR", "cache-dir", ".cache/image"), cwd),
        index_url=_url(index_url, "--index-url / IMAGE_INDEX_URL") if index_url else None,
        pypi_url=_url(setting(args.pypi_url, "IMAGE_PYPI_URL", "pypi-url", "https://pypi.org/simple"), "pypi-url"),
        source_dirs=source_dirs(nodes, args, env, cwd),
        ours=frozenset(normalize_name(t.package) for t in targets.values()),
        lock_path=_path(lock, cwd) if lock else lock_path_for(profile, torch_name),
    )


def resolve_lock(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> LockOptions:
    cwd = cwd or Path.cwd()
    args = parse_args(argv, lock_parser())
    common = _common(args, env, cwd)
    return LockOptions(
        common=common,
        output=_path(args.output, cwd) if args.output else common.lock_path,
        without=tuple(normalize_name(p) for p in args.without),
        with_=tuple(args.with_),
        check=bool(args.check),
        upgrade=bool(args.upgrade),
    )


def _port(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        port = int(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"--port / WHEELS_INDEX_PORT must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port / WHEELS_INDEX_PORT must be 0-65535 (0: a free port), got {port}")
    return port


def resolve_build(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> BuildOptions:
    cwd = cwd or Path.cwd()
    args = parse_args(argv, build_parser())
    common = _common(args, env, cwd)
    s = load_settings(common.settings_path).settings

    def setting(arg: Any, env_key: str, key: str, default: Any) -> Any:
        if arg not in (None, ""):
            return arg
        if env.get(env_key):
            return env[env_key]
        return s.get(key, default)

    wheel_source = setting(args.wheel_source, "IMAGE_WHEEL_SOURCE", "wheel-source", "index")
    if wheel_source not in WHEEL_SOURCES:
        raise unknown("wheel source", wheel_source, WHEEL_SOURCES, "--wheel-source / IMAGE_WHEEL_SOURCE")
    if wheel_source == "wheelhouse" and common.index_url:
        raise ConfigError(
            "--wheel-source wheelhouse and an index URL were both given",
            fix="choose one: the wheelhouse (bind-mounted into the build) or --index-url",
        )
    repository = setting(None, "IMAGE_REPOSITORY", "repository", "steadydancer-comfyui")
    tag = setting(args.tag, "IMAGE_TAG", "", "") or f"{repository}:{common.profile}-{common.torch.name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", tag) or tag.endswith(":"):
        raise ConfigError(
            f"Bad image tag {tag!r}", fix="use lower-case letters, digits, '.', '_', '-', '/' and one ':'"
        )

    user, password = env.get("IMAGE_INDEX_USERNAME"), env.get("IMAGE_INDEX_PASSWORD")
    if bool(user) != bool(password):
        raise ConfigError(
            "Only one of IMAGE_INDEX_USERNAME and IMAGE_INDEX_PASSWORD is set", fix="set both, or neither"
        )
    if common.index_url and "@" in common.index_url.split("//", 1)[-1].split("/", 1)[0]:
        raise ConfigError(
            "The index URL carries credentials",
            why="a URL reaches logs and the build's arguments; credentials must travel only as BuildKit secrets",
            fix="give the URL without user:password@ and set IMAGE_INDEX_USERNAME / IMAGE_INDEX_PASSWORD",
        )
    hf_token = None
    if args.hf_token_file:
        try:
            hf_token = _path(args.hf_token_file, cwd).read_text().strip() or None
        except OSError as e:
            raise ConfigError(f"Cannot read --hf-token-file: {e}") from None
    else:
        hf_token = env.get("HF_TOKEN") or None

    bake = setting(args.bake_models, "IMAGE_BAKE_MODELS", "", "")
    if bake and common.profile != "full":
        raise ConfigError(
            "Models can be baked only into the full profile", fix="drop --bake-models or use --profile full"
        )
    skip_raw = setting(args.smoke_skip, "IMAGE_SMOKE_SKIP", "", "")
    matrix_settings, _ = load_matrix(common.matrix_path, env)
    index_dir = args.index_dir or env.get("WHEELS_INDEX_DIR") or matrix_settings.get("index-dir", ".cache/index")
    record = args.record or common.wheelhouse / f"image-{common.profile}-{common.torch.name}.json"
    bench = None if args.no_bench else _path(args.bench or REPO_ROOT / "bench" / "results.md", cwd)
    return BuildOptions(
        common=common,
        base_image=setting(args.base_image, "IMAGE_BASE_IMAGE", "base-image", "ubuntu:22.04"),
        tag=tag,
        wheel_source=wheel_source,
        credentials=IndexCredentials(user, password) if user and password else None,
        hf_token=hf_token,
        push=bool(args.push) or _bool(env.get("IMAGE_PUSH")),
        smoke_skip=tuple(x.strip() for x in skip_raw.split(",") if x.strip()),
        bake_models=bake,
        docker=env.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"),
        index_dir=_path(index_dir, cwd),
        index_port=_port(args.port or env.get("WHEELS_INDEX_PORT")),
        skip_preflight=bool(args.skip_preflight),
        record_path=_path(record, cwd),
        bench_path=bench,
        publish=not args.no_publish,
    )
