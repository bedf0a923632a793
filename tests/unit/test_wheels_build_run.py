"""Running a build: failure explanations, out-of-memory detection and retry, interruption, compiler environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from spine_fakes import fake_cuda_home, make_wheel, record_for, write_program

from wheels import build
from wheels.build import _OOM_PATTERNS, ccache_stats, error_excerpt, explain_build_failure, run_build
from wheels.envs import PythonEnv
from wheels.errors import BuildError, OutOfMemoryError
from wheels.jobs import GIB, JobPlan
from wheels.manifest import Wheelhouse
from wheels.options import REPO_ROOT, resolve
from wheels.progress import NinjaProgress

# --- reading build logs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log", "why"),
    [
        (
            "RuntimeError:\nThe detected CUDA version (13.0) mismatches the version that was used to compile\n"
            "PyTorch (12.4). Please make sure to use the same CUDA versions.",
            "nvcc is CUDA 13.0 but torch was built with CUDA 12.4: set CUDA_HOME to a matching toolkit",
        ),
        (
            "#error -- unsupported GNU version! gcc versions later than 13 are not supported!",
            "the host compiler is newer than this nvcc supports: use an older g++ or newer CUDA",
        ),
        (
            "ModuleNotFoundError: No module named 'pkg_resources'",
            "this setup.py needs setuptools<81 (constraints.txt pins it)",
        ),
        (
            "OSError: CUDA_HOME environment variable is not set. Please set it to your CUDA install root.",
            "no CUDA toolkit was found: set CUDA_HOME",
        ),
        (
            "x.cu:1:10: fatal error: cusparse.h: No such file or directory",
            "a header is missing from the toolkit: cusparse.h",
        ),
        ("error: something nobody has seen before", None),
    ],
)
def test_explain_build_failure(log: str, why: str | None) -> None:
    assert explain_build_failure("noise\n" + log + "\nmore noise") == why


def test_error_excerpt_prefers_the_compilers_own_errors() -> None:
    log = "\n".join(
        ["[1/3] c++ ..."]
        + [f"warning {i}" for i in range(100)]
        + [
            "FAILED: build/x.o",
            'csrc/x.cu(12): error: identifier "foo" is undefined',
            "Traceback (most recent call last): error",
            "subprocess.CalledProcessError: ...",
        ]
    )
    assert error_excerpt(log).splitlines() == [
        "FAILED: build/x.o",
        'csrc/x.cu(12): error: identifier "foo" is undefined',
    ]
    assert error_excerpt("a\nb\nc", limit=2) == "b\nc"  # no error lines: the end of the log
    assert len(error_excerpt("error: " + "x" * 1000)) == 400


@pytest.mark.parametrize(
    "line",
    [
        "c++: fatal error: Killed signal terminated program cc1plus",
        "nvcc error   : 'cicc' died due to signal 9 (Kill signal)",
        "nvcc error   : 'ptxas' died due to signal 9",
        "virtual memory exhausted: Cannot allocate memory",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "cc1plus: out of memory allocating 65536 bytes after a total of 4194304000 bytes",
    ],
)
def test_oom_patterns_match_what_compilers_print(line: str) -> None:
    assert _OOM_PATTERNS.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "warning: variable 'x' set but not used",
        'error: identifier "killed" is undefined',
        "[3/9] nvcc -c memory.cu",
        "ninja: build stopped: subcommand failed.",
        "Memory usage: 1.2 GB",
    ],
)
def test_oom_patterns_ignore_ordinary_failures(line: str) -> None:
    assert not _OOM_PATTERNS.search(line)


def test_ccache_stats_of_one_build(tmp_path: Path) -> None:
    fake = write_program(
        tmp_path / "ccache",
        """\
        [ "$1" = --print-log-stats ] || exit 2
        printf 'direct_cache_hit\\t3\\npreprocessed_cache_hit\\t1\\ncache_miss\\t4\\nlocal_storage_write\\t4\\n'
        """,
    )
    log = tmp_path / "stats.log"
    assert ccache_stats(fake, log) is None  # no log: ccache never ran
    log.write_text("")
    assert ccache_stats(fake, log) == {"hits": 4, "misses": 4, "hit_rate": 0.5}
    empty = write_program(tmp_path / "empty-ccache", "true\n")
    assert ccache_stats(empty, log) == {"hits": 0, "misses": 0, "hit_rate": 0.0}


# --- run_build: the process tree, its memory, its output --------------------------------------------------------------


def _run(tmp_path: Path, script: str, clock: Callable[[], float] = time.monotonic) -> tuple[int, int, int, bool, Path]:
    log = tmp_path / "build.log"
    progress = NinjaProgress("test", clock=clock, interval=1e9)
    rc, tree, proc, oom = run_build(
        ["/bin/sh", "-c", textwrap.dedent(script)], {"PATH": os.defpath}, tmp_path, log, progress
    )
    return rc, tree, proc, oom, log


def test_run_build_tees_output_and_measures_memory(tmp_path: Path) -> None:
    rc, tree, proc, oom, log = _run(
        tmp_path,
        f"""\
        echo '[1/2] compiling'
        {sys.executable} -c "b = bytearray(200 * 2**20); import time; time.sleep(1.5)"
        echo '[2/2] linking'
        """,
    )
    assert (rc, oom) == (0, False)
    assert log.read_text() == "[1/2] compiling\n[2/2] linking\n"
    assert 200 * 2**20 < proc <= tree < 2 * GIB  # the 200 MiB child was seen, in a tree that holds it


def test_run_build_reports_a_failure_without_calling_it_oom(tmp_path: Path) -> None:
    rc, _, _, oom, _ = _run(tmp_path, "echo 'x.cu(1): error: bad'; exit 1\n")
    assert (rc, oom) == (1, False)


def test_run_build_recognises_an_oom_kill_by_output_or_signal(tmp_path: Path) -> None:
    rc, _, _, oom, _ = _run(tmp_path, "echo 'c++: fatal error: Killed signal terminated program cc1plus'; exit 1\n")
    assert (rc, oom) == (1, True)
    rc, _, _, oom, _ = _run(tmp_path, "kill -9 $$\n")  # the kernel's OOM killer took the build driver itself
    assert (rc, oom) == (-9, True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


def _wait_for(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text().strip()


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """pids this test started (through its fakes) and must not leave running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_interrupt_stops_the_whole_compiler_tree(tmp_path: Path, reap: list[int]) -> None:
    pidfile = tmp_path / "pid"

    class Interrupting(NinjaProgress):
        def feed(self, line: str) -> str | None:
            if line.startswith("[1/"):
                raise KeyboardInterrupt
            return None

    with pytest.raises(KeyboardInterrupt):
        run_build(
            ["/bin/sh", "-c", f"echo $$ > {pidfile}; echo '[1/9] c++'; exec sleep 60"],
            {"PATH": os.defpath},
            tmp_path,
            tmp_path / "log",
            Interrupting("t"),
        )
    pid = int(_wait_for(pidfile))
    reap.append(pid)
    assert not _alive(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_build_driver_takes_its_compilers_with_it(tmp_path: Path, reap: list[int], sig: int) -> None:
    """`kill <pid>` of a build (a CI timeout, a closed terminal) must not leave compilers running in their own
    session."""
    pidfile = tmp_path / "pid"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""\
            import os
            from pathlib import Path
            from wheels.build import run_build
            from wheels.progress import NinjaProgress
            run_build(["/bin/sh", "-c", "echo $$ > {pidfile}; exec sleep 60"], dict(os.environ), Path("{tmp_path}"),
                      Path("{tmp_path}/log"), NinjaProgress("t"))
            """),
        ],
        cwd=REPO_ROOT,
    )
    try:
        compiler = int(_wait_for(pidfile))
        reap.append(compiler)
        time.sleep(0.3)  # let the driver reach its wait
        driver.send_signal(sig)
        driver.wait(timeout=20)
        deadline = time.monotonic() + 10
        while _alive(compiler) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(compiler), "the compiler outlived its build driver"
        assert driver.returncode != 0
    finally:
        driver.kill()
        driver.wait()


# --- the pipeline around a fake build ---------------------------------------------------------------------------------

FAKE_PYTHON = """\
if [ "$1" = "-c" ]; then  # the torch probe
  printf '%s%s\n' '{"python": "3.11", "python_tag": "cp311", "version": "2.5.1+cu124", "cuda": "12.4",' \
    ' "cxx11_abi": false, "lib": "/x"}'
  exit 0
fi
# -m build --wheel --outdir DIR [--no-isolation] SRC
echo "$MAX_JOBS $NVCC_THREADS" >> "$FAKE_BUILD_LOG"
case "$FAKE_BUILD" in
  oom)  echo "[1/2] c++ -c binding.cpp"; echo "c++: fatal error: Killed signal terminated program cc1plus"; exit 1 ;;
  fail) echo "[1/2] c++ -c binding.cpp"; echo "ModuleNotFoundError: No module named 'pkg_resources'"; exit 1 ;;
  hang) mkdir -p "$5"; printf 'PK half a wheel' > "$5/canary-0.1.0-cp311-cp311-linux_x86_64.whl"
        echo $$ > "$FAKE_PIDFILE"; echo "[1/2] c++ -c binding.cpp"; exec sleep 60 ;;
esac
"""


@pytest.fixture
def fake_pipeline(
    tmp_path: Path, matrix: Callable[..., Path], fake_cxx: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], tuple[build.Pipeline, build.Context, Path]]:
    """A pipeline whose toolkit, build environment and build are fakes; machine: 4 cores, 16 GiB free."""

    def make(mode: str) -> tuple[build.Pipeline, build.Context, Path]:
        env_dir = tmp_path / "env"
        write_program(env_dir / "bin" / "python", FAKE_PYTHON)
        cuda = fake_cuda_home(tmp_path / "cuda", "12.4.131")
        env = {
            "PATH": os.defpath,
            "CXX": str(fake_cxx),
            "CUDA_HOME": str(cuda),
            "FAKE_BUILD": mode,
            "FAKE_BUILD_LOG": str(tmp_path / "attempts"),
            "FAKE_PIDFILE": str(tmp_path / "pid"),
        }
        opts = resolve(
            [
                "--matrix",
                str(matrix()),
                "--wheelhouse",
                str(tmp_path / "wh"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "canary-cu124",
            ],
            env,
        )
        monkeypatch.setattr(build, "cached_env", lambda *a, **k: PythonEnv(env_dir))
        monkeypatch.setattr(build, "cpu_count", lambda: 4)
        monkeypatch.setattr(build, "available_memory_bytes", lambda: 16 * GIB)
        pipeline = build.Pipeline(opts, env)
        pipeline.toolchains.recipes = {}
        pipeline.toolchains.system_homes = ()
        return pipeline, pipeline.resolve(opts.selected_targets()[0]), tmp_path

    return make


def test_oom_kills_are_retried_with_fewer_jobs_then_reported(fake_pipeline) -> None:  # noqa: ANN001
    pipeline, ctx, tmp = fake_pipeline("oom")
    with pytest.raises(OutOfMemoryError) as e:
        pipeline.build_one(ctx)
    assert (tmp / "attempts").read_text().splitlines() == ["4 1", "2 1", "1 1"]
    assert "killed for memory even with one job" in e.value.what
    assert e.value.fix and "objects already compiled are kept" in e.value.fix
    tree = tmp / "cache" / "build" / f"canary-cu124-{ctx.key[:16]}"  # type: ignore[index]
    assert (tree / "src" / "canary" / "csrc" / "saxpy.cu").exists() and (tree / "build-3.log").exists()
    assert not (tmp / "wh").exists()


def test_a_failed_build_explains_itself_and_keeps_the_tree(fake_pipeline) -> None:  # noqa: ANN001
    pipeline, ctx, tmp = fake_pipeline("fail")
    with pytest.raises(BuildError) as e:
        pipeline.build_one(ctx)
    err = e.value
    assert "the build failed (exit 1)" in err.what and "No module named 'pkg_resources'" in err.what
    assert err.why == "this setup.py needs setuptools<81 (constraints.txt pins it)"
    assert err.fix and "build-1.log" in err.fix and "a rerun resumes" in err.fix
    assert (tmp / "attempts").read_text().splitlines() == ["4 1"]  # not an OOM: no retry
    assert not (tmp / "wh").exists()


def test_an_interrupted_build_leaves_no_wheel_and_no_record(
    fake_pipeline,
    reap: list[int],
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    pipeline, ctx, tmp = fake_pipeline("hang")
    # An earlier build of the target is recorded: it must survive untouched.

    old = make_wheel(tmp / "old")
    house = Wheelhouse(tmp / "wh")
    house.commit(record_for(old, key="old-key"), old)
    before = {p.name: p.read_bytes() for p in (tmp / "wh").iterdir() if p.is_file()}

    def interrupt(self: NinjaProgress, line: str) -> None:
        if line.startswith("[1/"):
            raise KeyboardInterrupt  # Ctrl-C while the compiler runs

    monkeypatch.setattr(NinjaProgress, "feed", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pipeline.build_one(ctx)
    compiler = int(_wait_for(tmp / "pid"))
    reap.append(compiler)
    assert not _alive(compiler)
    assert {p.name: p.read_bytes() for p in (tmp / "wh").iterdir() if p.is_file()} == before
    assert house.records()["canary-cu124"].cache_key == "old-key"
    half = list((tmp / "cache" / "build").rglob("*.whl"))
    assert [p.name for p in half] == ["canary-0.1.0-cp311-cp311-linux_x86_64.whl"]  # only in the build tree's staging


def test_the_compile_environment(fake_pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    pipeline, ctx, tmp = fake_pipeline("oom")
    env_dir = tmp / "env"
    (env_dir / "bin" / "ccache").write_text("")
    toolchain = pipeline.toolchains.get("12.4")
    tree = tmp / "tree"
    out = pipeline._compile_env(ctx, PythonEnv(env_dir), toolchain, JobPlan(3, 2, "test"), "cu124torch2.5", tree)
    assert out["CUDA_HOME"] == str(toolchain.cuda_home) and out["PATH"].startswith(f"{toolchain.cuda_home}/bin:")
    assert (out["TORCH_CUDA_ARCH_LIST"], out["MAX_JOBS"], out["NVCC_THREADS"]) == ("8.0;9.0", "3", "2")
    assert out["VIRTUAL_ENV"] == str(env_dir)
    assert (
        out["CXX"] == str(tree / "ccache-bin" / "c++")
        and (tree / "ccache-bin" / "c++").resolve() == env_dir / "bin" / "ccache"
    )
    assert out["PYTORCH_NVCC"] == f"{env_dir / 'bin' / 'ccache'} {toolchain.cuda_home / 'bin' / 'nvcc'}"
    assert out["CCACHE_DIR"] == str(tmp / "cache" / "ccache")
    assert out["CCACHE_BASEDIR"] == str(tmp / "cache" / "build")  # build trees move between keys; objects still hit
    assert "include_file_ctime" in out["CCACHE_SLOPPINESS"].split(",")
    assert out["FAKE_BUILD"] == "oom"  # the caller's environment passes through


def test_a_resumed_tree_compiles_through_the_current_environments_ccache(fake_pipeline, tmp_path: Path) -> None:  # noqa: ANN001
    """Seen in a real mmcv build: a tree from an earlier run linked c++ to the ccache of an environment that was
    deleted since, and the resumed compile failed with exit 127."""
    pipeline, ctx, tmp = fake_pipeline("oom")
    toolchain = pipeline.toolchains.get("12.4")
    tree = tmp / "tree"
    for name in ("old-env", "new-env"):
        (tmp / name / "bin").mkdir(parents=True)
        (tmp / name / "bin" / "ccache").write_text("")
    pipeline._compile_env(ctx, PythonEnv(tmp / "old-env"), toolchain, JobPlan(1, 1, "test"), "cu124torch2.5", tree)
    shutil.rmtree(tmp / "old-env")
    pipeline._compile_env(ctx, PythonEnv(tmp / "new-env"), toolchain, JobPlan(1, 1, "test"), "cu124torch2.5", tree)
    for name in ("c++", "g++"):
        assert (tree / "ccache-bin" / name).resolve() == tmp / "new-env" / "bin" / "ccache"
    assert sorted(p.name for p in (tree / "ccache-bin").iterdir()) == ["c++", "g++"]
