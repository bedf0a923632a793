"""The workflows the image ships (image/workflows): valid API format, the node classes they need, the input file
names the documented job payload provides, and model file names that match the models manifest."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "image" / "workflows"
MANIFEST = REPO / "models" / "manifest.toml"
sys.path.insert(0, str(REPO / "image" / "runtime"))

from comfy_worker import graph, validation  # noqa: E402

# Node classes and the package that provides each (ComfyUI core, or the custom node packages the image installs).
STEADYDANCER_NODES = {
    "ComfyUI-WanVideoWrapper": {
        "WanVideoModelLoader",
        "WanVideoVAELoader",
        "WanVideoBlockSwap",
        "WanVideoSetBlockSwap",
        "WanVideoLoraSelect",
        "WanVideoSetLoRAs",
        "WanVideoTextEncodeCached",
        "WanVideoClipVisionEncode",
        "WanVideoImageToVideoEncode",
        "WanVideoEncode",
        "WanVideoAddSteadyDancerEmbeds",
        "WanVideoContextOptions",
        "WanVideoScheduler",
        "WanVideoSamplerSettings",
        "WanVideoSamplerFromSettings",
        "WanVideoDecode",
    },
    "ComfyUI-WanAnimatePreprocess": {"OnnxDetectionModelLoader", "PoseAndFaceDetection", "DrawViTPose"},
    "ComfyUI-KJNodes": {"ImageResizeKJv2", "GetImageSizeAndCount", "GetImageRangeFromBatch", "ImageConcatMulti"},
    "ComfyUI-VideoHelperSuite": {"VHS_LoadVideo", "VHS_VideoCombine"},
    "ComfyUI": {"LoadImage", "CLIPVisionLoader"},
}
CORE_NODES = {"EmptyImage", "ImageInvert", "SaveImage"}


def load(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / name).read_text())


def test_core_smoke_workflow_uses_only_core_nodes_and_no_models() -> None:
    workflow = validation.check_workflow(load("core_smoke_api.json"))
    assert {n["class_type"] for n in workflow.values()} == CORE_NODES


def test_steadydancer_workflow_is_api_format_with_the_expected_nodes() -> None:
    workflow = validation.check_workflow(load("steadydancer_api.json"))
    classes = {n["class_type"] for n in workflow.values()}
    assert classes == set().union(*STEADYDANCER_NODES.values())
    assert not classes & graph.UI_ONLY_NODES
    # Outputs the job returns: the result video and the side-by-side comparison; the pose preview is a temp file.
    combines = {nid: n["inputs"] for nid, n in workflow.items() if n["class_type"] == "VHS_VideoCombine"}
    saved = sorted(i["filename_prefix"] for i in combines.values() if i["save_output"])
    assert saved == ["SteadyDancer", "WanVideoWrapper_SteadyDancer"]
    assert combines["130"]["images"] == ["28", 0]  # the decoded video itself


def test_steadydancer_settings_that_the_image_can_run() -> None:
    loader = load("steadydancer_api.json")["22"]["inputs"]
    # flash-attn is what the image builds (no sageattention); fp16_fast needs torch >= 2.7 and the image has 2.5.1.
    assert loader["attention_mode"] == "flash_attn_2" and loader["base_precision"] != "fp16_fast"
    assert "compile_args" not in loader


def test_input_file_names_match_the_documented_payload() -> None:
    workflow = load("steadydancer_api.json")
    names = {
        n["inputs"].get("image") or n["inputs"].get("video")
        for n in workflow.values()
        if n["class_type"] in ("LoadImage", "VHS_LoadVideo")
    }
    assert names == {"reference.png", "driving.mp4"}
    doc = (WORKFLOWS / "README.md").read_text()
    for name in names:
        assert f'"name": "{name}"' in doc
    payload = {
        "workflow": workflow,
        "images": [{"name": "reference.png", "image": "iVBORw0KGgo="}],
        "files": [{"name": "driving.mp4", "url": "https://example.com/driving.mp4"}],
    }
    job = validation.parse_job(payload, max_timeout_s=3600, max_input_bytes=10**8, max_total_input_bytes=10**8)
    assert [f.name for f in job.files] == ["reference.png", "driving.mp4"]


def model_refs(workflow: dict[str, Any]) -> list[tuple[str, str, str]]:
    folders = graph.load_model_inputs()
    out = []
    for node in workflow.values():
        for name, value in node["inputs"].items():
            folder = folders.get((node["class_type"], name))
            if folder is not None:
                out.append((folder, value, f"{node['class_type']}.{name}"))
    return out


def test_every_model_input_is_known_to_the_error_messages() -> None:
    refs = model_refs(load("steadydancer_api.json"))
    assert len(refs) == 7  # model, vae, lora, text encoder, clip vision, vitpose, yolo
    for _folder, value, _where in refs:
        assert "\\" not in value, "Windows separators: ComfyUI on Linux lists files with /"


def test_model_files_match_the_models_manifest() -> None:
    if not MANIFEST.exists():
        pytest.skip("models/manifest.toml is not in this checkout (the models package is merged separately)")
    manifest = tomllib.loads(MANIFEST.read_text())
    variants = manifest["variants"]
    wanted = {"fp8", *variants["fp8"].get("includes", [])}
    available: dict[tuple[str, str], str] = {}
    for key, entry in manifest["files"].items():
        if not set(entry.get("variants", [])) & wanted:
            continue
        filename = entry.get("filename") or re.split(r"[/]", entry.get("path") or entry["url"])[-1]
        rel = f"{entry['subdir']}/{filename}" if entry.get("subdir") else filename
        available[(entry["folder"], rel)] = key
    for folder, value, where in model_refs(load("steadydancer_api.json")):
        assert (folder, value) in available, f"{where} = {value!r} is not a {folder} file of the fp8 variant"
