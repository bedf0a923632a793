"""The pieces that decide whether bytes are trusted: state records, streamed hashing, expectations, error mapping,
the free-space plan and the listing. No network: hub answers are built from huggingface_hub's own error parsing."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub", reason="the models downloader needs huggingface_hub (nox -s tests installs it)")

import requests  # noqa: E402 - huggingface_hub 0.x's HTTP library (constraints.txt pins 0.36.0)
from huggingface_hub import errors as hf_errors  # noqa: E402
from huggingface_hub.utils import hf_raise_for_status  # noqa: E402

from models import download, errors, fsutil, hfcompat, hub, listing, manifest, options, state  # noqa: E402


def entry(**kw: object) -> manifest.ModelFile:
    base: dict[str, object] = dict(name="w", folder="diffusion_models", filename="w.bin", variants=("a",),
                                   status="unverified", repo="org/model", path="w.bin")
    base.update(kw)
    return manifest.ModelFile(**base)  # type: ignore[arg-type]


def remote(etag: str | None = None, size: int | None = 10) -> hub.Remote:
    return hub.Remote(url="https://cdn/x", size=size, commit="c" * 40, etag=etag, headers={})


# --- state records --------------------------------------------------------------------------------------------------


def test_state_record_is_valid_until_size_mtime_or_entry_change(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    e = entry()
    assert state.check(target, e) == (False, "missing")
    target.write_bytes(b"x" * 10)
    assert state.check(target, e)[1] == "present, no verified-state record"
    state.write(target, e, "a" * 64, "c" * 40, "hub LFS sha256")
    assert state.check(target, e) == (True, "verified")
    assert state.record_path(target).name == ".w.bin.verified.json"

    assert state.check(target, entry(revision="v2"))[0] is False  # the manifest now means other bytes
    assert state.check(target, entry(sha256="b" * 64))[1] == "manifest sha256 differs from the verified one"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert state.check(target, e)[1] == "modified since verified (mtime changed)"
    target.write_bytes(b"x" * 11)
    assert state.check(target, e)[1].startswith("size changed")


def test_a_broken_record_is_ignored(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"
    target.write_bytes(b"x")
    state.record_path(target).write_text("{not json")
    assert state.read(target) is None and state.check(target, entry())[0] is False


# --- streamed hashing -----------------------------------------------------------------------------------------------


def test_hashing_writer_hashes_what_the_file_holds_even_after_a_rewind(tmp_path: Path) -> None:
    path = tmp_path / "p.part"
    counted: list[int] = []
    with path.open("w+b") as f:
        writer = download.HashingWriter(f, path, fsutil.Digests(), counted.append)
        writer.write(b"stale bytes from a range the server ignored")
        writer.seek(0)
        writer.truncate()  # what http_get does when it gets 200 instead of 206
        writer.write(b"fresh ")
        writer.write(b"content")
        writer.flush()
    assert path.read_bytes() == b"fresh content"
    assert writer.digests.sha256.hexdigest() == hashlib.sha256(b"fresh content").hexdigest()
    assert sum(counted) == len(b"fresh content")  # the progress bar went back too


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    data = b"hello\n"
    d = fsutil.Digests(git_size=len(data))
    d.update(data)
    assert d.git_sha1 is not None and d.git_sha1.hexdigest() == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_sha256_file_streams(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(os.urandom(3 * fsutil.CHUNK + 5))
    assert fsutil.sha256_file(p).sha256.hexdigest() == hashlib.sha256(p.read_bytes()).hexdigest()


# --- what the bytes must hash to ------------------------------------------------------------------------------------


def test_expectation_prefers_manifest_then_hub_lfs_then_git_then_prefix() -> None:
    lfs = "d" * 64
    assert download.expectation(entry(sha256=lfs), remote(lfs)).against == "manifest sha256"
    assert download.expectation(entry(), remote(lfs)) == download.Expectation("hub LFS sha256", sha256=lfs)
    assert download.expectation(entry(), remote("e" * 40)).git_sha1 == "e" * 40
    url_entry = entry(repo=None, path=None, url="https://x/y.pth", sha256_prefix="d3bd2b23")
    assert download.expectation(url_entry, remote(None)).sha256_prefix == "d3bd2b23"
    with pytest.raises(errors.IntegrityError, match="does not match the hub's"):
        download.expectation(entry(sha256="f" * 64), remote(lfs))
    with pytest.raises(errors.IntegrityError, match="cannot be verified"):
        download.expectation(entry(), remote('W/"not-a-hash"'))


# --- hub errors -> messages -----------------------------------------------------------------------------------------


def hub_error(status: int, code: str | None = None) -> Exception:
    url = "https://huggingface.co/org/model/resolve/main/w.bin"
    headers = {"X-Error-Code": code} if code else {}
    response = requests.Response()
    response.status_code, response.url, response._content = status, url, b""
    response.headers.update(headers)
    response.request = requests.Request("HEAD", url).prepare()
    try:
        hf_raise_for_status(response)
    except Exception as e:  # noqa: BLE001 - the real exception huggingface_hub raises for this answer
        return e
    raise AssertionError("no error raised")


@pytest.mark.parametrize(
    ("status", "code", "kind", "retry", "text"),
    [
        (401, "GatedRepo", errors.AccessError, False, "set HF_TOKEN"),
        (403, "GatedRepo", errors.AccessError, False, "accept the model's terms"),
        (404, "EntryNotFound", errors.NotFoundError, False, "fix its path"),
        (404, "RepoNotFound", errors.NotFoundError, False, "fix its repo"),
        (404, "RevisionNotFound", errors.NotFoundError, False, "fix its revision"),
        (503, None, errors.NetworkError, True, "HTTP 503"),
        (429, None, errors.NetworkError, True, "HTTP 429"),
    ],
)
def test_classify_maps_hub_answers(status: int, code: str | None, kind: type, retry: bool, text: str) -> None:
    failure = hub.classify(hub_error(status, code), entry(), "https://huggingface.co")
    assert isinstance(failure.error, kind) and failure.retry is retry
    assert text in failure.error.render()


def test_classify_network_and_disk_errors() -> None:
    cut = requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(3 bytes read, 7 more expected)")
    for exc in (cut, requests.ConnectionError("refused"), requests.ReadTimeout("read timed out"),
                hub.ShortBody("closed after 3 of 10 bytes")):
        dropped = hub.classify(exc, entry(), "e")
        assert dropped.retry and isinstance(dropped.error, errors.NetworkError), exc
    offline = hub.classify(hf_errors.OfflineModeIsEnabled("offline mode is enabled"), entry(), "e")
    assert not offline.retry and isinstance(offline.error, errors.ConfigError)
    assert "HF_HUB_OFFLINE" in offline.error.render()
    full = hub.classify(OSError(28, "No space left on device"), entry(), "e")
    assert not full.retry and isinstance(full.error, errors.DiskSpaceError)
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as a network problem
        hub.classify(ZeroDivisionError(), entry(), "e")


# --- the Xet transport -----------------------------------------------------------------------------------------------


def test_xet_transport_that_cannot_work_fails_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    assert hfcompat.xet_available()  # hf-xet is a dependency of the pinned huggingface_hub on this platform
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    assert not hfcompat.xet_available()
    with pytest.raises(errors.ConfigError, match="--transport xet") as info:
        download.run(make_options(tmp_path, "--transport", "xet"), sleep=lambda s: None)
    assert info.value.exit_code == 21
    assert "HF_HUB_DISABLE_XET is set" in info.value.render() and "--transport http" in info.value.render()
    assert not (tmp_path / "dest").exists()


# --- the free-space plan and the listing ----------------------------------------------------------------------------


def make_options(tmp_path: Path, *argv: str) -> options.Options:
    return options.resolve(["--dest", str(tmp_path / "dest"), *argv], {}, stored_token=lambda: None,
                           default_token_file=tmp_path / "none")


def test_disk_check_counts_remaining_bytes_plus_headroom(tmp_path: Path) -> None:
    opts = make_options(tmp_path)
    files = list(opts.manifest.select(["fp8"]))[:2]
    sizes = {files[0].name: 5 << 30, files[1].name: 1 << 30}
    remotes = {f.name: remote("a" * 64, sizes[f.name]) for f in files}
    exps = {f.name: download.expectation(f, remotes[f.name]) for f in files}
    d = download.Downloader(opts, disk_free=lambda p: 6 << 30)
    with pytest.raises(errors.DiskSpaceError, match=f"{6 << 30} bytes to download plus headroom"):
        d._check_disk(files, remotes, exps)
    partial = d.partial_path(files[0], exps[files[0].name])
    partial.parent.mkdir(parents=True)
    with partial.open("wb") as f:
        f.truncate(1 << 30)  # a sparse 1 GiB partial: counts as done
    assert d._check_disk(files, remotes, exps) == 5 << 30


def test_listing_offline_shows_every_variant_and_file(tmp_path: Path) -> None:
    opts = make_options(tmp_path, "--list", "--offline", "--variant", "pose-openmmlab")
    data = listing.collect(opts)
    assert data["selected_variants"] == ["pose-openmmlab"]
    assert set(data["variants"]) == {"fp8", "fp16", "gguf-q8_0", "gguf-q4_k_m", "pose-onnx", "pose-openmmlab"}
    selected = [r["name"] for r in data["files"] if r["selected"]]
    assert selected == ["dwpose-dw-ll-ucoco-384-pth", "yolox-l-8x8-300e-coco-pth"]
    assert all(r["state"] == "missing" for r in data["files"])
    text = listing.render(data)
    assert "*  fp8" in text and " > pose-openmmlab" in text and "to download" in text
    assert io.StringIO(text).read().count("\n") > len(data["files"])
