"""`nox -s lock`: resolve the image's one Python environment into a lock with hashes, from constraints.txt.

Inputs: image/requirements.in (full) or image/requirements-core.in (core), the requirements of ComfyUI and of every
node pack (full), of image/runtime/ and models/ when they have one, and our wheels. Resolution is binary-only
(``--no-build``): a project that PyPI ships only as a pure-Python sdist is built into a wheel first
(:mod:`image.purewheels`), then resolution runs again. The lock's header records how it was made and a digest of
every input, so a build can tell a stale lock from a current one.

Where our wheels come from while locking: ``--index-url`` (a published index), else the wheelhouse's gated wheels for
the torch build (their versions are pinned exactly, so no other index can offer a same-named package instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from wheels import log
from wheels.envs import CONSTRAINTS
from wheels.errors import ConfigError, ImageError
from wheels.manifest import Record, Wheelhouse
from wheels.util import atomic_write_text, run, sha256_file, uv_bin

from . import purewheels, reqs, sources
from .config import IMAGE_DIR, REPO_ROOT
from .options import Common, LockOptions, resolve_lock
from .wheelsrc import File, index_files, reader_for

# Requirement files of what runs inside the image besides ComfyUI: folded in when they exist.
IN_IMAGE_REQUIREMENTS = (
    REPO_ROOT / "image" / "runtime" / "requirements.txt",
    REPO_ROOT / "models" / "requirements.txt",
)
_NO_WHEELS = re.compile(
    r"have no usable wheels|has no usable wheels|no wheels with a matching|building from source is disabled"
)


def requirements_in(profile: str) -> Path:
    return IMAGE_DIR / ("requirements.in" if profile == "full" else "requirements-core.in")


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass(frozen=True)
class Inputs:
    files: tuple[tuple[str, Path], ...]  # (label, path): every requirement file, in order
    trees: tuple[sources.SourceTree, ...]
    ours: tuple[Record, ...]  # gated wheelhouse wheels offered to the resolver
    with_: tuple[str, ...]

    def digests(self, pinned: set[str] | None = None) -> dict[str, str]:
        """Input name -> sha256. Our wheels count only when the lock pins them (``pinned``: its normalised names)."""
        found = {label: sha256_file(path) for label, path in self.files}
        found["constraints.txt"] = sha256_file(CONSTRAINTS)
        for record in self.ours:
            if pinned is None or str(canonicalize_name(record.package)) in pinned:
                found[f"wheel {record.filename}"] = record.sha256
        return found


def gated_wheels(wheelhouse: Path, torch_build: str) -> list[Record]:
    """The wheelhouse's wheels that passed the gate, for this torch build, with their files present."""
    house = Wheelhouse(wheelhouse)
    if not house.path.exists():
        return []
    records = []
    for record in house.records().values():
        if (record.torch or {}).get("build") != torch_build or (record.gate or {}).get("verdict") != "pass":
            continue
        if house.wheel_path(record).exists():
            records.append(record)
    return sorted(records, key=lambda r: r.package)


def gather(c: Common, with_: Sequence[str], *, need_sources: bool) -> Inputs:
    files: list[tuple[str, Path]] = [(rel(requirements_in(c.profile)), requirements_in(c.profile))]
    trees: list[sources.SourceTree] = []
    if c.profile == "full":
        files += [(rel(p), p) for p in IN_IMAGE_REQUIREMENTS if p.is_file()]
        if need_sources:
            trees = sources.materialize(c.nodes.all, c.source_dirs, c.cache_dir)
            for tree in trees:
                files += tree.requirement_files()
    ours = gated_wheels(c.wheelhouse, c.torch.name) if not c.index_url else []
    return Inputs(files=tuple(files), trees=tuple(trees), ours=tuple(ours), with_=tuple(with_))


def _under(work: Path, label: str) -> Path:
    dest = work / "inputs" / label
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def sanitize(label: str, path: Path, dest: Path) -> Path:
    """Copy a requirement file without option lines: an index or find-links in a node pack's requirements.txt must
    not decide where the image's packages come from. Includes (-r) and URLs are refused."""
    kept = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r", "--requirement", "-c", "--constraint", "-e", "--editable")):
            raise ConfigError(
                f"{label} includes {line!r}",
                fix="lock inputs are plain requirement lists; name the included requirements in image/requirements.in",
            )
        if line.startswith("-"):
            log.warn(f"{label}: ignored the option line {line!r} (indexes are the lock's settings)")
            continue
        if "://" in line or line.startswith(("git+", "http")):
            raise ConfigError(
                f"{label} requires {line!r}, a URL",
                why="the image installs wheels by hash from an index; a URL or VCS requirement cannot be locked so",
                fix="publish a wheel of it to our index and require it by name",
            )
        kept.append(line)
    dest.write_text("\n".join(kept) + "\n")
    return dest


def current_digests(
    c: Common, trees: Sequence[sources.SourceTree], pinned: set[str], with_: Sequence[str] = ()
) -> Mapping[str, str]:
    """What a lock's inputs digest to today, for the build's staleness check (sources already materialized)."""
    files: list[tuple[str, Path]] = [(rel(requirements_in(c.profile)), requirements_in(c.profile))]
    if c.profile == "full":
        files += [(rel(p), p) for p in IN_IMAGE_REQUIREMENTS if p.is_file()]
        for tree in trees:
            files += tree.requirement_files()
    ours = gated_wheels(c.wheelhouse, c.torch.name) if not c.index_url else []
    return Inputs(tuple(files), tuple(trees), tuple(ours), tuple(with_)).digests(pinned)


# ---------------------------------------------------------------------------------------------------------------------
# Resolution


def torch_family_pins(c: Common) -> list[str]:
    """torch, torchvision, torchaudio pinned to the torch build's local version (+cu121) when it has its own index."""
    if c.torch.index_url is None or c.torch.index_url.rstrip("/") == c.pypi_url.rstrip("/"):
        return []
    if c.torch.cuda is None:
        return []
    label = "+cu" + c.torch.cuda.replace(".", "")
    pins = []
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^(torch|torchvision|torchaudio)==([0-9][^\s;#]*)", line.strip())
        if m:
            pins.append(f"{m.group(1)}=={m.group(2)}{label}")
    return pins


@dataclasses.dataclass(frozen=True)
class Resolver:
    """One `uv pip compile` configuration; ``run`` resolves binary-only with hashes, ``probe`` allows sdists."""

    common: Common
    work: Path
    inputs: tuple[Path, ...]
    ours_links: Path | None  # a folder of our gated wheels (find-links), when not resolving from --index-url
    constraints: Path  # a copy of constraints.txt
    exact: Path  # extra constraints: our wheels' exact versions, the torch family's local versions
    excludes: Path | None
    config: Path  # uv.toml: extra build requirements for probing sdists

    def indexes(self) -> list[str]:
        c = self.common
        args: list[str] = []
        if c.index_url:
            args += ["--index", c.index_url]
        if self.ours_links is not None:
            args += ["--find-links", str(self.ours_links)]
        c.built.mkdir(parents=True, exist_ok=True)
        args += ["--find-links", str(c.built)]
        if c.torch.index_url and c.torch.index_url.rstrip("/") != c.pypi_url.rstrip("/"):
            args += ["--index", c.torch.index_url]
        # Same-named packages on several indexes: the highest version wins, ties go to the earlier index. Ours are
        # pinned exactly (self.exact), and PyPI refuses local versions, so no index can slip in a package of ours.
        args += ["--default-index", c.pypi_url, "--index-strategy", "unsafe-best-match"]
        return args

    def command(self, output: Path, *, hashes: bool, binary_only: bool, upgrade: bool) -> list[str]:
        c = self.common
        cmd = [
            uv_bin(), "pip", "compile", "--config-file", str(self.config), "--quiet",
            "--python-version", c.python, "--python-platform", c.platform,
            "--constraint", self.constraints.name, "--constraint", self.exact.name,
            "--no-header", "--output-file", str(output), *self.indexes(),
        ]  # fmt: skip
        if self.excludes is not None:
            cmd += ["--excludes", str(self.excludes)]
        if hashes:
            cmd.append("--generate-hashes")
        if binary_only:
            cmd.append("--no-build")
        if upgrade:
            cmd.append("--upgrade")
        return cmd + [str(p.relative_to(self.work)) for p in self.inputs]

    def run(self, output: Path, *, upgrade: bool) -> tuple[bool, str]:
        import subprocess

        cmd = self.command(output, hashes=True, binary_only=True, upgrade=upgrade)
        result = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.work)
        return result.returncode == 0, result.stdout

    def probe(self) -> list[reqs.Pin]:
        """Resolve with sdists allowed (their metadata is built as needed): which versions would be chosen."""
        out = self.work / "probe.txt"
        run(
            self.command(out, hashes=False, binary_only=False, upgrade=False),
            cwd=self.work,
            error=ImageError,
            what="Resolving with sdists allowed, to find which projects lack wheels",
            fix="if an sdist's metadata build fails for a missing build tool, add [sdists.NAME] build-requires "
            "to image/image.toml",
        )
        pins = []
        for line in out.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
            if m:
                pins.append(reqs.Pin(m.group(1), m.group(2), ()))
        return pins


def _sdists_needing_wheels(c: Common, pins: Sequence[reqs.Pin], ours: set[str]) -> list[purewheels.Sdist]:
    """Pins that no index offers as a fitting wheel, with the sdist to build each from."""
    import concurrent.futures

    tags = reqs.target_tags(c.python, c.platform)
    upstream = [c.pypi_url]
    if c.torch.index_url and c.torch.index_url.rstrip("/") != c.pypi_url.rstrip("/"):
        upstream.insert(0, c.torch.index_url)
    readers = [reader_for(u) for u in upstream]
    built_files = [p for p in c.built.glob("*.whl")]

    def files_of(pin: reqs.Pin) -> list[File]:
        found = [File(p.name, str(p), None) for p in built_files if str(parse_wheel_filename(p.name)[0]) == pin.key]
        for reader in readers:
            found += index_files(reader, pin.key)
        return found

    candidates = [p for p in pins if p.key not in ours]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        listings = list(pool.map(files_of, candidates))
    needed = []
    for pin, files in zip(candidates, listings, strict=True):
        has_wheel = any(
            f.is_wheel and reqs.wheel_fits(f.filename, tags) and str(parse_wheel_filename(f.filename)[1]) == pin.version
            for f in files
        )
        if has_wheel:
            continue
        sdist = None
        for f in files:
            if f.is_wheel:
                continue
            with contextlib.suppress(Exception):
                name, version = parse_sdist_filename(f.filename)
                if str(version) == pin.version:
                    sdist = purewheels.Sdist(str(name), pin.version, f.location, f.sha256)
                    break
        if sdist is None:
            raise ImageError(f"{pin} has neither a wheel for the image nor an sdist on {', '.join(upstream)}")
        needed.append(sdist)
    return needed


# ---------------------------------------------------------------------------------------------------------------------
# The header


def header(
    c: Common, inputs: Inputs, lock: reqs.Lock, without: Sequence[str], built: Sequence[str], command: str, output: Path
) -> str:
    torch = c.torch
    entries: list[tuple[str, str]] = [
        ("profile", c.profile),
        ("torch", f"{torch.name} (torch {torch.version}, CUDA {torch.cuda}) from {torch.index_url}"),
        ("python", c.python),
        ("platform", c.platform),
        ("index", f"ours: {c.index_url or 'the gated wheels of the wheelhouse'}"),
        ("index", f"third-party: {c.pypi_url}"),
    ]
    for tree in inputs.trees:
        entries.append(("source", f"{tree.pin.name} {tree.identity()} ({tree.origin})"))
    for label, digest in sorted(inputs.digests({p.key for p in lock.pins}).items()):
        entries.append(("input", f"{label} sha256={digest}"))
    if without:
        entries.append(("without", ", ".join(without)))
    if inputs.with_:
        entries.append(("with", ", ".join(inputs.with_)))
    for name in built:
        entries.append(("sdist", f"{name} (built into a pure wheel by `nox -s lock`, reproducibly)"))
    version = run([uv_bin(), "--version"]).stdout.strip()
    entries.append(("resolver", f"{version}: pip compile --generate-hashes --no-build"))
    title = [
        f"{rel(output)}: the image's one Python environment, every file by sha256.",
        "GENERATED: never edit by hand. Made by:",
        f"  {command}",
    ]
    if c.profile == "full" and c.torch.name != "cu121":
        title.append(
            f"NOTE: the production lock is image/requirements.lock (torch cu121); this one is for {c.torch.name}."
        )
    if without:
        title.append(f"NOTE: made without {', '.join(without)}: an image from it lacks them.")
    return reqs.render_header(entries, title)


def command_line(opts: LockOptions) -> str:
    c = opts.common
    parts = ["nox -s lock --", f"--profile {c.profile}", f"--torch {c.torch.name}"]
    if c.index_url:
        parts.append(f"--index-url {c.index_url}")
    parts += [f"--without {w}" for w in opts.without]
    parts += [f"--with {w}" for w in opts.with_]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# The session


@contextlib.contextmanager
def resolver_for(c: Common, inputs: Inputs, without: Sequence[str], with_: Sequence[str]) -> Iterator[Resolver]:
    with tempfile.TemporaryDirectory(prefix="image-lock-") as tmp:
        work = Path(tmp)
        # Inputs are copied under their labels, so the lock's "# via" notes name them as a reader knows them.
        files = [sanitize(label, path, _under(work, label)) for label, path in inputs.files]
        constraints = work / "constraints.txt"
        constraints.write_text(CONSTRAINTS.read_text())
        extra = work / "our-wheels.txt"
        ours_names = [r.package for r in inputs.ours] if c.profile == "core" and not with_ else list(with_)
        extra.write_text("".join(f"{n}\n" for n in ours_names))
        files.append(extra)
        links = None
        exact_lines = torch_family_pins(c)
        if inputs.ours:
            links = work / "ours"
            links.mkdir()
            for record in inputs.ours:
                src = c.wheelhouse / record.filename
                with contextlib.suppress(FileExistsError):
                    os.link(src, links / record.filename)
                exact_lines.append(f"{record.package}=={record.version}")
        exact = work / "exact-pins.txt"
        exact.write_text("".join(f"{line}\n" for line in exact_lines))
        excludes = None
        if without:
            excludes = work / "excludes.txt"
            excludes.write_text("".join(f"{w}\n" for w in without))
        config = work / "uv.toml"
        config.write_text(
            "[extra-build-dependencies]\n"
            + "".join(f'"{name}" = {list(fix.build_requires)!r}\n'.replace("'", '"') for name, fix in c.sdists.items())
        )
        yield Resolver(c, work, tuple(files), links, constraints, exact, excludes, config)


def make_lock(opts: LockOptions) -> Path | None:
    c = opts.common
    inputs = gather(c, opts.with_, need_sources=True)
    if c.profile == "full" and not inputs.ours and not c.index_url:
        log.warn(f"the wheelhouse {c.wheelhouse} has no gated wheels for torch {c.torch.name}")
    if opts.check:
        return check(opts, inputs)
    built: list[str] = []
    with resolver_for(c, inputs, opts.without, opts.with_) as resolver:
        out = resolver.work / "lock.txt"
        if opts.output.exists() and not opts.upgrade:
            # uv prefers the versions already in its output file (small diffs between locks). Versions only: it
            # would also keep a pin's old hashes, even when a wheel of ours was rebuilt under the same name.
            previous = reqs.parse_lock(opts.output.read_text(), str(opts.output))
            out.write_text("".join(f"{p.name}=={p.version}\n" for p in previous.pins))
        with log.step(f"Resolving the {c.profile} profile for torch {c.torch.name} (binary wheels only, with hashes)"):
            ok, text = resolver.run(out, upgrade=opts.upgrade)
            if not ok and _NO_WHEELS.search(text):
                log.info("some projects have no wheel; finding which, to build pure-Python ones from their sdists")
                pins = resolver.probe()
                ours = {str(canonicalize_name(r.package)) for r in inputs.ours} | set(c.ours)
                needed = _sdists_needing_wheels(c, pins, ours)
                for path in purewheels.build_all(needed, c.built, c.cache_dir, c.sdists, c.python):
                    log.info(f"pure wheel ready: {path.name}")
                ok, text = resolver.run(out, upgrade=opts.upgrade)
            if not ok:
                raise ImageError(
                    f"Resolving the {c.profile} profile failed:\n{text.strip()[-4000:]}",
                    fix="relax or add pins in constraints.txt, or use --without for a package that cannot be had here",
                )
        lock = reqs.parse_lock(out.read_text(), "the resolved lock")
        check_ours(lock, inputs)
        built = sorted(
            f"{p.name}=={p.version}" for p in lock.pins if purewheels.existing(c.built, p.name, p.version) is not None
        )
        text = header(c, inputs, lock, opts.without, built, command_line(opts), opts.output) + "\n" + out.read_text()
    reqs.parse_lock(text, str(opts.output))  # what we write must read back
    atomic_write_text(opts.output, text)
    log.info(f"wrote {opts.output} ({len(lock.pins)} packages, {len(built)} built from sdists)")
    return opts.output


def check_ours(lock: reqs.Lock, inputs: Inputs) -> None:
    """Each of our wheels in the lock carries exactly its wheelhouse record's sha256 (no stale or foreign file)."""
    pins = lock.by_key()
    for record in inputs.ours:
        pin = pins.get(str(canonicalize_name(record.package)))
        if pin is not None and (pin.version != record.version or pin.hashes != (record.sha256,)):
            raise ImageError(
                f"The resolver locked {pin} with {', '.join(h[:12] for h in pin.hashes)}, but the wheelhouse's gated "
                f"wheel is {record.filename} with {record.sha256[:12]}",
                fix="rerun with --upgrade; report this if it persists",
            )


def check(opts: LockOptions, inputs: Inputs) -> Path:
    lock_path = opts.output
    if not lock_path.exists():
        raise ImageError(f"{lock_path} does not exist", fix=f"make it: {command_line(opts)}")
    lock = reqs.parse_lock(lock_path.read_text(), str(lock_path))
    problems = reqs.stale_inputs(lock.inputs(), inputs.digests({p.key for p in lock.pins}))
    if lock.first("profile") != opts.common.profile:
        problems.insert(0, f"it was made for the {lock.first('profile')} profile")
    if problems:
        raise ImageError(
            f"{lock_path} is not up to date:\n  " + "\n  ".join(problems), fix=f"remake it: {command_line(opts)}"
        )
    log.info(f"{lock_path} is up to date ({len(lock.pins)} packages)")
    return lock_path


def cli(argv: Sequence[str]) -> int:
    opts = resolve_lock(argv, os.environ)
    make_lock(opts)
    return 0
