"""Monte Carlo over seeds: many runs of one scenario per policy, in parallel, and their summary.

Run ``i`` of every policy uses seed ``scenario.seed + i``: the same incident, crews and (unless
it reacts to crews) suspect route for every policy, so policies are compared on the same
draws. Workers are processes (``concurrent.futures.ProcessPoolExecutor``); each builds the
city once (its initializer), or inherits it from the parent when processes are forked.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from sim.scenario import POLICIES, Scenario, ScenarioError, build_city
from sim.world import CityContext, run_scenario


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The numbers of one run, all a summary needs."""

    policy: str
    seed: int
    kind: str
    t_s: float
    contacts: int
    crew_km: float
    suggestion_changes: int
    crew_minutes: float
    sightings: int
    wall_s: float
    #: CPU time of the run in its worker (``time.thread_time``): what it costs on a quiet core.
    cpu_s: float = 0.0


def wilson_interval(successes: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_one(ctx: CityContext, scenario: Scenario, policy: str, seed: int) -> RunRecord:
    """One run, reduced to a :class:`RunRecord`."""
    start, cpu_start = time.perf_counter(), time.thread_time()
    result = run_scenario(ctx, scenario.with_run(seed=seed, policy=policy))
    o = result.outcome
    return RunRecord(
        policy=policy,
        seed=seed,
        kind=o.kind,
        t_s=o.t,
        contacts=len(o.contacts),
        crew_km=result.crew_km,
        suggestion_changes=result.suggestion_changes,
        crew_minutes=result.crew_minutes,
        sightings=len(result.recording.sightings),
        wall_s=time.perf_counter() - start,
        cpu_s=time.thread_time() - cpu_start,
    )


# Per-process state of a worker: its scenario and city (set by the initializer, or inherited).
_WORKER: dict[str, Any] = {}


def _init_worker(scenario: Scenario, warm: bool = False) -> None:
    if warm:  # a spawned worker: the core's kernels loaded before its runs are timed
        from sim.policies import warm_up_core

        warm_up_core()
    key = scenario.model_dump_json()
    if _WORKER.get("key") != key:
        _WORKER["ctx"] = CityContext(build_city(scenario))
        _WORKER["key"] = key
    _WORKER["scenario"] = scenario


def _work(task: tuple[str, int]) -> RunRecord:
    policy, seed = task
    return run_one(_WORKER["ctx"], _WORKER["scenario"], policy, seed)


def run_batch(
    scenario: Scenario,
    *,
    runs: int,
    policies: Sequence[str] = POLICIES,
    workers: int = 2,
    ctx: CityContext | None = None,
    progress: bool | None = None,
    on_record: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """``runs`` runs of ``scenario`` under each policy; records in (policy, seed) order.

    With ``workers > 1`` runs go to a process pool; ``ctx`` (when given) is inherited by forked
    workers instead of being rebuilt. ``progress`` shows a tqdm bar (default: on a terminal)."""
    from tqdm import tqdm

    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ScenarioError(f"unknown policy {bad[0]!r}; expected some of {', '.join(POLICIES)}")
    if runs < 1:
        raise ScenarioError(f"runs must be >= 1, got {runs}")
    tasks = [(p, scenario.seed + i) for p in policies for i in range(runs)]
    show = sys.stderr.isatty() if progress is None else progress
    records: list[RunRecord] = []
    with tqdm(total=len(tasks), desc="sim runs", disable=not show, unit="run") as bar:

        def collect(recs: Iterable[RunRecord]) -> None:
            for rec in recs:
                records.append(rec)
                bar.update()
                if on_record is not None:
                    on_record(rec)

        guided = "guidance" in policies
        if workers <= 1:
            if guided:  # the kernels' loading kept out of the first run's measured time
                from sim.policies import warm_up_core

                warm_up_core()
            context = ctx or CityContext(build_city(scenario))
            collect(run_one(context, scenario, p, s) for p, s in tasks)
        else:
            methods = multiprocessing.get_all_start_methods()
            method = "fork" if "fork" in methods else "spawn"
            if method == "fork" and guided:
                from sim.policies import warm_up_core

                warm_up_core()  # the core's kernels, loaded once here rather than in every worker
            if ctx is not None and method == "fork":
                _WORKER.update(ctx=ctx, key=scenario.model_dump_json())
            # Interleave policies so the pool's load (guidance is slower) stays balanced.
            order = sorted(tasks, key=lambda t: (t[1], t[0]))
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context(method),
                initializer=_init_worker,
                initargs=(scenario, guided and method == "spawn"),
            ) as pool:
                collect(pool.map(_work, order, chunksize=max(1, min(8, len(order) // (workers * 8) or 1))))
    records.sort(key=lambda r: (list(policies).index(r.policy), r.seed))
    return records


def summarise(records: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per policy: interception rate with a 95 % Wilson interval, median time to interception,
    pursuit contacts, escapes (exit reached / duration ended), crew kilometres and suggestion
    changes per crew-minute."""
    out: dict[str, dict[str, Any]] = {}
    policies: list[str] = []
    for r in records:
        if r.policy not in policies:
            policies.append(r.policy)
    for policy in policies:
        rs = [r for r in records if r.policy == policy]
        n = len(rs)
        hits = [r for r in rs if r.kind == "interception"]
        exits = sum(r.kind == "escape" for r in rs)
        timeouts = sum(r.kind == "timeout" for r in rs)
        crew_min = sum(r.crew_minutes for r in rs)
        lo, hi = wilson_interval(len(hits), n)
        out[policy] = {
            "runs": n,
            "interceptions": len(hits),
            "interception_rate": len(hits) / n if n else 0.0,
            "ci95": [lo, hi],
            "median_time_to_interception_s": statistics.median(r.t_s for r in hits) if hits else None,
            "pursuit_contacts": sum(r.contacts for r in rs),
            "pursuit_contacts_per_run": sum(r.contacts for r in rs) / n if n else 0.0,
            "runs_with_contact": sum(r.contacts > 0 for r in rs),
            "escapes": exits + timeouts,
            "escapes_exit": exits,
            "escapes_timeout": timeouts,
            "escape_rate": (exits + timeouts) / n if n else 0.0,
            "crew_km_per_run": sum(r.crew_km for r in rs) / n if n else 0.0,
            "suggestion_changes_per_crew_minute": (
                sum(r.suggestion_changes for r in rs) / crew_min if crew_min else 0.0
            ),
            "median_sightings": statistics.median(r.sightings for r in rs) if rs else 0,
            "median_run_wall_s": statistics.median(r.wall_s for r in rs) if rs else 0.0,
        }
    return out


def records_json(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
