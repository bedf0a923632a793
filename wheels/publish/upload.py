"""Uploading one wheel through the legacy upload API (twine's Repository), and explaining every refusal.

twine's own ``upload`` command prints and raises generic HTTP errors; here each response is classified into one
clear :class:`PublishError`: unreachable, wrong credentials, local versions refused (PyPI), a different file under
the same name, or anything else with the index's own words. Credentials never reach a message (:func:`scrub`).
"""

from __future__ import annotations

import contextlib
import io
import re
import urllib.parse
from pathlib import Path

from ..errors import PublishError
from .credentials import Credentials, mask_url, scrub

PYPI_UPLOAD_HOSTS = ("upload.pypi.org", "test.pypi.org", "pypi.org", "pypi.python.org", "testpypi.python.org")

_LOCAL_VERSION = re.compile(r"local version|Can't use PEP 440 local", re.IGNORECASE)
_EXISTS = re.compile(r"already exists|File already exists|filename has already been used", re.IGNORECASE)


def is_pypi(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in PYPI_UPLOAD_HOSTS


def local_version_refusal(url: str, filenames: list[str]) -> PublishError:
    shown = ", ".join(filenames[:3]) + (" ..." if len(filenames) > 3 else "")
    return PublishError(
        f"{mask_url(url)} does not accept local versions, and these wheels have them: {shown}",
        why=(
            'PyPI (and TestPyPI) refuse PEP 440 local version labels such as "+cu124torch2.5"; our labels name the '
            "CUDA and torch build a wheel was made for, so they cannot be dropped"
        ),
        fix=(
            "publish to a private index instead: the embedded one (`nox -s publish`), any upload-API index "
            "(`-- --repository-url URL`: devpi, Artifactory, Nexus, CodeArtifact, pypiserver) or a static index "
            "for object storage (`-- --static DIR`)"
        ),
    )


def explain_response(
    status: int, reason: str, text: str, *, url: str, filename: str, secrets: tuple[str, ...]
) -> PublishError:
    """One clear error for a refused upload. Pure: unit tests feed it PyPI's and pypiserver's real answers."""
    body = scrub(f"{reason} {text}".strip(), secrets)
    short = body if len(body) < 400 else body[:400] + " ..."
    where = mask_url(url)
    if status == 400 and _LOCAL_VERSION.search(body):
        return local_version_refusal(url, [filename])
    if status in (401, 403):
        meaning = "no or wrong credentials" if status == 401 else "wrong credentials, or no permission to upload"
        return PublishError(
            f"{where} refused the upload of {filename}: HTTP {status} ({meaning})",
            why=short or None,
            fix=(
                "set TWINE_USERNAME and TWINE_PASSWORD (or store them with `keyring set URL USER`) for this index; "
                "for the embedded index: WHEELS_INDEX_USERNAME/WHEELS_INDEX_PASSWORD, or the generated credentials.json"
            ),
        )
    if status in (400, 409) and _EXISTS.search(body):
        return PublishError(
            f"{where} already holds a file named {filename}, and it was not there a moment ago",
            why="another upload raced this one, or the index hides the file from its simple pages",
            fix="run the publish again: it compares hashes first and skips an identical file",
        )
    if status == 413:
        return PublishError(
            f"{where} refused {filename} as too large (HTTP 413)",
            fix="raise the index's (or its proxy's) upload size limit",
        )
    return PublishError(
        f"{where} refused the upload of {filename}: HTTP {status}",
        why=short or None,
        fix="read the index's answer above; check the URL points at the index's upload endpoint",
    )


def unreachable(url: str, error: BaseException, secrets: tuple[str, ...] = ()) -> PublishError:
    return PublishError(
        f"Cannot reach the index at {mask_url(url)}",
        why=scrub(f"{type(error).__name__}: {error}", secrets),
        fix="check the URL, that the index is running, and the network (proxies, VPN)",
    )


def upload_one(repository_url: str, wheel: Path, creds: Credentials | None) -> None:
    """Upload one file; raise a classified :class:`PublishError` unless the index answered 2xx."""
    import requests
    from twine.exceptions import TwineException
    from twine.package import PackageFile
    from twine.repository import Repository

    secrets = creds.secrets() if creds else ()
    repo = Repository(
        repository_url,
        creds.username if creds else None,
        creds.password if creds else None,
        disable_progress_bar=True,
    )
    try:
        # twine prints "Uploading <file>" on stdout; our stdout stays quiet, progress is logged by the caller.
        with contextlib.redirect_stdout(io.StringIO()):
            package = PackageFile.from_filename(str(wheel), comment=None)
            response = repo.upload(package)
    except requests.ConnectionError as e:
        raise unreachable(repository_url, e, secrets) from None
    except requests.RequestException as e:
        raise PublishError(
            f"Uploading {wheel.name} to {mask_url(repository_url)} failed", why=scrub(str(e), secrets)
        ) from None
    except TwineException as e:
        raise PublishError(f"twine could not upload {wheel.name}", why=scrub(str(e), secrets)) from None
    finally:
        repo.close()
    if 300 <= response.status_code < 400:
        raise PublishError(
            f"{mask_url(repository_url)} answered the upload of {wheel.name} with a redirect "
            f"(HTTP {response.status_code})",
            why="an upload endpoint never redirects; the URL is probably the index's page, not its upload API",
            fix="use the upload URL the index documents (pypiserver: its root; devpi: /USER/INDEX/; "
            "Artifactory: /api/pypi/REPO)",
        )
    if not 200 <= response.status_code < 300:
        raise explain_response(
            response.status_code,
            response.reason or "",
            response.text or "",
            url=repository_url,
            filename=wheel.name,
            secrets=secrets,
        )
