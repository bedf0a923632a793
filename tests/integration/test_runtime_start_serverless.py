"""start.sh in serverless mode, end to end: the real script, the real handler under the runpod SDK, and the
stand-in ComfyUI (runtime_standin.py) in place of ComfyUI's main.py, on loopback, with a fake /runpod-volume.

Shows that the volume's models reach ComfyUI through the generated extra_model_paths.yaml, that a job runs through
`--test_input`, that a ComfyUI crash mid-job fails that job while the supervisor restarts ComfyUI and the worker
serves the next job (runpod's local API server, `--rp_serve_api`), and that a ComfyUI which cannot stay up ends
the worker so RunPod replaces it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
START = REPO / "image" / "runtime" / "start.sh"
STANDIN = Path(__file__).with_name("runtime_standin.py")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MAIN_RUNS_STANDIN = f"""\
import runpy, sys
sys.argv = [{str(STANDIN)!r}] + sys.argv[1:]
runpy.run_path({str(STANDIN)!r}, run_name="__main__")
"""

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "serverless"}},
    "3": {"class_type": "VAELoader", "inputs": {"vae_name": "wanvideo/Wan2_1_VAE_bf16.safetensors"}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Any]:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text(MAIN_RUNS_STANDIN)
    volume = tmp_path / "runpod-volume"
    vae = volume / "models/vae/wanvideo/Wan2_1_VAE_bf16.safetensors"
    vae.parent.mkdir(parents=True)
    vae.write_bytes(b"weights")
    (tmp_path / "standin").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": sys.executable,
        "COMFYUI_DIR": str(comfy),
        "SERVERLESS_VOLUME": str(volume),
        "POD_VOLUME": str(tmp_path / "no-workspace"),
        "RUNTIME_STATE_DIR": str(tmp_path / "state"),
        "COMFY_PID_FILE": str(tmp_path / "comfyui.pid"),
        "COMFY_PORT": str(free_port()),
        "COMFY_ARGS": f"--root {tmp_path / 'standin'} --script-file {tmp_path / 'script.json'}",
        "RUNPOD_ENDPOINT_ID": "test-endpoint",
        "SKIP_GPU_PREFLIGHT": "1",
        "WORKER_WS_POLL_S": "0.5",
        "WORKER_WS_RECONNECT_DELAY_S": "0.3",
        "WORKER_READY_TIMEOUT_S": "60",
    }
    return {"root": tmp_path, "env": env, "output": comfy / "output"}


def start(box: dict[str, Any], *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(START), *args],
        env={**box["env"], **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=box["root"],
    )


def assert_prefixed(output: str) -> None:
    for line in output.splitlines():
        assert line.startswith(("[start] ", "[comfyui] ", "[worker] ")), line


def test_one_job_through_test_input_with_the_volumes_models(box: dict[str, Any]) -> None:
    proc = start(box, "--test_input", json.dumps({"input": {"workflow": WORKFLOW}}))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert_prefixed(out)
    assert "[start] mode: serverless" in out and "[comfyui] stand-in ComfyUI on 127.0.0.1:" in out
    assert "Job local_test completed successfully." in out  # runpod logs JSON lines when RUNPOD_ENDPOINT_ID is set
    assert "'type': 'base64'" in out and "serverless_" in out
    assert "[start] the handler exited with status 0; stopping ComfyUI" in out
    pid = int((box["root"] / "comfyui.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "ComfyUI was left running"


def test_missing_model_error_lists_what_the_volume_holds(box: dict[str, Any]) -> None:
    workflow = dict(WORKFLOW)
    workflow["3"] = {"class_type": "VAELoader", "inputs": {"vae_name": "wanvideo/Wan2_1_VAE_fp32.safetensors"}}
    proc = start(box, "--test_input", json.dumps({"input": {"workflow": workflow}}))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert (
        "Model file missing: 'wanvideo/Wan2_1_VAE_fp32.safetensors' (node 3 VAELoader, input 'vae_name') is "
        "not in ComfyUI's 'vae' models folder" in out
    )
    assert "wanvideo/Wan2_1_VAE_bf16.safetensors" in out  # listed from the volume, through extra_model_paths.yaml
    assert str(box["root"] / "runpod-volume/models") in out


def test_crash_mid_job_fails_that_job_and_the_worker_serves_the_next(box: dict[str, Any]) -> None:
    (box["root"] / "script.json").write_text(json.dumps(["crash"]))
    api_port = free_port()
    proc = start(box, "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(api_port))
    api = f"http://127.0.0.1:{api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{api}/docs", timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the worker's API did not come up"
            time.sleep(0.3)
        first = requests.post(f"{api}/runsync", json={"input": {"workflow": WORKFLOW}}, timeout=120).json()
        assert first["status"] == "FAILED", first
        # runpod's local API keeps only the error string of a failed job: it carries what, why and fix.
        assert "ComfyUI" in first["error"] and ("exited" in first["error"] or "restarted" in first["error"])
        assert "Fix: read the [comfyui] log lines" in first["error"]
        second = requests.post(f"{api}/runsync", json={"input": {"workflow": WORKFLOW}}, timeout=120).json()
        assert second["status"] == "COMPLETED", second
        assert second["output"]["images"][0]["filename"].startswith("serverless_")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "[start] ComfyUI exited with status 3; restarting it" in out, out
    assert "[start] stopping (signal)" in out
    assert_prefixed(out)
    pid = int((box["root"] / "comfyui.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "ComfyUI was left running"


def test_comfy_that_cannot_stay_up_ends_the_worker(box: dict[str, Any]) -> None:
    (Path(box["env"]["COMFYUI_DIR"]) / "main.py").write_text(
        "import sys\nprint('cannot import custom nodes')\nsys.exit(1)\n"
    )
    started = time.monotonic()
    proc = start(box, "--test_input", json.dumps({"input": {"workflow": WORKFLOW}}), COMFY_MAX_RESTARTS="1")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert time.monotonic() - started < 30
    assert out.count("[comfyui] cannot import custom nodes") == 2
    assert "giving up" in out and "[start] stopping the handler: ComfyUI is down for good" in out
