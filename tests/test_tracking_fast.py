"""The compiled tracker kernels (:mod:`tracking.kernels`) against the Python they replaced.

``_reference_propagate`` and ``_reference_merge_prune`` are the previous pure-Python
implementations of :func:`tracking.hypotheses.propagate` and ``_merge_prune``, verbatim: the
kernel-based ones must give the same hypotheses bit for bit (recorded replays and the
simulator's determinism rely on it). Each kernel's compiled and plain-Python functions are
compared too.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_tracking_helpers import T0

from map_data.cameras import build_camera_network, metz_density, place_synthetic_cameras
from map_data.compile import compile_graph
from map_data.graph import graph_from_xml
from map_data.network_types import City
from map_data.types import FloatArray
from tracking import kernels
from tracking.hypotheses import (
    _NEGLIGIBLE_LOG,
    _SQRT2,
    Context,
    Hypotheses,
    _merge_prune,
    _moment_match,
    propagate,
)
from tracking.kalman import predict_batch
from tracking.roads import RoadIndex
from tracking.tracker import Tracker
from tracking.types import Sighting, SourceKind

# --------------------------------------------------------------------------- references (verbatim)


def _reference_propagate(ctx: Context, hyps: Hypotheses, t_s: float) -> Hypotheses:
    """Predict every hypothesis to ``t_s`` and branch the routes their means have run past.

    Pure: the result depends only on ``hyps`` and ``t_s``. The negative information of the
    silent cameras on each route is evaluated at ``t_s`` (``neg``).
    """
    cfg = ctx.config
    dt = t_s - hyps.t_s
    if dt > 0:
        x, P = predict_batch(hyps.x, hyps.P, dt, cfg.accel_noise)
    else:
        x, P = hyps.x.copy(), hyps.P.copy()
    sigma = np.sqrt(P[:, 0, 0])
    routes = list(hyps.routes)
    route_len = hyps.route_len.tolist()
    last_start = hyps.last_start.tolist()
    anchor = hyps.anchor.tolist()
    lw = hyps.lw.tolist()
    skip = hyps.last_camera
    s_list = x[:, 0].tolist()
    sig_list = sigma.tolist()
    neg = [ctx.route_neg(routes[i], anchor[i], s_list[i], sig_list[i], skip) for i in range(len(routes))]
    lengths = ctx.roads.edge_len
    spans = ctx.roads.edge_spans
    branches = ctx.branches
    p_detect = ctx.p_detect
    erfc, log = math.erfc, math.log
    for _ in range(cfg.max_extension_rounds):
        n = len(routes)
        need = [i for i in range(n) if s_list[i] > route_len[i] and branches(routes[i][-1])]
        if not need:
            break
        floor = max([lw[i] + neg[i] for i in range(n)]) - _NEGLIGIBLE_LOG
        # The hypotheses kept as they are, in order, then the children of the extended ones.
        if len(need) == n:
            src: list[int] = []
        else:
            need_set = set(need)
            src = [i for i in range(n) if i not in need_set]
        n_routes = [routes[i] for i in src]
        n_len = [route_len[i] for i in src]
        n_last = [last_start[i] for i in src]
        n_anchor = [anchor[i] for i in src]
        n_lw = [lw[i] for i in src]
        n_neg = [neg[i] for i in src]
        for i in need:
            base, route, s_i, sig_i, lw_i, neg_i, anchor_i = (
                route_len[i],
                routes[i],
                s_list[i],
                sig_list[i],
                lw[i],
                neg[i],
                anchor[i],
            )
            scale = sig_i * _SQRT2
            for e, logp in branches(route[-1]):
                extra = 0.0
                seen = spans.get(e)
                if seen is not None:
                    for cid, mid, _a, _b in seen:
                        if cid != skip:  # :meth:`Context.span_log_factor`, inlined
                            passed = 0.5 * erfc(-(s_i - (base + mid)) / scale)
                            extra += log(max(1.0 - p_detect * passed, 1e-12))
                if lw_i + logp + neg_i + extra < floor:
                    continue
                src.append(i)
                n_routes.append((*route, e))
                n_len.append(base + lengths[e])
                n_last.append(base)
                n_anchor.append(anchor_i)
                n_lw.append(lw_i + logp)
                n_neg.append(neg_i + extra)
        idx = np.asarray(src, dtype=np.int64)
        x, P = x[idx], P[idx]
        routes, route_len, last_start, anchor, lw, neg = n_routes, n_len, n_last, n_anchor, n_lw, n_neg
        if len(routes) > 2 * cfg.max_hypotheses:  # let a few rounds accumulate between merges
            routes, route_len, last_start, anchor, lw, neg, x, P = _reference_merge_prune(
                ctx, routes, route_len, last_start, anchor, lw, neg, x, P, key_last_edge=True
            )
            s_list = x[:, 0].tolist()
            sig_list = np.sqrt(P[:, 0, 0]).tolist()
        else:  # the same numbers as recomputing them from the gathered states
            s_list = [s_list[i] for i in src]
            sig_list = [sig_list[i] for i in src]
    if dt > 0:
        routes, route_len, last_start, anchor, lw, neg, x, P = _reference_merge_prune(
            ctx, routes, route_len, last_start, anchor, lw, neg, x, P, key_last_edge=True
        )
    return Hypotheses(
        t_s=t_s,
        routes=tuple(routes),
        route_len=np.asarray(route_len, dtype=np.float64),
        last_start=np.asarray(last_start, dtype=np.float64),
        x=x,
        P=P,
        lw=np.asarray(lw, dtype=np.float64),
        neg=np.asarray(neg, dtype=np.float64),
        anchor=np.asarray(anchor, dtype=np.float64),
        last_camera=skip,
    )


def _reference_merge_prune(
    ctx: Context,
    routes: list[tuple[int, ...]],
    route_len: list[float],
    last_start: list[float],
    anchor: list[float],
    lw: list[float],
    neg: list[float],
    x: FloatArray,
    P: FloatArray,
    *,
    key_last_edge: bool,
) -> tuple[Any, ...]:
    """Merge hypotheses on the same last edge with close position and speed; keep the heaviest.

    A merged hypothesis keeps the route of its heaviest member; its state is the moment-matched
    mixture (positions taken relative to the start of the shared last edge):

    .. math::

        \\bar x = \\sum_i w_i x_i, \\qquad
        \\bar P = \\sum_i w_i \\left(P_i + (x_i - \\bar x)(x_i - \\bar x)^T\\right)
    """
    cfg = ctx.config
    eff = np.asarray(lw, dtype=np.float64) + np.asarray(neg, dtype=np.float64)
    best = float(eff.max())
    alive = np.flatnonzero(eff >= best - _NEGLIGIBLE_LOG)
    if len(alive) > 3 * cfg.max_hypotheses:  # too many to merge one by one: keep the heaviest
        alive = np.sort(alive[np.argsort(-eff[alive], kind="stable")[: 3 * cfg.max_hypotheses]])
    s_rel_arr = x[:, 0] - np.asarray(last_start, dtype=np.float64)
    s_rel = s_rel_arr.tolist()
    v = x[:, 1].tolist()
    eff_l = eff.tolist()
    groups: dict[int, list[int]] = {}
    for i in alive.tolist():
        groups.setdefault(routes[i][-1] if key_last_edge else routes[i][0], []).append(i)
    out_idx: list[int] = []  # the member kept for each output hypothesis
    out_lw: list[float] = []
    merged_rows: list[tuple[int, list[int]]] = []  # (output position, members) of merged ones
    for members in groups.values():
        if len(members) == 1:
            out_idx.append(members[0])
            out_lw.append(lw[members[0]])
            continue
        members.sort(key=lambda j: (s_rel[j], j))
        clusters: list[list[int]] = []
        head = -1
        for j in members:
            if (
                head >= 0
                and s_rel[j] - s_rel[head] <= cfg.merge_distance_m
                and abs(v[j] - v[head]) <= cfg.merge_speed_mps
            ):
                clusters[-1].append(j)
                continue
            clusters.append([j])
            head = j
        for cl in clusters:
            if len(cl) == 1:
                out_idx.append(cl[0])
                out_lw.append(lw[cl[0]])
                continue
            heavy = max(cl, key=lambda j: (eff_l[j], -j))
            top = max(eff_l[j] for j in cl)
            total = sum(math.exp(eff_l[j] - top) for j in cl)
            merged_rows.append((len(out_idx), cl))
            out_idx.append(heavy)
            out_lw.append(top + math.log(total) - neg[heavy])
    # Prune to the heaviest ``max_hypotheses`` (ties broken by position in the list).
    eff_out = [out_lw[k] + neg[out_idx[k]] for k in range(len(out_idx))]
    order = sorted(range(len(out_idx)), key=lambda k: (-eff_out[k], out_idx[k]))[: cfg.max_hypotheses]
    keep_rows = set(order)
    idx_arr = np.asarray(out_idx, dtype=np.int64)
    new_x = x[idx_arr]
    new_P = P[idx_arr]
    kept = [(pos, cl) for pos, cl in merged_rows if pos in keep_rows]
    if kept:
        heavy_start = [last_start[out_idx[pos]] for pos, _ in kept]
        means, covs = _moment_match(eff, x, P, s_rel_arr, [cl for _, cl in kept], heavy_start)
        kept_pos = np.asarray([pos for pos, _ in kept], dtype=np.int64)
        new_x[kept_pos] = means
        new_P[kept_pos] = covs
    order.sort(key=lambda k: out_idx[k])
    sel = np.asarray(order, dtype=np.int64)
    return (
        [routes[out_idx[k]] for k in order],
        [route_len[out_idx[k]] for k in order],
        [last_start[out_idx[k]] for k in order],
        [anchor[out_idx[k]] for k in order],
        [out_lw[k] for k in order],
        [neg[out_idx[k]] for k in order],
        new_x[sel].reshape(-1, 2),
        new_P[sel].reshape(-1, 2, 2),
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def monaco(shared_maps: Path) -> City:
    graph = compile_graph(graph_from_xml(shared_maps / "monaco.osm.bz2"))
    cameras = place_synthetic_cameras(graph, metz_density(graph), seed=3)
    return City(graph=graph, cameras=build_camera_network(graph, cameras, strict=False))


def _drive_sightings(city: City, roads: RoadIndex, rng: np.random.Generator, n_edges: int) -> list[Sighting]:
    """Sightings of a random drive (random ways out, 8-20 m/s), every camera passed reporting,
    half with a heading and some with a speed."""
    g = city.graph
    e = int(rng.integers(g.n_edges))
    t = 0.0
    out: list[Sighting] = []
    for _ in range(n_edges):
        speed = float(rng.uniform(8.0, 20.0))
        for cid, mid, _a, _b in sorted(roads.edge_spans.get(e, ()), key=lambda s: s[1]):
            if out and out[-1].camera_id == cid:
                continue
            heading = roads.bearing_deg(e, mid) if rng.random() < 0.5 else None
            out.append(
                Sighting(
                    incident_id="inc-k",
                    camera_id=cid,
                    observed_at=T0 + timedelta(seconds=t + mid / speed),
                    source_kind=SourceKind.simulation,
                    source_event_id=f"k{len(out)}",
                    heading_deg=heading,
                    speed_kmh=float(speed * 3.6) if rng.random() < 0.3 else None,
                )
            )
        t += roads.edge_len[e] / speed
        outs = roads.out_list[roads.edge_v[e]]
        if not outs:
            break
        e = outs[int(rng.integers(len(outs)))]
    return out


def _assert_same(a: Hypotheses, b: Hypotheses) -> None:
    assert a.t_s == b.t_s
    assert a.last_camera == b.last_camera
    assert a.routes == b.routes
    for name in ("route_len", "last_start", "x", "P", "lw", "neg", "anchor"):
        got, want = getattr(a, name), getattr(b, name)
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), name


def _tracked_states(city: City, seed: int) -> list[tuple[Tracker, Hypotheses]]:
    roads = RoadIndex(city.graph, city.cameras)
    rng = np.random.default_rng(seed)
    states: list[tuple[Tracker, Hypotheses]] = []
    for _ in range(3):
        tracker = Tracker(city, roads=roads)
        for s in _drive_sightings(city, roads, rng, 60):
            tracker.update(s)
            states.append((tracker, tracker.hypotheses(s.observed_at)))
    return states


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [1, 2])
def test_propagate_is_the_reference_bit_for_bit(monaco: City, seed: int) -> None:
    states = _tracked_states(monaco, seed)
    assert len(states) >= 20
    branched = 0
    for tracker, hyps in states:
        ctx = tracker._ctx
        for dt in (0.0, 4.0, 30.0, 120.0, 300.0):
            got = propagate(ctx, hyps, hyps.t_s + dt)
            want = _reference_propagate(ctx, hyps, hyps.t_s + dt)
            _assert_same(got, want)
            branched += got.routes != hyps.routes
    assert branched > 20  # the branching (and merging) ran


def test_propagate_with_few_rounds_and_hypotheses(monaco: City) -> None:
    """Rounds running out and merges at every round follow the reference too."""
    from dataclasses import replace

    states = _tracked_states(monaco, 3)[::5]
    for tracker, hyps in states:
        for cfg in (
            replace(tracker.config, max_extension_rounds=2),
            replace(tracker.config, max_hypotheses=2),
            replace(tracker.config, max_hypotheses=1, max_extension_rounds=7),
        ):
            ctx = Context(tracker.roads, tracker._ctx.behaviour, tracker._ctx.branch_context, cfg)
            for dt in (10.0, 90.0):
                _assert_same(
                    propagate(ctx, hyps, hyps.t_s + dt), _reference_propagate(ctx, hyps, hyps.t_s + dt)
                )


def test_merge_prune_is_the_reference_bit_for_bit(monaco: City) -> None:
    rng = np.random.default_rng(5)
    roads = RoadIndex(monaco.graph, monaco.cameras)
    tracker = Tracker(monaco, roads=roads)
    ctx = tracker._ctx
    edges = [int(e) for e in rng.choice(monaco.graph.n_edges, 6, replace=False)]
    for trial in range(200):
        n = int(rng.integers(1, 120))
        routes = [tuple(int(e) for e in rng.choice(edges, int(rng.integers(1, 4)))) for _ in range(n)]
        route_len = [float(sum(roads.edge_len[e] for e in r)) for r in routes]
        last_start = [rl - roads.edge_len[r[-1]] for rl, r in zip(route_len, routes, strict=True)]
        anchor = rng.uniform(0.0, 50.0, n).tolist()
        # Coarse values: ties in weight and position are common.
        lw = (rng.integers(-60, 1, n) * 0.5).tolist()
        neg = (rng.integers(-4, 1, n) * 0.25 if trial % 2 else np.zeros(n)).tolist()
        x = np.stack(
            [np.asarray(last_start) + rng.integers(0, 12, n) * 5.0, rng.integers(0, 8, n) * 1.5], axis=1
        )
        a = rng.uniform(1.0, 50.0, n)
        P = np.zeros((n, 2, 2))
        P[:, 0, 0], P[:, 1, 1], P[:, 0, 1] = a, rng.uniform(0.5, 5.0, n), 0.1 * a
        P[:, 1, 0] = P[:, 0, 1]
        for key_last_edge in (True, False):
            args = (ctx, routes, route_len, last_start, anchor, lw, neg, x, P)
            got = _merge_prune(*args, key_last_edge=key_last_edge)
            want = _reference_merge_prune(*args, key_last_edge=key_last_edge)
            assert got[:6] == want[:6]
            assert np.array_equal(got[6], want[6]) and np.array_equal(got[7], want[7])


def _plain(kernel: Any) -> Any:
    """The kernel's plain-Python function (itself under ``CORDON_NO_JIT=1``)."""
    return getattr(kernel, "py_func", kernel)


def test_kernels_compiled_equal_plain(monaco: City) -> None:
    states = _tracked_states(monaco, 4)[::4]
    calls = 0
    for tracker, hyps in states:
        ctx = tracker._ctx
        roads = ctx.roads
        x, P = predict_batch(hyps.x, hyps.P, 60.0, ctx.config.accel_noise)
        s, sigma = np.ascontiguousarray(x[:, 0]), np.sqrt(P[:, 0, 0])
        ptr = np.zeros(hyps.size + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(r) for r in hyps.routes])
        flat = np.asarray([e for r in hyps.routes for e in r], dtype=np.int64)
        skip = roads.camera_code(hyps.last_camera)
        span = (roads.span_ptr, roads.span_cam, roads.span_mid)
        neg_args = (ptr, flat, hyps.anchor, s, sigma, skip, roads.edge_len_arr, *span, ctx.p_detect)
        neg = kernels.route_neg_kernel(*neg_args)
        assert np.array_equal(neg, _plain(kernels.route_neg_kernel)(*neg_args))
        # The Python method it replaces.
        assert neg.tolist() == [
            ctx.route_neg(r, a, si, sg, hyps.last_camera)
            for r, a, si, sg in zip(
                hyps.routes, hyps.anchor.tolist(), s.tolist(), sigma.tolist(), strict=True
            )
        ]
        last = np.asarray([r[-1] for r in hyps.routes], dtype=np.int64)
        ext_args = (
            last, hyps.route_len, hyps.last_start, hyps.lw, neg, s, sigma,
            np.full(hyps.size, -1, dtype=np.int64), np.empty(0, np.int64), np.empty(0, np.int64), 0,
            400, 8, skip, _NEGLIGIBLE_LOG, roads.edge_len_arr, *ctx.priors.csr(), *span, ctx.p_detect,
        )  # fmt: skip
        got: Any = kernels.extend_kernel(*ext_args)
        want: Any = _plain(kernels.extend_kernel)(*ext_args)
        assert got[:2] == want[:2] and got[11] == want[11]
        for k in range(2, 11):
            n = got[11] if k in (9, 10) else len(got[k])
            assert np.array_equal(got[k][:n], want[k][:n]), k
        calls += 1
    assert calls >= 5


def test_branch_csr_is_the_memoised_priors(monaco: City) -> None:
    tracker = Tracker(monaco)
    priors = tracker._ctx.priors
    ptr, out, logp = priors.csr()
    for e in range(monaco.graph.n_edges):
        a, b = int(ptr[e]), int(ptr[e + 1])
        assert tuple(zip(out[a:b].tolist(), logp[a:b].tolist(), strict=True)) == priors.get(e)


def test_locate_kernel_is_locate_and_lonlat_bearing(monaco: City) -> None:
    states = _tracked_states(monaco, 6)[::3]
    graph = monaco.graph
    n = 0
    for tracker, hyps in states:
        roads = tracker.roads
        h = propagate(tracker._ctx, hyps, hyps.t_s + 45.0)
        ptr = np.zeros(h.size + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(r) for r in h.routes])
        flat = np.asarray([e for r in h.routes for e in r], dtype=np.int64)
        # Means before, inside and past the routes (clamped to the first or last edge).
        for shift in (-30.0, 0.0, 500.0):
            s = np.ascontiguousarray(h.x[:, 0]) + shift
            args = (
                ptr,
                flat,
                s,
                roads.edge_len_arr,
                roads.geom_ptr_arr,
                roads.arc,
                graph.geom_lonlat,
                graph.geom_xy,
            )
            got = kernels.locate_kernel(*args)
            plain = _plain(kernels.locate_kernel)(*args)
            for a, b in zip(got, plain, strict=True):
                assert np.array_equal(a, b)
            for i, route in enumerate(h.routes):
                edge, offset, k, _start = tracker._ctx.locate(route, float(s[i]))
                ll, bearing = roads.lonlat_bearing(edge, offset)
                assert (int(got[0][i]), float(got[1][i]), int(got[2][i])) == (edge, offset, k)
                assert (float(got[3][i]), float(got[4][i]), float(got[5][i])) == (ll.lon, ll.lat, bearing)
                n += 1
    assert n > 100
