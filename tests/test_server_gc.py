"""The server's guard against garbage-collector pauses: the startup heap is frozen out of the
cyclic collector's reach, and every collection is timed into ``cordon_gc_pause_seconds``."""

from __future__ import annotations

import gc

from serving.metrics import Metrics, freeze_startup_heap


def _count(metrics: Metrics, generation: str) -> float:
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "cordon_gc_pause_seconds_count" and sample.labels["generation"] == generation:
                return float(sample.value)
    return 0.0


def test_collections_are_timed_until_watching_stops() -> None:
    metrics = Metrics()
    stop = metrics.watch_gc()
    try:
        gc.collect()
        gc.collect()
        assert _count(metrics, "2") == 2
    finally:
        stop()
    gc.collect()
    assert _count(metrics, "2") == 2, "no observation after stop()"
    stop()  # twice is harmless


def test_the_startup_heap_is_frozen_and_a_full_collection_then_scans_little() -> None:
    kept = [[i] for i in range(200_000)]  # long-lived, GC-tracked objects (a stand-in for the city)
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(kept)
        # the frozen objects are out of the generations a collection scans
        assert len(gc.get_objects()) < len(kept) // 10
    finally:
        gc.unfreeze()
    del kept
