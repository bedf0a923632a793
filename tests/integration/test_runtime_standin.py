"""The serverless handler against a scripted stand-in ComfyUI on loopback (runtime_standin.py).

Covers what a real ComfyUI cannot be made to do on demand: a websocket drop, a crash mid-job, a hung prompt, an
execution error; plus every kind of output (images, VHS videos under "gifs", other keys), input upload by base64 and
by URL, and each bad input. After every failure the same worker takes the next job. One test drives the handler
through the runpod SDK's local test mode (`python -m comfy_worker --test_input ...`).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "image" / "runtime"
STANDIN = Path(__file__).with_name("runtime_standin.py")
sys.path.insert(0, str(RUNTIME))

from comfy_worker import config  # noqa: E402
from comfy_worker.handler import Worker  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


class StandinProcess:
    """The stand-in as its own process, so that it can really crash."""

    def __init__(self, root: Path, models: Path, port: int | None = None) -> None:
        self.root, self.models = root, models
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = root / "comfyui.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StandinProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(STANDIN),
                "--listen",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--root",
                str(self.root),
                "--models-root",
                str(self.models),
                "--pid-file",
                str(self.pid_file),
                "--max-upload-size",
                "5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/system_stats", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, "the stand-in exited at start"
            time.sleep(0.1)
        raise AssertionError("the stand-in did not come up")

    def script(self, *modes: str) -> None:
        requests.post(f"{self.url}/_standin/script", json={"modes": list(modes)}, timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for rel in (
        "vae/wanvideo/Wan2_1_VAE_bf16.safetensors",
        "vae/wan_2.1_vae.safetensors",
        "clip_vision/clip_vision_h.safetensors",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"weights")
    return root


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[StandinProcess]:
    server = StandinProcess(tmp_path_factory.mktemp("standin"), models).start()
    yield server
    server.stop()


def make_worker(server: StandinProcess, **overrides: str) -> Worker:
    env = {
        "WORKER_COMFY_URL": server.url,
        "COMFY_PID_FILE": str(server.pid_file),
        "COMFY_OUTPUT_DIR": str(server.root / "output"),
        "MODELS_DEST": str(server.models),
        "WORKER_READY_TIMEOUT_S": "20",
        "WORKER_WS_POLL_S": "0.5",
        "WORKER_WS_RECONNECTS": "5",
        "WORKER_WS_RECONNECT_DELAY_S": "0.3",
        **overrides,
    }
    return Worker(config.load(env), progress=lambda job, message: None)


@pytest.fixture
def worker(standin: StandinProcess) -> Worker:
    standin.script()  # no leftover modes from another test
    return make_worker(standin)


def save_image(color: int = 0xFF0000, width: int = 8, height: int = 4) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "test/out"}},
    }


def job(workflow: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "job-" + os.urandom(3).hex(), "input": {"workflow": workflow, **extra}}


def assert_ok(answer: dict[str, Any]) -> None:
    assert "error" not in answer, json.dumps(answer, indent=1)[:3000]


def assert_serves_next_job(worker: Worker) -> None:
    answer = worker.run(job(save_image()))
    assert_ok(answer)
    assert len(answer["images"]) == 1


# --- outputs ---------------------------------------------------------------------------------------------------------


def test_images_videos_and_other_output_keys_all_come_back(worker: Worker, standin: StandinProcess) -> None:
    workflow = save_image(width=16, height=8)
    workflow.update(
        {
            "4": {
                "class_type": "VHS_VideoCombine",
                "inputs": {
                    "images": ["2", 0],
                    "frame_rate": 16,
                    "filename_prefix": "clip",
                    "format": "video/h264-mp4",
                    "save_output": True,
                },
            },
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            "6": {"class_type": "EmptyAudio", "inputs": {"seconds": 1.0}},
            "7": {"class_type": "SaveAudio", "inputs": {"audio": ["6", 0], "filename_prefix": "sound"}},
        }
    )
    answer = worker.run(job(workflow))
    assert_ok(answer)
    (image,) = answer["images"]
    assert image["type"] == "base64" and image["media_type"] == "image/png" and image["node_id"] == "3"
    assert png_size(base64.b64decode(image["data"])) == (16, 8)
    assert image["subfolder"] == "test"
    (video,) = answer["videos"]  # VHS reports videos under "gifs": the stock worker drops them
    assert video["output_key"] == "gifs" and video["media_type"] == "video/mp4"
    assert video["format"] == "video/h264-mp4"
    assert base64.b64decode(video["data"])[4:8] == b"ftyp"
    (audio,) = answer["files"]
    assert audio["output_key"] == "audio" and audio["filename"].endswith(".flac")
    assert answer["skipped_temp_files"] == 1  # the PreviewImage
    assert set(answer["timings"]) >= {"comfy_ready_s", "execution_s", "outputs_s", "total_s"}


def test_returned_outputs_are_deleted_once_comfy_cannot_serve_them_again(
    worker: Worker, standin: StandinProcess
) -> None:
    output = standin.root / "output"
    first = worker.run(job(save_image(color=0x123456)))
    assert_ok(first)
    first_file = output / "test" / first["images"][0]["filename"]
    assert first_file.exists()  # kept: ComfyUI's cache may serve it again
    again = worker.run(job(save_image(color=0x123456)))  # the same prompt: ComfyUI replays the cached result
    assert_ok(again)
    assert again["images"][0]["filename"] == first["images"][0]["filename"]
    assert again["images"][0]["data"] == first["images"][0]["data"]
    other = worker.run(job(save_image(color=0x654321)))
    assert_ok(other)
    # A long-lived worker must not fill its disk: what no cached node can serve any more is removed.
    assert not first_file.exists()
    assert (output / "test" / other["images"][0]["filename"]).exists()


def test_temp_outputs_on_request(worker: Worker) -> None:
    workflow = save_image()
    workflow["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    answer = worker.run(job(workflow, include_temp=True))
    assert_ok(answer)
    assert sorted(i["file_type"] for i in answer["images"]) == ["output", "temp"]


def test_outputs_over_the_response_limit_point_at_s3(standin: StandinProcess) -> None:
    worker = make_worker(standin, WORKER_MAX_RESPONSE_MB="0.0001")
    answer = worker.run(job(save_image(width=64, height=64)))
    assert answer["details"]["code"] == "output_too_large"
    assert "BUCKET_ENDPOINT_URL" in answer["details"]["fix"]
    assert_serves_next_job(make_worker(standin))


# --- inputs ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain HTTP server on loopback, for inputs given by URL."""
    handler = type("H", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def test_input_files_by_base64_and_url_are_uploaded(worker: Worker, file_server: tuple[str, Path]) -> None:
    base_url, folder = file_server
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(300)
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000)
    (folder / "dance.mp4").write_bytes(video)
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "echo"}},
        "3": {"class_type": "VHS_LoadVideo", "inputs": {"video": "driving.mp4"}},
        "4": {
            "class_type": "VHS_VideoCombine",
            "inputs": {
                "images": ["3", 0],
                "frame_rate": 16,
                "filename_prefix": "echo",
                "format": "video/h264-mp4",
                "save_output": True,
            },
        },
    }
    answer = worker.run(
        job(
            workflow,
            images=[{"name": "reference.png", "image": "data:image/png;base64," + base64.b64encode(image).decode()}],
            files=[{"name": "driving.mp4", "url": f"{base_url}/dance.mp4"}],
        )
    )
    assert_ok(answer)
    assert base64.b64decode(answer["images"][0]["data"]) == image
    assert base64.b64decode(answer["videos"][0]["data"]).endswith(video)


def test_oversized_inputs_are_refused_before_upload(standin: StandinProcess, file_server: tuple[str, Path]) -> None:
    base_url, folder = file_server
    (folder / "big.mp4").write_bytes(os.urandom(5000))
    worker = make_worker(standin, WORKER_MAX_INPUT_MB="0.004", WORKER_MAX_TOTAL_INPUT_MB="0.006")
    uploads_before = requests.get(f"{standin.url}/_standin/state", timeout=5).json()["uploads"]
    inline = base64.b64encode(os.urandom(5000)).decode()
    small = base64.b64encode(os.urandom(3500)).decode()
    cases = [
        ({"images": [{"name": "a.png", "image": inline}]}, "a.png"),
        ({"files": [{"name": "big.mp4", "url": f"{base_url}/big.mp4"}]}, "big.mp4"),
        ({"images": [{"name": "b.png", "image": small}, {"name": "c.png", "image": small}]}, "add up"),
    ]
    for extra, needle in cases:
        answer = worker.run(job(save_image(), **extra))
        assert answer["details"]["code"] == "input_too_large", answer
        assert needle in answer["error"]
        assert "limit" in answer["error"] and answer["details"]["fix"]
    assert requests.get(f"{standin.url}/_standin/state", timeout=5).json()["uploads"] == uploads_before
    answer = worker.run(job(save_image(), files=[{"name": "gone.mp4", "url": f"{base_url}/missing.mp4"}]))
    assert answer["details"]["code"] == "input_fetch_failed" and "404" in answer["error"]
    assert_serves_next_job(worker)


# --- bad workflows ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_input", "code", "needle"),
    [
        ("not json", "invalid_input", "not valid JSON"),
        ([1, 2], "invalid_input", "must be a JSON object"),
        ({"workflo": {}}, "invalid_input", 'Perhaps you meant "workflow"'),
        ({"workflow": {"nodes": [], "links": []}}, "invalid_workflow", "UI (graph) format"),
        ({"workflow": {"1": {"inputs": {}}}}, "invalid_workflow", "class_type"),
        (
            {"workflow": {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}}},
            "invalid_workflow",
            "not in the workflow",
        ),
        ({"workflow": {}}, "invalid_workflow", "empty"),
        (
            {
                "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                "images": [{"name": "../x.png", "image": "AA=="}],
            },
            "invalid_input",
            "plain file name",
        ),
        (
            {
                "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
                "images": [{"name": "x.png", "image": "@@@"}],
            },
            "invalid_input",
            "not valid base64",
        ),
        (
            {"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "timeout_s": 10**9},
            "invalid_input",
            "over this worker's limit",
        ),
    ],
)
def test_malformed_input_gets_a_clear_error(worker: Worker, job_input: Any, code: str, needle: str) -> None:
    answer = worker.run({"id": "bad", "input": job_input})
    assert answer["details"]["code"] == code, answer
    assert needle in answer["error"] + answer["details"].get("fix", "")
    assert_serves_next_job(worker)


def test_comfy_validation_errors_are_passed_on(worker: Worker) -> None:
    workflow = {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["2", 0]}},
        "2": {"class_type": "EmptyImage", "inputs": {"height": 4, "batch_size": 1, "color": 0}},
    }
    answer = worker.run(job(workflow))
    assert answer["details"]["code"] == "workflow_validation_failed"
    assert "Required input is missing" in answer["error"] and "width" in answer["error"]
    assert answer["details"]["node_errors"][0]["node_id"] == "2"
    assert_serves_next_job(worker)


def test_unknown_node_class_is_named_before_queueing(worker: Worker) -> None:
    workflow = save_image()
    workflow["3"]["class_type"] = "SaveImagee"
    answer = worker.run(job(workflow))
    assert answer["details"]["code"] == "unknown_node_class"
    assert '"SaveImagee" (perhaps "SaveImage"?)' in answer["error"]
    assert answer["details"]["nodes"] == {"3": "SaveImagee"}
    workflow = save_image()
    workflow["9"] = {"class_type": "SetNode", "inputs": {}}
    answer = worker.run(job(workflow))
    assert "Export (API)" in answer["details"]["fix"]
    assert_serves_next_job(worker)


def test_missing_model_file_names_file_folder_and_what_is_there(worker: Worker, standin: StandinProcess) -> None:
    workflow = save_image()
    workflow["4"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wanvideo/Wan2_1_VAE_fp32.safetensors"}}
    answer = worker.run(job(workflow))
    assert answer["details"]["code"] == "missing_model"
    assert "'wanvideo/Wan2_1_VAE_fp32.safetensors'" in answer["error"] and "'vae' models folder" in answer["error"]
    (missing,) = answer["details"]["missing"]
    assert missing["folder"] == "vae" and missing["node_id"] == "4"
    assert missing["available"] == ["wan_2.1_vae.safetensors", "wanvideo/Wan2_1_VAE_bf16.safetensors"]
    assert missing["closest"] == "wanvideo/Wan2_1_VAE_bf16.safetensors"
    assert str(standin.models) in answer["details"]["fix"]
    # An input not in model_inputs.toml is still recognised, its folder read from the node's tooltip.
    workflow = save_image()
    workflow["4"] = {
        "class_type": "WanVideoModelLoader",
        "inputs": {"model": "WanVideo/SteadyDancer/nope.safetensors", "base_precision": "bf16"},
    }
    answer = worker.run(job(workflow))
    assert answer["details"]["missing"][0]["folder"] == "diffusion_models"
    assert_serves_next_job(worker)


# --- faults a real ComfyUI cannot produce on demand -------------------------------------------------------------------


def test_websocket_drop_reconnects_and_finds_the_result(worker: Worker, standin: StandinProcess) -> None:
    standin.script("ws_drop")
    answer = worker.run(job(save_image()))
    assert_ok(answer)
    assert answer["websocket_reconnects"] >= 1
    assert len(answer["images"]) == 1
    assert_serves_next_job(worker)


def test_timeout_cancels_the_prompt_and_the_next_job_runs(worker: Worker, standin: StandinProcess) -> None:
    standin.script("hang")
    started = time.monotonic()
    answer = worker.run(job(save_image(), timeout_s=2))
    assert time.monotonic() - started < 15
    assert answer["details"]["code"] == "timeout" and answer["details"]["timeout_s"] == 2
    assert "timeout_s" in answer["details"]["fix"]
    state = requests.get(f"{standin.url}/_standin/state", timeout=5).json()
    deadline = time.monotonic() + 5
    while (state["running"] or state["pending"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        state = requests.get(f"{standin.url}/_standin/state", timeout=5).json()
    assert not state["running"] and not state["pending"], "the hung prompt was not cancelled"
    assert_serves_next_job(worker)


def test_execution_error_names_the_node_and_the_remedy(worker: Worker, standin: StandinProcess) -> None:
    standin.script("error")
    answer = worker.run(job(save_image()))
    assert answer["details"]["code"] == "execution_error"
    assert answer["details"]["node_type"] == "ImageInvert" and "OutOfMemoryError" in answer["error"]
    assert "GPU ran out of memory" in answer["details"]["fix"]
    assert_serves_next_job(worker)


def test_comfy_crash_mid_job_is_reported_and_the_worker_serves_the_restarted_comfy(
    tmp_path: Path, models: Path
) -> None:
    server = StandinProcess(tmp_path, models).start()
    try:
        worker = make_worker(server)
        assert_serves_next_job(worker)
        server.script("crash")
        started = time.monotonic()
        answer = worker.run(job(save_image()))
        assert time.monotonic() - started < 15
        assert answer["details"]["code"] == "comfy_crashed", answer
        assert "[comfyui] log" in answer["details"]["fix"]
        server.proc.wait(5)  # type: ignore[union-attr]
        assert server.proc.returncode == 3  # type: ignore[union-attr]
        server.start()  # what start.sh's supervisor does
        assert_serves_next_job(worker)
    finally:
        server.stop()


def test_comfy_that_never_comes_up_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    worker = Worker(
        config.load(
            {
                "WORKER_COMFY_URL": f"http://127.0.0.1:{port}",
                "WORKER_READY_TIMEOUT_S": "1",
                "COMFY_PID_FILE": str(tmp_path / "none.pid"),
            }
        )
    )
    answer = worker.run(job(save_image()))
    assert answer["details"]["code"] == "comfy_unavailable"
    assert "did not answer within 1 s" in answer["error"]
    assert "WORKER_READY_TIMEOUT_S" in answer["details"]["fix"]


# --- through the runpod SDK -------------------------------------------------------------------------------------------


def run_local(server: StandinProcess, job_input: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(RUNTIME),
        "WORKER_COMFY_URL": server.url,
        "COMFY_PID_FILE": str(server.pid_file),
        "WORKER_WS_POLL_S": "0.5",
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)  # local mode
    return subprocess.run(
        [sys.executable, "-m", "comfy_worker", "--test_input", json.dumps({"input": job_input})],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runpod_sdk_local_test_mode(standin: StandinProcess) -> None:
    standin.script()
    done = run_local(standin, {"workflow": save_image()})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "completed successfully" in log
    assert "output test/out_" in log and "'type': 'base64'" in log  # the handler's line and runpod's result line
    failed = run_local(standin, {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    log = failed.stdout + failed.stderr
    assert failed.returncode == 1, log  # runpod's local mode exits 1 when the job answers with an error
    assert "NoSuchNode" in log and "does not have" in log
