"""A scripted stand-in for ComfyUI's HTTP + websocket API, on loopback, for the runtime tests.

It speaks the routes the handler uses (/system_stats, /object_info, /models/{folder}, /upload/image, /prompt,
/history/{id}, /queue, /interrupt, /view, /ws) with ComfyUI's message and error shapes, and runs prompts with a
handful of node classes named after real ones (EmptyImage, LoadImage, SaveImage, PreviewImage, SaveAudio,
VAELoader, CLIPVisionLoader, WanVideoModelLoader, VHS_LoadVideo, VHS_VideoCombine). What a real ComfyUI cannot be
made to do on demand is scripted: POST /_standin/script {"modes": ["ws_drop", ...]} sets how the next prompts run:

    ok        run normally (the default); a prompt identical to the last one replays its outputs, as ComfyUI's
              cache does (the old files, not new ones)
    ws_drop   close every websocket after the first node, then finish while the client is away
    crash     exit the process (status 3) after the first node, as an OOM kill would
    hang      start, then wait until /interrupt
    error     raise in the second node (torch.OutOfMemoryError), as ComfyUI reports it

Run as a program it takes ComfyUI's own arguments (--listen, --port, --output-directory, --input-directory,
--extra-model-paths-config, ...), so start.sh can start it in place of ComfyUI's main.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

MODEL_SUFFIXES = (".safetensors", ".onnx", ".pth", ".pt", ".gguf", ".bin", ".ckpt")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid solid-colour PNG, written with the stdlib."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = row * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class Standin:
    def __init__(
        self,
        root: Path,
        models: dict[str, list[Path]],
        *,
        input_dir: Path | None = None,
        output_dir: Path | None = None,
        max_upload_mb: float = 100.0,
    ) -> None:
        self.input_dir = input_dir or root / "input"
        self.output_dir = output_dir or root / "output"
        self.temp_dir = root / "temp"
        for d in (self.input_dir, self.output_dir, self.temp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.models = models  # folder -> search paths
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.pending: list[str] = []
        self.running: str | None = None
        self.prompts: dict[str, dict[str, Any]] = {}
        self.modes: list[str] = []
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.interrupted = asyncio.Event()
        self.counter = 0
        self.uploads = 0
        self.script_file: Path | None = None
        self.last_key = ""
        self.last_outputs: dict[str, Any] = {}

    # --- what the node classes see -------------------------------------------------------------------------------

    def model_files(self, folder: str) -> list[str]:
        found: list[str] = []
        for base in self.models.get(folder, []):
            if base.is_dir():
                for p in sorted(base.rglob("*")):
                    if p.is_file() and p.suffix in MODEL_SUFFIXES:
                        found.append(p.relative_to(base).as_posix())
        return sorted(set(found))

    def input_files(self, suffixes: tuple[str, ...] | None = None) -> list[str]:
        return sorted(
            p.name
            for p in self.input_dir.iterdir()
            if p.is_file() and (suffixes is None or p.suffix.lower() in suffixes)
        )

    def object_info(self) -> dict[str, Any]:
        def node(
            required: dict[str, Any],
            output: list[str],
            *,
            output_node: bool = False,
            optional: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            return {
                "input": {"required": required, "optional": optional or {}},
                "output": output,
                "output_node": output_node,
            }

        string = ["STRING", {"default": "ComfyUI"}]
        return {
            "EmptyImage": node(
                {
                    "width": ["INT", {"default": 512}],
                    "height": ["INT", {"default": 512}],
                    "batch_size": ["INT", {"default": 1}],
                    "color": ["INT", {"default": 0}],
                },
                ["IMAGE"],
            ),
            "LoadImage": node({"image": [self.input_files(), {"image_upload": True}]}, ["IMAGE", "MASK"]),
            "ImageInvert": node({"image": ["IMAGE"]}, ["IMAGE"]),
            "SaveImage": node({"images": ["IMAGE"], "filename_prefix": string}, [], output_node=True),
            "PreviewImage": node({"images": ["IMAGE"]}, [], output_node=True),
            "SaveAudio": node({"audio": ["AUDIO"], "filename_prefix": string}, [], output_node=True),
            "EmptyAudio": node({"seconds": ["FLOAT", {"default": 1.0}]}, ["AUDIO"]),
            "VAELoader": node({"vae_name": [self.model_files("vae")]}, ["VAE"]),
            "CLIPVisionLoader": node({"clip_name": [self.model_files("clip_vision")]}, ["CLIP_VISION"]),
            "WanVideoModelLoader": node(
                {
                    "model": [
                        self.model_files("diffusion_models"),
                        {"tooltip": "These models are loaded from the 'ComfyUI/models/diffusion_models' -folder"},
                    ],
                    "base_precision": [["fp32", "bf16", "fp16", "fp16_fast"], {"default": "bf16"}],
                },
                ["WANVIDEOMODEL"],
            ),
            "VHS_LoadVideo": node(
                {"video": [self.input_files(VIDEO_SUFFIXES)]}, ["IMAGE", "INT", "AUDIO", "VHS_VIDEOINFO"]
            ),
            "VHS_VideoCombine": node(
                {
                    "images": ["IMAGE"],
                    "frame_rate": ["FLOAT", {"default": 8}],
                    "filename_prefix": string,
                    "format": [["image/gif", "video/h264-mp4"]],
                    "save_output": ["BOOLEAN", {"default": True}],
                },
                ["VHS_FILENAMES"],
                output_node=True,
            ),
        }

    # --- /prompt validation, in ComfyUI's shapes ----------------------------------------------------------------

    def validate(self, prompt: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        info = self.object_info()
        for node_id, node in prompt.items():
            if node.get("class_type") not in info:
                return (
                    {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {node.get('class_type')} does not exist.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {},
                    },
                    {},
                )
        node_errors: dict[str, Any] = {}
        for node_id, node in prompt.items():
            spec = info[node["class_type"]]["input"]["required"]
            errors = []
            for name, entry in spec.items():
                value = node.get("inputs", {}).get(name)
                if value is None:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                    continue
                if isinstance(entry[0], list) and not isinstance(value, list) and value not in entry[0]:
                    options = entry[0]
                    listed = f"(list of length {len(options)})" if len(options) > 20 else str(options)
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: '{value}' not in {listed}",
                            "extra_info": {"input_name": name, "input_config": None, "received_value": value},
                        }
                    )
            if errors:
                node_errors[node_id] = {"errors": errors, "dependent_outputs": [], "class_type": node["class_type"]}
        if node_errors:
            return (
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "",
                    "extra_info": {},
                },
                node_errors,
            )
        if not any(info[n["class_type"]]["output_node"] for n in prompt.values()):
            return (
                {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
                {},
            )
        return None, {}

    # --- execution -------------------------------------------------------------------------------------------------

    async def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        targets = [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            with contextlib.suppress(ConnectionResetError, RuntimeError):
                await ws.send_str(json.dumps({"type": event, "data": data}))

    async def worker(self) -> None:
        while True:
            prompt_id = await self.queue.get()
            if prompt_id not in self.pending:  # deleted from the queue while waiting
                continue
            self.pending.remove(prompt_id)
            self.running = prompt_id
            try:
                await self.execute(prompt_id)
            finally:
                self.running = None

    def _order(self, prompt: dict[str, Any]) -> list[str]:
        done: list[str] = []

        def visit(nid: str) -> None:
            if nid in done:
                return
            for value in prompt[nid].get("inputs", {}).values():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                    visit(str(value[0]))
            done.append(nid)

        for nid in prompt:
            visit(nid)
        return done

    async def execute(self, prompt_id: str) -> None:
        entry = self.prompts[prompt_id]
        prompt, sid, mode = entry["prompt"], entry["client_id"], entry["mode"]
        messages: list[list[Any]] = []
        values: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        self.interrupted.clear()

        async def event(name: str, data: dict[str, Any], record: bool = False) -> None:
            data = {**data, "prompt_id": prompt_id}
            if record:
                messages.append([name, data])
            await self.send(name, data, sid)

        await event("execution_start", {}, record=True)
        key = json.dumps(prompt, sort_keys=True)
        if mode == "ok" and key == self.last_key:
            # ComfyUI's cache: a repeated prompt runs nothing and replays the outputs (and old files) of the last.
            await event("execution_cached", {"nodes": list(prompt)}, record=True)
            for node_id, ui in self.last_outputs.items():
                await event("executed", {"node": node_id, "display_node": node_id, "output": ui})
            await event("execution_success", {}, record=True)
            self.history[prompt_id] = {
                "prompt": [0, prompt_id, prompt, {}, []],
                "outputs": self.last_outputs,
                "status": {"status_str": "success", "completed": True, "messages": messages},
            }
            await self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)
            return
        await event("execution_cached", {"nodes": []}, record=True)
        for index, node_id in enumerate(self._order(prompt)):
            node = prompt[node_id]
            await event("executing", {"node": node_id, "display_node": node_id})
            await event("progress", {"value": 1, "max": 1, "node": node_id})
            if index == 0 and mode == "ws_drop":
                for ws in list(self.sockets.values()):
                    await ws.close()
                await asyncio.sleep(0.5)  # finish while the client is away: these events are lost
            if index == 0 and mode == "crash":
                await asyncio.sleep(0.2)
                os._exit(3)
            if index == 0 and mode == "hang":
                await self.interrupted.wait()
                data = {"prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"], "executed": []}
                messages.append(["execution_interrupted", data])
                self.history[prompt_id] = {
                    "prompt": [0, prompt_id, prompt, {}, []],
                    "outputs": {},
                    "status": {"status_str": "error", "completed": False, "messages": messages},
                }
                await self.send("execution_interrupted", data, sid)
                await self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)
                return
            if index == 1 and mode == "error":
                data = {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": node["class_type"],
                    "executed": [],
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                    "exception_type": "torch.OutOfMemoryError",
                    "traceback": ["Traceback (most recent call last):\n", "  ...\n"],
                    "current_inputs": {},
                    "current_outputs": [],
                }
                messages.append(["execution_error", data])
                self.history[prompt_id] = {
                    "prompt": [0, prompt_id, prompt, {}, []],
                    "outputs": {},
                    "status": {"status_str": "error", "completed": False, "messages": messages},
                }
                await self.send("execution_error", data, sid)
                await self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)
                return
            ui = self.run_node(node, values, node_id)
            if ui:
                outputs[node_id] = ui
                await event("executed", {"node": node_id, "display_node": node_id, "output": ui})
        await event("execution_success", {}, record=True)
        self.history[prompt_id] = {
            "prompt": [0, prompt_id, prompt, {}, []],
            "outputs": outputs,
            "status": {"status_str": "success", "completed": True, "messages": messages},
        }
        self.last_key, self.last_outputs = key, outputs
        await self.send("executing", {"node": None, "prompt_id": prompt_id}, sid)

    def _save(self, folder: Path, file_type: str, prefix: str, suffix: str, data: bytes) -> dict[str, Any]:
        self.counter += 1
        subfolder = os.path.dirname(prefix)
        name = f"{os.path.basename(prefix)}_{self.counter:05d}_{suffix}"
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        (folder / subfolder / name).write_bytes(data)
        return {"filename": name, "subfolder": subfolder, "type": file_type}

    def run_node(self, node: dict[str, Any], values: dict[str, Any], node_id: str) -> dict[str, Any] | None:
        kind, args = node["class_type"], node.get("inputs", {})

        def arg(name: str) -> Any:
            value = args.get(name)
            if isinstance(value, list) and len(value) == 2:
                return values[str(value[0])]
            return value

        if kind == "EmptyImage":
            color = int(arg("color") or 0)
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
            values[node_id] = png(int(arg("width")), int(arg("height")), rgb)
        elif kind == "ImageInvert":
            values[node_id] = arg("image")  # the stand-in passes pixels through: tests check plumbing, not pixels
        elif kind == "LoadImage":
            values[node_id] = (self.input_dir / arg("image")).read_bytes()
        elif kind == "VHS_LoadVideo":
            values[node_id] = (self.input_dir / arg("video")).read_bytes()
        elif kind == "EmptyAudio":
            values[node_id] = b"fLaC" + b"\x00" * 64
        elif kind in ("VAELoader", "CLIPVisionLoader", "WanVideoModelLoader"):
            values[node_id] = kind
        elif kind == "SaveImage":
            return {"images": [self._save(self.output_dir, "output", arg("filename_prefix"), ".png", arg("images"))]}
        elif kind == "PreviewImage":
            return {"images": [self._save(self.temp_dir, "temp", "ComfyUI_temp", ".png", arg("images"))]}
        elif kind == "SaveAudio":
            return {"audio": [self._save(self.output_dir, "output", arg("filename_prefix"), ".flac", arg("audio"))]}
        elif kind == "VHS_VideoCombine":
            fmt = arg("format") or "video/h264-mp4"
            save = bool(arg("save_output"))
            folder, file_type = (self.output_dir, "output") if save else (self.temp_dir, "temp")
            # An ISO-BMFF header then the frames: enough for a client to see an mp4 came back.
            body = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + arg("images")
            item = self._save(folder, file_type, arg("filename_prefix"), ".mp4", body)
            item.update(
                format=fmt,
                frame_rate=arg("frame_rate"),
                workflow=item["filename"][:-4] + ".png",
                fullpath=str(folder / item["subfolder"] / item["filename"]),
            )
            return {"gifs": [item]}
        return None

    # --- routes ----------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_upload)
        r = app.router
        r.add_get("/system_stats", lambda req: web.json_response({"system": {"os": "standin"}, "devices": []}))
        r.add_get("/object_info", lambda req: web.json_response(self.object_info()))
        r.add_get("/models/{folder}", self.get_models)
        r.add_post("/upload/image", self.upload)
        r.add_post("/prompt", self.post_prompt)
        r.add_get("/history/{prompt_id}", self.get_history)
        r.add_get("/queue", self.get_queue)
        r.add_post("/queue", self.post_queue)
        r.add_post("/interrupt", self.post_interrupt)
        r.add_get("/view", self.view)
        r.add_get("/ws", self.websocket)
        r.add_post("/_standin/script", self.script)
        r.add_get(
            "/_standin/state",
            lambda req: web.json_response(
                {
                    "uploads": self.uploads,
                    "sockets": len(self.sockets),
                    "pending": self.pending,
                    "running": self.running,
                    "input_files": self.input_files(),
                }
            ),
        )
        app.on_startup.append(self._start_worker)
        return app

    async def _start_worker(self, app: web.Application) -> None:
        app["worker"] = asyncio.get_running_loop().create_task(self.worker())

    async def get_models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.models:
            return web.Response(status=404)
        return web.json_response(self.model_files(folder))

    async def upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if image is None or not getattr(image, "filename", None):
            return web.Response(status=400)
        (self.input_dir / image.filename).write_bytes(image.file.read())
        self.uploads += 1
        return web.json_response({"name": image.filename, "subfolder": "", "type": "input"})

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body.get("prompt")
        if not isinstance(prompt, dict):
            return web.json_response(
                {"error": {"type": "no_prompt", "message": "No prompt provided"}, "node_errors": {}}, status=400
            )
        error, node_errors = self.validate(prompt)
        if error is not None:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = str(uuid.uuid4())
        mode = self.next_mode()
        self.prompts[prompt_id] = {"prompt": prompt, "client_id": body.get("client_id"), "mode": mode}
        self.pending.append(prompt_id)
        self.queue.put_nowait(prompt_id)
        return web.json_response({"prompt_id": prompt_id, "number": len(self.prompts), "node_errors": {}})

    async def get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = [[0, self.running, {}, {}, []]] if self.running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [[0, p, {}, {}, []] for p in self.pending]}
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        for prompt_id in body.get("delete", []):
            if prompt_id in self.pending:
                self.pending.remove(prompt_id)
        return web.Response(status=200)

    async def post_interrupt(self, request: web.Request) -> web.Response:
        self.interrupted.set()
        return web.Response(status=200)

    async def view(self, request: web.Request) -> web.Response:
        q = request.rel_url.query
        base = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}.get(q.get("type", "output"))
        name = q.get("filename", "")
        if base is None or not name or "/" in name or ".." in name:
            return web.Response(status=400)
        path = base / q.get("subfolder", "") / name
        if not path.is_file():
            return web.Response(status=404)
        return web.Response(body=path.read_bytes(), content_type="application/octet-stream")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "status",
                        "data": {"status": {"exec_info": {"queue_remaining": len(self.pending)}}, "sid": sid},
                    }
                )
            )
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
        return ws

    def next_mode(self) -> str:
        if self.script_file is not None and self.script_file.exists():
            # A file survives a crash and a restart: each mode is used once, by whichever process comes next.
            modes = json.loads(self.script_file.read_text() or "[]")
            if modes:
                self.script_file.write_text(json.dumps(modes[1:]))
                return str(modes[0])
        return self.modes.pop(0) if self.modes else "ok"

    async def script(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.modes = list(body.get("modes", []))
        return web.json_response({"modes": self.modes})


def models_from_yaml(path: Path) -> dict[str, list[Path]]:
    """The folders an extra_model_paths.yaml adds, read as ComfyUI's utils/extra_config.py reads it."""
    import yaml

    found: dict[str, list[Path]] = {}
    config = yaml.safe_load(path.read_text()) or {}
    for conf in config.values():
        conf = dict(conf or {})
        base = conf.pop("base_path", None)
        conf.pop("is_default", None)
        for folder, paths in conf.items():
            for line in str(paths).split("\n"):
                if line:
                    found.setdefault(folder, []).append(Path(base, line) if base else Path(line))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="scripted ComfyUI stand-in")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument(
        "--root", type=Path, default=None, help="folder for input/output/temp (default: a new temp one)"
    )
    parser.add_argument("--output-directory", type=Path)
    parser.add_argument("--input-directory", type=Path)
    parser.add_argument("--extra-model-paths-config", type=Path, action="append", default=[])
    parser.add_argument("--models-root", type=Path, help="a models folder laid out like ComfyUI's")
    parser.add_argument("--max-upload-size", type=float, default=100.0)
    parser.add_argument("--pid-file", type=Path)
    parser.add_argument(
        "--script-file", type=Path, help="JSON list of modes for the next prompts, kept across restarts"
    )
    args, _comfy_only = parser.parse_known_args(argv)  # --disable-auto-launch, --cpu, ...: ComfyUI's, ignored
    if args.listen not in ("127.0.0.1", "localhost", "::1"):
        print(f"stand-in: refusing to listen on {args.listen}; loopback only", file=sys.stderr)
        return 2
    root = args.root or Path(tempfile.mkdtemp(prefix="standin-"))
    models: dict[str, list[Path]] = {}
    for cfg in args.extra_model_paths_config:
        for folder, paths in models_from_yaml(cfg).items():
            models.setdefault(folder, []).extend(paths)
    if args.models_root:
        for folder in ("vae", "clip_vision", "diffusion_models", "text_encoders", "loras", "detection"):
            models.setdefault(folder, []).append(args.models_root / folder)
    for folder in ("vae", "clip_vision", "diffusion_models"):
        models.setdefault(folder, [])
    if args.pid_file:
        args.pid_file.write_text(str(os.getpid()))
    standin = Standin(
        root,
        models,
        input_dir=args.input_directory,
        output_dir=args.output_directory,
        max_upload_mb=args.max_upload_size,
    )
    standin.script_file = args.script_file
    listing = {k: [str(p) for p in v] for k, v in models.items()}
    print(
        f"stand-in ComfyUI on {args.listen}:{args.port}; models: {listing}",
        flush=True,
    )
    # Die on TERM at once, as ComfyUI does; aiohttp would otherwise wait for idle keep-alive connections.
    web.run_app(standin.app(), host=args.listen, port=args.port, print=None, handle_signals=True, shutdown_timeout=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
