"""The matrix loader, settings precedence (matrix < environment < command line) and target selection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from wheels.errors import ConfigError
from wheels.options import DEFAULT_MATRIX, load_matrix, parse_archs, resolve, select_targets

Matrix = Callable[..., Path]
# The canary target's last lines in spine_fakes.MATRIX: edits here touch only that target.
CANARY = 'python = "3.11"\ncuda-archs = "8.0;9.0"\ndefault = true\n\n[targets.canary-cu124]'


def opts(path: Path, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None):  # noqa: ANN201
    return resolve(["--matrix", str(path), *argv], env or {}, cwd=cwd or path.parent)


# --- the real matrix ------------------------------------------------------------------------------------------------


def test_the_repository_matrix_loads_with_the_issue_defaults() -> None:
    _, targets = load_matrix(DEFAULT_MATRIX, {})
    defaults = {n for n, t in targets.items() if t.default}
    assert defaults == {"flash-attn", "mmcv", "canary"}
    fa, mmcv, canary = targets["flash-attn"], targets["mmcv"], targets["canary"]
    assert (fa.version, fa.cuda_archs) == ("2.7.4.post1", ("8.0", "9.0"))
    assert (mmcv.version, mmcv.cuda_archs) == ("2.1.0", ("8.0", "8.6", "8.9", "9.0"))
    assert canary.source.kind == "path" and canary.cuda_archs == ("8.0", "9.0")
    for t in (fa, mmcv, canary):
        assert (t.torch.name, t.torch.version, t.torch.cuda, t.python) == ("cu121", "2.5.1", "12.1", "3.11")
        assert t.torch.index_url == "https://download.pytorch.org/whl/cu121"
    for name in ("canary-cu124", "mmcv-cu124", "flash-attn-cu124"):
        t = targets[name]
        assert (t.torch.cuda, t.torch.index_url, t.default) == ("12.4", "https://pypi.org/simple", False)
    assert fa.source.kind == "sdist" and fa.source.sha256 and len(fa.source.sha256) == 64
    assert targets["flash-attn-hdim128-cu124"].flavour == "hdim128"


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"[settings]\n": "[settings]\nwheelhous = 'x'\n"}, 'Unknown key "wheelhous".*Perhaps you meant "wheelhouse"'),
        ({"schema = 1\n": "schema = 1\ntargetz = 1\n"}, 'Unknown key "targetz".*Perhaps you meant "targets"'),
        (
            {'cuda = "12.4"\n': 'cuda = "12.4"\nindex_url = "x"\n'},
            'Unknown key "index_url".*Perhaps you meant "index-url"',
        ),
        (
            {CANARY: CANARY.replace("cuda-archs", "cuda_archs")},
            r'Unknown key "cuda_archs" in .*\[targets.canary\].*Perhaps you meant "cuda-archs"',
        ),
        (
            {'extends = "canary"\ntorch = "cu124"': 'extends = "canary"\ntorch = "cu142"'},
            r'Unknown torch build "cu142" in .*\[targets.canary-cu124\].*Perhaps you meant "cu124"',
        ),
        ({'recipe = "canary"': 'recipe = "canery"'}, 'Unknown recipe "canery".*Perhaps you meant "canary"'),
        (
            {'flavour = "hdim128"': 'flavour = "hdim-128"'},
            'Unknown flavour of recipe flash-attn "hdim-128".*Perhaps you meant "hdim128"',
        ),
        (
            {'extends = "canary"': 'extends = "canery"'},
            r'Unknown target "canery" in .*\[targets.canary-cu124\] extends.*Perhaps you meant "canary"',
        ),
        ({"schema = 1": "schema = 2"}, "has schema 2; this pipeline reads schema 1"),
        ({'index-url = "https://pypi.org/simple"\n': ""}, r'Missing "index-url" in .*\[torch.cu124\]'),
        ({'source = "system"': 'source = "conda"'}, 'Bad source "conda"'),
        ({'version = "0.1.0"\n': ""}, r'Missing "version" in .*\[targets.canary\]'),
        (
            {CANARY: CANARY.replace('cuda-archs = "8.0;9.0"\n', "")},
            r'Missing "cuda-archs" in .*\[targets.canary\]',
        ),
        (
            {CANARY: CANARY.replace('"8.0;9.0"', '"sm_80"')},
            'Bad CUDA arch "sm_80"',
        ),
        (
            {CANARY: CANARY.replace('"3.11"', '"311"')},
            'Bad python "311"',
        ),
        ({'source = { path = "wheels/canary" }': 'source = "wheels/canary"'}, "source in .* must be a table"),
        ({'sha256 = "' + "ab" * 32 + '"': 'sha256 = "abc"'}, "needs a sha256 pin"),
        ({'source = { path = "wheels/canary" }': "source = { git = 'x' }"}, 'Unknown key "git"'),
    ],
)
def test_matrix_errors(matrix: Matrix, edit: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"(?s){message}"):
        load_matrix(matrix(replace=edit), {})


def test_unknown_key_error_lists_the_allowed_keys(matrix: Matrix) -> None:
    with pytest.raises(ConfigError) as e:
        load_matrix(matrix(replace={"[settings]\n": "[settings]\nwheelhous = 'x'\n"}), {})
    assert e.value.fix and "wheelhouse" in e.value.fix and "cache-dir" in e.value.fix
    assert e.value.exit_code == 3


def test_system_torch_needs_the_system_python(matrix: Matrix) -> None:
    path = matrix('\n[targets.canary-system]\nextends = "canary"\ntorch = "system"\n')
    with pytest.raises(ConfigError, match='python "3.11" does not fit torch build "system"'):
        load_matrix(path, {})
    path = matrix('\n[targets.canary-x]\nextends = "canary"\npython = "system"\n')
    with pytest.raises(ConfigError, match='python "system" does not fit torch build "cu121"'):
        load_matrix(path, {})
    _, targets = load_matrix(matrix('\n[targets.s]\nextends = "canary"\ntorch = "system"\npython = "system"\n'), {})
    assert targets["s"].torch.source == "system" and targets["s"].python == "system"
    with pytest.raises(ConfigError, match="no version to install"):
        _ = targets["s"].torch.requirement


@pytest.mark.parametrize(
    ("extra", "loop"),
    [
        ('\n[targets.a]\nextends = "b"\n\n[targets.b]\nextends = "a"\n', "a -> b -> a"),
        ('\n[targets.a]\nextends = "a"\n', "a -> a"),
        (
            '\n[targets.a]\nextends = "b"\n\n[targets.b]\nextends = "c"\n\n[targets.c]\nextends = "a"\n',
            "a -> b -> c -> a",
        ),
    ],
)
def test_extends_loops_are_named(matrix: Matrix, extra: str, loop: str) -> None:
    with pytest.raises(ConfigError, match=f"extend each other in a loop: {loop} in"):
        load_matrix(matrix(extra), {})


def test_extends_inherits_everything_but_default(matrix: Matrix) -> None:
    _, targets = load_matrix(matrix('\n[targets.c2]\nextends = "canary-cu124"\ncuda-archs = "9.0+PTX"\n'), {})
    c2 = targets["c2"]
    assert (c2.package, c2.version, c2.recipe, c2.torch.name) == ("canary", "0.1.0", "canary", "cu124")
    assert c2.cuda_archs == ("9.0+PTX",) and c2.sm_archs == ("90",) and c2.ptx_archs == ("90",)
    assert c2.default is False and targets["canary-cu124"].default is False and targets["canary"].default is True


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_matrix(bad, {})
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_matrix(tmp_path / "nope.toml", {})
    assert "WHEELS_MATRIX" in (e.value.fix or "")


def test_a_matrix_without_targets_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("schema = 1\n")
    with pytest.raises(ConfigError, match="defines no targets"):
        load_matrix(path, {})


@pytest.mark.parametrize(
    ("value", "archs"),
    [("8.0;9.0", ("8.0", "9.0")), ("8.0 8.6, 9.0+PTX", ("8.0", "8.6", "9.0+PTX")), (" 9.0a ", ("9.0a",))],
)
def test_parse_archs(value: str, archs: tuple[str, ...]) -> None:
    assert parse_archs(value, "here") == archs


@pytest.mark.parametrize("value", ["", " ; ", "sm_90", "9", "9.0+ptx", "compute_90", "9.0;8"])
def test_parse_archs_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match="arch"):
        parse_archs(value, "here")


# --- precedence: matrix < environment < command line ----------------------------------------------------------------


def test_matrix_settings_apply_relative_to_cwd(matrix: Matrix, tmp_path: Path) -> None:
    o = opts(matrix(), cwd=tmp_path)
    assert o.wheelhouse == tmp_path / "wh-from-matrix"
    assert o.cache_dir == tmp_path / "cache-from-matrix"
    assert (o.backend, o.max_jobs, o.nvcc_threads, o.keep_envs, o.system_python) == (
        "local",
        None,
        None,
        False,
        "python3",
    )


def test_environment_overrides_the_matrix(matrix: Matrix, tmp_path: Path) -> None:
    env = {
        "WHEELHOUSE": "/abs/wh",
        "WHEELS_CACHE_DIR": "rel-cache",
        "MAX_JOBS": "3",
        "NVCC_THREADS": "2",
        "WHEELS_KEEP_ENVS": "yes",
        "WHEELS_SYSTEM_PYTHON": "/opt/py",
        "WHEELS_BACKEND": "container",
    }
    o = opts(matrix(), env=env, cwd=tmp_path)
    assert o.wheelhouse == Path("/abs/wh") and o.cache_dir == tmp_path / "rel-cache"
    assert (o.max_jobs, o.nvcc_threads, o.keep_envs, o.system_python, o.backend) == (3, 2, True, "/opt/py", "container")


def test_command_line_overrides_the_environment(matrix: Matrix, tmp_path: Path) -> None:
    env = {
        "WHEELHOUSE": "/env/wh",
        "WHEELS_CACHE_DIR": "/env/cache",
        "MAX_JOBS": "3",
        "NVCC_THREADS": "2",
        "WHEELS_BACKEND": "container",
        "WHEELS_SYSTEM_PYTHON": "/env/py",
        "WHEELS_CUDA_ARCHS": "8.0",
    }
    o = opts(
        matrix(),
        "--wheelhouse",
        "/cli/wh",
        "--cache-dir",
        "/cli/cache",
        "--max-jobs",
        "5",
        "--nvcc-threads",
        "1",
        "--backend",
        "local",
        "--system-python",
        "/cli/py",
        "--cuda-archs",
        "9.0",
        env=env,
        cwd=tmp_path,
    )
    assert (o.wheelhouse, o.cache_dir) == (Path("/cli/wh"), Path("/cli/cache"))
    assert (o.max_jobs, o.nvcc_threads, o.backend, o.system_python) == (5, 1, "local", "/cli/py")
    assert o.targets["canary"].cuda_archs == ("9.0",)


def test_matrix_path_from_environment_then_command_line(matrix: Matrix, tmp_path: Path) -> None:
    a = matrix(name="a.toml")
    b = matrix(replace={'wheelhouse = "wh-from-matrix"': 'wheelhouse = "wh-b"'}, name="b.toml")
    assert resolve([], {"WHEELS_MATRIX": str(b)}, cwd=tmp_path).wheelhouse == tmp_path / "wh-b"
    assert (
        resolve(["--matrix", str(a)], {"WHEELS_MATRIX": str(b)}, cwd=tmp_path).wheelhouse == tmp_path / "wh-from-matrix"
    )


def test_arch_override_touches_only_the_selected_targets(matrix: Matrix) -> None:
    o = opts(matrix(), "canary-cu124", env={"WHEELS_CUDA_ARCHS": "9.0+PTX"})
    assert o.targets["canary-cu124"].cuda_archs == ("9.0+PTX",)
    assert o.targets["canary"].cuda_archs == ("8.0", "9.0")


def test_torch_index_precedence(matrix: Matrix) -> None:
    path = matrix()
    _, t = load_matrix(path, {})
    assert t["canary"].torch.index_url == "https://download.pytorch.org/whl/cu121"
    _, t = load_matrix(path, {"TORCH_INDEX_URL": "https://mirror/all"})
    assert {x.torch.index_url for x in t.values()} == {"https://mirror/all"}
    _, t = load_matrix(path, {"TORCH_INDEX_URL": "https://mirror/all", "TORCH_INDEX_URL_CU121": "https://mirror/121"})
    assert t["canary"].torch.index_url == "https://mirror/121"
    assert t["canary-cu124"].torch.index_url == "https://mirror/all"


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"MAX_JOBS": "two"}, [], "MAX_JOBS / --max-jobs must be a whole number"),
        ({}, ["--max-jobs", "0"], "must be at least 1"),
        ({"NVCC_THREADS": "-1"}, [], "NVCC_THREADS / --nvcc-threads must be at least 1"),
        ({"WHEELS_BACKEND": "docker"}, [], 'Unknown backend "docker"'),
        ({"WHEELS_CUDA_ARCHS": "90"}, [], 'Bad CUDA arch "90" in --cuda-archs / WHEELS_CUDA_ARCHS'),
        ({}, ["--max-jbos", "2"], '(?s)Unknown option "--max-jbos".*Perhaps you meant "--max-jobs"'),
        ({}, ["--backend", "docker"], "Bad arguments: argument --backend: invalid choice"),
    ],
)
def test_bad_settings(matrix: Matrix, env: dict[str, str], argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        opts(matrix(), *argv, env=env)


def test_empty_environment_values_fall_through(matrix: Matrix, tmp_path: Path) -> None:
    o = opts(matrix(), env={"WHEELHOUSE": "", "MAX_JOBS": ""}, cwd=tmp_path)
    assert o.wheelhouse == tmp_path / "wh-from-matrix" and o.max_jobs is None


def test_options_are_frozen(matrix: Matrix) -> None:
    o = opts(matrix())
    with pytest.raises(AttributeError):
        o.max_jobs = 3  # type: ignore[misc]


# --- environment typos ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("WHEELS_CACHEDIR", "WHEELS_CACHE_DIR"),
        ("WHEELS_KEEP_ENV", "WHEELS_KEEP_ENVS"),
        ("WHEELS_MATRX", "WHEELS_MATRIX"),
    ],
)
def test_unknown_wheels_variable_fails_with_a_suggestion(matrix: Matrix, key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f'Unknown environment variable "{key}".*Perhaps you meant "{suggestion}"'):
        opts(matrix(), env={key: "1"})


def test_unknown_torch_index_variable_fails_with_a_suggestion(matrix: Matrix) -> None:
    """A mistyped per-build index would otherwise be ignored and torch fetched from the default index."""
    with pytest.raises(ConfigError, match='Unknown environment variable "TORCH_INDEX_URL_CU12"') as e:
        opts(matrix(), env={"TORCH_INDEX_URL_CU12": "https://mirror"})
    assert 'Perhaps you meant "TORCH_INDEX_URL_CU12' in str(e.value)
    assert e.value.fix == "use one of: TORCH_INDEX_URL_CU121, TORCH_INDEX_URL_CU124"


def test_unrelated_variables_are_ignored(matrix: Matrix) -> None:
    opts(matrix(), env={"PATH": "/bin", "WHEELHOUSE_OLD": "x", "MAX_JOBS_X": "y", "HOME": "/root"})


# --- target selection -----------------------------------------------------------------------------------------------


def test_no_names_selects_the_default_targets_in_matrix_order(matrix: Matrix) -> None:
    assert opts(matrix()).selected == ("canary", "fa")


def test_selection_by_name_and_glob_in_matrix_order(matrix: Matrix) -> None:
    o = opts(matrix(), "*-cu124", "canary")
    assert o.selected == ("canary", "canary-cu124", "fa-hdim128-cu124")
    assert [t.name for t in o.selected_targets()] == list(o.selected)
    assert opts(matrix(), "fa*", "fa").selected == ("fa", "fa-hdim128-cu124")


def test_unknown_target_suggests_the_closest(matrix: Matrix) -> None:
    with pytest.raises(
        ConfigError, match='Unknown target "canary-cu12" in the command line.*Perhaps you meant "canary-cu124"'
    ):
        opts(matrix(), "canary-cu12")
    with pytest.raises(ConfigError, match='Unknown target "mmcv\\*"'):
        opts(matrix(), "mmcv*")


def test_select_targets_directly(matrix: Matrix) -> None:
    _, targets = load_matrix(matrix(), {})
    assert select_targets([], targets) == ("canary", "fa")
    assert select_targets(["canary?cu124"], targets) == ("canary-cu124",)


def test_without_settings_drops_only_the_pipelines_variables() -> None:
    from wheels.options import without_settings

    env = {
        "PATH": "/bin",
        "HOME": "/root",
        "UV_CACHE_DIR": "/c",
        "MAX_JOBS": "9",
        "CUDA_HOME": "/cuda",
        "CUDA_PATH": "/cuda",
        "WHEELHOUSE": "w",
        "WHEELS_CACHE_DIR": "c",
        "WHEELS_TYPO": "x",
        "TORCH_INDEX_URL": "i",
        "TORCH_INDEX_URL_CU121": "j",
    }
    assert without_settings(env) == {"PATH": "/bin", "HOME": "/root", "UV_CACHE_DIR": "/c"}
