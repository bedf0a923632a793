"""start.sh's own logic, run under bash with fake volumes: mode choice, volume and model paths, the optional model
fetch, and the GPU preflight's failure message on a machine without CUDA. ComfyUI's main.py is replaced by a stub
that records how it was started (these tests are about the script, not ComfyUI); serverless end-to-end runs, with a
stand-in ComfyUI and the real handler, are in tests/integration/test_runtime_start_serverless.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
START = REPO / "image" / "runtime" / "start.sh"

STUB_MAIN = """\
import json, os, sys, time
record = {"argv": sys.argv[1:], "cwd": os.getcwd(),
          "env": {k: os.environ.get(k) for k in ("MODELS_DEST", "AUX_ANNOTATOR_CKPTS_PATH", "COMFY_OUTPUT_DIR",
                                                 "PYTHONPATH", "COMFY_PID_FILE")}}
with open(os.environ["STUB_RECORD"], "a") as f:
    f.write(json.dumps(record) + "\\n")
print("stub ComfyUI started")
print("second line", file=sys.stderr)
if os.environ.get("STUB_STAY"):
    time.sleep(60)
"""

# What torch 2.5.1 raises on a machine without an NVIDIA driver (this machine): the message users will see.
NO_DRIVER = (
    "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver "
    "from http://www.nvidia.com/Download/index.aspx"
)


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text(STUB_MAIN)
    paths = {
        "root": tmp_path,
        "comfy": comfy,
        "workspace": tmp_path / "workspace",
        "runpod_volume": tmp_path / "runpod-volume",
        "state": tmp_path / "state",
        "record": tmp_path / "record.jsonl",
        "stubs": tmp_path / "stubs",
    }
    paths["stubs"].mkdir()
    return paths


def run_start(
    box: dict[str, Path], env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(box["root"]),
        "PYTHON": sys.executable,
        "COMFYUI_DIR": str(box["comfy"]),
        "POD_VOLUME": str(box["workspace"]),
        "SERVERLESS_VOLUME": str(box["runpod_volume"]),
        "RUNTIME_STATE_DIR": str(box["state"]),
        "COMFY_PID_FILE": str(box["root"] / "comfyui.pid"),
        "STUB_RECORD": str(box["record"]),
        "SKIP_GPU_PREFLIGHT": "1",
        "PYTHONPATH": str(box["stubs"]),
    }
    return subprocess.run(
        ["bash", str(START), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=box["root"],
    )


def records(box: dict[str, Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in box["record"].read_text().splitlines()] if box["record"].exists() else []


def arg(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def assert_prefixed(output: str) -> None:
    for line in output.splitlines():
        assert line.startswith(("[start] ", "[comfyui] ", "[worker] ", "[preflight] ", "[models] ")), line


def test_pod_mode_serves_on_all_interfaces_with_the_workspace_models(box: dict[str, Path]) -> None:
    box["workspace"].mkdir()
    box["runpod_volume"].mkdir()  # both mounted: a pod prefers /workspace
    done = run_start(box, {"COMFY_ARGS": "--preview-method auto"}, "--verbose", "DEBUG")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_prefixed(done.stdout)
    assert "[start] mode: pod (RUNPOD_MODE unset, RUNPOD_ENDPOINT_ID is not set)" in done.stdout
    assert "[comfyui] stub ComfyUI started" in done.stdout and "[comfyui] second line" in done.stdout
    (rec,) = records(box)
    argv = rec["argv"]
    assert arg(argv, "--listen") == "0.0.0.0" and arg(argv, "--port") == "8188"
    assert "--disable-auto-launch" in argv and argv[-4:] == ["--preview-method", "auto", "--verbose", "DEBUG"]
    ws = box["workspace"]
    assert arg(argv, "--output-directory") == str(ws / "comfyui/output")
    assert arg(argv, "--input-directory") == str(ws / "comfyui/input")
    assert arg(argv, "--user-directory") == str(ws / "comfyui/user")
    assert rec["cwd"] == str(box["comfy"])
    assert rec["env"]["MODELS_DEST"] == str(ws / "models")
    assert rec["env"]["AUX_ANNOTATOR_CKPTS_PATH"] == str(ws / "models/annotators")
    config_path = Path(arg(argv, "--extra-model-paths-config") or "")
    assert config_path == box["state"] / "extra_model_paths.yaml"
    config = yaml.safe_load(config_path.read_text())
    (section,) = config.values()
    assert section["base_path"] == str(ws / "models") and section["is_default"] is True
    for folder in ("diffusion_models", "text_encoders", "clip_vision", "vae", "loras", "detection"):
        assert folder in section
        assert (ws / "models" / folder).is_dir()
    assert section["diffusion_models"].split() == ["diffusion_models", "unet"]
    assert (ws / "models/annotators").is_dir()


def test_serverless_mode_from_the_endpoint_id_uses_the_runpod_volume(box: dict[str, Path]) -> None:
    box["workspace"].mkdir()
    box["runpod_volume"].mkdir()
    # No job source: runpod's local mode finds no test_input.json and the handler exits 1, which must stop ComfyUI.
    done = run_start(box, {"RUNPOD_ENDPOINT_ID": "abc123", "STUB_STAY": "1"})
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert_prefixed(out)
    assert "[start] mode: serverless (RUNPOD_MODE unset, RUNPOD_ENDPOINT_ID is set)" in out
    assert "[worker] " in out and "the handler exited with status 1; stopping ComfyUI" in out
    (rec,) = records(box)
    assert arg(rec["argv"], "--listen") == "127.0.0.1"
    assert "--input-directory" not in rec["argv"]  # serverless keeps nothing on the volume but models
    assert rec["env"]["MODELS_DEST"] == str(box["runpod_volume"] / "models")
    assert rec["env"]["COMFY_OUTPUT_DIR"] == str(box["comfy"] / "output")
    pid = int((box["root"] / "comfyui.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), (
        "ComfyUI was left running"
    )


def test_mode_setting_wins_and_is_checked(box: dict[str, Path]) -> None:
    box["runpod_volume"].mkdir()
    done = run_start(box, {"RUNPOD_MODE": "pod", "RUNPOD_ENDPOINT_ID": "abc"})
    assert done.returncode == 0 and "mode: pod (RUNPOD_MODE=pod)" in done.stdout
    # /workspace is absent: a pod uses whichever volume is mounted
    assert records(box)[0]["env"]["MODELS_DEST"] == str(box["runpod_volume"] / "models")
    done = run_start(box, {"RUNPOD_MODE": "server"})
    assert done.returncode == 3
    assert '[start] error: RUNPOD_MODE="server" is not a mode' in done.stdout
    assert "[start]   fix: set RUNPOD_MODE to pod or serverless" in done.stdout


def test_no_volume_falls_back_to_comfys_own_models_folder(box: dict[str, Path]) -> None:
    done = run_start(box, {})
    assert done.returncode == 0, done.stdout
    assert "no volume at" in done.stdout
    rec = records(box)[0]
    assert rec["env"]["MODELS_DEST"] == str(box["comfy"] / "models")
    assert arg(rec["argv"], "--output-directory") == str(box["comfy"] / "output")


def test_explicit_settings_and_a_legacy_volume_layout(box: dict[str, Path]) -> None:
    volume = box["root"] / "mnt"
    (volume / "ComfyUI/models/vae").mkdir(parents=True)
    models = box["root"] / "elsewhere"
    done = run_start(
        box,
        {
            "VOLUME_ROOT": str(volume),
            "MODELS_DEST": str(models),
            "AUX_ANNOTATOR_CKPTS_PATH": "/opt/aux",
            "COMFY_PORT": "9999",
        },
    )
    assert done.returncode == 0, done.stdout
    rec = records(box)[0]
    assert rec["env"]["MODELS_DEST"] == str(models) and rec["env"]["AUX_ANNOTATOR_CKPTS_PATH"] == "/opt/aux"
    assert arg(rec["argv"], "--port") == "9999"
    config = yaml.safe_load(Path(arg(rec["argv"], "--extra-model-paths-config") or "").read_text())
    assert [s["base_path"] for s in config.values()] == [str(models), str(volume / "ComfyUI/models")]
    assert [s.get("is_default") for s in config.values()] == [True, None]
    assert "also reading models from" in done.stdout
    done = run_start(box, {"VOLUME_ROOT": str(box["root"] / "nope")})
    assert done.returncode == 3 and "VOLUME_ROOT" in done.stdout


def test_settings_that_cannot_work_stop_the_start(box: dict[str, Path]) -> None:
    done = run_start(box, {"MODELS_VARIANT": "fp8"})
    assert done.returncode == 3 and "use MODELS_VARIANTS (plural" in done.stdout
    done = run_start(box, {"COMFYUI_DIR": str(box["root"] / "missing")})
    assert done.returncode == 3 and "ComfyUI is not at COMFYUI_DIR" in done.stdout
    done = run_start(box, {"COMFY_PORT": "80a"})
    assert done.returncode == 3 and "not a port number" in done.stdout
    assert not records(box)


def write_models_stub(box: dict[str, Path], status: int) -> None:
    pkg = box["stubs"] / "models"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        textwrap.dedent(f"""\
        import json, os, sys
        with open(os.environ["STUB_RECORD"], "a") as f:
            f.write(json.dumps({{"models_argv": sys.argv[1:], "variants": os.environ.get("MODELS_VARIANTS")}}) + "\\n")
        print("fetched 0 files, 9 already verified" if {status} == 0 else "error: the hub answered 401")
        sys.exit({status})
        """)
    )


def test_models_are_fetched_when_variants_are_asked_for(box: dict[str, Path]) -> None:
    box["workspace"].mkdir()
    write_models_stub(box, 0)
    done = run_start(box, {"MODELS_VARIANTS": "fp8,pose-onnx"})
    assert done.returncode == 0, done.stdout
    fetch, comfy = records(box)
    assert fetch == {"models_argv": ["--dest", str(box["workspace"] / "models")], "variants": "fp8,pose-onnx"}
    assert "argv" in comfy  # ComfyUI starts after the fetch
    assert "[models] fetched 0 files, 9 already verified" in done.stdout
    box["record"].unlink()
    done = run_start(box, {"MODELS_VARIANTS": "fp8", "FETCH_MODELS": "0"})
    assert done.returncode == 0 and [list(r) for r in records(box)] == [["argv", "cwd", "env"]]


def test_a_failed_fetch_stops_the_start_with_the_reason(box: dict[str, Path]) -> None:
    write_models_stub(box, 22)
    done = run_start(box, {"FETCH_MODELS": "1"})
    assert done.returncode == 4
    assert "[models] error: the hub answered 401" in done.stdout
    assert "[start] error: fetching models failed" in done.stdout and "HF_TOKEN" in done.stdout
    assert [r for r in records(box) if "argv" in r] == []  # ComfyUI never started


def write_torch_stub(box: dict[str, Path], body: str) -> None:
    pkg = box["stubs"] / "torch"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))


def test_preflight_failure_without_cuda_stops_the_start(box: dict[str, Path]) -> None:
    write_torch_stub(
        box,
        f"""\
        __version__ = "2.5.1+cu124"
        class version:
            cuda = "12.4"
        class cuda:
            @staticmethod
            def init():
                raise RuntimeError({NO_DRIVER!r})
        """,
    )
    done = run_start(box, {"SKIP_GPU_PREFLIGHT": "0"})
    out = done.stdout
    assert done.returncode == 12, out
    assert_prefixed(out)
    assert "[preflight] ok   torch: torch 2.5.1+cu124 (CUDA build 12.4)" in out
    assert f"[preflight] FAILED: CUDA is not usable: RuntimeError: {NO_DRIVER}" in out
    assert "[preflight]   Fix: run the image with a GPU" in out and "--gpus all" in out
    assert "SKIP_GPU_PREFLIGHT=1" in out
    assert "[start] error: the GPU preflight failed" in out
    assert not records(box)


def test_models_baked_into_the_image_are_read_after_the_volume(box: dict[str, Path]) -> None:
    box["workspace"].mkdir()
    baked = box["root"] / "opt-models"
    (baked / "annotators" / "yzd-v" / "DWPose").mkdir(parents=True)
    done = run_start(box, {"BAKED_MODELS_DIR": str(baked)})
    assert done.returncode == 0, done.stdout
    rec = records(box)[0]
    config = yaml.safe_load(Path(arg(rec["argv"], "--extra-model-paths-config") or "").read_text())
    assert [s["base_path"] for s in config.values()] == [str(box["workspace"] / "models"), str(baked)]
    # The volume has no annotators yet: DWPose reads the baked ones.
    assert rec["env"]["AUX_ANNOTATOR_CKPTS_PATH"] == str(baked / "annotators")
    (box["workspace"] / "models/annotators/yzd-v").mkdir(parents=True, exist_ok=True)
    done = run_start(box, {"BAKED_MODELS_DIR": str(baked)})
    assert records(box)[1]["env"]["AUX_ANNOTATOR_CKPTS_PATH"] == str(box["workspace"] / "models/annotators")
