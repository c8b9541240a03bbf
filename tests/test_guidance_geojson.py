"""The GeoJSON views of predictions: the same geometry as the graph's polylines."""

from __future__ import annotations

import numpy as np

from map_data.city import default_city


def test_geojson_paths_equal_the_rounded_polylines_of_their_edges() -> None:
    """The prediction GeoJSON's route and position lines (gathered and rounded as arrays) are
    exactly the edges' polylines, joints once, rounded to 6 decimals point by point."""
    from guidance.geojson import _path_coordinates
    from map_data.routing import path_lonlat

    graph = default_city().graph
    assert _path_coordinates(graph, []) == path_lonlat(graph, []) == []
    rng = np.random.default_rng(3)
    for _ in range(200):
        path = [int(rng.integers(graph.n_edges))]
        for _ in range(int(rng.integers(0, 8))):
            outs = graph.out_of(int(graph.edge_v[path[-1]]))
            if outs.size == 0:
                break
            path.append(int(rng.choice(outs)))
        expected = [[round(x, 6), round(y, 6)] for x, y in path_lonlat(graph, path)]
        assert _path_coordinates(graph, path) == expected
