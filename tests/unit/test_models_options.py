"""Settings: manifest < environment < command line; the token's sources and precedence; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import options
from models.errors import ConfigError


def resolve(argv: list[str], env: dict[str, str] | None = None, tmp: Path | None = None, stored: str | None = None
            ) -> options.Options:
    return options.resolve(argv, env or {}, cwd=tmp, stored_token=lambda: stored,
                           default_token_file=(tmp or Path("/nonexistent")) / "no-secret")


def test_defaults_and_relative_dest(tmp_path: Path) -> None:
    opts = resolve(["--dest", "models"], tmp=tmp_path)
    assert opts.dest == tmp_path / "models"
    assert opts.variants == ("fp8",) and opts.endpoint == "https://huggingface.co"
    assert opts.jobs == 4 and opts.retries == 5 and opts.transport == "http" and opts.token is None


def test_cli_beats_environment(tmp_path: Path) -> None:
    env = {"MODELS_DEST": "/env/models", "MODELS_VARIANTS": "fp16", "MODELS_JOBS": "2",
           "HF_ENDPOINT": "https://mirror.example/"}
    opts = resolve([], env, tmp_path)
    assert opts.dest == Path("/env/models") and opts.variants == ("fp16",) and opts.jobs == 2
    assert opts.endpoint == "https://mirror.example"
    opts = resolve(["--dest", "/cli", "--variant", "gguf-q8_0,pose-openmmlab", "--jobs", "8"], env, tmp_path)
    assert opts.dest == Path("/cli") and opts.variants == ("gguf-q8_0", "pose-openmmlab") and opts.jobs == 8


def test_token_precedence_env_then_secret_file_then_stored_login(tmp_path: Path) -> None:
    secret = tmp_path / "no-secret"  # the default secret path in these tests
    assert resolve(["--list"], tmp=tmp_path, stored="hf_stored").token_source == "stored login (hf auth login)"
    secret.write_text("hf_from_buildkit\n")
    opts = resolve(["--list"], tmp=tmp_path, stored="hf_stored")
    assert (opts.token, opts.token_source) == ("hf_from_buildkit", str(secret))
    opts = resolve(["--list"], {"HF_TOKEN": "hf_env"}, tmp_path, stored="hf_stored")
    assert (opts.token, opts.token_source) == ("hf_env", "HF_TOKEN")
    assert "hf_env" not in repr(opts)  # a token never reaches a log line through repr


def test_explicit_token_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        resolve(["--list"], {"MODELS_TOKEN_FILE": str(tmp_path / "missing")}, tmp_path)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "No destination folder"),
        (["--dest", "d", "--varaint", "fp8"], {}, 'Perhaps you meant "--variant"'),
        (["--dest", "d", "--variant", "fp9"], {}, 'Perhaps you meant "fp8"'),
        (["--dest", "d"], {"MODELS_DSET": "x"}, 'Perhaps you meant "MODELS_DEST"'),
        (["--dest", "d", "--jobs", "0"], {}, "at least 1"),
        (["--dest", "d", "--retries", "many"], {}, "whole number"),
        (["--dest", "d", "--json"], {}, "only apply to --list"),
        (["--dest", "d"], {"MODELS_TRANSPORT": "ftp"}, 'Unknown transport "ftp"'),
        (["--dest", "d", "--endpoint", "mirror.local"], {}, "must be an http(s) URL"),
        (["--dest", "d", "--manifest", "nope.toml"], {}, "does not exist"),
    ],
)
def test_bad_settings_are_explained(tmp_path: Path, argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(argv, env, tmp_path)
