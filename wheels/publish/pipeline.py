"""Publishing, step by step: select, stage and hash, twine check, destination, plan, upload, prove, record.

Everything that can refuse a publish (a tampered or ungated wheel, metadata twine rejects, local versions on PyPI,
an unreachable index, a different file under an existing name) is checked for every wheel before the first byte
is uploaded. Uploads are one file at a time, each complete or absent on the index; a run that stops part-way is
finished by running it again, since files the index already holds with the same hash are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from packaging.utils import parse_wheel_filename

from .. import log
from ..errors import ConfigError, PublishError, unknown
from ..manifest import Record, Wheelhouse
from ..options import load_matrix
from ..util import file_lock, sha256_file
from . import record, static
from .credentials import Credentials, from_environment, mask_url, strip_userinfo
from .remote import IndexReader
from .server import EmbeddedIndex, embedded_index
from .settings import PublishOptions, simple_url_for
from .upload import is_pypi, local_version_refusal, upload_one
from .verify import Expected, resolve_from_index


@dataclasses.dataclass(frozen=True)
class Staged:
    record: Record
    path: Path  # a private hard link (or copy) of the wheelhouse's file, hashed: what every later step reads
    extra_index_url: str | None

    @property
    def filename(self) -> str:
        return self.record.filename

    @property
    def project(self) -> str:
        return str(parse_wheel_filename(self.filename)[0])

    def expected(self) -> Expected:
        return Expected(self.filename, self.record.sha256, self.extra_index_url)


@dataclasses.dataclass
class Outcome:
    destination: str
    uploaded: list[str] = dataclasses.field(default_factory=list)
    present: list[str] = dataclasses.field(default_factory=list)
    verified: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# What to publish


def select(records: Mapping[str, Record], patterns: Sequence[str], where: Path) -> list[Record]:
    """Records chosen by name or glob (none: all), in name order; only gated ones, the others named in a warning."""
    if patterns:
        chosen: set[str] = set()
        for pattern in patterns:
            matches = [name for name in records if fnmatch.fnmatchcase(name, pattern)]
            if not matches:
                raise unknown("target in the wheelhouse", pattern, records, str(where / "manifest.json"))
            chosen.update(matches)
    else:
        chosen = set(records)
    picked = [records[name] for name in sorted(chosen)]
    ungated = [r for r in picked if (r.gate or {}).get("verdict") != "pass"]
    for r in ungated:
        log.warn(
            f"not publishing {r.filename}: its ABI gate verdict is {(r.gate or {}).get('verdict')!r}, not 'pass' "
            f"(rebuild or re-gate it with `nox -s wheels -- {r.target}`)"
        )
    gated = [r for r in picked if r not in ungated]
    if not gated:
        raise PublishError(
            f"No gated wheels to publish in {where}",
            why="the wheelhouse has no records" if not records else "no selected wheel passed the ABI gate",
            fix="build them first: `nox -s wheels -- TARGET` (e.g. canary-cu124)",
        )
    return gated


def torch_indexes(matrix_path: Path, env: Mapping[str, str]) -> dict[str, str | None]:
    """torch build name -> the index its torch comes from (what an image build passes as --extra-index-url)."""
    _, targets = load_matrix(matrix_path, env)
    return {t.torch.name: t.torch.index_url for t in targets.values()}


def stage(house: Wheelhouse, records: Sequence[Record], into: Path, indexes: Mapping[str, str | None]) -> list[Staged]:
    """Link each wheel into a private folder and check its sha256 against its record: every wheel, before anything.

    A build that replaces a wheel while we publish writes a new file (atomic rename); our link keeps the old bytes,
    which are the ones we hashed.
    """
    staged: list[Staged] = []
    bad: list[str] = []
    for r in records:
        src = house.wheel_path(r)
        dest = into / r.filename
        try:
            os.link(src, dest)
        except FileNotFoundError:
            bad.append(f"{r.filename}: the file is missing from {house.root}")
            continue
        except OSError:
            shutil.copyfile(src, dest)
        digest = sha256_file(dest)
        if digest != r.sha256:
            bad.append(f"{r.filename}: sha256 {digest[:16]}... but its record says {r.sha256[:16]}...")
            continue
        build = str((r.torch or {}).get("build", ""))
        staged.append(Staged(r, dest, indexes.get(build)))
    if bad:
        raise PublishError(
            f"{len(bad)} wheel(s) differ from their records in {house.root}; nothing was published:\n  "
            + "\n  ".join(bad),
            why="a wheel was changed, replaced or damaged after it was built and gated",
            fix="rebuild it (`nox -s wheels -- TARGET --force`), which re-gates and re-records it",
        )
    return staged


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def twine_check(wheels: Sequence[Path]) -> None:
    """`twine check` over every wheel at once: an error (metadata an index would reject, a description that does not
    render) stops the publish; a warning does not, and is shown. Upstream packages are published with the metadata
    their authors gave them: mmcv 2.1.0's wheel has no long_description, which is valid metadata and which
    `twine check --strict` would refuse."""
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", *map(str, wheels)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    text = _ANSI.sub("", result.stdout).strip()
    if result.returncode != 0:
        raise PublishError(
            "twine check rejected the wheels' metadata; nothing was published",
            why=text[-2000:],
            fix="fix the package metadata (the recipe's patch, or upstream's setup) and rebuild",
        )
    for name, warning in twine_warnings(text, wheels):
        log.warn(f"{name}: twine check: {warning}")


def twine_warnings(output: str, wheels: Sequence[Path]) -> list[tuple[str, str]]:
    """(wheel file name, warning) pairs from `twine check`'s output, which wraps long file names across lines."""
    found: list[tuple[str, str]] = []
    current: str | None = None
    flat = re.sub(r"\n(?!Checking |WARNING |ERROR )", "", output)
    for line in flat.splitlines():
        if line.startswith("Checking "):
            current = next((w.name for w in wheels if w.name in line), None)
        elif line.startswith("WARNING") and current is not None:
            found.append((current, line.removeprefix("WARNING").strip()))
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Upload destinations (the embedded index is one)


def _has_local_version(filename: str) -> bool:
    return parse_wheel_filename(filename)[1].local is not None


def plan(reader: IndexReader, staged: Sequence[Staged]) -> tuple[list[Staged], list[Staged]]:
    """(to upload, already there with the same hash); a different file under one of our names stops everything."""
    held = reader.holdings(s.project for s in staged)
    todo: list[Staged] = []
    present: list[Staged] = []
    conflicts: list[str] = []
    for s in staged:
        link = held.get(s.filename)
        if link is None:
            todo.append(s)
            continue
        remote = reader.sha256(link)
        if remote == s.record.sha256:
            present.append(s)
        else:
            conflicts.append(f"{s.filename}: the index has sha256 {remote[:16]}..., ours is {s.record.sha256[:16]}...")
    if conflicts:
        raise PublishError(
            f"The index at {mask_url(reader.index_url)} already holds a different file under "
            f"{len(conflicts)} of our names; nothing was uploaded:\n  " + "\n  ".join(conflicts),
            why="a file name on an index stands for one content forever; pip would get the index's file, not ours",
            fix="delete those files from the index if they are stale builds, or bump the version of the new build",
        )
    return todo, present


def publish_upload(
    staged: Sequence[Staged],
    *,
    upload_url: str,
    index_url: str,
    creds: Credentials | None,
    kind: str,
    where: str,
    wheelhouse: Path,
) -> Outcome:
    outcome = Outcome(destination=f"{kind}:{where}")
    locals_ = [s.filename for s in staged if _has_local_version(s.filename)]
    if is_pypi(upload_url) and locals_:
        raise local_version_refusal(upload_url, locals_)
    reader = IndexReader(index_url, creds, auth_host=urllib.parse.urlsplit(upload_url).hostname)
    with log.step(f"Reading what {mask_url(index_url)} already holds"):
        reader.check_reachable()
        todo, present = plan(reader, staged)
    outcome.present = [s.filename for s in present]
    for s in present:
        log.info(f"already on the index with the same sha256: {s.filename}")
    if todo and creds is None:
        raise ConfigError(
            f"No upload credentials for {mask_url(upload_url)}",
            fix="set TWINE_USERNAME and TWINE_PASSWORD, or store a password with `keyring set URL USER`",
        )
    entries: dict[str, dict[str, object]] = {}
    try:
        for i, s in enumerate(todo, 1):
            with log.step(f"Uploading {s.filename} ({i}/{len(todo)}, {log.fmt_bytes(s.record.size)})"):
                upload_one(upload_url, s.path, creds)
            outcome.uploaded.append(s.filename)
            entries[s.filename] = {
                "target": s.record.target,
                "sha256": s.record.sha256,
                "published_at": record.now(),
                "action": "uploaded",
                "verified_at": None,
            }
    finally:
        if entries:  # what did reach the index is recorded even when a later upload failed
            record.update(
                wheelhouse, kind=kind, where=where, upload_url=upload_url, index_url=index_url, wheels=entries
            )
        if todo and len(outcome.uploaded) < len(todo):
            log.info(
                f"uploaded {len(outcome.uploaded)} of {len(todo)} wheel(s) before stopping; "
                "run the publish again to finish (it skips what the index already holds)"
            )
    prove(staged, index_url, creds, outcome)
    verified = {
        s.filename: {
            "target": s.record.target,
            "sha256": s.record.sha256,
            "verified_at": record.now(),
            **({"action": "present"} if s.filename in outcome.present else {}),
        }
        for s in staged
    }
    path = record.update(
        wheelhouse, kind=kind, where=where, upload_url=upload_url, index_url=index_url, wheels=verified
    )
    log.info(f"recorded in {path}")
    return outcome


def prove(staged: Sequence[Staged], index_url: str, creds: Credentials | None, outcome: Outcome) -> None:
    with log.step(f"Resolving {len(staged)} wheel(s) from {mask_url(index_url)} with pip, as an image build will"):
        resolve_from_index([s.expected() for s in staged], index_url, creds=creds)
        outcome.verified.extend(s.filename for s in staged)


# ---------------------------------------------------------------------------------------------------------------------
# Static index


def publish_static(staged: Sequence[Staged], root: Path, wheelhouse: Path) -> Outcome:
    root = root.resolve()
    outcome = Outcome(destination=f"static:{root}")
    with file_lock(root.parent / f".{root.name}.lock", f"the static index {root}"):
        existing = static.read_existing(root)
        conflicts = [
            f"{s.filename}: the index has sha256 {existing[s.filename][:16]}..., ours is {s.record.sha256[:16]}..."
            for s in staged
            if s.filename in existing and existing[s.filename] != s.record.sha256
        ]
        if conflicts:
            raise PublishError(
                f"The static index {root} already holds a different file under {len(conflicts)} of our names; "
                "nothing was written:\n  " + "\n  ".join(conflicts),
                why="a file name on an index stands for one content forever; caches and pip would serve the old one",
                fix=f"remove those files (or all of {root}) if they are stale builds, or bump the version",
            )
        new = {s.filename: s.path for s in staged if s.filename not in existing}
        outcome.present = [s.filename for s in staged if s.filename in existing]
        if new:
            with log.step(f"Writing the static index {root} ({len(new)} new, {len(existing)} kept)"):
                static.write(root, new, existing)
            outcome.uploaded = sorted(new)
        else:
            log.info(f"the static index {root} already holds every wheel with the same sha256; nothing to write")
    index_url = (root / "simple").as_uri() + "/"
    prove(staged, index_url, None, outcome)
    stamp = record.now()
    path = record.update(
        wheelhouse,
        kind="static",
        where=str(root),
        upload_url=None,
        index_url=index_url,
        wheels={
            s.filename: {
                "target": s.record.target,
                "sha256": s.record.sha256,
                "verified_at": stamp,
                **(
                    {"published_at": stamp, "action": "written"}
                    if s.filename in outcome.uploaded
                    else {"action": "present"}
                ),
            }
            for s in staged
        },
    )
    log.info(f"recorded in {path}")
    return outcome


# ---------------------------------------------------------------------------------------------------------------------
# Entry points


@contextlib.contextmanager
def staged_wheels(opts: PublishOptions, env: Mapping[str, str]) -> Iterator[list[Staged]]:
    """Select, stage, hash and `twine check` every wheel: the checks that come before any destination is touched."""
    house = Wheelhouse(opts.wheelhouse)
    records = select(house.records(), opts.targets, opts.wheelhouse)
    indexes = torch_indexes(opts.matrix_path, env)
    with tempfile.TemporaryDirectory(prefix="wheels-publish-") as tmp:
        with log.step(f"Checking {len(records)} gated wheel(s) against their records and with twine check"):
            staged = stage(house, records, Path(tmp), indexes)
            twine_check([s.path for s in staged])
        yield staged


def publish(opts: PublishOptions, env: Mapping[str, str]) -> Outcome:
    start = time.monotonic()
    with staged_wheels(opts, env) as staged:
        if opts.static_dir is not None:
            outcome = publish_static(staged, opts.static_dir, opts.wheelhouse)
        elif opts.repository_url:
            creds = from_environment(opts.repository_url, env)
            url = strip_userinfo(opts.repository_url)[0]  # credentials travel as auth, never inside the URL
            if creds is not None:
                log.info(f"upload credentials for {mask_url(url)}: user {creds.username!r} from {creds.source}")
            outcome = publish_upload(
                staged,
                upload_url=url,
                index_url=opts.index_url or simple_url_for(url),
                creds=creds,
                kind="upload",
                where=url,
                wheelhouse=opts.wheelhouse,
            )
        else:
            outcome = publish_embedded(staged, opts, env)
    log.info(
        f"published {len(outcome.uploaded)} new, {len(outcome.present)} already there, "
        f"{len(outcome.verified)} verified with pip, to {mask_url(outcome.destination)} "
        f"in {log.fmt_seconds(time.monotonic() - start)}"
    )
    return outcome


def publish_embedded(
    staged: Sequence[Staged], opts: PublishOptions, env: Mapping[str, str], index: EmbeddedIndex | None = None
) -> Outcome:
    """Publish into the embedded index: the given running one, or one started for this run."""
    data_dir = opts.index.data_dir.resolve()
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            file_lock(data_dir.parent / f".{data_dir.name}.publish.lock", f"the embedded index {data_dir}")
        )
        if index is None:
            index = stack.enter_context(
                embedded_index(data_dir, port=opts.index.port, env=env, wheelhouse=opts.wheelhouse)
            )
        return publish_upload(
            staged,
            upload_url=index.upload_url,
            index_url=opts.index_url or index.simple_url,
            creds=index.credentials,
            kind="embedded",
            where=str(index.data_dir),
            wheelhouse=opts.wheelhouse,
        )
