"""The wheelhouse's records: states (missing / built / stale / damaged) and an atomic commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spine_fakes import make_wheel, record_for

from wheels import manifest
from wheels.errors import ConfigError
from wheels.manifest import Wheelhouse


def built(tmp_path: Path, version: str = "0.1.0+cu124torch2.5", content: bytes = b"v1", sub: str = "staging") -> Path:
    return make_wheel(tmp_path / sub, version=version, files={"canary/_C.so": content})


@pytest.fixture
def house(tmp_path: Path) -> Wheelhouse:
    return Wheelhouse(tmp_path / "wheelhouse")


def test_states(house: Wheelhouse, tmp_path: Path) -> None:
    assert house.state("canary-cu124", "k1") == ("missing", None)
    wheel = built(tmp_path)
    rec = record_for(wheel)
    house.commit(rec, wheel, {"verdict": "pass"})
    state, got = house.state("canary-cu124", "k1")
    assert state == "built" and got == rec
    assert house.state("canary-cu124", "k2")[0] == "stale"
    assert house.verify(rec)
    (house.root / rec.filename).write_bytes(b"x")  # a different size
    assert house.state("canary-cu124", "k1")[0] == "damaged"
    (house.root / rec.filename).unlink()
    assert house.state("canary-cu124", "k1")[0] == "damaged"
    assert not house.verify(rec)


def test_same_size_tampering_is_caught_by_verify(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    rec = record_for(wheel)
    house.commit(rec, wheel)
    path = house.root / rec.filename
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert house.state("canary-cu124", "k1")[0] == "built"  # the cheap check (size) passes...
    assert not house.verify(rec)  # ...the sha256 does not, and the build loop rebuilds


def test_commit_writes_wheel_report_and_record(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    rec = record_for(wheel)
    dest = house.commit(rec, wheel, {"verdict": "pass", "checks": []})
    assert dest == house.root / wheel.name and dest.read_bytes() == wheel.read_bytes()
    data = json.loads(house.path.read_text())
    assert data == {"schema": manifest.SCHEMA, "records": {"canary-cu124": rec.to_dict()}}
    assert json.loads((house.reports / f"{wheel.name}.abi.json").read_text())["verdict"] == "pass"
    assert Wheelhouse(house.root).records() == {"canary-cu124": rec}  # a round trip through the file
    assert house.untracked() == []
    leftovers = [p.name for p in house.root.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert leftovers == []


def test_superseded_wheel_is_removed_only_after_the_record_is_written(
    house: Wheelhouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = built(tmp_path, version="0.1.0+cu121torch2.5", sub="old")
    house.commit(record_for(old), old, {"verdict": "pass"})
    new = built(tmp_path, content=b"v2")
    new_rec = record_for(new, key="k2")
    seen: list[tuple[str, bool]] = []
    real_write = manifest.atomic_write_json

    def watching_write(path: Path, data: object) -> None:
        seen.append((path.name, (house.root / old.name).exists()))
        real_write(path, data)

    monkeypatch.setattr(manifest, "atomic_write_json", watching_write)
    house.commit(new_rec, new, {"verdict": "pass"})
    assert ("manifest.json", True) in seen  # the old wheel was still there when the new record went in
    assert not (house.root / old.name).exists()
    assert not (house.reports / f"{old.name}.abi.json").exists()
    assert house.records() == {"canary-cu124": new_rec}


def test_a_wheel_another_record_still_names_is_kept(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    house.commit(record_for(wheel, target="a"), wheel)
    house.commit(record_for(wheel, target="b"), wheel)
    newer = built(tmp_path, version="0.1.0+cu121torch2.5", sub="newer")
    house.commit(record_for(newer, target="a"), newer)
    assert (house.root / wheel.name).exists()  # b still points at it
    assert set(house.records()) == {"a", "b"}


def test_superseded_report_goes_even_when_its_wheel_is_already_gone(house: Wheelhouse, tmp_path: Path) -> None:
    old = built(tmp_path, version="0.1.0+cu121torch2.5", sub="old")
    house.commit(record_for(old), old, {"verdict": "pass"})
    (house.root / old.name).unlink()
    new = built(tmp_path)
    house.commit(record_for(new, key="k2"), new, {"verdict": "pass"})
    assert not (house.reports / f"{old.name}.abi.json").exists()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


class Boom(Exception):
    pass


@pytest.mark.parametrize("same_file_name", [True, False], ids=["same-file-name", "new-file-name"])
@pytest.mark.parametrize("fail_at", ["report", "manifest"])
def test_an_exception_mid_commit_leaves_the_old_state(
    house: Wheelhouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same_file_name: bool, fail_at: str
) -> None:
    """A rebuild after a source change usually keeps the file name (same version, same label): the old wheel's bytes
    must survive a failure between copying the new wheel in and recording it, or the old record would name new bytes."""
    old = built(tmp_path, sub="old")
    house.commit(record_for(old), old, {"verdict": "pass", "n": 1})
    before = _snapshot(house.root)
    new = built(
        tmp_path,
        content=b"v2 is longer",
        sub="new",
        version="0.1.0+cu124torch2.5" if same_file_name else "0.1.0+cu121torch2.5",
    )
    real_write = manifest.atomic_write_json

    def failing_write(path: Path, data: object) -> None:
        if (fail_at == "manifest") == (path.name == "manifest.json"):
            raise Boom(f"interrupted while writing {path.name}")
        real_write(path, data)

    monkeypatch.setattr(manifest, "atomic_write_json", failing_write)
    with pytest.raises(Boom):
        house.commit(record_for(new, key="k2"), new, {"verdict": "pass", "n": 2})
    assert _snapshot(house.root) == before
    assert house.state("canary-cu124", "k1")[0] == "built" and house.verify(house.record("canary-cu124"))  # type: ignore[arg-type]


def test_a_wheel_that_changes_while_copied_is_not_recorded(
    house: Wheelhouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = built(tmp_path)
    rec = record_for(wheel, sha256="0" * 64)
    with pytest.raises(ConfigError, match="changed while being copied"):
        house.commit(rec, wheel)
    assert house.record("canary-cu124") is None and not (house.root / wheel.name).exists()


def test_unreadable_manifest(house: Wheelhouse) -> None:
    house.root.mkdir()
    house.path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON") as e:
        house.records()
    assert e.value.fix and "rebuild" in e.value.fix
    house.path.write_text('{"schema": 99, "records": {}}')
    with pytest.raises(ConfigError, match="has schema 99; this pipeline reads 1"):
        house.records()


def test_unknown_record_fields_are_ignored_for_forward_compatibility(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    house.commit(record_for(wheel), wheel)
    data = json.loads(house.path.read_text())
    data["records"]["canary-cu124"]["added_by_a_later_version"] = 1
    house.path.write_text(json.dumps(data))
    assert house.record("canary-cu124") == record_for(wheel)


def test_untracked_wheels_are_listed(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    house.commit(record_for(wheel), wheel)
    stray = house.root / "stray-1.0-py3-none-any.whl"
    stray.write_bytes(b"")
    assert house.untracked() == [stray]


def test_update_gate(house: Wheelhouse, tmp_path: Path) -> None:
    wheel = built(tmp_path)
    house.commit(record_for(wheel), wheel, {"verdict": "pass"})
    house.update_gate("canary-cu124", {"verdict": "fail"}, {"verdict": "fail", "why": "x"})
    assert house.record("canary-cu124").gate == {"verdict": "fail"}  # type: ignore[union-attr]
    assert json.loads((house.reports / f"{wheel.name}.abi.json").read_text())["why"] == "x"
    with pytest.raises(ConfigError, match="No record for target nope"):
        house.update_gate("nope", {}, {})
