"""Where the sampled suspect is at a given time: a sparse distribution over edges.

Each sampled route carries one speed draw; the speed itself is uncertain by about
``spread`` (relative), so the position of route k at time h is taken as uniform in time over
the window :math:`[h(1-\\epsilon), h(1+\\epsilon)]` along that route (a Rao-Blackwellised
estimate that marginalises the speed of each route rather than trusting one draw). With
``spread = 0`` it is the route's exact position at h. Time after an exit is "left the map".
"""

from __future__ import annotations

import numpy as np

from guidance.types import HorizonDistribution, RouteSamples


def position_distribution(
    samples: RouteSamples, horizon_s: float, *, spread: float = 0.0
) -> HorizonDistribution:
    """The distribution of the suspect's edge ``horizon_s`` seconds after the prediction."""
    K = samples.times_s.shape[0]
    half = max(spread * horizon_s, 0.5)
    lo, hi = horizon_s - half, horizon_s + half
    lengths = samples.lengths
    times = np.where(np.isfinite(samples.times_s), samples.times_s, np.inf)
    j_lo = (times <= lo).sum(axis=1)
    j_hi = np.minimum((times <= hi).sum(axis=1), lengths - 1)
    counts = np.clip(j_hi - j_lo + 1, 0, None)
    rows = np.repeat(np.arange(K), counts)
    starts = np.cumsum(counts) - counts
    j = j_lo[rows] + (np.arange(rows.size) - starts[rows])
    a = np.where(j > 0, times[rows, np.maximum(j - 1, 0)], -np.inf)
    b = times[rows, j]
    overlap = np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0.0, None)
    last_t = times[np.arange(K), lengths - 1]
    after = np.clip(hi - np.maximum(last_t, lo), 0.0, None)
    width = hi - lo
    w = samples.weights
    total = float(w.sum())
    left_mask = samples.left
    edge_entries = np.concatenate(
        [samples.edges[rows, j], samples.edges[np.arange(K), lengths - 1][~left_mask]]
    )
    weight_entries = np.concatenate([w[rows] * overlap, (w * after)[~left_mask]]) / (width * total)
    keep = weight_entries > 0
    uniq, inv = np.unique(edge_entries[keep], return_inverse=True)
    probs = np.bincount(inv, weights=weight_entries[keep], minlength=uniq.size).astype(np.float64)
    left_p = float((w * after)[left_mask].sum() / (width * total))
    return HorizonDistribution(
        horizon_s=float(horizon_s),
        edges=uniq.astype(np.int64),
        probabilities=probs,
        left_probability=left_p,
    )
