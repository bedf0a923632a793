"""The models downloader against a stand-in hub on loopback, driven by the real huggingface_hub client.

In-process runs inject ``sleep`` (so backoff is instant and recorded) and ``disk_free``; the concurrency test runs
two real ``python -m models`` processes. Files are a few MiB of seeded random bytes: quick and deterministic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("huggingface_hub", reason="the models downloader needs huggingface_hub (nox -s tests installs it)")

from models_hub_stub import HubStub  # noqa: E402

from models import download, errors, fsutil, options, state  # noqa: E402
from models import hub as hub_mod  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def hub() -> Iterator[HubStub]:
    with HubStub() as stub:
        yield stub


def entry(name: str, repo: str, path: str, folder: str = "diffusion_models", **extra: str) -> str:
    lines = [f"[files.{name}]", f'repo = "{repo}"', 'revision = "main"', f'path = "{path}"', f'folder = "{folder}"',
             'variants = ["a"]', 'status = "unverified"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def write_manifest(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text('schema = 1\n[variants.a]\ndefault = true\n' + "".join(entries))
    return path


class Runner:
    def __init__(self, tmp_path: Path, hub: HubStub) -> None:
        self.tmp = tmp_path
        self.hub = hub
        self.dest = tmp_path / "dest"
        self.sleeps: list[float] = []

    def options(self, manifest: Path, *args: str, env: dict[str, str] | None = None) -> options.Options:
        return options.resolve(
            ["--manifest", str(manifest), "--dest", str(self.dest), "--no-progress", *args],
            {"HF_ENDPOINT": self.hub.endpoint, **(env or {})},
            stored_token=lambda: None,
            default_token_file=self.tmp / "no-secret",
        )

    def run(self, manifest: Path, *args: str, env: dict[str, str] | None = None, **kw: Any) -> list[download.Outcome]:
        return download.run(self.options(manifest, *args, env=env), sleep=self.sleeps.append, **kw)


@pytest.fixture
def runner(tmp_path: Path, hub: HubStub) -> Runner:
    return Runner(tmp_path, hub)


def leftovers(dest: Path) -> list[str]:
    """Anything that is neither a verified file, its record, nor a lock: partials and temporary files."""
    found = []
    for p in dest.rglob("*"):
        if p.is_file() and not p.name.endswith((".verified.json", ".lock")):
            rel = p.relative_to(dest)
            if rel.parts[0] == ".models" or p.name.startswith("."):
                found.append(str(rel))
    return found


# --- the happy path -------------------------------------------------------------------------------------------------


def test_clean_download_verifies_places_and_records(runner: Runner, hub: HubStub) -> None:
    big = hub.add("org/model", "weights/model.safetensors", blob(1, 3 * MIB))
    small = hub.add("org/model", "config.json", b'{"dim": 5120}\n', lfs=False)
    manifest = write_manifest(
        runner.tmp,
        entry("big", "org/model", "weights/model.safetensors", subdir="WanVideo"),
        entry("cfg", "org/model", "config.json", folder="configs"),
    )
    outcomes = runner.run(manifest, env={"HF_TOKEN": "hf_secret"})

    assert sorted(o.action for o in outcomes) == ["downloaded", "downloaded"]
    target = runner.dest / "diffusion_models" / "WanVideo" / "model.safetensors"
    assert target.read_bytes() == big.content
    assert (runner.dest / "configs" / "config.json").read_bytes() == small.content
    record = state.read(target)
    assert record is not None
    assert record.sha256 == big.sha256 and record.size == len(big.content)
    assert record.verified_against == "hub LFS sha256" and record.commit == HubStub.COMMIT
    cfg = state.read(runner.dest / "configs" / "config.json")
    assert cfg is not None and cfg.verified_against == "hub git blob sha1"
    assert leftovers(runner.dest) == []
    # The token goes to the hub, never to the CDN that serves the LFS bytes.
    assert all(r.authorization == "Bearer hf_secret" for r in hub.requests if r.server == "hub")
    assert [r.authorization for r in hub.gets("cdn")] == [None]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_manifest_sha256_is_checked_and_a_renamed_repo_is_followed(runner: Runner, hub: HubStub) -> None:
    f = hub.add("new-org/model", "w.bin", blob(2, MIB))
    hub.rename("old-org/model", "new-org/model")
    manifest = write_manifest(runner.tmp, entry("w", "old-org/model", "w.bin", sha256=f.sha256, size=len(f.content)))
    [outcome] = runner.run(manifest)
    assert outcome.action == "downloaded"
    record = state.read(outcome.target)
    assert record is not None and record.verified_against == "manifest sha256"
    assert any(r.path.startswith("/old-org/model/resolve/") for r in hub.heads())
    assert any(r.path.startswith("/new-org/model/resolve/") for r in hub.heads())


def test_manifest_sha256_that_disagrees_with_the_hub_fails_before_downloading(runner: Runner, hub: HubStub) -> None:
    hub.add("org/model", "w.bin", blob(3, MIB))
    manifest = write_manifest(runner.tmp, entry("w", "org/model", "w.bin", sha256="0" * 64))
    with pytest.raises(errors.IntegrityError, match="does not match the hub's"):
        runner.run(manifest)
    assert hub.gets("cdn") == []


def test_plain_url_checked_against_its_publishers_sha256_prefix(runner: Runner, hub: HubStub) -> None:
    f = hub.add("mirror/blobs", "yolox.pth", blob(4, MIB))

    def url_entry(filename: str, prefix: str) -> str:
        return "\n".join([
            "[files.yolox]", f'url = "{hub.url_for(f)}"', f'filename = "{filename}"', f'sha256-prefix = "{prefix}"',
            'folder = "pretrained_weights"', 'variants = ["a"]', 'status = "unverified"', "",
        ])

    [outcome] = runner.run(write_manifest(runner.tmp, url_entry("yolox_l.pth", f.sha256[:8])))
    assert outcome.target.read_bytes() == f.content
    assert state.read(outcome.target).verified_against == "publisher's sha256 prefix"  # type: ignore[union-attr]

    bad = url_entry("other.pth", "deadbeef")
    with pytest.raises(errors.IntegrityError, match="starting with deadbeef"):
        runner.run(write_manifest(runner.tmp, bad))
    assert not (runner.dest / "pretrained_weights" / "other.pth").exists()
    assert leftovers(runner.dest) == []


# --- resume ---------------------------------------------------------------------------------------------------------


def test_resume_after_a_connection_dropped_mid_file(runner: Runner, hub: HubStub) -> None:
    # Bytes reach the file in whole CHUNK_SIZE reads: what was on disk when the connection broke is where it resumes.
    f = hub.add("org/model", "big.bin", blob(5, 16 * MIB))
    hub.fault("cdn", f.sha256, "drop", after=12 * MIB + 1000)
    [outcome] = runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
    assert outcome.target.read_bytes() == f.content
    on_disk = (12 * MIB + 1000) // hub_mod.CHUNK_SIZE * hub_mod.CHUNK_SIZE
    assert [g.range for g in hub.gets("cdn")] == [None, f"bytes={on_disk}-"]
    assert hub.served_bytes[f.sha256] < len(f.content) + 3 * MIB  # resumed, not started over
    assert runner.sleeps == []  # it had delivered bytes: resumed at once, not counted as a failed attempt


def test_a_connection_that_drops_before_any_byte_is_retried_with_backoff(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(19, 2 * MIB))
    hub.fault("cdn", f.sha256, "drop", after=0)
    [outcome] = runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
    assert outcome.target.read_bytes() == f.content
    assert [g.range for g in hub.gets("cdn")] == [None, None]
    assert runner.sleeps == [1.0]


def test_resume_a_partial_left_by_an_earlier_run(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(6, 4 * MIB))
    manifest = write_manifest(runner.tmp, entry("big", "org/model", "big.bin"))
    partial = runner.dest / ".models" / "partial" / f"big.bin.{f.sha256[:16]}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(f.content[: 3 * MIB])  # what an interrupted run (Ctrl-C, pod stop) leaves behind
    [outcome] = runner.run(manifest)
    assert outcome.target.read_bytes() == f.content
    assert outcome.bytes_fetched == MIB
    assert [g.range for g in hub.gets("cdn")] == [f"bytes={3 * MIB}-"]
    assert not partial.exists()


def test_a_server_that_ignores_range_still_gives_a_verified_file(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(7, 2 * MIB))
    hub.fault("cdn", f.sha256, "ignore-range")
    partial = runner.dest / ".models" / "partial" / f"big.bin.{f.sha256[:16]}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(f.content[:MIB])
    [outcome] = runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
    assert outcome.target.read_bytes() == f.content  # truncated and re-hashed from the start, not appended


def test_a_corrupt_partial_is_deleted_and_the_next_run_starts_clean(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(8, 2 * MIB))
    manifest = write_manifest(runner.tmp, entry("big", "org/model", "big.bin"))
    partial = runner.dest / ".models" / "partial" / f"big.bin.{f.sha256[:16]}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * MIB)  # garbage: its hash can only fail
    with pytest.raises(errors.IntegrityError, match="bad file was deleted"):
        runner.run(manifest)
    assert not partial.exists() and not (runner.dest / "diffusion_models" / "big.bin").exists()
    [outcome] = runner.run(manifest)
    assert outcome.target.read_bytes() == f.content


# --- failures -------------------------------------------------------------------------------------------------------


def test_a_corrupted_body_is_deleted_with_an_error(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(9, 2 * MIB))
    hub.fault("cdn", f.sha256, "corrupt")
    with pytest.raises(errors.IntegrityError) as info:
        runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
    message = info.value.render()
    assert f.sha256 in message and "hub LFS sha256" in message and "deleted" in message
    assert info.value.exit_code == 24
    assert not (runner.dest / "diffusion_models" / "big.bin").exists()
    assert leftovers(runner.dest) == []
    assert len(hub.gets("cdn")) == 1  # a hash mismatch is not retried


@pytest.mark.parametrize(
    ("repo", "path", "revision", "match"),
    [
        ("org/model", "missing.bin", "main", "does not exist .HTTP 404.*fix its path"),
        ("org/nothing", "w.bin", "main", "Repository org/nothing does not exist.*fix its repo"),
        ("org/model", "w.bin", "v9", 'Revision "v9" of org/model does not exist.*fix its revision'),
    ],
)
def test_404s_say_the_manifest_entry_is_wrong(
    runner: Runner, hub: HubStub, repo: str, path: str, revision: str, match: str
) -> None:
    hub.add("org/model", "w.bin", blob(10, 1024))
    text = entry("w", repo, path).replace('revision = "main"', f'revision = "{revision}"')
    with pytest.raises(errors.NotFoundError, match=f"(?s){match}") as info:
        runner.run(write_manifest(runner.tmp, text))
    assert info.value.exit_code == 23
    assert "manifest entry [files.w] is wrong" in info.value.render()
    assert len(hub.heads()) == 1 and runner.sleeps == []  # no retry on 404


def test_gated_repo_401_and_403_have_their_own_messages(runner: Runner, hub: HubStub) -> None:
    f = hub.add("gated/model", "w.bin", blob(11, 1024))
    hub.gate("gated/model", "hf_good")
    manifest = write_manifest(runner.tmp, entry("w", "gated/model", "w.bin"))

    with pytest.raises(errors.AccessError, match="(?s)HTTP 401.*set HF_TOKEN") as info:
        runner.run(manifest)
    assert info.value.exit_code == 22
    with pytest.raises(errors.AccessError, match="(?s)HTTP 403.*accept the model's terms"):
        runner.run(manifest, env={"HF_TOKEN": "hf_wrong"})
    assert len(hub.heads()) == 2 and runner.sleeps == []  # neither is retried

    token_file = runner.tmp / "hf_token"
    token_file.write_text("hf_good\n")  # as a BuildKit secret mount would hold it
    [outcome] = runner.run(manifest, env={"MODELS_TOKEN_FILE": str(token_file)})
    assert outcome.target.read_bytes() == f.content


def test_503_then_success_backs_off_and_retries(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "w.bin", blob(12, MIB))
    hub.fault("hub", "org/model:w.bin", "status", status=503, times=1, methods=("HEAD",))
    hub.fault("cdn", f.sha256, "status", status=502, times=2, methods=("GET",))
    [outcome] = runner.run(write_manifest(runner.tmp, entry("w", "org/model", "w.bin")))
    assert outcome.target.read_bytes() == f.content
    assert runner.sleeps == [1.0, 1.0, 2.0]  # one backoff for the HEAD, then two growing ones for the GET


def test_a_hub_that_stays_down_fails_after_the_retries(runner: Runner, hub: HubStub) -> None:
    hub.add("org/model", "w.bin", blob(13, 1024))
    hub.fault("hub", "org/model:w.bin", "status", status=500, times=-1)
    with pytest.raises(errors.NetworkError, match="gave up after 3 attempts") as info:
        runner.run(write_manifest(runner.tmp, entry("w", "org/model", "w.bin")), "--retries", "3")
    assert info.value.exit_code == 26
    assert runner.sleeps == [1.0, 2.0]


# --- disk -----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A real tiny filesystem (tmpfs) at ``path``; needs root, as in CI."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


def test_full_disk_is_refused_before_the_first_byte(runner: Runner, hub: HubStub) -> None:
    hub.add("org/model", "big.bin", blob(14, 6 * MIB))
    with small_filesystem(runner.tmp / "small", "4m") as mount:
        runner.dest = mount / "models"
        with pytest.raises(errors.DiskSpaceError, match="Not enough free space") as info:
            runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
        assert info.value.exit_code == 25
        assert hub.gets("cdn") == []
        assert leftovers(runner.dest) == []


def test_a_disk_that_fills_up_mid_download_leaves_nothing_behind(runner: Runner, hub: HubStub) -> None:
    hub.add("org/model", "big.bin", blob(15, 6 * MIB))
    with small_filesystem(runner.tmp / "small", "4m") as mount:
        runner.dest = mount / "models"
        with pytest.raises(errors.DiskSpaceError, match="filled up") as info:
            # The free-space check is told there is room (another writer could fill the disk after it ran).
            runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")), disk_free=lambda p: 1 << 40)
        assert "free space" in (info.value.fix or "")
        assert leftovers(runner.dest) == []
        assert fsutil.disk_free(mount) > 3 * MIB  # the partial was deleted: the space is back


def test_partial_bytes_count_as_done_in_the_free_space_check(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(16, 4 * MIB))
    partial = runner.dest / ".models" / "partial" / f"big.bin.{f.sha256[:16]}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(f.content[: 3 * MIB])
    manifest = write_manifest(runner.tmp, entry("big", "org/model", "big.bin"))
    with pytest.raises(errors.DiskSpaceError, match=f"{MIB} bytes to download"):
        runner.run(manifest, disk_free=lambda p: MIB)  # 1 MiB left to fetch, but no headroom
    [outcome] = runner.run(manifest, disk_free=lambda p: MIB + (16 << 20))
    assert outcome.target.read_bytes() == f.content


# --- idempotence and concurrency ------------------------------------------------------------------------------------


def test_second_run_skips_without_hashing_or_network(
    runner: Runner, hub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = hub.add("org/model", "big.bin", blob(17, 2 * MIB))
    manifest = write_manifest(runner.tmp, entry("big", "org/model", "big.bin"))
    [first] = runner.run(manifest)
    assert first.action == "downloaded"
    requests_before = len(hub.requests)

    hashed: list[int] = []
    real_update = fsutil.Digests.update

    def counting_update(self: fsutil.Digests, data: bytes) -> None:
        hashed.append(len(data))
        real_update(self, data)

    monkeypatch.setattr(fsutil.Digests, "update", counting_update)
    [second] = runner.run(manifest)
    assert second.action == "skipped" and hashed == [] and len(hub.requests) == requests_before

    # Black-box proof: different bytes of the same size with the recorded mtime still count as verified, which can
    # only be because nothing was read. Changing the mtime (what any real write does) invalidates the record.
    target = first.target
    st = target.stat()
    target.write_bytes(b"\0" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert runner.run(manifest)[0].action == "skipped"
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    [third] = runner.run(manifest)
    assert third.action == "downloaded" and target.read_bytes() == f.content and hashed


def test_a_present_file_without_a_record_is_adopted_after_one_hash(runner: Runner, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(18, MIB))
    target = runner.dest / "diffusion_models" / "big.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(f.content)  # e.g. copied in by hand or baked into the image without records
    [outcome] = runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")))
    assert outcome.action == "adopted" and hub.gets("cdn") == []


def test_two_concurrent_runs_share_the_work_and_fetch_each_file_once(tmp_path: Path, hub: HubStub) -> None:
    files = [hub.add("org/model", f"part{i}.bin", blob(20 + i, 2 * MIB)) for i in range(3)]
    for f in files:
        hub.fault("cdn", f.sha256, "slow", delay=0.02, times=-1)  # ~0.6 s per file: the runs overlap
    manifest = write_manifest(tmp_path, *(entry(f"p{i}", "org/model", f"part{i}.bin") for i in range(3)))
    dest = tmp_path / "dest"
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(ROOT), "MODELS_TOKEN_FILE": "",
           "HF_TOKEN": ""}
    env.pop("MODELS_TOKEN_FILE")
    cmd = [sys.executable, "-m", "models", "--manifest", str(manifest), "--dest", str(dest), "--jobs", "2",
           "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=90) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    logs = "\n".join(err for _, err in results)
    for f in files:
        assert (dest / "diffusion_models" / f.path).read_bytes() == f.content
        assert len(hub.gets("cdn", f.sha256)) == 1, logs  # fetched once between the two runs
    assert "another downloader" in logs
    assert leftovers(dest) == []


# --- the command line -----------------------------------------------------------------------------------------------


def test_cli_list_shows_sizes_presence_and_totals(tmp_path: Path, hub: HubStub) -> None:
    a = hub.add("org/model", "a.bin", blob(30, MIB))
    b = hub.add("org/model", "b.bin", blob(31, 2 * MIB))
    manifest = write_manifest(tmp_path, entry("a", "org/model", "a.bin"), entry("b", "org/model", "b.bin"))
    dest = tmp_path / "dest"
    env = {"HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    base = [sys.executable, "-m", "models", "--manifest", str(manifest)]
    fetch = subprocess.run([*base, "--dest", str(dest), "--variant", "a"], env={**env, "MODELS_JOBS": "1"},
                           capture_output=True, text=True, timeout=60)
    assert fetch.returncode == 0, fetch.stderr
    (dest / "diffusion_models" / "b.bin").unlink()
    partial = dest / ".models" / "partial" / f"b.bin.{b.sha256[:16]}.part"
    partial.write_bytes(b.content[:MIB])
    (dest / "diffusion_models" / "b.bin").parent.mkdir(exist_ok=True)

    listed = subprocess.run([*base, "--dest", str(dest), "--list", "--json"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    rows = {r["name"]: r for r in data["files"]}
    assert rows["a"]["size"] == len(a.content) and rows["a"]["size_source"] == "hub"
    assert rows["a"]["state"] == "verified" and rows["a"]["sha256"] is None  # None: the manifest has no sha256
    assert rows["a"]["verified_sha256"] == a.sha256 and rows["a"]["verified_commit"] == HubStub.COMMIT
    assert rows["b"]["state"] == "partial" and rows["b"]["partial_bytes"] == MIB
    assert data["totals"]["bytes"] == 3 * MIB and data["totals"]["to_download_bytes"] == MIB

    text = subprocess.run([*base, "--dest", str(dest), "--list"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert text.returncode == 0
    assert "partial 50%" in text.stdout and "verified" in text.stdout and "to download: 1.0 MiB" in text.stdout


def test_cli_exit_codes_and_messages(tmp_path: Path, hub: HubStub) -> None:
    hub.add("org/model", "a.bin", blob(32, 1024))
    manifest = write_manifest(tmp_path, entry("a", "org/model", "missing.bin"))
    env = {"HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    result = subprocess.run([sys.executable, "-m", "models", "--manifest", str(manifest), "--dest",
                             str(tmp_path / "d")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 23
    assert "manifest entry [files.a] is wrong" in result.stderr and "Traceback" not in result.stderr
    typo = subprocess.run([sys.executable, "-m", "models", "--manifest", str(manifest), "--varaint", "a"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert typo.returncode == 21 and 'Perhaps you meant "--variant"' in typo.stderr


def test_xet_transport_hashes_what_hf_xet_assembled(
    runner: Runner, hub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in speaks no Xet protocol: hf_xet itself is replaced, the hub's metadata stays real. What is tested
    is this downloader's side: the xet path is taken only when asked, and its result is hashed and verified."""
    f = hub.add("org/model", "big.bin", blob(40, MIB))
    real_resolve = hub_mod.resolve
    monkeypatch.setattr(hub_mod, "resolve", lambda *a, **k: dataclasses.replace(real_resolve(*a, **k), xet=object()))
    monkeypatch.setattr(hub_mod, "xet_available", lambda: True)
    assembled: list[Path] = []

    def fake_xet(remote: hub_mod.Remote, incomplete: Path, name: str) -> None:
        assembled.append(incomplete)
        incomplete.write_bytes(corrupt if assembled[1:] else f.content)

    corrupt = b"\0" * len(f.content)
    monkeypatch.setattr(hub_mod, "fetch_xet", fake_xet)
    manifest = write_manifest(runner.tmp, entry("big", "org/model", "big.bin"))
    [outcome] = runner.run(manifest, "--transport", "xet")
    assert outcome.target.read_bytes() == f.content and hub.gets("cdn") == []
    outcome.target.unlink()
    with pytest.raises(errors.IntegrityError, match="bad file was deleted"):
        runner.run(manifest, "--transport", "xet")
    assert leftovers(runner.dest) == []


def test_a_xet_file_goes_through_huggingface_hubs_xet_client_with_the_token_for_the_hub(
    runner: Runner, hub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only hf_xet's transfer itself (its CAS protocol) is replaced; around it all is real: the Xet metadata in the
    hub's HEAD answer, huggingface_hub's xet_get asking the hub's token route with the user's token (which the
    CDN never sees), and its call into hf_xet, checked against hf_xet's declared signature. What is replaced is
    the hf_xet entry point huggingface_hub 0.x (the pin) calls; 2.x calls another (XetSession)."""
    import hf_xet

    f = hub.add("gated/model", "big.bin", blob(42, MIB), xet=True)
    hub.gate("gated/model", "hf_good")
    real = hf_xet.download_files
    calls: list[inspect.BoundArguments] = []

    def assemble(*args: Any, **kwargs: Any) -> None:
        call = inspect.signature(real).bind(*args, **kwargs)  # a TypeError if the two packages disagree
        calls.append(call)
        for info in call.arguments["files"]:
            assert info.hash == f.xet_hash
            Path(info.destination_path).write_bytes(f.content)
        for update in call.arguments["progress_updater"] or ():
            update(len(f.content))

    monkeypatch.setattr(hf_xet, "download_files", assemble)
    manifest = write_manifest(runner.tmp, entry("big", "gated/model", "big.bin"))
    [outcome] = runner.run(manifest, "--transport", "xet", env={"HF_TOKEN": "hf_good"})
    assert outcome.target.read_bytes() == f.content and hub.gets("cdn") == []
    assert state.read(outcome.target).verified_against == "hub LFS sha256"  # type: ignore[union-attr]
    [call] = calls
    assert call.arguments["endpoint"] == f"{hub.cdn_url}/cas" and call.arguments["token_info"][0] == hub.XET_TOKEN
    [token_request] = [r for r in hub.requests if "/xet-read-token/" in r.path]
    assert token_request.server == "hub" and token_request.authorization == "Bearer hf_good"

    # Without --transport xet the same file comes over plain HTTP, and the token stays on the hub.
    outcome.target.unlink()
    [again] = runner.run(manifest, env={"HF_TOKEN": "hf_good"})
    assert again.action == "downloaded" and [r.authorization for r in hub.gets("cdn")] == [None]
    assert len(calls) == 1


def test_a_failure_inside_hf_xet_is_a_clear_error_that_leaves_nothing(
    runner: Runner, hub: HubStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hf_xet

    f = hub.add("org/model", "big.bin", blob(44, MIB), xet=True)

    def fail(*args: Any, **kwargs: Any) -> None:
        for info in kwargs.get("files", args[0] if args else ()):
            Path(info.destination_path).write_bytes(f.content[:1000])  # what a reconstruction leaves when it stops
        raise RuntimeError("Task error: File reconstruction error: CAS Client Error: HTTP status client error (404)")

    monkeypatch.setattr(hf_xet, "download_files", fail)
    with pytest.raises(errors.NetworkError, match="hf_xet could not download") as info:
        runner.run(write_manifest(runner.tmp, entry("big", "org/model", "big.bin")), "--transport", "xet")
    assert "CAS Client Error" in info.value.render() and "--transport http" in info.value.render()
    assert runner.sleeps == [] and leftovers(runner.dest) == []


def test_ctrl_c_stops_promptly_keeps_the_partial_and_the_next_run_resumes(tmp_path: Path, hub: HubStub) -> None:
    f = hub.add("org/model", "big.bin", blob(41, 24 * MIB))
    # The first transfer sends 12 MiB at full speed, then 64 KiB every 5 s: the Ctrl-C lands mid-body however loaded
    # the machine is, and the client's next read (1 MiB or more) cannot finish for over a minute, so the run must
    # stop without waiting for it. The resumed run is not slowed.
    hub.fault("cdn", f.sha256, "slow", after=12 * MIB, delay=5.0, times=1)
    manifest = write_manifest(tmp_path, entry("big", "org/model", "big.bin"))
    dest = tmp_path / "dest"
    env = {"HF_ENDPOINT": hub.endpoint, "PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", ""),
           "HF_HUB_DOWNLOAD_TIMEOUT": "120"}  # a slow link, not a dead one: no read times out
    cmd = [sys.executable, "-m", "models", "--manifest", str(manifest), "--dest", str(dest), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = dest / ".models" / "partial" / f"big.bin.{f.sha256[:16]}.part"
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size >= 10 * MIB) and time.monotonic() < deadline:
        assert proc.poll() is None, f"the download ended before it could be interrupted: {proc.communicate()}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "partial downloads are kept" in err and "Traceback" not in err
    kept = partial.stat().st_size
    assert 10 * MIB <= kept < len(f.content)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert (dest / "diffusion_models" / "big.bin").read_bytes() == f.content
    assert hub.gets("cdn")[-1].range == f"bytes={kept}-"
