"""Maximum coverage of predicted escape routes by crews, one point per crew.

The problem: routes :math:`r` with weights :math:`w_r`, candidate points :math:`p` (point
:math:`p` covers the routes passing it), crews :math:`c` with a feasibility matrix
:math:`F_{cp}` (the crew gets there with the safety margin before the suspect). Choose at most
one point per crew, distinct points, at most ``max_assignments`` crews, to maximise
:math:`\\sum_r w_r [r \\text{ passes a manned point}]`.

:func:`lazy_greedy` picks the point of largest marginal gain (coverage is submodular, so the
greedy keeps its :math:`1 - 1/e` guarantee for plain max-coverage), assigns it to the feasible
crew least useful elsewhere, then improves by single-crew moves.
:func:`exact_milp` solves the same problem exactly with scipy's HiGHS ``milp`` (test oracle):

.. math::

    \\max \\sum_r w_r y_r \\quad\\text{s.t.}\\quad y_r \\le \\sum_{(c,p):\\,p \\ni r,\\,F_{cp}} x_{cp},
    \\quad \\sum_p x_{cp} \\le 1,\\quad \\sum_c x_{cp} \\le 1,
    \\quad \\sum x \\le M,\\quad x, y \\in \\{0,1\\}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from guidance.types import GuidanceError
from map_data.jit import jit
from map_data.types import BoolArray, FloatArray, IntArray

_EPS = 1e-12


@dataclass(frozen=True, eq=False)
class CoverageProblem:
    """``incidence`` (points × routes, scipy CSR, nonzero = point covers route),
    ``route_weights`` (routes), ``feasible`` (crews × points), ``max_assignments``;
    ``pair_bonus`` (crews × points, optional) is a small tie-break added to a pair's gain
    (margin, waiting time), never large enough to beat a real coverage difference."""

    incidence: sp.csr_matrix
    route_weights: FloatArray
    feasible: BoolArray
    max_assignments: int
    pair_bonus: FloatArray | None = None
    point_reliability: float = 1.0

    def __post_init__(self) -> None:
        n_points, n_routes = self.incidence.shape
        if self.route_weights.shape != (n_routes,):
            raise GuidanceError(f"route_weights has shape {self.route_weights.shape}, expected ({n_routes},)")
        if self.feasible.ndim != 2 or self.feasible.shape[1] != n_points:
            raise GuidanceError(f"feasible has shape {self.feasible.shape}, expected (crews, {n_points})")
        if self.pair_bonus is not None and self.pair_bonus.shape != self.feasible.shape:
            raise GuidanceError("pair_bonus must have the shape of feasible")
        if self.max_assignments < 0:
            raise GuidanceError(f"max_assignments must be >= 0, got {self.max_assignments}")
        if not 0 < self.point_reliability <= 1:
            raise GuidanceError(f"point_reliability must be in (0, 1], got {self.point_reliability}")

    @property
    def n_crews(self) -> int:
        return int(self.feasible.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.feasible.shape[1])


@dataclass(frozen=True, slots=True)
class CoverageSolution:
    """``assignment[c]`` is crew c's point index, or -1 (hold); ``value`` the covered weight."""

    assignment: tuple[int, ...]
    value: float


def coverage_value(problem: CoverageProblem, assignment: tuple[int, ...] | list[int]) -> float:
    """Covered route weight of an assignment (infeasible pairs raise ``GuidanceError``)."""
    points = [p for p in assignment if p >= 0]
    for c, p in enumerate(assignment):
        if p >= 0 and not problem.feasible[c, p]:
            raise GuidanceError(f"crew {c} cannot reach point {p} in time")
    if not points:
        return 0.0
    inc = _as_csr(problem.incidence)
    covered = np.zeros(inc.shape[1], dtype=bool)
    for p in points:
        lo, hi = inc.indptr[p], inc.indptr[p + 1]
        covered[inc.indices[lo:hi][inc.data[lo:hi] != 0]] = True
    return float(problem.route_weights[covered].sum())


def _as_csr(m: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """``m`` as a CSR matrix: itself when it is one already (no new object)."""
    if type(m) is sp.csr_matrix:
        return m
    out: sp.csr_matrix = sp.csr_matrix(m)
    return out


def _ones_csr(m: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """The pattern of ``m`` as a float CSR matrix of ones (``m`` itself when it is one already;
    never written to)."""
    if type(m) is sp.csr_matrix and m.dtype == np.float64 and bool(np.all(m.data == 1.0)):
        return m
    inc = sp.csr_matrix(m, dtype=np.float64, copy=True)
    inc.data[:] = 1.0
    return inc


@jit
def _residual_into(
    out: FloatArray, w: FloatArray, count: IntArray, rho: float, rho_pow: FloatArray, rows: IntArray
) -> None:
    """Marginal value of one more manned point on each route ``r`` of ``rows``, into ``out``: a
    manned point stops the suspect with probability ``rho``, so a route already passing
    ``count`` of them adds ``w rho (1 - rho)^count`` (``rho = 1``: plain coverage, uncovered
    routes only, ``w * (count == 0)``); the powers are ``rho_pow[count]`` (computed by numpy)."""
    for r in rows:
        if rho >= 1.0:
            out[r] = w[r] * (1.0 if count[r] == 0 else 0.0)
        else:
            out[r] = w[r] * rho * rho_pow[count[r]]


@jit
def _gains_into(out: FloatArray, indptr: IntArray, indices: IntArray, x: FloatArray) -> None:
    """``out = inc @ x`` for a CSR matrix of ones: each row's sum in stored order, from 0.0
    (scipy's ``csr_matvec``, whose products by 1.0 are exact)."""
    for p in range(out.size):
        s = 0.0
        for jj in range(indptr[p], indptr[p + 1]):
            s += x[indices[jj]]
        out[p] = s


@jit
def _add_row(
    count: IntArray, stamp: IntArray, tick: int, indices: IntArray, lo: int, hi: int, step: int
) -> None:
    """``count[indices[lo:hi]] += step`` as numpy does it (a route listed twice moves once):
    ``stamp`` marks the routes done at ``tick`` (a value never used before)."""
    for jj in range(lo, hi):
        r = indices[jj]
        if stamp[r] != tick:
            stamp[r] = tick
            count[r] += step


@jit
def _columns(indptr: IntArray, indices: IntArray, n_routes: int) -> tuple[IntArray, IntArray]:
    """The points through each route (``col_ptr``, ``col_points``: the CSC pattern of the CSR
    ``indptr``/``indices``, points increasing): whose gains change with the route's residual."""
    n_points = indptr.size - 1
    col_ptr = np.zeros(n_routes + 1, dtype=np.int64)
    for jj in range(indptr[n_points]):
        col_ptr[indices[jj] + 1] += 1
    for r in range(n_routes):
        col_ptr[r + 1] += col_ptr[r]
    fill = col_ptr[:n_routes].copy()
    col_points = np.empty(indptr[n_points], dtype=np.int64)
    for p in range(n_points):
        for jj in range(indptr[p], indptr[p + 1]):
            r = indices[jj]
            col_points[fill[r]] = p
            fill[r] += 1
    return col_ptr, col_points


@jit
def _move_row(
    count: IntArray,
    stamp: IntArray,
    tick: int,
    indices: IntArray,
    lo: int,
    hi: int,
    step: int,
    residual: FloatArray,
    w: FloatArray,
    rho: float,
    rho_pow: FloatArray,
    pending: IntArray,
    n_pending: int,
    is_pending: BoolArray,
) -> int:
    """:func:`_add_row`, then the residuals of its routes (:func:`_residual_into`); a route whose
    residual changed is appended to ``pending[:n_pending]`` unless there already
    (``is_pending``): the gains through it are out of date. Returns the new ``n_pending``."""
    _add_row(count, stamp, tick, indices, lo, hi, step)
    for jj in range(lo, hi):
        r = indices[jj]
        old = residual[r]
        _residual_into(residual, w, count, rho, rho_pow, indices[jj : jj + 1])
        if residual[r] != old and not is_pending[r]:
            is_pending[r] = True
            pending[n_pending] = r
            n_pending += 1
    return n_pending


@jit
def _refresh_gains(
    gains: FloatArray,
    indptr: IntArray,
    indices: IntArray,
    residual: FloatArray,
    col_ptr: IntArray,
    col_points: IntArray,
    pending: IntArray,
    n_pending: int,
    is_pending: BoolArray,
    point_stamp: IntArray,
    tick: int,
) -> None:
    """``gains = inc @ residual`` when only the residuals of ``pending[:n_pending]`` changed
    since ``gains`` was: the points through those routes are recomputed whole (each row's sum
    in stored order from 0.0, as :func:`_gains_into`), the others' routes did not change.
    ``point_stamp`` marks the points done at ``tick`` (a value never used before)."""
    for i in range(n_pending):
        r = pending[i]
        is_pending[r] = False
        for kk in range(col_ptr[r], col_ptr[r + 1]):
            p = col_points[kk]
            if point_stamp[p] != tick:
                point_stamp[p] = tick
                s = 0.0
                for jj in range(indptr[p], indptr[p + 1]):
                    s += residual[indices[jj]]
                gains[p] = s


@jit
def _greedy_kernel(
    indptr: IntArray,
    indices: IntArray,
    w: FloatArray,
    feas_a: BoolArray,
    bonus_a: FloatArray,
    active: IntArray,
    assign: IntArray,
    used: BoolArray,
    count: IntArray,
    stamp: IntArray,
    budget: int,
    min_gain: float,
    rho: float,
    rho_pow: FloatArray,
    col_ptr: IntArray,
    col_points: IntArray,
    point_stamp: IntArray,
) -> int:
    """The greedy picks of :func:`lazy_greedy` (``assign``, ``used``, ``count`` updated in
    place); returns the next unused tick of ``stamp`` and ``point_stamp``.

    Each pick takes the point of largest ``gains + tie`` (the first of equal ones) among the
    points some free crew can take, whose gain is above ``min_gain``; the crew is the one with
    the smallest best alternative (the largest gain of another free point it can take, 0 when
    none), then the largest bonus, then the first. After each pick the gains are those of one
    sparse product (:func:`_refresh_gains`: the points through the routes whose residual
    changed)."""
    A, P = feas_a.shape
    K = w.size
    tick = 1
    all_routes = np.arange(K)
    uncovered = np.empty(K)
    _residual_into(uncovered, w, count, rho, rho_pow, all_routes)
    gains = np.empty(P)
    _gains_into(gains, indptr, indices, uncovered)
    pending = np.empty(K, dtype=np.int64)  # routes whose residual changed since ``gains``
    is_pending = np.zeros(K, dtype=np.bool_)
    n_free = np.zeros(P, dtype=np.int64)
    tie = np.full(P, -np.inf)
    for k in range(A):
        for j in range(P):
            if feas_a[k, j]:
                n_free[j] += 1
                if bonus_a[k, j] > tie[j]:
                    tie[j] = bonus_a[k, j]
    free = np.ones(A, dtype=np.bool_)
    n_free_crews = A
    while budget > 0 and n_free_crews > 0:
        p = -1
        best_v = -np.inf
        for j in range(P):
            if n_free[j] > 0 and not used[j] and gains[j] > min_gain:
                v = gains[j] + tie[j]
                if p < 0 or v > best_v:
                    p = j
                    best_v = v
        if p < 0:
            break
        n_cand = 0
        for k in range(A):
            if free[k] and feas_a[k, p]:
                n_cand += 1
        # The crew least useful elsewhere: smallest best alternative, then largest bonus.
        pick = -1
        pick_alt = 0.0
        pick_neg_bonus = 0.0
        for k in range(A):
            if not (free[k] and feas_a[k, p]):
                continue
            alt = 0.0
            if n_cand > 1:
                for j in range(P):
                    if feas_a[k, j] and not used[j] and j != p and gains[j] > alt:
                        alt = gains[j]
            neg_bonus = -bonus_a[k, p]
            if pick < 0 or alt < pick_alt or (alt == pick_alt and neg_bonus < pick_neg_bonus):
                pick = k
                pick_alt = alt
                pick_neg_bonus = neg_bonus
        assign[active[pick]] = p
        used[p] = True
        free[pick] = False
        n_free_crews -= 1
        budget -= 1
        lo, hi = indptr[p], indptr[p + 1]
        n_pending = _move_row(
            count, stamp, tick, indices, lo, hi, 1, uncovered, w, rho, rho_pow, pending, 0, is_pending
        )
        tick += 1
        _refresh_gains(
            gains,
            indptr,
            indices,
            uncovered,
            col_ptr,
            col_points,
            pending,
            n_pending,
            is_pending,
            point_stamp,
            tick,
        )
        tick += 1
        # Crew ``pick`` is no longer free: the counts, and the best bonus where it was the best.
        for j in range(P):
            if feas_a[pick, j]:
                n_free[j] -= 1
                if bonus_a[pick, j] >= tie[j]:
                    t = -np.inf
                    for k in range(A):
                        if free[k] and feas_a[k, j] and bonus_a[k, j] > t:
                            t = bonus_a[k, j]
                    tie[j] = t
    return tick


@jit
def _improve_kernel(
    indptr: IntArray,
    indices: IntArray,
    w: FloatArray,
    feasible: BoolArray,
    bonus: FloatArray,
    movable: IntArray,
    assign: IntArray,
    used: BoolArray,
    count: IntArray,
    stamp: IntArray,
    tick: int,
    max_assignments: int,
    min_gain: float,
    rounds: int,
    rho: float,
    rho_pow: FloatArray,
    col_ptr: IntArray,
    col_points: IntArray,
    point_stamp: IntArray,
) -> None:
    """Move one crew at a time to its best point given the others (in place), for at most
    ``rounds`` rounds, until no crew moves.

    ``movable`` are the crews that may move (``feasible`` and ``bonus`` hold their rows, in
    that order); ``count`` (manned points per route) and ``used`` are those of ``assign``. A
    crew that holds takes its best free point (gain + bonus) when the gain is above
    ``min_gain``, while fewer than ``max_assignments`` crews are placed; a placed crew moves to
    the best point given the others when it beats its own by more than 1e-9. ``gains`` are
    those of one sparse product given ``count``, brought up to date before they are read
    (:func:`_refresh_gains`, on the routes whose residual changed since)."""
    P = feasible.shape[1]
    K = w.size
    residual = np.empty(K)
    _residual_into(residual, w, count, rho, rho_pow, np.arange(K))
    gains = np.empty(P)
    _gains_into(gains, indptr, indices, residual)
    pending = np.empty(K, dtype=np.int64)  # routes whose residual changed since ``gains``
    n_pending = 0
    is_pending = np.zeros(K, dtype=np.bool_)
    n_assigned = 0
    for j in range(P):
        if used[j]:
            n_assigned += 1
    M = movable.size
    for _ in range(rounds):
        changed = False
        k = 0
        while k < M:
            c = movable[k]
            a = assign[c]
            if a < 0:
                if n_assigned >= max_assignments:
                    k += 1
                    continue
                # A run of crews that hold: nothing changes until one of them moves, so each
                # one's best point is taken on the same gains.
                j_end = k
                while j_end < M and assign[movable[j_end]] < 0:
                    j_end += 1
                _refresh_gains(
                    gains,
                    indptr,
                    indices,
                    residual,
                    col_ptr,
                    col_points,
                    pending,
                    n_pending,
                    is_pending,
                    point_stamp,
                    tick,
                )
                tick += 1
                n_pending = 0
                full_gains = gains  # given every placed crew
                mover = -1
                p = -1
                for i in range(k, j_end):
                    best = 0
                    best_score = -np.inf
                    for q in range(P):
                        s = full_gains[q] + bonus[i, q] if feasible[i, q] and not used[q] else -np.inf
                        if q == 0 or s > best_score:
                            best = q
                            best_score = s
                    if full_gains[best] > min_gain and best_score > min_gain + 1e-9:
                        mover = i
                        p = best
                        break
                if mover < 0:
                    k = j_end
                    continue
                k = mover
                assign[movable[k]] = p
                used[p] = True
                n_assigned += 1
                n_pending = _move_row(
                    count,
                    stamp,
                    tick,
                    indices,
                    indptr[p],
                    indptr[p + 1],
                    1,
                    residual,
                    w,
                    rho,
                    rho_pow,
                    pending,
                    n_pending,
                    is_pending,
                )
                tick += 1
                changed = True
                k += 1
                continue
            n_pending = _move_row(
                count,
                stamp,
                tick,
                indices,
                indptr[a],
                indptr[a + 1],
                -1,
                residual,
                w,
                rho,
                rho_pow,
                pending,
                n_pending,
                is_pending,
            )
            tick += 1
            _refresh_gains(
                gains,
                indptr,
                indices,
                residual,
                col_ptr,
                col_points,
                pending,
                n_pending,
                is_pending,
                point_stamp,
                tick,
            )
            tick += 1
            n_pending = 0
            b = 0
            best_score = -np.inf
            for q in range(P):
                ok = (feasible[k, q] and not used[q]) or q == a
                s = gains[q] + bonus[k, q] if ok else -np.inf
                if q == 0 or s > best_score:
                    b = q
                    best_score = s
            if gains[b] > min_gain and best_score > (gains[a] + bonus[k, a]) + 1e-9:
                used[a] = False
                assign[c] = b
                used[b] = True
                changed = True
            b = assign[c]
            n_pending = _move_row(
                count,
                stamp,
                tick,
                indices,
                indptr[b],
                indptr[b + 1],
                1,
                residual,
                w,
                rho,
                rho_pow,
                pending,
                n_pending,
                is_pending,
            )
            tick += 1
            k += 1
        if not changed:
            return


def _rho_pow(rho: float, n: int) -> FloatArray:
    """``(1 - rho) ** k`` for ``k = 0 .. n - 1``, as numpy computes ``(1 - rho) ** count``
    (a placeholder when ``rho >= 1``, where no power is used)."""
    if rho >= 1.0:
        return np.ones(1)
    out = (1.0 - rho) ** np.arange(n, dtype=np.int64)
    return np.asarray(out, dtype=np.float64)


def lazy_greedy(
    problem: CoverageProblem,
    *,
    fixed: Mapping[int, int] | None = None,
    min_gain: float = 0.0,
    improve: bool = True,
) -> CoverageSolution:
    """Greedy max-coverage, then single-crew improving moves.

    Each pick takes the point of largest marginal gain that a free crew can reach in time (the
    gains of all points are refreshed after each pick), and gives it to the feasible crew with
    the smallest best alternative.

    ``fixed`` pre-assigns crews to points (kept targets); they count toward
    ``max_assignments`` and are never moved. Pairs whose gain is ``<= min_gain`` are not used
    (the crew holds).

    Only crews with a feasible point take part (the others hold); the picks and moves run in
    compiled kernels (:func:`_greedy_kernel`, :func:`_improve_kernel`).
    """
    C, P = problem.feasible.shape
    inc = _ones_csr(problem.incidence)
    w = np.ascontiguousarray(problem.route_weights, dtype=np.float64)
    feasible = problem.feasible
    assign = [-1] * C
    used = np.zeros(P, dtype=bool)
    count = np.zeros(inc.shape[1], dtype=np.int64)
    for c, p in sorted((fixed or {}).items()):
        if not (0 <= c < C and 0 <= p < P) or not feasible[c, p]:
            raise GuidanceError(f"fixed pair (crew {c}, point {p}) is not feasible")
        if used[p]:
            raise GuidanceError(f"point {p} is fixed for two crews")
        assign[c] = p
        used[p] = True
        count[inc.indices[inc.indptr[p] : inc.indptr[p + 1]]] += 1
    budget = problem.max_assignments - sum(1 for a in assign if a >= 0)
    if budget < 0:
        raise GuidanceError(f"{-budget} more fixed crews than max_assignments={problem.max_assignments}")
    fixed_mask = np.array([a >= 0 for a in assign], dtype=bool)
    # The crews that can take a point at all (free, with a feasible point); only they matter.
    active = np.flatnonzero(~fixed_mask & feasible.any(axis=1)) if P else np.zeros(0, dtype=np.int64)
    if active.size:
        # The kernels only read these rows: all of them are the problem's own arrays, unless
        # some crew is out.
        every = active.size == C
        feas_a = np.ascontiguousarray(feasible if every else feasible[active], dtype=np.bool_)
        if problem.pair_bonus is not None:
            bonus = problem.pair_bonus
            bonus_a = np.ascontiguousarray(bonus if every else bonus[active], dtype=np.float64)
        else:
            bonus_a = np.zeros((active.size, P))
        rho = float(problem.point_reliability)
        rho_pow = _rho_pow(rho, C + 2)  # a route passes at most one point per crew
        assign_a = np.array(assign, dtype=np.int64)
        stamp = np.zeros(inc.shape[1], dtype=np.int64)
        indptr, indices = inc.indptr, inc.indices
        state = (assign_a, used, count, stamp)
        columns = (*_columns(indptr, indices, inc.shape[1]), np.zeros(P, dtype=np.int64))
        tick = _greedy_kernel(
            indptr,
            indices,
            w,
            feas_a,
            bonus_a,
            active,
            *state,
            budget,
            float(min_gain),
            rho,
            rho_pow,
            *columns,
        )
        if improve:
            _improve_kernel(
                indptr,
                indices,
                w,
                feas_a,
                bonus_a,
                active,
                *state,
                tick,
                problem.max_assignments,
                float(min_gain),
                2,
                rho,
                rho_pow,
                *columns,
            )
        assign = assign_a.tolist()
    if inc is problem.incidence:
        # ``count`` is kept exact through every placement and move, and every stored entry of
        # the incidence is a 1: this is :func:`coverage_value` of the assignment.
        value = float(problem.route_weights[count > 0].sum())
    else:
        value = coverage_value(problem, assign)
    return CoverageSolution(assignment=tuple(assign), value=value)


def exact_milp(problem: CoverageProblem, *, time_limit_s: float = 30.0) -> CoverageSolution:
    """Optimal assignment by mixed-integer programming (scipy HiGHS); for tests on small cases."""
    C, P = problem.feasible.shape
    R = problem.incidence.shape[1]
    pairs = np.argwhere(problem.feasible)  # (X, 2): crew, point
    X = pairs.shape[0]
    if X == 0 or R == 0 or problem.max_assignments == 0:
        return CoverageSolution(assignment=(-1,) * C, value=0.0)
    inc = sp.csr_matrix(problem.incidence)
    inc_bool = (inc != 0).astype(np.float64)
    # y_r - sum_{pairs covering r} x <= 0
    pair_point = sp.csr_matrix((np.ones(X), (np.arange(X), pairs[:, 1])), shape=(X, P))
    cover = (pair_point @ inc_bool).T.tocsr()  # (R, X)
    cover.data[:] = 1.0
    a_cover = sp.hstack([-cover, sp.identity(R, format="csr")]).tocsr()
    crew_rows = sp.csr_matrix((np.ones(X), (pairs[:, 0], np.arange(X))), shape=(C, X))
    point_rows = sp.csr_matrix((np.ones(X), (pairs[:, 1], np.arange(X))), shape=(P, X))
    total_row = sp.csr_matrix(np.ones((1, X)))
    zeros = sp.csr_matrix((C + P + 1, R))
    a_assign = sp.hstack([sp.vstack([crew_rows, point_rows, total_row]), zeros]).tocsr()
    constraints = [
        LinearConstraint(a_cover, -np.inf, 0.0),
        LinearConstraint(
            a_assign,
            -np.inf,
            np.r_[np.ones(C + P), float(problem.max_assignments)],
        ),
    ]
    c_obj = np.r_[np.zeros(X), -problem.route_weights.astype(np.float64)]
    res = milp(
        c_obj,
        constraints=constraints,
        integrality=np.ones(X + R),
        bounds=Bounds(0.0, 1.0),
        options={"time_limit": time_limit_s},
    )
    if res.x is None:
        raise GuidanceError(f"milp found no solution: {res.message}")
    x = res.x[:X] > 0.5
    assign = [-1] * C
    for (c, p), on in zip(pairs.tolist(), x.tolist(), strict=True):
        if on:
            assign[c] = p
    return CoverageSolution(assignment=tuple(assign), value=coverage_value(problem, assign))
