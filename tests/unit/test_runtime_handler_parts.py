"""Unit tests of the serverless handler's pure parts: settings, job input, graph checks, output collection, sinks,
and the websocket follower's decisions (with a fake socket and a fake ComfyUI client)."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import websocket

RUNTIME = Path(__file__).resolve().parents[2] / "image" / "runtime"
sys.path.insert(0, str(RUNTIME))

from comfy_worker import config, graph, outputs, validation  # noqa: E402
from comfy_worker.comfy_client import FileRef  # noqa: E402
from comfy_worker.errors import (  # noqa: E402
    ComfyCrashedError,
    ConfigError,
    ExecutionError,
    InputError,
    InputTooLargeError,
    InterruptedError_,
    JobTimeoutError,
    MissingModelError,
    OutputTooLargeError,
    PromptValidationError,
    UnknownNodeError,
    UploadError,
    WorkflowError,
)
from comfy_worker.follower import Follower  # noqa: E402
from comfy_worker.upload import Base64Sink, S3Sink, sink_for  # noqa: E402

LIMITS = {"max_timeout_s": 600.0, "max_input_bytes": 1000, "max_total_input_bytes": 1500}
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
}


# --- config -----------------------------------------------------------------------------------------------------------


def test_config_defaults_then_environment() -> None:
    cfg = config.load({})
    assert cfg.comfy_url == "http://127.0.0.1:8188" and cfg.max_response_bytes == 20_000_000 and cfg.s3 is None
    cfg = config.load(
        {"COMFY_PORT": "9000", "WORKER_JOB_TIMEOUT_S": "60", "WORKER_DELETE_OUTPUTS": "0", "WORKER_MAX_INPUT_MB": "2.5"}
    )
    assert cfg.comfy_url == "http://127.0.0.1:9000" and cfg.job_timeout_s == 60
    assert cfg.delete_outputs is False and cfg.max_input_bytes == 2_500_000


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"WORKER_JOB_TIMEOUT": "5"}, 'Perhaps you meant "WORKER_JOB_TIMEOUT_S"'),
        ({"WORKER_JOB_TIMEOUT_S": "soon"}, "is not a number"),
        ({"WORKER_JOB_TIMEOUT_S": "0"}, "must be above zero"),
        ({"WORKER_DELETE_OUTPUTS": "maybe"}, "yes/no"),
        ({"WORKER_COMFY_URL": "127.0.0.1:8188"}, "not an http(s) URL"),
        ({"BUCKET_ENDPOINT_URL": "https://s3.example"}, "half configured"),
    ],
)
def test_config_errors_say_what_to_set(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(env)
    assert needle in e.value.render()


def test_s3_settings_need_all_three_keys() -> None:
    cfg = config.load(
        {
            "BUCKET_ENDPOINT_URL": "https://s3.example",
            "BUCKET_ACCESS_KEY_ID": "id",
            "BUCKET_SECRET_ACCESS_KEY": "secret",
            "BUCKET_NAME": "outputs",
        }
    )
    assert cfg.s3 is not None and cfg.s3.bucket_name == "outputs"
    assert cfg.s3.creds() == {"endpointUrl": "https://s3.example", "accessId": "id", "accessSecret": "secret"}
    assert "secret" not in repr(cfg)


# --- job input --------------------------------------------------------------------------------------------------------


def test_job_input_accepts_a_json_string_and_both_file_lists() -> None:
    raw = json.dumps(
        {
            "workflow": WORKFLOW,
            "images": [{"name": "a.png", "image": base64.b64encode(b"x" * 9).decode()}],
            "files": [{"name": "b.mp4", "url": "https://example.com/b.mp4"}],
            "timeout_s": 30,
        }
    )
    job = validation.parse_job(raw, **LIMITS)
    assert [f.name for f in job.files] == ["a.png", "b.mp4"] and [f.source for f in job.files] == ["base64", "url"]
    assert job.timeout_s == 30 and job.include_temp is False


@pytest.mark.parametrize(
    ("raw", "error", "needle"),
    [
        ({"workflow": WORKFLOW, "images": [{"name": "a.png"}]}, InputError, "exactly one of image"),
        (
            {"workflow": WORKFLOW, "images": [{"name": "a.png", "image": "QQ==", "url": "https://x"}]},
            InputError,
            "exactly one",
        ),
        ({"workflow": WORKFLOW, "images": [{"name": "a.png", "img": "QQ=="}]}, InputError, 'Perhaps you meant "image"'),
        ({"workflow": WORKFLOW, "images": [{"name": "sub/a.png", "image": "QQ=="}]}, InputError, "plain file name"),
        ({"workflow": WORKFLOW, "files": [{"name": "a.mp4", "url": "file:///etc/passwd"}]}, InputError, "http(s)"),
        (
            {"workflow": WORKFLOW, "images": [{"name": "a.png", "image": "QQ=="}, {"name": "a.png", "image": "QQ=="}]},
            InputError,
            "given twice",
        ),
        ({"workflow": WORKFLOW, "images": {"name": "a.png"}}, InputError, "must be a list"),
        ({"workflow": WORKFLOW, "include_temp": "yes"}, InputError, "true or false"),
        ({"workflow": WORKFLOW, "timeout_s": -1}, InputError, "positive number"),
        ({"workflow": WORKFLOW, "images": [{"name": "a.png", "image": "A" * 1400}]}, InputTooLargeError, "over the"),
        ({"workflow": {"1": {"class_type": "X", "inputs": []}}}, WorkflowError, "not an object"),
        ({"workflow": "{not json"}, InputError, "not valid JSON"),
    ],
)
def test_bad_job_input(raw: Any, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as e:
        validation.parse_job(raw, **LIMITS)
    assert needle in str(e.value)


def test_base64_size_is_known_without_decoding() -> None:
    for n in (0, 1, 2, 3, 100, 1001):
        text = base64.b64encode(b"\x00" * n).decode()
        assert validation.decoded_size(text) == n
        assert validation.decoded_size("data:image/png;base64," + text) == n


# --- graph ------------------------------------------------------------------------------------------------------------

OBJECT_INFO = {
    "EmptyImage": {"input": {"required": {}}},
    "SaveImage": {"input": {"required": {}}},
    "VAELoader": {"input": {"required": {"vae_name": [["a.safetensors"]]}}},
    "CustomLoader": {
        "input": {"required": {"ckpt": [["x.pth"], {"tooltip": "loaded from 'ComfyUI/models/upscale_models'"}]}}
    },
}


def test_unknown_node_classes_with_suggestions() -> None:
    graph.check_node_classes(WORKFLOW, OBJECT_INFO)
    with pytest.raises(UnknownNodeError) as e:
        graph.check_node_classes({"1": {"class_type": "EmptyImag"}, "2": {"class_type": "Reroute"}}, OBJECT_INFO)
    assert '"EmptyImag" (perhaps "EmptyImage"?)' in e.value.what and '"Reroute"' in e.value.what
    assert "Export (API)" in (e.value.fix or "")
    assert e.value.response()["details"]["nodes"] == {"1": "EmptyImag", "2": "Reroute"}


def real_rejection(node_id: str, class_type: str, name: str, value: str) -> dict[str, Any]:
    """/prompt's 400 answer for a missing file, as ComfyUI (a125cd84) sent it in this session's probe."""
    return {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            node_id: {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{name}: '{value}' not in ['pixel_space']",
                        "extra_info": {
                            "input_name": name,
                            "input_config": [["pixel_space"], {}],
                            "received_value": value,
                        },
                    }
                ],
                "dependent_outputs": ["4"],
                "class_type": class_type,
            }
        },
    }


def test_missing_model_from_comfys_own_validation_answer() -> None:
    listed: list[str] = []

    def list_models(folder: str) -> list[str]:
        listed.append(folder)
        return ["wan_2.1_vae.safetensors", "wanvideo/Wan2_1_VAE_bf16.safetensors"]

    err = graph.explain_rejection(
        real_rejection("1", "VAELoader", "vae_name", "wanvideo/Wan2_1_VAE_fp32.safetensors"),
        {},
        OBJECT_INFO,
        list_models=list_models,
        models_dir="/runpod-volume/models",
    )
    assert isinstance(err, MissingModelError) and listed == ["vae"]
    assert err.what.startswith("Model file missing: 'wanvideo/Wan2_1_VAE_fp32.safetensors' (node 1 VAELoader")
    assert "'vae' models folder" in err.what and "/runpod-volume/models/<folder>/" in (err.fix or "")
    assert err.details["missing"][0]["closest"] == "wanvideo/Wan2_1_VAE_bf16.safetensors"


def test_missing_model_folder_from_tooltip_and_unknown_folder() -> None:
    err = graph.explain_rejection(
        real_rejection("3", "CustomLoader", "ckpt", "y.pth"),
        {},
        OBJECT_INFO,
        list_models=lambda f: [],
        models_dir=None,
        model_inputs={},
    )
    assert isinstance(err, MissingModelError) and err.details["missing"][0]["folder"] == "upscale_models"
    err = graph.explain_rejection(
        real_rejection("3", "Other", "file", "z.safetensors"),
        {},
        OBJECT_INFO,
        list_models=lambda f: [],
        models_dir=None,
        model_inputs={},
    )
    assert isinstance(err, MissingModelError) and err.details["missing"][0]["folder"] is None
    assert "the models folder that node reads" in err.what


def test_other_rejections_keep_comfys_words() -> None:
    body = real_rejection("2", "EmptyImage", "width", "wide")
    body["node_errors"]["2"]["errors"][0].update(
        type="invalid_input_type", message="Failed to convert an input value to a INT value"
    )
    err = graph.explain_rejection(body, {}, OBJECT_INFO, list_models=lambda f: [], models_dir=None)
    assert isinstance(err, PromptValidationError) and "Failed to convert" in err.what and "node 2" in err.what
    err = graph.explain_rejection(
        {
            "error": {
                "type": "invalid_prompt",
                "message": "Cannot execute because node X does not exist.",
                "details": "Node ID '#1'",
            },
            "node_errors": {},
        },
        {},
        OBJECT_INFO,
        list_models=lambda f: [],
        models_dir=None,
    )
    assert isinstance(err, PromptValidationError) and "node X does not exist" in err.what


def test_model_inputs_data_file_is_well_formed() -> None:
    folders = graph.load_model_inputs()
    assert folders[("WanVideoModelLoader", "model")] == "diffusion_models"
    assert folders[("OnnxDetectionModelLoader", "yolo_model")] == "detection"


# --- outputs and sinks -----------------------------------------------------------------------------------------------

HISTORY_OUTPUTS = {
    "9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
    "10": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
    "83": {
        "gifs": [
            {
                "filename": "v.mp4",
                "subfolder": "",
                "type": "output",
                "format": "video/h264-mp4",
                "frame_rate": 16.0,
                "workflow": "v.png",
                "fullpath": "/opt/ComfyUI/output/v.mp4",
            }
        ]
    },
    "12": {
        "audio": [{"filename": "s.flac", "subfolder": "x", "type": "output"}],
        "text": ["hello"],
        "animated": [True],
    },
    "13": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},  # the same file twice
    "14": {"3d": [{"filename": "m.glb", "subfolder": "", "type": "output"}]},
}


def test_every_output_key_carrying_files_is_collected() -> None:
    found = outputs.collect(HISTORY_OUTPUTS, include_temp=False)
    assert [(f.node_id, f.key, f.ref.filename, f.group) for f in found] == [
        ("9", "images", "a.png", "images"),
        ("83", "gifs", "v.mp4", "videos"),
        ("12", "audio", "s.flac", "files"),
        ("14", "3d", "m.glb", "files"),
    ]
    assert [f.media_type for f in found] == ["image/png", "video/mp4", "audio/flac", "model/gltf-binary"]
    assert found[1].format == "video/h264-mp4"
    assert outputs.skipped_temp(HISTORY_OUTPUTS) == 1
    assert [f.ref.filename for f in outputs.collect(HISTORY_OUTPUTS, include_temp=True)][:2] == ["a.png", "p.png"]


def test_base64_sink_has_a_budget() -> None:
    file = outputs.OutputFile("1", "images", FileRef("a.png", "", "output"))
    sink = Base64Sink(max_bytes=12)
    assert sink.put("job", file, b"123456") == {"type": "base64", "data": "MTIzNDU2"}
    with pytest.raises(OutputTooLargeError) as e:
        sink.put("job", file, b"123456")
    assert "BUCKET_ENDPOINT_URL" in (e.value.fix or "")


def test_s3_sink_uploads_with_the_right_content_type() -> None:
    cfg = config.load(
        {
            "BUCKET_ENDPOINT_URL": "https://s3.example",
            "BUCKET_ACCESS_KEY_ID": "id",
            "BUCKET_SECRET_ACCESS_KEY": "secret",
        }
    )
    assert cfg.s3 is not None and isinstance(sink_for(cfg.s3, 1), S3Sink)
    calls: list[dict[str, Any]] = []

    def fake_upload(**kwargs: Any) -> str:
        calls.append({**kwargs, "bytes": Path(kwargs["file_location"]).read_bytes()})
        return f"https://s3.example/{kwargs['prefix']}/{kwargs['file_name']}?signed"

    video = outputs.OutputFile("83", "gifs", FileRef("v.mp4", "", "output"))
    got = S3Sink(cfg.s3, upload_fn=fake_upload).put("job-1", video, b"movie")
    assert got == {"type": "s3_url", "data": "https://s3.example/job-1/v.mp4?signed"}
    (call,) = calls
    assert call["extra_args"] == {"ContentType": "video/mp4"} and call["bytes"] == b"movie"
    assert call["bucket_creds"]["accessId"] == "id" and not Path(call["file_location"]).exists()

    def broken(**kwargs: Any) -> str:
        raise RuntimeError("NoSuchBucket")

    with pytest.raises(UploadError) as e:
        S3Sink(cfg.s3, upload_fn=broken).put("job-1", video, b"movie")
    assert "NoSuchBucket" in e.value.what and "BUCKET_" in (e.value.fix or "")


# --- follower ------------------------------------------------------------------------------------------------------


class FakeSocket:
    def __init__(self, frames: list[Any]) -> None:
        self.frames = list(frames)

    def settimeout(self, timeout: float | None) -> None:
        pass

    def recv(self) -> str | bytes:
        if not self.frames:
            raise websocket.WebSocketTimeoutException("quiet")
        frame = self.frames.pop(0)
        if isinstance(frame, Exception):
            raise frame
        return frame if isinstance(frame, (str, bytes)) else json.dumps(frame)

    def close(self) -> None:
        pass


class FakeClient:
    def __init__(
        self,
        *,
        history: list[dict[str, Any] | None] | None = None,
        pids: list[int | None] | None = None,
        up: bool = True,
        queued: bool = True,
        alive: bool | None = True,
    ) -> None:
        self.histories = list(history or [None])
        self.pids = list(pids or [100])
        self.up, self.queued, self.alive = up, queued, alive

    def ws_url(self, client_id: str) -> str:
        return "ws://fake/ws"

    def pid(self) -> int | None:
        return self.pids.pop(0) if len(self.pids) > 1 else self.pids[0]

    def process_alive(self) -> bool | None:
        return self.alive

    def is_up(self) -> bool:
        return self.up

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self.histories.pop(0) if len(self.histories) > 1 else self.histories[0]

    def in_queue(self, prompt_id: str) -> bool:
        return self.queued


DONE = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {"9": {}}}


def follower(client: FakeClient, sockets: list[FakeSocket], clock: list[float] | None = None) -> Follower:
    now = clock if clock is not None else [0.0]

    def connect(url: str) -> FakeSocket:
        if not sockets:
            raise ConnectionRefusedError("refused")
        return sockets.pop(0)

    def sleep(seconds: float) -> None:
        now[0] += seconds

    f = Follower(
        client, reconnects=3, reconnect_delay_s=1.0, poll_s=1.0, connect_fn=connect, sleep=sleep, clock=lambda: now[0]
    )
    f.open("cid")
    return f


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "data": {"prompt_id": "p", **data}}


def test_follow_to_the_end_over_the_websocket() -> None:
    client = FakeClient(history=[None, DONE])
    seen: list[str] = []
    f = follower(
        client,
        [
            FakeSocket(
                [
                    b"\x00\x01preview",
                    {"type": "status", "data": {}},
                    event("executing", node="1"),
                    event("progress", node="1", value=1, max=2),
                    event("executing", node="1", prompt_id="other"),
                    event("execution_success"),
                    event("executing", node=None),
                ]
            )
        ],
    )
    f.on_event = lambda kind, data: seen.append(kind)
    assert f.follow("p", deadline=100) is DONE
    assert seen == ["status", "executing", "progress", "execution_success", "executing"]


def test_follow_raises_execution_errors_and_interrupts() -> None:
    f = follower(
        FakeClient(),
        [
            FakeSocket(
                [
                    event(
                        "execution_error",
                        node_id="5",
                        node_type="KSampler",
                        exception_type="RuntimeError",
                        exception_message="bad shape",
                        traceback=["line"],
                    )
                ]
            )
        ],
    )
    with pytest.raises(ExecutionError) as e:
        f.follow("p", deadline=100)
    assert "node 5 (KSampler) failed: RuntimeError: bad shape" in e.value.what
    f = follower(FakeClient(), [FakeSocket([event("execution_interrupted", node_id="5", node_type="KSampler")])])
    with pytest.raises(InterruptedError_):
        f.follow("p", deadline=100)


def test_quiet_socket_falls_back_to_history() -> None:
    f = follower(FakeClient(history=[None, None, DONE]), [FakeSocket([])])
    assert f.follow("p", deadline=100) is DONE


def test_drop_then_reconnect_finds_the_finished_prompt() -> None:
    client = FakeClient(history=[DONE])
    f = follower(client, [FakeSocket([websocket.WebSocketConnectionClosedException("gone")]), FakeSocket([])])
    assert f.follow("p", deadline=100) is DONE and f.reconnected == 1


def test_drop_and_comfy_back_without_the_prompt_is_a_crash() -> None:
    f = follower(
        FakeClient(history=[None], queued=False),
        [FakeSocket([websocket.WebSocketConnectionClosedException("gone")]), FakeSocket([])],
    )
    with pytest.raises(ComfyCrashedError) as e:
        f.follow("p", deadline=100)
    assert "neither queued" in e.value.what


def test_restarted_comfy_is_a_crash_even_if_it_answers() -> None:
    f = follower(FakeClient(pids=[100, 100, 222]), [FakeSocket([websocket.WebSocketConnectionClosedException("x")])])
    with pytest.raises(ComfyCrashedError) as e:
        f.follow("p", deadline=100)
    assert "pid 100 to 222" in (e.value.why or "")


def test_dead_process_is_a_crash_without_waiting() -> None:
    clock = [0.0]
    f = follower(FakeClient(alive=False, up=False), [FakeSocket([OSError("reset")])], clock)
    with pytest.raises(ComfyCrashedError) as e:
        f.follow("p", deadline=100)
    assert "process exited" in e.value.what and clock[0] == 0.0


def test_unreachable_comfy_after_the_reconnect_attempts() -> None:
    clock = [0.0]
    f = follower(FakeClient(up=False, alive=None), [FakeSocket([OSError("reset")])], clock)
    with pytest.raises(ComfyCrashedError) as e:
        f.follow("p", deadline=100)
    assert "after 3 reconnect attempts" in e.value.what and clock[0] == 3.0


def test_deadline() -> None:
    clock = [0.0]
    f = follower(FakeClient(history=[None]), [FakeSocket([])], clock)
    f.sleep = lambda s: None
    original_check = f._check

    def tick(prompt_id: str) -> Mapping[str, Any] | None:
        clock[0] += 1.0
        return original_check(prompt_id)

    f._check = tick  # type: ignore[method-assign]
    with pytest.raises(JobTimeoutError):
        f.follow("p", deadline=5)
    assert clock[0] == 5.0
