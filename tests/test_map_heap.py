"""The compiled searches' binary heap pops its entries in time order, stale ones included."""

from __future__ import annotations

import numpy as np

from map_data.heap import heap_pop, heap_push


def test_heap_pops_in_time_order_with_duplicates_and_ties() -> None:
    rng = np.random.default_rng(0)
    times = np.round(rng.uniform(0.0, 50.0, 300), 1)  # rounded: many ties
    nodes = rng.integers(0, 40, 300)  # a node pushed several times: stale entries
    heap_t = np.empty(300, dtype=np.float64)
    heap_v = np.empty(300, dtype=np.int64)
    size = 0
    for t, v in zip(times.tolist(), nodes.tolist(), strict=True):
        size = heap_push(heap_t, heap_v, size, t, v)
    assert size == 300
    popped: list[tuple[float, int]] = []
    while size > 0:
        t, v, size = heap_pop(heap_t, heap_v, size)
        popped.append((t, v))
    assert [t for t, _ in popped] == sorted(times.tolist())
    assert sorted(popped) == sorted(zip(times.tolist(), nodes.tolist(), strict=True))
