"""Tuning of the tracker (re-exported by :mod:`tracking.tracker`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    """Parameters of :class:`tracking.tracker.Tracker`.

    ``accel_noise`` is the spectral density :math:`q` (m²/s³) of the white-noise acceleration
    (urban driving: speeding up, braking for crossings and traffic). ``camera_noise_m`` is the
    1-sigma error of "passed this camera" beyond the seen stretch's own extent.
    ``max_speed_mps`` bounds what is plausible between two sightings (network distance over
    elapsed time); ``position_slack_m`` forgives camera reach in that test.
    ``silence_timeout_s`` ends a track without sightings (:meth:`tracking.tracker.Tracks.expire`).
    """

    accel_noise: float = 0.6
    camera_noise_m: float = 8.0
    speed_prior_mps: float = 12.0
    speed_prior_sigma_mps: float = 5.0
    reported_speed_sigma_mps: float = 3.0
    max_speed_mps: float = 60.0
    position_slack_m: float = 80.0
    max_hypotheses: int = 32
    min_branch_probability: float = 0.005
    merge_distance_m: float = 20.0
    merge_speed_mps: float = 3.0
    lookahead_sigmas: float = 3.0
    lookahead_extra_m: float = 60.0
    lookahead_max_edges: int = 8
    lookahead_max_m: float = 300.0
    heading_concentration: float = 2.0
    min_confidence: float = 0.2
    silence_timeout_s: float = 900.0
    top_routes: int = 5
    max_extension_rounds: int = 400

    def __post_init__(self) -> None:
        checks = {
            "accel_noise": self.accel_noise > 0,
            "camera_noise_m": self.camera_noise_m > 0,
            "speed_prior_sigma_mps": self.speed_prior_sigma_mps > 0,
            "reported_speed_sigma_mps": self.reported_speed_sigma_mps > 0,
            "max_speed_mps": self.max_speed_mps > 0,
            "max_hypotheses": self.max_hypotheses >= 1,
            "min_branch_probability": 0 <= self.min_branch_probability < 1,
            "silence_timeout_s": self.silence_timeout_s > 0,
            "top_routes": self.top_routes >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrackerConfig.{name} out of range: {getattr(self, name)!r}")
