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
    covered = np.asarray(problem.incidence[points].sum(axis=0)).ravel() > 0
    return float(problem.route_weights[covered].sum())


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
    """
    C, P = problem.feasible.shape
    inc = sp.csr_matrix(problem.incidence, dtype=np.float64)
    inc.data[:] = 1.0
    w = problem.route_weights.astype(np.float64)
    bonus = problem.pair_bonus if problem.pair_bonus is not None else np.zeros((C, P))
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
    free = np.array([a < 0 for a in assign], dtype=bool)

    rho = problem.point_reliability
    uncovered = _residual(w, count, rho)
    gains = _gains(inc, uncovered)
    while budget > 0 and free.any():
        # Upper bounds first (lazy evaluation): a point's gain only shrinks as crews are placed,
        # and the gains of every point are refreshed by one sparse product per pick.
        reach = feasible[free].any(axis=0) & ~used & (gains > min_gain)
        if not reach.any():
            break
        tie = np.where(feasible & free[:, None], bonus, -np.inf).max(axis=0)
        p = int(np.argmax(np.where(reach, gains + tie, -np.inf)))
        crews = np.flatnonzero(free & feasible[:, p])
        row = inc.indices[inc.indptr[p] : inc.indptr[p + 1]]
        # The crew least useful elsewhere: smallest best alternative gain, then largest bonus.
        others = feasible[crews] & ~used[None, :]
        others[:, p] = False
        alt = np.where(others, gains[None, :], 0.0).max(axis=1) if P > 1 else np.zeros(crews.size)
        order = np.lexsort((crews, -bonus[crews, p], alt))
        c = int(crews[order[0]])
        assign[c] = p
        used[p] = True
        free[c] = False
        budget -= 1
        count[row] += 1
        uncovered[row] = _residual(w[row], count[row], rho)
        gains = _gains(inc, uncovered)
    if improve:
        _improve(
            inc,
            w,
            feasible,
            bonus,
            assign,
            set((fixed or {}).keys()),
            problem.max_assignments,
            min_gain,
            rho=rho,
        )
    value = coverage_value(problem, assign)
    return CoverageSolution(assignment=tuple(assign), value=value)


def _improve(
    inc: sp.csr_matrix,
    w: FloatArray,
    feasible: BoolArray,
    bonus: FloatArray,
    assign: list[int],
    fixed: set[int],
    max_assignments: int,
    min_gain: float,
    rounds: int = 2,
    rho: float = 1.0,
) -> None:
    """Move one crew at a time to its best point given the others (in place)."""
    C, _ = feasible.shape
    indptr, indices = inc.indptr, inc.indices

    class _Rows:
        def __getitem__(self, p: int) -> np.ndarray:
            out: np.ndarray = indices[indptr[p] : indptr[p + 1]]
            return out

    rows = _Rows()
    count = np.zeros(inc.shape[1], dtype=np.int64)
    for a in assign:
        if a >= 0:
            count[rows[a]] += 1
    movable = [c for c in range(C) if c not in fixed and feasible[c].any()]
    for _ in range(rounds):
        changed = False
        for c in movable:
            n_assigned = sum(1 for a in assign if a >= 0)
            if assign[c] < 0 and n_assigned >= max_assignments:
                continue
            if assign[c] >= 0:
                count[rows[assign[c]]] -= 1
            gains = _gains(inc, _residual(w, count, rho))
            mask = feasible[c].copy()
            mask[[a for a in assign if a >= 0 and a != assign[c]]] = False
            score = np.where(mask, gains + bonus[c], -np.inf)
            best = int(np.argmax(score))
            current = float(gains[assign[c]] + bonus[c, assign[c]]) if assign[c] >= 0 else min_gain
            if gains[best] > min_gain and score[best] > current + 1e-9:
                assign[c] = best
                changed = True
            if assign[c] >= 0:
                count[rows[assign[c]]] += 1
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
