"""Reading an index over HTTP: is it there, and what does it already hold (filename -> sha256)?

Only reads, with the upload credentials sent to the upload host alone (a private index may protect listings).
Nothing here writes; uploads are :mod:`wheels.publish.upload`.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

from ..errors import PublishError
from .credentials import Credentials, mask_url, scrub
from .simple import ACCEPT, Link, parse_page, project_url

TIMEOUT = 60


class _NoCredentialsAcrossHosts(urllib.request.HTTPRedirectHandler):
    """urllib copies the Authorization header onto a redirect, whatever its host: drop it when the host changes."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN201
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).hostname != urllib.parse.urlsplit(req.full_url).hostname:
            new.remove_header("Authorization")
        return new


_opener = urllib.request.build_opener(_NoCredentialsAcrossHosts)


def _open(request: urllib.request.Request):  # type: ignore[no-untyped-def]  # noqa: ANN202
    return _opener.open(request, timeout=TIMEOUT)


class IndexReader:
    def __init__(self, index_url: str, creds: Credentials | None = None, auth_host: str | None = None) -> None:
        self.index_url = index_url if index_url.endswith("/") else index_url + "/"
        self.creds = creds
        # Credentials go only to the host they were given for (the upload URL's), never to a redirect elsewhere.
        self.auth_host = auth_host or urllib.parse.urlsplit(self.index_url).hostname

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.creds.secrets() if self.creds else ()

    def _request(self, url: str, accept: str | None = None) -> urllib.request.Request:
        headers = {"User-Agent": "wheels-publish"}
        if accept:
            headers["Accept"] = accept
        if self.creds and urllib.parse.urlsplit(url).hostname == self.auth_host:
            token = base64.b64encode(f"{self.creds.username}:{self.creds.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return urllib.request.Request(url, headers=headers)

    def _fail(self, url: str, error: BaseException) -> PublishError:
        if isinstance(error, urllib.error.HTTPError) and error.code in (401, 403):
            return PublishError(
                f"The index refused to list {mask_url(url)}: HTTP {error.code}",
                why="its pages need credentials, and these are missing or wrong",
                fix="set TWINE_USERNAME/TWINE_PASSWORD (or a keyring entry) for this index",
            )
        return PublishError(
            f"Cannot reach the index at {mask_url(self.index_url)}",
            why=scrub(f"{type(error).__name__}: {error}", self.secrets),
            fix="check the URL (the simple index, e.g. http://host:port/simple/), that the index is running, "
            "and the network",
        )

    def check_reachable(self) -> None:
        """GET the simple index root; any HTTP answer but 5xx (some indexes 404 their root) proves a live index."""
        try:
            with _open(self._request(self.index_url, ACCEPT)):
                return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403) or e.code >= 500:
                raise self._fail(self.index_url, e) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._fail(self.index_url, e) from None

    def links(self, project: str) -> list[Link]:
        """What the index lists for a project; [] when it does not know the project (HTTP 404)."""
        url = project_url(self.index_url, project)
        try:
            with _open(self._request(url, ACCEPT)) as r:
                final = r.geturl()
                body = r.read().decode("utf-8", errors="replace")
                return parse_page(body, r.headers.get("Content-Type", "text/html"), final)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise self._fail(url, e) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._fail(url, e) from None

    def sha256(self, link: Link) -> str:
        """A listed file's sha256: from the page when given, else by downloading it."""
        if link.sha256:
            return link.sha256
        digest = hashlib.sha256()
        try:
            with _open(self._request(link.url)) as r:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    digest.update(chunk)
        except (urllib.error.URLError, OSError) as e:
            raise self._fail(link.url, e) from None
        return digest.hexdigest()

    def holdings(self, projects: Iterable[str]) -> dict[str, Link]:
        """filename -> link, for every file the index lists under the given projects."""
        held: dict[str, Link] = {}
        for project in sorted(set(projects)):
            for link in self.links(project):
                held[link.filename] = link
        return held
