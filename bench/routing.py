"""Benchmark: street-graph loading, the compiled cache and one-to-all travel times.

For each map (Harrisburg from ``../shared/maps``, generated cities of 10k and 50k crossings):

* ``load_compile_s``: parse/generate the graph and compile it;
* ``cached_load_s``: start from the on-disk cache (median of 3): ``load_compiled_from_file``
  for a map file (hashes the file, reads the entry, no parsing), reading the cache entry
  for a generated city;
* ``one_to_all_ms``: median of ``map_data.routing.times_from_nodes`` from one random node to
  all (scipy csgraph Dijkstra on the compiled CSR);
* ``networkx_one_to_all_ms``: median of ``networkx.single_source_dijkstra_path_length``
  (weight ``travel_time``) on the same graph, measured in the same run (the baseline);
* ``speedup`` = networkx / compiled; ``peak_mb``: peak resident memory of the process that
  measured the map (each map runs in its own subprocess, so peaks do not mix);
* ``snaps_per_s``: :class:`map_data.snap.Snapper` snaps of random points.

Run ``python bench/routing.py`` (full) or ``--quick`` (< 1 min: fewer repetitions, no 50k city).
Writes ``bench/results/routing.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MAPS = ("harrisburg", "generated_10k", "generated_50k")
TARGET_MS_10K = 2.0
TARGET_SPEEDUP = 20.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(name: str, *, reps: int, nx_reps: int, cache_dir: Path) -> dict[str, Any]:
    """Measure one map in this process (called in a subprocess by :func:`main`)."""
    import networkx as nx
    import numpy as np

    from map_data.cache import load_compiled, load_compiled_from_file, read_compiled
    from map_data.compile import compile_graph, graph_hash
    from map_data.graph import graph_from_xml
    from map_data.routing import times_from_nodes
    from map_data.snap import Snapper

    baseline_mb = _rss_mb()
    if name.startswith("generated_"):
        from map_data.generate import generate_city

        n = int(name.split("_")[1].rstrip("k")) * 1000
        start = time.perf_counter()
        G = generate_city(n, seed=1)
        graph = compile_graph(G)
        load_compile_s = time.perf_counter() - start
        load_compiled(G, cache_dir=cache_dir)  # writes the entry
        entry = cache_dir / f"graph-{graph_hash(G)}.npz"
        cached = []
        for _ in range(3):
            start = time.perf_counter()
            read_compiled(entry)
            cached.append(time.perf_counter() - start)
    else:
        path = ROOT.parent / "shared" / "maps" / f"{name}.osm.bz2"
        start = time.perf_counter()
        G = graph_from_xml(path)
        graph = compile_graph(G)
        load_compile_s = time.perf_counter() - start
        load_compiled_from_file(path, cache_dir=cache_dir)  # writes the entry
        cached = []
        for _ in range(3):
            start = time.perf_counter()
            _, hit = load_compiled_from_file(path, cache_dir=cache_dir)
            cached.append(time.perf_counter() - start)
            assert hit

    rng = np.random.default_rng(2026)
    sources = rng.integers(0, graph.n_nodes, reps)
    times_from_nodes(graph, [int(sources[0])])  # warm-up
    compiled_ms = []
    for s in sources:
        start = time.perf_counter()
        times_from_nodes(graph, [int(s)])
        compiled_ms.append((time.perf_counter() - start) * 1e3)

    nx_ms = []
    max_diff = 0.0
    for s in sources[:nx_reps]:
        osmid = int(graph.node_osmid[s])
        start = time.perf_counter()
        lengths = nx.single_source_dijkstra_path_length(G, osmid, weight="travel_time")
        nx_ms.append((time.perf_counter() - start) * 1e3)
        ours = times_from_nodes(graph, [int(s)])[0]
        theirs = np.full(graph.n_nodes, np.inf)
        for node, value in lengths.items():
            theirs[graph.node_index[int(node)]] = value
        max_diff = max(max_diff, float(np.max(np.abs(np.where(np.isinf(theirs), 0, ours - theirs)))))

    snapper = Snapper(graph)
    lo, hi = graph.node_lonlat.min(axis=0), graph.node_lonlat.max(axis=0)
    points = rng.uniform(lo, hi, size=(2000, 2))
    start = time.perf_counter()
    snapper.snap_many(points)
    snaps_per_s = len(points) / (time.perf_counter() - start)

    one_ms, nx_one_ms = _median(compiled_ms), _median(nx_ms)
    return {
        "nodes": graph.n_nodes,
        "edges": graph.n_edges,
        "one_to_all_ms": round(one_ms, 4),
        "networkx_one_to_all_ms": round(nx_one_ms, 3),
        "speedup": round(nx_one_ms / one_ms, 1),
        "cached_load_s": round(_median(cached), 4),
        "load_compile_s": round(load_compile_s, 3),
        "peak_mb": round(_rss_mb(), 1),
        "baseline_mb": round(baseline_mb, 1),
        "snaps_per_s": round(snaps_per_s),
        "reps": len(compiled_ms),
        "networkx_reps": len(nx_ms),
        "max_abs_diff_s": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 min)")
    parser.add_argument(
        "--maps", nargs="*", default=None, choices=MAPS, help="default: all (--quick: no 50k)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "routing.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one map, print JSON
    parser.add_argument("--reps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--nx-reps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(measure(args.one, reps=args.reps, nx_reps=args.nx_reps, cache_dir=args.cache_dir)))
        return 0

    reps, nx_reps = (30, 3) if args.quick else (300, 20)
    maps = (
        args.maps if args.maps is not None else [m for m in MAPS if not (args.quick and m == "generated_50k")]
    )
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cordon-bench-") as tmp:
        for name in maps:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--one",
                name,
                "--reps",
                str(reps),
                "--nx-reps",
                str(nx_reps),
                "--cache-dir",
                tmp,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            if proc.returncode != 0:
                print(f"{name}: FAILED\n{proc.stderr}", file=sys.stderr)
                return 1
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])

    header = (
        f"{'map':<15}{'nodes':>8}{'edges':>9}{'1-to-all ms':>13}{'networkx ms':>13}{'speedup':>9}"
        f"{'load+comp s':>13}{'cached s':>10}{'peak MB':>9}{'snaps/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<15}{r['nodes']:>8}{r['edges']:>9}{r['one_to_all_ms']:>13.3f}"
            f"{r['networkx_one_to_all_ms']:>13.1f}{r['speedup']:>9.1f}{r['load_compile_s']:>13.2f}"
            f"{r['cached_load_s']:>10.3f}{r['peak_mb']:>9.0f}{r['snaps_per_s']:>9}"
        )
    if "generated_10k" in results:
        r = results["generated_10k"]
        ok_ms = r["one_to_all_ms"] <= TARGET_MS_10K
        ok_speedup = r["speedup"] >= TARGET_SPEEDUP
        print(
            f"\ntargets at 10k crossings: one-to-all {r['one_to_all_ms']:.3f} ms "
            f"(<= {TARGET_MS_10K} ms: {'met' if ok_ms else 'MISSED'}), "
            f"speedup {r['speedup']:.0f}x (>= {TARGET_SPEEDUP:.0f}x: {'met' if ok_speedup else 'MISSED'})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
