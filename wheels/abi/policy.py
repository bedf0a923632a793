"""Portability policy: image bases and manylinux ceilings (data in policy.toml), and the pure functions over them."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import ConfigError, unknown
from .elf import VersionNeed

POLICY_FILE = Path(__file__).with_name("policy.toml")

# Symbol version families and the library that defines each (for messages).
FAMILIES: dict[str, tuple[str, str]] = {
    "glibc": ("GLIBC_", "glibc"),
    "glibcxx": ("GLIBCXX_", "libstdc++"),
    "cxxabi": ("CXXABI_", "libstdc++"),
    "gcc": ("GCC_", "libgcc_s"),
}
# glibc marks objects linked with -z pack-relative-relocs with this version; glibc 2.36 introduced it.
SPECIAL_VERSIONS = {"GLIBC_ABI_DT_RELR": ("glibc", "2.36")}

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    return tuple(int(p) for p in text.split("."))


def fmt(version: Version) -> str:
    return ".".join(str(p) for p in version)


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """The newest version of each family a system (or a manylinux policy) provides."""

    name: str
    glibc: Version
    glibcxx: Version
    cxxabi: Version
    gcc: Version
    description: str = ""
    aliases: tuple[str, ...] = ()

    def get(self, family: str) -> Version:
        return getattr(self, family)


@dataclasses.dataclass(frozen=True)
class Policy:
    default_base: str
    bases: Mapping[str, Ceilings]
    manylinux: tuple[Ceilings, ...]  # oldest first


def _ceilings(name: str, table: Mapping[str, object], where: str) -> Ceilings:
    allowed = {"glibc", "glibcxx", "cxxabi", "gcc", "description", "aliases"}
    for key in table:
        if key not in allowed:
            raise unknown("key", key, allowed, where)
    values = {}
    for family in FAMILIES:
        raw = table.get(family)
        if not isinstance(raw, str) or not re.fullmatch(r"\d+(\.\d+)+", raw):
            raise ConfigError(f'{where}: "{family}" must be a version string like "2.35", got {raw!r}')
        values[family] = parse_version(raw)
    return Ceilings(
        name=name,
        description=str(table.get("description", "")),
        aliases=tuple(table.get("aliases", ())),  # type: ignore[arg-type]
        **values,
    )


def load_policy(path: Path = POLICY_FILE) -> Policy:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Portability policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"Portability policy file {path} is not valid TOML: {e}") from None
    for key in data:
        if key not in {"schema", "default", "bases", "manylinux"}:
            raise unknown("key", key, {"schema", "default", "bases", "manylinux"}, str(path))
    if data.get("schema") != 1:
        raise ConfigError(f"{path} has schema {data.get('schema')!r}; this gate reads schema 1")
    bases = {name: _ceilings(name, t, f"{path} [bases.{name}]") for name, t in data.get("bases", {}).items()}
    if not bases:
        raise ConfigError(f"{path} defines no image bases")
    default = data.get("default")
    if default not in bases:
        raise unknown("image base", str(default), bases, f"{path} default")
    manylinux = tuple(
        sorted(
            (_ceilings(name, t, f"{path} [manylinux.{name}]") for name, t in data.get("manylinux", {}).items()),
            key=lambda c: c.glibc,
        )
    )
    return Policy(default, bases, manylinux)


def resolve_base(name: str | None, policy: Policy) -> Ceilings:
    """The image base by name (``--base`` / WHEELS_IMAGE_BASE), or the policy's default."""
    chosen = name or policy.default_base
    if chosen not in policy.bases:
        raise unknown("image base", chosen, policy.bases, "--base / WHEELS_IMAGE_BASE")
    return policy.bases[chosen]


# ---------------------------------------------------------------------------------------------------------------------
# What a wheel needs


@dataclasses.dataclass(frozen=True)
class Need:
    family: str  # "glibc"
    version: Version
    symbol_version: str  # "GLIBC_2.32"
    library: str  # "libc.so.6"


def classify_need(need: VersionNeed) -> Need | None:
    """A version need of a system library family, or None (other libraries' versions, non-numeric markers)."""
    if need.version in SPECIAL_VERSIONS:
        family, version = SPECIAL_VERSIONS[need.version]
        return Need(family, parse_version(version), need.version, need.library)
    for family, (prefix, _lib) in FAMILIES.items():
        if need.version.startswith(prefix):
            rest = need.version[len(prefix) :]
            if re.fullmatch(r"\d+(\.\d+)*", rest):
                return Need(family, parse_version(rest), need.version, need.library)
    return None


def highest_needs(needs: Iterable[VersionNeed]) -> dict[str, Need]:
    """The newest version needed per family: what decides where a wheel can run."""
    best: dict[str, Need] = {}
    for raw in needs:
        if raw.weak:
            continue
        need = classify_need(raw)
        if need and (need.family not in best or need.version > best[need.family].version):
            best[need.family] = need
    return best


def private_needs(needs: Iterable[VersionNeed]) -> list[VersionNeed]:
    """GLIBC_PRIVATE and the like: internal interfaces that change with every release of the library."""
    return [n for n in needs if n.version.endswith("_PRIVATE")]


def exceeding(highest: Mapping[str, Need], ceilings: Ceilings) -> list[tuple[Need, Version]]:
    return [(need, ceilings.get(f)) for f, need in sorted(highest.items()) if need.version > ceilings.get(f)]


def platform_tag(highest: Mapping[str, Need], policy: Policy, arch: str = "x86_64") -> str:
    """The lowest manylinux tag whose ceilings cover every need; ``linux_<arch>`` when none does."""
    for ceilings in policy.manylinux:
        if not exceeding(highest, ceilings):
            return f"{ceilings.name}_{arch}"
    return f"linux_{arch}"


_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def tag_glibc(platform: str) -> tuple[int, int] | None:
    """The glibc a platform tag promises to need at most: ``manylinux_2_34_x86_64`` -> (2, 34); None if no promise."""
    match = re.match(r"^manylinux_(\d+)_(\d+)_", platform)
    if match:
        return int(match.group(1)), int(match.group(2))
    for legacy, glibc in _LEGACY.items():
        if platform.startswith(legacy + "_"):
            return glibc
    return None
