"""The docker CLI, with BuildKit: build, inspect, run, tag, push, remove. Nothing here decides what to build.

Builds go through the ``docker`` command (``DOCKER``, default /usr/bin/docker) with ``DOCKER_BUILDKIT=1``: BuildKit
is what gives ``RUN --mount`` (cache, bind, secret) and ``--secret``. The full plain progress log goes to a file; the
terminal gets each step as it starts and ends, and everything after an error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from wheels import log
from wheels.errors import ImageError

_STEP = re.compile(r"^#(?P<id>\d+) \[(?P<stage>[^\]]+?) (?P<n>\d+)/(?P<m>\d+)\] (?P<what>.*)$")
_STATE = re.compile(r"^#(?P<id>\d+) (?P<state>CACHED|DONE [\d.]+s|ERROR.*)$")


@dataclasses.dataclass
class Step:
    id: int
    stage: str
    what: str
    state: str = "?"  # "CACHED", "DONE 12.3s", "ERROR ..."

    @property
    def cached(self) -> bool:
        return self.state == "CACHED"

    @property
    def seconds(self) -> float | None:
        m = re.match(r"DONE ([\d.]+)s", self.state)
        return float(m.group(1)) if m else None


@dataclasses.dataclass(frozen=True)
class BuildResult:
    seconds: float
    steps: tuple[Step, ...]
    log_path: Path

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if s.cached)


def parse_progress(lines: Sequence[str]) -> list[Step]:
    """Steps of a Dockerfile that make layers (not FROM, not BuildKit's internal ones), from plain progress output,
    with how each ended."""
    steps: dict[int, Step] = {}
    for line in lines:
        m = _STEP.match(line)
        if m and m.group("stage") != "internal" and not m.group("what").startswith("FROM "):
            sid = int(m.group("id"))
            steps.setdefault(sid, Step(sid, m.group("stage").strip(), m.group("what")[:200]))
            continue
        m = _STATE.match(line)
        if m and int(m.group("id")) in steps:
            steps[int(m.group("id"))].state = m.group("state")
    return sorted(steps.values(), key=lambda s: s.id)


class Docker:
    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.env = {**os.environ, "DOCKER_BUILDKIT": "1"}

    def _run(self, *args: str, what: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [self.binary, *args], env=self.env, text=True, capture_output=capture, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise ImageError(
                f"The docker client {self.binary} does not exist",
                fix="install Docker (the engine and its client), or point DOCKER at the client",
            ) from None
        if check and result.returncode != 0:
            raise ImageError(
                f"{what} failed: docker {' '.join(args[:3])} ... exited {result.returncode}",
                why=(result.stderr or result.stdout or "").strip()[-2000:] or None,
            )
        return result

    def check(self) -> str:
        result = self._run("version", "--format", "{{.Server.Version}}", what="docker version", check=False)
        if result.returncode != 0:
            raise ImageError(
                "The Docker engine does not answer",
                why=(result.stderr or "").strip()[-500:] or None,
                fix="start dockerd (CI: .ci/run starts it), or point DOCKER_HOST at a running engine",
            )
        return result.stdout.strip()

    def exists(self, ref: str) -> bool:
        return self._run("image", "inspect", ref, what="docker image inspect", check=False).returncode == 0

    def inspect(self, ref: str) -> dict[str, object]:
        out = self._run("image", "inspect", ref, what=f"Inspecting {ref}").stdout
        return json.loads(out)[0]

    def history(self, ref: str) -> list[dict[str, str]]:
        args = ("history", "--no-trunc", "--human=false", "--format", "{{json .}}", ref)
        out = self._run(*args, what=f"Reading {ref}'s history").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def tag(self, src: str, dest: str) -> None:
        self._run("tag", src, dest, what=f"Tagging {src} as {dest}")

    def remove(self, ref: str) -> None:
        """Remove a tag (the image goes with its last tag); absent is fine."""
        if self.exists(ref):
            self._run("image", "rm", ref, what=f"Removing {ref}", check=False)

    def push(self, ref: str) -> None:
        self._run("push", ref, what=f"Pushing {ref}", capture=False)

    def run(self, ref: str, command: Sequence[str], *, entrypoint: str | None = None, network: str = "none",
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:  # fmt: skip
        args = ["run", "--rm", "--network", network]
        if entrypoint is not None:
            args += ["--entrypoint", entrypoint]
        try:
            return subprocess.run(
                [self.binary, *args, ref, *command],
                env=self.env,
                text=True,
                capture_output=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ImageError(f"Running {ref} did not finish within {timeout:.0f}s") from None

    def build(
        self,
        context: Path,
        *,
        dockerfile: Path,
        target: str,
        tag: str,
        build_args: Mapping[str, str],
        secrets: Mapping[str, Path],
        labels: Mapping[str, str],
        log_path: Path,
        network: str = "host",
    ) -> BuildResult:
        args = ["build", "--progress=plain", f"--network={network}", "--target", target, "--tag", tag,
                "--file", str(dockerfile)]  # fmt: skip
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        for key, path in secrets.items():
            args += ["--secret", f"id={key},src={path}"]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        args.append(str(context))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        lines: list[str] = []
        shown: set[str] = set()  # steps announced on the terminal: their end is shown too
        failed_at: int | None = None
        with log_path.open("w") as out:
            try:
                proc = subprocess.Popen(
                    [self.binary, *args], env=self.env, text=True, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, bufsize=1,
                )  # fmt: skip
            except FileNotFoundError:
                raise ImageError(f"The docker client {self.binary} does not exist", fix="install Docker") from None
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                line = line.rstrip("\n")
                lines.append(line)
                state = _STATE.match(line)
                step = _STEP.match(line)
                if step:
                    shown.add(step.group("id"))
                if failed_at is not None or step or (state and state.group("id") in shown) or line.startswith("ERROR"):
                    if failed_at is None and (line.startswith("ERROR") or " ERROR" in line[:12]):
                        failed_at = len(lines)
                    print(f"[docker] {line}", file=sys.stderr, flush=True)
            status = proc.wait()
        seconds = time.monotonic() - start
        steps = tuple(parse_progress(lines))
        if status != 0:
            tail = "\n".join(lines[-40:])
            raise ImageError(
                f"docker build of the {target} target failed after {log.fmt_seconds(seconds)} "
                f"(exit {status}); nothing was tagged",
                why=f"last lines of the build log:\n{tail}",
                fix=f"the whole log is {log_path}",
            )
        return BuildResult(seconds=seconds, steps=steps, log_path=log_path)

    def save_contains(self, ref: str, needles: Sequence[bytes]) -> list[bytes]:
        """Which needles occur anywhere in `docker save` of an image (every layer, config and manifest, as bytes)."""
        proc = subprocess.Popen([self.binary, "save", ref], env=self.env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        found: set[bytes] = set()
        keep = max((len(n) for n in needles), default=1) - 1
        tail = b""
        for chunk in iter(lambda: proc.stdout.read(1 << 22), b""):  # type: ignore[union-attr]
            window = tail + chunk
            for needle in needles:
                if needle in window:
                    found.add(needle)
            tail = window[-keep:] if keep else b""
        if proc.wait() != 0:
            raise ImageError(f"docker save {ref} failed")
        return sorted(found)
