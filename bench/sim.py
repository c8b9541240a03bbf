"""Benchmark of the simulator: policies side by side on real maps.

Harrisburg and Monaco (../shared/maps, or $CORDON_SHARED_MAPS), synthetic cameras at Metz
density, 5 and 10 crews, exit-seeking and main-road suspects, N runs per policy (seeds 0..N-1,
the same draws for every policy). Writes ``bench/results/sim.json``::

    {"<map>": {"<crews>": {"<behaviour>": {"<policy>": {"interception_rate", "ci95",
     "pursuit_contacts_per_run", "escape_rate", ...}}}}, "runs_per_minute": float, "meta": {...}}

``runs_per_minute`` is the rate of a batch with the four policies in equal numbers on
``--workers`` processes (harmonic combination of each policy's measured rate); ``meta``
holds each policy's own rate, the simulated minutes per run and the run counts.

    .venv/bin/python bench/sim.py                       # 200 runs per policy
    .venv/bin/python bench/sim.py --guidance-runs 20    # fewer runs of the (slow) guidance policy
    .venv/bin/python bench/sim.py --quick               # under a minute: Monaco, 10 crews, few runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim.batch import RunRecord, run_batch, summarise  # noqa: E402
from sim.policies import coordinator_for  # noqa: E402
from sim.scenario import POLICIES, build_city, parse_scenario  # noqa: E402
from sim.world import CityContext  # noqa: E402

MAPS = ("harrisburg", "monaco")
CREWS = (5, 10)
BEHAVIOURS = ("exit_seeking", "main_road")


def _scenario(map_name: str, crews: int, behaviour: str) -> Any:
    return parse_scenario(
        {
            "name": f"bench-{map_name}-{crews}-{behaviour}",
            "map": {"kind": "file", "path": f"../shared/maps/{map_name}.osm.bz2"},
            "cameras": {"kind": "synthetic", "density": "metz", "seed": 0},
            "crews": {"count": crews, "area": {"radius_m": 3000, "min_distance_m": 300}},
            "suspect": {"behaviour": behaviour},
            "duration_s": 600,
            "seed": 0,
            "base_dir": str(ROOT),
        },
        source=f"bench {map_name}",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="runs per policy and configuration")
    ap.add_argument(
        "--guidance-runs", type=int, default=None, help="runs of the guidance policy (default --runs)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--maps", default=",".join(MAPS))
    ap.add_argument("--crews", default=",".join(str(c) for c in CREWS))
    ap.add_argument(
        "--quick", action="store_true", help="Monaco, 10 crews, exit-seeking, 12 runs (4 of guidance)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim.json")
    args = ap.parse_args()
    maps = args.maps.split(",")
    crews_list = [int(c) for c in args.crews.split(",")]
    runs, g_runs = args.runs, args.guidance_runs
    behaviours = BEHAVIOURS
    if args.quick:
        maps, crews_list, runs, g_runs, behaviours = ["monaco"], [10], 12, 4, ("exit_seeking",)
    g_runs = runs if g_runs is None else g_runs

    doc: dict[str, Any] = {}
    records: list[RunRecord] = []
    start_all = time.perf_counter()
    for map_name in maps:
        base = _scenario(map_name, crews_list[0], BEHAVIOURS[0])
        t0 = time.perf_counter()
        ctx = CityContext(build_city(base))
        # Build guidance's Coordinator here: forked workers inherit it (and one consistent
        # snapshot of the guidance code) instead of each building their own.
        coordinator_for(ctx)
        print(
            f"{map_name}: {ctx.graph.n_nodes} crossings, {len(ctx.camera_ids)} cameras, "
            f"{ctx.exits.size} exits (loaded in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        for crews in crews_list:
            for behaviour in behaviours:
                sc = _scenario(map_name, crews, behaviour)
                recs = run_batch(
                    sc, runs=runs, policies=("chase", "nearest", "static"), workers=args.workers, ctx=ctx
                )
                recs += run_batch(sc, runs=g_runs, policies=("guidance",), workers=args.workers, ctx=ctx)
                records += recs
                summary = summarise(recs)
                cell = doc.setdefault(map_name, {}).setdefault(str(crews), {}).setdefault(behaviour, {})
                for policy in POLICIES:
                    s = summary[policy]
                    cell[policy] = {
                        "interception_rate": s["interception_rate"],
                        "ci95": s["ci95"],
                        "pursuit_contacts_per_run": s["pursuit_contacts_per_run"],
                        "escape_rate": s["escape_rate"],
                        "runs": s["runs"],
                        "median_time_to_interception_s": s["median_time_to_interception_s"],
                        "crew_km_per_run": s["crew_km_per_run"],
                        "suggestion_changes_per_crew_minute": s["suggestion_changes_per_crew_minute"],
                    }
                _print_cell(map_name, crews, behaviour, cell)
    wall_all = time.perf_counter() - start_all

    # Throughput: each policy's rate on the workers, from its runs' own wall times.
    meta_rates: dict[str, Any] = {}
    for policy in POLICIES:
        rs = [r for r in records if r.policy == policy]
        mean_wall = statistics.fmean(r.wall_s for r in rs)
        meta_rates[policy] = {
            "runs": len(rs),
            "runs_per_minute": args.workers * 60.0 / mean_wall if mean_wall > 0 else None,
            "mean_wall_s": mean_wall,
            "mean_simulated_s": statistics.fmean(r.t_s for r in rs),
        }
    rates = [m["runs_per_minute"] for m in meta_rates.values() if m["runs_per_minute"]]
    doc["runs_per_minute"] = len(rates) / sum(1.0 / r for r in rates) if rates else 0.0
    doc["meta"] = {
        "runs_per_policy": runs,
        "guidance_runs": g_runs,
        "workers": args.workers,
        "wall_s": wall_all,
        "per_policy": meta_rates,
        "quick": args.quick,
        "note": "runs_per_minute: four policies in equal numbers, harmonic mean of the per-policy rates",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"{'policy':<9} {'runs':>5} {'runs/min':>9} {'wall s/run':>10} {'sim s/run':>9}")
    for policy, m in meta_rates.items():
        print(
            f"{policy:<9} {m['runs']:>5} {m['runs_per_minute']:>9.1f} {m['mean_wall_s']:>10.3f} "
            f"{m['mean_simulated_s']:>9.0f}"
        )
    print(f"four-policy batch: {doc['runs_per_minute']:.1f} runs/min on {args.workers} workers")
    print(f"wrote {args.out} ({wall_all:.0f} s)")


def _print_cell(map_name: str, crews: int, behaviour: str, cell: dict[str, Any]) -> None:
    chase = cell["chase"]["interception_rate"]
    for policy, s in cell.items():
        ratio = (
            s["interception_rate"] / chase if chase > 0 else float("inf") if s["interception_rate"] else 0.0
        )
        print(
            f"{map_name:<11} {crews:>2} {behaviour:<13} {policy:<9} n={s['runs']:<4} "
            f"intercept {s['interception_rate']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"x{ratio:.2f} vs chase  contacts/run {s['pursuit_contacts_per_run']:.2f}  "
            f"escape {s['escape_rate']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
