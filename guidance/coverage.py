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
from map_data.types import BoolArray, FloatArray

_EPS = 1e-12
_ALT_TOP = 32  # points of largest gain tried first for a crew's best alternative


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


def _residual(w: FloatArray, count: np.ndarray, rho: float) -> FloatArray:
    """Marginal value of one more manned point on each route: a manned point stops the
    suspect with probability ``rho``, so a route already passing ``count`` of them adds
    ``w rho (1 - rho)^count`` (``rho = 1``: plain coverage, uncovered routes only)."""
    if rho >= 1.0:
        out: FloatArray = w * (count == 0)
        return out
    res: FloatArray = w * rho * (1.0 - rho) ** count
    return res


def _gains(inc_w: sp.csr_matrix, uncovered: FloatArray) -> FloatArray:
    out: FloatArray = np.asarray(inc_w @ uncovered).ravel()
    return out


def _best_alternative(feasible: BoolArray, gains: FloatArray, used: BoolArray, p: int) -> FloatArray:
    """For each row of ``feasible`` (crews), the largest gain of a free point other than ``p``
    it can take (0 when none). The few points of largest gain are tried first: a crew that can
    take one of them has its answer there; only the others scan every point."""
    avail = ~used
    avail[p] = False
    out = np.zeros(feasible.shape[0])
    g_avail = np.where(avail, gains, -1.0)  # gains are >= 0
    n_top = min(_ALT_TOP, g_avail.size)
    if n_top == 0:
        return out
    top = np.argpartition(-g_avail, n_top - 1)[:n_top]
    top = top[g_avail[top] >= 0.0]
    sub = feasible[:, top]
    hit = sub.any(axis=1)
    if hit.any():
        out[hit] = np.where(sub[hit], gains[top][None, :], -np.inf).max(axis=1)
    miss = np.flatnonzero(~hit)
    if miss.size:
        out[miss] = np.where(feasible[miss] & avail[None, :], gains[None, :], 0.0).max(axis=1)
    return out


def lazy_greedy(
    problem: CoverageProblem,
    *,
    fixed: Mapping[int, int] | None = None,
    min_gain: float = 0.0,
    improve: bool = True,
) -> CoverageSolution:
    """Greedy max-coverage, then single-crew improving moves.

    Each pick takes the point of largest marginal gain that a free crew can reach in time (the
    gains of all points are refreshed with one sparse product, which in numpy is cheaper than
    a lazy priority queue and picks the same), and gives it to the feasible crew with the
    smallest best alternative.

    ``fixed`` pre-assigns crews to points (kept targets); they count toward
    ``max_assignments`` and are never moved. Pairs whose gain is ``<= min_gain`` are not used
    (the crew holds).

    Only crews with a feasible point take part (the others hold), and the per-point counts of
    free feasible crews and their best tie-break bonus are updated as crews are placed rather
    than recomputed over every crew: the picks are those of the plain loop.
    """
    C, P = problem.feasible.shape
    inc = _ones_csr(problem.incidence)
    w = problem.route_weights.astype(np.float64)
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
    feas_a = feasible[active]
    if problem.pair_bonus is not None:
        bonus_a = np.asarray(problem.pair_bonus[active], dtype=np.float64)
    else:
        bonus_a = np.zeros((active.size, P))
    free_a = np.ones(active.size, dtype=bool)

    rho = problem.point_reliability
    uncovered = _residual(w, count, rho)
    gains = _gains(inc, uncovered)
    # Per point: how many free crews can take it, and their best tie-break bonus.
    n_free = feas_a.sum(axis=0)
    tie = np.where(feas_a, bonus_a, -np.inf).max(axis=0) if active.size else np.full(P, -np.inf)
    while budget > 0 and free_a.any():
        # Upper bounds first (lazy evaluation): a point's gain only shrinks as crews are placed,
        # and the gains of every point are refreshed by one sparse product per pick.
        reach = (n_free > 0) & ~used & (gains > min_gain)
        if not reach.any():
            break
        p = int(np.argmax(np.where(reach, gains + tie, -np.inf)))
        cand = np.flatnonzero(free_a & feas_a[:, p])
        row = inc.indices[inc.indptr[p] : inc.indptr[p + 1]]
        # The crew least useful elsewhere: smallest best alternative gain, then largest bonus.
        alt = _best_alternative(feas_a[cand], gains, used, p) if cand.size > 1 else np.zeros(cand.size)
        order = np.lexsort((active[cand], -bonus_a[cand, p], alt))
        k = int(cand[order[0]])
        c = int(active[k])
        assign[c] = p
        used[p] = True
        free_a[k] = False
        budget -= 1
        count[row] += 1
        uncovered[row] = _residual(w[row], count[row], rho)
        gains = _gains(inc, uncovered)
        # Crew k is no longer free: update the counts, and the best bonus where it was the best.
        n_free -= feas_a[k]
        stale = np.flatnonzero(feas_a[k] & (bonus_a[k] >= tie))
        if stale.size:
            rest = free_a[:, None] & feas_a[:, stale]
            tie[stale] = np.where(rest, bonus_a[:, stale], -np.inf).max(axis=0) if rest.size else -np.inf
    if improve and active.size:
        _improve(
            inc,
            w,
            feas_a,
            bonus_a,
            active,
            assign,
            problem.max_assignments,
            min_gain,
            rho=rho,
            state=(count, used),
        )
    if inc is problem.incidence:
        # ``count`` is kept exact through every placement and move, and every stored entry of
        # the incidence is a 1: this is :func:`coverage_value` of the assignment.
        value = float(problem.route_weights[count > 0].sum())
    else:
        value = coverage_value(problem, assign)
    return CoverageSolution(assignment=tuple(assign), value=value)


def _improve(
    inc: sp.csr_matrix,
    w: FloatArray,
    feasible: BoolArray,
    bonus: FloatArray,
    movable: np.ndarray,
    assign: list[int],
    max_assignments: int,
    min_gain: float,
    rounds: int = 2,
    rho: float = 1.0,
    state: tuple[np.ndarray, BoolArray] | None = None,
) -> None:
    """Move one crew at a time to its best point given the others (in place).

    ``movable`` are the crews that may move (``feasible`` and ``bonus`` hold their rows, in
    that order). The gains given every placed crew are computed once and reused for every
    crew that holds, and again after a crew returns to the point it had. ``state`` (optional):
    the manned points' count per route and the used points of ``assign``, updated in place
    (computed from ``assign`` when not given)."""
    indptr, indices = inc.indptr, inc.indices

    def rows(p: int) -> np.ndarray:
        out: np.ndarray = indices[indptr[p] : indptr[p + 1]]
        return out

    P = inc.shape[0]
    if state is not None:
        count, used = state
    else:
        count = np.zeros(inc.shape[1], dtype=np.int64)
        used = np.zeros(P, dtype=bool)
        for a in assign:
            if a >= 0:
                count[rows(a)] += 1
                used[a] = True
    n_assigned = int(used.sum())
    full_gains: FloatArray | None = None  # gains given every placed crew (valid while unchanged)
    order = movable.tolist()
    M = len(order)
    for _ in range(rounds):
        changed = False
        k = 0
        while k < M:
            c = order[k]
            a = assign[c]
            if a < 0:
                if n_assigned >= max_assignments:
                    k += 1
                    continue
                # A run of crews that hold: until one of them moves nothing changes, so their
                # best points are computed together (each row as the one-crew step would).
                j = k
                while j < M and assign[order[j]] < 0:
                    j += 1
                if full_gains is None:
                    full_gains = _gains(inc, _residual(w, count, rho))
                score = np.where(feasible[k:j] & ~used, full_gains + bonus[k:j], -np.inf)
                best = np.argmax(score, axis=1)
                best_score = score[np.arange(j - k), best]
                moves = np.flatnonzero((full_gains[best] > min_gain) & (best_score > min_gain + 1e-9))
                if moves.size == 0:
                    k = j
                    continue
                k += int(moves[0])
                p = int(best[moves[0]])
                assign[order[k]] = p
                used[p] = True
                n_assigned += 1
                count[rows(p)] += 1
                changed = True
                full_gains = None
                k += 1
                continue
            count[rows(a)] -= 1
            gains = _gains(inc, _residual(w, count, rho))
            mask = feasible[k] & ~used
            mask[a] = True
            score_k = np.where(mask, gains + bonus[k], -np.inf)
            b = int(np.argmax(score_k))
            if gains[b] > min_gain and score_k[b] > float(gains[a] + bonus[k, a]) + 1e-9:
                used[a] = False
                assign[c] = b
                used[b] = True
                changed = True
                full_gains = None
            count[rows(assign[c])] += 1
            k += 1
        if not changed:
            return


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
