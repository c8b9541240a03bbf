"""A generated city: a street network with the structure of a mid-sized French town.

No file and no network: the graph is drawn from a seeded ``numpy.random.Generator`` and is the
same for the same ``(n_crossings, seed)``. It follows the conventions of :mod:`map_data.types`
(Lambert-93 metres around Metz, lon/lat by pyproj) so every other part of Cordon runs on it.

Structure
    * a perturbed grid of local streets (``residential``, 30 km/h), denser toward the centre, with
      a few blocks merged or cut (organic look) and about a quarter of the street runs one-way;
    * arterials every few blocks (``secondary``, ``primary`` every second one, 50 km/h), each
      keeping one name along its whole length;
    * a rectangular ring road (``trunk``, 80 km/h) around the centre; local streets stop at it,
      only arterials connect to it;
    * a river crossing the city west to east, crossed only by a few bridges (edges with
      ``bridge=True``; no other edge crosses it). Its centreline is kept in the graph attribute
      ``river_wkt`` (projected WKT);
    * exits: arterials and some local streets reach the edge of the map, where their last
      crossing carries the node attribute ``exit=True``. The map's edge is otherwise open (no
      street runs along it), as in an OSM extract cut at a bounding box.

Only the largest strongly connected component is kept; the grid size is chosen (and corrected
once) so that the node count lands within a few percent of ``n_crossings``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import numpy.typing as npt
from pyproj import Transformer
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import LineString

from map_data.handmade import LAMBERT93, METZ_L93

#: Target block size (m) away from the centre; the centre is denser.
BLOCK_M = 110.0
#: Every ``ARTERIAL_EVERY``-th grid line is an arterial; every second arterial is primary.
ARTERIAL_EVERY = 5
LOCAL_KPH = 30.0
ARTERIAL_KPH = 50.0
RING_KPH = 80.0
ONEWAY_SHARE = 0.3
_MIN_CROSSINGS = 200
_MAX_CROSSINGS = 200_000

_PEOPLE = (
    "Victor Hugo",
    "Jean Jaurès",
    "Émile Zola",
    "Louis Pasteur",
    "Jean Moulin",
    "Georges Clemenceau",
    "Paul Verlaine",
    "Anatole France",
    "Jules Ferry",
    "Léon Gambetta",
    "Voltaire",
    "Molière",
    "Pierre Curie",
    "Marie Curie",
    "Robert Schuman",
    "Paul Valéry",
    "Gustave Eiffel",
    "Claude Debussy",
    "Hector Berlioz",
    "George Sand",
    "Alfred de Musset",
    "Jean de La Fontaine",
    "Blaise Pascal",
    "René Descartes",
    "Albert Camus",
    "Charles Péguy",
    "Paul Éluard",
    "Louis Aragon",
    "Jacques Prévert",
    "Édith Piaf",
    "Jean Monnet",
    "Simone Veil",
    "Pierre Mendès France",
    "Aristide Briand",
    "Jean Mermoz",
    "Antoine de Saint-Exupéry",
    "Roland Garros",
    "Louis Blériot",
    "Jules Verne",
    "Alexandre Dumas",
    "Honoré de Balzac",
    "Gustave Flaubert",
    "Stendhal",
    "Arthur Rimbaud",
    "Maurice Barrès",
    "Paul Verlaine",
    "Gabriel Pierné",
    "Ambroise Thomas",
    "Jean-Baptiste Kléber",
    "Lazare Hoche",
    "François Mitterrand",
    "Raymond Poincaré",
    "Jeanne d'Arc",
    "Henri IV",
    "Saint-Exupéry",
    "Frédéric Chopin",
    "Auguste Rodin",
    "Claude Monet",
    "Paul Cézanne",
)
_PLACES = (
    "de la Gare",
    "du Moulin",
    "des Écoles",
    "de l'Église",
    "du Château",
    "des Jardins",
    "de la Paix",
    "de la République",
    "de la Liberté",
    "du Stade",
    "des Tilleuls",
    "des Acacias",
    "des Lilas",
    "des Roses",
    "du Pont",
    "de la Fontaine",
    "des Vignes",
    "du Marché",
    "de la Poste",
    "des Prés",
    "du Lavoir",
    "des Peupliers",
    "des Chênes",
    "du Cimetière",
    "de la Mairie",
    "des Vergers",
    "du Four",
    "de la Forge",
    "des Carmes",
    "des Augustins",
    "du Temple",
    "de la Chapelle",
    "des Jardiniers",
    "du Parc",
    "des Sources",
    "de la Source",
    "du Canal",
    "des Mésanges",
    "des Hirondelles",
    "des Bleuets",
    "des Coquelicots",
    "de la Croix",
    "du Calvaire",
    "des Remparts",
    "de la Citadelle",
    "du Fort",
    "des Casernes",
    "de l'Hôpital",
    "du Lycée",
    "des Artisans",
    "des Tanneurs",
    "des Bateliers",
    "du Port",
    "des Mariniers",
    "de la Digue",
    "des Saules",
)
_TOWNS = (
    "Thionville",
    "Nancy",
    "Strasbourg",
    "Sarrebruck",
    "Verdun",
    "Boulay",
    "Briey",
    "Pont-à-Mousson",
    "Saint-Avold",
    "Luxembourg",
    "Sarreguemines",
    "Château-Salins",
    "Forbach",
    "Hayange",
    "Ars",
    "Gorze",
    "Vigy",
    "Courcelles",
    "Pange",
    "Rombas",
    "Maizières",
    "Ennery",
    "Peltre",
    "Marly",
    "Sainte-Barbe",
    "Plappeville",
    "Lorry",
    "Metzervisse",
    "Bouzonville",
    "Faulquemont",
)
_ARTERIAL_KIND = ("Avenue", "Boulevard", "Avenue", "Rue")
_LOCAL_KIND = ("Rue", "Rue", "Rue", "Rue", "Allée", "Chemin", "Rue")


@dataclass(frozen=True, slots=True)
class _Layout:
    """Grid size and the special lines, in grid indices."""

    side: int
    arterial: npt.NDArray[np.bool_]  # per grid line (rows and columns alike)
    primary: npt.NDArray[np.bool_]
    ring_lo: int
    ring_hi: int


def _layout(side: int, rng: np.random.Generator) -> _Layout:
    offset = int(rng.integers(1, ARTERIAL_EVERY))
    lines = np.arange(side)
    arterial = ((lines - offset) % ARTERIAL_EVERY == 0) & (lines > 0) & (lines < side - 1)
    primary = arterial & (((lines - offset) // ARTERIAL_EVERY) % 2 == 0)
    ring_lo, ring_hi = round(side * 0.25), round(side * 0.75)
    # The ring runs on its own lines, between two arterials.
    while arterial[ring_lo]:
        ring_lo += 1
    while arterial[ring_hi]:
        ring_hi -= 1
    return _Layout(side, arterial, primary, ring_lo, ring_hi)


def _street_names(rng: np.random.Generator, count: int, kinds: tuple[str, ...]) -> list[str]:
    """``count`` plausible French street names (repeats only once the combinations run out)."""
    targets = [*_PEOPLE, *_PLACES]
    kind = rng.integers(0, len(kinds), size=count)
    target = rng.permutation(np.resize(np.arange(len(targets)), count)) if count else np.zeros(0, int)
    return [f"{kinds[int(k)]} {targets[int(t)]}" for k, t in zip(kind, target, strict=True)]


def _arterial_names(rng: np.random.Generator, lay: _Layout) -> dict[int, str]:
    """One distinct name per arterial line (``horizontal * side + line``); some primaries lead
    out of town and are named after the town they lead to."""
    kinds = sorted(set(_ARTERIAL_KIND))
    targets = [*_PEOPLE, *_PLACES]
    combos = [f"{k} {t}" for k in kinds for t in dict.fromkeys(targets)]
    order = rng.permutation(len(combos))
    towns = [_TOWNS[int(i)] for i in rng.permutation(len(_TOWNS))]
    names: dict[int, str] = {}
    lines = np.flatnonzero(lay.arterial).tolist()
    uids = [h * lay.side + line for line in lines for h in (0, 1)]
    for uid in uids:
        line = uid % lay.side
        if lay.primary[line] and towns and rng.random() < 0.4:
            names[uid] = f"Route de {towns.pop()}"
        else:
            k = len(names)
            base = combos[int(order[k % len(combos)])]
            names[uid] = base if k < len(combos) else f"{base} {k // len(combos) + 1}"
    return names


def _build_arrays(
    side: int, rng: np.random.Generator
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    dict[str, npt.NDArray[np.generic]],
    npt.NDArray[np.float64],
]:
    """Node positions, alive and exit flags, and the directed edges with their attributes."""
    lay = _layout(side, rng)
    S = side
    n = S * S
    r = np.repeat(np.arange(S), S)
    c = np.tile(np.arange(S), S)
    half = (S - 1) / 2.0
    # Base positions (units of blocks, centred), jittered; the boundary stays straight.
    bx = (c - half).astype(np.float64)
    by = (r - half).astype(np.float64)
    jitter = np.clip(rng.normal(0.0, 0.12, size=(2, n)), -0.3, 0.3)
    border_c = (c == 0) | (c == S - 1)
    border_r = (r == 0) | (r == S - 1)
    bx = bx + np.where(border_c, 0.0, jitter[0])
    by = by + np.where(border_r, 0.0, jitter[1])

    # River: a sinuous west-east line in base coordinates.
    amp = 1.6
    wavelength = max(S / 1.3, 12.0)
    phase = float(rng.uniform(0, 2 * math.pi))
    river_off = float(rng.uniform(-0.08, 0.08)) * S

    def river_y(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return river_off + amp * np.sin(2 * math.pi * x / wavelength + phase)

    rel = by - river_y(bx)
    in_river = np.abs(rel) < 0.45
    north = rel > 0

    ring_rows = (r == lay.ring_lo) | (r == lay.ring_hi)
    ring_cols = (c == lay.ring_lo) | (c == lay.ring_hi)
    inside_r = (r >= lay.ring_lo) & (r <= lay.ring_hi)
    inside_c = (c >= lay.ring_lo) & (c <= lay.ring_hi)
    on_ring = (ring_rows & inside_c) | (ring_cols & inside_r)
    on_arterial = lay.arterial[r] | lay.arterial[c]
    border = border_r | border_c
    corner = border_r & border_c

    alive = ~in_river & ~corner
    # Organic look: a few interior local crossings vanish (blocks merge).
    interior_local = ~on_arterial & ~on_ring & ~border
    alive &= ~(interior_local & (rng.random(n) < 0.05))
    # The map's edge: arterials leave the map; a quarter of the local streets do too.
    perp_arterial = np.where(border_r, lay.arterial[c], lay.arterial[r])
    exit_node = border & ~corner & (perp_arterial | (rng.random(n) < 0.25))
    alive &= ~border | exit_node

    # Undirected segments: horizontal (row r, c -> c+1) and vertical (col c, r -> r+1).
    idx = np.arange(n).reshape(S, S)
    h_a, h_b = idx[:, :-1].ravel(), idx[:, 1:].ravel()
    v_a, v_b = idx[:-1, :].ravel(), idx[1:, :].ravel()
    seg_a = np.concatenate([h_a, v_a])
    seg_b = np.concatenate([h_b, v_b])
    horizontal = np.concatenate([np.ones(h_a.size, bool), np.zeros(v_a.size, bool)])
    line = np.where(horizontal, r[seg_a], c[seg_a])  # the grid line the segment runs along
    pos = np.where(horizontal, c[seg_a], r[seg_a])  # its position along that line
    seg_arterial = lay.arterial[line]
    seg_ring = on_ring[seg_a] & on_ring[seg_b] & ((line == lay.ring_lo) | (line == lay.ring_hi))
    keep = alive[seg_a] & alive[seg_b]
    keep &= ~(border[seg_a] & border[seg_b])  # no street along the map's edge
    keep &= north[seg_a] == north[seg_b]  # the river is crossed by bridges only
    touches_ring = on_ring[seg_a] | on_ring[seg_b]
    keep &= ~touches_ring | seg_ring | seg_arterial  # local streets stop at the ring
    local = ~seg_arterial & ~seg_ring
    keep &= ~(local & (rng.random(seg_a.size) < 0.06))

    # Bridges: on the ring's columns and a few arterial columns, joining the last crossing south
    # of the river to the first north of it.
    art_cols = np.flatnonzero(lay.arterial & (np.arange(S) > 1) & (np.arange(S) < S - 2))
    n_extra = max(1, round(S / 40)) + 1
    extra: npt.NDArray[np.int64] | list[int] = (
        rng.choice(art_cols, size=min(n_extra, art_cols.size), replace=False) if art_cols.size else []
    )
    bridge_cols = sorted({lay.ring_lo, lay.ring_hi, *(int(x) for x in extra)})
    br_a: list[int] = []
    br_b: list[int] = []
    for col in bridge_cols:
        column = idx[:, col]
        south = column[alive[column] & ~north[column]]
        nord = column[alive[column] & north[column]]
        if south.size and nord.size:
            br_a.append(int(south.max()))
            br_b.append(int(nord.min()))
    n_br = len(br_a)
    seg_a = np.concatenate([seg_a[keep], np.array(br_a, dtype=np.int64)])
    seg_b = np.concatenate([seg_b[keep], np.array(br_b, dtype=np.int64)])
    horizontal = np.concatenate([horizontal[keep], np.zeros(n_br, bool)])
    line = np.concatenate([line[keep], np.array(bridge_cols[:n_br], dtype=np.int64)])
    pos = np.concatenate([pos[keep], r[np.array(br_a, dtype=np.int64)]])
    is_ring = np.concatenate([seg_ring[keep], np.isin(bridge_cols[:n_br], [lay.ring_lo, lay.ring_hi])])
    is_bridge = np.concatenate([np.zeros(int(keep.sum()), bool), np.ones(n_br, bool)])
    seg_arterial = lay.arterial[line]
    seg_primary = lay.primary[line]

    # Runs: a local street between two consecutive breaks (arterials, ring) shares a name and a
    # one-way direction.
    breaks = np.flatnonzero(lay.arterial | (np.arange(S) == lay.ring_lo) | (np.arange(S) == lay.ring_hi))
    run_idx = np.searchsorted(breaks, pos, side="right")
    n_runs_per_line = breaks.size + 1
    run_uid = (horizontal.astype(np.int64) * S + line) * n_runs_per_line + run_idx
    n_uid = 2 * S * n_runs_per_line
    run_oneway = rng.random(n_uid) < ONEWAY_SHARE
    run_forward = rng.random(n_uid) < 0.5
    local = ~seg_arterial & ~is_ring
    oneway = local & run_oneway[run_uid] & ~is_bridge

    # Names.
    local_names = _street_names(rng, n_uid, _LOCAL_KIND)
    art_names = _arterial_names(rng, lay)
    line_uid = horizontal.astype(np.int64) * S + line
    names = np.empty(seg_a.size, dtype=object)
    for i in range(seg_a.size):
        if is_ring[i]:
            names[i] = "Boulevard Périphérique"
        elif seg_arterial[i]:
            names[i] = art_names[int(line_uid[i])]
        else:
            names[i] = local_names[int(run_uid[i])]

    highway = np.where(
        is_ring, "trunk", np.where(seg_primary, "primary", np.where(seg_arterial, "secondary", "residential"))
    )
    speed = np.where(is_ring, RING_KPH, np.where(seg_arterial, ARTERIAL_KPH, LOCAL_KPH))

    # Directed edges.
    fwd = ~oneway | run_forward[run_uid]
    bwd = ~oneway | ~run_forward[run_uid]
    eu = np.concatenate([seg_a[fwd], seg_b[bwd]])
    ev = np.concatenate([seg_b[fwd], seg_a[bwd]])
    pick = np.concatenate([np.flatnonzero(fwd), np.flatnonzero(bwd)])
    attrs: dict[str, npt.NDArray[np.generic]] = {
        "highway": highway[pick],
        "speed_kph": speed[pick],
        "name": names[pick],
        "oneway": oneway[pick],
        "bridge": is_bridge[pick],
    }
    edges = np.column_stack([eu, ev]).astype(np.int64)

    # Warp: denser toward the centre (Chebyshev radius, so the map's edge stays square), plus a
    # gentle swirl that vanishes at the edge.
    xy = _warp(np.column_stack([bx, by]), half)
    river_x = np.linspace(-half - 1, half + 1, max(200, 8 * S))
    river_xy = _warp(np.column_stack([river_x, river_y(river_x)]), half, clamp=False)
    return xy * BLOCK_M, alive, exit_node & alive, edges, attrs, river_xy * BLOCK_M


def _warp(p: npt.NDArray[np.float64], half: float, *, clamp: bool = True) -> npt.NDArray[np.float64]:
    rinf = np.maximum(np.abs(p[:, 0]), np.abs(p[:, 1])) / max(half, 1.0)
    rinf_c = np.clip(rinf, 1e-9, 1.0) if clamp else np.maximum(rinf, 1e-9)
    scale = np.where(rinf_c < 1.0, rinf_c**0.25, 1.0)
    q = p * scale[:, None]
    fade = np.clip(1.0 - rinf_c**6, 0.0, 1.0)
    swirl = 0.35 * fade
    u = q[:, 0] / max(half, 1.0) * math.pi
    v = q[:, 1] / max(half, 1.0) * math.pi
    out = np.column_stack([q[:, 0] + swirl * np.sin(2 * v), q[:, 1] + swirl * np.sin(2 * u)])
    return out


def _largest_scc(n: int, edges: npt.NDArray[np.int64], alive: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    adj = coo_matrix((np.ones(edges.shape[0]), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    _, labels = connected_components(adj, directed=True, connection="strong")
    counts = np.bincount(labels[alive], minlength=labels.max() + 1)
    best = int(np.argmax(counts))
    keep: npt.NDArray[np.bool_] = (labels == best) & alive
    return keep


def _grid_side(n_crossings: int, keep_share: float) -> int:
    return max(8, math.ceil(math.sqrt(n_crossings / keep_share)))


def generate_city(n_crossings: int = 2000, *, seed: int = 0, name: str | None = None) -> nx.MultiDiGraph:
    """Generate a city of about ``n_crossings`` crossings (nodes), the same for the same seed.

    Parameters
    ----------
    n_crossings
        Wanted node count, 200 to 200,000; the result is within a few percent of it.
    seed
        Seed of the ``numpy.random.Generator`` drawing everything.
    name
        Graph name (default ``generated-<n>-s<seed>``).

    Returns
    -------
    networkx.MultiDiGraph
        Strongly connected, in Lambert-93 (EPSG:2154) around Metz, with the attributes of
        :mod:`map_data.types` and node ``exit=True`` on the crossings at the map's edge.
    """
    if not _MIN_CROSSINGS <= n_crossings <= _MAX_CROSSINGS:
        raise ValueError(
            f"n_crossings must be between {_MIN_CROSSINGS} and {_MAX_CROSSINGS}, got {n_crossings}"
        )
    keep_share = 0.83
    side = _grid_side(n_crossings, keep_share)
    for _attempt in range(3):
        rng = np.random.default_rng([seed, side])
        xy, alive, exits, edges, attrs, river = _build_arrays(side, rng)
        keep = _largest_scc(side * side, edges, alive)
        kept = int(keep.sum())
        if abs(kept / n_crossings - 1.0) <= 0.06:
            break
        share = kept / (side * side)
        new_side = _grid_side(n_crossings, share)
        if new_side == side:
            break
        side = new_side
    return _to_graph(
        xy, keep, exits, edges, attrs, river, name=name or f"generated-{n_crossings}-s{seed}", seed=seed
    )


def _to_graph(
    xy: npt.NDArray[np.float64],
    keep: npt.NDArray[np.bool_],
    exits: npt.NDArray[np.bool_],
    edges: npt.NDArray[np.int64],
    attrs: dict[str, npt.NDArray[np.generic]],
    river: npt.NDArray[np.float64],
    *,
    name: str,
    seed: int,
) -> nx.MultiDiGraph:
    X = xy[:, 0] + METZ_L93[0]
    Y = xy[:, 1] + METZ_L93[1]
    to_wgs84 = Transformer.from_crs(LAMBERT93, "EPSG:4326", always_xy=True)
    nodes = np.flatnonzero(keep)
    lon, lat = to_wgs84.transform(X[nodes], Y[nodes])
    river_line = LineString(np.column_stack([river[:, 0] + METZ_L93[0], river[:, 1] + METZ_L93[1]]))
    G = nx.MultiDiGraph(
        crs=LAMBERT93, name=name, generator="map_data.generate", seed=seed, river_wkt=river_line.wkt
    )
    node_rows = []
    for i, node in enumerate(nodes.tolist()):
        data: dict[str, object] = {
            "x": float(X[node]),
            "y": float(Y[node]),
            "lon": float(lon[i]),
            "lat": float(lat[i]),
        }
        if exits[node]:
            data["exit"] = True
        node_rows.append((node + 1, data))
    G.add_nodes_from(node_rows)
    ok = keep[edges[:, 0]] & keep[edges[:, 1]]
    eu, ev = edges[ok, 0], edges[ok, 1]
    length = np.hypot(X[eu] - X[ev], Y[eu] - Y[ev])
    speed = attrs["speed_kph"][ok].astype(np.float64)
    travel = length / (speed / 3.6)
    highway = attrs["highway"][ok].tolist()
    names = attrs["name"][ok].tolist()
    oneway = attrs["oneway"][ok].tolist()
    bridge = attrs["bridge"][ok].tolist()
    G.add_edges_from(
        (
            int(eu[i]) + 1,
            int(ev[i]) + 1,
            {
                "length": float(length[i]),
                "speed_kph": float(speed[i]),
                "travel_time": float(travel[i]),
                "highway": str(highway[i]),
                "name": str(names[i]),
                "oneway": bool(oneway[i]),
                "bridge": bool(bridge[i]),
            },
        )
        for i in range(eu.size)
    )
    return G
