"""The checks that come before any upload: selection by gate, hashes against records, the plan against an index."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from publishing import add_to_wheelhouse, make_wheel, make_wheelhouse

from wheels.errors import ConfigError, PublishError
from wheels.manifest import Wheelhouse
from wheels.publish.pipeline import plan, select, stage, twine_check
from wheels.publish.server import check_outside, load_credentials, quarantine_unreadable, write_htpasswd
from wheels.publish.simple import Link


def test_select_only_gated_and_by_pattern(tmp_path: Path) -> None:
    house = tmp_path / "wh"
    make_wheelhouse(house, tmp_path / "s", {"canary-cu124": ("canary", "0.1.0+cu124torch2.5")})
    add_to_wheelhouse(house, "mmcv-cu124", make_wheel(tmp_path / "m", "mmcv", "2.1.0+cu124torch2.5"), verdict="fail")
    records = Wheelhouse(house).records()
    assert [r.target for r in select(records, [], house)] == ["canary-cu124"]
    assert [r.target for r in select(records, ["canary*"], house)] == ["canary-cu124"]
    with pytest.raises(PublishError, match="No gated wheels"):
        select(records, ["mmcv-cu124"], house)
    with pytest.raises(ConfigError, match='Perhaps you meant "canary-cu124"'):
        select(records, ["canary-cu12"], house)
    with pytest.raises(PublishError, match="No gated wheels.*"):
        select({}, [], house)


def test_stage_refuses_every_tampered_or_missing_wheel_at_once(tmp_path: Path) -> None:
    house = tmp_path / "wh"
    recs = make_wheelhouse(house, tmp_path / "s", {"a": ("alpha", "1.0"), "b": ("beta", "1.0"), "c": ("gamma", "1.0")})
    with (house / recs["a"].filename).open("r+b") as f:
        f.seek(10)
        f.write(b"X")
    (house / recs["b"].filename).unlink()
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(PublishError) as info:
        stage(Wheelhouse(house), list(recs.values()), staging, {})
    text = info.value.render()
    assert "2 wheel(s) differ from their records" in text
    assert recs["a"].filename in text and recs["b"].filename in text and recs["c"].filename not in text
    assert "nothing was published" in text


def test_stage_links_and_hashes(tmp_path: Path) -> None:
    house = tmp_path / "wh"
    recs = make_wheelhouse(house, tmp_path / "s", {"a": ("alpha", "1.0")})
    staging = tmp_path / "staging"
    staging.mkdir()
    (s,) = stage(Wheelhouse(house), list(recs.values()), staging, {"cu124": "https://torch.example/"})
    assert s.path.read_bytes() == (house / recs["a"].filename).read_bytes()
    assert s.extra_index_url == "https://torch.example/"
    # A rebuild replaces the wheelhouse's file by rename; the staged link keeps the bytes that were hashed.
    os.replace(make_wheel(tmp_path / "new", "alpha", "1.0", payload="rebuilt"), house / recs["a"].filename)
    assert s.path.read_bytes() != (house / recs["a"].filename).read_bytes()


class FakeReader:
    index_url = "http://idx.example/simple/"

    def __init__(self, held: dict[str, str]) -> None:
        self.held = held

    def holdings(self, projects):  # noqa: ANN001, ANN201
        return {n: Link(n, f"http://idx.example/p/{n}", sha) for n, sha in self.held.items()}

    def sha256(self, link: Link) -> str:
        return link.sha256 or ""


def test_plan_skips_same_hash_and_refuses_different_file(tmp_path: Path) -> None:
    house = tmp_path / "wh"
    recs = make_wheelhouse(house, tmp_path / "s", {"a": ("alpha", "1.0"), "b": ("beta", "1.0")})
    staging = tmp_path / "staging"
    staging.mkdir()
    staged = stage(Wheelhouse(house), list(recs.values()), staging, {})
    todo, present = plan(FakeReader({recs["a"].filename: recs["a"].sha256}), staged)  # type: ignore[arg-type]
    assert [s.filename for s in todo] == [recs["b"].filename]
    assert [s.filename for s in present] == [recs["a"].filename]
    with pytest.raises(PublishError, match="already holds a different file under 1 of our names; nothing was uploaded"):
        plan(FakeReader({recs["b"].filename: "f" * 64}), staged)  # type: ignore[arg-type]


def test_index_data_must_live_outside_the_wheelhouse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overlaps the wheelhouse"):
        check_outside(tmp_path / "wheelhouse" / "index", tmp_path / "wheelhouse")
    with pytest.raises(ConfigError, match="overlaps"):
        check_outside(tmp_path, tmp_path / "wheelhouse")
    check_outside(tmp_path / ".cache" / "index", tmp_path / "wheelhouse")


def test_credentials_generated_once_private_and_overridable(tmp_path: Path) -> None:
    first = load_credentials(tmp_path, {})
    path = tmp_path / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["password"] == first.password and len(first.password) >= 24
    assert load_credentials(tmp_path, {}) == first  # kept, not regenerated
    env = {"WHEELS_INDEX_USERNAME": "ci", "WHEELS_INDEX_PASSWORD": "from-env-pw"}
    assert (load_credentials(tmp_path, env).username, load_credentials(tmp_path, env).password) == ("ci", "from-env-pw")
    with pytest.raises(ConfigError, match="Only one of"):
        load_credentials(tmp_path, {"WHEELS_INDEX_USERNAME": "ci"})
    path.chmod(0o644)
    load_credentials(tmp_path, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.filterwarnings("ignore:'crypt' is deprecated:DeprecationWarning")
def test_htpasswd_verifies_the_password_only(tmp_path: Path) -> None:
    from passlib.apache import HtpasswdFile

    creds = load_credentials(tmp_path, {})
    write_htpasswd(tmp_path / "htpasswd", creds)
    assert stat.S_IMODE((tmp_path / "htpasswd").stat().st_mode) == 0o600
    assert creds.password not in (tmp_path / "htpasswd").read_text()
    ht = HtpasswdFile(str(tmp_path / "htpasswd"))
    assert ht.check_password(creds.username, creds.password)
    assert not ht.check_password(creds.username, creds.password + "x")


def test_truncated_wheels_are_quarantined(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    good = make_wheel(packages, "alpha", "1.0")
    bad = make_wheel(packages, "beta", "1.0")
    bad.write_bytes(bad.read_bytes()[:100])  # a server killed mid-write
    moved = quarantine_unreadable(packages, tmp_path / "quarantine")
    assert [p.name.split(".whl")[0] + ".whl" for p in moved] == [bad.name]
    assert good.exists() and not bad.exists()


def test_twine_check_shows_warnings_and_publishes_upstream_metadata_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mmcv 2.1.0's wheel has no long description: valid metadata, which `twine check --strict` refused, so the
    first real mmcv wheel could not be published. Now it is a warning naming the wheel."""
    plain = make_wheel(tmp_path / "a", "plain-pkg-with-a-rather-long-name-that-twine-wraps", description=None)
    good = make_wheel(tmp_path / "b", "good-pkg")
    twine_check([plain, good])
    err = capsys.readouterr().err
    assert f"{plain.name}: twine check:" in err and "long_description" in err
    assert good.name not in err


def test_twine_check_refuses_a_description_that_would_not_render(tmp_path: Path) -> None:
    bad = make_wheel(tmp_path / "c", "bad-pkg", description=("text/x-rst", ".. raw:: html\n\n   <b>{name}</b>\n"))
    with pytest.raises(PublishError, match="twine check rejected the wheels' metadata") as info:
        twine_check([bad])
    assert "bad_pkg" in info.value.render()
