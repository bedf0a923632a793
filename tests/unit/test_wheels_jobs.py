"""Job planning: memory, not cores, bounds CUDA builds; explicit settings are honoured up to what memory allows."""

from __future__ import annotations

import pytest

from wheels.errors import OutOfMemoryError
from wheels.jobs import GIB, JobPlan, fewer_jobs, plan_after_oom, plan_jobs


def plan(cores: int, gib: float, per_job: float, archs: int = 2, **kw: int | None) -> JobPlan:
    return plan_jobs(cores=cores, available_bytes=int(gib * GIB), mem_per_job_gib=per_job, n_archs=archs, **kw)


def test_cores_bound_when_memory_is_plenty() -> None:
    p = plan(cores=2, gib=24, per_job=1.5)
    assert (p.jobs, p.nvcc_threads) == (2, 1)
    assert "2 cores" in p.reason


def test_memory_bound_with_many_cores() -> None:
    # flash-attn: 6 GiB per job; (24 - 1.5) * 0.9 = 20.25 GiB usable -> 3 jobs, whatever the core count.
    p = plan(cores=16, gib=24, per_job=6.0)
    assert p.jobs == 3 and p.nvcc_threads == 1
    assert "3 jobs fit in 20.2 GiB" in p.reason


def test_jobs_times_threads_never_exceed_memory() -> None:
    for cores in (1, 2, 4, 8, 16, 64):
        for gib in (4, 8, 24, 64, 256):
            for per_job in (1.2, 2.5, 6.0):
                try:
                    p = plan(cores=cores, gib=gib, per_job=per_job, archs=4)
                except OutOfMemoryError:
                    continue
                assert p.jobs >= 1 and p.nvcc_threads >= 1
                assert p.jobs * p.nvcc_threads * per_job <= (gib - 1.5) * 0.9 + 1e-9, (cores, gib, per_job, p)
                assert p.jobs <= cores


def test_explicit_max_jobs_is_honoured_within_memory() -> None:
    p = plan(cores=2, gib=24, per_job=1.5, max_jobs=6)
    assert p.jobs == 6 and p.reason.startswith("MAX_JOBS=6 as set")


def test_explicit_max_jobs_is_capped_by_memory() -> None:
    # mmcv at 2.5 GiB per job in 8 GiB: (8 - 1.5) * 0.9 = 5.85 GiB -> 2 jobs, not the 8 asked for.
    p = plan(cores=16, gib=8, per_job=2.5, max_jobs=8)
    assert p.jobs == 2
    assert "capped from 8 to 2 by memory" in p.reason


def test_explicit_nvcc_threads_are_capped_by_memory() -> None:
    """Each nvcc thread holds about one job's memory: NVCC_THREADS=4 with room for one
    job must not plan four threads."""
    p = plan(cores=16, gib=14, per_job=6.0, nvcc_threads=4)  # (14 - 1.5) * 0.9 = 11.25 GiB: one 6 GiB job
    assert (p.jobs, p.nvcc_threads) == (1, 1)
    assert "NVCC_THREADS capped from 4 to 1 by memory" in p.reason


def test_explicit_settings_that_fit_are_kept() -> None:
    p = plan(cores=16, gib=128, per_job=6.0, max_jobs=4, nvcc_threads=2)
    assert (p.jobs, p.nvcc_threads) == (4, 2)


def test_not_enough_memory_for_one_job() -> None:
    with pytest.raises(OutOfMemoryError) as e:
        plan(cores=2, gib=6, per_job=6.0)  # 4.05 GiB usable
    err = e.value
    assert "Not enough memory for even one compile job: 4.0 GiB usable, one job needs about 6.0 GiB" in err.what
    assert err.fix and "more RAM" in err.fix and err.why
    assert err.exit_code == 8


def test_not_enough_memory_even_with_max_jobs_one() -> None:
    with pytest.raises(OutOfMemoryError):
        plan(cores=2, gib=1, per_job=1.2, max_jobs=1)


def test_fewer_jobs_after_an_oom_kill() -> None:
    p = JobPlan(jobs=4, nvcc_threads=2, reason="start")
    steps = []
    while (p := fewer_jobs(p)) is not None:  # type: ignore[assignment]
        steps.append((p.jobs, p.nvcc_threads))
        assert p.reason.startswith("retry after an out-of-memory kill")
    assert steps == [(4, 1), (2, 1), (1, 1)]  # threads first (cheapest to lose), then halve the jobs, down to one


def test_fewer_jobs_odd_counts_reach_one() -> None:
    assert fewer_jobs(JobPlan(3, 1, "")) == JobPlan(1, 1, "retry after an out-of-memory kill: jobs 3 -> 1")
    assert fewer_jobs(JobPlan(1, 1, "")) is None


def test_plan_environment() -> None:
    assert JobPlan(3, 2, "").env() == {"MAX_JOBS": "3", "NVCC_THREADS": "2"}


def test_plan_after_oom_says_what_it_retries_with_then_gives_up(capsys: pytest.CaptureFixture[str]) -> None:
    smaller = plan_after_oom(JobPlan(2, 1, ""), "[t]", kept="compiled objects are in the compiler cache",
                             where=" in the container")
    assert smaller == JobPlan(1, 1, "retry after an out-of-memory kill: jobs 2 -> 1")
    assert "[t] killed for memory; retry after an out-of-memory kill: jobs 2 -> 1" in capsys.readouterr().err
    with pytest.raises(OutOfMemoryError) as e:
        plan_after_oom(smaller, "[t]", kept="objects already compiled are kept", peak_tree=3 * 2**30)
    assert e.value.what == "[t] the build was killed for memory even with one job"
    assert e.value.why == "peak memory of the build tree was 3.0 GiB"
    assert e.value.fix == "use a machine with more RAM, or add swap; objects already compiled are kept"
