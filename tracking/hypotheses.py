"""Route hypotheses: a Kalman filter on a line, a set of lines on the graph.

A hypothesis is a route (the edges driven since the last sighting, starting at the sighted
edge), a constant-velocity Kalman state :math:`[s, v]` along that route (:mod:`tracking.kalman`)
and a log-weight. Between sightings the filters predict forward and routes branch lazily: when
a hypothesis' mean passes its route's end, it is replaced by one child per way out of the
crossing, weighted by the branch model's prior. On a sighting each hypothesis is conditioned
on passing the camera (a Kalman update at the camera's position along the route) and weighted
by the likelihood. Similar hypotheses (same current edge, close position and speed) are merged
by moment matching and the lightest are pruned.

Negative information: a camera on a hypothesis' route, passed since the last sighting
without a report, multiplies its weight by

.. math::

    1 - p_d \\, \\Phi\\!\\left(\\frac{\\hat s - z}{\\sigma_s}\\right)

where :math:`z` is the camera's position along the route, :math:`\\hat s, \\sigma_s` the
predicted position and its standard deviation, :math:`p_d` the detection probability and
:math:`\\Phi` the standard normal CDF (the probability it has passed by now). When the next
sighting arrives the passage is certain for the cameras before it, and the factor is
:math:`1 - p_d`. The factor is recomputed from the state at the time asked (``neg``), never
accumulated across queries, so a belief is a pure function of the sightings and the time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

import numpy as np

from map_data.types import EdgePosition, FloatArray, IntArray
from tracking.behaviour import BranchContext, BranchModel, RoadBehaviour, RoadBranchParts
from tracking.config import TrackerConfig
from tracking.kalman import H_SPEED, predict_batch, update_batch
from tracking.kernels import (
    branch_csr_kernel,
    extend_kernel,
    merge_kernel,
    route_neg_kernel,
)
from tracking.roads import RoadIndex

_SQRT2 = math.sqrt(2.0)
#: A stretch a camera sees, for conditioning: its middle along its edge (m), the variance of
#: a passage in it (m²), and the log-weight of its direction given the reported heading.
_Stretch = tuple[float, float, float]
_NEGLIGIBLE_LOG = 25.0  # hypotheses this far (in log-weight) below the best are dropped
_SEEN_MEMO_MAX = 4096  # entries of Context.seen_memo before it is emptied


@dataclass(frozen=True, slots=True)
class Hypotheses:
    """A weighted set of route hypotheses at time ``t_s`` (POSIX seconds).

    ``route_len[i]`` is the length of route ``i`` and ``last_start[i]`` the position of its
    last edge's start along it; ``x`` (N, 2) and ``P`` (N, 2, 2) are the Kalman states;
    ``lw`` the log-weights without the negative information of the moment, ``neg`` that
    negative information; ``anchor`` the position of the last sighting along each route;
    ``last_camera`` the camera of the last accepted sighting (``None`` before one).
    """

    t_s: float
    routes: tuple[tuple[int, ...], ...]
    route_len: FloatArray
    last_start: FloatArray
    x: FloatArray
    P: FloatArray
    lw: FloatArray
    neg: FloatArray
    anchor: FloatArray
    last_camera: str | None

    @property
    def size(self) -> int:
        return len(self.routes)

    def probabilities(self) -> FloatArray:
        """Normalised weights (sum to 1)."""
        eff = self.lw + self.neg
        w = np.exp(eff - eff.max())
        out: FloatArray = w / w.sum()
        return out


_Branches = tuple[tuple[int, float], ...]


class BranchPriors:
    """``(out_edge, log prior)`` of the ways out at the head of each arriving edge, for one
    branch model and :class:`BranchContext` (ways below ``min_branch_probability`` dropped),
    memoised per arriving edge. A pure function of the graph, the model, the context and the
    floor, so trackers agreeing on these can share one (:class:`BranchTables`).

    ``table`` is the model's ``branch_table`` for this context when known; otherwise it is
    asked of the model when it has one, else priors come from ``branch_probabilities``.
    """

    def __init__(
        self,
        roads: RoadIndex,
        behaviour: BranchModel,
        context: BranchContext,
        min_branch_probability: float,
        table: tuple[IntArray, FloatArray] | None = None,
    ) -> None:
        self.roads = roads
        self.behaviour = behaviour
        self.context = context
        self.floor = min_branch_probability
        if table is None:
            make = getattr(behaviour, "branch_table", None)
            if callable(make):
                table = make(roads.graph, context)
        self._ptr: list[int] | None = None
        self._probs: FloatArray | None = None
        if table is not None:
            self._ptr = table[0].tolist()
            self._probs = np.asarray(table[1], dtype=np.float64)
        self._memo: dict[int, _Branches] = {}
        self._csr: tuple[IntArray, IntArray, FloatArray] | None = None
        self._table_ptr: IntArray | None = None if table is None else np.asarray(table[0], dtype=np.int64)

    def csr(self) -> tuple[IntArray, IntArray, FloatArray]:
        """The priors of every arriving edge as CSR arrays ``(ptr, out_edge, log prior)`` (those of
        ``in_edge`` are ``ptr[in_edge]:ptr[in_edge + 1]``, the values of :meth:`get`), built once.
        From the model's table when it has one (:class:`~tracking.behaviour.BranchTableModel`,
        the road model); otherwise :meth:`get` is asked for every edge of the graph, once per
        priors object (one Python call per edge)."""
        if self._csr is None:
            roads = self.roads
            graph = roads.graph
            if self._table_ptr is not None and self._probs is not None:
                self._csr = branch_csr_kernel(
                    np.asarray(graph.edge_v, dtype=np.int64),
                    np.asarray(graph.out_ptr, dtype=np.int64),
                    np.asarray(graph.out_edges, dtype=np.int64),
                    self._table_ptr,
                    self._probs,
                    float(self.floor),
                )
            else:
                ptr = np.zeros(graph.n_edges + 1, dtype=np.int64)
                outs: list[int] = []
                logp: list[float] = []
                for e in range(graph.n_edges):
                    for out, lp in self.get(e):
                        outs.append(out)
                        logp.append(lp)
                    ptr[e + 1] = len(outs)
                self._csr = (ptr, np.asarray(outs, dtype=np.int64), np.asarray(logp, dtype=np.float64))
        return self._csr

    def get(self, in_edge: int) -> _Branches:
        """``(out_edge, log prior)`` of the ways out at the head of ``in_edge`` (tiny ones dropped)."""
        cached = self._memo.get(in_edge)
        if cached is not None:
            return cached
        roads = self.roads
        outs = roads.out_list[roads.edge_v[in_edge]]
        result: _Branches = ()
        if outs:
            p: Sequence[float] | FloatArray
            if self._ptr is not None and self._probs is not None:
                p = self._probs[self._ptr[in_edge] : self._ptr[in_edge + 1]].tolist()
            else:
                p = self.behaviour.branch_probabilities(
                    roads.graph, in_edge, np.asarray(outs, dtype=np.int64), self.context
                )
            floor = self.floor
            result = tuple((e, math.log(float(pe))) for e, pe in zip(outs, p, strict=True) if pe > floor)
        self._memo[in_edge] = result
        return result


class BranchTables:
    """Branch priors of one city's trackers, built once and shared between incidents.

    For the default :class:`RoadBehaviour` the context-free parts of its table are computed
    once (:class:`RoadBranchParts`); the priors of the context without an origin (incidents
    opened without a position) are shared whole, memo included. Other contexts (one per
    incident origin) get their own :class:`BranchPriors`, not kept here.
    """

    def __init__(self, roads: RoadIndex, behaviour: BranchModel, config: TrackerConfig) -> None:
        self.roads = roads
        self.behaviour = behaviour
        self.min_branch_probability = config.min_branch_probability
        self._parts: RoadBranchParts | None = None
        self._shared: dict[BranchContext, BranchPriors] = {}

    def priors(self, context: BranchContext) -> BranchPriors:
        """The priors for ``context`` (the same object for every call without an origin)."""
        if context.origin_xy is None:
            shared = self._shared.get(context)
            if shared is None:
                shared = self._shared[context] = self._build(context)
            return shared
        return self._build(context)

    def _build(self, context: BranchContext) -> BranchPriors:
        table: tuple[IntArray, FloatArray] | None = None
        if type(self.behaviour) is RoadBehaviour:
            if self._parts is None:
                self._parts = RoadBranchParts(self.behaviour, self.roads.graph)
            table = self._parts.table(context)
        return BranchPriors(self.roads, self.behaviour, context, self.min_branch_probability, table)


class Context:
    """What the hypothesis algorithms need: roads, the branch model and the configuration.

    Branch priors per arriving edge come from ``priors`` (shared between the trackers of a
    city by :class:`BranchTables`), built here when not given.
    """

    def __init__(
        self,
        roads: RoadIndex,
        behaviour: BranchModel,
        branch_context: BranchContext,
        config: TrackerConfig,
        priors: BranchPriors | None = None,
    ) -> None:
        self.roads = roads
        self.behaviour = behaviour
        self.branch_context = branch_context
        self.config = config
        self.p_detect = float(roads.cameras.detection_probability)
        self._log_miss = math.log(max(1.0 - self.p_detect, 1e-9))
        if priors is None:
            priors = BranchPriors(roads, behaviour, branch_context, config.min_branch_probability)
        elif (
            priors.roads is not roads
            or priors.behaviour != behaviour
            or priors.context != branch_context
            or priors.floor != config.min_branch_probability
        ):
            raise ValueError("Context: shared branch priors were built for another city, model or context")
        self.priors = priors
        #: ``(out_edge, log prior)`` of the ways out at the head of an arriving edge.
        self.branches: Callable[[int], _Branches] = priors.get
        #: :func:`condition`'s stretches seen per ``(camera_id, heading_deg)`` (read only).
        self.seen_memo: dict[tuple[str, float | None], dict[int, list[_Stretch]]] = {}

    def locate(self, route: tuple[int, ...], s: float) -> tuple[int, float, int, float]:
        """Edge, offset (clamped inside it), index in the route, and start along the route of
        the point ``s`` metres along ``route``."""
        c = 0.0
        lengths = self.roads.edge_len
        last = len(route) - 1
        for k, e in enumerate(route):
            length = lengths[e]
            if s < c + length or k == last:
                return e, min(max(s - c, 0.0), length), k, c
            c += length
        raise AssertionError("unreachable")

    def span_log_factor(self, z: float, s: float, sigma: float) -> float:
        """:math:`\\log(1 - p_d \\Phi((s - z)/\\sigma))` for a silent camera at ``z``."""
        passed = 0.5 * math.erfc(-(s - z) / (sigma * _SQRT2))
        return math.log(max(1.0 - self.p_detect * passed, 1e-12))

    def route_neg(
        self, route: tuple[int, ...], anchor: float, s: float, sigma: float, skip: str | None
    ) -> float:
        """Negative information of the silent cameras on ``route`` beyond ``anchor``."""
        # :meth:`span_log_factor` inlined (the same arithmetic): called per camera passed.
        total = 0.0
        c = 0.0
        spans = self.roads.edge_spans
        lengths = self.roads.edge_len
        p_detect = self.p_detect
        scale = sigma * _SQRT2
        near = anchor + 1.0
        erfc, log = math.erfc, math.log
        for e in route:
            seen = spans.get(e)
            if seen is not None:
                for cid, mid, _a, _b in seen:
                    z = c + mid
                    if cid != skip and z > near:
                        passed = 0.5 * erfc(-(s - z) / scale)
                        total += log(max(1.0 - p_detect * passed, 1e-12))
            c += lengths[e]
        return total

    def passed_log_factor(
        self, route: tuple[int, ...], upto: int, anchor: float, z_seen: float, skip: frozenset[str]
    ) -> float:
        """:math:`\\log(1-p_d)` per silent camera passed between ``anchor`` and ``z_seen``."""
        total = 0.0
        c = 0.0
        spans = self.roads.edge_spans
        lengths = self.roads.edge_len
        lo, hi = anchor + 1.0, z_seen - 1.0
        log_miss = self._log_miss
        for k in range(upto + 1):
            e = route[k]
            seen = spans.get(e)
            if seen is not None:
                for cid, mid, _a, _b in seen:
                    z = c + mid
                    if cid not in skip and lo < z < hi:
                        total += log_miss
            c += lengths[e]
        return total


# --------------------------------------------------------------------------- initiation


def initiate_at_camera(
    ctx: Context,
    t_s: float,
    camera_id: str,
    *,
    heading_deg: float | None,
    speed_mps: float | None,
) -> Hypotheses:
    """One hypothesis per stretch the camera sees, weighted by agreement with ``heading_deg``
    (or, without a heading, by how much the stretch leads away from the incident)."""
    cfg = ctx.config
    spans = ctx.roads.cameras.view(camera_id).spans
    routes: list[tuple[int, ...]] = []
    x_rows: list[list[float]] = []
    p_rows: list[list[list[float]]] = []
    lw: list[float] = []
    anchor: list[float] = []
    v0 = cfg.speed_prior_mps if speed_mps is None else speed_mps
    sv = cfg.speed_prior_sigma_mps if speed_mps is None else cfg.reported_speed_sigma_mps
    for span in spans:
        mid = 0.5 * (span.start_m + span.end_m)
        r = _span_variance(span.start_m, span.end_m, cfg)
        routes.append((span.edge,))
        x_rows.append([mid, v0])
        p_rows.append([[r, 0.0], [0.0, sv * sv]])
        lw.append(_direction_log_weight(ctx, span.edge, mid, heading_deg))
        anchor.append(mid)
    return _make(ctx, t_s, routes, x_rows, p_rows, lw, anchor, camera_id)


def initiate_at_origin(ctx: Context, t_s: float, origin: EdgePosition) -> Hypotheses:
    """Hypotheses leaving the incident's position in either direction of its road."""
    cfg = ctx.config
    edges = [(origin.edge, origin.offset_m)]
    rev = ctx.roads.graph.reverse_edge(origin.edge)
    if rev is not None:
        edges.append((rev, max(0.0, ctx.roads.edge_len[rev] - origin.offset_m)))
    sv = cfg.speed_prior_sigma_mps
    return _make(
        ctx,
        t_s,
        [(e,) for e, _ in edges],
        [[off, cfg.speed_prior_mps] for _, off in edges],
        [[[cfg.camera_noise_m**2, 0.0], [0.0, sv * sv]] for _ in edges],
        [0.0 for _ in edges],
        [off for _, off in edges],
        None,
    )


def _span_variance(start_m: float, end_m: float, cfg: TrackerConfig) -> float:
    """Variance of a passage somewhere in a seen stretch: uniform over it plus camera noise."""
    return (end_m - start_m) ** 2 / 12.0 + cfg.camera_noise_m**2


def _direction_log_weight(ctx: Context, edge: int, offset_m: float, heading_deg: float | None) -> float:
    if heading_deg is not None:
        delta = math.radians(ctx.roads.bearing_deg(edge, offset_m) - heading_deg)
        return ctx.config.heading_concentration * (math.cos(delta) - 1.0)
    origin = ctx.branch_context.origin_xy
    if origin is None:
        return 0.0
    roads = ctx.roads
    u, v = roads.edge_u[edge], roads.edge_v[edge]
    xy = roads.graph.node_xy
    du = math.hypot(xy[u, 0] - origin[0], xy[u, 1] - origin[1])
    dv = math.hypot(xy[v, 0] - origin[0], xy[v, 1] - origin[1])
    return 0.5 * max(-1.0, min(1.0, (dv - du) / max(roads.edge_len[edge], 1.0)))


def _make(
    ctx: Context,
    t_s: float,
    routes: list[tuple[int, ...]],
    x_rows: list[list[float]],
    p_rows: list[list[list[float]]],
    lw: list[float],
    anchor: list[float],
    last_camera: str | None,
) -> Hypotheses:
    lengths = ctx.roads.edge_len
    route_len = np.array([sum(lengths[e] for e in r) for r in routes], dtype=np.float64)
    last_start = np.array([route_len[i] - lengths[r[-1]] for i, r in enumerate(routes)], dtype=np.float64)
    lw_arr = np.array(lw, dtype=np.float64)
    return Hypotheses(
        t_s=t_s,
        routes=tuple(routes),
        route_len=route_len,
        last_start=last_start,
        x=np.array(x_rows, dtype=np.float64).reshape(-1, 2),
        P=np.array(p_rows, dtype=np.float64).reshape(-1, 2, 2),
        lw=lw_arr - lw_arr.max(),
        neg=np.zeros(len(routes), dtype=np.float64),
        anchor=np.array(anchor, dtype=np.float64),
        last_camera=last_camera,
    )


# --------------------------------------------------------------------------- prediction


def propagate(ctx: Context, hyps: Hypotheses, t_s: float) -> Hypotheses:
    """Predict every hypothesis to ``t_s`` and branch the routes their means have run past.

    Pure: the result depends only on ``hyps`` and ``t_s``. The negative information of the
    silent cameras on each route is evaluated at ``t_s`` (``neg``).

    The branching runs in rounds (:func:`tracking.kernels.extend_kernel`): each round, every
    hypothesis whose mean has passed its route's end is replaced by its children (the ones kept
    as they are first, in order, then the children), children far below the best dropped; when
    the set grows beyond twice ``max_hypotheses`` it is merged and pruned.
    """
    cfg = ctx.config
    roads = ctx.roads
    dt = t_s - hyps.t_s
    if dt > 0:
        x, P = predict_batch(hyps.x, hyps.P, dt, cfg.accel_noise)
    else:
        x, P = hyps.x.copy(), hyps.P.copy()
    sigma = np.sqrt(P[:, 0, 0])
    routes = list(hyps.routes)
    skip = hyps.last_camera
    skip_cam = roads.camera_code(skip)
    s_arr = np.ascontiguousarray(x[:, 0])
    route_edges = np.fromiter(itertools.chain.from_iterable(routes), dtype=np.int64)
    route_ptr = np.zeros(len(routes) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, routes), dtype=np.int64, count=len(routes)), out=route_ptr[1:])
    neg = route_neg_kernel(
        route_ptr,
        route_edges,
        hyps.anchor,
        s_arr,
        sigma,
        skip_cam,
        roads.edge_len_arr,
        roads.span_ptr,
        roads.span_cam,
        roads.span_mid,
        ctx.p_detect,
    )
    route_len = hyps.route_len
    last_start = hyps.last_start
    anchor = hyps.anchor
    lw = hyps.lw
    br_ptr, br_out, br_logp = ctx.priors.csr()
    rounds_left = cfg.max_extension_rounds
    last_edge = np.fromiter((r[-1] for r in routes), dtype=np.int64, count=len(routes))
    # Each hypothesis' route: the input route ``origin[i]`` plus the chain of edges appended,
    # ending at node ``chain[i]`` of the tree ``node_prev``/``node_edge`` (tuples built at the end).
    origin = np.arange(len(routes), dtype=np.int64)
    chain = np.full(len(routes), -1, dtype=np.int64)
    node_prev = np.empty(0, dtype=np.int64)
    node_edge = np.empty(0, dtype=np.int64)
    n_nodes = 0
    while rounds_left > 0:
        (
            status,
            used,
            src,
            chain,
            last_edge,
            route_len,
            last_start,
            lw,
            neg,
            node_prev,
            node_edge,
            n_nodes,
        ) = extend_kernel(
            last_edge,
            route_len,
            last_start,
            lw,
            neg,
            s_arr,
            sigma,
            chain,
            node_prev,
            node_edge,
            n_nodes,
            rounds_left,
            2 * cfg.max_hypotheses,
            skip_cam,
            _NEGLIGIBLE_LOG,
            roads.edge_len_arr,
            br_ptr,
            br_out,
            br_logp,
            roads.span_ptr,
            roads.span_cam,
            roads.span_mid,
            ctx.p_detect,
        )
        rounds_left -= used
        if used == 0:
            break
        origin, x, P, anchor = origin[src], x[src], P[src], anchor[src]
        if status != 1:
            break
        sel, route_len, last_start, anchor, lw, neg, x, P = _merge_prune_arrays(
            ctx, last_edge, route_len, last_start, anchor, lw, neg, x, P
        )
        origin, chain, last_edge = origin[sel], chain[sel], last_edge[sel]
        s_arr = np.ascontiguousarray(x[:, 0])
        sigma = np.sqrt(P[:, 0, 0])
    if dt > 0:
        sel, route_len, last_start, anchor, lw, neg, x, P = _merge_prune_arrays(
            ctx, last_edge, route_len, last_start, anchor, lw, neg, x, P
        )
        origin, chain = origin[sel], chain[sel]
    return Hypotheses(
        t_s=t_s,
        routes=_extended_routes(routes, origin.tolist(), chain.tolist(), node_prev, node_edge),
        route_len=route_len,
        last_start=last_start,
        x=x,
        P=P,
        lw=lw,
        neg=neg,
        anchor=anchor,
        last_camera=skip,
    )


def _extended_routes(
    routes: Sequence[tuple[int, ...]],
    origin: list[int],
    chain: list[int],
    node_prev: IntArray,
    node_edge: IntArray,
) -> tuple[tuple[int, ...], ...]:
    """The routes of hypotheses given as route ``origin[k]`` plus the edges of the chain ending
    at node ``chain[k]`` of the tree ``node_prev``/``node_edge`` (:func:`tracking.kernels.extend_kernel`)."""
    out: list[tuple[int, ...]] = []
    for i, node in zip(origin, chain, strict=True):
        if node < 0:
            out.append(routes[i])
            continue
        edges: list[int] = []
        k = node
        while k >= 0:
            edges.append(int(node_edge[k]))
            k = int(node_prev[k])
        edges.reverse()
        out.append(routes[i] + tuple(edges))
    return tuple(out)


_Merged = tuple[
    list[tuple[int, ...]],
    list[float],
    list[float],
    list[float],
    list[float],
    list[float],
    FloatArray,
    FloatArray,
]


def _merge_prune(
    ctx: Context,
    routes: list[tuple[int, ...]],
    route_len: list[float],
    last_start: list[float],
    anchor: list[float],
    lw: list[float],
    neg: list[float],
    x: FloatArray,
    P: FloatArray,
    *,
    key_last_edge: bool,
) -> _Merged:
    """Merge hypotheses on the same last edge with close position and speed; keep the heaviest.

    A merged hypothesis keeps the route of its heaviest member; its state is the moment-matched
    mixture (positions taken relative to the start of the shared last edge):

    .. math::

        \\bar x = \\sum_i w_i x_i, \\qquad
        \\bar P = \\sum_i w_i \\left(P_i + (x_i - \\bar x)(x_i - \\bar x)^T\\right)
    """
    key_at = -1 if key_last_edge else 0
    keys = np.fromiter((r[key_at] for r in routes), dtype=np.int64, count=len(routes))
    sel, _len, _last, _anchor, m_lw, _neg, new_x, new_P = _merge_prune_arrays(
        ctx,
        keys,
        np.asarray(route_len, dtype=np.float64),
        np.asarray(last_start, dtype=np.float64),
        np.asarray(anchor, dtype=np.float64),
        np.asarray(lw, dtype=np.float64),
        np.asarray(neg, dtype=np.float64),
        x,
        P,
    )
    order = sel.tolist()
    return (
        [routes[i] for i in order],
        [route_len[i] for i in order],
        [last_start[i] for i in order],
        [anchor[i] for i in order],
        m_lw.tolist(),
        [neg[i] for i in order],
        new_x,
        new_P,
    )


def _merge_prune_arrays(
    ctx: Context,
    keys: IntArray,
    route_len: FloatArray,
    last_start: FloatArray,
    anchor: FloatArray,
    lw: FloatArray,
    neg: FloatArray,
    x: FloatArray,
    P: FloatArray,
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """:func:`_merge_prune` on arrays, hypotheses grouped by ``keys``: the input row kept for
    each output hypothesis, then the output's ``route_len``, ``last_start``, ``anchor``, ``lw``,
    ``neg``, ``x`` and ``P``."""
    cfg = ctx.config
    eff = lw + neg
    best = float(eff.max())
    alive = np.flatnonzero(eff >= best - _NEGLIGIBLE_LOG)
    if len(alive) > 3 * cfg.max_hypotheses:  # too many to merge one by one: keep the heaviest
        alive = np.sort(alive[np.argsort(-eff[alive], kind="stable")[: 3 * cfg.max_hypotheses]])
    s_rel_arr = x[:, 0] - last_start
    # Groups by key, clusters of close members, the merged log-weights and the pruning:
    # :func:`tracking.kernels.merge_kernel` (the loop :func:`_merge_prune` describes).
    sel, sel_lw, merged_row, cl_ptr, cl_members = merge_kernel(
        keys,
        s_rel_arr,
        np.ascontiguousarray(x[:, 1]),
        eff,
        lw,
        neg,
        alive.astype(np.int64),
        float(cfg.merge_distance_m),
        float(cfg.merge_speed_mps),
        int(cfg.max_hypotheses),
    )
    new_x = x[sel]
    new_P = P[sel]
    if len(merged_row):
        bounds = cl_ptr.tolist()
        members = cl_members.tolist()
        clusters = [members[bounds[c] : bounds[c + 1]] for c in range(len(bounds) - 1)]
        heavy_start = last_start[sel[merged_row]].tolist()
        means, covs = _moment_match(eff, x, P, s_rel_arr, clusters, heavy_start)
        new_x[merged_row] = means
        new_P[merged_row] = covs
    return (
        sel,
        route_len[sel],
        last_start[sel],
        anchor[sel],
        sel_lw,
        neg[sel],
        new_x.reshape(-1, 2),
        new_P.reshape(-1, 2, 2),
    )


def _moment_match(
    eff: FloatArray,
    x: FloatArray,
    P: FloatArray,
    s_rel: FloatArray,
    clusters: Sequence[Sequence[int]],
    base: Sequence[float],
) -> tuple[FloatArray, FloatArray]:
    """Moment-matched state of each cluster (rows of ``x``, ``P`` weighted by ``exp(eff)``),
    positions taken as ``s_rel`` plus the cluster's ``base``: ``(len(clusters), 2)`` means and
    ``(len(clusters), 2, 2)`` covariances, in the order of ``clusters``.

    Batched over the clusters of each size; every operation is the one-cluster one (the same
    reductions per row, over members in their order), so the numbers are exactly those of
    :func:`_moment_match_one` cluster by cluster (tests check it bit for bit).
    """
    means = np.empty((len(clusters), 2), dtype=np.float64)
    covs = np.empty((len(clusters), 2, 2), dtype=np.float64)
    by_size: dict[int, list[int]] = {}
    for k, cl in enumerate(clusters):
        by_size.setdefault(len(cl), []).append(k)
    for size, rows in by_size.items():
        ids = np.asarray([clusters[k] for k in rows], dtype=np.int64).reshape(len(rows), size)
        b = np.asarray([base[k] for k in rows], dtype=np.float64)
        e = eff[ids]
        w = np.exp(e - e.max(axis=1)[:, None])
        w = w / w.sum(axis=1)[:, None]
        xs = x[ids]
        xs[:, :, 0] = s_rel[ids] + b[:, None]
        mean = (w[:, None, :] @ xs)[:, 0, :]
        d = xs - mean[:, None, :]
        cov = np.einsum("ci,cijk->cjk", w, P[ids]) + np.einsum("ci,cij,cik->cjk", w, d, d)
        means[rows] = mean
        covs[rows] = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    return means, covs


def _moment_match_one(
    eff: FloatArray, x: FloatArray, P: FloatArray, s_rel: FloatArray, cluster: Sequence[int], base: float
) -> tuple[FloatArray, FloatArray]:
    """:func:`_moment_match` of one cluster, plainly (the reference)."""
    ids = np.asarray(cluster, dtype=np.int64)
    e = eff[ids]
    w = np.exp(e - e.max())
    w = w / w.sum()
    xs = x[ids].copy()
    xs[:, 0] = s_rel[ids] + base
    mean = w @ xs
    d = xs - mean
    cov = np.einsum("i,ijk->jk", w, P[ids]) + np.einsum("i,ij,ik->jk", w, d, d)
    return mean, 0.5 * (cov + cov.T)


# --------------------------------------------------------------------------- conditioning


def condition(
    ctx: Context,
    hyps: Hypotheses,
    camera_id: str,
    *,
    heading_deg: float | None,
    speed_mps: float | None,
) -> Hypotheses | None:
    """Condition hypotheses (already propagated to the sighting's time) on passing ``camera_id``.

    Each hypothesis whose route passes a stretch the camera sees (looking ahead past the
    route's end by ``lookahead_sigmas`` standard deviations, branching with the prior) gets a
    Kalman update at the stretch's position along its route and is weighted by the update's
    likelihood, by agreement with ``heading_deg`` and by :math:`1-p_d` for every silent camera
    it passed on the way. Routes are then cut to start at the sighted edge. Returns ``None``
    when no hypothesis can have passed the camera (the caller re-initiates).
    """
    cfg = ctx.config
    roads = ctx.roads
    # Per seen edge, its stretches: (middle, variance of the passage, heading log-weight). A
    # camera can see one edge in several stretches (a winding street): each is a candidate.
    # A pure function of the camera and the heading, memoised (replays condition on the same
    # sightings again); read only below.
    seen_key = (camera_id, heading_deg)
    seen = ctx.seen_memo.get(seen_key)
    if seen is None:
        seen = {}
        for span in roads.cameras.view(camera_id).spans:
            mid = 0.5 * (span.start_m + span.end_m)
            seen.setdefault(span.edge, []).append(
                (
                    mid,
                    _span_variance(span.start_m, span.end_m, cfg),
                    _direction_log_weight(ctx, span.edge, mid, heading_deg)
                    if heading_deg is not None
                    else 0.0,
                )
            )
        if len(ctx.seen_memo) >= _SEEN_MEMO_MAX:
            ctx.seen_memo.clear()
        ctx.seen_memo[seen_key] = seen
    lengths = roads.edge_len
    # Candidates: (parent, route, index of the seen edge in it, its start along the route,
    # extra log prior, the stretch seen).
    cands: list[tuple[int, tuple[int, ...], int, float, float, _Stretch]] = []
    s_all = hyps.x[:, 0].tolist()
    sig_all = np.sqrt(hyps.P[:, 0, 0]).tolist()
    look_sig, look_extra = cfg.lookahead_sigmas, cfg.lookahead_extra_m
    reach: list[float] = []
    reach_by_end: dict[int, float] = {}
    for i, route in enumerate(hyps.routes):
        c = 0.0
        for j, e in enumerate(route):
            for stretch in seen.get(e, ()):
                cands.append((i, route, j, c, 0.0, stretch))
            c += lengths[e]
        r_i = min(
            s_all[i] + look_sig * sig_all[i] + look_extra - c,
            cfg.lookahead_max_m,
        )
        reach.append(r_i)
        if r_i > 0:
            reach_by_end[route[-1]] = max(reach_by_end.get(route[-1], 0.0), r_i)
    ahead = {end: _look_ahead(ctx, end, r, seen) for end, r in reach_by_end.items()}
    route_len_in = hyps.route_len.tolist()
    for i, route in enumerate(hyps.routes):
        if reach[i] <= 0:
            continue
        base = route_len_in[i]
        for path, dist, logp in ahead[route[-1]]:
            if dist <= reach[i]:
                full = route + path
                for stretch in seen[full[-1]]:
                    cands.append((i, full, len(full) - 1, base + dist, logp, stretch))
    if not cands:
        return None
    parents = np.asarray([cd[0] for cd in cands], dtype=np.int64)
    z = np.asarray([cd[3] + cd[5][0] for cd in cands], dtype=np.float64)
    r = np.asarray([cd[5][1] for cd in cands], dtype=np.float64)
    x, P, ll = update_batch(hyps.x[parents], hyps.P[parents], z, r)
    if speed_mps is not None:
        x, P, ll_v = update_batch(
            x, P, np.full(len(cands), speed_mps), cfg.reported_speed_sigma_mps**2, H=H_SPEED
        )
        ll = ll + ll_v
    # Keep the most likely candidates only (the silent-camera factors below can only lower them).
    pre = hyps.lw[parents] + np.asarray([cd[4] + cd[5][2] for cd in cands], dtype=np.float64) + ll
    if len(cands) > 2 * cfg.max_hypotheses:
        top = np.sort(np.argsort(-pre, kind="stable")[: 2 * cfg.max_hypotheses])
        cands = [cands[k] for k in top.tolist()]
        x, P, ll, z = x[top], P[top], ll[top], z[top]
    skip = frozenset(c for c in (camera_id, hyps.last_camera) if c is not None)
    routes: list[tuple[int, ...]] = []
    route_len: list[float] = []
    last_start: list[float] = []
    anchor: list[float] = []
    lw: list[float] = []
    s_cut: list[float] = []
    lw_in, anchor_in = hyps.lw.tolist(), hyps.anchor.tolist()
    ll_l, z_l, s_l = ll.tolist(), z.tolist(), x[:, 0].tolist()
    for k, (i, route, j, c, extra, (mid, _r, head_lw)) in enumerate(cands):
        w = lw_in[i] + extra + ll_l[k] + head_lw
        w += ctx.passed_log_factor(route, j, anchor_in[i], z_l[k], skip)
        # Cut the route to start at the sighted edge and to end at the edge of the mean.
        s_new = s_l[k] - c
        s_cut.append(s_new)
        cut_end = j
        start = 0.0
        while cut_end + 1 < len(route) and s_new >= start + lengths[route[cut_end]]:
            start += lengths[route[cut_end]]
            cut_end += 1
        new_route = route[j : cut_end + 1]
        routes.append(new_route)
        route_len.append(start + lengths[route[cut_end]])
        last_start.append(start)
        anchor.append(mid)
        lw.append(w)
    x[:, 0] = s_cut
    merged = _merge_prune(
        ctx,
        routes,
        route_len,
        last_start,
        anchor,
        lw,
        [0.0] * len(routes),
        x,
        P,
        key_last_edge=True,
    )
    m_routes, m_len, m_last, m_anchor, m_lw, _m_neg, m_x, m_P = merged
    lw_arr = np.asarray(m_lw, dtype=np.float64)
    return Hypotheses(
        t_s=hyps.t_s,
        routes=tuple(m_routes),
        route_len=np.asarray(m_len, dtype=np.float64),
        last_start=np.asarray(m_last, dtype=np.float64),
        x=m_x,
        P=m_P,
        lw=lw_arr - lw_arr.max(),
        neg=np.zeros(len(m_routes), dtype=np.float64),
        anchor=np.asarray(m_anchor, dtype=np.float64),
        last_camera=camera_id,
    )


def _look_ahead(
    ctx: Context,
    end_edge: int,
    reach_m: float,
    seen: Container[int],
) -> list[tuple[tuple[int, ...], float, float]]:
    """Paths (edges, distance to their last edge's start, log prior) from the head of
    ``end_edge`` to a seen edge, depth first, up to ``reach_m``."""
    cfg = ctx.config
    lengths = ctx.roads.edge_len
    floor = math.log(1e-4)
    found: list[tuple[tuple[int, ...], float, float]] = []
    stack: list[tuple[tuple[int, ...], float, float]] = [((), 0.0, 0.0)]
    branches = ctx.branches
    max_edges = cfg.lookahead_max_edges
    while stack:
        path, dist, logp = stack.pop()
        deeper = len(path) + 1 < max_edges
        for e, lp in branches(path[-1] if path else end_edge):
            total = logp + lp
            if total < floor:
                continue
            if e in seen:
                found.append(((*path, e), dist, total))
            elif deeper and dist + lengths[e] < reach_m:
                stack.append(((*path, e), dist + lengths[e], total))
    return found
