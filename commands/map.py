"""``cordon map``: inspect street maps, generate cities, check camera coverage."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import typer
from tqdm import tqdm

from map_data.errors import MapDataError

map_app = typer.Typer(no_args_is_help=True, help="Street maps, generated cities and camera coverage.")


def register(app: typer.Typer) -> None:
    """Add the ``map`` command group to ``app``."""
    app.add_typer(map_app, name="map")


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


def _progress(total: int, desc: str) -> tqdm:  # type: ignore[type-arg]
    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), leave=False)


@map_app.command("info")
def info(path: Path = typer.Argument(..., help="Map file: .osm, .osm.bz2 or .graphml")) -> None:
    """Nodes, edges, CRS, bounding box and road classes of a map file."""
    from map_data.city import exit_nodes
    from map_data.compile import compile_graph
    from map_data.graph import graph_from_file

    try:
        with _progress(2, "loading map") as bar:
            G = graph_from_file(path)
            bar.update()
            graph = compile_graph(G)
            bar.update()
    except MapDataError as exc:
        raise _fail(exc) from exc
    lon_min, lat_min = graph.node_lonlat.min(axis=0)
    lon_max, lat_max = graph.node_lonlat.max(axis=0)
    typer.echo(f"map      {graph.name} ({path})")
    typer.echo(f"nodes    {graph.n_nodes}")
    typer.echo(f"edges    {graph.n_edges}")
    typer.echo(f"crs      {graph.crs}")
    typer.echo(f"bbox     lon {lon_min:.5f} .. {lon_max:.5f}, lat {lat_min:.5f} .. {lat_max:.5f}")
    typer.echo(f"one-way  {int(graph.edge_oneway.sum())} edges")
    typer.echo(f"bridges  {int(graph.edge_bridge.sum())} edges")
    typer.echo(f"exits    {exit_nodes(graph).size} crossings")
    typer.echo("road classes (edges, km):")
    counts = Counter(graph.edge_highway)
    km: dict[str, float] = {}
    for highway, length in zip(graph.edge_highway, graph.edge_length_m.tolist(), strict=True):
        km[highway] = km.get(highway, 0.0) + length / 1000.0
    for highway, count in counts.most_common():
        typer.echo(f"  {highway or '(none)':<16} {count:>7} {km[highway]:>9.1f}")


@map_app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", help="GraphML file to write"),
    crossings: int = typer.Option(2000, "--crossings", help="Number of crossings (nodes), 200 to 200,000"),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same city"),
    name: str | None = typer.Option(None, "--name", help="Name of the city"),
) -> None:
    """Generate a city (streets, arterials, ring road, river and bridges) and save it as GraphML."""
    import osmnx as ox

    from map_data.generate import generate_city

    try:
        with _progress(2, "generating city") as bar:
            G = generate_city(crossings, seed=seed, name=name)
            bar.update()
            out.parent.mkdir(parents=True, exist_ok=True)
            ox.save_graphml(G, out)
            bar.update()
    except (ValueError, OSError) as exc:
        raise _fail(exc) from exc
    bridges = sum(1 for *_, d in G.edges(data=True) if d.get("bridge"))
    exits = sum(1 for _, d in G.nodes(data=True) if d.get("exit"))
    typer.echo(
        f"wrote {out}: {G.number_of_nodes()} nodes, {G.number_of_edges()} edges, "
        f"{bridges} bridge edges, {exits} exits (seed {seed})"
    )


@map_app.command("cameras")
def cameras(
    map_path: Path = typer.Argument(..., help="Map file: .osm, .osm.bz2 or .graphml"),
    cameras_path: Path = typer.Option(..., "--cameras", help="Camera file: .geojson, .csv or .osm[.bz2]"),
    strict: bool = typer.Option(False, "--strict", help="Exit with an error if any camera is skipped"),
    show: int = typer.Option(20, "--show", help="How many skipped cameras to list"),
) -> None:
    """Coverage report: which cameras map onto the streets, which are skipped and why."""
    from map_data.cameras import build_camera_network_report, cameras_from_file, coverage_summary
    from map_data.compile import compile_graph
    from map_data.graph import graph_from_file

    try:
        with _progress(3, "mapping cameras") as bar:
            graph = compile_graph(graph_from_file(map_path))
            bar.update()
            records = cameras_from_file(cameras_path)
            bar.update()
            coverage = build_camera_network_report(graph, records)
            bar.update()
    except MapDataError as exc:
        raise _fail(exc) from exc
    summary = coverage_summary(coverage.network)
    typer.echo(f"cameras in file   {len(records)}")
    typer.echo(f"mapped            {len(coverage.network.cameras)}")
    typer.echo(f"skipped           {len(coverage.skipped)}")
    for kind, count in Counter(type(s.error).__name__ for s in coverage.skipped).most_common():
        typer.echo(f"  {kind:<24} {count}")
    typer.echo(f"edges seen        {int(summary['edges_seen'])} of {graph.n_edges}")
    typer.echo(f"street seen       {summary['metres_seen'] / 1000.0:.2f} km (camera-edge stretches)")
    for skipped in coverage.skipped[:show]:
        typer.echo(f"  skipped: {skipped.reason}")
    if len(coverage.skipped) > show:
        typer.echo(f"  ... and {len(coverage.skipped) - show} more")
    if strict and coverage.skipped:
        raise typer.Exit(code=1)
