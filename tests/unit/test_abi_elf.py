"""ELF facts, the loader model and the linkage of modules, on tiny shared objects compiled here with the C compiler.

Each object takes a few milliseconds to build; no binary is committed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from wheels.abi import analysis, elf
from wheels.abi.loader import LoaderModel, System, expand_origin, parse_ldconfig, resolve

CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler (gcc)")


def cc(out: Path, source: str, *flags: str, script: str | None = None) -> Path:
    """Compile ``source`` (C) into the shared object ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(out.suffix + ".c")
    src.write_text(source)
    cmd = [CC, "-shared", "-fPIC", "-O0", "-o", str(out), str(src), *flags]
    if script is not None:
        map_file = out.with_suffix(out.suffix + ".map")
        map_file.write_text(script)
        cmd.append(f"-Wl,--version-script={map_file}")
    subprocess.run(cmd, check=True, capture_output=True)
    return out


VERSIONED = """
int foo_v1(void) { return 1; }
int foo_v2(void) { return 2; }
int bar(void) { return 3; }
__asm__(".symver foo_v1,foo@VER_1");
__asm__(".symver foo_v2,foo@@VER_2");
"""
SCRIPT_V2 = "VER_1 { global: foo; bar; local: *; };\nVER_2 { global: foo; } VER_1;\n"
OLD = "int foo(void) { return 1; }\nint bar(void) { return 3; }\n"
SCRIPT_V1 = "VER_1 { global: foo; bar; local: *; };\n"


@pytest.fixture
def libver(tmp_path: Path) -> Path:
    return cc(tmp_path / "new" / "libver.so.1", VERSIONED, "-Wl,-soname,libver.so.1", script=SCRIPT_V2)


def test_dynamic_info_reads_soname_needed_rpath_and_runpath(tmp_path: Path, libver: Path) -> None:
    user = "int foo(void);\nint call(void) { return foo(); }\n"
    rpath = cc(tmp_path / "a" / "librp.so", user, str(libver), "-Wl,--disable-new-dtags,-rpath,$ORIGIN/../new")
    runpath = cc(tmp_path / "b" / "librun.so", user, str(libver), "-Wl,--enable-new-dtags,-rpath,/x:/y")
    info = elf.read_dynamic_info(rpath)
    assert "libver.so.1" in info.needed
    assert info.rpath == ("$ORIGIN/../new",)
    assert info.runpath == ()
    assert info.elfclass == 64
    assert elf.read_dynamic_info(runpath).runpath == ("/x", "/y")
    assert elf.read_dynamic_info(libver).soname == "libver.so.1"


def test_symbol_versions_defined_and_needed(tmp_path: Path, libver: Path) -> None:
    table = elf.read_symbols(libver)
    foo = {(s.version, s.hidden) for s in table.lookup("foo")}
    assert foo == {("VER_1", True), ("VER_2", False)}  # foo@VER_1 and the default foo@@VER_2
    assert [s.version for s in table.lookup("bar")] == ["VER_1"]
    assert table.lookup("foo_v1") == []  # local: not exported
    assert table.lookup("nothing") == []
    with elf.open_elf(libver) as f:
        assert {"VER_1", "VER_2"} <= set(elf.version_definitions(f))

    user = cc(tmp_path / "user.so", "int foo(void);\nint call(void) { return foo(); }\n", str(libver))
    facts = elf.read_facts(user)
    [ref] = [s for s in facts.undefined if s.name == "foo"]
    assert (ref.version, ref.library) == ("VER_2", "libver.so.1")  # links against the default version
    assert elf.VersionNeed("libver.so.1", "VER_2") in facts.needs
    assert all(n.version.startswith("GLIBC_") for n in facts.needs if n.library == "libc.so.6")
    assert facts.fatbin is None


@pytest.mark.parametrize("style", ["gnu", "sysv", "both"])
def test_hash_lookups_agree_with_a_full_scan(tmp_path: Path, style: str) -> None:
    source = "\n".join(f"int sym_{i}(void) {{ return {i}; }}" for i in range(300))
    lib = cc(tmp_path / f"lib{style}.so", source, f"-Wl,--hash-style={style}")
    table = elf.read_symbols(lib)
    scanned = {s.name for s in elf.defined_symbols(table)}
    assert {f"sym_{i}" for i in range(300)} <= scanned
    for i in (0, 7, 150, 299):
        [found] = table.lookup(f"sym_{i}")
        assert found.defined and found.name == f"sym_{i}"
    assert table.lookup("sym_300") == []


def test_weak_undefined_symbols_are_marked(tmp_path: Path) -> None:
    lib = cc(
        tmp_path / "libweak.so",
        "extern int maybe(void) __attribute__((weak));\nextern int surely(void);\n"
        "int f(void) { return (maybe ? maybe() : 0) + surely(); }\n",
    )
    refs = {s.name: s for s in elf.read_facts(lib).undefined}
    assert refs["maybe"].weak
    assert not refs["surely"].weak


# ---------------------------------------------------------------------------------------------------------------------
# The loader model


def test_expand_origin() -> None:
    assert expand_origin("$ORIGIN/../lib", Path("/a/b")) == "/a/b/../lib"
    assert expand_origin("${ORIGIN}/x:$LIB", Path("/o")) == "/o/x:lib64"


def test_parse_ldconfig() -> None:
    text = (
        "552 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n"
        "\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6\n"
        "\tlibc.so.6 (libc6) => /lib/i386-linux-gnu/libc.so.6\n"
        "Cache generated by: ldconfig (GNU libc) stable release version 2.36\n"
    )
    cache = parse_ldconfig(text)
    assert cache["libz.so.1"] == ("/lib/x86_64-linux-gnu/libz.so.1",)
    assert cache["libc.so.6"] == ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/i386-linux-gnu/libc.so.6")


def _user(tmp_path: Path, libver: Path, name: str, *flags: str) -> Path:
    return cc(tmp_path / name, "int foo(void);\nint call(void) { return foo(); }\n", str(libver), *flags)


def test_runpath_with_origin_finds_the_dependency(tmp_path: Path, libver: Path) -> None:
    user = _user(tmp_path, libver, "pkg/user.so", "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../new")
    model = LoaderModel(System(default_dirs=()))
    tree = model.load(user)
    assert [o.path for o in tree[:2]] == [user.resolve(), libver.resolve()]
    assert not [m for m in model.missing if m.needed == "libver.so.1"]


def test_not_found_without_a_path_and_found_through_each_search_source(tmp_path: Path, libver: Path) -> None:
    user = _user(tmp_path, libver, "plain/user.so")
    missing = LoaderModel(System(default_dirs=()))
    missing.load(user)
    [gap] = [m for m in missing.missing if m.needed == "libver.so.1"]
    assert gap.by == user.resolve()

    for system in (
        System(ld_library_path=(str(libver.parent),), default_dirs=()),
        System(cache={"libver.so.1": (str(libver),)}, default_dirs=()),
        System(default_dirs=(str(libver.parent),)),
    ):
        model = LoaderModel(system)
        model.load(user)
        assert not [m for m in model.missing if m.needed == "libver.so.1"], system


def test_an_already_loaded_soname_is_reused(tmp_path: Path, libver: Path) -> None:
    """How a cpp_extension module (no RPATH) finds libc10.so: torch loaded it first."""
    user = _user(tmp_path, libver, "plain/user.so")
    model = LoaderModel(System(default_dirs=()))
    model.load(libver)
    tree = model.load(user)
    assert tree[1].path == libver.resolve()
    assert not model.missing


def test_rpath_of_the_loader_is_inherited_but_runpath_is_not(tmp_path: Path, libver: Path) -> None:
    user = _user(tmp_path, libver, "plain/libuser.so", "-Wl,-soname,libuser.so")
    top_rpath = cc(
        tmp_path / "top" / "librp.so",
        "int call(void);\nint go(void) { return call(); }\n",
        str(user),
        f"-Wl,--disable-new-dtags,-rpath,{user.parent}:{libver.parent}",
    )
    top_runpath = cc(
        tmp_path / "top" / "librun.so",
        "int call(void);\nint go(void) { return call(); }\n",
        str(user),
        f"-Wl,--enable-new-dtags,-rpath,{user.parent}:{libver.parent}",
    )
    inherited = LoaderModel(System(default_dirs=()))
    inherited.load(top_rpath)
    assert not inherited.missing  # libuser.so found by top's RPATH, libver.so.1 too: RPATH applies down the chain
    scoped = LoaderModel(System(default_dirs=()))
    scoped.load(top_runpath)
    assert [m.needed for m in scoped.missing] == ["libver.so.1"]  # RUNPATH is only for top's own DT_NEEDED


def test_a_library_of_another_elf_class_is_skipped(tmp_path: Path, libver: Path) -> None:
    user = _user(tmp_path, libver, "plain/user.so")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "libver.so.1").write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 60)  # a 32-bit ELF header
    model = LoaderModel(System(ld_library_path=(str(decoy), str(libver.parent)), default_dirs=()))
    tree = model.load(user)
    assert tree[1].path == libver.resolve()


def test_versioned_references_need_their_version(tmp_path: Path, libver: Path) -> None:
    user = _user(tmp_path, libver, "plain/user.so")
    old = cc(tmp_path / "old" / "libver.so.1", OLD, "-Wl,-soname,libver.so.1", script=SCRIPT_V1)
    for lib, resolved in ((libver, True), (old, False)):
        model = LoaderModel(System(ld_library_path=(str(lib.parent),), default_dirs=()))
        tree = model.load(user)
        refs = [s for s in elf.read_facts(user).undefined if s.name == "foo"]
        [result] = resolve(model, tree, refs)
        assert (result.provider is not None) == resolved
        assert ("VER_2" in model.versions(tree[1])) == resolved


# ---------------------------------------------------------------------------------------------------------------------
# Linking modules as Python would: global scope, then the module's own tree

EXE = "int PyFake_Api(void) { return 0; }\n"
GLOBAL_DEP = "int from_global(void) { return 1; }\n"
TORCH_LOCAL = "int torch_private(void) { return 2; }\n"


def _module(folder: Path, name: str, body: str, *flags: str) -> Path:
    source = body + f"\nvoid* PyInit_{name}(void) {{ return 0; }}\n"
    return cc(folder / f"{name}.cpython-311-x86_64-linux-gnu.so", source, *flags)


def test_link_resolves_against_global_scope_and_own_tree_only(tmp_path: Path, libver: Path) -> None:
    exe = cc(tmp_path / "bin" / "python.so", EXE)
    global_deps = cc(tmp_path / "torch" / "libglobal.so", GLOBAL_DEP, "-Wl,-soname,libglobal.so")
    torch_c = cc(tmp_path / "torch" / "_C.so", TORCH_LOCAL, "-Wl,-soname,libtorchlocal.so")
    site = tmp_path / "site"
    good = _module(
        site / "pkg",
        "good",
        "int PyFake_Api(void); int from_global(void); int foo(void);\n"
        "int f(void) { return PyFake_Api() + from_global() + foo(); }\n",
        str(libver),
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../../new",
    )
    bad = _module(
        site / "pkg",
        "bad",
        "int torch_private(void); int nowhere(void);\nint f(void) { return torch_private() + nowhere(); }\n",
    )
    helper = cc(site / "pkg" / "libhelper.so", "int h(void) { return 0; }\n")
    installed = {f"pkg/{p.name}": p for p in (good, bad, helper)}
    files = analysis.wheel_files(installed)
    assert {f.member: f.module for f in files} == {
        "pkg/bad.cpython-311-x86_64-linux-gnu.so": "pkg.bad",
        "pkg/good.cpython-311-x86_64-linux-gnu.so": "pkg.good",
        "pkg/libhelper.so": None,  # a library, not a module: no PyInit_libhelper
    }
    runtime = analysis.Runtime(exe, torch_c, global_deps, System(default_dirs=()))
    linkages = {link.file.module: link for link in analysis.link(files, runtime)}
    assert linkages["pkg.good"].unresolved == []
    assert linkages["pkg.good"].checked >= 3
    # torch's own tree is loaded RTLD_LOCAL: a module cannot use its symbols without linking the library.
    assert sorted(s.name for s in linkages["pkg.bad"].unresolved) == ["nowhere", "torch_private"]


def test_link_reports_a_version_the_found_library_lacks(tmp_path: Path, libver: Path) -> None:
    exe = cc(tmp_path / "bin" / "python.so", EXE)
    module = _module(tmp_path / "site" / "pkg", "mod", "int foo(void);\nint f(void) { return foo(); }\n", str(libver))
    old = cc(tmp_path / "old" / "libver.so.1", OLD, "-Wl,-soname,libver.so.1", script=SCRIPT_V1)
    files = analysis.wheel_files({f"pkg/{module.name}": module})
    runtime = analysis.Runtime(exe, None, None, System(ld_library_path=(str(old.parent),), default_dirs=()))
    [link] = analysis.link(files, runtime)
    assert [(n.version, p) for n, p in link.missing_versions] == [("VER_2", old.resolve())]
    assert [s.name for s in link.unresolved] == ["foo"]


def test_missing_driver_library_is_not_a_failure(tmp_path: Path) -> None:
    fake_driver = cc(tmp_path / "drv" / "libcuda.so.1", "int cuInit(int f) { return f; }\n", "-Wl,-soname,libcuda.so.1")
    exe = cc(tmp_path / "bin" / "python.so", EXE)
    module = _module(
        tmp_path / "site" / "pkg", "mod", "int cuInit(int);\nint f(void) { return cuInit(0); }\n", str(fake_driver)
    )
    files = analysis.wheel_files({f"pkg/{module.name}": module})
    [link] = analysis.link(files, analysis.Runtime(exe, None, None, System(default_dirs=())))
    assert [m.needed for m in link.missing] == ["libcuda.so.1"]
    assert link.missing[0].driver
    assert link.unresolved == []
    assert [s.name for s in link.driver_symbols] == ["cuInit"]


# ---------------------------------------------------------------------------------------------------------------------
# Every shared object of a wheel: modules, torch operator libraries (no PyInit_*) and the libraries they load


@pytest.fixture
def fake_torch(tmp_path: Path) -> tuple[analysis.Runtime, Path]:
    """An interpreter, and a torch whose _C loads libtorch_cpu.so and libc10.so (found by soname afterwards)."""
    lib = tmp_path / "torch" / "lib"
    c10 = cc(lib / "libc10.so", "int c10_thing(void) { return 1; }\n", "-Wl,-soname,libc10.so")
    cpu = cc(lib / "libtorch_cpu.so", "int torch_register(void) { return 2; }\n", "-Wl,-soname,libtorch_cpu.so")
    torch_c = cc(
        tmp_path / "torch" / "_C.so",
        "int torch_c(void) { return 0; }\n",
        "-Wl,--no-as-needed,-rpath,$ORIGIN/lib",
        str(c10),
        str(cpu),
    )
    exe = cc(tmp_path / "bin" / "python.so", EXE)
    return analysis.Runtime(exe, torch_c, None, System(default_dirs=())), lib


def test_wheel_files_tell_modules_operator_libraries_and_libraries_apart(
    tmp_path: Path, fake_torch: tuple[analysis.Runtime, Path]
) -> None:
    _, torch_lib = fake_torch
    pkg = tmp_path / "site" / "pkg"
    libs = tmp_path / "site" / "pkg.libs"
    ops = cc(pkg / "_C.so", "int torch_register(void);\nint f(void) { return torch_register(); }\n",
             str(torch_lib / "libtorch_cpu.so"))  # fmt: skip
    core = cc(libs / "libcore-1a2b.so", "int c10_thing(void);\nint core(void) { return c10_thing(); }\n",
              str(torch_lib / "libc10.so"), "-Wl,-soname,libcore-1a2b.so")  # fmt: skip
    indirect = cc(pkg / "_ops.so", "int core(void);\nint g(void) { return core(); }\n", str(core),
                  "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../pkg.libs")  # fmt: skip
    module = _module(pkg, "mod", "int core(void);\nint m(void) { return core(); }\n", str(core))
    plain = cc(pkg / "libplain.so", "int plain(void) { return 0; }\n")
    installed = {
        "pkg/_C.so": ops,
        "pkg.libs/libcore-1a2b.so": core,
        "pkg/_ops.so": indirect,
        f"pkg/{module.name}": module,
        "pkg/libplain.so": plain,
    }
    files = {f.member: f for f in analysis.wheel_files(installed)}
    assert {m: f.kind for m, f in files.items()} == {
        "pkg/_C.so": "torch-library",  # links torch, no PyInit_*: torch.ops.load_library
        "pkg/_ops.so": "torch-library",  # reaches torch through a library of the wheel
        "pkg.libs/libcore-1a2b.so": "library",  # links torch, but only as the others' dependency
        f"pkg/{module.name}": "module",
        "pkg/libplain.so": "library",
    }
    assert files["pkg.libs/libcore-1a2b.so"].needed_by == ("pkg/_ops.so", f"pkg/{module.name}")
    assert not files["pkg/libplain.so"].links_torch and files["pkg/libplain.so"].root
    assert analysis.describe_kinds(files.values()) == (
        "5 shared objects (1 extension module, 2 torch operator libraries, 2 libraries)"
    )


def test_link_checks_operator_libraries_and_libraries_in_their_loaders_scope(
    tmp_path: Path, fake_torch: tuple[analysis.Runtime, Path]
) -> None:
    runtime, torch_lib = fake_torch
    pkg = tmp_path / "site" / "pkg"
    good = cc(pkg / "_C.so", "int torch_register(void);\nint f(void) { return torch_register(); }\n",
              str(torch_lib / "libtorch_cpu.so"))  # fmt: skip
    bad = cc(pkg / "_bad.so", "int torch_register_v2(void);\nint f(void) { return torch_register_v2(); }\n",
             str(torch_lib / "libtorch_cpu.so"))  # fmt: skip
    # A library that calls back into the module loading it: glibc resolves it in that module's scope.
    helper = cc(pkg / "libhelper.so", "int from_module(void); int nowhere(void);\n"
                "int h(void) { return from_module() + nowhere(); }\n", "-Wl,-soname,libhelper.so")  # fmt: skip
    module = _module(pkg, "mod", "int h(void);\nint from_module(void) { return 1; }\nint m(void) { return h(); }\n",
                     str(helper), "-Wl,--enable-new-dtags,-rpath,$ORIGIN")  # fmt: skip
    installed = {"pkg/_C.so": good, "pkg/_bad.so": bad, "pkg/libhelper.so": helper, f"pkg/{module.name}": module}
    linkages = {link.file.member: link for link in analysis.link(analysis.wheel_files(installed), runtime)}
    assert set(linkages) == set(installed)  # every shared object, not only the module
    assert linkages["pkg/_C.so"].unresolved == [] and linkages["pkg/_C.so"].checked >= 1
    assert [s.name for s in linkages["pkg/_bad.so"].unresolved] == ["torch_register_v2"]
    assert linkages["pkg/libhelper.so"].via == f"pkg/{module.name}"
    assert [s.name for s in linkages["pkg/libhelper.so"].unresolved] == ["nowhere"]  # from_module resolved


def test_load_plan_loads_each_kind_as_its_package_does(
    tmp_path: Path, fake_torch: tuple[analysis.Runtime, Path]
) -> None:
    _, torch_lib = fake_torch
    pkg = tmp_path / "site" / "pkg"
    ops = cc(pkg / "_C.so", "int torch_register(void);\nint f(void) { return torch_register(); }\n",
             str(torch_lib / "libtorch_cpu.so"))  # fmt: skip
    module = _module(pkg, "mod", "int m(void) { return 0; }\n")
    helper = cc(pkg / "libplain.so", "int plain(void) { return 0; }\n")
    files = analysis.wheel_files({"pkg/_C.so": ops, f"pkg/{module.name}": module, "pkg/libplain.so": helper})
    assert analysis.load_plan(files, ()) == [
        analysis.Load("torch-library", "pkg/_C.so", str(ops)),
        analysis.Load("module", "pkg.mod"),
    ]
    # A recipe naming the operator library as a module gets it loaded as what it is; its own modules come first.
    assert analysis.load_plan(files, ("pkg.mod", "pkg._C", "other.ext")) == [
        analysis.Load("module", "pkg.mod"),
        analysis.Load("torch-library", "pkg/_C.so", str(ops)),
        analysis.Load("module", "other.ext"),
    ]
    assert [item.statement for item in analysis.load_plan(files, ())] == [
        "torch.ops.load_library('pkg/_C.so')",
        "import pkg.mod",
    ]
