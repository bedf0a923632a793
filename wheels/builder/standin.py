"""A local stand-in for the manylinux base, for machines that cannot reach a registry (ours, and CI).

Debian bookworm (minbase, made with debootstrap from Debian's archive) with a compiler, Python 3.11 and its headers,
laid out the way cibuildwheel expects a manylinux image: ``/opt/python/cp311-cp311/bin/python`` (a venv over the
system Python) and ``/opt/python/cp39-cp39/bin/python``, the interpreter cibuildwheel runs its own small helpers with
(here the same Python 3.11). The builder image is then built on it from the same Dockerfile as on the real base.

Its glibc is 2.36 and its g++ 12, so wheels built in it are honestly tagged for that (auditwheel computes the tag
from the symbol versions the extension needs, manylinux_2_34 for the canary); the real manylinux_2_28 base gives
manylinux_2_28. The rootfs is cached as a tarball in the cache folder, so only the first use runs debootstrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .. import log
from ..errors import ImageError
from ..toolchain import debian_mirror
from ..util import canonical_json, file_lock, run, sha256_text
from .image import docker_client, image_labels, inspect_image

SUITE = "bookworm"
# A compiler for the host code, Python with its headers (extensions include Python.h) and venv for the layout.
PACKAGES = ("g++", "python3", "python3-dev", "python3-venv")
PYTHON_TAG = "cp311-cp311"
DEFAULT_TAG = "steadydancer-wheel-builder-base:standin-bookworm"
ROOTFS_LABEL = "org.steadydancer.wheels.standin-rootfs"
# docker import gives an image no environment; a base image normally sets PATH (the Dockerfile extends it).
IMPORT_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["/bin/bash"]')


def rootfs_key() -> str:
    spec = {"suite": SUITE, "variant": "minbase", "packages": PACKAGES, "python": PYTHON_TAG}
    return sha256_text(canonical_json(spec))[:16]


def ensure_standin_base(cache_dir: Path, env: Mapping[str, str], tag: str = DEFAULT_TAG) -> str:
    """The stand-in base as ``tag``: the present image when it was imported from the current rootfs recipe, else
    imported from the cached rootfs (made first when absent). Returns the image id."""
    docker = docker_client(env)
    present = inspect_image(docker, tag, env)
    key = rootfs_key()
    if present is not None and image_labels(present).get(ROOTFS_LABEL) == key:
        log.info(f"stand-in base {tag} ({present['Id'][7:19]}) is current; not imported again")
        return str(present["Id"])
    tarball = rootfs_tarball(cache_dir, env)
    changes = [*IMPORT_CHANGES, f"LABEL {ROOTFS_LABEL}={key}"]
    with log.step(f"Importing the stand-in base {tag} from {tarball.name}"):
        cmd = [docker, "import", *[a for change in changes for a in ("--change", change)], str(tarball), tag]
        run(cmd, env=env, error=ImageError, what=f"Importing {tarball} as {tag}",
            fix="check that the Docker engine is running")
    if present is not None:  # the tag moved: drop the old image unless something still uses it
        subprocess.run([docker, "rmi", present["Id"]], capture_output=True, env=dict(env))
    info = inspect_image(docker, tag, env)
    assert info is not None
    return str(info["Id"])


def rootfs_tarball(cache_dir: Path, env: Mapping[str, str]) -> Path:
    folder = cache_dir / "builder"
    tarball = folder / f"standin-{SUITE}-{rootfs_key()}.tar"
    with file_lock(folder / ".standin.lock", "the stand-in rootfs"):
        if tarball.exists():
            return tarball
        if os.geteuid() != 0:
            raise ImageError("Making the stand-in base needs root (debootstrap, chroot)", fix="run it as root")
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed", fix="apt-get install debootstrap")
        mirror = debian_mirror(env)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".rootfs-") as tmp:
            root = Path(tmp) / "root"
            with log.step(f"debootstrap --variant=minbase {SUITE} from {mirror} (+ {', '.join(PACKAGES)})"):
                run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, root, mirror],
                    error=ImageError,
                    what="debootstrap",
                    fix=f"check that {mirror} is reachable (DEBIAN_MIRROR selects another mirror)",
                )
            _lay_out_python(root)
            partial = folder / f".{tarball.name}.part"
            # The package archive debootstrap leaves behind is not part of the system (about 110 MB).
            for deb in (root / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            run(["tar", "--numeric-owner", "-C", root, "--exclude=./proc/*", "--exclude=./sys/*", "-cf", partial, "."],
                error=ImageError, what="Packing the stand-in rootfs")
            partial.rename(tarball)
    return tarball


def _lay_out_python(root: Path) -> None:
    """/opt/python/cp311-cp311 as a venv over the system Python; /opt/python/cp39-cp39/bin/python for cibuildwheel's
    helpers (it runs one-line json/glob scripts with that path; any Python 3 serves)."""
    run(["chroot", root, "/usr/bin/python3", "-m", "venv", f"/opt/python/{PYTHON_TAG}"],
        error=ImageError, what=f"Creating /opt/python/{PYTHON_TAG} in the stand-in rootfs")
    helper = root / "opt/python/cp39-cp39/bin"
    helper.mkdir(parents=True)
    (helper / "python").symlink_to("/usr/bin/python3")
