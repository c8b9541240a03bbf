"""Compiled kernels: :func:`jit` compiles a function of numbers and numpy arrays to machine code
(numba, ``nopython`` mode, cached on disk beside the module, the interpreter lock released).

The core's hot loops (the predictor's walk, the planner's and tracker's inner loops) run per route
and per crossing: a Python loop costs microseconds per step, a numpy operation a few microseconds of
overhead each. Compiled, the same loop costs nanoseconds, with the same arithmetic in the same
order, so a kernel's results are those of the loop it replaces.

A kernel is written as plain Python over scalars and arrays (the subset numba compiles); it stays
importable and callable without compilation (``CORDON_NO_JIT=1``: tests can compare the two).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar, cast

F = TypeVar("F", bound=Callable[..., object])

#: Set to "1" to run kernels as plain Python (slow; for debugging and for comparing results).
NO_JIT_ENV = "CORDON_NO_JIT"


def jit(fn: F) -> F:
    """Compile ``fn`` with numba (``nopython``, ``cache=True``, ``nogil=True``), keeping its type
    for the checker. With ``CORDON_NO_JIT=1`` in the environment, return ``fn`` unchanged."""
    if os.environ.get(NO_JIT_ENV) == "1":
        return fn
    import numba

    return cast(F, numba.njit(cache=True, nogil=True)(fn))
