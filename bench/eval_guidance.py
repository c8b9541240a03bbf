"""Why does the guidance policy miss? Run the simulator's guidance policy on seeds and diagnose.

For every run it records the outcome and, for a miss, where the suspect went (the exit it
reached), whether any suggested target lay on its true path, when the crew sent there arrived
compared with the suspect's pass, whether the crew was pulled away before the pass, and how much
probability the predictions gave the crossings the suspect actually passed. Prints one line per
run and a summary; writes ``bench/results/eval_guidance.json``. Each run also gets the
perfect-knowledge bound of :mod:`sim.bounds` (``oracle``: could any crew, knowing the route at
t = 0, have waited on it?); a miss the bound also loses is ``(unwinnable)``.

``--lost`` runs no policy: over many seeds it computes the bound alone (milliseconds a run) and
says why the lost runs are lost (how soon the suspect leaves the map, by how many seconds the best
crew is late, how far the nearest crew is, when the first report arrives), for the issue's cells
and the variants of ``bench/sim.py`` (``--variant centre``).

    .venv/bin/python bench/eval_guidance.py --map harrisburg --crews 5 --behaviour exit_seeking --runs 20
    .venv/bin/python bench/eval_guidance.py --all --runs 20     # both maps, 5 and 10 crews, both behaviours
    .venv/bin/python bench/eval_guidance.py --all --runs 40 --first-seed 2000   # seeds apart from the bench's
    .venv/bin/python bench/eval_guidance.py --lost --crews 10 --runs 200 --all-maps [--variant centre]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.bounds import Bound, perfect_knowledge  # noqa: E402
from sim.policies import SIM_REUSE_PREDICTION_S, GuidancePolicy, coordinator_for  # noqa: E402
from sim.scenario import build_city  # noqa: E402
from sim.world import CityContext, World  # noqa: E402


def _bench_sim() -> Any:
    """``bench/sim.py`` as a module (its name clashes with the ``sim`` package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sim", ROOT / "bench" / "sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench_sim()


def scenario_for(map_name: str, crews: int, behaviour: str, seed: int = 0, variant: str | None = None) -> Any:
    """The same scenario as ``bench/sim.py`` (a cell, or a cell of one of its variants)."""
    sc = BENCH._scenario(map_name, crews, behaviour, variant)
    return sc.with_run(seed=seed) if seed != sc.seed else sc


class RecordingPolicy(GuidancePolicy):
    """The simulator's guidance policy, keeping every plan and the prediction behind it."""

    def __init__(self, coordinator: Any) -> None:
        super().__init__(coordinator)
        self.history: list[tuple[float, Any, Any]] = []

    def _replan(self, world: World, t: float) -> None:
        super()._replan(world, t)
        st = self.coordinator.state(self.incident_id, world.at(t))
        if st.plan is not None and (not self.history or self.history[-1][2] is not st.plan):
            self.history.append((t, st.prediction, st.plan))


def diagnose(ctx: CityContext, scenario: Any, seed: int) -> dict[str, Any]:
    sc = scenario.with_run(seed=seed, policy="guidance")
    policy = RecordingPolicy(coordinator_for(ctx))
    t0 = time.perf_counter()
    world = World(ctx, sc, policy)
    result = world.run_for()
    wall = time.perf_counter() - t0
    o = result.outcome
    rec = result.recording
    g = ctx.graph
    # Suspect's true crossings and their entry times.
    path: list[tuple[int, float]] = []
    for m in rec.moves:
        if m.agent == "suspect":
            path.append((int(g.edge_v[m.edge]), m.t1))
    path = [(v, t) for v, t in path if t <= o.t + 1e-9]
    pass_t: dict[int, float] = {}
    for v, t in path:
        pass_t.setdefault(v, t)
    # Oracle: could some crew, sent at t=0 to a crossing of the true path, wait there >= 10 s
    # before the suspect passes? (an upper bound for any policy on an unreactive suspect)
    oracle = perfect_knowledge(ctx, scenario, seed).winnable
    out: dict[str, Any] = {
        "oracle": oracle,
        "seed": seed,
        "kind": o.kind,
        "t": round(o.t, 1),
        "contacts": len(o.contacts),
        "sightings": len(rec.sightings),
        "plans": len(policy.history),
        "wall_s": round(wall, 2),
        "exit": o.node if o.kind == "escape" else None,
    }
    # Targets on the true path: who was sent, when it arrived / left, vs the suspect's pass.
    on_path = []
    for s in rec.suggestions:
        if s.target_node in pass_t and s.t < pass_t[s.target_node]:
            on_path.append(s)
    waits = [w for w in rec.waits if w.node in pass_t]
    out["targets_on_path"] = sorted({s.target_node for s in on_path})
    details = []
    for v in out["targets_on_path"]:
        tp = pass_t[v]
        crews_sent = sorted({s.crew_id for s in on_path if s.target_node == v})
        arrivals = [
            (w.agent, round(w.t0, 1), None if w.t1 is None else round(w.t1, 1))
            for w in rec.waits
            if w.node == v and w.agent in crews_sent
        ]
        first_sent = min(s.t for s in on_path if s.target_node == v)
        details.append({"node": v, "pass_t": round(tp, 1), "sent_t": round(first_sent, 1), "waits": arrivals})
    out["details"] = details
    # Category of a miss.
    if o.kind != "interception":
        if not on_path:
            cat = "no_target_on_path"
        else:
            cat = "late"
            for d in details:
                for _, a, left in d["waits"]:
                    if a <= d["pass_t"] and left is not None and left < d["pass_t"]:
                        cat = "pulled_away"
                    if a <= d["pass_t"] and (left is None or left >= d["pass_t"]) and a + 10 > d["pass_t"]:
                        cat = "wait_lt_10s"
        out["category"] = cat
    # Prediction quality: probability the first and the mid-run predictions gave the exit reached.
    if policy.history:
        probs = []
        for t, pred, _ in policy.history:
            if pred is None:
                continue
            if o.kind == "escape" and o.node is not None:
                probs.append((round(t), round(float(pred.pass_probability[o.node]), 3)))
        out["p_exit"] = probs[:1] + probs[len(probs) // 2 : len(probs) // 2 + 1] + probs[-1:]
        first = policy.history[0][2]
        out["first_plan"] = {
            "n_sugg": len(first.suggestions),
            "cov": round(first.coverage_probability, 3),
            "max_eta": round(max((s.crew_eta_s for s in first.suggestions), default=0.0)),
        }
        out["cov_last"] = round(policy.history[-1][2].coverage_probability, 3)
    waits_final = [w for w in rec.waits if w.t1 is None]
    out["crews_waiting_at_end"] = len(waits_final)
    _ = waits
    return out


def _coordinator(ctx: CityContext, predictor: dict[str, Any], planner: dict[str, Any]) -> Any:
    """The guidance Coordinator of ``ctx`` with configuration overrides (for experiments)."""
    from guidance.coordinator import Coordinator
    from guidance.prediction import EscapePredictor, PredictorConfig
    from guidance.types import PlannerConfig
    from map_data.city import exit_nodes

    if "arrival_levels" in planner:
        planner["arrival_levels"] = tuple(planner["arrival_levels"])
    exits = exit_nodes(ctx.city.graph)
    pred = EscapePredictor(ctx.city, config=PredictorConfig(**predictor), exits=exits if exits.size else None)
    return Coordinator(
        ctx.city,
        planner_config=PlannerConfig(**planner),
        predictor=pred,
        reuse_prediction_s=SIM_REUSE_PREDICTION_S,  # as the simulator's (sim.policies.sim_coordinator)
    )


_W: dict[str, Any] = {}


def _work(task: tuple[int]) -> dict[str, Any]:
    return diagnose(_W["ctx"], _W["scenario"], task[0])


def evaluate(
    map_name: str,
    crews: int,
    behaviour: str,
    runs: int,
    workers: int,
    ctx: CityContext,
    first_seed: int = 0,
) -> list[dict[str, Any]]:
    sc = scenario_for(map_name, crews, behaviour)
    _W.update(ctx=ctx, scenario=sc)
    tasks = [(first_seed + i,) for i in range(runs)]
    if workers <= 1:
        return [_work(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_work, tasks))


def _q(values: list[float], qs: tuple[float, ...] = (10, 50, 90)) -> list[float]:
    import numpy as np

    return [round(float(v), 1) for v in np.percentile(values, qs)] if values else []


def lost_runs(ctx: CityContext, scenario: Any, runs: int) -> dict[str, Any]:
    """The perfect-knowledge bound over ``runs`` seeds, and why the lost runs are lost."""
    bounds: list[Bound] = [perfect_knowledge(ctx, scenario, scenario.seed + i) for i in range(runs)]
    won = [b for b in bounds if b.winnable]
    lost = [b for b in bounds if not b.winnable]

    def ends(bs: list[Bound]) -> list[float]:
        return [b.end_t for b in bs if b.end_kind == "escape"]

    margins = [b.best_margin_s for b in lost if b.best_margin_s is not None]
    by_margin = {
        "late_by_le_15s": sum(-15.0 <= m < 0 for m in margins),
        "late_by_15_60s": sum(-60.0 <= m < -15.0 for m in margins),
        "late_by_gt_60s": sum(m < -60.0 for m in margins),
    }
    by_exit = {}
    for limit in (180.0, 240.0, 300.0):
        quick = [b for b in bounds if b.end_kind == "escape" and b.end_t < limit]
        by_exit[f"exit_before_{limit:.0f}s"] = {
            "runs": len(quick),
            "winnable": sum(b.winnable for b in quick),
        }
    speed = {}
    for lo, hi in ((1.3, 1.4), (1.4, 1.5), (1.5, 1.61)):
        band = [b for b in bounds if lo <= b.suspect_speed_factor < hi]
        speed[f"{lo:.1f}-{min(hi, 1.6):.1f}"] = {"runs": len(band), "winnable": sum(b.winnable for b in band)}
    return {
        "runs": runs,
        "rate": len(won) / runs,
        "rate_from_first_report": sum(b.winnable_from_first_report for b in bounds) / runs,
        "lost": len(lost),
        "lost_seen_before_the_end": sum(
            b.first_report_t is not None and b.first_report_t < b.end_t for b in lost
        ),
        "escape_t_s_q10_50_90": {"lost": _q(ends(lost)), "won": _q(ends(won))},
        "best_margin_s_q10_50_90_lost": _q(margins),
        "lost_by_margin": by_margin,
        "nearest_crew_to_origin_s_q10_50_90": {
            "lost": _q([b.nearest_crew_to_origin_s for b in lost]),
            "won": _q([b.nearest_crew_to_origin_s for b in won]),
        },
        "origin_exit_free_flow_s_q10_50_90": {
            "lost": _q([b.origin_exit_free_flow_s for b in lost]),
            "won": _q([b.origin_exit_free_flow_s for b in won]),
        },
        "first_report_t_s_q10_50_90_lost": _q(
            [b.first_report_t for b in lost if b.first_report_t is not None]
        ),
        "by_exit_time": by_exit,
        "by_suspect_speed_factor": speed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--map", default="harrisburg")
    ap.add_argument("--crews", type=int, default=5)
    ap.add_argument("--behaviour", default="exit_seeking")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds first-seed..first-seed+runs-1 (the bench's are 0..199: tune on others)",
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="both maps, 5 and 10 crews, both behaviours")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument(
        "--lost", action="store_true", help="the bound alone over --runs seeds: why runs are lost"
    )
    ap.add_argument("--all-maps", action="store_true", help="with --lost: both maps")
    ap.add_argument("--variant", default=None, help="a variant of bench/sim.py (e.g. centre)")
    ap.add_argument("--predictor", default="{}", help="PredictorConfig overrides (JSON)")
    ap.add_argument("--planner", default="{}", help="PlannerConfig overrides (JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_guidance.json")
    args = ap.parse_args()
    configs = (
        [(m, c, b) for m in ("harrisburg", "monaco") for c in (5, 10) for b in ("exit_seeking", "main_road")]
        if args.all
        else [(args.map, args.crews, args.behaviour)]
    )
    if args.lost:
        out = args.out if args.out.name != "eval_guidance.json" else args.out.with_name("sim_lost_runs.json")
        lost_doc = json.loads(out.read_text()) if out.exists() else {}
        for m in ("harrisburg", "monaco") if args.all_maps else (args.map,):
            sc = scenario_for(m, args.crews, args.behaviour, variant=args.variant)
            ctx = CityContext(build_city(sc))
            row = lost_runs(ctx, sc, args.runs)
            key = f"{m}/{args.crews}/{args.behaviour}" + (f"/{args.variant}" if args.variant else "")
            lost_doc[key] = row
            print(key, json.dumps(row, indent=1), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(lost_doc, indent=1) + "\n", encoding="utf-8")
        return
    doc: dict[str, Any] = {}
    ctxs: dict[str, CityContext] = {}
    for m, c, b in configs:
        if m not in ctxs:
            ctxs[m] = CityContext(build_city(scenario_for(m, c, b)))
            ctxs[m].extras["coordinator"] = _coordinator(
                ctxs[m], json.loads(args.predictor), json.loads(args.planner)
            )
        rows = evaluate(m, c, b, args.runs, args.workers, ctxs[m], first_seed=args.first_seed)
        hits = sum(r["kind"] == "interception" for r in rows)
        cats = Counter(
            f"{r.get('category')}{'' if r['oracle'] else '(unwinnable)'}"
            for r in rows
            if r["kind"] != "interception"
        )
        oracle = sum(r["oracle"] for r in rows) / len(rows)
        if args.verbose:
            for r in rows:
                print(json.dumps(r))
        print(
            f"{m:<11} {c:>2} {b:<13} n={len(rows)} intercept {hits / len(rows):.3f} "
            f"contacts/run {sum(r['contacts'] for r in rows) / len(rows):.2f} oracle {oracle:.2f} "
            f"misses {dict(cats)} wall/run {statistics.median(r['wall_s'] for r in rows):.1f}s",
            flush=True,
        )
        doc[f"{m}/{c}/{b}"] = {"interception_rate": hits / len(rows), "runs": len(rows), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
