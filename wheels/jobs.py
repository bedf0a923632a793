"""Job planning: how many compile jobs and nvcc threads fit this machine's cores and memory.

Memory, not cores, limits CUDA builds: one flash-attn nvcc job peaks at 4-6 GB and one mmcv job at ~1.2-2.5 GB
(shared/BUILD-ENV.md). A job planned per core would be killed for memory on a 2-core / 24 GiB machine with no swap.
"""

from __future__ import annotations

import dataclasses

from . import log
from .errors import OutOfMemoryError

GIB = 1024**3
# Leave room for the OS, the build driver (ninja, python) and the page cache a linker needs.
RESERVE_BYTES = int(1.5 * GIB)
SAFETY = 0.9


@dataclasses.dataclass(frozen=True)
class JobPlan:
    jobs: int
    nvcc_threads: int
    reason: str

    def env(self) -> dict[str, str]:
        return {"MAX_JOBS": str(self.jobs), "NVCC_THREADS": str(self.nvcc_threads)}


def plan_jobs(
    *,
    cores: int,
    available_bytes: int,
    mem_per_job_gib: float,
    n_archs: int,
    max_jobs: int | None = None,
    nvcc_threads: int | None = None,
) -> JobPlan:
    """Plan parallelism. Explicit settings win, but never beyond what memory allows for at least one job.

    nvcc's ``--threads`` compiles a file's archs in parallel and multiplies that job's memory by about the same
    factor, so jobs x threads is bounded by cores and, with the per-job estimate, by memory.
    """
    per_job = mem_per_job_gib * GIB
    usable = max(0, int((available_bytes - RESERVE_BYTES) * SAFETY))
    by_memory = int(usable // per_job)
    if by_memory < 1:
        raise OutOfMemoryError(
            f"Not enough memory for even one compile job: {usable / GIB:.1f} GiB usable, "
            f"one job needs about {mem_per_job_gib:.1f} GiB",
            why="this recipe's compile units peak at that size (measured)",
            fix="free memory (stop other builds), use a machine with more RAM, or add swap",
        )
    if max_jobs is not None:
        jobs, reason = max_jobs, f"MAX_JOBS={max_jobs} as set"
    else:
        jobs = max(1, min(cores, by_memory))
        reason = f"{cores} cores; {by_memory} jobs fit in {usable / GIB:.1f} GiB at {mem_per_job_gib:.1f} GiB each"
    if nvcc_threads is not None:
        threads = nvcc_threads
        if threads > by_memory:  # one job at this many threads would already not fit
            reason += f"; NVCC_THREADS capped from {threads} to {by_memory} by memory"
            threads = by_memory
    else:  # cores left over after one per job go to nvcc threads, one per arch at most
        threads = max(1, min(n_archs, cores // max(1, jobs), by_memory // max(1, jobs)))
    if jobs * threads > by_memory:  # each nvcc thread holds about one job's memory
        capped = max(1, by_memory // threads)
        reason += f"; jobs capped from {jobs} to {capped} by memory"
        jobs = capped
    return JobPlan(jobs=jobs, nvcc_threads=threads, reason=reason)


def fewer_jobs(plan: JobPlan) -> JobPlan | None:
    """The plan to retry with after the build was killed for memory; None when already at one job, one thread."""
    if plan.nvcc_threads > 1:
        return JobPlan(plan.jobs, 1, f"retry after an out-of-memory kill: nvcc threads {plan.nvcc_threads} -> 1")
    if plan.jobs > 1:
        jobs = max(1, plan.jobs // 2)
        return JobPlan(jobs, 1, f"retry after an out-of-memory kill: jobs {plan.jobs} -> {jobs}")
    return None


def plan_after_oom(plan: JobPlan, tag: str, *, kept: str, where: str = "", peak_tree: int | None = None) -> JobPlan:
    """After an out-of-memory kill: the smaller plan to retry with (and say so), or an OutOfMemoryError when the plan
    is already at one job. ``kept``: what survives for the retry; ``where``: e.g. " in the container";
    ``peak_tree``: the build tree's peak memory, when measured."""
    smaller = fewer_jobs(plan)
    peak = f"{peak_tree / 2**30:.1f} GiB" if peak_tree is not None else None
    if smaller is None:
        raise OutOfMemoryError(
            f"{tag} the build was killed for memory{where} even with one job",
            why=f"peak memory of the build tree was {peak}" if peak else None,
            fix=f"use a machine with more RAM, or add swap; {kept}",
        )
    log.warn(f"{tag} killed for memory{f' at {peak}' if peak else ''}; {smaller.reason}; {kept}")
    return smaller
