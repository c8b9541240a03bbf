"""``cordon sim``: run simulated exercises (one run with its replay, or a Monte Carlo batch)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

sim_app = typer.Typer(no_args_is_help=True, help="Simulated exercises: one run, batches, replays.")


def register(app: typer.Typer) -> None:
    """Add the ``sim`` command group to ``app``."""
    app.add_typer(sim_app, name="sim")


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


@sim_app.command("run")
def run(
    scenario_path: Path = typer.Argument(..., help="Scenario file (.json, .yaml)"),
    policy: str | None = typer.Option(None, help="Override the scenario's policy"),
    seed: int | None = typer.Option(None, help="Override the scenario's seed"),
    out: Path = typer.Option(Path("sim-out"), help="Directory for the replay and the map"),
    plot: bool = typer.Option(True, help="Draw the run's map (PNG)"),
    server: str | None = typer.Option(
        None,
        "--server",
        help="Drive a running server (cordon serve --clock simulation) as its clients: "
        "sightings over REST, crews as tablets following its suggestions",
    ),
    token: str | None = typer.Option(
        None, help="With --server: a trainer's token (default: the server's demo token endpoint)"
    ),
    crew_tokens: Path | None = typer.Option(
        None, help='With --server: JSON file {"crew-1": "<token>", ...} (default: demo tokens)'
    ),
    plan_timeout: float = typer.Option(10.0, help="With --server: seconds to wait for each answer"),
) -> None:
    """One run: prints the outcome, writes its replay file (JSON lines) and a map.

    With ``--server URL`` the crews are directed by that server instead of an in-process
    Coordinator (see docs/simulator.md, "Driving a live server")."""
    from sim.outcomes import recompute
    from sim.replay import read_replay, write_replay
    from sim.scenario import ScenarioError, build_city, load_scenario
    from sim.world import CityContext, run_scenario

    try:
        scenario = load_scenario(scenario_path).with_run(seed=seed, policy=policy)
        ctx = CityContext(build_city(scenario))
    except (ScenarioError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    start = time.perf_counter()
    live_stats = None
    if server is None:
        result = run_scenario(ctx, scenario)
    else:
        import httpx

        from serving.client import CordonHTTPError
        from sim.live import LiveError, run_live_sync

        try:
            tokens = _crew_tokens(crew_tokens) if crew_tokens is not None else None
            live = run_live_sync(
                ctx,
                scenario,
                server,
                token=token,
                crew_tokens=tokens,
                plan_timeout_s=plan_timeout,
                echo=typer.echo,
            )
        except (LiveError, CordonHTTPError, httpx.HTTPError, ValueError, OSError) as exc:
            raise _fail(exc) from exc
        result, live_stats = live.result, live.stats
        scenario = result.scenario
    wall = time.perf_counter() - start
    stem = f"{scenario.name}-{scenario.policy}{'-live' if server else ''}-s{scenario.seed}"
    replay_path = write_replay(result, out / f"{stem}.replay.jsonl")
    o = result.outcome
    typer.echo(f"scenario  {scenario.name} (policy {scenario.policy}, seed {scenario.seed})")
    typer.echo(f"map       {ctx.graph.name}: {ctx.graph.n_nodes} crossings, {len(ctx.camera_ids)} cameras")
    typer.echo(f"outcome   {o.kind} at {o.t:.1f} s" + (f" by {o.crew_id}" if o.crew_id else ""))
    typer.echo(f"contacts  {len(o.contacts)} pursuit contact(s)")
    typer.echo(f"sightings {len(result.recording.sightings)} delivered")
    typer.echo(f"crew km   {result.crew_km:.2f}")
    typer.echo(f"replay    {replay_path}")
    if live_stats is not None:
        s = live_stats
        got = sum(s.suggestions_received.values())
        typer.echo(f"server    {s.base_url}, incident {s.incident_id}")
        typer.echo(
            f"live      {s.sightings_posted} sightings posted, {s.plans} plans, {got} suggestions on "
            f"{len(s.suggestions_received)} tablets, {s.accepted} accepted, {s.declined} declined, "
            f"{s.in_position} in position, {s.plan_timeouts} timeouts"
        )
    verdict = recompute(read_replay(replay_path))
    if verdict.kind != o.kind or verdict.crew_id != o.crew_id or len(verdict.contacts) != len(o.contacts):
        typer.echo(
            f"warning: the replay recomputes to {verdict.kind} ({len(verdict.contacts)} contacts)", err=True
        )
    if plot:
        from sim.report import run_map_png

        png = run_map_png(read_replay(replay_path), out / f"{stem}.map.png", graph=ctx.graph)
        typer.echo(f"map       {png}")
    typer.echo(f"wall      {wall:.2f} s")


def _crew_tokens(path: Path) -> dict[str, str]:
    """``{"crew-1": "<token>", ...}`` from a JSON file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise ValueError(f'{path}: expected an object {{"crew-1": "<token>", ...}}')
    return doc


@sim_app.command("batch")
def batch(
    scenario_path: Path = typer.Argument(..., help="Scenario file (.json, .yaml)"),
    runs: int = typer.Option(100, help="Runs per policy (seeds scenario.seed .. + runs - 1)"),
    policies: str = typer.Option("guidance,chase,nearest,static", help="Comma-separated policies"),
    workers: int = typer.Option(2, help="Worker processes"),
    out: Path = typer.Option(Path("sim-out"), help="Directory for the summary and the report"),
) -> None:
    """Monte Carlo over seeds: a JSON summary per policy and a report (PNG plots)."""
    from sim.batch import records_json, run_batch, summarise
    from sim.replay import read_replay, write_replay
    from sim.report import policies_png, run_map_png
    from sim.scenario import ScenarioError, build_city, load_scenario
    from sim.world import CityContext, run_scenario

    names = [p.strip() for p in policies.split(",") if p.strip()]
    try:
        scenario = load_scenario(scenario_path)
        ctx = CityContext(build_city(scenario))
        start = time.perf_counter()
        records = run_batch(scenario, runs=runs, policies=names, workers=workers, ctx=ctx)
    except (ScenarioError, ValueError, OSError) as exc:
        raise _fail(exc) from exc
    wall = time.perf_counter() - start
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario.model_dump(mode="json"),
        "runs_per_policy": runs,
        "workers": workers,
        "wall_s": wall,
        "runs_per_minute": len(records) / wall * 60.0 if wall > 0 else None,
        "policies": summary,
        "runs": records_json(records),
    }
    summary_path = out / f"{scenario.name}.summary.json"
    summary_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    png = policies_png(summary, out / f"{scenario.name}.policies.png", title=scenario.name)
    first = names[0]
    example = write_replay(
        run_scenario(ctx, scenario.with_run(policy=first)), out / f"{scenario.name}-{first}.replay.jsonl"
    )
    map_png = run_map_png(read_replay(example), out / f"{scenario.name}-{first}.map.png", graph=ctx.graph)
    typer.echo(
        f"{'policy':<10} {'intercept':>9} {'95% CI':>15} {'median s':>9} {'contacts/run':>12} {'escapes':>8}"
    )
    for name, s in summary.items():
        med = s["median_time_to_interception_s"]
        typer.echo(
            f"{name:<10} {s['interception_rate']:>9.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] "
            f"{(f'{med:.0f}' if med is not None else '-'):>9} {s['pursuit_contacts_per_run']:>12.2f} "
            f"{s['escapes']:>8}"
        )
    typer.echo(
        f"{len(records)} runs in {wall:.1f} s ({doc['runs_per_minute']:.0f} runs/min, {workers} workers)"
    )
    typer.echo(f"summary   {summary_path}")
    typer.echo(f"report    {png}, {map_png}")


@sim_app.command("check")
def check(replay_path: Path = typer.Argument(..., help="Replay file (.jsonl)")) -> None:
    """Recompute a replay's outcome from the file alone and compare with the recorded one."""
    from sim.outcomes import recompute, recorded_verdict
    from sim.replay import ReplayError, read_replay

    try:
        replay = read_replay(replay_path)
    except ReplayError as exc:
        raise _fail(exc) from exc
    got, recorded = recompute(replay), recorded_verdict(replay)
    typer.echo(f"recomputed {got.kind} at {got.t:.1f} s, {len(got.contacts)} contact(s), crew {got.crew_id}")
    typer.echo(
        f"recorded   {recorded.kind} at {recorded.t:.1f} s, {len(recorded.contacts)} contact(s), "
        f"crew {recorded.crew_id}"
    )
    same = (got.kind, got.node, got.crew_id, len(got.contacts)) == (
        recorded.kind,
        recorded.node,
        recorded.crew_id,
        len(recorded.contacts),
    ) and abs(got.t - recorded.t) < 1e-6
    if not same:
        typer.echo("MISMATCH", err=True)
        raise typer.Exit(code=1)
    typer.echo("match")


@sim_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of scenario files."""
    from sim.scenario import scenario_schema

    typer.echo(json.dumps(scenario_schema(), indent=2))
