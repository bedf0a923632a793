"""Upload credentials: where they come from, and how they are kept out of every message.

twine's conventions: ``TWINE_USERNAME`` / ``TWINE_PASSWORD`` first, then the system keyring, queried with the
repository URL as the service name (``keyring set https://index.example/ alice``). The embedded index has its own
credentials (see :mod:`wheels.publish.server`). A :class:`Credentials` never shows its password in ``repr`` and
:func:`scrub` removes both the password and any ``user:pass@`` from text before it reaches a log or an exception.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

from .. import log

# (service, username or None) -> (username, password) or None; injectable so unit tests need no keyring backend.
KeyringLookup = Callable[[str, str | None], "tuple[str, str] | None"]


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)
    source: str = "environment"  # where they came from, for logs: "environment", "keyring", "embedded index"

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def mask_url(url: str) -> str:
    """``https://user:pass@host/x`` -> ``https://***@host/x``; URLs without credentials are returned unchanged."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", url)


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """Split credentials out of a URL: (url without them, username, password), both unquoted."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return clean, user, password


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from text: URL userinfo, and every given secret (also in its URL-quoted form)."""
    for secret in secrets:
        if secret and len(secret) >= 3:  # masking a 1-2 character "secret" would mangle ordinary words
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
                text = text.replace(form, "***")
    # Secrets first: an unquoted password holding "@" or "/" would otherwise end the userinfo match early.
    return mask_url(text)


def keyring_lookup(service: str, username: str | None) -> tuple[str, str] | None:
    """twine's keyring query: a credential for the repository URL (a username alone is not enough)."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ModuleNotFoundError:
        return None
    try:
        if username is None:
            cred = keyring.get_credential(service, None)
            if cred is None or not cred.username:
                return None
            username = cred.username
            password = cred.password
        else:
            password = keyring.get_password(service, username)
    except KeyringError as e:  # includes NoKeyringError: no backend on a headless machine is normal
        log.info(f"no usable keyring ({type(e).__name__}); credentials must come from the environment")
        return None
    except Exception as e:  # a broken backend must not take the publish down, nor print its secrets
        log.warn(f"the keyring failed ({type(e).__name__}); ignoring it")
        return None
    return (username, password) if password else None


def from_environment(
    repository_url: str, env: Mapping[str, str], lookup: KeyringLookup | None = keyring_lookup
) -> Credentials | None:
    """Credentials for an upload URL: the URL's own userinfo, then TWINE_USERNAME/TWINE_PASSWORD, then the keyring."""
    _, url_user, url_password = strip_userinfo(repository_url)
    if url_user is not None and url_password is not None:
        return Credentials(url_user, url_password, source="the repository URL")
    username = env.get("TWINE_USERNAME") or url_user
    password = env.get("TWINE_PASSWORD")
    if username and password:
        return Credentials(username, password, source="environment")
    if lookup is not None:
        found = lookup(strip_userinfo(repository_url)[0], username)
        if found is not None:
            return Credentials(found[0], found[1], source="keyring")
    return None
