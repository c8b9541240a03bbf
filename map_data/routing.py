"""Travel-time queries on a :class:`CompiledGraph` (scipy.sparse.csgraph Dijkstra).

All times are free-flow seconds at the edges' legal speeds; callers scale them for a suspect
driving above the limit or a crew with its own speed factor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.sparse.csgraph import dijkstra

from map_data.types import CompiledGraph, EdgePosition, FloatArray, IntArray


def _dijkstra(matrix: Any, indices: Sequence[int] | IntArray, limit_s: float | None) -> FloatArray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        return np.zeros((0, matrix.shape[0]), dtype=np.float64)
    n = matrix.shape[0]
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"node {int(bad[0])} is not in the graph ({n} nodes)")
    dist = dijkstra(matrix, directed=True, indices=idx, limit=np.inf if limit_s is None else float(limit_s))
    return np.atleast_2d(np.asarray(dist, dtype=np.float64))


def times_from_nodes(
    graph: CompiledGraph,
    sources: Sequence[int] | IntArray,
    *,
    limit_s: float | None = None,
) -> FloatArray:
    """Travel time (s) from each source node to every node: shape ``(len(sources), n)``.

    Nodes farther than ``limit_s`` (when given) are ``inf``; the search stops there, so a
    time-limited query is cheaper than a full one.
    """
    return _dijkstra(graph.time_csr, sources, limit_s)


def times_to_nodes(
    graph: CompiledGraph,
    targets: Sequence[int] | IntArray,
    *,
    limit_s: float | None = None,
) -> FloatArray:
    """Travel time (s) from every node to each target node: shape ``(len(targets), n)``."""
    return _dijkstra(graph.time_csr.T.tocsr(), targets, limit_s)


def times_from_positions(
    graph: CompiledGraph,
    positions: Sequence[EdgePosition],
    *,
    limit_s: float | None = None,
) -> FloatArray:
    """Travel time (s) from each on-edge position to every node: shape ``(len(positions), n)``.

    A vehicle at ``offset_m`` along edge ``e`` first drives to the end of ``e`` (it cannot turn
    round mid-block), then on. The head node of ``e`` is reached after the remaining time.
    Offsets are clamped to ``[0, length]``; an edge outside the graph raises ``IndexError`` and
    a NaN or infinite offset ``ValueError``.
    """
    if not positions:
        return np.zeros((0, graph.n_nodes), dtype=np.float64)
    for p in positions:
        if not 0 <= p.edge < graph.n_edges:
            raise IndexError(f"edge {p.edge} is not in graph {graph.name!r} ({graph.n_edges} edges)")
        if not math.isfinite(p.offset_m):
            raise ValueError(f"position on edge {p.edge}: offset_m {p.offset_m!r} is not finite")
    edges = np.array([p.edge for p in positions], dtype=np.int64)
    offsets = np.array([p.offset_m for p in positions], dtype=np.float64)
    heads = graph.edge_v[edges]
    length = graph.edge_length_m[edges]
    done = np.divide(np.clip(offsets, 0.0, length), length, out=np.ones_like(length), where=length > 0)
    remaining: FloatArray = graph.edge_time_s[edges] * (1.0 - done)
    limit = None if limit_s is None else max(0.0, float(limit_s) - float(remaining.min()))
    base = times_from_nodes(graph, heads, limit_s=limit)
    out: FloatArray = base + remaining[:, None]
    if limit_s is not None:
        out[out > limit_s] = np.inf
    return out


def shortest_path(graph: CompiledGraph, source: int, target: int) -> list[int]:
    """Node indices of a fastest path from ``source`` to ``target`` (both included).

    Raises ``ValueError`` when ``target`` cannot be reached.
    """
    if source == target:
        return [source]
    _, pred = dijkstra(graph.time_csr, directed=True, indices=source, return_predecessors=True)
    path = path_from_predecessors(pred, source, target)
    if not path:
        raise ValueError(f"node {target} cannot be reached from node {source}")
    return path


def path_from_predecessors(pred: IntArray, source: int, target: int) -> list[int]:
    """Rebuild a node path from a Dijkstra predecessor row; empty when unreachable."""
    if source == target:
        return [source]
    if pred[target] < 0:
        return []
    path = [int(target)]
    while path[-1] != source:
        path.append(int(pred[path[-1]]))
    path.reverse()
    return path


def path_edges(graph: CompiledGraph, nodes: Sequence[int]) -> list[int]:
    """Edge indices along a node path (the fastest edge between each consecutive pair)."""
    return [graph.edge_between(a, b) for a, b in itertools.pairwise(nodes)]


def path_lonlat(graph: CompiledGraph, edges: Sequence[int]) -> list[tuple[float, float]]:
    """WGS84 polyline (lon, lat) along consecutive edges, without repeated joints."""
    points: list[tuple[float, float]] = []
    for e in edges:
        coords = graph.edge_lonlat(e)
        start = 1 if points else 0
        points.extend((float(x), float(y)) for x, y in coords[start:])
    return points
