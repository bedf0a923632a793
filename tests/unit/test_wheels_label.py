"""Local version labels come only from what the installed torch reports; a torch that is not the declared one stops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wheels.envs import TorchInfo
from wheels.errors import EnvError
from wheels.label import check_torch_matches, local_label, parse_label
from wheels.options import load_matrix


def torch(version: str = "2.5.1+cu124", cuda: str | None = "12.4", abi: bool = False) -> TorchInfo:
    return TorchInfo(version=version, cuda=cuda, cxx11_abi=abi, lib=Path("/x"), python="3.11", python_tag="cp311")


@pytest.mark.parametrize(
    ("info", "flavour", "default", "label"),
    [
        (torch("2.5.1+cu121", "12.1"), None, None, "cu121torch2.5"),
        (torch("2.5.1+cu124", "12.4"), None, None, "cu124torch2.5"),
        (torch("2.5.1", "12.4"), None, None, "cu124torch2.5"),  # PyPI's torch has no local label of its own
        (torch("2.5.1+cpu", None), None, None, "cputorch2.5"),
        (torch("2.6.0+cu126", "12.6", abi=True), None, None, "cu126torch2.6.cxx11abi"),
        (torch("2.5.1+cu121", "12.1"), "full", "full", "cu121torch2.5"),  # the default flavour is not named
        (torch("2.5.1+cu124", "12.4"), "hdim128", "full", "cu124torch2.5.hdim128"),
        (torch("2.7.0", "12.8", abi=True), "hdim128", "full", "cu128torch2.7.cxx11abi.hdim128"),
        (torch("2.10.0+cu130", "13.0"), None, None, "cu130torch2.10"),
    ],
)
def test_label_and_its_inverse(info: TorchInfo, flavour: str | None, default: str | None, label: str) -> None:
    assert local_label(info, flavour, default) == label
    parsed = parse_label(label)
    assert parsed == {
        "cuda": info.cuda,
        "torch": info.major_minor,
        "cxx11_abi": info.cxx11_abi,
        "flavour": flavour if flavour != default else None,
    }


def test_full_version_with_label_is_a_valid_local_version() -> None:
    from packaging.version import Version

    v = Version("2.7.4.post1+" + local_label(torch("2.5.1+cu121", "12.1"), "hdim128", "full"))
    assert (v.public, v.local) == ("2.7.4.post1", "cu121torch2.5.hdim128")


@pytest.mark.parametrize(
    "bad", ["", "cu124", "torch2.5", "cu124torch2", "cu124torch2.5-x", "cu124torch2.5.", "rocm6torch2.5"]
)
def test_parse_label_rejects_foreign_labels(bad: str) -> None:
    with pytest.raises(ValueError, match="not a label of this pipeline"):
        parse_label(bad)


@pytest.fixture
def targets(matrix: Callable[..., Path]):  # noqa: ANN201
    return load_matrix(matrix('\n[targets.sys]\nextends = "canary"\ntorch = "system"\npython = "system"\n'), {})[1]


def test_matching_torch_passes(targets) -> None:  # noqa: ANN001
    check_torch_matches(targets["canary"], torch("2.5.1+cu121", "12.1"))
    check_torch_matches(targets["canary-cu124"], torch("2.5.1", "12.4"))
    check_torch_matches(targets["sys"], torch("2.7.0+cu128", "12.8", abi=True))


def test_cuda_mismatch_names_the_torch_index(targets) -> None:  # noqa: ANN001
    """The matrix says CUDA 12.1, the installed torch says 12.4: the usual cause is the index torch came from."""
    with pytest.raises(EnvError) as e:
        check_torch_matches(targets["canary"], torch("2.5.1", "12.4"))
    err = e.value
    assert "declares CUDA 12.1, but the installed torch 2.5.1 reports CUDA 12.4" in err.what
    assert err.why and "https://download.pytorch.org/whl/cu121" in err.why
    assert err.fix and "TORCH_INDEX_URL_CU121" in err.fix and "CUDA 12.4" in err.fix
    assert err.exit_code == 6


def test_torch_version_mismatch(targets) -> None:  # noqa: ANN001
    with pytest.raises(EnvError, match="declares torch 2.5.1, but 2.6.0\\+cu121 was installed"):
        check_torch_matches(targets["canary"], torch("2.6.0+cu121", "12.1"))


def test_cpu_torch_for_a_cuda_target(targets) -> None:  # noqa: ANN001
    with pytest.raises(EnvError, match="reports CUDA None"):
        check_torch_matches(targets["canary"], torch("2.5.1+cpu", None))
    with pytest.raises(EnvError, match="The system torch 2.5.1\\+cpu is a CPU build"):
        check_torch_matches(targets["sys"], torch("2.5.1+cpu", None))
