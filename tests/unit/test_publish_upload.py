"""Classifying an index's refusal of an upload: each cause gets its own clear message."""

from __future__ import annotations

from wheels.publish.upload import explain_response, is_pypi

WHEEL = "canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl"


def explain(status: int, reason: str, text: str = "", url: str = "https://upload.pypi.org/legacy/", secrets=()):  # noqa: ANN001, ANN201
    return explain_response(status, reason, text, url=url, filename=WHEEL, secrets=tuple(secrets))


def test_pypi_local_version_answers_are_recognised() -> None:
    # Warehouse puts its message in the status line; twine shows it as the reason. Both wordings it has used:
    for reason in (
        "The use of local versions in <Version('0.1.0+cu124torch2.5')> is not allowed. "
        "See https://packaging.python.org/specifications/core-metadata for more information.",
        "'0.1.0+cu124torch2.5' is an invalid value for Version. Error: Can't use PEP 440 local versions. "
        "See https://packaging.python.org/specifications/core-metadata for more information.",
    ):
        err = explain(400, reason)
        text = err.render()
        assert "does not accept local versions" in text
        assert "PyPI" in text and "private index" in text
        assert "--repository-url" in text and "--static" in text


def test_wrong_credentials() -> None:
    err = explain(403, "Forbidden", url="http://127.0.0.1:8080/")
    assert "HTTP 403" in err.what and "credentials" in err.what
    assert "TWINE_USERNAME" in (err.fix or "")
    assert "credentials" in explain(401, "Unauthorized").what


def test_existing_file_answers() -> None:
    pypiserver = explain(
        400, "Bad Request", f"Package '{WHEEL}' already exists!\n  You may start server with `--overwrite` option."
    )
    pypi = explain(400, "This filename has already been used, use a different version.")
    for err in (pypiserver, pypi):
        assert "already holds a file named" in err.what


def test_other_answers_keep_the_index_words_without_secrets() -> None:
    err = explain(
        400, "Bad Request", "Invalid value for classifiers; user alice pw hunter2-secret", secrets=["hunter2-secret"]
    )
    text = err.render()
    assert "HTTP 400" in text and "classifiers" in text and "hunter2" not in text
    assert "too large" in explain(413, "Request Entity Too Large").what


def test_masked_upload_url_in_messages() -> None:
    err = explain(403, "Forbidden", url="https://alice:hunter2-secret@index.example/")
    assert "hunter2" not in err.render() and "https://***@index.example/" in err.render()


def test_is_pypi() -> None:
    assert is_pypi("https://upload.pypi.org/legacy/") and is_pypi("https://test.pypi.org/legacy/")
    assert not is_pypi("https://pypi.internal.example/") and not is_pypi("http://127.0.0.1:8080/")
