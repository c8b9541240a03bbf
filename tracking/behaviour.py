"""Branch priors at crossings: which way a fleeing driver turns.

A :class:`BranchModel` gives, for a vehicle arriving on ``in_edge`` at a crossing, the
probability of leaving by each of ``out_edges``. The tracker uses it to grow route hypotheses;
guidance's escape-route prediction implements the same protocol with other models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from map_data.types import CompiledGraph, FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class BranchContext:
    """What a branch model may know besides the graph.

    ``origin_xy`` is the incident's crossing in projected metres (``None`` when unknown):
    fleeing drivers tend to get away from it.
    """

    origin_xy: tuple[float, float] | None = None


class BranchModel(Protocol):
    """The probability of each way out of a crossing."""

    def branch_probabilities(
        self,
        graph: CompiledGraph,
        in_edge: int,
        out_edges: IntArray,
        context: BranchContext,
    ) -> FloatArray:
        """One probability per ``out_edges`` entry (non-negative, summing to 1)."""
        ...


def edge_start_direction(graph: CompiledGraph, edge: int) -> tuple[float, float]:
    """Unit vector of ``edge``'s first segment (projected metres)."""
    xy = graph.edge_xy(edge)
    return _unit(float(xy[1, 0] - xy[0, 0]), float(xy[1, 1] - xy[0, 1]))


def edge_end_direction(graph: CompiledGraph, edge: int) -> tuple[float, float]:
    """Unit vector of ``edge``'s last segment (projected metres)."""
    xy = graph.edge_xy(edge)
    return _unit(float(xy[-1, 0] - xy[-2, 0]), float(xy[-1, 1] - xy[-2, 1]))


def _unit(dx: float, dy: float) -> tuple[float, float]:
    norm = math.hypot(dx, dy)
    if norm == 0.0:
        return (0.0, 0.0)
    return (dx / norm, dy / norm)


@dataclass(frozen=True, slots=True)
class RoadBehaviour:
    """Default branch model: main roads and straight on favoured, U-turns rare, away from the incident.

    Each way out ``e`` gets a score, and the probabilities are its softmax:

    .. math::

        \\mathrm{score}(e) = -w_{turn} \\frac{1 - \\cos\\theta_e}{2}
            - w_{rank} (\\mathrm{rank}_e - \\min_{e'} \\mathrm{rank}_{e'})
            + w_{away} \\frac{|v_e - o| - |u_e - o|}{\\ell_e}
            + [e \\text{ is a U-turn}] \\log p_{U}

    where :math:`\\theta_e` is the turning angle (0 straight on, π back), rank the OSM road
    class rank (0 = motorway), :math:`o` the incident's crossing and :math:`\\ell_e` the edge
    length. A U-turn is the reverse edge of ``in_edge`` or a turn sharper than 150°.
    """

    turn_weight: float = 2.5
    rank_weight: float = 0.35
    away_weight: float = 0.8
    u_turn_probability: float = 0.02

    def branch_probabilities(
        self,
        graph: CompiledGraph,
        in_edge: int,
        out_edges: IntArray,
        context: BranchContext,
    ) -> FloatArray:
        n = len(out_edges)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        # Plain Python on a handful of edges: several times faster than numpy on tiny arrays.
        xy = graph.geom_xy
        ptr = graph.geom_ptr
        end = int(ptr[in_edge + 1])
        dinx, diny = _unit(float(xy[end - 1, 0] - xy[end - 2, 0]), float(xy[end - 1, 1] - xy[end - 2, 1]))
        tail = int(graph.edge_u[in_edge])
        outs = [int(e) for e in out_edges]
        ranks = [int(graph.edge_rank[e]) for e in outs]
        min_rank = min(ranks)
        log_u = math.log(self.u_turn_probability)
        origin = context.origin_xy
        node_xy = graph.node_xy
        values: list[float] = []
        for e, rank in zip(outs, ranks, strict=True):
            k = int(ptr[e])
            dx, dy = _unit(float(xy[k + 1, 0] - xy[k, 0]), float(xy[k + 1, 1] - xy[k, 1]))
            cos_theta = dinx * dx + diny * dy
            score = -self.turn_weight * (1.0 - cos_theta) / 2.0 - self.rank_weight * (rank - min_rank)
            head = int(graph.edge_v[e])
            if origin is not None:
                u = int(graph.edge_u[e])
                du = math.hypot(float(node_xy[u, 0]) - origin[0], float(node_xy[u, 1]) - origin[1])
                dv = math.hypot(float(node_xy[head, 0]) - origin[0], float(node_xy[head, 1]) - origin[1])
                length = max(float(graph.edge_length_m[e]), 1.0)
                score += self.away_weight * max(-1.0, min(1.0, (dv - du) / length))
            if head == tail or cos_theta < -0.866:
                score += log_u
            values.append(score)
        scores = np.asarray(values, dtype=np.float64)
        scores -= scores.max()
        p = np.exp(scores)
        out: FloatArray = p / p.sum()
        return out

    def branch_table(self, graph: CompiledGraph, context: BranchContext) -> tuple[IntArray, FloatArray]:
        """Every crossing's priors at once (see :class:`BranchTableModel`); same numbers as
        :meth:`branch_probabilities`, a few milliseconds for a city."""
        return _road_branch_table(self, graph, context)


class BranchTableModel(BranchModel, Protocol):
    """A branch model that can also give every crossing's priors at once (optional fast path)."""

    def branch_table(self, graph: CompiledGraph, context: BranchContext) -> tuple[IntArray, FloatArray]:
        """``(ptr, probabilities)``: for a vehicle arriving on edge ``e``, the probabilities of
        ``graph.out_of(graph.edge_v[e])`` (in that order) are ``probabilities[ptr[e]:ptr[e + 1]]``."""
        ...


def _road_branch_table(
    model: RoadBehaviour, graph: CompiledGraph, context: BranchContext
) -> tuple[IntArray, FloatArray]:
    """:meth:`RoadBehaviour.branch_probabilities` for every arriving edge, vectorised."""
    return RoadBranchParts(model, graph).table(context)


class RoadBranchParts:
    """The parts of :class:`RoadBehaviour`'s branch table that do not depend on the
    :class:`BranchContext` (turning angles, road ranks, U-turns), computed once per graph.

    :meth:`table` gives exactly the numbers of :meth:`RoadBehaviour.branch_table` (it is that
    method's implementation) for any context, so trackers of one city share one instance.
    """

    def __init__(self, model: RoadBehaviour, graph: CompiledGraph) -> None:
        self.model = model
        self.graph = graph
        m = graph.n_edges
        heads = graph.edge_v
        deg = graph.out_ptr[heads + 1] - graph.out_ptr[heads]
        ptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(deg, out=ptr[1:])
        total = int(ptr[-1])
        in_idx = np.repeat(np.arange(m, dtype=np.int64), deg)
        offs = np.arange(total, dtype=np.int64) - np.repeat(ptr[:-1], deg)
        out_idx = graph.out_edges[np.repeat(graph.out_ptr[heads], deg) + offs]
        xy = graph.geom_xy
        ends = graph.geom_ptr[1:]
        din = xy[ends - 1] - xy[ends - 2]
        din = din / np.maximum(np.hypot(din[:, 0], din[:, 1]), 1e-300)[:, None]
        din[~np.isfinite(din).all(axis=1)] = 0.0
        starts = graph.geom_ptr[:-1]
        dout = xy[starts + 1] - xy[starts]
        dout = dout / np.maximum(np.hypot(dout[:, 0], dout[:, 1]), 1e-300)[:, None]
        cos_theta = np.einsum("ij,ij->i", din[in_idx], dout[out_idx])
        ranks = graph.edge_rank[out_idx].astype(np.float64)
        nonempty = deg > 0
        group_starts = ptr[:-1][nonempty]
        min_rank = np.full(m, 0.0)
        min_rank[nonempty] = np.minimum.reduceat(ranks, group_starts)
        self.ptr = ptr
        self._in_idx = in_idx
        self._out_idx = out_idx
        self._nonempty = nonempty
        self._group_starts = group_starts
        self._base = -model.turn_weight * (1.0 - cos_theta) / 2.0 - model.rank_weight * (
            ranks - min_rank[in_idx]
        )
        u_turn = (graph.edge_v[out_idx] == graph.edge_u[in_idx]) | (cos_theta < -0.866)
        self._u_turn = np.where(u_turn, math.log(model.u_turn_probability), 0.0)
        self._away: tuple[FloatArray, FloatArray, FloatArray] | None = None

    def table(self, context: BranchContext) -> tuple[IntArray, FloatArray]:
        """``(ptr, probabilities)`` as :meth:`BranchTableModel.branch_table` (new arrays)."""
        graph = self.graph
        model = self.model
        m = graph.n_edges
        in_idx = self._in_idx
        scores = self._base
        if context.origin_xy is not None:
            if self._away is None:
                out_idx = self._out_idx
                self._away = (
                    graph.node_xy[graph.edge_u[out_idx]],
                    graph.node_xy[graph.edge_v[out_idx]],
                    np.maximum(graph.edge_length_m[out_idx], 1.0),
                )
            pu, pv, length = self._away
            ox, oy = context.origin_xy
            du = np.hypot(pu[:, 0] - ox, pu[:, 1] - oy)
            dv = np.hypot(pv[:, 0] - ox, pv[:, 1] - oy)
            scores = scores + model.away_weight * np.clip((dv - du) / length, -1.0, 1.0)
        scores = scores + self._u_turn
        nonempty, group_starts = self._nonempty, self._group_starts
        top = np.zeros(m)
        top[nonempty] = np.maximum.reduceat(scores, group_starts)
        p = np.exp(scores - top[in_idx])
        sums = np.ones(m)
        sums[nonempty] = np.add.reduceat(p, group_starts)
        probs: FloatArray = p / sums[in_idx]
        return self.ptr.copy(), probs
