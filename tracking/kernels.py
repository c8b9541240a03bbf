"""Compiled kernels of the hypothesis algorithms (:mod:`tracking.hypotheses`).

Routes are variable-length tuples of edges in Python; here they are flattened: a route is its
``route_ptr``/``route_edges`` slice, or (while branching) the route it started from plus a chain
of appended edges (``node_prev``/``node_edge``: a tree of the edges appended, each node knowing
its predecessor). Branch priors and the camera stretches per edge are CSR tables
(:meth:`tracking.hypotheses.BranchPriors.csr`, :attr:`tracking.roads.RoadIndex.span_ptr`).

Every kernel does the arithmetic of the Python loop it replaces, in the same order, on the same
scalars (``math.erfc``, ``math.log``, ``math.exp`` are the C library's in both), so the results
are bit for bit those of the loops (tests compare the compiled and the plain functions, and the
tracker's beliefs with those of the previous Python implementation).
"""

from __future__ import annotations

import math

import numpy as np

from map_data.jit import jit
from map_data.types import FloatArray, IntArray

_SQRT2 = math.sqrt(2.0)


@jit
def route_neg_kernel(
    route_ptr: IntArray,
    route_edges: IntArray,
    anchor: FloatArray,
    s: FloatArray,
    sigma: FloatArray,
    skip_cam: int,
    edge_len: FloatArray,
    span_ptr: IntArray,
    span_cam: IntArray,
    span_mid: FloatArray,
    p_detect: float,
) -> FloatArray:
    """:meth:`tracking.hypotheses.Context.route_neg` of every route (flattened)."""
    n = len(anchor)
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        total = 0.0
        c = 0.0
        scale = sigma[i] * _SQRT2
        near = anchor[i] + 1.0
        s_i = s[i]
        for k in range(route_ptr[i], route_ptr[i + 1]):
            e = route_edges[k]
            for q in range(span_ptr[e], span_ptr[e + 1]):
                z = c + span_mid[q]
                if span_cam[q] != skip_cam and z > near:
                    passed = 0.5 * math.erfc(-(s_i - z) / scale)
                    a = 1.0 - p_detect * passed
                    total += math.log(1e-12 if a < 1e-12 else a)
            c += edge_len[e]
        out[i] = total
    return out


@jit
def extend_kernel(
    last_edge: IntArray,
    route_len: FloatArray,
    last_start: FloatArray,
    lw: FloatArray,
    neg: FloatArray,
    s: FloatArray,
    sigma: FloatArray,
    chain_in: IntArray,
    node_prev: IntArray,
    node_edge: IntArray,
    n_nodes: int,
    max_rounds: int,
    max_size: int,
    skip_cam: int,
    negligible_log: float,
    edge_len: FloatArray,
    br_ptr: IntArray,
    br_out: IntArray,
    br_logp: FloatArray,
    span_ptr: IntArray,
    span_cam: IntArray,
    span_mid: FloatArray,
    p_detect: float,
) -> tuple[
    int,
    int,
    IntArray,
    IntArray,
    IntArray,
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    IntArray,
    IntArray,
    int,
]:
    """Rounds of :func:`tracking.hypotheses.propagate`'s branching, up to ``max_rounds`` or
    until the set grows beyond ``max_size`` (the caller merges then and calls again).

    A hypothesis' route is its input route's plus the edges of its chain: ``chain_in`` the
    last appended edge's node (-1: none) in the tree ``node_prev``/``node_edge`` (the first
    ``n_nodes`` entries used; grown and returned).

    Returns ``(status, rounds, src, chain, last_edge, route_len, last_start, lw, neg,
    node_prev, node_edge, n_nodes)``: status 0 when no hypothesis needs branching any more,
    1 when the set grew beyond ``max_size``, 2 when the rounds ran out; ``src`` the input row
    of each output hypothesis.
    """
    n = len(last_edge)
    src = np.arange(n)
    chain = chain_in.copy()
    cur_last = last_edge.copy()
    cur_len = route_len.copy()
    cur_start = last_start.copy()
    cur_lw = lw.copy()
    cur_neg = neg.copy()
    cur_s = s.copy()
    cur_sig = sigma.copy()
    cap = len(node_prev)
    status = 2
    rounds = 0
    while rounds < max_rounds:
        need = np.zeros(n, dtype=np.bool_)
        n_need = 0
        n_child_max = 0
        for i in range(n):
            e = cur_last[i]
            deg = br_ptr[e + 1] - br_ptr[e]
            if cur_s[i] > cur_len[i] and deg > 0:
                need[i] = True
                n_need += 1
                n_child_max += deg
        if n_need == 0:
            status = 0
            break
        rounds += 1
        best = cur_lw[0] + cur_neg[0]
        for i in range(1, n):
            v = cur_lw[i] + cur_neg[i]
            if v > best:
                best = v
        floor = best - negligible_log
        cap_out = n - n_need + n_child_max
        o_src = np.empty(cap_out, dtype=np.int64)
        o_chain = np.empty(cap_out, dtype=np.int64)
        o_last = np.empty(cap_out, dtype=np.int64)
        o_len = np.empty(cap_out, dtype=np.float64)
        o_start = np.empty(cap_out, dtype=np.float64)
        o_lw = np.empty(cap_out, dtype=np.float64)
        o_neg = np.empty(cap_out, dtype=np.float64)
        o_s = np.empty(cap_out, dtype=np.float64)
        o_sig = np.empty(cap_out, dtype=np.float64)
        m = 0
        for i in range(n):
            if not need[i]:
                o_src[m] = src[i]
                o_chain[m] = chain[i]
                o_last[m] = cur_last[i]
                o_len[m] = cur_len[i]
                o_start[m] = cur_start[i]
                o_lw[m] = cur_lw[i]
                o_neg[m] = cur_neg[i]
                o_s[m] = cur_s[i]
                o_sig[m] = cur_sig[i]
                m += 1
        for i in range(n):
            if not need[i]:
                continue
            base = cur_len[i]
            s_i = cur_s[i]
            lw_i = cur_lw[i]
            neg_i = cur_neg[i]
            scale = cur_sig[i] * _SQRT2
            for b in range(br_ptr[cur_last[i]], br_ptr[cur_last[i] + 1]):
                e = br_out[b]
                logp = br_logp[b]
                extra = 0.0
                for q in range(span_ptr[e], span_ptr[e + 1]):
                    if span_cam[q] != skip_cam:
                        passed = 0.5 * math.erfc(-(s_i - (base + span_mid[q])) / scale)
                        a = 1.0 - p_detect * passed
                        extra += math.log(1e-12 if a < 1e-12 else a)
                if lw_i + logp + neg_i + extra < floor:
                    continue
                if n_nodes == cap:
                    cap = 2 * cap + 64
                    grown_prev = np.empty(cap, dtype=np.int64)
                    grown_edge = np.empty(cap, dtype=np.int64)
                    grown_prev[:n_nodes] = node_prev[:n_nodes]
                    grown_edge[:n_nodes] = node_edge[:n_nodes]
                    node_prev = grown_prev
                    node_edge = grown_edge
                node_prev[n_nodes] = chain[i]
                node_edge[n_nodes] = e
                o_src[m] = src[i]
                o_chain[m] = n_nodes
                n_nodes += 1
                o_last[m] = e
                o_len[m] = base + edge_len[e]
                o_start[m] = base
                o_lw[m] = lw_i + logp
                o_neg[m] = neg_i + extra
                o_s[m] = s_i
                o_sig[m] = cur_sig[i]
                m += 1
        n = m
        src, chain, cur_last = o_src[:m], o_chain[:m], o_last[:m]
        cur_len, cur_start, cur_lw, cur_neg = o_len[:m], o_start[:m], o_lw[:m], o_neg[:m]
        cur_s, cur_sig = o_s[:m], o_sig[:m]
        if n > max_size:
            status = 1
            break
    return (
        status,
        rounds,
        src,
        chain,
        cur_last,
        cur_len,
        cur_start,
        cur_lw,
        cur_neg,
        node_prev,
        node_edge,
        n_nodes,
    )


@jit
def merge_kernel(
    key: IntArray,
    s_rel: FloatArray,
    v: FloatArray,
    eff: FloatArray,
    lw: FloatArray,
    neg: FloatArray,
    alive: IntArray,
    merge_distance_m: float,
    merge_speed_mps: float,
    max_hypotheses: int,
) -> tuple[IntArray, FloatArray, IntArray, IntArray, IntArray]:
    """The grouping, clustering and pruning of :func:`tracking.hypotheses._merge_prune`.

    Returns ``(sel, sel_lw, merged_row, cl_ptr, cl_members)``: the member kept for each output
    hypothesis (in output order) and its log-weight; for each merged output hypothesis (in the
    order the Python loop met them) its output row and its members ``cl_members[cl_ptr[k]:
    cl_ptr[k + 1]]`` (in cluster order).
    """
    na = len(alive)
    # Groups by key in order of first appearance (a dict's), members in ``alive`` order.
    by_key = np.argsort(key[alive], kind="mergesort")
    grp_first = np.empty(na, dtype=np.int64)  # per group (sorted by key): first member's rank
    grp_lo = np.empty(na + 1, dtype=np.int64)
    n_grp = 0
    for r in range(na):
        if r == 0 or key[alive[by_key[r]]] != key[alive[by_key[r - 1]]]:
            grp_lo[n_grp] = r
            grp_first[n_grp] = by_key[r]
            n_grp += 1
    grp_lo[n_grp] = na
    grp_order = np.argsort(grp_first[:n_grp], kind="mergesort")
    out_idx = np.empty(na, dtype=np.int64)
    out_lw = np.empty(na, dtype=np.float64)
    merged_pos = np.empty(na, dtype=np.int64)
    mem_ptr = np.empty(na + 1, dtype=np.int64)
    mem = np.empty(na, dtype=np.int64)
    n_out = 0
    n_merged = 0
    n_mem = 0
    mem_ptr[0] = 0
    for gk in range(n_grp):
        g = grp_order[gk]
        lo, hi = grp_lo[g], grp_lo[g + 1]
        members = np.empty(hi - lo, dtype=np.int64)
        for r in range(lo, hi):
            members[r - lo] = alive[by_key[r]]
        if hi - lo == 1:
            out_idx[n_out] = members[0]
            out_lw[n_out] = lw[members[0]]
            n_out += 1
            continue
        # Sorted by (s_rel, index): members are in increasing index, the sort is stable.
        members = members[np.argsort(s_rel[members], kind="mergesort")]
        cl_lo = 0
        head = members[0]
        for r in range(1, len(members) + 1):
            if r < len(members):
                j = members[r]
                if s_rel[j] - s_rel[head] <= merge_distance_m and abs(v[j] - v[head]) <= merge_speed_mps:
                    continue
            # The cluster members[cl_lo:r] is complete.
            if r - cl_lo == 1:
                out_idx[n_out] = members[cl_lo]
                out_lw[n_out] = lw[members[cl_lo]]
            else:
                heavy = members[cl_lo]
                top = eff[heavy]
                for t in range(cl_lo + 1, r):
                    j = members[t]
                    if eff[j] > top or (eff[j] == top and j < heavy):
                        heavy = j
                    if eff[j] > top:
                        top = eff[j]
                total = 0.0
                for t in range(cl_lo, r):
                    total += math.exp(eff[members[t]] - top)
                merged_pos[n_merged] = n_out
                for t in range(cl_lo, r):
                    mem[n_mem] = members[t]
                    n_mem += 1
                n_merged += 1
                mem_ptr[n_merged] = n_mem
                out_idx[n_out] = heavy
                out_lw[n_out] = top + math.log(total) - neg[heavy]
            n_out += 1
            if r < len(members):
                cl_lo = r
                head = members[r]
    # Prune to the heaviest ``max_hypotheses`` (ties by the kept member), output by member.
    eff_out = np.empty(n_out, dtype=np.float64)
    for k in range(n_out):
        eff_out[k] = out_lw[k] + neg[out_idx[k]]
    by_member = np.argsort(out_idx[:n_out], kind="mergesort")
    by_weight = by_member[np.argsort(-eff_out[by_member], kind="mergesort")]
    n_keep = min(n_out, max_hypotheses)
    keep = np.zeros(n_out, dtype=np.bool_)
    for t in range(n_keep):
        keep[by_weight[t]] = True
    row_of = np.full(n_out, -1, dtype=np.int64)
    sel = np.empty(n_keep, dtype=np.int64)
    sel_lw = np.empty(n_keep, dtype=np.float64)
    m = 0
    for t in range(n_out):
        k = by_member[t]
        if keep[k]:
            row_of[k] = m
            sel[m] = out_idx[k]
            sel_lw[m] = out_lw[k]
            m += 1
    n_kept = 0
    for c in range(n_merged):
        if keep[merged_pos[c]]:
            n_kept += 1
    merged_row = np.empty(n_kept, dtype=np.int64)
    cl_ptr = np.empty(n_kept + 1, dtype=np.int64)
    cl_members = np.empty(n_mem, dtype=np.int64)
    cl_ptr[0] = 0
    q = 0
    w = 0
    for c in range(n_merged):
        if keep[merged_pos[c]]:
            merged_row[q] = row_of[merged_pos[c]]
            for t in range(mem_ptr[c], mem_ptr[c + 1]):
                cl_members[w] = mem[t]
                w += 1
            q += 1
            cl_ptr[q] = w
    return sel, sel_lw, merged_row, cl_ptr, cl_members[:w]


@jit
def branch_csr_kernel(
    edge_v: IntArray,
    out_ptr: IntArray,
    out_edges: IntArray,
    table_ptr: IntArray,
    table_probs: FloatArray,
    floor: float,
) -> tuple[IntArray, IntArray, FloatArray]:
    """:meth:`tracking.hypotheses.BranchPriors.get` of every arriving edge from a branch table,
    as CSR arrays ``(br_ptr, br_out, br_logp)`` (ways at most ``floor`` dropped)."""
    n_edges = len(edge_v)
    br_ptr = np.zeros(n_edges + 1, dtype=np.int64)
    total = 0
    for e in range(n_edges):
        node = edge_v[e]
        a = table_ptr[e]
        for k in range(out_ptr[node + 1] - out_ptr[node]):
            if table_probs[a + k] > floor:
                total += 1
        br_ptr[e + 1] = total
    br_out = np.empty(total, dtype=np.int64)
    br_logp = np.empty(total, dtype=np.float64)
    m = 0
    for e in range(n_edges):
        node = edge_v[e]
        a = table_ptr[e]
        for k in range(out_ptr[node + 1] - out_ptr[node]):
            pe = table_probs[a + k]
            if pe > floor:
                br_out[m] = out_edges[out_ptr[node] + k]
                br_logp[m] = math.log(pe)
                m += 1
    return br_ptr, br_out, br_logp


@jit
def locate_kernel(
    route_ptr: IntArray,
    route_edges: IntArray,
    s: FloatArray,
    edge_len: FloatArray,
    geom_ptr: IntArray,
    arc: FloatArray,
    geom_lonlat: FloatArray,
    geom_xy: FloatArray,
) -> tuple[IntArray, FloatArray, IntArray, FloatArray, FloatArray, FloatArray]:
    """:meth:`tracking.hypotheses.Context.locate` of the point ``s[i]`` along each route and
    :meth:`tracking.roads.RoadIndex.lonlat_bearing` there: ``(edge, offset_m, index in the
    route, lon, lat, bearing_deg)``."""
    n = len(s)
    edges = np.empty(n, dtype=np.int64)
    offsets = np.empty(n, dtype=np.float64)
    ks = np.empty(n, dtype=np.int64)
    lons = np.empty(n, dtype=np.float64)
    lats = np.empty(n, dtype=np.float64)
    bearings = np.empty(n, dtype=np.float64)
    for i in range(n):
        c = 0.0
        lo, hi = route_ptr[i], route_ptr[i + 1]
        e = route_edges[lo]
        off = 0.0
        kk = 0
        for t in range(lo, hi):
            e = route_edges[t]
            length = edge_len[e]
            if s[i] < c + length or t == hi - 1:
                d = s[i] - c
                m = 0.0 if d < 0.0 else d
                off = length if length < m else m
                kk = t - lo
                break
            c += length
        edges[i] = e
        offsets[i] = off
        ks[i] = kk
        # RoadIndex._index and _point
        a, b = geom_ptr[e], geom_ptr[e + 1]
        total = arc[b - 1]
        length = edge_len[e]
        if length <= 0:
            d = 0.0
        else:
            m = 0.0 if off < 0.0 else off
            d = (length if length < m else m) / length * total
        # bisect_right(arc, d, a, b)
        lo_b, hi_b = a, b
        while lo_b < hi_b:
            mid = (lo_b + hi_b) // 2
            if d < arc[mid]:
                hi_b = mid
            else:
                lo_b = mid + 1
        j = lo_b - a - 1
        j = 0 if j < 0 else j
        top = b - a - 2
        j = top if top < j else j
        k = a + j
        span = arc[k + 1] - arc[k]
        f = 0.0 if span <= 0 else (d - arc[k]) / span
        x0, y0 = geom_lonlat[k, 0], geom_lonlat[k, 1]
        x1, y1 = geom_lonlat[k + 1, 0], geom_lonlat[k + 1, 1]
        lons[i] = x0 + f * (x1 - x0)
        lats[i] = y0 + f * (y1 - y0)
        dx = geom_xy[k + 1, 0] - geom_xy[k, 0]
        dy = geom_xy[k + 1, 1] - geom_xy[k, 1]
        bearings[i] = math.degrees(math.atan2(dx, dy)) % 360.0
    return edges, offsets, ks, lons, lats, bearings
