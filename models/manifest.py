"""The model manifest: which files each variant needs, where they come from, where ComfyUI expects them.

Data lives in ``models/manifest.toml`` (or a user's own file in the same format); this module is its one loader.
It is pure: it reads TOML and returns frozen dataclasses, and every mistake in the file is a ``ConfigError`` that
names the file, the entry and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .errors import ConfigError, unknown

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.toml"
SCHEMA = 1

Status = Literal["verified", "unverified"]
STATUSES: tuple[str, ...] = ("verified", "unverified")
# How the repo/path (or url) was established: "confirmed" by the public sources listed in the entry, or "inferred"
# (e.g. a file name derived from a naming pattern): an inferred entry may well 404, and the downloader then says so.
LOCATIONS: tuple[str, ...] = ("confirmed", "inferred")

# ComfyUI's model folders that SteadyDancer workflows use, plus "annotators" (comfyui_controlnet_aux's
# AUX_ANNOTATOR_CKPTS_PATH). Other relative folders are allowed for users' own manifests; these are documented.
COMFYUI_FOLDERS: tuple[str, ...] = (
    "annotators",
    "checkpoints",
    "clip",
    "clip_vision",
    "controlnet",
    "detection",
    "diffusion_models",
    "loras",
    "text_encoders",
    "unet",
    "upscale_models",
    "vae",
)

_TOP_KEYS = {"schema", "variants", "files"}
_VARIANT_KEYS = {"description", "default", "includes"}
_FILE_KEYS = {
    "repo",
    "revision",
    "path",
    "url",
    "folder",
    "subdir",
    "filename",
    "size",
    "sha256",
    "sha256-prefix",
    "variants",
    "status",
    "location",
    "sources",
    "note",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{8,63}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    description: str
    default: bool = False
    includes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """One file to fetch. Either a hub file (``repo`` + ``revision`` + ``path``) or a plain ``url``."""

    name: str
    folder: str
    filename: str
    variants: tuple[str, ...]
    status: Status
    repo: str | None = None
    revision: str = "main"
    path: str | None = None
    url: str | None = None
    subdir: str = ""
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    location: str | None = None
    sources: tuple[str, ...] = ()
    note: str = ""

    @property
    def on_hub(self) -> bool:
        return self.repo is not None

    @property
    def pinned(self) -> bool:
        """True when the revision is a commit: the bytes can never change under us."""
        return bool(_COMMIT.fullmatch(self.revision))

    @property
    def relpath(self) -> PurePosixPath:
        """Where the file goes, relative to the destination folder."""
        parts = [self.folder, *([self.subdir] if self.subdir else []), self.filename]
        return PurePosixPath(*parts)

    @property
    def origin(self) -> str:
        if self.on_hub:
            return f"{self.repo}@{self.revision}:{self.path}"
        return str(self.url)


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    variants: Mapping[str, Variant]
    files: tuple[ModelFile, ...]

    @property
    def default_variants(self) -> tuple[str, ...]:
        return tuple(name for name, v in self.variants.items() if v.default)

    def expand(self, names: Iterable[str], where: str = "the command line") -> tuple[str, ...]:
        """Variant names plus everything they include, transitively, in manifest order."""
        chosen: set[str] = set()
        pending = list(names)
        while pending:
            name = pending.pop()
            if name not in self.variants:
                raise unknown("variant", name, self.variants, where)
            if name not in chosen:
                chosen.add(name)
                pending.extend(self.variants[name].includes)
        return tuple(name for name in self.variants if name in chosen)

    def select(self, names: Sequence[str], where: str = "the command line") -> tuple[ModelFile, ...]:
        """The files the given variants need (no variant given: the default ones), in manifest order."""
        expanded = set(self.expand(names or self.default_variants, where))
        return tuple(f for f in self.files if expanded.intersection(f.variants))


# ---------------------------------------------------------------------------------------------------------------------


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise unknown("key", key, allowed, where)


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f'"{key}" in {where} must be a non-empty string' + ("" if key in table else " (missing)"))
    return value


def _safe_relative(value: str, key: str, where: str) -> str:
    """A relative POSIX path that stays inside the destination: no absolute paths, no '..', no backslashes."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value or value != str(path):
        raise ConfigError(
            f'"{key}" = "{value}" in {where} is not a clean relative path',
            fix='write it like "diffusion_models" or "WanVideo/SteadyDancer": relative, "/"-separated, no ".."',
        )
    return value


def _variant(name: str, table: Any, where: str) -> Variant:
    loc = f"{where} [variants.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{loc} must be a table")
    _check_keys(table, _VARIANT_KEYS, loc)
    includes = table.get("includes", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f'"includes" in {loc} must be a list of variant names')
    return Variant(
        name=name,
        description=str(table.get("description", "")),
        default=bool(table.get("default", False)),
        includes=tuple(includes),
    )


def _file(name: str, table: Any, variants: Mapping[str, Variant], where: str) -> ModelFile:
    loc = f"{where} [files.{name}]"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{loc} must be a table")
    if not _NAME.fullmatch(name):
        raise ConfigError(f'File name "{name}" in {where} must be lowercase letters, digits, ".", "_" or "-"')
    _check_keys(table, _FILE_KEYS, loc)

    repo = table.get("repo")
    url = table.get("url")
    if (repo is None) == (url is None):
        raise ConfigError(
            f"{loc} must name either a hub file (repo, revision, path) or a url, and not both",
            fix='add repo = "owner/name" and path = "file/in/repo", or url = "https://..."',
        )
    path: str | None = None
    revision = "main"
    if repo is not None:
        repo = _str(table, "repo", loc)
        if not _REPO.fullmatch(repo):
            raise ConfigError(f'repo "{repo}" in {loc} is not of the form "owner/name"')
        path = _safe_relative(_str(table, "path", loc), "path", loc)
        revision = _str(table, "revision", loc)
    else:
        url = _str(table, "url", loc)
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f'url "{url}" in {loc} must be an http(s) URL')
        for key in ("revision", "path"):
            if key in table:
                raise ConfigError(f'"{key}" in {loc} only applies to hub files (with repo), not to a url')

    folder = _safe_relative(_str(table, "folder", loc), "folder", loc)
    subdir = _safe_relative(str(table["subdir"]), "subdir", loc) if table.get("subdir") else ""
    default_filename = PurePosixPath(path).name if path else PurePosixPath(str(url).split("?")[0]).name
    filename = _str(table, "filename", loc, default_filename)
    if "/" in filename or filename in (".", ".."):
        raise ConfigError(f'filename "{filename}" in {loc} must be a plain file name', fix="put folders in subdir")

    size = table.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ConfigError(f'"size" in {loc} must be a whole number of bytes')
    sha256 = table.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256)):
        raise ConfigError(f'"sha256" in {loc} must be 64 lowercase hex digits', fix="leave it out when unknown")
    prefix = table.get("sha256-prefix")
    if prefix is not None and (not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix)):
        raise ConfigError(f'"sha256-prefix" in {loc} must be 8 to 63 lowercase hex digits')
    if url is not None and sha256 is None and prefix is None:
        # A hub file can always be checked against the hub's own LFS sha256; a bare URL has nothing to check against.
        raise ConfigError(
            f"{loc} is a plain url without sha256 or sha256-prefix: it could not be verified",
            fix="add the file's sha256 (or at least the sha256-prefix its publisher embeds in the name)",
        )

    names = table.get("variants")
    if not isinstance(names, list) or not names or not all(isinstance(v, str) for v in names):
        raise ConfigError(f'"variants" in {loc} must be a non-empty list of variant names')
    for v in names:
        if v not in variants:
            raise unknown("variant", v, variants, loc)

    status = table.get("status")
    if status not in STATUSES:
        raise ConfigError(f'"status" in {loc} must be "verified" or "unverified", got {status!r}')
    if status == "verified" and (sha256 is None or (repo is not None and not _COMMIT.fullmatch(revision))):
        raise ConfigError(
            f'{loc} is marked status = "verified" without a pinned commit and a sha256',
            fix='"verified" means the revision is a 40-hex commit and sha256 is known; otherwise say "unverified"',
        )
    location = table.get("location")
    if location is not None and location not in LOCATIONS:
        raise ConfigError(f'"location" in {loc} must be "confirmed" or "inferred", got {location!r}')
    sources = table.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ConfigError(f'"sources" in {loc} must be a list of URLs')

    return ModelFile(
        name=name,
        folder=folder,
        subdir=subdir,
        filename=filename,
        variants=tuple(names),
        status=status,
        location=location,
        repo=repo,
        revision=revision,
        path=path,
        url=url,
        size=size,
        sha256=sha256,
        sha256_prefix=prefix,
        sources=tuple(sources),
        note=str(table.get("note", "")),
    )


def parse(data: Mapping[str, Any], where: str, path: Path) -> Manifest:
    """Check a decoded manifest and build it. ``where`` names it in messages."""
    _check_keys(data, _TOP_KEYS, where)
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"{where} has schema {data.get('schema')!r}; this downloader reads schema {SCHEMA}")
    raw_variants = data.get("variants", {})
    raw_files = data.get("files", {})
    if not isinstance(raw_variants, Mapping) or not raw_variants:
        raise ConfigError(f"{where} defines no [variants.NAME] tables")
    if not isinstance(raw_files, Mapping) or not raw_files:
        raise ConfigError(f"{where} defines no [files.NAME] tables")
    variants = {name: _variant(name, table, where) for name, table in raw_variants.items()}
    for variant in variants.values():
        for inc in variant.includes:
            if inc not in variants:
                raise unknown("variant", inc, variants, f"{where} [variants.{variant.name}] includes")
    files = tuple(_file(name, table, variants, where) for name, table in raw_files.items())

    seen: dict[PurePosixPath, str] = {}
    for f in files:
        if f.relpath in seen:
            raise ConfigError(
                f'[files.{f.name}] and [files.{seen[f.relpath]}] in {where} both go to "{f.relpath}"',
                fix="give one of them another filename or subdir",
            )
        seen[f.relpath] = f.name
    empty = [name for name in variants if not any(name in f.variants for f in files)]
    included = {inc for v in variants.values() for inc in v.includes}
    for name in empty:
        if not variants[name].includes and name not in included:
            raise ConfigError(f'Variant "{name}" in {where} has no files and includes no other variant')
    return Manifest(path=path, variants=variants, files=files)


def load(path: Path) -> Manifest:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"Manifest {path} does not exist", fix="point --manifest or MODELS_MANIFEST at a manifest file"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Manifest {path} is not valid TOML: {e}") from None
    return parse(data, str(path), path)
