"""The real recipes on the real, pinned sdists (fetched from PyPI by their sha256, about 6.5 MB): what each recipe does
to its source before the compiler sees it, checked without compiling (the compiles are measured in bench/results.md).

- flash-attn `hdim128`: setup.py compiles exactly the 12 head-dim-128 kernel files (+ flash_api.cpp), the define
  reaches both compilers, HEADDIM_SWITCH refuses other head dims with a message naming the flavour, and the Python
  package says which flavour it is; `full` is upstream's source untouched (84 kernel files).
- mmcv: 136 compile units (the planner's and the progress bar's denominator), and the variables that make it build
  its CUDA ops without a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wheels import options, sources
from wheels.errors import SourceError
from wheels.recipes import RECIPES
from wheels.recipes.flash_attn import HDIM128_DEFINE, kernel_sources

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def targets() -> dict[str, options.Target]:
    _, targets = options.load_matrix(ROOT / "wheels" / "matrix.toml", {})
    return targets


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private source cache, seeded from this checkout's when it has one (fetch re-checks every sha256)."""
    cache = tmp_path_factory.mktemp("cache")
    local = ROOT / ".cache" / "wheels" / "sources"
    if local.is_dir():
        shutil.copytree(local, cache / "sources")
    return cache


def _prepared(target: options.Target, cache: Path, dest: Path) -> Path:
    src = sources.unpack(sources.fetch(target, cache), dest)
    RECIPES[target.recipe].prepare(src, target)
    return src


def test_hdim128_compiles_only_the_head_dim_128_kernels(targets, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    target = targets["flash-attn-hdim128-cu124"]
    src = _prepared(target, cache, tmp_path / "src")
    kernels = kernel_sources(src / "setup.py")
    assert len(kernels) == 12 and {dim for _, dim in kernels} == {128}
    assert sorted(kind for kind, _ in kernels) == ["bwd"] * 4 + ["fwd"] * 4 + ["fwd_split"] * 4
    assert [kind for kind, _ in kernels][:4] == ["bwd"] * 4  # the slowest first (they must not be the tail)
    assert RECIPES["flash-attn"].compile_units(src, target) == 13
    setup = (src / "setup.py").read_text()
    assert setup.count(f"-D{HDIM128_DEFINE}") == 2  # host compiler (flash_api.cpp) and nvcc
    switch = (src / "csrc/flash_attn/src/static_switch.h").read_text()
    assert f"#ifdef {HDIM128_DEFINE}" in switch and "#endif  // FLASHATTENTION_HDIM128_ONLY" in switch
    assert "built with the 'hdim128' flavour" in switch and "Install the 'full' flavour" in switch
    init = (src / "flash_attn/__init__.py").read_text()
    assert 'FLAVOUR = "hdim128"' in init and "SUPPORTED_HEAD_DIMS = range(97, 129)" in init


def test_full_is_upstreams_source(targets, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    target = targets["flash-attn-cu124"]
    src = _prepared(target, cache, tmp_path / "src")
    pristine = sources.unpack(sources.fetch(target, cache), tmp_path / "pristine")
    for rel in ("setup.py", "csrc/flash_attn/src/static_switch.h", "flash_attn/__init__.py"):
        assert (src / rel).read_bytes() == (pristine / rel).read_bytes(), rel
    kernels = kernel_sources(src / "setup.py")
    assert len(kernels) == 84 and {dim for _, dim in kernels} == {32, 64, 96, 128, 160, 192, 256}
    assert RECIPES["flash-attn"].compile_units(src, target) == 85


def test_hdim128_refuses_a_flash_attn_it_was_not_written_for(targets, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """A changed upstream (here: one head-dim-128 kernel file gone) stops the build before any compile."""
    target = targets["flash-attn-hdim128-cu124"]
    src = sources.unpack(sources.fetch(target, cache), tmp_path / "src")
    setup = src / "setup.py"
    lines = setup.read_text().splitlines(keepends=True)
    setup.write_text("".join(ln for ln in lines if "flash_fwd_hdim128_fp16_sm80.cu" not in ln))
    with pytest.raises(SourceError, match="expected 12 head-dim-128 kernel files") as info:
        RECIPES["flash-attn"].prepare(src, target)
    assert "update wheels/recipes/flash_attn.py" in info.value.render()


def test_mmcv_builds_its_cuda_ops_without_a_gpu(targets, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    target = targets["mmcv-cu124"]
    src = _prepared(target, cache, tmp_path / "src")
    assert RECIPES["mmcv"].compile_units(src, target) == 136
    env = RECIPES["mmcv"].build_env(target, None, "cu124torch2.5")
    assert env == {"MMCV_WITH_OPS": "1", "FORCE_CUDA": "1"}
