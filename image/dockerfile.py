"""The Dockerfile's node-pack block, generated from image/nodes.toml: one COPY (one layer) per pack, in file order.

`python -m image dockerfile` checks that the committed Dockerfile matches nodes.toml (`nox -s image` refuses a stale
one before any work); `--write` rewrites the block in place. The rest of the Dockerfile is written by hand.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from wheels import log
from wheels.errors import ConfigError, ImageError
from wheels.options import parse_args
from wheels.util import atomic_write_text

from .config import DEFAULT_NODES, IMAGE_DIR, Nodes, load_nodes

DOCKERFILE = IMAGE_DIR / "Dockerfile"
BEGIN = (
    "# --- node packs: generated from image/nodes.toml by `python -m image dockerfile --write`; do not edit by hand ---"
)
END = "# --- end of node packs ---"
NODES_DIR = "/opt/ComfyUI/custom_nodes"


def node_block(nodes: Nodes) -> list[str]:
    return [f"COPY sources/nodes/{p.name} {NODES_DIR}/{p.name}" for p in nodes.packs]


def _bounds(lines: list[str], path: Path) -> tuple[int, int]:
    try:
        begin = lines.index(BEGIN)
        end = lines.index(END, begin)
    except ValueError:
        raise ConfigError(
            f"{path} has no generated node-pack block",
            fix=f"restore the two marker lines:\n    {BEGIN}\n    {END}",
        ) from None
    return begin, end


def render(text: str, nodes: Nodes, path: Path = DOCKERFILE) -> str:
    lines = text.splitlines()
    begin, end = _bounds(lines, path)
    return "\n".join([*lines[: begin + 1], *node_block(nodes), *lines[end:]]) + "\n"


def check(nodes: Nodes, path: Path = DOCKERFILE) -> None:
    text = path.read_text()
    if render(text, nodes, path) != text:
        raise ImageError(
            f"The node-pack block of {path} does not match {nodes.path}",
            why="each node pack is one COPY layer, generated from the pin file; a pack added, removed or reordered "
            "there must be reflected here",
            fix="run `python -m image dockerfile --write` and commit the result",
        )


def cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m image dockerfile", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the block instead of checking it")
    parser.add_argument("--nodes", type=Path, help="node pin file (IMAGE_NODES)")
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE)
    args = parse_args(argv, parser)
    nodes = load_nodes(args.nodes or Path(os.environ.get("IMAGE_NODES") or DEFAULT_NODES))
    if args.write:
        atomic_write_text(args.dockerfile, render(args.dockerfile.read_text(), nodes, args.dockerfile))
        log.info(f"wrote the node-pack block of {args.dockerfile} ({len(nodes.packs)} packs)")
    else:
        check(nodes, args.dockerfile)
        log.info(f"{args.dockerfile} matches {nodes.path} ({len(nodes.packs)} node packs)")
    return 0
