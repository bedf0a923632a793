"""Every file a finished prompt produced, read from its /history entry. Pure functions.

ComfyUI's history holds, per output node, the node's "ui" dict: {"images": [{filename, subfolder, type}, ...]} for
SaveImage/PreviewImage (and core SaveVideo/SaveAnimatedWEBP), {"gifs": [...]} for VideoHelperSuite's VHS_VideoCombine
(which the stock worker-comfyui drops), {"audio": [...]}, {"3d": [...]} and whatever a custom node reports. Any
list of objects with a filename (and a type) is a file; other keys (text, "animated" flags) are not.
"""

from __future__ import annotations

import dataclasses
import mimetypes
from collections.abc import Iterator, Mapping
from typing import Any

from .comfy_client import FileRef

# Which list of the job answer a file goes to, by the output key ComfyUI reported it under.
VIDEO_KEYS = frozenset({"gifs", "videos", "video"})
IMAGE_KEYS = frozenset({"images"})
FILE_TYPES = frozenset({"output", "temp", "input"})

_EXTRA_TYPES = {
    ".webp": "image/webp",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".mkv": "video/x-matroska",
    ".mov": "video/quicktime",
    ".gif": "image/gif",
    ".flac": "audio/flac",
    ".opus": "audio/opus",
    ".glb": "model/gltf-binary",
    ".safetensors": "application/octet-stream",
}


@dataclasses.dataclass(frozen=True)
class OutputFile:
    node_id: str
    key: str  # the output key: "images", "gifs", ...
    ref: FileRef
    format: str | None = None  # what the node says it wrote (VHS: "video/h264-mp4"), if anything

    @property
    def group(self) -> str:
        """The job answer's list for this file: images, videos or files."""
        if self.key in IMAGE_KEYS:
            return "images"
        if self.key in VIDEO_KEYS:
            return "videos"
        return "files"

    @property
    def media_type(self) -> str:
        suffix = "." + self.ref.filename.rsplit(".", 1)[-1].lower() if "." in self.ref.filename else ""
        return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(self.ref.filename)[0] or "application/octet-stream"


def _file_entries(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and isinstance(item.get("filename"), str) and item["filename"]:
                yield item


def collect(outputs: Mapping[str, Any], *, include_temp: bool) -> list[OutputFile]:
    """All files in a history entry's "outputs", in node order, without duplicates; "temp" ones only if asked."""
    found: list[OutputFile] = []
    seen: set[tuple[str, str, str]] = set()
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, Mapping):
            continue
        for key, value in node_output.items():
            for item in _file_entries(value):
                file_type = str(item.get("type") or "output")
                if file_type not in FILE_TYPES:
                    continue
                if file_type == "temp" and not include_temp:
                    continue
                ref = FileRef(filename=item["filename"], subfolder=str(item.get("subfolder") or ""), type=file_type)
                ident = (ref.type, ref.subfolder, ref.filename)
                if ident in seen:
                    continue
                seen.add(ident)
                fmt = item.get("format")
                found.append(OutputFile(str(node_id), str(key), ref, fmt if isinstance(fmt, str) else None))
    return found


def skipped_temp(outputs: Mapping[str, Any]) -> int:
    """How many temp files (previews) collect() left out: reported so nobody wonders where a preview went."""
    count = 0
    for node_output in outputs.values():
        if isinstance(node_output, Mapping):
            for value in node_output.values():
                count += sum(1 for item in _file_entries(value) if item.get("type") == "temp")
    return count
