"""Parsing index pages (PEP 503 HTML, PEP 691 JSON): pure functions."""

from __future__ import annotations

import json

from wheels.publish.simple import SIMPLE_JSON, normalize, parse_html, parse_json, parse_page, project_url

SHA = "ab" * 32

WHL = "canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl"
PYPISERVER_PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><title>Links for canary</title></head>
<body><h1>Links for canary</h1>
    <a href="/packages/{WHL}#sha256={SHA}">{WHL}</a><br>
    <a href="/packages/canary-0.0.9.tar.gz">canary-0.0.9.tar.gz</a><br>
</body></html>"""


def test_pypiserver_page_absolute_paths_and_fragments() -> None:
    links = parse_html(PYPISERVER_PAGE, "http://127.0.0.1:8080/simple/canary/")
    assert [link.filename for link in links] == [
        "canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl",
        "canary-0.0.9.tar.gz",
    ]
    assert links[0].url == (
        "http://127.0.0.1:8080/packages/canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl"
    )
    assert links[0].sha256 == SHA
    assert links[1].sha256 is None


def test_relative_quoted_links_base_tag_and_attributes() -> None:
    page = (
        '<html><head><base href="https://cdn.example/root/simple/demo/"></head><body>'
        f'<a href="../../packages/demo-1.0%2Bcu124-py3-none-any.whl#sha256={SHA.upper()}" '
        'data-requires-python="&gt;=3.9" data-yanked="">demo</a>'
        '<a href="../../packages/demo-0.9-py3-none-any.whl#md5=0123">old</a>'
        "<a>no href</a></body></html>"
    )
    links = parse_html(page, "https://elsewhere.example/ignored/")
    assert links[0].filename == "demo-1.0+cu124-py3-none-any.whl"
    assert links[0].url == "https://cdn.example/root/packages/demo-1.0%2Bcu124-py3-none-any.whl"
    assert links[0].sha256 == SHA  # upper-case hex is normalised
    assert links[0].requires_python == ">=3.9"
    assert links[0].yanked
    assert links[1].sha256 is None  # an md5 fragment is no sha256
    assert len(links) == 2


def test_pep691_json_page() -> None:
    page = json.dumps(
        {
            "meta": {"api-version": "1.1"},
            "name": "demo",
            "files": [
                {
                    "filename": "demo-1.0-py3-none-any.whl",
                    "url": "../../f/demo-1.0-py3-none-any.whl",
                    "hashes": {"sha256": SHA},
                },
                {
                    "filename": "demo-0.9.tar.gz",
                    "url": f"https://x.example/demo-0.9.tar.gz#sha256={SHA}",
                    "hashes": {},
                    "yanked": "bad",
                },
            ],
        }
    )
    links = parse_json(page, "https://idx.example/simple/demo/")
    assert links[0].url == "https://idx.example/f/demo-1.0-py3-none-any.whl" and links[0].sha256 == SHA
    assert links[1].sha256 == SHA and links[1].yanked


def test_parse_page_dispatches_on_content_type() -> None:
    page = json.dumps({"files": [{"filename": "a-1-py3-none-any.whl", "url": "a-1-py3-none-any.whl", "hashes": {}}]})
    assert (
        parse_page(page, f"{SIMPLE_JSON}; charset=utf-8", "https://i/simple/a/")[0].filename == "a-1-py3-none-any.whl"
    )
    assert parse_page(PYPISERVER_PAGE, "text/html; charset=UTF-8", "http://h/simple/canary/")[0].sha256 == SHA


def test_normalize_and_project_url() -> None:
    assert normalize("Flash_Attn") == "flash-attn" and normalize("mmcv.lite__x") == "mmcv-lite-x"
    assert project_url("http://h:1/simple", "Flash_Attn") == "http://h:1/simple/flash-attn/"
    assert project_url("http://h:1/simple/", "canary") == "http://h:1/simple/canary/"
