"""Local version labels, derived only from what the installed torch reports.

``2.7.4.post1+cu121torch2.5``: CUDA and torch major.minor (the ABI-relevant part of torch's version); ``.cxx11abi``
when torch was built with the C++11 ABI; ``.<flavour>`` for a non-default flavour (``.hdim128``).
"""

from __future__ import annotations

import re

from .envs import TorchInfo
from .errors import EnvError
from .options import Target, index_env_key

_LABEL_RE = re.compile(r"^(cu\d+|cpu)torch(\d+\.\d+)((?:\.[a-z0-9]+)*)$")


def local_label(torch: TorchInfo, flavour: str | None = None, default_flavour: str | None = None) -> str:
    cuda = f"cu{torch.cuda.replace('.', '')}" if torch.cuda else "cpu"
    parts = [f"{cuda}torch{torch.major_minor}"]
    if torch.cxx11_abi:
        parts.append("cxx11abi")
    if flavour and flavour != default_flavour:
        parts.append(flavour)
    return ".".join(parts)


def parse_label(label: str) -> dict[str, object]:
    """The inverse of local_label: {"cuda": "12.4" | None, "torch": "2.5", "cxx11_abi": bool, "flavour": str | None}."""
    match = _LABEL_RE.match(label)
    if not match:
        raise ValueError(f"not a label of this pipeline: {label!r}")
    cuda_part, torch_mm, rest = match.groups()
    extras = [p for p in rest.split(".") if p]
    cuda = None if cuda_part == "cpu" else f"{cuda_part[2:-1]}.{cuda_part[-1]}"
    flavour = next((p for p in extras if p != "cxx11abi"), None)
    return {"cuda": cuda, "torch": torch_mm, "cxx11_abi": "cxx11abi" in extras, "flavour": flavour}


def check_torch_matches(target: Target, torch: TorchInfo) -> None:
    """Stop when the installed torch is not the one the matrix declares (the usual cause: the wrong torch index)."""
    declared = target.torch
    if declared.source == "system":
        if torch.cuda is None:
            raise EnvError(
                f"The system torch {torch.version} is a CPU build; {target.name} needs a CUDA build of torch",
                fix="point --system-python at an interpreter whose torch reports torch.version.cuda",
            )
        return
    if torch.cuda != declared.cuda:
        raise EnvError(
            f"Target {target.name} declares CUDA {declared.cuda}, but the installed torch {torch.version} reports "
            f"CUDA {torch.cuda}",
            why=f'torch came from {declared.index_url}, which serves a CUDA {torch.cuda} build of torch {torch.base_version}',
            fix=f"use the torch index of a CUDA {declared.cuda} build ({index_env_key(declared.name)}), "
            f"or pick the target whose torch build is CUDA {torch.cuda}",
        )
    if torch.base_version != declared.version:
        raise EnvError(
            f"Target {target.name} declares torch {declared.version}, but {torch.version} was installed",
            fix="check constraints.txt and the torch index",
        )
