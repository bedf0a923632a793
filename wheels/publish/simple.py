"""Reading package indexes' project pages: PEP 503 HTML and PEP 691 JSON, as pure functions.

A project page lists files; each may carry a hash (``#sha256=...`` fragment or the JSON ``hashes`` table), a
``Requires-Python`` and PEP 658/714 metadata availability. Publishing only needs filename, URL and sha256.
"""

from __future__ import annotations

import dataclasses
import html.parser
import json
import re
import urllib.parse

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
# Ask for JSON first (PEP 691), HTML as the fallback every index serves.
ACCEPT = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"

_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """PEP 503 project name normalisation."""
    return _NORMALIZE.sub("-", name).lower()


@dataclasses.dataclass(frozen=True)
class Link:
    filename: str
    url: str  # absolute, without the hash fragment
    sha256: str | None
    requires_python: str | None = None
    yanked: bool = False


def _sha256_of_fragment(fragment: str) -> str | None:
    name, _, value = fragment.partition("=")
    if name.lower() == "sha256" and re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return value.lower()
    return None


def _filename_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


class _AnchorParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self.anchors.append(dict(attrs))


def parse_html(text: str, page_url: str) -> list[Link]:
    """Links of a PEP 503 project page; relative hrefs resolved against page_url (or the page's <base>)."""
    parser = _AnchorParser()
    parser.feed(text)
    parser.close()
    base = urllib.parse.urljoin(page_url, parser.base) if parser.base else page_url
    links: list[Link] = []
    for attrs in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        absolute, fragment = urllib.parse.urldefrag(urllib.parse.urljoin(base, href))
        links.append(
            Link(
                filename=_filename_of(absolute),
                url=absolute,
                sha256=_sha256_of_fragment(fragment),
                requires_python=attrs.get("data-requires-python"),
                yanked="data-yanked" in attrs,
            )
        )
    return links


def parse_json(text: str, page_url: str) -> list[Link]:
    """Files of a PEP 691 project page."""
    data = json.loads(text)
    links: list[Link] = []
    for entry in data.get("files", []):
        absolute, fragment = urllib.parse.urldefrag(urllib.parse.urljoin(page_url, entry["url"]))
        hashes = {k.lower(): v for k, v in (entry.get("hashes") or {}).items()}
        sha = hashes.get("sha256") or _sha256_of_fragment(fragment)
        links.append(
            Link(
                filename=entry.get("filename") or _filename_of(absolute),
                url=absolute,
                sha256=sha.lower() if sha else None,
                requires_python=entry.get("requires-python"),
                yanked=bool(entry.get("yanked")),
            )
        )
    return links


def parse_page(text: str, content_type: str, page_url: str) -> list[Link]:
    """Dispatch on the response's Content-Type (an index may ignore the Accept header)."""
    if content_type.split(";", 1)[0].strip().lower() == SIMPLE_JSON:
        return parse_json(text, page_url)
    return parse_html(text, page_url)


def project_url(index_url: str, project: str) -> str:
    """The PEP 503 page of a project under a simple index URL (with its trailing slash, as the PEP asks)."""
    return urllib.parse.urljoin(index_url.rstrip("/") + "/", normalize(project) + "/")
