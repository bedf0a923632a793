"""`python -m wheels abi`: settings, and what each wheel is checked against (no environments are made here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wheels.abi import cli
from wheels.errors import ConfigError, GateError
from wheels.manifest import Record, Wheelhouse
from wheels.options import DEFAULT_MATRIX

from spine_fakes import record_for

CANARY = "canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl"


def touch(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"PK")
    return path


def opts(tmp_path: Path, *argv: str | Path, env: dict[str, str] | None = None) -> cli.AbiOptions:
    return cli.resolve([str(a) for a in argv], env or {}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--torh", "cu124"], 'Perhaps you meant "--torch"'),
        (["--torch", "cu125"], 'Unknown torch build "cu125"'),
        (["--torch", "system", "--python", "3.11"], "--python does not go with --torch system"),
        (["--python", "311"], 'Bad --python "311"'),
        (["--base", "ubuntu-2404"], 'Perhaps you meant "ubuntu-24.04"'),
        (["--cuda-archs", "sm_90"], 'Bad CUDA arch "sm_90"'),
        (["nothere.whl"], "does not exist"),
        (["notawheel.tar.gz"], "is not a wheel file"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        opts(tmp_path, *argv)


def test_environment_settings(tmp_path: Path) -> None:
    got = opts(tmp_path, env={"WHEELS_IMAGE_BASE": "debian-12", "WHEELS_CUDA_ARCHS": "9.0", "WHEELHOUSE": "out"})
    assert (got.base, got.cuda_archs, got.wheelhouse) == ("debian-12", ("9.0",), tmp_path / "out")
    with pytest.raises(ConfigError, match="WHEELS_IMAGE_BAS"):
        opts(tmp_path, env={"WHEELS_IMAGE_BAS": "debian-12"})  # a typo is an error, not ignored


def test_a_known_package_is_checked_against_what_its_label_says(tmp_path: Path) -> None:
    wheel = touch(tmp_path / "dist", CANARY)
    expect = cli.expectation_for_file(wheel, opts(tmp_path, wheel))
    assert expect.torch.name == "cu124"  # label cu124torch2.5 -> the matrix's torch 2.5.1 CUDA 12.4 build
    assert expect.python == "3.11"
    assert expect.cuda_archs == ("8.0", "9.0")  # from the matrix target of that package and torch build
    assert expect.extension_modules == ("canary._C",)  # from the package's recipe
    assert (expect.package, expect.version) == ("canary", "0.1.0")


def test_an_unknown_package_discovers_its_modules(tmp_path: Path) -> None:
    wheel = touch(tmp_path, "abiprobe-0.1.0+cu124torch2.5-cp311-cp311-linux_x86_64.whl")
    expect = cli.expectation_for_file(wheel, opts(tmp_path, wheel))
    assert (expect.torch.name, expect.cuda_archs, expect.extension_modules) == ("cu124", (), ())
    over = cli._apply_overrides(expect, opts(tmp_path, wheel, "--cuda-archs", "8.0;9.0+PTX", "--torch", "system"))
    assert (over.torch.name, over.python, over.cuda_archs) == ("system", "system", ("8.0", "9.0+PTX"))


def test_a_label_no_build_matches_asks_for_torch(tmp_path: Path) -> None:
    wheel = touch(tmp_path, "abiprobe-0.1.0+cu128torch2.7-cp311-cp311-linux_x86_64.whl")
    with pytest.raises(ConfigError, match="built for torch 2.7 with CUDA 12.8"):
        cli.expectation_for_file(wheel, opts(tmp_path, wheel))
    unlabelled = touch(tmp_path, "abiprobe-0.1.0-cp311-cp311-linux_x86_64.whl")
    with pytest.raises(ConfigError, match="pass --torch"):
        cli.expectation_for_file(unlabelled, opts(tmp_path, unlabelled))
    assert cli.expectation_for_file(unlabelled, opts(tmp_path, unlabelled, "--torch", "cu121")).torch.name == "cu121"


def test_torch_builds_no_target_uses_can_be_named(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(
        DEFAULT_MATRIX.read_text()
        + '\n[torch.cu124-next]\nversion = "2.6.0"\ncuda = "12.4"\nindex-url = "https://pypi.org/simple"\n'
    )
    got = opts(tmp_path, "--matrix", matrix, "--torch", "cu124-next")
    assert got.torch_builds["cu124-next"].version == "2.6.0"


def record(wheel: Path, target: str = "canary-cu124", archs: tuple[str, ...] = ("9.0",)) -> Record:
    """A record of ``wheel`` whose sha256 and size match no real file (what a damaged wheel looks like)."""
    return record_for(
        wheel, target, key="k", sha256="0" * 64, size=2, platform_tag="manylinux_2_34_x86_64",
        cuda_archs=list(archs), toolchain={}, build={}, gate={}, created="now",
    )  # fmt: skip


def write_house(root: Path, *records: Record) -> Wheelhouse:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"schema": 1, "records": {r.target: r.to_dict() for r in records}}))
    return Wheelhouse(root)


def test_recorded_wheels_are_checked_against_their_target(tmp_path: Path) -> None:
    house_dir = tmp_path / "wheelhouse"
    wheel = touch(house_dir, CANARY)
    house = write_house(house_dir, record(wheel))
    [job] = cli.plan_jobs(opts(tmp_path), house)
    assert job.record is not None and job.wheel == wheel
    assert job.expect.torch.name == "cu124" and job.expect.python == "3.11"
    assert job.expect.cuda_archs == ("9.0",)  # what the record says it was built to carry
    assert job.report_path == house_dir / "reports" / f"{CANARY}.abi.json"


def test_an_override_never_touches_the_record(tmp_path: Path) -> None:
    house_dir = tmp_path / "wheelhouse"
    wheel = touch(house_dir, CANARY)
    house = write_house(house_dir, record(wheel))
    [job] = cli.plan_jobs(opts(tmp_path, "--torch", "cu121"), house)
    assert job.record is None
    assert job.expect.torch.name == "cu121"
    assert job.report_path == house_dir / "reports" / f"{CANARY}.abi.cu121.json"
    [named] = cli.plan_jobs(opts(tmp_path, wheel), house)  # named on the command line, no override: its record
    assert named.record is not None
    [archs] = cli.plan_jobs(opts(tmp_path, "--cuda-archs", "8.0"), house)
    assert archs.record is None
    assert archs.report_path == house_dir / "reports" / f"{CANARY}.abi.override.json"


def test_a_wheel_outside_the_wheelhouse_gets_its_report_beside_it(tmp_path: Path) -> None:
    house = write_house(tmp_path / "wheelhouse")
    wheel = touch(tmp_path / "dist", CANARY)
    [job] = cli.plan_jobs(opts(tmp_path, wheel), house)
    assert job.record is None
    assert job.report_path == tmp_path / "dist" / "reports" / f"{CANARY}.abi.json"
    [elsewhere] = cli.plan_jobs(opts(tmp_path, wheel, "--report-dir", tmp_path / "r"), house)
    assert elsewhere.report_path == tmp_path / "r" / f"{CANARY}.abi.json"


def test_an_empty_wheelhouse_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no recorded wheels: nothing to check"):
        cli.plan_jobs(opts(tmp_path), Wheelhouse(tmp_path / "empty"))


def test_a_damaged_recorded_wheel_fails_without_an_environment(tmp_path: Path) -> None:
    house_dir = tmp_path / "wheelhouse"
    wheel = touch(house_dir, CANARY)
    house = write_house(house_dir, record(wheel))
    with pytest.raises(GateError, match="failed the ABI gate"):
        cli.main(opts(tmp_path, "--wheelhouse", house_dir))
    gate = house.records()["canary-cu124"].gate
    assert gate["verdict"] == "fail"
    report = json.loads((house_dir / gate["report"]).read_text())
    assert report["checks"][0]["summary"] == f"{CANARY} does not match its record's sha256"
