"""Benchmark of guidance: predict + plan latency with 30 crews, and calibration of the 90 % set.

Maps: harrisburg (real, ../shared/maps) and generated cities of 10k and 50k crossings
(``map_data.city.default_city``: generated streets, synthetic cameras at Metz density).

Ground truth comes from this file's own simple driver, not from guidance's models: each suspect
picks a random exit (60 %) or a random far crossing (40 %) and drives a fastest path on edge
times perturbed per suspect (lognormal, sigma 0.3) at the limit times a factor drawn in
[1.1, 1.5] (each edge ±10 %). Thirty seconds after the start, guidance receives a belief at
the suspect's true position and predicts; the check is whether the true position (edge, or
"left the map") at 30, 60, 120, 240 and 480 s later lies in the predicted 90 % set.

Baseline, measured in the same run: a uniform random walk from the same belief at the same
speed (the model the issue warns against), for calibration and for interception: the share of
suspects whose true route passes a planned point where the crew is there ``margin`` seconds
before them.

Server-like row (issue 6, harrisburg only): one ``Coordinator`` with 300 crews spread over the map
(the service's speed factor 1.2), 25 incidents opened without a position, their sightings (cameras
along a fastest path, at 0.9 x the limit) interleaved in time order; thread CPU time of each
``Coordinator.ingest`` (track update, predict, plan of that incident; crews suggested to other
incidents are not offered).

Usage: ``python bench/guidance.py [--quick] [--reps N] [--server-only]``; writes
``bench/results/guidance.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guidance.coordinator import Coordinator  # noqa: E402
from guidance.models import BehaviourModel, DestinationKind  # noqa: E402
from guidance.planner import InterceptionPlanner  # noqa: E402
from guidance.prediction import EscapePredictor, PredictorConfig  # noqa: E402
from guidance.testing import PointBelief, Position  # noqa: E402
from guidance.types import Crew, EscapePrediction, Plan, PlannerConfig  # noqa: E402
from guidance.warmup import warm_up_kernels  # noqa: E402
from map_data.city import default_city, exit_nodes, load_city  # noqa: E402
from map_data.network_types import City  # noqa: E402
from map_data.routing import shortest_path  # noqa: E402
from map_data.types import CompiledGraph, EdgePosition  # noqa: E402
from tracking.types import Sighting  # noqa: E402

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OBSERVE_S = 30.0
CHECK_S = (30.0, 60.0, 120.0, 240.0, 480.0)
N_CREWS = 30
ARRIVE_BEFORE_S = 10.0  # the simulator's rule: the crew waits >= 10 s at the crossing


@dataclass
class Truth:
    nodes: np.ndarray  # route nodes from the start
    edges: np.ndarray  # edge into nodes[i] (edges[0] = -1)
    times: np.ndarray  # arrival at nodes[i]
    exit: bool

    def where(self, t: float) -> tuple[int, bool]:
        """(edge, left) at time t from the start; the edge leads to the next node."""
        i = int(np.searchsorted(self.times, t, side="right"))
        if i >= len(self.nodes):
            return int(self.edges[-1]), self.exit
        return int(self.edges[max(i, 1)]), False


def ground_truth(graph: CompiledGraph, exits: np.ndarray, rng: np.random.Generator) -> Truth | None:
    n = graph.n_nodes
    start = int(rng.integers(n))
    if rng.random() < 0.6 and exits.size:
        dest = int(rng.choice(exits))
        is_exit = True
    else:
        d = np.hypot(*(graph.node_xy - graph.node_xy[start]).T)
        far = np.flatnonzero(d > 0.4 * d.max())
        dest = int(rng.choice(far))
        is_exit = False
    noise = rng.lognormal(0.0, 0.3, graph.n_edges)
    w = graph.edge_time_s * noise
    A = sp.csr_matrix((w, (graph.edge_u, graph.edge_v)), shape=(n, n))  # duplicates summed: rare
    _, pred = dijkstra(A, directed=True, indices=start, return_predecessors=True)
    if pred[dest] < 0 or dest == start:
        return None
    path = [dest]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    path.reverse()
    nodes = np.array(path, dtype=np.int64)
    edges = np.full(len(path), -1, dtype=np.int64)
    for i in range(1, len(path)):
        outs = graph.out_of(int(nodes[i - 1]))
        hits = outs[graph.edge_v[outs] == nodes[i]]
        edges[i] = int(hits[np.argmin(graph.edge_time_s[hits])])
    factor = rng.uniform(1.1, 1.5)
    dt = graph.edge_time_s[edges[1:]] / (factor * rng.uniform(0.9, 1.1, len(path) - 1))
    times = np.r_[0.0, np.cumsum(dt)]
    return Truth(nodes, edges, times, is_exit)


def belief_at(truth: Truth, graph: CompiledGraph, incident_id: str) -> PointBelief | None:
    i = int(np.searchsorted(truth.times, OBSERVE_S, side="right"))
    if i >= len(truth.nodes) or i < 1:
        return None
    e = int(truth.edges[i])
    frac = (OBSERVE_S - truth.times[i - 1]) / (truth.times[i] - truth.times[i - 1])
    speed = float(graph.edge_length_m[e] / (truth.times[i] - truth.times[i - 1]))
    pos = Position(e, float(frac * graph.edge_length_m[e]), 1.0, speed)
    return PointBelief(incident_id, T0 + timedelta(seconds=OBSERVE_S), (pos,), int(truth.nodes[0]), 2, speed)


def covered(pred: EscapePrediction, truth: Truth) -> list[bool]:
    hits = []
    for h in CHECK_S:
        edge, left = truth.where(OBSERVE_S + h)
        edges, set_left = pred.horizon(h).credible_edges(0.9)
        hits.append(set_left if left else edge in edges)
    return hits


def intercepted(plan: Plan, truth: Truth) -> bool:
    arrive = {int(v): float(t) - OBSERVE_S for v, t in zip(truth.nodes, truth.times, strict=True)}
    for s in plan.suggestions:
        t = arrive.get(s.target_node)
        if t is not None and t > 0 and s.crew_eta_s + ARRIVE_BEFORE_S <= t:
            return True
    return False


NOTES = (
    "plan_ms = predict + plan end to end, wall clock (one incident, 30 crews, at most "
    f"{PlannerConfig().max_crews_per_incident} assigned); "
    "cpu_* = the same in thread CPU time (the shared 2-core machine may be loaded by others); "
    "planner_only_ms = plan alone; calibration_90 = share of (suspect, horizon in "
    f"{list(CHECK_S)} s) whose true edge or exit lies in the predicted 90 % set; baseline = "
    "uniform random walk at the same speed; interception = the true route passes a target "
    f"with crew ETA + {ARRIVE_BEFORE_S:.0f} s <= the true suspect arrival."
)

RANDOM_WALK = BehaviourModel(
    "random_walk",
    speed_factor=1.3,
    speed_jitter=0.12,
    temperature_s=1e12,
    road_weight=0.0,
    straight_weight=0.0,
    uturn_penalty=0.0,
    away_weight=0.0,
)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def run_map(name: str, city: City, reps: int, seed: int) -> dict[str, object]:
    g = city.graph
    exits = exit_nodes(g)
    t = time.perf_counter()
    predictor = EscapePredictor(city, exits=exits if exits.size else None)
    init_s = time.perf_counter() - t
    walker = EscapePredictor(
        city,
        models={"random_walk": RANDOM_WALK},
        config=PredictorConfig(
            model_weights={"random_walk": 1.0},
            kind_prior={DestinationKind.exit: 1.0, DestinationKind.far: 1.0, DestinationKind.hide: 1.0},
            speed_update=False,
        ),
        exits=exits if exits.size else None,
    )
    planner = InterceptionPlanner(city, PlannerConfig())
    rng = np.random.default_rng(seed)
    predict_ms: list[float] = []
    plan_ms: list[float] = []
    planner_ms: list[float] = []
    cpu_predict_ms: list[float] = []
    cpu_plan_ms: list[float] = []
    hits: list[bool] = []
    base_hits: list[bool] = []
    caught = 0
    base_caught = 0
    n = 0
    tries = 0
    while n < reps and tries < reps * 20:
        tries += 1
        truth = ground_truth(g, exits, rng)
        if truth is None:
            continue
        belief = belief_at(truth, g, f"bench-{name}-{n}")
        if belief is None:
            continue
        crews = [
            Crew(f"crew-{i:02d}", EdgePosition(int(e), 0.0))
            for i, e in enumerate(rng.integers(0, g.n_edges, N_CREWS))
        ]
        c0, t0 = time.thread_time(), time.perf_counter()
        pred = predictor.predict(belief)
        c1, t1 = time.thread_time(), time.perf_counter()
        plan = planner.plan(pred, crews, at=belief.at)
        c2, t2 = time.thread_time(), time.perf_counter()
        predict_ms.append((t1 - t0) * 1e3)
        planner_ms.append((t2 - t1) * 1e3)
        plan_ms.append((t2 - t0) * 1e3)
        cpu_predict_ms.append((c1 - c0) * 1e3)
        cpu_plan_ms.append((c2 - c0) * 1e3)
        hits.extend(covered(pred, truth))
        caught += intercepted(plan, truth)
        base = walker.predict(belief)
        base_hits.extend(covered(base, truth))
        base_caught += intercepted(planner.plan(base, crews, at=belief.at), truth)
        n += 1
    return {
        "crews": N_CREWS,
        "crossings": g.n_nodes,
        "cameras": len(city.cameras.cameras),
        "runs": n,
        "plan_ms_p50": pct(plan_ms, 50),
        "plan_ms_p99": pct(plan_ms, 99),
        "predict_ms_p50": pct(predict_ms, 50),
        "planner_only_ms_p50": pct(planner_ms, 50),
        "planner_only_ms_p99": pct(planner_ms, 99),
        "cpu_plan_ms_p50": pct(cpu_plan_ms, 50),
        "cpu_plan_ms_p99": pct(cpu_plan_ms, 99),
        "cpu_predict_ms_p50": pct(cpu_predict_ms, 50),
        "predictor_init_s": init_s,
        "calibration_90": float(np.mean(hits)) if hits else float("nan"),
        "baseline_random_walk_calibration_90": float(np.mean(base_hits)) if base_hits else float("nan"),
        "interception_rate": caught / n if n else float("nan"),
        "baseline_random_walk_interception_rate": base_caught / n if n else float("nan"),
        "_hits": hits,
    }


SERVER_CREWS = 300
SERVER_INCIDENTS = 25
SERVER_SPEED_FACTOR = 1.2  # serving.service's default crew_speed_factor
SERVER_CREW_REFRESH_S = 10.0  # serving.service's default crew_refresh_s
PATROL_SPEED = 0.6  # a patrolling crew's speed, share of the edge's free-flow speed


def incident_routes(city: City, n: int, rng: np.random.Generator) -> list[list[tuple[str, float]]]:
    """For each of ``n`` incidents, the cameras along a fastest path between two far crossings
    and the time (s) at which a suspect at 0.9 x the limit passes each."""
    g = city.graph
    out: list[list[tuple[str, float]]] = []
    while len(out) < n:
        a, b = (int(x) for x in rng.choice(g.n_nodes, 2, replace=False))
        if np.hypot(*(g.node_xy[a] - g.node_xy[b])) < 2000.0:
            continue
        try:
            nodes = shortest_path(g, a, b)
        except ValueError:
            continue
        seen: list[tuple[str, float]] = []
        t = 0.0
        for u, v in itertools.pairwise(nodes):
            e = g.edge_between(u, v)
            t += float(g.edge_time_s[e]) / 0.9
            for camera_id, _s, _e in city.cameras.on_edge.get(e, ()):
                if camera_id not in (c for c, _ in seen):
                    seen.append((camera_id, t))
        if len(seen) >= 6:
            out.append(seen[:12])
    return out


class Patrol:
    """Crews driving around: each advances along its edge at ``PATROL_SPEED`` x the edge's
    free-flow speed and, at the edge's end, takes a random edge out of its head (a U-turn only
    at a dead end). Deterministic for a seed."""

    def __init__(self, graph: CompiledGraph, crews: list[Crew], rng: np.random.Generator) -> None:
        self.graph = graph
        self.crews = crews
        self.rng = rng

    def advance(self, dt_s: float) -> list[Crew]:
        g = self.graph
        out = []
        for c in self.crews:
            e, off, left = c.position.edge, c.position.offset_m, dt_s
            while left > 0:
                speed = PATROL_SPEED * float(g.edge_length_m[e] / max(g.edge_time_s[e], 1e-9))
                rest = float(g.edge_length_m[e]) - off
                if speed * left < rest:
                    off += speed * left
                    break
                left -= rest / max(speed, 1e-9)
                outs = g.out_of(int(g.edge_v[e]))
                forward = outs[g.edge_v[outs] != g.edge_u[e]]
                e, off = int(self.rng.choice(forward if forward.size else outs)), 0.0
            out.append(Crew(c.crew_id, EdgePosition(int(e), off), speed_factor=c.speed_factor))
        self.crews = out
        return out


class ComparingPlanner(InterceptionPlanner):
    """Plans as usual, and also plans the same inputs over every crew (no shortlist) to record
    the ratio of coverages; ``reference_cpu_s`` is the CPU time of those extra plans (to be
    taken off the timings)."""

    def __init__(self, city: City) -> None:
        super().__init__(city)
        self.reference = InterceptionPlanner(city, replace(self.config, crew_shortlist=0))
        self.reference_cpu_s = 0.0
        self.ratios: list[float] = []

    def plan(self, prediction: EscapePrediction, crews: Sequence[Crew], **kwargs: Any) -> Plan:
        out = super().plan(prediction, crews, **kwargs)
        c0 = time.thread_time()
        ref = self.reference.plan(prediction, crews, **kwargs)
        self.reference_cpu_s += time.thread_time() - c0
        if (
            ref.coverage_probability > 0
            and out.parameters["n_shortlisted_crews"] != out.parameters["n_eligible_crews"]
        ):
            self.ratios.append(out.coverage_probability / ref.coverage_probability)
        return out


def run_server_like(
    city: City, seed: int, *, move_every_s: float | None = None, compare: bool = False
) -> dict[str, object]:
    """The server's case (issue 6): one Coordinator, 300 crews spread over the map (the
    service's speed factor), 25 incidents opened without a position, their sightings
    interleaved in time order; CPU time of each ``Coordinator.ingest`` (predict + plan of its
    incident, crews busy on the other incidents' plans are not offered).

    ``move_every_s``: crews patrol (:class:`Patrol`) and their positions are pushed with
    ``set_crews(replan=False)`` before a sighting when at least this many simulated seconds
    passed since the last push (the service's ``crew_refresh_s``); the push is not timed.
    ``compare``: each plan is also made over every crew (untimed), for the coverage ratio of
    the shortlist (``PlannerConfig.crew_shortlist``)."""
    g = city.graph
    rng = np.random.default_rng(seed)
    co = Coordinator(city)
    comparing = ComparingPlanner(city) if compare else None
    if comparing is not None:
        co.planner = comparing
    edges = rng.choice(g.n_edges, SERVER_CREWS, replace=False)
    crews = [
        Crew(
            f"crew-{i:03d}",
            EdgePosition(int(e), float(rng.uniform(0.0, 0.9) * g.edge_length_m[int(e)])),
            speed_factor=SERVER_SPEED_FACTOR,
        )
        for i, e in enumerate(edges)
    ]
    routes = incident_routes(city, SERVER_INCIDENTS, rng)
    events: list[tuple[float, str, str, int]] = []
    for j, cams in enumerate(routes):
        incident_id = f"srv-{j:02d}"
        co.open_incident(incident_id, at=T0)
        start = float(rng.uniform(0.0, 60.0))
        events.extend((start + t, incident_id, camera_id, k) for k, (camera_id, t) in enumerate(cams))
    co.set_crews(crews, T0)
    events.sort()
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    suggestions = 0
    patrol = Patrol(g, crews, np.random.default_rng(seed + 1))
    pushed_s = 0.0
    pushes = 0
    for t, incident_id, camera_id, k in events:
        if move_every_s is not None and t - pushed_s >= move_every_s:
            co.set_crews(patrol.advance(t - pushed_s), T0 + timedelta(seconds=round(t, 3)), replan=False)
            pushed_s = t
            pushes += 1
        sighting = Sighting(
            incident_id=incident_id,
            camera_id=camera_id,
            observed_at=T0 + timedelta(seconds=round(t, 3)),
            source_event_id=f"{incident_id}-{k}",
        )
        extra_s = comparing.reference_cpu_s if comparing is not None else 0.0
        c0, t0 = time.thread_time(), time.perf_counter()
        outcome = co.ingest(sighting)
        c1, t1 = time.thread_time(), time.perf_counter()
        if comparing is not None:
            extra_s = comparing.reference_cpu_s - extra_s
        cpu_ms.append((c1 - c0 - extra_s) * 1e3)
        wall_ms.append((t1 - t0 - extra_s) * 1e3)
        suggestions += len(outcome.plan.suggestions) if outcome.plan is not None else 0
    out: dict[str, object] = {
        "crews": SERVER_CREWS,
        "incidents": SERVER_INCIDENTS,
        "crossings": g.n_nodes,
        "ingests": len(cpu_ms),
        "ingest_cpu_ms_mean": float(np.mean(cpu_ms)),
        "ingest_cpu_ms_p50": pct(cpu_ms, 50),
        "ingest_cpu_ms_p99": pct(cpu_ms, 99),
        "ingest_wall_ms_mean": float(np.mean(wall_ms)),
        "suggestions_per_ingest": suggestions / max(len(cpu_ms), 1),
        "crew_pushes": pushes,
        "move_every_s": move_every_s,
        "crew_shortlist": co.planner.config.crew_shortlist,
    }
    if comparing is not None:
        r = np.array(comparing.ratios)
        out["shortlisted_plans"] = int(r.size)
        out["shortlist_coverage_ratio_mean"] = float(r.mean()) if r.size else float("nan")
        out["shortlist_coverage_ratio_min"] = float(r.min()) if r.size else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, no 50k city (under a minute)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "guidance.json")
    ap.add_argument("--server-only", action="store_true", help="only the server-like row (harrisburg)")
    args = ap.parse_args()
    reps = args.reps or (8 if args.quick else 60)
    # The compiled kernels loaded before timing, as the server does at startup (the first call
    # would otherwise pay ~0.3 s loading them from the disk cache, or compiling them).
    warm_up_kernels()
    maps: list[tuple[str, object]] = []
    harrisburg = ROOT.parent / "shared" / "maps" / "harrisburg.osm.bz2"
    if harrisburg.exists():
        maps.append(("harrisburg", lambda: load_city(harrisburg, cache_dir="/tmp/cordon-bench-cache")))
    maps.append(("generated_10k", lambda: default_city(n_crossings=10_000, seed=7)))
    if not args.quick:
        maps.append(("generated_50k", lambda: default_city(n_crossings=50_000, seed=7)))
    if args.server_only:
        maps = []
    results: dict[str, object] = {}
    all_hits: list[bool] = []
    header = (
        f"{'map':<15}{'nodes':>7}{'runs':>5}{'plan p50':>10}{'plan p99':>10}{'pred p50':>10}"
        f"{'cpu p50':>9}{'cpu p99':>9}{'calib90':>9}{'rw calib':>9}{'catch':>7}{'rw catch':>9}"
    )
    if maps:
        print(header)
    for i, (name, build) in enumerate(maps):
        city = build()  # type: ignore[operator]
        r = run_map(name, city, reps, seed=100 + i)
        all_hits.extend(r.pop("_hits"))  # type: ignore[arg-type]
        results[name] = r
        print(
            f"{name:<15}{r['crossings']:>7}{r['runs']:>5}{r['plan_ms_p50']:>10.1f}{r['plan_ms_p99']:>10.1f}"
            f"{r['predict_ms_p50']:>10.1f}{r['cpu_plan_ms_p50']:>9.1f}{r['cpu_plan_ms_p99']:>9.1f}"
            f"{r['calibration_90']:>9.3f}"
            f"{r['baseline_random_walk_calibration_90']:>9.3f}{r['interception_rate']:>7.2f}"
            f"{r['baseline_random_walk_interception_rate']:>9.2f}",
            flush=True,
        )
    if all_hits:
        results["calibration_90"] = float(np.mean(all_hits))
        print(f"calibration_90 (all maps): {results['calibration_90']:.3f}")
        print(NOTES)
    if harrisburg.exists():
        city = load_city(harrisburg, cache_dir="/tmp/cordon-bench-cache")
        for key, move in (
            ("server_like_harrisburg", None),
            ("server_like_harrisburg_moving", SERVER_CREW_REFRESH_S),
        ):
            s = run_server_like(city, seed=200, move_every_s=move)
            if move is not None:  # the same run again, comparing each plan with the unshortlisted one
                q = run_server_like(city, seed=200, move_every_s=move, compare=True)
                s.update({k: v for k, v in q.items() if k.startswith("shortlist")})
            results[key] = s
            crews_how = "still" if move is None else f"patrolling, pushed every {move:.0f} s"
            print(
                f"server-like (harrisburg, {s['crews']} crews {crews_how}, {s['incidents']} incidents, "
                f"{s['ingests']} ingests): "
                f"ingest cpu mean {s['ingest_cpu_ms_mean']:.1f} ms, p50 {s['ingest_cpu_ms_p50']:.1f}, "
                f"p99 {s['ingest_cpu_ms_p99']:.1f}, wall mean {s['ingest_wall_ms_mean']:.1f}; "
                f"{s['suggestions_per_ingest']:.1f} suggestions per plan",
                flush=True,
            )
            if "shortlisted_plans" in s:
                print(
                    f"  crew shortlist {s['crew_shortlist']}: {s['shortlisted_plans']} plans shortlisted, "
                    f"coverage / unshortlisted: mean {s['shortlist_coverage_ratio_mean']:.4f}, "
                    f"min {s['shortlist_coverage_ratio_min']:.4f}",
                    flush=True,
                )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.server_only and out.exists():  # keep the other rows of an earlier full run
        earlier = json.loads(out.read_text())
        earlier.update(results)
        results = earlier
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
