"""Publish settings: matrix < environment < command line, and the pip command of the proof."""

from __future__ import annotations

from pathlib import Path

import pytest

from wheels.errors import ConfigError
from wheels.publish.settings import resolve_publish, resolve_serve, simple_url_for
from wheels.publish.verify import Expected, download_argv, groups


def test_defaults(tmp_path: Path) -> None:
    opts = resolve_publish([], {}, cwd=tmp_path)
    assert opts.wheelhouse == tmp_path / "wheelhouse"
    assert opts.index.data_dir == tmp_path / ".cache" / "index"  # the matrix's index-dir
    assert opts.index.port == 0
    assert opts.repository_url is None and opts.static_dir is None and opts.targets == ()


def test_environment_then_command_line(tmp_path: Path) -> None:
    env = {
        "WHEELS_INDEX_DIR": "/srv/index",
        "WHEELS_INDEX_PORT": "8765",
        "TWINE_REPOSITORY_URL": "https://env.example/",
        "WHEELHOUSE": "/srv/wh",
    }
    opts = resolve_publish(["canary*"], env, cwd=tmp_path)
    assert opts.index.data_dir == Path("/srv/index") and opts.index.port == 8765
    assert opts.repository_url == "https://env.example/" and opts.wheelhouse == Path("/srv/wh")
    assert opts.targets == ("canary*",)
    opts = resolve_publish(
        ["--repository-url", "https://cli.example/", "--port", "9000", "--index-dir", "d"], env, cwd=tmp_path
    )
    assert opts.repository_url == "https://cli.example/" and opts.index.port == 9000
    assert opts.index.data_dir == tmp_path / "d"


def test_static_wins_over_twine_repository_url_from_the_environment(tmp_path: Path) -> None:
    opts = resolve_publish(["--static", "site"], {"TWINE_REPOSITORY_URL": "https://env.example/"}, cwd=tmp_path)
    assert opts.static_dir == tmp_path / "site" and opts.repository_url is None


def test_static_and_repository_url_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not allowed with"):
        resolve_publish(["--static", "x", "--repository-url", "https://a.example/"], {}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--repositry-url", "x"], {}, 'Perhaps you meant "--repository-url"'),
        (["--port", "http"], {}, "must be a port number"),
        ([], {"WHEELS_INDEX_PORT": "70000"}, "between 0 and 65535"),
        (["--repository-url", "upload.example.com"], {}, "not an http"),
        ([], {"WHEELS_INDEX_DRI": "x"}, 'Perhaps you meant "WHEELS_INDEX_DIR"'),
    ],
)
def test_bad_settings(tmp_path: Path, argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_publish(argv, env, cwd=tmp_path)


def test_bad_url_error_masks_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_publish(["--repository-url", "ftp://alice:hunter2-secret@h/"], {}, cwd=tmp_path)
    assert "hunter2" not in info.value.render()


def test_serve_options(tmp_path: Path) -> None:
    opts = resolve_serve(["--port", "8080", "--no-publish"], {}, cwd=tmp_path)
    assert opts.index.port == 8080 and not opts.publish


@pytest.mark.parametrize(
    ("upload", "simple"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/simple/"),
        ("https://nexus.example/repository/pypi-hosted/", "https://nexus.example/repository/pypi-hosted/simple/"),
        ("https://a.example/api/pypi/pypi-local", "https://a.example/api/pypi/pypi-local/simple/"),
        ("https://upload.pypi.org/legacy/", "https://pypi.org/simple/"),
        ("https://test.pypi.org/legacy/", "https://test.pypi.org/simple/"),
        ("https://u:p@idx.example/legacy/", "https://idx.example/simple/"),
    ],
)
def test_simple_url_for(upload: str, simple: str) -> None:
    assert simple_url_for(upload) == simple


def test_pip_download_argv_pins_name_version_and_tags(tmp_path: Path) -> None:
    e = Expected(
        "canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl", "0" * 64, "https://pypi.org/simple"
    )
    argv = download_argv("py", [e], "http://127.0.0.1:1/simple/", tmp_path)
    joined = " ".join(argv)
    assert argv[:4] == ["py", "-m", "pip", "download"]
    for part in (
        "--isolated --no-cache-dir",
        "--no-deps --only-binary :all:",
        "--index-url http://127.0.0.1:1/simple/ --extra-index-url https://pypi.org/simple",
        "--python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_34_x86_64",
    ):
        assert part in joined
    assert argv[-1] == "canary==0.1.0+cu124torch2.5"


def test_pip_download_argv_for_a_pure_wheel(tmp_path: Path) -> None:
    argv = download_argv("py", [Expected("demo-1.0-py3-none-any.whl", "0" * 64, None)], "file:///x/simple/", tmp_path)
    assert "--extra-index-url" not in argv and "--platform" not in argv and "--abi" not in argv
    assert argv[-1] == "demo==1.0"


def test_wheels_sharing_tags_and_extra_index_share_one_pip_run(tmp_path: Path) -> None:
    a = Expected("flash_attn-2.7.4.post1+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl", "0" * 64, "https://t/")
    b = Expected("mmcv-2.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl", "0" * 64, "https://t/")
    c = Expected("mmcv-2.1.0+cu124torch2.5-cp312-cp312-manylinux_2_34_x86_64.whl", "0" * 64, "https://t/")
    d = Expected("canary-0.1.0+cu121torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl", "0" * 64, "https://t121/")
    assert groups([a, b, c, d]) == [[a, b], [c], [d]]
    argv = download_argv("py", [a, b], "http://i/simple/", tmp_path)
    assert argv[-2:] == ["flash-attn==2.7.4.post1+cu124torch2.5", "mmcv==2.1.0+cu124torch2.5"]
