"""Report plots (PNG, matplotlib Agg): policies side by side, and a map of one run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from map_data.types import CompiledGraph
from sim.replay import Replay

_COLOURS = {"guidance": "#1b9e77", "chase": "#d95f02", "nearest": "#7570b3", "static": "#666666"}


def policies_png(summary: Mapping[str, Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Interception rate (95 % interval), pursuit contacts per run and median time to
    interception, one bar per policy."""
    names = list(summary)
    colours = [_COLOURS.get(n, "#999999") for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    rate = np.array([summary[n]["interception_rate"] for n in names])
    lo = np.array([summary[n]["ci95"][0] for n in names])
    hi = np.array([summary[n]["ci95"][1] for n in names])
    axes[0].bar(names, rate, color=colours, yerr=[rate - lo, hi - rate], capsize=4)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("interception rate (95 % CI)")
    axes[1].bar(names, [summary[n]["pursuit_contacts_per_run"] for n in names], color=colours)
    axes[1].set_title("pursuit contacts per run")
    med = [summary[n]["median_time_to_interception_s"] or 0.0 for n in names]
    axes[2].bar(names, med, color=colours)
    axes[2].set_title("median time to interception (s)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    runs = max((int(summary[n]["runs"]) for n in names), default=0)
    fig.suptitle(f"{title} ({runs} runs per policy)" if title else f"{runs} runs per policy")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def run_map_png(replay: Replay, path: str | Path, *, graph: CompiledGraph | None = None) -> Path:
    """A map of one run: streets (when ``graph`` is given), the suspect's and crews'
    trajectories, sightings (cameras reported), suggested targets and the outcome."""
    fig, ax = plt.subplots(figsize=(8, 8))
    if graph is not None:
        segs = [graph.edge_lonlat(e) for e in range(graph.n_edges)]
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segs, colors="#dddddd", linewidths=0.6, zorder=0))
    moves = replay.of_type("move")
    crews: dict[str, list[dict[str, Any]]] = {}
    for m in moves:
        crews.setdefault(str(m["agent"]), []).append(m)
    palette = plt.get_cmap("tab10")
    for i, (agent, ms) in enumerate(sorted(crews.items())):
        xs = [c for m in ms for c in (m["from"][0], m["to"][0], np.nan)]
        ys = [c for m in ms for c in (m["from"][1], m["to"][1], np.nan)]
        if agent == "suspect":
            ax.plot(xs, ys, color="#d62728", lw=2.2, zorder=3, label="suspect")
        else:
            ax.plot(xs, ys, color=palette(i % 10), lw=1.2, alpha=0.8, zorder=2)
    h = replay.header
    for c in h["crews"]:
        ax.plot(c["lon"], c["lat"], "s", color="#1f77b4", ms=6, zorder=4)
    ax.plot(h["origin"]["lon"], h["origin"]["lat"], "*", color="black", ms=14, zorder=5, label="incident")
    sight = [s["at"] for s in replay.of_type("sighting") if s["at"][0] is not None]
    if sight:
        ax.plot(*np.array(sight).T, "o", mfc="none", mec="#ff7f0e", ms=9, zorder=4, label="sightings")
    sugg = [s["at"] for s in replay.of_type("suggestion")]
    if sugg:
        ax.plot(*np.array(sugg).T, "x", color="#2ca02c", ms=8, zorder=4, label="suggested targets")
    outcome = replay.of_type("outcome")
    title = f"{h.get('map', '')} — policy {h['policy']}, seed {h['seed']}"
    if outcome:
        o = outcome[-1]
        title += f": {o['kind']} at {o['t']:.0f} s, {o['contacts']} pursuit contact(s)"
        if o["node"] is not None:
            ends = [m["to"] for m in moves if m["agent"] == "suspect" and m["v"] == o["node"]]
            if ends:
                ax.plot(*ends[-1], "P", color="black", ms=12, zorder=6, label=o["kind"])
    ax.set_title(title, fontsize=9)
    ax.set_aspect(1 / np.cos(np.radians(h["origin"]["lat"])))
    ax.autoscale_view()
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("lon")
    ax.set_ylabel("lat")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
