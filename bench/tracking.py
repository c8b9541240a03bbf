"""Benchmark of the tracker against simulated suspects on real maps.

Ground truth
    Each simulated suspect starts at a random crossing and drives to a random destination along
    the fastest path (scipy Dijkstra on free-flow times), then to another, until the drive lasts
    ``DRIVE_S`` seconds. On each edge it drives at the legal speed × the suspect's factor
    (uniform 1.1–1.6) × per-edge noise (log-normal, σ = 0.15), clipped to 4–40 m/s. This driver
    knows nothing of the tracker's branch model, so the tracker is not graded against itself.
Sightings
    Synthetic dome cameras at Metz density (``place_synthetic_cameras(graph, metz_density(graph))``
    + ``build_camera_network``). Each pass of the suspect by a camera (consecutive seen stretches of
    the same camera) is reported with the network's detection probability, at the mean time of
    the seen stretches; half of the reports carry the exit direction (bearing of the last seen
    stretch ± 15° noise). Sightings are given to the tracker in time order.
Evaluation
    After each sighting ``k`` and for Δ in 0, 30, 60, 120 s, *if the next sighting comes later*
    than ``t_k + Δ`` (a real silence, so the tracker's negative information is honest), the
    estimate is compared with the true position. Error = network distance along the roads
    (undirected shortest path by length between two points on edges). The tracker's estimate is
    the weighted medoid of its belief (the position minimising the probability-weighted distance
    to the others, :func:`medoid_position`); the error of its most probable position (MAP) is
    reported too (``map_median_error_m``). ``true_edge_probability`` is the mean probability the
    belief gives the true edge (or its reverse) over all evaluation points.
Baselines (same run, same evaluation points)
    * ``last_seen``: the middle of the first stretch the last reporting camera sees.
    * ``dead_reckoning``: the suspect keeps going along the most likely path at a constant speed.
      Start: the stretch of the last camera that the fastest path from the previous reporting
      camera reaches first (with one sighting only: the stretch best aligned with the reported
      heading, else the first stretch). Speed: road distance between the last two reporting
      cameras / elapsed time, clipped to 3–40 m/s (12 m/s with one sighting). Path: at each
      crossing the way out with the smallest turning angle, U-turns excluded, higher road class
      on near-ties (within 10°); it stops at a dead end. Position: start + speed × Δ along it.
Latency
    Wall time of each ``Tracker.update`` (p50, p99).

``python bench/tracking.py [--quick] [--maps harrisburg monaco]`` prints a table and writes
``bench/results/tracking.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse.csgraph import dijkstra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from map_data.cameras import build_camera_network, metz_density, place_synthetic_cameras  # noqa: E402
from map_data.compile import compile_graph  # noqa: E402
from map_data.graph import graph_from_xml  # noqa: E402
from map_data.network_types import City  # noqa: E402
from map_data.types import CompiledGraph, EdgePosition  # noqa: E402
from tracking.behaviour import edge_end_direction, edge_start_direction  # noqa: E402
from tracking.roads import RoadIndex  # noqa: E402
from tracking.tracker import Tracker, TrackerConfig  # noqa: E402
from tracking.types import Belief, Sighting, SourceKind  # noqa: E402

HORIZONS_S = (0, 30, 60, 120)
T0 = datetime(2026, 3, 14, 22, 0, 0, tzinfo=UTC)
MAPS_DIR = ROOT.parent / "shared" / "maps"


# ----------------------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Drive:
    """A suspect's drive: edge ``edges[i]`` entered at ``t_in[i]`` and left at ``t_out[i]``."""

    edges: list[int]
    t_in: list[float]
    t_out: list[float]

    def at(self, t: float, lengths: np.ndarray) -> EdgePosition | None:
        if t < self.t_in[0] or t > self.t_out[-1]:
            return None
        i = int(np.searchsorted(self.t_out, t))
        i = min(i, len(self.edges) - 1)
        frac = (t - self.t_in[i]) / max(self.t_out[i] - self.t_in[i], 1e-9)
        e = self.edges[i]
        return EdgePosition(e, float(min(max(frac, 0.0), 1.0) * lengths[e]))


def simulate_drive(graph: CompiledGraph, rng: np.random.Generator, drive_s: float) -> Drive:
    n = graph.n_nodes
    node = int(rng.integers(n))
    factor = float(rng.uniform(1.1, 1.6))
    edges: list[int] = []
    t_in: list[float] = []
    t_out: list[float] = []
    t = 0.0
    for _ in range(50):
        if t >= drive_s:
            break
        _, pred = dijkstra(graph.time_csr, directed=True, indices=node, return_predecessors=True)
        reachable = np.flatnonzero(pred >= 0)
        if len(reachable) == 0:
            break
        dest = int(reachable[rng.integers(len(reachable))])
        path = [dest]
        while path[-1] != node:
            path.append(int(pred[path[-1]]))
        path.reverse()
        for a, b in itertools.pairwise(path):
            e = graph.edge_between(a, b)
            speed = float(graph.edge_speed_mps[e]) * factor * float(rng.lognormal(0.0, 0.15))
            speed = min(max(speed, 4.0), 40.0)
            dt = float(graph.edge_length_m[e]) / speed
            edges.append(e)
            t_in.append(t)
            t_out.append(t + dt)
            t += dt
        node = dest
    return Drive(edges, t_in, t_out)


def simulate_sightings(
    city: City, roads: RoadIndex, drive: Drive, rng: np.random.Generator, incident: str
) -> list[Sighting]:
    passes: list[tuple[str, list[float], float]] = []  # camera, times, bearing of last stretch
    for e, a, b in zip(drive.edges, drive.t_in, drive.t_out, strict=True):
        length = roads.edge_len[e]
        for cid, mid, _s, _e in sorted(roads.edge_spans.get(e, ()), key=lambda x: x[1]):
            t = a + (mid / max(length, 1e-9)) * (b - a)
            bearing = roads.bearing_deg(e, mid)
            if passes and passes[-1][0] == cid and t - passes[-1][1][-1] < 15.0:
                passes[-1][1].append(t)
                passes[-1] = (cid, passes[-1][1], bearing)
            else:
                passes.append((cid, [t], bearing))
    p_d = city.cameras.detection_probability
    out: list[Sighting] = []
    for k, (cid, times, bearing) in enumerate(passes):
        if rng.random() >= p_d:
            continue
        heading = None
        if rng.random() < 0.5:
            heading = float((bearing + rng.normal(0.0, 15.0)) % 360.0)
        out.append(
            Sighting(
                incident_id=incident,
                camera_id=cid,
                observed_at=T0 + timedelta(seconds=float(np.mean(times))),
                source_kind=SourceKind.simulation,
                source_event_id=f"{incident}-{k}",
                heading_deg=heading,
            )
        )
    return out


# ----------------------------------------------------------------------------- distances


def _ends(roads: RoadIndex, pos: EdgePosition) -> list[tuple[int, float]]:
    e = pos.edge
    return [(roads.edge_u[e], pos.offset_m), (roads.edge_v[e], roads.edge_len[e] - pos.offset_m)]


def distances_from(roads: RoadIndex, truth: EdgePosition, estimates: list[EdgePosition]) -> list[float]:
    """Undirected network distance (m) from ``truth`` to each estimate."""
    ends = _ends(roads, truth)
    d = dijkstra(roads.undirected_csr, directed=True, indices=[n for n, _ in ends], limit=20_000.0)
    g = roads.graph
    out = []
    for est in estimates:
        best = math.inf
        same = est.edge == truth.edge
        rev = g.reverse_edge(truth.edge)
        if same:
            best = abs(est.offset_m - truth.offset_m)
        elif rev is not None and est.edge == rev:
            best = abs(roads.edge_len[rev] - est.offset_m - truth.offset_m)
        for row, (_node, d0) in enumerate(ends):
            for node_b, d1 in _ends(roads, est):
                best = min(best, d0 + float(d[row, node_b]) + d1)
        out.append(best)
    return out


# ----------------------------------------------------------------------------- baselines


def last_seen_position(city: City, camera_id: str) -> EdgePosition:
    span = city.cameras.view(camera_id).spans[0]
    return EdgePosition(span.edge, 0.5 * (span.start_m + span.end_m))


def _straightest(roads: RoadIndex, edge: int) -> int | None:
    g = roads.graph
    din = edge_end_direction(g, edge)
    rev = g.reverse_edge(edge)
    best: tuple[float, int, int] | None = None
    for e in roads.out_list[roads.edge_v[edge]]:
        if e == rev:
            continue
        dout = edge_start_direction(g, e)
        angle = math.degrees(math.acos(max(-1.0, min(1.0, din[0] * dout[0] + din[1] * dout[1]))))
        if angle > 150.0:
            continue
        key = (round(angle / 10.0), int(g.edge_rank[e]), e)
        if best is None or key < best:
            best = (key[0], key[1], key[2])
    return None if best is None else best[2]


def dead_reckoning_position(
    city: City,
    roads: RoadIndex,
    history: list[Sighting],
    tracker: Tracker,
    horizon_s: float,
) -> EdgePosition:
    last = history[-1]
    spans = city.cameras.view(last.camera_id).spans
    speed = 12.0
    start = spans[0]
    if len(history) >= 2:
        prev = history[-2]
        dt = (last.observed_at - prev.observed_at).total_seconds()
        dist = tracker.road_distance_m(prev.camera_id, last.camera_id)
        if dt > 0 and math.isfinite(dist):
            speed = min(max(dist / dt, 3.0), 40.0)
        heads = sorted({roads.edge_v[s.edge] for s in city.cameras.view(prev.camera_id).spans})
        d = roads.directed_lengths_from(heads).min(axis=0)
        start = min(
            spans, key=lambda s: (float(d[roads.edge_u[s.edge]]) + 0.5 * (s.start_m + s.end_m), s.edge)
        )
    elif last.heading_deg is not None:
        h = last.heading_deg

        def misalign(s: object) -> float:
            sp = s  # EdgeSpan
            b = roads.bearing_deg(sp.edge, 0.5 * (sp.start_m + sp.end_m))  # type: ignore[attr-defined]
            return abs((b - h + 180.0) % 360.0 - 180.0)

        start = min(spans, key=misalign)
    edge = start.edge
    offset = 0.5 * (start.start_m + start.end_m)
    togo = speed * horizon_s
    while True:
        room = roads.edge_len[edge] - offset
        if togo <= room:
            return EdgePosition(edge, offset + togo)
        nxt = _straightest(roads, edge)
        if nxt is None:
            return EdgePosition(edge, roads.edge_len[edge])
        togo -= room
        edge, offset = nxt, 0.0


def medoid_position(roads: RoadIndex, belief: Belief) -> EdgePosition:
    """The belief's weighted medoid: the position minimising the probability-weighted straight-line
    distance to all the belief's positions (a robust point estimate of a spread-out mixture)."""
    pos = belief.positions
    if len(pos) == 1:
        return EdgePosition(pos[0].edge, pos[0].offset_m)
    xy = np.array([roads.position_xy(wp.edge, wp.offset_m) for wp in pos])
    p = np.array([wp.probability for wp in pos])
    cost = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1]) @ p
    best = pos[int(np.argmin(cost))]
    return EdgePosition(best.edge, best.offset_m)


# ----------------------------------------------------------------------------- run


def load_city(name: str) -> City:
    path = MAPS_DIR / f"{name}.osm.bz2"
    if not path.exists():
        raise SystemExit(f"map not found: {path}")
    graph = compile_graph(graph_from_xml(path))
    cameras = place_synthetic_cameras(graph, metz_density(graph), seed=11)
    return City(graph=graph, cameras=build_camera_network(graph, cameras, strict=False))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def bench_map(
    name: str, *, n_suspects: int, drive_s: float, seed: int, config: TrackerConfig
) -> dict[str, object]:
    city = load_city(name)
    roads = RoadIndex(city.graph, city.cameras)
    rng = np.random.default_rng(seed)
    err: dict[int, list[float]] = {h: [] for h in HORIZONS_S}
    err_last: dict[int, list[float]] = {h: [] for h in HORIZONS_S}
    err_map: dict[int, list[float]] = {h: [] for h in HORIZONS_S}
    err_dr: dict[int, list[float]] = {h: [] for h in HORIZONS_S}
    true_edge_p: list[float] = []
    update_ms: list[float] = []
    update_cpu_ms: list[float] = []
    belief_ms: list[float] = []
    n_sightings = 0
    for k in range(n_suspects):
        drive = simulate_drive(city.graph, rng, drive_s)
        sightings = simulate_sightings(city, roads, drive, rng, f"inc-{k}")
        tracker = Tracker(city, roads=roads, config=config)
        n_sightings += len(sightings)
        for i, s in enumerate(sightings):
            t0, c0 = time.perf_counter(), time.process_time()
            tracker.update(s)
            update_cpu_ms.append((time.process_time() - c0) * 1000.0)
            update_ms.append((time.perf_counter() - t0) * 1000.0)
            t_k = (s.observed_at - T0).total_seconds()
            t_next = (
                (sightings[i + 1].observed_at - T0).total_seconds() if i + 1 < len(sightings) else math.inf
            )
            for h in HORIZONS_S:
                t = t_k + h
                if t >= t_next:
                    continue
                truth = drive.at(t, city.graph.edge_length_m)
                if truth is None:
                    continue
                t1 = time.perf_counter()
                belief = tracker.belief(T0 + timedelta(seconds=t))
                belief_ms.append((time.perf_counter() - t1) * 1000.0)
                est = medoid_position(roads, belief)
                top = belief.positions[0]
                d_trk, d_map, d_last, d_dr = distances_from(
                    roads,
                    truth,
                    [
                        est,
                        EdgePosition(top.edge, top.offset_m),
                        last_seen_position(city, s.camera_id),
                        dead_reckoning_position(city, roads, sightings[: i + 1], tracker, h),
                    ],
                )
                err[h].append(d_trk)
                err_map[h].append(d_map)
                err_last[h].append(d_last)
                err_dr[h].append(d_dr)
                rev = city.graph.reverse_edge(truth.edge)
                true_edge_p.append(
                    sum(wp.probability for wp in belief.positions if wp.edge in (truth.edge, rev))
                )
    return {
        "median_error_m": {str(h): _pct(err[h], 50) for h in HORIZONS_S},
        "p90_error_m": {str(h): _pct(err[h], 90) for h in HORIZONS_S},
        "map_median_error_m": {str(h): _pct(err_map[h], 50) for h in HORIZONS_S},
        "last_seen_median_error_m": {str(h): _pct(err_last[h], 50) for h in HORIZONS_S},
        "dead_reckoning_median_error_m": {str(h): _pct(err_dr[h], 50) for h in HORIZONS_S},
        "n_evaluations": {str(h): len(err[h]) for h in HORIZONS_S},
        "true_edge_probability": float(np.mean(true_edge_p)) if true_edge_p else float("nan"),
        "update_ms_p50": _pct(update_ms, 50),
        "update_ms_p99": _pct(update_ms, 99),
        "update_cpu_ms_p50": _pct(update_cpu_ms, 50),
        "update_cpu_ms_p99": _pct(update_cpu_ms, 99),
        "belief_ms_p50": _pct(belief_ms, 50),
        "belief_ms_p99": _pct(belief_ms, 99),
        "n_suspects": n_suspects,
        "n_sightings": n_sightings,
        "n_cameras": len(city.cameras.views),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Median / p90 errors per horizon, both baselines, and the tracker/better-baseline ratio."""
    print(
        f"{'map':<11}{'Δ s':>5}{'n':>6}{'median':>9}{'p90':>9}{'last seen':>11}{'dead reck':>11}{'ratio':>7}"
    )
    for name, r in results.items():
        for h in map(str, HORIZONS_S):
            med = r["median_error_m"][h]
            last, dr = r["last_seen_median_error_m"][h], r["dead_reckoning_median_error_m"][h]
            ratio = med / min(last, dr) if min(last, dr) > 0 else float("nan")
            print(
                f"{name:<11}{h:>5}{r['n_evaluations'][h]:>6}{med:>9.0f}{r['p90_error_m'][h]:>9.0f}"
                f"{last:>11.0f}{dr:>11.0f}{ratio:>7.2f}"
            )
        print(
            f"{name}: true-edge probability {r['true_edge_probability']:.2f}; update p50 "
            f"{r['update_ms_p50']:.2f} ms, p99 {r['update_ms_p99']:.2f} ms wall "
            f"(CPU p50 {r['update_cpu_ms_p50']:.2f}, p99 {r['update_cpu_ms_p99']:.2f} ms); "
            f"belief p50 {r['belief_ms_p50']:.2f} ms; {r['n_sightings']} sightings, "
            f"{r['n_cameras']} cameras, {r['wall_s']} s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer suspects (under a minute)")
    parser.add_argument("--maps", nargs="+", default=["harrisburg", "monaco"])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--max-hypotheses", type=int, default=TrackerConfig().max_hypotheses)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tracking.json")
    args = parser.parse_args(argv)
    n_suspects, drive_s = (8, 420.0) if args.quick else (100, 900.0)
    results: dict[str, dict[str, Any]] = {}
    for name in args.maps:
        t0 = time.perf_counter()
        config = TrackerConfig(max_hypotheses=args.max_hypotheses)
        results[name] = bench_map(name, n_suspects=n_suspects, drive_s=drive_s, seed=args.seed, config=config)
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
