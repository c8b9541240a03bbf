"""The simulator's driving fields: the compiled Dijkstra gives scipy's times bit for bit, a
crew's partial search (``Navigator.next_edge_to``) takes the edges the full field gives, and the
core's kernels are loaded before a batch forks its workers.

Cases run on sim.testing.grid_city (8 × 8 two-way grid) and map_data's generated city (one-way
streets, so some crossings cannot reach others)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

import sim.navigation as navigation
import sim.policies as policies
from map_data.city import default_city
from map_data.compile import compile_graph
from map_data.handmade import graph_from_sketch
from map_data.network_types import City
from map_data.types import CompiledGraph
from sim.navigation import Navigator, Search, shortest_times
from sim.testing import grid_city
from sim.world import CityContext

GRID = grid_city()
GENERATED = default_city(n_crossings=400, seed=3)
CITIES = {"grid": GRID, "generated": GENERATED}

#: One-way streets: a square 0 -> 1 -> 2 -> 3 -> 0 with a slow parallel edge 0 -> 1 and a
#: diagonal 0 -> 2 as long as 0 -> 1 -> 2 (200 m); 4 -> 0 only (nothing reaches 4), 5 alone
#: (reaches nothing, is reached by nothing).
_SKETCH_EDGES: list[tuple[int, int, dict[str, object]]] = [
    (0, 1, {}),
    (0, 1, {"speed_kph": 20.0}),
    (1, 2, {}),
    (2, 3, {}),
    (3, 0, {}),
    (0, 2, {"length": 200.0}),
    (4, 0, {}),
]
SKETCH = compile_graph(
    graph_from_sketch(
        {0: (0, 0), 1: (100, 0), 2: (100, 100), 3: (0, 100), 4: (-100, 0), 5: (300, 300)}, _SKETCH_EDGES
    )
)


def _plain(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """The kernel's plain-Python function (itself under ``CORDON_NO_JIT=1``)."""
    return getattr(kernel, "py_func", kernel)


def _scipy_to(city: City, targets: list[int]) -> Any:
    rev = city.graph.time_csr.T.tocsr()
    return np.asarray(dijkstra(rev, directed=True, indices=targets, min_only=True), dtype=np.float64)


@pytest.mark.parametrize("name", sorted(CITIES))
def test_fields_are_scipys_bit_for_bit(name: str) -> None:
    city = CITIES[name]
    g = city.graph
    nav = Navigator(g, cache_size=8)
    rng = np.random.default_rng(0)
    for node in range(g.n_nodes):
        assert np.array_equal(nav.times_to([node]), _scipy_to(city, [node]))
        want = np.asarray(dijkstra(g.time_csr, directed=True, indices=node), dtype=np.float64)
        assert np.array_equal(nav.times_from(node), want)
    for _ in range(30):
        targets = rng.integers(0, g.n_nodes, int(rng.integers(2, 12))).tolist()
        assert np.array_equal(nav.times_to(targets), _scipy_to(city, sorted(set(targets))))


def test_one_way_sketch_ties_parallel_edges_and_unreachable() -> None:
    g: CompiledGraph = SKETCH
    full, part = Navigator(g), Navigator(g, cache_size=2)
    rev = g.time_csr.T.tocsr()
    for target in range(g.n_nodes):
        field = full.times_to([target])
        want = np.asarray(dijkstra(rev, directed=True, indices=[target], min_only=True), dtype=np.float64)
        assert np.array_equal(field, want)
        for node in range(g.n_nodes):
            assert part.next_edge_to(node, target) == full.next_edge(node, field)
    assert np.isinf(full.times_to([4])).sum() == 5  # only 4 itself
    assert part.next_edge_to(5, 0) is None and part.next_edge_to(0, 5) is None
    assert part.next_edge_to(0, 0) is None  # at the target


def test_explicit_zeros_are_arcs_and_unreachable_is_inf() -> None:
    # 0 -> 1 (0 s, stored explicitly), 1 -> 2 (3 s), 0 -> 2 (5 s), 3 unreachable.
    m = sp.csr_matrix((np.array([0.0, 5.0, 3.0]), (np.array([0, 0, 1]), np.array([1, 2, 2]))), shape=(4, 4))
    assert m.nnz == 3
    got = shortest_times(navigation._csr_arrays(m), 4, [0])
    assert got.tolist() == [0.0, 0.0, 3.0, np.inf]
    assert np.array_equal(got, dijkstra(m, directed=True, indices=0))
    with pytest.raises(ValueError, match="out of range"):
        shortest_times(navigation._csr_arrays(m), 4, [4])


def test_settle_compiled_and_plain_python_agree() -> None:
    g = GENERATED.graph
    csr = navigation._csr_arrays(g.time_csr.T.tocsr())
    kernel, plain = navigation._settle, _plain(navigation._settle)
    for target, stop in ((0, -1), (17, 5), (200, GENERATED.graph.n_nodes - 1), (3, 3)):
        runs = []
        for fn in (kernel, plain):
            s = Search.start(csr, g.n_nodes, [target])
            cap = s.size + csr[1].shape[0] + 1
            heap_t, heap_v = np.zeros(cap), np.zeros(cap, dtype=np.int64)
            heap_t[: s.size], heap_v[: s.size] = s.heap_t, s.heap_v
            size = fn(s.dist, s.done, heap_t, heap_v, s.size, *csr, stop)
            runs.append((s.dist.copy(), s.done.copy(), heap_t[:size].copy(), heap_v[:size].copy(), size))
        (d1, done1, t1, v1, n1), (d2, done2, t2, v2, n2) = runs
        assert np.array_equal(d1, d2) and np.array_equal(done1, done2)
        assert n1 == n2 and np.array_equal(t1, t2) and np.array_equal(v1, v2)
        if stop >= 0:  # stopped early: what is settled is exact; farther crossings may be left
            full = _scipy_to(GENERATED, [target])
            assert np.array_equal(d1[done1], full[done1])
            assert np.all(full[~done1] >= full[stop])


@pytest.mark.parametrize("name", sorted(CITIES))
@pytest.mark.parametrize("cache_size", [1, 3, 2048])
def test_next_edge_to_takes_the_full_fields_edge(name: str, cache_size: int) -> None:
    """Crews driving to targets, nearer and farther ones asking in turn (the search is taken
    further), through cache evictions, and to unreachable targets: the edges are the full field's."""
    g = CITIES[name].graph
    full, part = Navigator(g), Navigator(g, cache_size=cache_size)
    rng = np.random.default_rng(1)
    steps = 0
    for target in rng.integers(0, g.n_nodes, 25).tolist():
        field = full.times_to([target])
        for start in rng.integers(0, g.n_nodes, 6).tolist():
            node: int | None = start
            for _ in range(g.n_nodes):
                assert node is not None
                want = full.next_edge(node, field)
                assert part.next_edge_to(node, target) == want
                steps += 1
                if want is None:
                    break
                node = int(g.edge_v[want])
        # Every crossing, in random order, on the search left by the crews.
        for node in rng.permutation(g.n_nodes).tolist():
            assert part.next_edge_to(node, target) == full.next_edge(node, field)
    assert steps > 200


def test_a_finished_search_becomes_the_field() -> None:
    g = GENERATED.graph
    nav = Navigator(g)
    assert nav.next_edge_to(5, 120) == nav.next_edge(5, _scipy_to(GENERATED, [120]))
    search = nav._cache[("route", (120,))]
    assert not search.complete  # stopped before the whole map
    assert np.array_equal(nav.times_to([120]), _scipy_to(GENERATED, [120]))
    assert ("route", (120,)) not in nav._cache  # replaced by the full field


def test_warm_up_core_loads_the_kernels_before_workers_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policies, "_CORE_WARM", False)
    runs: list[str] = []
    real = policies.GuidancePolicy.start

    def counting(self: policies.GuidancePolicy, world: Any, t: float) -> None:
        runs.append(world.scenario.policy)
        real(self, world, t)

    monkeypatch.setattr(policies.GuidancePolicy, "start", counting)
    co = policies.coordinator_for(CityContext(GRID))
    assert policies.coordinator_for(CityContext(GRID)) is not co  # one per city context
    no_jit = os.environ.get("CORDON_NO_JIT") == "1"
    assert runs == ([] if no_jit else ["guidance"])  # one warm-up run, once per process
    assert policies._CORE_WARM
    if not no_jit:
        assert navigation._settle.signatures  # type: ignore[attr-defined]
