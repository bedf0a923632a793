"""What the gate checks against, what each check finds, and the verdict: plain data, shared by every gate module."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..options import TorchBuild


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a wheel is checked against: its target, or overrides given on the command line."""

    package: str
    version: str  # without label
    torch: TorchBuild
    python: str  # "3.11" or "system"
    cuda_archs: tuple[str, ...]  # TORCH_CUDA_ARCH_LIST form: ("8.0", "9.0+PTX")
    # Modules to import first; the wheel's own modules (PyInit_*) and torch operator libraries are loaded after them.
    extension_modules: tuple[str, ...]
    flavour: str | None = None
    default_flavour: str | None = None
    base: str | None = None  # image base of the portability check (policy.toml); None = its default
    label_required: bool = True  # False for upstream wheels (prebuilt recipe): their version carries no label

    def as_record(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version": self.version,
            "torch_build": self.torch.name,
            "python": self.python,
            "cuda_archs": list(self.cuda_archs),
            "extension_modules": list(self.extension_modules),
            "flavour": self.flavour,
            "base": self.base,
        }


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    summary: str
    problems: list[str] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    cause: str | None = None  # the likely cause, in words a user recognises
    fix: str | None = None  # what to do next


@dataclasses.dataclass
class GateReport:
    wheel: str
    checks: list[CheckResult]
    torch: dict[str, Any] | None
    checked_at: str
    expectation: dict[str, Any] | None = None
    platform_tag: str | None = None  # the manylinux tag the wheel's symbol versions really need
    seconds: float | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "wheel": self.wheel,
            "verdict": self.verdict,
            "torch": self.torch,
            "checked_at": self.checked_at,
            "expectation": self.expectation,
            "platform_tag": self.platform_tag,
            "seconds": self.seconds,
            "timings": self.timings,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def human(self, limit: int = 40) -> str:
        torch = f" against torch {self.torch['version']}" if self.torch else ""
        took = f" ({self.seconds:.1f}s)" if self.seconds is not None else ""
        lines = [f"ABI gate: {self.wheel}{torch}: {self.verdict.upper()}{took}"]
        for c in self.checks:
            lines.append(f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.summary}")
            for problem in c.problems[:limit]:
                lines.append(f"         - {problem}")
            if len(c.problems) > limit:
                lines.append(f"         ... and {len(c.problems) - limit} more (see the JSON report)")
            if not c.passed and c.cause:
                lines.append(f"         likely cause: {c.cause}")
            if not c.passed and c.fix:
                lines.append(f"         fix: {c.fix}")
        return "\n".join(lines)
