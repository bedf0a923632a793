"""The preflight's verdicts: which file satisfies a locked pin, and why none does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from image.reqs import Pin, target_tags
from image.wheelsrc import File, HashCache, check_folders, judge, raise_missing
from wheels.errors import ImageError

TAGS = target_tags("3.11", "x86_64-manylinux_2_35")
GOOD, OTHER = "1" * 64, "2" * 64


def pin(name: str = "torch", version: str = "2.5.1", *hashes: str) -> Pin:
    return Pin(name, version, hashes or (GOOD,))


def test_the_file_with_the_locked_hash_and_fitting_tags_wins() -> None:
    files = [
        File("torch-2.5.1-cp311-cp311-manylinux_2_36_x86_64.whl", "a", GOOD),  # too new a glibc
        File("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", "b", GOOD),
    ]
    verdict = judge(pin(), files, TAGS)
    assert verdict.ok and verdict.file is files[1]


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ([], "no file for it"),
        ([File("torch-2.5.1.tar.gz", "x", GOOD)], "only its sdist"),
        ([File("torch-2.5.1-cp311-cp311-manylinux_2_17_aarch64.whl", "x", GOOD)], "do not fit"),
        ([File("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", "x", OTHER)], "another sha256 than the lock's"),
        ([File("torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl", "x", OTHER)], "no file for it"),
    ],
)
def test_why_a_pin_is_not_satisfied(files: list[File], problem: str) -> None:
    verdict = judge(pin(), files, TAGS)
    assert not verdict.ok and problem in (verdict.problem or "")


def test_folders_are_scanned_recursively_and_hashes_remembered(tmp_path: Path) -> None:
    (tmp_path / "built").mkdir()
    wheel = tmp_path / "built" / "chumpy-0.70-py3-none-any.whl"
    wheel.write_bytes(b"pretend wheel")
    digest = hashlib.sha256(b"pretend wheel").hexdigest()
    (tmp_path / "README.txt").write_text("not a package")
    cache = HashCache(tmp_path / "hashes.json")
    (verdict,) = check_folders([pin("chumpy", "0.70", digest)], [tmp_path], TAGS, cache)
    assert verdict.ok and verdict.file is not None and verdict.file.location == str(wheel)
    assert (tmp_path / "hashes.json").exists()
    again = HashCache(tmp_path / "hashes.json")
    assert again.data[str(wheel.resolve())][2] == digest


def test_the_missing_wheel_message_names_every_pin_and_the_next_step() -> None:
    verdicts = [
        judge(pin("canary", "0.1.0+cu124torch2.5"), [], TAGS),
        judge(pin("chumpy", "0.70"), [File("chumpy-0.70.tar.gz", "x", GOOD)], TAGS),
        judge(pin("torch"), [File("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", "x", GOOD)], TAGS),
    ]
    with pytest.raises(ImageError) as e:
        raise_missing(verdicts, {"canary"}, "the embedded index", Path("image/requirements.lock"))
    text = e.value.render()
    assert "2 of the 3 locked wheel(s) are not available" in text
    assert "canary==0.1.0+cu124torch2.5: no file for it" in text
    assert "chumpy==0.70: only its sdist is available, and the image never compiles" in text
    assert "nothing was built" in text and "nox -s wheels" in text and "nox -s lock" in text
    assert text.index("canary") < text.index("chumpy")  # ours first


def test_nothing_missing_is_silent() -> None:
    ok = judge(pin(), [File("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", "x", GOOD)], TAGS)
    raise_missing([ok], set(), "x", Path("lock"))


class FakeIndex:
    """Stands in for wheels.publish.remote.IndexReader: project -> links to local files."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        self.files = files

    def links(self, project: str) -> list[object]:
        from wheels.publish.simple import Link

        return [
            Link(p.name, p.as_uri(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in self.files.get(project, [])
        ]


def test_mirror_downloads_only_what_is_missing_verified_and_leaves_the_rest_to_the_preflight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from image import wheelsrc

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    wanted = upstream / "six-1.17.0-py2.py3-none-any.whl"
    wanted.write_bytes(b"six")
    sdist = upstream / "nocompile-0.1.tar.gz"
    sdist.write_bytes(b"sdist")
    have = tmp_path / "wheelhouse" / "torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl"
    have.parent.mkdir()
    have.write_bytes(b"torch")
    index = FakeIndex({"six": [wanted], "nocompile": [sdist]})
    monkeypatch.setattr(wheelsrc, "reader_for", lambda url: index)
    pins = [
        Pin("six", "1.17.0", (hashlib.sha256(b"six").hexdigest(),)),
        Pin("torch", "2.5.1", (hashlib.sha256(b"torch").hexdigest(),)),  # already in a present folder
        Pin("nocompile", "0.1", (hashlib.sha256(b"sdist").hexdigest(),)),  # only an sdist upstream
    ]
    dest = tmp_path / "mirror"
    cache = HashCache(tmp_path / "hashes.json")
    fetched = wheelsrc.mirror(pins, ["https://pypi.invalid/simple"], dest, TAGS, cache, present=[have.parent])
    assert fetched == [wanted.name] and (dest / wanted.name).read_bytes() == b"six"
    assert wheelsrc.mirror(pins, ["https://pypi.invalid/simple"], dest, TAGS, cache, present=[have.parent]) == []
    verdicts = check_folders(pins, [dest, have.parent], TAGS, cache)
    assert [v.ok for v in verdicts] == [True, True, False]


def test_an_index_without_hashes_is_asked_for_the_pins_own_files_only() -> None:
    from image.wheelsrc import check_index

    class NoHashes:
        downloaded: list[str] = []

        def links(self, project: str) -> list[object]:
            from wheels.publish.simple import Link

            return [
                Link("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", "http://i/torch-2.5.1.whl", None),
                Link("torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl", "http://i/torch-2.4.0.whl", None),
            ]

        def sha256(self, link: object) -> str:
            self.downloaded.append(link.filename)  # type: ignore[attr-defined]
            return GOOD

    reader = NoHashes()
    (verdict,) = check_index([pin()], reader, TAGS)
    assert verdict.ok and reader.downloaded == ["torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl"]
