"""Credentials: precedence (URL, environment, keyring) and masking out of every message."""

from __future__ import annotations

import pytest

from wheels.publish.credentials import Credentials, from_environment, mask_url, scrub, strip_userinfo


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://alice:s3cret@index.example/simple/", "https://***@index.example/simple/"),
        ("https://token@index.example/", "https://***@index.example/"),
        ("http://u:p%40ss@127.0.0.1:8080/", "http://***@127.0.0.1:8080/"),
        ("https://index.example/simple/", "https://index.example/simple/"),
        (
            "see https://a:b@x.example/ and http://c:d@y.example/z",
            "see https://***@x.example/ and http://***@y.example/z",
        ),
        ("mailto-like user@host is not a URL", "mailto-like user@host is not a URL"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_strip_userinfo_unquotes_and_keeps_port_and_path() -> None:
    clean, user, password = strip_userinfo("https://al%20ice:p%40ss@index.example:8443/a/b/?q=1")
    assert (clean, user, password) == ("https://index.example:8443/a/b/?q=1", "al ice", "p@ss")
    assert strip_userinfo("https://index.example/") == ("https://index.example/", None, None)


def test_scrub_removes_secret_in_plain_and_quoted_forms() -> None:
    secret = "p@ss/w rd+1"
    text = f"auth failed for {secret} at https://u:{secret}@h/ (quoted: p%40ss%2Fw%20rd%2B1, plus: p%40ss%2Fw+rd%2B1)"
    out = scrub(text, [secret])
    assert "p@ss" not in out and "p%40ss" not in out
    assert "https://***@h/" in out


def test_scrub_leaves_short_secrets_alone() -> None:
    assert scrub("a bc d", ["bc"]) == "a bc d"


def test_credentials_repr_hides_password() -> None:
    creds = Credentials("alice", "hunter2-secret")
    assert "hunter2" not in repr(creds) and "hunter2" not in str(creds)
    assert creds.secrets() == ("hunter2-secret",)


def _no_keyring(service: str, username: str | None) -> tuple[str, str] | None:
    raise AssertionError("the keyring must not be asked when the environment has credentials")


def test_environment_credentials_win_over_keyring() -> None:
    env = {"TWINE_USERNAME": "alice", "TWINE_PASSWORD": "pw-from-env"}
    creds = from_environment("https://index.example/", env, lookup=_no_keyring)
    assert creds == Credentials("alice", "pw-from-env", source="environment")


def test_url_userinfo_wins_over_environment() -> None:
    env = {"TWINE_USERNAME": "alice", "TWINE_PASSWORD": "pw-from-env"}
    creds = from_environment("https://bob:pw-in-url@index.example/", env, lookup=_no_keyring)
    assert (creds.username, creds.password) == ("bob", "pw-in-url")


def test_keyring_is_asked_with_the_clean_url_and_the_known_user() -> None:
    asked: list[tuple[str, str | None]] = []

    def lookup(service: str, username: str | None) -> tuple[str, str] | None:
        asked.append((service, username))
        return (username or "kr-user", "pw-from-keyring")

    creds = from_environment("https://index.example/", {"TWINE_USERNAME": "alice"}, lookup=lookup)
    assert asked == [("https://index.example/", "alice")]
    assert creds == Credentials("alice", "pw-from-keyring", source="keyring")
    creds = from_environment("https://index.example/", {}, lookup=lookup)
    assert creds is not None and creds.username == "kr-user"


def test_no_credentials_anywhere() -> None:
    assert from_environment("https://index.example/", {}, lookup=lambda s, u: None) is None
    assert from_environment("https://index.example/", {"TWINE_PASSWORD": "x"}, lookup=None) is None
