"""The runtime against the real thing: torch 2.5.1 and, where a ComfyUI source folder is given, a real ComfyUI.

- The GPU preflight on this GPU-less machine, with the real torch 2.5.1 (CUDA 12.4 build from PyPI): the message a
  user sees when a container gets no GPU. Runs in CI.
- local_only: a real ComfyUI started on loopback in CPU mode (``--cpu``) from ``COMFYUI_SOURCE`` (a ComfyUI
  checkout; never part of this repository), its requirements installed into the same throwaway environment, running
  the core-node smoke workflow (image/workflows/core_smoke_api.json) and an uploaded image through the handler, once
  through the runpod SDK's local test mode, plus real validation errors (unknown node, missing model file found
  through our extra_model_paths.yaml).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from wheels.envs import PythonEnv, fresh_env

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "image" / "runtime"
WORKFLOWS = REPO / "image" / "workflows"
sys.path.insert(0, str(RUNTIME))
sys.path.insert(0, str(Path(__file__).parent))

from comfy_worker import config  # noqa: E402
from comfy_worker.handler import Worker  # noqa: E402
from runtime_standin import png  # noqa: E402

pytestmark = [pytest.mark.integration]

NO_DRIVER = "Found no NVIDIA driver on your system"


@pytest.fixture(scope="module")
def torch_env() -> Iterator[PythonEnv]:
    """A throwaway environment with torch 2.5.1 (constraints.txt), removed afterwards."""
    with fresh_env("3.11", "python3", prefix="runtime-torch-") as env:
        env.install(["torch", "torchvision", "torchaudio"], what="torch 2.5.1 (PyPI, CUDA 12.4 build)")
        yield env


@pytest.mark.timeout(1200)
def test_preflight_with_real_torch_and_no_gpu(torch_env: PythonEnv) -> None:
    if Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU: the no-CUDA message cannot be produced here")
    done = subprocess.run(
        [str(torch_env.python), "-m", "comfy_worker.preflight"],
        env=torch_env.environ({"PATH": os.environ["PATH"], "PYTHONPATH": str(RUNTIME)}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 12, out + done.stderr
    assert "ok   torch: torch 2.5.1+cu124 (CUDA build 12.4)" in out
    assert f"FAILED: CUDA is not usable: RuntimeError: {NO_DRIVER}" in out
    assert "Why: GPU device nodes: none in /dev" in out
    assert "Fix: run the image with a GPU (RunPod: a GPU pod or endpoint; docker: --gpus all)" in out


# --- a real ComfyUI (local_only) --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def comfy(torch_env: PythonEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    source = os.environ.get("COMFYUI_SOURCE")
    if not source:
        pytest.skip("set COMFYUI_SOURCE to a ComfyUI checkout to run the handler against a real ComfyUI")
    src = Path(source).resolve()
    if not (src / "main.py").is_file():
        pytest.fail(f"COMFYUI_SOURCE={src} has no main.py: point it at a ComfyUI checkout")
    torch_env.install(["-r", str(src / "requirements.txt")], what="ComfyUI's requirements")
    root = tmp_path_factory.mktemp("comfyui")
    models = root / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "present_vae.safetensors").write_bytes(b"not really weights")
    extra = root / "extra_model_paths.yaml"
    subprocess.run(
        [str(torch_env.python), "-m", "comfy_worker.model_paths", "--models-dir", str(models), "--out", str(extra)],
        env={**os.environ, "PYTHONPATH": str(RUNTIME)},
        check=True,
    )
    dirs = {name: root / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    port = free_port()
    cmd = [
        str(torch_env.python),
        "-u",
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--extra-model-paths-config",
        str(extra),
        "--input-directory",
        str(dirs["input"]),
        "--output-directory",
        str(dirs["output"]),
        "--temp-directory",
        str(dirs["temp"]),
        "--user-directory",
        str(dirs["user"]),
    ]
    if "--database-url" in (src / "comfy" / "cli_args.py").read_text():
        cmd += ["--database-url", "sqlite:///:memory:"]  # else it writes a database into the source folder
    log_path = root / "comfyui.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=src, stdout=log, stderr=subprocess.STDOUT, env=torch_env.environ())
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(f"{url}/system_stats", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() - started > 300:
                pytest.fail(f"ComfyUI did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        print(f"ComfyUI ({src}) answered after {time.monotonic() - started:.1f}s")
        (root / "comfyui.pid").write_text(str(proc.pid))
        yield {
            "url": url,
            "root": root,
            "models": models,
            "python": torch_env.python,
            "proc": proc,
            "pid_file": root / "comfyui.pid",
            "output": dirs["output"],
            "log": log_path,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def comfy_worker(comfy: dict[str, Any]) -> Worker:
    env = {
        "WORKER_COMFY_URL": comfy["url"],
        "COMFY_PID_FILE": str(comfy["pid_file"]),
        "COMFY_OUTPUT_DIR": str(comfy["output"]),
        "MODELS_DEST": str(comfy["models"]),
        "WORKER_WS_POLL_S": "1",
    }
    return Worker(config.load(env), progress=lambda job, message: None)


def pixel_and_size(python: Path, data: bytes, tmp_path: Path) -> tuple[list[int], list[int]]:
    path = tmp_path / "out.png"
    path.write_bytes(data)
    probe = (
        "import json, sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); "
        "print(json.dumps([list(im.getpixel((0, 0))), list(im.size)]))"
    )
    out = subprocess.run([str(python), "-c", probe, str(path)], capture_output=True, text=True, check=True)
    pixel, size = json.loads(out.stdout)
    return pixel, size


def close(pixel: list[int], expected: list[int]) -> bool:
    return all(abs(a - b) <= 1 for a, b in zip(pixel, expected, strict=True))


@pytest.mark.local_only
@pytest.mark.timeout(1800)
def test_core_workflow_through_the_handler(comfy: dict[str, Any], tmp_path: Path) -> None:
    workflow = json.loads((WORKFLOWS / "core_smoke_api.json").read_text())
    worker = comfy_worker(comfy)
    answer = worker.run({"id": "real-1", "input": {"workflow": workflow}})
    assert "error" not in answer, answer
    (image,) = answer["images"]
    assert image["subfolder"] == "smoke" and image["media_type"] == "image/png"
    pixel, size = pixel_and_size(comfy["python"], base64.b64decode(image["data"]), tmp_path)
    assert size == [64, 48]
    # EmptyImage #3366CC, inverted; ComfyUI computes in float and truncates back to 8 bits: allow one step
    assert close(pixel, [0xFF - 0x33, 0xFF - 0x66, 0xFF - 0xCC])
    # The same job again: ComfyUI replays its cached result, whose file the worker therefore kept.
    again = worker.run({"id": "real-1b", "input": {"workflow": workflow}})
    assert "error" not in again, again
    assert again["images"][0]["filename"] == image["filename"] and again["images"][0]["data"] == image["data"]
    workflow["1"]["inputs"]["color"] = 0x00FF00
    other = worker.run({"id": "real-1c", "input": {"workflow": workflow}})
    assert "error" not in other, other
    assert not (comfy["output"] / "smoke" / image["filename"]).exists(), "the old output was not deleted"
    assert (comfy["output"] / "smoke" / other["images"][0]["filename"]).exists()


@pytest.mark.local_only
@pytest.mark.timeout(600)
def test_uploaded_image_and_real_validation_errors(comfy: dict[str, Any], tmp_path: Path) -> None:
    worker = comfy_worker(comfy)
    upload = base64.b64encode(png(5, 3, (10, 200, 30))).decode()
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "upload"}},
    }
    answer = worker.run(
        {"id": "real-2", "input": {"workflow": workflow, "images": [{"name": "reference.png", "image": upload}]}}
    )
    assert "error" not in answer, answer
    pixel, size = pixel_and_size(comfy["python"], base64.b64decode(answer["images"][0]["data"]), tmp_path)
    assert size == [5, 3] and close(pixel, [245, 55, 225])

    bad = dict(workflow, **{"2": {"class_type": "ImageInvertt", "inputs": {"image": ["1", 0]}}})
    answer = worker.run({"id": "real-3", "input": {"workflow": bad}})
    assert answer["details"]["code"] == "unknown_node_class" and '(perhaps "ImageInvert"?)' in answer["error"]

    vae = {
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "VAELoader", "inputs": {"vae_name": "missing_vae.safetensors"}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "vae"}},
    }
    answer = worker.run({"id": "real-4", "input": {"workflow": vae}})
    assert answer["details"]["code"] == "missing_model", answer
    (missing,) = answer["details"]["missing"]
    assert missing["folder"] == "vae" and missing["file"] == "missing_vae.safetensors"
    assert "present_vae.safetensors" in missing["available"]  # seen through our extra_model_paths.yaml

    wrong = dict(workflow, **{"3": {"class_type": "SaveImage", "inputs": {"images": ["1", 1], "filename_prefix": "x"}}})
    answer = worker.run(
        {"id": "real-5", "input": {"workflow": wrong, "images": [{"name": "reference.png", "image": upload}]}}
    )
    assert answer["details"]["code"] == "workflow_validation_failed", answer
    assert "node 3 (SaveImage)" in answer["error"]

    answer = worker.run({"id": "real-6", "input": {"workflow": workflow}})  # still serving
    assert "error" not in answer, answer


@pytest.mark.local_only
@pytest.mark.timeout(600)
def test_runpod_local_test_mode_against_real_comfyui(comfy: dict[str, Any]) -> None:
    workflow = json.loads((WORKFLOWS / "core_smoke_api.json").read_text())
    env = {
        **os.environ,
        "PYTHONPATH": str(RUNTIME),
        "WORKER_COMFY_URL": comfy["url"],
        "COMFY_PID_FILE": str(comfy["pid_file"]),
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    done = subprocess.run(
        [sys.executable, "-m", "comfy_worker", "--test_input", json.dumps({"input": {"workflow": workflow}})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "completed successfully" in log and "output smoke/core_" in log


@pytest.mark.local_only
@pytest.mark.timeout(900)
def test_start_script_serverless_with_real_comfyui(comfy: dict[str, Any], torch_env: PythonEnv, tmp_path: Path) -> None:
    """The image's smoke test, outside the image: start.sh in serverless mode starts the real ComfyUI on a CPU and
    the handler runs the core workflow through `--test_input`; with the preflight on, it stops at CUDA."""
    torch_env.install(["runpod", "websocket-client", "requests"], what="the handler's dependencies")
    source = Path(os.environ["COMFYUI_SOURCE"]).resolve()
    volume = tmp_path / "runpod-volume"
    (volume / "models" / "vae").mkdir(parents=True)
    dirs = {name: tmp_path / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    comfy_args = f"--cpu --temp-directory {dirs['temp']}"
    if "--database-url" in (source / "comfy" / "cli_args.py").read_text():
        comfy_args += " --database-url sqlite:///:memory:"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON": str(torch_env.python),
        "COMFYUI_DIR": str(source),
        "RUNPOD_MODE": "serverless",
        "SERVERLESS_VOLUME": str(volume),
        "POD_VOLUME": str(tmp_path / "no-workspace"),
        "RUNTIME_STATE_DIR": str(tmp_path / "state"),
        "COMFY_PID_FILE": str(tmp_path / "comfyui.pid"),
        "COMFY_PORT": str(free_port()),
        "COMFY_ARGS": comfy_args,
        "COMFY_INPUT_DIR": str(dirs["input"]),
        "COMFY_OUTPUT_DIR": str(dirs["output"]),
        "COMFY_USER_DIR": str(dirs["user"]),
        "SKIP_GPU_PREFLIGHT": "1",
    }
    workflow = json.loads((WORKFLOWS / "core_smoke_api.json").read_text())
    test_input = json.dumps({"input": {"workflow": workflow}})
    start = REPO / "image" / "runtime" / "start.sh"
    done = subprocess.run(
        ["bash", str(start), "--test_input", test_input], env=env, capture_output=True, text=True, timeout=600
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "[comfyui] " in out and "completed successfully" in out and "output smoke/core_" in out
    assert "[start] the handler exited with status 0; stopping ComfyUI" in out
    pid = int((tmp_path / "comfyui.pid").read_text())
    assert not Path(f"/proc/{pid}").exists(), "ComfyUI was left running"

    done = subprocess.run(
        ["bash", str(start), "--test_input", test_input],
        env={**env, "SKIP_GPU_PREFLIGHT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 12, done.stdout
    assert f"[preflight] FAILED: CUDA is not usable: RuntimeError: {NO_DRIVER}" in done.stdout
