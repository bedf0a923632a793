"""C++ demangling through libstdc++'s own ``abi::__cxa_demangle`` (what the ``cxxfilt`` package and c++filt use).

Why not c++filt: binutils is often absent from runtime images and GPU hosts, and this module runs no programs. Why not
the ``cxxfilt`` package: it finds libstdc++ with ``ctypes.util.find_library``, which needs ldconfig, gcc or ld at run
time. libstdc++.so.6 itself is always present where torch runs (torch links it), so it is loaded by its soname, with
no other dependency. If it cannot be loaded (a musl system), names stay mangled: demangling only decorates messages.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterable


@functools.cache
def _cxa_demangle() -> Callable[[str], str | None] | None:
    try:
        libstdcxx = ctypes.CDLL("libstdc++.so.6")
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    func = libstdcxx.__cxa_demangle
    func.restype = ctypes.c_void_p
    func.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    free = libc.free
    free.argtypes = [ctypes.c_void_p]
    free.restype = None

    def cxa_demangle(name: str) -> str | None:
        status = ctypes.c_int(0)
        out = func(name.encode(), None, None, ctypes.byref(status))
        if not out:
            return None
        try:
            text = ctypes.string_at(out)
        finally:
            free(out)
        return text.decode("utf-8", "replace") if status.value == 0 else None

    return cxa_demangle


def demangle(name: str) -> str:
    """``_ZN3c105ErrorC2ENS_14SourceLocationESs`` -> ``c10::Error::Error(c10::SourceLocation, std::string)``."""
    return demangle_all([name])[name]


def demangle_all(names: Iterable[str]) -> dict[str, str]:
    """Mangled -> demangled for C++ names (``_Z...``); other names, and names that do not demangle, stay as they are."""
    result = {n: n for n in names}
    func = _cxa_demangle()
    if func is not None:
        for name in result:
            if name.startswith("_Z"):
                result[name] = func(name) or name
    return result
