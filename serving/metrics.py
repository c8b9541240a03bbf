"""Prometheus metrics of one server process (its own registry, so several apps can live in one test)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sightings = Counter(
            "cordon_sightings_total", "Sightings received, by outcome", ["outcome"], registry=r
        )
        self.sightings_rejected = Counter(
            "cordon_sightings_rejected_total", "Sightings refused, by error code", ["code"], registry=r
        )
        self.incidents_opened = Counter("cordon_incidents_opened_total", "Incidents opened", registry=r)
        self.ws_messages_in = Counter(
            "cordon_ws_messages_in_total",
            "Websocket messages received, by channel and type",
            ["channel", "type"],
            registry=r,
        )
        self.ws_errors = Counter(
            "cordon_ws_errors_total", "Websocket errors sent, by code", ["code"], registry=r
        )
        self.connections = Gauge(
            "cordon_ws_connections", "Open websocket connections", ["channel"], registry=r
        )
        self.cut = Counter("cordon_ws_cut_total", "Connections cut for falling behind", registry=r)
        self.coalesced = Counter(
            "cordon_sightings_coalesced_total",
            "Sightings applied in a batch whose intermediate plans were not published",
            registry=r,
        )
        self.audit_failures = Counter("cordon_audit_failures_total", "Audit appends that failed", registry=r)
        self.sighting_to_crew = Histogram(
            "cordon_sighting_to_crew_seconds",
            "From a sighting's arrival to its suggestion reaching this worker's hub",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.crew_messages = Counter(
            "cordon_crew_messages_total", "Messages appended to crew streams (by this worker)", registry=r
        )
        self.sightings_processed = Counter(
            "cordon_sightings_processed_total", "Sightings applied to the core (by this worker)", registry=r
        )
        self.core_seconds = Histogram(
            "cordon_core_call_seconds",
            "Time of one Coordinator call on the core thread",
            ["call"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.core_cpu_seconds = Histogram(
            "cordon_core_cpu_seconds",
            "CPU time of one Coordinator call in the core process (the call's wall time, "
            "cordon_core_call_seconds, adds the pipe and the wait for a CPU)",
            ["call"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.core_child_seconds = Histogram(
            "cordon_core_process_seconds",
            "Wall time of one Coordinator call inside the core process (without the pipe)",
            ["call"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.core_wait_seconds = Histogram(
            "cordon_core_wait_seconds",
            "Time a Coordinator call waited for the core thread (behind other calls)",
            ["call"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.sighting_stage = Histogram(
            "cordon_sighting_stage_seconds",
            "Where a sighting's time goes, from its arrival to its plan's first crew message: "
            "queued (waiting for its incident's batch), prepare (incident lock, state, crews), "
            "core (the ingest call, waiting for the core thread included), publish (to the "
            "first crew message handed to the hub)",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.ws_frames_sent = Gauge(
            "cordon_ws_frames_sent", "Websocket frames sent since start (set at each scrape)", registry=r
        )
        self.ws_messages_sent = Gauge(
            "cordon_ws_messages_sent",
            "Websocket messages sent since start (a batched frame holds several)",
            registry=r,
        )
        self.ws_bytes_sent = Gauge(
            "cordon_ws_bytes_sent", "Websocket payload bytes sent since start", registry=r
        )
        self.http_errors = Counter(
            "cordon_http_errors_total", "HTTP error answers, by code", ["code"], registry=r
        )

        self.gc_pause = Histogram(
            "cordon_gc_pause_seconds",
            "Pauses of this process's cyclic garbage collector, by generation (the event loop "
            "stands still meanwhile)",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch_gc(self) -> Callable[[], None]:
        """Time every collection of the cyclic garbage collector into ``gc_pause``; returns the
        function that stops watching."""
        started = [0.0]

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pause_s = time.perf_counter() - started[0]
                self.gc_pause.labels(str(info.get("generation", "?"))).observe(pause_s)

        gc.callbacks.append(callback)
        return lambda: gc.callbacks.remove(callback) if callback in gc.callbacks else None


def freeze_startup_heap() -> tuple[int, int, int]:
    """Collect once, then move every object alive now (modules, the city, the app) out of the
    cyclic collector's reach (:func:`gc.freeze`): they live as long as the process, and a full
    collection that scans them stood the event loop still for 150-200 ms every ~10 s under
    load (measured with ``cordon_gc_pause_seconds``). Frozen objects are still freed by
    reference counting; only cycles among them would wait for :func:`gc.unfreeze`.

    Then the collector runs less often (:data:`GC_THRESHOLDS`): the objects made after startup
    (the incidents' state, queued messages) still made full collections stand the event loop
    still for over 50 ms (14 times in the 2-minute load benchmark). Returns the thresholds
    before (to restore when the app stops in a longer-lived process)."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return before


#: The collector's thresholds after startup (Python's defaults: 700, 10, 10): a young
#: collection every 5,000 net allocations instead of 700, a middle one every 5 young ones (it
#: scans at most about 25,000 objects: short), and a full one (the long pause, proportional to
#: the heap made since startup) after 40 middle ones: about 14 times rarer than by default.
#: (Python also waits for the objects not yet fully collected to reach a quarter of those that
#: were.) On a synthetic server-like heap (a growing state, messages serialized, some cycles):
#: collections' CPU 1.9 s -> 0.46 s, pauses over 50 ms 8 -> 0.
GC_THRESHOLDS = (5_000, 5, 40)
