"""Driving in the simulator: fastest-route fields toward targets, cached per city.

A vehicle heading for a set of target crossings follows the field ``T[v]`` = free-flow time
from ``v`` to the nearest target: at each crossing it takes the out-edge minimising
``edge_time + T[head]``. One reverse Dijkstra per distinct target set serves every vehicle
going there for the whole batch (the cache lives with the :class:`Navigator`).

The fields come from :class:`Search`, a compiled Dijkstra (:func:`_settle`, ``map_data.jit``)
over the graph's CSR matrix, whose times are scipy's ``csgraph.dijkstra``'s bit for bit: a
crossing's time is the least ``T[u] + w`` over its arcs, which has one solution whatever order
ties are popped in (tests compare the two). A crew heads for a new crossing several times a run
and needs only the crossings nearer the target than itself: :meth:`Navigator.next_edge_to`
stops the search there and takes it further when a crew farther away asks (a full field per
target was ~40 % of the simulator's own CPU in a guidance run on harrisburg).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from map_data.heap import heap_pop, heap_push
from map_data.jit import jit
from map_data.types import BoolArray, CompiledGraph, FloatArray, IntArray

_EARTH_M_PER_DEG = 111_320.0


@jit
def _settle(
    dist: FloatArray,
    done: BoolArray,
    heap_t: FloatArray,
    heap_v: IntArray,
    size: int,
    indptr: IntArray,
    indices: IntArray,
    weights: FloatArray,
    stop: int,
) -> int:
    """Go on with a Dijkstra search over a CSR graph (row ``u``'s entries are arcs
    ``u -> indices[k]`` of weight ``weights[k]``; explicit zeros are arcs, as in scipy's
    csgraph): ``dist`` holds the times so far (``inf``: not reached), ``done`` the settled
    nodes, ``heap_t``/``heap_v`` a binary heap of (time, node) of its first ``size`` entries
    (stale entries are skipped when popped). Runs until the heap is empty or, with ``stop >=
    0``, ``stop`` is settled and every entry left is later than it: then every node at most
    ``dist[stop]`` away is settled. The heap must have room for ``size`` + the arcs' count
    entries. Returns the heap's new size."""
    while size > 0:
        if stop >= 0 and done[stop] and heap_t[0] > dist[stop]:
            break
        t, v, size = heap_pop(heap_t, heap_v, size)
        if done[v] or t > dist[v]:
            continue
        done[v] = True
        for k in range(indptr[v], indptr[v + 1]):
            u = indices[k]
            nt = t + weights[k]
            if nt < dist[u]:
                dist[u] = nt
                size = heap_push(heap_t, heap_v, size, nt, u)
    return size


Csr = tuple[IntArray, IntArray, FloatArray]


def _csr_arrays(matrix: Any) -> Csr:
    """A scipy CSR matrix's (indptr, indices, data) as int64, int64, float64 arrays."""
    indptr = np.ascontiguousarray(matrix.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(matrix.indices, dtype=np.int64)
    data = np.ascontiguousarray(matrix.data, dtype=np.float64)
    return indptr, indices, data


@dataclass(slots=True, eq=False)
class Search:
    """A Dijkstra search from a set of sources over a CSR graph, which can be taken further
    (:meth:`settle_to`): the times of the nodes settled so far are final (scipy's), the others
    are upper bounds or ``inf``."""

    csr: Csr
    dist: FloatArray
    done: BoolArray
    heap_t: FloatArray
    heap_v: IntArray
    size: int

    @classmethod
    def start(cls, csr: Csr, n: int, sources: Sequence[int]) -> Search:
        src = np.unique(np.asarray(sources, dtype=np.int64))
        if src.size and (int(src[0]) < 0 or int(src[-1]) >= n):
            raise ValueError(f"source crossing out of range 0..{n - 1}: {list(sources)}")
        dist = np.full(n, np.inf, dtype=np.float64)
        dist[src] = 0.0
        heap_t = np.zeros(src.size, dtype=np.float64)  # all keys 0: already a heap
        return cls(csr, dist, np.zeros(n, dtype=np.bool_), heap_t, src.copy(), int(src.size))

    @property
    def complete(self) -> bool:
        return self.size == 0

    def settle_to(self, stop: int = -1) -> FloatArray:
        """Settle every node no farther than ``stop`` (``-1``: every node); returns ``dist``."""
        if self.size == 0 or (stop >= 0 and self.done[stop] and self.heap_t[0] > self.dist[stop]):
            return self.dist
        cap = self.size + self.csr[1].shape[0] + 1
        heap_t = np.empty(cap, dtype=np.float64)
        heap_v = np.empty(cap, dtype=np.int64)
        heap_t[: self.size] = self.heap_t[: self.size]
        heap_v[: self.size] = self.heap_v[: self.size]
        size = int(_settle(self.dist, self.done, heap_t, heap_v, self.size, *self.csr, int(stop)))
        # Keep only the live part of the heap (a cached search holds it between calls).
        self.heap_t, self.heap_v, self.size = heap_t[:size].copy(), heap_v[:size].copy(), size
        return self.dist


def shortest_times(csr: Csr, n: int, sources: Sequence[int]) -> FloatArray:
    """Times (s) from the nearest of ``sources`` to every node of the CSR graph ``csr``
    (``(indptr, indices, data)``, ``n`` nodes): scipy's ``dijkstra(..., min_only=True)``."""
    return Search.start(csr, n, sources).settle_to(-1)


class Navigator:
    """Fields of travel times to (and from) crossings on one graph, with an LRU cache."""

    def __init__(self, graph: CompiledGraph, *, cache_size: int = 2048) -> None:
        self.graph = graph
        self._forward = _csr_arrays(graph.time_csr.tocsr())
        self._reverse = _csr_arrays(graph.time_csr.T.tocsr())
        self._cache: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self._cache_size = cache_size

    def _cached(self, key: tuple[str, tuple[int, ...]]) -> Any:
        field = self._cache.get(key)
        if field is not None:
            self._cache.move_to_end(key)
        return field

    def _store(self, key: tuple[str, tuple[int, ...]], field: Any) -> Any:
        self._cache[key] = field
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return field

    def next_edge_to(self, node: int, target: int) -> int | None:
        """``next_edge(node, times_to([target]))``, the same edge, searching only as far as
        ``node`` needs.

        A crew heads for a new crossing several times a run, and its route needs the times of
        the crossings no farther from the target than itself, not the whole field: the reverse
        search from ``target`` stops once every crossing at most ``T[node]`` away is settled
        (:class:`Search`, kept in the cache and taken further when a crew farther away asks).
        The decision is the full field's: the best out-edge's head is settled (``T[head] <=
        T[node]``), so are the heads of every out-edge tying with it, and every other head's
        time so far is at least its exact time, which is already more than ``T[node]``."""
        full = self._cached(("to", (int(target),)))
        if full is not None:
            return self.next_edge(node, full)
        key = ("route", (int(target),))
        search: Search | None = self._cached(key)
        if search is None:
            search = self._store(key, Search.start(self._reverse, self.graph.n_nodes, (int(target),)))
        return self.next_edge(node, search.settle_to(int(node)))

    def times_to(self, targets: Iterable[int]) -> FloatArray:
        """Free-flow time (s) from every crossing to the nearest of ``targets``."""
        key = ("to", tuple(sorted({int(t) for t in targets})))
        if not key[1]:
            raise ValueError("times_to needs at least one target crossing")
        field: FloatArray | None = self._cached(key)
        if field is None:
            route = self._cache.get(("route", key[1]))
            if route is not None and len(key[1]) == 1:  # a crew's partial search, finished
                del self._cache[("route", key[1])]
                field = self._store(key, route.settle_to(-1))
            else:
                field = self._store(key, shortest_times(self._reverse, self.graph.n_nodes, key[1]))
        return field

    def times_from(self, source: int) -> FloatArray:
        """Free-flow time (s) from ``source`` to every crossing."""
        key = ("from", (int(source),))
        field: FloatArray | None = self._cached(key)
        if field is None:
            field = self._store(key, shortest_times(self._forward, self.graph.n_nodes, key[1]))
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
