"""Per-graph lookups the tracker needs fast: adjacency as lists, camera spans per edge,
positions to coordinates, and network distances by length."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from map_data.network_types import CameraNetwork
from map_data.types import CompiledGraph, FloatArray, IntArray, LonLat


class RoadIndex:
    """Precomputed, read-only views of a :class:`CompiledGraph` and its :class:`CameraNetwork`.

    Built once per city and shared by every track of it.
    """

    def __init__(self, graph: CompiledGraph, cameras: CameraNetwork) -> None:
        self.graph = graph
        self.cameras = cameras
        self.edge_len: list[float] = [float(v) for v in graph.edge_length_m]
        self.edge_u: list[int] = [int(v) for v in graph.edge_u]
        self.edge_v: list[int] = [int(v) for v in graph.edge_v]
        self.out_list: list[list[int]] = [
            [int(e) for e in graph.out_of(node)] for node in range(graph.n_nodes)
        ]
        #: edge -> ((camera_id, mid_m, start_m, end_m), ...)
        self.edge_spans: dict[int, tuple[tuple[str, float, float, float], ...]] = {
            int(e): tuple((cid, 0.5 * (a + b), a, b) for cid, a, b in spans)
            for e, spans in cameras.on_edge.items()
        }
        # The same stretches as CSR arrays for the compiled kernels (:mod:`tracking.kernels`):
        # those of edge ``e`` are ``span_ptr[e]:span_ptr[e + 1]``, in ``edge_spans`` order, the
        # camera as its index in ``camera_index``.
        self.camera_index: dict[str, int] = {}
        counts = np.zeros(graph.n_edges + 1, dtype=np.int64)
        for e, seen in self.edge_spans.items():
            counts[e + 1] = len(seen)
            for cid, _mid, _a, _b in seen:
                self.camera_index.setdefault(cid, len(self.camera_index))
        self.span_ptr: IntArray = np.cumsum(counts)
        self.span_cam: IntArray = np.zeros(int(self.span_ptr[-1]), dtype=np.int64)
        self.span_mid: FloatArray = np.zeros(int(self.span_ptr[-1]), dtype=np.float64)
        for e, seen in self.edge_spans.items():
            at = int(self.span_ptr[e])
            for q, (cid, mid, _a, _b) in enumerate(seen):
                self.span_cam[at + q] = self.camera_index[cid]
                self.span_mid[at + q] = mid
        self.edge_len_arr: FloatArray = np.asarray(self.edge_len, dtype=np.float64)
        # Polyline arc lengths, to place an offset on the drawn geometry.
        xy = graph.geom_xy
        seg = np.hypot(np.diff(xy[:, 0]), np.diff(xy[:, 1]))
        self._arc = np.zeros(len(xy), dtype=np.float64)
        for e in range(graph.n_edges):
            a, b = int(graph.geom_ptr[e]), int(graph.geom_ptr[e + 1])
            self._arc[a + 1 : b] = np.cumsum(seg[a : b - 1])
        self._arc_list: list[float] = self._arc.tolist()
        self._geom_ptr: list[int] = graph.geom_ptr.tolist()
        #: The same as arrays, for the compiled kernels.
        self.arc: FloatArray = self._arc
        self.geom_ptr_arr: IntArray = np.asarray(graph.geom_ptr, dtype=np.int64)
        gu, gv, glen = graph.edge_u, graph.edge_v, np.maximum(graph.edge_length_m, 1e-3)
        n = graph.n_nodes
        self.length_csr = _min_csr(gu, gv, glen, n)
        self.undirected_csr = _min_csr(
            np.concatenate([gu, gv]), np.concatenate([gv, gu]), np.tile(glen, 2), n
        )

    def camera_code(self, camera_id: str | None) -> int:
        """The index of ``camera_id`` in the kernels' span arrays (-1 for ``None`` or a camera
        that sees no edge: it equals no span's camera)."""
        if camera_id is None:
            return -1
        return self.camera_index.get(camera_id, -1)

    def _index(self, edge: int, offset_m: float) -> tuple[int, float]:
        """Geometry point index ``k`` (of the segment ``k, k + 1`` holding the point ``offset_m``
        along ``edge``) and the fraction of that segment before the point."""
        ptr = self._geom_ptr
        a, b = ptr[edge], ptr[edge + 1]
        arc = self._arc_list
        total = arc[b - 1]
        length = self.edge_len[edge]
        d = 0.0 if length <= 0 else min(max(offset_m, 0.0), length) / length * total
        i = bisect.bisect_right(arc, d, a, b) - a - 1
        i = min(max(i, 0), b - a - 2)
        k = a + i
        span = arc[k + 1] - arc[k]
        return k, (0.0 if span <= 0 else (d - arc[k]) / span)

    def _point(self, edge: int, offset_m: float, coords: FloatArray) -> tuple[float, float, int]:
        k, f = self._index(edge, offset_m)
        x0, y0, x1, y1 = coords.item(k, 0), coords.item(k, 1), coords.item(k + 1, 0), coords.item(k + 1, 1)
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0), k

    def position_xy(self, edge: int, offset_m: float) -> tuple[float, float]:
        """Projected metres of the point ``offset_m`` along ``edge``."""
        x, y, _ = self._point(edge, offset_m, self.graph.geom_xy)
        return x, y

    def position_lonlat(self, edge: int, offset_m: float) -> LonLat:
        """WGS84 of the point ``offset_m`` along ``edge``."""
        lon, lat, _ = self._point(edge, offset_m, self.graph.geom_lonlat)
        return LonLat(lon, lat)

    def bearing_deg(self, edge: int, offset_m: float) -> float:
        """Travel direction on ``edge`` at ``offset_m`` (0 = north, clockwise, degrees)."""
        k, _ = self._index(edge, offset_m)
        return self._bearing_at(k)

    def lonlat_bearing(self, edge: int, offset_m: float) -> tuple[LonLat, float]:
        """:meth:`position_lonlat` and :meth:`bearing_deg` at once."""
        lon, lat, k = self._point(edge, offset_m, self.graph.geom_lonlat)
        return LonLat(lon, lat), self._bearing_at(k)

    def _bearing_at(self, k: int) -> float:
        xy = self.graph.geom_xy
        dx, dy = xy.item(k + 1, 0) - xy.item(k, 0), xy.item(k + 1, 1) - xy.item(k, 1)
        return math.degrees(math.atan2(dx, dy)) % 360.0

    def directed_lengths_from(self, nodes: Sequence[int], *, limit_m: float | None = None) -> FloatArray:
        """Shortest driving distance (m) from each of ``nodes`` to every node: ``(k, n)``."""
        dist = dijkstra(
            self.length_csr,
            directed=True,
            indices=np.asarray(nodes, dtype=np.int64),
            limit=np.inf if limit_m is None else float(limit_m),
        )
        return np.atleast_2d(np.asarray(dist, dtype=np.float64))


def _min_csr(u: IntArray, v: IntArray, w: FloatArray, n: int) -> sp.csr_matrix:
    """CSR matrix holding, per ordered pair (u, v), the smallest of the weights given for it."""
    order = np.lexsort((-w, v, u))
    pu, pv = u[order], v[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (pu[1:] != pu[:-1]) | (pv[1:] != pv[:-1])
    keep = order[last]
    return sp.csr_matrix((w[keep], (u[keep], v[keep])), shape=(n, n))
