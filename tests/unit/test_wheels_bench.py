"""The benchmark's bookkeeping: suites registry, the table it appends, the matrix it writes for its source copy."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from wheels import bench
from wheels.bench import canary
from wheels.bench.results import MARKDOWN_HEADER, Check, Context, Measurement, SuiteResult, append_run, new_run
from wheels.bench.steps import Workspace
from wheels.errors import BuildError, ConfigError
from wheels.options import load_matrix, resolve

MACHINE = {
    "cores": 2,
    "ram_bytes": 24 * 2**30,
    "cpu": "Test CPU",
    "kernel": "6.1",
    "python": "3.11.7",
    "load_average": [1.5, 1.0, 0.5],
}


def a_run(matrix: Path, suite: str = "canary", noop: float = 3.2) -> dict:
    ctx = Context(suite=suite, options=resolve(["--matrix", str(matrix)], {}), env={}, machine=MACHINE)
    result = SuiteResult(
        measurements=[
            Measurement(
                "cold: empty compiler cache",
                "canary-cu124",
                "nox -s wheels -- canary-cu124",
                75.04,
                peak_rss_bytes=int(1.5 * 2**30),
                jobs=2,
                wheel_size=2_662_990,
                sha256="e79a8e2b" + "0" * 56,
                cache={"hits": 0, "misses": 2, "hit_rate": 0.0},
                built=True,
            ),
            Measurement(
                "no-op rerun",
                "canary-cu124",
                "nox -s wheels -- canary-cu124",
                noop,
                peak_rss_bytes=80 * 2**20,
                wheel_size=2_662_990,
                sha256="e79a8e2b" + "0" * 56,
                built=False,
                notes="nothing built",
            ),
        ],
        checks=[Check("no-op rerun under 10 s", 10.0, noop)],
        notes=["cold step reused the cached toolkit and build environment"],
    )
    return new_run(ctx, result, now=datetime.datetime(2026, 11, 28, 14, 5, 7, tzinfo=datetime.UTC))


def test_a_run_renders_as_a_readable_table(matrix: Callable[..., Path], tmp_path: Path) -> None:
    md, js = append_run(a_run(matrix()), tmp_path / "bench")
    text = md.read_text()
    assert text.startswith(MARKDOWN_HEADER)
    assert "## canary: 2026-11-28 14:05 UTC" in text
    assert "| date | machine | step | target | wall | peak RSS | jobs | wheel size | sha256 | compiler cache |" in text
    assert (
        "| 2026-11-28 14:05 UTC | 2 cores, 24.0 GiB | cold: empty compiler cache | canary-cu124 | 1m15s | 1.5 GiB "
        "| 2 | 2.7 MB | `e79a8e2b0000` | 0/2 hits (0%) |"
    ) in text
    assert "| no-op rerun | canary-cu124 | 3.2s | 80.0 MiB | - | 2.7 MB | `e79a8e2b0000` | - |" in text
    assert "- Target: no-op rerun under 10 s: **met** (3.2s)." in text
    assert "- no-op rerun: nothing built" in text
    data = json.loads(js.read_text())
    assert data["schema"] == 1 and len(data["runs"]) == 1
    run = data["runs"][0]
    assert run["machine"] == MACHINE and run["checks"][0]["met"] is True
    assert run["measurements"][0]["cache"] == {"hits": 0, "misses": 2, "hit_rate": 0.0}


def test_runs_and_suites_append(matrix: Callable[..., Path], tmp_path: Path) -> None:
    results = tmp_path / "bench"
    append_run(a_run(matrix()), results)
    append_run(a_run(matrix(), suite="mmcv", noop=12.0), results)
    text = (results / "results.md").read_text()
    assert text.count("# Benchmark results") == 1 and text.index("## canary") < text.index("## mmcv")
    assert "**MISSED** (12.0s)" in text
    assert [r["suite"] for r in json.loads((results / "results.json").read_text())["runs"]] == ["canary", "mmcv"]
    assert sorted(p.name for p in results.iterdir()) == ["results.json", "results.md"]


def test_unknown_suite_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match='Unknown bench suite "canery".*Perhaps you meant "canary"'):
        bench.main(["canery"], {})
    assert bench.main(["--list"], {}) == 0
    assert capsys.readouterr().out.startswith("canary ")
    assert set(bench.DEFAULT_SUITES) <= set(bench.SUITES)
    for name in bench.SUITES:
        assert callable(bench._suite(name))


def test_the_canary_matrix_for_the_source_copy_loads_as_the_real_target(tmp_path: Path) -> None:
    real = resolve([], {}).targets[canary.TARGET]
    path = tmp_path / "m.toml"
    path.write_text(canary._matrix_text(real, tmp_path / "copy"))
    _, targets = load_matrix(path, {})
    copy = targets[canary.TARGET]
    assert copy.source.location == str(tmp_path / "copy")
    for field in ("package", "version", "recipe", "torch", "python", "cuda_archs", "flavour"):
        assert getattr(copy, field) == getattr(real, field), field


def test_the_kernel_edit_is_code_not_a_comment() -> None:
    """A comment-only change would vanish in the preprocessor and hit the compiler cache: not a real edit."""
    edit = canary.KERNEL_EDIT.format(n=3)
    assert "__device__" in edit and "return v * 3.f;" in edit


def test_measure_a_step(tmp_path: Path) -> None:
    """The plumbing of one step: its log (any step name), wall time, memory, and whether it built a wheel."""
    wheelhouse, logs = tmp_path / "wh", tmp_path / "logs"
    wheelhouse.mkdir()
    logs.mkdir()
    record = {
        "created": "t1",
        "cache_key": "k1",
        "size": 10,
        "sha256": "ab" * 32,
        "build": {"jobs": 2, "compiler_cache": {"hits": 1, "misses": 1, "hit_rate": 0.5}},
    }
    manifest = {"schema": 1, "records": {canary.TARGET: record}}
    write = f"echo built; printf '%s' '{json.dumps(manifest)}' > {wheelhouse}/manifest.json"
    built, out = canary._measure("cold: a/b", ["sh", "-c", write], {"PATH": "/usr/bin:/bin"}, wheelhouse, logs)
    assert out == "built\n" and [p.name for p in logs.iterdir()] == ["1-cold-a-b.log"]
    assert built.built and (built.jobs, built.wheel_size, built.cache) == (2, 10, record["build"]["compiler_cache"])
    assert built.wall_seconds >= 0 and built.peak_rss_bytes is not None
    same, _ = canary._measure("no-op", ["true"], {"PATH": "/usr/bin:/bin"}, wheelhouse, logs)
    assert not same.built and same.jobs is None and same.cache is None and same.sha256 == "ab" * 32
    with pytest.raises(BuildError, match="failed \\(exit 3\\) in step 'broken'"):
        canary._measure("broken", ["sh", "-c", "exit 3"], {"PATH": "/usr/bin:/bin"}, wheelhouse, logs)


def test_a_workspace_links_the_shared_setup_and_says_what_was_missing(tmp_path: Path) -> None:
    shared = tmp_path / "pipeline-cache"
    (shared / "toolkits").mkdir(parents=True)
    (shared / "toolkits" / "cuda").write_text("")
    (shared / "envs").mkdir()  # present but empty: still to be set up
    work = tmp_path / "work"
    work.mkdir()
    space = Workspace.make(work, shared, ("toolkits", "envs", "downloads"))
    assert space.missing == ("envs", "downloads")
    assert sorted(p.name for p in space.cache.iterdir()) == ["downloads", "envs", "toolkits"]
    assert (space.cache / "toolkits" / "cuda").exists() and (shared / "downloads").is_dir()
    assert space.logs.is_dir() and not space.wheelhouse.exists()  # the pipeline makes the wheelhouse
