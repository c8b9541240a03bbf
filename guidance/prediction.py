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
from map_data.network_types import City
from map_data.types import BoolArray, CompiledGraph, FloatArray, IntArray

PREDICTOR_VERSION = "escape-mixture/4"
_STEP_BLOCK = 16  # crossings walked between two checks for the routes that ended
_STATIC_CACHE_SIZE = 8  # incident origins whose per-model score tables are kept
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
        names = sorted(n for n, w in self.config.model_weights.items() if w > 0)
        self._static = np.stack(
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
        self._times_to_flat = np.ascontiguousarray(self.destinations.times_to, dtype=np.float32).ravel()
        self._has_succ: BoolArray = np.asarray(self._succ_valid.any(axis=1), dtype=np.bool_)
        self._all_succ = bool(self._has_succ.all())
        temps = np.array([self.models[n].temperature_s for n in names])
        # The scores times each model's temperature (the argmax over a row's choices is the
        # same): the destination term is then a plain difference of times.
        self._static_time = (self._static * temps[:, None, None] - self._succ_time[None, :, :]).astype(
            np.float32
        )
        self._static_cache: dict[int, Float32Array] = {}
        ms = [self.models[n] for n in self.model_names]
        self._m_speed = np.array([m.speed_factor for m in ms])
        self._m_jitter = np.array([m.speed_jitter for m in ms])
        self._m_temp = np.array([m.temperature_s for m in ms])
        self._m_away = np.array([m.away_weight for m in ms])
        self._m_any_exit = np.array([m.any_exit for m in ms], dtype=np.bool_)
        self._m_kinds = [self.destinations.kind_mask(m.destination_kinds) for m in ms]
        self._kind_values = tuple(k.value for k in self.destinations.kinds)
        self._kind_of = dict(zip(self.destinations.nodes.tolist(), self._kind_values, strict=True))
        self.max_speed_factor = float(np.max(self._m_speed * np.exp(2.5 * self._m_jitter)))
        self.model_version = f"{PREDICTOR_VERSION}:" + ",".join(
            f"{n}={self.config.model_weights[n]:g}" for n in self.model_names
        )

    # ----------------------------------------------------------------------------------------

    def _static_for(self, origin: int) -> Float32Array:
        """Per (model, edge) row, each successor's score without the destination term, in
        seconds (the logit times the model's temperature: same argmax): the static preferences
        and "away from the incident" (``origin``). Terms constant over a row's choices (the time
        left from the current node, its distance from the incident) do not change the argmax
        and are left out. A function of the origin alone: the last few are kept."""
        got = self._static_cache.get(origin)
        if got is not None:
            return got
        g = self.graph
        rho = (np.hypot(*(g.node_xy - g.node_xy[origin]).T) / 100.0).astype(np.float32)  # hm
        away_m = (self._m_away * self._m_temp).astype(np.float32)
        rho_head = rho.take(self._succ_head)
        static = np.empty_like(self._static_time)
        for mi in range(static.shape[0]):
            np.multiply(rho_head, away_m[mi], out=static[mi])
            static[mi] += self._static_time[mi]
        out: Float32Array = static.reshape(-1, static.shape[2])
        out.flags.writeable = False
        if len(self._static_cache) >= _STATIC_CACHE_SIZE:
            self._static_cache.pop(next(iter(self._static_cache)))
        self._static_cache[origin] = out
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

        cur_edge = pos_edges[start].copy()
        remaining = np.maximum(0.0, 1.0 - pos_off[start] / np.maximum(g.edge_length_m[cur_edge], 1e-9))
        t = g.edge_time_s[cur_edge] * remaining / factor
        node = g.edge_v[cur_edge].copy()

        # The walk: one crossing per step for all the routes still walking at once.
        S = cfg.max_steps + 1
        n = g.n_nodes
        E = g.n_edges
        tt_flat = self._times_to_flat
        succ, has_succ = self._succ, self._has_succ
        succ_head, edge_time, edge_v = self._succ_head, g.edge_time_s, g.edge_v
        static = self._static_for(origin)
        exit_node = self._exit_node
        any_exit = self._m_any_exit[model]
        active = (t < horizon_s) & (node != dest_node) & ~(any_exit & exit_node[node]) & has_succ[cur_edge]
        W = succ.shape[1]
        succ_flat = succ.ravel()
        # The routes still walking advance together, ``_STEP_BLOCK`` crossings at a time: a
        # block walks without testing for the end of a route, then finds where each route ended
        # (horizon, destination, dead end) from the block's record, keeps the steps up to there
        # and drops the routes that ended. The state (``idx`` the routes, the other arrays
        # aligned with it) is that of the routes walking at the block's start, and so is the
        # block's Gumbel noise: the draws depend only on the inputs (the seed and the walk).
        idx = np.flatnonzero(active)
        ce = cur_edge[idx]
        row0 = model[idx] * E
        d_off = (dest_idx * n)[idx][:, None]
        temp = self._m_temp[model[idx]][None, :, None].astype(np.float32)
        f_c = factor[idx]
        tc = t[idx] * f_c  # free-flow time walked (the route's time times its speed factor)
        lim = horizon_s * f_c
        dest_c = dest_node[idx]
        any_c = any_exit[idx]
        rec_idx: list[IntArray] = [np.arange(K)]
        rec_step: list[IntArray] = [np.zeros(K, dtype=np.int64)]
        rec_edge: list[IntArray] = [cur_edge]
        rec_time: list[FloatArray] = [t]
        s0 = 1
        while idx.size and s0 < S:
            nb = min(_STEP_BLOCK, S - s0)
            # Standard Gumbel noise in float32: -log(-log(u)), u uniform in [0, 1) (u = 0 gives
            # -inf, never +inf, so a padded successor, at -inf, is never chosen), times each
            # route's temperature (the scores are in seconds: times the temperature, the argmax
            # is the same).
            with np.errstate(divide="ignore"):
                gumbel = -np.log(-np.log(rng.random(size=(nb, idx.size, W), dtype=np.float32)))
            gumbel *= temp
            walked = np.empty((nb, idx.size), dtype=np.int64)
            for j in range(nb):
                # (``take`` gathers rows several times faster than fancy indexing.)
                heads = succ_head.take(ce, axis=0)
                heads += d_off
                logits = static.take(row0 + ce, axis=0)
                logits -= tt_flat.take(heads)
                logits += gumbel[j]
                ce = succ_flat[ce * W + logits.argmax(axis=1)]
                walked[j] = ce
            tw = tc + np.cumsum(edge_time[walked], axis=0)
            heads_w = edge_v[walked]
            ended = (tw >= lim) | (heads_w == dest_c)
            if any_c.any():
                ended |= any_c & exit_node[heads_w]
            if not self._all_succ:
                ended |= ~has_succ[walked]
            ended = np.logical_or.accumulate(ended, axis=0)
            # A route takes a step if it had not ended before it.
            took = np.ones_like(ended)
            took[1:] = ~ended[:-1]
            j_took, r_took = np.nonzero(took)
            rec_idx.append(idx[r_took])
            rec_step.append(s0 + j_took)
            rec_edge.append(walked[j_took, r_took])
            rec_time.append(tw[j_took, r_took] / f_c[r_took])
            go = ~ended[-1]
            idx, ce, tc, row0, d_off = idx[go], ce[go], tw[-1][go], row0[go], d_off[go]
            temp, f_c, lim, dest_c, any_c = temp[:, go], f_c[go], lim[go], dest_c[go], any_c[go]
            s0 += nb
        all_idx = np.concatenate(rec_idx)
        all_step = np.concatenate(rec_step)
        lengths = np.bincount(all_idx, minlength=K).astype(np.int64)
        width = int(lengths.max())
        edges = np.full((K, width), -1, dtype=np.int64)
        times = np.full((K, width), np.inf, dtype=np.float64)
        edges[all_idx, all_step] = np.concatenate(rec_edge)
        times[all_idx, all_step] = np.concatenate(rec_time)
        nodes = np.where(edges >= 0, edge_v[np.maximum(edges, 0)], -1)
        last_node = nodes[np.arange(K), lengths - 1]
        left = ((last_node == dest_node) & dests.is_exit[dest_idx] | any_exit & exit_node[last_node]) & (
            times[np.arange(K), lengths - 1] <= horizon_s
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
# Statistics over the samples (vectorised)
# --------------------------------------------------------------------------------------------


def first_arrivals(samples: RouteSamples, horizon_s: float) -> tuple[IntArray, IntArray, FloatArray]:
    """``(route, node, time)`` of each route's first arrival at each node within the horizon."""
    K, S = samples.nodes.shape
    valid = (samples.nodes >= 0) & (samples.times_s <= horizon_s)
    rows = np.broadcast_to(np.arange(K)[:, None], (K, S))[valid]
    nodes = samples.nodes[valid]
    times = samples.times_s[valid]
    # Times grow along a route, so the first (route, node) occurrence is the first arrival.
    key = rows * (int(nodes.max(initial=0)) + 1) + nodes
    _, first = np.unique(key, return_index=True)
    return rows[first], nodes[first], times[first]


def _node_statistics(
    samples: RouteSamples, n_nodes: int, horizon_s: float, arrivals: tuple[IntArray, IntArray, FloatArray]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    rows, nodes, times = arrivals
    w = samples.weights[rows]
    total = float(samples.weights.sum())
    pass_p = np.bincount(nodes, weights=w, minlength=n_nodes) / total
    earliest = np.full(n_nodes, np.inf)
    likely = np.full(n_nodes, np.inf)
    if nodes.size:
        order = np.argsort(nodes + times / (horizon_s + 1.0))  # by node, then time
        n_s, t_s, w_s = nodes[order], times[order], w[order]
        starts = np.flatnonzero(np.r_[True, n_s[1:] != n_s[:-1]])
        group_nodes = n_s[starts]
        earliest[group_nodes] = t_s[starts]
        cum = np.cumsum(w_s)
        before = np.r_[0.0, cum][starts]
        ends = np.r_[starts[1:], n_s.size]
        group_total = cum[ends - 1] - before
        target = before + 0.5 * group_total
        med = np.searchsorted(cum, target - 1e-12)
        likely[group_nodes] = t_s[np.minimum(med, ends - 1)]
    return pass_p, earliest, likely


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
