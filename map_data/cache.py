"""On-disk cache of compiled graphs, so a server starts in seconds without re-parsing OSM.

A cache entry is one ``.npz`` file (``numpy.savez``, loaded with ``allow_pickle=False``):
the arrays of :class:`map_data.types.CompiledGraph` and the two sparse routing matrices as
their CSR parts, plus a ``meta_json`` entry (UTF-8 JSON bytes) holding the scalars and the
string tuples. Nothing executable is stored. Entries are written to a temporary file and
renamed, so a reader never sees half a file; an unreadable or inconsistent entry is rebuilt.

Two keys:

* :func:`load_compiled` keys by :func:`map_data.compile.graph_hash` of a graph in memory;
* :func:`load_compiled_from_file` keys by a hash of the map file's bytes, the speed table and
  the builder and compiler versions, so a cache hit skips parsing the file altogether.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp

from map_data.compile import COMPILER_VERSION, compile_graph, graph_hash
from map_data.errors import MapFileError
from map_data.graph import BUILDER_VERSION, graph_from_file
from map_data.speeds import SpeedTable
from map_data.types import CompiledGraph

#: Bump when the cache file layout changes.
CACHE_FORMAT = "1"

_ARRAYS = (
    "node_osmid",
    "node_xy",
    "node_lonlat",
    "edge_u",
    "edge_v",
    "edge_key",
    "edge_length_m",
    "edge_speed_mps",
    "edge_time_s",
    "edge_rank",
    "edge_oneway",
    "edge_bridge",
    "edge_tunnel",
    "out_ptr",
    "out_edges",
    "in_ptr",
    "in_edges",
    "geom_ptr",
    "geom_xy",
    "geom_lonlat",
)
_TUPLES = ("node_commune", "edge_highway", "edge_name", "edge_commune")
_MATRICES = ("time_csr", "pair_edge")


class CacheError(Exception):
    """A cache entry cannot be used (it is then rebuilt; never raised to callers)."""


def load_compiled(G: nx.MultiDiGraph, *, cache_dir: Path | None) -> CompiledGraph:
    """Compiled form of ``G``, read from ``cache_dir`` when present there, else compiled and saved.

    ``cache_dir=None`` compiles without caching. The entry is keyed by :func:`graph_hash`, so
    any change to the graph's routing content is a different entry.
    """
    key = graph_hash(G)
    if cache_dir is None:
        return compile_graph(G, version=key)
    path = Path(cache_dir) / f"graph-{key}.npz"
    try:
        return read_compiled(path, expect_version=key)
    except CacheError:
        graph = compile_graph(G, version=key)
        write_compiled(graph, path)
        return graph


def file_key(map_path: Path, speeds: SpeedTable | None = None) -> str:
    """Cache key of a map file: hash of its bytes, the speed table and the code versions."""
    h = hashlib.sha256(f"cordon-map:{CACHE_FORMAT}:{COMPILER_VERSION}:{BUILDER_VERSION}:".encode())
    h.update((speeds or SpeedTable()).fingerprint().encode())
    try:
        with Path(map_path).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise MapFileError(f"{map_path}: cannot read map file: {exc}") from exc
    return h.hexdigest()[:16]


def load_compiled_from_file(
    map_path: str | Path, *, cache_dir: Path | None, speeds: SpeedTable | None = None
) -> tuple[CompiledGraph, bool]:
    """Compiled graph of a map file (see :func:`map_data.graph.graph_from_file`), cached on disk.

    Returns ``(graph, from_cache)``: ``from_cache`` tells whether the file was read from the
    cache (no OSM parsing). ``cache_dir=None`` always loads and compiles the file.

    Raises :class:`MapFileError` (missing or unreadable file) and the loaders' errors.
    """
    map_path = Path(map_path)
    if not map_path.is_file():
        raise MapFileError(f"{map_path}: map file not found")
    if cache_dir is None:
        return compile_graph(graph_from_file(map_path, speeds=speeds)), False
    key = file_key(map_path, speeds)
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in map_path.name)
    path = Path(cache_dir) / f"file-{stem}-{key}.npz"
    try:
        return read_compiled(path), True
    except CacheError:
        graph = compile_graph(graph_from_file(map_path, speeds=speeds))
        write_compiled(graph, path)
        return graph, False


def write_compiled(graph: CompiledGraph, path: Path) -> None:
    """Save ``graph`` to ``path`` (``.npz``) atomically (temporary file, then rename)."""
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "compiler": COMPILER_VERSION,
        "version": graph.version,
        "crs": graph.crs,
        "name": graph.name,
        "n_nodes": graph.n_nodes,
        **{name: list(getattr(graph, name)) for name in _TUPLES},
    }
    arrays: dict[str, Any] = {name: np.ascontiguousarray(getattr(graph, name)) for name in _ARRAYS}
    for name in _MATRICES:
        matrix = sp.csr_matrix(getattr(graph, name))
        arrays[f"{name}_data"] = matrix.data
        arrays[f"{name}_indices"] = matrix.indices
        arrays[f"{name}_indptr"] = matrix.indptr
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_compiled(path: Path, *, expect_version: str | None = None) -> CompiledGraph:
    """Load a graph saved by :func:`write_compiled`; :class:`CacheError` if missing or invalid."""
    if not path.is_file():
        raise CacheError(f"{path}: no cache entry")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {name: npz[name] for name in npz.files}
        meta = json.loads(bytes(data.pop("meta_json")).decode())
        if meta.get("format") != CACHE_FORMAT or meta.get("compiler") != COMPILER_VERSION:
            raise CacheError(f"{path}: written by another cache format or compiler")
        if expect_version is not None and meta["version"] != expect_version:
            raise CacheError(f"{path}: holds graph {meta['version']}, not {expect_version}")
        n = int(meta["n_nodes"])
        matrices = {
            name: sp.csr_matrix(
                (data[f"{name}_data"], data[f"{name}_indices"], data[f"{name}_indptr"]), shape=(n, n)
            )
            for name in _MATRICES
        }
        fields: dict[str, Any] = {name: data[name] for name in _ARRAYS}
        fields["node_commune"] = tuple(meta["node_commune"])
        fields["edge_commune"] = tuple(meta["edge_commune"])
        fields["edge_highway"] = tuple(str(s) for s in meta["edge_highway"])
        fields["edge_name"] = tuple(str(s) for s in meta["edge_name"])
        graph = CompiledGraph(
            version=str(meta["version"]),
            crs=str(meta["crs"]),
            name=str(meta["name"]),
            time_csr=matrices["time_csr"],
            pair_edge=matrices["pair_edge"],
            node_index={int(o): i for i, o in enumerate(fields["node_osmid"].tolist())},
            **fields,
        )
        _check(graph)
    except CacheError:
        raise
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile, EOFError) as exc:
        raise CacheError(f"{path}: unreadable cache entry: {exc}") from exc
    return graph


def _check(graph: CompiledGraph) -> None:
    """Consistency of the array shapes (catches truncated or tampered entries)."""
    n, m = graph.n_nodes, graph.n_edges
    shapes = {
        "node_xy": (n, 2),
        "node_lonlat": (n, 2),
        "out_ptr": (n + 1,),
        "in_ptr": (n + 1,),
        "geom_ptr": (m + 1,),
        "out_edges": (m,),
        "in_edges": (m,),
    }
    for name, shape in shapes.items():
        if getattr(graph, name).shape != shape:
            raise CacheError(f"array {name} has shape {getattr(graph, name).shape}, expected {shape}")
    for name in ("edge_v", "edge_key", "edge_length_m", "edge_speed_mps", "edge_time_s", "edge_rank"):
        if getattr(graph, name).shape != (m,):
            raise CacheError(f"array {name} has shape {getattr(graph, name).shape}, expected ({m},)")
    if len(graph.edge_highway) != m or len(graph.edge_name) != m or len(graph.node_commune) != n:
        raise CacheError("string tables do not match the arrays")
    if int(graph.geom_ptr[-1]) != graph.geom_xy.shape[0]:
        raise CacheError("geometry pointer does not match the geometry")
    if graph.time_csr.dtype != np.float64:
        raise CacheError("time matrix is not float64")
