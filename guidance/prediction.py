"""Escape-route prediction: sample where the suspect goes from a track's belief.

:class:`EscapePredictor` draws K escape routes (seeded from the incident id and the belief
time, so a replay gives the same routes): a start from the belief's weighted positions, a
behaviour model and a destination from the mixture (whose weights the sightings update), then
a stochastic walk toward it (:mod:`guidance.models`) at the model's speed until the horizon
or the destination (or, for a model with no destination in mind, the first exit of the map).
From the samples it derives, per crossing, the probability that the suspect passes, its
earliest and likely arrival, the distribution of its position at every horizon step, and the
k most likely routes. Everything is numpy on the compiled graph; the per-destination time
fields are computed once per city.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from guidance.models import (
    DEFAULT_KIND_PRIOR,
    DEFAULT_MODEL_WEIGHTS,
    MODELS,
    BehaviourModel,
    DestinationKind,
    DestinationSet,
    destination_posterior,
    destination_set,
    edge_bearings,
)
from guidance.types import (
    BeliefLike,
    EscapePrediction,
    EscapeRoute,
    GuidanceError,
    RouteSamples,
)
from map_data.heap import heap_pop, heap_push
from map_data.jit import jit
from map_data.network_types import City
from map_data.types import BoolArray, CompiledGraph, FloatArray, IntArray

PREDICTOR_VERSION = "escape-mixture/5"
_CHOICE_ATOL = math.sqrt(np.finfo(np.float64).eps)  # ``Generator.choice``'s tolerance on the sum
_AWAY_CACHE_SIZE = 64  # incident origins whose distance fields are kept (4 bytes a node each)
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class PredictorConfig:
    """Parameters of escape prediction.

    ``n_routes`` sampled routes; ``top_k`` routes reported; ``max_steps`` bounds the crossings
    per route. ``model_weights`` is the prior mixture of behaviour models (names from
    ``models``) and ``kind_prior`` that of destination kinds. ``speed_update`` lets the belief's
    observed speed reweight the models (after two sightings or more).
    ``plausible_speed_factor``: the earliest ETA at a crossing is never later than the fastest
    path there at this factor of the limit (a deterministic, conservative floor that keeps the
    earliest ETA from jumping with the few samples that pass a rarely visited crossing);
    ``None`` uses the samples alone. ``position_spread``: relative speed uncertainty over
    which each route's position at a horizon is spread (:mod:`guidance.positions`).
    ``exit_detour_s`` / ``exit_detour_fraction``: exits nearer in time from the incident are
    likelier (see :func:`guidance.models.destination_posterior`); ``None`` spreads the exit
    prior evenly.
    """

    n_routes: int = 256
    top_k: int = 5
    max_steps: int = 400
    model_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MODEL_WEIGHTS))
    kind_prior: Mapping[DestinationKind, float] = field(default_factory=lambda: dict(DEFAULT_KIND_PRIOR))
    speed_update: bool = True
    speed_sigma: float = 0.25
    plausible_speed_factor: float | None = 1.6
    position_spread: float = 0.15
    exit_detour_s: float | None = 60.0
    exit_detour_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.n_routes < 1:
            raise GuidanceError(f"PredictorConfig.n_routes must be >= 1, got {self.n_routes}")
        if self.max_steps < 1:
            raise GuidanceError(f"PredictorConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.top_k < 0:
            raise GuidanceError(f"PredictorConfig.top_k must be >= 0, got {self.top_k}")
        if not self.model_weights or any(w < 0 for w in self.model_weights.values()):
            raise GuidanceError("PredictorConfig.model_weights must be non-empty and non-negative")


def derive_seed(incident_id: str, at_iso: str, n_sightings: int) -> int:
    """A 63-bit seed from the inputs, so the same belief always gives the same samples."""
    digest = hashlib.sha256(f"{incident_id}|{at_iso}|{n_sightings}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _draw(rng: np.random.Generator, p: FloatArray, size: int) -> IntArray:
    """``rng.choice(p.size, size=size, p=p)``, draw for draw (its inverse-CDF sampling: the
    cumulative sum over its last value, ``size`` uniform draws, the sorted search to the
    right), without its per-call checks and conversions: the same indices and the same state
    of ``rng`` after (a test compares them). Like it, raises for probabilities that are
    negative, not numbers or do not sum to 1."""
    cdf = np.cumsum(p)
    if not (p.min() >= 0.0 and abs(cdf[-1] - 1.0) <= _CHOICE_ATOL):
        raise ValueError(f"probabilities must be non-negative and sum to 1, got {p}")
    cdf /= cdf[-1]
    out: IntArray = np.searchsorted(cdf, rng.random(size), side="right")
    return out


class EscapePredictor:
    """Predict escape routes on one city (caches the destination time fields).

    Parameters
    ----------
    city
        The city (its compiled graph is used).
    models
        Named behaviour models; defaults to :data:`guidance.models.MODELS`.
    config
        :class:`PredictorConfig`.
    exits
        Exit crossings of the map (e.g. ``map_data.city.exit_nodes``); when ``None`` the
        outermost crossing in each direction is used.
    """

    def __init__(
        self,
        city: City,
        *,
        models: Mapping[str, BehaviourModel] | None = None,
        config: PredictorConfig | None = None,
        exits: IntArray | None = None,
    ) -> None:
        self.city = city
        self.graph: CompiledGraph = city.graph
        self.models: dict[str, BehaviourModel] = dict(models if models is not None else MODELS)
        self.config = config or PredictorConfig()
        unknown = sorted(set(self.config.model_weights) - set(self.models))
        if unknown:
            raise GuidanceError(f"model_weights names unknown models {unknown}; known: {sorted(self.models)}")
        self.model_names: tuple[str, ...] = tuple(
            sorted(n for n, w in self.config.model_weights.items() if w > 0)
        )
        if not self.model_names:
            raise GuidanceError("every behaviour model has weight 0")
        self.destinations: DestinationSet = destination_set(self.graph, exits=exits)
        # The exit crossings (roads cut at the map's edge): a route of a model with ``any_exit``
        # leaves the map by the first one it reaches, rather than turning round at the end of
        # the road.
        exit_node = np.zeros(self.graph.n_nodes, dtype=np.bool_)
        exit_node[self.destinations.nodes[self.destinations.is_exit]] = True
        if exits is not None and len(exits):
            exit_node[np.asarray(exits, dtype=np.int64)] = True
        self._exit_node: BoolArray = exit_node
        g = self.graph
        bearings = edge_bearings(g)
        deg = np.diff(g.out_ptr)
        max_deg = max(int(deg.max()) if deg.size else 1, 1)
        pad = np.full((g.n_nodes, max_deg), -1, dtype=np.int64)
        for v in np.flatnonzero(deg).tolist():
            outs = g.out_of(v)
            pad[v, : outs.size] = outs
        # Per edge e, its successors (the edges leaving its head), -1 padded, and their features.
        succ = pad[g.edge_v]
        self._succ_valid = succ >= 0
        safe = np.where(self._succ_valid, succ, 0)
        self._succ = safe
        self._succ_head = g.edge_v[safe]
        self._succ_time = g.edge_time_s[safe]
        turn = np.abs(np.angle(np.exp(1j * (bearings[safe] - bearings[:, None])))) / (np.pi / 2)
        uturn = self._succ_head == g.edge_u[:, None]
        rank = g.edge_rank[safe]
        names = self.model_names
        static = np.stack(
            [
                np.where(
                    self._succ_valid,
                    -self.models[n].road_weight * rank
                    - self.models[n].straight_weight * turn
                    - self.models[n].uturn_penalty * uturn,
                    -np.inf,
                )
                for n in names
            ]
        )
        # An edge's valid successors come first in its row: the walk reads the first
        # ``_n_succ[e]`` of them.
        self._n_succ: IntArray = self._succ_valid.sum(axis=1).astype(np.int64)
        self._has_succ: BoolArray = np.asarray(self._n_succ > 0, dtype=np.bool_)
        # The walk's table of successors, one row per edge e: its number of successors, then
        # the successors, then their head nodes (int32: the row a step reads fits in a cache
        # line or two).
        if max(g.n_edges, g.n_nodes) >= 2**31:
            raise GuidanceError("the walk's successor table holds edge and node ids as int32")
        width = self._succ.shape[1]
        table = np.empty((g.n_edges, 1 + 2 * width), dtype=np.int32)
        table[:, 0] = self._n_succ
        table[:, 1 : 1 + width] = self._succ
        table[:, 1 + width :] = self._succ_head
        self._succ_table: npt.NDArray[np.int32] = table
        self._times_to_flat = np.ascontiguousarray(self.destinations.times_to, dtype=np.float32).ravel()
        ms = [self.models[n] for n in self.model_names]
        self._m_speed = np.array([m.speed_factor for m in ms])
        self._m_jitter = np.array([m.speed_jitter for m in ms])
        self._m_temp = np.array([m.temperature_s for m in ms])
        self._m_away = np.array([m.away_weight for m in ms])
        self._m_any_exit = np.array([m.any_exit for m in ms], dtype=np.bool_)
        self._m_kinds = [self.destinations.kind_mask(m.destination_kinds) for m in ms]
        # The scores times each model's temperature, in seconds (float32: the walk's score
        # arithmetic): the destination term is then a plain difference of times. One row per
        # (model, edge): row ``model * n_edges + edge``.
        self._static_time: Float32Array = np.ascontiguousarray(
            (static * self._m_temp[:, None, None] - self._succ_time[None, :, :])
            .astype(np.float32)
            .reshape(-1, self._succ.shape[1])
        )
        # Seconds of score per hectometre away from the incident, per model (float32).
        self._away_s: Float32Array = (self._m_away * self._m_temp).astype(np.float32)
        self._away_cache: dict[int, Float32Array] = {}
        self._node_xy: FloatArray = np.ascontiguousarray(g.node_xy, dtype=np.float64)
        # The fastest-edge matrix ``g.time_csr`` as the arrays of its rows, for the physical
        # bound's Dijkstra (:func:`_physical_bound_kernel`).
        csr = g.time_csr
        self._csr_ptr: IntArray = np.ascontiguousarray(csr.indptr, dtype=np.int64)
        self._csr_next: IntArray = np.ascontiguousarray(csr.indices, dtype=np.int64)
        self._csr_time_s: FloatArray = np.ascontiguousarray(csr.data, dtype=np.float64)
        self._kind_values = tuple(k.value for k in self.destinations.kinds)
        self._kind_of = dict(zip(self.destinations.nodes.tolist(), self._kind_values, strict=True))
        self.max_speed_factor = float(np.max(self._m_speed * np.exp(2.5 * self._m_jitter)))
        self.model_version = f"{PREDICTOR_VERSION}:" + ",".join(
            f"{n}={self.config.model_weights[n]:g}" for n in self.model_names
        )

    # ----------------------------------------------------------------------------------------

    def _away_hm(self, origin: int) -> Float32Array:
        """Each crossing's straight-line distance from ``origin`` in hectometres (float32): the
        "away from the incident" term of a successor's score is this at its head times the
        model's :attr:`_away_s`."""
        got = self._away_cache.get(origin)
        if got is not None:
            return got
        out = _away_hm_kernel(self._node_xy, origin)
        out.flags.writeable = False
        if len(self._away_cache) >= _AWAY_CACHE_SIZE:
            self._away_cache.pop(next(iter(self._away_cache)))
        self._away_cache[origin] = out
        return out

    def _check_belief(self, belief: BeliefLike) -> None:
        g = self.graph
        if belief.at.tzinfo is None:
            raise GuidanceError(f"belief of {belief.incident_id!r}: 'at' must be timezone-aware")
        if not belief.positions:
            raise GuidanceError(f"belief of {belief.incident_id!r} has no position")
        for p in belief.positions:
            if not 0 <= p.edge < g.n_edges:
                raise GuidanceError(f"belief of {belief.incident_id!r}: edge {p.edge} out of range")
        if not 0 <= belief.origin_node < g.n_nodes:
            raise GuidanceError(
                f"belief of {belief.incident_id!r}: origin_node {belief.origin_node} out of range"
            )

    def _model_weights(self, belief: BeliefLike, edges: IntArray, probs: FloatArray) -> FloatArray:
        w = np.array([self.config.model_weights[n] for n in self.model_names], dtype=np.float64)
        if self.config.speed_update and belief.n_sightings >= 2 and belief.speed_mps > 0:
            limit = float(probs @ self.graph.edge_speed_mps[edges])
            ratio = belief.speed_mps / max(limit, 1.0)
            lik = np.exp(-0.5 * ((np.log(ratio) - np.log(self._m_speed)) / self.config.speed_sigma) ** 2)
            if (w * lik).sum() > 0:
                w = w * lik
        out: FloatArray = w / w.sum()
        return out

    def predict(
        self,
        belief: BeliefLike,
        *,
        horizon_s: float = 600.0,
        step_s: float = 10.0,
        origin_known: bool = True,
    ) -> EscapePrediction:
        """Predict where the suspect of ``belief`` can be within ``horizon_s`` seconds.

        With ``origin_known=False`` (an incident opened without a position) the destination
        weights stay at their prior and "away from the incident" means away from the most
        likely current position.
        """
        if not horizon_s > 0 or not step_s > 0:
            raise GuidanceError(f"horizon_s and step_s must be > 0, got {horizon_s}, {step_s}")
        self._check_belief(belief)
        g = self.graph
        cfg = self.config
        dests = self.destinations
        seed = derive_seed(belief.incident_id, belief.at.isoformat(), belief.n_sightings)
        rng = np.random.default_rng(seed)
        K = cfg.n_routes

        pos_edges = np.array([p.edge for p in belief.positions], dtype=np.int64)
        pos_off = np.array([p.offset_m for p in belief.positions], dtype=np.float64)
        pos_p = np.array([max(p.probability, 0.0) for p in belief.positions], dtype=np.float64)
        if not pos_p.sum() > 0:
            raise GuidanceError(f"belief of {belief.incident_id!r}: position probabilities sum to 0")
        pos_p = pos_p / pos_p.sum()

        # Mixture weights: models (speed) and destinations (progress since the incident).
        m_w = self._model_weights(belief, pos_edges, pos_p)
        heads_all = g.edge_v[pos_edges]
        origin = belief.origin_node if origin_known else int(heads_all[int(np.argmax(pos_p))])
        d_post = destination_posterior(
            dests,
            origin,
            heads_all,
            pos_p,
            cfg.kind_prior,
            exit_detour_s=cfg.exit_detour_s,
            exit_detour_fraction=cfg.exit_detour_fraction,
        )

        # Sample start, model, destination, speed factor.
        start = _draw(rng, pos_p, K)
        model = _draw(rng, m_w, K)
        dest_idx = np.empty(K, dtype=np.int64)
        for mi in range(len(self.model_names)):
            sel = np.flatnonzero(model == mi)
            if sel.size == 0:
                continue
            w = d_post * self._m_kinds[mi]
            if not w.sum() > 0:
                w = d_post
            dest_idx[sel] = _draw(rng, w / w.sum(), sel.size)
        factor = self._m_speed[model] * np.exp(self._m_jitter[model] * rng.standard_normal(K))
        dest_node = dests.nodes[dest_idx]

        cur_edge = pos_edges[start]
        remaining = np.maximum(0.0, 1.0 - pos_off[start] / np.maximum(g.edge_length_m[cur_edge], 1e-9))
        t = g.edge_time_s[cur_edge] * remaining / factor
        any_exit = self._m_any_exit[model]

        # The walk (compiled): each route in turn, one crossing per step, until the horizon, its
        # destination, an exit (models with ``any_exit``) or a dead end; one uniform draw from
        # ``rng`` per step with a choice (see :func:`_walk_routes`).
        nodes, edges, times, lengths = _walk_routes(
            cur_edge,
            t,
            factor,
            model,
            dest_idx,
            dest_node,
            any_exit,
            self._succ_table,
            self._static_time,
            self._away_s,
            self._away_hm(origin),
            self._times_to_flat,
            self._m_temp,
            g.edge_time_s,
            g.edge_v,
            self._exit_node,
            float(horizon_s),
            cfg.max_steps,
            rng,
        )
        left = _left_map(
            nodes,
            times,
            lengths,
            dest_node,
            dests.is_exit[dest_idx],
            any_exit,
            self._exit_node,
            float(horizon_s),
        )
        weights = np.full(K, 1.0 / K)
        samples = RouteSamples(
            nodes=nodes,
            edges=edges,
            times_s=times,
            lengths=lengths,
            weights=weights,
            destinations=dest_node,
            models=model,
            left=left,
        )

        bound = self._physical_bound(pos_edges, pos_off, horizon_s)
        fast = None
        if cfg.plausible_speed_factor is not None:
            fast = bound * (self.max_speed_factor / cfg.plausible_speed_factor)
        kinds_w: dict[str, float] = {}
        for k, w in zip(self._kind_values, d_post.tolist(), strict=True):
            kinds_w[k] = kinds_w.get(k, 0.0) + w
        return prediction_from_samples(
            g,
            samples,
            incident_id=belief.incident_id,
            at=belief.at,
            horizon_s=horizon_s,
            step_s=step_s,
            bound_eta_s=bound,
            fast_eta_s=fast,
            position_spread=cfg.position_spread,
            top_k=cfg.top_k,
            destination_kinds=self._kind_of,
            destination_weights=kinds_w,
            model_weights=dict(zip(self.model_names, m_w.tolist(), strict=True)),
            model_version=self.model_version,
            seed=seed,
        )

    def _physical_bound(self, pos_edges: IntArray, pos_off: FloatArray, horizon_s: float) -> FloatArray:
        """Lower bound on the arrival at every node, at the top speed factor: one multi-source
        Dijkstra from the positions' head nodes plus the smallest remaining time on an edge
        (compiled: :func:`_physical_bound_kernel`)."""
        g = self.graph
        return _physical_bound_kernel(
            np.ascontiguousarray(pos_edges, dtype=np.int64),
            np.ascontiguousarray(pos_off, dtype=np.float64),
            g.edge_v,
            g.edge_time_s,
            g.edge_length_m,
            self._csr_ptr,
            self._csr_next,
            self._csr_time_s,
            float(horizon_s),
            self.max_speed_factor,
        )


@jit
def _physical_bound_kernel(
    pos_edges: IntArray,
    pos_off: FloatArray,
    edge_v: IntArray,
    edge_time_s: FloatArray,
    edge_length_m: FloatArray,
    indptr: IntArray,
    indices: IntArray,
    time_s: FloatArray,
    horizon_s: float,
    max_speed_factor: float,
) -> FloatArray:
    """:meth:`EscapePredictor._physical_bound`: the times from the positions' head nodes over
    the CSR matrix ``(indptr, indices, time_s)`` (those of ``scipy.sparse.csgraph.dijkstra``
    with ``min_only=True`` and ``limit=horizon_s * max_speed_factor``: a step is taken when
    it arrives within the limit), plus the smallest remaining time on the positions' edges,
    over ``max_speed_factor``; ``inf`` beyond ``horizon_s``.

    A node's time is the least, over the paths to it, of the path's times added in order (the
    arithmetic of any Dijkstra: rounding is monotone), so the order in which a binary heap
    (with stale entries skipped) takes the nodes does not change it."""
    n = indptr.size - 1
    limit = horizon_s * max_speed_factor
    rem_min = np.inf
    for i in range(pos_edges.size):
        e = pos_edges[i]
        rem = edge_time_s[e] * max(0.0, 1.0 - pos_off[i] / max(edge_length_m[e], 1e-9))
        if rem < rem_min:
            rem_min = rem
    dist = np.full(n, np.inf)
    done = np.zeros(n, dtype=np.bool_)
    heap_t = np.empty(indices.size + pos_edges.size, dtype=np.float64)
    heap_v = np.empty(indices.size + pos_edges.size, dtype=np.int64)
    size = 0
    for i in range(pos_edges.size):
        v = edge_v[pos_edges[i]]
        if dist[v] == 0.0:
            continue
        dist[v] = 0.0
        heap_t[size] = 0.0
        heap_v[size] = v
        size += 1  # all at time 0: a heap as it is
    while size > 0:
        t, v, size = heap_pop(heap_t, heap_v, size)
        if done[v]:
            continue
        done[v] = True
        for j in range(indptr[v], indptr[v + 1]):
            u = indices[j]
            if done[u]:
                continue
            nt = t + time_s[j]
            if nt <= limit and nt < dist[u]:
                dist[u] = nt
                size = heap_push(heap_t, heap_v, size, nt, u)
    out = np.empty(n, dtype=np.float64)
    for v in range(n):
        b = (dist[v] + rem_min) / max_speed_factor
        out[v] = np.inf if b > horizon_s else b
    return out


@jit
def _left_map(
    nodes: IntArray,
    times_s: FloatArray,
    lengths: IntArray,
    dest_node: IntArray,
    dest_is_exit: BoolArray,
    any_exit: BoolArray,
    exit_node: BoolArray,
    horizon_s: float,
) -> BoolArray:
    """Per route, whether it left the map within ``horizon_s``: its last crossing is its
    destination and that is an exit, or (``any_exit``) any exit."""
    K = lengths.size
    left = np.empty(K, dtype=np.bool_)
    for k in range(K):
        last = lengths[k] - 1
        v = nodes[k, last]
        out = (v == dest_node[k] and dest_is_exit[k]) or (any_exit[k] and exit_node[v])
        left[k] = out and times_s[k, last] <= horizon_s
    return left


@jit
def _away_hm_kernel(node_xy: FloatArray, origin: int) -> Float32Array:
    """:meth:`EscapePredictor._away_hm`: ``hypot(dx, dy) / 100`` from ``origin`` per node, in
    float32 (the arithmetic of ``np.hypot`` and ``astype``, value for value)."""
    n = node_xy.shape[0]
    out = np.empty(n, dtype=np.float32)
    ox = node_xy[origin, 0]
    oy = node_xy[origin, 1]
    for v in range(n):
        out[v] = np.float32(np.hypot(node_xy[v, 0] - ox, node_xy[v, 1] - oy) / 100.0)
    return out


# --------------------------------------------------------------------------------------------
# The walk (compiled)
# --------------------------------------------------------------------------------------------


@jit
def _walk_routes(
    cur_edge: IntArray,
    t_s: FloatArray,
    factor: FloatArray,
    model: IntArray,
    dest_idx: IntArray,
    dest_node: IntArray,
    any_exit: BoolArray,
    succ_table: npt.NDArray[np.int32],
    static_time: Float32Array,
    away_s: Float32Array,
    away_hm: Float32Array,
    times_to_flat: Float32Array,
    temperature_s: FloatArray,
    edge_time_s: FloatArray,
    edge_v: IntArray,
    exit_node: BoolArray,
    horizon_s: float,
    max_steps: int,
    rng: np.random.Generator,
) -> tuple[IntArray, IntArray, FloatArray, IntArray]:
    """Walk the K routes; return their ``(nodes, edges, times_s, lengths)`` (K × longest,
    padded with -1 / inf), step 0 being each route's start (``cur_edge[k]`` at ``t_s[k]``).

    Edge e's row of ``succ_table`` holds its number of successors ``w``, then (W columns each,
    the first ``w`` used) its successors and their head nodes.

    Route k (model ``m``, speed ``factor[k]``) walks until its time reaches ``horizon_s``, it
    reaches ``dest_node[k]``, an exit when ``any_exit[k]``, an edge with no successor, or
    ``max_steps`` crossings. At each crossing it takes the successor j of its edge e with
    probability proportional to ``exp(score_j / temperature_s[m])``: the softmax of the model's
    logits, the distribution the Gumbel-max trick samples (one uniform draw per step instead of
    one Gumbel draw per successor; none when there is a single successor). ``score_j``, in
    seconds, is ``static_time[m * E + e, j] + away_hm[head_j] * away_s[m] -
    times_to_flat[dest_idx[k] * n + head_j]`` in float32 (the tables' precision: the scores
    of earlier versions, bit for bit); the weights, their sum and the times are float64 (the
    best successor's weight is ``exp(0) = 1`` without calling ``exp``).
    Routes are walked in order, so the draws depend only on ``rng``'s state and the inputs.
    """
    K = cur_edge.size
    S = max_steps + 1
    E = succ_table.shape[0]
    W = (succ_table.shape[1] - 1) // 2
    n = away_hm.size
    # The routes' steps, one route after the other (route k from ``base`` on): the buffer grows
    # (doubling) when a longest possible route might not fit, rather than holding K × S steps,
    # most of which a walk never reaches.
    capacity = K * 64 + S
    flat_edge = np.empty(capacity, dtype=np.int64)
    flat_time = np.empty(capacity, dtype=np.float64)
    lengths = np.empty(K, dtype=np.int64)
    score = np.empty(W, dtype=np.float32)
    weight = np.empty(W, dtype=np.float64)
    base = 0
    for k in range(K):
        if capacity - base < S:
            capacity = max(2 * capacity, base + S)
            grown_edge = np.empty(capacity, dtype=np.int64)
            grown_edge[:base] = flat_edge[:base]
            flat_edge = grown_edge
            grown_time = np.empty(capacity, dtype=np.float64)
            grown_time[:base] = flat_time[:base]
            flat_time = grown_time
        ce = cur_edge[k]
        flat_edge[base] = ce
        flat_time[base] = t_s[k]
        node = edge_v[ce]
        dest = dest_node[k]
        ax = any_exit[k]
        length = 1
        if t_s[k] < horizon_s and node != dest and not (ax and exit_node[node]) and succ_table[ce, 0] > 0:
            f = factor[k]
            walked_s = t_s[k] * f  # free-flow time walked (the route's time times its speed factor)
            limit_s = horizon_s * f
            m = model[k]
            row0 = m * E
            d_off = dest_idx[k] * n
            away = away_s[m]
            temp = temperature_s[m]
            while length < S:
                w_n = succ_table[ce, 0]
                j_pick = 0
                if w_n > 1:
                    row = row0 + ce
                    for j in range(w_n):
                        head = succ_table[ce, 1 + W + j]
                        score[j] = static_time[row, j] + away_hm[head] * away - times_to_flat[d_off + head]
                    best = score[0]
                    for j in range(1, w_n):
                        if score[j] > best:
                            best = score[j]
                    total = 0.0
                    for j in range(w_n):
                        w = 1.0 if score[j] == best else math.exp((score[j] - best) / temp)
                        weight[j] = w
                        total += w
                    u = rng.random() * total
                    acc = 0.0
                    for j in range(w_n):
                        if weight[j] > 0.0:
                            j_pick = j
                            acc += weight[j]
                            if acc > u:
                                break
                node = succ_table[ce, 1 + W + j_pick]
                ce = succ_table[ce, 1 + j_pick]
                walked_s += edge_time_s[ce]
                flat_edge[base + length] = ce
                flat_time[base + length] = walked_s / f
                length += 1
                if walked_s >= limit_s or node == dest or (ax and exit_node[node]) or succ_table[ce, 0] == 0:
                    break
        lengths[k] = length
        base += length
    width = 1
    for k in range(K):
        width = max(width, lengths[k])
    nodes = np.full((K, width), -1, dtype=np.int64)
    edges = np.full((K, width), -1, dtype=np.int64)
    times = np.full((K, width), np.inf, dtype=np.float64)
    base = 0
    for k in range(K):
        for s in range(lengths[k]):
            edge = flat_edge[base + s]
            edges[k, s] = edge
            nodes[k, s] = edge_v[edge]
            times[k, s] = flat_time[base + s]
        base += lengths[k]
    return nodes, edges, times, lengths


# --------------------------------------------------------------------------------------------
# Statistics over the samples (vectorised)
# --------------------------------------------------------------------------------------------


def first_arrivals(samples: RouteSamples, horizon_s: float) -> tuple[IntArray, IntArray, FloatArray]:
    """``(route, node, time)`` of each route's first arrival at each node within the horizon,
    by route, then by node."""
    n_nodes = int(samples.nodes.max(initial=-1)) + 1
    return _first_arrivals_kernel(
        np.ascontiguousarray(samples.nodes, dtype=np.int64),
        np.ascontiguousarray(samples.times_s, dtype=np.float64),
        float(horizon_s),
        n_nodes,
    )


@jit
def _first_visits(
    nodes: IntArray, times_s: FloatArray, horizon_s: float, n: int
) -> tuple[IntArray, int, IntArray]:
    """The first arrivals within ``horizon_s``, route by route (times grow along a route, so a
    route's first visit of a node is its first arrival): ``(found, count, route_end)``, the
    flat indices ``k * S + s`` of the arrivals in ``found[:count]`` and each route's end in it."""
    K, S = nodes.shape
    seen = np.full(n, -1, dtype=np.int64)  # the last route that reached a node
    route_end = np.zeros(K + 1, dtype=np.int64)
    found = np.empty(K * S, dtype=np.int64)  # flat index k * S + s of each first arrival
    count = 0
    for k in range(K):
        for s in range(S):
            v = nodes[k, s]
            if v >= 0 and times_s[k, s] <= horizon_s and seen[v] != k:
                seen[v] = k
                found[count] = k * S + s
                count += 1
        route_end[k + 1] = count
    return found, count, route_end


@jit
def _node_starts(nodes: IntArray, found: IntArray, count: int, n: int) -> IntArray:
    """Where each node's arrivals begin once ordered by node (``found[:count]``, flat indices
    into ``nodes``; ``n + 1`` entries, the last the count): a counting sort's prefix sums."""
    start = np.zeros(n + 1, dtype=np.int64)
    for i in range(count):
        start[nodes.flat[found[i]] + 1] += 1
    for v in range(n):
        start[v + 1] += start[v]
    return start


@jit
def _by_route(
    nodes: IntArray, times_s: FloatArray, by_node: IntArray, route_end: IntArray
) -> tuple[IntArray, IntArray, FloatArray]:
    """The arrivals ``by_node`` (flat indices in order of node, then of route) put in order of
    route (stable: by node within a route): ``(rows, nodes, times)``."""
    S = nodes.shape[1]
    count = by_node.size
    fill = route_end[:-1].copy()
    rows = np.empty(count, dtype=np.int64)
    out_nodes = np.empty(count, dtype=np.int64)
    out_times = np.empty(count, dtype=np.float64)
    for i in range(count):
        f = by_node[i]
        k = f // S
        j = fill[k]
        fill[k] += 1
        rows[j] = k
        out_nodes[j] = nodes.flat[f]
        out_times[j] = times_s.flat[f]
    return rows, out_nodes, out_times


@jit
def _first_arrivals_kernel(
    nodes: IntArray, times_s: FloatArray, horizon_s: float, n_nodes: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """:func:`first_arrivals`: times grow along a route, so a route's first visit of a node is
    its first arrival. The arrivals, found route by route, are put in order of node, then of
    route by two stable counting sorts."""
    n = max(n_nodes, 1)
    found, count, route_end = _first_visits(nodes, times_s, horizon_s, n)
    # By node (stable: by route within a node) ...
    node_start = _node_starts(nodes, found, count, n)
    by_node = np.empty(count, dtype=np.int64)
    for i in range(count):
        v = nodes.flat[found[i]]
        by_node[node_start[v]] = found[i]
        node_start[v] += 1
    # ... then by route (stable: by node within a route).
    return _by_route(nodes, times_s, by_node, route_end)


_INSERTION_RUN = 16  # a node's arrivals up to which :func:`_run_statistics` sorts by insertion


@jit
def _kth_smallest(values: FloatArray, lo: int, hi: int, k: int) -> float:
    """The ``k``-th smallest (from 0) of ``values[lo:hi]``, which it reorders (a quickselect:
    the value is that of any sort)."""
    k += lo
    hi -= 1
    while lo < hi:
        mid = (lo + hi) // 2
        # The median of three as the pivot, moved to ``hi``.
        if values[mid] < values[lo]:
            values[mid], values[lo] = values[lo], values[mid]
        if values[hi] < values[lo]:
            values[hi], values[lo] = values[lo], values[hi]
        if values[mid] < values[hi]:
            values[mid], values[hi] = values[hi], values[mid]
        pivot = values[hi]
        store = lo
        for i in range(lo, hi):
            if values[i] < pivot:
                values[i], values[store] = values[store], values[i]
                store += 1
        values[store], values[hi] = values[hi], values[store]
        if store == k:
            return float(values[k])
        if store < k:
            lo = store + 1
        else:
            hi = store - 1
    return float(values[k])


@jit
def _run_statistics(
    t_s: FloatArray, w_s: FloatArray, start: IntArray, n_nodes: int
) -> tuple[FloatArray, FloatArray]:
    """Per node v, the earliest arrival and the weighted median (``inf`` where none) of the
    arrivals ``t_s[start[v]:start[v + 1]]`` of weights ``w_s`` (in the order of the
    arrivals' routes; both reordered in place): see :func:`_arrival_times_kernel`.

    When a node's arrivals all weigh the same (the predictor's routes do), the running sums
    do not depend on their order: the median is then the arrival of the rank where the
    running weight reaches the target, found without sorting (:func:`_kth_smallest`); other
    nodes' arrivals are sorted (by insertion, or by a merge sort when there are many)."""
    earliest = np.full(n_nodes, np.inf)
    likely = np.full(n_nodes, np.inf)
    cum = 0.0
    for v in range(n_nodes):
        lo = start[v]
        hi = start[v + 1]
        if hi == lo:
            continue
        before = cum
        w0 = w_s[lo]
        even = True
        first = t_s[lo]
        for i in range(lo, hi):
            t = t_s[i]
            if w_s[i] != w0 or t != t or (t == 0.0 and math.copysign(1.0, t) < 0.0):
                # (Times that are not numbers, or -0 (equal to 0 but another median): sorted.)
                even = False
                break
            if t < first:
                first = t
        if even:
            for _ in range(lo, hi):
                cum += w0
            target = before + 0.5 * (cum - before) - 1e-12
            run = before
            rank = hi - lo - 1
            for i in range(hi - lo):
                run += w0
                if run >= target:
                    rank = i
                    break
            earliest[v] = first
            likely[v] = _kth_smallest(t_s, lo, hi, rank)
            continue
        # The node's run by time, stably: an insertion sort for a short run, a merge sort
        # (stable too, so the same order) for a long one.
        if hi - lo > _INSERTION_RUN:
            order = np.argsort(t_s[lo:hi], kind="mergesort")
            run_t = t_s[lo:hi].copy()
            run_w = w_s[lo:hi].copy()
            for i in range(hi - lo):
                t_s[lo + i] = run_t[order[i]]
                w_s[lo + i] = run_w[order[i]]
        else:
            for i in range(lo + 1, hi):
                t = t_s[i]
                w = w_s[i]
                j = i
                while j > lo and t_s[j - 1] > t:
                    t_s[j] = t_s[j - 1]
                    w_s[j] = w_s[j - 1]
                    j -= 1
                t_s[j] = t
                w_s[j] = w
        earliest[v] = t_s[lo]
        for i in range(lo, hi):
            cum += w_s[i]
        target = before + 0.5 * (cum - before) - 1e-12
        run = before  # the same running sum again, up to the median
        med = hi - 1
        for i in range(lo, hi):
            run += w_s[i]
            if run >= target:
                med = i
                break
        likely[v] = t_s[med]
    return earliest, likely


@jit
def _arrival_times_kernel(
    nodes: IntArray, times_s: FloatArray, weights: FloatArray, n_nodes: int
) -> tuple[FloatArray, FloatArray]:
    """Per node, the earliest arrival and the weighted median (``inf`` where none). The
    arrivals are ordered by node (a counting sort keeping their order), then by time (a stable
    sort: equal times keep their order); the running weight is summed over that
    whole order, as a cumulative sum would be, and the median is the first arrival of the node
    whose running weight reaches the weight before the node plus half the node's (less 1e-12).

    The statistics are :func:`_run_statistics`'s."""
    N = nodes.size
    start = np.zeros(n_nodes + 1, dtype=np.int64)
    for i in range(N):
        start[nodes[i] + 1] += 1
    for v in range(n_nodes):
        start[v + 1] += start[v]
    fill = start[:-1].copy()
    t_s = np.empty(N, dtype=np.float64)
    w_s = np.empty(N, dtype=np.float64)
    for i in range(N):
        v = nodes[i]
        j = fill[v]
        fill[v] += 1
        t_s[j] = times_s[i]
        w_s[j] = weights[i]
    return _run_statistics(t_s, w_s, start, n_nodes)


@jit
def _arrival_statistics_kernel(
    nodes: IntArray, times_s: FloatArray, route_w: FloatArray, horizon_s: float, n_nodes: int
) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """:func:`first_arrivals` and the per-node statistics at once: ``(rows, nodes, times)``
    of the first arrivals (by route, then by node), and per node the summed weight of the
    routes that pass (``np.bincount``'s sums over the arrivals: in route order), the earliest
    arrival and the weighted median (:func:`_arrival_times_kernel`'s values). The
    arrivals in order of node, then of route, which :func:`_first_arrivals_kernel` sorts
    them into, are the order in which :func:`_arrival_times_kernel` takes them: they are
    sorted once."""
    S = nodes.shape[1]
    found, count, route_end = _first_visits(nodes, times_s, horizon_s, n_nodes)
    # By node (stable: by route within a node) ...
    start = _node_starts(nodes, found, count, n_nodes)
    fill = start[:-1].copy()
    by_node = np.empty(count, dtype=np.int64)
    pass_w = np.zeros(n_nodes, dtype=np.float64)
    t_s = np.empty(count, dtype=np.float64)
    w_s = np.empty(count, dtype=np.float64)
    for i in range(count):
        f = found[i]
        v = nodes.flat[f]
        j = fill[v]
        fill[v] += 1
        by_node[j] = f
        w = route_w[f // S]
        pass_w[v] += w
        t_s[j] = times_s.flat[f]
        w_s[j] = w
    # ... then by route (stable: by node within a route).
    rows, out_nodes, out_times = _by_route(nodes, times_s, by_node, route_end)
    earliest, likely = _run_statistics(t_s, w_s, start, n_nodes)
    return rows, out_nodes, out_times, pass_w, earliest, likely


def _top_routes(samples: RouteSamples, kind_of: Mapping[int, str], top_k: int) -> tuple[EscapeRoute, ...]:
    """Group the sampled routes by destination; report the most frequent route of each of the
    ``top_k`` heaviest groups with the group's probability (ties: the destination of lower
    index; within a group, the route drawn first). The groups and routes are found by
    :func:`_top_routes_kernel`."""
    total = float(samples.weights.sum())
    reps, dests, group_w = _top_routes_kernel(
        np.ascontiguousarray(samples.nodes, dtype=np.int64),
        np.ascontiguousarray(samples.weights, dtype=np.float64),
        np.ascontiguousarray(samples.destinations, dtype=np.int64),
        int(top_k),
    )
    routes: list[EscapeRoute] = []
    for rep, d, w in zip(reps.tolist(), dests.tolist(), group_w.tolist(), strict=True):
        n = int(samples.lengths[rep])
        routes.append(
            EscapeRoute(
                nodes=tuple(samples.nodes[rep, :n].tolist()),
                edges=tuple(samples.edges[rep, :n].tolist()),
                probability=w / total,
                eta_s=tuple(samples.times_s[rep, :n].tolist()),
                destination=d,
                destination_kind=kind_of.get(d, "unknown"),
            )
        )
    return tuple(routes)


_HASH_MASK = 2**31 - 1  # a route's hash is kept below 2**31: its arithmetic never overflows


@jit
def _top_routes_kernel(
    nodes: IntArray, weights: FloatArray, destinations: IntArray, top_k: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """:func:`_top_routes`: ``(route, destination, weight)`` of each of the ``top_k`` heaviest
    destination groups, heaviest first (ties: the lower destination). A group's weight is the
    sum of its routes' weights in route order (as ``np.bincount`` adds them); its route is
    the one of largest summed weight among the distinct rows of ``nodes`` in the group (ties:
    the one drawn first), reported by its first draw. Equal rows are found by a hash of the
    row's nodes up to its padding (sorted by hash, then by route) and then compared entry by
    entry."""
    K, S = nodes.shape
    # Destination groups: the distinct destinations in increasing order.
    ordered = np.sort(destinations)
    G = 0
    for i in range(K):
        if i == 0 or ordered[i] != ordered[i - 1]:
            ordered[G] = ordered[i]
            G += 1
    values = ordered[:G]
    group = np.searchsorted(values, destinations)
    group_w = np.zeros(G, dtype=np.float64)
    for k in range(K):
        group_w[group[k]] += weights[k]
    # Each route's canonical route: the first drawn with the same destination and row.
    key = np.empty(K, dtype=np.int64)
    for k in range(K):
        h = 0
        for s in range(S):
            v = nodes[k, s]
            if v < 0:  # (the padding: equal rows have equal hashes all the same)
                break
            h = (h * 1000003 + v + 1) & _HASH_MASK
        key[k] = h * K + k
    order = np.argsort(key)
    canon = np.arange(K)
    distinct = np.empty(K, dtype=np.int64)
    lo = 0
    while lo < K:
        h = key[order[lo]] // K
        hi = lo + 1
        while hi < K and key[order[hi]] // K == h:
            hi += 1
        # Routes lo..hi share a hash, in route order: each is a repeat of one of the run's
        # distinct routes so far, or a new one.
        n_distinct = 1
        distinct[0] = order[lo]
        for i in range(lo + 1, hi):
            k = order[i]
            for r in range(n_distinct):
                c = distinct[r]
                if destinations[c] != destinations[k]:
                    continue
                same = True
                for s in range(S):
                    if nodes[c, s] != nodes[k, s]:
                        same = False
                        break
                if same:
                    canon[k] = c
                    break
            if canon[k] == k:
                distinct[n_distinct] = k
                n_distinct += 1
        lo = hi
    n_out = min(top_k, G)
    reps = np.empty(n_out, dtype=np.int64)
    out_dest = np.empty(n_out, dtype=np.int64)
    out_w = np.empty(n_out, dtype=np.float64)
    taken = np.zeros(G, dtype=np.bool_)
    route_w = np.zeros(K, dtype=np.float64)
    for r in range(n_out):
        best = -1
        for g in range(G):
            if not taken[g] and (best < 0 or group_w[g] > group_w[best]):
                best = g
        taken[best] = True
        for k in range(K):
            if group[k] == best:
                route_w[canon[k]] += weights[k]
        rep = -1
        for k in range(K):
            if group[k] == best and canon[k] == k and (rep < 0 or route_w[k] > route_w[rep]):
                rep = k
        reps[r] = rep
        out_dest[r] = values[best]
        out_w[r] = group_w[best]
    return reps, out_dest, out_w


def prediction_from_samples(
    graph: CompiledGraph,
    samples: RouteSamples,
    *,
    incident_id: str,
    at: datetime,
    horizon_s: float = 600.0,
    step_s: float = 10.0,
    bound_eta_s: FloatArray | None = None,
    fast_eta_s: FloatArray | None = None,
    position_spread: float = 0.0,
    top_k: int = 5,
    destination_kinds: Mapping[int, str] | None = None,
    destination_weights: Mapping[str, float] | None = None,
    model_weights: Mapping[str, float] | None = None,
    model_version: str = "samples",
    seed: int = 0,
) -> EscapePrediction:
    """Summarise sampled routes (from :class:`EscapePredictor` or any other generator) into
    an :class:`EscapePrediction`: per-node pass probability and ETAs, per-horizon positions,
    top routes. ``fast_eta_s`` (per node) caps the earliest ETAs and ``bound_eta_s`` floors
    them, when given."""
    if samples.nodes.shape != samples.times_s.shape or samples.nodes.shape != samples.edges.shape:
        raise GuidanceError("samples.nodes, edges and times_s must have the same shape")
    if not samples.weights.sum() > 0:
        raise GuidanceError("sample weights sum to 0")
    rows, nodes, times, pass_w, earliest, likely = _arrival_statistics_kernel(
        np.ascontiguousarray(samples.nodes, dtype=np.int64),
        np.ascontiguousarray(samples.times_s, dtype=np.float64),
        np.ascontiguousarray(samples.weights, dtype=np.float64),
        float(horizon_s),
        graph.n_nodes,
    )
    arrivals = (rows, nodes, times)
    pass_p = pass_w / float(samples.weights.sum())
    bound = np.zeros(graph.n_nodes) if bound_eta_s is None else bound_eta_s
    if fast_eta_s is not None:
        earliest = np.where(np.isfinite(earliest), np.minimum(earliest, fast_eta_s), earliest)
    earliest = np.maximum(earliest, bound)
    horizons_s = np.arange(step_s, horizon_s + 1e-9, step_s)
    routes = _top_routes(samples, destination_kinds or {}, top_k)
    return EscapePrediction(
        incident_id=incident_id,
        at=at,
        horizons_s=horizons_s,
        pass_probability=pass_p,
        suspect_earliest_eta_s=earliest,
        suspect_likely_eta_s=likely,
        suspect_bound_eta_s=bound,
        routes=routes,
        samples=samples,
        destination_weights=dict(destination_weights or {}),
        model_weights=dict(model_weights or {}),
        model_version=model_version,
        graph_version=graph.version,
        seed=seed,
        horizon_s=float(horizon_s),
        first_arrivals=arrivals,
        position_spread=position_spread,
    )


def prediction_geojson(prediction: EscapePrediction, graph: CompiledGraph) -> dict[str, object]:
    """GeoJSON of a prediction (see :func:`guidance.geojson.prediction_geojson`)."""
    from guidance.geojson import prediction_geojson as _geojson

    return _geojson(prediction, graph)
