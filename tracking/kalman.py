"""Constant-velocity Kalman filter along a route (the only module that imports filterpy).

State :math:`x = [s, v]^T`: distance along the route (m) and speed (m/s), covariance
:math:`P` (2×2). Motion is constant velocity driven by white-noise acceleration of spectral
density :math:`q` (m²/s³):

.. math::

    F(\\Delta t) = \\begin{bmatrix} 1 & \\Delta t \\\\ 0 & 1 \\end{bmatrix}, \\qquad
    Q(\\Delta t) = q \\begin{bmatrix} \\Delta t^3/3 & \\Delta t^2/2 \\\\
                                   \\Delta t^2/2 & \\Delta t \\end{bmatrix}

    x^- = F x, \\qquad P^- = F P F^T + Q

A measurement is scalar, :math:`z = H x + w`, :math:`w \\sim N(0, R)`, with :math:`H = [1, 0]`
(the suspect passed a camera at position :math:`z` along the route) or :math:`H = [0, 1]` (a
speed estimate):

.. math::

    y = z - H x^-, \\quad S = H P^- H^T + R, \\quad K = P^- H^T / S

    x^+ = x^- + K y, \\quad P^+ = P^- - S K K^T, \\quad
    \\log \\ell = -\\tfrac12 \\left( \\log (2 \\pi S) + y^2 / S \\right)

:func:`predict` and :func:`update` are typed wrappers over ``filterpy.kalman`` for one
hypothesis. The tracker keeps many hypotheses as arrays and uses :func:`predict_batch` /
:func:`update_batch`, the same equations vectorised in numpy (filterpy's ``update`` costs
about 90 µs per call, which alone would exceed the 5 ms per-sighting budget with 64
hypotheses); tests check that both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from filterpy.kalman import predict as _fp_predict
from filterpy.kalman import update as _fp_update

from map_data.types import FloatArray

#: Measurement matrices: position along the route, and speed.
H_POSITION: FloatArray = np.array([[1.0, 0.0]])
H_SPEED: FloatArray = np.array([[0.0, 1.0]])


@dataclass(frozen=True, slots=True)
class GaussianState:
    """One filter state: mean ``x`` (2,) and covariance ``P`` (2, 2)."""

    x: FloatArray
    P: FloatArray


def transition(dt_s: float) -> FloatArray:
    """:math:`F(\\Delta t)` of the constant-velocity model."""
    return np.array([[1.0, dt_s], [0.0, 1.0]])


def process_noise(dt_s: float, q: float) -> FloatArray:
    """:math:`Q(\\Delta t)` for white-noise acceleration of spectral density ``q`` (m²/s³)."""
    return q * np.array([[dt_s**3 / 3.0, dt_s**2 / 2.0], [dt_s**2 / 2.0, dt_s]])


def predict(state: GaussianState, dt_s: float, q: float) -> GaussianState:
    """Predict one state ``dt_s`` seconds ahead (filterpy)."""
    x, P = _fp_predict(state.x, state.P, transition(dt_s), process_noise(dt_s, q))
    return GaussianState(np.asarray(x, dtype=np.float64), np.asarray(P, dtype=np.float64))


def update(
    state: GaussianState, z: float, r: float, H: FloatArray = H_POSITION
) -> tuple[GaussianState, float]:
    """Condition one state on the scalar measurement ``z`` with variance ``r`` (filterpy).

    Returns the posterior and the log-likelihood :math:`\\log N(z; Hx^-, S)`.
    """
    x, P, y, _K, S, _ = _fp_update(state.x, state.P, np.array([z]), np.array([[r]]), H, return_all=True)
    # filterpy's own log-likelihood is evaluated at the posterior mean; the weight of a
    # hypothesis needs the predictive one, N(z; H x^-, S), computed from the innovation.
    y_f, s_f = float(np.ravel(y)[0]), float(np.ravel(S)[0])
    log_likelihood = -0.5 * (math.log(2.0 * math.pi * s_f) + y_f * y_f / s_f)
    return (
        GaussianState(np.asarray(x, dtype=np.float64).reshape(2), np.asarray(P, dtype=np.float64)),
        log_likelihood,
    )


def predict_batch(x: FloatArray, P: FloatArray, dt_s: float, q: float) -> tuple[FloatArray, FloatArray]:
    """:func:`predict` for ``N`` states at once: ``x`` (N, 2), ``P`` (N, 2, 2); returns new arrays."""
    F = transition(dt_s)
    x_new = x @ F.T
    P_new = F @ P @ F.T + process_noise(dt_s, q)
    P_new = 0.5 * (P_new + np.swapaxes(P_new, 1, 2))
    return x_new, P_new


def update_batch(
    x: FloatArray,
    P: FloatArray,
    z: FloatArray,
    r: FloatArray | float,
    H: FloatArray = H_POSITION,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """:func:`update` for ``N`` states at once, each with its own measurement ``z[i]``.

    Returns the posterior ``x`` (N, 2), ``P`` (N, 2, 2) and the log-likelihoods (N,).
    """
    h = H.reshape(2)
    Ph = P @ h  # (N, 2) = P H^T
    S = Ph @ h + r  # (N,)
    y = z - x @ h
    K = Ph / S[:, None]
    x_new = x + K * y[:, None]
    P_new = P - S[:, None, None] * (K[:, :, None] * K[:, None, :])
    P_new = 0.5 * (P_new + np.swapaxes(P_new, 1, 2))
    # Guard the diagonal against round-off below zero.
    P_new[:, 0, 0] = np.maximum(P_new[:, 0, 0], 1e-9)
    P_new[:, 1, 1] = np.maximum(P_new[:, 1, 1], 1e-9)
    log_likelihood = -0.5 * (np.log(2.0 * np.pi * S) + y * y / S)
    return x_new, P_new, log_likelihood
