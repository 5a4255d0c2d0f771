"""The C allocator's arenas, kept few for a run's threads, and their free pages handed back before large steps
(glibc).

glibc gives each thread that allocates at once its own heap arena (up to 8 per core). A run allocates large,
short-lived buffers from several threads (the readers decoding tiles, the writer compressing labels, torch),
and memory freed in one arena is not reused by another, so peak RSS grows with the image even though what the
run holds does not: on a 65,536² scene, 1,027 MB with the default arenas against 933 MB with two
(``benchmarks/engine.py``), at the same speed. ``few_arenas`` asks glibc for two, once per process, unless the
person set ``MALLOC_ARENA_MAX`` themselves; elsewhere (macOS, Windows, musl) it does nothing, as does
``release_free``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter
_done = False


def few_arenas() -> bool:
    """Limit glibc's malloc arenas to ``ARENAS`` for this process; True if this call set it."""
    global _done
    if _done or "MALLOC_ARENA_MAX" in os.environ:
        return False
    _done = True
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])  # int mallopt(int param, int value)
    return bool(mallopt and mallopt(_M_ARENA_MAX, ARENAS))


def release_free() -> bool:
    """Hand the free pages of glibc's heaps back to the system (``malloc_trim``); True if it did.

    Called before a step whose working set is large (a component of millions of vertices): memory that earlier
    small objects left free in scattered pages still counts in RSS, and the step's own arrays would add to it
    rather than fill it. It takes 15–50 ms on a heap of 500 MB. Elsewhere than glibc it does nothing."""
    global _trim
    if _trim is None:
        _trim = _glibc("malloc_trim", [ctypes.c_size_t]) or False  # int malloc_trim(size_t pad)
    return bool(_trim and _trim(0))


_trim = None


def _glibc(name: str, argtypes: list):
    """glibc's function ``name`` (returning int), or None on other platforms and C libraries."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function
