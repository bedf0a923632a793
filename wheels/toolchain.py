"""CUDA toolchains: find one whose nvcc matches a target's CUDA major.minor, or provision one into the cache.

Order of preference for CUDA X.Y:
  1. ``CUDA_HOME`` when its nvcc reports X.Y;
  2. a toolkit this pipeline provisioned earlier into ``<cache>/toolkits``;
  3. ``/usr/local/cuda`` or the ``nvcc`` on PATH when it reports X.Y;
  4. provisioning from ``wheels/toolkits.toml`` when X.Y is listed there (CUDA 12.4: NVIDIA's PyPI wheels + the
     compiler programs of Debian's nvidia-cuda-toolkit package, as measured in shared/BUILD-ENV.md);
  5. otherwise a :class:`ToolchainError` that names the CUDA_HOME needed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path

from . import log
from .errors import ToolchainError
from .util import canonical_json, download, run, sha256_text, uv_bin

TOOLKITS_FILE = Path(__file__).with_name("toolkits.toml")
DEB_PROGRAMS = ("cudafe++", "fatbinary", "nvlink", "bin2c", "cuobjdump", "nvprune", "nvdisasm", "cu++filt")
_NVCC_RE = re.compile(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)")


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cuda_home: Path
    cuda: str  # "12.4"
    nvcc_version: str  # "12.4.131"
    host_cxx: str  # first line of `c++ --version`
    origin: str  # "CUDA_HOME", "provisioned", "/usr/local/cuda", "PATH"
    recipe: str | None = None  # provisioning recipe id when this pipeline provisioned it

    def tool(self, name: str) -> Path:
        return self.cuda_home / "bin" / name

    def identity(self) -> dict[str, str]:
        """What goes into cache keys and records (never the path: the same compiler elsewhere is the same)."""
        out = {"nvcc": self.nvcc_version, "host_cxx": self.host_cxx}
        if self.recipe:
            out["toolkit_recipe"] = self.recipe
        return out

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env["CUDA_HOME"] = env["CUDA_PATH"] = str(self.cuda_home)
        env["PATH"] = f"{self.cuda_home / 'bin'}{os.pathsep}{base.get('PATH', os.defpath)}"
        return env


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a toolchain for one CUDA version would be obtained, known without provisioning anything."""

    cuda: str
    nvcc_version: str | None  # None: unavailable
    how: str  # human words: "CUDA_HOME=/x (nvcc 12.4.131)", "provision CUDA 12.4.131 into the cache", ...
    found: tuple[str, ...] = ()  # what was looked at and what it was, for the error message
    recipe: str | None = None  # provisioning recipe id, for toolkits this pipeline provisions

    def identity(self, host_cxx: str) -> dict[str, str]:
        """The cache-key view of the toolchain: the same before and after provisioning."""
        out = {"nvcc": self.nvcc_version or "", "host_cxx": host_cxx}
        if self.recipe:
            out["toolkit_recipe"] = self.recipe
        return out


def nvcc_version(nvcc: Path) -> tuple[str, str] | None:
    """("12.4", "12.4.131") from `nvcc --version`, or None when it does not run."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _NVCC_RE.search(out)
    return (match.group(1), match.group(2)) if match else None


def host_cxx_version(env: Mapping[str, str] | None = None) -> str:
    cxx = (env or os.environ).get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        raise ToolchainError(
            f"No C++ compiler: `{cxx} --version` does not run",
            fix="install one (Debian: apt-get install g++) or point CXX at it",
        ) from None
    return out.splitlines()[0].strip() if out else cxx


def load_toolkits(path: Path = TOOLKITS_FILE) -> dict[str, dict]:
    with path.open("rb") as f:
        return tomllib.load(f).get("cuda", {})


def debian_mirror(env: Mapping[str, str]) -> str:
    """DEBIAN_MIRROR, else the first URI in the machine's deb822 sources, else deb.debian.org."""
    if env.get("DEBIAN_MIRROR"):
        return env["DEBIAN_MIRROR"].rstrip("/")
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    try:
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                uri = line.split()[1]
                if "security" not in uri:
                    return uri.rstrip("/")
    except OSError:
        pass
    return "http://deb.debian.org/debian"


class Toolchains:
    """Finds and provisions toolchains for one cache folder. ``env`` is a Mapping: tests pass their own."""

    # Where a system-wide toolkit lives (step 3 of the module's order); tests point it at fakes.
    system_homes: tuple[Path, ...] = (Path("/usr/local/cuda"),)

    def __init__(self, cache_dir: Path, env: Mapping[str, str]) -> None:
        self.root = cache_dir / "toolkits"
        self.downloads = cache_dir / "downloads"
        self.env = env
        self.recipes = load_toolkits()
        self._host_cxx: str | None = None

    @property
    def host_cxx(self) -> str:
        if self._host_cxx is None:
            self._host_cxx = host_cxx_version(self.env)
        return self._host_cxx

    def recipe_id(self, cuda: str) -> str:
        """A short hash of a provisioning recipe: a changed pin is a different toolkit (and cache key)."""
        return sha256_text(canonical_json(self.recipes[cuda]))[:10]

    def provisioned_home(self, cuda: str) -> Path:
        return self.root / f"cuda-{self.recipes[cuda]['nvcc-version']}-{self.recipe_id(cuda)}"

    def _candidates(self) -> list[tuple[str, Path]]:
        out: list[tuple[str, Path]] = []
        if self.env.get("CUDA_HOME"):
            out.append(("CUDA_HOME", Path(self.env["CUDA_HOME"])))
        for cuda in self.recipes:  # only toolkits provisioned from the current recipes count
            home = self.provisioned_home(cuda)
            if (home / ".complete").exists():
                out.append(("provisioned", home))
        out += [(str(home), home) for home in self.system_homes]
        on_path = shutil.which("nvcc", path=self.env.get("PATH"))
        if on_path:
            out.append(("PATH", Path(on_path).resolve().parent.parent))
        return out

    def plan(self, cuda: str) -> Plan:
        found: list[str] = []
        for origin, home in self._candidates():
            version = nvcc_version(home / "bin" / "nvcc")
            if version is None:
                if origin == "CUDA_HOME":
                    found.append(f"CUDA_HOME={home} has no working bin/nvcc")
                continue
            found.append(f"{origin} {home}: CUDA {version[0]} (nvcc {version[1]})")
            if version[0] == cuda:
                recipe_id = self.recipe_id(cuda) if origin == "provisioned" else None
                return Plan(cuda, version[1], f"{origin} {home} (nvcc {version[1]})", tuple(found), recipe_id)
        recipe = self.recipes.get(cuda)
        if recipe:
            nvcc_full = recipe["nvcc-version"]
            return Plan(
                cuda, nvcc_full, f"provision CUDA {nvcc_full} into {self.root}", tuple(found), self.recipe_id(cuda)
            )
        return Plan(cuda, None, "unavailable", tuple(found))

    def unavailable_error(self, plan: Plan, targets: list[str], buildable: list[str]) -> ToolchainError:
        seen = "; ".join(plan.found) or "no nvcc at all"
        fix = (
            f"set CUDA_HOME to a CUDA {plan.cuda} toolkit (nvcc {plan.cuda}.x), e.g. from NVIDIA's cuda-toolkit-"
            f"{plan.cuda.replace('.', '-')} package or an nvidia/cuda:{plan.cuda}.x-devel container; no CUDA "
            f"{plan.cuda} compiler can be provisioned automatically"
        )
        if buildable:
            fix += f". Targets this machine can build now: {', '.join(buildable)}"
        return ToolchainError(
            f"No CUDA {plan.cuda} toolkit for {', '.join(targets)}",
            why=f"torch's CUDA and nvcc must agree in major.minor; found: {seen}",
            fix=fix,
        )

    def get(self, cuda: str) -> Toolchain:
        plan = self.plan(cuda)
        if plan.nvcc_version is None:
            raise self.unavailable_error(plan, [f"CUDA {cuda}"], [])
        for origin, home in self._candidates():
            version = nvcc_version(home / "bin" / "nvcc")
            if version and version[0] == cuda:
                return Toolchain(home, cuda, version[1], self.host_cxx, origin, plan.recipe)
        home = self.provision(cuda)
        return Toolchain(home, cuda, plan.nvcc_version, self.host_cxx, "provisioned", plan.recipe)

    # ---------------------------------------------------------------------------------------------------------------
    # Provisioning

    def provision(self, cuda: str) -> Path:
        from .util import file_lock

        recipe = self.recipes[cuda]
        home = self.provisioned_home(cuda)
        with file_lock(self.root / f".cuda-{cuda}.lock", f"the CUDA {cuda} toolkit"):
            if (home / ".complete").exists():
                return home
            with log.step(f"Provisioning a CUDA {recipe['nvcc-version']} toolkit into {home}"):
                self.root.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".cuda-{cuda}-"))
                try:
                    self._assemble(recipe, staging)
                    version = nvcc_version(staging / "bin" / "nvcc")
                    if version is None or version[1] != recipe["nvcc-version"]:
                        raise ToolchainError(
                            f"The provisioned toolkit's nvcc reports {version}, expected {recipe['nvcc-version']}"
                        )
                    self._smoke_compile(staging)
                    (staging / ".complete").write_text(recipe["nvcc-version"] + "\n")
                    if home.exists():
                        shutil.rmtree(home)
                    staging.rename(home)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        return home

    def _assemble(self, recipe: Mapping, dest: Path) -> None:
        mirror = debian_mirror(self.env)
        deb_name = recipe["deb-path"].rsplit("/", 1)[-1]
        deb = download(
            f"{mirror}/{recipe['deb-path']}",
            self.downloads / deb_name,
            recipe["deb-sha256"],
            what=f"Debian package {deb_name}",
        )
        debroot = dest / "deb"
        extract_deb(deb, debroot)
        pkgs = dest / "pkgs"
        run(
            [uv_bin(), "pip", "install", "--quiet", "--no-deps", "--python", sys.executable, "--target", pkgs,
             *recipe["wheels"]],
            error=ToolchainError,
            what="Installing NVIDIA's CUDA wheels for the toolkit",
            fix="check that PyPI (or UV_INDEX_URL) is reachable",
        )
        nvidia = pkgs / "nvidia"
        tk = debroot / "usr/lib/nvidia-cuda-toolkit"
        bin_ = dest / "bin"
        (bin_ / "crt").mkdir(parents=True)
        shutil.copy2(tk / "bin/nvcc", bin_ / "nvcc")  # a copy: nvcc reads nvcc.profile beside its resolved path
        for prog in DEB_PROGRAMS:
            shutil.copy2(debroot / "usr/bin" / prog, bin_ / prog)
        shutil.copy2(nvidia / "cuda_nvcc/bin/ptxas", bin_ / "ptxas")
        for stub in ("link.stub", "prelink.stub"):
            shutil.copy2(tk / "bin/crt" / stub, bin_ / "crt" / stub)
        (dest / "nvvm/bin").mkdir(parents=True)
        shutil.copy2(tk / "bin/cicc", dest / "nvvm/bin/cicc")
        for sub in ("libdevice", "lib64"):
            _relative_link(dest / "nvvm" / sub, nvidia / "cuda_nvcc/nvvm" / sub)
        (bin_ / "nvcc.profile").write_text(
            "TOP = $(_HERE_)/..\n"
            "NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice\n"
            "LD_LIBRARY_PATH += $(TOP)/lib64:\n"
            "PATH += $(TOP)/nvvm/bin:$(_HERE_):\n"
            'INCLUDES += "-I$(TOP)/include" $(_SPACE_)\n'
            'LIBRARIES =+ $(_SPACE_) "-L$(TOP)/lib64/stubs" "-L$(TOP)/lib64"\n'
            "CUDAFE_FLAGS +=\n"
            "PTXAS_FLAGS +=\n"
        )
        for prog in bin_.iterdir():
            if prog.is_file() and prog.suffix not in (".profile",):
                prog.chmod(0o755)
        include = dest / "include"
        include.mkdir()
        lib64 = dest / "lib64"
        lib64.mkdir()
        for pkg in sorted(nvidia.iterdir()):
            for entry in sorted((pkg / "include").glob("*")) if (pkg / "include").is_dir() else []:
                if entry.name in ("__init__.py", "__pycache__") or (include / entry.name).exists():
                    continue
                _relative_link(include / entry.name, entry)
            for lib in sorted((pkg / "lib").glob("lib*.so*")) if (pkg / "lib").is_dir() else []:
                if not (lib64 / lib.name).exists():
                    _relative_link(lib64 / lib.name, lib)
                unversioned = lib64 / (lib.name.split(".so")[0] + ".so")
                if not unversioned.exists():
                    _relative_link(unversioned, lib)
        shutil.rmtree(debroot / "usr/share", ignore_errors=True)
        shutil.rmtree(tk / "compute-sanitizer", ignore_errors=True)

    @staticmethod
    def _smoke_compile(home: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "smoke.cu"
            src.write_text("#include <cuda_runtime.h>\n__global__ void k(float* x) { x[threadIdx.x] *= 2.f; }\n")
            run(
                [home / "bin/nvcc", "-c", src, "-o", Path(tmp) / "smoke.o", "-gencode", "arch=compute_80,code=sm_80"],
                error=ToolchainError,
                what="Compiling a test kernel with the provisioned toolkit",
                fix="delete the toolkit folder and retry; report the output if it persists",
            )


def _relative_link(link: Path, target: Path) -> None:
    """Relative links, so the toolkit keeps working after its staging folder is renamed into place (or moved)."""
    link.symlink_to(os.path.relpath(target, link.parent))


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data archive into dest (like `dpkg -x`), with only Python: an ar archive of tarballs."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ToolchainError(f"{deb} is not a Debian package (no ar header)", fix="delete it and retry")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[offset + 60 : offset + 60 + size]
        if name.startswith("data.tar"):
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                tar.extractall(dest, filter="tar")
            return
        offset += 60 + size + (size % 2)
    raise ToolchainError(f"{deb} has no data archive", fix="delete it and retry")
