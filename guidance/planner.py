"""Interception planning: place available crews ahead of the suspect on its likely routes.

A crossing is an interception point for a crew when ``crew ETA + safety margin`` is at most the
suspect's arrival there. Each candidate crossing is offered at a few levels of the sampled
routes' arrival times (:attr:`PlannerConfig.arrival_levels`: the earliest ETA, never below the
physical bound, then quantiles): the point "crossing at level q" covers the routes reaching it
no earlier than its level's time, so a crew too slow for the fastest routes can still cover
the later ones. The plan gives each eligible crew one point or a hold, maximising the share of
sampled escape routes that pass a manned point after the crew got there with the margin
(:mod:`guidance.coverage`); crews thus spread over distinct routes, and a point behind the
suspect is never a candidate (nobody is sent to chase). A suggestion's
``suspect_earliest_eta_s`` is the earliest arrival among the routes it covers. Targets from the
previous plan are kept unless the fresh plan covers clearly more (hysteresis). With many crews,
only a shortlist of them is considered (``PlannerConfig.crew_shortlist``): the fastest ones to
the likeliest candidate crossings, and those of the previous plan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import scipy.sparse as sp
import shapely
import shapely.wkt
from scipy.sparse.csgraph import dijkstra

from guidance.coverage import CoverageProblem, CoverageSolution, lazy_greedy
from guidance.prediction import first_arrivals
from guidance.types import (
    Crew,
    CrewStatus,
    EscapePrediction,
    GuidanceError,
    NoGoArea,
    Plan,
    PlannerConfig,
    Suggestion,
)
from map_data.jit import jit
from map_data.network_types import City
from map_data.routing import path_from_predecessors, path_lonlat
from map_data.types import BoolArray, CompiledGraph, FloatArray, IntArray

PLANNER_VERSION = "max-coverage/5"
_CREW_CACHE_BYTES = 64 * 2**20  # Dijkstra rows kept by an InterceptionPlanner (cleared when full)
_ROUTE_CACHE_SIZE = 4096  # suggestion routes and labels kept by an InterceptionPlanner (cleared when full)
_EDGE_CACHE_SIZE = 16384  # edges' polylines and bearings kept by an InterceptionPlanner (cleared when full)
_REVERSE_PRUNE_MIN = 64  # crews left after the straight-line test that justify one reverse Dijkstra


@dataclass(frozen=True, eq=False)
class CrewTimes:
    """Travel times of crews: ``eta_s[c, v]`` seconds to node v (inf beyond the limit);
    ``predecessors[c]`` the Dijkstra tree from crew c's edge head."""

    eta_s: FloatArray
    predecessors: IntArray
    heads: IntArray


def _check_crew_edges(graph: CompiledGraph, crews: Sequence[Crew]) -> None:
    for c in crews:
        if not 0 <= c.position.edge < graph.n_edges:
            raise GuidanceError(
                f"crew {c.crew_id}: edge {c.position.edge} out of range 0..{graph.n_edges - 1}"
            )


def _crew_start(graph: CompiledGraph, crews: Sequence[Crew]) -> tuple[IntArray, FloatArray, FloatArray]:
    """Each crew's edge head, the free-flow time left to it, and its speed factor."""
    edges = np.array([c.position.edge for c in crews], dtype=np.int64)
    offsets = np.array([c.position.offset_m for c in crews], dtype=np.float64)
    factors = np.array([c.speed_factor for c in crews], dtype=np.float64)
    heads = graph.edge_v[edges].astype(np.int64)
    remaining = graph.edge_time_s[edges] * np.clip(
        1.0 - offsets / np.maximum(graph.edge_length_m[edges], 1e-9), 0.0, 1.0
    )
    return heads, remaining, factors


_Row = tuple[FloatArray, IntArray]
_Route = tuple[tuple[tuple[float, float], ...], tuple[str, ...]]  # polyline (lon, lat), turns
_EdgePiece = tuple[tuple[tuple[float, float], ...], tuple[float, float]]  # polyline, bearings
_QuantCache = tuple[EscapePrediction, tuple[object, ...], BoolArray, FloatArray, bool]


def _dijkstra_rows(
    graph: CompiledGraph,
    heads: IntArray,
    free_flow_limit: float,
    cache: dict[tuple[int, float], _Row] | None,
) -> list[_Row]:
    """The Dijkstra row (times, predecessors) of each head within ``free_flow_limit``,
    from ``cache`` when there (missing rows are searched in one batch and cached)."""
    if heads.size == 0:
        return []
    if cache is None:
        dist, pred = dijkstra(
            graph.time_csr, directed=True, indices=heads, limit=free_flow_limit, return_predecessors=True
        )
        dist, pred = np.atleast_2d(dist), np.atleast_2d(pred)
        return [(dist[i], pred[i]) for i in range(heads.size)]
    wanted = {int(h) for h in heads.tolist()}
    missing = sorted(h for h in wanted if (h, free_flow_limit) not in cache)
    if missing:
        max_rows = max(64, _CREW_CACHE_BYTES // (12 * max(graph.n_nodes, 1)))
        if len(cache) + len(missing) > max_rows:
            # Evict everything, then search for every head this call needs (the rows that were
            # cached are gone too).
            cache.clear()
            missing = sorted(wanted)
        d_new, p_new = dijkstra(
            graph.time_csr,
            directed=True,
            indices=np.array(missing, dtype=np.int64),
            limit=free_flow_limit,
            return_predecessors=True,
        )
        d_new, p_new = np.atleast_2d(d_new), np.atleast_2d(p_new)
        for i, h in enumerate(missing):
            cache[(h, free_flow_limit)] = (d_new[i], p_new[i])
    return [cache[(int(h), free_flow_limit)] for h in heads.tolist()]


def crew_times(
    graph: CompiledGraph,
    crews: Sequence[Crew],
    *,
    limit_s: float,
    cache: dict[tuple[int, float], tuple[FloatArray, IntArray]] | None = None,
) -> CrewTimes:
    """One batched Dijkstra for all ``crews`` (each first drives to the end of its edge).

    ``cache`` (optional, owned by the caller) keeps each head node's Dijkstra row by
    ``(head, limit)``: a crew that stands still, or is still on the same edge, needs no new
    search. The rows are exact, so cached and fresh results are identical."""
    if not crews:
        return CrewTimes(
            np.zeros((0, graph.n_nodes)),
            np.zeros((0, graph.n_nodes), dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        )
    _check_crew_edges(graph, crews)
    heads, remaining, factors = _crew_start(graph, crews)
    free_flow_limit = float(limit_s * factors.max())
    rows = _dijkstra_rows(graph, heads, free_flow_limit, cache)
    dist = np.stack([r[0] for r in rows])
    pred = np.stack([r[1] for r in rows])
    eta = (dist + remaining[:, None]) / factors[:, None]
    eta[eta > limit_s] = np.inf
    return CrewTimes(eta_s=eta, predecessors=pred.astype(np.int64), heads=heads)


@dataclass(frozen=True, eq=False)
class _PointTimes:
    """Crews' ETAs at the plan's points only: ``eta_s[c, j]`` (inf beyond the travel limit or
    for a crew that was not searched), held once per crossing, and the Dijkstra predecessor row
    of each searched crew."""

    eta_nodes: FloatArray  # crews × the distinct crossings of the points
    at_node: IntArray  # each point's column in ``eta_nodes``
    heads: IntArray
    predecessors: dict[int, IntArray]
    searched: BoolArray
    free_flow_limit: float
    shortlisted: IntArray | None = None  # the crews of the shortlist, when one was made

    @property
    def eta_s(self) -> FloatArray:
        """Crews × points."""
        out: FloatArray = self.eta_nodes[:, self.at_node]
        return out

    def subset(self, crews: IntArray) -> _PointTimes:
        """The times of the crews ``crews`` (indices, increasing), renumbered from 0."""
        preds = {i: self.predecessors[c] for i, c in enumerate(crews.tolist()) if c in self.predecessors}
        return _PointTimes(
            self.eta_nodes[crews],
            self.at_node,
            self.heads[crews],
            preds,
            self.searched[crews],
            self.free_flow_limit,
        )


@dataclass(frozen=True, eq=False)
class _ShortlistInput:
    """What :meth:`InterceptionPlanner._shortlist` needs besides the crews and the points."""

    pass_probability: FloatArray
    declined: Sequence[tuple[int, int]]  # (crew index, crossing)
    protected: Collection[int]  # crew indices always in


def _latest_start_slack(reverse_csr: sp.csr_matrix, targets: IntArray, budget: FloatArray) -> FloatArray:
    """``max_v (budget[v] - d(u, v))`` for every node ``u`` over ``targets`` ``v`` (``-inf`` where
    no target is within budget), ``d`` the fastest travel time: one Dijkstra on the reversed
    graph from a super-source joined to each target ``v`` by an edge of ``top + 1 - budget[v]``."""
    n = reverse_csr.shape[0]
    top = float(budget.max())
    indptr = np.r_[reverse_csr.indptr, reverse_csr.indptr[-1] + targets.size]
    indices = np.r_[reverse_csr.indices, targets].astype(reverse_csr.indices.dtype, copy=False)
    data = np.r_[reverse_csr.data, top + 1.0 - budget]
    augmented = sp.csr_matrix((data, indices, indptr), shape=(n + 1, n + 1))
    d = np.asarray(dijkstra(augmented, directed=True, indices=n, limit=top + 1.0))
    slack: FloatArray = top + 1.0 - d[:n]
    return slack


def _polyline(graph: CompiledGraph, edges: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """WGS84 polyline (lon, lat) along consecutive ``edges`` without repeated joints (as
    :func:`map_data.routing.path_lonlat`), gathered in one step."""
    e = np.asarray(edges, dtype=np.int64)
    starts, ends = graph.geom_ptr[e], graph.geom_ptr[e + 1]
    if e.size == 0 or np.any(ends <= starts):
        return tuple(path_lonlat(graph, edges))
    starts = starts.copy()
    starts[1:] += 1  # each joint once
    lengths = ends - starts
    before = np.cumsum(lengths) - lengths
    idx = np.arange(int(lengths.sum())) + np.repeat(starts - before, lengths)
    pts = graph.geom_lonlat[idx]
    return tuple(zip(pts[:, 0].tolist(), pts[:, 1].tolist(), strict=True))


def _bearing_deg(xy: FloatArray) -> float:
    d = xy[-1] - xy[0]
    return math.degrees(math.atan2(float(d[1]), float(d[0])))


def _edge_bearings(graph: CompiledGraph, edge: int) -> tuple[float, float]:
    """The bearings (degrees) of the first and of the last segment of ``edge`` (of at least one
    point), as :func:`turn_instructions` computes them."""
    ptr, xy = graph.geom_ptr, graph.geom_xy
    lo, hi = int(ptr[edge]), int(ptr[edge + 1])
    if hi - lo >= 2:
        dx, dy = (xy[lo + 1] - xy[lo]).tolist()
        ex, ey = (xy[hi - 1] - xy[hi - 2]).tolist()
        return math.degrees(math.atan2(dy, dx)), math.degrees(math.atan2(ey, ex))
    return _bearing_deg(graph.edge_xy(edge)[:2]), _bearing_deg(graph.edge_xy(edge)[-2:])


def _turn_line(graph: CompiledGraph, a: int, b: int, arrive_deg: float, leave_deg: float) -> tuple[str, ...]:
    """The line of :func:`turn_instructions` for going from edge ``a`` (last segment's bearing
    ``arrive_deg``) onto edge ``b`` (first segment's ``leave_deg``), or none."""
    delta = (leave_deg - arrive_deg + 180.0) % 360.0 - 180.0
    name_a, name_b = graph.edge_name[a], graph.edge_name[b]
    street = name_b or "la voie sans nom"
    if abs(delta) > 150.0:
        return (f"Faire demi-tour sur {street}",)
    if delta > 30.0:
        return (f"Tourner à gauche sur {street}",)
    if delta < -30.0:
        return (f"Tourner à droite sur {street}",)
    if not (name_a == name_b and name_a != ""):
        return (f"Continuer tout droit sur {street}",)
    return ()


def turn_instructions(
    graph: CompiledGraph,
    edges: Sequence[int],
    target_names: Sequence[str],
    *,
    bearings: Sequence[tuple[float, float]] | None = None,
) -> tuple[str, ...]:
    """French turn list along ``edges``: one line per street change or marked turn.

    ``bearings`` (optional): each edge's :func:`_edge_bearings`, when the caller keeps them."""
    if not edges:
        return ("Vous êtes sur place",)

    def street(e: int) -> str:
        return graph.edge_name[e] or "la voie sans nom"

    out = [f"Prendre {street(edges[0])}"]
    e = np.asarray(edges, dtype=np.int64)
    ptr, xy = graph.geom_ptr, graph.geom_xy
    if bearings is not None:
        leave = [b[0] for b in bearings]
        arrive = [b[1] for b in bearings]
    elif np.all(ptr[e + 1] - ptr[e] >= 2):  # the first and last segment of every edge, at once
        first = (xy[ptr[e] + 1] - xy[ptr[e]]).tolist()
        last = (xy[ptr[e + 1] - 1] - xy[ptr[e + 1] - 2]).tolist()
        leave = [math.degrees(math.atan2(dy, dx)) for dx, dy in first]
        arrive = [math.degrees(math.atan2(dy, dx)) for dx, dy in last]
    else:
        leave = [_bearing_deg(graph.edge_xy(x)[:2]) for x in edges]
        arrive = [_bearing_deg(graph.edge_xy(x)[-2:]) for x in edges]
    for i, (a, b) in enumerate(itertools.pairwise(edges)):
        out.extend(_turn_line(graph, a, b, arrive[i], leave[i + 1]))
    names = " / ".join(target_names) if target_names else "le carrefour"
    out.append(f"Arrivée : {names}, s'arrêter et attendre")
    return tuple(out)


@jit
def _finite_or_zero_scalar(x: float) -> float:
    """``np.nan_to_num(x, posinf=0.0)`` of one value."""
    if np.isnan(x) or x == np.inf:
        return 0.0
    if x == -np.inf:
        return -1.7976931348623157e308
    return x


@jit
def _clip_scalar(x: float, lo: float, hi: float) -> float:
    """``np.clip(x, lo, hi)`` of one value (not NaN)."""
    y = x if x > lo else lo
    return y if y < hi else hi


@jit
def _etas_into(
    eta: FloatArray,
    idx: IntArray,
    dist: FloatArray,
    remaining: FloatArray,
    factors: FloatArray,
    limit_s: float,
) -> None:
    """``eta[idx] = (dist + remaining[idx, None]) / factors[idx, None]``, inf where that is
    beyond ``limit_s``: crew ``idx[i]``'s ETAs from its free-flow times ``dist[i]``."""
    for i in range(idx.size):
        c = idx[i]
        for j in range(dist.shape[1]):
            t = (dist[i, j] + remaining[c]) / factors[c]
            eta[c, j] = np.inf if t > limit_s else t


@jit
def _in_time(eta_nodes: FloatArray, col: IntArray, tau: FloatArray, margin_s: float) -> BoolArray:
    """``eta_nodes[:, col] + margin_s <= tau[None, :]`` without the crews × points matrix of
    times: whether each crew is at each point (its crossing's column ``col``) in time."""
    C = eta_nodes.shape[0]
    P = col.size
    out = np.empty((C, P), dtype=np.bool_)
    for i in range(C):
        for j in range(P):
            out[i, j] = eta_nodes[i, col[j]] + margin_s <= tau[j]
    return out


@jit
def _pair_bonus(
    feasible: BoolArray,
    eta_nodes: FloatArray,
    col: IntArray,
    tau: FloatArray,
    likely: FloatArray,
    max_wait_s: float,
    wait_scale_s: float,
) -> FloatArray:
    """The tie-break bonus of each feasible pair (0 elsewhere): ``1e-6`` times the share of
    two minutes the crew is early, less ``1e-6`` times its waiting beyond ``max_wait_s`` (in
    ``wait_scale_s``, up to 1); ``likely`` is the suspect's likely ETA at each point. The
    crew's ETA at point ``j`` is ``eta_nodes[i, col[j]]`` (its crossing's column: no crews ×
    points matrix of times is made)."""
    C, P = feasible.shape
    out = np.zeros((C, P))
    for i in range(C):
        for j in range(P):
            if feasible[i, j]:
                eta = eta_nodes[i, col[j]]
                margin = _finite_or_zero_scalar(tau[j] - eta)
                wait = _finite_or_zero_scalar(likely[j] - eta)
                early = _clip_scalar(margin, 0.0, 120.0) / 120.0
                idle = _clip_scalar((wait - max_wait_s) / wait_scale_s, 0.0, 1.0)
                out[i, j] = 1e-6 * early - 1e-6 * idle
    return out


def _sorted_unique(a: IntArray) -> IntArray:
    """``np.unique(a)`` of integers by one sort (numpy's ``unique`` hashes, several times
    slower on the planner's few thousand nodes)."""
    srt = np.sort(a)
    out: IntArray = srt[_group_starts(srt)]
    return out


def _first_occurrences(a: IntArray) -> IntArray:
    """``np.unique(a, return_index=True)[1]``: the index of each distinct value's first
    occurrence, by value."""
    order = np.argsort(a, kind="stable")
    out: IntArray = order[_group_starts(a[order])]
    return out


def _group_starts(a: IntArray) -> IntArray:
    """Where each run of equal values of ``a`` starts (``a`` grouped, e.g. sorted)."""
    new = np.empty(a.size, dtype=bool)
    new[:1] = True
    np.not_equal(a[1:], a[:-1], out=new[1:])
    out: IntArray = np.flatnonzero(new)
    return out


def _node_time_order(nodes: IntArray, times: FloatArray, n_nodes: int) -> IntArray:
    """``np.lexsort((times, nodes))``: by node, then time, then index.

    Three stable 16-bit radix sorts (times rounded down onto 2**32 steps of their range: low
    then high half; then nodes) are a few times faster than one comparison sort; times too
    close for the steps may come out of order, which is detected, and then ``lexsort``
    decides, so the order is always the exact one (equal times keep their index order in
    both). Without 16-bit nodes, one stable sort on a float key (node + time scaled into
    [0, 1)), checked the same way; with non-finite times, ``lexsort``."""
    t_min, t_max = float(times.min()), float(times.max())
    if not (math.isfinite(t_min) and math.isfinite(t_max)):
        out: IntArray = np.lexsort((times, nodes))
        return out
    span = t_max - t_min
    if n_nodes <= 1 << 16:
        top = float(2**32 - 1)
        scale = top / span if span > 0 else 0.0
        steps = np.minimum((times - t_min) * scale, top).astype(np.uint32)
        order: IntArray = np.argsort((steps & 0xFFFF).astype(np.uint16), kind="stable")
        order = order[np.argsort((steps[order] >> 16).astype(np.uint16), kind="stable")]
        order = order[np.argsort(nodes[order].astype(np.uint16), kind="stable")]
    else:
        order = np.argsort(nodes + (times - t_min) / (2.0 * span + 1.0), kind="stable")
    n_s, t_s = nodes[order], times[order]
    if np.any((n_s[1:] == n_s[:-1]) & (t_s[1:] < t_s[:-1])):
        order = np.lexsort((times, nodes))
    return order


@jit
def _quantiles_into(
    out: FloatArray,
    want: BoolArray,
    rows: IntArray,
    nodes: IntArray,
    times: FloatArray,
    route_weights: FloatArray,
    levels: FloatArray,
) -> None:
    """``out[i, v]``: the ``levels[i]`` quantile of the first arrivals at each node ``v`` with
    ``want[v]`` (arrival ``j`` at ``nodes[j]``, time ``times[j]``, weight
    ``route_weights[rows[j]]``), as :func:`_arrival_quantiles_sorted` computes it: the wanted
    arrivals ordered by node, then time, then index (counting sorts by binned time then node,
    and an insertion sort of each node's times), the weights summed one after the other in that order (the
    running sum over every node, as ``np.cumsum``), and at each node the first arrival whose
    running sum reaches ``before + q * total + 1e-12`` (the last one when none does: the
    clipped ``searchsorted`` of a nondecreasing sum). Times must not be NaN, weights not
    negative; the other entries of ``out`` are left as they are."""
    n_nodes = want.size
    sel = np.empty(nodes.size, dtype=np.int64)
    n_sel = 0
    t_min, t_max = np.inf, -np.inf
    for j in range(nodes.size):
        if want[nodes[j]]:
            sel[n_sel] = j
            n_sel += 1
            t = times[j]
            if np.isfinite(t):
                t_min = min(t_min, t)
                t_max = max(t_max, t)
    # Counting sort by time bucket (times binned over their range; a bin's order is fixed
    # below), then by node: by node, bin, index.
    n_bins = n_sel + 1
    scale = (n_bins - 1) / (t_max - t_min) if t_max > t_min else 0.0
    bins = np.empty(n_sel, dtype=np.int64)
    start = np.zeros(max(n_bins, n_nodes) + 1, dtype=np.int64)
    for i in range(n_sel):
        t = times[sel[i]]
        if t >= t_max:
            b = n_bins - 1
        elif t > t_min:
            b = min(int((t - t_min) * scale), n_bins - 1)
        else:
            b = 0
        bins[i] = b
        start[b + 1] += 1
    for b in range(n_bins):
        start[b + 1] += start[b]
    by_bin = np.empty(n_sel, dtype=np.int64)
    for i in range(n_sel):
        by_bin[start[bins[i]]] = sel[i]
        start[bins[i]] += 1
    start[:] = 0
    for i in range(n_sel):
        start[nodes[by_bin[i]] + 1] += 1
    for v in range(n_nodes):
        start[v + 1] += start[v]
    fill = start[:n_nodes].copy()
    order = np.empty(n_sel, dtype=np.int64)
    for i in range(n_sel):
        v = nodes[by_bin[i]]
        order[fill[v]] = by_bin[i]
        fill[v] += 1
    # Each node's arrivals by time: an insertion sort (stable, so equal times keep their index
    # order), with little to move as the bins ordered them already.
    for v in range(n_nodes):
        lo, hi = start[v], start[v + 1]
        for i in range(lo + 1, hi):
            x = order[i]
            t = times[x]
            k = i - 1
            while k >= lo and times[order[k]] > t:
                order[k + 1] = order[k]
                k -= 1
            order[k + 1] = x
    cum = np.empty(n_sel)
    s = 0.0
    for i in range(n_sel):
        s += route_weights[rows[order[i]]]
        cum[i] = s
    for v in range(n_nodes):
        lo, hi = start[v], start[v + 1]
        if hi == lo:
            continue
        before = cum[lo - 1] if lo > 0 else 0.0
        total = cum[hi - 1] - before
        for li in range(levels.size):
            x = before + levels[li] * total + 1e-12
            i = lo
            while i < hi - 1 and cum[i] < x:
                i += 1
            out[li, v] = times[order[i]]


def _arrival_quantiles_sorted(
    nodes: IntArray, times: FloatArray, weights: FloatArray, n_nodes: int, levels: Sequence[float]
) -> list[FloatArray]:
    """:func:`arrival_quantiles` with numpy sorts (any times, any weights)."""
    out = [np.full(n_nodes, np.inf) for _ in levels]
    if nodes.size == 0 or not levels:
        return out
    order = _node_time_order(nodes, times, n_nodes)
    n_s, t_s = nodes[order], times[order]
    w_s = weights[order]
    starts = _group_starts(n_s)
    ends = np.concatenate((starts[1:], [n_s.size]))
    cum = np.cumsum(w_s)
    before = np.where(starts > 0, cum[starts - 1], 0.0)  # cum before each group
    total = cum[ends - 1] - before
    for i, q in enumerate(levels):
        idx = np.searchsorted(cum, before + q * total + 1e-12, side="left")
        out[i][n_s[starts]] = t_s[np.clip(idx, starts, ends - 1)]
    return out


def _kernel_quantiles_apply(times: FloatArray, weights: FloatArray) -> bool:
    """Whether :func:`_quantiles_into` gives the numpy result (no NaN time; weights finite and
    not negative, so that their running sum never decreases)."""
    return not bool(np.isnan(times).any()) and bool(((weights >= 0.0) & (weights < np.inf)).all())


def arrival_quantiles(
    nodes: IntArray, times: FloatArray, weights: FloatArray, n_nodes: int, levels: Sequence[float]
) -> list[FloatArray]:
    """Per node, the ``levels`` quantiles (weighted) of the routes' first-arrival ``times``
    there (inf where no route passes): the time by which a share ``q`` of them has passed.
    A node outside ``[0, n_nodes)`` raises :class:`IndexError` (the compiled kernel does not
    check its indices)."""
    if nodes.size and not (int(nodes.min()) >= 0 and int(nodes.max()) < n_nodes):
        raise IndexError(f"arrival_quantiles: node index out of [0, {n_nodes})")
    if nodes.size == 0 or not levels or not _kernel_quantiles_apply(times, weights):
        return _arrival_quantiles_sorted(nodes, times, weights, n_nodes, levels)
    out = np.full((len(levels), n_nodes), np.inf)
    want = np.ones(n_nodes, dtype=np.bool_)
    rows = np.arange(nodes.size, dtype=np.int64)
    _quantiles_into(
        out,
        want,
        rows,
        nodes,
        times,
        np.asarray(weights, dtype=np.float64),
        np.array(levels, dtype=np.float64),
    )
    return list(out)


@jit
def _incidence_kernel(
    rows: IntArray,
    nodes: IntArray,
    times: FloatArray,
    shift: float,
    tau: FloatArray,
    order_pt: IntArray,
    first_of: IntArray,
    count_of: IntArray,
    weights: FloatArray,
    n_points: int,
) -> tuple[IntArray, IntArray, FloatArray]:
    """The CSR ``indptr`` and ``indices`` of :func:`_incidence_covered` (each point's routes in
    increasing order), and each point's covered weight (its routes' ``weights`` summed in that
    order from 0.0, as scipy's product by the matrix of ones does)."""
    indptr = np.zeros(n_points + 1, dtype=np.int64)
    ordered = True  # the arrivals at points come by increasing route
    last = -1
    for i in range(nodes.size):
        v = nodes[i]
        f = first_of[v]
        if f < 0:
            continue
        if rows[i] < last:
            ordered = False
        last = rows[i]
        t = times[i] - shift
        for k in range(count_of[v]):
            p = order_pt[f + k]
            if t >= tau[p] - 1e-9:
                indptr[p + 1] += 1
    for p in range(n_points):
        indptr[p + 1] += indptr[p]
    indices = np.empty(indptr[n_points], dtype=np.int64)
    fill = indptr[:-1].copy()
    for i in range(nodes.size):
        v = nodes[i]
        f = first_of[v]
        if f < 0:
            continue
        t = times[i] - shift
        for k in range(count_of[v]):
            p = order_pt[f + k]
            if t >= tau[p] - 1e-9:
                indices[fill[p]] = rows[i]
                fill[p] += 1
    covered = np.empty(n_points)
    for p in range(n_points):
        lo, hi = indptr[p], indptr[p + 1]
        if not ordered:
            indices[lo:hi] = np.sort(indices[lo:hi])
        s = 0.0
        for jj in range(lo, hi):
            s += weights[indices[jj]]
        covered[p] = s
    return indptr, indices, covered


def _incidence_covered(
    rows: IntArray,
    nodes: IntArray,
    times: FloatArray,
    shift: float,
    tau: FloatArray,
    order_pt: IntArray,
    first_of: IntArray,
    count_of: IntArray,
    shape: tuple[int, int],
    weights: FloatArray | None = None,
) -> tuple[sp.csr_matrix, FloatArray]:
    """Points × routes (CSR, ones): point ``p`` covers the routes whose first arrival at its
    crossing (``rows``, ``nodes``, ``times - shift``) is at or after ``tau[p] - 1e-9``.
    ``order_pt`` lists the points by crossing then level; the points of crossing ``v`` are
    ``order_pt[first_of[v] : first_of[v] + count_of[v]]``. Also each point's covered weight
    (``incidence @ weights``, zeros without ``weights``).

    Built in CSR directly by a kernel (each point's routes in increasing order): the same
    arrays as ``csr_matrix((ones, (points, routes)))`` gives, without its COO conversion."""
    P, K = shape
    w = np.zeros(K) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    indptr, indices, covered = _incidence_kernel(
        rows, nodes, times, float(shift), tau, order_pt, first_of, count_of, w, P
    )
    if max(P, K, indices.size) < 2**31:
        indptr, indices = indptr.astype(np.int32), indices.astype(np.int32)
    inc = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(P, K))
    return inc, covered


def _align_with_previous(
    solution: CoverageSolution, previous: dict[int, int], feasible: np.ndarray
) -> CoverageSolution:
    """Swap crews within a new plan (same points, same coverage) so that a crew whose previous
    target is still used keeps it when the crew now holding it can take the other's point."""
    assign = list(solution.assignment)
    for b, p in sorted(previous.items()):
        if assign[b] == p or p not in assign:
            continue
        a = assign.index(p)
        q = assign[b]
        if q < 0 or feasible[a, q]:
            assign[a], assign[b] = q, p
    return CoverageSolution(assignment=tuple(assign), value=solution.value)


@jit
def _tree_path_edges(
    pred: IntArray, source: int, target: int, keys: IntArray, fastest: IntArray, n_nodes: int
) -> tuple[IntArray, IntArray, int]:
    """The nodes of the Dijkstra tree path ``source`` → ``target`` (as
    :func:`map_data.routing.path_from_predecessors`: empty when unreachable) and the fastest
    edge between each pair of them (``fastest[i]`` joins the pair ``keys[i] = u * n_nodes +
    v``, keys sorted); the index of the first pair without an edge, or -1."""
    if source == target:
        path = np.full(1, source, dtype=np.int64)
        return path, np.zeros(0, dtype=np.int64), -1
    if pred[target] < 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), -1
    n = 1
    v = target
    while v != source:
        v = pred[v]
        n += 1
    path = np.empty(n, dtype=np.int64)
    v = target
    path[n - 1] = v
    for i in range(n - 2, -1, -1):
        v = pred[v]
        path[i] = v
    edges = np.empty(n - 1, dtype=np.int64)
    for i in range(n - 1):
        want = path[i] * n_nodes + path[i + 1]
        pos = min(np.searchsorted(keys, want), keys.size - 1)
        if keys[pos] != want:
            return path, edges, i
        edges[i] = fastest[pos]
    return path, edges, -1


class InterceptionPlanner:
    """Plan crews against an :class:`EscapePrediction` on one city."""

    def __init__(self, city: City, config: PlannerConfig | None = None, *, prune_crews: bool = True) -> None:
        self.city = city
        self.graph = city.graph
        self.config = config or PlannerConfig()
        self.prune_crews = prune_crews
        self._polygons: dict[str, shapely.Geometry] = {}
        self._crew_rows: dict[tuple[int, float], tuple[FloatArray, IntArray]] = {}
        self._reverse_csr: sp.csr_matrix | None = None
        self._chord_speed: float | None = None
        self._fastest: tuple[IntArray, IntArray] | None = None
        self._routes: dict[tuple[int, int, float], _Route] = {}
        self._labels: dict[tuple[int, bool], tuple[tuple[str, ...], str]] = {}
        self._edge_cache: dict[int, _EdgePiece] = {}
        self._turn_cache: dict[tuple[int, int], tuple[str, ...]] = {}  # a turn's line (or none)
        self._path_edges([])  # builds the table of fastest edges now rather than in a plan
        self._quant_cache: _QuantCache | None = None

    # ----------------------------------------------------------------------------------------

    def _quantiles(
        self,
        prediction: EscapePrediction,
        arrivals: tuple[IntArray, IntArray, FloatArray],
        weights: FloatArray,
        levels: Sequence[float],
        at_nodes: IntArray,
    ) -> list[FloatArray]:
        """Arrival quantiles of a prediction (times from ``prediction.at``) at ``at_nodes``
        (inf at the nodes never asked for), kept for the last prediction: a node's quantiles
        depend on its own arrivals only, and shifting every time by the same amount shifts them
        by it, so a re-plan on the same prediction (later, other candidates) reuses them and
        only computes the nodes it has not seen."""
        key = (tuple(levels), prediction.horizon_s)
        cached = self._quant_cache
        if cached is None or cached[0] is not prediction or cached[1] != key:
            n = self.graph.n_nodes
            rows, nodes, times = arrivals
            fits = _kernel_quantiles_apply(times, weights)
            cached = (prediction, key, np.zeros(n, dtype=bool), np.full((len(levels), n), np.inf), fits)
            self._quant_cache = cached
        _, _, done, quant, fits = cached
        todo = at_nodes[~done[at_nodes]]
        if todo.size:
            want = np.zeros(done.size, dtype=bool)
            want[todo] = True
            rows, nodes, times = arrivals
            if fits and levels:
                _quantiles_into(quant, want, rows, nodes, times, weights, np.array(levels, dtype=np.float64))
            else:
                sel = want[nodes]
                fresh = _arrival_quantiles_sorted(
                    nodes[sel], times[sel], weights[rows[sel]], done.size, levels
                )
                for q, f in zip(quant, fresh, strict=True):
                    q[todo] = f[todo]
            done[todo] = True
        return list(quant)

    def _point_times(
        self,
        crews: Sequence[Crew],
        pt_node: IntArray,
        tau: FloatArray,
        keep: Collection[int],
        *,
        shortlist: _ShortlistInput | None = None,
    ) -> _PointTimes:
        """ETAs of ``crews`` at the points (crossings ``pt_node`` with time thresholds ``tau``).

        With ``prune_crews``, a crew that cannot be in time for any point (:meth:`_may_reach`)
        is not searched: its ETAs stay inf and it holds, as it would have anyway, so the plan is
        the one without pruning. The crews of ``keep`` (kept targets, which need only
        ``keep_margin_s``) are always searched. With ``shortlist``, only the crews of
        :meth:`_shortlist` are searched (``shortlisted`` then lists them)."""
        cfg = self.config
        g = self.graph
        C, P = len(crews), int(pt_node.size)
        srt = np.sort(pt_node)
        nodes = srt[_group_starts(srt)]
        at_node = np.searchsorted(nodes, pt_node)  # np.unique(pt_node, return_inverse=True)
        eta = np.full((C, nodes.size), np.inf)
        if C == 0:
            return _PointTimes(eta, at_node, np.zeros(0, dtype=np.int64), {}, np.zeros(0, dtype=bool), 0.0)
        _check_crew_edges(g, crews)
        heads, remaining, factors = _crew_start(g, crews)
        limit_s = cfg.max_crew_travel_s
        free_flow_limit = float(limit_s * factors.max())
        search = np.ones(C, dtype=bool)
        # A shortlist searches few crews anyway, and never one that cannot be in time.
        shortlisting = (
            shortlist is not None
            and cfg.crew_shortlist > 0
            and max(cfg.crew_shortlist, min(cfg.max_crews_per_incident, C)) < C
        )
        if self.prune_crews:
            search = self._may_reach(
                heads, remaining, factors, pt_node, tau, free_flow_limit, reverse=not shortlisting
            )
            search[np.array(sorted(keep), dtype=np.int64)] = True
        short = None
        if shortlist is not None:
            short = self._shortlist(heads, remaining, factors, search, pt_node, tau, shortlist)
            if short is not None:
                in_short = np.zeros(C, dtype=bool)
                in_short[short] = True
                search &= in_short
        idx = np.flatnonzero(search)
        rows = _dijkstra_rows(g, heads[idx], free_flow_limit, self._crew_rows)
        if idx.size and P:
            # Each crossing once (a crossing has a point per arrival level).
            dist = np.empty((idx.size, nodes.size))
            for i, r in enumerate(rows):
                np.take(r[0], nodes, out=dist[i])
            _etas_into(eta, idx, dist, remaining, factors, limit_s)
        preds = {int(i): r[1] for i, r in zip(idx.tolist(), rows, strict=True)}
        return _PointTimes(eta, at_node, heads, preds, search, free_flow_limit, short)

    def _shortlist(
        self,
        heads: IntArray,
        remaining: FloatArray,
        factors: FloatArray,
        candidates: BoolArray,
        pt_node: IntArray,
        tau: FloatArray,
        inputs: _ShortlistInput,
    ) -> IntArray | None:
        """The crews a plan considers (indices, increasing), or ``None`` for all of them.

        Only with more crews than ``PlannerConfig.crew_shortlist`` (and than
        ``max_crews_per_incident``). In rounds: each crossing takes the fastest of the
        ``candidates`` crews not taken yet, if it can be in time for some point of it (ETA +
        margin at most the crossing's latest threshold); the likeliest crossing's crew first,
        until the shortlist is full, for at most ``max_crews_per_incident`` rounds plus the
        most declines at one crossing. A crew that declined the crossing is taken all the same
        (it may serve another; the plan never offers it that crossing), so that the next fastest
        comes forward in the next round. After those rounds every crossing has
        ``max_crews_per_incident`` shortlisted crews that did not decline it, at least as fast as
        any other crew that did not: some of them is always free to take another's place, so the
        others are never needed for the best coverage. A round is one Dijkstra from all its
        crews at once (per speed factor), not one per crew. ``inputs.protected`` crews (those of
        the previous plan) are always in."""
        cfg = self.config
        g = self.graph
        C = heads.size
        M = min(cfg.max_crews_per_incident, C)
        size = max(cfg.crew_shortlist, M)
        if cfg.crew_shortlist <= 0 or size >= C:
            return None
        chosen = np.zeros(C, dtype=bool)
        chosen[np.array(sorted(inputs.protected), dtype=np.int64)] = True
        n_chosen = int(chosen.sum())
        latest_at = np.full(g.n_nodes, -np.inf)
        np.maximum.at(latest_at, pt_node, tau)
        nodes = _sorted_unique(pt_node)
        nodes = nodes[np.lexsort((nodes, -inputs.pass_probability[nodes]))]  # likeliest first
        latest = latest_at[nodes]
        declines_at: dict[int, int] = {}
        for _, v in inputs.declined:
            declines_at[int(v)] = declines_at.get(int(v), 0) + 1
        n = g.n_nodes
        # Each crew is a node of its own, joined to its edge's head by the time left on its edge.
        base = g.time_csr
        augmented = sp.csr_matrix(
            (
                np.r_[base.data, remaining + 1e-9],
                np.r_[base.indices, heads].astype(base.indices.dtype, copy=False),
                np.r_[base.indptr, base.indptr[-1] + np.arange(1, C + 1)],
            ),
            shape=(n + C, n + C),
        )
        groups = sorted(set(factors[candidates].tolist()))
        for _ in range(M + max(declines_at.values(), default=0)):
            if n_chosen >= size:
                break
            best_eta = np.full(nodes.size, np.inf)
            best_crew = np.full(nodes.size, -1, dtype=np.int64)
            for f in groups:
                src = np.flatnonzero(candidates & ~chosen & (factors == f))
                if src.size == 0:
                    continue
                d, _, origin = dijkstra(
                    augmented,
                    directed=True,
                    indices=n + src,
                    limit=cfg.max_crew_travel_s * f,
                    min_only=True,
                    return_predecessors=True,
                )
                e = d[nodes] / f
                better = e < best_eta
                best_eta[better] = e[better]
                best_crew[better] = origin[nodes][better] - n
            ok = (best_crew >= 0) & (best_eta + cfg.safety_margin_s <= latest)
            if not ok.any():
                break
            ranked = best_crew[ok]
            first = _first_occurrences(ranked)
            new = ranked[np.sort(first)][: size - n_chosen]
            chosen[new] = True
            n_chosen += int(new.size)
        out: IntArray = np.flatnonzero(chosen)
        return out

    def _max_speed_mps(self) -> float:
        """The largest straight-line speed of any edge (chord / travel time): no path is faster,
        so ``distance / this`` bounds a travel time from below."""
        if self._chord_speed is None:
            g = self.graph
            chord = np.hypot(*(g.node_xy[g.edge_u] - g.node_xy[g.edge_v]).T)
            with np.errstate(divide="ignore", invalid="ignore"):
                speed = np.where(chord > 0, chord / g.edge_time_s, 0.0)
            self._chord_speed = float(speed.max(initial=0.0))
        return self._chord_speed

    def _may_reach(
        self,
        heads: IntArray,
        remaining: FloatArray,
        factors: FloatArray,
        pt_node: IntArray,
        tau: FloatArray,
        free_flow_limit: float,
        *,
        reverse: bool = True,
    ) -> BoolArray:
        """Crews that may be in time for some point (a necessary condition, never approximate).

        A crew reaches crossing ``v`` in ``(remaining + d(head, v)) / f`` and is in time for a
        point of ``v`` only if that is at most ``budget(v) = min(tau - safety_margin_s,
        max_crew_travel_s)``, i.e. ``d(head, v) <= f budget(v) - remaining``. Two tests of that,
        both exact lower bounds (1 µs of slack for rounding):

        1. straight line: ``d(head, v) >= |head - v| / max chord speed``, with ``|head - v|`` at
           least the distance to the candidates' bounding box, against the largest budget
           (costs next to nothing);
        2. when more than ``_REVERSE_PRUNE_MIN`` of the crews left would need a new search (not
           in the planner's cache of Dijkstra rows), unless ``reverse`` is false (a shortlist
           will search few crews): one Dijkstra on the reversed graph
           from all candidate crossings gives, for every node, ``max_v (F budget(v) - d(u, v))``
           (F the fastest crew's factor), so each crew is tested against every crossing at once.
        """
        cfg = self.config
        g = self.graph
        C = heads.size
        budget_s = np.minimum(tau - cfg.safety_margin_s, cfg.max_crew_travel_s)
        ok = budget_s >= 0.0
        if not ok.any():
            return np.zeros(C, dtype=bool)
        node_budget = np.full(g.n_nodes, -np.inf)
        np.maximum.at(node_budget, pt_node[ok], budget_s[ok])
        targets = np.flatnonzero(np.isfinite(node_budget))
        reach_ff = factors * float(node_budget[targets].max()) - remaining + 1e-6  # free-flow s
        speed = self._max_speed_mps()
        search = reach_ff >= 0.0
        if speed > 0:
            bx, by = g.node_xy[targets, 0], g.node_xy[targets, 1]
            lo = np.array([bx.min(), by.min()])
            hi = np.array([bx.max(), by.max()])
            xy = g.node_xy[heads]
            gap = np.maximum(np.maximum(lo - xy, xy - hi), 0.0)
            search &= np.hypot(gap[:, 0], gap[:, 1]) / speed <= reach_ff
        fresh = (
            sum((int(h), free_flow_limit) not in self._crew_rows for h in heads[search].tolist())
            if reverse
            else 0
        )
        if reverse and fresh > _REVERSE_PRUNE_MIN:
            if self._reverse_csr is None:
                self._reverse_csr = sp.csr_matrix(g.time_csr.T)
            slack = _latest_start_slack(
                self._reverse_csr, targets, float(factors.max()) * node_budget[targets]
            )
            search &= slack[heads] >= remaining - 1e-6
        out: BoolArray = search
        return out

    def _path_edges(self, path: Sequence[int]) -> list[int]:
        """The fastest edge between each pair of consecutive nodes of ``path`` (the first in
        ``out_of(u)`` among equally fast ones), from a sorted table of node pairs built once per
        planner."""
        g = self.graph
        if self._fastest is None:
            out = g.out_edges
            key = g.edge_u[out] * g.n_nodes + g.edge_v[out]
            order = np.lexsort((np.arange(out.size), g.edge_time_s[out], key))
            k_sorted = key[order]
            first = np.r_[True, k_sorted[1:] != k_sorted[:-1]]
            self._fastest = (k_sorted[first], out[order][first])
        keys, edges = self._fastest
        if len(path) < 2:
            return []
        nodes = np.asarray(path, dtype=np.int64)
        want = nodes[:-1] * g.n_nodes + nodes[1:]
        pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        if not np.array_equal(keys[pos], want):
            bad = int(np.flatnonzero(keys[pos] != want)[0])
            raise GuidanceError(f"no edge from node {int(nodes[bad])} to node {int(nodes[bad + 1])}")
        out_list: list[int] = edges[pos].tolist()
        return out_list

    def _tree_edges(self, pred: IntArray, source: int, target: int) -> list[int]:
        """``_path_edges(path_from_predecessors(pred, source, target))``, in one kernel."""
        self._path_edges([])
        assert self._fastest is not None
        keys, fastest = self._fastest
        if keys.size == 0:
            return self._path_edges(path_from_predecessors(pred, source, target))
        path, edges, bad = _tree_path_edges(pred, source, target, keys, fastest, self.graph.n_nodes)
        if bad >= 0:
            raise GuidanceError(f"no edge from node {int(path[bad])} to node {int(path[bad + 1])}")
        out: list[int] = edges.tolist()
        return out

    def street_names(self, node: int) -> tuple[str, ...]:
        """Distinct names of the streets meeting at ``node``, main roads first (up to 3)."""
        g = self.graph
        edges = np.r_[g.out_of(node), g.into(node)]
        named = sorted({(int(g.edge_rank[e]), g.edge_name[e]) for e in edges.tolist() if g.edge_name[e]})
        seen: list[str] = []
        for _, name in named:
            if name not in seen:
                seen.append(name)
        return tuple(seen[:3])

    def _no_go_mask(self, nodes: IntArray, no_go: Iterable[NoGoArea], at: datetime) -> np.ndarray:
        inside = np.zeros(nodes.size, dtype=bool)
        lonlat = self.graph.node_lonlat[nodes]
        for area in no_go:
            if not area.is_active(at):
                continue
            poly = self._polygons.get(area.polygon_wkt)
            if poly is None:
                try:
                    poly = shapely.wkt.loads(area.polygon_wkt)
                except shapely.errors.ShapelyError as exc:
                    raise GuidanceError(f"no-go area {area.name!r}: invalid WKT ({exc})") from None
                shapely.prepare(poly)
                self._polygons[area.polygon_wkt] = poly
            inside |= shapely.contains_xy(poly, lonlat[:, 0], lonlat[:, 1])
        return inside

    def eligible_crews(
        self,
        crews: Sequence[Crew],
        *,
        previous: Plan | None,
        incident_commune: str | None,
        shared_communes: frozenset[str],
    ) -> list[Crew]:
        """Crews the plan may use: available (or assigned by the previous plan of this
        incident), of the incident's commune or of a commune it is shared with."""
        prev_ids = {s.crew_id for s in previous.suggestions} if previous is not None else set()
        allowed = set(shared_communes) | ({incident_commune} if incident_commune else set())
        out = []
        for c in sorted(crews, key=lambda c: c.crew_id):
            if c.status is CrewStatus.available or (
                c.status is CrewStatus.assigned and c.crew_id in prev_ids
            ):
                if allowed and c.commune is not None and c.commune not in allowed:
                    continue
                out.append(c)
        ids = [c.crew_id for c in out]
        if len(set(ids)) != len(ids):
            raise GuidanceError(f"duplicate crew ids in {sorted(ids)}")
        return out

    def plan(
        self,
        prediction: EscapePrediction,
        crews: Sequence[Crew],
        *,
        previous: Plan | None = None,
        at: datetime,
        no_go: Sequence[NoGoArea] = (),
        shared_communes: frozenset[str] = frozenset(),
        incident_commune: str | None = None,
        declined: Collection[tuple[str, int]] = frozenset(),
    ) -> Plan:
        """Assign each eligible crew an interception point or a hold.

        ``declined`` holds ``(crew_id, node)`` pairs a crew refused for this incident: that crew
        is never offered that crossing (at any level), not even as a kept previous target.

        ``at`` is the plan's time (aware); the prediction's ETAs count from ``prediction.at``
        and are shifted to ``at``. ``previous`` is this incident's last plan (its version is
        incremented, its targets kept under hysteresis).
        """
        if at.tzinfo is None:
            raise GuidanceError("plan: 'at' must be timezone-aware")
        if previous is not None and previous.incident_id != prediction.incident_id:
            raise GuidanceError(
                f"previous plan is for {previous.incident_id!r}, prediction for {prediction.incident_id!r}"
            )
        cfg = self.config
        g = self.graph
        version = previous.version + 1 if previous is not None else 1
        shift = (at - prediction.at).total_seconds()
        earliest = prediction.suspect_earliest_eta_s - shift
        likely = prediction.suspect_likely_eta_s - shift
        eligible = self.eligible_crews(
            crews, previous=previous, incident_commune=incident_commune, shared_communes=shared_communes
        )

        # Candidate crossings: ahead of the suspect on sampled routes, where a crew arriving
        # within its travel limit would not wait longer than ``max_wait_s`` for the earliest route.
        # A crossing passed by no more than ``min_gain`` of the routes can never be worth a crew
        # (a point's gain is at most its crossing's pass probability), so it is not offered.
        cand_mask = (
            (prediction.pass_probability > 0)
            & (prediction.pass_probability + 1e-12 > cfg.min_gain)
            & np.isfinite(earliest)
            & (likely > cfg.safety_margin_s)
            & (earliest <= cfg.max_crew_travel_s + cfg.max_wait_s + cfg.safety_margin_s)
        )
        # Previous targets stay candidates while the suspect is still to come: a crew on its
        # way or waiting there keeps it as long as it gets there first (``keep_margin_s``).
        index = {c.crew_id: i for i, c in enumerate(eligible)}
        previous_pairs: list[tuple[int, int]] = []
        if previous is not None:
            for s in sorted(previous.suggestions, key=lambda s: s.crew_id):
                v = s.target_node
                ok = 0 <= v < g.n_nodes and prediction.pass_probability[v] > 0 and np.isfinite(earliest[v])
                if (
                    s.crew_id in index
                    and ok
                    and likely[v] > cfg.keep_margin_s
                    and (s.crew_id, v) not in declined
                ):
                    previous_pairs.append((index[s.crew_id], v))
                    cand_mask[v] = True
        cand = np.flatnonzero(cand_mask).astype(np.int64)
        if cand.size:
            cand = cand[~self._no_go_mask(cand, no_go, at)]
        if cand.size > cfg.max_candidates:
            order = np.lexsort((cand, -prediction.pass_probability[cand]))
            keep_nodes = np.array([v for _, v in previous_pairs], dtype=np.int64)
            is_kept = np.zeros(g.n_nodes, dtype=bool)
            is_kept[keep_nodes] = True
            # ``np.union1d(top, np.intersect1d(cand, keep_nodes))`` (``cand`` sorted, distinct).
            cand = _sorted_unique(np.concatenate((cand[order[: cfg.max_candidates]], cand[is_kept[cand]])))

        # Points: each candidate crossing at each arrival level (its time threshold ``tau``).
        arrivals = prediction.first_arrivals or first_arrivals(prediction.samples, prediction.horizon_s)
        rows, nodes, a_times = arrivals
        weights = prediction.samples.weights / prediction.samples.weights.sum()
        levels = cfg.arrival_levels
        quant = [q[cand] - shift for q in self._quantiles(prediction, arrivals, weights, levels[1:], cand)]
        L = len(levels)
        pt_node = np.tile(cand, L)
        pt_level = np.repeat(np.arange(L), cand.size)
        tau = np.concatenate([earliest[cand]] + [np.maximum(quant[i], earliest[cand]) for i in range(L - 1)])
        keep_pt = np.isfinite(tau) & (tau > 0)
        if L > 1:  # a level equal to the one below adds nothing
            same = np.zeros(pt_node.size, dtype=bool)
            same[cand.size :] = tau[cand.size :] <= tau[: -cand.size] + 1e-9
            keep_pt &= ~same
        pt_node, pt_level, tau = pt_node[keep_pt], pt_level[keep_pt], tau[keep_pt]

        if previous is not None:
            protected = {index[s.crew_id] for s in previous.suggestions if s.crew_id in index}
        else:
            protected = set()
        times = self._point_times(
            eligible,
            pt_node,
            tau,
            keep={ci for ci, _ in previous_pairs},
            shortlist=_ShortlistInput(
                prediction.pass_probability,
                [(index[c], v) for c, v in sorted(declined) if c in index],
                protected,
            ),
        )
        n_eligible = len(eligible)
        not_shortlisted: list[Crew] = []
        short = times.shortlisted
        if short is not None:
            in_short = np.zeros(len(eligible), dtype=bool)
            in_short[short] = True
            not_shortlisted = [c for c, keep in zip(eligible, in_short.tolist(), strict=True) if not keep]
            renumber = np.cumsum(in_short) - 1
            previous_pairs = [(int(renumber[ci]), v) for ci, v in previous_pairs if in_short[ci]]
            eligible = [eligible[i] for i in short.tolist()]
            index = {c.crew_id: i for i, c in enumerate(eligible)}
            times = times.subset(short)
        # Points no crew can be in time for (the earliest crew at the crossing, plus the margin,
        # is after ``tau``) are dropped before the crews × points matrices are built; the points
        # of previous targets stay (a kept target needs only ``keep_margin_s``).
        if eligible and pt_node.size:
            first_eta = times.eta_nodes.min(axis=0)[times.at_node]
            some = first_eta + cfg.safety_margin_s <= tau
            if previous_pairs:
                prev_mask = np.zeros(g.n_nodes, dtype=bool)
                prev_mask[[v for _, v in previous_pairs]] = True
                some |= prev_mask[pt_node]
        else:
            some = np.zeros(pt_node.size, dtype=bool)
        pt_node, pt_level, tau = pt_node[some], pt_level[some], tau[some]
        col = times.at_node[some]  # each point's column in ``times.eta_nodes``
        feasible = _in_time(times.eta_nodes, col, tau, cfg.safety_margin_s)
        for crew_id, v in sorted(declined):
            if crew_id in index:
                feasible[index[crew_id], pt_node == v] = False
        # A kept target takes the lowest level the crew still beats (by ``keep_margin_s``): the
        # first point of the lowest level among those of its crossing.
        kept_pairs: dict[int, int] = {}
        if previous_pairs and pt_node.size:
            at_prev = np.zeros(g.n_nodes, dtype=bool)
            at_prev[[v for _, v in previous_pairs]] = True
            js_prev = np.flatnonzero(at_prev[pt_node])  # the points of the previous targets
            for ci, v in previous_pairs:
                js = js_prev[pt_node[js_prev] == v]
                ok_js = js[times.eta_nodes[ci, col[js]] + cfg.keep_margin_s <= tau[js]]
                if ok_js.size:
                    j = int(ok_js[np.argmin(pt_level[ok_js])])
                    if j not in kept_pairs.values():
                        feasible[ci, j] = True
                        kept_pairs[ci] = j
        reach = feasible.any(axis=0)
        pt_node, pt_level, tau = pt_node[reach], pt_level[reach], tau[reach]
        col, feasible = (
            col[reach],
            feasible[:, reach],
        )  # crew ``ci`` at point ``j``: ``eta_nodes[ci, col[j]]``
        new_col = np.cumsum(reach) - 1
        kept_pairs = {ci: int(new_col[j]) for ci, j in kept_pairs.items()}

        # Incidence points × routes: a point covers the routes reaching its crossing at or
        # after its time threshold.
        P = pt_node.size
        K = prediction.samples.n_routes
        order_pt = np.lexsort((pt_level, pt_node))
        first_of = np.full(g.n_nodes, -1, dtype=np.int64)
        count_of = np.zeros(g.n_nodes, dtype=np.int64)
        if P:
            sn = pt_node[order_pt]
            starts = _group_starts(sn)
            first_of[sn[starts]] = starts
            count_of[sn[starts]] = np.diff(np.concatenate((starts, [sn.size])))
        incidence, covered_p = _incidence_covered(
            rows, nodes, a_times, shift, tau, order_pt, first_of, count_of, (P, K), weights
        )

        # The tie-break bonus only matters on feasible pairs (the solver never looks elsewhere).
        bonus = _pair_bonus(
            feasible, times.eta_nodes, col, tau, likely[pt_node], cfg.max_wait_s, max(cfg.max_wait_s, 1.0)
        )
        problem = CoverageProblem(
            incidence=incidence,
            route_weights=weights,
            feasible=feasible,
            max_assignments=min(cfg.max_crews_per_incident, len(eligible)),
            pair_bonus=bonus,
            point_reliability=cfg.point_reliability,
        )
        kept_ids: set[str] = set()
        kept_value: float | None = None
        fresh_value: float | None = None
        chosen: CoverageSolution | None = None
        if kept_pairs:
            fixed = dict(sorted(kept_pairs.items())[: problem.max_assignments])
            kept = lazy_greedy(problem, fixed=fixed, min_gain=cfg.min_gain)
            kept_value = kept.value
            # A fresh plan covers at most the routes of all the points (each is in some crew's
            # reach): when those are not more than the hysteresis above the kept plan, the kept
            # plan is chosen whatever the fresh one, which is then not computed.
            reached = np.zeros(K, dtype=bool)
            reached[incidence.indices] = True
            all_routes = float(weights[reached].sum())
            if all_routes <= kept.value + cfg.hysteresis:
                chosen = kept
                kept_ids = {eligible[ci].crew_id for ci in fixed}
        if chosen is None:
            fresh = lazy_greedy(problem, min_gain=cfg.min_gain)
            fresh_value = fresh.value
            chosen = fresh
            if kept_pairs:
                if not fresh.value > kept.value + cfg.hysteresis + 1e-12:
                    chosen = kept
                    kept_ids = {eligible[ci].crew_id for ci in fixed}
                else:
                    chosen = _align_with_previous(fresh, kept_pairs, feasible)
                    kept_ids = {
                        eligible[ci].crew_id for ci, pj in kept_pairs.items() if chosen.assignment[ci] == pj
                    }

        exits = set(prediction.samples.destinations[prediction.samples.left].tolist())
        suggestions: list[Suggestion] = []
        holds: list[str] = [c.crew_id for c in not_shortlisted]
        for ci, crew in enumerate(eligible):
            pj = chosen.assignment[ci]
            if pj < 0:
                holds.append(crew.crew_id)
                continue
            node = int(pt_node[pj])
            suggestions.append(
                self._suggestion(
                    prediction,
                    crew,
                    node,
                    times,
                    ci,
                    at=at,
                    version=version,
                    earliest_s=float(tau[pj]),
                    likely_s=float(max(likely[node], tau[pj])),
                    covered_p=float(covered_p[pj]),
                    crew_eta_s=float(times.eta_nodes[ci, col[pj]]),
                    is_exit=node in exits,
                    kept=crew.crew_id in kept_ids,
                )
            )
        holds.sort()
        parameters: dict[str, object] = dict(cfg.as_dict())
        parameters.update(
            {
                "planner_version": PLANNER_VERSION,
                "prediction_seed": prediction.seed,
                "n_candidates": int(cand.size),
                "n_points": int(P),
                "arrival_levels": list(cfg.arrival_levels),
                "point_reliability": cfg.point_reliability,
                "n_eligible_crews": n_eligible,
                "n_shortlisted_crews": len(eligible),
                "fresh_coverage": fresh_value,
                "kept_coverage": kept_value,
                "kept_previous": bool(kept_ids),
                "no_go": [a.name for a in no_go if a.is_active(at)],
                "shared_communes": sorted(shared_communes),
                "incident_commune": incident_commune,
                "declined": [[c, int(v)] for c, v in sorted(declined)],
            }
        )
        return Plan(
            incident_id=prediction.incident_id,
            version=version,
            at=at,
            suggestions=tuple(suggestions),
            holds=tuple(holds),
            coverage_probability=float(chosen.value),
            graph_version=g.version,
            model_version=prediction.model_version,
            parameters=parameters,
        )

    def _suggestion(
        self,
        prediction: EscapePrediction,
        crew: Crew,
        node: int,
        times: _PointTimes,
        ci: int,
        *,
        at: datetime,
        version: int,
        earliest_s: float,
        likely_s: float,
        crew_eta_s: float,
        is_exit: bool,
        kept: bool,
        covered_p: float,
    ) -> Suggestion:
        g = self.graph
        names, label = self._names_label(node, is_exit)
        route_lonlat, turns = self._route(crew.position.edge, int(times.heads[ci]), node, times, ci)
        lon, lat = g.node_lonlat[node].tolist()
        p_cover = covered_p
        margin = earliest_s - crew_eta_s
        reason = (
            f"Couvre {label}, {round(100 * p_cover)} % des itinéraires probables ; "
            f"sur place {margin:.0f} s avant le suspect au plus tôt."
        )
        ttl = min(self.config.suggestion_ttl_s, likely_s + self.config.expiry_slack_s)
        return Suggestion(
            suggestion_id=f"{prediction.incident_id}:{version}:{crew.crew_id}",
            incident_id=prediction.incident_id,
            crew_id=crew.crew_id,
            target_node=node,
            lon=lon,
            lat=lat,
            street_names=names,
            route_lonlat=route_lonlat,
            turns=turns,
            crew_eta_s=crew_eta_s,
            suspect_earliest_eta_s=earliest_s,
            suspect_likely_eta_s=likely_s,
            margin_s=margin,
            probability_covered=p_cover,
            reason=reason,
            plan_version=version,
            issued_at=at,
            expires_at=at + timedelta(seconds=max(ttl, 1.0)),
            kept=kept,
        )

    def _route(self, edge: int, head: int, node: int, times: _PointTimes, ci: int) -> _Route:
        """The polyline and turn list of a crew on ``edge`` to ``node``, kept by the planner
        (a function of the edge, the target and the search limit, so a kept target is not
        routed again)."""
        key = (edge, node, times.free_flow_limit)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        edges = [edge, *self._tree_edges(times.predecessors[ci], head, node)]
        names, _ = self._names_label(node, False)
        out = self._route_geometry(edges, names)
        if len(self._routes) >= _ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[key] = out
        return out

    def _route_geometry(self, edges: Sequence[int], names: Sequence[str]) -> _Route:
        """``(_polyline(g, edges), turn_instructions(g, edges, names))``, put together from the
        planner's kept pieces of each edge."""
        g = self.graph
        pieces = self._edge_pieces(edges)
        if pieces is None or not pieces:  # an edge without geometry, or no edge
            return _polyline(g, edges), turn_instructions(g, edges, names)
        polyline = tuple(itertools.chain(pieces[0][0], *(p[0][1:] for p in pieces[1:])))
        cache = self._turn_cache
        if len(cache) >= _EDGE_CACHE_SIZE:
            cache.clear()
        turns = [f"Prendre {g.edge_name[edges[0]] or 'la voie sans nom'}"]
        for i, (a, b) in enumerate(itertools.pairwise(edges)):
            line = cache.get((a, b))
            if line is None:
                # The one line of this turn in :func:`turn_instructions`.
                line = _turn_line(g, a, b, pieces[i][1][1], pieces[i + 1][1][0])
                cache[(a, b)] = line
            turns.extend(line)
        where = " / ".join(names) if names else "le carrefour"
        turns.append(f"Arrivée : {where}, s'arrêter et attendre")
        return polyline, tuple(turns)

    def _edge_pieces(self, edges: Sequence[int]) -> list[_EdgePiece] | None:
        """Each edge's polyline (lon, lat) and bearings, kept by the planner (``None`` when an
        edge has no geometry): a route's polyline and turns are put together from them, the
        same values :func:`_polyline` and :func:`turn_instructions` compute."""
        g = self.graph
        cache = self._edge_cache
        out: list[_EdgePiece] = []
        for e in edges:
            hit = cache.get(e)
            if hit is None:
                lo, hi = int(g.geom_ptr[e]), int(g.geom_ptr[e + 1])
                if hi <= lo:
                    return None
                pts = g.geom_lonlat[lo:hi]
                hit = (tuple(zip(pts[:, 0].tolist(), pts[:, 1].tolist(), strict=True)), _edge_bearings(g, e))
                if len(cache) >= _EDGE_CACHE_SIZE:
                    cache.clear()
                cache[e] = hit
            out.append(hit)
        return out

    def _names_label(self, node: int, is_exit: bool) -> tuple[tuple[str, ...], str]:
        key = (node, is_exit)
        hit = self._labels.get(key)
        if hit is None:
            names = self.street_names(node)
            hit = (names, self._label(node, names, is_exit))
            if len(self._labels) >= _ROUTE_CACHE_SIZE:
                self._labels.clear()
            self._labels[key] = hit
        return hit

    def _label(self, node: int, names: tuple[str, ...], is_exit: bool) -> str:
        g = self.graph
        adjacent = np.r_[g.out_of(node), g.into(node)]
        bridges = [g.edge_name[e] for e in adjacent.tolist() if g.edge_bridge[e]]
        where = " / ".join(names) if names else f"n° {int(g.node_osmid[node])}"
        if is_exit:
            return f"la sortie de la carte ({where})"
        if bridges:
            bridge = next((b for b in bridges if b), "")
            return f"le pont{' ' + bridge if bridge else ''} ({where})"
        return f"le carrefour {where}"
