"""A base image made from Debian's archive with debootstrap, for hosts that cannot pull one (CI, closed networks).

    python -m image base [--suite bookworm] [--repository steadydancer-base] [--mirror URL]

The image is tagged by a content key of what goes into it (suite, variant, mirror, extra packages, architecture), so
an existing one is reused. The root filesystem is cached as a tarball under that key, so importing it again needs no
debootstrap run. Debian 12's system Python is 3.11, which makes it a stand-in for the Ubuntu 22.04 default base.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from wheels import log
from wheels.errors import ImageError
from wheels.options import parse_args
from wheels.util import canonical_json, run, sha256_text

from .config import REPO_ROOT
from .docker import Docker

SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def debian_mirror(text: str, suite: str) -> str | None:
    """The first URI of a deb822 stanza serving ``suite`` (e.g. /etc/apt/sources.list.d/debian.sources)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0].rstrip("/")
    return None


def host_mirror(suite: str, sources: Path = SOURCES) -> str:
    try:
        return debian_mirror(sources.read_text(), suite) or FALLBACK_MIRROR
    except OSError:
        return FALLBACK_MIRROR


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = FALLBACK_MIRROR
    include: tuple[str, ...] = ()
    repository: str = "steadydancer-base"

    @property
    def key(self) -> str:
        data = {
            "suite": self.suite,
            "variant": self.variant,
            "mirror": self.mirror,
            "include": sorted(self.include),
            "arch": platform.machine(),
            "layout": 1,  # bump when the way the root filesystem is prepared changes
        }
        return sha256_text(canonical_json(data))[:16]

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.suite}-{self.key}"


def rootfs_tarball(spec: BaseSpec, cache_dir: Path) -> Path:
    """debootstrap into a temporary folder, trim it, tar it: cached by the spec's key."""
    tarball = cache_dir / "bases" / f"{spec.suite}-{spec.key}.tar"
    if tarball.exists():
        return tarball
    if not shutil.which("debootstrap"):
        raise ImageError("debootstrap is not installed", fix="apt-get install debootstrap (CI: .ci/run installs it)")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root", fix="run as root, or give a pullable --base-image instead")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"debootstrap-{spec.suite}-", dir=tarball.parent))
    try:
        cmd = ["debootstrap", f"--variant={spec.variant}"]
        if spec.include:
            cmd.append("--include=" + ",".join(spec.include))
        cmd += [spec.suite, str(root), spec.mirror]
        with log.step(f"debootstrap {spec.variant} {spec.suite} from {spec.mirror}"):
            run(cmd, error=ImageError, what="debootstrap", fix="check that the Debian mirror is reachable")
        # What an image does not need: downloaded packages and the package lists (apt-get update refetches them).
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log"):
            for path in root.glob(pattern):
                if path.is_file():
                    path.unlink()
        (root / "etc" / "apt" / "sources.list").write_text(f"deb {spec.mirror} {spec.suite} main\n")
        tmp = tarball.with_suffix(".tar.part")
        with tmp.open("wb") as out:
            subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=out, check=True)
        tmp.rename(tarball)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tarball


def ensure_base(spec: BaseSpec, cache_dir: Path, docker: Docker) -> tuple[str, bool]:
    """(tag, created): an existing image with the spec's tag is reused, else imported from the (cached) tarball."""
    if docker.exists(spec.tag):
        return spec.tag, False
    tarball = rootfs_tarball(spec, cache_dir)
    with log.step(f"Importing {tarball.name} as {spec.tag}"):
        run(
            [
                docker.binary,
                "import",
                "--change",
                f"ENV PATH={PATH}",
                "--change",
                'CMD ["/bin/bash"]',
                tarball,
                spec.tag,
            ],
            error=ImageError,
            what="docker import",
        )
    return spec.tag, True


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m image base", description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--variant", default="minbase")
    parser.add_argument("--mirror", help="Debian mirror (default: the host's, from /etc/apt/sources.list.d)")
    parser.add_argument("--include", action="append", default=[], help="extra packages")
    parser.add_argument("--repository", default="steadydancer-base")
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache" / "image")
    args = parse_args(argv, parser)
    spec = BaseSpec(
        suite=args.suite,
        variant=args.variant,
        mirror=args.mirror or host_mirror(args.suite),
        include=tuple(args.include),
        repository=args.repository,
    )
    docker = Docker(os.environ.get("DOCKER") or "/usr/bin/docker")
    docker.check()
    tag, created = ensure_base(spec, args.cache_dir, docker)
    log.info(f"{'created' if created else 'reusing'} {tag}")
    print(tag, file=sys.stdout)
    return 0
