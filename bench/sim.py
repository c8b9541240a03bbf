"""Benchmark of the simulator: policies side by side on real maps.

Harrisburg and Monaco (../shared/maps, or $CORDON_SHARED_MAPS), synthetic cameras at Metz
density, 5 and 10 crews, exit-seeking and main-road suspects, N runs per policy (seeds 0..N-1,
the same draws for every policy). Writes ``bench/results/sim.json``::

    {"<map>": {"<crews>": {"<behaviour>": {"<policy>": {"interception_rate", "ci95",
     "pursuit_contacts_per_run", "escape_rate", ...}}}},
     "runs_per_minute": float, "guidance_runs_per_minute": float,
     "upper_bound": {"<map>": {"<crews>": {"<behaviour>": {"rate", "ci95", ...}}}},
     "variants": {"<variant>": {"description", "scenario", "<map>": {...}, "upper_bound": {...}}},
     "meta": {...}}

``runs_per_minute`` is the rate of a batch with the four policies in equal numbers on
``--workers`` processes (harmonic combination of each policy's measured rate).
``guidance_runs_per_minute`` is the guidance policy's own rate on those workers (``workers × 60 /
mean wall time of a guidance run`` over the issue's cells): the number the ≥ 100 target is about.
``meta`` holds each policy's rate, its CPU time per run (what a quiet machine gives), the simulated
seconds per run and the run counts.

``upper_bound`` is the perfect-knowledge bound of every cell (:mod:`sim.bounds`: a crew sent at
t = 0 knowing the suspect's whole route), over the baselines' seeds: no policy can beat it on
those draws. ``variants`` are extra cells beside the issue's (never instead of them), each a
documented change of the scenario; ``centre``: incidents at least 300 s of free-flow driving
from every exit (a CSU's incidents happen in its town, not where the map's extract cuts roads).

    .venv/bin/python bench/sim.py                       # 200 runs per policy
    .venv/bin/python bench/sim.py --guidance-runs 20    # fewer runs of the (slow) guidance policy
    .venv/bin/python bench/sim.py --quick               # under a minute: Monaco, 10 crews, few runs
    .venv/bin/python bench/sim.py --quick --cadence fixed   # the guidance cadence before 2026-11-26
    .venv/bin/python bench/sim.py --runs 40 --first-seed 2000 --variants '' --out /tmp/held_out.json
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

from sim.batch import RunRecord, run_batch, summarise, wilson_interval  # noqa: E402
from sim.bounds import perfect_knowledge  # noqa: E402
from sim.policies import CADENCES, coordinator_for  # noqa: E402
from sim.scenario import POLICIES, build_city, parse_scenario  # noqa: E402
from sim.world import CityContext  # noqa: E402

MAPS = ("harrisburg", "monaco")
CREWS = (5, 10)
BEHAVIOURS = ("exit_seeking", "main_road")

#: Extra cells beside the issue's: a name, what it changes in the scenario, why, and its cells.
VARIANTS: dict[str, dict[str, Any]] = {
    "centre": {
        "scenario": {"incident": {"min_exit_time_s": 300.0}},
        "description": (
            "incidents at least 300 s of free-flow driving from every exit (the issue's cells: 150 s): "
            "a CSU's incidents happen in its town, not next to where the map's extract cuts the roads"
        ),
        "crews": (10,),
        "behaviours": ("exit_seeking",),
    },
}


def _scenario(
    map_name: str, crews: int, behaviour: str, variant: str | None = None, first_seed: int = 0
) -> Any:
    data: dict[str, Any] = {
        "name": f"bench-{map_name}-{crews}-{behaviour}" + (f"-{variant}" if variant else ""),
        "map": {"kind": "file", "path": f"../shared/maps/{map_name}.osm.bz2"},
        "cameras": {"kind": "synthetic", "density": "metz", "seed": 0},
        "crews": {"count": crews, "area": {"radius_m": 3000, "min_distance_m": 300}},
        "suspect": {"behaviour": behaviour},
        "duration_s": 600,
        "seed": first_seed,
        "base_dir": str(ROOT),
    }
    if variant is not None:
        for key, value in VARIANTS[variant]["scenario"].items():
            data[key] = {**data.get(key, {}), **value}
    return parse_scenario(data, source=f"bench {map_name}")


def upper_bound(ctx: CityContext, scenario: Any, runs: int, guidance_runs: int) -> dict[str, Any]:
    """The perfect-knowledge bound over seeds ``0..runs-1`` (and over the guidance's seeds)."""
    bounds = [perfect_knowledge(ctx, scenario, scenario.seed + i) for i in range(max(runs, guidance_runs))]
    won = sum(b.winnable for b in bounds[:runs])
    won_g = sum(b.winnable for b in bounds[:guidance_runs])
    lost = [b for b in bounds[:runs] if not b.winnable]
    return {
        "rate": won / runs,
        "ci95": list(wilson_interval(won, runs)),
        "runs": runs,
        "rate_on_guidance_seeds": won_g / guidance_runs,
        "guidance_runs": guidance_runs,
        "rate_from_first_report": sum(b.winnable_from_first_report for b in bounds[:runs]) / runs,
        "lost_median_margin_s": statistics.median(b.best_margin_s or 0.0 for b in lost) if lost else None,
        "lost_median_end_t_s": statistics.median(b.end_t for b in lost) if lost else None,
    }


def _cell(summary: dict[str, Any]) -> dict[str, Any]:
    cell: dict[str, Any] = {}
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
    return cell


def _rates(records: list[RunRecord], workers: int) -> dict[str, Any]:
    """Each policy's throughput on ``workers`` processes, from its runs' own wall and CPU times."""
    out: dict[str, Any] = {}
    for policy in POLICIES:
        rs = [r for r in records if r.policy == policy]
        if not rs:
            continue
        mean_wall = statistics.fmean(r.wall_s for r in rs)
        mean_cpu = statistics.fmean(r.cpu_s for r in rs)
        out[policy] = {
            "runs": len(rs),
            "runs_per_minute": workers * 60.0 / mean_wall if mean_wall > 0 else None,
            "runs_per_minute_cpu": workers * 60.0 / mean_cpu if mean_cpu > 0 else None,
            "mean_wall_s": mean_wall,
            "mean_cpu_s": mean_cpu,
            "p50_cpu_s": statistics.median(r.cpu_s for r in rs),
            "mean_simulated_s": statistics.fmean(r.t_s for r in rs),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="runs per policy and configuration")
    ap.add_argument(
        "--guidance-runs", type=int, default=None, help="runs of the guidance policy (default --runs)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="run i uses seed first-seed + i (the published cells: 0; held-out checks: e.g. 2000)",
    )
    ap.add_argument("--maps", default=",".join(MAPS))
    ap.add_argument("--crews", default=",".join(str(c) for c in CREWS))
    ap.add_argument("--behaviours", default=",".join(BEHAVIOURS))
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="extra cells beside the issue's ('' for none)"
    )
    ap.add_argument(
        "--cadence", choices=CADENCES, default="events", help="how the guidance policy consults the core"
    )
    ap.add_argument(
        "--quick", action="store_true", help="Monaco, 10 crews, exit-seeking, 12 runs (4 of guidance)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sim.json")
    args = ap.parse_args()
    maps = args.maps.split(",")
    crews_list = [int(c) for c in args.crews.split(",")]
    runs, g_runs = args.runs, args.guidance_runs
    behaviours = tuple(args.behaviours.split(","))
    if args.quick:
        maps, crews_list, runs, g_runs, behaviours = ["monaco"], [10], 12, 4, ("exit_seeking",)
    g_runs = runs if g_runs is None else g_runs
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; expected some of {', '.join(VARIANTS)}")

    doc: dict[str, Any] = {}
    bounds_doc: dict[str, Any] = {}
    variants_doc: dict[str, Any] = {
        v: {"description": VARIANTS[v]["description"], "scenario": VARIANTS[v]["scenario"], "upper_bound": {}}
        for v in variants
    }
    records: list[RunRecord] = []
    variant_records: list[RunRecord] = []
    start_all = time.perf_counter()
    for map_name in maps:
        base = _scenario(map_name, crews_list[0], BEHAVIOURS[0])
        t0 = time.perf_counter()
        ctx = CityContext(build_city(base))
        ctx.extras["cadence"] = args.cadence
        # Build guidance's Coordinator here: forked workers inherit it (and one consistent
        # snapshot of the guidance code) instead of each building their own.
        coordinator_for(ctx)
        print(
            f"{map_name}: {ctx.graph.n_nodes} crossings, {len(ctx.camera_ids)} cameras, "
            f"{ctx.exits.size} exits (loaded in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        cells: list[tuple[str | None, int, str]] = [(None, c, b) for c in crews_list for b in behaviours]
        for v in variants:
            cells += [
                (v, c, b)
                for c in VARIANTS[v]["crews"]
                if c in crews_list
                for b in VARIANTS[v]["behaviours"]
                if b in behaviours
            ]
        for variant, crews, behaviour in cells:
            sc = _scenario(map_name, crews, behaviour, variant, args.first_seed)
            recs = run_batch(
                sc, runs=runs, policies=("chase", "nearest", "static"), workers=args.workers, ctx=ctx
            )
            recs += run_batch(sc, runs=g_runs, policies=("guidance",), workers=args.workers, ctx=ctx)
            (records if variant is None else variant_records).extend(recs)
            top = doc if variant is None else variants_doc[variant]
            bounds = bounds_doc if variant is None else variants_doc[variant]["upper_bound"]
            cell = _cell(summarise(recs))
            top.setdefault(map_name, {}).setdefault(str(crews), {})[behaviour] = cell
            bound = upper_bound(ctx, sc, runs, g_runs)
            bounds.setdefault(map_name, {}).setdefault(str(crews), {})[behaviour] = bound
            _print_cell(map_name, crews, behaviour + (f" [{variant}]" if variant else ""), cell, bound)
    wall_all = time.perf_counter() - start_all

    # Throughput: each policy's rate on the workers, from its runs' own wall times.
    meta_rates = _rates(records, args.workers)
    rates = [m["runs_per_minute"] for m in meta_rates.values() if m["runs_per_minute"]]
    doc["runs_per_minute"] = len(rates) / sum(1.0 / r for r in rates) if rates else 0.0
    guidance = meta_rates.get("guidance", {})
    doc["guidance_runs_per_minute"] = guidance.get("runs_per_minute") or 0.0
    doc["upper_bound"] = bounds_doc
    doc["variants"] = variants_doc
    doc["meta"] = {
        "runs_per_policy": runs,
        "guidance_runs": g_runs,
        "first_seed": args.first_seed,
        "workers": args.workers,
        "cadence": args.cadence,
        "wall_s": wall_all,
        "per_policy": meta_rates,
        "variants_per_policy": _rates(variant_records, args.workers),
        "quick": args.quick,
        "note": (
            "runs_per_minute: four policies in equal numbers, harmonic mean of the per-policy rates; "
            "guidance_runs_per_minute: the guidance policy alone (workers x 60 / mean wall s of its runs "
            "in the issue's cells); runs_per_minute_cpu: the same from CPU time (a quiet machine)"
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"{'policy':<9} {'runs':>5} {'runs/min':>9} {'wall s/run':>10} {'cpu s/run':>9} {'sim s/run':>9}")
    for policy, m in meta_rates.items():
        print(
            f"{policy:<9} {m['runs']:>5} {m['runs_per_minute']:>9.1f} {m['mean_wall_s']:>10.3f} "
            f"{m['mean_cpu_s']:>9.3f} {m['mean_simulated_s']:>9.0f}"
        )
    print(f"four-policy batch: {doc['runs_per_minute']:.1f} runs/min on {args.workers} workers")
    if guidance:
        print(
            f"GUIDANCE: {doc['guidance_runs_per_minute']:.1f} runs/min on {args.workers} workers "
            f"(target 100; {guidance['mean_wall_s']:.3f} s wall, {guidance['mean_cpu_s']:.3f} s CPU per run, "
            f"{guidance['runs_per_minute_cpu']:.1f} runs/min from CPU time; "
            f"{guidance['mean_simulated_s']:.0f} simulated s per run; cadence {args.cadence})"
        )
    print(f"wrote {args.out} ({wall_all:.0f} s)")


def _print_cell(
    map_name: str, crews: int, behaviour: str, cell: dict[str, Any], bound: dict[str, Any]
) -> None:
    print(
        f"{map_name:<11} {crews:>2} {behaviour:<13} upper bound (perfect knowledge) {bound['rate']:.3f} "
        f"[{bound['ci95'][0]:.3f}, {bound['ci95'][1]:.3f}] n={bound['runs']}; "
        f"{bound['rate_on_guidance_seeds']:.3f} on guidance's {bound['guidance_runs']} seeds",
        flush=True,
    )
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
