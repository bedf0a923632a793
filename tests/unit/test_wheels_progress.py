"""Progress for long builds: N/M objects from ninja, elapsed time and an estimate of what remains (injected clock)."""

from __future__ import annotations

import io

import pytest

from wheels.progress import NinjaProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_eta_and_elapsed(log_output: io.StringIO) -> None:
    clock = Clock()
    p = NinjaProgress("[canary] compiling", clock=clock)
    assert p.status() == "[canary] compiling | elapsed 0.0s"
    clock.now += 5
    assert p.feed("[1/5] c++ -c a.cpp") == "[canary] compiling | objects 1/5 | elapsed 5.0s"  # no rate yet
    clock.now += 10
    assert p.feed("[2/5] nvcc -c b.cu") == "[canary] compiling | objects 2/5 | elapsed 15.0s | about 30.0s left"
    clock.now += 30
    # 3 objects in 40 s since the first: 13.3 s each, 1 left.
    assert p.feed("[4/5] nvcc -c d.cu") == "[canary] compiling | objects 4/5 | elapsed 45.0s | about 13.3s left"
    assert log_output.getvalue().count("[wheels] [canary] compiling | objects") == 3


def test_minutes_and_hours_are_readable() -> None:
    clock = Clock()
    p = NinjaProgress("[fa] compiling", clock=clock)
    p.feed("[1/170] x")
    clock.now += 600
    p.feed("[11/170] x")  # 60 s an object, 159 to go
    assert p.status() == "[fa] compiling | objects 11/170 | elapsed 10m00s | about 2h39m left"


def test_repeated_or_older_counts_do_not_move_it() -> None:
    clock = Clock()
    p = NinjaProgress("s", clock=clock, interval=1e9)
    p.feed("[3/9] x")
    assert p.feed("[3/9] y") is None and p.feed("[2/9] z") is None
    assert p.done == 3


def test_quiet_builds_still_report_at_the_interval() -> None:
    clock = Clock()
    p = NinjaProgress("s", clock=clock, interval=30)
    clock.now += 10
    assert p.feed("compiling quietly...") is None
    clock.now += 25
    assert p.feed("still compiling") == "s | elapsed 35.0s"
    clock.now += 5
    assert p.feed("more") is None  # the interval counts from the last report


def test_expected_total_before_ninja_speaks() -> None:
    p = NinjaProgress("s", expected=84, clock=Clock())
    assert p.status() == "s | objects 0/84 | elapsed 0.0s"


@pytest.mark.parametrize("line", ["  [1/2] indented", "[1/2]no-space", "ninja: [1/2] x", "[a/b] x"])
def test_only_ninja_status_lines_count(line: str) -> None:
    p = NinjaProgress("s", clock=Clock(), interval=1e9)
    p.feed(line)
    assert p.done == 0
