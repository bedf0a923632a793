"""What ComfyUI says about a workflow, in words a caller can act on. Pure functions over /object_info and the
/prompt validation answer; the handler does the talking.

- :func:`check_node_classes`: every class_type must exist in /object_info (checked before queueing, so an unknown
  custom node is named with "Perhaps you meant ..." instead of ComfyUI's bare "node X does not exist").
- :func:`explain_rejection`: ComfyUI's own validation errors; a "Value not in list" on a loader input becomes
  "model file X is missing from folder Y", with what the folder does hold.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import (
    ConfigError,
    MissingModelError,
    PromptValidationError,
    UnknownNodeError,
    WorkerError,
    short,
)

MODEL_INPUTS = Path(__file__).with_name("model_inputs.toml")
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".onnx", ".gguf", ".torchscript")
# Nodes that exist only in ComfyUI's web UI; a workflow holding them was not exported with "Export (API)".
UI_ONLY_NODES = frozenset({"SetNode", "GetNode", "Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
_TOOLTIP_FOLDER = re.compile(r"models[/\\]([A-Za-z0-9_]+)")


def load_model_inputs(path: Path = MODEL_INPUTS) -> dict[tuple[str, str], str]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"Cannot read {path}: {e}") from None
    out: dict[tuple[str, str], str] = {}
    for key, folder in data.get("folders", {}).items():
        node, _, name = key.partition(".")
        if not name or not isinstance(folder, str):
            raise ConfigError(f'{path}: "{key}" must look like "NodeClass.input" = "folder"')
        out[(node, name)] = folder
    return out


def check_node_classes(workflow: Mapping[str, Mapping[str, Any]], object_info: Mapping[str, Any]) -> None:
    missing = {
        nid: str(node.get("class_type")) for nid, node in workflow.items() if node.get("class_type") not in object_info
    }
    if not missing:
        return
    classes = sorted(set(missing.values()))
    hints = {c: m[0] for c in classes if (m := difflib.get_close_matches(c, list(object_info), n=1, cutoff=0.75))}
    listed = ", ".join(f'"{c}"' + (f' (perhaps "{hints[c]}"?)' if c in hints else "") for c in classes)
    ui_only = [c for c in classes if c in UI_ONLY_NODES]
    if ui_only:
        fix = (
            f"{', '.join(ui_only)} exist only in ComfyUI's web UI: export the workflow with Workflow > Export (API), "
            "which resolves them"
        )
    else:
        fix = "install the custom node package that provides it in the image, or remove the node from the workflow"
    raise UnknownNodeError(
        f"The workflow uses node class(es) this ComfyUI does not have: {listed}",
        why="they are not in ComfyUI's /object_info: their custom node package is not installed or failed to import",
        fix=fix,
        nodes=missing,
        suggestions=hints,
    )


@dataclasses.dataclass(frozen=True)
class MissingModel:
    node_id: str
    class_type: str
    input: str
    file: str
    folder: str | None
    available: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        closest = difflib.get_close_matches(self.file, list(self.available), n=1, cutoff=0.5)
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "class_type": self.class_type,
            "input": self.input,
            "file": self.file,
            "folder": self.folder,
            "available": list(self.available[:30]),
        }
        if closest:
            out["closest"] = closest[0]
        return out


def _looks_like_model(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES)


def _tooltip_folder(object_info: Mapping[str, Any], class_type: str, name: str) -> str | None:
    spec = object_info.get(class_type, {}).get("input", {})
    for group in ("required", "optional"):
        entry = spec.get(group, {}).get(name)
        if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], Mapping):
            match = _TOOLTIP_FOLDER.search(str(entry[1].get("tooltip", "")))
            if match:
                return match.group(1)
    return None


def explain_rejection(
    body: Mapping[str, Any],
    workflow: Mapping[str, Mapping[str, Any]],
    object_info: Mapping[str, Any],
    *,
    list_models: Callable[[str], list[str] | None],
    models_dir: str | None,
    model_inputs: Mapping[tuple[str, str], str] | None = None,
) -> WorkerError:
    """Turn /prompt's 400 answer into the most specific error: missing model files first, then the rest."""
    folders = load_model_inputs() if model_inputs is None else model_inputs
    raw_top, raw_nodes = body.get("error"), body.get("node_errors")
    top: Mapping[str, Any] = raw_top if isinstance(raw_top, Mapping) else {"message": str(raw_top or "")}
    node_errors: Mapping[str, Any] = raw_nodes if isinstance(raw_nodes, Mapping) else {}

    if top.get("type") == "invalid_prompt" and not node_errors:
        return PromptValidationError(
            f"ComfyUI refused the workflow: {top.get('message', 'invalid prompt')} {top.get('details', '')}".strip(),
            fix="check the workflow's node classes and links (export it again with Export (API))",
            comfy_error=dict(top),
        )

    missing: list[MissingModel] = []
    others: list[dict[str, Any]] = []
    for node_id, entry in node_errors.items():
        if not isinstance(entry, Mapping):
            continue
        class_type = str(entry.get("class_type") or workflow.get(str(node_id), {}).get("class_type", "?"))
        for err in entry.get("errors", []):
            extra = err.get("extra_info") or {}
            name = str(extra.get("input_name", ""))
            value = extra.get("received_value")
            folder = folders.get((class_type, name)) or _tooltip_folder(object_info, class_type, name)
            if err.get("type") == "value_not_in_list" and ((class_type, name) in folders or _looks_like_model(value)):
                available = tuple(list_models(folder) or ()) if folder else ()
                missing.append(MissingModel(str(node_id), class_type, name, str(value), folder, available))
            else:
                others.append(
                    {
                        "node_id": str(node_id),
                        "class_type": class_type,
                        "type": err.get("type"),
                        "message": err.get("message"),
                        "details": short(err.get("details", ""), 500),
                        "input": name or None,
                    }
                )

    if missing:
        first = missing[0]
        where = f"ComfyUI's '{first.folder}' models folder" if first.folder else "the models folder that node reads"
        if len(missing) == 1:
            what = (
                f"Model file missing: '{first.file}' (node {first.node_id} {first.class_type}, input "
                f"'{first.input}') is not in {where}"
            )
        else:
            names = ", ".join(f"'{m.file}' ({m.folder or '?'})" for m in missing)
            what = f"{len(missing)} model files are missing: {names}"
        base = f"{models_dir}/<folder>/" if models_dir else "the volume's models/<folder>/"
        return MissingModelError(
            what,
            why="loader nodes can only select files present in their models folder",
            fix=f"put the file(s) under {base} (names as listed, subfolders included), or start the worker with "
            "MODELS_VARIANTS=fp8 to fetch the manifest's models; details.missing lists what each folder holds",
            missing=[m.as_dict() for m in missing],
            other_errors=others,
        )
    if others:
        first_error = others[0]
        return PromptValidationError(
            f"ComfyUI refused the workflow: node {first_error['node_id']} ({first_error['class_type']}): "
            f"{first_error['message']}: {first_error['details']}",
            fix="fix the listed inputs (details.node_errors), or export the workflow again from the same ComfyUI",
            node_errors=others,
        )
    return PromptValidationError(
        f"ComfyUI refused the workflow: {top.get('message', 'validation failed')}",
        fix="the workflow needs at least one output node (SaveImage, VHS_VideoCombine, ...) that validates",
        comfy_error=dict(top),
    )
