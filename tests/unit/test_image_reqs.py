"""Locks as data: parsing, header, split, rendering, staleness, wheel tags."""

from __future__ import annotations

import pytest

from image.reqs import (
    Pin,
    is_pure,
    parse_lock,
    render_header,
    render_requirements,
    split,
    stale_inputs,
    target_tags,
    wheel_fits,
)
from wheels.errors import ConfigError

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64

LOCK = f"""# image/requirements-core-cu124.lock: test
#
# profile: core
# torch: cu124 (torch 2.5.1, CUDA 12.4) from https://pypi.org/simple
# input: constraints.txt sha256={H1}
# input: ComfyUI/requirements.txt sha256={H2}

canary==0.1.0+cu124torch2.5 \\
    --hash=sha256:{H3}
    # via -r our-wheels.txt
torch==2.5.1 \\
    --hash=sha256:{H1} \\
    --hash=sha256:{H2}
    # via
    #   -r inputs/image/requirements-core.in
Pillow==11.0.0 --hash=sha256:{H3}
"""


def test_parse_pins_hashes_and_header() -> None:
    lock = parse_lock(LOCK)
    assert [str(p) for p in lock.pins] == ["canary==0.1.0+cu124torch2.5", "torch==2.5.1", "Pillow==11.0.0"]
    assert lock.pins[1].hashes == (H1, H2)
    assert lock.first("profile") == "core"
    assert lock.first(
        "torch",
    ).startswith("cu124 ")
    assert lock.inputs() == {"constraints.txt": H1, "ComfyUI/requirements.txt": H2}
    assert lock.by_key()["pillow"].name == "Pillow"


def test_a_pin_without_hash_is_not_a_lock() -> None:
    with pytest.raises(ConfigError, match="torch==2.5.1 has no sha256"):
        parse_lock("torch==2.5.1\n")


def test_a_range_is_not_a_lock() -> None:
    with pytest.raises(ConfigError, match="not an exact pin"):
        parse_lock(f"torch>=2.5 --hash=sha256:{H1}\n")


def test_index_options_do_not_belong_in_a_lock() -> None:
    with pytest.raises(ConfigError, match="option line '--extra-index-url'"):
        parse_lock(f"--extra-index-url https://x.invalid/simple\ntorch==2.5.1 --hash=sha256:{H1}\n")


def test_duplicate_pins_fail() -> None:
    with pytest.raises(ConfigError, match="twice"):
        parse_lock(f"Pillow==1 --hash=sha256:{H1}\npillow==1 --hash=sha256:{H2}\n")


def test_split_puts_ours_in_their_own_layer_and_render_round_trips() -> None:
    lock = parse_lock(LOCK)
    third, ours = split(lock.pins, ["Canary", "flash_attn"])
    assert [p.name for p in ours] == ["canary"]
    assert [p.name for p in third] == ["torch", "Pillow"]
    again = parse_lock(render_requirements(third))
    assert set(again.pins) == set(third)


def test_header_round_trip() -> None:
    head = render_header([("profile", "full"), ("input", f"a.txt sha256={H1}")], ["title", ""])
    text = head + f"x==1 --hash=sha256:{H1}\n"
    lock = parse_lock(text)
    assert lock.first("profile") == "full" and lock.inputs() == {"a.txt": H1}


def test_stale_inputs_names_each_difference() -> None:
    assert stale_inputs({"a": "1", "b": "2"}, {"a": "1", "b": "2"}) == []
    assert stale_inputs({"a": "1", "b": "2"}, {"a": "9", "c": "3"}) == [
        "a changed",
        "b was an input but is not any more",
        "c is a new input",
    ]


@pytest.mark.parametrize(
    ("filename", "fits"),
    [
        ("torch-2.5.1-cp311-cp311-manylinux1_x86_64.whl", True),
        ("canary-0.1.0+cu124torch2.5-cp311-cp311-manylinux_2_34_x86_64.whl", True),
        ("x-1-cp311-cp311-manylinux_2_35_x86_64.whl", True),
        ("x-1-cp311-cp311-manylinux_2_36_x86_64.whl", False),  # needs a newer glibc than Ubuntu 22.04's
        ("x-1-cp312-cp312-manylinux_2_17_x86_64.whl", False),
        ("x-1-cp311-cp311-manylinux_2_17_aarch64.whl", False),
        ("x-1-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
        ("x-1-py3-none-any.whl", True),
        ("x-1.tar.gz", False),
        ("pydantic-0.18-py36+-none-any.whl", False),  # an invalid name on PyPI: ignored, not an error
    ],
)
def test_wheel_tags_for_the_image(filename: str, fits: bool) -> None:
    assert wheel_fits(filename, target_tags("3.11", "x86_64-manylinux_2_35")) is fits


def test_pure() -> None:
    assert is_pure("chumpy-0.70-py3-none-any.whl")
    assert is_pure("six-1.17.0-py2.py3-none-any.whl")
    assert not is_pure("x-1-cp311-cp311-manylinux_2_17_x86_64.whl")
    assert not is_pure("x-1-py3-none-manylinux_2_17_x86_64.whl")


def test_unsupported_platform() -> None:
    with pytest.raises(ConfigError, match="Unsupported platform"):
        target_tags("3.11", "win_amd64")


def test_pin_line() -> None:
    assert Pin("torch", "2.5.1", (H1,)).line() == f"torch==2.5.1 --hash=sha256:{H1}"
