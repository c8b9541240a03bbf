"""Driving in the simulator: fastest-route fields toward targets, cached per city.

A vehicle heading for a set of target crossings follows the field ``T[v]`` = free-flow time
from ``v`` to the nearest target: at each crossing it takes the out-edge minimising
``edge_time + T[head]``. One reverse Dijkstra per distinct target set serves every vehicle
going there for the whole batch (the cache lives with the :class:`Navigator`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.sparse.csgraph import dijkstra

from map_data.types import CompiledGraph, FloatArray, IntArray

_EARTH_M_PER_DEG = 111_320.0


class Navigator:
    """Fields of travel times to (and from) crossings on one graph, with an LRU cache."""

    def __init__(self, graph: CompiledGraph, *, cache_size: int = 2048) -> None:
        self.graph = graph
        self._reverse = graph.time_csr.T.tocsr()
        self._cache: OrderedDict[tuple[str, tuple[int, ...]], FloatArray] = OrderedDict()
        self._cache_size = cache_size

    def _cached(self, key: tuple[str, tuple[int, ...]]) -> FloatArray | None:
        field = self._cache.get(key)
        if field is not None:
            self._cache.move_to_end(key)
        return field

    def _store(self, key: tuple[str, tuple[int, ...]], field: FloatArray) -> FloatArray:
        self._cache[key] = field
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return field

    def times_to(self, targets: Iterable[int]) -> FloatArray:
        """Free-flow time (s) from every crossing to the nearest of ``targets``."""
        key = ("to", tuple(sorted({int(t) for t in targets})))
        if not key[1]:
            raise ValueError("times_to needs at least one target crossing")
        field = self._cached(key)
        if field is None:
            dist = dijkstra(self._reverse, directed=True, indices=list(key[1]), min_only=True)
            field = self._store(key, np.asarray(dist, dtype=np.float64))
        return field

    def times_from(self, source: int) -> FloatArray:
        """Free-flow time (s) from ``source`` to every crossing."""
        key = ("from", (int(source),))
        field = self._cached(key)
        if field is None:
            dist = dijkstra(self.graph.time_csr, directed=True, indices=int(source))
            field = self._store(key, np.asarray(dist, dtype=np.float64))
        return field

    def next_edge(
        self,
        node: int,
        field: FloatArray,
        *,
        penalty_s: FloatArray | None = None,
        exclude: Sequence[int] = (),
    ) -> int | None:
        """The out-edge of ``node`` on a fastest way down ``field``; ``None`` at a target
        (``field[node] == 0``) or when nothing is reachable. ``penalty_s`` adds a per-crossing
        cost to heads (an evasive driver's dread of crews); ``exclude`` removes edges."""
        g = self.graph
        if field[node] == 0.0 and penalty_s is None:
            return None
        out = g.out_of(node)
        if exclude:
            out = out[~np.isin(out, np.asarray(exclude, dtype=np.int64))]
        if out.size == 0:
            return None
        heads = g.edge_v[out]
        cost = g.edge_time_s[out] + field[heads]
        if penalty_s is not None:
            cost = cost + penalty_s[heads]
        best = int(np.argmin(cost))
        if not np.isfinite(cost[best]):
            return None
        return int(out[best])


def nearest_node(graph: CompiledGraph, lon: float, lat: float, *, among: IntArray | None = None) -> int:
    """The crossing nearest to (lon, lat) (equirectangular distance; fine at city scale)."""
    ll = graph.node_lonlat if among is None else graph.node_lonlat[among]
    k = np.cos(np.radians(lat))
    d2 = ((ll[:, 0] - lon) * k) ** 2 + (ll[:, 1] - lat) ** 2
    i = int(np.argmin(d2))
    return i if among is None else int(among[i])


def distance_m(graph: CompiledGraph, a: int, b: int) -> float:
    """Straight-line distance (m) between two crossings, in the graph's metric CRS."""
    d = graph.node_xy[a] - graph.node_xy[b]
    return float(np.hypot(d[0], d[1]))


def lonlat_distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Equirectangular distance (m) between two WGS84 points."""
    k = np.cos(np.radians((lat1 + lat2) / 2))
    return float(np.hypot((lon1 - lon2) * k, lat1 - lat2) * _EARTH_M_PER_DEG)
