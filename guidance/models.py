"""Named behaviour models of a fleeing driver, and the destination mixture they drive toward.

A fleeing driver is not a random walker: they head somewhere (an exit of the map, a far
destination, a place to hide) and choose a route toward it. Each sampled escape route draws a
behaviour model and a destination; at every crossing the driver picks the next street with

.. math::

    P(e \\mid \\text{in}, d) \\propto \\exp\\Big(-\\frac{t_e + T_d(v_e) - T_d(u_e)}{\\tau}
        - w_r\\, r_e - w_s \\frac{|\\theta_e|}{90^\\circ} - w_u [e \\text{ is a U-turn}]
        + w_a \\frac{\\Delta\\rho_e}{100\\,\\text{m}}\\Big)

where :math:`T_d` is the free-flow time to destination :math:`d` (one reverse Dijkstra per
destination, computed once per city), :math:`r_e` the road rank (0 = motorway), :math:`\\theta_e`
the turn angle and :math:`\\Delta\\rho_e` how much farther from the incident the street leads.
The destination weights start from a prior per kind and are updated by how much closer the
observed positions got to each destination (:func:`destination_posterior`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from guidance.types import GuidanceError
from map_data.routing import times_to_nodes
from map_data.types import CompiledGraph, FloatArray, IntArray

#: Residential and smaller roads (ranks of :data:`map_data.types.ROAD_CLASSES`).
_RESIDENTIAL_RANK = 6
#: The ``cruise`` model's temperature (s): a detour of a minute toward its destination moves a
#: choice's logit by 0.1, far less than the road class and the turn.
CRUISE_TEMPERATURE_S = 600.0


class DestinationKind(StrEnum):
    exit = "exit"
    far = "far"
    hide = "hide"


ALL_KINDS: tuple[DestinationKind, ...] = (DestinationKind.exit, DestinationKind.far, DestinationKind.hide)


@dataclass(frozen=True, slots=True)
class BehaviourModel:
    """How a driver picks streets toward their destination (see the module docstring).

    ``speed_factor`` multiplies the legal speed; each sampled route draws its own factor from a
    lognormal of spread ``speed_jitter`` around it. ``temperature_s`` is the softmax temperature
    on detour time: low is a fastest-route driver, high an erratic one. ``any_exit``: the route
    ends at the first exit of the map it reaches, its destination or not (a driver with no
    destination in mind leaves by the road it happens on); otherwise only at its destination.
    """

    name: str
    speed_factor: float = 1.3
    speed_jitter: float = 0.12
    temperature_s: float = 4.0
    road_weight: float = 0.25
    straight_weight: float = 0.6
    uturn_penalty: float = 4.0
    away_weight: float = 0.3
    destination_kinds: tuple[DestinationKind, ...] = ALL_KINDS
    any_exit: bool = False

    def __post_init__(self) -> None:
        if not self.speed_factor > 0:
            raise GuidanceError(f"model {self.name!r}: speed_factor must be > 0, got {self.speed_factor}")
        if not self.temperature_s > 0:
            raise GuidanceError(f"model {self.name!r}: temperature_s must be > 0, got {self.temperature_s}")
        if not self.destination_kinds:
            raise GuidanceError(f"model {self.name!r}: destination_kinds must not be empty")

    def branch_probabilities(
        self, graph: CompiledGraph, in_edge: int, out_edges: IntArray, context: object = None
    ) -> FloatArray:
        """Destination-free branch choice (the ``tracking.behaviour.BranchModel`` role):
        main roads and straight on favoured, U-turns rare. ``context`` is not used."""
        outs = np.asarray(out_edges, dtype=np.int64)
        if outs.size == 0:
            raise GuidanceError(f"model {self.name!r}: no out edge to choose from after edge {in_edge}")
        ins = np.full(1, in_edge, dtype=np.int64)
        logits = prior_logits(graph, ins, outs[None, :], self, edge_bearings(graph))[0]
        w = np.exp(logits - logits.max())
        out: FloatArray = w / w.sum()
        return out


#: The named models. ``main_roads``: the default driver; ``stressed``: faster and more erratic;
#: ``exit_fastest``: heads for the nearest-in-time exit by the fastest route; ``cruise``: no
#: destination in mind (a driver who lost the pursuers and drives on, or one waiting to see): a
#: random route on the larger roads, straight on rather than turning, hardly ever turning round.
#: Its temperature is so high that the destination only says where the walk may stop.
MODELS: Mapping[str, BehaviourModel] = {
    "main_roads": BehaviourModel("main_roads"),
    "stressed": BehaviourModel(
        "stressed",
        speed_factor=1.5,
        speed_jitter=0.15,
        temperature_s=10.0,
        road_weight=0.15,
        straight_weight=0.3,
        uturn_penalty=2.5,
        away_weight=0.5,
    ),
    "exit_fastest": BehaviourModel(
        "exit_fastest",
        speed_factor=1.35,
        speed_jitter=0.08,
        temperature_s=2.0,
        road_weight=0.05,
        straight_weight=0.2,
        uturn_penalty=6.0,
        away_weight=0.0,
        destination_kinds=(DestinationKind.exit,),
    ),
    "cruise": BehaviourModel(
        "cruise",
        speed_factor=1.3,
        speed_jitter=0.12,
        temperature_s=CRUISE_TEMPERATURE_S,
        road_weight=0.6,
        straight_weight=1.0,
        uturn_penalty=6.0,
        away_weight=0.0,
        any_exit=True,
    ),
}

#: The prior mixture: ``cruise`` 0.15, the goal-directed models sharing the rest as before
#: (0.55 : 0.25 : 0.2). The cruise weight was chosen on simulator seeds kept apart from the
#: benchmark's (bench/sim.py --first-seed; docs/simulator.md).
DEFAULT_MODEL_WEIGHTS: Mapping[str, float] = {
    "main_roads": 0.4675,
    "stressed": 0.2125,
    "exit_fastest": 0.17,
    "cruise": 0.15,
}
DEFAULT_KIND_PRIOR: Mapping[DestinationKind, float] = {
    DestinationKind.exit: 0.5,
    DestinationKind.far: 0.3,
    DestinationKind.hide: 0.2,
}


def edge_bearings(graph: CompiledGraph) -> FloatArray:
    """Bearing (radians, atan2 of dy, dx) of each edge from its tail to its head node."""
    d = graph.node_xy[graph.edge_v] - graph.node_xy[graph.edge_u]
    out: FloatArray = np.arctan2(d[:, 1], d[:, 0])
    return out


def prior_logits(
    graph: CompiledGraph,
    in_edges: IntArray,
    out_edges: IntArray,
    model: BehaviourModel,
    bearings: FloatArray,
) -> FloatArray:
    """Destination-free log-weights of ``out_edges`` (K×D, -1 padded) after ``in_edges`` (K)."""
    safe = np.where(out_edges >= 0, out_edges, 0)
    turn = np.abs(np.angle(np.exp(1j * (bearings[safe] - bearings[in_edges][:, None]))))
    uturn = graph.edge_v[safe] == graph.edge_u[in_edges][:, None]
    logits = (
        -model.road_weight * graph.edge_rank[safe]
        - model.straight_weight * turn / (np.pi / 2)
        - model.uturn_penalty * uturn
    )
    out: FloatArray = np.where(out_edges >= 0, logits, -np.inf)
    return out


# --------------------------------------------------------------------------------------------
# Destinations
# --------------------------------------------------------------------------------------------


def _sector_pick(
    graph: CompiledGraph, candidates: IntArray, n_sectors: int, *, farthest: bool = True
) -> IntArray:
    """One candidate per angular sector around the graph's centroid (farthest or nearest to
    the centre), so the picks spread in every direction."""
    if candidates.size == 0:
        return np.zeros(0, dtype=np.int64)
    centre = graph.node_xy.mean(axis=0)
    d = graph.node_xy[candidates] - centre
    angle = np.arctan2(d[:, 1], d[:, 0])
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * n_sectors).astype(np.int64), n_sectors - 1)
    radius = np.hypot(d[:, 0], d[:, 1])
    key = -radius if farthest else radius
    order = np.lexsort((candidates, key, sector))
    first = np.ones(order.size, dtype=bool)
    first[1:] = sector[order][1:] != sector[order][:-1]
    out: IntArray = np.sort(candidates[order[first]])
    return out


def _strongly_connected(graph: CompiledGraph) -> IntArray:
    """Nodes with at least one edge in and one edge out."""
    outdeg = np.diff(graph.out_ptr)
    indeg = np.diff(graph.in_ptr)
    out: IntArray = np.flatnonzero((outdeg > 0) & (indeg > 0)).astype(np.int64)
    return out


def boundary_exits(graph: CompiledGraph, *, n_sectors: int = 24) -> IntArray:
    """Fallback exits when the map does not tag any: the outermost crossing in each of
    ``n_sectors`` directions around the map's centroid."""
    return _sector_pick(graph, _strongly_connected(graph), n_sectors, farthest=True)


def hiding_places(graph: CompiledGraph, *, n_max: int = 12) -> IntArray:
    """Residential dead ends (a single neighbour, reached by residential or smaller streets),
    spread over the map; up to ``n_max``."""
    nodes = _strongly_connected(graph)
    picks: list[int] = []
    for v in nodes.tolist():
        outs = graph.out_of(v)
        ins = graph.into(v)
        neighbours = set(graph.edge_v[outs].tolist()) | set(graph.edge_u[ins].tolist())
        if len(neighbours) == 1 and int(graph.edge_rank[ins].min()) >= _RESIDENTIAL_RANK:
            picks.append(v)
    arr = np.array(picks, dtype=np.int64)
    if arr.size <= n_max:
        return arr
    return _sector_pick(graph, arr, n_max, farthest=True)


def far_destinations(graph: CompiledGraph, *, grid: int = 4) -> IntArray:
    """One main-road crossing near the centre of each cell of a ``grid``×``grid`` partition."""
    nodes = _strongly_connected(graph)
    if nodes.size == 0:
        return nodes
    outs_rank = np.full(graph.n_nodes, 99, dtype=np.int64)
    np.minimum.at(outs_rank, graph.edge_u, graph.edge_rank)
    main = nodes[outs_rank[nodes] <= 4]
    pool = main if main.size >= grid * grid else nodes
    lo = graph.node_xy[pool].min(axis=0)
    hi = graph.node_xy[pool].max(axis=0)
    span = np.maximum(hi - lo, 1.0)
    picks: set[int] = set()
    for i in range(grid):
        for j in range(grid):
            centre = lo + span * (np.array([i, j]) + 0.5) / grid
            d = np.hypot(*(graph.node_xy[pool] - centre).T)
            picks.add(int(pool[int(np.argmin(d))]))
    return np.array(sorted(picks), dtype=np.int64)


@dataclass(frozen=True, eq=False)
class DestinationSet:
    """Candidate destinations, their kinds, and the free-flow time from every node to each
    (``times_to[d, v]``, seconds; unreachable = a large finite penalty)."""

    nodes: IntArray
    kinds: tuple[DestinationKind, ...]
    times_to: FloatArray
    is_exit: np.ndarray = field(repr=False)

    def kind_mask(self, kinds: tuple[DestinationKind, ...]) -> np.ndarray:
        return np.array([k in kinds for k in self.kinds], dtype=bool)


def destination_set(
    graph: CompiledGraph,
    *,
    exits: IntArray | None = None,
    max_exits: int = 64,
    far_grid: int = 6,
    max_hiding: int = 12,
) -> DestinationSet:
    """Choose the destinations (exits, far destinations, hiding places) and run one reverse
    Dijkstra per destination. Exits beyond ``max_exits`` are thinned by direction."""
    ex = boundary_exits(graph) if exits is None or len(exits) == 0 else np.unique(np.asarray(exits))
    if ex.size and (ex.min() < 0 or ex.max() >= graph.n_nodes):
        raise GuidanceError(f"exit node index out of range 0..{graph.n_nodes - 1}")
    if ex.size > max_exits:
        ex = _sector_pick(graph, ex, max_exits, farthest=True)
    exit_set = set(ex.tolist())
    far = [v for v in far_destinations(graph, grid=far_grid).tolist() if v not in exit_set]
    hide = [v for v in hiding_places(graph, n_max=max_hiding).tolist() if v not in exit_set and v not in far]
    nodes = np.array(ex.tolist() + far + hide, dtype=np.int64)
    kinds = (
        (DestinationKind.exit,) * int(ex.size)
        + (DestinationKind.far,) * len(far)
        + (DestinationKind.hide,) * len(hide)
    )
    if nodes.size == 0:
        raise GuidanceError(f"graph {graph.name!r}: no destination could be chosen")
    t = times_to_nodes(graph, nodes)
    finite_max = float(np.max(t[np.isfinite(t)])) if np.isfinite(t).any() else 1.0
    t = np.where(np.isfinite(t), t, 10.0 * finite_max + 3600.0)
    return DestinationSet(
        nodes=nodes,
        kinds=kinds,
        times_to=np.ascontiguousarray(t),
        is_exit=np.array([k == DestinationKind.exit for k in kinds], dtype=bool),
    )


def destination_posterior(
    dests: DestinationSet,
    origin_node: int,
    heads: IntArray,
    head_weights: FloatArray,
    kind_prior: Mapping[DestinationKind, float],
    *,
    sigma_floor_s: float = 30.0,
    sigma_fraction: float = 0.3,
    exit_detour_s: float | None = None,
    exit_detour_fraction: float = 0.5,
) -> FloatArray:
    """Weights over destinations after the movement observed so far.

    The progress toward destination :math:`d` is :math:`g_d = T_d(o) - T_d(x)` (origin
    :math:`o`, current crossing :math:`x`). A driver heading to :math:`d` makes the most
    progress toward it, so the likelihood is
    :math:`\\exp(-(\\max_{d'} g_{d'} - g_d)/\\sigma)` with
    :math:`\\sigma = \\max(\\sigma_0, f \\max_{d'} g_{d'})`, averaged over the position
    hypotheses; the prior gives each kind its weight, shared evenly among its destinations,
    except exits when ``exit_detour_s`` is set: a driver leaving the map takes one of the
    exits nearest in time, so within the exit kind the prior is
    :math:`\\propto \\exp(-(T_d(o) - \\min_{d'} T_{d'}(o)) / s)` with
    :math:`s = \\max(s_0, f \\min_{d'} T_{d'}(o))` (:math:`s_0` = ``exit_detour_s``) (the extra time over
    the nearest exit, relative to a scale growing with the distance to it).
    """
    kinds = dests.kinds
    prior = np.array([kind_prior.get(k, 0.0) for k in kinds], dtype=np.float64)
    for k in set(kinds):
        mask = np.array([kk == k for kk in kinds])
        prior[mask] /= mask.sum()
    if prior.sum() <= 0:
        raise GuidanceError("destination kind prior gives zero weight to every destination")
    t_origin = dests.times_to[:, origin_node]  # (D,)
    ex = dests.is_exit
    if exit_detour_s is not None and ex.sum() > 1:
        t_ex = t_origin[ex]
        nearest = float(t_ex.min())
        scale = max(exit_detour_s, exit_detour_fraction * nearest, 1e-9)
        w = np.exp(-(t_ex - nearest) / scale)
        prior[ex] = prior[ex].sum() * w / w.sum()
    t_here = dests.times_to[:, heads]  # (D, H)
    progress = t_origin[:, None] - t_here
    best = progress.max(axis=0)  # (H,)
    sigma = np.maximum(sigma_floor_s, sigma_fraction * np.abs(best))
    lik = np.exp(-(best[None, :] - progress) / sigma[None, :]) @ head_weights
    post = prior * lik
    total = post.sum()
    if not total > 0:
        post = prior
        total = post.sum()
    out: FloatArray = post / total
    return out
