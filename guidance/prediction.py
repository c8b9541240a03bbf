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
from scipy.sparse.csgraph import dijkstra

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
from map_data.jit import jit
from map_data.network_types import City
from map_data.types import BoolArray, CompiledGraph, FloatArray, IntArray

PREDICTOR_VERSION = "escape-mixture/5"
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
        if not self.model_weights or any(w < 0 for w in self.model_weights.values()):
            raise GuidanceError("PredictorConfig.model_weights must be non-empty and non-negative")


def derive_seed(incident_id: str, at_iso: str, n_sightings: int) -> int:
    """A 63-bit seed from the inputs, so the same belief always gives the same samples."""
    digest = hashlib.sha256(f"{incident_id}|{at_iso}|{n_sightings}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


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
        g = self.graph
        out: Float32Array = (np.hypot(*(g.node_xy - g.node_xy[origin]).T) / 100.0).astype(np.float32)
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
        start = rng.choice(pos_edges.size, size=K, p=pos_p)
        model = rng.choice(len(self.model_names), size=K, p=m_w)
        dest_idx = np.empty(K, dtype=np.int64)
        for mi in range(len(self.model_names)):
            sel = np.flatnonzero(model == mi)
            if sel.size == 0:
                continue
            w = d_post * self._m_kinds[mi]
            if not w.sum() > 0:
                w = d_post
            dest_idx[sel] = rng.choice(w.size, size=sel.size, p=w / w.sum())
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
            self._succ,
            self._n_succ,
            self._succ_head,
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
        last = lengths - 1
        last_node = nodes[np.arange(K), last]
        left = (
            (last_node == dest_node) & dests.is_exit[dest_idx] | any_exit & self._exit_node[last_node]
        ) & (times[np.arange(K), last] <= horizon_s)
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
        Dijkstra from the positions' head nodes plus the smallest remaining time on an edge."""
        g = self.graph
        heads = np.unique(g.edge_v[pos_edges])
        rem = g.edge_time_s[pos_edges] * np.maximum(
            0.0, 1.0 - pos_off / np.maximum(g.edge_length_m[pos_edges], 1e-9)
        )
        limit = horizon_s * self.max_speed_factor
        d = dijkstra(g.time_csr, directed=True, indices=heads, min_only=True, limit=limit)
        out: FloatArray = (np.asarray(d, dtype=np.float64) + float(rem.min())) / self.max_speed_factor
        out[out > horizon_s] = np.inf
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
    succ: IntArray,
    n_succ: IntArray,
    succ_head: IntArray,
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

    Route k (model ``m``, speed ``factor[k]``) walks until its time reaches ``horizon_s``, it
    reaches ``dest_node[k]``, an exit when ``any_exit[k]``, an edge with no successor, or
    ``max_steps`` crossings. At each crossing it takes the successor j of its edge e with
    probability proportional to ``exp(score_j / temperature_s[m])``: the softmax of the model's
    logits, the distribution the Gumbel-max trick samples (one uniform draw per step instead of
    one Gumbel draw per successor; none when there is a single successor). ``score_j``, in
    seconds, is ``static_time[m * E + e, j] + away_hm[head_j] * away_s[m] -
    times_to_flat[dest_idx[k] * n + head_j]`` in float32 (the tables' precision: the scores
    of earlier versions, bit for bit); the weights, their sum and the times are float64.
    Routes are walked in order, so the draws depend only on ``rng``'s state and the inputs.
    """
    K = cur_edge.size
    S = max_steps + 1
    E = succ.shape[0]
    W = succ.shape[1]
    n = away_hm.size
    flat_edge = np.empty(K * S, dtype=np.int64)
    flat_time = np.empty(K * S, dtype=np.float64)
    lengths = np.empty(K, dtype=np.int64)
    score = np.empty(W, dtype=np.float32)
    weight = np.empty(W, dtype=np.float64)
    for k in range(K):
        base = k * S
        ce = cur_edge[k]
        flat_edge[base] = ce
        flat_time[base] = t_s[k]
        node = edge_v[ce]
        dest = dest_node[k]
        ax = any_exit[k]
        length = 1
        if t_s[k] < horizon_s and node != dest and not (ax and exit_node[node]) and n_succ[ce] > 0:
            f = factor[k]
            walked_s = t_s[k] * f  # free-flow time walked (the route's time times its speed factor)
            limit_s = horizon_s * f
            m = model[k]
            row0 = m * E
            d_off = dest_idx[k] * n
            away = away_s[m]
            temp = temperature_s[m]
            while length < S:
                w_n = n_succ[ce]
                j_pick = 0
                if w_n > 1:
                    row = row0 + ce
                    for j in range(w_n):
                        head = succ_head[ce, j]
                        score[j] = static_time[row, j] + away_hm[head] * away - times_to_flat[d_off + head]
                    best = score[0]
                    for j in range(1, w_n):
                        if score[j] > best:
                            best = score[j]
                    total = 0.0
                    for j in range(w_n):
                        w = math.exp((score[j] - best) / temp)
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
                ce = succ[ce, j_pick]
                walked_s += edge_time_s[ce]
                node = edge_v[ce]
                flat_edge[base + length] = ce
                flat_time[base + length] = walked_s / f
                length += 1
                if walked_s >= limit_s or node == dest or (ax and exit_node[node]) or n_succ[ce] == 0:
                    break
        lengths[k] = length
    width = 1
    for k in range(K):
        width = max(width, lengths[k])
    nodes = np.full((K, width), -1, dtype=np.int64)
    edges = np.full((K, width), -1, dtype=np.int64)
    times = np.full((K, width), np.inf, dtype=np.float64)
    for k in range(K):
        base = k * S
        for s in range(lengths[k]):
            edge = flat_edge[base + s]
            edges[k, s] = edge
            nodes[k, s] = edge_v[edge]
            times[k, s] = flat_time[base + s]
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
def _first_arrivals_kernel(
    nodes: IntArray, times_s: FloatArray, horizon_s: float, n_nodes: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """:func:`first_arrivals`: times grow along a route, so a route's first visit of a node is
    its first arrival. The arrivals, found route by route, are put in order of node, then of
    route by two stable counting sorts."""
    K, S = nodes.shape
    n = max(n_nodes, 1)
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
    # By node (stable: by route within a node) ...
    node_start = np.zeros(n + 1, dtype=np.int64)
    for i in range(count):
        node_start[nodes.flat[found[i]] + 1] += 1
    for v in range(n):
        node_start[v + 1] += node_start[v]
    by_node = np.empty(count, dtype=np.int64)
    for i in range(count):
        v = nodes.flat[found[i]]
        by_node[node_start[v]] = found[i]
        node_start[v] += 1
    # ... then by route (stable: by node within a route).
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


def _node_statistics(
    samples: RouteSamples, n_nodes: int, horizon_s: float, arrivals: tuple[IntArray, IntArray, FloatArray]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per node: the probability that a route passes (by ``horizon_s``), its earliest arrival and
    its weighted median arrival (the first arrival, by time, at which the running weight
    reaches half the node's)."""
    rows, nodes, times = arrivals
    w = samples.weights[rows]
    total = float(samples.weights.sum())
    pass_p = np.bincount(nodes, weights=w, minlength=n_nodes) / total
    earliest, likely = _arrival_times_kernel(
        np.ascontiguousarray(nodes, dtype=np.int64),
        np.ascontiguousarray(times, dtype=np.float64),
        np.ascontiguousarray(w, dtype=np.float64),
        n_nodes,
    )
    return pass_p, earliest, likely


@jit
def _arrival_times_kernel(
    nodes: IntArray, times_s: FloatArray, weights: FloatArray, n_nodes: int
) -> tuple[FloatArray, FloatArray]:
    """Per node, the earliest arrival and the weighted median (``inf`` where none). The
    arrivals are ordered by node (a counting sort keeping their order), then by time (a stable
    insertion sort: equal times keep their order); the running weight is summed over that
    whole order, as a cumulative sum would be, and the median is the first arrival of the node
    whose running weight reaches the weight before the node plus half the node's (less 1e-12)."""
    N = nodes.size
    earliest = np.full(n_nodes, np.inf)
    likely = np.full(n_nodes, np.inf)
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
        # Insertion into the node's run, after the arrivals of no later time.
        t = times_s[i]
        w = weights[i]
        while j > start[v] and t_s[j - 1] > t:
            t_s[j] = t_s[j - 1]
            w_s[j] = w_s[j - 1]
            j -= 1
        t_s[j] = t
        w_s[j] = w
    cum = 0.0
    for v in range(n_nodes):
        lo = start[v]
        hi = start[v + 1]
        if hi == lo:
            continue
        earliest[v] = t_s[lo]
        before = cum
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


def _top_routes(samples: RouteSamples, kind_of: Mapping[int, str], top_k: int) -> tuple[EscapeRoute, ...]:
    """Group the sampled routes by destination; report the most frequent route of each of the
    ``top_k`` heaviest groups with the group's probability (ties: the destination of lower
    index; within a group, the route drawn first)."""
    total = float(samples.weights.sum())
    dest_values, dest_of = np.unique(samples.destinations, return_inverse=True)
    # (``bincount`` adds each group's weights in route order, as a running sum would.)
    group_w = np.bincount(dest_of.ravel(), weights=samples.weights, minlength=dest_values.size)
    best_groups = np.lexsort((dest_values, -group_w))[:top_k]
    # One opaque value per route (its nodes, -1 padded): equal values are equal routes.
    rows = np.ascontiguousarray(samples.nodes)
    route_key = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
    routes: list[EscapeRoute] = []
    for g in best_groups.tolist():
        members = np.flatnonzero(dest_of.ravel() == g)
        _, first, which = np.unique(route_key[members], return_index=True, return_inverse=True)
        route_w = np.bincount(which.ravel(), weights=samples.weights[members], minlength=first.size)
        first_k = members[first]
        rep = int(first_k[np.lexsort((first_k, -route_w))[0]])
        n = int(samples.lengths[rep])
        d = int(dest_values[g])
        routes.append(
            EscapeRoute(
                nodes=tuple(samples.nodes[rep, :n].tolist()),
                edges=tuple(samples.edges[rep, :n].tolist()),
                probability=float(group_w[g]) / total,
                eta_s=tuple(samples.times_s[rep, :n].tolist()),
                destination=d,
                destination_kind=kind_of.get(d, "unknown"),
            )
        )
    return tuple(routes)


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
    arrivals = first_arrivals(samples, horizon_s)
    pass_p, earliest, likely = _node_statistics(samples, graph.n_nodes, horizon_s, arrivals)
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
