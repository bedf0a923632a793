"""Portability policy: the data file's loader and the version-ceiling functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from wheels.abi.elf import VersionNeed
from wheels.abi.policy import (
    POLICY_FILE,
    highest_needs,
    load_policy,
    platform_tag,
    resolve_base,
    tag_glibc,
)
from wheels.errors import ConfigError

BASE_A = '[bases.a]\nglibc = "2.35"\nglibcxx = "3.4.30"\ncxxabi = "1.3.13"\n'


def test_the_shipped_policy_loads_and_defaults_to_ubuntu_2204() -> None:
    policy = load_policy()
    base = resolve_base(None, policy)
    assert base.name == "ubuntu-22.04"
    assert (base.glibc, base.glibcxx, base.cxxabi) == ((2, 35), (3, 4, 30), (1, 3, 13))
    names = [c.name for c in policy.manylinux]
    assert names[0] == "manylinux_2_17" and names == sorted(names, key=lambda n: int(n.rsplit("_", 1)[1]))


def test_unknown_base_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match='Perhaps you meant "ubuntu-22.04"'):
        resolve_base("ubuntu-2204", load_policy())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('schema = 1\ndefault = "a"\n' + BASE_A, '"gcc" must be'),
        ('schema = 1\ndefault = "a"\n' + BASE_A + 'gcc = "12.0.0"\nglibcc = "1"\n', "Perhaps you meant"),
        ('schema = 1\ndefault = "a"\n' + BASE_A + 'gcc = "twelve"\n', '"gcc" must be a version string'),
        (
            'schema = 1\ndefault = "b"\n' + BASE_A + 'gcc = "12.0"\n',
            'Unknown image base "b"',
        ),
        ("schema = 2\n", "schema 2"),
        ("schema = [", "not valid TOML"),
    ],
)
def test_bad_policy_files_fail_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_highest_needs_compares_numerically_and_skips_weak_and_foreign_versions() -> None:
    needs = [
        VersionNeed("libc.so.6", "GLIBC_2.9"),
        VersionNeed("libc.so.6", "GLIBC_2.17"),  # 2.17 > 2.9, as numbers
        VersionNeed("libc.so.6", "GLIBC_2.38", weak=True),
        VersionNeed("libstdc++.so.6", "GLIBCXX_3.4.9"),
        VersionNeed("libstdc++.so.6", "GLIBCXX_3.4.21"),
        VersionNeed("libstdc++.so.6", "CXXABI_TM_1"),
        VersionNeed("libcudart.so.12", "libcudart.so.12"),
    ]
    best = highest_needs(needs)
    assert {f: n.symbol_version for f, n in best.items()} == {"glibc": "GLIBC_2.17", "glibcxx": "GLIBCXX_3.4.21"}
    assert platform_tag(best, load_policy()) == "manylinux_2_24_x86_64"  # GLIBCXX_3.4.21 is past 2_17's 3.4.19


def test_platform_tag_bounds() -> None:
    policy = load_policy()
    assert platform_tag({}, policy) == "manylinux_2_17_x86_64"
    beyond = highest_needs([VersionNeed("libc.so.6", "GLIBC_2.99")])
    assert platform_tag(beyond, policy, "aarch64") == "linux_aarch64"


@pytest.mark.parametrize(
    ("tag", "glibc"),
    [
        ("manylinux_2_34_x86_64", (2, 34)),
        ("manylinux2014_x86_64", (2, 17)),
        ("manylinux1_x86_64", (2, 5)),
        ("linux_x86_64", None),
        ("musllinux_1_2_x86_64", None),
    ],
)
def test_tag_glibc(tag: str, glibc: tuple[int, int] | None) -> None:
    assert tag_glibc(tag) == glibc


def test_policy_file_is_next_to_its_loader() -> None:
    assert POLICY_FILE.name == "policy.toml" and POLICY_FILE.is_file()
