"""The RunPod serverless handler: one job in, ComfyUI's outputs (or one clear error) out. It never raises.

A job goes: check input -> wait for ComfyUI -> check node classes against /object_info -> upload input files ->
open the websocket -> queue on /prompt (ComfyUI's validation errors explained) -> follow to the end -> read every
output file from /history and /view -> base64 or S3. Any failure becomes ``{"error": ..., "details": {...}}``; a
timed-out prompt is cancelled so the next job starts on an idle ComfyUI; after a ComfyUI crash the next job waits for
the restarted one (start.sh supervises it).
"""

from __future__ import annotations

import os
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import graph, inputs, log, outputs, validation
from .comfy_client import ComfyClient, PromptRejected
from .config import WorkerConfig
from .errors import ComfyUnavailableError, InputTooLargeError, JobTimeoutError, OutputError, WorkerError
from .follower import Follower, Socket, connect
from .upload import Sink, sink_for

ProgressFn = Callable[[Mapping[str, Any], str], None]


def _runpod_progress(job: Mapping[str, Any], message: str) -> None:
    # Only on RunPod: locally there is no endpoint to send progress to.
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        import runpod

        runpod.serverless.progress_update(dict(job), message)


class Worker:
    def __init__(
        self,
        cfg: WorkerConfig,
        *,
        sink: Sink | None = None,
        connect_fn: Callable[[str], Socket] = connect,
        progress: ProgressFn = _runpod_progress,
    ) -> None:
        self.cfg = cfg
        self.client = ComfyClient(cfg.comfy_url, timeout_s=cfg.request_timeout_s, pid_file=cfg.pid_file)
        self.sink = sink
        self.connect_fn = connect_fn
        self.progress = progress
        self._object_info: dict[str, Any] | None = None
        self._object_info_pid: int | None = None
        self._returned: set[Path] = set()  # output files the last job returned, deleted once no longer served
        self.jobs_done = 0

    # --- the one entry point ------------------------------------------------------------------------------------

    def run(self, job: Mapping[str, Any]) -> dict[str, Any]:
        job_id = str(job.get("id", "local"))
        started = time.monotonic()
        log.info(f"job {job_id}: started")
        try:
            result = self._run(job_id, job)
        except WorkerError as e:
            log.error(f"job {job_id}: {e.render()}")
            result = e.response()
        except Exception as e:  # a bug here must not take the worker down with it
            log.error(f"job {job_id}: unexpected {type(e).__name__}: {e}\n{traceback.format_exc()}")
            result = WorkerError(
                f"The worker failed unexpectedly: {type(e).__name__}: {e}",
                fix="this is a bug in the handler; the worker keeps serving, report it with the worker log",
            ).response()
        finally:
            self.jobs_done += 1
        outcome = "failed" if "error" in result else "done"
        log.info(f"job {job_id}: {outcome} in {log.fmt_seconds(time.monotonic() - started)}")
        return result

    # --- steps ---------------------------------------------------------------------------------------------------

    def _run(self, job_id: str, job: Mapping[str, Any]) -> dict[str, Any]:
        timer = time.monotonic()
        spec = validation.parse_job(
            job.get("input"),
            max_timeout_s=self.cfg.job_timeout_s,
            max_input_bytes=self.cfg.max_input_bytes,
            max_total_input_bytes=self.cfg.max_total_input_bytes,
        )
        deadline = timer + spec.timeout_s
        timings: dict[str, float] = {}

        waited = self.client.wait_ready(min(self.cfg.ready_timeout_s, spec.timeout_s))
        timings["comfy_ready_s"] = round(waited, 3)
        object_info = self._get_object_info()
        graph.check_node_classes(spec.workflow, object_info)

        t = time.monotonic()
        self._upload_inputs(spec.files, deadline)
        timings["inputs_s"] = round(time.monotonic() - t, 3)

        follower = Follower(
            self.client,
            reconnects=self.cfg.ws_reconnects,
            reconnect_delay_s=self.cfg.ws_reconnect_delay_s,
            poll_s=self.cfg.ws_poll_s,
            on_event=self._event_logger(job, spec.workflow),
            connect_fn=self.connect_fn,
        )
        client_id = uuid.uuid4().hex
        prompt_id: str | None = None
        try:
            follower.open(client_id)
            try:
                prompt_id = self.client.queue_prompt(spec.workflow, client_id)
            except PromptRejected as rejected:
                raise graph.explain_rejection(
                    rejected.body,
                    spec.workflow,
                    object_info,
                    list_models=self.client.models,
                    models_dir=self.cfg.models_dir,
                ) from None
            log.info(f"job {job_id}: queued prompt {prompt_id}")
            t = time.monotonic()
            entry = follower.follow(prompt_id, deadline)
            timings["execution_s"] = round(time.monotonic() - t, 3)
        except JobTimeoutError as e:
            if prompt_id is not None:
                self.client.cancel(prompt_id)  # so the next job does not queue behind this one
            e.fix = e.fix or "ask for a longer input.timeout_s (up to WORKER_JOB_TIMEOUT_S) or a lighter workload"
            e.details.update(prompt_id=prompt_id, timeout_s=spec.timeout_s)
            raise JobTimeoutError(e.what, fix=e.fix, **e.details) from None
        except WorkerError as e:
            if isinstance(e, ComfyUnavailableError) or "comfy" in e.code:
                self._object_info = None  # ComfyUI may come back with other nodes: read /object_info again
            raise
        finally:
            follower.close()

        t = time.monotonic()
        answer = self._collect(job_id, entry.get("outputs") or {}, include_temp=spec.include_temp)
        timings["outputs_s"] = round(time.monotonic() - t, 3)
        timings["total_s"] = round(time.monotonic() - timer, 3)
        answer.update(prompt_id=prompt_id, timings=timings)
        if follower.reconnected:
            answer["websocket_reconnects"] = follower.reconnected
        return answer

    def _get_object_info(self) -> dict[str, Any]:
        # Node classes only change when ComfyUI restarts: cache per ComfyUI process.
        pid = self.client.pid()
        if self._object_info is None or pid != self._object_info_pid:
            self._object_info = self.client.object_info()
            self._object_info_pid = pid
        return self._object_info

    def _upload_inputs(self, files: tuple[validation.InputFile, ...], deadline: float) -> None:
        total = 0
        for entry in files:
            if time.monotonic() > deadline:
                raise JobTimeoutError("The job ran out of time while fetching its input files")
            if entry.url is not None:
                data = inputs.download(entry, limit=self.cfg.max_input_bytes, timeout_s=self.cfg.url_timeout_s)
            else:
                data = inputs.decode(entry)
            total += len(data)
            if total > self.cfg.max_total_input_bytes:
                raise InputTooLargeError(
                    f"The job's input files add up to more than the {self.cfg.max_total_input_bytes / 1e6:.0f} MB "
                    "limit",
                    fix="send fewer or smaller files, or raise WORKER_MAX_TOTAL_INPUT_MB",
                    limit_bytes=self.cfg.max_total_input_bytes,
                )
            stored = self.client.upload(entry.name, data)
            log.info(f"uploaded input {stored} ({log.fmt_bytes(len(data))}, from {entry.source})")

    def _collect(self, job_id: str, history_outputs: Mapping[str, Any], *, include_temp: bool) -> dict[str, Any]:
        files = outputs.collect(history_outputs, include_temp=include_temp)
        sink = self.sink or sink_for(self.cfg.s3, self.cfg.max_response_bytes)
        answer: dict[str, Any] = {"images": [], "videos": [], "files": []}
        for out in files:
            try:
                data = self.client.view(out.ref)
            except OutputError as e:
                raise OutputError(
                    e.what,
                    why="ComfyUI reuses a cached node's result (and its old file) when a job repeats an earlier one; "
                    "that file is gone from its output folder",
                    fix="change any input (the seed) to run the node again; with ComfyUI's --cache-lru, set "
                    "WORKER_DELETE_OUTPUTS=0",
                ) from None
            stored = sink.put(job_id, out, data)
            entry = {
                "filename": out.ref.filename,
                **stored,
                "node_id": out.node_id,
                "output_key": out.key,
                "subfolder": out.ref.subfolder,
                "file_type": out.ref.type,
                "media_type": out.media_type,
                "size_bytes": len(data),
            }
            if out.format:
                entry["format"] = out.format
            answer[out.group].append(entry)
            shown = f"{out.ref.subfolder}/{out.ref.filename}" if out.ref.subfolder else out.ref.filename
            log.info(f"output {shown} ({out.key}, {log.fmt_bytes(len(data))}) -> {stored['type']}")
        self._delete_old_outputs(files)
        skipped = outputs.skipped_temp(history_outputs) if not include_temp else 0
        if skipped:
            answer["skipped_temp_files"] = skipped
        if not files:
            answer["status"] = "success_no_outputs"
        return answer

    def _delete_old_outputs(self, files: list[outputs.OutputFile]) -> None:
        """A long-lived worker would fill its disk with returned outputs, but ComfyUI may serve a file again: when a
        job repeats the previous one, its cached SaveImage/VHS result (and that file) is reused. ComfyUI's default
        cache keeps only the nodes of the last prompt, so a file the last job returned and this one did not can no
        longer be served: delete those, keep this job's until the next."""
        if not (self.cfg.delete_outputs and self.cfg.output_dir):
            return
        root = self.cfg.output_dir.resolve()
        current: set[Path] = set()
        for out in files:
            path = (root / out.ref.subfolder / out.ref.filename).resolve()
            if out.ref.type == "output" and root in path.parents:
                current.add(path)
        for path in sorted(self._returned - current):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warn(f"could not delete returned output {path}: {e}")
        self._returned = current

    def _event_logger(self, job: Mapping[str, Any], workflow: Mapping[str, Mapping[str, Any]]) -> Callable[..., None]:
        last = {"t": 0.0}

        def on_event(kind: str, data: Mapping[str, Any]) -> None:
            node = data.get("node")
            label = f"{node} ({workflow.get(str(node), {}).get('class_type', '?')})" if node is not None else ""
            if kind == "executing" and node is not None:
                message = f"running node {label}"
            elif kind == "progress":
                message = f"node {label}: {data.get('value')}/{data.get('max')}"
            else:
                return
            now = time.monotonic()
            if kind == "executing" or now - last["t"] >= 2.0:  # progress events can come hundreds a second
                last["t"] = now
                log.info(message)
                try:
                    self.progress(job, message)
                except Exception as e:  # progress is a courtesy; never fail a job over it
                    log.warn(f"progress update failed: {e}")

        return on_event


_worker: Worker | None = None


def get_worker(env: Mapping[str, str] | None = None) -> Worker:
    global _worker
    if _worker is None:
        from . import config

        _worker = Worker(config.load(os.environ if env is None else env))
    return _worker


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """What runpod.serverless.start calls."""
    try:
        worker = get_worker()
    except WorkerError as e:
        return e.response()
    return worker.run(job)


def describe(cfg: WorkerConfig) -> str:
    target = f"S3 {cfg.s3.endpoint_url}" if cfg.s3 else f"base64 (up to {cfg.max_response_bytes / 1e6:.0f} MB)"
    out = Path(cfg.output_dir) if cfg.output_dir else None
    return (
        f"ComfyUI {cfg.comfy_url}; job timeout {cfg.job_timeout_s:g}s; inputs up to "
        f"{cfg.max_input_bytes / 1e6:.0f} MB each; outputs as {target}"
        + (f"; returned outputs deleted from {out}" if cfg.delete_outputs and out else "")
    )
