"""Follow one prompt over ComfyUI's websocket (/ws?clientId=...) until it finishes, fails, or runs out of time.

Why not just read the socket: ComfyUI sends each event once, to the socket open at that moment. Events sent while
the socket is down are lost, so after every reconnect, and whenever the socket is quiet for ``poll_s``, the follower
asks /history, which is the source of truth. A job is *crashed* when ComfyUI's process died or was restarted (its
pid changed: start.sh restarts it), or when ComfyUI answers again but neither its queue nor its history knows the
prompt; it is *timed out* when the deadline passes, and the caller then cancels the prompt.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import websocket

from . import log
from .comfy_client import ComfyClient
from .errors import ComfyCrashedError, ExecutionError, InterruptedError_, JobTimeoutError, WorkerError, short

_WS_ERRORS = (websocket.WebSocketException, OSError)


class Socket(Protocol):
    def recv(self) -> str | bytes: ...
    def settimeout(self, timeout: float | None) -> None: ...
    def close(self) -> None: ...


def connect(url: str) -> Socket:
    return websocket.create_connection(url, timeout=10)


def execution_error(data: Mapping[str, Any]) -> ExecutionError:
    """ComfyUI's execution_error event (or history message) as an error a caller can act on."""
    exc_type = str(data.get("exception_type", ""))
    message = str(data.get("exception_message", "")).strip()
    node = f"node {data.get('node_id')} ({data.get('node_type')})"
    fix = "read details.traceback; fix the node's inputs or the model files it loads"
    if "OutOfMemory" in exc_type or "out of memory" in message.lower():
        fix = (
            "the GPU ran out of memory: lower the resolution or frame count, raise blocks_to_swap "
            "(WanVideoBlockSwap), or use a GPU with more memory"
        )
    traceback = data.get("traceback") or []
    return ExecutionError(
        f"{node} failed: {exc_type.rsplit('.', 1)[-1] or 'error'}: {short(message, 500)}",
        fix=fix,
        node_id=data.get("node_id"),
        node_type=data.get("node_type"),
        exception_type=exc_type,
        exception_message=short(message, 4000),
        traceback=[short(line, 2000) for line in traceback[-30:]] if isinstance(traceback, list) else short(traceback),
    )


def outcome(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A history entry if the prompt is finished and succeeded; None if it is not finished; raises if it failed."""
    status = entry.get("status") or {}
    status_str = status.get("status_str")
    if status_str == "error":
        for event, data in status.get("messages") or []:
            if event == "execution_error":
                raise execution_error(data)
            if event == "execution_interrupted":
                raise InterruptedError_(
                    f"The prompt was interrupted at node {data.get('node_id')} ({data.get('node_type')})",
                    why="someone pressed Cancel in ComfyUI, or another client interrupted it",
                )
        raise WorkerError("ComfyUI reports the prompt failed without an error message", history_status=status)
    if status_str == "success" or status.get("completed"):
        return entry
    # Older ComfyUI versions write history only when done and may omit status: outputs mean done.
    if not status and entry.get("outputs") is not None:
        return entry
    return None


class Follower:
    def __init__(
        self,
        client: ComfyClient,
        *,
        reconnects: int,
        reconnect_delay_s: float,
        poll_s: float,
        on_event: Callable[[str, Mapping[str, Any]], None] | None = None,
        connect_fn: Callable[[str], Socket] = connect,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.reconnects = reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self.poll_s = poll_s
        self.on_event = on_event
        self.connect_fn = connect_fn
        self.sleep = sleep
        self.clock = clock
        self.ws: Socket | None = None
        self.url = ""
        self.start_pid: int | None = None
        self.reconnected = 0

    # Open before queueing: ComfyUI sends the first events right after /prompt answers.
    def open(self, client_id: str) -> None:
        self.url = self.client.ws_url(client_id)
        self.start_pid = self.client.pid()
        try:
            self.ws = self.connect_fn(self.url)
        except _WS_ERRORS as e:
            raise ComfyCrashedError(f"Could not open ComfyUI's websocket {self.url}: {e}") from None

    def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(*_WS_ERRORS):
                self.ws.close()
            self.ws = None

    def follow(self, prompt_id: str, deadline: float) -> Mapping[str, Any]:
        """Block until the prompt is done; returns its /history entry."""
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise JobTimeoutError(f"The job ran out of time while ComfyUI was running prompt {prompt_id}")
            if self.ws is None:
                done = self._reconnect(prompt_id, deadline)
                if done is not None:
                    return done
                continue
            try:
                self.ws.settimeout(min(self.poll_s, remaining))
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                done = self._check(prompt_id)
                if done is not None:
                    return done
                continue
            except _WS_ERRORS as e:
                log.warn(f"websocket dropped ({type(e).__name__}: {e}); reconnecting")
                self.close()
                continue
            if isinstance(frame, bytes) or not frame:
                continue  # binary frames are preview images
            try:
                message = json.loads(frame)
            except json.JSONDecodeError:
                continue
            kind, data = message.get("type"), message.get("data") or {}
            if not isinstance(data, Mapping) or data.get("prompt_id", prompt_id) != prompt_id:
                continue
            if self.on_event is not None:
                self.on_event(str(kind), data)
            if kind == "execution_error":
                raise execution_error(data)
            if kind == "execution_interrupted":
                raise InterruptedError_(
                    f"The prompt was interrupted at node {data.get('node_id')} ({data.get('node_type')})",
                    why="someone pressed Cancel in ComfyUI, or another client interrupted it",
                )
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return self._await_history(prompt_id, deadline)

    def _check(self, prompt_id: str) -> Mapping[str, Any] | None:
        """Between events: did the prompt finish unseen, or did ComfyUI die under it?"""
        self._check_process()
        entry = self.client.history(prompt_id)
        return outcome(entry) if entry is not None else None

    def _check_process(self) -> None:
        pid = self.client.pid()
        if self.start_pid is not None and pid is not None and pid != self.start_pid:
            raise ComfyCrashedError(
                "ComfyUI restarted while the job ran, and the job was lost with it",
                why=f"its process changed from pid {self.start_pid} to {pid}: it crashed or was killed (often for "
                "memory) and start.sh started it again",
                fix="read the [comfyui] log lines before the restart; send the job again, with a smaller workload if "
                "memory was the cause",
            )
        if self.start_pid is not None and self.client.process_alive() is False:
            raise ComfyCrashedError(
                "ComfyUI's process exited while the job ran",
                why=f"pid {self.start_pid} is gone: it crashed or was killed (often for memory)",
                fix="read the [comfyui] log lines; the worker restarts ComfyUI and takes the next job",
            )

    def _await_history(self, prompt_id: str, deadline: float) -> Mapping[str, Any]:
        # ComfyUI writes history just after the last event; give it a moment.
        while self.clock() < deadline:
            entry = self.client.history(prompt_id)
            if entry is not None:
                done = outcome(entry)
                if done is not None:
                    return done
            self.sleep(0.1)
        raise JobTimeoutError(f"The job ran out of time waiting for prompt {prompt_id}'s history")

    def _reconnect(self, prompt_id: str, deadline: float) -> Mapping[str, Any] | None:
        """Reconnect; returns the history entry if the prompt finished while the socket was down."""
        last: Exception | None = None
        for attempt in range(1, self.reconnects + 1):
            if self.clock() >= deadline:
                raise JobTimeoutError(f"The job ran out of time while reconnecting to ComfyUI (prompt {prompt_id})")
            self._check_process()
            if self.client.is_up():
                try:
                    self.ws = self.connect_fn(self.url)
                except _WS_ERRORS as e:
                    last = e
                else:
                    self.reconnected += 1
                    log.info(f"websocket reconnected (attempt {attempt}/{self.reconnects})")
                    # Events sent while we were away are lost: ask history and the queue where the prompt is.
                    entry = self.client.history(prompt_id)
                    if entry is not None:
                        done = outcome(entry)
                        if done is not None:
                            return done
                    self._check_process()
                    if entry is None and not self.client.in_queue(prompt_id):
                        raise ComfyCrashedError(
                            "ComfyUI came back without the job: it is neither queued, running nor in its history",
                            why="ComfyUI restarted (crash, or killed for memory) while the job ran",
                            fix="read the [comfyui] log lines; send the job again",
                        )
                    return None
            else:
                last = ConnectionError("ComfyUI's HTTP API does not answer")
            log.warn(f"reconnect attempt {attempt}/{self.reconnects} failed: {last}")
            self.sleep(self.reconnect_delay_s)
        raise ComfyCrashedError(
            f"Lost ComfyUI mid-job: no connection after {self.reconnects} reconnect attempts",
            why=f"ComfyUI stopped answering ({last}); it crashed, hung, or was killed for memory",
            fix="read the [comfyui] log lines; the worker restarts ComfyUI and takes the next job",
        )
