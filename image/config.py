"""The image's data files, read once into frozen dataclasses with clear errors.

``image/image.toml``: settings defaults and the sdists that need help to become wheels.
``image/nodes.toml``: ComfyUI and the node packs, each pinned to a commit.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wheels.errors import ConfigError, unknown

IMAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = IMAGE_DIR.parent
DEFAULT_SETTINGS = IMAGE_DIR / "image.toml"
DEFAULT_NODES = IMAGE_DIR / "nodes.toml"

SETTINGS_KEYS = {
    "profile",
    "torch",
    "base-image",
    "repository",
    "wheel-source",
    "index-url",
    "pypi-url",
    "wheelhouse",
    "cache-dir",
    "python",
    "platform",
}
_SDIST_KEYS = {"build-requires"}
_SOURCE_KEYS = {"repo", "commit", "verified", "requirements", "path"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Names become folder names, image paths and environment variable suffixes: keep them to what is safe everywhere.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
COMFYUI = "ComfyUI"


def load_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"The {what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"The {what} {path} is not valid TOML: {e}") from None


def check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise unknown("key", key, allowed, where)


def _schema(data: Mapping[str, Any], where: str) -> None:
    if data.get("schema") != 1:
        raise ConfigError(f"{where} has schema {data.get('schema')!r}; this code reads schema 1")


# ---------------------------------------------------------------------------------------------------------------------
# image.toml


@dataclasses.dataclass(frozen=True)
class SdistFix:
    """Help for one sdist-only project: extra build requirements (then it is built without isolation)."""

    name: str
    build_requires: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SettingsFile:
    path: Path
    settings: Mapping[str, Any]
    sdists: Mapping[str, SdistFix]


def load_settings(path: Path = DEFAULT_SETTINGS) -> SettingsFile:
    data = load_toml(path, "image settings file")
    where = str(path)
    check_keys(data, {"schema", "settings", "sdists"}, where)
    _schema(data, where)
    settings = dict(data.get("settings", {}))
    check_keys(settings, SETTINGS_KEYS, f"{where} [settings]")
    sdists: dict[str, SdistFix] = {}
    for name, table in data.get("sdists", {}).items():
        loc = f"{where} [sdists.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{loc} must be a table", fix='write build-requires = ["pip"]')
        check_keys(table, _SDIST_KEYS, loc)
        reqs = table.get("build-requires", [])
        if not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs):
            raise ConfigError(f"build-requires in {loc} must be a list of requirement strings")
        sdists[normalize(name)] = SdistFix(name=name, build_requires=tuple(reqs))
    return SettingsFile(path=path, settings=settings, sdists=sdists)


# ---------------------------------------------------------------------------------------------------------------------
# nodes.toml


@dataclasses.dataclass(frozen=True)
class SourcePin:
    """ComfyUI itself or one node pack: a git repository at one commit, or a local folder."""

    name: str  # "ComfyUI", or the node pack's folder name under custom_nodes/
    kind: str  # "comfyui" | "node"
    repo: str
    commit: str
    verified: str
    requirements: tuple[str, ...] | None  # None: requirements.txt where it exists
    path: Path | None = None  # a local folder named in the data file

    @property
    def env_var(self) -> str:
        return source_env_var(self.name)

    @property
    def short(self) -> str:
        return self.commit[:12]


@dataclasses.dataclass(frozen=True)
class Nodes:
    path: Path
    comfyui: SourcePin
    packs: tuple[SourcePin, ...]  # in layer order

    @property
    def all(self) -> tuple[SourcePin, ...]:
        return (self.comfyui, *self.packs)

    def by_name(self) -> dict[str, SourcePin]:
        return {s.name: s for s in self.all}


def source_env_var(name: str) -> str:
    return "IMAGE_SOURCE_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def normalize(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pin(name: str, kind: str, table: Any, where: str, base: Path) -> SourcePin:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table", fix='write repo = "https://...", commit = "<40 hex>"')
    check_keys(table, _SOURCE_KEYS, where)
    if not _NAME.match(name):
        raise ConfigError(f'Bad source name "{name}" in {where}', fix="use letters, digits, '-', '_' and '.'")
    for key in ("repo", "commit", "verified"):
        if key not in table:
            raise ConfigError(
                f'Missing "{key}" in {where}',
                fix="every source names its repository, a full commit, and how that commit was verified",
            )
    commit = str(table["commit"]).strip().lower()
    if not _COMMIT.match(commit):
        raise ConfigError(
            f'Commit "{table["commit"]}" in {where} is not a full 40-hex commit',
            why="a branch, tag or short hash can point elsewhere tomorrow; the image must be rebuildable",
            fix="pin the full commit (`git rev-parse HEAD` in a checkout)",
        )
    reqs = table.get("requirements")
    if reqs is not None and (not isinstance(reqs, list) or not all(isinstance(r, str) for r in reqs)):
        raise ConfigError(f"requirements in {where} must be a list of file names in the source")
    path = table.get("path")
    return SourcePin(
        name=name,
        kind=kind,
        repo=str(table["repo"]),
        commit=commit,
        verified=str(table["verified"]),
        requirements=tuple(reqs) if reqs is not None else None,
        path=(base / str(path)).resolve() if path else None,
    )


def load_nodes(path: Path = DEFAULT_NODES) -> Nodes:
    data = load_toml(path, "node pin file")
    where = str(path)
    check_keys(data, {"schema", "comfyui", "nodes"}, where)
    _schema(data, where)
    if "comfyui" not in data:
        raise ConfigError(f"{where} has no [comfyui] table")
    base = path.resolve().parent
    comfyui = _pin(COMFYUI, "comfyui", data["comfyui"], f"{where} [comfyui]", base)
    packs = tuple(_pin(n, "node", t, f"{where} [nodes.{n}]", base) for n, t in data.get("nodes", {}).items())
    seen: set[str] = {COMFYUI.lower()}
    for pack in packs:
        if pack.name.lower() in seen:
            raise ConfigError(f'Node pack "{pack.name}" appears twice in {where} (names are compared ignoring case)')
        seen.add(pack.name.lower())
    return Nodes(path=path, comfyui=comfyui, packs=packs)
