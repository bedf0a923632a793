"""ComfyUI's ``extra_model_paths.yaml`` for the mounted volume: ``python -m comfy_worker.model_paths``.

start.sh calls it with the models folder(s) it found (``--models-dir``, first wins) and where to write the file.
The keys are ComfyUI's folder names (``folder_paths.folder_names_and_paths``); ``detection`` is the folder
ComfyUI-WanAnimatePreprocess registers for its ONNX pose models. Each folder is listed whether or not it exists yet,
so files added to the volume later are found without a restart of this script (ComfyUI rescans on each request).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError

# ComfyUI folder name -> subfolders of a models root it reads (in order). "unet" is the older name of
# diffusion_models and "clip" of text_encoders: ComfyUI still reads both, so volumes laid out either way work.
FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "diffusion_models": ("diffusion_models", "unet"),
    "text_encoders": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
    "vae": ("vae",),
    "loras": ("loras",),
    "detection": ("detection",),
    "controlnet": ("controlnet",),
    "upscale_models": ("upscale_models",),
    "embeddings": ("embeddings",),
    "configs": ("configs",),
}
# The folders the SteadyDancer workflow reads; start.sh creates these on the volume so a user sees where files go.
REQUIRED = ("diffusion_models", "text_encoders", "clip_vision", "vae", "loras", "detection", "annotators")


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    import json

    return json.dumps(value)


def render(models_dirs: Sequence[Path]) -> str:
    """The YAML text: one section per models root, the first marked is_default (listed first, used for saves)."""
    if not models_dirs:
        raise ConfigError("No models folder given", fix="pass --models-dir DIR (the volume's models folder)")
    lines = [
        "# Written by comfy_worker.model_paths at container start; edits are lost on restart.",
        "# Set MODELS_DEST (and RUNPOD_MODE / VOLUME_ROOT) instead: see /opt/runtime/README.md.",
    ]
    for i, root in enumerate(models_dirs):
        if not root.is_absolute():
            raise ConfigError(f"Models folder {root} is not an absolute path")
        lines.append(f"volume_{i}:")
        lines.append(f"    base_path: {_quote(str(root))}")
        if i == 0:
            lines.append("    is_default: true")
        for name, subdirs in FOLDERS.items():
            if len(subdirs) == 1:
                lines.append(f"    {name}: {_quote(subdirs[0])}")
            else:
                lines.append(f"    {name}: |")
                lines.extend(f"        {sub}" for sub in subdirs)
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: ComfyUI never reads half a file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfy_worker.model_paths", description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", action="append", type=Path, required=True, help="a models root (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="where to write extra_model_paths.yaml")
    parser.add_argument("--create", action="store_true", help="create the first root's SteadyDancer folders")
    args = parser.parse_args(argv)
    try:
        write(args.out, render(args.models_dir))
    except ConfigError as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 3
    if args.create:
        for name in REQUIRED:
            try:
                (args.models_dir[0] / name).mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a read-only volume still serves the models it has
                print(f"warning: cannot create {args.models_dir[0] / name}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
