"""Settings, resolved once: matrix file < environment < command line, into frozen dataclasses.

Modelled on cibuildwheel's ``options.py``: the environment comes in as a ``Mapping`` so tests never touch
``os.environ``, and an unknown key, target or option fails with "Perhaps you meant ...".
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, unknown

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MATRIX = REPO_ROOT / "wheels" / "matrix.toml"

# The container backend's builder image: its tag ({cuda} becomes the target's CUDA version) and the image it is built
# on. The base is the manylinux_2_28 image cibuildwheel 4.3.5 pins (2026.10.26-1), by digest: a moved tag never
# changes what we build on. Kept in step with cibuildwheel's own pin when constraints.txt moves cibuildwheel.
DEFAULT_BUILDER_IMAGE = "steadydancer-wheel-builder:cuda{cuda}"
DEFAULT_BUILDER_BASE = (
    "quay.io/pypa/manylinux_2_28_x86_64@sha256:e0adf18521ad35192df733a6c62d35df7801957d24e0470238aacecfab2188a3"
)

Backend = Literal["local", "container"]
BACKENDS: tuple[str, ...] = ("local", "container")

_TOP_KEYS = {"schema", "settings", "torch", "targets"}
_SETTINGS_KEYS = {"wheelhouse", "cache-dir", "backend", "builder-image", "builder-base", "index-dir"}
_TORCH_KEYS = {"version", "cuda", "index-url", "source"}
_TARGET_KEYS = {
    "package",
    "version",
    "recipe",
    "flavour",
    "source",
    "torch",
    "python",
    "cuda-archs",
    "default",
    "extends",
}
_SOURCE_KEYS = {"sdist", "wheel", "sha256", "path"}

# Environment variables this pipeline reads. Any other WHEELS_* variable is a typo and fails loudly.
ENV_VARS = {
    "WHEELHOUSE": "wheelhouse folder",
    "WHEELS_CACHE_DIR": "cache folder (toolkits, sources, build trees, compiler cache, environments)",
    "WHEELS_MATRIX": "path of the matrix file",
    "WHEELS_BACKEND": "local | container",
    "WHEELS_BUILDER_IMAGE": "builder image tag of the container backend ({cuda} is replaced by the target's CUDA)",
    "WHEELS_BUILDER_BASE": "base image the builder image is built on (default: the pinned manylinux_2_28 image)",
    "WHEELS_SYSTEM_PYTHON": "interpreter whose installed torch the 'system' torch build uses",
    "WHEELS_CUDA_ARCHS": "override every selected target's CUDA arch list",
    "WHEELS_KEEP_ENVS": "keep failed build and gate environments for inspection (1/0)",
    "WHEELS_IMAGE_BASE": "image base the ABI gate's portability check holds wheels to (wheels/abi/policy.toml)",
    "MAX_JOBS": "parallel compile jobs (default: planned from cores and RAM)",
    "NVCC_THREADS": "nvcc --threads per job (default: planned)",
    "TORCH_INDEX_URL": "index for every torch build (TORCH_INDEX_URL_<BUILD> for one build)",
    "CUDA_HOME": "a CUDA toolkit to use when its version matches the target",
    "WHEELS_INDEX_DIR": "data folder of the embedded index (outside the wheelhouse; default .cache/index)",
    "WHEELS_INDEX_PORT": "port of the embedded index on 127.0.0.1 (default: a free one)",
    "WHEELS_INDEX_USERNAME": "upload user of the embedded index (default: generated into its data folder)",
    "WHEELS_INDEX_PASSWORD": "upload password of the embedded index (with WHEELS_INDEX_USERNAME)",
    "WHEELS_PUBLISH_INDEX_URL": "simple index URL that publish verifies against (default: derived from the upload URL)",
}


@dataclasses.dataclass(frozen=True)
class TorchBuild:
    """Where a target's torch comes from. ``source == "system"`` means: already installed, never downloaded."""

    name: str
    source: Literal["index", "system"]
    version: str | None = None
    cuda: str | None = None
    index_url: str | None = None

    @property
    def requirement(self) -> str:
        if self.source == "system" or self.version is None:
            raise ConfigError(f'torch build "{self.name}" has no version to install: it is the system torch')
        return f"torch=={self.version}"


@dataclasses.dataclass(frozen=True)
class Source:
    """An sdist on an index pinned by sha256, or a folder in this repository."""

    kind: Literal["sdist", "wheel", "path"]
    location: str  # URL for sdists, repo-relative or absolute path for folders
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    package: str
    version: str
    recipe: str
    source: Source
    torch: TorchBuild
    python: str  # "3.11", or "system" (the system torch's interpreter)
    cuda_archs: tuple[str, ...]
    flavour: str | None = None
    default: bool = False

    @property
    def arch_list(self) -> str:
        """TORCH_CUDA_ARCH_LIST form."""
        return ";".join(self.cuda_archs)

    @property
    def sm_archs(self) -> tuple[str, ...]:
        """["80", "90"] for "8.0;9.0+PTX": the SASS the wheel must carry."""
        return tuple(a.removesuffix("+PTX").replace(".", "") for a in self.cuda_archs)

    @property
    def ptx_archs(self) -> tuple[str, ...]:
        return tuple(a.removesuffix("+PTX").replace(".", "") for a in self.cuda_archs if a.endswith("+PTX"))


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything `nox -s wheels` needs, resolved once."""

    matrix_path: Path
    targets: Mapping[str, Target]  # every target in the matrix, by name
    selected: tuple[str, ...]  # the targets to act on, in matrix order
    wheelhouse: Path
    cache_dir: Path
    backend: Backend
    builder_image: str
    builder_base: str
    system_python: str
    max_jobs: int | None
    nvcc_threads: int | None
    keep_envs: bool
    list_only: bool = False
    force: bool = False
    as_json: bool = False

    def selected_targets(self) -> list[Target]:
        return [self.targets[name] for name in self.selected]


# ---------------------------------------------------------------------------------------------------------------------
# Loading


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise unknown("key", key, allowed, where)


_ARCH_RE = re.compile(r"^\d+\.\d+a?(\+PTX)?$")


def parse_archs(value: str, where: str) -> tuple[str, ...]:
    archs = tuple(a for a in re.split(r"[;\s,]+", value.strip()) if a)
    if not archs:
        raise ConfigError(f"Empty CUDA arch list in {where}", fix='give one like "8.0;9.0"')
    for arch in archs:
        if not _ARCH_RE.match(arch):
            raise ConfigError(
                f'Bad CUDA arch "{arch}" in {where}',
                fix='write archs as in TORCH_CUDA_ARCH_LIST: "8.0;8.6;9.0" or "9.0+PTX"',
            )
    return archs


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"Matrix file {path} does not exist", fix="point WHEELS_MATRIX or --matrix at it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Matrix file {path} is not valid TOML: {e}") from None


def _torch_builds(raw: Mapping[str, Any], env: Mapping[str, str], where: str) -> dict[str, TorchBuild]:
    builds: dict[str, TorchBuild] = {}
    for name, table in raw.items():
        loc = f"{where} [torch.{name}]"
        _check_keys(table, _TORCH_KEYS, loc)
        source = table.get("source", "index")
        if source == "system":
            builds[name] = TorchBuild(name=name, source="system")
            continue
        if source != "index":
            raise ConfigError(f'Bad source "{source}" in {loc}', fix='use "index" (the default) or "system"')
        for key in ("version", "cuda", "index-url"):
            if key not in table:
                raise ConfigError(f'Missing "{key}" in {loc}')
        index_url = env.get(index_env_key(name)) or env.get("TORCH_INDEX_URL") or table["index-url"]
        builds[name] = TorchBuild(
            name=name, source="index", version=str(table["version"]), cuda=str(table["cuda"]), index_url=index_url
        )
    # A mistyped per-build override (TORCH_INDEX_URL_CU12) would be ignored and torch fetched from the default index.
    known = {index_env_key(name) for name, build in builds.items() if build.source == "index"}
    for key in env:
        if key.startswith("TORCH_INDEX_URL_") and key not in known:
            raise unknown("environment variable", key, known, f"the environment (torch builds of {where})")
    return builds


def index_env_key(build: str) -> str:
    return "TORCH_INDEX_URL_" + re.sub(r"[^A-Za-z0-9]", "_", build).upper()


def load_torch_builds(path: Path, env: Mapping[str, str]) -> dict[str, TorchBuild]:
    """Every torch build a matrix file declares, whether a target uses it or not (the gate's --torch may name any)."""
    data = _load_toml(path)
    return _torch_builds(data.get("torch", {}), env, str(path))


def _resolve_extends(raw: Mapping[str, Mapping[str, Any]], name: str, where: str, seen: tuple[str, ...] = ()) -> dict:
    table = raw[name]
    parent = table.get("extends")
    if parent is None:
        return dict(table)
    if parent not in raw:
        raise unknown("target", parent, raw, f'{where} [targets.{name}] extends')
    if parent in (*seen, name):  # name itself too: a target that extends itself is a loop of one
        raise ConfigError(f"Targets extend each other in a loop: {' -> '.join((*seen, name, parent))} in {where}")
    merged = _resolve_extends(raw, parent, where, (*seen, name))
    merged.pop("default", None)  # being a default target is never inherited
    merged.update({k: v for k, v in table.items() if k != "extends"})
    return merged


def _source(table: Any, loc: str) -> Source:
    if not isinstance(table, Mapping):
        raise ConfigError(f"source in {loc} must be a table", fix='write source = { sdist = "URL", sha256 = "..." }')
    _check_keys(table, _SOURCE_KEYS, f"{loc} source")
    if "path" in table:
        return Source(kind="path", location=str(table["path"]))
    for kind in ("sdist", "wheel"):  # an index file (an upstream wheel for the prebuilt recipe), pinned
        if kind in table:
            sha = str(table.get("sha256", ""))
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise ConfigError(f"{kind} source in {loc} needs a sha256 pin", fix='add sha256 = "<64 hex digits>"')
            return Source(kind=kind, location=str(table[kind]), sha256=sha)
    raise ConfigError(f"source in {loc} names neither an sdist, a wheel nor a path")


def load_matrix(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Target]]:
    """Read and check the matrix file. Returns its settings table and every target, resolved."""
    data = _load_toml(path)
    where = str(path)
    _check_keys(data, _TOP_KEYS, where)
    if data.get("schema") != 1:
        raise ConfigError(f"{where} has schema {data.get('schema')!r}; this pipeline reads schema 1")
    settings = dict(data.get("settings", {}))
    _check_keys(settings, _SETTINGS_KEYS, f"{where} [settings]")
    builds = _torch_builds(data.get("torch", {}), env, where)
    raw_targets: dict[str, Mapping[str, Any]] = data.get("targets", {})

    from .recipes import RECIPES  # imported here: recipes import options' dataclasses

    targets: dict[str, Target] = {}
    for name in raw_targets:
        loc = f"{where} [targets.{name}]"
        _check_keys(raw_targets[name], _TARGET_KEYS, loc)
        table = _resolve_extends(raw_targets, name, where)
        for key in ("package", "version", "recipe", "source", "torch", "python", "cuda-archs"):
            if key not in table:
                raise ConfigError(f'Missing "{key}" in {loc}')
        if table["recipe"] not in RECIPES:
            raise unknown("recipe", table["recipe"], RECIPES, loc)
        if table["torch"] not in builds:
            raise unknown("torch build", table["torch"], builds, loc)
        torch = builds[table["torch"]]
        python = str(table["python"])
        if (python == "system") != (torch.source == "system"):
            raise ConfigError(
                f'{loc}: python "{python}" does not fit torch build "{torch.name}"',
                fix='the system torch build goes with python = "system", and only with it',
            )
        if python != "system" and not re.fullmatch(r"3\.\d+", python):
            raise ConfigError(f'Bad python "{python}" in {loc}', fix='write it as "3.11"')
        recipe = RECIPES[table["recipe"]]
        flavour = table.get("flavour")
        if flavour is not None and flavour not in recipe.flavours:
            raise unknown(f"flavour of recipe {recipe.name}", flavour, recipe.flavours, loc)
        targets[name] = Target(
            name=name,
            package=str(table["package"]),
            version=str(table["version"]),
            recipe=table["recipe"],
            source=_source(table["source"], loc),
            torch=torch,
            python=python,
            cuda_archs=parse_archs(str(table["cuda-archs"]), loc),
            flavour=flavour,
            default=bool(table.get("default", False)),
        )
    if not targets:
        raise ConfigError(f"{where} defines no targets")
    return settings, targets


def select_targets(patterns: Sequence[str], targets: Mapping[str, Target], where: str = "the command line") -> tuple[str, ...]:
    """Names or globs -> target names in matrix order; none given -> the default targets."""
    if not patterns:
        return tuple(name for name, t in targets.items() if t.default)
    chosen: set[str] = set()
    for pattern in patterns:
        matches = [name for name in targets if fnmatch.fnmatchcase(name, pattern)]
        if not matches:
            raise unknown("target", pattern, targets, where)
        chosen.update(matches)
    return tuple(name for name in targets if name in chosen)


def _int_setting(value: str | int | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)  # type: ignore[arg-type]
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, got {number}")
    return number


def _bool_setting(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def without_settings(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus every variable this pipeline reads (and CUDA_PATH, CUDA_HOME's twin): for runs that must not
    inherit a caller's MAX_JOBS, CUDA_HOME, WHEELHOUSE or torch index (tests, benchmarks)."""
    return {
        k: v
        for k, v in env.items()
        if k not in ENV_VARS and k != "CUDA_PATH" and not k.startswith(("WHEELS_", "TORCH_INDEX_URL_"))
    }


def check_env(env: Mapping[str, str]) -> None:
    """Fail on a WHEELS_* variable this pipeline does not read (a typo would otherwise be ignored silently)."""
    ours = [k for k in ENV_VARS if k.startswith("WHEELS_")]
    for key in env:
        if key.startswith("WHEELS_") and key not in ENV_VARS:
            raise unknown("environment variable", key, ours, "the environment")


def build_parser(prog: str = "nox -s wheels --") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Build torch CUDA extension wheels into a wheelhouse.")
    parser.add_argument("targets", nargs="*", help="target names or globs (default: the default targets)")
    parser.add_argument("--list", action="store_true", help="show each target's cache key and state; build nothing")
    parser.add_argument("--json", action="store_true", help="with --list: print JSON on stdout")
    parser.add_argument("--matrix", type=Path, help="matrix file (WHEELS_MATRIX)")
    parser.add_argument("--wheelhouse", type=Path, help="output folder (WHEELHOUSE)")
    parser.add_argument("--cache-dir", type=Path, help="cache folder (WHEELS_CACHE_DIR)")
    parser.add_argument("--backend", choices=BACKENDS, help="local (default) or container (cibuildwheel)")
    parser.add_argument("--builder-image", help="builder image tag for the container backend ({cuda}: the target's)")
    parser.add_argument("--builder-base", help="base image of the builder image (default: pinned manylinux_2_28)")
    parser.add_argument("--system-python", help="interpreter whose torch the 'system' torch build uses")
    parser.add_argument("--cuda-archs", help='override the arch list of every selected target ("9.0")')
    parser.add_argument("--max-jobs", help="parallel compile jobs (MAX_JOBS)")
    parser.add_argument("--nvcc-threads", help="nvcc --threads per job (NVCC_THREADS)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache key is already built")
    parser.add_argument("--keep-envs", action="store_true", help="keep failed environments for inspection")
    return parser


class _ArgumentParserError(Exception):
    pass


def parse_args(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse with one error path: an unknown flag gets "Perhaps you meant ...", anything else a ConfigError."""
    parser = parser or build_parser()

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
        raise ConfigError(f"Bad arguments: {e}", fix=f"see `{parser.prog} --help`") from None


def resolve(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Options:
    """The one place where matrix, environment and arguments meet."""
    check_env(env)
    args = parse_args(argv)
    cwd = cwd or Path.cwd()
    matrix_path = Path(args.matrix or env.get("WHEELS_MATRIX") or DEFAULT_MATRIX)
    settings, targets = load_matrix(matrix_path, env)

    def setting(arg: Any, env_key: str, key: str, default: Any) -> Any:
        if arg not in (None, ""):
            return arg
        if env.get(env_key):
            return env[env_key]
        return settings.get(key, default)

    def path_setting(arg: Any, env_key: str, key: str, default: str) -> Path:
        value = Path(setting(arg, env_key, key, default)).expanduser()
        return value if value.is_absolute() else (cwd / value)

    backend = setting(args.backend, "WHEELS_BACKEND", "backend", "local")
    if backend not in BACKENDS:
        raise unknown("backend", backend, BACKENDS, "WHEELS_BACKEND / matrix settings")

    selected = select_targets(args.targets, targets)
    archs = args.cuda_archs or env.get("WHEELS_CUDA_ARCHS")
    if archs:
        override = parse_archs(archs, "--cuda-archs / WHEELS_CUDA_ARCHS")
        targets = {
            name: dataclasses.replace(t, cuda_archs=override) if name in selected else t for name, t in targets.items()
        }
    return Options(
        matrix_path=matrix_path,
        targets=targets,
        selected=selected,
        wheelhouse=path_setting(args.wheelhouse, "WHEELHOUSE", "wheelhouse", "wheelhouse"),
        cache_dir=path_setting(args.cache_dir, "WHEELS_CACHE_DIR", "cache-dir", ".cache/wheels"),
        backend=backend,
        builder_image=setting(args.builder_image, "WHEELS_BUILDER_IMAGE", "builder-image", DEFAULT_BUILDER_IMAGE),
        builder_base=setting(args.builder_base, "WHEELS_BUILDER_BASE", "builder-base", DEFAULT_BUILDER_BASE),
        system_python=setting(args.system_python, "WHEELS_SYSTEM_PYTHON", "", "python3"),
        max_jobs=_int_setting(args.max_jobs or env.get("MAX_JOBS"), "MAX_JOBS / --max-jobs"),
        nvcc_threads=_int_setting(args.nvcc_threads or env.get("NVCC_THREADS"), "NVCC_THREADS / --nvcc-threads"),
        keep_envs=bool(args.keep_envs) or _bool_setting(env.get("WHEELS_KEEP_ENVS")),
        list_only=bool(args.list),
        force=bool(args.force),
        as_json=bool(args.json),
    )


def from_environ(argv: Sequence[str]) -> Options:
    return resolve(argv, os.environ)
