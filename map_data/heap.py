"""A binary min-heap of (time, node) in two preallocated arrays, for the compiled Dijkstra searches.

The predictor's physical bound (:mod:`guidance.prediction`) and the simulator's resumable crew
navigation (:mod:`sim.navigation`) search the graph in compiled kernels (``map_data.jit``); they
share this heap. Entries are never decreased: a node pushed again with a smaller time leaves a
stale entry, which the search skips when it pops it. The caller owns the arrays and their size
(room for one entry per arc pushed, plus the sources).
"""

from __future__ import annotations

from map_data.jit import jit
from map_data.types import FloatArray, IntArray


@jit
def heap_push(heap_t: FloatArray, heap_v: IntArray, size: int, t: float, v: int) -> int:
    """Add ``(t, v)`` to the heap of ``size`` entries (sift up from the end); the new size."""
    i = size
    while i > 0:
        p = (i - 1) // 2
        if heap_t[p] > t:
            heap_t[i] = heap_t[p]
            heap_v[i] = heap_v[p]
            i = p
        else:
            break
    heap_t[i] = t
    heap_v[i] = v
    return size + 1


@jit
def heap_pop(heap_t: FloatArray, heap_v: IntArray, size: int) -> tuple[float, int, int]:
    """Take the earliest entry of a non-empty heap of ``size`` entries (the last entry moved to
    the root and sifted down): ``(t, v, new size)``."""
    t = heap_t[0]
    v = heap_v[0]
    size -= 1
    last_t = heap_t[size]
    last_v = heap_v[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap_t[c + 1] < heap_t[c]:
            c += 1
        if heap_t[c] < last_t:
            heap_t[i] = heap_t[c]
            heap_v[i] = heap_v[c]
            i = c
        else:
            break
    heap_t[i] = last_t
    heap_v[i] = last_v
    return t, v, size
