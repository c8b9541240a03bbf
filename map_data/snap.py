"""Snap points to the street graph: the nearest directed edge and the offset along it.

Offsets follow :class:`map_data.types.EdgePosition`: metres from the edge's tail, measured in
the edge's ``length`` (the compiled ``edge_length_m``). The polyline in projected metres can
differ slightly from that length (great-circle lengths, UTM scale); positions are mapped
proportionally, so :func:`position_xy` and :meth:`Snapper.snap_xy` are exact inverses.

How a snap works: a ``scipy.spatial.cKDTree`` indexes points sampled every ``spacing_m``
along every segment. Every point of a segment lies within ``spacing_m / 2`` of one of its
samples, so if the nearest sample is ``d0`` away, every segment that can be nearest has a
sample within ``d0 + spacing_m / 2``; those candidate segments are then projected on exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pyproj import Transformer
from scipy.spatial import cKDTree

from map_data.types import CompiledGraph, EdgePosition, FloatArray, IntArray, LonLat

#: Two candidates closer than this (m) count as equally near (reverse twins of a two-way street).
_SAME_M = 1e-6


class Snapper:
    """Nearest-edge index of a compiled graph.

    Parameters
    ----------
    graph
        The compiled street graph.
    spacing_m
        Distance between indexed sample points along the segments.
    tie_m
        With a ``heading_deg``, every edge within ``tie_m`` of the nearest one competes on
        direction (a two-way street's two edges, or the streets meeting at a crossing).
    """

    def __init__(self, graph: CompiledGraph, *, spacing_m: float = 10.0, tie_m: float = 1.0) -> None:
        if not spacing_m > 0:
            raise ValueError(f"spacing_m must be > 0, got {spacing_m!r}")
        if not tie_m >= 0:
            raise ValueError(f"tie_m must be >= 0, got {tie_m!r}")
        self.graph = graph
        self.spacing_m = float(spacing_m)
        self.tie_m = float(tie_m)
        self._to_xy = Transformer.from_crs("EPSG:4326", graph.crs, always_xy=True)

        ptr = graph.geom_ptr
        pts = graph.geom_xy
        point_edge = np.repeat(np.arange(graph.n_edges, dtype=np.int64), np.diff(ptr))
        # A segment starts at every geometry point but the last of its edge.
        is_start = np.ones(len(pts), dtype=bool)
        is_start[ptr[1:] - 1] = False
        start = np.flatnonzero(is_start)
        self._seg_a: FloatArray = pts[start]
        self._seg_b: FloatArray = pts[start + 1]
        self._seg_edge: IntArray = point_edge[start]
        delta = self._seg_b - self._seg_a
        self._seg_len: FloatArray = np.hypot(delta[:, 0], delta[:, 1])
        self._seg_bearing: FloatArray = np.degrees(np.arctan2(delta[:, 0], delta[:, 1])) % 360.0
        # Projected length along the edge where each segment starts, and each edge's total.
        cum = np.cumsum(self._seg_len)
        edge_first_seg = np.searchsorted(self._seg_edge, np.arange(graph.n_edges))
        before = np.concatenate([[0.0], cum])[edge_first_seg]
        self._seg_start: FloatArray = np.concatenate([[0.0], cum[:-1]]) - before[self._seg_edge]
        self._edge_geom_len: FloatArray = np.bincount(
            self._seg_edge, weights=self._seg_len, minlength=graph.n_edges
        ).astype(np.float64)

        n_samples = np.maximum(2, np.ceil(self._seg_len / self.spacing_m).astype(np.int64) + 1)
        sample_seg = np.repeat(np.arange(len(self._seg_len), dtype=np.int64), n_samples)
        first = np.concatenate([[0], np.cumsum(n_samples)[:-1]])
        rank = np.arange(len(sample_seg)) - np.repeat(first, n_samples)
        t = rank / np.repeat(n_samples - 1, n_samples)
        samples = self._seg_a[sample_seg] + t[:, None] * delta[sample_seg]
        self._sample_seg: IntArray = sample_seg
        self._tree = cKDTree(samples)
        self._k = int(min(16, len(samples)))

    # ------------------------------------------------------------------ public

    def snap(self, lon: float, lat: float, *, heading_deg: float | None = None) -> EdgePosition:
        """Nearest directed edge to WGS84 ``(lon, lat)``; see :meth:`snap_xy`."""
        x, y = self._to_xy.transform(lon, lat)
        return self.snap_xy(float(x), float(y), heading_deg=heading_deg)

    def snap_xy(self, x: float, y: float, *, heading_deg: float | None = None) -> EdgePosition:
        """Nearest directed edge to projected ``(x, y)`` and the offset of the nearest point on it.

        With ``heading_deg`` (0 = north, clockwise), the edges within ``tie_m`` of the nearest
        compete on distance plus ``tie_m × (angle to the heading) / 180°``, so the direction of
        a two-way street that matches the heading wins. Without it, equally near edges resolve to the lowest
        edge index, so the answer is deterministic.
        """
        edge, offset_m, _ = self._nearest(float(x), float(y), heading_deg)
        return EdgePosition(edge, offset_m)

    def distance_m(self, lon: float, lat: float) -> float:
        """Distance (m) from WGS84 ``(lon, lat)`` to the nearest edge."""
        x, y = self._to_xy.transform(lon, lat)
        return self._nearest(float(x), float(y), None)[2]

    def distance_xy(self, x: float, y: float) -> float:
        """Distance (m) from projected ``(x, y)`` to the nearest edge."""
        return self._nearest(float(x), float(y), None)[2]

    def snap_many(
        self, lonlat: Sequence[tuple[float, float]] | FloatArray, *, heading_deg: float | None = None
    ) -> list[EdgePosition]:
        """:meth:`snap` for many ``(lon, lat)`` points at once (one projection call)."""
        arr = np.asarray(lonlat, dtype=np.float64).reshape(-1, 2)
        xs, ys = self._to_xy.transform(arr[:, 0], arr[:, 1])
        return [
            self.snap_xy(float(x), float(y), heading_deg=heading_deg)
            for x, y in zip(np.atleast_1d(xs), np.atleast_1d(ys), strict=True)
        ]

    # ------------------------------------------------------------------ internals

    def _candidates(self, x: float, y: float, extra_m: float) -> IntArray:
        """Segments that may lie within ``extra_m`` of the nearest segment to ``(x, y)``."""
        dist, idx = self._tree.query((x, y), k=self._k)
        dist = np.atleast_1d(dist)
        idx = np.atleast_1d(idx)
        radius = float(dist[0]) + self.spacing_m / 2.0 + extra_m + 1e-9
        if dist[-1] <= radius and self._k < self._tree.n:
            idx = np.asarray(self._tree.query_ball_point((x, y), radius), dtype=np.int64)
        else:
            idx = idx[dist <= radius]
        return np.unique(self._sample_seg[idx])

    def _nearest(self, x: float, y: float, heading_deg: float | None) -> tuple[int, float, float]:
        tie = self.tie_m if heading_deg is not None else _SAME_M
        segs = self._candidates(x, y, tie)
        a, b = self._seg_a[segs], self._seg_b[segs]
        ab = b - a
        len2 = np.einsum("ij,ij->i", ab, ab)
        t = np.where(
            len2 > 0,
            ((x - a[:, 0]) * ab[:, 0] + (y - a[:, 1]) * ab[:, 1]) / np.where(len2 > 0, len2, 1.0),
            0.0,
        )
        t = np.clip(t, 0.0, 1.0)
        d = np.hypot(a[:, 0] + t * ab[:, 0] - x, a[:, 1] + t * ab[:, 1] - y)
        best_d = float(d.min())
        close = d <= best_d + tie
        edges = self._seg_edge[segs]
        if heading_deg is None:
            # Lowest edge index among the nearest; its nearest segment on that edge.
            order = np.lexsort((d, edges, ~close))
        else:
            # Distance plus up to ``tie_m`` for driving the opposite way: a reverse twin (same
            # distance) always loses, the next edge straight on (farther) too.
            diff = np.abs((self._seg_bearing[segs] - float(heading_deg) + 180.0) % 360.0 - 180.0)
            score = d + tie * diff / 180.0
            order = np.lexsort((edges, score, ~close))
        i = int(order[0])
        seg = int(segs[i])
        edge = int(edges[i])
        along = float(self._seg_start[seg] + t[i] * self._seg_len[seg])
        return edge, self._offset_m(edge, along), float(d[i])

    def _offset_m(self, edge: int, along_geom_m: float) -> float:
        geom_len = float(self._edge_geom_len[edge])
        length = float(self.graph.edge_length_m[edge])
        if geom_len <= 0:
            return 0.0
        return min(length, max(0.0, along_geom_m / geom_len * length))


def _locate(graph: CompiledGraph, pos: EdgePosition) -> tuple[int, float]:
    """Geometry point index ``i`` and fraction ``f`` so that ``pos`` is ``f`` of the way from
    point ``i`` to point ``i + 1`` of its edge's polyline."""
    if not 0 <= pos.edge < graph.n_edges:
        raise IndexError(f"edge {pos.edge} is not in graph {graph.name!r} ({graph.n_edges} edges)")
    start, stop = int(graph.geom_ptr[pos.edge]), int(graph.geom_ptr[pos.edge + 1])
    pts = graph.geom_xy[start:stop]
    seg = np.hypot(*np.diff(pts, axis=0).T)
    total = float(seg.sum())
    length = float(graph.edge_length_m[pos.edge])
    if total <= 0 or length <= 0:
        return start, 0.0
    along = min(max(pos.offset_m, 0.0), length) / length * total
    cum = np.cumsum(seg)
    i = min(int(np.searchsorted(cum, along, side="left")), len(seg) - 1)
    seg_start = float(cum[i] - seg[i])
    frac = 0.0 if seg[i] <= 0 else (along - seg_start) / float(seg[i])
    return start + i, min(1.0, max(0.0, frac))


def position_xy(graph: CompiledGraph, pos: EdgePosition) -> tuple[float, float]:
    """Projected ``(x, y)`` of a position on an edge."""
    i, f = _locate(graph, pos)
    if f == 0.0:
        return float(graph.geom_xy[i, 0]), float(graph.geom_xy[i, 1])
    p = graph.geom_xy[i] + f * (graph.geom_xy[i + 1] - graph.geom_xy[i])
    return float(p[0]), float(p[1])


def position_lonlat(graph: CompiledGraph, pos: EdgePosition) -> LonLat:
    """WGS84 coordinates of a position on an edge."""
    i, f = _locate(graph, pos)
    if f == 0.0:
        return LonLat(float(graph.geom_lonlat[i, 0]), float(graph.geom_lonlat[i, 1]))
    p = graph.geom_lonlat[i] + f * (graph.geom_lonlat[i + 1] - graph.geom_lonlat[i])
    return LonLat(float(p[0]), float(p[1]))


def heading_at(graph: CompiledGraph, pos: EdgePosition) -> float:
    """Driving direction (degrees, 0 = grid north, clockwise) of the edge at ``pos``."""
    i, _ = _locate(graph, pos)
    start, stop = int(graph.geom_ptr[pos.edge]), int(graph.geom_ptr[pos.edge + 1])
    i = min(i, stop - 2) if stop - start >= 2 else start
    dx, dy = graph.geom_xy[i + 1] - graph.geom_xy[i]
    return math.degrees(math.atan2(float(dx), float(dy))) % 360.0
