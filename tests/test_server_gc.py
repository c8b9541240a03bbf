"""The server's guard against garbage-collector pauses: the startup heap is frozen out of the
cyclic collector's reach, and every collection is timed into ``cordon_gc_pause_seconds``."""

from __future__ import annotations

import gc

from serving.metrics import GC_THRESHOLDS, Metrics, freeze_startup_heap


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
    before = gc.get_threshold()
    try:
        assert freeze_startup_heap() == before
        assert gc.get_freeze_count() >= len(kept)
        # the frozen objects are out of the generations a collection scans
        assert len(gc.get_objects()) < len(kept) // 10
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    del kept


def test_after_startup_the_collector_runs_less_often() -> None:
    before = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.get_threshold() == GC_THRESHOLDS
        # young collections rarer than Python's default (700), middle ones still short (they
        # scan at most about threshold0 * threshold1 objects), full ones at least 10 times rarer
        assert GC_THRESHOLDS[0] > 700 and GC_THRESHOLDS[0] * GC_THRESHOLDS[1] <= 50_000
        assert GC_THRESHOLDS[0] * GC_THRESHOLDS[1] * GC_THRESHOLDS[2] >= 10 * 700 * 10 * 10
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_stopped_app_restores_the_collectors_thresholds() -> None:
    from test_server_support import running_server

    before = gc.get_threshold()
    async with running_server():
        assert gc.get_threshold() == GC_THRESHOLDS
    assert gc.get_threshold() == before


async def test_the_memory_state_keeps_what_piles_up_out_of_the_collectors_reach() -> None:
    """Ended suggestions and the crews' resume logs pile up by the hundred thousand under load:
    the in-memory state keeps them as text, so they add nothing a full collection traverses;
    they read back as they were."""
    from serving.state import MemoryState

    state = MemoryState()
    route = tuple((6.17 + i * 1e-4, 49.11) for i in range(50))

    def body(n: int, name: str) -> dict[str, object]:
        return {
            "suggestion_id": f"INC-1:{n}:C{n % 30}",
            "incident_id": "INC-1",
            "crew_id": f"C{n % 30}",
            "route_lonlat": route,
            "turns": ("Prendre Rue Serpenoise",),
            "reason": "couvre le carrefour",
            "state": name,
            "_communes": ["Metz"],
        }

    gc.collect()
    before = len(gc.get_objects())
    for n in range(2000):
        await state.put_suggestion(body(n, "sent"))
        await state.put_suggestion(body(n, "superseded"))
        await state.crew_append(f"C{n % 30}", {"type": "suggestion", "suggestion": body(n, "sent")})
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert grown < 200, f"{grown} more objects for the collector to traverse"
    ended = await state.get_suggestion("INC-1:7:C7")
    assert ended is not None and ended["state"] == "superseded" and ended["route_lonlat"] == []
    assert ended["_communes"] == ["Metz"] and ended["reason"] == "couvre le carrefour"
    since = await state.crew_since("C7", 64)
    assert since is not None
    current, missing = since
    assert current == 2000 // 30 + 1 and [m["seq"] for m in missing] == list(range(65, current + 1))
    assert missing[-1]["suggestion"]["route_lonlat"] == [list(p) for p in route]
