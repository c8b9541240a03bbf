"""The startup warm-up runs every top-level compiled kernel of the core once."""

from __future__ import annotations

import os

import guidance.coverage as coverage
import guidance.planner as planner
import guidance.prediction as prediction
import tracking.kernels as tracking
from guidance.warmup import warm_up_kernels

KERNELS = {
    prediction: (
        "_walk_routes",
        "_arrival_statistics_kernel",
        "_physical_bound_kernel",
        "_away_hm_kernel",
        "_top_routes_kernel",
        "_left_map",
    ),
    planner: (
        "_pair_bonus",
        "_quantiles_into",
        "_incidence_kernel",
        "_tree_path_edges",
        "_etas_into",
        "_in_time",
    ),
    coverage: ("_greedy_kernel", "_improve_kernel", "_columns"),
    tracking: ("route_neg_kernel", "extend_kernel", "merge_kernel", "branch_csr_kernel", "locate_kernel"),
}


def test_warm_up_plans_and_loads_every_kernel() -> None:
    plan = warm_up_kernels()
    assert len({s.crew_id for s in plan.suggestions}) >= 2
    assert all(s.margin_s > 0 for s in plan.suggestions)  # ahead of the suspect
    for module, names in KERNELS.items():
        for name in names:
            kernel = getattr(module, name)
            if os.environ.get("CORDON_NO_JIT") == "1":
                assert not hasattr(kernel, "signatures")
            else:
                assert kernel.signatures, f"{module.__name__}.{name} was not run by the warm-up"
